//! The filter's configuration: the JSON inside Envoy's `filter_config` (a
//! `google.protobuf.StringValue`):
//!
//! ```json
//! {"workload": "<namespace>/<name>", "policies": ["PATH", ...], "mesh": "FILE"}
//! ```
//!
//! `policies` are files or directories as for the CLI's `-f`; `mesh` is optional (the CLI's
//! `--mesh`). Relative paths resolve against Envoy's working directory. Unknown fields are
//! rejected. State owned: none; [`parse`] returns a value.

use std::path::PathBuf;

use serde::Deserialize;

/// A parsed filter config.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// The workload this filter guards, `<namespace>/<name>`; it must be one of the policy set's
    /// workloads (from the mesh file).
    pub workload: String,
    /// Policy files and directories.
    pub policies: Vec<PathBuf>,
    /// The mesh file: `mesh:` settings and `workloads:`.
    #[serde(default)]
    pub mesh: Option<PathBuf>,
    /// Test builds only: request handling panics on [`crate::filter::PANIC_PATH`].
    #[cfg(feature = "test-panic")]
    #[serde(default, rename = "testPanic")]
    pub test_panic: bool,
}

/// Why a filter config is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError(pub String);

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ConfigError {}

/// Parses and checks the JSON config (the files are read later, by the loader).
pub fn parse(bytes: &[u8]) -> Result<Settings, ConfigError> {
    let settings: Settings = serde_json::from_slice(bytes)
        .map_err(|e| ConfigError(format!("filter_config is not valid meshauthz JSON: {e}")))?;
    check_workload(&settings.workload)?;
    if settings.policies.is_empty() {
        return Err(ConfigError(
            "`policies` is empty: give at least one policy file or directory".into(),
        ));
    }
    for p in settings.policies.iter().chain(settings.mesh.iter()) {
        if p.as_os_str().is_empty() || p.as_os_str() == "-" {
            return Err(ConfigError(format!(
                "`{}` is not a file or directory",
                p.display()
            )));
        }
    }
    Ok(settings)
}

fn check_workload(w: &str) -> Result<(), ConfigError> {
    match w.split_once('/') {
        Some((ns, name)) if !ns.is_empty() && !name.is_empty() && !name.contains('/') => Ok(()),
        _ => Err(ConfigError(format!(
            "`workload` must be `<namespace>/<name>`, got `{w}`"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_config() {
        let s = parse(
            br#"{"workload": "foo/httpbin", "policies": ["a.yaml", "dir"], "mesh": "mesh.yaml"}"#,
        )
        .unwrap();
        assert_eq!(s.workload, "foo/httpbin");
        assert_eq!(
            s.policies,
            vec![PathBuf::from("a.yaml"), PathBuf::from("dir")]
        );
        assert_eq!(s.mesh, Some(PathBuf::from("mesh.yaml")));
    }

    #[test]
    fn mesh_is_optional() {
        let s = parse(br#"{"workload": "foo/httpbin", "policies": ["p"]}"#).unwrap();
        assert_eq!(s.mesh, None);
    }

    #[test]
    fn rejects_bad_json() {
        let e = parse(b"{\"workload\": ").unwrap_err();
        assert!(e.0.contains("not valid meshauthz JSON"), "{e}");
        assert!(parse(b"").is_err());
        assert!(parse(b"[]").is_err());
    }

    #[test]
    fn rejects_unknown_fields() {
        let e = parse(br#"{"workload": "a/b", "policies": ["p"], "polices": []}"#).unwrap_err();
        assert!(e.0.contains("unknown field `polices`"), "{e}");
    }

    #[test]
    fn rejects_missing_fields() {
        let e = parse(br#"{"policies": ["p"]}"#).unwrap_err();
        assert!(e.0.contains("missing field `workload`"), "{e}");
        let e = parse(br#"{"workload": "a/b"}"#).unwrap_err();
        assert!(e.0.contains("missing field `policies`"), "{e}");
    }

    #[test]
    fn rejects_bad_workloads() {
        for w in ["", "httpbin", "/httpbin", "foo/", "a/b/c"] {
            let json = format!(r#"{{"workload": "{w}", "policies": ["p"]}}"#);
            let e = parse(json.as_bytes()).unwrap_err();
            assert!(e.0.contains("<namespace>/<name>"), "{w}: {e}");
        }
    }

    #[test]
    fn rejects_empty_policies_and_stdin() {
        assert!(parse(br#"{"workload": "a/b", "policies": []}"#)
            .unwrap_err()
            .0
            .contains("is empty"));
        assert!(parse(br#"{"workload": "a/b", "policies": ["-"]}"#).is_err());
        assert!(parse(br#"{"workload": "a/b", "policies": ["p"], "mesh": ""}"#).is_err());
    }

    #[test]
    fn test_panic_switch_only_with_the_feature() {
        let r = parse(br#"{"workload": "a/b", "policies": ["p"], "testPanic": true}"#);
        #[cfg(feature = "test-panic")]
        assert!(r.unwrap().test_panic);
        #[cfg(not(feature = "test-panic"))]
        assert!(r.unwrap_err().0.contains("unknown field `testPanic`"));
    }
}
