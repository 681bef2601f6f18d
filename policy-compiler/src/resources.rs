//! Serde model of the Istio security resources as users write them (`security.istio.io` v1 and
//! v1beta1 share one schema), and of the Kubernetes workload kinds we read labels from.
//!
//! Every Istio type rejects unknown fields: a misspelt `notPrinciples` must be an error, never a
//! silently ignored matcher. Optional lists stay `Option` where Istio's validation tells "absent"
//! from "present but empty" (`from: []` is rejected, a missing `from` means any source).
//!
//! With the `schemars` feature the spec types also derive `JsonSchema`: `meshauthz crds` turns
//! that schema into the CRDs' `openAPIV3Schema`, so the API server and this loader agree on the
//! fields (`crds/`, checked by `authz/tests/manifests.rs`).

use std::collections::BTreeMap;

use serde::{Deserialize, Deserializer, Serialize};

/// `metadata` of any object. Known `ObjectMeta` fields only; the server-populated ones are
/// accepted (so `kubectl get -o yaml` output loads) and ignored.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ObjectMeta {
    #[serde(default, deserialize_with = "strict_opt_string")]
    pub name: Option<String>,
    #[serde(default, deserialize_with = "strict_opt_string")]
    pub namespace: Option<String>,
    #[serde(default, deserialize_with = "strict_map")]
    pub labels: BTreeMap<String, String>,
    #[serde(default, deserialize_with = "strict_map")]
    pub annotations: BTreeMap<String, String>,
    /// RFC 3339; PeerAuthentication's "oldest wins" tie-break reads it.
    #[serde(default, deserialize_with = "strict_opt_string")]
    pub creation_timestamp: Option<String>,
    #[serde(default, deserialize_with = "strict_opt_string")]
    pub generate_name: Option<String>,
    #[serde(default, deserialize_with = "strict_opt_string")]
    pub uid: Option<String>,
    #[serde(default, deserialize_with = "strict_opt_string")]
    pub resource_version: Option<String>,
    #[serde(default)]
    pub generation: Option<i64>,
    #[serde(default, deserialize_with = "strict_opt_string")]
    pub deletion_timestamp: Option<String>,
    #[serde(default)]
    pub deletion_grace_period_seconds: Option<i64>,
    #[serde(default)]
    pub finalizers: Vec<String>,
    #[serde(default)]
    pub owner_references: Vec<serde_json::Value>,
    #[serde(default)]
    pub managed_fields: Vec<serde_json::Value>,
    #[serde(default, deserialize_with = "strict_opt_string")]
    pub self_link: Option<String>,
}

/// A whole Istio security object: `apiVersion`, `kind`, `metadata`, `spec` (and `status`,
/// which the API server adds and we ignore).
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Object<S> {
    pub api_version: String,
    pub kind: String,
    #[serde(default)]
    pub metadata: ObjectMeta,
    #[serde(default = "Option::default")]
    pub spec: Option<S>,
    #[serde(default)]
    pub status: Option<serde_json::Value>,
}

#[cfg_attr(feature = "schemars", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq, Eq, Hash)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct WorkloadSelector {
    #[serde(default, deserialize_with = "strict_map")]
    pub match_labels: BTreeMap<String, String>,
}

#[cfg_attr(feature = "schemars", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq, Eq, Hash)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PolicyTargetReference {
    #[serde(default, deserialize_with = "strict_string")]
    pub group: String,
    #[serde(default, deserialize_with = "strict_string")]
    pub kind: String,
    #[serde(default, deserialize_with = "strict_string")]
    pub name: String,
    #[serde(default, deserialize_with = "strict_string")]
    pub namespace: String,
}

// === AuthorizationPolicy ===

#[cfg_attr(feature = "schemars", derive(schemars::JsonSchema))]
#[derive(
    Debug, Clone, Copy, Default, Deserialize, Serialize, PartialEq, Eq, PartialOrd, Ord, Hash,
)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Action {
    #[default]
    Allow,
    Deny,
    Audit,
    Custom,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Allow => "ALLOW",
            Action::Deny => "DENY",
            Action::Audit => "AUDIT",
            Action::Custom => "CUSTOM",
        }
    }
}

#[cfg_attr(feature = "schemars", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq, Eq, Hash)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct AuthorizationPolicySpec {
    #[serde(default)]
    pub selector: Option<WorkloadSelector>,
    #[serde(default)]
    pub target_ref: Option<PolicyTargetReference>,
    #[serde(default)]
    pub target_refs: Option<Vec<PolicyTargetReference>>,
    #[serde(default)]
    pub action: Action,
    #[serde(default)]
    pub provider: Option<ExtensionProviderRef>,
    /// `None` and `Some([])` both mean "no rules" (match nothing); a `null` item is a nil rule,
    /// which validation rejects.
    #[serde(default)]
    pub rules: Option<Vec<Option<Rule>>>,
}

#[cfg_attr(feature = "schemars", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq, Eq, Hash)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ExtensionProviderRef {
    #[serde(default, deserialize_with = "strict_string")]
    pub name: String,
}

#[cfg_attr(feature = "schemars", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq, Eq, Hash)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Rule {
    #[serde(default)]
    pub from: Option<Vec<From>>,
    #[serde(default)]
    pub to: Option<Vec<To>>,
    #[serde(default)]
    pub when: Option<Vec<Condition>>,
}

#[cfg_attr(feature = "schemars", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq, Eq, Hash)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct From {
    #[serde(default)]
    pub source: Option<Source>,
}

#[cfg_attr(feature = "schemars", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq, Eq, Hash)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct To {
    #[serde(default)]
    pub operation: Option<Operation>,
}

#[cfg_attr(feature = "schemars", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq, Eq, Hash)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Source {
    #[serde(default, deserialize_with = "strict_strings")]
    pub principals: Vec<String>,
    #[serde(default, deserialize_with = "strict_strings")]
    pub not_principals: Vec<String>,
    #[serde(default, deserialize_with = "strict_strings")]
    pub request_principals: Vec<String>,
    #[serde(default, deserialize_with = "strict_strings")]
    pub not_request_principals: Vec<String>,
    #[serde(default, deserialize_with = "strict_strings")]
    pub namespaces: Vec<String>,
    #[serde(default, deserialize_with = "strict_strings")]
    pub not_namespaces: Vec<String>,
    #[serde(default, deserialize_with = "strict_strings")]
    pub service_accounts: Vec<String>,
    #[serde(default, deserialize_with = "strict_strings")]
    pub not_service_accounts: Vec<String>,
    #[serde(default, deserialize_with = "strict_strings")]
    pub ip_blocks: Vec<String>,
    #[serde(default, deserialize_with = "strict_strings")]
    pub not_ip_blocks: Vec<String>,
    #[serde(default, deserialize_with = "strict_strings")]
    pub remote_ip_blocks: Vec<String>,
    #[serde(default, deserialize_with = "strict_strings")]
    pub not_remote_ip_blocks: Vec<String>,
    #[serde(default, deserialize_with = "strict_strings")]
    pub trust_domains: Vec<String>,
    #[serde(default, deserialize_with = "strict_strings")]
    pub not_trust_domains: Vec<String>,
}

impl Source {
    pub fn is_empty(&self) -> bool {
        self == &Source::default()
    }
}

#[cfg_attr(feature = "schemars", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq, Eq, Hash)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Operation {
    #[serde(default, deserialize_with = "strict_strings")]
    pub hosts: Vec<String>,
    #[serde(default, deserialize_with = "strict_strings")]
    pub not_hosts: Vec<String>,
    #[serde(default, deserialize_with = "strict_strings")]
    pub ports: Vec<String>,
    #[serde(default, deserialize_with = "strict_strings")]
    pub not_ports: Vec<String>,
    #[serde(default, deserialize_with = "strict_strings")]
    pub methods: Vec<String>,
    #[serde(default, deserialize_with = "strict_strings")]
    pub not_methods: Vec<String>,
    #[serde(default, deserialize_with = "strict_strings")]
    pub paths: Vec<String>,
    #[serde(default, deserialize_with = "strict_strings")]
    pub not_paths: Vec<String>,
}

impl Operation {
    pub fn is_empty(&self) -> bool {
        self == &Operation::default()
    }
}

#[cfg_attr(feature = "schemars", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq, Eq, Hash)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Condition {
    #[serde(default, deserialize_with = "strict_string")]
    pub key: String,
    #[serde(default, deserialize_with = "strict_strings")]
    pub values: Vec<String>,
    #[serde(default, deserialize_with = "strict_strings")]
    pub not_values: Vec<String>,
}

// === PeerAuthentication ===

#[cfg_attr(feature = "schemars", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize, PartialEq, Eq, Hash)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum MtlsMode {
    #[default]
    Unset,
    Disable,
    Permissive,
    Strict,
}

impl MtlsMode {
    pub fn as_str(self) -> &'static str {
        match self {
            MtlsMode::Unset => "UNSET",
            MtlsMode::Disable => "DISABLE",
            MtlsMode::Permissive => "PERMISSIVE",
            MtlsMode::Strict => "STRICT",
        }
    }
}

#[cfg_attr(feature = "schemars", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Mtls {
    #[serde(default)]
    pub mode: MtlsMode,
}

#[cfg_attr(feature = "schemars", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PeerAuthenticationSpec {
    #[serde(default)]
    pub selector: Option<WorkloadSelector>,
    #[serde(default)]
    pub mtls: Option<Mtls>,
    /// Keys are container ports; YAML may write them as numbers or strings.
    #[serde(default)]
    pub port_level_mtls: Option<BTreeMap<PortKey, Mtls>>,
}

/// A `portLevelMtls` key: kept as written so validation can say what was wrong with it.
#[cfg_attr(feature = "schemars", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct PortKey(pub String);

impl<'de> Deserialize<'de> for PortKey {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            N(i64),
            S(String),
        }
        Ok(match Raw::deserialize(d)? {
            Raw::N(n) => PortKey(n.to_string()),
            Raw::S(s) => PortKey(s),
        })
    }
}

// === RequestAuthentication ===

#[cfg_attr(feature = "schemars", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RequestAuthenticationSpec {
    #[serde(default)]
    pub selector: Option<WorkloadSelector>,
    #[serde(default)]
    pub target_ref: Option<PolicyTargetReference>,
    #[serde(default)]
    pub target_refs: Option<Vec<PolicyTargetReference>>,
    #[serde(default, deserialize_with = "null_as_empty")]
    pub jwt_rules: Vec<JwtRule>,
}

#[cfg_attr(feature = "schemars", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct JwtRule {
    #[serde(default, deserialize_with = "strict_string")]
    pub issuer: String,
    #[serde(default, deserialize_with = "strict_strings")]
    pub audiences: Vec<String>,
    #[serde(default, deserialize_with = "strict_string")]
    pub jwks_uri: String,
    #[serde(default, deserialize_with = "strict_string")]
    pub jwks: String,
    #[serde(default, deserialize_with = "null_as_empty")]
    pub from_headers: Vec<JwtHeader>,
    #[serde(default, deserialize_with = "strict_strings")]
    pub from_params: Vec<String>,
    #[serde(default, deserialize_with = "strict_strings")]
    pub from_cookies: Vec<String>,
    #[serde(default, deserialize_with = "strict_string")]
    pub output_payload_to_header: String,
    #[serde(default)]
    pub forward_original_token: bool,
    #[serde(default, deserialize_with = "null_as_empty")]
    pub output_claim_to_headers: Vec<ClaimToHeader>,
    /// JWKS fetch timeout, a duration such as `5s` (Istio's default).
    #[serde(default, deserialize_with = "strict_opt_string")]
    pub timeout: Option<String>,
    #[serde(default, deserialize_with = "strict_strings")]
    pub space_delimited_claims: Vec<String>,
}

#[cfg_attr(feature = "schemars", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct JwtHeader {
    #[serde(default, deserialize_with = "strict_string")]
    pub name: String,
    #[serde(default, deserialize_with = "strict_string")]
    pub prefix: String,
}

#[cfg_attr(feature = "schemars", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ClaimToHeader {
    #[serde(default, deserialize_with = "strict_string")]
    pub header: String,
    #[serde(default, deserialize_with = "strict_string")]
    pub claim: String,
}

/// A string that was written as a string: Kubernetes rejects `ports: [8080]` or `values: [true]`
/// for string fields (the CRD schema says `type: string`), and so do we. YAML's plain scalars
/// that read as numbers, booleans or null are not strings; quote them (`"8080"`).
struct StrictString(String);

impl<'de> Deserialize<'de> for StrictString {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = StrictString;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a string (quote numbers and booleans, e.g. \"8080\")")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<StrictString, E> {
                Ok(StrictString(v.to_string()))
            }
            fn visit_string<E: serde::de::Error>(self, v: String) -> Result<StrictString, E> {
                Ok(StrictString(v))
            }
        }
        d.deserialize_any(V)
    }
}

fn strict_string<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    Ok(Option::<StrictString>::deserialize(d)?
        .map(|s| s.0)
        .unwrap_or_default())
}

fn strict_opt_string<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    Ok(Option::<StrictString>::deserialize(d)?.map(|s| s.0))
}

fn strict_strings<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    Ok(Option::<Vec<StrictString>>::deserialize(d)?
        .unwrap_or_default()
        .into_iter()
        .map(|s| s.0)
        .collect())
}

fn strict_map<'de, D: Deserializer<'de>>(d: D) -> Result<BTreeMap<String, String>, D::Error> {
    Ok(Option::<BTreeMap<String, StrictString>>::deserialize(d)?
        .unwrap_or_default()
        .into_iter()
        .map(|(k, v)| (k, v.0))
        .collect())
}

/// YAML `field:` with no value is `null`; Kubernetes treats it as an empty list.
fn null_as_empty<'de, D, T>(d: D) -> Result<Vec<T>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    Ok(Option::<Vec<T>>::deserialize(d)?.unwrap_or_default())
}
