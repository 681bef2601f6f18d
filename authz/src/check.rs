//! `meshauthz check`: one request, its verdict, the rules that decided, and which conditions of
//! each applicable rule held or not.

use std::net::IpAddr;
use std::path::PathBuf;

use authz_engine::{decide, explain, Protocol, RequestAttrs, Snapshot, Verdict};
use policy_compiler::Workload;

use crate::OutputFormat;
use authz_loader as sources;

#[derive(Debug, clap::Args)]
pub struct CheckArgs {
    /// Files or directories of policies and manifests (`-` for standard input).
    #[arg(short = 'f', long = "filename", required = true)]
    files: Vec<PathBuf>,
    /// Mesh settings and workloads (the `mesh:` and `workloads:` sections of a test file).
    #[arg(long)]
    mesh: Option<PathBuf>,
    /// The destination workload, <namespace>/<name>.
    #[arg(long)]
    workload: String,
    /// Labels for a workload the inputs do not define (`app=httpbin,version=v1`).
    #[arg(long, value_delimiter = ',')]
    labels: Vec<String>,
    /// Destination (workload) port.
    #[arg(long, default_value_t = 80)]
    port: u16,
    /// A TCP connection instead of an HTTP request.
    #[arg(long)]
    tcp: bool,
    /// The caller's SPIFFE ID from mTLS; omit for plaintext.
    #[arg(long = "from")]
    from: Option<String>,
    #[arg(long)]
    source_ip: Option<IpAddr>,
    #[arg(long)]
    remote_ip: Option<IpAddr>,
    #[arg(long)]
    destination_ip: Option<IpAddr>,
    #[arg(long)]
    sni: Option<String>,
    #[arg(long, default_value = "GET")]
    method: String,
    /// The path as sent, query included.
    #[arg(long, default_value = "/")]
    path: String,
    /// Host / :authority (default: the workload name).
    #[arg(long)]
    host: Option<String>,
    /// A request header, `name: value`; repeat for more (and for repeated headers).
    #[arg(short = 'H', long = "header")]
    headers: Vec<String>,
    /// A JWT, sent as `Authorization: Bearer <jwt>`.
    #[arg(long)]
    jwt: Option<String>,
    #[arg(short = 'o', long = "output", value_enum, default_value = "text")]
    output: OutputFormat,
}

pub fn run(args: &CheckArgs) -> i32 {
    match run_inner(args) {
        Ok(v) => match v {
            Verdict::Allow => 0,
            _ => 2,
        },
        Err(msg) => {
            eprintln!("error: {msg}");
            1
        }
    }
}

fn run_inner(args: &CheckArgs) -> Result<Verdict, String> {
    let (mesh, mut workloads) = match &args.mesh {
        Some(p) => sources::load_mesh_file(p).map_err(|e| e.to_string())?,
        None => (Default::default(), Vec::new()),
    };
    let (ns, name) = args
        .workload
        .split_once('/')
        .filter(|(n, w)| !n.is_empty() && !w.is_empty() && !w.contains('/'))
        .ok_or_else(|| format!("--workload `{}` must be <namespace>/<name>", args.workload))?;
    let mut inputs = policy_compiler::Inputs::default();
    let errors = sources::load_policies(&args.files, &mut inputs);
    if !errors.is_empty() {
        return Err(errors
            .iter()
            .map(|e| e.to_string())
            .collect::<Vec<_>>()
            .join("\nerror: "));
    }
    let known = workloads
        .iter()
        .chain(&inputs.workloads)
        .any(|w| w.key() == args.workload);
    if !known || !args.labels.is_empty() {
        let mut labels = std::collections::BTreeMap::new();
        for l in &args.labels {
            let (k, v) = l
                .split_once('=')
                .ok_or_else(|| format!("--labels `{l}` must be key=value"))?;
            labels.insert(k.to_string(), v.to_string());
        }
        if !known {
            eprintln!(
                "note: workload `{}` is not defined in the inputs; checking it with labels {:?}",
                args.workload, labels
            );
        }
        workloads.retain(|w| w.key() != args.workload);
        inputs.workloads.retain(|w| w.key() != args.workload);
        workloads.push(Workload {
            namespace: ns.to_string(),
            name: name.to_string(),
            labels,
            service_account: "default".to_string(),
            ips: Vec::new(),
            gateway: None,
            services: Vec::new(),
        });
    }
    let compiled = policy_compiler::compile(&inputs, &mesh, &workloads).map_err(|e| {
        e.iter()
            .map(|e| e.to_string())
            .collect::<Vec<_>>()
            .join("\n")
    })?;
    for w in &compiled.warnings {
        eprintln!("{w}");
    }
    let snapshot = Snapshot::build(compiled, 1).map_err(|e| e.to_string())?;
    let snapshot = sources::with_fetched_keys(snapshot, &mut |w| eprintln!("warning: {w}"));

    let mut headers = Vec::new();
    for h in &args.headers {
        let (k, v) = h
            .split_once(':')
            .ok_or_else(|| format!("-H `{h}` must be `name: value`"))?;
        headers.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
    }
    if let Some(jwt) = &args.jwt {
        headers.push(("authorization".into(), format!("Bearer {jwt}")));
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default();
    let req = RequestAttrs {
        workload: args.workload.clone(),
        protocol: if args.tcp {
            Protocol::Tcp
        } else {
            Protocol::Http
        },
        source_principal: args.from.as_ref().map(|f| {
            if f.starts_with("spiffe://") {
                f.clone()
            } else {
                eprintln!("note: --from `{f}` taken as the SPIFFE ID `spiffe://{f}`");
                format!("spiffe://{f}")
            }
        }),
        source_ip: args.source_ip,
        remote_ip: args.remote_ip,
        destination_ip: args.destination_ip,
        destination_port: args.port,
        sni: args.sni.clone(),
        method: args.method.clone(),
        path: args.path.clone(),
        host: args.host.clone().unwrap_or_else(|| name.to_string()),
        headers,
        verified_claims: None,
        metadata: Default::default(),
        now,
    };
    let decision = decide(&snapshot, &req);
    let explanation = explain(&snapshot, &req);
    match args.output {
        OutputFormat::Json => {
            let doc = serde_json::json!({ "decision": decision, "rules": explanation });
            println!(
                "{}",
                serde_json::to_string_pretty(&doc).map_err(|e| e.to_string())?
            );
        }
        OutputFormat::Text => {
            println!(
                "{} ({})",
                decision.verdict.as_str(),
                crate::testfile::describe(&decision)
            );
            for m in &decision.dry_run {
                println!("  dry-run match: {m}");
            }
            for m in &decision.audit {
                println!("  audit match: {m}");
            }
            for m in &decision.custom {
                println!("  CUSTOM provider consulted (result assumed ALLOW here): {m}");
            }
            if !decision.upstream.set.is_empty() || !decision.upstream.remove.is_empty() {
                for (k, v) in &decision.upstream.set {
                    println!("  upstream header set: {k}: {v}");
                }
                for k in &decision.upstream.remove {
                    println!("  upstream header removed: {k}");
                }
            }
            if !explanation.is_empty() {
                println!("rules:");
            }
            for r in &explanation {
                println!(
                    "  {} {}{} rule {} ({}): {}",
                    r.action,
                    r.policy,
                    if r.dry_run { " [dry-run]" } else { "" },
                    r.rule,
                    r.source,
                    match r.matched {
                        Some(true) => "matches",
                        Some(false) => "does not match",
                        None => "not evaluable",
                    }
                );
                for (label, v) in &r.conditions {
                    let mark = match v {
                        Some(true) => "holds",
                        Some(false) => "DOES NOT HOLD",
                        None => "not evaluable",
                    };
                    println!("      {label}: {mark}");
                }
            }
        }
    }
    Ok(decision.verdict)
}
