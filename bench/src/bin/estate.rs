//! The generated estate, for `bench/run`.
//!
//! `estate N`: one-shot measurements criterion does not take: load + compile time, snapshot
//! build (indexing) time, policy classes and resident memory. Prints one JSON object.
//!
//! `estate N --write DIR`: the estate as files for the service benchmarks, all for the
//! benchmarked workload `ns-0/svc-0`:
//! - `policies.yaml`: every AuthorizationPolicy and RequestAuthentication;
//! - `mesh.yaml`: the mesh settings and every workload (the `--mesh` format);
//! - `rbac.json`: Envoy RBAC filters equivalent to the policies that select the workload
//!   (see `meshauthz_bench::rbac`), with rule counts;
//! - `http-mix.json`: requests a plaintext client (no identity, no JWT) sends through Envoy:
//!   `allow` (each checked to be allowed by the engine; the early, middle and last rule that can
//!   allow such a request) and `deny` (checked to be denied).

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{anyhow, bail, Context, Result};
use authz_engine::{RequestAttrs, Snapshot, Verdict};

const WORKLOAD_NAMESPACE: &str = "ns-0";
const WORKLOAD_APP: &str = "svc-0";

/// Counts allocations, so the snapshot's live heap can be told apart from resident memory (which
/// also holds what the load and compile freed but glibc did not return to the system).
#[global_allocator]
static GLOBAL: &stats_alloc::StatsAlloc<std::alloc::System> = &stats_alloc::INSTRUMENTED_SYSTEM;

fn live_heap_bytes() -> i64 {
    let s = GLOBAL.stats();
    s.bytes_allocated as i64 - s.bytes_deallocated as i64
}

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

fn measure(n: usize) -> Result<()> {
    let estate = meshauthz_bench::generate(n, 7);
    let before = rss_kib();
    let heap_before = live_heap_bytes();
    let t = Instant::now();
    let mut inputs = policy_compiler::Inputs::default();
    if let Some(e) = inputs.load_str("estate.yaml", &estate.yaml).first() {
        bail!("estate does not load: {e}");
    }
    let load = t.elapsed();
    let t = Instant::now();
    // As the enforcing hosts compile (`serve`, the native filter): for decisions only, without
    // the printed texts and rule explanations of `meshauthz compile` and `check`.
    let mut cache = policy_compiler::compile::CompileCache::for_decisions();
    let compiled = policy_compiler::compile::compile_cached(
        &policy_compiler::compile::InputsRef::of(&inputs),
        &estate.mesh,
        &std::sync::Arc::new(estate.workloads.clone()),
        &mut cache,
    )
    .map_err(|e| anyhow!("estate does not compile: {:?}", e.first()))?;
    let compile = t.elapsed();
    drop(inputs);
    let t = Instant::now();
    let snapshot = Snapshot::build(compiled, 1).map_err(|e| anyhow!("snapshot: {e:?}"))?;
    let build = t.elapsed();
    // Counted below with the snapshot: the compile cache (its entries and the syntax trees the
    // snapshot's policies share), which a host keeps for the next change.
    let after = rss_kib();
    let heap = live_heap_bytes() - heap_before;
    println!(
        "{}",
        serde_json::json!({
            "policies": n,
            "load_ms": load.as_secs_f64() * 1e3,
            "compile_ms": compile.as_secs_f64() * 1e3,
            "snapshot_build_ms": build.as_secs_f64() * 1e3,
            "classes": snapshot.class_count(),
            "rss_mib": (after.saturating_sub(before)) as f64 / 1024.0,
            "heap_mib": heap as f64 / (1024.0 * 1024.0),
        })
    );
    drop((snapshot, cache));
    Ok(())
}

fn http_request(name: &str, r: &RequestAttrs) -> serde_json::Value {
    serde_json::json!({"name": name, "method": r.method, "path": r.path, "host": r.host})
}

fn write(n: usize, dir: PathBuf) -> Result<()> {
    let estate = meshauthz_bench::generate(n, 7);
    std::fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
    std::fs::write(dir.join("policies.yaml"), &estate.yaml)?;
    let mesh = policy_compiler::MeshFile {
        mesh: Some(estate.mesh.clone()),
        workloads: estate.workloads.clone(),
    };
    std::fs::write(dir.join("mesh.yaml"), serde_yaml::to_string(&mesh)?)?;

    let workload = estate
        .workloads
        .iter()
        .find(|w| w.namespace == WORKLOAD_NAMESPACE && w.name == WORKLOAD_APP)
        .ok_or_else(|| anyhow!("no workload {WORKLOAD_NAMESPACE}/{WORKLOAD_APP}"))?;
    let rbac = meshauthz_bench::rbac::filters(
        &estate.yaml,
        &estate.mesh.root_namespace,
        &workload.namespace,
        &workload.labels,
    )?;
    std::fs::write(
        dir.join("rbac.json"),
        serde_json::to_string_pretty(&serde_json::json!({
            "workload": workload.key(),
            "deny": rbac.deny,
            "allow": rbac.allow,
            "deny_rules": rbac.deny_rules,
            "allow_rules": rbac.allow_rules,
            "audit_skipped": rbac.audit_skipped,
        }))?,
    )?;

    // The plaintext mix, checked against the engine.
    let snapshot = Snapshot::build(
        meshauthz_bench::compile(&estate).map_err(|e| anyhow!("estate: {e}"))?,
        1,
    )
    .map_err(|e| anyhow!("snapshot: {e:?}"))?;
    let candidates = meshauthz_bench::anonymous_allowed(&estate);
    if candidates.is_empty() {
        bail!("no rule of {WORKLOAD_NAMESPACE} allows a request without identity");
    }
    let picks = [0, candidates.len() / 2, candidates.len() - 1];
    let mut allow = Vec::new();
    for (label, at) in ["early", "middle", "late"].iter().zip(picks) {
        let (policy, req) = &candidates[at];
        let d = authz_engine::decide(&snapshot, req);
        if d.verdict != Verdict::Allow {
            bail!("{label} request ({policy}) is not allowed: {d:?}");
        }
        allow.push(http_request(&format!("{label} ({policy})"), req));
    }
    let miss = RequestAttrs {
        path: "/nothing/here".into(),
        ..candidates[0].1.clone()
    };
    let wrong_method = RequestAttrs {
        method: "POST".into(),
        ..candidates[0].1.clone()
    };
    let mut deny = Vec::new();
    for (label, req) in [("miss", &miss), ("wrong method", &wrong_method)] {
        let d = authz_engine::decide(&snapshot, req);
        if d.verdict == Verdict::Allow {
            bail!("{label} request is allowed: {d:?}");
        }
        deny.push(http_request(label, req));
    }
    std::fs::write(
        dir.join("http-mix.json"),
        serde_json::to_string_pretty(&serde_json::json!({
            "workload": workload.key(),
            "anonymous_allow_rules": candidates.len(),
            "allow": allow,
            "deny": deny,
        }))?,
    )?;
    println!(
        "{}",
        serde_json::json!({
            "policies": n,
            "dir": dir,
            "workload": workload.key(),
            "rbac_allow_rules": rbac.allow_rules,
            "rbac_deny_rules": rbac.deny_rules,
        })
    );
    Ok(())
}

fn main() -> Result<()> {
    let mut args = std::env::args().skip(1);
    let n: usize = match args.next() {
        Some(a) => a.parse().with_context(|| format!("policy count {a}"))?,
        None => 10_000,
    };
    match (args.next().as_deref(), args.next()) {
        (None, _) => measure(n),
        (Some("--write"), Some(dir)) => write(n, PathBuf::from(dir)),
        _ => bail!("usage: estate N [--write DIR]"),
    }
}
