//! The replica's view: the base with the pending commits' writes laid over it, commit
//! by commit, and what each commit read.
//!
//! Each key a pending commit wrote holds a *layer*: the commits that wrote it, oldest
//! first, each with its value. The view of a key is the newest layer's value, or the
//! base's; the view *before* commit `s` (what `s` ran on) is the newest layer older
//! than `s`, or the base's. So one commit in the middle can run again on exactly what
//! it saw, without re-running the others, and a confirmed commit's layers can go
//! without touching the rest.
//!
//! Each commit's *reads* (keys, and the parts of ranges its scans covered, recorded by
//! [`Recorder`]) are indexed by key, so the commits a changed key concerns are found
//! without visiting the others.

use std::collections::{BTreeMap, BTreeSet};
use std::ops::Bound;

use crate::error::{Error, ErrorCode};
use crate::storage::{Batch, Entry, KeyRange, Reads, Storage};

/// One commit's writes to one key, oldest commit first.
type Layer = Vec<(u64, Option<Vec<u8>>)>;

/// What one pending commit contributed to the view.
#[derive(Debug, Default)]
struct Trace {
    /// The keys it wrote (each has a layer entry for it), then the keys it read (each
    /// lists it in `point_readers`): each its length (`u32`, little-endian) and
    /// itself, in one buffer (one allocation a commit, where one a key was about a
    /// quarter of the view's memory).
    keys: Vec<u8>,
    /// How many of `keys` it wrote.
    writes: usize,
    /// The parts of ranges its scans covered.
    ranges: Vec<KeyRange>,
}

impl Trace {
    fn push(&mut self, key: &[u8]) {
        // A key is far shorter than 4 GiB (`Limits`).
        self.keys
            .extend_from_slice(&(key.len() as u32).to_le_bytes());
        self.keys.extend_from_slice(key);
    }

    /// Its keys, the written first (see `keys`).
    fn keys(&self) -> impl Iterator<Item = &[u8]> {
        let mut rest = self.keys.as_slice();
        std::iter::from_fn(move || {
            let (n, after) = rest.split_first_chunk::<4>()?;
            let (k, after) = after.split_at(u32::from_le_bytes(*n) as usize);
            rest = after;
            Some(k)
        })
    }

    fn written(&self) -> impl Iterator<Item = &[u8]> {
        self.keys().take(self.writes)
    }

    fn read(&self) -> impl Iterator<Item = &[u8]> {
        self.keys().skip(self.writes)
    }
}

/// The pending commits' layers over the base, and their reads. See the module docs.
#[derive(Debug, Default)]
pub(crate) struct View {
    layers: BTreeMap<Vec<u8>, Layer>,
    traces: BTreeMap<u64, Trace>,
    /// Key → the commits that read it.
    point_readers: BTreeMap<Vec<u8>, BTreeSet<u64>>,
    /// The commits whose reads include ranges.
    range_readers: BTreeSet<u64>,
    /// About the bytes the layers hold (keys and values).
    bytes: usize,
}

/// Overhead counted per layer entry, besides its key and value.
const ENTRY_OVERHEAD: usize = 48;

impl View {
    /// The store as commit `before` saw it (`u64::MAX`: as the view shows it now).
    pub(crate) fn over<'a>(&'a self, base: &'a dyn Storage, before: u64) -> ViewStore<'a> {
        ViewStore {
            base,
            layers: &self.layers,
            before,
        }
    }

    pub(crate) fn bytes(&self) -> usize {
        self.bytes
    }

    /// Whether a pending commit wrote `key`.
    pub(crate) fn is_written(&self, key: &[u8]) -> bool {
        self.layers.contains_key(key)
    }

    /// Adds commit `seq`'s writes (a batch: the last write of a key wins) and reads.
    pub(crate) fn insert(&mut self, seq: u64, batch: Batch, reads: Reads) {
        let mut writes: BTreeMap<Vec<u8>, Option<Vec<u8>>> = BTreeMap::new();
        for (k, v) in batch.ops {
            writes.insert(k, v);
        }
        let mut trace = Trace {
            keys: Vec::with_capacity(
                (writes.keys().chain(&reads.points))
                    .map(|k| k.len() + 4)
                    .sum(),
            ),
            writes: writes.len(),
            ranges: Vec::new(),
        };
        for (k, v) in writes {
            self.bytes += ENTRY_OVERHEAD + k.len() + v.as_ref().map_or(0, Vec::len);
            trace.push(&k);
            let layer = self.layers.entry(k).or_default();
            // Almost always the newest: a commit runs after those before it.
            let at = layer.partition_point(|(s, _)| *s < seq);
            layer.insert(at, (seq, v));
        }
        for k in reads.points {
            trace.push(&k);
            self.point_readers.entry(k).or_default().insert(seq);
        }
        if !reads.ranges.is_empty() {
            self.range_readers.insert(seq);
        }
        trace.ranges = reads.ranges;
        self.traces.insert(seq, trace);
    }

    /// Takes commit `seq` out of the view; gives what it wrote.
    pub(crate) fn remove(&mut self, seq: u64) -> BTreeMap<Vec<u8>, Option<Vec<u8>>> {
        let mut out = BTreeMap::new();
        let Some(trace) = self.traces.remove(&seq) else {
            return out;
        };
        for k in trace.written() {
            if let Some(layer) = self.layers.get_mut(k) {
                if let Some(i) = layer.iter().position(|(s, _)| *s == seq) {
                    let (_, v) = layer.remove(i);
                    self.bytes = self
                        .bytes
                        .saturating_sub(ENTRY_OVERHEAD + k.len() + v.as_ref().map_or(0, Vec::len));
                    if layer.is_empty() {
                        self.layers.remove(k);
                    }
                    out.insert(k.to_vec(), v);
                }
            }
        }
        for k in trace.read() {
            if let Some(r) = self.point_readers.get_mut(k) {
                r.remove(&seq);
                if r.is_empty() {
                    self.point_readers.remove(k);
                }
            }
        }
        self.range_readers.remove(&seq);
        out
    }

    /// What commit `seq` wrote, by key.
    pub(crate) fn written(&self, seq: u64) -> BTreeMap<Vec<u8>, Option<Vec<u8>>> {
        let mut out = BTreeMap::new();
        if let Some(trace) = self.traces.get(&seq) {
            for k in trace.written() {
                if let Some((_, v)) = self.layers[k].iter().find(|(s, _)| *s == seq) {
                    out.insert(k.to_vec(), v.clone());
                }
            }
        }
        out
    }

    /// What settling commits `gone` (confirmed, refused or taken back) changes for the
    /// commits that stay: the keys the settled commits wrote whose value the others now
    /// see differently. A key whose settled writes all came before the others' writes
    /// of it, and whose base value now equals the last settled write, changes nothing
    /// for anyone: that is the commit confirmed as it was made.
    pub(crate) fn settled_changes(
        &self,
        gone: &BTreeSet<u64>,
        base: &dyn Storage,
    ) -> Result<BTreeSet<Vec<u8>>, Error> {
        let mut changed = BTreeSet::new();
        for seq in gone {
            let Some(trace) = self.traces.get(seq) else {
                continue;
            };
            for k in trace.written() {
                if changed.contains(k) {
                    continue;
                }
                let layer = &self.layers[k];
                let last_gone = layer.iter().rposition(|(s, _)| gone.contains(s));
                let first_kept = layer.iter().position(|(s, _)| !gone.contains(s));
                let same = match (last_gone, first_kept) {
                    (Some(g), Some(f)) if g > f => false,
                    (Some(g), _) => base.get(k)? == layer[g].1,
                    (None, _) => true,
                };
                if !same {
                    changed.insert(k.to_vec());
                }
            }
        }
        Ok(changed)
    }

    /// The commits (newer than `after`) whose reads meet `ranges`.
    pub(crate) fn range_readers(&self, ranges: &[KeyRange], after: u64) -> BTreeSet<u64> {
        let mut out = BTreeSet::new();
        for r in ranges {
            if r.is_empty() {
                continue;
            }
            for (_, seqs) in self
                .point_readers
                .range::<[u8], _>((as_ref(&r.start), as_ref(&r.end)))
            {
                out.extend(seqs.range(after.saturating_add(1)..));
            }
        }
        for seq in self.range_readers.range(after.saturating_add(1)..) {
            if !out.contains(seq)
                && self.traces[seq]
                    .ranges
                    .iter()
                    .any(|a| ranges.iter().any(|b| a.overlaps(b)))
            {
                out.insert(*seq);
            }
        }
        out
    }

    /// The commits (newer than `after`) that read any of `keys`.
    pub(crate) fn readers(&self, keys: &BTreeSet<Vec<u8>>, after: u64) -> BTreeSet<u64> {
        let mut out = BTreeSet::new();
        if keys.is_empty() {
            return out;
        }
        for k in keys {
            if let Some(r) = self.point_readers.get(k.as_slice()) {
                out.extend(r.range(after.saturating_add(1)..));
            }
        }
        for seq in self.range_readers.range(after.saturating_add(1)..) {
            if out.contains(seq) {
                continue;
            }
            if self.traces[seq].ranges.iter().any(|r| in_range(keys, r)) {
                out.insert(*seq);
            }
        }
        out
    }
}

/// Whether any of `keys` lies in `range`.
pub(crate) fn in_range(keys: &BTreeSet<Vec<u8>>, range: &KeyRange) -> bool {
    if range.is_empty() {
        return false;
    }
    keys.range::<[u8], _>((as_ref(&range.start), as_ref(&range.end)))
        .next()
        .is_some()
}

fn as_ref(b: &Bound<Vec<u8>>) -> Bound<&[u8]> {
    match b {
        Bound::Included(v) => Bound::Included(v.as_slice()),
        Bound::Excluded(v) => Bound::Excluded(v.as_slice()),
        Bound::Unbounded => Bound::Unbounded,
    }
}

/// The view as a read-only store: the base with every layer older than `before` laid
/// over it.
pub(crate) struct ViewStore<'a> {
    base: &'a dyn Storage,
    layers: &'a BTreeMap<Vec<u8>, Layer>,
    before: u64,
}

/// What a layer shows to commit `before`: `None` when no older commit wrote the key
/// (the base shows through).
fn visible(layer: &Layer, before: u64) -> Option<&Option<Vec<u8>>> {
    let n = layer.partition_point(|(s, _)| *s < before);
    n.checked_sub(1).map(|i| &layer[i].1)
}

impl ViewStore<'_> {
    /// One page of the merged view, and the rest of the range (as `Overlay::scan_page`).
    fn scan_page(
        &self,
        range: &KeyRange,
        reverse: bool,
        limit: usize,
    ) -> Result<(Vec<Entry>, Option<KeyRange>), Error> {
        let limit = limit.max(1);
        let base = self.base.scan(range, reverse, limit)?;
        let (covered, rest) = crate::storage::page_cover(range, &base, limit, reverse);
        if covered.is_empty() {
            return Ok((base, rest));
        }
        let mut layered = self
            .layers
            .range::<[u8], _>((as_ref(&covered.start), as_ref(&covered.end)))
            .filter_map(|(k, l)| visible(l, self.before).map(|v| (k, v)))
            .peekable();
        if layered.peek().is_none() {
            return Ok((base, rest));
        }
        Ok(crate::storage::merge_page(
            range, base, layered, reverse, limit, rest,
        ))
    }
}

impl Storage for ViewStore<'_> {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, Error> {
        match self.layers.get(key).and_then(|l| visible(l, self.before)) {
            Some(v) => Ok(v.clone()),
            None => self.base.get(key),
        }
    }

    fn scan(&self, range: &KeyRange, reverse: bool, limit: usize) -> Result<Vec<Entry>, Error> {
        crate::storage::scan_by_pages(range, limit, |r, n| self.scan_page(r, reverse, n))
    }

    fn count(&self, range: &KeyRange, limit: u64) -> Result<u64, Error> {
        if limit == 0 || range.is_empty() {
            return Ok(0);
        }
        let (mut added, mut removed) = (0u64, 0u64);
        for (k, l) in self
            .layers
            .range::<[u8], _>((as_ref(&range.start), as_ref(&range.end)))
        {
            let Some(v) = visible(l, self.before) else {
                continue;
            };
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

    fn apply(&mut self, _batch: Batch) -> Result<(), Error> {
        Err(Error::new(ErrorCode::ReadOnly, "the view is read-only"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::{read_paged, tens, MemoryStore, Overlay};

    /// A view store with layers from two commits reads like an overlay holding the
    /// newer write of each key, and like one holding only the older commit's writes
    /// when read as the newer commit saw it.
    #[test]
    fn layers_read_as_overlays() {
        let mut base = MemoryStore::new();
        let mut b = Batch::new();
        for i in 0..30u8 {
            b.put(vec![i], vec![i]);
        }
        base.apply(b).unwrap();
        let mut view = View::default();
        let mut c1 = Batch::new();
        c1.put(vec![3], vec![100]);
        c1.delete(vec![4]);
        c1.put(vec![40], vec![1]);
        view.insert(5, c1.clone(), Reads::default());
        let mut c2 = Batch::new();
        c2.delete(vec![3]);
        c2.put(vec![4], vec![200]);
        c2.put(vec![41], vec![2]);
        view.insert(9, c2.clone(), Reads::default());
        let mut only1 = Overlay::new(&base);
        only1.apply(c1.clone()).unwrap();
        let mut both = Overlay::new(&base);
        both.apply(c1).unwrap();
        both.apply(c2).unwrap();
        for (before, want) in [(9, &only1), (u64::MAX, &both), (6, &only1)] {
            let got = view.over(&base, before);
            for reverse in [false, true] {
                for limit in [1, 2, 7, 100] {
                    assert_eq!(
                        got.scan(&KeyRange::all(), reverse, limit).unwrap(),
                        want.scan(&KeyRange::all(), reverse, limit).unwrap()
                    );
                }
            }
            for k in 0..45u8 {
                assert_eq!(got.get(&[k]).unwrap(), want.get(&[k]).unwrap());
            }
            assert_eq!(
                got.count(&KeyRange::all(), 1000).unwrap(),
                want.count(&KeyRange::all(), 1000).unwrap()
            );
        }
        // Before the first commit: the base.
        let first = view.over(&base, 5);
        assert_eq!(first.get(&[3]).unwrap(), Some(vec![3]));
        // Taking the first commit out leaves the second's writes.
        let gone = view.remove(5);
        assert_eq!(gone.len(), 3);
        assert_eq!(view.over(&base, u64::MAX).get(&[3]).unwrap(), None);
        assert_eq!(view.over(&base, u64::MAX).get(&[40]).unwrap(), None);
    }

    /// A page of the view holds at most `limit` entries however many pending writes
    /// lie past the base's (each live query's `take(5)` used to merge every pending
    /// write of its range), and reading on gives what an overlay of the same writes
    /// gives.
    #[test]
    fn pages_stop_at_their_limit_over_many_pending_writes() {
        let base = tens();
        let mut view = View::default();
        let mut all = Overlay::new(&base);
        for seq in 1..=500u16 {
            let mut c = Batch::new();
            c.put((100 + seq).to_be_bytes().to_vec(), vec![2]);
            if seq % 50 == 0 {
                c.delete((seq / 50 * 10 - 10).to_be_bytes().to_vec());
            }
            all.apply(c.clone()).unwrap();
            view.insert(u64::from(seq), c, Reads::default());
        }
        let got = view.over(&base, u64::MAX);
        for reverse in [false, true] {
            for limit in [1, 6, 64] {
                if reverse {
                    // The newest keys are all pending writes.
                    let (first, _) = got.scan_page(&KeyRange::all(), reverse, limit).unwrap();
                    assert_eq!(first.len(), limit, "limit={limit}");
                }
                let seen = read_paged(limit, |r| got.scan_page(r, reverse, limit));
                assert_eq!(seen, all.scan(&KeyRange::all(), reverse, 10_000).unwrap());
            }
        }
    }

    #[test]
    fn readers_are_found_by_key_and_range() {
        let mut view = View::default();
        let mut r1 = Reads::default();
        r1.points.insert(vec![1]);
        view.insert(1, Batch::new(), r1);
        let mut r2 = Reads::default();
        r2.ranges.push(KeyRange::prefix(&[2]));
        view.insert(2, Batch::new(), r2);
        let keys = |ks: &[&[u8]]| ks.iter().map(|k| k.to_vec()).collect::<BTreeSet<_>>();
        assert_eq!(view.readers(&keys(&[&[1]]), 0), BTreeSet::from([1]));
        assert_eq!(view.readers(&keys(&[&[2, 5]]), 0), BTreeSet::from([2]));
        assert_eq!(
            view.readers(&keys(&[&[2, 5], &[1]]), 1),
            BTreeSet::from([2])
        );
        assert!(view.readers(&keys(&[&[3]]), 0).is_empty());
        view.remove(2);
        assert!(view.readers(&keys(&[&[2, 5]]), 0).is_empty());
    }

    /// One key read by several commits, inserted out of order and taken out one by
    /// one, and keys of any length (the empty key, a long one) written and read: each
    /// commit's trace gives back exactly its own keys, and nothing is left behind.
    #[test]
    fn one_key_read_by_many_and_keys_of_any_length() {
        let long = vec![7u8; 300];
        let mut view = View::default();
        for seq in [5u64, 3, 9] {
            let mut reads = Reads::default();
            reads.points.insert(vec![1]);
            reads.points.insert(long.clone());
            let mut b = Batch::new();
            b.put(vec![], seq.to_be_bytes().to_vec());
            b.put(long.clone(), vec![]);
            b.delete(vec![seq as u8]);
            view.insert(seq, b, reads);
        }
        let keys = |ks: &[&[u8]]| ks.iter().map(|k| k.to_vec()).collect::<BTreeSet<_>>();
        assert_eq!(view.readers(&keys(&[&[1]]), 0), BTreeSet::from([3, 5, 9]));
        assert_eq!(view.readers(&keys(&[&long]), 3), BTreeSet::from([5, 9]));
        assert_eq!(view.readers(&keys(&[&[1]]), 9), BTreeSet::new());
        let mine = |seq: u64| {
            BTreeMap::from([
                (vec![], Some(seq.to_be_bytes().to_vec())),
                (vec![seq as u8], None),
                (long.clone(), Some(vec![])),
            ])
        };
        assert_eq!(view.written(5), mine(5));
        assert_eq!(view.remove(5), mine(5));
        assert_eq!(
            view.readers(&keys(&[&[1], &long]), 0),
            BTreeSet::from([3, 9])
        );
        assert_eq!(
            view.over(&MemoryStore::new(), u64::MAX).get(&[]).unwrap(),
            Some(9u64.to_be_bytes().to_vec())
        );
        assert_eq!(view.remove(9), mine(9));
        assert_eq!(view.remove(3), mine(3));
        assert!(view.layers.is_empty() && view.point_readers.is_empty() && view.traces.is_empty());
        assert_eq!(view.bytes(), 0);
    }

    struct Owned {
        base: &'static MemoryStore,
        view: View,
        seq: u64,
    }

    impl Storage for Owned {
        fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, Error> {
            self.view.over(self.base, u64::MAX).get(key)
        }
        fn scan(&self, range: &KeyRange, reverse: bool, limit: usize) -> Result<Vec<Entry>, Error> {
            self.view
                .over(self.base, u64::MAX)
                .scan(range, reverse, limit)
        }
        fn count(&self, range: &KeyRange, limit: u64) -> Result<u64, Error> {
            self.view.over(self.base, u64::MAX).count(range, limit)
        }
        fn apply(&mut self, batch: Batch) -> Result<(), Error> {
            self.seq += 1;
            self.view.insert(self.seq, batch, Reads::default());
            Ok(())
        }
    }

    static EMPTY: std::sync::LazyLock<MemoryStore> = std::sync::LazyLock::new(MemoryStore::new);

    fn owned() -> Owned {
        Owned {
            base: &EMPTY,
            view: View::default(),
            seq: 0,
        }
    }

    // Layers over an empty base, each batch a commit, make a store in their own right.
    crate::storage_conformance_tests!(owned());
}
