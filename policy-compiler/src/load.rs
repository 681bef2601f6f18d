//! Reading multi-document YAML into typed, validated resources.
//!
//! State owned: [`Inputs`], the accumulated resources and workloads of one load, each with its
//! [`Origin`] (file, document, line; the line of every rule for AuthorizationPolicies). Kinds that
//! are not Istio security resources are not errors: Deployments, StatefulSets, DaemonSets,
//! ReplicaSets and Pods define workloads; anything else is counted as skipped.

use std::collections::BTreeMap;

use serde::de::DeserializeOwned;

use crate::error::{LoadError, Location, Warning};
use crate::lines::FieldLines;
use crate::mesh::Workload;
use crate::resources::{
    AuthorizationPolicySpec, Object, ObjectMeta, PeerAuthenticationSpec, RequestAuthenticationSpec,
};
use crate::validate;

/// Inputs larger than this are refused before parsing (a policy estate of 10,000 policies is a
/// few MiB).
pub const MAX_INPUT_BYTES: usize = 64 * 1024 * 1024;

/// Where a resource came from.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Origin {
    pub file: String,
    /// 1-based document number in the file.
    pub document: usize,
    /// 1-based line of the document's first content line.
    pub line: usize,
}

impl std::fmt::Display for Origin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.file, self.line)
    }
}

/// One loaded Istio resource.
#[derive(Debug, Clone, PartialEq)]
pub struct Loaded<S> {
    pub origin: Origin,
    pub namespace: String,
    pub name: String,
    pub meta: ObjectMeta,
    pub spec: S,
    /// 1-based line of each entry of `spec.rules` (AuthorizationPolicy) or `spec.jwtRules`,
    /// where it could be found; falls back to the resource's line.
    pub item_lines: Vec<usize>,
}

impl<S> Loaded<S> {
    /// `namespace/name`.
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }

    pub fn item_line(&self, index: usize) -> usize {
        self.item_lines
            .get(index)
            .copied()
            .unwrap_or(self.origin.line)
    }
}

/// Everything read from the inputs of one command or snapshot.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Inputs {
    pub authorization: Vec<Loaded<AuthorizationPolicySpec>>,
    pub peer: Vec<Loaded<PeerAuthenticationSpec>>,
    pub request: Vec<Loaded<RequestAuthenticationSpec>>,
    /// Workloads found among Kubernetes manifests in the inputs.
    pub workloads: Vec<Workload>,
    /// Documents of other kinds, which carry nothing for authorization: (origin, kind).
    pub skipped: Vec<(Origin, String)>,
    pub warnings: Vec<Warning>,
}

impl Inputs {
    /// Reads every document of `text` (named `file` in messages). Valid resources are added;
    /// every problem is returned, so one bad document does not hide the next one's error.
    pub fn load_str(&mut self, file: &str, text: &str) -> Vec<LoadError> {
        let mut errors = Vec::new();
        if text.len() > MAX_INPUT_BYTES {
            errors.push(LoadError::new(
                Location::file(file),
                format!(
                    "input is {} bytes, more than the {MAX_INPUT_BYTES} bytes meshauthz reads; split it into several files",
                    text.len()
                ),
            ));
            return errors;
        }
        for (index, doc) in split_documents(text).into_iter().enumerate() {
            let origin = Origin {
                file: file.to_string(),
                document: index + 1,
                line: doc.first_content_line,
            };
            if let Err(e) = self.load_document(&origin, doc.text, doc.start_line) {
                errors.extend(e);
            }
        }
        self.check_duplicates(&mut errors);
        errors
    }

    /// Reads a file's bytes; invalid UTF-8 is an error naming the line.
    pub fn load_bytes(&mut self, file: &str, bytes: &[u8]) -> Vec<LoadError> {
        match std::str::from_utf8(bytes) {
            Ok(text) => self.load_str(file, text),
            Err(e) => {
                let valid = &bytes[..e.valid_up_to()];
                let line = valid.iter().filter(|b| **b == b'\n').count() + 1;
                vec![LoadError::new(
                    Location {
                        line: Some(line),
                        ..Location::file(file)
                    },
                    format!(
                        "the file is not valid UTF-8 (byte {}); YAML must be UTF-8 text",
                        e.valid_up_to()
                    ),
                )]
            }
        }
    }

    fn load_document(
        &mut self,
        origin: &Origin,
        text: &str,
        start_line: usize,
    ) -> Result<(), Vec<LoadError>> {
        let location = Location {
            file: origin.file.clone(),
            document: Some(origin.document),
            line: Some(origin.line),
            ..Location::default()
        };
        let value: serde_yaml::Value = serde_yaml::from_str(text)
            .map_err(|e| vec![yaml_error(&location, start_line, None, &e)])?;
        self.load_value(origin, &location, text, start_line, value)
    }

    fn load_value(
        &mut self,
        origin: &Origin,
        location: &Location,
        text: &str,
        start_line: usize,
        value: serde_yaml::Value,
    ) -> Result<(), Vec<LoadError>> {
        let map = match &value {
            serde_yaml::Value::Null => return Ok(()),
            serde_yaml::Value::Mapping(m) => m,
            _ => {
                return Err(vec![LoadError::new(
                location.clone(),
                "a document must be a Kubernetes object (a mapping with `apiVersion` and `kind`)",
            )])
            }
        };
        let field = |name: &str| map.get(name).and_then(|v| v.as_str()).unwrap_or_default();
        let api_version = field("apiVersion").to_string();
        let kind = field("kind").to_string();
        let (group, _) = api_version.split_once('/').unwrap_or(("", &api_version));
        if group == SECURITY_GROUP {
            let valid =
                validate_security_object(origin, location, text, start_line, &api_version, &kind)?;
            self.warnings.extend(valid.warnings);
            match valid.resource {
                SecurityResource::AuthorizationPolicy(r) => self.authorization.push(r),
                SecurityResource::PeerAuthentication(r) => self.peer.push(r),
                SecurityResource::RequestAuthentication(r) => self.request.push(r),
            }
            return Ok(());
        }
        match (group, kind.as_str()) {
            ("", "List") => {
                // `kubectl get -o yaml` output: every item is a document of its own.
                if let Some(serde_yaml::Value::Sequence(items)) = map.get("items") {
                    let mut errors = Vec::new();
                    for item in items.clone() {
                        let item_text = serde_yaml::to_string(&item).unwrap_or_default();
                        if let Err(e) =
                            self.load_value(origin, location, &item_text, origin.line, item)
                        {
                            errors.extend(e);
                        }
                    }
                    if !errors.is_empty() {
                        return Err(errors);
                    }
                }
                Ok(())
            }
            ("apps", "Deployment" | "StatefulSet" | "DaemonSet" | "ReplicaSet") | ("", "Pod") => {
                let json = serde_json::to_value(&value).unwrap_or_default();
                match workload_from_manifest(&kind, &json) {
                    Some(w) => self.workloads.push(w),
                    None => self.warnings.push(Warning {
                        location: location.clone(),
                        message: format!(
                            "{kind} without `metadata.name` does not define a workload"
                        ),
                    }),
                }
                Ok(())
            }
            _ => {
                let shown = if kind.is_empty() {
                    "(no kind)".to_string()
                } else {
                    kind
                };
                self.skipped.push((origin.clone(), shown));
                Ok(())
            }
        }
    }

    fn check_duplicates(&self, errors: &mut Vec<LoadError>) {
        fn check<S>(kind: &str, items: &[Loaded<S>], errors: &mut Vec<LoadError>) {
            let mut seen: BTreeMap<String, &Origin> = BTreeMap::new();
            for item in items {
                let key = item.key();
                if let Some(first) = seen.get(&key) {
                    let message = format!("{kind} `{key}` is defined twice (first at {first}); a name can be applied only once per namespace");
                    let location = Location {
                        file: item.origin.file.clone(),
                        document: Some(item.origin.document),
                        line: Some(item.origin.line),
                        resource: Some(format!("{kind} {key}")),
                        field: Some("metadata.name".into()),
                    };
                    if !errors.iter().any(|e| e.location == location) {
                        errors.push(LoadError::new(location, message));
                    }
                } else {
                    seen.insert(key, &item.origin);
                }
            }
        }
        check("AuthorizationPolicy", &self.authorization, errors);
        check("PeerAuthentication", &self.peer, errors);
        check("RequestAuthentication", &self.request, errors);
    }
}

/// The API group of the resources meshauthz reads.
pub const SECURITY_GROUP: &str = "security.istio.io";

/// One valid Istio security resource.
#[derive(Debug, Clone, PartialEq)]
pub enum SecurityResource {
    AuthorizationPolicy(Loaded<AuthorizationPolicySpec>),
    PeerAuthentication(Loaded<PeerAuthenticationSpec>),
    RequestAuthentication(Loaded<RequestAuthenticationSpec>),
}

impl SecurityResource {
    /// `Kind namespace/name`, as locations name it.
    pub fn describe(&self) -> String {
        match self {
            SecurityResource::AuthorizationPolicy(r) => format!("AuthorizationPolicy {}", r.key()),
            SecurityResource::PeerAuthentication(r) => format!("PeerAuthentication {}", r.key()),
            SecurityResource::RequestAuthentication(r) => {
                format!("RequestAuthentication {}", r.key())
            }
        }
    }
}

/// A resource that passed validation, with the warnings Istio would log for it.
#[derive(Debug, Clone, PartialEq)]
pub struct Validated {
    pub resource: SecurityResource,
    pub warnings: Vec<Warning>,
}

/// Validates one Kubernetes object that stands on its own, such as the `object` of an admission
/// request (JSON is YAML, so either text works). It runs [`validate_security_object`], the same
/// function [`Inputs::load_str`] runs for every `security.istio.io` document of a file, so
/// `meshauthz validate` and the admission webhook accept, reject and word alike.
///
/// `source` names the input in locations (the webhook says `admission`). The text is not a file
/// the user wrote, so locations carry no line or document number: they read
/// `source: Kind namespace/name: field.path`. An object without `metadata.namespace` is in
/// `default`, as in a file; a caller that knows the namespace sets it first.
pub fn validate_object(source: &str, text: &str) -> Result<Validated, Vec<LoadError>> {
    let location = Location::file(source);
    let origin = Origin {
        file: source.to_string(),
        document: 1,
        line: 1,
    };
    let result = if text.len() > MAX_INPUT_BYTES {
        Err(vec![LoadError::new(
            location.clone(),
            format!(
                "the object is {} bytes, more than the {MAX_INPUT_BYTES} bytes meshauthz reads",
                text.len()
            ),
        )])
    } else {
        match serde_yaml::from_str::<serde_yaml::Value>(text) {
            Err(e) => Err(vec![yaml_error(&location, 1, None, &e)]),
            Ok(value) => {
                let field = |name: &str| value.get(name).and_then(|v| v.as_str()).unwrap_or("");
                let (api_version, kind) = (field("apiVersion"), field("kind"));
                let (group, _) = api_version.split_once('/').unwrap_or(("", api_version));
                if group == SECURITY_GROUP {
                    validate_security_object(&origin, &location, text, 1, api_version, kind)
                } else {
                    Err(vec![LoadError::new(
                        location.with_field("apiVersion"),
                        format!("`{api_version}` `{kind}` is not a {SECURITY_GROUP} resource (AuthorizationPolicy, PeerAuthentication, RequestAuthentication)"),
                    )])
                }
            }
        }
    };
    let standalone = |l: &mut Location| {
        l.line = None;
        l.document = None;
    };
    match result {
        Ok(mut valid) => {
            valid
                .warnings
                .iter_mut()
                .for_each(|w| standalone(&mut w.location));
            Ok(valid)
        }
        Err(mut errors) => {
            errors.iter_mut().for_each(|e| standalone(&mut e.location));
            Err(errors)
        }
    }
}

/// THE validator of one `security.istio.io` object, shared by every way resources come in
/// (files and the CLI through [`Inputs::load_str`], the admission webhook through
/// [`validate_object`]): the version check, typed parsing (unknown fields rejected), Istio's
/// admission rules and the warnings for legal but surprising policies. `text` is the object's
/// document, starting at `start_line` of the file `location` names. Every error is returned,
/// not only the first.
pub fn validate_security_object(
    origin: &Origin,
    location: &Location,
    text: &str,
    start_line: usize,
    api_version: &str,
    kind: &str,
) -> Result<Validated, Vec<LoadError>> {
    let (_, version) = api_version.split_once('/').unwrap_or(("", api_version));
    if version != "v1" && version != "v1beta1" {
        return Err(vec![LoadError::new(
            location.with_field("apiVersion"),
            format!("`{api_version}` is not supported; use `{SECURITY_GROUP}/v1` (or `v1beta1`)"),
        )]);
    }
    match kind {
        "AuthorizationPolicy" => {
            let loaded = parse_istio::<AuthorizationPolicySpec>(
                origin, location, text, start_line, kind, "rules",
            )?;
            let at = resource_location(location, kind, &loaded);
            let mut errors = validate::authorization_policy(&loaded, &at);
            let mut warnings = validate::authorization_policy_warnings(&loaded, &at);
            with_field_lines(text, start_line, &mut errors, &mut warnings);
            if !errors.is_empty() {
                return Err(errors);
            }
            Ok(Validated {
                resource: SecurityResource::AuthorizationPolicy(loaded),
                warnings,
            })
        }
        "PeerAuthentication" => {
            let loaded =
                parse_istio::<PeerAuthenticationSpec>(origin, location, text, start_line, kind, "")?;
            let at = resource_location(location, kind, &loaded);
            let mut errors = validate::peer_authentication(&loaded, &at);
            with_field_lines(text, start_line, &mut errors, &mut []);
            if !errors.is_empty() {
                return Err(errors);
            }
            Ok(Validated {
                resource: SecurityResource::PeerAuthentication(loaded),
                warnings: Vec::new(),
            })
        }
        "RequestAuthentication" => {
            let loaded = parse_istio::<RequestAuthenticationSpec>(
                origin, location, text, start_line, kind, "jwtRules",
            )?;
            let at = resource_location(location, kind, &loaded);
            let mut errors = validate::request_authentication(&loaded, &at);
            let mut warnings = validate::request_authentication_warnings(&loaded, &at);
            with_field_lines(text, start_line, &mut errors, &mut warnings);
            if !errors.is_empty() {
                return Err(errors);
            }
            Ok(Validated {
                resource: SecurityResource::RequestAuthentication(loaded),
                warnings,
            })
        }
        other => Err(vec![LoadError::new(
            location.with_field("kind"),
            format!("`{other}` is not a {SECURITY_GROUP} kind meshauthz knows (AuthorizationPolicy, PeerAuthentication, RequestAuthentication)"),
        )]),
    }
}

/// Points each error (and warning) at the line of its field.
fn with_field_lines(
    text: &str,
    start_line: usize,
    errors: &mut [LoadError],
    warnings: &mut [Warning],
) {
    if errors.is_empty() && warnings.is_empty() {
        return;
    }
    let lines = FieldLines::scan(text);
    let locations = errors
        .iter_mut()
        .map(|e| &mut e.location)
        .chain(warnings.iter_mut().map(|w| &mut w.location));
    for loc in locations {
        if let Some(line) = loc.field.as_deref().and_then(|f| lines.line_of(f)) {
            loc.line = Some(line + start_line - 1);
        }
    }
}

fn resource_location<S>(location: &Location, kind: &str, loaded: &Loaded<S>) -> Location {
    Location {
        resource: Some(format!("{kind} {}", loaded.key())),
        ..location.clone()
    }
}

fn parse_istio<S: DeserializeOwned + Default>(
    origin: &Origin,
    location: &Location,
    text: &str,
    start_line: usize,
    kind: &str,
    items_key: &str,
) -> Result<Loaded<S>, Vec<LoadError>> {
    // Name first, so that a type error deeper down can still say which resource it is in.
    let name_location = {
        let header: Result<serde_yaml::Value, _> = serde_yaml::from_str(text);
        let meta = header.ok().and_then(|v| v.get("metadata").cloned());
        let name = meta
            .as_ref()
            .and_then(|m| m.get("name"))
            .and_then(|n| n.as_str())
            .map(str::to_string);
        let namespace = meta
            .as_ref()
            .and_then(|m| m.get("namespace"))
            .and_then(|n| n.as_str())
            .unwrap_or("default")
            .to_string();
        Location {
            resource: name.map(|n| format!("{kind} {namespace}/{n}")),
            ..location.clone()
        }
    };
    let deserializer = serde_yaml::Deserializer::from_str(text);
    let object: Object<S> = serde_path_to_error::deserialize(deserializer).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        vec![yaml_error(&name_location, start_line, Some(path), &inner)]
    })?;
    let name = match object.metadata.name.clone() {
        Some(n) if !n.is_empty() => n,
        _ => {
            return Err(vec![LoadError::new(
                name_location.with_field("metadata.name"),
                format!("a {kind} needs `metadata.name`"),
            )])
        }
    };
    let namespace = object
        .metadata
        .namespace
        .clone()
        .filter(|n| !n.is_empty())
        .unwrap_or_else(|| "default".to_string());
    let item_lines = if items_key.is_empty() {
        Vec::new()
    } else {
        let lines = FieldLines::scan(text);
        (0..)
            .map_while(|i| lines.line_of_exact(&format!("spec.{items_key}[{i}]")))
            .map(|l| l + start_line - 1)
            .collect()
    };
    Ok(Loaded {
        origin: origin.clone(),
        namespace,
        name,
        meta: object.metadata,
        spec: object.spec.unwrap_or_default(),
        item_lines,
    })
}

fn yaml_error(
    location: &Location,
    start_line: usize,
    path: Option<String>,
    error: &serde_yaml::Error,
) -> LoadError {
    let line = error
        .location()
        .map(|l| l.line() + start_line - 1)
        .or(location.line);
    let message = crate::error::clean_yaml_message(&error.to_string());
    let field = path.filter(|p| !p.is_empty() && p != ".");
    LoadError::new(
        Location {
            line,
            field,
            ..location.clone()
        },
        message,
    )
}

/// One YAML document of a multi-document text.
#[derive(Debug)]
struct DocumentText<'a> {
    text: &'a str,
    /// 1-based line where `text` starts in the file.
    start_line: usize,
    /// 1-based line of the first line that is neither blank, a comment, nor a `---` marker.
    first_content_line: usize,
}

/// Splits at `---` marker lines. A marker at column 0 always starts a document in YAML (it cannot
/// occur inside content), so a line scan is exact and lets us keep file line numbers.
fn split_documents(text: &str) -> Vec<DocumentText<'_>> {
    let mut docs = Vec::new();
    let mut start = 0usize;
    let mut start_line = 1usize;
    let mut offset = 0usize;
    for (line_no, line) in (1usize..).zip(text.split_inclusive('\n')) {
        let bare = line.trim_end_matches(['\n', '\r']);
        let is_marker = bare == "---" || bare.starts_with("--- ") || bare.starts_with("---\t");
        if is_marker && offset > start {
            docs.push((start, offset, start_line));
            start = offset;
            start_line = line_no;
        }
        offset += line.len();
    }
    if offset > start || docs.is_empty() {
        docs.push((start, offset, start_line));
    }
    docs.into_iter()
        .filter_map(|(s, e, l)| {
            let chunk = text.get(s..e)?;
            let mut first = None;
            for (i, line) in chunk.lines().enumerate() {
                let t = line.trim();
                if !(t.is_empty() || t.starts_with('#') || t == "---" || t == "...") {
                    first = Some(l + i);
                    break;
                }
            }
            // A chunk of only comments is not a document.
            first.map(|first_content_line| DocumentText {
                text: chunk,
                start_line: l,
                first_content_line,
            })
        })
        .collect()
}

/// A workload from a Deployment-like object (pod template) or a Pod.
/// The workload a Pod (or a Deployment, StatefulSet, DaemonSet, ReplicaSet: its pod template)
/// defines: namespace, name, labels, service account and, for a Pod, its IPs.
pub fn workload_from_manifest(kind: &str, object: &serde_json::Value) -> Option<Workload> {
    let meta = object.get("metadata")?;
    let name = meta.get("name")?.as_str()?.to_string();
    let namespace = meta
        .get("namespace")
        .and_then(|n| n.as_str())
        .unwrap_or("default")
        .to_string();
    let (labels, pod_spec) = if kind == "Pod" {
        (meta.get("labels"), object.get("spec"))
    } else {
        let template = object.get("spec").and_then(|s| s.get("template"));
        (
            template
                .and_then(|t| t.get("metadata"))
                .and_then(|m| m.get("labels")),
            template.and_then(|t| t.get("spec")),
        )
    };
    let labels = labels
        .and_then(|l| l.as_object())
        .map(|l| {
            l.iter()
                .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string())))
                .collect()
        })
        .unwrap_or_default();
    let service_account = pod_spec
        .and_then(|s| {
            s.get("serviceAccountName")
                .or_else(|| s.get("serviceAccount"))
        })
        .and_then(|s| s.as_str())
        .unwrap_or("default")
        .to_string();
    let mut ips = Vec::new();
    if kind == "Pod" {
        let status = object.get("status");
        if let Some(list) = status
            .and_then(|s| s.get("podIPs"))
            .and_then(|l| l.as_array())
        {
            ips.extend(
                list.iter()
                    .filter_map(|e| e.get("ip")?.as_str()?.parse::<std::net::IpAddr>().ok()),
            );
        } else if let Some(ip) = status
            .and_then(|s| s.get("podIP"))
            .and_then(|s| s.as_str())
            .and_then(|s| s.parse().ok())
        {
            ips.push(ip);
        }
    }
    Some(Workload {
        namespace,
        name,
        labels,
        service_account,
        ips,
        gateway: None,
        services: Vec::new(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_documents_and_keeps_lines() {
        let text = "# c\n---\na: 1\n---\n# only comment\n---\nb: 2\n";
        let docs = split_documents(text);
        assert_eq!(docs.len(), 2);
        assert_eq!(docs[0].first_content_line, 3);
        assert_eq!(docs[1].first_content_line, 7);
    }

    const BAD_AP: &str = "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata:\n  name: bad\n  namespace: foo\nspec:\n  action: DENY\n  rules:\n  - from:\n    - source:\n        principals: [\"\", \"ok\"]\n        namespaces: [\"\"]\n";

    /// What a location says apart from where in a file: resource, field and message.
    fn essence(errors: &[LoadError]) -> Vec<(Option<String>, Option<String>, String)> {
        errors
            .iter()
            .map(|e| {
                (
                    e.location.resource.clone(),
                    e.location.field.clone(),
                    e.message.clone(),
                )
            })
            .collect()
    }

    #[test]
    fn a_standalone_object_gets_the_errors_of_a_file_document() {
        let from_file = Inputs::default().load_str("bad.yaml", BAD_AP);
        assert!(from_file.len() >= 2, "{from_file:?}");
        // The same object as JSON, as an admission request carries it.
        let value: serde_json::Value = serde_yaml::from_str(BAD_AP).unwrap();
        let json = serde_json::to_string(&value).unwrap();
        let standalone = validate_object("admission", &json).unwrap_err();
        assert_eq!(essence(&standalone), essence(&from_file));
        let shown = standalone[0].to_string();
        assert!(
            shown.starts_with("admission: AuthorizationPolicy foo/bad: spec.rules[0].from[0].source.principals[0]: "),
            "{shown}"
        );
    }

    #[test]
    fn a_standalone_object_reports_type_errors_and_other_groups() {
        let json = r#"{"apiVersion":"security.istio.io/v1beta1","kind":"AuthorizationPolicy","metadata":{"name":"x","namespace":"ns"},"spec":{"rules":[{"from":[{"source":{"notPrinciples":["a"]}}]}]}}"#;
        let errors = validate_object("admission", json).unwrap_err();
        assert_eq!(errors.len(), 1);
        assert_eq!(
            errors[0].location.resource.as_deref(),
            Some("AuthorizationPolicy ns/x")
        );
        assert!(errors[0].message.contains("notPrinciples"), "{errors:?}");
        assert_eq!(errors[0].location.line, None);

        let pod = r#"{"apiVersion":"v1","kind":"Pod","metadata":{"name":"p"}}"#;
        assert!(validate_object("admission", pod).is_err());
        assert!(validate_object("admission", "{not json").is_err());

        let ok = r#"{"apiVersion":"security.istio.io/v1","kind":"PeerAuthentication","metadata":{"name":"default","namespace":"istio-system"},"spec":{"mtls":{"mode":"STRICT"}}}"#;
        let valid = validate_object("admission", ok).unwrap();
        assert_eq!(
            valid.resource.describe(),
            "PeerAuthentication istio-system/default"
        );
    }
}
