//! What the server offers besides sync: a directory of static files (an app such as
//! the demo, served from the same origin as its database) and, in development only,
//! tokens minted for any user name.
//!
//! Both are off unless asked for (`--static-dir`, `--dev-tokens`). Dev tokens let
//! anyone sign in as anyone: the server refuses to mint them without an HS256 secret,
//! and says so loudly at start.

use std::path::{Component, Path, PathBuf};

use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, StatusCode};
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
