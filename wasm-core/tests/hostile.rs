//! Hostile input: each case ends as a clean rejection with its own code. No panic, no
//! stack overflow, no hang, and nothing written but the client's sequence number.

mod common;

use std::cell::Cell;
use std::sync::Arc;

use common::*;
use warren_core::doc::{doc_ops, StoredDoc};
use warren_core::eval::{Limits, COUNTED_KEYS_PER_STEP};
use warren_core::exec::{execute, query, Commit, Executor, Op, Outcome};
use warren_core::storage::{Batch, Entry, KeyRange, MemoryStore, Storage};
use warren_core::value::{obj, Value};
use warren_core::{Error, ErrorCode, Schema};

/// Runs an ad-hoc transaction and returns its rejection code, checking that only
/// bookkeeping (client sequence, kept outcome, digest, position) changed.
fn reject_code(db: &mut Executor<MemoryStore>, c: &Commit) -> ErrorCode {
    let docs = |s: &MemoryStore| {
        s.entries()
            .filter(|(k, _)| !matches!(k[0], b'C' | b'M' | b'R'))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect::<Vec<_>>()
    };
    let before = docs(db.store());
    let o = commit(db, c);
    assert_eq!(
        docs(db.store()),
        before,
        "a rejected commit changed documents"
    );
    match o {
        Outcome::Rejected { code, .. } => code,
        other => panic!("expected a rejection, got {other:?}"),
    }
}

fn big_limits() -> Limits {
    Limits {
        max_args_bytes: 64 << 20,
        ..Limits::default()
    }
}

#[test]
fn an_expression_nested_100_000_levels_deep() {
    let mut db = db();
    let mut c = Client::new("c", user("ann"));
    for src in [
        "(".repeat(100_000) + "1" + &")".repeat(100_000),
        "[".repeat(100_000) + &"]".repeat(100_000),
        "-".repeat(100_000) + "1",
        "x".to_string() + &".f".repeat(100_000),
        "1".to_string() + &"+1".repeat(100_000),
        "{a:".repeat(100_000) + "1" + &"}".repeat(100_000),
        "if true {".repeat(100_000) + &"}".repeat(100_000),
        "(x => ".repeat(50_000) + "x" + &")".repeat(50_000),
    ] {
        // Under the default limits the source alone is too large...
        assert_eq!(
            reject_code(&mut db, &c.run(&src)),
            ErrorCode::ArgumentTooLarge
        );
        // ...and with room for it, the nesting is refused.
        db.set_limits(big_limits());
        assert_eq!(
            reject_code(&mut db, &c.run(&src)),
            ErrorCode::DepthExceeded,
            "{}",
            &src[..16]
        );
        let e = db.query(&src, &user("ann"), 0).unwrap_err();
        assert_eq!(e.code, ErrorCode::DepthExceeded);
        db.set_limits(Limits::default());
    }
}

#[test]
fn a_schema_nested_too_deep_is_refused() {
    let src = format!(
        "function f() {{ {}1{} }}",
        "(".repeat(100_000),
        ")".repeat(100_000)
    );
    assert_eq!(
        Schema::parse(&src).unwrap_err().code,
        ErrorCode::DepthExceeded
    );
}

#[test]
fn recursive_functions() {
    let schema = Arc::new(
        Schema::parse(
            r#"
            function forever(n) { forever(n + 1) }
            function ping(n) { pong(n) }
            function pong(n) { ping(n) }
            function fan(n) { fan(n + 1) + fan(n + 2) }
            function viaLambda(n) { [1].map(x => viaLambda(n)) }
            "#,
        )
        .unwrap(),
    );
    let mut db = Executor::new(MemoryStore::new(), schema, Limits::default());
    let mut c = Client::new("c", user("ann"));
    for f in ["forever", "ping", "fan", "viaLambda"] {
        let code = reject_code(&mut db, &c.call(f, Value::Array(vec![Value::Int(0)])));
        assert_eq!(code, ErrorCode::DepthExceeded, "{f}");
    }
}

#[test]
fn a_50_mb_string_argument() {
    let mut db = db();
    let mut c = Client::new("c", user("ann"));
    let huge = Value::String("x".repeat(50 << 20));
    let code = reject_code(
        &mut db,
        &c.call(
            "addTodo",
            obj([
                ("id", "a".into()),
                ("title", huge.clone()),
                ("created", Value::Int(1)),
            ]),
        ),
    );
    assert_eq!(code, ErrorCode::ArgumentTooLarge);
    // Also as the auth claims, and as ad-hoc source.
    let mut evil = Client::new("e", obj([("sub", huge)]));
    assert_eq!(
        reject_code(&mut db, &evil.run("1")),
        ErrorCode::ArgumentTooLarge
    );
    assert_eq!(
        reject_code(&mut db, &c.run(&"1".repeat(50 << 20))),
        ErrorCode::ArgumentTooLarge
    );
}

#[test]
fn deeply_nested_arguments() {
    let mut db = db();
    let mut c = Client::new("c", user("ann"));
    // Values from JSON or the wire are already depth-limited when decoded; this one is
    // built natively, past that limit.
    let mut v = Value::Null;
    for _ in 0..1_000 {
        v = Value::Array(vec![v]);
    }
    let code = reject_code(&mut db, &c.call("toggle", obj([("id", v)])));
    assert_eq!(code, ErrorCode::DepthExceeded);
}

#[test]
fn values_that_grow_without_bound() {
    let mut db = db();
    let mut c = Client::new("c", user("ann"));
    let cases = [
        // Doubling a string: stopped by the size limit, not by memory.
        (
            "range(64).reduce((s, i) => s + s, \"x\")",
            ErrorCode::ResultTooLarge,
        ),
        ("\"x\".repeat(1000000000)", ErrorCode::ResultTooLarge),
        ("range(1000000000)", ErrorCode::ResultTooLarge),
        (
            "range(64).reduce((a, i) => a.concat(a), [1])",
            ErrorCode::ResultTooLarge,
        ),
        // Nesting through a fold: stopped at the value depth limit.
        (
            "range(100000).reduce((a, i) => [a], [])",
            ErrorCode::DepthExceeded,
        ),
        (
            "range(100000).reduce((a, i) => ({ x: a }), {})",
            ErrorCode::DepthExceeded,
        ),
        // Work without output: stopped by fuel.
        (
            "range(100000).map(i => range(100).map(j => i * j).length)",
            ErrorCode::FuelExhausted,
        ),
    ];
    for (src, code) in cases {
        assert_eq!(reject_code(&mut db, &c.run(src)), code, "{src}");
    }
}

#[test]
fn a_document_over_the_size_limit() {
    let mut db = db();
    let mut c = Client::new("c", user("ann"));
    let src = "Todo.create({ owner: auth.sub, created: 1, blob: \"x\".repeat(200000) + \"x\".repeat(200000) })";
    db.set_limits(Limits {
        max_value_bytes: 1 << 20,
        ..Limits::default()
    });
    assert_eq!(
        reject_code(&mut db, &c.run(src)),
        ErrorCode::DocumentTooLarge
    );
}

/// A store that counts the entries it hands out.
struct Counting<'a> {
    inner: &'a MemoryStore,
    entries_read: Cell<usize>,
}

impl Storage for Counting<'_> {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, Error> {
        self.entries_read.set(self.entries_read.get() + 1);
        self.inner.get(key)
    }
    fn scan(&self, range: &KeyRange, reverse: bool, limit: usize) -> Result<Vec<Entry>, Error> {
        let r = self.inner.scan(range, reverse, limit)?;
        self.entries_read.set(self.entries_read.get() + r.len());
        Ok(r)
    }
    fn apply(&mut self, _: Batch) -> Result<(), Error> {
        unreachable!("execution only reads")
    }
}

#[test]
fn a_scan_over_a_million_documents_under_a_small_budget() {
    let schema = schema();
    let log = schema.collection("Log").unwrap();
    let mut store = MemoryStore::new();
    let mut batch = Batch::new();
    for i in 0..1_000_000u32 {
        let d = StoredDoc {
            partition: "Log".into(),
            version: 1,
            data: obj([("n", Value::Int(i64::from(i)))]),
        };
        batch
            .ops
            .extend(doc_ops(log, &format!("{i:07}"), None, Some(&d)));
    }
    // As every write does (`exec::writes_batch`): the (partition, collection) pair is
    // listed, which a query's `count()` of a collection starts from.
    batch.put(
        warren_core::keys::version_key("Log", "Log"),
        1u64.to_be_bytes().to_vec(),
    );
    store.apply(batch).unwrap();
    let limits = Limits {
        fuel: 10_000,
        ..Limits::default()
    };
    let counting = Counting {
        inner: &store,
        entries_read: Cell::new(0),
    };
    let auth = user("ann");
    for src in [
        "Log.all().count()",
        "Log.all().where(.n < 0).first()",
        "Log.all().order(desc(.n)).take(1)",
        "Log.all().map(.n).toArray().length",
    ] {
        counting.entries_read.set(0);
        let e = query(&counting, &schema, src, &auth, 0, &limits).unwrap_err();
        assert_eq!(e.code, ErrorCode::FuelExhausted, "{src}");
        // It stopped early: it read about as many documents as it had fuel for (a
        // count from keys, as many keys).
        let read = counting.entries_read.get();
        let bound = if src == "Log.all().count()" {
            10_000 * COUNTED_KEYS_PER_STEP as usize + 256
        } else {
            10_000 + 64
        };
        assert!(read <= bound, "{src} read {read} entries");
        // The same in a transaction.
        let commit = Commit {
            client_id: "c".into(),
            client_seq: 1,
            schema_version: String::new(),
            timestamp: 0,
            auth: auth.clone(),
            op: Op::Run { source: src.into() },
        };
        match execute(&counting, &schema, &commit, 1, &limits).unwrap() {
            Outcome::Rejected { code, .. } => assert_eq!(code, ErrorCode::FuelExhausted),
            other => panic!("{other:?}"),
        }
    }
    // With a real budget, the cheap query still answers from the first page.
    counting.entries_read.set(0);
    let v = query(
        &counting,
        &schema,
        "Log.all().take(3).map(.n)",
        &auth,
        0,
        &limits,
    )
    .unwrap();
    assert_eq!(
        v,
        Value::Array(vec![Value::Int(0), Value::Int(1), Value::Int(2)])
    );
    assert!(counting.entries_read.get() <= 64 + 1);
}

#[test]
fn garbage_source_never_panics() {
    // Mutated fragments of real programs: every one either runs or is refused cleanly.
    let seed = seed(0xbad_5eed);
    let mut rng = Rng(seed);
    let pieces = [
        "Todo",
        ".",
        "byOwner",
        "(",
        ")",
        "[",
        "]",
        "{",
        "}",
        ",",
        ":",
        "=>",
        "x",
        "\"s\"",
        "1",
        "2.5",
        "-",
        "+",
        "*",
        "/",
        "%",
        "==",
        "!",
        "&&",
        "||",
        "??",
        "?.",
        "let",
        "=",
        "if",
        "else",
        "\n",
        ";",
        "where",
        "order",
        "desc",
        "abort",
        "update",
        "create",
        "null",
        "true",
        "'",
        "\\",
        "\u{0}",
        "é",
        "9999999999999999999999",
        "1e999",
        "/*",
        "//",
    ];
    let db = db();
    let mut runs = 0;
    for _ in 0..5_000 {
        let n = 1 + rng.below(30) as usize;
        let src: String = (0..n)
            .map(|_| *rng.pick(&pieces))
            .collect::<Vec<_>>()
            .join(" ");
        let r = db.query(&src, &user("ann"), 0);
        if let Err(e) = r {
            assert!(
                !e.message.is_empty(),
                "seed {seed}: empty message for {src:?}"
            );
        } else {
            runs += 1;
        }
    }
    assert!(
        runs > 0,
        "seed {seed}: nothing ever ran: the generator is broken"
    );
}

/// The browser gives wasm about 1 MiB of stack. The deepest evaluation the limits
/// allow must fit in that, here measured with unoptimised native frames (larger than
/// release or wasm frames), so the limits are safe in every build.
#[test]
fn the_deepest_allowed_evaluation_fits_in_one_mebibyte_of_stack() {
    let run = || {
        let schema = Arc::new(
            Schema::parse(
                r#"
                function down(n) { if n == 0 { 0 } else { [n].map(x => down(n - 1)).first() + 1 } }
                function forever(n) { forever(n + 1) }
                "#,
            )
            .unwrap(),
        );
        let mut db = Executor::new(MemoryStore::new(), schema, Limits::default());
        let mut c = Client::new("c", user("ann"));
        let code = reject_code(
            &mut db,
            &c.call("forever", Value::Array(vec![Value::Int(0)])),
        );
        assert_eq!(code, ErrorCode::DepthExceeded);
        // Recursion through a lambda and a built-in, as deep as the limit allows.
        let mut deepest = 0;
        for n in [5, 10, 15, 20, 40] {
            match commit(&mut db, &c.call("down", Value::Array(vec![Value::Int(n)]))) {
                Outcome::Committed { result, .. } => {
                    assert_eq!(result, Value::Int(n));
                    deepest = n;
                }
                Outcome::Rejected { code, .. } => assert_eq!(code, ErrorCode::DepthExceeded),
                other => panic!("{other:?}"),
            }
        }
        assert!(
            deepest >= 15,
            "the depth limit leaves too little room: {deepest}"
        );
        // The most deeply nested expression the parser accepts, evaluated.
        let src = "[".repeat(99) + &"]".repeat(99);
        let nested = db.query(&src, &user("ann"), 0);
        assert!(
            matches!(nested, Err(ref e) if e.code == ErrorCode::DepthExceeded) || nested.is_ok()
        );
        let src = "(".repeat(99) + "1" + &")".repeat(99);
        assert_eq!(db.query(&src, &user("ann"), 0).unwrap(), Value::Int(1));
        let src = "1".to_string() + &" + 1".repeat(100);
        assert_eq!(db.query(&src, &user("ann"), 0).unwrap(), Value::Int(101));
        let src = "1".to_string() + &" + 1".repeat(250);
        let e = db.query(&src, &user("ann"), 0).unwrap_err();
        assert_eq!(e.code, ErrorCode::DepthExceeded);
    };
    std::thread::Builder::new()
        .stack_size(1 << 20)
        .spawn(run)
        .unwrap()
        .join()
        .expect("evaluation fits in 1 MiB of stack");
}
