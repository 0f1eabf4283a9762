//! Field types (docs/LANGUAGE.md, "Field types"): a typed collection's documents are
//! checked on every write and refused with `VALIDATION_FAILED`, naming the collection,
//! the document and the field; an untyped collection takes anything; typed function
//! parameters are checked when a client calls; the check costs fuel in proportion to
//! the value; a schema change does not revalidate documents already written.

use warren_core::eval::Limits;
use warren_core::exec::{apply, execute, Commit, Op, Outcome};
use warren_core::storage::MemoryStore;
use warren_core::value::{obj, Value};
use warren_core::Schema;

const SCHEMA: &str = r#"
collection Team {
  field name: string(nonblank, ..80)
  field members: [string]
  allow read true
  allow create true
}

collection Task {
  field team: ref Team
  field title: string(nonblank, 1..200)
  field done: bool
  field created: time
  field estimate?: float
  field points?: int
  field tags?: [string(..20)]
  field meta?: { by: string, at?: time }
  field notes: text
  allow read true
  allow create true
  allow update true
}

collection Loose {
  allow read true
  allow create true
  allow update true
}

function addTask(team: ref Team, title: string(nonblank, ..200), points?: int) {
  Task.create({ team, title, done: false, created: now(), points })
}

function untyped(x) { Loose.create({ x }) }
"#;

const NOW: i64 = 1_700_000_000_000;

struct Db {
    store: MemoryStore,
    schema: Schema,
    limits: Limits,
    seq: u64,
}

impl Db {
    fn new(source: &str) -> Db {
        Db {
            store: MemoryStore::new(),
            schema: Schema::parse(source).expect("the schema parses"),
            limits: Limits::default(),
            seq: 0,
        }
    }

    fn commit(&mut self, op: Op) -> Outcome {
        self.seq += 1;
        let c = Commit {
            client_id: "c1".into(),
            client_seq: self.seq,
            schema_version: String::new(),
            timestamp: NOW,
            auth: obj([("sub", "ann".into())]),
            op,
        };
        let position = self.seq;
        let out = execute(&self.store, &self.schema, &c, position, &self.limits).unwrap();
        apply(
            &mut self.store,
            &self.schema,
            position,
            "c1",
            self.seq,
            &out,
        )
        .unwrap();
        out
    }

    fn ok(&mut self, source: &str) -> Value {
        match self.commit(Op::Run {
            source: source.into(),
        }) {
            Outcome::Committed { result, .. } => result,
            other => panic!("{source}: expected a commit, got {other:?}"),
        }
    }

    fn refused_op(&mut self, op: Op, code: &str) -> String {
        let shown = format!("{op:?}");
        match self.commit(op) {
            Outcome::Rejected { code: c, message } => {
                assert_eq!(c.as_str(), code, "{shown}: {message}");
                message
            }
            other => panic!("{shown}: expected {code}, got {other:?}"),
        }
    }

    fn refused(&mut self, source: &str) -> String {
        self.refused_op(
            Op::Run {
                source: source.into(),
            },
            "VALIDATION_FAILED",
        )
    }
}

/// A create of task t1 with fitting fields, some replaced or added by `fields`
/// (`, name: value` pairs; a value may not hold a comma).
fn task(fields: &str) -> String {
    let mut all: Vec<(String, String)> = [
        ("id", "\"t1\""),
        ("team", "\"red\""),
        ("title", "\"Plan\""),
        ("done", "false"),
        ("created", "now()"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    let mut rest = fields.trim_start_matches(", ");
    while !rest.is_empty() {
        let (k, after) = rest.split_once(": ").expect("name: value");
        // A value ends at the next `, name: ` outside brackets.
        let mut depth = 0;
        let mut end = after.len();
        for (i, ch) in after.char_indices() {
            match ch {
                '[' | '{' => depth += 1,
                ']' | '}' => depth -= 1,
                ',' if depth == 0 => {
                    end = i;
                    break;
                }
                _ => {}
            }
        }
        let v = &after[..end];
        match all.iter_mut().find(|(n, _)| n == k) {
            Some(slot) => slot.1 = v.to_owned(),
            None => all.push((k.to_owned(), v.to_owned())),
        }
        rest = after[end..].trim_start_matches(", ");
    }
    let body: Vec<String> = all.iter().map(|(k, v)| format!("{k}: {v}")).collect();
    format!("Task.create({{ {} }})", body.join(", "))
}

#[test]
fn a_document_that_fits_is_written() {
    let mut db = Db::new(SCHEMA);
    db.ok(&task(""));
    db.ok(
        "Task.create({ team: \"red\", title: \"x\", done: true, created: 0, estimate: 2, \
         points: 3, tags: [\"a\", \"b\"], meta: { by: \"ann\" }, notes: null })",
    );
    // A float field takes an int or a float; optional fields take null.
    db.ok("Task.create({ team: \"red\", title: \"y\", done: true, created: 0, estimate: 2.5, points: null })");
    assert_eq!(db.ok("Task.byId(\"t1\").title"), Value::from("Plan"));
}

#[test]
fn each_misfit_is_refused_naming_collection_document_and_field() {
    let cases: &[(&str, &str)] = &[
        (", title: \"\"", "field title must not be blank"),
        (", title: \"   \\t \"", "field title must not be blank"),
        (
            ", title: 7",
            "field title expected string(nonblank, 1..200), got int",
        ),
        (", done: \"no\"", "field done expected bool, got string"),
        (", created: 1.5", "field created expected time, got float"),
        (", points: 1.5", "field points expected int, got float"),
        (
            ", estimate: \"x\"",
            "field estimate expected float, got string",
        ),
        (
            ", tags: [\"ok\", 3]",
            "field tags[1] expected string(..20), got int",
        ),
        (
            ", tags: \"a\"",
            "field tags expected [string(..20)], got string",
        ),
        (", meta: { at: 1 }", "field meta.by is required"),
        (
            ", meta: { by: \"x\", extra: 1 }",
            "field meta.extra is not a declared field",
        ),
        (
            ", team: \"\"",
            "field team is not a valid id of a Team document",
        ),
        (", colour: \"red\"", "field colour is not a declared field"),
        (", done: null", "field done is required"),
    ];
    for (fields, want) in cases {
        let mut db = Db::new(SCHEMA);
        let msg = db.refused(&task(fields));
        assert!(
            msg.contains(&format!("Task/t1: {want}")),
            "{fields}: {msg} (wanted {want})"
        );
    }
}

#[test]
fn bounded_strings_count_characters() {
    let mut db = Db::new(SCHEMA);
    // 200 characters of two bytes each fit; 201 do not; a 60 KB title does not.
    db.ok(&task(&format!(", title: \"{}\"", "é".repeat(200))));
    let msg = db.refused(&format!(
        "Task.create({{ team: \"red\", title: \"{}\", done: false, created: 0 }})",
        "é".repeat(201)
    ));
    assert!(msg.contains("is longer than 200 characters"), "{msg}");
    let msg = db.refused(&format!(
        "Task.create({{ team: \"red\", title: \"{}\", done: false, created: 0 }})",
        "x".repeat(60_000)
    ));
    assert!(msg.contains("(60000 bytes)"), "{msg}");
}

#[test]
fn updates_and_replaces_are_checked_and_text_fields_are_not_values() {
    let mut db = Db::new(SCHEMA);
    db.ok(&task(""));
    let msg = db.refused("Task.byId(\"t1\").update({ title: \" \" })");
    assert!(msg.contains("Task/t1: field title"), "{msg}");
    // Setting a required field to null removes it: refused.
    let msg = db.refused("Task.byId(\"t1\").update({ done: null })");
    assert!(msg.contains("field done is required"), "{msg}");
    db.refused("Task.byId(\"t1\").replace({ team: \"red\", title: \"x\" })");
    db.ok("Task.byId(\"t1\").update({ done: true, points: 4 })");
    db.ok("Task.byId(\"t1\").replace({ team: \"red\", title: \"x\", done: false, created: 1 })");
    assert_eq!(db.ok("Task.byId(\"t1\").title"), Value::from("x"));
}

#[test]
fn an_untyped_collection_takes_anything() {
    let mut db = Db::new(SCHEMA);
    db.ok("Loose.create({ title: \"\", n: [1, { a: null }], done: \"maybe\" })");
    db.ok("untyped(\"\")");
}

#[test]
fn typed_parameters_are_checked_when_a_client_calls() {
    let mut db = Db::new(SCHEMA);
    let call = |args: Value| Op::Call {
        function: "addTask".into(),
        args,
    };
    let msg = db.refused_op(
        call(Value::Array(vec!["red".into(), "  ".into(), Value::Null])),
        "VALIDATION_FAILED",
    );
    assert!(
        msg.contains("addTask: argument title must not be blank"),
        "{msg}"
    );
    let msg = db.refused_op(
        call(obj([("team", "red".into()), ("title", Value::Int(3))])),
        "VALIDATION_FAILED",
    );
    assert!(msg.contains("argument title expected"), "{msg}");
    let msg = db.refused_op(call(obj([("title", "x".into())])), "VALIDATION_FAILED");
    assert!(msg.contains("argument team is required"), "{msg}");
    let msg = db.refused_op(
        call(Value::Array(vec![
            "red".into(),
            "x".into(),
            Value::Float(1.5),
        ])),
        "VALIDATION_FAILED",
    );
    assert!(msg.contains("argument points expected int"), "{msg}");
    match db.commit(call(obj([
        ("team", "red".into()),
        ("title", "Plan".into()),
    ]))) {
        Outcome::Committed { .. } => {}
        other => panic!("{other:?}"),
    }
}

/// The check is paid in fuel, in proportion to the value: the same large array goes
/// into an untyped collection within a budget that a typed one exceeds.
#[test]
fn validation_costs_fuel_in_proportion_to_the_value() {
    let schema = r#"
collection Typed { field xs: [string] allow create true }
collection Loose { allow create true }
"#;
    let big = format!("[{}]", vec!["\"abcdefgh\""; 4000].join(", "));
    let mut fuel = 1u64;
    // The smallest budget the untyped write fits in.
    let loose_fits = loop {
        let mut db = Db::new(schema);
        db.limits.fuel = fuel;
        match db.commit(Op::Run {
            source: format!("Loose.create({{ xs: {big} }})"),
        }) {
            Outcome::Committed { .. } => break fuel,
            Outcome::Rejected { code, .. } => {
                assert_eq!(code.as_str(), "FUEL_EXHAUSTED");
                fuel = fuel * 3 / 2 + 1;
            }
            other => panic!("{other:?}"),
        }
    };
    let mut db = Db::new(schema);
    db.limits.fuel = loose_fits;
    db.refused_op(
        Op::Run {
            source: format!("Typed.create({{ xs: {big} }})"),
        },
        "FUEL_EXHAUSTED",
    );
    db.limits.fuel = loose_fits * 4;
    db.ok(&format!("Typed.create({{ xs: {big} }})"));
}

/// A schema that adds types applies to later writes; documents already written stay
/// as they are (readable), and the next write to one must make it fit.
#[test]
fn a_schema_change_does_not_revalidate_existing_documents() {
    let before = "collection Task { allow read true allow create true allow update true }";
    let after = "collection Task { field title: string(nonblank) field done?: bool allow read true allow create true allow update true }";
    let mut db = Db::new(before);
    db.ok("Task.create({ id: \"old\", title: \"\" })");
    db.schema = Schema::parse(after).unwrap();
    assert_eq!(db.ok("Task.byId(\"old\").title"), Value::from(""));
    let msg = db.refused("Task.byId(\"old\").update({ done: true })");
    assert!(
        msg.contains("Task/old: field title must not be blank"),
        "{msg}"
    );
    db.ok("Task.byId(\"old\").update({ title: \"Fixed\", done: true })");
    db.refused("Task.create({ title: \"\" })");
}

#[test]
fn types_nest_only_so_deep() {
    let deep = format!("{}int{}", "[".repeat(20), "]".repeat(20));
    let e = Schema::parse(&format!("collection A {{ field x: {deep} }}")).unwrap_err();
    assert_eq!(e.code.as_str(), "DEPTH_EXCEEDED", "{e}");
    let ok = format!("{}int{}", "[".repeat(15), "]".repeat(15));
    Schema::parse(&format!("collection A {{ field x: {ok} }}")).unwrap();
}
