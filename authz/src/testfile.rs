//! `meshauthz test`: the policy test-file format (`shared/spec/test-format.md`, a contract) and
//! its runner. A file that cannot be used (unreadable, not YAML, unknown key, invalid policy,
//! unknown workload) is reported with its file, case or document and field, and none of its
//! cases run.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use authz_engine::{decide, Decision, Protocol, RequestAttrs, Snapshot, Verdict};
use policy_compiler::{Inputs, LoadError, Location, MeshConfig, Workload};
use serde::Deserialize;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TestFile {
    #[serde(default)]
    pub mesh: Option<MeshConfig>,
    #[serde(default)]
    pub workloads: Vec<Workload>,
    #[serde(default)]
    pub policies: Vec<String>,
    #[serde(default)]
    pub cases: Vec<Case>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Case {
    pub name: String,
    pub request: CaseRequest,
    pub expect: Verdict,
    /// `<namespace>/<name>` that must be among the determining policies.
    #[serde(default)]
    pub policy: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct CaseRequest {
    pub workload: String,
    #[serde(default)]
    pub protocol: Protocol,
    #[serde(default = "default_port")]
    pub port: u16,
    #[serde(default)]
    pub destination_ip: Option<IpAddr>,
    #[serde(default)]
    pub source: Option<CaseSource>,
    #[serde(default)]
    pub remote_ip: Option<IpAddr>,
    #[serde(default)]
    pub sni: Option<String>,
    #[serde(default)]
    pub method: Option<String>,
    #[serde(default)]
    pub path: Option<String>,
    #[serde(default)]
    pub host: Option<String>,
    #[serde(default)]
    pub headers: BTreeMap<String, OneOrMany>,
    #[serde(default)]
    pub jwt: Option<String>,
    #[serde(default)]
    pub jwt_claims: Option<serde_json::Map<String, serde_json::Value>>,
    /// Extension: dynamic metadata by filter name, for `experimental.envoy.filters.*` keys.
    #[serde(default)]
    pub metadata: BTreeMap<String, serde_json::Value>,
}

fn default_port() -> u16 {
    80
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CaseSource {
    #[serde(default)]
    pub principal: Option<String>,
    #[serde(default)]
    pub ip: Option<IpAddr>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

/// Totals of one `meshauthz test` run.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Totals {
    pub passed: usize,
    pub failed: usize,
    /// Files that could not be used (exit status 2).
    pub unusable: usize,
}

impl Totals {
    pub fn exit_code(&self) -> i32 {
        if self.unusable > 0 {
            2
        } else if self.failed > 0 {
            1
        } else {
            0
        }
    }
}

/// A test file ready to run.
pub struct Prepared {
    pub snapshot: Snapshot,
    pub cases: Vec<Case>,
}

/// Expands files and directories into test files (`*.yaml`, `*.yml`), sorted. Inside a
/// directory, files whose documents are Kubernetes objects (`apiVersion` and `kind` at the top)
/// are the policies and manifests the tests load, not tests, and are skipped; a file named
/// explicitly is always run as a test file.
pub fn test_files(paths: &[PathBuf]) -> Result<Vec<PathBuf>, LoadError> {
    let files = authz_loader::policy_files(paths)?;
    Ok(files
        .into_iter()
        .filter(|f| {
            paths.contains(f)
                || (f
                    .extension()
                    .and_then(|e| e.to_str())
                    .is_some_and(|e| e == "yaml" || e == "yml")
                    && !is_kubernetes_manifest(f))
        })
        .collect())
}

fn is_kubernetes_manifest(path: &Path) -> bool {
    let Ok(text) = std::fs::read_to_string(path) else {
        return false;
    };
    for doc in serde_yaml::Deserializer::from_str(&text) {
        match serde_yaml::Value::deserialize(doc) {
            Ok(serde_yaml::Value::Null) => continue,
            Ok(serde_yaml::Value::Mapping(m)) => {
                return m.contains_key("apiVersion") && m.contains_key("kind")
            }
            _ => return false,
        }
    }
    false
}

/// Reads, validates and compiles one test file.
pub fn prepare(
    file: &Path,
    fetch_jwks: bool,
    warn: &mut dyn FnMut(String),
) -> Result<Prepared, Vec<LoadError>> {
    let name = file.display().to_string();
    let text = std::fs::read(file).map_err(|e| {
        vec![LoadError::new(
            Location::file(&name),
            format!("cannot read: {e}"),
        )]
    })?;
    let text = String::from_utf8(text).map_err(|_| {
        vec![LoadError::new(
            Location::file(&name),
            "the file is not valid UTF-8",
        )]
    })?;
    let de = serde_yaml::Deserializer::from_str(&text);
    let tf: TestFile = serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        vec![LoadError::new(
            Location {
                line: inner.location().map(|l| l.line()),
                field: (path != ".").then_some(path),
                ..Location::file(&name)
            },
            authz_loader::strip_location(&inner.to_string()),
        )]
    })?;
    let base = file.parent().unwrap_or(Path::new("."));
    let mut inputs = Inputs::default();
    let mut errors = Vec::new();
    for (i, entry) in tf.policies.iter().enumerate() {
        if entry.contains('\n') {
            let shown = format!("{name} (policies[{i}])");
            errors.extend(inputs.load_str(&shown, entry));
        } else {
            let path = base.join(entry);
            errors.extend(authz_loader::load_policies(&[path], &mut inputs));
        }
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    let mesh = tf.mesh.clone().unwrap_or_default();
    let compiled = policy_compiler::compile(&inputs, &mesh, &tf.workloads)?;
    for w in &compiled.warnings {
        warn(w.to_string());
    }
    for (i, case) in tf.cases.iter().enumerate() {
        if !compiled
            .workloads
            .iter()
            .any(|w| w.key() == case.request.workload)
        {
            errors.push(LoadError::new(
                Location {
                    field: Some(format!("cases[{i}].request.workload")),
                    resource: Some(format!("case `{}`", case.name)),
                    ..Location::file(&name)
                },
                format!(
                    "workload `{}` is not listed in `workloads:` (write it as <namespace>/<name>)",
                    case.request.workload
                ),
            ));
        }
        if let Some(p) = case
            .request
            .source
            .as_ref()
            .and_then(|s| s.principal.as_ref())
        {
            if !p.starts_with("spiffe://") {
                errors.push(LoadError::new(
                    Location {
                        field: Some(format!("cases[{i}].request.source.principal")),
                        resource: Some(format!("case `{}`", case.name)),
                        ..Location::file(&name)
                    },
                    format!("`{p}` is not a SPIFFE ID; write the peer identity as `spiffe://{p}` (omit `principal` for a plaintext request)"),
                ));
            }
        }
        if case.request.jwt.is_some() && case.request.jwt_claims.is_some() {
            errors.push(LoadError::new(
                Location {
                    field: Some(format!("cases[{i}].request")),
                    resource: Some(format!("case `{}`", case.name)),
                    ..Location::file(&name)
                },
                "give either `jwt` or `jwtClaims`, not both",
            ));
        }
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    let snapshot = Snapshot::build(compiled, 1)
        .map_err(|e| vec![LoadError::new(Location::file(&name), e.to_string())])?;
    let snapshot = if fetch_jwks {
        authz_loader::with_fetched_keys(snapshot, warn)
    } else {
        snapshot
    };
    Ok(Prepared {
        snapshot,
        cases: tf.cases,
    })
}

/// The request a case describes.
pub fn case_request(case: &CaseRequest, now: u64) -> RequestAttrs {
    let name = case
        .workload
        .split_once('/')
        .map(|(_, n)| n)
        .unwrap_or(&case.workload);
    let mut headers = Vec::new();
    for (k, v) in &case.headers {
        let k = k.to_ascii_lowercase();
        match v {
            OneOrMany::One(v) => headers.push((k, v.clone())),
            OneOrMany::Many(vs) => headers.extend(vs.iter().map(|v| (k.clone(), v.clone()))),
        }
    }
    if let Some(jwt) = &case.jwt {
        headers.push(("authorization".to_string(), format!("Bearer {jwt}")));
    }
    RequestAttrs {
        workload: case.workload.clone(),
        protocol: case.protocol,
        source_principal: case.source.as_ref().and_then(|s| s.principal.clone()),
        source_ip: case.source.as_ref().and_then(|s| s.ip),
        remote_ip: case.remote_ip,
        destination_ip: case.destination_ip,
        destination_port: case.port,
        sni: case.sni.clone(),
        method: case.method.clone().unwrap_or_else(|| "GET".to_string()),
        path: case.path.clone().unwrap_or_else(|| "/".to_string()),
        host: case.host.clone().unwrap_or_else(|| name.to_string()),
        headers,
        verified_claims: case.jwt_claims.clone(),
        metadata: case.metadata.clone(),
        now,
    }
}

/// Whether the decision satisfies the case; `Err` explains the mismatch.
pub fn check_case(case: &Case, d: &Decision) -> Result<(), String> {
    let determining = describe(d);
    if d.verdict != case.expect {
        return Err(format!(
            "expected {}, got {} ({determining})",
            case.expect.as_str(),
            d.verdict.as_str()
        ));
    }
    if let Some(p) = &case.policy {
        if !d.determining.iter().any(|m| &m.policy == p) {
            return Err(format!(
                "expected {} by `{p}`, got {} ({determining})",
                case.expect.as_str(),
                d.verdict.as_str()
            ));
        }
    }
    Ok(())
}

/// The determining policies and the reason, for one line of output.
pub fn describe(d: &Decision) -> String {
    let mut parts: Vec<String> = d.determining.iter().map(|m| m.to_string()).collect();
    let reason = serde_json::to_value(&d.reason)
        .ok()
        .and_then(|v| v.get("reason").and_then(|r| r.as_str()).map(str::to_string))
        .unwrap_or_default();
    if parts.is_empty() {
        parts.push("no policy".to_string());
    }
    let mut s = format!("{}; {reason}", parts.join(", "));
    if let authz_engine::Reason::Jwt { error } | authz_engine::Reason::InvalidRequest { error } =
        &d.reason
    {
        s.push_str(&format!(": {error}"));
    }
    for e in &d.errors {
        s.push_str(&format!("; {e}"));
    }
    s
}

/// Runs every case of every file; prints one line per case (failures only with `quiet`) and
/// the closing `N passed, M failed`.
/// `results`, when given, receives one JSON object per case and line:
/// `{"file", "case", "expected", "got", "determining"}` (for tools that compare enforcement
/// points case by case).
pub fn run(
    paths: &[PathBuf],
    quiet: bool,
    out: &mut dyn std::io::Write,
    err: &mut dyn std::io::Write,
    mut results: Option<&mut dyn std::io::Write>,
) -> Totals {
    let mut totals = Totals::default();
    let files = match test_files(paths) {
        Ok(f) => f,
        Err(e) => {
            let _ = writeln!(out, "ERROR {e}");
            totals.unusable += 1;
            let _ = writeln!(out, "{} passed, {} failed", totals.passed, totals.failed);
            return totals;
        }
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default();
    for file in files {
        let shown = file.display().to_string();
        let mut warn = |w: String| {
            let _ = writeln!(err, "warning: {w}");
        };
        let prepared = match prepare(&file, true, &mut warn) {
            Ok(p) => p,
            Err(errors) => {
                totals.unusable += 1;
                for e in errors {
                    let _ = writeln!(out, "ERROR {e}");
                }
                let _ = writeln!(out, "ERROR {shown}: file not used; none of its cases ran");
                continue;
            }
        };
        for case in &prepared.cases {
            let d = decide(&prepared.snapshot, &case_request(&case.request, now));
            if let Some(r) = results.as_deref_mut() {
                let line = serde_json::json!({
                    "file": shown,
                    "case": case.name,
                    "expected": case.expect.as_str(),
                    "got": d.verdict.as_str(),
                    "determining": d.determining.iter().map(|m| m.to_string()).collect::<Vec<_>>(),
                });
                let _ = writeln!(r, "{line}");
            }
            match check_case(case, &d) {
                Ok(()) => {
                    totals.passed += 1;
                    if !quiet {
                        let _ = writeln!(out, "PASS {shown}: {}", case.name);
                    }
                }
                Err(why) => {
                    totals.failed += 1;
                    let _ = writeln!(out, "FAIL {shown}: {}: {why}", case.name);
                }
            }
        }
    }
    let _ = writeln!(out, "{} passed, {} failed", totals.passed, totals.failed);
    totals
}
