//! Envoy's view of a request (`CheckRequest`) -> the engine's [`RequestAttrs`], and the choice
//! of the destination workload. Pure functions; state owned: none.
//!
//! Mapping (istio-semantics §1.15):
//! - Peer identity comes ONLY from `attributes.source.principal` (the URI SAN of the client
//!   certificate Envoy validated). Envoy falls back to the certificate's subject DN when there is
//!   no URI SAN: a value that is not a `spiffe://` URI is no identity and is dropped here.
//!   `x-forwarded-client-cert` is a client-supplied header and is ignored, unless the operator
//!   passes `--trust-xfcc` (a hop in front sanitizes it): then the `URI=` of its LAST element
//!   (the one the nearest trusted proxy appended) is the peer identity.
//! - Headers: `http.headers` (a map: Envoy joins a repeated header into one comma-separated
//!   value, which is kept as ONE value) or, when Envoy's ext_authz sets `encode_raw_headers:
//!   true`, `http.header_map` (one entry per value, `raw_value` bytes, pseudo-headers
//!   included). Configure `encode_raw_headers: true` so that repeated headers are matched value
//!   by value (CVE-2026-26308). Names are lower-cased; pseudo-headers are not headers, but
//!   `:path`, `:method`, `:authority`, `:scheme` fill the typed fields when those are empty.
//! - Path: `http.path` raw, query included; the engine normalizes it per the mesh's
//!   `pathNormalization` and never matches the query.
//! - No `attributes.request.http` (the network ext_authz filter) => a TCP connection.
//! - `metadata_context.filter_metadata["envoy.filters.http.jwt_authn"]`: the first JWT payload
//!   (a struct with a string `iss`) is a token Envoy already verified; every other filter's
//!   metadata goes to `RequestAttrs::metadata`.
//! - Workload: `context_extensions["workload"]`, else the destination IP, else the destination
//!   principal's namespace and service account ([`resolve_workload`]).
//!
//! Nothing here fails: a missing or malformed field becomes an absent attribute, and the engine
//! (or an unresolvable workload) denies.

use std::collections::BTreeMap;
use std::net::IpAddr;

use authz_engine::{Protocol, RequestAttrs, Snapshot};
use envoy_types::pb::envoy::config::core::v3::{
    address, socket_address::PortSpecifier, Address, Metadata,
};
use envoy_types::pb::envoy::service::auth::v3::attribute_context::{HttpRequest, Peer};
use envoy_types::pb::envoy::service::auth::v3::CheckRequest;
use envoy_types::pb::google::protobuf::{value::Kind, Struct, Value};
use serde_json::{Map, Value as Json};

/// Envoy's `jwt_authn` filter: its metadata holds verified JWT payloads.
pub const JWT_AUTHN_FILTER: &str = "envoy.filters.http.jwt_authn";
/// The `context_extensions` key naming the destination workload, `<namespace>/<name>`.
pub const WORKLOAD_EXTENSION: &str = "workload";
/// The longest path echoed into `www-authenticate`.
const MAX_REALM_PATH: usize = 1024;

/// Operator choices that change the mapping.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ConvertOptions {
    /// Take the peer identity from `x-forwarded-client-cert` (see the module header).
    pub trust_xfcc: bool,
}

/// What the server needs to pick the workload.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WorkloadHints {
    pub context_extension: Option<String>,
    pub destination_ip: Option<IpAddr>,
    pub destination_principal: Option<String>,
}

/// One converted CheckRequest.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Converted {
    /// Everything but `workload` (see [`resolve_workload`]).
    pub attrs: RequestAttrs,
    pub hints: WorkloadHints,
    /// `http` or `https`, for the `www-authenticate` realm.
    pub scheme: String,
}

impl Converted {
    /// `<scheme>://<host><path>` without query or fragment, printable ASCII only and bounded,
    /// for `www-authenticate: Bearer realm="..."` (Envoy's jwt_authn answer).
    pub fn realm(&self) -> String {
        let path = self.attrs.path.split(['?', '#']).next().unwrap_or_default();
        let clean = |s: &str, max: usize| -> String {
            s.chars()
                .filter(|c| c.is_ascii_graphic() && *c != '"' && *c != '\\')
                .take(max)
                .collect()
        };
        format!(
            "{}://{}{}",
            clean(&self.scheme, 16),
            clean(&self.attrs.host, 256),
            clean(path, MAX_REALM_PATH)
        )
    }
}

/// Converts one CheckRequest (see the module header). `now`: seconds since the Unix epoch.
pub fn convert(req: &CheckRequest, options: ConvertOptions, now: u64) -> Converted {
    let mut out = Converted {
        scheme: "http".to_string(),
        attrs: RequestAttrs {
            now,
            protocol: Protocol::Tcp,
            ..RequestAttrs::default()
        },
        ..Converted::default()
    };
    let Some(attrs) = &req.attributes else {
        return out;
    };
    if let Some(source) = &attrs.source {
        let (ip, _) = socket(source);
        out.attrs.source_ip = ip;
        out.attrs.source_principal = spiffe(&source.principal);
    }
    if let Some(dest) = &attrs.destination {
        let (ip, port) = socket(dest);
        out.attrs.destination_ip = ip;
        out.attrs.destination_port = port;
        out.hints.destination_ip = ip;
        out.hints.destination_principal = Some(dest.principal.clone()).filter(|p| !p.is_empty());
    }
    out.hints.context_extension = attrs
        .context_extensions
        .get(WORKLOAD_EXTENSION)
        .filter(|w| !w.is_empty())
        .cloned();
    out.attrs.sni = attrs
        .tls_session
        .as_ref()
        .map(|t| t.sni.clone())
        .filter(|s| !s.is_empty());
    if let Some(md) = &attrs.metadata_context {
        let (claims, metadata) = metadata(md);
        out.attrs.verified_claims = claims;
        out.attrs.metadata = metadata;
    }
    if let Some(http) = attrs.request.as_ref().and_then(|r| r.http.as_ref()) {
        out.attrs.protocol = Protocol::Http;
        let (headers, pseudo) = headers(http);
        let pick = |typed: &str, pseudo: Option<String>| -> String {
            if typed.is_empty() {
                pseudo.unwrap_or_default()
            } else {
                typed.to_string()
            }
        };
        out.attrs.method = pick(&http.method, pseudo.method);
        out.attrs.path = pick(&http.path, pseudo.path);
        let host = pick(&http.host, pseudo.authority);
        out.attrs.host = if host.is_empty() {
            headers
                .iter()
                .find(|(n, _)| n == "host")
                .map(|(_, v)| v.clone())
                .unwrap_or_default()
        } else {
            host
        };
        let scheme = pick(&http.scheme, pseudo.scheme);
        if !scheme.is_empty() {
            out.scheme = scheme;
        }
        if options.trust_xfcc {
            let xfcc: Vec<&str> = headers
                .iter()
                .filter(|(n, _)| n == "x-forwarded-client-cert")
                .map(|(_, v)| v.as_str())
                .collect();
            if let Some(last) = xfcc.last() {
                // The header is present: it is the whole truth about the original client.
                out.attrs.source_principal = xfcc_uri(last).and_then(|u| spiffe(&u));
            }
        }
        out.attrs.headers = headers;
    }
    out
}

/// A `spiffe://` principal, or none (empty, or a certificate subject DN).
fn spiffe(principal: &str) -> Option<String> {
    principal
        .starts_with("spiffe://")
        .then(|| principal.to_string())
}

fn socket(peer: &Peer) -> (Option<IpAddr>, u16) {
    match peer
        .address
        .as_ref()
        .and_then(|a: &Address| a.address.as_ref())
    {
        Some(address::Address::SocketAddress(sa)) => {
            let ip = sa.address.parse().ok();
            let port = match &sa.port_specifier {
                Some(PortSpecifier::PortValue(p)) => u16::try_from(*p).unwrap_or(0),
                _ => 0,
            };
            (ip, port)
        }
        _ => (None, 0),
    }
}

#[derive(Debug, Default)]
struct Pseudo {
    path: Option<String>,
    method: Option<String>,
    authority: Option<String>,
    scheme: Option<String>,
}

/// Regular headers (lower-case names) and the pseudo-headers. `header_map` is used when it has
/// entries (Envoy sends one form or the other); otherwise the joined `headers` map, sorted by
/// name for a stable order.
fn headers(http: &HttpRequest) -> (Vec<(String, String)>, Pseudo) {
    let mut pairs: Vec<(String, String)> = match &http.header_map {
        Some(map) if !map.headers.is_empty() => map
            .headers
            .iter()
            .map(|h| {
                let value = if h.raw_value.is_empty() {
                    h.value.clone()
                } else {
                    String::from_utf8_lossy(&h.raw_value).into_owned()
                };
                (h.key.to_ascii_lowercase(), value)
            })
            .collect(),
        _ => {
            let mut v: Vec<(String, String)> = http
                .headers
                .iter()
                .map(|(k, v)| (k.to_ascii_lowercase(), v.clone()))
                .collect();
            v.sort();
            v
        }
    };
    let mut pseudo = Pseudo::default();
    pairs.retain(|(name, value)| {
        let Some(p) = name.strip_prefix(':') else {
            return true;
        };
        let slot = match p {
            "path" => &mut pseudo.path,
            "method" => &mut pseudo.method,
            "authority" => &mut pseudo.authority,
            "scheme" => &mut pseudo.scheme,
            _ => return false,
        };
        slot.get_or_insert_with(|| value.clone());
        false
    });
    (pairs, pseudo)
}

/// The `URI=` value of the LAST element of an `x-forwarded-client-cert` header. Elements are
/// separated by `,`, pairs by `;`, values may be double-quoted (with `\"` escapes) and then
/// contain `,` and `;` (a subject DN does).
pub fn xfcc_uri(header: &str) -> Option<String> {
    let elements = split_quoted(header, ',');
    let last = elements.last()?;
    split_quoted(last, ';').into_iter().find_map(|pair| {
        let (k, v) = pair.split_once('=')?;
        k.trim()
            .eq_ignore_ascii_case("uri")
            .then(|| unquote(v.trim()))
            .filter(|v| !v.is_empty())
    })
}

fn split_quoted(s: &str, sep: char) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    let mut escaped = false;
    for c in s.chars() {
        if escaped {
            cur.push(c);
            escaped = false;
            continue;
        }
        match c {
            '\\' if quoted => {
                cur.push(c);
                escaped = true;
            }
            '"' => {
                quoted = !quoted;
                cur.push(c);
            }
            c if c == sep && !quoted => out.push(std::mem::take(&mut cur)),
            c => cur.push(c),
        }
    }
    out.push(cur);
    out
}

fn unquote(v: &str) -> String {
    match v.strip_prefix('"').and_then(|v| v.strip_suffix('"')) {
        Some(inner) => {
            let mut out = String::new();
            let mut escaped = false;
            for c in inner.chars() {
                if !escaped && c == '\\' {
                    escaped = true;
                    continue;
                }
                escaped = false;
                out.push(c);
            }
            out
        }
        None => v.to_string(),
    }
}

type Claims = Map<String, Json>;

/// Splits Envoy's dynamic metadata into the verified JWT payload and everything else.
fn metadata(md: &Metadata) -> (Option<Claims>, BTreeMap<String, Json>) {
    let mut claims = None;
    let mut rest = BTreeMap::new();
    for (filter, st) in &md.filter_metadata {
        if filter == JWT_AUTHN_FILTER {
            claims = jwt_payload(st);
        } else {
            rest.insert(filter.clone(), Json::Object(struct_to_json(st)));
        }
    }
    (claims, rest)
}

/// The payload itself when the struct has a string `iss`, else the first field (by name) that
/// does (`payload_in_metadata: <name>`).
fn jwt_payload(st: &Struct) -> Option<Claims> {
    let is_payload = |s: &Struct| {
        matches!(
            s.fields.get("iss").and_then(|v| v.kind.as_ref()),
            Some(Kind::StringValue(_))
        )
    };
    if is_payload(st) {
        return Some(struct_to_json(st));
    }
    let mut names: Vec<&String> = st.fields.keys().collect();
    names.sort();
    names
        .into_iter()
        .find_map(|n| match st.fields.get(n)?.kind.as_ref()? {
            Kind::StructValue(s) if is_payload(s) => Some(struct_to_json(s)),
            _ => None,
        })
}

/// `google.protobuf.Struct` as JSON. Integral numbers become JSON integers (so `exp` stays an
/// integer); NaN and infinities become null. Depth is bounded by protobuf decoding (100).
pub fn struct_to_json(st: &Struct) -> Claims {
    st.fields
        .iter()
        .map(|(k, v)| (k.clone(), value_to_json(v)))
        .collect()
}

fn value_to_json(v: &Value) -> Json {
    match &v.kind {
        None | Some(Kind::NullValue(_)) => Json::Null,
        Some(Kind::BoolValue(b)) => Json::Bool(*b),
        Some(Kind::StringValue(s)) => Json::String(s.clone()),
        Some(Kind::NumberValue(n)) => number(*n),
        Some(Kind::StructValue(s)) => Json::Object(struct_to_json(s)),
        Some(Kind::ListValue(l)) => Json::Array(l.values.iter().map(value_to_json).collect()),
    }
}

fn number(n: f64) -> Json {
    // 2^53: every integer below is exact in an f64.
    const EXACT: f64 = 9_007_199_254_740_992.0;
    if n.fract() == 0.0 && n.abs() < EXACT {
        // Integral and below 2^53 in magnitude: the cast is exact.
        return Json::from(n as i64);
    }
    serde_json::Number::from_f64(n).map_or(Json::Null, Json::Number)
}

/// Why no workload could be chosen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unresolved(pub String);

/// Chooses the destination workload: `context_extensions["workload"]` when set (it must be a
/// known workload), else the one workload whose `ips` contain the destination IP, else the one
/// workload with the destination principal's namespace and service account. Unknown or
/// ambiguous => [`Unresolved`] (the server denies).
pub fn resolve_workload(snapshot: &Snapshot, hints: &WorkloadHints) -> Result<String, Unresolved> {
    if let Some(w) = &hints.context_extension {
        return match snapshot.workload(w) {
            Some(found) => Ok(found.key()),
            None => Err(Unresolved(format!(
                "context_extensions workload `{}` is not a known workload",
                clip(w)
            ))),
        };
    }
    if let Some(ip) = hints.destination_ip {
        match snapshot.workloads_by_ip(ip).as_slice() {
            [one] => return Ok(one.key()),
            [] => {}
            many => {
                return Err(Unresolved(format!(
                    "destination IP {ip} belongs to {} workloads ({})",
                    many.len(),
                    many.iter().map(|w| w.key()).collect::<Vec<_>>().join(", ")
                )))
            }
        }
    }
    if let Some(p) = &hints.destination_principal {
        let Some((ns, sa)) = namespace_and_service_account(p) else {
            return Err(Unresolved(format!(
                "destination principal `{}` is not spiffe://<trust domain>/ns/<namespace>/sa/<service account>",
                clip(p)
            )));
        };
        let found: Vec<String> = snapshot
            .workloads_by_service_account(ns, sa)
            .iter()
            .map(|w| w.key())
            .collect();
        return match found.as_slice() {
            [one] => Ok(one.clone()),
            [] => Err(Unresolved(format!(
                "no workload runs as service account {ns}/{sa}"
            ))),
            many => Err(Unresolved(format!(
                "service account {ns}/{sa} is used by {} workloads ({})",
                many.len(),
                many.join(", ")
            ))),
        };
    }
    Err(Unresolved(
        "no workload: set context_extensions `workload`, list the workload's ips, or use mTLS with a SPIFFE destination principal"
            .to_string(),
    ))
}

/// `spiffe://<td>/ns/<ns>/sa/<sa>` -> (ns, sa).
fn namespace_and_service_account(id: &str) -> Option<(&str, &str)> {
    let rest = id.strip_prefix("spiffe://")?;
    let (_, path) = rest.split_once('/')?;
    match path.split('/').collect::<Vec<_>>().as_slice() {
        ["ns", ns, "sa", sa] if !ns.is_empty() && !sa.is_empty() => Some((ns, sa)),
        _ => None,
    }
}

/// At most 128 characters of client-influenced text, for messages.
fn clip(s: &str) -> String {
    s.chars().take(128).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use envoy_types::pb::envoy::config::core::v3::{HeaderMap, HeaderValue, SocketAddress};
    use envoy_types::pb::envoy::service::auth::v3::attribute_context::{Request, TlsSession};
    use envoy_types::pb::envoy::service::auth::v3::AttributeContext;
    use std::collections::HashMap;

    fn mk_peer(ip: &str, port: u32, principal: &str) -> Peer {
        Peer {
            address: Some(Address {
                address: Some(address::Address::SocketAddress(SocketAddress {
                    address: ip.into(),
                    port_specifier: Some(PortSpecifier::PortValue(port)),
                    ..Default::default()
                })),
            }),
            principal: principal.into(),
            ..Default::default()
        }
    }

    fn mk_http(headers: &[(&str, &str)], header_map: &[(&str, &str)]) -> CheckRequest {
        CheckRequest {
            attributes: Some(AttributeContext {
                source: Some(mk_peer(
                    "10.0.0.1",
                    40000,
                    "spiffe://cluster.local/ns/a/sa/b",
                )),
                destination: Some(mk_peer("10.0.0.2", 8080, "")),
                request: Some(Request {
                    http: Some(HttpRequest {
                        method: if header_map.is_empty() {
                            "GET".into()
                        } else {
                            String::new()
                        },
                        path: if header_map.is_empty() {
                            "/p?q=1".into()
                        } else {
                            String::new()
                        },
                        host: if header_map.is_empty() {
                            "svc".into()
                        } else {
                            String::new()
                        },
                        headers: headers
                            .iter()
                            .map(|(k, v)| (k.to_string(), v.to_string()))
                            .collect(),
                        header_map: Some(HeaderMap {
                            headers: header_map
                                .iter()
                                .map(|(k, v)| HeaderValue {
                                    key: k.to_string(),
                                    raw_value: v.as_bytes().to_vec(),
                                    ..Default::default()
                                })
                                .collect(),
                        }),
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                tls_session: Some(TlsSession {
                    sni: "svc.example".into(),
                }),
                ..Default::default()
            }),
        }
    }

    #[test]
    fn http_fields() {
        let c = convert(
            &mk_http(&[("X-Role", "a,b"), ("x-b", "1")], &[]),
            ConvertOptions::default(),
            7,
        );
        let a = &c.attrs;
        assert_eq!(a.protocol, Protocol::Http);
        assert_eq!(
            (a.method.as_str(), a.path.as_str(), a.host.as_str()),
            ("GET", "/p?q=1", "svc")
        );
        assert_eq!(a.source_ip, Some("10.0.0.1".parse().unwrap()));
        assert_eq!(a.destination_ip, Some("10.0.0.2".parse().unwrap()));
        assert_eq!(a.destination_port, 8080);
        assert_eq!(a.sni.as_deref(), Some("svc.example"));
        assert_eq!(
            a.source_principal.as_deref(),
            Some("spiffe://cluster.local/ns/a/sa/b")
        );
        assert_eq!(a.now, 7);
        // The joined form stays one value.
        assert_eq!(
            a.headers,
            vec![
                ("x-b".to_string(), "1".to_string()),
                ("x-role".to_string(), "a,b".to_string())
            ]
        );
        assert_eq!(c.realm(), "http://svc/p");
    }

    #[test]
    fn header_map_values_one_by_one_and_pseudo_headers() {
        let c = convert(
            &mk_http(
                &[],
                &[
                    (":method", "POST"),
                    (":path", "/x?y"),
                    (":authority", "h.example"),
                    (":scheme", "https"),
                    ("X-Role", "user"),
                    ("x-role", "admin"),
                ],
            ),
            ConvertOptions::default(),
            0,
        );
        let a = &c.attrs;
        assert_eq!(
            (a.method.as_str(), a.path.as_str(), a.host.as_str()),
            ("POST", "/x?y", "h.example")
        );
        assert_eq!(
            a.header_values("x-role").collect::<Vec<_>>(),
            vec!["user", "admin"]
        );
        assert!(a.headers.iter().all(|(n, _)| !n.starts_with(':')));
        assert_eq!(c.realm(), "https://h.example/x");
    }

    #[test]
    fn tcp_and_missing_attributes() {
        let mut req = mk_http(&[], &[]);
        if let Some(a) = req.attributes.as_mut() {
            a.request = None;
        }
        let c = convert(&req, ConvertOptions::default(), 0);
        assert_eq!(c.attrs.protocol, Protocol::Tcp);
        assert_eq!(c.attrs.destination_port, 8080);
        let empty = convert(&CheckRequest::default(), ConvertOptions::default(), 0);
        assert_eq!(empty.attrs.protocol, Protocol::Tcp);
        assert_eq!(empty.hints, WorkloadHints::default());
    }

    #[test]
    fn subject_dn_is_no_identity_and_xfcc_is_ignored_by_default() {
        let mut req = mk_http(
            &[(
                "x-forwarded-client-cert",
                "By=spiffe://cluster.local/ns/a/sa/x;URI=spiffe://cluster.local/ns/evil/sa/admin",
            )],
            &[],
        );
        if let Some(src) = req.attributes.as_mut().and_then(|a| a.source.as_mut()) {
            src.principal = "O=cluster.local,CN=client".into();
        }
        let c = convert(&req, ConvertOptions::default(), 0);
        assert_eq!(c.attrs.source_principal, None);
        let trusted = convert(&req, ConvertOptions { trust_xfcc: true }, 0);
        assert_eq!(
            trusted.attrs.source_principal.as_deref(),
            Some("spiffe://cluster.local/ns/evil/sa/admin")
        );
    }

    #[test]
    fn xfcc_last_element_with_quotes() {
        let h = r#"By=spiffe://td/ns/gw/sa/gw;URI=spiffe://td/ns/first/sa/a,By=spiffe://td/ns/x/sa/y;Subject="CN=a,O=b;c";URI=spiffe://td/ns/last/sa/z"#;
        assert_eq!(xfcc_uri(h).as_deref(), Some("spiffe://td/ns/last/sa/z"));
        assert_eq!(
            xfcc_uri(r#"Subject="x\"y";URI="spiffe://td/ns/q/sa/r""#).as_deref(),
            Some("spiffe://td/ns/q/sa/r")
        );
        assert_eq!(xfcc_uri("By=spiffe://td/ns/a/sa/b;Hash=abc"), None);
        assert_eq!(xfcc_uri(""), None);
    }

    #[test]
    fn metadata_payload_and_other_filters() {
        let s = |v: &str| Value {
            kind: Some(Kind::StringValue(v.into())),
        };
        let payload = Struct {
            fields: HashMap::from([
                ("iss".to_string(), s("https://issuer.test")),
                (
                    "exp".to_string(),
                    Value {
                        kind: Some(Kind::NumberValue(4102444800.0)),
                    },
                ),
                (
                    "ratio".to_string(),
                    Value {
                        kind: Some(Kind::NumberValue(0.5)),
                    },
                ),
            ]),
        };
        let md = Metadata {
            filter_metadata: HashMap::from([
                (
                    JWT_AUTHN_FILTER.to_string(),
                    Struct {
                        fields: HashMap::from([(
                            "jwt_payload".to_string(),
                            Value {
                                kind: Some(Kind::StructValue(payload)),
                            },
                        )]),
                    },
                ),
                (
                    "envoy.filters.http.rbac".to_string(),
                    Struct {
                        fields: HashMap::from([("k".to_string(), s("v"))]),
                    },
                ),
            ]),
            ..Default::default()
        };
        let (claims, rest) = metadata(&md);
        let claims = claims.unwrap();
        assert_eq!(claims["iss"], Json::from("https://issuer.test"));
        assert_eq!(claims["exp"], Json::from(4102444800_i64));
        assert_eq!(claims["ratio"], Json::from(0.5));
        assert_eq!(rest["envoy.filters.http.rbac"]["k"], Json::from("v"));
        assert!(!rest.contains_key(JWT_AUTHN_FILTER));
    }

    #[test]
    fn spiffe_destination_principal() {
        assert_eq!(
            namespace_and_service_account("spiffe://cluster.local/ns/foo/sa/bar"),
            Some(("foo", "bar"))
        );
        assert_eq!(
            namespace_and_service_account("spiffe://cluster.local/ns/foo"),
            None
        );
        assert_eq!(namespace_and_service_account("O=x"), None);
    }

    #[test]
    fn realm_is_sanitized_and_bounded() {
        let c = Converted {
            scheme: "http".into(),
            attrs: RequestAttrs {
                host: "h\"o\r\nst".into(),
                path: format!("/{}?access_token=secret", "a".repeat(5000)),
                ..Default::default()
            },
            ..Default::default()
        };
        let r = c.realm();
        assert!(r.starts_with("http://host/"));
        assert!(!r.contains("secret"));
        assert!(r.len() < 1100);
    }
}
