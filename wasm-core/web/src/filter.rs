//! The key filter: which keys IndexedDB may hold, without asking it.
//!
//! A blocked Bloom filter over every key written to the database (each key sets 7 bits
//! in one 64-byte block), kept in memory and stored beside the data, each change in the
//! same IndexedDB transaction as the writes that made it. It answers "certainly absent"
//! or "maybe present": a create with a fresh id, whose document key the filter has never
//! seen, learns that the key is absent without a read. Deleted keys stay in it (a false
//! "maybe" costs one read, never a wrong answer).
//!
//! It grows in generations: when the newest has taken as many keys as it was sized for,
//! a new one twice as large starts, and a key may be in any of them. So it never has to
//! be rebuilt, and its false-positive rate stays near 1% per generation.
//!
//! Byte format (docs/STORAGE.md, "The key filter"): the meta record
//! `FF "filter"` → `01` (format) · generation count (u8) · per generation: capacity
//! (u32 BE) · keys inserted (u32 BE); and pages `FF "filter/"` · generation (u8) · page
//! (u32 BE) → 4,096 bytes (64 blocks). A page never written is all zeros. The hash is
//! part of the format: changing it is a new format.

use std::collections::BTreeSet;

/// The meta record's key.
pub const META_KEY: &[u8] = b"\xFFfilter";
/// Every page's key starts so.
pub const PAGE_PREFIX: &[u8] = b"\xFFfilter/";
const FORMAT: u8 = 1;
/// Bits per key a generation is sized for (about 1% false positives at 7 bits a key).
const BITS_PER_KEY: u64 = 10;
const BITS_SET: u32 = 7;
const BLOCK_BYTES: usize = 64;
const BLOCK_BITS: u32 = (BLOCK_BYTES * 8) as u32;
const PAGE_BYTES: usize = 4096;
const BLOCKS_PER_PAGE: usize = PAGE_BYTES / BLOCK_BYTES;
/// Keys the first generation is sized for.
pub const FIRST_CAPACITY: u32 = 1 << 16;
/// Generations at most (capacities double: the last one holds 2^47 keys).
const MAX_GENERATIONS: usize = 32;

struct Generation {
    capacity: u32,
    inserted: u32,
    bits: Vec<u8>,
}

impl Generation {
    fn new(capacity: u32) -> Generation {
        let blocks = (u64::from(capacity) * BITS_PER_KEY).div_ceil(u64::from(BLOCK_BITS));
        let pages = (blocks as usize).div_ceil(BLOCKS_PER_PAGE);
        Generation {
            capacity,
            inserted: 0,
            bits: vec![0; pages * PAGE_BYTES],
        }
    }

    fn blocks(&self) -> u64 {
        (self.bits.len() / BLOCK_BYTES) as u64
    }

    /// The block and the bit positions in it for a key's hash.
    fn positions(&self, h: u64) -> (usize, [u32; BITS_SET as usize]) {
        let block = (((h >> 32) * self.blocks()) >> 32) as usize;
        let a = h as u32;
        let b = (mix(h) as u32) | 1;
        let mut out = [0; BITS_SET as usize];
        for (i, o) in out.iter_mut().enumerate() {
            *o = a.wrapping_add((i as u32).wrapping_mul(b)) % BLOCK_BITS;
        }
        (block, out)
    }

    fn contains(&self, h: u64) -> bool {
        let (block, bits) = self.positions(h);
        let base = block * BLOCK_BYTES;
        bits.iter()
            .all(|&b| self.bits[base + (b / 8) as usize] & (1 << (b % 8)) != 0)
    }

    /// Sets a key's bits; gives the page it changed, if any.
    fn insert(&mut self, h: u64) -> Option<usize> {
        let (block, bits) = self.positions(h);
        let base = block * BLOCK_BYTES;
        let mut changed = false;
        for b in bits {
            let byte = &mut self.bits[base + (b / 8) as usize];
            let mask = 1 << (b % 8);
            if *byte & mask == 0 {
                *byte |= mask;
                changed = true;
            }
        }
        changed.then_some(block / BLOCKS_PER_PAGE)
    }
}

fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The filter's hash of a key (part of the stored format).
pub fn hash(key: &[u8]) -> u64 {
    const M: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut h = 0x243F_6A88_85A3_08D3 ^ (key.len() as u64).wrapping_mul(M);
    for chunk in key.chunks(8) {
        let mut b = [0u8; 8];
        b[..chunk.len()].copy_from_slice(chunk);
        h = (h ^ u64::from_le_bytes(b)).wrapping_mul(M);
        h ^= h >> 29;
    }
    mix(h)
}

/// Why stored filter bytes were refused.
#[derive(Debug, PartialEq, Eq)]
pub struct BadFilter(pub &'static str);

/// See the module documentation.
pub struct Filter {
    generations: Vec<Generation>,
    dirty_pages: BTreeSet<(u8, u32)>,
    dirty_meta: bool,
    /// Until the stored pages are read in ([`Filter::load_pages`]): the hashes of the
    /// keys inserted meanwhile, inserted when they come.
    unloaded: Option<Vec<u64>>,
}

impl Default for Filter {
    fn default() -> Filter {
        Filter::new()
    }
}

impl Filter {
    /// An empty filter (a new database).
    pub fn new() -> Filter {
        Filter {
            generations: vec![Generation::new(FIRST_CAPACITY)],
            dirty_pages: BTreeSet::new(),
            dirty_meta: true,
            unloaded: None,
        }
    }

    /// The filter as stored: its meta record and the pages written so far.
    pub fn decode<'a>(
        meta: &[u8],
        pages: impl IntoIterator<Item = (&'a [u8], &'a [u8])>,
    ) -> Result<Filter, BadFilter> {
        let mut f = Filter::from_meta(meta)?;
        f.load_pages(pages)?;
        Ok(f)
    }

    /// The filter as stored, its pages not read yet: until [`Filter::load_pages`] it
    /// answers "maybe" for every key (a read asks IndexedDB) and keeps the keys inserted
    /// meanwhile, and its records must not be written ([`Filter::take_dirty`]).
    pub fn from_meta(meta: &[u8]) -> Result<Filter, BadFilter> {
        let (&format, rest) = meta.split_first().ok_or(BadFilter("empty meta"))?;
        if format != FORMAT {
            return Err(BadFilter("unknown filter format"));
        }
        let (&n, mut rest) = rest.split_first().ok_or(BadFilter("no generations"))?;
        if n == 0 || n as usize > MAX_GENERATIONS || rest.len() != n as usize * 8 {
            return Err(BadFilter("bad generation list"));
        }
        let mut generations = Vec::with_capacity(n as usize);
        for _ in 0..n {
            let cap = u32::from_be_bytes(rest[..4].try_into().expect("4 bytes"));
            let ins = u32::from_be_bytes(rest[4..8].try_into().expect("4 bytes"));
            rest = &rest[8..];
            if cap < FIRST_CAPACITY || !cap.is_power_of_two() {
                return Err(BadFilter("bad capacity"));
            }
            let mut g = Generation::new(cap);
            g.inserted = ins;
            generations.push(g);
        }
        Ok(Filter {
            generations,
            dirty_pages: BTreeSet::new(),
            dirty_meta: false,
            unloaded: Some(Vec::new()),
        })
    }

    /// Reads in the stored pages (nothing if they are in already), then inserts the keys
    /// inserted since [`Filter::from_meta`]. Refused pages leave it unloaded.
    pub fn load_pages<'a>(
        &mut self,
        pages: impl IntoIterator<Item = (&'a [u8], &'a [u8])>,
    ) -> Result<(), BadFilter> {
        if self.is_loaded() {
            return Ok(());
        }
        // All checked before any is taken.
        let mut checked = Vec::new();
        for (k, v) in pages {
            let Some(id) = k.strip_prefix(PAGE_PREFIX) else {
                continue;
            };
            if id.len() != 5 || v.len() != PAGE_BYTES {
                return Err(BadFilter("bad page"));
            }
            let g = self
                .generations
                .get(id[0] as usize)
                .ok_or(BadFilter("page of no generation"))?;
            let page = u32::from_be_bytes(id[1..].try_into().expect("4 bytes")) as usize;
            let at = page * PAGE_BYTES;
            if at + PAGE_BYTES > g.bits.len() {
                return Err(BadFilter("page out of range"));
            }
            checked.push((id[0] as usize, at, v));
        }
        for (g, at, v) in checked {
            self.generations[g].bits[at..at + PAGE_BYTES].copy_from_slice(v);
        }
        for h in self.unloaded.take().unwrap_or_default() {
            self.insert_hash(h);
        }
        Ok(())
    }

    /// Whether the stored pages are in (see [`Filter::from_meta`]).
    pub fn is_loaded(&self) -> bool {
        self.unloaded.is_none()
    }

    /// Whether the database may hold `key` (false: it certainly does not).
    pub fn may_contain(&self, key: &[u8]) -> bool {
        if self.unloaded.is_some() {
            return true;
        }
        let h = hash(key);
        self.generations.iter().any(|g| g.contains(h))
    }

    /// Notes that `key` is written to the database.
    pub fn insert(&mut self, key: &[u8]) {
        let h = hash(key);
        match &mut self.unloaded {
            Some(early) => early.push(h),
            None => self.insert_hash(h),
        }
    }

    fn insert_hash(&mut self, h: u64) {
        if self.generations.iter().any(|g| g.contains(h)) {
            return;
        }
        let last = self.generations.last().expect("one at least");
        if last.inserted >= last.capacity && self.generations.len() < MAX_GENERATIONS {
            let cap = last.capacity.saturating_mul(2);
            self.generations.push(Generation::new(cap));
        }
        let gi = self.generations.len() - 1;
        let g = &mut self.generations[gi];
        if let Some(page) = g.insert(h) {
            self.dirty_pages.insert((gi as u8, page as u32));
        }
        g.inserted = g.inserted.saturating_add(1);
        self.dirty_meta = true;
    }

    /// The records to write for what changed since the last call: `(key, value)`.
    /// Only once loaded: the pages of a filter not loaded lack what is stored.
    pub fn take_dirty(&mut self) -> Vec<(Vec<u8>, Vec<u8>)> {
        assert!(self.is_loaded(), "the key filter's pages are not read in");
        let mut out = Vec::new();
        for (g, page) in std::mem::take(&mut self.dirty_pages) {
            let bits = &self.generations[g as usize].bits;
            let at = page as usize * PAGE_BYTES;
            out.push((page_key(g, page), bits[at..at + PAGE_BYTES].to_vec()));
        }
        if std::mem::take(&mut self.dirty_meta) {
            out.push((META_KEY.to_vec(), self.encode_meta()));
        }
        out
    }

    /// Marks everything as to be written again (after a write that failed).
    pub fn redirty(&mut self, records: &[(Vec<u8>, Vec<u8>)]) {
        for (k, _) in records {
            if k.as_slice() == META_KEY {
                self.dirty_meta = true;
            } else if let Some(id) = k.strip_prefix(PAGE_PREFIX) {
                let page = u32::from_be_bytes(id[1..].try_into().expect("4 bytes"));
                self.dirty_pages.insert((id[0], page));
            }
        }
    }

    fn encode_meta(&self) -> Vec<u8> {
        let mut out = vec![FORMAT, self.generations.len() as u8];
        for g in &self.generations {
            out.extend_from_slice(&g.capacity.to_be_bytes());
            out.extend_from_slice(&g.inserted.to_be_bytes());
        }
        out
    }

    /// Bytes held in memory.
    pub fn bytes(&self) -> usize {
        self.generations.iter().map(|g| g.bits.len()).sum()
    }

    /// Whether no key was ever written (a new database: everything is known absent).
    pub fn is_empty(&self) -> bool {
        self.generations.iter().all(|g| g.inserted == 0)
    }

    pub fn generations(&self) -> usize {
        self.generations.len()
    }
}

fn page_key(generation: u8, page: u32) -> Vec<u8> {
    let mut k = PAGE_PREFIX.to_vec();
    k.push(generation);
    k.extend_from_slice(&page.to_be_bytes());
    k
}

/// Whether a key is the filter's own.
pub fn is_filter_key(k: &[u8]) -> bool {
    k.starts_with(META_KEY)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn key(i: u32) -> Vec<u8> {
        let mut k = b"DDoc\0\x01id-".to_vec();
        k.extend_from_slice(i.to_string().as_bytes());
        k
    }

    #[test]
    fn no_false_negatives_and_few_false_positives() {
        let mut f = Filter::new();
        for i in 0..50_000 {
            f.insert(&key(i));
        }
        assert!((0..50_000).all(|i| f.may_contain(&key(i))));
        let fp = (1_000_000..1_100_000)
            .filter(|&i| f.may_contain(&key(i)))
            .count();
        assert!(fp < 2_000, "{fp} false positives in 100,000");
    }

    #[test]
    fn it_grows_in_generations_and_round_trips() {
        let mut f = Filter::new();
        let n = FIRST_CAPACITY * 3;
        for i in 0..n {
            f.insert(&key(i));
        }
        assert_eq!(f.generations(), 2, "64 Ki, then 128 Ki");
        let records = f.take_dirty();
        assert!(f.take_dirty().is_empty(), "nothing changed since");
        let meta = records
            .iter()
            .find(|(k, _)| k.as_slice() == META_KEY)
            .expect("the meta record")
            .1
            .clone();
        let g = Filter::decode(
            &meta,
            records
                .iter()
                .filter(|(k, _)| k.as_slice() != META_KEY)
                .map(|(k, v)| (k.as_slice(), v.as_slice())),
        )
        .unwrap();
        assert!((0..n).all(|i| g.may_contain(&key(i))));
        assert_eq!(g.bytes(), f.bytes());
        let fp = (10_000_000..10_100_000)
            .filter(|&i| g.may_contain(&key(i)))
            .count();
        assert!(fp < 3_000, "{fp} false positives in 100,000");
    }

    /// Opened from its meta record alone, it answers "maybe" and writes nothing until
    /// its pages are in; the keys inserted meanwhile are in it after, and its records
    /// then cover them and what was stored.
    #[test]
    fn pages_read_in_later_keep_the_keys_inserted_before() {
        let mut f = Filter::new();
        for i in 0..1_000 {
            f.insert(&key(i));
        }
        let stored = f.take_dirty();
        let (meta, pages): (Vec<_>, Vec<_>) =
            stored.iter().partition(|(k, _)| k.as_slice() == META_KEY);
        let pages = || pages.iter().map(|(k, v)| (k.as_slice(), v.as_slice()));
        let mut g = Filter::from_meta(&meta[0].1).unwrap();
        assert!(!g.is_loaded());
        assert!(
            g.may_contain(&key(5_000_000)),
            "unknown until loaded: maybe"
        );
        for i in 1_000..1_100 {
            g.insert(&key(i));
        }
        // Refused pages leave it as it was.
        assert!(g
            .load_pages([(&page_key(0, 9999)[..], &[0u8; PAGE_BYTES][..])])
            .is_err());
        assert!(!g.is_loaded());
        g.load_pages(pages()).unwrap();
        assert!(g.is_loaded());
        assert!((0..1_100).all(|i| g.may_contain(&key(i))));
        let fp = (2_000_000..2_010_000)
            .filter(|&i| g.may_contain(&key(i)))
            .count();
        assert!(fp < 200, "{fp} false positives in 10,000");
        // Loading again changes nothing.
        g.load_pages(std::iter::empty()).unwrap();
        assert!((0..1_100).all(|i| g.may_contain(&key(i))));
        // What it writes, over what was stored, holds every key.
        let mut all: BTreeMap<Vec<u8>, Vec<u8>> = stored.iter().cloned().collect();
        all.extend(g.take_dirty());
        let h = Filter::decode(
            &all[META_KEY],
            all.iter()
                .filter(|(k, _)| k.as_slice() != META_KEY)
                .map(|(k, v)| (k.as_slice(), v.as_slice())),
        )
        .unwrap();
        assert!((0..1_100).all(|i| h.may_contain(&key(i))));
    }

    #[test]
    #[should_panic(expected = "not read in")]
    fn a_filter_not_loaded_writes_nothing() {
        let meta = Filter::new().encode_meta();
        Filter::from_meta(&meta).unwrap().take_dirty();
    }

    #[test]
    fn bad_bytes_are_refused() {
        assert!(Filter::decode(&[], []).is_err());
        assert!(Filter::decode(&[2, 1, 0, 1, 0, 0, 0, 0, 0, 0], []).is_err());
        assert!(Filter::decode(&[1, 1, 0, 0, 0, 3, 0, 0, 0, 0], []).is_err());
        let meta = Filter::new().encode_meta();
        assert!(Filter::decode(&meta, [(&page_key(0, 9999)[..], &[0u8; PAGE_BYTES][..])]).is_err());
        assert!(Filter::decode(&meta, [(&page_key(0, 0)[..], &[0u8; 3][..])]).is_err());
    }

    #[test]
    fn the_hash_is_fixed() {
        // Part of the stored format: these values must never change.
        assert_eq!(hash(b""), hash(b""));
        assert_ne!(hash(b"a"), hash(b"a\0"));
        assert_eq!(format!("{:016x}", hash(b"DDoc\0\x01t1\0\x01")), FIXED_T1);
    }

    const FIXED_T1: &str = "27b0521225bcf0f1";
}
