//! The sync server under small commits, next to PostgreSQL's `pgbench -N`.
//!
//! Run with `./.ci/bench-server` (which also runs pgbench and passes its results in), or
//! alone with `cargo bench -p warren-server --bench push`. `docs/BENCHMARKS.md` ("Sync
//! server vs PostgreSQL") explains the workload and the figures.
//!
//! It starts the real `warren serve` binary (built with this benchmark) on loopback,
//! with a fresh data directory and the default durable file log, and drives it with
//! native clients that speak the sync protocol over WebSocket: each client has its own
//! token (subject `u<i>`), says `Hello`, and pushes one-document updates (`bump` of one
//! of its own counters, picked at random), in two shapes:
//!
//! - **closed loop**: each client sends one commit and waits for its outcome;
//! - **pipelined**: each client keeps up to `--window` commits in flight, topping up with
//!   one `Push` of every free slot whenever outcomes arrive, as a real outbox does.
//!
//! A commit's latency runs from sending its `Push` to receiving its `Outcome`. Every
//! outcome must be `Committed` at a growing position, and at the end a fresh connection
//! per user reads its partition back: every counter must equal the number of its
//! committed bumps, or the benchmark fails instead of printing figures.
//!
//! Options (after `--`): `--secs N` measured seconds per run (10), `--warmup N` (2),
//! `--reps N` runs per shape (3), `--clients N` (64), `--window N` (32), `--docs N`
//! counters per client (100), `--shape closed|pipelined|both`, `--pg DIR` (repeatable:
//! a pgbench run's directory, holding its standard output in `stdout` and its
//! `-l` transaction logs in `pgbench_log.*`), `--pg-run CMD` (before each of Warren's
//! runs, `CMD <run number>` runs pgbench and prints such a directory as its last line:
//! `.ci/bench-server` passes one, so PostgreSQL and Warren alternate on the same
//! machine), `--server PATH` (another `warren` binary, to compare two builds). Without
//! `--bench` (as under `cargo test --benches`) it runs a one-second
//! smoke version with 8 clients.

use std::io::{Read, Write as _};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use warren_core::exec::Op;
use warren_core::protocol::{ClientCommit, ClientFrame, CommitResult, ServerFrame};
use warren_core::value::{obj, Value};
use warren_server::auth;

const SCHEMA: &str = r#"
collection Counter {
  partition "user:" + doc.owner
  allow read   partition == "user:" + auth.sub
  allow create doc.owner == auth.sub
  allow update old.owner == auth.sub && new.owner == old.owner
}

function bump(id) {
  let c = Counter.byId(id) ?? Counter.create({ id, owner: auth.sub, n: 0 })
  c.update({ n: c.n + 1 })
}
"#;

const SECRET: &str = "benchmark-secret-0123456789abcdef";

#[derive(Clone, Debug)]
struct Opts {
    secs: f64,
    warmup: f64,
    reps: usize,
    clients: usize,
    window: usize,
    docs: usize,
    shapes: Vec<Shape>,
    pg: Vec<PathBuf>,
    pg_run: Option<PathBuf>,
    server: Option<PathBuf>,
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Shape {
    Closed,
    Pipelined,
}

impl Shape {
    fn name(self) -> &'static str {
        match self {
            Shape::Closed => "closed loop",
            Shape::Pipelined => "pipelined",
        }
    }
}

fn parse_opts() -> Opts {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let full = args.iter().any(|a| a == "--bench");
    let mut o = Opts {
        secs: if full { 10.0 } else { 1.0 },
        warmup: if full { 2.0 } else { 0.3 },
        reps: if full { 3 } else { 1 },
        clients: if full { 64 } else { 8 },
        window: if full { 32 } else { 8 },
        docs: if full { 100 } else { 10 },
        shapes: vec![Shape::Closed, Shape::Pipelined],
        pg: Vec::new(),
        pg_run: None,
        server: None,
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
            "--secs" => o.secs = val().parse().expect("--secs N"),
            "--warmup" => o.warmup = val().parse().expect("--warmup N"),
            "--reps" => o.reps = val().parse().expect("--reps N"),
            "--clients" => o.clients = val().parse().expect("--clients N"),
            "--window" => o.window = val().parse().expect("--window N"),
            "--docs" => o.docs = val().parse().expect("--docs N"),
            "--pg" => o.pg.push(PathBuf::from(val())),
            "--pg-run" => o.pg_run = Some(PathBuf::from(val())),
            "--server" => o.server = Some(PathBuf::from(val())),
            "--shape" => {
                o.shapes = match val().as_str() {
                    "closed" => vec![Shape::Closed],
                    "pipelined" => vec![Shape::Pipelined],
                    "both" => vec![Shape::Closed, Shape::Pipelined],
                    s => panic!("--shape closed|pipelined|both, not {s}"),
                }
            }
            other => panic!("unknown option {other}"),
        }
    }
    o
}

// ---------------------------------------------------------------------------------
// The server process

struct Server {
    child: Child,
    addr: SocketAddr,
    dir: PathBuf,
}

impl Server {
    fn start(bin: Option<&Path>) -> Server {
        let dir = std::env::temp_dir().join(format!("warren-bench-push-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("schema.warren"), SCHEMA).unwrap();
        // A free port: bind one, release it, give it to the server.
        let addr = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let bin = bin.unwrap_or(Path::new(env!("CARGO_BIN_EXE_warren")));
        let child = Command::new(bin)
            .arg("serve")
            .arg("--data-dir")
            .arg(dir.join("data"))
            .arg("--schema")
            .arg(dir.join("schema.warren"))
            .arg("--listen")
            .arg(addr.to_string())
            .arg("--hs256-secret")
            .arg(SECRET)
            .env("WARREN_LOG", "warn")
            // The per-identity rate limits protect a server from one abusive user
            // (200 commits/s each by default); here 64 users each commit hundreds
            // per second on purpose.
            .env("WARREN_COMMITS_PER_SEC", "0")
            .env("WARREN_FRAMES_PER_SEC", "0")
            // Likewise the region-time budget and its commits in flight (8 by default:
            // the pipelined shape keeps 32).
            .env("WARREN_COST_MS_PER_SEC", "0")
            .stdin(Stdio::null())
            .spawn()
            .expect("start warren serve");
        let s = Server { child, addr, dir };
        let deadline = Instant::now() + Duration::from_secs(30);
        while http_get(s.addr, "/readyz").is_none_or(|b| !b.starts_with("ready")) {
            assert!(Instant::now() < deadline, "the server did not get ready");
            std::thread::sleep(Duration::from_millis(20));
        }
        s
    }

    fn url(&self) -> String {
        format!("ws://{}/v1/sync", self.addr)
    }

    fn metrics(&self) -> ServerMetrics {
        let text = http_get(self.addr, "/metrics").expect("metrics");
        let get = |name: &str| -> f64 {
            text.lines()
                .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
                .unwrap_or(0.0)
        };
        ServerMetrics {
            batches: get("warren_log_batches_total"),
            batch_commits: get("warren_log_batch_commits_total"),
            fsync_secs: get("warren_log_fsync_seconds_total"),
            apply_secs: get("warren_apply_seconds_total"),
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A plain HTTP/1.0 GET; the body, or `None` when the server is not answering.
fn http_get(addr: SocketAddr, path: &str) -> Option<String> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: bench\r\n\r\n").ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    let (head, body) = out.split_once("\r\n\r\n")?;
    let status = head.split_whitespace().nth(1);
    (status == Some("200")).then(|| body.to_owned())
}

#[derive(Clone, Copy, Default)]
struct ServerMetrics {
    batches: f64,
    batch_commits: f64,
    fsync_secs: f64,
    apply_secs: f64,
}

// ---------------------------------------------------------------------------------
// The clients

/// A connection (its frames one at a time, those of a batch included).
type Link = warren_server::client::RawConnection;

/// How long a client waits for the server's next frame before the run fails.
const FRAME_WAIT: Duration = Duration::from_secs(60);

/// One user's connection and what it knows.
struct Conn {
    ws: Link,
    schema_version: String,
    next_seq: u64,
    rng: u64,
    /// Committed bumps per counter (checked against the server at the end).
    bumps: Vec<i64>,
    /// The position of the last outcome (must grow).
    last_position: u64,
    /// The subject, which prefixes the counters' ids (ids are global per collection).
    user: String,
}

fn user(i: usize) -> String {
    format!("u{i}")
}

fn token(i: usize) -> String {
    auth::mint_hs256(SECRET, &auth::dev_claims(&user(i), 24 * 3600, None, None)).unwrap()
}

async fn connect(url: &str, i: usize, client_id: &str) -> (Link, String, Vec<ServerFrame>) {
    // No Nagle, as browsers do for WebSockets.
    let mut ws = Link::connect(url).await.expect("connect");
    let hello = ClientFrame::Hello {
        client_id: client_id.to_owned(),
        token: token(i),
        schema_version: String::new(),
        outbox_from: 0,
        partitions: Vec::new(),
    };
    ws.send(&hello).await.unwrap();
    let (schema_version, partitions) = match ws.recv(FRAME_WAIT).await.expect("a frame") {
        ServerFrame::Welcome {
            schema_version,
            partitions,
            ..
        } => (schema_version, partitions),
        f => panic!("expected Welcome, got {f:?}"),
    };
    // A snapshot of every partition it may read follows (the client holds none yet).
    let mut frames = Vec::new();
    for _ in &partitions {
        frames.push(ws.recv(FRAME_WAIT).await.expect("a frame"));
    }
    (ws, schema_version, frames)
}

impl Conn {
    async fn open(url: &str, i: usize, docs: usize) -> Conn {
        let (ws, schema_version, _) = connect(url, i, &format!("bench-{i}")).await;
        Conn {
            ws,
            schema_version,
            next_seq: 1,
            rng: 0x9E37_79B9_7F4A_7C15 ^ (i as u64 + 1).wrapping_mul(0xBF58_476D_1CE4_E5B9),
            bumps: vec![0; docs],
            last_position: 0,
            user: user(i),
        }
    }

    /// The next commit: `bump` of counter `doc` (a random one when `None`).
    fn commit(&mut self, doc: Option<usize>) -> (ClientCommit, usize) {
        let doc = doc.unwrap_or_else(|| {
            self.rng ^= self.rng << 13;
            self.rng ^= self.rng >> 7;
            self.rng ^= self.rng << 17;
            (self.rng % self.bumps.len() as u64) as usize
        });
        let seq = self.next_seq;
        self.next_seq += 1;
        let c = ClientCommit {
            seq,
            schema_version: self.schema_version.clone(),
            op: Op::Call {
                function: "bump".into(),
                args: obj([("id", Value::String(format!("{}-c{doc}", self.user)))]),
            },
        };
        (c, doc)
    }

    async fn push(&mut self, commits: Vec<ClientCommit>) {
        let f = ClientFrame::Push { commits };
        self.ws.send(&f).await.expect("send a push");
    }

    /// Reads frames until an outcome; checks it is `seq`'s and committed.
    async fn outcome(&mut self, seq: u64) {
        loop {
            match self.ws.recv(FRAME_WAIT).await.expect("a frame") {
                ServerFrame::Outcome { seq: s, result } => {
                    assert_eq!(s, seq, "outcomes arrive in the order of the commits");
                    match result {
                        CommitResult::Committed { position, .. } => {
                            assert!(position > self.last_position, "positions grow");
                            self.last_position = position;
                        }
                        r => panic!("commit {seq} was not committed: {r:?}"),
                    }
                    return;
                }
                // The first write to its partition makes it readable: a snapshot.
                ServerFrame::Effects { .. }
                | ServerFrame::Snapshot { .. }
                | ServerFrame::SnapshotPart { .. } => {}
                f => panic!("unexpected frame {f:?}"),
            }
        }
    }
}

/// What one client measured in one run.
#[derive(Default)]
struct Tally {
    /// Latencies (µs) of the commits whose outcome arrived in the measured window.
    latencies: Vec<u32>,
}

/// The clock every client of a run shares: measure outcomes in `[from, to)`, send
/// nothing after `to`.
#[derive(Clone, Copy)]
struct Window {
    from: Instant,
    to: Instant,
}

async fn closed_loop(mut c: Conn, w: Window) -> (Conn, Tally) {
    let mut t = Tally::default();
    while Instant::now() < w.to {
        let (commit, doc) = c.commit(None);
        let seq = commit.seq;
        let sent = Instant::now();
        c.push(vec![commit]).await;
        c.outcome(seq).await;
        let done = Instant::now();
        c.bumps[doc] += 1;
        if done >= w.from && done < w.to {
            t.latencies.push((done - sent).as_micros() as u32);
        }
    }
    (c, t)
}

async fn pipelined(mut c: Conn, w: Window, window: usize) -> (Conn, Tally) {
    let mut t = Tally::default();
    let mut inflight: std::collections::VecDeque<(u64, usize, Instant)> = Default::default();
    loop {
        let now = Instant::now();
        if now < w.to && inflight.len() < window {
            let mut commits = Vec::with_capacity(window - inflight.len());
            while inflight.len() < window {
                let (commit, doc) = c.commit(None);
                inflight.push_back((commit.seq, doc, now));
                commits.push(commit);
            }
            c.push(commits).await;
        }
        let Some(&(seq, doc, sent)) = inflight.front() else {
            break;
        };
        c.outcome(seq).await;
        inflight.pop_front();
        let done = Instant::now();
        c.bumps[doc] += 1;
        if done >= w.from && done < w.to {
            t.latencies.push((done - sent).as_micros() as u32);
        }
        // Take every outcome already here before topping up, as an outbox would.
        while let Some(&(seq, doc, sent)) = inflight.front() {
            let Some(frame) = c.ws.ready() else {
                break;
            };
            match frame {
                ServerFrame::Outcome { seq: s, result } => {
                    assert_eq!(s, seq, "outcomes arrive in the order of the commits");
                    let CommitResult::Committed { position, .. } = result else {
                        panic!("commit {seq} was not committed: {result:?}");
                    };
                    assert!(position > c.last_position, "positions grow");
                    c.last_position = position;
                    inflight.pop_front();
                    let done = Instant::now();
                    c.bumps[doc] += 1;
                    if done >= w.from && done < w.to {
                        t.latencies.push((done - sent).as_micros() as u32);
                    }
                }
                ServerFrame::Effects { .. }
                | ServerFrame::Snapshot { .. }
                | ServerFrame::SnapshotPart { .. } => {}
                f => panic!("unexpected frame {f:?}"),
            }
        }
    }
    (c, t)
}

/// Creates every counter (one commit each, pipelined).
async fn setup(mut c: Conn) -> Conn {
    let docs = c.bumps.len();
    let commits: Vec<(ClientCommit, usize)> = (0..docs).map(|d| c.commit(Some(d))).collect();
    let seqs: Vec<u64> = commits.iter().map(|(cc, _)| cc.seq).collect();
    c.push(commits.into_iter().map(|(cc, _)| cc).collect())
        .await;
    for (d, seq) in seqs.into_iter().enumerate() {
        c.outcome(seq).await;
        c.bumps[d] += 1;
    }
    c
}

/// A fresh connection per user reads its partition back: every counter must equal its
/// committed bumps.
async fn check(url: &str, conns: &[Conn]) {
    for (i, c) in conns.iter().enumerate() {
        let (_, _, frames) = connect(url, i, &format!("check-{i}")).await;
        let mut seen = vec![None; c.bumps.len()];
        for f in frames {
            if let ServerFrame::Snapshot { docs, .. } | ServerFrame::SnapshotPart { docs, .. } = f {
                for d in docs {
                    let k: usize = d.id.rsplit_once("-c").unwrap().1.parse().unwrap();
                    assert_eq!(d.data.get("owner"), &Value::String(user(i)));
                    let Value::Int(n) = d.data.get("n") else {
                        panic!("counter {} has no n", d.id)
                    };
                    seen[k] = Some(*n);
                }
            }
        }
        for (k, n) in seen.iter().enumerate() {
            assert_eq!(
                *n,
                Some(c.bumps[k]),
                "user {i}'s counter c{k} must equal its committed bumps"
            );
        }
    }
}

// ---------------------------------------------------------------------------------
// Figures

#[derive(Clone, Copy)]
struct Run {
    tps: f64,
    p50_ms: f64,
    p99_ms: f64,
}

fn percentile(sorted: &[u32], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i] as f64
}

fn run_of(mut lat_us: Vec<u32>, secs: f64) -> Run {
    lat_us.sort_unstable();
    Run {
        tps: lat_us.len() as f64 / secs,
        p50_ms: percentile(&lat_us, 0.50) / 1000.0,
        p99_ms: percentile(&lat_us, 0.99) / 1000.0,
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    if v.is_empty() {
        f64::NAN
    } else {
        v[v.len() / 2]
    }
}

/// The medians of several runs, each figure on its own.
fn median_run(runs: &[Run]) -> Run {
    Run {
        tps: median(runs.iter().map(|r| r.tps).collect()),
        p50_ms: median(runs.iter().map(|r| r.p50_ms).collect()),
        p99_ms: median(runs.iter().map(|r| r.p99_ms).collect()),
    }
}

/// A pgbench run: `tps = ...` from its output, latencies from its `-l` logs (the third
/// field of each line is the transaction's latency in µs).
fn pg_run(dir: &Path) -> Run {
    let out = std::fs::read_to_string(dir.join("stdout")).expect("pgbench stdout");
    let tps: f64 = out
        .lines()
        .find_map(|l| l.strip_prefix("tps = "))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .expect("a tps line in pgbench's output");
    let mut lat = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if !p
            .file_name()
            .unwrap()
            .to_string_lossy()
            .starts_with("pgbench_log")
        {
            continue;
        }
        for l in std::fs::read_to_string(&p).unwrap().lines() {
            if let Some(us) = l.split_whitespace().nth(2).and_then(|f| f.parse().ok()) {
                lat.push(us);
            }
        }
    }
    assert!(!lat.is_empty(), "no pgbench transaction logs in {dir:?}");
    let mut r = run_of(lat, 1.0);
    r.tps = tps;
    r
}

/// Runs `cmd <run>`: it runs pgbench and prints the directory of its results last.
fn run_pgbench(cmd: &Path, run: usize) -> PathBuf {
    let out = Command::new(cmd)
        .arg(run.to_string())
        .stderr(Stdio::inherit())
        .output()
        .expect("run pgbench");
    assert!(out.status.success(), "{} failed", cmd.display());
    let text = String::from_utf8_lossy(&out.stdout);
    let dir = PathBuf::from(text.lines().last().expect("a directory").trim());
    let r = pg_run(&dir);
    println!(
        "  run {run} pgbench -N  {:>9.0} tx/s       p50 {:>6.2} ms  p99 {:>6.2} ms",
        r.tps, r.p50_ms, r.p99_ms
    );
    dir
}

fn machine() {
    let cpu = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpu
        .lines()
        .find_map(|l| l.strip_prefix("model name")?.split(':').nth(1))
        .unwrap_or("?")
        .trim()
        .to_owned();
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!(
        "machine: {} CPUs ({model}), load average {}",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        load.split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" ")
    );
}

fn main() {
    let o = parse_opts();
    machine();
    let server = Server::start(o.server.as_deref());
    println!(
        "warren serve on {} (default durable file log), {} clients, {} counters each, window {}, {} s measured after {} s warm-up, {} runs per shape",
        server.addr, o.clients, o.docs, o.window, o.secs, o.warmup, o.reps
    );
    // The clients get their own runtime with two threads, as pgbench gets `-j 2`.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let url = server.url();
    let mut conns: Vec<Conn> = rt.block_on(async {
        let mut conns = Vec::new();
        for i in 0..o.clients {
            conns.push(Conn::open(&url, i, o.docs).await);
        }
        let tasks: Vec<_> = conns.into_iter().map(|c| tokio::spawn(setup(c))).collect();
        let mut out = Vec::new();
        for t in tasks {
            out.push(t.await.unwrap());
        }
        out
    });
    let mut results: Vec<(Shape, Vec<Run>)> = o.shapes.iter().map(|s| (*s, Vec::new())).collect();
    let mut pg_dirs = o.pg.clone();
    for rep in 0..o.reps {
        // pgbench runs between Warren's runs, so that both see the same machine.
        if let Some(cmd) = &o.pg_run {
            pg_dirs.push(run_pgbench(cmd, rep + 1));
        }
        for (shape, runs) in results.iter_mut() {
            let before = server.metrics();
            let from = Instant::now() + Duration::from_secs_f64(o.warmup);
            let w = Window {
                from,
                to: from + Duration::from_secs_f64(o.secs),
            };
            let shape = *shape;
            let window = o.window;
            let (back, lat) = rt.block_on(async {
                let tasks: Vec<_> = conns
                    .drain(..)
                    .map(|c| {
                        tokio::spawn(async move {
                            match shape {
                                Shape::Closed => closed_loop(c, w).await,
                                Shape::Pipelined => pipelined(c, w, window).await,
                            }
                        })
                    })
                    .collect();
                let mut back = Vec::new();
                let mut lat = Vec::new();
                for t in tasks {
                    let (c, t) = t.await.unwrap();
                    back.push(c);
                    lat.extend(t.latencies);
                }
                (back, lat)
            });
            conns = back;
            let after = server.metrics();
            let r = run_of(lat, o.secs);
            let batches = after.batches - before.batches;
            let per = |x: f64| if batches > 0.0 { x / batches } else { 0.0 };
            println!(
                "  run {} {:<11} {:>9.0} commits/s  p50 {:>6.2} ms  p99 {:>6.2} ms   server: {:.0} commits/batch, log append+fsync {:.2} ms/batch, apply {:.2} ms/batch",
                rep + 1,
                shape.name(),
                r.tps,
                r.p50_ms,
                r.p99_ms,
                per(after.batch_commits - before.batch_commits),
                per(after.fsync_secs - before.fsync_secs) * 1e3,
                per(after.apply_secs - before.apply_secs) * 1e3,
            );
            runs.push(r);
        }
    }
    rt.block_on(check(&url, &conns));
    let total: i64 = conns.iter().flat_map(|c| c.bumps.iter()).sum();
    println!("checked: every counter on the server equals its committed bumps ({total} commits)");
    drop(conns);
    drop(server);

    let pg: Vec<Run> = pg_dirs.iter().map(|d| pg_run(d)).collect();
    let pg = (!pg.is_empty()).then(|| median_run(&pg));
    println!();
    println!("| system | shape | commits/s | p50 | p99 | ×PG commits/s | p99 vs PG |");
    println!("|---|---|---:|---:|---:|---:|---:|");
    if let Some(pg) = pg {
        println!(
            "| PostgreSQL 15, `pgbench -N -c {}` | closed loop | {:.0} | {:.2} ms | {:.2} ms | 1.0× | 1.00 |",
            o.clients, pg.tps, pg.p50_ms, pg.p99_ms
        );
    }
    for (shape, runs) in &results {
        let m = median_run(runs);
        let (ratio, p99) = match pg {
            Some(pg) => (
                format!("{:.1}×", m.tps / pg.tps),
                format!("{:.2}", m.p99_ms / pg.p99_ms),
            ),
            None => ("-".into(), "-".into()),
        };
        let what = match shape {
            Shape::Closed => format!("{} clients, 1 in flight each", o.clients),
            Shape::Pipelined => format!("{} clients, ≤{} in flight each", o.clients, o.window),
        };
        println!(
            "| Warren, {what} | {} | {:.0} | {:.2} ms | {:.2} ms | {ratio} | {p99} |",
            shape.name(),
            m.tps,
            m.p50_ms,
            m.p99_ms
        );
    }
    println!("(medians of {} runs each)", o.reps);
}
