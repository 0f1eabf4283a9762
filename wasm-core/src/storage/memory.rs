//! The in-memory backend: a `BTreeMap`. The reference implementation of [`Storage`].

use std::collections::BTreeMap;
use std::ops::Bound;

use super::{Batch, Entry, KeyRange, Storage};
use crate::error::Error;

/// An ordered map in memory. Cloning it takes a snapshot.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MemoryStore {
    map: BTreeMap<Vec<u8>, Vec<u8>>,
}

impl MemoryStore {
    pub fn new() -> MemoryStore {
        MemoryStore::default()
    }

    /// Number of keys stored.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Every entry, in key order (for tests and snapshots).
    pub fn entries(&self) -> impl Iterator<Item = (&Vec<u8>, &Vec<u8>)> {
        self.map.iter()
    }
}

fn as_slice(b: &Bound<Vec<u8>>) -> Bound<&[u8]> {
    match b {
        Bound::Included(v) => Bound::Included(v.as_slice()),
        Bound::Excluded(v) => Bound::Excluded(v.as_slice()),
        Bound::Unbounded => Bound::Unbounded,
    }
}

impl Storage for MemoryStore {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, Error> {
        Ok(self.map.get(key).cloned())
    }

    fn scan(&self, range: &KeyRange, reverse: bool, limit: usize) -> Result<Vec<Entry>, Error> {
        // BTreeMap::range panics on an inverted range; the trait says "return nothing".
        if limit == 0 || range.is_empty() {
            return Ok(Vec::new());
        }
        let r = self
            .map
            .range::<[u8], _>((as_slice(&range.start), as_slice(&range.end)));
        let clone = |(k, v): (&Vec<u8>, &Vec<u8>)| (k.clone(), v.clone());
        Ok(if reverse {
            r.rev().take(limit).map(clone).collect()
        } else {
            r.take(limit).map(clone).collect()
        })
    }

    fn count(&self, range: &KeyRange, limit: u64) -> Result<u64, Error> {
        if limit == 0 || range.is_empty() {
            return Ok(0);
        }
        let r = self
            .map
            .range::<[u8], _>((as_slice(&range.start), as_slice(&range.end)));
        Ok(r.take(limit.min(usize::MAX as u64) as usize).count() as u64)
    }

    fn apply(&mut self, batch: Batch) -> Result<(), Error> {
        for (k, v) in batch.ops {
            match v {
                Some(v) => {
                    self.map.insert(k, v);
                }
                None => {
                    self.map.remove(&k);
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    crate::storage_conformance_tests!(super::MemoryStore::new());
}
