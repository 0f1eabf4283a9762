//! Sorted blocks: the IndexedDB backend's next layout of its key space (layout v4,
//! being built; `idb.rs` does not use it yet: docs/DECISIONS.md, "The store in
//! blocks").
//!
//! Today a key of the engine is a record of IndexedDB's `kv`, and in Chromium every
//! record read or written is a request to the storage process: a document is three
//! (itself, its index entry, its membership), which is what bounds the bulk writes, the
//! drains of confirmations and every read after a reopen (docs/BENCHMARKS.md, "What
//! the storage layout costs"). Blocks hold the same entries, sorted, packed in about
//! [`MAX_BYTES`] per record, as a B-tree's leaves: a block is stored under its first
//! key, and covers every key from it to the next block's first key. The first block's
//! key is empty, so every key has exactly one block, the last whose key is at most it.
//! [`Blocks`] is the in-memory list of those keys (read at open with one `getAllKeys`:
//! about 1,500 keys for 100,000 documents); [`Blocks::rewrite`] merges a batch of writes
//! into the blocks they land in, splitting what grows past [`MAX_BYTES`] and packing a
//! run of neighbours together again, and says which records to put and delete.
//!
//! The format and the rules are in docs/STORAGE.md ("Blocks").
//!
//! Pure: builds and is tested everywhere.

use std::collections::BTreeMap;
use std::ops::{Bound, Range};

use warren_core::storage::{Entry, KeyRange};
use warren_core::value::{write_varint, Reader};

use crate::wal::Writes;

/// A block is split when its bytes would pass this (unless it is one entry).
pub const MAX_BYTES: usize = 32 << 10;
/// A block left smaller than this at the end of a rewritten run shares the entries of
/// the one before it evenly, so that a full block split by one insert becomes two
/// halves rather than a full block and a sliver.
pub const MIN_BYTES: usize = MAX_BYTES / 4;
/// The format byte each block starts with.
const FORMAT: u8 = 1;
/// The most a block's format byte and count take: its entries' bytes are at most
/// [`MAX_BYTES`], so the block at most this more.
pub const HEADER: usize = 1 + 5;

/// A block that is not one (written by something else, or damaged).
#[derive(Debug, PartialEq, Eq)]
pub struct BadBlock(pub String);

fn bad(e: warren_core::Error) -> BadBlock {
    BadBlock(e.message)
}

fn varint_len(v: usize) -> usize {
    let bits = usize::BITS - v.leading_zeros();
    (bits.max(1) as usize).div_ceil(7)
}

fn shared(a: &[u8], b: &[u8]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

/// The bytes `e` takes in a block after an entry whose key is `prev` (`None`: first).
fn entry_size(prev: Option<&[u8]>, e: &Entry) -> usize {
    let s = prev.map_or(0, |p| shared(p, &e.0));
    let rest = e.0.len() - s;
    varint_len(s) + varint_len(rest) + rest + varint_len(e.1.len()) + e.1.len()
}

/// One block holding `entries` (sorted by key, each key once).
pub fn encode(entries: &[Entry]) -> Vec<u8> {
    let mut prev: Option<&[u8]> = None;
    let size: usize = entries
        .iter()
        .map(|e| {
            let n = entry_size(prev, e);
            prev = Some(&e.0);
            n
        })
        .sum();
    let mut out = Vec::with_capacity(size + 1 + varint_len(entries.len()));
    out.push(FORMAT);
    write_varint(&mut out, entries.len() as u64);
    let mut prev: &[u8] = &[];
    for (k, v) in entries {
        let s = shared(prev, k);
        write_varint(&mut out, s as u64);
        write_varint(&mut out, (k.len() - s) as u64);
        out.extend_from_slice(&k[s..]);
        write_varint(&mut out, v.len() as u64);
        out.extend_from_slice(v);
        prev = k;
    }
    out
}

/// The entries of a block, checked: keys strictly increasing. Nothing is allocated for
/// a count or a length the bytes cannot hold.
pub fn decode(block: &[u8]) -> Result<Vec<Entry>, BadBlock> {
    let mut r = Reader::new(block);
    if r.byte().map_err(bad)? != FORMAT {
        return Err(BadBlock("unknown format".into()));
    }
    let n = r.varint().map_err(bad)?;
    // Each entry takes at least three bytes.
    if n > ((block.len() - r.pos) / 3) as u64 {
        return Err(BadBlock("more entries than bytes".into()));
    }
    let mut out: Vec<Entry> = Vec::with_capacity(n as usize);
    for _ in 0..n {
        let s = r.varint().map_err(bad)?;
        let prev: &[u8] = out.last().map_or(&[], |e| &e.0);
        if s > prev.len() as u64 {
            return Err(BadBlock("a key shares more than the key before it".into()));
        }
        let rest_len = r.len().map_err(bad)?;
        let rest = r.take(rest_len).map_err(bad)?;
        let mut k = Vec::with_capacity(s as usize + rest.len());
        k.extend_from_slice(&prev[..s as usize]);
        k.extend_from_slice(rest);
        if out.last().is_some_and(|e| e.0 >= k) {
            return Err(BadBlock("keys out of order".into()));
        }
        let vlen = r.len().map_err(bad)?;
        let v = r.take(vlen).map_err(bad)?.to_vec();
        out.push((k, v));
    }
    if r.pos != block.len() {
        return Err(BadBlock("bytes after the last entry".into()));
    }
    Ok(out)
}

/// Where `entries` (sorted) are cut into blocks: the start of each block.
///
/// Entries that fit in one block stay one. Past that, when the new entries were put in
/// one place (`inserted`: their indexes, with no kept entry among them; several, or at
/// the end), the blocks are
/// cut where they end: the entries up to there packed greedily (a block holds at least
/// one entry), and the ones after them apart. So where entries keep arriving at one
/// place (growing ids; an index by owner then date, at one place per owner) the blocks
/// behind it are full, and the next ones land in the last block, rather than each
/// split leaving two halves. Otherwise (new entries spread over the run) greedily,
/// then a last block under [`MIN_BYTES`] shares with the one before it, cut where the
/// two are nearest even: one insert into a full block leaves two halves.
fn cuts(entries: &[Entry], inserted: Option<Range<usize>>) -> Vec<usize> {
    let size_of = |es: &[Entry]| -> usize {
        (0..es.len())
            .map(|i| entry_size((i > 0).then(|| es[i - 1].0.as_slice()), &es[i]))
            .sum()
    };
    if entries.is_empty() {
        return Vec::new();
    }
    if size_of(entries) <= MAX_BYTES {
        return vec![0];
    }
    if let Some(ins) = inserted {
        let mut starts = greedy(&entries[..ins.end], 0);
        if ins.end < entries.len() {
            starts.extend(greedy(&entries[ins.end..], ins.end));
        }
        return starts;
    }
    let mut starts = greedy(entries, 0);
    let from = starts[starts.len() - 1];
    if starts.len() >= 2 && size_of(&entries[from..]) < MIN_BYTES {
        // The last two blocks as one run: cut where their sizes are nearest even, if
        // neither passes MAX_BYTES there (a large entry may leave no such cut).
        let from = starts[starts.len() - 2];
        let sizes: Vec<usize> = (from..entries.len())
            .map(|i| entry_size((i > from).then(|| entries[i - 1].0.as_slice()), &entries[i]))
            .collect();
        let total: usize = sizes.iter().sum();
        let mut best: Option<(usize, usize)> = None;
        let mut left = 0;
        for j in 1..sizes.len() {
            left += sizes[j - 1];
            let right = total - left - sizes[j] + entry_size(None, &entries[from + j]);
            if left <= MAX_BYTES && right <= MAX_BYTES {
                let gap = left.abs_diff(right);
                if best.is_none_or(|(g, _)| gap < g) {
                    best = Some((gap, from + j));
                }
            }
        }
        if let Some((_, cut)) = best {
            let last = starts.len() - 1;
            starts[last] = cut;
        }
    }
    starts
}

/// The starts of blocks packing `entries` greedily up to [`MAX_BYTES`] (at least one
/// entry each), offset by `at`.
fn greedy(entries: &[Entry], at: usize) -> Vec<usize> {
    let mut starts = Vec::new();
    let mut size = 0;
    for (i, e) in entries.iter().enumerate() {
        let n = entry_size((i > 0).then(|| entries[i - 1].0.as_slice()), e);
        if starts.is_empty() || size + n > MAX_BYTES {
            starts.push(at + i);
            size = entry_size(None, e);
        } else {
            size += n;
        }
    }
    starts
}

/// What a rewrite stores: the blocks to put (key, bytes) and the keys to delete.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Rewrite {
    pub puts: Vec<(Vec<u8>, Vec<u8>)>,
    pub deletes: Vec<Vec<u8>>,
}

/// The blocks' keys, in order; the first is empty.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Blocks {
    firsts: Vec<Vec<u8>>,
}

impl Default for Blocks {
    fn default() -> Self {
        Blocks::new()
    }
}

impl Blocks {
    /// One empty block (a new database: store it, or let the first rewrite do it).
    pub fn new() -> Blocks {
        Blocks {
            firsts: vec![Vec::new()],
        }
    }

    /// The blocks named by the stored keys (as `getAllKeys` gives them): ascending,
    /// the first empty.
    pub fn from_keys(keys: Vec<Vec<u8>>) -> Result<Blocks, BadBlock> {
        if keys.first().is_none_or(|k| !k.is_empty()) {
            return Err(BadBlock("no block starts at the empty key".into()));
        }
        if keys.windows(2).any(|w| w[0] >= w[1]) {
            return Err(BadBlock("block keys out of order".into()));
        }
        Ok(Blocks { firsts: keys })
    }

    /// How many blocks there are (at least one).
    pub fn len(&self) -> usize {
        self.firsts.len()
    }

    /// Never: there is always the first block.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// Block `i`'s key, its first.
    pub fn key(&self, i: usize) -> &[u8] {
        &self.firsts[i]
    }

    /// The block that holds `k`.
    pub fn block_of(&self, k: &[u8]) -> usize {
        // firsts[0] is empty, so at least one key is at most `k`.
        self.firsts.partition_point(|f| f.as_slice() <= k) - 1
    }

    /// The keys block `i` covers.
    pub fn interval(&self, i: usize) -> KeyRange {
        KeyRange {
            start: Bound::Included(self.firsts[i].clone()),
            end: match self.firsts.get(i + 1) {
                Some(next) => Bound::Excluded(next.clone()),
                None => Bound::Unbounded,
            },
        }
    }

    /// The blocks a range's keys may be in (empty for an empty range).
    pub fn covering(&self, r: &KeyRange) -> Range<usize> {
        if r.is_empty() {
            return 0..0;
        }
        let from = match &r.start {
            Bound::Unbounded => 0,
            Bound::Included(k) | Bound::Excluded(k) => self.block_of(k),
        };
        let to = match &r.end {
            Bound::Unbounded => self.firsts.len(),
            Bound::Included(k) => self.block_of(k) + 1,
            // The blocks with a key below `k`.
            Bound::Excluded(k) => self.firsts.partition_point(|f| f.as_slice() < k.as_slice()),
        };
        from..to.max(from)
    }

    /// The blocks `writes` land in, ascending, each once: a rewrite needs their entries.
    pub fn touched(&self, writes: &Writes) -> Vec<usize> {
        let mut out: Vec<usize> = Vec::new();
        let mut i = 0;
        for k in writes.keys() {
            // Keys ascend, so the search goes on from the last block found.
            while i + 1 < self.firsts.len() && self.firsts[i + 1].as_slice() <= k.as_slice() {
                i += 1;
            }
            if out.last() != Some(&i) {
                out.push(i);
            }
        }
        out
    }

    /// Merges `writes` into the blocks they land in, whose entries `contents` holds (by
    /// block number: every block [`Blocks::touched`] names; as stored, or with `writes`
    /// already in them, as a cache holds them: the result is the same), and updates the
    /// list of blocks. Each run of neighbouring touched blocks is packed again as one
    /// and written whole: split where it grew past [`MAX_BYTES`], neighbours that shrank
    /// merged; a run left with no entry is deleted (its keys fall to the block before
    /// it), but the first block, which stays even when empty.
    pub fn rewrite(
        &mut self,
        contents: &BTreeMap<usize, Vec<Entry>>,
        writes: &Writes,
    ) -> Result<Rewrite, BadBlock> {
        let touched = self.touched(writes);
        let mut out = Rewrite::default();
        // Runs of consecutive block numbers.
        let mut runs: Vec<Range<usize>> = Vec::new();
        for &i in &touched {
            match runs.last_mut() {
                Some(r) if r.end == i => r.end = i + 1,
                _ => runs.push(i..i + 1),
            }
        }
        // New keys per run, spliced in afterwards (last run first, so earlier block
        // numbers hold).
        let mut splices: Vec<(Range<usize>, Vec<Vec<u8>>)> = Vec::new();
        for run in runs {
            let mut old: Vec<&Entry> = Vec::new();
            for i in run.clone() {
                let c = contents
                    .get(&i)
                    .ok_or_else(|| BadBlock(format!("block {i} was not given")))?;
                let within = self.interval(i);
                for e in c {
                    if !within.contains(&e.0) || old.last().is_some_and(|p| p.0 >= e.0) {
                        return Err(BadBlock(format!(
                            "block {i} holds a key out of its order or its range"
                        )));
                    }
                    old.push(e);
                }
            }
            // The run's writes: from its first key to the next run's.
            let lo = Bound::Included(self.firsts[run.start].clone());
            let hi = match self.firsts.get(run.end) {
                Some(k) => Bound::Excluded(k.clone()),
                None => Bound::Unbounded,
            };
            let mut merged: Vec<Entry> = Vec::with_capacity(old.len());
            let mut olds = old.into_iter().peekable();
            // Where the puts went: the first and the last, and whether a kept entry
            // lies between them.
            let mut put_at: Option<Range<usize>> = None;
            let mut spread = false;
            for (k, v) in writes.range::<Vec<u8>, _>((lo, hi)) {
                while let Some(e) = olds.next_if(|e| e.0 < *k) {
                    merged.push(e.clone());
                }
                olds.next_if(|e| e.0 == *k);
                if let Some(v) = v {
                    let i = merged.len();
                    match &mut put_at {
                        Some(r) => {
                            spread |= r.end < i;
                            r.end = i + 1;
                        }
                        None => put_at = Some(i..i + 1),
                    }
                    merged.push((k.clone(), v.clone()));
                }
            }
            merged.extend(olds.cloned());

            // One place: several puts with no kept entry among them, or puts after
            // every kept entry (a single insert elsewhere splits in halves).
            let one_place = put_at.filter(|r| !spread && (r.len() >= 2 || r.end == merged.len()));
            let starts = cuts(&merged, one_place);
            let mut keys: Vec<Vec<u8>> = Vec::with_capacity(starts.len().max(1));
            let mut parts: Vec<&[Entry]> = Vec::with_capacity(starts.len().max(1));
            for (j, &s) in starts.iter().enumerate() {
                let end = starts.get(j + 1).copied().unwrap_or(merged.len());
                keys.push(if j == 0 {
                    self.firsts[run.start].clone()
                } else {
                    merged[s].0.clone()
                });
                parts.push(&merged[s..end]);
            }
            if keys.is_empty() && run.start == 0 {
                keys.push(Vec::new());
                parts.push(&[]);
            }
            for (k, part) in keys.iter().zip(&parts) {
                out.puts.push((k.clone(), encode(part)));
            }
            for f in &self.firsts[run.clone()] {
                if keys.binary_search(f).is_err() {
                    out.deletes.push(f.clone());
                }
            }
            splices.push((run, keys));
        }
        for (run, keys) in splices.into_iter().rev() {
            self.firsts.splice(run, keys);
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn e(k: &str, v: &str) -> Entry {
        (k.as_bytes().to_vec(), v.as_bytes().to_vec())
    }

    #[test]
    fn blocks_round_trip_with_shared_prefixes() {
        let entries = vec![
            e("", ""),
            e("Dtodo\0\x01a", "one"),
            e("Dtodo\0\x01ab", ""),
            e("Dtodo\0\x01b", &"x".repeat(300)),
            e("P", "p"),
        ];
        let b = encode(&entries);
        assert_eq!(decode(&b).unwrap(), entries);
        assert_eq!(decode(&encode(&[])).unwrap(), Vec::<Entry>::new());
        // The shared prefixes are not stored again.
        let plain: usize = entries.iter().map(|(k, v)| k.len() + v.len()).sum();
        assert!(b.len() < plain + 2 * entries.len() + 2, "{} bytes", b.len());
    }

    #[test]
    fn damaged_blocks_are_refused() {
        let good = encode(&[e("Dk1", "one"), e("Dk2", "two")]);
        for cut in 0..good.len() {
            assert!(decode(&good[..cut]).is_err(), "cut at {cut}");
        }
        let mut longer = good.clone();
        longer.push(0);
        assert!(decode(&longer).is_err());
        let mut other = good.clone();
        other[0] = 2;
        assert!(decode(&other).is_err());
        // Out of order, equal, and a shared prefix longer than the key before.
        assert!(decode(&encode(&[e("b", ""), e("a", "")])).is_err());
        assert!(decode(&encode(&[e("a", ""), e("a", "")])).is_err());
        assert!(decode(&[1, 2, 0, 1, b'a', 0, 5, 0, 0]).is_err());
        // A count or a length past the end allocates nothing.
        assert!(decode(&[1, 0xff, 0xff, 0xff, 0xff, 0x0f]).is_err());
        assert!(decode(&[1, 1, 0, 0xff, 0xff, 0xff, 0xff, 0x0f]).is_err());
    }

    #[test]
    fn blocks_are_found_by_their_first_keys() {
        let b = Blocks::from_keys(vec![vec![], b"D".to_vec(), b"I".to_vec()]).unwrap();
        assert_eq!(b.block_of(b""), 0);
        assert_eq!(b.block_of(b"C"), 0);
        assert_eq!(b.block_of(b"D"), 1);
        assert_eq!(b.block_of(b"Dzz"), 1);
        assert_eq!(b.block_of(b"Z"), 2);
        assert_eq!(b.covering(&KeyRange::all()), 0..3);
        assert_eq!(b.covering(&KeyRange::prefix(b"D")), 1..2);
        assert_eq!(b.covering(&KeyRange::prefix(b"C")), 0..1);
        assert_eq!(b.covering(&KeyRange::point(b"I")), 2..3);
        let empty = KeyRange {
            start: Bound::Included(b"b".to_vec()),
            end: Bound::Excluded(b"a".to_vec()),
        };
        assert_eq!(b.covering(&empty), 0..0);
        assert!(Blocks::from_keys(vec![b"a".to_vec()]).is_err());
        assert!(Blocks::from_keys(vec![]).is_err());
        assert!(Blocks::from_keys(vec![vec![], b"b".to_vec(), b"a".to_vec()]).is_err());
    }

    /// A store of blocks kept by key, as IndexedDB's object store would.
    struct Store {
        blocks: Blocks,
        records: BTreeMap<Vec<u8>, Vec<u8>>,
        puts: usize,
        bytes_put: usize,
    }

    impl Store {
        fn new() -> Store {
            Store {
                blocks: Blocks::new(),
                records: BTreeMap::from([(Vec::new(), encode(&[]))]),
                puts: 0,
                bytes_put: 0,
            }
        }

        fn apply(&mut self, writes: &Writes) {
            let contents: BTreeMap<usize, Vec<Entry>> = self
                .blocks
                .touched(writes)
                .into_iter()
                .map(|i| (i, decode(&self.records[self.blocks.key(i)]).unwrap()))
                .collect();
            let rw = self.blocks.rewrite(&contents, writes).unwrap();
            for k in rw.deletes {
                assert!(self.records.remove(&k).is_some(), "deleted a missing block");
            }
            for (k, v) in rw.puts {
                self.puts += 1;
                self.bytes_put += k.len() + v.len();
                self.records.insert(k, v);
            }
        }

        /// Checks every rule against `model`; returns the blocks' sizes.
        fn check(&self, model: &BTreeMap<Vec<u8>, Vec<u8>>) -> Vec<usize> {
            let keys: Vec<Vec<u8>> = self.records.keys().cloned().collect();
            assert_eq!(Blocks::from_keys(keys).unwrap(), self.blocks);
            let mut all = Vec::new();
            let mut sizes = Vec::new();
            for (i, (k, bytes)) in self.records.iter().enumerate() {
                let entries = decode(bytes).unwrap();
                assert!(
                    bytes.len() <= MAX_BYTES + HEADER || entries.len() == 1,
                    "block {i}: {} bytes in {} entries",
                    bytes.len(),
                    entries.len()
                );
                let within = self.blocks.interval(i);
                assert_eq!(self.blocks.key(i), k.as_slice());
                for x in &entries {
                    assert!(within.contains(&x.0));
                }
                // Only the first block is ever empty.
                assert!(i == 0 || !entries.is_empty(), "block {i} is empty");
                sizes.push(bytes.len());
                all.extend(entries);
            }
            let want: Vec<Entry> = model.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
            assert_eq!(all, want);
            sizes
        }
    }

    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            // SplitMix64.
            self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^ (z >> 31)
        }
        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }
    }

    #[test]
    fn random_batches_match_a_model() {
        let seed = std::env::var("WARREN_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(0x5eed_b10c);
        println!("seed {seed} (WARREN_SEED to repeat)");
        for round in 0..4 {
            let mut rng = Rng(seed + round);
            let mut store = Store::new();
            let mut model = BTreeMap::new();
            for batch in 0..60 {
                let mut writes = Writes::new();
                let n = 1 + rng.below(if batch % 10 == 0 { 600 } else { 40 });
                for _ in 0..n {
                    // Keys from a small space (so writes meet existing ones), of mixed
                    // lengths and shared prefixes; now and then a large value.
                    let k = format!(
                        "{}{:05}",
                        ["D", "Ia", "Ib", "P"][rng.below(4) as usize],
                        rng.below(3000)
                    )
                    .into_bytes();
                    let v = match rng.below(10) {
                        0..=2 => None,
                        3 => Some(vec![7; rng.below(40_000) as usize]),
                        _ => Some(vec![batch as u8; rng.below(200) as usize]),
                    };
                    writes.insert(k, v);
                }
                for (k, v) in &writes {
                    match v {
                        Some(v) => model.insert(k.clone(), v.clone()),
                        None => model.remove(k),
                    };
                }
                store.apply(&writes);
                store.check(&model);
            }
            // Deleting everything leaves the first block, empty.
            let writes: Writes = model.keys().map(|k| (k.clone(), None)).collect();
            store.apply(&writes);
            model.clear();
            store.check(&model);
            assert_eq!(store.blocks.len(), 1);
        }
    }

    #[test]
    fn appends_fill_their_blocks_and_inserts_split_them_in_halves() {
        // Sequential ids in chunks of 1,000, as an import makes them: blocks stay full.
        let mut store = Store::new();
        let mut model = BTreeMap::new();
        let doc = |i: u32| {
            (
                format!("Dtodo\0\x01user-d{i:07}\0\x01").into_bytes(),
                vec![1; 150],
            )
        };
        for chunk in 0..20 {
            let writes: Writes = (chunk * 1000..(chunk + 1) * 1000)
                .map(|i| {
                    let (k, v) = doc(i);
                    model.insert(k.clone(), v.clone());
                    (k, Some(v))
                })
                .collect();
            store.apply(&writes);
        }
        let sizes = store.check(&model);
        let total: usize = sizes.iter().sum();
        assert!(total / sizes.len() > MAX_BYTES * 9 / 10, "{sizes:?}");
        // Each chunk wrote its own bytes and the last block before it again: at most
        // twice what it added.
        let data: usize = model.iter().map(|(k, v)| k.len() + v.len()).sum();
        assert!(
            store.bytes_put < 2 * data,
            "{} bytes put for {data}",
            store.bytes_put
        );
        // Each chunk wrote its new blocks and the one before them, and no other.
        assert!(
            store.puts <= sizes.len() + 2 * 20,
            "{} puts, {} blocks",
            store.puts,
            sizes.len()
        );

        // Appends at 50 points at once (an index by owner then date, say): each point's
        // block fills before a new one starts, rather than splitting in halves.
        let mut store = Store::new();
        let mut model = BTreeMap::new();
        for chunk in 0..60u32 {
            let writes: Writes = (chunk * 1000..(chunk + 1) * 1000)
                .map(|i| {
                    let k = format!("Iowner{:02}\0{i:07}", i % 50).into_bytes();
                    model.insert(k.clone(), vec![3; 100]);
                    (k, Some(vec![3; 100]))
                })
                .collect();
            store.apply(&writes);
        }
        let points = store.check(&model);
        let total: usize = points.iter().sum();
        // Each point leaves one block part full; the others are full.
        assert!(total / points.len() > MAX_BYTES * 7 / 10, "{points:?}");

        // One insert into a full block splits it into two of about half.
        let before = store.blocks.len();
        let full = (1..points.len())
            .find(|&i| points[i] > MAX_BYTES * 9 / 10)
            .expect("a full block");
        let middle = store.blocks.key(full).to_vec();
        let mut k = middle.clone();
        k.push(b'x');
        store.apply(&Writes::from([(k.clone(), Some(vec![2; 150]))]));
        model.insert(k, vec![2; 150]);
        let sizes = store.check(&model);
        assert_eq!(store.blocks.len(), before + 1);
        assert!(
            sizes[full] > MAX_BYTES / 3 && sizes[full + 1] > MAX_BYTES / 3,
            "{sizes:?}"
        );
    }

    #[test]
    fn contents_with_the_writes_already_in_give_the_same_blocks() {
        let seed = 0x5eed_cace;
        println!("seed {seed}");
        let mut rng = Rng(seed);
        let mut store = Store::new();
        let mut model = BTreeMap::new();
        for _ in 0..40 {
            let mut writes = Writes::new();
            for _ in 0..1 + rng.below(300) {
                let k = format!("K{:04}", rng.below(2000)).into_bytes();
                let v = (rng.below(4) > 0).then(|| vec![1; rng.below(300) as usize]);
                writes.insert(k, v);
            }
            // As a cache holds them: each touched block's interval, after the writes.
            let mut after = model.clone();
            for (k, v) in &writes {
                match v {
                    Some(v) => after.insert(k.clone(), v.clone()),
                    None => after.remove(k),
                };
            }
            let cached: BTreeMap<usize, Vec<Entry>> = store
                .blocks
                .touched(&writes)
                .into_iter()
                .map(|i| {
                    let within = store.blocks.interval(i);
                    let es = after.iter().filter(|(k, _)| within.contains(k));
                    (i, es.map(|(k, v)| (k.clone(), v.clone())).collect())
                })
                .collect();
            let mut twin = Blocks::from_keys(store.blocks.firsts.clone()).unwrap();
            let from_cache = twin.rewrite(&cached, &writes).unwrap();
            let before = store.blocks.clone();
            store.apply(&writes);
            let mut again = before;
            let stored: BTreeMap<usize, Vec<Entry>> = again
                .touched(&writes)
                .into_iter()
                .map(|i| {
                    let within = again.interval(i);
                    let es = model.iter().filter(|(k, _)| within.contains(k));
                    (i, es.map(|(k, v)| (k.clone(), v.clone())).collect())
                })
                .collect();
            assert_eq!(again.rewrite(&stored, &writes).unwrap(), from_cache);
            assert_eq!(twin, store.blocks);
            model = after;
            store.check(&model);
        }
    }
}
