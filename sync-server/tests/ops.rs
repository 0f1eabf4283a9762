//! Operating `warren serve` as a process: JSON logs on stderr, limits from the
//! environment, and a SIGTERM that ends connections with a reason.

mod serving;

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::Duration;

use warren_core::protocol::{codes, ClientFrame, ServerFrame};

const SECRET: &str = "ops-test-secret-0123456789abcdef";

/// A raw sync connection (batches of frames come out one frame at a time).
type Ws = warren_server::client::RawConnection;

async fn hello(url: &str, client_id: &str) -> (ServerFrame, Ws) {
    let mut ws = Ws::connect(url).await.unwrap();
    let token = warren_server::auth::mint_hs256(
        SECRET,
        &warren_server::auth::dev_claims("ann", 3600, None, None),
    )
    .unwrap();
    let hello = ClientFrame::Hello {
        client_id: client_id.into(),
        token,
        schema_version: String::new(),
        outbox_from: 0,
        partitions: vec![],
    };
    ws.send(&hello).await.unwrap();
    let first = next_frame(&mut ws).await.expect("an answer to Hello");
    (first, ws)
}

async fn next_frame(ws: &mut Ws) -> Option<ServerFrame> {
    ws.recv(Duration::from_secs(20)).await
}

/// The demo's schema, which these servers run.
const DEMO_SCHEMA: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../demo/schema.warren");

#[test]
fn json_logs_limits_from_the_environment_and_sigterm() {
    let dir = std::env::temp_dir().join(format!("warren-ops-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let mut child = Command::new(env!("CARGO_BIN_EXE_warren"))
        .args(["serve", "--listen", "127.0.0.1:0", "--hs256-secret", SECRET])
        .args(["--schema", DEMO_SCHEMA])
        .arg("--data-dir")
        .arg(&dir)
        .current_dir(std::env::temp_dir())
        .env("WARREN_LOG", "info")
        .env("WARREN_LOG_FORMAT", "json")
        .env("WARREN_MAX_CONNECTIONS_PER_IDENTITY", "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let addr =
        serving::serving_addr(&mut child).unwrap_or_else(|line| panic!("no address in {line:?}"));
    let url = format!("ws://{addr}/v1/sync");
    let rt = tokio::runtime::Runtime::new().unwrap();
    let mut held = rt.block_on(async {
        let (first, ws) = hello(&url, "one").await;
        assert!(matches!(first, ServerFrame::Welcome { .. }), "{first:?}");
        // WARREN_MAX_CONNECTIONS_PER_IDENTITY=1: a second connection of ann is refused.
        let (second, _) = hello(&url, "two").await;
        assert!(
            matches!(&second, ServerFrame::Error { code, .. } if code == codes::TOO_MANY_CONNECTIONS),
            "{second:?}"
        );
        ws
    });
    // SIGTERM: the open connection is told why it ends; the process exits cleanly.
    assert!(Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap()
        .success());
    let last = rt.block_on(next_frame(&mut held));
    assert!(
        matches!(&last, Some(ServerFrame::Error { code, .. }) if code == codes::SHUTTING_DOWN),
        "{last:?}"
    );
    let status = child.wait().unwrap();
    assert!(status.success(), "{status:?}");
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    let logs: Vec<serde_json::Value> = stderr
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    let messages: Vec<&str> = logs
        .iter()
        .map(|l| {
            assert!(l["level"].is_string() && l["timestamp"].is_string(), "{l}");
            l["fields"]["message"].as_str().unwrap_or("")
        })
        .collect();
    for m in ["serving", "stopping"] {
        assert!(messages.contains(&m), "no {m:?} in {messages:?}");
    }
    assert!(
        logs.iter().any(|l| l["fields"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("too many connections for one identity"))
            && l["fields"]["sub"] == "ann"),
        "the refusal is not logged with its identity: {stderr}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// `--static-dir` serves files (no-cache, so the app's service worker decides), and
/// nothing outside the directory: not through `..`, not through a symbolic link.
#[test]
fn static_files_stay_inside_their_directory() {
    let dir = std::env::temp_dir().join(format!("warren-ops-static-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let site = dir.join("site");
    std::fs::create_dir_all(&site).unwrap();
    std::fs::write(site.join("index.html"), "<p>hi</p>").unwrap();
    std::fs::write(site.join("app.js"), "export {}").unwrap();
    std::fs::write(dir.join("secret.txt"), "do not serve").unwrap();
    std::os::unix::fs::symlink(dir.join("secret.txt"), site.join("leak.txt")).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_warren"))
        .args(["serve", "--listen", "127.0.0.1:0", "--hs256-secret", SECRET])
        .args(["--schema", DEMO_SCHEMA])
        .arg("--data-dir")
        .arg(dir.join("data"))
        .arg("--static-dir")
        .arg(&site)
        .env("WARREN_LOG", "warn")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let addr =
        serving::serving_addr(&mut child).unwrap_or_else(|line| panic!("no address in {line:?}"));
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    let get = |path: &str| {
        let mut r = agent.get(&format!("http://{addr}{path}")).call().unwrap();
        let status = r.status().as_u16();
        let headers = r.headers().clone();
        (status, headers, r.body_mut().read_to_string().unwrap())
    };
    let (status, headers, body) = get("/");
    assert_eq!((status, body.as_str()), (200, "<p>hi</p>"));
    assert_eq!(headers["cache-control"], "no-cache");
    let (status, headers, _) = get("/app.js");
    assert_eq!(status, 200);
    assert!(headers["content-type"]
        .to_str()
        .unwrap()
        .contains("javascript"));
    for path in [
        "/leak.txt",
        "/../secret.txt",
        "/%2e%2e/secret.txt",
        "/missing",
    ] {
        let (status, _, body) = get(path);
        assert_eq!(status, 404, "{path}: {body}");
    }
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let _ = child.wait();
    let _ = std::fs::remove_dir_all(&dir);
}

/// A soft limit of 256 open files (below the hard one) is raised to the hard limit at
/// start: a few hundred idle sockets must not stop the server accepting.
#[test]
fn the_open_file_limit_is_raised_to_the_hard_limit() {
    use std::os::unix::process::CommandExt;
    let dir = std::env::temp_dir().join(format!("warren-ops-nofile-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_warren"));
    cmd.args(["serve", "--listen", "127.0.0.1:0", "--hs256-secret", SECRET])
        .args(["--schema", DEMO_SCHEMA])
        .arg("--data-dir")
        .arg(&dir)
        .env("WARREN_LOG", "warn")
        .stdout(Stdio::piped());
    // SAFETY: only setrlimit between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            let mut lim = libc::rlimit {
                rlim_cur: 0,
                rlim_max: 0,
            };
            libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim);
            lim.rlim_cur = 256.min(lim.rlim_max);
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
            Ok(())
        });
    }
    let mut child = cmd.spawn().unwrap();
    serving::serving_addr(&mut child).unwrap_or_else(|line| panic!("no address in {line:?}"));
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", child.id())).unwrap();
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap();
    let nums: Vec<&str> = line.split_whitespace().skip(3).take(2).collect();
    assert_eq!(nums[0], nums[1], "soft = hard: {line}");
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let _ = child.wait();
    let _ = std::fs::remove_dir_all(&dir);
}
