//! The verified-token cache: a hit skips the signature check but never the issuer, time and
//! audience checks; rotated keys make an entry stale.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test code"
)]

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use authz_engine::jwt::{authenticate_with, AuthnOutcome, JwtError, KeySet};
use authz_engine::{TokenCache, TokenKey, VerifiedToken};
use policy_compiler::compile::{JwtProvider, ResourceKey};

#[derive(Default)]
struct MapCache {
    map: Mutex<HashMap<TokenKey, Arc<VerifiedToken>>>,
    hits: Mutex<usize>,
}

impl TokenCache for MapCache {
    fn get(&self, key: &TokenKey) -> Option<Arc<VerifiedToken>> {
        let v = self.map.lock().unwrap().get(key).cloned();
        if v.is_some() {
            *self.hits.lock().unwrap() += 1;
        }
        v
    }
    fn insert(&self, key: TokenKey, token: Arc<VerifiedToken>, ttl_secs: u64) {
        assert!(ttl_secs > 0 && ttl_secs <= 300);
        self.map.lock().unwrap().insert(key, token);
    }
}

fn provider(audiences: &[&str]) -> JwtProvider {
    JwtProvider {
        source: ResourceKey {
            namespace: "foo".into(),
            name: "ra".into(),
        },
        rule: 0,
        line: 1,
        issuer: "https://issuer.test".into(),
        audiences: audiences.iter().map(|a| a.to_string()).collect(),
        jwks: None,
        jwks_uri: None,
        fetch_timeout: std::time::Duration::from_secs(1),
        from_headers: vec![],
        from_params: vec![],
        from_cookies: vec![],
        output_payload_to_header: None,
        forward_original_token: false,
        output_claim_to_headers: vec![],
        space_delimited_claims: vec![],
    }
}

fn token(exp: u64) -> String {
    let pem = std::fs::read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/rsa-private.pem"
    ))
    .unwrap();
    let key = jsonwebtoken::EncodingKey::from_rsa_pem(&pem).unwrap();
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256);
    header.kid = Some("rsa-1".into());
    let claims =
        serde_json::json!({"iss": "https://issuer.test", "sub": "alice", "aud": "api", "exp": exp});
    jsonwebtoken::encode(&header, &claims, &key).unwrap()
}

fn keys() -> Arc<KeySet> {
    let jwks = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/rsa.jwks.json"
    ))
    .unwrap();
    Arc::new(KeySet::parse(&jwks).unwrap())
}

fn run(p: &JwtProvider, k: &Arc<KeySet>, token: &str, now: u64, cache: &MapCache) -> AuthnOutcome {
    let headers = vec![("authorization".to_string(), format!("Bearer {token}"))];
    let keyf = |_: usize| Some(k.clone());
    authenticate_with(
        std::slice::from_ref(p),
        &keyf,
        "GET",
        &headers,
        None,
        now,
        cache,
    )
}

#[test]
fn second_request_hits_the_cache_and_still_checks_time_and_audience() {
    let now = 1_900_000_000;
    let t = token(now + 100);
    let k = keys();
    let cache = MapCache::default();
    let p = provider(&["api"]);
    assert!(matches!(
        run(&p, &k, &t, now, &cache),
        AuthnOutcome::Verified { .. }
    ));
    assert_eq!(*cache.hits.lock().unwrap(), 0);
    assert!(matches!(
        run(&p, &k, &t, now, &cache),
        AuthnOutcome::Verified { .. }
    ));
    assert_eq!(*cache.hits.lock().unwrap(), 1);
    // Past exp (+ 60 s skew): the cached entry does not make it valid.
    match run(&p, &k, &t, now + 1000, &cache) {
        AuthnOutcome::Failed { error, .. } => assert_eq!(error, JwtError::Expired),
        other => panic!("{other:?}"),
    }
    // Another provider configuration (audience) is checked on the cached claims too.
    match run(&provider(&["other"]), &k, &t, now, &cache) {
        AuthnOutcome::Failed { error, .. } => assert_eq!(error, JwtError::AudienceNotAllowed),
        other => panic!("{other:?}"),
    }
}

#[test]
fn rotated_keys_make_entries_stale() {
    let now = 1_900_000_000;
    let t = token(now + 100);
    let cache = MapCache::default();
    let p = provider(&[]);
    assert!(matches!(
        run(&p, &keys(), &t, now, &cache),
        AuthnOutcome::Verified { .. }
    ));
    // A new key set without the signing key: the cached signature must not be trusted.
    let other = Arc::new(
        KeySet::parse(r#"{"keys":[{"kty":"oct","k":"c2VjcmV0","alg":"HS256"}]}"#).unwrap(),
    );
    assert!(matches!(
        run(&p, &other, &t, now, &cache),
        AuthnOutcome::Failed { .. }
    ));
}
