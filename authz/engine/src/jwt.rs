//! RequestAuthentication: finding, verifying and applying JWTs the way Istio's Envoy
//! `jwt_authn` filter does (istio-semantics.md §3, §6.1 SB-2021-001 / CVE-2026-31837 /
//! CVE-2019-12995, §6.3).
//!
//! Everything here is pure and synchronous: no I/O and no clock reads (`now` is passed in, in
//! seconds since the Unix epoch). JWKS fetching and caching belong to the caller, which hands
//! over a parsed [`KeySet`] per provider, or `None` when it has none (a `jwksUri` never fetched):
//! tokens of that issuer then fail with [`JwtError::NoKeys`] (401), never pass.
//!
//! The pieces, in request order:
//!
//! * [`find_tokens`] collects the tokens from every location any provider reads (Istio's default
//!   when a rule configures none: `Authorization: Bearer <t>` and `?access_token=<t>`). A token
//!   in a location no rule reads is not a token.
//! * [`authenticate`] decides for the whole request: no token → [`AuthnOutcome::NoToken`] (only
//!   an AuthorizationPolicy can reject it); every token present must verify against a provider
//!   that reads its location and whose issuer is the token's `iss`; a token from an issuer
//!   nobody configured is rejected (ISTIO-SECURITY-2021-001), as is any malformed token.
//! * [`verify`] checks one token against one provider: format, algorithm, issuer, key (by
//!   `kid`/`alg`), signature, `exp`/`nbf` with Envoy's 60 s clock skew, then audiences.
//! * [`normalize_claims`] and [`upstream_headers`] turn a verified payload into matching input
//!   and into the header changes Envoy makes upstream.
//!
//! Where Envoy and the reference are silent, this module picks the stricter reading; each such
//! choice is noted on the item it concerns.

use std::fmt;
use std::sync::Arc;

use sha2::Digest;

use base64::alphabet;
use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig, URL_SAFE_NO_PAD};
use base64::engine::DecodePaddingMode;
use base64::Engine as _;
use jsonwebtoken::{Algorithm, DecodingKey};
use policy_compiler::compile::JwtProvider;
use serde_json::{Map, Value};

/// Longest token accepted; anything longer is [`JwtError::Malformed`] without being decoded.
pub const MAX_TOKEN_BYTES: usize = 64 * 1024;

/// Envoy's default `exp`/`nbf` clock skew (Istio does not set `clock_skew_seconds`).
pub const CLOCK_SKEW_SECS: u64 = 60;

/// Istio's default token locations when a rule configures none.
const DEFAULT_HEADER: &str = "authorization";
const DEFAULT_PREFIX: &str = "Bearer ";
const DEFAULT_PARAM: &str = "access_token";

/// Identifiers longer than this are shortened in error values (they end up in logs).
const MAX_ECHO_CHARS: usize = 128;

/// base64url that accepts input with or without `=` padding (as Envoy's
/// `WebSafeBase64Unescape` does) but rejects non-canonical trailing bits.
const B64URL: GeneralPurpose = GeneralPurpose::new(
    &alphabet::URL_SAFE,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

// ---------------------------------------------------------------------------------------------
// Key sets
// ---------------------------------------------------------------------------------------------

/// What a usable key is, which decides the token algorithms it can verify.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum KeyKind {
    Rsa,
    EcP256,
    EcP384,
    Ed25519,
    Oct,
}

impl KeyKind {
    /// Whether a token signed with `alg` can be verified with this kind of key. This is the
    /// key-confusion guard: an HMAC token never meets an RSA/EC key (nor the other way round).
    fn supports(self, alg: Algorithm) -> bool {
        match self {
            Self::Rsa => matches!(
                alg,
                Algorithm::RS256
                    | Algorithm::RS384
                    | Algorithm::RS512
                    | Algorithm::PS256
                    | Algorithm::PS384
                    | Algorithm::PS512
            ),
            Self::EcP256 => alg == Algorithm::ES256,
            Self::EcP384 => alg == Algorithm::ES384,
            Self::Ed25519 => alg == Algorithm::EdDSA,
            Self::Oct => matches!(alg, Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512),
        }
    }

    fn name(self) -> &'static str {
        match self {
            Self::Rsa => "RSA",
            Self::EcP256 => "EC P-256",
            Self::EcP384 => "EC P-384",
            Self::Ed25519 => "OKP Ed25519",
            Self::Oct => "oct",
        }
    }
}

/// One usable key of a JWKS.
#[derive(Clone)]
struct Jwk {
    /// `kid`; an empty `kid` counts as none.
    kid: Option<String>,
    /// `alg` when the JWK declares one: the key then only verifies tokens of that `alg`.
    alg: Option<String>,
    kind: KeyKind,
    key: DecodingKey,
}

/// A parsed JSON Web Key Set: the usable keys, each with its kid, its algorithm family and a
/// DecodingKey.
///
/// Supported: `RSA` (2048–8192 bit modulus, `e` of 3 or 65537, `alg` absent or RS*/PS*), `EC`
/// on P-256 and P-384 (`alg` and `crv` must agree when both are given; neither means P-256, as
/// in Envoy), `OKP` Ed25519 and `oct` (HS256/384/512). Every other key, including one of a
/// supported type whose material does not decode, is skipped and counted in
/// [`skipped`](Self::skipped); a JWKS whose keys are all skipped is empty, and its tokens fail
/// with [`JwtError::NoKeys`]. `use` and private members (`d`, …) are ignored.
#[derive(Clone)]
pub struct KeySet {
    keys: Vec<Jwk>,
    skipped: usize,
    /// Unique per parse, so the verified-token cache can tell rotated keys apart.
    id: u64,
}

static NEXT_KEY_SET_ID: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

impl fmt::Debug for KeySet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        struct KeyDesc<'a>(&'a Jwk);
        impl fmt::Debug for KeyDesc<'_> {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}", self.0.kind.name())?;
                if let Some(kid) = &self.0.kid {
                    write!(f, " kid={kid:?}")?;
                }
                if let Some(alg) = &self.0.alg {
                    write!(f, " alg={alg}")?;
                }
                Ok(())
            }
        }
        f.debug_struct("KeySet")
            .field("keys", &self.keys.iter().map(KeyDesc).collect::<Vec<_>>())
            .field("skipped", &self.skipped)
            .finish()
    }
}

impl KeySet {
    /// Parses JWKS JSON. Keys of unsupported kty/crv are skipped (counted in `skipped()`), never
    /// an error; invalid JSON is Err(message).
    ///
    /// A document that is not an object, or has no `keys` array, is also an error (Envoy's
    /// `JwksNoKeys` / `JwksBadKeys`).
    pub fn parse(jwks_json: &str) -> Result<KeySet, String> {
        let doc: Value =
            serde_json::from_str(jwks_json).map_err(|e| format!("jwks is not valid json: {e}"))?;
        let Value::Object(doc) = doc else {
            return Err("jwks is not a json object".to_string());
        };
        let entries = match doc.get("keys") {
            Some(Value::Array(entries)) => entries,
            Some(_) => return Err("jwks `keys` field is not an array".to_string()),
            None => return Err("jwks has no `keys` field".to_string()),
        };
        let mut set = KeySet {
            keys: Vec::new(),
            skipped: 0,
            id: NEXT_KEY_SET_ID.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
        };
        for entry in entries {
            match entry.as_object().and_then(parse_jwk) {
                Some(key) => set.keys.push(key),
                None => set.skipped += 1,
            }
        }
        Ok(set)
    }

    /// Number of usable keys.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Number of `keys` entries that were skipped (unsupported or unusable).
    pub fn skipped(&self) -> usize {
        self.skipped
    }

    /// Identity of this parsed set (a new parse of the same JSON gets a new id).
    pub fn id(&self) -> u64 {
        self.id
    }

    pub fn has_kid(&self, kid: &str) -> bool {
        self.keys.iter().any(|k| k.kid.as_deref() == Some(kid))
    }
}

/// `Some(None)` when absent, `Some(Some(s))` for a string, `None` (skip the key) otherwise.
fn optional_string(obj: &Map<String, Value>, name: &str) -> Option<Option<String>> {
    match obj.get(name) {
        None => Some(None),
        Some(Value::String(s)) => Some(Some(s.clone())),
        Some(_) => None,
    }
}

fn required_bytes(obj: &Map<String, Value>, name: &str) -> Option<Vec<u8>> {
    B64URL.decode(obj.get(name)?.as_str()?).ok()
}

fn strip_leading_zeros(bytes: &[u8]) -> &[u8] {
    let start = bytes.iter().position(|&b| b != 0).unwrap_or(bytes.len());
    bytes.get(start..).unwrap_or_default()
}

fn bit_length(be: &[u8]) -> usize {
    match be.first() {
        Some(&first) => (be.len() - 1) * 8 + (8 - first.leading_zeros() as usize),
        None => 0,
    }
}

/// A big-endian coordinate as exactly `size` bytes (left-padded), or None if it is longer.
fn fixed_width(bytes: &[u8], size: usize) -> Option<Vec<u8>> {
    let value = strip_leading_zeros(bytes);
    if value.len() > size {
        return None;
    }
    let mut out = vec![0u8; size - value.len()];
    out.extend_from_slice(value);
    Some(out)
}

fn parse_jwk(obj: &Map<String, Value>) -> Option<Jwk> {
    let kty = obj.get("kty")?.as_str()?;
    // Envoy: an empty kid is "no kid" (matches any token kid).
    let kid = optional_string(obj, "kid")?.filter(|k| !k.is_empty());
    let alg = optional_string(obj, "alg")?;
    let (kind, key) = match kty {
        "RSA" => rsa_key(obj, alg.as_deref())?,
        "EC" => ec_key(obj, alg.as_deref())?,
        "OKP" => okp_key(obj, alg.as_deref())?,
        "oct" => oct_key(obj, alg.as_deref())?,
        _ => return None,
    };
    Some(Jwk {
        kid,
        alg,
        kind,
        key,
    })
}

fn rsa_key(obj: &Map<String, Value>, alg: Option<&str>) -> Option<(KeyKind, DecodingKey)> {
    if let Some(alg) = alg {
        if !matches!(
            alg,
            "RS256" | "RS384" | "RS512" | "PS256" | "PS384" | "PS512"
        ) {
            return None;
        }
    }
    let n_raw = required_bytes(obj, "n")?;
    let e_raw = required_bytes(obj, "e")?;
    let n = strip_leading_zeros(&n_raw);
    let e = strip_leading_zeros(&e_raw);
    // Envoy rejects non-standard exponents early; ring verifies 2048..=8192-bit moduli only.
    if e != [3] && e != [1, 0, 1] {
        return None;
    }
    if !(2048..=8192).contains(&bit_length(n)) {
        return None;
    }
    Some((KeyKind::Rsa, DecodingKey::from_rsa_raw_components(n, e)))
}

fn ec_key(obj: &Map<String, Value>, alg: Option<&str>) -> Option<(KeyKind, DecodingKey)> {
    let crv = match obj.get("crv") {
        None => None,
        Some(Value::String(c)) => Some(c.as_str()),
        Some(_) => return None,
    };
    let (kind, size) = match (alg, crv) {
        (None | Some("ES256"), None | Some("P-256")) => (KeyKind::EcP256, 32),
        (None | Some("ES384"), Some("P-384")) | (Some("ES384"), None) => (KeyKind::EcP384, 48),
        // P-521/ES512 (not offered by jsonwebtoken), other curves, alg/crv disagreement.
        _ => return None,
    };
    let x = fixed_width(&required_bytes(obj, "x")?, size)?;
    let y = fixed_width(&required_bytes(obj, "y")?, size)?;
    let key =
        DecodingKey::from_ec_components(&URL_SAFE_NO_PAD.encode(x), &URL_SAFE_NO_PAD.encode(y))
            .ok()?;
    Some((kind, key))
}

fn okp_key(obj: &Map<String, Value>, alg: Option<&str>) -> Option<(KeyKind, DecodingKey)> {
    if alg.is_some_and(|a| a != "EdDSA") {
        return None;
    }
    if obj.get("crv")?.as_str()? != "Ed25519" {
        return None;
    }
    let x = required_bytes(obj, "x")?;
    if x.len() != 32 {
        return None;
    }
    let key = DecodingKey::from_ed_components(&URL_SAFE_NO_PAD.encode(x)).ok()?;
    Some((KeyKind::Ed25519, key))
}

fn oct_key(obj: &Map<String, Value>, alg: Option<&str>) -> Option<(KeyKind, DecodingKey)> {
    if alg.is_some_and(|a| !matches!(a, "HS256" | "HS384" | "HS512")) {
        return None;
    }
    let k = required_bytes(obj, "k")?;
    if k.is_empty() {
        return None;
    }
    Some((KeyKind::Oct, DecodingKey::from_secret(&k)))
}

// ---------------------------------------------------------------------------------------------
// Token locations
// ---------------------------------------------------------------------------------------------

/// Where a token was found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenLocation {
    /// A request header (lower-case name, as configured).
    Header(String),
    /// A query parameter.
    Param(String),
    /// A cookie.
    Cookie(String),
}

impl fmt::Display for TokenLocation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Header(name) => write!(f, "header `{name}`"),
            Self::Param(name) => write!(f, "query parameter `{name}`"),
            Self::Cookie(name) => write!(f, "cookie `{name}`"),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FoundToken {
    pub token: String,
    pub location: TokenLocation,
    /// indexes into the providers slice whose configured locations include this one
    pub providers: Vec<usize>,
}

/// One location a provider reads.
enum Location<'a> {
    Header { name: &'a str, prefix: &'a str },
    Param(&'a str),
    Cookie(&'a str),
}

fn provider_locations(provider: &JwtProvider) -> Vec<Location<'_>> {
    if provider.from_headers.is_empty()
        && provider.from_params.is_empty()
        && provider.from_cookies.is_empty()
    {
        return vec![
            Location::Header {
                name: DEFAULT_HEADER,
                prefix: DEFAULT_PREFIX,
            },
            Location::Param(DEFAULT_PARAM),
        ];
    }
    let headers = provider
        .from_headers
        .iter()
        .filter(|(name, _)| !name.is_empty())
        .map(|(name, prefix)| Location::Header {
            name: name.as_str(),
            prefix: prefix.as_str(),
        });
    let params = provider
        .from_params
        .iter()
        .filter(|p| !p.is_empty())
        .map(|p| Location::Param(p.as_str()));
    let cookies = provider
        .from_cookies
        .iter()
        .filter(|c| !c.is_empty())
        .map(|c| Location::Cookie(c.as_str()));
    headers.chain(params).chain(cookies).collect()
}

fn trim_ows(s: &str) -> &str {
    s.trim_matches(|c| c == ' ' || c == '\t')
}

fn hex_value(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Decodes `%XX` escapes; an invalid escape stays as written and `+` stays `+` (as in Envoy).
/// Bytes that do not form UTF-8 become U+FFFD, so such a token fails to parse (401).
fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        if b == b'%' {
            let hi = bytes.get(i + 1).copied().and_then(hex_value);
            let lo = bytes.get(i + 2).copied().and_then(hex_value);
            if let (Some(hi), Some(lo)) = (hi, lo) {
                out.push(hi * 16 + lo);
                i += 3;
                continue;
            }
        }
        out.push(b);
        i += 1;
    }
    match String::from_utf8(out) {
        Ok(s) => s,
        Err(e) => String::from_utf8_lossy(e.as_bytes()).into_owned(),
    }
}

/// `(name, value)` pairs of a raw query string, both percent-decoded, in order.
fn query_params(query: Option<&str>) -> Vec<(String, String)> {
    let Some(query) = query else {
        return Vec::new();
    };
    let query = query.split_once('#').map_or(query, |(q, _)| q);
    query
        .split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            (percent_decode(name), percent_decode(value))
        })
        .collect()
}

/// `(name, value)` pairs of every `cookie` header, in order; a value in double quotes loses
/// them (as Envoy's cookie parser does).
fn cookies(headers: &[(String, String)]) -> Vec<(&str, &str)> {
    let mut out = Vec::new();
    for (name, value) in headers {
        if !name.eq_ignore_ascii_case("cookie") {
            continue;
        }
        for pair in value.split(';') {
            let Some((k, v)) = pair.split_once('=') else {
                continue;
            };
            let v = trim_ows(v);
            let v = v
                .strip_prefix('"')
                .and_then(|inner| inner.strip_suffix('"'))
                .unwrap_or(v);
            out.push((trim_ows(k), v));
        }
    }
    out
}

fn add_token(found: &mut Vec<FoundToken>, token: &str, location: TokenLocation, provider: usize) {
    if token.is_empty() {
        return;
    }
    if let Some(existing) = found
        .iter_mut()
        .find(|t| t.token == token && t.location == location)
    {
        if !existing.providers.contains(&provider) {
            existing.providers.push(provider);
        }
        return;
    }
    found.push(FoundToken {
        token: token.to_string(),
        location,
        providers: vec![provider],
    });
}

/// Collects the tokens of a request from every location any provider reads. Istio's default
/// when a provider configures no location: header `authorization` with prefix `Bearer ` and
/// query param `access_token`. Header prefix matching is exact and case-sensitive (a configured
/// prefix "Bearer " does not accept "bearer x"); the token is the rest of the value after the
/// prefix, trimmed. `headers` are (lower-case name, value) pairs, repeated headers as separate
/// entries. `query` is the raw query string (no '?'), parameters split at '&' and '=' and
/// percent-decoded. Cookies come from every `cookie` header (`a=b; c=d`). The same token string
/// at the same location counts once.
///
/// Details: a header value is trimmed of spaces/tabs before the prefix is matched (the HTTP
/// codec does that); an empty token is no token; every value of a repeated header, parameter or
/// cookie is a token of its own (Envoy reads only one; reading all of them is stricter, since
/// every token must verify). Order: providers in order, each provider's headers, then
/// parameters, then cookies, values in request order.
pub fn find_tokens(
    providers: &[JwtProvider],
    headers: &[(String, String)],
    query: Option<&str>,
) -> Vec<FoundToken> {
    let params = query_params(query);
    let cookies = cookies(headers);
    let mut found = Vec::new();
    for (index, provider) in providers.iter().enumerate() {
        for location in provider_locations(provider) {
            match location {
                Location::Header { name, prefix } => {
                    for (_, value) in headers.iter().filter(|(h, _)| h.eq_ignore_ascii_case(name)) {
                        let value = trim_ows(value);
                        let token = if prefix.is_empty() {
                            Some(value)
                        } else {
                            value.strip_prefix(prefix).map(trim_ows)
                        };
                        if let Some(token) = token {
                            add_token(
                                &mut found,
                                token,
                                TokenLocation::Header(name.to_string()),
                                index,
                            );
                        }
                    }
                }
                Location::Param(name) => {
                    for (_, value) in params.iter().filter(|(p, _)| p == name) {
                        add_token(
                            &mut found,
                            value,
                            TokenLocation::Param(name.to_string()),
                            index,
                        );
                    }
                }
                Location::Cookie(name) => {
                    for (_, value) in cookies.iter().filter(|(c, _)| *c == name) {
                        add_token(
                            &mut found,
                            value,
                            TokenLocation::Cookie(name.to_string()),
                            index,
                        );
                    }
                }
            }
        }
    }
    found
}

// ---------------------------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------------------------

/// Why a token was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JwtError {
    /// The token cannot be decoded, or a registered claim has the wrong type.
    #[error("malformed token: {0}")]
    Malformed(String),
    /// `alg` is `none` or an algorithm this verifier does not implement (e.g. ES512).
    #[error("unsupported token algorithm `{0}`")]
    UnsupportedAlgorithm(String),
    /// No provider (that reads the token's location) has the token's `iss`.
    #[error("token issuer `{0}` is not configured")]
    IssuerNotConfigured(String),
    /// The provider of this issuer has no usable keys (never fetched, or none parsed).
    #[error("no verification keys for issuer `{0}`")]
    NoKeys(String),
    /// The token names a `kid` that no key has (and no key lacks a kid).
    #[error("no key with kid `{0}`")]
    KidNotFound(String),
    /// The keys the `kid` selects all declare an `alg` other than the token's.
    #[error("no key for token algorithm `{0}`")]
    KeyAlgMismatch(String),
    /// No candidate key verifies the signature (including algorithm/key-type confusion).
    #[error("token signature does not verify")]
    BadSignature,
    /// `exp` is more than the clock skew in the past.
    #[error("token is expired")]
    Expired,
    /// `nbf` is more than the clock skew in the future.
    #[error("token is not yet valid")]
    NotYetValid,
    /// Audiences are configured and none is in the token's `aud`.
    #[error("token audiences are not allowed")]
    AudienceNotAllowed,
}

impl JwtError {
    /// Envoy's answer: 401 for everything except AudienceNotAllowed (403).
    pub fn status(&self) -> u16 {
        match self {
            Self::AudienceNotAllowed => 403,
            _ => 401,
        }
    }

    /// Envoy-like body text e.g. "Jwt is expired", "Jwt issuer is not configured", "Jwt
    /// verification fails", "Audiences in Jwt are not allowed" (Envoy's `getStatusString`).
    pub fn body(&self) -> &'static str {
        match self {
            Self::Malformed(message) => Malformation::body_for(message),
            Self::UnsupportedAlgorithm(_) => "Jwt header [alg] is not supported",
            Self::IssuerNotConfigured(_) => "Jwt issuer is not configured",
            Self::NoKeys(_) => "Jwks doesn't have any valid public key",
            Self::KidNotFound(_) | Self::KeyAlgMismatch(_) => {
                "Jwks doesn't have key to match kid or alg from Jwt"
            }
            Self::BadSignature => "Jwt verification fails",
            Self::Expired => "Jwt is expired",
            Self::NotYetValid => "Jwt not yet valid",
            Self::AudienceNotAllowed => "Audiences in Jwt are not allowed",
        }
    }
}

/// The ways a token can be malformed: our message (in `JwtError::Malformed`) and Envoy's body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Malformation {
    TooLong,
    BadFormat,
    HeaderBase64,
    HeaderJson,
    BadAlg,
    BadKid,
    PayloadBase64,
    PayloadJson,
    IssNotString,
    SubNotString,
    JtiNotString,
    AudNotString,
    IatNotInteger,
    IatOutOfRange,
    NbfNotInteger,
    NbfOutOfRange,
    ExpNotInteger,
    ExpOutOfRange,
    SignatureBase64,
}

impl Malformation {
    const ALL: [Malformation; 19] = [
        Self::TooLong,
        Self::BadFormat,
        Self::HeaderBase64,
        Self::HeaderJson,
        Self::BadAlg,
        Self::BadKid,
        Self::PayloadBase64,
        Self::PayloadJson,
        Self::IssNotString,
        Self::SubNotString,
        Self::JtiNotString,
        Self::AudNotString,
        Self::IatNotInteger,
        Self::IatOutOfRange,
        Self::NbfNotInteger,
        Self::NbfOutOfRange,
        Self::ExpNotInteger,
        Self::ExpOutOfRange,
        Self::SignatureBase64,
    ];

    const BAD_FORMAT_BODY: &'static str =
        "Jwt is not in the form of Header.Payload.Signature with two dots and 3 sections";

    fn message(self) -> &'static str {
        match self {
            Self::TooLong => "token is longer than 65536 bytes",
            Self::BadFormat => "token is not three non-empty parts separated by two dots",
            Self::HeaderBase64 => "token header is not base64url",
            Self::HeaderJson => "token header is not a json object",
            Self::BadAlg => "token header `alg` is missing or not a string",
            Self::BadKid => "token header `kid` is not a string",
            Self::PayloadBase64 => "token payload is not base64url",
            Self::PayloadJson => "token payload is not a utf-8 json object",
            Self::IssNotString => "claim `iss` is not a string",
            Self::SubNotString => "claim `sub` is not a string",
            Self::JtiNotString => "claim `jti` is not a string",
            Self::AudNotString => "claim `aud` is not a string or a list of strings",
            Self::IatNotInteger => "claim `iat` is not a number",
            Self::IatOutOfRange => "claim `iat` is negative",
            Self::NbfNotInteger => "claim `nbf` is not a number",
            Self::NbfOutOfRange => "claim `nbf` is negative",
            Self::ExpNotInteger => "claim `exp` is not a number",
            Self::ExpOutOfRange => "claim `exp` is negative",
            Self::SignatureBase64 => "token signature is not base64url",
        }
    }

    fn body(self) -> &'static str {
        match self {
            Self::TooLong | Self::BadFormat => Self::BAD_FORMAT_BODY,
            Self::HeaderBase64 => "Jwt header is an invalid Base64url encoded",
            Self::HeaderJson => "Jwt header is an invalid JSON",
            Self::BadAlg => "Jwt header [alg] field is required and must be a string",
            Self::BadKid => "Jwt header [kid] field is not a string",
            Self::PayloadBase64 => "Jwt payload is an invalid Base64url encoded",
            Self::PayloadJson => "Jwt payload is an invalid JSON",
            Self::IssNotString => "Jwt payload [iss] field is not a string",
            Self::SubNotString => "Jwt payload [sub] field is not a string",
            Self::JtiNotString => "Jwt payload [jti] field is not a string",
            Self::AudNotString => "Jwt payload [aud] field is not a string or string list",
            Self::IatNotInteger => "Jwt payload [iat] field is not an integer",
            Self::IatOutOfRange => "Jwt payload [iat] field is not a positive 64 bit integer",
            Self::NbfNotInteger => "Jwt payload [nbf] field is not an integer",
            Self::NbfOutOfRange => "Jwt payload [nbf] field is not a positive 64 bit integer",
            Self::ExpNotInteger => "Jwt payload [exp] field is not an integer",
            Self::ExpOutOfRange => "Jwt payload [exp] field is not a positive 64 bit integer",
            Self::SignatureBase64 => "Jwt signature is an invalid Base64url encoded",
        }
    }

    fn body_for(message: &str) -> &'static str {
        Self::ALL
            .iter()
            .find(|m| m.message() == message)
            .map_or(Self::BAD_FORMAT_BODY, |m| m.body())
    }
}

impl From<Malformation> for JwtError {
    fn from(m: Malformation) -> Self {
        JwtError::Malformed(m.message().to_string())
    }
}

/// An attacker-controlled identifier, shortened for error values and logs.
fn clip(s: &str) -> String {
    match s.char_indices().nth(MAX_ECHO_CHARS) {
        Some((end, _)) => format!("{}…", s.get(..end).unwrap_or_default()),
        None => s.to_string(),
    }
}

// ---------------------------------------------------------------------------------------------
// Token parsing and verification
// ---------------------------------------------------------------------------------------------

/// A decoded, not yet verified token.
struct ParsedToken<'a> {
    alg: Algorithm,
    kid: Option<String>,
    iss: String,
    audiences: Vec<String>,
    exp: Option<u64>,
    nbf: Option<u64>,
    claims: Map<String, Value>,
    payload_json: String,
    /// `header.payload`, the signed bytes.
    signing_input: &'a str,
    /// The signature part without `=` padding.
    signature: &'a str,
}

fn parse_alg(name: &str) -> Option<Algorithm> {
    Some(match name {
        "RS256" => Algorithm::RS256,
        "RS384" => Algorithm::RS384,
        "RS512" => Algorithm::RS512,
        "PS256" => Algorithm::PS256,
        "PS384" => Algorithm::PS384,
        "PS512" => Algorithm::PS512,
        "ES256" => Algorithm::ES256,
        "ES384" => Algorithm::ES384,
        "EdDSA" => Algorithm::EdDSA,
        "HS256" => Algorithm::HS256,
        "HS384" => Algorithm::HS384,
        "HS512" => Algorithm::HS512,
        _ => return None,
    })
}

fn alg_name(alg: Algorithm) -> &'static str {
    match alg {
        Algorithm::RS256 => "RS256",
        Algorithm::RS384 => "RS384",
        Algorithm::RS512 => "RS512",
        Algorithm::PS256 => "PS256",
        Algorithm::PS384 => "PS384",
        Algorithm::PS512 => "PS512",
        Algorithm::ES256 => "ES256",
        Algorithm::ES384 => "ES384",
        Algorithm::EdDSA => "EdDSA",
        Algorithm::HS256 => "HS256",
        Algorithm::HS384 => "HS384",
        Algorithm::HS512 => "HS512",
    }
}

/// A string claim that must be a string when present.
fn string_claim(
    claims: &Map<String, Value>,
    name: &str,
    wrong: Malformation,
) -> Result<Option<String>, JwtError> {
    match claims.get(name) {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(wrong.into()),
    }
}

/// A NumericDate claim: a non-negative JSON number (a fraction is truncated, as Envoy's cast
/// does); any other type is malformed.
fn time_claim(
    claims: &Map<String, Value>,
    name: &str,
    not_number: Malformation,
    negative: Malformation,
) -> Result<Option<u64>, JwtError> {
    match claims.get(name) {
        None => Ok(None),
        Some(Value::Number(n)) => {
            if let Some(v) = n.as_u64() {
                return Ok(Some(v));
            }
            match n.as_f64() {
                // `as` saturates: a huge value becomes u64::MAX.
                Some(f) if f.is_finite() && f >= 0.0 => Ok(Some(f as u64)),
                _ => Err(negative.into()),
            }
        }
        Some(_) => Err(not_number.into()),
    }
}

fn parse_token(token: &str) -> Result<ParsedToken<'_>, JwtError> {
    if token.len() > MAX_TOKEN_BYTES {
        return Err(Malformation::TooLong.into());
    }
    let (signing_input, signature) = token.rsplit_once('.').ok_or(Malformation::BadFormat)?;
    let (header_b64, payload_b64) = signing_input
        .split_once('.')
        .ok_or(Malformation::BadFormat)?;
    if header_b64.is_empty()
        || payload_b64.is_empty()
        || signature.is_empty()
        || payload_b64.contains('.')
    {
        return Err(Malformation::BadFormat.into());
    }

    let header_bytes = B64URL
        .decode(header_b64)
        .map_err(|_| Malformation::HeaderBase64)?;
    let Ok(Value::Object(header)) = serde_json::from_slice::<Value>(&header_bytes) else {
        return Err(Malformation::HeaderJson.into());
    };
    let Some(Value::String(alg)) = header.get("alg") else {
        return Err(Malformation::BadAlg.into());
    };
    let alg = parse_alg(alg).ok_or_else(|| JwtError::UnsupportedAlgorithm(clip(alg)))?;
    let kid = match header.get("kid") {
        None => None,
        Some(Value::String(kid)) => Some(kid.clone()).filter(|k| !k.is_empty()),
        Some(_) => return Err(Malformation::BadKid.into()),
    };

    let payload_bytes = B64URL
        .decode(payload_b64)
        .map_err(|_| Malformation::PayloadBase64)?;
    let payload_json = String::from_utf8(payload_bytes).map_err(|_| Malformation::PayloadJson)?;
    let Ok(Value::Object(claims)) = serde_json::from_str::<Value>(&payload_json) else {
        return Err(Malformation::PayloadJson.into());
    };

    let iss = string_claim(&claims, "iss", Malformation::IssNotString)?.unwrap_or_default();
    string_claim(&claims, "sub", Malformation::SubNotString)?;
    string_claim(&claims, "jti", Malformation::JtiNotString)?;
    let audiences = match claims.get("aud") {
        None => Vec::new(),
        Some(Value::String(aud)) => vec![aud.clone()],
        Some(Value::Array(list)) => list
            .iter()
            .map(|v| v.as_str().map(str::to_string))
            .collect::<Option<Vec<_>>>()
            .ok_or(Malformation::AudNotString)?,
        Some(_) => return Err(Malformation::AudNotString.into()),
    };
    time_claim(
        &claims,
        "iat",
        Malformation::IatNotInteger,
        Malformation::IatOutOfRange,
    )?;
    let nbf = time_claim(
        &claims,
        "nbf",
        Malformation::NbfNotInteger,
        Malformation::NbfOutOfRange,
    )?;
    let exp = time_claim(
        &claims,
        "exp",
        Malformation::ExpNotInteger,
        Malformation::ExpOutOfRange,
    )?;

    if B64URL.decode(signature).is_err() {
        return Err(Malformation::SignatureBase64.into());
    }
    // jsonwebtoken decodes the signature without padding.
    let signature = signature.trim_end_matches('=');

    Ok(ParsedToken {
        alg,
        kid,
        iss,
        audiences,
        exp,
        nbf,
        claims,
        payload_json,
        signing_input,
        signature,
    })
}

/// An empty configured issuer accepts any `iss` (Envoy: "if not specified, the iss field in JWT
/// is not checked"; Istio allows it when `jwksUri` is set).
fn issuer_matches(provider: &JwtProvider, iss: &str) -> bool {
    provider.issuer.is_empty() || provider.issuer == iss
}

/// Selects candidate keys as Envoy's `verifyJwtWithoutTimeChecking` does: a key whose kid
/// differs from the token's is skipped (a key without kid is a candidate for any token), a key
/// that declares another `alg` is skipped; then every remaining key whose type supports the
/// token's algorithm is tried.
fn check_signature(token: &ParsedToken<'_>, keys: &KeySet) -> Result<(), JwtError> {
    let by_kid: Vec<&Jwk> = keys
        .keys
        .iter()
        .filter(|k| match (&token.kid, &k.kid) {
            (Some(wanted), Some(have)) => wanted == have,
            _ => true,
        })
        .collect();
    if by_kid.is_empty() {
        return Err(JwtError::KidNotFound(clip(
            token.kid.as_deref().unwrap_or_default(),
        )));
    }
    let name = alg_name(token.alg);
    let candidates: Vec<&Jwk> = by_kid
        .into_iter()
        .filter(|k| k.alg.as_deref().is_none_or(|a| a == name))
        .collect();
    if candidates.is_empty() {
        return Err(JwtError::KeyAlgMismatch(name.to_string()));
    }
    let verified = candidates
        .iter()
        .filter(|k| k.kind.supports(token.alg))
        .any(|k| {
            // The kind check above keeps HMAC away from RSA/EC keys, which jsonwebtoken
            // would not survive; any error is a failed verification.
            matches!(
                jsonwebtoken::crypto::verify(
                    token.signature,
                    token.signing_input.as_bytes(),
                    &k.key,
                    token.alg
                ),
                Ok(true)
            )
        });
    if verified {
        Ok(())
    } else {
        Err(JwtError::BadSignature)
    }
}

/// `exp`/`nbf` with [`CLOCK_SKEW_SECS`]. Unlike Envoy, which treats `exp: 0` as "no expiry",
/// `exp: 0` here is a date in 1970 and therefore expired.
fn check_time(token: &ParsedToken<'_>, now: u64) -> Result<(), JwtError> {
    check_times(token.nbf, token.exp, now)
}

fn check_times(nbf: Option<u64>, exp: Option<u64>, now: u64) -> Result<(), JwtError> {
    if let Some(nbf) = nbf {
        if now.saturating_add(CLOCK_SKEW_SECS) < nbf {
            return Err(JwtError::NotYetValid);
        }
    }
    if let Some(exp) = exp {
        if now > exp.saturating_add(CLOCK_SKEW_SECS) {
            return Err(JwtError::Expired);
        }
    }
    Ok(())
}

/// Envoy's `CheckAudience` sanitizing: a leading `http://`/`https://` and one trailing `/` are
/// ignored on both sides.
fn sanitize_audience(aud: &str) -> &str {
    let rest = aud
        .strip_prefix("http://")
        .or_else(|| aud.strip_prefix("https://"))
        .unwrap_or(aud);
    rest.strip_suffix('/').unwrap_or(rest)
}

fn check_audience(token: &ParsedToken<'_>, allowed: &[String]) -> Result<(), JwtError> {
    check_audiences(&token.audiences, allowed)
}

fn check_audiences(audiences: &[String], allowed: &[String]) -> Result<(), JwtError> {
    if allowed.is_empty() {
        return Ok(());
    }
    let ok = audiences.iter().any(|aud| {
        let aud = sanitize_audience(aud);
        allowed.iter().any(|a| sanitize_audience(a) == aud)
    });
    if ok {
        Ok(())
    } else {
        Err(JwtError::AudienceNotAllowed)
    }
}

/// Everything after the issuer check.
fn verify_parsed(
    token: &ParsedToken<'_>,
    provider: &JwtProvider,
    keys: Option<&KeySet>,
    now: u64,
) -> Result<(), JwtError> {
    let keys = match keys {
        Some(keys) if !keys.is_empty() => keys,
        _ => return Err(JwtError::NoKeys(clip(&provider.issuer))),
    };
    check_signature(token, keys)?;
    check_time(token, now)?;
    check_audience(token, &provider.audiences)
}

/// Verifies one token against one provider: decode header+payload (base64url, JSON object),
/// reject alg none and any alg the key's family does not support, check `iss` ==
/// provider.issuer (IssuerNotConfigured otherwise), pick the key by kid or try every key of a
/// compatible family, verify the signature, then exp/nbf with 60 s clock skew against `now`,
/// then audiences. Returns the payload as a JSON object.
///
/// Notes: the signature is checked before `exp`/`nbf`/`aud` (Envoy checks times and audiences
/// first; only which rejection is reported differs). HMAC with an RSA/EC/Ed25519 key is
/// [`JwtError::BadSignature`] (Envoy: "Jwt verification fails"). A token `kid` with no key of
/// that kid is [`JwtError::KidNotFound`] unless some key has no kid (Envoy tries those).
/// Registered claims of the wrong type (`iss`, `sub`, `jti` not strings, `aud` not a string or
/// string list, `iat`/`nbf`/`exp` not non-negative numbers) are [`JwtError::Malformed`].
pub fn verify(
    token: &str,
    provider: &JwtProvider,
    keys: Option<&KeySet>,
    now: u64,
) -> Result<Map<String, Value>, JwtError> {
    let parsed = parse_token(token)?;
    if !issuer_matches(provider, &parsed.iss) {
        return Err(JwtError::IssuerNotConfigured(clip(&parsed.iss)));
    }
    verify_parsed(&parsed, provider, keys, now)?;
    Ok(parsed.claims)
}

// ---------------------------------------------------------------------------------------------
// Whole-request decision
// ---------------------------------------------------------------------------------------------

/// The outcome for a whole request (Istio/Envoy requires_any[P1..Pn, requires_all[Pi|allow_missing]]):
#[derive(Debug, Clone, PartialEq)]
pub enum AuthnOutcome {
    /// No token in any configured location (or a CORS preflight): the request goes on without
    /// `request.auth.*`.
    NoToken,
    /// Every token verified.
    Verified {
        /// The provider that verified `claims` (the lowest provider index among the tokens).
        provider: usize,
        /// The payload of that token, as sent (not normalized: see [`normalize_claims`]).
        claims: Map<String, Value>,
        /// The decoded payload JSON of that token, for [`upstream_headers`].
        payload: String,
        /// Every token of the request.
        tokens: Vec<FoundToken>,
    },
    /// A token is present and invalid: answer `error.status()` with `error.body()`.
    Failed {
        error: JwtError,
        location: TokenLocation,
    },
}

/// Envoy's `bypass_cors_preflight`: `OPTIONS` with a non-empty `origin` and a non-empty
/// `access-control-request-method`.
fn is_cors_preflight(method: &str, headers: &[(String, String)]) -> bool {
    let has = |name: &str| {
        headers
            .iter()
            .any(|(h, v)| h.eq_ignore_ascii_case(name) && !trim_ows(v).is_empty())
    };
    method == "OPTIONS" && has("origin") && has("access-control-request-method")
}

/// - no token in any configured location -> NoToken (the request goes on without request.auth.*);
/// - a CORS preflight (method OPTIONS with `origin` and `access-control-request-method` headers) -> NoToken without looking at tokens;
/// - every found token must verify with at least one of the providers that read its location
///   and whose issuer equals the token's `iss`; the first failure decides (a token whose `iss`
///   matches none of those providers -> IssuerNotConfigured: a token from an unconfigured
///   issuer is rejected, never treated as "no token" — ISTIO-SECURITY-2021-001); audience
///   mismatch -> AudienceNotAllowed (403);
/// - all tokens valid -> Verified with the claims of the first token (providers order), `provider` its index;
///
/// `keys(i)` returns the key set of provider i (None = no keys available, e.g. a jwksUri never
/// fetched: then tokens of that issuer fail with NoKeys, 401 — never a pass).
///
/// When several providers could verify a token they are tried in order; if all fail, the
/// first one's error is reported. This per-token rule is stricter than Envoy's per-provider
/// `requires_any`, which would accept a request whose valid token satisfies one provider while
/// another provider's location holds an invalid token.
pub fn authenticate(
    providers: &[JwtProvider],
    keys: &dyn Fn(usize) -> Option<Arc<KeySet>>,
    method: &str,
    headers: &[(String, String)],
    query: Option<&str>,
    now: u64,
) -> AuthnOutcome {
    authenticate_with(
        providers,
        keys,
        method,
        headers,
        query,
        now,
        &crate::cache::NoCache,
    )
}

/// The longest a verified token without `exp` stays cached.
const MAX_CACHE_SECS: u64 = 300;

/// [`authenticate`] with a verified-token cache: a token whose signature already verified
/// against the provider's current key set skips decoding and the signature check; issuer, time
/// and audience are still checked on every request.
pub fn authenticate_with(
    providers: &[JwtProvider],
    keys: &dyn Fn(usize) -> Option<Arc<KeySet>>,
    method: &str,
    headers: &[(String, String)],
    query: Option<&str>,
    now: u64,
    cache: &dyn crate::cache::TokenCache,
) -> AuthnOutcome {
    if is_cors_preflight(method, headers) {
        return AuthnOutcome::NoToken;
    }
    let tokens = find_tokens(providers, headers, query);
    if tokens.is_empty() {
        return AuthnOutcome::NoToken;
    }
    // (provider, claims, payload) of the token verified by the lowest provider index.
    let mut primary: Option<(usize, Map<String, Value>, String)> = None;
    for found in &tokens {
        let fail = |error: JwtError| AuthnOutcome::Failed {
            error,
            location: found.location.clone(),
        };
        let hash: crate::cache::TokenKey = sha2::Sha256::digest(found.token.as_bytes()).into();
        if let Some(hit) = cache.get(&hash) {
            match verify_cached(&hit, &found.providers, providers, keys, now) {
                CachedCheck::Verified(index) => {
                    if primary.as_ref().is_none_or(|(best, _, _)| index < *best) {
                        primary = Some((index, hit.claims.clone(), hit.payload.clone()));
                    }
                    continue;
                }
                CachedCheck::Failed(error) => return fail(error),
                // Keys changed since: verify again.
                CachedCheck::Stale => {}
            }
        }
        let parsed = match parse_token(&found.token) {
            Ok(parsed) => parsed,
            Err(error) => return fail(error),
        };
        let candidates: Vec<(usize, &JwtProvider)> = found
            .providers
            .iter()
            .filter_map(|&i| providers.get(i).map(|p| (i, p)))
            .filter(|(_, p)| issuer_matches(p, &parsed.iss))
            .collect();
        if candidates.is_empty() {
            return fail(JwtError::IssuerNotConfigured(clip(&parsed.iss)));
        }
        let mut first_error = None;
        let mut verified_by = None;
        for (index, provider) in candidates {
            let key_set = keys(index);
            match verify_parsed(&parsed, provider, key_set.as_deref(), now) {
                Ok(()) => {
                    verified_by = Some(index);
                    break;
                }
                Err(error) => {
                    first_error.get_or_insert(error);
                }
            }
        }
        let Some(index) = verified_by else {
            return fail(first_error.unwrap_or(JwtError::BadSignature));
        };
        if let Some(key_set) = keys(index) {
            let ttl = parsed
                .exp
                .map(|exp| exp.saturating_sub(now).min(MAX_CACHE_SECS))
                .unwrap_or(MAX_CACHE_SECS);
            if ttl > 0 {
                let entry = crate::cache::VerifiedToken {
                    claims: parsed.claims.clone(),
                    payload: parsed.payload_json.clone(),
                    iss: parsed.iss.clone(),
                    audiences: parsed.audiences.clone(),
                    exp: parsed.exp,
                    nbf: parsed.nbf,
                    keys_id: key_set.id(),
                };
                cache.insert(hash, Arc::new(entry), ttl);
            }
        }
        if primary.as_ref().is_none_or(|(best, _, _)| index < *best) {
            primary = Some((index, parsed.claims, parsed.payload_json));
        }
    }
    match primary {
        Some((provider, claims, payload)) => AuthnOutcome::Verified {
            provider,
            claims,
            payload,
            tokens,
        },
        // Unreachable: `tokens` is non-empty and every token either verified or returned.
        None => AuthnOutcome::NoToken,
    }
}

enum CachedCheck {
    Verified(usize),
    Failed(JwtError),
    Stale,
}

/// The per-request checks of a cached token: the same candidate providers and order as a fresh
/// verification, but the signature is trusted only while the provider's key set is the one that
/// verified it.
fn verify_cached(
    hit: &crate::cache::VerifiedToken,
    readers: &[usize],
    providers: &[JwtProvider],
    keys: &dyn Fn(usize) -> Option<Arc<KeySet>>,
    now: u64,
) -> CachedCheck {
    let mut first_error = None;
    let mut any_candidate = false;
    for &index in readers {
        let Some(provider) = providers.get(index) else {
            continue;
        };
        if !issuer_matches(provider, &hit.iss) {
            continue;
        }
        any_candidate = true;
        match keys(index) {
            Some(k) if k.id() == hit.keys_id => {}
            _ => return CachedCheck::Stale,
        }
        match check_times(hit.nbf, hit.exp, now)
            .and_then(|()| check_audiences(&hit.audiences, &provider.audiences))
        {
            Ok(()) => return CachedCheck::Verified(index),
            Err(e) => {
                first_error.get_or_insert(e);
            }
        }
    }
    if !any_candidate {
        return CachedCheck::Failed(JwtError::IssuerNotConfigured(clip(&hit.iss)));
    }
    match first_error {
        Some(e) => CachedCheck::Failed(e),
        None => CachedCheck::Stale,
    }
}

// ---------------------------------------------------------------------------------------------
// After verification
// ---------------------------------------------------------------------------------------------

/// Claim normalization for matching: for each top-level claim named in `space_delimited` whose
/// value is a string, replace it with the list of its whitespace-separated parts.
///
/// As in Envoy (`normalize_payload_in_metadata`), the separator is the ASCII space only, empty
/// parts are dropped, and a string with no parts (`""`, `"   "`) is left as it is.
pub fn normalize_claims(claims: &mut Map<String, Value>, space_delimited: &[String]) {
    for name in space_delimited {
        let Some(Value::String(value)) = claims.get(name) else {
            continue;
        };
        let parts: Vec<Value> = value
            .split(' ')
            .filter(|p| !p.is_empty())
            .map(|p| Value::String(p.to_string()))
            .collect();
        if !parts.is_empty() {
            claims.insert(name.clone(), Value::Array(parts));
        }
    }
}

/// A claim by path: `a.b.c` walks nested objects.
fn claim_at<'a>(claims: &'a Map<String, Value>, path: &str) -> Option<&'a Value> {
    let mut parts = path.split('.');
    let mut value = claims.get(parts.next()?)?;
    for part in parts {
        value = value.as_object()?.get(part)?;
    }
    Some(value)
}

/// A header value for a claim: strings (non-empty, no control characters other than tab),
/// integers and booleans; anything else (floats, lists, objects, null) gives none.
fn claim_header_value(value: &Value) -> Option<String> {
    match value {
        Value::String(s) => {
            let safe = !s.is_empty() && !s.chars().any(|c| c.is_control() && c != '\t');
            safe.then(|| s.clone())
        }
        Value::Number(n) if n.is_i64() || n.is_u64() => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// Upstream header effects of RequestAuthentication for a verified request: (headers to set,
/// headers to remove). outputPayloadToHeader -> base64url (no padding) of the payload JSON;
/// outputClaimToHeaders -> the claim value when it is a string, integer or bool, nested claims
/// `a.b.c`; the token's header is removed unless forward_original_token (for a header location
/// only; param/cookie tokens stay).
///
/// Pass the claims as verified (before [`normalize_claims`]) and the tokens this provider
/// verified (for one provider, all of `AuthnOutcome::Verified::tokens`): every header token in
/// `tokens` is removed unless this provider forwards tokens. Header names are lower-cased; a
/// header to set replaces any value the client sent; claim strings holding control characters
/// are not copied (header injection).
pub fn upstream_headers(
    provider: &JwtProvider,
    claims: &Map<String, Value>,
    payload_json: &str,
    tokens: &[FoundToken],
) -> (Vec<(String, String)>, Vec<String>) {
    let mut set = Vec::new();
    if let Some(header) = provider
        .output_payload_to_header
        .as_deref()
        .filter(|h| !h.is_empty())
    {
        set.push((
            header.to_ascii_lowercase(),
            URL_SAFE_NO_PAD.encode(payload_json.as_bytes()),
        ));
    }
    for (header, claim) in &provider.output_claim_to_headers {
        if header.is_empty() {
            continue;
        }
        if let Some(value) = claim_at(claims, claim).and_then(claim_header_value) {
            set.push((header.to_ascii_lowercase(), value));
        }
    }
    let mut remove: Vec<String> = Vec::new();
    if !provider.forward_original_token {
        for token in tokens {
            if let TokenLocation::Header(name) = &token.location {
                let name = name.to_ascii_lowercase();
                if !remove.contains(&name) {
                    remove.push(name);
                }
            }
        }
    }
    (set, remove)
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::EncodingKey;
    use policy_compiler::compile::ResourceKey;
    use proptest::prelude::*;
    use serde_json::json;

    const ISS: &str = "https://issuer.example.com";
    const NOW: u64 = 1_700_000_000;

    const RSA_PRIVATE: &[u8] = include_bytes!("../tests/fixtures/rsa-private.pem");
    const RSA_PUBLIC: &[u8] = include_bytes!("../tests/fixtures/rsa-public.pem");
    const EC_PRIVATE: &[u8] = include_bytes!("../tests/fixtures/ec-private.pem");
    const ED_PRIVATE: &[u8] = include_bytes!("../tests/fixtures/ed25519-private.pem");
    const JWKS_ALL: &str = include_str!("../tests/fixtures/jwks.json");
    const JWKS_RSA: &str = include_str!("../tests/fixtures/rsa.jwks.json");
    const JWKS_EC: &str = include_str!("../tests/fixtures/ec.jwks.json");

    fn provider(issuer: &str) -> JwtProvider {
        JwtProvider {
            source: ResourceKey {
                namespace: "foo".to_string(),
                name: "jwt".to_string(),
            },
            rule: 0,
            line: 1,
            issuer: issuer.to_string(),
            audiences: Vec::new(),
            jwks: Some(JWKS_ALL.to_string()),
            jwks_uri: None,
            fetch_timeout: std::time::Duration::from_secs(5),
            from_headers: Vec::new(),
            from_params: Vec::new(),
            from_cookies: Vec::new(),
            output_payload_to_header: None,
            forward_original_token: false,
            output_claim_to_headers: Vec::new(),
            space_delimited_claims: vec!["scope".to_string(), "permission".to_string()],
        }
    }

    fn keys(jwks: &str) -> KeySet {
        KeySet::parse(jwks).unwrap()
    }

    fn b64(bytes: &[u8]) -> String {
        URL_SAFE_NO_PAD.encode(bytes)
    }

    /// Signs `header.payload` exactly as given (so tests control every header field).
    fn sign(alg: Algorithm, key: &EncodingKey, header: &Value, payload: &Value) -> String {
        let input = format!(
            "{}.{}",
            b64(header.to_string().as_bytes()),
            b64(payload.to_string().as_bytes())
        );
        let sig = jsonwebtoken::crypto::sign(input.as_bytes(), key, alg).unwrap();
        format!("{input}.{sig}")
    }

    fn rsa_key() -> EncodingKey {
        EncodingKey::from_rsa_pem(RSA_PRIVATE).unwrap()
    }

    fn ec_key() -> EncodingKey {
        EncodingKey::from_ec_pem(EC_PRIVATE).unwrap()
    }

    fn claims(extra: Value) -> Value {
        let mut base = json!({"iss": ISS, "sub": "alice", "exp": NOW + 3600, "iat": NOW});
        if let (Some(base), Some(extra)) = (base.as_object_mut(), extra.as_object()) {
            for (k, v) in extra {
                if v.is_null() {
                    base.remove(k);
                } else {
                    base.insert(k.clone(), v.clone());
                }
            }
        }
        base
    }

    fn rs256(payload: Value) -> String {
        sign(
            Algorithm::RS256,
            &rsa_key(),
            &json!({"alg": "RS256", "typ": "JWT", "kid": "rsa-1"}),
            &payload,
        )
    }

    fn es256(payload: Value) -> String {
        sign(
            Algorithm::ES256,
            &ec_key(),
            &json!({"alg": "ES256", "kid": "ec-1"}),
            &payload,
        )
    }

    fn verify_all(token: &str, p: &JwtProvider) -> Result<Map<String, Value>, JwtError> {
        verify(token, p, Some(&keys(JWKS_ALL)), NOW)
    }

    fn hdr(name: &str, value: &str) -> (String, String) {
        (name.to_string(), value.to_string())
    }

    // --- KeySet ------------------------------------------------------------------------------

    #[test]
    fn keyset_parses_fixture_jwks() {
        let set = keys(JWKS_ALL);
        assert_eq!((set.len(), set.skipped(), set.is_empty()), (3, 0, false));
        assert!(set.has_kid("rsa-1") && set.has_kid("ec-1") && set.has_kid("ed-1"));
        assert!(!set.has_kid("nope"));
        let debug = format!("{set:?}");
        assert!(
            debug.contains("rsa-1") && debug.contains("EC P-256"),
            "{debug}"
        );
        // No key material in Debug output.
        let n = serde_json::from_str::<Value>(JWKS_RSA).unwrap()["keys"][0]["n"]
            .as_str()
            .unwrap()
            .to_string();
        assert!(!debug.contains(&n[..16]), "{debug}");
    }

    #[test]
    fn keyset_skips_unusable_keys() {
        let ec = serde_json::from_str::<Value>(JWKS_EC).unwrap()["keys"][0].clone();
        let jwks = json!({"keys": [
            ec,
            {"kty": "foo", "kid": "x"},
            {"kty": "EC", "crv": "P-521", "x": "AA", "y": "AA"},
            {"kty": "EC", "crv": "P-256", "alg": "ES384", "x": ec["x"], "y": ec["y"]},
            {"kty": "OKP", "crv": "X25519", "x": "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"},
            {"kty": "RSA", "e": "AQAB"},
            {"kty": "RSA", "n": "AQAB", "e": "AQAB"},
            {"kty": "oct", "k": ""},
            {"kty": "oct", "k": "c2VjcmV0", "alg": "RS256"},
            {"kid": "no-kty"},
            "not an object",
            {"kty": "oct", "k": "c2VjcmV0", "kid": "hmac"}
        ]});
        let set = keys(&jwks.to_string());
        assert_eq!((set.len(), set.skipped()), (2, 10));
        assert!(set.has_kid("ec-1") && set.has_kid("hmac"));

        let empty = keys(r#"{"keys": []}"#);
        assert!(empty.is_empty());
        for bad in ["not json", "[1]", "{}", r#"{"keys": {}}"#] {
            let err = KeySet::parse(bad).unwrap_err();
            assert!(err.starts_with("jwks "), "{err}");
        }
    }

    // --- verify: valid tokens ------------------------------------------------------------------

    #[test]
    fn valid_rs256_token() {
        let token = rs256(claims(json!({"scope": "read write"})));
        let got = verify_all(&token, &provider(ISS)).unwrap();
        assert_eq!(got["sub"], "alice");
        assert_eq!(got["scope"], "read write");
        // Also against the RSA-only JWKS.
        assert!(verify(&token, &provider(ISS), Some(&keys(JWKS_RSA)), NOW).is_ok());
    }

    #[test]
    fn valid_es256_token() {
        let token = es256(claims(json!({})));
        assert_eq!(verify_all(&token, &provider(ISS)).unwrap()["iss"], ISS);
        assert!(verify(&token, &provider(ISS), Some(&keys(JWKS_EC)), NOW).is_ok());
        // An ES256 token never verifies against the RSA key.
        assert_eq!(
            verify(&token, &provider(ISS), Some(&keys(JWKS_RSA)), NOW),
            Err(JwtError::KidNotFound("ec-1".to_string()))
        );
    }

    #[test]
    fn valid_ps256_eddsa_and_hs256_tokens() {
        let ps = sign(
            Algorithm::PS256,
            &rsa_key(),
            &json!({"alg": "PS256"}),
            &claims(json!({})),
        );
        assert!(verify_all(&ps, &provider(ISS)).is_ok());

        let ed_key = EncodingKey::from_ed_pem(ED_PRIVATE).unwrap();
        let ed = sign(
            Algorithm::EdDSA,
            &ed_key,
            &json!({"alg": "EdDSA", "kid": "ed-1"}),
            &claims(json!({})),
        );
        assert!(verify_all(&ed, &provider(ISS)).is_ok());

        let secret = b"a shared secret of enough length!";
        let oct = json!({"keys": [{"kty": "oct", "k": b64(secret), "alg": "HS256"}]}).to_string();
        let hs = sign(
            Algorithm::HS256,
            &EncodingKey::from_secret(secret),
            &json!({"alg": "HS256"}),
            &claims(json!({})),
        );
        assert!(verify(&hs, &provider(ISS), Some(&keys(&oct)), NOW).is_ok());
        // The key declares HS256: an HS384 token is not for it.
        let hs384 = sign(
            Algorithm::HS384,
            &EncodingKey::from_secret(secret),
            &json!({"alg": "HS384"}),
            &claims(json!({})),
        );
        assert_eq!(
            verify(&hs384, &provider(ISS), Some(&keys(&oct)), NOW),
            Err(JwtError::KeyAlgMismatch("HS384".to_string()))
        );
    }

    // --- verify: keys --------------------------------------------------------------------------

    #[test]
    fn kid_selects_the_key() {
        let p = provider(ISS);
        let payload = claims(json!({}));
        // No kid: every compatible key is tried.
        let no_kid = sign(
            Algorithm::RS256,
            &rsa_key(),
            &json!({"alg": "RS256"}),
            &payload,
        );
        assert!(verify_all(&no_kid, &p).is_ok());
        // A kid that names the EC key: the RSA key is not tried, and the EC key cannot do RS256.
        let wrong_kid = sign(
            Algorithm::RS256,
            &rsa_key(),
            &json!({"alg": "RS256", "kid": "ec-1"}),
            &payload,
        );
        assert_eq!(verify_all(&wrong_kid, &p), Err(JwtError::BadSignature));
        // A kid no key has.
        let unknown = sign(
            Algorithm::RS256,
            &rsa_key(),
            &json!({"alg": "RS256", "kid": "rotated"}),
            &payload,
        );
        let err = verify_all(&unknown, &p).unwrap_err();
        assert_eq!(err, JwtError::KidNotFound("rotated".to_string()));
        assert_eq!(
            (err.status(), err.body()),
            (401, "Jwks doesn't have key to match kid or alg from Jwt")
        );
        // A key without a kid is a candidate for any kid (Envoy).
        let n = serde_json::from_str::<Value>(JWKS_RSA).unwrap()["keys"][0].clone();
        let kidless = json!({"keys": [{"kty": "RSA", "n": n["n"], "e": n["e"]}]}).to_string();
        assert!(verify(&unknown, &p, Some(&keys(&kidless)), NOW).is_ok());
    }

    #[test]
    fn missing_keys_fail_closed() {
        let token = rs256(claims(json!({})));
        let err = verify(&token, &provider(ISS), None, NOW).unwrap_err();
        assert_eq!(err, JwtError::NoKeys(ISS.to_string()));
        assert_eq!(err.status(), 401);
        let empty = keys(r#"{"keys": [{"kty": "foo"}]}"#);
        assert_eq!(
            verify(&token, &provider(ISS), Some(&empty), NOW),
            Err(JwtError::NoKeys(ISS.to_string()))
        );
    }

    #[test]
    fn tampered_payload_fails() {
        let token = rs256(claims(json!({"sub": "alice"})));
        let mut parts: Vec<&str> = token.split('.').collect();
        let forged = b64(claims(json!({"sub": "admin"})).to_string().as_bytes());
        parts[1] = &forged;
        let err = verify_all(&parts.join("."), &provider(ISS)).unwrap_err();
        assert_eq!(
            (err.clone(), err.status(), err.body()),
            (JwtError::BadSignature, 401, "Jwt verification fails")
        );
    }

    // --- verify: algorithms --------------------------------------------------------------------

    #[test]
    fn alg_none_is_rejected() {
        let payload = b64(claims(json!({})).to_string().as_bytes());
        for alg in ["none", "None", "NONE"] {
            let header = b64(json!({"alg": alg}).to_string().as_bytes());
            // The usual unsigned form has an empty third part.
            let unsigned = format!("{header}.{payload}.");
            let err = verify_all(&unsigned, &provider(ISS)).unwrap_err();
            assert!(matches!(err, JwtError::Malformed(_)), "{err:?}");
            assert_eq!(err.status(), 401);
            // With some signature it is still not accepted.
            let signed = format!("{header}.{payload}.AAAA");
            let err = verify_all(&signed, &provider(ISS)).unwrap_err();
            assert_eq!(err, JwtError::UnsupportedAlgorithm(alg.to_string()));
            assert_eq!(
                (err.status(), err.body()),
                (401, "Jwt header [alg] is not supported")
            );
        }
        // ES512 (Envoy has it, jsonwebtoken does not) and junk.
        for alg in ["ES512", "HS1", ""] {
            let t = format!(
                "{}.{payload}.AAAA",
                b64(json!({"alg": alg}).to_string().as_bytes())
            );
            assert_eq!(
                verify_all(&t, &provider(ISS)),
                Err(JwtError::UnsupportedAlgorithm(alg.to_string()))
            );
        }
    }

    #[test]
    fn hs256_with_rsa_public_key_as_secret_fails() {
        // Key confusion: sign HS256 with the RSA public key (PEM bytes, and the JWK n) as secret.
        let payload = claims(json!({"sub": "admin"}));
        let n = serde_json::from_str::<Value>(JWKS_RSA).unwrap()["keys"][0]["n"]
            .as_str()
            .unwrap()
            .to_string();
        for secret in [RSA_PUBLIC.to_vec(), n.into_bytes()] {
            for header in [
                json!({"alg": "HS256"}),
                json!({"alg": "HS256", "kid": "rsa-1"}),
            ] {
                let token = sign(
                    Algorithm::HS256,
                    &EncodingKey::from_secret(&secret),
                    &header,
                    &payload,
                );
                for set in [JWKS_RSA, JWKS_ALL] {
                    let err = verify(&token, &provider(ISS), Some(&keys(set)), NOW).unwrap_err();
                    assert_eq!(err, JwtError::BadSignature);
                    assert_eq!(err.status(), 401);
                }
            }
        }
    }

    // --- verify: time --------------------------------------------------------------------------

    #[test]
    fn expiry_honours_60s_clock_skew() {
        let p = provider(ISS);
        let expired = rs256(claims(json!({"exp": NOW - 61})));
        let err = verify_all(&expired, &p).unwrap_err();
        assert_eq!(
            (err.clone(), err.status(), err.body()),
            (JwtError::Expired, 401, "Jwt is expired")
        );
        assert!(verify_all(&rs256(claims(json!({"exp": NOW - 30}))), &p).is_ok());
        assert!(verify_all(&rs256(claims(json!({"exp": NOW - 60}))), &p).is_ok());
        // No exp at all: never expires.
        assert!(verify_all(&rs256(claims(json!({"exp": null}))), &p).is_ok());
        // exp 0 is 1970, not "no expiry".
        assert_eq!(
            verify_all(&rs256(claims(json!({"exp": 0}))), &p),
            Err(JwtError::Expired)
        );
        // A fractional exp is truncated.
        assert!(verify_all(&rs256(claims(json!({"exp": (NOW + 10) as f64 + 0.5}))), &p).is_ok());
    }

    #[test]
    fn nbf_in_the_future() {
        let p = provider(ISS);
        let err = verify_all(&rs256(claims(json!({"nbf": NOW + 61}))), &p).unwrap_err();
        assert_eq!(
            (err.clone(), err.status(), err.body()),
            (JwtError::NotYetValid, 401, "Jwt not yet valid")
        );
        assert!(verify_all(&rs256(claims(json!({"nbf": NOW + 60}))), &p).is_ok());
        assert!(verify_all(&rs256(claims(json!({"nbf": NOW - 1000}))), &p).is_ok());
    }

    // --- verify: issuer and audiences ------------------------------------------------------------

    #[test]
    fn wrong_issuer() {
        let token = rs256(claims(json!({"iss": "https://evil.example.com"})));
        let err = verify_all(&token, &provider(ISS)).unwrap_err();
        assert_eq!(
            err,
            JwtError::IssuerNotConfigured("https://evil.example.com".to_string())
        );
        assert_eq!(
            (err.status(), err.body()),
            (401, "Jwt issuer is not configured")
        );
        let no_iss = rs256(claims(json!({"iss": null})));
        assert_eq!(
            verify_all(&no_iss, &provider(ISS)),
            Err(JwtError::IssuerNotConfigured(String::new()))
        );
        // A provider without issuer (jwksUri only) accepts any iss.
        assert!(verify_all(&token, &provider("")).is_ok());
    }

    #[test]
    fn audiences() {
        let mut p = provider(ISS);
        p.audiences = vec![
            "svc-a".to_string(),
            "https://svc-b.example.com/".to_string(),
        ];
        let wrong = rs256(claims(json!({"aud": "svc-c"})));
        let err = verify_all(&wrong, &p).unwrap_err();
        assert_eq!(
            (err.clone(), err.status(), err.body()),
            (
                JwtError::AudienceNotAllowed,
                403,
                "Audiences in Jwt are not allowed"
            )
        );
        assert_eq!(
            verify_all(&rs256(claims(json!({}))), &p),
            Err(JwtError::AudienceNotAllowed)
        );
        assert_eq!(
            verify_all(&rs256(claims(json!({"aud": []}))), &p),
            Err(JwtError::AudienceNotAllowed)
        );
        assert!(verify_all(&rs256(claims(json!({"aud": "svc-a"}))), &p).is_ok());
        assert!(verify_all(&rs256(claims(json!({"aud": ["other", "svc-a"]}))), &p).is_ok());
        // Scheme and trailing slash are ignored on both sides (Envoy CheckAudience).
        assert!(verify_all(&rs256(claims(json!({"aud": "svc-b.example.com"}))), &p).is_ok());
        assert!(verify_all(&rs256(claims(json!({"aud": "http://svc-a/"}))), &p).is_ok());
        // Case matters.
        assert_eq!(
            verify_all(&rs256(claims(json!({"aud": "SVC-A"}))), &p),
            Err(JwtError::AudienceNotAllowed)
        );
        // No audiences configured: not checked.
        let open = provider(ISS);
        assert!(verify_all(&wrong, &open).is_ok());
        assert!(verify_all(&rs256(claims(json!({"aud": ["x", "y"]}))), &open).is_ok());
    }

    // --- verify: malformed input -----------------------------------------------------------------

    fn malformed_body(token: &str) -> &'static str {
        match verify_all(token, &provider(ISS)) {
            Err(err @ JwtError::Malformed(_)) => {
                assert_eq!(err.status(), 401);
                err.body()
            }
            other => panic!("{token:.60}: expected Malformed, got {other:?}"),
        }
    }

    #[test]
    fn malformed_tokens() {
        let good = rs256(claims(json!({})));
        let parts: Vec<&str> = good.split('.').collect();
        let (h, p, s) = (parts[0], parts[1], parts[2]);
        let form = Malformation::BAD_FORMAT_BODY;
        assert_eq!(malformed_body(&format!("{h}.{p}")), form);
        assert_eq!(malformed_body(&format!("{h}.{p}.{s}.{s}")), form);
        assert_eq!(malformed_body(&format!("{h}..{s}")), form);
        assert_eq!(malformed_body(""), form);
        assert_eq!(malformed_body("..."), form);
        assert_eq!(
            malformed_body(&format!("{h}!.{p}.{s}")),
            "Jwt header is an invalid Base64url encoded"
        );
        assert_eq!(
            malformed_body(&format!("{h}.{p}*.{s}")),
            "Jwt payload is an invalid Base64url encoded"
        );
        assert_eq!(
            malformed_body(&format!("{h}.{p}.{s}+/")),
            "Jwt signature is an invalid Base64url encoded"
        );
        let enc = |v: &str| b64(v.as_bytes());
        assert_eq!(
            malformed_body(&format!("{}.{p}.{s}", enc("[1]"))),
            "Jwt header is an invalid JSON"
        );
        assert_eq!(
            malformed_body(&format!("{}.{p}.{s}", enc(r#"{"typ":"JWT"}"#))),
            "Jwt header [alg] field is required and must be a string"
        );
        assert_eq!(
            malformed_body(&format!("{}.{p}.{s}", enc(r#"{"alg":"RS256","kid":7}"#))),
            "Jwt header [kid] field is not a string"
        );
        assert_eq!(
            malformed_body(&format!("{h}.{}.{s}", enc(r#"["iss"]"#))),
            "Jwt payload is an invalid JSON"
        );
        assert_eq!(
            malformed_body(&format!("{h}.{}.{s}", enc("null"))),
            "Jwt payload is an invalid JSON"
        );
        assert_eq!(
            malformed_body(&format!("{h}.{}.{s}", b64(&[0xff, 0xfe, b'{', b'}']))),
            "Jwt payload is an invalid JSON"
        );
        // Deep nesting hits serde_json's recursion limit instead of the stack.
        let deep = format!(r#"{{"a":{}1{}}}"#, "[".repeat(100_000), "]".repeat(100_000));
        let deep_token = format!("{h}.{}.{s}", enc(&deep));
        assert!(deep_token.len() > MAX_TOKEN_BYTES);
        assert_eq!(malformed_body(&deep_token), form);
        let deep = format!(r#"{{"a":{}1{}}}"#, "[".repeat(20_000), "]".repeat(20_000));
        assert_eq!(
            malformed_body(&format!("{h}.{}.{s}", enc(&deep))),
            "Jwt payload is an invalid JSON"
        );
        // Registered claims of the wrong type.
        for (payload, body) in [
            (
                json!({"iss": ISS, "exp": "tomorrow"}),
                "Jwt payload [exp] field is not an integer",
            ),
            (
                json!({"iss": ISS, "exp": -5}),
                "Jwt payload [exp] field is not a positive 64 bit integer",
            ),
            (
                json!({"iss": ISS, "nbf": true}),
                "Jwt payload [nbf] field is not an integer",
            ),
            (
                json!({"iss": ISS, "iat": null}),
                "Jwt payload [iat] field is not an integer",
            ),
            (json!({"iss": 7}), "Jwt payload [iss] field is not a string"),
            (
                json!({"iss": ISS, "sub": ["a"]}),
                "Jwt payload [sub] field is not a string",
            ),
            (
                json!({"iss": ISS, "aud": 1}),
                "Jwt payload [aud] field is not a string or string list",
            ),
            (
                json!({"iss": ISS, "aud": ["a", 1]}),
                "Jwt payload [aud] field is not a string or string list",
            ),
        ] {
            assert_eq!(malformed_body(&rs256(payload)), body);
        }
    }

    #[test]
    fn oversized_token_is_malformed() {
        let big = claims(json!({"pad": "x".repeat(100 * 1024)}));
        let token = rs256(big);
        assert!(token.len() > 100 * 1024);
        assert_eq!(
            verify_all(&token, &provider(ISS)),
            Err(JwtError::Malformed(
                "token is longer than 65536 bytes".to_string()
            ))
        );
        let raw = "a".repeat(100 * 1024);
        assert!(matches!(
            verify_all(&raw, &provider(ISS)),
            Err(JwtError::Malformed(_))
        ));
        // Just under the cap still works.
        let fits = rs256(claims(json!({"pad": "x".repeat(40 * 1024)})));
        assert!(fits.len() < MAX_TOKEN_BYTES);
        assert!(verify_all(&fits, &provider(ISS)).is_ok());
    }

    #[test]
    fn padded_base64_is_accepted() {
        // The signature covers the parts as sent, padding included.
        let pad = |s: String| {
            let n = (4 - s.len() % 4) % 4;
            format!("{s}{}", "=".repeat(n))
        };
        // 22 bytes of JSON: two `=` of padding.
        let header = pad(b64(br#"{"alg":"RS256","t":""}"#));
        let payload = pad(b64(claims(json!({"x": "ab"})).to_string().as_bytes()));
        assert!(header.ends_with("=="));
        let input = format!("{header}.{payload}");
        let sig =
            jsonwebtoken::crypto::sign(input.as_bytes(), &rsa_key(), Algorithm::RS256).unwrap();
        let padded = format!("{input}.{}", pad(sig));
        assert_eq!(verify_all(&padded, &provider(ISS)).unwrap()["x"], "ab");
        // Non-canonical trailing bits are not base64url.
        let good = rs256(claims(json!({})));
        let (rest, sig) = good.rsplit_once('.').unwrap();
        if sig.len() % 4 != 0 {
            let last = sig.chars().last().unwrap();
            let bumped = if last == 'A' { 'B' } else { 'A' };
            let odd = format!("{rest}.{}{bumped}", &sig[..sig.len() - 1]);
            assert!(verify_all(&odd, &provider(ISS)).is_err());
        }
    }

    proptest! {
        #[test]
        fn arbitrary_strings_never_panic(s in ".{0,300}") {
            let _ = verify_all(&s, &provider(ISS));
        }

        #[test]
        fn arbitrary_parts_never_panic(h in proptest::collection::vec(any::<u8>(), 0..64),
                                       p in proptest::collection::vec(any::<u8>(), 0..64),
                                       s in proptest::collection::vec(any::<u8>(), 0..64)) {
            let token = format!("{}.{}.{}", b64(&h), b64(&p), b64(&s));
            let result = verify_all(&token, &provider(ISS));
            prop_assert!(result.is_err());
        }

        #[test]
        fn arbitrary_headers_with_real_payload_never_verify(alg in "[A-Za-z0-9]{0,6}", kid in ".{0,8}") {
            let header = b64(json!({"alg": alg, "kid": kid}).to_string().as_bytes());
            let good = rs256(claims(json!({})));
            let rest: Vec<&str> = good.split('.').collect();
            let token = format!("{header}.{}.{}", rest[1], rest[2]);
            prop_assert!(verify_all(&token, &provider(ISS)).is_err());
        }
    }

    // --- find_tokens -------------------------------------------------------------------------------

    #[test]
    fn default_locations() {
        let p = [provider(ISS)];
        let headers = [
            hdr("authorization", "Bearer tok-h"),
            hdr("x-other", "Bearer nope"),
        ];
        let found = find_tokens(&p, &headers, Some("a=1&access_token=tok-q"));
        assert_eq!(
            found,
            vec![
                FoundToken {
                    token: "tok-h".into(),
                    location: TokenLocation::Header("authorization".into()),
                    providers: vec![0]
                },
                FoundToken {
                    token: "tok-q".into(),
                    location: TokenLocation::Param("access_token".into()),
                    providers: vec![0]
                },
            ]
        );
        // The prefix is case-sensitive: `bearer` is not `Bearer `; other schemes are ignored.
        for value in [
            "bearer tok",
            "BEARER tok",
            "Basic dXNlcjpwYXNz",
            "Bearer",
            "Bearertok",
        ] {
            assert!(
                find_tokens(&p, &[hdr("authorization", value)], None).is_empty(),
                "{value}"
            );
        }
        // Trimmed; repeated headers are separate tokens; the same token counts once.
        let found = find_tokens(
            &p,
            &[
                hdr("authorization", "  Bearer   a.b.c  "),
                hdr("authorization", "Bearer a.b.c"),
                hdr("authorization", "Bearer d"),
            ],
            Some("access_token=&access_token"),
        );
        let toks: Vec<&str> = found.iter().map(|t| t.token.as_str()).collect();
        assert_eq!(toks, vec!["a.b.c", "d"]);
        // Unconfigured locations are not read.
        assert!(find_tokens(
            &p,
            &[hdr("x-jwt", "a.b.c"), hdr("cookie", "access_token=a.b.c")],
            Some("token=a.b.c")
        )
        .is_empty());
    }

    #[test]
    fn custom_header_with_prefix() {
        let mut p = provider(ISS);
        p.from_headers = vec![
            ("x-jwt-assertion".to_string(), "Token ".to_string()),
            ("x-raw".to_string(), String::new()),
        ];
        let p = [p];
        let headers = [
            hdr("authorization", "Bearer ignored"),
            hdr("x-jwt-assertion", "Token t1"),
            hdr("x-jwt-assertion", "token t2"),
            hdr("x-raw", " t3 "),
        ];
        let found = find_tokens(&p, &headers, Some("access_token=ignored"));
        let got: Vec<(&str, &TokenLocation)> = found
            .iter()
            .map(|t| (t.token.as_str(), &t.location))
            .collect();
        assert_eq!(
            got,
            vec![
                ("t1", &TokenLocation::Header("x-jwt-assertion".into())),
                ("t3", &TokenLocation::Header("x-raw".into())),
            ]
        );
    }

    #[test]
    fn from_params_percent_decoded() {
        let mut p = provider(ISS);
        p.from_params = vec!["jwt".to_string(), "my token".to_string()];
        let p = [p];
        let found = find_tokens(
            &p,
            &[hdr("authorization", "Bearer ignored")],
            Some("x=1&jwt=ab%2Ecd%2eef&my%20token=a+b%zz&jwt=second#frag=1"),
        );
        let got: Vec<(&str, &TokenLocation)> = found
            .iter()
            .map(|t| (t.token.as_str(), &t.location))
            .collect();
        assert_eq!(
            got,
            vec![
                ("ab.cd.ef", &TokenLocation::Param("jwt".into())),
                ("second", &TokenLocation::Param("jwt".into())),
                ("a+b%zz", &TokenLocation::Param("my token".into())),
            ]
        );
        assert!(find_tokens(&p, &[], None).is_empty());
    }

    #[test]
    fn from_cookies() {
        let mut p = provider(ISS);
        p.from_cookies = vec!["session".to_string()];
        let p = [p];
        let headers = [
            hdr("cookie", "a=b; session=tok1;theme=dark"),
            hdr("cookie", "session=\"tok2\""),
            hdr("x-cookie", "session=nope"),
            hdr("cookie", "Session=case; session"),
        ];
        let found = find_tokens(&p, &headers, Some("session=nope"));
        let got: Vec<(&str, &TokenLocation)> = found
            .iter()
            .map(|t| (t.token.as_str(), &t.location))
            .collect();
        assert_eq!(
            got,
            vec![
                ("tok1", &TokenLocation::Cookie("session".into())),
                ("tok2", &TokenLocation::Cookie("session".into())),
            ]
        );
    }

    #[test]
    fn shared_location_lists_every_provider() {
        let a = provider(ISS);
        let mut b = provider("https://other.example.com");
        b.from_headers = vec![("authorization".to_string(), "Bearer ".to_string())];
        let found = find_tokens(&[a, b], &[hdr("authorization", "Bearer t")], None);
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].providers, vec![0, 1]);
    }

    // --- authenticate --------------------------------------------------------------------------------

    fn authn(
        providers: &[JwtProvider],
        method: &str,
        headers: &[(String, String)],
        query: Option<&str>,
    ) -> AuthnOutcome {
        let set = Arc::new(keys(JWKS_ALL));
        let lookup = move |_: usize| Some(Arc::clone(&set));
        authenticate(providers, &lookup, method, headers, query, NOW)
    }

    fn failed(outcome: &AuthnOutcome) -> (&JwtError, &TokenLocation) {
        match outcome {
            AuthnOutcome::Failed { error, location } => (error, location),
            other => panic!("expected Failed, got {other:?}"),
        }
    }

    #[test]
    fn no_token_is_no_token() {
        let p = [provider(ISS)];
        assert_eq!(authn(&p, "GET", &[], None), AuthnOutcome::NoToken);
        assert_eq!(
            authn(&p, "GET", &[hdr("authorization", "Basic abc")], Some("x=1")),
            AuthnOutcome::NoToken
        );
        assert_eq!(
            authn(&[], "GET", &[hdr("authorization", "Bearer x")], None),
            AuthnOutcome::NoToken
        );
    }

    #[test]
    fn verified_request() {
        let p = [provider(ISS)];
        let token = rs256(claims(json!({"scope": "a b"})));
        let outcome = authn(
            &p,
            "GET",
            &[hdr("authorization", &format!("Bearer {token}"))],
            None,
        );
        let AuthnOutcome::Verified {
            provider,
            claims,
            payload,
            tokens,
        } = outcome
        else {
            panic!("expected Verified, got {outcome:?}");
        };
        assert_eq!(provider, 0);
        assert_eq!(claims["sub"], "alice");
        assert_eq!(
            serde_json::from_str::<Map<String, Value>>(&payload).unwrap(),
            claims
        );
        assert_eq!(tokens.len(), 1);
        assert_eq!(
            tokens[0].location,
            TokenLocation::Header("authorization".into())
        );
    }

    #[test]
    fn two_tokens_one_invalid_fails() {
        let p = [provider(ISS)];
        let good = rs256(claims(json!({})));
        let expired = rs256(claims(json!({"exp": NOW - 3600})));
        let headers = [hdr("authorization", &format!("Bearer {good}"))];
        let outcome = authn(
            &p,
            "GET",
            &headers,
            Some(&format!("access_token={expired}")),
        );
        assert_eq!(
            failed(&outcome),
            (
                &JwtError::Expired,
                &TokenLocation::Param("access_token".into())
            )
        );
        // Invalid first, valid second: the same.
        let headers = [hdr("authorization", "Bearer garbage")];
        let outcome = authn(&p, "GET", &headers, Some(&format!("access_token={good}")));
        let (err, loc) = failed(&outcome);
        assert!(matches!(err, JwtError::Malformed(_)));
        assert_eq!(loc, &TokenLocation::Header("authorization".into()));
        // Both valid: verified.
        let other = es256(claims(json!({"sub": "bob"})));
        let outcome = authn(
            &p,
            "GET",
            &[hdr("authorization", &format!("Bearer {good}"))],
            Some(&format!("access_token={other}")),
        );
        assert!(
            matches!(outcome, AuthnOutcome::Verified { ref claims, .. } if claims["sub"] == "alice")
        );
    }

    #[test]
    fn unconfigured_issuer_is_rejected_not_missing() {
        // ISTIO-SECURITY-2021-001: a token from another issuer must not pass as "no token".
        let p = [provider(ISS)];
        let token = rs256(claims(json!({"iss": "https://attacker.example.com"})));
        let outcome = authn(
            &p,
            "GET",
            &[hdr("authorization", &format!("Bearer {token}"))],
            None,
        );
        let (err, _) = failed(&outcome);
        assert_eq!(
            err,
            &JwtError::IssuerNotConfigured("https://attacker.example.com".into())
        );
        assert_eq!(err.status(), 401);
        // Even when another provider has that issuer but does not read this location.
        let mut other = provider("https://attacker.example.com");
        other.from_headers = vec![("x-other".to_string(), String::new())];
        let outcome = authn(
            &[provider(ISS), other],
            "GET",
            &[hdr("authorization", &format!("Bearer {token}"))],
            None,
        );
        assert!(matches!(
            failed(&outcome).0,
            JwtError::IssuerNotConfigured(_)
        ));
    }

    #[test]
    fn audience_mismatch_is_403() {
        let mut p = provider(ISS);
        p.audiences = vec!["svc".to_string()];
        let token = rs256(claims(json!({"aud": "other"})));
        let outcome = authn(
            &[p],
            "GET",
            &[hdr("authorization", &format!("Bearer {token}"))],
            None,
        );
        let (err, _) = failed(&outcome);
        assert_eq!((err, err.status()), (&JwtError::AudienceNotAllowed, 403));
    }

    #[test]
    fn missing_jwks_fails_closed() {
        let p = [provider(ISS)];
        let token = rs256(claims(json!({})));
        let headers = [hdr("authorization", &format!("Bearer {token}"))];
        let outcome = authenticate(&p, &|_| None, "GET", &headers, None, NOW);
        assert_eq!(failed(&outcome).0, &JwtError::NoKeys(ISS.into()));
        // Tokenless requests still pass.
        assert_eq!(
            authenticate(&p, &|_| None, "GET", &[], None, NOW),
            AuthnOutcome::NoToken
        );
    }

    #[test]
    fn cors_preflight_skips_verification() {
        let p = [provider(ISS)];
        let bad = [
            hdr("authorization", "Bearer garbage"),
            hdr("origin", "https://app.example.com"),
            hdr("access-control-request-method", "POST"),
        ];
        assert_eq!(authn(&p, "OPTIONS", &bad, None), AuthnOutcome::NoToken);
        // Not a preflight without Origin, without the request-method header, or for other methods.
        assert!(matches!(
            authn(&p, "OPTIONS", &bad[..2], None),
            AuthnOutcome::Failed { .. }
        ));
        assert!(matches!(
            authn(&p, "OPTIONS", &[bad[0].clone(), bad[2].clone()], None),
            AuthnOutcome::Failed { .. }
        ));
        assert!(matches!(
            authn(&p, "GET", &bad, None),
            AuthnOutcome::Failed { .. }
        ));
        let empty_origin = [bad[0].clone(), hdr("origin", ""), bad[2].clone()];
        assert!(matches!(
            authn(&p, "OPTIONS", &empty_origin, None),
            AuthnOutcome::Failed { .. }
        ));
    }

    #[test]
    fn several_providers() {
        // Provider 0: other issuer, reads the param; provider 1: ISS, default locations.
        let other_iss = "https://other.example.com";
        let mut p0 = provider(other_iss);
        p0.from_params = vec!["token".to_string()];
        let p1 = provider(ISS);
        let providers = [p0, p1];
        let t0 = es256(claims(json!({"iss": other_iss, "sub": "from-0"})));
        let t1 = rs256(claims(json!({"sub": "from-1"})));
        let headers = [hdr("authorization", &format!("Bearer {t1}"))];
        let outcome = authn(&providers, "GET", &headers, Some(&format!("token={t0}")));
        let AuthnOutcome::Verified {
            provider: index,
            claims: got,
            tokens,
            ..
        } = outcome
        else {
            panic!("expected Verified, got {outcome:?}");
        };
        assert_eq!((index, got["sub"].as_str()), (0, Some("from-0")));
        assert_eq!(tokens.len(), 2);
        // The ISS token in provider 0's location: provider 0 has another issuer.
        let outcome = authn(&providers, "GET", &[], Some(&format!("token={t1}")));
        assert!(matches!(
            failed(&outcome).0,
            JwtError::IssuerNotConfigured(_)
        ));
        // Two providers with the same issuer and location: the second one can verify.
        let mut strict = provider(ISS);
        strict.audiences = vec!["nobody".to_string()];
        let outcome = authn(&[strict.clone(), provider(ISS)], "GET", &headers, None);
        assert!(matches!(
            outcome,
            AuthnOutcome::Verified { provider: 1, .. }
        ));
        // If none can, the first one's error decides.
        let outcome = authn(&[strict.clone(), strict], "GET", &headers, None);
        assert_eq!(failed(&outcome).0, &JwtError::AudienceNotAllowed);
    }

    // --- after verification --------------------------------------------------------------------------

    #[test]
    fn normalize_claims_splits_scope() {
        let mut c = claims(json!({
            "scope": "read  write admin",
            "permission": ["a b"],
            "roles": "x y",
            "custom": "p q",
            "empty": "",
            "num": 5
        }))
        .as_object()
        .cloned()
        .unwrap();
        let names = ["scope", "permission", "custom", "empty", "num", "absent"].map(String::from);
        normalize_claims(&mut c, &names);
        assert_eq!(c["scope"], json!(["read", "write", "admin"]));
        assert_eq!(c["permission"], json!(["a b"]));
        assert_eq!(c["roles"], "x y");
        assert_eq!(c["custom"], json!(["p", "q"]));
        assert_eq!(c["empty"], "");
        assert_eq!(c["num"], 5);
        assert!(!c.contains_key("absent"));
        // A single scope becomes a one-element list.
        let mut one = json!({"scope": "read"}).as_object().cloned().unwrap();
        normalize_claims(&mut one, &names);
        assert_eq!(one["scope"], json!(["read"]));
    }

    #[test]
    fn upstream_header_effects() {
        let mut p = provider(ISS);
        p.output_payload_to_header = Some("X-JWT-Payload".to_string());
        p.output_claim_to_headers = [
            ("x-sub", "sub"),
            ("x-tenant", "org.tenant.id"),
            ("x-level", "level"),
            ("x-admin", "admin"),
            ("x-groups", "groups"),
            ("x-ratio", "ratio"),
            ("x-missing", "nope"),
            ("x-evil", "evil"),
            ("x-deep-miss", "org.nope.id"),
        ]
        .iter()
        .map(|(h, c)| (h.to_string(), c.to_string()))
        .collect();
        let payload = json!({
            "iss": ISS, "sub": "alice", "org": {"tenant": {"id": "t-1"}}, "level": 3,
            "admin": false, "groups": ["g"], "ratio": 0.5, "evil": "x\r\nset-cookie: a=b"
        })
        .to_string();
        let claims: Map<String, Value> = serde_json::from_str(&payload).unwrap();
        let tokens = vec![
            FoundToken {
                token: "a".into(),
                location: TokenLocation::Header("authorization".into()),
                providers: vec![0],
            },
            FoundToken {
                token: "b".into(),
                location: TokenLocation::Param("access_token".into()),
                providers: vec![0],
            },
            FoundToken {
                token: "c".into(),
                location: TokenLocation::Cookie("session".into()),
                providers: vec![0],
            },
        ];
        let (set, remove) = upstream_headers(&p, &claims, &payload, &tokens);
        assert_eq!(set[0].0, "x-jwt-payload");
        assert!(!set[0].1.contains('='));
        assert_eq!(
            URL_SAFE_NO_PAD.decode(&set[0].1).unwrap(),
            payload.as_bytes()
        );
        assert_eq!(
            set[1..].to_vec(),
            vec![
                hdr("x-sub", "alice"),
                hdr("x-tenant", "t-1"),
                hdr("x-level", "3"),
                hdr("x-admin", "false"),
            ]
        );
        assert_eq!(remove, vec!["authorization".to_string()]);

        p.forward_original_token = true;
        let (_, remove) = upstream_headers(&p, &claims, &payload, &tokens);
        assert!(remove.is_empty());

        let plain = provider(ISS);
        assert_eq!(
            upstream_headers(&plain, &claims, &payload, &tokens[1..]),
            (vec![], vec![])
        );
    }

    #[test]
    fn error_status_and_body() {
        let cases = [
            (
                JwtError::Malformed("whatever".into()),
                401,
                Malformation::BAD_FORMAT_BODY,
            ),
            (
                JwtError::UnsupportedAlgorithm("none".into()),
                401,
                "Jwt header [alg] is not supported",
            ),
            (
                JwtError::IssuerNotConfigured("x".into()),
                401,
                "Jwt issuer is not configured",
            ),
            (
                JwtError::NoKeys("x".into()),
                401,
                "Jwks doesn't have any valid public key",
            ),
            (
                JwtError::KidNotFound("k".into()),
                401,
                "Jwks doesn't have key to match kid or alg from Jwt",
            ),
            (
                JwtError::KeyAlgMismatch("RS256".into()),
                401,
                "Jwks doesn't have key to match kid or alg from Jwt",
            ),
            (JwtError::BadSignature, 401, "Jwt verification fails"),
            (JwtError::Expired, 401, "Jwt is expired"),
            (JwtError::NotYetValid, 401, "Jwt not yet valid"),
            (
                JwtError::AudienceNotAllowed,
                403,
                "Audiences in Jwt are not allowed",
            ),
        ];
        for (err, status, body) in cases {
            assert_eq!((err.status(), err.body()), (status, body), "{err}");
            let text = err.to_string();
            assert!(
                text.starts_with(|c: char| c.is_lowercase()) && !text.ends_with('.'),
                "{text}"
            );
        }
        // Every malformation message maps back to its own body.
        for m in Malformation::ALL {
            assert_eq!(JwtError::from(m).body(), m.body());
        }
        // Long attacker-controlled identifiers are clipped.
        let long_iss = "i".repeat(1000);
        let token = rs256(claims(json!({"iss": long_iss})));
        let Err(JwtError::IssuerNotConfigured(echo)) = verify_all(&token, &provider(ISS)) else {
            panic!()
        };
        assert!(echo.chars().count() <= MAX_ECHO_CHARS + 1);
    }
}
