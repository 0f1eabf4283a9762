//! Runs every example in `docs/LANGUAGE.md` and checks the result the manual shows.
//!
//! The manual marks examples with fenced blocks:
//!
//! - ` ```warren-schema fixture `: the example schema (exactly one).
//! - ` ```warren-seed `: one transaction each, committed in order to build the example data.
//! - ` ```warren `: queries, run with `exec::query` against the example data.
//! - ` ```warren-tx `: transactions, committed with `Executor::commit` + `Op::Run`.
//! - ` ```warren-schema `: a schema that must compile, or fail as shown.
//!
//! Inside a block, a line `// => RESULT` ends one example: the lines since the previous
//! `// =>` (or the start of the block) are its source, and RESULT is the expected value as
//! JSON (`Value::to_json`) or `error CODE`. Each example runs alone, on a fresh copy of
//! the example data. `// auth: JSON` and `// limits: JSON` lines set the claims and the
//! limits for the rest of the block.
//!
//! The test also fails when a built-in or an error code is not documented, when a
//! built-in has no example, or when no examples were found at all.

use std::sync::Arc;

use warren_core::eval::Limits;
use warren_core::exec::{Commit, Executor, Op, Outcome};
use warren_core::lang::BUILTINS;
use warren_core::schema::Schema;
use warren_core::storage::MemoryStore;
use warren_core::value::Value;
use warren_core::ErrorCode;

const DOC: &str = include_str!("../../docs/LANGUAGE.md");

/// `now()` in every example: 2023-11-14T22:13:20Z.
const NOW: i64 = 1_700_000_000_000;
/// The client id and sequence number of every example transaction.
const CLIENT: &str = "app";

/// Error codes that no example can produce: they report a failing store or bad bytes.
const NOT_REPRODUCIBLE: &[&str] = &[
    "CORRUPT",
    "STORAGE_ERROR",
    "QUOTA_EXCEEDED",
    // A bug in the engine (tests/error_codes.rs makes one with a test-only built-in).
    "INTERNAL_ERROR",
    // A server's quotas; the examples run without them.
    "IDENTITY_QUOTA_EXCEEDED",
    // They need the bytes of a Yjs update, which the language cannot write
    // (tests/error_codes.rs and tests/ytext.rs make them).
    "INVALID_TEXT_UPDATE",
    "TEXT_UPDATE_OUT_OF_ORDER",
    // Only the browser's module without text gives it (tests/error_codes.rs, built
    // with --no-default-features).
    "TEXT_UNAVAILABLE",
];

#[derive(Clone, Copy, Debug, PartialEq)]
enum Kind {
    Query,
    Tx,
    Schema,
    Seed,
    Fixture,
}

#[derive(Debug)]
enum Expect {
    Json(serde_json::Value),
    Error(String),
    /// A schema that must compile.
    Ok,
}

#[derive(Debug)]
struct Example {
    line: usize,
    kind: Kind,
    source: String,
    auth: Value,
    limits: Limits,
    expect: Expect,
}

fn default_auth() -> Value {
    Value::parse_json(r#"{"sub":"ann"}"#).unwrap()
}

fn set_limits(limits: &mut Limits, json: &str, line: usize) {
    let v: serde_json::Value =
        serde_json::from_str(json).unwrap_or_else(|e| panic!("line {line}: bad limits JSON: {e}"));
    for (k, v) in v.as_object().expect("limits is an object") {
        let n = v
            .as_u64()
            .unwrap_or_else(|| panic!("line {line}: limit {k} is not a count"));
        match k.as_str() {
            "fuel" => limits.fuel = n,
            "max_depth" => limits.max_depth = n as u32,
            "max_args_bytes" => limits.max_args_bytes = n as usize,
            "max_doc_bytes" => limits.max_doc_bytes = n as usize,
            "max_result_bytes" => limits.max_result_bytes = n as usize,
            "max_value_bytes" => limits.max_value_bytes = n as usize,
            "max_writes" => limits.max_writes = n as usize,
            "max_memory_bytes" => limits.max_memory_bytes = n,
            "rule_fuel" => limits.rule_fuel = n,
            "rule_memory_bytes" => limits.rule_memory_bytes = n,
            "max_hidden_work" => limits.max_hidden_work = n,
            other => panic!("line {line}: no limit named {other}"),
        }
    }
}

fn parse_expect(s: &str, line: usize) -> Expect {
    let s = s.trim();
    if let Some(code) = s.strip_prefix("error ") {
        let code = code.trim();
        assert!(
            ErrorCode::parse(code).is_some(),
            "line {line}: {code} is not an error code"
        );
        Expect::Error(code.to_owned())
    } else if s == "ok" {
        Expect::Ok
    } else {
        Expect::Json(
            serde_json::from_str(s)
                .unwrap_or_else(|e| panic!("line {line}: expected result is not JSON: {e}: {s}")),
        )
    }
}

/// Every marked block of the manual, split into examples.
fn examples() -> Vec<Example> {
    let mut out = Vec::new();
    let mut lines = DOC.lines().enumerate().map(|(i, l)| (i + 1, l));
    while let Some((n, l)) = lines.next() {
        let Some(info) = l.trim_start().strip_prefix("```warren") else {
            continue;
        };
        let kind = match info.trim() {
            "" => Kind::Query,
            "-tx" => Kind::Tx,
            "-schema" => Kind::Schema,
            "-schema fixture" => Kind::Fixture,
            "-seed" => Kind::Seed,
            other => panic!("line {n}: unknown block kind warren{other}"),
        };
        let mut auth = default_auth();
        let mut limits = Limits::default();
        let mut source = String::new();
        let mut start = n + 1;
        let mut closed = false;
        for (m, l) in lines.by_ref() {
            let t = l.trim();
            if t == "```" {
                closed = true;
                break;
            }
            if let Some(j) = t.strip_prefix("// auth:") {
                auth = Value::parse_json(j.trim())
                    .unwrap_or_else(|e| panic!("line {m}: bad auth: {e}"));
            } else if let Some(j) = t.strip_prefix("// limits:") {
                set_limits(&mut limits, j, m);
            }
            if let Some(r) = t.strip_prefix("// =>") {
                assert!(
                    !source.trim().is_empty(),
                    "line {m}: a result with no source before it"
                );
                out.push(Example {
                    line: start,
                    kind,
                    source: std::mem::take(&mut source),
                    auth: auth.clone(),
                    limits: limits.clone(),
                    expect: parse_expect(r, m),
                });
                start = m + 1;
            } else {
                source.push_str(l);
                source.push('\n');
            }
        }
        assert!(closed, "line {n}: block is not closed");
        let has_code = source
            .lines()
            .any(|l| !l.trim().is_empty() && !l.trim().starts_with("//"));
        match kind {
            Kind::Query | Kind::Tx => assert!(
                !has_code,
                "line {start}: an example with no `// =>` result after it"
            ),
            _ if has_code => out.push(Example {
                line: start,
                kind,
                source,
                auth,
                limits,
                expect: Expect::Ok,
            }),
            _ => {}
        }
    }
    out
}

fn commit(source: &str, auth: &Value, client: &str, seq: u64) -> Commit {
    Commit {
        client_id: client.into(),
        client_seq: seq,
        schema_version: String::new(),
        timestamp: NOW,
        auth: auth.clone(),
        op: Op::Run {
            source: source.into(),
        },
    }
}

/// The example schema and data: the store after the seed transactions, and the next
/// log position.
fn fixture(all: &[Example]) -> (Arc<Schema>, MemoryStore, u64) {
    let fixtures: Vec<&Example> = all.iter().filter(|e| e.kind == Kind::Fixture).collect();
    assert_eq!(fixtures.len(), 1, "the manual needs one fixture schema");
    let schema = Arc::new(
        Schema::parse(&fixtures[0].source)
            .unwrap_or_else(|e| panic!("line {}: fixture: {e}", fixtures[0].line)),
    );
    let mut db = Executor::new(MemoryStore::new(), schema.clone(), Limits::default());
    let mut position = 1;
    for (seq, e) in all.iter().filter(|e| e.kind == Kind::Seed).enumerate() {
        match db
            .commit(
                &commit(&e.source, &e.auth, "seed", seq as u64 + 1),
                position,
            )
            .unwrap()
        {
            Outcome::Committed { .. } => {}
            other => panic!("line {}: seed did not commit: {other:?}", e.line),
        }
        position += 1;
    }
    assert!(position > 1, "the manual needs seed data");
    (schema, db.into_store(), position)
}

/// Runs one example; `Err` describes a mismatch.
fn run(e: &Example, schema: &Arc<Schema>, base: &MemoryStore, pos: u64) -> Result<(), String> {
    let got: Result<Value, String> = match e.kind {
        Kind::Query => {
            let db = Executor::new(base.clone(), schema.clone(), e.limits.clone());
            db.query(&e.source, &e.auth, NOW)
                .map_err(|x| x.code.as_str().to_owned())
        }
        Kind::Tx => {
            let mut db = Executor::new(base.clone(), schema.clone(), e.limits.clone());
            match db.commit(&commit(&e.source, &e.auth, CLIENT, 1), pos) {
                Ok(Outcome::Committed { result, .. }) => Ok(result),
                Ok(Outcome::Rejected { code, .. }) => Err(code.as_str().to_owned()),
                Ok(other) => return Err(format!("unexpected outcome {other:?}")),
                Err(x) => return Err(format!("store failed: {x}")),
            }
        }
        Kind::Schema => Schema::parse(&e.source)
            .map(|_| Value::Null)
            .map_err(|x| x.code.as_str().to_owned()),
        Kind::Seed | Kind::Fixture => return Ok(()),
    };
    let shown = |g: &Result<Value, String>| match g {
        Ok(v) => v.to_json().to_string(),
        Err(c) => format!("error {c}"),
    };
    let ok = match (&e.expect, &got) {
        (Expect::Json(j), Ok(v)) => &v.to_json() == j,
        (Expect::Error(c), Err(g)) => c == g,
        (Expect::Ok, Ok(_)) => e.kind == Kind::Schema,
        _ => false,
    };
    if ok {
        Ok(())
    } else {
        Err(format!(
            "expected {:?}, got {}\n{}",
            e.expect,
            shown(&got),
            e.source.trim_end()
        ))
    }
}

#[test]
fn every_example_in_the_manual_gives_the_result_it_shows() {
    let all = examples();
    let (schema, base, pos) = fixture(&all);
    let runnable: Vec<&Example> = all
        .iter()
        .filter(|e| matches!(e.kind, Kind::Query | Kind::Tx | Kind::Schema))
        .collect();
    assert!(
        !runnable.is_empty(),
        "no examples found in docs/LANGUAGE.md"
    );
    let failures: Vec<String> = runnable
        .iter()
        .filter_map(|e| {
            run(e, &schema, &base, pos)
                .err()
                .map(|m| format!("docs/LANGUAGE.md line {}: {m}", e.line))
        })
        .collect();
    println!("{} examples checked", runnable.len());
    assert!(
        failures.is_empty(),
        "{} of {} examples failed:\n\n{}",
        failures.len(),
        runnable.len(),
        failures.join("\n\n")
    );
}

#[test]
fn every_builtin_is_documented_with_an_example() {
    let all = examples();
    let sources: Vec<&str> = all
        .iter()
        .filter(|e| matches!(e.kind, Kind::Query | Kind::Tx))
        .map(|e| e.source.as_str())
        .collect();
    let mut missing = Vec::new();
    for name in BUILTINS {
        let heading = format!("### `{name}`");
        if !DOC.lines().any(|l| l.trim() == heading) {
            missing.push(format!("{name}: no `{heading}` section"));
        }
        let call = format!("{name}(");
        if !sources.iter().any(|s| s.contains(&call)) {
            missing.push(format!("{name}: no example calls it"));
        }
    }
    assert!(missing.is_empty(), "built-ins:\n{}", missing.join("\n"));
}

#[test]
fn every_error_code_is_documented() {
    let all = examples();
    let mut missing = Vec::new();
    for code in ErrorCode::ALL {
        let code = code.as_str();
        let heading = format!("### `{code}`");
        if !DOC.lines().any(|l| l.trim() == heading) {
            missing.push(format!("{code}: no `{heading}` section"));
        }
        let shown = all
            .iter()
            .any(|e| matches!(&e.expect, Expect::Error(c) if c == code));
        if !shown && !NOT_REPRODUCIBLE.contains(&code) {
            missing.push(format!("{code}: no example fails with it"));
        }
    }
    assert!(missing.is_empty(), "error codes:\n{}", missing.join("\n"));
}
