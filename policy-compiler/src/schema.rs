//! The Cedar schema of the request context. Headers, claims and metadata keys are only those the
//! policies reference, so the schema is generated per compiled policy set and strict validation
//! checks every access is guarded with `has`.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write;

use crate::expr::string_lit;

/// The Cedar namespace of every type meshauthz emits.
pub const NAMESPACE: &str = "Mesh";

/// What the policies refer to that the engine must put into the context.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct Vocabulary {
    /// Lower-cased header names (`request.headers[...]`), pseudo-headers included.
    pub headers: BTreeSet<String>,
    /// Claim attribute name -> claim path.
    pub claims: BTreeMap<String, Vec<String>>,
    /// Metadata attribute name -> (filter, key).
    pub metadata: BTreeMap<String, (String, String)>,
    /// Path templates (`{*}`, `{**}`) the engine must test the path against.
    pub templates: BTreeSet<String>,
}

fn record(names: impl Iterator<Item = String>) -> String {
    let mut out = String::from("{");
    let mut first = true;
    for n in names {
        if !first {
            out.push(',');
        }
        first = false;
        let _ = write!(out, "\n    {}?: String", string_lit(&n));
    }
    if !first {
        out.push_str("\n  ");
    }
    out.push('}');
    out
}

/// The schema in Cedar's human-readable syntax.
pub fn render(v: &Vocabulary) -> String {
    format!(
        r#"namespace {NAMESPACE} {{
  entity Namespace;
  // A workload: its labels are tags, so selectors read `resource.getTag("app")`.
  entity Workload in [Namespace] = {{
    "namespace": String,
    "name": String,
    "serviceAccount": String,
    "gateway"?: String,
    "services": Set<String>,
  }} tags String;
  // The caller; its identity is in context.source (the principal id is the SPIFFE ID or "").
  entity Peer;
  type Source = {{
    "principal"?: String,
    "trustDomain"?: String,
    "ip"?: ipaddr,
  }};
  type Destination = {{
    "ip"?: ipaddr,
    "port": Long,
  }};
  type Headers = {headers};
  type Http = {{
    "host": String,
    "method": String,
    "path": String,
    "headers": Headers,
    "pathTemplates": Set<String>,
  }};
  type Claims = {claims};
  type Jwt = {{
    "iss"?: String,
    "sub"?: String,
    "azp"?: String,
    "aud"?: String,
    "claims": Claims,
  }};
  type Metadata = {metadata};
  action "check" appliesTo {{
    principal: [Peer],
    resource: [Workload],
    context: {{
      "source": Source,
      "remoteIp"?: ipaddr,
      "destination": Destination,
      "sni"?: String,
      "http"?: Http,
      "jwt"?: Jwt,
      "metadata": Metadata,
    }}
  }};
}}
"#,
        headers = record(v.headers.iter().cloned()),
        claims = record(v.claims.keys().cloned()),
        metadata = record(v.metadata.keys().cloned()),
    )
}
