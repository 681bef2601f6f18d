//! A generator of realistic Istio policy estates for benchmarks, deterministic for a given size
//! and seed: `N` AuthorizationPolicies spread over `N/100` namespaces of ten workloads each
//! (selector-scoped ALLOW and DENY rules over principals, namespaces, methods, path prefixes,
//! hosts, ports, headers and JWT claims; some namespace-wide and AUDIT policies; two mesh-wide
//! DENY policies), plus requests that hit the first rule, match late, miss, or are denied.
//!
//! Owns no state; `generate` is a pure function.

use std::fmt::Write;

pub mod rbac;

use authz_engine::{Protocol, RequestAttrs};
use policy_compiler::{MeshConfig, Workload};

/// Workloads per namespace.
pub const WORKLOADS_PER_NAMESPACE: usize = 10;

/// One generated estate.
#[derive(Debug, Clone)]
pub struct Estate {
    /// Multi-document YAML of every AuthorizationPolicy (and one RequestAuthentication per
    /// namespace).
    pub yaml: String,
    pub mesh: MeshConfig,
    pub workloads: Vec<Workload>,
    /// Named requests against `ns-0/svc-0`.
    pub requests: Vec<(&'static str, RequestAttrs)>,
    pub policies: usize,
}

/// splitmix64: small, deterministic, good enough to spread choices.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

/// Generates an estate of `policies` AuthorizationPolicies.
pub fn generate(policies: usize, seed: u64) -> Estate {
    let namespaces = (policies / 100).max(1);
    let per_namespace = policies.div_ceil(namespaces);
    let mut rng = Rng(seed);
    let mut yaml = String::new();
    let mut workloads = Vec::new();
    for n in 0..namespaces {
        for w in 0..WORKLOADS_PER_NAMESPACE {
            workloads.push(Workload {
                namespace: format!("ns-{n}"),
                name: format!("svc-{w}"),
                labels: [
                    ("app".to_string(), format!("svc-{w}")),
                    (
                        "version".to_string(),
                        if w % 2 == 0 { "v1" } else { "v2" }.to_string(),
                    ),
                ]
                .into(),
                service_account: format!("svc-{w}"),
                ips: vec![std::net::IpAddr::from([
                    10,
                    (n / 250) as u8,
                    (n % 250) as u8,
                    w as u8 + 1,
                ])],
                gateway: None,
                services: Vec::new(),
            });
        }
        let _ = write!(
            yaml,
            "apiVersion: security.istio.io/v1\nkind: RequestAuthentication\nmetadata: {{name: jwt, namespace: ns-{n}}}\nspec:\n  jwtRules:\n  - issuer: https://issuer.ns-{n}.test\n    jwks: '{{\"keys\": []}}'\n---\n"
        );
    }
    let mut count = 0;
    'outer: for n in 0..namespaces {
        for j in 0..per_namespace {
            if count == policies {
                break 'outer;
            }
            count += 1;
            let target = j % WORKLOADS_PER_NAMESPACE;
            let other_ns = rng.below(namespaces);
            let caller = rng.below(WORKLOADS_PER_NAMESPACE);
            let header = format!("apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {{name: p-{j}, namespace: ns-{n}}}\nspec:\n");
            yaml.push_str(&header);
            match j % 20 {
                // Selector-scoped ALLOW with 1-3 rules.
                0..=11 => {
                    let _ = writeln!(
                        yaml,
                        "  selector: {{matchLabels: {{app: svc-{target}}}}}\n  rules:"
                    );
                    let rules = 1 + rng.below(3);
                    for r in 0..rules {
                        match (j + r) % 3 {
                            0 => {
                                let _ = writeln!(yaml, "  - from: [{{source: {{principals: [\"cluster.local/ns/ns-{n}/sa/svc-{caller}\"]}}}}]\n    to: [{{operation: {{methods: [\"GET\", \"HEAD\"], paths: [\"/api/v{j}/*\"], ports: [\"8080\"]}}}}]");
                            }
                            1 => {
                                let _ = writeln!(yaml, "  - from: [{{source: {{namespaces: [\"ns-{other_ns}\"]}}}}]\n    to: [{{operation: {{methods: [\"POST\"], paths: [\"/api/v{j}/orders\"]}}}}]");
                            }
                            _ => {
                                let _ = writeln!(yaml, "  - from: [{{source: {{requestPrincipals: [\"https://issuer.ns-{n}.test/*\"]}}}}]\n    to: [{{operation: {{paths: [\"/user/{j}/*\"]}}}}]\n    when: [{{key: \"request.auth.claims[groups]\", values: [\"team-{j}\"]}}]");
                            }
                        }
                    }
                }
                // DENY: admin paths on the workload port, or a blocked header.
                12..=16 => {
                    let _ = writeln!(yaml, "  selector: {{matchLabels: {{app: svc-{target}}}}}\n  action: DENY\n  rules:");
                    if j % 2 == 0 {
                        let _ = writeln!(yaml, "  - to: [{{operation: {{paths: [\"/admin/{j}/*\"], ports: [\"8080\"]}}}}]");
                    } else {
                        let _ = writeln!(yaml, "  - to: [{{operation: {{ports: [\"8080\"]}}}}]\n    when: [{{key: \"request.headers[x-block-{j}]\", values: [\"true\"]}}]");
                    }
                }
                // Namespace-wide ALLOW by host.
                17 | 18 => {
                    let _ = writeln!(yaml, "  rules:\n  - to: [{{operation: {{hosts: [\"svc-{target}.ns-{n}.svc.cluster.local\", \"svc-{target}.ns-{n}.svc.cluster.local:*\"], methods: [\"GET\"], paths: [\"/public/{j}\"]}}}}]");
                }
                // AUDIT.
                _ => {
                    let _ = writeln!(yaml, "  selector: {{matchLabels: {{app: svc-{target}}}}}\n  action: AUDIT\n  rules:\n  - to: [{{operation: {{paths: [\"/audit/{j}*\"]}}}}]");
                }
            }
            yaml.push_str("---\n");
        }
    }
    yaml.push_str("apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: deny-debug, namespace: istio-system}\nspec:\n  action: DENY\n  rules:\n  - to: [{operation: {paths: [\"/debug/*\"], ports: [\"8080\"]}}]\n---\n");
    yaml.push_str("apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: deny-plaintext-admin, namespace: istio-system}\nspec:\n  action: DENY\n  rules:\n  - from: [{source: {notPrincipals: [\"*\"]}}]\n    to: [{operation: {ports: [\"15000\"]}}]\n");

    // Requests against ns-0/svc-0: its policies are p-0, p-10, p-20, ... (j % 10 == 0).
    let last_allow = (0..per_namespace.min(policies))
        .rev()
        .find(|j| j % WORKLOADS_PER_NAMESPACE == 0 && j % 20 <= 11 && j % 3 == 0)
        .unwrap_or(0);
    let base = RequestAttrs {
        workload: "ns-0/svc-0".into(),
        protocol: Protocol::Http,
        source_principal: Some("spiffe://cluster.local/ns/ns-0/sa/svc-0".into()),
        source_ip: Some(std::net::IpAddr::from([10, 0, 0, 9])),
        destination_ip: Some(std::net::IpAddr::from([10, 0, 0, 1])),
        destination_port: 8080,
        method: "GET".into(),
        path: "/api/v0/items?limit=10".into(),
        host: "svc-0.ns-0.svc.cluster.local:8080".into(),
        headers: vec![
            ("user-agent".into(), "bench".into()),
            ("x-request-id".into(), "0f6e2c1a".into()),
        ],
        ..RequestAttrs::default()
    };
    // The generated principal for p-0's first rule is random; read it back from the YAML so
    // that "hit" really matches.
    let principal_of = |j: usize| {
        let marker = format!("name: p-{j}, namespace: ns-0}}");
        yaml.find(&marker).and_then(|at| {
            let rest = &yaml[at..];
            let p = rest.find("principals: [\"cluster.local/")?;
            let start = p + "principals: [\"".len();
            let end = rest[start..].find('"')? + start;
            Some(format!("spiffe://{}", &rest[start..end]))
        })
    };
    let hit = RequestAttrs {
        source_principal: principal_of(0).or(base.source_principal.clone()),
        ..base.clone()
    };
    let late = RequestAttrs {
        source_principal: principal_of(last_allow).or(base.source_principal.clone()),
        path: format!("/api/v{last_allow}/items"),
        ..base.clone()
    };
    let miss = RequestAttrs {
        path: "/nothing/here".into(),
        ..base.clone()
    };
    let deny = RequestAttrs {
        path: "/debug/pprof".into(),
        ..hit.clone()
    };
    Estate {
        yaml,
        mesh: MeshConfig::default(),
        workloads,
        requests: vec![("hit", hit), ("late", late), ("miss", miss), ("deny", deny)],
        policies: count,
    }
}

/// Requests a plaintext client can send to `ns-0/svc-0` and be allowed: with no peer identity
/// and no JWT, only the namespace-wide ALLOW policies of `ns-0` that match on host, method and
/// path can allow. One request per such rule, in the estate's order: `(policy name, request)`.
pub fn anonymous_allowed(estate: &Estate) -> Vec<(String, RequestAttrs)> {
    let mut out = Vec::new();
    for doc in estate.yaml.split("\n---\n") {
        if !doc.contains("kind: AuthorizationPolicy") || doc.contains("selector:") {
            continue;
        }
        let Some(name) = doc
            .split("metadata: {name: ")
            .nth(1)
            .and_then(|r| r.split(", namespace: ns-0}").next())
            .filter(|n| !n.contains('}'))
        else {
            continue;
        };
        let host = doc
            .split("hosts: [\"")
            .nth(1)
            .and_then(|r| r.split('"').next());
        let path = doc
            .split("paths: [\"")
            .nth(1)
            .and_then(|r| r.split('"').next());
        if let (Some(host), Some(path)) = (host, path) {
            out.push((
                name.to_string(),
                RequestAttrs {
                    workload: "ns-0/svc-0".into(),
                    protocol: Protocol::Http,
                    destination_port: 8080,
                    method: "GET".into(),
                    path: path.to_string(),
                    host: host.to_string(),
                    headers: vec![("user-agent".into(), "bench".into())],
                    ..RequestAttrs::default()
                },
            ));
        }
    }
    out
}

/// Loads and compiles an estate.
pub fn compile(estate: &Estate) -> Result<policy_compiler::Compiled, String> {
    let mut inputs = policy_compiler::Inputs::default();
    let errors = inputs.load_str("estate.yaml", &estate.yaml);
    if let Some(e) = errors.first() {
        return Err(e.to_string());
    }
    policy_compiler::compile(&inputs, &estate.mesh, &estate.workloads)
        .map_err(|e| e.first().map(|e| e.to_string()).unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn estates_compile_and_requests_decide_as_named() {
        for n in [10, 1000] {
            let estate = generate(n, 7);
            assert_eq!(estate.policies, n);
            let snapshot = authz_engine::Snapshot::build(compile(&estate).unwrap(), 1).unwrap();
            for (name, req) in &estate.requests {
                let d = authz_engine::decide(&snapshot, req);
                let want = match *name {
                    "hit" | "late" => authz_engine::Verdict::Allow,
                    _ => authz_engine::Verdict::Deny,
                };
                assert_eq!(d.verdict, want, "{n} {name}: {d:?}");
            }
        }
    }
}
