//! Differential property test: the real engine (`policy_compiler` -> Cedar ->
//! `authz_engine::decide`) against a small, independent reference interpreter of Istio's
//! AuthorizationPolicy and PeerAuthentication rules, written from `istio-semantics.md` §1.3-§1.7,
//! §1.9, §1.10, §2 and §7 (in the spirit of ztunnel's `rbac.rs` `matches()`: plain Rust over
//! structs, no Cedar, and no code shared with the compiler or the engine).
//!
//! Each generated case is a mesh (2-3 workloads in `foo`/`bar`), 0-4 AuthorizationPolicies
//! (ALLOW/DENY/AUDIT, optionally dry-run), 0-4 PeerAuthentications (at most one per level, so the
//! creation-time tie-break never matters) and 16 requests (HTTP or TCP, plaintext or mTLS). One
//! snapshot is built per case and every request is decided by both sides. Besides the verdict,
//! the engine's reason, its determining rules and its matched AUDIT and dry-run rules must be
//! exactly the ones the reference finds, so a wrongly compiled rule cannot hide behind another
//! rule that decides the same way.
//!
//! `PROPTEST_CASES=N` runs N cases per property instead of the default (512 and 256).
//!
//! Values come from small pools so that rules match often. A mismatch prints the YAML, the
//! request, both verdicts and the engine's explanation; proptest then shrinks it.

use std::cell::Cell;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::net::IpAddr;

use authz_engine::{Protocol, Reason, RequestAttrs, Verdict};
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
    "td2/ns/foo/sa/sleep",
    "cluster.local/ns/bar/sa/*",
];
/// Mesh `trustDomain` and `trustDomainAliases`.
const TRUST: &[(&str, &[&str])] = &[
    ("cluster.local", &[]),
    ("td2", &[]),
    ("cluster.local", &["td2"]),
    ("td2", &["cluster.local"]),
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
    /// Index into `TRUST`.
    trust: usize,
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
    const P: f64 = 0.13;
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
    const P: f64 = 0.15;
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
            |(ns, api_version, selector, action, explicit_allow, dry_run, mode, rules)| {
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

/// No selector, or `selector: {matchLabels: {}}` (the same scope).
fn empty_selector() -> impl Strategy<Value = Selector> {
    prop_oneof![3 => Just(None), 1 => Just(Some(Vec::new()))]
}

fn peer_authns() -> impl Strategy<Value = Vec<PeerAuthn>> {
    let ns = || select(vec!["foo", "bar"]);
    (
        prop::option::weighted(0.3, (mode(), empty_selector())),
        prop::option::weighted(0.3, (ns(), mode(), empty_selector())),
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
            if let Some((mode, selector)) = mesh {
                out.push(PeerAuthn {
                    name: "pa-mesh",
                    ns: ROOT_NS,
                    selector,
                    mode,
                    port_level: None,
                });
            }
            if let Some((ns, mode, selector)) = namespace {
                out.push(PeerAuthn {
                    name: "pa-ns",
                    ns,
                    selector,
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
        prop_oneof![3 => Just(0usize), 1 => 1usize..TRUST.len()],
    )
        .prop_map(
            |(workloads, mut policies, peer_authns, mut requests, trust)| {
                // The first policy of each namespace is `pol`, so that names repeat across
                // namespaces; the others are `p<i>`.
                let mut seen = BTreeSet::new();
                for (i, p) in policies.iter_mut().enumerate() {
                    p.name = if seen.insert(p.ns) {
                        "pol".to_string()
                    } else {
                        format!("p{i}")
                    };
                }
                for r in &mut requests {
                    r.workload %= workloads.len();
                }
                Scenario {
                    trust,
                    workloads,
                    policies,
                    peer_authns,
                    requests,
                }
            },
        )
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
    /// The mesh trust domain followed by its aliases.
    bundle: &'a [&'a str],
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

/// §1.6 trust-domain aliases: a `principals`/`source.principal` value `<td>/ns/x/sa/y` (exactly
/// five segments) whose `<td>` is `cluster.local`, the mesh trust domain or an alias stands for
/// one value per trust domain of the bundle; anything else is kept as written.
fn with_aliases(values: &[&'static str], bundle: &[&str]) -> Vec<String> {
    let mut out = Vec::new();
    for v in values {
        let segments: Vec<&str> = v.split('/').collect();
        let td = segments[0];
        if segments.len() == 5
            && !td.starts_with('*')
            && (td == "cluster.local" || bundle.contains(&td))
        {
            for b in bundle {
                out.push(format!("{b}/{}", segments[1..].join("/")));
            }
        } else {
            out.push((*v).to_string());
        }
    }
    out
}

/// [`field_ok`] for principals, after [`with_aliases`].
fn principals_ok(values: &[&'static str], not_values: &[&'static str], v: &View) -> bool {
    let values = with_aliases(values, v.bundle);
    let not_values = with_aliases(not_values, v.bundle);
    let values: Vec<&str> = values.iter().map(String::as_str).collect();
    let not_values: Vec<&str> = not_values.iter().map(String::as_str).collect();
    field_ok(&values, &not_values, |x| principal_match(x, v.principal))
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
    principals_ok(&s.principals, &s.not_principals, v)
        && field_ok(&s.namespaces, &s.not_namespaces, |x| namespace_match(x, p))
        && field_ok(&s.service_accounts, &s.not_service_accounts, |x| {
            service_account_match(x, policy_ns, p)
        })
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
        CondKey::SourcePrincipal => principals_ok(&c.values, &c.not_values, v),
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

/// The reference's view of one request: the verdict and, per kind, the rules (`ns/name`, rule
/// index) that matched.
#[derive(Debug, Default, PartialEq)]
struct Outcome {
    verdict: Option<Verdict>,
    /// PeerAuthentication STRICT rejected a plaintext request (no policy was evaluated).
    mtls_rejected: bool,
    deny: BTreeSet<(String, usize)>,
    allow: BTreeSet<(String, usize)>,
    audit: BTreeSet<(String, usize)>,
    dry_run: BTreeSet<(String, usize)>,
}

fn reference(sc: &Scenario, req: &Req) -> Outcome {
    let w = &sc.workloads[req.workload];
    let mut out = Outcome::default();
    let mut principal = req.principal;
    match effective_mtls(&sc.peer_authns, w, req.port) {
        MtlsMode::Strict if principal.is_none() => {
            out.verdict = Some(Verdict::Deny);
            out.mtls_rejected = true;
            return out;
        }
        MtlsMode::Disable => principal = None,
        _ => {}
    }
    let path = req.path.split(['?', '#']).next().unwrap_or_default();
    let Ok(ip) = req.ip.parse::<IpAddr>() else {
        return out;
    };
    let (trust_domain, aliases) = TRUST[sc.trust];
    let mut bundle = vec![trust_domain];
    bundle.extend(aliases.iter().filter(|a| **a != trust_domain));
    let view = View {
        bundle: &bundle,
        tcp: req.tcp,
        principal,
        ip,
        port: req.port,
        method: req.method,
        path,
        host: req.host,
        roles: &req.roles,
    };
    let mut allow_exists = false;
    for p in &sc.policies {
        if !((p.ns == w.ns || p.ns == ROOT_NS) && selector_matches(&p.selector, w)) {
            continue;
        }
        let dry_run = is_dry_run(p);
        if p.action == Action::Allow && !dry_run {
            allow_exists = true;
        }
        let Rules::List(rules) = &p.rules else {
            continue;
        };
        for (i, r) in rules.iter().enumerate() {
            if !rule_matches(r, p.action, p.ns, &view) {
                continue;
            }
            let key = (format!("{}/{}", p.ns, p.name), i);
            // The engine lists matched AUDIT rules under `audit` whether or not they are
            // dry-run (AUDIT never changes the verdict either way).
            let set = match (dry_run, p.action) {
                (_, Action::Audit) => &mut out.audit,
                (true, _) => &mut out.dry_run,
                (false, Action::Deny) => &mut out.deny,
                (false, Action::Allow) => &mut out.allow,
            };
            set.insert(key);
        }
    }
    out.verdict = Some(if !out.deny.is_empty() {
        Verdict::Deny
    } else if !allow_exists || !out.allow.is_empty() {
        Verdict::Allow
    } else {
        Verdict::Deny
    });
    out
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
    tcp: Cell<usize>,
    /// Reference outcomes: mTLS rejected, DENY matched, no ALLOW policy, ALLOW matched, no ALLOW
    /// matched.
    reasons: [Cell<usize>; 5],
    audit_or_dry_run: Cell<usize>,
}

fn bump(c: &Cell<usize>) {
    c.set(c.get() + 1);
}

type RuleSet = BTreeSet<(String, usize)>;

fn rule_set(matches: &[authz_engine::PolicyMatch]) -> RuleSet {
    matches
        .iter()
        .filter_map(|m| m.rule.map(|r| (m.policy.clone(), r)))
        .collect()
}

/// Compares one decision with the reference outcome; `Err` says what differs.
fn compare(o: &Outcome, d: &authz_engine::Decision) -> Result<(), String> {
    let expected = o.verdict.unwrap_or(Verdict::Deny);
    if d.verdict != expected {
        return Err(format!(
            "verdict mismatch: engine {} vs reference {}",
            d.verdict.as_str(),
            expected.as_str()
        ));
    }
    // The reason, and the rules the engine says decided, must be the ones the reference found.
    let (reason_ok, determining) = match &d.reason {
        Reason::MtlsRequired => (o.mtls_rejected, None),
        Reason::DenyMatched => (!o.mtls_rejected && !o.deny.is_empty(), Some(&o.deny)),
        Reason::AllowMatched => (
            !o.mtls_rejected && o.deny.is_empty() && !o.allow.is_empty(),
            Some(&o.allow),
        ),
        Reason::NoAllowPolicy | Reason::NoAllowMatched => (
            !o.mtls_rejected && o.deny.is_empty() && o.allow.is_empty(),
            None,
        ),
        _ => (false, None),
    };
    if !reason_ok {
        return Err(format!(
            "reason mismatch: engine {:?}, reference {o:?}",
            d.reason
        ));
    }
    if let Some(want) = determining {
        let got = rule_set(&d.determining);
        if &got != want {
            return Err(format!(
                "determining rules differ: engine {got:?}, reference {want:?}"
            ));
        }
    }
    if !o.mtls_rejected {
        let (audit, dry_run) = (rule_set(&d.audit), rule_set(&d.dry_run));
        if audit != o.audit {
            return Err(format!(
                "matched AUDIT rules differ: engine {audit:?}, reference {:?}",
                o.audit
            ));
        }
        if dry_run != o.dry_run {
            return Err(format!(
                "matched dry-run rules differ: engine {dry_run:?}, reference {:?}",
                o.dry_run
            ));
        }
    }
    Ok(())
}

fn mesh_config(sc: &Scenario) -> MeshConfig {
    let (trust_domain, aliases) = TRUST[sc.trust];
    MeshConfig {
        trust_domain: trust_domain.to_string(),
        trust_domain_aliases: aliases.iter().map(|a| a.to_string()).collect(),
        ..MeshConfig::default()
    }
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
    let compiled =
        policy_compiler::compile(&inputs, &mesh_config(sc), &workloads).map_err(|errors| {
            let errors: Vec<String> = errors.iter().map(ToString::to_string).collect();
            format!(
                "compile failed:\n{}\n--- YAML ---\n{yaml}",
                errors.join("\n")
            )
        })?;
    let snapshot = authz_engine::Snapshot::build(compiled, 1)
        .map_err(|e| format!("snapshot failed: {e}\n--- YAML ---\n{yaml}"))?;
    bump(&stats.scenarios);
    for req in &sc.requests {
        let attrs = engine_request(sc, req);
        let decision = authz_engine::decide(&snapshot, &attrs);
        let outcome = reference(sc, req);
        bump(&stats.requests);
        if req.tcp {
            bump(&stats.tcp);
        }
        let reason = if outcome.mtls_rejected {
            0
        } else if !outcome.deny.is_empty() {
            1
        } else if outcome.verdict == Some(Verdict::Allow) && outcome.allow.is_empty() {
            2
        } else if !outcome.allow.is_empty() {
            3
        } else {
            4
        };
        bump(&stats.reasons[reason]);
        if !outcome.audit.is_empty() || !outcome.dry_run.is_empty() {
            bump(&stats.audit_or_dry_run);
        }
        if let Err(what) = compare(&outcome, &decision) {
            let workloads: Vec<String> = sc
                .workloads
                .iter()
                .map(|w| format!("{} (app={}, version={})", w.key(), w.app, w.version))
                .collect();
            return Err(format!(
                "{what}\n\
                 engine verdict {}, reference verdict {}\n\
                 --- YAML ---\n{yaml}\n--- mesh ---\ntrustDomain: {}, trustDomainAliases: {:?}\n\
                 --- workloads ---\n{}\n--- request ---\n{req:#?}\n\
                 --- RequestAttrs ---\n{attrs:#?}\n--- engine decision ---\n{decision:#?}\n\
                 --- reference outcome ---\n{outcome:#?}",
                decision.verdict.as_str(),
                outcome.verdict.unwrap_or(Verdict::Deny).as_str(),
                TRUST[sc.trust].0,
                TRUST[sc.trust].1,
                workloads.join("\n"),
            ));
        }
    }
    Ok(())
}

/// `PROPTEST_CASES` overrides the number of cases (e.g. for a longer soak run).
fn cases(default: u32) -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Runs the property; `Err` is the minimal failing scenario with the mismatch.
fn run(cases: u32, strategy: impl Strategy<Value = Scenario>) -> Result<(), String> {
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
    let r = &stats.reasons;
    eprintln!(
        "differential: {} scenarios, {} requests ({} TCP); reference outcomes: mTLS rejected {}, \
         DENY matched {}, no ALLOW policy {}, ALLOW matched {}, no ALLOW matched {}; \
         {} with AUDIT/dry-run matches; {:.1?}",
        stats.scenarios.get(),
        stats.requests.get(),
        stats.tcp.get(),
        r[0].get(),
        r[1].get(),
        r[2].get(),
        r[3].get(),
        r[4].get(),
        stats.audit_or_dry_run.get(),
        started.elapsed(),
    );
    match result {
        Ok(()) => Ok(()),
        Err(TestError::Fail(reason, sc)) => Err(format!(
            "minimal failing scenario:\n{reason}\n--- scenario ---\n{sc:#?}"
        )),
        Err(e) => Err(e.to_string()),
    }
}

#[test]
fn engine_agrees_with_reference() {
    if let Err(e) = run(cases(512), scenario()) {
        panic!("{e}");
    }
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
    if let Err(e) = run(cases(256), strategy) {
        panic!("{e}");
    }
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
    assert_eq!(
        with_aliases(&["cluster.local/ns/foo/sa/sleep"], &["td2", "old"]),
        ["td2/ns/foo/sa/sleep", "old/ns/foo/sa/sleep"]
    );
    assert_eq!(
        with_aliases(&["old/ns/foo/sa/*", "x/ns/foo/sa/a"], &["td2", "old"]),
        ["td2/ns/foo/sa/*", "old/ns/foo/sa/*", "x/ns/foo/sa/a"]
    );
    assert_eq!(
        with_aliases(&["cluster.local/ns/foo/*", "*/sa/sleep", "*"], &["td2"]),
        ["cluster.local/ns/foo/*", "*/sa/sleep", "*"]
    );
    assert!(glob("a*b*c", "axxbyyc"));
    assert!(!glob("a*b", "ab c"));
}
