//! The Cedar request of a decision: principal `Mesh::Peer::"<spiffe id>"`, action `check`,
//! the workload as resource, and the context laid out in `policy_compiler::attributes`, with
//! only the records the class's policies read.
//!
//! State owned: a per-thread memo of recent `ipaddr` values.
//!
//! Building the context is a large share of a decision. Cedar's public way in
//! (`Context::from_pairs`) takes restricted expressions, assembles them into a record
//! expression and then evaluates it, building every record twice. Decisions build the values
//! directly ([`Direct`], through `cedar-policy-core`'s value types, the same pinned version as
//! `cedar-policy`); the tests hold it to the public way ([`Evaluated`]): one builder, two value
//! makers, equal contexts.

use std::collections::HashMap;
use std::net::IpAddr;

use cedar_policy::{EntityId, EntityUid, Request, RestrictedExpression};
use cedar_policy_core::ast;
use cedar_policy_core::evaluator::RestrictedEvaluator;
use cedar_policy_core::extensions::Extensions;
use policy_compiler::attributes::{cedar_ip, encode_values};
use policy_compiler::uri_template::template_matches;

use crate::attrs::{spiffe_trust_domain, Protocol, RequestAttrs};
use crate::path::split_path;
use crate::snapshot::{ContextNeeds, Snapshot, WorkloadState};

/// Makes the values of a context and the request around it.
pub(crate) trait ValueMaker {
    type Value;
    fn string(&self, v: &str) -> Self::Value;
    fn long(&self, v: i64) -> Self::Value;
    fn ip(&self, addr: IpAddr) -> Result<Self::Value, String>;
    fn set(&self, items: Vec<Self::Value>) -> Self::Value;
    fn record(&self, fields: Vec<(&str, Self::Value)>) -> Result<Self::Value, String>;
    fn request(
        &self,
        principal: EntityUid,
        action: &EntityUid,
        resource: &EntityUid,
        context: Vec<(&str, Self::Value)>,
    ) -> Result<Request, String>;
}

/// Cedar values, made directly (what decisions use).
pub(crate) struct Direct;

impl ValueMaker for Direct {
    type Value = ast::Value;

    fn string(&self, v: &str) -> ast::Value {
        ast::Value::from(v)
    }

    fn long(&self, v: i64) -> ast::Value {
        ast::Value::from(v)
    }

    /// Cedar parses the `ip` call (and its extension's name) for every value; a small
    /// per-thread memo of recent addresses keeps that off most requests. Bounded: cleared when
    /// it grows past `IP_MEMO_MAX`.
    fn ip(&self, addr: IpAddr) -> Result<ast::Value, String> {
        const IP_MEMO_MAX: usize = 4096;
        thread_local! {
            static MEMO: std::cell::RefCell<HashMap<IpAddr, ast::Value>> =
                std::cell::RefCell::new(HashMap::new());
        }
        MEMO.with(|memo| {
            let mut memo = memo.borrow_mut();
            if let Some(v) = memo.get(&addr) {
                return Ok(v.clone());
            }
            if memo.len() >= IP_MEMO_MAX {
                memo.clear();
            }
            let call = RestrictedExpression::new_ip(cedar_ip(addr));
            let value = RestrictedEvaluator::new(Extensions::all_available())
                .interpret(call.as_ref().as_borrowed())
                .map_err(|e| format!("ip value {addr}: {e}"))?;
            memo.insert(addr, value.clone());
            Ok(value)
        })
    }

    fn set(&self, items: Vec<ast::Value>) -> ast::Value {
        ast::Value::set(items, None)
    }

    fn record(&self, fields: Vec<(&str, ast::Value)>) -> Result<ast::Value, String> {
        Ok(ast::Value::record(fields, None))
    }

    fn request(
        &self,
        principal: EntityUid,
        action: &EntityUid,
        resource: &EntityUid,
        context: Vec<(&str, ast::Value)>,
    ) -> Result<Request, String> {
        let ast::ValueKind::Record(attrs) = self.record(context)?.value else {
            return Err("context is not a record".into());
        };
        let known = |uid: ast::EntityUID| ast::EntityUIDEntry::known(uid, None);
        Ok(Request::from(ast::Request::new_unchecked(
            known(principal.into()),
            known(action.as_ref().clone()),
            known(resource.as_ref().clone()),
            Some(ast::Context::Value(attrs)),
        )))
    }
}

/// Restricted expressions that Cedar evaluates into the context (`Context::from_pairs`): the
/// public API, which the tests hold [`Direct`] to.
#[cfg(test)]
pub(crate) struct Evaluated;

#[cfg(test)]
impl ValueMaker for Evaluated {
    type Value = RestrictedExpression;

    fn string(&self, v: &str) -> RestrictedExpression {
        RestrictedExpression::new_string(v.to_string())
    }

    fn long(&self, v: i64) -> RestrictedExpression {
        RestrictedExpression::new_long(v)
    }

    fn ip(&self, addr: IpAddr) -> Result<RestrictedExpression, String> {
        Ok(RestrictedExpression::new_ip(cedar_ip(addr)))
    }

    fn set(&self, items: Vec<RestrictedExpression>) -> RestrictedExpression {
        RestrictedExpression::new_set(items)
    }

    fn record(
        &self,
        fields: Vec<(&str, RestrictedExpression)>,
    ) -> Result<RestrictedExpression, String> {
        RestrictedExpression::new_record(fields.into_iter().map(|(k, v)| (k.to_string(), v)))
            .map_err(|e| e.to_string())
    }

    fn request(
        &self,
        principal: EntityUid,
        action: &EntityUid,
        resource: &EntityUid,
        context: Vec<(&str, RestrictedExpression)>,
    ) -> Result<Request, String> {
        let context =
            cedar_policy::Context::from_pairs(context.into_iter().map(|(k, v)| (k.to_string(), v)))
                .map_err(|e| e.to_string())?;
        Request::new(principal, action.clone(), resource.clone(), context, None)
            .map_err(|e| e.to_string())
    }
}

/// What a request's context is made of besides the request itself.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ContextInputs<'a> {
    pub req: &'a RequestAttrs,
    pub principal: Option<&'a str>,
    pub normalized_path: Option<&'a str>,
    pub claims: Option<&'a serde_json::Map<String, serde_json::Value>>,
}

/// The Cedar request: principal `Mesh::Peer::"<spiffe id>"`, the workload as resource, and the
/// context laid out in `policy_compiler::attributes`.
pub(crate) fn build_request(
    snapshot: &Snapshot,
    state: &WorkloadState,
    inputs: &ContextInputs<'_>,
    needs: &ContextNeeds,
) -> Result<Request, String> {
    build_request_with(&Direct, snapshot, state, inputs, needs)
}

fn build_request_with<V: ValueMaker>(
    make: &V,
    snapshot: &Snapshot,
    state: &WorkloadState,
    inputs: &ContextInputs<'_>,
    needs: &ContextNeeds,
) -> Result<Request, String> {
    let req = inputs.req;
    let mesh = &snapshot.compiled.mesh;
    let s = |v: &str| make.string(v);

    let mut source = Vec::new();
    if let Some(p) = inputs.principal {
        if needs.reads.principal {
            source.push(("principal", s(p)));
        }
        if needs.reads.trust_domain {
            if let Ok(td) = spiffe_trust_domain(p) {
                source.push(("trustDomain", s(td)));
            }
        }
    }
    if let (Some(ip), true) = (req.source_ip, needs.reads.source_ip) {
        source.push(("ip", make.ip(ip)?));
    }
    // A record no policy of the class reads is left out (each costs Cedar an evaluation per
    // request); one that is read is there even when empty, for its `has` tests.
    let mut pairs = Vec::with_capacity(7);
    if needs.reads.principal || needs.reads.trust_domain || needs.reads.source_ip {
        pairs.push(("source", make.record(source)?));
    }

    let remote = if !needs.reads.remote_ip {
        None
    } else {
        req.remote_ip.or_else(|| {
            let n = mesh.num_trusted_proxies as usize;
            if n == 0 {
                return req.source_ip;
            }
            let hops: Vec<&str> = req
                .header_values("x-forwarded-for")
                .flat_map(|v| v.split(','))
                .map(str::trim)
                .filter(|h| !h.is_empty())
                .collect();
            // "the trusted client address is the Nth address from the right end of XFF"
            hops.len()
                .checked_sub(n)
                .and_then(|i| hops.get(i))
                .and_then(|h| h.parse().ok())
                .or(req.source_ip)
        })
    };
    if let Some(ip) = remote {
        pairs.push(("remoteIp", make.ip(ip)?));
    }
    let mut destination = vec![("port", make.long(i64::from(req.destination_port)))];
    if let (Some(ip), true) = (req.destination_ip, needs.reads.destination_ip) {
        destination.push(("ip", make.ip(ip)?));
    }
    pairs.push(("destination", make.record(destination)?));
    if let (Some(sni), true) = (
        req.sni.as_deref().filter(|s| !s.is_empty()),
        needs.reads.sni,
    ) {
        pairs.push(("sni", s(sni)));
    }

    if let (Protocol::Http, Some(path)) = (req.protocol, inputs.normalized_path) {
        let mut headers = Vec::new();
        for name in &needs.headers {
            let synthesized;
            let values: Vec<&str> = match name.as_str() {
                ":method" => vec![req.method.as_str()],
                ":authority" | "host" if req.header_values(name).next().is_none() => {
                    vec![req.host.as_str()]
                }
                ":path" => {
                    let (_, query) = split_path(&req.path);
                    synthesized = match query {
                        Some(q) => format!("{path}?{q}"),
                        None => path.to_string(),
                    };
                    vec![synthesized.as_str()]
                }
                _ => req.header_values(name).collect(),
            };
            if values.is_empty() {
                continue;
            }
            if let Some(enc) = encode_values(values, false) {
                headers.push((name.as_str(), s(&enc)));
            }
        }
        // `context has http` itself tells HTTP from TCP, so the record is always there; its
        // fields only when read.
        let mut http = Vec::with_capacity(5);
        if !needs.headers.is_empty() {
            http.push(("headers", make.record(headers)?));
        }
        if needs.reads.host {
            http.push(("host", s(&req.host.to_ascii_lowercase())));
        }
        if needs.reads.method {
            http.push(("method", s(req.method.as_str())));
        }
        if needs.reads.path {
            http.push(("path", s(path)));
        }
        if !needs.templates.is_empty() {
            let templates = needs
                .templates
                .iter()
                .filter(|t| template_matches(t, path))
                .map(|t| s(t.as_str()))
                .collect();
            http.push(("pathTemplates", make.set(templates)));
        }
        pairs.push(("http", make.record(http)?));

        if let (Some(claims), true) = (inputs.claims, needs.reads.jwt) {
            let mut jwt = Vec::new();
            for name in ["iss", "sub", "azp"] {
                if let Some(v) = claims.get(name).and_then(|v| v.as_str()) {
                    jwt.push((name, s(v)));
                }
            }
            if let Some(aud) = claims.get("aud").and_then(string_elements) {
                if let Some(enc) = encode_values(aud.iter().map(String::as_str), true) {
                    jwt.push(("aud", s(&enc)));
                }
            }
            let mut claim_fields = Vec::new();
            for (attr, path) in &needs.claims {
                let value = path
                    .iter()
                    .try_fold(None::<&serde_json::Value>, |cur, part| match cur {
                        None => claims.get(part).map(Some),
                        Some(v) => v.get(part).map(Some),
                    })
                    .flatten();
                if let Some(values) = value.and_then(string_elements) {
                    if let Some(enc) = encode_values(values.iter().map(String::as_str), true) {
                        claim_fields.push((attr.as_str(), s(&enc)));
                    }
                }
            }
            jwt.push(("claims", make.record(claim_fields)?));
            pairs.push(("jwt", make.record(jwt)?));
        }
    }

    let mut metadata = Vec::new();
    for (attr, (filter, key)) in &needs.metadata {
        let value = req.metadata.get(filter).and_then(|m| m.get(key));
        if let Some(values) = value.and_then(string_elements) {
            if let Some(enc) = encode_values(values.iter().map(String::as_str), true) {
                metadata.push((attr.as_str(), s(&enc)));
            }
        }
    }
    if !needs.metadata.is_empty() {
        pairs.push(("metadata", make.record(metadata)?));
    }

    let principal = EntityUid::from_type_name_and_id(
        snapshot.peer_type.clone(),
        EntityId::new(inputs.principal.unwrap_or_default()),
    );
    make.request(principal, &snapshot.action, &state.uid, pairs)
}

/// A claim as a list of strings: a string is one element, a list keeps its string elements;
/// numbers, booleans and objects never match (istio/istio#39703).
fn string_elements(v: &serde_json::Value) -> Option<Vec<String>> {
    match v {
        serde_json::Value::String(s) => Some(vec![s.clone()]),
        serde_json::Value::Array(items) => Some(
            items
                .iter()
                .filter_map(|i| i.as_str().map(str::to_string))
                .collect(),
        ),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "test code")]

    use super::*;
    use policy_compiler::{Inputs, MeshConfig, Workload};
    use serde_json::json;

    fn snapshot() -> Snapshot {
        let mut inputs = Inputs::default();
        let policy = "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: a, namespace: foo}\nspec: {}\n";
        assert!(inputs.load_str("p.yaml", policy).is_empty());
        let mesh = MeshConfig {
            num_trusted_proxies: 1,
            ..MeshConfig::default()
        };
        let workload = Workload {
            namespace: "foo".into(),
            name: "web".into(),
            labels: [("app".to_string(), "web".to_string())].into(),
            service_account: "web".into(),
            ips: Vec::new(),
            gateway: None,
            services: Vec::new(),
        };
        let compiled = policy_compiler::compile(&inputs, &mesh, &[workload]).unwrap();
        Snapshot::build(compiled, 1).unwrap()
    }

    /// Everything a context can hold, each name once.
    fn every_need() -> ContextNeeds {
        ContextNeeds {
            headers: [
                "x-team",
                ":path",
                ":method",
                ":authority",
                "host",
                "x-absent",
            ]
            .map(String::from)
            .to_vec(),
            templates: vec!["/api/{*}/items".into(), "/other/{**}".into()],
            claims: vec![
                ("groups".into(), vec!["groups".into()]),
                ("realm_roles".into(), vec!["realm".into(), "roles".into()]),
                ("count".into(), vec!["count".into()]),
            ],
            metadata: vec![("m0".into(), ("envoy.filters.http.x".into(), "key".into()))],
            // Every record and scalar attribute.
            ..ContextNeeds::all(&policy_compiler::schema::Vocabulary::default())
        }
    }

    fn requests() -> Vec<RequestAttrs> {
        let http = RequestAttrs {
            workload: "foo/web".into(),
            protocol: Protocol::Http,
            source_principal: Some("spiffe://cluster.local/ns/bar/sa/client".into()),
            source_ip: Some("10.1.2.3".parse().unwrap()),
            destination_ip: Some("fd00::7".parse().unwrap()),
            destination_port: 8080,
            sni: Some("web.foo.svc".into()),
            method: "POST".into(),
            path: "/api/v1/items?x=1".into(),
            host: "Web.Foo:8080".into(),
            headers: vec![
                ("x-team".into(), "a,b".into()),
                ("x-team".into(), "c \"quoted\"".into()),
                ("x-forwarded-for".into(), "203.0.113.9, 10.0.0.1".into()),
            ],
            metadata: [(
                "envoy.filters.http.x".to_string(),
                json!({"key": ["k1", "k2"]}),
            )]
            .into(),
            ..RequestAttrs::default()
        };
        let bare = RequestAttrs {
            workload: "foo/web".into(),
            protocol: Protocol::Http,
            destination_port: 80,
            method: "GET".into(),
            path: "/".into(),
            ..RequestAttrs::default()
        };
        let tcp = RequestAttrs {
            protocol: Protocol::Tcp,
            remote_ip: Some("2001:db8::1".parse().unwrap()),
            ..http.clone()
        };
        vec![http, bare, tcp]
    }

    /// The directly made context equals what Cedar evaluates from restricted expressions, for
    /// every kind of value (strings, longs, IPv4/IPv6 addresses, sets, nested and empty records)
    /// and for the reduced needs of a class.
    #[test]
    fn direct_values_equal_cedar_evaluated_ones() {
        let snapshot = snapshot();
        let state = snapshot.state("foo/web").unwrap();
        let claims = json!({
            "iss": "https://issuer.example", "sub": "user-1", "azp": "app",
            "aud": ["a1", "a2"], "groups": "admins",
            "realm": {"roles": ["r1", 7, "r2"]}, "count": 3,
        });
        let claims = claims.as_object().unwrap();
        let some = ContextNeeds {
            reads: policy_compiler::attributes::ReadFlags {
                principal: true,
                path: true,
                ..Default::default()
            },
            ..ContextNeeds::default()
        };
        let mut compared = 0;
        for req in requests() {
            for principal in [req.source_principal.as_deref(), None] {
                for claims in [Some(claims), None] {
                    for needs in [every_need(), some.clone(), ContextNeeds::default()] {
                        let normalized = split_path(&req.path).0.to_string();
                        let inputs = ContextInputs {
                            req: &req,
                            principal,
                            normalized_path: (req.protocol == Protocol::Http)
                                .then_some(normalized.as_str()),
                            claims,
                        };
                        let ours =
                            build_request_with(&Direct, &snapshot, state, &inputs, &needs).unwrap();
                        let cedar =
                            build_request_with(&Evaluated, &snapshot, state, &inputs, &needs)
                                .unwrap();
                        assert_eq!(ours.context(), cedar.context(), "{req:?} {needs:?}");
                        assert_eq!(ours.principal(), cedar.principal());
                        assert_eq!(ours.action(), cedar.action());
                        assert_eq!(ours.resource(), cedar.resource());
                        compared += 1;
                    }
                }
            }
        }
        assert_eq!(compared, 36);

        // An IPv4-mapped IPv6 address is written so that Cedar takes it (as IPv6): both ways
        // make the same context.
        let mapped = RequestAttrs {
            remote_ip: Some("::ffff:192.0.2.1".parse().unwrap()),
            ..requests()[2].clone()
        };
        let inputs = ContextInputs {
            req: &mapped,
            principal: None,
            normalized_path: None,
            claims: None,
        };
        let needs = every_need();
        let ours = build_request_with(&Direct, &snapshot, state, &inputs, &needs).unwrap();
        let cedar = build_request_with(&Evaluated, &snapshot, state, &inputs, &needs).unwrap();
        assert_eq!(ours.context(), cedar.context());
    }
}
