//! Mesh-wide settings (the subset of Istio's MeshConfig that changes authorization), as given by
//! `--mesh FILE` or the `mesh:` section of a test file. Owns no state beyond the parsed values.

use serde::{Deserialize, Serialize};

/// How the request path is normalized before `paths`/`notPaths` are matched
/// (`meshConfig.pathNormalization.normalization`). Istio's default is `BASE`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum PathNormalization {
    /// No normalization (the fragment is still stripped).
    None,
    /// RFC 3986 dot segments, decode unreserved percent escapes, `\` to `/`. Istio's default.
    #[default]
    #[serde(alias = "DEFAULT")]
    Base,
    /// `BASE`, then runs of `/` merged into one.
    MergeSlashes,
    /// Decode `%2F` and `%5C` first, then `BASE`, then merge slashes.
    DecodeAndMergeSlashes,
}

/// The mesh settings meshauthz honours. Every field has Istio's default.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct MeshConfig {
    /// Policies here apply mesh-wide (`meshConfig.rootNamespace`).
    #[serde(default = "default_root_namespace")]
    pub root_namespace: String,
    #[serde(default = "default_trust_domain")]
    pub trust_domain: String,
    #[serde(default)]
    pub trust_domain_aliases: Vec<String>,
    #[serde(default)]
    pub path_normalization: PathNormalization,
    /// `meshConfig.defaultConfig.gatewayTopology.numTrustedProxies`: X-Forwarded-For hops trusted
    /// when deriving `remote.ip`.
    #[serde(default)]
    pub num_trusted_proxies: u32,
    /// `meshConfig.extensionProviders`, for CUSTOM policies. Only the name and the kind of
    /// provider matter to the decision; the rest is kept for display.
    #[serde(default)]
    pub extension_providers: Vec<ExtensionProvider>,
}

fn default_root_namespace() -> String {
    "istio-system".to_string()
}

fn default_trust_domain() -> String {
    "cluster.local".to_string()
}

impl Default for MeshConfig {
    fn default() -> Self {
        MeshConfig {
            root_namespace: default_root_namespace(),
            trust_domain: default_trust_domain(),
            trust_domain_aliases: Vec::new(),
            path_normalization: PathNormalization::Base,
            num_trusted_proxies: 0,
            extension_providers: Vec::new(),
        }
    }
}

impl MeshConfig {
    /// The trust domain bundle: the mesh trust domain followed by its aliases, without repeats.
    pub fn trust_domains(&self) -> Vec<String> {
        let mut out = vec![self.trust_domain.clone()];
        for alias in &self.trust_domain_aliases {
            if !out.contains(alias) {
                out.push(alias.clone());
            }
        }
        out
    }

    pub fn provider(&self, name: &str) -> Option<&ExtensionProvider> {
        self.extension_providers.iter().find(|p| p.name == name)
    }
}

/// One `meshConfig.extensionProviders[]` entry. The provider kinds other than ext_authz (tracing,
/// logging) are accepted so a real meshConfig loads, but cannot serve CUSTOM.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ExtensionProvider {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub envoy_ext_authz_http: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub envoy_ext_authz_grpc: Option<serde_json::Value>,
    #[serde(flatten)]
    pub other: std::collections::BTreeMap<String, serde_json::Value>,
}

/// What an ext_authz provider speaks; an HTTP provider is not consulted on TCP connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProviderKind {
    Http,
    Grpc,
}

impl ExtensionProvider {
    /// `None` when this provider cannot serve a CUSTOM policy (not an ext_authz provider, or
    /// without a `service`).
    pub fn ext_authz_kind(&self) -> Option<ProviderKind> {
        let has_service = |v: &serde_json::Value| {
            v.get("service")
                .and_then(|s| s.as_str())
                .is_some_and(|s| !s.is_empty())
        };
        match (&self.envoy_ext_authz_http, &self.envoy_ext_authz_grpc) {
            (Some(h), None) if has_service(h) => Some(ProviderKind::Http),
            (None, Some(g)) if has_service(g) => Some(ProviderKind::Grpc),
            _ => None,
        }
    }
}

/// A workload: what selectors, targetRefs and the ext_authz destination lookup match against.
/// From a test file's `workloads:`, a `--mesh` file, or Deployments/Pods found among the inputs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Workload {
    pub namespace: String,
    pub name: String,
    #[serde(default)]
    pub labels: std::collections::BTreeMap<String, String>,
    #[serde(default = "default_service_account")]
    pub service_account: String,
    #[serde(default)]
    pub ips: Vec<std::net::IpAddr>,
    /// The Gateway API `Gateway` this workload implements, if it is a gateway.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<String>,
    /// Services that select this workload (targetRefs of kind Service).
    #[serde(default)]
    pub services: Vec<String>,
}

fn default_service_account() -> String {
    "default".to_string()
}

impl Workload {
    /// `<namespace>/<name>`, the key every host uses.
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }

    /// The order of [`Workload::key`], without making the keys.
    pub fn key_cmp(&self, other: &Workload) -> std::cmp::Ordering {
        fn key(w: &Workload) -> impl Iterator<Item = u8> + '_ {
            (w.namespace.bytes())
                .chain(std::iter::once(b'/'))
                .chain(w.name.bytes())
        }
        key(self).cmp(key(other))
    }
}

/// The `--mesh FILE` format: the `mesh:` and `workloads:` sections of a test file.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct MeshFile {
    #[serde(default)]
    pub mesh: Option<MeshConfig>,
    #[serde(default)]
    pub workloads: Vec<Workload>,
}
