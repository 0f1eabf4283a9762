//! IndexedDB schema upgrades, one numbered step per file, run in order inside the
//! browser's `upgradeneeded` transaction. Never edit a released step: add the next one.
//! Each step owns the names it uses (a later rename in the backend must not change what
//! an old step does).
//!
//! | version | step |
//! |---|---|
//! | 1 | [`v0_to_v1`]: the `kv` object store (out-of-line binary keys) |
//! | 2 | [`v1_to_v2`]: the `meta` object store, holding the key filter over every key already stored |
//! | 3 | [`v2_to_v3`]: `meta` may hold write-ahead records (nothing to convert) |
//! | 4 | [`v3_to_v4`]: the key space in runs (`runs` object store, records in `meta`), `kv` converted into one run and deleted |
//! | 5 | [`v4_to_v5`]: the replica's own spaces (`K`, `O`, `Q`, `X`) out of the runs, into a log of their own in `meta` |
//! | 6 | [`v5_to_v6`]: runs' records may list their blocks' live items (nothing to convert) |
//! | 7 | [`v6_to_v7`]: runs' records list their blocks' first keys, and a run being written is marked (records rewritten; blocks with no record deleted) |

use js_sys::{Array, Uint8Array};
use wasm_bindgen::closure::Closure;
use wasm_bindgen::{JsCast, JsValue};
use web_sys::{IdbDatabase, IdbKeyRange, IdbObjectStore, IdbTransaction};

use crate::pack;
use crate::runs::Runs;

mod v0_to_v1;
mod v1_to_v2;
mod v2_to_v3;
mod v3_to_v4;
mod v4_to_v5;
mod v5_to_v6;
mod v6_to_v7;

/// The database version this build expects.
pub const VERSION: u32 = 7;

/// Runs every step after `old` (0 for a new database), in the upgrade transaction `tx`.
pub fn upgrade(old: u32, db: &IdbDatabase, tx: &IdbTransaction) -> Result<(), JsValue> {
    if old < 1 {
        v0_to_v1::run(db)?;
    }
    if old < 2 {
        v1_to_v2::run(db, tx)?;
    }
    if old < 3 {
        v2_to_v3::run();
    }
    // Steps 4 and 5 convert in callbacks, each reading after the last one's writes:
    // the steps after each start once it has issued its last request (a request reads
    // what the requests issued before it wrote).
    let tx2 = tx.clone();
    let after_4: Then = Box::new(move || {
        let tx3 = tx2.clone();
        let after_5: Then = Box::new(move || {
            if old < 6 {
                v5_to_v6::run();
            }
            if old < 7 {
                v6_to_v7::run(&tx3)?;
            }
            Ok(())
        });
        if old < 5 {
            v4_to_v5::run(&tx2, after_5)
        } else {
            after_5()
        }
    });
    if old < 4 {
        v3_to_v4::run(db, tx, after_4)
    } else {
        after_4()
    }
}

/// What runs once a step that works in callbacks is done.
pub type Then = Box<dyn FnOnce() -> Result<(), JsValue>>;

/// What a step that starts from the runs does with them: given `meta`, the blocks'
/// object store, the runs and the numbers of runs whose blocks have no record.
type WithRuns =
    Box<dyn FnOnce(IdbObjectStore, IdbObjectStore, Runs, Vec<u64>) -> Result<(), JsValue>>;

/// Reads the runs as step 4 laid them out (its names: records under `FF "run/"` in
/// `meta`, blocks in `runs`, every block's key read), for steps 5 and 7; a step that
/// changes those names gets a reader of its own.
fn read_runs(tx: &IdbTransaction, then: WithRuns) -> Result<(), JsValue> {
    const RECORDS: &[u8] = b"\xFFrun/";
    let meta = tx.object_store("meta")?;
    let blocks = tx.object_store("runs")?;
    let mut upper = RECORDS.to_vec();
    *upper.last_mut().expect("a prefix") += 1;
    let q = IdbKeyRange::bound_with_lower_open_and_upper_open(
        &Uint8Array::from(RECORDS),
        &Uint8Array::from(&upper[..]),
        false,
        true,
    )?;
    let record_keys = meta.get_all_keys_with_key(&q)?;
    let record_values = meta.get_all_with_key(&q)?;
    let block_keys = blocks.get_all_keys()?;
    let last = block_keys.clone();
    let tx2 = tx.clone();
    // Answers come in the order asked: the block keys' is the last.
    let read = Closure::once_into_js(move |_: web_sys::Event| {
        let r = (|| {
            let records = pack::entries(
                &record_keys.result()?.unchecked_into(),
                &record_values.result()?.unchecked_into(),
            );
            let keys: Array = block_keys.result()?.unchecked_into();
            let keys = pack::unpack(&keys).into_iter().flatten().collect();
            let (runs, orphans) = Runs::open(records, Vec::new(), Some(keys))
                .map_err(|e| JsValue::from_str(&format!("the runs: {}", e.0)))?;
            then(meta, blocks, runs, orphans)
        })();
        if r.is_err() {
            let _ = tx2.abort();
        }
    });
    last.set_onsuccess(Some(read.unchecked_ref()));
    Ok(())
}
