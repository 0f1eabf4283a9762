//! Log-structured runs: the IndexedDB backend's layout of its key space (IndexedDB
//! version 4 on; docs/DECISIONS.md, "The store in runs").
//!
//! In Chromium every record read or written is a request to the storage process, and a
//! document is three keys (itself, its index entry, its membership): a record a key
//! bounded the bulk writes, the drains of confirmations and every read after a reopen
//! (docs/BENCHMARKS.md). In runs, the entries written together are sorted and
//! packed into blocks of about [`BLOCK_BYTES`], one record each, and never rewritten: a
//! batch of writes is a new **run** (deletes in it are tombstones, which hide the key
//! in older runs), and a read merges the runs, the newest winning. Runs of about one
//! size are merged in the background, [`FANOUT`] at a time ([`Runs::plan`]), so there
//! are few, and each entry is written again about once per size it passes through.
//! Why runs rather than blocks rewritten in place, measured: docs/DECISIONS.md.
//!
//! What the store keeps in memory: per run its number, age, size and last key, its
//! blocks' live items, and its blocks' first keys (all of it in the run's record, read
//! at open; the blocks' own keys are not); from them [`Runs::covering`] says which
//! blocks a read needs, [`Runs::known`] over which keys what it read decides
//! everything, and [`Runs::count_plan`] which blocks a count must read.
//!
//! The formats are in docs/STORAGE.md ("Runs").
//!
//! Pure: builds and is tested everywhere.

use std::ops::{Bound, Range};

use warren_core::storage::KeyRange;
use warren_core::value::{write_varint, Reader};

/// A key and its value in a run; `None`: deleted there (a tombstone).
pub type Item = (Vec<u8>, Option<Vec<u8>>);

/// A block holds entries up to this many bytes (or one entry, however large).
pub const BLOCK_BYTES: usize = 32 << 10;
/// Runs merged at once, when that many neighbours are of one size class.
pub const FANOUT: usize = 4;
/// At most this many runs (see [`Runs::plan`]).
pub const MAX_RUNS: usize = 3 * FANOUT;
/// Where the runs' records live in `meta`: this prefix · the run's number (u64 BE).
pub const META_PREFIX: &[u8] = b"\xFFrun/";
/// Where a run being written in parts (a merge's) is marked in `meta`, while it has
/// blocks and no record: this prefix · its number (u64 BE), an empty value. The open
/// deletes the blocks of a run marked so (a merge cut short), with no read of the
/// blocks' keys.
pub const WRITING_PREFIX: &[u8] = b"\xFFrun+";
/// The format byte blocks start with.
const FORMAT: u8 = 1;
/// The format byte run records start with: 3 when the record lists its blocks' first
/// keys (written since IndexedDB version 7); 2 when it lists their live items but not
/// their keys (version 6), 1 when neither (version 4). See [`Run::meta_value`].
pub const RECORD_FORMAT: u8 = 3;

/// A block or a run record that is not one (written by something else, or damaged).
#[derive(Debug, PartialEq, Eq)]
pub struct BadRun(pub String);

fn bad(e: warren_core::Error) -> BadRun {
    BadRun(e.message)
}

fn varint_len(v: usize) -> usize {
    let bits = usize::BITS - v.leading_zeros();
    (bits.max(1) as usize).div_ceil(7)
}

fn shared(a: &[u8], b: &[u8]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

/// The bytes `e` takes in a block after an entry whose key is `prev` (`None`: first).
fn item_size(prev: Option<&[u8]>, e: &Item) -> usize {
    let s = prev.map_or(0, |p| shared(p, &e.0));
    let rest = e.0.len() - s;
    let v = e.1.as_ref().map_or(0, Vec::len);
    varint_len(s) + varint_len(rest) + rest + varint_len(v + 1) + v
}

// ----- blocks -----

/// One block holding `items` (sorted by key, each key once).
pub fn encode_block(items: &[Item]) -> Vec<u8> {
    let mut size = 0;
    for (i, e) in items.iter().enumerate() {
        size += item_size((i > 0).then(|| items[i - 1].0.as_slice()), e);
    }
    let mut out = Vec::with_capacity(size + 1 + varint_len(items.len()));
    out.push(FORMAT);
    write_varint(&mut out, items.len() as u64);
    let mut prev: &[u8] = &[];
    for (k, v) in items {
        let s = shared(prev, k);
        write_varint(&mut out, s as u64);
        write_varint(&mut out, (k.len() - s) as u64);
        out.extend_from_slice(&k[s..]);
        match v {
            None => out.push(0),
            Some(v) => {
                write_varint(&mut out, v.len() as u64 + 1);
                out.extend_from_slice(v);
            }
        }
        prev = k;
    }
    out
}

/// The items of a block, checked: keys strictly increasing. Nothing is allocated for a
/// count or a length the bytes cannot hold.
pub fn decode_block(block: &[u8]) -> Result<Vec<Item>, BadRun> {
    decode_block_in(block, &|_| true)
}

/// The items of a block whose keys `keep` keeps, checked as [`decode_block`] checks
/// them all: a read of part of a block takes in (allocates) that part alone.
pub fn decode_block_in(block: &[u8], keep: &dyn Fn(&[u8]) -> bool) -> Result<Vec<Item>, BadRun> {
    let mut r = Reader::new(block);
    if r.byte().map_err(bad)? != FORMAT {
        return Err(BadRun("a block of an unknown format".into()));
    }
    let n = r.varint().map_err(bad)?;
    // Each item takes at least three bytes.
    if n > ((block.len() - r.pos) / 3) as u64 {
        return Err(BadRun("a block with more items than bytes".into()));
    }
    let mut out: Vec<Item> = Vec::new();
    // The key before, and the one being read.
    let mut prev: Vec<u8> = Vec::new();
    let mut k: Vec<u8> = Vec::new();
    for i in 0..n {
        let s = r.varint().map_err(bad)?;
        if s > prev.len() as u64 {
            return Err(BadRun("a key shares more than the key before it".into()));
        }
        let rest_len = r.len().map_err(bad)?;
        let rest = r.take(rest_len).map_err(bad)?;
        k.clear();
        k.extend_from_slice(&prev[..s as usize]);
        k.extend_from_slice(rest);
        if i > 0 && prev >= k {
            return Err(BadRun("a block's keys out of order".into()));
        }
        let v = match r.varint().map_err(bad)? {
            0 => None,
            n => {
                let n = n - 1;
                if n > (block.len() - r.pos) as u64 {
                    return Err(BadRun("a value runs past the block's end".into()));
                }
                Some(r.take(n as usize).map_err(bad)?)
            }
        };
        if keep(&k) {
            out.push((k.clone(), v.map(<[u8]>::to_vec)));
        }
        std::mem::swap(&mut prev, &mut k);
    }
    if r.pos != block.len() {
        return Err(BadRun("bytes after a block's last item".into()));
    }
    Ok(out)
}

/// The object store key of run `number`'s block whose first key is `first`: the
/// number (u64 BE) then the key, so that a run's blocks sort together, in order.
pub fn block_key(number: u64, first: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(8 + first.len());
    k.extend_from_slice(&number.to_be_bytes());
    k.extend_from_slice(first);
    k
}

/// A block key's run number and first key.
pub fn split_block_key(k: &[u8]) -> Option<(u64, &[u8])> {
    let (n, first) = k.split_first_chunk::<8>()?;
    Some((u64::from_be_bytes(*n), first))
}

// ----- runs -----

/// A run as the store knows it without reading it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Run {
    /// Names its blocks (`block_key`) and its record; never reused.
    pub number: u64,
    /// Newer runs have higher ages; a merge's run takes its newest input's age.
    pub age: u64,
    /// Its items (tombstones included) and their bytes in its blocks.
    pub items: u64,
    pub bytes: u64,
    /// Its blocks' first keys, ascending; at least one.
    pub firsts: Vec<Vec<u8>>,
    /// Its last key.
    pub last: Vec<u8>,
    /// Per block, its items that are not tombstones (what a count of keys wholly inside
    /// a block's bounds needs, without reading it); `None` for a run whose record was
    /// written before they were kept (format 1).
    pub lives: Option<Vec<u64>>,
}

/// A record to put: (object store key, value).
pub type Record = (Vec<u8>, Vec<u8>);
/// Records to put.
pub type Records = Vec<Record>;

/// A run built from sorted items, and its blocks (`None` for no items).
pub fn build(number: u64, age: u64, items: &[Item]) -> Option<(Run, Records)> {
    let mut b = Builder::new(number, age);
    let mut blocks: Records = Vec::new();
    for item in items {
        blocks.extend(b.push(item.clone()));
    }
    let (run, last) = b.finish()?;
    blocks.push(last);
    Some((run, blocks))
}

/// A run written as its items come, in key order: each block is given as soon as it is
/// full, so that a run larger than memory (a merge, a conversion) is written in parts.
pub struct Builder {
    number: u64,
    age: u64,
    items: u64,
    bytes: u64,
    firsts: Vec<Vec<u8>>,
    lives: Vec<u64>,
    /// The block being filled, and its bytes.
    block: Vec<Item>,
    size: usize,
}

impl Builder {
    pub fn new(number: u64, age: u64) -> Builder {
        Builder {
            number,
            age,
            items: 0,
            bytes: 0,
            firsts: Vec::new(),
            lives: Vec::new(),
            block: Vec::new(),
            size: 0,
        }
    }

    /// Adds the next item (its key after every key added before); gives the block it
    /// closed, if it did not fit there (object store key, bytes). Greedy: a block holds
    /// what fits in [`BLOCK_BYTES`], and at least one item; and a block holds keys of
    /// one space (their first byte) only, so that a read of a small space (the
    /// replica's own, read at every open) reads its blocks alone, not its neighbours'.
    pub fn push(&mut self, item: Item) -> Option<Record> {
        let prev = self.block.last().map(|e| e.0.as_slice());
        debug_assert!(prev.is_none_or(|p| p < item.0.as_slice()));
        let n = item_size(prev, &item);
        let other_space = self
            .block
            .first()
            .is_some_and(|f| f.0.first() != item.0.first());
        let closed = if !self.block.is_empty() && (self.size + n > BLOCK_BYTES || other_space) {
            let b = self.close();
            self.size = item_size(None, &item);
            Some(b)
        } else {
            self.size += n;
            None
        };
        self.items += 1;
        self.block.push(item);
        closed
    }

    fn close(&mut self) -> Record {
        let block = std::mem::take(&mut self.block);
        let bytes = encode_block(&block);
        self.bytes += bytes.len() as u64;
        let first = block[0].0.clone();
        let key = block_key(self.number, &first);
        self.firsts.push(first);
        self.lives
            .push(block.iter().filter(|e| e.1.is_some()).count() as u64);
        self.size = 0;
        (key, bytes)
    }

    /// The run, and its last block; `None` when no item was added.
    pub fn finish(mut self) -> Option<(Run, Record)> {
        let last = self.block.last()?.0.clone();
        let block = self.close();
        let run = Run {
            number: self.number,
            age: self.age,
            items: self.items,
            bytes: self.bytes,
            firsts: self.firsts,
            last,
            lives: Some(self.lives),
        };
        Some((run, block))
    }
}

impl Run {
    /// Its record's key in `meta`.
    pub fn meta_key(&self) -> Vec<u8> {
        meta_key(self.number)
    }

    /// Its record in `meta` (docs/STORAGE.md, "Runs"): [`RECORD_FORMAT`] · varint age ·
    /// varint items · varint bytes · varint length · last key · varint blocks · `00`, or
    /// `01` and per block varint live items (a run converted from format 1 has none) ·
    /// its blocks' first keys, as a block ([`encode_block`]) of tombstones.
    pub fn meta_value(&self) -> Vec<u8> {
        let mut out = self.record_head(RECORD_FORMAT);
        write_varint(&mut out, self.firsts.len() as u64);
        out.push(u8::from(self.lives.is_some()));
        for n in self.lives.iter().flatten() {
            write_varint(&mut out, *n);
        }
        let keys: Vec<Item> = self.firsts.iter().map(|f| (f.clone(), None)).collect();
        out.extend_from_slice(&encode_block(&keys));
        out
    }

    /// Its record as the versions before 7 wrote it (for tests of their upgrades):
    /// format 1 (versions 4 and 5), the head alone, when it has no live items; else
    /// format 2 (version 6), then varint blocks · per block, varint live items.
    pub fn meta_value_before_7(&self) -> Vec<u8> {
        let Some(lives) = &self.lives else {
            return self.record_head(1);
        };
        let mut out = self.record_head(2);
        write_varint(&mut out, lives.len() as u64);
        for n in lives {
            write_varint(&mut out, *n);
        }
        out
    }

    /// A record's head in every format: `format` · varint age · varint items · varint
    /// bytes · varint length · last key.
    fn record_head(&self, format: u8) -> Vec<u8> {
        let mut out = vec![format];
        write_varint(&mut out, self.age);
        write_varint(&mut out, self.items);
        write_varint(&mut out, self.bytes);
        write_varint(&mut out, self.last.len() as u64);
        out.extend_from_slice(&self.last);
        out
    }

    /// The keys block `j` may hold: from its first key to the next block's first (to
    /// the end of its space, when the next block is of another; to the run's last key,
    /// included, for the last block).
    pub fn block_bounds(&self, j: usize) -> KeyRange {
        let first = &self.firsts[j];
        let end = match self.firsts.get(j + 1) {
            None => Bound::Included(self.last.clone()),
            Some(next) => match space(first) {
                Some(b) if space(next) != Some(b) && b < u8::MAX => Bound::Excluded(vec![b + 1]),
                _ => Bound::Excluded(next.clone()),
            },
        };
        KeyRange {
            start: Bound::Included(first.clone()),
            end,
        }
    }

    /// The blocks of `blocks` (as [`Run::covering`] gives them for `r`) every key of
    /// which is in `r`: a range of them (empty when none is).
    fn inside(&self, r: &KeyRange, blocks: &Range<usize>) -> Range<usize> {
        // The blocks between the first and the last are: each starts after the
        // range's start (in the first block, or before it) and ends at the latest where
        // the last starts (in the range).
        let within = |j: usize| range_inside(&self.block_bounds(j), r);
        if blocks.is_empty() {
            return blocks.clone();
        }
        let from = blocks.start + usize::from(!within(blocks.start));
        let to = blocks.end - usize::from(!within(blocks.end - 1));
        from..to.max(from)
    }

    /// The block that would hold `k`, if any could.
    pub fn block_of(&self, k: &[u8]) -> Option<usize> {
        if k < self.firsts[0].as_slice() || k > self.last.as_slice() {
            return None;
        }
        Some(self.firsts.partition_point(|f| f.as_slice() <= k) - 1)
    }

    /// The blocks that may hold keys of `r`: `None` when `r` is wholly before or after
    /// the run's keys; an empty range (at the block after it) when `r` falls between
    /// two blocks of different spaces, where the run has no key.
    pub fn covering(&self, r: &KeyRange) -> Option<Range<usize>> {
        let first = self.firsts[0].as_slice();
        let last = self.last.as_slice();
        let below = match &r.end {
            Bound::Included(e) => e.as_slice() < first,
            Bound::Excluded(e) => e.as_slice() <= first,
            Bound::Unbounded => false,
        };
        let above = match &r.start {
            Bound::Included(s) => s.as_slice() > last,
            Bound::Excluded(s) => s.as_slice() >= last,
            Bound::Unbounded => false,
        };
        if r.is_empty() || below || above {
            return None;
        }
        let from = match &r.start {
            Bound::Included(s) | Bound::Excluded(s) => {
                let j = self.firsts.partition_point(|f| f <= s).saturating_sub(1);
                // A block holds one space: one of a lower space than `s` holds no key
                // from `s` on.
                if space(&self.firsts[j]) < space(s) {
                    j + 1
                } else {
                    j
                }
            }
            Bound::Unbounded => 0,
        };
        let to = match &r.end {
            Bound::Included(e) => self.firsts.partition_point(|f| f <= e),
            Bound::Excluded(e) => self.firsts.partition_point(|f| f < e),
            Bound::Unbounded => self.firsts.len(),
        };
        Some(from..to.max(from))
    }

    /// The keys whose presence in this run reading `blocks` (a range of them, as
    /// [`Run::covering`] gives it) decides: from the first block's key (from the lowest
    /// key, for the first block; from the next space's first key, after a block of a
    /// lower space) to the next block's (to the highest, for the last).
    fn decided_by(&self, blocks: &Range<usize>) -> KeyRange {
        let i = blocks.start;
        let start = if i == 0 {
            Bound::Unbounded
        } else {
            match (space(&self.firsts[i - 1]), self.firsts.get(i)) {
                (prev, Some(f)) if prev < space(f) => {
                    // The block before holds only keys of its own space.
                    Bound::Included(prev.map_or(vec![0], |a| vec![a + 1]))
                }
                (_, Some(f)) => Bound::Included(f.clone()),
                (_, None) => Bound::Excluded(self.last.clone()),
            }
        };
        KeyRange {
            start,
            end: match self.firsts.get(blocks.end) {
                Some(k) => Bound::Excluded(k.clone()),
                None => Bound::Unbounded,
            },
        }
    }
}

/// Sorts runs by `key` (one sort's code for every key: the wasm stays smaller).
fn sort_runs(runs: &mut [Run], key: fn(&Run) -> u64) {
    runs.sort_unstable_by_key(key);
}

/// A key's space: its first byte (`None` for the empty key, below every other).
fn space(k: &[u8]) -> Option<u8> {
    k.first().copied()
}

/// Whether every key of `a` (a block's bounds: an included start) is in `r`.
fn range_inside(a: &KeyRange, r: &KeyRange) -> bool {
    let start = bound_key(&a.start);
    let start_in = match &r.start {
        Bound::Included(s) => s.as_slice() <= start,
        Bound::Excluded(s) => s.as_slice() < start,
        Bound::Unbounded => true,
    };
    let end_in = match (&a.end, &r.end) {
        (_, Bound::Unbounded) => true,
        (Bound::Unbounded, _) => false,
        (Bound::Included(x), Bound::Included(e)) => x <= e,
        (Bound::Included(x), Bound::Excluded(e)) => x < e,
        (Bound::Excluded(x), Bound::Excluded(e)) => x <= e,
        // Every key below `x` is at most `e` when `x` is at most the key right after
        // `e` (`e` · 00).
        (Bound::Excluded(x), Bound::Included(e)) => {
            x.as_slice() <= e.as_slice()
                || (x.len() == e.len() + 1 && x.starts_with(e) && x[e.len()] == 0)
        }
    };
    start_in && end_in
}

/// Run `number`'s record key in `meta`.
pub fn meta_key(number: u64) -> Vec<u8> {
    let mut k = META_PREFIX.to_vec();
    k.extend_from_slice(&number.to_be_bytes());
    k
}

/// Run `number`'s mark in `meta` while it is being written (see [`WRITING_PREFIX`]).
pub fn writing_key(number: u64) -> Vec<u8> {
    let mut k = WRITING_PREFIX.to_vec();
    k.extend_from_slice(&number.to_be_bytes());
    k
}

/// Whether a record to put goes to `meta` (a run's record or mark), not to the blocks.
pub fn in_meta(k: &[u8]) -> bool {
    k.starts_with(META_PREFIX) || k.starts_with(WRITING_PREFIX)
}

/// The intersection of two ranges (either may be unbounded).
fn meet(a: KeyRange, b: KeyRange) -> KeyRange {
    let start = match (a.start, b.start) {
        (Bound::Unbounded, s) | (s, Bound::Unbounded) => s,
        (x, y) => {
            let kx = bound_key(&x);
            let ky = bound_key(&y);
            // The later start; at an equal key, the excluding one.
            if kx > ky || (kx == ky && matches!(x, Bound::Excluded(_))) {
                x
            } else {
                y
            }
        }
    };
    let end = match (a.end, b.end) {
        (Bound::Unbounded, e) | (e, Bound::Unbounded) => e,
        (x, y) => {
            let kx = bound_key(&x);
            let ky = bound_key(&y);
            if kx < ky || (kx == ky && matches!(x, Bound::Excluded(_))) {
                x
            } else {
                y
            }
        }
    };
    KeyRange { start, end }
}

/// How many of a part's first items [`first_of`] needs for a forward scan of `n`: it
/// cuts a part with more than `n` at its `n`-th, so a part read no further than this
/// many gives the same answer (a read can stop decoding a run there).
pub fn first_needs(n: usize) -> usize {
    n.max(1) + 1
}

/// What a scan limited to its first `n` keys (the last, `reverse`) takes of what it
/// read: `parts` are the runs' items inside `known`, each in order. A run with more
/// than `n` of them holds `n` up to its `n`-th key: past the nearest such key no more is
/// needed, so every part is cut there and the range decided ends there (it still holds
/// every item of every part up to it). Gives the range decided.
pub fn first_of(parts: &mut [Vec<Item>], known: KeyRange, reverse: bool, n: usize) -> KeyRange {
    let n = n.max(1);
    let cuts = parts.iter().filter(|p| p.len() > n).map(|p| {
        if reverse {
            &p[p.len() - n].0
        } else {
            &p[n - 1].0
        }
    });
    let cut = if reverse { cuts.max() } else { cuts.min() };
    let Some(cut) = cut.cloned() else {
        return known;
    };
    for p in parts.iter_mut() {
        p.retain(|(k, _)| if reverse { *k >= cut } else { *k <= cut });
    }
    // Forward, it ends before the key right after the cut (as a scan going on from
    // there starts).
    let side = if reverse {
        KeyRange {
            start: Bound::Included(cut),
            end: Bound::Unbounded,
        }
    } else {
        KeyRange {
            start: Bound::Unbounded,
            end: Bound::Excluded([cut.as_slice(), &[0]].concat()),
        }
    };
    meet(known, side)
}

fn bound_key(b: &Bound<Vec<u8>>) -> &[u8] {
    match b {
        Bound::Included(k) | Bound::Excluded(k) => k,
        Bound::Unbounded => &[],
    }
}

/// A run's record (`k`, `v`; see [`Run::meta_value`] and
/// [`Run::meta_value_before_7`]) and its format; the first
/// keys are empty for formats 1 and 2, which do not list them. Nothing is allocated for
/// a count the bytes cannot hold.
fn parse_record(k: &[u8], v: &[u8]) -> Result<(Run, u8), BadRun> {
    let number = k
        .strip_prefix(META_PREFIX)
        .and_then(|n| n.try_into().ok())
        .map(u64::from_be_bytes)
        .ok_or_else(|| BadRun("a run record's key".into()))?;
    let mut r = Reader::new(v);
    let format = r.byte().map_err(bad)?;
    if !(1..=RECORD_FORMAT).contains(&format) {
        return Err(BadRun("a run's record of an unknown format".into()));
    }
    let age = r.varint().map_err(bad)?;
    let items = r.varint().map_err(bad)?;
    let bytes = r.varint().map_err(bad)?;
    let n = r.len().map_err(bad)?;
    let last = r.take(n).map_err(bad)?.to_vec();
    let mut firsts: Vec<Vec<u8>> = Vec::new();
    let mut lives = None;
    if format >= 2 {
        // Each block's count takes at least a byte.
        let blocks = r.len().map_err(bad)?;
        if format == 2 || r.byte().map_err(bad)? == 1 {
            let mut l = Vec::with_capacity(blocks);
            for _ in 0..blocks {
                l.push(r.varint().map_err(bad)?);
            }
            lives = Some(l);
        }
        if format == 3 {
            // The rest: the first keys, as a block of tombstones.
            let keys = decode_block(&v[r.pos..])?;
            if keys.len() != blocks {
                return Err(BadRun(
                    "a run's record names other blocks than it counts".into(),
                ));
            }
            firsts = keys.into_iter().map(|(k, _)| k).collect();
            r.pos = v.len();
        }
    }
    if r.pos != v.len() {
        return Err(BadRun("bytes after a run's record".into()));
    }
    let run = Run {
        number,
        age,
        items,
        bytes,
        firsts,
        last,
        lives,
    };
    Ok((run, format))
}

/// Every run of a store, oldest first.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Runs {
    runs: Vec<Run>,
    next_number: u64,
}

impl Runs {
    /// No run (a new database).
    pub fn new() -> Runs {
        Runs::default()
    }

    /// The runs named by their records in `meta` (key, value), and the numbers of runs
    /// to delete (never given to a new run):
    /// - at open (`block_keys` none): records of [`RECORD_FORMAT`], each naming its
    ///   blocks' first keys, and `marks`, the keys of the marks of runs being written
    ///   ([`WRITING_PREFIX`]): the runs marked are to be deleted (a merge cut short: its
    ///   blocks and its mark). No block's key is read;
    /// - in an upgrade from a version before 7 (`block_keys`: the key of every block
    ///   stored): records of any format, each run's first keys its blocks' (not the
    ///   record's own, if it has them); the runs whose blocks are stored with no record
    ///   are to be deleted.
    pub fn open(
        records: Vec<(Vec<u8>, Vec<u8>)>,
        marks: Vec<Vec<u8>>,
        block_keys: Option<Vec<Vec<u8>>>,
    ) -> Result<(Runs, Vec<u64>), BadRun> {
        let mut runs: Vec<Run> = Vec::with_capacity(records.len());
        for (k, v) in records {
            let (mut run, format) = parse_record(&k, &v)?;
            if block_keys.is_some() {
                run.firsts.clear();
            } else if format != RECORD_FORMAT {
                return Err(BadRun(
                    "a run's record that does not name its blocks".into(),
                ));
            }
            runs.push(run);
        }
        // In number order, as their keys sort (and the blocks' keys).
        if runs.windows(2).any(|w| w[0].number >= w[1].number) {
            return Err(BadRun("run records out of order".into()));
        }
        let mut gone = Vec::with_capacity(marks.len());
        for k in marks {
            gone.push(
                k.strip_prefix(WRITING_PREFIX)
                    .and_then(|n| n.try_into().ok())
                    .map(u64::from_be_bytes)
                    .ok_or_else(|| BadRun("a written run's mark".into()))?,
            );
        }
        for k in block_keys.into_iter().flatten() {
            let (n, first) = split_block_key(&k).ok_or_else(|| BadRun("a block's key".into()))?;
            match runs.binary_search_by_key(&n, |r| r.number) {
                Ok(i) => {
                    let run = &mut runs[i];
                    if run.firsts.last().is_some_and(|f| f.as_slice() >= first) {
                        return Err(BadRun("a run's block keys out of order".into()));
                    }
                    run.firsts.push(first.to_vec());
                }
                Err(_) if gone.last() != Some(&n) => gone.push(n),
                Err(_) => {}
            }
        }
        let next_number = runs
            .iter()
            .map(|r| r.number + 1)
            .chain(gone.iter().map(|n| n + 1))
            .max()
            .unwrap_or(0);
        for r in &runs {
            if r.firsts.is_empty() || r.last < r.firsts[r.firsts.len() - 1] {
                return Err(BadRun("a run's blocks are missing".into()));
            }
            if r.lives.as_ref().is_some_and(|l| l.len() != r.firsts.len()) {
                return Err(BadRun(
                    "a run's record counts other blocks than it has".into(),
                ));
            }
        }
        sort_runs(&mut runs, |r| r.age);
        if runs.windows(2).any(|w| w[0].age == w[1].age) {
            return Err(BadRun("two runs of one age".into()));
        }
        Ok((Runs { runs, next_number }, gone))
    }

    /// The runs, oldest first.
    pub fn runs(&self) -> &[Run] {
        &self.runs
    }

    /// A number for a new run (never one used before, in this session or stored).
    pub fn take_number(&mut self) -> u64 {
        let n = self.next_number;
        self.next_number += 1;
        n
    }

    /// The age for a new run: newer than every run.
    pub fn next_age(&self) -> u64 {
        self.runs.last().map_or(0, |r| r.age + 1)
    }

    /// Adds a run newer than every other.
    pub fn push(&mut self, run: Run) {
        debug_assert!(self.runs.last().is_none_or(|r| r.age < run.age));
        self.next_number = self.next_number.max(run.number + 1);
        self.runs.push(run);
    }

    /// For each run whose keys reach `r`, its index and the blocks to read (none, when
    /// `r` falls between two of its blocks of different spaces).
    pub fn covering(&self, r: &KeyRange) -> Vec<(usize, Range<usize>)> {
        self.runs
            .iter()
            .enumerate()
            .filter_map(|(i, run)| run.covering(r).map(|b| (i, b)))
            .collect()
    }

    /// [`Runs::covering`], cut to about `n` blocks in all from the start of `r` (from its
    /// end when `reverse`), for a scan that wants its first entries: the blocks of every
    /// run in the order of the keys they start at (end at, `reverse`), the first `n` of
    /// them, and every block that may hold the range's first key (without which no key
    /// is decided). Each run's are its first blocks (last, `reverse`) in the range, as
    /// [`Runs::known`] takes them. Not `n` of each run: runs that each hold a stretch of
    /// keys of their own (an import's, written in order) would have the first `n` blocks
    /// of every one read, for the keys of the nearest.
    pub fn first_blocks(
        &self,
        r: &KeyRange,
        reverse: bool,
        n: usize,
    ) -> Vec<(usize, Range<usize>)> {
        let n = n.max(1);
        let covering = self.covering(r);
        // The key where the `t`-th block of `covering[p]` (from the end read) begins to
        // matter, `None` when it may hold the range's first key: a block's keys are
        // from its first to the next block's first (to the run's last).
        let at = |p: usize, t: usize| -> Option<&[u8]> {
            let (i, b) = &covering[p];
            let run = &self.runs[*i];
            if reverse {
                let j = b.end - 1 - t;
                let upper = run.firsts.get(j + 1).unwrap_or(&run.last);
                match &r.end {
                    Bound::Included(e) | Bound::Excluded(e) if upper >= e => None,
                    _ => Some(upper.as_slice()),
                }
            } else {
                let first = run.firsts[b.start + t].as_slice();
                match &r.start {
                    Bound::Included(s) | Bound::Excluded(s) if first <= s.as_slice() => None,
                    _ => Some(first),
                }
            }
        };
        // Every block that may hold the first key; then, one at a time, the next block
        // of the run whose next block begins first (no sort: a few runs, n small).
        let mut taken: Vec<usize> = covering
            .iter()
            .enumerate()
            .map(|(p, (_, b))| (0..b.len()).take_while(|t| at(p, *t).is_none()).count())
            .collect();
        let mut total: usize = taken.iter().sum();
        while total < n {
            let mut next: Option<(usize, &[u8])> = None;
            for (p, (_, b)) in covering.iter().enumerate() {
                if taken[p] >= b.len() {
                    continue;
                }
                let Some(k) = at(p, taken[p]) else { continue };
                let sooner = next.is_none_or(|(_, best)| if reverse { k > best } else { k < best });
                if sooner {
                    next = Some((p, k));
                }
            }
            let Some((p, _)) = next else { break };
            taken[p] += 1;
            total += 1;
        }
        covering
            .iter()
            .zip(taken)
            .map(|((i, b), t)| {
                let b = if reverse {
                    b.end - t..b.end
                } else {
                    b.start..b.start + t
                };
                (*i, b)
            })
            .collect()
    }

    /// Over which keys reading `reads` (as [`Runs::covering`] or [`Runs::first_blocks`]
    /// gave them for `r`) decides everything: for each run read, the keys its blocks
    /// read settle; for each run not read, the side of it `r` lies on (it holds no key
    /// below its first or above its last). Holds `r` when `reads` cover it.
    pub fn known(&self, r: &KeyRange, reads: &[(usize, Range<usize>)]) -> KeyRange {
        if r.is_empty() {
            return r.clone();
        }
        let mut known = KeyRange::all();
        for (i, run) in self.runs.iter().enumerate() {
            let part = match reads.iter().find(|(j, _)| *j == i) {
                Some((_, blocks)) => run.decided_by(blocks),
                None => {
                    let first = &run.firsts[0];
                    let below = match &r.end {
                        Bound::Included(e) => e < first,
                        Bound::Excluded(e) => e <= first,
                        Bound::Unbounded => false,
                    };
                    if below {
                        KeyRange {
                            start: Bound::Unbounded,
                            end: Bound::Excluded(first.clone()),
                        }
                    } else {
                        KeyRange {
                            start: Bound::Excluded(run.last.clone()),
                            end: Bound::Unbounded,
                        }
                    }
                }
            };
            known = meet(known, part);
        }
        known
    }

    /// A count of the keys in `r` that reads few blocks, or `None` when no run can be
    /// counted from its record. A block wholly inside `r` of a run whose record lists
    /// its blocks' live items (and that `eligible` allows: one whose write is settled)
    /// is counted from the record, not read, when no block of another run counted so
    /// may hold a key where it may: first every such block of the run with the most of
    /// them, then those of the others, in order. Every other block that may hold keys
    /// of `r` is read (first, see [`CountPlan::reads`]), and a block counted where a
    /// key of `touched` (written and not in a run yet) falls. The keys the blocks read
    /// hold then name the blocks counted that are to be read as well
    /// ([`CountPlan::more`]): a key of `r` in a block not read is then in no other run
    /// (no block counted of another run meets it, and every block read was looked
    /// into), so the block's live items are what it counts.
    pub fn count_plan(
        &self,
        r: &KeyRange,
        touched: &[&[u8]],
        eligible: impl Fn(&Run) -> bool,
    ) -> Option<CountPlan> {
        let covering = self.covering(r);
        let counted = |i: usize| self.runs[i].lives.is_some() && eligible(&self.runs[i]);
        let inside: Vec<Range<usize>> = covering
            .iter()
            .map(|(i, b)| {
                if counted(*i) {
                    self.runs[*i].inside(r, b)
                } else {
                    b.end..b.end
                }
            })
            .collect();
        let first =
            (0..covering.len()).max_by_key(|p| (inside[*p].len(), std::cmp::Reverse(*p)))?;
        if inside[first].is_empty() {
            return None;
        }
        let mut plan = CountPlan {
            runs: covering
                .iter()
                .map(|(i, b)| (*i, b.clone(), vec![false; b.len()]))
                .collect(),
        };
        for p in std::iter::once(first).chain((0..covering.len()).filter(|p| *p != first)) {
            let (i, blocks) = &covering[p];
            for j in inside[p].clone() {
                let bounds = self.runs[*i].block_bounds(j);
                let clash = plan.runs.iter().any(|(k, kb, skip)| {
                    *k != *i
                        && self.runs[*k]
                            .covering(&bounds)
                            .is_some_and(|mut c| c.any(|x| kb.contains(&x) && skip[x - kb.start]))
                });
                plan.runs[p].2[j - blocks.start] = !clash;
            }
        }
        plan.more(self, r, touched.iter().copied());
        Some(plan)
    }

    /// The runs to merge next, `None` when none are to be:
    ///
    /// - [`FANOUT`] neighbours of about one size (the largest under [`FANOUT`] times the
    ///   smallest, runs under a block counting as a block), the newest such. Runs
    ///   written one after another are of about one size, and [`FANOUT`] merged make one
    ///   that is not of a size with the next ones until [`FANOUT`] of those are made: so
    ///   an entry is written again about once per factor of [`FANOUT`] the store grew by
    ///   since, and there are about `FANOUT - 1` runs of each size at most.
    /// - Past [`MAX_RUNS`] runs (sizes too uneven for that), the [`FANOUT`] neighbours
    ///   of the fewest bytes, so that a read never looks in more than [`MAX_RUNS`].
    ///
    /// Only neighbours: the newest run holding a key wins, so a merge keeps its runs'
    /// order among the others. And only among the `settled` oldest runs: the newer ones
    /// are being written (a write that fails takes its run out), and merges go on while
    /// they are, or a store that is written without a pause (an import) would never
    /// merge.
    pub fn plan(&self, settled: usize) -> Option<Range<usize>> {
        let runs = &self.runs[..settled.min(self.runs.len())];
        if runs.len() < FANOUT {
            return None;
        }
        let size = |r: &Run| r.bytes.max(BLOCK_BYTES as u64);
        let windows = (0..=runs.len() - FANOUT).rev().map(|i| i..i + FANOUT);
        let even = windows.clone().find(|w| {
            let sizes = runs[w.clone()].iter().map(size);
            let (lo, hi) = sizes.fold((u64::MAX, 0), |(lo, hi), b| (lo.min(b), hi.max(b)));
            hi < lo.saturating_mul(FANOUT as u64)
        });
        if even.is_some() || self.runs.len() <= MAX_RUNS {
            return even;
        }
        windows.min_by_key(|w| runs[w.clone()].iter().map(|r| r.bytes).sum::<u64>())
    }

    /// Takes out the run `number` (its write failed: its items are still to be
    /// written). Gives whether it was there.
    pub fn remove(&mut self, number: u64) -> bool {
        let before = self.runs.len();
        self.runs.retain(|r| r.number != number);
        self.runs.len() < before
    }

    /// Puts back the runs a merge replaced, and takes out its own (`output`), when the
    /// transaction that was to make the merge's run count failed.
    pub fn restore(&mut self, output: Option<u64>, replaced: Vec<Run>) {
        if let Some(n) = output {
            self.remove(n);
        }
        self.runs.extend(replaced);
        sort_runs(&mut self.runs, |r| r.age);
    }

    /// Replaces the runs `inputs` by what merging them made (`None`: nothing was left,
    /// every item a tombstone merged into the oldest run). Gives the runs replaced.
    pub fn replace(&mut self, inputs: Range<usize>, output: Option<Run>) -> Vec<Run> {
        let age = self.runs[inputs.end - 1].age;
        let out: Vec<Run> = output
            .map(|mut r| {
                r.age = age;
                self.next_number = self.next_number.max(r.number + 1);
                r
            })
            .into_iter()
            .collect();
        self.runs.splice(inputs, out).collect()
    }
}

/// How a count of a range is read (see [`Runs::count_plan`]).
pub struct CountPlan {
    /// Per run that may hold keys of the range (its index), the blocks that may, and
    /// for each, whether it is counted from the run's record rather than read.
    runs: Vec<(usize, Range<usize>, Vec<bool>)>,
}

impl CountPlan {
    /// The blocks to read, per run, in order (a run may be named more than once).
    pub fn reads(&self) -> Vec<(usize, Range<usize>)> {
        let mut out = Vec::with_capacity(self.runs.len());
        for (i, blocks, skip) in &self.runs {
            out.extend(group(*i, blocks.start, skip.iter().map(|s| !s)));
        }
        out
    }

    /// Marks the blocks counted from a record that may hold one of `keys` (those of the
    /// range) to be read; gives those, for reading now.
    pub fn more<'a>(
        &mut self,
        runs: &Runs,
        r: &KeyRange,
        keys: impl IntoIterator<Item = &'a [u8]>,
    ) -> Vec<(usize, Range<usize>)> {
        let before: Vec<Vec<bool>> = self.runs.iter().map(|(_, _, s)| s.clone()).collect();
        for k in keys {
            if !r.contains(k) {
                continue;
            }
            for (i, blocks, skip) in &mut self.runs {
                if let Some(j) = runs.runs[*i].block_of(k).filter(|j| blocks.contains(j)) {
                    skip[j - blocks.start] = false;
                }
            }
        }
        let mut out = Vec::new();
        for ((i, blocks, skip), was) in self.runs.iter().zip(&before) {
            let fresh = skip.iter().zip(was).map(|(now, was)| *was && !*now);
            out.extend(group(*i, blocks.start, fresh));
        }
        out
    }

    /// The live items of the blocks not read, and where those blocks may hold keys
    /// (their bounds, neighbours of a run joined).
    pub fn unread(&self, runs: &Runs) -> (u64, Vec<KeyRange>) {
        let mut n = 0u64;
        let mut spans: Vec<KeyRange> = Vec::new();
        for (i, blocks, skip) in &self.runs {
            let run = &runs.runs[*i];
            let Some(lives) = &run.lives else { continue };
            let mut last: Option<usize> = None;
            for (at, skipped) in skip.iter().enumerate() {
                if !skipped {
                    continue;
                }
                let j = blocks.start + at;
                n = n.saturating_add(lives[j]);
                let bounds = run.block_bounds(j);
                match spans.last_mut() {
                    Some(s) if last.is_some_and(|l| l + 1 == j) => s.end = bounds.end,
                    _ => spans.push(bounds),
                }
                last = Some(j);
            }
        }
        (n, spans)
    }
}

/// Run `i`'s blocks from `start` on that `marks` (one per block) names, neighbours
/// joined.
fn group(i: usize, start: usize, marks: impl Iterator<Item = bool>) -> Vec<(usize, Range<usize>)> {
    let mut out: Vec<(usize, Range<usize>)> = Vec::new();
    for (at, marked) in marks.enumerate() {
        if !marked {
            continue;
        }
        let j = start + at;
        match out.last_mut() {
            Some((_, b)) if b.end == j => b.end = j + 1,
            _ => out.push((i, j..j + 1)),
        }
    }
    out
}

/// A merge of runs, run a block at a time: what to read next ([`Compaction::wants`]),
/// the blocks read ([`Compaction::feed`]), the new run's blocks as they fill (to write
/// in transactions of their own, under a number no record names yet), and at the end
/// ([`Compaction::finish`]) what one transaction must do to make the new run count in
/// place of its inputs. Until then the inputs are what reads use; after, the new run,
/// whose blocks are all written by then.
pub struct Compaction {
    /// The inputs, oldest first, and how many blocks of each were fed.
    inputs: Vec<Run>,
    fed: Vec<usize>,
    merger: Merger,
    builder: Builder,
    /// The new run's number.
    number: u64,
}

/// What the transaction that ends a merge writes, and what to undo if it fails.
pub struct Finished {
    /// The new run's last block and its record (none when nothing was left: every item
    /// a tombstone that reached the oldest run).
    pub puts: Records,
    /// The meta key (a record) and the block key range, [from, to), of each input.
    pub deletes: Vec<(Vec<u8>, Vec<u8>, Vec<u8>)>,
    /// The new run's mark, deleted as its record is written.
    pub unmark: Vec<u8>,
    /// The new run's number, if it has one, and the runs it replaced (for
    /// [`Runs::restore`]).
    pub output: Option<u64>,
    pub replaced: Vec<Run>,
}

impl Compaction {
    /// The merge [`Runs::plan`] says is next among the `settled` oldest runs, if any.
    pub fn start(runs: &mut Runs, settled: usize) -> Option<Compaction> {
        let range = runs.plan(settled)?;
        let keep = range.start > 0;
        let inputs: Vec<Run> = runs.runs()[range].to_vec();
        let number = runs.take_number();
        Some(Compaction {
            fed: vec![0; inputs.len()],
            merger: Merger::new(inputs.len(), keep),
            builder: Builder::new(number, 0),
            inputs,
            number,
        })
    }

    /// The new run's number (its blocks' keys start with it).
    pub fn number(&self) -> u64 {
        self.number
    }

    /// The keys of the blocks to read next: up to `n` of each input that must be fed
    /// before more can be merged.
    pub fn wants(&self, n: usize) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        for i in self.merger.needs() {
            let run = &self.inputs[i];
            let to = self.fed[i].saturating_add(n.max(1)).min(run.firsts.len());
            for f in &run.firsts[self.fed[i]..to] {
                out.push(block_key(run.number, f));
            }
        }
        out
    }

    /// A block read (each input's in order, as [`Compaction::wants`] named them); gives
    /// the new run's blocks that filled, and with them its mark (see
    /// [`WRITING_PREFIX`]; [`in_meta`] says which record goes where).
    pub fn feed(&mut self, key: &[u8], block: &[u8]) -> Result<Records, BadRun> {
        let (n, first) = split_block_key(key).ok_or_else(|| BadRun("a block's key".into()))?;
        let i = self
            .inputs
            .iter()
            .position(|r| r.number == n)
            .ok_or_else(|| BadRun(format!("block of run {n}, not merged here")))?;
        let run = &self.inputs[i];
        if run.firsts.get(self.fed[i]).map(Vec::as_slice) != Some(first) {
            return Err(BadRun(format!("run {n}: a block out of turn")));
        }
        let items = decode_block(block)?;
        self.fed[i] += 1;
        let done = self.fed[i] == run.firsts.len();
        self.merger.feed(i, items, done);
        let mut out: Records = self
            .merger
            .take()
            .into_iter()
            .filter_map(|item| self.builder.push(item))
            .collect();
        if !out.is_empty() {
            // Blocks with no record yet: written with the run's mark.
            out.push((writing_key(self.number), Vec::new()));
        }
        Ok(out)
    }

    /// Whether every input is read and merged.
    pub fn is_done(&self) -> bool {
        self.merger.is_done()
    }

    /// Makes the new run count in place of its inputs in `runs` (they must still be
    /// there, neighbours, as when it started), and says what the transaction that
    /// makes it so in IndexedDB writes.
    pub fn finish(self, runs: &mut Runs) -> Result<Finished, BadRun> {
        if !self.is_done() {
            return Err(BadRun(
                "a merge finished before its inputs were read".into(),
            ));
        }
        let numbers: Vec<u64> = self.inputs.iter().map(|r| r.number).collect();
        let at = runs
            .runs()
            .iter()
            .position(|r| r.number == numbers[0])
            .filter(|&at| {
                runs.runs()[at..]
                    .iter()
                    .map(|r| r.number)
                    .take(numbers.len())
                    .eq(numbers.iter().copied())
            })
            .ok_or_else(|| BadRun("the runs merged changed meanwhile".into()))?;
        let mut puts = Records::new();
        let built = self.builder.finish();
        let output = built.as_ref().map(|(r, _)| r.number);
        let replaced = runs.replace(
            at..at + numbers.len(),
            built.map(|(run, last)| {
                puts.push(last);
                run
            }),
        );
        if let Some(run) = runs.runs().iter().find(|r| Some(r.number) == output) {
            puts.push((run.meta_key(), run.meta_value()));
        }
        let deletes = replaced
            .iter()
            .map(|r| {
                (
                    r.meta_key(),
                    block_key(r.number, &[]),
                    block_key(r.number + 1, &[]),
                )
            })
            .collect();
        Ok(Finished {
            puts,
            deletes,
            unmark: writing_key(self.number),
            output,
            replaced,
        })
    }
}

/// The parts of a read of runs, for [`merge`]: per run read (oldest first), the items
/// of its blocks read, in order. `reads` (run index, blocks) may name a run more than
/// once, in order (by run, then block); `items(run, block)` gives a block's items, or `None` when the
/// run's read counts as nothing (a block missing from a run whose write failed).
pub fn parts_of<E>(
    reads: &[(usize, Range<usize>)],
    mut items: impl FnMut(usize, usize) -> Result<Option<Vec<Item>>, E>,
) -> Result<Vec<Vec<Item>>, E> {
    debug_assert!(reads
        .windows(2)
        .all(|w| w[0].0 < w[1].0 || (w[0].0 == w[1].0 && w[0].1.end <= w[1].1.start)));
    let mut parts: Vec<Vec<Item>> = Vec::with_capacity(reads.len());
    // The run of the last part, and whether its read counts as nothing.
    let mut at: Option<(usize, bool)> = None;
    for (i, blocks) in reads {
        let i = *i;
        if at.is_none_or(|(j, _)| j != i) {
            parts.push(Vec::new());
            at = Some((i, false));
        }
        let part = parts.last_mut().expect("a part per run");
        for j in blocks.clone() {
            if at.is_some_and(|(_, nothing)| nothing) {
                break;
            }
            match items(i, j)? {
                Some(got) => part.extend(got),
                None => {
                    part.clear();
                    at = Some((i, true));
                }
            }
        }
    }
    Ok(parts)
}

/// The items of sorted runs merged, oldest first in `parts`: for each key, the newest
/// run's item. Tombstones are kept (`keep_tombstones`: a merge that does not reach the
/// oldest run, whose items they hide) or dropped (a read, or a merge into the oldest).
pub fn merge(parts: Vec<Vec<Item>>, keep_tombstones: bool) -> Vec<Item> {
    let mut m = Merger::new(parts.len(), keep_tombstones);
    for (i, p) in parts.into_iter().enumerate() {
        m.feed(i, p, true);
    }
    m.take()
}

/// A merge of runs read a part at a time (a block or a few of each): what is fed is
/// merged as far as every part has been read, so a merge of runs larger than memory
/// holds about a block of each.
pub struct Merger {
    /// Per part, oldest first: the items fed and not merged yet, whether it is all fed,
    /// and the last key fed.
    parts: Vec<(std::collections::VecDeque<Item>, bool, Option<Vec<u8>>)>,
    keep_tombstones: bool,
}

impl Merger {
    pub fn new(parts: usize, keep_tombstones: bool) -> Merger {
        Merger {
            parts: (0..parts)
                .map(|_| (std::collections::VecDeque::new(), false, None))
                .collect(),
            keep_tombstones,
        }
    }

    /// The next items of part `i` (after every item fed to it before); `done`: it has no
    /// more.
    pub fn feed(&mut self, i: usize, items: Vec<Item>, done: bool) {
        let p = &mut self.parts[i];
        if let Some(last) = items.last() {
            p.2 = Some(last.0.clone());
        }
        p.0.extend(items);
        p.1 |= done;
    }

    /// The parts to feed before more can be merged: not all fed, and nothing of them
    /// waiting.
    pub fn needs(&self) -> Vec<usize> {
        (0..self.parts.len())
            .filter(|&i| !self.parts[i].1 && self.parts[i].0.is_empty())
            .collect()
    }

    /// Whether every part is fed and merged.
    pub fn is_done(&self) -> bool {
        self.parts.iter().all(|p| p.1 && p.0.is_empty())
    }

    /// Every item that can be merged now: those up to the least of the parts' last keys
    /// fed (of the parts not all fed), in order.
    pub fn take(&mut self) -> Vec<Item> {
        // A part not all fed may still have any key after its last one fed.
        let mut bound: Option<&[u8]> = None;
        for p in &self.parts {
            if p.1 {
                continue;
            }
            let Some(last) = &p.2 else { return Vec::new() };
            bound = Some(match bound {
                Some(b) if b <= last.as_slice() => b,
                _ => last,
            });
        }
        let bound = bound.map(<[u8]>::to_vec);
        let mut out = Vec::new();
        loop {
            // The smallest key among the heads; at an equal key, the newest part's.
            let mut best: Option<usize> = None;
            for (i, p) in self.parts.iter().enumerate() {
                let Some(h) = p.0.front() else { continue };
                if best.is_none_or(|b| self.parts[b].0.front().is_some_and(|bh| h.0 <= bh.0)) {
                    best = Some(i);
                }
            }
            let Some(b) = best else { break };
            if bound
                .as_ref()
                .is_some_and(|bd| self.parts[b].0.front().is_some_and(|h| h.0 > *bd))
            {
                break;
            }
            let item = self.parts[b].0.pop_front().expect("a head");
            // The same key in the older parts: hidden.
            for p in &mut self.parts[..b] {
                if p.0.front().is_some_and(|h| h.0 == item.0) {
                    p.0.pop_front();
                }
            }
            if self.keep_tombstones || item.1.is_some() {
                out.push(item);
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::{BTreeMap, BTreeSet};

    fn put(k: &str, v: &str) -> Item {
        (k.as_bytes().to_vec(), Some(v.as_bytes().to_vec()))
    }

    fn gone(k: &str) -> Item {
        (k.as_bytes().to_vec(), None)
    }

    #[test]
    fn blocks_round_trip_with_tombstones_and_shared_prefixes() {
        let items = vec![
            put("", ""),
            put("Dtodo\0\x01a", "one"),
            gone("Dtodo\0\x01ab"),
            put("Dtodo\0\x01b", &"x".repeat(300)),
            put("P", ""),
        ];
        let b = encode_block(&items);
        assert_eq!(decode_block(&b).unwrap(), items);
        assert_eq!(
            decode_block(&encode_block(&[])).unwrap(),
            Vec::<Item>::new()
        );
        // The shared prefixes are not stored again.
        let plain: usize = items
            .iter()
            .map(|(k, v)| k.len() + v.as_ref().map_or(0, Vec::len))
            .sum();
        assert!(b.len() < plain + 2 * items.len() + 2, "{} bytes", b.len());
    }

    #[test]
    fn damaged_blocks_and_records_are_refused() {
        let good = encode_block(&[put("Dk1", "one"), gone("Dk2"), put("Dk3", "")]);
        for cut in 0..good.len() {
            assert!(decode_block(&good[..cut]).is_err(), "cut at {cut}");
        }
        let mut longer = good.clone();
        longer.push(0);
        assert!(decode_block(&longer).is_err());
        let mut other = good.clone();
        other[0] = 2;
        assert!(decode_block(&other).is_err());
        // Out of order, equal, and a shared prefix longer than the key before.
        assert!(decode_block(&encode_block(&[put("b", ""), put("a", "")])).is_err());
        assert!(decode_block(&encode_block(&[put("a", ""), gone("a")])).is_err());
        assert!(decode_block(&[1, 2, 0, 1, b'a', 0, 5, 0, 0]).is_err());
        // A count or a length past the end allocates nothing.
        assert!(decode_block(&[1, 0xff, 0xff, 0xff, 0xff, 0x0f]).is_err());
        assert!(decode_block(&[1, 1, 0, 0xff, 0xff, 0xff, 0xff, 0x0f]).is_err());
        assert!(decode_block(&[1, 1, 0, 1, b'a', 0xff, 0xff, 0xff, 0xff, 0x0f]).is_err());
        // A run's record, in each format.
        let big = vec![b'v'; BLOCK_BYTES];
        let items: Vec<Item> = ["a", "ab", "b", "ba"]
            .iter()
            .map(|k| (k.as_bytes().to_vec(), Some(big.clone())))
            .chain([(b"c".to_vec(), None)])
            .collect();
        let (run, blocks) = build(7, 3, &items).unwrap();
        assert_eq!(run.firsts.len(), 5);
        let keys: Vec<Vec<u8>> = blocks.iter().map(|(k, _)| k.clone()).collect();
        let mut old = run.clone();
        old.lives = None;
        for (format, rec) in [
            (1, old.meta_value_before_7()),
            (2, run.meta_value_before_7()),
            (3, run.meta_value()),
            (3, old.meta_value()),
        ] {
            assert_eq!(rec[0], format);
            let want = if rec == run.meta_value_before_7() || rec == run.meta_value() {
                run.clone()
            } else {
                old.clone()
            };
            for cut in 0..rec.len() {
                let r = Runs::open(
                    vec![(run.meta_key(), rec[..cut].to_vec())],
                    Vec::new(),
                    Some(keys.clone()),
                );
                assert!(r.is_err(), "format {format}, cut at {cut}");
            }
            let mut longer = rec.clone();
            longer.push(0);
            assert!(Runs::open(
                vec![(run.meta_key(), longer)],
                Vec::new(),
                Some(keys.clone())
            )
            .is_err());
            // A run whose blocks are missing.
            assert!(Runs::open(
                vec![(run.meta_key(), rec.clone())],
                Vec::new(),
                Some(Vec::new())
            )
            .is_err());
            let (runs, orphans) = Runs::open(
                vec![(run.meta_key(), rec.clone())],
                Vec::new(),
                Some(keys.clone()),
            )
            .unwrap();
            assert_eq!(runs.runs(), std::slice::from_ref(&want));
            assert!(orphans.is_empty());
            // Only the current format names its blocks; the open needs it.
            let opened = Runs::open(vec![(run.meta_key(), rec)], Vec::new(), None);
            if format == RECORD_FORMAT {
                assert_eq!(opened.unwrap().0.runs(), [want]);
            } else {
                assert!(opened.is_err());
            }
        }
        // A record counting other blocks than are stored.
        assert!(Runs::open(
            vec![(run.meta_key(), run.meta_value())],
            Vec::new(),
            Some(keys[1..].to_vec())
        )
        .is_err());
        // Block keys in a record out of order, or sharing more than the key before.
        let rec = run.meta_value();
        let mut swapped = rec.clone();
        let at = rec.iter().position(|&b| b == b'a').unwrap();
        swapped[at] = b'z';
        assert!(Runs::open(vec![(run.meta_key(), swapped)], Vec::new(), None).is_err());
        let mut sharing = rec.clone();
        sharing[at - 2] = 1;
        assert!(Runs::open(vec![(run.meta_key(), sharing)], Vec::new(), None).is_err());
        // A block count past the bytes allocates nothing.
        let mut huge = rec[..at - 3].to_vec();
        huge.extend_from_slice(&[0xff, 0xff, 0xff, 0xff, 0x0f]);
        assert!(Runs::open(vec![(run.meta_key(), huge)], Vec::new(), None).is_err());
        // A mark names a run being written: given back to delete, never numbered again.
        let (runs, marked) = Runs::open(
            vec![(run.meta_key(), run.meta_value())],
            vec![writing_key(9)],
            None,
        )
        .unwrap();
        assert_eq!(marked, [9]);
        assert_eq!(runs.next_number, 10);
        assert!(Runs::open(Vec::new(), vec![b"\xFFrun+1".to_vec()], None).is_err());
    }

    #[test]
    fn block_keys_sort_by_run_then_key() {
        assert!(block_key(1, b"z") < block_key(2, b""));
        assert!(block_key(1, b"a") < block_key(1, b"ab"));
        assert_eq!(
            split_block_key(&block_key(9, b"key")),
            Some((9, &b"key"[..]))
        );
        assert_eq!(split_block_key(b"short"), None);
        assert!(meta_key(1) < meta_key(256));
    }

    #[test]
    fn neighbours_of_one_size_are_merged() {
        let run = |number: u64, bytes: u64| Run {
            number,
            age: number,
            items: 1,
            bytes,
            firsts: vec![vec![]],
            last: vec![],
            lives: None,
        };
        let mut runs = Runs::new();
        for (i, b) in [10_000_000, 100_000, 110_000, 120_000]
            .into_iter()
            .enumerate()
        {
            runs.push(run(i as u64, b));
        }
        assert_eq!(runs.plan(usize::MAX), None);
        runs.push(run(4, 90_000));
        assert_eq!(runs.plan(usize::MAX), Some(1..5));
        assert_eq!(runs.plan(4), None, "the newest is not written yet");
        runs.replace(1..5, Some(run(9, 420_000)));
        assert_eq!(runs.runs().len(), 2);
        assert_eq!(
            runs.runs()[1].age,
            4,
            "the merged run is as new as its newest input"
        );
        assert_eq!(runs.take_number(), 10);
        assert_eq!(runs.plan(usize::MAX), None);
        // Uneven sizes merge only past MAX_RUNS runs, the cheapest neighbours first.
        let mut runs = Runs::new();
        for i in 0..MAX_RUNS as u64 {
            runs.push(run(i, 1 << (40 - 2 * i)));
        }
        assert_eq!(runs.plan(usize::MAX), None);
        runs.push(run(99, 1 << 20));
        let w = runs.plan(usize::MAX).expect("too many runs");
        assert_eq!(w.len(), FANOUT);
        assert_eq!(w.end, runs.runs().len(), "{w:?}");
    }

    /// A store of runs as IndexedDB would hold them: blocks by key, records by key.
    struct Sim {
        runs: Runs,
        blocks: BTreeMap<Vec<u8>, Vec<u8>>,
        records: BTreeMap<Vec<u8>, Vec<u8>>,
        puts: usize,
        bytes_put: usize,
        /// A merge in progress, and the numbers of merges whose end failed.
        merging: Option<Compaction>,
        orphans: Vec<u64>,
        /// How many of the newest runs are still being written (not to be merged).
        unsettled: usize,
    }

    impl Sim {
        fn new() -> Sim {
            Sim {
                runs: Runs::new(),
                blocks: BTreeMap::new(),
                records: BTreeMap::new(),
                puts: 0,
                bytes_put: 0,
                merging: None,
                orphans: Vec::new(),
                unsettled: 0,
            }
        }

        /// The write of the newest run failed: it goes, and so do its blocks.
        fn fail_newest(&mut self) {
            let run = self.runs.runs().last().expect("a run").clone();
            assert!(self.runs.remove(run.number));
            self.records.remove(&run.meta_key());
            self.drop_blocks(block_key(run.number, &[]), block_key(run.number + 1, &[]));
        }

        /// Deletes the blocks in [from, to).
        fn drop_blocks(&mut self, from: Vec<u8>, to: Vec<u8>) {
            let gone: Vec<Vec<u8>> = self
                .blocks
                .range(from..to)
                .map(|(k, _)| k.clone())
                .collect();
            for k in gone {
                self.blocks.remove(&k);
            }
        }

        fn store(&mut self, run: &Run, blocks: Records) {
            for (k, v) in blocks {
                self.puts += 1;
                self.bytes_put += v.len();
                self.blocks.insert(k, v);
            }
            self.records.insert(run.meta_key(), run.meta_value());
        }

        fn read_blocks(&self, i: usize, blocks: Range<usize>) -> Vec<Item> {
            let run = &self.runs.runs()[i];
            let mut out = Vec::new();
            for b in blocks {
                let bytes = &self.blocks[&block_key(run.number, &run.firsts[b])];
                out.extend(decode_block(bytes).unwrap());
            }
            out
        }

        fn write(&mut self, batch: &BTreeMap<Vec<u8>, Option<Vec<u8>>>) {
            // With no older run, a tombstone hides nothing.
            let items: Vec<Item> = batch
                .iter()
                .filter(|(_, v)| v.is_some() || !self.runs.runs().is_empty())
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            let number = self.runs.take_number();
            if let Some((run, blocks)) = build(number, self.runs.next_age(), &items) {
                self.store(&run, blocks);
                self.runs.push(run);
            }
        }

        /// Each merge planned, whole.
        fn merge_all(&mut self) {
            while self.step_merge(usize::MAX, false) {}
        }

        /// Advances the merge in progress (or starts the next one) by reading up to
        /// `n` blocks of each input it needs; when it has read everything, ends it, or
        /// (`fail`) has the ending transaction fail. Gives whether a merge ran.
        fn step_merge(&mut self, n: usize, fail: bool) -> bool {
            if self.merging.is_none() {
                let settled = self.runs.runs().len() - self.unsettled;
                self.merging = Compaction::start(&mut self.runs, settled);
            }
            let Some(mut c) = self.merging.take() else {
                return false;
            };
            while !c.is_done() {
                let wants = c.wants(n);
                for k in &wants {
                    let b = self.blocks[k].clone();
                    let written = c.feed(k, &b).unwrap();
                    self.put(written);
                }
                if n != usize::MAX {
                    break;
                }
            }
            if !c.is_done() {
                self.merging = Some(c);
                return true;
            }
            let number = c.number();
            let f = c.finish(&mut self.runs).unwrap();
            if fail {
                // Nothing of the last transaction is kept; the blocks written before it
                // stay, marked, with no record: deleted at the next open (or now).
                self.runs.restore(f.output, f.replaced);
                self.orphans.push(number);
                return true;
            }
            self.put(f.puts);
            for (record, from, to) in f.deletes {
                self.records.remove(&record);
                self.drop_blocks(from, to);
            }
            self.records.remove(&f.unmark);
            true
        }

        /// Puts a merge's records: blocks, and records and marks in `meta`.
        fn put(&mut self, records: Records) {
            for (k, v) in records {
                if in_meta(&k) {
                    self.records.insert(k, v);
                } else {
                    self.puts += 1;
                    self.bytes_put += v.len();
                    self.blocks.insert(k, v);
                }
            }
        }

        /// Reads `r` as a load would, checks it against `model`, and gives how many
        /// blocks it read.
        fn check_read(&self, r: &KeyRange, model: &BTreeMap<Vec<u8>, Vec<u8>>) -> usize {
            let reads = self.runs.covering(r);
            let parts: Vec<Vec<Item>> = reads
                .iter()
                .map(|(i, b)| self.read_blocks(*i, b.clone()))
                .collect();
            let known = self.runs.known(r, &reads);
            let got: Vec<(Vec<u8>, Vec<u8>)> = merge(parts, false)
                .into_iter()
                .filter(|(k, _)| known.contains(k))
                .map(|(k, v)| (k, v.unwrap()))
                .collect();
            let want: Vec<(Vec<u8>, Vec<u8>)> = model
                .iter()
                .filter(|(k, _)| known.contains(k))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            assert_eq!(got, want, "{r:?}, known {known:?}");
            // What was asked is known.
            for (k, _) in model.iter().filter(|(k, _)| r.contains(k)) {
                assert!(known.contains(k), "{r:?}: {k:?} not known in {known:?}");
            }
            for b in [&r.start, &r.end] {
                if let (Bound::Included(k), false) = (b, r.is_empty()) {
                    assert!(known.contains(k), "{r:?}: its bound not known in {known:?}");
                }
            }
            reads.iter().map(|(_, b)| b.len()).sum()
        }

        /// Reads the first blocks of `r` as a limited scan would, and checks what they
        /// decide against `model`.
        fn check_first(
            &self,
            r: &KeyRange,
            reverse: bool,
            n: usize,
            model: &BTreeMap<Vec<u8>, Vec<u8>>,
        ) {
            let reads = self.runs.first_blocks(r, reverse, n);
            let parts: Vec<Vec<Item>> = reads
                .iter()
                .map(|(i, b)| self.read_blocks(*i, b.clone()))
                .collect();
            let known = self.runs.known(r, &reads);
            let (got, want) = keys_in(parts, model, &known);
            assert_eq!(
                got, want,
                "{r:?} reverse {reverse}, first {n}, known {known:?}"
            );
            // Limited to its first entries: the parts decoded inside what is known, then
            // cut to the first `m` keys of any run.
            for m in [1, 2, 7, 50] {
                let mut parts: Vec<Vec<Item>> = reads
                    .iter()
                    .map(|(i, b)| {
                        let run = &self.runs.runs()[*i];
                        b.clone()
                            .flat_map(|j| {
                                let bytes = &self.blocks[&block_key(run.number, &run.firsts[j])];
                                decode_block_in(bytes, &|k| known.contains(k)).unwrap()
                            })
                            .collect()
                    })
                    .collect();
                let most = parts.iter().map(Vec::len).max().unwrap_or(0);
                // Where the range decided must end, found apart from `first_of`: at the
                // nearest `m`-th key of a run holding more than `m` inside `known`.
                let nth = parts.iter().filter(|p| p.len() > m).map(|p| {
                    if reverse {
                        p[p.len() - m].0.clone()
                    } else {
                        p[m - 1].0.clone()
                    }
                });
                let cut = if reverse { nth.max() } else { nth.min() };
                let mut probes: BTreeSet<Vec<u8>> = model.keys().cloned().collect();
                probes.extend(parts.iter().flatten().map(|(k, _)| k.clone()));
                // Forward, each part decoded no further than `first_needs` is cut the
                // same (a read stops decoding a run there).
                let mut capped: Vec<Vec<Item>> = parts
                    .iter()
                    .map(|p| p.iter().take(first_needs(m)).cloned().collect())
                    .collect();
                let decided = first_of(&mut parts, known.clone(), reverse, m);
                if !reverse {
                    let decided_capped = first_of(&mut capped, known.clone(), false, m);
                    assert_eq!(decided_capped, decided, "{r:?} first {m}, capped");
                    assert_eq!(capped, parts, "{r:?} first {m}, capped");
                }
                let all: BTreeSet<Vec<u8>> =
                    parts.iter().flatten().map(|(k, _)| k.clone()).collect();
                if most > m {
                    // As many keys as asked, tombstones and keys of several runs apart.
                    assert!(all.len() >= m, "{r:?} first {m}: {} keys", all.len());
                } else {
                    assert_eq!(decided, known);
                }
                let (got, want) = keys_in(parts, model, &decided);
                assert_eq!(got, want, "{r:?} reverse {reverse}, first {m}");
                assert!(want.iter().all(|k| known.contains(k)));
                // Decided: what is known up to the cut (from it, reverse), nothing past.
                if let Some(cut) = &cut {
                    probes.insert(cut.clone());
                    probes.insert([cut.as_slice(), &[0]].concat());
                    for k in probes.iter().filter(|k| known.contains(k)) {
                        let inside = if reverse { k >= cut } else { k <= cut };
                        assert_eq!(
                            decided.contains(k),
                            inside,
                            "{r:?} reverse {reverse}, first {m}: {k:?}, cut at {cut:?}"
                        );
                    }
                }
            }
            // It decides the range from the end read on: its bound there (or, past an
            // excluded start, the key right after it).
            let edge = match (reverse, &r.start, &r.end) {
                (false, Bound::Included(k), _) | (true, _, Bound::Included(k)) => Some(k.clone()),
                (false, Bound::Excluded(k), _) => Some([k.as_slice(), &[0]].concat()),
                _ => None,
            };
            if let Some(k) = edge.filter(|k| r.contains(k)) {
                assert!(
                    known.contains(&k),
                    "{r:?} reverse {reverse}: {k:?} not known in {known:?}"
                );
            }
        }

        /// A count of `r` as [`Runs::count_plan`] reads it, with `touched` keys (written
        /// elsewhere) to be decided: against the model, and what it reads. Gives the
        /// blocks read, the blocks a whole read would, and the runs some of whose blocks
        /// it counted from their records (`None` when not planned).
        fn check_count(
            &self,
            r: &KeyRange,
            touched: &[Vec<u8>],
            model: &BTreeMap<Vec<u8>, Vec<u8>>,
        ) -> Option<(usize, usize, usize)> {
            let t: Vec<&[u8]> = touched.iter().map(Vec::as_slice).collect();
            let mut plan = self.runs.count_plan(r, &t, |_| true)?;
            let others: Vec<Vec<u8>> = plan
                .reads()
                .iter()
                .flat_map(|(i, b)| self.read_blocks(*i, b.clone()))
                .map(|(k, _)| k)
                .collect();
            plan.more(&self.runs, r, others.iter().map(Vec::as_slice));
            let reads = plan.reads();
            let parts =
                parts_of::<()>(&reads, |i, j| Ok(Some(self.read_blocks(i, j..j + 1)))).unwrap();
            let (unread_live, unread) = plan.unread(&self.runs);
            let got = merge(parts, false)
                .into_iter()
                .filter(|(k, _)| r.contains(k))
                .count() as u64
                + unread_live;
            let want = model.keys().filter(|k| r.contains(k)).count() as u64;
            assert_eq!(got, want, "count of {r:?}, unread {unread:?}");
            for k in touched.iter().chain(&others).filter(|k| r.contains(k)) {
                assert!(
                    !unread.iter().any(|u| u.contains(k)),
                    "{k:?} in a block not read"
                );
            }
            let read: usize = reads.iter().map(|(_, b)| b.len()).sum();
            let whole: usize = self.runs.covering(r).iter().map(|(_, b)| b.len()).sum();
            let counted = plan
                .runs
                .iter()
                .filter(|(_, _, skip)| skip.contains(&true))
                .count();
            Some((read, whole, counted))
        }

        fn reopen(&mut self) {
            let records: Vec<(Vec<u8>, Vec<u8>)> = self
                .records
                .iter()
                .filter(|(k, _)| k.starts_with(META_PREFIX))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            let marks: Vec<Vec<u8>> = self
                .records
                .keys()
                .filter(|k| k.starts_with(WRITING_PREFIX))
                .cloned()
                .collect();
            assert_eq!(records.len() + marks.len(), self.records.len());
            let (again, marked) = Runs::open(records.clone(), marks, None).unwrap();
            assert_eq!(again.runs(), self.runs.runs());
            // From the blocks' keys, as an upgrade reads them: the same runs, and the
            // runs with blocks and no record are the runs marked.
            let keys: Vec<Vec<u8>> = self.blocks.keys().cloned().collect();
            let (from_blocks, orphans) = Runs::open(records, Vec::new(), Some(keys)).unwrap();
            assert_eq!(from_blocks.runs(), self.runs.runs());
            assert_eq!(orphans, marked);
            assert!(again.next_number >= from_blocks.next_number);
            // The blocks of merges that did not end (failed, or still going: a reopen
            // would have lost them) are found; those that failed are deleted.
            let mut want = self.orphans.clone();
            if let Some(c) = &self.merging {
                let from = block_key(c.number(), &[]);
                let to = block_key(c.number() + 1, &[]);
                if self.blocks.range(from..to).next().is_some() {
                    want.push(c.number());
                }
            }
            want.sort_unstable();
            assert_eq!(orphans, want);
            for n in std::mem::take(&mut self.orphans) {
                self.drop_blocks(block_key(n, &[]), block_key(n + 1, &[]));
                self.records.remove(&writing_key(n));
            }
        }
    }

    /// The keys inside `range` of the runs' `parts` merged, and of the `model`.
    fn keys_in(
        parts: Vec<Vec<Item>>,
        model: &BTreeMap<Vec<u8>, Vec<u8>>,
        range: &KeyRange,
    ) -> (Vec<Vec<u8>>, Vec<Vec<u8>>) {
        let got = merge(parts, false)
            .into_iter()
            .map(|(k, _)| k)
            .filter(|k| range.contains(k))
            .collect();
        let want = model
            .keys()
            .filter(|k| range.contains(k))
            .cloned()
            .collect();
        (got, want)
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

    fn key(rng: &mut Rng) -> Vec<u8> {
        format!(
            "{}{:05}",
            ["D", "Ia", "Ib", "P"][rng.below(4) as usize],
            rng.below(3000)
        )
        .into_bytes()
    }

    fn bound(rng: &mut Rng) -> Bound<Vec<u8>> {
        match rng.below(5) {
            0 => Bound::Unbounded,
            1 | 2 => Bound::Included(key(rng)),
            _ => Bound::Excluded(key(rng)),
        }
    }

    #[test]
    fn a_count_takes_the_blocks_inside_its_range_from_the_record() {
        // Three items a block, over two spaces, the last block holding one, two or three;
        // every bound around every key.
        for n in 18..21u8 {
            let mut sim = Sim::new();
            let mut model = BTreeMap::new();
            let mut batch = BTreeMap::new();
            for i in 0..n {
                for space in ["D", "I"] {
                    let k = format!("{space}{i:02}").into_bytes();
                    let v = (i % 5 != 3).then(|| vec![i; 10_000]);
                    if let Some(v) = &v {
                        model.insert(k.clone(), v.clone());
                    }
                    batch.insert(k, v);
                }
            }
            // An older run under it, so that its tombstones are kept; a newer one of keys
            // after its own in each space (as ids made in order are).
            sim.write(&BTreeMap::from([(b"A".to_vec(), Some(vec![1]))]));
            model.insert(b"A".to_vec(), vec![1]);
            sim.write(&batch);
            let mut later = BTreeMap::new();
            for i in 0..n / 2 {
                for space in ["D", "I"] {
                    let k = format!("{space}{:02}", 50 + i).into_bytes();
                    model.insert(k.clone(), vec![i; 10_000]);
                    later.insert(k, Some(vec![i; 10_000]));
                }
            }
            sim.write(&later);
            batch.extend(later);
            let mut bounds = vec![Bound::Unbounded];
            for k in model.keys().chain(batch.keys()) {
                for k in [k.clone(), [k.as_slice(), &[0]].concat(), k[..1].to_vec()] {
                    bounds.push(Bound::Included(k.clone()));
                    bounds.push(Bound::Excluded(k));
                }
            }
            let (mut planned, mut saved, mut both) = (0, 0, 0);
            for start in &bounds {
                for end in &bounds {
                    let r = KeyRange {
                        start: start.clone(),
                        end: end.clone(),
                    };
                    if let Some((read, whole, runs)) = sim.check_count(&r, &[], &model) {
                        planned += 1;
                        saved += usize::from(read < whole);
                        both += usize::from(runs > 1);
                    }
                }
            }
            assert!(
                planned > 1000 && saved > 1000 && both > 100,
                "{planned} planned, {saved} read less, {both} counted in two runs"
            );
        }
    }

    #[test]
    fn random_writes_merges_and_reads_match_a_model() {
        let seed = std::env::var("WARREN_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(0x5eed_0105);
        println!("seed {seed} (WARREN_SEED to repeat)");
        for round in 0..2 {
            let mut rng = Rng(seed + round);
            let mut sim = Sim::new();
            let mut model: BTreeMap<Vec<u8>, Vec<u8>> = BTreeMap::new();
            let mut merges_seen = 0;
            let mut merges_unsettled = 0;
            let mut counts_planned = 0;
            let mut counts_saved = 0;
            for step in 0..[50, 150][round as usize] {
                let snapshot = (round == 1).then(|| model.clone());
                let mut batch = BTreeMap::new();
                let n = 1 + rng.below(if step % 10 == 0 { 800 } else { 60 });
                for _ in 0..n {
                    let k = key(&mut rng);
                    let v = match rng.below(10) {
                        0..=2 => None,
                        3 => Some(vec![7; rng.below(40_000) as usize]),
                        _ => Some(vec![step as u8; rng.below(200) as usize]),
                    };
                    match &v {
                        Some(v) => model.insert(k.clone(), v.clone()),
                        None => model.remove(&k),
                    };
                    batch.insert(k, v);
                }
                let before = sim.runs.runs().len();
                // In the second round, now and then a write stays unsettled while a
                // merge goes on, and then fails half the time (its run goes, its
                // batch is undone).
                let unsettled = round == 1 && rng.below(2) == 0;
                let fails = rng.below(2) == 0;
                if unsettled {
                    // The merge under way ends first, so that the next one starts with
                    // the new run unsettled.
                    while sim.merging.is_some() {
                        sim.step_merge(usize::MAX, false);
                    }
                }
                sim.write(&batch);
                if unsettled && sim.runs.runs().len() > before {
                    sim.unsettled = 1;
                    for _ in 0..1 + rng.below(3) {
                        let started = sim.merging.is_none();
                        if sim.step_merge(1 + rng.below(3) as usize, rng.below(8) == 0) && started {
                            merges_unsettled += 1;
                        }
                    }
                    sim.unsettled = 0;
                    if fails {
                        sim.fail_newest();
                        model = snapshot.expect("round 1");
                    }
                }
                if round == 0 {
                    sim.merge_all();
                    assert!(
                        sim.runs.runs().len() <= MAX_RUNS,
                        "{} runs",
                        sim.runs.runs().len()
                    );
                } else {
                    // A block of each input at a time, between writes and reads (more
                    // while past MAX_RUNS, as a store holds writes back then); now and
                    // then the transaction that ends a merge fails.
                    loop {
                        let fail = rng.below(8) == 0;
                        let ran = sim.step_merge(1 + rng.below(3) as usize, fail);
                        if !ran || sim.runs.runs().len() <= MAX_RUNS {
                            break;
                        }
                    }
                    assert!(
                        sim.runs.runs().len() <= MAX_RUNS,
                        "{} runs",
                        sim.runs.runs().len()
                    );
                }
                if sim.runs.runs().len() <= before {
                    merges_seen += 1;
                }
                for _ in 0..8 {
                    let r = KeyRange {
                        start: bound(&mut rng),
                        end: bound(&mut rng),
                    };
                    sim.check_read(&r, &model);
                }
                let k = key(&mut rng);
                sim.check_read(&KeyRange::point(&k), &model);
                let r = KeyRange {
                    start: bound(&mut rng),
                    end: bound(&mut rng),
                };
                sim.check_first(&r, rng.below(2) == 0, 1 + rng.below(2) as usize, &model);
                for _ in 0..4 {
                    let r = KeyRange {
                        start: bound(&mut rng),
                        end: bound(&mut rng),
                    };
                    let touched: Vec<Vec<u8>> = (0..rng.below(4)).map(|_| key(&mut rng)).collect();
                    if let Some((read, whole, _)) = sim.check_count(&r, &touched, &model) {
                        counts_planned += 1;
                        if read < whole {
                            counts_saved += 1;
                        }
                    }
                }
                if step % 10 == 9 {
                    sim.reopen();
                }
            }
            assert!(merges_seen > 5, "{merges_seen} merges");
            // Counts from the runs' records happen, and some leave blocks unread.
            println!("round {round}: {counts_planned} counts planned, {counts_saved} read less");
            assert!(
                counts_planned > 50 && counts_saved > 10,
                "{counts_planned} counts planned, {counts_saved} read less than all"
            );
            if round == 1 {
                assert!(
                    merges_unsettled > 0,
                    "{merges_unsettled} merges begun while a run was unsettled"
                );
            }
            sim.check_read(&KeyRange::all(), &model);
        }
    }

    #[test]
    fn merges_fed_a_block_at_a_time_give_the_whole_merge() {
        let seed = 0x5eed_feed;
        println!("seed {seed}");
        let mut rng = Rng(seed);
        for _ in 0..30 {
            let parts: Vec<Vec<Item>> = (0..2 + rng.below(4))
                .map(|_| {
                    let mut m = BTreeMap::new();
                    for _ in 0..rng.below(300) {
                        let v = (rng.below(4) > 0).then(|| vec![1; rng.below(50) as usize]);
                        m.insert(key(&mut rng), v);
                    }
                    m.into_iter().collect()
                })
                .collect();
            let keep = rng.below(2) == 0;
            let want = merge(parts.clone(), keep);
            let mut m = Merger::new(parts.len(), keep);
            let mut fed = vec![0; parts.len()];
            let mut got: Vec<Item> = Vec::new();
            while !m.is_done() {
                // What it needs, or any part, a slice of it at a time.
                let needs = m.needs();
                let i = if needs.is_empty() || rng.below(3) == 0 {
                    rng.below(parts.len() as u64) as usize
                } else {
                    needs[rng.below(needs.len() as u64) as usize]
                };
                let n = (rng.below(40) as usize).min(parts[i].len() - fed[i]);
                let slice = parts[i][fed[i]..fed[i] + n].to_vec();
                fed[i] += n;
                m.feed(i, slice, fed[i] == parts[i].len());
                let out = m.take();
                if let (Some(a), Some(b)) = (got.last(), out.first()) {
                    assert!(a.0 < b.0, "out of order across takes");
                }
                got.extend(out);
            }
            assert_eq!(got, want);
        }
    }

    #[test]
    fn runs_are_packed_in_full_blocks() {
        let items: Vec<Item> = (0..5000u32)
            .map(|i| {
                let v = (i % 7 != 0).then(|| vec![3; (i % 13 * 40) as usize]);
                (format!("Dtodo\0\x01{i:08}").into_bytes(), v)
            })
            .chain(std::iter::once((
                b"Z".to_vec(),
                Some(vec![9; 3 * BLOCK_BYTES]),
            )))
            .collect();
        let (run, blocks) = build(3, 1, &items).unwrap();
        assert_eq!(run.firsts.len(), blocks.len());
        let mut all = Vec::new();
        for (i, (k, b)) in blocks.iter().enumerate() {
            let got = decode_block(b).unwrap();
            assert_eq!(k, &block_key(3, &run.firsts[i]));
            assert_eq!(got[0].0, run.firsts[i]);
            assert!(
                b.len() <= BLOCK_BYTES + 6 || got.len() == 1,
                "block {i}: {}",
                b.len()
            );
            // Full but for the last, and the one before a large item.
            if i + 2 < blocks.len() {
                assert!(b.len() > BLOCK_BYTES * 9 / 10, "block {i}: {}", b.len());
            }
            all.extend(got);
        }
        assert_eq!(all, items);
        assert_eq!(run.last, b"Z");
        assert_eq!(run.items, items.len() as u64);
        assert_eq!(
            run.bytes,
            blocks.iter().map(|(_, b)| b.len() as u64).sum::<u64>()
        );
    }

    #[test]
    fn a_block_holds_one_space() {
        let items: Vec<Item> = ["Da", "Db", "Ia", "K1", "K2", "Pz"]
            .iter()
            .map(|k| put(k, "v"))
            .collect();
        let (run, blocks) = build(1, 0, &items).unwrap();
        assert_eq!(
            run.firsts,
            [
                b"Da".to_vec(),
                b"Ia".to_vec(),
                b"K1".to_vec(),
                b"Pz".to_vec()
            ]
        );
        assert_eq!(decode_block(&blocks[2].1).unwrap(), items[3..5]);
        assert_eq!(run.covering(&KeyRange::prefix(b"K")), Some(2..3));
        // Between spaces: no block, and what that decides.
        let gap = KeyRange::prefix(b"J");
        assert_eq!(run.covering(&gap), Some(2..2));
        let mut runs = Runs::new();
        runs.push(run);
        let reads = runs.covering(&gap);
        let known = runs.known(&gap, &reads);
        assert!(known.contains(b"J") && known.contains(b"Jzz") && known.contains(b"J\xff"));
        assert!(!known.contains(b"Iz") && !known.contains(b"K1"));
    }

    #[test]
    fn a_scans_first_blocks_are_those_of_the_runs_that_hold_its_first_keys() {
        // 24 runs, each of 1,000 documents with ids in order (an import's chunks, not
        // merged yet): each holds a stretch of ids of its own.
        let mut sim = Sim::new();
        let mut model = BTreeMap::new();
        let doc = |i: u64| format!("Dtodo\0\x01{i:012}\0\x01").into_bytes();
        for chunk in 0..24u64 {
            let mut batch = BTreeMap::new();
            for i in chunk * 1000..(chunk + 1) * 1000 {
                batch.insert(doc(i), Some(vec![1; 150]));
                model.insert(doc(i), vec![1; 150]);
            }
            sim.write(&batch);
        }
        assert_eq!(sim.runs.runs().len(), 24);
        let docs = KeyRange::prefix(b"D");
        for (from, reverse) in [(0, false), (5_500, false), (23_999, true), (12_345, true)] {
            let r = if reverse {
                KeyRange {
                    start: docs.start.clone(),
                    end: Bound::Included(doc(from)),
                }
            } else {
                KeyRange {
                    start: Bound::Included(doc(from)),
                    end: docs.end.clone(),
                }
            };
            for n in [1, 4, 16] {
                let reads = sim.runs.first_blocks(&r, reverse, n);
                let blocks: usize = reads.iter().map(|(_, b)| b.len()).sum();
                // The nearest run's n blocks, and the next run's first when they end
                // in it: not n of each of the runs the range reaches.
                assert!(
                    blocks <= n + 1,
                    "from {from} reverse {reverse}, {n}: {blocks} blocks"
                );
                sim.check_first(&r, reverse, n, &model);
            }
        }
    }

    #[test]
    fn an_import_is_written_a_few_times_over_whatever_its_ids() {
        // 32 chunks of 1,000 documents (a document, its index entry, its membership),
        // ids in order and scattered: each chunk one run, merged as they come.
        for scattered in [false, true] {
            let mut sim = Sim::new();
            let mut data = 0;
            for chunk in 0..32u64 {
                let mut batch = BTreeMap::new();
                for i in chunk * 1000..(chunk + 1) * 1000 {
                    let id = if scattered {
                        i.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 40
                    } else {
                        i
                    };
                    let owner = i % 50;
                    for (k, v) in [
                        (format!("Dtodo\0\x01{id:012}\0\x01"), vec![1; 150]),
                        (
                            format!("Itodo\0\x01by\0\x01{owner:02}{i:012}{id:012}"),
                            vec![2; 8],
                        ),
                        (format!("P{owner:02}\0\x01todo\0\x01{id:012}"), vec![]),
                    ] {
                        data += k.len() + v.len();
                        batch.insert(k.into_bytes(), Some(v));
                    }
                }
                sim.write(&batch);
                sim.merge_all();
            }
            // Each entry written about once per size class it passed through.
            let amplification = sim.bytes_put as f64 / data as f64;
            assert!(
                amplification < 5.0,
                "{amplification:.2}x (scattered: {scattered})"
            );
            assert!(
                sim.runs.runs().len() <= 2 * FANOUT,
                "{} runs",
                sim.runs.runs().len()
            );
            // A point read after it reads at most one block of each run.
            let point = KeyRange::point(b"Dtodo\0\x01000000012345\0\x01");
            let reads = sim.runs.covering(&point);
            assert!(reads.iter().all(|(_, b)| b.len() == 1));
            println!(
                "scattered {scattered}: {} puts, {amplification:.2}x, {} runs",
                sim.puts,
                sim.runs.runs().len()
            );
        }
    }
}
