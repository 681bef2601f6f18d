//! Test files (`shared/spec/test-format.md`) turned into what a real Envoy can be sent: a mesh
//! file and policy files on disk for `meshauthz serve`, and for every case either a probe (one
//! connection, one request) or the reason it cannot be replayed through Envoy.
//!
//! How a case becomes a connection:
//! * `source.principal` => the mTLS listener with a client certificate whose URI SAN is exactly
//!   that principal; otherwise the plaintext listener.
//! * `source.ip` (default 127.0.0.1, or ::1 for an IPv6 destination), `destinationIp` (default:
//!   a synthetic address unique to the workload, added to its `ips` in the mesh file so meshauthz
//!   resolves the workload from it) and `port` (default 80) travel in the PROXY header, which
//!   Envoy reports as `source.address` and `destination.address`.
//! * `sni` is sent as the TLS SNI (none when absent).
//! * HTTP: method, path (a `#fragment` is cut off: real clients never send it; the engine's own
//!   fragment stripping is covered by the in-process `meshauthz test` corpus run), Host (default
//!   the workload name), every header value as its own header line, `jwt` as `authorization:
//!   Bearer <jwt>`; `jwtClaims` as a token minted with exactly those claims, verified by Envoy's
//!   `jwt_authn` (so meshauthz receives them as verified metadata, as from a gateway).

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::Deserialize;
use serde_yaml::Value;

use crate::envoy::JWT_AUTHN_HEADER;
use crate::jwt::JwtSigner;
use crate::wire::HttpRequest;

/// A test file, read loosely: `mesh` and `workloads` are passed through to the mesh file.
#[derive(Debug, Deserialize)]
pub struct TestFile {
    #[serde(default)]
    pub mesh: Option<Value>,
    #[serde(default)]
    pub workloads: Vec<serde_yaml::Mapping>,
    #[serde(default)]
    pub policies: Vec<String>,
    #[serde(default)]
    pub cases: Vec<Case>,
}

#[derive(Debug, Deserialize)]
pub struct Case {
    pub name: String,
    pub request: CaseRequest,
    pub expect: Expect,
    #[serde(default)]
    pub policy: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Expect {
    Allow,
    Deny,
    Unauthenticated,
}

impl Expect {
    pub fn as_str(self) -> &'static str {
        match self {
            Expect::Allow => "ALLOW",
            Expect::Deny => "DENY",
            Expect::Unauthenticated => "UNAUTHENTICATED",
        }
    }

    /// The HTTP status a client sees.
    pub fn http_status(self) -> u16 {
        match self {
            Expect::Allow => 200,
            Expect::Deny => 403,
            Expect::Unauthenticated => 401,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CaseRequest {
    pub workload: String,
    #[serde(default)]
    pub protocol: Option<String>,
    #[serde(default)]
    pub port: Option<u16>,
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
    pub jwt_claims: Option<Value>,
    #[serde(default)]
    pub metadata: Option<Value>,
    /// Fields this harness does not know: such a case is skipped, never half-replayed.
    #[serde(flatten)]
    pub unknown: BTreeMap<String, Value>,
}

#[derive(Debug, Default, Deserialize)]
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

impl OneOrMany {
    pub fn values(&self) -> Vec<&str> {
        match self {
            OneOrMany::One(v) => vec![v.as_str()],
            OneOrMany::Many(vs) => vs.iter().map(String::as_str).collect(),
        }
    }
}

pub fn load(path: &Path) -> Result<TestFile> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    serde_yaml::from_str(&text).with_context(|| format!("parsing {}", path.display()))
}

/// The corpus files, sorted.
pub fn corpus_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("listing {}", dir.display()))?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml" || e == "yml"))
        .collect();
    files.sort();
    Ok(files)
}

/// The synthetic destination addresses of the `index`-th workload (198.18.0.0/15 and
/// fd00:e2e::/64 are used by no corpus file).
pub fn synthetic_ips(index: usize) -> (Ipv4Addr, Ipv6Addr) {
    let i = index as u32 + 1;
    (
        Ipv4Addr::from(u32::from(Ipv4Addr::new(198, 18, 0, 0)) + i),
        Ipv6Addr::new(0xfd00, 0x0e2e, 0, 0, 0, 0, (i >> 16) as u16, i as u16),
    )
}

/// A test file written out for `meshauthz serve`.
#[derive(Debug)]
pub struct Materialized {
    pub policies: Vec<PathBuf>,
    pub mesh: PathBuf,
    /// Workload key -> its synthetic addresses.
    pub workload_ips: BTreeMap<String, (Ipv4Addr, Ipv6Addr)>,
    /// Every address listed in `ips:` -> the workloads listing it (as the test file gave them).
    pub listed_ips: BTreeMap<IpAddr, Vec<String>>,
    /// The SPIFFE ID of the first workload (the identity of Envoy's server certificate).
    pub server_identity: String,
}

fn str_field<'a>(m: &'a serde_yaml::Mapping, key: &str) -> Option<&'a str> {
    m.get(key).and_then(Value::as_str)
}

/// Writes `mesh.yaml` and the policies of `tf` (inline documents as files; paths resolved
/// against the test file's directory) into `dir`.
pub fn materialize(file: &Path, tf: &TestFile, dir: &Path) -> Result<Materialized> {
    let base = file.parent().unwrap_or(Path::new("."));
    let mut policies = Vec::new();
    for (i, entry) in tf.policies.iter().enumerate() {
        if entry.contains('\n') {
            let p = dir.join(format!("policy-{i:03}.yaml"));
            std::fs::write(&p, entry)?;
            policies.push(p);
        } else {
            let p = base.join(entry);
            policies.push(p.canonicalize().unwrap_or(p));
        }
    }
    if policies.is_empty() {
        // `--policies` needs at least one path; an empty file is a valid empty policy set.
        let p = dir.join("no-policies.yaml");
        std::fs::write(&p, "")?;
        policies.push(p);
    }
    let mut workloads = Vec::new();
    let mut workload_ips = BTreeMap::new();
    let mut listed_ips: BTreeMap<IpAddr, Vec<String>> = BTreeMap::new();
    let mut server_identity = None;
    let trust_domain = tf
        .mesh
        .as_ref()
        .and_then(|m| m.get("trustDomain"))
        .and_then(Value::as_str)
        .unwrap_or("cluster.local")
        .to_string();
    for (i, w) in tf.workloads.iter().enumerate() {
        let ns = str_field(w, "namespace").unwrap_or_default();
        let name = str_field(w, "name").unwrap_or_default();
        let key = format!("{ns}/{name}");
        let sa = str_field(w, "serviceAccount").unwrap_or("default");
        server_identity.get_or_insert_with(|| format!("spiffe://{trust_domain}/ns/{ns}/sa/{sa}"));
        let mut w = w.clone();
        let mut ips: Vec<Value> = w
            .get("ips")
            .and_then(Value::as_sequence)
            .cloned()
            .unwrap_or_default();
        for ip in &ips {
            if let Some(ip) = ip.as_str().and_then(|s| s.parse().ok()) {
                listed_ips.entry(ip).or_default().push(key.clone());
            }
        }
        let (v4, v6) = synthetic_ips(i);
        ips.push(Value::String(v4.to_string()));
        ips.push(Value::String(v6.to_string()));
        w.insert("ips".into(), Value::Sequence(ips));
        workload_ips.insert(key, (v4, v6));
        workloads.push(Value::Mapping(w));
    }
    let mut mesh_file = serde_yaml::Mapping::new();
    if let Some(m) = &tf.mesh {
        mesh_file.insert("mesh".into(), m.clone());
    }
    mesh_file.insert("workloads".into(), Value::Sequence(workloads));
    let mesh = dir.join("mesh.yaml");
    std::fs::write(&mesh, serde_yaml::to_string(&mesh_file)?)?;
    Ok(Materialized {
        policies,
        mesh,
        workload_ips,
        listed_ips,
        server_identity: server_identity
            .unwrap_or_else(|| format!("spiffe://{trust_domain}/ns/default/sa/default")),
    })
}

/// One connection of a probe.
#[derive(Clone, Debug)]
pub struct ConnSpec {
    /// `Some` => mTLS with a client certificate carrying this URI SAN.
    pub principal: Option<String>,
    pub sni: Option<String>,
    pub src: SocketAddr,
    pub dst: SocketAddr,
}

#[derive(Clone, Debug)]
pub enum ProbeKind {
    Http(HttpRequest),
    Tcp,
}

/// What to send for one case.
#[derive(Clone, Debug)]
pub struct Probe {
    pub conn: ConnSpec,
    pub kind: ProbeKind,
    /// Notes on how the request differs from the case as written (e.g. a fragment cut off).
    pub notes: Vec<String>,
}

/// A case replayed, or skipped with the reason (the reason is also the tally key).
#[derive(Clone, Debug)]
pub enum Plan {
    Run(Box<Probe>),
    Skip(String),
}

/// Header names a client cannot send as a plain header line, or that the harness writes itself.
fn unsendable_header(name: &str) -> bool {
    name.starts_with(':')
        || name.is_empty()
        || !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
        || ["host", "connection", "content-length", "transfer-encoding"]
            .iter()
            .any(|h| name.eq_ignore_ascii_case(h))
}

/// Decides how `case` is replayed. `jwt` signs `jwtClaims` for Envoy's `jwt_authn` (sent in
/// the [`JWT_AUTHN_HEADER`] header); without it those cases are skipped.
pub fn plan(case: &Case, m: &Materialized, jwt: Option<&JwtSigner>) -> Plan {
    let r = &case.request;
    if let Some(k) = r.unknown.keys().next() {
        return Plan::Skip(format!("request field `{k}` unknown to the e2e harness"));
    }
    let claims_token = match (&r.jwt_claims, jwt) {
        (None, _) => None,
        (Some(_), None) => {
            return Plan::Skip(
                "jwtClaims: claims verified upstream by jwt_authn (not configured)".to_string(),
            )
        }
        (Some(claims), Some(signer)) => {
            match serde_json::to_value(claims)
                .map_err(anyhow::Error::from)
                .and_then(|c| signer.mint(&c))
            {
                Ok(t) => Some(t),
                Err(e) => return Plan::Skip(format!("jwtClaims cannot be signed: {e:#}")),
            }
        }
    };
    if r.remote_ip.is_some() {
        return Plan::Skip(
            "remoteIp given explicitly: Envoy derives remote.ip, a client cannot set it"
                .to_string(),
        );
    }
    if r.metadata
        .as_ref()
        .is_some_and(|v| !v.is_null() && v.as_mapping().is_none_or(|m| !m.is_empty()))
    {
        return Plan::Skip("metadata: dynamic metadata cannot be set by a client".to_string());
    }
    let principal = r.source.as_ref().and_then(|s| s.principal.clone());
    if r.sni.is_some() && principal.is_none() {
        return Plan::Skip("sni on a plaintext request: there is no TLS to carry it".to_string());
    }
    let tcp = match r.protocol.as_deref() {
        None | Some("HTTP") => false,
        Some("TCP") => true,
        Some(p) => return Plan::Skip(format!("protocol {p} unknown to the e2e harness")),
    };
    let Some(&(v4, v6)) = m.workload_ips.get(&r.workload) else {
        return Plan::Skip(format!(
            "workload {} is not listed in workloads: (the file is unusable)",
            r.workload
        ));
    };
    let port = r.port.unwrap_or(80);
    let source_ip = r.source.as_ref().and_then(|s| s.ip);
    let dst_ip = match r.destination_ip {
        Some(ip) => {
            if m.listed_ips.get(&ip).map(Vec::as_slice) != Some(std::slice::from_ref(&r.workload)) {
                return Plan::Skip(
                    "destinationIp does not identify the workload (needs context_extensions \
                     per listener)"
                        .to_string(),
                );
            }
            ip
        }
        None if matches!(source_ip, Some(IpAddr::V6(_))) => IpAddr::V6(v6),
        None => IpAddr::V4(v4),
    };
    let src_ip = source_ip.unwrap_or(match dst_ip {
        IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::LOCALHOST),
    });
    if src_ip.is_ipv4() != dst_ip.is_ipv4() {
        return Plan::Skip(
            "source.ip and destinationIp of different address families (PROXY protocol \
             carries one family)"
                .to_string(),
        );
    }
    let conn = ConnSpec {
        principal,
        sni: r.sni.clone(),
        src: SocketAddr::new(src_ip, 45678),
        dst: SocketAddr::new(dst_ip, port),
    };
    if tcp {
        return Plan::Run(Box::new(Probe {
            conn,
            kind: ProbeKind::Tcp,
            notes: Vec::new(),
        }));
    }
    let mut notes = Vec::new();
    let method = r.method.clone().unwrap_or_else(|| "GET".to_string());
    if method.eq_ignore_ascii_case("CONNECT") || method.is_empty() || method.contains(' ') {
        return Plan::Skip(format!(
            "method {method:?} cannot be sent as a plain request"
        ));
    }
    let mut path = r.path.clone().unwrap_or_else(|| "/".to_string());
    if let Some(i) = path.find('#') {
        notes.push(format!(
            "fragment {:?} cut off client-side (clients never send it)",
            &path[i..]
        ));
        path.truncate(i);
    }
    if path.is_empty() || path.bytes().any(|b| b <= b' ' || b == 0x7f) {
        return Plan::Skip(format!(
            "path {path:?} cannot be written on an HTTP/1.1 request line"
        ));
    }
    let name = r
        .workload
        .split_once('/')
        .map_or(r.workload.as_str(), |(_, n)| n);
    let host = r.host.clone().unwrap_or_else(|| name.to_string());
    let mut headers = Vec::new();
    for (k, v) in &r.headers {
        if unsendable_header(k) {
            return Plan::Skip(format!("header {k:?} cannot be sent as a header line"));
        }
        for v in v.values() {
            if v.bytes().any(|b| b == b'\r' || b == b'\n' || b == 0) {
                return Plan::Skip(format!("header {k:?} has a value with CR, LF or NUL"));
            }
            headers.push((k.clone(), v.to_string()));
        }
    }
    if let Some(jwt) = &r.jwt {
        headers.push(("authorization".to_string(), format!("Bearer {jwt}")));
    }
    if let Some(token) = claims_token {
        headers.push((JWT_AUTHN_HEADER.to_string(), token));
    }
    Plan::Run(Box::new(Probe {
        conn,
        kind: ProbeKind::Http(HttpRequest {
            method,
            path,
            host,
            headers,
        }),
        notes,
    }))
}

/// Fails when a file has no case at all (a corpus file that silently lost its cases).
pub fn ensure_cases(file: &Path, tf: &TestFile) -> Result<()> {
    if tf.cases.is_empty() {
        bail!("{} has no cases", file.display());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m() -> Materialized {
        let mut workload_ips = BTreeMap::new();
        workload_ips.insert("foo/a".to_string(), synthetic_ips(0));
        let mut listed_ips = BTreeMap::new();
        listed_ips.insert("10.0.0.5".parse().unwrap(), vec!["foo/a".to_string()]);
        Materialized {
            policies: vec![],
            mesh: PathBuf::new(),
            workload_ips,
            listed_ips,
            server_identity: String::new(),
        }
    }

    fn case(yaml: &str) -> Case {
        serde_yaml::from_str(yaml).unwrap()
    }

    #[test]
    fn defaults_and_fragment() {
        let Plan::Run(p) = plan(
            &case("{name: x, request: {workload: foo/a, path: '/p?q=1#f', headers: {x-r: [u, a]}}, expect: DENY}"),
            &m(),
            None,
        ) else {
            panic!("skipped")
        };
        assert_eq!(p.conn.dst, "198.18.0.1:80".parse().unwrap());
        assert_eq!(p.conn.src.ip(), IpAddr::V4(Ipv4Addr::LOCALHOST));
        let ProbeKind::Http(h) = &p.kind else {
            panic!()
        };
        assert_eq!(h.path, "/p?q=1");
        assert_eq!(h.host, "a");
        assert_eq!(h.headers.len(), 2);
        assert_eq!(p.notes.len(), 1);
    }

    #[test]
    fn skips() {
        let skip = |y: &str| matches!(plan(&case(y), &m(), None), Plan::Skip(_));
        assert!(skip(
            "{name: x, request: {workload: foo/a, jwtClaims: {iss: a}}, expect: DENY}"
        ));
        assert!(skip(
            "{name: x, request: {workload: foo/a, remoteIp: 1.2.3.4}, expect: DENY}"
        ));
        assert!(skip(
            "{name: x, request: {workload: foo/a, destinationIp: 10.9.9.9}, expect: DENY}"
        ));
        assert!(skip(
            "{name: x, request: {workload: foo/a, newField: 1}, expect: DENY}"
        ));
        assert!(!skip(
            "{name: x, request: {workload: foo/a, destinationIp: 10.0.0.5}, expect: DENY}"
        ));
    }

    #[test]
    fn ipv6_source_gets_an_ipv6_destination() {
        let Plan::Run(p) = plan(
            &case(
                "{name: x, request: {workload: foo/a, source: {ip: '2001:db8::1'}}, expect: DENY}",
            ),
            &m(),
            None,
        ) else {
            panic!("skipped")
        };
        assert_eq!(p.conn.dst.ip(), IpAddr::V6(synthetic_ips(0).1));
    }

    #[test]
    fn jwt_claims_become_a_jwt_authn_token() {
        let signer = JwtSigner::new().unwrap();
        let Plan::Run(p) = plan(
            &case("{name: x, request: {workload: foo/a, jwtClaims: {iss: a, sub: b, n: 5}}, expect: DENY}"),
            &m(),
            Some(&signer),
        ) else {
            panic!("skipped")
        };
        let ProbeKind::Http(h) = &p.kind else {
            panic!()
        };
        assert_eq!(h.headers.len(), 1);
        assert_eq!(h.headers[0].0, JWT_AUTHN_HEADER);
    }
}
