//! `meshauthz webhook` as the API server calls it: the real binary over HTTPS with a freshly
//! generated certificate, a client that verifies it, and AdmissionReviews table by table.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test code"
)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

mod support;

// ---------------------------------------------------------------------------------------------
// Certificates and the client
// ---------------------------------------------------------------------------------------------

/// A self-signed certificate for 127.0.0.1 and localhost: (certificate PEM, key PEM, DER).
fn mk_cert(name: &str) -> (String, String, rustls::pki_types::CertificateDer<'static>) {
    let mut params =
        rcgen::CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()])
            .unwrap();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, name);
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = params.self_signed(&key).unwrap();
    (cert.pem(), key.serialize_pem(), cert.der().clone())
}

/// An HTTPS client that trusts exactly `root`.
fn mk_agent(root: &rustls::pki_types::CertificateDer<'static>) -> ureq::Agent {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(root.clone()).unwrap();
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    ureq::AgentBuilder::new()
        .tls_config(Arc::new(config))
        .timeout(Duration::from_secs(20))
        .build()
}

// ---------------------------------------------------------------------------------------------
// The webhook under test
// ---------------------------------------------------------------------------------------------

struct Webhook {
    child: Child,
    addr: String,
    dir: tempfile::TempDir,
    agent: ureq::Agent,
}

impl Webhook {
    fn start(extra: &[&str]) -> Webhook {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key, der) = mk_cert("meshauthz webhook test");
        std::fs::write(dir.path().join("tls.crt"), cert).unwrap();
        std::fs::write(dir.path().join("tls.key"), key).unwrap();
        let stderr = std::fs::File::create(dir.path().join("stderr.log")).unwrap();
        let (child, line) = support::spawn_announced(
            Command::new(env!("CARGO_BIN_EXE_meshauthz"))
                .arg("webhook")
                .args(["--addr", "127.0.0.1:0", "--tls-cert"])
                .arg(dir.path().join("tls.crt"))
                .arg("--tls-key")
                .arg(dir.path().join("tls.key"))
                .args(extra)
                .stderr(stderr),
            Duration::from_secs(30),
            Some(&dir.path().join("stderr.log")),
        );
        let addr = line
            .strip_prefix("meshauthz webhook serving addr=")
            .unwrap_or_else(|| panic!("unexpected first line `{line}`"))
            .to_string();
        Webhook {
            child,
            addr,
            dir,
            agent: mk_agent(&der),
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("stderr.log")).unwrap_or_default()
    }

    fn url(&self, path: &str) -> String {
        format!("https://{}{path}", self.addr)
    }

    /// (status, body) of any answer, error statuses included.
    fn call(&self, agent: &ureq::Agent, method: &str, path: &str, body: &[u8]) -> (u16, String) {
        let req = agent
            .request(method, &self.url(path))
            .set("Content-Type", "application/json");
        let result = if method == "GET" {
            req.call()
        } else {
            req.send_bytes(body)
        };
        match result {
            Ok(r) => (r.status(), r.into_string().unwrap()),
            Err(ureq::Error::Status(code, r)) => (code, r.into_string().unwrap_or_default()),
            Err(e) => panic!("{method} {path}: {e}\n{}", self.log()),
        }
    }

    fn get(&self, path: &str) -> (u16, String) {
        self.call(&self.agent, "GET", path, b"")
    }

    /// Posts an AdmissionReview; returns its `response`.
    fn review(&self, review: &Value) -> Value {
        let (status, body) = self.call(
            &self.agent,
            "POST",
            "/validate",
            &serde_json::to_vec(review).unwrap(),
        );
        assert_eq!(status, 200, "{body}\n{}", self.log());
        let out: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(out["apiVersion"], "admission.k8s.io/v1", "{out}");
        assert_eq!(out["kind"], "AdmissionReview", "{out}");
        out["response"].clone()
    }
}

impl Drop for Webhook {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An AdmissionReview as the API server sends it. `object` is YAML (converted to JSON).
fn mk_review(uid: &str, operation: &str, gvk: (&str, &str, &str), ns: &str, object: &str) -> Value {
    let object: Value = if object.is_empty() {
        Value::Null
    } else {
        serde_yaml::from_str(object).unwrap()
    };
    let name = object
        .pointer("/metadata/name")
        .cloned()
        .unwrap_or(Value::Null);
    let (group, version, kind) = gvk;
    let mut request = json!({
        "uid": uid,
        "kind": {"group": group, "version": version, "kind": kind},
        "resource": {"group": group, "version": version, "resource": format!("{}s", kind.to_lowercase())},
        "requestKind": {"group": group, "version": version, "kind": kind},
        "name": name,
        "namespace": ns,
        "operation": operation,
        "userInfo": {"username": "alice", "groups": ["system:authenticated"]},
        "object": object,
        "oldObject": null,
        "dryRun": false,
        "options": {"apiVersion": "meta.k8s.io/v1", "kind": "CreateOptions"},
    });
    if operation == "DELETE" {
        request["oldObject"] = request["object"].take();
    }
    json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": request})
}

const AP_V1: (&str, &str, &str) = ("security.istio.io", "v1", "AuthorizationPolicy");

const VALID: &str = r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: allow-reviews, namespace: foo}
spec:
  selector: {matchLabels: {app: reviews}}
  rules:
  - from: [{source: {principals: ["cluster.local/ns/foo/sa/productpage", "*foo*"]}}]
    to: [{operation: {methods: ["GET"], paths: ["/reviews/*"]}}]
"#;

const VALID_V1BETA1: &str = r#"
apiVersion: security.istio.io/v1beta1
kind: AuthorizationPolicy
metadata: {name: old-style, namespace: foo}
spec:
  selector: {matchLabels: {app: ratings}}
  rules: [{from: [{source: {namespaces: ["foo"]}}]}]
"#;

const EMPTY_PRINCIPAL: &str = r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: p, namespace: foo}
spec:
  rules:
  - from: [{source: {principals: [""]}}]
"#;

const UNKNOWN_FIELD: &str = r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: typo, namespace: foo}
spec:
  rules:
  - from: [{source: {notPrinciples: ["cluster.local/ns/foo/sa/x"]}}]
"#;

const DENY_BAD_METHODS: &str = r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-bad, namespace: foo}
spec:
  action: DENY
  rules:
  - to: [{operation: {methods: 5}}]
"#;

const DENY_WITHOUT_RULES: &str = r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-nothing, namespace: foo}
spec:
  action: DENY
"#;

const TWO_ERRORS: &str = r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: two, namespace: foo}
spec:
  rules:
  - from: [{source: {ipBlocks: ["10.0.0.0/33"], serviceAccounts: ["*"]}}]
"#;

const NO_NAMESPACE: &str = r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: nons}
spec:
  rules:
  - to: [{operation: {ports: ["70000"]}}]
"#;

const WARNS: &str = r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: scheme, namespace: foo}
spec:
  rules:
  - from: [{source: {principals: ["spiffe://cluster.local/ns/foo/sa/bar"]}}]
"#;

const BAD_PA: &str = r#"
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: ports, namespace: foo}
spec:
  mtls: {mode: STRICT}
  portLevelMtls: {"8080": {mode: DISABLE}}
"#;

const BAD_RA: &str = r#"
apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {name: jwt, namespace: foo}
spec:
  jwtRules:
  - issuer: https://issuer.example
    jwksUri: not-a-url
"#;

const DEPLOYMENT: &str = r#"
apiVersion: apps/v1
kind: Deployment
metadata: {name: anything, namespace: foo}
spec: {whatever: [1, 2, 3]}
"#;

/// (name, operation, (group, version, kind), request namespace, object YAML, expectation).
type Case<'a> = (
    &'a str,
    &'a str,
    (&'a str, &'a str, &'a str),
    &'a str,
    &'a str,
    Expect,
);

enum Expect {
    /// Allowed; every listed text appears among the warnings (none when empty).
    Allowed(&'static [&'static str]),
    /// Denied with code 400; every listed text appears in the message.
    Denied(&'static [&'static str]),
}

#[test]
fn admission_reviews() {
    use Expect::{Allowed, Denied};
    let w = Webhook::start(&[]);
    let pa = ("security.istio.io", "v1", "PeerAuthentication");
    let ra = ("security.istio.io", "v1beta1", "RequestAuthentication");
    let bad_ra_v1beta1 = BAD_RA.replace("security.istio.io/v1", "security.istio.io/v1beta1");
    let cases: Vec<Case<'_>> = vec![
        ("valid AP", "CREATE", AP_V1, "foo", VALID, Allowed(&[])),
        (
            "v1beta1 AP",
            "CREATE",
            ("security.istio.io", "v1beta1", "AuthorizationPolicy"),
            "foo",
            VALID_V1BETA1,
            Allowed(&[]),
        ),
        (
            "empty principal",
            "CREATE",
            AP_V1,
            "foo",
            EMPTY_PRINCIPAL,
            Denied(&["admission: AuthorizationPolicy foo/p: spec.rules[0].from[0].source.principals[0]: empty value"]),
        ),
        (
            "unknown field notPrinciples",
            "CREATE",
            AP_V1,
            "foo",
            UNKNOWN_FIELD,
            Denied(&[
                "admission: AuthorizationPolicy foo/typo: spec.rules[0].from[0].source",
                "unknown field `notPrinciples`",
            ]),
        ),
        (
            "DENY with a methods value of the wrong type",
            "CREATE",
            AP_V1,
            "foo",
            DENY_BAD_METHODS,
            Denied(&["admission: AuthorizationPolicy foo/deny-bad: spec.rules[0].to[0].operation.methods: invalid type"]),
        ),
        (
            "DENY without rules",
            "UPDATE",
            AP_V1,
            "foo",
            DENY_WITHOUT_RULES,
            Denied(&["admission: AuthorizationPolicy foo/deny-nothing: spec.rules: a DENY policy without rules"]),
        ),
        (
            "every error is listed",
            "CREATE",
            AP_V1,
            "foo",
            TWO_ERRORS,
            Denied(&[
                "admission: AuthorizationPolicy foo/two: spec.rules[0].from[0].source.ipBlocks[0]: ",
                "\nadmission: AuthorizationPolicy foo/two: spec.rules[0].from[0].source.serviceAccounts[0]: ",
            ]),
        ),
        (
            "the namespace comes from the request",
            "CREATE",
            AP_V1,
            "bar",
            NO_NAMESPACE,
            Denied(&["admission: AuthorizationPolicy bar/nons: spec.rules[0].to[0].operation.ports[0]: "]),
        ),
        (
            "warnings",
            "CREATE",
            AP_V1,
            "foo",
            WARNS,
            Allowed(&["admission: AuthorizationPolicy foo/scheme: spec.rules[0].from[0].source.principals[0]: `spiffe://cluster.local/ns/foo/sa/bar` starts with `spiffe://`"]),
        ),
        (
            "invalid PeerAuthentication",
            "CREATE",
            pa,
            "foo",
            BAD_PA,
            Denied(&["admission: PeerAuthentication foo/ports: spec.portLevelMtls"]),
        ),
        (
            "invalid RequestAuthentication (v1beta1)",
            "CREATE",
            ra,
            "foo",
            &bad_ra_v1beta1,
            Denied(&["admission: RequestAuthentication foo/jwt: spec.jwtRules[0].jwksUri: `not-a-url`"]),
        ),
        ("DELETE of an invalid AP", "DELETE", AP_V1, "foo", DENY_WITHOUT_RULES, Allowed(&[])),
        ("CONNECT", "CONNECT", AP_V1, "foo", "", Allowed(&[])),
        (
            "other kinds",
            "CREATE",
            ("apps", "v1", "Deployment"),
            "foo",
            DEPLOYMENT,
            Allowed(&[]),
        ),
    ];
    for (i, (name, operation, gvk, ns, object, expect)) in cases.iter().enumerate() {
        let uid = format!("0000-{i}-{}", name.replace(' ', "-"));
        let response = w.review(&mk_review(&uid, operation, *gvk, ns, object));
        assert_eq!(response["uid"], uid.as_str(), "{name}: uid not echoed");
        let warnings: Vec<String> = response["warnings"]
            .as_array()
            .map(|a| a.iter().map(|v| v.as_str().unwrap().to_string()).collect())
            .unwrap_or_default();
        match expect {
            Allowed(expected) => {
                assert_eq!(response["allowed"], true, "{name}: {response}");
                assert!(response.get("status").is_none(), "{name}: {response}");
                if expected.is_empty() {
                    assert!(warnings.is_empty(), "{name}: {warnings:?}");
                }
                for text in *expected {
                    assert!(
                        warnings.iter().any(|w| w.contains(text)),
                        "{name}: no warning with `{text}` in {warnings:?}"
                    );
                }
            }
            Denied(expected) => {
                assert_eq!(response["allowed"], false, "{name}: {response}");
                assert_eq!(response["status"]["code"], 400, "{name}: {response}");
                let message = response["status"]["message"].as_str().unwrap();
                for text in *expected {
                    assert!(
                        message.contains(text),
                        "{name}: `{text}` not in:\n{message}"
                    );
                }
            }
        }
    }
    // One log line per decision, with the verdict and the resource (written by the log
    // writer thread: wait for it).
    let deadline = Instant::now() + Duration::from_secs(5);
    while !(w.log().contains("admission decision") && w.log().contains("foo/typo")) {
        assert!(Instant::now() < deadline, "{}", w.log());
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The CLI's `validate` and the webhook print the same errors for the same object: the
/// webhook's lines are the CLI's with `admission` in place of `file:line: document N`.
#[test]
fn webhook_and_validate_agree() {
    let w = Webhook::start(&[]);
    let dir = tempfile::tempdir().unwrap();
    for (i, object) in [
        EMPTY_PRINCIPAL,
        UNKNOWN_FIELD,
        DENY_BAD_METHODS,
        DENY_WITHOUT_RULES,
        TWO_ERRORS,
        BAD_PA,
        BAD_RA,
    ]
    .iter()
    .enumerate()
    {
        let file = dir.path().join(format!("bad{i}.yaml"));
        std::fs::write(&file, object).unwrap();
        let out = Command::new(env!("CARGO_BIN_EXE_meshauthz"))
            .args(["validate", "-f"])
            .arg(&file)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1));
        let stdout = String::from_utf8(out.stdout).unwrap();
        let prefix = format!("error: {}:", file.display());
        let cli: Vec<String> = stdout
            .lines()
            .filter_map(|l| l.strip_prefix(&prefix))
            .map(|rest| {
                let (_, tail) = rest.split_once(": document 1: ").unwrap();
                format!("admission: {tail}")
            })
            .collect();
        assert!(!cli.is_empty(), "{stdout}");

        let value: Value = serde_yaml::from_str(object).unwrap();
        let kind = value["kind"].as_str().unwrap();
        let response = w.review(&mk_review(
            "agree",
            "CREATE",
            ("security.istio.io", "v1", kind),
            "foo",
            object,
        ));
        let message = response["status"]["message"].as_str().unwrap();
        let webhook: Vec<&str> = message.lines().collect();
        assert_eq!(webhook, cli, "webhook:\n{message}\ncli:\n{stdout}");
    }
}

#[test]
fn http_errors_and_health() {
    let w = Webhook::start(&[]);
    assert_eq!(w.get("/healthz"), (200, "ok\n".to_string()));
    assert_eq!(w.get("/readyz"), (200, "ok\n".to_string()));
    assert_eq!(w.get("/validate").0, 405);
    assert_eq!(w.get("/nope").0, 404);

    let post = |body: &[u8]| w.call(&w.agent, "POST", "/validate", body);
    let (status, body) = post(b"{\"apiVersion\": \"admission.k8s.io/v1\", ");
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("not an AdmissionReview"), "{body}");
    let (status, body) = post(b"[1, 2, 3]");
    assert_eq!(status, 400, "{body}");
    let (status, body) = post(
        br#"{"apiVersion":"admission.k8s.io/v1beta1","kind":"AdmissionReview","request":{"uid":"x","kind":{},"operation":"CREATE"}}"#,
    );
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("admission.k8s.io/v1"), "{body}");
    let (status, body) = post(br#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview"}"#);
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("request"), "{body}");
    let (status, _) = post(&[0xff, 0xfe, 0x00]);
    assert_eq!(status, 400);

    // Larger than the limit: refused before it is parsed.
    let mut big = br#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{"uid":"big","pad":""#.to_vec();
    big.extend(std::iter::repeat_n(b'a', 7 * 1024 * 1024));
    big.extend(br#""}}"#);
    let (status, _) = post(&big);
    assert_eq!(status, 413);

    // A huge but legal object is answered (denied: too many rules), not crashed on.
    let rules: Vec<Value> = (0..600)
        .map(|i| json!({"to": [{"operation": {"paths": [format!("/p{i}")]}}]}))
        .collect();
    let object = json!({"apiVersion": "security.istio.io/v1", "kind": "AuthorizationPolicy",
        "metadata": {"name": "big", "namespace": "foo"}, "spec": {"rules": rules}});
    let mut review = mk_review("big", "CREATE", AP_V1, "foo", "");
    review["request"]["object"] = object;
    let response = w.review(&review);
    assert_eq!(response["allowed"], false, "{response}");
    assert!(response["status"]["message"]
        .as_str()
        .unwrap()
        .contains("at most 512"));

    // Still serving after all of that.
    assert_eq!(w.get("/healthz").0, 200);
}

#[test]
fn tls_is_verified_and_certificates_reload() {
    let w = Webhook::start(&["--tls-reload-interval", "1"]);
    // A client that trusts another certificate does not get through.
    let (_, _, other) = mk_cert("someone else");
    let stranger = mk_agent(&other);
    assert!(stranger.get(&w.url("/healthz")).call().is_err());
    // Plain HTTP is not served.
    assert!(ureq::get(&format!("http://{}/healthz", w.addr))
        .call()
        .is_err());

    // Rotate: write a new pair; within a few polls the new certificate is served.
    let (cert, key, der) = mk_cert("rotated");
    std::fs::write(w.dir.path().join("tls.key"), key).unwrap();
    std::fs::write(w.dir.path().join("tls.crt"), cert).unwrap();
    let rotated = mk_agent(&der);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if rotated.get(&w.url("/healthz")).call().is_ok() {
            break;
        }
        assert!(Instant::now() < deadline, "not reloaded:\n{}", w.log());
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(w.agent.get(&w.url("/healthz")).call().is_err());
    let deadline = Instant::now() + Duration::from_secs(5);
    while !w.log().contains("certificate reloaded") {
        assert!(Instant::now() < deadline, "{}", w.log());
        std::thread::sleep(Duration::from_millis(20));
    }

    // A broken pair is ignored: the current certificate keeps serving.
    std::fs::write(w.dir.path().join("tls.crt"), "not a certificate").unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !w.log().contains("keeping the current certificate") {
        assert!(Instant::now() < deadline, "not noticed:\n{}", w.log());
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(rotated.get(&w.url("/healthz")).call().is_ok());
}

#[test]
fn startup_errors_and_graceful_stop() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, _, _) = mk_cert("a");
    let (_, other_key, _) = mk_cert("b");
    let p = |n: &str| -> PathBuf { dir.path().join(n) };
    std::fs::write(p("tls.crt"), cert).unwrap();
    std::fs::write(p("other.key"), other_key).unwrap();
    std::fs::write(p("empty.crt"), "").unwrap();
    let run = |cert: &Path, key: &Path| {
        let out = Command::new(env!("CARGO_BIN_EXE_meshauthz"))
            .args(["webhook", "--addr", "127.0.0.1:0", "--tls-cert"])
            .arg(cert)
            .arg("--tls-key")
            .arg(key)
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, err) = run(&p("tls.crt"), &p("missing.key"));
    assert_eq!(code, Some(1));
    assert!(
        err.contains("cannot read") && err.contains("missing.key"),
        "{err}"
    );
    let (code, err) = run(&p("tls.crt"), &p("other.key"));
    assert_eq!(code, Some(1));
    assert!(err.contains("cannot serve the certificate"), "{err}");
    let (code, err) = run(&p("empty.crt"), &p("other.key"));
    assert_eq!(code, Some(1));
    assert!(err.contains("no PEM certificate"), "{err}");

    // SIGTERM: exit 0.
    let mut w = Webhook::start(&[]);
    let killed = Command::new("kill")
        .args(["-TERM", &w.child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(st) = w.child.try_wait().unwrap() {
            break st;
        }
        assert!(Instant::now() < deadline, "did not stop: {}", w.log());
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(status.code(), Some(0), "{}", w.log());
}
