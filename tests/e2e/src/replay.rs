//! Replaying test files through Envoy, enforced either by `meshauthz serve` behind ext_authz
//! or by the native filter loaded into Envoy ([`Mode`]), and the small "stack" (one server, one
//! Envoy, its certificates) the dedicated end-to-end tests build on.
//!
//! A replay keeps every case's outcome ([`CaseRecord`]: skipped with its reason, or the answer
//! the client saw), so the agreement test can compare enforcement points case by case, and a
//! [`Tally`] for the report.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result};

use crate::certs::{Ca, ClientCerts, ClientIdentity};
use crate::corpus::{self, Expect, Plan, Probe, ProbeKind};
use crate::envoy::{
    native_listeners, Envoy, EnvoyConfig, NativeFilter, MTLS_HTTP, MTLS_TCP, PLAIN_HTTP, PLAIN_TCP,
};
use crate::jwt::JwtSigner;
use crate::meshauthz::{Meshauthz, ServeArgs};
use crate::wire::{self, ClientTls, Conn, HttpResponse, TcpOutcome};

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
        let listener = match (&spec.principal, tcp) {
            (None, false) => PLAIN_HTTP,
            (None, true) => PLAIN_TCP,
            (Some(_), false) => MTLS_HTTP,
            (Some(_), true) => MTLS_TCP,
        };
        Ok(Conn {
            listener: self.envoy.listener(listener)?,
            proxy: Some((spec.src, spec.dst)),
            tls: client_tls(env, spec)?,
        })
    }
}

/// The client side of `spec`'s TLS: a certificate whose only URI SAN is the principal, and
/// the SNI; `None` (plaintext) without a principal.
fn client_tls(env: &Env, spec: &corpus::ConnSpec) -> Result<Option<ClientTls>> {
    spec.principal
        .as_ref()
        .map(|p| {
            env.certs
                .client_tls(&ClientIdentity::Uri(p.clone()), spec.sni.as_deref())
        })
        .transpose()
}

/// Where a replay is enforced.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Mode {
    /// Envoy's ext_authz filters (HTTP and network) calling `meshauthz serve`.
    ExtAuthz,
    /// `libmeshauthz_filter.so` in Envoy's HTTP filter chain, one filter config (and one
    /// plaintext and one mTLS listener) per workload.
    Native,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::ExtAuthz => "ext_authz",
            Mode::Native => "native filter",
        }
    }
}

/// Why a TCP case is not replayed through the native filter.
pub const NATIVE_TCP_SKIP: &str =
    "the native filter is an HTTP filter (TCP is the ext_authz network filter's job)";

/// Why a `jwtClaims` case is not replayed through the native filter.
pub const NATIVE_JWT_CLAIMS_SKIP: &str =
    "jwtClaims: the native filter verifies tokens itself and does not read jwt_authn metadata";

/// Why a case whose source address is not the harness's own is not replayed through the
/// native filter.
pub const NATIVE_SOURCE_IP_SKIP: &str =
    "source.ip needs the physical peer: the harness connects from loopback";

/// The physical peer of every harness connection: Envoy's listeners are on 127.0.0.1, and the
/// native filter's `source.ip` is the physical peer (the PROXY header does not change it).
pub const NATIVE_PEER: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

/// Whether the policies of a test file can look at the source address: `ipBlocks`,
/// `notIpBlocks`, `source.ip`, and the remote-address keys too (`remote.ip` is the peer when
/// there is no X-Forwarded-For). A policy file that cannot be read counts as looking.
pub fn policies_use_source_address(m: &corpus::Materialized) -> bool {
    m.policies.iter().any(|p| {
        std::fs::read_to_string(p).map_or(true, |text| {
            let text = text.to_ascii_lowercase();
            ["ipblocks", "source.ip", "remote.ip"]
                .iter()
                .any(|k| text.contains(k))
        })
    })
}

/// How `case` is replayed in `mode`: [`corpus::plan`], and in native mode TCP and `jwtClaims`
/// cases are skipped, and so are cases whose source address (the PROXY header's) is not the
/// physical peer [`NATIVE_PEER`] when it can matter: the case gives `source.ip`, or the file's
/// policies look at addresses (`addresses_matter`, see [`policies_use_source_address`]). These
/// come after the reasons common to both modes, so that the native-only skips are exactly the
/// cases ext_authz replays and the native filter cannot.
pub fn plan_for(
    mode: Mode,
    case: &corpus::Case,
    m: &corpus::Materialized,
    jwt: &JwtSigner,
    addresses_matter: bool,
) -> Plan {
    let plan = corpus::plan(case, m, Some(jwt));
    match (mode, plan) {
        (Mode::Native, Plan::Run(p)) if matches!(p.kind, ProbeKind::Tcp) => {
            Plan::Skip(NATIVE_TCP_SKIP.to_string())
        }
        (Mode::Native, Plan::Run(_)) if case.request.jwt_claims.is_some() => {
            Plan::Skip(NATIVE_JWT_CLAIMS_SKIP.to_string())
        }
        (Mode::Native, Plan::Run(p))
            if p.conn.src.ip() != NATIVE_PEER
                && (addresses_matter
                    || case.request.source.as_ref().and_then(|s| s.ip).is_some()) =>
        {
            Plan::Skip(NATIVE_SOURCE_IP_SKIP.to_string())
        }
        (_, plan) => plan,
    }
}

/// What a replay of one file runs against.
#[derive(Debug)]
enum Target {
    Server(Stack),
    Native(NativeStack),
}

/// One Envoy with the native filter: a plaintext and an mTLS listener per workload.
#[derive(Debug)]
struct NativeStack {
    // Dropped in this order: Envoy first, then the directory.
    envoy: Envoy,
    /// Workload key -> (plaintext listener, mTLS listener).
    listeners: BTreeMap<String, (String, String)>,
    _dir: tempfile::TempDir,
}

impl Target {
    fn start(
        env: &Env,
        mode: Mode,
        dir: tempfile::TempDir,
        m: &corpus::Materialized,
    ) -> Result<Target> {
        match mode {
            Mode::ExtAuthz => {
                let args = ServeArgs {
                    policies: m.policies.clone(),
                    mesh: Some(m.mesh.clone()),
                    expose_decision_headers: true,
                };
                let jwks = env.jwt.jwks().to_string();
                Stack::start(env, dir, &args, &m.server_identity, |grpc, files| {
                    let mut cfg = EnvoyConfig::replay(grpc, files)?;
                    cfg.jwt_authn_jwks = Some(jwks);
                    Ok(cfg)
                })
                .map(Target::Server)
            }
            Mode::Native => {
                let module_dir = crate::native::module_dir()?;
                let files =
                    env.certs
                        .ca()
                        .write_server(dir.path(), "server", &m.server_identity)?;
                let workloads: Vec<&String> = m.workload_ips.keys().collect();
                let filters: Vec<NativeFilter> = workloads
                    .iter()
                    .map(|w| NativeFilter {
                        workload: w.to_string(),
                        policies: m.policies.clone(),
                        mesh: Some(m.mesh.clone()),
                    })
                    .collect();
                let cfg = EnvoyConfig::native_replay(module_dir, files, &filters)?;
                let envoy = Envoy::start(&env.envoy, &cfg, dir.path())?;
                let listeners = workloads
                    .into_iter()
                    .enumerate()
                    .map(|(i, w)| (w.clone(), native_listeners(i)))
                    .collect();
                Ok(Target::Native(NativeStack {
                    envoy,
                    listeners,
                    _dir: dir,
                }))
            }
        }
    }

    /// The connection for `probe`, sent to `workload`.
    fn conn(&self, env: &Env, probe: &Probe, workload: &str) -> Result<Conn> {
        let tcp = matches!(probe.kind, ProbeKind::Tcp);
        match self {
            Target::Server(stack) => stack.conn(env, &probe.conn, tcp),
            Target::Native(n) => {
                if tcp {
                    anyhow::bail!("{NATIVE_TCP_SKIP}");
                }
                let (plain, mtls) = n.listeners.get(workload).ok_or_else(|| {
                    anyhow::anyhow!("no native-filter listener for workload {workload}")
                })?;
                let listener = if probe.conn.principal.is_some() {
                    mtls
                } else {
                    plain
                };
                Ok(Conn {
                    listener: n.envoy.listener(listener)?,
                    proxy: Some((probe.conn.src, probe.conn.dst)),
                    tls: client_tls(env, &probe.conn)?,
                })
            }
        }
    }

    /// The log worth showing after a failure: meshauthz's, or Envoy's (where the module logs).
    fn log(&self) -> (&'static str, String) {
        match self {
            Target::Server(stack) => ("meshauthz", stack.server.log()),
            Target::Native(n) => ("Envoy (native filter)", n.envoy.log()),
        }
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
                }
                if effective_status(r) == 200 && !reached_upstream(r) {
                    write!(f, " (a local reply: the upstream was not reached)")?;
                } else if r.status != 200 && details.is_empty() {
                    // ext_authz mode: Envoy answered itself (the server exposes its decision
                    // headers); native mode: the filter's local reply, or Envoy's.
                    let body: String = r.body.trim().chars().take(60).collect();
                    write!(f, " (no x-meshauthz-* header; body {body:?})")?;
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
        Answer::Http(r) if expect == Expect::Allow => {
            // A 200 is an ALLOW only when the upstream answered it: a local reply with 200
            // (a gRPC local reply with `grpc-status: 0`) never let the request through.
            if effective_status(r) == 200 && reached_upstream(r) {
                Verdict::Pass
            } else {
                Verdict::Fail
            }
        }
        Answer::Http(r) if effective_status(r) == expect.http_status() => Verdict::Pass,
        Answer::Http(r) if effective_status(r) == 400 => Verdict::PassRejectedByEnvoy,
        Answer::Tcp(TcpOutcome::Open) if expect == Expect::Allow => Verdict::Pass,
        Answer::Tcp(TcpOutcome::Closed(_)) if expect != Expect::Allow => Verdict::Pass,
        _ => Verdict::Fail,
    }
}

/// Whether the upstream (the workload behind Envoy) answered: its answers carry
/// [`wire::UPSTREAM_MARK`]; Envoy's and the filters' local replies do not.
pub fn reached_upstream(r: &HttpResponse) -> bool {
    r.header(wire::UPSTREAM_MARK).is_some()
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

/// Sends one probe (the test file's case for `workload`).
fn send(env: &Env, target: &Target, probe: &Probe, workload: &str) -> Answer {
    let conn = match target.conn(env, probe, workload) {
        Ok(c) => c,
        Err(e) => return Answer::Error(format!("{e:#}")),
    };
    let result = match &probe.kind {
        ProbeKind::Http(req) => wire::send_http(&conn, req).map(Answer::Http),
        ProbeKind::Tcp => wire::tcp_roundtrip(&conn).map(Answer::Tcp),
    };
    result.unwrap_or_else(|e| Answer::Error(format!("{e:#}")))
}

/// One case of a replay.
#[derive(Clone, Debug)]
pub struct CaseRecord {
    /// The test file's name (`01-scopes.yaml`).
    pub file: String,
    pub case: String,
    pub expect: Expect,
    /// `protocol: TCP`.
    pub tcp: bool,
    pub outcome: Outcome,
}

#[derive(Clone, Debug)]
pub enum Outcome {
    Skipped(String),
    Replayed {
        answer: Answer,
        verdict: Verdict,
        /// [`describe`] of the request sent.
        request: String,
    },
}

/// A replay of several files: every case's record, and the counts.
#[derive(Debug, Default)]
pub struct Replay {
    pub mode: Option<Mode>,
    pub records: Vec<CaseRecord>,
    pub tally: Tally,
}

impl Replay {
    /// (HTTP cases replayed, HTTP cases): every case but `protocol: TCP`.
    pub fn http_coverage(&self) -> (usize, usize) {
        let http = self.records.iter().filter(|r| !r.tcp);
        let total = http.clone().count();
        let replayed = http
            .filter(|r| matches!(r.outcome, Outcome::Replayed { .. }))
            .count();
        (replayed, total)
    }
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

/// Replays every case of one test file through a fresh server and Envoy (ext_authz).
pub fn replay_file(env: &Env, file: &Path, tally: &mut Tally) -> Result<()> {
    replay_file_in(env, Mode::ExtAuthz, file, tally).map(|_| ())
}

/// Replays every case of one test file in `mode`, through a fresh Envoy (and, for ext_authz, a
/// fresh server); adds to `tally` and returns every case's record.
pub fn replay_file_in(
    env: &Env,
    mode: Mode,
    file: &Path,
    tally: &mut Tally,
) -> Result<Vec<CaseRecord>> {
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
    let addresses_matter = policies_use_source_address(&m);
    let plans: Vec<Plan> = tf
        .cases
        .iter()
        .map(|c| plan_for(mode, c, &m, &env.jwt, addresses_matter))
        .collect();
    let target = Target::start(env, mode, dir, &m);
    let start_error = target.as_ref().err().map(|e| format!("{e:#}"));
    if let Some(e) = &start_error {
        eprintln!(
            "[{}] {shown}: could not start the stack: {e}",
            mode.as_str()
        );
    }
    let mut records = Vec::new();
    let (mut passed, mut failed, mut skipped) = (0, 0, 0);
    for (case, plan) in tf.cases.iter().zip(&plans) {
        let mut record = CaseRecord {
            file: shown.clone(),
            case: case.name.clone(),
            expect: case.expect,
            tcp: case.request.protocol.as_deref() == Some("TCP"),
            outcome: Outcome::Skipped(String::new()),
        };
        let probe = match plan {
            Plan::Skip(reason) => {
                record_skip(tally, reason, &shown, &case.name);
                skipped += 1;
                record.outcome = Outcome::Skipped(reason.clone());
                records.push(record);
                continue;
            }
            Plan::Run(p) => p,
        };
        let answer = match &target {
            Ok(t) => send(env, t, probe, &case.request.workload),
            Err(_) => Answer::Error(format!(
                "could not start the {} stack for {shown}: {} (full error above)",
                mode.as_str(),
                start_error
                    .as_deref()
                    .and_then(|e| e.lines().next())
                    .unwrap_or_default()
                    .chars()
                    .take(200)
                    .collect::<String>()
            )),
        };
        for n in &probe.notes {
            tally.adapted.push(format!("{shown}: {}: {n}", case.name));
        }
        let verdict = judge(case.expect, &answer);
        match verdict {
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
        record.outcome = Outcome::Replayed {
            answer,
            verdict,
            request: describe(probe),
        };
        records.push(record);
    }
    let label = match mode {
        Mode::ExtAuthz => String::new(),
        Mode::Native => format!("[{}] ", mode.as_str()),
    };
    eprintln!(
        "{label}{shown}: {passed} passed, {failed} failed, {skipped} skipped ({} ms)",
        started.elapsed().as_millis()
    );
    if let (true, Ok(t)) = (failed > 0, &target) {
        let (who, log) = t.log();
        let tail: Vec<&str> = log
            .lines()
            .filter(|l| !ENVOY_LOG_NOISE.iter().any(|n| l.contains(n)))
            .rev()
            .take(20)
            .collect();
        if !tail.is_empty() {
            eprintln!("  last {who} log lines for {shown}:");
            for l in tail.iter().rev() {
                eprintln!("    {l}");
            }
        }
    }
    Ok(records)
}

/// Envoy warnings about the harness's own config (one per listener), left out of log tails.
const ENVOY_LOG_NOISE: [&str; 2] = [
    "is marked as work-in-progress",
    "no configured limit to the number of allowed active downstream connections",
];

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

/// Replays every file of `dir` (ext_authz).
pub fn replay_dir(env: &Env, dir: &Path) -> Result<Tally> {
    Ok(replay_corpus(env, Mode::ExtAuthz, dir)?.tally)
}

/// Replays every file of `dir` in `mode`.
pub fn replay_corpus(env: &Env, mode: Mode, dir: &Path) -> Result<Replay> {
    let mut replay = Replay {
        mode: Some(mode),
        ..Replay::default()
    };
    for file in corpus::corpus_files(dir)? {
        let records = replay_file_in(env, mode, &file, &mut replay.tally)
            .with_context(|| format!("{}", file.display()))?;
        replay.records.extend(records);
    }
    Ok(replay)
}
