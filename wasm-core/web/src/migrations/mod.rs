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

use wasm_bindgen::JsValue;
use web_sys::{IdbDatabase, IdbTransaction};

mod v0_to_v1;
mod v1_to_v2;
mod v2_to_v3;
mod v3_to_v4;

/// The database version this build expects.
pub const VERSION: u32 = 4;

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
    if old < 4 {
        v3_to_v4::run(db, tx)?;
    }
    Ok(())
}
