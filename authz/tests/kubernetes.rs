//! `meshauthz serve --kubernetes` against a fake API server in this file that speaks the real
//! Kubernetes list and watch protocol over HTTP: JSON lists with `metadata.resourceVersion`,
//! chunked watch streams of ADDED / MODIFIED / DELETED / BOOKMARK events, `ERROR` events with
//! code 410 (Gone) for a resourceVersion older than the server keeps, API discovery
//! (`/apis/security.istio.io/v1`), and restarts (connections refused, history lost). No real API
//! server can be installed on these machines; this is what stands in for one.
//!
//! Decisions are asked over real gRPC, as Envoy's ext_authz filter does.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test code"
)]

use std::collections::{BTreeMap, HashMap};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use envoy_types::pb::envoy::config::core::v3::{
    address, socket_address::PortSpecifier, Address, SocketAddress,
};
use envoy_types::pb::envoy::service::auth::v3::attribute_context::{HttpRequest, Peer, Request};
use envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;
use envoy_types::pb::envoy::service::auth::v3::{AttributeContext, CheckRequest};
use serde_json::{json, Value};

mod support;

use support::wait_until;

// ---------------------------------------------------------------------------------------------
// The fake API server
// ---------------------------------------------------------------------------------------------

/// Where an object lives: the URL segment of its resource (`pods`, `authorizationpolicies`,
/// `configmaps`), its namespace and name.
type Key = (String, String, String);

#[derive(Debug, Clone)]
struct Stored {
    rv: u64,
    kind: &'static str,
    key: Key,
    object: Value,
}

#[derive(Default)]
struct ApiState {
    rv: u64,
    objects: BTreeMap<Key, Value>,
    /// Events since the last restart (a restarted server remembers no history).
    events: Vec<Stored>,
    /// Watches from a resourceVersion older than this get 410 Gone.
    oldest: u64,
    /// Bumped by a restart; open watch streams end.
    epoch: u64,
    down: bool,
    /// Versions of security.istio.io served.
    istio_versions: Vec<&'static str>,
    /// Every request line, for assertions on what was asked.
    requests: Vec<String>,
}

struct FakeApi {
    state: Mutex<ApiState>,
    changed: Condvar,
    addr: SocketAddr,
}

impl FakeApi {
    fn start(istio_versions: &[&'static str]) -> Arc<FakeApi> {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let api = Arc::new(FakeApi {
            state: Mutex::new(ApiState {
                rv: 100,
                oldest: 0,
                istio_versions: istio_versions.to_vec(),
                ..ApiState::default()
            }),
            changed: Condvar::new(),
            addr: listener.local_addr().unwrap(),
        });
        let a = api.clone();
        std::thread::spawn(move || a.accept_loop(Some(listener)));
        api
    }

    /// Accepts while up; while down, the port is closed (connection refused).
    fn accept_loop(self: Arc<Self>, mut listener: Option<TcpListener>) {
        loop {
            let down = self.state.lock().unwrap().down;
            match (&listener, down) {
                (Some(_), true) => listener = None,
                (None, false) => {
                    let l = TcpListener::bind(self.addr).unwrap();
                    l.set_nonblocking(true).unwrap();
                    listener = Some(l);
                }
                (Some(l), false) => {
                    l.set_nonblocking(true).unwrap();
                    match l.accept() {
                        Ok((stream, _)) => {
                            let a = self.clone();
                            std::thread::spawn(move || a.serve(stream));
                            continue;
                        }
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                        Err(_) => {}
                    }
                }
                (None, true) => {}
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn kubeconfig(&self, dir: &std::path::Path) -> std::path::PathBuf {
        let path = dir.join("kubeconfig");
        std::fs::write(
            &path,
            format!(
                "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster:\n    server: http://{}\nusers:\n- name: test\n  user: {{}}\ncontexts:\n- name: fake\n  context: {{cluster: fake, user: test}}\ncurrent-context: fake\n",
                self.addr
            ),
        )
        .unwrap();
        path
    }

    fn put(&self, resource: &str, mut object: Value) {
        let mut s = self.state.lock().unwrap();
        s.rv += 1;
        let rv = s.rv;
        let ns = object["metadata"]["namespace"]
            .as_str()
            .unwrap()
            .to_string();
        let name = object["metadata"]["name"].as_str().unwrap().to_string();
        object["metadata"]["resourceVersion"] = json!(rv.to_string());
        object["metadata"]["uid"] = json!(format!("uid-{ns}-{name}"));
        let key = (resource.to_string(), ns, name);
        let existed = s.objects.insert(key.clone(), object.clone()).is_some();
        let kind_of_event = if existed { "MODIFIED" } else { "ADDED" };
        s.events.push(Stored {
            rv,
            kind: kind_of_event,
            key,
            object,
        });
        drop(s);
        self.changed.notify_all();
    }

    fn delete(&self, resource: &str, ns: &str, name: &str) {
        let mut s = self.state.lock().unwrap();
        let key = (resource.to_string(), ns.to_string(), name.to_string());
        let Some(mut object) = s.objects.remove(&key) else {
            return;
        };
        s.rv += 1;
        let rv = s.rv;
        object["metadata"]["resourceVersion"] = json!(rv.to_string());
        s.events.push(Stored {
            rv,
            kind: "DELETED",
            key,
            object,
        });
        drop(s);
        self.changed.notify_all();
    }

    /// Stops answering (connections refused, open watches cut).
    fn stop(&self) {
        let mut s = self.state.lock().unwrap();
        s.down = true;
        s.epoch += 1;
        drop(s);
        self.changed.notify_all();
    }

    /// Comes back without its event history: older resourceVersions are now Gone.
    fn restart(&self) {
        let mut s = self.state.lock().unwrap();
        s.events.clear();
        s.oldest = s.rv;
        s.down = false;
        drop(s);
        self.changed.notify_all();
    }

    fn requests(&self) -> Vec<String> {
        self.state.lock().unwrap().requests.clone()
    }

    fn serve(&self, mut stream: TcpStream) {
        stream.set_nonblocking(false).unwrap();
        let mut reader = BufReader::new(stream.try_clone().unwrap());
        let mut line = String::new();
        if reader.read_line(&mut line).is_err() {
            return;
        }
        loop {
            let mut h = String::new();
            if reader.read_line(&mut h).is_err() || h == "\r\n" || h.is_empty() {
                break;
            }
        }
        let target = line.split_whitespace().nth(1).unwrap_or("/").to_string();
        self.state.lock().unwrap().requests.push(target.clone());
        let (path, query) = target.split_once('?').unwrap_or((&target, ""));
        let params: HashMap<String, String> = query
            .split('&')
            .filter_map(|kv| kv.split_once('='))
            .map(|(k, v)| (k.to_string(), v.replace("%3D", "=")))
            .collect();
        let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
        // Discovery: /apis/security.istio.io/<version>
        if let ["apis", "security.istio.io", version] = segments.as_slice() {
            let served = self.state.lock().unwrap().istio_versions.contains(version);
            if !served {
                return respond(&mut stream, 404, &not_found());
            }
            let resources: Vec<Value> = [
                ("authorizationpolicies", "AuthorizationPolicy"),
                ("peerauthentications", "PeerAuthentication"),
                ("requestauthentications", "RequestAuthentication"),
            ]
            .iter()
            .map(|(plural, kind)| {
                json!({"name": plural, "singularName": kind.to_lowercase(), "namespaced": true,
                       "kind": kind, "verbs": ["get", "list", "watch"]})
            })
            .collect();
            let body = json!({"kind": "APIResourceList", "apiVersion": "v1",
                "groupVersion": format!("security.istio.io/{version}"), "resources": resources});
            return respond(&mut stream, 200, &body);
        }
        // Collections: /api/v1[/namespaces/<ns>]/<resource> and
        // /apis/security.istio.io/<v>[/namespaces/<ns>]/<resource>
        let (version_ok, rest) = match segments.as_slice() {
            ["api", "v1", rest @ ..] => (true, rest),
            ["apis", "security.istio.io", v, rest @ ..] => {
                (self.state.lock().unwrap().istio_versions.contains(v), rest)
            }
            _ => (false, &[][..]),
        };
        let (namespace, resource) = match rest {
            [resource] => (None, *resource),
            ["namespaces", ns, resource] => (Some(ns.to_string()), *resource),
            _ => (None, ""),
        };
        if !version_ok || resource.is_empty() {
            return respond(&mut stream, 404, &not_found());
        }
        let name_selector = params
            .get("fieldSelector")
            .and_then(|f| f.strip_prefix("metadata.name="))
            .map(str::to_string);
        let matches = |key: &Key| {
            key.0 == resource
                && namespace.as_ref().is_none_or(|ns| *ns == key.1)
                && name_selector.as_ref().is_none_or(|n| *n == key.2)
        };
        if params.get("watch").is_some_and(|w| w == "true" || w == "1") {
            let from: u64 = params
                .get("resourceVersion")
                .and_then(|r| r.parse().ok())
                .unwrap_or(0);
            self.watch(stream, from, &matches);
        } else {
            let s = self.state.lock().unwrap();
            let items: Vec<Value> = s
                .objects
                .iter()
                .filter(|(k, _)| matches(k))
                .map(|(_, v)| v.clone())
                .collect();
            let body = json!({"kind": "List", "apiVersion": "v1",
                "metadata": {"resourceVersion": s.rv.to_string()}, "items": items});
            drop(s);
            respond(&mut stream, 200, &body);
        }
    }

    /// A chunked watch stream from resourceVersion `from`, with a BOOKMARK every 500 ms.
    fn watch(&self, mut stream: TcpStream, from: u64, matches: &dyn Fn(&Key) -> bool) {
        let head = "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n";
        if stream.write_all(head.as_bytes()).is_err() {
            return;
        }
        let mut s = self.state.lock().unwrap();
        let epoch = s.epoch;
        if from < s.oldest {
            let gone = json!({"type": "ERROR", "object": {"kind": "Status", "apiVersion": "v1",
                "status": "Failure", "message": format!("too old resource version: {from} ({})", s.oldest),
                "reason": "Expired", "code": 410}});
            drop(s);
            let _ = write_chunk(&mut stream, &gone);
            let _ = stream.write_all(b"0\r\n\r\n");
            return;
        }
        let mut sent = from;
        let mut last_bookmark = Instant::now();
        loop {
            if s.epoch != epoch {
                return; // cut, as a dying server does: no terminating chunk
            }
            let pending: Vec<Stored> = s
                .events
                .iter()
                .filter(|e| e.rv > sent && matches(&e.key))
                .cloned()
                .collect();
            let rv = s.rv;
            drop(s);
            for e in pending {
                sent = e.rv;
                let event = json!({"type": e.kind, "object": e.object});
                if write_chunk(&mut stream, &event).is_err() {
                    return;
                }
            }
            if last_bookmark.elapsed() > Duration::from_millis(500) {
                last_bookmark = Instant::now();
                sent = sent.max(rv);
                let bookmark = json!({"type": "BOOKMARK", "object": {"kind": "Pod",
                    "apiVersion": "v1", "metadata": {"resourceVersion": sent.to_string()}}});
                if write_chunk(&mut stream, &bookmark).is_err() {
                    return;
                }
            }
            s = self.state.lock().unwrap();
            s = self
                .changed
                .wait_timeout(s, Duration::from_millis(100))
                .unwrap()
                .0;
        }
    }
}

fn not_found() -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
           "message": "the server could not find the requested resource", "reason": "NotFound",
           "code": 404})
}

fn respond(stream: &mut TcpStream, code: u16, body: &Value) {
    let text = body.to_string();
    let reason = if code == 200 { "OK" } else { "Not Found" };
    let _ = write!(
        stream,
        "HTTP/1.1 {code} {reason}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{text}",
        text.len()
    );
}

fn write_chunk(stream: &mut TcpStream, event: &Value) -> std::io::Result<()> {
    let line = format!("{event}\n");
    write!(stream, "{:x}\r\n{line}\r\n", line.len())?;
    stream.flush()
}

// ---------------------------------------------------------------------------------------------
// Objects
// ---------------------------------------------------------------------------------------------

const AP: &str = "authorizationpolicies";

fn pod(ns: &str, name: &str, app: &str, ip: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Pod",
           "metadata": {"namespace": ns, "name": name, "labels": {"app": app}},
           "spec": {"serviceAccountName": app, "containers": [{"name": "app", "image": "x"}]},
           "status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}]}})
}

fn policy(version: &str, ns: &str, name: &str, spec: Value) -> Value {
    json!({"apiVersion": format!("security.istio.io/{version}"), "kind": "AuthorizationPolicy",
           "metadata": {"namespace": ns, "name": name}, "spec": spec})
}

fn deny_paths(paths: &[&str]) -> Value {
    json!({"selector": {"matchLabels": {"app": "httpbin"}}, "action": "DENY",
           "rules": [{"to": [{"operation": {"paths": paths}}]}]})
}

/// httpbin in `foo` (10.1.0.5) and in `bar` (10.2.0.5).
fn with_pods(api: &FakeApi) {
    api.put("pods", pod("foo", "httpbin-1", "httpbin", "10.1.0.5"));
    api.put("pods", pod("bar", "httpbin-1", "httpbin", "10.2.0.5"));
}

// ---------------------------------------------------------------------------------------------
// meshauthz serve --kubernetes
// ---------------------------------------------------------------------------------------------

struct Serve {
    child: Child,
    grpc: String,
    admin: String,
    dir: tempfile::TempDir,
}

impl Serve {
    fn start(api: &FakeApi, args: &[&str]) -> Serve {
        let dir = tempfile::tempdir().unwrap();
        let kubeconfig = api.kubeconfig(dir.path());
        let stderr = std::fs::File::create(dir.path().join("stderr.log")).unwrap();
        let (child, line) = support::spawn_announced(
            Command::new(env!("CARGO_BIN_EXE_meshauthz"))
                .args(["serve", "--kubernetes"])
                .args(["--grpc-addr", "127.0.0.1:0", "--admin-addr", "127.0.0.1:0"])
                .args(args)
                .env("KUBECONFIG", &kubeconfig)
                .env("RUST_LOG", "info")
                .stderr(stderr),
            Duration::from_secs(30),
            Some(&dir.path().join("stderr.log")),
        );
        Serve {
            grpc: support::field(&line, "grpc="),
            admin: support::field(&line, "admin="),
            child,
            dir,
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("stderr.log")).unwrap_or_default()
    }

    fn get(&self, path: &str) -> (u16, String) {
        let mut s = TcpStream::connect(&self.admin).unwrap();
        write!(
            s,
            "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut text = String::new();
        s.read_to_string(&mut text).unwrap();
        let code = text
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or(0);
        let body = text.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
        (code, body.to_string())
    }

    fn snapshot(&self) -> Value {
        serde_json::from_str(&self.get("/snapshot").1).unwrap()
    }

    fn ready(&self) -> bool {
        self.get("/readyz").0 == 200
    }

    /// The gRPC status code of an HTTP Check of `GET path` to the pod at `ip`.
    async fn check(&self, ip: &str, path: &str) -> i32 {
        let mut client = AuthorizationClient::connect(format!("http://{}", self.grpc))
            .await
            .unwrap();
        let peer = |ip: &str, port: u32| Peer {
            address: Some(Address {
                address: Some(address::Address::SocketAddress(SocketAddress {
                    address: ip.into(),
                    port_specifier: Some(PortSpecifier::PortValue(port)),
                    ..Default::default()
                })),
            }),
            ..Default::default()
        };
        let req = CheckRequest {
            attributes: Some(AttributeContext {
                source: Some(peer("10.9.0.1", 40000)),
                destination: Some(peer(ip, 8080)),
                request: Some(Request {
                    http: Some(HttpRequest {
                        method: "GET".into(),
                        path: path.into(),
                        host: "httpbin".into(),
                        scheme: "http".into(),
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            }),
        };
        let resp = client.check(req).await.unwrap().into_inner();
        resp.status.map_or(0, |s| s.code)
    }

    /// Polls until `GET path` to `ip` answers `want`; the time it took.
    async fn until(&self, ip: &str, path: &str, want: i32) -> Duration {
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(20) {
            if self.check(ip, path).await == want {
                return start.elapsed();
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!(
            "GET {path} to {ip} never answered {want}; log:\n{}",
            self.log()
        );
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

const OK: i32 = 0;
const DENIED: i32 = 7;
const FOO: &str = "10.1.0.5";
const BAR: &str = "10.2.0.5";

// ---------------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn applied_policy_is_enforced_deleted_is_gone_malformed_is_skipped() {
    let api = FakeApi::start(&["v1", "v1beta1"]);
    with_pods(&api);
    api.put(
        AP,
        policy("v1", "foo", "deny-admin", deny_paths(&["/admin"])),
    );
    let serve = Serve::start(&api, &[]);
    assert!(
        wait_until(Duration::from_secs(20), || serve.ready()),
        "{}",
        serve.log()
    );
    assert_eq!(serve.check(FOO, "/admin").await, DENIED);
    assert_eq!(serve.check(FOO, "/x").await, OK);
    assert_eq!(serve.check(BAR, "/admin").await, OK, "other namespace");

    // Applied: enforced. (The time is printed; CI logs carry it, the bound is generous.)
    api.put(AP, policy("v1", "foo", "deny-x", deny_paths(&["/x"])));
    let took = serve.until(FOO, "/x", DENIED).await;
    eprintln!("apply -> enforced: {took:?}");
    // Modified: the new rule replaces the old one.
    api.put(AP, policy("v1", "foo", "deny-x", deny_paths(&["/y"])));
    serve.until(FOO, "/y", DENIED).await;
    assert_eq!(serve.check(FOO, "/x").await, OK);
    // Deleted: gone.
    api.delete(AP, "foo", "deny-x");
    let took = serve.until(FOO, "/y", OK).await;
    eprintln!("delete -> gone: {took:?}");
    assert_eq!(
        serve.check(FOO, "/admin").await,
        DENIED,
        "the other policy stays"
    );

    // Malformed (a field the schema does not have, as a permissive CRD would store it): reported,
    // its scope denies everything, nothing else is affected, and the stream goes on.
    let bad = policy(
        "v1",
        "bar",
        "broken",
        json!({"selector": {"matchLabels": {"app": "httpbin"}}, "action": "DENY",
               "rules": [{"to": [{"operation": {"pathz": ["/secret"]}}]}]}),
    );
    api.put(AP, bad);
    serve.until(BAR, "/anything", DENIED).await;
    let snap = serve.snapshot();
    let invalid = snap["kubernetes"]["invalid_objects"].as_array().unwrap();
    assert_eq!(invalid.len(), 1, "{snap:#}");
    let message = invalid[0].as_str().unwrap();
    assert!(
        message.contains("AuthorizationPolicy bar/broken") && message.contains("pathz"),
        "{message}"
    );
    assert!(
        message.contains("denying every request in its scope"),
        "{message}"
    );
    assert!(
        wait_until(Duration::from_secs(5), || serve
            .log()
            .contains("bar/broken")),
        "logged"
    );
    assert_eq!(serve.check(FOO, "/x").await, OK);
    api.put(AP, policy("v1", "foo", "deny-z", deny_paths(&["/z"])));
    serve.until(FOO, "/z", DENIED).await;

    // Fixed: the stand-in goes away.
    api.put(AP, policy("v1", "bar", "broken", deny_paths(&["/secret"])));
    serve.until(BAR, "/anything", OK).await;
    assert_eq!(serve.check(BAR, "/secret").await, DENIED);
    let metrics = serve.get("/metrics").1;
    assert!(
        metrics.contains("meshauthz_kubernetes_invalid_objects 0"),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_restart_relists_with_no_gap_in_enforcement() {
    let api = FakeApi::start(&["v1"]);
    with_pods(&api);
    api.put(
        AP,
        policy("v1", "foo", "deny-admin", deny_paths(&["/admin"])),
    );
    api.put(AP, policy("v1", "foo", "deny-old", deny_paths(&["/old"])));
    let serve = Serve::start(&api, &[]);
    assert!(
        wait_until(Duration::from_secs(20), || serve.ready()),
        "{}",
        serve.log()
    );
    assert_eq!(serve.check(FOO, "/old").await, DENIED);

    // The API goes away; enforcement goes on from the last snapshot, staleness shows.
    api.stop();
    let probe = |serve: &Serve| {
        let s = serve.snapshot();
        s["kubernetes"]["stale_seconds"].as_u64().unwrap_or(0)
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    while probe(&serve) < 1 {
        assert_eq!(serve.check(FOO, "/admin").await, DENIED);
        assert_eq!(serve.check(FOO, "/x").await, OK);
        assert!(
            Instant::now() < deadline,
            "staleness never showed: {}",
            serve.snapshot()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let metrics = serve.get("/metrics").1;
    assert!(
        metrics.contains("meshauthz_kubernetes_watch_errors_total{resource=\"authorizationpolicies.security.istio.io/v1\"}"),
        "{metrics}"
    );
    assert!(serve.ready(), "a stale snapshot still serves");

    // Changes made while it was away; it comes back without the history (410 Gone).
    api.delete(AP, "foo", "deny-old");
    api.put(AP, policy("v1", "foo", "deny-new", deny_paths(&["/new"])));
    api.restart();
    let start = Instant::now();
    loop {
        // No gap: the unchanged policy holds at every instant of the re-list.
        assert_eq!(serve.check(FOO, "/admin").await, DENIED);
        assert_eq!(serve.check(FOO, "/x").await, OK);
        if serve.check(FOO, "/new").await == DENIED && serve.check(FOO, "/old").await == OK {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(30), "{}", serve.log());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(wait_until(Duration::from_secs(10), || probe(&serve) == 0));
    // It re-listed after the 410 (a second list request for the policies).
    let lists = api
        .requests()
        .iter()
        .filter(|r| {
            r.starts_with("/apis/security.istio.io/v1/authorizationpolicies")
                && !r.contains("watch=true")
        })
        .count();
    assert!(lists >= 2, "{:?}", api.requests());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn not_ready_and_denying_until_listed_then_v1beta1() {
    let api = FakeApi::start(&["v1beta1"]);
    api.stop();
    with_pods(&api);
    api.put(
        AP,
        policy("v1beta1", "foo", "deny-admin", deny_paths(&["/admin"])),
    );
    let serve = Serve::start(&api, &[]);
    // The API is unreachable: not ready, and every request is denied.
    std::thread::sleep(Duration::from_millis(500));
    let (code, body) = serve.get("/readyz");
    assert_eq!(code, 503, "{body}");
    assert_eq!(serve.check(FOO, "/x").await, DENIED);

    api.restart();
    assert!(
        wait_until(Duration::from_secs(30), || serve.ready()),
        "{}",
        serve.log()
    );
    assert_eq!(serve.check(FOO, "/x").await, OK);
    assert_eq!(serve.check(FOO, "/admin").await, DENIED);
    let watches = serve.snapshot()["kubernetes"]["watches"].to_string();
    assert!(
        watches.contains("authorizationpolicies.security.istio.io/v1beta1"),
        "{watches}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_namespace_and_mesh_config_map() {
    let api = FakeApi::start(&["v1"]);
    with_pods(&api);
    api.put(
        AP,
        policy("v1", "foo", "deny-admin", deny_paths(&["/admin"])),
    );
    api.put(
        AP,
        policy(
            "v1",
            "istio-system",
            "mesh-deny",
            json!({"action": "DENY",
            "rules": [{"to": [{"operation": {"paths": ["/mesh-wide"]}}]}]}),
        ),
    );
    let serve = Serve::start(&api, &["--watch-namespace", "foo"]);
    assert!(
        wait_until(Duration::from_secs(20), || serve.ready()),
        "{}",
        serve.log()
    );
    assert_eq!(
        serve.check(FOO, "/mesh-wide").await,
        DENIED,
        "root namespace is watched"
    );
    // bar's pod is not watched: its IP resolves to no workload, which is denied.
    assert_eq!(serve.check(BAR, "/x").await, DENIED);
    let requests = api.requests();
    assert!(
        requests.iter().all(|r| !r.starts_with("/api/v1/pods")
            && !r.starts_with("/apis/security.istio.io/v1/authorizationpolicies")),
        "no cluster-wide watch: {requests:?}"
    );
    assert!(requests
        .iter()
        .any(|r| r.starts_with("/api/v1/namespaces/foo/pods")));

    // The mesh config from the istio ConfigMap: MERGE_SLASHES makes //admin match /admin.
    assert_eq!(serve.check(FOO, "//admin").await, OK);
    api.put("configmaps", json!({"apiVersion": "v1", "kind": "ConfigMap",
               "metadata": {"namespace": "istio-system", "name": "istio"},
               "data": {"mesh": "accessLogFile: /dev/stdout\npathNormalization:\n  normalization: MERGE_SLASHES\n"}}),
    );
    serve.until(FOO, "//admin", DENIED).await;
    // A broken mesh config keeps the settings in force and says so.
    api.put(
        "configmaps",
        json!({"apiVersion": "v1", "kind": "ConfigMap",
               "metadata": {"namespace": "istio-system", "name": "istio"},
               "data": {"mesh": "pathNormalization: {normalization: SOMETIMES}\n"}}),
    );
    assert!(wait_until(Duration::from_secs(10), || !serve.snapshot()
        ["kubernetes"]["mesh_error"]
        .is_null()));
    assert_eq!(serve.check(FOO, "//admin").await, DENIED);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mesh_config_map_broken_from_the_start_keeps_it_not_ready() {
    let api = FakeApi::start(&["v1"]);
    with_pods(&api);
    let config_map = |mesh: &str| {
        json!({"apiVersion": "v1", "kind": "ConfigMap",
               "metadata": {"namespace": "istio-system", "name": "istio"},
               "data": {"mesh": mesh}})
    };
    api.put("configmaps", config_map("trustDomain: [not, a, string]\n"));
    let serve = Serve::start(&api, &[]);
    assert!(
        wait_until(Duration::from_secs(20), || !serve.snapshot()["kubernetes"]
            ["mesh_error"]
            .is_null()),
        "{}",
        serve.log()
    );
    // Every watch has listed; only the mesh settings are missing.
    assert!(
        wait_until(Duration::from_secs(20), || {
            let watches = serve.snapshot()["kubernetes"]["watches"].clone();
            watches
                .as_array()
                .is_some_and(|w| !w.is_empty() && w.iter().all(|w| w["synced"] == json!(true)))
        }),
        "{}",
        serve.snapshot()
    );
    std::thread::sleep(Duration::from_millis(300));
    let (code, body) = serve.get("/readyz");
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("trustDomain"), "{body}");
    assert_eq!(serve.check(FOO, "/x").await, DENIED);
    assert_eq!(serve.snapshot()["generation"], json!(0));

    api.put("configmaps", config_map("trustDomain: cluster.local\n"));
    assert!(
        wait_until(Duration::from_secs(20), || serve.ready()),
        "{}",
        serve.log()
    );
    assert_eq!(serve.check(FOO, "/x").await, OK);
}

#[test]
fn without_cluster_credentials_it_refuses_to_start_and_says_why() {
    let out = Command::new(env!("CARGO_BIN_EXE_meshauthz"))
        .args(["serve", "--kubernetes", "--grpc-addr", "127.0.0.1:0"])
        .args(["--admin-addr", "127.0.0.1:0"])
        .env("KUBECONFIG", "/nonexistent/kubeconfig")
        .env("HOME", "/nonexistent")
        .env_remove("KUBERNETES_SERVICE_HOST")
        .env_remove("KUBERNETES_SERVICE_PORT")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("cannot configure a Kubernetes client") && stderr.contains("/nonexistent"),
        "{stderr}"
    );
    assert!(out.stdout.is_empty(), "never announced as serving");
}

#[test]
fn policy_sources_are_one_or_the_other() {
    for (args, says) in [
        (
            &["--kubernetes", "--policies", "policies/"][..],
            "--policies",
        ),
        (
            &["--watch-namespace", "foo", "--policies", "policies/"][..],
            "--kubernetes",
        ),
        (&[][..], "--policies"),
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_meshauthz"))
            .arg("serve")
            .args(args)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(says), "{args:?}: {stderr}");
    }
}
