//! Token verification (`warren_server::auth`): what is accepted, and every refusal with
//! its stable code.
//!
//! Key material: `tests/fixtures/test-only-*.pem` are throwaway keys made for these tests
//! alone (see the README there); the JWKS documents are derived from them here.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU16, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use jsonwebtoken::jwk::{Jwk, JwkSet};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{json, Value as Json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use warren_server::auth::{
    dev_claims, mint_hs256, AuthConfig, AuthError, JwksSource, Verifier, MAX_TOKEN_LEN,
};

const SECRET: &str = "test-only-hs256-secret-0123456789abcdef";
const RSA_1_PRIVATE: &str = include_str!("fixtures/test-only-rsa-1.private.pem");
const RSA_1_PUBLIC: &str = include_str!("fixtures/test-only-rsa-1.public.pem");
const RSA_2_PRIVATE: &str = include_str!("fixtures/test-only-rsa-2.private.pem");
const EC_1_PRIVATE: &str = include_str!("fixtures/test-only-ec-1.private.pem");

// ---------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

fn rsa_1() -> EncodingKey {
    EncodingKey::from_rsa_pem(RSA_1_PRIVATE.as_bytes()).unwrap()
}

fn rsa_2() -> EncodingKey {
    EncodingKey::from_rsa_pem(RSA_2_PRIVATE.as_bytes()).unwrap()
}

fn ec_1() -> EncodingKey {
    EncodingKey::from_ec_pem(EC_1_PRIVATE.as_bytes()).unwrap()
}

fn hmac(secret: &[u8]) -> EncodingKey {
    EncodingKey::from_secret(secret)
}

/// Valid for an hour from now.
fn fresh_claims() -> Json {
    json!({"sub": "alice", "iat": now(), "exp": now() + 3600})
}

fn sign(alg: Algorithm, kid: Option<&str>, key: &EncodingKey, claims: &Json) -> String {
    let mut header = Header::new(alg);
    header.kid = kid.map(str::to_owned);
    jsonwebtoken::encode(&header, claims, key).unwrap()
}

/// A token from raw header and payload JSON text and a raw signature part.
fn raw_token(header: &str, payload: &str, signature: &str) -> String {
    format!(
        "{}.{}.{}",
        b64(header.as_bytes()),
        b64(payload.as_bytes()),
        signature
    )
}

fn jwk(key: &EncodingKey, alg: Algorithm, kid: &str) -> Jwk {
    let mut jwk = Jwk::from_encoding_key(key, alg).unwrap();
    jwk.common.key_id = Some(kid.to_owned());
    jwk
}

/// `{"keys": [rsa-1, rsa-2, ec-1]}`.
fn full_jwks() -> Json {
    serde_json::to_value(JwkSet {
        keys: vec![
            jwk(&rsa_1(), Algorithm::RS256, "rsa-1"),
            jwk(&rsa_2(), Algorithm::RS256, "rsa-2"),
            jwk(&ec_1(), Algorithm::ES256, "ec-1"),
        ],
    })
    .unwrap()
}

fn jwks_of(keys: &[(&EncodingKey, Algorithm, &str)]) -> String {
    let set = JwkSet {
        keys: keys
            .iter()
            .map(|(key, alg, kid)| jwk(key, *alg, kid))
            .collect(),
    };
    serde_json::to_string(&set).unwrap()
}

fn temp_file(name: &str, contents: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("warren-auth-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name);
    std::fs::write(&path, contents).unwrap();
    path
}

fn hs256_config() -> AuthConfig {
    AuthConfig {
        hs256_secret: Some(SECRET.into()),
        ..AuthConfig::default()
    }
}

fn jwks_file_config(name: &str, jwks: &Json) -> AuthConfig {
    AuthConfig {
        jwks: Some(JwksSource::File(temp_file(name, &jwks.to_string()))),
        ..AuthConfig::default()
    }
}

async fn verifier(cfg: AuthConfig) -> Verifier {
    Verifier::new(cfg).await.unwrap()
}

/// The error code of a refusal (panics if the token was accepted).
fn refused(v: &Verifier, token: &str) -> &'static str {
    match v.verify(token) {
        Ok(claims) => panic!("token accepted: {:?}", claims.to_json()),
        Err(e) => {
            // Every error renders a message and is a std error.
            assert!(!e.to_string().is_empty());
            let _: &dyn std::error::Error = &e;
            e.code()
        }
    }
}

fn accepted(v: &Verifier, token: &str) -> Json {
    match v.verify(token) {
        Ok(claims) => claims.to_json(),
        Err(e) => panic!("token refused: {} ({e})", e.code()),
    }
}

async fn config_error(cfg: AuthConfig) -> String {
    match Verifier::new(cfg).await {
        Ok(_) => panic!("the configuration was accepted"),
        Err(e) => {
            assert_eq!(e.code(), "AUTH_CONFIG", "{e}");
            e.to_string()
        }
    }
}

/// A tiny JWKS server on 127.0.0.1: serves `body` at `/.well-known/jwks.json` with
/// `status`, as one Content-Length body or (when `chunked`) in small chunks, and counts
/// requests.
struct JwksServer {
    url: String,
    body: Arc<Mutex<String>>,
    hits: Arc<AtomicUsize>,
    chunked: Arc<AtomicBool>,
    status: Arc<AtomicU16>,
}

impl JwksServer {
    async fn start(body: String) -> JwksServer {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!(
            "http://{}/.well-known/jwks.json",
            listener.local_addr().unwrap()
        );
        let server = JwksServer {
            url,
            body: Arc::new(Mutex::new(body)),
            hits: Arc::new(AtomicUsize::new(0)),
            chunked: Arc::new(AtomicBool::new(false)),
            status: Arc::new(AtomicU16::new(200)),
        };
        let (body, hits, chunked, status) = (
            server.body.clone(),
            server.hits.clone(),
            server.chunked.clone(),
            server.status.clone(),
        );
        tokio::spawn(async move {
            // Bounded: a test makes a handful of requests.
            for _ in 0..100 {
                let Ok((mut sock, _)) = listener.accept().await else {
                    return;
                };
                let mut request = Vec::new();
                let mut buf = [0u8; 1024];
                while !request.windows(4).any(|w| w == b"\r\n\r\n") && request.len() < 16384 {
                    match sock.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => request.extend_from_slice(&buf[..n]),
                    }
                }
                hits.fetch_add(1, Ordering::SeqCst);
                let request = String::from_utf8_lossy(&request).to_string();
                let right_path = request.starts_with("GET /.well-known/jwks.json HTTP/1.1\r\n")
                    && request
                        .to_ascii_lowercase()
                        .contains("\r\nhost: 127.0.0.1:");
                let code = if right_path {
                    status.load(Ordering::SeqCst)
                } else {
                    404
                };
                let body = body.lock().unwrap().clone();
                let response = if code != 200 {
                    format!(
                        "HTTP/1.1 {code} Nope\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                    )
                } else if chunked.load(Ordering::SeqCst) {
                    let mut r = String::from(
                        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n\
                         Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n",
                    );
                    for piece in body.as_bytes().chunks(100) {
                        r.push_str(&format!("{:x}\r\n", piece.len()));
                        r.push_str(std::str::from_utf8(piece).unwrap());
                        r.push_str("\r\n");
                    }
                    r.push_str("0\r\n\r\n");
                    r
                } else {
                    format!(
                        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n\
                         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
                        body.len()
                    )
                };
                let _ = sock.write_all(response.as_bytes()).await;
                let _ = sock.shutdown().await;
            }
        });
        server
    }

    fn set_body(&self, body: String) {
        *self.body.lock().unwrap() = body;
    }

    fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }

    fn config(&self) -> AuthConfig {
        AuthConfig {
            jwks: Some(JwksSource::Url(self.url.clone())),
            ..AuthConfig::default()
        }
    }
}

// ---------------------------------------------------------------------------------------
// Accepted tokens
// ---------------------------------------------------------------------------------------

#[test]
fn verifier_is_send_sync_and_cheap_to_share() {
    fn shareable<T: Send + Sync + Clone + 'static>() {}
    shareable::<Verifier>();
    shareable::<Arc<Verifier>>();
    fn error<T: std::error::Error + Send + Sync + 'static>() {}
    error::<AuthError>();
}

#[tokio::test]
async fn hs256_dev_token_is_accepted() {
    let v = verifier(hs256_config()).await;
    let claims = dev_claims("alice", 600, None, None);
    let token = mint_hs256(SECRET, &claims).unwrap();
    let got = accepted(&v, &token);
    assert_eq!(got["sub"], "alice");
    assert_eq!(got["exp"], claims["exp"]);
    assert_eq!(got, claims);

    // Extra claims come through as Warren values (ints stay ints).
    let mut claims = dev_claims("bob", 600, None, None);
    claims["roles"] = json!(["admin", "editor"]);
    claims["team"] = json!({"id": 7});
    let got = v.verify(&mint_hs256(SECRET, &claims).unwrap()).unwrap();
    assert_eq!(got.to_json(), claims);
    assert!(matches!(got, warren_core::Value::Object(_)));
}

#[tokio::test]
async fn dev_claims_have_sub_iat_exp_and_optional_iss_aud() {
    let c = dev_claims("carol", 3600, Some("https://issuer.test"), Some("warren"));
    let t = now();
    assert_eq!(c["sub"], "carol");
    let iat = c["iat"].as_u64().unwrap();
    assert!(iat.abs_diff(t) <= 2);
    assert_eq!(c["exp"].as_u64().unwrap(), iat + 3600);
    assert_eq!(c["iss"], "https://issuer.test");
    assert_eq!(c["aud"], "warren");
    let c = dev_claims("carol", 60, None, None);
    assert!(c.get("iss").is_none() && c.get("aud").is_none());

    let cfg = AuthConfig {
        issuer: Some("https://issuer.test".into()),
        audience: Some("warren".into()),
        ..hs256_config()
    };
    let v = verifier(cfg).await;
    let token = mint_hs256(
        SECRET,
        &dev_claims("carol", 60, Some("https://issuer.test"), Some("warren")),
    )
    .unwrap();
    assert_eq!(accepted(&v, &token)["sub"], "carol");
}

#[tokio::test]
async fn mint_refuses_an_empty_secret_and_non_object_claims() {
    assert_eq!(
        mint_hs256("", &fresh_claims()).unwrap_err().code(),
        "AUTH_CONFIG"
    );
    assert_eq!(
        mint_hs256(SECRET, &json!([1, 2])).unwrap_err().code(),
        "TOKEN_MALFORMED"
    );
}

#[tokio::test]
async fn rs256_and_es256_are_accepted_against_a_jwks_file() {
    let v = verifier(jwks_file_config("full.json", &full_jwks())).await;
    let mut kids = v.jwks_key_ids();
    kids.sort();
    assert_eq!(kids, ["ec-1", "rsa-1", "rsa-2"]);

    let c = fresh_claims();
    assert_eq!(
        accepted(&v, &sign(Algorithm::RS256, Some("rsa-1"), &rsa_1(), &c)),
        c
    );
    assert_eq!(
        accepted(&v, &sign(Algorithm::RS256, Some("rsa-2"), &rsa_2(), &c)),
        c
    );
    assert_eq!(
        accepted(&v, &sign(Algorithm::ES256, Some("ec-1"), &ec_1(), &c)),
        c
    );
    // No kid, exactly one key of the type: that key.
    assert_eq!(accepted(&v, &sign(Algorithm::ES256, None, &ec_1(), &c)), c);
    // No kid, two RSA keys: which one is not guessed.
    assert_eq!(
        refused(&v, &sign(Algorithm::RS256, None, &rsa_1(), &c)),
        "TOKEN_UNKNOWN_KEY"
    );
    // A kid naming a key of the other type.
    assert_eq!(
        refused(&v, &sign(Algorithm::RS256, Some("ec-1"), &rsa_1(), &c)),
        "TOKEN_ALGORITHM"
    );
    assert_eq!(
        refused(&v, &sign(Algorithm::ES256, Some("rsa-1"), &ec_1(), &c)),
        "TOKEN_ALGORITHM"
    );
    // Signed by one key, naming another.
    assert_eq!(
        refused(&v, &sign(Algorithm::RS256, Some("rsa-1"), &rsa_2(), &c)),
        "TOKEN_BAD_SIGNATURE"
    );
}

#[tokio::test]
async fn a_token_without_kid_uses_the_only_key_of_its_type() {
    let jwks: Json =
        serde_json::from_str(&jwks_of(&[(&rsa_1(), Algorithm::RS256, "only")])).unwrap();
    let v = verifier(jwks_file_config("one-rsa.json", &jwks)).await;
    let c = fresh_claims();
    assert_eq!(accepted(&v, &sign(Algorithm::RS256, None, &rsa_1(), &c)), c);
    // ES256 needs an EC key and the set has none.
    assert_eq!(
        refused(&v, &sign(Algorithm::ES256, None, &ec_1(), &c)),
        "TOKEN_ALGORITHM"
    );
}

#[tokio::test]
async fn jwks_keys_not_for_rs256_or_es256_signatures_are_ignored() {
    let good = jwk(&rsa_1(), Algorithm::RS256, "rsa-1");
    let mut enc = serde_json::to_value(jwk(&rsa_2(), Algorithm::RS256, "rsa-enc")).unwrap();
    enc["use"] = json!("enc");
    let mut ps = serde_json::to_value(jwk(&rsa_2(), Algorithm::RS256, "rsa-ps")).unwrap();
    ps["alg"] = json!("PS256");
    let jwks = json!({"keys": [
        good,
        enc,
        ps,
        // Symmetric keys never verify anything: HS256 takes only the configured secret.
        {"kty": "oct", "kid": "oct-1", "k": b64(SECRET.as_bytes())},
        // Too short an RSA modulus (1024 bits).
        {"kty": "RSA", "kid": "rsa-short", "n": b64(&[0xc5; 128]), "e": "AQAB"},
        // A point that is not on P-256.
        {"kty": "EC", "kid": "ec-bad", "crv": "P-256", "x": b64(&[1; 32]), "y": b64(&[2; 32])},
        {"kty": "EC", "kid": "ec-384", "crv": "P-384", "x": b64(&[1; 48]), "y": b64(&[2; 48])},
        {"kty": "OKP", "kid": "ed", "crv": "Ed25519", "x": b64(&[3; 32])},
        "not a key",
    ]});
    let v = verifier(jwks_file_config("mixed.json", &jwks)).await;
    assert_eq!(v.jwks_key_ids(), ["rsa-1"]);
    let c = fresh_claims();
    assert_eq!(
        refused(
            &v,
            &sign(
                Algorithm::HS256,
                Some("oct-1"),
                &hmac(SECRET.as_bytes()),
                &c
            )
        ),
        "TOKEN_ALGORITHM"
    );
    assert_eq!(
        refused(&v, &sign(Algorithm::RS256, Some("rsa-enc"), &rsa_2(), &c)),
        "TOKEN_UNKNOWN_KEY"
    );
    assert_eq!(accepted(&v, &sign(Algorithm::RS256, None, &rsa_1(), &c)), c);
}

// ---------------------------------------------------------------------------------------
// JWKS over HTTP
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn jwks_url_is_fetched_and_refetched_for_an_unknown_kid() {
    let server = JwksServer::start(jwks_of(&[(&rsa_1(), Algorithm::RS256, "rsa-1")])).await;
    let v = verifier(server.config()).await;
    assert_eq!(server.hits(), 1);
    assert_eq!(v.jwks_key_ids(), ["rsa-1"]);

    let c = fresh_claims();
    let t1 = sign(Algorithm::RS256, Some("rsa-1"), &rsa_1(), &c);
    let t2 = sign(Algorithm::RS256, Some("rsa-2"), &rsa_2(), &c);
    assert_eq!(accepted(&v, &t1), c);

    // The provider rotates in a new key; a token naming it makes the verifier re-fetch
    // (this time the body comes chunked).
    server.chunked.store(true, Ordering::SeqCst);
    server.set_body(jwks_of(&[
        (&rsa_1(), Algorithm::RS256, "rsa-1"),
        (&rsa_2(), Algorithm::RS256, "rsa-2"),
    ]));
    assert_eq!(v.verify_async(&t2).await.unwrap().to_json(), c);
    assert_eq!(server.hits(), 2);
    assert_eq!(accepted(&v, &t2), c);

    // Another unknown kid within 30 s: no new fetch.
    let t3 = sign(Algorithm::RS256, Some("rsa-3"), &rsa_2(), &c);
    assert_eq!(
        v.verify_async(&t3).await.unwrap_err().code(),
        "TOKEN_UNKNOWN_KEY"
    );
    assert_eq!(refused(&v, &t3), "TOKEN_UNKNOWN_KEY");
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(server.hits(), 2);

    // An explicit refresh drops a retired key.
    server.chunked.store(false, Ordering::SeqCst);
    server.set_body(jwks_of(&[(&rsa_2(), Algorithm::RS256, "rsa-2")]));
    v.refresh_jwks().await.unwrap();
    assert_eq!(server.hits(), 3);
    assert_eq!(v.jwks_key_ids(), ["rsa-2"]);
    assert_eq!(refused(&v, &t1), "TOKEN_UNKNOWN_KEY");

    // A failed refresh keeps the keys in force.
    server.status.store(503, Ordering::SeqCst);
    let e = v.refresh_jwks().await.unwrap_err();
    assert_eq!(e.code(), "AUTH_CONFIG");
    assert!(e.to_string().contains("503"), "{e}");
    assert_eq!(accepted(&v, &t2), c);
    server.status.store(200, Ordering::SeqCst);
    server.set_body("{\"keys\": []}".into());
    assert!(v.refresh_jwks().await.is_err());
    assert_eq!(accepted(&v, &t2), c);
}

#[tokio::test]
async fn an_unknown_kid_in_sync_verify_wakes_the_background_refetch() {
    let server = JwksServer::start(jwks_of(&[(&ec_1(), Algorithm::ES256, "ec-1")])).await;
    let v = verifier(server.config()).await;
    let c = fresh_claims();
    let token = sign(Algorithm::RS256, Some("rsa-1"), &rsa_1(), &c);
    server.set_body(jwks_of(&[
        (&ec_1(), Algorithm::ES256, "ec-1"),
        (&rsa_1(), Algorithm::RS256, "rsa-1"),
    ]));
    assert_eq!(refused(&v, &token), "TOKEN_UNKNOWN_KEY");
    // The background task fetches the new set; the same token then passes.
    let mut ok = false;
    for _ in 0..100 {
        tokio::time::sleep(Duration::from_millis(50)).await;
        if v.verify(&token).is_ok() {
            ok = true;
            break;
        }
    }
    assert!(ok, "the background re-fetch did not happen");
    assert_eq!(server.hits(), 2);
}

#[tokio::test]
async fn jwks_url_failures_are_config_errors() {
    // 404 (wrong path).
    let server = JwksServer::start(jwks_of(&[(&rsa_1(), Algorithm::RS256, "rsa-1")])).await;
    let wrong = server.url.replace("jwks.json", "nope.json");
    let e = config_error(AuthConfig {
        jwks: Some(JwksSource::Url(wrong)),
        ..AuthConfig::default()
    })
    .await;
    assert!(e.contains("404"), "{e}");

    // Nothing listening.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    for url in [
        format!("http://127.0.0.1:{port}/jwks.json"),
        // https goes through the TLS client; nothing listens there either.
        format!("https://127.0.0.1:{port}/jwks.json"),
    ] {
        config_error(AuthConfig {
            jwks: Some(JwksSource::Url(url)),
            ..AuthConfig::default()
        })
        .await;
    }

    // Not a JWKS.
    server.set_body("<html>hello</html>".into());
    config_error(server.config()).await;
    // Unsupported schemes and broken URLs.
    for url in [
        "ftp://127.0.0.1/jwks.json",
        "127.0.0.1/jwks.json",
        "http://",
    ] {
        config_error(AuthConfig {
            jwks: Some(JwksSource::Url(url.into())),
            ..AuthConfig::default()
        })
        .await;
    }
}

// ---------------------------------------------------------------------------------------
// Configuration
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn bad_configurations_are_refused() {
    config_error(AuthConfig::default()).await;
    config_error(AuthConfig {
        hs256_secret: Some(String::new()),
        ..AuthConfig::default()
    })
    .await;
    // A public key pasted as the HMAC secret is the algorithm-confusion set-up.
    let e = config_error(AuthConfig {
        hs256_secret: Some(RSA_1_PUBLIC.into()),
        ..AuthConfig::default()
    })
    .await;
    assert!(e.contains("PEM"), "{e}");
    config_error(AuthConfig {
        leeway_secs: u64::MAX,
        ..hs256_config()
    })
    .await;
    config_error(AuthConfig {
        issuer: Some(String::new()),
        ..hs256_config()
    })
    .await;
    config_error(AuthConfig {
        jwks: Some(JwksSource::File(PathBuf::from("does/not/exist.json"))),
        ..AuthConfig::default()
    })
    .await;
    config_error(jwks_file_config("not-json.json", &json!("nope"))).await;
    config_error(jwks_file_config("empty.json", &json!({"keys": []}))).await;
    config_error(jwks_file_config(
        "oct-only.json",
        &json!({"keys": [{"kty": "oct", "k": b64(SECRET.as_bytes())}]}),
    ))
    .await;
}

#[test]
fn every_error_has_its_stable_code() {
    let cases = [
        (AuthError::Missing, "TOKEN_MISSING"),
        (AuthError::Malformed("x".into()), "TOKEN_MALFORMED"),
        (AuthError::Expired, "TOKEN_EXPIRED"),
        (AuthError::NotYetValid, "TOKEN_NOT_YET_VALID"),
        (AuthError::BadSignature, "TOKEN_BAD_SIGNATURE"),
        (AuthError::WrongIssuer, "TOKEN_WRONG_ISSUER"),
        (AuthError::WrongAudience, "TOKEN_WRONG_AUDIENCE"),
        (AuthError::Algorithm("x".into()), "TOKEN_ALGORITHM"),
        (AuthError::UnknownKey("x".into()), "TOKEN_UNKNOWN_KEY"),
        (AuthError::Config("x".into()), "AUTH_CONFIG"),
    ];
    for (e, code) in cases {
        assert_eq!(e.code(), code);
        assert!(!e.to_string().is_empty());
    }
}

#[test]
fn config_debug_does_not_show_the_secret() {
    let shown = format!("{:?}", hs256_config());
    assert!(!shown.contains(SECRET), "{shown}");
    assert!(shown.contains("redacted"));
}

// ---------------------------------------------------------------------------------------
// Refusals
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn expired_tokens_are_refused_outside_the_leeway() {
    let v = verifier(hs256_config()).await; // leeway 60 s
    let key = hmac(SECRET.as_bytes());
    let expired = json!({"sub": "a", "exp": now() - 3600});
    assert_eq!(
        refused(&v, &sign(Algorithm::HS256, None, &key, &expired)),
        "TOKEN_EXPIRED"
    );
    let within_leeway = json!({"sub": "a", "exp": now() - 10});
    accepted(&v, &sign(Algorithm::HS256, None, &key, &within_leeway));

    let strict = verifier(AuthConfig {
        leeway_secs: 0,
        ..hs256_config()
    })
    .await;
    assert_eq!(
        refused(&strict, &sign(Algorithm::HS256, None, &key, &within_leeway)),
        "TOKEN_EXPIRED"
    );

    // RS256 too.
    let v = verifier(jwks_file_config("exp.json", &full_jwks())).await;
    assert_eq!(
        refused(
            &v,
            &sign(Algorithm::RS256, Some("rsa-1"), &rsa_1(), &expired)
        ),
        "TOKEN_EXPIRED"
    );
}

#[tokio::test]
async fn tokens_before_nbf_are_refused() {
    let v = verifier(hs256_config()).await;
    let key = hmac(SECRET.as_bytes());
    let later = json!({"sub": "a", "nbf": now() + 3600, "exp": now() + 7200});
    assert_eq!(
        refused(&v, &sign(Algorithm::HS256, None, &key, &later)),
        "TOKEN_NOT_YET_VALID"
    );
    let soon = json!({"sub": "a", "nbf": now() + 10, "exp": now() + 7200});
    accepted(&v, &sign(Algorithm::HS256, None, &key, &soon));
    let past = json!({"sub": "a", "nbf": now() - 10, "exp": now() + 7200});
    accepted(&v, &sign(Algorithm::HS256, None, &key, &past));
}

#[tokio::test]
async fn bad_signatures_are_refused() {
    let v = verifier(hs256_config()).await;
    let c = fresh_claims();
    assert_eq!(
        refused(
            &v,
            &mint_hs256("another-secret-of-32-bytes-or-more!!", &c).unwrap()
        ),
        "TOKEN_BAD_SIGNATURE"
    );

    // A payload changed after signing.
    let token = mint_hs256(SECRET, &c).unwrap();
    let parts: Vec<&str> = token.split('.').collect();
    let forged = json!({"sub": "mallory", "exp": now() + 3600});
    let tampered = format!(
        "{}.{}.{}",
        parts[0],
        b64(forged.to_string().as_bytes()),
        parts[2]
    );
    assert_eq!(refused(&v, &tampered), "TOKEN_BAD_SIGNATURE");
    // A signature of the right shape but wrong bytes.
    let zeroed = format!("{}.{}.{}", parts[0], parts[1], b64(&[0; 32]));
    assert_eq!(refused(&v, &zeroed), "TOKEN_BAD_SIGNATURE");

    let v = verifier(jwks_file_config("sig.json", &full_jwks())).await;
    for (alg, kid, key) in [
        (Algorithm::RS256, "rsa-1", rsa_1()),
        (Algorithm::ES256, "ec-1", ec_1()),
    ] {
        let token = sign(alg, Some(kid), &key, &c);
        let parts: Vec<&str> = token.split('.').collect();
        let tampered = format!(
            "{}.{}.{}",
            parts[0],
            b64(forged.to_string().as_bytes()),
            parts[2]
        );
        assert_eq!(refused(&v, &tampered), "TOKEN_BAD_SIGNATURE", "{alg:?}");
    }
}

#[tokio::test]
async fn issuer_is_checked_when_configured() {
    let v = verifier(AuthConfig {
        issuer: Some("https://issuer.test".into()),
        ..hs256_config()
    })
    .await;
    let mut c = fresh_claims();
    assert_eq!(
        refused(&v, &mint_hs256(SECRET, &c).unwrap()),
        "TOKEN_WRONG_ISSUER",
        "a missing iss"
    );
    c["iss"] = json!("https://evil.test");
    assert_eq!(
        refused(&v, &mint_hs256(SECRET, &c).unwrap()),
        "TOKEN_WRONG_ISSUER"
    );
    c["iss"] = json!("https://issuer.test");
    accepted(&v, &mint_hs256(SECRET, &c).unwrap());

    // Not configured: not checked.
    let v = verifier(hs256_config()).await;
    c["iss"] = json!("https://anyone.test");
    accepted(&v, &mint_hs256(SECRET, &c).unwrap());
}

#[tokio::test]
async fn audience_is_checked_when_configured() {
    let v = verifier(AuthConfig {
        audience: Some("warren".into()),
        ..hs256_config()
    })
    .await;
    let mut c = fresh_claims();
    assert_eq!(
        refused(&v, &mint_hs256(SECRET, &c).unwrap()),
        "TOKEN_WRONG_AUDIENCE",
        "a missing aud"
    );
    c["aud"] = json!("someone-else");
    assert_eq!(
        refused(&v, &mint_hs256(SECRET, &c).unwrap()),
        "TOKEN_WRONG_AUDIENCE"
    );
    c["aud"] = json!(["someone-else", "another"]);
    assert_eq!(
        refused(&v, &mint_hs256(SECRET, &c).unwrap()),
        "TOKEN_WRONG_AUDIENCE"
    );
    c["aud"] = json!("warren");
    accepted(&v, &mint_hs256(SECRET, &c).unwrap());
    c["aud"] = json!(["someone-else", "warren"]);
    accepted(&v, &mint_hs256(SECRET, &c).unwrap());

    // Not configured: a token that names any audience was issued for another service
    // and is refused; one that names none is accepted.
    let v = verifier(hs256_config()).await;
    assert_eq!(
        refused(&v, &mint_hs256(SECRET, &c).unwrap()),
        "TOKEN_WRONG_AUDIENCE"
    );
    c["aud"] = json!("warren");
    assert_eq!(
        refused(&v, &mint_hs256(SECRET, &c).unwrap()),
        "TOKEN_WRONG_AUDIENCE"
    );
    accepted(&v, &mint_hs256(SECRET, &fresh_claims()).unwrap());
}

/// Every limit, quota and rule keys on `sub`: a token without one (which would share
/// the identity "null" with every other such token) is refused.
#[tokio::test]
async fn a_token_without_a_subject_is_refused() {
    let v = verifier(hs256_config()).await;
    for sub in [None, Some(json!("")), Some(json!(42)), Some(json!(null))] {
        let mut c = fresh_claims();
        match &sub {
            None => {
                c.as_object_mut().unwrap().remove("sub");
            }
            Some(s) => c["sub"] = s.clone(),
        }
        assert_eq!(
            refused(&v, &mint_hs256(SECRET, &c).unwrap()),
            "TOKEN_MALFORMED",
            "sub {sub:?}"
        );
    }
}

#[tokio::test]
async fn alg_none_is_always_refused() {
    let hs = verifier(hs256_config()).await;
    let jwks = verifier(jwks_file_config("none.json", &full_jwks())).await;
    let payload = fresh_claims().to_string();
    for header in [
        r#"{"alg":"none"}"#,
        r#"{"alg":"none","typ":"JWT"}"#,
        r#"{"alg":"None","kid":"rsa-1"}"#,
        r#"{"alg":"NONE"}"#,
    ] {
        for signature in ["", "c2ln"] {
            let token = raw_token(header, &payload, signature);
            assert_eq!(refused(&hs, &token), "TOKEN_ALGORITHM", "{header}");
            assert_eq!(refused(&jwks, &token), "TOKEN_ALGORITHM", "{header}");
            assert_eq!(
                jwks.verify_async(&token).await.unwrap_err().code(),
                "TOKEN_ALGORITHM"
            );
        }
    }
}

#[tokio::test]
async fn hs256_signed_with_the_rsa_public_key_is_refused() {
    // Algorithm confusion: the attacker knows the RS256 public key and uses its PEM as
    // an HMAC secret, hoping the server verifies HS256 with "the key named by kid".
    let c = fresh_claims();
    let confused = hmac(RSA_1_PUBLIC.as_bytes());
    let with_kid = sign(Algorithm::HS256, Some("rsa-1"), &confused, &c);
    let without_kid = sign(Algorithm::HS256, None, &confused, &c);
    // Also with the raw DER-ish variants attackers try: the PEM without its trailing
    // newline.
    let trimmed = sign(
        Algorithm::HS256,
        Some("rsa-1"),
        &hmac(RSA_1_PUBLIC.trim_end().as_bytes()),
        &c,
    );

    // JWKS only: HS256 is not an algorithm this server takes.
    let v = verifier(jwks_file_config("confusion.json", &full_jwks())).await;
    for token in [&with_kid, &without_kid, &trimmed] {
        assert_eq!(refused(&v, token), "TOKEN_ALGORITHM");
    }

    // Secret and JWKS: HS256 is checked against the secret only, never a JWKS key.
    let mut cfg = jwks_file_config("confusion-2.json", &full_jwks());
    cfg.hs256_secret = Some(SECRET.into());
    let v = verifier(cfg).await;
    for token in [&with_kid, &without_kid, &trimmed] {
        assert_eq!(refused(&v, token), "TOKEN_BAD_SIGNATURE");
    }
    // ... while both genuine kinds pass.
    accepted(&v, &mint_hs256(SECRET, &c).unwrap());
    accepted(&v, &sign(Algorithm::RS256, Some("rsa-1"), &rsa_1(), &c));
}

#[tokio::test]
async fn algorithms_must_match_the_configured_key_material() {
    let c = fresh_claims();
    let hs = verifier(hs256_config()).await;
    let jwks = verifier(jwks_file_config("algs.json", &full_jwks())).await;

    // RS256/ES256 without a JWKS.
    assert_eq!(
        refused(&hs, &sign(Algorithm::RS256, Some("rsa-1"), &rsa_1(), &c)),
        "TOKEN_ALGORITHM"
    );
    assert_eq!(
        refused(&hs, &sign(Algorithm::ES256, None, &ec_1(), &c)),
        "TOKEN_ALGORITHM"
    );
    // Algorithms not supported at all, even with fitting keys.
    for (alg, key, kid) in [
        (Algorithm::RS384, rsa_1(), Some("rsa-1")),
        (Algorithm::RS512, rsa_1(), Some("rsa-1")),
        (Algorithm::PS256, rsa_1(), Some("rsa-1")),
        (Algorithm::HS384, hmac(SECRET.as_bytes()), None),
        (Algorithm::HS512, hmac(SECRET.as_bytes()), None),
    ] {
        let token = sign(alg, kid, &key, &c);
        assert_eq!(refused(&hs, &token), "TOKEN_ALGORITHM", "{alg:?}");
        assert_eq!(refused(&jwks, &token), "TOKEN_ALGORITHM", "{alg:?}");
    }
    for header in [
        r#"{"typ":"JWT"}"#,
        r#"{"alg":5}"#,
        r#"{"alg":"EdDSA"}"#,
        r#"{"alg":"hs256"}"#,
    ] {
        let token = raw_token(header, &c.to_string(), "c2ln");
        assert_eq!(refused(&hs, &token), "TOKEN_ALGORITHM", "{header}");
    }
}

#[tokio::test]
async fn unknown_kids_are_refused() {
    let v = verifier(jwks_file_config("kids.json", &full_jwks())).await;
    let c = fresh_claims();
    assert_eq!(
        refused(&v, &sign(Algorithm::RS256, Some("rsa-9"), &rsa_1(), &c)),
        "TOKEN_UNKNOWN_KEY"
    );
    assert_eq!(
        v.verify_async(&sign(Algorithm::ES256, Some("ec-9"), &ec_1(), &c))
            .await
            .unwrap_err()
            .code(),
        "TOKEN_UNKNOWN_KEY"
    );
    // A long kid is not echoed in full.
    let long_kid = "k".repeat(5000);
    let e = v
        .verify(&sign(Algorithm::RS256, Some(&long_kid), &rsa_1(), &c))
        .unwrap_err();
    assert_eq!(e.code(), "TOKEN_UNKNOWN_KEY");
    assert!(e.to_string().len() < 300, "{e}");
}

#[tokio::test]
async fn malformed_tokens_are_refused() {
    let v = verifier(hs256_config()).await;
    let jwks = verifier(jwks_file_config("malformed.json", &full_jwks())).await;
    let c = fresh_claims();
    let good = mint_hs256(SECRET, &c).unwrap();
    let parts: Vec<&str> = good.split('.').collect();
    let hs_header = parts[0];

    assert_eq!(refused(&v, ""), "TOKEN_MISSING");
    assert_eq!(refused(&v, "   "), "TOKEN_MISSING");
    assert_eq!(refused(&jwks, ""), "TOKEN_MISSING");

    let huge = format!("{}.{}.{}", hs_header, "A".repeat(MAX_TOKEN_LEN), parts[2]);
    let non_json_payload = format!("{hs_header}.{}.{}", b64(b"not json {"), parts[2]);
    let array_payload = format!("{hs_header}.{}.{}", b64(b"[1,2,3]"), parts[2]);
    let non_json_header = format!("{}.{}.{}", b64(b"{alg"), parts[1], parts[2]);
    let padded = format!("{}.{}=.{}", parts[0], parts[1], parts[2]);
    let cases: Vec<(&str, String)> = vec![
        ("one part", "abc".into()),
        ("two parts", format!("{}.{}", parts[0], parts[1])),
        ("four parts", format!("{good}.{}", parts[2])),
        ("dots only", "..".into()),
        ("garbage base64", "!!!.@@@.###".into()),
        (
            "garbage base64 payload",
            format!("{hs_header}.%%%%.{}", parts[2]),
        ),
        (
            "garbage base64 signature",
            format!("{}.{}.***", parts[0], parts[1]),
        ),
        ("padding", padded),
        ("non-JSON header", non_json_header),
        ("non-JSON payload", non_json_payload),
        ("array payload", array_payload),
        ("empty signature", format!("{}.{}.", parts[0], parts[1])),
        ("huge", huge),
        ("megabyte", "a".repeat(1 << 20)),
        ("binary", "\u{0}\u{1}.\u{2}.\u{3}".into()),
        (
            "crit header",
            raw_token(
                r#"{"alg":"HS256","crit":["exp"]}"#,
                &c.to_string(),
                parts[2],
            ),
        ),
        (
            "non-string kid",
            raw_token(r#"{"alg":"RS256","kid":7}"#, &c.to_string(), parts[2]),
        ),
    ];
    for (what, token) in &cases {
        assert_eq!(refused(&v, token), "TOKEN_MALFORMED", "{what}");
        assert_eq!(refused(&jwks, token), "TOKEN_MALFORMED", "{what}");
    }

    // Correctly signed, but without exp, or with a non-numeric exp or nbf.
    let key = hmac(SECRET.as_bytes());
    for claims in [
        json!({"sub": "a"}),
        json!({"sub": "a", "exp": "tomorrow"}),
        json!({"sub": "a", "exp": -5}),
        json!({"sub": "a", "exp": now() + 60, "nbf": "later"}),
    ] {
        assert_eq!(
            refused(&v, &sign(Algorithm::HS256, None, &key, &claims)),
            "TOKEN_MALFORMED",
            "{claims}"
        );
    }
}
