//! Envoy's view of one request -> [`RequestAttrs`]. [`StreamHost`] is what the filter needs from
//! Envoy for one stream (attributes, request headers, setting headers, a local reply); `ffi`
//! implements it over the ABI, tests implement it in memory. State owned: none.
//!
//! Identity comes only from the connection: the peer certificate's URI SAN (attribute 37) when
//! the connection is mTLS (attribute 29); plaintext has no principal. `source.ip` (`ipBlocks`)
//! is the connection's physical peer ([`StreamHost::direct_remote_address`]), as Envoy RBAC's
//! `direct_remote_ip`: X-Forwarded-For and PROXY protocol do not change it. `remote.ip` is left
//! to the engine (X-Forwarded-For per the mesh's `numTrustedProxies`, else the peer). Only the headers the policy
//! set can look at are read ([`header_names`], computed once per snapshot).

use std::net::{IpAddr, SocketAddr};

use authz_engine::{Protocol, RequestAttrs, Snapshot};

/// Envoy's attribute ids (`envoy_dynamic_module_type_attribute_id`, enum order, checked against a
/// running Envoy 1.40).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Attribute {
    /// `request.path`: `:path` as sent, query included.
    RequestPath = 0,
    /// `request.host`: `:authority`.
    RequestHost = 2,
    /// `request.scheme`.
    RequestScheme = 3,
    /// `request.method`.
    RequestMethod = 4,
    /// `source.address`: Envoy's *downstream remote address*, which X-Forwarded-For (with the
    /// HCM default `use_remote_address: false`) and PROXY protocol rewrite. Never read for
    /// `source.ip`: see [`StreamHost::direct_remote_address`]. Listed to document the trap.
    SourceAddress = 24,
    /// `destination.address`: `ip:port` the connection was accepted on.
    DestinationAddress = 26,
    /// `destination.port` (int).
    DestinationPort = 27,
    /// `connection.mtls` (bool): TLS with a peer certificate.
    ConnectionMtls = 29,
    /// `connection.requested_server_name`: the SNI.
    ConnectionRequestedServerName = 30,
    /// `connection.uri_san_peer_certificate`: the peer certificate's first URI SAN.
    ConnectionUriSanPeerCertificate = 37,
}

/// What the filter needs from Envoy for one stream.
pub trait StreamHost {
    /// A string attribute, borrowed from Envoy until the next call that changes the request.
    fn attribute_bytes(&self, id: Attribute) -> Option<&[u8]>;
    fn attribute_int(&self, id: Attribute) -> Option<u64>;
    fn attribute_bool(&self, id: Attribute) -> Option<bool>;
    /// The physical peer of the downstream connection (Envoy's direct remote address): what
    /// `source.ip` and `ipBlocks` match. `None` when it is not an IP address.
    fn direct_remote_address(&self) -> Option<(IpAddr, u16)>;
    /// Appends every value of the request header `name` (lower-case), in order, as
    /// `(name, value)` pairs.
    fn request_header_values(&self, name: &str, out: &mut Vec<(String, String)>);
    /// Sets a request header (replacing every value), or removes it with `None`.
    fn set_request_header(&mut self, name: &str, value: Option<&str>) -> bool;
    /// Answers the request locally. `details` is Envoy's response code details (no spaces).
    fn send_response(&mut self, status: u32, headers: &[(&str, &str)], body: &str, details: &str);
}

/// Headers RequestAuthentication reads besides the token locations its rules name: the default
/// token location, cookies, and what tells a CORS preflight (which skips token checks).
pub const TOKEN_HEADERS: [&str; 4] = [
    "authorization",
    "cookie",
    "origin",
    "access-control-request-method",
];

/// The client address chain, read for `remoteIpBlocks` when the mesh trusts proxies in front
/// (`numTrustedProxies`); otherwise the remote address is the peer.
pub const FORWARDED_FOR: &str = "x-forwarded-for";

/// The request headers to read for `workload` under `snapshot`: every header a policy condition
/// names (`:method` and `:path` come from attributes); [`TOKEN_HEADERS`] and the token locations
/// of the workload's RequestAuthentications when it has any; [`FORWARDED_FOR`] when the mesh has
/// trusted proxies. Each header read is a call into Envoy, so nothing else. Sorted, lower-case,
/// no duplicates.
pub fn header_names(snapshot: &Snapshot, workload: &str) -> Vec<String> {
    let compiled = snapshot.compiled();
    let mut names: Vec<String> = compiled
        .vocabulary
        .headers
        .iter()
        .filter(|h| !matches!(h.as_str(), ":method" | ":path"))
        .cloned()
        .collect();
    if compiled.mesh.num_trusted_proxies > 0 {
        names.push(FORWARDED_FOR.to_string());
    }
    if let Some(w) = snapshot.workload(workload) {
        for ra in compiled.request.iter().filter(|ra| ra.scope.applies_to(w)) {
            names.extend(TOKEN_HEADERS.iter().map(|h| h.to_string()));
            for p in &ra.providers {
                names.extend(p.from_headers.iter().map(|(h, _)| h.to_ascii_lowercase()));
            }
        }
    }
    names.sort_unstable();
    names.dedup();
    names
}

/// `ip:port` (IPv6 as `[addr]:port`) or a bare IP; `None` for anything else (a pipe).
pub fn parse_address(s: &str) -> Option<(IpAddr, Option<u16>)> {
    if let Ok(sa) = s.parse::<SocketAddr>() {
        return Some((sa.ip(), Some(sa.port())));
    }
    let bare = s
        .strip_prefix('[')
        .and_then(|r| r.strip_suffix(']'))
        .unwrap_or(s);
    bare.parse::<IpAddr>().ok().map(|ip| (ip, None))
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Reads one request from Envoy. `headers` is [`header_names`] of the current snapshot.
pub fn read_request(
    host: &impl StreamHost,
    workload: &str,
    headers: &[String],
    now: u64,
) -> RequestAttrs {
    let string = |id| host.attribute_bytes(id).map(text);
    // "plaintext means no principal": the SAN is read only from an mTLS connection.
    let mtls = host.attribute_bool(Attribute::ConnectionMtls) == Some(true);
    let source_principal = if mtls {
        string(Attribute::ConnectionUriSanPeerCertificate).filter(|s| !s.is_empty())
    } else {
        None
    };
    let address = |id| {
        host.attribute_bytes(id)
            .and_then(|b| std::str::from_utf8(b).ok())
            .and_then(parse_address)
    };
    // The physical peer, never `source.address` (attribute 24: client-chosen through XFF).
    let source_ip = host.direct_remote_address().map(|(ip, _)| ip);
    let destination = address(Attribute::DestinationAddress);
    let destination_port = host
        .attribute_int(Attribute::DestinationPort)
        .and_then(|p| u16::try_from(p).ok())
        .or(destination.and_then(|(_, p)| p))
        .unwrap_or(0);

    let mut header_values = Vec::with_capacity(headers.len());
    for name in headers {
        host.request_header_values(name, &mut header_values);
    }
    let method = string(Attribute::RequestMethod).unwrap_or_default();
    RequestAttrs {
        workload: workload.to_string(),
        protocol: Protocol::Http,
        source_principal,
        source_ip,
        // Derived by the engine from X-Forwarded-For (numTrustedProxies), as for the server.
        remote_ip: None,
        destination_ip: destination.map(|(ip, _)| ip),
        destination_port,
        sni: string(Attribute::ConnectionRequestedServerName).filter(|s| !s.is_empty()),
        method,
        path: string(Attribute::RequestPath).unwrap_or_default(),
        host: string(Attribute::RequestHost).unwrap_or_default(),
        headers: header_values,
        verified_claims: None,
        metadata: Default::default(),
        now,
    }
}

#[cfg(test)]
pub(crate) mod fake {
    //! An in-memory [`StreamHost`] for unit tests.
    use super::*;
    use std::collections::HashMap;

    /// A local reply: status, headers, body, details.
    pub type Reply = (u32, Vec<(String, String)>, String, String);

    #[derive(Debug, Default)]
    pub struct FakeStream {
        pub strings: HashMap<u32, String>,
        pub ints: HashMap<u32, u64>,
        pub bools: HashMap<u32, bool>,
        /// The physical peer.
        pub peer: Option<(IpAddr, u16)>,
        pub headers: Vec<(String, String)>,
        pub reads: std::cell::RefCell<Vec<String>>,
        pub reply: Option<Reply>,
    }

    impl FakeStream {
        pub fn http(path: &str) -> FakeStream {
            let mut s = FakeStream::default();
            s.strings.insert(Attribute::RequestPath as u32, path.into());
            s.strings
                .insert(Attribute::RequestMethod as u32, "GET".into());
            s.strings
                .insert(Attribute::RequestHost as u32, "httpbin".into());
            s.strings
                .insert(Attribute::RequestScheme as u32, "http".into());
            s.strings
                .insert(Attribute::SourceAddress as u32, "10.0.0.1:40000".into());
            s.peer = Some((IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 0, 1)), 40000));
            s.strings
                .insert(Attribute::DestinationAddress as u32, "10.0.0.2:8080".into());
            s.ints.insert(Attribute::DestinationPort as u32, 8080);
            s
        }

        pub fn mtls(path: &str, san: &str) -> FakeStream {
            let mut s = FakeStream::http(path);
            s.bools.insert(Attribute::ConnectionMtls as u32, true);
            s.strings.insert(
                Attribute::ConnectionUriSanPeerCertificate as u32,
                san.into(),
            );
            s
        }

        pub fn header(mut self, name: &str, value: &str) -> FakeStream {
            self.headers.push((name.into(), value.into()));
            self
        }

        pub fn header_value(&self, name: &str) -> Option<&str> {
            self.headers
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, v)| v.as_str())
        }
    }

    impl StreamHost for FakeStream {
        fn attribute_bytes(&self, id: Attribute) -> Option<&[u8]> {
            self.strings.get(&(id as u32)).map(|s| s.as_bytes())
        }
        fn attribute_int(&self, id: Attribute) -> Option<u64> {
            self.ints.get(&(id as u32)).copied()
        }
        fn attribute_bool(&self, id: Attribute) -> Option<bool> {
            self.bools.get(&(id as u32)).copied()
        }
        fn direct_remote_address(&self) -> Option<(IpAddr, u16)> {
            self.peer
        }
        fn request_header_values(&self, name: &str, out: &mut Vec<(String, String)>) {
            self.reads.borrow_mut().push(name.to_string());
            out.extend(self.headers.iter().filter(|(n, _)| n == name).cloned());
        }
        fn set_request_header(&mut self, name: &str, value: Option<&str>) -> bool {
            self.headers.retain(|(n, _)| n != name);
            if let Some(v) = value {
                self.headers.push((name.into(), v.into()));
            }
            true
        }
        fn send_response(
            &mut self,
            status: u32,
            headers: &[(&str, &str)],
            body: &str,
            details: &str,
        ) {
            assert!(self.reply.is_none(), "send_response called twice");
            self.reply = Some((
                status,
                headers
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
                body.into(),
                details.into(),
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::fake::FakeStream;
    use super::*;
    use std::net::{Ipv4Addr, Ipv6Addr};

    #[test]
    fn addresses() {
        assert_eq!(
            parse_address("127.0.0.1:59220"),
            Some((IpAddr::V4(Ipv4Addr::LOCALHOST), Some(59220)))
        );
        assert_eq!(
            parse_address("[::1]:80"),
            Some((IpAddr::V6(Ipv6Addr::LOCALHOST), Some(80)))
        );
        assert_eq!(
            parse_address("[2001:db8::5]:443"),
            Some(("2001:db8::5".parse().unwrap(), Some(443)))
        );
        assert_eq!(
            parse_address("10.1.2.3"),
            Some(("10.1.2.3".parse().unwrap(), None))
        );
        assert_eq!(
            parse_address("::1"),
            Some((IpAddr::V6(Ipv6Addr::LOCALHOST), None))
        );
        assert_eq!(
            parse_address("[::1]"),
            Some((IpAddr::V6(Ipv6Addr::LOCALHOST), None))
        );
        assert_eq!(parse_address("/var/run/sock"), None);
        assert_eq!(parse_address("127.0.0.1:99999"), None);
        assert_eq!(parse_address(""), None);
    }

    #[test]
    fn plaintext_has_no_principal_even_with_a_san_attribute() {
        let mut s = FakeStream::http("/");
        s.strings.insert(
            Attribute::ConnectionUriSanPeerCertificate as u32,
            "spiffe://cluster.local/ns/default/sa/sleep".into(),
        );
        let r = read_request(&s, "default/httpbin", &[], 1);
        assert_eq!(r.source_principal, None);
        s.bools.insert(Attribute::ConnectionMtls as u32, false);
        assert_eq!(
            read_request(&s, "default/httpbin", &[], 1).source_principal,
            None
        );
    }

    #[test]
    fn mtls_principal_addresses_and_request_line() {
        let s = FakeStream::mtls("/a/b?x=1", "spiffe://cluster.local/ns/default/sa/sleep");
        let r = read_request(&s, "default/httpbin", &[], 42);
        assert_eq!(
            r.source_principal.as_deref(),
            Some("spiffe://cluster.local/ns/default/sa/sleep")
        );
        assert_eq!(r.workload, "default/httpbin");
        assert_eq!(r.source_ip, Some("10.0.0.1".parse().unwrap()));
        assert_eq!(r.destination_ip, Some("10.0.0.2".parse().unwrap()));
        assert_eq!(r.destination_port, 8080);
        assert_eq!(r.remote_ip, None);
        assert_eq!(r.method, "GET");
        assert_eq!(r.path, "/a/b?x=1");
        assert_eq!(r.host, "httpbin");
        assert_eq!(r.now, 42);
        assert_eq!(r.protocol, Protocol::Http);
    }

    #[test]
    fn source_ip_is_the_physical_peer_not_xff_or_source_address() {
        // Envoy (use_remote_address: false) turned `x-forwarded-for: 203.0.113.10` into
        // `source.address`; the connection's peer is 10.0.0.9.
        let mut s = FakeStream::http("/").header("x-forwarded-for", "203.0.113.10");
        s.strings
            .insert(Attribute::SourceAddress as u32, "203.0.113.10:0".into());
        s.peer = Some(("10.0.0.9".parse().unwrap(), 51000));
        let names = vec!["x-forwarded-for".to_string()];
        let r = read_request(&s, "a/b", &names, 1);
        assert_eq!(r.source_ip, Some("10.0.0.9".parse().unwrap()));
        // remote.ip stays the engine's to derive from XFF.
        assert_eq!(r.remote_ip, None);
        assert_eq!(
            r.headers,
            vec![("x-forwarded-for".to_string(), "203.0.113.10".to_string())]
        );
        // IPv6 peers too.
        s.peer = Some(("2001:db8::9".parse().unwrap(), 443));
        assert_eq!(
            read_request(&s, "a/b", &[], 1).source_ip,
            Some("2001:db8::9".parse().unwrap())
        );
    }

    #[test]
    fn no_physical_peer_means_no_source_ip_even_with_source_address() {
        let mut s = FakeStream::http("/");
        s.peer = None;
        assert_eq!(read_request(&s, "a/b", &[], 1).source_ip, None);
    }

    #[test]
    fn mtls_without_uri_san_has_no_principal() {
        let mut s = FakeStream::mtls("/", "");
        assert_eq!(read_request(&s, "a/b", &[], 1).source_principal, None);
        s.strings
            .remove(&(Attribute::ConnectionUriSanPeerCertificate as u32));
        assert_eq!(read_request(&s, "a/b", &[], 1).source_principal, None);
    }

    #[test]
    fn destination_port_falls_back_to_the_address() {
        let mut s = FakeStream::http("/");
        s.ints.clear();
        assert_eq!(read_request(&s, "a/b", &[], 1).destination_port, 8080);
    }

    #[test]
    fn repeated_headers_keep_every_value_and_only_named_headers_are_read() {
        let s = FakeStream::http("/")
            .header("x-role", "user")
            .header("x-other", "nope")
            .header("x-role", "admin");
        let names = vec!["x-role".to_string(), "x-absent".to_string()];
        let r = read_request(&s, "a/b", &names, 1);
        assert_eq!(
            r.headers,
            vec![
                ("x-role".to_string(), "user".to_string()),
                ("x-role".to_string(), "admin".to_string())
            ]
        );
        assert_eq!(*s.reads.borrow(), names);
    }
}
