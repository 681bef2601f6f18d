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
            text.push_str(p.text.as_deref().expect("compiled with texts"));
            text.push('\n');
        }
    }
    text.push_str(&compiled.default_allow_text());
    cedar_policy::PolicySet::from_str(&text).unwrap()
}

/// Every decision of the request mix (hit, late, miss, deny) timed on its own: criterion
/// reports batches, the tail needs single decisions. Prints `percentiles N P50 P99` (µs) for
/// bench/render.py.
fn percentiles(n: usize, snapshot: &authz_engine::Snapshot, estate: &meshauthz_bench::Estate) {
    const ROUNDS: usize = 25_000;
    let mut samples = Vec::with_capacity(ROUNDS * estate.requests.len());
    for _ in 0..ROUNDS {
        for (_, req) in &estate.requests {
            let t = std::time::Instant::now();
            std::hint::black_box(authz_engine::decide(snapshot, req));
            samples.push(t.elapsed());
        }
    }
    samples.sort_unstable();
    let at = |q: f64| {
        let i = ((samples.len() as f64 * q) as usize).min(samples.len() - 1);
        samples[i].as_secs_f64() * 1e6
    };
    println!("percentiles {n} {:.2} {:.2}", at(0.50), at(0.99));
}

fn decide(c: &mut Criterion) {
    for n in [10usize, 1000, 10000] {
        let estate = meshauthz_bench::generate(n, 7);
        let compiled = meshauthz_bench::compile(&estate).unwrap();
        let naive = naive_set(&compiled);
        let snapshot = authz_engine::Snapshot::build(compiled, 1).unwrap();
        percentiles(n, &snapshot, &estate);
        let mut g = c.benchmark_group(format!("decide/{n}"));
        for (name, req) in &estate.requests {
            g.bench_function(*name, |b| b.iter(|| authz_engine::decide(&snapshot, req)));
        }
        // The plaintext requests of the Envoy benchmark (no identity; allowed by the first and
        // the last namespace-wide host/path rule).
        let anonymous = meshauthz_bench::anonymous_allowed(&estate);
        for (name, at) in [
            ("anon-first", 0),
            ("anon-last", anonymous.len().saturating_sub(1)),
        ] {
            if let Some((_, req)) = anonymous.get(at) {
                assert_eq!(
                    authz_engine::decide(&snapshot, req).verdict,
                    authz_engine::Verdict::Allow
                );
                g.bench_function(name, |b| b.iter(|| authz_engine::decide(&snapshot, req)));
            }
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

/// A verified-token cache for the benchmark (the server uses moka; this measures the engine).
#[derive(Default)]
struct MapCache(
    std::sync::Mutex<
        std::collections::HashMap<
            authz_engine::TokenKey,
            std::sync::Arc<authz_engine::VerifiedToken>,
        >,
    >,
);

impl authz_engine::TokenCache for MapCache {
    fn get(
        &self,
        key: &authz_engine::TokenKey,
    ) -> Option<std::sync::Arc<authz_engine::VerifiedToken>> {
        self.0.lock().unwrap().get(key).cloned()
    }
    fn insert(
        &self,
        key: authz_engine::TokenKey,
        token: std::sync::Arc<authz_engine::VerifiedToken>,
        _ttl: u64,
    ) {
        self.0.lock().unwrap().insert(key, token);
    }
}

/// A request carrying an RS256 JWT: verified on every decision (cold) vs through the cache.
fn jwt(c: &mut Criterion) {
    let fixtures = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../authz/engine/tests/fixtures"
    );
    let jwks = std::fs::read_to_string(format!("{fixtures}/rsa.jwks.json")).unwrap();
    let pem = std::fs::read(format!("{fixtures}/rsa-private.pem")).unwrap();
    let key = jsonwebtoken::EncodingKey::from_rsa_pem(&pem).unwrap();
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256);
    header.kid = Some("rsa-1".into());
    let claims = serde_json::json!({"iss": "https://issuer.bench", "sub": "alice", "groups": ["team-1"], "exp": 4102444800u64});
    let token = jsonwebtoken::encode(&header, &claims, &key).unwrap();
    let yaml = format!(
        "apiVersion: security.istio.io/v1\nkind: RequestAuthentication\nmetadata: {{name: jwt, namespace: ns-0}}\nspec:\n  jwtRules:\n  - issuer: https://issuer.bench\n    jwks: '{}'\n---\napiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {{name: need-jwt, namespace: ns-0}}\nspec:\n  rules:\n  - from: [{{source: {{requestPrincipals: [\"https://issuer.bench/*\"]}}}}]\n    when: [{{key: \"request.auth.claims[groups]\", values: [\"team-1\"]}}]\n",
        jwks.replace('\n', "")
    );
    let mut estate = meshauthz_bench::generate(10, 7);
    estate.yaml = yaml;
    let snapshot =
        authz_engine::Snapshot::build(meshauthz_bench::compile(&estate).unwrap(), 1).unwrap();
    let mut req = estate.requests[0].1.clone();
    req.headers
        .push(("authorization".into(), format!("Bearer {token}")));
    req.now = 1_900_000_000;
    assert_eq!(
        authz_engine::decide(&snapshot, &req).verdict,
        authz_engine::Verdict::Allow
    );
    let cache = MapCache::default();
    let mut g = c.benchmark_group("jwt");
    g.bench_function("cold", |b| b.iter(|| authz_engine::decide(&snapshot, &req)));
    g.bench_function("cached", |b| {
        b.iter(|| authz_engine::decide_with(&snapshot, &req, &cache))
    });
    g.finish();
}

criterion_group!(benches, decide, jwt);
criterion_main!(benches);
