//! Fixtures for the end-to-end tests: a real server on a real socket (port 0), with its
//! data in a fresh directory, and native clients.

use std::path::PathBuf;
use std::time::Duration;

use warren_core::value::obj;
use warren_core::Value;
use warren_server::auth::{self, AuthConfig};
use warren_server::client::{Client, ClientOptions, RawConnection};
use warren_server::server::{self, Config, Running};

pub const SECRET: &str = "end-to-end-test-secret-0123456789";

/// Per-user todos, shared team tasks, and a counter that shows double application.
pub const SCHEMA: &str = r#"
collection Todo {
  partition "user:" + doc.owner
  index byOwner [owner, created]
  allow read   partition == "user:" + auth.sub
  allow create doc.owner == auth.sub
  allow update old.owner == auth.sub && new.owner == old.owner
  allow delete old.owner == auth.sub
}

collection Team {
  partition "team:" + doc.id
  allow read   Team.byId(partition.slice(5))?.members?.includes(auth.sub) == true
  allow create doc.members.includes(auth.sub)
  allow update old.members.includes(auth.sub)
}

collection Task {
  partition "team:" + doc.team
  allow read   Team.byId(partition.slice(5))?.members?.includes(auth.sub) == true
  allow create Team.byId(doc.team)?.members?.includes(auth.sub) == true
  allow update Team.byId(old.team)?.members?.includes(auth.sub) == true
}

collection Counter {
  partition "user:" + doc.owner
  allow read   partition == "user:" + auth.sub
  allow create doc.owner == auth.sub
  allow update old.owner == auth.sub
}

function addTodo(id, title, created) {
  Todo.create({ id, owner: auth.sub, title, done: false, created })
}

function toggle(id) {
  let t = Todo.byId(id) ?? abort("no such todo: " + id)
  t.update({ done: !t.done })
}

function bump(id) {
  let c = Counter.byId(id) ?? Counter.create({ id, owner: auth.sub, n: 0 })
  c.update({ n: c.n + 1 })
}

function retitle(id, title) {
  let t = Task.byId(id) ?? abort("no such task")
  t.update({ title, rev: (t.rev ?? 0) + 1 })
}

function retitleIf(id, title, rev) {
  let t = Task.byId(id) ?? abort("no such task")
  if (t.rev ?? 0) != rev { abort("the task changed since revision " + toString(rev)) }
  t.update({ title, rev: rev + 1 })
}
"#;

/// A server with its data directory.
pub struct TestServer {
    pub running: Option<Running>,
    pub dir: PathBuf,
    pub addr: std::net::SocketAddr,
    pub config: Config,
}

pub fn temp_dir(name: &str) -> PathBuf {
    static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let d = std::env::temp_dir().join(format!("warren-e2e-{name}-{}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

pub fn config(dir: PathBuf, auth: AuthConfig) -> Config {
    Config {
        data_dir: dir,
        schema: SCHEMA.to_owned(),
        auth,
        sequencer: Default::default(),
        limits: Default::default(),
        gateway: Default::default(),
        store_sync_every: 8,
        ..Config::default()
    }
}

pub fn hs256() -> AuthConfig {
    AuthConfig {
        hs256_secret: Some(SECRET.to_owned()),
        ..AuthConfig::default()
    }
}

impl TestServer {
    pub async fn start(name: &str) -> TestServer {
        TestServer::start_with(config(temp_dir(name), hs256())).await
    }

    pub async fn start_with(config: Config) -> TestServer {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let running = server::start(config.clone(), listener)
            .await
            .expect("server starts");
        TestServer {
            addr: running.addr,
            dir: config.data_dir.clone(),
            running: Some(running),
            config,
        }
    }

    pub fn url(&self) -> String {
        format!("ws://{}/v1/sync", self.addr)
    }

    pub fn http(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Stops the server cleanly.
    pub async fn stop(&mut self) {
        if let Some(r) = self.running.take() {
            r.stop().await.expect("clean stop");
        }
    }

    /// Starts it again on the same address and data.
    pub async fn restart(&mut self) {
        self.stop().await;
        let mut tries = 0;
        let listener = loop {
            match tokio::net::TcpListener::bind(self.addr).await {
                Ok(l) => break l,
                Err(e) if tries < 50 => {
                    tries += 1;
                    let _ = e;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => panic!("cannot bind {} again: {e}", self.addr),
            }
        };
        self.running = Some(
            server::start(self.config.clone(), listener)
                .await
                .expect("server restarts"),
        );
    }

    pub fn token(&self, sub: &str) -> String {
        token(sub)
    }

    /// A client for `sub`, online, with a fast reconnect.
    pub fn client(&self, sub: &str, client_id: &str) -> Client {
        Client::start(self.options(sub, client_id)).unwrap()
    }

    pub fn options(&self, sub: &str, client_id: &str) -> ClientOptions {
        let mut o = ClientOptions::new(&self.url(), &self.token(sub), client_id);
        o.auth = user(sub);
        o.schema = Some(SCHEMA.to_owned());
        o.backoff_min = Duration::from_millis(20);
        o.backoff_max = Duration::from_millis(300);
        o.seed = 7;
        o
    }

    pub async fn raw(&self) -> RawConnection {
        RawConnection::connect(&self.url()).await.unwrap()
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

pub fn token(sub: &str) -> String {
    auth::mint_hs256(SECRET, &auth::dev_claims(sub, 3600, None, None)).unwrap()
}

pub fn user(sub: &str) -> Value {
    obj([("sub", sub.into())])
}

/// A small HTTP/1.1 client for the JSON endpoints (no extra dependency).
pub async fn http_json(
    base: &str,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: &serde_json::Value,
) -> (u16, serde_json::Value) {
    let auth = token.map(|t| format!("Bearer {t}"));
    let headers: Vec<(&str, &str)> = auth.iter().map(|a| ("Authorization", a.as_str())).collect();
    http_json_with(base, method, path, &headers, &body.to_string()).await
}

/// [`http_json`] with any headers and a body as text.
pub async fn http_json_with(
    base: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> (u16, serde_json::Value) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let addr = base.trim_start_matches("http://");
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let extra: String = headers
        .iter()
        .map(|(k, v)| format!("{k}: {v}\r\n"))
        .collect();
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\n{extra}Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).await.unwrap();
    let text = String::from_utf8_lossy(&out);
    let status: u16 = text
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let payload = text.split("\r\n\r\n").nth(1).unwrap_or("");
    // Chunked bodies: take the JSON between the first and the last braces.
    let json = match (payload.find(['{', '[']), payload.rfind(['}', ']'])) {
        (Some(a), Some(b)) if b >= a => {
            serde_json::from_str(&payload[a..=b]).unwrap_or(serde_json::Value::Null)
        }
        _ => serde_json::Value::Null,
    };
    (status, json)
}

pub const WAIT: Duration = Duration::from_secs(20);
