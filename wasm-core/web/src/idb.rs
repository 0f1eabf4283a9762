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
//! - **The key space is in runs** (`crate::runs`): what a flush writes is a new run of
//!   sorted 32 KiB blocks, never rewritten; neighbouring runs of about one size are
//!   merged in the background ([`IdbStore::pump_merge`]). The store keeps the runs'
//!   list and their blocks' first keys in memory, read at open.
//! - **Loads are as large as the read.** A miss reads, of each run that may hold its
//!   keys, the blocks it needs: a point's block; a scan's first blocks from its end (an
//!   engine page of an unbounded scan reads 256 entries' worth, then four times more
//!   each time the same scan continues); a range whole. What they decide (more than the
//!   miss asked, usually) is taken in.
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
//!   a run; the records are applied together later as one run (and over the runs in
//!   memory at open), and an apply deletes every record issued before it, so no run
//!   holds a value newer than a record left; a load takes nothing over a key not in a
//!   run yet.
//! - **Bounded memory.** The cache has a byte cap ([`DEFAULT_CACHE_BYTES`] unless the
//!   driver sets another), over its entries and the spans that say what it holds (an
//!   absence is a span with no entry): past it, the spans used least recently are
//!   evicted (never
//!   what is not yet durable, the replica's own small key spaces, or what an operation
//!   in progress has used).
//!
//! Block keys are binary keys (`Uint8Array`): IndexedDB orders binary keys byte by
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
use wasm_bindgen::{JsCast, JsValue};
use wasm_bindgen_futures::JsFuture;
use web_sys::{
    IdbDatabase, IdbFactory, IdbKeyRange, IdbOpenDbRequest, IdbRequest, IdbRequestReadyState,
    IdbTransaction, IdbTransactionMode,
};

use crate::filter::{self, Filter};
use crate::migrations;
use crate::pack;
use crate::runs::{self, Runs};
use crate::spans::{self, normalize, End, Spans};
use crate::wal::{self, Writes};

/// The object store that holds the engine's key space: the runs' blocks (`runs.rs`).
const RUNS: &str = "runs";
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
/// A load that misses at least this many points of a family (a batch of reads) reads
/// the family ahead at once; fewer do once a point read found a key there.
const BATCH_POINTS: u64 = 16;
/// Entries a block is taken to hold, to turn a scan's chunk into blocks (a 32 KiB
/// block holds about 150 documents, or 500 index entries).
const ENTRIES_PER_BLOCK: usize = 128;
/// Counts of ranges kept at most.
const MAX_COUNTS: usize = 4096;
/// A flush of at most this many writes and bytes is one write-ahead record (`wal.rs`),
/// while the records not yet applied are fewer than [`WAL_RECORDS`] and hold
/// less than [`WAL_BYTES`]; past either, or for a larger flush, the flush applies them
/// (a large flush is written once, not as a record and then again).
const WAL_WRITES: usize = 64;
const WAL_WRITE_BYTES: usize = 16 << 10;
const WAL_RECORDS: u64 = 128;
const WAL_BYTES: usize = 1 << 20;
/// Key spaces never evicted: the replica's own records (client, outbox, cursors,
/// requests), small. They are not in the runs but in a log of their own in `meta`
/// (see [`OWN_PREFIX`]), read whole at open.
/// In order (see [`unpinned`]).
const PINNED: &[u8] = b"KOQX";
/// The pinned spaces' log: records under this prefix and a u64 big-endian number, each
/// the pinned writes of one flush to the runs (the write-ahead records' format). They
/// change like queues (an outbox entry is written, then deleted when confirmed), which
/// in runs would leave every entry ever held in the older runs until merged, for every
/// open to read; as one record per flush they cost one `put`, where a record per key
/// would cost one per key.
const OWN_PREFIX: &[u8] = b"\xFFown/";
/// Past this many records in the pinned spaces' log (or past twice the bytes of what
/// they hold, and at least [`OWN_SNAPSHOT_BYTES`]), a flush with none other in flight
/// writes them whole as one record instead, and deletes the others.
const OWN_RECORDS: u64 = 32;
const OWN_SNAPSHOT_BYTES: usize = 64 << 10;

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

/// A transaction over the object stores `names`, and the stores.
fn stores<const N: usize>(
    db: &IdbDatabase,
    names: [&str; N],
    mode: IdbTransactionMode,
) -> Result<(IdbTransaction, [web_sys::IdbObjectStore; N]), Error> {
    let scope = Array::new();
    for n in names {
        scope.push(&n.into());
    }
    let tx = db
        .transaction_with_str_sequence_and_mode(&scope, mode)
        .map_err(|e| js_err("transaction", e))?;
    let mut out = Vec::with_capacity(N);
    for n in names {
        out.push(tx.object_store(n).map_err(|e| js_err("object store", e))?);
    }
    let out = out
        .try_into()
        .unwrap_or_else(|_| unreachable!("one store a name"));
    Ok((tx, out))
}

/// The IndexedDB key range `[from, to)`.
fn half_open(from: &[u8], to: &[u8]) -> Result<JsValue, JsValue> {
    IdbKeyRange::bound_with_lower_open_and_upper_open(&key(from), &key(to), false, true)
        .map(Into::into)
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
    /// write-ahead records as a run (the others each wrote one record).
    pub flushes: u64,
    pub failed_flushes: u64,
    pub applies: u64,
    /// Writes the write transactions requested (a put, a delete of a key or of a run
    /// of keys, a record, the records' deletion).
    pub write_requests: u64,
    /// Evicted bytes, in all.
    pub evicted_bytes: u64,
    /// Blocks the loads read, and merges of runs done.
    pub blocks_loaded: u64,
    pub merges: u64,
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
    /// Runs stored now, their blocks and their bytes.
    pub runs: u64,
    pub blocks: u64,
    pub run_bytes: u64,
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
    /// The records not yet applied, the flushes in flight and the queue, as a run; the
    /// records deleted.
    Apply,
    /// The queue alone, as a run (when no record may hold writes the runs lack).
    Direct,
}

/// A flush issued and not yet settled.
struct InFlight {
    id: u64,
    /// The write generation it made durable (every write up to it, once it succeeds).
    gen: u64,
    /// `Some(n)`: it writes the write-ahead record `n`; `None`: it writes a run.
    record: Option<u64>,
    /// The run it writes, if any (taken out of the runs if it fails).
    run: Option<u64>,
    /// It is an apply: it deletes the records issued before it (and writes what they
    /// and the flushes then in flight wrote).
    took_records: bool,
    /// What it writes (an apply: everything not known to be in a run when issued).
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
    /// The runs IndexedDB holds (or will, once the flushes issued complete); a load
    /// keeps the runs as they were when it was issued.
    runs: Rc<Runs>,
    cap: usize,
    spans: RefCell<Spans>,
    /// The clock of use: each operation starts a new tick.
    tick: Cell<u64>,
    /// Operations in progress, by their first tick: what they used is not evicted.
    ops: RefCell<BTreeMap<u64, u32>>,
    misses: RefCell<Vec<Miss>>,
    /// Read in after open (see [`IdbStore::load_filter`]) or by the first flush that
    /// writes a run.
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
    /// Families a point read found a key in, in this session: a point missed there
    /// has its family read ahead (see [`IdbStore::begin_load`]).
    found_in: HashSet<Vec<u8>>,
    /// The blocks points read before (see [`SeenBlocks`]).
    seen_blocks: Rc<RefCell<SeenBlocks>>,
    /// Called when a flush is committed to and when it completes (the driver then
    /// reports what waited for either, and settles the completed).
    notify: Option<Rc<dyn Fn()>>,
    /// The document an index entry names (the driver knows the indexes' fields).
    doc_of: Option<DocOf>,
    epoch: Option<f64>,
    fenced: bool,
    stats: Rc<RefCell<IdbStats>>,
    /// The merge of runs under way, if any (see [`IdbStore::pump_merge`]).
    merging: Option<Merging>,
    /// The pinned spaces' log ([`OWN_PREFIX`]): the next record's number, how many
    /// records it has and their bytes.
    own_next: u64,
    own_records: u64,
    own_bytes: usize,
}

/// A merge of runs under way: its plan and the step in flight (a read of its inputs'
/// blocks, a write of the new run's, or the transaction that ends it).
struct Merging {
    c: Option<runs::Compaction>,
    step: Rc<RefCell<Option<Result<MergeStep, Error>>>>,
    /// Fires when the step in flight is done (for [`IdbStore::merge_all`]).
    finished: Option<oneshot::Receiver<()>>,
    /// A write of it found the database claimed by another page.
    fenced: Rc<Cell<bool>>,
    /// What the ending transaction undoes in the runs if it fails.
    ending: Option<runs::Finished>,
}

impl Merging {
    /// What the step issued now reports with: its result, then the notifier.
    fn reporter(&mut self, notify: Option<Rc<dyn Fn()>>) -> impl FnOnce(Result<MergeStep, Error>) {
        let step = self.step.clone();
        let (fire, fired) = oneshot::channel();
        self.finished = Some(fired);
        move |result| {
            *step.borrow_mut() = Some(result);
            let _ = fire.send(());
            if let Some(f) = notify {
                f();
            }
        }
    }
}

/// What a merge's step did.
enum MergeStep {
    Read(Vec<(Vec<u8>, Vec<u8>)>),
    Wrote,
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
    /// Opens (creating or upgrading) the database `name` and loads its key filter and
    /// the list of its runs. Nothing else is loaded yet.
    pub async fn open(name: &str) -> Result<IdbStore, Error> {
        let db = Self::open_db(name).await?;
        let opened = Self::read_meta(&db).await?;
        let mut store = Self::with(db, name, opened.filter, opened.runs);
        store.take_own(opened.own);
        store.replay(opened.replay);
        Ok(store)
    }

    /// Opens the database `name`, claims it (see [`IdbStore::claim`]) and loads its key
    /// filter, its runs and the ranges `preload`, all in one transaction (what a driver
    /// needs at once, in one round trip). Over the origin's quota even the claim cannot
    /// be written: then it opens without it (reads work; writes fail with
    /// QUOTA_EXCEEDED).
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
            Ok((epoch, opened, decided)) => {
                let t2 = js_sys::Date::now();
                let mut store = Self::with(db, name, opened.filter, opened.runs);
                store.epoch = Some(epoch);
                store.take_own(opened.own);
                store.take_preloaded(decided);
                store.replay(opened.replay);
                let mut st = store.stats.borrow_mut();
                st.open_db_ms = (t1 - t0) as u64;
                st.open_read_ms = (t2 - t1) as u64;
                drop(st);
                Ok(store)
            }
            Err(e) if e.code == ErrorCode::QuotaExceeded => {
                let opened = Self::read_meta(&db).await?;
                let mut store = Self::with(db, name, opened.filter, opened.runs);
                store.take_own(opened.own);
                let misses = preload.iter().cloned().map(Miss::range).collect();
                store.load_misses(misses).await?;
                store.replay(opened.replay);
                Ok(store)
            }
            Err(e) => Err(e),
        }
    }

    /// The claim, the filter, the write-ahead records, the runs and the preloaded
    /// ranges, in one read-write transaction, which also deletes the blocks of runs
    /// with no record (a merge cut short).
    async fn claim_and_read(
        db: &IdbDatabase,
        preload: &[KeyRange],
    ) -> Result<(f64, Opened, Vec<(KeyRange, Vec<Entry>)>), Error> {
        let (tx, [store, meta]) = stores(db, [RUNS, META], IdbTransactionMode::Readwrite)?;
        let get_epoch = meta
            .get(&key(EPOCH_KEY))
            .map_err(|e| js_err("read the epoch", e))?;
        let reads = Self::meta_requests(&meta)?;
        // Its answer comes first; the other requests keep the transaction open.
        let epoch = epoch_of(
            &request(&get_epoch)
                .await
                .map_err(|e| js_err("read the epoch", e))?,
        ) + 1.0;
        meta.put_with_key(&JsValue::from_f64(epoch), &key(EPOCH_KEY))
            .map_err(|e| js_err("write the epoch", e))?;
        let opened = Self::meta_from(reads).await?;
        for n in &opened.orphans {
            let q = half_open(&runs::block_key(*n, &[]), &runs::block_key(n + 1, &[]))
                .map_err(|e| js_err("key range", e))?;
            store.delete(&q).map_err(|e| js_err("delete", e))?;
            meta.delete(&key(&runs::writing_key(*n)))
                .map_err(|e| js_err("delete", e))?;
        }
        // The preloaded ranges, from the runs now known.
        let mut fetch = Fetch::default();
        let reads: Vec<RunRead> = preload
            .iter()
            .map(|r| RunRead {
                range: r.clone(),
                reads: opened.runs.covering(r),
                purpose: Purpose::Data,
                scan: None,
                count: None,
                answers: None,
            })
            .collect();
        for r in &reads {
            fetch.ask(&store, &opened.runs, &r.reads)?;
        }
        fetch.wait().await?;
        let none = BTreeSet::new();
        let mut decided = Vec::with_capacity(reads.len());
        for r in &reads {
            decided.push(fetch.answer(&opened.runs, &none, r)?);
        }
        complete(&tx).await.map_err(|e| js_err("open", e))?;
        Ok((epoch, opened, decided))
    }

    /// Takes whole ranges read at open into the cache.
    fn take_preloaded(&mut self, decided: Vec<(KeyRange, Vec<Entry>)>) {
        for (known, es) in decided {
            for (k, v) in es {
                self.cache_put(k, v);
            }
            self.spans.borrow_mut().add(&known, 0);
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

    fn with(db: IdbDatabase, name: &str, mut filter: Filter, runs: Runs) -> IdbStore {
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
            runs: Rc::new(runs),
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
            found_in: HashSet::new(),
            seen_blocks: Rc::default(),
            notify: None,
            doc_of: None,
            epoch: None,
            fenced: false,
            stats: Rc::default(),
            merging: None,
            own_next: 0,
            own_records: 0,
            own_bytes: 0,
        }
    }

    async fn read_meta(db: &IdbDatabase) -> Result<Opened, Error> {
        let (_tx, [meta]) = stores(db, [META], IdbTransactionMode::Readonly)?;
        Self::meta_from(Self::meta_requests(&meta)?).await
    }

    /// The requests that read the backend's own records at open: the filter's meta
    /// record, the write-ahead records, the runs' records (which name their blocks) and
    /// the marks of runs being written (`runs::WRITING_PREFIX`); no block's key. The
    /// filter's pages are read later (they grow with the database: 570 KiB at 100,000
    /// documents), see [`IdbStore::load_filter`].
    fn meta_requests(meta: &web_sys::IdbObjectStore) -> Result<MetaReads, Error> {
        Ok(MetaReads {
            filter: meta
                .get(&key(filter::META_KEY))
                .map_err(|e| js_err("get", e))?,
            records: RangeRead::all(meta, &KeyRange::prefix(wal::PREFIX))?,
            own: RangeRead::all(meta, &KeyRange::prefix(OWN_PREFIX))?,
            runs: RangeRead::all(meta, &KeyRange::prefix(runs::META_PREFIX))?,
            writing: meta
                .get_all_keys_with_key(
                    &half_open(runs::WRITING_PREFIX, &runs::writing_key(u64::MAX))
                        .map_err(|e| js_err("key range", e))?,
                )
                .map_err(|e| js_err("getAllKeys", e))?,
        })
    }

    async fn meta_from(reads: MetaReads) -> Result<Opened, Error> {
        let meta = request(&reads.filter).await.map_err(|e| js_err("get", e))?;
        let records = reads.records.entries().await?;
        let own_records = reads.own.entries().await?;
        let run_records = reads.runs.entries().await?;
        let writing: Array = request(&reads.writing)
            .await
            .map_err(|e| js_err("getAllKeys", e))?
            .unchecked_into();
        if meta.is_undefined() {
            return Err(Error::new(
                ErrorCode::Corrupt,
                "the database has no key filter (it was not made by this version)",
            ));
        }
        let meta = Uint8Array::new(&meta).to_vec();
        let filter = Filter::from_meta(&meta).map_err(bad_filter)?;
        let writing = pack::unpack(&writing).into_iter().flatten().collect();
        let (runs, orphans) = Runs::open(run_records, writing, None)
            .map_err(|e| Error::new(ErrorCode::Corrupt, format!("the runs: {}", e.0)))?;
        let replay = fold_log(records, wal::PREFIX, "write-ahead record")?;
        let own = fold_log(own_records, OWN_PREFIX, "own spaces' log record")?;
        Ok(Opened {
            filter,
            own,
            replay,
            runs,
            orphans,
        })
    }

    /// Takes in the pinned spaces' log found at open: the whole of those spaces, held
    /// from now on (never evicted, and no load takes anything there).
    fn take_own(&mut self, own: Replay) {
        for (k, v) in own.writes {
            if let Some(v) = v {
                self.cache_put(k, v);
            }
        }
        for p in PINNED {
            self.spans.borrow_mut().add(&KeyRange::prefix(&[*p]), 0);
        }
        self.own_next = own.next;
        self.own_records = own.records;
        self.own_bytes = own.bytes;
    }

    /// Takes in the write-ahead records found at open: their writes are the newest
    /// values of their keys (over the runs and what was preloaded from them), held by
    /// the cache until an apply writes them as a run.
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
            .transaction_with_str_and_mode(META, IdbTransactionMode::Readwrite)
            .map_err(|e| js_err("claim transaction", e))?;
        let store = tx
            .object_store(META)
            .map_err(|e| js_err("object store", e))?;
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
            runs: self.runs.runs().len() as u64,
            blocks: self.runs.runs().iter().map(|r| r.firsts.len() as u64).sum(),
            run_bytes: self.runs.runs().iter().map(|r| r.bytes).sum(),
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

    /// Whether the cache may hold a newer value of `k` than the runs.
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

    /// Issues the loads of `misses` in one read transaction: for each, the blocks of
    /// every run that may hold its keys. Returns at once; await [`LoadJob::wait`], then
    /// hand its result to [`IdbStore::finish_load`].
    pub fn begin_load(&mut self, misses: Vec<Miss>) -> Result<LoadJob, Error> {
        // What to read: the misses not answered since, and the families to read ahead.
        let mut plan = Vec::with_capacity(misses.len());
        let mut families = Vec::new();
        // Points missed per family: a batch of reads has its family read ahead.
        let mut points: HashMap<Vec<u8>, u64> = HashMap::new();
        for m in &misses {
            if let Some(f) = miss_point(m).and_then(family_of) {
                *points.entry(f).or_default() += 1;
            }
        }
        for m in misses {
            let now = self.tick.get();
            // Read ahead: the first miss in a collection's documents or an index (an
            // unbounded scan, or a point of a family where a point read found a key
            // before or missed with many others; a limited scan loads what it asks
            // for) also reads the whole of it when it is small beside the cache's cap.
            // After a reopen, the reads that follow then find everything loaded, in
            // one round trip instead of one per read. A create's fresh id that the key
            // filter could not rule out (at most about one in a hundred) reads its
            // point alone, not the collection (10,000 documents, 2.8 MB, in the
            // browser benchmark).
            let family = match &m {
                Miss::Point(k) => {
                    family_of(k).filter(|f| self.found_in.contains(f) || points[f] >= BATCH_POINTS)
                }
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
        self.loads_out += 1;
        let runs = self.runs.clone();
        let unsettled: Rc<BTreeSet<u64>> =
            Rc::new(self.in_flight.iter().filter_map(|f| f.run).collect());
        let empty = |gen0| LoadJob {
            tx: None,
            runs: runs.clone(),
            unsettled: unsettled.clone(),
            reads: Vec::new(),
            fetch: Fetch {
                seen: self.seen_blocks.clone(),
                ..Fetch::default()
            },
            filtered: None,
            gen0,
            small: 0,
            doc_of: None,
            filter: None,
        };
        if (plan.is_empty() && families.is_empty()) || runs.runs().is_empty() {
            // Answered since they were missed (loaded meanwhile), or nothing is stored
            // (every read is answered by the cache, and what it lacks is absent): no
            // transaction to open and wait for.
            let mut job = empty(self.write_gen);
            for m in plan.iter() {
                job.reads.push(RunRead {
                    range: miss_range(m),
                    reads: Vec::new(),
                    purpose: Purpose::Data,
                    scan: None,
                    count: None,
                    answers: None,
                });
            }
            for f in &families {
                job.reads.push(RunRead {
                    range: KeyRange::prefix(f),
                    reads: Vec::new(),
                    purpose: Purpose::Data,
                    scan: None,
                    count: None,
                    answers: Some(Vec::new()),
                });
            }
            return Ok(job);
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
                .transaction_with_str_sequence(&Array::of2(&RUNS.into(), &META.into()))
        } else {
            self.db.transaction_with_str(RUNS)
        }
        .map_err(|e| js_err("read transaction", e))?;
        let store = tx
            .object_store(RUNS)
            .map_err(|e| js_err("object store", e))?;
        // A family read ahead answers the misses inside it; one too large to read whole
        // has them read instead.
        let small = self.cap / 8;
        let mut deferred: Vec<Vec<Miss>> = families.iter().map(|_| Vec::new()).collect();
        let mut now_read = Vec::with_capacity(plan.len());
        for m in plan {
            let within = families.iter().position(|f| match &m {
                Miss::Point(k) => KeyRange::prefix(f).contains(k),
                Miss::Scan { range, limit, .. } => *limit >= LIMITED && range_within(range, f),
                Miss::Count(_) => false,
            });
            match within {
                Some(i) => deferred[i].push(m),
                None => now_read.push(m),
            }
        }
        let mut job = empty(self.write_gen);
        job.small = small;
        job.doc_of = self.doc_of.clone();
        job.filter = Some(FilterShare {
            filter: self.filter.clone(),
            readers: self.filter_readers.clone(),
            stats: self.stats.clone(),
        });
        let mut waiting_points = Vec::new();
        for m in now_read {
            match m {
                Miss::Point(k) if filtering && family_of(&k).is_some() => waiting_points.push(k),
                m => job.reads.push(self.run_read(&runs, m, small)),
            }
        }
        let mut waiting_families = Vec::new();
        for (f, deferred) in families.into_iter().zip(deferred) {
            if filtering && deferred.iter().any(|m| matches!(m, Miss::Point(_))) {
                waiting_families.push((f, deferred));
            } else {
                job.reads
                    .extend(family_reads(&runs, &f, deferred, small, |m| {
                        self.run_read(&runs, m, small)
                    }));
            }
        }
        let mut requests = 0;
        for r in &job.reads {
            requests += job.fetch.ask(&store, &runs, &r.reads)?;
        }
        if filtering {
            let meta = tx
                .object_store(META)
                .map_err(|e| js_err("object store", e))?;
            job.filtered = Some(Filtered {
                pages: read_filter_pages(&meta)?,
                points: waiting_points,
                families: waiting_families,
            });
            requests += 1;
        }
        let mut s = self.stats.borrow_mut();
        s.load_transactions += 1;
        s.load_requests += requests;
        drop(s);
        job.tx = Some((store, tx));
        Ok(job)
    }

    /// The read of one miss: the blocks of each run that may hold what it asks for.
    fn run_read(&self, runs: &Runs, m: Miss, small: usize) -> RunRead {
        match m {
            Miss::Point(k) => {
                let range = KeyRange::point(&k);
                RunRead {
                    reads: runs.covering(&range),
                    range,
                    purpose: Purpose::Data,
                    scan: None,
                    count: None,
                    answers: None,
                }
            }
            Miss::Count(range) => {
                let reads = runs.covering(&range);
                let blocks: usize = reads.iter().map(|(_, b)| b.len()).sum();
                if touches_pinned(&range) {
                    return RunRead {
                        range,
                        reads,
                        purpose: Purpose::Data,
                        scan: None,
                        count: None,
                        answers: None,
                    };
                }
                // Counted from a run's record where it can be: when that reads under
                // half the blocks, nothing is held.
                if let Some(plan) = self.count_plan(runs, &range) {
                    let reads = plan.reads();
                    let planned: usize = reads.iter().map(|(_, b)| b.len()).sum();
                    if planned * 2 < blocks {
                        return RunRead {
                            range,
                            reads,
                            purpose: Purpose::Count,
                            scan: None,
                            count: Some(plan),
                            answers: None,
                        };
                    }
                }
                // A small range is read and held (the count is then the cache's); a
                // large one is counted, not held.
                let purpose = if blocks * runs::BLOCK_BYTES <= small {
                    Purpose::Data
                } else {
                    Purpose::Count
                };
                RunRead {
                    range,
                    reads,
                    purpose,
                    scan: None,
                    count: None,
                    answers: None,
                }
            }
            Miss::Scan {
                range,
                reverse,
                limit,
            } => {
                let n = self.chunk(&range, reverse, limit);
                let reads = if n == usize::MAX {
                    runs.covering(&range)
                } else {
                    runs.first_blocks(&range, reverse, n.div_ceil(ENTRIES_PER_BLOCK))
                };
                // A limited scan of an index: its documents come along.
                let purpose = if !reverse
                    && limit < LIMITED
                    && matches!(&range.start, Bound::Included(k) | Bound::Excluded(k) if k.first() == Some(&b'I'))
                {
                    Purpose::IndexScan(limit)
                } else {
                    Purpose::Data
                };
                RunRead {
                    range,
                    reads,
                    purpose,
                    scan: (n != usize::MAX).then_some((reverse, n)),
                    count: None,
                    answers: None,
                }
            }
        }
    }

    /// A count of `range` that reads few blocks (see [`Runs::count_plan`]): the keys
    /// written and not in a run yet name blocks it reads (whether they were in the
    /// runs decides how they change the count), and a run whose write is not settled
    /// is read, not counted from its record.
    fn count_plan(&self, runs: &Runs, range: &KeyRange) -> Option<runs::CountPlan> {
        let touched: Vec<&[u8]> = self.unwritten_in(range).into_keys().collect();
        runs.count_plan(range, &touched, |run| {
            !self.in_flight.iter().any(|f| f.run == Some(run.number))
        })
    }

    /// How many entries to load for a scan miss that asked for `limit`.
    fn chunk(&self, range: &KeyRange, reverse: bool, limit: usize) -> usize {
        if limit == usize::MAX {
            return limit;
        }
        // A limited scan (`take(n)`) reads what it asks for; a page of an unbounded one
        // at least FIRST_CHUNK; either, going on from where the last read ended, GROWTH
        // times more.
        let mut n = if limit < LIMITED {
            limit
        } else {
            limit.max(FIRST_CHUNK)
        };
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
    /// (written since the load was issued, or not yet in the runs) takes IndexedDB's
    /// value, and what was read becomes held. Returns the ranges that gained data: a
    /// run that missed reads them differently now (none: every miss was an absence, and
    /// the run saw the data as it is).
    pub fn finish_load(&mut self, done: Loaded) -> Result<Vec<KeyRange>, Error> {
        self.loads_out = self.loads_out.saturating_sub(1);
        let result = self.take_loaded(done);
        if self.loads_out == 0 {
            self.recent.clear();
        }
        result
    }

    /// Whether the cache holds a value of `k` newer than a load issued at `gen0` read:
    /// written since, or not in the runs yet (queued, in a write-ahead record, or in a
    /// flush not settled).
    fn newer(&self, k: &[u8], gen0: u64) -> bool {
        // The pinned spaces are held whole from the open on, and in no run.
        is_pinned(k) || self.unwritten(k) || self.recent.get(k).is_some_and(|g| *g > gen0)
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
        for d in data.decided {
            records += d.entries.len() as u64;
            if d.known.is_empty() {
                continue;
            }
            // (A point whose blocks were read for points before takes in all they hold:
            // found is the point itself there.)
            if let Some(f) = point_of(&d.asked)
                .filter(|_| holds_any(&d.entries, &d.asked))
                .and_then(family_of)
            {
                self.found_in.insert(f);
            }
            if let Some((reverse, n)) = d.scan {
                // A scan that read its first blocks goes on from where they end: the
                // next part is read in larger chunks.
                let boundary = if reverse {
                    match &d.known.start {
                        Bound::Included(k) => Some(k.clone()),
                        _ => None,
                    }
                } else {
                    match &d.known.end {
                        Bound::Excluded(k) => Some(k.clone()),
                        _ => None,
                    }
                };
                if let Some(b) = boundary {
                    *self.continuation.borrow_mut() = Some((b, reverse, n));
                }
            }
            // Keys held there but not in IndexedDB (none, unless newer here).
            let read: BTreeSet<&Vec<u8>> = d.entries.iter().map(|(k, _)| k).collect();
            let stale: Vec<Vec<u8>> = self
                .cache
                .range::<[u8], _>((as_ref(&d.known.start), as_ref(&d.known.end)))
                .map(|(k, _)| k)
                .filter(|k| !read.contains(k) && !self.newer(k, gen0))
                .cloned()
                .collect();
            for k in stale {
                self.cache_remove(&k);
            }
            // What a run that missed reads differently now: the keys the load found
            // there, or, when it decided only part of what was asked (a scan's first
            // blocks), the rest, which the run reads next. Only a load that decided all
            // it was asked and found none of it says the run saw the data as it is.
            // A family read ahead says so of the misses it answers, each on its own:
            // the rest of the family was missed by no run (reported whole, a write's
            // miss after a reopen made every pending commit that read a document of
            // the collection run again).
            match &d.answers {
                Some(answers) => gained.extend(
                    answers
                        .iter()
                        .filter(|a| holds_any(&d.entries, a) || !spans::holds(&d.known, a))
                        .cloned(),
                ),
                None if d.entries.iter().any(|(k, _)| d.asked.contains(k))
                    || !spans::holds(&d.known, &d.asked) =>
                {
                    gained.push(d.asked.clone())
                }
                None => {}
            }
            for (k, v) in d.entries {
                if !self.newer(&k, gen0) {
                    self.cache_put(k, v);
                }
            }
            self.spans.borrow_mut().add(&d.known, now);
        }
        for Counted {
            range,
            keys,
            unread_live,
            unread,
        } in data.counts
        {
            records += keys.len() as u64;
            // A key written since the load was issued and settled since may be missing
            // from what it read: the run that missed is made again.
            let written_since = self
                .recent
                .iter()
                .any(|(k, g)| *g > gen0 && range.contains(k) && !self.unwritten(k));
            if !written_since {
                let read: BTreeSet<&Vec<u8>> = keys.iter().collect();
                let n = self.count_with_newest(&range, &read, unread_live, &unread);
                let mut counts = self.counts.borrow_mut();
                counts.retain(|(r, _)| *r != range);
                if let Some(n) = n.filter(|_| counts.len() < MAX_COUNTS) {
                    counts.push((range.clone(), n));
                }
            }
            gained.push(range);
        }
        let mut st = self.stats.borrow_mut();
        st.records_loaded += records;
        st.blocks_loaded += data.blocks;
        Ok(gained)
    }

    /// The keys of `range` the runs hold (`read`, the keys read there, and `unread`
    /// more, counted in blocks not read, which may hold keys where `spans` say), with
    /// what is not in a run yet over them: the count of what the store holds there.
    /// `None` when a key written and not in a run yet falls in a block not read
    /// (whether the runs hold it is not known).
    fn count_with_newest(
        &self,
        range: &KeyRange,
        read: &BTreeSet<&Vec<u8>>,
        unread: u64,
        spans: &[KeyRange],
    ) -> Option<u64> {
        let mut n = read.len() as u64 + unread;
        for (k, present) in self.unwritten_in(range) {
            if spans.iter().any(|u| u.contains(k)) {
                return None;
            }
            match (read.contains(&k.to_vec()), present) {
                (false, true) => n += 1,
                (true, false) => n = n.saturating_sub(1),
                _ => {}
            }
        }
        Some(n)
    }

    /// The keys of `range` written and not in a run yet (in a write-ahead record, in a
    /// flush in flight, queued), and whether each is there after its newest write.
    fn unwritten_in(&self, range: &KeyRange) -> BTreeMap<&[u8], bool> {
        let b = (as_ref(&range.start), as_ref(&range.end));
        let mut newest: BTreeMap<&[u8], bool> = BTreeMap::new();
        for (k, v) in self.wal.range::<[u8], _>(b) {
            newest.insert(k, v.is_some());
        }
        for f in &self.in_flight {
            for (k, v) in f.writes.range::<[u8], _>(b) {
                newest.insert(k, v.is_some());
            }
        }
        for (k, v) in self.dirty.range::<[u8], _>(b) {
            newest.insert(k, v.is_some());
        }
        newest
    }

    fn cache_put(&mut self, k: Vec<u8>, v: Vec<u8>) {
        let add = entry_bytes(&k, &v);
        let klen = k.len();
        if let Some(old) = self.cache.insert(k, v) {
            self.cache_bytes -= ENTRY_OVERHEAD + klen + old.len();
        }
        self.cache_bytes += add;
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
    /// to write a run before then reads them itself (see [`IdbStore::issue`]), and
    /// while one is to, what this read is not taken.
    pub fn load_filter(&self) -> impl Future<Output = Result<(), Error>> + 'static {
        let filter = self.filter.clone();
        let readers = self.filter_readers.clone();
        let read = (!filter.borrow().is_loaded()).then(|| {
            let (_tx, [store]) = stores(&self.db, [META], IdbTransactionMode::Readonly)?;
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
    /// ([`IdbStore::begin_apply`]). A large one is written as a run once, not as a record
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

    /// Issues one read-write transaction that brings the runs up to date (nothing when
    /// they will be). While write-ahead records wait, that is an apply: its run holds
    /// every write that may not be in a run (the records', those of the flushes still in
    /// flight, which may yet fail, and the queue's), and it deletes every record issued
    /// so far. So no run holds a value newer than a record left in `meta` (a record is
    /// applied over the runs, in order, at the next open), and what a record made
    /// durable stays durable whichever transaction fails.
    pub fn begin_apply(&mut self) -> Result<(), Error> {
        if self.records_pending() {
            self.issue(Kind::Apply)
        } else if !self.dirty.is_empty() {
            self.issue(Kind::Direct)
        } else {
            Ok(())
        }
    }

    /// Whether a write-ahead record may hold writes the runs lack: records settled or in
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

    /// A read-write transaction over the runs and `meta`, and, when this store claimed
    /// the database, the read of the leader epoch issued first in it: IndexedDB runs
    /// read-write transactions on a store one at a time, so no claim can slip in
    /// between, and the epoch's answer comes before the writes issued after it.
    fn write_tx(
        &self,
    ) -> Result<
        (
            IdbTransaction,
            web_sys::IdbObjectStore,
            web_sys::IdbObjectStore,
            Option<IdbRequest>,
        ),
        Error,
    > {
        let (tx, [store, meta]) = stores(&self.db, [RUNS, META], IdbTransactionMode::Readwrite)?;
        let epoch = match self.epoch {
            Some(_) => Some(
                meta.get(&key(EPOCH_KEY))
                    .map_err(|e| js_err("read the epoch", e))?,
            ),
            None => None,
        };
        Ok((tx, store, meta, epoch))
    }

    /// What a flush to the runs writes of the pinned spaces: the record's number,
    /// whether it holds them whole (the records before it are then deleted), and the
    /// record; `None` when it writes nothing there.
    fn own_record(&mut self, writes: &Writes) -> Option<(u64, bool, Vec<u8>)> {
        let mine: Writes = writes
            .iter()
            .filter(|(k, _)| is_pinned(k))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        if mine.is_empty() {
            return None;
        }
        let n = self.own_next;
        self.own_next += 1;
        let pinned = || {
            PINNED.iter().flat_map(|p| {
                let r = KeyRange::prefix(&[*p]);
                self.cache
                    .range::<Vec<u8>, _>((r.start, r.end))
                    .map(|(k, v)| (k.clone(), v))
            })
        };
        let grown = self.own_records >= OWN_RECORDS
            || (self.own_bytes > OWN_SNAPSHOT_BYTES
                && self.own_bytes > 2 * pinned().map(|(k, v)| k.len() + v.len()).sum::<usize>());
        if grown && self.in_flight.is_empty() {
            // The cache holds them whole: what is durable, with this flush's writes
            // (and, for an apply, the records') over it.
            let whole: Writes = pinned().map(|(k, v)| (k, Some(v.clone()))).collect();
            let value = wal::encode(&whole);
            self.own_records = 1;
            self.own_bytes = value.len();
            return Some((n, true, value));
        }
        let value = wal::encode(&mine);
        self.own_records += 1;
        self.own_bytes += value.len();
        Some((n, false, value))
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
        // are written with the next apply. A run's write writes the pages its keys
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
        let (tx, store, meta, epoch) = self.write_tx()?;
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
        // What goes to the runs: a new run of the writes (deletes as tombstones, but
        // where no run is older, whose keys they would hide), the pinned spaces' aside
        // (their log, below).
        let run = match record {
            Some(_) => None,
            None => {
                let items: Vec<runs::Item> = writes
                    .iter()
                    .filter(|(k, v)| !is_pinned(k) && (v.is_some() || !self.runs.runs().is_empty()))
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect();
                let number = Rc::make_mut(&mut self.runs).take_number();
                runs::build(number, self.runs.next_age(), &items)
            }
        };
        // The pinned spaces' writes: a record of the log, or the whole of them when the
        // log has grown (and no other flush is in flight, whose writes the cache holds
        // but which may yet fail).
        let own = match record {
            Some(_) => None,
            None => self.own_record(&writes),
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
                    if let Some((r, blocks)) = &run {
                        for (k, v) in blocks {
                            store.put_with_key(&key(v), &key(k))?;
                            requests += 1;
                        }
                        meta.put_with_key(&key(&r.meta_value()), &key(&r.meta_key()))?;
                        requests += 1;
                    }
                    if let Some((n, whole, value)) = &own {
                        if *whole {
                            meta.delete(&half_open(&own_key(0), &own_key(*n))?)?;
                            requests += 1;
                        }
                        meta.put_with_key(&key(value), &key(&own_key(*n)))?;
                        requests += 1;
                    }
                    for (k, v) in filter_records.borrow().iter() {
                        meta.put_with_key(&key(v), &key(k))?;
                        requests += 1;
                    }
                    if kind == Kind::Apply && self.wal_next > 0 {
                        meta.delete(&half_open(&wal::key(0), &wal::key(self.wal_next))?)?;
                        requests += 1;
                    }
                }
            }
            Ok(())
        })();
        self.stats.borrow_mut().write_requests += requests;
        if let Err(e) = issued {
            let _ = tx.abort();
            // (An apply's: the records' writes too, which are newer than the runs.)
            self.dirty = writes;
            self.filter.borrow_mut().redirty(&filter_records.borrow());
            return Err(js_err("write", e));
        }
        // The run counts from now on: a load issued after this transaction reads it.
        let run = run.map(|(r, _)| {
            let n = r.number;
            Rc::make_mut(&mut self.runs).push(r);
            n
        });
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
            run,
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
                    // Its run is not in IndexedDB: its writes are queued again below.
                    if let Some(n) = f.run {
                        Rc::make_mut(&mut self.runs).remove(n);
                    }
                    if f.took_records {
                        self.wal_stale = true;
                    }
                    self.stats.borrow_mut().failed_flushes += 1;
                    for (k, v) in f.writes {
                        // Written again since: by a flush issued later, or (when this
                        // one wrote a run) by a record that settled since (the records
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
        self.pump_merge();
        out
    }

    // ----- merging runs -----

    /// Moves the merge of runs on: takes in the step that completed and issues the
    /// next, or starts the merge [`Runs::plan`] says is due. Called as flushes settle (a
    /// step's completion calls the notifier too), and by a driver once the first reads
    /// after open are answered (merges the last session left due). A merge reads its inputs a few blocks
    /// at a time, writes the new run's blocks as they fill (under a number no record
    /// names yet: a merge cut short leaves blocks the next open deletes), and ends with
    /// one transaction that writes the new run's record and deletes its inputs; each
    /// write checks the leader epoch, as flushes do. Reads go on meanwhile, from the
    /// inputs until the end, from the new run after.
    pub fn pump_merge(&mut self) {
        if self.fenced {
            self.merging = None;
            return;
        }
        loop {
            let Some(m) = self.merging.as_mut() else {
                // Among the runs written: a flush's run is unsettled until its write
                // completes (it may yet fail and go). Flushes settle in order, so those
                // are the newest runs.
                let unsettled = self.in_flight.iter().filter(|f| f.run.is_some()).count();
                let settled = self.runs.runs().len().saturating_sub(unsettled);
                if self.runs.plan(settled).is_none() {
                    return;
                }
                let Some(c) = runs::Compaction::start(Rc::make_mut(&mut self.runs), settled) else {
                    return;
                };
                self.merging = Some(Merging {
                    c: Some(c),
                    step: Rc::default(),
                    finished: None,
                    fenced: Rc::default(),
                    ending: None,
                });
                if self.merge_read().is_err() {
                    self.merge_failed();
                }
                return;
            };
            let Some(done) = m.step.borrow_mut().take() else {
                return;
            };
            let result = match done {
                Err(e) => Err(e),
                Ok(_) if m.ending.is_some() => {
                    // Ended: the new run counts, its inputs are gone.
                    self.merging = None;
                    self.stats.borrow_mut().merges += 1;
                    continue;
                }
                Ok(MergeStep::Read(blocks)) => self.merge_fed(blocks),
                Ok(MergeStep::Wrote) => self.merge_next(),
            };
            if result.is_err() {
                self.merge_failed();
            }
            return;
        }
    }

    /// A merge that failed (it is tried again as flushes settle): what its ending did
    /// to the runs is undone; its blocks are left for the next open to delete.
    fn merge_failed(&mut self) {
        if let Some(m) = self.merging.take() {
            self.fenced |= m.fenced.get();
            if let Some(f) = m.ending {
                Rc::make_mut(&mut self.runs).restore(f.output, f.replaced);
            }
        }
    }

    /// Reads the blocks the merge needs next.
    fn merge_read(&mut self) -> Result<(), Error> {
        let m = self.merging.as_mut().expect("a merge");
        let wants = m.c.as_ref().expect("a merge going on").wants(8);
        let (tx, [store]) = stores(&self.db, [RUNS], IdbTransactionMode::Readonly)?;
        let mut reqs = Vec::with_capacity(wants.len());
        for k in wants {
            let r = store.get(&key(&k)).map_err(|e| js_err("get", e))?;
            reqs.push((k, r));
        }
        self.stats.borrow_mut().load_requests += reqs.len() as u64;
        let report = m.reporter(self.notify.clone());
        wasm_bindgen_futures::spawn_local(async move {
            let _tx = tx;
            let mut out = Vec::with_capacity(reqs.len());
            let values = Array::new();
            let mut keys = Vec::with_capacity(reqs.len());
            let mut failed = None;
            for (k, r) in reqs {
                match request(&r).await {
                    Ok(v) => {
                        values.push(&v);
                        keys.push(k);
                    }
                    Err(e) => {
                        failed = Some(js_err("read", e));
                        break;
                    }
                }
            }
            let result = match failed {
                Some(e) => Err(e),
                None => {
                    for (k, v) in keys.into_iter().zip(pack::unpack(&values)) {
                        match v {
                            Some(v) => out.push((k, v)),
                            None => {
                                failed = Some(Error::new(
                                    ErrorCode::Corrupt,
                                    "a block of a run being merged is missing",
                                ));
                                break;
                            }
                        }
                    }
                    failed.map_or(Ok(MergeStep::Read(out)), Err)
                }
            };
            report(result);
        });
        Ok(())
    }

    /// Feeds the blocks read to the merge and writes the new run's blocks that filled.
    fn merge_fed(&mut self, blocks: Vec<(Vec<u8>, Vec<u8>)>) -> Result<(), Error> {
        let m = self.merging.as_mut().expect("a merge");
        let c = m.c.as_mut().expect("a merge going on");
        let mut full = Vec::new();
        for (k, b) in &blocks {
            full.extend(
                c.feed(k, b)
                    .map_err(|e| Error::new(ErrorCode::Corrupt, format!("a merge: {}", e.0)))?,
            );
        }
        if full.is_empty() {
            return self.merge_next();
        }
        self.merge_write(full, Vec::new(), None)
    }

    /// The next read, or the end.
    fn merge_next(&mut self) -> Result<(), Error> {
        let m = self.merging.as_mut().expect("a merge");
        if !m.c.as_ref().expect("a merge going on").is_done() {
            return self.merge_read();
        }
        let c = m.c.take().expect("a merge going on");
        let f = c
            .finish(Rc::make_mut(&mut self.runs))
            .map_err(|e| Error::new(ErrorCode::Corrupt, format!("a merge: {}", e.0)))?;
        let deletes = f.deletes.clone();
        let puts = f.puts.clone();
        let unmark = f.unmark.clone();
        m.ending = Some(f);
        self.merge_write(puts, deletes, Some(unmark))
    }

    /// One read-write transaction of a merge: `puts` (blocks to `runs`, records and
    /// marks to `meta`), `deletes` (a run's record and its blocks' key range) and the
    /// new run's mark (`unmark`, as its record is written), after the leader epoch's
    /// check.
    fn merge_write(
        &mut self,
        puts: runs::Records,
        deletes: Vec<(Vec<u8>, Vec<u8>, Vec<u8>)>,
        unmark: Option<Vec<u8>>,
    ) -> Result<(), Error> {
        let (tx, store, meta, epoch) = self.write_tx()?;
        let mut requests = 0;
        let issued = (|| -> Result<(), JsValue> {
            for (k, v) in &puts {
                if runs::in_meta(k) {
                    meta.put_with_key(&key(v), &key(k))?;
                } else {
                    store.put_with_key(&key(v), &key(k))?;
                }
                requests += 1;
            }
            for (record, from, to) in &deletes {
                meta.delete(&key(record))?;
                store.delete(&half_open(from, to)?)?;
                requests += 2;
            }
            if let Some(k) = &unmark {
                meta.delete(&key(k))?;
                requests += 1;
            }
            Ok(())
        })();
        self.stats.borrow_mut().write_requests += requests;
        if let Err(e) = issued {
            let _ = tx.abort();
            return Err(js_err("write", e));
        }
        let m = self.merging.as_mut().expect("a merge");
        let report = m.reporter(self.notify.clone());
        let fenced = m.fenced.clone();
        let mine = self.epoch;
        wasm_bindgen_futures::spawn_local(async move {
            let mut result = Ok(MergeStep::Wrote);
            if let (Some(get), Some(mine)) = (epoch, mine) {
                if !matches!(request(&get).await, Ok(v) if epoch_of(&v) == mine) {
                    let _ = tx.abort();
                    fenced.set(true);
                    result = Err(self::fenced());
                }
            }
            if result.is_ok() {
                #[allow(deprecated)]
                let _ = tx.commit();
            }
            let done = complete(&tx).await.map_err(|e| js_err("commit", e));
            report(result.and_then(|r| done.map(|()| r)));
        });
        Ok(())
    }

    /// Merges every run due to be merged, and waits (for tests, and drivers that do not
    /// pump: see [`IdbStore::pump_merge`]).
    pub async fn merge_all(&mut self) -> Result<(), Error> {
        loop {
            self.pump_merge();
            let Some(m) = &self.merging else {
                return Ok(());
            };
            let step = m.step.clone();
            // Wait for the step in flight.
            if let Some(fired) = self.merging.as_mut().and_then(|m| m.finished.take()) {
                let _ = fired.await;
            }
            let failed = match &*step.borrow() {
                Some(Err(e)) => Some(Error::new(e.code, e.message.clone())),
                _ => None,
            };
            if let Some(e) = failed {
                self.pump_merge();
                return Err(e);
            }
        }
    }

    /// Writes everything not yet in a run as one (an apply) and waits until it (and every
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
/// already or a flush that reads them itself was issued: until then no run was written
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
    // every run written before it, and each of those took them in first.
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

/// Records of a log in `meta` (the write-ahead records, the own spaces' log): keys
/// `prefix` · u64 big-endian number, read in key order, folded oldest first.
fn fold_log(records: Vec<Entry>, prefix: &[u8], what: &str) -> Result<Replay, Error> {
    let mut log = Replay::default();
    for (k, record) in records {
        let n = wal::number(prefix, &k)
            .ok_or_else(|| Error::new(ErrorCode::Corrupt, format!("a {what}'s key")))?;
        wal::decode_into(&record, &mut log.writes)
            .map_err(|e| Error::new(ErrorCode::Corrupt, format!("{what} {n}: {}", e.0)))?;
        log.records += 1;
        log.bytes += record.len();
        log.next = n + 1;
    }
    Ok(log)
}

/// Whether `k` is in a pinned space (see [`OWN_PREFIX`]).
fn is_pinned(k: &[u8]) -> bool {
    k.first().is_some_and(|b| PINNED.contains(b))
}

/// Whether `r` holds keys of a pinned space.
fn touches_pinned(r: &KeyRange) -> bool {
    PINNED.iter().any(|p| r.overlaps(&KeyRange::prefix(&[*p])))
}

/// Record `n`'s key in the pinned spaces' log.
fn own_key(n: u64) -> Vec<u8> {
    [OWN_PREFIX, &n.to_be_bytes()].concat()
}

fn note_written(filter: &mut Filter, k: &[u8], v: &Option<Vec<u8>>) {
    if v.is_some() && !k.first().is_some_and(|b| PINNED.contains(b)) {
        filter.insert(k);
    }
}

/// Every key outside the pinned spaces, as ranges in order.
fn unpinned() -> Vec<KeyRange> {
    debug_assert!(PINNED.is_sorted());
    let mut out = Vec::with_capacity(PINNED.len() + 1);
    let mut start = Bound::Unbounded;
    for &p in PINNED {
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

/// The reads of the backend's own records at open.
struct MetaReads {
    /// The filter's meta record, the write-ahead records, the runs' records, and the
    /// marks of runs being written.
    filter: IdbRequest,
    records: RangeRead,
    own: RangeRead,
    runs: RangeRead,
    writing: IdbRequest,
}

/// What the open read of the backend's own records.
struct Opened {
    filter: Filter,
    /// The pinned spaces' log, folded.
    own: Replay,
    replay: Replay,
    runs: Runs,
    /// Runs whose blocks are stored with no record (a merge cut short).
    orphans: Vec<u64>,
}

/// What a read of runs is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Purpose {
    /// The entries of its range (a point, a scan, a family read ahead).
    Data,
    /// A limited index scan: its entries, and the documents the first `n` name.
    IndexScan(usize),
    /// How many keys its range holds (a range too large to hold).
    Count,
}

/// A read of `range` from the runs: per run (its index in the load's snapshot of the
/// runs), the blocks read.
struct RunRead {
    range: KeyRange,
    reads: Vec<(usize, std::ops::Range<usize>)>,
    purpose: Purpose,
    /// A scan that read only its first blocks: which way, and the entries it asked.
    scan: Option<(bool, usize)>,
    /// A count that reads only some blocks of a run, counting the rest from its record.
    count: Option<runs::CountPlan>,
    /// A family read ahead: the misses it answers (the rest of what it reads was
    /// missed by no run, and is taken in as knowledge only).
    answers: Option<Vec<KeyRange>>,
}

impl RunRead {
    /// The key it reads, when it reads one key (and is not a count).
    fn point(&self) -> Option<&[u8]> {
        point_of(&self.range).filter(|_| self.count.is_none())
    }
}

/// The key `r` holds, when it holds one.
fn point_of(r: &KeyRange) -> Option<&[u8]> {
    match (&r.start, &r.end) {
        (Bound::Included(a), Bound::Included(b)) if a == b => Some(a),
        _ => None,
    }
}

/// The key a point miss is of.
fn miss_point(m: &Miss) -> Option<&[u8]> {
    match m {
        Miss::Point(k) => Some(k),
        _ => None,
    }
}

/// Whether `entries` (in key order, as a load decides them) hold a key of `r`: a
/// search, not a walk (a family read ahead answers as many misses as a batch of reads
/// made, thousands, over as many entries).
fn holds_any(entries: &[Entry], r: &KeyRange) -> bool {
    debug_assert!(entries.windows(2).all(|w| w[0].0 < w[1].0));
    let i = match &r.start {
        Bound::Included(s) => entries.partition_point(|(k, _)| k < s),
        Bound::Excluded(s) => entries.partition_point(|(k, _)| k <= s),
        Bound::Unbounded => 0,
    };
    entries.get(i).is_some_and(|(k, _)| r.contains(k))
}

/// The range a miss asks about.
fn miss_range(m: &Miss) -> KeyRange {
    match m {
        Miss::Point(k) => KeyRange::point(k),
        Miss::Scan { range, .. } | Miss::Count(range) => range.clone(),
    }
}

/// The reads for family `f` and the misses inside it: the whole family when it is
/// small, else each miss.
fn family_reads(
    runs: &Runs,
    f: &[u8],
    deferred: Vec<Miss>,
    small: usize,
    mut each: impl FnMut(Miss) -> RunRead,
) -> Vec<RunRead> {
    let range = KeyRange::prefix(f);
    let reads = runs.covering(&range);
    let blocks: usize = reads.iter().map(|(_, b)| b.len()).sum();
    if blocks * runs::BLOCK_BYTES <= small {
        let answers = deferred.iter().map(miss_range).collect();
        vec![RunRead {
            range,
            reads,
            purpose: Purpose::Data,
            scan: None,
            count: None,
            answers: Some(answers),
        }]
    } else {
        deferred.into_iter().map(&mut each).collect()
    }
}

/// The blocks a load's transaction asked for, each once: a `get` for a block alone, a
/// `getAll` for a run's neighbouring blocks.
#[derive(Default)]
struct Fetch {
    asked: BTreeSet<(usize, usize)>,
    /// Issued and not awaited: a run's blocks `[from, to)` and the request.
    pending: Vec<(usize, std::ops::Range<usize>, IdbRequest)>,
    /// What came, by (run, block): `None` when IndexedDB did not have it.
    got: HashMap<(usize, usize), Option<Vec<u8>>>,
    /// The blocks points read (the runs and blocks) and what they hold, merged: a point
    /// read by the same blocks is answered from it. Of blocks read for points the
    /// first time, only the keys of `point_keys` are held (`false`: the answer of
    /// those keys alone).
    points: Vec<(BlockReads, Vec<runs::Item>, bool)>,
    /// The keys of the points being answered (see [`Fetch::points_now`]).
    point_keys: BTreeSet<Vec<u8>>,
    /// The blocks points have read before (the store's, kept across loads).
    seen: Rc<RefCell<SeenBlocks>>,
}

/// The blocks points read, by run number and block: a point whose blocks were all read
/// for a point before takes in all they hold (its neighbours are being read: the next
/// ones are answered from the cache); one reading a block the first time takes in
/// itself alone (a query's documents, a few in each of many blocks, would otherwise
/// take in every document of those blocks, decoding and caching ten to fifty times
/// more than they return). A neighbour thus costs one more read of its block, once.
/// Bounded: forgotten all at once when full (the next reads take in less, no more).
#[derive(Default)]
struct SeenBlocks(BTreeSet<(u64, usize)>);

/// At most this many blocks are remembered as read for points (16 bytes each).
const SEEN_BLOCKS: usize = 4096;

impl SeenBlocks {
    /// Whether every block of `reads` was read for a point before; remembers them.
    fn seen_all(&mut self, runs: &Runs, reads: &[(usize, std::ops::Range<usize>)]) -> bool {
        let blocks = || {
            reads
                .iter()
                .flat_map(|(i, b)| b.clone().map(move |j| (runs.runs()[*i].number, j)))
        };
        let all = blocks().all(|b| self.0.contains(&b));
        if !all {
            if self.0.len() + blocks().count() > SEEN_BLOCKS {
                self.0.clear();
            }
            self.0.extend(blocks());
        }
        all
    }
}

/// Blocks to read: per run (its index), a range of its blocks.
type BlockReads = Vec<(usize, std::ops::Range<usize>)>;

impl Fetch {
    /// The points about to be answered (those of `reads`): blocks read for a point the
    /// first time take in these keys alone. What points answered before is forgotten
    /// (it may lack these keys).
    fn points_now<'a>(&mut self, reads: impl IntoIterator<Item = &'a RunRead>) {
        self.points.clear();
        self.point_keys = reads
            .into_iter()
            .filter_map(RunRead::point)
            .map(<[u8]>::to_vec)
            .collect();
    }

    /// Asks for the blocks of `reads` not asked for yet; gives the requests issued.
    fn ask(
        &mut self,
        store: &web_sys::IdbObjectStore,
        runs: &Runs,
        reads: &[(usize, std::ops::Range<usize>)],
    ) -> Result<u64, Error> {
        let mut issued = 0;
        for (i, blocks) in reads {
            let mut group: Option<std::ops::Range<usize>> = None;
            for j in blocks.clone() {
                if self.asked.insert((*i, j)) {
                    match &mut group {
                        Some(g) if g.end == j => g.end = j + 1,
                        _ => {
                            if let Some(g) = group.take() {
                                self.issue(store, runs, *i, g)?;
                                issued += 1;
                            }
                            group = Some(j..j + 1);
                        }
                    }
                }
            }
            if let Some(g) = group {
                self.issue(store, runs, *i, g)?;
                issued += 1;
            }
        }
        Ok(issued)
    }

    fn issue(
        &mut self,
        store: &web_sys::IdbObjectStore,
        runs: &Runs,
        i: usize,
        blocks: std::ops::Range<usize>,
    ) -> Result<(), Error> {
        let run = &runs.runs()[i];
        let first = key(&runs::block_key(run.number, &run.firsts[blocks.start]));
        let req = if blocks.len() == 1 {
            store.get(&first).map_err(|e| js_err("get", e))?
        } else {
            let last = key(&runs::block_key(run.number, &run.firsts[blocks.end - 1]));
            let q = IdbKeyRange::bound(&first, &last).map_err(|e| js_err("key range", e))?;
            store
                .get_all_with_key(&q)
                .map_err(|e| js_err("getAll", e))?
        };
        self.pending.push((i, blocks, req));
        Ok(())
    }

    /// Awaits every request issued, and takes in what they read (in one copy into
    /// WebAssembly).
    async fn wait(&mut self) -> Result<(), Error> {
        let values = Array::new();
        let mut slots = Vec::new();
        for (i, blocks, req) in std::mem::take(&mut self.pending) {
            let v = request(&req).await.map_err(|e| js_err("read", e))?;
            if blocks.len() == 1 {
                values.push(&v);
                slots.push(Some((i, blocks.start)));
            } else {
                let all: Array = v.unchecked_into();
                if all.length() as usize == blocks.len() {
                    for (j, x) in (blocks.clone()).zip(all.iter()) {
                        values.push(&x);
                        slots.push(Some((i, j)));
                    }
                } else {
                    // Not all there (a run whose write failed): none of them is used.
                    for j in blocks {
                        self.got.insert((i, j), None);
                    }
                }
            }
        }
        for (slot, v) in slots.into_iter().zip(pack::unpack(&values)) {
            if let Some(at) = slot {
                self.got.insert(at, v);
            }
        }
        Ok(())
    }

    /// What `r` read: the keys it decides, and the entries there (the runs merged, the
    /// newest winning, tombstones dropped). A block missing from a run whose write is
    /// not settled counts as nothing (the write failed; its writes are still the
    /// cache's); from any other run, it is corruption.
    ///
    /// A point whose blocks an earlier point of the load read decides only itself, from
    /// what those blocks hold: the documents of a query, often a few in each block,
    /// would otherwise decode the block and take its entries in again, once each.
    fn answer(
        &mut self,
        runs: &Runs,
        unsettled: &BTreeSet<u64>,
        r: &RunRead,
    ) -> Result<(KeyRange, Vec<Entry>), Error> {
        if r.reads.is_empty() {
            return Ok((r.range.clone(), Vec::new()));
        }
        let point = r.point();
        let entry = |(k, v): &runs::Item| (k.clone(), v.clone().unwrap_or_default());
        if let Some(p) = point {
            // The newest first: points come in key order, so a point's blocks are
            // most often the last point's. What holds only some keys answers those.
            let memo = self.points.iter().rev().find(|(reads, _, whole)| {
                *reads == r.reads && (*whole || self.point_keys.contains(p))
            });
            if let Some((_, merged, _)) = memo {
                let entries = merged
                    .iter()
                    .filter(|(k, _)| r.range.contains(k))
                    .map(entry)
                    .collect();
                return Ok((r.range.clone(), entries));
            }
        }
        // A point reading a block the first time decides itself alone (see
        // `SeenBlocks`).
        let whole = point.is_none() || self.seen.borrow_mut().seen_all(runs, &r.reads);
        // A count's reads decide the keys of its range that it counts from them.
        let known = if r.count.is_some() || !whole {
            r.range.clone()
        } else {
            runs.known(&r.range, &r.reads)
        };
        // A limited scan (`take(n)`, not a page of a scan going on) takes in what decides
        // the entries it asked for, not all its blocks hold: a run's block may hold ten
        // times more, mostly outside its range.
        let first = match r.scan {
            Some((reverse, n)) if n < LIMITED && point.is_none() && r.count.is_none() => {
                Some((reverse, n))
            }
            _ => None,
        };
        let known = match first {
            Some(_) => intersect(&known, &r.range).unwrap_or(known),
            None => known,
        };
        // What the blocks hold outside the keys decided is not taken in (but for a
        // point's, kept for the points after it: all of it, or their keys). A scan of
        // the first `n` keys takes in at most `n + 1` of each run's (what `first_of`
        // needs to cut there).
        let keys = &self.point_keys;
        let inside = |k: &[u8]| match point {
            Some(_) if whole => true,
            Some(p) => k == p || keys.contains(k),
            None => known.contains(k),
        };
        let cap = match first {
            Some((false, n)) => runs::first_needs(n),
            _ => usize::MAX,
        };
        // The run being decoded, and how many of its keys were taken.
        let taken = Cell::new((usize::MAX, 0));
        let mut parts = runs::parts_of(&r.reads, |i, j| {
            let run = &runs.runs()[i];
            if taken.get().0 != i {
                taken.set((i, 0));
            }
            let keep = |k: &[u8]| {
                let (i, n) = taken.get();
                let keep = n < cap && inside(k);
                if keep {
                    taken.set((i, n + 1));
                }
                keep
            };
            match self.got.get(&(i, j)) {
                Some(Some(b)) => runs::decode_block_in(b, &keep)
                    .map(Some)
                    .map_err(|e| corrupt_run(run, e)),
                _ if unsettled.contains(&run.number) => Ok(None),
                _ => Err(Error::new(
                    ErrorCode::Corrupt,
                    format!("run {}: a block is missing", run.number),
                )),
            }
        })?;
        let known = match first {
            Some((reverse, n)) => runs::first_of(&mut parts, known, reverse, n),
            None => known,
        };
        let merged = runs::merge(parts, false);
        if point.is_some() {
            let entries = merged
                .iter()
                .filter(|(k, _)| known.contains(k))
                .map(entry)
                .collect();
            self.points.push((r.reads.clone(), merged, whole));
            return Ok((known, entries));
        }
        let entries = merged
            .into_iter()
            .filter(|(k, _)| known.contains(k))
            .map(|(k, v)| (k, v.unwrap_or_default()))
            .collect();
        Ok((known, entries))
    }
}

/// A block of `run`, decoded; `CORRUPT` when it does not decode.
fn decode_run_block(run: &runs::Run, b: &[u8]) -> Result<Vec<runs::Item>, Error> {
    runs::decode_block(b).map_err(|e| corrupt_run(run, e))
}

/// `CORRUPT`: a block of `run` did not decode.
fn corrupt_run(run: &runs::Run, e: runs::BadRun) -> Error {
    Error::new(ErrorCode::Corrupt, format!("run {}: {}", run.number, e.0))
}

/// Reads that wait for the key filter's pages (see [`IdbStore::begin_load`]).
struct Filtered {
    pages: RangeRead,
    /// Points to read unless the pages show them absent.
    points: Vec<Vec<u8>>,
    /// Families to read ahead, with the misses in them.
    families: Vec<(Vec<u8>, Vec<Miss>)>,
}

/// Loads issued in one read transaction (see [`IdbStore::begin_load`]).
pub struct LoadJob {
    /// The read transaction and its store (none when there is nothing to read).
    tx: Option<(web_sys::IdbObjectStore, IdbTransaction)>,
    /// The runs as they were when it was issued (what IndexedDB holds for it).
    runs: Rc<Runs>,
    /// The runs whose writes were not settled then.
    unsettled: Rc<BTreeSet<u64>>,
    reads: Vec<RunRead>,
    fetch: Fetch,
    filtered: Option<Filtered>,
    gen0: u64,
    /// Bytes of blocks a family may have to be read ahead (and a counted range to be
    /// held).
    small: usize,
    doc_of: Option<DocOf>,
    filter: Option<FilterShare>,
}

/// What a load needs of its store for the key filter: the filter, its readers (see
/// `IdbStore::filter_readers`) and the counters.
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

/// One range a load decided: every key there is as `entries` say. `asked`: the range
/// the read was for (a run that missed it reads it differently when it holds data);
/// `scan`: a scan that read only its first blocks, which way and how many entries it
/// asked.
struct Decided {
    known: KeyRange,
    asked: KeyRange,
    entries: Vec<Entry>,
    scan: Option<(bool, usize)>,
    /// A family read ahead: the misses inside it that it answers (`RunRead::answers`).
    answers: Option<Vec<KeyRange>>,
}

impl Decided {
    /// Nothing in `r`.
    fn absent(r: KeyRange) -> Decided {
        Decided {
            known: r.clone(),
            asked: r,
            entries: Vec::new(),
            scan: None,
            answers: None,
        }
    }
}

/// A range counted, not held: the keys read there, and what was counted from a run's
/// record without reading it (its live items, and where its unread blocks may hold
/// keys).
struct Counted {
    range: KeyRange,
    keys: Vec<Vec<u8>>,
    unread_live: u64,
    unread: Vec<KeyRange>,
}

#[derive(Default)]
struct LoadedData {
    decided: Vec<Decided>,
    /// Ranges counted, not held.
    counts: Vec<Counted>,
    /// Families to read ahead whose misses all proved absent: not read, and to be
    /// considered again at their next miss.
    unread_families: Vec<Vec<u8>>,
    blocks: u64,
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

    async fn read(mut self) -> Result<LoadedData, Error> {
        let mut out = LoadedData::default();
        let Some((store, _tx)) = self.tx.take() else {
            for r in &self.reads {
                out.decided.push(Decided::absent(r.range.clone()));
            }
            return Ok(out);
        };
        let runs = self.runs.clone();
        // The filter's pages first (their answer comes before the blocks issued after
        // them): points they show absent need no read, nor their families.
        if let Some(f) = self.filtered.take() {
            let pages = f.pages.entries().await?;
            let FilterShare {
                filter,
                readers,
                stats,
            } = self.filter.as_ref().expect("a store's load");
            let mut more = Vec::new();
            {
                let mut fl = filter.borrow_mut();
                take_in_filter_pages(&mut fl, readers, &pages)?;
                let absent = |k: &[u8]| fl.is_loaded() && !fl.may_contain(k);
                for k in f.points {
                    if absent(&k) {
                        stats.borrow_mut().absent_by_filter += 1;
                        out.decided.push(Decided::absent(KeyRange::point(&k)));
                    } else {
                        more.push(self.point_read(&k));
                    }
                }
                for (family, deferred) in f.families {
                    let before = deferred.len();
                    let mut rest = Vec::with_capacity(deferred.len());
                    for m in deferred {
                        match m {
                            Miss::Point(k) if absent(&k) => {
                                stats.borrow_mut().absent_by_filter += 1;
                                out.decided.push(Decided::absent(KeyRange::point(&k)));
                            }
                            m => rest.push(m),
                        }
                    }
                    if rest.is_empty() && before > 0 {
                        out.unread_families.push(family);
                        continue;
                    }
                    let small = self.small;
                    more.extend(family_reads(&runs, &family, rest, small, |m| match m {
                        Miss::Point(k) => self.point_read(&k),
                        m => RunRead {
                            range: miss_range(&m),
                            reads: runs.covering(&miss_range(&m)),
                            purpose: Purpose::Data,
                            scan: None,
                            count: None,
                            answers: None,
                        },
                    }));
                }
            }
            for r in &more {
                self.fetch.ask(&store, &runs, &r.reads)?;
            }
            self.reads.extend(more);
        }
        self.fetch.wait().await?;
        // A count from the runs' records: the keys the blocks read hold name the blocks
        // counted to read too (whether another run holds them decides the count).
        let mut more_asked = false;
        for r in &mut self.reads {
            let Some(plan) = &mut r.count else { continue };
            let mut keys = Vec::new();
            for (i, blocks) in &r.reads {
                for j in blocks.clone() {
                    if let Some(Some(b)) = self.fetch.got.get(&(*i, j)) {
                        let items = decode_run_block(&runs.runs()[*i], b)?;
                        keys.extend(items.into_iter().map(|(k, _)| k));
                    }
                }
            }
            let more = plan.more(&runs, &r.range, keys.iter().map(Vec::as_slice));
            if !more.is_empty() {
                self.fetch.ask(&store, &runs, &more)?;
                r.reads = plan.reads();
                more_asked = true;
            }
        }
        if more_asked {
            self.fetch.wait().await?;
        }
        // A limited index scan's documents, read in the same transaction.
        let mut along = Vec::new();
        let mut answers = Vec::with_capacity(self.reads.len());
        self.fetch.points_now(&self.reads);
        for r in &self.reads {
            let (known, entries) = self.fetch.answer(&runs, &self.unsettled, r)?;
            if let (Purpose::IndexScan(n), Some(doc_of)) = (r.purpose, &self.doc_of) {
                for (k, _) in entries.iter().filter(|(k, _)| r.range.contains(k)).take(n) {
                    if let Some(dk) = doc_of(k) {
                        along.push(self.point_read(&dk));
                    }
                }
            }
            answers.push((known, entries));
        }
        if !along.is_empty() {
            for r in &along {
                self.fetch.ask(&store, &runs, &r.reads)?;
            }
            self.fetch.wait().await?;
            self.fetch.points_now(&along);
            for r in &along {
                let (known, entries) = self.fetch.answer(&runs, &self.unsettled, r)?;
                out.decided.push(Decided {
                    known,
                    asked: r.range.clone(),
                    entries,
                    scan: None,
                    answers: None,
                });
            }
        }
        for (r, (known, entries)) in self.reads.iter().zip(answers) {
            if r.purpose == Purpose::Count {
                let keys = entries
                    .into_iter()
                    .filter(|(k, _)| r.range.contains(k))
                    .map(|(k, _)| k)
                    .collect();
                let (unread_live, unread) = match &r.count {
                    Some(plan) => plan.unread(&runs),
                    None => (0, Vec::new()),
                };
                out.counts.push(Counted {
                    range: r.range.clone(),
                    keys,
                    unread_live,
                    unread,
                });
            } else {
                out.decided.push(Decided {
                    known,
                    asked: r.range.clone(),
                    entries,
                    scan: r.scan,
                    answers: r.answers.clone(),
                });
            }
        }
        out.blocks = self.fetch.got.len() as u64;
        Ok(out)
    }

    fn point_read(&self, k: &[u8]) -> RunRead {
        let range = KeyRange::point(k);
        RunRead {
            reads: self.runs.covering(&range),
            range,
            purpose: Purpose::Data,
            scan: None,
            count: None,
            answers: None,
        }
    }
}

/// A read of a whole key range of the backend's own records (`meta`): a `getAllKeys`
/// and a `getAll`.
struct RangeRead(IdbRequest, IdbRequest);

impl RangeRead {
    /// All of `range`.
    fn all(store: &web_sys::IdbObjectStore, range: &KeyRange) -> Result<RangeRead, Error> {
        let q = idb_range(range)?;
        Ok(RangeRead(
            store
                .get_all_keys_with_key(&q)
                .map_err(|e| js_err("getAllKeys", e))?,
            store
                .get_all_with_key(&q)
                .map_err(|e| js_err("getAll", e))?,
        ))
    }

    /// The entries read, in order.
    async fn entries(self) -> Result<Vec<Entry>, Error> {
        let keys: Array = request(&self.0)
            .await
            .map_err(|e| js_err("getAllKeys", e))?
            .unchecked_into();
        let values: Array = request(&self.1)
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
        // Counted from the runs' records alone, when that reads no block.
        if !touches_pinned(range) {
            if let Some(plan) = self.count_plan(&self.runs, range) {
                if plan.reads().is_empty() {
                    let (unread_live, unread) = plan.unread(&self.runs);
                    let n = self.count_with_newest(range, &BTreeSet::new(), unread_live, &unread);
                    if let Some(n) = n {
                        let mut counts = self.counts.borrow_mut();
                        if counts.len() < MAX_COUNTS {
                            counts.push((range.clone(), n));
                        }
                        return Ok(n.min(limit));
                    }
                }
            }
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
            let held = self.spans.borrow_mut().holds(&k, now);
            let before = if held {
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
            // again needs no trip to IndexedDB. (A key held already is in a span,
            // which `holds` marked used.)
            if !held {
                self.spans.borrow_mut().add_point(&k, now);
            }
            self.dirty.insert(k, v);
        }
        Ok(())
    }
}
