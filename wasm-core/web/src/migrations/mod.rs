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

use wasm_bindgen::JsValue;
use web_sys::{IdbDatabase, IdbTransaction};

mod v0_to_v1;
mod v1_to_v2;
mod v2_to_v3;
mod v3_to_v4;
mod v4_to_v5;
mod v5_to_v6;

/// The database version this build expects.
pub const VERSION: u32 = 6;

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
    // Step 4 converts in callbacks, each reading after the last one's writes: the
    // steps after it start once it has issued its last request (a request reads what
    // the requests issued before it wrote).
    let tx2 = tx.clone();
    let after_4: Then = Box::new(move || {
        if old < 5 {
            v4_to_v5::run(&tx2)?;
        }
        if old < 6 {
            v5_to_v6::run();
        }
        Ok(())
    });
    if old < 4 {
        v3_to_v4::run(db, tx, after_4)
    } else {
        after_4()
    }
}

/// What runs once a step that works in callbacks is done.
pub type Then = Box<dyn FnOnce() -> Result<(), JsValue>>;
