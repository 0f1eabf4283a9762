//! Version 2: a second object store, `meta`, for the backend's own records, and in it
//! the key filter (`crate::filter`, format 1), built over every key the database
//! already holds, in the upgrade transaction; a new database gets an empty one. From then on every write keeps it, in the same transaction. Builds before this
//! one cannot open a version-2 database, so none that does not keep the filter can
//! write to it.

use js_sys::{Array, Uint8Array};
use wasm_bindgen::closure::Closure;
use wasm_bindgen::{JsCast, JsValue};
use web_sys::{IdbDatabase, IdbTransaction};

use crate::filter::{self, Filter};

/// The object stores' names: the one step 1 made, and this step's.
const KV: &str = "kv";
const META: &str = "meta";
/// The leader epoch's key (not data: left out of the filter).
const EPOCH_KEY: &[u8] = b"\xFFleader-epoch";

pub fn run(db: &IdbDatabase, tx: &IdbTransaction) -> Result<(), JsValue> {
    let meta = db.create_object_store(META)?;
    let keys = tx.object_store(KV)?.get_all_keys()?;
    let done = {
        let keys = keys.clone();
        let store = meta;
        let tx = tx.clone();
        // Runs once, inside the upgrade transaction (still active in its callbacks).
        Closure::once_into_js(move |_: web_sys::Event| {
            let mut f = Filter::new();
            if let Ok(all) = keys.result() {
                let all: Array = all.unchecked_into();
                for k in all.iter() {
                    let k = Uint8Array::new(&k).to_vec();
                    if k != EPOCH_KEY && !filter::is_filter_key(&k) {
                        f.insert(&k);
                    }
                }
            }
            for (k, v) in f.take_dirty() {
                let put = store.put_with_key(
                    &Uint8Array::from(&v[..]).into(),
                    &Uint8Array::from(&k[..]).into(),
                );
                if put.is_err() {
                    let _ = tx.abort();
                    return;
                }
            }
        })
    };
    keys.set_onsuccess(Some(done.unchecked_ref()));
    Ok(())
}
