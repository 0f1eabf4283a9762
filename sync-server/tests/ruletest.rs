//! `warren test`: rule tests run as a process. The demo's own rule tests pass; a
//! deliberately failing case fails with exit status 1 and its explain trace; a file
//! whose fixture the rules refuse is an error (status 2).

use std::path::{Path, PathBuf};
use std::process::Command;

fn warren_test(file: &Path) -> (Option<i32>, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_warren"))
        .arg("test")
        .arg(file)
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    )
}

fn demo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../demo")
}

/// A test file beside a copy of the demo's schema.
fn beside_demo_schema(name: &str, body: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("warren-ruletest-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::copy(demo().join("schema.warren"), dir.join("schema.warren")).unwrap();
    let file = dir.join("schema.test.json");
    std::fs::write(&file, body).unwrap();
    file
}

#[test]
fn the_demo_rule_tests_pass() {
    let (code, out, err) = warren_test(&demo().join("schema.test.json"));
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(out.contains(" 0 failed"), "{out}");
    assert!(!out.contains("not ok"), "{out}");
}

#[test]
fn a_failing_case_prints_its_trace_and_fails() {
    let file = beside_demo_schema(
        "failing",
        r#"{
  "schema": "schema.warren",
  "fixtures": [
    { "as": "ann", "run": "Team.create({ id: \"red\", name: \"Red\", admin: \"ann\", members: [\"ann\", \"bob\"] })" }
  ],
  "tests": [
    { "name": "a member adds a task", "as": "bob", "call": "addTask", "args": { "team": "red", "title": "x" }, "expect": "allow" },
    { "name": "wrongly expects an outsider to add a task", "as": "eve", "call": "addTask", "args": { "team": "red", "title": "x" }, "expect": "allow" }
  ]
}"#,
    );
    let (code, out, err) = warren_test(&file);
    assert_eq!(code, Some(1), "{out}{err}");
    assert!(out.contains("ok - a member adds a task"), "{out}");
    assert!(
        out.contains("not ok - wrongly expects an outsider to add a task: expected allow, got PERMISSION_DENIED"),
        "{out}"
    );
    // The trace: the create rule that denied it, and the team it read, which eve may
    // not see.
    assert!(out.contains("DENY  create Task"), "{out}");
    assert!(out.contains("-> deny"), "{out}");
    assert!(
        out.contains("read Team/red: not visible to this identity"),
        "{out}"
    );
    assert!(out.contains("1 passed, 1 failed"), "{out}");
    let _ = std::fs::remove_dir_all(file.parent().unwrap());
}

#[test]
fn a_refused_fixture_is_an_error() {
    let file = beside_demo_schema(
        "fixture",
        r#"{
  "schema": "schema.warren",
  "fixtures": [ { "as": "eve", "run": "Todo.create({ owner: \"ann\", title: \"x\", done: false, created: 0 })" } ],
  "tests": []
}"#,
    );
    let (code, out, err) = warren_test(&file);
    assert_eq!(code, Some(2), "{out}{err}");
    assert!(
        err.contains("fixture 1 was refused: PERMISSION_DENIED"),
        "{err}"
    );
    let _ = std::fs::remove_dir_all(file.parent().unwrap());
}
