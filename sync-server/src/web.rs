//! What the server offers besides sync: a directory of static files (an app such as
//! the demo, served from the same origin as its database) and, in development only,
//! tokens minted for any user name.
//!
//! Both are off unless asked for (`--static-dir`, `--dev-tokens`). Dev tokens let
//! anyone sign in as anyone: the server refuses to mint them without an HS256 secret,
//! and says so loudly at start.
//!
//! And which web pages from other origins may use the server ([`cors`]): those the
//! operator lists (`--cors-origin`), and with `--dev-tokens` any page served from this
//! machine (`localhost`, `127.0.0.1`, `[::1]`, any port), so an app on a development
//! server (Vite) can get a token and sync.

use std::path::{Component, Path, PathBuf};

use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};

use tower::ServiceExt;
use tower_http::services::ServeDir;

use crate::auth;

/// The optional web parts of the server.
#[derive(Clone, Debug, Default)]
pub struct WebOptions {
    /// Serve the files under this directory at `/` (`index.html` for directories).
    pub static_dir: Option<PathBuf>,
    /// Mint development tokens at `POST /v1/dev/token` with this HS256 secret.
    pub dev_token_secret: Option<String>,
    /// The issuer and audience the dev tokens carry (those the verifier wants).
    pub issuer: Option<String>,
    pub audience: Option<String>,
    /// Serve GraphiQL at `GET /v1/graphql` (see `crate::graphql`).
    pub graphiql: bool,
    /// Origins of web pages that may call the server from another origin (see
    /// [`cors`]), each `scheme://host[:port]` as [`parse_origin`] accepts it.
    pub cors_origins: Vec<String>,
}

/// The routes for `opts` (none when both parts are off).
pub fn router(opts: WebOptions) -> Router {
    let mut r = Router::new();
    if opts.dev_token_secret.is_some() {
        r = r.route("/v1/dev/token", post(dev_token));
    }
    if opts.static_dir.is_some() {
        r = r.fallback(static_file);
    }
    r.with_state(opts)
}

/// `origin` as the browser sends it in the `Origin` header: `http` or `https`, a host,
/// an optional port, no path; lower case. `None` when it is not one.
pub fn parse_origin(origin: &str) -> Option<String> {
    let o = origin.trim().trim_end_matches('/').to_ascii_lowercase();
    let (scheme, rest) = o.split_once("://")?;
    let ok_scheme = scheme == "http" || scheme == "https";
    let ok_rest = !rest.is_empty()
        && rest.len() <= 253 + 7
        && rest
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-.:[]".contains(c));
    (ok_scheme && ok_rest).then_some(o)
}

/// Whether a page from `origin` may use the server (`host` is the request's `Host`
/// header: a page of the server's own origin always may).
fn origin_allowed(opts: &WebOptions, origin: &str, host: Option<&str>) -> bool {
    let Some(origin) = parse_origin(origin) else {
        return false;
    };
    let authority = origin.split_once("://").map_or("", |(_, a)| a);
    if host.is_some_and(|h| h.eq_ignore_ascii_case(authority)) {
        return true;
    }
    if opts.cors_origins.contains(&origin) {
        return true;
    }
    // With development tokens on: any page served from this machine.
    let hostname = match authority.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or(""),
        None => authority.split(':').next().unwrap_or(""),
    };
    opts.dev_token_secret.is_some() && matches!(hostname, "localhost" | "127.0.0.1" | "::1")
}

/// How long a browser may keep a preflight's answer, in seconds.
const PREFLIGHT_MAX_AGE_SECS: &str = "600";

/// Cross-origin requests (CORS) for every route of the server.
///
/// A request from an allowed origin (see [`origin_allowed`]) gets
/// `Access-Control-Allow-Origin` with its origin; a preflight (`OPTIONS` with
/// `Access-Control-Request-Method`) from one is answered here (204: `GET`, `POST`,
/// the `authorization` and `content-type` headers, for ten minutes). A preflight from
/// any other origin gets 403 without those headers, so the browser refuses the call.
///
/// Browsers do not ask before opening a WebSocket: when the operator lists origins
/// (`--cors-origin`), a request under `/v1/` (the sync WebSocket, HTTP push and pull,
/// GraphQL, dev tokens) whose `Origin` is not allowed is refused with 403
/// `ORIGIN_NOT_ALLOWED`. Without a list nothing is refused: tokens travel in the
/// protocol, not in cookies, so a page of another origin gains nothing a script
/// outside a browser does not have.
pub async fn cors(State(opts): State<WebOptions>, req: Request, next: Next) -> Response {
    let Some(origin) = req.headers().get(header::ORIGIN).cloned() else {
        return next.run(req).await;
    };
    let host = req
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok());
    let allowed = origin
        .to_str()
        .is_ok_and(|o| origin_allowed(&opts, o, host));
    let preflight = req.method() == Method::OPTIONS
        && req
            .headers()
            .contains_key(header::ACCESS_CONTROL_REQUEST_METHOD);
    let mut response = if preflight {
        if !allowed {
            return (StatusCode::FORBIDDEN, vary_origin()).into_response();
        }
        let mut r = StatusCode::NO_CONTENT.into_response();
        let h = r.headers_mut();
        h.insert(
            header::ACCESS_CONTROL_ALLOW_METHODS,
            HeaderValue::from_static("GET, POST"),
        );
        h.insert(
            header::ACCESS_CONTROL_ALLOW_HEADERS,
            HeaderValue::from_static("authorization, content-type"),
        );
        h.insert(
            header::ACCESS_CONTROL_MAX_AGE,
            HeaderValue::from_static(PREFLIGHT_MAX_AGE_SECS),
        );
        r
    } else if !allowed && !opts.cors_origins.is_empty() && req.uri().path().starts_with("/v1/") {
        return (
            StatusCode::FORBIDDEN,
            vary_origin(),
            Json(serde_json::json!({
                "code": "ORIGIN_NOT_ALLOWED",
                "message": "pages of this origin may not use this server (see --cors-origin)",
            })),
        )
            .into_response();
    } else {
        next.run(req).await
    };
    let h = response.headers_mut();
    h.append(header::VARY, HeaderValue::from_static("origin"));
    if allowed {
        h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
    }
    response
}

fn vary_origin() -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert(header::VARY, HeaderValue::from_static("origin"));
    h
}

#[derive(serde::Deserialize)]
struct TokenRequest {
    sub: String,
}

/// How long a development token lasts.
const DEV_TOKEN_TTL_SECS: u64 = 12 * 3600;

/// `POST /v1/dev/token {"sub": "ann"}` → `{"token": "..."}`.
async fn dev_token(State(opts): State<WebOptions>, Json(req): Json<TokenRequest>) -> Response {
    let ok_name = !req.sub.is_empty()
        && req.sub.len() <= 64
        && req
            .sub
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    if !ok_name {
        return (
            StatusCode::BAD_REQUEST,
            Json(serde_json::json!({
                "code": "INVALID_ARGUMENT",
                "message": "sub must be 1 to 64 letters, digits, `_` or `-`",
            })),
        )
            .into_response();
    }
    let Some(secret) = opts.dev_token_secret.as_deref() else {
        return StatusCode::NOT_FOUND.into_response();
    };
    let claims = auth::dev_claims(
        &req.sub,
        DEV_TOKEN_TTL_SECS,
        opts.issuer.as_deref(),
        opts.audience.as_deref(),
    );
    match auth::mint_hs256(secret, &claims) {
        Ok(token) => Json(serde_json::json!({ "token": token })).into_response(),
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            Json(serde_json::json!({ "code": e.code(), "message": e.to_string() })),
        )
            .into_response(),
    }
}

/// The file a request names under the static directory, served by tower-http's
/// `ServeDir` (ranges, conditional requests, content types), or 404. [`resolve`] checks
/// the path first: `ServeDir` follows symbolic links wherever they lead.
async fn static_file(State(opts): State<WebOptions>, req: Request) -> Response {
    let Some(root) = opts.static_dir.as_deref() else {
        return StatusCode::NOT_FOUND.into_response();
    };
    let (root_path, url_path) = (root.to_path_buf(), req.uri().path().to_owned());
    let ok = tokio::task::spawn_blocking(move || resolve(&root_path, &url_path).is_some())
        .await
        .unwrap_or(false);
    if !ok {
        return StatusCode::NOT_FOUND.into_response();
    }
    match ServeDir::new(root).oneshot(req).await {
        Ok(mut response) => {
            // The app's service worker decides what to cache; the server always answers
            // with the current file.
            response
                .headers_mut()
                .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
            response.into_response()
        }
        Err(never) => match never {},
    }
}

/// Maps a URL path to a file under `root`: percent-decoded, `index.html` for a
/// directory, and `None` for anything that would leave `root` (`..`, an absolute part,
/// or a symbolic link that leads out of it) or name a hidden file.
pub fn resolve(root: &Path, url_path: &str) -> Option<PathBuf> {
    let decoded = percent_decode(url_path)?;
    let mut path = root.to_path_buf();
    for part in Path::new(decoded.trim_start_matches('/')).components() {
        match part {
            Component::Normal(p) if !p.to_string_lossy().starts_with('.') => path.push(p),
            Component::CurDir => {}
            _ => return None,
        }
    }
    if path.is_dir() {
        path.push("index.html");
    }
    // Where the path really leads, after every link in it.
    let real = path.canonicalize().ok()?;
    let real_root = root.canonicalize().ok()?;
    (real.starts_with(&real_root) && real.is_file()).then_some(path)
}

/// Whether `inner` is `outer` or lies inside it (after links): a static directory that
/// holds the data directory would serve the log and the secret.
pub fn contains(outer: &Path, inner: &Path) -> bool {
    match (outer.canonicalize(), inner.canonicalize()) {
        (Ok(o), Ok(i)) => i.starts_with(o),
        _ => false,
    }
}

fn percent_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = std::str::from_utf8(b.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    let s = String::from_utf8(out).ok()?;
    (!s.contains('\0')).then_some(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origins() {
        assert_eq!(
            parse_origin("HTTPS://App.Example.com/").as_deref(),
            Some("https://app.example.com")
        );
        for bad in [
            "app.example.com",
            "ftp://x",
            "https://",
            "https://a/b",
            "null",
        ] {
            assert_eq!(parse_origin(bad), None, "{bad}");
        }
        let listed = WebOptions {
            cors_origins: vec!["https://app.example.com".into()],
            ..WebOptions::default()
        };
        assert!(origin_allowed(&listed, "https://app.example.com", None));
        assert!(!origin_allowed(&listed, "https://evil.example.com", None));
        assert!(!origin_allowed(&listed, "http://app.example.com", None));
        assert!(!origin_allowed(&listed, "http://localhost:5173", None));
        // The server's own origin.
        assert!(origin_allowed(
            &listed,
            "http://db.example:7070",
            Some("db.example:7070")
        ));
        let dev = WebOptions {
            dev_token_secret: Some("s".into()),
            ..WebOptions::default()
        };
        for ok in [
            "http://localhost:5173",
            "http://127.0.0.1:3000",
            "http://[::1]:8080",
        ] {
            assert!(origin_allowed(&dev, ok, None), "{ok}");
        }
        for bad in [
            "http://localhost.evil.com",
            "http://127.0.0.1.evil.com:80",
            "null",
        ] {
            assert!(!origin_allowed(&dev, bad, None), "{bad}");
        }
    }

    #[test]
    fn paths_stay_under_the_root() {
        let dir = std::env::temp_dir().join(format!("warren-web-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("sub")).unwrap();
        std::fs::write(dir.join("index.html"), "i").unwrap();
        std::fs::write(dir.join("sub/a b.js"), "a").unwrap();
        std::fs::write(dir.join(".secret"), "s").unwrap();
        assert_eq!(resolve(&dir, "/"), Some(dir.join("index.html")));
        assert_eq!(resolve(&dir, "/sub/a%20b.js"), Some(dir.join("sub/a b.js")));
        assert_eq!(
            resolve(&dir, "/./sub/a%20b.js"),
            Some(dir.join("sub/a b.js"))
        );
        for bad in [
            "/../etc/passwd",
            "/sub/../../x",
            "/%2e%2e/x",
            "/.secret",
            "/missing.js",
            "/sub/%zz",
            "/a%00b",
        ] {
            assert_eq!(resolve(&dir, bad), None, "{bad}");
        }
        // A link inside the directory that leads out of it is not followed; one that
        // stays inside is.
        let outside = dir.with_extension("outside");
        std::fs::create_dir_all(&outside).unwrap();
        std::fs::write(outside.join("secret"), "s").unwrap();
        std::os::unix::fs::symlink(&outside, dir.join("out")).unwrap();
        std::os::unix::fs::symlink(dir.join("sub"), dir.join("in")).unwrap();
        assert_eq!(resolve(&dir, "/out/secret"), None);
        assert_eq!(resolve(&dir, "/in/a%20b.js"), Some(dir.join("in/a b.js")));
        assert!(contains(&dir, &dir.join("sub")));
        assert!(!contains(&dir, &outside));
        std::fs::remove_dir_all(&outside).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
