//! IndexedDB schema upgrades, one numbered step per file, run in order inside the
//! browser's `upgradeneeded` transaction. Never edit a released step: add the next one.
//!
//! | version | step |
//! |---|---|
//! | 1 | [`v0_to_v1`]: the `kv` object store (out-of-line binary keys) |

use indexed_db_futures::database::Database;

mod v0_to_v1;

/// The database version this build expects.
pub const VERSION: u32 = 1;

/// Runs every step after `old` (0 for a new database).
pub fn upgrade(old: u32, db: &Database) -> indexed_db_futures::Result<()> {
    if old < 1 {
        v0_to_v1::run(db)?;
    }
    Ok(())
}
