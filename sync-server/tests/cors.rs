//! `warren serve` refuses a schema file it cannot read, and answers pages of other
//! origins as `--cors-origin` and `--dev-tokens` say (CORS preflights, the dev token
//! endpoint, the sync WebSocket's upgrade), over real sockets to a real process.

mod serving;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};

const DEMO_SCHEMA: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../demo/schema.warren");

/// `warren serve` on a port of the system's choosing, with an HS256 secret.
fn serve() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_warren"));
    c.args([
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--hs256-secret",
        "s3cret-s3cret",
    ]);
    c
}

#[test]
fn serve_refuses_a_missing_schema_file() {
    let dir = std::env::temp_dir().join(format!("warren-cors-noschema-{}", std::process::id()));
    let out = serve()
        .args(["--schema", "/nonexistent/shcema.warren", "--data-dir"])
        .arg(&dir)
        .env("WARREN_LOG", "warn")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("cannot read the schema file /nonexistent/shcema.warren"),
        "{err}"
    );
    // The default name, absent from the working directory, is refused the same way.
    let out = serve()
        .arg("--data-dir")
        .arg(&dir)
        .current_dir(std::env::temp_dir())
        .env_remove("WARREN_SCHEMA")
        .env("WARREN_LOG", "warn")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("schema.warren"));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn serve_refuses_a_malformed_cors_origin() {
    let out = serve()
        .args([
            "--schema",
            DEMO_SCHEMA,
            "--cors-origin",
            "app.example.com/path",
        ])
        .env("WARREN_LOG", "warn")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("is not an origin"));
}

/// One HTTP/1.1 exchange on a fresh connection: the status and the headers (names in
/// lower case) and the body.
fn exchange(addr: &str, head: &str, body: &str) -> (u16, Vec<(String, String)>, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(std::time::Duration::from_secs(20)))
        .unwrap();
    let close = if head.contains("Connection:") {
        ""
    } else {
        "Connection: close\r\n"
    };
    write!(
        s,
        "{head}Host: {addr}\r\n{close}Content-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut out = Vec::new();
    // An upgrade's connection stays open: read until its answer's head is complete.
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
        }
        if close.is_empty() && out.windows(4).any(|w| w == b"\r\n\r\n") {
            break;
        }
    }
    let text = String::from_utf8_lossy(&out).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let mut lines = head.lines();
    let status = lines.next().unwrap_or("")[9..12].parse().unwrap();
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    (status, headers, body.to_owned())
}

fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

#[test]
fn cross_origin_pages_get_what_the_allow_list_says() {
    let dir = std::env::temp_dir().join(format!("warren-cors-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let mut child = serve()
        .args(["--schema", DEMO_SCHEMA, "--dev-tokens", "--data-dir"])
        .arg(&dir)
        .env(
            "WARREN_CORS_ORIGINS",
            "https://app.example.com,https://two.example.com",
        )
        .env("WARREN_LOG", "warn")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let addr =
        serving::serving_addr(&mut child).unwrap_or_else(|line| panic!("no address in {line:?}"));
    let preflight = |path: &str, origin: &str| {
        exchange(
            &addr,
            &format!(
                "OPTIONS {path} HTTP/1.1\r\nOrigin: {origin}\r\nAccess-Control-Request-Method: POST\r\nAccess-Control-Request-Headers: content-type\r\n"
            ),
            "",
        )
    };
    // Listed origins (both from the variable's comma list), and with dev tokens on a
    // page served from this machine, get the preflight answered, on every endpoint.
    for origin in [
        "https://app.example.com",
        "https://two.example.com",
        "http://localhost:5173",
    ] {
        for path in ["/v1/dev/token", "/v1/push", "/v1/pull", "/v1/graphql"] {
            let (status, h, _) = preflight(path, origin);
            assert_eq!(status, 204, "{origin} {path}");
            assert_eq!(header(&h, "access-control-allow-origin"), Some(origin));
            let methods = header(&h, "access-control-allow-methods").unwrap_or("");
            assert!(methods.contains("POST"), "{methods}");
            let allowed = header(&h, "access-control-allow-headers").unwrap_or("");
            assert!(allowed.contains("content-type"), "{allowed}");
        }
    }
    // Any other origin: no CORS headers, so the browser refuses the call.
    for origin in [
        "https://evil.example.com",
        "http://localhost.evil.example",
        "null",
    ] {
        let (status, h, _) = preflight("/v1/dev/token", origin);
        assert_eq!(status, 403, "{origin}");
        assert_eq!(header(&h, "access-control-allow-origin"), None);
    }

    // The token itself, from an allowed origin and from another one.
    let token = |origin: &str| {
        exchange(
            &addr,
            &format!("POST /v1/dev/token HTTP/1.1\r\nOrigin: {origin}\r\nContent-Type: application/json\r\n"),
            r#"{"sub":"ann"}"#,
        )
    };
    let (status, h, body) = token("http://127.0.0.1:3000");
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        header(&h, "access-control-allow-origin"),
        Some("http://127.0.0.1:3000")
    );
    assert!(body.contains("\"token\""), "{body}");
    let (status, h, body) = token("https://evil.example.com");
    assert_eq!(status, 403);
    assert_eq!(header(&h, "access-control-allow-origin"), None);
    assert!(body.contains("ORIGIN_NOT_ALLOWED"), "{body}");
    // No Origin (not a browser): as before.
    let (status, _, body) = exchange(
        &addr,
        "POST /v1/dev/token HTTP/1.1\r\nContent-Type: application/json\r\n",
        r#"{"sub":"ann"}"#,
    );
    assert_eq!(status, 200, "{body}");

    // The sync WebSocket: browsers do not ask first, so the server checks the origin.
    let upgrade = |origin: &str| {
        exchange(
            &addr,
            &format!(
                "GET /v1/sync HTTP/1.1\r\nOrigin: {origin}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
            ),
            "",
        )
        .0
    };
    assert_eq!(upgrade("https://app.example.com"), 101);
    assert_eq!(upgrade("http://localhost:5173"), 101);
    assert_eq!(
        upgrade(&format!("http://{addr}")),
        101,
        "the server's own origin"
    );
    assert_eq!(upgrade("https://evil.example.com"), 403);

    let _ = child.kill();
    let _ = child.wait();
    let _ = std::fs::remove_dir_all(&dir);
}
