//! `meshauthz webhook`: a Kubernetes validating admission webhook that rejects invalid Istio
//! security resources at `kubectl apply` time, with the validator and the messages of
//! `meshauthz validate`.
//!
//! ```text
//!  API server --HTTPS POST /validate (AdmissionReview admission.k8s.io/v1)--> review()
//!                        \                                                      |
//!                         GET /healthz, /readyz -> 200       policy_compiler::validate_object
//!                                                            (the validator of `meshauthz validate`)
//!  --tls-cert/--tls-key --polled every --tls-reload-interval--> CertStore (ArcSwap) -> each handshake
//! ```
//!
//! State owned: the serving certificate ([`CertStore`], swapped when the files change, so a
//! rotated Secret is picked up without a restart), the listener and the tokio runtime. There is
//! no policy state: each request is judged on the object it carries.
//!
//! Semantics: CREATE and UPDATE of `AuthorizationPolicy`, `PeerAuthentication` and
//! `RequestAuthentication` (`security.istio.io` v1 and v1beta1) are validated; an invalid object
//! is denied with status code 400 and every error, one per line, as `meshauthz validate` prints
//! it (`admission: Kind namespace/name: field.path: message`); warnings go to
//! `response.warnings`, which kubectl prints. Everything else (DELETE, CONNECT, other kinds,
//! subresources such as `status`, an update of an object that is being deleted) is allowed
//! without a message. A body that is not an AdmissionReview gets HTTP 400, a body over
//! [`MAX_BODY_BYTES`] HTTP 413. Once listening, one line goes to stdout:
//! `meshauthz webhook serving addr=<addr>`; logs (one line per decision) go to stderr.

use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use axum::body::Bytes;
use axum::extract::DefaultBodyLimit;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use clap::Args;
use policy_compiler::load::SECURITY_GROUP;
use policy_compiler::LoadError;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;

use crate::serve::log::{self, LogFormat};

/// Request bodies larger than this are refused (HTTP 413). An object is at most ~1.5 MiB in
/// etcd, and an UPDATE carries it twice (`object` and `oldObject`).
pub const MAX_BODY_BYTES: usize = 6 * 1024 * 1024;

/// A denial lists at most this many errors (then says how many more there are).
const MAX_LISTED_ERRORS: usize = 100;

/// The "file" part of every location in the webhook's messages.
pub const SOURCE: &str = "admission";

const REVIEW_API_VERSION: &str = "admission.k8s.io/v1";
const REVIEW_KIND: &str = "AdmissionReview";
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, Args)]
pub struct WebhookArgs {
    /// The HTTPS listener: POST /validate, GET /healthz and /readyz (port 0: any free port).
    #[arg(long, default_value = "0.0.0.0:9443", env = "AUTHZ_WEBHOOK_ADDR")]
    pub addr: SocketAddr,
    /// PEM certificate chain (leaf first) the API server must trust (the webhook's caBundle).
    #[arg(long, value_name = "FILE")]
    pub tls_cert: PathBuf,
    /// PEM private key of --tls-cert (PKCS#8, PKCS#1 or SEC1).
    #[arg(long, value_name = "FILE")]
    pub tls_key: PathBuf,
    /// Seconds between checks of the certificate files; a changed, valid pair replaces the
    /// served certificate without a restart (an invalid one is logged and ignored).
    #[arg(long, default_value_t = 10, value_name = "SECONDS")]
    pub tls_reload_interval: u64,
    #[arg(long, value_enum, default_value = "text", env = "AUTHZ_LOG_FORMAT")]
    pub log_format: LogFormat,
}

/// Why the webhook cannot start (or a certificate change cannot be used).
#[derive(Debug, thiserror::Error)]
pub enum WebhookError {
    #[error("cannot read `{path}`: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("`{path}` holds no PEM certificate (`-----BEGIN CERTIFICATE-----`); --tls-cert needs the certificate chain")]
    NoCertificate { path: String },
    #[error("`{path}` holds no usable PEM private key (`-----BEGIN PRIVATE KEY-----`, `RSA PRIVATE KEY` or `EC PRIVATE KEY`): {reason}")]
    NoKey { path: String, reason: String },
    #[error("`{path}` is not valid PEM: {reason}")]
    Pem { path: String, reason: String },
    #[error("the key `{key}` cannot serve the certificate `{cert}` (is it the certificate's key?): {source}")]
    KeyMismatch {
        cert: String,
        key: String,
        #[source]
        source: rustls::Error,
    },
    #[error("TLS configuration: {0}")]
    Tls(#[source] rustls::Error),
    #[error("cannot listen on {addr} (--addr): {source}")]
    Listen {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot start the runtime: {0}")]
    Runtime(#[source] std::io::Error),
}

// === AdmissionReview (admission.k8s.io/v1), the fields we read and write ===

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct IncomingReview {
    #[serde(default)]
    api_version: String,
    #[serde(default)]
    kind: String,
    /// Read after the version check, so a wrong version is named as such.
    #[serde(default)]
    request: Option<Value>,
}

/// `request` of an AdmissionReview. Unknown fields are ignored (the API server adds some over
/// time).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AdmissionRequest {
    pub uid: String,
    /// The kind of `object`.
    pub kind: GroupVersionKind,
    #[serde(default)]
    pub namespace: Option<String>,
    #[serde(default)]
    pub name: Option<String>,
    /// CREATE, UPDATE, DELETE or CONNECT.
    pub operation: String,
    #[serde(default)]
    pub sub_resource: Option<String>,
    #[serde(default)]
    pub object: Option<Value>,
    #[serde(default)]
    pub user_info: Option<UserInfo>,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct GroupVersionKind {
    #[serde(default)]
    pub group: String,
    #[serde(default)]
    pub version: String,
    #[serde(default)]
    pub kind: String,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct UserInfo {
    #[serde(default)]
    pub username: String,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct OutgoingReview<'a> {
    api_version: &'static str,
    kind: &'static str,
    response: AdmissionResponse<'a>,
}

#[derive(Debug, Serialize)]
struct AdmissionResponse<'a> {
    uid: &'a str,
    allowed: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    status: Option<ResponseStatus<'a>>,
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    warnings: &'a [String],
}

#[derive(Debug, Serialize)]
struct ResponseStatus<'a> {
    code: u16,
    message: &'a str,
}

// === review: the decision, pure ===

/// The answer to one admission request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    pub allowed: bool,
    /// The denial message: every error, one per line.
    pub message: Option<String>,
    /// Validation warnings, one per entry, as kubectl prints them (`Warning: ...`).
    pub warnings: Vec<String>,
    /// For the log: why it was allowed without validation, or `validated`.
    pub basis: &'static str,
    /// Number of errors behind a denial.
    pub errors: usize,
}

impl Verdict {
    fn allow(basis: &'static str) -> Self {
        Verdict {
            allowed: true,
            message: None,
            warnings: Vec::new(),
            basis,
            errors: 0,
        }
    }
}

/// Is this a kind the webhook validates?
fn is_security_kind(gvk: &GroupVersionKind) -> bool {
    gvk.group == SECURITY_GROUP
        && matches!(gvk.version.as_str(), "v1" | "v1beta1")
        && matches!(
            gvk.kind.as_str(),
            "AuthorizationPolicy" | "PeerAuthentication" | "RequestAuthentication"
        )
}

/// Decides one admission request. Pure and total: any input gets an answer.
pub fn review(request: &AdmissionRequest) -> Verdict {
    if !matches!(request.operation.as_str(), "CREATE" | "UPDATE") {
        return Verdict::allow("operation not validated");
    }
    if !is_security_kind(&request.kind) {
        return Verdict::allow("kind not validated");
    }
    if request
        .sub_resource
        .as_deref()
        .is_some_and(|s| !s.is_empty())
    {
        return Verdict::allow("subresource not validated");
    }
    let Some(object) = &request.object else {
        return Verdict {
            allowed: false,
            message: Some(format!(
                "{SOURCE}: request.object: missing; a {} request must carry the object",
                request.operation
            )),
            warnings: Vec::new(),
            basis: "validated",
            errors: 1,
        };
    };
    // Removing the finalizers of an object that predates the webhook must stay possible.
    if request.operation == "UPDATE"
        && object
            .pointer("/metadata/deletionTimestamp")
            .is_some_and(|t| !t.is_null())
    {
        return Verdict::allow("object is being deleted");
    }
    let object = with_request_identity(object, request);
    let text = match serde_json::to_string(&object) {
        Ok(t) => t,
        Err(e) => {
            return Verdict {
                allowed: false,
                message: Some(format!("{SOURCE}: request.object: cannot be read: {e}")),
                warnings: Vec::new(),
                basis: "validated",
                errors: 1,
            }
        }
    };
    match policy_compiler::validate_object(SOURCE, &text) {
        Ok(valid) => Verdict {
            allowed: true,
            message: None,
            warnings: valid
                .warnings
                .iter()
                .map(|w| format!("{}: {}", w.location, w.message))
                .collect(),
            basis: "validated",
            errors: 0,
        },
        Err(errors) => Verdict {
            allowed: false,
            message: Some(denial_message(&errors)),
            warnings: Vec::new(),
            basis: "validated",
            errors: errors.len(),
        },
    }
}

/// The object as the API server will store it: a namespaced request's object may lack
/// `metadata.namespace` (and a generated name `metadata.name`); take them from the request.
fn with_request_identity(object: &Value, request: &AdmissionRequest) -> Value {
    let mut object = object.clone();
    if let Some(map) = object.as_object_mut() {
        let meta = map
            .entry("metadata")
            .or_insert_with(|| Value::Object(serde_json::Map::new()));
        if let Some(meta) = meta.as_object_mut() {
            for (field, from_request) in
                [("namespace", &request.namespace), ("name", &request.name)]
            {
                let missing = meta
                    .get(field)
                    .is_none_or(|v| v.is_null() || v.as_str() == Some(""));
                if let Some(value) = from_request.as_deref().filter(|v| !v.is_empty()) {
                    if missing {
                        meta.insert(field.to_string(), Value::String(value.to_string()));
                    }
                }
            }
        }
    }
    object
}

/// Every error as `meshauthz validate` prints it (without its `error: ` prefix), one per line.
pub fn denial_message(errors: &[LoadError]) -> String {
    let mut lines: Vec<String> = errors
        .iter()
        .take(MAX_LISTED_ERRORS)
        .map(ToString::to_string)
        .collect();
    if errors.len() > MAX_LISTED_ERRORS {
        lines.push(format!(
            "... and {} more error(s); `meshauthz validate -f` on the file lists them all",
            errors.len() - MAX_LISTED_ERRORS
        ));
    }
    lines.join("\n")
}

/// `namespace/name` of the request, for the log.
fn request_resource(request: &AdmissionRequest) -> String {
    let meta = request.object.as_ref().and_then(|o| o.get("metadata"));
    let pick = |given: &Option<String>, field: &str| {
        given
            .clone()
            .filter(|s| !s.is_empty())
            .or_else(|| {
                meta.and_then(|m| m.get(field))
                    .and_then(Value::as_str)
                    .map(str::to_string)
            })
            .unwrap_or_default()
    };
    format!(
        "{}/{}",
        pick(&request.namespace, "namespace"),
        pick(&request.name, "name")
    )
}

// === HTTP ===

fn router() -> Router {
    Router::new()
        .route("/validate", post(validate))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(|| async { "ok\n" }))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(axum::middleware::map_response(close_after_refusal))
}

/// A refused oversized body was not read to its end, so the connection cannot carry another
/// request: say so, or a keep-alive client would send its next request into a closed socket.
async fn close_after_refusal(mut response: Response) -> Response {
    if response.status() == StatusCode::PAYLOAD_TOO_LARGE {
        response.headers_mut().insert(
            header::CONNECTION,
            axum::http::HeaderValue::from_static("close"),
        );
    }
    response
}

fn plain(status: StatusCode, text: String) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        text,
    )
        .into_response()
}

/// Parses the body into the request to review, or says what is wrong with it.
fn parse_review(body: &[u8]) -> Result<AdmissionRequest, String> {
    let review: IncomingReview = serde_json::from_slice(body)
        .map_err(|e| format!("the body is not an AdmissionReview: {e}"))?;
    if review.api_version != REVIEW_API_VERSION || review.kind != REVIEW_KIND {
        return Err(format!(
            "expected `apiVersion: {REVIEW_API_VERSION}`, `kind: {REVIEW_KIND}`, got `{}` `{}`; list only v1 in the webhook's admissionReviewVersions",
            review.api_version, review.kind
        ));
    }
    let request = review
        .request
        .filter(|r| !r.is_null())
        .ok_or_else(|| "the AdmissionReview has no `request`".to_string())?;
    let request: AdmissionRequest = serde_json::from_value(request)
        .map_err(|e| format!("the AdmissionReview's `request` is malformed: {e}"))?;
    if request.uid.is_empty() {
        return Err("the AdmissionReview's `request.uid` is empty".to_string());
    }
    Ok(request)
}

async fn validate(body: Bytes) -> Response {
    let started = Instant::now();
    let request = match parse_review(&body) {
        Ok(r) => r,
        Err(message) => {
            tracing::warn!(error = message.as_str(), "malformed admission request");
            return plain(StatusCode::BAD_REQUEST, format!("{message}\n"));
        }
    };
    // Validation is CPU work (up to a few MiB of JSON): off the async workers. A panic there
    // (a bug) fails this request, never the server.
    let request = Arc::new(request);
    let verdict = {
        let request = request.clone();
        tokio::task::spawn_blocking(move || review(&request)).await
    };
    let verdict = match verdict {
        Ok(v) => v,
        Err(e) => {
            tracing::error!(uid = request.uid.as_str(), error = %e, "admission review failed");
            return plain(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal error while validating; see the webhook's log\n".to_string(),
            );
        }
    };
    let gvk = &request.kind;
    let user = request
        .user_info
        .as_ref()
        .map(|u| u.username.as_str())
        .unwrap_or("");
    tracing::info!(
        uid = request.uid.as_str(),
        operation = request.operation.as_str(),
        kind = format!("{}/{} {}", gvk.group, gvk.version, gvk.kind),
        resource = request_resource(&request),
        user,
        allowed = verdict.allowed,
        basis = verdict.basis,
        errors = verdict.errors,
        warnings = verdict.warnings.len(),
        denial = verdict.message.as_deref().unwrap_or(""),
        latency_us = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX),
        "admission decision"
    );
    let out = OutgoingReview {
        api_version: REVIEW_API_VERSION,
        kind: REVIEW_KIND,
        response: AdmissionResponse {
            uid: &request.uid,
            allowed: verdict.allowed,
            status: verdict
                .message
                .as_deref()
                .map(|message| ResponseStatus { code: 400, message }),
            warnings: &verdict.warnings,
        },
    };
    match serde_json::to_vec(&out) {
        Ok(json) => (
            StatusCode::OK,
            [(header::CONTENT_TYPE, "application/json")],
            json,
        )
            .into_response(),
        Err(e) => plain(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("cannot encode the AdmissionReview: {e}\n"),
        ),
    }
}

// === TLS: the certificate and its reload ===

/// The served certificate; the reloader swaps it, each handshake reads it.
#[derive(Debug)]
pub struct CertStore {
    current: ArcSwap<CertifiedKey>,
}

impl ResolvesServerCert for CertStore {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.load_full())
    }
}

/// Parses a certificate chain and its key, and checks that they belong together.
fn certified_key(
    cert_path: &Path,
    cert_pem: &[u8],
    key_path: &Path,
    key_pem: &[u8],
    provider: &CryptoProvider,
) -> Result<CertifiedKey, WebhookError> {
    let cert_name = cert_path.display().to_string();
    let key_name = key_path.display().to_string();
    let chain = CertificateDer::pem_slice_iter(cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| WebhookError::Pem {
            path: cert_name.clone(),
            reason: e.to_string(),
        })?;
    if chain.is_empty() {
        return Err(WebhookError::NoCertificate { path: cert_name });
    }
    let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| WebhookError::NoKey {
        path: key_name.clone(),
        reason: e.to_string(),
    })?;
    CertifiedKey::from_der(chain, key, provider).map_err(|source| WebhookError::KeyMismatch {
        cert: cert_name,
        key: key_name,
        source,
    })
}

fn read(path: &Path) -> Result<Vec<u8>, WebhookError> {
    std::fs::read(path).map_err(|source| WebhookError::Read {
        path: path.display().to_string(),
        source,
    })
}

/// Polls the certificate files; a changed pair that parses and matches replaces the served one.
/// The last contents seen are remembered, so a bad pair is reported once, not every poll, and
/// a half-written rotation (new certificate, old key) is retried when the key changes.
async fn reload_certificates(
    store: Arc<CertStore>,
    args: WebhookArgs,
    provider: Arc<CryptoProvider>,
    mut seen: (Vec<u8>, Vec<u8>),
    mut stop: watch::Receiver<bool>,
) {
    let interval = Duration::from_secs(args.tls_reload_interval.max(1));
    let mut last_read_error = String::new();
    loop {
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        let files = read(&args.tls_cert).and_then(|c| Ok((c, read(&args.tls_key)?)));
        let current = match files {
            Ok(f) => f,
            Err(e) => {
                let text = e.to_string();
                if text != last_read_error {
                    tracing::warn!(
                        error = text.as_str(),
                        "cannot read the certificate files; keeping the current certificate"
                    );
                    last_read_error = text;
                }
                continue;
            }
        };
        last_read_error.clear();
        if current == seen {
            continue;
        }
        match certified_key(
            &args.tls_cert,
            &current.0,
            &args.tls_key,
            &current.1,
            &provider,
        ) {
            Ok(key) => {
                store.current.store(Arc::new(key));
                tracing::info!(cert = %args.tls_cert.display(), "certificate reloaded");
            }
            Err(e) => tracing::warn!(
                error = %e,
                "the certificate files changed but cannot be used; keeping the current certificate"
            ),
        }
        seen = current;
    }
}

/// TLS connections whose handshake completed, for `axum::serve`. Handshakes run in their own
/// tasks (with a timeout), so a slow client never holds up the others.
struct TlsListener {
    connections: mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
    local: SocketAddr,
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.connections.recv().await {
            Some(connection) => connection,
            // The acceptor stopped (shutdown): nothing more will come.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.local)
    }
}

async fn accept_tls(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    ready: mpsc::Sender<(TlsStream<TcpStream>, SocketAddr)>,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = stop.wait_for(|s| *s) => return,
        };
        let (tcp, peer) = match accepted {
            Ok(c) => c,
            Err(e) => {
                // Out of file descriptors and the like: back off instead of spinning.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        let acceptor = acceptor.clone();
        let ready = ready.clone();
        tokio::spawn(async move {
            match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                Ok(Ok(tls)) => {
                    let _ = ready.send((tls, peer)).await;
                }
                Ok(Err(e)) => tracing::warn!(
                    %peer,
                    error = %e,
                    "TLS handshake failed (does the webhook configuration's caBundle match --tls-cert?)"
                ),
                Err(_) => tracing::warn!(%peer, "TLS handshake timed out"),
            }
        });
    }
}

/// Resolves when SIGTERM or SIGINT arrives. The handlers are installed when this is called (not
/// when first polled), so a signal sent right after the `serving` line is not missed.
#[cfg(unix)]
fn shutdown_signal() -> impl std::future::Future<Output = ()> + Send {
    use tokio::signal::unix::{signal, Signal, SignalKind};
    async fn received(signal: Option<Signal>) {
        match signal {
            Some(mut s) => {
                let _ = s.recv().await;
            }
            None => std::future::pending().await,
        }
    }
    let term = signal(SignalKind::terminate()).ok();
    let int = signal(SignalKind::interrupt()).ok();
    async move {
        tokio::select! {
            _ = received(term) => {}
            _ = received(int) => {}
        }
    }
}

#[cfg(not(unix))]
fn shutdown_signal() -> impl std::future::Future<Output = ()> + Send {
    async {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// Runs the webhook until SIGTERM/SIGINT. Exit status: 0 after a graceful stop, 1 on a startup
/// error (unusable certificate or key, a port in use).
pub fn run(args: &WebhookArgs) -> i32 {
    let _log = log::init(args.log_format);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("meshauthz-webhook")
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: {}", WebhookError::Runtime(e));
            return 1;
        }
    };
    let code = match runtime.block_on(serve(args.clone())) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("error: {e}");
            1
        }
    };
    runtime.shutdown_timeout(Duration::from_secs(1));
    code
}

async fn serve(args: WebhookArgs) -> Result<(), WebhookError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let seen = (read(&args.tls_cert)?, read(&args.tls_key)?);
    let key = certified_key(&args.tls_cert, &seen.0, &args.tls_key, &seen.1, &provider)?;
    let store = Arc::new(CertStore {
        current: ArcSwap::from_pointee(key),
    });
    let mut config = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(WebhookError::Tls)?
        .with_no_client_auth()
        .with_cert_resolver(store.clone());
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let acceptor = TlsAcceptor::from(Arc::new(config));

    let listener = TcpListener::bind(args.addr)
        .await
        .map_err(|source| WebhookError::Listen {
            addr: args.addr,
            source,
        })?;
    let local = listener
        .local_addr()
        .map_err(|source| WebhookError::Listen {
            addr: args.addr,
            source,
        })?;

    let signalled = shutdown_signal();
    let (stop_tx, stop_rx) = watch::channel(false);
    let (ready_tx, ready_rx) = mpsc::channel(64);
    tokio::spawn(accept_tls(listener, acceptor, ready_tx, stop_rx.clone()));
    tokio::spawn(reload_certificates(
        store,
        args.clone(),
        provider,
        seen,
        stop_rx.clone(),
    ));

    {
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "meshauthz webhook serving addr={local}");
        let _ = out.flush();
    }
    tracing::info!(addr = %local, cert = %args.tls_cert.display(), "meshauthz webhook serving");

    let listener = TlsListener {
        connections: ready_rx,
        local,
    };
    let mut stopped = stop_rx.clone();
    let server = axum::serve(listener, router()).with_graceful_shutdown(async move {
        let _ = stopped.wait_for(|s| *s).await;
    });
    tokio::spawn(async move {
        signalled.await;
        tracing::info!("shutdown signal: finishing in-flight reviews");
        let _ = stop_tx.send(true);
    });
    // `axum::serve` over a custom listener only returns after the graceful shutdown.
    let _ = server.await;
    tracing::info!("stopped");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mk_request(operation: &str, kind: &str, object: Value) -> AdmissionRequest {
        AdmissionRequest {
            uid: "u-1".into(),
            kind: GroupVersionKind {
                group: SECURITY_GROUP.into(),
                version: "v1".into(),
                kind: kind.into(),
            },
            namespace: Some("foo".into()),
            name: Some("p".into()),
            operation: operation.into(),
            object: Some(object),
            ..AdmissionRequest::default()
        }
    }

    const BAD: &str = r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: p
  namespace: foo
spec:
  rules:
  - from:
    - source:
        principals: [""]
        serviceAccounts: ["*"]
"#;

    /// The CLI's path (`meshauthz validate` reads files through `Inputs::load_str`) and the
    /// webhook's give the same errors, word for word after the location's file part.
    #[test]
    fn the_webhook_and_validate_report_the_same_errors() {
        let cli = policy_compiler::Inputs::default().load_str("bad.yaml", BAD);
        assert!(cli.len() >= 2, "{cli:?}");
        let mut object: Value = serde_yaml::from_str(BAD).unwrap();
        // The API server may leave the namespace out; the request names it.
        object["metadata"]
            .as_object_mut()
            .unwrap()
            .remove("namespace");
        let verdict = review(&mk_request("CREATE", "AuthorizationPolicy", object));
        assert!(!verdict.allowed);
        let message = verdict.message.unwrap();
        let lines: Vec<&str> = message.lines().collect();
        assert_eq!(lines.len(), cli.len(), "{message}");
        for (line, e) in lines.iter().zip(&cli) {
            let tail = format!(
                "{}: {}: {}",
                e.location.resource.as_deref().unwrap(),
                e.location.field.as_deref().unwrap(),
                e.message
            );
            assert_eq!(*line, format!("{SOURCE}: {tail}"));
            assert!(e.to_string().ends_with(&tail), "{e}");
        }
    }

    #[test]
    fn only_create_and_update_of_security_kinds_are_validated() {
        let bad: Value = serde_yaml::from_str(BAD).unwrap();
        assert!(!review(&mk_request("UPDATE", "AuthorizationPolicy", bad.clone())).allowed);
        for op in ["DELETE", "CONNECT"] {
            assert_eq!(
                review(&mk_request(op, "AuthorizationPolicy", bad.clone())),
                Verdict::allow("operation not validated")
            );
        }
        let mut other = mk_request("CREATE", "Sidecar", bad.clone());
        other.kind.group = "networking.istio.io".into();
        assert!(review(&other).allowed);
        let mut status = mk_request("UPDATE", "AuthorizationPolicy", bad.clone());
        status.sub_resource = Some("status".into());
        assert!(review(&status).allowed);
        let mut deleting = bad;
        deleting["metadata"]["deletionTimestamp"] = "2026-01-01T00:00:00Z".into();
        assert!(review(&mk_request("UPDATE", "AuthorizationPolicy", deleting)).allowed);
        let mut no_object = mk_request("CREATE", "AuthorizationPolicy", Value::Null);
        no_object.object = None;
        assert!(!review(&no_object).allowed);
    }

    #[test]
    fn malformed_reviews_are_explained() {
        assert!(parse_review(b"{")
            .unwrap_err()
            .contains("not an AdmissionReview"));
        assert!(parse_review(
            br#"{"apiVersion":"admission.k8s.io/v1beta1","kind":"AdmissionReview","request":{}}"#
        )
        .unwrap_err()
        .contains("admissionReviewVersions"));
        assert!(
            parse_review(br#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview"}"#)
                .unwrap_err()
                .contains("no `request`")
        );
        let missing_uid = parse_review(
            br#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{}}"#,
        )
        .unwrap_err();
        assert!(
            missing_uid.contains("`request` is malformed") && missing_uid.contains("uid"),
            "{missing_uid}"
        );
        // Arbitrary JSON values never panic.
        for body in [&b"null"[..], b"[]", b"1", b"\"x\"", b"{\"request\":null}"] {
            assert!(parse_review(body).is_err());
        }
    }

    #[test]
    fn odd_objects_are_denied_not_panicked_on() {
        for object in [
            Value::Null,
            Value::from(1),
            serde_json::json!({"metadata": "x"}),
            serde_json::json!({"apiVersion": "security.istio.io/v1", "kind": "AuthorizationPolicy", "metadata": []}),
            serde_json::json!({"apiVersion": "security.istio.io/v1", "kind": "AuthorizationPolicy", "spec": {"rules": "x"}}),
        ] {
            let v = review(&mk_request("CREATE", "AuthorizationPolicy", object));
            assert!(!v.allowed);
            assert!(v.message.is_some_and(|m| m.starts_with("admission")));
        }
    }
}
