//! Differential property test: the real engine (`policy_compiler` -> Cedar -> `authz_engine::decide`)
//! against a small, independent reference interpreter of Istio's AuthorizationPolicy and
//! PeerAuthentication rules, written from `istio-semantics.md` §1.3-§1.7, §1.9, §1.10, §2 and §7
//! (in the spirit of ztunnel's `rbac.rs` `matches()`: plain Rust over structs, no Cedar, and no
//! code shared with the compiler or the engine).
//!
//! Each generated case is a mesh (2-3 workloads in `foo`/`bar`), 0-4 AuthorizationPolicies
//! (ALLOW/DENY/AUDIT, optionally dry-run), 0-4 PeerAuthentications (at most one per level, so the
//! creation-time tie-break never matters) and 16 requests (HTTP or TCP, plaintext or mTLS). One
//! snapshot is built per case and every request is decided by both sides.
//!
//! Values come from small pools so that rules match often. A mismatch prints the YAML, the
//! request, both verdicts and the engine's explanation; proptest then shrinks it.

use std::cell::Cell;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::IpAddr;

use authz_engine::{Protocol, RequestAttrs, Verdict};
use policy_compiler::{Inputs, MeshConfig, Workload};
use proptest::prelude::*;
use proptest::sample::{select, subsequence};
use proptest::test_runner::{Config, TestCaseError, TestError, TestRunner};

const ROOT_NS: &str = "istio-system";

// ---------------------------------------------------------------------------------------------
// Value pools
// ---------------------------------------------------------------------------------------------

const PRINCIPALS: &[&str] = &[
    "cluster.local/ns/foo/sa/sleep",
    "cluster.local/ns/foo/*",
    "*/sa/sleep",
    "*",
];
const NAMESPACES: &[&str] = &["foo", "bar", "*"];
const SERVICE_ACCOUNTS: &[&str] = &["sleep", "foo/sleep", "bar/other"];
const IP_BLOCKS: &[&str] = &["10.0.0.0/24", "10.0.1.5", "fd00::/16"];
const REQUEST_PRINCIPALS: &[&str] = &["*", "https://issuer.example.com/alice"];
const HOSTS: &[&str] = &["Example.COM", "*.Example.com", "example.com:*", "*"];
const PORTS: &[&str] = &["8080", "9090"];
const METHODS: &[&str] = &["GET", "POST", "*"];
const PATHS: &[&str] = &["/a/b", "/a/*", "*/b", "*"];
const HEADER_VALUES: &[&str] = &["admin", "user", "adm*", "*min", "*"];
const NS_VALUES: &[&str] = &["foo", "bar", "*"];

const REQ_PRINCIPALS: &[&str] = &[
    "spiffe://cluster.local/ns/foo/sa/sleep",
    "spiffe://cluster.local/ns/foo/sa/other",
    "spiffe://cluster.local/ns/bar/sa/sleep",
    "spiffe://cluster.local/ns/bar/sa/other",
    "spiffe://td2/ns/foo/sa/sleep",
];
const REQ_IPS: &[&str] = &["10.0.0.7", "10.0.1.5", "10.0.2.1", "fd00::5"];
const REQ_PORTS: &[u16] = &[8080, 9090, 7070];
const REQ_METHODS: &[&str] = &["GET", "POST", "PUT"];
const REQ_PATHS: &[&str] = &["/a/b", "/a/c", "/x/b", "/", "/a/b?q=1", "/x/b#frag"];
const REQ_HOSTS: &[&str] = &[
    "example.com",
    "EXAMPLE.com",
    "api.example.com",
    "example.com:8080",
];
const REQ_ROLES: &[&str] = &["admin", "user", "superadmin", ""];

// ---------------------------------------------------------------------------------------------
// Generated model
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone)]
struct Wl {
    ns: &'static str,
    name: String,
    app: &'static str,
    version: &'static str,
}

impl Wl {
    fn labels(&self) -> BTreeMap<String, String> {
        BTreeMap::from([
            ("app".to_string(), self.app.to_string()),
            ("version".to_string(), self.version.to_string()),
        ])
    }
    fn key(&self) -> String {
        format!("{}/{}", self.ns, self.name)
    }
}

/// `matchLabels`; `Some(vec![])` renders `selector: {matchLabels: {}}` (selects everything).
type Selector = Option<Vec<(&'static str, &'static str)>>;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Action {
    Allow,
    Deny,
    Audit,
}

#[derive(Debug, Clone, Default)]
struct Source {
    principals: Vec<&'static str>,
    not_principals: Vec<&'static str>,
    namespaces: Vec<&'static str>,
    not_namespaces: Vec<&'static str>,
    service_accounts: Vec<&'static str>,
    not_service_accounts: Vec<&'static str>,
    ip_blocks: Vec<&'static str>,
    not_ip_blocks: Vec<&'static str>,
    request_principals: Vec<&'static str>,
    not_request_principals: Vec<&'static str>,
}

impl Source {
    fn fields(&self) -> [(&'static str, &[&'static str]); 10] {
        [
            ("principals", &self.principals),
            ("notPrincipals", &self.not_principals),
            ("namespaces", &self.namespaces),
            ("notNamespaces", &self.not_namespaces),
            ("serviceAccounts", &self.service_accounts),
            ("notServiceAccounts", &self.not_service_accounts),
            ("ipBlocks", &self.ip_blocks),
            ("notIpBlocks", &self.not_ip_blocks),
            ("requestPrincipals", &self.request_principals),
            ("notRequestPrincipals", &self.not_request_principals),
        ]
    }
    fn is_empty(&self) -> bool {
        self.fields().iter().all(|(_, v)| v.is_empty())
    }
}

#[derive(Debug, Clone, Default)]
struct Operation {
    hosts: Vec<&'static str>,
    not_hosts: Vec<&'static str>,
    ports: Vec<&'static str>,
    not_ports: Vec<&'static str>,
    methods: Vec<&'static str>,
    not_methods: Vec<&'static str>,
    paths: Vec<&'static str>,
    not_paths: Vec<&'static str>,
}

impl Operation {
    fn fields(&self) -> [(&'static str, &[&'static str]); 8] {
        [
            ("hosts", &self.hosts),
            ("notHosts", &self.not_hosts),
            ("ports", &self.ports),
            ("notPorts", &self.not_ports),
            ("methods", &self.methods),
            ("notMethods", &self.not_methods),
            ("paths", &self.paths),
            ("notPaths", &self.not_paths),
        ]
    }
    fn is_empty(&self) -> bool {
        self.fields().iter().all(|(_, v)| v.is_empty())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CondKey {
    /// `request.headers[x-role]`, the bool says whether the name is written `X-Role`.
    Header(bool),
    SourceIp,
    DestinationPort,
    SourceNamespace,
    SourcePrincipal,
}

impl CondKey {
    fn render(self) -> &'static str {
        match self {
            CondKey::Header(false) => "request.headers[x-role]",
            CondKey::Header(true) => "request.headers[X-Role]",
            CondKey::SourceIp => "source.ip",
            CondKey::DestinationPort => "destination.port",
            CondKey::SourceNamespace => "source.namespace",
            CondKey::SourcePrincipal => "source.principal",
        }
    }
    fn pool(self) -> &'static [&'static str] {
        match self {
            CondKey::Header(_) => HEADER_VALUES,
            CondKey::SourceIp => IP_BLOCKS,
            CondKey::DestinationPort => PORTS,
            CondKey::SourceNamespace => NS_VALUES,
            CondKey::SourcePrincipal => PRINCIPALS,
        }
    }
}

#[derive(Debug, Clone)]
struct Condition {
    key: CondKey,
    values: Vec<&'static str>,
    not_values: Vec<&'static str>,
}

#[derive(Debug, Clone, Default)]
struct Rule {
    from: Option<Vec<Source>>,
    to: Option<Vec<Operation>>,
    when: Vec<Condition>,
}

#[derive(Debug, Clone)]
enum Rules {
    /// `rules` not written: the policy matches nothing.
    Absent,
    /// `rules: []`: the same as absent.
    EmptyList,
    List(Vec<Rule>),
}

#[derive(Debug, Clone)]
struct AuthzPolicy {
    name: String,
    ns: &'static str,
    api_version: &'static str,
    selector: Selector,
    action: Action,
    /// ALLOW written explicitly (otherwise `action` is omitted and defaults to ALLOW).
    explicit_allow: bool,
    dry_run: Option<&'static str>,
    rules: Rules,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum MtlsMode {
    Unset,
    Disable,
    Permissive,
    Strict,
}

impl MtlsMode {
    fn as_str(self) -> &'static str {
        match self {
            MtlsMode::Unset => "UNSET",
            MtlsMode::Disable => "DISABLE",
            MtlsMode::Permissive => "PERMISSIVE",
            MtlsMode::Strict => "STRICT",
        }
    }
}

#[derive(Debug, Clone)]
struct PeerAuthn {
    name: &'static str,
    ns: &'static str,
    /// Always `Some(non-empty)` for workload-level ones (and the ignored root-namespace one).
    selector: Selector,
    /// `None`: `mtls` not written (same as UNSET).
    mode: Option<MtlsMode>,
    port_level: Option<(u16, MtlsMode)>,
}

#[derive(Debug, Clone)]
struct Req {
    workload: usize,
    tcp: bool,
    /// On TCP, whether method/path/host/headers are left empty (a real TCP host) or carry the
    /// generated values (which the engine must ignore).
    tcp_blank: bool,
    principal: Option<&'static str>,
    ip: &'static str,
    port: u16,
    method: &'static str,
    path: &'static str,
    host: &'static str,
    roles: Vec<&'static str>,
    other_header: bool,
}

#[derive(Debug, Clone)]
struct Scenario {
    workloads: Vec<Wl>,
    policies: Vec<AuthzPolicy>,
    peer_authns: Vec<PeerAuthn>,
    requests: Vec<Req>,
}

// ---------------------------------------------------------------------------------------------
// Strategies
// ---------------------------------------------------------------------------------------------

fn field(pool: &'static [&'static str], p: f64) -> impl Strategy<Value = Vec<&'static str>> {
    prop::option::weighted(p, subsequence(pool.to_vec(), 1..=2)).prop_map(Option::unwrap_or_default)
}

fn source() -> impl Strategy<Value = Source> {
    const P: f64 = 0.17;
    (
        field(PRINCIPALS, P),
        field(PRINCIPALS, P),
        field(NAMESPACES, P),
        field(NAMESPACES, P),
        field(SERVICE_ACCOUNTS, 0.1),
        field(SERVICE_ACCOUNTS, 0.1),
        field(IP_BLOCKS, P),
        field(IP_BLOCKS, P),
        field(REQUEST_PRINCIPALS, 0.06),
        field(REQUEST_PRINCIPALS, 0.06),
    )
        .prop_map(|(p, np, n, nn, sa, nsa, ip, nip, rp, nrp)| {
            let mut s = Source {
                principals: p,
                not_principals: np,
                namespaces: n,
                not_namespaces: nn,
                service_accounts: sa,
                not_service_accounts: nsa,
                ip_blocks: ip,
                not_ip_blocks: nip,
                request_principals: rp,
                not_request_principals: nrp,
            };
            // Validation: serviceAccounts cannot be combined with principals/namespaces.
            let identity = !(s.principals.is_empty()
                && s.not_principals.is_empty()
                && s.namespaces.is_empty()
                && s.not_namespaces.is_empty());
            if identity {
                s.service_accounts.clear();
                s.not_service_accounts.clear();
            }
            s
        })
        .prop_filter("a source needs a field", |s| !s.is_empty())
}

fn operation() -> impl Strategy<Value = Operation> {
    const P: f64 = 0.2;
    (
        field(HOSTS, P),
        field(HOSTS, P),
        field(PORTS, P),
        field(PORTS, P),
        field(METHODS, P),
        field(METHODS, P),
        field(PATHS, P),
        field(PATHS, P),
    )
        .prop_map(|(h, nh, po, npo, m, nm, pa, npa)| Operation {
            hosts: h,
            not_hosts: nh,
            ports: po,
            not_ports: npo,
            methods: m,
            not_methods: nm,
            paths: pa,
            not_paths: npa,
        })
        .prop_filter("an operation needs a field", |o| !o.is_empty())
}

fn condition() -> impl Strategy<Value = Condition> {
    prop_oneof![
        3 => any::<bool>().prop_map(CondKey::Header),
        1 => Just(CondKey::SourceIp),
        1 => Just(CondKey::DestinationPort),
        1 => Just(CondKey::SourceNamespace),
        1 => Just(CondKey::SourcePrincipal),
    ]
    .prop_flat_map(|key| (Just(key), field(key.pool(), 0.7), field(key.pool(), 0.4)))
    .prop_map(|(key, values, not_values)| Condition {
        key,
        values,
        not_values,
    })
    .prop_filter("a condition needs values or notValues", |c| {
        !c.values.is_empty() || !c.not_values.is_empty()
    })
}

fn rule() -> impl Strategy<Value = Rule> {
    (
        prop::option::weighted(0.55, prop::collection::vec(source(), 1..=2)),
        prop::option::weighted(0.55, prop::collection::vec(operation(), 1..=2)),
        prop_oneof![2 => Just(Vec::new()), 2 => prop::collection::vec(condition(), 1..=2)],
    )
        .prop_map(|(from, to, when)| Rule { from, to, when })
}

fn selector() -> impl Strategy<Value = Selector> {
    let label = prop_oneof![
        select(vec![("app", "httpbin"), ("app", "web")]),
        select(vec![("version", "v1"), ("version", "v2")]),
    ];
    prop_oneof![
        6 => Just(None),
        1 => Just(Some(Vec::new())),
        6 => prop::collection::vec(label, 1..=2).prop_map(|mut v| {
            v.sort();
            v.dedup_by_key(|(k, _)| *k);
            Some(v)
        }),
    ]
}

fn non_empty_selector() -> impl Strategy<Value = Selector> {
    selector().prop_map(|s| match s {
        Some(v) if !v.is_empty() => Some(v),
        _ => Some(vec![("app", "httpbin")]),
    })
}

fn authz_policy() -> impl Strategy<Value = AuthzPolicy> {
    (
        select(vec!["foo", "bar", ROOT_NS]),
        select(vec!["security.istio.io/v1", "security.istio.io/v1beta1"]),
        selector(),
        prop_oneof![5 => Just(Action::Allow), 4 => Just(Action::Deny), 2 => Just(Action::Audit)],
        any::<bool>(),
        prop_oneof![
            6 => Just(None),
            2 => Just(Some("true")),
            1 => select(vec![Some("false"), Some("True"), Some("1"), Some("0"), Some("yes")]),
        ],
        prop_oneof![2 => Just(0u8), 1 => Just(1u8), 17 => Just(2u8)],
        prop::collection::vec(rule(), 1..=3),
    )
        .prop_map(
            move |(ns, api_version, selector, action, explicit_allow, dry_run, mode, rules)| {
                let rules = match (mode, action) {
                    (_, Action::Deny) | (2, _) => Rules::List(rules),
                    (0, _) => Rules::Absent,
                    _ => Rules::EmptyList,
                };
                AuthzPolicy {
                    name: String::new(),
                    ns,
                    api_version,
                    selector,
                    action,
                    explicit_allow,
                    dry_run,
                    rules,
                }
            },
        )
}

fn mode() -> impl Strategy<Value = Option<MtlsMode>> {
    prop_oneof![
        1 => Just(None),
        1 => Just(Some(MtlsMode::Unset)),
        2 => Just(Some(MtlsMode::Disable)),
        3 => Just(Some(MtlsMode::Permissive)),
        3 => Just(Some(MtlsMode::Strict)),
    ]
}

fn any_mode() -> impl Strategy<Value = MtlsMode> {
    select(vec![
        MtlsMode::Unset,
        MtlsMode::Disable,
        MtlsMode::Permissive,
        MtlsMode::Strict,
    ])
}

fn peer_authns() -> impl Strategy<Value = Vec<PeerAuthn>> {
    let ns = || select(vec!["foo", "bar"]);
    (
        prop::option::weighted(0.3, mode()),
        prop::option::weighted(0.3, (ns(), mode())),
        prop::option::weighted(
            0.3,
            (
                ns(),
                non_empty_selector(),
                mode(),
                prop::option::weighted(0.5, (select(REQ_PORTS.to_vec()), any_mode())),
            ),
        ),
        prop::option::weighted(0.1, (non_empty_selector(), mode())),
    )
        .prop_map(|(mesh, namespace, workload, root_selector)| {
            let mut out = Vec::new();
            if let Some(mode) = mesh {
                out.push(PeerAuthn {
                    name: "pa-mesh",
                    ns: ROOT_NS,
                    selector: None,
                    mode,
                    port_level: None,
                });
            }
            if let Some((ns, mode)) = namespace {
                out.push(PeerAuthn {
                    name: "pa-ns",
                    ns,
                    selector: None,
                    mode,
                    port_level: None,
                });
            }
            if let Some((ns, selector, mode, port_level)) = workload {
                out.push(PeerAuthn {
                    name: "pa-workload",
                    ns,
                    selector,
                    mode,
                    port_level,
                });
            }
            if let Some((selector, mode)) = root_selector {
                out.push(PeerAuthn {
                    name: "pa-root-selector",
                    ns: ROOT_NS,
                    selector,
                    mode,
                    port_level: None,
                });
            }
            out
        })
}

fn workloads() -> impl Strategy<Value = Vec<Wl>> {
    prop::collection::vec(
        (
            select(vec!["foo", "bar"]),
            select(vec!["httpbin", "web"]),
            select(vec!["v1", "v2"]),
        ),
        2..=3,
    )
    .prop_map(|ws| {
        ws.into_iter()
            .enumerate()
            .map(|(i, (ns, app, version))| Wl {
                ns,
                name: format!("w{i}"),
                app,
                version,
            })
            .collect()
    })
}

fn request() -> impl Strategy<Value = Req> {
    (
        (0usize..3, prop::bool::weighted(0.3), any::<bool>()),
        prop::option::weighted(0.75, select(REQ_PRINCIPALS.to_vec())),
        select(REQ_IPS.to_vec()),
        select(REQ_PORTS.to_vec()),
        select(REQ_METHODS.to_vec()),
        select(REQ_PATHS.to_vec()),
        select(REQ_HOSTS.to_vec()),
        prop::collection::vec(select(REQ_ROLES.to_vec()), 0..=2),
        prop::bool::weighted(0.2),
    )
        .prop_map(
            |(
                (workload, tcp, tcp_blank),
                principal,
                ip,
                port,
                method,
                path,
                host,
                roles,
                other_header,
            )| Req {
                workload,
                tcp,
                tcp_blank,
                principal,
                ip,
                port,
                method,
                path,
                host,
                roles,
                other_header,
            },
        )
}

fn scenario() -> impl Strategy<Value = Scenario> {
    (
        workloads(),
        prop::collection::vec(authz_policy(), 0..=4),
        prop_oneof![1 => Just(Vec::new()), 1 => peer_authns()],
        prop::collection::vec(request(), 16),
    )
        .prop_map(|(workloads, mut policies, peer_authns, mut requests)| {
            for (i, p) in policies.iter_mut().enumerate() {
                p.name = format!("p{i}");
            }
            for r in &mut requests {
                r.workload %= workloads.len();
            }
            Scenario {
                workloads,
                policies,
                peer_authns,
                requests,
            }
        })
}

// ---------------------------------------------------------------------------------------------
// YAML rendering
// ---------------------------------------------------------------------------------------------

fn flow(values: &[&str]) -> String {
    serde_json::to_string(values).unwrap_or_default()
}

fn render_selector(out: &mut String, selector: &Selector) {
    match selector {
        None => {}
        Some(labels) if labels.is_empty() => out.push_str("  selector:\n    matchLabels: {}\n"),
        Some(labels) => {
            out.push_str("  selector:\n    matchLabels:\n");
            for (k, v) in labels {
                let _ = writeln!(out, "      {k}: {v}");
            }
        }
    }
}

fn render_policy(p: &AuthzPolicy) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "apiVersion: {}", p.api_version);
    out.push_str("kind: AuthorizationPolicy\nmetadata:\n");
    let _ = writeln!(out, "  name: {}\n  namespace: {}", p.name, p.ns);
    if let Some(v) = p.dry_run {
        let _ = writeln!(out, "  annotations:\n    istio.io/dry-run: \"{v}\"");
    }
    let mut spec = String::new();
    render_selector(&mut spec, &p.selector);
    match p.action {
        Action::Allow if !p.explicit_allow => {}
        Action::Allow => spec.push_str("  action: ALLOW\n"),
        Action::Deny => spec.push_str("  action: DENY\n"),
        Action::Audit => spec.push_str("  action: AUDIT\n"),
    }
    match &p.rules {
        Rules::Absent => {}
        Rules::EmptyList => spec.push_str("  rules: []\n"),
        Rules::List(rules) => {
            spec.push_str("  rules:\n");
            for r in rules {
                render_rule(&mut spec, r);
            }
        }
    }
    if spec.is_empty() {
        out.push_str("spec: {}\n");
    } else {
        out.push_str("spec:\n");
        out.push_str(&spec);
    }
    out
}

fn render_rule(out: &mut String, r: &Rule) {
    if r.from.is_none() && r.to.is_none() && r.when.is_empty() {
        out.push_str("  - {}\n");
        return;
    }
    let mut lead = "  - ";
    if let Some(from) = &r.from {
        let _ = writeln!(out, "{lead}from:");
        lead = "    ";
        for s in from {
            out.push_str("    - source:\n");
            for (name, values) in s.fields() {
                if !values.is_empty() {
                    let _ = writeln!(out, "        {name}: {}", flow(values));
                }
            }
        }
    }
    if let Some(to) = &r.to {
        let _ = writeln!(out, "{lead}to:");
        lead = "    ";
        for o in to {
            out.push_str("    - operation:\n");
            for (name, values) in o.fields() {
                if !values.is_empty() {
                    let _ = writeln!(out, "        {name}: {}", flow(values));
                }
            }
        }
    }
    if !r.when.is_empty() {
        let _ = writeln!(out, "{lead}when:");
        for c in &r.when {
            let _ = writeln!(out, "    - key: {}", c.key.render());
            if !c.values.is_empty() {
                let _ = writeln!(out, "      values: {}", flow(&c.values));
            }
            if !c.not_values.is_empty() {
                let _ = writeln!(out, "      notValues: {}", flow(&c.not_values));
            }
        }
    }
}

fn render_peer_authn(p: &PeerAuthn) -> String {
    let mut out = String::new();
    out.push_str("apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata:\n");
    let _ = writeln!(out, "  name: {}\n  namespace: {}", p.name, p.ns);
    let mut spec = String::new();
    render_selector(&mut spec, &p.selector);
    if let Some(mode) = p.mode {
        let _ = writeln!(spec, "  mtls:\n    mode: {}", mode.as_str());
    }
    if let Some((port, mode)) = p.port_level {
        let _ = writeln!(
            spec,
            "  portLevelMtls:\n    {port}:\n      mode: {}",
            mode.as_str()
        );
    }
    if spec.is_empty() {
        out.push_str("spec: {}\n");
    } else {
        out.push_str("spec:\n");
        out.push_str(&spec);
    }
    out
}

fn render(sc: &Scenario) -> String {
    let docs: Vec<String> = sc
        .policies
        .iter()
        .map(render_policy)
        .chain(sc.peer_authns.iter().map(render_peer_authn))
        .collect();
    docs.join("---\n")
}

// ---------------------------------------------------------------------------------------------
// Reference interpreter (istio-semantics.md §1.3-§1.7, §1.9, §1.10, §2)
// ---------------------------------------------------------------------------------------------

/// What the reference sees of a request, after PeerAuthentication.
struct View<'a> {
    tcp: bool,
    principal: Option<&'a str>,
    ip: IpAddr,
    port: u16,
    method: &'a str,
    /// Without query and fragment.
    path: &'a str,
    host: &'a str,
    roles: &'a [&'a str],
}

/// `*` anywhere in `pattern` matches any (possibly empty) sequence; everything else is literal.
fn glob(pattern: &str, text: &str) -> bool {
    let p = pattern.as_bytes();
    let t = text.as_bytes();
    let (mut pi, mut ti) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() && p[pi] == b'*' {
            star = Some((pi, ti));
            pi += 1;
        } else if pi < p.len() && p[pi] == t[ti] {
            pi += 1;
            ti += 1;
        } else if let Some((sp, st)) = star {
            pi = sp + 1;
            ti = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == b'*')
}

/// Istio's four string forms (§1.5); `*` is "non-empty".
fn string_match(pattern: &str, value: &str) -> bool {
    if pattern == "*" {
        return !value.is_empty();
    }
    if let Some(suffix) = pattern.strip_prefix('*') {
        return value.ends_with(suffix);
    }
    if let Some(prefix) = pattern.strip_suffix('*') {
        return value.starts_with(prefix);
    }
    pattern == value
}

/// `(values empty or any matches) and not (any notValue matches)` (§1.4).
fn field_ok(values: &[&str], not_values: &[&str], matches: impl Fn(&str) -> bool) -> bool {
    (values.is_empty() || values.iter().any(|v| matches(v)))
        && !not_values.iter().any(|v| matches(v))
}

/// `principals` / `source.principal`: `spiffe://` prepended (§1.6); `*` = any authenticated peer.
fn principal_match(value: &str, principal: Option<&str>) -> bool {
    let Some(p) = principal else { return false };
    if value == "*" {
        return !p.is_empty();
    }
    if let Some(suffix) = value.strip_prefix('*') {
        return glob(&format!("spiffe://*{suffix}"), p);
    }
    if let Some(prefix) = value.strip_suffix('*') {
        return p.starts_with(&format!("spiffe://{prefix}"));
    }
    p == format!("spiffe://{value}")
}

/// `namespaces` / `source.namespace`: regex `.*/ns/<ns>/.*` on the principal, `*` -> `.*`.
fn namespace_match(value: &str, principal: Option<&str>) -> bool {
    principal.is_some_and(|p| glob(&format!("*/ns/{value}/*"), p))
}

/// `serviceAccounts`: `ns/sa` or `sa` (policy namespace); regex
/// `spiffe://.+/ns/<ns>/(.+/|)sa/<sa>(/.+)?` with literal parts.
fn service_account_match(value: &str, policy_ns: &str, principal: Option<&str>) -> bool {
    let Some(rest) = principal.and_then(|p| p.strip_prefix("spiffe://")) else {
        return false;
    };
    let (ns, sa) = value.split_once('/').unwrap_or((policy_ns, value));
    let ns_part = format!("/ns/{ns}/");
    let sa_part = format!("sa/{sa}");
    (1..rest.len()).any(|i| {
        if !rest[i..].starts_with(&ns_part) {
            return false;
        }
        let r = &rest[i + ns_part.len()..];
        (0..r.len()).any(|j| {
            let lead_ok = j == 0 || (j >= 2 && r.as_bytes()[j - 1] == b'/');
            if !lead_ok || !r[j..].starts_with(&sa_part) {
                return false;
            }
            let tail = &r[j + sa_part.len()..];
            tail.is_empty() || (tail.len() > 1 && tail.starts_with('/'))
        })
    })
}

/// `ipBlocks` / `source.ip`: an IP (= /32 or /128) or CIDR.
fn ip_match(value: &str, ip: IpAddr) -> bool {
    let (addr, bits) = match value.split_once('/') {
        Some((a, b)) => (a, b.parse::<u32>().ok()),
        None => (value, None),
    };
    let Ok(net) = addr.parse::<IpAddr>() else {
        return false;
    };
    match (net, ip) {
        (IpAddr::V4(n), IpAddr::V4(i)) => {
            let bits = bits.unwrap_or(32);
            let mask = if bits == 0 {
                0
            } else {
                u32::MAX << (32 - bits)
            };
            (u32::from(n) & mask) == (u32::from(i) & mask)
        }
        (IpAddr::V6(n), IpAddr::V6(i)) => {
            let bits = bits.unwrap_or(128);
            let mask = if bits == 0 {
                0
            } else {
                u128::MAX << (128 - bits)
            };
            (u128::from(n) & mask) == (u128::from(i) & mask)
        }
        _ => false,
    }
}

fn port_match(value: &str, port: u16) -> bool {
    value.parse::<u16>().ok() == Some(port)
}

/// `hosts`: case-insensitive, no port stripping; `*` = header present (always on HTTP).
fn host_match(value: &str, host: &str) -> bool {
    if value == "*" {
        return true;
    }
    string_match(&value.to_ascii_lowercase(), &host.to_ascii_lowercase())
}

/// `methods`: case-sensitive; `*` = present.
fn method_match(value: &str, method: &str) -> bool {
    value == "*" || string_match(value, method)
}

/// One header value against one pattern; `*` = present (even an empty value).
fn header_value_match(pattern: &str, value: &str) -> bool {
    pattern == "*" || string_match(pattern, value)
}

fn source_matches(s: &Source, policy_ns: &str, v: &View) -> bool {
    let p = v.principal;
    field_ok(&s.principals, &s.not_principals, |x| principal_match(x, p))
        && field_ok(&s.namespaces, &s.not_namespaces, |x| namespace_match(x, p))
        && field_ok(&s.service_accounts, &s.not_service_accounts, |x| service_account_match(x, policy_ns, p))
        && field_ok(&s.ip_blocks, &s.not_ip_blocks, |x| ip_match(x, v.ip))
        // No request carries a JWT: request principals are absent. HTTP-only: on TCP this key
        // was dropped (only DENY/AUDIT rules get here on TCP).
        && (v.tcp || field_ok(&s.request_principals, &s.not_request_principals, |_| false))
}

fn operation_matches(o: &Operation, v: &View) -> bool {
    field_ok(&o.ports, &o.not_ports, |x| port_match(x, v.port))
        && (v.tcp
            || (field_ok(&o.hosts, &o.not_hosts, |x| host_match(x, v.host))
                && field_ok(&o.methods, &o.not_methods, |x| method_match(x, v.method))
                && field_ok(&o.paths, &o.not_paths, |x| string_match(x, v.path))))
}

fn condition_matches(c: &Condition, v: &View) -> bool {
    match c.key {
        // Any value of a repeated header counts (CVE-2026-26308); absent header: values false,
        // notValues true. HTTP-only: dropped on TCP.
        CondKey::Header(_) => {
            v.tcp
                || field_ok(&c.values, &c.not_values, |x| {
                    v.roles.iter().any(|r| header_value_match(x, r))
                })
        }
        CondKey::SourceIp => field_ok(&c.values, &c.not_values, |x| ip_match(x, v.ip)),
        CondKey::DestinationPort => field_ok(&c.values, &c.not_values, |x| port_match(x, v.port)),
        CondKey::SourceNamespace => field_ok(&c.values, &c.not_values, |x| {
            namespace_match(x, v.principal)
        }),
        CondKey::SourcePrincipal => field_ok(&c.values, &c.not_values, |x| {
            principal_match(x, v.principal)
        }),
    }
}

fn rule_has_http_only_field(r: &Rule) -> bool {
    let src = r
        .from
        .iter()
        .flatten()
        .any(|s| !s.request_principals.is_empty() || !s.not_request_principals.is_empty());
    let op = r.to.iter().flatten().any(|o| {
        !(o.hosts.is_empty()
            && o.not_hosts.is_empty()
            && o.methods.is_empty()
            && o.not_methods.is_empty()
            && o.paths.is_empty()
            && o.not_paths.is_empty())
    });
    let cond = r.when.iter().any(|c| matches!(c.key, CondKey::Header(_)));
    src || op || cond
}

fn rule_matches(r: &Rule, action: Action, policy_ns: &str, v: &View) -> bool {
    // §1.10: on TCP an ALLOW rule with an HTTP-only field is dropped entirely; in DENY/AUDIT only
    // the key is dropped (handled in the matchers above).
    if v.tcp && action == Action::Allow && rule_has_http_only_field(r) {
        return false;
    }
    r.from
        .as_ref()
        .is_none_or(|f| f.iter().any(|s| source_matches(s, policy_ns, v)))
        && r.to
            .as_ref()
            .is_none_or(|t| t.iter().any(|o| operation_matches(o, v)))
        && r.when.iter().all(|c| condition_matches(c, v))
}

fn policy_matches(p: &AuthzPolicy, v: &View) -> bool {
    match &p.rules {
        Rules::Absent | Rules::EmptyList => false,
        Rules::List(rules) => rules.iter().any(|r| rule_matches(r, p.action, p.ns, v)),
    }
}

fn selector_matches(selector: &Selector, w: &Wl) -> bool {
    let labels = w.labels();
    selector
        .iter()
        .flatten()
        .all(|(k, val)| labels.get(*k).map(String::as_str) == Some(*val))
}

/// Go `strconv.ParseBool`; an invalid value means enforced (§1.12).
fn is_dry_run(p: &AuthzPolicy) -> bool {
    matches!(p.dry_run, Some("1" | "t" | "T" | "TRUE" | "true" | "True"))
}

/// §2: workload > namespace > mesh; UNSET inherits; root-namespace PA with a selector ignored;
/// port-level (workload-level PA only) overrides unless UNSET.
fn effective_mtls(pas: &[PeerAuthn], w: &Wl, port: u16) -> MtlsMode {
    let has_selector = |p: &PeerAuthn| p.selector.as_ref().is_some_and(|s| !s.is_empty());
    let mesh = pas.iter().find(|p| p.ns == ROOT_NS && !has_selector(p));
    let namespace = pas
        .iter()
        .find(|p| p.ns != ROOT_NS && p.ns == w.ns && !has_selector(p));
    let workload = pas.iter().find(|p| {
        p.ns != ROOT_NS && p.ns == w.ns && has_selector(p) && selector_matches(&p.selector, w)
    });
    let mut mode = MtlsMode::Permissive;
    for level in [mesh, namespace, workload].into_iter().flatten() {
        match level.mode {
            None | Some(MtlsMode::Unset) => {}
            Some(m) => mode = m,
        }
    }
    if let Some((p, m)) = workload.and_then(|w| w.port_level) {
        if p == port && m != MtlsMode::Unset {
            mode = m;
        }
    }
    mode
}

fn reference_verdict(sc: &Scenario, req: &Req) -> Verdict {
    let w = &sc.workloads[req.workload];
    let mut principal = req.principal;
    match effective_mtls(&sc.peer_authns, w, req.port) {
        MtlsMode::Strict if principal.is_none() => return Verdict::Deny,
        MtlsMode::Disable => principal = None,
        _ => {}
    }
    let path = req.path.split(['?', '#']).next().unwrap_or_default();
    let Ok(ip) = req.ip.parse::<IpAddr>() else {
        return Verdict::Deny;
    };
    let view = View {
        tcp: req.tcp,
        principal,
        ip,
        port: req.port,
        method: req.method,
        path,
        host: req.host,
        roles: &req.roles,
    };
    let applicable: Vec<&AuthzPolicy> = sc
        .policies
        .iter()
        .filter(|p| (p.ns == w.ns || p.ns == ROOT_NS) && selector_matches(&p.selector, w))
        .filter(|p| !is_dry_run(p))
        .collect();
    if applicable
        .iter()
        .any(|p| p.action == Action::Deny && policy_matches(p, &view))
    {
        return Verdict::Deny;
    }
    let allows: Vec<&&AuthzPolicy> = applicable
        .iter()
        .filter(|p| p.action == Action::Allow)
        .collect();
    if allows.is_empty() || allows.iter().any(|p| policy_matches(p, &view)) {
        Verdict::Allow
    } else {
        Verdict::Deny
    }
}

// ---------------------------------------------------------------------------------------------
// Driving the engine
// ---------------------------------------------------------------------------------------------

fn engine_workloads(sc: &Scenario) -> Vec<Workload> {
    sc.workloads
        .iter()
        .map(|w| Workload {
            namespace: w.ns.to_string(),
            name: w.name.clone(),
            labels: w.labels(),
            service_account: "default".to_string(),
            ips: vec![],
            gateway: None,
            services: vec![],
        })
        .collect()
}

fn engine_request(sc: &Scenario, r: &Req) -> RequestAttrs {
    let blank = r.tcp && r.tcp_blank;
    let mut headers: Vec<(String, String)> = Vec::new();
    if !blank {
        headers.extend(
            r.roles
                .iter()
                .map(|v| ("x-role".to_string(), v.to_string())),
        );
        if r.other_header {
            headers.push(("x-other".to_string(), "admin".to_string()));
        }
    }
    let text = |s: &str| if blank { String::new() } else { s.to_string() };
    RequestAttrs {
        workload: sc.workloads[r.workload].key(),
        protocol: if r.tcp { Protocol::Tcp } else { Protocol::Http },
        source_principal: r.principal.map(str::to_string),
        source_ip: r.ip.parse().ok(),
        destination_port: r.port,
        method: text(r.method),
        path: text(r.path),
        host: text(r.host),
        headers,
        ..Default::default()
    }
}

#[derive(Debug, Default)]
struct Stats {
    scenarios: Cell<usize>,
    requests: Cell<usize>,
    allow: Cell<usize>,
    deny: Cell<usize>,
    tcp: Cell<usize>,
    rules_with_effect: Cell<usize>,
}

fn bump(c: &Cell<usize>) {
    c.set(c.get() + 1);
}

/// Compiles the scenario and compares every request; `Err` describes the first mismatch.
fn check(sc: &Scenario, stats: &Stats) -> Result<(), String> {
    let yaml = render(sc);
    let mut inputs = Inputs::default();
    let errors = inputs.load_str("gen.yaml", &yaml);
    if !errors.is_empty() {
        let errors: Vec<String> = errors.iter().map(ToString::to_string).collect();
        return Err(format!(
            "generated YAML rejected:\n{}\n--- YAML ---\n{yaml}",
            errors.join("\n")
        ));
    }
    let workloads = engine_workloads(sc);
    let compiled = policy_compiler::compile(&inputs, &MeshConfig::default(), &workloads).map_err(
        |errors| {
            let errors: Vec<String> = errors.iter().map(ToString::to_string).collect();
            format!(
                "compile failed:\n{}\n--- YAML ---\n{yaml}",
                errors.join("\n")
            )
        },
    )?;
    let snapshot = authz_engine::Snapshot::build(compiled, 1)
        .map_err(|e| format!("snapshot failed: {e}\n--- YAML ---\n{yaml}"))?;
    bump(&stats.scenarios);
    for req in &sc.requests {
        let attrs = engine_request(sc, req);
        let decision = authz_engine::decide(&snapshot, &attrs);
        let expected = reference_verdict(sc, req);
        bump(&stats.requests);
        bump(if expected == Verdict::Allow {
            &stats.allow
        } else {
            &stats.deny
        });
        if req.tcp {
            bump(&stats.tcp);
        }
        if !decision.determining.is_empty() {
            bump(&stats.rules_with_effect);
        }
        if decision.verdict != expected {
            let workloads: Vec<String> = sc
                .workloads
                .iter()
                .map(|w| format!("{} (app={}, version={})", w.key(), w.app, w.version))
                .collect();
            return Err(format!(
                "verdict mismatch: engine {} vs reference {}\n\
                 --- YAML ---\n{yaml}\n--- workloads ---\n{}\n--- request ---\n{req:#?}\n\
                 --- RequestAttrs ---\n{attrs:#?}\n--- engine decision ---\n{decision:#?}",
                decision.verdict.as_str(),
                expected.as_str(),
                workloads.join("\n"),
            ));
        }
    }
    Ok(())
}

fn run(cases: u32, strategy: impl Strategy<Value = Scenario>) {
    let stats = Stats::default();
    let config = Config {
        cases,
        failure_persistence: None,
        max_shrink_iters: 4096,
        ..Config::default()
    };
    let mut runner = TestRunner::new(config);
    let started = std::time::Instant::now();
    let result = runner.run(&strategy, |sc| {
        check(&sc, &stats).map_err(TestCaseError::fail)
    });
    eprintln!(
        "differential: {} scenarios, {} requests ({} TCP), reference ALLOW {} / DENY {}, \
         {} with determining rules, {:.1?}",
        stats.scenarios.get(),
        stats.requests.get(),
        stats.tcp.get(),
        stats.allow.get(),
        stats.deny.get(),
        stats.rules_with_effect.get(),
        started.elapsed(),
    );
    match result {
        Ok(()) => {}
        Err(TestError::Fail(reason, sc)) => {
            panic!("minimal failing scenario:\n{reason}\n--- scenario ---\n{sc:#?}")
        }
        Err(e) => panic!("{e}"),
    }
}

#[test]
fn engine_agrees_with_reference() {
    run(256, scenario());
}

/// Only TCP requests and no PeerAuthentication: exercises §1.10 (HTTP-only fields on TCP).
#[test]
fn engine_agrees_with_reference_on_tcp() {
    let strategy = scenario().prop_map(|mut sc| {
        sc.peer_authns.clear();
        for r in &mut sc.requests {
            r.tcp = true;
        }
        sc
    });
    run(128, strategy);
}

// ---------------------------------------------------------------------------------------------
// Sanity checks of the reference itself (against the examples in the reference document)
// ---------------------------------------------------------------------------------------------

#[test]
fn reference_matchers() {
    let p = Some("spiffe://cluster.local/ns/foo/sa/sleep");
    assert!(principal_match("cluster.local/ns/foo/sa/sleep", p));
    assert!(principal_match("cluster.local/ns/foo/*", p));
    assert!(principal_match("*/sa/sleep", p));
    assert!(principal_match("*", p));
    assert!(!principal_match("*", None));
    assert!(!principal_match(
        "spiffe://cluster.local/ns/foo/sa/sleep",
        p
    ));
    assert!(namespace_match("foo", p));
    assert!(namespace_match("*", p));
    assert!(!namespace_match("bar", p));
    assert!(service_account_match("sleep", "foo", p));
    assert!(service_account_match("foo/sleep", "bar", p));
    assert!(!service_account_match("sleep", "bar", p));
    assert!(!service_account_match(
        "foo/sleep",
        "foo",
        Some("spiffe://cluster.local/ns/foo/sa/sleepy")
    ));
    assert!(ip_match("10.0.0.0/24", "10.0.0.7".parse().unwrap()));
    assert!(!ip_match("10.0.0.0/24", "10.0.1.5".parse().unwrap()));
    assert!(ip_match("10.0.1.5", "10.0.1.5".parse().unwrap()));
    assert!(ip_match("fd00::/16", "fd00::5".parse().unwrap()));
    assert!(!ip_match("10.0.0.0/24", "fd00::5".parse().unwrap()));
    assert!(host_match("Example.COM", "EXAMPLE.com"));
    assert!(!host_match("Example.COM", "example.com:8080"));
    assert!(host_match("example.com:*", "example.com:8080"));
    assert!(host_match("*.Example.com", "api.example.com"));
    assert!(!host_match("*.Example.com", "example.com"));
    assert!(string_match("/a/*", "/a/"));
    assert!(string_match("*/b", "/x/b"));
    assert!(!string_match("*", ""));
    assert!(header_value_match("*", ""));
    assert!(header_value_match("*min", "superadmin"));
    assert!(!header_value_match("adm*", "superadmin"));
    assert!(glob("a*b*c", "axxbyyc"));
    assert!(!glob("a*b", "ab c"));
}
