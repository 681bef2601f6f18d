//! JWTs minted at run time (ES256, a fresh P-256 key per signer) for Envoy's `jwt_authn`
//! filter: the replay of `jwtClaims` cases, whose claims count as verified upstream. The
//! token carries exactly the case's claims; `jwt_authn` verifies it against [`JwtSigner::jwks`]
//! and hands the payload to ext_authz as dynamic metadata.

use anyhow::{anyhow, Result};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use ring::rand::SystemRandom;
use ring::signature::{EcdsaKeyPair, KeyPair as _, ECDSA_P256_SHA256_FIXED_SIGNING};
use serde_json::{json, Value};

/// The key id of every minted token.
pub const KID: &str = "meshauthz-e2e";

pub struct JwtSigner {
    key: EcdsaKeyPair,
    rng: SystemRandom,
    jwks: String,
}

impl std::fmt::Debug for JwtSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwtSigner")
            .field("jwks", &self.jwks)
            .finish()
    }
}

impl JwtSigner {
    pub fn new() -> Result<Self> {
        let rng = SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
            .map_err(|e| anyhow!("generating an ES256 key: {e}"))?;
        let key = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng)
            .map_err(|e| anyhow!("loading the ES256 key: {e}"))?;
        // Uncompressed point: 0x04 || x (32 bytes) || y (32 bytes).
        let point = key.public_key().as_ref();
        if point.len() != 65 {
            return Err(anyhow!(
                "unexpected P-256 public key length {}",
                point.len()
            ));
        }
        let jwks = json!({"keys": [{
            "kty": "EC", "crv": "P-256", "alg": "ES256", "use": "sig", "kid": KID,
            "x": URL_SAFE_NO_PAD.encode(&point[1..33]),
            "y": URL_SAFE_NO_PAD.encode(&point[33..65]),
        }]})
        .to_string();
        Ok(JwtSigner { key, rng, jwks })
    }

    /// The public JWKS (one EC key).
    pub fn jwks(&self) -> &str {
        &self.jwks
    }

    /// A compact JWS whose payload is exactly `claims`.
    pub fn mint(&self, claims: &Value) -> Result<String> {
        let header = json!({"alg": "ES256", "typ": "JWT", "kid": KID});
        let signing_input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(claims.to_string())
        );
        let sig = self
            .key
            .sign(&self.rng, signing_input.as_bytes())
            .map_err(|e| anyhow!("signing: {e}"))?;
        Ok(format!(
            "{signing_input}.{}",
            URL_SAFE_NO_PAD.encode(sig.as_ref())
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_shape() {
        let s = JwtSigner::new().unwrap();
        let t = s.mint(&json!({"iss": "a", "sub": "b"})).unwrap();
        let parts: Vec<&str> = t.split('.').collect();
        assert_eq!(parts.len(), 3);
        let payload: Value =
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[1]).unwrap()).unwrap();
        assert_eq!(payload, json!({"iss": "a", "sub": "b"}));
        assert_eq!(URL_SAFE_NO_PAD.decode(parts[2]).unwrap().len(), 64);
        assert!(s.jwks().contains("\"crv\":\"P-256\""));
    }
}
