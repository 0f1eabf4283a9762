//! # Warren's engine
//!
//! The code that runs in both of Warren's places: compiled to WebAssembly in the
//! browser, and natively in the sync server. It is free of I/O: storage comes in
//! through the [`storage::Storage`] trait, and time, identity and randomness come in
//! through the commit.
//!
//! # Layout
//! - [`value`]: the data model and its canonical encoding.
//! - [`text`]: values as JSON text, and the engine's own float formatting.
//! - [`keys`]: the storage key layout and the order-preserving value encoding.
//! - [`lang`]: the language's lexer, syntax tree and parser.
//! - [`schema`]: collections, indexes, rules and functions compiled from a schema file.
//! - [`eval`]: the evaluator, with fuel, depth and size limits.
//! - [`doc`]: stored documents and the key-value writes a document write implies.
//! - [`exec`]: `execute` (commit → outcome), `apply` (outcome → state and digest),
//!   `query`.
//! - [`explain`]: a query, a commit or a partition's read rule replayed with a trace of
//!   the rules evaluated, filtered by the identity's read rights.
//! - [`entry`]: applying log entries (commits and schema changes), the same way in
//!   every region.
//! - [`storage`]: the storage trait, the in-memory backend, the overlay and the
//!   conformance suite.
//! - [`protocol`]: the sync protocol's frames and the log's entries, as bytes.
//! - [`replica`]: the client replica (base, outbox, view, live queries), without I/O.
//! - [`subscription`]: what each client may read, and the frames that keep it up to
//!   date (welcome, snapshots, the fan-out of each log entry), as the server sends them.
//! - `testing` (hidden): the seeded generator and the program generator that tests,
//!   benchmarks and the fuzzing and differential harnesses share.
//!
//! # Example
//! ```
//! use std::sync::Arc;
//! use warren_core::{exec::{Commit, Executor, Op, Outcome}, eval::Limits,
//!                   schema::Schema, storage::MemoryStore, value::{obj, Value}};
//!
//! let schema = Schema::parse(r#"
//!     collection Todo {
//!       partition "user:" + doc.owner
//!       index byOwner [owner]
//!       allow read   partition == "user:" + auth.sub
//!       allow create doc.owner == auth.sub
//!     }
//!     function add(title) { Todo.create({ owner: auth.sub, title, done: false }) }
//! "#).unwrap();
//! let mut db = Executor::new(MemoryStore::new(), Arc::new(schema), Limits::default());
//! let commit = Commit {
//!     client_id: "c1".into(), client_seq: 1, schema_version: String::new(),
//!     timestamp: 1_700_000_000_000, auth: obj([("sub", "ann".into())]),
//!     op: Op::Call { function: "add".into(), args: obj([("title", "milk".into())]) },
//! };
//! assert!(matches!(db.commit(&commit, 1).unwrap(), Outcome::Committed { .. }));
//! let n = db.query("Todo.byOwner(auth.sub).count()", &commit.auth, 0).unwrap();
//! assert_eq!(n, Value::Int(1));
//! ```

pub mod check;
pub mod codegen;
pub mod doc;
pub mod entry;
pub mod error;
pub mod eval;
pub mod exec;
pub mod explain;
pub mod keys;
pub mod lang;
pub mod protocol;
pub mod quota;
pub mod reach;
pub mod replica;
#[doc(hidden)]
pub mod scenario;
pub mod schema;
pub mod storage;
pub mod subscription;
#[doc(hidden)]
pub mod testing;
pub mod text;
pub mod types;
pub mod value;
pub mod ytext;

pub use error::{Error, ErrorCode};
pub use exec::{apply, execute, query, Commit, Executor, Op, Outcome, Usage, Write};
pub use schema::Schema;
pub use value::Value;

/// The engine's identity for a deployment of many regions: regions that apply one log
/// must compute the same thing, so a region whose engine differs from the one the
/// deployment was created with refuses to start. Change the suffix whenever execution
/// changes (the golden digests of `scenario` change with it).
pub const ENGINE_VERSION: &str = concat!("warren-core/", env!("CARGO_PKG_VERSION"), "+exec1");

/// Lowercase hex.
pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(DIGITS[(b >> 4) as usize] as char);
        s.push(DIGITS[(b & 15) as usize] as char);
    }
    s
}
