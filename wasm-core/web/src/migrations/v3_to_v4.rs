//! Version 4: the engine's key space in log-structured runs (`crate::runs`, format 1):
//! a new object store, `runs`, holds their blocks, and `meta` their records. What
//! `kv` held becomes one run, number 0, converted in the upgrade transaction a chunk of
//! records at a time (only a block of it is held in memory at once); the leader epoch
//! moves from `kv` to `meta`; `kv` is deleted. Builds before this one cannot open a
//! version-4 database.

use std::cell::RefCell;
use std::rc::Rc;

use js_sys::Array;
use wasm_bindgen::closure::Closure;
use wasm_bindgen::{JsCast, JsValue};
use web_sys::{IdbDatabase, IdbKeyRange, IdbObjectStore, IdbTransaction};

use crate::pack;
use crate::runs::Builder;

/// The object stores' names: the ones steps 1 and 2 made, and this step's.
const KV: &str = "kv";
const META: &str = "meta";
const RUNS: &str = "runs";
/// The leader epoch's key (a number, not data), moved to `meta`.
const EPOCH_KEY: &[u8] = b"\xFFleader-epoch";
/// Records read from `kv` at a time.
const CHUNK: u32 = 4096;

/// What the conversion's callbacks share.
struct Convert {
    db: IdbDatabase,
    tx: IdbTransaction,
    kv: IdbObjectStore,
    meta: IdbObjectStore,
    runs: IdbObjectStore,
    builder: Option<Builder>,
    /// The next steps, called once this one has issued its last request.
    then: Option<super::Then>,
}

pub fn run(db: &IdbDatabase, tx: &IdbTransaction, then: super::Then) -> Result<(), JsValue> {
    let runs = db.create_object_store(RUNS)?;
    let kv = tx.object_store(KV)?;
    let meta = tx.object_store(META)?;
    // The epoch first: a number, put as it is.
    let epoch_key = js_sys::Uint8Array::from(EPOCH_KEY);
    let epoch = kv.get(&epoch_key)?;
    {
        let meta = meta.clone();
        let epoch_req = epoch.clone();
        let tx = tx.clone();
        let moved = Closure::once_into_js(move |_: web_sys::Event| {
            if let Ok(v) = epoch_req.result() {
                if !v.is_undefined() && meta.put_with_key(&v, &epoch_key).is_err() {
                    let _ = tx.abort();
                }
            }
        });
        epoch.set_onsuccess(Some(moved.unchecked_ref()));
    }
    let c = Rc::new(RefCell::new(Convert {
        db: db.clone(),
        tx: tx.clone(),
        kv,
        meta,
        runs,
        builder: Some(Builder::new(0, 0)),
        then: Some(then),
    }));
    next_chunk(c, None)
}

/// Reads the records after `after` (the engine's keys: below `FF`), a chunk of them.
fn next_chunk(c: Rc<RefCell<Convert>>, after: Option<Vec<u8>>) -> Result<(), JsValue> {
    let top = js_sys::Uint8Array::from(&[0xFFu8][..]);
    let q = match &after {
        Some(a) => IdbKeyRange::bound_with_lower_open_and_upper_open(
            &js_sys::Uint8Array::from(&a[..]),
            &top,
            true,
            true,
        )?,
        None => IdbKeyRange::upper_bound_with_open(&top, true)?,
    };
    let (keys, values) = {
        let cv = c.borrow();
        (
            cv.kv.get_all_keys_with_key_and_limit(&q, CHUNK)?,
            cv.kv.get_all_with_key_and_limit(&q, CHUNK)?,
        )
    };
    let values_req = values.clone();
    // The values' answer comes after the keys'.
    let took = Closure::once_into_js(move |_: web_sys::Event| {
        let tx = c.borrow().tx.clone();
        if take_chunk(&c, &keys, &values_req).is_err() {
            let _ = tx.abort();
        }
    });
    values.set_onsuccess(Some(took.unchecked_ref()));
    Ok(())
}

/// Adds a chunk to the run, writing the blocks it filled; reads the next chunk, or ends
/// the run and deletes `kv`.
fn take_chunk(
    c: &Rc<RefCell<Convert>>,
    keys: &web_sys::IdbRequest,
    values: &web_sys::IdbRequest,
) -> Result<(), JsValue> {
    let keys: Array = keys.result()?.unchecked_into();
    let values: Array = values.result()?.unchecked_into();
    if keys.length() != values.length() {
        return Err(JsValue::from_str("keys and values of different lengths"));
    }
    let entries = pack::entries(&keys, &values);
    let n = entries.len();
    let last = entries.last().map(|(k, _)| k.clone());
    let mut cv = c.borrow_mut();
    let builder = cv.builder.as_mut().expect("a run being built");
    let mut full = Vec::new();
    for (k, v) in entries {
        full.extend(builder.push((k, Some(v))));
    }
    for (k, v) in full {
        cv.runs.put_with_key(
            &js_sys::Uint8Array::from(&v[..]),
            &js_sys::Uint8Array::from(&k[..]),
        )?;
    }
    if n as u32 == CHUNK {
        drop(cv);
        return next_chunk(c.clone(), last);
    }
    if let Some((run, (k, v))) = cv.builder.take().expect("a run being built").finish() {
        cv.runs.put_with_key(
            &js_sys::Uint8Array::from(&v[..]),
            &js_sys::Uint8Array::from(&k[..]),
        )?;
        cv.meta.put_with_key(
            &js_sys::Uint8Array::from(&run.meta_value()[..]),
            &js_sys::Uint8Array::from(&run.meta_key()[..]),
        )?;
    }
    cv.db.delete_object_store(KV)?;
    let then = cv.then.take().expect("called once");
    drop(cv);
    then()
}
