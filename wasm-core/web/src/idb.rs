//! The IndexedDB backend.
//!
//! The engine is synchronous; IndexedDB is not. [`IdbStore`] bridges them the way the
//! design asks (load before, persist after, never inside):
//!
//! - It implements the engine's [`Storage`] over an in-memory **cache** of what has
//!   been loaded. [`Spans`] say which key ranges the cache holds exactly as IndexedDB
//!   does. A read outside them answers from what is held and is recorded as a **miss**
//!   ([`Miss`]); the driver loads the misses of a run ([`IdbStore::begin_load`], all in
//!   one read transaction) and runs again. Results of a run with misses are thrown away,
//!   so nothing acts on a partial read.
//! - **Loads are as large as the read.** A scan that asks for `n` entries and misses
//!   loads about `n` (an engine page of an unbounded scan loads 256, then four times
//!   more each time the same scan continues); a `count` of a range is IndexedDB's own
//!   count, with no record read; a point is one `get`.
//! - **Absent keys need no read.** A [`Filter`] of every key ever written says when a
//!   key is certainly absent (a create with a fresh id), and the cache takes it as
//!   loaded.
//! - **Writes** go to the cache and a queue; [`IdbStore::begin_flush`] issues everything
//!   queued as **one** read-write transaction and returns at once: the transaction
//!   commits while the engine goes on (IndexedDB runs a store's read-write transactions
//!   one at a time, in order, and a read issued later sees them). Its completion is
//!   reported through the notifier the driver gave, and [`IdbStore::settle_flushes`]
//!   says which writes are durable. A failed flush puts its writes back in the queue.
//!   A small flush is one **write-ahead record** in `meta` (`crate::wal`) rather than
//!   a request per key; the records are applied to `kv` together later (and over it in
//!   memory at open), and an apply deletes every record issued before it, so `kv` never
//!   holds a value newer than a record left. A load that reads a range holding a
//!   record's write applies the records first ([`IdbStore::begin_load`]).
//! - **Bounded memory.** The cache has a byte cap ([`DEFAULT_CACHE_BYTES`] unless the
//!   driver sets another), over its entries and the spans that say what it holds (an
//!   absence is a span with no entry): past it, the spans used least recently are
//!   evicted (never
//!   what is not yet durable, the replica's own small key spaces, or what an operation
//!   in progress has used).
//!
//! Keys are stored as binary keys (`Uint8Array`): IndexedDB orders binary keys byte by
//! byte, the same order as the engine's. Layout and migrations: `docs/STORAGE.md`.

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use std::future::Future;
use std::ops::Bound;
use std::rc::Rc;

use futures_channel::oneshot;
use js_sys::{Array, Promise, Uint8Array};
use warren_core::storage::{Batch, Entry, KeyRange, Storage};
use warren_core::{Error, ErrorCode};
use wasm_bindgen::closure::Closure;
use wasm_bindgen::prelude::wasm_bindgen;
use wasm_bindgen::{JsCast, JsValue};
use wasm_bindgen_futures::JsFuture;
use web_sys::{
    IdbCursorDirection, IdbCursorWithValue, IdbDatabase, IdbFactory, IdbKeyRange, IdbOpenDbRequest,
    IdbRequest, IdbRequestReadyState, IdbTransaction, IdbTransactionMode,
};

use crate::filter::{self, Filter};
use crate::migrations;
use crate::pack;
use crate::spans::{normalize, successor, End, Spans};
use crate::wal::{self, Writes};

/// The object store that holds the engine's key space.
const KV: &str = "kv";
/// The object store that holds the backend's own records: the key filter.
const META: &str = "meta";

/// The cache's byte cap unless the driver sets one: 64 MiB.
pub const DEFAULT_CACHE_BYTES: usize = 64 << 20;
/// Bytes counted per cached entry besides its key and value (the map's node share).
const ENTRY_OVERHEAD: usize = 48;
/// Eviction walks a span's entries this many keys at a time.
const EVICT_KEYS_AT_ONCE: usize = 1024;
/// A scan that asks for fewer entries than this is a limited one (`take(n)`): it loads
/// exactly what it asked for. One that asks for a whole engine page loads at least
/// [`FIRST_CHUNK`], and [`GROWTH`] times more each time it continues.
const LIMITED: usize = 64;
const FIRST_CHUNK: usize = 256;
const GROWTH: usize = 4;
const MAX_CHUNK: usize = 16_384;
/// A collection or index is read ahead whole when it holds at most `cap / this`
/// entries (16,384 at the default cap): about a sixteenth of the cap at 256 bytes each.
const READAHEAD_ENTRY_BYTES: usize = 4096;
/// Counts of ranges kept at most.
const MAX_COUNTS: usize = 4096;
/// A flush of at most this many writes and bytes is one write-ahead record (`wal.rs`),
/// while the records not yet applied to `kv` are fewer than [`WAL_RECORDS`] and hold
/// less than [`WAL_BYTES`]; past either, or for a larger flush, the flush applies them
/// (a large flush is written once, not as a record and then again).
const WAL_WRITES: usize = 64;
const WAL_WRITE_BYTES: usize = 16 << 10;
const WAL_RECORDS: u64 = 128;
const WAL_BYTES: usize = 1 << 20;
/// Key spaces never evicted: the replica's own records (client, outbox, cursors,
/// requests), read at open and small.
const PINNED: &[u8] = b"KOQX";

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

/// Awaits an IndexedDB request's result (its error, if it failed). The request's own
/// handlers resolve the promise: no closure is made or leaked per request.
async fn request(req: &IdbRequest) -> Result<JsValue, JsValue> {
    // Answered already (its event went by before anyone listened: a load awaits its
    // requests in its own order, not always in the order they were made).
    if req.ready_state() == IdbRequestReadyState::Done {
        return match req.error() {
            Ok(Some(e)) => Err(e.into()),
            _ => req.result(),
        };
    }
    let p = Promise::new(&mut |resolve, reject| {
        req.set_onsuccess(Some(&resolve));
        req.set_onerror(Some(&reject));
    });
    match JsFuture::from(p).await {
        Ok(_) => req.result(),
        Err(_) => Err(req
            .error()
            .ok()
            .flatten()
            .map(JsValue::from)
            .unwrap_or(JsValue::UNDEFINED)),
    }
}

/// Awaits a transaction's completion (or its abort).
async fn complete(tx: &IdbTransaction) -> Result<(), JsValue> {
    let p = Promise::new(&mut |resolve, reject| {
        tx.set_oncomplete(Some(&resolve));
        tx.set_onerror(Some(&reject));
        tx.set_onabort(Some(&reject));
    });
    match JsFuture::from(p).await {
        Ok(_) => Ok(()),
        Err(_) => Err(tx
            .error()
            .map(JsValue::from)
            .unwrap_or_else(|| JsValue::from_str("AbortError"))),
    }
}

fn fenced() -> Error {
    Error::new(
        ErrorCode::Storage,
        "another tab has taken over this database; this one writes no more",
    )
}

fn key(k: &[u8]) -> Uint8Array {
    Uint8Array::from(k)
}

/// Deletes `[first, last]` from `store`: one key, or every key of the range.
fn delete_run(
    store: &web_sys::IdbObjectStore,
    (first, last): (&[u8], &[u8]),
) -> Result<(), JsValue> {
    if first == last {
        store.delete(&key(first))?;
    } else {
        let r = IdbKeyRange::bound_with_lower_open_and_upper_open(
            &key(first),
            &key(last),
            false,
            false,
        )?;
        store.delete(&r)?;
    }
    Ok(())
}

/// IndexedDB in this global scope (a page or a worker).
fn factory() -> Result<IdbFactory, Error> {
    let global = js_sys::global();
    js_sys::Reflect::get(&global, &"indexedDB".into())
        .ok()
        .filter(|f| !f.is_undefined() && !f.is_null())
        .map(|f| f.unchecked_into())
        .ok_or_else(|| Error::new(ErrorCode::Storage, "IndexedDB is not available here"))
}

/// The IndexedDB key range for an engine key range (`undefined`: every key).
fn idb_range(r: &KeyRange) -> Result<JsValue, Error> {
    let e = |x| js_err("key range", x);
    let Some((start, end)) = normalize(r) else {
        return Err(Error::new(ErrorCode::Storage, "an empty range"));
    };
    Ok(match (start.is_empty(), end) {
        (true, End::Unbounded) => JsValue::UNDEFINED,
        (true, End::Before(b)) => IdbKeyRange::upper_bound_with_open(&key(&b), true)
            .map_err(e)?
            .into(),
        (false, End::Unbounded) => IdbKeyRange::lower_bound(&key(&start)).map_err(e)?.into(),
        (false, End::Before(b)) => {
            IdbKeyRange::bound_with_lower_open_and_upper_open(&key(&start), &key(&b), false, true)
                .map_err(e)?
                .into()
        }
    })
}

/// The document key an index entry key names, if it is one.
pub type DocOf = Rc<dyn Fn(&[u8]) -> Option<Vec<u8>>>;

/// A read the cache could not answer exactly.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Miss {
    /// One key.
    Point(Vec<u8>),
    /// The first `limit` entries of a range, from its start (or from its end when
    /// `reverse`); `usize::MAX`: all of it.
    Scan {
        range: KeyRange,
        reverse: bool,
        limit: usize,
    },
    /// How many keys a range holds.
    Count(KeyRange),
}

impl Miss {
    /// The whole of `range`.
    pub fn range(range: KeyRange) -> Miss {
        Miss::Scan {
            range,
            reverse: false,
            limit: usize::MAX,
        }
    }
}

/// Counters of what the store did, for tests, profiles and the benchmark.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IdbStats {
    /// Read transactions, and the requests and records they read.
    pub load_transactions: u64,
    pub load_requests: u64,
    pub records_loaded: u64,
    /// Point reads answered by the filter ("certainly absent"), with no load.
    pub absent_by_filter: u64,
    /// Write transactions, and those that failed; of them, those that applied the
    /// write-ahead records to `kv` (the others each wrote one record).
    pub flushes: u64,
    pub failed_flushes: u64,
    pub applies: u64,
    /// Writes the write transactions requested (a put, a delete of a key or of a run
    /// of keys, a record, the records' deletion).
    pub write_requests: u64,
    /// Evicted bytes, in all.
    pub evicted_bytes: u64,
    /// At open: opening (and upgrading) the database, then the one transaction that
    /// claims it and reads the filter's meta record, the write-ahead records and the
    /// replica's own keys (ms).
    pub open_db_ms: u64,
    pub open_read_ms: u64,
    /// Now: the cache's bytes (its entries and its spans: what the cap bounds) and
    /// entries, its spans, writes not yet durable, keys durable in write-ahead records
    /// not yet applied, the filter's bytes and whether its pages are read in.
    pub cache_bytes: u64,
    pub cache_entries: u64,
    pub spans: u64,
    pub unwritten: u64,
    pub unapplied: u64,
    pub filter_bytes: u64,
    pub filter_loaded: bool,
}

/// The write-ahead records read at open, merged in order.
#[derive(Default)]
struct Replay {
    writes: Writes,
    records: u64,
    bytes: usize,
    /// The number after the last record's.
    next: u64,
}

/// What a flush writes.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Kind {
    /// One write-ahead record, in `meta`.
    Record,
    /// The records not yet applied, the flushes in flight and the queue, to `kv`; the
    /// records deleted.
    Apply,
    /// The queue alone, to `kv` (when no record may hold writes `kv` lacks).
    Direct,
}

/// A flush issued and not yet settled.
struct InFlight {
    id: u64,
    /// The write generation it made durable (every write up to it, once it succeeds).
    gen: u64,
    /// `Some(n)`: it writes the write-ahead record `n`; `None`: it writes to `kv`.
    record: Option<u64>,
    /// It is an apply: it deletes the records issued before it (and writes what they
    /// and the flushes then in flight wrote).
    took_records: bool,
    /// What it writes (an apply: everything not known to be in `kv` when issued).
    writes: Writes,
    /// The key filter's records it writes (taken as it was issued, or, when the
    /// filter's pages were not read in then, once its own transaction read them).
    filter_records: Rc<RefCell<Vec<Entry>>>,
    done: Rc<RefCell<Option<Result<(), Error>>>>,
    /// It found the database claimed by another page.
    fenced: Rc<Cell<bool>>,
    /// Committed to: `commit()` was called with every write issued (after the epoch
    /// matched), so it completes even if this page or worker is ended next.
    committed: Rc<Cell<bool>>,
    /// Fires when it completes (for [`IdbStore::flush`]).
    finished: Option<oneshot::Receiver<()>>,
}

/// What [`IdbStore::settle_flushes`] found.
#[derive(Debug, Default)]
pub struct Settled {
    /// Every write up to this generation is durable.
    pub durable_gen: u64,
    /// The first error of a failed flush (its writes are queued again).
    pub error: Option<Error>,
}

/// The engine's key space in one IndexedDB object store, cached in memory. See the
/// module documentation.
pub struct IdbStore {
    db: IdbDatabase,
    name: String,
    cache: BTreeMap<Vec<u8>, Vec<u8>>,
    cache_bytes: usize,
    cap: usize,
    spans: RefCell<Spans>,
    /// The clock of use: each operation starts a new tick.
    tick: Cell<u64>,
    /// Operations in progress, by their first tick: what they used is not evicted.
    ops: RefCell<BTreeMap<u64, u32>>,
    misses: RefCell<Vec<Miss>>,
    /// Read in after open (see [`IdbStore::load_filter`]) or by the first flush that
    /// writes to `kv`.
    filter: Rc<RefCell<Filter>>,
    /// Flushes issued before the filter's pages were read in that will read them in
    /// their own transaction and have not yet: a read of them made apart is not taken
    /// meanwhile (such a flush writes the pages of every key written before it).
    filter_readers: Rc<Cell<u32>>,
    /// Counts IndexedDB gave for ranges, kept up to date by writes whose effect on
    /// them is known.
    counts: RefCell<Vec<(KeyRange, u64)>>,
    /// Writes not yet issued, by key: a later write replaces an earlier one.
    dirty: Writes,
    in_flight: VecDeque<InFlight>,
    /// Writes durable in write-ahead records and in no apply issued since, newest per
    /// key; the records' count and bytes (since the last apply was issued).
    wal: Writes,
    wal_records: u64,
    wal_bytes: usize,
    /// The number of the next record; every record below `wal_applied` is in an apply
    /// issued (its writes are there).
    wal_next: u64,
    wal_applied: u64,
    /// An apply failed (its writes are queued again; its records are still there) and
    /// none succeeded since.
    wal_stale: bool,
    next_flush: u64,
    /// Generation of the last write (one per applied batch).
    write_gen: u64,
    durable_gen: u64,
    /// Loads in flight, and the generation of keys written while any was.
    loads_out: usize,
    recent: HashMap<Vec<u8>, u64>,
    /// The end of the last chunk a continuing scan loaded: `(boundary, reverse, size)`.
    continuation: RefCell<Option<(Vec<u8>, bool, usize)>>,
    /// Families (a collection's documents, an index) already considered for reading
    /// ahead in this session.
    readahead: HashSet<Vec<u8>>,
    /// Called when a flush is committed to and when it completes (the driver then
    /// reports what waited for either, and settles the completed).
    notify: Option<Rc<dyn Fn()>>,
    /// The document an index entry names (the driver knows the indexes' fields).
    doc_of: Option<DocOf>,
    epoch: Option<f64>,
    fenced: bool,
    stats: Rc<RefCell<IdbStats>>,
}

/// Where the leader epoch lives: outside the engine's key spaces, read and written only
/// by [`IdbStore::claim`] and each flush.
const EPOCH_KEY: &[u8] = b"\xFFleader-epoch";

fn epoch_of(v: &JsValue) -> f64 {
    v.as_f64().unwrap_or(0.0)
}

fn entry_bytes(k: &[u8], v: &[u8]) -> usize {
    ENTRY_OVERHEAD + k.len() + v.len()
}

/// The keys two ranges share, if any.
fn intersect(a: &KeyRange, b: &KeyRange) -> Option<KeyRange> {
    let (sa, ea) = normalize(a)?;
    let (sb, eb) = normalize(b)?;
    let start = sa.max(sb);
    let end = match (ea, eb) {
        (End::Unbounded, e) | (e, End::Unbounded) => e,
        (End::Before(x), End::Before(y)) => End::Before(x.min(y)),
    };
    if let End::Before(e) = &end {
        if *e <= start {
            return None;
        }
    }
    Some(KeyRange {
        start: Bound::Included(start),
        end: end.bound(),
    })
}

impl IdbStore {
    /// Opens (creating or upgrading) the database `name` and loads its key filter.
    /// Nothing else is loaded yet.
    pub async fn open(name: &str) -> Result<IdbStore, Error> {
        let db = Self::open_db(name).await?;
        let (filter, replay) = Self::read_meta(&db).await?;
        let mut store = Self::with(db, name, filter);
        store.replay(replay);
        Ok(store)
    }

    /// Opens the database `name`, claims it (see [`IdbStore::claim`]) and loads its key
    /// filter and the ranges `preload`, all in one transaction (what a driver needs at
    /// once, in one round trip). Over the origin's quota even the claim cannot be
    /// written: then it opens without it (reads work; writes fail with QUOTA_EXCEEDED).
    ///
    /// `opened` is a connection to `name` the caller already made (the worker opens
    /// IndexedDB while the engine compiles): used when it is at this build's version,
    /// closed otherwise (the upgrade then needs it gone).
    pub async fn open_claimed(
        name: &str,
        preload: &[KeyRange],
        opened: Option<IdbDatabase>,
    ) -> Result<IdbStore, Error> {
        let t0 = js_sys::Date::now();
        let db = match opened {
            Some(db) if db.name() == name && db.version() == f64::from(migrations::VERSION) => {
                Self::on_versionchange_close(&db);
                db
            }
            other => {
                if let Some(db) = other {
                    db.close();
                }
                Self::open_db(name).await?
            }
        };
        let t1 = js_sys::Date::now();
        match Self::claim_and_read(&db, preload).await {
            Ok((epoch, (filter, replay), entries)) => {
                let t2 = js_sys::Date::now();
                let mut store = Self::with(db, name, filter);
                store.epoch = Some(epoch);
                store.take_preloaded(preload, entries);
                store.replay(replay);
                let mut st = store.stats.borrow_mut();
                st.open_db_ms = (t1 - t0) as u64;
                st.open_read_ms = (t2 - t1) as u64;
                drop(st);
                Ok(store)
            }
            Err(e) if e.code == ErrorCode::QuotaExceeded => {
                let (filter, replay) = Self::read_meta(&db).await?;
                let mut store = Self::with(db, name, filter);
                let misses = preload.iter().cloned().map(Miss::range).collect();
                store.load_misses(misses).await?;
                store.replay(replay);
                Ok(store)
            }
            Err(e) => Err(e),
        }
    }

    /// The claim, the filter, the write-ahead records and the preloaded ranges, in one
    /// read-write transaction.
    async fn claim_and_read(
        db: &IdbDatabase,
        preload: &[KeyRange],
    ) -> Result<(f64, (Filter, Replay), Vec<Vec<Entry>>), Error> {
        let scope = Array::of2(&KV.into(), &META.into());
        let tx = db
            .transaction_with_str_sequence_and_mode(&scope, IdbTransactionMode::Readwrite)
            .map_err(|e| js_err("open transaction", e))?;
        let store = tx.object_store(KV).map_err(|e| js_err("object store", e))?;
        let meta = tx
            .object_store(META)
            .map_err(|e| js_err("object store", e))?;
        let get_epoch = store
            .get(&key(EPOCH_KEY))
            .map_err(|e| js_err("read the epoch", e))?;
        let meta_reqs = Self::meta_requests(&meta)?;
        let mut ranges = Vec::with_capacity(preload.len());
        for r in preload {
            ranges.push(RangeRead::all(&store, r)?);
        }
        // Its answer comes first; the other requests keep the transaction open.
        let epoch = epoch_of(
            &request(&get_epoch)
                .await
                .map_err(|e| js_err("read the epoch", e))?,
        ) + 1.0;
        store
            .put_with_key(&JsValue::from_f64(epoch), &key(EPOCH_KEY))
            .map_err(|e| js_err("write the epoch", e))?;
        let found = Self::meta_from(meta_reqs).await?;
        let mut entries = Vec::with_capacity(ranges.len());
        for read in ranges {
            entries.push(read.entries().await?);
        }
        complete(&tx).await.map_err(|e| js_err("open", e))?;
        Ok((epoch, found, entries))
    }

    /// Takes whole ranges read at open into the cache.
    fn take_preloaded(&mut self, ranges: &[KeyRange], entries: Vec<Vec<Entry>>) {
        for (r, es) in ranges.iter().zip(entries) {
            for (k, v) in es {
                self.cache_put(k, v);
            }
            self.spans.borrow_mut().add(r, 0);
        }
    }

    async fn open_db(name: &str) -> Result<IdbDatabase, Error> {
        let req: IdbOpenDbRequest = factory()?
            .open_with_u32(name, migrations::VERSION)
            .map_err(|e| js_err("open", e))?;
        let failed: Rc<RefCell<Option<String>>> = Rc::default();
        let upgrade = {
            let req = req.clone();
            let failed = failed.clone();
            Closure::once(move |ev: web_sys::IdbVersionChangeEvent| {
                let (Ok(db), Some(tx)) = (req.result(), req.transaction()) else {
                    *failed.borrow_mut() = Some("no upgrade transaction".into());
                    return;
                };
                if let Err(e) =
                    migrations::upgrade(ev.old_version() as u32, &db.unchecked_into(), &tx)
                {
                    *failed.borrow_mut() = Some(format!("{e:?}"));
                    let _ = tx.abort();
                }
            })
        };
        req.set_onupgradeneeded(Some(upgrade.as_ref().unchecked_ref()));
        let opened = request(&req).await;
        req.set_onupgradeneeded(None);
        drop(upgrade);
        if let Some(why) = failed.borrow_mut().take() {
            return Err(Error::new(
                ErrorCode::Storage,
                format!("IndexedDB upgrade of {name}: {why}"),
            ));
        }
        let db: IdbDatabase = opened
            .map_err(|e| js_err(&format!("open {name}"), e))?
            .unchecked_into();
        Self::on_versionchange_close(&db);
        Ok(db)
    }

    /// Another page upgrading or deleting the database (a newer version of the app, a
    /// sign-out) asks this connection to close: let it, rather than block it (this
    /// store's writes then fail with STORAGE_ERROR).
    fn on_versionchange_close(db: &IdbDatabase) {
        let db2 = db.clone();
        let close = Closure::<dyn FnMut(web_sys::Event)>::new(move |_: web_sys::Event| db2.close());
        db.set_onversionchange(Some(close.as_ref().unchecked_ref()));
        // Lives as long as the page: one per database opened.
        close.forget();
    }

    fn with(db: IdbDatabase, name: &str, mut filter: Filter) -> IdbStore {
        // The filter holds every key written but those of the pinned spaces: with it
        // empty, nothing outside them was ever written, and the empty cache holds all
        // of that, exactly (every read until the cap is reached is answered here). The
        // pinned spaces (an outbox written offline, say) are read as always. (Nor has
        // it any pages to read.)
        let mut spans = Spans::default();
        if filter.is_empty() {
            for r in unpinned() {
                spans.add(&r, 0);
            }
            filter
                .load_pages(std::iter::empty())
                .expect("no pages to refuse");
        }
        IdbStore {
            db,
            name: name.to_owned(),
            cache: BTreeMap::new(),
            cache_bytes: 0,
            cap: DEFAULT_CACHE_BYTES,
            spans: RefCell::new(spans),
            tick: Cell::new(1),
            ops: RefCell::new(BTreeMap::new()),
            misses: RefCell::new(Vec::new()),
            filter: Rc::new(RefCell::new(filter)),
            filter_readers: Rc::default(),
            counts: RefCell::new(Vec::new()),
            dirty: BTreeMap::new(),
            in_flight: VecDeque::new(),
            wal: BTreeMap::new(),
            wal_records: 0,
            wal_bytes: 0,
            wal_next: 0,
            wal_applied: 0,
            wal_stale: false,
            next_flush: 1,
            write_gen: 0,
            durable_gen: 0,
            loads_out: 0,
            recent: HashMap::new(),
            continuation: RefCell::new(None),
            readahead: HashSet::new(),
            notify: None,
            doc_of: None,
            epoch: None,
            fenced: false,
            stats: Rc::default(),
        }
    }

    async fn read_meta(db: &IdbDatabase) -> Result<(Filter, Replay), Error> {
        let tx = db
            .transaction_with_str(META)
            .map_err(|e| js_err("read transaction", e))?;
        let store = tx
            .object_store(META)
            .map_err(|e| js_err("object store", e))?;
        Self::meta_from(Self::meta_requests(&store)?).await
    }

    /// The requests that read the backend's own records at open: the filter's meta
    /// record and the write-ahead records. The filter's pages are read later (they grow
    /// with the database: 570 KiB at 100,000 documents), see [`IdbStore::load_filter`].
    fn meta_requests(store: &web_sys::IdbObjectStore) -> Result<MetaReads, Error> {
        let meta = store
            .get(&key(filter::META_KEY))
            .map_err(|e| js_err("get", e))?;
        Ok((meta, RangeRead::all(store, &KeyRange::prefix(wal::PREFIX))?))
    }

    async fn meta_from((meta, records): MetaReads) -> Result<(Filter, Replay), Error> {
        let meta = request(&meta).await.map_err(|e| js_err("get", e))?;
        let records = records.entries().await?;
        if meta.is_undefined() {
            return Err(Error::new(
                ErrorCode::Corrupt,
                "the database has no key filter (it was not made by this version)",
            ));
        }
        let meta = Uint8Array::new(&meta).to_vec();
        let filter = Filter::from_meta(&meta).map_err(bad_filter)?;
        // The records in order of their numbers (the keys' order).
        let mut replay = Replay::default();
        for (k, record) in records {
            let n = wal::number(&k)
                .ok_or_else(|| Error::new(ErrorCode::Corrupt, "a write-ahead record's key"))?;
            wal::decode_into(&record, &mut replay.writes).map_err(|e| {
                Error::new(
                    ErrorCode::Corrupt,
                    format!("write-ahead record {n}: {}", e.0),
                )
            })?;
            replay.records += 1;
            replay.bytes += record.len();
            replay.next = n + 1;
        }
        Ok((filter, replay))
    }

    /// Takes in the write-ahead records found at open: their writes are the newest
    /// values of their keys (over `kv` and what was preloaded from it), held by the
    /// cache until an apply writes them to `kv`.
    fn replay(&mut self, replay: Replay) {
        let now = self.tick.get();
        for (k, v) in &replay.writes {
            note_written(&mut self.filter.borrow_mut(), k, v);
            match v {
                Some(v) => self.cache_put(k.clone(), v.clone()),
                None => self.cache_remove(k),
            }
            self.spans.borrow_mut().add_point(k, now);
        }
        self.wal = replay.writes;
        self.wal_records = replay.records;
        self.wal_bytes = replay.bytes;
        self.wal_next = replay.next;
    }

    /// Sets the cache's byte cap.
    pub fn set_cache_bytes(&mut self, cap: usize) {
        self.cap = cap.max(1 << 20);
    }

    /// Sets how to find the document an index entry names: a limited scan of an index
    /// (`take(n)`) then loads the documents of the entries it reads in the same
    /// transaction, and the query runs once more instead of twice.
    pub fn set_doc_of(&mut self, f: DocOf) {
        self.doc_of = Some(f);
    }

    /// Sets what to call when a flush is committed to (its checks passed: see
    /// [`IdbStore::committed_gen`]) and when it completes (the driver then calls
    /// [`IdbStore::settle_flushes`], which takes in only the completed ones).
    pub fn set_notify(&mut self, f: Rc<dyn Fn()>) {
        self.notify = Some(f);
    }

    /// Claims the database for this page (the tab that leads for all tabs of an
    /// origin): bumps the leader epoch in IndexedDB. From then on a flush succeeds only
    /// while the epoch is still this one, so a page that lost the lead (frozen, then
    /// thawed) can never write over the new leader's data.
    pub async fn claim(&mut self) -> Result<f64, Error> {
        let tx = self
            .db
            .transaction_with_str_and_mode(KV, IdbTransactionMode::Readwrite)
            .map_err(|e| js_err("claim transaction", e))?;
        let store = tx.object_store(KV).map_err(|e| js_err("object store", e))?;
        let get = store
            .get(&key(EPOCH_KEY))
            .map_err(|e| js_err("read the epoch", e))?;
        let now = epoch_of(
            &request(&get)
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
        let req = factory()?
            .delete_database(name)
            .map_err(|e| js_err("delete", e))?;
        request(&req).await.map_err(|e| js_err("delete", e))?;
        Ok(())
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Closes the connection (so the database can be deleted or upgraded).
    pub fn close(self) {
        self.db.close();
    }

    /// What the store did so far, and holds now.
    pub fn stats(&self) -> IdbStats {
        IdbStats {
            cache_bytes: self.held_bytes() as u64,
            cache_entries: self.cache.len() as u64,
            spans: self.spans.borrow().len() as u64,
            unwritten: (self.dirty.len()
                + self.in_flight.iter().map(|f| f.writes.len()).sum::<usize>())
                as u64,
            unapplied: self.wal.len() as u64,
            filter_bytes: self.filter.borrow().bytes() as u64,
            filter_loaded: self.filter.borrow().is_loaded(),
            ..*self.stats.borrow()
        }
    }

    // ----- operations and eviction -----

    /// Starts an operation (a query, a write, a frame): what it uses from now on is not
    /// evicted until [`IdbStore::end_op`].
    pub fn begin_op(&self) -> u64 {
        let t = self.tick.get() + 1;
        self.tick.set(t);
        *self.ops.borrow_mut().entry(t).or_insert(0) += 1;
        t
    }

    /// Ends an operation; evicts if the cache is over its cap.
    pub fn end_op(&mut self, op: u64) {
        {
            let mut ops = self.ops.borrow_mut();
            if let Some(n) = ops.get_mut(&op) {
                *n -= 1;
                if *n == 0 {
                    ops.remove(&op);
                }
            }
        }
        self.evict_if_needed();
    }

    /// What the cap bounds: the cache's entries and its spans (a span of an absence,
    /// a deleted key, takes memory with no entry).
    fn held_bytes(&self) -> usize {
        self.cache_bytes + self.spans.borrow().bytes()
    }

    /// Evicts the spans used least recently until the cache is under three quarters of
    /// its cap. Never evicted: writes not yet durable, the pinned spaces, and anything
    /// an operation in progress has used.
    pub fn evict_if_needed(&mut self) {
        if self.held_bytes() <= self.cap {
            return;
        }
        let target = self.cap / 4 * 3;
        let protect = self
            .ops
            .borrow()
            .keys()
            .next()
            .copied()
            .unwrap_or(self.tick.get() + 1);
        let candidates = self.spans.borrow().unused_since(protect);
        let now = self.tick.get();
        for (range, used) in candidates {
            if self.held_bytes() <= target {
                break;
            }
            self.spans.borrow_mut().remove(&range);
            // The pinned spaces in it stay held (they are small and always needed).
            for space in PINNED {
                let p = KeyRange::prefix(&[*space]);
                if let Some(part) = intersect(&range, &p) {
                    self.spans.borrow_mut().add(&part, now);
                }
            }
            // In key order, some keys at a time (never a copy of a whole range, which
            // may be the whole cache): a span larger than what must go is evicted from
            // its start, and the rest of it stays held, as last used.
            let mut rest = range;
            loop {
                let keys: Vec<Vec<u8>> = self
                    .cache
                    .range::<[u8], _>((as_ref(&rest.start), as_ref(&rest.end)))
                    .take(EVICT_KEYS_AT_ONCE)
                    .map(|(k, _)| k.clone())
                    .collect();
                let Some(last) = keys.last().cloned() else {
                    break;
                };
                for k in keys {
                    if self.unwritten(&k) || k.first().is_some_and(|b| PINNED.contains(b)) {
                        // Not durable yet: the cache is where it is; it stays held.
                        self.spans.borrow_mut().add_point(&k, now);
                        continue;
                    }
                    if let Some(v) = self.cache.remove(&k) {
                        let b = entry_bytes(&k, &v);
                        self.cache_bytes -= b;
                        self.stats.borrow_mut().evicted_bytes += b as u64;
                    }
                }
                rest = rest.after(&last);
                if self.held_bytes() <= target {
                    self.spans.borrow_mut().add(&rest, used);
                    break;
                }
            }
        }
    }

    /// Whether `range` holds a write `kv` may lack (queued, or in a write-ahead record
    /// settled or in flight; a flush to `kv` in flight is seen by a read issued after).
    fn unapplied_in(&self, range: &KeyRange) -> bool {
        let b = (as_ref(&range.start), as_ref(&range.end));
        let any = |w: &Writes| w.range::<[u8], _>(b).next().is_some();
        any(&self.dirty)
            || any(&self.wal)
            || self
                .in_flight
                .iter()
                .any(|f| f.record.is_some() && any(&f.writes))
    }

    /// Whether the cache may hold a newer value of `k` than `kv`.
    fn unwritten(&self, k: &[u8]) -> bool {
        self.dirty.contains_key(k)
            || self.wal.contains_key(k)
            || self.in_flight.iter().any(|f| f.writes.contains_key(k))
    }

    // ----- reads the cache answers -----

    fn cache_range(&self, r: &KeyRange, reverse: bool, limit: usize) -> Vec<Entry> {
        if r.is_empty() || limit == 0 {
            return Vec::new();
        }
        let it = self
            .cache
            .range::<[u8], _>((as_ref(&r.start), as_ref(&r.end)));
        let clone = |(k, v): (&Vec<u8>, &Vec<u8>)| (k.clone(), v.clone());
        if reverse {
            it.rev().take(limit).map(clone).collect()
        } else {
            it.take(limit).map(clone).collect()
        }
    }

    fn miss(&self, m: Miss) {
        self.misses.borrow_mut().push(m);
    }

    /// The reads since the last call that fell outside what is loaded, each once (a
    /// scan's several limits as the largest). A run with misses must be repeated after
    /// they are loaded.
    pub fn take_misses(&self) -> Vec<Miss> {
        let all = std::mem::take(&mut *self.misses.borrow_mut());
        let mut out: Vec<Miss> = Vec::with_capacity(all.len());
        let mut points = BTreeSet::new();
        for m in all {
            match &m {
                Miss::Point(k) => {
                    if points.insert(k.clone()) {
                        out.push(m);
                    }
                }
                Miss::Scan {
                    range,
                    reverse,
                    limit,
                } => {
                    if let Some(Miss::Scan { limit: l, .. }) = out.iter_mut().find(|o| {
                        matches!(o, Miss::Scan { range: r, reverse: v, .. } if r == range && v == reverse)
                    }) {
                        *l = (*l).max(*limit);
                    } else {
                        out.push(m);
                    }
                }
                Miss::Count(_) => {
                    if !out.contains(&m) {
                        out.push(m);
                    }
                }
            }
        }
        out
    }

    // ----- loading -----

    /// Issues the loads of `misses` in one read transaction (first applying what the
    /// read would miss in `kv`: [`IdbStore::begin_apply`], when a range it reads holds
    /// a write not known to be there). Returns at once; await [`LoadJob::wait`], then
    /// hand its result to [`IdbStore::finish_load`].
    pub fn begin_load(&mut self, misses: Vec<Miss>) -> Result<LoadJob, Error> {
        // What to read: the misses not answered since, and the families to read ahead.
        let mut plan = Vec::with_capacity(misses.len());
        let mut families = Vec::new();
        for m in misses {
            let now = self.tick.get();
            // Read ahead: the first miss in a collection's documents or an index (an
            // unbounded scan or a point; a limited scan loads what it asks for) also
            // counts the whole of it, and when it is small beside the cache's cap, the
            // same transaction loads all of it. After a reopen, the reads that follow
            // then find everything loaded, in one round trip instead of one per read.
            let family = match &m {
                Miss::Point(k) => family_of(k),
                Miss::Scan { range, limit, .. } if *limit >= LIMITED => match &range.start {
                    Bound::Included(k) | Bound::Excluded(k) => family_of(k)
                        .filter(|f| KeyRange::prefix(f).contains(k) && range_within(range, f)),
                    Bound::Unbounded => None,
                },
                _ => None,
            };
            if let Some(f) = family {
                if !self.readahead.contains(&f)
                    && !self.spans.borrow_mut().covers(&KeyRange::prefix(&f), now)
                {
                    self.readahead.insert(f.clone());
                    families.push(f);
                }
            }
            match &m {
                Miss::Point(k) if self.spans.borrow_mut().holds(k, now) => continue,
                Miss::Scan { range, .. }
                    if range.is_empty() || self.spans.borrow_mut().covers(range, now) =>
                {
                    continue
                }
                _ => plan.push(m),
            }
        }
        // A limited index scan also reads the documents its entries name: any write
        // may be among them.
        let reads_any = plan.iter().any(|m| {
            matches!(m, Miss::Scan { range, limit, reverse: false }
                if *limit < LIMITED
                    && matches!(&range.start, Bound::Included(k) | Bound::Excluded(k) if k.first() == Some(&b'I')))
        });
        let stale = reads_any
            || plan.iter().any(|m| match m {
                Miss::Point(k) => self.unapplied_in(&KeyRange::point(k)),
                Miss::Scan { range, .. } | Miss::Count(range) => self.unapplied_in(range),
            })
            || families
                .iter()
                .any(|f| self.unapplied_in(&KeyRange::prefix(f)));
        if stale {
            self.begin_apply()?;
        }
        self.loads_out += 1;
        if plan.is_empty() && families.is_empty() {
            // Answered since they were missed (loaded meanwhile): nothing to read, and
            // no transaction to open and wait for.
            return Ok(LoadJob {
                tx: None,
                reqs: Vec::new(),
                gen0: self.write_gen,
                ahead_max: 0,
                doc_of: None,
                filter: None,
            });
        }
        // Before the key filter's pages are read in, a miss of a document or an index
        // entry (a create's, whose family would otherwise be read ahead) has them read
        // first, in this transaction, and the points read now wait for them: a key they
        // show never written is not read (the creates of an import, just after a
        // reopen). Other points are read as they are (a query's first load, say, which
        // the pages, hundreds of KiB, would slow).
        let filtering = !self.filter.borrow().is_loaded()
            && plan
                .iter()
                .any(|m| matches!(m, Miss::Point(k) if family_of(k).is_some()));
        let tx = if filtering {
            self.db
                .transaction_with_str_sequence(&Array::of2(&KV.into(), &META.into()))
        } else {
            self.db.transaction_with_str(KV)
        }
        .map_err(|e| js_err("read transaction", e))?;
        let store = tx.object_store(KV).map_err(|e| js_err("object store", e))?;
        // A family read ahead is counted first. A miss inside it waits for the count:
        // when the family is small enough to be read whole, that read answers the miss
        // too (reading it as well would read the same entries twice); otherwise the
        // miss is read then, in the same transaction.
        let mut deferred: Vec<Vec<(Miss, usize)>> = families.iter().map(|_| Vec::new()).collect();
        let mut reqs = Vec::with_capacity(plan.len() + families.len() + 1);
        // The filter's pages first: what they show absent needs no read, nor reading
        // its family ahead.
        if filtering {
            let meta = tx
                .object_store(META)
                .map_err(|e| js_err("object store", e))?;
            reqs.push(Req::Filtered {
                pages: read_filter_pages(&meta)?,
                points: Vec::new(),
            });
        }
        let mut now_read = Vec::with_capacity(plan.len());
        for m in plan {
            let n = match &m {
                Miss::Scan {
                    range,
                    reverse,
                    limit,
                } => self.chunk(range, *reverse, *limit),
                _ => 0,
            };
            let within = families.iter().position(|f| match &m {
                Miss::Point(k) => KeyRange::prefix(f).contains(k),
                Miss::Scan { range, .. } => n >= LIMITED && range_within(range, f),
                Miss::Count(_) => false,
            });
            match within {
                Some(i) => deferred[i].push((m, n)),
                None => now_read.push((m, n)),
            }
        }
        // Made in the order they are awaited: the counts, then the reads.
        for (f, deferred) in families.into_iter().zip(deferred) {
            let range = KeyRange::prefix(&f);
            let count = store
                .count_with_key(&idb_range(&range)?)
                .map_err(|e| js_err("count", e))?;
            reqs.push(Req::Ahead {
                family: f,
                range,
                count,
                deferred,
            });
        }
        for (m, n) in now_read {
            match (m, reqs.first_mut()) {
                (Miss::Point(k), Some(Req::Filtered { points, .. })) => points.push(k),
                (m, _) => reqs.push(issue(&store, m, n)?),
            }
        }
        let mut s = self.stats.borrow_mut();
        s.load_transactions += 1;
        s.load_requests += reqs.len() as u64;
        Ok(LoadJob {
            tx: Some((store, tx)),
            reqs,
            gen0: self.write_gen,
            ahead_max: (self.cap / READAHEAD_ENTRY_BYTES) as u64,
            doc_of: self.doc_of.clone(),
            filter: Some(FilterShare {
                filter: self.filter.clone(),
                readers: self.filter_readers.clone(),
                stats: self.stats.clone(),
            }),
        })
    }

    /// How many entries to load for a scan miss that asked for `limit`.
    fn chunk(&self, range: &KeyRange, reverse: bool, limit: usize) -> usize {
        if limit == usize::MAX {
            return limit;
        }
        if limit < LIMITED {
            return limit;
        }
        let mut n = limit.max(FIRST_CHUNK);
        if let Some((boundary, rev, last)) = &*self.continuation.borrow() {
            let at = normalize(range).map(|(s, e)| {
                if reverse {
                    match e {
                        End::Before(e) => e,
                        End::Unbounded => Vec::new(),
                    }
                } else {
                    s
                }
            });
            if *rev == reverse && at.as_ref() == Some(boundary) {
                n = n.max(last.saturating_mul(GROWTH));
            }
        }
        n.min(MAX_CHUNK)
    }

    /// Takes a load's results into the cache: each key the cache does not hold newer
    /// (written since the load was issued, or not yet durable) takes IndexedDB's value,
    /// and what was read becomes held. Returns the ranges that gained data: a run that
    /// missed reads them differently now (none: every miss was an absence, and the run
    /// saw the data as it is).
    pub fn finish_load(&mut self, done: Loaded) -> Result<Vec<KeyRange>, Error> {
        self.loads_out = self.loads_out.saturating_sub(1);
        let result = self.take_loaded(done);
        if self.loads_out == 0 {
            self.recent.clear();
        }
        result
    }

    fn newer(&self, k: &[u8], gen0: u64) -> bool {
        self.dirty.contains_key(k) || self.recent.get(k).is_some_and(|g| *g > gen0)
    }

    fn take_loaded(&mut self, done: Loaded) -> Result<Vec<KeyRange>, Error> {
        let data = done.data?;
        for f in &data.unread_families {
            self.readahead.remove(f);
        }
        let gen0 = done.gen0;
        let now = self.tick.get();
        let mut gained = Vec::new();
        let mut records = 0u64;
        // A point a run missed gains when it is present: that run took it for absent,
        // even when another load (the other lane's) brought it meanwhile. A document
        // read along with its index entry gains when it is new to the cache.
        let missed = data.points.into_iter().map(|p| (p, true));
        for ((k, v), was_missed) in missed.chain(data.along.into_iter().map(|p| (p, false))) {
            records += 1;
            if !self.newer(&k, gen0) {
                if let Some(v) = v {
                    if was_missed || self.cache.get(&k) != Some(&v) {
                        gained.push(KeyRange::point(&k));
                    }
                    self.cache_put(k.clone(), v);
                }
            }
            self.spans.borrow_mut().add_point(&k, now);
        }
        for chunk in data.scans {
            records += chunk.entries.len() as u64;
            // What the chunk speaks for: the whole range if it is short, else up to
            // (back to) its last key.
            let covered = match chunk.entries.last() {
                Some((last, _)) if chunk.entries.len() >= chunk.limit => {
                    let b = if chunk.reverse {
                        KeyRange {
                            start: Bound::Included(last.clone()),
                            end: chunk.range.end.clone(),
                        }
                    } else {
                        KeyRange {
                            start: chunk.range.start.clone(),
                            end: Bound::Included(last.clone()),
                        }
                    };
                    let boundary = if chunk.reverse {
                        last.clone()
                    } else {
                        successor(last)
                    };
                    *self.continuation.borrow_mut() = Some((boundary, chunk.reverse, chunk.limit));
                    b
                }
                _ => chunk.range.clone(),
            };
            // Keys held in the range but not in IndexedDB (none, unless newer here).
            let stale: Vec<Vec<u8>> = self
                .cache_range(&covered, false, usize::MAX)
                .into_iter()
                .map(|(k, _)| k)
                .filter(|k| !self.newer(k, gen0))
                .collect();
            let read: BTreeSet<&Vec<u8>> = chunk.entries.iter().map(|(k, _)| k).collect();
            for k in stale {
                if !read.contains(&k) {
                    self.cache_remove(&k);
                }
            }
            if !chunk.entries.is_empty() {
                gained.push(covered.clone());
            }
            for (k, v) in chunk.entries {
                if !self.newer(&k, gen0) {
                    self.cache_put(k, v);
                }
            }
            self.spans.borrow_mut().add(&covered, now);
        }
        for (range, n) in data.counts {
            records += 1;
            let written_since = self.dirty.keys().any(|k| range.contains(k))
                || self
                    .recent
                    .iter()
                    .any(|(k, g)| *g > gen0 && range.contains(k));
            if !written_since {
                let mut counts = self.counts.borrow_mut();
                counts.retain(|(r, _)| *r != range);
                if counts.len() < MAX_COUNTS {
                    counts.push((range.clone(), n));
                }
            }
            gained.push(range);
        }
        self.stats.borrow_mut().records_loaded += records;
        Ok(gained)
    }

    fn cache_put(&mut self, k: Vec<u8>, v: Vec<u8>) {
        let add = entry_bytes(&k, &v);
        let klen = k.len();
        if let Some(old) = self.cache.insert(k, v) {
            self.cache_bytes -= ENTRY_OVERHEAD + klen + old.len();
        }
        self.cache_bytes += add;
    }

    /// Whether IndexedDB holds no key strictly between `a` and `b` that is to stay: the
    /// cache holds all of `[a, b]` exactly and none of it between them (a key deleted
    /// there may still be in `kv`, which deleting it again does not change).
    fn nothing_between(&self, a: &[u8], b: &[u8]) -> bool {
        let between = (Bound::Excluded(a), Bound::Excluded(b));
        self.cache.range::<[u8], _>(between).next().is_none()
            && self.spans.borrow().holds_all(&KeyRange {
                start: Bound::Included(a.to_vec()),
                end: Bound::Included(b.to_vec()),
            })
    }

    fn cache_remove(&mut self, k: &[u8]) {
        if let Some(v) = self.cache.remove(k) {
            self.cache_bytes -= entry_bytes(k, &v);
        }
    }

    /// Loads `misses` and takes them in (for tests and simple drivers).
    pub async fn load_misses(&mut self, misses: Vec<Miss>) -> Result<Vec<KeyRange>, Error> {
        let job = self.begin_load(misses)?;
        let done = job.wait().await;
        self.finish_load(done)
    }

    /// Loads a key range whole.
    pub async fn load(&mut self, range: &KeyRange) -> Result<(), Error> {
        self.load_misses(vec![Miss::range(range.clone())]).await?;
        Ok(())
    }

    /// Loads everything.
    pub async fn load_all(&mut self) -> Result<(), Error> {
        self.load(&KeyRange::all()).await
    }

    /// Reads the key filter's pages in (in a read transaction issued now), so that
    /// reads of keys never written need no trip to IndexedDB: until then every such
    /// read asks it. Left out of the open, whose cost would otherwise grow with the
    /// database; a driver calls it once the first reads are answered. The first flush
    /// to write to `kv` before then reads them itself (see [`IdbStore::issue`]), and
    /// while one is to, what this read is not taken.
    pub fn load_filter(&self) -> impl Future<Output = Result<(), Error>> + 'static {
        let filter = self.filter.clone();
        let readers = self.filter_readers.clone();
        let read = (!filter.borrow().is_loaded()).then(|| {
            let tx = self
                .db
                .transaction_with_str(META)
                .map_err(|e| js_err("read transaction", e))?;
            let store = tx
                .object_store(META)
                .map_err(|e| js_err("object store", e))?;
            read_filter_pages(&store)
        });
        async move {
            let Some(read) = read else {
                return Ok(());
            };
            let pages = read?.entries().await?;
            take_in_filter_pages(&mut filter.borrow_mut(), &readers, &pages)
        }
    }

    // ----- writing -----

    /// Whether writes are not yet durable.
    pub fn has_unflushed(&self) -> bool {
        !self.dirty.is_empty() || !self.in_flight.is_empty()
    }

    /// Whether writes wait to be issued.
    pub fn has_dirty(&self) -> bool {
        !self.dirty.is_empty()
    }

    /// Whether a flush is issued and not settled.
    pub fn has_in_flight(&self) -> bool {
        !self.in_flight.is_empty()
    }

    /// Closes the connection once its transactions are done (the store writes no more).
    pub fn close_db(&self) {
        self.db.close();
    }

    /// The generation of the last write: once [`Settled::durable_gen`] reaches it,
    /// every write made so far is durable.
    pub fn write_gen(&self) -> u64 {
        self.write_gen
    }

    /// The generation up to which every write is durable or committed to: its
    /// transaction, and every one before it, called `commit()` after its checks, so it
    /// completes even if this page or worker is ended now (not if the browser crashes).
    pub fn committed_gen(&self) -> u64 {
        let mut gen = self.durable_gen();
        for f in &self.in_flight {
            let failed = matches!(&*f.done.borrow(), Some(Err(_)));
            if failed || !f.committed.get() {
                break;
            }
            gen = gen.max(f.gen);
        }
        gen
    }

    /// The generation up to which every write is durable.
    pub fn durable_gen(&self) -> u64 {
        if self.dirty.is_empty() && self.in_flight.is_empty() {
            self.write_gen
        } else {
            self.durable_gen
        }
    }

    /// Issues everything queued as one read-write transaction, and returns at once
    /// (nothing when nothing is queued). The completion calls the notifier; then
    /// [`IdbStore::settle_flushes`].
    ///
    /// A small flush is one write-ahead record; one that finds the records not yet
    /// applied over their bounds, with no flush in flight, applies them and itself
    /// ([`IdbStore::begin_apply`]). A large one is written to `kv` once, not as a record
    /// and then again: at once when no record waits to be applied (the writes alone),
    /// else by an apply when no flush is in flight (until then nothing is issued: the
    /// driver flushes again when the one in flight completes).
    pub fn begin_flush(&mut self) -> Result<(), Error> {
        if self.dirty.is_empty() {
            return Ok(());
        }
        let large = self.dirty.len() > WAL_WRITES
            || self
                .dirty
                .iter()
                .map(|(k, v)| wal::write_bytes(k, v))
                .sum::<usize>()
                > WAL_WRITE_BYTES;
        let kind = if !large {
            let full = self.wal_records >= WAL_RECORDS || self.wal_bytes >= WAL_BYTES;
            if full && self.in_flight.is_empty() {
                Kind::Apply
            } else {
                Kind::Record
            }
        } else if !self.records_pending() {
            Kind::Direct
        } else if self.in_flight.is_empty() {
            Kind::Apply
        } else {
            return Ok(());
        };
        self.issue(kind)
    }

    /// Issues one read-write transaction that brings `kv` up to date, so that a read
    /// issued after it sees everything written (nothing when `kv` will be). While
    /// write-ahead records wait, that is an apply: it writes every write that may not be
    /// in `kv` (the records', those of the flushes still in flight, which may yet fail,
    /// and the queue's) and deletes every record issued so far. So `kv` never holds a
    /// value newer than a record left in `meta` (a record is applied over it, in order,
    /// at the next open), and what a record made durable stays durable whichever
    /// transaction fails.
    pub fn begin_apply(&mut self) -> Result<(), Error> {
        if self.records_pending() {
            self.issue(Kind::Apply)
        } else if !self.dirty.is_empty() {
            self.issue(Kind::Direct)
        } else {
            Ok(())
        }
    }

    /// Whether a write-ahead record may hold writes `kv` lacks: records settled or in
    /// flight, an apply of some in flight, or an apply of some failed (their writes are
    /// queued again, the records still there) and none succeeded since.
    fn records_pending(&self) -> bool {
        self.wal_stale
            || !self.wal.is_empty()
            || self
                .in_flight
                .iter()
                .any(|f| f.record.is_some() || f.took_records)
    }

    fn issue(&mut self, kind: Kind) -> Result<(), Error> {
        if self.fenced {
            return Err(fenced());
        }
        let mut filter = self.filter.borrow_mut();
        for (k, v) in &self.dirty {
            note_written(&mut filter, k, v);
        }
        // A record's keys are in the filter again when it is read at open: its pages
        // are written with the next apply. A write to `kv` writes the pages its keys
        // changed, and so needs the stored ones: before they are read in, it reads them
        // itself, in its own transaction, and writes the filter's changes once they come
        // (IndexedDB runs it before any write transaction issued after it).
        let reads_pages = kind != Kind::Record && !filter.is_loaded();
        let filter_records = Rc::new(RefCell::new(if kind == Kind::Record || reads_pages {
            Vec::new()
        } else {
            filter.take_dirty()
        }));
        drop(filter);
        let scope = Array::of2(&KV.into(), &META.into());
        let tx = self
            .db
            .transaction_with_str_sequence_and_mode(&scope, IdbTransactionMode::Readwrite)
            .map_err(|e| js_err("write transaction", e))?;
        let store = tx.object_store(KV).map_err(|e| js_err("object store", e))?;
        let meta = tx
            .object_store(META)
            .map_err(|e| js_err("object store", e))?;
        // The epoch is read in this same transaction: IndexedDB runs read-write
        // transactions on a store one at a time, so no claim can slip in between.
        let epoch = match self.epoch {
            Some(_) => Some(
                store
                    .get(&key(EPOCH_KEY))
                    .map_err(|e| js_err("read the epoch", e))?,
            ),
            None => None,
        };
        let pages = if reads_pages {
            Some(read_filter_pages(&meta)?)
        } else {
            None
        };
        let queued = std::mem::take(&mut self.dirty);
        let (record, writes) = match kind {
            Kind::Apply => {
                // Oldest first, so that the newest value of each key wins: the records
                // (all settled before any flush in flight), the flushes in flight in
                // the order issued, the queue.
                let mut all = std::mem::take(&mut self.wal);
                for f in &self.in_flight {
                    all.extend(f.writes.iter().map(|(k, v)| (k.clone(), v.clone())));
                }
                all.extend(queued);
                (None, all)
            }
            Kind::Direct => (None, queued),
            Kind::Record => (Some(self.wal_next), queued),
        };
        // Every request is issued now. The epoch's answer comes first (requests of a
        // transaction complete in order), and the transaction cannot commit before
        // the writes after it complete: a changed epoch aborts it in time, and nothing
        // of it is kept.
        let mut requests = 0u64;
        let issued = (|| -> Result<(), JsValue> {
            match record {
                Some(n) => {
                    meta.put_with_key(&key(&wal::encode(&writes)), &key(&wal::key(n)))?;
                    requests += 1;
                }
                None => {
                    // A run of deletes with nothing held between them is one request
                    // (an outbox's confirmed commits, a partition's documents).
                    let mut run: Option<(&[u8], &[u8])> = None;
                    for (k, v) in &writes {
                        match v {
                            Some(v) => {
                                if let Some(r) = run.take() {
                                    delete_run(&store, r)?;
                                    requests += 1;
                                }
                                store.put_with_key(&key(v), &key(k))?;
                                requests += 1;
                            }
                            None => {
                                run = match run {
                                    Some((a, b)) if self.nothing_between(b, k) => Some((a, k)),
                                    Some(r) => {
                                        delete_run(&store, r)?;
                                        requests += 1;
                                        Some((k, k))
                                    }
                                    None => Some((k, k)),
                                };
                            }
                        }
                    }
                    if let Some(r) = run {
                        delete_run(&store, r)?;
                        requests += 1;
                    }
                    for (k, v) in filter_records.borrow().iter() {
                        meta.put_with_key(&key(v), &key(k))?;
                        requests += 1;
                    }
                    if kind == Kind::Apply && self.wal_next > 0 {
                        let done = web_sys::IdbKeyRange::bound_with_lower_open_and_upper_open(
                            &key(&wal::key(0)),
                            &key(&wal::key(self.wal_next)),
                            false,
                            true,
                        )?;
                        meta.delete(&done)?;
                        requests += 1;
                    }
                }
            }
            Ok(())
        })();
        self.stats.borrow_mut().write_requests += requests;
        if let Err(e) = issued {
            let _ = tx.abort();
            // (An apply's: the records' writes too, which are newer than `kv`.)
            self.dirty = writes;
            self.filter.borrow_mut().redirty(&filter_records.borrow());
            return Err(js_err("write", e));
        }
        match kind {
            Kind::Record => self.wal_next += 1,
            Kind::Apply => {
                self.wal_applied = self.wal_next;
                self.wal_records = 0;
                self.wal_bytes = 0;
                self.stats.borrow_mut().applies += 1;
            }
            Kind::Direct => {}
        }
        let committed: Rc<Cell<bool>> = Rc::default();
        if epoch.is_none() && pages.is_none() {
            // Nothing to check: commit now rather than when the event loop turns (a
            // page being closed gets its writes out sooner).
            #[allow(deprecated)]
            committed.set(tx.commit().is_ok());
        }
        if pages.is_some() {
            self.filter_readers.set(self.filter_readers.get() + 1);
        }
        let id = self.next_flush;
        self.next_flush += 1;
        let done: Rc<RefCell<Option<Result<(), Error>>>> = Rc::default();
        let (tx_done, rx_done) = oneshot::channel();
        let mine = self.epoch;
        let was_fenced: Rc<Cell<bool>> = Rc::default();
        {
            let done = done.clone();
            let notify = self.notify.clone();
            let was_fenced = was_fenced.clone();
            let committed = committed.clone();
            let filter = self.filter.clone();
            let readers = self.filter_readers.clone();
            let filter_records = filter_records.clone();
            let stats = self.stats.clone();
            wasm_bindgen_futures::spawn_local(async move {
                // The answers come in the order asked: the epoch, then the filter's
                // pages; the transaction cannot commit before the writes issued after
                // them. A changed epoch aborts it in time, and nothing of it is kept.
                let mut ok = true;
                if let (Some(get), Some(mine)) = (epoch, mine) {
                    if !matches!(request(&get).await, Ok(v) if epoch_of(&v) == mine) {
                        was_fenced.set(true);
                        ok = false;
                        let _ = tx.abort();
                    }
                }
                let mut failed = None;
                if let Some(read) = pages {
                    let read = read.entries().await;
                    if ok {
                        match write_filter_changes(&filter, &meta, read) {
                            Ok(records) => {
                                stats.borrow_mut().write_requests += records.len() as u64;
                                *filter_records.borrow_mut() = records;
                            }
                            Err(e) => {
                                failed = Some(e);
                                ok = false;
                                let _ = tx.abort();
                            }
                        }
                    }
                    readers.set(readers.get() - 1);
                }
                if ok && !committed.get() {
                    // Checked, and every write is issued: committed now, the
                    // transaction completes even if this worker goes away next (a page
                    // being closed); left to commit on its own, it would be aborted
                    // with the worker.
                    #[allow(deprecated)]
                    if tx.commit().is_ok() {
                        committed.set(true);
                        // The driver may report what waited for this point.
                        if let Some(f) = &notify {
                            f();
                        }
                    }
                }
                let r = complete(&tx).await.map_err(|e| js_err("commit", e));
                *done.borrow_mut() = Some(if was_fenced.get() {
                    Err(fenced())
                } else {
                    failed.map_or(r, Err)
                });
                let _ = tx_done.send(());
                if let Some(f) = notify {
                    f();
                }
            });
        }
        self.in_flight.push_back(InFlight {
            id,
            gen: self.write_gen,
            record,
            took_records: kind == Kind::Apply,
            writes,
            filter_records,
            done,
            fenced: was_fenced,
            committed,
            finished: Some(rx_done),
        });
        self.stats.borrow_mut().flushes += 1;
        Ok(())
    }

    /// Takes in the flushes that completed, oldest first: a success makes its writes
    /// durable; a failure puts them back in the queue (unless written again since) and
    /// is reported. A fenced store writes no more.
    pub fn settle_flushes(&mut self) -> Settled {
        let mut out = Settled {
            durable_gen: self.durable_gen,
            error: None,
        };
        while let Some(f) = self.in_flight.front() {
            let Some(r) = f.done.borrow_mut().take() else {
                break;
            };
            let f = self.in_flight.pop_front().expect("front");
            match r {
                Ok(()) => {
                    self.durable_gen = self.durable_gen.max(f.gen);
                    if f.took_records {
                        self.wal_stale = false;
                    }
                    // A record no apply has taken in yet: its writes wait for the next.
                    if f.record.is_some_and(|n| n >= self.wal_applied) {
                        self.wal_records += 1;
                        for (k, v) in f.writes {
                            self.wal_bytes += wal::write_bytes(&k, &v);
                            self.wal.insert(k, v);
                        }
                    }
                }
                Err(e) => {
                    if f.fenced.get() {
                        self.fenced = true;
                    }
                    if f.took_records {
                        self.wal_stale = true;
                    }
                    self.stats.borrow_mut().failed_flushes += 1;
                    for (k, v) in f.writes {
                        // Written again since: by a flush issued later, or (when this
                        // one wrote to `kv`) by a record that settled since (the records
                        // settled before it were in it, or none were waiting).
                        let later = self.in_flight.iter().any(|g| g.writes.contains_key(&k))
                            || (f.record.is_none() && self.wal.contains_key(&k));
                        if !later {
                            self.dirty.entry(k).or_insert(v);
                        }
                    }
                    self.filter.borrow_mut().redirty(&f.filter_records.borrow());
                    // IndexedDB lacks what the cache holds: counts read since are off.
                    self.counts.borrow_mut().clear();
                    out.error.get_or_insert(e);
                }
            }
            let _ = f.id;
        }
        out.durable_gen = self.durable_gen();
        out
    }

    /// Writes everything not yet in `kv` there (an apply) and waits until it (and every
    /// flush before it) is settled; `Ok` when all of it is durable.
    pub async fn flush(&mut self) -> Result<(), Error> {
        self.begin_apply()?;
        self.settled().await
    }

    /// Waits until every flush issued is settled; `Ok` when all of them succeeded.
    pub async fn settled(&mut self) -> Result<(), Error> {
        let waits: Vec<oneshot::Receiver<()>> = self
            .in_flight
            .iter_mut()
            .filter_map(|f| f.finished.take())
            .collect();
        for w in waits {
            let _ = w.await;
        }
        match self.settle_flushes().error {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Every cached entry (for tests).
    pub fn cached(&self) -> Vec<Entry> {
        self.cache
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }

    /// Keeps the cached counts right after a write of `k`: when whether `k` was there
    /// before is known, the counts of ranges holding it move by one; otherwise they
    /// are dropped.
    fn recount(&self, k: &[u8], before: Option<bool>, after: bool) {
        let mut counts = self.counts.borrow_mut();
        if counts.is_empty() {
            return;
        }
        counts.retain_mut(|(r, n)| {
            if !r.contains(k) {
                return true;
            }
            match before {
                Some(b) if b == after => true,
                Some(false) => {
                    *n += 1;
                    true
                }
                Some(true) => {
                    *n = n.saturating_sub(1);
                    true
                }
                None => false,
            }
        });
    }
}

/// The key filter takes every key written to IndexedDB but those of the pinned spaces
/// (always loaded at open: the filter is never asked about them).
fn bad_filter(e: filter::BadFilter) -> Error {
    Error::new(ErrorCode::Corrupt, format!("the key filter: {}", e.0))
}

/// A read of the key filter's pages (in `meta`).
fn read_filter_pages(meta: &web_sys::IdbObjectStore) -> Result<RangeRead, Error> {
    RangeRead::all(meta, &KeyRange::prefix(filter::PAGE_PREFIX))
}

/// Takes in the filter's pages a read other than a flush's found, unless they are in
/// already or a flush that reads them itself was issued: until then no write to `kv`
/// was issued since the open (each is such a flush until the pages are in), so they are
/// as IndexedDB holds them.
fn take_in_filter_pages(
    filter: &mut Filter,
    readers: &Cell<u32>,
    pages: &[Entry],
) -> Result<(), Error> {
    if readers.get() == 0 {
        filter
            .load_pages(pages.iter().map(|(k, v)| (k.as_slice(), v.as_slice())))
            .map_err(bad_filter)?;
    }
    Ok(())
}

/// In a flush issued before the key filter's pages were read in: takes in the pages it
/// read (unless a read of them came first) and writes, in its transaction, what the
/// filter changed, which covers every key written before it. Gives those records.
fn write_filter_changes(
    filter: &RefCell<Filter>,
    meta: &web_sys::IdbObjectStore,
    pages: Result<Vec<Entry>, Error>,
) -> Result<Vec<Entry>, Error> {
    let pages = pages?;
    let mut f = filter.borrow_mut();
    // Whatever read them first, they are as this transaction sees them: it runs after
    // every write to `kv` issued before it, and each of those took them in first.
    f.load_pages(pages.iter().map(|(k, v)| (k.as_slice(), v.as_slice())))
        .map_err(bad_filter)?;
    let records = f.take_dirty();
    for (k, v) in &records {
        if let Err(e) = meta.put_with_key(&key(v), &key(k)) {
            f.redirty(&records);
            return Err(js_err("write", e));
        }
    }
    Ok(records)
}

fn note_written(filter: &mut Filter, k: &[u8], v: &Option<Vec<u8>>) {
    if v.is_some() && !k.first().is_some_and(|b| PINNED.contains(b)) {
        filter.insert(k);
    }
}

/// Every key outside the pinned spaces, as ranges in order.
fn unpinned() -> Vec<KeyRange> {
    let mut pinned = PINNED.to_vec();
    pinned.sort_unstable();
    let mut out = Vec::with_capacity(pinned.len() + 1);
    let mut start = Bound::Unbounded;
    for p in pinned {
        out.push(KeyRange {
            start,
            end: Bound::Excluded(vec![p]),
        });
        start = Bound::Included(vec![p + 1]);
    }
    out.push(KeyRange {
        start,
        end: Bound::Unbounded,
    });
    out
}

/// The family a key belongs to, for reading ahead: a document's collection (`D coll`)
/// or an index entry's index (`I coll index`); `None` for other keys.
fn family_of(k: &[u8]) -> Option<Vec<u8>> {
    let components = match k.first()? {
        b'D' => 1,
        b'I' => 2,
        _ => return None,
    };
    let mut pos = 1;
    for _ in 0..components {
        warren_core::keys::read_str(k, &mut pos).ok()?;
    }
    Some(k[..pos].to_vec())
}

/// Whether every key of `r` starts with `prefix`.
fn range_within(r: &KeyRange, prefix: &[u8]) -> bool {
    let p = KeyRange::prefix(prefix);
    let start_in = match &r.start {
        Bound::Included(s) | Bound::Excluded(s) => s.starts_with(prefix),
        Bound::Unbounded => false,
    };
    let end_in = match (&r.end, &p.end) {
        (Bound::Unbounded, _) => false,
        (Bound::Included(e), _) => e.starts_with(prefix),
        (Bound::Excluded(e), Bound::Excluded(pe)) => e.starts_with(prefix) || e == pe,
        (Bound::Excluded(e), _) => e.starts_with(prefix),
    };
    start_in && end_in
}

fn as_ref(b: &Bound<Vec<u8>>) -> Bound<&[u8]> {
    match b {
        Bound::Included(v) => Bound::Included(v.as_slice()),
        Bound::Excluded(v) => Bound::Excluded(v.as_slice()),
        Bound::Unbounded => Bound::Unbounded,
    }
}

/// Issues the read of miss `m` (`n`: how many entries, for a scan; see
/// [`IdbStore::chunk`]).
fn issue(store: &web_sys::IdbObjectStore, m: Miss, n: usize) -> Result<Req, Error> {
    Ok(match m {
        Miss::Point(k) => {
            let r = store.get(&key(&k)).map_err(|e| js_err("get", e))?;
            Req::Point(k, r)
        }
        Miss::Count(range) => {
            let r = store
                .count_with_key(&idb_range(&range)?)
                .map_err(|e| js_err("count", e))?;
            Req::Count(range, r)
        }
        Miss::Scan { range, reverse, .. } => {
            let q = idb_range(&range)?;
            // All of a range is read forward, whichever way it is scanned.
            let reverse = reverse && n != usize::MAX;
            // A limited scan of an index: its documents come along.
            let docs = !reverse
                && n < LIMITED
                && matches!(&range.start, Bound::Included(k) | Bound::Excluded(k) if k.first() == Some(&b'I'));
            Req::All {
                range,
                limit: n,
                reverse,
                read: RangeRead::issue(store, &q, n, reverse)?,
                docs,
            }
        }
    })
}

enum Req {
    /// A family's count; the family itself, if it is small enough, or else the misses
    /// inside it, read once the count is known.
    Ahead {
        family: Vec<u8>,
        range: KeyRange,
        count: IdbRequest,
        deferred: Vec<(Miss, usize)>,
    },
    Point(Vec<u8>, IdbRequest),
    /// The key filter's pages (when not read in yet), then the points it does not
    /// show absent (those of the families read ahead: see `Req::Ahead`).
    Filtered {
        pages: RangeRead,
        points: Vec<Vec<u8>>,
    },
    All {
        range: KeyRange,
        limit: usize,
        reverse: bool,
        read: RangeRead,
        /// Also load the documents its entries name (a limited index scan).
        docs: bool,
    },
    Count(KeyRange, IdbRequest),
}

/// The reads of the backend's own records at open: the filter's meta record, its
/// pages, the write-ahead records.
type MetaReads = (IdbRequest, RangeRead);

/// Loads issued in one read transaction (see [`IdbStore::begin_load`]).
pub struct LoadJob {
    /// The read transaction and its store (none when there is nothing to read).
    tx: Option<(web_sys::IdbObjectStore, IdbTransaction)>,
    reqs: Vec<Req>,
    gen0: u64,
    /// Most entries a family may have to be read ahead.
    ahead_max: u64,
    doc_of: Option<DocOf>,
    filter: Option<FilterShare>,
}

/// What a load needs of its store for `Req::Filtered`: the key filter, its readers
/// (see `IdbStore::filter_readers`) and the counters.
struct FilterShare {
    filter: Rc<RefCell<Filter>>,
    readers: Rc<Cell<u32>>,
    stats: Rc<RefCell<IdbStats>>,
}

/// What a [`LoadJob`] read, for [`IdbStore::finish_load`].
pub struct Loaded {
    gen0: u64,
    data: Result<LoadedData, Error>,
}

struct ScanChunk {
    range: KeyRange,
    reverse: bool,
    limit: usize,
    entries: Vec<Entry>,
}

#[derive(Default)]
struct LoadedData {
    points: Vec<(Vec<u8>, Option<Vec<u8>>)>,
    /// The documents a limited index scan's entries name, read along with it.
    along: Vec<(Vec<u8>, Option<Vec<u8>>)>,
    scans: Vec<ScanChunk>,
    counts: Vec<(KeyRange, u64)>,
    /// Families to read ahead whose misses all proved absent: not read, and to be
    /// considered again at their next miss.
    unread_families: Vec<Vec<u8>>,
}

fn bytes_of(v: &JsValue) -> Vec<u8> {
    Uint8Array::new(v).to_vec()
}

impl LoadJob {
    /// Awaits every request (the store is not borrowed meanwhile).
    pub async fn wait(self) -> Loaded {
        let gen0 = self.gen0;
        Loaded {
            gen0,
            data: self.read().await,
        }
    }

    async fn read(self) -> Result<LoadedData, Error> {
        let mut out = LoadedData::default();
        let mut aheads = Vec::new();
        let mut doc_gets = Vec::new();
        // The points' answers, taken into WebAssembly together at the end.
        let mut point_keys = Vec::new();
        let point_values = Array::new();
        let Some((store, _tx)) = &self.tx else {
            return Ok(out);
        };
        let mut reqs: VecDeque<Req> = self.reqs.into();
        while let Some(r) = reqs.pop_front() {
            match r {
                Req::Ahead {
                    family,
                    range,
                    count,
                    deferred,
                } => {
                    // Points the key filter, read in by this load, shows absent: not
                    // read, and when they were all that was missed in the family, it
                    // is not read ahead either (for creates, just after a reopen).
                    let before = deferred.len();
                    let deferred: Vec<(Miss, usize)> = match &self.filter {
                        Some(share) if share.filter.borrow().is_loaded() => {
                            let f = share.filter.borrow();
                            let mut rest = Vec::with_capacity(deferred.len());
                            for (m, n) in deferred {
                                match m {
                                    Miss::Point(k) if !f.may_contain(&k) => {
                                        share.stats.borrow_mut().absent_by_filter += 1;
                                        point_keys.push(k);
                                        point_values.push(&JsValue::UNDEFINED);
                                    }
                                    m => rest.push((m, n)),
                                }
                            }
                            rest
                        }
                        _ => deferred,
                    };
                    if deferred.is_empty() && before > 0 {
                        out.unread_families.push(family);
                        continue;
                    }
                    let n = request(&count).await.map_err(|e| js_err("count", e))?;
                    let n = n.as_f64().unwrap_or(f64::MAX);
                    if n > self.ahead_max as f64 {
                        // Too big to read whole: the misses inside it are read instead.
                        for (m, n) in deferred {
                            reqs.push_back(issue(store, m, n)?);
                        }
                    } else {
                        // Still inside the transaction: its requests are pending.
                        let read = RangeRead::all(store, &range)?;
                        aheads.push((range, read));
                    }
                }
                Req::Point(k, req) => {
                    let v = request(&req).await.map_err(|e| js_err("get", e))?;
                    point_keys.push(k);
                    point_values.push(&v);
                }
                Req::Filtered { pages, points } => {
                    let pages = pages.entries().await?;
                    let FilterShare {
                        filter,
                        readers,
                        stats,
                    } = self.filter.as_ref().expect("a store's load");
                    let mut f = filter.borrow_mut();
                    take_in_filter_pages(&mut f, readers, &pages)?;
                    for k in points {
                        if f.is_loaded() && !f.may_contain(&k) {
                            stats.borrow_mut().absent_by_filter += 1;
                            point_keys.push(k);
                            point_values.push(&JsValue::UNDEFINED);
                        } else {
                            let r = store.get(&key(&k)).map_err(|e| js_err("get", e))?;
                            reqs.push_back(Req::Point(k, r));
                        }
                    }
                }
                Req::Count(range, req) => {
                    let v = request(&req).await.map_err(|e| js_err("count", e))?;
                    out.counts.push((range, v.as_f64().unwrap_or(0.0) as u64));
                }
                Req::All {
                    range,
                    limit,
                    reverse,
                    read,
                    docs,
                } => {
                    let entries = read.entries().await?;
                    if let (true, Some(doc_of)) = (docs, &self.doc_of) {
                        // Still inside the transaction: issued now, read below.
                        for (k, _) in &entries {
                            if let Some(dk) = doc_of(k) {
                                let r = store.get(&key(&dk)).map_err(|e| js_err("get", e))?;
                                doc_gets.push((dk, r));
                            }
                        }
                    }
                    out.scans.push(ScanChunk {
                        range,
                        reverse,
                        limit,
                        entries,
                    });
                }
            }
        }
        out.points = point_keys
            .into_iter()
            .zip(pack::unpack(&point_values))
            .collect();
        let along = Array::new();
        let mut along_keys = Vec::with_capacity(doc_gets.len());
        for (k, req) in doc_gets {
            along.push(&request(&req).await.map_err(|e| js_err("get", e))?);
            along_keys.push(k);
        }
        out.along = along_keys.into_iter().zip(pack::unpack(&along)).collect();
        for (range, read) in aheads {
            let entries = read.entries().await?;
            out.scans.push(ScanChunk {
                range,
                reverse: false,
                limit: usize::MAX,
                entries,
            });
        }
        Ok(out)
    }
}

#[wasm_bindgen]
extern "C" {
    /// An object store, for what `web_sys` does not bind yet.
    #[wasm_bindgen(js_name = IDBObjectStore)]
    type RecordsStore;
    /// `IDBObjectStore.getAllRecords(options)`: a range's keys and values in one
    /// request, in either direction (Chromium 141 and later).
    #[wasm_bindgen(method, catch, js_name = getAllRecords)]
    fn get_all_records(
        this: &RecordsStore,
        options: &js_sys::Object,
    ) -> Result<IdbRequest, JsValue>;
}

thread_local! {
    /// Whether range reads use `getAllRecords` (found out once).
    static RECORDS: Cell<Option<bool>> = const { Cell::new(None) };
}

/// Whether this browser's IndexedDB has `getAllRecords`.
fn browser_has_records() -> bool {
    let global = js_sys::global();
    js_sys::Reflect::get(&global, &"IDBObjectStore".into())
        .ok()
        .filter(|c| c.is_function())
        .and_then(|c| js_sys::Reflect::get(&c, &"prototype".into()).ok())
        .and_then(|p| js_sys::Reflect::get(&p, &"getAllRecords".into()).ok())
        .is_some_and(|f| f.is_function())
}

fn use_records() -> bool {
    RECORDS.with(|c| {
        c.get().unwrap_or_else(|| {
            let b = browser_has_records();
            c.set(Some(b));
            b
        })
    })
}

/// Reads ranges as a browser without `getAllRecords` does (`false`), or with it when
/// the browser has it (`true`, the default): for tests of both ways. Gives whether it
/// is used now.
#[doc(hidden)]
pub fn use_get_all_records(on: bool) -> bool {
    let used = on && browser_has_records();
    RECORDS.with(|c| c.set(Some(used)));
    used
}

/// A read of up to `limit` entries of a key range, either way (`usize::MAX`: all of
/// it). Forward, a `getAllKeys` and a `getAll` of the range. Reversed, one
/// `getAllRecords` (keys and values, newest first) where the browser has it; elsewhere
/// a reverse cursor's walk, a round trip per entry. `tests/bench-browser/layouts.mjs`
/// measures both (docs/BENCHMARKS.md): reversed, the one request takes half the walk's
/// time; forward, `getAllRecords` gains nothing over the pair, which stays.
enum RangeRead {
    Records(IdbRequest),
    Pair(IdbRequest, IdbRequest),
    Walk(PrevWalk),
}

impl RangeRead {
    /// All of `range`.
    fn all(store: &web_sys::IdbObjectStore, range: &KeyRange) -> Result<RangeRead, Error> {
        RangeRead::issue(store, &idb_range(range)?, usize::MAX, false)
    }

    fn issue(
        store: &web_sys::IdbObjectStore,
        q: &JsValue,
        limit: usize,
        reverse: bool,
    ) -> Result<RangeRead, Error> {
        let count = u32::try_from(limit).ok().filter(|_| limit != usize::MAX);
        if reverse && use_records() {
            let o = js_sys::Object::new();
            let set = |k: &str, v: &JsValue| {
                js_sys::Reflect::set(&o, &k.into(), v).map_err(|e| js_err("getAllRecords", e))
            };
            set("query", q)?;
            if let Some(n) = count {
                set("count", &n.into())?;
            }
            set("direction", &"prev".into())?;
            return store
                .unchecked_ref::<RecordsStore>()
                .get_all_records(&o)
                .map(RangeRead::Records)
                .map_err(|e| js_err("getAllRecords", e));
        }
        if reverse {
            let cursor = store
                .open_cursor_with_range_and_direction(q, IdbCursorDirection::Prev)
                .map_err(|e| js_err("openCursor", e))?;
            return Ok(RangeRead::Walk(PrevWalk::start(cursor, limit)));
        }
        let (keys, values) = match count {
            Some(n) => (
                store.get_all_keys_with_key_and_limit(q, n),
                store.get_all_with_key_and_limit(q, n),
            ),
            None => (store.get_all_keys_with_key(q), store.get_all_with_key(q)),
        };
        Ok(RangeRead::Pair(
            keys.map_err(|e| js_err("getAllKeys", e))?,
            values.map_err(|e| js_err("getAll", e))?,
        ))
    }

    /// The entries read, in the read's direction.
    async fn entries(self) -> Result<Vec<Entry>, Error> {
        match self {
            RangeRead::Records(r) => {
                let records: Array = request(&r)
                    .await
                    .map_err(|e| js_err("getAllRecords", e))?
                    .unchecked_into();
                Ok(pack::records(&records))
            }
            RangeRead::Pair(keys, values) => {
                let keys: Array = request(&keys)
                    .await
                    .map_err(|e| js_err("getAllKeys", e))?
                    .unchecked_into();
                let values: Array = request(&values)
                    .await
                    .map_err(|e| js_err("getAll", e))?
                    .unchecked_into();
                if keys.length() != values.length() {
                    return Err(Error::new(
                        ErrorCode::Storage,
                        "IndexedDB returned keys and values of different lengths",
                    ));
                }
                Ok(pack::entries(&keys, &values))
            }
            RangeRead::Walk(walk) => walk.entries().await,
        }
    }
}

/// A reverse cursor's walk for up to `limit` entries. Its handlers are attached when
/// the cursor is opened: a cursor moves on only from its own success event (the
/// transaction is active then and only then), so a walk that began listening late,
/// after an event had gone by, would wait for ever. [`PrevWalk::entries`] awaits it.
struct PrevWalk {
    req: IdbRequest,
    out: Rc<RefCell<Vec<Entry>>>,
    failed: Rc<Cell<bool>>,
    done: oneshot::Receiver<()>,
    /// Kept alive while the walk runs; dropped (and the handlers cleared) after it.
    handlers: [Closure<dyn FnMut(web_sys::Event)>; 2],
}

impl PrevWalk {
    fn start(req: IdbRequest, limit: usize) -> PrevWalk {
        let out: Rc<RefCell<Vec<Entry>>> = Rc::default();
        let failed: Rc<Cell<bool>> = Rc::default();
        let (done_tx, done) = oneshot::channel::<()>();
        let done_tx = Rc::new(RefCell::new(Some(done_tx)));
        let finish = {
            let done_tx = done_tx.clone();
            move || {
                if let Some(t) = done_tx.borrow_mut().take() {
                    let _ = t.send(());
                }
            }
        };
        let step = {
            let req = req.clone();
            let out = out.clone();
            let failed = failed.clone();
            let finish = finish.clone();
            Closure::<dyn FnMut(web_sys::Event)>::new(move |_: web_sys::Event| {
                let cursor = match req.result() {
                    Ok(c) if !c.is_null() && !c.is_undefined() => {
                        c.unchecked_into::<IdbCursorWithValue>()
                    }
                    Ok(_) => return finish(),
                    Err(_) => {
                        failed.set(true);
                        return finish();
                    }
                };
                match (cursor.key(), cursor.value()) {
                    (Ok(k), Ok(v)) => out.borrow_mut().push((bytes_of(&k), bytes_of(&v))),
                    _ => {
                        failed.set(true);
                        return finish();
                    }
                }
                if out.borrow().len() >= limit || cursor.continue_().is_err() {
                    finish();
                }
            })
        };
        let fail = {
            let failed = failed.clone();
            Closure::<dyn FnMut(web_sys::Event)>::new(move |_: web_sys::Event| {
                failed.set(true);
                finish();
            })
        };
        req.set_onsuccess(Some(step.as_ref().unchecked_ref()));
        req.set_onerror(Some(fail.as_ref().unchecked_ref()));
        PrevWalk {
            req,
            out,
            failed,
            done,
            handlers: [step, fail],
        }
    }

    /// The entries, once the walk has ended (at `limit`, the range's start, or an
    /// error).
    async fn entries(self) -> Result<Vec<Entry>, Error> {
        let PrevWalk {
            req,
            out,
            failed,
            done,
            handlers,
        } = self;
        let _ = done.await;
        req.set_onsuccess(None);
        req.set_onerror(None);
        drop(handlers);
        if failed.get() {
            return Err(js_err(
                "openCursor",
                req.error()
                    .ok()
                    .flatten()
                    .map(JsValue::from)
                    .unwrap_or(JsValue::UNDEFINED),
            ));
        }
        Ok(Rc::try_unwrap(out)
            .map(RefCell::into_inner)
            .unwrap_or_default())
    }
}

impl Storage for IdbStore {
    fn get(&self, k: &[u8]) -> Result<Option<Vec<u8>>, Error> {
        let now = self.tick.get();
        if self.spans.borrow_mut().holds(k, now) {
            return Ok(self.cache.get(k).cloned());
        }
        if !self.filter.borrow().may_contain(k) {
            // Never written to this database: certainly absent.
            self.spans.borrow_mut().add_point(k, now);
            self.stats.borrow_mut().absent_by_filter += 1;
            return Ok(None);
        }
        self.miss(Miss::Point(k.to_vec()));
        Ok(self.cache.get(k).cloned())
    }

    fn scan(&self, range: &KeyRange, reverse: bool, limit: usize) -> Result<Vec<Entry>, Error> {
        if limit == 0 || range.is_empty() {
            return Ok(Vec::new());
        }
        let now = self.tick.get();
        if self.spans.borrow_mut().covers(range, now) {
            return Ok(self.cache_range(range, reverse, limit));
        }
        // The part held from the scan's first key on answers exactly, as far as it goes.
        let held = self.spans.borrow_mut().held_part(range, reverse, now);
        let got = held
            .as_ref()
            .map(|h| self.cache_range(h, reverse, limit))
            .unwrap_or_default();
        if got.len() == limit {
            return Ok(got);
        }
        let rest = match &held {
            None => range.clone(),
            Some(h) if reverse => KeyRange {
                start: range.start.clone(),
                end: match &h.start {
                    Bound::Included(s) => Bound::Excluded(s.clone()),
                    other => other.clone(),
                },
            },
            Some(h) => KeyRange {
                start: match &h.end {
                    Bound::Excluded(e) => Bound::Included(e.clone()),
                    other => other.clone(),
                },
                end: range.end.clone(),
            },
        };
        self.miss(Miss::Scan {
            range: rest,
            reverse,
            limit: limit - got.len(),
        });
        // A short answer: the caller reads no further (its run is repeated).
        Ok(got)
    }

    fn count(&self, range: &KeyRange, limit: u64) -> Result<u64, Error> {
        if limit == 0 || range.is_empty() {
            return Ok(0);
        }
        let now = self.tick.get();
        if let Some((_, n)) = self.counts.borrow().iter().find(|(r, _)| r == range) {
            return Ok((*n).min(limit));
        }
        if self.spans.borrow_mut().covers(range, now) {
            let n = self
                .cache
                .range::<[u8], _>((as_ref(&range.start), as_ref(&range.end)))
                .count() as u64;
            // Kept, and kept right by the writes (whether a key was there is known in
            // a held range): the next count of it is a lookup.
            let mut counts = self.counts.borrow_mut();
            if counts.len() < MAX_COUNTS {
                counts.push((range.clone(), n));
            }
            return Ok(n.min(limit));
        }
        self.miss(Miss::Count(range.clone()));
        Ok(0)
    }

    fn is_partial(&self) -> bool {
        true
    }

    fn apply(&mut self, batch: Batch) -> Result<(), Error> {
        if batch.is_empty() {
            return Ok(());
        }
        self.write_gen += 1;
        let now = self.tick.get();
        for (k, v) in batch.ops {
            // Whether the key was there before, if known (for the cached counts).
            let before = if self.spans.borrow_mut().holds(&k, now) {
                Some(self.cache.contains_key(&k))
            } else if !self.filter.borrow().may_contain(&k) {
                Some(false)
            } else {
                None
            };
            self.recount(&k, before, v.is_some());
            if self.loads_out > 0 {
                self.recent.insert(k.clone(), self.write_gen);
            }
            match &v {
                Some(v) => self.cache_put(k.clone(), v.clone()),
                None => self.cache_remove(&k),
            }
            // The cache now holds this key's newest value (or its absence): reading it
            // again needs no trip to IndexedDB.
            self.spans.borrow_mut().add_point(&k, now);
            self.dirty.insert(k, v);
        }
        Ok(())
    }
}

#[cfg(all(test, target_arch = "wasm32"))]
mod browser_tests {
    use super::*;
    use wasm_bindgen_test::{wasm_bindgen_test, wasm_bindgen_test_configure};

    wasm_bindgen_test_configure!(run_in_browser);

    /// A load awaits its requests in its own order: a reverse walk awaited after a
    /// request made later (and so answered after the cursor's first entry) still
    /// walks to its limit. It waited for ever when its handlers were attached only
    /// once awaited.
    #[wasm_bindgen_test]
    async fn a_reverse_walk_awaited_late_still_walks() {
        let name = "idb-unit-reverse-walk-late";
        IdbStore::delete(name).await.unwrap();
        let mut s = IdbStore::open(name).await.unwrap();
        let mut b = Batch::default();
        for i in 0..10u8 {
            b.put(vec![b'a', i], vec![i]);
        }
        s.apply(b).unwrap();
        s.flush().await.unwrap();
        let tx = s.db.transaction_with_str(KV).unwrap();
        let store = tx.object_store(KV).unwrap();
        let miss = Miss::Scan {
            range: KeyRange::prefix(b"a"),
            reverse: true,
            limit: 4,
        };
        // Without getAllRecords a limited reverse scan is a cursor's walk.
        use_get_all_records(false);
        let issued = issue(&store, miss, 4).unwrap();
        assert!(use_get_all_records(true), "this browser has getAllRecords");
        let Req::All {
            read: RangeRead::Walk(walk),
            ..
        } = issued
        else {
            panic!("a limited reverse scan is a cursor walk");
        };
        let later = store.get(&key(&[b'a', 0])).unwrap();
        request(&later).await.unwrap();
        let got: Vec<u8> = walk
            .entries()
            .await
            .unwrap()
            .into_iter()
            .map(|(k, v)| {
                assert_eq!(k[1], v[0]);
                k[1]
            })
            .collect();
        assert_eq!(got, [9, 8, 7, 6]);
        s.close();
        IdbStore::delete(name).await.unwrap();
    }
}
