//! Version 7: a run's record lists its blocks' first keys (record format 3,
//! docs/STORAGE.md, "Runs"), so that an open reads the records alone, not the key of
//! every block (a `getAllKeys` over the whole `runs` store, whose cost grew with the
//! data: 10 to 50 ms at 100,000 documents). And a run written in parts (a merge's) is
//! marked in `meta` while it has blocks and no record, so that the open finds what a
//! merge cut short left without those keys.
//!
//! In the upgrade transaction: the runs' records and every block's key are read (as
//! step 5 reads them: `super::read_runs`); the blocks of runs with no record (a merge
//! cut short under version 6) are deleted, and each record is written again in format
//! 3 (a record of format 1 stays without live items). Records are read and written
//! with `crate::runs`: a later format change must give this step a reader of its own.
//! Builds before this one cannot open a version-7 database.

use js_sys::Uint8Array;
use wasm_bindgen::JsValue;
use web_sys::{IdbKeyRange, IdbObjectStore, IdbTransaction};

use crate::runs::{self, Runs};

pub fn run(tx: &IdbTransaction) -> Result<(), JsValue> {
    super::read_runs(tx, Box::new(rewrite))
}

fn bytes(b: &[u8]) -> Uint8Array {
    Uint8Array::from(b)
}

/// Deletes the blocks of runs with no record and writes every record again.
fn rewrite(
    meta: IdbObjectStore,
    blocks: IdbObjectStore,
    runs: Runs,
    orphans: Vec<u64>,
) -> Result<(), JsValue> {
    for n in orphans {
        let q = IdbKeyRange::bound_with_lower_open_and_upper_open(
            &bytes(&runs::block_key(n, &[])),
            &bytes(&runs::block_key(n + 1, &[])),
            false,
            true,
        )?;
        blocks.delete(&q)?;
    }
    for run in runs.runs() {
        meta.put_with_key(&bytes(&run.meta_value()), &bytes(&run.meta_key()))?;
    }
    Ok(())
}
