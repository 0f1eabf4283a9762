//! Explain for operators: a query, a transaction, a function call or a partition's
//! read rule, run as a given identity on the region's state with a trace of the rules
//! it evaluated ([`warren_core::explain`]). Nothing is written.
//!
//! Two ways in, one request format ([`Request`]):
//! - `warren explain --as ann --data-dir DIR ...` on the state of a stopped server: the
//!   store is copied under a shared lock (a running server holds an exclusive one, and
//!   the command then says to ask it over HTTP instead) and read from the copy;
//! - `POST /v1/admin/explain` behind the admin token (`--admin-token`), on a consistent
//!   view of the running region (`gateway/admin.rs`).
//!
//! The trace is filtered by the explained identity's own read rights; the admin
//! credential decides who may ask, never what the trace shows.

use std::path::{Path, PathBuf};

use warren_core::eval::Limits;
use warren_core::exec::{Commit, Op};
use warren_core::explain::{self, Explanation};
use warren_core::storage::Storage;
use warren_core::{Error, ErrorCode, Schema, Value};

/// What to explain.
#[derive(Clone, Debug, PartialEq)]
pub enum Program {
    /// A read-only query (as `db.query`).
    Query(String),
    /// An ad-hoc transaction: its writes are computed and listed, never applied.
    Transaction(String),
    /// A call of a schema function with arguments (an object or an array).
    Call { function: String, args: Value },
    /// Whether the identity may read a partition, with each collection's read rule.
    Partition(String),
}

/// One explain request.
#[derive(Clone, Debug, PartialEq)]
pub struct Request {
    /// The claims to run as (`auth`).
    pub auth: Value,
    pub program: Program,
    /// `now()` in milliseconds (the caller's clock: nothing is committed).
    pub now: i64,
}

fn invalid(m: impl Into<String>) -> Error {
    Error::new(ErrorCode::InvalidArgument, m)
}

/// `--as`: a subject (`ann` means `{"sub":"ann"}`) or the claims as a JSON object.
pub fn auth_of(s: &str) -> Result<Value, Error> {
    if s.trim_start().starts_with('{') {
        let v = Value::parse_json(s)?;
        if !matches!(v, Value::Object(_)) {
            return Err(invalid("--as takes a subject or a JSON object of claims"));
        }
        Ok(v)
    } else if s.is_empty() {
        Err(invalid("--as takes a subject or a JSON object of claims"))
    } else {
        Ok(warren_core::value::obj([("sub", s.into())]))
    }
}

impl Request {
    /// The JSON form (`POST /v1/admin/explain`): `{"auth": {...} or "sub", "now": ms,
    /// and one of "query": src, "transaction": src, "call": name (with "args"),
    /// "partition": name}`.
    pub fn from_json(j: &serde_json::Value) -> Result<Request, Error> {
        let auth = match &j["auth"] {
            serde_json::Value::String(s) => auth_of(s)?,
            o @ serde_json::Value::Object(_) => Value::from_json(o)?,
            serde_json::Value::Null => Value::Null,
            _ => return Err(invalid("auth must be a subject or an object of claims")),
        };
        let text = |k: &str| j[k].as_str().map(str::to_owned);
        let mut given = Vec::new();
        if let Some(s) = text("query") {
            given.push(Program::Query(s));
        }
        if let Some(s) = text("transaction") {
            given.push(Program::Transaction(s));
        }
        if let Some(f) = text("call") {
            let args = match &j["args"] {
                serde_json::Value::Null => Value::Null,
                a => Value::from_json(a)?,
            };
            given.push(Program::Call { function: f, args });
        }
        if let Some(p) = text("partition") {
            given.push(Program::Partition(p));
        }
        if given.len() != 1 {
            return Err(invalid(
                "give exactly one of query, transaction, call or partition",
            ));
        }
        let now = match &j["now"] {
            serde_json::Value::Null => 0,
            n => n
                .as_i64()
                .ok_or_else(|| invalid("now must be an integer"))?,
        };
        Ok(Request {
            auth,
            program: given.pop().expect("one"),
            now,
        })
    }
}

/// Runs `req` on `state` (at `position`, the last applied) under `schema`.
pub fn run(
    state: &dyn Storage,
    schema: &Schema,
    limits: &Limits,
    position: u64,
    req: &Request,
) -> Result<Explanation, Error> {
    let commit = |op: Op| Commit {
        client_id: "explain".into(),
        client_seq: 1,
        schema_version: schema.version().to_owned(),
        timestamp: req.now,
        auth: req.auth.clone(),
        op,
    };
    match &req.program {
        Program::Query(src) => {
            explain::explain_query(state, schema, src, &req.auth, req.now, limits)
        }
        Program::Transaction(src) => {
            let c = commit(Op::Run {
                source: src.clone(),
            });
            explain::explain_commit(state, schema, &c, position + 1, limits)
        }
        Program::Call { function, args } => {
            let c = commit(Op::Call {
                function: function.clone(),
                args: args.clone(),
            });
            explain::explain_commit(state, schema, &c, position + 1, limits)
        }
        Program::Partition(p) => explain::explain_partition(state, schema, p, &req.auth, limits),
    }
}

/// The schema in force in a store (set by the log's schema entries).
pub fn schema_of(state: &dyn Storage) -> Result<Schema, Error> {
    let src = state
        .get(warren_core::keys::META_SCHEMA)?
        .ok_or_else(|| Error::new(ErrorCode::Schema, "the store holds no schema yet"))?;
    let src = String::from_utf8(src)
        .map_err(|_| Error::new(ErrorCode::Corrupt, "the stored schema is not UTF-8"))?;
    Schema::parse(&src)
}

/// A copy of a stopped server's store, removed when dropped.
pub struct StoreCopy {
    dir: PathBuf,
    pub store: crate::store::RedbStore,
}

impl Drop for StoreCopy {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Copies `data_dir`'s store to a temporary directory (holding a shared lock on it
/// while copying, so a running server, which holds an exclusive one, is refused with
/// advice) and opens the copy: the data directory is never written.
pub fn open_copy(data_dir: &Path) -> Result<StoreCopy, Error> {
    use std::os::fd::AsRawFd;
    let io = |what: &str, p: &Path, e: std::io::Error| {
        Error::new(ErrorCode::Storage, format!("{what} {}: {e}", p.display()))
    };
    let path = data_dir.join("state.redb");
    let file = std::fs::File::open(&path).map_err(|e| io("opening", &path, e))?;
    // SAFETY: flock only reads the descriptor, which `file` keeps open.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_SH | libc::LOCK_NB) } != 0 {
        return Err(Error::new(
            ErrorCode::Storage,
            format!(
                "{} is in use by a running server: ask it instead \
                 (warren explain --url http://HOST:PORT --admin-token ...)",
                path.display()
            ),
        ));
    }
    let dir = std::env::temp_dir().join(format!(
        "warren-explain-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos())
    ));
    std::fs::create_dir_all(&dir).map_err(|e| io("creating", &dir, e))?;
    let copy = dir.join("state.redb");
    let copied = std::io::copy(
        &mut &file,
        &mut std::fs::File::create(&copy).map_err(|e| io("creating", &copy, e))?,
    );
    drop(file);
    if let Err(e) = copied {
        let _ = std::fs::remove_dir_all(&dir);
        return Err(io("copying", &path, e));
    }
    match crate::store::RedbStore::open(&copy, 1) {
        Ok(store) => Ok(StoreCopy { dir, store }),
        Err(e) => {
            let _ = std::fs::remove_dir_all(&dir);
            Err(e)
        }
    }
}

/// Asks a running server (`POST {url}/v1/admin/explain` with the admin token): the
/// trace in its serialized form, or the server's error.
pub fn ask(url: &str, admin_token: &str, req: &serde_json::Value) -> Result<Value, String> {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(std::time::Duration::from_secs(60)))
        .build()
        .into();
    let body = serde_json::to_vec(req).map_err(|e| e.to_string())?;
    let mut resp = agent
        .post(format!("{}/v1/admin/explain", url.trim_end_matches('/')))
        .header("authorization", format!("Bearer {admin_token}"))
        .header("content-type", "application/json")
        .send(&body[..])
        .map_err(|e| format!("{url}: {e}"))?;
    let status = resp.status().as_u16();
    let data = resp
        .body_mut()
        .with_config()
        .limit(64 << 20)
        .read_to_vec()
        .map_err(|e| format!("reading the answer: {e}"))?;
    let text = String::from_utf8_lossy(&data);
    if status != 200 {
        return Err(format!("{status}: {text}"));
    }
    Value::parse_json(&text).map_err(|e| e.to_string())
}
