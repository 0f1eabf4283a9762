//! What a caller cannot read changes nothing it can observe (DESIGN invariant 9): the
//! result, the error code and message, and the fuel of a query or a transaction are
//! the same whether partitions it may not read hold no matching documents or 10,000.

mod common;

use std::sync::Arc;

use common::*;
use warren_core::eval::Limits;
use warren_core::exec::{execute_metered, query_metered, Commit, Executor, Outcome, Usage};
use warren_core::storage::MemoryStore;
use warren_core::value::Value;
use warren_core::{Error, ErrorCode, Schema};

const SCHEMA: &str = r#"
collection Note {
  partition "user:" + doc.owner
  index byTitle [title]
  index byOwner [owner, title]
  unique index bySlug [slug]
  allow read   partition == "user:" + auth.sub
  allow create doc.owner == auth.sub
  allow update old.owner == auth.sub
  allow delete old.owner == auth.sub
}

function search(from, to) {
  Note.byTitle().range({ gte: from, lt: to }).take(3).map(n => n.title).toArray()
}

function note(title) {
  let n = Note.create({ owner: auth.sub, title })
  [n.id, Note.byTitle().range({ gte: "w", lt: "x" }).count()]
}
"#;

fn db() -> Executor<MemoryStore> {
    Executor::new(
        MemoryStore::new(),
        Arc::new(Schema::parse(SCHEMA).unwrap()),
        Limits::default(),
    )
}

/// Eve's own notes, the same in both stores.
fn with_eves_notes(db: &mut Executor<MemoryStore>) {
    let mut eve = Client::new("eve-setup", user("eve"));
    for (i, t) in ["apple", "walk", "wash", "water", "zebra"]
        .iter()
        .enumerate()
    {
        let src =
            format!(r#"Note.create({{ id: "e{i}", owner: "eve", title: "{t}", slug: "e{i}" }})"#);
        assert_committed(&commit(db, &eve.run(&src)));
    }
}

/// `n` notes eve may not read, all matching her queries: most in bob's partition, the
/// rest spread over 100 other users' partitions.
fn with_hidden_notes(db: &mut Executor<MemoryStore>, n: usize) {
    let mut next = 0;
    while next < n {
        let owner = if next % 2 == 0 {
            "bob".to_owned()
        } else {
            format!("u{}", next % 100)
        };
        let mut c = Client::new(&format!("setup-{owner}-{next}"), user(&owner));
        let k = (n - next).min(500);
        let src = format!(
            r#"range({next}, {}).map(i => Note.create({{ id: "hidden-" + i, owner: "{owner}",
                 title: "wifi: hunter" + i, slug: "s" + i }})).length"#,
            next + k
        );
        assert_committed(&commit(db, &c.run(&src)));
        next += k;
    }
}

fn stores() -> (Executor<MemoryStore>, Executor<MemoryStore>) {
    let mut none = db();
    with_eves_notes(&mut none);
    let mut many = db();
    with_eves_notes(&mut many);
    with_hidden_notes(&mut many, 10_000);
    (none, many)
}

/// What the caller observes: the result and the fuel and memory spent (the hidden work
/// is not observable, and differs).
type Seen = (Result<Value, Error>, u64, u64);

fn seen((r, u): (Result<Value, Error>, Usage)) -> Seen {
    (r, u.fuel, u.memory)
}

fn query(db: &Executor<MemoryStore>, src: &str) -> Seen {
    seen(query_metered(
        db.store(),
        db.schema(),
        src,
        &user("eve"),
        0,
        db.limits(),
    ))
}

fn run(db: &Executor<MemoryStore>, c: &Commit) -> (Outcome, u64, u64) {
    let pos = db.position().unwrap() + 1;
    let (o, u) = execute_metered(db.store(), db.schema(), c, pos, db.limits()).unwrap();
    (o, u.fuel, u.memory)
}

#[test]
fn hidden_documents_change_no_result_error_or_fuel() {
    let (none, many) = stores();
    let queries = [
        // A scan of the whole collection.
        r#"Note.all().where(.title >= "w").map(.title).toArray()"#,
        // count() over an index range, which reads no documents.
        r#"Note.byTitle().range({ gte: "w", lt: "x" }).count()"#,
        // byId of a document that does not exist in one store and is hidden in the other.
        r#"[Note.byId("hidden-17"), Note.byId("hidden-9999"), Note.byId("e1").title]"#,
        // An index range, read in both directions, with a skip and a take.
        r#"Note.byTitle().range({ gte: "w", lt: "x" }).skip(1).take(2).toArray()"#,
        r#"Note.byTitle().range({ gte: "w" }).reverse().first()"#,
        r#"Note.byTitle().order(desc(.title)).paginate(2)"#,
        r#"Note.all().isEmpty()"#,
        // A query that runs out of fuel part-way through the hidden entries.
        r#"Note.byTitle().where(.title.length > 100).toArray()"#,
    ];
    for src in queries {
        let a = query(&none, src);
        let b = query(&many, src);
        assert_eq!(a, b, "{src}");
        assert!(a.1 > 0, "{src}");
    }
    // The same query with just enough fuel in one store has just enough in the other.
    let src = r#"Note.byTitle().range({ gte: "w", lt: "x" }).toArray()"#;
    let fuel = query(&none, src).1;
    for f in [fuel - 1, fuel] {
        let mut tight = none.limits().clone();
        tight.fuel = f;
        let a = query_metered(none.store(), none.schema(), src, &user("eve"), 0, &tight);
        let b = query_metered(many.store(), many.schema(), src, &user("eve"), 0, &tight);
        assert_eq!(seen(a), seen(b), "fuel {f}");
    }
}

#[test]
fn hidden_documents_change_no_outcome_of_a_function_or_a_transaction() {
    let (none, many) = stores();
    let mut eve = Client::new("eve", user("eve"));
    let commits = [
        eve.call("search", Value::Array(vec!["w".into(), "x".into()])),
        eve.call("note", Value::Array(vec!["wax".into()])),
        eve.run(r#"Note.byTitle().range({ gte: "w" }).forEach(n => n.update({ seen: true }))"#),
        eve.run(r#"Note.byId("hidden-3") ?? abort("no such note")"#),
    ];
    for c in &commits {
        let a = run(&none, c);
        let b = run(&many, c);
        assert_eq!(a, b, "{:?}", c.op);
    }
}

#[test]
fn a_unique_violation_names_no_other_document() {
    let (_, mut many) = stores();
    let mut eve = Client::new("eve", user("eve"));
    let o = commit(
        &mut many,
        &eve.run(r#"Note.create({ owner: "eve", title: "x", slug: "s42" })"#),
    );
    let msg = assert_rejected(&o, ErrorCode::UniqueViolation);
    assert!(!msg.contains("hidden-42"), "{msg}");
}

#[test]
fn a_create_the_rules_deny_does_not_say_whether_the_id_exists() {
    let (_, mut many) = stores();
    let mut eve = Client::new("eve", user("eve"));
    // Eve may not create in bob's partition: whether hidden-1 exists is none of her
    // business, so both answers are the same denial.
    for id in ["hidden-1", "nothing-here"] {
        let src = format!(r#"Note.create({{ id: "{id}", owner: "bob", title: "mine" }})"#);
        assert_rejected(
            &commit(&mut many, &eve.run(&src)),
            ErrorCode::PermissionDenied,
        );
    }
}

#[test]
fn ids_that_new_id_makes_cannot_be_taken_by_another_user() {
    // Ann's next commit will create a note without an id. Eve knows everything Ann's
    // client will send, even its client id, and creates a note with that id first.
    let mut db = db();
    let mut ann = Client::new("ann-phone", user("ann"));
    let planned = ann.run(r#"Note.create({ owner: "ann", title: "mine" }).id"#);
    let predicted = {
        let mut scratch = db_with_same_schema(&db);
        match scratch.commit(&planned, 1).unwrap() {
            Outcome::Committed { result, .. } => result,
            other => panic!("{other:?}"),
        }
    };
    let Value::String(id) = &predicted else {
        panic!("{predicted:?}")
    };
    let mut eve = Client::new("eve", user("eve"));
    let squat = format!(r#"Note.create({{ id: "{id}", owner: "eve", title: "squatted" }})"#);
    assert_rejected(&commit(&mut db, &eve.run(&squat)), ErrorCode::InvalidId);
    // Ann's commit makes the id she expected.
    assert_eq!(assert_committed(&commit(&mut db, &planned)), predicted);
    // And Ann herself may use an id newId made for her, in another transaction.
    let mut ann2 = Client::new("ann-laptop", user("ann"));
    let again = format!(r#"Note.create({{ id: "{id}", owner: "ann", title: "again" }})"#);
    assert_rejected(
        &commit(&mut db, &ann2.run(&again)),
        ErrorCode::DocumentExists,
    );
}

fn db_with_same_schema(db: &Executor<MemoryStore>) -> Executor<MemoryStore> {
    Executor::new(
        MemoryStore::new(),
        Arc::new(Schema::parse(db.schema().source()).unwrap()),
        Limits::default(),
    )
}
