//! The admin HTTP port (`--admin-addr`, default `0.0.0.0:9192`):
//!
//! | path        | answer                                                                   |
//! |-------------|--------------------------------------------------------------------------|
//! | `/healthz`  | 200 while the process runs                                               |
//! | `/readyz`   | 200 once a snapshot is loaded and every `jwksUri` had a first fetch, else 503 |
//! | `/metrics`  | Prometheus text                                                          |
//! | `/snapshot` | JSON: generation, resources, workloads, last error, reloads, JWKS status |
//!
//! State owned: none; it reads the server's [`State`].

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::extract::State as AxumState;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use serde_json::json;

use super::metrics::Metrics;
use super::State;

pub fn router(state: Arc<State>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/snapshot", get(snapshot))
        .with_state(state)
}

async fn readyz(AxumState(state): AxumState<Arc<State>>) -> Response {
    match state.not_ready() {
        None => (StatusCode::OK, "ready\n").into_response(),
        Some(why) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {why}\n"),
        )
            .into_response(),
    }
}

async fn metrics(AxumState(state): AxumState<Arc<State>>) -> Response {
    (
        [(header::CONTENT_TYPE, Metrics::CONTENT_TYPE)],
        state.metrics.render(),
    )
        .into_response()
}

/// Seconds since the Unix epoch, and RFC 3339-ish UTC text is left to the reader's tools.
fn epoch(t: Option<SystemTime>) -> serde_json::Value {
    t.and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map_or(serde_json::Value::Null, |d| json!(d.as_secs()))
}

async fn snapshot(AxumState(state): AxumState<Arc<State>>) -> Response {
    let status = state.watch.get();
    let current = state.snapshot.load_full();
    let mut workloads: Vec<String> = current
        .compiled()
        .workloads
        .iter()
        .map(|w| w.key())
        .collect();
    workloads.sort();
    let jwks: Vec<serde_json::Value> = state
        .jwks
        .statuses()
        .into_iter()
        .map(|s| {
            json!({
                "uri": s.uri,
                "keys": s.keys,
                "fetches": s.fetches,
                "failures": s.failures,
                "last_attempt": epoch(s.last_attempt),
                "last_success": epoch(s.last_success),
                "last_error": s.last_error,
            })
        })
        .collect();
    let last_error = status.last_error.as_ref().map(|e| {
        json!({
            "at": epoch(Some(e.at)),
            "errors": e.errors,
        })
    });
    let kubernetes = state.kube.as_ref().map(|k| {
        let view = k
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        let watches: Vec<serde_json::Value> = view
            .watches
            .iter()
            .map(|w| {
                json!({
                    "watch": w.label,
                    "synced": w.synced,
                    "failing_since": epoch(w.failing_since),
                    "errors": w.errors,
                    "last_error": w.last_error,
                })
            })
            .collect();
        json!({
            "watches": watches,
            "stale_seconds": view.stale_seconds(SystemTime::now()),
            "invalid_objects": view.rejected,
            "mesh_error": view.mesh_error,
            "discovery_error": view.discovery_error,
        })
    });
    let body = json!({
        "generation": current.generation,
        "ready": state.not_ready().is_none(),
        "resources": {
            "authorizationPolicies": status.resources.authorization,
            "peerAuthentications": status.resources.peer,
            "requestAuthentications": status.resources.request,
            "workloads": status.resources.workloads,
        },
        "workloads": workloads,
        "policy_classes": current.class_count(),
        "last_success": epoch(status.last_success),
        "last_error": last_error,
        "reloads": status.reloads,
        "reload_errors": status.reload_errors,
        "jwks": jwks,
        "token_cache_entries": state.tokens.entry_count(),
        "kubernetes": kubernetes,
    });
    (
        [(header::CONTENT_TYPE, "application/json")],
        format!("{body:#}\n"),
    )
        .into_response()
}
