//! Many regions, one global order, for real: 3 etcd members on loopback with 50 ms
//! one way between any two (a proxy in this process), 3 `warren serve --etcd …
//! --region …` processes, native clients that reconnect to random regions, and ten
//! scenarios in a row (`fast`): steady load; SIGKILL of the etcd leader; a member
//! paused (SIGSTOP); SIGKILL and restart of a region; a region cut off and healed; a
//! revocation read through a lagging region; a schema change; a late region booted
//! from a snapshot; compaction past a stopped region; two processes claiming one
//! region; a forced divergence.
//!
//! The history checker (`cluster/checker.rs`) runs over every run: every region's
//! chain of batches arrived exactly once and in order; the log replayed by the engine
//! gives, at every position a region published, that region's digest; every
//! acknowledged commit is in the log once, at the position its acknowledgement gave;
//! counters count each bump once; every client's outbox drains and its replica equals
//! the replay as its user may read it; no client ever saw a position older than one it
//! had seen (whichever region it moved to), and a revoked partition never came back.
//!
//! `WARREN_REGIONS_SEED=N` replays a run (the seed is printed). The soak version runs
//! longer with more regions and a seeded fault schedule:
//! `WARREN_REGIONS_SOAK_SECS=1800 cargo test --release -p warren-server --test regions -- --ignored soak`.

mod cluster;
mod replay;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cluster::checker::{self, History, Observer};
use cluster::etcd::EtcdCluster;
use cluster::{wait_until, Deployment, TestDir, ADMIN, SECRET};
use warren_core::protocol::{ClientFrame, ServerFrame};
use warren_core::replica::Event;
use warren_core::value::obj;
use warren_core::Value;
use warren_server::auth;
use warren_server::client::{Client, ClientOptions, RawConnection};
use warren_server::gateway::scoped_client_id;
use warren_server::log::etcd::{EtcdClient, EtcdOptions, EtcdTls};
use warren_server::log::shared::{EtcdLog, Key, LogEvent, SharedLog};

/// Counters (each client bumps its own), and a team whose members read its tasks.
const SCHEMA: &str = r#"
collection Counter {
  partition "user:" + doc.owner
  allow read   partition == "user:" + auth.sub
  allow create doc.owner == auth.sub
  allow update old.owner == auth.sub
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
}

function bump(id) {
  let c = Counter.byId(id) ?? Counter.create({ id, owner: auth.sub, n: 0 })
  c.update({ n: c.n + 1 })
}

function setMembers(team, members) {
  let t = Team.byId(team) ?? Team.create({ id: team, members })
  t.update({ members })
}

function addTask(id, team) {
  Task.create({ id, team, by: auth.sub })
}
"#;

/// The schema after the change of the schema scenario: one more function.
fn schema_v2() -> String {
    format!(
        "{SCHEMA}\nfunction bumpTwice(id) {{\n  let c = Counter.byId(id) ?? Counter.create({{ id, owner: auth.sub, n: 0 }})\n  c.update({{ n: c.n + 2 }})\n}}\n"
    )
}

const WAIT: Duration = Duration::from_secs(60);

fn token(sub: &str) -> String {
    auth::mint_hs256(SECRET, &auth::dev_claims(sub, 3600, None, None)).unwrap()
}

/// A client of the test: its user, its id as the log holds it, and what it saw.
struct TestClient {
    sub: String,
    id: String,
    scoped: String,
    client: Client,
    /// Frames of earlier instances of this client (restarted on another region).
    frames_before: Vec<ServerFrame>,
}

impl TestClient {
    fn start(sub: &str, id: &str, url: &str, regions: Vec<String>, seed: u64) -> TestClient {
        let mut opts = ClientOptions::new(url, &token(sub), id);
        opts.regions = regions;
        opts.auth = obj([("sub", sub.into())]);
        opts.schema = Some(SCHEMA.to_owned());
        opts.backoff_max = Duration::from_millis(800);
        opts.seed = seed;
        TestClient {
            sub: sub.to_owned(),
            id: id.to_owned(),
            scoped: scoped_client_id(&obj([("sub", sub.into())]), id),
            client: Client::start(opts).unwrap(),
            frames_before: Vec::new(),
        }
    }

    /// Stops this client and starts it again on its own store, connecting to `url`
    /// (and `regions`) from now on.
    fn restart(&mut self, rt: &tokio::runtime::Runtime, url: &str, regions: Vec<String>) {
        let idle = Client::start_with(
            ClientOptions::new("ws://127.0.0.1:9/v1/sync", "", &self.id),
            Default::default(),
            false,
        )
        .unwrap();
        let old = std::mem::replace(&mut self.client, idle);
        self.frames_before.extend(old.received());
        let store = rt.block_on(old.shutdown());
        let mut opts = ClientOptions::new(url, &token(&self.sub), &self.id);
        opts.regions = regions;
        opts.auth = obj([("sub", self.sub.as_str().into())]);
        opts.backoff_max = Duration::from_millis(500);
        self.client = Client::start_with(opts, store, true).unwrap();
    }

    fn frames(&self) -> Vec<ServerFrame> {
        let mut f = self.frames_before.clone();
        f.extend(self.client.received());
        f
    }
}

/// Acknowledgements seen: (client as logged, seq) → position.
type Acks = Arc<Mutex<BTreeMap<(String, u64), Option<u64>>>>;

fn collect(clients: &[Arc<Mutex<TestClient>>], acks: &Acks) {
    for c in clients {
        let c = c.lock().unwrap();
        for e in c.client.take_events() {
            match e {
                Event::Confirmed { seq, position, .. } => {
                    let before = acks
                        .lock()
                        .unwrap()
                        .insert((c.scoped.clone(), seq), position);
                    assert!(
                        before.is_none() || before == Some(position),
                        "{} {seq}: acknowledged at {before:?}, then at {position:?}",
                        c.id
                    );
                }
                Event::Rejected { seq, code, message } => {
                    panic!("{} {seq} rejected: {code}: {message}", c.id)
                }
                _ => {}
            }
        }
    }
}

/// Positions a client saw never go backwards, across every region it moved to: a
/// welcome is never older than what it had (the barrier).
fn check_monotonic(name: &str, frames: &[ServerFrame]) {
    let mut seen = 0u64;
    for (i, f) in frames.iter().enumerate() {
        let p = match f {
            ServerFrame::Welcome { position, .. } => {
                assert!(
                    *position >= seen,
                    "{name}, frame {i}: a welcome at position {position} after the client had seen {seen}: a region served an older state"
                );
                *position
            }
            ServerFrame::Snapshot { position, .. }
            | ServerFrame::Drop { position, .. }
            | ServerFrame::Effects { position, .. } => *position,
            ServerFrame::Outcome {
                result: warren_core::protocol::CommitResult::Committed { position, .. },
                ..
            } => *position,
            _ => continue,
        };
        seen = seen.max(p);
    }
}

/// The load: every client bumps its own counter while fewer than 6 of its commits
/// are pending; now and then a client drops its connection (and reconnects to a
/// random region).
struct Load {
    on: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
    /// Milliseconds from a bump's call to its confirmation, for every bump the load
    /// made (faults included).
    latencies: Arc<Mutex<Vec<u64>>>,
}

impl Load {
    fn start(
        rt: &tokio::runtime::Runtime,
        clients: Vec<Arc<Mutex<TestClient>>>,
        acks: Acks,
        seed: u64,
    ) -> Load {
        let on = Arc::new(AtomicBool::new(false));
        let stop = Arc::new(AtomicBool::new(false));
        let latencies: Arc<Mutex<Vec<u64>>> = Arc::default();
        let (o, s, lat) = (on.clone(), stop.clone(), latencies.clone());
        let handle = rt.handle().clone();
        let thread = std::thread::spawn(move || {
            let _g = handle.enter();
            let mut rng = replay::Rng(seed);
            let mut last_move = Instant::now();
            let mut called: BTreeMap<(String, u64), Instant> = BTreeMap::new();
            while !s.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(15));
                collect(&clients, &acks);
                {
                    let a = acks.lock().unwrap();
                    called.retain(|k, t| {
                        if a.contains_key(k) {
                            lat.lock().unwrap().push(t.elapsed().as_millis() as u64);
                            false
                        } else {
                            true
                        }
                    });
                }
                if !o.load(Ordering::Relaxed) {
                    continue;
                }
                let i = rng.below(clients.len() as u64) as usize;
                {
                    let c = clients[i].lock().unwrap();
                    if c.client.replica().pending().len() < 6 {
                        let seq = c
                            .client
                            .call("bump", obj([("id", c.id.as_str().into())]))
                            .unwrap()
                            .seq;
                        called.insert((c.scoped.clone(), seq), Instant::now());
                    }
                }
                if last_move.elapsed() > Duration::from_millis(1500) {
                    last_move = Instant::now();
                    let j = rng.below(clients.len() as u64) as usize;
                    let c = clients[j].lock().unwrap();
                    c.client.set_online(false);
                    c.client.set_online(true);
                }
            }
        });
        Load {
            on,
            stop,
            thread: Some(thread),
            latencies,
        }
    }

    fn set(&self, on: bool) {
        self.on.store(on, Ordering::Relaxed);
    }

    /// "p50 / p99 / max" of the confirmations so far, in milliseconds.
    fn summary(&self) -> String {
        let mut v = self.latencies.lock().unwrap().clone();
        if v.is_empty() {
            return "no confirmations".into();
        }
        v.sort();
        let p = |q: f64| v[((v.len() as f64 * q).ceil() as usize).clamp(1, v.len()) - 1];
        format!(
            "{} bumps confirmed: p50 {} ms, p99 {} ms, max {} ms (faults included)",
            v.len(),
            p(0.5),
            p(0.99),
            p(1.0)
        )
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Steps of a run, with how long each took, printed at the end.
struct Steps(Vec<(String, Duration)>, Instant);

impl Steps {
    fn step(&mut self, name: &str) {
        let now = Instant::now();
        eprintln!("--- {name} (after {:.1} s)", self.1.elapsed().as_secs_f64());
        self.0.push((name.to_owned(), now.duration_since(self.1)));
    }
}

const REGION_ARGS: &[&str] = &[
    "--publish-every-ms",
    "300",
    "--compact-every-secs",
    "0",
    "--barrier-timeout-ms",
    "3000",
    "--unavailable-after-secs",
    "3",
    "--etcd-request-timeout-ms",
    "1500",
    "--etcd-watch-stall-ms",
    "2000",
];

/// Waits until every running region, the observer and each other agree on the log's
/// end, then runs the checks; returns the history.
fn quiet_point(
    d: &mut Deployment,
    observer: &Observer,
    clients: &[Arc<Mutex<TestClient>>],
    acks: &Acks,
    rt: &tokio::runtime::Runtime,
    skip: &dyn Fn(&str, u64) -> bool,
) -> History {
    // Every client's outbox drains (each commit acknowledged, wherever it went).
    for c in clients {
        let c = c.lock().unwrap();
        assert!(
            rt.block_on(c.client.wait_synced(WAIT)),
            "{}'s outbox did not drain: {:?}",
            c.id,
            c.client.replica().pending().len()
        );
    }
    collect(clients, acks);
    let target = d.max_position();
    assert!(
        d.wait_position(target, WAIT),
        "the regions did not reach position {target}"
    );
    let running: Vec<usize> = (0..d.regions.len())
        .filter(|i| d.regions[*i].child.is_some())
        .collect();
    let positions: Vec<(String, Option<u64>)> = running
        .iter()
        .map(|i| (d.regions[*i].name.clone(), d.regions[*i].position()))
        .collect();
    let head = EtcdLog::new(d.etcd.client(), "/warren/v1/")
        .heads()
        .expect("the log's heads")
        .iter()
        .map(|(_, rev)| *rev)
        .max()
        .unwrap_or(0);
    assert!(
        observer.wait(head, WAIT),
        "the observer did not reach {head}"
    );
    let h = History::of(&observer.events());
    for (name, p) in &positions {
        assert!(
            p.is_some_and(|p| p <= h.replay.position()),
            "{name} is at {p:?}, the log's end at {}",
            h.replay.position()
        );
    }
    let states = h.check_states(skip);
    h.check_acks(&acks.lock().unwrap());
    // Every client converged: what it holds is what the log gives its user.
    for c in clients {
        let c = c.lock().unwrap();
        let want = checker::everything_as(&h, &c.sub);
        let ok = rt.block_on(c.client.wait_until(WAIT, |r| {
            r.query(checker::EVERYTHING).ok().as_ref() == Some(&want)
        }));
        assert!(
            ok,
            "{} did not converge: it holds {:?}, the log gives {want:?}",
            c.id,
            c.client.query(checker::EVERYTHING)
        );
        check_monotonic(&c.id, &c.frames());
    }
    eprintln!(
        "quiet point: position {}, {} batches, {} published states checked, {} acknowledgements",
        h.replay.position(),
        h.batches.len(),
        states,
        acks.lock().unwrap().len()
    );
    h
}

/// A GraphQL request to the region at `http` (its HTTP address) as `sub`: the answer.
fn graphql(http: &str, sub: &str, query: &str) -> serde_json::Value {
    let mut resp = cluster::http_agent(Duration::from_secs(10))
        .post(format!("{http}/v1/graphql"))
        .header("authorization", format!("Bearer {}", token(sub)))
        .header("content-type", "application/json")
        .send(serde_json::json!({ "query": query }).to_string())
        .expect("a GraphQL request");
    serde_json::from_str(&resp.body_mut().read_to_string().unwrap()).unwrap()
}

/// `Hello` to region `url`: the first frame the region answers.
fn hello_answer(rt: &tokio::runtime::Runtime, url: &str) -> Option<ServerFrame> {
    rt.block_on(async {
        let mut c = RawConnection::connect(url).await.ok()?;
        c.send(&ClientFrame::Hello {
            client_id: "probe".into(),
            token: token("probe"),
            schema_version: String::new(),
            outbox_from: 0,
            partitions: vec![],
        })
        .await
        .ok()?;
        c.recv(Duration::from_secs(10)).await
    })
}

/// Presence crosses regions (through etcd, not the log): u1 on r1 and u2 on r2 hold
/// the team's partition; u1's cursor reaches u2 and u3 on r3, not u1 itself, and not
/// an outsider on r2 who may not read the partition; the outsider's own reaches nobody.
fn presence_crosses_regions(rt: &tokio::runtime::Runtime, urls: &[String]) {
    rt.block_on(async {
        let is_presence = |f: &ServerFrame| matches!(f, ServerFrame::Presence { .. });
        let holds = |f: &ServerFrame| {
            matches!(f, ServerFrame::Snapshot { partition, .. } if partition == "team:t")
        };
        let mut conns = Vec::new();
        for (sub, url) in [("u1", &urls[0]), ("u2", &urls[1]), ("u3", &urls[2]), ("zed", &urls[1])] {
            let mut c = RawConnection::connect(url).await.unwrap();
            c.send(&ClientFrame::Hello {
                client_id: format!("{sub}-presence"),
                token: token(sub),
                schema_version: String::new(),
                outbox_from: 0,
                partitions: vec![],
            })
            .await
            .unwrap();
            let frames = if sub == "zed" {
                c.recv_until(WAIT, |f| matches!(f, ServerFrame::Welcome { .. })).await
            } else {
                c.recv_until(WAIT, holds).await
            };
            assert!(!frames.is_empty(), "{sub} was welcomed");
            conns.push(c);
        }
        let [mut u1, mut u2, mut u3, mut zed] = <[_; 4]>::try_from(conns).ok().unwrap();
        let presence = |data: &[u8]| ClientFrame::Presence {
            partition: "team:t".into(),
            data: data.to_vec(),
        };
        u1.send(&presence(b"u1: cursor 7")).await.unwrap();
        for (who, c) in [("u2 on r2", &mut u2), ("u3 on r3", &mut u3)] {
            let got = c.recv_until(WAIT, is_presence).await;
            assert_eq!(
                got.last(),
                Some(&ServerFrame::Presence {
                    partition: "team:t".into(),
                    from: "u1".into(),
                    data: b"u1: cursor 7".to_vec(),
                }),
                "{who}"
            );
        }
        let quiet = Duration::from_millis(1500);
        for (who, c) in [("the sender", &mut u1), ("an outsider", &mut zed)] {
            let got = c.recv_until(quiet, is_presence).await;
            assert!(!got.iter().any(is_presence), "presence reached {who}");
        }
        zed.send(&presence(b"zed was here")).await.unwrap();
        for c in [&mut u1, &mut u2, &mut u3] {
            let got = c.recv_until(quiet, is_presence).await;
            assert!(!got.iter().any(is_presence), "the outsider's presence was relayed");
        }
    });
}

fn error_code(f: &Option<ServerFrame>) -> Option<&str> {
    match f {
        Some(ServerFrame::Error { code, .. }) => Some(code),
        _ => None,
    }
}

#[test]
fn fast() {
    let seed = replay::seed("WARREN_REGIONS_SEED");
    let dir = TestDir::new("regions");
    let mut steps = Steps(Vec::new(), Instant::now());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let mut d = Deployment::new(&dir.0, 3, Duration::from_millis(50), SCHEMA, seed);
    d.args = REGION_ARGS.iter().map(|s| s.to_string()).collect();
    let observer = Observer::start(d.etcd.client_urls());
    for name in ["r1", "r2", "r3"] {
        let i = d.add_region(name);
        d.start_region(i, &[], &[]).expect("the region starts");
    }
    steps.step("3 etcd members, 3 regions");
    // A region whose engine or execution settings differ from the deployment's
    // refuses to start.
    {
        use warren_server::log::shared::Meta;
        let client = d.etcd.client();
        let mut old = Meta::ours(&Default::default());
        old.engine = "warren-core/0.0.1+exec0".into();
        let mut other_limits = Meta::ours(&Default::default());
        other_limits.limits = "fuel=5 depth=1 args=1 doc=1 result=1 value=1 writes=1".into();
        for (prefix, meta, code) in [
            ("/warren/old-engine/", old, "ENGINE_MISMATCH"),
            ("/warren/other-limits/", other_limits, "SETTINGS_MISMATCH"),
        ] {
            client
                .put(
                    format!("{prefix}{}", Key::Meta.rel()).as_bytes(),
                    &meta.encode(),
                    0,
                )
                .unwrap();
            let i = d.add_region(&format!("x{}", d.regions.len()));
            let r = d.start_region(i, &["--etcd-prefix".into(), prefix.into()], &[]);
            assert!(r.is_err(), "a region joined a deployment of another {code}");
            assert!(
                d.regions[i].stderr().contains(code),
                "no {code}:\n{}",
                d.regions[i].stderr()
            );
        }
    }
    // /readyz and /metrics say where a region stands.
    {
        let r1 = &d.regions[0];
        assert!(wait_until(WAIT, || r1
            .get("/readyz")
            .is_some_and(|(s, v)| s == 200 && v["etcd_ok"] == true)));
        let (_, ready) = r1.get("/readyz").unwrap();
        assert_eq!(ready["region"], "r1");
        assert!(ready["lag_revisions"].is_i64(), "{ready}");
        let (_, m) = r1.get_text("/metrics").unwrap();
        for needle in [
            "warren_region_info{region=\"r1\"} 1",
            "warren_etcd_up{region=\"r1\"} 1",
            "# TYPE warren_region_lag_revisions gauge",
            "# TYPE warren_region_last_comparison_position gauge",
            "# TYPE warren_etcd_db_bytes gauge",
        ] {
            assert!(m.contains(needle), "{needle} not in\n{m}");
        }
    }
    let urls = d.urls();
    let _g = rt.enter();
    let clients: Vec<Arc<Mutex<TestClient>>> = (1..=6)
        .map(|i| {
            let url = &urls[d.rand(3) as usize];
            Arc::new(Mutex::new(TestClient::start(
                &format!("u{i}"),
                &format!("c{i}"),
                url,
                urls.clone(),
                seed ^ i,
            )))
        })
        .collect();
    let acks: Acks = Arc::default();
    // The team: every user but u6 (who joins below), and one task each.
    {
        let c1 = clients[0].lock().unwrap();
        let members: Vec<Value> = (1..=6).map(|i| format!("u{i}").into()).collect();
        c1.client
            .call(
                "setMembers",
                obj([("team", "t".into()), ("members", Value::Array(members))]),
            )
            .unwrap();
        assert!(rt.block_on(c1.client.wait_synced(WAIT)));
    }
    for (i, c) in clients.iter().enumerate() {
        let c = c.lock().unwrap();
        // Its replica checks the rule locally: it needs the team first.
        assert!(rt.block_on(c.client.wait_until(WAIT, |r| {
            r.query("Team.byId(\"t\") != null").ok() == Some(Value::Bool(true))
        })));
        c.client
            .call(
                "addTask",
                obj([("id", format!("task{i}").into()), ("team", "t".into())]),
            )
            .unwrap();
    }
    presence_crosses_regions(&rt, &urls);
    steps.step("presence between regions");
    let load = Load::start(&rt, clients.clone(), acks.clone(), seed);

    // S1: steady load with the WAN delay between members.
    load.set(true);
    std::thread::sleep(Duration::from_secs(6));
    load.set(false);
    quiet_point(&mut d, &observer, &clients, &acks, &rt, &|_, _| false);
    // The regions compared digests, and agreed.
    for r in &d.regions[..3] {
        let (_, v) = r.get("/readyz").unwrap();
        assert!(v["comparisons"].as_u64().unwrap_or(0) > 0, "{v}");
        assert_eq!(v["last_comparison"]["equal"], true, "{v}");
        assert_eq!(v["mismatches"], 0, "{v}");
    }
    steps.step("S1 steady load");

    // S2: SIGKILL of the etcd leader under load; restarted 3 s later.
    load.set(true);
    std::thread::sleep(Duration::from_secs(2));
    let leader = d.etcd.leader().expect("a leader");
    eprintln!("killing etcd member m{}", leader + 1);
    d.etcd.kill(leader);
    std::thread::sleep(Duration::from_secs(3));
    d.etcd.restart(leader);
    std::thread::sleep(Duration::from_secs(3));
    load.set(false);
    d.etcd.wait_healthy(WAIT);
    steps.step("S2 etcd leader killed");

    // S3: the member r1 talks to first is paused (SIGSTOP) 5 s.
    load.set(true);
    d.etcd.pause(0);
    std::thread::sleep(Duration::from_secs(5));
    d.etcd.resume(0);
    std::thread::sleep(Duration::from_secs(1));
    load.set(false);
    d.etcd.wait_healthy(WAIT);
    quiet_point(&mut d, &observer, &clients, &acks, &rt, &|_, _| false);
    steps.step("S3 member paused");

    // S4: SIGKILL of region r2 under load; restarted 3 s later, it catches up.
    load.set(true);
    std::thread::sleep(Duration::from_secs(1));
    d.regions[1].kill();
    std::thread::sleep(Duration::from_secs(3));
    d.start_region(1, &[], &[]).expect("r2 restarts");
    std::thread::sleep(Duration::from_secs(2));
    load.set(false);
    quiet_point(&mut d, &observer, &clients, &acks, &rt, &|_, _| false);
    steps.step("S4 region killed and restarted");

    // S5: r3 cut off from etcd (every byte held) 6 s: it refuses new clients
    // (REGION_UNAVAILABLE) and closes the ones it had; after the heal its held
    // append lands once.
    load.set(true);
    std::thread::sleep(Duration::from_millis(500));
    d.pause_region(2, true);
    std::thread::sleep(Duration::from_millis(3500));
    let answer = hello_answer(&rt, &d.regions[2].url());
    assert_eq!(
        error_code(&answer),
        Some("REGION_UNAVAILABLE"),
        "a region cut off from etcd answered a Hello with {answer:?}"
    );
    // A GraphQL read there waits for the same barrier, and is refused the same way,
    // not answered from what the region last applied.
    let answer = graphql(
        &d.regions[2].http(),
        "u1",
        "{ Counter_all(first: 1) { nodes { id } } }",
    );
    assert_eq!(
        answer["errors"][0]["extensions"]["code"], "REGION_UNAVAILABLE",
        "a region cut off from etcd answered a GraphQL read with {answer}"
    );
    std::thread::sleep(Duration::from_secs(2));
    d.pause_region(2, false);
    std::thread::sleep(Duration::from_secs(2));
    load.set(false);
    assert!(
        d.regions[2].stderr().contains("closing every connection"),
        "r3 did not close its connections while cut off"
    );
    quiet_point(&mut d, &observer, &clients, &acks, &rt, &|_, _| false);
    steps.step("S5 region cut off and healed");

    // S6: revocation read through a lagging region. u6 is removed from the team
    // through r1 while r3 is cut off; u6's client then moves to r3 only. r3 must
    // catch up before it welcomes it, so the team never comes back.
    let x = clients[5].clone();
    {
        let mut xc = x.lock().unwrap();
        xc.restart(&rt, &urls[0], vec![]);
        assert!(rt.block_on(
            xc.client
                .wait_until(WAIT, |r| r.query("Task.all().count()").ok()
                    == Some(Value::Int(6)))
        ));
    }
    d.pause_region(2, true);
    {
        let c1 = clients[0].lock().unwrap();
        let members: Vec<Value> = (1..=5).map(|i| format!("u{i}").into()).collect();
        c1.client
            .call(
                "setMembers",
                obj([("team", "t".into()), ("members", Value::Array(members))]),
            )
            .unwrap();
        assert!(rt.block_on(c1.client.wait_synced(WAIT)));
    }
    {
        let mut xc = x.lock().unwrap();
        assert!(
            rt.block_on(
                xc.client
                    .wait_until(WAIT, |r| r.query("Task.all().count()").ok()
                        == Some(Value::Int(0)))
            ),
            "u6 was not dropped from the team"
        );
        // Now only the lagging region.
        xc.restart(&rt, &urls[2], vec![]);
    }
    std::thread::sleep(Duration::from_secs(2));
    d.pause_region(2, false);
    {
        let xc = x.lock().unwrap();
        assert!(
            rt.block_on(xc.client.wait_until(WAIT, |r| r.is_connected())),
            "u6 never got a welcome from r3"
        );
        std::thread::sleep(Duration::from_millis(500));
        assert!(
            checker::check_revocation(&xc.frames(), "team:t"),
            "u6 never saw the team dropped"
        );
        assert_eq!(
            xc.client.query("Task.all().count()").unwrap(),
            Value::Int(0)
        );
    }
    quiet_point(&mut d, &observer, &clients, &acks, &rt, &|_, _| false);
    steps.step("S6 revocation through a lagging region");

    // A schema change in the global log: every region switches at one position,
    // clients learn it and can call what it adds.
    let v2 = d.dir.join("schema-v2.warren");
    std::fs::write(&v2, schema_v2()).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_warren"))
        .args(["schema", "apply"])
        .arg(&v2)
        .args(["--etcd", &d.etcd.client_urls().join(",")])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "warren schema apply: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    load.set(true);
    {
        let c2 = clients[1].lock().unwrap();
        let ok = rt.block_on(c2.client.wait_until(WAIT, |r| {
            r.schema()
                .is_some_and(|s| s.functions.contains_key("bumpTwice"))
        }));
        assert!(ok, "a client never learned the new schema");
        // (Another counter than the one `bump` counts, which the checker counts.)
        c2.client
            .call("bumpTwice", obj([("id", "c2-twice".into())]))
            .unwrap();
    }
    std::thread::sleep(Duration::from_secs(2));
    load.set(false);
    let h = quiet_point(&mut d, &observer, &clients, &acks, &rt, &|_, _| false);
    let schema_at = h
        .batches
        .iter()
        .filter(|b| b.region == "~admin")
        .map(|b| b.first)
        .collect::<Vec<_>>();
    assert_eq!(schema_at.len(), 2, "the initial schema and the change");
    for r in ["r1", "r2", "r3"] {
        assert!(
            h.states
                .iter()
                .any(|(_, n, s)| n == r && s.position >= schema_at[1]),
            "{r} published no state after the schema change"
        );
    }
    // GraphQL follows the schema in the log: the function the change added is a
    // mutation of every region's GraphQL schema, without a restart.
    for r in 0..3 {
        let answer = graphql(
            &d.regions[r].http(),
            "u-gql",
            &format!("mutation {{ bumpTwice(id: \"gql-{r}\") }}"),
        );
        assert!(
            answer.get("errors").is_none(),
            "region {}: bumpTwice through GraphQL after the schema change: {answer}",
            r + 1
        );
    }
    steps.step("schema change");

    // S7: a late region, booted from r1's snapshot, serves clients and agrees.
    let r4 = d.add_region("r4");
    let boot = format!("{}/v1/admin/snapshot", d.regions[0].http());
    d.start_region(
        r4,
        &[
            "--boot-from".into(),
            boot.clone(),
            "--boot-token".into(),
            ADMIN.into(),
        ],
        &[],
    )
    .expect("r4 boots from a snapshot");
    assert!(d.regions[r4].stderr().contains("booted from a snapshot"));
    let late = Arc::new(Mutex::new(TestClient::start(
        "u7",
        "c7",
        &d.regions[r4].url(),
        vec![],
        seed ^ 7,
    )));
    {
        let c = late.lock().unwrap();
        c.client.call("bump", obj([("id", "c7".into())])).unwrap();
        assert!(rt.block_on(c.client.wait_synced(WAIT)));
    }
    let mut all = clients.clone();
    all.push(late.clone());
    load.set(true);
    std::thread::sleep(Duration::from_secs(2));
    load.set(false);
    quiet_point(&mut d, &observer, &all, &acks, &rt, &|_, _| false);
    assert!(
        d.regions[r4].state().unwrap()["comparisons"]
            .as_u64()
            .unwrap_or(0)
            > 0,
        "r4 compared no digest with another region"
    );
    steps.step("S7 late region from a snapshot");

    // S8: two processes claim r1: a copy started on a copy of its data directory
    // fences the first at its next append (LOG_FENCED).
    let copy = d.dir.join("r1-copy");
    let pid = d.regions[0].child.as_ref().unwrap().id() as i32;
    cluster::etcd::signal(pid, "STOP");
    copy_dir(&d.regions[0].data_dir, &copy);
    cluster::etcd::signal(pid, "CONT");
    let twin = d.add_region("r1-twin");
    d.regions[twin].name = "r1".into();
    d.regions[twin].data_dir = copy;
    d.regions[twin].etcd = d.regions[0].etcd.clone();
    d.start_region(twin, &[], &[])
        .expect("the second r1 starts");
    load.set(true);
    let fenced = wait_until(WAIT, || {
        d.regions[0]
            .child
            .as_mut()
            .is_some_and(|c| c.try_wait().ok().flatten().is_some())
    });
    load.set(false);
    assert!(
        fenced,
        "the first r1 went on appending after a second one claimed it"
    );
    d.regions[0].child = None;
    assert!(
        d.regions[0].stderr().contains("LOG_FENCED"),
        "the first r1 did not stop with LOG_FENCED:\n{}",
        d.regions[0].stderr()
    );
    quiet_point(&mut d, &observer, &all, &acks, &rt, &|_, _| false);
    // The twin hands r1 back: stopped, and r1 restarted on its own directory.
    d.regions[twin].stop();
    d.start_region(0, &[], &[]).expect("r1 restarts");
    load.set(true);
    std::thread::sleep(Duration::from_secs(1));
    load.set(false);
    let h = quiet_point(&mut d, &observer, &all, &acks, &rt, &|_, _| false);
    let incarnations: std::collections::BTreeSet<[u8; 16]> = h
        .batches
        .iter()
        .filter(|b| b.region == "r1")
        .map(|b| b.incarnation)
        .collect();
    assert!(
        incarnations.len() >= 3,
        "r1's batches come from its three processes"
    );
    steps.step("S8 two processes claim one region");
    // S9: compaction past a stopped region: r2 cannot continue from the log
    // (NEEDS_SNAPSHOT); booted from r1's snapshot, it does.
    d.regions[1].stop();
    load.set(true);
    std::thread::sleep(Duration::from_secs(1));
    load.set(false);
    let compacted = d.etcd.compact_to_head();
    eprintln!("compacted the log to revision {compacted}");
    let r = d.start_region(1, &[], &[]);
    assert!(r.is_err(), "r2 started behind the compaction");
    assert!(
        d.regions[1].stderr().contains("NEEDS_SNAPSHOT"),
        "r2 did not say NEEDS_SNAPSHOT:\n{}",
        d.regions[1].stderr()
    );
    d.start_region(
        1,
        &[
            "--boot-from".into(),
            boot.clone(),
            "--boot-token".into(),
            ADMIN.into(),
        ],
        &[],
    )
    .expect("r2 boots from a snapshot");
    let h = quiet_point(&mut d, &observer, &all, &acks, &rt, &|_, _| false);
    steps.step("S9 compaction past a stopped region");
    eprintln!("commit latency under the scenarios: {}", load.summary());
    drop(load);

    // S10: a forced divergence: r4, restarted with a wrong digest from a position on,
    // and every region comparing with it stop with REGION_DIVERGED; r4 is fenced.
    d.regions[r4].stop();
    let at = h.replay.position() + 1;
    d.start_region(r4, &[], &[("WARREN_TEST_SKEW_DIGEST_AT", at.to_string())])
        .expect("r4 restarts");
    {
        let c = late.lock().unwrap();
        for _ in 0..3 {
            c.client.call("bump", obj([("id", "c7".into())])).unwrap();
        }
    }
    let stopped = wait_until(WAIT, || {
        d.regions[r4].wait_exit(Duration::ZERO).is_some() || d.regions[r4].child.is_none()
    });
    assert!(stopped, "r4 did not stop");
    assert!(d.regions[r4].stderr().contains("REGION_DIVERGED"));
    let others_stopped = wait_until(WAIT, || {
        (0..3).all(|i| {
            d.regions[i].child.is_none() || d.regions[i].wait_exit(Duration::ZERO).is_some()
        })
    });
    assert!(others_stopped, "a region compared with r4 and did not stop");
    for i in 0..3 {
        assert!(
            d.regions[i].stderr().contains("REGION_DIVERGED"),
            "{} stopped without REGION_DIVERGED",
            d.regions[i].name
        );
    }
    // The fences are the regions' last writes: the observer may not have seen r4's yet
    // (it once had only the others', the machine busy).
    let r4_fenced = |events: &[LogEvent]| {
        events.iter().any(|e| {
            matches!(e, LogEvent::Change { key: Key::Fence(r), value: Some(why), .. }
                if r == "r4" && why.starts_with(b"REGION_DIVERGED"))
        })
    };
    wait_until(WAIT, || r4_fenced(&observer.events()));
    let h = History::of(&observer.events());
    assert!(
        h.fences
            .iter()
            .any(|(r, why)| r == "r4" && why.starts_with("REGION_DIVERGED")),
        "fence/r4 is missing: {:?}",
        h.fences
    );
    h.check_states(|r, p| r == "r4" && p >= at);
    h.check_acks(&acks.lock().unwrap());
    steps.step("S10 forced divergence");

    for (name, t) in &steps.0 {
        eprintln!("{:>6.1} s  {name}", t.as_secs_f64());
    }
    drop(all);
    drop(clients);
    drop(observer);
    drop(d);
    dir.remove();
}

fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
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

/// The soak: 5 etcd members, 4 regions, 12 clients, and a seeded nemesis that every
/// 5–20 s picks one of: kill and restart the etcd leader or a random member; pause a
/// member (SIGSTOP); pause or cut a region's links to etcd; change the delays between
/// members (25–75 ms, unequal); kill and restart a region; rebuild a region from
/// another's snapshot; apply a schema change. The regions compact the log themselves
/// (every 20 s, keeping 3,000 revisions). Every 2 minutes a quiet point heals
/// everything and runs every check of the fast version.
///
/// `WARREN_REGIONS_SOAK_SECS=1800 cargo test --release -p warren-server --test regions -- --ignored soak --nocapture`
/// (`WARREN_REGIONS_SEED` replays a schedule).
#[test]
#[ignore]
fn soak() {
    let secs: u64 = std::env::var("WARREN_REGIONS_SOAK_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(300);
    let seed = replay::seed("WARREN_REGIONS_SEED");
    let dir = TestDir::new("regions-soak");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let mut d = Deployment::new(&dir.0, 5, Duration::from_millis(50), SCHEMA, seed);
    // The fast version's flags, but the regions compact the log themselves.
    d.args = REGION_ARGS
        .chunks(2)
        .filter(|f| f[0] != "--compact-every-secs")
        .flatten()
        .map(|s| s.to_string())
        .collect();
    for a in ["--compact-every-secs", "20", "--retain-revisions", "3000"] {
        d.args.push(a.into());
    }
    let observer = Observer::start(d.etcd.client_urls());
    for name in ["r1", "r2", "r3", "r4"] {
        let i = d.add_region(name);
        d.start_region(i, &[], &[]).expect("the region starts");
    }
    let urls = d.urls();
    let _g = rt.enter();
    let clients: Vec<Arc<Mutex<TestClient>>> = (1..=12)
        .map(|i| {
            let url = &urls[d.rand(4) as usize];
            Arc::new(Mutex::new(TestClient::start(
                &format!("u{i}"),
                &format!("c{i}"),
                url,
                urls.clone(),
                seed ^ i,
            )))
        })
        .collect();
    let acks: Acks = Arc::default();
    let load = Load::start(&rt, clients.clone(), acks.clone(), seed);
    load.set(true);
    let started = Instant::now();
    let mut last_quiet = Instant::now();
    let mut faults: BTreeMap<&str, u32> = BTreeMap::new();
    let mut schema_changes = 0;
    let mut quiet_points = 0;
    let boot_args = |d: &Deployment, from: usize| -> Vec<String> {
        vec![
            "--boot-from".into(),
            format!("{}/v1/admin/snapshot", d.regions[from].http()),
            "--boot-token".into(),
            ADMIN.into(),
        ]
    };
    while started.elapsed() < Duration::from_secs(secs) {
        std::thread::sleep(Duration::from_millis(5000 + d.rand(15_000)));
        let members = d.etcd.members.len();
        let fault = d.rand(9);
        let name = match fault {
            0 => {
                let m = d.etcd.leader().unwrap_or(0);
                d.etcd.kill(m);
                std::thread::sleep(Duration::from_millis(2000 + d.rand(3000)));
                d.etcd.restart(m);
                "etcd leader killed"
            }
            1 => {
                let m = d.rand(members as u64) as usize;
                d.etcd.kill(m);
                std::thread::sleep(Duration::from_millis(2000 + d.rand(3000)));
                d.etcd.restart(m);
                "etcd member killed"
            }
            2 => {
                let m = d.rand(members as u64) as usize;
                d.etcd.pause(m);
                std::thread::sleep(Duration::from_millis(3000 + d.rand(3000)));
                d.etcd.resume(m);
                "etcd member paused"
            }
            3 => {
                let r = d.rand(4) as usize;
                d.pause_region(r, true);
                std::thread::sleep(Duration::from_millis(3000 + d.rand(5000)));
                d.pause_region(r, false);
                "region paused from etcd"
            }
            4 => {
                let r = d.rand(4) as usize;
                let routes = d.proxy.names(&format!("{}-m", d.regions[r].name));
                for x in &routes {
                    d.proxy.cut(x);
                }
                std::thread::sleep(Duration::from_millis(2000 + d.rand(4000)));
                for x in &routes {
                    d.proxy.heal(x);
                }
                "region cut from etcd"
            }
            5 => {
                for m in 0..members {
                    let ms = 25 + d.rand(51);
                    d.proxy
                        .set_delay(&format!("peer-m{}", m + 1), Duration::from_millis(ms));
                }
                "delays changed"
            }
            6 => {
                let r = d.rand(4) as usize;
                d.regions[r].kill();
                std::thread::sleep(Duration::from_millis(2000 + d.rand(2000)));
                d.start_region(r, &[], &[])
                    .expect("a killed region restarts");
                "region killed"
            }
            7 => {
                let r = d.rand(4) as usize;
                let from = (r + 1 + d.rand(3) as usize) % 4;
                d.regions[r].stop();
                let _ = std::fs::remove_dir_all(&d.regions[r].data_dir);
                let args = boot_args(&d, from);
                d.start_region(r, &args, &[])
                    .expect("a region rebuilt from a snapshot starts");
                "region rebuilt from a snapshot"
            }
            _ => {
                let v = if schema_changes % 2 == 0 {
                    schema_v2()
                } else {
                    SCHEMA.to_owned()
                };
                let f = d.dir.join("schema-next.warren");
                std::fs::write(&f, v).unwrap();
                let out = std::process::Command::new(env!("CARGO_BIN_EXE_warren"))
                    .args(["schema", "apply"])
                    .arg(&f)
                    .args(["--etcd", &d.etcd.client_urls().join(",")])
                    .output()
                    .unwrap();
                assert!(
                    out.status.success(),
                    "warren schema apply: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
                schema_changes += 1;
                "schema change"
            }
        };
        *faults.entry(name).or_default() += 1;
        eprintln!("[{:>5} s] {name}", started.elapsed().as_secs());
        // No region stopped on its own.
        for r in &mut d.regions {
            assert!(
                r.child.is_none() || r.running(),
                "{} exited:\n{}",
                r.name,
                r.stderr()
            );
        }
        if last_quiet.elapsed() >= Duration::from_secs(120) {
            load.set(false);
            for m in 0..members {
                d.proxy
                    .set_delay(&format!("peer-m{}", m + 1), Duration::from_millis(50));
            }
            d.etcd.wait_healthy(WAIT);
            quiet_point(&mut d, &observer, &clients, &acks, &rt, &|_, _| false);
            quiet_points += 1;
            last_quiet = Instant::now();
            load.set(true);
        }
    }
    load.set(false);
    d.etcd.wait_healthy(WAIT);
    let h = quiet_point(&mut d, &observer, &clients, &acks, &rt, &|_, _| false);
    quiet_points += 1;
    let admin = h.batches.iter().filter(|b| b.region == "~admin").count();
    assert_eq!(
        admin,
        1 + schema_changes,
        "every schema change is in the log once"
    );
    eprintln!(
        "soak: {} s, seed {seed}, {} entries in {} batches, {} acknowledgements, {quiet_points} quiet points, {} schema changes; faults: {faults:?}; {}",
        started.elapsed().as_secs(),
        h.replay.position(),
        h.batches.len(),
        acks.lock().unwrap().len(),
        schema_changes,
        load.summary()
    );
    drop(load);
    drop(clients);
    drop(observer);
    drop(d);
    dir.remove();
}

/// Certificates for a test over TLS, made with the `openssl` command: a CA, the
/// member's certificate (for 127.0.0.1) and a client's. Returns (the members' files,
/// the client's files).
fn test_certificates(dir: &std::path::Path) -> (EtcdTls, EtcdTls) {
    let run = |args: &[&str]| {
        let out = std::process::Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .expect("the openssl command");
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let key = |name: &str| {
        run(&[
            "ecparam",
            "-name",
            "prime256v1",
            "-genkey",
            "-noout",
            "-out",
            name,
        ]);
    };
    key("ca.key");
    run(&[
        "req",
        "-x509",
        "-new",
        "-key",
        "ca.key",
        "-out",
        "ca.pem",
        "-days",
        "2",
        "-subj",
        "/CN=warren-test-ca",
    ]);
    for (name, ext) in [
        (
            "server",
            "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth,clientAuth\n",
        ),
        ("client", "extendedKeyUsage=clientAuth\n"),
    ] {
        key(&format!("{name}.key"));
        run(&[
            "req",
            "-new",
            "-key",
            &format!("{name}.key"),
            "-out",
            &format!("{name}.csr"),
            "-subj",
            &format!("/CN=warren-test-{name}"),
        ]);
        std::fs::write(dir.join(format!("{name}.ext")), ext).unwrap();
        run(&[
            "x509",
            "-req",
            "-in",
            &format!("{name}.csr"),
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            &format!("{name}.pem"),
            "-days",
            "2",
            "-extfile",
            &format!("{name}.ext"),
        ]);
    }
    let files = |cert: &str, key: &str| EtcdTls {
        ca: Some(dir.join("ca.pem")),
        cert: Some(dir.join(cert)),
        key: Some(dir.join(key)),
    };
    (
        files("server.pem", "server.key"),
        files("client.pem", "client.key"),
    )
}

/// etcd over TLS with client certificates: a region runs on it with `--etcd-ca`,
/// `--etcd-cert` and `--etcd-key`; a client without a certificate, or that does not
/// trust the members' CA, is refused.
#[test]
fn etcd_over_tls_with_client_certificates() {
    let dir = TestDir::new("regions-tls");
    let (server, client) = test_certificates(&dir.0);
    let etcd = EtcdCluster::start_with(
        &dir.0,
        1,
        Duration::ZERO,
        Some((server, client.clone())),
        &[],
    );
    let c = etcd.client();
    c.put(b"/tls/probe", b"1", 0).expect("a put over TLS");
    assert_eq!(c.get(b"/tls/probe").unwrap().unwrap().value, b"1");
    // Without a client certificate, or not trusting the members' CA: refused.
    for tls in [
        EtcdTls {
            ca: client.ca.clone(),
            ..EtcdTls::default()
        },
        EtcdTls::default(),
    ] {
        let opts = EtcdOptions {
            request_timeout: Duration::from_secs(2),
            tls,
            ..EtcdOptions::default()
        };
        let bare = EtcdClient::new(&etcd.client_urls(), opts).unwrap();
        assert!(bare.get(b"/tls/probe").is_err());
    }
    // A region of many over TLS.
    let schema = dir.0.join("schema.warren");
    std::fs::write(&schema, SCHEMA).unwrap();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_warren"))
        .args(["serve", "--listen", "127.0.0.1:0", "--region", "eu"])
        .args(["--etcd", &etcd.client_urls()[0]])
        .arg("--etcd-ca")
        .arg(client.ca.as_ref().unwrap())
        .arg("--etcd-cert")
        .arg(client.cert.as_ref().unwrap())
        .arg("--etcd-key")
        .arg(client.key.as_ref().unwrap())
        .arg("--data-dir")
        .arg(dir.0.join("eu"))
        .arg("--schema")
        .arg(&schema)
        .env("WARREN_HS256_SECRET", SECRET)
        .env("WARREN_LOG", "error")
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(child.stdout.take().unwrap()),
        &mut line,
    )
    .unwrap();
    let _ = child.kill();
    let _ = child.wait();
    assert!(line.contains("serving on"), "the region over TLS: {line}");
    assert!(
        c.get(b"/warren/v1/log/eu").unwrap().is_some(),
        "it claimed its region"
    );
    drop(etcd);
    dir.remove();
}

/// etcd out of space (`NOSPACE`): the region says so (an alert in its log, the alarm
/// in `/metrics`), its appends wait (nothing is lost or refused), and once an operator
/// frees space (compact, defragment, disarm) they land.
#[test]
fn etcd_out_of_space_is_an_alert_and_appends_wait() {
    let dir = TestDir::new("regions-nospace");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let etcd = EtcdCluster::start_with(
        &dir.0,
        1,
        Duration::ZERO,
        None,
        &["--quota-backend-bytes=16777216"],
    );
    let mut d = Deployment::from_cluster(&dir.0, etcd, SCHEMA, 1);
    d.args = REGION_ARGS.iter().map(|s| s.to_string()).collect();
    d.args
        .extend(["--etcd-quota-warn-bytes".to_string(), "8000000".to_string()]);
    let i = d.add_region("eu");
    d.start_region(i, &[], &[]).expect("the region starts");
    let _g = rt.enter();
    let c = TestClient::start("u1", "c1", &d.regions[0].url(), vec![], 1);
    c.client.call("bump", obj([("id", "c1".into())])).unwrap();
    assert!(rt.block_on(c.client.wait_synced(WAIT)));
    // Fill etcd, outside the deployment's keys, until it refuses.
    let e = d.etcd.client();
    let junk = vec![b'x'; 512 * 1024];
    let mut n = 0;
    while e.put(format!("/junk/{n}").as_bytes(), &junk, 0).is_ok() {
        n += 1;
        assert!(n < 200, "etcd never ran out of space");
    }
    assert!(
        wait_until(WAIT, || d.regions[0].get_text("/metrics").is_some_and(
            |(_, m)| m.contains("warren_etcd_alarm{region=\"eu\",alarm=\"NOSPACE\"} 1")
        )),
        "no NOSPACE alarm in /metrics"
    );
    assert!(wait_until(WAIT, || d.regions[0].stderr().contains("ALERT")));
    // A commit made now waits, and is not lost.
    c.client.call("bump", obj([("id", "c1".into())])).unwrap();
    assert!(!rt.block_on(c.client.wait_synced(Duration::from_secs(3))));
    for k in 0..n {
        e.delete(format!("/junk/{k}").as_bytes()).unwrap();
    }
    d.etcd.compact_to_head();
    d.etcd.defragment_and_disarm();
    assert!(
        rt.block_on(c.client.wait_synced(WAIT)),
        "the waiting commit never landed"
    );
    assert_eq!(
        c.client.query("Counter.byId(\"c1\").n").unwrap(),
        Value::Int(2)
    );
    drop(c);
    drop(d);
    dir.remove();
}
