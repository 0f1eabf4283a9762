//! No log entry can stop a replica. A poison entry (a commit on which the engine
//! panics; here through the engine's test-only built-in `__panic()`) is written into
//! the log of a stopped server; the server starts, replays it, rejects it with
//! `INTERNAL_ERROR`, logs it loudly, and serves. It restarts and serves again, and its
//! store is exactly what replaying the log with the engine gives (the same outcome, and
//! digest, on every replica).

mod replay;
mod serving;

use std::io::Read;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use replay::{assert_same_state, Replay, SCHEMA};
use warren_core::exec::{scoped_client_id, Commit, Op};
use warren_core::protocol::{
    encode_log_entry, ClientCommit, ClientFrame, CommitResult, ServerFrame,
};
use warren_core::value::obj;
use warren_server::log::{FileLog, FileLogOptions, Log};
use warren_server::store::RedbStore;

const SECRET: &str = "poison-test-secret-0123456789abcdef";

/// A raw sync connection (batches of frames come out one frame at a time).
type Ws = warren_server::client::RawConnection;

fn serve(dir: &Path) -> (Child, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_warren"))
        .args(["serve", "--listen", "127.0.0.1:0", "--hs256-secret", SECRET])
        .arg("--data-dir")
        .arg(dir.join("data"))
        .arg("--schema")
        .arg(dir.join("schema.warren"))
        .current_dir(dir)
        .env("WARREN_LOG", "error")
        .env("WARREN_LOG_FORMAT", "json")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn warren serve");
    let addr = serving::serving_addr(&mut child)
        .unwrap_or_else(|line| panic!("the server did not serve: {line:?}"));
    (child, addr)
}

/// Stops the server (SIGTERM) and returns what it wrote on stderr.
fn stop(mut child: Child) -> String {
    assert!(Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap()
        .success());
    let status = child.wait().unwrap();
    assert!(status.success(), "{status:?}");
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    stderr
}

async fn next_frame(ws: &mut Ws) -> Option<ServerFrame> {
    ws.recv(Duration::from_secs(20)).await
}

/// Connects as ann's client `client_id`, pushes one commit with sequence number `seq`
/// and returns its result.
fn push(addr: &str, client_id: &str, seq: u64, op: Op) -> CommitResult {
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let mut ws = Ws::connect(&format!("ws://{addr}/v1/sync")).await.unwrap();
        let token = warren_server::auth::mint_hs256(
            SECRET,
            &warren_server::auth::dev_claims("ann", 3600, None, None),
        )
        .unwrap();
        let hello = ClientFrame::Hello {
            client_id: client_id.into(),
            token,
            schema_version: String::new(),
            outbox_from: seq,
            partitions: vec![],
        };
        ws.send(&hello).await.unwrap();
        let push = ClientFrame::Push {
            commits: vec![ClientCommit {
                seq,
                schema_version: String::new(),
                op,
            }],
        };
        ws.send(&push).await.unwrap();
        loop {
            match next_frame(&mut ws).await {
                Some(ServerFrame::Outcome { seq: s, result }) if s == seq => return result,
                Some(_) => {}
                None => panic!("the connection ended before the outcome"),
            }
        }
    })
}

fn note(id: &str) -> Op {
    Op::Call {
        function: "note".into(),
        args: obj([("id", id.into()), ("text", "hello".into())]),
    }
}

#[test]
fn a_poison_entry_is_rejected_on_replay_and_the_server_serves() {
    let dir = std::env::temp_dir().join(format!("warren-poison-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("data")).unwrap();
    std::fs::write(dir.join("schema.warren"), SCHEMA).unwrap();
    let auth = obj([("sub", "ann".into())]);
    let client = scoped_client_id(&auth, "writer");
    let commit = |seq: u64, op: Op| Commit {
        client_id: client.clone(),
        client_seq: seq,
        schema_version: String::new(),
        timestamp: 1_700_000_000_000 + seq as i64,
        auth: auth.clone(),
        op,
    };
    // The log, written while no server runs: a commit, the poison, another commit.
    {
        let (mut log, _) = FileLog::open(dir.join("data/log"), FileLogOptions::default()).unwrap();
        let entries = [
            commit(1, note("before")),
            commit(
                2,
                Op::Run {
                    source:
                        "Note.create({ id: \"poisoned\", owner: \"ann\", text: \"x\" })\n__panic()"
                            .into(),
                },
            ),
            commit(3, note("after")),
        ];
        let records: Vec<Vec<u8>> = entries.iter().map(encode_log_entry).collect();
        assert_eq!(log.append(&records).unwrap(), 1);
    }

    // The server replays the log, rejects the poison and serves: a new commit lands
    // after it.
    let (child, addr) = serve(&dir);
    let r = push(&addr, "other", 1, note("new"));
    assert!(
        matches!(r, CommitResult::Committed { position: 4, .. }),
        "{r:?}"
    );
    let stderr = stop(child);
    let logged = stderr.lines().any(|l| {
        serde_json::from_str::<serde_json::Value>(l).is_ok_and(|j| {
            j["level"] == "ERROR"
                && j["fields"]["position"] == 2
                && j["fields"]["message"]
                    .as_str()
                    .is_some_and(|m| m.contains("INTERNAL_ERROR"))
        })
    });
    assert!(
        logged,
        "the poison entry was not logged as an error:\n{stderr}"
    );

    // Restarted, it serves again.
    let (child, addr) = serve(&dir);
    let r = push(&addr, "other", 2, note("newer"));
    assert!(
        matches!(r, CommitResult::Committed { position: 5, .. }),
        "{r:?}"
    );
    stop(child);

    // Every replica reaches the same state: the engine replaying the log (the poison
    // rejected in-process, too) and the server's store agree entry for entry.
    let (log, _) = FileLog::open(dir.join("data/log"), FileLogOptions::default()).unwrap();
    let mut replay = Replay::new(SCHEMA);
    replay.catch_up(&log);
    assert_eq!(replay.entries.len(), 5);
    assert!(!replay.entries[1].committed, "the poison entry is rejected");
    assert!(replay.entries[0].committed && replay.entries[2].committed);
    let kept = warren_core::exec::kept_outcome_of(replay.executor.store(), &client, 2).unwrap();
    assert!(
        matches!(&kept, Some(warren_core::exec::KeptOutcome::Rejected { code, .. }) if code == "INTERNAL_ERROR"),
        "{kept:?}"
    );
    let store = RedbStore::open(&dir.join("data").join("state.redb"), 1).unwrap();
    assert_same_state(&store, &replay, "after the poison entry");
    let _ = std::fs::remove_dir_all(&dir);
}

/// A schema whose `Board` read rule panics once the document `Flag/boom` says so: the
/// rule runs when the fan-out re-evaluates what a connection may read, on the region's
/// thread.
const ROUTING_SCHEMA: &str = r#"
collection Flag {
  partition "user:" + doc.owner
  allow read   partition == "user:" + auth.sub
  allow create doc.owner == auth.sub
}

collection Board {
  partition "board:" + doc.name
  allow read   Flag.byId("boom")?.on == true && __panic()
  allow create true
}
"#;

/// `POST /v1/push` of one ad-hoc transaction by `sub`; its outcome as JSON.
async fn http_push(addr: &str, sub: &str, client_id: &str, seq: u64, source: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let token = warren_server::auth::mint_hs256(
        SECRET,
        &warren_server::auth::dev_claims(sub, 3600, None, None),
    )
    .unwrap();
    let body = serde_json::json!({
        "client_id": client_id,
        "commits": [{ "seq": seq, "source": source }],
    })
    .to_string();
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(
        format!(
            "POST /v1/push HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).await.unwrap();
    String::from_utf8_lossy(&out).into_owned()
}

/// The engine failing inside (a bug) while the region routes an entry to a connection
/// costs that connection, not the region: it is closed with `INTERNAL`, the error is
/// logged, and the region goes on committing.
#[test]
fn a_panic_while_routing_an_entry_closes_one_connection_and_the_region_goes_on() {
    let dir = std::env::temp_dir().join(format!("warren-poison-route-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("data")).unwrap();
    std::fs::write(dir.join("schema.warren"), ROUTING_SCHEMA).unwrap();
    let (child, addr) = serve(&dir);
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        // A board exists before anyone watches (its rule denies, quietly).
        let r = http_push(
            &addr,
            "bob",
            "bob-1",
            1,
            r#"Board.create({ id: "b1", name: "x" })"#,
        )
        .await;
        assert!(r.contains("\"committed\""), "{r}");
        // ann watches: her welcome evaluates the Board rule, which reads Flag/boom.
        let mut ws = Ws::connect(&format!("ws://{addr}/v1/sync")).await.unwrap();
        let token = warren_server::auth::mint_hs256(
            SECRET,
            &warren_server::auth::dev_claims("ann", 3600, None, None),
        )
        .unwrap();
        let hello = ClientFrame::Hello {
            client_id: "watcher".into(),
            token,
            schema_version: String::new(),
            outbox_from: 1,
            partitions: vec![],
        };
        ws.send(&hello).await.unwrap();
        loop {
            match next_frame(&mut ws).await {
                Some(ServerFrame::Welcome { .. }) => break,
                Some(_) => {}
                None => panic!("no welcome"),
            }
        }
        // The flag: the fan-out re-evaluates ann's Board rule, which now panics.
        let r = http_push(
            &addr,
            "ann",
            "ann-1",
            1,
            r#"Flag.create({ id: "boom", owner: "ann", on: true })"#,
        )
        .await;
        assert!(r.contains("\"committed\""), "{r}");
        let closed_with = loop {
            match next_frame(&mut ws).await {
                Some(ServerFrame::Error { code, .. }) => break Some(code),
                Some(_) => {}
                None => break None,
            }
        };
        assert_eq!(closed_with.as_deref(), Some("INTERNAL"));
        // The region goes on: the next commit is committed.
        let r = http_push(
            &addr,
            "bob",
            "bob-1",
            2,
            r#"Board.create({ id: "b2", name: "y" })"#,
        )
        .await;
        assert!(r.contains("\"committed\""), "{r}");
    });
    let stderr = stop(child);
    assert!(
        stderr.lines().any(
            |l| l.contains("\"ERROR\"") && l.contains("routing this log entry to a connection")
        ),
        "the failure was not logged as an error:\n{stderr}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
