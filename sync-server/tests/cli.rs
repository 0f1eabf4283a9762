//! The `warren` binary, run as a process.

use std::process::Command;

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
fn check_of_a_missing_file_fails_cleanly() {
    let out = warren()
        .args(["check", "/nonexistent/schema.warren"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot read"));
}
