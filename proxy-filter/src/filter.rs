//! [`FilterConfig`]: everything one Envoy filter config (one workload) owns, and the per-request
//! path [`FilterConfig::on_request_headers`].
//!
//! State owned:
//!
//! ```text
//!  FilterConfig (one per Envoy filter config, shared by every stream on every worker)
//!    workload        "<namespace>/<name>", checked against the first snapshot
//!    snapshot        SharedSnapshot = Arc<ArcSwap<Snapshot>>: load() once per request
//!    plan            ArcSwap<HeaderPlan>: header names to read, recomputed when the snapshot's
//!                    generation changes (not per request)
//!    watcher, jwks   authz_loader's PolicyWatcher (policy files polled, good compiles swapped in,
//!                    bad ones logged and skipped) and JwksStore (jwksUri keys in the background);
//!                    both stop when the config is dropped
//! ```
//!
//! Streams own nothing: the hot path is one ArcSwap load, the attribute and header reads, the
//! decision, and the answer.

use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use authz_engine::{decide, Decision, Snapshot, Verdict};
use authz_loader::jwks::{JwksConfig, JwksStore};
use authz_loader::watch::{Event, Observer, PolicyWatcher, SharedSnapshot, WatchConfig};
use policy_compiler::LoadError;

use crate::answer::{self, HeadersStatus};
use crate::config::{ConfigError, Settings};
use crate::logging::{self, Level};
use crate::request::{self, Attribute, StreamHost};

/// With `testPanic` (test builds only), a request for this path panics inside request handling.
pub const PANIC_PATH: &str = "/__meshauthz_test_panic";

/// How long config loading waits for the first fetch of the policy's `jwksUri`s, so that the
/// first requests already have keys. After that a token of an issuer without keys gets 401.
pub const JWKS_WARMUP: Duration = Duration::from_secs(2);

/// How a config is loaded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Load once, no background threads: `envoy --mode validate`, and tests.
    Once,
    /// Load, then watch the files and keep `jwksUri` keys fresh in the background.
    Watch,
}

/// The header names to read under one snapshot generation.
#[derive(Debug)]
struct HeaderPlan {
    generation: u64,
    names: Vec<String>,
}

/// One Envoy filter config: one workload's live policy (see the module header).
#[derive(Debug)]
pub struct FilterConfig {
    workload: String,
    snapshot: SharedSnapshot,
    plan: ArcSwap<HeaderPlan>,
    watcher: Option<PolicyWatcher>,
    jwks: Option<JwksStore>,
    #[cfg(feature = "test-panic")]
    test_panic: bool,
}

impl FilterConfig {
    /// Loads the policy set for `settings`. Any error (a file that cannot be read, an invalid
    /// policy, a workload the policy set does not know) refuses the config: there is never a
    /// filter that allows everything because its policy is missing.
    pub fn load(settings: Settings, mode: Mode) -> Result<FilterConfig, ConfigError> {
        let Settings {
            workload,
            policies,
            mesh,
            #[cfg(feature = "test-panic")]
            test_panic,
        } = settings;
        let (snapshot, watcher, jwks) = match mode {
            Mode::Once => {
                // Compiled for decisions only: the filter never explains or prints policies.
                let mut cache = policy_compiler::compile::CompileCache::for_decisions();
                let compiled =
                    authz_loader::compile_inputs_with(&policies, mesh.as_deref(), Some(&mut cache))
                        .map_err(|e| load_error(&e))?;
                log_warnings(compiled.warnings.iter().map(ToString::to_string));
                let snapshot =
                    Snapshot::build(compiled, 1).map_err(|e| ConfigError(e.to_string()))?;
                (Arc::new(ArcSwap::from_pointee(snapshot)), None, None)
            }
            Mode::Watch => {
                let (watcher, jwks) = start_watching(&workload, policies, mesh)?;
                (watcher.shared(), Some(watcher), jwks)
            }
        };
        let current = snapshot.load_full();
        if current.workload(&workload).is_none() {
            return Err(unknown_workload(&current, &workload));
        }
        if let Some(store) = &jwks {
            if !current.jwks_uris().is_empty() {
                let handle = store.handle();
                let publisher = watcher.as_ref().map(|w| w.publisher().clone());
                let deadline = Instant::now() + JWKS_WARMUP;
                while Instant::now() < deadline
                    && !publisher.as_ref().is_some_and(|p| handle.warmed_up(p))
                {
                    std::thread::sleep(Duration::from_millis(10));
                }
            }
        }
        let plan = HeaderPlan {
            generation: current.generation,
            names: request::header_names(&current, &workload),
        };
        Ok(FilterConfig {
            workload,
            snapshot,
            plan: ArcSwap::from_pointee(plan),
            watcher,
            jwks,
            #[cfg(feature = "test-panic")]
            test_panic,
        })
    }

    pub fn workload(&self) -> &str {
        &self.workload
    }

    /// The snapshot being served.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.snapshot.load_full()
    }

    /// Whether policy files are watched.
    pub fn watching(&self) -> bool {
        self.watcher.is_some()
    }

    /// Whether `jwksUri` keys are fetched in the background.
    pub fn fetching_keys(&self) -> bool {
        self.jwks.is_some()
    }

    /// Decides one request and answers it on `host`.
    pub fn on_request_headers(&self, host: &mut impl StreamHost) -> HeadersStatus {
        let snapshot = self.snapshot.load();
        let mut plan = self.plan.load();
        if plan.generation != snapshot.generation {
            // A reload: recompute once; concurrent streams may race to store the same value.
            self.plan.store(Arc::new(HeaderPlan {
                generation: snapshot.generation,
                names: request::header_names(&snapshot, &self.workload),
            }));
            plan = self.plan.load();
        }
        let attrs = request::read_request(host, &self.workload, &plan.names, unix_now());
        #[cfg(feature = "test-panic")]
        if self.test_panic && attrs.path.starts_with(PANIC_PATH) {
            test_panic();
        }
        let decision = decide(&snapshot, &attrs);
        if decision.verdict != Verdict::Allow && logging::enabled(Level::Debug) {
            logging::log(Level::Debug, &describe(&decision, &attrs));
        }
        let answer = answer::answer(&decision, || {
            let scheme = host
                .attribute_bytes(Attribute::RequestScheme)
                .map(String::from_utf8_lossy)
                .unwrap_or_default();
            answer::realm(&scheme, &attrs.host, &attrs.path)
        });
        answer::apply(&answer, host)
    }
}

#[cfg(feature = "test-panic")]
#[allow(
    clippy::panic,
    reason = "test-only fault injection, enabled by the `test-panic` feature and `testPanic`"
)]
fn test_panic() {
    panic!("meshauthz test panic (testPanic is set)");
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// One log line about a non-ALLOW decision.
fn describe(d: &Decision, r: &authz_engine::RequestAttrs) -> String {
    let by: Vec<String> = d.determining.iter().map(ToString::to_string).collect();
    let reason = serde_json::to_value(&d.reason)
        .ok()
        .map(|v| v.to_string())
        .unwrap_or_default();
    format!(
        "{} {} {} {} principal={} by [{}] {reason} errors={:?} generation={}",
        d.verdict.as_str(),
        r.workload,
        r.method,
        r.path,
        r.source_principal.as_deref().unwrap_or("-"),
        by.join(", "),
        d.errors,
        d.generation,
    )
}

fn load_error(errors: &[LoadError]) -> ConfigError {
    let lines: Vec<String> = errors.iter().map(ToString::to_string).collect();
    ConfigError(format!("cannot load the policy set: {}", lines.join("; ")))
}

fn unknown_workload(snapshot: &Snapshot, workload: &str) -> ConfigError {
    let mut known: Vec<String> = snapshot
        .compiled()
        .workloads
        .iter()
        .map(|w| w.key())
        .collect();
    known.sort();
    let shown = if known.is_empty() {
        "none: list it under `workloads:` in the mesh file".to_string()
    } else if known.len() > 10 {
        format!("{}, ... ({} in all)", known[..10].join(", "), known.len())
    } else {
        known.join(", ")
    };
    ConfigError(format!(
        "unknown workload `{workload}`: the policy set's workloads are {shown}"
    ))
}

fn log_warnings(warnings: impl Iterator<Item = String>) {
    for w in warnings {
        logging::log(Level::Warn, &w);
    }
}

/// Starts the policy watcher and the JWKS store; their events go to Envoy's log.
fn start_watching(
    workload: &str,
    policies: Vec<PathBuf>,
    mesh: Option<PathBuf>,
) -> Result<(PolicyWatcher, Option<JwksStore>), ConfigError> {
    // Set once the watcher exists, so that a reload dropping the workload is called out.
    let shared: Arc<OnceLock<SharedSnapshot>> = Arc::new(OnceLock::new());
    let observer: Observer = {
        let shared = shared.clone();
        let workload = workload.to_string();
        Arc::new(move |event: &Event| on_event(event, &workload, shared.get()))
    };
    let watcher = PolicyWatcher::start(WatchConfig::new(policies, mesh), observer.clone())
        .map_err(|e| load_error(&e))?;
    let _ = shared.set(watcher.shared());
    let jwks = match JwksStore::start(watcher.publisher().clone(), JwksConfig::default(), observer)
    {
        Ok(store) => Some(store),
        Err(e) => {
            // Without the store, tokens of `jwksUri` issuers get 401: fail closed, but say so.
            logging::log(
                Level::Error,
                &format!("cannot start the jwksUri fetcher: {e}; tokens of jwksUri issuers will be rejected (401)"),
            );
            None
        }
    };
    Ok((watcher, jwks))
}

fn on_event(event: &Event, workload: &str, shared: Option<&SharedSnapshot>) {
    match event {
        Event::Loaded {
            generation,
            resources,
            warnings,
            initial,
        } => {
            log_warnings(warnings.iter().cloned());
            let what = if *initial { "loaded" } else { "reloaded" };
            logging::log(
                Level::Info,
                &format!(
                    "{workload}: policy {what} (generation {generation}: {} AuthorizationPolicies, {} PeerAuthentications, {} RequestAuthentications, {} workloads)",
                    resources.authorization, resources.peer, resources.request, resources.workloads
                ),
            );
            if !*initial
                && shared.is_some_and(|s| {
                    let snapshot = s.load();
                    snapshot.generation == *generation && snapshot.workload(workload).is_none()
                })
            {
                logging::log(
                    Level::Error,
                    &format!("{workload}: the reloaded policy set has no workload `{workload}`; every request is denied until it does"),
                );
            }
        }
        Event::ReloadFailed { errors } => logging::log(
            Level::Error,
            &format!(
                "{workload}: policy update rejected, the last good policy keeps serving: {}",
                errors.join("; ")
            ),
        ),
        Event::JwksFetched { uri, keys } => {
            logging::log(Level::Info, &format!("jwksUri `{uri}`: {keys} keys"))
        }
        Event::JwksFailed {
            uri,
            error,
            kept_keys,
        } => logging::log(
            Level::Warn,
            &format!("jwksUri `{uri}`: fetch failed ({error}); keeping {kept_keys} keys"),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::request::fake::FakeStream;
    use std::path::Path;

    const MESH: &str = "mesh:\n  pathNormalization: DECODE_AND_MERGE_SLASHES\nworkloads:\n  - {namespace: default, name: httpbin, labels: {app: httpbin}}\n";

    const POLICY: &str = r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-admin, namespace: default}
spec:
  selector: {matchLabels: {app: httpbin}}
  action: DENY
  rules:
  - to: [{operation: {paths: ["/admin"]}}]
  - when: [{key: "request.headers[x-role]", values: ["admin"]}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: sleep-only, namespace: default}
spec:
  selector: {matchLabels: {app: httpbin}}
  action: DENY
  rules:
  - from: [{source: {notPrincipals: ["cluster.local/ns/default/sa/sleep"]}}]
    to: [{operation: {paths: ["/sleep-only"]}}]
"#;

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p
    }

    fn load(dir: &Path, workload: &str) -> Result<FilterConfig, ConfigError> {
        let settings = Settings {
            workload: workload.into(),
            policies: vec![write(dir, "policy.yaml", POLICY)],
            mesh: Some(write(dir, "mesh.yaml", MESH)),
            #[cfg(feature = "test-panic")]
            test_panic: false,
        };
        FilterConfig::load(settings, Mode::Once)
    }

    fn status(c: &FilterConfig, mut s: FakeStream) -> (HeadersStatus, Option<u32>) {
        let st = c.on_request_headers(&mut s);
        (st, s.reply.map(|r| r.0))
    }

    #[test]
    fn decides_per_request() {
        let dir = tempfile::tempdir().unwrap();
        let c = load(dir.path(), "default/httpbin").unwrap();
        assert!(!c.watching());
        let allow = (HeadersStatus::Continue, None);
        let deny = (HeadersStatus::StopIteration, Some(403));
        assert_eq!(status(&c, FakeStream::http("/hello")), allow);
        assert_eq!(status(&c, FakeStream::http("/admin")), deny);
        // DECODE_AND_MERGE_SLASHES from the mesh file.
        assert_eq!(status(&c, FakeStream::http("/%2Fadmin")), deny);
        assert_eq!(
            status(
                &c,
                FakeStream::http("/x")
                    .header("x-role", "user")
                    .header("x-role", "admin")
            ),
            deny
        );
        assert_eq!(
            status(&c, FakeStream::http("/x").header("x-role", "user")),
            allow
        );
        assert_eq!(status(&c, FakeStream::http("/sleep-only")), deny);
        let sleep = "spiffe://cluster.local/ns/default/sa/sleep";
        assert_eq!(status(&c, FakeStream::mtls("/sleep-only", sleep)), allow);
        let other = "spiffe://cluster.local/ns/other/sa/intruder";
        assert_eq!(status(&c, FakeStream::mtls("/sleep-only", other)), deny);
    }

    #[test]
    fn ip_blocks_see_the_physical_peer_not_x_forwarded_for() {
        let dir = tempfile::tempdir().unwrap();
        let policy = "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: from-doc-net, namespace: default}\nspec:\n  selector: {matchLabels: {app: httpbin}}\n  rules:\n  - from: [{source: {ipBlocks: [\"203.0.113.0/24\"]}}]\n";
        let settings = Settings {
            workload: "default/httpbin".into(),
            policies: vec![write(dir.path(), "policy.yaml", policy)],
            mesh: Some(write(dir.path(), "mesh.yaml", MESH)),
            #[cfg(feature = "test-panic")]
            test_panic: false,
        };
        let c = FilterConfig::load(settings, Mode::Once).unwrap();
        // XFF (and so Envoy's `source.address`) claim 203.0.113.10; the peer is 10.0.0.9.
        let forged = || {
            let mut s = FakeStream::http("/").header("x-forwarded-for", "203.0.113.10");
            s.strings
                .insert(Attribute::SourceAddress as u32, "203.0.113.10:0".into());
            s.peer = Some(("10.0.0.9".parse().unwrap(), 50000));
            s
        };
        assert_eq!(status(&c, forged()).1, Some(403));
        let mut real = forged();
        real.peer = Some(("203.0.113.5".parse().unwrap(), 50000));
        assert_eq!(status(&c, real), (HeadersStatus::Continue, None));
    }

    #[test]
    fn reads_only_the_headers_it_needs() {
        let dir = tempfile::tempdir().unwrap();
        let c = load(dir.path(), "default/httpbin").unwrap();
        let mut s = FakeStream::http("/");
        c.on_request_headers(&mut s);
        assert_eq!(*s.reads.borrow(), ["x-role"]);

        // With a RequestAuthentication (a header location of its own) and trusted proxies: the
        // token headers and the client address chain too.
        let jwt = format!(
            "{POLICY}---\napiVersion: security.istio.io/v1\nkind: RequestAuthentication\nmetadata: {{name: jwt, namespace: default}}\nspec:\n  jwtRules:\n  - issuer: https://issuer.example\n    jwks: '{{\"keys\": []}}'\n    fromHeaders: [{{name: X-Token}}]\n"
        );
        let mesh = MESH.replace(
            "pathNormalization",
            "numTrustedProxies: 1\n  pathNormalization",
        );
        let settings = Settings {
            workload: "default/httpbin".into(),
            policies: vec![write(dir.path(), "jwt.yaml", &jwt)],
            mesh: Some(write(dir.path(), "mesh-xff.yaml", &mesh)),
            #[cfg(feature = "test-panic")]
            test_panic: false,
        };
        let c = FilterConfig::load(settings, Mode::Once).unwrap();
        let mut s = FakeStream::http("/");
        c.on_request_headers(&mut s);
        let mut expected: Vec<String> = request::TOKEN_HEADERS
            .iter()
            .chain(&[request::FORWARDED_FOR, "x-role", "x-token"])
            .map(|s| s.to_string())
            .collect();
        expected.sort();
        assert_eq!(*s.reads.borrow(), expected);
    }

    #[test]
    fn refuses_unknown_workload_missing_files_and_bad_policy() {
        let dir = tempfile::tempdir().unwrap();
        let e = load(dir.path(), "default/nope").unwrap_err();
        assert!(e.0.contains("unknown workload `default/nope`"), "{e}");
        assert!(e.0.contains("default/httpbin"), "{e}");

        let missing = Settings {
            workload: "default/httpbin".into(),
            policies: vec![dir.path().join("absent.yaml")],
            mesh: None,
            #[cfg(feature = "test-panic")]
            test_panic: false,
        };
        let e = FilterConfig::load(missing, Mode::Once).unwrap_err();
        assert!(
            e.0.contains("absent.yaml") && e.0.contains("cannot read"),
            "{e}"
        );

        let bad = write(
            dir.path(),
            "bad.yaml",
            "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: x, namespace: default}\nspec: {action: DENY}\n",
        );
        let e = FilterConfig::load(
            Settings {
                workload: "default/httpbin".into(),
                policies: vec![bad],
                mesh: Some(dir.path().join("mesh.yaml")),
                #[cfg(feature = "test-panic")]
                test_panic: false,
            },
            Mode::Once,
        )
        .unwrap_err();
        assert!(e.0.contains("bad.yaml"), "{e}");
    }

    #[test]
    fn watch_mode_starts_the_watcher() {
        let dir = tempfile::tempdir().unwrap();
        let settings = Settings {
            workload: "default/httpbin".into(),
            policies: vec![write(dir.path(), "policy.yaml", POLICY)],
            mesh: Some(write(dir.path(), "mesh.yaml", MESH)),
            #[cfg(feature = "test-panic")]
            test_panic: false,
        };
        let c = FilterConfig::load(settings, Mode::Watch).unwrap();
        assert!(c.watching());
        assert!(c.fetching_keys());
        assert_eq!(c.snapshot().generation, 1);
        assert_eq!(status(&c, FakeStream::http("/admin")).1, Some(403));
    }
}
