//! `meshauthz serve`: the Envoy ext_authz host. A thin shell around the pure engine:
//!
//! ```text
//!  policy files --PolicyWatcher (std thread, 250 ms poll)--\
//!                                                           Publisher -> ArcSwap<Snapshot>
//!  jwksUri ------JwksStore (std thread, 20 min refresh)----/                 |
//!                                                                  load() once per Check
//!  Envoy --gRPC (tonic, optional mTLS)--> grpc::check --> authz_engine::decide_with
//!  operator --HTTP--> admin: /healthz /readyz /metrics /snapshot
//! ```
//!
//! State owned: [`State`], shared by the gRPC service and the admin port; the watcher and the
//! JWKS store (their threads), the tokio runtime, and the listeners. Process config is
//! immutable after start; policy and keys are the only dynamic state.
//!
//! Startup: an invalid policy set is an error (exit 1, errors on stderr), never an empty
//! allow-all. Once both listeners are bound, one line goes to stdout:
//! `meshauthz serving grpc=<addr> admin=<addr>`. Logs go to stderr. SIGTERM or SIGINT: stop
//! accepting, drain in-flight Checks, exit 0.

pub mod admin;
pub mod cache;
pub mod convert;
pub mod grpc;
pub mod kube;
pub mod log;
pub mod metrics;

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use authz_loader::jwks::{JwksConfig, JwksHandle, JwksStore};
use authz_loader::watch::{
    Event, Observer, PolicyWatcher, Publisher, SharedSnapshot, StatusHandle, WatchConfig,
};
use clap::Args;
use envoy_types::pb::envoy::service::auth::v3::authorization_server::AuthorizationServer;
use tonic::transport::server::TcpIncoming;
use tonic::transport::{Certificate, Identity, Server, ServerTlsConfig};
use tonic_health::ServingStatus;

use self::cache::MokaTokenCache;
use self::convert::ConvertOptions;
use self::log::{DecisionIds, LogFormat};
use self::metrics::{JwksLabels, Metrics};

#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    /// Policy files or directories (every *.yaml, *.yml, *.json, recursively), watched for changes.
    #[arg(long = "policies", required_unless_present = "kubernetes", num_args = 1..)]
    pub policies: Vec<PathBuf>,
    /// Mesh settings and workloads (the `mesh:` and `workloads:` sections of a test file), watched.
    /// With --kubernetes: the mesh settings, instead of the `istio` ConfigMap.
    #[arg(long)]
    pub mesh: Option<PathBuf>,
    /// Watch the Kubernetes API instead of files: AuthorizationPolicy, PeerAuthentication and
    /// RequestAuthentication (security.istio.io v1, else v1beta1), Pods, and the `istio`
    /// ConfigMap. Credentials: KUBECONFIG, ~/.kube/config or the in-cluster service account.
    #[arg(long, conflicts_with = "policies")]
    pub kubernetes: bool,
    /// With --kubernetes: watch only these namespaces (repeatable; the Istio root namespace's
    /// policies are watched too). Default: every namespace.
    #[arg(long = "watch-namespace", value_name = "NAMESPACE")]
    pub watch_namespaces: Vec<String>,
    /// With --kubernetes: the namespace of Istio's `istio` ConfigMap (mesh settings).
    #[arg(long, default_value = "istio-system", value_name = "NAMESPACE")]
    pub istio_namespace: String,
    /// The ext_authz gRPC listener (port 0: any free port).
    #[arg(long, default_value = "0.0.0.0:9191", env = "AUTHZ_GRPC_ADDR")]
    pub grpc_addr: SocketAddr,
    /// The admin HTTP listener: /healthz, /readyz, /metrics, /snapshot (port 0: any free port).
    #[arg(long, default_value = "0.0.0.0:9192", env = "AUTHZ_ADMIN_ADDR")]
    pub admin_addr: SocketAddr,
    /// PEM certificate chain for TLS on the gRPC listener.
    #[arg(long, requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key for TLS on the gRPC listener.
    #[arg(long, requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// PEM CA bundle: require client certificates signed by it (mTLS), so only mesh proxies may ask.
    #[arg(long, requires = "tls_cert")]
    pub tls_client_ca: Option<PathBuf>,
    #[arg(long, value_enum, default_value = "text", env = "AUTHZ_LOG_FORMAT")]
    pub log_format: LogFormat,
    /// Add x-meshauthz-decision, -policy, -reason and -decision-id headers to every answer.
    #[arg(long)]
    pub expose_decision_headers: bool,
    /// Take the peer identity from the last element of x-forwarded-client-cert. Only when every
    /// hop in front sanitizes that header; off by default (it is client-supplied).
    #[arg(long)]
    pub trust_xfcc: bool,
    /// Seconds between refreshes of jwksUri keys (Istio's default: 20 minutes).
    #[arg(long, default_value_t = 1200, value_name = "SECONDS")]
    pub jwks_refresh_interval: u64,
}

/// Per-Check options.
#[derive(Debug, Clone, Copy, Default)]
pub struct CheckOptions {
    pub convert: ConvertOptions,
    pub expose_decision_headers: bool,
}

/// What the gRPC service and the admin port share.
pub struct State {
    pub snapshot: SharedSnapshot,
    pub publisher: Arc<Publisher>,
    pub watch: StatusHandle,
    pub jwks: JwksHandle,
    pub metrics: Arc<Metrics>,
    pub tokens: MokaTokenCache,
    /// The Kubernetes source's health, with --kubernetes.
    pub kube: Option<kube::KubeHandle>,
    pub options: CheckOptions,
    pub ids: DecisionIds,
}

impl std::fmt::Debug for State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("State")
            .field("generation", &self.snapshot.load().generation)
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

impl State {
    /// `None` when ready: a snapshot is loaded (always, once constructed) and every `jwksUri`
    /// of the policy had its first fetch attempt (success or not).
    pub fn not_ready(&self) -> Option<String> {
        if let Some(why) = self.kube.as_ref().and_then(|k| {
            k.lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .not_synced()
        }) {
            return Some(why);
        }
        if self.watch.get().generation == 0 {
            return Some("no policy snapshot loaded".to_string());
        }
        if !self.jwks.warmed_up(&self.publisher) {
            return Some("waiting for the first fetch of every jwksUri".to_string());
        }
        None
    }
}

/// Logs and counts what the loader threads report.
fn observer(metrics: Arc<Metrics>) -> Observer {
    Arc::new(move |event: &Event| match event {
        Event::Loaded {
            generation,
            resources,
            warnings,
            initial,
        } => {
            metrics
                .generation
                .set(i64::try_from(*generation).unwrap_or(i64::MAX));
            if !initial {
                metrics.reloads.inc();
            }
            for w in warnings {
                tracing::warn!("{w}");
            }
            tracing::info!(
                generation,
                authorization_policies = resources.authorization,
                peer_authentications = resources.peer,
                request_authentications = resources.request,
                workloads = resources.workloads,
                initial,
                "policy snapshot published"
            );
        }
        Event::ReloadFailed { errors } => {
            metrics.reload_errors.inc();
            for e in errors {
                tracing::error!(error = e.as_str(), "policy reload rejected");
            }
            tracing::error!(
                errors = errors.len(),
                "policy change not applied; the last good snapshot keeps serving"
            );
        }
        Event::JwksFetched { uri, keys } => {
            metrics
                .jwks_fetches
                .get_or_create(&JwksLabels {
                    uri: uri.clone(),
                    result: "success",
                })
                .inc();
            tracing::info!(uri = uri.as_str(), keys, "JWKS fetched");
        }
        Event::JwksFailed {
            uri,
            error,
            kept_keys,
        } => {
            metrics
                .jwks_fetches
                .get_or_create(&JwksLabels {
                    uri: uri.clone(),
                    result: "failure",
                })
                .inc();
            tracing::warn!(
                uri = uri.as_str(),
                error = error.as_str(),
                kept_keys,
                "JWKS fetch failed; keeping the last good keys"
            );
        }
    })
}

/// Runs the server until SIGTERM/SIGINT. Exit status: 0 after a graceful stop, 1 on a startup
/// error (invalid policy, bad TLS files, a port in use).
pub fn run(args: &ServeArgs) -> i32 {
    // clap's `requires` does not see a bool flag as missing (it has a default), so say it here,
    // with clap's exit status for usage errors.
    if !args.kubernetes && !args.watch_namespaces.is_empty() {
        eprintln!("error: --watch-namespace needs --kubernetes (it scopes the Kubernetes watches)");
        return 2;
    }
    let _log = log::init(args.log_format);
    let metrics = Arc::new(Metrics::new());
    let observe = observer(metrics.clone());
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("meshauthz-serve")
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return 1;
        }
    };
    let source = if args.kubernetes {
        let config = kube::KubeConfig {
            namespaces: args.watch_namespaces.clone(),
            istio_namespace: args.istio_namespace.clone(),
            mesh_file: args.mesh.clone(),
        };
        match runtime.block_on(kube::KubeSource::start(
            config,
            observe.clone(),
            metrics.clone(),
        )) {
            Ok(k) => PolicySource::Kubernetes(k),
            Err(e) => {
                eprintln!("error: {e}");
                return 1;
            }
        }
    } else {
        match PolicyWatcher::start(
            WatchConfig::new(args.policies.clone(), args.mesh.clone()),
            observe.clone(),
        ) {
            Ok(w) => PolicySource::Files(w),
            Err(errors) => {
                for e in &errors {
                    eprintln!("error: {e}");
                }
                eprintln!(
                    "meshauthz serve: {} error(s) in the policies; not serving",
                    errors.len()
                );
                return 1;
            }
        }
    };
    let tls = match tls_config(args) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("error: {e}");
            return 1;
        }
    };
    let jwks_config = JwksConfig {
        refresh_interval: Duration::from_secs(args.jwks_refresh_interval.max(1)),
        ..JwksConfig::default()
    };
    let jwks = match JwksStore::start(source.publisher().clone(), jwks_config, observe) {
        Ok(j) => j,
        Err(e) => {
            eprintln!("error: cannot start the JWKS fetcher: {e}");
            return 1;
        }
    };
    let state = Arc::new(State {
        snapshot: source.publisher().shared(),
        publisher: source.publisher().clone(),
        watch: source.status(),
        jwks: jwks.handle(),
        metrics,
        tokens: MokaTokenCache::new(cache::MAX_TOKENS),
        kube: match &source {
            PolicySource::Kubernetes(k) => Some(k.view.clone()),
            PolicySource::Files(_) => None,
        },
        options: CheckOptions {
            convert: ConvertOptions {
                trust_xfcc: args.trust_xfcc,
            },
            expose_decision_headers: args.expose_decision_headers,
        },
        ids: DecisionIds::default(),
    });
    let code = match runtime.block_on(serve(args, state, tls)) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("error: {e}");
            1
        }
    };
    drop(jwks);
    drop(source);
    // Drop the runtime without waiting on blocked work (none is expected).
    runtime.shutdown_timeout(Duration::from_secs(1));
    code
}

/// Where policy comes from: files (polled) or the Kubernetes API (watched).
enum PolicySource {
    Files(PolicyWatcher),
    Kubernetes(kube::KubeSource),
}

impl PolicySource {
    fn publisher(&self) -> &Arc<Publisher> {
        match self {
            PolicySource::Files(w) => w.publisher(),
            PolicySource::Kubernetes(k) => &k.publisher,
        }
    }

    fn status(&self) -> StatusHandle {
        match self {
            PolicySource::Files(w) => w.status_handle(),
            PolicySource::Kubernetes(k) => k.status.clone(),
        }
    }
}

fn tls_config(args: &ServeArgs) -> Result<Option<ServerTlsConfig>, String> {
    let (Some(cert), Some(key)) = (&args.tls_cert, &args.tls_key) else {
        return Ok(None);
    };
    let read = |p: &PathBuf| std::fs::read(p).map_err(|e| format!("{}: {e}", p.display()));
    let mut config = ServerTlsConfig::new().identity(Identity::from_pem(read(cert)?, read(key)?));
    if let Some(ca) = &args.tls_client_ca {
        config = config.client_ca_root(Certificate::from_pem(read(ca)?));
    }
    Ok(Some(config))
}

/// Resolves when SIGTERM or SIGINT arrives.
async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

async fn serve(
    args: &ServeArgs,
    state: Arc<State>,
    tls: Option<ServerTlsConfig>,
) -> Result<(), String> {
    let grpc_listener = tokio::net::TcpListener::bind(args.grpc_addr)
        .await
        .map_err(|e| format!("cannot listen on {} (--grpc-addr): {e}", args.grpc_addr))?;
    let admin_listener = tokio::net::TcpListener::bind(args.admin_addr)
        .await
        .map_err(|e| format!("cannot listen on {} (--admin-addr): {e}", args.admin_addr))?;
    let grpc_addr = grpc_listener.local_addr().map_err(|e| e.to_string())?;
    let admin_addr = admin_listener.local_addr().map_err(|e| e.to_string())?;

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };

    // gRPC health: NOT_SERVING until ready, NOT_SERVING again while draining.
    let (health, health_service) = tonic_health::server::health_reporter();
    health
        .set_service_status("", ServingStatus::NotServing)
        .await;
    health
        .set_service_status(grpc::SERVICE_NAME, ServingStatus::NotServing)
        .await;
    {
        let state = state.clone();
        let health = health.clone();
        let mut stop = stop_rx.clone();
        tokio::spawn(async move {
            loop {
                if state.not_ready().is_none() {
                    health.set_service_status("", ServingStatus::Serving).await;
                    health
                        .set_service_status(grpc::SERVICE_NAME, ServingStatus::Serving)
                        .await;
                    tracing::info!("ready");
                    return;
                }
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(50)) => {}
                    _ = stop.changed() => return,
                }
            }
        });
    }

    let mut builder = Server::builder();
    if let Some(tls) = tls {
        builder = builder
            .tls_config(tls)
            .map_err(|e| format!("TLS configuration: {e}"))?;
    }
    let incoming = TcpIncoming::from(grpc_listener).with_nodelay(Some(true));
    let grpc_server = builder
        .add_service(health_service)
        .add_service(AuthorizationServer::new(grpc::CheckService::new(
            state.clone(),
        )))
        .serve_with_incoming_shutdown(incoming, stopped(stop_rx.clone()));
    let admin_server = axum::serve(admin_listener, admin::router(state.clone()))
        .with_graceful_shutdown(stopped(stop_rx.clone()));

    {
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "meshauthz serving grpc={grpc_addr} admin={admin_addr}");
        let _ = out.flush();
    }
    tracing::info!(
        grpc = %grpc_addr,
        admin = %admin_addr,
        tls = args.tls_cert.is_some(),
        mtls = args.tls_client_ca.is_some(),
        generation = state.snapshot.load().generation,
        "meshauthz serving"
    );

    tokio::spawn(async move {
        shutdown_signal().await;
        tracing::info!("shutdown signal: draining in-flight checks");
        health
            .set_service_status("", ServingStatus::NotServing)
            .await;
        health
            .set_service_status(grpc::SERVICE_NAME, ServingStatus::NotServing)
            .await;
        let _ = stop_tx.send(true);
    });

    let (grpc_result, admin_result) = tokio::join!(grpc_server, admin_server);
    grpc_result.map_err(|e| format!("gRPC server: {e}"))?;
    admin_result.map_err(|e| format!("admin server: {e}"))?;
    tracing::info!("stopped");
    Ok(())
}
