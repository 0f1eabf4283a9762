//! What a query reads from its store: no more than its answer needs.
//!
//! 1. `count()` of a collection reads keys, never a document, and counts only what
//!    the read rule allows (the same answer as counting a scan).
//! 2. A scan with `take(n)` asks its store for pages of about `n + 1` entries.
//! 3. An index entry whose document a lazily loaded store has not loaded yet is
//!    skipped (the store recorded the miss; the run is repeated); in a complete store
//!    it is corruption.

mod common;

use std::cell::RefCell;

use common::*;
use warren_core::exec::query;
use warren_core::keys;
use warren_core::storage::{Batch, Entry, KeyRange, MemoryStore, Storage};
use warren_core::value::Value;
use warren_core::{Error, ErrorCode};

/// Reads through to a store, refusing documents when asked to (a `get` or a `scan`
/// of them; counting their keys is not reading them), and keeping the page sizes scans
/// ask for; it may say it is partial.
struct Watched<'a> {
    inner: &'a MemoryStore,
    refuse_docs: bool,
    partial: bool,
    limits: RefCell<Vec<usize>>,
}

impl<'a> Watched<'a> {
    fn new(inner: &'a MemoryStore) -> Watched<'a> {
        Watched {
            inner,
            refuse_docs: false,
            partial: false,
            limits: RefCell::new(Vec::new()),
        }
    }

    fn doc_read(&self, key: &[u8]) -> Result<(), Error> {
        if self.refuse_docs && key.first() == Some(&keys::SPACE_DOC) {
            return Err(Error::new(ErrorCode::Storage, "a document was read"));
        }
        Ok(())
    }
}

impl Storage for Watched<'_> {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, Error> {
        self.doc_read(key)?;
        self.inner.get(key)
    }
    fn scan(&self, range: &KeyRange, reverse: bool, limit: usize) -> Result<Vec<Entry>, Error> {
        let page = self.inner.scan(range, reverse, limit)?;
        for (k, _) in &page {
            self.doc_read(k)?;
        }
        self.limits.borrow_mut().push(limit);
        Ok(page)
    }
    /// A count of keys reads no document: the store counts them as it can (the
    /// memory store walks its keys; IndexedDB counts without reading values).
    fn count(&self, range: &KeyRange, limit: u64) -> Result<u64, Error> {
        self.inner.count(range, limit)
    }
    fn apply(&mut self, _: Batch) -> Result<(), Error> {
        unreachable!("queries only read")
    }
    fn is_partial(&self) -> bool {
        self.partial
    }
}

/// Ann's, bob's and carol's todos (3, 5 and 2), written through the engine.
fn three_users() -> MemoryStore {
    let mut db = db();
    for (who, n) in [("ann", 3), ("bob", 5), ("carol", 2)] {
        let mut c = Client::new(who, user(who));
        for i in 0..n {
            let args = warren_core::value::obj([
                ("id", format!("{who}{i}").into()),
                ("title", "t".into()),
                ("created", Value::Int(i)),
            ]);
            assert_committed(&commit(&mut db, &c.call("addTodo", args)));
        }
    }
    db.into_store()
}

#[test]
fn a_collection_count_reads_no_document_and_only_what_the_rule_allows() {
    let store = three_users();
    let schema = schema();
    let limits = warren_core::eval::Limits::default();
    let mut watched = Watched::new(&store);
    watched.refuse_docs = true;
    for (who, auth, want) in [
        ("ann", user("ann"), 3),
        ("bob", user("bob"), 5),
        ("dave", user("dave"), 0),
        ("admin", admin("root"), 10),
    ] {
        let n = query(&watched, &schema, "Todo.all().count()", &auth, 0, &limits).unwrap();
        assert_eq!(n, Value::Int(want), "{who}");
        let scanned = query(
            &store,
            &schema,
            "Todo.all().toArray().length",
            &auth,
            0,
            &limits,
        )
        .unwrap();
        assert_eq!(n, scanned, "{who}: the count equals the scan's");
    }
    // The scan itself does read documents.
    assert!(query(
        &watched,
        &schema,
        "Todo.all().toArray()",
        &user("ann"),
        0,
        &limits
    )
    .is_err());
}

#[test]
fn a_limited_scan_asks_for_about_what_it_takes() {
    let store = three_users();
    let schema = schema();
    let limits = warren_core::eval::Limits::default();
    let watched = Watched::new(&store);
    let got = query(
        &watched,
        &schema,
        "Todo.byOwner(\"bob\").take(2).map(.id)",
        &user("bob"),
        0,
        &limits,
    )
    .unwrap();
    assert_eq!(got, Value::Array(vec!["bob0".into(), "bob1".into()]));
    assert_eq!(*watched.limits.borrow(), vec![3], "one page of take + 1");
    watched.limits.borrow_mut().clear();
    query(
        &watched,
        &schema,
        "Todo.byOwner(\"bob\").skip(1).take(2).map(.id)",
        &user("bob"),
        0,
        &limits,
    )
    .unwrap();
    assert_eq!(*watched.limits.borrow(), vec![4], "skip + take + 1");
    watched.limits.borrow_mut().clear();
    // A `where` may drop any number: full pages.
    query(
        &watched,
        &schema,
        "Todo.byOwner(\"bob\").where(.done == false).take(2)",
        &user("bob"),
        0,
        &limits,
    )
    .unwrap();
    assert!(watched.limits.borrow()[0] > 3);
}

#[test]
fn an_index_entry_without_its_document_is_a_miss_in_a_partial_store() {
    let mut store = three_users();
    let mut b = Batch::new();
    b.delete(keys::doc_key("Todo", "bob1"));
    store.apply(b).unwrap();
    let schema = schema();
    let limits = warren_core::eval::Limits::default();
    let src = "Todo.byOwner(\"bob\").map(.id)";
    let e = query(&store, &schema, src, &user("bob"), 0, &limits).unwrap_err();
    assert_eq!(e.code, ErrorCode::Corrupt);
    let mut partial = Watched::new(&store);
    partial.partial = true;
    let got = query(&partial, &schema, src, &user("bob"), 0, &limits).unwrap();
    assert_eq!(
        got,
        Value::Array(
            ["bob0", "bob2", "bob3", "bob4"]
                .iter()
                .map(|s| Value::from(*s))
                .collect()
        ),
        "the others are still read (and loaded together, in a browser)"
    );
}
