//! One test for every error code in `ErrorCode::ALL`: each makes the engine report the
//! code through the public API (a rejected transaction, a failed query, a schema that
//! does not compile, bytes that do not decode, a store that fails) and asserts the
//! exact code. `every_error_code_is_tested` fails when a code has no test here.

use std::cell::Cell;
use std::sync::Arc;

use warren_core::eval::Limits;
use warren_core::exec::{execute, query, Commit, Executor, Op, Outcome};
use warren_core::keys;
use warren_core::storage::{storage_error, Batch, Entry, KeyRange, MemoryStore, Storage};
use warren_core::value::{obj, Value};
use warren_core::{Error, ErrorCode, Schema};

const SCHEMA: &str = r#"
collection Item {
  index byN [n]
  unique index bySlug [slug]
  allow read true
  allow create true
  allow update true
  allow delete true
}

collection Note {
  partition "user:" + doc.owner
  allow read partition == "user:" + auth.sub
  allow create doc.owner == auth.sub
  allow update doc.owner == auth.sub
  allow delete doc.owner == auth.sub
}

collection Locked {
  allow read true
}

collection Picky {
  allow read true
  allow create doc.meta.ok == true
}

collection Guarded {
  allow read true
  allow create Item.byId("gate") == null
}

collection Costly {
  allow read true
  allow create range(1000).map(x => x).length() == 1000
}

collection Deep {
  allow read true
  allow create down(0)
}

collection Log {
  allow read true
  allow create true
}

collection Sneaky {
  partition Log.create({ x: 1 }).id
  allow read true
  allow create true
}

collection Typed {
  field title: string(nonblank, ..200)
  allow read true
  allow create true
}

collection Pad {
  field body: text
  allow read true
  allow create true
  allow update true
}

function editPad(update) {
  (Pad.byId("p") ?? Pad.create({ id: "p" })).editText("body", update)
}

function down(n) { down(n + 1) }

function add(title) { Item.create({ title }) }

function failing(why) {
  Item.create({ id: "before-abort" })
  abort(why)
}
"#;

const NOW: i64 = 1_700_000_000_000;

fn auth() -> Value {
    obj([("sub", "ann".into())])
}

fn schema() -> Schema {
    Schema::parse(SCHEMA).expect("the test schema parses")
}

fn commit(seq: u64, op: Op) -> Commit {
    Commit {
        client_id: "c1".into(),
        client_seq: seq,
        schema_version: String::new(),
        timestamp: NOW,
        auth: auth(),
        op,
    }
}

fn run_op(source: &str) -> Op {
    Op::Run {
        source: source.into(),
    }
}

/// An executor over a memory store that makes commits one after another.
struct Db {
    ex: Executor<MemoryStore>,
    seq: u64,
}

impl Db {
    fn new() -> Db {
        Db::with_limits(Limits::default())
    }

    fn with_limits(limits: Limits) -> Db {
        Db {
            ex: Executor::new(MemoryStore::new(), Arc::new(schema()), limits),
            seq: 0,
        }
    }

    fn commit(&mut self, op: Op) -> Outcome {
        self.seq += 1;
        let position = self.ex.position().unwrap() + 1;
        self.ex
            .commit(&commit(self.seq, op), position)
            .expect("a memory store does not fail")
    }

    fn ok(&mut self, source: &str) -> Value {
        match self.commit(run_op(source)) {
            Outcome::Committed { result, .. } => result,
            other => panic!("{source}: expected a commit, got {other:?}"),
        }
    }

    /// Asserts that `op` is rejected with `code`; returns the message.
    fn rejects(&mut self, op: Op, code: &str) -> String {
        let shown = format!("{op:?}");
        match self.commit(op) {
            Outcome::Rejected { code: c, message } => {
                assert_eq!(c.as_str(), code, "{shown}: {message}");
                assert_eq!(ErrorCode::parse(code), Some(c));
                assert!(
                    message.starts_with(code),
                    "the message starts with the code: {message}"
                );
                message
            }
            other => panic!("{shown}: expected {code}, got {other:?}"),
        }
    }

    fn rejected(&mut self, source: &str, code: &str) -> String {
        self.rejects(run_op(source), code)
    }

    fn query(&self, source: &str) -> Result<Value, Error> {
        self.ex.query(source, &auth(), NOW)
    }

    fn q(&self, source: &str) -> Value {
        self.query(source)
            .unwrap_or_else(|e| panic!("{source}: {e}"))
    }

    /// Asserts that a query fails with `code`; returns the error.
    fn fails(&self, source: &str, code: &str) -> Error {
        match self.query(source) {
            Ok(v) => panic!("{source}: expected {code}, got {v}"),
            Err(e) => {
                assert_eq!(e.code.as_str(), code, "{source}: {e}");
                e
            }
        }
    }
}

/// A query on an empty store with default limits.
fn fails(source: &str, code: &str) -> Error {
    Db::new().fails(source, code)
}

fn at(e: &Error) -> (u32, u32) {
    let p = e.pos.unwrap_or_else(|| panic!("no position: {e}"));
    (p.line, p.col)
}

// ----- the meta-test -----

#[test]
fn every_error_code_is_tested() {
    let me = include_str!("error_codes.rs");
    let mut missing = Vec::new();
    for code in ErrorCode::ALL {
        let s = code.as_str();
        let test_fn = format!("fn code_{}()", s.to_ascii_lowercase());
        if !me.contains(&test_fn) {
            missing.push(format!("{s}: no `{test_fn}` test"));
        }
        // The code as a string literal (this meta-test only names codes through
        // `ErrorCode::ALL`).
        if !me.contains(&format!("\"{s}\"")) {
            missing.push(format!("{s}: never asserted"));
        }
    }
    assert!(
        missing.is_empty(),
        "untested error codes:\n{}",
        missing.join("\n")
    );
}

#[test]
fn codes_are_stable_strings() {
    assert_eq!(ErrorCode::ALL.len(), 31);
    for code in ErrorCode::ALL {
        assert_eq!(ErrorCode::parse(code.as_str()), Some(*code));
        assert_eq!(code.to_string(), code.as_str());
        assert_eq!(
            code.is_deterministic(),
            !matches!(
                code.as_str(),
                "STORAGE_ERROR" | "CORRUPT" | "QUOTA_EXCEEDED" | "TEXT_UNAVAILABLE"
            )
        );
    }
    assert_eq!(ErrorCode::parse("parse_error"), None);
}

// ----- one test per code -----

#[test]
fn code_parse_error() {
    // A query, with the line and column of the offending token.
    let e = fails("let a = 1\nlet b = )", "PARSE_ERROR");
    assert_eq!(at(&e), (2, 9));
    assert_eq!(
        e.to_string(),
        "PARSE_ERROR at 2:9: expected an expression, found `)`"
    );
    let e = fails("1 +", "PARSE_ERROR");
    assert_eq!(at(&e), (1, 4));
    // The lexer: an unterminated string is reported where it starts.
    let e = fails("let s = 1\n  \"open", "PARSE_ERROR");
    assert_eq!(at(&e), (2, 3));
    let e = fails("a # b", "PARSE_ERROR");
    assert_eq!(at(&e), (1, 3));
    // Two statements on one line need a `;`.
    let e = fails("let a = 1 let b = 2", "PARSE_ERROR");
    assert_eq!(at(&e), (1, 11));
    // A transaction that does not parse is rejected.
    let msg = Db::new().rejected("Item.create({ id: \"x\" ", "PARSE_ERROR");
    assert!(msg.starts_with("PARSE_ERROR at 1:"), "{msg}");
    // A schema.
    let e = Schema::parse("collection A {\n  allow write true\n}").unwrap_err();
    assert_eq!(e.code.as_str(), "PARSE_ERROR");
    assert_eq!(at(&e), (2, 9));
    let e = Schema::parse("collection A {\n  index x owner\n}").unwrap_err();
    assert_eq!((e.code.as_str(), at(&e)), ("PARSE_ERROR", (2, 11)));
}

#[test]
fn code_schema_error() {
    for (src, line, col) in [
        ("collection A { allow read true }\ncollection A {}", 2, 1),
        ("collection A {\n  index byId [x]\n}", 2, 3),
        ("collection A {\n  index e []\n}", 2, 3),
        ("collection A {\n  index x [a]\n  index x [b]\n}", 3, 3),
        ("function f() { 1 }\nfunction f() { 2 }", 2, 1),
        ("function upper(s) { s }", 1, 1),
        ("collection A {}\nfunction A() { 1 }", 2, 1),
        ("collection A {\n  partition 1\n  partition 2\n}", 3, 3),
    ] {
        let e = Schema::parse(src).unwrap_err();
        assert_eq!(e.code.as_str(), "SCHEMA_ERROR", "{src}: {e}");
        assert_eq!(at(&e), (line, col), "{src}: {e}");
    }
}

#[test]
fn code_aborted() {
    let mut db = Db::new();
    let msg = db.rejects(
        Op::Call {
            function: "failing".into(),
            args: obj([("why", "no stock".into())]),
        },
        "ABORTED",
    );
    assert!(msg.ends_with(": no stock"), "{msg}");
    // The write before the abort is not applied.
    assert_eq!(db.q("Item.byId(\"before-abort\")"), Value::Null);
    let e = fails("abort(\"q\")", "ABORTED");
    assert_eq!(e.message, "q");
    db.rejected("let x = null\nx ?? abort()", "ABORTED");
}

#[test]
fn code_permission_denied() {
    let mut db = Db::new();
    // A rule that is false.
    let msg = db.rejected(
        "Note.create({ id: \"n\", owner: \"bob\" })",
        "PERMISSION_DENIED",
    );
    assert!(msg.contains("create of Note/n denied"), "{msg}");
    // No rule for the action at all.
    let msg = db.rejected("Locked.create({ id: \"l\" })", "PERMISSION_DENIED");
    assert!(msg.contains("no `allow create` rule"), "{msg}");
    // A rule that fails (doc.meta is null) denies rather than erring, and the denial
    // does not say why: a rule's error could carry what the caller may not read.
    let msg = db.rejected("Picky.create({ id: \"p\" })", "PERMISSION_DENIED");
    assert!(
        !msg.contains("TYPE_ERROR") && msg.contains("rules at 25:3"),
        "{msg}"
    );
    db.ok("Picky.create({ id: \"p\", meta: { ok: true } })");
    // Updates and deletes need rules too.
    db.rejected("Picky.byId(\"p\").update({ x: 1 })", "PERMISSION_DENIED");
    db.rejected("Picky.byId(\"p\").delete()", "PERMISSION_DENIED");
    assert_eq!(db.q("Picky.byId(\"p\").meta.ok"), Value::Bool(true));
}

#[test]
fn code_fuel_exhausted() {
    let limits = Limits {
        fuel: 2_000,
        ..Limits::default()
    };
    let mut db = Db::with_limits(limits);
    let msg = db.rejected("range(1000).map(x => x + 1).length()", "FUEL_EXHAUSTED");
    assert!(msg.contains("2000"), "{msg}");
    assert_eq!(db.ok("range(10).map(x => x + 1).length()"), Value::Int(10));
    db.fails("range(1000).map(x => x * 2)", "FUEL_EXHAUSTED");
    // A rule runs on its own budget, not the program's...
    let mut db = Db::with_limits(Limits {
        fuel: 500,
        ..Limits::default()
    });
    assert_eq!(db.ok("Costly.create({ id: \"c\" }).id"), Value::from("c"));
    // ...and a rule that runs out of it denies.
    let mut db = Db::with_limits(Limits {
        rule_fuel: 500,
        ..Limits::default()
    });
    db.rejected("Costly.create({ id: \"c\" })", "PERMISSION_DENIED");
    db.ok("Log.create({ id: \"c\" })");
}

#[test]
fn code_depth_exceeded() {
    let mut db = Db::new();
    // Unbounded recursion.
    db.rejects(
        Op::Call {
            function: "down".into(),
            args: Value::Array(vec![Value::Int(0)]),
        },
        "DEPTH_EXCEEDED",
    );
    // A value nested deeper than 64 levels.
    db.rejected("range(70).reduce((acc, x) => [acc], [])", "DEPTH_EXCEEDED");
    assert_eq!(
        db.ok("range(60).reduce((acc, x) => [acc], []).length()"),
        Value::Int(1)
    );
    // Arguments nested deeper than the limit.
    let mut deep = Value::Null;
    for _ in 0..100 {
        deep = Value::Array(vec![deep]);
    }
    db.rejects(
        Op::Call {
            function: "add".into(),
            args: obj([("title", deep)]),
        },
        "DEPTH_EXCEEDED",
    );
    // Inside a rule: a denial (rules run on their own budgets).
    db.rejected("Deep.create({ id: \"d\" })", "PERMISSION_DENIED");
    // Source nested deeper than the parser accepts.
    let src = "(".repeat(300) + "1" + &")".repeat(300);
    fails(&src, "DEPTH_EXCEEDED");
}

#[test]
fn code_argument_too_large() {
    let mut db = Db::new();
    let big = "x".repeat(70 * 1024);
    db.rejects(
        Op::Call {
            function: "add".into(),
            args: obj([("title", Value::String(big.clone()))]),
        },
        "ARGUMENT_TOO_LARGE",
    );
    db.rejected(&format!("\"{big}\".length()"), "ARGUMENT_TOO_LARGE");
    fails(&format!("\"{big}\".length()"), "ARGUMENT_TOO_LARGE");
    // Just under the limit is fine.
    let fits = "x".repeat(60 * 1024);
    assert_eq!(
        db.ok(&format!("\"{fits}\".length()")),
        Value::Int(60 * 1024)
    );
}

#[test]
fn code_document_too_large() {
    let mut db = Db::with_limits(Limits {
        max_doc_bytes: 100,
        ..Limits::default()
    });
    // The fields of { s: "x" * n } encode to 1 + 1 + 1 + 1 + 2 + n bytes (n >= 128).
    db.ok("Item.create({ id: \"ok\", s: \"x\".repeat(50) })");
    db.rejected(
        "Item.create({ id: \"big\", s: \"x\".repeat(200) })",
        "DOCUMENT_TOO_LARGE",
    );
    // Growing a document past the limit by update.
    db.rejected(
        "Item.byId(\"ok\").update({ t: \"y\".repeat(80) })",
        "DOCUMENT_TOO_LARGE",
    );
    assert_eq!(db.q("Item.byId(\"ok\").has(\"t\")"), Value::Bool(false));
    // With the default limit of 256 KiB.
    Db::new().rejected(
        "Item.create({ s: \"x\".repeat(300000) })",
        "DOCUMENT_TOO_LARGE",
    );
}

#[test]
fn code_result_too_large() {
    // Over the limit on one value built during evaluation.
    fails("\"ab\".repeat(1000000)", "RESULT_TOO_LARGE");
    fails("range(1000000)", "RESULT_TOO_LARGE");
    // Over the limit on a result.
    let mut db = Db::with_limits(Limits {
        max_result_bytes: 100,
        ..Limits::default()
    });
    db.fails("\"x\".repeat(200)", "RESULT_TOO_LARGE");
    assert_eq!(db.q("\"x\".repeat(200).length()"), Value::Int(200));
    db.rejected("\"x\".repeat(200)", "RESULT_TOO_LARGE");
}

/// A page and a set's array are measured as they are built, and the result is checked
/// by that measure (not walked again): at the limit they pass, a byte under it they fail,
/// as any result does.
#[test]
fn a_page_or_a_set_array_is_checked_to_the_byte() {
    let fill = "range(5).map(i => Item.create({ id: \"p\" + i, s: \"x\".repeat(i * 7) })).length()";
    let mut free = Db::new();
    free.ok(fill);
    for q in [
        "Item.all().paginate(3)",
        "Item.all().paginate(10)",
        "Item.all().toArray()",
    ] {
        let n = free.q(q).encoded_len();
        for (limit, fits) in [(n, true), (n - 1, false)] {
            let mut db = Db::with_limits(Limits {
                max_result_bytes: limit,
                ..Limits::default()
            });
            db.ok(fill);
            match db.query(q) {
                Ok(v) => {
                    assert!(fits, "{q}: {n} bytes passed a limit of {limit}");
                    assert_eq!(v, free.q(q));
                }
                Err(e) => {
                    assert!(!fits, "{q}: {n} bytes failed a limit of {limit}: {e}");
                    assert_eq!(e.code.as_str(), "RESULT_TOO_LARGE", "{q}: {e}");
                }
            }
        }
    }
}

#[test]
fn code_too_many_writes() {
    let mut db = Db::with_limits(Limits {
        max_writes: 3,
        ..Limits::default()
    });
    db.ok("range(3).map(i => Item.create({ id: \"a\" + i })).length()");
    db.rejected(
        "range(4).map(i => Item.create({ id: \"b\" + i })).length()",
        "TOO_MANY_WRITES",
    );
    assert_eq!(db.q("Item.all().count()"), Value::Int(3));
    // Writing one document again does not count again.
    db.ok("range(10).map(i => Item.byId(\"a0\").update({ i })).length()");
    assert_eq!(db.q("Item.byId(\"a0\").i"), Value::Int(9));
}

#[test]
fn code_type_error() {
    fails("1 + true", "TYPE_ERROR");
    fails("\"a\" - 1", "TYPE_ERROR");
    fails("null.x", "TYPE_ERROR");
    fails("1 < \"a\"", "TYPE_ERROR");
    fails("upper(1)", "TYPE_ERROR");
    fails("-\"a\"", "TYPE_ERROR");
    Db::new().rejected("Item.create(5)", "TYPE_ERROR");
}

#[test]
fn code_unknown_name() {
    fails("nothing", "UNKNOWN_NAME");
    fails("nope(1)", "UNKNOWN_NAME");
    fails("Item.nope()", "UNKNOWN_NAME");
    fails("\"a\".nope()", "UNKNOWN_NAME");
    let mut db = Db::new();
    db.rejects(
        Op::Call {
            function: "nope".into(),
            args: Value::Null,
        },
        "UNKNOWN_NAME",
    );
    db.rejected("Ghost.create({})", "UNKNOWN_NAME");
}

#[test]
fn code_invalid_argument() {
    fails("upper()", "INVALID_ARGUMENT");
    fails("[1].take(-1)", "INVALID_ARGUMENT");
    fails(
        "Item.all().paginate(2, \"not a cursor\")",
        "INVALID_ARGUMENT",
    );
    let mut db = Db::new();
    // A parameter the function does not have.
    db.rejects(
        Op::Call {
            function: "add".into(),
            args: obj([("name", "x".into())]),
        },
        "INVALID_ARGUMENT",
    );
    // Too many positional arguments.
    db.rejects(
        Op::Call {
            function: "add".into(),
            args: Value::Array(vec!["a".into(), "b".into()]),
        },
        "INVALID_ARGUMENT",
    );
    // Arguments that are neither an object nor an array.
    db.rejects(
        Op::Call {
            function: "add".into(),
            args: Value::Int(1),
        },
        "INVALID_ARGUMENT",
    );
}

#[test]
fn code_arithmetic_error() {
    fails("1 / 0", "ARITHMETIC_ERROR");
    fails("1 % 0", "ARITHMETIC_ERROR");
    fails("9223372036854775807 + 1", "ARITHMETIC_ERROR");
    fails("(-9223372036854775807 - 1) / -1", "ARITHMETIC_ERROR");
    fails("1e308 * 10", "ARITHMETIC_ERROR");
    fails("1.0 / 0", "ARITHMETIC_ERROR");
    Db::new().rejected("let x = 0\n10 / x", "ARITHMETIC_ERROR");
}

#[test]
fn code_document_exists() {
    let mut db = Db::new();
    db.ok("Item.create({ id: \"a\" })");
    let msg = db.rejected("Item.create({ id: \"a\" })", "DOCUMENT_EXISTS");
    assert!(msg.contains("Item/a already exists"), "{msg}");
    // Also within one transaction.
    db.rejected(
        "Item.create({ id: \"b\" })\nItem.create({ id: \"b\" })",
        "DOCUMENT_EXISTS",
    );
    // Another collection may use the same id.
    db.ok("Log.create({ id: \"a\" })");
}

#[test]
fn code_document_not_found() {
    let mut db = Db::new();
    db.ok("Item.create({ id: \"a\" })\nItem.create({ id: \"b\" })");
    db.rejected(
        "let d = Item.byId(\"a\")\nd.delete()\nd.update({ x: 1 })",
        "DOCUMENT_NOT_FOUND",
    );
    db.rejected(
        "let d = Item.byId(\"a\")\nd.delete()\nd.replace({})",
        "DOCUMENT_NOT_FOUND",
    );
    db.rejected(
        "let d = Item.byId(\"b\")\nd.delete()\nd.delete()",
        "DOCUMENT_NOT_FOUND",
    );
    assert_eq!(db.q("Item.all().count()"), Value::Int(2));
}

#[test]
fn code_invalid_id() {
    let mut db = Db::new();
    for id in [
        "\"\"",
        "\"a\\nb\"",
        "\"tab\\there\"",
        "\"x\".repeat(257)",
        "5",
        "null",
        "[\"a\"]",
    ] {
        db.rejected(&format!("Item.create({{ id: {id} }})"), "INVALID_ID");
    }
    assert_eq!(
        db.ok("Item.create({ id: \"x\".repeat(256) }).id.length()"),
        Value::Int(256)
    );
    assert_eq!(
        db.ok("Item.create({ id: \"with space/and:ünïcode\" }).id"),
        Value::from("with space/and:ünïcode")
    );
}

#[test]
fn code_validation_failed() {
    let mut db = Db::new();
    let msg = db.rejected(
        "Typed.create({ id: \"a\", title: \" \" })",
        "VALIDATION_FAILED",
    );
    assert!(
        msg.contains("Typed/a: field title must not be blank"),
        "{msg}"
    );
    db.ok("Typed.create({ id: \"a\", title: \"Plan\" })");
}

#[test]
fn code_unique_violation() {
    let mut db = Db::new();
    db.ok("Item.create({ id: \"a\", slug: \"s\" })");
    let msg = db.rejected(
        "Item.create({ id: \"b\", slug: \"s\" })",
        "UNIQUE_VIOLATION",
    );
    assert!(msg.contains("bySlug"), "{msg}");
    db.ok("Item.create({ id: \"c\", slug: \"t\" })");
    db.rejected(
        "Item.byId(\"c\").update({ slug: \"s\" })",
        "UNIQUE_VIOLATION",
    );
    // Freeing the key in the same transaction makes room.
    db.ok("Item.byId(\"a\").update({ slug: null })\nItem.byId(\"c\").update({ slug: \"s\" })");
    assert_eq!(db.q("Item.bySlug(\"s\").first().id"), Value::from("c"));
}

#[test]
fn code_partition_change() {
    let mut db = Db::new();
    db.ok("Note.create({ id: \"n\", owner: \"ann\", text: \"a\" })");
    let msg = db.rejected(
        "Note.byId(\"n\").update({ owner: \"bob\" })",
        "PARTITION_CHANGE",
    );
    assert!(
        msg.contains("user:ann") && msg.contains("user:bob"),
        "{msg}"
    );
    db.rejected(
        "Note.byId(\"n\").replace({ owner: \"eve\" })",
        "PARTITION_CHANGE",
    );
    db.ok("Note.byId(\"n\").update({ text: \"b\" })");
    assert_eq!(db.q("Note.byId(\"n\").text"), Value::from("b"));
}

#[test]
fn code_read_only() {
    let mut db = Db::new();
    db.ok("Item.create({ id: \"a\" })");
    db.fails("Item.create({ id: \"b\" })", "READ_ONLY");
    db.fails("Item.byId(\"a\").update({ x: 1 })", "READ_ONLY");
    db.fails("Item.byId(\"a\").replace({})", "READ_ONLY");
    db.fails("Item.byId(\"a\").delete()", "READ_ONLY");
    // A partition expression cannot write either.
    db.rejected("Sneaky.create({ id: \"s\" })", "READ_ONLY");
    assert_eq!(db.q("Log.all().count()"), Value::Int(0));
}

// ----- CORRUPT: bytes that do not decode -----

fn store_with(key: Vec<u8>, value: Vec<u8>) -> MemoryStore {
    let mut store = MemoryStore::new();
    let mut b = Batch::new();
    b.put(key, value);
    store.apply(b).unwrap();
    store
}

#[test]
fn code_corrupt() {
    for bad in [
        &[0x09][..],
        &[0x05, 5, b'a'],
        &[0x00, 0x00],
        &[],
        &[0x04, 0, 0, 0, 0, 0, 0, 0xf0, 0x7f],
        &[0x08, 2, 1, b'b', 0x00, 1, b'a', 0x00],
    ] {
        let e = Value::decode(bad).unwrap_err();
        assert_eq!(e.code.as_str(), "CORRUPT", "{bad:?}");
    }
    assert_eq!(
        Value::decode(&Value::Int(5).encode()).unwrap(),
        Value::Int(5)
    );

    // A store holding a malformed document.
    let sch = schema();
    let limits = Limits::default();
    let store = store_with(keys::doc_key("Item", "bad"), b"\x01garbage".to_vec());
    // (A query's `count()` of a collection reads keys, not documents: see
    // `Item.all().toArray()` for a scan that decodes them.)
    for src in ["Item.byId(\"bad\")", "Item.all().toArray()"] {
        let e = query(&store, &sch, src, &auth(), NOW, &limits).unwrap_err();
        assert_eq!(e.code.as_str(), "CORRUPT", "{src}: {e}");
    }
    // A transaction that reads it: `execute` fails (Err) instead of recording a
    // rejection, since another replica's store would not be corrupt.
    let c = commit(1, run_op("Item.byId(\"bad\")"));
    let e = execute(&store, &sch, &c, 1, &limits).unwrap_err();
    assert_eq!(e.code.as_str(), "CORRUPT");
    let mut ex = Executor::new(store, Arc::new(sch), limits);
    let e = ex.commit(&c, 1).unwrap_err();
    assert_eq!(e.code.as_str(), "CORRUPT");
    assert_eq!(ex.position().unwrap(), 0, "nothing was recorded");

    // A malformed client sequence record.
    let store = store_with(keys::client_key("c1"), vec![1, 2, 3]);
    let e = execute(&store, &schema(), &c, 1, &Limits::default()).unwrap_err();
    assert_eq!(e.code.as_str(), "CORRUPT");
}

// ----- STORAGE_ERROR: a store that fails -----

/// A memory store whose document reads, scans or writes fail when told to.
struct FailingStore {
    inner: MemoryStore,
    fail_doc_gets: Cell<bool>,
    fail_scans: Cell<bool>,
    fail_apply: bool,
}

impl FailingStore {
    fn new(inner: MemoryStore) -> FailingStore {
        FailingStore {
            inner,
            fail_doc_gets: Cell::new(false),
            fail_scans: Cell::new(false),
            fail_apply: false,
        }
    }
}

impl Storage for FailingStore {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, Error> {
        if self.fail_doc_gets.get() && key.first() == Some(&keys::SPACE_DOC) {
            return Err(storage_error("disk on fire (get)"));
        }
        self.inner.get(key)
    }

    fn scan(&self, range: &KeyRange, reverse: bool, limit: usize) -> Result<Vec<Entry>, Error> {
        if self.fail_scans.get() {
            return Err(storage_error("disk on fire (scan)"));
        }
        self.inner.scan(range, reverse, limit)
    }

    fn apply(&mut self, batch: Batch) -> Result<(), Error> {
        if self.fail_apply {
            return Err(storage_error("disk on fire (apply)"));
        }
        self.inner.apply(batch)
    }
}

/// A store that is out of space: reads work, every write fails with QUOTA_EXCEEDED.
struct FullStore(MemoryStore);

impl Storage for FullStore {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, Error> {
        self.0.get(key)
    }
    fn scan(&self, range: &KeyRange, reverse: bool, limit: usize) -> Result<Vec<Entry>, Error> {
        self.0.scan(range, reverse, limit)
    }
    fn apply(&mut self, _: warren_core::storage::Batch) -> Result<(), Error> {
        Err(Error::new(
            ErrorCode::QuotaExceeded,
            "no space left for this origin",
        ))
    }
}

#[test]
fn code_quota_exceeded() {
    // Produced by a backend (IndexedDB's QuotaExceededError; tested in the browser).
    // It is not a property of the commit: the commit fails, nothing is recorded, and the
    // state is as it was.
    let mut ex = Executor::new(
        FullStore(MemoryStore::new()),
        Arc::new(schema()),
        Limits::default(),
    );
    let c = commit(1, run_op("Item.create({ id: \"a\" })"));
    let e = ex.commit(&c, 1).unwrap_err();
    assert_eq!(e.code.as_str(), "QUOTA_EXCEEDED");
    assert!(!e.code.is_deterministic());
    assert_eq!(ex.position().unwrap(), 0);
    assert_eq!(
        ex.query("Item.all().count()", &auth(), NOW).unwrap(),
        Value::Int(0)
    );
}

#[test]
fn code_identity_quota_exceeded() {
    // Kept by a server when it applies a commit (`exec::commit_batch`): one document
    // per identity here. The second create is rejected and changes nothing.
    let limits = Limits {
        quotas: warren_core::quota::Quotas {
            documents: 1,
            ..warren_core::quota::Quotas::UNLIMITED
        },
        ..Limits::default()
    };
    let mut ex = Executor::new(MemoryStore::new(), Arc::new(schema()), limits);
    let c = commit(1, run_op("Item.create({ id: \"a\" })"));
    assert!(matches!(
        ex.serve_commit(&c, 1).unwrap(),
        Outcome::Committed { .. }
    ));
    let c = commit(2, run_op("Item.create({ id: \"b\" })"));
    match ex.serve_commit(&c, 2).unwrap() {
        Outcome::Rejected { code, message } => {
            assert_eq!(code.as_str(), "IDENTITY_QUOTA_EXCEEDED");
            assert!(code.is_deterministic());
            assert!(
                message.starts_with(
                    "IDENTITY_QUOTA_EXCEEDED: this identity would keep 2 documents; its quota is 1"
                ),
                "{message}"
            );
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(
        ex.query("Item.all().count()", &auth(), NOW).unwrap(),
        Value::Int(1)
    );
}

#[test]
fn code_storage_error() {
    let schema = schema();
    let limits = Limits::default();
    let store = FailingStore::new(MemoryStore::new());
    // Nothing fails yet.
    let c1 = commit(1, run_op("Item.byId(\"a\")"));
    assert!(matches!(
        execute(&store, &schema, &c1, 1, &limits).unwrap(),
        Outcome::Committed { .. }
    ));

    // A failing read: `execute` returns Err, not a Rejected outcome, because a
    // storage failure is not a property of the commit.
    store.fail_doc_gets.set(true);
    let e = execute(&store, &schema, &c1, 1, &limits).unwrap_err();
    assert_eq!(e.code.as_str(), "STORAGE_ERROR");
    assert_eq!(e.message, "disk on fire (get)");
    let e = query(&store, &schema, "Item.byId(\"a\")", &auth(), NOW, &limits).unwrap_err();
    assert_eq!(e.code.as_str(), "STORAGE_ERROR");
    // A failing read inside a rule is not a denial either.
    let c = commit(1, run_op("Guarded.create({ id: \"g\" })"));
    let e = execute(&store, &schema, &c, 1, &limits).unwrap_err();
    assert_eq!(e.code.as_str(), "STORAGE_ERROR");
    store.fail_doc_gets.set(false);

    // A failing scan.
    store.fail_scans.set(true);
    let c = commit(1, run_op("Item.all().count()"));
    let e = execute(&store, &schema, &c, 1, &limits).unwrap_err();
    assert_eq!(e.code.as_str(), "STORAGE_ERROR");
    assert_eq!(e.message, "disk on fire (scan)");
    let e = query(&store, &schema, "Item.byN().first()", &auth(), NOW, &limits).unwrap_err();
    assert_eq!(e.code.as_str(), "STORAGE_ERROR");
    store.fail_scans.set(false);

    // Through an executor: the commit fails and nothing is recorded; the same commit
    // succeeds once the store recovers.
    let mut ex = Executor::new(store, Arc::new(schema), limits);
    ex.store_mut().fail_doc_gets.set(true);
    let c = commit(1, run_op("Item.create({ id: \"a\" })"));
    assert_eq!(ex.commit(&c, 1).unwrap_err().code.as_str(), "STORAGE_ERROR");
    assert_eq!(ex.position().unwrap(), 0);
    ex.store_mut().fail_doc_gets.set(false);
    assert!(matches!(
        ex.commit(&c, 1).unwrap(),
        Outcome::Committed { .. }
    ));
    assert_eq!(ex.position().unwrap(), 1);

    // A failing write of the outcome.
    ex.store_mut().fail_apply = true;
    let c = commit(2, run_op("Item.create({ id: \"b\" })"));
    assert_eq!(ex.commit(&c, 2).unwrap_err().code.as_str(), "STORAGE_ERROR");
    assert_eq!(ex.position().unwrap(), 1);
    ex.store_mut().fail_apply = false;
    assert_eq!(
        ex.query("Item.all().map(.id)", &auth(), NOW).unwrap(),
        Value::Array(vec!["a".into()])
    );
}

#[test]
fn code_memory_exhausted() {
    let mut db = Db::with_limits(Limits {
        max_memory_bytes: 1 << 20,
        ..Limits::default()
    });
    // Copies of one string, each paid for before it is made.
    let msg = db.rejected(
        "let s = \"x\".repeat(300000)\n[s, s, s, s].length",
        "MEMORY_EXHAUSTED",
    );
    assert!(msg.contains("1048576"), "{msg}");
    // Reading the variable again and again costs nothing.
    assert_eq!(
        db.ok("let s = \"x\".repeat(300000)\nrange(100).map(i => s.length).length"),
        Value::Int(100)
    );
    db.fails(
        "range(20000).map(i => ({ a: i, b: [i] }))",
        "MEMORY_EXHAUSTED",
    );
}

#[test]
fn code_hidden_work_exhausted() {
    // Notes of another user: eve cannot read them, and scanning past them is work she
    // cannot see. It costs her no fuel, but it is bounded.
    let mut db = Db::new();
    db.ex.set_limits(Limits::default());
    let mut bob = Executor::new(MemoryStore::new(), Arc::new(schema()), Limits::default());
    let c = Commit {
        auth: obj([("sub", "bob".into())]),
        ..commit(
            1,
            run_op("range(50).map(i => Note.create({ owner: \"bob\", n: i })).length"),
        )
    };
    assert!(matches!(
        bob.commit(&c, 1).unwrap(),
        Outcome::Committed { .. }
    ));
    let tight = Limits {
        max_hidden_work: 40,
        ..Limits::default()
    };
    // A scan that walks the documents (a plain `count()` of a collection counts
    // partitions' keys instead: one step of hidden work per unreadable partition).
    let e = query(
        bob.store(),
        bob.schema(),
        "Note.all().where(n => n.n >= 0).count()",
        &auth(),
        NOW,
        &tight,
    )
    .unwrap_err();
    assert_eq!(e.code.as_str(), "HIDDEN_WORK_EXHAUSTED");
    let ok = query(
        bob.store(),
        bob.schema(),
        "Note.all().count()",
        &auth(),
        NOW,
        &Limits::default(),
    );
    assert_eq!(ok.unwrap(), Value::Int(0));
    drop(db);
}

/// A panic inside the engine (here a test-only built-in) is refused with
/// `INTERNAL_ERROR`, the same way on every replica, and nothing is written.
#[test]
fn code_internal_error() {
    let mut db = Db::new();
    let msg = db.rejected("Item.create({ id: \"x\" })\n__panic()", "INTERNAL_ERROR");
    assert_eq!(msg, warren_core::exec::INTERNAL_MESSAGE);
    assert_eq!(db.q("Item.byId(\"x\")"), Value::Null);
    let mut other = Db::new();
    other.rejected("Item.create({ id: \"x\" })\n__panic()", "INTERNAL_ERROR");
    assert_eq!(db.ex.digest().unwrap(), other.ex.digest().unwrap());
    // The replica keeps going.
    db.ok("Item.create({ id: \"y\" })");
}

fn edit_pad(update: Vec<u8>) -> Op {
    Op::Call {
        function: "editPad".into(),
        args: obj([("update", Value::Bytes(update))]),
    }
}

#[test]
fn code_invalid_text_update() {
    // A Yjs update that ends early (one client, one struct, then nothing).
    let msg = Db::new().rejects(edit_pad(vec![1, 1, 7]), "INVALID_TEXT_UPDATE");
    assert!(msg.contains("ends early"), "{msg}");
}

#[test]
#[cfg(feature = "text")]
fn code_text_update_out_of_order() {
    // Client 7 inserts "x" after its own character 5, which the text never had.
    let update = vec![1, 1, 7, 6, 0x84, 7, 5, 1, b'x', 0];
    let mut db = Db::new();
    db.rejects(edit_pad(update), "TEXT_UPDATE_OUT_OF_ORDER");
    assert_eq!(db.q(r#"Pad.byId("p")"#), Value::Null);
}

/// Only an engine built without collaborative text (the browser's smaller module)
/// gives it: `cargo test -p warren-core --no-default-features --test error_codes`
/// (run by `.ci/test`). Like a storage failure it is not a property of the commit, so
/// `execute` returns it instead of a rejection; the full engine applies the edit.
#[test]
fn code_text_unavailable() {
    // Client 7 inserts "x" at the start of the text.
    let update = vec![1, 1, 7, 0, 4, 1, 4, b't', b'e', b'x', b't', 1, b'x', 0];
    let c = commit(1, edit_pad(update));
    let store = MemoryStore::new();
    let r = execute(&store, &schema(), &c, 1, &Limits::default());
    if cfg!(feature = "text") {
        assert!(matches!(r, Ok(Outcome::Committed { .. })), "{r:?}");
    } else {
        let e = r.unwrap_err();
        assert_eq!(e.code.as_str(), "TEXT_UNAVAILABLE");
        assert!(e.message.contains("without collaborative text"), "{e}");
    }
}
