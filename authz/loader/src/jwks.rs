//! `jwksUri` keys kept fresh in the background: [`JwksStore`] fetches every `jwksUri` the
//! current policy names (blocking HTTP with the provider's timeout, on its own std thread, never
//! on the request path) and publishes the keys through the [`Publisher`], which swaps them into
//! the served snapshot without touching policy.
//!
//! State owned: per URI, the fetch history ([`JwksStatus`]) and when the next fetch is due.
//!
//! - Refresh every `refresh_interval` (Istio's default: 20 minutes).
//! - A failed fetch keeps the last-known-good keys and is retried after `retry_interval`
//!   (30 s, or the refresh interval when shorter).
//! - [`JwksStore::request_refresh`]: a token named a `kid` no key has; refetch now, at most once
//!   per `on_demand_interval` (30 s) per URI.
//! - A URI never fetched has no keys in the snapshot, so the engine answers 401 for its tokens.
//! - A policy reload that names a new URI wakes the thread at once.
//!
//! Checks never wait for a fetch: the thread publishes, requests read whatever is published.

use std::collections::HashMap;
use std::sync::mpsc::{channel, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use crate::watch::{Event, Observer, Publisher};

/// Timing of fetches.
#[derive(Debug, Clone, Copy)]
pub struct JwksConfig {
    /// How long fetched keys are used before they are fetched again.
    pub refresh_interval: Duration,
    /// How soon a failed fetch is retried (capped at `refresh_interval`).
    pub retry_interval: Duration,
    /// The least time between two on-demand (unknown `kid`) fetches of one URI.
    pub on_demand_interval: Duration,
}

impl Default for JwksConfig {
    fn default() -> Self {
        JwksConfig {
            refresh_interval: Duration::from_secs(20 * 60),
            retry_interval: Duration::from_secs(30),
            on_demand_interval: Duration::from_secs(30),
        }
    }
}

/// The fetch history of one `jwksUri`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct JwksStatus {
    pub uri: String,
    /// Keys currently published for this URI (last-known-good after a failure).
    pub keys: usize,
    pub last_attempt: Option<SystemTime>,
    pub last_success: Option<SystemTime>,
    /// The error of the most recent fetch, `None` once a fetch succeeds.
    pub last_error: Option<String>,
    pub fetches: u64,
    pub failures: u64,
}

#[derive(Debug, Default)]
struct UriState {
    status: JwksStatus,
    /// `None`: fetch as soon as possible.
    next_due: Option<Instant>,
    last_on_demand: Option<Instant>,
}

enum Msg {
    Wake,
    Stop,
}

struct Inner {
    config: JwksConfig,
    state: Mutex<HashMap<String, UriState>>,
    tx: Mutex<Sender<Msg>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Background `jwksUri` fetcher (see the module header).
pub struct JwksStore {
    inner: Arc<Inner>,
    thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for JwksStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwksStore")
            .field("config", &self.inner.config)
            .finish_non_exhaustive()
    }
}

/// A cheap, cloneable handle for the request path and the admin port.
#[derive(Clone)]
pub struct JwksHandle(Arc<Inner>);

impl std::fmt::Debug for JwksHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("JwksHandle")
    }
}

impl JwksStore {
    /// Starts the fetch thread; the first fetch of every URI begins at once.
    pub fn start(
        publisher: Arc<Publisher>,
        config: JwksConfig,
        observer: Observer,
    ) -> std::io::Result<JwksStore> {
        let (tx, rx) = channel();
        let inner = Arc::new(Inner {
            config,
            state: Mutex::new(HashMap::new()),
            tx: Mutex::new(tx.clone()),
        });
        {
            let tx = Mutex::new(tx);
            publisher.on_policy_change(move || {
                let _ = lock(&tx).send(Msg::Wake);
            });
        }
        let thread = {
            let inner = inner.clone();
            std::thread::Builder::new()
                .name("meshauthz-jwks".into())
                .spawn(move || loop {
                    let wait = inner.fetch_due(&publisher, &observer);
                    match rx.recv_timeout(wait) {
                        Ok(Msg::Wake) | Err(RecvTimeoutError::Timeout) => {}
                        Ok(Msg::Stop) | Err(RecvTimeoutError::Disconnected) => break,
                    }
                })?
        };
        Ok(JwksStore {
            inner,
            thread: Some(thread),
        })
    }

    pub fn handle(&self) -> JwksHandle {
        JwksHandle(self.inner.clone())
    }

    /// Stops the thread. A fetch in progress is not waited for (it ends by its own timeout).
    pub fn stop(&mut self) {
        let _ = lock(&self.inner.tx).send(Msg::Stop);
        self.thread.take();
    }
}

impl Drop for JwksStore {
    fn drop(&mut self) {
        self.stop();
    }
}

impl JwksHandle {
    /// Asks for a refetch of `uri` now (a token named an unknown `kid`). Returns whether a
    /// fetch was scheduled: at most one per `on_demand_interval` per URI; URIs the policy does
    /// not name are ignored. Never blocks on a fetch.
    pub fn request_refresh(&self, uri: &str) -> bool {
        {
            let mut state = lock(&self.0.state);
            let Some(s) = state.get_mut(uri) else {
                return false;
            };
            let now = Instant::now();
            if s.last_on_demand
                .is_some_and(|t| now.duration_since(t) < self.0.config.on_demand_interval)
            {
                return false;
            }
            s.last_on_demand = Some(now);
            s.next_due = None;
        }
        let _ = lock(&self.0.tx).send(Msg::Wake);
        true
    }

    /// Every URI the store has seen, sorted.
    pub fn statuses(&self) -> Vec<JwksStatus> {
        let mut out: Vec<JwksStatus> = lock(&self.0.state)
            .values()
            .map(|s| s.status.clone())
            .collect();
        out.sort_by(|a, b| a.uri.cmp(&b.uri));
        out
    }

    /// Whether every URI of the current policy has had at least one fetch attempt (readiness).
    pub fn warmed_up(&self, publisher: &Publisher) -> bool {
        let state = lock(&self.0.state);
        publisher.policy().jwks_uris().iter().all(|(u, _)| {
            state
                .get(u)
                .is_some_and(|s| s.status.last_attempt.is_some())
        })
    }
}

impl Inner {
    /// Fetches every due URI (in parallel, each bounded by its timeout), publishes the results
    /// and returns how long to sleep.
    fn fetch_due(&self, publisher: &Publisher, observer: &Observer) -> Duration {
        let uris = publisher.policy().jwks_uris();
        let now = Instant::now();
        let due: Vec<(String, Duration)> = {
            let mut state = lock(&self.state);
            state.retain(|u, _| uris.iter().any(|(x, _)| x == u));
            uris.iter()
                .filter(|(u, _)| {
                    let s = state.entry(u.clone()).or_insert_with(|| UriState {
                        status: JwksStatus {
                            uri: u.clone(),
                            ..JwksStatus::default()
                        },
                        ..UriState::default()
                    });
                    s.next_due.is_none_or(|t| t <= now)
                })
                .cloned()
                .collect()
        };
        if !due.is_empty() {
            let results: Vec<(String, Result<authz_engine::jwt::KeySet, String>)> =
                std::thread::scope(|scope| {
                    let handles: Vec<_> = due
                        .iter()
                        .map(|(uri, timeout)| {
                            let uri = uri.clone();
                            let timeout = *timeout;
                            scope.spawn(move || {
                                let r = crate::files::fetch_jwks(&uri, timeout);
                                (uri, r)
                            })
                        })
                        .collect();
                    handles
                        .into_iter()
                        .zip(due.iter())
                        .map(|(h, (uri, _))| {
                            h.join().unwrap_or_else(|_| {
                                (uri.clone(), Err("the fetch panicked".to_string()))
                            })
                        })
                        .collect()
                });
            for (uri, result) in results {
                self.record(publisher, observer, uri, result);
            }
        }
        let state = lock(&self.state);
        let now = Instant::now();
        state
            .values()
            .map(|s| {
                s.next_due
                    .map_or(Duration::ZERO, |t| t.saturating_duration_since(now))
            })
            .min()
            .unwrap_or(Duration::from_secs(60))
            .clamp(Duration::from_millis(10), Duration::from_secs(60))
    }

    fn record(
        &self,
        publisher: &Publisher,
        observer: &Observer,
        uri: String,
        result: Result<authz_engine::jwt::KeySet, String>,
    ) {
        let result = result.and_then(|k| {
            if k.is_empty() {
                Err(format!("`{uri}`: the JWKS has no usable key"))
            } else {
                Ok(k)
            }
        });
        let retry = self.config.retry_interval.min(self.config.refresh_interval);
        let event = {
            let mut state = lock(&self.state);
            let Some(s) = state.get_mut(&uri) else {
                return; // no longer named by the policy
            };
            s.status.fetches += 1;
            s.status.last_attempt = Some(SystemTime::now());
            match result {
                Ok(keys) => {
                    let n = keys.len();
                    publisher.publish_keys(&uri, Arc::new(keys));
                    s.status.keys = n;
                    s.status.last_success = s.status.last_attempt;
                    s.status.last_error = None;
                    s.next_due = Some(Instant::now() + self.config.refresh_interval);
                    Event::JwksFetched { uri, keys: n }
                }
                Err(error) => {
                    s.status.failures += 1;
                    s.status.last_error = Some(error.clone());
                    s.next_due = Some(Instant::now() + retry);
                    Event::JwksFailed {
                        uri,
                        error,
                        kept_keys: s.status.keys,
                    }
                }
            }
        };
        observer(&event);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::watch::{PolicyWatcher, WatchConfig};
    use std::io::{Read, Write};
    use std::net::TcpListener;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

    const JWKS: &str = r#"{"keys":[{"kty":"EC","kid":"ec-1","alg":"ES256","crv":"P-256","x":"Hehpo4gTB5e5V427d4jhbz8dJKVDRjQgt4gYpH80aB4","y":"Nr8BG4ePqO3bErXrDnPDbj8o5wiqy116jaaRbB4w-FM"}]}"#;

    /// A JWKS server on 127.0.0.1 that answers while `up` is set and counts requests.
    fn serve(up: Arc<AtomicBool>, hits: Arc<AtomicUsize>) -> String {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        std::thread::spawn(move || {
            for stream in l.incoming() {
                let Ok(mut s) = stream else { continue };
                let mut buf = [0u8; 4096];
                let _ = s.read(&mut buf);
                hits.fetch_add(1, Ordering::SeqCst);
                let resp = if up.load(Ordering::SeqCst) {
                    format!(
                        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{JWKS}",
                        JWKS.len()
                    )
                } else {
                    "HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\nconnection: close\r\n\r\n".to_string()
                };
                let _ = s.write_all(resp.as_bytes());
            }
        });
        format!("http://{addr}/jwks.json")
    }

    fn wait_for(mut f: impl FnMut() -> bool) -> bool {
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if f() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }

    #[test]
    fn fetches_keeps_last_good_keys_and_rate_limits_on_demand() {
        let up = Arc::new(AtomicBool::new(true));
        let hits = Arc::new(AtomicUsize::new(0));
        let uri = serve(up.clone(), hits.clone());
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("p.yaml");
        std::fs::write(&f, format!("apiVersion: security.istio.io/v1\nkind: RequestAuthentication\nmetadata: {{name: ra, namespace: foo}}\nspec:\n  jwtRules:\n  - issuer: https://issuer.test\n    jwksUri: {uri}\n")).unwrap();
        let w = PolicyWatcher::start(WatchConfig::new(vec![f], None), Arc::new(|_: &Event| {}))
            .unwrap();
        let events = Arc::new(Mutex::new(Vec::new()));
        let seen = events.clone();
        let config = JwksConfig {
            refresh_interval: Duration::from_millis(100),
            retry_interval: Duration::from_millis(100),
            on_demand_interval: Duration::from_secs(30),
        };
        let mut store = JwksStore::start(
            w.publisher().clone(),
            config,
            Arc::new(move |e: &Event| seen.lock().unwrap().push(e.clone())),
        )
        .unwrap();
        let h = store.handle();
        assert!(wait_for(|| h
            .statuses()
            .first()
            .is_some_and(|s| s.keys == 1)));
        assert!(h.warmed_up(w.publisher()));

        // The server fails: the keys stay.
        up.store(false, Ordering::SeqCst);
        assert!(wait_for(|| h
            .statuses()
            .first()
            .is_some_and(|s| s.failures >= 1 && s.keys == 1)));
        assert!(events
            .lock()
            .unwrap()
            .iter()
            .any(|e| matches!(e, Event::JwksFailed { kept_keys: 1, .. })));

        // On-demand refreshes: one per interval.
        assert!(h.request_refresh(&uri));
        assert!(!h.request_refresh(&uri));
        assert!(!h.request_refresh("http://not-named/jwks.json"));
        store.stop();
    }
}
