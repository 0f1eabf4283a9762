//! The IndexedDB backend.
//!
//! The engine is synchronous; IndexedDB is not. [`IdbStore`] bridges them the way the
//! design asks (load before, persist after, never inside):
//!
//! - It implements the engine's [`Storage`] over an in-memory cache of the key ranges
//!   loaded so far. A read outside them answers from the cache (as if absent) and is
//!   recorded as a *miss*; the driver then [`load`](IdbStore::load)s the missed ranges
//!   and runs the query or transaction again. Results of a run with misses are thrown
//!   away, so nothing ever acts on a partial read. Data is thus loaded when a query or a
//!   transaction needs it, range by range, not all at open.
//! - `apply` writes to the cache and queues the batch; [`flush`](IdbStore::flush) writes
//!   everything queued in **one** IndexedDB transaction, issuing every request before
//!   awaiting only the transaction's completion (an IndexedDB transaction commits by
//!   itself when the event loop turns with nothing pending, so nothing else may be
//!   awaited while one is open).
//!
//! Keys are stored as binary keys (`Uint8Array`): IndexedDB orders binary keys byte by
//! byte, the same order as the engine's. Layout and migrations: `docs/STORAGE.md`.

use std::cell::RefCell;
use std::collections::HashSet;
use std::ops::Bound;

use indexed_db_futures::database::Database;
use indexed_db_futures::internals::SystemRepr;
use js_sys::{Array, Uint8Array};
use warren_core::storage::{Batch, Entry, KeyRange, MemoryStore, Storage};
use warren_core::{Error, ErrorCode};
use wasm_bindgen::closure::Closure;
use wasm_bindgen::{JsCast, JsValue};
use web_sys::{IdbKeyRange, IdbRequest, IdbTransaction, IdbTransactionMode};

use crate::migrations;

/// The object store that holds the engine's key space.
pub const KV: &str = "kv";

/// A storage error from IndexedDB, keeping the DOMException's name (for example
/// `QuotaExceededError`, which becomes `QUOTA_EXCEEDED`), so a caller can tell a full
/// disk from a bug.
pub fn js_err(what: &str, e: JsValue) -> Error {
    let name = e
        .dyn_ref::<web_sys::DomException>()
        .map(|d| d.name())
        .or_else(|| e.as_string())
        .unwrap_or_else(|| format!("{e:?}"));
    let code = if name == "QuotaExceededError" {
        ErrorCode::QuotaExceeded
    } else {
        ErrorCode::Storage
    };
    Error::new(code, format!("IndexedDB {what}: {name}"))
}

/// Awaits an IndexedDB request's result.
async fn request(req: IdbRequest) -> Result<JsValue, JsValue> {
    let promise = js_sys::Promise::new(&mut |resolve, reject| {
        let ok_req = req.clone();
        let ok = Closure::once_into_js(move |_: web_sys::Event| {
            let _ = resolve.call1(
                &JsValue::NULL,
                &ok_req.result().unwrap_or(JsValue::UNDEFINED),
            );
        });
        let err_req = req.clone();
        let err = Closure::once_into_js(move |_: web_sys::Event| {
            let e = err_req
                .error()
                .ok()
                .flatten()
                .map(JsValue::from)
                .unwrap_or(JsValue::UNDEFINED);
            let _ = reject.call1(&JsValue::NULL, &e);
        });
        req.set_onsuccess(Some(ok.unchecked_ref()));
        req.set_onerror(Some(err.unchecked_ref()));
    });
    wasm_bindgen_futures::JsFuture::from(promise).await
}

fn fenced() -> Error {
    Error::new(
        ErrorCode::Storage,
        "another tab has taken over this database; this one writes no more",
    )
}

/// Awaits a transaction's completion (or its abort).
async fn complete(tx: &IdbTransaction) -> Result<(), JsValue> {
    let promise = js_sys::Promise::new(&mut |resolve, reject| {
        let ok = Closure::once_into_js(move |_: web_sys::Event| {
            let _ = resolve.call0(&JsValue::NULL);
        });
        let err_tx = tx.clone();
        let reject2 = reject.clone();
        let err = Closure::once_into_js(move |_: web_sys::Event| {
            let e = err_tx
                .error()
                .map(JsValue::from)
                .unwrap_or(JsValue::UNDEFINED);
            let _ = reject.call1(&JsValue::NULL, &e);
        });
        let abort_tx = tx.clone();
        let abort = Closure::once_into_js(move |_: web_sys::Event| {
            let e = abort_tx
                .error()
                .map(JsValue::from)
                .unwrap_or_else(|| JsValue::from_str("AbortError"));
            let _ = reject2.call1(&JsValue::NULL, &e);
        });
        tx.set_oncomplete(Some(ok.unchecked_ref()));
        tx.set_onerror(Some(err.unchecked_ref()));
        tx.set_onabort(Some(abort.unchecked_ref()));
    });
    wasm_bindgen_futures::JsFuture::from(promise)
        .await
        .map(|_| ())
}

fn key(k: &[u8]) -> Uint8Array {
    Uint8Array::from(k)
}

/// The IndexedDB key range for an engine key range (`None`: every key).
fn idb_range(r: &KeyRange) -> Result<Option<IdbKeyRange>, Error> {
    let e = |x| js_err("key range", x);
    Ok(match (&r.start, &r.end) {
        (Bound::Unbounded, Bound::Unbounded) => None,
        (Bound::Unbounded, Bound::Included(b)) => {
            Some(IdbKeyRange::upper_bound_with_open(&key(b), false).map_err(e)?)
        }
        (Bound::Unbounded, Bound::Excluded(b)) => {
            Some(IdbKeyRange::upper_bound_with_open(&key(b), true).map_err(e)?)
        }
        (Bound::Included(a), Bound::Unbounded) => {
            Some(IdbKeyRange::lower_bound_with_open(&key(a), false).map_err(e)?)
        }
        (Bound::Excluded(a), Bound::Unbounded) => {
            Some(IdbKeyRange::lower_bound_with_open(&key(a), true).map_err(e)?)
        }
        (s, t) => {
            let (a, ao) = match s {
                Bound::Included(a) => (a, false),
                Bound::Excluded(a) => (a, true),
                Bound::Unbounded => unreachable!("handled above"),
            };
            let (b, bo) = match t {
                Bound::Included(b) => (b, false),
                Bound::Excluded(b) => (b, true),
                Bound::Unbounded => unreachable!("handled above"),
            };
            Some(
                IdbKeyRange::bound_with_lower_open_and_upper_open(&key(a), &key(b), ao, bo)
                    .map_err(e)?,
            )
        }
    })
}

/// Lower bounds ordered from "starts lowest": Unbounded, then by key, Included
/// before Excluded.
fn lower_le(a: &Bound<Vec<u8>>, b: &Bound<Vec<u8>>) -> bool {
    match (a, b) {
        (Bound::Unbounded, _) => true,
        (_, Bound::Unbounded) => false,
        (Bound::Included(x), Bound::Included(y) | Bound::Excluded(y)) => x <= y,
        (Bound::Excluded(x), Bound::Excluded(y)) => x <= y,
        (Bound::Excluded(x), Bound::Included(y)) => x < y,
    }
}

/// Upper bounds ordered from "ends highest": Unbounded, then by key, Included after
/// Excluded.
fn upper_ge(a: &Bound<Vec<u8>>, b: &Bound<Vec<u8>>) -> bool {
    match (a, b) {
        (Bound::Unbounded, _) => true,
        (_, Bound::Unbounded) => false,
        (Bound::Included(x), Bound::Included(y) | Bound::Excluded(y)) => x >= y,
        (Bound::Excluded(x), Bound::Excluded(y)) => x >= y,
        (Bound::Excluded(x), Bound::Included(y)) => x > y,
    }
}

fn covers(outer: &KeyRange, inner: &KeyRange) -> bool {
    inner.is_empty() || (lower_le(&outer.start, &inner.start) && upper_ge(&outer.end, &inner.end))
}

/// The single key a range covers, if it is a point (`[k, k]`).
fn as_point(r: &KeyRange) -> Option<&[u8]> {
    match (&r.start, &r.end) {
        (Bound::Included(a), Bound::Included(b)) if a == b => Some(a),
        _ => None,
    }
}

/// What the cache holds exactly as IndexedDB does (or newer): ranges loaded, and single
/// keys loaded or written here. Point reads (`byId`, a document behind an index entry)
/// are most reads, so points are a hash set: checking one costs a lookup, not a walk
/// over every range loaded so far.
#[derive(Default)]
struct Loaded {
    points: HashSet<Vec<u8>>,
    /// Non-point ranges, none covered by another.
    ranges: Vec<KeyRange>,
}

impl Loaded {
    fn covers(&self, range: &KeyRange) -> bool {
        if let Some(k) = as_point(range) {
            if self.points.contains(k) {
                return true;
            }
        }
        self.ranges.iter().any(|l| covers(l, range))
    }

    fn add(&mut self, range: KeyRange) {
        if let Some(k) = as_point(&range) {
            self.points.insert(k.to_vec());
            return;
        }
        if self.ranges.iter().any(|l| covers(l, &range)) {
            return;
        }
        self.ranges.retain(|l| !covers(&range, l));
        self.ranges.push(range);
    }
}

/// The engine's key space in one IndexedDB object store, cached in memory by range.
pub struct IdbStore {
    db: Database,
    name: String,
    cache: MemoryStore,
    loaded: Loaded,
    misses: RefCell<Vec<KeyRange>>,
    /// The misses last handed out by [`IdbStore::take_misses`] and not loaded yet: the
    /// next [`IdbStore::load`] reads them all in the same IndexedDB transaction, so a
    /// query that missed 50 documents costs one transaction, not 50 in a row.
    prefetch: RefCell<Vec<KeyRange>>,
    /// Whether a load since the last [`IdbStore::take_changed`] found a value the cache
    /// did not hold (a load that only confirms absences changes nothing read before).
    changed: bool,
    /// Writes not yet in IndexedDB, by key: a later write replaces an earlier one, so a
    /// write taken back before it was flushed costs nothing.
    pending: std::collections::BTreeMap<Vec<u8>, Option<Vec<u8>>>,
    /// The leader epoch this store claimed ([`IdbStore::claim`]): every flush checks, in
    /// its own transaction, that no other page has claimed the database since.
    epoch: Option<f64>,
    /// A flush found the database claimed by another page: this store writes no more.
    fenced: bool,
}

/// Where the leader epoch lives: outside the engine's key spaces, read and written only
/// by [`IdbStore::claim`] and [`IdbStore::flush`].
const EPOCH_KEY: &[u8] = b"\xFFleader-epoch";

fn epoch_of(v: &JsValue) -> f64 {
    v.as_f64().unwrap_or(0.0)
}

impl IdbStore {
    /// Opens (creating or upgrading) the database `name`. Nothing is loaded yet.
    pub async fn open(name: &str) -> Result<IdbStore, Error> {
        let db = Database::open(name)
            .with_version(migrations::VERSION)
            .with_on_upgrade_needed(|ev, db| migrations::upgrade(ev.old_version() as u32, &db))
            .await
            .map_err(|e| Error::new(ErrorCode::Storage, format!("IndexedDB open {name}: {e}")))?;
        Ok(IdbStore {
            db,
            name: name.to_owned(),
            cache: MemoryStore::new(),
            loaded: Loaded::default(),
            misses: RefCell::new(Vec::new()),
            prefetch: RefCell::new(Vec::new()),
            changed: false,
            pending: Default::default(),
            epoch: None,
            fenced: false,
        })
    }

    /// Claims the database for this page (the tab that leads for all tabs of an
    /// origin): bumps the leader epoch in IndexedDB. From then on a flush succeeds only
    /// while the epoch is still this one, so a page that lost the lead (frozen, then
    /// thawed) can never write over the new leader's data.
    pub async fn claim(&mut self) -> Result<f64, Error> {
        let tx = self
            .db
            .as_sys()
            .transaction_with_str_and_mode(KV, IdbTransactionMode::Readwrite)
            .map_err(|e| js_err("claim transaction", e))?;
        let store = tx.object_store(KV).map_err(|e| js_err("object store", e))?;
        let get = store
            .get(&key(EPOCH_KEY))
            .map_err(|e| js_err("read the epoch", e))?;
        let now = epoch_of(
            &request(get)
                .await
                .map_err(|e| js_err("read the epoch", e))?,
        ) + 1.0;
        store
            .put_with_key(&JsValue::from_f64(now), &key(EPOCH_KEY))
            .map_err(|e| js_err("write the epoch", e))?;
        complete(&tx).await.map_err(|e| js_err("claim", e))?;
        self.epoch = Some(now);
        Ok(now)
    }

    /// Whether another page has claimed the database since this store did.
    pub fn is_fenced(&self) -> bool {
        self.fenced
    }

    /// Deletes the database `name` (for tests and "sign out").
    pub async fn delete(name: &str) -> Result<(), Error> {
        let factory = web_sys::window()
            .and_then(|w| w.indexed_db().ok().flatten())
            .ok_or_else(|| Error::new(ErrorCode::Storage, "IndexedDB is not available"))?;
        let req = factory
            .delete_database(name)
            .map_err(|e| js_err("delete", e))?;
        request(req.unchecked_into())
            .await
            .map_err(|e| js_err("delete", e))?;
        Ok(())
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Closes the connection (so the database can be deleted or upgraded).
    pub fn close(self) {
        self.db.as_sys().close();
    }

    /// The reads since the last call that fell outside what is loaded (each once). A
    /// run with misses must be repeated after [`IdbStore::load`]ing them; the first
    /// `load` after this call loads them all at once.
    pub fn take_misses(&self) -> Vec<KeyRange> {
        let mut misses = std::mem::take(&mut *self.misses.borrow_mut());
        let mut seen = HashSet::new();
        misses.retain(|m| seen.insert((m.start.clone(), m.end.clone())));
        *self.prefetch.borrow_mut() = misses.clone();
        misses
    }

    /// Whether a load since the last call brought in anything the cache did not hold.
    /// When not, whatever ran on the cache before the load saw the same data (every
    /// miss was a key IndexedDB does not have either, such as a new document's id), so
    /// a view built then needs no rebuilding.
    pub fn take_changed(&mut self) -> bool {
        std::mem::take(&mut self.changed)
    }

    fn is_loaded(&self, range: &KeyRange) -> bool {
        self.loaded.covers(range)
    }

    fn check(&self, range: KeyRange) {
        if !self.is_loaded(&range) {
            self.misses.borrow_mut().push(range);
        }
    }

    /// Loads a key range from IndexedDB into the cache (first writing what is queued, so
    /// nothing newer is overwritten by something older), together with the misses last
    /// taken that are still not loaded, all in one read transaction: every request is
    /// issued before any is awaited.
    pub async fn load(&mut self, range: &KeyRange) -> Result<(), Error> {
        if self.is_loaded(range) {
            return Ok(());
        }
        self.flush().await?;
        let mut ranges = vec![range.clone()];
        for m in std::mem::take(&mut *self.prefetch.borrow_mut()) {
            if !self.is_loaded(&m) && !ranges.contains(&m) {
                ranges.push(m);
            }
        }
        let tx = self
            .db
            .as_sys()
            .transaction_with_str(KV)
            .map_err(|e| js_err("read transaction", e))?;
        let store = tx.object_store(KV).map_err(|e| js_err("object store", e))?;
        enum Pending {
            Point(Vec<u8>, IdbRequest),
            Range(IdbRequest, IdbRequest),
        }
        let mut pending = Vec::with_capacity(ranges.len());
        for r in &ranges {
            if let Some(k) = as_point(r) {
                let req = store.get(&key(k)).map_err(|e| js_err("get", e))?;
                pending.push(Pending::Point(k.to_vec(), req));
                continue;
            }
            let (keys, values) = match idb_range(r)? {
                Some(r) => (store.get_all_keys_with_key(&r), store.get_all_with_key(&r)),
                None => (store.get_all_keys(), store.get_all()),
            };
            pending.push(Pending::Range(
                keys.map_err(|e| js_err("getAllKeys", e))?,
                values.map_err(|e| js_err("getAll", e))?,
            ));
        }
        let mut batch = Batch::new();
        for p in pending {
            match p {
                Pending::Point(k, req) => {
                    let v = request(req).await.map_err(|e| js_err("get", e))?;
                    if !v.is_undefined() {
                        batch.put(k, Uint8Array::new(&v).to_vec());
                    }
                }
                Pending::Range(keys, values) => {
                    let keys: Array = request(keys)
                        .await
                        .map_err(|e| js_err("getAllKeys", e))?
                        .unchecked_into();
                    let values: Array = request(values)
                        .await
                        .map_err(|e| js_err("getAll", e))?
                        .unchecked_into();
                    if keys.length() != values.length() {
                        return Err(Error::new(
                            ErrorCode::Storage,
                            "IndexedDB returned keys and values of different lengths",
                        ));
                    }
                    for i in 0..keys.length() {
                        let k = Uint8Array::new(&keys.get(i)).to_vec();
                        let v = Uint8Array::new(&values.get(i)).to_vec();
                        batch.put(k, v);
                    }
                }
            }
        }
        if !self.changed {
            for (k, v) in &batch.ops {
                if self.cache.get(k)?.as_ref() != v.as_ref() {
                    self.changed = true;
                    break;
                }
            }
        }
        self.cache.apply(batch)?;
        for r in ranges {
            self.loaded.add(r);
        }
        Ok(())
    }

    /// Loads several ranges in one read transaction (for example every document a
    /// server frame touches), instead of one transaction per range.
    pub async fn load_many(&mut self, ranges: &[KeyRange]) -> Result<(), Error> {
        let mut todo = ranges.iter().filter(|r| !self.is_loaded(r));
        let Some(first) = todo.next() else {
            return Ok(());
        };
        self.prefetch.borrow_mut().extend(todo.cloned());
        self.load(first).await
    }

    /// Loads everything.
    pub async fn load_all(&mut self) -> Result<(), Error> {
        self.load(&KeyRange::all()).await
    }

    /// Whether writes are queued and not yet in IndexedDB.
    pub fn has_unflushed(&self) -> bool {
        !self.pending.is_empty()
    }

    /// Writes everything queued in one IndexedDB transaction; when it returns `Ok`, the
    /// writes are committed. On an error nothing of the batch is kept by IndexedDB
    /// (the transaction aborts), and the queue is kept for another try.
    pub async fn flush(&mut self) -> Result<(), Error> {
        if self.pending.is_empty() {
            return Ok(());
        }
        if self.fenced {
            return Err(fenced());
        }
        let tx = self
            .db
            .as_sys()
            .transaction_with_str_and_mode(KV, IdbTransactionMode::Readwrite)
            .map_err(|e| js_err("write transaction", e))?;
        let store = tx.object_store(KV).map_err(|e| js_err("object store", e))?;
        if let Some(mine) = self.epoch {
            // Read the epoch in this same transaction: IndexedDB runs read-write
            // transactions on a store one at a time, so no claim can slip in between.
            let get = store
                .get(&key(EPOCH_KEY))
                .map_err(|e| js_err("read the epoch", e))?;
            let now = request(get)
                .await
                .map_err(|e| js_err("read the epoch", e))?;
            if epoch_of(&now) != mine {
                let _ = tx.abort();
                self.fenced = true;
                return Err(fenced());
            }
        }
        for (k, v) in &self.pending {
            let r = match v {
                Some(v) => store.put_with_key(&key(v), &key(k)).map(|_| ()),
                None => store.delete(&key(k)).map(|_| ()),
            };
            if let Err(e) = r {
                let _ = tx.abort();
                return Err(js_err("write", e));
            }
        }
        complete(&tx).await.map_err(|e| js_err("commit", e))?;
        self.pending.clear();
        Ok(())
    }

    /// Every cached entry (for tests).
    pub fn cached(&self) -> Vec<Entry> {
        self.cache
            .entries()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }
}

impl Storage for IdbStore {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, Error> {
        self.check(KeyRange {
            start: Bound::Included(key.to_vec()),
            end: Bound::Included(key.to_vec()),
        });
        self.cache.get(key)
    }

    fn scan(&self, range: &KeyRange, reverse: bool, limit: usize) -> Result<Vec<Entry>, Error> {
        if limit > 0 {
            self.check(range.clone());
        }
        self.cache.scan(range, reverse, limit)
    }

    fn apply(&mut self, batch: Batch) -> Result<(), Error> {
        for (k, v) in &batch.ops {
            self.pending.insert(k.clone(), v.clone());
            // The cache now holds this key's newest value (or its absence): reading it
            // again needs no trip to IndexedDB.
            self.loaded.points.insert(k.clone());
        }
        self.cache.apply(batch)
    }
}
