//! Version 1: one object store, `kv`, holding the engine's whole key space (documents,
//! index entries, partition membership, cursors, outbox) with out-of-line binary keys,
//! so IndexedDB's byte-wise key order is the engine's order.

use indexed_db_futures::database::Database;
use indexed_db_futures::prelude::*;

pub fn run(db: &Database) -> indexed_db_futures::Result<()> {
    db.create_object_store(crate::idb::KV).build()?;
    Ok(())
}
