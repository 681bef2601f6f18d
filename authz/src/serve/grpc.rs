//! The ext_authz gRPC service: `envoy.service.auth.v3.Authorization/Check`.
//!
//! State owned: none of its own; it borrows the server's [`State`] (snapshot handle, token
//! cache, metrics). Per Check, synchronously and without locks: convert the CheckRequest, load
//! the snapshot ONCE, resolve the workload, `decide_with` (inside `catch_unwind`: a panic
//! denies), answer, count, log.
//!
//! Answers (Envoy's ext_authz contract):
//! - ALLOW => `OK` with an `OkHttpResponse` carrying the RequestAuthentication effects on the
//!   upstream request (headers to set, overwriting; headers to remove, e.g. the token).
//! - DENY => `PERMISSION_DENIED` with a `DeniedHttpResponse` 403 `RBAC: access denied` (or
//!   Envoy's JWT text for an audience mismatch).
//! - UNAUTHENTICATED => `UNAUTHENTICATED` with a 401, `www-authenticate: Bearer
//!   realm="<scheme>://<host><path>"` and Envoy's JWT error text as the body.
//! - A TCP (network filter) Check: only the status.
//!
//! Policy names and reasons go to the logs and metrics only, unless `--expose-decision-headers`
//! adds `x-meshauthz-decision`, `x-meshauthz-policy`, `x-meshauthz-reason` and
//! `x-meshauthz-decision-id` to the response (downstream) headers, for both answers.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use authz_engine::{Decision, Protocol, Reason, Snapshot, Verdict};
use envoy_types::pb::envoy::config::core::v3::{
    header_value_option::HeaderAppendAction, HeaderValue, HeaderValueOption,
};
use envoy_types::pb::envoy::r#type::v3::{HttpStatus, StatusCode as HttpStatusCode};
use envoy_types::pb::envoy::service::auth::v3::authorization_server::Authorization;
use envoy_types::pb::envoy::service::auth::v3::check_response::HttpResponse;
use envoy_types::pb::envoy::service::auth::v3::{
    CheckRequest, CheckResponse, DeniedHttpResponse, OkHttpResponse,
};
use envoy_types::pb::google::rpc;
use tonic::{Code, Request, Response, Status};

use super::convert::{self, Converted};
use super::metrics::{ActionLabels, DecisionLabels, GrpcLabels, UNRESOLVED};
use super::State;

pub const SERVICE_NAME: &str = "envoy.service.auth.v3.Authorization";

/// The `Authorization` service over the server state.
#[derive(Debug, Clone)]
pub struct CheckService {
    state: Arc<State>,
}

impl CheckService {
    pub fn new(state: Arc<State>) -> CheckService {
        CheckService { state }
    }
}

#[tonic::async_trait]
impl Authorization for CheckService {
    async fn check(
        &self,
        request: Request<CheckRequest>,
    ) -> Result<Response<CheckResponse>, Status> {
        let started = Instant::now();
        let response = check(&self.state, &request.into_inner(), started);
        self.state
            .metrics
            .grpc_handled
            .get_or_create(&GrpcLabels {
                grpc_service: SERVICE_NAME,
                grpc_method: "Check",
                grpc_code: "OK",
            })
            .inc();
        Ok(Response::new(response))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Resolution {
    Resolved,
    Unresolved,
    Panicked,
}

/// One Check, start to finish (no await: nothing here can wait on another request).
pub fn check(state: &State, req: &CheckRequest, started: Instant) -> CheckResponse {
    let id = state.ids.next();
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default();
    // The one snapshot this request sees.
    let snapshot = state.snapshot.load();
    let evaluated = catch_unwind(AssertUnwindSafe(|| {
        let mut converted = convert::convert(req, state.options.convert, now);
        let resolved = convert::resolve_workload(&snapshot, &converted.hints);
        let decision = match &resolved {
            Ok(workload) => {
                converted.attrs.workload = workload.clone();
                authz_engine::decide_with(&snapshot, &converted.attrs, &state.tokens)
            }
            Err(why) => denial(&snapshot, &why.0),
        };
        let resolution = if resolved.is_ok() {
            Resolution::Resolved
        } else {
            Resolution::Unresolved
        };
        (converted, resolution, decision)
    }));
    let (converted, resolved, decision) = match evaluated {
        Ok(e) => e,
        Err(_) => {
            state.metrics.internal_errors.inc();
            tracing::error!(
                decision_id = id.as_str(),
                "internal error: evaluation panicked; denying"
            );
            let mut c = Converted::default();
            c.attrs.protocol = if req
                .attributes
                .as_ref()
                .and_then(|a| a.request.as_ref())
                .and_then(|r| r.http.as_ref())
                .is_some()
            {
                Protocol::Http
            } else {
                Protocol::Tcp
            };
            let mut d = denial(&snapshot, "internal error: evaluation panicked");
            d.reason = Reason::EvaluationError;
            (c, Resolution::Panicked, d)
        }
    };

    if decision.verdict != Verdict::Allow && jwks_may_be_stale(&decision) {
        for uri in workload_jwks_uris(&snapshot, &converted.attrs.workload) {
            if state.jwks.request_refresh(&uri) {
                tracing::info!(uri = uri.as_str(), "unknown token key: refreshing the JWKS");
            }
        }
    }
    drop(snapshot);

    let response = answer(
        &decision,
        &converted,
        state.options.expose_decision_headers,
        &id,
    );
    let latency = started.elapsed();
    let m = &state.metrics;
    m.decision_duration.observe(latency.as_secs_f64());
    let workload = match resolved {
        Resolution::Resolved => converted.attrs.workload.clone(),
        Resolution::Unresolved => {
            m.unresolved_workloads.inc();
            UNRESOLVED.to_string()
        }
        Resolution::Panicked => UNRESOLVED.to_string(),
    };
    m.decisions
        .get_or_create(&DecisionLabels {
            verdict: decision.verdict.as_str(),
            workload: workload.clone(),
        })
        .inc();
    for dry in &decision.dry_run {
        m.dry_run_matches
            .get_or_create(&ActionLabels {
                action: dry.action.unwrap_or("UNKNOWN"),
            })
            .inc();
    }
    if !decision.audit.is_empty() {
        m.audit_matches.inc_by(decision.audit.len() as u64);
    }
    let detail = (resolved != Resolution::Resolved).then(|| decision.errors.join("; "));
    super::log::decision(&super::log::DecisionLine {
        id: &id,
        workload: &workload,
        attrs: &converted.attrs,
        decision: &decision,
        latency,
        detail: detail.as_deref(),
    });
    response
}

/// A denial for a request whose workload could not be chosen (fail closed), with `why` as its
/// error.
fn denial(snapshot: &Snapshot, why: &str) -> Decision {
    let mut d = Decision::new(Verdict::Deny, Reason::UnknownWorkload, snapshot.generation);
    d.errors = vec![why.to_string()];
    d
}

/// A token was rejected for want of a key: a rotated `kid`, or keys never fetched.
fn jwks_may_be_stale(d: &Decision) -> bool {
    d.missing_jwt_key
}

/// The `jwksUri`s of the RequestAuthentications that select `workload`.
fn workload_jwks_uris(snapshot: &Snapshot, workload: &str) -> Vec<String> {
    snapshot.jwks_uris_for(workload)
}

#[allow(
    deprecated,
    reason = "`append` is deprecated; it must still be named to build the struct"
)]
fn header(key: &str, value: &str, action: HeaderAppendAction) -> HeaderValueOption {
    HeaderValueOption {
        header: Some(HeaderValue {
            key: key.to_string(),
            value: value.to_string(),
            raw_value: Vec::new(),
        }),
        append: None,
        append_action: action.into(),
        keep_empty_value: false,
    }
}

fn rpc_status(code: Code) -> Option<rpc::Status> {
    Some(rpc::Status {
        code: code.into(),
        message: String::new(),
        details: Vec::new(),
    })
}

/// The `x-meshauthz-*` headers.
fn decision_headers(d: &Decision, id: &str) -> Vec<HeaderValueOption> {
    let mut policies: Vec<&str> = d.determining.iter().map(|m| m.policy.as_str()).collect();
    policies.dedup();
    let set = HeaderAppendAction::OverwriteIfExistsOrAdd;
    let mut out = vec![
        header("x-meshauthz-decision", d.verdict.as_str(), set),
        header("x-meshauthz-reason", d.reason.name(), set),
        header("x-meshauthz-decision-id", id, set),
    ];
    if !policies.is_empty() {
        out.push(header("x-meshauthz-policy", &policies.join(","), set));
    }
    out
}

/// The CheckResponse for a decision (see the module header).
pub fn answer(d: &Decision, c: &Converted, expose: bool, id: &str) -> CheckResponse {
    let code = match d.verdict {
        Verdict::Allow => Code::Ok,
        Verdict::Deny => Code::PermissionDenied,
        Verdict::Unauthenticated => Code::Unauthenticated,
    };
    let mut response = CheckResponse {
        status: rpc_status(code),
        ..CheckResponse::default()
    };
    if c.attrs.protocol == Protocol::Tcp {
        return response;
    }
    let overwrite = HeaderAppendAction::OverwriteIfExistsOrAdd;
    let http = match d.verdict {
        Verdict::Allow => {
            #[allow(
                deprecated,
                reason = "`dynamic_metadata` is deprecated; it must still be named"
            )]
            let ok = OkHttpResponse {
                headers: d
                    .upstream
                    .set
                    .iter()
                    .map(|(k, v)| header(k, v, overwrite))
                    .collect(),
                headers_to_remove: d.upstream.remove.clone(),
                dynamic_metadata: None,
                response_headers_to_add: if expose {
                    decision_headers(d, id)
                } else {
                    Vec::new()
                },
                query_parameters_to_set: Vec::new(),
                query_parameters_to_remove: Vec::new(),
            };
            HttpResponse::OkResponse(ok)
        }
        Verdict::Deny | Verdict::Unauthenticated => {
            let (status, body) = match (&d.verdict, &d.reason) {
                (Verdict::Unauthenticated, Reason::Jwt { error }) => {
                    (HttpStatusCode::Unauthorized, error.clone())
                }
                (Verdict::Unauthenticated, _) => {
                    (HttpStatusCode::Unauthorized, d.body().to_string())
                }
                // An audience mismatch is a 403 with Envoy's JWT text.
                (_, Reason::Jwt { error }) => (HttpStatusCode::Forbidden, error.clone()),
                _ => (HttpStatusCode::Forbidden, d.body().to_string()),
            };
            let mut headers = vec![header("content-type", "text/plain", overwrite)];
            if d.verdict == Verdict::Unauthenticated {
                headers.push(header(
                    "www-authenticate",
                    &format!("Bearer realm=\"{}\"", c.realm()),
                    overwrite,
                ));
            }
            if expose {
                headers.extend(decision_headers(d, id));
            }
            HttpResponse::DeniedResponse(DeniedHttpResponse {
                status: Some(HttpStatus {
                    code: status.into(),
                }),
                headers,
                body,
            })
        }
    };
    response.http_response = Some(http);
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use authz_engine::decide::HeaderEffects;

    fn mk_decision(verdict: Verdict, reason: Reason) -> Decision {
        let compiled = policy_compiler::compile(
            &policy_compiler::Inputs::default(),
            &policy_compiler::MeshConfig::default(),
            &[],
        )
        .unwrap();
        let mut d = denial(&Snapshot::build(compiled, 1).unwrap(), "");
        d.verdict = verdict;
        d.reason = reason;
        d
    }

    fn mk_http() -> Converted {
        let mut c = Converted {
            scheme: "https".into(),
            ..Converted::default()
        };
        c.attrs.protocol = Protocol::Http;
        c.attrs.host = "api.example".into();
        c.attrs.path = "/a?access_token=x".into();
        c
    }

    #[test]
    fn allow_carries_upstream_effects() {
        let mut d = mk_decision(Verdict::Allow, Reason::AllowMatched);
        d.upstream = HeaderEffects {
            set: vec![("x-user".into(), "alice".into())],
            remove: vec!["authorization".into()],
        };
        let r = answer(&d, &mk_http(), false, "id");
        assert_eq!(r.status.as_ref().map(|s| s.code), Some(0));
        let Some(HttpResponse::OkResponse(ok)) = r.http_response else {
            panic!("not ok")
        };
        assert_eq!(ok.headers.len(), 1);
        assert_eq!(
            ok.headers[0].append_action,
            HeaderAppendAction::OverwriteIfExistsOrAdd as i32
        );
        assert_eq!(ok.headers_to_remove, vec!["authorization".to_string()]);
        assert!(ok.response_headers_to_add.is_empty());
    }

    #[test]
    fn unauthenticated_has_realm_and_text() {
        let d = mk_decision(
            Verdict::Unauthenticated,
            Reason::Jwt {
                error: "Jwt is expired".into(),
            },
        );
        let r = answer(&d, &mk_http(), false, "id");
        assert_eq!(r.status.as_ref().map(|s| s.code), Some(16));
        let Some(HttpResponse::DeniedResponse(denied)) = r.http_response else {
            panic!("not denied")
        };
        assert_eq!(denied.status.map(|s| s.code), Some(401));
        assert_eq!(denied.body, "Jwt is expired");
        let www = denied
            .headers
            .iter()
            .filter_map(|h| h.header.as_ref())
            .find(|h| h.key == "www-authenticate")
            .map(|h| h.value.clone());
        assert_eq!(
            www.as_deref(),
            Some("Bearer realm=\"https://api.example/a\"")
        );
    }

    #[test]
    fn tcp_only_status() {
        let d = mk_decision(Verdict::Deny, Reason::DenyMatched);
        let mut c = Converted::default();
        c.attrs.protocol = Protocol::Tcp;
        let r = answer(&d, &c, true, "id");
        assert_eq!(r.status.as_ref().map(|s| s.code), Some(7));
        assert!(r.http_response.is_none());
    }
}
