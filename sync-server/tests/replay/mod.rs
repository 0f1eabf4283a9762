//! What a log implies, computed independently of the server: every record replayed in
//! order by the engine on an in-memory store, with the digest at every position. The
//! crash tests (`crash.rs`, `faults.rs`) compare what a recovered server holds against
//! it.

#![allow(dead_code)] // each test binary uses a different part

use std::collections::BTreeMap;
use std::sync::Arc;

use warren_core::entry::Applied;
use warren_core::eval::Limits;
use warren_core::exec::{Op, Outcome};
use warren_core::protocol::LogEntry;
use warren_core::storage::{Entry, KeyRange, MemoryStore, Storage};
use warren_core::{Executor, Schema, Value};
use warren_server::log::Log;

/// A schema whose commits show double application: `bump` increments a counter, and
/// `note` creates a document that may exist only once.
pub const SCHEMA: &str = r#"
collection Counter {
  partition "user:" + doc.owner
  allow read   partition == "user:" + auth.sub
  allow create doc.owner == auth.sub
  allow update old.owner == auth.sub
}

collection Note {
  partition "user:" + doc.owner
  allow read   partition == "user:" + auth.sub
  allow create doc.owner == auth.sub
}

function bump(id) {
  let c = Counter.byId(id) ?? Counter.create({ id, owner: auth.sub, n: 0 })
  c.update({ n: c.n + 1 })
}

function note(id, text) {
  Note.create({ id, owner: auth.sub, text })
}
"#;

/// The tests' seeded randomness (one generator for every test).
#[allow(unused_imports)] // not every test binary draws from it
pub use warren_core::testing::Rng;

/// The seed from `var`, or one from the clock; printed either way so a failure replays.
pub fn seed(var: &str) -> u64 {
    let seed = std::env::var(var)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(1)
        });
    eprintln!("seed: {var}={seed}");
    seed
}

/// One replayed log entry.
#[derive(Clone, Debug)]
pub struct Replayed {
    pub position: u64,
    pub client_id: String,
    pub client_seq: u64,
    pub function: String,
    pub committed: bool,
}

/// The engine's state after replaying a log, kept up to date incrementally.
pub struct Replay {
    pub executor: Executor<MemoryStore>,
    /// `digests[p]`: the digest after position `p` (`digests[0]` is the empty state's).
    pub digests: Vec<[u8; 32]>,
    pub entries: Vec<Replayed>,
}

impl Replay {
    pub fn new(schema: &str) -> Replay {
        let parsed = Arc::new(Schema::parse(schema).expect("the schema parses"));
        // As a region does with a new store: the initial schema is recorded.
        let mut store = MemoryStore::new();
        store
            .apply(warren_core::entry::initial_schema_batch(schema))
            .expect("a memory store takes a batch");
        let executor = Executor::new(store, parsed, Limits::default());
        Replay {
            executor,
            digests: vec![[0; 32]],
            entries: Vec::new(),
        }
    }

    /// A replay with no schema yet: a shared log's first entry is its initial schema.
    pub fn empty() -> Replay {
        let schema = Arc::new(Schema::parse("").expect("the empty schema parses"));
        Replay {
            executor: Executor::new(MemoryStore::new(), schema, Limits::default()),
            digests: vec![[0; 32]],
            entries: Vec::new(),
        }
    }

    /// The last replayed position.
    pub fn position(&self) -> u64 {
        self.entries.len() as u64
    }

    /// Replays the records of `log` after the last replayed position.
    pub fn catch_up(&mut self, log: &dyn Log) {
        loop {
            let records = log
                .read(self.position() + 1, 1024)
                .unwrap_or_else(|e| panic!("reading the log: {e}"));
            if records.is_empty() {
                return;
            }
            for (position, bytes) in records {
                self.push(position, &bytes);
            }
        }
    }

    /// Replays one record.
    pub fn push(&mut self, position: u64, bytes: &[u8]) {
        assert_eq!(
            position,
            self.position() + 1,
            "log positions are consecutive"
        );
        let entry = LogEntry::decode(bytes)
            .unwrap_or_else(|e| panic!("log entry {position} does not decode: {e}"));
        let applied = self
            .executor
            .apply_entry(entry, position)
            .unwrap_or_else(|e| panic!("replaying position {position}: {e}"));
        self.digests.push(self.executor.digest().unwrap());
        self.entries.push(match applied {
            Applied::Commit { commit, outcome } => Replayed {
                position,
                function: match &commit.op {
                    Op::Call { function, .. } => function.clone(),
                    Op::Run { .. } => String::new(),
                },
                client_id: commit.client_id,
                client_seq: commit.client_seq,
                committed: matches!(outcome, Outcome::Committed { .. }),
            },
            // A schema change: no client's commit.
            Applied::Schema(_) => Replayed {
                position,
                client_id: String::new(),
                client_seq: 0,
                function: String::new(),
                committed: false,
            },
        });
    }

    /// Every commit took effect at most once, and each client's counter counts exactly
    /// the `bump`s of that client that took effect (the tests' clients use their id as
    /// their user, `auth.sub`, and as their counter's id).
    pub fn check_exactly_once(&self) {
        let mut committed: BTreeMap<(&str, u64), u64> = BTreeMap::new();
        let mut bumps: BTreeMap<&str, i64> = BTreeMap::new();
        for e in self.entries.iter().filter(|e| e.committed) {
            let n = committed.entry((&e.client_id, e.client_seq)).or_default();
            *n += 1;
            assert_eq!(
                *n, 1,
                "({}, {}) committed twice, the second time at position {}",
                e.client_id, e.client_seq, e.position
            );
            if e.function == "bump" {
                *bumps.entry(&e.client_id).or_default() += 1;
            }
        }
        for (client, n) in bumps {
            let (sub, id) = unscope(client);
            let q = format!("Counter.byId(\"{id}\")?.n ?? 0");
            let got = self.query_as(sub, &q);
            assert_eq!(got, Value::Int(n), "counter of {client}");
        }
    }

    /// Whether `(client, seq)` committed at `position`.
    pub fn committed_at(&self, client: &str, seq: u64, position: u64) -> bool {
        position >= 1
            && self
                .entries
                .get(position as usize - 1)
                .is_some_and(|e| e.committed && e.client_id == client && e.client_seq == seq)
    }

    /// A read-only query as user `sub`.
    pub fn query_as(&self, sub: &str, source: &str) -> Value {
        warren_core::exec::query(
            self.executor.store(),
            self.executor.schema(),
            source,
            &warren_core::value::obj([("sub", sub.into())]),
            0,
            self.executor.limits(),
        )
        .unwrap_or_else(|e| panic!("{source}: {e}"))
    }
}

/// The user and the client's own id in a client id of the log: the gateway scopes
/// ids by the token's subject (`<length of sub>:<sub>/<id>`); an unscoped id (the
/// fault tests write the log themselves) is its own user.
pub fn unscope(client_id: &str) -> (&str, &str) {
    let scoped = client_id.split_once(':').and_then(|(n, rest)| {
        let n: usize = n.parse().ok()?;
        let (sub, id) = (rest.get(..n)?, rest.get(n..)?.strip_prefix('/')?);
        Some((sub, id))
    });
    scoped.unwrap_or((client_id, client_id))
}

/// Every entry of a store, in key order.
pub fn all_entries(store: &dyn Storage) -> Vec<Entry> {
    let mut out = Vec::new();
    let mut range = KeyRange::all();
    loop {
        let page = store.scan(&range, false, 1024).expect("scan the store");
        let full = page.len() == 1024;
        if let Some((last, _)) = page.last() {
            range = range.after(last);
        }
        out.extend(page);
        if !full {
            return out;
        }
    }
}

/// Asserts that `store` holds exactly the state `replay` reached: same position, same
/// digest, same keys and values.
pub fn assert_same_state(store: &dyn Storage, replay: &Replay, context: &str) {
    let position = warren_core::exec::position(store).unwrap();
    assert_eq!(
        position,
        replay.position(),
        "{context}: the store's position is not the log's end"
    );
    assert_eq!(
        warren_core::exec::digest(store).unwrap(),
        replay.digests[position as usize],
        "{context}: digest at position {position}"
    );
    let got = all_entries(store);
    let want = all_entries(replay.executor.store());
    if got != want {
        let diff = got
            .iter()
            .zip(&want)
            .position(|(a, b)| a != b)
            .unwrap_or(got.len().min(want.len()));
        panic!(
            "{context}: the store's state differs from the log's replay ({} vs {} entries; first difference at entry {diff}: {:?} vs {:?})",
            got.len(),
            want.len(),
            got.get(diff),
            want.get(diff)
        );
    }
}
