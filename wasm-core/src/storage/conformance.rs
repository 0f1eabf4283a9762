//! The storage conformance suite: what every [`Storage`] backend must do.
//!
//! Each check is a plain generic function, so a backend can run it under any test
//! harness; [`storage_conformance_tests!`](crate::storage_conformance_tests) turns the
//! whole list into one test function per check:
//!
//! ```ignore
//! warren_core::storage_conformance_tests!(MyStore::open_temp());
//! // in a browser: pick the test attribute
//! warren_core::storage_conformance_tests!(@attr [#[wasm_bindgen_test]] MyStore::new());
//! ```
//!
//! Every check starts from an empty store made by the given expression.

use std::collections::BTreeMap;
use std::ops::Bound;

use super::{Batch, KeyRange, Storage};

fn put(s: &mut impl Storage, pairs: &[(&[u8], &[u8])]) {
    let mut b = Batch::new();
    for (k, v) in pairs {
        b.put(k.to_vec(), v.to_vec());
    }
    s.apply(b).expect("apply");
}

fn keys(entries: &[(Vec<u8>, Vec<u8>)]) -> Vec<Vec<u8>> {
    entries.iter().map(|(k, _)| k.clone()).collect()
}

/// A missing key reads as `None`.
pub fn get_missing(s: &mut impl Storage) {
    assert_eq!(s.get(b"nope").unwrap(), None);
    assert_eq!(s.get(b"").unwrap(), None);
}

/// A put is visible to `get`; an overwrite replaces it.
pub fn put_get_overwrite(s: &mut impl Storage) {
    put(s, &[(b"k", b"v1")]);
    assert_eq!(s.get(b"k").unwrap(), Some(b"v1".to_vec()));
    put(s, &[(b"k", b"v2")]);
    assert_eq!(s.get(b"k").unwrap(), Some(b"v2".to_vec()));
}

/// Empty keys and empty values are ordinary keys and values.
pub fn empty_key_and_value(s: &mut impl Storage) {
    put(s, &[(b"", b"empty key"), (b"e", b"")]);
    assert_eq!(s.get(b"").unwrap(), Some(b"empty key".to_vec()));
    assert_eq!(s.get(b"e").unwrap(), Some(Vec::new()));
    let all = s.scan(&KeyRange::all(), false, 10).unwrap();
    assert_eq!(keys(&all), vec![b"".to_vec(), b"e".to_vec()]);
}

/// Deletes remove a key; deleting a missing key is not an error.
pub fn delete(s: &mut impl Storage) {
    put(s, &[(b"a", b"1"), (b"b", b"2")]);
    let mut b = Batch::new();
    b.delete(b"a".to_vec());
    b.delete(b"missing".to_vec());
    s.apply(b).unwrap();
    assert_eq!(s.get(b"a").unwrap(), None);
    assert_eq!(s.get(b"b").unwrap(), Some(b"2".to_vec()));
}

/// Within one batch the last write to a key wins, whether put or delete.
pub fn last_write_in_batch_wins(s: &mut impl Storage) {
    let mut b = Batch::new();
    b.put(b"x".to_vec(), b"1".to_vec());
    b.put(b"x".to_vec(), b"2".to_vec());
    b.put(b"y".to_vec(), b"1".to_vec());
    b.delete(b"y".to_vec());
    b.delete(b"z".to_vec());
    b.put(b"z".to_vec(), b"3".to_vec());
    s.apply(b).unwrap();
    assert_eq!(s.get(b"x").unwrap(), Some(b"2".to_vec()));
    assert_eq!(s.get(b"y").unwrap(), None);
    assert_eq!(s.get(b"z").unwrap(), Some(b"3".to_vec()));
}

/// An empty batch changes nothing.
pub fn empty_batch(s: &mut impl Storage) {
    put(s, &[(b"a", b"1")]);
    s.apply(Batch::new()).unwrap();
    assert_eq!(s.scan(&KeyRange::all(), false, 10).unwrap().len(), 1);
}

/// Keys order as unsigned bytes, a prefix before its extensions, `00` and `FF` included.
pub fn scan_orders_binary_keys(s: &mut impl Storage) {
    let ks: Vec<&[u8]> = vec![
        &[0xFF, 0xFF],
        &[0x00],
        &[0x01, 0x00],
        &[0x01],
        &[0x80],
        &[0x00, 0x00],
        &[0xFF],
        &[0x7F, 0xFF],
    ];
    let pairs: Vec<(&[u8], &[u8])> = ks.iter().map(|k| (*k, &b"v"[..])).collect();
    put(s, &pairs);
    let mut want: Vec<Vec<u8>> = ks.iter().map(|k| k.to_vec()).collect();
    want.sort();
    let fwd = s.scan(&KeyRange::all(), false, 100).unwrap();
    assert_eq!(keys(&fwd), want);
    let rev = s.scan(&KeyRange::all(), true, 100).unwrap();
    want.reverse();
    assert_eq!(keys(&rev), want);
}

/// Range bounds are honoured: included, excluded and unbounded ends.
pub fn scan_bounds(s: &mut impl Storage) {
    put(s, &[(b"a", b""), (b"b", b""), (b"c", b""), (b"d", b"")]);
    let r = |start, end| KeyRange { start, end };
    let inc = |k: &[u8]| Bound::Included(k.to_vec());
    let exc = |k: &[u8]| Bound::Excluded(k.to_vec());
    let cases = vec![
        (r(inc(b"b"), inc(b"c")), vec!["b", "c"]),
        (r(exc(b"b"), inc(b"d")), vec!["c", "d"]),
        (r(inc(b"b"), exc(b"d")), vec!["b", "c"]),
        (r(Bound::Unbounded, exc(b"c")), vec!["a", "b"]),
        (r(exc(b"c"), Bound::Unbounded), vec!["d"]),
        (r(inc(b"bb"), inc(b"cc")), vec!["c"]),
    ];
    for (range, want) in cases {
        let want: Vec<Vec<u8>> = want.iter().map(|k| k.as_bytes().to_vec()).collect();
        assert_eq!(
            keys(&s.scan(&range, false, 100).unwrap()),
            want,
            "{range:?}"
        );
        let mut rev = want.clone();
        rev.reverse();
        assert_eq!(
            keys(&s.scan(&range, true, 100).unwrap()),
            rev,
            "{range:?} reversed"
        );
    }
    assert_eq!(
        keys(&s.scan(&KeyRange::prefix(b"c"), false, 10).unwrap()),
        vec![b"c".to_vec()]
    );
}

/// An inverted or empty range and a zero limit return nothing, without failing.
pub fn scan_empty_ranges(s: &mut impl Storage) {
    put(s, &[(b"a", b""), (b"b", b"")]);
    let inverted = KeyRange {
        start: Bound::Included(b"b".to_vec()),
        end: Bound::Excluded(b"a".to_vec()),
    };
    assert!(s.scan(&inverted, false, 10).unwrap().is_empty());
    assert!(s.scan(&inverted, true, 10).unwrap().is_empty());
    let point = KeyRange {
        start: Bound::Excluded(b"a".to_vec()),
        end: Bound::Excluded(b"a".to_vec()),
    };
    assert!(s.scan(&point, false, 10).unwrap().is_empty());
    assert!(s.scan(&KeyRange::all(), false, 0).unwrap().is_empty());
}

/// Paging with `after`/`before` visits every key exactly once, in both directions.
pub fn scan_pages(s: &mut impl Storage) {
    let mut b = Batch::new();
    for i in 0..250u32 {
        b.put(i.to_be_bytes().to_vec(), i.to_le_bytes().to_vec());
    }
    s.apply(b).unwrap();
    for reverse in [false, true] {
        let mut range = KeyRange::all();
        let mut seen = Vec::new();
        loop {
            let page = s.scan(&range, reverse, 7).unwrap();
            let Some((last, _)) = page.last() else { break };
            range = if reverse {
                range.before(last)
            } else {
                range.after(last)
            };
            let short = page.len() < 7;
            seen.extend(page.into_iter().map(|(k, v)| {
                assert_eq!(
                    v,
                    u32::from_be_bytes(k.clone().try_into().unwrap()).to_le_bytes()
                );
                k
            }));
            if short {
                break;
            }
        }
        let mut want: Vec<Vec<u8>> = (0..250u32).map(|i| i.to_be_bytes().to_vec()).collect();
        if reverse {
            want.reverse();
        }
        assert_eq!(seen, want, "reverse={reverse}");
    }
}

/// Values of a mebibyte round-trip intact.
pub fn large_values(s: &mut impl Storage) {
    let big: Vec<u8> = (0..(1 << 20))
        .map(|i: u32| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
        .collect();
    put(s, &[(b"big", &big)]);
    assert_eq!(s.get(b"big").unwrap().as_deref(), Some(&big[..]));
}

/// A seeded random workload agrees with a `BTreeMap` model on every read.
pub fn random_model(s: &mut impl Storage) {
    let seed = 0x5EED_0001_u64;
    let mut rng = crate::testing::Rng(seed);
    let mut next = move || rng.next();
    let mut model: BTreeMap<Vec<u8>, Vec<u8>> = BTreeMap::new();
    let key = |r: u64| vec![(r % 4) as u8 * 0x40, ((r >> 8) % 16) as u8];
    for round in 0..200 {
        let mut b = Batch::new();
        for _ in 0..(next() % 8) {
            let r = next();
            let k = key(r);
            if r % 3 == 0 {
                model.remove(&k);
                b.delete(k);
            } else {
                let v = (r >> 16).to_le_bytes().to_vec();
                model.insert(k.clone(), v.clone());
                b.put(k, v);
            }
        }
        s.apply(b).unwrap();
        let (a, z) = (key(next()), key(next()));
        let (lo, hi) = if a <= z { (a, z) } else { (z, a) };
        let range = KeyRange {
            start: Bound::Included(lo.clone()),
            end: Bound::Excluded(hi.clone()),
        };
        let want: Vec<(Vec<u8>, Vec<u8>)> = model
            .range(lo.clone()..hi.clone())
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let limit = (next() % 10) as usize + 1;
        let got = s.scan(&range, round % 2 == 1, limit).unwrap();
        let mut want_page = want.clone();
        if round % 2 == 1 {
            want_page.reverse();
        }
        want_page.truncate(limit);
        assert_eq!(got, want_page, "seed {seed:#x} round {round}");
        let probe = key(next());
        assert_eq!(
            s.get(&probe).unwrap(),
            model.get(&probe).cloned(),
            "seed {seed:#x}"
        );
    }
}

/// `count` agrees with a scan of the same range, and stops at its limit.
pub fn count_agrees_with_scan(s: &mut impl Storage) {
    let mut b = Batch::new();
    for i in 0..300u32 {
        b.put(i.to_be_bytes().to_vec(), vec![]);
    }
    b.delete(7u32.to_be_bytes().to_vec());
    s.apply(b).unwrap();
    let r = |a: u32, z: u32| KeyRange {
        start: Bound::Included(a.to_be_bytes().to_vec()),
        end: Bound::Excluded(z.to_be_bytes().to_vec()),
    };
    for (range, want) in [
        (KeyRange::all(), 299),
        (r(0, 10), 9),
        (r(10, 10), 0),
        (r(20, 10), 0),
        (r(290, 1000), 10),
    ] {
        assert_eq!(s.count(&range, u64::MAX).unwrap(), want, "{range:?}");
        assert_eq!(
            s.scan(&range, false, 1000).unwrap().len() as u64,
            want,
            "{range:?}"
        );
        for limit in [0, 1, 9, 256, 257] {
            assert_eq!(
                s.count(&range, limit).unwrap(),
                want.min(limit),
                "{range:?}"
            );
        }
    }
}

/// Expands to one test function per conformance check, each on a fresh store made by
/// the given expression. `@attr [...]` chooses the test attribute (for example
/// `#[wasm_bindgen_test]` in a browser); the default is `#[test]`.
#[macro_export]
macro_rules! storage_conformance_tests {
    ($make:expr) => {
        $crate::storage_conformance_tests!(@attr [#[test]] $make);
    };
    (@attr [$($attr:tt)*] $make:expr) => {
        $crate::storage_conformance_tests!(@each [$($attr)*] $make;
            get_missing put_get_overwrite empty_key_and_value delete last_write_in_batch_wins
            empty_batch scan_orders_binary_keys scan_bounds scan_empty_ranges scan_pages
            large_values random_model count_agrees_with_scan);
    };
    (@each [$($attr:tt)*] $make:expr;) => {};
    (@each [$($attr:tt)*] $make:expr; $name:ident $($rest:ident)*) => {
        $($attr)*
        fn $name() {
            let mut store = $make;
            $crate::storage::conformance::$name(&mut store);
        }
        $crate::storage_conformance_tests!(@each [$($attr)*] $make; $($rest)*);
    };
}
