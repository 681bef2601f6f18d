//! The verified-token cache interface. Verifying a JWT signature costs tens of microseconds; a
//! host (the ext_authz server) keeps verified tokens in a cache it owns (moka) and lends it to
//! [`crate::decide_with`]. The engine stays pure: it only calls `get` and `insert`.
//!
//! What is cached is a signature check, not a decision: the claims of a token whose signature
//! verified against one key set. Issuer, audience, `exp` and `nbf` are checked on every request,
//! so policy reloads need no invalidation; a key set carries its own id, so rotated keys miss.

use std::sync::Arc;

/// A token whose signature verified against the key set `keys_id`.
#[derive(Debug, Clone, PartialEq)]
pub struct VerifiedToken {
    /// The payload as JSON, as sent.
    pub claims: serde_json::Map<String, serde_json::Value>,
    /// The decoded payload text (for `outputPayloadToHeader`).
    pub payload: String,
    pub iss: String,
    pub audiences: Vec<String>,
    /// The token's `exp`, if any: an entry must not outlive it.
    pub exp: Option<u64>,
    pub nbf: Option<u64>,
    /// [`crate::jwt::KeySet::id`] of the keys that verified the signature.
    pub keys_id: u64,
}

/// Cache key: SHA-256 of the raw token.
pub type TokenKey = [u8; 32];

pub trait TokenCache: Send + Sync {
    fn get(&self, key: &TokenKey) -> Option<Arc<VerifiedToken>>;
    /// `ttl_secs`: how long the entry may live (never past `exp`).
    fn insert(&self, key: TokenKey, token: Arc<VerifiedToken>, ttl_secs: u64);
}

/// No caching (the CLI, tests).
#[derive(Debug, Clone, Copy, Default)]
pub struct NoCache;

impl TokenCache for NoCache {
    fn get(&self, _: &TokenKey) -> Option<Arc<VerifiedToken>> {
        None
    }
    fn insert(&self, _: TokenKey, _: Arc<VerifiedToken>, _: u64) {}
}
