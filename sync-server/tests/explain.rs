//! `warren explain` and `POST /v1/admin/explain`, against a real `warren serve`
//! process over real sockets: the admin token is required (a user's token is refused),
//! the trace shows the rules evaluated and hides what the identity may not read, and
//! the same trace comes from a stopped server's data directory.

mod serving;

use std::process::{Command, Stdio};
use std::time::Duration;

use warren_core::value::obj;
use warren_core::Value;
use warren_server::client::{Client, ClientOptions};

fn warren() -> Command {
    Command::new(env!("CARGO_BIN_EXE_warren"))
}

const ADMIN: &str = "test-admin-token-0123456789";

/// POSTs `body` to `/v1/admin/explain` with `bearer`: (status, body).
fn post(addr: &str, bearer: &str, body: &str) -> (u16, String) {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    let mut r = agent
        .post(format!("http://{addr}/v1/admin/explain"))
        .header("authorization", format!("Bearer {bearer}"))
        .send(body)
        .unwrap();
    (r.status().as_u16(), r.body_mut().read_to_string().unwrap())
}

fn explain(args: &[&str]) -> (Option<i32>, String, String) {
    let out = warren().arg("explain").args(args).output().unwrap();
    (
        out.status.code(),
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    )
}

#[test]
fn explain_over_http_and_on_a_data_directory() {
    let dir = std::env::temp_dir().join(format!("warren-explain-test-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let data = dir.join("data");
    let data_s = data.to_str().unwrap().to_owned();
    let mut child = warren()
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--admin-token",
            ADMIN,
            "--schema",
            concat!(env!("CARGO_MANIFEST_DIR"), "/../demo/schema.warren"),
            "--data-dir",
        ])
        .arg(&data)
        .env("WARREN_LOG", "warn")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let addr = serving::serving_addr(&mut child).unwrap_or_else(|l| panic!("{l:?}"));
    let token = {
        let out = warren()
            .args(["token", "--sub", "ann", "--data-dir", &data_s])
            .output()
            .unwrap();
        String::from_utf8(out.stdout).unwrap().trim().to_owned()
    };
    // ann makes team red (ann and bob) and a private todo.
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let mut o = ClientOptions::new(&format!("ws://{addr}/v1/sync"), &token, "ann-explain");
        o.auth = obj([("sub", "ann".into())]);
        let c = Client::start(o).unwrap();
        assert!(
            c.wait_until(Duration::from_secs(20), |r| r.schema().is_some())
                .await
        );
        c.run(r#"Team.create({ id: "red", name: "Red", admin: "ann", members: ["ann", "bob"] })"#)
            .unwrap();
        c.call("addTodo", obj([("title", "ann's secret".into())]))
            .unwrap();
        assert!(c.wait_synced(Duration::from_secs(20)).await);
    });

    // The admin token is required: none, a wrong one and a user's token are refused.
    let body = r#"{"auth":"eve","query":"Team.all().map(.name)"}"#;
    assert_eq!(post(&addr, "", body).0, 401);
    assert_eq!(post(&addr, "wrong", body).0, 401);
    assert_eq!(post(&addr, &token, body).0, 401);
    let (status, text) = post(&addr, ADMIN, r#"{"auth":"eve"}"#);
    assert_eq!(status, 400, "{text}");
    assert!(text.contains("INVALID_ARGUMENT"), "{text}");

    // eve sees no team: the documents are counted, never named.
    let (status, text) = post(&addr, ADMIN, body);
    assert_eq!(status, 200, "{text}");
    let t = Value::parse_json(&text).unwrap();
    assert_eq!(t.get("outcome").get("result"), &Value::Array(vec![]));
    assert_eq!(t.get("invisible").get("Team"), &Value::Int(1));
    assert!(
        !text.contains("team:red") && !text.contains("Red"),
        "{text}"
    );
    // bob is a member: his read rule for team:red allowed, reading Team red.
    let (_, text) = post(
        &addr,
        ADMIN,
        r#"{"auth":"bob","query":"Team.all().map(.name)"}"#,
    );
    let t = Value::parse_json(&text).unwrap();
    assert_eq!(
        t.get("outcome").get("result"),
        &Value::Array(vec!["Red".into()])
    );
    let Value::Array(d) = t.get("decisions") else {
        panic!("{text}")
    };
    assert_eq!(d[0].get("partition"), &Value::from("team:red"));
    assert_eq!(d[0].get("allowed"), &Value::Bool(true));

    // The operator's state (what warren/devtools shows of the server): open sync
    // connections, the applied position and its digest.
    let state: serde_json::Value = {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .build()
            .into();
        let mut r = agent
            .get(format!("http://{addr}/v1/admin/state"))
            .header("authorization", format!("Bearer {ADMIN}"))
            .call()
            .unwrap();
        serde_json::from_str(&r.body_mut().read_to_string().unwrap()).unwrap()
    };
    assert!(state["connections"].is_u64(), "{state}");
    assert!(state["applied_position"].as_u64().unwrap() >= 2, "{state}");
    assert_eq!(state["digest"].as_str().unwrap().len(), 64, "{state}");

    // The command line asks the running server with --url.
    let url = format!("http://{addr}");
    let (code, out, err) = explain(&[
        "--as",
        "eve",
        "--url",
        &url,
        "--admin-token",
        ADMIN,
        "--partition",
        "team:red",
    ]);
    assert_eq!(code, Some(1), "{out}{err}");
    assert!(
        out.contains("DENY  read Team in partition team:red"),
        "{out}"
    );
    assert!(
        out.contains("read Team/red: not visible to this identity"),
        "{out}"
    );
    // On the data directory, the server holds it: the command says to ask it.
    let (code, _, err) = explain(&[
        "--as",
        "eve",
        "--data-dir",
        &data_s,
        "--partition",
        "team:red",
    ]);
    assert_eq!(code, Some(2));
    assert!(err.contains("in use by a running server"), "{err}");

    // Stopped: the same answers from the data directory, which is left as it was.
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(child.wait().unwrap().success());
    let before = std::fs::read(data.join("state.redb")).unwrap();
    let (code, out, err) = explain(&[
        "--as",
        "bob",
        "--data-dir",
        &data_s,
        "--partition",
        "team:red",
    ]);
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(
        out.contains("ALLOW read Team in partition team:red"),
        "{out}"
    );
    assert!(out.contains(r#"read Team/red: {"admin":"ann""#), "{out}");
    // A transaction: its write is listed, a denied one names the rule; nothing written.
    let (code, out, _) = explain(&[
        "--as",
        "eve",
        "--data-dir",
        &data_s,
        "--transaction",
        r#"Task.create({ id: "t1", team: "red", title: "x", done: false, created: 0, by: "eve" })"#,
    ]);
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("outcome: PERMISSION_DENIED"), "{out}");
    assert!(
        out.contains("DENY  create Task document t1 in partition team:red"),
        "{out}"
    );
    let (code, out, _) = explain(&[
        "--as",
        r#"{"sub":"bob"}"#,
        "--data-dir",
        &data_s,
        "--json",
        "--call",
        "addTask",
        "--args",
        r#"{"team":"red","title":"plan"}"#,
    ]);
    assert_eq!(code, Some(0), "{out}");
    let t = Value::parse_json(&out).unwrap();
    assert_eq!(t.get("outcome").get("ok"), &Value::Bool(true));
    let Value::Array(w) = t.get("writes") else {
        panic!("{out}")
    };
    assert_eq!(w.len(), 1);
    assert_eq!(w[0].get("partition"), &Value::from("team:red"));
    assert_eq!(std::fs::read(data.join("state.redb")).unwrap(), before);
    let _ = std::fs::remove_dir_all(&dir);
}
