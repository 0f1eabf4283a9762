//! Sync end to end: a real server (log fsynced to disk, redb state, axum on a real
//! socket) and native clients driving the engine's replica.

use std::time::Duration;

use warren_core::exec::Op;
use warren_core::protocol::{in_version, ClientCommit, ClientFrame, CommitResult, ServerFrame};
use warren_core::replica::Event;
use warren_core::value::obj;
use warren_core::{ErrorCode, Value};
use warren_e2e::*;

fn strs(xs: &[&str]) -> Value {
    Value::Array(xs.iter().map(|s| Value::from(*s)).collect())
}

/// Every partition named in what a client received (snapshots, effects, drops).
fn partitions_seen(frames: &[ServerFrame]) -> Vec<String> {
    let mut out = Vec::new();
    for f in frames {
        match f {
            ServerFrame::Snapshot {
                partition, docs, ..
            } if !docs.is_empty() => out.push(partition.clone()),
            ServerFrame::Effects { writes, .. } => {
                out.extend(writes.iter().map(|w| w.partition.clone()))
            }
            _ => {}
        }
    }
    out.sort();
    out.dedup();
    out
}

fn hello(client_id: &str, token: &str) -> ClientFrame {
    ClientFrame::Hello {
        client_id: client_id.into(),
        token: token.into(),
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

fn run(seq: u64, source: &str) -> ClientCommit {
    ClientCommit {
        seq,
        schema_version: String::new(),
        op: Op::Run {
            source: source.into(),
        },
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_user_sees_only_their_partition() {
    let server = TestServer::start("partitions").await;
    let ann = server.client("ann", "ann-laptop");
    let bob = server.client("bob", "bob-phone");
    for i in 0..3 {
        ann.call(
            "addTodo",
            obj([
                ("id", format!("a{i}").into()),
                ("title", "ann's".into()),
                ("created", Value::Int(i)),
            ]),
        )
        .unwrap();
        bob.call(
            "addTodo",
            obj([
                ("id", format!("b{i}").into()),
                ("title", "bob's".into()),
                ("created", Value::Int(i)),
            ]),
        )
        .unwrap();
    }
    assert!(ann.wait_synced(WAIT).await && bob.wait_synced(WAIT).await);
    // Both see the other's commits arrive as nothing at all.
    assert!(
        ann.wait_until(WAIT, |r| r.query("Todo.all().count()").unwrap()
            == Value::Int(3))
            .await
    );
    assert_eq!(
        ann.query("Todo.all().map(.id)").unwrap(),
        strs(&["a0", "a1", "a2"])
    );
    assert_eq!(
        bob.query("Todo.all().map(.id)").unwrap(),
        strs(&["b0", "b1", "b2"])
    );

    // bob's update of ann's document is refused at once, on bob's side: he cannot even
    // see it, and nothing is queued.
    let e = bob.call("toggle", obj([("id", "a0".into())])).unwrap_err();
    assert_eq!(e.code, ErrorCode::Aborted);
    let e = bob
        .run(r#"Todo.create({ id: "evil", owner: "ann", created: 0 })"#)
        .unwrap_err();
    assert_eq!(e.code, ErrorCode::PermissionDenied);
    assert!(bob.replica().pending().is_empty());

    // A hand-built client with bob's token skips the client's checks: the server
    // refuses the same writes.
    let mut raw = server.raw().await;
    raw.send(&hello("bob-raw", &token("bob"))).await.unwrap();
    raw.send(&ClientFrame::Push {
        commits: vec![
            run(
                1,
                r#"Todo.create({ id: "evil", owner: "ann", created: 0 })"#,
            ),
            call(2, "toggle", obj([("id", "a0".into())])),
            run(3, r#"Todo.byId("a1").update({ title: "mine" })"#),
        ],
    })
    .await
    .unwrap();
    let frames = raw
        .recv_until(WAIT, |f| matches!(f, ServerFrame::Outcome { seq: 3, .. }))
        .await;
    let codes: Vec<(u64, String)> = frames
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
        codes,
        vec![
            (1, "PERMISSION_DENIED".to_string()),
            (2, "ABORTED".to_string()),
            (3, "TYPE_ERROR".to_string())
        ]
    );
    // ann's documents are untouched, as ann sees them after a round trip.
    ann.call("toggle", obj([("id", "a2".into())])).unwrap();
    assert!(ann.wait_synced(WAIT).await);
    assert_eq!(
        ann.query("Todo.all().map(t => [t.id, t.title, t.done])")
            .unwrap(),
        Value::parse_json(r#"[["a0","ann's",false],["a1","ann's",false],["a2","ann's",true]]"#)
            .unwrap()
    );
    // bob never received anything of ann's partition, on any connection.
    assert_eq!(
        partitions_seen(&bob.received()),
        vec!["user:bob".to_string()]
    );
    assert!(partitions_seen(&frames).iter().all(|p| p != "user:ann"));
    assert_eq!(
        partitions_seen(&ann.received()),
        vec!["user:ann".to_string()]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_offline_commits_apply_once_in_order() {
    let server = TestServer::start("offline").await;
    let c = warren_server::client::Client::start_with(
        server.options("ann", "ann-offline"),
        Default::default(),
        false,
    )
    .unwrap();
    for i in 0..1000 {
        c.call(
            "addTodo",
            obj([
                ("id", format!("t{i:04}").into()),
                ("title", "x".into()),
                ("created", Value::Int(i)),
            ]),
        )
        .unwrap();
        c.call("bump", obj([("id", "n".into())])).unwrap();
    }
    assert_eq!(c.replica().pending().len(), 2000);
    assert_eq!(c.query("Counter.byId(\"n\").n").unwrap(), Value::Int(1000));
    c.set_online(true);
    assert!(
        c.wait_synced(Duration::from_secs(120)).await,
        "the outbox drained"
    );
    // Exactly once: the counter counts every bump once.
    assert_eq!(c.query("Counter.byId(\"n\").n").unwrap(), Value::Int(1000));
    let confirmed: Vec<(u64, u64)> = c
        .take_events()
        .into_iter()
        .filter_map(|e| match e {
            Event::Confirmed {
                seq,
                position: Some(p),
                ..
            } => Some((seq, p)),
            _ => None,
        })
        .collect();
    assert_eq!(confirmed.len(), 2000);
    // In order: positions increase with sequence numbers.
    assert!(confirmed
        .windows(2)
        .all(|w| w[0].0 < w[1].0 && w[0].1 < w[1].1));
    // The server agrees: ask it over HTTP.
    let (status, body) = http_json(
        &server.http(),
        "POST",
        "/v1/pull",
        Some(&token("ann")),
        &serde_json::json!({}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let docs = body["snapshots"][0]["docs"].as_array().unwrap();
    assert_eq!(
        docs.iter().filter(|d| d["collection"] == "Todo").count(),
        1000
    );
    let counter = docs.iter().find(|d| d["collection"] == "Counter").unwrap();
    assert_eq!(counter["data"]["n"], 1000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retransmitting_everything_after_a_drop_applies_nothing_twice() {
    let server = TestServer::start("retransmit").await;
    let commits: Vec<ClientCommit> = (1..=50)
        .map(|s| call(s, "bump", obj([("id", "n".into())])))
        .collect();
    // First connection: push everything, read a few outcomes, drop the connection.
    let mut raw = server.raw().await;
    raw.send(&hello("ann-raw", &token("ann"))).await.unwrap();
    raw.send(&ClientFrame::Push {
        commits: commits.clone(),
    })
    .await
    .unwrap();
    raw.recv_until(WAIT, |f| matches!(f, ServerFrame::Outcome { seq: 5, .. }))
        .await;
    drop(raw);
    // Second connection: the client does not know what landed, so it sends it all.
    let mut raw = server.raw().await;
    raw.send(&ClientFrame::Hello {
        client_id: "ann-raw".into(),
        token: token("ann"),
        schema_version: String::new(),
        outbox_from: 1,
        partitions: vec![],
    })
    .await
    .unwrap();
    raw.send(&ClientFrame::Push { commits }).await.unwrap();
    let frames = raw
        .recv_until(WAIT, |f| matches!(f, ServerFrame::Outcome { seq: 50, .. }))
        .await;
    let welcome_applied = frames.iter().find_map(|f| match f {
        ServerFrame::Welcome { applied_seq, .. } => Some(*applied_seq),
        _ => None,
    });
    assert!(welcome_applied.is_some());
    // Every outcome is a commit, the same one each time it is asked about: the counter
    // went 1, 2, ..., 50, once each.
    let mut results: std::collections::BTreeMap<u64, Value> = Default::default();
    for f in &frames {
        if let ServerFrame::Outcome { seq, result } = f {
            match result {
                CommitResult::Committed { result, .. } => {
                    if let Some(prev) = results.insert(*seq, result.get("n").clone()) {
                        assert_eq!(prev, *result.get("n"), "seq {seq} answered two ways");
                    }
                }
                other => panic!("seq {seq}: {other:?}"),
            }
        }
    }
    assert_eq!(results.len(), 50);
    for (seq, n) in &results {
        assert_eq!(*n, Value::Int(*seq as i64), "seq {seq}");
    }
    let (_, body) = http_json(
        &server.http(),
        "POST",
        "/v1/pull",
        Some(&token("ann")),
        &serde_json::json!({}),
    )
    .await;
    assert_eq!(body["snapshots"][0]["docs"][0]["data"]["n"], 50);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_offline_edits_converge_in_the_servers_order() {
    let server = TestServer::start("converge").await;
    let ann = server.client("ann", "ann-1");
    let bob = server.client("bob", "bob-1");
    ann.run(r#"Team.create({ id: "t", members: ["ann", "bob"] })"#)
        .unwrap();
    ann.run(r#"Task.create({ id: "k", team: "t", title: "draft", rev: 0 })"#)
        .unwrap();
    ann.run(r#"Task.create({ id: "j", team: "t", title: "plan", rev: 0 })"#)
        .unwrap();
    assert!(ann.wait_synced(WAIT).await);
    assert!(
        bob.wait_until(WAIT, |r| r.query("Task.all().count()").unwrap()
            == Value::Int(2))
            .await
    );
    ann.set_online(false);
    bob.set_online(false);
    // Both edit the same task offline. Last writer wins for `retitle`; `retitleIf` checks
    // the revision, so whichever comes second is refused.
    ann.call(
        "retitle",
        obj([("id", "k".into()), ("title", "ann's title".into())]),
    )
    .unwrap();
    bob.call(
        "retitle",
        obj([("id", "k".into()), ("title", "bob's title".into())]),
    )
    .unwrap();
    ann.call(
        "retitleIf",
        obj([
            ("id", "j".into()),
            ("title", "ann's plan".into()),
            ("rev", Value::Int(0)),
        ]),
    )
    .unwrap();
    bob.call(
        "retitleIf",
        obj([
            ("id", "j".into()),
            ("title", "bob's plan".into()),
            ("rev", Value::Int(0)),
        ]),
    )
    .unwrap();
    assert_eq!(
        ann.query("Task.byId(\"k\").title").unwrap(),
        Value::from("ann's title")
    );
    assert_eq!(
        bob.query("Task.byId(\"j\").title").unwrap(),
        Value::from("bob's plan")
    );
    // ann syncs first, then bob: the server's order is ann's commits, then bob's.
    ann.set_online(true);
    let synced = ann.wait_synced(WAIT).await;
    let (connected, pending) = {
        let r = ann.replica();
        (
            r.is_connected(),
            r.pending().iter().map(|p| p.seq).collect::<Vec<_>>(),
        )
    };
    assert!(
        synced,
        "connects {} connected {connected} pending {pending:?} frames {:?}",
        ann.connects(),
        ann.received().iter().rev().take(4).collect::<Vec<_>>()
    );
    bob.set_online(true);
    assert!(bob.wait_synced(WAIT).await);
    let want = Value::parse_json(r#"[["j","ann's plan",1],["k","bob's title",2]]"#).unwrap();
    let q = "Task.all().map(t => [t.id, t.title, t.rev])";
    assert!(
        ann.wait_until(WAIT, |r| r.query(q).unwrap() == want).await,
        "ann: {}",
        ann.query(q).unwrap()
    );
    assert_eq!(bob.query(q).unwrap(), want);
    // bob's refused edit is reported, and its optimistic result is gone from his view.
    let rejected: Vec<String> = bob
        .take_events()
        .into_iter()
        .filter_map(|e| match e {
            Event::Rejected { code, .. } => Some(code),
            _ => None,
        })
        .collect();
    assert_eq!(rejected, vec!["ABORTED".to_string()]);
    // And the server's own state is the same.
    let (_, body) = http_json(
        &server.http(),
        "POST",
        "/v1/pull",
        Some(&token("bob")),
        &serde_json::json!({}),
    )
    .await;
    let snap = body["snapshots"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["partition"] == "team:t")
        .unwrap();
    let mut titles: Vec<(String, String)> = snap["docs"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|d| d["collection"] == "Task")
        .map(|d| {
            (
                d["id"].as_str().unwrap().to_owned(),
                d["data"]["title"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    titles.sort();
    assert_eq!(
        titles,
        vec![
            ("j".into(), "ann's plan".into()),
            ("k".into(), "bob's title".into())
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removing_a_member_drops_the_partition_at_once() {
    let server = TestServer::start("revoke").await;
    let ann = server.client("ann", "ann-r");
    let bob = server.client("bob", "bob-r");
    ann.run(r#"Team.create({ id: "t", members: ["ann", "bob"] })"#)
        .unwrap();
    ann.run(r#"Task.create({ id: "k", team: "t", title: "secret plan" })"#)
        .unwrap();
    assert!(
        bob.wait_until(WAIT, |r| r.query("Task.all().count()").unwrap()
            == Value::Int(1))
            .await
    );
    ann.run(r#"Team.byId("t").update({ members: ["ann"] })"#)
        .unwrap();
    assert!(ann.wait_synced(WAIT).await);
    assert!(
        bob.wait_until(WAIT, |r| r.query("Task.all().count()").unwrap()
            == Value::Int(0))
            .await
    );
    assert!(bob
        .received()
        .iter()
        .any(|f| matches!(f, ServerFrame::Drop { partition, .. } if partition == "team:t")));
    // Nothing of the team reaches bob after the drop.
    ann.run(r#"Task.create({ id: "k2", team: "t", title: "after" })"#)
        .unwrap();
    assert!(ann.wait_synced(WAIT).await);
    let frames = bob.received();
    let dropped_at = frames
        .iter()
        .position(|f| matches!(f, ServerFrame::Drop { .. }))
        .unwrap();
    assert!(partitions_seen(&frames[dropped_at..])
        .iter()
        .all(|p| p != "team:t"));
    assert_eq!(bob.query("Team.all().count()").unwrap(), Value::Int(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_loses_nothing_and_clients_resume_from_their_cursors() {
    let mut server = TestServer::start("restart").await;
    let ann = server.client("ann", "ann-restart");
    let bob = server.client("bob", "bob-restart");
    for i in 0..20 {
        ann.call(
            "addTodo",
            obj([
                ("id", format!("a{i}").into()),
                ("title", "x".into()),
                ("created", Value::Int(i)),
            ]),
        )
        .unwrap();
    }
    bob.call("bump", obj([("id", "n".into())])).unwrap();
    assert!(ann.wait_synced(WAIT).await && bob.wait_synced(WAIT).await);
    let frames_before = bob.received().len();
    server.restart().await;
    // Both reconnect by themselves and carry on.
    for i in 20..30 {
        ann.call(
            "addTodo",
            obj([
                ("id", format!("a{i}").into()),
                ("title", "x".into()),
                ("created", Value::Int(i)),
            ]),
        )
        .unwrap();
    }
    assert!(ann.wait_synced(WAIT).await);
    assert!(ann.connects() >= 2, "ann reconnected");
    assert!(bob.wait_until(WAIT, |_| true).await);
    let (_, body) = http_json(
        &server.http(),
        "POST",
        "/v1/pull",
        Some(&token("ann")),
        &serde_json::json!({}),
    )
    .await;
    assert_eq!(body["snapshots"][0]["docs"].as_array().unwrap().len(), 30);
    // bob's partition did not change: after reconnecting he got no snapshot of it.
    let deadline = tokio::time::Instant::now() + WAIT;
    while bob.connects() < 2 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(bob.connects() >= 2);
    let after: Vec<ServerFrame> = bob.received()[frames_before..].to_vec();
    assert!(after
        .iter()
        .any(|f| matches!(f, ServerFrame::Welcome { .. })));
    assert!(
        !after
            .iter()
            .any(|f| matches!(f, ServerFrame::Snapshot { .. })),
        "{after:?}"
    );
    assert_eq!(bob.query("Counter.byId(\"n\").n").unwrap(), Value::Int(1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_push_pull_health_and_metrics() {
    let server = TestServer::start("http").await;
    let (s, body) = http_json(
        &server.http(),
        "POST",
        "/v1/push",
        Some(&token("ann")),
        &serde_json::json!({ "client_id": "curl", "commits": [
            { "seq": 1, "function": "bump", "args": { "id": "n" } },
            { "seq": 2, "source": "Todo.create({ owner: \"bob\", created: 1 })" },
        ]}),
    )
    .await;
    assert_eq!(s, 200, "{body}");
    assert_eq!(body["outcomes"][0]["status"], "committed");
    assert_eq!(body["outcomes"][1]["code"], "PERMISSION_DENIED");
    // Pushed again: the same answers, nothing applied twice.
    let (_, again) = http_json(
        &server.http(),
        "POST",
        "/v1/push",
        Some(&token("ann")),
        &serde_json::json!({ "client_id": "curl", "commits": [{ "seq": 1, "function": "bump", "args": { "id": "n" } }]}),
    )
    .await;
    assert_eq!(again["outcomes"][0]["status"], "committed");
    assert_eq!(
        again["outcomes"][0]["position"],
        body["outcomes"][0]["position"]
    );
    let (s, e) = http_json(
        &server.http(),
        "POST",
        "/v1/push",
        None,
        &serde_json::json!({}),
    )
    .await;
    assert_eq!((s, e["code"].as_str()), (401, Some("TOKEN_MISSING")));
    let (s, _) = http_json(
        &server.http(),
        "GET",
        "/healthz",
        None,
        &serde_json::json!(null),
    )
    .await;
    assert_eq!(s, 200);
    let (s, _) = http_json(
        &server.http(),
        "GET",
        "/readyz",
        None,
        &serde_json::json!(null),
    )
    .await;
    assert_eq!(s, 200);
    let m = server.running.as_ref().unwrap().metrics.render();
    assert!(
        m.contains("warren_commits_total{outcome=\"committed\"} 1"),
        "{m}"
    );
    assert!(
        m.contains("warren_rejections_total{code=\"PERMISSION_DENIED\"} 1"),
        "{m}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn protocol_errors_close_only_that_connection() {
    let server = TestServer::start("protocol").await;
    let ann = server.client("ann", "ann-p");
    // A push before Hello, garbage, an unknown version: each gets its code.
    for (bytes, code) in [
        (
            ClientFrame::Push { commits: vec![] }.encode(),
            "UNEXPECTED_FRAME",
        ),
        (vec![1, 0xEE, 1, 2, 3], "BAD_FRAME"),
        (vec![9, 1], "UNSUPPORTED_PROTOCOL"),
    ] {
        let mut raw = server.raw().await;
        raw.send_bytes(bytes).await.unwrap();
        match raw.recv(WAIT).await {
            Some(ServerFrame::Error { code: c, .. }) => assert_eq!(c, code),
            other => panic!("{other:?}"),
        }
        assert!(
            raw.recv(Duration::from_secs(2)).await.is_none(),
            "closed after the error"
        );
    }
    // The well-behaved client did not notice.
    ann.call("bump", obj([("id", "n".into())])).unwrap();
    assert!(ann.wait_synced(WAIT).await);
}

/// A client of protocol version 1 is answered in version 1, a frame a message; one of
/// version 2 gets the frames queued together as batches. Each gets every outcome, and a
/// connection's frames must keep its version.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_protocol_versions_are_spoken_and_only_version_2_is_batched() {
    let server = TestServer::start("versions").await;
    const N: u64 = 300;
    for version in [1u8, 2] {
        let mut raw = server.raw().await;
        let hello = ClientFrame::Hello {
            client_id: format!("v{version}"),
            token: token("ann"),
            schema_version: String::new(),
            outbox_from: 1,
            partitions: vec![],
        };
        raw.send_bytes(in_version(&hello.encode(), version))
            .await
            .unwrap();
        for chunk in (1..=N).collect::<Vec<_>>().chunks(100) {
            let push = ClientFrame::Push {
                commits: chunk
                    .iter()
                    .map(|s| call(*s, "bump", obj([("id", format!("v{version}-{s}").into())])))
                    .collect(),
            };
            raw.send_bytes(in_version(&push.encode(), version))
                .await
                .unwrap();
        }
        let (mut messages, mut batches, mut outcomes) = (0, 0, 0);
        while outcomes < N {
            let m = raw.recv_message(WAIT).await.expect("every outcome comes");
            assert_eq!(m[0], version, "every message in the connection's version");
            messages += 1;
            batches += usize::from(ServerFrame::is_batch(&m));
            for f in ServerFrame::decode_message(&m).unwrap() {
                if let ServerFrame::Outcome { seq, result } = f {
                    outcomes += 1;
                    assert_eq!(seq, outcomes, "outcomes in order");
                    assert!(
                        matches!(result, CommitResult::Committed { .. }),
                        "{result:?}"
                    );
                }
            }
        }
        if version == 1 {
            assert_eq!(batches, 0, "no batch for version 1");
        } else {
            // 300 outcomes and their effects, queued faster than they are written.
            assert!(
                batches > 0 && messages < N as usize,
                "{messages} messages, {batches} batches"
            );
        }
        // A frame of the other version on this connection: BAD_FRAME, and it closes.
        let other = if version == 1 { 2 } else { 1 };
        let ping = in_version(&ClientFrame::Ping { nonce: 1 }.encode(), other);
        raw.send_bytes(ping).await.unwrap();
        let end = raw
            .recv_until(WAIT, |f| matches!(f, ServerFrame::Error { .. }))
            .await;
        match end.last() {
            Some(ServerFrame::Error { code, .. }) => assert_eq!(code, "BAD_FRAME"),
            other => panic!("{other:?}"),
        }
    }
}

/// A push whose commits each make a partition the client may read: the snapshots the
/// client is owed go batched with the effects and outcomes (version 2), not a message
/// each, and each still comes before the outcome of the commit that made its partition.
/// Before, each snapshot was its own message, written before the next was read: a
/// client back online with 500 writes to 50 new partitions waited for 50 of them, one
/// at a time, before any outcome came.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_snapshots_a_push_makes_come_batched_before_their_outcomes() {
    let server = TestServer::start("snapshots-batched").await;
    const N: u64 = 40;
    let mut raw = server.raw().await;
    raw.send(&hello("ann-burst", &token("ann"))).await.unwrap();
    let push = ClientFrame::Push {
        commits: (1..=N)
            .map(|s| {
                run(
                    s,
                    &format!(r#"Team.create({{ id: "burst{s}", members: ["ann"] }})"#),
                )
            })
            .collect(),
    };
    raw.send(&push).await.unwrap();
    let (mut messages_with_snapshots, mut snapshots, mut outcomes) = (0, Vec::new(), 0);
    while outcomes < N {
        let m = raw.recv_message(WAIT).await.expect("every outcome comes");
        let mut holds_snapshot = false;
        for f in ServerFrame::decode_message(&m).unwrap() {
            match f {
                ServerFrame::Snapshot {
                    partition, docs, ..
                } if partition.starts_with("team:burst") => {
                    assert_eq!(docs.len(), 1, "{partition}: the team");
                    holds_snapshot = true;
                    snapshots.push(partition);
                }
                ServerFrame::Outcome { seq, result } => {
                    outcomes += 1;
                    assert!(
                        matches!(result, CommitResult::Committed { .. }),
                        "{result:?}"
                    );
                    let made = format!("team:burst{seq}");
                    assert!(
                        snapshots.contains(&made),
                        "the outcome of {seq} came before the snapshot of {made}"
                    );
                }
                _ => {}
            }
        }
        messages_with_snapshots += usize::from(holds_snapshot);
    }
    snapshots.sort();
    snapshots.dedup();
    assert_eq!(snapshots.len(), N as usize, "{snapshots:?}");
    assert!(
        messages_with_snapshots < N as usize / 4,
        "{N} snapshots in {messages_with_snapshots} messages"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_user_cannot_take_over_another_users_client_id() {
    let server = TestServer::start("client-ids").await;
    let ann = server.client("ann", "shared-id");
    ann.call("bump", obj([("id", "n".into())])).unwrap();
    assert!(ann.wait_synced(WAIT).await);
    // bob connects with the same client id: a different client to the server.
    let mut raw = server.raw().await;
    raw.send(&ClientFrame::Hello {
        client_id: "shared-id".into(),
        token: token("bob"),
        schema_version: String::new(),
        outbox_from: 1,
        partitions: vec![],
    })
    .await
    .unwrap();
    raw.send(&ClientFrame::Push {
        commits: vec![call(1, "bump", obj([("id", "bobs".into())]))],
    })
    .await
    .unwrap();
    let frames = raw
        .recv_until(WAIT, |f| matches!(f, ServerFrame::Outcome { seq: 1, .. }))
        .await;
    // bob's sequence starts at nothing: his seq 1 is a new commit, not ann's duplicate,
    // and he learns nothing of ann's outcomes.
    match &frames[0] {
        ServerFrame::Welcome { applied_seq, .. } => assert_eq!(*applied_seq, 0),
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        frames.last(),
        Some(ServerFrame::Outcome {
            seq: 1,
            result: CommitResult::Committed { .. }
        })
    ));
    // ann was not kicked off: her next write still syncs on the same connection.
    ann.call("bump", obj([("id", "n".into())])).unwrap();
    assert!(ann.wait_synced(WAIT).await);
    assert_eq!(ann.connects(), 1);
    assert!(!ann
        .received()
        .iter()
        .any(|f| matches!(f, ServerFrame::Error { .. })));
    assert_eq!(ann.query("Counter.byId(\"n\").n").unwrap(), Value::Int(2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http_push_with_a_bad_commit_applies_nothing() {
    let server = TestServer::start("http-atomic").await;
    let (s, body) = http_json(
        &server.http(),
        "POST",
        "/v1/push",
        Some(&token("ann")),
        &serde_json::json!({ "client_id": "curl", "commits": [
            { "seq": 1, "function": "bump", "args": { "id": "n" } },
            { "seq": 2 },
        ]}),
    )
    .await;
    assert_eq!((s, body["code"].as_str()), (400, Some("BAD_FRAME")));
    let (_, pulled) = http_json(
        &server.http(),
        "POST",
        "/v1/pull",
        Some(&token("ann")),
        &serde_json::json!({}),
    )
    .await;
    assert_eq!(pulled["position"], 0, "nothing reached the log: {pulled}");
}

/// Regression: the server scopes client ids by the token's subject, and `newId()` is
/// seeded with the client id, so a client that seeded its optimistic runs with its bare
/// id made different ids than the server. A document created offline without an id and
/// then edited offline by the id the client showed was refused ("no such todo") once
/// synced, and its id changed under the app.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ids_made_offline_are_the_ids_the_server_makes() {
    let server = TestServer::start("offline-ids").await;
    let c = warren_server::client::Client::start_with(
        server.options("ann", "ann-ids"),
        Default::default(),
        false,
    )
    .unwrap();
    let made = c
        .run(r#"Todo.create({ owner: "ann", title: "no id given", done: false, created: 1 })"#)
        .unwrap();
    let id = made.result.get("id").clone();
    let Value::String(id_text) = &id else {
        panic!("an id: {:?}", made.result)
    };
    c.call("toggle", obj([("id", id.clone())])).unwrap();
    c.set_online(true);
    assert!(c.wait_synced(Duration::from_secs(30)).await);
    let rejected: Vec<Event> = c
        .take_events()
        .into_iter()
        .filter(|e| matches!(e, Event::Rejected { .. }))
        .collect();
    assert!(rejected.is_empty(), "refused: {rejected:?}");
    let q = format!("Todo.byId(\"{id_text}\").done");
    assert_eq!(c.query(&q).unwrap(), Value::Bool(true), "the client's view");
    let (status, body) = http_json(
        &server.http(),
        "POST",
        "/v1/pull",
        Some(&token("ann")),
        &serde_json::json!({}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let docs = body["snapshots"][0]["docs"].as_array().unwrap();
    assert_eq!(docs.len(), 1, "{body}");
    assert_eq!(docs[0]["id"], id_text.as_str(), "the server's id");
    assert_eq!(docs[0]["data"]["done"], true);
}

/// The embedded default keeps its schema in the log: a restart with an edited schema
/// file appends a schema entry (one position) instead of running the log's tail under
/// the new file, clients learn the new schema when they reconnect, and a replay of the
/// log from the start (the initial schema, then every entry) gives the server's state.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_schema_file_becomes_a_schema_entry_of_the_log() {
    use warren_core::protocol::LogEntry;
    use warren_server::log::{FileLog, FileLogOptions, Log};

    let mut server = TestServer::start("schema-change").await;
    let ann = server.client("ann", "ann-1");
    for _ in 0..3 {
        ann.call("bump", obj([("id", "n".into())])).unwrap();
    }
    assert!(ann.wait_synced(WAIT).await);
    let before = position_of_last_outcome(&ann);

    // The same file again: nothing is appended.
    server.restart().await;
    ann.call("bump", obj([("id", "n".into())])).unwrap();
    assert!(ann.wait_synced(WAIT).await);
    assert_eq!(position_of_last_outcome(&ann), before + 1);

    // An edited file: one schema entry, then the new function works.
    let v2 = format!("{SCHEMA}\nfunction bumpBy(id, k) {{\n  let c = Counter.byId(id) ?? Counter.create({{ id, owner: auth.sub, n: 0 }})\n  c.update({{ n: c.n + k }})\n}}\n");
    server.config.schema = v2.clone();
    server.restart().await;
    let version = warren_core::Schema::parse(&v2)
        .unwrap()
        .version()
        .to_owned();
    assert!(
        ann.wait_until(WAIT, |r| r.schema().map(|s| s.version())
            == Some(version.as_str()))
            .await,
        "the client did not learn the new schema"
    );
    assert!(ann
        .take_events()
        .iter()
        .any(|e| matches!(e, Event::SchemaChanged { version: v } if *v == version)));
    ann.call("bumpBy", obj([("id", "n".into()), ("k", 10.into())]))
        .unwrap();
    assert!(ann.wait_synced(WAIT).await);
    assert_eq!(
        position_of_last_outcome(&ann),
        before + 3,
        "the schema entry takes the position before it"
    );
    assert_eq!(ann.query("Counter.byId(\"n\").n").unwrap(), Value::Int(14));
    server.stop().await;

    // The log replayed from the start under the initial schema reaches the server's
    // state: the change is in the log, at its position.
    let (log, _) = FileLog::open(server.dir.join("log"), FileLogOptions::default()).unwrap();
    let mut replay = warren_core::Executor::new(
        warren_core::storage::MemoryStore::new(),
        std::sync::Arc::new(warren_core::Schema::parse(SCHEMA).unwrap()),
        Default::default(),
    );
    let records = log.read(1, usize::MAX).unwrap();
    let mut schema_entries = Vec::new();
    for (pos, bytes) in records {
        let entry = LogEntry::decode(&bytes).unwrap();
        if matches!(entry, LogEntry::Schema(_)) {
            schema_entries.push(pos);
        }
        replay.apply_entry(entry, pos).unwrap();
    }
    assert_eq!(schema_entries, [before + 2]);
    assert_eq!(replay.schema().source(), v2);
    let store = warren_server::store::RedbStore::open(&server.dir.join("state.redb"), 1).unwrap();
    assert_eq!(
        warren_core::exec::digest(&store).unwrap(),
        replay.digest().unwrap()
    );
    assert_eq!(
        warren_core::entry::schema_source(&store)
            .unwrap()
            .as_deref(),
        Some(v2.as_str())
    );
}

/// The position of the last commit a client saw committed.
fn position_of_last_outcome(c: &warren_server::client::Client) -> u64 {
    c.received()
        .iter()
        .rev()
        .find_map(|f| match f {
            ServerFrame::Outcome {
                result: CommitResult::Committed { position, .. },
                ..
            } => Some(*position),
            _ => None,
        })
        .expect("a committed outcome")
}

/// A partition larger than a connection's queue: its snapshot goes out in parts
/// (`SnapshotPart`s, then the `Snapshot`), each about a quarter of the queue's bytes,
/// read one at a time; the client replaces the partition with all of them at once. A
/// member added to the team while connected gets it the same way (the snapshot the
/// fan-out owes, read after the batch).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_partition_arrives_in_parts() {
    let mut config = warren_e2e::config(temp_dir("parts"), hs256());
    // A queue of 64 KiB: parts of 16 KiB.
    config.gateway.conn_queue_bytes = 64 << 10;
    let server = TestServer::start_with(config).await;
    // ann's team board with 60 tasks of 4 KB: about 240 KB.
    let ann = server.client("ann", "ann-1");
    ann.run(r#"Team.create({ id: "big", members: ["ann"] })"#)
        .unwrap();
    for i in 0..6 {
        ann.run(&format!(
            r#"range(10).map(i => Task.create({{ id: "t{i}-" + toString(i), team: "big", title: "{}" }}))"#,
            "x".repeat(4000)
        ))
        .unwrap();
    }
    assert!(ann.wait_synced(WAIT).await);
    // A new client of ann's: its welcome.
    let ann2 = server.client("ann", "ann-2");
    assert!(
        ann2.wait_until(WAIT, |r| r.query("Task.all().count()").unwrap()
            == Value::Int(60))
            .await
    );
    let parts = |frames: &[ServerFrame]| -> Vec<usize> {
        frames
            .iter()
            .filter_map(|f| match f {
                ServerFrame::SnapshotPart {
                    partition, docs, ..
                }
                | ServerFrame::Snapshot {
                    partition, docs, ..
                } if partition == "team:big" => Some(docs.len()),
                _ => None,
            })
            .collect()
    };
    let seen = parts(&ann2.received());
    assert!(seen.len() >= 10, "{seen:?}");
    assert_eq!(seen.iter().sum::<usize>(), 61, "{seen:?}");
    // No part holds much more than 16 KiB of documents (at most one over).
    assert!(seen.iter().all(|n| *n <= 5), "{seen:?}");
    // bob joins the team while connected: the snapshot the fan-out owes comes in
    // parts too.
    let bob = server.client("bob", "bob-1");
    assert!(bob.wait_until(WAIT, |r| r.schema().is_some()).await);
    ann.run(r#"Team.byId("big").update({ members: ["ann", "bob"] })"#)
        .unwrap();
    assert!(
        bob.wait_until(WAIT, |r| r.query("Task.all().count()").unwrap()
            == Value::Int(60))
            .await
    );
    let seen = parts(&bob.received());
    assert!(seen.len() >= 10, "{seen:?}");
    assert_eq!(seen.iter().sum::<usize>(), 61);
    let m = server.running.as_ref().unwrap().metrics.render();
    assert!(m.contains("warren_snapshot_frames_total"), "{m}");
}

/// Presence (who is editing, a cursor) goes over the sync connection, not the log,
/// and only between connections that hold the partition: not to the sender, not to a
/// user who may not read it, not from one, and not after a revocation.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_reaches_only_those_who_read_the_partition() {
    let server = TestServer::start("presence").await;
    let ann = server.client("ann", "ann-n");
    ann.run(r#"Team.create({ id: "t", members: ["ann", "bob"] })"#)
        .unwrap();
    ann.run(r#"Task.create({ id: "k", team: "t", title: "plan" })"#)
        .unwrap();
    assert!(ann.wait_synced(WAIT).await);
    let holds = |p: &'static str| move |f: &ServerFrame| matches!(f, ServerFrame::Snapshot { partition, .. } if partition == p);
    let mut raw = Vec::new();
    for who in ["ann", "bob", "eve"] {
        let mut c = server.raw().await;
        c.send(&hello(&format!("{who}-presence"), &server.token(who)))
            .await
            .unwrap();
        let frames = if who == "eve" {
            c.recv_until(WAIT, |f| matches!(f, ServerFrame::Welcome { .. }))
                .await
        } else {
            c.recv_until(WAIT, holds("team:t")).await
        };
        assert!(!frames.is_empty(), "{who} was welcomed");
        raw.push(c);
    }
    let [mut a, mut b, mut e] = <[_; 3]>::try_from(raw).ok().unwrap();
    let presence = |data: &[u8]| ClientFrame::Presence {
        partition: "team:t".into(),
        data: data.to_vec(),
    };
    let is_presence = |f: &ServerFrame| matches!(f, ServerFrame::Presence { .. });

    a.send(&presence(b"ann: cursor 3")).await.unwrap();
    let got = b.recv_until(WAIT, is_presence).await;
    assert_eq!(
        got.last(),
        Some(&ServerFrame::Presence {
            partition: "team:t".into(),
            from: "ann".into(),
            data: b"ann: cursor 3".to_vec(),
        })
    );
    let quiet = Duration::from_millis(500);
    assert!(
        !a.recv_until(quiet, is_presence)
            .await
            .iter()
            .any(is_presence),
        "not to the sender"
    );
    assert!(
        !e.recv_until(quiet, is_presence)
            .await
            .iter()
            .any(is_presence),
        "not to eve"
    );

    // eve may not read the partition: hers reaches nobody.
    e.send(&presence(b"eve was here")).await.unwrap();
    assert!(!b
        .recv_until(quiet, is_presence)
        .await
        .iter()
        .any(is_presence));
    assert!(!a
        .recv_until(quiet, is_presence)
        .await
        .iter()
        .any(is_presence));

    // bob is removed from the team: he is dropped from the partition, and hears no more.
    ann.run(r#"Team.byId("t").update({ members: ["ann"] })"#)
        .unwrap();
    assert!(ann.wait_synced(WAIT).await);
    let dropped = b
        .recv_until(
            WAIT,
            |f| matches!(f, ServerFrame::Drop { partition, .. } if partition == "team:t"),
        )
        .await;
    assert!(matches!(dropped.last(), Some(ServerFrame::Drop { .. })));
    a.send(&presence(b"ann: cursor 4")).await.unwrap();
    assert!(
        !b.recv_until(quiet, is_presence)
            .await
            .iter()
            .any(is_presence),
        "not after the drop"
    );
    // Nor does his reach ann.
    b.send(&presence(b"bob: still here?")).await.unwrap();
    assert!(!a
        .recv_until(quiet, is_presence)
        .await
        .iter()
        .any(is_presence));

    // A presence message larger than the limit is a bad frame.
    a.send(&presence(&vec![
        0;
        warren_core::protocol::MAX_PRESENCE_BYTES
            + 1
    ]))
    .await
    .unwrap();
    let end = a
        .recv_until(WAIT, |f| matches!(f, ServerFrame::Error { .. }))
        .await;
    assert!(
        matches!(end.last(), Some(ServerFrame::Error { code, .. }) if code == "BAD_FRAME"),
        "{end:?}"
    );
}

/// A client may push before its welcome (the reference replica does when no commit of
/// its outbox was ever sent): the server reads the connection's frames while it
/// computes the welcome, and holds their outcomes until it. The welcome comes first,
/// then each commit's outcome once, in order; the next connection is told all were
/// applied.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pushes_before_the_welcome_are_answered_after_it_once() {
    let server = TestServer::start("early-push").await;
    let mut raw = server.raw().await;
    raw.send(&hello("ann-early", &token("ann"))).await.unwrap();
    for chunk in 0..3u64 {
        let commits = (1..=100)
            .map(|i| {
                let seq = chunk * 100 + i;
                call(
                    seq,
                    "addTodo",
                    obj([
                        ("id", format!("e{seq}").into()),
                        ("title", "early".into()),
                        ("created", Value::Int(seq as i64)),
                    ]),
                )
            })
            .collect();
        raw.send(&ClientFrame::Push { commits }).await.unwrap();
    }
    let frames = raw
        .recv_until(WAIT, |f| matches!(f, ServerFrame::Outcome { seq: 300, .. }))
        .await;
    assert!(
        matches!(
            frames.first(),
            Some(ServerFrame::Welcome { applied_seq: 0, .. })
        ),
        "the welcome first: {:?}",
        frames.first()
    );
    let committed: Vec<u64> = frames
        .iter()
        .filter_map(|f| match f {
            ServerFrame::Outcome {
                seq,
                result: CommitResult::Committed { .. },
            } => Some(*seq),
            ServerFrame::Outcome { seq, result } => panic!("commit {seq}: {result:?}"),
            _ => None,
        })
        .collect();
    assert_eq!(committed, (1..=300).collect::<Vec<u64>>());
    drop(raw);
    let mut again = server.raw().await;
    again
        .send(&hello("ann-early", &token("ann")))
        .await
        .unwrap();
    let frames = again
        .recv_until(WAIT, |f| matches!(f, ServerFrame::Welcome { .. }))
        .await;
    assert!(matches!(
        frames.last(),
        Some(ServerFrame::Welcome {
            applied_seq: 300,
            ..
        })
    ));
    let ann = server.client("ann", "ann-laptop");
    assert!(
        ann.wait_until(WAIT, |r| r.query("Todo.all().count()").unwrap()
            == Value::Int(300))
            .await
    );
}
