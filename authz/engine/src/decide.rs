//! `decide`: the one evaluation path. Every host (CLI, ext_authz server, native filter) calls
//! it; it is pure and synchronous, reads no clock and does no I/O.
//!
//! Order (Istio's filter chain): PeerAuthentication (STRICT on plaintext => DENY), CUSTOM with
//! no usable provider (=> DENY; Istio's ext_authz runs before jwt_authn), RequestAuthentication
//! (a present but invalid token => 401; audience mismatch => 403), then Cedar over DENY and ALLOW.
//! Any error on the way denies (fail closed).

use std::collections::BTreeMap;

use cedar_policy::Request;
use cedar_policy_core::evaluator::Evaluator;
use policy_compiler::compile::{ResourceKey, Role, DEFAULT_ALLOW_ID};
use policy_compiler::resources::MtlsMode;

use crate::attrs::{spiffe_trust_domain, Protocol, RequestAttrs, SpiffeError};
use crate::context::{build_request, ContextInputs};
use crate::eval::{evaluator, PolicyList, Tally};
use crate::jwt::{self, AuthnOutcome, JwtError};
use crate::path::{normalize_path, split_path};
use crate::snapshot::{ContextNeeds, PolicyClass, Snapshot, WorkloadState};

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Verdict {
    Allow,
    Deny,
    Unauthenticated,
}

impl Verdict {
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Allow => "ALLOW",
            Verdict::Deny => "DENY",
            Verdict::Unauthenticated => "UNAUTHENTICATED",
        }
    }
}

/// A rule of an Istio resource that took part in the decision.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct PolicyMatch {
    /// `namespace/name`.
    pub policy: String,
    /// `AuthorizationPolicy`, `PeerAuthentication` or `RequestAuthentication`.
    pub kind: &'static str,
    /// ALLOW, DENY, AUDIT, CUSTOM for AuthorizationPolicies.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub action: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rule: Option<usize>,
    /// The Cedar policy id.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cedar_id: Option<String>,
}

impl PolicyMatch {
    fn resource(kind: &'static str, key: &ResourceKey, rule: Option<usize>) -> PolicyMatch {
        PolicyMatch {
            policy: key.to_string(),
            kind,
            action: None,
            rule,
            cedar_id: None,
        }
    }
}

impl std::fmt::Display for PolicyMatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (self.action, self.rule) {
            (Some(a), Some(r)) => write!(f, "{} {} rule {}", a, self.policy, r),
            (Some(a), None) => write!(f, "{} {}", a, self.policy),
            (_, Some(r)) => write!(f, "{} {} rule {}", self.kind, self.policy, r),
            _ => write!(f, "{} {}", self.kind, self.policy),
        }
    }
}

/// Why the verdict is what it is.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "reason", rename_all = "snake_case")]
pub enum Reason {
    /// An ALLOW rule matched and no DENY did.
    AllowMatched,
    /// No enforced ALLOW policy applies to the workload and no DENY matched.
    NoAllowPolicy,
    /// A DENY rule matched.
    DenyMatched,
    /// ALLOW policies apply and none matched.
    NoAllowMatched,
    /// A CUSTOM rule matched whose provider cannot be used.
    CustomDenied,
    /// PeerAuthentication STRICT and the request is plaintext.
    MtlsRequired,
    /// The JWT failed RequestAuthentication.
    Jwt { error: String },
    /// The destination workload is not known to the snapshot.
    UnknownWorkload,
    /// The request cannot be evaluated (e.g. a path Envoy would reject with 400).
    InvalidRequest { error: String },
    /// Cedar reported an evaluation error.
    EvaluationError,
}

impl Reason {
    /// The reason's name as serialized (`deny_matched`), without serializing (log lines and
    /// response headers are written per request).
    pub fn name(&self) -> &'static str {
        match self {
            Reason::AllowMatched => "allow_matched",
            Reason::NoAllowPolicy => "no_allow_policy",
            Reason::DenyMatched => "deny_matched",
            Reason::NoAllowMatched => "no_allow_matched",
            Reason::CustomDenied => "custom_denied",
            Reason::MtlsRequired => "mtls_required",
            Reason::Jwt { .. } => "jwt",
            Reason::UnknownWorkload => "unknown_workload",
            Reason::InvalidRequest { .. } => "invalid_request",
            Reason::EvaluationError => "evaluation_error",
        }
    }
}

/// Headers a host applies to the request it forwards upstream (RequestAuthentication effects).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct HeaderEffects {
    pub set: Vec<(String, String)>,
    pub remove: Vec<String>,
}

/// The verified identity of the request's JWT, for logs.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct RequestAuth {
    /// `iss/sub`.
    pub principal: String,
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Decision {
    pub verdict: Verdict,
    #[serde(flatten)]
    pub reason: Reason,
    /// The rules (or resources) that decided.
    pub determining: Vec<PolicyMatch>,
    /// Dry-run rules that matched; they never change the verdict.
    pub dry_run: Vec<PolicyMatch>,
    /// AUDIT rules that matched.
    pub audit: Vec<PolicyMatch>,
    /// Delegated CUSTOM rules that matched: the host's provider is consulted for these.
    pub custom: Vec<PolicyMatch>,
    pub errors: Vec<String>,
    pub generation: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub request_auth: Option<RequestAuth>,
    pub upstream: HeaderEffects,
    /// A token was rejected for want of a key (an unknown `kid`, or no keys for its issuer):
    /// a host that fetches `jwksUri` keys may refresh them.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub missing_jwt_key: bool,
}

impl Decision {
    /// A decision with nothing matched yet; hosts use it for answers made before the engine
    /// (an unresolvable workload).
    pub fn new(verdict: Verdict, reason: Reason, generation: u64) -> Decision {
        Decision {
            verdict,
            reason,
            determining: Vec::new(),
            dry_run: Vec::new(),
            audit: Vec::new(),
            custom: Vec::new(),
            errors: Vec::new(),
            generation,
            request_auth: None,
            upstream: HeaderEffects::default(),
            missing_jwt_key: false,
        }
    }

    /// The HTTP status Istio/Envoy would answer: 200 for ALLOW, 401, or 403.
    pub fn http_status(&self) -> u16 {
        match self.verdict {
            Verdict::Allow => 200,
            Verdict::Unauthenticated => 401,
            Verdict::Deny => 403,
        }
    }

    /// The body Envoy sends with a denial (`RBAC: access denied`) or its JWT failure text
    /// (e.g. `Jwt is expired`).
    pub fn body(&self) -> &str {
        match (&self.verdict, &self.reason) {
            (Verdict::Allow, _) => "",
            (_, Reason::Jwt { error }) => error,
            _ => "RBAC: access denied",
        }
    }
}

/// Decides one request against one snapshot.
pub fn decide(snapshot: &Snapshot, req: &RequestAttrs) -> Decision {
    decide_with(snapshot, req, &crate::cache::NoCache)
}

/// [`decide`] with the host's verified-token cache.
pub fn decide_with(
    snapshot: &Snapshot,
    req: &RequestAttrs,
    tokens: &dyn crate::cache::TokenCache,
) -> Decision {
    let generation = snapshot.generation;
    let Some(state) = snapshot.state(&req.workload) else {
        let mut d = Decision::new(Verdict::Deny, Reason::UnknownWorkload, generation);
        d.errors
            .push(format!("unknown workload `{}`", req.workload));
        return d;
    };
    let Some(class) = snapshot.classes.get(state.class) else {
        return internal_error(generation, "workload class missing");
    };

    // Peer identity: only a well-formed SPIFFE ID counts.
    let mut principal = match &req.source_principal {
        None => None,
        Some(p) if p.is_empty() => None,
        Some(p) => match spiffe_trust_domain(p) {
            Ok(_) => Some(p.as_str()),
            Err(SpiffeError::NotSpiffe) => None,
            Err(SpiffeError::Malformed) => {
                let mut d = Decision::new(
                    Verdict::Deny,
                    Reason::InvalidRequest {
                        error: format!("peer identity `{p}` is not a well-formed SPIFFE ID"),
                    },
                    generation,
                );
                d.errors.push("malformed peer SPIFFE ID".into());
                return d;
            }
        },
    };

    // PeerAuthentication.
    let (mode, pa) = state.mtls.mode(req.destination_port);
    match mode {
        MtlsMode::Strict if principal.is_none() => {
            let mut d = Decision::new(Verdict::Deny, Reason::MtlsRequired, generation);
            d.determining
                .extend(pa.map(|k| PolicyMatch::resource("PeerAuthentication", k, None)));
            return d;
        }
        // "DISABLE: the connection is not tunneled": there is never a peer identity.
        MtlsMode::Disable => principal = None,
        _ => {}
    }

    let mut http = None;
    if req.protocol == Protocol::Http {
        match normalize_path(&req.path, snapshot.compiled.mesh.path_normalization) {
            Ok(p) => http = Some(p),
            Err(e) => {
                return Decision::new(
                    Verdict::Deny,
                    Reason::InvalidRequest {
                        error: format!("path `{}`: {e}", req.path),
                    },
                    generation,
                )
            }
        }
    }

    let inputs = ContextInputs {
        req,
        principal,
        normalized_path: http.as_deref(),
        claims: None,
    };

    // CUSTOM rules that cannot be delegated deny before authentication runs.
    let custom_denial = |inputs: &ContextInputs<'_>| -> Option<Decision> {
        let set = class.custom_deny.as_ref()?;
        let request = match build_request(snapshot, state, inputs, &class.needs) {
            Ok(r) => r,
            Err(e) => return Some(internal_error(generation, &e)),
        };
        let mut tally = Tally::default();
        set.evaluate(&evaluator(&request, &snapshot.entities), &mut tally);
        // Only for a request that failed authentication, which is denied either way: this
        // chooses the reason. A CUSTOM deny that errors is not satisfied here.
        let matched: Vec<PolicyMatch> = tally
            .forbids
            .iter()
            .filter_map(|id| policy_match(class, id))
            .collect();
        (!matched.is_empty()).then(|| {
            let mut d = Decision::new(Verdict::Deny, Reason::CustomDenied, generation);
            d.determining = matched;
            d
        })
    };

    // RequestAuthentication.
    let mut claims = None;
    let mut request_auth = None;
    let mut upstream = HeaderEffects::default();
    if req.protocol == Protocol::Http && !state.providers.is_empty() {
        match authenticate(snapshot, state, req, tokens) {
            Ok(None) => {}
            Ok(Some(v)) => {
                request_auth = v.principal.map(|principal| RequestAuth { principal });
                upstream = v.upstream;
                claims = Some(v.claims);
            }
            Err(failure) => {
                let (error, source) = *failure;
                if let Some(d) = custom_denial(&inputs) {
                    return d;
                }
                let verdict = if error.status() == 403 {
                    Verdict::Deny
                } else {
                    Verdict::Unauthenticated
                };
                let mut d = Decision::new(
                    verdict,
                    Reason::Jwt {
                        error: error.body().to_string(),
                    },
                    generation,
                );
                d.missing_jwt_key = matches!(error, JwtError::NoKeys(_) | JwtError::KidNotFound(_));
                d.errors.push(error.to_string());
                d.determining.extend(source);
                return d;
            }
        }
    }
    let inputs = ContextInputs {
        claims: claims.as_ref(),
        ..inputs
    };

    // Only the enforced policies the request can reach (at most two sets, see `EnforcedIndex`),
    // combined as one set would be: forbid overrides permit; reasons are the union.
    let reached: Vec<&PolicyList> = class
        .enforced
        .sets_for(req.protocol, req.destination_port, http.as_deref())
        .collect();
    // The Cedar request (most of a decision's cost) only when some policy is to be evaluated.
    let request = if reached.is_empty() && !class.observes() {
        None
    } else {
        match build_request(snapshot, state, &inputs, &class.needs) {
            Ok(r) => Some(r),
            Err(e) => return internal_error(generation, &e),
        }
    };
    let evaluator = request
        .as_ref()
        .map(|request| evaluator(request, &snapshot.entities));
    let mut tally = Tally::default();
    if let Some(evaluator) = &evaluator {
        for set in &reached {
            set.evaluate(evaluator, &mut tally);
        }
    }
    let Tally {
        permits,
        forbids,
        errors,
    } = tally;
    // Forbid overrides permit; the reasons are the policies that decided.
    let permitted = forbids.is_empty();
    let mut reasons: Vec<&str> = if permitted { permits } else { forbids };
    // Cedar reports reasons as a set; sorted, the same decision always lists them alike.
    reasons.sort_unstable();

    let mut d = if !errors.is_empty() {
        // Cedar skips a policy that errors; for a forbid that would open access. Deny instead.
        let mut d = Decision::new(Verdict::Deny, Reason::EvaluationError, generation);
        d.errors = errors;
        d
    } else if permitted && !reasons.is_empty() {
        let default_only = reasons.iter().all(|r| *r == DEFAULT_ALLOW_ID);
        let mut d = Decision::new(
            Verdict::Allow,
            if default_only {
                Reason::NoAllowPolicy
            } else {
                Reason::AllowMatched
            },
            generation,
        );
        d.determining = reasons
            .iter()
            .filter_map(|r| policy_match(class, r))
            .collect();
        d
    } else if reasons.is_empty() {
        let mut d = Decision::new(Verdict::Deny, Reason::NoAllowMatched, generation);
        d.determining = class.allow_policies.clone();
        d
    } else {
        let custom = reasons.iter().any(|r| {
            class
                .policy_meta(r)
                .is_some_and(|m| m.role == Role::CustomDeny)
        });
        let mut d = Decision::new(
            Verdict::Deny,
            if custom {
                Reason::CustomDenied
            } else {
                Reason::DenyMatched
            },
            generation,
        );
        d.determining = reasons
            .iter()
            .filter_map(|r| policy_match(class, r))
            .collect();
        d
    };

    if let Some(evaluator) = &evaluator {
        observe(class, evaluator, &mut d);
    }
    if d.verdict == Verdict::Allow {
        d.request_auth = request_auth;
        d.upstream = upstream;
    } else {
        d.request_auth = request_auth;
    }
    d
}

fn internal_error(generation: u64, message: &str) -> Decision {
    let mut d = Decision::new(Verdict::Deny, Reason::EvaluationError, generation);
    d.errors.push(message.to_string());
    d
}

fn policy_match(class: &PolicyClass, id: &str) -> Option<PolicyMatch> {
    class.policy_meta(id).map(|m| m.matched.clone())
}

/// Evaluates dry-run, AUDIT and delegated CUSTOM rules; they never change the verdict.
fn observe(class: &PolicyClass, evaluator: &Evaluator<'_>, d: &mut Decision) {
    let matched = |set: &PolicyList, d: &mut Decision| {
        let mut tally = Tally::default();
        set.evaluate(evaluator, &mut tally);
        for e in tally.errors {
            d.errors.push(format!("observed policy: {e}"));
        }
        // Each list holds policies of one effect: the satisfied ones are what Cedar's
        // authorizer gives as reasons for the set alone.
        for id in tally.permits.into_iter().chain(tally.forbids) {
            let Some(m) = class.policy_meta(id) else {
                continue;
            };
            let pm = m.matched.clone();
            match m.role {
                Role::Audit => d.audit.push(pm),
                Role::DryRunAllow | Role::DryRunDeny => d.dry_run.push(pm),
                Role::CustomDelegate => d.custom.push(pm),
                _ => {}
            }
        }
    };
    if let Some(set) = &class.observed {
        matched(set, d);
    }
    if let Some(set) = &class.observed_deny {
        matched(set, d);
    }
}

struct Verified {
    claims: serde_json::Map<String, serde_json::Value>,
    principal: Option<String>,
    upstream: HeaderEffects,
}

type JwtFailure = Box<(JwtError, Option<PolicyMatch>)>;

/// RequestAuthentication for one request. `Ok(None)`: no token (allowed to continue).
fn authenticate(
    snapshot: &Snapshot,
    state: &WorkloadState,
    req: &RequestAttrs,
    tokens: &dyn crate::cache::TokenCache,
) -> Result<Option<Verified>, JwtFailure> {
    let providers = state.providers.as_slice();
    let source = |i: usize| {
        providers
            .get(i)
            .map(|p| PolicyMatch::resource("RequestAuthentication", &p.source, Some(p.rule)))
    };
    if let Some(claims) = &req.verified_claims {
        // Verified upstream (Envoy jwt_authn): the issuer must still be one of ours.
        let iss = claims
            .get("iss")
            .and_then(|v| v.as_str())
            .unwrap_or_default();
        let Some(i) = providers.iter().position(|p| p.issuer == iss) else {
            let mut keys: Vec<&ResourceKey> = providers.iter().map(|p| &p.source).collect();
            keys.dedup();
            let source = match keys.as_slice() {
                [one] => Some(PolicyMatch::resource("RequestAuthentication", one, None)),
                _ => None,
            };
            return Err(Box::new((
                JwtError::IssuerNotConfigured(iss.to_string()),
                source,
            )));
        };
        let provider = &providers[i];
        if !provider.audiences.is_empty() && !audience_ok(claims, &provider.audiences) {
            return Err(Box::new((JwtError::AudienceNotAllowed, source(i))));
        }
        let mut claims = claims.clone();
        jwt::normalize_claims(&mut claims, &provider.space_delimited_claims);
        return Ok(Some(Verified {
            principal: principal_of(&claims),
            claims,
            upstream: HeaderEffects::default(),
        }));
    }
    let (_, query) = split_path(&req.path);
    let keys = |i: usize| providers.get(i).and_then(|p| snapshot.keys_for(p));
    match jwt::authenticate_with(
        providers,
        &keys,
        &req.method,
        &req.headers,
        query,
        req.now,
        tokens,
    ) {
        AuthnOutcome::NoToken => Ok(None),
        AuthnOutcome::Failed { error, .. } => {
            // The RequestAuthentication(s) of the workload rejected it.
            let mut keys: Vec<&ResourceKey> = providers.iter().map(|p| &p.source).collect();
            keys.dedup();
            let source = match keys.as_slice() {
                [one] => Some(PolicyMatch::resource("RequestAuthentication", one, None)),
                _ => None,
            };
            Err(Box::new((error, source)))
        }
        AuthnOutcome::Verified {
            provider,
            claims,
            tokens,
            payload,
        } => {
            let Some(p) = providers.get(provider) else {
                return Err(Box::new((
                    JwtError::Malformed("provider index".into()),
                    None,
                )));
            };
            let (set, remove) = jwt::upstream_headers(p, &claims, &payload, &tokens);
            let mut claims = claims;
            jwt::normalize_claims(&mut claims, &p.space_delimited_claims);
            Ok(Some(Verified {
                principal: principal_of(&claims),
                claims,
                upstream: HeaderEffects { set, remove },
            }))
        }
    }
}

fn principal_of(claims: &serde_json::Map<String, serde_json::Value>) -> Option<String> {
    let iss = claims.get("iss")?.as_str()?;
    let sub = claims
        .get("sub")
        .and_then(|s| s.as_str())
        .unwrap_or_default();
    Some(format!("{iss}/{sub}"))
}

fn audience_ok(claims: &serde_json::Map<String, serde_json::Value>, allowed: &[String]) -> bool {
    match claims.get("aud") {
        Some(serde_json::Value::String(a)) => allowed.contains(a),
        Some(serde_json::Value::Array(list)) => list
            .iter()
            .filter_map(|v| v.as_str())
            .any(|a| allowed.iter().any(|x| x == a)),
        _ => false,
    }
}

/// A field-level explanation of one rule (for `meshauthz check`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct RuleExplanation {
    pub policy: String,
    pub action: &'static str,
    pub dry_run: bool,
    pub rule: usize,
    pub source: String,
    /// Whether the whole rule matched (`None`: could not be evaluated).
    pub matched: Option<bool>,
    /// (condition label, whether it held); `None` when it could not be evaluated.
    pub conditions: Vec<(String, Option<bool>)>,
}

/// Explains which conditions of each applicable rule held for `req` (same context as
/// [`decide`], JWT claims included when valid). Not on the request path.
pub fn explain(snapshot: &Snapshot, req: &RequestAttrs) -> Vec<RuleExplanation> {
    let Some(state) = snapshot.state(&req.workload) else {
        return Vec::new();
    };
    let Some(class) = snapshot.classes.get(state.class) else {
        return Vec::new();
    };
    let Some(request) = full_request(snapshot, state, req) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    let mut cache: BTreeMap<String, Option<bool>> = BTreeMap::new();
    for ap in &class.applicable {
        for rule in &ap.rules {
            let conditions = rule
                .conditions
                .iter()
                .map(|c| {
                    let v = cache
                        .entry(c.cedar.clone())
                        .or_insert_with(|| eval_bool(snapshot, &request, &c.cedar))
                        .to_owned();
                    (c.label.clone(), v)
                })
                .collect();
            let whole = if req.protocol == Protocol::Http {
                &rule.http_condition
            } else {
                &rule.tcp_condition
            };
            out.push(RuleExplanation {
                matched: eval_bool(snapshot, &request, whole),
                policy: ap.key.to_string(),
                action: ap.action.as_str(),
                dry_run: ap.dry_run,
                rule: rule.index,
                source: format!("{}:{}", ap.origin.file, rule.line),
                conditions,
            });
        }
    }
    out
}

fn eval_bool(snapshot: &Snapshot, request: &Request, expr: &str) -> Option<bool> {
    let e: cedar_policy::Expression = expr.parse().ok()?;
    match cedar_policy::eval_expression(request, &snapshot.entities, &e).ok()? {
        cedar_policy::EvalResult::Bool(b) => Some(b),
        _ => None,
    }
}

/// The Cedar request `decide` would evaluate for `req` (with every attribute of the vocabulary),
/// for tools and baselines that evaluate Cedar directly. `None` for an unknown workload or a
/// path the engine rejects.
pub fn cedar_request(snapshot: &Snapshot, req: &RequestAttrs) -> Option<Request> {
    full_request(snapshot, state_of(snapshot, req)?, req)
}

fn state_of<'s>(snapshot: &'s Snapshot, req: &RequestAttrs) -> Option<&'s WorkloadState> {
    snapshot.state(&req.workload)
}

/// The request with every attribute of the vocabulary (explanations and baselines, not the
/// request path): the same identity, path and claims `decide` would use.
fn full_request(snapshot: &Snapshot, state: &WorkloadState, req: &RequestAttrs) -> Option<Request> {
    let (mode, _) = state.mtls.mode(req.destination_port);
    let principal = req
        .source_principal
        .as_deref()
        .filter(|p| spiffe_trust_domain(p).is_ok() && mode != MtlsMode::Disable);
    let path = match req.protocol {
        Protocol::Http => {
            Some(normalize_path(&req.path, snapshot.compiled.mesh.path_normalization).ok()?)
        }
        Protocol::Tcp => None,
    };
    let claims = if req.protocol == Protocol::Http && !state.providers.is_empty() {
        authenticate(snapshot, state, req, &crate::cache::NoCache)
            .ok()
            .flatten()
            .map(|v| v.claims)
    } else {
        None
    };
    let inputs = ContextInputs {
        req,
        principal,
        normalized_path: path.as_deref(),
        claims: claims.as_ref(),
    };
    build_request(
        snapshot,
        state,
        &inputs,
        &ContextNeeds::all(&snapshot.compiled.vocabulary),
    )
    .ok()
}

#[cfg(test)]
mod reason_tests {
    use super::Reason;

    /// `Reason::name` is the serialized tag, for every variant.
    #[test]
    fn names_match_the_serialized_tag() {
        let all = [
            Reason::AllowMatched,
            Reason::NoAllowPolicy,
            Reason::DenyMatched,
            Reason::NoAllowMatched,
            Reason::CustomDenied,
            Reason::MtlsRequired,
            Reason::Jwt {
                error: String::new(),
            },
            Reason::UnknownWorkload,
            Reason::InvalidRequest {
                error: String::new(),
            },
            Reason::EvaluationError,
        ];
        for r in all {
            let tag = serde_json::to_value(&r)
                .ok()
                .and_then(|v| v.get("reason").and_then(|t| t.as_str()).map(str::to_string));
            assert_eq!(tag.as_deref(), Some(r.name()), "{r:?}");
        }
    }
}
