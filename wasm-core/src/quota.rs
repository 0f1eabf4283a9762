//! Quotas per identity: how many documents, bytes and partitions one identity (a
//! token's subject, `sub`) may keep in a region's state.
//!
//! A document, with its bytes, counts for the identity that created it until it is
//! deleted (by anyone); a partition counts for the identity whose commit made it hold
//! its first document, until it holds none. A commit that would take an identity over
//! one of its quotas is rejected with `IDENTITY_QUOTA_EXCEEDED` and changes nothing; a
//! commit that only lowers counts always passes.
//!
//! The counts are replicated state: kept by the server at apply time, in the same batch
//! as the commit's effects ([`account`], called by `exec::commit_batch`), from nothing but
//! the log and the [`Quotas`] in the [`crate::eval::Limits`] the region runs with, so
//! every region makes the same decision at the same position. They are derived state,
//! outside the digest (a rejection they cause is in it, like any outcome). Clients do
//! not keep them. State written by a server that kept no counts is counted for nobody.
//!
//! Keys (space `U`, layout in `docs/STORAGE.md`):
//! - `U 01 str(sub)` → the identity's counts: varint documents, bytes, partitions;
//! - `U 02 str(collection) str(id)` → the document's owner: str(sub) · varint bytes;
//! - `U 03 str(partition)` → the partition's owner: str(sub).

use std::collections::{BTreeMap, BTreeSet};

use crate::doc::StoredDoc;
use crate::error::{Error, ErrorCode};
use crate::exec::Write;
use crate::keys;
use crate::storage::{Batch, BatchOp, KeyRange, Overlay, Storage};
use crate::value::{write_varint, Reader, Value};

/// What one identity may keep; 0 means no limit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Quotas {
    /// Live documents it created.
    pub documents: u64,
    /// Their size: the canonical encoding of each one's fields, plus its id.
    pub bytes: u64,
    /// Partitions it created that still hold documents.
    pub partitions: u64,
}

impl Quotas {
    pub const UNLIMITED: Quotas = Quotas {
        documents: 0,
        bytes: 0,
        partitions: 0,
    };
}

impl Default for Quotas {
    /// No limits: the engine's default, as a replica runs it. The sync server sets its
    /// own (`warren serve --quota-*`).
    fn default() -> Quotas {
        Quotas::UNLIMITED
    }
}

/// The key space of the counts.
pub const SPACE_QUOTA: u8 = b'U';

/// One identity's counts.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Usage {
    pub documents: u64,
    pub bytes: u64,
    pub partitions: u64,
}

fn usage_key(sub: &str) -> Vec<u8> {
    let mut k = vec![SPACE_QUOTA, 1];
    keys::push_str(&mut k, sub);
    k
}

fn doc_owner_key(collection: &str, id: &str) -> Vec<u8> {
    let mut k = vec![SPACE_QUOTA, 2];
    keys::push_str(&mut k, collection);
    keys::push_str(&mut k, id);
    k
}

fn partition_owner_key(partition: &str) -> Vec<u8> {
    let mut k = vec![SPACE_QUOTA, 3];
    keys::push_str(&mut k, partition);
    k
}

fn corrupt(what: &str) -> Error {
    Error::new(ErrorCode::Corrupt, format!("bad quota record: {what}"))
}

/// An identity's counts at `store`'s state.
pub fn usage(store: &dyn Storage, sub: &str) -> Result<Usage, Error> {
    let Some(b) = store.get(&usage_key(sub))? else {
        return Ok(Usage::default());
    };
    let mut r = Reader::new(&b);
    Ok(Usage {
        documents: r.varint().map_err(|_| corrupt("usage"))?,
        bytes: r.varint().map_err(|_| corrupt("usage"))?,
        partitions: r.varint().map_err(|_| corrupt("usage"))?,
    })
}

fn doc_owner(
    store: &dyn Storage,
    collection: &str,
    id: &str,
) -> Result<Option<(String, u64)>, Error> {
    let Some(b) = store.get(&doc_owner_key(collection, id))? else {
        return Ok(None);
    };
    let mut r = Reader::new(&b);
    let owner = r.string().map_err(|_| corrupt("document owner"))?;
    let bytes = r.varint().map_err(|_| corrupt("document owner"))?;
    Ok(Some((owner, bytes)))
}

fn owner_record(sub: &str, bytes: u64) -> Vec<u8> {
    let mut v = Vec::new();
    write_varint(&mut v, sub.len() as u64);
    v.extend_from_slice(sub.as_bytes());
    write_varint(&mut v, bytes);
    v
}

/// The size a document counts for.
fn size(id: &str, data: &Value) -> u64 {
    (data.encoded_len() + id.len()) as u64
}

/// Whether a partition holds a document at `store`'s state.
fn holds_documents(store: &dyn Storage, partition: &str) -> Result<bool, Error> {
    Ok(!store
        .scan(
            &KeyRange::prefix(&keys::partition_prefix(partition)),
            false,
            1,
        )?
        .is_empty())
}

/// Signed changes to one identity's counts.
#[derive(Clone, Copy, Debug, Default)]
struct Delta {
    documents: i64,
    bytes: i64,
    partitions: i64,
}

fn apply_delta(n: u64, d: i64) -> u64 {
    if d >= 0 {
        n.saturating_add(d as u64)
    } else {
        n.saturating_sub(d.unsigned_abs())
    }
}

/// The quota records for a committed entry of identity `sub` whose writes are
/// `writes` and whose effects are `effects`, at `before`'s state (the state before the
/// entry): `Ok(ops)` to add to the entry's batch, or `Err(message)` if the entry would
/// take an identity over its `quotas` (the commit is then rejected).
pub fn account(
    before: &dyn Storage,
    quotas: &Quotas,
    sub: &str,
    writes: &[Write],
    effects: &Batch,
) -> Result<Result<Vec<BatchOp>, String>, Error> {
    // The state of each written document after the entry: its last write.
    let mut last: BTreeMap<(&str, &str), &Write> = BTreeMap::new();
    for w in writes {
        last.insert((&w.collection, &w.id), w);
    }
    let mut deltas: BTreeMap<String, Delta> = BTreeMap::new();
    let mut ops: Vec<BatchOp> = Vec::new();
    let mut gained: BTreeSet<&str> = BTreeSet::new();
    let mut lost: BTreeSet<String> = BTreeSet::new();
    for ((coll, id), w) in &last {
        let old = before
            .get(&keys::doc_key(coll, id))?
            .map(|b| StoredDoc::decode(&b))
            .transpose()?;
        let new = w.data.as_ref();
        match (&old, new) {
            (None, None) => {}
            (None, Some(data)) => {
                let n = size(id, data);
                let d = deltas.entry(sub.to_owned()).or_default();
                d.documents += 1;
                d.bytes += n as i64;
                ops.push((doc_owner_key(coll, id), Some(owner_record(sub, n))));
                gained.insert(&w.partition);
            }
            // An update that keeps the size changes no count (the owner record says
            // the same size): nothing to read.
            (Some(o), Some(data))
                if o.partition == w.partition && size(id, data) == size(id, &o.data) => {}
            (Some(o), new) => {
                let owner = doc_owner(before, coll, id)?;
                match (owner, new) {
                    (Some((owner, n)), None) => {
                        let d = deltas.entry(owner).or_default();
                        d.documents -= 1;
                        d.bytes -= n as i64;
                        ops.push((doc_owner_key(coll, id), None));
                    }
                    (Some((owner, n)), Some(data)) => {
                        let m = size(id, data);
                        if m != n {
                            deltas.entry(owner.clone()).or_default().bytes += m as i64 - n as i64;
                            ops.push((doc_owner_key(coll, id), Some(owner_record(&owner, m))));
                        }
                    }
                    // Written before counts were kept: counted for nobody.
                    (None, _) => {}
                }
                match new {
                    None => {
                        lost.insert(o.partition.clone());
                    }
                    Some(_) if o.partition != w.partition => {
                        lost.insert(o.partition.clone());
                        gained.insert(&w.partition);
                    }
                    Some(_) => {}
                }
            }
        }
    }
    // Partitions that start or stop holding documents.
    let after = if lost.is_empty() {
        None
    } else {
        let mut o = Overlay::new(before);
        o.apply(effects.clone())?;
        Some(o)
    };
    for p in gained {
        if !holds_documents(before, p)? {
            deltas.entry(sub.to_owned()).or_default().partitions += 1;
            ops.push((partition_owner_key(p), Some(sub.as_bytes().to_vec())));
        }
    }
    if let Some(after) = &after {
        for p in &lost {
            if holds_documents(after, p)? {
                continue;
            }
            if let Some(owner) = before.get(&partition_owner_key(p))? {
                let owner = String::from_utf8(owner).map_err(|_| corrupt("partition owner"))?;
                deltas.entry(owner).or_default().partitions -= 1;
                ops.push((partition_owner_key(p), None));
            }
        }
    }
    for (who, d) in deltas {
        let old = usage(before, &who)?;
        let new = Usage {
            documents: apply_delta(old.documents, d.documents),
            bytes: apply_delta(old.bytes, d.bytes),
            partitions: apply_delta(old.partitions, d.partitions),
        };
        let over = |grew: bool, n: u64, quota: u64| grew && quota > 0 && n > quota;
        let whose = if who == sub {
            "this identity"
        } else {
            "the document's owner"
        };
        if over(d.documents > 0, new.documents, quotas.documents) {
            return Ok(Err(format!(
                "{whose} would keep {} documents; its quota is {}",
                new.documents, quotas.documents
            )));
        }
        if over(d.bytes > 0, new.bytes, quotas.bytes) {
            return Ok(Err(format!(
                "{whose} would keep {} bytes of documents; its quota is {}",
                new.bytes, quotas.bytes
            )));
        }
        if over(d.partitions > 0, new.partitions, quotas.partitions) {
            return Ok(Err(format!(
                "{whose} would hold documents in {} partitions it created; its quota is {}",
                new.partitions, quotas.partitions
            )));
        }
        if new == Usage::default() {
            ops.push((usage_key(&who), None));
        } else {
            let mut v = Vec::new();
            write_varint(&mut v, new.documents);
            write_varint(&mut v, new.bytes);
            write_varint(&mut v, new.partitions);
            ops.push((usage_key(&who), Some(v)));
        }
    }
    Ok(Ok(ops))
}
