//! What one client can do to the others, against a real `warren serve` process over
//! real sockets (the sibling of `hostile.rs`, which throws malformed traffic):
//!
//! - **sockets that never log in**: a flood of idle TCP connections, WebSocket
//!   upgrades that never send `Hello`, and slowloris requests that send a header line
//!   now and then, more of them than the process has file descriptors; a client that
//!   was connected keeps committing, new clients get in, and the server closes the
//!   flood's sockets within its timeouts;
//! - **a cost abuser**: one identity pushing transactions that exhaust the fuel budget
//!   as fast as it is let; another identity's commits are not queued behind them;
//! - **a partition spammer**: one identity creating thousands of partitions that no one
//!   else may read; the others' catch-ups and fan-out evaluate none of their read
//!   rules, and its partition quota stops it;
//! - **clients that do not read a large partition**: many connections of one user
//!   holding a 25 MB partition, none reading; the server's memory grows by about a part
//!   per connection, not by the partition;
//! - **clients that do not read many partitions**: many connections of one user owed
//!   200 snapshots of 200 KB each, none reading; each holds at most a batch of them
//!   (the snapshots read whole go out batched), not all 40 MB.

mod serving;

use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use warren_core::exec::Op;
use warren_core::protocol::{ClientCommit, ClientFrame, CommitResult, ServerFrame};
use warren_core::value::obj;
use warren_core::Value;
use warren_server::auth;
use warren_server::client::RawConnection;

const SECRET: &str = "hostile-fairness-secret-0123456789";

const SCHEMA: &str = r#"
collection Todo {
  partition "user:" + doc.owner
  allow read   partition == "user:" + auth.sub
  allow create doc.owner == auth.sub
  allow update old.owner == auth.sub
}

collection Team {
  partition "team:" + doc.id
  allow read   Team.byId(partition.slice(5))?.members?.includes(auth.sub) == true
  allow create doc.admin == auth.sub && doc.members.includes(auth.sub)
}

collection Note {
  partition "user:" + doc.owner
  allow read   partition == "user:" + auth.sub
  allow create doc.owner == auth.sub
}

collection Space {
  partition doc.space
  allow read   partition.startsWith(auth.sub + ":")
  allow create doc.space.startsWith(auth.sub + ":")
}

function bump(id) {
  let t = Todo.byId(id) ?? Todo.create({ id, owner: auth.sub, n: 0 })
  t.update({ n: t.n + 1 })
}

// Burns its whole fuel budget: rejected with FUEL_EXHAUSTED.
function burn() {
  range(200).map(i => range(5000).reduce((a, x) => a + x, 0))
}
"#;

fn token(sub: &str) -> String {
    auth::mint_hs256(SECRET, &auth::dev_claims(sub, 3600, None, None)).unwrap()
}

struct Server {
    child: Child,
    addr: String,
    dir: std::path::PathBuf,
}

impl Server {
    /// `warren serve` with `extra` flags; `files`: (soft, hard) open-file limits of
    /// the process (the server raises the soft one to the hard one).
    fn start(name: &str, extra: &[&str], files: Option<(u64, u64)>) -> Server {
        let dir = std::env::temp_dir().join(format!("warren-fair-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let schema = dir.join("schema.warren");
        std::fs::write(&schema, SCHEMA).unwrap();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_warren"));
        cmd.args(["serve", "--listen", "127.0.0.1:0", "--hs256-secret", SECRET])
            .arg("--data-dir")
            .arg(dir.join("data"))
            .arg("--schema")
            .arg(&schema)
            .args(extra)
            .env("WARREN_LOG", "warn")
            .stdout(Stdio::piped());
        if let Some((soft, hard)) = files {
            // SAFETY: setrlimit is async-signal-safe; it only reads the struct.
            unsafe {
                cmd.pre_exec(move || {
                    let lim = libc::rlimit {
                        rlim_cur: soft,
                        rlim_max: hard,
                    };
                    if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }
        let mut child = cmd.spawn().unwrap();
        let addr = serving::serving_addr(&mut child)
            .unwrap_or_else(|line| panic!("no address in {line:?}"));
        Server { child, addr, dir }
    }

    fn url(&self) -> String {
        format!("ws://{}/v1/sync", self.addr)
    }

    fn rss_kib(&self) -> u64 {
        std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .unwrap_or_default()
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or(0)
    }

    fn alive(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn hello(client_id: &str, sub: &str) -> ClientFrame {
    ClientFrame::Hello {
        client_id: client_id.into(),
        token: token(sub),
        schema_version: String::new(),
        outbox_from: 0,
        partitions: vec![],
    }
}

fn call(seq: u64, function: &str, args: Value) -> ClientCommit {
    ClientCommit {
        seq,
        schema_version: String::new(),
        op: Op::Call {
            function: function.into(),
            args,
        },
    }
}

/// One HTTP/1.1 request, `None` if the connection failed or was closed unanswered.
async fn http(
    addr: &str,
    method: &str,
    path: &str,
    sub: Option<&str>,
    body: &str,
) -> Option<(u16, String)> {
    let mut s = tokio::net::TcpStream::connect(addr).await.ok()?;
    let auth = sub
        .map(|s| format!("Authorization: Bearer {}\r\n", token(s)))
        .unwrap_or_default();
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\n{auth}Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).await.ok()?;
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(20), s.read_to_end(&mut out))
        .await
        .ok()?
        .ok()?;
    let text = String::from_utf8_lossy(&out).into_owned();
    let status = text.split(' ').nth(1)?.parse().ok()?;
    Some((
        status,
        text.split("\r\n\r\n").nth(1).unwrap_or("").to_owned(),
    ))
}

fn metric(text: &str, line_start: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(line_start))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {line_start} in the metrics"))
}

/// Connects and says Hello, retrying until a `Welcome` (a flood may push a new
/// connection out before its Hello arrives, as it would a browser's, which retries).
async fn welcomed(url: &str, client_id: &str, sub: &str, within: Duration) -> (RawConnection, u32) {
    let until = Instant::now() + within;
    let mut tries = 0;
    loop {
        tries += 1;
        assert!(
            Instant::now() < until,
            "{sub} could not connect in {within:?} ({tries} tries)"
        );
        let Ok(mut raw) = RawConnection::connect(url).await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        if raw.send(&hello(client_id, sub)).await.is_err() {
            continue;
        }
        match raw.recv(Duration::from_secs(5)).await {
            Some(ServerFrame::Welcome { .. }) => return (raw, tries),
            _ => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

/// Commits `bump` one at a time on `raw` (whose client applied `from` before),
/// returning the latencies, until `stop`.
async fn bumps(
    raw: &mut RawConnection,
    id: &str,
    from: u64,
    stop: &AtomicBool,
) -> Vec<(u64, Duration)> {
    let mut out = Vec::new();
    let mut seq = from;
    while !stop.load(Ordering::Relaxed) {
        seq += 1;
        let t = Instant::now();
        raw.send(&ClientFrame::Push {
            commits: vec![call(seq, "bump", obj([("id", id.into())]))],
        })
        .await
        .expect("the well-behaved client's connection stays");
        let frames = raw
            .recv_until(
                Duration::from_secs(30),
                |f| matches!(f, ServerFrame::Outcome { seq: s, .. } if *s == seq),
            )
            .await;
        match frames.last() {
            Some(ServerFrame::Outcome {
                result: CommitResult::Committed { position, .. },
                ..
            }) => out.push((*position, t.elapsed())),
            other => panic!("commit {seq} of {id}: {other:?} after {frames:?}"),
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    out
}

/// The tests' client runtime (two worker threads).
fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

#[test]
fn sockets_that_never_log_in_do_not_lock_users_out() {
    // 1,024 open files at most (soft 256, raised to 1,024 by the server): 768
    // connections, 384 of them kept for logged-in ones. Those waiting for Hello: 64.
    let mut server = Server::start(
        "flood",
        &[
            "--max-pending-hellos",
            "64",
            "--hello-timeout-secs",
            "2",
            "--header-timeout-secs",
            "2",
        ],
        Some((256, 1024)),
    );
    let rt = runtime();
    let url = server.url();
    let addr = server.addr.clone();
    let baseline = server.rss_kib();
    rt.block_on(async {
        // ann, connected before the flood, commits all through it.
        let (mut ann, _) = welcomed(&url, "ann-1", "ann", Duration::from_secs(10)).await;
        let stop = Arc::new(AtomicBool::new(false));
        let ann_task = {
            let stop = stop.clone();
            tokio::spawn(async move { bumps(&mut ann, "ann-n", 0, &stop).await })
        };
        tokio::time::sleep(Duration::from_millis(200)).await;
        let flood_stop = Arc::new(AtomicBool::new(false));
        let opened = Arc::new(AtomicU64::new(0));
        let closed_by_server = Arc::new(AtomicU64::new(0));
        let slowloris_alive = Arc::new(Mutex::new(Vec::<Duration>::new()));
        let mut flood = Vec::new();
        // 1,500 idle sockets: more than the process has file descriptors. In waves of
        // 50, so that the kernel's accept queue does not overflow (a connection it drops
        // never reaches the server, and nothing would close it).
        for i in 0..1500 {
            if i % 50 == 0 {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            let (addr, opened, closed) = (addr.clone(), opened.clone(), closed_by_server.clone());
            flood.push(tokio::spawn(async move {
                let Ok(mut s) = tokio::net::TcpStream::connect(&addr).await else {
                    return;
                };
                opened.fetch_add(1, Ordering::Relaxed);
                let mut b = [0u8; 1];
                if let Ok(Ok(0) | Err(_)) =
                    tokio::time::timeout(Duration::from_secs(30), s.read(&mut b)).await
                {
                    closed.fetch_add(1, Ordering::Relaxed);
                }
            }));
        }
        // 300 WebSocket upgrades that never say Hello.
        for i in 0..300 {
            if i % 50 == 0 {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            let (url, opened, closed) = (url.clone(), opened.clone(), closed_by_server.clone());
            flood.push(tokio::spawn(async move {
                let Ok(mut raw) = RawConnection::connect(&url).await else {
                    return;
                };
                opened.fetch_add(1, Ordering::Relaxed);
                if raw.recv(Duration::from_secs(30)).await.is_none() {
                    closed.fetch_add(1, Ordering::Relaxed);
                }
            }));
        }
        // 200 slowloris requests: a header line every 300 ms, never the end.
        for _ in 0..200 {
            let (addr, stop, alive) = (addr.clone(), flood_stop.clone(), slowloris_alive.clone());
            flood.push(tokio::spawn(async move {
                let Ok(mut s) = tokio::net::TcpStream::connect(&addr).await else {
                    return;
                };
                let t = Instant::now();
                if s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n").await.is_err() {
                    return;
                }
                while !stop.load(Ordering::Relaxed) {
                    tokio::time::sleep(Duration::from_millis(300)).await;
                    if s.write_all(b"X-Slow: 1\r\n").await.is_err() {
                        break;
                    }
                    let mut b = [0u8; 256];
                    match tokio::time::timeout(Duration::from_millis(1), s.read(&mut b)).await {
                        Ok(Ok(0)) | Ok(Err(_)) => break,
                        _ => {}
                    }
                }
                alive.lock().unwrap().push(t.elapsed());
            }));
        }
        // While it lasts: a new client gets in, and a pull is answered.
        tokio::time::sleep(Duration::from_millis(500)).await;
        let t = Instant::now();
        let (mut bob, tries) = welcomed(&url, "bob-1", "bob", Duration::from_secs(20)).await;
        let bob_in = t.elapsed();
        bob.send(&ClientFrame::Push {
            commits: vec![call(1, "bump", obj([("id", "bob-n".into())]))],
        })
        .await
        .unwrap();
        let frames = bob
            .recv_until(Duration::from_secs(20), |f| matches!(f, ServerFrame::Outcome { .. }))
            .await;
        assert!(
            matches!(frames.last(), Some(ServerFrame::Outcome { result: CommitResult::Committed { .. }, .. })),
            "{frames:?}"
        );
        let t = Instant::now();
        let pulled = loop {
            if let Some((200, body)) = http(&addr, "POST", "/v1/pull", Some("bob"), "{}").await {
                break body;
            }
            assert!(t.elapsed() < Duration::from_secs(20), "no pull answered");
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        assert!(pulled.contains("user:bob"), "{pulled}");
        // The flood's sockets are closed by the server within its timeouts.
        tokio::time::sleep(Duration::from_secs(4)).await;
        flood_stop.store(true, Ordering::Relaxed);
        stop.store(true, Ordering::Relaxed);
        let ann_commits = ann_task.await.unwrap();
        for f in flood {
            let _ = f.await;
        }
        let opened = opened.load(Ordering::Relaxed);
        let closed = closed_by_server.load(Ordering::Relaxed);
        let slowest_ann = ann_commits.iter().map(|(_, d)| *d).max().unwrap();
        let slowloris = slowloris_alive.lock().unwrap().clone();
        let longest_slowloris = slowloris.iter().max().copied().unwrap_or_default();
        println!(
            "flood: {opened} idle and Hello-less sockets opened, {closed} closed by the server; bob got in after {bob_in:?} ({tries} tries); ann's {} commits, slowest {slowest_ann:?}; slowloris lived at most {longest_slowloris:?}",
            ann_commits.len()
        );
        let (_, metrics) = http(&addr, "GET", "/metrics", None, "").await.unwrap();
        assert!(
            metric(&metrics, "warren_tcp_closed_total{reason=\"evicted\"}") > 0,
            "{metrics}"
        );
        println!(
            "{}",
            metrics
                .lines()
                .filter(|l| l.starts_with("warren_tcp"))
                .collect::<Vec<_>>()
                .join("\n")
        );
        assert!(opened > 1000, "the flood opened only {opened}");
        assert_eq!(closed, opened, "every idle socket was closed by the server");
        assert!(
            longest_slowloris < Duration::from_secs(4),
            "a slowloris request lived {longest_slowloris:?}"
        );
        assert!(ann_commits.len() > 20);
        assert!(slowest_ann < Duration::from_secs(5), "ann waited {slowest_ann:?}");
    });
    assert!(server.alive(), "the server died");
    let grew = server.rss_kib().saturating_sub(baseline);
    assert!(grew < 150 * 1024, "the server's memory grew by {grew} KiB");
}

#[test]
fn a_cost_abuser_does_not_delay_the_others() {
    // Two of mallory's commits in flight at most.
    let mut server = Server::start("cost", &["--max-in-flight", "2"], None);
    let rt = runtime();
    let url = server.url();
    rt.block_on(async {
        let (mut mallory, _) = welcomed(&url, "mallory-1", "mallory", Duration::from_secs(10)).await;
        // 100 fuel-exhausting commits at once, then 100 more when they are answered.
        let stop = Arc::new(AtomicBool::new(false));
        let burned = Arc::new(AtomicU64::new(0));
        let abuser = {
            let (stop, burned) = (stop.clone(), burned.clone());
            tokio::spawn(async move {
                let mut seq = 0;
                while !stop.load(Ordering::Relaxed) {
                    let push = ClientFrame::Push {
                        commits: (seq + 1..=seq + 100).map(|s| call(s, "burn", Value::Null)).collect(),
                    };
                    seq += 100;
                    if mallory.send(&push).await.is_err() {
                        return;
                    }
                    loop {
                        match mallory.recv(Duration::from_millis(200)).await {
                            Some(ServerFrame::Outcome { seq: s, result: CommitResult::Rejected { code, .. } }) => {
                                assert_eq!(code, "FUEL_EXHAUSTED");
                                burned.fetch_add(1, Ordering::Relaxed);
                                if s == seq {
                                    break;
                                }
                            }
                            Some(ServerFrame::Error { .. }) => return,
                            Some(other) => panic!("mallory got {other:?}"),
                            None if stop.load(Ordering::Relaxed) => return,
                            None => {}
                        }
                    }
                }
            })
        };
        // Once her first burns have run, ann commits for a while.
        let t = Instant::now();
        while burned.load(Ordering::Relaxed) == 0 {
            assert!(t.elapsed() < Duration::from_secs(30));
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let burn = t.elapsed();
        let (mut ann, _) = welcomed(&url, "ann-1", "ann", Duration::from_secs(10)).await;
        let ann_stop = Arc::new(AtomicBool::new(false));
        let ann_task = {
            let s = ann_stop.clone();
            tokio::spawn(async move { bumps(&mut ann, "ann-n", 0, &s).await })
        };
        tokio::time::sleep(Duration::from_secs(6).max(burn * 8)).await;
        ann_stop.store(true, Ordering::Relaxed);
        let commits = ann_task.await.unwrap();
        stop.store(true, Ordering::Relaxed);
        let _ = tokio::time::timeout(Duration::from_secs(5), abuser).await;
        // Between two of ann's commits (each awaited), mallory's commits that ran:
        // never more than her two in flight.
        let gaps: Vec<u64> = commits.windows(2).map(|w| w[1].0 - w[0].0 - 1).collect();
        let slowest = commits.iter().map(|(_, d)| *d).max().unwrap();
        println!(
            "a burn took about {burn:?}; mallory's burns run: {}; ann's {} commits, slowest {slowest:?}, most of mallory's between two of them: {}",
            burned.load(Ordering::Relaxed),
            commits.len(),
            gaps.iter().max().unwrap()
        );
        assert!(commits.len() >= 5);
        assert!(gaps.iter().all(|g| *g <= 2), "{gaps:?}");
        assert!(slowest < burn * 3 + Duration::from_secs(1), "ann waited {slowest:?}");
    });
    assert!(server.alive());
}

#[test]
fn a_partition_spammer_costs_the_others_no_read_rule() {
    let mut server = Server::start("spam", &["--quota-partitions", "2500"], None);
    let rt = runtime();
    let url = server.url();
    let addr = server.addr.clone();
    rt.block_on(async {
        let rules = |m: &str, which: &str| metric(m, &format!("warren_read_rules_total{{for=\"{which}\"}}"));
        let metrics = || async { http(&addr, "GET", "/metrics", None, "").await.unwrap().1 };
        // ann: her todos and one team she shares with bob.
        let push = |sub: &'static str, client: &'static str, sources: Vec<String>| {
            let addr = addr.clone();
            async move {
                let commits: Vec<serde_json::Value> = sources
                    .iter()
                    .enumerate()
                    .map(|(i, s)| serde_json::json!({ "seq": i + 1, "source": s }))
                    .collect();
                let body = serde_json::json!({ "client_id": client, "commits": commits }).to_string();
                let (status, body) = http(&addr, "POST", "/v1/push", Some(sub), &body).await.unwrap();
                assert_eq!(status, 200, "{body}");
                serde_json::from_str::<serde_json::Value>(&body).unwrap()["outcomes"].clone()
            }
        };
        push(
            "ann",
            "setup",
            vec![
                "Todo.create({ id: \"a1\", owner: \"ann\", n: 0 })".into(),
                "Team.create({ id: \"ab\", admin: \"ann\", members: [\"ann\", \"bob\"] })".into(),
            ],
        )
        .await;
        let (mut ann, _) = welcomed(&url, "ann-1", "ann", Duration::from_secs(10)).await;
        let before = metrics().await;
        // mallory: 1,000 teams and 1,000 spaces (`partition.startsWith`), in two commits.
        let spam = |k: usize| {
            format!("range(1000).map(i => Team.create({{ id: \"m{k}-\" + toString(i), admin: \"mallory\", members: [\"mallory\"] }}))")
        };
        let spaces = "range(1000).map(i => Space.create({ space: \"mallory:\" + toString(i) }))".to_owned();
        let outcomes = push("mallory", "spam", vec![spam(0), spaces]).await;
        assert!(outcomes.as_array().unwrap().iter().all(|o| o["status"] == "committed"), "{outcomes}");
        // ann's connection is still served (her own commit), and her fan-out evaluated
        // no rule for mallory's 2,000 new partitions (ann may read none of them).
        ann.send(&ClientFrame::Push {
            commits: vec![call(1, "bump", obj([("id", "a1".into())]))],
        })
        .await
        .unwrap();
        let frames = ann
            .recv_until(Duration::from_secs(20), |f| matches!(f, ServerFrame::Outcome { .. }))
            .await;
        assert!(matches!(frames.last(), Some(ServerFrame::Outcome { result: CommitResult::Committed { .. }, .. })));
        let after = metrics().await;
        assert_eq!(rules(&after, "fanout"), rules(&before, "fanout"), "rules evaluated for others' partitions");
        // A new connection of ann's, and a pull by eve (who reads nothing), evaluate only
        // their own candidates: ann's todo partition and her team's, eve none.
        let (_, _) = welcomed(&url, "ann-2", "ann", Duration::from_secs(10)).await;
        let m1 = metrics().await;
        let ann_rules = rules(&m1, "catch_up") - rules(&after, "catch_up");
        let (status, body) = http(&addr, "POST", "/v1/pull", Some("eve"), "{}").await.unwrap();
        assert_eq!(status, 200, "{body}");
        let m2 = metrics().await;
        let eve_rules = rules(&m2, "catch_up") - rules(&m1, "catch_up");
        println!("after 2,000 of mallory's partitions: ann's Hello evaluated {ann_rules} read rules, eve's pull {eve_rules}");
        assert!(ann_rules <= 2, "ann's welcome evaluated {ann_rules} rules");
        assert_eq!(eve_rules, 0);
        // The partition quota (2,500) stops the next thousand.
        let outcomes = push("mallory", "spam-2", vec![spam(2)]).await;
        assert_eq!(outcomes[0]["code"], "IDENTITY_QUOTA_EXCEEDED", "{outcomes}");
    });
    assert!(server.alive());
}

/// A connection with a small receive buffer, so that a client that does not read
/// stops the server's writes soon; it says Hello and reads nothing more.
async fn sink(url: &str, client_id: &str, sub: &str) -> tokio::net::TcpStream {
    use futures_util::SinkExt;
    let addr = url.trim_start_matches("ws://").split('/').next().unwrap();
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let tcp = socket.connect(addr.parse().unwrap()).await.unwrap();
    let (mut ws, _) = tokio_tungstenite::client_async(url, tcp).await.unwrap();
    ws.send(tokio_tungstenite::tungstenite::Message::Binary(
        hello(client_id, sub).encode().into(),
    ))
    .await
    .unwrap();
    ws.into_inner()
}

/// `sub` pushes `n` commits over HTTP (`source(k)` each, `k` from 0), all committed.
async fn push_setup(addr: &str, sub: &str, n: u64, source: impl Fn(u64) -> String) {
    let commits: Vec<serde_json::Value> = (0..n)
        .map(|k| serde_json::json!({ "seq": k + 1, "source": source(k) }))
        .collect();
    let body = serde_json::json!({ "client_id": "setup", "commits": commits }).to_string();
    let (status, body) = http(addr, "POST", "/v1/push", Some(sub), &body)
        .await
        .unwrap();
    assert_eq!(status, 200, "{body}");
    assert!(!body.contains("rejected"), "{body}");
}

/// `n` connections of `sub` that never read (kept open), and the server's peak memory
/// over the 3 s after they connect, in KiB.
async fn sinks_and_peak(server: &Server, sub: &str, n: usize) -> (Vec<tokio::net::TcpStream>, u64) {
    let mut sinks = Vec::new();
    for i in 0..n {
        sinks.push(sink(&server.url(), &format!("{sub}-sink-{i}"), sub).await);
    }
    let mut peak = 0;
    for _ in 0..30 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        peak = peak.max(server.rss_kib());
    }
    (sinks, peak)
}

#[test]
fn clients_that_do_not_read_a_large_partition_hold_a_part_each() {
    let mut server = Server::start("parts", &[], None);
    let rt = runtime();
    let url = server.url();
    let addr = server.addr.clone();
    // ann's partition: 100 notes of 250 KB, 25 MB.
    rt.block_on(push_setup(&addr, "ann", 5, |k| {
        format!(
            "range(20).map(i => Note.create({{ id: \"n{k}-\" + toString(i), owner: \"ann\", body: \"x\".repeat(250000) }}).id)"
        )
    }));
    std::thread::sleep(Duration::from_millis(500));
    let baseline = server.rss_kib();
    let peak = rt.block_on(async {
        // 16 connections of ann's that never read: each is owed the 25 MB snapshot.
        let (sinks, mut peak) = sinks_and_peak(&server, "ann", 16).await;
        // A client that reads gets the whole partition meanwhile.
        let (mut raw, _) = welcomed(&url, "ann-reader", "ann", Duration::from_secs(10)).await;
        let frames = raw
            .recv_until(Duration::from_secs(60), |f| {
                matches!(f, ServerFrame::Snapshot { .. })
            })
            .await;
        let docs: usize = frames
            .iter()
            .map(|f| match f {
                ServerFrame::SnapshotPart { docs, .. } | ServerFrame::Snapshot { docs, .. } => {
                    docs.len()
                }
                _ => 0,
            })
            .sum();
        assert_eq!(docs, 100);
        assert!(frames.len() > 10, "{} frames", frames.len());
        peak = peak.max(server.rss_kib());
        drop(sinks);
        peak
    });
    let grew = peak.saturating_sub(baseline);
    println!(
        "16 connections that do not read a 25 MB partition: the server grew by {} MiB",
        grew / 1024
    );
    // A part is 2 MiB (a quarter of the 8 MiB queue): about that per connection,
    // where a whole snapshot each would be 400 MB.
    assert!(grew < 160 * 1024, "the server grew by {grew} KiB");
    assert!(server.alive());
}

/// Snapshots read whole go out batched with other frames (protocol version 2), not
/// counted in the connection's queue while the batch holds them: a connection that
/// never reads, owed 200 snapshots of 200 KB (40 MB), holds at most one batch of them
/// (256 KiB) beyond its queue, not all it is owed.
#[test]
fn clients_that_do_not_read_many_partitions_hold_a_batch_each() {
    let mut server = Server::start(
        "batches",
        // The setup's 40 MB in one push: no quota, no region-time budget.
        &[
            "--quota-bytes",
            "0",
            "--quota-partitions",
            "0",
            "--cost-ms-per-sec",
            "0",
        ],
        None,
    );
    let rt = runtime();
    let addr = server.addr.clone();
    // mal's 200 partitions, a document of 200 KB each.
    rt.block_on(push_setup(&addr, "mal", 10, |k| {
        format!(
            "range(20).map(i => Space.create({{ id: \"s{k}-\" + toString(i), space: \"mal:p{k}-\" + toString(i), body: \"x\".repeat(200000) }}).id)"
        )
    }));
    std::thread::sleep(Duration::from_millis(500));
    let baseline = server.rss_kib();
    let peak = rt.block_on(async {
        // 16 connections of mal's that never read: each is owed the 200 snapshots.
        let (sinks, peak) = sinks_and_peak(&server, "mal", 16).await;
        drop(sinks);
        peak
    });
    let grew = peak.saturating_sub(baseline);
    println!(
        "16 connections that do not read 200 partitions of 200 KB: the server grew by {} MiB",
        grew / 1024
    );
    // All they are owed would be 640 MB.
    assert!(grew < 160 * 1024, "the server grew by {grew} KiB");
    assert!(server.alive());
}
