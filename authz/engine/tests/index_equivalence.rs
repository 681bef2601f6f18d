//! The engine's indexes change no decision: for generated policies over the dimensions the
//! indexes split on (exact and prefix paths sharing first segments, port lists, HTTP-only
//! fields that give DENY rules a TCP form), `decide` must agree with Cedar evaluating every
//! compiled policy, scopes included, in one set (`Compiled::cedar_text`, the naive baseline).
//!
//! `PROPTEST_CASES=N` runs N cases instead of the default 256.

use authz_engine::{Protocol, RequestAttrs, Verdict};
use policy_compiler::{Inputs, MeshConfig};
use proptest::prelude::*;
use proptest::sample::{select, subsequence};
use proptest::test_runner::{Config, TestCaseError, TestRunner};

const PATHS: &[&str] = &[
    "/a/b", "/a/*", "/a/b/*", "/a/bc*", "/a*", "/x", "/x/*", "*/b", "/", "*",
];
const PORTS: &[&str] = &["80", "8080", "9090"];
const METHODS: &[&str] = &["GET", "POST"];

const REQ_PATHS: &[&str] = &[
    "/a/b", "/a/b/c", "/a/bc", "/a/bc/d", "/a", "/a/", "/ab", "/x", "/x/y", "/", "/q/b",
];
const REQ_PORTS: &[u16] = &[80, 8080, 9090, 7070];

#[derive(Debug, Clone)]
struct Operation {
    paths: Vec<&'static str>,
    not_paths: Vec<&'static str>,
    ports: Vec<&'static str>,
    methods: Vec<&'static str>,
}

#[derive(Debug, Clone)]
struct Policy {
    deny: bool,
    selector: Option<&'static str>,
    /// `None`: a rule without `to`.
    rules: Vec<Option<Vec<Operation>>>,
}

fn list(pool: &'static [&'static str], p: f64) -> impl Strategy<Value = Vec<&'static str>> {
    prop::option::weighted(p, subsequence(pool.to_vec(), 1..=2)).prop_map(Option::unwrap_or_default)
}

fn operation() -> impl Strategy<Value = Operation> {
    (
        list(PATHS, 0.7),
        list(PATHS, 0.1),
        list(PORTS, 0.4),
        list(METHODS, 0.3),
    )
        .prop_map(|(paths, not_paths, ports, methods)| Operation {
            paths,
            not_paths,
            ports,
            methods,
        })
}

fn policy() -> impl Strategy<Value = Policy> {
    (
        any::<bool>(),
        prop::option::of(select(vec!["a", "b"])),
        prop::collection::vec(
            prop::option::weighted(0.9, prop::collection::vec(operation(), 1..=2)),
            1..=2,
        ),
    )
        .prop_map(|(deny, selector, rules)| Policy {
            deny,
            selector,
            rules,
        })
}

fn yaml(policies: &[Policy]) -> String {
    let quoted = |v: &[&str]| {
        v.iter()
            .map(|s| format!("\"{s}\""))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let mut out = String::new();
    for (i, p) in policies.iter().enumerate() {
        out.push_str(&format!(
            "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {{name: p{i}, namespace: foo}}\nspec:\n  action: {}\n",
            if p.deny { "DENY" } else { "ALLOW" }
        ));
        if let Some(app) = p.selector {
            out.push_str(&format!("  selector: {{matchLabels: {{app: {app}}}}}\n"));
        }
        out.push_str("  rules:\n");
        for rule in &p.rules {
            match rule {
                None => out.push_str("  - from: [{source: {namespaces: [\"foo\"]}}]\n"),
                Some(ops) => {
                    out.push_str("  - to:\n");
                    for op in ops {
                        let mut fields = Vec::new();
                        for (name, values) in [
                            ("paths", &op.paths),
                            ("notPaths", &op.not_paths),
                            ("ports", &op.ports),
                            ("methods", &op.methods),
                        ] {
                            if !values.is_empty() {
                                fields.push(format!("{name}: [{}]", quoted(values)));
                            }
                        }
                        if fields.is_empty() {
                            fields.push("ports: [\"80\"]".to_string());
                        }
                        out.push_str(&format!("    - operation: {{{}}}\n", fields.join(", ")));
                    }
                }
            }
        }
        out.push_str("---\n");
    }
    out
}

fn request() -> impl Strategy<Value = RequestAttrs> {
    (
        select(vec!["foo/a", "foo/b"]),
        any::<bool>(),
        select(REQ_PORTS.to_vec()),
        select(REQ_PATHS.to_vec()),
        select(vec!["GET", "POST", "PUT"]),
        any::<bool>(),
    )
        .prop_map(|(workload, tcp, port, path, method, peer)| RequestAttrs {
            workload: workload.to_string(),
            protocol: if tcp { Protocol::Tcp } else { Protocol::Http },
            source_principal: peer.then(|| "spiffe://cluster.local/ns/foo/sa/sleep".to_string()),
            destination_port: port,
            method: method.to_string(),
            path: path.to_string(),
            host: "example.com".to_string(),
            ..RequestAttrs::default()
        })
}

fn check(policies: &[Policy], requests: &[RequestAttrs]) -> Result<(), TestCaseError> {
    let text = yaml(policies);
    let mut inputs = Inputs::default();
    let errors = inputs.load_str("generated.yaml", &text);
    prop_assert!(errors.is_empty(), "{errors:?}\n{text}");
    let workloads: Vec<policy_compiler::Workload> = ["a", "b"]
        .iter()
        .map(|app| policy_compiler::Workload {
            namespace: "foo".into(),
            name: app.to_string(),
            labels: [("app".to_string(), app.to_string())].into(),
            service_account: "default".into(),
            ips: Vec::new(),
            gateway: None,
            services: Vec::new(),
        })
        .collect();
    let compiled = policy_compiler::compile(&inputs, &MeshConfig::default(), &workloads)
        .map_err(|e| TestCaseError::fail(format!("{e:?}")))?;
    let naive: cedar_policy::PolicySet = compiled
        .cedar_text()
        .parse()
        .map_err(|e| TestCaseError::fail(format!("{e}")))?;
    let snapshot = authz_engine::Snapshot::build(compiled, 1)
        .map_err(|e| TestCaseError::fail(e.to_string()))?;
    let authorizer = cedar_policy::Authorizer::new();
    for req in requests {
        let engine = authz_engine::decide(&snapshot, req);
        let request = authz_engine::cedar_request(&snapshot, req)
            .ok_or_else(|| TestCaseError::fail("no Cedar request"))?;
        let all = authorizer.is_authorized(&request, &naive, snapshot.entities());
        prop_assert!(
            all.diagnostics().errors().next().is_none(),
            "{:?}",
            all.diagnostics().errors().collect::<Vec<_>>()
        );
        let naive_allows = all.decision() == cedar_policy::Decision::Allow;
        prop_assert_eq!(
            engine.verdict == Verdict::Allow,
            naive_allows,
            "{:?} {} port {} {} {}\nengine: {:?}\n{}",
            req.protocol,
            req.workload,
            req.destination_port,
            req.method,
            req.path,
            engine,
            text
        );
    }
    Ok(())
}

#[test]
fn indexes_change_no_decision() {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(256);
    let mut runner = TestRunner::new(Config {
        cases,
        ..Config::default()
    });
    let strategy = (
        prop::collection::vec(policy(), 1..=5),
        prop::collection::vec(request(), 24),
    );
    let result = runner.run(&strategy, |(policies, requests)| {
        check(&policies, &requests)
    });
    if let Err(e) = result {
        panic!("{e}");
    }
}
