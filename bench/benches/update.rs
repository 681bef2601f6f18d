//! One-policy update at 10,000 policies through the Kubernetes path (`ClusterState`): what a
//! `kubectl apply` of one changed AuthorizationPolicy costs before the new snapshot serves.
//! The baseline in the same run is the cost of taking the object in (parse + validate), which
//! is all an incremental engine would have to add to the index. A rebuild compiles only the
//! changed object (compile cache) and rebuilds only the policy classes it belongs to (the
//! others are taken over from the previous snapshot), but still walks the whole estate:
//! fingerprints, workloads, entities, the vocabulary and the schema.

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "benchmark code")]

use authz_loader::cluster::{ClusterState, PolicyKind};
use criterion::{criterion_group, criterion_main, Criterion};
use serde_json::{json, Value};

fn cluster(policies: usize) -> (ClusterState, Vec<Value>) {
    let estate = meshauthz_bench::generate(policies, 7);
    let mut state = ClusterState::new(estate.mesh.clone());
    for (i, w) in estate.workloads.iter().enumerate() {
        let ip = format!("10.{}.{}.{}", (i >> 16) & 255, (i >> 8) & 255, i & 255);
        state.apply_pod(&json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"namespace": w.namespace, "name": w.name, "labels": w.labels},
            "spec": {"serviceAccountName": w.service_account},
            "status": {"phase": "Running", "podIP": ip},
        }));
    }
    let mut objects = Vec::new();
    for doc in serde_yaml::Deserializer::from_str(&estate.yaml) {
        let value: Value = serde::Deserialize::deserialize(doc).unwrap();
        if value.get("kind").and_then(Value::as_str) == Some("AuthorizationPolicy") {
            objects.push(value.clone());
        }
        let kind = match value.get("kind").and_then(Value::as_str) {
            Some("AuthorizationPolicy") => PolicyKind::AuthorizationPolicy,
            Some("RequestAuthentication") => PolicyKind::RequestAuthentication,
            _ => continue,
        };
        state.apply_policy(kind, "v1", value);
    }
    assert!(state.rejected().is_empty());
    (state, objects)
}

fn update(c: &mut Criterion) {
    let mut group = c.benchmark_group("update");
    group.sample_size(10);
    let (mut state, objects) = cluster(10_000);
    let mut changed = objects[objects.len() / 2].clone();
    let mut flip = false;
    let mut next = move || {
        flip = !flip;
        changed["metadata"]["labels"] = json!({"rev": if flip { "a" } else { "b" }});
        changed.clone()
    };
    group.bench_function("10k/apply", |b| {
        b.iter(|| state.apply_policy(PolicyKind::AuthorizationPolicy, "v1", next()))
    });
    // The previous snapshot is dropped after the new one is published (the swap), so dropping
    // the built snapshot is left out of the timing.
    group.bench_function("10k/rebuild", |b| {
        b.iter_with_large_drop(|| {
            state.apply_policy(PolicyKind::AuthorizationPolicy, "v1", next());
            state.build(2).unwrap()
        })
    });
    group.finish();
}

criterion_group!(benches, update);
criterion_main!(benches);
