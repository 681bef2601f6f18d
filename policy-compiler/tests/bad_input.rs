//! Bad input never panics and always gets an error that names where it is.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test code"
)]

use policy_compiler::{compile, Inputs, MeshConfig};
use proptest::prelude::*;

fn load(text: &str) -> (Inputs, Vec<policy_compiler::LoadError>) {
    let mut inputs = Inputs::default();
    let errors = inputs.load_str("in.yaml", text);
    (inputs, errors)
}

const VALID: &str = r#"apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: p, namespace: foo}
spec:
  selector: {matchLabels: {app: httpbin}}
  action: DENY
  rules:
  - from: [{source: {principals: ["cluster.local/ns/foo/sa/a"], ipBlocks: ["10.0.0.0/8"]}}]
    to: [{operation: {methods: ["GET"], paths: ["/a/{*}"], ports: ["8080"]}}]
    when: [{key: "request.headers[x-a]", values: ["b"]}]
"#;

#[test]
fn table_of_bad_documents() {
    let cases: &[(&str, &str)] = &[
        ("kind: AuthorizationPolicy\napiVersion: security.istio.io/v1\nmetadata: {name: a}\nspec: {action: PERMIT}\n", "spec.action"),
        ("kind: AuthorizationPolicy\napiVersion: security.istio.io/v1\nmetadata: {name: a}\nspec: {rules: {}}\n", "spec.rules"),
        ("kind: AuthorizationPolicy\napiVersion: security.istio.io/v1\nmetadata: {name: a}\nspec: {rules: [{to: [{operation: {ports: [\"x\"]}}]}]}\n", "spec.rules[0].to[0].operation.ports[0]"),
        ("kind: AuthorizationPolicy\napiVersion: security.istio.io/v1\nmetadata: {name: a}\nspec: {rules: [{from: []}]}\n", "spec.rules[0].from"),
        ("kind: AuthorizationPolicy\napiVersion: security.istio.io/v1\nmetadata: {name: a}\nspec: {rules: [{from: [{source: {}}]}]}\n", "spec.rules[0].from[0].source"),
        ("kind: AuthorizationPolicy\napiVersion: security.istio.io/v1\nmetadata: {name: a}\nspec: {rules: [null]}\n", "spec.rules[0]"),
        ("kind: AuthorizationPolicy\napiVersion: security.istio.io/v1\nmetadata: {name: a}\nspec: {rules: [{when: [{key: \"request.auth.claims[]\", values: [a]}]}]}\n", "spec.rules[0].when[0].key"),
        ("kind: AuthorizationPolicy\napiVersion: security.istio.io/v1\nmetadata: {name: a}\nspec: {rules: [{when: [{key: source.ip, values: [\"999.1.1.1\"]}]}]}\n", "spec.rules[0].when[0].values[0]"),
        ("kind: AuthorizationPolicy\napiVersion: security.istio.io/v1\nmetadata: {name: a}\nspec: {selector: {matchLabels: {app: \"*\"}}}\n", "spec.selector.matchLabels[app]"),
        ("kind: AuthorizationPolicy\napiVersion: security.istio.io/v1\nmetadata: {name: a}\nspec: {action: CUSTOM, rules: [{}]}\n", "spec.provider.name"),
        ("kind: AuthorizationPolicy\napiVersion: security.istio.io/v1\nmetadata: {namespace: a}\nspec: {}\n", "metadata.name"),
        ("kind: AuthorizationPolicy\napiVersion: security.istio.io/v1alpha1\nmetadata: {name: a}\nspec: {}\n", "apiVersion"),
        ("kind: Sidecar\napiVersion: security.istio.io/v1\nmetadata: {name: a}\n", "kind"),
        ("kind: PeerAuthentication\napiVersion: security.istio.io/v1\nmetadata: {name: a}\nspec: {mtls: {mode: STRICTER}}\n", "spec.mtls.mode"),
        ("kind: PeerAuthentication\napiVersion: security.istio.io/v1\nmetadata: {name: a}\nspec: {selector: {matchLabels: {app: x}}, portLevelMtls: {\"0\": {mode: STRICT}}}\n", "spec.portLevelMtls[0]"),
        ("kind: RequestAuthentication\napiVersion: security.istio.io/v1\nmetadata: {name: a}\nspec: {jwtRules: [{issuer: x, jwks: \"not json\"}]}\n", "spec.jwtRules[0].jwks"),
        ("kind: RequestAuthentication\napiVersion: security.istio.io/v1\nmetadata: {name: a}\nspec: {jwtRules: [{issuer: x, jwksUri: \"ftp://x\"}]}\n", "spec.jwtRules[0].jwksUri"),
        ("kind: RequestAuthentication\napiVersion: security.istio.io/v1\nmetadata: {name: a}\nspec: {jwtRules: [{jwks: \"{}\"}]}\n", "spec.jwtRules[0].issuer"),
        ("kind: RequestAuthentication\napiVersion: security.istio.io/v1\nmetadata: {name: a}\nspec: {jwtRules: [{issuer: x, fromHeaders: [{name: \"bad header\"}]}]}\n", "spec.jwtRules[0].fromHeaders[0].name"),
        ("kind: RequestAuthentication\napiVersion: security.istio.io/v1\nmetadata: {name: a}\nspec: {jwtRules: [{issuer: x, timeout: forever}]}\n", "spec.jwtRules[0].timeout"),
    ];
    for (text, field) in cases {
        let (_, errors) = load(text);
        assert!(
            errors
                .iter()
                .any(|e| e.location.field.as_deref() == Some(*field)),
            "expected an error at `{field}` for:\n{text}\ngot: {errors:#?}"
        );
        for e in &errors {
            assert_eq!(e.location.file, "in.yaml");
            assert!(
                e.location.document.is_some() || e.location.line.is_some(),
                "{e}"
            );
        }
    }
}

#[test]
fn one_bad_document_does_not_hide_the_others() {
    let text = format!("{VALID}---\nkind: AuthorizationPolicy\napiVersion: security.istio.io/v1\nmetadata: {{name: b}}\nspec: {{action: DENY}}\n---\n{}", VALID.replace("name: p", "name: q"));
    let (inputs, errors) = load(&text);
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert_eq!(errors[0].location.document, Some(2));
    assert_eq!(inputs.authorization.len(), 2);
}

#[test]
fn duplicates_and_other_kinds() {
    let (_, errors) = load(&format!("{VALID}---\n{VALID}"));
    assert!(
        errors.iter().any(|e| e.message.contains("defined twice")),
        "{errors:?}"
    );
    let (inputs, errors) = load("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x}\n---\napiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: y}\n");
    assert!(errors.is_empty());
    assert_eq!(inputs.skipped.len(), 2);
}

#[test]
fn huge_and_deep_inputs_are_refused_cleanly() {
    let big = "a".repeat(policy_compiler::load::MAX_INPUT_BYTES + 1);
    let (_, errors) = load(&big);
    assert!(errors[0].message.contains("more than"));
    let deep = format!("{}1{}", "[".repeat(10_000), "]".repeat(10_000));
    let (_, errors) = load(&deep);
    assert!(!errors.is_empty());
    // Alias expansion bombs are stopped by the YAML parser.
    let mut bomb = String::from("a: &a [x, x, x, x, x, x, x, x, x]\n");
    for i in 0..9 {
        bomb.push_str(&format!(
            "b{i}: &b{i} [*{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}]\n",
            p = if i == 0 {
                "a".to_string()
            } else {
                format!("b{}", i - 1)
            }
        ));
    }
    let (_, errors) = load(&bomb);
    assert!(!errors.is_empty());
}

#[test]
fn many_policies_compile() {
    let mut text = String::new();
    for i in 0..500 {
        text.push_str(&VALID.replace("name: p", &format!("name: p{i}")));
        text.push_str("---\n");
    }
    let (inputs, errors) = load(&text);
    assert!(errors.is_empty());
    let compiled = compile(&inputs, &MeshConfig::default(), &[]).unwrap();
    assert_eq!(compiled.authorization.len(), 500);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, .. ProptestConfig::default() })]

    /// Arbitrary text never panics the loader.
    #[test]
    fn arbitrary_text_never_panics(text in ".{0,400}") {
        let _ = load(&text);
    }

    /// A valid policy with one line damaged or one byte changed never panics, and anything that
    /// loads also compiles to Cedar that validates against the schema.
    #[test]
    fn mutated_policies_load_or_fail_cleanly(line in 0usize..12, replacement in "[ -~]{0,30}", pos in 0usize..600, byte in any::<u8>()) {
        let mut lines: Vec<String> = VALID.lines().map(str::to_string).collect();
        if line < lines.len() {
            lines[line] = replacement;
        }
        let mut text = lines.join("\n").into_bytes();
        if pos < text.len() {
            text[pos] = byte;
        }
        let mut inputs = Inputs::default();
        let errors = inputs.load_bytes("in.yaml", &text);
        if errors.is_empty() {
            let compiled = compile(&inputs, &MeshConfig::default(), &[]);
            let compiled = compiled.map_err(|e| format!("{e:?}")).unwrap();
            prop_assert!(compiled.validate_cedar().is_empty());
        }
    }
}
