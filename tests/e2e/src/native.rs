//! The native filter, `libmeshauthz_filter.so` (the `proxy-filter` crate): built once per test
//! process with `cargo build -p proxy-filter` in this test build's profile and target directory
//! (a no-op when fresh), so the suite never loads a stale module. The path comes from cargo's
//! own artifact report, not from a guess.
//!
//! This is the normal build, not the one `cargo test -p proxy-filter` makes for its own tests
//! (with the `test-panic` switch, in `target/<profile>/deps/`): a module that knows the
//! `testPanic` config field is refused.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use anyhow::{anyhow, bail, Context, Result};
use serde_json::Value;

/// The module's library name (`dynamic_module_config.name`).
pub const MODULE_NAME: &str = "meshauthz_filter";

/// The freshly built `libmeshauthz_filter.so`.
pub fn module() -> Result<PathBuf> {
    static MODULE: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    MODULE
        .get_or_init(|| build().map_err(|e| format!("{e:#}")))
        .clone()
        .map_err(|e| anyhow!(e))
}

/// The directory of [`module`], for `ENVOY_DYNAMIC_MODULES_SEARCH_PATH`.
pub fn module_dir() -> Result<PathBuf> {
    let so = module()?;
    so.parent()
        .map(Path::to_path_buf)
        .ok_or_else(|| anyhow!("{} has no directory", so.display()))
}

fn build() -> Result<PathBuf> {
    let (mut cmd, _) =
        crate::meshauthz::cargo_build(&["-p", "proxy-filter", "--lib", "--message-format=json"]);
    let out = cmd
        .output()
        .context("running cargo build -p proxy-filter")?;
    if !out.status.success() {
        bail!(
            "`cargo build -p proxy-filter` failed ({}):\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout)
                .lines()
                .filter_map(|l| serde_json::from_str::<Value>(l).ok())
                .filter_map(|m| m["message"]["rendered"].as_str().map(str::to_string))
                .collect::<String>(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let so = cdylib_artifact(&String::from_utf8_lossy(&out.stdout))
        .ok_or_else(|| anyhow!("cargo build -p proxy-filter reported no {MODULE_NAME} cdylib"))?;
    let bytes = std::fs::read(&so).with_context(|| format!("reading {}", so.display()))?;
    if bytes.windows(b"testPanic".len()).any(|w| w == b"testPanic") {
        bail!(
            "{} is a test build (it accepts `testPanic`): the e2e suite tests the normal build",
            so.display()
        );
    }
    Ok(so)
}

/// The `.so` of the `meshauthz_filter` cdylib in cargo's JSON messages.
fn cdylib_artifact(messages: &str) -> Option<PathBuf> {
    let suffix = std::env::consts::DLL_SUFFIX;
    messages
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|m| m["reason"] == "compiler-artifact" && m["target"]["name"] == MODULE_NAME)
        .flat_map(|m| {
            m["filenames"]
                .as_array()
                .cloned()
                .unwrap_or_default()
                .into_iter()
        })
        .filter_map(|f| f.as_str().map(PathBuf::from))
        .find(|p| p.to_string_lossy().ends_with(suffix))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[cfg(target_os = "linux")]
    fn finds_the_cdylib_in_cargo_messages() {
        let msgs = r#"{"reason":"compiler-artifact","target":{"name":"authz_engine"},"filenames":["/t/debug/libauthz_engine.rlib"]}
{"reason":"compiler-artifact","target":{"name":"meshauthz_filter","kind":["cdylib","rlib"]},"filenames":["/t/debug/libmeshauthz_filter.so","/t/debug/libmeshauthz_filter.rlib"],"fresh":true}
{"reason":"build-finished","success":true}"#;
        assert_eq!(
            cdylib_artifact(msgs),
            Some(PathBuf::from("/t/debug/libmeshauthz_filter.so"))
        );
        assert_eq!(cdylib_artifact("{\"reason\":\"build-finished\"}"), None);
    }
}
