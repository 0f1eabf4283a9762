//! Writes tagged with a request id are made at most once (a browser tab that forwards
//! its sibling tabs' writes tags them, so a write retried after that tab went away is
//! not made twice): the id survives a reload, goes with a write taken back, and is
//! remembered for the last `KEPT_REQUESTS` writes.

mod common;

use common::{user, SCHEMA};
use warren_core::exec::Op;
use warren_core::replica::{Replica, KEPT_REQUESTS};
use warren_core::storage::MemoryStore;
use warren_core::value::obj;
use warren_core::Value;

fn add(id: &str) -> Op {
    Op::Call {
        function: "addTodo".into(),
        args: obj([
            ("id", id.into()),
            ("title", "t".into()),
            ("created", Value::Int(1)),
        ]),
    }
}

fn replica(store: MemoryStore) -> Replica<MemoryStore> {
    let mut r = Replica::open(store, "tab-client", Some(SCHEMA)).expect("open");
    r.set_auth(user("ann"));
    r
}

#[test]
fn a_request_id_makes_its_write_once() {
    let mut r = replica(MemoryStore::new());
    let first = r.mutate_request(add("a"), 1, Some("rid-1")).unwrap();
    // The same request again (a retry): the same answer, nothing new.
    let again = r.mutate_request(add("a"), 2, Some("rid-1")).unwrap();
    assert_eq!((again.seq, &again.result), (first.seq, &first.result));
    assert_eq!(r.pending().len(), 1);
    // Another id is another write (this one is refused: the id exists).
    assert!(r.mutate_request(add("a"), 3, Some("rid-2")).is_err());
    let b = r.mutate_request(add("b"), 3, Some("rid-3")).unwrap();
    assert_eq!(b.seq, first.seq + 1);
    assert_eq!(r.pending().len(), 2);

    // A reload remembers the ids (they are stored with the outbox entry).
    let mut r = replica(r.into_store());
    let after = r.mutate_request(add("b"), 4, Some("rid-3")).unwrap();
    assert_eq!((after.seq, &after.result), (b.seq, &b.result));
    assert_eq!(r.pending().len(), 2);
    assert_eq!(r.request("rid-1").unwrap().map(|l| l.seq), Some(first.seq));
    assert!(r.request("never").unwrap().is_none());
}

#[test]
fn a_write_taken_back_forgets_its_request_id() {
    let mut r = replica(MemoryStore::new());
    let w = r.mutate_request(add("a"), 1, Some("rid")).unwrap();
    r.forget(w.seq).unwrap();
    assert!(r.request("rid").unwrap().is_none());
    // So the retry makes it, under the same sequence number.
    let again = r.mutate_request(add("a"), 2, Some("rid")).unwrap();
    assert_eq!(again.seq, w.seq);
    assert_eq!(r.pending().len(), 1);
}

#[test]
fn only_the_last_kept_requests_are_remembered() {
    let mut r = replica(MemoryStore::new());
    let n = KEPT_REQUESTS + 10;
    for i in 0..n {
        r.mutate_request(add(&format!("d{i}")), 1, Some(&format!("rid-{i}")))
            .unwrap();
    }
    // A write without an id in between does not disturb the pruning.
    r.mutate(add("plain"), 1).unwrap();
    let remembered = (0..n)
        .filter(|i| r.request(&format!("rid-{i}")).unwrap().is_some())
        .count() as u64;
    assert_eq!(remembered, KEPT_REQUESTS);
    assert!(r.request("rid-0").unwrap().is_none());
    assert!(r.request(&format!("rid-{}", n - 1)).unwrap().is_some());
}
