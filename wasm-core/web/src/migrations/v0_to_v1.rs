//! Version 1: one object store, `kv`, holding the engine's whole key space (documents,
//! index entries, partition membership, cursors, outbox) with out-of-line binary keys,
//! so IndexedDB's byte-wise key order is the engine's order.

use wasm_bindgen::JsValue;
use web_sys::IdbDatabase;

/// The object store's name, as this step made it.
const KV: &str = "kv";

pub fn run(db: &IdbDatabase) -> Result<(), JsValue> {
    db.create_object_store(KV)?;
    Ok(())
}
