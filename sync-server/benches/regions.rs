//! Many regions on etcd, measured: commit latency from a client on each region with
//! 50 ms and 100 ms one-way delay between the etcd members, and throughput of a
//! deployment of 3 regions against 1.
//!
//! `cargo bench -p warren-server --bench regions` (about 3 minutes; `docs/BENCHMARKS.md`,
//! "Many regions on etcd", has the figures and how to read them). Options after `--`:
//! `--delays 50,100` (one-way milliseconds between members), `--commits N` per client
//! in the latency runs (40), `--secs N` per throughput run (10), `--clients N` in the
//! throughput runs (12), `--windows 32,128` commits each keeps in flight, `--reps N`
//! runs of each (3, the median is kept), `--no-latency` (the throughput runs only).
//!
//! Everything is real and on this machine: 3 `etcd` members whose peer traffic crosses
//! a proxy in this process that adds the delay (each region's own member is on its
//! side of the "WAN": a region reaches its member without delay), and `warren serve
//! --etcd … --region …` processes. Region k's nearest member is member k; the table
//! marks the region whose member led the cluster during the run.
//!
//! Latency: one client per region, all three at once, each making one commit (a
//! `bump`) and waiting for its confirmation before the next; a commit's latency runs
//! from the call to the `Confirmed` event (what an app awaits as `w.confirmed`).
//! Throughput: `--clients` clients each keeping `--window` commits in flight, spread
//! over the regions (all on one region for the 1-region run), confirmed commits per
//! second over `--secs`. These clients speak the protocol over raw connections, without
//! a replica (a replica re-runs its pending commits on every frame, which would make
//! the clients, not the regions, what is measured); each checks at the end that its
//! counter counts every confirmed commit once.

#[path = "../tests/cluster/mod.rs"]
mod cluster;
#[path = "../tests/replay/mod.rs"]
#[allow(unused_imports)]
mod replay;

use std::sync::Arc;
use std::time::{Duration, Instant};

use cluster::{Deployment, SECRET};
use warren_core::replica::Event;
use warren_core::value::obj;
use warren_server::auth;
use warren_server::client::{Client, ClientOptions};

const SCHEMA: &str = r#"
collection Counter {
  partition "user:" + doc.owner
  allow read   partition == "user:" + auth.sub
  allow create doc.owner == auth.sub
  allow update old.owner == auth.sub
}

function bump(id) {
  let c = Counter.byId(id) ?? Counter.create({ id, owner: auth.sub, n: 0 })
  c.update({ n: c.n + 1 })
}
"#;

struct Opts {
    latency: bool,
    delays: Vec<u64>,
    commits: usize,
    secs: u64,
    clients: usize,
    windows: Vec<usize>,
    reps: usize,
}

fn opts() -> Opts {
    let mut o = Opts {
        latency: true,
        delays: vec![50, 100],
        commits: 40,
        secs: 10,
        clients: 12,
        windows: vec![32, 128],
        reps: 3,
    };
    let args: Vec<String> = std::env::args().collect();
    let mut i = 1;
    while i < args.len() {
        let v = args.get(i + 1).cloned().unwrap_or_default();
        match args[i].as_str() {
            "--delays" => o.delays = v.split(',').map(|d| d.parse().unwrap()).collect(),
            "--commits" => o.commits = v.parse().unwrap(),
            "--secs" => o.secs = v.parse().unwrap(),
            "--clients" => o.clients = v.parse().unwrap(),
            "--windows" => o.windows = v.split(',').map(|w| w.parse().unwrap()).collect(),
            "--reps" => o.reps = v.parse().unwrap(),
            "--no-latency" => {
                o.latency = false;
                i += 1;
                continue;
            }
            _ => {
                i += 1;
                continue;
            }
        }
        i += 2;
    }
    o
}

/// A client of user `sub`; its commits bump the counter named after the user (ids are
/// global: another user's counter of the same id would be invisible, and taken).
fn client(url: &str, sub: &str) -> Client {
    let token = auth::mint_hs256(SECRET, &auth::dev_claims(sub, 3600, None, None)).unwrap();
    let mut o = ClientOptions::new(url, &token, &format!("{sub}-c"));
    o.auth = obj([("sub", sub.into())]);
    o.schema = Some(SCHEMA.to_owned());
    Client::start(o).unwrap()
}

fn pct(v: &mut [Duration], q: f64) -> f64 {
    v.sort();
    let i = ((v.len() as f64 * q).ceil() as usize).clamp(1, v.len()) - 1;
    v[i].as_secs_f64() * 1000.0
}

/// A deployment of `regions` regions on 3 members with `delay` one way between
/// members.
fn deployment(dir: &std::path::Path, delay: u64, regions: usize) -> Deployment {
    let mut d = Deployment::new(dir, 3, Duration::from_millis(delay), SCHEMA, 1);
    d.args = [
        "--commits-per-sec",
        "0",
        "--frames-per-sec",
        "0",
        "--compact-every-secs",
        "0",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    for k in 0..regions {
        let i = d.add_region(&format!("r{}", k + 1));
        d.start_region(i, &[], &[]).expect("a region starts");
    }
    d
}

fn latency(rt: &tokio::runtime::Runtime, delay: u64, o: &Opts) {
    let dir = cluster::TestDir::new(&format!("bench-latency-{delay}"));
    let d = deployment(&dir.0, delay, 3);
    let leader = d.etcd.leader();
    let _g = rt.enter();
    let clients: Vec<Arc<Client>> = d
        .regions
        .iter()
        .enumerate()
        .map(|(k, r)| Arc::new(client(&r.url(), &format!("u{k}"))))
        .collect();
    // Warm up: each client connects and commits once.
    for c in &clients {
        let id = c.replica().client_id().to_owned();
        c.call("bump", obj([("id", id.into())])).unwrap();
        assert!(rt.block_on(c.wait_synced(Duration::from_secs(30))));
        c.take_events();
    }
    let commits = o.commits;
    let handles: Vec<_> = clients
        .iter()
        .map(|c| {
            let c = c.clone();
            let h = rt.handle().clone();
            std::thread::spawn(move || {
                let _g = h.enter();
                let mut lat = Vec::with_capacity(commits);
                for _ in 0..commits {
                    let t = Instant::now();
                    let id = c.replica().client_id().to_owned();
                    let seq = c.call("bump", obj([("id", id.into())])).unwrap().seq;
                    let ok = h.block_on(c.wait_until(Duration::from_secs(30), |r| {
                        !r.pending().iter().any(|p| p.seq == seq)
                    }));
                    assert!(ok, "a commit was not confirmed");
                    lat.push(t.elapsed());
                    for e in c.take_events() {
                        if let Event::Rejected { code, .. } = e {
                            panic!("rejected: {code}");
                        }
                    }
                }
                lat
            })
        })
        .collect();
    let warren: Vec<Vec<Duration>> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    // The peer: the same compare-and-swap append, straight to each member with etcd's
    // client, without Warren (one member at a time).
    let peer: Vec<Vec<Duration>> = (0..3).map(|k| raw_appends(&d, k, commits)).collect();
    println!("\n{delay} ms one way between etcd members ({commits} sequential commits per client, the three clients at once; the peer: {commits} sequential compare-and-swap puts of 200 bytes to the region's own member, alone):");
    println!("| client on | Warren commit p50 | p99 | max | etcd append alone p50 | p99 | Warren / etcd (p50) |");
    println!("|---|---|---|---|---|---|---|");
    for (k, (mut lat, mut raw)) in warren.into_iter().zip(peer).enumerate() {
        let mark = if leader == Some(k) {
            " (its member leads)"
        } else {
            ""
        };
        let (p50, raw50) = (pct(&mut lat, 0.5), pct(&mut raw, 0.5));
        println!(
            "| r{}{mark} | {p50:.0} ms | {:.0} ms | {:.0} ms | {raw50:.0} ms | {:.0} ms | {:.2} |",
            k + 1,
            pct(&mut lat, 0.99),
            pct(&mut lat, 1.0),
            pct(&mut raw, 0.99),
            p50 / raw50
        );
    }
    // Every commit counted once: each counter equals its client's bumps.
    for c in &clients {
        let id = c.replica().client_id().to_owned();
        let n = c.query(&format!("Counter.byId(\"{id}\")?.n ?? 0")).unwrap();
        assert_eq!(
            n,
            warren_core::Value::Int(commits as i64 + 1),
            "{id}'s counter"
        );
    }
    drop(clients);
    drop(d);
    dir.remove();
}

/// `n` sequential compare-and-swap puts (the shape of a region's append) to member
/// `k`, through the region's own route; their latencies.
fn raw_appends(d: &Deployment, k: usize, n: usize) -> Vec<Duration> {
    use warren_server::log::etcd::{Compare, EtcdClient, EtcdOptions, Op, Txn};
    let client = EtcdClient::new(&d.regions[k].etcd[..1], EtcdOptions::default()).unwrap();
    let key = format!("/bench/peer/{k}").into_bytes();
    let mut prev = 0;
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let txn = Txn {
            compare: vec![Compare::ModRevision(key.clone(), prev)],
            success: vec![Op::Put {
                key: key.clone(),
                value: vec![7; 200],
                lease: 0,
            }],
            failure: vec![],
        };
        let t = Instant::now();
        let r = client.txn_once(0, &txn).expect("an append");
        out.push(t.elapsed());
        assert!(r.succeeded, "the peer's compare failed");
        prev = r.revision;
    }
    out
}

/// One throughput client: the sync protocol over a raw connection (no replica, so the
/// client's own work stays small), keeping `window` commits in flight until `until`,
/// then draining. Returns the commits confirmed before `until`, and checks its
/// counter against every commit it saw confirmed.
async fn raw_client(url: String, sub: String, window: usize, until: Instant) -> u64 {
    use warren_core::exec::Op;
    use warren_core::protocol::{ClientCommit, ClientFrame, CommitResult, ServerFrame};
    use warren_server::client::RawConnection;
    let token = auth::mint_hs256(SECRET, &auth::dev_claims(&sub, 3600, None, None)).unwrap();
    let hello = |id: &str| ClientFrame::Hello {
        client_id: id.to_owned(),
        token: token.clone(),
        schema_version: String::new(),
        outbox_from: 0,
        partitions: vec![],
    };
    let mut c = RawConnection::connect(&url).await.expect("connect");
    c.send(&hello("tp")).await.unwrap();
    let wait = Duration::from_secs(30);
    let welcome = c.recv(wait).await;
    assert!(
        matches!(welcome, Some(ServerFrame::Welcome { .. })),
        "{welcome:?}"
    );
    let bump = |seq: u64| ClientCommit {
        seq,
        schema_version: String::new(),
        op: Op::Call {
            function: "bump".into(),
            args: obj([("id", sub.as_str().into())]),
        },
    };
    let (mut next, mut inflight, mut confirmed, mut in_time) = (1u64, 0usize, 0u64, 0u64);
    loop {
        let sending = Instant::now() < until;
        if sending && inflight < window {
            let commits: Vec<ClientCommit> = (0..window - inflight)
                .map(|i| bump(next + i as u64))
                .collect();
            next += commits.len() as u64;
            inflight = window;
            c.send(&ClientFrame::Push { commits }).await.unwrap();
        }
        if !sending && inflight == 0 {
            break;
        }
        match c.recv(wait).await {
            Some(ServerFrame::Outcome { result, .. }) => {
                assert!(
                    matches!(result, CommitResult::Committed { .. }),
                    "{result:?}"
                );
                inflight -= 1;
                confirmed += 1;
                if Instant::now() < until {
                    in_time += 1;
                }
            }
            Some(_) => {}
            None => panic!("the connection to {url} ended"),
        }
    }
    // Read back: the counter counts every confirmed commit once.
    let mut check = RawConnection::connect(&url).await.unwrap();
    check.send(&hello("check")).await.unwrap();
    let frames = check
        .recv_until(wait, |f| matches!(f, ServerFrame::Snapshot { .. }))
        .await;
    let n = frames
        .iter()
        .find_map(|f| match f {
            ServerFrame::Snapshot { docs, .. } => docs.first().map(|d| d.data.get("n").clone()),
            _ => None,
        })
        .expect("the counter's partition");
    assert_eq!(
        n,
        warren_core::Value::Int(confirmed as i64),
        "{sub}'s counter"
    );
    in_time
}

fn throughput(
    rt: &tokio::runtime::Runtime,
    delay: u64,
    regions: usize,
    window: usize,
    o: &Opts,
) -> f64 {
    let dir = cluster::TestDir::new(&format!("bench-tp-{delay}-{regions}"));
    let d = deployment(&dir.0, delay, regions);
    let started = Instant::now();
    let until = started + Duration::from_secs(o.secs);
    let tasks: Vec<_> = (0..o.clients)
        .map(|i| {
            rt.spawn(raw_client(
                d.regions[i % regions].url(),
                format!("t{i}"),
                window,
                until,
            ))
        })
        .collect();
    let confirmed: u64 = rt.block_on(async {
        let mut n = 0;
        for t in tasks {
            n += t.await.expect("a throughput client");
        }
        n
    });
    let rate = confirmed as f64 / o.secs as f64;
    eprintln!(
        "  {regions} region(s), {window} in flight per client: {rate:.0} commits/s; the etcd leader is member {:?} (region k's own member is k - 1)",
        d.etcd.leader()
    );
    drop(d);
    dir.remove();
    rate
}

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        println!("the regions benchmark runs with `cargo bench -p warren-server --bench regions`");
        return;
    }
    cluster::etcd::require_etcd();
    let o = opts();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    if o.latency {
        for &delay in &o.delays {
            latency(&rt, delay, &o);
        }
    }
    let delay = o.delays.first().copied().unwrap_or(50);
    println!(
        "\nThroughput, {delay} ms one way between members, {} clients, {} s a run, median of {} runs (each run's figure in brackets):",
        o.clients, o.secs, o.reps
    );
    println!("| commits in flight per client | 1 region | 3 regions | 3 / 1 |");
    println!("|---|---|---|---|");
    for &window in &o.windows {
        let mut medians = Vec::new();
        let mut runs = Vec::new();
        for regions in [1, 3] {
            let mut r: Vec<f64> = (0..o.reps)
                .map(|_| throughput(&rt, delay, regions, window, &o))
                .collect();
            runs.push(
                r.iter()
                    .map(|x| format!("{x:.0}"))
                    .collect::<Vec<_>>()
                    .join(", "),
            );
            r.sort_by(|a, b| a.total_cmp(b));
            medians.push(r[r.len() / 2]);
        }
        println!(
            "| {window} | {:.0} commits/s ({}) | {:.0} commits/s ({}) | {:.2} |",
            medians[0],
            runs[0],
            medians[1],
            runs[1],
            medians[1] / medians[0]
        );
    }
}
