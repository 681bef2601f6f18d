//! Reading policy inputs from disk: files, directories (every `*.yaml`, `*.yml`, `*.json`,
//! recursively, in sorted order) and `-` for standard input; the `--mesh` file; and `jwksUri`
//! keys fetched over HTTP(S).
//!
//! State owned: none beyond what a call returns.

use std::collections::HashMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use authz_engine::jwt::KeySet;
use authz_engine::Snapshot;
use policy_compiler::{Compiled, Inputs, LoadError, Location, MeshConfig, MeshFile, Workload};

/// Expands `paths` into the files to read.
pub fn policy_files(paths: &[PathBuf]) -> Result<Vec<PathBuf>, LoadError> {
    let mut out = Vec::new();
    for p in paths {
        if p.as_os_str() == "-" {
            out.push(p.clone());
            continue;
        }
        let meta = std::fs::metadata(p).map_err(|e| {
            LoadError::new(
                Location::file(p.display().to_string()),
                format!("cannot read: {e}"),
            )
        })?;
        if meta.is_dir() {
            let mut found = Vec::new();
            walk(p, &mut found).map_err(|e| {
                LoadError::new(
                    Location::file(p.display().to_string()),
                    format!("cannot list directory: {e}"),
                )
            })?;
            found.sort();
            out.extend(found);
        } else {
            out.push(p.clone());
        }
    }
    Ok(out)
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            walk(&path, out)?;
        } else if path
            .extension()
            .and_then(|e| e.to_str())
            .is_some_and(|e| matches!(e, "yaml" | "yml" | "json"))
        {
            out.push(path);
        }
    }
    Ok(())
}

/// Loads every file into `inputs`; returns all errors.
pub fn load_policies(paths: &[PathBuf], inputs: &mut Inputs) -> Vec<LoadError> {
    let files = match policy_files(paths) {
        Ok(f) => f,
        Err(e) => return vec![e],
    };
    let mut errors = Vec::new();
    for f in files {
        let name = f.display().to_string();
        let bytes = if f.as_os_str() == "-" {
            let mut buf = Vec::new();
            match std::io::stdin().read_to_end(&mut buf) {
                Ok(_) => buf,
                Err(e) => {
                    errors.push(LoadError::new(
                        Location::file("<stdin>"),
                        format!("cannot read: {e}"),
                    ));
                    continue;
                }
            }
        } else {
            match read_limited(&f) {
                Ok(b) => b,
                Err(e) => {
                    errors.push(LoadError::new(Location::file(name), e));
                    continue;
                }
            }
        };
        let shown = if f.as_os_str() == "-" {
            "<stdin>".to_string()
        } else {
            name
        };
        errors.extend(inputs.load_bytes(&shown, &bytes));
    }
    errors
}

fn read_limited(path: &Path) -> Result<Vec<u8>, String> {
    let meta = std::fs::metadata(path).map_err(|e| format!("cannot read: {e}"))?;
    if meta.len() > policy_compiler::load::MAX_INPUT_BYTES as u64 {
        return Err(format!(
            "file is {} bytes, more than the {} bytes meshauthz reads",
            meta.len(),
            policy_compiler::load::MAX_INPUT_BYTES
        ));
    }
    std::fs::read(path).map_err(|e| format!("cannot read: {e}"))
}

/// Reads a `--mesh` file: the `mesh:` and `workloads:` sections of the test-file format.
pub fn load_mesh_file(path: &Path) -> Result<(MeshConfig, Vec<Workload>), LoadError> {
    let name = path.display().to_string();
    let bytes = read_limited(path).map_err(|e| LoadError::new(Location::file(&name), e))?;
    let text = String::from_utf8(bytes)
        .map_err(|_| LoadError::new(Location::file(&name), "the file is not valid UTF-8"))?;
    parse_mesh_file(&name, &text)
}

pub fn parse_mesh_file(name: &str, text: &str) -> Result<(MeshConfig, Vec<Workload>), LoadError> {
    let de = serde_yaml::Deserializer::from_str(text);
    let file: MeshFile = serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        LoadError::new(
            Location {
                line: inner.location().map(|l| l.line()),
                field: (path != ".").then_some(path),
                ..Location::file(name)
            },
            strip_location(&inner.to_string()),
        )
    })?;
    Ok((file.mesh.unwrap_or_default(), file.workloads))
}

/// serde_yaml's message without the location we report ourselves.
pub fn strip_location(message: &str) -> String {
    policy_compiler::error::clean_yaml_message(message)
}

/// Fetches one JWKS document (blocking, with a timeout). Used off the request path only.
pub fn fetch_jwks(uri: &str, timeout: Duration) -> Result<KeySet, String> {
    let agent = ureq::AgentBuilder::new()
        .timeout(timeout)
        .redirects(3)
        .build();
    let resp = agent
        .get(uri)
        .call()
        .map_err(|e| format!("fetching `{uri}`: {e}"))?;
    let mut body = String::new();
    resp.into_reader()
        .take(4 * 1024 * 1024)
        .read_to_string(&mut body)
        .map_err(|e| format!("reading `{uri}`: {e}"))?;
    policy_compiler::jwks::parse_jwks(&body).map_err(|e| format!("`{uri}`: {e}"))?;
    KeySet::parse(&body).map_err(|e| format!("`{uri}`: {e}"))
}

/// Fetches every `jwksUri` of the snapshot once (the CLI's short-lived use: at most 5 s each).
/// A failed fetch leaves the issuer without keys, so its tokens get 401, never a pass.
pub fn with_fetched_keys(snapshot: Snapshot, warn: &mut dyn FnMut(String)) -> Snapshot {
    let uris = snapshot.jwks_uris();
    if uris.is_empty() {
        return snapshot;
    }
    let mut keys = HashMap::new();
    for (uri, timeout) in uris {
        match fetch_jwks(&uri, timeout.min(Duration::from_secs(5))) {
            Ok(k) => {
                keys.insert(uri, Arc::new(k));
            }
            Err(e) => warn(format!("{e}; tokens of this issuer will be rejected (401)")),
        }
    }
    snapshot.with_remote_keys(keys)
}

/// Loads, validates and compiles: the common front half of every command.
pub fn compile_inputs(paths: &[PathBuf], mesh: Option<&Path>) -> Result<Compiled, Vec<LoadError>> {
    compile_inputs_with(paths, mesh, None)
}

/// [`compile_inputs`] through a compile cache (same result): a reload recompiles only the
/// policies whose resource changed.
pub fn compile_inputs_with(
    paths: &[PathBuf],
    mesh: Option<&Path>,
    cache: Option<&mut policy_compiler::compile::CompileCache>,
) -> Result<Compiled, Vec<LoadError>> {
    let (mesh, workloads) = match mesh {
        Some(p) => load_mesh_file(p).map_err(|e| vec![e])?,
        None => (MeshConfig::default(), Vec::new()),
    };
    let mut inputs = Inputs::default();
    let errors = load_policies(paths, &mut inputs);
    if !errors.is_empty() {
        return Err(errors);
    }
    match cache {
        None => policy_compiler::compile(&inputs, &mesh, &workloads),
        Some(cache) => policy_compiler::compile::compile_cached(
            &policy_compiler::compile::InputsRef::of(&inputs),
            &mesh,
            &std::sync::Arc::new(workloads),
            cache,
        ),
    }
}
