//! Explain: the trace of the rules a query, a commit or a partition's read rule
//! evaluated: allowed, denied and failed rules, a rule that reads another document,
//! documents made invisible counted but never named, and the same outcome and usage as
//! without explain.

mod common;

use common::*;
use warren_core::eval::Limits;
use warren_core::exec::{self, Commit, Op, Outcome};
use warren_core::explain::{self, Explanation, RuleOutcome};
use warren_core::lang::ast::Action;
use warren_core::storage::MemoryStore;
use warren_core::value::{obj, Value};
use warren_core::{ErrorCode, Executor, Schema};

fn strs(xs: &[&str]) -> Value {
    Value::Array(xs.iter().map(|s| Value::from(*s)).collect())
}

/// ann and bob with two todos each; team red (admin ann, members ann and bob) with a
/// task.
fn seeded() -> Executor<MemoryStore> {
    let mut db = db();
    let mut ann = Client::new("c-ann", user("ann"));
    let mut bob = Client::new("c-bob", user("bob"));
    for (c, ids) in [(&mut ann, ["a1", "a2"]), (&mut bob, ["b1", "b2"])] {
        for (i, id) in ids.iter().enumerate() {
            let args = obj([
                ("id", (*id).into()),
                ("title", format!("secret {id}").as_str().into()),
                ("created", Value::Int(i as i64)),
            ]);
            assert_committed(&commit(&mut db, &c.call("addTodo", args)));
        }
    }
    let team = obj([("id", "red".into()), ("members", strs(&["ann", "bob"]))]);
    assert_committed(&commit(&mut db, &ann.call("makeTeam", team)));
    let task = obj([
        ("team", "red".into()),
        ("title", "plan".into()),
        ("slug", "plan".into()),
    ]);
    assert_committed(&commit(&mut db, &ann.call("addTask", task)));
    db
}

fn run(sub: &str, source: &str) -> Commit {
    Commit {
        client_id: format!("explain-{sub}"),
        client_seq: 1,
        schema_version: String::new(),
        timestamp: 1_700_000_000_000,
        auth: user(sub),
        op: Op::Run {
            source: source.into(),
        },
    }
}

fn explain_query(db: &Executor<MemoryStore>, auth: &Value, src: &str) -> Explanation {
    explain::explain_query(db.store(), db.schema(), src, auth, 0, db.limits()).unwrap()
}

fn explain_commit(db: &Executor<MemoryStore>, c: &Commit) -> Explanation {
    let at = db.position().unwrap() + 1;
    explain::explain_commit(db.store(), db.schema(), c, at, db.limits()).unwrap()
}

/// The outcome and usage of the same commit without explain.
fn plain_commit(db: &Executor<MemoryStore>, c: &Commit) -> (Outcome, exec::Usage) {
    let at = db.position().unwrap() + 1;
    let (o, u) = exec::execute_metered(db.store(), db.schema(), c, at, db.limits()).unwrap();
    (o, u)
}

#[test]
fn an_allowed_read_lists_the_rule_and_counts_what_it_hid() {
    let db = seeded();
    let x = explain_query(&db, &user("ann"), "Todo.all().map(.id)");
    assert_eq!(x.outcome, Ok(strs(&["a1", "a2"])));
    let d = &x.decisions;
    assert_eq!(d.len(), 1, "{d:?}");
    assert_eq!(d[0].action, Action::Read);
    assert_eq!(
        (d[0].collection.as_str(), d[0].partition.as_str()),
        ("Todo", "user:ann")
    );
    assert!(d[0].allowed);
    assert_eq!(d[0].rules.len(), 1);
    assert_eq!(d[0].rules[0].outcome, RuleOutcome::Allow);
    assert_eq!(
        d[0].rules[0].text,
        r#"allow read   partition == "user:" + auth.sub || auth.role == "admin""#
    );
    assert_eq!((d[0].rules[0].pos.line, d[0].rules[0].pos.col), (5, 3));
    // bob's two todos: counted, never named.
    assert_eq!(x.invisible.get("Todo"), Some(&2));
    let json = x.to_json();
    for secret in ["user:bob", "b1", "b2", "secret b"] {
        assert!(!json.contains(secret), "{secret} in {json}");
    }
}

#[test]
fn a_count_from_keys_counts_the_hidden_documents_too() {
    let db = seeded();
    let x = explain_query(&db, &user("bob"), "Todo.all().count()");
    assert_eq!(x.outcome, Ok(Value::Int(2)));
    assert_eq!(x.invisible.get("Todo"), Some(&2));
    assert!(!x.to_json().contains("user:ann"));
}

#[test]
fn a_denied_write_names_its_rule_and_document() {
    let db = seeded();
    let c = run(
        "ann",
        r#"Todo.create({ id: "x", owner: "bob", title: "t", done: false, created: 0 })"#,
    );
    let x = explain_commit(&db, &c);
    let Err((code, _)) = &x.outcome else {
        panic!("{:?}", x.outcome)
    };
    assert_eq!(*code, ErrorCode::PermissionDenied);
    let d = x.decisions.last().unwrap();
    assert_eq!(d.action, Action::Create);
    assert_eq!(d.id.as_deref(), Some("x"));
    assert_eq!(d.partition, "user:bob");
    assert!(!d.allowed);
    assert_eq!(d.rules.len(), 1);
    assert_eq!(d.rules[0].outcome, RuleOutcome::Deny);
    assert_eq!(d.rules[0].text, "allow create doc.owner == auth.sub");
    assert!(x.writes.is_empty());
}

#[test]
fn an_allowed_write_lists_its_writes() {
    let db = seeded();
    let c = run(
        "ann",
        r#"Todo.create({ id: "x", owner: "ann", title: "t", done: false, created: 0 })"#,
    );
    let x = explain_commit(&db, &c);
    assert!(x.outcome.is_ok(), "{:?}", x.outcome);
    let d = x.decisions.last().unwrap();
    assert!(d.allowed);
    assert_eq!(d.rules[0].outcome, RuleOutcome::Allow);
    assert_eq!(
        x.writes,
        vec![("Todo".into(), "x".into(), "user:ann".into(), false)]
    );
}

#[test]
fn a_failed_rule_gives_its_code_and_the_next_alternative_runs() {
    let schema = r#"
collection Note {
  allow read true
  allow create abort("the rule gave up")
  allow create doc.ok == true
}
"#;
    let db = Executor::new(
        MemoryStore::new(),
        std::sync::Arc::new(Schema::parse(schema).unwrap()),
        Limits::default(),
    );
    let c = run("ann", r#"Note.create({ id: "n", ok: false })"#);
    let x = explain_commit(&db, &c);
    assert!(x.outcome.is_err());
    let d = x.decisions.last().unwrap();
    assert!(!d.allowed);
    assert_eq!(d.rules.len(), 2);
    let RuleOutcome::Fail { code, message } = &d.rules[0].outcome else {
        panic!("{:?}", d.rules[0].outcome)
    };
    assert_eq!(*code, ErrorCode::Aborted);
    // The rule read nothing hidden: its message is shown.
    assert!(message.as_deref().unwrap().contains("the rule gave up"));
    assert_eq!(d.rules[1].outcome, RuleOutcome::Deny);
    assert_eq!((d.rules[1].pos.line, d.rules[1].pos.col), (5, 3));
    let c = run("ann", r#"Note.create({ id: "n", ok: true })"#);
    let x = explain_commit(&db, &c);
    assert!(x.outcome.is_ok());
    let d = x.decisions.last().unwrap();
    assert!(d.allowed);
    assert!(matches!(d.rules[0].outcome, RuleOutcome::Fail { .. }));
    assert_eq!(d.rules[1].outcome, RuleOutcome::Allow);
}

#[test]
fn a_rule_reading_another_document_shows_it_only_to_who_may_read_it() {
    let db = seeded();
    let add = r#"Task.create({ team: "red", title: "t2", slug: "t2", done: false })"#;
    // bob is a member: the rule read team red, which bob may read.
    let x = explain_commit(&db, &run("bob", add));
    assert!(x.outcome.is_ok(), "{:?}", x.outcome);
    let d = x
        .decisions
        .iter()
        .find(|d| d.action == Action::Create)
        .unwrap();
    assert!(d.allowed);
    let reads = &d.rules[0].reads;
    assert_eq!(reads.len(), 1, "{reads:?}");
    assert_eq!(reads[0].collection, "Team");
    assert_eq!(reads[0].id.as_deref(), Some("red"));
    assert!(reads[0].visible);
    assert_eq!(reads[0].partition.as_deref(), Some("team:red"));
    let members = reads[0].value.as_ref().unwrap().get("members");
    assert_eq!(members, &strs(&["ann", "bob"]));

    // eve is not: the same rule read the same document, and her trace does not show it.
    let x = explain_commit(&db, &run("eve", add));
    assert!(x.outcome.is_err());
    let d = x
        .decisions
        .iter()
        .find(|d| d.action == Action::Create)
        .unwrap();
    assert!(!d.allowed);
    assert_eq!(d.rules[0].outcome, RuleOutcome::Deny);
    let reads = &d.rules[0].reads;
    assert_eq!(reads.len(), 1);
    assert!(!reads[0].visible);
    assert_eq!(reads[0].partition, None);
    assert_eq!(reads[0].value, None);
    let json = x.to_json();
    assert!(!json.contains("\"ann\""), "{json}");
    // A missing team reads the same as a hidden one.
    let missing = r#"Task.create({ team: "blue", title: "t", slug: "t", done: false })"#;
    let y = explain_commit(&db, &run("eve", missing));
    let e = y
        .decisions
        .iter()
        .find(|d| d.action == Action::Create)
        .unwrap();
    let (a, b) = (&d.rules[0].reads[0], &e.rules[0].reads[0]);
    assert_eq!(
        (a.visible, &a.partition, &a.value),
        (b.visible, &b.partition, &b.value)
    );
}

#[test]
fn why_a_partition_is_not_received() {
    let db = seeded();
    let limits = db.limits();
    let x = explain::explain_partition(db.store(), db.schema(), "team:red", &user("eve"), limits)
        .unwrap();
    // Log's read rule allows every partition; Team's and Task's deny it to eve.
    assert_eq!(x.outcome, Ok(strs(&["Log"])));
    let team = x.decisions.iter().find(|d| d.collection == "Team").unwrap();
    assert_eq!(team.partition, "team:red");
    assert!(!team.allowed);
    assert_eq!(team.rules[0].outcome, RuleOutcome::Deny);
    assert!(!team.rules[0].reads[0].visible);
    let x = explain::explain_partition(db.store(), db.schema(), "team:red", &user("bob"), limits)
        .unwrap();
    // Log's read rule allows every partition.
    assert_eq!(x.outcome, Ok(strs(&["Log", "Task", "Team"])));
    let team = x.decisions.iter().find(|d| d.collection == "Team").unwrap();
    assert!(team.allowed);
    assert!(team.rules[0].reads[0].visible);
}

#[test]
fn explaining_changes_neither_outcome_nor_usage() {
    let db = seeded();
    let limits = db.limits();
    for (sub, src) in [
        ("ann", "Todo.all().map(.id)"),
        ("bob", "Todo.all().count()"),
        ("eve", "Task.all().map(.title)"),
        ("bob", r#"Team.byId("red")"#),
        ("eve", r#"Team.byId("red")"#),
    ] {
        let auth = user(sub);
        let (r, u) = exec::query_metered(db.store(), db.schema(), src, &auth, 0, limits);
        let x = explain_query(&db, &auth, src);
        assert_eq!(
            x.outcome,
            r.map_err(|e| (e.code, e.message)),
            "{sub}: {src}"
        );
        assert_eq!(x.usage, u, "{sub}: {src}");
    }
    for (sub, src) in [
        (
            "ann",
            r#"Todo.create({ id: "x", owner: "ann", title: "t", done: false, created: 0 })"#,
        ),
        (
            "ann",
            r#"Todo.create({ id: "x", owner: "bob", title: "t", done: false, created: 0 })"#,
        ),
        (
            "eve",
            r#"Task.create({ team: "red", title: "t2", slug: "t2", done: false })"#,
        ),
        (
            "bob",
            r#"Task.create({ team: "red", title: "t2", slug: "t2", done: false })"#,
        ),
    ] {
        let c = run(sub, src);
        let (o, u) = plain_commit(&db, &c);
        let x = explain_commit(&db, &c);
        let explained = match o {
            Outcome::Committed { result, .. } => Ok(result),
            Outcome::Rejected { code, message } => Err((code, message)),
            Outcome::Skipped(s) => panic!("{s:?}"),
        };
        assert_eq!(x.outcome, explained, "{sub}: {src}");
        assert_eq!(x.usage, u, "{sub}: {src}");
    }
}

#[test]
fn the_serialized_form_is_stable() {
    let db = seeded();
    let x = explain_query(&db, &user("bob"), r#"Todo.all().map(.id)"#);
    assert_eq!(
        x.to_json(),
        concat!(
            r#"{"decisions":[{"action":"read","allowed":true,"collection":"Todo","partition":"user:bob","#,
            r#""rules":[{"column":3,"line":5,"outcome":"allow","reads":[],"#,
            r#""text":"allow read   partition == \"user:\" + auth.sub || auth.role == \"admin\""}]}],"#,
            r#""invisible":{"Todo":2},"outcome":{"ok":true,"result":["b1","b2"]},"#,
            r#""truncated":false,"version":1,"writes":[]}"#
        )
    );
}

#[test]
fn a_rule_on_several_lines_is_shown_whole() {
    let schema = r#"
collection Note {
  allow read true
  allow create doc.a == 1
    && doc.b == 2
  allow delete false
}
"#;
    let db = Executor::new(
        MemoryStore::new(),
        std::sync::Arc::new(Schema::parse(schema).unwrap()),
        Limits::default(),
    );
    let x = explain_commit(&db, &run("ann", r#"Note.create({ id: "n", a: 1, b: 3 })"#));
    let d = x.decisions.last().unwrap();
    assert_eq!(d.rules[0].text, "allow create doc.a == 1 && doc.b == 2");
    assert!(explain::text_of(&x.to_value()).contains("DENY  create Note document n"));
}

#[test]
fn a_large_value_read_is_described_not_copied() {
    let schema = r#"
collection Big {
  allow read true
  allow create true
}
collection Note {
  allow read true
  allow create Big.byId("b")?.n == 1
}
"#;
    let mut db = Executor::new(
        MemoryStore::new(),
        std::sync::Arc::new(Schema::parse(schema).unwrap()),
        Limits::default(),
    );
    let big = format!(
        r#"Big.create({{ id: "b", n: 1, s: "{}" }})"#,
        "x".repeat(3000)
    );
    assert_committed(&commit(&mut db, &run("ann", &big)));
    let x = explain_commit(&db, &run("bob", r#"Note.create({ id: "n" })"#));
    let d = x.decisions.last().unwrap();
    assert!(d.allowed);
    let read = &d.rules[0].reads[0];
    assert!(read.visible);
    let Some(Value::String(s)) = &read.value else {
        panic!("{read:?}")
    };
    assert!(s.starts_with("a object of"), "{s}");
}
