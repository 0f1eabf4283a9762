//! An overlay: writes held in memory over a read-only base store.
//!
//! Reads see the overlay's writes laid over the base; `apply` writes only to the
//! overlay. Used for a transaction's view of the state (its own writes visible to it),
//! by the server to apply a whole log batch in memory and write it to disk as one
//! batch, and by the client replica for its view (base + pending commits).
//! [`Layered`] is the read-only form over shared writes: the server's snapshots.

use std::collections::BTreeMap;
use std::ops::Bound;

use super::{Batch, BatchOp, Entry, KeyRange, Storage};
use crate::error::{Error, ErrorCode};

/// An overlay's writes: `None` deletes.
pub type OverlayWrites = BTreeMap<Vec<u8>, Option<Vec<u8>>>;

pub struct Overlay<'a> {
    base: &'a dyn Storage,
    writes: OverlayWrites,
}

impl<'a> Overlay<'a> {
    pub fn new(base: &'a dyn Storage) -> Overlay<'a> {
        Overlay {
            base,
            writes: BTreeMap::new(),
        }
    }

    /// An overlay with writes already made (see [`Overlay::into_writes`]).
    pub fn with_writes(base: &'a dyn Storage, writes: OverlayWrites) -> Overlay<'a> {
        Overlay { base, writes }
    }

    /// The overlay's writes, to keep without the borrow of the base.
    pub fn into_writes(self) -> OverlayWrites {
        self.writes
    }

    /// Reads the base store alone.
    pub fn base_get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, Error> {
        self.base.get(key)
    }

    pub fn write(&mut self, (k, v): BatchOp) {
        self.writes.insert(k, v);
    }

    /// Whether the overlay holds a write (or a delete) of `key`.
    pub fn has_write(&self, key: &[u8]) -> bool {
        self.writes.contains_key(key)
    }

    /// Whether the overlay holds no writes.
    pub fn is_clean(&self) -> bool {
        self.writes.is_empty()
    }

    /// The overlay's writes as one batch, in key order; the overlay is left empty.
    pub fn take_batch(&mut self) -> Batch {
        Batch {
            ops: std::mem::take(&mut self.writes).into_iter().collect(),
        }
    }

    /// One page of the merged view: the entries of part of `range`, in order, and the
    /// rest of the range still to read (`None` when the range is exhausted). A page
    /// holds at most `limit` entries, fewer where the overlay deleted keys in it; only
    /// the continuation says whether the range is done.
    pub fn scan_page(
        &self,
        range: &KeyRange,
        reverse: bool,
        limit: usize,
    ) -> Result<(Vec<Entry>, Option<KeyRange>), Error> {
        merged_page(self.base, &self.writes, range, reverse, limit)
    }
}

/// One page of `writes` laid over `base` (see [`Overlay::scan_page`]).
fn merged_page(
    base: &dyn Storage,
    writes: &OverlayWrites,
    range: &KeyRange,
    reverse: bool,
    limit: usize,
) -> Result<(Vec<Entry>, Option<KeyRange>), Error> {
    let limit = limit.max(1);
    let page = base.scan(range, reverse, limit)?;
    let (covered, rest) = page_cover(range, &page, limit, reverse);
    if writes.is_empty() || covered.is_empty() {
        return Ok((page, rest));
    }
    let covered = writes.range::<[u8], _>((as_ref(&covered.start), as_ref(&covered.end)));
    Ok(merge_page(range, page, covered, reverse, limit, rest))
}

/// One page of writes laid over a page of their base: the first `limit` live entries,
/// in scan order, of `writes` (those in the part of `range` that `base`, a page of the
/// base store, covers: [`page_cover`], which also gave `rest`) merged with `base`, and
/// the rest of `range` to read after them. That is `rest` when the merge ended with
/// the covered part; when it stopped at `limit` with more of it left, the range past
/// the last entry given. So a page costs about the entries it gives, however many
/// writes lie past them: a live query's `take(5)` over a range holding thousands of
/// pending writes merges five or six, not all of them.
pub(crate) fn merge_page<'w>(
    range: &KeyRange,
    base: Vec<Entry>,
    writes: impl DoubleEndedIterator<Item = (&'w Vec<u8>, &'w Option<Vec<u8>>)>,
    reverse: bool,
    limit: usize,
    rest: Option<KeyRange>,
) -> (Vec<Entry>, Option<KeyRange>) {
    // One merge loop for both directions (a generic one would be compiled twice).
    let (mut forward, mut backward);
    let writes: &mut dyn Iterator<Item = (&Vec<u8>, &Option<Vec<u8>>)> = if reverse {
        backward = writes.rev();
        &mut backward
    } else {
        forward = writes;
        &mut forward
    };
    let mut writes = writes.peekable();
    let mut base = base.into_iter().peekable();
    let mut out: Vec<Entry> = Vec::new();
    while out.len() < limit {
        // The write when it comes first in scan order, or holds the base's key (which
        // it replaces or deletes).
        let write_first = match (base.peek(), writes.peek()) {
            (None, None) => break,
            (Some(_), None) => false,
            (None, Some(_)) => true,
            (Some((b, _)), Some((w, _))) => {
                if b == *w {
                    base.next();
                    true
                } else {
                    (w.as_slice() < b.as_slice()) != reverse
                }
            }
        };
        if write_first {
            if let Some((k, Some(v))) = writes.next() {
                out.push((k.clone(), v.clone()));
            }
        } else if let Some(e) = base.next() {
            out.push(e);
        }
    }
    let more = base.peek().is_some() || writes.peek().is_some();
    match out.last() {
        Some((last, _)) if more => {
            let next = if reverse {
                range.before(last)
            } else {
                range.after(last)
            };
            (out, Some(next))
        }
        _ => (out, rest),
    }
}

/// The first `limit` entries of `range` in the merged view of `writes` over `base`.
fn merged_scan(
    base: &dyn Storage,
    writes: &OverlayWrites,
    range: &KeyRange,
    reverse: bool,
    limit: usize,
) -> Result<Vec<Entry>, Error> {
    scan_by_pages(range, limit, |r, n| {
        merged_page(base, writes, r, reverse, n)
    })
}

/// The first `limit` entries of `range`, read through `page` (a store's `scan_page`,
/// asked for a part of the range and how many entries are still wanted) until it has
/// them or the range is done.
pub(crate) fn scan_by_pages(
    range: &KeyRange,
    limit: usize,
    mut page: impl FnMut(&KeyRange, usize) -> Result<(Vec<Entry>, Option<KeyRange>), Error>,
) -> Result<Vec<Entry>, Error> {
    let mut out = Vec::new();
    if limit == 0 || range.is_empty() {
        return Ok(out);
    }
    let mut next = Some(range.clone());
    while let Some(r) = next {
        let (entries, rest) = page(&r, limit - out.len())?;
        out.extend(entries);
        if out.len() >= limit {
            out.truncate(limit);
            break;
        }
        next = rest;
    }
    Ok(out)
}

/// A read-only view of writes over a base store, both borrowed: the sync server's read
/// view of its state (the store as last written, plus the batches applied since, which
/// many readers share without copying). Reads merge the two as [`Overlay`] does;
/// `apply` is refused.
pub struct Layered<'a> {
    base: &'a dyn Storage,
    writes: &'a OverlayWrites,
}

impl<'a> Layered<'a> {
    pub fn new(base: &'a dyn Storage, writes: &'a OverlayWrites) -> Layered<'a> {
        Layered { base, writes }
    }
}

impl Storage for Layered<'_> {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, Error> {
        match self.writes.get(key) {
            Some(v) => Ok(v.clone()),
            None => self.base.get(key),
        }
    }

    fn scan(&self, range: &KeyRange, reverse: bool, limit: usize) -> Result<Vec<Entry>, Error> {
        merged_scan(self.base, self.writes, range, reverse, limit)
    }

    fn apply(&mut self, _batch: Batch) -> Result<(), Error> {
        Err(Error::new(
            ErrorCode::ReadOnly,
            "a read view of the state cannot be written",
        ))
    }
}

fn as_ref(b: &Bound<Vec<u8>>) -> Bound<&[u8]> {
    match b {
        Bound::Included(v) => Bound::Included(v.as_slice()),
        Bound::Excluded(v) => Bound::Excluded(v.as_slice()),
        Bound::Unbounded => Bound::Unbounded,
    }
}

impl Storage for Overlay<'_> {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, Error> {
        match self.writes.get(key) {
            Some(v) => Ok(v.clone()),
            None => self.base.get(key),
        }
    }

    fn scan(&self, range: &KeyRange, reverse: bool, limit: usize) -> Result<Vec<Entry>, Error> {
        merged_scan(self.base, &self.writes, range, reverse, limit)
    }

    fn apply(&mut self, batch: Batch) -> Result<(), Error> {
        for op in batch.ops {
            self.write(op);
        }
        Ok(())
    }

    /// The base's count, corrected by the overlay's writes in the range: a put of a key
    /// the base lacks adds one, a delete of a key it holds takes one away.
    fn count(&self, range: &KeyRange, limit: u64) -> Result<u64, Error> {
        if limit == 0 || range.is_empty() {
            return Ok(0);
        }
        let (mut added, mut removed) = (0u64, 0u64);
        for (k, v) in self
            .writes
            .range::<[u8], _>((as_ref(&range.start), as_ref(&range.end)))
        {
            match (v.is_some(), self.base.get(k)?.is_some()) {
                (true, false) => added += 1,
                (false, true) => removed += 1,
                _ => {}
            }
        }
        let base = self.base.count(range, limit.saturating_add(removed))?;
        Ok((base + added - removed).min(limit))
    }

    fn is_partial(&self) -> bool {
        self.base.is_partial()
    }
}

/// The part of `range` a page scanned from it speaks for, and the rest still to scan:
/// up to the page's last key when the page is full (`limit` entries), the whole range
/// otherwise.
pub(crate) fn page_cover(
    range: &KeyRange,
    page: &[Entry],
    limit: usize,
    reverse: bool,
) -> (KeyRange, Option<KeyRange>) {
    match page.last() {
        Some((last, _)) if page.len() == limit => {
            if reverse {
                (
                    KeyRange {
                        start: Bound::Included(last.clone()),
                        end: range.end.clone(),
                    },
                    Some(range.before(last)),
                )
            } else {
                (
                    KeyRange {
                        start: range.start.clone(),
                        end: Bound::Included(last.clone()),
                    },
                    Some(range.after(last)),
                )
            }
        }
        _ => (range.clone(), None),
    }
}

/// A store of ten keys, 0, 10, ... 90 as two big-endian bytes (for tests of paging over
/// it).
#[cfg(test)]
pub(crate) fn tens() -> super::MemoryStore {
    let mut s = super::MemoryStore::new();
    let mut b = Batch::new();
    for i in 0..10u16 {
        b.put((i * 10).to_be_bytes().to_vec(), vec![1]);
    }
    s.apply(b).expect("a memory store takes a batch");
    s
}

/// Reads the whole key space a page at a time through `page` (a `scan_page`), checking
/// that no page holds more than `limit` entries (for tests of the stores that page).
#[cfg(test)]
pub(crate) fn read_paged(
    limit: usize,
    mut page: impl FnMut(&KeyRange) -> Result<(Vec<Entry>, Option<KeyRange>), Error>,
) -> Vec<Entry> {
    let mut out = Vec::new();
    let mut range = Some(KeyRange::all());
    while let Some(r) = range {
        let (p, rest) = page(&r).unwrap();
        assert!(p.len() <= limit, "a page of {} for {limit}", p.len());
        out.extend(p);
        range = rest;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::MemoryStore;

    static EMPTY: std::sync::LazyLock<MemoryStore> = std::sync::LazyLock::new(MemoryStore::new);

    // Over an empty base, an overlay is a store in its own right.
    crate::storage_conformance_tests!(Overlay::new(&*EMPTY));

    /// A layered snapshot reads exactly what an overlay with the same writes reads,
    /// and refuses writes.
    #[test]
    fn layered_reads_like_an_overlay() {
        let base = || {
            let mut s = MemoryStore::new();
            let mut b = Batch::new();
            for i in 0..40u8 {
                b.put(vec![i * 3], vec![i]);
            }
            s.apply(b).unwrap();
            s
        };
        let mut writes = OverlayWrites::new();
        for k in [1u8, 3, 6, 7, 60, 200] {
            writes.insert(vec![k], if k % 2 == 0 { None } else { Some(vec![k]) });
        }
        let (b1, b2) = (base(), base());
        let overlay = Overlay::with_writes(&b1, writes.clone());
        let mut layered = Layered::new(&b2, &writes);
        for k in 0..=255u8 {
            assert_eq!(
                layered.get(&[k]).unwrap(),
                overlay.get(&[k]).unwrap(),
                "key {k}"
            );
        }
        for reverse in [false, true] {
            for limit in [1, 2, 5, 64, 1000] {
                for range in [
                    KeyRange::all(),
                    KeyRange {
                        start: Bound::Included(vec![5]),
                        end: Bound::Excluded(vec![90]),
                    },
                ] {
                    assert_eq!(
                        layered.scan(&range, reverse, limit).unwrap(),
                        overlay.scan(&range, reverse, limit).unwrap(),
                        "reverse={reverse} limit={limit} range={range:?}"
                    );
                }
            }
        }
        let e = layered.apply(Batch::new()).unwrap_err();
        assert_eq!(e.code, ErrorCode::ReadOnly);
    }

    /// A page holds at most `limit` entries however many writes lie in the part of the
    /// range its base page covers (found by the live query's `take(5)` over a range of
    /// hundreds of pending writes, each page of which merged them all), and the pages
    /// read on give the whole merged range exactly, deletes and writes among the base's
    /// keys included.
    #[test]
    fn pages_stop_at_their_limit_over_many_writes() {
        let s = tens();
        let mut v = Overlay::new(&s);
        // A thousand writes past the base's keys, and some among them.
        for i in 100..1100u16 {
            v.write((i.to_be_bytes().to_vec(), Some(vec![2])));
        }
        v.write((20u16.to_be_bytes().to_vec(), None));
        v.write((35u16.to_be_bytes().to_vec(), Some(vec![3])));
        v.write((1050u16.to_be_bytes().to_vec(), None));
        let mut want: Vec<u16> = (0..10u16).map(|i| i * 10).filter(|k| *k != 20).collect();
        want.push(35);
        want.extend((100..1100u16).filter(|k| *k != 1050));
        want.sort();
        for reverse in [false, true] {
            let mut expect = want.clone();
            if reverse {
                expect.reverse();
            }
            for limit in [1, 6, 64] {
                let (first, _) = v.scan_page(&KeyRange::all(), reverse, limit).unwrap();
                assert_eq!(first.len(), limit, "reverse={reverse} limit={limit}");
                let seen: Vec<u16> = read_paged(limit, |r| v.scan_page(r, reverse, limit))
                    .into_iter()
                    .map(|(k, _)| u16::from_be_bytes([k[0], k[1]]))
                    .collect();
                assert_eq!(seen, expect, "reverse={reverse} limit={limit}");
            }
        }
    }

    /// Over a populated base, reads merge the two and paging never skips or repeats.
    #[test]
    fn merged_pages_see_writes_and_deletes() {
        let mut s = MemoryStore::new();
        let mut b = Batch::new();
        for i in 0..20u8 {
            b.put(vec![i * 2], vec![i]);
        }
        s.apply(b).unwrap();
        let mut v = Overlay::new(&s);
        v.write((vec![3], Some(vec![99])));
        v.write((vec![4], None));
        v.write((vec![100], Some(vec![1])));
        let mut want: Vec<u8> = (0..20u8).map(|i| i * 2).filter(|k| *k != 4).collect();
        want.push(3);
        want.push(100);
        want.sort();
        for reverse in [false, true] {
            let mut expect = want.clone();
            if reverse {
                expect.reverse();
            }
            for limit in 1..6 {
                let seen: Vec<u8> = read_paged(limit, |r| v.scan_page(r, reverse, limit))
                    .into_iter()
                    .map(|(k, _)| k[0])
                    .collect();
                assert_eq!(seen, expect, "reverse={reverse} limit={limit}");
                // And through the trait, whose pages are exact.
                let all: Vec<u8> = v
                    .scan(&KeyRange::all(), reverse, 1000)
                    .unwrap()
                    .into_iter()
                    .map(|(k, _)| k[0])
                    .collect();
                assert_eq!(all, expect);
                let first: Vec<u8> = v
                    .scan(&KeyRange::all(), reverse, limit)
                    .unwrap()
                    .into_iter()
                    .map(|(k, _)| k[0])
                    .collect();
                assert_eq!(first, expect[..limit]);
            }
        }
        assert_eq!(v.take_batch().len(), 3);
        assert!(v.is_clean());
    }
}
