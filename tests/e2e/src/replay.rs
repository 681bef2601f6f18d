//! Replaying test files through Envoy + `meshauthz serve`, and the small "stack" (one server,
//! one Envoy, its certificates) the dedicated end-to-end tests build on.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result};

use crate::certs::{Ca, ClientCerts, ClientIdentity};
use crate::corpus::{self, Expect, Plan, Probe, ProbeKind};
use crate::envoy::{Envoy, EnvoyConfig, MTLS_HTTP, MTLS_TCP, PLAIN_HTTP, PLAIN_TCP};
use crate::jwt::JwtSigner;
use crate::meshauthz::{Meshauthz, ServeArgs};
use crate::wire::{self, Conn, HttpResponse, TcpOutcome};

/// What every test needs once: the binaries, a CA and the client certificates.
#[derive(Debug)]
pub struct Env {
    pub envoy: PathBuf,
    pub meshauthz: PathBuf,
    pub certs: ClientCerts,
    /// Signs `jwtClaims` tokens; its JWKS is given to Envoy's `jwt_authn`.
    pub jwt: JwtSigner,
}

impl Env {
    pub fn new(envoy: PathBuf) -> Result<Env> {
        Ok(Env {
            envoy,
            meshauthz: crate::meshauthz::binary()?,
            certs: ClientCerts::new(Arc::new(Ca::new()?))?,
            jwt: JwtSigner::new()?,
        })
    }
}

/// One `meshauthz serve` and one Envoy in front of it, sharing a temporary directory.
#[derive(Debug)]
pub struct Stack {
    // Dropped in this order: Envoy first, then the server, then the directory.
    pub envoy: Envoy,
    pub server: Meshauthz,
    pub dir: tempfile::TempDir,
}

impl Stack {
    /// Starts the server on `args`, then Envoy with `make_config(grpc address, server certs)`.
    /// The server certificate is issued for `server_identity` (a SPIFFE ID).
    pub fn start(
        env: &Env,
        dir: tempfile::TempDir,
        args: &ServeArgs,
        server_identity: &str,
        make_config: impl FnOnce(SocketAddr, crate::certs::ServerFiles) -> Result<EnvoyConfig>,
    ) -> Result<Stack> {
        let server = Meshauthz::start(&env.meshauthz, args, dir.path())?;
        let files = env
            .certs
            .ca()
            .write_server(dir.path(), "server", server_identity)?;
        let config = make_config(server.grpc, files)?;
        let envoy = Envoy::start(&env.envoy, &config, dir.path())?;
        Ok(Stack { envoy, server, dir })
    }

    /// The connection for `spec` on this stack's replay listeners.
    pub fn conn(&self, env: &Env, spec: &corpus::ConnSpec, tcp: bool) -> Result<Conn> {
        let (listener, tls) = match &spec.principal {
            None => (if tcp { PLAIN_TCP } else { PLAIN_HTTP }, None),
            Some(p) => (
                if tcp { MTLS_TCP } else { MTLS_HTTP },
                Some(
                    env.certs
                        .client_tls(&ClientIdentity::Uri(p.clone()), spec.sni.as_deref())?,
                ),
            ),
        };
        Ok(Conn {
            listener: self.envoy.listener(listener)?,
            proxy: Some((spec.src, spec.dst)),
            tls,
        })
    }
}

/// The answer a client saw.
#[derive(Clone, Debug)]
pub enum Answer {
    Http(HttpResponse),
    Tcp(TcpOutcome),
    /// No answer at all (connection refused, handshake failed, timeout).
    Error(String),
}

impl std::fmt::Display for Answer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Answer::Http(r) => {
                write!(f, "HTTP {}", r.status)?;
                let details: Vec<String> = r
                    .headers
                    .iter()
                    .filter(|(k, _)| k.starts_with("x-meshauthz") || k.starts_with("grpc-"))
                    .map(|(k, v)| format!("{k}: {v}"))
                    .collect();
                if !details.is_empty() {
                    write!(f, " ({})", details.join("; "))?;
                } else if r.status != 200 {
                    write!(
                        f,
                        " (answered by Envoy itself: no x-meshauthz-decision header)"
                    )?;
                }
                Ok(())
            }
            Answer::Tcp(TcpOutcome::Open) => write!(f, "TCP open (byte echoed)"),
            Answer::Tcp(TcpOutcome::Closed(why)) => write!(f, "TCP closed ({why})"),
            Answer::Error(e) => write!(f, "no answer: {e}"),
        }
    }
}

/// How an answer compares with the expectation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    Pass,
    /// Envoy answered 400 itself (before ext_authz): a non-ALLOW result, so it passes a
    /// DENY/UNAUTHENTICATED expectation (counted separately).
    PassRejectedByEnvoy,
    Fail,
}

pub fn judge(expect: Expect, answer: &Answer) -> Verdict {
    match answer {
        Answer::Http(r) if effective_status(r) == expect.http_status() => Verdict::Pass,
        Answer::Http(r) if effective_status(r) == 400 && expect != Expect::Allow => {
            Verdict::PassRejectedByEnvoy
        }
        Answer::Tcp(TcpOutcome::Open) if expect == Expect::Allow => Verdict::Pass,
        Answer::Tcp(TcpOutcome::Closed(_)) if expect != Expect::Allow => Verdict::Pass,
        _ => Verdict::Fail,
    }
}

/// The HTTP status a response stands for. A request with `content-type: application/grpc`
/// gets Envoy's local replies in gRPC form: HTTP 200 with a non-zero `grpc-status` (7 for a
/// 403, 16 for a 401, 14 for a 503); those are mapped back.
pub fn effective_status(r: &HttpResponse) -> u16 {
    match r.header("grpc-status").map(str::trim) {
        None | Some("0") => r.status,
        Some("7") => 403,
        Some("16") => 401,
        Some("14") => 503,
        Some("13") => 400,
        Some("12") => 404,
        Some(_) => 500,
    }
}

/// Sends one probe.
pub fn send(env: &Env, stack: &Stack, probe: &Probe) -> Answer {
    let tcp = matches!(probe.kind, ProbeKind::Tcp);
    let conn = match stack.conn(env, &probe.conn, tcp) {
        Ok(c) => c,
        Err(e) => return Answer::Error(format!("{e:#}")),
    };
    let result = match &probe.kind {
        ProbeKind::Http(req) => wire::send_http(&conn, req).map(Answer::Http),
        ProbeKind::Tcp => wire::tcp_roundtrip(&conn).map(Answer::Tcp),
    };
    result.unwrap_or_else(|e| Answer::Error(format!("{e:#}")))
}

/// Counts of a replay.
#[derive(Debug, Default)]
pub struct Tally {
    pub passed: usize,
    /// Of `passed`: Envoy answered 400 itself.
    pub rejected_by_envoy: Vec<String>,
    /// One line per failure: file, case, expected and got.
    pub failures: Vec<String>,
    /// Reason -> the cases skipped for it.
    pub skipped: BTreeMap<String, Vec<String>>,
    /// Notes on replayed cases whose request was adapted (e.g. a fragment cut off).
    pub adapted: Vec<String>,
}

impl Tally {
    pub fn skipped_count(&self) -> usize {
        self.skipped.values().map(Vec::len).sum()
    }

    pub fn total(&self) -> usize {
        self.passed + self.failures.len() + self.skipped_count()
    }

    /// `N passed, M failed, K skipped`.
    pub fn summary(&self) -> String {
        format!(
            "{} passed, {} failed, {} skipped",
            self.passed,
            self.failures.len(),
            self.skipped_count()
        )
    }

    /// Everything worth printing: failures, skip reasons with counts, adaptations, summary.
    pub fn report(&self) -> String {
        let mut s = String::new();
        for f in &self.failures {
            let _ = writeln!(s, "FAIL {f}");
        }
        for (reason, cases) in &self.skipped {
            let _ = writeln!(s, "SKIPPED {} x {reason}", cases.len());
            for c in cases {
                let _ = writeln!(s, "    {c}");
            }
        }
        if !self.rejected_by_envoy.is_empty() {
            let _ = writeln!(
                s,
                "answered 400 by Envoy itself (counted as a non-ALLOW pass): {}",
                self.rejected_by_envoy.len()
            );
            for c in &self.rejected_by_envoy {
                let _ = writeln!(s, "    {c}");
            }
        }
        if !self.adapted.is_empty() {
            let _ = writeln!(s, "adapted requests: {}", self.adapted.len());
            for c in &self.adapted {
                let _ = writeln!(s, "    {c}");
            }
        }
        let replayed = self.passed + self.failures.len();
        let _ = writeln!(
            s,
            "replayed {replayed} of {} cases ({:.1}%)",
            self.total(),
            if self.total() == 0 {
                0.0
            } else {
                100.0 * replayed as f64 / self.total() as f64
            }
        );
        let _ = writeln!(s, "{}", self.summary());
        s
    }
}

/// Replays every case of one test file through a fresh server and Envoy.
pub fn replay_file(env: &Env, file: &Path, tally: &mut Tally) -> Result<()> {
    let started = Instant::now();
    let shown = file
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| file.display().to_string());
    let tf = corpus::load(file)?;
    corpus::ensure_cases(file, &tf)?;
    let dir = tempfile::Builder::new()
        .prefix("meshauthz-e2e-")
        .tempdir()?;
    let m = corpus::materialize(file, &tf, dir.path())?;
    let plans: Vec<Plan> = tf
        .cases
        .iter()
        .map(|c| corpus::plan(c, &m, Some(&env.jwt)))
        .collect();
    let args = ServeArgs {
        policies: m.policies.clone(),
        mesh: Some(m.mesh.clone()),
        expose_decision_headers: true,
    };
    let jwks = env.jwt.jwks().to_string();
    let stack = Stack::start(env, dir, &args, &m.server_identity, |grpc, files| {
        let mut cfg = EnvoyConfig::replay(grpc, files)?;
        cfg.jwt_authn_jwks = Some(jwks);
        Ok(cfg)
    });
    let stack = match stack {
        Ok(s) => s,
        Err(e) => {
            // Every case that would have run fails with the reason.
            for (case, plan) in tf.cases.iter().zip(&plans) {
                match plan {
                    Plan::Skip(reason) => record_skip(tally, reason, &shown, &case.name),
                    Plan::Run(_) => tally.failures.push(format!(
                        "{shown}: {}: expected {}, got no answer: could not start the stack: {e:#}",
                        case.name,
                        case.expect.as_str()
                    )),
                }
            }
            return Ok(());
        }
    };
    let (mut passed, mut failed, mut skipped) = (0, 0, 0);
    for (case, plan) in tf.cases.iter().zip(&plans) {
        let probe = match plan {
            Plan::Skip(reason) => {
                record_skip(tally, reason, &shown, &case.name);
                skipped += 1;
                continue;
            }
            Plan::Run(p) => p,
        };
        let answer = send(env, &stack, probe);
        for n in &probe.notes {
            tally.adapted.push(format!("{shown}: {}: {n}", case.name));
        }
        match judge(case.expect, &answer) {
            Verdict::Pass => {
                tally.passed += 1;
                passed += 1;
            }
            Verdict::PassRejectedByEnvoy => {
                tally.passed += 1;
                passed += 1;
                tally.rejected_by_envoy.push(format!(
                    "{shown}: {} (expected {})",
                    case.name,
                    case.expect.as_str()
                ));
            }
            Verdict::Fail => {
                failed += 1;
                tally.failures.push(format!(
                    "{shown}: {}: expected {} ({}), got {answer} [request: {}]",
                    case.name,
                    case.expect.as_str(),
                    match probe.kind {
                        ProbeKind::Http(_) => format!("HTTP {}", case.expect.http_status()),
                        ProbeKind::Tcp if case.expect == Expect::Allow => "TCP open".to_string(),
                        ProbeKind::Tcp => "TCP closed".to_string(),
                    },
                    describe(probe)
                ));
            }
        }
    }
    eprintln!(
        "{shown}: {passed} passed, {failed} failed, {skipped} skipped ({} ms)",
        started.elapsed().as_millis()
    );
    if failed > 0 {
        let log = stack.server.log();
        let tail: Vec<&str> = log.lines().rev().take(20).collect();
        if !tail.is_empty() {
            eprintln!("  last meshauthz log lines for {shown}:");
            for l in tail.iter().rev() {
                eprintln!("    {l}");
            }
        }
    }
    Ok(())
}

fn record_skip(tally: &mut Tally, reason: &str, file: &str, case: &str) {
    tally
        .skipped
        .entry(reason.to_string())
        .or_default()
        .push(format!("{file}: {case}"));
}

/// A one-line description of a probe, for failure messages.
pub fn describe(probe: &Probe) -> String {
    let c = &probe.conn;
    let mut s = match &c.principal {
        Some(p) => format!("mTLS as {p}"),
        None => "plaintext".to_string(),
    };
    if let Some(sni) = &c.sni {
        let _ = write!(s, ", SNI {sni}");
    }
    let _ = write!(s, ", PROXY {} -> {}", c.src, c.dst);
    match &probe.kind {
        ProbeKind::Tcp => s.push_str(", TCP"),
        ProbeKind::Http(r) => {
            let _ = write!(s, ", {} {} Host {}", r.method, r.path, r.host);
            for (k, v) in &r.headers {
                let v = if v.chars().count() > 40 {
                    format!("{}...", v.chars().take(40).collect::<String>())
                } else {
                    v.clone()
                };
                let _ = write!(s, ", {k}: {v}");
            }
        }
    }
    s
}

/// Replays every file of `dir`.
pub fn replay_dir(env: &Env, dir: &Path) -> Result<Tally> {
    let mut tally = Tally::default();
    for file in corpus::corpus_files(dir)? {
        replay_file(env, &file, &mut tally).with_context(|| format!("{}", file.display()))?;
    }
    Ok(tally)
}
