//! Shape check of a JSON Web Key Set, shared by validation (inline `jwks`) and the hosts that
//! fetch `jwksUri`. Key material is interpreted by the engine.

/// Checks that `text` is a JWKS: a JSON object with a `keys` array of objects that each name a
/// `kty`. Returns the number of keys.
pub fn parse_jwks(text: &str) -> Result<usize, String> {
    let value: serde_json::Value = serde_json::from_str(text).map_err(|e| {
        format!("not valid JSON: {e}; give a JSON Web Key Set `{{\"keys\": [...]}}`")
    })?;
    let keys = value
        .get("keys")
        .and_then(|k| k.as_array())
        .ok_or("a JSON Web Key Set needs a `keys` array")?;
    for (i, k) in keys.iter().enumerate() {
        if k.get("kty").and_then(|t| t.as_str()).is_none() {
            return Err(format!("key {i} has no `kty`"));
        }
    }
    Ok(keys.len())
}
