//! Rule tests: `warren test FILE` checks an app's rules the way its CI checks code.
//!
//! A test file is JSON, kept next to the schema (format in docs/DEBUGGING.md):
//!
//! ```json
//! { "schema": "schema.warren",
//!   "fixtures": [ { "as": "ann", "run": "Team.create({ id: \"red\", ... })" } ],
//!   "tests": [ { "name": "...", "as": "eve", "call": "addTask", "args": {...},
//!                "expect": "deny" } ] }
//! ```
//!
//! The fixtures are commits, made in order on an empty in-memory state by the identities
//! they name, through the rules (a fixture the rules refuse fails the file). Each test
//! is then explained on that state ([`warren_core::explain`]; nothing it does is kept, so
//! tests do not depend on each other's order) and its outcome compared with `expect`:
//! `"allow"`, `"deny"` (refused with `PERMISSION_DENIED`), `{"code": "CODE"}` (refused
//! with that code) or `{"result": value}` (allowed with that result). A test that fails
//! prints its trace.

use std::path::Path;
use std::sync::Arc;

use warren_core::eval::Limits;
use warren_core::exec::{Commit, Executor, Op, Outcome};
use warren_core::explain::Explanation;
use warren_core::storage::MemoryStore;
use warren_core::{ErrorCode, Schema, Value};

use crate::explain::{auth_of, Program, Request};

/// What a test expects.
#[derive(Clone, Debug, PartialEq)]
pub enum Expect {
    Allow,
    Deny,
    Code(String),
    Result(Value),
}

/// One test of a file.
#[derive(Clone, Debug)]
pub struct Case {
    pub name: String,
    pub request: Request,
    pub expect: Expect,
}

/// A test's verdict: `None` when it passed, else why not and the trace.
pub struct Verdict {
    pub name: String,
    pub failure: Option<(String, Explanation)>,
}

/// A test file, read: the schema, the state the fixtures made, the cases.
pub struct Suite {
    pub db: Executor<MemoryStore>,
    pub cases: Vec<Case>,
}

fn auth_json(j: &serde_json::Value, what: &str) -> Result<Value, String> {
    match j {
        serde_json::Value::String(s) => auth_of(s).map_err(|e| format!("{what}: {}", e.message)),
        o @ serde_json::Value::Object(_) => {
            Value::from_json(o).map_err(|e| format!("{what}: {}", e.message))
        }
        serde_json::Value::Null => Ok(Value::Null),
        _ => Err(format!(
            "{what}: \"as\" is a subject or an object of claims"
        )),
    }
}

fn program(j: &serde_json::Value, what: &str) -> Result<Program, String> {
    let mut req = j.clone();
    req["auth"] = serde_json::Value::Null;
    if let Some(t) = j.get("run") {
        req["transaction"] = t.clone();
    }
    Request::from_json(&req)
        .map(|r| r.program)
        .map_err(|e| format!("{what}: {}", e.message))
}

fn expect_of(j: &serde_json::Value, what: &str) -> Result<Expect, String> {
    match j {
        serde_json::Value::String(s) if s == "allow" => Ok(Expect::Allow),
        serde_json::Value::String(s) if s == "deny" => Ok(Expect::Deny),
        serde_json::Value::Object(o) if o.len() == 1 && o.contains_key("code") => o["code"]
            .as_str()
            .map(|c| Expect::Code(c.to_owned()))
            .ok_or_else(|| format!("{what}: \"code\" is a string")),
        serde_json::Value::Object(o) if o.len() == 1 && o.contains_key("result") => {
            Value::from_json(&o["result"])
                .map(Expect::Result)
                .map_err(|e| format!("{what}: {}", e.message))
        }
        _ => Err(format!(
            "{what}: \"expect\" is \"allow\", \"deny\", {{\"code\": ...}} or {{\"result\": ...}}"
        )),
    }
}

/// Reads a test file: parses its schema (relative to the file) and runs its fixtures.
pub fn load(path: &Path) -> Result<Suite, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let j: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| format!("{}: not JSON: {e}", path.display()))?;
    let schema_path = j["schema"]
        .as_str()
        .ok_or_else(|| format!("{}: \"schema\" names the schema file", path.display()))?;
    let schema_path = path.parent().unwrap_or(Path::new(".")).join(schema_path);
    let source = std::fs::read_to_string(&schema_path)
        .map_err(|e| format!("{}: {e}", schema_path.display()))?;
    let schema = Schema::parse(&source).map_err(|e| format!("{}: {e}", schema_path.display()))?;
    let mut db = Executor::new(MemoryStore::new(), Arc::new(schema), Limits::default());
    let empty = Vec::new();
    let fixtures = j["fixtures"].as_array().unwrap_or(&empty);
    for (i, f) in fixtures.iter().enumerate() {
        let what = format!("fixture {}", i + 1);
        let auth = auth_json(&f["as"], &what)?;
        let op = match program(f, &what)? {
            Program::Transaction(source) => Op::Run { source },
            Program::Call { function, args } => Op::Call { function, args },
            _ => return Err(format!("{what}: a fixture is a \"run\" or a \"call\"")),
        };
        let position = db.position().map_err(|e| e.to_string())? + 1;
        let commit = Commit {
            client_id: format!("fixture-{}", i + 1),
            client_seq: 1,
            schema_version: db.schema().version().to_owned(),
            timestamp: f["now"].as_i64().unwrap_or(0),
            auth,
            op,
        };
        match db.commit(&commit, position).map_err(|e| e.to_string())? {
            Outcome::Committed { .. } => {}
            Outcome::Rejected { code, message } => {
                return Err(format!("{what} was refused: {} {message}", code.as_str()))
            }
            Outcome::Skipped(s) => return Err(format!("{what} was skipped: {s:?}")),
        }
    }
    let tests = j["tests"]
        .as_array()
        .ok_or_else(|| format!("{}: \"tests\" is a list", path.display()))?;
    let mut cases = Vec::new();
    for (i, t) in tests.iter().enumerate() {
        let name = t["name"]
            .as_str()
            .map_or_else(|| format!("test {}", i + 1), str::to_owned);
        let request = Request {
            auth: auth_json(&t["as"], &name)?,
            program: program(t, &name)?,
            now: t["now"].as_i64().unwrap_or(0),
        };
        let expect = expect_of(&t["expect"], &name)?;
        cases.push(Case {
            name,
            request,
            expect,
        });
    }
    Ok(Suite { db, cases })
}

/// Runs every case on the fixtures' state.
pub fn run(suite: &Suite) -> Result<Vec<Verdict>, String> {
    let db = &suite.db;
    let position = db.position().map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    for c in &suite.cases {
        let x = crate::explain::run(db.store(), db.schema(), db.limits(), position, &c.request)
            .map_err(|e| format!("{}: {e}", c.name))?;
        let partition = matches!(c.request.program, Program::Partition(_));
        let got = match &x.outcome {
            Ok(v) if partition && *v == Value::Array(vec![]) => {
                "deny (no read rule allows it)".to_owned()
            }
            Ok(v) => format!("allow with {}", warren_core::text::preview(v)),
            Err((code, m)) => format!("{} {m}", code.as_str()),
        };
        let pass = match (&c.expect, &x.outcome) {
            (Expect::Allow, Ok(v)) => !partition || *v != Value::Array(vec![]),
            (Expect::Deny, Ok(v)) => partition && *v == Value::Array(vec![]),
            (Expect::Deny, Err((code, _))) => *code == ErrorCode::PermissionDenied,
            (Expect::Code(want), Err((code, _))) => code.as_str() == want,
            (Expect::Result(want), Ok(v)) => v == want,
            _ => false,
        };
        let want = match &c.expect {
            Expect::Allow => "allow".to_owned(),
            Expect::Deny => "deny".to_owned(),
            Expect::Code(code) => code.clone(),
            Expect::Result(v) => format!("allow with {}", warren_core::text::preview(v)),
        };
        out.push(Verdict {
            name: c.name.clone(),
            failure: (!pass).then(|| (format!("expected {want}, got {got}"), x)),
        });
    }
    Ok(out)
}
