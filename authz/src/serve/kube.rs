//! `meshauthz serve --kubernetes`: the cluster as the policy source.
//!
//! State owned: [`KubeSource`], the watch tasks (one per watched resource and namespace scope, on
//! the server's tokio runtime) and the index thread, which alone owns the
//! [`ClusterState`] and publishes snapshots.
//!
//! ```text
//!  kube-rs watchers (list, then watch; re-list on 410 Gone; back off on errors)
//!     AuthorizationPolicy / PeerAuthentication / RequestAuthentication (v1, else v1beta1)
//!     Pod, ConfigMap istio-system/istio (mesh settings)
//!        |  std mpsc: Apply / Delete / Init.. InitDone / Error
//!        v
//!  index thread: ClusterState (pure) --debounce--> compile + index --> Publisher (ArcSwap)
//! ```
//!
//! Until every watch has completed its first list and the mesh settings are known, the served
//! snapshot is generation 0 and denies everything (readiness says why). After that, every change is compiled at most
//! [`MAX_DELAY`] after it arrived, never on the request path. When the API server is
//! unreachable the last snapshot keeps serving; how long a watch has been failing is exposed as
//! staleness (`/snapshot`, `meshauthz_kubernetes_stale_seconds`).

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::mpsc;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime};

use authz_loader::cluster::{
    deny_all_snapshot, mesh_from_istio_config, Changed, ClusterState, PolicyKind,
};
use authz_loader::watch::{Event, Observer, Publisher, ReloadError, StatusHandle, WatchStatus};
use futures::StreamExt;
use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind};
use kube::runtime::watcher::{self, watcher};
use kube::runtime::WatchStreamExt;
use serde_json::Value;

use super::metrics::{Metrics, ResourceLabels};

/// A change is compiled once no other arrived for this long...
pub const QUIET: Duration = Duration::from_millis(100);
/// ...or this long after it arrived, whichever is first.
pub const MAX_DELAY: Duration = Duration::from_millis(500);

const ISTIO_GROUP: &str = "security.istio.io";

/// What `serve --kubernetes` watches.
#[derive(Debug, Clone)]
pub struct KubeConfig {
    /// Empty: every namespace. Otherwise these, plus the Istio root namespace for policies.
    pub namespaces: Vec<String>,
    /// Where the `istio` ConfigMap lives (and the root namespace when scoping).
    pub istio_namespace: String,
    /// Mesh settings from this file instead of the ConfigMap.
    pub mesh_file: Option<PathBuf>,
}

/// What one watch is of.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Resource {
    Policy { kind: PolicyKind, version: String },
    Pods,
    MeshConfigMap,
}

#[derive(Debug, Clone)]
struct Watch {
    resource: Resource,
    namespace: Option<String>,
}

impl Watch {
    fn label(&self) -> String {
        let what = match &self.resource {
            Resource::Policy { kind, version } => {
                format!("{}.{ISTIO_GROUP}/{version}", kind.plural())
            }
            Resource::Pods => "pods".to_string(),
            Resource::MeshConfigMap => "configmaps/istio".to_string(),
        };
        match &self.namespace {
            Some(ns) => format!("{what} in {ns}"),
            None => what,
        }
    }
}

/// What the index thread receives: the watches once discovery is done, then their reports.
#[derive(Debug)]
enum Msg {
    Watches(Vec<Watch>),
    Report(usize, Report),
}

/// What a watch task reports to the index thread.
#[derive(Debug)]
enum Report {
    Apply(Value),
    Delete(Value),
    InitStart,
    InitItem(Value),
    InitDone,
    Error(String),
}

/// How one watch is doing, for readiness, `/snapshot` and metrics.
#[derive(Debug, Clone, Default)]
pub struct WatchHealth {
    pub label: String,
    /// The first complete list has arrived.
    pub synced: bool,
    /// Failing since (the last snapshot keeps serving meanwhile).
    pub failing_since: Option<SystemTime>,
    pub errors: u64,
    pub last_error: Option<String>,
}

/// The Kubernetes view shared with the admin port.
#[derive(Debug, Clone, Default)]
pub struct KubeView {
    pub watches: Vec<WatchHealth>,
    /// Invalid objects, each with the errors and what is enforced instead.
    pub rejected: Vec<String>,
    /// The mesh config could not be read (the previous settings stay).
    pub mesh_error: Option<String>,
    /// Mesh settings are known: from `--mesh`, or a valid (or absent) `istio` ConfigMap has
    /// been read. A ConfigMap that is broken from the start keeps the server not ready rather
    /// than enforcing with guessed settings (a wrong trust domain or root namespace changes
    /// what every policy means).
    pub mesh_known: bool,
    /// `security.istio.io` could not be found yet.
    pub discovery_error: Option<String>,
}

impl KubeView {
    /// `None` once every watch has listed once.
    pub fn not_synced(&self) -> Option<String> {
        if let Some(e) = &self.discovery_error {
            return Some(e.clone());
        }
        if let (false, Some(e)) = (self.mesh_known, &self.mesh_error) {
            return Some(e.clone());
        }
        let waiting: Vec<&str> = self
            .watches
            .iter()
            .filter(|w| !w.synced)
            .map(|w| w.label.as_str())
            .collect();
        if self.watches.is_empty() {
            return Some("connecting to the Kubernetes API".to_string());
        }
        (!waiting.is_empty())
            .then(|| format!("waiting for the first list of {}", waiting.join(", ")))
    }

    /// Seconds the longest-failing watch has been failing (0 when all are healthy).
    pub fn stale_seconds(&self, now: SystemTime) -> u64 {
        self.watches
            .iter()
            .filter_map(|w| w.failing_since)
            .filter_map(|t| now.duration_since(t).ok())
            .map(|d| d.as_secs())
            .max()
            .unwrap_or(0)
    }
}

pub type KubeHandle = Arc<Mutex<KubeView>>;

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The running Kubernetes source.
pub struct KubeSource {
    pub publisher: Arc<Publisher>,
    pub status: StatusHandle,
    pub view: KubeHandle,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl std::fmt::Debug for KubeSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubeSource").finish_non_exhaustive()
    }
}

impl Drop for KubeSource {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

impl KubeSource {
    /// Connects (kubeconfig from `KUBECONFIG` / `~/.kube/config`, else the in-cluster service
    /// account) and starts watching. Fails only when no client configuration exists or the mesh
    /// file is bad; an unreachable API server is retried in the background (not ready).
    pub async fn start(
        config: KubeConfig,
        observer: Observer,
        metrics: Arc<Metrics>,
    ) -> Result<KubeSource, String> {
        let client = kube::Client::try_default().await.map_err(|e| {
            format!("cannot configure a Kubernetes client (KUBECONFIG, ~/.kube/config or the in-cluster service account): {e}")
        })?;
        let fixed_mesh = match &config.mesh_file {
            Some(path) => {
                let (mesh, workloads) =
                    authz_loader::load_mesh_file(path).map_err(|e| e.to_string())?;
                if !workloads.is_empty() {
                    tracing::warn!(
                        file = %path.display(),
                        "--mesh: the `workloads:` section is ignored with --kubernetes (pods define workloads)"
                    );
                }
                Some(mesh)
            }
            None => None,
        };
        let mesh = fixed_mesh.clone().unwrap_or_default();
        let initial = deny_all_snapshot(&mesh).map_err(|e| {
            e.iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("\n")
        })?;
        let publisher = Publisher::new(initial);
        let status = Arc::new(Mutex::new(WatchStatus::default()));
        let view: KubeHandle = Arc::new(Mutex::new(KubeView {
            mesh_known: fixed_mesh.is_some(),
            ..KubeView::default()
        }));
        let (tx, rx) = mpsc::channel::<Msg>();

        let index = Index {
            state: ClusterState::new(mesh),
            watches: Vec::new(),
            publisher: publisher.clone(),
            status: status.clone(),
            view: view.clone(),
            observer,
            metrics,
            generation: 0,
            rejected: BTreeSet::new(),
        };
        let starter = {
            let client = client.clone();
            let view = view.clone();
            let config = config.clone();
            let fixed = fixed_mesh.is_some();
            tokio::spawn(async move {
                let watches = discover(&client, &config, fixed, &view).await;
                // The index learns the watches before their first report.
                if tx.send(Msg::Watches(watches.clone())).is_err() {
                    return;
                }
                // The set aborts every watch when dropped, i.e. when this task is aborted
                // (KubeSource's drop).
                let mut set = spawn_watches(&client, &watches, &tx);
                while set.join_next().await.is_some() {}
            })
        };
        std::thread::Builder::new()
            .name("meshauthz-kube-index".into())
            .spawn(move || index.run(rx))
            .map_err(|e| format!("cannot start the Kubernetes index thread: {e}"))?;
        Ok(KubeSource {
            publisher,
            status: StatusHandle::new(status),
            view,
            tasks: vec![starter],
        })
    }
}

/// Finds the served version of each kind (v1, else v1beta1), retrying until the group exists.
async fn discover(
    client: &kube::Client,
    config: &KubeConfig,
    fixed_mesh: bool,
    view: &KubeHandle,
) -> Vec<Watch> {
    let mut delay = Duration::from_millis(500);
    let versions = loop {
        match served_versions(client).await {
            Ok(v) => {
                lock(view).discovery_error = None;
                break v;
            }
            Err(e) => {
                tracing::warn!(
                    error = e.as_str(),
                    "Kubernetes API discovery failed; retrying"
                );
                lock(view).discovery_error = Some(e);
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(10));
            }
        }
    };
    let policy_scopes: Vec<Option<String>> = if config.namespaces.is_empty() {
        vec![None]
    } else {
        let mut set: BTreeSet<String> = config.namespaces.iter().cloned().collect();
        set.insert(config.istio_namespace.clone());
        set.into_iter().map(Some).collect()
    };
    let pod_scopes: Vec<Option<String>> = if config.namespaces.is_empty() {
        vec![None]
    } else {
        config.namespaces.iter().cloned().map(Some).collect()
    };
    let mut watches = Vec::new();
    for (kind, version) in versions {
        for ns in &policy_scopes {
            watches.push(Watch {
                resource: Resource::Policy {
                    kind,
                    version: version.clone(),
                },
                namespace: ns.clone(),
            });
        }
    }
    for ns in pod_scopes {
        watches.push(Watch {
            resource: Resource::Pods,
            namespace: ns,
        });
    }
    if !fixed_mesh {
        watches.push(Watch {
            resource: Resource::MeshConfigMap,
            namespace: Some(config.istio_namespace.clone()),
        });
    }
    watches
}

/// `security.istio.io` kinds and the version each is read as.
async fn served_versions(client: &kube::Client) -> Result<Vec<(PolicyKind, String)>, String> {
    let mut served: Vec<(String, Vec<String>)> = Vec::new();
    for version in ["v1", "v1beta1"] {
        match client
            .list_api_group_resources(&format!("{ISTIO_GROUP}/{version}"))
            .await
        {
            Ok(list) => served.push((
                version.to_string(),
                list.resources.into_iter().map(|r| r.name).collect(),
            )),
            Err(kube::Error::Api(status)) if status.code == 404 => {}
            Err(e) => return Err(format!("cannot read the API group {ISTIO_GROUP}: {e}")),
        }
    }
    let mut out = Vec::new();
    for kind in PolicyKind::ALL {
        match served
            .iter()
            .find(|(_, names)| names.iter().any(|n| n == kind.plural()))
        {
            Some((version, _)) => out.push((kind, version.clone())),
            None => {
                return Err(format!(
                    "the cluster does not serve {}.{ISTIO_GROUP} (v1 or v1beta1): install Istio or apply crds/",
                    kind.plural()
                ))
            }
        }
    }
    Ok(out)
}

fn spawn_watches(
    client: &kube::Client,
    watches: &[Watch],
    tx: &mpsc::Sender<Msg>,
) -> tokio::task::JoinSet<()> {
    let mut set = tokio::task::JoinSet::new();
    for (id, w) in watches.iter().enumerate() {
        let (resource, config) = match &w.resource {
            Resource::Policy { kind, version } => (
                ApiResource::from_gvk_with_plural(
                    &GroupVersionKind::gvk(ISTIO_GROUP, version, kind.as_str()),
                    kind.plural(),
                ),
                watcher::Config::default(),
            ),
            Resource::Pods => (
                ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk("", "v1", "Pod"), "pods"),
                watcher::Config::default(),
            ),
            Resource::MeshConfigMap => (
                ApiResource::from_gvk_with_plural(
                    &GroupVersionKind::gvk("", "v1", "ConfigMap"),
                    "configmaps",
                ),
                watcher::Config::default().fields("metadata.name=istio"),
            ),
        };
        let api: Api<DynamicObject> = match &w.namespace {
            Some(ns) => Api::namespaced_with(client.clone(), ns, &resource),
            None => Api::all_with(client.clone(), &resource),
        };
        let tx = tx.clone();
        set.spawn(async move {
            let mut stream = watcher(api, config).default_backoff().boxed();
            while let Some(item) = stream.next().await {
                let report = match item {
                    Ok(watcher::Event::Apply(o)) => Report::Apply(to_value(o)),
                    Ok(watcher::Event::Delete(o)) => Report::Delete(to_value(o)),
                    Ok(watcher::Event::Init) => Report::InitStart,
                    Ok(watcher::Event::InitApply(o)) => Report::InitItem(to_value(o)),
                    Ok(watcher::Event::InitDone) => Report::InitDone,
                    // 410 Gone: the watch expired; the watcher re-lists, nothing failed.
                    Err(watcher::Error::WatchError(s)) if s.code == 410 => continue,
                    Err(e) => Report::Error(e.to_string()),
                };
                if tx.send(Msg::Report(id, report)).is_err() {
                    return;
                }
            }
        });
    }
    set
}

/// The object as JSON, without `managedFields` (large, and never read).
fn to_value(object: DynamicObject) -> Value {
    let mut v = serde_json::to_value(object).unwrap_or(Value::Null);
    if let Some(meta) = v.get_mut("metadata").and_then(Value::as_object_mut) {
        meta.remove("managedFields");
    }
    v
}

/// The index thread (see the module header).
struct Index {
    state: ClusterState,
    watches: Vec<(Watch, WatchState)>,
    publisher: Arc<Publisher>,
    status: Arc<Mutex<WatchStatus>>,
    view: KubeHandle,
    observer: Observer,
    metrics: Arc<Metrics>,
    generation: u64,
    /// Messages of the invalid objects last reported, to log each change once.
    rejected: BTreeSet<String>,
}

#[derive(Debug, Default)]
struct WatchState {
    /// Objects of a list in progress.
    listing: Option<Vec<Value>>,
    health: WatchHealth,
}

impl Index {
    fn run(mut self, rx: mpsc::Receiver<Msg>) {
        let mut dirty_since: Option<Instant> = None;
        let mut last_change = Instant::now();
        loop {
            let timeout = match dirty_since {
                Some(first) => {
                    let due = (last_change + QUIET).min(first + MAX_DELAY);
                    due.saturating_duration_since(Instant::now())
                }
                None => Duration::from_secs(1),
            };
            match rx.recv_timeout(timeout) {
                Ok(Msg::Watches(watches)) => {
                    self.watches = watches
                        .into_iter()
                        .map(|w| {
                            let health = WatchHealth {
                                label: w.label(),
                                ..WatchHealth::default()
                            };
                            (
                                w,
                                WatchState {
                                    listing: None,
                                    health,
                                },
                            )
                        })
                        .collect();
                }
                Ok(Msg::Report(id, report)) => {
                    if self.handle(id, report) == Changed::Yes {
                        last_change = Instant::now();
                        dirty_since.get_or_insert(last_change);
                    }
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => return,
            }
            self.publish_view();
            // Mesh settings must be known too (see `KubeView::mesh_known`).
            let synced = !self.watches.is_empty()
                && self.watches.iter().all(|(_, w)| w.health.synced)
                && lock(&self.view).mesh_known;
            if synced && (dirty_since.is_some() || self.generation == 0) {
                let now = Instant::now();
                let due = dirty_since
                    .is_none_or(|first| now >= last_change + QUIET || now >= first + MAX_DELAY);
                if due {
                    dirty_since = None;
                    self.rebuild();
                }
            }
        }
    }

    fn handle(&mut self, id: usize, report: Report) -> Changed {
        let Some((watch, ws)) = self.watches.get_mut(id) else {
            return Changed::No;
        };
        if !matches!(report, Report::Error(_)) && ws.health.failing_since.take().is_some() {
            tracing::info!(
                watch = ws.health.label.as_str(),
                "Kubernetes watch recovered"
            );
        }
        let namespace = watch.namespace.as_deref();
        match report {
            Report::Error(e) => {
                ws.health.errors += 1;
                ws.health.failing_since.get_or_insert_with(SystemTime::now);
                tracing::warn!(
                    watch = ws.health.label.as_str(),
                    error = e.as_str(),
                    "Kubernetes watch failed; retrying with backoff, the last snapshot keeps serving"
                );
                ws.health.last_error = Some(e);
                self.metrics
                    .kube_watch_errors
                    .get_or_create(&ResourceLabels {
                        resource: ws.health.label.clone(),
                    })
                    .inc();
                Changed::No
            }
            Report::InitStart => {
                ws.listing = Some(Vec::new());
                Changed::No
            }
            Report::InitItem(o) => {
                ws.listing.get_or_insert_with(Vec::new).push(o);
                Changed::No
            }
            Report::InitDone => {
                let objects = ws.listing.take().unwrap_or_default();
                ws.health.synced = true;
                let resource = watch.resource.clone();
                match resource {
                    Resource::Policy { kind, version } => self.state.reset_policies(
                        kind,
                        namespace.map(str::to_string).as_deref(),
                        &version,
                        objects,
                    ),
                    Resource::Pods => {
                        let ns = namespace.map(str::to_string);
                        self.state.reset_pods(ns.as_deref(), &objects)
                    }
                    Resource::MeshConfigMap => self.mesh_from(objects.first()),
                }
            }
            Report::Apply(o) => match watch.resource.clone() {
                Resource::Policy { kind, version } => self.state.apply_policy(kind, &version, o),
                Resource::Pods => self.state.apply_pod(&o),
                Resource::MeshConfigMap => self.mesh_from(Some(&o)),
            },
            Report::Delete(o) => {
                let meta = |f: &str| {
                    o.pointer(&format!("/metadata/{f}"))
                        .and_then(Value::as_str)
                        .unwrap_or_default()
                        .to_string()
                };
                match watch.resource.clone() {
                    Resource::Policy { kind, .. } => {
                        self.state
                            .delete_policy(kind, &meta("namespace"), &meta("name"))
                    }
                    Resource::Pods => self.state.delete_pod(&meta("namespace"), &meta("name")),
                    Resource::MeshConfigMap => self.mesh_from(None),
                }
            }
        }
    }

    /// Mesh settings from the `istio` ConfigMap (absent: Istio's defaults). A bad one keeps
    /// the current settings.
    fn mesh_from(&mut self, config_map: Option<&Value>) -> Changed {
        let text = config_map
            .and_then(|c| c.pointer("/data/mesh"))
            .and_then(Value::as_str)
            .unwrap_or_default();
        match mesh_from_istio_config(text) {
            Ok(mesh) => {
                let mut view = lock(&self.view);
                view.mesh_error = None;
                view.mesh_known = true;
                drop(view);
                self.state.set_mesh(mesh)
            }
            Err(e) => {
                let mut view = lock(&self.view);
                let consequence = if view.mesh_known {
                    "keeping the previous mesh settings"
                } else {
                    "not ready (denying every request) until it is fixed"
                };
                let message = format!("ConfigMap istio, key `mesh`: {e}; {consequence}");
                tracing::error!("{message}");
                view.mesh_error = Some(message);
                Changed::No
            }
        }
    }

    fn rebuild(&mut self) {
        let next = self.generation + 1;
        let built = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.state.build(next)))
            .unwrap_or_else(|_| {
                Err(vec![policy_compiler::LoadError::new(
                    policy_compiler::Location::file("<kubernetes>"),
                    "internal error: the policy compiler panicked (a meshauthz bug); keeping the last good snapshot",
                )])
            });
        let rejected: BTreeSet<String> = self
            .state
            .rejected()
            .iter()
            .map(ToString::to_string)
            .collect();
        for r in rejected.difference(&self.rejected) {
            tracing::error!(object = r.as_str(), "invalid policy object");
        }
        for r in self.rejected.difference(&rejected) {
            tracing::info!(object = r.as_str(), "policy object no longer rejected");
        }
        self.metrics
            .kube_invalid_objects
            .set(i64::try_from(rejected.len()).unwrap_or(i64::MAX));
        lock(&self.view).rejected = rejected.iter().cloned().collect();
        self.rejected = rejected;
        match built {
            Ok((snapshot, resources, warnings)) => {
                self.publisher.publish_policy(snapshot);
                let initial = self.generation == 0;
                self.generation = next;
                {
                    let mut s = lock(&self.status);
                    s.generation = next;
                    s.resources = resources;
                    s.last_success = Some(SystemTime::now());
                    if !initial {
                        s.reloads += 1;
                    }
                }
                (self.observer)(&Event::Loaded {
                    generation: next,
                    resources,
                    warnings,
                    initial,
                });
            }
            Err(errors) => {
                let errors: Vec<String> = errors.iter().map(ToString::to_string).collect();
                {
                    let mut s = lock(&self.status);
                    s.reload_errors += 1;
                    s.last_error = Some(ReloadError {
                        at: SystemTime::now(),
                        errors: errors.clone(),
                    });
                }
                (self.observer)(&Event::ReloadFailed { errors });
            }
        }
    }

    fn publish_view(&self) {
        let now = SystemTime::now();
        let mut view = lock(&self.view);
        view.watches = self.watches.iter().map(|(_, w)| w.health.clone()).collect();
        self.metrics
            .kube_stale_seconds
            .set(i64::try_from(view.stale_seconds(now)).unwrap_or(i64::MAX));
    }
}
