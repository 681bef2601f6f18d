//! `meshauthz`: the policy dry-run CLI (`test`, `check`, `compile`, `validate`).

use std::path::PathBuf;
use std::process::ExitCode;

use authz_loader as sources;
use clap::{Parser, Subcommand, ValueEnum};

/// mimalloc instead of the C library's allocator: a Check allocates and frees many small
/// buffers on several runtime threads (and log lines are freed on the writer thread), where
/// glibc's arenas spent about a sixth of the server's CPU (measured with `perf` under
/// `bench/run`'s gRPC load).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

mod check;
mod crds;
mod serve;
mod testfile;
mod webhook;

#[derive(Debug, Parser)]
#[command(
    name = "meshauthz",
    version,
    about = "Istio security policies compiled to Cedar and enforced: dry-run CLI"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum CompileFormat {
    Cedar,
    Json,
    Schema,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum OutputFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Check that every resource is valid (Istio's admission rules). Exit 0 valid, 1 invalid.
    Validate {
        /// Files or directories of YAML (`-` for standard input).
        #[arg(short = 'f', long = "filename", required = true)]
        files: Vec<PathBuf>,
    },
    /// Print the Cedar policies that would be enforced, sorted, with their provenance.
    Compile {
        #[arg(short = 'f', long = "filename", required = true)]
        files: Vec<PathBuf>,
        /// Mesh settings and workloads (the `mesh:` and `workloads:` sections of a test file).
        #[arg(long)]
        mesh: Option<PathBuf>,
        #[arg(short = 'o', long = "output", value_enum, default_value = "cedar")]
        output: CompileFormat,
    },
    /// Would this request be allowed, and by which rule? Exit 0 ALLOW, 2 DENY/UNAUTHENTICATED, 1 bad input.
    Check(Box<check::CheckArgs>),
    /// Serve Envoy ext_authz (gRPC) with live-reloaded policies; admin HTTP for health and metrics.
    Serve(Box<serve::ServeArgs>),
    /// Serve a Kubernetes validating admission webhook (HTTPS): rejects invalid Istio security
    /// resources at `kubectl apply` with the checks and messages of `validate`.
    Webhook(Box<webhook::WebhookArgs>),
    /// Run policy test files. Exit 0 all passed, 1 a case failed, 2 a file could not be used.
    Test {
        /// Test files or directories (every *.yaml / *.yml, recursively).
        #[arg(required = true)]
        paths: Vec<PathBuf>,
        /// Print failures only.
        #[arg(short, long)]
        quiet: bool,
        /// Also print the policies' validation warnings.
        #[arg(short, long)]
        verbose: bool,
        /// Also write every case's result as JSON lines to this file.
        #[arg(long, value_name = "FILE")]
        results: Option<PathBuf>,
    },
    /// Print the CustomResourceDefinitions of the three security.istio.io kinds (for a cluster
    /// without Istio), generated from the types the loader parses.
    Crds {
        /// Write one `<plural>.security.istio.io.yaml` per CRD here instead of printing them.
        #[arg(long, value_name = "DIR")]
        output_dir: Option<PathBuf>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let code = match cli.command {
        Command::Validate { files } => validate(&files),
        Command::Compile {
            files,
            mesh,
            output,
        } => compile(&files, mesh.as_deref(), output),
        Command::Check(args) => check::run(&args),
        Command::Serve(args) => serve::run(&args),
        Command::Webhook(args) => webhook::run(&args),
        Command::Crds { output_dir } => crds::run(output_dir.as_deref()),
        Command::Test {
            paths,
            quiet,
            verbose,
            results,
        } => {
            let mut sink = std::io::sink();
            let mut stderr = std::io::stderr();
            let warnings: &mut dyn std::io::Write = if verbose { &mut stderr } else { &mut sink };
            let mut file = match results.as_ref().map(std::fs::File::create).transpose() {
                Ok(f) => f.map(std::io::BufWriter::new),
                Err(e) => {
                    eprintln!("error: --results: {e}");
                    return ExitCode::from(1);
                }
            };
            let totals = testfile::run(
                &paths,
                quiet,
                &mut std::io::stdout(),
                warnings,
                file.as_mut().map(|f| f as &mut dyn std::io::Write),
            );
            totals.exit_code()
        }
    };
    ExitCode::from(u8::try_from(code).unwrap_or(1))
}

fn validate(files: &[PathBuf]) -> i32 {
    let mut inputs = policy_compiler::Inputs::default();
    let errors = sources::load_policies(files, &mut inputs);
    for w in &inputs.warnings {
        eprintln!("{w}");
    }
    if !errors.is_empty() {
        for e in &errors {
            println!("error: {e}");
        }
        println!("{} error(s)", errors.len());
        return 1;
    }
    println!(
        "valid: {} AuthorizationPolicy, {} PeerAuthentication, {} RequestAuthentication ({} workload(s), {} other document(s) skipped)",
        inputs.authorization.len(),
        inputs.peer.len(),
        inputs.request.len(),
        inputs.workloads.len(),
        inputs.skipped.len()
    );
    0
}

fn compile(files: &[PathBuf], mesh: Option<&std::path::Path>, output: CompileFormat) -> i32 {
    let compiled = match sources::compile_inputs(files, mesh) {
        Ok(c) => c,
        Err(errors) => {
            for e in &errors {
                eprintln!("error: {e}");
            }
            return 1;
        }
    };
    for w in &compiled.warnings {
        eprintln!("{w}");
    }
    match output {
        CompileFormat::Cedar => print!("{}", compiled.cedar_text()),
        CompileFormat::Schema => print!("{}", compiled.schema_text),
        CompileFormat::Json => {
            let policies: Vec<serde_json::Value> = compiled
                .authorization
                .iter()
                .flat_map(|ap| {
                    ap.policies.iter().map(move |p| {
                        serde_json::json!({
                            "id": p.id,
                            "policy": ap.key.to_string(),
                            "action": ap.action.as_str(),
                            "dryRun": ap.dry_run,
                            "rule": p.rule,
                            "role": format!("{:?}", p.role),
                            "source": format!("{}:{}", ap.origin.file, ap.rules.iter().find(|r| r.index == p.rule).map(|r| r.line).unwrap_or(ap.origin.line)),
                            "cedar": p.text.clone().unwrap_or_else(|| p.policy.to_string()),
                        })
                    })
                })
                .collect();
            let doc = serde_json::json!({
                "policies": policies,
                "defaultAllow": compiled.default_allow_text(),
                "schema": compiled.schema_text,
                "warnings": compiled.warnings.iter().map(|w| w.to_string()).collect::<Vec<_>>(),
            });
            match serde_json::to_string_pretty(&doc) {
                Ok(s) => println!("{s}"),
                Err(e) => {
                    eprintln!("error: {e}");
                    return 1;
                }
            }
        }
    }
    0
}
