//! Golden snapshots of the compiler's Cedar output: one per `tests/golden/*.yaml` (Istio builder
//! test names). Every snapshot is also validated against the generated schema. Review changes
//! with `cargo insta review`; CI fails on any difference.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test code"
)]

use policy_compiler::{compile, Inputs, MeshConfig, MeshFile};

#[test]
fn golden_cedar_output() {
    insta::glob!("golden/*.yaml", |path| {
        let text = std::fs::read_to_string(path).unwrap();
        // An optional `# mesh: {...}` first line sets mesh options for the case.
        let mesh = text
            .lines()
            .next()
            .and_then(|l| l.strip_prefix("# mesh: "))
            .map(|m| {
                serde_yaml::from_str::<MeshFile>(&format!("mesh: {m}"))
                    .unwrap()
                    .mesh
                    .unwrap()
            })
            .unwrap_or_else(MeshConfig::default);
        let mut inputs = Inputs::default();
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        let errors = inputs.load_str(&name, &text);
        assert!(errors.is_empty(), "{errors:?}");
        let compiled = compile(&inputs, &mesh, &[]).unwrap();
        assert!(compiled.validate_cedar().is_empty());
        let mut out = compiled.cedar_text();
        for w in &compiled.warnings {
            out.push_str(&format!("// {w}\n"));
        }
        insta::assert_snapshot!(out);
    });
}
