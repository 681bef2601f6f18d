//! Engine benchmarks (criterion): decision latency at 10 / 1,000 / 10,000 policies for our
//! engine and for the naive baseline (the same Cedar policies in one PolicySet, with the global
//! form of Istio's default rule, evaluated directly with `Authorizer::is_authorized`).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "benchmark code"
)]

use std::str::FromStr;

use criterion::{criterion_group, criterion_main, Criterion};
use policy_compiler::compile::Role;

/// Every enforced policy of the estate in one set, plus the global default permit.
fn naive_set(compiled: &policy_compiler::Compiled) -> cedar_policy::PolicySet {
    let mut text = String::new();
    for p in compiled.authorization.iter().flat_map(|a| &a.policies) {
        if matches!(p.role, Role::Allow | Role::Deny) {
            text.push_str(&p.text);
            text.push('\n');
        }
    }
    text.push_str(&compiled.default_allow_text());
    cedar_policy::PolicySet::from_str(&text).unwrap()
}

fn decide(c: &mut Criterion) {
    for n in [10usize, 1000, 10000] {
        let estate = meshauthz_bench::generate(n, 7);
        let compiled = meshauthz_bench::compile(&estate).unwrap();
        let naive = naive_set(&compiled);
        let snapshot = authz_engine::Snapshot::build(compiled, 1).unwrap();
        let mut g = c.benchmark_group(format!("decide/{n}"));
        for (name, req) in &estate.requests {
            g.bench_function(*name, |b| b.iter(|| authz_engine::decide(&snapshot, req)));
        }
        g.finish();
        let mut g = c.benchmark_group(format!("naive/{n}"));
        if n >= 10000 {
            g.sample_size(10);
        }
        let authorizer = cedar_policy::Authorizer::new();
        for (name, req) in estate.requests.iter().take(2) {
            let request = authz_engine::cedar_request(&snapshot, req).unwrap();
            // The baseline decides like the engine.
            let want = authz_engine::decide(&snapshot, req).verdict == authz_engine::Verdict::Allow;
            let got = authorizer
                .is_authorized(&request, &naive, snapshot.entities())
                .decision()
                == cedar_policy::Decision::Allow;
            assert_eq!(want, got, "{n} {name}");
            g.bench_function(*name, |b| {
                b.iter(|| {
                    let request = authz_engine::cedar_request(&snapshot, req).unwrap();
                    authorizer.is_authorized(&request, &naive, snapshot.entities())
                })
            });
        }
        g.finish();
    }
}

criterion_group!(benches, decide);
criterion_main!(benches);
