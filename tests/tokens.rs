//! Tokens at the gateway: a real server configured with an HS256 secret, a JWKS file
//! (RS256 and ES256 keys), an issuer and an audience. Each bad token is refused over the
//! WebSocket with its code, and a good one of each kind is accepted.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use jsonwebtoken::jwk::{Jwk, JwkSet};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::json;
use warren_core::protocol::{ClientFrame, ServerFrame};
use warren_e2e::*;
use warren_server::auth::{AuthConfig, JwksSource};

const RSA_PRIVATE: &str = include_str!("../sync-server/tests/fixtures/test-only-rsa-1.private.pem");
const RSA_PUBLIC: &str = include_str!("../sync-server/tests/fixtures/test-only-rsa-1.public.pem");
const EC_PRIVATE: &str = include_str!("../sync-server/tests/fixtures/test-only-ec-1.private.pem");
const ISS: &str = "https://id.example.test/";
const AUD: &str = "warren-e2e";

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn claims() -> serde_json::Value {
    json!({ "sub": "ann", "iss": ISS, "aud": AUD, "iat": now(), "exp": now() + 600 })
}

fn sign(
    alg: Algorithm,
    kid: Option<&str>,
    key: &EncodingKey,
    claims: &serde_json::Value,
) -> String {
    let mut h = Header::new(alg);
    h.kid = kid.map(str::to_owned);
    jsonwebtoken::encode(&h, claims, key).unwrap()
}

fn rsa() -> EncodingKey {
    EncodingKey::from_rsa_pem(RSA_PRIVATE.as_bytes()).unwrap()
}

fn ec() -> EncodingKey {
    EncodingKey::from_ec_pem(EC_PRIVATE.as_bytes()).unwrap()
}

fn hs() -> EncodingKey {
    EncodingKey::from_secret(SECRET.as_bytes())
}

async fn server() -> TestServer {
    let dir = temp_dir("tokens");
    let jwk = |key: &EncodingKey, alg, kid: &str| {
        let mut j = Jwk::from_encoding_key(key, alg).unwrap();
        j.common.key_id = Some(kid.to_owned());
        j
    };
    let set = JwkSet {
        keys: vec![
            jwk(&rsa(), Algorithm::RS256, "rsa-1"),
            jwk(&ec(), Algorithm::ES256, "ec-1"),
        ],
    };
    let jwks = dir.join("jwks.json");
    std::fs::write(&jwks, serde_json::to_string(&set).unwrap()).unwrap();
    let auth = AuthConfig {
        hs256_secret: Some(SECRET.to_owned()),
        jwks: Some(JwksSource::File(jwks)),
        issuer: Some(ISS.to_owned()),
        audience: Some(AUD.to_owned()),
        leeway_secs: 0,
    };
    TestServer::start_with(config(dir, auth)).await
}

/// What the server answers to a `Hello` with this token: `Ok` (welcomed) or the code.
async fn answer(s: &TestServer, token: &str) -> Result<(), String> {
    let mut raw = s.raw().await;
    raw.send(&ClientFrame::Hello {
        client_id: "c".into(),
        token: token.into(),
        schema_version: String::new(),
        outbox_from: 0,
        partitions: vec![],
    })
    .await
    .unwrap();
    match raw.recv(Duration::from_secs(10)).await {
        Some(ServerFrame::Welcome { .. }) => Ok(()),
        Some(ServerFrame::Error { code, .. }) => Err(code),
        other => panic!("unexpected answer {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn good_tokens_of_each_kind_are_accepted() {
    let s = server().await;
    assert_eq!(
        answer(&s, &sign(Algorithm::HS256, None, &hs(), &claims())).await,
        Ok(())
    );
    assert_eq!(
        answer(
            &s,
            &sign(Algorithm::RS256, Some("rsa-1"), &rsa(), &claims())
        )
        .await,
        Ok(())
    );
    assert_eq!(
        answer(&s, &sign(Algorithm::ES256, Some("ec-1"), &ec(), &claims())).await,
        Ok(())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_tokens_are_refused_each_with_its_code() {
    let s = server().await;
    let with = |f: &dyn Fn(&mut serde_json::Value)| {
        let mut c = claims();
        f(&mut c);
        c
    };
    let b64 = |t: &str| URL_SAFE_NO_PAD.encode(t.as_bytes());
    let cases: Vec<(&str, String, &str)> = vec![
        (
            "expired",
            sign(
                Algorithm::HS256,
                None,
                &hs(),
                &with(&|c| c["exp"] = json!(now() - 120)),
            ),
            "TOKEN_EXPIRED",
        ),
        (
            "bad signature",
            sign(
                Algorithm::HS256,
                None,
                &EncodingKey::from_secret(b"not the secret at all, no"),
                &claims(),
            ),
            "TOKEN_BAD_SIGNATURE",
        ),
        (
            "RS256 signed by another key",
            {
                let t = sign(Algorithm::RS256, Some("rsa-1"), &rsa(), &claims());
                let mut parts: Vec<&str> = t.split('.').collect();
                let other = sign(
                    Algorithm::RS256,
                    Some("rsa-1"),
                    &rsa(),
                    &with(&|c| c["sub"] = json!("mallory")),
                );
                let sig = other.split('.').nth(2).unwrap().to_owned();
                parts[2] = &sig;
                parts.join(".")
            },
            "TOKEN_BAD_SIGNATURE",
        ),
        (
            "wrong issuer",
            sign(
                Algorithm::HS256,
                None,
                &hs(),
                &with(&|c| c["iss"] = json!("https://evil.test/")),
            ),
            "TOKEN_WRONG_ISSUER",
        ),
        (
            "wrong audience",
            sign(
                Algorithm::HS256,
                None,
                &hs(),
                &with(&|c| c["aud"] = json!("someone-else")),
            ),
            "TOKEN_WRONG_AUDIENCE",
        ),
        (
            "alg none",
            format!(
                "{}.{}.",
                b64(r#"{"alg":"none","typ":"JWT"}"#),
                b64(&claims().to_string())
            ),
            "TOKEN_ALGORITHM",
        ),
        (
            "HS256 signed with the RS256 public key",
            {
                let mut h = Header::new(Algorithm::HS256);
                h.kid = Some("rsa-1".into());
                jsonwebtoken::encode(
                    &h,
                    &claims(),
                    &EncodingKey::from_secret(RSA_PUBLIC.as_bytes()),
                )
                .unwrap()
            },
            "TOKEN_BAD_SIGNATURE",
        ),
        (
            "unknown key",
            sign(Algorithm::RS256, Some("nope"), &rsa(), &claims()),
            "TOKEN_UNKNOWN_KEY",
        ),
        ("garbage", "not.a.token".to_string(), "TOKEN_MALFORMED"),
        ("empty", String::new(), "TOKEN_MISSING"),
    ];
    for (what, token, code) in cases {
        assert_eq!(answer(&s, &token).await, Err(code.to_string()), "{what}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn algorithm_confusion_is_refused_without_an_hs256_secret_too() {
    // With only a JWKS, an HS256 token "signed" with the public key is an algorithm the
    // server does not take at all.
    let dir = temp_dir("tokens-jwks-only");
    let mut j = Jwk::from_encoding_key(&rsa(), Algorithm::RS256).unwrap();
    j.common.key_id = Some("rsa-1".into());
    let jwks = dir.join("jwks.json");
    std::fs::write(
        &jwks,
        serde_json::to_string(&JwkSet { keys: vec![j] }).unwrap(),
    )
    .unwrap();
    let s = TestServer::start_with(config(
        dir,
        AuthConfig {
            jwks: Some(JwksSource::File(jwks)),
            ..AuthConfig::default()
        },
    ))
    .await;
    let confused = jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &json!({ "sub": "ann", "exp": now() + 600 }),
        &EncodingKey::from_secret(RSA_PUBLIC.as_bytes()),
    )
    .unwrap();
    assert_eq!(
        answer(&s, &confused).await,
        Err("TOKEN_ALGORITHM".to_string())
    );
    let good = sign(
        Algorithm::RS256,
        Some("rsa-1"),
        &rsa(),
        &json!({ "sub": "ann", "exp": now() + 600 }),
    );
    assert_eq!(answer(&s, &good).await, Ok(()));
}

/// A token that expires while its connection is open ends the connection with
/// `TOKEN_EXPIRED` (leeway 0 here), and a push sent after the expiry is not committed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_connection_ends_when_its_token_expires() {
    let s = server().await;
    let mut c = claims();
    c["exp"] = json!(now() + 2);
    let token = sign(Algorithm::HS256, None, &hs(), &c);
    let mut raw = s.raw().await;
    raw.send(&ClientFrame::Hello {
        client_id: "c".into(),
        token,
        schema_version: String::new(),
        outbox_from: 0,
        partitions: vec![],
    })
    .await
    .unwrap();
    let Some(ServerFrame::Welcome { position, .. }) = raw.recv(Duration::from_secs(10)).await
    else {
        panic!("welcomed while the token is valid");
    };
    let started = std::time::Instant::now();
    let end = raw.recv(Duration::from_secs(10)).await;
    assert!(
        matches!(&end, Some(ServerFrame::Error { code, .. }) if code == "TOKEN_EXPIRED"),
        "{end:?}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "{:?}",
        started.elapsed()
    );
    // Whatever it sends now is not committed: the log did not move.
    let _ = raw
        .send(&ClientFrame::Push {
            commits: vec![warren_core::protocol::ClientCommit {
                seq: 1,
                schema_version: String::new(),
                op: warren_core::exec::Op::Run {
                    source:
                        "Todo.create({ owner: auth.sub, title: \"late\", done: false, created: 0 })"
                            .into(),
                },
            }],
        })
        .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        s.running
            .as_ref()
            .unwrap()
            .metrics
            .position
            .load(std::sync::atomic::Ordering::Relaxed),
        position
    );
}
