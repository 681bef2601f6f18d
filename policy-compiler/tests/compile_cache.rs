//! `compile_cached` must give what `compile` gives, whatever the cache held before: the
//! Kubernetes source compiles through it after every change.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test code"
)]

use policy_compiler::compile::{compile_cached, CompileCache, InputsRef};
use policy_compiler::{compile, Compiled, Inputs, MeshConfig};

fn golden() -> Vec<(String, Inputs)> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden");
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    files
        .into_iter()
        .map(|path| {
            let name = path.file_name().unwrap().to_string_lossy().to_string();
            let mut inputs = Inputs::default();
            let errors = inputs.load_str(&name, &std::fs::read_to_string(&path).unwrap());
            assert!(errors.is_empty(), "{name}: {errors:?}");
            (name, inputs)
        })
        .collect()
}

/// `inputs` compiled through `cache`, without workloads.
fn compiled_with(inputs: &Inputs, mesh: &MeshConfig, cache: &mut CompileCache) -> Compiled {
    compile_cached(&InputsRef::of(inputs), mesh, &Default::default(), cache).unwrap()
}

/// Everything of a compile that the engine and `meshauthz compile` read.
fn observable(c: &Compiled) -> (String, String, String, usize, usize) {
    (
        c.cedar_text(),
        c.schema_text.clone(),
        c.default_allow_text(),
        c.peer.len(),
        c.request.len(),
    )
}

#[test]
fn cached_compiles_equal_fresh_ones_in_any_order() {
    let cases = golden();
    assert!(cases.len() > 10);
    let mesh = MeshConfig::default();
    let mut cache = CompileCache::default();
    // Forwards, backwards, and each twice: hits, misses, vocabularies growing and shrinking.
    let order: Vec<usize> = (0..cases.len())
        .chain((0..cases.len()).rev())
        .flat_map(|i| [i, i])
        .collect();
    for i in order {
        let (name, inputs) = &cases[i];
        let fresh = compile(inputs, &mesh, &[]).unwrap();
        let cached = compiled_with(inputs, &mesh, &mut cache);
        assert_eq!(observable(&cached), observable(&fresh), "{name}");
    }
}

/// Compiled for decisions only, a policy set is the same policies (ids, roles, conditions
/// as Cedar evaluates them, reach, reads) without the printed texts and rule explanations.
#[test]
fn decisions_only_compiles_keep_what_decisions_read() {
    let mesh = MeshConfig::default();
    let mut cache = CompileCache::for_decisions();
    for (name, inputs) in golden() {
        let full = compile(&inputs, &mesh, &[]).unwrap();
        let lean = compiled_with(&inputs, &mesh, &mut cache);
        assert_eq!(lean.schema_text, full.schema_text, "{name}");
        assert_eq!(lean.authorization.len(), full.authorization.len(), "{name}");
        for (l, f) in lean.authorization.iter().zip(&full.authorization) {
            assert!(l.rules.is_empty(), "{name}");
            assert_eq!(l.policies.len(), f.policies.len(), "{name}");
            for (lp, fp) in l.policies.iter().zip(&f.policies) {
                assert_eq!(lp.text, None, "{name}");
                assert!(fp.text.is_some(), "{name}");
                assert_eq!((&lp.id, lp.role, lp.rule), (&fp.id, fp.role, fp.rule));
                assert_eq!(lp.policy.to_string(), fp.policy.to_string(), "{name}");
                assert_eq!(lp.reach, fp.reach, "{name}");
                assert_eq!(lp.reads, fp.reads, "{name}");
            }
        }
    }
}

#[test]
fn one_changed_policy_and_a_changed_mesh_are_recompiled() {
    let all: Vec<(String, Inputs)> = golden();
    let mut inputs = Inputs::default();
    for (_, i) in &all {
        for ap in &i.authorization {
            // Keep one of each name (files reuse names).
            if !inputs.authorization.iter().any(|a| a.key() == ap.key()) {
                inputs.authorization.push(ap.clone());
            }
        }
    }
    let mut cache = CompileCache::default();
    let mesh = MeshConfig::default();
    compiled_with(&inputs, &mesh, &mut cache);

    // One rule's path changes.
    let mut changed = inputs.clone();
    let ap = changed
        .authorization
        .iter_mut()
        .find(|a| a.spec.rules.as_ref().is_some_and(|r| !r.is_empty()))
        .unwrap();
    ap.spec.rules.as_mut().unwrap().truncate(0);
    let fresh = compile(&changed, &mesh, &[]).unwrap();
    let cached = compiled_with(&changed, &mesh, &mut cache);
    assert_eq!(observable(&cached), observable(&fresh));

    // An annotation (dry-run) changes the policy; a new resourceVersion does not, and still
    // gives the same result.
    let dry = changed
        .authorization
        .iter_mut()
        .find(|a| a.spec.rules.as_ref().is_some_and(|r| !r.is_empty()))
        .unwrap();
    dry.meta
        .annotations
        .insert("istio.io/dry-run".into(), "true".into());
    dry.meta.resource_version = Some("42".into());
    let fresh = compile(&changed, &mesh, &[]).unwrap();
    let cached = compiled_with(&changed, &mesh, &mut cache);
    assert!(fresh.cedar_text().contains("dry-run"));
    assert_eq!(observable(&cached), observable(&fresh));

    // The mesh's root namespace changes what every policy's scope means.
    let other = MeshConfig {
        root_namespace: "foo".into(),
        ..MeshConfig::default()
    };
    let fresh = compile(&changed, &other, &[]).unwrap();
    let cached = compiled_with(&changed, &other, &mut cache);
    assert_eq!(observable(&cached), observable(&fresh));
}
