//! Istio's admission validation (what `kubectl apply` would reject), applied to every resource
//! we load, plus the warnings Istio logs for legal but surprising policies.
//!
//! Owns no state. One validator serves the CLI, the server and (later) the admission webhook,
//! so they cannot disagree.

use std::net::IpAddr;

use crate::attributes::{parse_when_key, WhenKey};
use crate::error::{LoadError, Location, Warning};
use crate::load::Loaded;
use crate::resources::{
    Action, AuthorizationPolicySpec, Operation, PeerAuthenticationSpec, PolicyTargetReference,
    RequestAuthenticationSpec, Source, WorkloadSelector,
};
use crate::uri_template;

/// Per the CRD: at most 512 rules, 512 `from` entries, 16 targetRefs.
const MAX_RULES: usize = 512;
const MAX_FROM: usize = 512;
const MAX_TARGET_REFS: usize = 16;
const MAX_SERVICE_ACCOUNTS: usize = 16;
const MAX_SERVICE_ACCOUNT_LEN: usize = 320;
const MAX_JWKS_URI_LEN: usize = 2048;

struct Errors<'a> {
    base: &'a Location,
    out: Vec<LoadError>,
}

impl Errors<'_> {
    fn push(&mut self, field: impl Into<String>, message: impl Into<String>) {
        self.out
            .push(LoadError::new(self.base.with_field(field), message));
    }
}

pub fn authorization_policy(
    ap: &Loaded<AuthorizationPolicySpec>,
    location: &Location,
) -> Vec<LoadError> {
    let spec = &ap.spec;
    let mut e = Errors {
        base: location,
        out: Vec::new(),
    };
    selector_and_targets(
        &mut e,
        spec.selector.as_ref(),
        spec.target_ref.as_ref(),
        spec.target_refs.as_deref(),
    );
    let rules = spec.rules.as_deref().unwrap_or_default();
    match spec.action {
        Action::Custom => {
            if spec.provider.as_ref().is_none_or(|p| p.name.is_empty()) {
                e.push("spec.provider.name", "a CUSTOM policy needs `provider.name` (an entry of meshConfig.extensionProviders)");
            }
            if rules.is_empty() {
                e.push("spec.rules", "a CUSTOM policy needs at least one rule; add `rules: [{}]` to send every request to the provider");
            }
        }
        action => {
            if spec.provider.is_some() {
                e.push(
                    "spec.provider",
                    format!(
                        "`provider` is only allowed with `action: CUSTOM`, not {}",
                        action.as_str()
                    ),
                );
            }
            if action == Action::Deny && spec.rules.is_none() {
                e.push("spec.rules", "a DENY policy without rules is rejected by Istio; add an empty rule `rules: [{}]` to deny every request");
            }
        }
    }
    if rules.len() > MAX_RULES {
        e.push(
            "spec.rules",
            format!("{} rules; at most {MAX_RULES} are allowed", rules.len()),
        );
    }
    for (i, rule) in rules.iter().enumerate() {
        let at = format!("spec.rules[{i}]");
        let Some(rule) = rule else {
            e.push(
                at,
                "a rule must not be null; use `{}` for a rule that matches everything",
            );
            continue;
        };
        if let Some(from) = &rule.from {
            if from.is_empty() {
                e.push(
                    format!("{at}.from"),
                    "`from` is present but empty; remove it to match any source",
                );
            }
            if from.len() > MAX_FROM {
                e.push(
                    format!("{at}.from"),
                    format!("{} entries; at most {MAX_FROM} are allowed", from.len()),
                );
            }
            for (j, f) in from.iter().enumerate() {
                let at = format!("{at}.from[{j}].source");
                match &f.source {
                    None => e.push(at, "`source` must be set"),
                    Some(s) if s.is_empty() => e.push(
                        at,
                        "`source` has no fields; remove this `from` entry or set a field",
                    ),
                    Some(s) => source(&mut e, &at, s, &ap.namespace, spec.action),
                }
            }
        }
        if let Some(to) = &rule.to {
            if to.is_empty() {
                e.push(
                    format!("{at}.to"),
                    "`to` is present but empty; remove it to match any operation",
                );
            }
            for (j, t) in to.iter().enumerate() {
                let at = format!("{at}.to[{j}].operation");
                match &t.operation {
                    None => e.push(at, "`operation` must be set"),
                    Some(o) if o.is_empty() => e.push(
                        at,
                        "`operation` has no fields; remove this `to` entry or set a field",
                    ),
                    Some(o) => operation(&mut e, &at, o),
                }
            }
        }
        for (j, c) in rule.when.as_deref().unwrap_or_default().iter().enumerate() {
            let at = format!("{at}.when[{j}]");
            if c.key.is_empty() {
                e.push(format!("{at}.key"), "`key` must be set");
                continue;
            }
            let key = match parse_when_key(&c.key) {
                Ok(k) => k,
                Err(msg) => {
                    e.push(format!("{at}.key"), msg);
                    continue;
                }
            };
            if spec.action == Action::Custom && key.is_identity() {
                e.push(
                    format!("{at}.key"),
                    format!("`{}` is not supported in a CUSTOM policy (CUSTOM rules run before authentication)", c.key),
                );
            }
            if c.values.is_empty() && c.not_values.is_empty() {
                e.push(&at, "a condition needs `values` or `notValues`");
            }
            for (field, list) in [("values", &c.values), ("notValues", &c.not_values)] {
                for (k, v) in list.iter().enumerate() {
                    let at = format!("{at}.{field}[{k}]");
                    if v.is_empty() {
                        e.push(at, "empty value; remove it or give a value");
                        continue;
                    }
                    match key {
                        WhenKey::SourceIp | WhenKey::RemoteIp | WhenKey::DestinationIp => {
                            if let Err(m) = check_cidr(v) {
                                e.push(at, m);
                            }
                        }
                        WhenKey::DestinationPort => {
                            if let Err(m) = check_port(v) {
                                e.push(at, m);
                            }
                        }
                        WhenKey::SourceServiceAccount => {
                            if let Err(m) = check_service_account(v) {
                                e.push(at, m);
                            }
                        }
                        WhenKey::SourceTrustDomain => {
                            if let Err(m) = check_trust_domain(v) {
                                e.push(at, m);
                            }
                        }
                        _ => {}
                    }
                }
            }
        }
    }
    e.out
}

fn source(e: &mut Errors<'_>, at: &str, s: &Source, _namespace: &str, action: Action) {
    let lists: [(&str, &Vec<String>); 14] = [
        ("principals", &s.principals),
        ("notPrincipals", &s.not_principals),
        ("requestPrincipals", &s.request_principals),
        ("notRequestPrincipals", &s.not_request_principals),
        ("namespaces", &s.namespaces),
        ("notNamespaces", &s.not_namespaces),
        ("serviceAccounts", &s.service_accounts),
        ("notServiceAccounts", &s.not_service_accounts),
        ("ipBlocks", &s.ip_blocks),
        ("notIpBlocks", &s.not_ip_blocks),
        ("remoteIpBlocks", &s.remote_ip_blocks),
        ("notRemoteIpBlocks", &s.not_remote_ip_blocks),
        ("trustDomains", &s.trust_domains),
        ("notTrustDomains", &s.not_trust_domains),
    ];
    for (name, list) in lists {
        for (k, v) in list.iter().enumerate() {
            if v.is_empty() {
                e.push(
                    format!("{at}.{name}[{k}]"),
                    "empty value; remove it or give a value",
                );
            }
        }
        if action == Action::Custom
            && !list.is_empty()
            && !matches!(
                name,
                "ipBlocks" | "notIpBlocks" | "remoteIpBlocks" | "notRemoteIpBlocks"
            )
        {
            e.push(
                format!("{at}.{name}"),
                format!("`{name}` is not supported in a CUSTOM policy (CUSTOM rules run before authentication); only ipBlocks and remoteIpBlocks are"),
            );
        }
    }
    for (name, list) in [
        ("ipBlocks", &s.ip_blocks),
        ("notIpBlocks", &s.not_ip_blocks),
        ("remoteIpBlocks", &s.remote_ip_blocks),
        ("notRemoteIpBlocks", &s.not_remote_ip_blocks),
    ] {
        for (k, v) in list.iter().enumerate() {
            if !v.is_empty() {
                if let Err(m) = check_cidr(v) {
                    e.push(format!("{at}.{name}[{k}]"), m);
                }
            }
        }
    }
    let has_sa = !s.service_accounts.is_empty() || !s.not_service_accounts.is_empty();
    let has_identity = !s.principals.is_empty()
        || !s.not_principals.is_empty()
        || !s.namespaces.is_empty()
        || !s.not_namespaces.is_empty();
    if has_sa && has_identity {
        e.push(
            at,
            "serviceAccounts cannot be combined with principals or namespaces in one source; use separate `from` entries",
        );
    }
    for (name, list) in [
        ("serviceAccounts", &s.service_accounts),
        ("notServiceAccounts", &s.not_service_accounts),
    ] {
        if list.len() > MAX_SERVICE_ACCOUNTS {
            e.push(
                format!("{at}.{name}"),
                format!(
                    "{} entries; at most {MAX_SERVICE_ACCOUNTS} are allowed",
                    list.len()
                ),
            );
        }
        for (k, v) in list.iter().enumerate() {
            if !v.is_empty() {
                if let Err(m) = check_service_account(v) {
                    e.push(format!("{at}.{name}[{k}]"), m);
                }
            }
        }
    }
    for (name, list) in [
        ("trustDomains", &s.trust_domains),
        ("notTrustDomains", &s.not_trust_domains),
    ] {
        for (k, v) in list.iter().enumerate() {
            if !v.is_empty() {
                if let Err(m) = check_trust_domain(v) {
                    e.push(format!("{at}.{name}[{k}]"), m);
                }
            }
        }
    }
}

fn operation(e: &mut Errors<'_>, at: &str, o: &Operation) {
    for (name, list) in [
        ("hosts", &o.hosts),
        ("notHosts", &o.not_hosts),
        ("ports", &o.ports),
        ("notPorts", &o.not_ports),
        ("methods", &o.methods),
        ("notMethods", &o.not_methods),
        ("paths", &o.paths),
        ("notPaths", &o.not_paths),
    ] {
        for (k, v) in list.iter().enumerate() {
            let at = format!("{at}.{name}[{k}]");
            if v.is_empty() {
                e.push(at, "empty value; remove it or give a value");
                continue;
            }
            match name {
                "ports" | "notPorts" => {
                    if let Err(m) = check_port(v) {
                        e.push(at, m);
                    }
                }
                "paths" | "notPaths" if uri_template::is_template(v) => {
                    if let Err(m) = uri_template::validate_template(v) {
                        e.push(at, format!("invalid path template `{v}`: {m}"));
                    }
                }
                _ => {}
            }
        }
    }
}

fn selector_and_targets(
    e: &mut Errors<'_>,
    selector: Option<&WorkloadSelector>,
    target_ref: Option<&PolicyTargetReference>,
    target_refs: Option<&[PolicyTargetReference]>,
) {
    let set = [
        selector.is_some(),
        target_ref.is_some(),
        target_refs.is_some(),
    ]
    .iter()
    .filter(|b| **b)
    .count();
    if set > 1 {
        e.push(
            "spec",
            "only one of `selector`, `targetRef` and `targetRefs` may be set",
        );
    }
    if let Some(sel) = selector {
        for (k, v) in &sel.match_labels {
            let at = format!("spec.selector.matchLabels[{k}]");
            if k.is_empty() {
                e.push(at, "label key must not be empty");
            } else if k.contains('*') || v.contains('*') {
                e.push(at, "wildcards are not allowed in selector labels");
            }
        }
    }
    let refs: Vec<(String, &PolicyTargetReference)> = match (target_ref, target_refs) {
        (Some(r), _) => vec![("spec.targetRef".to_string(), r)],
        (None, Some(rs)) => rs
            .iter()
            .enumerate()
            .map(|(i, r)| (format!("spec.targetRefs[{i}]"), r))
            .collect(),
        _ => Vec::new(),
    };
    if refs.len() > MAX_TARGET_REFS {
        e.push(
            "spec.targetRefs",
            format!(
                "{} entries; at most {MAX_TARGET_REFS} are allowed",
                refs.len()
            ),
        );
    }
    for (at, r) in refs {
        if r.kind.is_empty() {
            e.push(format!("{at}.kind"), "`kind` must be set");
        }
        if r.name.is_empty() {
            e.push(format!("{at}.name"), "`name` must be set");
        }
        if !r.namespace.is_empty() {
            e.push(
                format!("{at}.namespace"),
                "targetRef namespace must not be set; cross-namespace references are not supported (the target must be in the policy's namespace)",
            );
        }
    }
}

pub fn authorization_policy_warnings(
    ap: &Loaded<AuthorizationPolicySpec>,
    location: &Location,
) -> Vec<Warning> {
    let mut out = Vec::new();
    let mut warn = |field: String, message: String| {
        out.push(Warning {
            location: location.with_field(field),
            message,
        })
    };
    if let Some(v) = ap.meta.annotations.get(crate::DRY_RUN_ANNOTATION) {
        if parse_go_bool(v).is_none() {
            warn(
                format!("metadata.annotations[{}]", crate::DRY_RUN_ANNOTATION),
                format!("`{v}` is not a boolean; as in Istio the policy is enforced (not dry-run)"),
            );
        }
    }
    for (i, rule) in ap.spec.rules.iter().flatten().enumerate() {
        let Some(rule) = rule else { continue };
        for (j, f) in rule.from.iter().flatten().enumerate() {
            let Some(s) = &f.source else { continue };
            for (name, list) in [
                ("principals", &s.principals),
                ("notPrincipals", &s.not_principals),
            ] {
                for (k, v) in list.iter().enumerate() {
                    if v.starts_with("spiffe://") {
                        warn(
                            format!("spec.rules[{i}].from[{j}].source.{name}[{k}]"),
                            format!("`{v}` starts with `spiffe://`, which Istio prepends itself, so it never matches; write it without the scheme"),
                        );
                    }
                }
            }
        }
        if ap.spec.action == Action::Deny && crate::compile::rule_is_http_only(rule) {
            warn(
                format!("spec.rules[{i}]"),
                "this DENY rule uses only HTTP attributes, so it denies all traffic to TCP ports under its scope (as in Istio); scope it with `ports`".to_string(),
            );
        }
    }
    for (i, r) in ap
        .spec
        .target_ref
        .iter()
        .chain(ap.spec.target_refs.iter().flatten())
        .enumerate()
    {
        let supported = matches!(
            (r.group.as_str(), r.kind.as_str()),
            ("gateway.networking.k8s.io", "Gateway") | ("" | "core", "Service")
        );
        if !supported {
            warn(
                format!("spec.targetRefs[{i}]"),
                format!("meshauthz enforces targetRefs to Gateways (workloads with `gateway:`) and Services (waypoints: workloads with `gateway:` listing the Service in `services:`); `{}/{}` matches no workload", r.group, r.kind),
            );
        }
    }
    out
}

pub fn peer_authentication(
    pa: &Loaded<PeerAuthenticationSpec>,
    location: &Location,
) -> Vec<LoadError> {
    let mut e = Errors {
        base: location,
        out: Vec::new(),
    };
    selector_and_targets(&mut e, pa.spec.selector.as_ref(), None, None);
    if let Some(ports) = &pa.spec.port_level_mtls {
        let has_selector = pa
            .spec
            .selector
            .as_ref()
            .is_some_and(|s| !s.match_labels.is_empty());
        if !has_selector {
            e.push(
                "spec.portLevelMtls",
                "mesh-wide and namespace-wide PeerAuthentication cannot have portLevelMtls; add a `selector`",
            );
        }
        if ports.is_empty() {
            e.push("spec.portLevelMtls", "portLevelMtls must not be empty");
        }
        for key in ports.keys() {
            match key.0.parse::<u32>() {
                Ok(p) if (1..=65535).contains(&p) => {}
                _ => e.push(
                    format!("spec.portLevelMtls[{}]", key.0),
                    format!("`{}` is not a port in 1..65535", key.0),
                ),
            }
        }
    }
    e.out
}

pub fn request_authentication(
    ra: &Loaded<RequestAuthenticationSpec>,
    location: &Location,
) -> Vec<LoadError> {
    let spec = &ra.spec;
    let mut e = Errors {
        base: location,
        out: Vec::new(),
    };
    selector_and_targets(
        &mut e,
        spec.selector.as_ref(),
        spec.target_ref.as_ref(),
        spec.target_refs.as_deref(),
    );
    for (i, rule) in spec.jwt_rules.iter().enumerate() {
        let at = format!("spec.jwtRules[{i}]");
        if rule.issuer.is_empty() && rule.jwks_uri.is_empty() {
            e.push(
                format!("{at}.issuer"),
                "`issuer` must be set (it may be omitted only with `jwksUri`)",
            );
        }
        if !rule.jwks.is_empty() && !rule.jwks_uri.is_empty() {
            e.push(&at, "set only one of `jwks` and `jwksUri`");
        }
        if !rule.jwks_uri.is_empty() {
            let uri = &rule.jwks_uri;
            if uri.len() > MAX_JWKS_URI_LEN {
                e.push(
                    format!("{at}.jwksUri"),
                    format!("longer than {MAX_JWKS_URI_LEN} characters"),
                );
            }
            let ok = (uri.starts_with("https://") || uri.starts_with("http://"))
                && uri.split_once("://").is_some_and(|(_, rest)| {
                    !rest.is_empty()
                        && !rest.starts_with('/')
                        && !rest.contains(char::is_whitespace)
                });
            if !ok {
                e.push(
                    format!("{at}.jwksUri"),
                    format!("`{uri}` is not an http:// or https:// URL"),
                );
            }
        }
        if !rule.jwks.is_empty() {
            if let Err(m) = crate::jwks::parse_jwks(&rule.jwks) {
                e.push(format!("{at}.jwks"), m);
            }
        }
        for (j, a) in rule.audiences.iter().enumerate() {
            if a.is_empty() {
                e.push(
                    format!("{at}.audiences[{j}]"),
                    "empty value; remove it or give an audience",
                );
            }
        }
        for (j, h) in rule.from_headers.iter().enumerate() {
            if h.name.is_empty() {
                e.push(format!("{at}.fromHeaders[{j}].name"), "`name` must be set");
            } else if !is_header_name(&h.name) {
                e.push(
                    format!("{at}.fromHeaders[{j}].name"),
                    format!("`{}` is not a valid HTTP header name", h.name),
                );
            }
        }
        for (field, list) in [
            ("fromParams", &rule.from_params),
            ("fromCookies", &rule.from_cookies),
            ("spaceDelimitedClaims", &rule.space_delimited_claims),
        ] {
            for (j, v) in list.iter().enumerate() {
                if v.is_empty() {
                    e.push(
                        format!("{at}.{field}[{j}]"),
                        "empty value; remove it or give a name",
                    );
                }
            }
        }
        if !rule.output_payload_to_header.is_empty()
            && !is_header_name(&rule.output_payload_to_header)
        {
            e.push(
                format!("{at}.outputPayloadToHeader"),
                format!(
                    "`{}` is not a valid HTTP header name",
                    rule.output_payload_to_header
                ),
            );
        }
        for (j, c) in rule.output_claim_to_headers.iter().enumerate() {
            if c.header.is_empty() || !is_header_name(&c.header) {
                e.push(
                    format!("{at}.outputClaimToHeaders[{j}].header"),
                    format!("`{}` is not a valid HTTP header name", c.header),
                );
            }
            if c.claim.is_empty() {
                e.push(
                    format!("{at}.outputClaimToHeaders[{j}].claim"),
                    "`claim` must be set",
                );
            }
        }
        if let Some(t) = &rule.timeout {
            if parse_duration(t).is_none() {
                e.push(
                    format!("{at}.timeout"),
                    format!("`{t}` is not a duration such as `5s` or `500ms`"),
                );
            }
        }
    }
    e.out
}

pub fn request_authentication_warnings(
    ra: &Loaded<RequestAuthenticationSpec>,
    location: &Location,
) -> Vec<Warning> {
    let mut out = Vec::new();
    for (i, rule) in ra.spec.jwt_rules.iter().enumerate() {
        if rule.jwks.contains("\"d\"") {
            out.push(Warning {
                location: location.with_field(format!("spec.jwtRules[{i}].jwks")),
                message: "the inline JWKS seems to hold private key material (`d`); publish only public keys".into(),
            });
        }
    }
    out
}

/// A bare IP (meaning /32 or /128) or a CIDR.
pub fn check_cidr(v: &str) -> Result<(), String> {
    let ok = if v.contains('/') {
        v.parse::<ipnet::IpNet>().is_ok()
    } else {
        v.parse::<IpAddr>().is_ok()
    };
    if ok {
        Ok(())
    } else {
        Err(format!("`{v}` is not an IP address or CIDR range"))
    }
}

pub fn check_port(v: &str) -> Result<(), String> {
    match v.parse::<u32>() {
        Ok(p) if p <= 65535 && !v.starts_with('+') => Ok(()),
        _ => Err(format!("`{v}` is not a port number in 0..65535")),
    }
}

/// `sa` or `ns/sa`, no wildcard, at most 320 characters.
pub fn check_service_account(v: &str) -> Result<(), String> {
    if v.len() > MAX_SERVICE_ACCOUNT_LEN {
        return Err(format!("longer than {MAX_SERVICE_ACCOUNT_LEN} characters"));
    }
    if v.contains('*') {
        return Err(format!(
            "`{v}`: wildcards are not allowed in service accounts"
        ));
    }
    let parts: Vec<&str> = v.split('/').collect();
    if parts.len() > 2 || parts.iter().any(|p| p.is_empty()) {
        return Err(format!(
            "`{v}` must be `<service account>` or `<namespace>/<service account>`"
        ));
    }
    Ok(())
}

/// At most one `*`, only at the start or the end, and no `/`.
pub fn check_trust_domain(v: &str) -> Result<(), String> {
    if v.contains('/') {
        return Err(format!("`{v}`: a trust domain cannot contain `/`"));
    }
    let stars = v.matches('*').count();
    if stars > 1 || (stars == 1 && !(v.starts_with('*') || v.ends_with('*'))) {
        return Err(format!(
            "`{v}`: a trust domain may hold one `*`, only at its start or end"
        ));
    }
    Ok(())
}

/// Go's `strconv.ParseBool`, which Istio uses for `istio.io/dry-run`.
pub fn parse_go_bool(v: &str) -> Option<bool> {
    match v {
        "1" | "t" | "T" | "TRUE" | "true" | "True" => Some(true),
        "0" | "f" | "F" | "FALSE" | "false" | "False" => Some(false),
        _ => None,
    }
}

/// `5s`, `500ms`, `1m`, `1.5s`, `1h` (Go/protobuf durations, one unit).
pub fn parse_duration(v: &str) -> Option<std::time::Duration> {
    let (num, unit) = v
        .find(|c: char| c.is_ascii_alphabetic())
        .map(|i| v.split_at(i))?;
    let n: f64 = num.parse().ok()?;
    if !n.is_finite() || n < 0.0 {
        return None;
    }
    let secs = match unit {
        "ns" => n / 1e9,
        "us" | "µs" => n / 1e6,
        "ms" => n / 1e3,
        "s" => n,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        _ => return None,
    };
    std::time::Duration::try_from_secs_f64(secs).ok()
}

/// RFC 7230 token characters.
pub fn is_header_name(v: &str) -> bool {
    !v.is_empty()
        && v.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}
