//! `meshauthz serve` over real gRPC: the binary is started on 127.0.0.1 with ephemeral ports
//! (it prints `meshauthz serving grpc=<addr> admin=<addr>`), and a tonic client built from
//! envoy-types sends CheckRequests the way Envoy's ext_authz filters do. Covers the
//! CheckRequest mapping, workload resolution, the answers, live reload, the admin port, gRPC
//! health, JWKS fetching and graceful shutdown.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test code"
)]

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use envoy_types::pb::envoy::config::core::v3::{
    address, socket_address::PortSpecifier, Address, HeaderMap, HeaderValue, Metadata,
    SocketAddress,
};
use envoy_types::pb::envoy::service::auth::v3::attribute_context::{HttpRequest, Peer, Request};
use envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;
use envoy_types::pb::envoy::service::auth::v3::check_response::HttpResponse;
use envoy_types::pb::envoy::service::auth::v3::{
    AttributeContext, CheckRequest, CheckResponse, DeniedHttpResponse, OkHttpResponse,
};
use envoy_types::pb::google::protobuf::{value::Kind, Struct, Value};
use tonic::transport::Channel;

mod support;

use support::wait_until;

// ---------------------------------------------------------------------------------------------
// Fixtures
// ---------------------------------------------------------------------------------------------

const OK: i32 = 0;
const PERMISSION_DENIED: i32 = 7;
const UNAUTHENTICATED: i32 = 16;

const MESH: &str = r#"
workloads:
  - {namespace: foo, name: httpbin, labels: {app: httpbin}, serviceAccount: httpbin, ips: [10.0.0.10]}
  - {namespace: foo, name: web, labels: {app: web}, serviceAccount: web, ips: [10.0.0.20, 10.0.0.99]}
  - {namespace: foo, name: web2, labels: {app: web2}, serviceAccount: web, ips: [10.0.0.99]}
  - {namespace: shop, name: orders, labels: {app: orders}, serviceAccount: orders}
"#;

const FOO_POLICIES: &str = r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-admin, namespace: foo}
spec:
  selector: {matchLabels: {app: httpbin}}
  action: DENY
  rules:
  - to: [{operation: {paths: ["/deny"]}}]
  - when: [{key: "request.headers[x-role]", values: ["admin"]}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: dry-deny
  namespace: foo
  annotations: {istio.io/dry-run: "true"}
spec:
  selector: {matchLabels: {app: httpbin}}
  action: DENY
  rules:
  - to: [{operation: {paths: ["/dry"]}}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: allow-sleep, namespace: foo}
spec:
  selector: {matchLabels: {app: web}}
  action: ALLOW
  rules:
  - from: [{source: {principals: ["cluster.local/ns/foo/sa/sleep"]}}]
"#;

const ISSUER: &str = "https://auth.meshauthz.test";
const RSA_N: &str = "rJRavNTfQmgfjEKlXWhAbJvcsNvtEAhGVqltRxvbJTAbenjV_Sb-FCpgy_kYFenvEIkUi51qXVSgkVpQtBEU26IH4pgxuZkn07gb6MldQ9XxOEN63dbJWQ-LDQC2qj9VexoXy3TETbK0evOJEraOVV2lQ-r2K7gAkoGJZU9orI-yjmk4XBT-UD_RVunG_aCOjM1zD5E3QeaPRYFAXqP9W6hGXq42Yst90UqCIBZ9aOTmpfH5r1tEWlnmiLSezutcJKCErVuxBmN-dT_JLTtnpFvb6irLNRbY_cMlY55g4PHuid-q9W-9RZHhOeP9G0pj12ByUtRHL3BmtVUlceYtJQ";
const SLEEP: &str = "spiffe://cluster.local/ns/foo/sa/sleep";

fn jwks(kid: &str) -> String {
    format!(
        r#"{{"keys":[{{"kty":"RSA","kid":"{kid}","alg":"RS256","use":"sig","n":"{RSA_N}","e":"AQAB"}}]}}"#
    )
}

fn orders_policies(jwks_uri: &str, extra_rule: &str) -> String {
    format!(
        r#"
apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {{name: orders-jwt, namespace: shop}}
spec:
  selector: {{matchLabels: {{app: orders}}}}
  jwtRules:
  - issuer: {ISSUER}
    jwksUri: {jwks_uri}
    outputClaimToHeaders: [{{header: x-user, claim: sub}}]
{extra_rule}---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: require-jwt, namespace: shop}}
spec:
  selector: {{matchLabels: {{app: orders}}}}
  action: ALLOW
  rules:
  - from: [{{source: {{requestPrincipals: ["{ISSUER}/*"]}}}}]
"#
    )
}

fn token(kid: &str, claims: serde_json::Value) -> String {
    let key = jsonwebtoken::EncodingKey::from_rsa_pem(include_bytes!(
        "../../tests/fixtures/jwt-rsa-private.pem"
    ))
    .unwrap();
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256);
    header.kid = Some(kid.to_string());
    jsonwebtoken::encode(&header, &claims, &key).unwrap()
}

fn alice(kid: &str) -> String {
    token(
        kid,
        serde_json::json!({"iss": ISSUER, "sub": "alice", "exp": 4102444800_u64}),
    )
}

// ---------------------------------------------------------------------------------------------
// A JWKS server on 127.0.0.1
// ---------------------------------------------------------------------------------------------

const JWKS_UP: u8 = 0;
const JWKS_DOWN: u8 = 1;
const JWKS_SLOW: u8 = 2;

struct JwksServer {
    uri: String,
    mode: Arc<AtomicU8>,
    body: Arc<std::sync::Mutex<String>>,
    hits: Arc<AtomicUsize>,
}

impl JwksServer {
    fn start(body: String) -> JwksServer {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let mode = Arc::new(AtomicU8::new(JWKS_UP));
        let body = Arc::new(std::sync::Mutex::new(body));
        let hits = Arc::new(AtomicUsize::new(0));
        let (m, b, h) = (mode.clone(), body.clone(), hits.clone());
        std::thread::spawn(move || {
            for stream in l.incoming() {
                let Ok(mut s) = stream else { continue };
                h.fetch_add(1, Ordering::SeqCst);
                let mut buf = [0u8; 4096];
                let _ = s.read(&mut buf);
                match m.load(Ordering::SeqCst) {
                    JWKS_UP => {
                        let body = b.lock().unwrap().clone();
                        let _ = write!(
                            s,
                            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                            body.len()
                        );
                    }
                    JWKS_SLOW => {
                        // Never answers in time; the connection is held open by its thread.
                        std::thread::spawn(move || {
                            std::thread::sleep(Duration::from_secs(30));
                            drop(s);
                        });
                    }
                    _ => drop(s), // down: the connection closes without an answer
                }
            }
        });
        JwksServer {
            uri: format!("http://{addr}/.well-known/jwks.json"),
            mode,
            body,
            hits,
        }
    }

    fn set(&self, mode: u8) {
        self.mode.store(mode, Ordering::SeqCst);
    }
}

// ---------------------------------------------------------------------------------------------
// The server under test
// ---------------------------------------------------------------------------------------------

struct Server {
    child: Child,
    grpc: String,
    admin: String,
    dir: tempfile::TempDir,
}

impl Server {
    /// Writes `policies` (file name, text) into a fresh directory and starts `meshauthz serve`.
    fn start(policies: &[(&str, &str)], args: &[&str]) -> Server {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("policies")).unwrap();
        for (name, text) in policies {
            std::fs::write(dir.path().join("policies").join(name), text).unwrap();
        }
        std::fs::write(dir.path().join("mesh.yaml"), MESH).unwrap();
        let stderr = std::fs::File::create(dir.path().join("stderr.log")).unwrap();
        let (child, line) = support::spawn_announced(
            Command::new(env!("CARGO_BIN_EXE_meshauthz"))
                .arg("serve")
                .arg("--policies")
                .arg(dir.path().join("policies"))
                .arg("--mesh")
                .arg(dir.path().join("mesh.yaml"))
                .args(["--grpc-addr", "127.0.0.1:0", "--admin-addr", "127.0.0.1:0"])
                .args(args)
                .stderr(stderr),
            Duration::from_secs(30),
            Some(&dir.path().join("stderr.log")),
        );
        assert!(line.starts_with("meshauthz serving "), "{line}");
        Server {
            grpc: support::field(&line, "grpc="),
            admin: support::field(&line, "admin="),
            child,
            dir,
        }
    }

    fn policy_dir(&self) -> PathBuf {
        self.dir.path().join("policies")
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("stderr.log")).unwrap_or_default()
    }

    async fn client(&self) -> AuthorizationClient<Channel> {
        AuthorizationClient::connect(format!("http://{}", self.grpc))
            .await
            .unwrap()
    }

    async fn check(&self, req: CheckRequest) -> CheckResponse {
        self.client().await.check(req).await.unwrap().into_inner()
    }

    fn get(&self, path: &str) -> (u16, String) {
        http_get(&format!("http://{}{path}", self.admin))
    }

    fn snapshot(&self) -> serde_json::Value {
        serde_json::from_str(&self.get("/snapshot").1).unwrap()
    }

    /// The value of one metric sample (`name{labels}` exactly as printed), 0 when absent.
    fn metric(&self, sample: &str) -> f64 {
        let (_, text) = self.get("/metrics");
        text.lines()
            .find_map(|l| l.strip_prefix(sample)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or(0.0)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn http_get(url: &str) -> (u16, String) {
    match ureq::get(url).timeout(Duration::from_secs(5)).call() {
        Ok(r) => (r.status(), r.into_string().unwrap_or_default()),
        Err(ureq::Error::Status(code, r)) => (code, r.into_string().unwrap_or_default()),
        Err(e) => panic!("GET {url}: {e}"),
    }
}

/// Sends `req()` every 50 ms for at most `limit` until the answer has status `want`.
async fn check_until(
    s: &Server,
    limit: Duration,
    want: i32,
    req: impl Fn() -> CheckRequest,
) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if code(&s.check(req()).await) == want {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

// ---------------------------------------------------------------------------------------------
// CheckRequest builders (what Envoy sends)
// ---------------------------------------------------------------------------------------------

fn mk_peer(ip: &str, port: u32, principal: &str) -> Peer {
    Peer {
        address: Some(Address {
            address: Some(address::Address::SocketAddress(SocketAddress {
                address: ip.into(),
                port_specifier: Some(PortSpecifier::PortValue(port)),
                ..Default::default()
            })),
        }),
        principal: principal.into(),
        ..Default::default()
    }
}

/// An HTTP Check to `workload` (context extension; `None`: no hint) from `principal`.
fn mk_http(workload: Option<&str>, method: &str, path: &str, principal: &str) -> CheckRequest {
    CheckRequest {
        attributes: Some(AttributeContext {
            source: Some(mk_peer("10.0.0.1", 43210, principal)),
            destination: Some(mk_peer("10.0.0.254", 8080, "")),
            context_extensions: workload
                .map(|w| HashMap::from([("workload".to_string(), w.to_string())]))
                .unwrap_or_default(),
            request: Some(Request {
                http: Some(HttpRequest {
                    method: method.into(),
                    path: path.into(),
                    host: "svc.example".into(),
                    scheme: "http".into(),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }),
    }
}

fn http_mut(req: &mut CheckRequest) -> &mut HttpRequest {
    req.attributes
        .as_mut()
        .and_then(|a| a.request.as_mut())
        .and_then(|r| r.http.as_mut())
        .unwrap()
}

fn with_header(mut req: CheckRequest, name: &str, value: &str) -> CheckRequest {
    http_mut(&mut req)
        .headers
        .insert(name.to_string(), value.to_string());
    req
}

/// `encode_raw_headers: true`: typed fields empty, every value (pseudo-headers too) separate.
fn mk_raw(workload: &str, path: &str, headers: &[(&str, &str)]) -> CheckRequest {
    let mut req = mk_http(Some(workload), "", "", "");
    let http = http_mut(&mut req);
    http.host.clear();
    let mut all = vec![
        (":method", "GET"),
        (":path", path),
        (":authority", "svc.example"),
        (":scheme", "http"),
    ];
    all.extend_from_slice(headers);
    http.header_map = Some(HeaderMap {
        headers: all
            .iter()
            .map(|(k, v)| HeaderValue {
                key: k.to_string(),
                raw_value: v.as_bytes().to_vec(),
                ..Default::default()
            })
            .collect(),
    });
    req
}

/// A network-filter (TCP) Check: no HTTP attributes.
fn mk_tcp(workload: &str, principal: &str) -> CheckRequest {
    let mut req = mk_http(Some(workload), "", "", principal);
    if let Some(a) = req.attributes.as_mut() {
        a.request = None;
    }
    req
}

fn with_destination(mut req: CheckRequest, ip: &str, principal: &str) -> CheckRequest {
    if let Some(a) = req.attributes.as_mut() {
        a.context_extensions.clear();
        a.destination = Some(mk_peer(ip, 8080, principal));
    }
    req
}

fn code(r: &CheckResponse) -> i32 {
    r.status.as_ref().map_or(-1, |s| s.code)
}

fn ok_response(r: &CheckResponse) -> &OkHttpResponse {
    match &r.http_response {
        Some(HttpResponse::OkResponse(ok)) => ok,
        other => panic!("expected an OK response, got {other:?}"),
    }
}

fn denied(r: &CheckResponse) -> &DeniedHttpResponse {
    match &r.http_response {
        Some(HttpResponse::DeniedResponse(d)) => d,
        other => panic!("expected a denied response, got {other:?}"),
    }
}

fn headers_of(
    list: &[envoy_types::pb::envoy::config::core::v3::HeaderValueOption],
) -> Vec<(String, String)> {
    list.iter()
        .filter_map(|h| h.header.as_ref())
        .map(|h| (h.key.clone(), h.value.clone()))
        .collect()
}

fn header<'a>(list: &'a [(String, String)], name: &str) -> Option<&'a str> {
    list.iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

fn sval(s: &str) -> Value {
    Value {
        kind: Some(Kind::StringValue(s.into())),
    }
}

// ---------------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------------

/// HTTP allow and deny, and what the client sees of a denial (403, `RBAC: access denied`, no
/// policy names).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_allow_and_deny() {
    let s = Server::start(&[("foo.yaml", FOO_POLICIES)], &[]);
    let r = s
        .check(mk_http(Some("foo/httpbin"), "GET", "/ok", ""))
        .await;
    assert_eq!(code(&r), OK, "{}", s.log());
    assert!(ok_response(&r).response_headers_to_add.is_empty());

    let r = s
        .check(mk_http(Some("foo/httpbin"), "GET", "/deny?x=1", ""))
        .await;
    assert_eq!(code(&r), PERMISSION_DENIED);
    let d = denied(&r);
    assert_eq!(d.status.as_ref().map(|s| s.code), Some(403));
    assert_eq!(d.body, "RBAC: access denied");
    // --expose-decision-headers is off: nothing about the decision reaches the client.
    assert!(headers_of(&d.headers)
        .iter()
        .all(|(k, _)| !k.starts_with("x-meshauthz")));

    // The joined-header form: one header, one value.
    let r = s
        .check(with_header(
            mk_http(Some("foo/httpbin"), "GET", "/ok", ""),
            "X-Role",
            "admin",
        ))
        .await;
    assert_eq!(code(&r), PERMISSION_DENIED);
    // A repeated header Envoy joined with a comma stays one value ("user,admin" is not
    // "admin"); configure encode_raw_headers: true to match value by value (next test).
    let r = s
        .check(with_header(
            mk_http(Some("foo/httpbin"), "GET", "/ok", ""),
            "x-role",
            "user,admin",
        ))
        .await;
    assert_eq!(code(&r), OK);

    // The decision is logged with its policy, and counted.
    assert!(s.log().contains("foo/deny-admin"), "{}", s.log());
    assert!(s.metric(r#"meshauthz_decisions_total{verdict="DENY",workload="foo/httpbin"}"#) >= 2.0);
    assert!(
        s.metric(r#"grpc_server_handled_total{grpc_service="envoy.service.auth.v3.Authorization",grpc_method="Check",grpc_code="OK"}"#)
            >= 4.0
    );

    // Dry-run matches never change the verdict, and are counted.
    let r = s
        .check(mk_http(Some("foo/httpbin"), "GET", "/dry", ""))
        .await;
    assert_eq!(code(&r), OK);
    assert_eq!(
        s.metric(r#"meshauthz_dry_run_matches_total{action="DENY"}"#),
        1.0
    );
}

/// `encode_raw_headers: true`: repeated headers arrive as separate `header_map` entries and a
/// DENY on one value matches although another value does not (CVE-2026-26308).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeated_headers_in_header_map_match_value_by_value() {
    let s = Server::start(&[("foo.yaml", FOO_POLICIES)], &[]);
    let r = s
        .check(mk_raw(
            "foo/httpbin",
            "/ok",
            &[("x-role", "user"), ("X-Role", "admin")],
        ))
        .await;
    assert_eq!(code(&r), PERMISSION_DENIED, "{}", s.log());
    let r = s
        .check(mk_raw(
            "foo/httpbin",
            "/ok",
            &[("x-role", "user"), ("x-role", "guest")],
        ))
        .await;
    assert_eq!(code(&r), OK);
    // Pseudo-headers fill method and path: `:path` /deny is denied.
    let r = s.check(mk_raw("foo/httpbin", "/deny", &[])).await;
    assert_eq!(code(&r), PERMISSION_DENIED);
}

/// Peer identity: only `source.principal`, only a SPIFFE ID; a subject DN (Envoy's fallback when
/// the certificate has no URI SAN) and x-forwarded-client-cert are not identities.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peer_identity_only_from_spiffe_source_principal() {
    let s = Server::start(&[("foo.yaml", FOO_POLICIES)], &[]);
    let r = s.check(mk_http(Some("foo/web"), "GET", "/", SLEEP)).await;
    assert_eq!(code(&r), OK, "{}", s.log());
    let r = s
        .check(mk_http(
            Some("foo/web"),
            "GET",
            "/",
            "O=cluster.local,CN=spiffe://cluster.local/ns/foo/sa/sleep",
        ))
        .await;
    assert_eq!(code(&r), PERMISSION_DENIED);
    let xfcc = format!("By=spiffe://cluster.local/ns/foo/sa/web;URI={SLEEP}");
    let r = s
        .check(with_header(
            mk_http(Some("foo/web"), "GET", "/", ""),
            "x-forwarded-client-cert",
            &xfcc,
        ))
        .await;
    assert_eq!(
        code(&r),
        PERMISSION_DENIED,
        "x-forwarded-client-cert must not be trusted by default"
    );

    // --trust-xfcc: the URI of the LAST element is the peer.
    let t = Server::start(&[("foo.yaml", FOO_POLICIES)], &["--trust-xfcc"]);
    let r = t
        .check(with_header(
            mk_http(Some("foo/web"), "GET", "/", ""),
            "x-forwarded-client-cert",
            &xfcc,
        ))
        .await;
    assert_eq!(code(&r), OK, "{}", t.log());
    let spoofed = format!("URI={SLEEP},By=spiffe://cluster.local/ns/foo/sa/web;URI=spiffe://cluster.local/ns/foo/sa/other");
    let r = t
        .check(with_header(
            mk_http(Some("foo/web"), "GET", "/", ""),
            "x-forwarded-client-cert",
            &spoofed,
        ))
        .await;
    assert_eq!(code(&r), PERMISSION_DENIED);
}

/// The network filter: no HTTP attributes => a TCP decision, only the status is answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_checks() {
    let s = Server::start(&[("foo.yaml", FOO_POLICIES)], &[]);
    let r = s.check(mk_tcp("foo/web", SLEEP)).await;
    assert_eq!(code(&r), OK, "{}", s.log());
    assert!(r.http_response.is_none());
    let r = s.check(mk_tcp("foo/web", "")).await;
    assert_eq!(code(&r), PERMISSION_DENIED);
    assert!(r.http_response.is_none());
    assert!(s.log().contains("protocol=Tcp"), "{}", s.log());
}

/// Which workload: context extension, destination IP (exactly one match), destination principal
/// (namespace + service account, exactly one match); anything else denies and is counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workload_resolution() {
    let s = Server::start(&[("foo.yaml", FOO_POLICIES)], &[]);
    // 10.0.0.10 is foo/httpbin: /ok allowed, /deny denied by its policy.
    let ip = |path: &str| with_destination(mk_http(None, "GET", path, ""), "10.0.0.10", "");
    assert_eq!(code(&s.check(ip("/ok")).await), OK, "{}", s.log());
    assert_eq!(code(&s.check(ip("/deny")).await), PERMISSION_DENIED);
    // The destination principal's service account names foo/httpbin.
    let by_sa = with_destination(
        mk_http(None, "GET", "/ok", ""),
        "192.0.2.1",
        "spiffe://cluster.local/ns/foo/sa/httpbin",
    );
    assert_eq!(code(&s.check(by_sa).await), OK);

    let before = s.metric("meshauthz_unresolved_workloads_total");
    let unresolved = [
        mk_http(Some("foo/nope"), "GET", "/ok", ""),
        // An unknown context extension is not second-guessed by the IP.
        {
            let mut r = with_destination(mk_http(None, "GET", "/ok", ""), "10.0.0.10", "");
            r.attributes.as_mut().unwrap().context_extensions =
                HashMap::from([("workload".to_string(), "foo/nope".to_string())]);
            r
        },
        // 10.0.0.99 belongs to foo/web and foo/web2.
        with_destination(mk_http(None, "GET", "/ok", ""), "10.0.0.99", ""),
        // Service account foo/web runs two workloads.
        with_destination(
            mk_http(None, "GET", "/ok", ""),
            "192.0.2.1",
            "spiffe://cluster.local/ns/foo/sa/web",
        ),
        // No hint at all.
        with_destination(mk_http(None, "GET", "/ok", ""), "192.0.2.1", ""),
    ];
    let n = unresolved.len();
    for req in unresolved {
        let r = s.check(req).await;
        assert_eq!(code(&r), PERMISSION_DENIED);
        assert_eq!(denied(&r).status.as_ref().map(|s| s.code), Some(403));
    }
    assert_eq!(
        s.metric("meshauthz_unresolved_workloads_total"),
        before + n as f64
    );
    assert!(
        s.metric(r#"meshauthz_decisions_total{verdict="DENY",workload="<unresolved>"}"#)
            >= n as f64
    );
    assert!(s.log().contains("foo/web, foo/web2"), "{}", s.log());
}

/// --expose-decision-headers: decision, policy, reason and id on both answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expose_decision_headers() {
    let s = Server::start(
        &[("foo.yaml", FOO_POLICIES)],
        &["--expose-decision-headers"],
    );
    let r = s
        .check(mk_http(Some("foo/httpbin"), "GET", "/deny", ""))
        .await;
    assert_eq!(code(&r), PERMISSION_DENIED);
    let h = headers_of(&denied(&r).headers);
    assert_eq!(header(&h, "x-meshauthz-decision"), Some("DENY"));
    assert_eq!(header(&h, "x-meshauthz-policy"), Some("foo/deny-admin"));
    assert_eq!(header(&h, "x-meshauthz-reason"), Some("deny_matched"));
    let id = header(&h, "x-meshauthz-decision-id").unwrap().to_string();
    assert_eq!(id.len(), 32);
    // Log lines are written by a writer thread: wait for it.
    assert!(
        wait_until(Duration::from_secs(5), || s.log().contains(&id)),
        "the id leads to the log line"
    );

    let r = s.check(mk_http(Some("foo/web"), "GET", "/", SLEEP)).await;
    assert_eq!(code(&r), OK);
    let h = headers_of(&ok_response(&r).response_headers_to_add);
    assert_eq!(header(&h, "x-meshauthz-decision"), Some("ALLOW"));
    assert_eq!(header(&h, "x-meshauthz-policy"), Some("foo/allow-sleep"));
    assert_ne!(header(&h, "x-meshauthz-decision-id"), Some(id.as_str()));
    // Never on the upstream request.
    assert!(ok_response(&r).headers.is_empty());
}

/// JWT over jwksUri: a valid token is allowed with the RequestAuthentication effects on the
/// upstream request; a bad token gets 401 with `www-authenticate`; no token is denied by the
/// ALLOW policy. When the JWKS server goes away the fetched keys keep working.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwt_with_jwks_uri_and_cached_keys() {
    let jwks_server = JwksServer::start(jwks("rsa-1"));
    let s = Server::start(
        &[("orders.yaml", &orders_policies(&jwks_server.uri, ""))],
        &["--jwks-refresh-interval", "1"],
    );
    let with_token = |t: &str| {
        with_header(
            mk_http(Some("shop/orders"), "GET", "/orders?page=1", ""),
            "authorization",
            &format!("Bearer {t}"),
        )
    };
    // Ready once the first fetch is done.
    assert!(wait_until(Duration::from_secs(10), || s.get("/readyz").0 == 200));

    let r = s.check(with_token(&alice("rsa-1"))).await;
    assert_eq!(code(&r), OK, "{}", s.log());
    let ok = ok_response(&r);
    assert_eq!(header(&headers_of(&ok.headers), "x-user"), Some("alice"));
    assert_eq!(ok.headers_to_remove, vec!["authorization".to_string()]);

    let expired = token(
        "rsa-1",
        serde_json::json!({"iss": ISSUER, "sub": "alice", "exp": 1577836800_u64}),
    );
    let r = s.check(with_token(&expired)).await;
    assert_eq!(code(&r), UNAUTHENTICATED);
    let d = denied(&r);
    assert_eq!(d.status.as_ref().map(|s| s.code), Some(401));
    assert_eq!(d.body, "Jwt is expired");
    let h = headers_of(&d.headers);
    assert_eq!(
        header(&h, "www-authenticate"),
        Some("Bearer realm=\"http://svc.example/orders\"")
    );
    let r = s.check(with_token("not.a.token")).await;
    assert_eq!(code(&r), UNAUTHENTICATED);

    let r = s
        .check(mk_http(Some("shop/orders"), "GET", "/orders", ""))
        .await;
    assert_eq!(code(&r), PERMISSION_DENIED);

    // The JWKS server stops answering: refreshes fail, the last good keys keep verifying.
    jwks_server.set(JWKS_DOWN);
    let failed = wait_until(Duration::from_secs(10), || {
        s.snapshot()["jwks"][0]["failures"].as_u64().unwrap_or(0) >= 1
    });
    assert!(failed, "{}", s.get("/snapshot").1);
    let status = s.snapshot();
    assert_eq!(status["jwks"][0]["keys"], 1);
    assert!(status["jwks"][0]["last_error"].is_string());
    let r = s.check(with_token(&alice("rsa-1"))).await;
    assert_eq!(code(&r), OK, "cached keys keep working");
    let uri_label = format!(
        r#"meshauthz_jwks_fetches_total{{uri="{}",result="failure"}}"#,
        jwks_server.uri
    );
    assert!(s.metric(&uri_label) >= 1.0);
    assert!(jwks_server.hits.load(Ordering::SeqCst) >= 2);
}

/// A token whose `kid` the fetched keys lack triggers an on-demand refresh (rotation), with no
/// wait for the 20-minute refresh.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_kid_refreshes_the_jwks() {
    let jwks_server = JwksServer::start(jwks("rsa-old"));
    let s = Server::start(
        &[("orders.yaml", &orders_policies(&jwks_server.uri, ""))],
        &[],
    );
    assert!(wait_until(Duration::from_secs(10), || s.get("/readyz").0 == 200));
    let req = || {
        with_header(
            mk_http(Some("shop/orders"), "GET", "/orders", ""),
            "authorization",
            &format!("Bearer {}", alice("rsa-1")),
        )
    };
    // The issuer rotated to rsa-1.
    *jwks_server.body.lock().unwrap() = jwks("rsa-1");
    let r = s.check(req()).await;
    assert_eq!(code(&r), UNAUTHENTICATED);
    assert_eq!(
        denied(&r).body,
        "Jwks doesn't have key to match kid or alg from Jwt"
    );
    let rotated = check_until(&s, Duration::from_secs(5), OK, req).await;
    assert!(rotated, "{}", s.log());
}

/// Checks never wait for a JWKS fetch: with a JWKS server that never answers, a token of that
/// issuer is answered at once (401: no keys yet), and /readyz waits for the first attempt.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_jwks_never_blocks_a_check() {
    let jwks_server = JwksServer::start(jwks("rsa-1"));
    jwks_server.set(JWKS_SLOW);
    let s = Server::start(
        &[(
            "orders.yaml",
            &orders_policies(&jwks_server.uri, "    timeout: 3s\n"),
        )],
        &[],
    );
    let started = Instant::now();
    let r = s
        .check(with_header(
            mk_http(Some("shop/orders"), "GET", "/orders", ""),
            "authorization",
            &format!("Bearer {}", alice("rsa-1")),
        ))
        .await;
    let took = started.elapsed();
    assert_eq!(code(&r), UNAUTHENTICATED, "{}", s.log());
    assert_eq!(denied(&r).body, "Jwks doesn't have any valid public key");
    assert!(took < Duration::from_secs(1), "a check took {took:?}");
    let (status, body) = s.get("/readyz");
    assert_eq!(status, 503, "{body}");
    // Tokens of no issuer are unaffected.
    let r = s
        .check(mk_http(Some("foo/httpbin"), "GET", "/ok", ""))
        .await;
    assert_eq!(code(&r), OK);
}

/// A JWT payload Envoy's jwt_authn already verified (metadata_context) is used as the claims;
/// its issuer must still be one the workload's RequestAuthentication names.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwt_payload_from_envoy_metadata() {
    let jwks_server = JwksServer::start(jwks("rsa-1"));
    let s = Server::start(
        &[("orders.yaml", &orders_policies(&jwks_server.uri, ""))],
        &[],
    );
    let with_payload = |iss: &str| {
        let mut req = mk_http(Some("shop/orders"), "GET", "/orders", "");
        let payload = Struct {
            fields: HashMap::from([
                ("iss".to_string(), sval(iss)),
                ("sub".to_string(), sval("bob")),
            ]),
        };
        req.attributes.as_mut().unwrap().metadata_context = Some(Metadata {
            filter_metadata: HashMap::from([(
                "envoy.filters.http.jwt_authn".to_string(),
                Struct {
                    fields: HashMap::from([(
                        "jwt_payload".to_string(),
                        Value {
                            kind: Some(Kind::StructValue(payload)),
                        },
                    )]),
                },
            )]),
            ..Default::default()
        });
        req
    };
    assert_eq!(
        code(&s.check(with_payload(ISSUER)).await),
        OK,
        "{}",
        s.log()
    );
    assert!(
        wait_until(Duration::from_secs(5), || s
            .log()
            .contains("https://auth.meshauthz.test/bob")),
        "request principal logged"
    );
    assert_eq!(
        code(&s.check(with_payload("https://evil.example")).await),
        UNAUTHENTICATED
    );
}

/// Malformed CheckRequests get an answer, never a crash.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_check_requests_are_answered() {
    let s = Server::start(&[("foo.yaml", FOO_POLICIES)], &[]);
    // No attributes at all: no workload, denied.
    assert_eq!(
        code(&s.check(CheckRequest::default()).await),
        PERMISSION_DENIED
    );
    // A path Envoy would reject (NUL): denied.
    let r = s
        .check(mk_http(Some("foo/httpbin"), "GET", "/a%00b", ""))
        .await;
    assert_eq!(code(&r), PERMISSION_DENIED, "{}", s.log());
    let r = s.check(mk_http(Some("foo/httpbin"), "GET", "", "")).await;
    assert!(r.status.is_some());
    // A 1 MiB header value, a non-UTF-8 raw header, an odd port and an unparsable address.
    let big = "a".repeat(1 << 20);
    let r = s
        .check(with_header(
            mk_http(Some("foo/httpbin"), "GET", "/ok", ""),
            "x-big",
            &big,
        ))
        .await;
    assert!(r.status.is_some());
    let mut raw = mk_raw("foo/httpbin", "/ok", &[]);
    http_mut(&mut raw)
        .header_map
        .as_mut()
        .unwrap()
        .headers
        .push(HeaderValue {
            key: "X-Bin".into(),
            raw_value: vec![0xff, 0xfe, 0x00, b'a'],
            ..Default::default()
        });
    raw.attributes.as_mut().unwrap().destination = Some(mk_peer("not-an-ip", 999_999, "spiffe://"));
    assert!(s.check(raw).await.status.is_some());
    // A malformed SPIFFE source principal: denied.
    let r = s
        .check(mk_http(
            Some("foo/httpbin"),
            "GET",
            "/ok",
            "spiffe:///ns//sa/",
        ))
        .await;
    assert_eq!(code(&r), PERMISSION_DENIED);
    // Still serving.
    assert_eq!(
        code(
            &s.check(mk_http(Some("foo/httpbin"), "GET", "/ok", ""))
                .await
        ),
        OK
    );
    assert_eq!(s.metric("meshauthz_internal_errors_total"), 0.0);
}

/// Live reload: a changed file is enforced within about a second; an invalid file is not
/// applied (the last good snapshot keeps answering) and its error is on /snapshot and counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_applies_good_changes_and_keeps_serving_on_bad_ones() {
    let deny = |path: &str| {
        format!(
            "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {{name: deny-path, namespace: foo}}\nspec:\n  selector: {{matchLabels: {{app: httpbin}}}}\n  action: DENY\n  rules:\n  - to: [{{operation: {{paths: [\"{path}\"]}}}}]\n"
        )
    };
    let s = Server::start(&[("deny.yaml", &deny("/a"))], &[]);
    let get = |path: &str| mk_http(Some("foo/httpbin"), "GET", path, "");
    assert_eq!(code(&s.check(get("/a")).await), PERMISSION_DENIED);
    assert_eq!(code(&s.check(get("/b")).await), OK);
    assert_eq!(s.snapshot()["generation"], 1);

    std::fs::write(s.policy_dir().join("deny.yaml"), deny("/b")).unwrap();
    let written = Instant::now();
    let changed = check_until(&s, Duration::from_secs(5), PERMISSION_DENIED, || get("/b")).await;
    let took = written.elapsed();
    assert!(changed, "{}", s.log());
    assert!(took < Duration::from_secs(2), "reload took {took:?}");
    assert_eq!(code(&s.check(get("/a")).await), OK);
    let snap = s.snapshot();
    assert_eq!(snap["generation"], 2);
    assert_eq!(snap["reloads"], 1);
    assert_eq!(s.metric("meshauthz_snapshot_generation"), 2.0);
    assert_eq!(s.metric("meshauthz_reloads_total"), 1.0);

    // An invalid resource in a new file: not applied.
    std::fs::write(
        s.policy_dir().join("zz-bad.yaml"),
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: bad, namespace: foo}\nspec:\n  action: DENY\n  rules:\n  - to: [{operation: {methods: [\"GET\"], bogus: 1}}]\n",
    )
    .unwrap();
    let rejected = wait_until(Duration::from_secs(5), || {
        s.snapshot()["reload_errors"] == 1
    });
    assert!(rejected, "{}", s.log());
    let snap = s.snapshot();
    assert_eq!(snap["generation"], 2);
    let errors = snap["last_error"]["errors"].to_string();
    assert!(errors.contains("zz-bad.yaml"), "{errors}");
    assert!(
        errors.contains("foo/bad") || errors.contains("bogus"),
        "{errors}"
    );
    assert_eq!(s.metric("meshauthz_reload_errors_total"), 1.0);
    assert_eq!(
        code(&s.check(get("/b")).await),
        PERMISSION_DENIED,
        "old snapshot answers"
    );
    assert_eq!(code(&s.check(get("/a")).await), OK);
    assert!(s.log().contains("policy reload rejected"), "{}", s.log());
}

/// Invalid policies at startup: exit 1 with the error, never an empty allow-all.
#[test]
fn invalid_policies_at_startup_exit_non_zero() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("bad.yaml");
    std::fs::write(
        &f,
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: bad, namespace: foo}\nspec:\n  action: NOPE\n",
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_meshauthz"))
        .args([
            "serve",
            "--grpc-addr",
            "127.0.0.1:0",
            "--admin-addr",
            "127.0.0.1:0",
            "--policies",
        ])
        .arg(&f)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("bad.yaml") && err.contains("not serving"),
        "{err}"
    );
    assert!(out.stdout.is_empty());
}

/// /healthz, /readyz and the gRPC health service.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_and_readiness() {
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::health_client::HealthClient;
    use tonic_health::pb::HealthCheckRequest;

    let s = Server::start(&[("foo.yaml", FOO_POLICIES)], &[]);
    assert_eq!(s.get("/healthz").0, 200);
    assert!(wait_until(Duration::from_secs(5), || s.get("/readyz").0 == 200));
    let channel = Channel::from_shared(format!("http://{}", s.grpc))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut health = HealthClient::new(channel);
    for service in ["", "envoy.service.auth.v3.Authorization"] {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let status = health
                .check(HealthCheckRequest {
                    service: service.to_string(),
                })
                .await
                .map(|r| r.into_inner().status)
                .ok();
            if status == Some(ServingStatus::Serving as i32) {
                break;
            }
            assert!(Instant::now() < deadline, "{service}: {status:?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let snap = s.snapshot();
    assert_eq!(snap["resources"]["authorizationPolicies"], 3);
    assert_eq!(snap["workloads"].as_array().map(Vec::len), Some(4));
    let _ = health.check(HealthCheckRequest::default()).await.unwrap();
}

/// SIGTERM: in-flight work drains and the process exits 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_stops_gracefully() {
    let mut s = Server::start(&[("foo.yaml", FOO_POLICIES)], &[]);
    assert_eq!(
        code(
            &s.check(mk_http(Some("foo/httpbin"), "GET", "/ok", ""))
                .await
        ),
        OK
    );
    let pid = s.child.id().to_string();
    let killed = Command::new("kill").args(["-TERM", &pid]).status().unwrap();
    assert!(killed.success());
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(st) = s.child.try_wait().unwrap() {
            break st;
        }
        assert!(Instant::now() < deadline, "did not stop: {}", s.log());
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(status.code(), Some(0), "{}", s.log());
    assert!(s.log().contains("draining"), "{}", s.log());
}

/// TLS and mTLS on the gRPC listener (certificates made with openssl; skipped without it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mtls_listener() {
    use tonic::transport::{Certificate, ClientTlsConfig, Identity};
    let dir = tempfile::tempdir().unwrap();
    if !make_certs(dir.path()) {
        eprintln!("openssl not available: skipping");
        return;
    }
    let p = |n: &str| dir.path().join(n).display().to_string();
    let s = Server::start(
        &[("foo.yaml", FOO_POLICIES)],
        &[
            "--tls-cert",
            &p("server.crt"),
            "--tls-key",
            &p("server.key"),
            "--tls-client-ca",
            &p("ca.crt"),
        ],
    );
    let ca = Certificate::from_pem(std::fs::read(p("ca.crt")).unwrap());
    let endpoint = |with_identity: bool| {
        let mut tls = ClientTlsConfig::new()
            .ca_certificate(ca.clone())
            .domain_name("localhost");
        if with_identity {
            tls = tls.identity(Identity::from_pem(
                std::fs::read(p("client.crt")).unwrap(),
                std::fs::read(p("client.key")).unwrap(),
            ));
        }
        Channel::from_shared(format!("https://{}", s.grpc))
            .unwrap()
            .tls_config(tls)
            .unwrap()
    };
    let channel = endpoint(true).connect().await.expect("mTLS connect");
    let r = AuthorizationClient::new(channel)
        .check(mk_http(Some("foo/httpbin"), "GET", "/ok", ""))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(code(&r), OK, "{}", s.log());
    // Without a client certificate the handshake or the call fails.
    let refused = match endpoint(false).connect().await {
        Err(_) => true,
        Ok(c) => AuthorizationClient::new(c)
            .check(mk_http(Some("foo/httpbin"), "GET", "/ok", ""))
            .await
            .is_err(),
    };
    assert!(refused);
    // Plaintext is refused too.
    let plain = AuthorizationClient::connect(format!("http://{}", s.grpc)).await;
    let plain_failed = match plain {
        Err(_) => true,
        Ok(mut c) => c.check(CheckRequest::default()).await.is_err(),
    };
    assert!(plain_failed);
}

fn make_certs(dir: &Path) -> bool {
    let run = |args: &[&str]| {
        Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    if !run(&["version"]) {
        return false;
    }
    std::fs::write(
        dir.join("server.ext"),
        "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\nsubjectAltName=DNS:localhost,IP:127.0.0.1\n",
    )
    .unwrap();
    std::fs::write(
        dir.join("client.ext"),
        "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=clientAuth\nsubjectAltName=URI:spiffe://cluster.local/ns/istio-system/sa/envoy\n",
    )
    .unwrap();
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
    ];
    let mut ok = run(&[
        &["req", "-x509"][..],
        &ec,
        &[
            "-days",
            "1",
            "-keyout",
            "ca.key",
            "-out",
            "ca.crt",
            "-subj",
            "/CN=test-ca",
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
        ],
    ]
    .concat());
    for name in ["server", "client"] {
        let key = format!("{name}.key");
        let csr = format!("{name}.csr");
        let crt = format!("{name}.crt");
        let ext = format!("{name}.ext");
        ok = ok
            && run(&[
                &["req"][..],
                &ec,
                &["-keyout", &key, "-out", &csr, "-subj", "/O=cluster.local"],
            ]
            .concat())
            && run(&[
                "x509",
                "-req",
                "-in",
                &csr,
                "-CA",
                "ca.crt",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-days",
                "1",
                "-out",
                &crt,
                "-extfile",
                &ext,
            ]);
    }
    ok
}

/// Throughput, for the record (not a pass/fail test): the same Check against `meshauthz serve`
/// and against a no-op ext_authz server in this process, over one HTTP/2 connection with 32
/// concurrent callers. `cargo test -p authz --release --test grpc -- --ignored --nocapture throughput`
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark: run with --release --ignored --nocapture"]
async fn throughput() {
    use envoy_types::pb::envoy::service::auth::v3::authorization_server::{
        Authorization, AuthorizationServer,
    };

    #[derive(Debug)]
    struct Noop;
    #[tonic::async_trait]
    impl Authorization for Noop {
        async fn check(
            &self,
            _: tonic::Request<CheckRequest>,
        ) -> Result<tonic::Response<CheckResponse>, tonic::Status> {
            Ok(tonic::Response::new(CheckResponse {
                status: Some(envoy_types::pb::google::rpc::Status::default()),
                ..Default::default()
            }))
        }
    }
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let noop_addr = l.local_addr().unwrap();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(AuthorizationServer::new(Noop))
            .serve_with_incoming(tonic::transport::server::TcpIncoming::from(l)),
    );
    let s = Server::start(&[("foo.yaml", FOO_POLICIES)], &[]);
    let req = with_header(
        with_header(
            mk_http(Some("foo/httpbin"), "GET", "/ok/items?id=7", SLEEP),
            "x-role",
            "user",
        ),
        "user-agent",
        "bench",
    );

    async fn measure(addr: String, req: CheckRequest) -> f64 {
        const CALLERS: usize = 32;
        const PER_CALLER: usize = 500;
        let channel = Channel::from_shared(format!("http://{addr}"))
            .unwrap()
            .connect()
            .await
            .unwrap();
        let client = AuthorizationClient::new(channel);
        // Warm up.
        for _ in 0..100 {
            client.clone().check(req.clone()).await.unwrap();
        }
        let started = Instant::now();
        let tasks: Vec<_> = (0..CALLERS)
            .map(|_| {
                let mut c = client.clone();
                let req = req.clone();
                tokio::spawn(async move {
                    for _ in 0..PER_CALLER {
                        let r = c.check(req.clone()).await.unwrap().into_inner();
                        assert_eq!(code(&r), OK);
                    }
                })
            })
            .collect();
        for t in tasks {
            t.await.unwrap();
        }
        (CALLERS * PER_CALLER) as f64 / started.elapsed().as_secs_f64()
    }

    let noop = measure(noop_addr.to_string(), req.clone()).await;
    let ours = measure(s.grpc.clone(), req.clone()).await;
    let noop2 = measure(noop_addr.to_string(), req).await;
    println!(
        "checks/s: meshauthz serve {ours:.0}; no-op ext_authz server {:.0} (client, server and the no-op share 2 cores)",
        (noop + noop2) / 2.0
    );
    let (_, metrics) = s.get("/metrics");
    for line in metrics
        .lines()
        .filter(|l| l.starts_with("meshauthz_decision_duration_seconds_"))
    {
        println!("{line}");
    }
}
