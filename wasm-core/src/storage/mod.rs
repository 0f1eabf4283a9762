//! The storage trait: a small, synchronous, ordered key-value store.
//!
//! The engine keeps everything (documents, index entries, partition membership, each
//! client's applied sequence number, the digest and the log position) in one ordered
//! key space (see [`crate::keys`] and `docs/STORAGE.md`). A backend only has to store
//! bytes in order and apply a batch atomically; every index and every rule is computed
//! by the engine itself, identically on every backend.
//!
//! Backends: [`MemoryStore`] (here: the reference implementation and the test double),
//! IndexedDB (browser) and an embedded crash-safe store (server). Each runs the suite in
//! [`conformance`] through [`storage_conformance_tests!`](crate::storage_conformance_tests).

pub mod conformance;
mod memory;
mod overlay;
mod recorder;

use std::ops::Bound;

pub use memory::MemoryStore;
pub(crate) use overlay::{merge_page, page_cover, scan_by_pages};
#[cfg(test)]
pub(crate) use overlay::{read_paged, tens};
pub use overlay::{Layered, Overlay, OverlayWrites};
pub use recorder::{Reads, Recorder};

use crate::error::{Error, ErrorCode};

/// A half-open or closed range of keys.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyRange {
    pub start: Bound<Vec<u8>>,
    pub end: Bound<Vec<u8>>,
}

impl KeyRange {
    /// Every key.
    pub fn all() -> KeyRange {
        KeyRange {
            start: Bound::Unbounded,
            end: Bound::Unbounded,
        }
    }

    /// Exactly one key.
    pub fn point(key: &[u8]) -> KeyRange {
        KeyRange {
            start: Bound::Included(key.to_vec()),
            end: Bound::Included(key.to_vec()),
        }
    }

    /// Every key that starts with `prefix`.
    pub fn prefix(prefix: &[u8]) -> KeyRange {
        KeyRange {
            start: Bound::Included(prefix.to_vec()),
            end: match crate::keys::prefix_end(prefix) {
                Some(e) => Bound::Excluded(e),
                None => Bound::Unbounded,
            },
        }
    }

    /// Whether `key` lies in the range.
    pub fn contains(&self, key: &[u8]) -> bool {
        let after_start = match &self.start {
            Bound::Included(s) => key >= s.as_slice(),
            Bound::Excluded(s) => key > s.as_slice(),
            Bound::Unbounded => true,
        };
        let before_end = match &self.end {
            Bound::Included(e) => key <= e.as_slice(),
            Bound::Excluded(e) => key < e.as_slice(),
            Bound::Unbounded => true,
        };
        after_start && before_end
    }

    /// The part of the range strictly after `key` (for resuming a forward scan).
    pub fn after(&self, key: &[u8]) -> KeyRange {
        KeyRange {
            start: Bound::Excluded(key.to_vec()),
            end: self.end.clone(),
        }
    }

    /// The part of the range strictly before `key` (for resuming a reverse scan).
    pub fn before(&self, key: &[u8]) -> KeyRange {
        KeyRange {
            start: self.start.clone(),
            end: Bound::Excluded(key.to_vec()),
        }
    }

    /// Whether some key lies in both ranges.
    pub fn overlaps(&self, other: &KeyRange) -> bool {
        // Each starts before the other ends.
        fn before(start: &Bound<Vec<u8>>, end: &Bound<Vec<u8>>) -> bool {
            match (start, end) {
                (Bound::Unbounded, _) | (_, Bound::Unbounded) => true,
                (Bound::Included(s), Bound::Included(e)) => s <= e,
                (Bound::Included(s), Bound::Excluded(e))
                | (Bound::Excluded(s), Bound::Included(e))
                | (Bound::Excluded(s), Bound::Excluded(e)) => s < e,
            }
        }
        !self.is_empty()
            && !other.is_empty()
            && before(&self.start, &other.end)
            && before(&other.start, &self.end)
    }

    /// Whether the range can hold no key at all.
    pub fn is_empty(&self) -> bool {
        match (&self.start, &self.end) {
            (Bound::Included(s), Bound::Included(e)) => s > e,
            (Bound::Included(s), Bound::Excluded(e))
            | (Bound::Excluded(s), Bound::Included(e))
            | (Bound::Excluded(s), Bound::Excluded(e)) => s >= e,
            _ => false,
        }
    }
}

/// A stored key and its value.
pub type Entry = (Vec<u8>, Vec<u8>);

/// One write of a batch: `Some(value)` puts, `None` deletes.
pub type BatchOp = (Vec<u8>, Option<Vec<u8>>);

/// An ordered list of writes applied atomically. When a key appears more than once, the
/// last write wins.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Batch {
    pub ops: Vec<BatchOp>,
}

impl Batch {
    pub fn new() -> Batch {
        Batch::default()
    }

    pub fn put(&mut self, key: Vec<u8>, value: Vec<u8>) {
        self.ops.push((key, Some(value)));
    }

    pub fn delete(&mut self, key: Vec<u8>) {
        self.ops.push((key, None));
    }

    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }

    pub fn len(&self) -> usize {
        self.ops.len()
    }
}

/// An ordered key-value store.
///
/// Keys and values are arbitrary bytes; keys order lexicographically (unsigned bytes,
/// a shorter key before any longer key it is a prefix of). Methods take `&self` for
/// reads and `&mut self` for writes: a store is used by one executor at a time.
pub trait Storage {
    /// Returns the value stored under `key`, or `None` if there is none.
    ///
    /// Contract: reflects every batch that [`Storage::apply`] has returned `Ok` for, and
    /// nothing of a batch that failed.
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, Error>;

    /// Returns at most `limit` entries whose keys lie in `range`, in ascending key
    /// order, or descending when `reverse` is true.
    ///
    /// Contract: a `limit` of 0 returns nothing. Fewer than `limit` entries means the
    /// range holds no more. To read a range in pages, call again with
    /// [`KeyRange::after`] (or [`KeyRange::before`] when reversing) of the last key
    /// returned. An empty range (start after end) returns nothing rather than failing.
    fn scan(&self, range: &KeyRange, reverse: bool, limit: usize) -> Result<Vec<Entry>, Error>;

    /// Applies every write of `batch`, atomically: when it returns `Ok`, every write is
    /// visible (and, for a durable backend, durable); when it returns an error, none is.
    /// Within a batch, a later write to the same key wins. Deleting a missing key is
    /// not an error. An empty batch is a no-op.
    fn apply(&mut self, batch: Batch) -> Result<(), Error>;

    /// Returns how many keys lie in `range`, counting no further than `limit`: the
    /// answer is `min(count, limit)`.
    ///
    /// Contract: agrees with [`Storage::scan`] over the same range. The default scans
    /// keys in pages; a backend that can count without reading values (IndexedDB's
    /// `count`) overrides it.
    fn count(&self, range: &KeyRange, limit: u64) -> Result<u64, Error> {
        const PAGE: usize = 256;
        let mut n = 0u64;
        let mut r = range.clone();
        while n < limit {
            let want = (limit - n).min(PAGE as u64) as usize;
            let page = self.scan(&r, false, want)?;
            n += page.len() as u64;
            match page.last() {
                Some((last, _)) if page.len() == want => r = r.after(last),
                _ => break,
            }
        }
        Ok(n)
    }

    /// Whether reads may be answered from an incomplete copy of the data: a store that
    /// loads lazily (the browser's cache over IndexedDB) answers a read of data it has
    /// not loaded as if it were absent and records the read, and its driver loads it and
    /// runs the evaluation again, discarding the first run. A reader that meets what
    /// would be an inconsistency in a complete store (an index entry whose document is
    /// absent) must then take it as not loaded yet, not as corruption. Default: `false`.
    fn is_partial(&self) -> bool {
        false
    }
}

/// A storage failure, with the backend's own description.
/// Every entry of a range, read a page at a time (the trait returns pages). For work
/// that needs the whole range at once: rebuilding an index, a schema change.
pub fn scan_all(store: &dyn Storage, range: &KeyRange) -> Result<Vec<Entry>, Error> {
    const PAGE: usize = 512;
    let mut out = Vec::new();
    let mut r = range.clone();
    loop {
        let page = store.scan(&r, false, PAGE)?;
        let full = page.len() == PAGE;
        if let Some((last, _)) = page.last() {
            r = r.after(last);
        }
        out.extend(page);
        if !full {
            return Ok(out);
        }
    }
}

pub fn storage_error(message: impl Into<String>) -> Error {
    Error::new(ErrorCode::Storage, message)
}

impl<S: Storage + ?Sized> Storage for &mut S {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, Error> {
        (**self).get(key)
    }
    fn scan(&self, range: &KeyRange, reverse: bool, limit: usize) -> Result<Vec<Entry>, Error> {
        (**self).scan(range, reverse, limit)
    }
    fn apply(&mut self, batch: Batch) -> Result<(), Error> {
        (**self).apply(batch)
    }
    fn count(&self, range: &KeyRange, limit: u64) -> Result<u64, Error> {
        (**self).count(range, limit)
    }
    fn is_partial(&self) -> bool {
        (**self).is_partial()
    }
}
