//! One-policy update at 10,000 policies through the Kubernetes path (`ClusterState`): what a
//! `kubectl apply` of one changed AuthorizationPolicy costs before the new snapshot serves.
//! The baseline in the same run is the cost of taking the object in (parse + validate), which
//! is all an incremental engine would have to add to the index. A rebuild compiles only the
//! changed object (compile cache) and rebuilds only the policy classes it belongs to (the
//! others are taken over from the previous snapshot; so are the workload list, the workload
//! tables and the Cedar entities while the pods are unchanged), but still visits every compiled
//! policy (compile-cache lookups, order) and every workload (its policy class).

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
    // A change of what the policy enforces (not of metadata only, which the compile cache
    // would see through): a rule is added, then taken away again, on every other apply.
    let original = objects[objects.len() / 2].clone();
    let mut changed = original.clone();
    let extra_rule = json!({"to": [{"operation": {"paths": ["/meshauthz-bench/changed"]}}]});
    changed["spec"]["rules"]
        .as_array_mut()
        .expect("generated policies have rules")
        .push(extra_rule);
    let mut flip = false;
    let mut next = move || {
        flip = !flip;
        if flip {
            changed.clone()
        } else {
            original.clone()
        }
    };
    group.bench_function("10k/apply", |b| {
        b.iter(|| state.apply_policy(PolicyKind::AuthorizationPolicy, "v1", next()))
    });
    // As in `serve --kubernetes`: the built snapshot is published, and the one it replaces is
    // dropped by the swap, after the new one serves. `published` plays the publisher, so that
    // dropping the replaced snapshot's tables is left out of the timing here too (the
    // `ClusterState` keeps only another handle on the snapshot it builds over).
    let mut published = state.build(1).unwrap().0;
    group.bench_function("10k/rebuild", |b| {
        b.iter_with_large_drop(|| {
            state.apply_policy(PolicyKind::AuthorizationPolicy, "v1", next());
            let (built, _, _) = state.build(2).unwrap();
            std::mem::replace(&mut published, built)
        })
    });
    group.finish();
}

/// The same change through policy files (`meshauthz serve --policies`, the native filter in
/// watch mode): every file is read again, then compiled through the watcher's compile cache and
/// indexed over the previous snapshot. The baseline in the same run is the first load (nothing
/// cached).
fn files(c: &mut Criterion) {
    let mut group = c.benchmark_group("update");
    group.sample_size(10);
    let estate = meshauthz_bench::generate(10_000, 7);
    let dir = std::env::temp_dir().join(format!("meshauthz-bench-files-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let policies = dir.join("policies.yaml");
    let mesh = dir.join("mesh.yaml");
    let mesh_file = policy_compiler::MeshFile {
        mesh: Some(estate.mesh.clone()),
        workloads: estate.workloads.clone(),
    };
    std::fs::write(&mesh, serde_yaml::to_string(&mesh_file).unwrap()).unwrap();
    std::fs::write(&policies, &estate.yaml).unwrap();
    let paths = vec![policies.clone()];

    group.bench_function("10k/files-cold", |b| {
        b.iter_with_large_drop(|| {
            let compiled = authz_loader::compile_inputs(&paths, Some(&mesh)).unwrap();
            authz_engine::Snapshot::build(compiled, 1).unwrap()
        })
    });

    // One document changes in place (same length, so no other document moves): a claim value
    // of a rule in the middle of the file.
    let at = estate.yaml[estate.yaml.len() / 2..]
        .find("values: [\"team-")
        .map(|i| i + estate.yaml.len() / 2 + "values: [\"team-".len())
        .unwrap();
    let mut text = estate.yaml.clone().into_bytes();
    let mut cache = policy_compiler::compile::CompileCache::default();
    let compiled =
        authz_loader::compile_inputs_with(&paths, Some(&mesh), Some(&mut cache)).unwrap();
    let mut previous = authz_engine::Snapshot::build(compiled, 1).unwrap();
    group.bench_function("10k/files-reload", |b| {
        b.iter_with_large_drop(|| {
            text[at] = if text[at] == b'x' { b'y' } else { b'x' };
            std::fs::write(&policies, &text).unwrap();
            let compiled =
                authz_loader::compile_inputs_with(&paths, Some(&mesh), Some(&mut cache)).unwrap();
            let next = authz_engine::Snapshot::build_reusing(compiled, 2, Some(&previous)).unwrap();
            // The old snapshot is dropped after the swap (not timed, as in `update`).
            std::mem::replace(&mut previous, next)
        })
    });
    group.finish();
    let _ = std::fs::remove_dir_all(&dir);
}

criterion_group!(benches, update, files);
criterion_main!(benches);
