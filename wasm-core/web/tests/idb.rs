//! The IndexedDB backend in a real browser (headless Chromium, through
//! wasm-bindgen-test). Every check of the storage conformance suite runs against it,
//! and then the database is reopened and read back from IndexedDB: what it holds must be
//! exactly what the check left, byte for byte and in the same order.
#![cfg(target_arch = "wasm32")]

use std::ops::Bound;

use warren_core::storage::{conformance, Batch, KeyRange, Storage};
use warren_core::ErrorCode;
use warren_web::IdbStore;
use wasm_bindgen_test::*;

wasm_bindgen_test_configure!(run_in_browser);

async fn fresh(name: &str) -> IdbStore {
    IdbStore::delete(name).await.unwrap();
    let mut s = IdbStore::open(name).await.unwrap();
    s.load_all().await.unwrap();
    s
}

/// Runs one conformance check on a fresh database, flushes it, reopens it and compares
/// what IndexedDB returns with what the check left.
async fn check(name: &str, f: fn(&mut IdbStore)) {
    let mut s = fresh(name).await;
    f(&mut s);
    s.flush().await.unwrap();
    let want = s.cached();
    s.close();
    let mut again = IdbStore::open(name).await.unwrap();
    again.load_all().await.unwrap();
    assert_eq!(
        again.cached(),
        want,
        "{name}: IndexedDB holds something else"
    );
    again.close();
    IdbStore::delete(name).await.unwrap();
}

macro_rules! conformance {
    ($($name:ident)*) => {
        $(
            #[wasm_bindgen_test]
            async fn $name() {
                check(concat!("conformance-", stringify!($name)), |s: &mut IdbStore| conformance::$name(s)).await;
            }
        )*
    };
}

conformance!(
    get_missing put_get_overwrite empty_key_and_value delete last_write_in_batch_wins
    empty_batch scan_orders_binary_keys scan_bounds scan_empty_ranges scan_pages
    large_values random_model
);

/// IndexedDB's own range reads follow the engine's byte order: a range loaded from
/// IndexedDB holds exactly the keys the engine's order puts in it.
#[wasm_bindgen_test]
async fn indexeddb_ranges_follow_the_engine_order() {
    let name = "ranges";
    let mut s = fresh(name).await;
    let keys: Vec<Vec<u8>> = vec![
        vec![],
        vec![0],
        vec![0, 0],
        vec![0, 0xFF],
        vec![1],
        vec![0x7F, 0xFF],
        vec![0x80],
        vec![0xFF],
        vec![0xFF, 0xFF, 0],
    ];
    let mut b = Batch::new();
    for k in &keys {
        b.put(k.clone(), k.clone());
    }
    s.apply(b).unwrap();
    s.flush().await.unwrap();
    s.close();
    let ranges = [
        KeyRange {
            start: Bound::Included(vec![0]),
            end: Bound::Excluded(vec![1]),
        },
        KeyRange {
            start: Bound::Excluded(vec![0, 0]),
            end: Bound::Included(vec![0x80]),
        },
        KeyRange::prefix(&[0xFF]),
        KeyRange {
            start: Bound::Unbounded,
            end: Bound::Excluded(vec![0, 0]),
        },
    ];
    for r in ranges {
        let mut fresh_view = IdbStore::open(name).await.unwrap();
        fresh_view.load(&r).await.unwrap();
        let got: Vec<Vec<u8>> = fresh_view.cached().into_iter().map(|(k, _)| k).collect();
        let want: Vec<Vec<u8>> = keys.iter().filter(|k| r.contains(k)).cloned().collect();
        assert_eq!(got, want, "{r:?}");
        fresh_view.close();
    }
    IdbStore::delete(name).await.unwrap();
}

/// Nothing is loaded at open; a read outside what is loaded is reported as a miss, and
/// after loading it the same read finds the data.
#[wasm_bindgen_test]
async fn data_loads_when_a_read_needs_it() {
    let name = "lazy";
    let mut s = fresh(name).await;
    let mut b = Batch::new();
    for p in 0..3u8 {
        for i in 0..100u8 {
            b.put(vec![b'D', p, i], vec![p, i]);
        }
    }
    s.apply(b).unwrap();
    s.flush().await.unwrap();
    s.close();

    let mut s = IdbStore::open(name).await.unwrap();
    assert!(s.cached().is_empty(), "nothing is loaded at open");
    let part1 = KeyRange::prefix(&[b'D', 1]);
    assert_eq!(s.scan(&part1, false, 1000).unwrap().len(), 0);
    assert_eq!(s.take_misses(), vec![part1.clone()]);
    s.load(&part1).await.unwrap();
    assert_eq!(s.scan(&part1, false, 1000).unwrap().len(), 100);
    assert!(s.take_misses().is_empty());
    // Only that range came in.
    assert_eq!(s.cached().len(), 100);
    assert_eq!(s.get(&[b'D', 1, 7]).unwrap(), Some(vec![1, 7]));
    assert!(s.take_misses().is_empty());
    assert_eq!(s.get(&[b'D', 2, 7]).unwrap(), None);
    assert_eq!(s.take_misses().len(), 1);
    s.close();
    IdbStore::delete(name).await.unwrap();
}

/// Ten thousand small records go in with one transaction and come back intact.
#[wasm_bindgen_test]
async fn ten_thousand_records_round_trip() {
    let name = "bulk";
    let mut s = fresh(name).await;
    let mut b = Batch::new();
    for i in 0..10_000u32 {
        b.put(i.to_be_bytes().to_vec(), vec![(i % 251) as u8; 40]);
    }
    s.apply(b).unwrap();
    s.flush().await.unwrap();
    s.close();
    let mut s = IdbStore::open(name).await.unwrap();
    s.load_all().await.unwrap();
    let all = s.cached();
    assert_eq!(all.len(), 10_000);
    assert!(all
        .iter()
        .enumerate()
        .all(|(i, (k, v))| *k == (i as u32).to_be_bytes() && v[0] == (i % 251) as u8));
    s.close();
    IdbStore::delete(name).await.unwrap();
}

/// The browser's QuotaExceededError becomes QUOTA_EXCEEDED; other failures keep their
/// DOMException name in a STORAGE_ERROR.
#[wasm_bindgen_test]
fn indexeddb_errors_keep_their_meaning() {
    let quota =
        web_sys::DomException::new_with_message_and_name("full", "QuotaExceededError").unwrap();
    let e = warren_web::idb::js_err("commit", quota.into());
    assert_eq!(e.code, ErrorCode::QuotaExceeded);
    let other =
        web_sys::DomException::new_with_message_and_name("gone", "InvalidStateError").unwrap();
    let e = warren_web::idb::js_err("commit", other.into());
    assert_eq!(e.code, ErrorCode::Storage);
    assert!(e.message.contains("InvalidStateError"), "{}", e.message);
}

/// Two pages on one database (a frozen leader tab and the tab that took over): once the
/// second claims it, the first one's flushes fail and write nothing, and keep failing.
#[wasm_bindgen_test]
async fn a_store_that_lost_its_claim_writes_nothing() {
    let name = "fence";
    let mut old = fresh(name).await;
    old.claim().await.expect("first claim");
    let mut b = Batch::new();
    b.put(b"k1".to_vec(), b"old".to_vec());
    old.apply(b).unwrap();
    old.flush().await.expect("the leader writes");

    let mut new = IdbStore::open(name).await.expect("open again");
    new.claim().await.expect("second claim");
    let mut b = Batch::new();
    b.put(b"k1".to_vec(), b"stale".to_vec());
    b.put(b"k2".to_vec(), b"stale".to_vec());
    old.apply(b).unwrap();
    let e = old.flush().await.expect_err("the old leader is fenced");
    assert_eq!(e.code, ErrorCode::Storage);
    assert!(old.is_fenced());
    assert!(old.flush().await.is_err(), "and stays fenced");

    let mut b = Batch::new();
    b.put(b"k3".to_vec(), b"new".to_vec());
    new.apply(b).unwrap();
    new.flush().await.expect("the new leader writes");
    let mut check = IdbStore::open(name).await.expect("open to check");
    check.load(&KeyRange::prefix(b"k")).await.unwrap();
    assert_eq!(check.get(b"k1").unwrap(), Some(b"old".to_vec()));
    assert_eq!(check.get(b"k2").unwrap(), None);
    assert_eq!(check.get(b"k3").unwrap(), Some(b"new".to_vec()));
}

/// The misses of one run load together (one read transaction), keys written here are
/// known without a load, and `take_changed` says whether a load found anything new.
#[wasm_bindgen_test]
async fn misses_load_together_and_writes_are_known() {
    let name = "batched-misses";
    let mut s = fresh(name).await;
    let mut b = Batch::new();
    for i in 0..50u8 {
        b.put(vec![b'D', i], vec![i]);
    }
    s.apply(b).unwrap();
    s.flush().await.unwrap();
    s.close();

    let mut s = IdbStore::open(name).await.unwrap();
    // Written here: known at once, no miss.
    let mut b = Batch::new();
    b.put(vec![b'E', 1], vec![1]);
    s.apply(b).unwrap();
    assert_eq!(s.get(&[b'E', 1]).unwrap(), Some(vec![1]));
    assert!(s.take_misses().is_empty());
    // Three point misses (one twice) and one absent key: reported once each.
    for k in [[b'D', 3], [b'D', 7], [b'D', 3], [b'D', 200]] {
        assert_eq!(s.get(&k).unwrap(), None);
    }
    let misses = s.take_misses();
    assert_eq!(misses.len(), 3);
    assert!(!s.take_changed());
    // Loading the first loads them all.
    s.load(&misses[0]).await.unwrap();
    assert!(s.take_changed(), "values came in");
    assert_eq!(s.get(&[b'D', 3]).unwrap(), Some(vec![3]));
    assert_eq!(s.get(&[b'D', 7]).unwrap(), Some(vec![7]));
    assert_eq!(s.get(&[b'D', 200]).unwrap(), None);
    assert!(s.take_misses().is_empty(), "all three are loaded");
    // A load that finds only absences changes nothing.
    assert_eq!(s.get(&[b'D', 201]).unwrap(), None);
    let m = s.take_misses();
    s.load(&m[0]).await.unwrap();
    assert!(!s.take_changed());
    // A range over keys loaded one by one still loads the rest.
    let all = KeyRange::prefix(b"D");
    assert_eq!(s.scan(&all, false, 1000).unwrap().len(), 2);
    assert_eq!(s.take_misses(), vec![all.clone()]);
    s.load(&all).await.unwrap();
    assert_eq!(s.scan(&all, false, 1000).unwrap().len(), 50);
    s.close();
    IdbStore::delete(name).await.unwrap();
}
