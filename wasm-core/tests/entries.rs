//! Log entries other than plain commits: schema changes in the log and the clamp on
//! `now()`, applied by `warren_core::entry` the same way in every replica.

use std::sync::Arc;

use warren_core::entry::{Applied, SchemaApplied};
use warren_core::eval::Limits;
use warren_core::exec::{Commit, Executor, Op, Outcome};
use warren_core::protocol::{LogEntry, SchemaChange};
use warren_core::storage::MemoryStore;
use warren_core::value::obj;
use warren_core::{Schema, Value};

const V1: &str = r#"
collection Item {
  partition "user:" + doc.owner
  allow read   partition == "user:" + auth.sub
  allow create doc.owner == auth.sub
  allow update old.owner == auth.sub
}
function add(id, tag) { Item.create({ id, owner: auth.sub, tag, at: now() }) }
"#;

/// V1 plus an index over existing documents and a new function.
const V2: &str = r#"
collection Item {
  partition "user:" + doc.owner
  index byTag [tag]
  allow read   partition == "user:" + auth.sub
  allow create doc.owner == auth.sub
  allow update old.owner == auth.sub
}
function add(id, tag) { Item.create({ id, owner: auth.sub, tag, at: now() }) }
function tagged(tag) { Item.byTag(tag).count() }
"#;

/// V1 with a unique index over `tag`.
const V3_UNIQUE: &str = r#"
collection Item {
  partition "user:" + doc.owner
  unique index byTag [tag]
  allow read   partition == "user:" + auth.sub
  allow create doc.owner == auth.sub
}
function add(id, tag) { Item.create({ id, owner: auth.sub, tag, at: now() }) }
"#;

fn commit(seq: u64, ts: i64, function: &str, args: Value) -> LogEntry {
    LogEntry::Commit(Commit {
        client_id: "c".into(),
        client_seq: seq,
        schema_version: String::new(),
        timestamp: ts,
        auth: obj([("sub", "ann".into())]),
        op: Op::Call {
            function: function.into(),
            args,
        },
    })
}

fn schema(source: &str) -> LogEntry {
    LogEntry::Schema(SchemaChange {
        source: source.into(),
    })
}

fn executor(source: &str) -> Executor<MemoryStore> {
    Executor::new(
        MemoryStore::new(),
        Arc::new(Schema::parse(source).unwrap()),
        Limits::default(),
    )
}

fn add(seq: u64, id: &str, tag: &str) -> LogEntry {
    commit(
        seq,
        1_000 + seq as i64,
        "add",
        obj([("id", id.into()), ("tag", tag.into())]),
    )
}

fn committed(a: Applied) -> bool {
    matches!(
        a,
        Applied::Commit {
            outcome: Outcome::Committed { .. },
            ..
        }
    )
}

/// Replays `log` from the start and returns the digest after every entry.
fn digests(log: &[LogEntry]) -> Vec<[u8; 32]> {
    let mut db = executor(V1);
    log.iter()
        .enumerate()
        .map(|(i, e)| {
            db.apply_entry(e.clone(), i as u64 + 1).unwrap();
            db.digest().unwrap()
        })
        .collect()
}

#[test]
fn a_schema_entry_switches_at_its_position_and_indexes_what_exists() {
    let mut db = executor(V1);
    assert!(committed(db.apply_entry(add(1, "a", "x"), 1).unwrap()));
    assert!(committed(db.apply_entry(add(2, "b", "y"), 2).unwrap()));
    assert!(committed(db.apply_entry(add(3, "c", "x"), 3).unwrap()));
    // `tagged` does not exist before the change...
    let call = |seq| commit(seq, 2_000, "tagged", obj([("tag", "x".into())]));
    match db.apply_entry(call(4), 4).unwrap() {
        Applied::Commit {
            outcome: Outcome::Rejected { code, .. },
            ..
        } => assert_eq!(code.as_str(), "UNKNOWN_NAME"),
        other => panic!("{other:?}"),
    }
    // ...and counts the documents written before it through the new index after.
    match db.apply_entry(schema(V2), 5).unwrap() {
        Applied::Schema(SchemaApplied::Switched(s)) => assert_eq!(s.source(), V2),
        other => panic!("{other:?}"),
    }
    assert_eq!(db.schema().source(), V2);
    match db.apply_entry(call(5), 6).unwrap() {
        Applied::Commit {
            outcome: Outcome::Committed { result, .. },
            ..
        } => assert_eq!(result, Value::Int(2)),
        other => panic!("{other:?}"),
    }
    assert_eq!(
        warren_core::entry::schema_source(db.store())
            .unwrap()
            .as_deref(),
        Some(V2)
    );
    assert_eq!(db.position().unwrap(), 6);
}

#[test]
fn a_schema_the_data_does_not_allow_is_refused_the_same_way_everywhere() {
    let log = vec![
        add(1, "a", "x"),
        add(2, "b", "x"),
        schema(V3_UNIQUE),
        schema("collection {"),
        add(3, "c", "z"),
    ];
    let mut db = executor(V1);
    let mut refused = Vec::new();
    for (i, e) in log.iter().enumerate() {
        if let Applied::Schema(SchemaApplied::Refused { code, .. }) =
            db.apply_entry(e.clone(), i as u64 + 1).unwrap()
        {
            refused.push(code.as_str());
        }
    }
    assert_eq!(refused, ["UNIQUE_VIOLATION", "PARSE_ERROR"]);
    assert_eq!(db.schema().source(), V1, "the schema in force stays");
    // A refusal is part of the log's history: it moves the position and the digest.
    let a = digests(&log);
    assert_eq!(a, digests(&log), "replays agree");
    let without: Vec<LogEntry> = log
        .iter()
        .filter(|e| !matches!(e, LogEntry::Schema(_)))
        .cloned()
        .collect();
    assert_ne!(a.last(), digests(&without).last());
}

#[test]
fn replays_from_the_start_give_the_same_digests_and_another_schema_history_does_not() {
    let log = vec![add(1, "a", "x"), schema(V2), add(2, "b", "y")];
    let a = digests(&log);
    assert_eq!(a, digests(&log));
    // The same commits with the change elsewhere: the digests differ from there on.
    let moved = vec![add(1, "a", "x"), add(2, "b", "y"), schema(V2)];
    let b = digests(&moved);
    assert_eq!(a[0], b[0]);
    assert_ne!(a[1], b[1]);
    assert_ne!(a[2], b[2]);
}

#[test]
fn now_never_goes_backwards_along_the_log() {
    let mut db = executor(V1);
    // Region clocks disagree: the second stamp is earlier than the first.
    let at = |db: &Executor<MemoryStore>, id: &str| {
        db.query(
            &format!("Item.byId(\"{id}\").at"),
            &obj([("sub", "ann".into())]),
            0,
        )
        .unwrap()
    };
    let e1 = commit(
        1,
        5_000,
        "add",
        obj([("id", "a".into()), ("tag", "x".into())]),
    );
    let e2 = commit(
        2,
        4_000,
        "add",
        obj([("id", "b".into()), ("tag", "x".into())]),
    );
    let e3 = commit(
        3,
        6_000,
        "add",
        obj([("id", "c".into()), ("tag", "x".into())]),
    );
    match db.apply_entry(e1, 1).unwrap() {
        Applied::Commit { commit, .. } => assert_eq!(commit.timestamp, 5_000),
        other => panic!("{other:?}"),
    }
    match db.apply_entry(e2, 2).unwrap() {
        Applied::Commit { commit, .. } => assert_eq!(commit.timestamp, 5_000, "clamped"),
        other => panic!("{other:?}"),
    }
    db.apply_entry(e3, 3).unwrap();
    assert_eq!(at(&db, "a"), Value::Int(5_000));
    assert_eq!(at(&db, "b"), Value::Int(5_000));
    assert_eq!(at(&db, "c"), Value::Int(6_000));
    assert_eq!(warren_core::entry::last_now(db.store()).unwrap(), 6_000);
}
