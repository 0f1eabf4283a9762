//! Version 5: the replica's own key spaces `K`, `O`, `Q` and `X` (partition cursors,
//! the outbox, request ids, the client's records) leave the runs for a log of their own
//! in `meta` (records under `FF "own/"` · u64 big-endian number, in the write-ahead
//! records' format, `crate::wal`), read whole at open. In runs, a queue like the outbox
//! left every entry it ever held in the older runs until a merge reached them, and an
//! open read all of it.
//!
//! In the upgrade transaction: the runs' records and block keys are read (as step 7
//! reads them: `super::read_runs`); the blocks of those spaces (a block holds one space)
//! are read, merged oldest run first, their values written as the log's record 0, and
//! the blocks deleted; each run's record is written again without them
//! (a run left with no block is deleted; one whose last block went takes the last key of
//! the block now last, which is read for it). Blocks are of runs format 1 and records
//! of any format `crate::runs` reads (format 1 from version 4, this build's from step 4
//! in the same upgrade), read and written with it: a later format change must give this
//! step a reader of its own. Builds before this one cannot open a version-5 database.

use std::collections::BTreeMap;

use js_sys::{Array, Uint8Array};
use wasm_bindgen::closure::Closure;
use wasm_bindgen::{JsCast, JsValue};
use web_sys::{IdbObjectStore, IdbRequest, IdbTransaction};

use crate::pack;
use crate::runs::{self, Run, Runs};

/// The spaces that leave the runs.
const SPACES: &[u8] = b"KOQX";
/// The log's first record.
const OWN_FIRST: &[u8] = b"\xFFown/\0\0\0\0\0\0\0\0";

/// `then`: the steps after this one, run once it has issued its last request.
pub fn run(tx: &IdbTransaction, then: super::Then) -> Result<(), JsValue> {
    let tx2 = tx.clone();
    super::read_runs(
        tx,
        Box::new(move |meta, blocks, runs, _orphans| read_blocks(&tx2, meta, blocks, runs, then)),
    )
}

fn bytes(b: &[u8]) -> Uint8Array {
    Uint8Array::from(b)
}

fn leaves(first: &[u8]) -> bool {
    first.first().is_some_and(|b| SPACES.contains(b))
}

/// Reads, for each run, the blocks that leave and (when its last one leaves) the block
/// that will be its last.
fn read_blocks(
    tx: &IdbTransaction,
    meta: IdbObjectStore,
    blocks: IdbObjectStore,
    runs: Runs,
    then: super::Then,
) -> Result<(), JsValue> {
    // (run index, block index, request), oldest run first.
    let mut reads: Vec<(usize, usize, IdbRequest)> = Vec::new();
    for (i, run) in runs.runs().iter().enumerate() {
        for (j, f) in run.firsts.iter().enumerate() {
            if leaves(f) {
                reads.push((i, j, blocks.get(&bytes(&runs::block_key(run.number, f)))?));
            }
        }
        let kept = run.firsts.iter().rposition(|f| !leaves(f));
        if let Some(j) = kept.filter(|j| j + 1 < run.firsts.len()) {
            let f = &run.firsts[j];
            reads.push((i, j, blocks.get(&bytes(&runs::block_key(run.number, f)))?));
        }
    }
    let Some((_, _, last)) = reads.last() else {
        return then();
    };
    let last = last.clone();
    let tx2 = tx.clone();
    let done = Closure::once_into_js(move |_: web_sys::Event| {
        if move_out(&meta, &blocks, &runs, &reads)
            .and_then(|()| then())
            .is_err()
        {
            let _ = tx2.abort();
        }
    });
    last.set_onsuccess(Some(done.unchecked_ref()));
    Ok(())
}

/// Writes the spaces' values as the log's first record, deletes their blocks and writes
/// each run's record again.
fn move_out(
    meta: &IdbObjectStore,
    blocks: &IdbObjectStore,
    runs: &Runs,
    reads: &[(usize, usize, IdbRequest)],
) -> Result<(), JsValue> {
    let values = Array::new();
    for (_, _, r) in reads {
        values.push(&r.result()?);
    }
    let mut newest: BTreeMap<Vec<u8>, Option<Vec<u8>>> = BTreeMap::new();
    // Per run: items and bytes that leave, and the last key of the block now last.
    let mut gone: BTreeMap<usize, (u64, u64, Option<Vec<u8>>)> = BTreeMap::new();
    for ((i, j, _), v) in reads.iter().zip(pack::unpack(&values)) {
        let run = &runs.runs()[*i];
        let v = v.ok_or_else(|| JsValue::from_str("a block of a run is missing"))?;
        let items = runs::decode_block(&v).map_err(|e| JsValue::from_str(&e.0))?;
        let g = gone.entry(*i).or_default();
        if leaves(&run.firsts[*j]) {
            g.0 += items.len() as u64;
            g.1 += v.len() as u64;
            // Oldest run first: a newer run's item wins.
            newest.extend(items);
            blocks.delete(&bytes(&runs::block_key(run.number, &run.firsts[*j])))?;
        } else {
            g.2 = items.last().map(|(k, _)| k.clone());
        }
    }
    let values: crate::wal::Writes = newest.into_iter().filter(|(_, v)| v.is_some()).collect();
    if !values.is_empty() {
        meta.put_with_key(&bytes(&crate::wal::encode(&values)), &bytes(OWN_FIRST))?;
    }
    for (i, (items, b, last)) in gone {
        let run = &runs.runs()[i];
        let firsts: Vec<Vec<u8>> = run.firsts.iter().filter(|f| !leaves(f)).cloned().collect();
        // A run converted by step 4 in this upgrade lists its blocks' live items: those
        // of the blocks kept.
        let lives = run.lives.as_ref().map(|l| {
            l.iter()
                .zip(&run.firsts)
                .filter(|(_, f)| !leaves(f))
                .map(|(n, _)| *n)
                .collect()
        });
        if firsts.is_empty() {
            meta.delete(&bytes(&run.meta_key()))?;
            continue;
        }
        let kept = Run {
            items: run.items.saturating_sub(items),
            bytes: run.bytes.saturating_sub(b),
            last: last.unwrap_or_else(|| run.last.clone()),
            firsts,
            lives,
            ..run.clone()
        };
        meta.put_with_key(&bytes(&kept.meta_value()), &bytes(&kept.meta_key()))?;
    }
    Ok(())
}
