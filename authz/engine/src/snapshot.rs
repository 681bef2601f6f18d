//! `Snapshot`: one immutable, indexed generation of compiled policy. Built off the request path,
//! shared by `Arc`, swapped whole by hosts.
//!
//! State owned: the Cedar entities (one `Mesh::Workload` per workload, labels as tags), the
//! per-workload tables (policy class, PeerAuthentication modes, JWT providers; by position in
//! the compiled workloads, found by key, IP or service account through tables that the next
//! snapshot takes over while the workloads are the same) and the policy classes: workloads with
//! the same applicable AuthorizationPolicies share one set of compiled Cedar policy sets, so
//! thousands of workloads cost a handful of sets.
//!
//! ```text
//! workload "foo/httpbin" --> WorkloadState { class, mtls, jwt providers }
//!                                             |
//!                 classes[class] = { enforced (an EnforcedIndex), observed, observed_deny,
//!                                    custom_deny }
//! ```

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::ops::Range;
use std::str::FromStr;
use std::sync::Arc;

use cedar_policy::{
    Entities, Entity, EntityId, EntityTypeName, EntityUid, Policy, PolicyId, RestrictedExpression,
};
use policy_compiler::attributes::{ContextReads, NameKind, ReadFlags};
use policy_compiler::compile::{
    AuthzPolicy, Form, JwtProvider, PeerAuthn, PeerLevel, Reach, ResourceKey, Role, Scope,
    DEFAULT_ALLOW_ID,
};
use policy_compiler::resources::{Action, MtlsMode};
use policy_compiler::schema::NAMESPACE;
use policy_compiler::{Compiled, Workload};

use crate::eval::PolicyList;
use crate::index::{EnforcedIndex, SetInterner};
use crate::jwt::KeySet;

/// What a snapshot could not be built from.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("cannot build the policy snapshot: {0}")]
pub struct SnapshotError(pub String);

/// Identifies a Cedar policy's origin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyMeta {
    /// The Cedar policy id.
    pub id: String,
    pub key: ResourceKey,
    pub action: Action,
    pub rule: usize,
    pub role: Role,
    /// How a decision lists this policy, prepared once (decisions copy it).
    pub matched: crate::PolicyMatch,
}

/// The Cedar policy sets of one class of workloads.
#[derive(Debug, Clone)]
pub(crate) struct PolicyClass {
    /// Enforced: DENY and unusable-CUSTOM forbids, ALLOW permits, and the Istio default permit
    /// when no enforced ALLOW policy applies, indexed by what each can match.
    pub enforced: EnforcedIndex,
    /// Only the CUSTOM forbids, which Istio evaluates before authentication.
    pub custom_deny: Option<PolicyList>,
    /// Observed permits: AUDIT, dry-run ALLOW, delegated CUSTOM.
    pub observed: Option<PolicyList>,
    /// Observed forbids: dry-run DENY.
    pub observed_deny: Option<PolicyList>,
    /// The applicable policies, in compile order.
    pub applicable: Vec<Arc<AuthzPolicy>>,
    /// The enforced ALLOW policies, as a denial for want of a matching ALLOW lists them.
    pub allow_policies: Vec<crate::PolicyMatch>,
    /// The context attributes these policies read; the rest is not built per request.
    pub needs: ContextNeeds,
    /// Its CUSTOM policies name more than one provider (see [`class_key`]).
    pub conflicting: bool,
    /// Where each Cedar policy of `applicable` comes from, sorted by id. Kept per class (each
    /// entry shared between the classes of one build), so that a class taken over by the next
    /// snapshot brings its own and a one-policy update builds none for the unchanged classes.
    pub meta: Vec<Arc<PolicyMeta>>,
}

impl PolicyClass {
    /// Whether dry-run, AUDIT or delegated CUSTOM rules are evaluated besides the verdict.
    pub fn observes(&self) -> bool {
        self.observed.is_some() || self.observed_deny.is_some()
    }

    /// The key this class was built for: its applicable policies (by address) and `conflicting`.
    pub fn key(&self) -> ClassKey {
        ClassKey {
            policies: self
                .applicable
                .iter()
                .map(|ap| Arc::as_ptr(ap) as usize)
                .collect(),
            conflicting: self.conflicting,
        }
    }

    /// The origin of one of this class's Cedar policies (none for the Istio default permit).
    pub fn policy_meta(&self, id: &str) -> Option<&PolicyMeta> {
        self.meta
            .binary_search_by(|m| m.id.as_str().cmp(id))
            .ok()
            .map(|i| &*self.meta[i])
    }
}

/// Which parts of the Cedar context a set of policies reads. Building the context is a large
/// share of a decision, and most classes read a few attributes only.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct ContextNeeds {
    /// The fixed attributes.
    pub reads: ReadFlags,
    /// Subsets of the vocabulary.
    pub headers: Vec<String>,
    pub templates: Vec<String>,
    pub claims: Vec<(String, Vec<String>)>,
    pub metadata: Vec<(String, (String, String))>,
}

/// The vocabulary's names keyed by how the compiler writes them in policies (as Cedar string
/// literals), built once per snapshot for [`ContextNeeds::of`].
pub(crate) struct VocabularyLiterals<'v> {
    headers: HashMap<String, &'v str>,
    templates: HashMap<String, &'v str>,
    claims: HashMap<String, (&'v str, &'v Vec<String>)>,
    metadata: HashMap<String, (&'v str, &'v (String, String))>,
}

impl<'v> VocabularyLiterals<'v> {
    pub fn new(v: &'v policy_compiler::schema::Vocabulary) -> VocabularyLiterals<'v> {
        use policy_compiler::expr::string_lit;
        VocabularyLiterals {
            headers: v
                .headers
                .iter()
                .map(|h| (string_lit(h), h.as_str()))
                .collect(),
            templates: v
                .templates
                .iter()
                .map(|t| (string_lit(t), t.as_str()))
                .collect(),
            claims: v
                .claims
                .iter()
                .map(|(a, p)| (string_lit(a), (a.as_str(), p)))
                .collect(),
            metadata: v
                .metadata
                .iter()
                .map(|(a, k)| (string_lit(a), (a.as_str(), k)))
                .collect(),
        }
    }
}

impl ContextNeeds {
    /// Everything the vocabulary names (for explanations).
    pub fn all(v: &policy_compiler::schema::Vocabulary) -> ContextNeeds {
        ContextNeeds {
            reads: ReadFlags::ALL,
            headers: v.headers.iter().cloned().collect(),
            templates: v.templates.iter().cloned().collect(),
            claims: v
                .claims
                .iter()
                .map(|(a, p)| (a.clone(), p.clone()))
                .collect(),
            metadata: v
                .metadata
                .iter()
                .map(|(a, k)| (a.clone(), k.clone()))
                .collect(),
        }
    }

    /// What the given policies read (see `policy_compiler::attributes::ContextReads`).
    fn of<'a>(
        reads: impl Iterator<Item = &'a ContextReads>,
        names: &VocabularyLiterals<'_>,
    ) -> ContextNeeds {
        let mut flags = ReadFlags::default();
        let mut literals: Vec<&(NameKind, Box<str>)> = Vec::new();
        for r in reads {
            flags = flags.union(r.flags);
            literals.extend(&r.literals);
        }
        literals.sort_unstable();
        literals.dedup();
        // The vocabulary entries the literals name (vocabularies of large estates have
        // thousands of names, classes a few).
        let named = |kind: NameKind| {
            literals
                .iter()
                .filter(move |(k, _)| *k == kind)
                .map(|(_, literal)| &**literal)
        };
        let mut needs = ContextNeeds {
            reads: flags,
            ..ContextNeeds::default()
        };
        for literal in named(NameKind::Header) {
            if let Some(h) = names.headers.get(literal) {
                needs.headers.push(h.to_string());
            }
        }
        for literal in named(NameKind::Template) {
            if let Some(t) = names.templates.get(literal) {
                needs.templates.push(t.to_string());
            }
        }
        for literal in named(NameKind::Claim) {
            if let Some((a, p)) = names.claims.get(literal) {
                needs.claims.push((a.to_string(), (*p).clone()));
            }
        }
        for literal in named(NameKind::Metadata) {
            if let Some((a, k)) = names.metadata.get(literal) {
                needs.metadata.push((a.to_string(), (*k).clone()));
            }
        }
        needs
    }
}

/// PeerAuthentication applying to one workload, per level (the oldest at each level).
#[derive(Debug, Clone, Default)]
pub(crate) struct PeerMtls {
    pub workload: Option<(ResourceKey, MtlsMode, BTreeMap<u16, MtlsMode>)>,
    pub namespace: Option<(ResourceKey, MtlsMode)>,
    pub mesh: Option<(ResourceKey, MtlsMode)>,
}

impl PeerMtls {
    /// The effective mode on `port` and the PeerAuthentication that set it ("UNSET inherits";
    /// nothing set means PERMISSIVE).
    pub fn mode(&self, port: u16) -> (MtlsMode, Option<&ResourceKey>) {
        if let Some((key, mode, ports)) = &self.workload {
            if let Some(m) = ports.get(&port).filter(|m| **m != MtlsMode::Unset) {
                return (*m, Some(key));
            }
            if *mode != MtlsMode::Unset {
                return (*mode, Some(key));
            }
        }
        for (key, mode) in [&self.namespace, &self.mesh].into_iter().flatten() {
            if *mode != MtlsMode::Unset {
                return (*mode, Some(key));
            }
        }
        (MtlsMode::Permissive, None)
    }
}

/// What a decision needs of its workload, by the workload's position in
/// `compiled.workloads` (rebuilt per snapshot: the class numbers change).
#[derive(Debug, Clone)]
pub(crate) struct WorkloadState {
    pub uid: EntityUid,
    pub class: usize,
    pub mtls: PeerMtls,
    /// JWT providers of every RequestAuthentication selecting the workload, sorted by issuer
    /// (shared between workloads with the same RequestAuthentications).
    pub providers: Arc<Vec<JwtProvider>>,
}

/// What depends on the workloads alone, taken over by the next snapshot while they are the same
/// (`compiled.workloads`, shared by `Arc` while no pod changed).
#[derive(Debug)]
pub(crate) struct WorkloadTables {
    /// Workload key -> position in `compiled.workloads`.
    index: HashMap<String, usize>,
    /// Positions in `compiled.workloads` (so in key order) by IP and by (namespace, service
    /// account).
    by_ip: HashMap<IpAddr, Vec<usize>>,
    by_service_account: HashMap<(String, String), Vec<usize>>,
    /// Each workload's Cedar uid, by position.
    uids: Vec<EntityUid>,
}

impl WorkloadTables {
    fn new(workloads: &[Workload], workload_type: &EntityTypeName) -> WorkloadTables {
        let mut tables = WorkloadTables {
            index: HashMap::with_capacity(workloads.len()),
            by_ip: HashMap::new(),
            by_service_account: HashMap::new(),
            uids: Vec::with_capacity(workloads.len()),
        };
        for (i, w) in workloads.iter().enumerate() {
            let key = w.key();
            tables.uids.push(EntityUid::from_type_name_and_id(
                workload_type.clone(),
                EntityId::new(&key),
            ));
            tables.index.insert(key, i);
            for ip in &w.ips {
                tables.by_ip.entry(*ip).or_default().push(i);
            }
            tables
                .by_service_account
                .entry((w.namespace.clone(), w.service_account.clone()))
                .or_default()
                .push(i);
        }
        for positions in (tables.by_ip.values_mut()).chain(tables.by_service_account.values_mut()) {
            positions.dedup();
        }
        tables
    }
}

/// One generation of compiled, indexed policy.
#[derive(Debug, Clone)]
pub struct Snapshot {
    pub generation: u64,
    pub(crate) compiled: Arc<Compiled>,
    pub(crate) entities: Arc<Entities>,
    /// Parallel to `compiled.workloads`.
    pub(crate) workload_states: Arc<Vec<WorkloadState>>,
    pub(crate) workload_tables: Arc<WorkloadTables>,
    pub(crate) classes: Arc<Vec<Arc<PolicyClass>>>,
    /// Each class by its key, so that the next snapshot can take over the classes whose
    /// policies did not change (see [`Snapshot::build_reusing`]).
    pub(crate) class_keys: Arc<HashMap<ClassKey, usize>>,
    /// Keys of inline `jwks`, by provider (source key, rule index).
    pub(crate) inline_keys: Arc<HashMap<(ResourceKey, usize), Arc<KeySet>>>,
    /// Keys fetched from `jwksUri` by the host, by URI. Replaced with [`Snapshot::with_remote_keys`].
    pub(crate) remote_keys: Arc<HashMap<String, Arc<KeySet>>>,
    pub(crate) action: EntityUid,
    pub(crate) peer_type: EntityTypeName,
}

fn type_name(name: &str) -> Result<EntityTypeName, SnapshotError> {
    EntityTypeName::from_str(&format!("{NAMESPACE}::{name}"))
        .map_err(|e| SnapshotError(format!("bad entity type `{name}`: {e}")))
}

impl Snapshot {
    /// Indexes a compiled policy set. `generation` is chosen by the host (monotonic).
    pub fn build(compiled: Compiled, generation: u64) -> Result<Snapshot, SnapshotError> {
        Snapshot::build_reusing(compiled, generation, None)
    }

    /// [`Snapshot::build`], taking over from `previous` every policy class whose applicable
    /// policies are the very same compiled policies (the compile cache hands out the same
    /// `Arc` for an unchanged resource under unchanged mesh settings), instead of building its
    /// policy sets again. The result is the same as without `previous`.
    pub fn build_reusing(
        compiled: Compiled,
        generation: u64,
        previous: Option<&Snapshot>,
    ) -> Result<Snapshot, SnapshotError> {
        let workload_type = type_name("Workload")?;
        let namespace_type = type_name("Namespace")?;
        let action = EntityUid::from_str(&format!("{NAMESPACE}::Action::\"check\""))
            .map_err(|e| SnapshotError(format!("bad action: {e}")))?;
        let default_allow = Policy::parse(
            Some(PolicyId::new(DEFAULT_ALLOW_ID)),
            "@note(\"Istio: if there are no ALLOW policies for the workload, allow the request\")\npermit (principal, action, resource);",
        )
        .map_err(|e| SnapshotError(e.to_string()))?;

        // The origins of the policies of the classes built here, once per compiled policy.
        let mut metas: HashMap<usize, Vec<Arc<PolicyMeta>>> = HashMap::new();
        let mut sets = SetInterner::default();

        // Entities: namespaces and workloads; the previous snapshot's when neither the
        // workloads nor the schema they are checked against changed (a policy change).
        // Whether `previous` has the same workloads, most often the very same `Arc` (no pod
        // changed); then a workload's position names the same workload in both.
        let same_positions = previous.is_some_and(|p| {
            Arc::ptr_eq(&p.compiled.workloads, &compiled.workloads)
                || p.compiled.workloads == compiled.workloads
        });
        let same_workloads = previous.filter(|_| same_positions);
        let unchanged_entities = same_workloads
            .filter(|p| p.compiled.schema_text == compiled.schema_text)
            .map(|p| p.entities.clone());
        let tables = match same_workloads {
            Some(p) => p.workload_tables.clone(),
            None => Arc::new(WorkloadTables::new(&compiled.workloads, &workload_type)),
        };
        let mut entities = Vec::new();
        if unchanged_entities.is_none() {
            let mut namespaces: Vec<&str> = compiled
                .workloads
                .iter()
                .map(|w| w.namespace.as_str())
                .collect();
            namespaces.sort_unstable();
            namespaces.dedup();
            for ns in &namespaces {
                let uid =
                    EntityUid::from_type_name_and_id(namespace_type.clone(), EntityId::new(*ns));
                entities.push(Entity::new_no_attrs(uid, Default::default()));
            }
        }

        // Which resources can apply to a workload of a namespace: its namespace's and the
        // mesh-wide ones (every workload tested against every policy is 10^7 tests at 10,000
        // policies and 1,000 workloads).
        let root = compiled.mesh.root_namespace.as_str();
        let workload_namespaces = || compiled.workloads.iter().map(|w| w.namespace.as_str());
        let authz_by_namespace = ByNamespace::new(
            &compiled.authorization,
            |ap: &Arc<AuthzPolicy>| (&ap.key, &ap.scope),
            root,
            workload_namespaces(),
        );
        let request_by_namespace = ByNamespace::new(
            &compiled.request,
            |ra: &policy_compiler::compile::RequestAuthn| (&ra.key, &ra.scope),
            root,
            workload_namespaces(),
        );
        // A workload keeps its previous class key when neither it nor any policy that may
        // apply to it changed: the same candidate policies (the same `Arc`s, compared by
        // address, without reading them) and the same workload. Deciding this per namespace
        // spares a one-policy change the test of every policy's scope against every workload.
        let previous_by_namespace = previous
            .filter(|p| p.compiled.mesh.root_namespace == root)
            .map(|p| {
                let by_namespace = ByNamespace::new(
                    &p.compiled.authorization,
                    |ap: &Arc<AuthzPolicy>| (&ap.key, &ap.scope),
                    root,
                    workload_namespaces(),
                );
                (p, by_namespace)
            });
        let mut unchanged_namespaces: HashMap<String, bool> = HashMap::new();
        let mut unchanged_namespace = |ns: &str| -> bool {
            let Some((p, before)) = &previous_by_namespace else {
                return false;
            };
            if let Some(known) = unchanged_namespaces.get(ns) {
                return *known;
            }
            let same = |now: Range<usize>, then: Range<usize>| {
                let (now, then) = (
                    &compiled.authorization[now],
                    &p.compiled.authorization[then],
                );
                now.len() == then.len() && now.iter().zip(then).all(|(a, b)| Arc::ptr_eq(a, b))
            };
            let (own_now, root_now) = authz_by_namespace.ranges(ns);
            let (own_then, root_then) = before.ranges(ns);
            let unchanged = same(own_now, own_then) && same(root_now, root_then);
            unchanged_namespaces.insert(ns.to_string(), unchanged);
            unchanged
        };
        let names = VocabularyLiterals::new(&compiled.vocabulary);
        let mut classes: Vec<Arc<PolicyClass>> = Vec::new();
        let mut class_index: HashMap<ClassKey, usize> = HashMap::new();
        let mut states = Vec::with_capacity(compiled.workloads.len());
        let mut provider_lists: HashMap<Vec<usize>, Arc<Vec<JwtProvider>>> = HashMap::new();
        for (position, w) in compiled.workloads.iter().enumerate() {
            let uid = tables.uids[position].clone();
            if unchanged_entities.is_none() {
                entities.push(workload_entity(w, uid.clone(), &namespace_type)?);
            }

            let kept_key = previous
                .filter(|_| unchanged_namespace(&w.namespace))
                .and_then(|p| {
                    let before = if same_positions {
                        position
                    } else {
                        let before = *p.workload_tables.index.get(&w.key())?;
                        (p.compiled.workloads.get(before)? == w).then_some(before)?
                    };
                    let class = p.workload_states.get(before)?.class;
                    p.classes.get(class).map(|c| c.key())
                });
            let (key, applicable) = match kept_key {
                Some(key) => (key, Vec::new()),
                None => {
                    let applicable: Vec<usize> = authz_by_namespace
                        .candidates(&w.namespace)
                        .filter(|i| compiled.authorization[*i].scope.applies_to(w))
                        .collect();
                    (class_key(&compiled.authorization, &applicable), applicable)
                }
            };
            let class = match class_index.get(&key) {
                Some(c) => *c,
                None => {
                    let reused = previous.and_then(|p| {
                        p.class_keys
                            .get(&key)
                            .and_then(|c| p.classes.get(*c))
                            .cloned()
                    });
                    let class = match reused {
                        Some(class) => class,
                        None => {
                            // A kept key always names a class of the previous snapshot, so
                            // `applicable` is known here.
                            let members: Vec<Arc<AuthzPolicy>> = applicable
                                .iter()
                                .map(|i| compiled.authorization[*i].clone())
                                .collect();
                            Arc::new(build_class(
                                members,
                                key.conflicting,
                                &default_allow,
                                &names,
                                &mut metas,
                                &mut sets,
                            )?)
                        }
                    };
                    classes.push(class);
                    class_index.insert(key, classes.len() - 1);
                    classes.len() - 1
                }
            };
            let ras: Vec<usize> = request_by_namespace
                .candidates(&w.namespace)
                .filter(|i| compiled.request[*i].scope.applies_to(w))
                .collect();
            let jwt = provider_lists
                .entry(ras)
                .or_insert_with_key(|ras| {
                    let mut list: Vec<JwtProvider> = ras
                        .iter()
                        .filter_map(|i| compiled.request.get(*i))
                        .flat_map(|ra| ra.providers.iter().cloned())
                        .collect();
                    list.sort_by(|a, b| {
                        a.issuer
                            .cmp(&b.issuer)
                            .then(a.source.cmp(&b.source))
                            .then(a.rule.cmp(&b.rule))
                    });
                    Arc::new(list)
                })
                .clone();
            states.push(WorkloadState {
                uid,
                class,
                mtls: peer_mtls(&compiled.peer, w),
                providers: jwt,
            });
        }
        let entities = match unchanged_entities {
            Some(entities) => entities,
            None => Arc::new(
                Entities::from_entities(entities, Some(&compiled.schema))
                    .map_err(|e| SnapshotError(format!("entities: {e}")))?,
            ),
        };

        let mut inline_keys = HashMap::new();
        for ra in &compiled.request {
            for p in &ra.providers {
                if let Some(jwks) = &p.jwks {
                    // Validation already parsed it; without keys that issuer's tokens fail (401),
                    // as with Istio's PublicOnlyJwks.
                    if let Ok(set) = KeySet::parse(jwks) {
                        inline_keys.insert((p.source.clone(), p.rule), Arc::new(set));
                    }
                }
            }
        }

        Ok(Snapshot {
            generation,
            compiled: Arc::new(compiled),
            entities,
            workload_states: Arc::new(states),
            workload_tables: tables,
            classes: Arc::new(classes),
            class_keys: Arc::new(class_index),
            inline_keys: Arc::new(inline_keys),
            remote_keys: Arc::new(HashMap::new()),
            action,
            peer_type: type_name("Peer")?,
        })
    }

    /// The same snapshot with other `jwksUri` keys: cheap (every table is shared), so a host can
    /// publish fresh keys without recompiling policy.
    pub fn with_remote_keys(&self, keys: HashMap<String, Arc<KeySet>>) -> Snapshot {
        Snapshot {
            remote_keys: Arc::new(keys),
            ..self.clone()
        }
    }

    pub fn compiled(&self) -> &Compiled {
        &self.compiled
    }

    /// The Cedar entities (workloads with their labels as tags, namespaces).
    pub fn entities(&self) -> &Entities {
        &self.entities
    }

    /// Every `jwksUri` the policies name, with the fetch timeout Istio would use.
    pub fn jwks_uris(&self) -> Vec<(String, std::time::Duration)> {
        let mut out: Vec<(String, std::time::Duration)> = Vec::new();
        for p in self.compiled.request.iter().flat_map(|r| &r.providers) {
            if let Some(uri) = &p.jwks_uri {
                if !out.iter().any(|(u, _)| u == uri) {
                    out.push((uri.clone(), p.fetch_timeout));
                }
            }
        }
        out
    }

    pub fn workload(&self, key: &str) -> Option<&Workload> {
        let position = *self.workload_tables.index.get(key)?;
        self.compiled.workloads.get(position)
    }

    /// What a decision needs of workload `key`.
    pub(crate) fn state(&self, key: &str) -> Option<&WorkloadState> {
        let position = *self.workload_tables.index.get(key)?;
        self.workload_states.get(position)
    }

    /// Workloads whose `ips` include `ip` (the ext_authz destination lookup), sorted by key.
    pub fn workloads_by_ip(&self, ip: IpAddr) -> Vec<&Workload> {
        self.lookup(self.workload_tables.by_ip.get(&ip))
    }

    /// Workloads in `namespace` running as `service_account` (the destination-principal
    /// lookup), sorted by key.
    pub fn workloads_by_service_account(
        &self,
        namespace: &str,
        service_account: &str,
    ) -> Vec<&Workload> {
        self.lookup(
            self.workload_tables
                .by_service_account
                .get(&(namespace.to_string(), service_account.to_string())),
        )
    }

    fn lookup(&self, positions: Option<&Vec<usize>>) -> Vec<&Workload> {
        positions
            .into_iter()
            .flatten()
            .filter_map(|i| self.compiled.workloads.get(*i))
            .collect()
    }

    /// The `jwksUri`s of the RequestAuthentications that select `workload`.
    pub fn jwks_uris_for(&self, workload: &str) -> Vec<String> {
        let mut uris: Vec<String> = self
            .state(workload)
            .into_iter()
            .flat_map(|w| w.providers.iter().filter_map(|p| p.jwks_uri.clone()))
            .collect();
        uris.sort();
        uris.dedup();
        uris
    }

    /// Number of distinct policy classes (for metrics and benchmarks).
    pub fn class_count(&self) -> usize {
        self.classes.len()
    }

    pub(crate) fn keys_for(&self, p: &JwtProvider) -> Option<Arc<KeySet>> {
        if p.jwks.is_some() {
            return self.inline_keys.get(&(p.source.clone(), p.rule)).cloned();
        }
        p.jwks_uri
            .as_ref()
            .and_then(|u| self.remote_keys.get(u).cloned())
    }
}

/// Resource indices by the namespace their scope is limited to (see [`Scope::namespace`]): a
/// resource applies to workloads of its own namespace only, or, in the root namespace, to every
/// namespace. The compiler sorts resources by `namespace/name`, so each namespace's resources
/// are one range, found by binary search: a snapshot build does not read every resource.
struct ByNamespace<'a> {
    /// The root namespace's resources: candidates everywhere.
    root: Range<usize>,
    /// The range of each namespace that has workloads.
    ranges: HashMap<&'a str, Range<usize>>,
}

impl<'a> ByNamespace<'a> {
    fn new<T>(
        resources: &'a [T],
        identity: impl Fn(&T) -> (&ResourceKey, &Scope),
        root: &'a str,
        namespaces: impl Iterator<Item = &'a str>,
    ) -> ByNamespace<'a> {
        debug_assert!(
            resources
                .windows(2)
                .all(|w| identity(&w[0]).0 <= identity(&w[1]).0),
            "resources sorted by namespace/name"
        );
        debug_assert!(resources.iter().all(|r| {
            let (key, scope) = identity(r);
            match scope.namespace() {
                None => key.namespace == root,
                Some(ns) => ns == key.namespace,
            }
        }));
        let range_of = |ns: &str| {
            let start = resources.partition_point(|r| identity(r).0.namespace.as_str() < ns);
            let end = resources.partition_point(|r| identity(r).0.namespace.as_str() <= ns);
            start..end
        };
        let mut ranges = HashMap::new();
        for ns in namespaces {
            ranges.entry(ns).or_insert_with(|| range_of(ns));
        }
        ByNamespace {
            root: range_of(root),
            ranges,
        }
    }

    /// The resources of `namespace` (empty for the root namespace) and of the root namespace.
    fn ranges(&self, namespace: &str) -> (Range<usize>, Range<usize>) {
        let own = self
            .ranges
            .get(namespace)
            .filter(|r| **r != self.root)
            .cloned()
            .unwrap_or_default();
        (own, self.root.clone())
    }

    /// The indices that may apply to a workload of `namespace`, ascending (as the resources
    /// are ordered, so that equal sets give equal class keys).
    fn candidates(&self, namespace: &str) -> impl Iterator<Item = usize> {
        let (own, _) = self.ranges(namespace);
        let (first, second) = if own.start < self.root.start {
            (own, self.root.clone())
        } else {
            (self.root.clone(), own)
        };
        first.chain(second)
    }
}

/// The key of the class of `applicable` (indices into `authorization`, ascending).
fn class_key(authorization: &[Arc<AuthzPolicy>], applicable: &[usize]) -> ClassKey {
    // "At most one provider per workload": with CUSTOM policies naming two providers, Istio
    // denies every request matching any CUSTOM rule.
    let mut providers: Vec<&str> = applicable
        .iter()
        .filter_map(|i| authorization[*i].provider.as_ref().map(|p| p.0.as_str()))
        .collect();
    providers.sort_unstable();
    providers.dedup();
    ClassKey {
        policies: applicable
            .iter()
            .map(|i| Arc::as_ptr(&authorization[*i]) as usize)
            .collect(),
        conflicting: providers.len() > 1,
    }
}

/// A policy class's identity: its applicable compiled policies (by address: each is an
/// immutable `Arc` that the class itself keeps alive, so an address cannot be reused for another
/// policy while a snapshot holding the key exists) and whether CUSTOM providers conflict.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct ClassKey {
    policies: Vec<usize>,
    conflicting: bool,
}

fn build_class(
    applicable: Vec<Arc<AuthzPolicy>>,
    conflicting: bool,
    default_allow: &Policy,
    names: &VocabularyLiterals<'_>,
    metas: &mut HashMap<usize, Vec<Arc<PolicyMeta>>>,
    sets: &mut SetInterner,
) -> Result<PolicyClass, SnapshotError> {
    let mut enforced: Vec<(&Policy, &Reach)> = Vec::new();
    let mut custom_deny: Vec<&Policy> = Vec::new();
    let mut observed: Vec<&Policy> = Vec::new();
    let mut observed_deny: Vec<&Policy> = Vec::new();
    let mut has_enforced_allow = false;
    for ap in &applicable {
        has_enforced_allow |= ap.is_enforced_allow();
        let usable_provider = matches!(ap.provider, Some((_, Some(_)))) && !conflicting;
        for p in &ap.policies {
            match p.role {
                Role::Allow | Role::Deny => enforced.push((&p.policy, &p.reach)),
                Role::CustomDeny if !usable_provider => {
                    enforced.push((&p.policy, &p.reach));
                    custom_deny.push(&p.policy);
                }
                Role::CustomDeny => {}
                Role::CustomDelegate if usable_provider => observed.push(&p.policy),
                Role::CustomDelegate => {}
                Role::Audit | Role::DryRunAllow => observed.push(&p.policy),
                Role::DryRunDeny => observed_deny.push(&p.policy),
            }
        }
    }
    // "If there are no ALLOW policies for the workload, allow the request." An ALLOW policy
    // whose rules were all dropped still counts, so it denies everything.
    let everything = Reach {
        form: Form::Any,
        ports: None,
        paths: None,
    };
    if !has_enforced_allow {
        enforced.push((default_allow, &everything));
    }
    let enforced = EnforcedIndex::build(enforced, sets);
    let reads = applicable
        .iter()
        .flat_map(|ap| ap.policies.iter().map(|p| &p.reads));
    let needs = ContextNeeds::of(reads, names);
    let non_empty = |s: Vec<&Policy>| (!s.is_empty()).then(|| PolicyList::new(s));
    let allow_policies = applicable
        .iter()
        .filter(|ap| ap.is_enforced_allow())
        .map(|ap| crate::PolicyMatch {
            policy: ap.key.to_string(),
            kind: "AuthorizationPolicy",
            action: Some("ALLOW"),
            rule: None,
            cedar_id: None,
        })
        .collect();
    let mut meta = Vec::new();
    for ap in &applicable {
        let of_policy = metas
            .entry(Arc::as_ptr(ap) as usize)
            .or_insert_with(|| metas_of(ap));
        meta.extend(of_policy.iter().cloned());
    }
    meta.sort_unstable_by(|a, b| a.id.cmp(&b.id));
    Ok(PolicyClass {
        conflicting,
        meta,
        allow_policies,
        needs,
        enforced,
        custom_deny: non_empty(custom_deny),
        observed: non_empty(observed),
        observed_deny: non_empty(observed_deny),
        applicable,
    })
}

/// A workload as a Cedar entity: a child of its namespace, its labels as tags.
fn workload_entity(
    w: &Workload,
    uid: EntityUid,
    namespace_type: &EntityTypeName,
) -> Result<Entity, SnapshotError> {
    let parent =
        EntityUid::from_type_name_and_id(namespace_type.clone(), EntityId::new(&w.namespace));
    let mut attrs = vec![
        (
            "namespace".to_string(),
            RestrictedExpression::new_string(w.namespace.clone()),
        ),
        (
            "name".to_string(),
            RestrictedExpression::new_string(w.name.clone()),
        ),
        (
            "serviceAccount".to_string(),
            RestrictedExpression::new_string(w.service_account.clone()),
        ),
        (
            "services".to_string(),
            RestrictedExpression::new_set(
                w.services
                    .iter()
                    .map(|s| RestrictedExpression::new_string(s.clone())),
            ),
        ),
    ];
    if let Some(g) = &w.gateway {
        attrs.push((
            "gateway".to_string(),
            RestrictedExpression::new_string(g.clone()),
        ));
    }
    let tags = w
        .labels
        .iter()
        .map(|(k, v)| (k.clone(), RestrictedExpression::new_string(v.clone())));
    Entity::new_with_tags(uid, attrs, [parent], tags)
        .map_err(|e| SnapshotError(format!("workload `{}`: {e}", w.key())))
}

/// How decisions name each Cedar policy of `ap`.
fn metas_of(ap: &AuthzPolicy) -> Vec<Arc<PolicyMeta>> {
    let policy = ap.key.to_string();
    ap.policies
        .iter()
        .map(|p| {
            Arc::new(PolicyMeta {
                id: p.id.clone(),
                key: ap.key.clone(),
                action: ap.action,
                rule: p.rule,
                role: p.role,
                matched: crate::PolicyMatch {
                    policy: policy.clone(),
                    kind: "AuthorizationPolicy",
                    action: Some(ap.action.as_str()),
                    rule: Some(p.rule),
                    cedar_id: Some(p.id.clone()),
                },
            })
        })
        .collect()
}

/// Picks the PeerAuthentication of each level for `w`: "the oldest (creationTimestamp) wins"
/// within a level; a missing timestamp sorts after every real one, then by namespace/name.
fn peer_mtls(all: &[PeerAuthn], w: &Workload) -> PeerMtls {
    let pick = |level: PeerLevel| {
        all.iter()
            .filter(|p| p.level == level && p.scope.applies_to(w))
            .min_by(|a, b| {
                let ta = a.created.as_deref().unwrap_or("\u{10FFFF}");
                let tb = b.created.as_deref().unwrap_or("\u{10FFFF}");
                ta.cmp(tb).then(a.key.cmp(&b.key))
            })
    };
    PeerMtls {
        workload: pick(PeerLevel::Workload).map(|p| (p.key.clone(), p.mode, p.port_modes.clone())),
        namespace: pick(PeerLevel::Namespace).map(|p| (p.key.clone(), p.mode)),
        mesh: pick(PeerLevel::Mesh).map(|p| (p.key.clone(), p.mode)),
    }
}

#[cfg(test)]
mod reuse_tests {
    #![allow(clippy::unwrap_used, reason = "test code")]

    use super::*;
    use crate::{decide, Protocol, RequestAttrs};
    use policy_compiler::compile::{compile_cached, CompileCache, InputsRef};
    use policy_compiler::{Inputs, MeshConfig};

    fn policies(foo_path: &str) -> String {
        format!(
            "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {{name: foo-a, namespace: foo}}\nspec:\n  selector: {{matchLabels: {{app: a}}}}\n  rules:\n  - to: [{{operation: {{paths: [\"{foo_path}\"]}}}}]\n---\napiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {{name: bar-deny, namespace: bar}}\nspec:\n  action: DENY\n  rules:\n  - to: [{{operation: {{paths: [\"/admin/*\"], ports: [\"8080\"]}}}}]\n---\napiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {{name: mesh-deny, namespace: istio-system}}\nspec:\n  action: DENY\n  rules:\n  - to: [{{operation: {{paths: [\"/debug\"]}}}}]\n"
        )
    }

    fn workloads() -> Vec<Workload> {
        [("foo", "a"), ("foo", "b"), ("bar", "a"), ("bar", "b")]
            .iter()
            .map(|(ns, app)| Workload {
                namespace: ns.to_string(),
                name: app.to_string(),
                labels: [("app".to_string(), app.to_string())].into(),
                service_account: "default".into(),
                ips: Vec::new(),
                gateway: None,
                services: Vec::new(),
            })
            .collect()
    }

    /// Compiled with a list of workloads of its own (not in key order: the compiler sorts a
    /// copy).
    fn compiled(text: &str, cache: &mut CompileCache) -> Compiled {
        compiled_for(text, &Arc::new(workloads()), cache)
    }

    fn compiled_for(
        text: &str,
        workloads: &Arc<Vec<Workload>>,
        cache: &mut CompileCache,
    ) -> Compiled {
        let mut inputs = Inputs::default();
        assert!(inputs.load_str("p.yaml", text).is_empty());
        compile_cached(
            &InputsRef::of(&inputs),
            &MeshConfig::default(),
            workloads,
            cache,
        )
        .unwrap()
    }

    /// A change of a mesh-wide policy reaches every workload, although their namespaces'
    /// policies are unchanged.
    #[test]
    fn a_mesh_wide_change_reaches_every_class() {
        let mut cache = CompileCache::default();
        let first = Snapshot::build(compiled(&policies("/v1/*"), &mut cache), 1).unwrap();
        let changed = policies("/v1/*").replace("\"/debug\"", "\"/trace\"");
        let next =
            Snapshot::build_reusing(compiled(&changed, &mut cache), 2, Some(&first)).unwrap();
        for w in ["foo/a", "foo/b", "bar/a", "bar/b"] {
            let req = |path: &str| RequestAttrs {
                workload: w.into(),
                destination_port: 8080,
                method: "GET".into(),
                path: path.into(),
                ..RequestAttrs::default()
            };
            assert_eq!(
                decide(&first, &req("/debug")).verdict,
                crate::Verdict::Deny,
                "{w}"
            );
            assert_eq!(
                decide(&next, &req("/trace")).verdict,
                crate::Verdict::Deny,
                "{w}"
            );
            assert_ne!(
                decide(&next, &req("/debug")).reason,
                crate::Reason::DenyMatched,
                "{w}"
            );
        }
    }

    /// The entities as a sorted list of JSON texts (their order in Cedar's JSON is not fixed).
    fn entity_texts(s: &Snapshot) -> Vec<String> {
        let value = s.entities().to_json_value().unwrap();
        let mut texts: Vec<String> = value
            .as_array()
            .unwrap()
            .iter()
            .map(ToString::to_string)
            .collect();
        texts.sort();
        texts
    }

    /// A policy change keeps the previous entities; a workload change rebuilds them.
    #[test]
    fn entities_are_taken_over_only_while_the_workloads_are_unchanged() {
        let mut cache = CompileCache::default();
        let first = Snapshot::build(compiled(&policies("/v1/*"), &mut cache), 1).unwrap();
        let policy_change = compiled(&policies("/v2/*"), &mut cache);
        let second = Snapshot::build_reusing(policy_change, 2, Some(&first)).unwrap();
        assert!(Arc::ptr_eq(&first.entities, &second.entities));

        // foo/b is relabelled and a workload appears: foo/b now gets foo-a's ALLOW.
        let mut changed = workloads();
        changed[1].labels = [("app".to_string(), "a".to_string())].into();
        changed.push(Workload {
            name: "c".into(),
            ..changed[0].clone()
        });
        let workload_change = compiled_for(&policies("/v2/*"), &Arc::new(changed), &mut cache);
        let fresh = Snapshot::build(workload_change.clone(), 3).unwrap();
        let third = Snapshot::build_reusing(workload_change, 3, Some(&second)).unwrap();
        assert!(!Arc::ptr_eq(&second.entities, &third.entities));
        assert_eq!(entity_texts(&third), entity_texts(&fresh));
        assert!(entity_texts(&third).iter().any(|e| e.contains("\"foo/c\"")));
        let req = RequestAttrs {
            workload: "foo/b".into(),
            destination_port: 8080,
            method: "GET".into(),
            path: "/v1/x".into(),
            ..RequestAttrs::default()
        };
        assert_eq!(decide(&third, &req).verdict, crate::Verdict::Deny);
    }

    /// A snapshot built over the previous one takes over the classes of unchanged policies,
    /// rebuilds the changed one, and decides exactly as a snapshot built from scratch.
    #[test]
    fn unchanged_classes_are_taken_over_and_decide_the_same() {
        let mut cache = CompileCache::default();
        let first = Snapshot::build(compiled(&policies("/v1/*"), &mut cache), 1).unwrap();
        let next = compiled(&policies("/v2/*"), &mut cache);
        let fresh = Snapshot::build(next.clone(), 2).unwrap();
        let reused = Snapshot::build_reusing(next, 2, Some(&first)).unwrap();

        let class_of = |s: &Snapshot, w: &str| s.classes[s.state(w).unwrap().class].clone();
        for w in ["foo/b", "bar/a", "bar/b"] {
            assert!(
                Arc::ptr_eq(&class_of(&first, w), &class_of(&reused, w)),
                "{w} kept its class"
            );
        }
        assert!(!Arc::ptr_eq(
            &class_of(&first, "foo/a"),
            &class_of(&reused, "foo/a")
        ));

        assert_decide_alike(&reused, &fresh, &["foo/a", "foo/b", "bar/a", "bar/b"]);
        // The change itself is enforced.
        let req = |path: &str| RequestAttrs {
            workload: "foo/a".into(),
            destination_port: 8080,
            method: "GET".into(),
            path: path.into(),
            ..RequestAttrs::default()
        };
        assert_eq!(
            decide(&reused, &req("/v2/x")).verdict,
            crate::Verdict::Allow
        );
        assert_eq!(decide(&reused, &req("/v1/x")).verdict, crate::Verdict::Deny);
    }

    /// The same decisions (verdict, reason, determining policies) for a matrix of requests to
    /// each of `workloads`.
    fn assert_decide_alike(reused: &Snapshot, fresh: &Snapshot, workloads: &[&str]) {
        for w in workloads {
            for path in ["/v1/x", "/v2/x", "/admin/x", "/debug", "/"] {
                for port in [8080, 9090] {
                    for protocol in [Protocol::Http, Protocol::Tcp] {
                        let req = RequestAttrs {
                            workload: (*w).into(),
                            protocol,
                            destination_port: port,
                            method: "GET".into(),
                            path: path.into(),
                            ..RequestAttrs::default()
                        };
                        let (a, b) = (decide(reused, &req), decide(fresh, &req));
                        assert_eq!(
                            (a.verdict, &a.reason, &a.determining),
                            (b.verdict, &b.reason, &b.determining),
                            "{w} {protocol:?} {port} {path}"
                        );
                    }
                }
            }
        }
    }

    /// While no pod changes, the compiled workloads are the caller's very list and the
    /// snapshot's workload tables are taken over; when one is added in front of the others,
    /// the previous snapshot is read by key, not by position.
    #[test]
    fn shared_workloads_keep_their_tables_and_shifted_ones_are_found_by_key() {
        let mut cache = CompileCache::default();
        let mut list = workloads();
        list[0].ips = vec!["10.0.0.1".parse().unwrap()];
        list.sort_by(Workload::key_cmp);
        let shared = Arc::new(list.clone());
        let first =
            Snapshot::build(compiled_for(&policies("/v1/*"), &shared, &mut cache), 1).unwrap();
        assert!(Arc::ptr_eq(&first.compiled.workloads, &shared));
        let next = compiled_for(&policies("/v2/*"), &shared, &mut cache);
        let fresh = Snapshot::build(next.clone(), 2).unwrap();
        let second = Snapshot::build_reusing(next, 2, Some(&first)).unwrap();
        assert!(Arc::ptr_eq(&first.workload_tables, &second.workload_tables));
        let all = ["foo/a", "foo/b", "bar/a", "bar/b"];
        assert_decide_alike(&second, &fresh, &all);

        // `bar/0` sorts before every other workload: each of them moves one position on.
        list.insert(
            0,
            Workload {
                name: "0".into(),
                ips: vec!["10.0.0.9".parse().unwrap()],
                ..list[0].clone()
            },
        );
        let moved = compiled_for(&policies("/v2/*"), &Arc::new(list), &mut cache);
        let fresh = Snapshot::build(moved.clone(), 3).unwrap();
        let third = Snapshot::build_reusing(moved, 3, Some(&second)).unwrap();
        assert!(!Arc::ptr_eq(
            &second.workload_tables,
            &third.workload_tables
        ));
        assert_decide_alike(
            &third,
            &fresh,
            &["bar/0", "foo/a", "foo/b", "bar/a", "bar/b"],
        );
        let by_ip = |s: &Snapshot, ip: &str| -> Vec<String> {
            s.workloads_by_ip(ip.parse().unwrap())
                .iter()
                .map(|w| w.key())
                .collect()
        };
        assert_eq!(by_ip(&third, "10.0.0.1"), ["foo/a"]);
        assert_eq!(by_ip(&third, "10.0.0.9"), ["bar/0"]);
        assert_eq!(
            third.workload("bar/a").map(Workload::key).as_deref(),
            Some("bar/a")
        );
    }
}
