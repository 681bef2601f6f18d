//! The verified-token cache the server lends to the engine ([`authz_engine::TokenCache`]).
//!
//! State owned: a moka cache from the SHA-256 of the token to the verified payload (with the id
//! of the key set that verified it),
//! at most [`MAX_TOKENS`] entries, each living the `ttl_secs` the engine gives (never past the
//! token's `exp`). Issuer, audience and time checks run on every request; only the signature
//! check is cached, so neither a policy reload nor a key rotation needs an invalidation.

use std::sync::Arc;
use std::time::{Duration, Instant};

use authz_engine::{TokenCache, TokenKey, VerifiedToken};

/// The most tokens kept (about 1 KiB each).
pub const MAX_TOKENS: u64 = 100_000;

#[derive(Clone)]
struct Entry {
    token: Arc<VerifiedToken>,
    ttl: Duration,
}

struct PerEntryTtl;

impl moka::Expiry<TokenKey, Entry> for PerEntryTtl {
    fn expire_after_create(&self, _: &TokenKey, value: &Entry, _: Instant) -> Option<Duration> {
        Some(value.ttl)
    }

    fn expire_after_update(
        &self,
        _: &TokenKey,
        value: &Entry,
        _: Instant,
        _: Option<Duration>,
    ) -> Option<Duration> {
        Some(value.ttl)
    }
}

/// moka-backed [`TokenCache`].
#[derive(Clone)]
pub struct MokaTokenCache {
    cache: moka::sync::Cache<TokenKey, Entry>,
}

impl std::fmt::Debug for MokaTokenCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MokaTokenCache")
            .field("entries", &self.cache.entry_count())
            .finish()
    }
}

impl MokaTokenCache {
    pub fn new(max_entries: u64) -> MokaTokenCache {
        MokaTokenCache {
            cache: moka::sync::Cache::builder()
                .max_capacity(max_entries)
                .expire_after(PerEntryTtl)
                .build(),
        }
    }

    pub fn entry_count(&self) -> u64 {
        self.cache.entry_count()
    }
}

impl TokenCache for MokaTokenCache {
    fn get(&self, key: &TokenKey) -> Option<Arc<VerifiedToken>> {
        self.cache.get(key).map(|e| e.token)
    }

    fn insert(&self, key: TokenKey, token: Arc<VerifiedToken>, ttl_secs: u64) {
        if ttl_secs == 0 {
            return;
        }
        self.cache.insert(
            key,
            Entry {
                token,
                ttl: Duration::from_secs(ttl_secs),
            },
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mk_token() -> Arc<VerifiedToken> {
        Arc::new(VerifiedToken {
            claims: serde_json::Map::new(),
            payload: "{}".into(),
            iss: "https://issuer.test".into(),
            audiences: Vec::new(),
            exp: None,
            nbf: None,
            keys_id: 1,
        })
    }

    #[test]
    fn get_insert_and_zero_ttl() {
        let c = MokaTokenCache::new(10);
        c.insert([1; 32], mk_token(), 60);
        assert!(c.get(&[1; 32]).is_some());
        // Another token misses.
        assert!(c.get(&[9; 32]).is_none());
        c.insert([2; 32], mk_token(), 0);
        assert!(c.get(&[2; 32]).is_none());
    }

    #[test]
    fn entries_expire() {
        let c = MokaTokenCache::new(10);
        c.insert([3; 32], mk_token(), 1);
        std::thread::sleep(Duration::from_millis(1100));
        assert!(c.get(&[3; 32]).is_none());
    }
}
