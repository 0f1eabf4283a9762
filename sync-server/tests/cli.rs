//! The `warren` binary, run as a process.

mod serving;

use std::process::Command;

/// The demo's schema, which the servers here run.
const DEMO_SCHEMA: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../demo/schema.warren");

fn warren() -> Command {
    Command::new(env!("CARGO_BIN_EXE_warren"))
}

fn temp_file(name: &str, contents: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("warren-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let p = dir.join(name);
    std::fs::write(&p, contents).unwrap();
    p
}

#[test]
fn check_accepts_the_demo_schema() {
    let schema = concat!(env!("CARGO_MANIFEST_DIR"), "/../demo/schema.warren");
    let out = warren().args(["check", schema, "--json"]).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["ok"], true);
    assert_eq!(v["version"].as_str().unwrap().len(), 32);
    let names: Vec<&str> = v["collections"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["Task", "Team", "Todo"]);
}

#[test]
fn check_reports_line_and_column() {
    let p = temp_file("bad.warren", "collection A {\n  allow write true\n}\n");
    let out = warren().arg("check").arg(&p).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(":2:9: PARSE_ERROR"), "{err}");
    let out = warren()
        .arg("check")
        .arg(&p)
        .arg("--json")
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        (v["code"].as_str(), v["line"].as_u64(), v["column"].as_u64()),
        (Some("PARSE_ERROR"), Some(2), Some(9))
    );
}

#[test]
fn check_type_checks_names_against_the_schema() {
    // Today's trap: `Notes.create(...)` with no collection Notes.
    let p = temp_file(
        "unknown.warren",
        "collection Note { allow create true }\nfunction add(t) {\n  Notes.create({ t })\n}\nfunction two() { add() }\n",
    );
    let out = warren().arg("check").arg(&p).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(":3:3: UNKNOWN_NAME"), "{err}");
    assert!(err.contains(":5:18: INVALID_ARGUMENT"), "{err}");
    let out = warren()
        .arg("check")
        .arg(&p)
        .arg("--json")
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        (v["code"].as_str(), v["line"].as_u64(), v["column"].as_u64()),
        (Some("UNKNOWN_NAME"), Some(3), Some(3))
    );
}

#[test]
fn check_of_a_missing_file_fails_cleanly() {
    let out = warren()
        .args(["check", "/nonexistent/schema.warren"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot read"));
}

/// `warren serve` as a process, the way the README runs it: the demo's schema, a
/// development secret made on first start, `warren token` for a
/// user, a client that writes, SIGTERM, and a restart that still has the data.
#[test]
fn serve_token_sigterm_and_restart() {
    use std::process::Stdio;
    use std::time::Duration;
    use warren_core::value::obj;
    use warren_server::client::{Client, ClientOptions};

    let dir = std::env::temp_dir().join(format!("warren-cli-serve-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let data = dir.join("data");
    let start = || {
        let mut child = warren()
            .current_dir(&dir)
            .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(&data)
            .args(["--schema", DEMO_SCHEMA])
            .env("WARREN_LOG", "warn")
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let addr = serving::serving_addr(&mut child)
            .unwrap_or_else(|line| panic!("no address in {line:?}"));
        (child, addr)
    };
    std::fs::create_dir_all(&dir).unwrap();
    let (mut child, addr) = start();
    let out = warren()
        .args(["token", "--sub", "ann", "--data-dir"])
        .arg(&data)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let token = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    // The development secret signs tokens for anyone: only the server's user reads it.
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(data.join("dev-secret"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "dev-secret mode {mode:o}");
    }

    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let mut o = ClientOptions::new(&format!("ws://{addr}/v1/sync"), &token, "ann-cli");
        o.auth = obj([("sub", "ann".into())]);
        let c = Client::start(o).unwrap();
        // The schema arrives with the welcome.
        assert!(
            c.wait_until(Duration::from_secs(20), |r| r.schema().is_some())
                .await
        );
        c.call("addTodo", obj([("title", "from the README".into())]))
            .unwrap();
        assert!(c.wait_synced(Duration::from_secs(20)).await);
    });
    // SIGTERM: a graceful stop with exit status 0.
    let kill = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    let status = child.wait().unwrap();
    assert!(status.success(), "{status:?}");

    // Restarted on the same data: the write is there.
    let (mut child, addr) = start();
    rt.block_on(async {
        let mut o = ClientOptions::new(&format!("ws://{addr}/v1/sync"), &token, "ann-cli-2");
        o.auth = obj([("sub", "ann".into())]);
        let c = Client::start(o).unwrap();
        assert!(
            c.wait_until(Duration::from_secs(20), |r| r.schema().is_some()
                && r.query("Todo.all().map(.title)").ok()
                    == Some(warren_core::Value::Array(
                        vec!["from the README".into()]
                    )))
            .await
        );
    });
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let _ = child.wait();
    let _ = std::fs::remove_dir_all(&dir);
}

/// A static directory that holds the data directory would serve the log and the
/// development secret: the server refuses to start.
#[test]
fn serve_refuses_a_static_dir_holding_the_data_dir() {
    let dir = std::env::temp_dir().join(format!("warren-cli-static-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("data")).unwrap();
    let out = warren()
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir.join("data"))
        .arg("--static-dir")
        .arg(&dir)
        .args(["--schema", DEMO_SCHEMA])
        .env("WARREN_LOG", "warn")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("holds the data directory"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}
