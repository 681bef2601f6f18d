//! AuthorizationPolicy rules to Cedar policies; PeerAuthentication and RequestAuthentication to
//! the tables the engine reads.
//!
//! State owned: none; [`compile`] is a pure function of the loaded inputs, the mesh settings and
//! the workloads. It emits one Cedar policy per Istio rule (two when the rule needs a TCP form),
//! each annotated with the resource, rule index and file:line it came from.
//!
//! Istio rules encoded on purpose (the engine adds the per-workload default, see
//! [`DEFAULT_ALLOW_ID`]):
//! * "If there are no ALLOW policies for the workload, allow the request." Cedar denies by
//!   default, so every workload without an enforced ALLOW policy gets an explicit permit.
//! * "An ALLOW policy with no usable rule denies everything": such a policy emits no permit but
//!   still counts as an ALLOW policy, so the default permit is not added.
//! * `rules: [{}]` is a policy with an empty condition (matches all); no `rules` emits nothing.
//! * HTTP-only fields on TCP (§1.10): an ALLOW rule that uses one matches only HTTP requests
//!   (`context has http`); a DENY/AUDIT/CUSTOM rule gets a second, TCP form with those fields
//!   dropped (broader), so TCP is denied more, never less.

use std::collections::BTreeMap;
use std::net::IpAddr;

use crate::attributes::{claim_attribute, metadata_attribute, parse_when_key, WhenKey};
use crate::error::{LoadError, Location, Warning};
use crate::expr::{like_lit, string_lit, Expr, Pat};
use crate::load::{Inputs, Loaded, Origin};
use crate::mesh::{MeshConfig, ProviderKind, Workload};
use crate::resources::{
    Action, AuthorizationPolicySpec, Condition, MtlsMode, Operation, PeerAuthenticationSpec,
    PolicyTargetReference, RequestAuthenticationSpec, Rule, Source, WorkloadSelector,
};
use crate::schema::{self, Vocabulary};
use crate::shared_ast::AstInterner;
use crate::uri_template;
use crate::validate::parse_go_bool;

/// Cedar policy id of the per-workload "no ALLOW policy applies" permit.
pub const DEFAULT_ALLOW_ID: &str = "istio/default-allow";

/// `namespace/name` of a resource.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ResourceKey {
    pub namespace: String,
    pub name: String,
}

impl std::fmt::Display for ResourceKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// Which workloads a resource applies to (Istio §1.2).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    /// Root namespace, no selector: every workload.
    Mesh,
    /// A namespace, no selector: every workload in it.
    Namespace(String),
    /// A selector; `namespace` is `None` in the root namespace (it spans all namespaces).
    Selector {
        namespace: Option<String>,
        labels: BTreeMap<String, String>,
    },
    /// targetRefs: only Gateway API gateways and Services; never a plain sidecar.
    Targets {
        namespace: String,
        targets: Vec<Target>,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// `gateway.networking.k8s.io/Gateway` in the policy's namespace.
    Gateway(String),
    /// A core `Service` in the policy's namespace: enforced by a waypoint (a workload with
    /// `gateway:`) that lists the Service in `services:`.
    Service(String),
    /// Anything else (GatewayClass, ServiceEntry, a cross-namespace reference): matches nothing.
    Unsupported(String),
}

impl Scope {
    fn new(
        namespace: &str,
        root_namespace: &str,
        selector: Option<&WorkloadSelector>,
        target_ref: Option<&PolicyTargetReference>,
        target_refs: Option<&[PolicyTargetReference]>,
    ) -> Scope {
        let refs: Vec<&PolicyTargetReference> = target_ref
            .into_iter()
            .chain(target_refs.into_iter().flatten())
            .collect();
        if !refs.is_empty() {
            let targets = refs
                .into_iter()
                .map(|r| {
                    let same_ns = r.namespace.is_empty() || r.namespace == namespace;
                    match (r.group.as_str(), r.kind.as_str()) {
                        ("gateway.networking.k8s.io", "Gateway") if same_ns => {
                            Target::Gateway(r.name.clone())
                        }
                        ("" | "core", "Service") if same_ns => Target::Service(r.name.clone()),
                        _ => Target::Unsupported(format!("{}/{} {}", r.group, r.kind, r.name)),
                    }
                })
                .collect();
            return Scope::Targets {
                namespace: namespace.to_string(),
                targets,
            };
        }
        let labels = selector.map(|s| s.match_labels.clone()).unwrap_or_default();
        let root = namespace == root_namespace;
        match (root, labels.is_empty()) {
            (true, true) => Scope::Mesh,
            (false, true) => Scope::Namespace(namespace.to_string()),
            (true, false) => Scope::Selector {
                namespace: None,
                labels,
            },
            (false, false) => Scope::Selector {
                namespace: Some(namespace.to_string()),
                labels,
            },
        }
    }

    /// The one namespace whose workloads this scope can apply to; `None` when it spans every
    /// namespace (the root namespace without targetRefs). `applies_to(w)` implies
    /// `namespace().is_none_or(|ns| ns == w.namespace)`, which lets a snapshot consider only a
    /// workload's namespace's resources and the mesh-wide ones.
    pub fn namespace(&self) -> Option<&str> {
        match self {
            Scope::Mesh
            | Scope::Selector {
                namespace: None, ..
            } => None,
            Scope::Namespace(ns)
            | Scope::Selector {
                namespace: Some(ns),
                ..
            }
            | Scope::Targets { namespace: ns, .. } => Some(ns),
        }
    }

    /// Whether a resource with this scope applies to `w`.
    pub fn applies_to(&self, w: &Workload) -> bool {
        match self {
            Scope::Mesh => true,
            Scope::Namespace(ns) => &w.namespace == ns,
            Scope::Selector { namespace, labels } => {
                namespace.as_ref().is_none_or(|ns| &w.namespace == ns)
                    && labels.iter().all(|(k, v)| w.labels.get(k) == Some(v))
            }
            Scope::Targets { namespace, targets } => {
                &w.namespace == namespace
                    && targets.iter().any(|t| match t {
                        Target::Gateway(g) => w.gateway.as_deref() == Some(g.as_str()),
                        // Service targets are for waypoints: a gateway that serves the
                        // Service. A plain sidecar ignores every targetRef.
                        Target::Service(s) => w.gateway.is_some() && w.services.contains(s),
                        Target::Unsupported(_) => false,
                    })
            }
        }
    }

    /// The same test over the Cedar resource (a `Mesh::Workload` entity).
    pub fn cedar(&self) -> Expr {
        let in_ns = |ns: &str| {
            Expr::atom(format!(
                "resource in {}::Namespace::{}",
                schema::NAMESPACE,
                string_lit(ns)
            ))
        };
        match self {
            Scope::Mesh => Expr::True,
            Scope::Namespace(ns) => in_ns(ns),
            Scope::Selector { namespace, labels } => {
                let mut parts: Vec<Expr> = namespace.iter().map(|ns| in_ns(ns)).collect();
                for (k, v) in labels {
                    parts.push(Expr::atom(format!("resource.hasTag({})", string_lit(k))));
                    parts.push(Expr::atom(format!(
                        "resource.getTag({}) == {}",
                        string_lit(k),
                        string_lit(v)
                    )));
                }
                Expr::and(parts)
            }
            Scope::Targets { namespace, targets } => Expr::and([
                in_ns(namespace),
                Expr::or(targets.iter().map(|t| match t {
                    Target::Gateway(g) => Expr::and([
                        Expr::atom("resource has gateway"),
                        Expr::atom(format!("resource.gateway == {}", string_lit(g))),
                    ]),
                    Target::Service(s) => Expr::and([
                        Expr::atom("resource has gateway"),
                        Expr::atom(format!("resource.services.contains({})", string_lit(s))),
                    ]),
                    Target::Unsupported(_) => Expr::False,
                })),
            ]),
        }
    }
}

/// What a Cedar policy does in the decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Role {
    /// `permit`: an enforced ALLOW rule.
    Allow,
    /// `forbid`: an enforced DENY rule.
    Deny,
    /// `permit`, observed only: an AUDIT rule.
    Audit,
    /// `permit`, observed only: a dry-run ALLOW rule.
    DryRunAllow,
    /// `forbid`, observed only: a dry-run DENY rule.
    DryRunDeny,
    /// `permit`, observed only: a CUSTOM rule whose request goes to its provider.
    CustomDelegate,
    /// `forbid`: a CUSTOM rule that cannot be delegated (unknown or invalid provider, or more
    /// than one provider for the workload): Istio denies the matching requests.
    CustomDeny,
}

impl Role {
    pub fn is_forbid(self) -> bool {
        matches!(self, Role::Deny | Role::DryRunDeny | Role::CustomDeny)
    }
}

/// One emitted Cedar policy.
#[derive(Debug, Clone)]
pub struct CedarPolicy {
    /// Cedar policy id: `ns/name[i]`, plus `/tcp` for the TCP form and `/custom-deny` for the
    /// deny form of a CUSTOM rule.
    pub id: String,
    pub role: Role,
    /// Index of the Istio rule.
    pub rule: usize,
    /// The policy as `meshauthz compile` prints it: annotations, scope and condition. `None`
    /// when compiled for decisions only ([`Detail::Decisions`]).
    pub text: Option<String>,
    /// What the engine evaluates: the same condition without annotations and without the scope,
    /// which the snapshot applies by putting the policy only in the classes of the workloads it
    /// selects. Never evaluate it outside such a class.
    pub policy: cedar_policy::Policy,
    /// Which requests the policy can match at all, for the engine's indexes.
    pub reach: Reach,
    /// The context attributes its condition reads.
    pub reads: crate::attributes::ContextReads,
}

/// What a policy's condition requires of every request it matches, so that the engine can
/// leave it out of the evaluation of the others. Each field only ever narrows: `None` or
/// [`Form::Any`] means "may match any".
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reach {
    /// HTTP requests only (the `context has http` guard), TCP connections only, or both.
    pub form: Form,
    /// The destination port is one of these (every `to` operation lists `ports`).
    pub ports: Option<Vec<u16>>,
    /// The normalized path has one of these keys (every `to` operation lists `paths`, each
    /// fixing at least its first segment). HTTP forms only.
    pub paths: Option<Vec<PathKey>>,
}

/// Which protocol a policy's condition can match.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Form {
    Any,
    Http,
    Tcp,
}

/// A key of the path index.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum PathKey {
    /// The path's [`path_index_key`] (its first two segments) is this.
    Key(String),
    /// The path's [`path_first_segment`] is this (a prefix such as `/debug/*`).
    Under(String),
}

/// The path-index key of a normalized request path: its first two segments (`/api/v1` for
/// `/api/v1/items`), or the whole path when it is shorter. The engine evaluates only the
/// policies whose [`CedarPolicy::path_keys`] contain the request's key, plus the unindexed ones.
pub fn path_index_key(path: &str) -> &str {
    nth_slash_prefix(path, 3)
}

/// The first segment of a normalized path (`/api` for `/api/v1/items` and for `/api`).
pub fn path_first_segment(path: &str) -> &str {
    nth_slash_prefix(path, 2)
}

/// `path` up to (without) its `n`th slash, or all of it.
fn nth_slash_prefix(path: &str, n: usize) -> &str {
    let mut slashes = 0;
    for (i, c) in path.char_indices() {
        if c == '/' {
            slashes += 1;
            if slashes == n {
                return &path[..i];
            }
        }
    }
    path
}

/// The path keys of a rule's HTTP form: `Some` only when every `to` operation requires one of
/// its `paths`, and each such pattern fixes at least the first segment: an exact path or a prefix
/// `/a/b/...*` fixes the first two ([`PathKey::Key`]), a prefix `/a/...*` the first
/// ([`PathKey::Under`]). Suffixes, `*`, templates and prefixes like `/a*` leave it unindexed.
fn rule_path_keys(rule: &Rule) -> Option<Vec<PathKey>> {
    let ops = rule.to.as_ref()?;
    let mut keys: Vec<PathKey> = Vec::new();
    for t in ops {
        let op = t.operation.as_ref()?;
        if op.paths.is_empty() {
            return None;
        }
        for p in &op.paths {
            if uri_template::is_template(p) || p.starts_with('*') {
                return None;
            }
            let key = match p.strip_suffix('*') {
                // A prefix fixes the segments it completes: `/a/b/` both, `/a/` the first.
                Some(literal) => match literal.matches('/').count() {
                    0 | 1 => return None,
                    2 => PathKey::Under(path_first_segment(literal).to_string()),
                    _ => PathKey::Key(path_index_key(literal).to_string()),
                },
                None => PathKey::Key(path_index_key(p).to_string()),
            };
            if !keys.contains(&key) {
                keys.push(key);
            }
        }
    }
    Some(keys)
}

/// The destination ports a rule can match: `Some` only when every `to` operation lists `ports`
/// (both forms test them). A value that is no port number can never match and adds nothing.
fn rule_ports(rule: &Rule) -> Option<Vec<u16>> {
    let ops = rule.to.as_ref()?;
    let mut ports: Vec<u16> = Vec::new();
    for t in ops {
        let op = t.operation.as_ref()?;
        if op.ports.is_empty() {
            return None;
        }
        ports.extend(op.ports.iter().filter_map(|p| p.parse::<u16>().ok()));
    }
    ports.sort_unstable();
    ports.dedup();
    Some(ports)
}

/// One field-level condition of a rule, for "why did this not match" explanations.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Explained {
    /// e.g. `from[0].source.principals` or `when[1] request.headers[x-token]`.
    pub label: String,
    /// A Cedar boolean expression over the context (guarded; never errors).
    pub cedar: String,
}

#[derive(Debug, Clone)]
pub struct CompiledRule {
    pub index: usize,
    pub line: usize,
    /// The whole condition of the rule for an HTTP request and for a TCP connection (with
    /// `context has http` guards), for explanations.
    pub http_condition: String,
    pub tcp_condition: String,
    /// Conjuncts of the HTTP form, in source order.
    pub conditions: Vec<Explained>,
}

/// One AuthorizationPolicy after compilation.
#[derive(Debug, Clone)]
pub struct AuthzPolicy {
    pub key: ResourceKey,
    pub origin: Origin,
    pub action: Action,
    pub dry_run: bool,
    /// CUSTOM: the provider named, and what it speaks if it is usable.
    pub provider: Option<(String, Option<ProviderKind>)>,
    pub scope: Scope,
    /// Each rule's conditions, for explanations (`meshauthz check`); empty when compiled for
    /// decisions only ([`Detail::Decisions`]).
    pub rules: Vec<CompiledRule>,
    pub policies: Vec<CedarPolicy>,
}

/// What a compile keeps besides what decisions need.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Detail {
    /// Also each policy's printed Cedar text and each rule's field-level conditions, for
    /// `meshauthz compile` and `meshauthz check` (what [`compile`] gives).
    #[default]
    Explained,
    /// What decisions need only, for the hosts that enforce (`meshauthz serve`, the native
    /// filter): the texts and conditions are a quarter of the compiled estate's memory.
    Decisions,
}

impl AuthzPolicy {
    /// An enforced ALLOW policy, which makes "no ALLOW policy applies => allow" not apply.
    pub fn is_enforced_allow(&self) -> bool {
        self.action == Action::Allow && !self.dry_run
    }
}

/// PeerAuthentication level (§2): the narrowest non-UNSET mode wins.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum PeerLevel {
    Mesh,
    Namespace,
    Workload,
}

#[derive(Debug, Clone)]
pub struct PeerAuthn {
    pub key: ResourceKey,
    pub origin: Origin,
    pub level: PeerLevel,
    pub scope: Scope,
    pub mode: MtlsMode,
    pub port_modes: BTreeMap<u16, MtlsMode>,
    /// `metadata.creationTimestamp` (RFC 3339, compared as text); missing sorts last.
    pub created: Option<String>,
}

/// One `jwtRules` entry: a JWT provider.
#[derive(Debug, Clone, PartialEq)]
pub struct JwtProvider {
    /// The RequestAuthentication it came from and the rule index.
    pub source: ResourceKey,
    pub rule: usize,
    pub line: usize,
    pub issuer: String,
    pub audiences: Vec<String>,
    pub jwks: Option<String>,
    pub jwks_uri: Option<String>,
    pub fetch_timeout: std::time::Duration,
    /// Where to look for the token; Istio's default when none is configured:
    /// `Authorization: Bearer <t>`, then `?access_token=<t>`.
    pub from_headers: Vec<(String, String)>,
    pub from_params: Vec<String>,
    pub from_cookies: Vec<String>,
    pub output_payload_to_header: Option<String>,
    pub forward_original_token: bool,
    pub output_claim_to_headers: Vec<(String, String)>,
    /// Claims split at whitespace before matching: `scope`, `permission` and the configured ones.
    pub space_delimited_claims: Vec<String>,
}

#[derive(Debug, Clone)]
pub struct RequestAuthn {
    pub key: ResourceKey,
    pub origin: Origin,
    pub scope: Scope,
    pub providers: Vec<JwtProvider>,
}

/// Everything the engine needs, and what `meshauthz compile` prints.
#[derive(Debug, Clone)]
pub struct Compiled {
    pub mesh: MeshConfig,
    /// In key order, unique. Shared with the caller when it already held them so (the
    /// Kubernetes index, whose workloads change only with pods).
    pub workloads: std::sync::Arc<Vec<Workload>>,
    /// Shared with the compile cache: a recompile after one change copies pointers, not 10,000
    /// compiled policies.
    pub authorization: Vec<std::sync::Arc<AuthzPolicy>>,
    pub peer: Vec<PeerAuthn>,
    pub request: Vec<RequestAuthn>,
    pub vocabulary: Vocabulary,
    pub schema_text: String,
    pub schema: cedar_policy::Schema,
    pub warnings: Vec<Warning>,
}

/// Compiles validated inputs. Errors here mean generated Cedar failed to parse or validate,
/// which is a meshauthz bug; they still carry the resource's location.
pub fn compile(
    inputs: &Inputs,
    mesh: &MeshConfig,
    extra_workloads: &[Workload],
) -> Result<Compiled, Vec<LoadError>> {
    let extra = std::sync::Arc::new(extra_workloads.to_vec());
    compile_with(&InputsRef::of(inputs), mesh, &extra, None)
}

/// What [`compile`] reads, borrowed from wherever the caller keeps its resources (the
/// Kubernetes index keeps them per object, and must not copy 10,000 of them per change).
#[derive(Debug, Default)]
pub struct InputsRef<'a> {
    pub authorization: Vec<&'a Loaded<AuthorizationPolicySpec>>,
    pub peer: Vec<&'a Loaded<PeerAuthenticationSpec>>,
    pub request: Vec<&'a Loaded<RequestAuthenticationSpec>>,
    pub workloads: Vec<&'a Workload>,
    pub warnings: Vec<&'a Warning>,
    /// [`content_fingerprint`] of each of `authorization`, index for index, from a caller that
    /// keeps its resources unchanged after loading them (the Kubernetes index), so that a
    /// recompile does not hash 10,000 unchanged policies again. Used only when it has exactly
    /// one entry per policy; computed here otherwise.
    pub authorization_prints: Vec<u64>,
}

impl<'a> InputsRef<'a> {
    pub fn of(inputs: &'a Inputs) -> InputsRef<'a> {
        let mut out = InputsRef::default();
        out.extend(inputs);
        out
    }

    /// [`InputsRef::extend`] with the content fingerprints of `inputs.authorization`.
    pub fn extend_with_prints(&mut self, inputs: &'a Inputs, prints: &[u64]) {
        self.authorization_prints.extend_from_slice(prints);
        self.extend(inputs);
    }

    pub fn extend(&mut self, inputs: &'a Inputs) {
        self.authorization.extend(inputs.authorization.iter());
        self.peer.extend(inputs.peer.iter());
        self.request.extend(inputs.request.iter());
        self.workloads.extend(inputs.workloads.iter());
        self.warnings.extend(inputs.warnings.iter());
    }
}

/// The AuthorizationPolicies of earlier compiles, by content, so that compiling a policy set
/// that changed by one object parses and validates Cedar for that object only (the Kubernetes
/// source recompiles on every change). Owns: each compiled policy with the vocabulary it uses,
/// keyed by a fingerprint of the loaded resource and the mesh settings, and which of them
/// passed strict validation under the current schema. Entries unused by the latest compile
/// (`round`) are dropped.
#[derive(Debug, Default)]
pub struct CompileCache {
    policies: std::collections::HashMap<u64, CacheEntry, PrintHasher>,
    /// Counts compiles; each entry says in which one it was last used.
    round: u64,
    /// The distinct vocabularies of the entries: policies of an estate use a few sets of
    /// headers and claims, and each set is merged once per compile.
    vocabularies: std::collections::HashSet<std::sync::Arc<Vocabulary>>,
    schema_text: String,
    validated: std::collections::HashSet<u64, PrintHasher>,
    /// The syntax trees of the cached policies, shared between them.
    ast: AstInterner,
    /// What the compiles through this cache keep.
    detail: Detail,
    /// Whether an AuthorizationPolicy whose generated Cedar fails to parse or validate (a
    /// meshauthz bug) is replaced by a fail-closed stand-in, with a warning, instead of failing
    /// the whole compile (see [`stand_in`]).
    contain_internal_errors: bool,
}

impl CompileCache {
    /// A cache for the hosts that enforce: compiles keep what decisions need only
    /// ([`Detail::Decisions`]), and one policy the compiler cannot translate (a meshauthz bug)
    /// is enforced by a fail-closed stand-in rather than holding back every other change (the
    /// Kubernetes index compiles after every event; a failed compile keeps the last snapshot,
    /// and would keep it after every later change too).
    pub fn for_decisions() -> CompileCache {
        CompileCache {
            detail: Detail::Decisions,
            contain_internal_errors: true,
            ..CompileCache::default()
        }
    }
}

/// Whether `ap` is annotated dry-run (`istio.io/dry-run`, a Go boolean).
fn is_dry_run(ap: &Loaded<AuthorizationPolicySpec>) -> bool {
    ap.meta
        .annotations
        .get(crate::DRY_RUN_ANNOTATION)
        .and_then(|v| parse_go_bool(v))
        .unwrap_or(false)
}

/// Marks the compile-cache print of a stand-in, which differs from its policy's.
const STAND_IN_PRINT: u64 = 0x5354_414e_445f_494e;

/// A fail-closed replacement for `ap` when its own compile failed inside the compiler, as the
/// Kubernetes index replaces an invalid object: an enforced DENY or CUSTOM policy (or an
/// unknown action) denies every request in its scope, an ALLOW policy allows nothing (it still
/// withholds "no ALLOW policy => allow"), and AUDIT or dry-run policies, which decide nothing,
/// are left out (`None`). The scope is the policy's own, or its whole namespace when the
/// stand-in does not compile with it either.
fn stand_in(
    ap: &Loaded<AuthorizationPolicySpec>,
    mesh: &MeshConfig,
    ast: &mut AstInterner,
    detail: Detail,
) -> Option<Result<(AuthzPolicy, Warning), Vec<LoadError>>> {
    let dry_run = is_dry_run(ap);
    let (spec, enforced) = match ap.spec.action {
        _ if dry_run => return None,
        Action::Audit => return None,
        Action::Allow => (
            AuthorizationPolicySpec {
                action: Action::Allow,
                rules: None,
                provider: None,
                ..ap.spec.clone()
            },
            "an ALLOW policy that allows nothing",
        ),
        _ => (
            AuthorizationPolicySpec {
                action: Action::Deny,
                rules: Some(vec![Some(Rule::default())]),
                provider: None,
                ..ap.spec.clone()
            },
            "a DENY of every request",
        ),
    };
    let namespace_wide = AuthorizationPolicySpec {
        selector: None,
        target_ref: None,
        target_refs: None,
        ..spec.clone()
    };
    let mut last_errors = Vec::new();
    for (spec, scope) in [(spec, "in its scope"), (namespace_wide, "in its namespace")] {
        let candidate = Loaded {
            spec,
            item_lines: Vec::new(),
            ..ap.clone()
        };
        match compile_authorization(&candidate, mesh, &mut Vocabulary::default(), ast, detail) {
            Ok(p) if validates(&p) => {
                let warning = Warning {
                    location: Location {
                        file: ap.origin.file.clone(),
                        document: Some(ap.origin.document),
                        line: Some(ap.origin.line),
                        resource: Some(format!("AuthorizationPolicy {}/{}", ap.namespace, ap.name)),
                        field: None,
                    },
                    message: format!(
                        "internal error: meshauthz cannot translate this policy (a meshauthz bug; please report it); enforced as {enforced} {scope} until it changes"
                    ),
                };
                return Some(Ok((p, warning)));
            }
            Ok(_) => {}
            Err(e) => last_errors = e,
        }
    }
    Some(Err(last_errors))
}

/// Whether `ap`'s policies validate against the schema of no vocabulary (a stand-in's, which
/// reads no header, claim or metadata).
fn validates(ap: &AuthzPolicy) -> bool {
    cedar_policy::Schema::from_cedarschema_str(&schema::render(&Vocabulary::default()))
        .is_ok_and(|(schema, _)| strict_validation(&schema, std::iter::once(ap)).is_empty())
}

/// Strict validation of the Cedar policies of `policies` against `schema`: the errors, each an
/// internal error (the compiler emits only valid Cedar, unless it has a bug).
fn strict_validation<'a>(
    schema: &cedar_policy::Schema,
    policies: impl Iterator<Item = &'a AuthzPolicy>,
) -> Vec<LoadError> {
    let mut set = cedar_policy::PolicySet::new();
    let mut errors = Vec::new();
    for p in policies.flat_map(|a| &a.policies) {
        if let Err(e) = set.add(p.policy.clone()) {
            errors.push(LoadError::new(
                Location::file("<generated>"),
                format!("internal error: duplicate Cedar policy `{}`: {e}", p.id),
            ));
        }
    }
    let validator = cedar_policy::Validator::new(schema.clone());
    let result = validator.validate(&set, cedar_policy::ValidationMode::Strict);
    for e in result.validation_errors() {
        errors.push(LoadError::new(
            Location::file("<generated>"),
            format!("internal error: generated Cedar does not validate: {e}"),
        ));
    }
    errors
}

/// Hashes a key that is already a hash (a fingerprint), or an address, by taking it as it is:
/// a one-policy change looks up every policy of the estate, and SipHash over 10,000 keys that
/// are already uniform is wasted work. Not for keys others choose freely (no HashDoS defense).
type PrintHasher = std::hash::BuildHasherDefault<PassThrough>;

#[derive(Debug, Default)]
struct PassThrough(u64);

impl std::hash::Hasher for PassThrough {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        // Not reached for `u64` and pointer keys; any other key is folded in, still correct.
        for b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(*b);
        }
    }

    fn write_u64(&mut self, v: u64) {
        self.0 = v;
    }

    fn write_usize(&mut self, v: usize) {
        // An address: its low bits are alignment, the bits above vary.
        self.0 = (v as u64).rotate_right(4);
    }
}

#[derive(Debug)]
struct CacheEntry {
    policy: std::sync::Arc<AuthzPolicy>,
    vocabulary: std::sync::Arc<Vocabulary>,
    round: u64,
}

/// [`compile`], reusing and refreshing `cache`. Gives the same result as [`compile`].
pub fn compile_cached(
    inputs: &InputsRef<'_>,
    mesh: &MeshConfig,
    extra_workloads: &std::sync::Arc<Vec<Workload>>,
    cache: &mut CompileCache,
) -> Result<Compiled, Vec<LoadError>> {
    compile_with(inputs, mesh, extra_workloads, Some(cache))
}

/// A hash of everything compiling `ap` reads (see `compile_authorization`) but the mesh
/// settings: its origin (in the provenance), namespace, name, annotations (dry-run), spec and
/// rule lines. Not the rest of the metadata: `resourceVersion` or `managedFields` change
/// without changing the policy.
pub fn content_fingerprint(ap: &Loaded<AuthorizationPolicySpec>) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    ap.origin.file.hash(&mut h);
    ap.origin.document.hash(&mut h);
    ap.origin.line.hash(&mut h);
    ap.namespace.hash(&mut h);
    ap.name.hash(&mut h);
    ap.meta.annotations.hash(&mut h);
    ap.spec.hash(&mut h);
    ap.item_lines.hash(&mut h);
    h.finish()
}

/// The compile cache's key: the policy's content under these mesh settings.
fn fingerprint(content: u64, mesh_hash: u64) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    (content, mesh_hash).hash(&mut h);
    h.finish()
}

fn mesh_fingerprint(mesh: &MeshConfig) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    format!("{mesh:?}").hash(&mut h);
    h.finish()
}

/// Adds `from` to `into` (called once per distinct vocabulary of a compile).
fn merge_vocabulary(into: &mut Vocabulary, from: &Vocabulary) {
    into.headers.extend(from.headers.iter().cloned());
    into.claims
        .extend(from.claims.iter().map(|(k, v)| (k.clone(), v.clone())));
    into.metadata
        .extend(from.metadata.iter().map(|(k, v)| (k.clone(), v.clone())));
    into.templates.extend(from.templates.iter().cloned());
}

fn compile_with(
    inputs: &InputsRef<'_>,
    mesh: &MeshConfig,
    extra_workloads: &std::sync::Arc<Vec<Workload>>,
    mut cache: Option<&mut CompileCache>,
) -> Result<Compiled, Vec<LoadError>> {
    let mut vocabulary = Vocabulary::default();
    let mut errors = Vec::new();
    let mut warnings: Vec<Warning> = inputs.warnings.iter().map(|w| (*w).clone()).collect();
    let mut authorization = Vec::new();
    let mesh_hash = mesh_fingerprint(mesh);
    // Each policy's fingerprint (0 without a cache), for the validation step.
    let mut prints: Vec<u64> = Vec::new();
    if let Some(cache) = cache.as_deref_mut() {
        cache.round += 1;
    }
    let mut merged: std::collections::HashSet<*const Vocabulary, PrintHasher> =
        std::collections::HashSet::default();
    // Without a cache, the policies of this compile share their syntax trees among themselves.
    let mut uncached_ast = AstInterner::default();
    let detail = cache.as_deref().map_or(Detail::Explained, |c| c.detail);
    let known_prints = (inputs.authorization_prints.len() == inputs.authorization.len())
        .then_some(&inputs.authorization_prints);
    for (i, ap) in inputs.authorization.iter().enumerate() {
        let Some(cache) = cache.as_deref_mut() else {
            match compile_authorization(ap, mesh, &mut vocabulary, &mut uncached_ast, detail) {
                Ok(p) => {
                    authorization.push(std::sync::Arc::new(p));
                    prints.push(0);
                }
                Err(e) => errors.extend(e),
            }
            continue;
        };
        let content = match known_prints.and_then(|p| p.get(i)) {
            Some(p) => *p,
            None => content_fingerprint(ap),
        };
        let print = fingerprint(content, mesh_hash);
        let entry = match cache.policies.entry(print) {
            std::collections::hash_map::Entry::Occupied(hit) => hit.into_mut(),
            std::collections::hash_map::Entry::Vacant(miss) => {
                let mut own = Vocabulary::default();
                match compile_authorization(ap, mesh, &mut own, &mut cache.ast, detail) {
                    Ok(p) => {
                        let vocabulary = match cache.vocabularies.get(&own) {
                            Some(shared) => shared.clone(),
                            None => {
                                let shared = std::sync::Arc::new(own);
                                cache.vocabularies.insert(shared.clone());
                                shared
                            }
                        };
                        miss.insert(CacheEntry {
                            policy: std::sync::Arc::new(p),
                            vocabulary,
                            round: 0,
                        })
                    }
                    Err(e) => {
                        if cache.contain_internal_errors {
                            match stand_in(ap, mesh, &mut cache.ast, detail) {
                                None => {}
                                Some(Ok((p, warning))) => {
                                    warnings.push(warning);
                                    prints.push(print ^ STAND_IN_PRINT);
                                    authorization.push(std::sync::Arc::new(p));
                                }
                                Some(Err(_)) => errors.extend(e),
                            }
                        } else {
                            errors.extend(e);
                        }
                        continue;
                    }
                }
            }
        };
        entry.round = cache.round;
        if merged.insert(std::sync::Arc::as_ptr(&entry.vocabulary)) {
            merge_vocabulary(&mut vocabulary, &entry.vocabulary);
        }
        prints.push(print);
        authorization.push(entry.policy.clone());
    }
    if let Some(cache) = cache.as_deref_mut() {
        let round = cache.round;
        cache.policies.retain(|_, e| e.round == round);
        cache
            .vocabularies
            .retain(|v| std::sync::Arc::strong_count(v) > 1);
        cache.ast.prune();
    }
    let mut by_key: Vec<_> = authorization.into_iter().zip(prints).collect();
    by_key.sort_by(|a, b| a.0.key.cmp(&b.0.key));
    let (authorization, mut prints): (Vec<_>, Vec<u64>) = by_key.into_iter().unzip();
    let mut peer: Vec<PeerAuthn> = Vec::new();
    for pa in &inputs.peer {
        let (p, w) = compile_peer(pa, mesh);
        warnings.extend(w);
        peer.extend(p);
    }
    peer.sort_by(|a, b| a.key.cmp(&b.key));
    let mut request: Vec<RequestAuthn> = inputs
        .request
        .iter()
        .map(|ra| compile_request(ra, mesh))
        .collect();
    request.sort_by(|a, b| a.key.cmp(&b.key));

    let in_order = |ws: &[Workload]| ws.windows(2).all(|p| p[0].key_cmp(&p[1]).is_lt());
    let workloads = if inputs.workloads.is_empty() && in_order(extra_workloads) {
        extra_workloads.clone()
    } else {
        let mut workloads: Vec<Workload> = extra_workloads.to_vec();
        let mut keys: std::collections::HashSet<(&str, &str)> = extra_workloads
            .iter()
            .map(|w| (w.namespace.as_str(), w.name.as_str()))
            .collect();
        for w in &inputs.workloads {
            if keys.insert((w.namespace.as_str(), w.name.as_str())) {
                workloads.push((*w).clone());
            }
        }
        workloads.sort_by_cached_key(Workload::key);
        std::sync::Arc::new(workloads)
    };

    let schema_text = schema::render(&vocabulary);
    let schema = match cedar_policy::Schema::from_cedarschema_str(&schema_text) {
        Ok((s, _)) => s,
        Err(e) => {
            errors.push(LoadError::new(
                Location::file("<generated schema>"),
                format!("internal error: generated Cedar schema does not parse: {e}"),
            ));
            return Err(errors);
        }
    };
    if !errors.is_empty() {
        return Err(errors);
    }
    let mut compiled = Compiled {
        mesh: mesh.clone(),
        workloads,
        authorization,
        peer,
        request,
        vocabulary,
        schema_text,
        schema,
        warnings,
    };
    let validation = match cache {
        None => compiled.validate_cedar(),
        Some(cache) => {
            // Strict validation depends on the policy and the schema only: with the same
            // schema, a policy validated before needs no second look.
            if cache.schema_text != compiled.schema_text {
                cache.schema_text = compiled.schema_text.clone();
                cache.validated.clear();
            }
            let mut fresh: Vec<usize> = (0..compiled.authorization.len())
                .filter(|i| !cache.validated.contains(&prints[*i]))
                .collect();
            let mut errors =
                compiled.validate_policies(fresh.iter().map(|i| &*compiled.authorization[*i]));
            if !errors.is_empty() && cache.contain_internal_errors {
                errors =
                    contain_invalid(&mut compiled, &mut prints, &mut fresh, inputs, mesh, cache);
            }
            if errors.is_empty() {
                // Prints of policies gone since stay until the set is twice the estate (a
                // stale print is still a fact: that content validated under this schema).
                if cache.validated.len() > 2 * prints.len() + 64 {
                    cache.validated = prints.iter().copied().collect();
                }
                cache.validated.extend(fresh.iter().map(|i| prints[*i]));
            }
            errors
        }
    };
    if !validation.is_empty() {
        return Err(validation);
    }
    Ok(compiled)
}

/// The fresh policies of `compiled` that fail strict validation on their own (a meshauthz bug)
/// replaced by their stand-ins (or left out, for those that decide nothing), each with a
/// warning; `fresh` and `prints` follow. The errors of those that cannot be replaced.
fn contain_invalid(
    compiled: &mut Compiled,
    prints: &mut Vec<u64>,
    fresh: &mut Vec<usize>,
    inputs: &InputsRef<'_>,
    mesh: &MeshConfig,
    cache: &mut CompileCache,
) -> Vec<LoadError> {
    let mut errors = Vec::new();
    let mut gone = Vec::new();
    for &i in fresh.iter() {
        let own = compiled.validate_policies(std::iter::once(&*compiled.authorization[i]));
        if own.is_empty() {
            continue;
        }
        let key = &compiled.authorization[i].key;
        let source = inputs
            .authorization
            .iter()
            .find(|l| l.namespace == key.namespace && l.name == key.name);
        match source.map(|l| stand_in(l, mesh, &mut cache.ast, cache.detail)) {
            Some(None) => gone.push(i),
            Some(Some(Ok((p, warning)))) => {
                compiled.warnings.push(warning);
                compiled.authorization[i] = std::sync::Arc::new(p);
                prints[i] ^= STAND_IN_PRINT;
            }
            None | Some(Some(Err(_))) => errors.extend(own),
        }
    }
    if !gone.is_empty() {
        for &i in gone.iter().rev() {
            compiled.authorization.remove(i);
            prints.remove(i);
        }
        // Positions after a removed one move down.
        *fresh = fresh
            .iter()
            .filter(|i| !gone.contains(i))
            .map(|i| i - gone.iter().filter(|g| *g < i).count())
            .collect();
    }
    errors
}

impl Compiled {
    /// Validates every emitted policy against the schema (strict mode). Always empty unless the
    /// compiler has a bug; tests assert it.
    pub fn validate_cedar(&self) -> Vec<LoadError> {
        self.validate_policies(self.authorization.iter().map(|ap| &**ap))
    }

    /// Strict validation of some of the policies against the schema.
    fn validate_policies<'a>(
        &self,
        policies: impl Iterator<Item = &'a AuthzPolicy>,
    ) -> Vec<LoadError> {
        strict_validation(&self.schema, policies)
    }

    /// The Cedar policies in a stable order, with the global form of the Istio default rule,
    /// as `meshauthz compile` prints them.
    pub fn cedar_text(&self) -> String {
        let mut out = String::new();
        out.push_str(
            "// Generated by meshauthz from Istio security resources. Evaluated per workload:\n",
        );
        out.push_str(
            "// a request is allowed when a permit matches and no forbid does (Cedar), which\n",
        );
        out.push_str(
            "// with the default permit below is Istio's CUSTOM -> DENY -> ALLOW order.\n\n",
        );
        for p in self.authorization.iter().flat_map(|a| &a.policies) {
            match &p.text {
                Some(text) => out.push_str(text),
                // Compiled for decisions only: Cedar's own rendering of what is evaluated.
                None => out.push_str(&p.policy.to_string()),
            }
            out.push_str("\n\n");
        }
        out.push_str(&self.default_allow_text());
        out
    }

    /// The Istio default as one global Cedar policy: allow when no enforced ALLOW policy
    /// applies to the workload.
    pub fn default_allow_text(&self) -> String {
        let scopes = Expr::or(
            self.authorization
                .iter()
                .filter(|a| a.is_enforced_allow())
                .map(|a| a.scope.cedar()),
        );
        let mut out = format!(
            "@id(\"{DEFAULT_ALLOW_ID}\")\n@note(\"Istio: if there are no ALLOW policies for the workload, allow the request\")\npermit (principal, action, resource)"
        );
        match scopes {
            Expr::False => out.push_str(";\n"),
            e => {
                out.push_str(&format!("\nunless {{ {} }};\n", e.render()));
            }
        }
        out
    }
}

/// Whether every field of the rule is HTTP-only (so its TCP form matches everything).
pub fn rule_is_http_only(rule: &Rule) -> bool {
    let mut any = false;
    let mut all_http = true;
    for f in rule.from.iter().flatten() {
        if let Some(s) = &f.source {
            let http = !s.request_principals.is_empty() || !s.not_request_principals.is_empty();
            let other = Source {
                request_principals: vec![],
                not_request_principals: vec![],
                ..s.clone()
            };
            any |= http || !other.is_empty();
            all_http &= other.is_empty();
        }
    }
    for t in rule.to.iter().flatten() {
        if let Some(o) = &t.operation {
            let other = Operation {
                ports: o.ports.clone(),
                not_ports: o.not_ports.clone(),
                ..Operation::default()
            };
            any |= !o.is_empty();
            all_http &= other.is_empty();
        }
    }
    for c in rule.when.iter().flatten() {
        any = true;
        all_http &= parse_when_key(&c.key).is_ok_and(|k| k.is_http_only());
    }
    any && all_http
}

fn compile_authorization(
    ap: &Loaded<AuthorizationPolicySpec>,
    mesh: &MeshConfig,
    vocabulary: &mut Vocabulary,
    ast: &mut AstInterner,
    detail: Detail,
) -> Result<AuthzPolicy, Vec<LoadError>> {
    let key = ResourceKey {
        namespace: ap.namespace.clone(),
        name: ap.name.clone(),
    };
    let spec = &ap.spec;
    let scope = Scope::new(
        &ap.namespace,
        &mesh.root_namespace,
        spec.selector.as_ref(),
        spec.target_ref.as_ref(),
        spec.target_refs.as_deref(),
    );
    let dry_run = is_dry_run(ap);
    let provider = (spec.action == Action::Custom).then(|| {
        let name = spec
            .provider
            .as_ref()
            .map(|p| p.name.clone())
            .unwrap_or_default();
        let kind = mesh.provider(&name).and_then(|p| p.ext_authz_kind());
        (name, kind)
    });
    let scope_expr = scope.cedar();
    let mut rules = Vec::new();
    let mut policies = Vec::new();
    let mut errors = Vec::new();
    for (index, rule) in spec.rules.iter().flatten().enumerate() {
        let Some(rule) = rule else { continue };
        let line = ap.item_line(index);
        let mut emit = Emitter {
            mesh,
            policy_namespace: &ap.namespace,
            vocabulary,
            conditions: Vec::new(),
        };
        let http = emit.rule(rule, Proto::Http, true);
        let tcp = emit.rule(rule, Proto::Tcp, false);
        let conditions = std::mem::take(&mut emit.conditions);
        let allow_like = spec.action == Action::Allow;
        if detail == Detail::Explained {
            rules.push(CompiledRule {
                index,
                line,
                http_condition: http.render(),
                tcp_condition: if allow_like && http != tcp {
                    "false".to_string()
                } else {
                    tcp.render()
                },
                conditions,
            });
        }
        let base = format!("{key}[{index}]");
        let usable_provider = matches!(provider, Some((_, Some(_))));
        // An HTTP ext_authz provider is not consulted on TCP connections.
        let http_provider = matches!(provider, Some((_, Some(ProviderKind::Http))));
        let roles: Vec<Role> = match (spec.action, dry_run) {
            (Action::Allow, false) => vec![Role::Allow],
            (Action::Allow, true) => vec![Role::DryRunAllow],
            (Action::Deny, false) => vec![Role::Deny],
            (Action::Deny, true) => vec![Role::DryRunDeny],
            (Action::Audit, _) => vec![Role::Audit],
            // Istio still calls the provider for a dry-run CUSTOM policy (a known limitation).
            (Action::Custom, _) if usable_provider => vec![Role::CustomDelegate, Role::CustomDeny],
            (Action::Custom, _) => vec![Role::CustomDeny],
        };
        let mut variants: Vec<(String, Role, Expr, Option<&str>)> = Vec::new();
        for role in roles {
            let id = if role == Role::CustomDeny && usable_provider {
                format!("{base}/custom-deny")
            } else {
                base.clone()
            };
            let allow_like = matches!(role, Role::Allow | Role::DryRunAllow);
            for (suffix, cond, proto) in protocol_forms(&http, &tcp, allow_like, http_provider) {
                variants.push((format!("{id}{suffix}"), role, cond, proto));
            }
        }
        for (id, role, cond, proto) in variants {
            let source = format!("{}:{line}", ap.origin.file);
            let shape = PolicyText {
                id: &id,
                key: &key,
                action: spec.action,
                role,
                rule: index,
                source: &source,
                protocol: proto,
                provider: provider.as_ref().map(|p| p.0.as_str()),
                scope: &scope_expr,
                condition: &cond,
            };
            let text = (detail == Detail::Explained).then(|| render_policy(&shape));
            let compact = render_body(&shape, " ", false);
            #[cfg(test)]
            let compact = tests::broken(&key, compact);
            let reach = Reach {
                form: match proto {
                    Some("http") => Form::Http,
                    Some("tcp") => Form::Tcp,
                    _ => Form::Any,
                },
                ports: rule_ports(rule),
                paths: if proto == Some("http") {
                    rule_path_keys(rule)
                } else {
                    None
                },
            };
            match ast.parse(&id, &compact) {
                Ok(policy) => policies.push(CedarPolicy {
                    id,
                    role,
                    rule: index,
                    text,
                    policy,
                    reach,
                    reads: crate::attributes::ContextReads::of_text(&compact),
                }),
                Err(e) => errors.push(LoadError::new(
                    Location {
                        file: ap.origin.file.clone(),
                        document: Some(ap.origin.document),
                        line: Some(line),
                        resource: Some(format!("AuthorizationPolicy {key}")),
                        field: Some(format!("spec.rules[{index}]")),
                    },
                    format!("internal error: generated Cedar does not parse: {e}\n{compact}"),
                )),
            }
        }
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    Ok(AuthzPolicy {
        key,
        origin: ap.origin.clone(),
        action: spec.action,
        dry_run,
        provider,
        scope,
        rules,
        policies,
    })
}

/// The Cedar condition(s) of one rule (§1.10). One form when HTTP and TCP agree. Otherwise an
/// ALLOW rule (or one for an HTTP provider) applies to HTTP only — dropped on TCP, so fewer
/// requests pass — and a DENY-like rule gets a TCP form without its HTTP fields, so more are
/// denied.
fn protocol_forms(
    http: &Expr,
    tcp: &Expr,
    allow_like: bool,
    http_only: bool,
) -> Vec<(&'static str, Expr, Option<&'static str>)> {
    let guard = Expr::atom("context has http");
    if http_only || (allow_like && http != tcp) {
        return vec![("", Expr::and([guard, http.clone()]), Some("http"))];
    }
    if http == tcp {
        return vec![("", http.clone(), None)];
    }
    vec![
        ("", Expr::and([guard.clone(), http.clone()]), Some("http")),
        (
            "/tcp",
            Expr::and([Expr::not(guard), tcp.clone()]),
            Some("tcp"),
        ),
    ]
}

struct PolicyText<'a> {
    id: &'a str,
    key: &'a ResourceKey,
    action: Action,
    role: Role,
    rule: usize,
    source: &'a str,
    protocol: Option<&'a str>,
    provider: Option<&'a str>,
    scope: &'a Expr,
    condition: &'a Expr,
}

fn render_policy(p: &PolicyText<'_>) -> String {
    let mut out = String::new();
    out.push_str(&format!("@id({})\n", string_lit(p.id)));
    out.push_str(&format!("@policy({})\n", string_lit(&p.key.to_string())));
    out.push_str(&format!("@kind({})\n", string_lit(p.action.as_str())));
    out.push_str(&format!("@rule(\"{}\")\n", p.rule));
    out.push_str(&format!("@source({})\n", string_lit(p.source)));
    match p.role {
        Role::DryRunAllow | Role::DryRunDeny => out.push_str("@mode(\"dry-run\")\n"),
        Role::Audit => out.push_str("@mode(\"audit\")\n"),
        Role::CustomDelegate => out.push_str("@mode(\"delegate\")\n"),
        Role::CustomDeny => out.push_str("@mode(\"custom-deny\")\n"),
        Role::Allow | Role::Deny => {}
    }
    if let Some(provider) = p.provider {
        out.push_str(&format!("@provider({})\n", string_lit(provider)));
    }
    if let Some(proto) = p.protocol {
        out.push_str(&format!("@protocol(\"{proto}\")\n"));
    }
    out.push_str(&render_body(p, "\n", true));
    out
}

/// The policy without annotations, on one line when `sep` is a space. Without its scope
/// (`with_scope` false) it is what the engine parses and holds: the snapshot evaluates a policy
/// only for the workloads its scope selects (their policy class, chosen with the same
/// `Scope::applies_to`), so testing the scope again per request would only cost time. Cedar
/// keeps a policy's source text in every copy of it (one per policy class), and the provenance
/// lives in the snapshot's own tables.
fn render_body(p: &PolicyText<'_>, sep: &str, with_scope: bool) -> String {
    let mut out = String::from(if p.role.is_forbid() {
        "forbid"
    } else {
        "permit"
    });
    out.push_str(" (principal, action, resource)");
    if with_scope && *p.scope != Expr::True {
        out.push_str(&format!("{sep}when {{ {} }}", p.scope.render()));
    }
    match p.condition {
        Expr::True => {}
        c if sep == "\n" => out.push_str(&format!("\nwhen {{\n  {}\n}}", c.render_lines("  "))),
        c => out.push_str(&format!(" when {{ {} }}", c.render())),
    }
    out.push(';');
    out
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Proto {
    Http,
    Tcp,
}

/// An Istio string value's match kind (§1.5).
#[derive(Debug, Clone, PartialEq, Eq)]
enum Pattern {
    Exact(String),
    Prefix(String),
    Suffix(String),
    /// `*`: a non-empty value (regex `.+`).
    NonEmpty,
}

fn pattern(v: &str) -> Pattern {
    if v == "*" {
        Pattern::NonEmpty
    } else if let Some(s) = v.strip_prefix('*') {
        Pattern::Suffix(s.to_string())
    } else if let Some(p) = v.strip_suffix('*') {
        Pattern::Prefix(p.to_string())
    } else {
        Pattern::Exact(v.to_string())
    }
}

struct Emitter<'a> {
    mesh: &'a MeshConfig,
    policy_namespace: &'a str,
    vocabulary: &'a mut Vocabulary,
    conditions: Vec<Explained>,
}

const PRINCIPAL: &str = "context.source.principal";
const HAS_PRINCIPAL: &str = "context.source has principal";

impl Emitter<'_> {
    /// The rule's condition for one protocol. `record` collects explanation conjuncts.
    fn rule(&mut self, rule: &Rule, proto: Proto, record: bool) -> Expr {
        let mut parts = Vec::new();
        if let Some(from) = &rule.from {
            let mut sources = Vec::new();
            for (j, f) in from.iter().enumerate() {
                let s = f.source.clone().unwrap_or_default();
                let fields = self.source_fields(&s, proto);
                if record {
                    for (name, e) in &fields {
                        self.conditions.push(Explained {
                            label: format!("from[{j}].source.{name}"),
                            cedar: e.render(),
                        });
                    }
                }
                sources.push(Expr::and(fields.into_iter().map(|(_, e)| e)));
            }
            parts.push(Expr::or(sources));
        }
        if let Some(to) = &rule.to {
            let mut ops = Vec::new();
            for (j, t) in to.iter().enumerate() {
                let o = t.operation.clone().unwrap_or_default();
                let fields = self.operation_fields(&o, proto);
                if record {
                    for (name, e) in &fields {
                        self.conditions.push(Explained {
                            label: format!("to[{j}].operation.{name}"),
                            cedar: e.render(),
                        });
                    }
                }
                ops.push(Expr::and(fields.into_iter().map(|(_, e)| e)));
            }
            parts.push(Expr::or(ops));
        }
        for (j, c) in rule.when.iter().flatten().enumerate() {
            let e = self.condition(c, proto);
            if record {
                self.conditions.push(Explained {
                    label: format!("when[{j}] {}", c.key),
                    cedar: e.render(),
                });
            }
            parts.push(e);
        }
        Expr::and(parts)
    }

    fn source_fields(&mut self, s: &Source, proto: Proto) -> Vec<(&'static str, Expr)> {
        let mut out = Vec::new();
        let mut field = |name: &'static str,
                         values: &[String],
                         negate: bool,
                         f: &mut dyn FnMut(&[String]) -> Expr| {
            if values.is_empty() {
                return;
            }
            let e = f(values);
            out.push((name, if negate { Expr::not(e) } else { e }));
        };
        field("principals", &s.principals, false, &mut |v| {
            self.principals(v)
        });
        field("notPrincipals", &s.not_principals, true, &mut |v| {
            self.principals(v)
        });
        if proto == Proto::Http {
            field(
                "requestPrincipals",
                &s.request_principals,
                false,
                &mut |v| request_principals(v),
            );
            field(
                "notRequestPrincipals",
                &s.not_request_principals,
                true,
                &mut |v| request_principals(v),
            );
        }
        field("namespaces", &s.namespaces, false, &mut |v| namespaces(v));
        field("notNamespaces", &s.not_namespaces, true, &mut |v| {
            namespaces(v)
        });
        field("serviceAccounts", &s.service_accounts, false, &mut |v| {
            self.service_accounts(v)
        });
        field(
            "notServiceAccounts",
            &s.not_service_accounts,
            true,
            &mut |v| self.service_accounts(v),
        );
        field("ipBlocks", &s.ip_blocks, false, &mut |v| {
            ip_match("context.source has ip", "context.source.ip", v)
        });
        field("notIpBlocks", &s.not_ip_blocks, true, &mut |v| {
            ip_match("context.source has ip", "context.source.ip", v)
        });
        field("remoteIpBlocks", &s.remote_ip_blocks, false, &mut |v| {
            ip_match("context has remoteIp", "context.remoteIp", v)
        });
        field(
            "notRemoteIpBlocks",
            &s.not_remote_ip_blocks,
            true,
            &mut |v| ip_match("context has remoteIp", "context.remoteIp", v),
        );
        field("trustDomains", &s.trust_domains, false, &mut |v| {
            self.trust_domains(v)
        });
        field("notTrustDomains", &s.not_trust_domains, true, &mut |v| {
            self.trust_domains(v)
        });
        out
    }

    fn operation_fields(&mut self, o: &Operation, proto: Proto) -> Vec<(&'static str, Expr)> {
        let mut out = Vec::new();
        let http = proto == Proto::Http;
        let mut push =
            |name: &'static str, values: &[String], negate: bool, e: &dyn Fn(&[String]) -> Expr| {
                if !values.is_empty() {
                    let x = e(values);
                    out.push((name, if negate { Expr::not(x) } else { x }));
                }
            };
        if http {
            push("hosts", &o.hosts, false, &hosts);
            push("notHosts", &o.not_hosts, true, &hosts);
        }
        push("ports", &o.ports, false, &ports);
        push("notPorts", &o.not_ports, true, &ports);
        if http {
            push("methods", &o.methods, false, &methods);
            push("notMethods", &o.not_methods, true, &methods);
        }
        if http {
            for v in o.paths.iter().chain(&o.not_paths) {
                if uri_template::is_template(v) {
                    self.vocabulary.templates.insert(v.clone());
                }
            }
            push("paths", &o.paths, false, &paths);
            push("notPaths", &o.not_paths, true, &paths);
        }
        out
    }

    fn condition(&mut self, c: &Condition, proto: Proto) -> Expr {
        let Ok(key) = parse_when_key(&c.key) else {
            // Unreachable after validation; a rule with an unknown key must never match.
            return Expr::False;
        };
        if proto == Proto::Tcp && key.is_http_only() {
            return Expr::True;
        }
        let positive = (!c.values.is_empty()).then(|| self.when_values(&key, &c.values));
        let negative =
            (!c.not_values.is_empty()).then(|| Expr::not(self.when_values(&key, &c.not_values)));
        Expr::and(positive.into_iter().chain(negative))
    }

    fn when_values(&mut self, key: &WhenKey, values: &[String]) -> Expr {
        match key {
            WhenKey::RequestHeader(name) => {
                self.vocabulary.headers.insert(name.clone());
                let attr = format!("context.http.headers[{}]", string_lit(name));
                let guard = format!("context.http.headers has {}", string_lit(name));
                Expr::and([
                    Expr::atom("context has http"),
                    multi_valued(&guard, &attr, values),
                ])
            }
            WhenKey::SourceIp => ip_match("context.source has ip", "context.source.ip", values),
            WhenKey::RemoteIp => ip_match("context has remoteIp", "context.remoteIp", values),
            WhenKey::DestinationIp => ip_match(
                "context.destination has ip",
                "context.destination.ip",
                values,
            ),
            WhenKey::DestinationPort => ports(values),
            WhenKey::SourceNamespace => namespaces(values),
            WhenKey::SourcePrincipal => self.principals(values),
            WhenKey::SourceServiceAccount => self.service_accounts(values),
            WhenKey::SourceTrustDomain => self.trust_domains(values),
            WhenKey::RequestAuthPrincipal => request_principals(values),
            WhenKey::RequestAuthAudiences => Expr::and([
                Expr::atom("context has jwt"),
                multi_valued("context.jwt has aud", "context.jwt.aud", values),
            ]),
            WhenKey::RequestAuthPresenter => Expr::and([
                Expr::atom("context has jwt"),
                single_valued("context.jwt has azp", "context.jwt.azp", values, ""),
            ]),
            WhenKey::RequestAuthClaims(path) => {
                let name = claim_attribute(path);
                self.vocabulary.claims.insert(name.clone(), path.clone());
                Expr::and([
                    Expr::atom("context has jwt"),
                    multi_valued(
                        &format!("context.jwt.claims has {}", string_lit(&name)),
                        &format!("context.jwt.claims[{}]", string_lit(&name)),
                        values,
                    ),
                ])
            }
            WhenKey::ConnectionSni => single_valued("context has sni", "context.sni", values, ""),
            WhenKey::FilterMetadata { filter, key } => {
                let name = metadata_attribute(filter, key);
                self.vocabulary
                    .metadata
                    .insert(name.clone(), (filter.clone(), key.clone()));
                // A value `[v]` asks for a list element equal to v; we match any element.
                let values: Vec<String> = values
                    .iter()
                    .map(|v| {
                        v.strip_prefix('[')
                            .and_then(|x| x.strip_suffix(']'))
                            .unwrap_or(v)
                            .to_string()
                    })
                    .collect();
                multi_valued(
                    &format!("context.metadata has {}", string_lit(&name)),
                    &format!("context.metadata[{}]", string_lit(&name)),
                    &values,
                )
            }
        }
    }

    /// `principals` / `source.principal`: Istio prepends `spiffe://`; trust domain aliases expand.
    fn principals(&self, values: &[String]) -> Expr {
        let bundle = self.mesh.trust_domains();
        let mut expanded = Vec::new();
        for v in values {
            for e in expand_trust_domain_aliases(v, &bundle) {
                if !expanded.contains(&e) {
                    expanded.push(e);
                }
            }
        }
        single_valued(HAS_PRINCIPAL, PRINCIPAL, &expanded, "spiffe://")
    }

    /// `serviceAccounts`: `ns/sa`, or `sa` in the policy's namespace, matched literally at the
    /// `/ns/<ns>/sa/<sa>` position of the SPIFFE ID (CVE-2026-39350: no regex metacharacters).
    fn service_accounts(&self, values: &[String]) -> Expr {
        let mut likes = Vec::new();
        for v in values {
            let (ns, sa) = v
                .split_once('/')
                .unwrap_or((self.policy_namespace, v.as_str()));
            let mid = format!("/ns/{ns}/");
            let tail = format!("sa/{sa}");
            let slash_tail = format!("/sa/{sa}");
            // Istio: spiffe://.+/ns/<ns>/(.+/|)sa/<sa>(/.+)?
            let shapes: [Vec<Pat<'_>>; 4] = [
                vec![
                    Pat::Lit("spiffe://"),
                    Pat::Any,
                    Pat::Lit(&mid),
                    Pat::Lit(&tail),
                ],
                vec![
                    Pat::Lit("spiffe://"),
                    Pat::Any,
                    Pat::Lit(&mid),
                    Pat::Any,
                    Pat::Lit(&slash_tail),
                ],
                vec![
                    Pat::Lit("spiffe://"),
                    Pat::Any,
                    Pat::Lit(&mid),
                    Pat::Lit(&tail),
                    Pat::Lit("/"),
                    Pat::Any,
                ],
                vec![
                    Pat::Lit("spiffe://"),
                    Pat::Any,
                    Pat::Lit(&mid),
                    Pat::Any,
                    Pat::Lit(&slash_tail),
                    Pat::Lit("/"),
                    Pat::Any,
                ],
            ];
            for s in shapes {
                likes.push(Expr::atom(format!("{PRINCIPAL} like {}", like_lit(&s))));
            }
        }
        Expr::and([Expr::atom(HAS_PRINCIPAL), Expr::or(likes)])
    }

    /// `trustDomains`: compared with the trust domain of the peer's SPIFFE ID.
    fn trust_domains(&self, values: &[String]) -> Expr {
        let bundle = self.mesh.trust_domains();
        let mut expanded: Vec<String> = Vec::new();
        for v in values {
            let add: Vec<String> = if bundle.contains(v) {
                bundle.clone()
            } else {
                vec![v.clone()]
            };
            for a in add {
                if !expanded.contains(&a) {
                    expanded.push(a);
                }
            }
        }
        single_valued(
            "context.source has trustDomain",
            "context.source.trustDomain",
            &expanded,
            "",
        )
    }
}

/// Istio's trust-domain alias expansion of a `principals` value (`td/ns/x/sa/y`): a value whose
/// trust domain is the mesh's, an alias, or the literal `cluster.local` becomes one value per
/// trust domain of the bundle; a leading-`*` domain is kept for the domains it matches.
pub fn expand_trust_domain_aliases(value: &str, bundle: &[String]) -> Vec<String> {
    let parts: Vec<&str> = value.split('/').collect();
    if parts.len() != 5 || parts[0] == "*" {
        return vec![value.to_string()];
    }
    let td = parts[0];
    let rest = &value[td.len()..];
    let matches = |t: &str| {
        td == t
            || td.strip_prefix('*').is_some_and(|s| t.ends_with(s))
            || td.strip_suffix('*').is_some_and(|p| t.starts_with(p))
    };
    if !(bundle.iter().any(|t| matches(t)) || td == "cluster.local") {
        return vec![value.to_string()];
    }
    let mut out: Vec<String> = Vec::new();
    for t in bundle {
        let candidate = if td.strip_prefix('*').is_some_and(|s| t.ends_with(s)) {
            value.to_string()
        } else {
            format!("{t}{rest}")
        };
        if !out.contains(&candidate) {
            out.push(candidate);
        }
    }
    out
}

/// OR of Istio string patterns over one optional string attribute.
fn single_valued(guard: &str, attr: &str, values: &[String], prefix: &str) -> Expr {
    let mut exact = Vec::new();
    let mut others = Vec::new();
    for v in values {
        match pattern(v) {
            Pattern::Exact(x) => exact.push(string_lit(&format!("{prefix}{x}"))),
            Pattern::Prefix(p) => others.push(Expr::atom(format!(
                "{attr} like {}",
                like_lit(&[Pat::Lit(prefix), Pat::Lit(&p), Pat::Any])
            ))),
            Pattern::Suffix(s) => others.push(Expr::atom(format!(
                "{attr} like {}",
                like_lit(&[Pat::Lit(prefix), Pat::Any, Pat::Lit(&s)])
            ))),
            Pattern::NonEmpty => others.push(if prefix.is_empty() {
                Expr::atom(format!("{attr} != \"\""))
            } else {
                // `spiffe://` + `.+`
                Expr::and([
                    Expr::atom(format!(
                        "{attr} like {}",
                        like_lit(&[Pat::Lit(prefix), Pat::Any])
                    )),
                    Expr::atom(format!("{attr} != {}", string_lit(prefix))),
                ])
            }),
        }
    }
    let exact_expr = match exact.len() {
        0 => Expr::False,
        1 => Expr::atom(format!("{attr} == {}", exact[0])),
        _ => Expr::atom(format!("[{}].contains({attr})", exact.join(", "))),
    };
    let mut all = vec![exact_expr];
    all.extend(others);
    Expr::and([Expr::atom(guard), Expr::or(all)])
}

/// OR of Istio string patterns over a multi-value encoded attribute (any element matches).
/// `*` is the guard alone: for headers it means "present" (Envoy's present_match); for claims
/// "a non-empty element", and the engine encodes claims without empty elements.
fn multi_valued(guard: &str, attr: &str, values: &[String]) -> Expr {
    let mut alts = Vec::new();
    for v in values {
        let enc = |s: &str| {
            let mut out = String::new();
            crate::attributes::encode_element(s, &mut out);
            out
        };
        let e = match pattern(v) {
            Pattern::NonEmpty => return Expr::atom(guard),
            Pattern::Exact(x) => {
                let x = enc(&x);
                like_lit(&[
                    Pat::Any,
                    Pat::Lit("\n"),
                    Pat::Lit(&x),
                    Pat::Lit("\n"),
                    Pat::Any,
                ])
            }
            Pattern::Prefix(p) => {
                let p = enc(&p);
                like_lit(&[Pat::Any, Pat::Lit("\n"), Pat::Lit(&p), Pat::Any])
            }
            Pattern::Suffix(s) => {
                let s = enc(&s);
                like_lit(&[Pat::Any, Pat::Lit(&s), Pat::Lit("\n"), Pat::Any])
            }
        };
        alts.push(Expr::atom(format!("{attr} like {e}")));
    }
    Expr::and([Expr::atom(guard), Expr::or(alts)])
}

/// `requestPrincipals` / `request.auth.principal`: split at the last `/` into issuer and
/// subject, each matched on its own (§1.9).
fn request_principals(values: &[String]) -> Expr {
    let iss = |p: Pattern| part_match("context.jwt has iss", "context.jwt.iss", p);
    let sub = |p: Pattern| part_match("context.jwt has sub", "context.jwt.sub", p);
    let mut alts = Vec::new();
    for v in values {
        let (i, s) = if v == "*" {
            (Pattern::NonEmpty, Pattern::NonEmpty)
        } else if let Some((i, s)) = v.rsplit_once('/') {
            (pattern(i), pattern(s))
        } else {
            match pattern(v) {
                Pattern::Exact(x) => (Pattern::Exact(x), Pattern::Exact(String::new())),
                Pattern::Prefix(p) => (Pattern::Prefix(p), Pattern::NonEmpty),
                Pattern::Suffix(s) => (Pattern::NonEmpty, Pattern::Suffix(s)),
                Pattern::NonEmpty => (Pattern::NonEmpty, Pattern::NonEmpty),
            }
        };
        alts.push(Expr::and([iss(i), sub(s)]));
    }
    Expr::and([Expr::atom("context has jwt"), Expr::or(alts)])
}

fn part_match(guard: &str, attr: &str, p: Pattern) -> Expr {
    let m = match p {
        Pattern::Exact(x) => Expr::atom(format!("{attr} == {}", string_lit(&x))),
        Pattern::Prefix(x) => Expr::atom(format!(
            "{attr} like {}",
            like_lit(&[Pat::Lit(&x), Pat::Any])
        )),
        Pattern::Suffix(x) => Expr::atom(format!(
            "{attr} like {}",
            like_lit(&[Pat::Any, Pat::Lit(&x)])
        )),
        Pattern::NonEmpty => Expr::atom(format!("{attr} != \"\"")),
    };
    Expr::and([Expr::atom(guard), m])
}

/// `namespaces` / `source.namespace`: Istio's regex `.*/ns/<ns>/.*` on the SPIFFE ID, where a
/// `*` in the value is a wildcard and everything else is literal.
fn namespaces(values: &[String]) -> Expr {
    let mut alts = Vec::new();
    for v in values {
        let mut parts = vec![Pat::Any, Pat::Lit("/ns/")];
        for (i, piece) in v.split('*').enumerate() {
            if i > 0 {
                parts.push(Pat::Any);
            }
            parts.push(Pat::Lit(piece));
        }
        parts.push(Pat::Lit("/"));
        parts.push(Pat::Any);
        alts.push(Expr::atom(format!("{PRINCIPAL} like {}", like_lit(&parts))));
    }
    Expr::and([Expr::atom(HAS_PRINCIPAL), Expr::or(alts)])
}

fn ip_match(guard: &str, attr: &str, values: &[String]) -> Expr {
    let mut alts = Vec::new();
    for v in values {
        let net = if v.contains('/') {
            v.parse::<ipnet::IpNet>().ok().map(|n| n.trunc())
        } else {
            v.parse::<IpAddr>().ok().map(ipnet::IpNet::from)
        };
        // Unreachable after validation; an unparsable value must never match.
        let Some(net) = net else { continue };
        alts.push(Expr::atom(format!(
            "{attr}.isInRange(ip({}))",
            string_lit(&crate::attributes::cedar_ip_range(net))
        )));
    }
    Expr::and([Expr::atom(guard), Expr::or(alts)])
}

fn ports(values: &[String]) -> Expr {
    let nums: Vec<String> = values
        .iter()
        .filter_map(|v| v.parse::<u32>().ok())
        .map(|n| n.to_string())
        .collect();
    match nums.len() {
        0 => Expr::False,
        1 => Expr::atom(format!("context.destination.port == {}", nums[0])),
        _ => Expr::atom(format!(
            "[{}].contains(context.destination.port)",
            nums.join(", ")
        )),
    }
}

/// Hosts compare case-insensitively (CVE-2021-39155): both sides lower-cased. The port is not
/// stripped. `*` is Envoy's present match, always true for HTTP.
fn hosts(values: &[String]) -> Expr {
    let lowered: Vec<String> = values.iter().map(|v| v.to_ascii_lowercase()).collect();
    if lowered.iter().any(|v| v == "*") {
        return Expr::atom("context has http");
    }
    Expr::and([
        Expr::atom("context has http"),
        strip_guard(single_valued("true", "context.http.host", &lowered, "")),
    ])
}

fn methods(values: &[String]) -> Expr {
    if values.iter().any(|v| v == "*") {
        return Expr::atom("context has http");
    }
    Expr::and([
        Expr::atom("context has http"),
        strip_guard(single_valued("true", "context.http.method", values, "")),
    ])
}

fn paths(values: &[String]) -> Expr {
    let mut alts = Vec::new();
    let mut plain = Vec::new();
    for v in values {
        if uri_template::is_template(v) {
            alts.push(Expr::atom(format!(
                "context.http.pathTemplates.contains({})",
                string_lit(v)
            )));
        } else {
            plain.push(v.clone());
        }
    }
    if !plain.is_empty() {
        alts.push(strip_guard(single_valued(
            "true",
            "context.http.path",
            &plain,
            "",
        )));
    }
    Expr::and([Expr::atom("context has http"), Expr::or(alts)])
}

/// Drops the `true` guard that `single_valued` puts in front for always-present attributes.
fn strip_guard(e: Expr) -> Expr {
    match e {
        Expr::And(items) => Expr::and(items.into_iter().filter(|i| i != &Expr::atom("true"))),
        e => e,
    }
}

fn compile_peer(
    pa: &Loaded<PeerAuthenticationSpec>,
    mesh: &MeshConfig,
) -> (Option<PeerAuthn>, Vec<Warning>) {
    let key = ResourceKey {
        namespace: pa.namespace.clone(),
        name: pa.name.clone(),
    };
    let has_selector = pa
        .spec
        .selector
        .as_ref()
        .is_some_and(|s| !s.match_labels.is_empty());
    let root = pa.namespace == mesh.root_namespace;
    if root && has_selector {
        // Istio ignores a root-namespace PeerAuthentication with a selector (the code wins over
        // the field comment).
        return (
            None,
            vec![Warning {
                location: Location {
                    file: pa.origin.file.clone(),
                    document: Some(pa.origin.document),
                    line: Some(pa.origin.line),
                    resource: Some(format!("PeerAuthentication {key}")),
                    field: Some("spec.selector".into()),
                },
                message: "a PeerAuthentication with a selector in the root namespace is ignored by Istio; move it to the workload's namespace".into(),
            }],
        );
    }
    let level = match (root, has_selector) {
        (true, _) => PeerLevel::Mesh,
        (false, false) => PeerLevel::Namespace,
        (false, true) => PeerLevel::Workload,
    };
    let scope = Scope::new(
        &pa.namespace,
        &mesh.root_namespace,
        pa.spec.selector.as_ref(),
        None,
        None,
    );
    let port_modes = pa
        .spec
        .port_level_mtls
        .iter()
        .flatten()
        .filter_map(|(k, m)| Some((k.0.parse::<u16>().ok()?, m.mode)))
        .collect();
    (
        Some(PeerAuthn {
            key,
            origin: pa.origin.clone(),
            level,
            scope,
            mode: pa.spec.mtls.as_ref().map(|m| m.mode).unwrap_or_default(),
            port_modes,
            created: pa.meta.creation_timestamp.clone(),
        }),
        Vec::new(),
    )
}

fn compile_request(ra: &Loaded<RequestAuthenticationSpec>, mesh: &MeshConfig) -> RequestAuthn {
    let key = ResourceKey {
        namespace: ra.namespace.clone(),
        name: ra.name.clone(),
    };
    let scope = Scope::new(
        &ra.namespace,
        &mesh.root_namespace,
        ra.spec.selector.as_ref(),
        ra.spec.target_ref.as_ref(),
        ra.spec.target_refs.as_deref(),
    );
    let providers = ra
        .spec
        .jwt_rules
        .iter()
        .enumerate()
        .map(|(i, r)| {
            let mut space = vec!["scope".to_string(), "permission".to_string()];
            for c in &r.space_delimited_claims {
                if !space.contains(c) {
                    space.push(c.clone());
                }
            }
            JwtProvider {
                source: key.clone(),
                rule: i,
                line: ra.item_line(i),
                issuer: r.issuer.clone(),
                audiences: r.audiences.clone(),
                jwks: (!r.jwks.is_empty()).then(|| r.jwks.clone()),
                jwks_uri: (!r.jwks_uri.is_empty()).then(|| r.jwks_uri.clone()),
                fetch_timeout: r
                    .timeout
                    .as_deref()
                    .and_then(crate::validate::parse_duration)
                    .unwrap_or(std::time::Duration::from_secs(5)),
                from_headers: r
                    .from_headers
                    .iter()
                    .map(|h| (h.name.to_ascii_lowercase(), h.prefix.clone()))
                    .collect(),
                from_params: r.from_params.clone(),
                from_cookies: r.from_cookies.clone(),
                output_payload_to_header: (!r.output_payload_to_header.is_empty())
                    .then(|| r.output_payload_to_header.clone()),
                forward_original_token: r.forward_original_token,
                output_claim_to_headers: r
                    .output_claim_to_headers
                    .iter()
                    .map(|c| (c.header.clone(), c.claim.clone()))
                    .collect(),
                space_delimited_claims: space,
            }
        })
        .collect();
    RequestAuthn {
        key,
        origin: ra.origin.clone(),
        scope,
        providers,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    thread_local! {
        /// Policies (by `ns/name`) whose generated Cedar this thread's compiles break: to stand
        /// for a compiler bug, which no valid input is known to trigger.
        static BROKEN: std::cell::RefCell<Vec<(String, Breakage)>> =
            const { std::cell::RefCell::new(Vec::new()) };
    }

    #[derive(Clone, Copy)]
    enum Breakage {
        /// Cedar cannot parse it.
        Parse,
        /// It parses and fails strict validation.
        Validation,
    }

    pub(super) fn broken(key: &ResourceKey, compact: String) -> String {
        let breakage = BROKEN.with(|b| {
            b.borrow()
                .iter()
                .find(|(k, _)| *k == key.to_string())
                .map(|(_, how)| *how)
        });
        match breakage {
            None => compact,
            Some(Breakage::Parse) => compact.replace(" when {", " when { ((( "),
            Some(Breakage::Validation) => {
                compact.replace(" when {", " when { context.noSuchAttribute == 1 && ")
            }
        }
    }

    /// A policy the compiler cannot translate (a meshauthz bug) fails the compile of the CLI,
    /// and in a host's compile is enforced by its fail-closed stand-in, with a warning: a
    /// DENY or CUSTOM denies everything in its scope, an ALLOW allows nothing, an AUDIT is left
    /// out; the other policies compile as they are.
    #[test]
    fn untranslatable_policies_are_contained_in_hosts() {
        let text = r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-broken, namespace: foo}
spec:
  selector: {matchLabels: {app: web}}
  action: DENY
  rules: [{to: [{operation: {paths: ["/admin"]}}]}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: allow-broken, namespace: foo}
spec:
  rules: [{to: [{operation: {methods: ["GET"]}}]}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: audit-broken, namespace: foo}
spec:
  action: AUDIT
  rules: [{to: [{operation: {paths: ["/x"]}}]}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: fine, namespace: foo}
spec:
  action: DENY
  rules: [{to: [{operation: {paths: ["/debug"]}}]}]
"#;
        let mut inputs = Inputs::default();
        assert!(inputs.load_str("p.yaml", text).is_empty());
        let mesh = MeshConfig::default();
        let no_workloads = std::sync::Arc::new(Vec::new());
        for parse in [true, false] {
            let how = if parse {
                Breakage::Parse
            } else {
                Breakage::Validation
            };
            BROKEN.with(|b| {
                *b.borrow_mut() = ["foo/deny-broken", "foo/allow-broken", "foo/audit-broken"]
                    .map(|k| (k.to_string(), how))
                    .to_vec();
            });
            let cli = compile_cached(
                &InputsRef::of(&inputs),
                &mesh,
                &no_workloads,
                &mut CompileCache::default(),
            );
            let errors = cli.expect_err("the CLI reports the bug");
            assert!(errors
                .iter()
                .any(|e| e.to_string().contains("internal error")));

            let host = compile_cached(
                &InputsRef::of(&inputs),
                &mesh,
                &no_workloads,
                &mut CompileCache::for_decisions(),
            )
            .expect("a host compiles the rest");
            let by_name = |name: &str| {
                host.authorization
                    .iter()
                    .find(|ap| ap.key.name == name)
                    .cloned()
            };
            let deny = by_name("deny-broken").expect("a stand-in");
            assert_eq!(deny.action, Action::Deny);
            // In the policy's own scope...
            assert!(
                matches!(&deny.scope, Scope::Selector { labels, .. }
                    if labels.get("app").map(String::as_str) == Some("web")),
                "{:?}",
                deny.scope
            );
            // ... a forbid that reads nothing of the request: it matches every request.
            assert!(!deny.policies.is_empty());
            for p in &deny.policies {
                assert_eq!(p.role, Role::Deny);
                assert_eq!(
                    p.reads,
                    crate::attributes::ContextReads::default(),
                    "{}",
                    p.policy
                );
            }
            let allow = by_name("allow-broken").expect("a stand-in");
            assert_eq!(allow.action, Action::Allow);
            assert!(allow.is_enforced_allow() && allow.policies.is_empty());
            assert!(by_name("audit-broken").is_none());
            let fine = by_name("fine").unwrap();
            assert!(fine
                .policies
                .iter()
                .any(|p| p.policy.to_string().contains("/debug")));
            let warned: Vec<String> = host.warnings.iter().map(ToString::to_string).collect();
            for name in ["deny-broken", "allow-broken"] {
                assert!(
                    warned
                        .iter()
                        .any(|w| w.contains(name) && w.contains("internal error")),
                    "{warned:?}"
                );
            }
        }
        BROKEN.with(|b| b.borrow_mut().clear());
    }

    /// `applies_to` never reaches beyond `namespace()` (the snapshot's namespace index relies
    /// on it).
    #[test]
    fn scopes_apply_only_within_their_namespace() {
        let labels = BTreeMap::from([("app".to_string(), "web".to_string())]);
        let scopes = [
            Scope::Mesh,
            Scope::Namespace("a".into()),
            Scope::Selector {
                namespace: None,
                labels: labels.clone(),
            },
            Scope::Selector {
                namespace: Some("a".into()),
                labels: labels.clone(),
            },
            Scope::Targets {
                namespace: "a".into(),
                targets: vec![Target::Gateway("gw".into()), Target::Service("svc".into())],
            },
        ];
        let workload = |ns: &str| Workload {
            namespace: ns.into(),
            name: "web".into(),
            labels: labels.clone(),
            service_account: "default".into(),
            ips: Vec::new(),
            gateway: Some("gw".into()),
            services: vec!["svc".into()],
        };
        for scope in &scopes {
            for ns in ["a", "b"] {
                let w = workload(ns);
                if scope.applies_to(&w) {
                    assert!(scope.namespace().is_none_or(|s| s == ns), "{scope:?} {ns}");
                }
            }
            // Each scope applies somewhere, so the test is not vacuous.
            assert!(scope.applies_to(&workload("a")), "{scope:?}");
        }
        assert_eq!(scopes.iter().filter(|s| s.namespace().is_none()).count(), 2);
    }

    #[test]
    fn path_index_keys() {
        assert_eq!(path_index_key("/api/v1/items"), "/api/v1");
        assert_eq!(path_index_key("/api/v1"), "/api/v1");
        assert_eq!(path_index_key("/api/"), "/api/");
        assert_eq!(path_index_key("/"), "/");
        let rule = |paths: &[&str]| Rule {
            to: Some(vec![crate::resources::To {
                operation: Some(Operation {
                    paths: paths.iter().map(|p| p.to_string()).collect(),
                    ..Operation::default()
                }),
            }]),
            ..Rule::default()
        };
        assert_eq!(path_first_segment("/api/v1/items"), "/api");
        assert_eq!(path_first_segment("/api"), "/api");
        assert_eq!(path_first_segment("/"), "/");
        let key = |k: &str| PathKey::Key(k.to_string());
        let under = |k: &str| PathKey::Under(k.to_string());
        assert_eq!(
            rule_path_keys(&rule(&["/api/v1/*", "/health"])),
            Some(vec![key("/api/v1"), key("/health")])
        );
        assert_eq!(
            rule_path_keys(&rule(&["/api/v1*"])),
            Some(vec![under("/api")])
        );
        assert_eq!(
            rule_path_keys(&rule(&["/api/*"])),
            Some(vec![under("/api")])
        );
        assert_eq!(rule_path_keys(&rule(&["/api*"])), None);
        assert_eq!(rule_path_keys(&rule(&["*.css"])), None);
        assert_eq!(rule_path_keys(&rule(&["/a/{*}/b"])), None);
        assert_eq!(rule_path_keys(&Rule::default()), None);
    }

    #[test]
    fn trust_domain_alias_expansion() {
        let bundle = vec!["td1".to_string(), "cluster.local".to_string()];
        assert_eq!(
            expand_trust_domain_aliases("cluster.local/ns/foo/sa/x", &bundle),
            vec!["td1/ns/foo/sa/x", "cluster.local/ns/foo/sa/x"]
        );
        assert_eq!(
            expand_trust_domain_aliases("other/ns/foo/sa/x", &bundle),
            vec!["other/ns/foo/sa/x"]
        );
        assert_eq!(
            expand_trust_domain_aliases("*/ns/foo/sa/x", &bundle),
            vec!["*/ns/foo/sa/x"]
        );
        let only = vec!["td1".to_string()];
        assert_eq!(
            expand_trust_domain_aliases("cluster.local/ns/foo/sa/x", &only),
            vec!["td1/ns/foo/sa/x"]
        );
        let star = vec!["old-td".to_string(), "new-td".to_string(), "x".to_string()];
        assert_eq!(
            expand_trust_domain_aliases("*-td/ns/foo/sa/x", &star),
            vec!["*-td/ns/foo/sa/x", "x/ns/foo/sa/x"]
        );
    }
}
