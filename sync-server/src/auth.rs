//! Token verification for the gateway (DESIGN.md §7–8).
//!
//! The gateway verifies each client's token once, when the client says `Hello`, and
//! writes the verified claims into the log, so every region evaluates the rules with the
//! same `auth`. This module does the verifying:
//!
//! - **HS256** with a shared secret, for development (`warren token` mints such tokens
//!   with [`mint_hs256`] and [`dev_claims`]).
//! - **RS256 / ES256** against a JWKS, read from a file or fetched from a URL, for
//!   identity providers. A URL's key set is refreshed in the background every
//!   [`JWKS_REFRESH_INTERVAL`], and re-fetched when a token names a `kid` the set does not
//!   have (at most once per [`UNKNOWN_KID_REFETCH_INTERVAL`]).
//!
//! An algorithm is accepted only with key material of its own kind: HS256 only with the
//! configured secret (never with a JWKS key, so a token "signed" with an RSA public key
//! as its HMAC secret is refused), RS256 only with a JWKS RSA key, ES256 only with a JWKS
//! P-256 key. `alg: none` is always refused. Keys come only from the configuration:
//! header parameters that point at keys (`jku`, `x5u`, `jwk`, `x5c`) are ignored. Every
//! refusal is an [`AuthError`] with a stable [`code`](AuthError::code) that the gateway
//! sends to the client.

use std::fmt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::alphabet;
use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig};
use base64::engine::DecodePaddingMode;
use base64::Engine as _;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use tokio::sync::Notify;
use warren_core::Value;

/// Longest token accepted, in bytes. Real tokens are well under 4 KiB; this bounds the
/// work an unauthenticated client can ask for.
pub const MAX_TOKEN_LEN: usize = 16 * 1024;
/// How often a JWKS (URL or file) is reloaded in the background.
pub const JWKS_REFRESH_INTERVAL: Duration = Duration::from_secs(5 * 60);
/// The shortest time between two re-fetches caused by tokens naming an unknown `kid`.
pub const UNKNOWN_KID_REFETCH_INTERVAL: Duration = Duration::from_secs(30);
/// Clock skew allowed on `exp` and `nbf` by [`AuthConfig::default`].
pub const DEFAULT_LEEWAY_SECS: u64 = 60;
/// The largest leeway accepted by [`Verifier::new`] (a day).
pub const MAX_LEEWAY_SECS: u64 = 24 * 60 * 60;

/// Time allowed for one whole JWKS fetch (connect, request, response).
const JWKS_FETCH_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest JWKS document accepted.
const MAX_JWKS_BYTES: usize = 1024 * 1024;
/// RSA keys shorter than this are ignored.
const MIN_RSA_BITS: usize = 2048;
/// HS256 secrets shorter than this get a warning (RFC 7518 §3.2 wants 256 bits).
const MIN_HS256_SECRET_BYTES: usize = 32;

/// base64url as JWTs use it: no padding.
const B64URL: GeneralPurpose = GeneralPurpose::new(
    &alphabet::URL_SAFE,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::RequireNone),
);
/// base64url as JWKS documents use it: padding tolerated.
const B64URL_LENIENT: GeneralPurpose = GeneralPurpose::new(
    &alphabet::URL_SAFE,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

// ---------------------------------------------------------------------------------------
// Configuration and errors
// ---------------------------------------------------------------------------------------

/// What the gateway trusts. At least one of `hs256_secret` and `jwks` must be set.
#[derive(Clone)]
pub struct AuthConfig {
    /// Shared secret for HS256 (development). Used as raw bytes (UTF-8 of the string).
    pub hs256_secret: Option<String>,
    /// Public keys for RS256/ES256 (identity providers).
    pub jwks: Option<JwksSource>,
    /// When set, tokens must carry exactly this `iss`. When unset, `iss` is not checked.
    pub issuer: Option<String>,
    /// When set, tokens must carry this `aud` (a string, or an array containing it).
    /// When unset, `aud` is not checked.
    pub audience: Option<String>,
    /// Clock skew allowed on `exp` and `nbf`, in seconds.
    pub leeway_secs: u64,
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            hs256_secret: None,
            jwks: None,
            issuer: None,
            audience: None,
            leeway_secs: DEFAULT_LEEWAY_SECS,
        }
    }
}

impl fmt::Debug for AuthConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuthConfig")
            .field(
                "hs256_secret",
                &self.hs256_secret.as_ref().map(|_| "<redacted>"),
            )
            .field("jwks", &self.jwks)
            .field("issuer", &self.issuer)
            .field("audience", &self.audience)
            .field("leeway_secs", &self.leeway_secs)
            .finish()
    }
}

/// Where a JWKS (JSON Web Key Set, RFC 7517) comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum JwksSource {
    /// A local file holding `{"keys": [...]}`.
    File(PathBuf),
    /// An `http://` or `https://` URL serving `{"keys": [...]}`.
    Url(String),
}

impl fmt::Display for JwksSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            JwksSource::File(p) => write!(f, "JWKS file {}", p.display()),
            JwksSource::Url(u) => write!(f, "JWKS URL {u}"),
        }
    }
}

/// Why a token was refused, or why the verifier could not be built.
///
/// Each variant has a stable [`code`](AuthError::code); the `String`s are human details
/// (they never contain key material, and attacker-chosen text in them is truncated).
#[non_exhaustive]
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AuthError {
    /// No token was presented. `TOKEN_MISSING`.
    Missing,
    /// Not a well-formed JWT: wrong number of parts, bad base64url, header or claims
    /// not a JSON object, no signature, too long, or a required claim (`exp`) missing or
    /// not a number. `TOKEN_MALFORMED`.
    Malformed(String),
    /// `exp` is in the past (beyond the leeway). `TOKEN_EXPIRED`.
    Expired,
    /// `nbf` is in the future (beyond the leeway). `TOKEN_NOT_YET_VALID`.
    NotYetValid,
    /// The signature does not match. `TOKEN_BAD_SIGNATURE`.
    BadSignature,
    /// `iss` missing or not the configured issuer. `TOKEN_WRONG_ISSUER`.
    WrongIssuer,
    /// `aud` missing or not the configured audience (or present when none is
    /// configured). `TOKEN_WRONG_AUDIENCE`.
    WrongAudience,
    /// `alg` is `none`, unsupported, or does not match the configured key material.
    /// `TOKEN_ALGORITHM`.
    Algorithm(String),
    /// No JWKS key matches the token's `kid` (or the token has no `kid` and the set has
    /// several keys of its type). `TOKEN_UNKNOWN_KEY`.
    UnknownKey(String),
    /// The verifier's configuration or key material is unusable. `AUTH_CONFIG`.
    Config(String),
}

impl AuthError {
    /// The stable code of this error, sent to clients in `Error { code, message }`.
    pub fn code(&self) -> &'static str {
        match self {
            AuthError::Missing => "TOKEN_MISSING",
            AuthError::Malformed(_) => "TOKEN_MALFORMED",
            AuthError::Expired => "TOKEN_EXPIRED",
            AuthError::NotYetValid => "TOKEN_NOT_YET_VALID",
            AuthError::BadSignature => "TOKEN_BAD_SIGNATURE",
            AuthError::WrongIssuer => "TOKEN_WRONG_ISSUER",
            AuthError::WrongAudience => "TOKEN_WRONG_AUDIENCE",
            AuthError::Algorithm(_) => "TOKEN_ALGORITHM",
            AuthError::UnknownKey(_) => "TOKEN_UNKNOWN_KEY",
            AuthError::Config(_) => "AUTH_CONFIG",
        }
    }
}

impl fmt::Display for AuthError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AuthError::Missing => f.write_str("no token was presented"),
            AuthError::Malformed(d) => write!(f, "malformed token: {d}"),
            AuthError::Expired => f.write_str("the token has expired"),
            AuthError::NotYetValid => f.write_str("the token is not valid yet (nbf)"),
            AuthError::BadSignature => f.write_str("the token's signature does not match"),
            AuthError::WrongIssuer => f.write_str("the token's issuer (iss) is not accepted"),
            AuthError::WrongAudience => {
                f.write_str("the token's audience (aud) is not this server")
            }
            AuthError::Algorithm(d) => write!(f, "token algorithm refused: {d}"),
            AuthError::UnknownKey(d) => write!(f, "unknown signing key: {d}"),
            AuthError::Config(d) => write!(f, "authentication is misconfigured: {d}"),
        }
    }
}

impl std::error::Error for AuthError {}

/// Maps a `jsonwebtoken` error met while verifying a token.
fn from_jwt_error(e: jsonwebtoken::errors::Error) -> AuthError {
    match e.kind() {
        ErrorKind::InvalidToken => AuthError::Malformed("not a JWT".into()),
        ErrorKind::InvalidSignature => AuthError::BadSignature,
        // Raised while turning our own key material into a verifier: a bad JWKS entry.
        ErrorKind::InvalidEcdsaKey => AuthError::Config("an EC key in the JWKS is invalid".into()),
        ErrorKind::InvalidEddsaKey => {
            AuthError::Config("an EdDSA key in the JWKS is invalid".into())
        }
        ErrorKind::InvalidRsaKey(m) => {
            AuthError::Config(format!("an RSA key in the JWKS is invalid: {m}"))
        }
        ErrorKind::InvalidKeyFormat => {
            AuthError::Algorithm("the key does not fit the token's algorithm".into())
        }
        // Signing errors cannot happen while verifying; a provider that reports one
        // while checking a signature has refused it.
        ErrorKind::RsaFailedSigning | ErrorKind::Signing(_) => AuthError::BadSignature,
        ErrorKind::InvalidAlgorithmName => AuthError::Algorithm("unknown algorithm name".into()),
        ErrorKind::MissingRequiredClaim(c) => match c.as_str() {
            "iss" => AuthError::WrongIssuer,
            "aud" => AuthError::WrongAudience,
            _ => AuthError::Malformed(format!("the required claim {c:?} is missing")),
        },
        ErrorKind::InvalidClaimFormat(c) => {
            AuthError::Malformed(format!("the claim {c:?} is not a number"))
        }
        ErrorKind::ExpiredSignature => AuthError::Expired,
        ErrorKind::InvalidIssuer => AuthError::WrongIssuer,
        ErrorKind::InvalidAudience => AuthError::WrongAudience,
        ErrorKind::InvalidSubject => AuthError::Malformed("the subject (sub) is refused".into()),
        ErrorKind::ImmatureSignature => AuthError::NotYetValid,
        ErrorKind::InvalidAlgorithm => {
            AuthError::Algorithm("the algorithm does not match the key".into())
        }
        ErrorKind::MissingAlgorithm => AuthError::Algorithm("no algorithm is allowed".into()),
        ErrorKind::Base64(err) => AuthError::Malformed(format!("bad base64url: {err}")),
        ErrorKind::Json(err) => AuthError::Malformed(format!("bad JSON: {err}")),
        ErrorKind::Utf8(err) => AuthError::Malformed(format!("bad UTF-8: {err}")),
        ErrorKind::Provider(m) => AuthError::Config(format!("crypto provider: {m}")),
        // `ErrorKind` is non-exhaustive: refuse whatever a later version adds.
        _ => AuthError::Malformed(format!("refused: {e}")),
    }
}

/// At most 64 characters of attacker-chosen text, for error details and logs.
fn short(s: &str) -> String {
    const MAX: usize = 64;
    if s.chars().count() <= MAX {
        format!("{s:?}")
    } else {
        let head: String = s.chars().take(MAX).collect();
        format!("{head:?}…")
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

// ---------------------------------------------------------------------------------------
// Development tokens
// ---------------------------------------------------------------------------------------

/// Signs `claims` (a JSON object) with HS256 and `secret` (its UTF-8 bytes). Claims are
/// taken as given: use [`dev_claims`] for the usual `sub`/`iat`/`exp`.
pub fn mint_hs256(secret: &str, claims: &serde_json::Value) -> Result<String, AuthError> {
    if secret.is_empty() {
        return Err(AuthError::Config("the HS256 secret is empty".into()));
    }
    if !claims.is_object() {
        return Err(AuthError::Malformed("claims must be a JSON object".into()));
    }
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .map_err(|e| AuthError::Config(format!("cannot sign the token: {e}")))
}

/// Development claims: `{sub, iat: now, exp: now + ttl_secs}` plus `iss` and `aud` when
/// given. The result is a JSON object the caller may add claims to before
/// [`mint_hs256`].
pub fn dev_claims(
    sub: &str,
    ttl_secs: u64,
    issuer: Option<&str>,
    audience: Option<&str>,
) -> serde_json::Value {
    let now = unix_now();
    let mut claims = serde_json::Map::new();
    claims.insert("sub".into(), sub.into());
    claims.insert("iat".into(), now.into());
    claims.insert("exp".into(), now.saturating_add(ttl_secs).into());
    if let Some(iss) = issuer {
        claims.insert("iss".into(), iss.into());
    }
    if let Some(aud) = audience {
        claims.insert("aud".into(), aud.into());
    }
    serde_json::Value::Object(claims)
}

// ---------------------------------------------------------------------------------------
// Key sets
// ---------------------------------------------------------------------------------------

/// The kinds of JWKS key this server uses, each for exactly one algorithm.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum KeyType {
    /// RSA, for RS256.
    Rsa,
    /// EC on P-256, for ES256.
    EcP256,
}

impl KeyType {
    fn for_alg(alg: Algorithm) -> Option<KeyType> {
        match alg {
            Algorithm::RS256 => Some(KeyType::Rsa),
            Algorithm::ES256 => Some(KeyType::EcP256),
            _ => None,
        }
    }

    fn alg(self) -> Algorithm {
        match self {
            KeyType::Rsa => Algorithm::RS256,
            KeyType::EcP256 => Algorithm::ES256,
        }
    }

    fn name(self) -> &'static str {
        match self {
            KeyType::Rsa => "RSA",
            KeyType::EcP256 => "EC P-256",
        }
    }
}

struct JwksKey {
    kid: Option<String>,
    kty: KeyType,
    key: DecodingKey,
}

/// The usable keys of one JWKS document.
struct KeySet {
    keys: Vec<JwksKey>,
}

impl KeySet {
    /// The key for a token of algorithm `alg` naming `kid`.
    fn select(&self, alg: Algorithm, kid: Option<&str>) -> Result<&DecodingKey, AuthError> {
        let want = KeyType::for_alg(alg)
            .ok_or_else(|| AuthError::Algorithm(format!("{alg:?} is not a JWKS algorithm")))?;
        match kid {
            Some(kid) => {
                let mut other_type = None;
                for k in &self.keys {
                    if k.kid.as_deref() == Some(kid) {
                        if k.kty == want {
                            return Ok(&k.key);
                        }
                        other_type = Some(k.kty);
                    }
                }
                match other_type {
                    Some(t) => Err(AuthError::Algorithm(format!(
                        "key {} is an {} key; {alg:?} needs an {} key",
                        short(kid),
                        t.name(),
                        want.name()
                    ))),
                    None => Err(AuthError::UnknownKey(format!(
                        "the key set has no key with kid {}",
                        short(kid)
                    ))),
                }
            }
            None => {
                let mut of_type = self.keys.iter().filter(|k| k.kty == want);
                match (of_type.next(), of_type.next()) {
                    (Some(k), None) => Ok(&k.key),
                    (None, _) => Err(AuthError::Algorithm(format!(
                        "{alg:?} needs an {} key and the key set has none",
                        want.name()
                    ))),
                    (Some(_), Some(_)) => Err(AuthError::UnknownKey(format!(
                        "the token has no kid and the key set has several {} keys",
                        want.name()
                    ))),
                }
            }
        }
    }

    fn kids(&self) -> Vec<String> {
        self.keys.iter().filter_map(|k| k.kid.clone()).collect()
    }
}

/// Parses a JWKS document, keeping the keys usable for RS256 and ES256 and skipping the
/// others (symmetric `oct` keys are always skipped: HS256 takes only the configured
/// secret). Fails if nothing usable is left.
fn parse_jwks(bytes: &[u8]) -> Result<KeySet, String> {
    let doc: serde_json::Value =
        serde_json::from_slice(bytes).map_err(|e| format!("not JSON: {e}"))?;
    let list = doc
        .get("keys")
        .and_then(|k| k.as_array())
        .ok_or("no \"keys\" array")?;
    let mut keys = Vec::new();
    for (i, jwk) in list.iter().enumerate() {
        match parse_jwk(jwk) {
            Ok(Some(key)) => keys.push(key),
            Ok(None) => {}
            Err(why) => {
                let kid = jwk.get("kid").and_then(|k| k.as_str()).unwrap_or("");
                tracing::warn!(index = i, kid, "skipping JWKS key: {why}");
            }
        }
    }
    if keys.is_empty() {
        return Err("no usable RS256 (RSA) or ES256 (EC P-256) signing keys".into());
    }
    Ok(KeySet { keys })
}

/// One JWK, read with `jsonwebtoken::jwk`: `Ok(Some)` if usable, `Ok(None)` if not meant
/// for us (encryption keys, other algorithms, symmetric keys, other key types), `Err` if
/// meant for us but broken. The policy (which keys verify what, minimum sizes) is
/// this server's; the library reads the fields.
fn parse_jwk(jwk: &serde_json::Value) -> Result<Option<JwksKey>, String> {
    use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, KeyOperations, PublicKeyUse};
    // Only RSA and EC keys can be ours; others are skipped without a word, even when
    // the library does not know their type.
    match jwk.get("kty").and_then(|k| k.as_str()) {
        Some("RSA" | "EC") => {}
        Some(_) => return Ok(None),
        None if jwk.is_object() => return Err("no kty".into()),
        None => return Err("not a JSON object".into()),
    }
    let jwk: Jwk = serde_json::from_value(jwk.clone()).map_err(|e| format!("not a JWK: {e}"))?;
    let common = &jwk.common;
    if common
        .public_key_use
        .as_ref()
        .is_some_and(|u| *u != PublicKeyUse::Signature)
    {
        return Ok(None);
    }
    if common
        .key_operations
        .as_ref()
        .is_some_and(|ops| !ops.contains(&KeyOperations::Verify))
    {
        return Ok(None);
    }
    let kid = common.key_id.clone();
    let part = |name: &str, s: &str| -> Result<Vec<u8>, String> {
        B64URL_LENIENT
            .decode(s)
            .map_err(|e| format!("{name} is not base64url: {e}"))
    };
    let (kty, key) = match &jwk.algorithm {
        AlgorithmParameters::RSA(rsa) => {
            let n = part("n", &rsa.n)?;
            let e = part("e", &rsa.e)?;
            let n_bits = significant_bits(&n);
            if n_bits < MIN_RSA_BITS {
                return Err(format!(
                    "RSA modulus is {n_bits} bits; at least {MIN_RSA_BITS} are required"
                ));
            }
            if significant_bits(&e) == 0 {
                return Err("RSA exponent is zero".into());
            }
            (KeyType::Rsa, DecodingKey::from_rsa_raw_components(&n, &e))
        }
        AlgorithmParameters::EllipticCurve(ec) => {
            if ec.curve != EllipticCurve::P256 {
                return Ok(None);
            }
            let x = part("x", &ec.x)?;
            let y = part("y", &ec.y)?;
            if x.len() != 32 || y.len() != 32 {
                return Err("P-256 coordinates must be 32 bytes each".into());
            }
            let mut point = Vec::with_capacity(65);
            point.push(0x04);
            point.extend_from_slice(&x);
            point.extend_from_slice(&y);
            (KeyType::EcP256, DecodingKey::from_ec_der(&point))
        }
        _ => return Ok(None),
    };
    if let Some(alg) = common.key_algorithm {
        if alg.to_string() != format!("{:?}", kty.alg()) {
            return Ok(None);
        }
    }
    // Build a verifier once, so a key that cannot verify anything (a point off the
    // curve) is reported now rather than on every token.
    if let Err(e) = jsonwebtoken::crypto::verify("AA", b"probe", &key, kty.alg()) {
        return Err(format!("unusable key: {e}"));
    }
    Ok(Some(JwksKey { kid, kty, key }))
}

fn significant_bits(be: &[u8]) -> usize {
    match be.iter().position(|&b| b != 0) {
        Some(i) => (be.len() - i) * 8 - be[i].leading_zeros() as usize,
        None => 0,
    }
}

// ---------------------------------------------------------------------------------------
// Fetching a JWKS
// ---------------------------------------------------------------------------------------

fn strip_scheme<'a>(url: &'a str, scheme: &str) -> Option<&'a str> {
    let head = url.get(..scheme.len())?;
    head.eq_ignore_ascii_case(scheme)
        .then(|| &url[scheme.len()..])
}

/// Checks a source before the first load, for clear configuration errors.
fn check_source(source: &JwksSource) -> Result<(), String> {
    match source {
        JwksSource::File(_) => Ok(()),
        JwksSource::Url(url) => {
            if strip_scheme(url, "http://").is_some() || strip_scheme(url, "https://").is_some() {
                check_url(url)
            } else {
                Err(format!(
                    "JWKS URL {} must start with http:// or https://",
                    short(url)
                ))
            }
        }
    }
}

/// Reads the source's bytes.
async fn load_source(source: &JwksSource) -> Result<Vec<u8>, String> {
    match source {
        JwksSource::File(path) => {
            let path = path.clone();
            tokio::task::spawn_blocking(move || -> Result<Vec<u8>, String> {
                let meta = std::fs::metadata(&path).map_err(|e| e.to_string())?;
                if meta.len() > MAX_JWKS_BYTES as u64 {
                    return Err(format!("larger than {MAX_JWKS_BYTES} bytes"));
                }
                std::fs::read(&path).map_err(|e| e.to_string())
            })
            .await
            .map_err(|e| format!("reader task failed: {e}"))?
        }
        JwksSource::Url(url) => {
            let url = url.clone();
            tokio::task::spawn_blocking(move || url_get(&url))
                .await
                .map_err(|e| format!("fetch task failed: {e}"))?
        }
    }
}

fn user_agent() -> String {
    format!("warren-server/{}", env!("CARGO_PKG_VERSION"))
}

/// Checks a JWKS URL's form: a host, no credentials, no spaces or control characters.
fn check_url(url: &str) -> Result<(), String> {
    if url.bytes().any(|b| b <= b' ' || b == 0x7f) {
        return Err("the URL contains spaces or control characters".into());
    }
    let uri: ureq::http::Uri = url.parse().map_err(|e| format!("not a URL: {e}"))?;
    let authority = uri.authority().ok_or("the URL has no host")?;
    if authority.as_str().contains('@') {
        return Err("credentials in the URL are not supported".into());
    }
    if authority.host().is_empty() {
        return Err("the URL has no host".into());
    }
    // `Uri` keeps a port it cannot use as a number as text.
    if let Some(p) = authority.as_str().rsplit_once(':').map(|(_, p)| p) {
        if !authority.as_str().ends_with(']') && !p.is_empty() && p.parse::<u16>().is_err() {
            return Err(format!("bad port {p:?}"));
        }
    }
    Ok(())
}

/// GET a JWKS (blocking; run it off the async threads). An `https://` URL is followed
/// through at most 3 redirects that stay on https; an `http://` URL (a local identity
/// provider) is not redirected.
fn url_get(url: &str) -> Result<Vec<u8>, String> {
    check_url(url)?;
    let https = strip_scheme(url, "https://").is_some();
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(JWKS_FETCH_TIMEOUT))
        .https_only(https)
        .max_redirects(if https { 3 } else { 0 })
        .http_status_as_error(false)
        .user_agent(user_agent())
        .build()
        .into();
    let mut response = agent
        .get(url)
        .header("Accept", "application/json, application/jwk-set+json")
        .call()
        .map_err(|e| match e {
            ureq::Error::Timeout(_) => {
                format!("timed out after {}s", JWKS_FETCH_TIMEOUT.as_secs())
            }
            e => e.to_string(),
        })?;
    let status = response.status().as_u16();
    if status != 200 {
        return Err(format!("answered HTTP {status}"));
    }
    response
        .body_mut()
        .with_config()
        .limit(MAX_JWKS_BYTES as u64)
        .read_to_vec()
        .map_err(|e| e.to_string())
}

// ---------------------------------------------------------------------------------------
// The verifier
// ---------------------------------------------------------------------------------------

/// A JWKS and what keeps it fresh.
struct JwksState {
    source: JwksSource,
    keys: RwLock<Arc<KeySet>>,
    /// Bumped on every successful reload.
    generation: AtomicU64,
    /// Serialises reloads.
    reload_lock: tokio::sync::Mutex<()>,
    /// When a token's unknown kid last caused a re-fetch.
    last_kid_refetch: Mutex<Option<Instant>>,
    /// Wakes the background task: to re-fetch now, or (when the verifier is dropped)
    /// to stop.
    wake: Arc<Notify>,
    /// Whether a background task runs (it needs a Tokio runtime at construction).
    background: bool,
}

impl JwksState {
    fn snapshot(&self) -> Arc<KeySet> {
        match self.keys.read() {
            Ok(g) => Arc::clone(&g),
            Err(poisoned) => Arc::clone(&poisoned.into_inner()),
        }
    }

    /// Claims the right to re-fetch for an unknown kid (at most once per
    /// [`UNKNOWN_KID_REFETCH_INTERVAL`]).
    fn claim_kid_refetch(&self) -> bool {
        let mut last = match self.last_kid_refetch.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        };
        let now = Instant::now();
        match *last {
            Some(t) if now.duration_since(t) < UNKNOWN_KID_REFETCH_INTERVAL => false,
            _ => {
                *last = Some(now);
                true
            }
        }
    }

    /// Reloads the set. On failure the old keys stay in force.
    async fn reload(&self) -> Result<(), String> {
        let seen = self.generation.load(Ordering::Acquire);
        let _guard = self.reload_lock.lock().await;
        if self.generation.load(Ordering::Acquire) != seen {
            // Someone reloaded while we waited: that answer is as fresh as ours.
            return Ok(());
        }
        let bytes = load_source(&self.source).await?;
        let set = parse_jwks(&bytes)?;
        tracing::debug!(source = %self.source, kids = ?set.kids(), "JWKS loaded");
        match self.keys.write() {
            Ok(mut g) => *g = Arc::new(set),
            Err(poisoned) => *poisoned.into_inner() = Arc::new(set),
        }
        self.generation.fetch_add(1, Ordering::AcqRel);
        Ok(())
    }
}

struct Inner {
    hs256: Option<DecodingKey>,
    jwks: Option<JwksState>,
    hs256_validation: Validation,
    rs256_validation: Validation,
    es256_validation: Validation,
    /// Whether `--audience` is set: without it, a token that names an audience was
    /// meant for another service and is refused.
    audience: bool,
    leeway_secs: u64,
}

impl Drop for Inner {
    fn drop(&mut self) {
        if let Some(jwks) = &self.jwks {
            // Lets the background task notice that the verifier is gone.
            jwks.wake.notify_one();
        }
    }
}

/// Verifies tokens. Cheap to clone (an `Arc` inside); `Send + Sync`.
#[derive(Clone)]
pub struct Verifier {
    inner: Arc<Inner>,
}

impl fmt::Debug for Verifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("Verifier");
        d.field("hs256", &self.inner.hs256.is_some());
        if let Some(jwks) = &self.inner.jwks {
            d.field("jwks", &jwks.source)
                .field("kids", &jwks.snapshot().kids());
        }
        d.finish()
    }
}

/// A parsed, not yet verified, token header.
struct TokenHead {
    alg: Algorithm,
    kid: Option<String>,
}

impl Verifier {
    /// Builds a verifier: loads the JWKS file or fetches the URL (failing with
    /// [`AuthError::Config`] if that gives no usable key), and, when called inside a Tokio
    /// runtime with a JWKS configured, starts the background refresh task (it stops when
    /// the last clone of the verifier is dropped).
    pub async fn new(cfg: AuthConfig) -> Result<Verifier, AuthError> {
        let hs256 = match cfg.hs256_secret.as_deref() {
            None => None,
            Some("") => return Err(AuthError::Config("the HS256 secret is empty".into())),
            Some(s) if s.trim_start().starts_with("-----BEGIN") => {
                return Err(AuthError::Config(
                    "the HS256 secret looks like a PEM key; HS256 takes a shared secret, \
                     and RS256/ES256 public keys belong in a JWKS"
                        .into(),
                ))
            }
            Some(s) => {
                if s.len() < MIN_HS256_SECRET_BYTES {
                    tracing::warn!(
                        "the HS256 secret is shorter than {MIN_HS256_SECRET_BYTES} bytes; \
                         use it for development only"
                    );
                }
                Some(DecodingKey::from_secret(s.as_bytes()))
            }
        };
        if hs256.is_none() && cfg.jwks.is_none() {
            return Err(AuthError::Config(
                "no key material: configure an HS256 secret or a JWKS".into(),
            ));
        }
        if cfg.leeway_secs > MAX_LEEWAY_SECS {
            return Err(AuthError::Config(format!(
                "a leeway of {} s is more than the {MAX_LEEWAY_SECS} s allowed",
                cfg.leeway_secs
            )));
        }
        if matches!(cfg.issuer.as_deref(), Some("")) {
            return Err(AuthError::Config("the issuer is empty".into()));
        }
        if matches!(cfg.audience.as_deref(), Some("")) {
            return Err(AuthError::Config("the audience is empty".into()));
        }

        let jwks = match cfg.jwks {
            None => None,
            Some(source) => {
                check_source(&source).map_err(AuthError::Config)?;
                let bytes = load_source(&source)
                    .await
                    .map_err(|e| AuthError::Config(format!("cannot load {source}: {e}")))?;
                let set = parse_jwks(&bytes)
                    .map_err(|e| AuthError::Config(format!("{source} is unusable: {e}")))?;
                tracing::info!(source = %source, kids = ?set.kids(), "JWKS loaded");
                Some(JwksState {
                    source,
                    keys: RwLock::new(Arc::new(set)),
                    generation: AtomicU64::new(0),
                    reload_lock: tokio::sync::Mutex::new(()),
                    last_kid_refetch: Mutex::new(None),
                    wake: Arc::new(Notify::new()),
                    background: tokio::runtime::Handle::try_current().is_ok(),
                })
            }
        };

        let validation = |alg: Algorithm| {
            let mut v = Validation::new(alg);
            v.leeway = cfg.leeway_secs;
            v.validate_exp = true;
            v.validate_nbf = true;
            let mut required = vec!["exp"];
            if let Some(iss) = &cfg.issuer {
                v.set_issuer(&[iss]);
                required.push("iss");
            }
            match &cfg.audience {
                Some(aud) => {
                    v.set_audience(&[aud]);
                    v.validate_aud = true;
                    required.push("aud");
                }
                // Not configured: a token that names an audience is refused after
                // decoding (`verify_now`), with the same code.
                None => v.validate_aud = false,
            }
            v.set_required_spec_claims(&required);
            v
        };

        let inner = Arc::new(Inner {
            hs256,
            jwks,
            hs256_validation: validation(Algorithm::HS256),
            rs256_validation: validation(Algorithm::RS256),
            es256_validation: validation(Algorithm::ES256),
            audience: cfg.audience.is_some(),
            leeway_secs: cfg.leeway_secs,
        });
        if let Some(jwks) = &inner.jwks {
            if jwks.background {
                tokio::spawn(refresh_task(Arc::downgrade(&inner), Arc::clone(&jwks.wake)));
            }
        }
        Ok(Verifier { inner })
    }

    /// Verifies `token` (the compact JWT, without any `Bearer ` prefix) and returns its
    /// claims. If the token names an unknown `kid`, the background task is asked to
    /// re-fetch the JWKS (rate-limited) and this call returns
    /// [`AuthError::UnknownKey`]; [`Verifier::verify_async`] waits for that re-fetch
    /// The clock skew allowed on `exp` and `nbf`, in seconds.
    pub fn leeway_secs(&self) -> u64 {
        self.inner.leeway_secs
    }

    /// Verifies `token` (the compact JWT, without any `Bearer ` prefix) and returns its
    /// claims. If the token names an unknown `kid`, the background task is asked to
    /// re-fetch the JWKS (rate-limited) and this call returns
    /// [`AuthError::UnknownKey`]; [`Verifier::verify_async`] waits for that re-fetch
    /// instead.
    pub fn verify(&self, token: &str) -> Result<Value, AuthError> {
        let result = self.verify_now(token);
        if matches!(result, Err(AuthError::UnknownKey(_))) {
            if let Some(jwks) = &self.inner.jwks {
                if jwks.background && jwks.claim_kid_refetch() {
                    jwks.wake.notify_one();
                }
            }
        }
        result
    }

    /// Like [`Verifier::verify`], but when the token names an unknown `kid` and a
    /// re-fetch is allowed (at most once per [`UNKNOWN_KID_REFETCH_INTERVAL`]), reloads
    /// the JWKS and tries once more.
    pub async fn verify_async(&self, token: &str) -> Result<Value, AuthError> {
        let result = self.verify_now(token);
        if let Err(AuthError::UnknownKey(_)) = &result {
            if let Some(jwks) = &self.inner.jwks {
                if jwks.claim_kid_refetch() {
                    match jwks.reload().await {
                        Ok(()) => return self.verify_now(token),
                        Err(e) => {
                            tracing::warn!(source = %jwks.source, "JWKS re-fetch failed: {e}")
                        }
                    }
                }
            }
        }
        result
    }

    /// The `kid`s of the JWKS keys in force (empty without a JWKS).
    pub fn jwks_key_ids(&self) -> Vec<String> {
        self.inner
            .jwks
            .as_ref()
            .map(|j| j.snapshot().kids())
            .unwrap_or_default()
    }

    /// Reloads the JWKS now (no rate limit). Without a JWKS, does nothing. On failure
    /// the keys in force stay.
    pub async fn refresh_jwks(&self) -> Result<(), AuthError> {
        match &self.inner.jwks {
            None => Ok(()),
            Some(jwks) => jwks
                .reload()
                .await
                .map_err(|e| AuthError::Config(format!("cannot reload {}: {e}", jwks.source))),
        }
    }

    fn verify_now(&self, token: &str) -> Result<Value, AuthError> {
        let head = parse_token(token)?;
        let snapshot;
        let (key, validation) = match head.alg {
            Algorithm::HS256 => {
                let key = self.inner.hs256.as_ref().ok_or_else(|| {
                    AuthError::Algorithm(
                        "HS256 needs the shared secret, and this server has none \
                         (it verifies RS256/ES256 against a JWKS)"
                            .into(),
                    )
                })?;
                (key, &self.inner.hs256_validation)
            }
            alg @ (Algorithm::RS256 | Algorithm::ES256) => {
                let jwks = self.inner.jwks.as_ref().ok_or_else(|| {
                    AuthError::Algorithm(format!(
                        "{alg:?} needs a JWKS, and this server has none (it verifies HS256)"
                    ))
                })?;
                snapshot = jwks.snapshot();
                let key = snapshot.select(alg, head.kid.as_deref())?;
                let validation = if alg == Algorithm::RS256 {
                    &self.inner.rs256_validation
                } else {
                    &self.inner.es256_validation
                };
                (key, validation)
            }
            alg => return Err(AuthError::Algorithm(format!("{alg:?} is not supported"))),
        };
        let data = jsonwebtoken::decode::<serde_json::Value>(token, key, validation)
            .map_err(from_jwt_error)?;
        if !data.claims.is_object() {
            return Err(AuthError::Malformed(
                "the claims are not a JSON object".into(),
            ));
        }
        // The identity every limit, quota and rule keys on: tokens without one would all
        // share the identity "null".
        match data.claims.get("sub") {
            Some(serde_json::Value::String(sub)) if !sub.is_empty() => {}
            _ => {
                return Err(AuthError::Malformed(
                    "the token has no subject: sub must be a non-empty string".into(),
                ))
            }
        }
        // Without a configured audience only tokens that name none are accepted: a token
        // an identity provider issued for another service must not open this one.
        if !self.inner.audience && data.claims.get("aud").is_some() {
            return Err(AuthError::WrongAudience);
        }
        Value::from_json(&data.claims)
            .map_err(|e| AuthError::Malformed(format!("the claims are not a Warren value: {e}")))
    }
}

/// Reloads the JWKS every [`JWKS_REFRESH_INTERVAL`] and when woken; stops when the
/// verifier is gone.
async fn refresh_task(inner: Weak<Inner>, wake: Arc<Notify>) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(JWKS_REFRESH_INTERVAL) => {}
            _ = wake.notified() => {}
        }
        let Some(inner) = inner.upgrade() else {
            return;
        };
        if let Some(jwks) = &inner.jwks {
            if let Err(e) = jwks.reload().await {
                tracing::warn!(source = %jwks.source, "JWKS refresh failed, keeping the old keys: {e}");
            }
        }
    }
}

/// Structural checks before any cryptography: three base64url parts, a JSON-object
/// header naming a supported algorithm, a JSON-object payload, a signature.
fn parse_token(token: &str) -> Result<TokenHead, AuthError> {
    if token.trim().is_empty() {
        return Err(AuthError::Missing);
    }
    if token.len() > MAX_TOKEN_LEN {
        return Err(AuthError::Malformed(format!(
            "the token is {} bytes; at most {MAX_TOKEN_LEN} are accepted",
            token.len()
        )));
    }
    let parts: Vec<&str> = token.split('.').collect();
    if parts.len() != 3 {
        return Err(AuthError::Malformed(format!(
            "a JWT has 3 dot-separated parts; this one has {}",
            parts.len()
        )));
    }
    let decode_json =
        |part: &str, what: &str| -> Result<serde_json::Map<String, serde_json::Value>, AuthError> {
            let bytes = B64URL
                .decode(part)
                .map_err(|_| AuthError::Malformed(format!("the {what} is not base64url")))?;
            match serde_json::from_slice::<serde_json::Value>(&bytes) {
                Ok(serde_json::Value::Object(m)) => Ok(m),
                Ok(_) => Err(AuthError::Malformed(format!(
                    "the {what} is not a JSON object"
                ))),
                Err(_) => Err(AuthError::Malformed(format!("the {what} is not JSON"))),
            }
        };
    let header = decode_json(parts[0], "header")?;
    let alg = match header.get("alg") {
        Some(serde_json::Value::String(a)) => a.as_str(),
        Some(_) => return Err(AuthError::Algorithm("alg is not a string".into())),
        None => return Err(AuthError::Algorithm("the header names no algorithm".into())),
    };
    let alg = match alg {
        "HS256" => Algorithm::HS256,
        "RS256" => Algorithm::RS256,
        "ES256" => Algorithm::ES256,
        a if a.eq_ignore_ascii_case("none") => {
            return Err(AuthError::Algorithm(
                "unsigned tokens (alg none) are never accepted".into(),
            ))
        }
        a => {
            return Err(AuthError::Algorithm(format!(
                "{} is not supported (HS256, RS256 and ES256 are)",
                short(a)
            )))
        }
    };
    if header.contains_key("crit") {
        return Err(AuthError::Malformed(
            "critical header extensions (crit) are not supported".into(),
        ));
    }
    let kid = match header.get("kid") {
        None | Some(serde_json::Value::Null) => None,
        Some(serde_json::Value::String(k)) => Some(k.clone()),
        Some(_) => return Err(AuthError::Malformed("kid is not a string".into())),
    };
    decode_json(parts[1], "payload")?;
    if parts[2].is_empty() {
        return Err(AuthError::Malformed("the token has no signature".into()));
    }
    if B64URL.decode(parts[2]).is_err() {
        return Err(AuthError::Malformed(
            "the signature is not base64url".into(),
        ));
    }
    Ok(TokenHead { alg, kid })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jwks_urls_are_checked() {
        assert!(check_url("http://127.0.0.1:8080/.well-known/jwks.json?x=1#f").is_ok());
        assert!(check_url("HTTP://[::1]/keys").is_ok());
        assert!(check_url("https://idp.example").is_ok());
        assert!(check_url("http://user:pw@idp.example/").is_err());
        assert!(check_url("http:///keys").is_err());
        assert!(check_url("http://h:99999/").is_err());
        assert!(check_url("http://idp.example/a b").is_err());
    }
}
