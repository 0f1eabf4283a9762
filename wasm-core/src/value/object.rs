//! [`Object`]: a value's fields, sorted by key, in one allocation.
//!
//! A document is usually a handful of fields, read far more often than it is changed:
//! decoded from storage, run through a program, encoded again, sent to JavaScript. A
//! `BTreeMap` gave each object a node sized for eleven entries and a pointer chase per
//! lookup; a sorted vector holds exactly its entries, is built from the canonical
//! encoding (whose keys are already in order) without a search per key, and finds a key
//! by binary search.
//!
//! Keys stay in byte order, so iteration order never depends on insertion history (one
//! of the engine's determinism rules) and equal objects encode to equal bytes. A key is
//! a [`Key`], shared: the documents of a collection repeat a few field names, and each
//! was an allocation and a free per document read while keys were `String`s. What a
//! sorted vector would make quadratic is done in bulk instead: building from entries in
//! any order sorts once ([`FromIterator`]), and [`Object::merge`] and [`Object::patch`]
//! (which also removes) walk both sides once.

use std::cell::RefCell;
use std::fmt;
use std::ops::Deref;
use std::sync::Arc;

use super::Value;

/// An object's key: a shared, immutable string. Documents of a collection repeat the
/// same few field names, so the decoder hands out the key it made before for the same
/// bytes, where a `String` was an allocation and a free per field of every document
/// read. It compares, hashes and prints as the `str` it holds.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Key(Arc<str>);

impl Key {
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The key spelled `bytes`, if they are UTF-8 (the canonical decoder's: the bytes
    /// are checked only when the cache does not have them).
    pub(super) fn decoded(bytes: &[u8]) -> Option<Key> {
        Key::cached(bytes, || std::str::from_utf8(bytes).ok().map(Key::made))
    }

    fn made(s: &str) -> Key {
        Key(Arc::from(s))
    }

    /// The key spelled `bytes`: the one made last time for the same bytes when it is
    /// still in the cache (one slot per hash of a short key, per thread), or `make`'s,
    /// which then takes the slot. The cache changes where a key's bytes live, never a
    /// value: keys compare by their bytes, and no fuel, memory charge or result depends
    /// on a hit. It is shared by whatever runs on the thread (a server's users too): a
    /// hit spares one allocation, tens of nanoseconds, which is all it tells anyone.
    fn cached(bytes: &[u8], make: impl FnOnce() -> Option<Key>) -> Option<Key> {
        const SLOTS: usize = 64;
        const SHORT: usize = 32;
        thread_local! {
            static CACHE: RefCell<[Option<Key>; SLOTS]> = const { RefCell::new([const { None }; SLOTS]) };
        }
        if bytes.len() > SHORT {
            return make();
        }
        // FNV-1a: which slot a key takes, nothing more.
        let hash = bytes.iter().fold(0x811c_9dc5_u32, |h, b| {
            (h ^ u32::from(*b)).wrapping_mul(0x0100_0193)
        });
        let slot = (hash as usize) % SLOTS;
        // (`try_with`: a thread being torn down has no cache, and makes its keys anew.)
        let hit = CACHE.try_with(|cache| {
            cache.borrow()[slot]
                .as_ref()
                .filter(|k| k.0.as_bytes() == bytes)
                .cloned()
        });
        if let Ok(Some(k)) = hit {
            return Some(k);
        }
        let k = make()?;
        let _ = CACHE.try_with(|cache| cache.borrow_mut()[slot] = Some(k.clone()));
        Some(k)
    }
}

impl Deref for Key {
    type Target = str;

    fn deref(&self) -> &str {
        &self.0
    }
}

/// A key from a `str` is the cached one when the cache has it (an update's or a
/// literal's field names repeat as a document's do).
impl From<&str> for Key {
    fn from(s: &str) -> Key {
        Key::cached(s.as_bytes(), || Some(Key::made(s))).unwrap_or_else(|| Key::made(s))
    }
}

impl From<String> for Key {
    fn from(s: String) -> Key {
        Key::from(s.as_str())
    }
}

impl PartialEq<str> for Key {
    fn eq(&self, other: &str) -> bool {
        &*self.0 == other
    }
}

impl fmt::Display for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

/// An object: keys in byte order, each once.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Object {
    entries: Vec<(Key, Value)>,
}

impl Object {
    pub const fn new() -> Object {
        Object {
            entries: Vec::new(),
        }
    }

    /// Entries whose keys are strictly ascending already (the canonical decoder checks
    /// that before it calls this).
    pub(super) fn from_sorted(entries: Vec<(Key, Value)>) -> Object {
        debug_assert!(entries.windows(2).all(|w| w[0].0 < w[1].0));
        Object { entries }
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    fn find(&self, key: &str) -> Result<usize, usize> {
        self.entries.binary_search_by(|(k, _)| k.as_str().cmp(key))
    }

    pub fn get(&self, key: &str) -> Option<&Value> {
        self.find(key).ok().map(|i| &self.entries[i].1)
    }

    pub fn contains_key(&self, key: &str) -> bool {
        self.find(key).is_ok()
    }

    /// Sets `key`, returning the value it replaced. Appending a key greater than all
    /// others (the usual order of a literal's fields) costs no search.
    pub fn insert(&mut self, key: impl Into<Key>, value: Value) -> Option<Value> {
        let key = key.into();
        let at = match self.entries.last() {
            Some((last, _)) if *last < key => self.entries.len(),
            None => 0,
            _ => match self.find(&key) {
                Ok(i) => return Some(std::mem::replace(&mut self.entries[i].1, value)),
                Err(i) => i,
            },
        };
        self.entries.insert(at, (key, value));
        None
    }

    pub fn remove(&mut self, key: &str) -> Option<Value> {
        let i = self.find(key).ok()?;
        Some(self.entries.remove(i).1)
    }

    pub fn iter(&self) -> Iter<'_> {
        Iter(self.entries.iter())
    }

    pub fn keys(&self) -> impl DoubleEndedIterator<Item = &Key> + ExactSizeIterator {
        self.entries.iter().map(|(k, _)| k)
    }

    pub fn values(&self) -> impl DoubleEndedIterator<Item = &Value> + ExactSizeIterator {
        self.entries.iter().map(|(_, v)| v)
    }

    /// Sets every field of `other` here (its values win), walking both once.
    pub fn merge(&mut self, other: Object) {
        self.merge_by(other, false);
    }

    /// An update's shallow merge: every field of `other` set here, except that a null
    /// removes the field instead. One walk over both, however many fields change.
    pub fn patch(&mut self, other: Object) {
        self.merge_by(other, true);
    }

    fn merge_by(&mut self, other: Object, null_removes: bool) {
        let mine = std::mem::take(&mut self.entries);
        let mut out = Vec::with_capacity(mine.len() + other.len());
        let keep = |e: &(Key, Value)| !(null_removes && e.1.is_null());
        let mut theirs = other.entries.into_iter().peekable();
        for (k, v) in mine {
            while let Some(e) = theirs.next_if(|(ok, _)| *ok < k) {
                if keep(&e) {
                    out.push(e);
                }
            }
            match theirs.next_if(|(ok, _)| *ok == k) {
                Some(e) if keep(&e) => out.push(e),
                Some(_) => {}
                None => out.push((k, v)),
            }
        }
        out.extend(theirs.filter(keep));
        self.entries = out;
    }
}

/// Entries in any order; a key given twice keeps its last value (as a map's inserts
/// would). One sort, not a search and a shift per entry.
impl<K: Into<Key>> FromIterator<(K, Value)> for Object {
    fn from_iter<I: IntoIterator<Item = (K, Value)>>(iter: I) -> Object {
        let mut entries: Vec<(Key, Value)> = iter.into_iter().map(|(k, v)| (k.into(), v)).collect();
        if entries.windows(2).all(|w| w[0].0 < w[1].0) {
            return Object { entries };
        }
        // Stable: of equal keys the last given is the last here, and is the one kept
        // (moved into the place of the one before it, which goes).
        entries.sort_by(|a, b| a.0.cmp(&b.0));
        entries.dedup_by(|later, kept| {
            let same = later.0 == kept.0;
            if same {
                std::mem::swap(later, kept);
            }
            same
        });
        Object { entries }
    }
}

/// The entries as `(&key, &value)`, in key order.
#[derive(Clone)]
pub struct Iter<'a>(std::slice::Iter<'a, (Key, Value)>);

impl<'a> Iterator for Iter<'a> {
    type Item = (&'a Key, &'a Value);

    fn next(&mut self) -> Option<Self::Item> {
        self.0.next().map(|(k, v)| (k, v))
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        self.0.size_hint()
    }
}

impl DoubleEndedIterator for Iter<'_> {
    fn next_back(&mut self) -> Option<Self::Item> {
        self.0.next_back().map(|(k, v)| (k, v))
    }
}

impl ExactSizeIterator for Iter<'_> {}

impl<'a> IntoIterator for &'a Object {
    type Item = (&'a Key, &'a Value);
    type IntoIter = Iter<'a>;

    fn into_iter(self) -> Iter<'a> {
        self.iter()
    }
}

impl IntoIterator for Object {
    type Item = (Key, Value);
    type IntoIter = std::vec::IntoIter<(Key, Value)>;

    fn into_iter(self) -> Self::IntoIter {
        self.entries.into_iter()
    }
}

/// `o["key"]`: the key's value; panics if it is absent, as a map's index does.
impl std::ops::Index<&str> for Object {
    type Output = Value;

    fn index(&self, key: &str) -> &Value {
        self.get(key).expect("no entry for the key")
    }
}

impl fmt::Debug for Object {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.iter()).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(o: &Object) -> Vec<(String, i64)> {
        o.iter()
            .map(|(k, v)| match v {
                Value::Int(i) => (k.to_string(), *i),
                _ => unreachable!(),
            })
            .collect()
    }

    /// Every way of building an object agrees with a map built by inserts: keys in byte
    /// order, once each, the last value given winning.
    #[test]
    fn agrees_with_a_map() {
        use std::collections::BTreeMap;
        // Seeded and printed, so a failure can be replayed.
        let seed = 0x5eed_0b1e_u64;
        println!("seed {seed:#x}");
        let mut x = seed;
        let mut next = move |n: u64| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x % n
        };
        let keys = ["", "a", "b", "ab", "é", "Z", "aa", "b\u{0}", "zz"];
        for _ in 0..500 {
            let mut map = BTreeMap::new();
            let mut inserted = Object::new();
            let mut given = Vec::new();
            for i in 0..next(12) as i64 {
                let k = keys[next(keys.len() as u64) as usize].to_string();
                let before = map.insert(k.clone(), i);
                let replaced = inserted.insert(k.clone(), Value::Int(i));
                assert_eq!(before.map(Value::Int), replaced);
                given.push((k, Value::Int(i)));
            }
            let want: Vec<(String, i64)> = map.clone().into_iter().collect();
            assert_eq!(pairs(&inserted), want);
            let collected: Object = given.iter().cloned().collect();
            assert_eq!(pairs(&collected), want);

            // merge: the other side's values win, as inserting them one by one would.
            let other: Vec<(String, Value)> = (0..next(6) as i64)
                .map(|i| {
                    (
                        keys[next(keys.len() as u64) as usize].to_string(),
                        Value::Int(100 + i),
                    )
                })
                .collect();
            let other: Object = other.into_iter().collect();
            let mut merged = inserted.clone();
            merged.merge(other.clone());
            // patch: the same, except that a null removes the key.
            let mut patched = inserted.clone();
            let with_nulls: Object = other
                .iter()
                .enumerate()
                .map(|(i, (k, v))| (k.clone(), if i % 2 == 0 { Value::Null } else { v.clone() }))
                .collect();
            patched.patch(with_nulls.clone());
            let mut by_hand = map.clone();
            for (k, v) in &with_nulls {
                match v {
                    Value::Int(i) => by_hand.insert(k.to_string(), *i),
                    _ => by_hand.remove(k.as_str()),
                };
            }
            assert_eq!(pairs(&patched), by_hand.into_iter().collect::<Vec<_>>());
            let mut one_by_one = map.clone();
            for (k, v) in pairs(&other) {
                one_by_one.insert(k, v);
            }
            let want: Vec<(String, i64)> = one_by_one.into_iter().collect();
            assert_eq!(pairs(&merged), want);

            // remove and lookups.
            let k = keys[next(keys.len() as u64) as usize];
            assert_eq!(inserted.get(k).is_some(), map.contains_key(k));
            assert_eq!(
                inserted.remove(k).map(|v| v == Value::Int(map[k])),
                map.remove(k).map(|_| true)
            );
            assert!(!inserted.contains_key(k));
            assert_eq!(pairs(&inserted), map.into_iter().collect::<Vec<_>>());
        }
    }

    #[test]
    fn many_entries_in_reverse_build_in_one_sort() {
        // 100,000 keys given in descending order: a search and a shift per key would
        // move about 5 * 10^9 entries; sorting once is instant.
        let n = 100_000;
        let o: Object = (0..n)
            .rev()
            .map(|i| (format!("{i:06}"), Value::Int(i)))
            .collect();
        assert_eq!(o.len(), n as usize);
        assert_eq!(o.keys().next().map(Key::as_str), Some("000000"));
        assert_eq!(o.get("099999"), Some(&Value::Int(99_999)));
    }

    /// Keys decoded again are the ones made before (no allocation per field of every
    /// document read), and which key a cache slot holds never changes what is decoded:
    /// colliding, long and non-UTF-8 keys included.
    #[test]
    fn decoded_keys_are_shared_and_exact() {
        let a = Key::decoded(b"owner").unwrap();
        let b = Key::decoded(b"owner").unwrap();
        assert!(Arc::ptr_eq(&a.0, &b.0), "the same short key is shared");
        assert!(
            Arc::ptr_eq(&a.0, &Key::from("owner").0),
            "and so is one a program makes"
        );
        let long = "k".repeat(40);
        assert_eq!(Key::decoded(long.as_bytes()).unwrap().as_str(), long);
        assert!(Key::decoded(b"\xff\xfe").is_none(), "not UTF-8");
        assert!(Key::decoded(&[0xc3]).is_none(), "a cut character");
        // Many keys through 64 slots: each still decodes to its own bytes, again and
        // again, whichever keys evicted which.
        let keys: Vec<String> = (0..500).map(|i| format!("f{i}")).collect();
        for round in 0..3 {
            for (i, k) in keys.iter().enumerate().skip(round) {
                assert_eq!(Key::decoded(k.as_bytes()).unwrap().as_str(), k, "key {i}");
            }
        }
        assert_eq!(Key::decoded(b"").unwrap().as_str(), "");
    }
}
