//! `warren check`'s static checks (`warren_core::check`): each kind of mistake is
//! reported with its code, line and column, and the schemas the project ships pass.

use warren_core::check::check;
use warren_core::Schema;

const BASE: &str = r#"collection Team {
  field name: string(nonblank)
  field members: [string]
  allow read true
  allow create true
}
collection Task {
  field team: ref Team
  field title: string(nonblank, ..200)
  field done: bool
  field notes: text
  index byTeam [team, done]
  allow read true
  allow create Team.byId(doc.team)?.members?.includes(auth.sub) == true
  allow update new.team == old.team
}
collection Loose { allow read true allow create true }
function add(team: ref Team, title: string) {
  Task.create({ team, title, done: false })
}
"#;

/// The errors of BASE followed by `extra` (its lines numbered after BASE's).
fn errors(extra: &str) -> Vec<(String, u32, u32)> {
    let src = format!("{BASE}{extra}");
    let schema = Schema::parse(&src).unwrap_or_else(|e| panic!("{extra}: {e}"));
    check(&schema)
        .into_iter()
        .map(|e| {
            let p = e.pos.expect("a position");
            (e.code.as_str().to_owned(), p.line, p.col)
        })
        .collect()
}

const L: u32 = 21; // the line `extra` starts on

#[test]
fn the_base_schema_passes() {
    assert_eq!(errors(""), vec![]);
}

#[test]
fn each_mistake_is_reported_with_line_and_column() {
    let cases: &[(&str, &str, u32, u32)] = &[
        // An unknown collection (`Notes.create` with no Notes).
        ("function f() {\n  Notes.create({ a: 1 })\n}", "UNKNOWN_NAME", 1, 3),
        // An unknown function, and a schema function with the wrong argument count.
        ("function f() { ad(1) }", "UNKNOWN_NAME", 0, 16),
        ("function f() { add(\"t\") }", "INVALID_ARGUMENT", 0, 16),
        // An argument literal that cannot fit the parameter's type.
        ("function f() { add(\"t\", 3) }", "VALIDATION_FAILED", 0, 25),
        // An unknown index, and too many values for one.
        ("function f() { Task.byTeem(\"t\") }", "UNKNOWN_NAME", 0, 21),
        ("function f() { Task.byTeam(\"t\", true, 3) }", "INVALID_ARGUMENT", 0, 21),
        // A field a typed collection does not declare: in a create, an update, a read.
        ("function f() { Task.create({ team: \"t\", title: \"x\", done: false, colour: 1 }) }", "UNKNOWN_NAME", 0, 74),
        ("function f(id) {\n  let t = Task.byId(id) ?? abort(\"no\")\n  t.update({ titel: \"x\" })\n}", "UNKNOWN_NAME", 2, 21),
        ("function f(id) { Task.byId(id)?.titel }", "UNKNOWN_NAME", 0, 33),
        // A literal of the wrong type for a field, and a required field left out.
        ("function f() { Task.create({ team: \"t\", title: \"\", done: false }) }", "VALIDATION_FAILED", 0, 48),
        ("function f() { Task.create({ team: \"t\", title: \"x\" }) }", "VALIDATION_FAILED", 0, 36),
        // A variable that is not bound.
        ("function f() { Task.byId(idd) }", "UNKNOWN_NAME", 0, 26),
        // In a rule: an undeclared field of `doc`.
        ("collection B {\n  field n: int\n  allow create doc.m == 1\n}", "UNKNOWN_NAME", 2, 20),
        // editText of a field that is not text.
        ("function f(id, u) { Task.byId(id).editText(\"title\", u) }", "UNKNOWN_NAME", 0, 35),
    ];
    let mut wrong = Vec::new();
    for (extra, code, line, col) in cases {
        let got = errors(extra);
        if got != vec![((*code).to_owned(), L + line, *col)] {
            wrong.push(format!(
                "{extra}\n  wanted {code} {line}:{col}, got {got:?}"
            ));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

#[test]
fn untyped_collections_and_unknown_values_are_not_guessed_at() {
    // Any field of an untyped collection; a value whose type is not known.
    assert_eq!(
        errors(
            "function f(x) { Loose.create({ anything: x }).whatever }\nfunction g(t) { add(t, t) }"
        ),
        vec![]
    );
}

#[test]
fn the_demo_schema_passes() {
    let src = include_str!("../../demo/schema.warren");
    let schema = Schema::parse(src).unwrap();
    let errs = check(&schema);
    assert!(errs.is_empty(), "{errs:?}");
}

#[test]
fn the_manuals_example_schema_passes() {
    let doc = include_str!("../../docs/LANGUAGE.md");
    let marker = "```warren-schema fixture\n";
    let start = doc.find(marker).expect("the fixture") + marker.len();
    let len = doc[start..].find("```").unwrap();
    let schema = Schema::parse(&doc[start..start + len]).unwrap();
    let errs = check(&schema);
    assert!(errs.is_empty(), "{errs:?}");
}
