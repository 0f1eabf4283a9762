//! What one user can do to the others: the two fairness measurements of
//! `docs/BENCHMARKS.md` ("Fairness under hostile users").
//!
//! `cargo bench -p warren-server --bench fairness -- [catchup|abuser] [options]`
//!
//! **catchup** — catch-up in proportion to what the user may read. A user (ann) holds
//! her todos and three team boards. Her `Hello` (connect, `Welcome` and every
//! snapshot) and her `/v1/pull`, and a pull by a user who may read nothing (eve), are
//! timed on an empty region, then again after another user (mallory) created
//! `--partitions` teams (20,000) that ann and eve cannot read. Both runs use the real
//! schema (membership rules, indexed) and, as the peer in the same run, the same rules
//! behind a schema function, which the read-rule index does not look into: catch-up
//! then evaluates every partition, as before the index. Last, bob's commit latency
//! (one commit at a time, each awaited) with and without eve pulling in a loop on
//! the spammed region (bob at most 100 commits a second, eve as fast as her limits
//! let her).
//!
//! **abuser** — cost, not count. A well-behaved client (ann) commits one small
//! transaction at a time, each awaited, at most 100 a second, for `--secs` seconds; its
//! latency is measured alone, then while mallory pushes transactions that exhaust the
//! fuel budget as fast as the server lets her.
//!
//! Options: `--reps N` timed catch-ups per case (50), `--partitions N` (20,000),
//! `--secs N` seconds per latency run (10). Without `--bench` (as under
//! `cargo test --benches`) it runs a small, quick version.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use warren_core::exec::Op;
use warren_core::protocol::{ClientCommit, ClientFrame, CommitResult, ServerFrame};
use warren_server::auth::{self, AuthConfig};
use warren_server::client::RawConnection;
use warren_server::gateway::GatewayLimits;
use warren_server::server::{self, Config, Running};

const SECRET: &str = "benchmark-secret-0123456789abcdef";

const TEAM_RULE: &str = "Team.byId(partition.slice(5))?.members?.includes(auth.sub) == true";
/// The same rule in a form the read-rule index cannot read (a `??` between the document
/// and its field), so that it is evaluated for every partition: the peer.
const TEAM_RULE_HIDDEN: &str =
    "(Team.byId(partition.slice(5))?.members ?? []).includes(auth.sub) == true";

fn schema(read_rule: &str) -> String {
    format!(
        r#"
collection Todo {{
  partition "user:" + doc.owner
  allow read   partition == "user:" + auth.sub
  allow create doc.owner == auth.sub
  allow update old.owner == auth.sub
}}

collection Team {{
  partition "team:" + doc.id
  allow read   {read_rule}
  allow create doc.admin == auth.sub && doc.members.includes(auth.sub)
}}

collection Task {{
  partition "team:" + doc.team
  allow read   {read_rule}
  allow create Team.byId(doc.team)?.members?.includes(auth.sub) == true
}}

function bump(id) {{
  let t = Todo.byId(id) ?? Todo.create({{ id, owner: auth.sub, n: 0 }})
  t.update({{ n: t.n + 1 }})
}}

// Burns the whole fuel budget and is rejected with FUEL_EXHAUSTED.
function burn() {{
  range(200).map(i => range(5000).reduce((a, x) => a + x, 0))
}}
"#
    )
}

struct Opts {
    scenario: String,
    reps: usize,
    partitions: usize,
    secs: f64,
}

fn parse_opts() -> Opts {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let full = args.iter().any(|a| a == "--bench");
    let mut o = Opts {
        scenario: "both".into(),
        reps: if full { 50 } else { 5 },
        partitions: if full { 20_000 } else { 2_000 },
        secs: if full { 10.0 } else { 1.0 },
    };
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut val = || {
            it.next()
                .cloned()
                .unwrap_or_else(|| panic!("{a} needs a value"))
        };
        match a.as_str() {
            "--bench" => {}
            "--reps" => o.reps = val().parse().expect("--reps N"),
            "--partitions" => o.partitions = val().parse().expect("--partitions N"),
            "--secs" => o.secs = val().parse().expect("--secs N"),
            "catchup" | "abuser" | "both" => o.scenario = a.clone(),
            other if other.starts_with("--") => panic!("unknown option {other}"),
            _ => {} // cargo's filter arguments
        }
    }
    o
}

fn token(sub: &str) -> String {
    auth::mint_hs256(SECRET, &auth::dev_claims(sub, 3600, None, None)).unwrap()
}

struct Server {
    running: Option<Running>,
    addr: std::net::SocketAddr,
    dir: std::path::PathBuf,
}

impl Server {
    async fn start(name: &str, schema: String, gateway: GatewayLimits) -> Server {
        let dir = std::env::temp_dir().join(format!("warren-bench-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let config = Config {
            data_dir: dir.clone(),
            schema,
            auth: AuthConfig {
                hs256_secret: Some(SECRET.into()),
                ..AuthConfig::default()
            },
            sequencer: Default::default(),
            limits: Default::default(),
            gateway,
            store_sync_every: 8,
            admin_token: None,
            shared: None,
        };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let running = server::start(config, listener)
            .await
            .expect("server starts");
        Server {
            addr: running.addr,
            running: Some(running),
            dir,
        }
    }

    fn url(&self) -> String {
        format!("ws://{}/v1/sync", self.addr)
    }

    async fn stop(mut self) {
        if let Some(r) = self.running.take() {
            r.stop().await.unwrap();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// One HTTP/1.1 request (connection closed after it): status and body.
async fn http(addr: std::net::SocketAddr, path: &str, sub: &str, body: &str) -> (u16, String) {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.set_nodelay(true).unwrap();
    let req = format!(
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        token(sub),
        body.len()
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).await.unwrap();
    let text = String::from_utf8_lossy(&out).into_owned();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = text.split("\r\n\r\n").nth(1).unwrap_or("").to_owned();
    (status, body)
}

/// Runs ad-hoc transactions as `sub` over HTTP, one push; every one must commit.
async fn run_all(server: &Server, sub: &str, client: &str, first_seq: u64, sources: &[String]) {
    let commits: Vec<serde_json::Value> = sources
        .iter()
        .enumerate()
        .map(|(i, src)| serde_json::json!({ "seq": first_seq + i as u64, "source": src }))
        .collect();
    let body = serde_json::json!({ "client_id": client, "commits": commits }).to_string();
    let (status, body) = http(server.addr, "/v1/push", sub, &body).await;
    assert_eq!(status, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    for o in v["outcomes"].as_array().unwrap() {
        assert_eq!(o["status"], "committed", "{o}");
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

/// Connect, `Hello`, the `Welcome` and a snapshot of every partition it lists.
async fn timed_hello(server: &Server, sub: &str, n: usize) -> (Duration, usize) {
    let t = Instant::now();
    let mut raw = RawConnection::connect(&server.url()).await.unwrap();
    raw.send(&hello(&format!("{sub}-{n}"), sub)).await.unwrap();
    let Some(ServerFrame::Welcome { partitions, .. }) = raw.recv(Duration::from_secs(60)).await
    else {
        panic!("no welcome");
    };
    let mut left = partitions.len();
    while left > 0 {
        match raw.recv(Duration::from_secs(60)).await {
            Some(ServerFrame::Snapshot { .. }) => left -= 1,
            Some(ServerFrame::SnapshotPart { .. }) => {}
            other => panic!("{other:?}"),
        }
    }
    (t.elapsed(), partitions.len())
}

async fn timed_pull(server: &Server, sub: &str) -> (Duration, usize) {
    let t = Instant::now();
    let (status, body) = http(server.addr, "/v1/pull", sub, "{}").await;
    let took = t.elapsed();
    assert_eq!(status, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    (took, v["partitions"].as_array().unwrap().len())
}

fn median(mut xs: Vec<Duration>) -> Duration {
    xs.sort();
    xs[xs.len() / 2]
}

fn pct(mut xs: Vec<Duration>, p: f64) -> Duration {
    xs.sort();
    xs[((xs.len() as f64 - 1.0) * p).round() as usize]
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1000.0)
}

/// Catch-up times of one case: (hello ann, pull ann, pull eve), medians of `reps`.
async fn catch_ups(server: &Server, reps: usize) -> [Duration; 3] {
    let (mut h, mut p, mut e) = (Vec::new(), Vec::new(), Vec::new());
    // One untimed round first (connections, caches).
    timed_hello(server, "ann", 0).await;
    for i in 0..reps {
        let (d, n) = timed_hello(server, "ann", i + 1).await;
        assert_eq!(n, 4, "ann reads her partition and three teams");
        h.push(d);
        let (d, n) = timed_pull(server, "ann").await;
        assert_eq!(n, 4);
        p.push(d);
        let (d, n) = timed_pull(server, "eve").await;
        assert_eq!(n, 0);
        e.push(d);
    }
    [median(h), median(p), median(e)]
}

/// A well-behaved client's pace: one commit at a time, at most 100 a second (its
/// identity may send 200), so that what is measured is the server, not its rate limit.
const PACE: Duration = Duration::from_millis(10);

/// Sequential commits by `sub` for `secs`, one at a time at [`PACE`]: every latency.
async fn commit_latencies(server: &Server, sub: &str, client: &str, secs: f64) -> Vec<Duration> {
    let mut raw = RawConnection::connect(&server.url()).await.unwrap();
    raw.send(&hello(client, sub)).await.unwrap();
    let applied = match raw.recv(Duration::from_secs(60)).await {
        Some(ServerFrame::Welcome { applied_seq, .. }) => applied_seq,
        other => panic!("{other:?}"),
    };
    let mut seq = applied;
    let mut out = Vec::new();
    let until = Instant::now() + Duration::from_secs_f64(secs);
    let mut next = Instant::now();
    while Instant::now() < until {
        tokio::time::sleep_until(next.into()).await;
        next += PACE;
        seq += 1;
        let t = Instant::now();
        raw.send(&ClientFrame::Push {
            commits: vec![ClientCommit {
                seq,
                schema_version: String::new(),
                op: Op::Call {
                    function: "bump".into(),
                    args: warren_core::value::obj([("id", format!("{sub}-n").into())]),
                },
            }],
        })
        .await
        .unwrap();
        loop {
            match raw.recv(Duration::from_secs(60)).await {
                Some(ServerFrame::Outcome { seq: s, result }) if s == seq => {
                    assert!(
                        matches!(result, CommitResult::Committed { .. }),
                        "{result:?}"
                    );
                    break;
                }
                Some(ServerFrame::Error { code, message }) => panic!("{sub}: {code}: {message}"),
                Some(_) => {}
                None => panic!("{sub}: no outcome"),
            }
        }
        out.push(t.elapsed());
    }
    out
}

async fn catchup(o: &Opts) {
    println!(
        "catch-up: {} partitions that ann and eve cannot read; medians of {} catch-ups",
        o.partitions, o.reps
    );
    println!(
        "{:<34} {:>10} {:>10} {:>7}   {:>10} {:>10} {:>7}",
        "", "indexed", "", "", "every partition", "", ""
    );
    println!(
        "{:<34} {:>10} {:>10} {:>7}   {:>10} {:>10} {:>7}",
        "", "empty", "spammed", "ratio", "empty", "spammed", "ratio"
    );
    // The peer is one only while the index cannot read its rule (a schema function's
    // call, which it once was, is now read as the function's body).
    for (rule, unindexed) in [(TEAM_RULE, false), (TEAM_RULE_HIDDEN, true)] {
        let s = warren_core::Schema::parse(&schema(rule)).unwrap();
        let names: Vec<String> = s.reach().unindexed().into_iter().map(|(c, _)| c).collect();
        let want: &[&str] = if unindexed { &["Task", "Team"] } else { &[] };
        assert_eq!(names, want, "{rule}");
    }
    let mut rows: Vec<(&str, [Duration; 2], [Duration; 2])> = Vec::new();
    let mut latency = None;
    let mut cases = Vec::new();
    for (name, rule) in [("indexed", TEAM_RULE), ("hidden", TEAM_RULE_HIDDEN)] {
        // The default limits: eve pulls as fast as they let her.
        let server = Server::start(name, schema(rule), GatewayLimits::default()).await;
        // ann: ten todos and three boards of ten tasks; bob and eve exist.
        let mut setup = vec![format!(
            "range(10).map(i => Todo.create({{ id: \"ann-todo-\" + toString(i), owner: \"ann\", n: 0 }}))"
        )];
        for t in 0..3 {
            setup.push(format!(
                "Team.create({{ id: \"ann{t}\", admin: \"ann\", members: [\"ann\", \"bob\"] }})"
            ));
            setup.push(format!(
                "range(10).map(i => Task.create({{ id: \"ann{t}-task-\" + toString(i), team: \"ann{t}\" }}))"
            ));
        }
        run_all(&server, "ann", "setup", 1, &setup).await;
        let empty = catch_ups(&server, o.reps).await;
        // mallory's teams: a thousand per commit.
        let per = 1000.min(o.partitions);
        let sources: Vec<String> = (0..o.partitions.div_ceil(per))
            .map(|k| {
                format!(
                    "range({per}).map(i => Team.create({{ id: \"m{k}-\" + toString(i), admin: \"mallory\", members: [\"mallory\"] }}))"
                )
            })
            .collect();
        let t = Instant::now();
        for (i, chunk) in sources.chunks(10).enumerate() {
            run_all(&server, "mallory", "spam", 1 + 10 * i as u64, chunk).await;
        }
        let spam_took = t.elapsed();
        let spammed = catch_ups(&server, o.reps).await;
        println!(
            "  ({name}: mallory's {} teams took {:.2} s to commit)",
            o.partitions,
            spam_took.as_secs_f64()
        );
        cases.push((empty, spammed));
        if name == "indexed" {
            // bob's commits, alone and while eve pulls in a loop.
            let alone = commit_latencies(&server, "bob", "bob-1", o.secs).await;
            let stop = Arc::new(AtomicBool::new(false));
            let pulls = Arc::new(AtomicU64::new(0));
            let puller = {
                let (stop, pulls, addr) = (stop.clone(), pulls.clone(), server.addr);
                tokio::spawn(async move {
                    while !stop.load(Ordering::Relaxed) {
                        match http(addr, "/v1/pull", "eve", "{}").await {
                            (200, _) => {
                                pulls.fetch_add(1, Ordering::Relaxed);
                            }
                            // Over her frame budget: she tries again at once.
                            (429, _) => tokio::task::yield_now().await,
                            (status, body) => panic!("{status}: {body}"),
                        }
                    }
                })
            };
            let with = commit_latencies(&server, "bob", "bob-1", o.secs).await;
            stop.store(true, Ordering::Relaxed);
            puller.await.unwrap();
            latency = Some((alone, with, pulls.load(Ordering::Relaxed)));
        }
        server.stop().await;
    }
    let names = [
        "Hello, ann (4 partitions)",
        "pull, ann",
        "pull, eve (nothing)",
    ];
    for (i, name) in names.iter().enumerate() {
        let (ie, is) = (cases[0].0[i], cases[0].1[i]);
        let (he, hs) = (cases[1].0[i], cases[1].1[i]);
        rows.push((name, [ie, is], [he, hs]));
    }
    for (name, [ie, is], [he, hs]) in &rows {
        println!(
            "{:<34} {:>10} {:>10} {:>6.2}x   {:>10} {:>10} {:>6.2}x",
            name,
            ms(*ie),
            ms(*is),
            is.as_secs_f64() / ie.as_secs_f64(),
            ms(*he),
            ms(*hs),
            hs.as_secs_f64() / he.as_secs_f64()
        );
    }
    if let Some((alone, with, pulls)) = latency {
        println!(
            "bob's commits, one at a time, on the spammed region: alone {} commits, p50 {} p99 {}; with eve pulling ({pulls} pulls) {} commits, p50 {} p99 {}; p99 ratio {:.2}x",
            alone.len(),
            ms(pct(alone.clone(), 0.5)),
            ms(pct(alone.clone(), 0.99)),
            with.len(),
            ms(pct(with.clone(), 0.5)),
            ms(pct(with.clone(), 0.99)),
            pct(with, 0.99).as_secs_f64() / pct(alone, 0.99).as_secs_f64()
        );
    }
}

/// mallory pushing commits that burn their whole fuel budget, as fast as the server
/// lets her (pushes of 100, resent on a new connection after any refusal), until
/// `stop`: how many ran, and how many refusals.
fn spawn_abuser(url: String, stop: Arc<AtomicBool>) -> tokio::task::JoinHandle<(u64, u64)> {
    tokio::spawn(async move {
        let (mut burned, mut refused) = (0, 0);
        let mut seq = 0u64;
        let mut n = 0;
        while !stop.load(Ordering::Relaxed) {
            n += 1;
            let mut raw = RawConnection::connect(&url).await.unwrap();
            raw.send(&hello(&format!("mallory-{n}"), "mallory"))
                .await
                .unwrap();
            let applied = match raw.recv(Duration::from_secs(60)).await {
                Some(ServerFrame::Welcome { applied_seq, .. }) => applied_seq,
                _ => continue,
            };
            seq = seq.max(applied);
            'conn: while !stop.load(Ordering::Relaxed) {
                let commits = (seq + 1..=seq + 100)
                    .map(|s| ClientCommit {
                        seq: s,
                        schema_version: String::new(),
                        op: Op::Call {
                            function: "burn".into(),
                            args: warren_core::Value::Null,
                        },
                    })
                    .collect();
                if raw.send(&ClientFrame::Push { commits }).await.is_err() {
                    break;
                }
                let last = seq + 100;
                loop {
                    match raw.recv(Duration::from_millis(200)).await {
                        Some(ServerFrame::Outcome { seq: s, .. }) => {
                            burned += 1;
                            seq = seq.max(s);
                            if s == last {
                                break;
                            }
                        }
                        Some(ServerFrame::Error { code, message }) => {
                            if std::env::var("WARREN_BENCH_VERBOSE").is_ok() {
                                eprintln!("mallory: {code}: {message}");
                            }
                            refused += 1;
                            break 'conn;
                        }
                        Some(_) => {}
                        None if stop.load(Ordering::Relaxed) => break 'conn,
                        None => {}
                    }
                }
            }
        }
        (burned, refused)
    })
}

async fn abuser(o: &Opts) {
    println!(
        "abuser: ann commits one at a time (at most 100 a second) for {:.0} s per run",
        o.secs
    );
    println!(
        "{:<40} {:>8} {:>10} {:>10} {:>10} {:>14}",
        "", "commits", "p50", "p99", "max", "burns (refused)"
    );
    let row = |name: &str, l: &[Duration], burns: Option<(u64, u64)>| {
        println!(
            "{:<40} {:>8} {:>10} {:>10} {:>10} {:>14}",
            name,
            l.len(),
            ms(pct(l.to_vec(), 0.5)),
            ms(pct(l.to_vec(), 0.99)),
            ms(*l.iter().max().unwrap()),
            burns.map_or(String::new(), |(b, r)| format!("{b} ({r})"))
        );
    };
    let mut p99 = Vec::new();
    for (name, gateway) in [
        ("cost budgets (the default)", GatewayLimits::default()),
        (
            "no cost budget (as before)",
            GatewayLimits {
                cost_ms_per_sec: 0,
                ..GatewayLimits::default()
            },
        ),
    ] {
        let server = Server::start("abuser", schema(TEAM_RULE), gateway).await;
        let alone = commit_latencies(&server, "ann", "ann-1", o.secs).await;
        let stop = Arc::new(AtomicBool::new(false));
        let abuser = spawn_abuser(server.url(), stop.clone());
        tokio::time::sleep(Duration::from_millis(500)).await;
        let with = commit_latencies(&server, "ann", "ann-1", o.secs).await;
        stop.store(true, Ordering::Relaxed);
        // Without a budget her queued commits hold the region a while: not waited for.
        let burns = tokio::time::timeout(Duration::from_secs(5), abuser)
            .await
            .ok()
            .map(|r| r.unwrap());
        row(&format!("{name}: alone"), &alone, None);
        row(&format!("{name}: with the abuser"), &with, burns);
        p99.push(pct(with, 0.99).as_secs_f64() / pct(alone, 0.99).as_secs_f64());
        if name.starts_with("no cost") {
            // Her queue may take long to drain; the process ends instead.
            std::mem::forget(server);
        } else {
            server.stop().await;
        }
    }
    println!(
        "p99 with the abuser / alone: {:.2}x with cost budgets, {:.2}x without",
        p99[0], p99[1]
    );
}

fn main() {
    let o = parse_opts();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        if o.scenario == "catchup" || o.scenario == "both" {
            catchup(&o).await;
        }
        if o.scenario == "abuser" || o.scenario == "both" {
            abuser(&o).await;
        }
    });
}
