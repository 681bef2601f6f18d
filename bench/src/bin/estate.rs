//! One-shot measurements of a generated estate that criterion does not take: load + compile
//! time, snapshot build (indexing) time, policy classes and resident memory, for 10 / 1,000 /
//! 10,000 policies. Prints one JSON object per size. Used by `bench/run`.

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "benchmark tool")]

use std::time::Instant;

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

fn main() {
    let n: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(10_000);
    let estate = meshauthz_bench::generate(n, 7);
    let before = rss_kib();
    let t = Instant::now();
    let mut inputs = policy_compiler::Inputs::default();
    assert!(inputs.load_str("estate.yaml", &estate.yaml).is_empty());
    let load = t.elapsed();
    let t = Instant::now();
    let compiled = policy_compiler::compile(&inputs, &estate.mesh, &estate.workloads).unwrap();
    let compile = t.elapsed();
    drop(inputs);
    let t = Instant::now();
    let snapshot = authz_engine::Snapshot::build(compiled, 1).unwrap();
    let build = t.elapsed();
    let after = rss_kib();
    println!(
        "{}",
        serde_json::json!({
            "policies": n,
            "load_ms": load.as_secs_f64() * 1e3,
            "compile_ms": compile.as_secs_f64() * 1e3,
            "snapshot_build_ms": build.as_secs_f64() * 1e3,
            "classes": snapshot.class_count(),
            "rss_mib": (after.saturating_sub(before)) as f64 / 1024.0,
        })
    );
}
