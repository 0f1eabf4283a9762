//! `kill -9` of the real `warren serve` process while eight native clients push over
//! real sockets, round after round.
//!
//! Each round waits until the clients got new acknowledgements from the server, lets
//! a seeded random moment pass, and kills the server (SIGKILL). With the server dead,
//! a copy of its data directory (what the restarted server will find) is checked:
//! the log opens (a torn tail is cut), the region store's position is within the log
//! and its digest is the digest replaying the log gives at that position, and the
//! server's own recovery (replaying the log into the store) reaches exactly the
//! replay's state and digest at the log's end. Then the server is started again on
//! the original directory, its first pull already holds every commit acknowledged
//! before the kill (it serves while it replays its log: a pull answered from its store
//! alone was found here, at position 0 after 714 acknowledged), and the clients
//! reconnect, are welcomed no earlier than that (a welcome at 442 after 1,348 was
//! found too), and resend what is unconfirmed.
//!
//! At the end the clients drain their outboxes, the server stops gracefully, and:
//! every commit a client saw acknowledged is in the log, at the position the
//! acknowledgement gave, exactly once; every commit any client made is (they all were
//! acknowledged by then); the counters count each `bump` once; and the store is the
//! log's replay, entry for entry.
//!
//! `WARREN_CRASH_ROUNDS` (default 20) sets the rounds, `WARREN_CRASH_SEED` replays a
//! run: `WARREN_CRASH_ROUNDS=500 cargo test --release -p warren-server --test crash`.

mod replay;
mod serving;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use replay::{assert_same_state, Replay, Rng, SCHEMA};
use warren_core::eval::Limits;
use warren_core::protocol::{CommitResult, ServerFrame};
use warren_core::replica::Event;
use warren_core::value::obj;
use warren_core::Schema;
use warren_server::auth;
use warren_server::client::{Client, ClientOptions};
use warren_server::gateway::scoped_client_id;
use warren_server::log::{FileLog, FileLogOptions, Log, HEADER_LEN};
use warren_server::metrics::Metrics;
use warren_server::region::{self, Region, RegionMsg};
use warren_server::sequencer::{self, Backlog};
use warren_server::store::RedbStore;

const SECRET: &str = "crash-test-secret-0123456789abcdef";
const CLIENTS: usize = 8;
/// A client makes a new commit only while fewer than this many are unconfirmed.
const MAX_PENDING: usize = 8;
const WAIT: Duration = Duration::from_secs(30);

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Starts `warren serve` and waits for the line saying it serves.
fn serve(dir: &Path, port: u16, store_sync_every: u32) -> Child {
    for _ in 0..50 {
        let mut child = Command::new(env!("CARGO_BIN_EXE_warren"))
            .current_dir(dir)
            .args(["serve", "--listen", &format!("127.0.0.1:{port}")])
            .arg("--data-dir")
            .arg(dir.join("data"))
            .arg("--schema")
            .arg(dir.join("schema.warren"))
            .args(["--store-sync-every", &store_sync_every.to_string()])
            .env("WARREN_HS256_SECRET", SECRET)
            .env("WARREN_LOG", "error")
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn warren serve");
        if serving::serving_addr(&mut child).is_ok() {
            return child;
        }
        // The port may not be free yet; anything else is a failure to recover.
        let status = child.wait().unwrap();
        assert_eq!(
            status.code(),
            Some(2),
            "warren serve failed to start: {status:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("warren serve could not listen on port {port}");
}

/// Every `Welcome` a client received after `marks` (its frames before the restart) is
/// at or after `acked`, the highest position acknowledged before the kill: the
/// restarted server welcomes no one from its store alone while it replays its log.
fn check_welcomes(clients: &[Arc<Client>], marks: &[usize], acked: u64, round: u32) {
    for (i, (c, &mark)) in clients.iter().zip(marks).enumerate() {
        for f in &c.received()[mark..] {
            if let ServerFrame::Welcome { position, .. } = f {
                assert!(
                    *position >= acked,
                    "round {round}: {} was welcomed at position {position} after the \
                     restart, before the acknowledged {acked}",
                    client_id(i)
                );
            }
        }
    }
}

/// The position of a `POST /v1/pull`'s answer (client 0's token).
fn pulled_position(port: u16) -> u64 {
    let id = client_id(0);
    let token = auth::mint_hs256(SECRET, &auth::dev_claims(&id, 3600, None, None)).unwrap();
    let mut r = ureq::post(format!("http://127.0.0.1:{port}/v1/pull"))
        .header("authorization", format!("Bearer {token}"))
        .send("{}")
        .expect("the pull");
    let body: serde_json::Value =
        serde_json::from_str(&r.body_mut().read_to_string().unwrap()).unwrap();
    body["position"].as_u64().expect("a position")
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let target = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &target);
        } else {
            std::fs::copy(e.path(), &target).unwrap();
        }
    }
}

/// Cuts the last log segment of each data directory (copies of one another) at one
/// random offset after the frame of position `keep`; returns the bytes cut.
fn cut_tail(data: &[&Path], keep: u64, rng: &mut Rng) -> u64 {
    let log = data[0].join("log");
    let mut segments: Vec<PathBuf> = std::fs::read_dir(&log)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "wlog"))
        .collect();
    segments.sort();
    let last = segments.pop().unwrap();
    let first: u64 = last.file_stem().unwrap().to_str().unwrap().parse().unwrap();
    let bytes = std::fs::read(&last).unwrap();
    let (mut at, mut position) = (HEADER_LEN as usize, first);
    while position <= keep && at + 8 <= bytes.len() {
        let len = u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap()) as usize;
        at += 8 + len;
        position += 1;
    }
    let at = at.min(bytes.len()) as u64;
    let cut = at + rng.below(bytes.len() as u64 - at + 1);
    for d in data {
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(d.join("log").join(last.file_name().unwrap()))
            .unwrap();
        f.set_len(cut).unwrap();
    }
    bytes.len() as u64 - cut
}

/// What the clients saw acknowledged: (client, seq) → position (`None`: acknowledged
/// without one, its outcome no longer kept).
type Acks = BTreeMap<(String, u64), Option<u64>>;

fn collect_acks(clients: &[Arc<Client>], acks: &mut Acks) -> usize {
    let mut new = 0;
    for (i, c) in clients.iter().enumerate() {
        for e in c.take_events() {
            match e {
                Event::Confirmed { seq, position, .. } => {
                    let before = acks.insert((logged_id(i), seq), position);
                    assert!(
                        before.is_none() || before == Some(position),
                        "{} {seq}: acknowledged at {before:?}, then at {position:?}",
                        client_id(i)
                    );
                    new += 1;
                }
                Event::Rejected { seq, code, message } => {
                    panic!("{} {seq} rejected: {code}: {message}", client_id(i))
                }
                _ => {}
            }
        }
    }
    new
}

fn client_id(i: usize) -> String {
    format!("c{i}")
}

/// The client id as the log holds it (the gateway scopes it by the user).
fn logged_id(i: usize) -> String {
    let id = client_id(i);
    scoped_client_id(&obj([("sub", id.as_str().into())]), &id)
}

#[test]
fn kill_9_while_eight_clients_push() {
    let rounds: u32 = std::env::var("WARREN_CRASH_ROUNDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20);
    let seed = replay::seed("WARREN_CRASH_SEED");
    let mut rng = Rng(seed);
    let dir = std::env::temp_dir().join(format!("warren-crash-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("schema.warren"), SCHEMA).unwrap();
    let data = dir.join("data");
    let schema = Arc::new(Schema::parse(SCHEMA).unwrap());
    let port = free_port();
    let started = Instant::now();

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let mut server = serve(&dir, port, 1 + rng.below(64) as u32);
    let stop = Arc::new(AtomicBool::new(false));
    let clients: Vec<Arc<Client>> = (0..CLIENTS)
        .map(|i| {
            let id = client_id(i);
            let token = auth::mint_hs256(SECRET, &auth::dev_claims(&id, 3600, None, None)).unwrap();
            let mut o = ClientOptions::new(&format!("ws://127.0.0.1:{port}/v1/sync"), &token, &id);
            o.auth = obj([("sub", id.as_str().into())]);
            o.schema = Some(SCHEMA.to_owned());
            o.backoff_min = Duration::from_millis(10);
            o.backoff_max = Duration::from_millis(200);
            o.seed = seed.wrapping_add(i as u64);
            let _guard = rt.enter();
            Arc::new(Client::start(o).unwrap())
        })
        .collect();
    // Each client pushes continuously: a counter bump, then a new note, and so on.
    let pushers: Vec<_> = clients
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let (c, stop) = (c.clone(), stop.clone());
            rt.spawn(async move {
                let mut n = 0u64;
                let mut last_seq = 0;
                while !stop.load(Ordering::Relaxed) {
                    if c.replica().pending().len() >= MAX_PENDING {
                        c.wait_until(Duration::from_millis(50), |r| {
                            r.pending().len() < MAX_PENDING
                        })
                        .await;
                        continue;
                    }
                    n += 1;
                    let id = client_id(i);
                    let r = if n % 2 == 1 {
                        c.call("bump", obj([("id", id.as_str().into())]))
                    } else {
                        c.call(
                            "note",
                            obj([
                                ("id", format!("{id}-{n}").into()),
                                ("text", "x".repeat((n % 50) as usize).into()),
                            ]),
                        )
                    };
                    last_seq = r.unwrap().seq;
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
                last_seq
            })
        })
        .collect();

    let mut acks = Acks::new();
    let mut replay = Replay::new(SCHEMA);
    // Since the last restart: the frames each client had received before it, and the
    // highest position acknowledged before the kill.
    let mut since_restart: Option<(Vec<usize>, u64)> = None;
    for round in 0..rounds {
        // Wait for new acknowledgements (the restarted server serves), then a random
        // moment more, then kill it.
        let deadline = Instant::now() + WAIT;
        let mut new = 0;
        while new < CLIENTS {
            assert!(
                Instant::now() < deadline,
                "round {round}: no acknowledgements from the restarted server"
            );
            std::thread::sleep(Duration::from_millis(5));
            new += collect_acks(&clients, &mut acks);
        }
        if let Some((marks, acked)) = since_restart.take() {
            check_welcomes(&clients, &marks, acked, round);
        }
        std::thread::sleep(Duration::from_millis(rng.below(150)));
        server.kill().unwrap(); // SIGKILL
        server.wait().unwrap();
        // Every frame sent before the kill has been handled once the client noticed
        // (nothing notifies a disconnection: poll).
        let deadline = Instant::now() + WAIT;
        while clients.iter().any(|c| c.replica().is_connected()) {
            assert!(
                Instant::now() < deadline,
                "round {round}: a client missed the kill"
            );
            std::thread::sleep(Duration::from_millis(2));
        }
        collect_acks(&clients, &mut acks);

        // What the restarted server will find, checked on a copy.
        let copy = dir.join(format!("copy-{round}"));
        copy_dir(&data, &copy);
        // A power loss, one round in three: the log loses some of what it may not
        // have synced yet (nothing acknowledged, nothing the store holds, nothing
        // before a record a previous round saw durable).
        if rng.below(3) == 0 {
            let store = RedbStore::open(&copy.join("state.redb"), 64).unwrap();
            let applied = warren_core::exec::position(&store).unwrap();
            drop(store);
            let acked = acks.values().flatten().max().copied().unwrap_or(0);
            let keep = applied.max(acked).max(replay.position());
            let cut = cut_tail(&[&data, &copy], keep, &mut rng);
            eprintln!(
                "round {round}: power loss: {cut} bytes of the log after position {keep} lost"
            );
            // The store was opened (and repaired) in the copy only: start over.
            let _ = std::fs::remove_file(copy.join("state.redb"));
            std::fs::copy(data.join("state.redb"), copy.join("state.redb")).unwrap();
        }
        check_crashed(&copy, &schema, &mut replay, &acks, round);
        let _ = std::fs::remove_dir_all(&copy);

        server = serve(&dir, port, 1 + rng.below(64) as u32);
        // The restarted server's first read already holds every commit acknowledged
        // before the kill, though it serves while it replays the log into its store.
        let acked = acks.values().flatten().max().copied().unwrap_or(0);
        since_restart = Some((clients.iter().map(|c| c.received().len()).collect(), acked));
        let position = pulled_position(port);
        assert!(
            position >= acked,
            "round {round}: the first pull after the restart answered at position \
             {position}, before the acknowledged {acked}"
        );
    }

    // Drain: stop making commits, wait until every client's outbox is confirmed.
    stop.store(true, Ordering::Relaxed);
    let made: Vec<u64> = rt.block_on(async {
        let mut made = Vec::new();
        for p in pushers {
            made.push(p.await.unwrap());
        }
        for (i, c) in clients.iter().enumerate() {
            assert!(
                c.wait_synced(WAIT).await,
                "{} still has unconfirmed commits",
                client_id(i)
            );
        }
        made
    });
    collect_acks(&clients, &mut acks);
    if let Some((marks, acked)) = since_restart.take() {
        check_welcomes(&clients, &marks, acked, rounds);
    }
    let status = Command::new("kill")
        .args(["-TERM", &server.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let status = server.wait().unwrap();
    assert!(status.success(), "graceful stop: {status:?}");

    // The final log and store, replayed from scratch.
    let (log, _) = FileLog::open(data.join("log"), FileLogOptions::default()).unwrap();
    let mut fresh = Replay::new(SCHEMA);
    fresh.catch_up(&log);
    assert_eq!(
        &fresh.digests[..replay.digests.len()],
        &replay.digests[..],
        "the log changed under positions already replayed"
    );
    check_acks(&fresh, &acks);
    // Every commit any client made was acknowledged by now.
    for (i, c) in clients.iter().enumerate() {
        let id = logged_id(i);
        for seq in 1..=made[i] {
            assert!(
                acks.contains_key(&(id.clone(), seq)),
                "{id} {seq} was never acknowledged"
            );
        }
        // Every Outcome frame the client ever received agrees with the log.
        for f in c.received() {
            if let ServerFrame::Outcome {
                seq,
                result: CommitResult::Committed { position, .. },
            } = f
            {
                assert!(
                    fresh.committed_at(&id, seq, position),
                    "{id} {seq}: an outcome said position {position}"
                );
            }
        }
    }
    let store = RedbStore::open(&data.join("state.redb"), 1).unwrap();
    assert_same_state(&store, &fresh, "after the last round");
    eprintln!(
        "{rounds} rounds, {} log entries, {} acknowledged commits, in {:?}",
        fresh.position(),
        acks.len(),
        started.elapsed()
    );
    drop(store);
    let _ = std::fs::remove_dir_all(&dir);
}

/// The checks on a crashed server's data (a copy): the log opens; the store's
/// position is within it and its digest is the replay's there; the server's recovery
/// reaches the replay's state; the acknowledgements so far are in the log.
fn check_crashed(data: &Path, schema: &Arc<Schema>, replay: &mut Replay, acks: &Acks, round: u32) {
    let context = format!("round {round}");
    let (log, recovery) = FileLog::open(data.join("log"), FileLogOptions::default())
        .unwrap_or_else(|e| panic!("{context}: the log does not open after kill -9: {e}"));
    assert!(
        log.last_position() >= replay.position(),
        "{context}: the log lost records it held before ({} < {})",
        log.last_position(),
        replay.position()
    );
    replay.catch_up(&log);
    let store = RedbStore::open(&data.join("state.redb"), 64)
        .unwrap_or_else(|e| panic!("{context}: the store does not open after kill -9: {e}"));
    let position = warren_core::exec::position(&store).unwrap();
    assert!(
        position <= log.last_position(),
        "{context}: the store is at {position}, past the log's end {}",
        log.last_position()
    );
    assert_eq!(
        warren_core::exec::digest(&store).unwrap(),
        replay.digests[position as usize],
        "{context}: the store's digest at position {position} is not the log's"
    );
    let region = Region::new(
        store,
        schema.clone(),
        Limits::default(),
        Arc::new(Metrics::default()),
    )
    .unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let thread = region::spawn(region, rx);
    sequencer::replay(&log, position, &tx, &Backlog::new(8192, 64 << 20)).unwrap();
    tx.send(RegionMsg::Stop).unwrap();
    thread.join().unwrap().unwrap();
    let store = RedbStore::open(&data.join("state.redb"), 1).unwrap();
    assert_same_state(&store, replay, &context);
    check_acks(replay, acks);
    eprintln!(
        "{context}: log at {} (torn tail {} bytes), store at {position}",
        log.last_position(),
        recovery.truncated_bytes
    );
}

/// Every acknowledgement is in the log where it said; nothing took effect twice.
fn check_acks(replay: &Replay, acks: &Acks) {
    for ((client, seq), position) in acks {
        match position {
            Some(p) => assert!(
                replay.committed_at(client, *seq, *p),
                "acknowledged ({client}, {seq}) at position {p} is not there: {:?}",
                replay.entries.get(*p as usize - 1)
            ),
            None => assert!(
                replay
                    .entries
                    .iter()
                    .any(|e| e.committed && &e.client_id == client && e.client_seq == *seq),
                "acknowledged ({client}, {seq}) is not in the log"
            ),
        }
    }
    replay.check_exactly_once();
}
