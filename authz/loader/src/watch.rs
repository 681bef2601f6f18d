//! Live policy: a [`Publisher`] that owns the current snapshot and swaps it atomically, and a
//! [`PolicyWatcher`] that polls the policy files and the mesh file and publishes every good
//! compile. Synchronous (one std thread, no async runtime) so that any host can use it: the
//! ext_authz server and, later, the native Envoy filter.
//!
//! State owned:
//!
//! ```text
//!  PolicyWatcher thread (poll every 250 ms)         JwksStore thread (crate::jwks)
//!    files changed? -> load + compile + build          fetched keys of one jwksUri
//!            |                                                  |
//!            v                                                  v
//!   Publisher::publish_policy(snapshot)          Publisher::publish_keys(uri, keys)
//!            \______________  Mutex<{ policy, keys }>  ________/      (writers only)
//!                                     |
//!                  policy.with_remote_keys(keys)  -> ArcSwap<Snapshot>.store
//!                                     |
//!          request path: shared.load() once per request, never blocks on a writer
//! ```
//!
//! A policy reload re-applies the current keys and a key update keeps the current policy, so
//! neither writer loses the other's update. A failed load or compile never replaces the last
//! good snapshot: it is recorded in [`WatchStatus`] (with the file, resource and field of each
//! error), counted, and reported to the observer. The watcher thread also keeps what a reload
//! takes over (`Reuse`): the compile cache and the last snapshot, whose policy classes of
//! unchanged policies the next snapshot shares.

use std::collections::hash_map::DefaultHasher;
use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use authz_engine::jwt::KeySet;
use authz_engine::Snapshot;
use policy_compiler::{Compiled, LoadError, Location};

/// The snapshot every request reads: `shared.load()` once per request.
pub type SharedSnapshot = Arc<ArcSwap<Snapshot>>;

/// What the loader tells its host (which logs and counts it; the loader has no logger).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A policy snapshot was built and published (`initial`: the startup load).
    Loaded {
        generation: u64,
        resources: Resources,
        warnings: Vec<String>,
        initial: bool,
    },
    /// A changed policy set could not be used; the previous snapshot keeps serving.
    ReloadFailed { errors: Vec<String> },
    /// A `jwksUri` was fetched and its keys published.
    JwksFetched { uri: String, keys: usize },
    /// A `jwksUri` fetch failed; `kept_keys` last-known-good keys keep serving.
    JwksFailed {
        uri: String,
        error: String,
        kept_keys: usize,
    },
}

/// Receives [`Event`]s, on the loader's threads.
pub type Observer = Arc<dyn Fn(&Event) + Send + Sync>;

/// Counts of what a snapshot was built from.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Resources {
    pub authorization: usize,
    pub peer: usize,
    pub request: usize,
    pub workloads: usize,
}

impl Resources {
    pub fn of(compiled: &Compiled) -> Resources {
        Resources {
            authorization: compiled.authorization.len(),
            peer: compiled.peer.len(),
            request: compiled.request.len(),
            workloads: compiled.workloads.len(),
        }
    }
}

/// The last failed reload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReloadError {
    pub at: SystemTime,
    /// Each error as `file:line: document ..., Kind ns/name, field ...: message`.
    pub errors: Vec<String>,
}

/// What the watcher has done so far (for `/snapshot` and metrics).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WatchStatus {
    /// Generation of the policy snapshot being served (1 = the startup load).
    pub generation: u64,
    pub resources: Resources,
    /// The most recent failed reload, cleared by nothing: compare `at` with `last_success`.
    pub last_error: Option<ReloadError>,
    pub last_success: Option<SystemTime>,
    /// Successful reloads after the startup load.
    pub reloads: u64,
    /// Failed reloads.
    pub reload_errors: u64,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A writer that panicked left consistent data behind (every update is a single assignment).
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

// === impl Publisher ===

type Listener = Box<dyn Fn() + Send + Sync>;

struct Published {
    /// The current policy snapshot, without remote keys.
    policy: Arc<Snapshot>,
    /// The current keys of every `jwksUri`, by URI.
    keys: HashMap<String, Arc<KeySet>>,
}

/// Owns the served snapshot. Readers use [`Publisher::shared`]; the two writers (policy and
/// keys) go through a mutex that readers never take.
pub struct Publisher {
    shared: SharedSnapshot,
    // INVARIANT: `shared` always holds `state.policy.with_remote_keys(state.keys restricted to
    // the policy's URIs)`, stored while this lock is held.
    state: Mutex<Published>,
    listeners: Mutex<Vec<Listener>>,
}

impl std::fmt::Debug for Publisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Publisher")
            .field("generation", &self.shared.load().generation)
            .finish_non_exhaustive()
    }
}

impl Publisher {
    pub fn new(initial: Snapshot) -> Arc<Publisher> {
        let policy = Arc::new(initial);
        Arc::new(Publisher {
            shared: Arc::new(ArcSwap::new(policy.clone())),
            state: Mutex::new(Published {
                policy,
                keys: HashMap::new(),
            }),
            listeners: Mutex::new(Vec::new()),
        })
    }

    /// The handle requests read.
    pub fn shared(&self) -> SharedSnapshot {
        self.shared.clone()
    }

    /// The snapshot being served.
    pub fn current(&self) -> Arc<Snapshot> {
        self.shared.load_full()
    }

    /// The policy snapshot being served, without remote keys.
    pub fn policy(&self) -> Arc<Snapshot> {
        lock(&self.state).policy.clone()
    }

    /// Publishes a new policy snapshot with the current keys of its `jwksUri`s, then tells the
    /// listeners (the JWKS store fetches URIs it has not seen).
    pub fn publish_policy(&self, snapshot: Snapshot) {
        {
            let mut state = lock(&self.state);
            let uris: Vec<String> = snapshot.jwks_uris().into_iter().map(|(u, _)| u).collect();
            state.keys.retain(|u, _| uris.contains(u));
            state.policy = Arc::new(snapshot);
            self.store(&state);
        }
        for l in lock(&self.listeners).iter() {
            l();
        }
    }

    /// Publishes the keys of one `jwksUri` (kept across policy reloads while a policy names it).
    pub fn publish_keys(&self, uri: &str, keys: Arc<KeySet>) {
        let mut state = lock(&self.state);
        let named = state.policy.jwks_uris().iter().any(|(u, _)| u == uri);
        if !named {
            return;
        }
        state.keys.insert(uri.to_string(), keys);
        self.store(&state);
    }

    fn store(&self, state: &Published) {
        let snapshot = if state.keys.is_empty() {
            state.policy.clone()
        } else {
            Arc::new(state.policy.with_remote_keys(state.keys.clone()))
        };
        self.shared.store(snapshot);
    }

    /// Calls `f` (on the publishing thread) after every policy publication.
    pub fn on_policy_change(&self, f: impl Fn() + Send + Sync + 'static) {
        lock(&self.listeners).push(Box::new(f));
    }
}

// === impl PolicyWatcher ===

/// Where policy comes from.
#[derive(Debug, Clone)]
pub struct WatchConfig {
    /// Files and directories, as the CLI's `-f` (not `-`: standard input cannot be watched).
    pub paths: Vec<PathBuf>,
    pub mesh: Option<PathBuf>,
    /// How often the files are checked (default 250 ms).
    pub interval: Duration,
}

impl WatchConfig {
    pub fn new(paths: Vec<PathBuf>, mesh: Option<PathBuf>) -> WatchConfig {
        WatchConfig {
            paths,
            mesh,
            interval: Duration::from_millis(250),
        }
    }
}

/// Polls the policy files and publishes each good compile (see the module header).
pub struct PolicyWatcher {
    publisher: Arc<Publisher>,
    status: Arc<Mutex<WatchStatus>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for PolicyWatcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PolicyWatcher")
            .field("status", &self.status())
            .finish_non_exhaustive()
    }
}

impl PolicyWatcher {
    /// Loads the policy once (synchronously: an invalid policy set at startup is an error, never
    /// an empty allow-all), publishes it as generation 1 and starts polling.
    pub fn start(config: WatchConfig, observer: Observer) -> Result<PolicyWatcher, Vec<LoadError>> {
        if config.paths.iter().any(|p| p.as_os_str() == "-") {
            return Err(vec![LoadError::new(
                Location::file("<stdin>"),
                "standard input cannot be watched; give files or directories",
            )]);
        }
        let mut seen = fingerprint(&config);
        let mut reuse = Reuse::default();
        let (snapshot, resources, warnings) = build(&config, 1, &mut reuse)?;
        let publisher = Publisher::new(snapshot);
        let status = Arc::new(Mutex::new(WatchStatus {
            generation: 1,
            resources,
            last_success: Some(SystemTime::now()),
            ..WatchStatus::default()
        }));
        observer(&Event::Loaded {
            generation: 1,
            resources,
            warnings,
            initial: true,
        });
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let publisher = publisher.clone();
            let status = status.clone();
            let stop = stop.clone();
            std::thread::Builder::new()
                .name("meshauthz-policy-watch".into())
                .spawn(move || {
                    let mut generation = 1;
                    while !stop.load(Ordering::Acquire) {
                        std::thread::park_timeout(config.interval);
                        if stop.load(Ordering::Acquire) {
                            break;
                        }
                        let now = fingerprint(&config);
                        if now == seen {
                            continue;
                        }
                        seen = now;
                        reload(
                            &config,
                            &publisher,
                            &status,
                            &observer,
                            &mut generation,
                            &mut reuse,
                        );
                    }
                })
                .map_err(|e| {
                    vec![LoadError::new(
                        Location::file("<watcher>"),
                        format!("cannot start the policy watcher: {e}"),
                    )]
                })?
        };
        Ok(PolicyWatcher {
            publisher,
            status,
            stop,
            thread: Some(thread),
        })
    }

    pub fn publisher(&self) -> &Arc<Publisher> {
        &self.publisher
    }

    pub fn shared(&self) -> SharedSnapshot {
        self.publisher.shared()
    }

    pub fn status(&self) -> WatchStatus {
        lock(&self.status).clone()
    }

    /// A cheap handle on the status, for hosts that outlive borrowing the watcher.
    pub fn status_handle(&self) -> StatusHandle {
        StatusHandle(self.status.clone())
    }

    /// Stops polling and waits for the thread (at most one reload in progress).
    pub fn stop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(t) = self.thread.take() {
            t.thread().unpark();
            let _ = t.join();
        }
    }
}

impl Drop for PolicyWatcher {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Read access to a watcher's [`WatchStatus`].
#[derive(Debug, Clone)]
pub struct StatusHandle(Arc<Mutex<WatchStatus>>);

impl StatusHandle {
    /// A handle on a status kept by another policy source (the Kubernetes watcher).
    pub fn new(status: Arc<Mutex<WatchStatus>>) -> StatusHandle {
        StatusHandle(status)
    }

    pub fn get(&self) -> WatchStatus {
        lock(&self.0).clone()
    }
}

fn reload(
    config: &WatchConfig,
    publisher: &Publisher,
    status: &Mutex<WatchStatus>,
    observer: &Observer,
    generation: &mut u64,
    reuse: &mut Reuse,
) {
    let next = *generation + 1;
    // A compiler bug must not kill the watcher: a panic is one more failed reload.
    // A panic may leave the compile cache with entries missing (slower, never wrong: entries
    // are keyed by content); the previous snapshot is only replaced after a good build.
    let built = catch_unwind(AssertUnwindSafe(|| build(config, next, reuse))).unwrap_or_else(|_| {
        Err(vec![LoadError::new(
            Location::file("<compile>"),
            "internal error: the policy compiler panicked (a meshauthz bug); keeping the last good snapshot",
        )])
    });
    match built {
        Ok((snapshot, resources, warnings)) => {
            publisher.publish_policy(snapshot);
            *generation = next;
            {
                let mut s = lock(status);
                s.generation = next;
                s.resources = resources;
                s.last_success = Some(SystemTime::now());
                s.reloads += 1;
            }
            observer(&Event::Loaded {
                generation: next,
                resources,
                warnings,
                initial: false,
            });
        }
        Err(errors) => {
            let errors: Vec<String> = errors.iter().map(ToString::to_string).collect();
            {
                let mut s = lock(status);
                s.reload_errors += 1;
                s.last_error = Some(ReloadError {
                    at: SystemTime::now(),
                    errors: errors.clone(),
                });
            }
            observer(&Event::ReloadFailed { errors });
        }
    }
}

/// What a reload takes over from the last one: compiled policies of unchanged resources, and
/// the last snapshot's policy classes.
struct Reuse {
    cache: policy_compiler::compile::CompileCache,
    previous: Option<Snapshot>,
}

impl Default for Reuse {
    fn default() -> Reuse {
        Reuse {
            // The watcher serves decisions; nothing here explains or prints policies.
            cache: policy_compiler::compile::CompileCache::for_decisions(),
            previous: None,
        }
    }
}

/// Loads, compiles and indexes the policy set.
fn build(
    config: &WatchConfig,
    generation: u64,
    reuse: &mut Reuse,
) -> Result<(Snapshot, Resources, Vec<String>), Vec<LoadError>> {
    let compiled = crate::files::compile_inputs_with(
        &config.paths,
        config.mesh.as_deref(),
        Some(&mut reuse.cache),
    )?;
    let resources = Resources::of(&compiled);
    let warnings = compiled.warnings.iter().map(ToString::to_string).collect();
    let snapshot =
        Snapshot::build_reusing(compiled, generation, reuse.previous.as_ref()).map_err(|e| {
            let file = config
                .paths
                .first()
                .map(|p| p.display().to_string())
                .unwrap_or_default();
            vec![LoadError::new(Location::file(file), e.to_string())]
        })?;
    reuse.previous = Some(snapshot.clone());
    Ok((snapshot, resources, warnings))
}

/// What a file looked like at one poll.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Stamp {
    Unreadable(String),
    File {
        len: u64,
        modified: Option<SystemTime>,
        hash: u64,
    },
}

/// Every input file (directories re-listed) with its size, mtime and a content hash. Content is
/// hashed so that a rewrite within the file system's mtime granularity is still seen.
fn fingerprint(config: &WatchConfig) -> Vec<(PathBuf, Stamp)> {
    let mut files = match crate::files::policy_files(&config.paths) {
        Ok(f) => f,
        Err(e) => return vec![(PathBuf::new(), Stamp::Unreadable(e.to_string()))],
    };
    files.extend(config.mesh.iter().cloned());
    files.into_iter().map(|f| (f.clone(), stamp(&f))).collect()
}

fn stamp(path: &Path) -> Stamp {
    let meta = match std::fs::metadata(path) {
        Ok(m) => m,
        Err(e) => return Stamp::Unreadable(e.kind().to_string()),
    };
    let mut h = DefaultHasher::new();
    // A file too large to load is not read at every poll (loading it reports the error).
    if meta.len() <= policy_compiler::load::MAX_INPUT_BYTES as u64 {
        match std::fs::read(path) {
            Ok(bytes) => bytes.hash(&mut h),
            Err(e) => return Stamp::Unreadable(e.kind().to_string()),
        }
    }
    Stamp::File {
        len: meta.len(),
        modified: meta.modified().ok(),
        hash: h.finish(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;
    use std::time::Instant;

    const WORKLOADS: &str =
        "workloads:\n  - {namespace: foo, name: httpbin, labels: {app: httpbin}}\n";

    fn deny_path(path: &str) -> String {
        format!(
            "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {{name: deny, namespace: foo}}\nspec:\n  action: DENY\n  rules:\n  - to:\n    - operation:\n        paths: [\"{path}\"]\n"
        )
    }

    fn decide_path(shared: &SharedSnapshot, path: &str) -> authz_engine::Verdict {
        let req = authz_engine::RequestAttrs {
            workload: "foo/httpbin".into(),
            method: "GET".into(),
            path: path.into(),
            host: "httpbin".into(),
            ..Default::default()
        };
        authz_engine::decide(&shared.load(), &req).verdict
    }

    /// Polls `f` until it holds. Generous: the watcher polls every 250 ms, but a test machine
    /// running other test binaries on two cores can starve its thread for seconds.
    fn wait_for(mut f: impl FnMut() -> bool) -> bool {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if f() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }

    #[test]
    fn reloads_changes_and_keeps_the_last_good_snapshot() {
        let dir = tempfile::tempdir().unwrap();
        let mesh = dir.path().join("mesh.yaml");
        std::fs::write(&mesh, WORKLOADS).unwrap();
        let policies = dir.path().join("policies");
        std::fs::create_dir(&policies).unwrap();
        std::fs::write(policies.join("deny.yaml"), deny_path("/a")).unwrap();
        let events = Arc::new(Mutex::new(Vec::new()));
        let seen = events.clone();
        let mut config = WatchConfig::new(vec![policies.clone()], Some(mesh));
        config.interval = Duration::from_millis(20);
        let mut w = PolicyWatcher::start(
            config,
            Arc::new(move |e: &Event| seen.lock().unwrap().push(e.clone())),
        )
        .unwrap();
        let shared = w.shared();
        assert_eq!(decide_path(&shared, "/a"), authz_engine::Verdict::Deny);
        assert_eq!(decide_path(&shared, "/b"), authz_engine::Verdict::Allow);

        // A change is published with the next generation.
        std::fs::write(policies.join("deny.yaml"), deny_path("/b")).unwrap();
        assert!(wait_for(
            || decide_path(&shared, "/b") == authz_engine::Verdict::Deny
        ));
        assert_eq!(shared.load().generation, 2);
        assert_eq!(w.status().reloads, 1);

        // A new file in the directory is picked up; an invalid one keeps the last good snapshot.
        std::fs::write(policies.join("zz-bad.yaml"), "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: bad, namespace: foo}\nspec:\n  action: NOPE\n").unwrap();
        assert!(wait_for(|| w.status().reload_errors == 1));
        let status = w.status();
        let err = status.last_error.unwrap();
        assert!(
            err.errors.iter().any(|e| e.contains("zz-bad.yaml")),
            "{err:?}"
        );
        assert_eq!(status.generation, 2);
        assert_eq!(decide_path(&shared, "/b"), authz_engine::Verdict::Deny);
        assert!(events
            .lock()
            .unwrap()
            .iter()
            .any(|e| matches!(e, Event::ReloadFailed { .. })));

        // Fixing it publishes again.
        std::fs::remove_file(policies.join("zz-bad.yaml")).unwrap();
        assert!(wait_for(|| w.status().generation == 3));
        w.stop();
    }

    #[test]
    fn invalid_policy_at_startup_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("p.yaml");
        std::fs::write(&f, "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: bad, namespace: foo}\nspec:\n  action: NOPE\n").unwrap();
        let errors =
            PolicyWatcher::start(WatchConfig::new(vec![f], None), Arc::new(|_: &Event| {}))
                .unwrap_err();
        assert!(!errors.is_empty());
        let missing = dir.path().join("missing.yaml");
        assert!(PolicyWatcher::start(
            WatchConfig::new(vec![missing], None),
            Arc::new(|_: &Event| {})
        )
        .is_err());
    }

    #[test]
    fn policy_reload_keeps_fetched_keys_and_keys_keep_policy() {
        let dir = tempfile::tempdir().unwrap();
        let mesh = dir.path().join("mesh.yaml");
        std::fs::write(&mesh, WORKLOADS).unwrap();
        let ra = |extra: &str| {
            format!("apiVersion: security.istio.io/v1\nkind: RequestAuthentication\nmetadata: {{name: ra, namespace: foo}}\nspec:\n  jwtRules:\n  - issuer: https://issuer.test\n    jwksUri: http://127.0.0.1:1/jwks.json\n{extra}")
        };
        let f = dir.path().join("p.yaml");
        std::fs::write(&f, ra("")).unwrap();
        let calls = Arc::new(AtomicUsize::new(0));
        let mut w = PolicyWatcher::start(
            WatchConfig::new(vec![f.clone()], Some(mesh)),
            Arc::new(|_: &Event| {}),
        )
        .unwrap();
        let c = calls.clone();
        w.publisher().on_policy_change(move || {
            c.fetch_add(1, Ordering::SeqCst);
        });
        let keys = Arc::new(
            KeySet::parse(r#"{"keys":[{"kty":"EC","kid":"k","crv":"P-256","x":"Hehpo4gTB5e5V427d4jhbz8dJKVDRjQgt4gYpH80aB4","y":"Nr8BG4ePqO3bErXrDnPDbj8o5wiqy116jaaRbB4w-FM"}]}"#)
                .unwrap(),
        );
        let p = w.publisher().clone();
        p.publish_keys("http://127.0.0.1:1/jwks.json", keys.clone());
        // Keys of a URI no policy names are not kept.
        p.publish_keys("http://elsewhere/jwks.json", keys);
        assert_eq!(p.current().generation, 1);
        std::fs::write(&f, ra("    forwardOriginalToken: true\n")).unwrap();
        assert!(wait_for(|| p.current().generation == 2));
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        let state = lock(&p.state);
        assert_eq!(state.keys.len(), 1);
        assert!(state.keys.contains_key("http://127.0.0.1:1/jwks.json"));
        drop(state);
        w.stop();
    }
}
