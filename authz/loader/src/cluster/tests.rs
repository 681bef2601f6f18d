#![allow(clippy::unwrap_used, clippy::expect_used, reason = "test code")]

use super::*;
use authz_engine::{decide, RequestAttrs, Verdict};

fn object(kind: PolicyKind, ns: &str, name: &str, spec: Value) -> Value {
    json!({
        "apiVersion": "security.istio.io/v1",
        "kind": kind.as_str(),
        "metadata": {"namespace": ns, "name": name, "resourceVersion": "7"},
        "spec": spec,
    })
}

fn ap(ns: &str, name: &str, spec: Value) -> Value {
    object(PolicyKind::AuthorizationPolicy, ns, name, spec)
}

fn pod(ns: &str, name: &str, app: &str, ip: &str) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"namespace": ns, "name": name, "labels": {"app": app}},
        "spec": {"serviceAccountName": app},
        "status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}]},
    })
}

/// `GET path` to `ns/name`, from `spiffe://cluster.local/ns/<from>/sa/<from>` over mTLS (or
/// plaintext when `from` is empty).
fn verdict(state: &ClusterState, workload: &str, path: &str, from: &str) -> Verdict {
    let (snapshot, _, _) = state.build(1).unwrap();
    let req = RequestAttrs {
        workload: workload.into(),
        method: "GET".into(),
        path: path.into(),
        host: "svc".into(),
        source_principal: (!from.is_empty())
            .then(|| format!("spiffe://cluster.local/ns/{from}/sa/{from}")),
        ..Default::default()
    };
    decide(&snapshot, &req).verdict
}

fn allow_get(paths: &[&str]) -> Value {
    json!({"selector": {"matchLabels": {"app": "httpbin"}}, "action": "ALLOW",
           "rules": [{"to": [{"operation": {"methods": ["GET"], "paths": paths}}]}]})
}

fn cluster() -> ClusterState {
    let mut state = ClusterState::new(MeshConfig::default());
    state.apply_pod(&pod("foo", "httpbin-1", "httpbin", "10.0.0.1"));
    state.apply_pod(&pod("foo", "sleep-1", "sleep", "10.0.0.2"));
    state.apply_pod(&pod("bar", "httpbin-1", "httpbin", "10.0.1.1"));
    state
}

const AP: PolicyKind = PolicyKind::AuthorizationPolicy;

#[test]
fn apply_update_delete_are_enforced() {
    let mut state = cluster();
    assert_eq!(verdict(&state, "foo/httpbin-1", "/x", ""), Verdict::Allow);

    let changed = state.apply_policy(AP, "v1", ap("foo", "allow", allow_get(&["/ok"])));
    assert_eq!(changed, Changed::Yes);
    assert_eq!(verdict(&state, "foo/httpbin-1", "/ok", ""), Verdict::Allow);
    assert_eq!(verdict(&state, "foo/httpbin-1", "/x", ""), Verdict::Deny);
    // Another namespace's workload with the same labels is out of scope.
    assert_eq!(verdict(&state, "bar/httpbin-1", "/x", ""), Verdict::Allow);

    // The same object again (a resync) changes nothing.
    let again = state.apply_policy(AP, "v1", ap("foo", "allow", allow_get(&["/ok"])));
    assert_eq!(again, Changed::No);

    // MODIFIED replaces it.
    state.apply_policy(AP, "v1", ap("foo", "allow", allow_get(&["/x"])));
    assert_eq!(verdict(&state, "foo/httpbin-1", "/ok", ""), Verdict::Deny);
    assert_eq!(verdict(&state, "foo/httpbin-1", "/x", ""), Verdict::Allow);

    // DELETED removes it: back to "no ALLOW policy => allow".
    assert_eq!(state.delete_policy(AP, "foo", "allow"), Changed::Yes);
    assert_eq!(state.delete_policy(AP, "foo", "allow"), Changed::No);
    assert_eq!(verdict(&state, "foo/httpbin-1", "/ok", ""), Verdict::Allow);
}

#[test]
fn reset_replaces_one_kind_and_keeps_the_others() {
    let mut state = cluster();
    state.apply_policy(AP, "v1", ap("foo", "a", allow_get(&["/a"])));
    state.apply_policy(AP, "v1", ap("foo", "b", allow_get(&["/b"])));
    state.apply_policy(
        PolicyKind::PeerAuthentication,
        "v1",
        object(
            PolicyKind::PeerAuthentication,
            "foo",
            "strict",
            json!({"mtls": {"mode": "STRICT"}}),
        ),
    );

    // A re-list that no longer has `a` (deleted while the watch was down) and changed `b`.
    let changed = state.reset_policies(
        AP,
        None,
        "v1",
        vec![
            ap("foo", "b", allow_get(&["/b2"])),
            ap("foo", "c", allow_get(&["/c"])),
        ],
    );
    assert_eq!(changed, Changed::Yes);
    let (inputs, _) = state.inputs();
    let names: Vec<String> = inputs.authorization.iter().map(|a| a.key()).collect();
    assert_eq!(names, ["foo/b", "foo/c"]);
    assert_eq!(inputs.peer.len(), 1, "a reset of one kind keeps the others");
    assert_eq!(
        verdict(&state, "foo/httpbin-1", "/a", "sleep"),
        Verdict::Deny
    );
    assert_eq!(
        verdict(&state, "foo/httpbin-1", "/b2", "sleep"),
        Verdict::Allow
    );

    // The same list again is no change (no recompile after a routine re-list).
    let same = state.reset_policies(
        AP,
        None,
        "v1",
        vec![
            ap("foo", "c", allow_get(&["/c"])),
            ap("foo", "b", allow_get(&["/b2"])),
        ],
    );
    assert_eq!(same, Changed::No);
    // A namespace's list leaves the other namespaces alone.
    state.apply_policy(AP, "v1", ap("bar", "d", allow_get(&["/d"])));
    assert_eq!(
        state.reset_policies(AP, Some("bar"), "v1", vec![]),
        Changed::Yes
    );
    assert_eq!(state.inputs().0.authorization.len(), 2);
    assert_eq!(
        state.reset_policies(AP, Some("bar"), "v1", vec![]),
        Changed::No
    );
    // An empty list removes every object of the kind.
    assert_eq!(state.reset_policies(AP, None, "v1", vec![]), Changed::Yes);
    assert!(state.inputs().0.authorization.is_empty());
}

/// Each invalid object: what stands in for it, and whether the scope had to be widened.
#[test]
fn invalid_objects_fail_closed_in_their_scope() {
    struct Case {
        name: &'static str,
        kind: PolicyKind,
        spec: Value,
        fallback: Fallback,
        widened: bool,
        field: &'static str,
        // Verdicts for GET /x to foo/httpbin-1 and foo/sleep-1 from `sleep` over mTLS.
        httpbin: Verdict,
        sleep: Verdict,
    }
    let cases = [
        Case {
            name: "deny with a misspelt field",
            kind: AP,
            spec: json!({"selector": {"matchLabels": {"app": "httpbin"}}, "action": "DENY",
                         "rules": [{"from": [{"source": {"notPrinciples": ["a"]}}]}]}),
            fallback: Fallback::DenyAll,
            widened: false,
            field: "notPrinciples",
            httpbin: Verdict::Deny,
            sleep: Verdict::Allow,
        },
        Case {
            name: "deny with an invalid selector too",
            kind: AP,
            spec: json!({"selector": {"matchLabels": {"app": 7}}, "action": "DENY",
                         "rules": [{"to": [{"operation": {"paths": 5}}]}]}),
            fallback: Fallback::DenyAll,
            widened: true,
            field: "spec.selector",
            httpbin: Verdict::Deny,
            sleep: Verdict::Deny,
        },
        Case {
            name: "unknown action counts as deny",
            kind: AP,
            spec: json!({"selector": {"matchLabels": {"app": "httpbin"}}, "action": "BLOCK"}),
            fallback: Fallback::DenyAll,
            widened: false,
            field: "spec.action",
            httpbin: Verdict::Deny,
            sleep: Verdict::Allow,
        },
        Case {
            name: "custom with a bad rule",
            kind: AP,
            spec: json!({"action": "CUSTOM", "provider": {"name": "ext"},
                         "rules": [{"to": [{"operation": {"ports": ["http"]}}]}]}),
            fallback: Fallback::DenyAll,
            widened: false,
            field: "ports",
            httpbin: Verdict::Deny,
            sleep: Verdict::Deny,
        },
        Case {
            name: "allow with an invalid ipBlock allows nothing",
            kind: AP,
            spec: json!({"selector": {"matchLabels": {"app": "httpbin"}},
                         "rules": [{"from": [{"source": {"ipBlocks": ["10.0.0.0/99"]}}]}]}),
            fallback: Fallback::AllowNothing,
            widened: false,
            field: "ipBlocks",
            httpbin: Verdict::Deny,
            sleep: Verdict::Allow,
        },
        Case {
            name: "audit is left out",
            kind: AP,
            spec: json!({"action": "AUDIT", "rules": [{"to": [{"operation": {"nope": 1}}]}]}),
            fallback: Fallback::Omitted,
            widened: false,
            field: "nope",
            httpbin: Verdict::Allow,
            sleep: Verdict::Allow,
        },
        Case {
            name: "peer authentication becomes strict",
            kind: PolicyKind::PeerAuthentication,
            spec: json!({"mtls": {"mode": "LOOSE"}}),
            fallback: Fallback::Strict,
            widened: false,
            field: "mtls.mode",
            httpbin: Verdict::Allow,
            sleep: Verdict::Allow,
        },
    ];
    for case in cases {
        let mut state = cluster();
        state.apply_policy(case.kind, "v1", object(case.kind, "foo", "bad", case.spec));
        let rejected = state.rejected();
        assert_eq!(rejected.len(), 1, "{}", case.name);
        let r = &rejected[0];
        assert_eq!(
            (r.fallback, r.widened),
            (case.fallback, case.widened),
            "{}",
            case.name
        );
        let message = r.to_string();
        assert!(
            message.contains(&format!("{} foo/bad", case.kind)) && message.contains(case.field),
            "{}: {message}",
            case.name
        );
        assert_eq!(
            verdict(&state, "foo/httpbin-1", "/x", "sleep"),
            case.httpbin,
            "{}",
            case.name
        );
        assert_eq!(
            verdict(&state, "foo/sleep-1", "/x", "sleep"),
            case.sleep,
            "{}",
            case.name
        );
        // Never beyond its namespace.
        assert_eq!(
            verdict(&state, "bar/httpbin-1", "/x", "sleep"),
            Verdict::Allow,
            "{}",
            case.name
        );
    }
}

#[test]
fn invalid_peer_authentication_refuses_plaintext() {
    let mut state = cluster();
    let pa = |mode: &str| {
        object(
            PolicyKind::PeerAuthentication,
            "foo",
            "pa",
            json!({"mtls": {"mode": mode}}),
        )
    };
    state.apply_policy(PolicyKind::PeerAuthentication, "v1", pa("PERMISSIVE"));
    assert_eq!(verdict(&state, "foo/httpbin-1", "/x", ""), Verdict::Allow);
    state.apply_policy(PolicyKind::PeerAuthentication, "v1", pa("SOMETIMES"));
    assert_eq!(verdict(&state, "foo/httpbin-1", "/x", ""), Verdict::Deny);
    assert_eq!(
        verdict(&state, "foo/httpbin-1", "/x", "sleep"),
        Verdict::Allow
    );
}

#[test]
fn an_invalid_object_does_not_affect_the_others_and_a_fix_restores_it() {
    let mut state = cluster();
    state.apply_policy(AP, "v1", ap("foo", "good", allow_get(&["/ok"])));
    state.apply_policy(
        AP,
        "v1",
        ap(
            "bar",
            "bad",
            json!({"action": "DENY", "rules": [{"when": [{"key": "request.nope", "values": ["a"]}]}]}),
        ),
    );
    assert_eq!(verdict(&state, "foo/httpbin-1", "/ok", ""), Verdict::Allow);
    assert_eq!(verdict(&state, "bar/httpbin-1", "/ok", ""), Verdict::Deny);

    state.apply_policy(
        AP,
        "v1",
        ap(
            "bar",
            "bad",
            json!({"action": "DENY", "rules": [{"to": [{"operation": {"paths": ["/admin"]}}]}]}),
        ),
    );
    assert!(state.rejected().is_empty());
    assert_eq!(verdict(&state, "bar/httpbin-1", "/ok", ""), Verdict::Allow);
    assert_eq!(
        verdict(&state, "bar/httpbin-1", "/admin", ""),
        Verdict::Deny
    );
}

#[test]
fn objects_that_are_not_the_watched_kind_are_rejected() {
    let mut state = cluster();
    // A list item without apiVersion/kind takes the watched kind; a wrong kind is an error.
    let mut bare = ap("foo", "bare", allow_get(&["/ok"]));
    bare.as_object_mut().unwrap().remove("apiVersion");
    bare.as_object_mut().unwrap().remove("kind");
    state.apply_policy(AP, "v1beta1", bare);
    assert!(state.rejected().is_empty(), "{:?}", state.rejected());
    let mut wrong = ap("foo", "wrong", json!({}));
    wrong["kind"] = json!("PeerAuthentication");
    state.apply_policy(AP, "v1", wrong);
    assert_eq!(state.rejected().len(), 1);
    assert_eq!(state.rejected()[0].name, "wrong");
}

#[test]
fn pods_define_workloads_and_only_relevant_changes_count() {
    let mut state = ClusterState::new(MeshConfig::default());
    let p = pod("foo", "web-1", "web", "10.0.0.9");
    assert_eq!(state.apply_pod(&p), Changed::Yes);
    let mut status_only = p.clone();
    status_only["status"]["conditions"] = json!([{"type": "Ready", "status": "True"}]);
    assert_eq!(state.apply_pod(&status_only), Changed::No);
    let (_, workloads) = state.inputs();
    assert_eq!(workloads.len(), 1);
    assert_eq!(workloads[0].service_account, "web");
    assert_eq!(
        workloads[0].ips,
        ["10.0.0.9".parse::<std::net::IpAddr>().unwrap()]
    );

    let mut relabelled = p.clone();
    relabelled["metadata"]["labels"]["version"] = json!("v2");
    assert_eq!(state.apply_pod(&relabelled), Changed::Yes);

    let mut host_network = pod("foo", "node-agent", "agent", "192.168.0.5");
    host_network["spec"]["hostNetwork"] = json!(true);
    state.apply_pod(&host_network);
    let (_, workloads) = state.inputs();
    let agent = workloads.iter().find(|w| w.name == "node-agent").unwrap();
    assert!(
        agent.ips.is_empty(),
        "a host-network pod's IP is its node's"
    );

    let mut finished = p.clone();
    finished["status"]["phase"] = json!("Succeeded");
    assert_eq!(state.apply_pod(&finished), Changed::Yes);
    assert_eq!(state.inputs().1.len(), 1);

    assert_eq!(
        state.reset_pods(None, std::slice::from_ref(&p)),
        Changed::Yes
    );
    assert_eq!(
        state.reset_pods(None, std::slice::from_ref(&p)),
        Changed::No
    );
    // A namespace's re-list leaves the other namespaces' pods alone.
    state.apply_pod(&pod("bar", "api-1", "api", "10.0.5.1"));
    assert_eq!(state.reset_pods(Some("bar"), &[]), Changed::Yes);
    assert_eq!(state.inputs().1.len(), 1);
    assert_eq!(state.reset_pods(Some("foo"), &[p]), Changed::No);
    assert_eq!(state.delete_pod("foo", "web-1"), Changed::Yes);
    assert!(state.inputs().1.is_empty());
}

#[test]
fn destination_ip_finds_the_pod() {
    let mut state = cluster();
    state.apply_policy(AP, "v1", ap("foo", "allow", allow_get(&["/ok"])));
    let (snapshot, _, _) = state.build(3).unwrap();
    assert_eq!(snapshot.generation, 3);
    let found = snapshot.workloads_by_ip("10.0.0.1".parse().unwrap());
    let keys: Vec<String> = found.iter().map(|w| w.key()).collect();
    assert_eq!(keys, ["foo/httpbin-1"]);
}

#[test]
fn the_not_ready_snapshot_denies_everything() {
    let snapshot = deny_all_snapshot(&MeshConfig::default()).unwrap();
    assert_eq!(snapshot.generation, 0);
    let req = RequestAttrs {
        workload: "foo/anything".into(),
        method: "GET".into(),
        path: "/".into(),
        ..Default::default()
    };
    assert_eq!(decide(&snapshot, &req).verdict, Verdict::Deny);
}

#[test]
fn mesh_settings_from_the_istio_config_map() {
    let text = "accessLogFile: /dev/stdout\ntrustDomain: example.org\ntrustDomainAliases: [old.org]\nrootNamespace: istio-config\npathNormalization:\n  normalization: MERGE_SLASHES\ndefaultConfig:\n  discoveryAddress: istiod:15012\n  gatewayTopology:\n    numTrustedProxies: 2\nextensionProviders:\n- name: meshauthz\n  envoyExtAuthzGrpc:\n    service: meshauthz.meshauthz.svc.cluster.local\n    port: 9191\n";
    let mesh = mesh_from_istio_config(text).unwrap();
    assert_eq!(mesh.trust_domain, "example.org");
    assert_eq!(mesh.trust_domain_aliases, ["old.org"]);
    assert_eq!(mesh.root_namespace, "istio-config");
    assert_eq!(mesh.path_normalization, PathNormalization::MergeSlashes);
    assert_eq!(mesh.num_trusted_proxies, 2);
    assert!(mesh.provider("meshauthz").is_some());

    assert_eq!(mesh_from_istio_config("").unwrap(), MeshConfig::default());
    for (bad, field) in [
        ("trustDomain: [a]", "trustDomain"),
        (
            "pathNormalization: {normalization: SOMETIMES}",
            "pathNormalization",
        ),
        ("- a", "mapping"),
        ("a: [", "YAML"),
    ] {
        let e = mesh_from_istio_config(bad).unwrap_err();
        assert!(e.contains(field), "{bad}: {e}");
    }
}

#[test]
fn pods_of_one_controller_are_one_workload() {
    let owned = |name: &str, rs: &str, hash: &str, ip: &str| {
        let mut p = pod("foo", name, "web", ip);
        p["metadata"]["labels"]["pod-template-hash"] = json!(hash);
        p["metadata"]["ownerReferences"] = json!([{"kind": "ReplicaSet", "name": rs, "controller": true, "apiVersion": "apps/v1", "uid": "u"}]);
        p
    };
    let mut state = ClusterState::new(MeshConfig::default());
    state.apply_pod(&owned("web-7f9c-a", "web-7f9c", "7f9c", "10.0.0.1"));
    state.apply_pod(&owned("web-7f9c-b", "web-7f9c", "7f9c", "10.0.0.2"));
    state.apply_pod(&pod("foo", "standalone", "web", "10.0.0.9"));
    let keys = |state: &ClusterState| {
        state
            .workloads()
            .iter()
            .map(|w| {
                (
                    w.key(),
                    w.ips.iter().map(ToString::to_string).collect::<Vec<_>>(),
                )
            })
            .collect::<Vec<_>>()
    };
    assert_eq!(
        keys(&state),
        [
            ("foo/standalone".to_string(), vec!["10.0.0.9".to_string()]),
            (
                "foo/web".to_string(),
                vec!["10.0.0.1".to_string(), "10.0.0.2".to_string()]
            ),
        ]
    );
    // A rollout: the new ReplicaSet's pods differ in pod-template-hash.
    state.apply_pod(&owned("web-88aa-a", "web-88aa", "88aa", "10.0.0.3"));
    let names: Vec<String> = keys(&state).into_iter().map(|(k, _)| k).collect();
    assert_eq!(names, ["foo/standalone", "foo/web-7f9c", "foo/web-88aa"]);
    // Each is found by its pods' IPs, and selectors see the pods' labels.
    state.apply_policy(
        AP,
        "v1",
        ap(
            "foo",
            "new-only",
            json!({"selector": {"matchLabels": {"pod-template-hash": "88aa"}}, "action": "DENY",
                   "rules": [{}]}),
        ),
    );
    let (snapshot, _, _) = state.build(1).unwrap();
    let by_ip = |ip: &str| {
        snapshot
            .workloads_by_ip(ip.parse().unwrap())
            .iter()
            .map(|w| w.key())
            .collect::<Vec<_>>()
    };
    assert_eq!(by_ip("10.0.0.2"), ["foo/web-7f9c"]);
    assert_eq!(by_ip("10.0.0.3"), ["foo/web-88aa"]);
    assert_eq!(verdict(&state, "foo/web-88aa", "/", ""), Verdict::Deny);
    assert_eq!(verdict(&state, "foo/web-7f9c", "/", ""), Verdict::Allow);
}

#[test]
fn an_invalid_deny_with_an_unusable_name_still_denies_its_namespace() {
    let mut state = cluster();
    let mut bad = ap(
        "foo",
        "x",
        json!({"action": "DENY", "rules": [{"to": [{"operation": {"pathz": ["/a"]}}]}]}),
    );
    bad["metadata"]["name"] = json!(["not", "a", "string"]);
    state.apply_policy(AP, "v1", bad);
    let rejected = state.rejected();
    assert_eq!(rejected.len(), 1);
    assert_eq!(rejected[0].fallback, Fallback::DenyAll);
    assert_eq!(
        verdict(&state, "foo/httpbin-1", "/x", "sleep"),
        Verdict::Deny
    );
    assert_eq!(
        verdict(&state, "bar/httpbin-1", "/x", "sleep"),
        Verdict::Allow
    );
}

/// Workloads are made once per change of the pods: each kind of pod change after a build is
/// seen by the next build (a relabel, a new pod, a deletion, a re-list).
#[test]
fn every_pod_change_reaches_the_next_build() {
    let mut state = cluster();
    state.apply_policy(AP, "v1", ap("foo", "allow", allow_get(&["/ok"])));
    assert_eq!(verdict(&state, "foo/httpbin-1", "/x", ""), Verdict::Deny);
    assert_eq!(verdict(&state, "foo/sleep-1", "/x", ""), Verdict::Allow);

    // Relabelled into the policy's selector.
    state.apply_pod(&pod("foo", "sleep-1", "httpbin", "10.0.0.2"));
    assert_eq!(verdict(&state, "foo/sleep-1", "/x", ""), Verdict::Deny);

    // A new pod.
    state.apply_pod(&pod("foo", "web-1", "web", "10.0.0.3"));
    assert_eq!(verdict(&state, "foo/web-1", "/x", ""), Verdict::Allow);

    // Deleted: unknown to the next snapshot (denied as an unknown workload).
    state.delete_pod("foo", "web-1");
    assert_eq!(verdict(&state, "foo/web-1", "/x", ""), Verdict::Deny);

    // A re-list of the namespace without the relabel.
    state.reset_pods(Some("foo"), &[pod("foo", "sleep-1", "sleep", "10.0.0.2")]);
    assert_eq!(verdict(&state, "foo/sleep-1", "/x", ""), Verdict::Allow);

    // A pod that finished is no workload any more.
    let mut finished = pod("foo", "sleep-1", "sleep", "10.0.0.2");
    finished["status"]["phase"] = json!("Succeeded");
    state.apply_pod(&finished);
    assert_eq!(verdict(&state, "foo/sleep-1", "/x", ""), Verdict::Deny);
}

/// The pods' workloads are made in key order (`a-b/x` before `a/y`, as strings compare), so
/// that every build while no pod changes compiles this very list instead of a sorted copy.
#[test]
fn workloads_are_shared_by_builds_until_a_pod_changes() {
    let mut state = ClusterState::new(MeshConfig::default());
    state.apply_pod(&pod("a", "y", "y", "10.0.0.1"));
    state.apply_pod(&pod("a-b", "x", "x", "10.0.0.2"));
    let (first, _, _) = state.build(1).unwrap();
    let keys: Vec<String> = first.compiled().workloads.iter().map(|w| w.key()).collect();
    assert_eq!(keys, ["a-b/x", "a/y"]);
    let held = state.workloads.get().unwrap().clone();
    assert!(std::sync::Arc::ptr_eq(&first.compiled().workloads, &held));

    state.apply_policy(AP, "v1", ap("a", "allow", allow_get(&["/ok"])));
    let (second, _, _) = state.build(2).unwrap();
    assert!(std::sync::Arc::ptr_eq(&second.compiled().workloads, &held));

    state.apply_pod(&pod("a", "z", "z", "10.0.0.3"));
    let (third, _, _) = state.build(3).unwrap();
    assert!(!std::sync::Arc::ptr_eq(&third.compiled().workloads, &held));
    assert_eq!(third.compiled().workloads.len(), 3);
}
