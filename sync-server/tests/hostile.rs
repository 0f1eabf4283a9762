//! Hostile clients against a real `warren serve` process, over real sockets.
//!
//! While a well-behaved client commits (and must get every outcome in time), the test
//! throws at the server: a flood of connections that never say `Hello` (only so many
//! may wait for one, the oldest make room, none takes a sync slot), more connections
//! for one identity than it
//! may hold, oversized frames, 10,000 random and mutated frames (seeded; the seed is
//! printed, `WARREN_HOSTILE_SEED=<n>` replays it), and clients that never read while
//! the server pushes large effects to them. Then it checks:
//!
//! - the server stayed up, and every hostile frame got a clear answer (an `Error`
//!   frame with a known code, or a normal answer);
//! - its memory stayed bounded (resident set size from `/proc/<pid>/status`, sampled
//!   throughout);
//! - the well-behaved client kept working on one connection, every commit confirmed;
//! - the data is untouched: after a SIGTERM (with non-reading clients still
//!   connected, which must not hold the stop up) the store's position is exactly the
//!   well-behaved client's commit count (no hostile frame reached the log) and its
//!   digest is what executing those commits alone gives.
//!
//! Mutated frames that still decode as a `Push` of commits are not sent after `Hello`:
//! they would be real commits (and the digest check would then need to know them).
//! What a valid commit can do is the executor's business, tested with hostile input in
//! `wasm-core/tests/hostile.rs`.

mod serving;

use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;
use warren_core::eval::Limits;
use warren_core::exec::{Commit, Executor, Op};
use warren_core::protocol::{codes, ClientCommit, ClientFrame, ServerFrame};
use warren_core::storage::MemoryStore;
use warren_core::testing::Rng;
use warren_core::value::obj;
use warren_core::{Schema, Value};
use warren_server::auth;
use warren_server::client::{Client, ClientOptions};
use warren_server::gateway::scoped_client_id;

const SECRET: &str = "hostile-test-secret-0123456789abcdef";

const SCHEMA: &str = r#"
collection Note {
  partition "user:" + doc.owner
  allow read   partition == "user:" + auth.sub
  allow create doc.owner == auth.sub
  allow update old.owner == auth.sub
}

function put(id, body) {
  let n = Note.byId(id) ?? Note.create({ id, owner: auth.sub, body: "" })
  n.update({ body })
}
"#;

/// The body of the well-behaved client's commit `seq`: large, so that every commit
/// is a large `Effects` frame for each connection of the same user.
const BODY_BYTES: usize = 60_000;
/// Outgoing bytes queued per connection (the server is started with it).
const CONN_QUEUE_BYTES: usize = 1 << 20;
/// Clients that never read, at a time.
const SINKS: usize = 6;
/// How much the server's resident memory may grow over its warmed-up size. Measured:
/// 55 to 70 MiB with the byte bound on connection queues (the store's cache grows
/// with the well-behaved client's writes, more in a slower, longer run), over 150 MiB
/// in a 20 s run without it (each sink could then hold 4,096 frames of 60 KB).
const RSS_GROWTH_LIMIT_KIB: u64 = 120 * 1024;
const MUTATED_FRAMES: usize = 10_000;
const WORKERS: usize = 8;

fn args_of(seq: u64) -> (String, Value) {
    let id = format!("n{}", seq % 8);
    let mut body = format!("{seq}:");
    body.push_str(&"x".repeat(BODY_BYTES));
    (id.clone(), obj([("id", id.into()), ("body", body.into())]))
}

fn token(sub: &str) -> String {
    auth::mint_hs256(SECRET, &auth::dev_claims(sub, 3600, None, None)).unwrap()
}

struct Server {
    child: Child,
    addr: String,
    dir: std::path::PathBuf,
}

impl Server {
    fn start(dir: &std::path::Path, extra: &[&str]) -> Server {
        let schema = dir.join("schema.warren");
        std::fs::write(&schema, SCHEMA).unwrap();
        let mut child = Command::new(env!("CARGO_BIN_EXE_warren"))
            .args(["serve", "--listen", "127.0.0.1:0", "--hs256-secret", SECRET])
            .arg("--data-dir")
            .arg(dir.join("data"))
            .arg("--schema")
            .arg(&schema)
            .args(extra)
            .env("WARREN_LOG", "warn")
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let addr = serving::serving_addr(&mut child)
            .unwrap_or_else(|line| panic!("no address in {line:?}"));
        Server {
            child,
            addr,
            dir: dir.to_path_buf(),
        }
    }

    fn url(&self) -> String {
        format!("ws://{}/v1/sync", self.addr)
    }

    fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .unwrap_or_default();
        status
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

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

enum Next {
    Frame(ServerFrame),
    Closed,
    Timeout,
}

async fn next(ws: &mut Ws, timeout: Duration) -> Next {
    loop {
        match tokio::time::timeout(timeout, ws.next()).await {
            Err(_) => return Next::Timeout,
            Ok(None) | Ok(Some(Err(_))) => return Next::Closed,
            Ok(Some(Ok(Message::Binary(b)))) => {
                let mut frames = ServerFrame::decode_message(&b).unwrap_or_else(|e| {
                    panic!("the server sent a message that does not decode: {e}")
                });
                // What this test waits for is a message's first frame: a `Welcome`
                // leads what follows it (its snapshots may share its batch), and an
                // `Error` always comes alone.
                return Next::Frame(frames.remove(0));
            }
            Ok(Some(Ok(Message::Close(_)))) => return Next::Closed,
            Ok(Some(Ok(_))) => continue,
        }
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

/// Every code an `Error` frame may carry: the protocol's and the token's.
fn known_code(code: &str) -> bool {
    codes::ALL.contains(&code) || code.starts_with("TOKEN_") || code == "AUTH_CONFIG"
}

/// Valid frames to mutate.
fn seeds() -> Vec<Vec<u8>> {
    let commit = |seq, op| ClientCommit {
        seq,
        schema_version: "3f9a".into(),
        op,
    };
    vec![
        hello("seed-client", "mallory-seed").encode(),
        ClientFrame::Hello {
            client_id: "c".into(),
            token: "x.y.z".into(),
            schema_version: "v".into(),
            outbox_from: 3,
            partitions: vec![("user:ann".into(), 42), ("team:t".into(), 7)],
        }
        .encode(),
        ClientFrame::Push {
            commits: vec![
                commit(
                    1,
                    Op::Call {
                        function: "put".into(),
                        args: obj([
                            ("id", "a".into()),
                            (
                                "body",
                                Value::Array(vec![Value::Float(1.5), Value::Null, true.into()]),
                            ),
                        ]),
                    },
                ),
                commit(
                    2,
                    Op::Run {
                        source: "Note.all().count()".into(),
                    },
                ),
            ],
        }
        .encode(),
        ClientFrame::Push { commits: vec![] }.encode(),
        ClientFrame::Ping { nonce: 300 }.encode(),
    ]
}

fn mutate(rng: &mut Rng, seeds: &[Vec<u8>]) -> Vec<u8> {
    if rng.chance(8) {
        // Random bytes, often behind a plausible version and type.
        let n = rng.index(64);
        let mut b: Vec<u8> = (0..n).map(|_| rng.next() as u8).collect();
        if rng.chance(50) && b.len() >= 2 {
            b[0] = 1;
            b[1] = [1u8, 2, 3, 0x81, 0x86, 0xff][rng.index(6)];
        }
        return b;
    }
    let mut b = seeds[rng.index(seeds.len())].clone();
    for _ in 0..1 + rng.index(4) {
        let len = b.len().max(1);
        match rng.index(8) {
            0 => {
                let i = rng.index(len);
                if let Some(x) = b.get_mut(i) {
                    *x ^= 1 << rng.index(8);
                }
            }
            1 => {
                let i = rng.index(len);
                if let Some(x) = b.get_mut(i) {
                    *x = [0u8, 0xff, 0x7f, 0x80, 1, rng.next() as u8][rng.index(6)];
                }
            }
            2 => {
                let at = rng.index(b.len() + 1);
                let n = 1 + rng.index(8);
                for _ in 0..n {
                    b.insert(at, rng.next() as u8);
                }
            }
            3 => {
                let at = rng.index(len);
                let n = 1 + rng.index(8);
                let end = (at + n).min(b.len());
                if at < end {
                    b.drain(at..end);
                }
            }
            4 => b.truncate(rng.index(len)),
            5 => {
                let at = rng.index(len);
                let n = rng.index(16);
                let piece: Vec<u8> = b.iter().skip(at).take(n).copied().collect();
                let to = rng.index(b.len() + 1);
                b.splice(to..to, piece);
            }
            6 => {
                let other = &seeds[rng.index(seeds.len())];
                let cut = rng.index(other.len());
                let at = rng.index(b.len() + 1);
                b.truncate(at);
                b.extend_from_slice(&other[cut..]);
            }
            _ => {
                // A huge varint where a count or a length goes.
                let at = rng.index(b.len() + 1).max(2.min(b.len()));
                let huge = [0xffu8, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01];
                b.splice(at..at, huge[rng.index(4)..].iter().copied());
            }
        }
    }
    b
}

/// Would these bytes be real commits after `Hello`?
fn is_commits(b: &[u8]) -> bool {
    matches!(ClientFrame::decode(b), Ok(ClientFrame::Push { commits }) if !commits.is_empty())
}

#[derive(Default)]
struct Tally {
    sent: AtomicU64,
    first_frames: AtomicU64,
    after_hello: AtomicU64,
    skipped_commits: AtomicU64,
    codes: Mutex<std::collections::BTreeMap<String, u64>>,
}

impl Tally {
    fn code(&self, code: &str) {
        assert!(known_code(code), "unknown error code {code:?}");
        *self
            .codes
            .lock()
            .unwrap()
            .entry(code.to_owned())
            .or_default() += 1;
    }
}

/// One worker of the mutation phase: `n` frames, as first frames of new connections
/// and after a valid `Hello` on a live one.
async fn mutation_worker(url: String, worker: usize, seed: u64, n: usize, tally: Arc<Tally>) {
    let mut rng = Rng::new(seed ^ (worker as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15));
    let seeds = seeds();
    let mut live: Option<Ws> = None;
    let mut nonce = 1u64 << 40;
    let mut sent = 0;
    while sent < n {
        let first = live.is_none() && rng.chance(40);
        let bytes = mutate(&mut rng, &seeds);
        if !first && is_commits(&bytes) {
            tally.skipped_commits.fetch_add(1, Ordering::Relaxed);
            continue;
        }
        let text = rng.chance(1);
        let msg = if text {
            Message::Text(String::from_utf8_lossy(&bytes).into_owned().into())
        } else {
            Message::Binary(bytes.into())
        };
        if first {
            let (mut ws, _) = match tokio_tungstenite::connect_async(&url).await {
                Ok(c) => c,
                Err(e) => panic!("worker {worker}: cannot connect: {e}"),
            };
            ws.send(msg).await.unwrap();
            sent += 1;
            tally.first_frames.fetch_add(1, Ordering::Relaxed);
            // A first frame gets an Error, or it was a valid Hello: Welcome.
            match next(&mut ws, Duration::from_secs(10)).await {
                Next::Frame(ServerFrame::Error { code, .. }) => tally.code(&code),
                Next::Frame(ServerFrame::Welcome { .. }) => {}
                Next::Frame(other) => panic!("a first frame was answered {other:?}"),
                Next::Closed => panic!("a first frame was answered with a close, no Error"),
                Next::Timeout => panic!("a first frame got no answer"),
            }
            continue;
        }
        let ws = match live.as_mut() {
            Some(ws) => ws,
            None => {
                let (mut ws, _) = tokio_tungstenite::connect_async(&url).await.unwrap();
                let sub = format!("mallory-{worker}-{}", rng.index(4));
                ws.send(Message::Binary(
                    hello(&format!("m{worker}"), &sub).encode().into(),
                ))
                .await
                .unwrap();
                match next(&mut ws, Duration::from_secs(10)).await {
                    Next::Frame(ServerFrame::Welcome { .. }) => {}
                    Next::Frame(ServerFrame::Error { code, .. }) => {
                        // Over its rate: another identity next time.
                        assert_eq!(code, codes::RATE_LIMITED);
                        tally.code(&code);
                        continue;
                    }
                    _ => panic!("no Welcome"),
                }
                live.insert(ws)
            }
        };
        sent += 1;
        tally.after_hello.fetch_add(1, Ordering::Relaxed);
        nonce += 1;
        let probe = Message::Binary(ClientFrame::Ping { nonce }.encode().into());
        if ws.send(msg).await.is_err() || ws.send(probe).await.is_err() {
            live = None;
            continue;
        }
        // Until the probe's Pong (still open) or an Error (then closed).
        loop {
            match next(ws, Duration::from_secs(10)).await {
                Next::Frame(ServerFrame::Pong { nonce: n }) if n == nonce => break,
                Next::Frame(ServerFrame::Error { code, .. }) => {
                    tally.code(&code);
                    live = None;
                    break;
                }
                Next::Frame(ServerFrame::Outcome { .. }) => {
                    panic!("a hostile connection got an Outcome: a commit reached the log")
                }
                Next::Frame(_) => {}
                Next::Closed => panic!("closed without an Error frame"),
                Next::Timeout => panic!("no answer to a probe after a mutated frame"),
            }
        }
    }
    tally.sent.fetch_add(sent as u64, Ordering::Relaxed);
}

/// A client of `ann` that says Hello and then never reads, for `hold`, again and
/// again until `stop`.
async fn sink_loop(url: String, i: usize, stop: Arc<AtomicBool>, hold: Duration) {
    let mut round = 0;
    while !stop.load(Ordering::Relaxed) {
        round += 1;
        let Some(mut ws) = connect_small(&url).await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let _ = ws
            .send(Message::Binary(
                hello(&format!("ann-sink-{i}-{round}"), "ann")
                    .encode()
                    .into(),
            ))
            .await;
        let until = Instant::now() + hold;
        while Instant::now() < until && !stop.load(Ordering::Relaxed) {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        drop(ws);
    }
}

/// A WebSocket with a small receive buffer, so that a client that does not read
/// stops the server's writes soon.
async fn connect_small(url: &str) -> Option<Ws> {
    let addr = url
        .trim_start_matches("ws://")
        .split('/')
        .next()?
        .to_owned();
    let socket = tokio::net::TcpSocket::new_v4().ok()?;
    socket.set_recv_buffer_size(4096).ok()?;
    let tcp = socket.connect(addr.parse().ok()?).await.ok()?;
    let (ws, _) =
        tokio_tungstenite::client_async(url, tokio_tungstenite::MaybeTlsStream::Plain(tcp))
            .await
            .ok()?;
    Some(ws)
}

async fn http_get(addr: &str, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await
    .unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).await.unwrap();
    String::from_utf8_lossy(&out).into_owned()
}

fn metric(text: &str, line_start: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(line_start))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

#[test]
fn hostile_clients_leave_the_server_and_the_data_untouched() {
    let seed: u64 = std::env::var("WARREN_HOSTILE_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
        });
    println!("hostile test seed: {seed} (replay with WARREN_HOSTILE_SEED={seed})");
    let started = Instant::now();
    let dir = std::env::temp_dir().join(format!("warren-hostile-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let conn_queue_bytes = CONN_QUEUE_BYTES.to_string();
    let mut server = Server::start(
        &dir,
        &[
            "--conn-queue-bytes",
            &conn_queue_bytes,
            "--max-connections",
            "120",
            "--max-pending-hellos",
            "100",
            "--max-connections-per-identity",
            "8",
            "--hello-timeout-secs",
            "2",
            "--write-timeout-secs",
            "3",
            // The well-behaved client writes large commits as fast as it may: on a
            // loaded machine the region-time budget (hostile_fairness.rs tests it)
            // slowed it so much that the sinks were sent too little to be dropped.
            "--cost-ms-per-sec",
            "0",
        ],
    );
    let url = server.url();
    let addr = server.addr.clone();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();

    // The well-behaved client, connected first, committing throughout.
    let mut o = ClientOptions::new(&url, &token("ann"), "ann-good");
    o.auth = obj([("sub", "ann".into())]);
    o.seed = seed;
    let good = rt.block_on(async { Client::start(o).unwrap() });
    assert!(rt.block_on(good.wait_until(Duration::from_secs(20), |r| r.schema().is_some())));
    let stop = Arc::new(AtomicBool::new(false));
    let committed = Arc::new(AtomicU64::new(0));
    let slowest = Arc::new(Mutex::new(Duration::ZERO));
    let good = Arc::new(good);
    let good_task = {
        let (good, stop, committed, slowest) = (
            good.clone(),
            stop.clone(),
            committed.clone(),
            slowest.clone(),
        );
        rt.spawn(async move {
            let mut seq = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let t = Instant::now();
                for _ in 0..4 {
                    seq += 1;
                    let (_, args) = args_of(seq);
                    good.call("put", args).unwrap();
                }
                assert!(
                    good.wait_synced(Duration::from_secs(15)).await,
                    "the well-behaved client's commits up to {seq} were not confirmed in 15 s"
                );
                let took = t.elapsed();
                {
                    let mut s = slowest.lock().unwrap();
                    *s = (*s).max(took);
                }
                committed.store(seq, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
    };
    // Warm up, then take the baseline.
    while committed.load(Ordering::Relaxed) < 20 {
        std::thread::sleep(Duration::from_millis(20));
    }
    let baseline = server.rss_kib();
    let peak = Arc::new(AtomicU64::new(baseline));
    let sampler_stop = Arc::new(AtomicBool::new(false));
    let sampler = {
        let (peak, sampler_stop) = (peak.clone(), sampler_stop.clone());
        let pid = server.child.id();
        std::thread::spawn(move || {
            while !sampler_stop.load(Ordering::Relaxed) {
                let status =
                    std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
                if let Some(kib) = status
                    .lines()
                    .find_map(|l| l.strip_prefix("VmRSS:"))
                    .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
                {
                    peak.fetch_max(kib, Ordering::Relaxed);
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        })
    };
    // Clients that never read, reconnecting every few seconds.
    let sinks: Vec<_> = (0..SINKS)
        .map(|i| {
            rt.spawn(sink_loop(
                url.clone(),
                i,
                stop.clone(),
                Duration::from_secs(4),
            ))
        })
        .collect();

    rt.block_on(async {
        // 1. A flood of connections that never say Hello: only 100 may wait for their
        //    Hello at once (a newcomer closes the oldest), each for 2 s at most; none
        //    takes a sync slot.
        //    Each connection is watched from its own connect, so that how long the 150
        //    connects take (a busy machine) does not count against the early closes.
        let mut held = Vec::new();
        for _ in 0..150 {
            let (mut ws, _) = tokio_tungstenite::connect_async(&url).await.expect("upgraded");
            let t = Instant::now();
            held.push(tokio::spawn(async move {
                match next(&mut ws, Duration::from_secs(6)).await {
                    Next::Closed => t.elapsed(),
                    _ => panic!("a connection without Hello outlived the Hello timeout"),
                }
            }));
        }
        let mut closed_early = 0;
        for lived in held {
            if lived.await.unwrap() < Duration::from_millis(1500) {
                closed_early += 1;
            }
        }
        assert!(closed_early >= 50, "only {closed_early} pushed out by newer ones");

        // 2. More connections for one identity than it may hold (8).
        let mut conns = Vec::new();
        let (mut welcomed, mut over) = (0, 0);
        for i in 0..12 {
            let (mut ws, _) = tokio_tungstenite::connect_async(&url).await.unwrap();
            ws.send(Message::Binary(hello(&format!("flood-{i}"), "mallory-flood").encode().into()))
                .await
                .unwrap();
            match next(&mut ws, Duration::from_secs(10)).await {
                Next::Frame(ServerFrame::Welcome { .. }) => welcomed += 1,
                Next::Frame(ServerFrame::Error { code, .. }) => {
                    assert_eq!(code, codes::TOO_MANY_CONNECTIONS);
                    over += 1;
                }
                _ => panic!("no answer to Hello"),
            }
            conns.push(ws);
        }
        assert_eq!((welcomed, over), (8, 4));
        drop(conns);

        // 3. Oversized frames, before and after Hello: FRAME_TOO_LARGE, then closed.
        for after_hello in [false, true] {
            let (mut ws, _) = tokio_tungstenite::connect_async(&url).await.unwrap();
            if after_hello {
                ws.send(Message::Binary(hello("big", "mallory-big").encode().into()))
                    .await
                    .unwrap();
            }
            let _ = ws.send(Message::Binary(vec![1u8; (1 << 20) + 1].into())).await;
            let mut got = None;
            loop {
                match next(&mut ws, Duration::from_secs(10)).await {
                    Next::Frame(ServerFrame::Error { code, .. }) => {
                        got = Some(code);
                        break;
                    }
                    Next::Frame(_) => {}
                    _ => break,
                }
            }
            assert_eq!(got.as_deref(), Some(codes::FRAME_TOO_LARGE));
        }

        // 4. Random and mutated frames.
        let tally = Arc::new(Tally::default());
        let workers: Vec<_> = (0..WORKERS)
            .map(|w| {
                tokio::spawn(mutation_worker(
                    url.clone(),
                    w,
                    seed,
                    MUTATED_FRAMES / WORKERS,
                    tally.clone(),
                ))
            })
            .collect();
        for w in workers {
            w.await.unwrap();
        }
        println!(
            "mutated frames: {} sent ({} as first frames, {} after Hello; {} that decoded as commits not sent); errors: {:?}",
            tally.sent.load(Ordering::Relaxed),
            tally.first_frames.load(Ordering::Relaxed),
            tally.after_hello.load(Ordering::Relaxed),
            tally.skipped_commits.load(Ordering::Relaxed),
            tally.codes.lock().unwrap()
        );
        assert_eq!(tally.sent.load(Ordering::Relaxed), MUTATED_FRAMES as u64);
        assert!(tally.codes.lock().unwrap().get(codes::BAD_FRAME).copied().unwrap_or(0) > 100);
    });
    assert!(server.alive(), "the server died");

    // Keep the pressure a little longer, then stop the well-behaved client.
    std::thread::sleep(Duration::from_secs(2));
    stop.store(true, Ordering::Relaxed);
    rt.block_on(good_task).unwrap();
    for s in sinks {
        rt.block_on(s).unwrap();
    }
    let commits = committed.load(Ordering::Relaxed);
    assert!(
        good.connects() == 1,
        "the well-behaved client was disconnected"
    );
    assert!(!good
        .received()
        .iter()
        .any(|f| matches!(f, ServerFrame::Error { .. })));
    let metrics = rt.block_on(http_get(&addr, "/metrics"));
    let too_slow = metric(&metrics, "warren_errors_sent_total{code=\"TOO_SLOW\"}");
    assert!(too_slow > 0, "no sink was dropped as too slow:\n{metrics}");
    assert!(
        metric(
            &metrics,
            "warren_connections_refused_total{code=\"TOO_MANY_CONNECTIONS\"}"
        ) > 0
    );
    // The connections were all logged in or closed: none is left unauthenticated
    // but the ones that are still closing.
    assert!(
        metric(
            &metrics,
            "warren_tcp_connections{state=\"unauthenticated\"}"
        ) < 20,
        "{metrics}"
    );

    // A client that never reads is connected while the server stops: the stop must
    // not wait for it.
    let stuck = rt.block_on(async {
        let (mut ws, _) = tokio_tungstenite::connect_async(&url).await.unwrap();
        ws.send(Message::Binary(hello("ann-stuck", "ann").encode().into()))
            .await
            .unwrap();
        ws
    });
    sampler_stop.store(true, Ordering::Relaxed);
    sampler.join().unwrap();
    let peak = peak.load(Ordering::Relaxed);
    println!(
        "{commits} commits by the well-behaved client, slowest confirmation {:?}; server RSS {baseline} KiB at the start, {peak} KiB at the peak; {} sinks dropped as too slow",
        slowest.lock().unwrap(),
        too_slow
    );
    assert!(
        peak.saturating_sub(baseline) < RSS_GROWTH_LIMIT_KIB,
        "the server's memory grew by {} KiB",
        peak - baseline
    );

    let t = Instant::now();
    assert!(Command::new("kill")
        .args(["-TERM", &server.child.id().to_string()])
        .status()
        .unwrap()
        .success());
    let status = loop {
        if let Some(s) = server.child.try_wait().unwrap() {
            break s;
        }
        assert!(
            t.elapsed() < Duration::from_secs(15),
            "the server did not stop within 15 s of SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "{status:?}");
    drop(stuck);

    // The data: exactly the well-behaved client's commits, nothing else.
    let store =
        warren_server::store::RedbStore::open(&dir.join("data").join("state.redb"), 1).unwrap();
    let position = warren_core::exec::position(&store).unwrap();
    let digest = warren_core::exec::digest(&store).unwrap();
    assert_eq!(position, commits, "hostile traffic reached the log");
    let auth = obj([("sub", "ann".into())]);
    let mut ex = Executor::new(
        MemoryStore::new(),
        Arc::new(Schema::parse(SCHEMA).unwrap()),
        Limits::default(),
    );
    for seq in 1..=commits {
        let (_, args) = args_of(seq);
        let c = Commit {
            client_id: scoped_client_id(&auth, "ann-good"),
            client_seq: seq,
            schema_version: String::new(),
            timestamp: 0,
            auth: auth.clone(),
            op: Op::Call {
                function: "put".into(),
                args,
            },
        };
        ex.commit(&c, seq).unwrap();
    }
    assert_eq!(
        digest,
        ex.digest().unwrap(),
        "the state is not the well-behaved client's alone"
    );
    println!("hostile test took {:?}", started.elapsed());
}
