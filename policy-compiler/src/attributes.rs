//! The request attributes Istio policies can test (`when` keys and the Source/Operation fields),
//! and the names they have in the Cedar context. The engine builds the context with these names;
//! the compiler emits policies over them. Both use this module, so they cannot drift.
//!
//! Cedar context layout (schema in [`crate::schema`]):
//!
//! ```text
//! context.source.principal      String   peer SPIFFE ID from mTLS (absent on plaintext)
//! context.source.trustDomain    String   the trust domain of that ID
//! context.source.ip             ipaddr   direct peer address (source.ip, ipBlocks)
//! context.remoteIp              ipaddr   original client (remote.ip, remoteIpBlocks)
//! context.destination.ip        ipaddr   local address (destination.ip)
//! context.destination.port      Long     workload port (ports, destination.port)
//! context.sni                   String   TLS SNI (connection.sni)
//! context.http                  record   present only for HTTP requests (absent on TCP):
//!   .host .method .path                  host lower-cased; path normalized, no query/fragment
//!   .headers["name"]                     every value of the header, multi-value encoded
//!   .pathTemplates                       Set<String> of the policies' {*}/{**} templates that match
//! context.jwt                   record   present only when a token was verified:
//!   .iss .sub .azp                       String claims
//!   .aud                                 multi-value encoded
//!   .claims["a.b"]                       multi-value encoded claim (nested path joined by `.`)
//! context.metadata["filter[key]"]        multi-value encoded dynamic metadata (experimental)
//! ```
//!
//! **Multi-value encoding.** Istio matches a repeated header or a list claim if ANY element
//! matches, including prefix and suffix patterns; Cedar has no quantifier over sets. Such an
//! attribute is one string: every element, each followed by `\n` and the whole preceded by `\n`
//! (`"\nuser\nadmin\n"`). Inside an element, `\n` and NUL are escaped as `NUL n NUL` and
//! `NUL 0 NUL`, a code that is both prefix- and suffix-free, so:
//! exact `v` is `like "*\n<v>\n*"`, prefix `p*` is `like "*\n<p>*"`, suffix `*s` is
//! `like "*<s>\n*"` — exact ANY-element semantics in plain Cedar, analysable by a solver.
//! For claims, empty elements are left out and the attribute is absent when nothing remains, so
//! the presence pattern `*` ("a non-empty value") is `has`.

use std::net::IpAddr;

/// An address as the argument of Cedar's `ip()`. Cedar refuses IPv6 text with an embedded
/// IPv4 part (`::ffff:192.0.2.1`, how `Ipv6Addr` displays an IPv4-mapped address), so such an
/// address is written as its eight hex groups. It stays IPv6: outside every IPv4 block, inside
/// an IPv6 block such as `::ffff:10.0.0.0/104`, which is how Envoy compares it (a CIDR range
/// matches only addresses of its own version). Envoy reports an IPv4 peer of a dual-stack
/// socket as IPv4, so a mapped address is the rare case; it must neither fail a decision nor
/// make a policy that names one uncompilable.
pub fn cedar_ip(addr: IpAddr) -> String {
    match addr {
        IpAddr::V6(v6) if v6.to_string().contains('.') => {
            let g = v6.segments();
            format!(
                "{:x}:{:x}:{:x}:{:x}:{:x}:{:x}:{:x}:{:x}",
                g[0], g[1], g[2], g[3], g[4], g[5], g[6], g[7]
            )
        }
        _ => addr.to_string(),
    }
}

/// A CIDR range as the argument of Cedar's `ip()` (see [`cedar_ip`]).
pub fn cedar_ip_range(net: ipnet::IpNet) -> String {
    format!("{}/{}", cedar_ip(net.addr()), net.prefix_len())
}

/// The context attributes one Cedar policy reads, found in the text the compiler wrote for it
/// (every access is written in one of the forms matched here; the differential and conformance
/// tests would catch a form this misses). The engine builds only what the policies of a class
/// read: building the context is a large share of a decision.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ContextReads {
    pub flags: ReadFlags,
    /// The entries of the vocabulary it tests, as the Cedar string literals written (quotes
    /// included), by kind.
    pub literals: Vec<(NameKind, Box<str>)>,
}

/// The fixed attributes a policy reads.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReadFlags {
    pub principal: bool,
    pub trust_domain: bool,
    pub source_ip: bool,
    pub remote_ip: bool,
    pub destination_ip: bool,
    pub sni: bool,
    pub host: bool,
    pub method: bool,
    pub path: bool,
    pub jwt: bool,
}

/// Which table of the vocabulary a literal names an entry of.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum NameKind {
    Header,
    Template,
    Claim,
    Metadata,
}

impl ReadFlags {
    /// Every attribute.
    pub const ALL: ReadFlags = ReadFlags {
        principal: true,
        trust_domain: true,
        source_ip: true,
        remote_ip: true,
        destination_ip: true,
        sni: true,
        host: true,
        method: true,
        path: true,
        jwt: true,
    };

    pub fn union(self, o: ReadFlags) -> ReadFlags {
        ReadFlags {
            principal: self.principal || o.principal,
            trust_domain: self.trust_domain || o.trust_domain,
            source_ip: self.source_ip || o.source_ip,
            remote_ip: self.remote_ip || o.remote_ip,
            destination_ip: self.destination_ip || o.destination_ip,
            sni: self.sni || o.sni,
            host: self.host || o.host,
            method: self.method || o.method,
            path: self.path || o.path,
            jwt: self.jwt || o.jwt,
        }
    }
}

impl ContextReads {
    pub fn of_text(text: &str) -> ContextReads {
        // Every read starts with `context`: one search, then the attribute that follows, as a
        // whole name (`context.http.path` is not a read of `context.http.pathTemplates`).
        let mut flags = ReadFlags::default();
        for (at, _) in text.match_indices("context") {
            let rest = &text[at + "context".len()..];
            let is = |name: &str| {
                rest.strip_prefix(name).is_some_and(|after| {
                    !after.starts_with(|c: char| c.is_ascii_alphanumeric() || c == '_')
                })
            };
            flags.principal |= is(".source.principal") || is(".source has principal");
            flags.trust_domain |= is(".source.trustDomain") || is(".source has trustDomain");
            flags.source_ip |= is(".source.ip") || is(".source has ip");
            flags.remote_ip |= is(".remoteIp") || is(" has remoteIp");
            flags.destination_ip |= is(".destination.ip") || is(".destination has ip");
            flags.sni |= is(".sni") || is(" has sni");
            flags.host |= is(".http.host");
            flags.method |= is(".http.method");
            flags.path |= is(".http.path");
            flags.jwt |= is(".jwt") || is(" has jwt");
        }
        let mut literals: Vec<(NameKind, Box<str>)> = [
            (NameKind::Header, "headers has "),
            (NameKind::Template, "pathTemplates.contains("),
            (NameKind::Claim, "claims has "),
            (NameKind::Metadata, "metadata has "),
        ]
        .into_iter()
        .flat_map(|(kind, marker)| literals_after(text, marker).map(move |l| (kind, l.into())))
        .collect();
        literals.sort_unstable();
        literals.dedup();
        ContextReads { flags, literals }
    }
}

/// Each Cedar string literal (quotes included, as written) that directly follows `marker`.
fn literals_after<'t>(text: &'t str, marker: &'t str) -> impl Iterator<Item = &'t str> + 't {
    text.match_indices(marker).filter_map(move |(at, _)| {
        let rest = &text[at + marker.len()..];
        let bytes = rest.as_bytes();
        if bytes.first() != Some(&b'"') {
            return None;
        }
        let mut i = 1;
        while i < bytes.len() {
            match bytes[i] {
                b'\\' => i += 2,
                b'"' => return rest.get(..=i),
                _ => i += 1,
            }
        }
        None
    })
}

/// A `when` condition key, parsed.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum WhenKey {
    /// `request.headers[name]`, name lower-cased.
    RequestHeader(String),
    SourceIp,
    RemoteIp,
    SourceNamespace,
    SourcePrincipal,
    SourceServiceAccount,
    SourceTrustDomain,
    RequestAuthPrincipal,
    RequestAuthAudiences,
    RequestAuthPresenter,
    /// `request.auth.claims[a][b]`: the claim path.
    RequestAuthClaims(Vec<String>),
    DestinationIp,
    DestinationPort,
    ConnectionSni,
    /// `experimental.envoy.filters.<filter>[<key>]`: dynamic metadata.
    FilterMetadata {
        filter: String,
        key: String,
    },
}

impl WhenKey {
    /// Keys a CUSTOM rule may not use (they need authentication, which runs after CUSTOM).
    pub fn is_identity(&self) -> bool {
        matches!(
            self,
            WhenKey::SourceNamespace
                | WhenKey::SourcePrincipal
                | WhenKey::SourceServiceAccount
                | WhenKey::SourceTrustDomain
                | WhenKey::RequestAuthPrincipal
                | WhenKey::RequestAuthAudiences
                | WhenKey::RequestAuthPresenter
                | WhenKey::RequestAuthClaims(_)
        )
    }

    /// Keys that cannot be evaluated on a TCP connection (Istio §1.10).
    pub fn is_http_only(&self) -> bool {
        matches!(
            self,
            WhenKey::RequestHeader(_)
                | WhenKey::RequestAuthPrincipal
                | WhenKey::RequestAuthAudiences
                | WhenKey::RequestAuthPresenter
                | WhenKey::RequestAuthClaims(_)
        )
    }
}

/// Parses a `when` key the way Istio's validation does; the error says what is wrong.
pub fn parse_when_key(key: &str) -> Result<WhenKey, String> {
    let simple = match key {
        "source.ip" => Some(WhenKey::SourceIp),
        "remote.ip" => Some(WhenKey::RemoteIp),
        "source.namespace" => Some(WhenKey::SourceNamespace),
        "source.principal" => Some(WhenKey::SourcePrincipal),
        "source.serviceAccount" => Some(WhenKey::SourceServiceAccount),
        "source.trustDomain" => Some(WhenKey::SourceTrustDomain),
        "request.auth.principal" => Some(WhenKey::RequestAuthPrincipal),
        "request.auth.audiences" => Some(WhenKey::RequestAuthAudiences),
        "request.auth.presenter" => Some(WhenKey::RequestAuthPresenter),
        "destination.ip" => Some(WhenKey::DestinationIp),
        "destination.port" => Some(WhenKey::DestinationPort),
        "connection.sni" => Some(WhenKey::ConnectionSni),
        _ => None,
    };
    if let Some(k) = simple {
        return Ok(k);
    }
    if let Some(rest) = key.strip_prefix("request.headers") {
        let name = rest
            .strip_prefix('[')
            .and_then(|r| r.strip_suffix(']'))
            .filter(|n| !n.is_empty())
            .ok_or_else(|| {
                format!(
                    "`{key}`: write the header name in brackets, e.g. `request.headers[x-token]`"
                )
            })?;
        return Ok(WhenKey::RequestHeader(name.to_ascii_lowercase()));
    }
    if let Some(rest) = key.strip_prefix("request.auth.claims") {
        let path = parse_bracket_path(rest)
            .ok_or_else(|| format!("`{key}`: write the claim in brackets, e.g. `request.auth.claims[groups]` or `request.auth.claims[a][b]` for a nested claim"))?;
        return Ok(WhenKey::RequestAuthClaims(path));
    }
    if let Some(rest) = key.strip_prefix("experimental.envoy.filters.") {
        let open = rest.find('[');
        let parsed = open.and_then(|i| {
            let (filter, bracket) = rest.split_at(i);
            let k = bracket.strip_prefix('[')?.strip_suffix(']')?;
            (!filter.is_empty() && !k.is_empty()).then(|| WhenKey::FilterMetadata {
                filter: format!("envoy.filters.{filter}"),
                key: k.to_string(),
            })
        });
        return parsed.ok_or_else(|| {
            format!("`{key}`: write it as `experimental.envoy.filters.<filter>[<key>]`")
        });
    }
    if key.starts_with("destination.labels") {
        return Err(format!(
            "`{key}` is not supported; use the policy's `selector` instead"
        ));
    }
    if matches!(
        key,
        "destination.namespace" | "destination.name" | "destination.user"
    ) {
        return Err(format!(
            "`{key}` is not supported (it was removed from Istio)"
        ));
    }
    Err(format!(
        "unknown attribute `{key}`; see the list of supported keys in Istio's authorization conditions reference"
    ))
}

/// `[a][b]` -> `["a", "b"]`; `[[a]]` -> `["[a]"]` (Istio strips the outer brackets and splits at
/// `][`). `None` when the text is not bracketed or a part is empty.
fn parse_bracket_path(text: &str) -> Option<Vec<String>> {
    let inner = text.strip_prefix('[')?.strip_suffix(']')?;
    let parts: Vec<String> = inner.split("][").map(str::to_string).collect();
    if parts.iter().any(|p| p.is_empty()) {
        return None;
    }
    Some(parts)
}

/// The attribute name of a claim path in `context.jwt.claims`: the parts joined by `.`, with `\`
/// and `.` inside a part escaped by `\` so that distinct paths never share a name.
pub fn claim_attribute(path: &[String]) -> String {
    path.iter()
        .map(|p| p.replace('\\', "\\\\").replace('.', "\\."))
        .collect::<Vec<_>>()
        .join(".")
}

/// The attribute name of a dynamic metadata key in `context.metadata`.
pub fn metadata_attribute(filter: &str, key: &str) -> String {
    format!("{filter}[{key}]")
}

/// Escapes one element for the multi-value encoding (see the module docs).
pub fn encode_element(value: &str, out: &mut String) {
    for c in value.chars() {
        match c {
            '\n' => out.push_str("\u{0}n\u{0}"),
            '\u{0}' => out.push_str("\u{0}0\u{0}"),
            c => out.push(c),
        }
    }
}

/// Builds the multi-value encoding of `values`; `skip_empty` leaves out empty elements.
pub fn encode_values<'a>(
    values: impl IntoIterator<Item = &'a str>,
    skip_empty: bool,
) -> Option<String> {
    let mut out = String::from("\n");
    let mut any = false;
    for v in values {
        if skip_empty && v.is_empty() {
            continue;
        }
        encode_element(v, &mut out);
        out.push('\n');
        any = true;
    }
    any.then_some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_claim_paths_like_istio() {
        assert_eq!(
            parse_when_key("request.auth.claims[good][abc]"),
            Ok(WhenKey::RequestAuthClaims(vec![
                "good".into(),
                "abc".into()
            ]))
        );
        assert_eq!(
            parse_when_key("request.auth.claims[[good]]"),
            Ok(WhenKey::RequestAuthClaims(vec!["[good]".into()]))
        );
        assert!(parse_when_key("request.auth.claims").is_err());
        assert!(parse_when_key("request.auth.claims[]").is_err());
        assert!(parse_when_key("request.auth.claimsx[bad]").is_err());
    }

    #[test]
    fn rejects_unknown_and_removed_keys() {
        assert!(parse_when_key("destination.labels[app]").is_err());
        assert!(parse_when_key("destination.namespace").is_err());
        assert!(parse_when_key("request.foo").is_err());
        assert!(parse_when_key("request.headers").is_err());
        assert_eq!(
            parse_when_key("request.headers[X-Token]"),
            Ok(WhenKey::RequestHeader("x-token".into()))
        );
    }

    /// What a policy reads, from the forms the compiler writes.
    #[test]
    fn reads_are_found_in_the_written_forms() {
        let r = ContextReads::of_text(
            r#"permit (principal, action, resource) when { context has http && context.http.pathTemplates.contains("/a/{*}") && context.http.headers has "x-\"q" && context.jwt.claims has "groups" && context has metadata && context.metadata has "f[k]" && context.source has principal };"#,
        );
        assert_eq!(
            r.flags,
            ReadFlags {
                principal: true,
                jwt: true,
                ..ReadFlags::default()
            },
            "pathTemplates is no read of the path"
        );
        let literals: Vec<(NameKind, &str)> = r.literals.iter().map(|(k, l)| (*k, &**l)).collect();
        assert_eq!(
            literals,
            [
                (NameKind::Header, r#""x-\"q""#),
                (NameKind::Template, r#""/a/{*}""#),
                (NameKind::Claim, r#""groups""#),
                (NameKind::Metadata, r#""f[k]""#),
            ]
        );
        let r = ContextReads::of_text(
            "context.http.path like \"/x\" && context.http.method == \"GET\" && context.http.host == \"h\" && context has remoteIp && context.remoteIp.isInRange(ip(\"10.0.0.0/8\")) && context.destination.ip == ip(\"1.2.3.4\") && context has sni && context.sni == \"s\" && context.source.trustDomain == \"td\" && context.source.ip.isLoopback()",
        );
        assert_eq!(
            r.flags,
            ReadFlags {
                trust_domain: true,
                source_ip: true,
                remote_ip: true,
                destination_ip: true,
                sni: true,
                host: true,
                method: true,
                path: true,
                ..ReadFlags::default()
            }
        );
        assert!(r.literals.is_empty());
    }

    #[test]
    fn claim_attribute_names_are_injective() {
        let a = claim_attribute(&["a.b".into()]);
        let b = claim_attribute(&["a".into(), "b".into()]);
        assert_ne!(a, b);
        assert_eq!(b, "a.b");
    }

    #[test]
    fn encodes_values_without_ambiguity() {
        assert_eq!(
            encode_values(["user", "admin"], false).as_deref(),
            Some("\nuser\nadmin\n")
        );
        assert_eq!(
            encode_values(["x\nadmin"], false).as_deref(),
            Some("\nx\u{0}n\u{0}admin\n")
        );
        assert_eq!(encode_values(["", ""], true), None);
    }
}
