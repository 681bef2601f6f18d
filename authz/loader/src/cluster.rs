//! The cluster's policy state as Kubernetes watch events describe it: a pure state machine (no
//! I/O, no clock) that the Kubernetes host feeds and the compiler reads.
//!
//! State owned: [`ClusterState`], every AuthorizationPolicy, PeerAuthentication and
//! RequestAuthentication object (already parsed and validated, or rejected with its errors and
//! its fail-closed stand-in), every Pod (what its [`Workload`] reads: labels, service account,
//! IPs, controller), and the mesh settings. Pods of one controller become one workload.
//!
//! ```text
//!  watch events --apply / delete / reset--> ClusterState --inputs()--> policy_compiler::compile
//! ```
//!
//! Each object is parsed and validated once, when it arrives, with the same loader as the CLI
//! and the admission webhook, so a rebuild only compiles. One invalid object never affects the
//! others; what stands in for it is chosen so that a broken object never opens access:
//!
//! | invalid object                       | enforced instead, in the same scope (*)          |
//! |--------------------------------------|--------------------------------------------------|
//! | AuthorizationPolicy DENY / CUSTOM    | DENY every request (`rules: [{}]`)               |
//! | AuthorizationPolicy ALLOW            | an ALLOW policy with no rules (allows nothing,   |
//! |                                      | and withholds the "no ALLOW policy" default)     |
//! | AuthorizationPolicy AUDIT or dry-run | nothing (neither ever changes a decision)        |
//! | PeerAuthentication                   | mTLS STRICT                                      |
//! | RequestAuthentication                | nothing: tokens of its issuers are then rejected |
//! |                                      | as unknown (401), requests without one are not   |
//! |                                      | authenticated, so no rule that needs one matches |
//!
//! (*) The object's namespace with its `selector` / `targetRef(s)` when those are valid on their
//! own; otherwise the whole namespace (wider, so still closed). An action that cannot be read
//! counts as DENY.

use std::collections::BTreeMap;
use std::fmt;

use authz_engine::Snapshot;
use policy_compiler::compile::{CompileCache, InputsRef};
use policy_compiler::load::workload_from_manifest;
use policy_compiler::{Inputs, LoadError, MeshConfig, PathNormalization, Workload};
use serde_json::{json, Map, Value};

/// The Istio security kinds the cluster holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum PolicyKind {
    AuthorizationPolicy,
    PeerAuthentication,
    RequestAuthentication,
}

impl PolicyKind {
    pub const ALL: [PolicyKind; 3] = [
        PolicyKind::AuthorizationPolicy,
        PolicyKind::PeerAuthentication,
        PolicyKind::RequestAuthentication,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            PolicyKind::AuthorizationPolicy => "AuthorizationPolicy",
            PolicyKind::PeerAuthentication => "PeerAuthentication",
            PolicyKind::RequestAuthentication => "RequestAuthentication",
        }
    }

    /// The resource name in `security.istio.io` URLs and RBAC rules.
    pub fn plural(self) -> &'static str {
        match self {
            PolicyKind::AuthorizationPolicy => "authorizationpolicies",
            PolicyKind::PeerAuthentication => "peerauthentications",
            PolicyKind::RequestAuthentication => "requestauthentications",
        }
    }
}

impl fmt::Display for PolicyKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What replaced an invalid object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fallback {
    /// DENY every request in the object's scope.
    DenyAll,
    /// An ALLOW policy that allows nothing in the object's scope.
    AllowNothing,
    /// PeerAuthentication STRICT in the object's scope.
    Strict,
    /// Nothing is enforced in its place (it could not have denied anything).
    Omitted,
}

impl Fallback {
    pub fn describe(self) -> &'static str {
        match self {
            Fallback::DenyAll => "denying every request in its scope until it is fixed",
            Fallback::AllowNothing => {
                "enforcing an ALLOW policy that allows nothing in its scope until it is fixed"
            }
            Fallback::Strict => "enforcing mTLS STRICT in its scope until it is fixed",
            Fallback::Omitted => "left out (it cannot deny anything)",
        }
    }
}

/// An object that failed to load, with what stands in for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejected {
    pub kind: PolicyKind,
    pub namespace: String,
    pub name: String,
    /// Every error, as the CLI prints it (resource and field included).
    pub errors: Vec<String>,
    pub fallback: Fallback,
    /// The fallback could only be scoped to the whole namespace.
    pub widened: bool,
}

impl fmt::Display for Rejected {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {}/{} is invalid ({}); {}{}",
            self.kind,
            self.namespace,
            self.name,
            self.errors.join("; "),
            self.fallback.describe(),
            if self.widened {
                " (its selector is invalid too, so the whole namespace)"
            } else {
                ""
            }
        )
    }
}

/// One stored policy object.
#[derive(Debug, Clone)]
struct Entry {
    /// A fingerprint of the object as received, for change detection (a re-list repeats every
    /// object): 128 bits, two keyed hashes of its JSON text. The object itself is not kept:
    /// it is several times the size of what was loaded from it.
    received: (u64, u64),
    /// What the compiler gets: the object itself, or its fallback.
    inputs: Inputs,
    /// `policy_compiler::compile::content_fingerprint` of `inputs.authorization` when that is
    /// one policy (an object is at most one), computed once: an entry never changes, it is
    /// replaced. Kept inline: a build reads it for every entry, and a heap block per entry is
    /// a cache miss per entry. `None` otherwise, and the compiler computes what it needs.
    print: Option<u64>,
    rejected: Option<Rejected>,
}

/// What the cluster holds now (see the module header).
#[derive(Debug, Clone, Default)]
pub struct ClusterState {
    policies: BTreeMap<(PolicyKind, String, String), Entry>,
    pods: BTreeMap<(String, String), Workload>,
    /// `workloads()` of `pods`, made on the first build after a pod changed (most changes are
    /// of policies). Per clone: cleared by every change of `pods`.
    workloads: std::sync::OnceLock<std::sync::Arc<Vec<Workload>>>,
    mesh: MeshConfig,
    /// Compiled policies of the previous build, so a change recompiles one object.
    cache: std::sync::Arc<std::sync::Mutex<CompileCache>>,
    /// The last snapshot built: the next build takes over its policy classes whose policies
    /// did not change (all its tables are shared with the published copy).
    previous: std::sync::Arc<std::sync::Mutex<Option<Snapshot>>>,
}

/// Whether an event changed what would be compiled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Changed {
    Yes,
    No,
}

impl ClusterState {
    pub fn new(mesh: MeshConfig) -> ClusterState {
        ClusterState {
            mesh,
            // Builds serve decisions; nothing here explains or prints policies.
            cache: std::sync::Arc::new(std::sync::Mutex::new(CompileCache::for_decisions())),
            ..ClusterState::default()
        }
    }

    pub fn mesh(&self) -> &MeshConfig {
        &self.mesh
    }

    pub fn set_mesh(&mut self, mesh: MeshConfig) -> Changed {
        if mesh == self.mesh {
            return Changed::No;
        }
        self.mesh = mesh;
        Changed::Yes
    }

    /// An object was created or modified (a watch ADDED / MODIFIED event or a list item).
    /// `api_version` is the version it was served as (list items may omit theirs).
    pub fn apply_policy(&mut self, kind: PolicyKind, api_version: &str, object: Value) -> Changed {
        let (namespace, name) = object_key(&object);
        let key = (kind, namespace, name);
        let received = object_print(&object);
        if self
            .policies
            .get(&key)
            .is_some_and(|e| e.received == received)
        {
            return Changed::No;
        }
        let entry = load_entry(kind, api_version, &key.1, &key.2, object, received);
        self.policies.insert(key, entry);
        Changed::Yes
    }

    pub fn delete_policy(&mut self, kind: PolicyKind, namespace: &str, name: &str) -> Changed {
        match self
            .policies
            .remove(&(kind, namespace.to_string(), name.to_string()))
        {
            Some(_) => Changed::Yes,
            None => Changed::No,
        }
    }

    /// A complete list of one kind (the initial list, or a re-list after the watch expired), of
    /// one namespace or (`None`) of all: objects of the kind in that scope that are absent from
    /// it are gone; the others are applied.
    pub fn reset_policies(
        &mut self,
        kind: PolicyKind,
        namespace: Option<&str>,
        api_version: &str,
        objects: Vec<Value>,
    ) -> Changed {
        let mut changed = Changed::No;
        let keep: std::collections::BTreeSet<(String, String)> =
            objects.iter().map(object_key).collect();
        let before = self.policies.len();
        self.policies.retain(|(k, ns, n), _| {
            *k != kind
                || namespace.is_some_and(|scope| scope != ns)
                || keep.contains(&(ns.clone(), n.clone()))
        });
        if self.policies.len() != before {
            changed = Changed::Yes;
        }
        for object in objects {
            if self.apply_policy(kind, api_version, object) == Changed::Yes {
                changed = Changed::Yes;
            }
        }
        changed
    }

    /// A Pod was created or modified. Only what authorization reads (labels, service account,
    /// IPs) counts as a change; finished pods and host-network IPs are dropped.
    pub fn apply_pod(&mut self, object: &Value) -> Changed {
        let (namespace, name) = object_key(object);
        let key = (namespace, name);
        match pod_workload(object) {
            Some(w) => {
                if self.pods.get(&key) == Some(&w) {
                    return Changed::No;
                }
                self.pods.insert(key, w);
                self.workloads = Default::default();
                Changed::Yes
            }
            None => match self.pods.remove(&key) {
                Some(_) => {
                    self.workloads = Default::default();
                    Changed::Yes
                }
                None => Changed::No,
            },
        }
    }

    pub fn delete_pod(&mut self, namespace: &str, name: &str) -> Changed {
        match self.pods.remove(&(namespace.to_string(), name.to_string())) {
            Some(_) => {
                self.workloads = Default::default();
                Changed::Yes
            }
            None => Changed::No,
        }
    }

    /// A complete list of pods, of one namespace or (`None`) of all.
    pub fn reset_pods(&mut self, namespace: Option<&str>, objects: &[Value]) -> Changed {
        let mut next: BTreeMap<(String, String), Workload> = self
            .pods
            .iter()
            .filter(|((ns, _), _)| namespace.is_some_and(|scope| scope != ns))
            .map(|(k, w)| (k.clone(), w.clone()))
            .collect();
        for object in objects {
            if let Some(w) = pod_workload(object) {
                next.insert(object_key(object), w);
            }
        }
        if next == self.pods {
            return Changed::No;
        }
        self.pods = next;
        self.workloads = Default::default();
        Changed::Yes
    }

    /// The compiler's input: every valid object, the stand-ins of the invalid ones, the pods.
    pub fn inputs(&self) -> (Inputs, Vec<Workload>) {
        let mut all = Inputs::default();
        for entry in self.policies.values() {
            all.authorization
                .extend(entry.inputs.authorization.iter().cloned());
            all.peer.extend(entry.inputs.peer.iter().cloned());
            all.request.extend(entry.inputs.request.iter().cloned());
            all.warnings.extend(entry.inputs.warnings.iter().cloned());
        }
        (all, self.workloads())
    }

    /// The pods as workloads, one per controller: pods with the same owner (a Deployment's
    /// ReplicaSet, a StatefulSet, ...), labels and service account are one workload holding all
    /// their IPs, named like Istio names workloads (the Deployment's name, not the pod's). This
    /// keeps decision logs and metrics per workload rather than per pod, and selectors see
    /// exactly the labels they would on each pod. During a rollout the old and new ReplicaSets
    /// differ in `pod-template-hash`; they become `<name>-<hash>` each.
    pub fn workloads(&self) -> Vec<Workload> {
        let mut groups: BTreeMap<(String, String), Vec<Workload>> = BTreeMap::new();
        for w in self.pods.values() {
            let variants = groups
                .entry((w.namespace.clone(), w.name.clone()))
                .or_default();
            match variants
                .iter_mut()
                .find(|v| v.labels == w.labels && v.service_account == w.service_account)
            {
                Some(v) => v.ips.extend(w.ips.iter().copied()),
                None => variants.push(w.clone()),
            }
        }
        let mut out = Vec::new();
        for ((_, base), variants) in groups {
            let several = variants.len() > 1;
            for (i, mut w) in variants.into_iter().enumerate() {
                if several {
                    let revision = ["pod-template-hash", "controller-revision-hash"]
                        .iter()
                        .find_map(|l| w.labels.get(*l))
                        .cloned()
                        .unwrap_or_else(|| i.to_string());
                    w.name = format!("{base}-{revision}");
                }
                w.ips.sort();
                w.ips.dedup();
                out.push(w);
            }
        }
        // Names made from revisions could still collide with another controller's name.
        let mut seen = std::collections::BTreeSet::new();
        for (i, w) in out.iter_mut().enumerate() {
            if !seen.insert(w.key()) {
                w.name = format!("{}-{i}", w.name);
                seen.insert(w.key());
            }
        }
        // In key order, as the compiler keeps them: it then shares this list instead of
        // copying it (and the snapshot its tables of workloads) until a pod changes.
        out.sort_by(Workload::key_cmp);
        out
    }

    /// Compiles and indexes the current state as snapshot `generation`. An error here is a
    /// compiler bug (every object was validated when it arrived); the caller keeps the last
    /// good snapshot.
    pub fn build(
        &self,
        generation: u64,
    ) -> Result<(Snapshot, crate::watch::Resources, Vec<String>), Vec<LoadError>> {
        // Borrowed: the objects stay where they are (no copy of the estate per change).
        let mut inputs = InputsRef::default();
        for entry in self.policies.values() {
            inputs.extend_with_prints(&entry.inputs, entry.print.as_slice());
        }
        let workloads = self
            .workloads
            .get_or_init(|| std::sync::Arc::new(self.workloads()));
        let compiled = {
            let mut cache = self
                .cache
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            policy_compiler::compile::compile_cached(&inputs, &self.mesh, workloads, &mut cache)?
        };
        let resources = crate::watch::Resources::of(&compiled);
        let warnings = compiled.warnings.iter().map(ToString::to_string).collect();
        let mut previous = self
            .previous
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let snapshot =
            Snapshot::build_reusing(compiled, generation, previous.as_ref()).map_err(|e| {
                vec![LoadError::new(
                    policy_compiler::Location::file("<kubernetes>"),
                    e.to_string(),
                )]
            })?;
        *previous = Some(snapshot.clone());
        Ok((snapshot, resources, warnings))
    }

    /// The objects that failed to load, in key order.
    pub fn rejected(&self) -> Vec<Rejected> {
        self.policies
            .values()
            .filter_map(|e| e.rejected.clone())
            .collect()
    }

    /// How many objects of each kind are held (valid or not), and pods.
    pub fn counts(&self) -> (BTreeMap<PolicyKind, usize>, usize) {
        let mut by_kind = BTreeMap::new();
        for (kind, _, _) in self.policies.keys() {
            *by_kind.entry(*kind).or_insert(0) += 1;
        }
        (by_kind, self.pods.len())
    }
}

/// What is served before the first complete view of the cluster: generation 0, denying every
/// request (a mesh-wide DENY in the root namespace), so that starting up never opens access.
pub fn deny_all_snapshot(mesh: &MeshConfig) -> Result<Snapshot, Vec<LoadError>> {
    let mut state = ClusterState::new(mesh.clone());
    let object = json!({
        "apiVersion": "security.istio.io/v1",
        "kind": "AuthorizationPolicy",
        "metadata": {"namespace": mesh.root_namespace, "name": "meshauthz-not-ready"},
        "spec": {"action": "DENY", "rules": [{}]},
    });
    state.apply_policy(PolicyKind::AuthorizationPolicy, "v1", object);
    if let Some(r) = state.rejected().first() {
        return Err(vec![LoadError::new(
            policy_compiler::Location::file("<kubernetes>"),
            r.to_string(),
        )]);
    }
    state.build(0).map(|(s, _, _)| s)
}

fn object_key(object: &Value) -> (String, String) {
    let meta = object.get("metadata");
    let field = |f: &str| {
        meta.and_then(|m| m.get(f))
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string()
    };
    (field("namespace"), field("name"))
}

/// How an object is named in messages (it has no file): `Kind ns/name`.
fn source_name(kind: PolicyKind, namespace: &str, name: &str) -> String {
    format!("kubernetes:{kind}/{namespace}/{name}")
}

fn load_entry(
    kind: PolicyKind,
    api_version: &str,
    namespace: &str,
    name: &str,
    object: Value,
    received: (u64, u64),
) -> Entry {
    let mut normalized = object;
    if let Value::Object(map) = &mut normalized {
        // List items of some servers omit these; the watch says what was served.
        map.entry("apiVersion")
            .or_insert_with(|| Value::String(format!("security.istio.io/{api_version}")));
        map.entry("kind")
            .or_insert_with(|| Value::String(kind.as_str().to_string()));
    }
    let source = source_name(kind, namespace, name);
    let (inputs, errors) = load_one(&source, &normalized, kind);
    if errors.is_empty() {
        return Entry {
            received,
            print: print_of(&inputs),
            inputs,
            rejected: None,
        };
    }
    let (inputs, fallback, widened) =
        fallback_for(kind, namespace, api_version, &normalized, &source);
    Entry {
        received,
        print: print_of(&inputs),
        inputs,
        rejected: Some(Rejected {
            kind,
            namespace: namespace.to_string(),
            name: name.to_string(),
            errors: errors.iter().map(ToString::to_string).collect(),
            fallback,
            widened,
        }),
    }
}

/// See `Entry::received`. serde_json writes object keys in order, so equal objects have equal
/// texts.
fn object_print(object: &Value) -> (u64, u64) {
    use std::hash::{Hash, Hasher};
    let text = object.to_string();
    let keyed = |key: u8| {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        key.hash(&mut h);
        text.hash(&mut h);
        h.finish()
    };
    (keyed(1), keyed(2))
}

fn print_of(inputs: &Inputs) -> Option<u64> {
    match inputs.authorization.as_slice() {
        [one] => Some(policy_compiler::compile::content_fingerprint(one)),
        _ => None,
    }
}

/// Loads one object with the CLI's loader. An object that loads as something other than one
/// resource of `kind` (a wrong `kind` field, say) is an error too.
fn load_one(source: &str, object: &Value, kind: PolicyKind) -> (Inputs, Vec<LoadError>) {
    let mut inputs = Inputs::default();
    let text = match serde_yaml::to_string(object) {
        Ok(t) => t,
        Err(e) => {
            let error = LoadError::new(
                policy_compiler::Location::file(source),
                format!("cannot read the object: {e}"),
            );
            return (Inputs::default(), vec![error]);
        }
    };
    let mut errors = inputs.load_str(source, &text);
    let loaded = inputs.authorization.len() + inputs.peer.len() + inputs.request.len();
    let of_kind = match kind {
        PolicyKind::AuthorizationPolicy => inputs.authorization.len(),
        PolicyKind::PeerAuthentication => inputs.peer.len(),
        PolicyKind::RequestAuthentication => inputs.request.len(),
    };
    if errors.is_empty() && (loaded != 1 || of_kind != 1) {
        errors.push(LoadError::new(
            policy_compiler::Location::file(source),
            format!("the object is not a {kind}"),
        ));
    }
    if !errors.is_empty() {
        return (Inputs::default(), errors);
    }
    (inputs, errors)
}

/// The stand-in of an invalid object (see the module header).
fn fallback_for(
    kind: PolicyKind,
    namespace: &str,
    api_version: &str,
    object: &Value,
    source: &str,
) -> (Inputs, Fallback, bool) {
    let spec = object.get("spec");
    let (fallback, body) = match kind {
        PolicyKind::AuthorizationPolicy => {
            let dry_run = object
                .pointer("/metadata/annotations")
                .and_then(|a| a.get(policy_compiler::DRY_RUN_ANNOTATION))
                .and_then(Value::as_str)
                .is_some_and(|v| v.eq_ignore_ascii_case("true"));
            let action = spec.and_then(|s| s.get("action"));
            match action.map(|a| a.as_str()) {
                _ if dry_run => (Fallback::Omitted, None),
                Some(Some("AUDIT")) => (Fallback::Omitted, None),
                None | Some(Some("ALLOW")) => (Fallback::AllowNothing, Some(json!({}))),
                _ => (
                    Fallback::DenyAll,
                    Some(json!({"action": "DENY", "rules": [{}]})),
                ),
            }
        }
        PolicyKind::PeerAuthentication => {
            (Fallback::Strict, Some(json!({"mtls": {"mode": "STRICT"}})))
        }
        PolicyKind::RequestAuthentication => (Fallback::Omitted, None),
    };
    let Some(Value::Object(body)) = body else {
        return (Inputs::default(), fallback, false);
    };
    let metadata = json!({
        "namespace": object.pointer("/metadata/namespace").cloned().unwrap_or(Value::Null),
        "name": object.pointer("/metadata/name").cloned().unwrap_or(Value::Null),
    });
    let build_as = |metadata: &Value, scope: Option<&Map<String, Value>>| {
        let mut spec = body.clone();
        if let Some(scope) = scope {
            spec.extend(scope.clone());
        }
        json!({
            "apiVersion": format!("security.istio.io/{api_version}"),
            "kind": kind.as_str(),
            "metadata": metadata,
            "spec": spec,
        })
    };
    let build = |scope: Option<&Map<String, Value>>| build_as(&metadata, scope);
    // The object's own scope, when it is valid on its own.
    let scope: Map<String, Value> = ["selector", "targetRef", "targetRefs"]
        .iter()
        .filter_map(|f| Some((f.to_string(), spec?.get(*f)?.clone())))
        .collect();
    if !scope.is_empty() {
        let (inputs, errors) = load_one(source, &build(Some(&scope)), kind);
        if errors.is_empty() {
            return (inputs, fallback, false);
        }
    }
    let (inputs, errors) = load_one(source, &build(None), kind);
    if errors.is_empty() {
        return (inputs, fallback, !scope.is_empty());
    }
    // The object's own name is unusable: stand in under a name of ours, in its namespace, so
    // that a broken DENY still denies.
    let renamed = json!({"namespace": namespace, "name": "meshauthz-invalid-object"});
    let (inputs, errors) = load_one(source, &build_as(&renamed, None), kind);
    if errors.is_empty() {
        return (inputs, fallback, !scope.is_empty());
    }
    // Without a namespace nothing can be scoped; such an object cannot exist in a cluster
    // (the API server requires one), so only a bug gets here.
    (Inputs::default(), Fallback::Omitted, false)
}

/// The workload of a running Pod; `None` for a finished one (its IPs may be reused).
fn pod_workload(object: &Value) -> Option<Workload> {
    let phase = object.pointer("/status/phase").and_then(Value::as_str);
    if matches!(phase, Some("Succeeded" | "Failed")) {
        return None;
    }
    let mut w = workload_from_manifest("Pod", object)?;
    w.name = controller_name(object).unwrap_or(w.name);
    // A host-network pod has its node's IP: it must not be taken for the node's other pods.
    if object
        .pointer("/spec/hostNetwork")
        .and_then(Value::as_bool)
        .unwrap_or(false)
    {
        w.ips.clear();
    }
    Some(w)
}

/// The name of the workload a pod belongs to: its controller's (a ReplicaSet's owning Deployment,
/// found by removing the `pod-template-hash` suffix; a StatefulSet, DaemonSet, Job...).
fn controller_name(object: &Value) -> Option<String> {
    let owners = object.pointer("/metadata/ownerReferences")?.as_array()?;
    let owner = owners
        .iter()
        .find(|o| o.get("controller").and_then(Value::as_bool) == Some(true))?;
    let name = owner.get("name")?.as_str()?;
    let hash = object
        .pointer("/metadata/labels/pod-template-hash")
        .and_then(Value::as_str);
    let deployment = match (owner.get("kind").and_then(Value::as_str), hash) {
        (Some("ReplicaSet"), Some(hash)) => name.strip_suffix(&format!("-{hash}")),
        _ => None,
    };
    Some(deployment.unwrap_or(name).to_string())
}

/// The subset of Istio's mesh config (the `mesh` key of the `istio` ConfigMap, YAML) that
/// meshauthz reads; every other field is ignored, as it does not change authorization.
pub fn mesh_from_istio_config(text: &str) -> Result<MeshConfig, String> {
    let value: serde_yaml::Value =
        serde_yaml::from_str(text).map_err(|e| format!("the mesh config is not YAML: {e}"))?;
    let mut mesh = MeshConfig::default();
    if value.is_null() {
        return Ok(mesh);
    }
    let map = value
        .as_mapping()
        .ok_or("the mesh config must be a mapping")?;
    let get = |k: &str| map.get(k);
    let string = |k: &str| -> Result<Option<String>, String> {
        match get(k) {
            None | Some(serde_yaml::Value::Null) => Ok(None),
            Some(serde_yaml::Value::String(s)) => Ok(Some(s.clone())),
            Some(_) => Err(format!("`{k}` must be a string")),
        }
    };
    if let Some(v) = string("rootNamespace")? {
        mesh.root_namespace = v;
    }
    if let Some(v) = string("trustDomain")? {
        mesh.trust_domain = v;
    }
    if let Some(v) = get("trustDomainAliases") {
        mesh.trust_domain_aliases =
            serde_yaml::from_value(v.clone()).map_err(|e| format!("`trustDomainAliases`: {e}"))?;
    }
    if let Some(v) = get("pathNormalization").and_then(|p| p.get("normalization")) {
        mesh.path_normalization = serde_yaml::from_value::<PathNormalization>(v.clone())
            .map_err(|e| format!("`pathNormalization.normalization`: {e}"))?;
    }
    if let Some(v) = get("defaultConfig")
        .and_then(|d| d.get("gatewayTopology"))
        .and_then(|g| g.get("numTrustedProxies"))
    {
        mesh.num_trusted_proxies = serde_yaml::from_value(v.clone())
            .map_err(|e| format!("`defaultConfig.gatewayTopology.numTrustedProxies`: {e}"))?;
    }
    if let Some(v) = get("extensionProviders") {
        mesh.extension_providers =
            serde_yaml::from_value(v.clone()).map_err(|e| format!("`extensionProviders`: {e}"))?;
    }
    Ok(mesh)
}

#[cfg(test)]
mod tests;
