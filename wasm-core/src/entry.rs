//! Applying log entries: commits and schema changes, the same way in every replica.
//!
//! A region applies each entry of the global log with [`entry_batch`]: the one place
//! that decides what an entry does to the state, so every region (and every test that
//! replays a log) reaches the same state and digest at every position.
//!
//! - A **commit** runs at `now = max(its timestamp, the last applied commit's now)`
//!   (kept under `Mnow`): stamps made by different regions' clocks may go backwards in
//!   log order, but `now()` never does, identically everywhere.
//! - A **schema change** switches the schema in force from its position on (kept
//!   under `Mschema`). A source that does not compile, or an index change the data
//!   does not allow (a new unique index over duplicates), refuses the change: the
//!   schema stays, deterministically. Index entries of every collection whose indexes
//!   changed (or that the previous schema did not have) are rebuilt from its
//!   documents in the same batch.
//!
//! Both kinds feed the digest at their position (see `docs/STORAGE.md`, "The state
//! digest").

use std::collections::BTreeMap;
use std::sync::Arc;

use sha2::{Digest, Sha256};

use crate::doc::{index_values, StoredDoc};
use crate::error::{Error, ErrorCode};
use crate::eval::Limits;
use crate::exec::{self, Commit, Outcome};
use crate::keys;
use crate::protocol::LogEntry;
use crate::schema::{Collection, Schema};
use crate::storage::{scan_all, Batch, KeyRange, Storage};
use crate::value::write_varint;

/// What applying an entry did.
#[derive(Debug)]
pub enum Applied {
    /// A commit, as it ran (its timestamp clamped), and its outcome.
    Commit { commit: Commit, outcome: Outcome },
    /// A schema change.
    Schema(SchemaApplied),
}

/// The outcome of a schema change.
#[derive(Clone, Debug)]
pub enum SchemaApplied {
    /// The new schema is in force from this position on.
    Switched(Arc<Schema>),
    /// Refused (the schema in force stays): the source does not compile, or the data
    /// does not allow its indexes.
    Refused { code: ErrorCode, message: String },
}

/// `now()` of the last applied commit (0 before any).
pub fn last_now(store: &dyn Storage) -> Result<i64, Error> {
    Ok(match store.get(keys::META_NOW)? {
        Some(b) => u64::from_be_bytes(
            b.as_slice()
                .try_into()
                .map_err(|_| Error::new(ErrorCode::Corrupt, "bad Mnow record"))?,
        ) as i64,
        None => 0,
    })
}

/// The source of the schema in force, if the state records one.
pub fn schema_source(store: &dyn Storage) -> Result<Option<String>, Error> {
    store
        .get(keys::META_SCHEMA)?
        .map(|b| {
            String::from_utf8(b).map_err(|_| Error::new(ErrorCode::Corrupt, "bad Mschema record"))
        })
        .transpose()
}

/// The write that records `source` as the schema in force without a log entry: a
/// new state's initial schema, where the log does not carry it (the embedded log).
pub fn initial_schema_batch(source: &str) -> Batch {
    let mut b = Batch::new();
    b.put(keys::META_SCHEMA.to_vec(), source.as_bytes().to_vec());
    b
}

/// The batch that applies `entry` at `position` under `schema` (the schema in force),
/// and what it did. Reads only. An `Err` is a store failure, never a property of the
/// entry: the caller must stop.
pub fn entry_batch(
    store: &dyn Storage,
    schema: &Schema,
    entry: LogEntry,
    position: u64,
    limits: &Limits,
) -> Result<(Batch, Applied), Error> {
    match entry {
        LogEntry::Commit(mut commit) => {
            let now = last_now(store)?;
            if commit.timestamp < now {
                commit.timestamp = now;
            }
            // As a server does with a commit: with its quotas and the read-rule
            // index's member entries.
            let (mut batch, outcome) =
                exec::commit_batch(store, schema, &commit, position, limits)?;
            if commit.timestamp != now {
                batch.put(
                    keys::META_NOW.to_vec(),
                    (commit.timestamp as u64).to_be_bytes().to_vec(),
                );
            }
            Ok((batch, Applied::Commit { commit, outcome }))
        }
        LogEntry::Schema(change) => {
            let last = exec::position(store)?;
            if position <= last {
                return Err(Error::new(
                    ErrorCode::InvalidArgument,
                    format!("position {position} is not after the last applied position {last}"),
                ));
            }
            let mut batch = Batch::new();
            let applied = match Schema::parse(&change.source) {
                Err(e) => SchemaApplied::Refused {
                    code: e.code,
                    message: e.to_string(),
                },
                Ok(new) => match reindex(store, schema, &new) {
                    Ok(ops) => {
                        batch = ops;
                        // The read-rule index's member entries follow the new schema's
                        // read rules (the documents are unchanged by a schema change).
                        batch.ops.extend(new.reach().rebuild_ops(store)?);
                        batch.put(
                            keys::META_SCHEMA.to_vec(),
                            change.source.as_bytes().to_vec(),
                        );
                        SchemaApplied::Switched(Arc::new(new))
                    }
                    Err(e) if e.code.is_deterministic() => SchemaApplied::Refused {
                        code: e.code,
                        message: e.to_string(),
                    },
                    Err(e) => return Err(e),
                },
            };
            let mut h = Sha256::new();
            h.update(exec::digest(store)?);
            h.update(position.to_be_bytes());
            h.update(schema_effect_bytes(&applied));
            let d: [u8; 32] = h.finalize().into();
            batch.put(keys::META_DIGEST.to_vec(), d.to_vec());
            batch.put(
                keys::META_POSITION.to_vec(),
                position.to_be_bytes().to_vec(),
            );
            Ok((batch, Applied::Schema(applied)))
        }
    }
}

/// What the digest hashes for a schema entry: an empty client id and sequence number
/// 0 (no commit has them), then `04 · version` for a switch or `05 · code` for a
/// refusal (a commit's effects use tags `00`–`03`).
fn schema_effect_bytes(applied: &SchemaApplied) -> Vec<u8> {
    let mut out = vec![0, 0];
    let put = |out: &mut Vec<u8>, s: &str| {
        write_varint(out, s.len() as u64);
        out.extend_from_slice(s.as_bytes());
    };
    match applied {
        SchemaApplied::Switched(s) => {
            out.push(4);
            put(&mut out, s.version());
        }
        SchemaApplied::Refused { code, .. } => {
            out.push(5);
            put(&mut out, code.as_str());
        }
    }
    out
}

/// Whether two declarations of a collection index its documents the same way.
fn same_indexes(a: &Collection, b: &Collection) -> bool {
    a.indexes.len() == b.indexes.len()
        && a.indexes
            .iter()
            .zip(&b.indexes)
            .all(|((na, ia), (nb, ib))| {
                na == nb && ia.fields == ib.fields && ia.unique == ib.unique
            })
}

/// The writes that make the index entries of `new`'s collections match their
/// documents: for each collection whose indexes changed (or that `old` does not
/// declare, so its stored entries, if any, are of an unknown declaration), every
/// entry is removed and made again. A unique index over duplicate values is
/// `UNIQUE_VIOLATION`.
fn reindex(store: &dyn Storage, old: &Schema, new: &Schema) -> Result<Batch, Error> {
    let mut batch = Batch::new();
    for (name, coll) in &new.collections {
        if old
            .collections
            .get(name)
            .is_some_and(|o| same_indexes(o, coll))
        {
            continue;
        }
        for (k, _) in scan_all(
            store,
            &KeyRange::prefix(&keys::collection_index_prefix(name)),
        )? {
            batch.delete(k);
        }
        let mut unique: BTreeMap<Vec<u8>, String> = BTreeMap::new();
        let docs_prefix = keys::collection_prefix(name);
        for (k, v) in scan_all(store, &KeyRange::prefix(&docs_prefix))? {
            let mut at = docs_prefix.len();
            let id = keys::read_str(&k, &mut at)?;
            let doc = StoredDoc::decode(&v)?;
            for (ix_name, ix) in &coll.indexes {
                let values = index_values(&doc.data, &ix.fields);
                // Like a write (and SQL), a null in the key leaves it out of the
                // uniqueness check.
                if ix.unique && !values.iter().any(crate::value::Value::is_null) {
                    let prefix = keys::index_prefix(name, ix_name, &values);
                    if let Some(other) = unique.insert(prefix, id.clone()) {
                        return Err(Error::new(
                            ErrorCode::UniqueViolation,
                            format!(
                                "the unique index {name}.{ix_name} would hold documents {other} and {id} under the same key"
                            ),
                        ));
                    }
                }
                batch.put(
                    keys::index_key(name, ix_name, &values, &id),
                    doc.partition.as_bytes().to_vec(),
                );
            }
        }
    }
    Ok(batch)
}
