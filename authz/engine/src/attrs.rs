//! `RequestAttrs`: the host-neutral view of one request (or TCP connection) that every host
//! builds: the CLI from a test case, the ext_authz server from a CheckRequest, the native filter
//! from Envoy's attributes. Owns no state.

use std::collections::BTreeMap;
use std::net::IpAddr;

/// HTTP request or raw TCP connection (no method, path, host, headers or JWT).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Protocol {
    #[default]
    Http,
    Tcp,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct RequestAttrs {
    /// The destination workload, `<namespace>/<name>`.
    pub workload: String,
    pub protocol: Protocol,
    /// The peer's identity from the mTLS connection (its URI SAN), `None` on plaintext. Only a
    /// `spiffe://` URI is an identity; any other value (a subject DN) is treated as none.
    pub source_principal: Option<String>,
    /// The direct peer address (`source.ip`).
    pub source_ip: Option<IpAddr>,
    /// The original client address when the host knows it (PROXY protocol); otherwise derived
    /// from `x-forwarded-for` and the mesh's `numTrustedProxies`, else `source_ip`.
    pub remote_ip: Option<IpAddr>,
    pub destination_ip: Option<IpAddr>,
    /// The workload (container) port.
    pub destination_port: u16,
    /// TLS SNI of the downstream connection.
    pub sni: Option<String>,
    pub method: String,
    /// `:path` as sent, query and fragment included; normalized by the engine.
    pub path: String,
    /// `:authority` / `Host`, as sent.
    pub host: String,
    /// Lower-case names; a repeated header is several entries, one per value.
    pub headers: Vec<(String, String)>,
    /// A JWT payload already verified upstream (Envoy `jwt_authn` metadata). Its issuer must still
    /// be one a RequestAuthentication of the workload names.
    pub verified_claims: Option<serde_json::Map<String, serde_json::Value>>,
    /// Dynamic metadata by filter name (`experimental.envoy.filters.*` conditions).
    pub metadata: BTreeMap<String, serde_json::Value>,
    /// Seconds since the Unix epoch, for JWT `exp`/`nbf`. The engine reads no clock.
    pub now: u64,
}

impl RequestAttrs {
    /// Every value of a header (name lower-case).
    pub fn header_values<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.headers
            .iter()
            .filter(move |(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// The trust domain of a well-formed SPIFFE ID (`spiffe://<td>/<path>`), or why it is not one.
/// Well-formed: a non-empty trust domain, a non-empty path of non-empty segments, no control
/// characters. The policy encoding relies on this (see `policy_compiler::attributes`).
pub fn spiffe_trust_domain(id: &str) -> Result<&str, SpiffeError> {
    let rest = id.strip_prefix("spiffe://").ok_or(SpiffeError::NotSpiffe)?;
    if id.chars().any(|c| c.is_control()) {
        return Err(SpiffeError::Malformed);
    }
    let (td, path) = rest.split_once('/').ok_or(SpiffeError::Malformed)?;
    if td.is_empty() || path.is_empty() || path.split('/').any(|s| s.is_empty()) {
        return Err(SpiffeError::Malformed);
    }
    Ok(td)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpiffeError {
    /// Not a `spiffe://` URI at all (e.g. a certificate subject): no identity.
    NotSpiffe,
    /// A `spiffe://` URI that is not well formed: the request is denied.
    Malformed,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spiffe_ids() {
        assert_eq!(
            spiffe_trust_domain("spiffe://cluster.local/ns/a/sa/b"),
            Ok("cluster.local")
        );
        assert_eq!(
            spiffe_trust_domain("O=cluster.local"),
            Err(SpiffeError::NotSpiffe)
        );
        assert_eq!(
            spiffe_trust_domain("spiffe:///ns/a"),
            Err(SpiffeError::Malformed)
        );
        assert_eq!(
            spiffe_trust_domain("spiffe://td/ns//sa/b"),
            Err(SpiffeError::Malformed)
        );
        assert_eq!(
            spiffe_trust_domain("spiffe://td/ns/a/"),
            Err(SpiffeError::Malformed)
        );
        assert_eq!(
            spiffe_trust_domain("spiffe://td"),
            Err(SpiffeError::Malformed)
        );
    }
}
