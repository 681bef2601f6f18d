//! Envoy's own RBAC filter (`envoy.filters.http.rbac`) configured with the policies of a generated
//! estate that apply to one workload: the baseline of the Envoy benchmark. Istio pushes each
//! sidecar only the AuthorizationPolicies that select it (its namespace's, with a matching or no
//! selector, and the root namespace's), as one RBAC filter for DENY followed by one for ALLOW;
//! this module writes the same shape, rule for rule, with Istio's translation of each field:
//!
//! - `principals` -> `authenticated.principal_name` exact `spiffe://...` (`*` -> any non-empty);
//!   `namespaces` -> `principal_name` regex `.*/ns/<ns>/.*`; `notPrincipals` -> `not_id`;
//! - `requestPrincipals` and `request.auth.claims[...]` conditions -> dynamic-metadata matchers on
//!   `istio_authn` (the filter Istio's JWT handling fills). This benchmark sends no JWT and runs
//!   no JWT filter, so these never match, as in meshauthz, which sees no token either;
//! - `methods` -> header `:method`; `paths` -> `url_path` (prefix for `/x/*`, suffix for `*x`,
//!   else exact); `ports` -> `destination_port`; `hosts` -> header `:authority`, ignoring case
//!   (prefix for `h:*`); `request.headers[name]` conditions -> header matchers;
//! - AUDIT policies are not enforced by RBAC and are left out (meshauthz records them only).
//!
//! Policies are named `<index>-<namespace>.<policy>-rule-<n>` with a zero-padded index, so that
//! Envoy, which evaluates the policy map in name order and stops at the first match, meets them
//! in the estate's order. Pure functions; state owned: none.

use std::collections::BTreeMap;

use anyhow::{anyhow, Result};
use serde_json::{json, Value};
use serde_yaml::Value as Yaml;

/// The DENY and ALLOW RBAC filters (as Envoy config JSON; `None` when the workload has no
/// policy of that action) and how many Istio rules each holds.
#[derive(Debug, Clone)]
pub struct RbacFilters {
    pub deny: Option<Value>,
    pub allow: Option<Value>,
    pub deny_rules: usize,
    pub allow_rules: usize,
    /// AUDIT policies that select the workload and were left out.
    pub audit_skipped: usize,
}

fn field<'a>(v: &'a Yaml, key: &str) -> Option<&'a Yaml> {
    v.get(key)
}

fn strings(v: Option<&Yaml>) -> Vec<String> {
    v.and_then(Yaml::as_sequence)
        .map(|s| {
            s.iter()
                .filter_map(|x| x.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

fn string_match(pattern: &str) -> Value {
    if pattern == "*" {
        json!({"safe_regex": {"regex": ".+"}})
    } else if let Some(prefix) = pattern.strip_suffix('*') {
        json!({"prefix": prefix})
    } else if let Some(suffix) = pattern.strip_prefix('*') {
        json!({"suffix": suffix})
    } else {
        json!({"exact": pattern})
    }
}

fn or_rules(rules: Vec<Value>) -> Value {
    json!({"or_rules": {"rules": rules}})
}

fn or_ids(ids: Vec<Value>) -> Value {
    json!({"or_ids": {"ids": ids}})
}

fn header_rule(name: &str, values: &[String], ignore_case: bool) -> Value {
    or_rules(
        values
            .iter()
            .map(|v| {
                let mut m = string_match(v);
                if ignore_case {
                    m["ignore_case"] = json!(true);
                }
                json!({"header": {"name": name, "string_match": m}})
            })
            .collect(),
    )
}

fn principal_name(values: &[String], to_match: impl Fn(&str) -> Value) -> Value {
    or_ids(
        values
            .iter()
            .map(|v| json!({"authenticated": {"principal_name": to_match(v)}}))
            .collect(),
    )
}

fn spiffe(p: &str) -> Value {
    if p == "*" {
        json!({"safe_regex": {"regex": ".+"}})
    } else {
        string_match(&format!("spiffe://{p}"))
    }
}

fn namespace_regex(ns: &str) -> Value {
    json!({"safe_regex": {"regex": format!(".*/ns/{}/.*", regex_escape(ns))}})
}

fn regex_escape(s: &str) -> String {
    s.chars()
        .flat_map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '/' {
                vec![c]
            } else {
                vec!['\\', c]
            }
        })
        .collect()
}

fn authn_metadata(path: &[&str], value: Value) -> Value {
    json!({"metadata": {
        "filter": "istio_authn",
        "path": path.iter().map(|k| json!({"key": k})).collect::<Vec<_>>(),
        "value": value,
    }})
}

/// One `to.operation` as an AND of its fields.
fn permission(op: &Yaml, extra: &[Value]) -> Value {
    let mut and = Vec::new();
    let hosts = strings(field(op, "hosts"));
    if !hosts.is_empty() {
        and.push(header_rule(":authority", &hosts, true));
    }
    let methods = strings(field(op, "methods"));
    if !methods.is_empty() {
        and.push(header_rule(":method", &methods, false));
    }
    let paths = strings(field(op, "paths"));
    if !paths.is_empty() {
        and.push(or_rules(
            paths
                .iter()
                .map(|p| json!({"url_path": {"path": string_match(p)}}))
                .collect(),
        ));
    }
    let ports = strings(field(op, "ports"));
    if !ports.is_empty() {
        and.push(or_rules(
            ports
                .iter()
                .filter_map(|p| p.parse::<u32>().ok())
                .map(|p| json!({"destination_port": p}))
                .collect(),
        ));
    }
    and.extend(extra.iter().cloned());
    if and.is_empty() {
        json!({"any": true})
    } else {
        json!({"and_rules": {"rules": and}})
    }
}

/// One `from.source` as an AND of its fields.
fn principal(src: &Yaml, extra: &[Value]) -> Value {
    let mut and = Vec::new();
    let principals = strings(field(src, "principals"));
    if !principals.is_empty() {
        and.push(principal_name(&principals, spiffe));
    }
    let not_principals = strings(field(src, "notPrincipals"));
    if !not_principals.is_empty() {
        and.push(json!({"not_id": principal_name(&not_principals, spiffe)}));
    }
    let namespaces = strings(field(src, "namespaces"));
    if !namespaces.is_empty() {
        and.push(principal_name(&namespaces, namespace_regex));
    }
    let request_principals = strings(field(src, "requestPrincipals"));
    if !request_principals.is_empty() {
        and.push(or_ids(
            request_principals
                .iter()
                .map(|p| {
                    authn_metadata(
                        &["request.auth.principal"],
                        json!({"string_match": string_match(p)}),
                    )
                })
                .collect(),
        ));
    }
    and.extend(extra.iter().cloned());
    if and.is_empty() {
        json!({"any": true})
    } else {
        json!({"and_ids": {"ids": and}})
    }
}

/// One Istio rule as one RBAC policy. `when` conditions on the request go to every permission,
/// conditions on the JWT to every principal (as Istio does).
fn policy(rule: &Yaml) -> Result<Value> {
    let mut permission_extra = Vec::new();
    let mut principal_extra = Vec::new();
    for cond in field(rule, "when")
        .and_then(Yaml::as_sequence)
        .into_iter()
        .flatten()
    {
        let key = field(cond, "key").and_then(Yaml::as_str).unwrap_or("");
        let values = strings(field(cond, "values"));
        if let Some(name) = key
            .strip_prefix("request.headers[")
            .and_then(|k| k.strip_suffix(']'))
        {
            permission_extra.push(header_rule(name, &values, false));
        } else if let Some(claim) = key
            .strip_prefix("request.auth.claims[")
            .and_then(|k| k.strip_suffix(']'))
        {
            principal_extra.push(or_ids(
                values
                    .iter()
                    .map(|v| {
                        authn_metadata(
                            &["request.auth.claims", claim],
                            json!({"list_match": {"one_of": {"string_match": {"exact": v}}}}),
                        )
                    })
                    .collect(),
            ));
        } else {
            return Err(anyhow!(
                "condition key `{key}` has no RBAC translation here"
            ));
        }
    }
    let ops: Vec<&Yaml> = field(rule, "to")
        .and_then(Yaml::as_sequence)
        .into_iter()
        .flatten()
        .filter_map(|t| field(t, "operation"))
        .collect();
    let permissions: Vec<Value> = if ops.is_empty() {
        vec![permission(&Yaml::Null, &permission_extra)]
    } else {
        ops.iter()
            .map(|op| permission(op, &permission_extra))
            .collect()
    };
    let sources: Vec<&Yaml> = field(rule, "from")
        .and_then(Yaml::as_sequence)
        .into_iter()
        .flatten()
        .filter_map(|f| field(f, "source"))
        .collect();
    let principals: Vec<Value> = if sources.is_empty() {
        vec![principal(&Yaml::Null, &principal_extra)]
    } else {
        sources
            .iter()
            .map(|s| principal(s, &principal_extra))
            .collect()
    };
    Ok(json!({"permissions": permissions, "principals": principals}))
}

fn filter(action: &str, policies: BTreeMap<String, Value>) -> Value {
    json!({
        "name": format!("envoy.filters.http.rbac.{}", action.to_ascii_lowercase()),
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC",
            "rules": {"action": action, "policies": policies},
        },
    })
}

/// The RBAC filters for `workload` (namespace and labels) from an estate's YAML.
pub fn filters(
    yaml: &str,
    root_namespace: &str,
    namespace: &str,
    labels: &BTreeMap<String, String>,
) -> Result<RbacFilters> {
    let mut deny = BTreeMap::new();
    let mut allow = BTreeMap::new();
    let mut audit_skipped = 0;
    let mut index = 0usize;
    for doc in serde_yaml::Deserializer::from_str(yaml) {
        let doc = <Yaml as serde::Deserialize>::deserialize(doc)?;
        if field(&doc, "kind").and_then(Yaml::as_str) != Some("AuthorizationPolicy") {
            continue;
        }
        let meta = field(&doc, "metadata").ok_or_else(|| anyhow!("no metadata"))?;
        let ns = field(meta, "namespace")
            .and_then(Yaml::as_str)
            .unwrap_or("default");
        let name = field(meta, "name").and_then(Yaml::as_str).unwrap_or("");
        let spec = field(&doc, "spec").cloned().unwrap_or(Yaml::Null);
        if ns != namespace && ns != root_namespace {
            continue;
        }
        let selected = match field(&spec, "selector").and_then(|s| field(s, "matchLabels")) {
            None => true,
            Some(m) => m.as_mapping().is_some_and(|m| {
                m.iter().all(|(k, v)| {
                    k.as_str()
                        .and_then(|k| labels.get(k))
                        .is_some_and(|l| Some(l.as_str()) == v.as_str())
                })
            }),
        };
        if !selected {
            continue;
        }
        let action = field(&spec, "action")
            .and_then(Yaml::as_str)
            .unwrap_or("ALLOW");
        let target = match action {
            "ALLOW" => &mut allow,
            "DENY" => &mut deny,
            "AUDIT" => {
                audit_skipped += 1;
                continue;
            }
            other => return Err(anyhow!("{ns}/{name}: action {other} not translated")),
        };
        for (n, rule) in field(&spec, "rules")
            .and_then(Yaml::as_sequence)
            .into_iter()
            .flatten()
            .enumerate()
        {
            index += 1;
            target.insert(
                format!("{index:06}-{ns}.{name}-rule-{n}"),
                policy(rule).map_err(|e| anyhow!("{ns}/{name} rule {n}: {e}"))?,
            );
        }
    }
    Ok(RbacFilters {
        deny_rules: deny.len(),
        allow_rules: allow.len(),
        deny: (!deny.is_empty()).then(|| filter("DENY", deny)),
        allow: (!allow.is_empty()).then(|| filter("ALLOW", allow)),
        audit_skipped,
    })
}
