//! The gateway's limits and operations against a real server: per-identity rate limits
//! and connection counts, argument sizes, limits that refuse to start, and a graceful
//! stop that tells clients and loses nothing. (Hostile traffic at scale, memory and
//! oversized frames: `sync-server/tests/hostile.rs`.)

use std::time::Duration;

use warren_core::exec::Op;
use warren_core::protocol::{codes, ClientCommit, ClientFrame, CommitResult, ServerFrame};
use warren_core::value::obj;
use warren_core::Value;
use warren_e2e::*;
use warren_server::client::RawConnection;
use warren_server::gateway::GatewayLimits;

fn hello(client_id: &str, sub: &str) -> ClientFrame {
    ClientFrame::Hello {
        client_id: client_id.into(),
        token: token(sub),
        schema_version: String::new(),
        outbox_from: 0,
        partitions: vec![],
    }
}

fn bumps(counter: &str, seqs: std::ops::RangeInclusive<u64>) -> ClientFrame {
    ClientFrame::Push {
        commits: seqs
            .map(|seq| ClientCommit {
                seq,
                schema_version: String::new(),
                op: Op::Call {
                    function: "bump".into(),
                    args: obj([("id", counter.into())]),
                },
            })
            .collect(),
    }
}

/// Connects and says Hello; returns the connection after its `Welcome`.
async fn connect(server: &TestServer, client_id: &str, sub: &str) -> RawConnection {
    let mut raw = server.raw().await;
    raw.send(&hello(client_id, sub)).await.unwrap();
    match raw.recv(WAIT).await {
        Some(ServerFrame::Welcome { .. }) => raw,
        other => panic!("{other:?}"),
    }
}

/// The error that ends a connection (skipping other frames), and that it then closes.
async fn error_of(raw: &mut RawConnection) -> String {
    let frames = raw
        .recv_until(WAIT, |f| matches!(f, ServerFrame::Error { .. }))
        .await;
    let code = match frames.last() {
        Some(ServerFrame::Error { code, .. }) => code.clone(),
        other => panic!("no Error frame: {other:?}"),
    };
    assert!(
        raw.recv(Duration::from_secs(5)).await.is_none(),
        "still open after {code}"
    );
    code
}

fn committed(frames: &[ServerFrame]) -> Vec<u64> {
    frames
        .iter()
        .filter_map(|f| match f {
            ServerFrame::Outcome {
                seq,
                result: CommitResult::Committed { .. },
            } => Some(*seq),
            _ => None,
        })
        .collect()
}

async fn start(name: &str, limits: GatewayLimits) -> TestServer {
    let mut c = config(temp_dir(name), hs256());
    c.gateway = limits;
    TestServer::start_with(c).await
}

async fn counter(server: &TestServer, sub: &str, id: &str) -> Value {
    let (s, body) = http_json(
        &server.http(),
        "POST",
        "/v1/pull",
        Some(&token(sub)),
        &serde_json::json!({}),
    )
    .await;
    assert_eq!(s, 200, "{body}");
    for snap in body["snapshots"].as_array().unwrap() {
        for d in snap["docs"].as_array().unwrap() {
            if d["collection"] == "Counter" && d["id"] == id {
                return Value::Int(d["data"]["n"].as_i64().unwrap());
            }
        }
    }
    Value::Null
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commit_rates_are_per_identity_and_shared_by_its_connections() {
    // 10 commits at once, then one a second: slow enough that the test's own timing
    // cannot refill a bucket by more than a commit or two. A request waits half a
    // second at most for its budget.
    let server = start(
        "rate-commits",
        GatewayLimits {
            max_commits_per_push: 10,
            commits_per_sec: 1,
            commit_burst: 10,
            max_wait: Duration::from_millis(500),
            ..GatewayLimits::default()
        },
    )
    .await;
    let mut a = connect(&server, "ann-1", "ann").await;
    a.send(&bumps("n", 1..=6)).await.unwrap();
    let frames = a
        .recv_until(WAIT, |f| matches!(f, ServerFrame::Outcome { seq: 6, .. }))
        .await;
    assert_eq!(committed(&frames), (1..=6).collect::<Vec<_>>());

    // A second connection of ann draws on the same budget: 6 more would wait longer
    // than it may, and none of them is applied.
    let mut b = connect(&server, "ann-2", "ann").await;
    b.send(&bumps("m", 1..=6)).await.unwrap();
    assert_eq!(error_of(&mut b).await, codes::RATE_LIMITED);
    // Over HTTP too (the budget covers both), with 429.
    let push = |n: u64| {
        serde_json::json!({ "client_id": "curl", "commits": (1..=n).map(|seq| serde_json::json!(
            { "seq": seq, "function": "bump", "args": { "id": "h" } })).collect::<Vec<_>>() })
    };
    let (s, body) = http_json(
        &server.http(),
        "POST",
        "/v1/push",
        Some(&token("ann")),
        &push(7),
    )
    .await;
    assert_eq!((s, body["code"].as_str()), (429, Some(codes::RATE_LIMITED)));
    // bob has his own budget.
    let mut bob = connect(&server, "bob-1", "bob").await;
    bob.send(&bumps("bn", 1..=6)).await.unwrap();
    let frames = bob
        .recv_until(WAIT, |f| matches!(f, ServerFrame::Outcome { seq: 6, .. }))
        .await;
    assert_eq!(committed(&frames).len(), 6);
    // ann's first connection was not affected, and what still fits passes.
    a.send(&bumps("n", 7..=8)).await.unwrap();
    let frames = a
        .recv_until(WAIT, |f| matches!(f, ServerFrame::Outcome { seq: 8, .. }))
        .await;
    assert_eq!(committed(&frames), vec![7, 8]);

    assert_eq!(counter(&server, "ann", "n").await, Value::Int(8));
    assert_eq!(
        counter(&server, "ann", "m").await,
        Value::Null,
        "nothing of a refused push"
    );
    assert_eq!(counter(&server, "ann", "h").await, Value::Null);
    let m = server.running.as_ref().unwrap().metrics.render();
    assert!(
        m.contains("warren_rate_limited_total{budget=\"commits\"} 2"),
        "{m}"
    );
    assert!(
        m.contains("warren_errors_sent_total{code=\"RATE_LIMITED\"} 1"),
        "{m}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frame_rates_are_limited_per_identity() {
    let server = start(
        "rate-frames",
        GatewayLimits {
            frames_per_sec: 1,
            frame_burst: 6,
            max_wait: Duration::from_millis(200),
            ..GatewayLimits::default()
        },
    )
    .await;
    // Hello takes one; four pings pass.
    let mut a = connect(&server, "ann-1", "ann").await;
    for nonce in 1..=4 {
        a.send(&ClientFrame::Ping { nonce }).await.unwrap();
        assert!(matches!(a.recv(WAIT).await, Some(ServerFrame::Pong { nonce: n }) if n == nonce));
    }
    // The same identity on another connection: its Hello takes the last token, its
    // first ping is over.
    let mut b = connect(&server, "ann-2", "ann").await;
    b.send(&ClientFrame::Ping { nonce: 9 }).await.unwrap();
    assert_eq!(error_of(&mut b).await, codes::RATE_LIMITED);
    // A new Hello of ann is over the budget too; bob is not.
    let mut c = server.raw().await;
    c.send(&hello("ann-3", "ann")).await.unwrap();
    assert_eq!(error_of(&mut c).await, codes::RATE_LIMITED);
    let mut bob = connect(&server, "bob-1", "bob").await;
    bob.send(&ClientFrame::Ping { nonce: 1 }).await.unwrap();
    assert!(matches!(
        bob.recv(WAIT).await,
        Some(ServerFrame::Pong { nonce: 1 })
    ));
}

/// One client writing one commit at a time, each awaited, faster than its identity's
/// frame and commit rates: it is slowed to them, never cut off, and loses nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_writer_over_its_rates_is_slowed_not_cut_off() {
    let server = start(
        "rate-slowed",
        GatewayLimits {
            max_commits_per_push: 5,
            commits_per_sec: 40,
            commit_burst: 5,
            frames_per_sec: 40,
            frame_burst: 5,
            ..GatewayLimits::default()
        },
    )
    .await;
    let mut a = connect(&server, "ann-1", "ann").await;
    let t = std::time::Instant::now();
    for seq in 1..=60 {
        a.send(&bumps("n", seq..=seq)).await.unwrap();
        let frames = a
            .recv_until(WAIT, |f| {
                matches!(f, ServerFrame::Outcome { seq: s, .. } if *s == seq)
                    || matches!(f, ServerFrame::Error { .. })
            })
            .await;
        assert_eq!(committed(&frames), vec![seq], "{frames:?}");
    }
    // 60 frames and commits at 40 a second after the first 5: at least 1.3 s.
    let took = t.elapsed();
    assert!(took >= Duration::from_millis(1300), "not slowed: {took:?}");
    assert_eq!(counter(&server, "ann", "n").await, Value::Int(60));
    let m = server.running.as_ref().unwrap().metrics.render();
    assert!(!m.contains("warren_rate_limited_total{"), "{m}");
}

/// Cost, not count: mallory's commits each burn their whole fuel budget; her commits
/// wait for her region-time budget in her own session, and bob's commit, sent after
/// her push, is not queued behind them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expensive_identity_waits_and_the_others_do_not() {
    let mut c = config(temp_dir("rate-cost"), hs256());
    c.schema.push_str(
        "\nfunction burn() { range(200).map(i => range(5000).reduce((a, x) => a + x, 0)) }\n",
    );
    c.limits.fuel = 200_000;
    c.gateway = GatewayLimits {
        cost_ms_per_sec: 40,
        cost_burst_ms: 20,
        ..GatewayLimits::default()
    };
    let server = TestServer::start_with(c).await;
    let mut m = connect(&server, "mallory-1", "mallory").await;
    let burns = ClientFrame::Push {
        commits: (1..=20)
            .map(|seq| ClientCommit {
                seq,
                schema_version: String::new(),
                op: Op::Call {
                    function: "burn".into(),
                    args: Value::Null,
                },
            })
            .collect(),
    };
    m.send(&burns).await.unwrap();
    // Her first commits run (the burst), the rest wait.
    let frames = m
        .recv_until(WAIT, |f| matches!(f, ServerFrame::Outcome { seq: 1, .. }))
        .await;
    assert!(
        matches!(
            frames.last(),
            Some(ServerFrame::Outcome { result: CommitResult::Rejected { code, .. }, .. }) if code == "FUEL_EXHAUSTED"
        ),
        "{frames:?}"
    );
    let t = std::time::Instant::now();
    let mut bob = connect(&server, "bob-1", "bob").await;
    bob.send(&bumps("b", 1..=1)).await.unwrap();
    let frames = bob
        .recv_until(WAIT, |f| matches!(f, ServerFrame::Outcome { seq: 1, .. }))
        .await;
    let bob_at = match frames.last() {
        Some(ServerFrame::Outcome {
            result: CommitResult::Committed { position, .. },
            ..
        }) => *position,
        other => panic!("{other:?}"),
    };
    let bob_took = t.elapsed();
    // mallory's 20 commits would hold the region for seconds; bob's ran after a few
    // of them at most.
    assert!(
        bob_at <= 10,
        "bob's commit came after {} of mallory's",
        bob_at - 1
    );
    assert!(bob_took < Duration::from_secs(2), "bob waited {bob_took:?}");
    let (debt, in_flight) = server
        .running
        .as_ref()
        .unwrap()
        .identities()
        .cost_of("mallory");
    assert!(in_flight <= 8);
    // She is slowed, not cut off: her connection is still open, her commits go on.
    let frames = m
        .recv_until(WAIT, |f| matches!(f, ServerFrame::Outcome { seq: 8, .. }))
        .await;
    assert!(!frames
        .iter()
        .any(|f| matches!(f, ServerFrame::Error { .. })));
    println!("mallory's cost bucket when bob committed: {debt:.0} µs, {in_flight} in flight; bob at position {bob_at} after {bob_took:?}");
}

/// Quotas per identity, over the wire: the commit that would create a third
/// partition is rejected with `IDENTITY_QUOTA_EXCEEDED`, the connection stays, another
/// identity is not affected, and a restart (replaying nothing, counts from the store)
/// keeps deciding the same way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quotas_reject_with_a_stable_code_and_survive_a_restart() {
    let mut c = config(temp_dir("quotas"), hs256());
    c.limits.quotas = warren_core::quota::Quotas {
        partitions: 2,
        documents: 5,
        bytes: 0,
    };
    let mut server = TestServer::start_with(c).await;
    let todo = |seq: u64, owner: &str, id: &str| {
        ClientCommit {
        seq,
        schema_version: String::new(),
        op: Op::Run {
            source: format!(
                "Todo.create({{ id: \"{id}\", owner: \"{owner}\", title: \"t\", done: false, created: 1 }})"
            ),
        },
    }
    };
    let team = |seq: u64, id: &str, member: &str| ClientCommit {
        seq,
        schema_version: String::new(),
        op: Op::Run {
            source: format!("Team.create({{ id: \"{id}\", members: [\"{member}\"] }})"),
        },
    };
    let mut a = connect(&server, "ann-1", "ann").await;
    a.send(&ClientFrame::Push {
        commits: vec![
            todo(1, "ann", "a1"),
            team(2, "t1", "ann"),
            team(3, "t2", "ann"),
            todo(4, "ann", "a2"),
        ],
    })
    .await
    .unwrap();
    let frames = a
        .recv_until(WAIT, |f| matches!(f, ServerFrame::Outcome { seq: 4, .. }))
        .await;
    assert_eq!(committed(&frames), vec![1, 2, 4]);
    let rejected = frames.iter().find_map(|f| match f {
        ServerFrame::Outcome {
            seq: 3,
            result: CommitResult::Rejected { code, message },
        } => Some((code.clone(), message.clone())),
        _ => None,
    });
    let (code, message) = rejected.expect("seq 3 rejected");
    assert_eq!(code, "IDENTITY_QUOTA_EXCEEDED", "{message}");
    assert!(message.contains("partitions"), "{message}");
    // bob has his own counts.
    let mut b = connect(&server, "bob-1", "bob").await;
    b.send(&ClientFrame::Push {
        commits: vec![team(1, "b1", "bob"), team(2, "b2", "bob")],
    })
    .await
    .unwrap();
    let frames = b
        .recv_until(WAIT, |f| matches!(f, ServerFrame::Outcome { seq: 2, .. }))
        .await;
    assert_eq!(committed(&frames), vec![1, 2]);
    drop((a, b));
    server.restart().await;
    let mut a = connect(&server, "ann-1", "ann").await;
    a.send(&ClientFrame::Push {
        commits: vec![team(5, "t3", "ann"), todo(6, "ann", "a3")],
    })
    .await
    .unwrap();
    let frames = a
        .recv_until(WAIT, |f| matches!(f, ServerFrame::Outcome { seq: 6, .. }))
        .await;
    assert_eq!(committed(&frames), vec![6], "{frames:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_per_identity_are_limited() {
    let server = start(
        "conns",
        GatewayLimits {
            max_connections_per_identity: 2,
            ..GatewayLimits::default()
        },
    )
    .await;
    let a1 = connect(&server, "a1", "ann").await;
    let _a2 = connect(&server, "a2", "ann").await;
    let mut a3 = server.raw().await;
    a3.send(&hello("a3", "ann")).await.unwrap();
    assert_eq!(error_of(&mut a3).await, codes::TOO_MANY_CONNECTIONS);
    let _b = connect(&server, "b1", "bob").await;
    // A closed connection gives its place back.
    drop(a1);
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let mut raw = server.raw().await;
        raw.send(&hello("a4", "ann")).await.unwrap();
        match raw.recv(WAIT).await {
            Some(ServerFrame::Welcome { .. }) => break,
            Some(ServerFrame::Error { code, .. }) if code == codes::TOO_MANY_CONNECTIONS => {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "the place was never given back"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            other => panic!("{other:?}"),
        }
    }
    let m = server.running.as_ref().unwrap().metrics.render();
    assert!(
        m.contains("warren_connections_refused_total{code=\"TOO_MANY_CONNECTIONS\"}"),
        "{m}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_arguments_are_rejected_with_argument_too_large() {
    let server = TestServer::start("args").await;
    let mut raw = connect(&server, "ann-big", "ann").await;
    let big = "x".repeat(70 * 1024);
    raw.send(&ClientFrame::Push {
        commits: vec![
            ClientCommit {
                seq: 1,
                schema_version: String::new(),
                op: Op::Call {
                    function: "addTodo".into(),
                    args: obj([
                        ("id", "t".into()),
                        ("title", big.clone().into()),
                        ("created", Value::Int(1)),
                    ]),
                },
            },
            ClientCommit {
                seq: 2,
                schema_version: String::new(),
                op: Op::Run {
                    source: format!("\"{big}\""),
                },
            },
        ],
    })
    .await
    .unwrap();
    let frames = raw
        .recv_until(WAIT, |f| matches!(f, ServerFrame::Outcome { seq: 2, .. }))
        .await;
    let rejected: Vec<(u64, String)> = frames
        .iter()
        .filter_map(|f| match f {
            ServerFrame::Outcome {
                seq,
                result: CommitResult::Rejected { code, .. },
            } => Some((*seq, code.clone())),
            _ => None,
        })
        .collect();
    assert_eq!(
        rejected,
        vec![
            (1, "ARGUMENT_TOO_LARGE".into()),
            (2, "ARGUMENT_TOO_LARGE".into())
        ]
    );
    // An answer, not a protocol error: the connection is still open.
    raw.send(&ClientFrame::Ping { nonce: 5 }).await.unwrap();
    assert!(matches!(
        raw.recv(WAIT).await,
        Some(ServerFrame::Pong { nonce: 5 })
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_that_do_not_fit_together_refuse_to_start() {
    for (limits, words) in [
        (
            GatewayLimits {
                max_frame_bytes: 64 << 20,
                ..GatewayLimits::default()
            },
            "max_frame_bytes",
        ),
        (
            GatewayLimits {
                commit_burst: 10,
                ..GatewayLimits::default()
            },
            "commit_burst",
        ),
    ] {
        let mut c = config(temp_dir("bad-limits"), hs256());
        c.gateway = limits;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let e = match warren_server::server::start(c.clone(), listener).await {
            Err(e) => e.to_string(),
            Ok(_) => panic!("started with {words} out of range"),
        };
        assert!(e.contains(words), "{e}");
        let _ = std::fs::remove_dir_all(&c.data_dir);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_graceful_stop_tells_clients_and_loses_nothing() {
    let mut server = TestServer::start("graceful").await;
    // A client that never reads, with a partition that changes on every commit.
    let mut stuck = connect(&server, "ann-stuck", "ann").await;
    let mut raw = connect(&server, "ann-pusher", "ann").await;
    // Push until the stop, without waiting for outcomes.
    let running = server.running.take().unwrap();
    let mut seq = 0;
    for _ in 0..10 {
        raw.send(&bumps("n", seq + 1..=seq + 20)).await.unwrap();
        seq += 20;
    }
    // Stop once some are acknowledged, with more in flight.
    let mut seen_committed = committed(
        &raw.recv_until(WAIT, |f| matches!(f, ServerFrame::Outcome { seq: 20, .. }))
            .await,
    );
    assert_eq!(seen_committed.len(), 20);
    let stop = tokio::spawn(running.stop());
    let mut error = None;
    let deadline = tokio::time::Instant::now() + WAIT;
    // Keep pushing while the server stops; read everything until it ends.
    loop {
        if raw.send(&bumps("n", seq + 1..=seq + 20)).await.is_ok() {
            seq += 20;
        }
        match raw.recv(Duration::from_millis(50)).await {
            Some(ServerFrame::Outcome {
                seq: s,
                result: CommitResult::Committed { .. },
            }) => seen_committed.push(s),
            Some(ServerFrame::Error { code, .. }) => {
                error = Some(code);
                break;
            }
            Some(_) => {}
            None if stop.is_finished() => break,
            None => {}
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the stop did not end the connection"
        );
    }
    assert_eq!(error.as_deref(), Some(codes::SHUTTING_DOWN));
    tokio::time::timeout(Duration::from_secs(10), stop)
        .await
        .expect("the stop waited for a client that does not read")
        .unwrap()
        .expect("a clean stop");
    drop(stuck.recv(Duration::from_millis(1)).await);

    // Restarted: every acknowledged commit is there, each once, and the counter is
    // exactly the number of commits the server applied.
    server.restart().await;
    let mut raw = server.raw().await;
    raw.send(&hello("ann-pusher", "ann")).await.unwrap();
    let applied = match raw.recv(WAIT).await {
        Some(ServerFrame::Welcome { applied_seq, .. }) => applied_seq,
        other => panic!("{other:?}"),
    };
    let acked = seen_committed.iter().copied().max().unwrap_or(0);
    assert!(applied >= acked, "acknowledged {acked}, applied {applied}");
    assert_eq!(
        counter(&server, "ann", "n").await,
        Value::Int(applied as i64)
    );
    // The rest can be sent again and applies once.
    if applied < seq {
        raw.send(&bumps("n", applied + 1..=seq.min(applied + 20)))
            .await
            .unwrap();
        let last = seq.min(applied + 20);
        raw.recv_until(
            WAIT,
            |f| matches!(f, ServerFrame::Outcome { seq: s, .. } if *s == last),
        )
        .await;
        assert_eq!(counter(&server, "ann", "n").await, Value::Int(last as i64));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_readiness_and_metrics() {
    let server = TestServer::start("ops").await;
    let ann = server.client("ann", "ann-ops");
    ann.call("bump", obj([("id", "n".into())])).unwrap();
    assert!(ann.wait_synced(WAIT).await);
    for (path, status) in [("/healthz", 200), ("/readyz", 200)] {
        let (s, _) = http_json(&server.http(), "GET", path, None, &serde_json::json!(null)).await;
        assert_eq!(s, status, "{path}");
    }
    let needles = [
        "warren_commits_total{outcome=\"committed\"} 1",
        "warren_log_batch_size_count 1",
        "warren_log_batch_size_bucket{le=\"1\"} 1",
        "warren_log_fsync_seconds_count 1",
        "warren_apply_seconds_count 1",
        "warren_connections 1",
        "# TYPE warren_rate_limited_total counter",
        "# TYPE warren_errors_sent_total counter",
    ];
    // The region records a batch's figures after it sent the batch's frames: the
    // client may see its outcome a moment before they are there.
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let m = server.running.as_ref().unwrap().metrics.render();
        let missing: Vec<&str> = needles.iter().copied().filter(|n| !m.contains(n)).collect();
        if missing.is_empty() {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{missing:?} not in\n{m}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[test]
fn every_protocol_code_is_documented() {
    let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/PROTOCOL.md"))
        .unwrap();
    for code in codes::ALL {
        assert!(
            doc.contains(&format!("| `{code}` |")),
            "{code} has no row in docs/PROTOCOL.md's error codes"
        );
    }
}
