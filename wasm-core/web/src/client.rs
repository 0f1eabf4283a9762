//! The browser client: the engine's replica on IndexedDB, synced over a WebSocket,
//! exposed to JavaScript. It runs where it is opened: in a dedicated worker (what the
//! package does, so no engine work ever blocks the page) or on the page itself.
//!
//! **Lanes.** The replica is shared by two sequential tasks, each with its own queue:
//! the *local lane* (queries, live queries, writes, `flush`, `close`) and the *sync
//! lane* (frames from the server, the connection). Neither holds the replica across an
//! `await`: every IndexedDB load is issued, awaited with nothing borrowed, and taken in
//! afterwards (`IdbStore::begin_load` / `finish_load`). So a query is answered while
//! the sync lane waits for the loads of a large catch-up, and frames are applied while
//! a query waits for its own loads; each lane's steps are atomic because the page (or
//! worker) runs one task at a time.
//!
//! **Loading.** The replica reads through [`IdbStore`]'s cache. A run that reads
//! something not loaded is run again after loading it (`settle`); a write runs once on
//! what is loaded and is made again only if the load brought data (a fresh id is known
//! absent from the key filter, so a create usually reads nothing). Frames from the
//! server load what they touch before they are applied.
//!
//! **Writing.** A write answers with its optimistic result as soon as it is applied to
//! the view, before any IndexedDB transaction. Its outbox entry is written by the next
//! flush: one transaction at a time, each taking everything written meanwhile (writes
//! made together share one transaction), and the write's `local` promise resolves when
//! the transaction that holds it commits. A commit is sent to the server only once it
//! is durable.
//!
//! **Local writes first.** While the app is writing (a local write in the last 25 ms),
//! frames from the server wait, at most a second, and are then handled together: an
//! import or a burst of writes is not slowed, on the worker's one thread and in
//! IndexedDB, by applying and writing what the server confirmed of its first parts
//! (docs/BENCHMARKS.md). Its confirmations, and other clients' changes, come after it.
//!
//! Confirmed data from the server is written 25 ms later, or with the next
//! local write, or at once by `flush` and `close` (and at once when it confirms one of
//! this replica's writes with no flush in flight); a write's confirmation is reported
//! once the flush writing what it brought is committed to.

use std::cell::{Cell, RefCell};
use std::rc::{Rc, Weak};

use futures_channel::mpsc::{unbounded, UnboundedReceiver, UnboundedSender};
use futures_channel::oneshot;
use futures_util::StreamExt;
use gloo::events::EventListener;
use gloo::timers::callback::{Interval, Timeout};
use js_sys::{ArrayBuffer, Function, Uint8Array};
use warren_core::exec::Op;
use warren_core::protocol::{ClientFrame, ServerFrame};
use warren_core::replica::{Event, Replica};
use warren_core::storage::{KeyRange, Storage};
use warren_core::{keys, Error, ErrorCode, Value};
use wasm_bindgen::prelude::*;
use wasm_bindgen::JsCast;
use web_sys::{BinaryType, WebSocket};

use crate::idb::{IdbStore, Miss};
use crate::json::json_text;

/// A JavaScript `Error` with a stable `code` property.
fn js_error(e: &Error) -> JsValue {
    let err = js_sys::Error::new(&e.message);
    let _ = js_sys::Reflect::set(&err, &"code".into(), &e.code.as_str().into());
    err.into()
}

/// A value as JavaScript sees it: its JSON form, parsed by the JavaScript engine.
fn to_js(v: &Value) -> JsValue {
    js_sys::JSON::parse(&json_text(v)).unwrap_or(JsValue::NULL)
}

/// A value from JavaScript: JSON text (a string) as is, anything else through
/// `JSON.stringify`.
fn from_js(v: JsValue) -> Result<Value, Error> {
    if v.is_undefined() || v.is_null() {
        return Ok(Value::Null);
    }
    let text = match v.as_string() {
        Some(t) => t,
        None => js_sys::JSON::stringify(&v)
            .map(String::from)
            .map_err(|_| Error::new(ErrorCode::InvalidArgument, "not a JSON value"))?,
    };
    let j: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| Error::new(ErrorCode::InvalidArgument, format!("not a JSON value: {e}")))?;
    Value::from_json(&j)
}

/// `navigator.storage.persist()`, where the browser has it (on a page, not a worker).
async fn persist() -> bool {
    let Some(storage) = web_sys::window().map(|w| w.navigator().storage()) else {
        return false;
    };
    match storage.persist() {
        Ok(p) => wasm_bindgen_futures::JsFuture::from(p)
            .await
            .ok()
            .and_then(|v| v.as_bool())
            .unwrap_or(false),
        Err(_) => false,
    }
}

/// How the store finds the document an index entry names: the entry's key is
/// `I · collection · index · values · id`, and the schema says how many values.
fn doc_of(schema: &warren_core::Schema) -> crate::idb::DocOf {
    let mut fields = std::collections::BTreeMap::new();
    for (name, c) in &schema.collections {
        for (index, decl) in &c.indexes {
            fields.insert((name.clone(), index.clone()), decl.fields.len());
        }
    }
    Rc::new(move |k: &[u8]| {
        if k.first() != Some(&keys::SPACE_INDEX) {
            return None;
        }
        let mut pos = 1;
        let coll = keys::read_str(k, &mut pos).ok()?;
        let index = keys::read_str(k, &mut pos).ok()?;
        let n = *fields.get(&(coll, index))?;
        let id = keys::index_key_id(k, pos, n).ok()?;
        let mut p = 1;
        let coll = keys::read_str(k, &mut p).ok()?;
        Some(keys::doc_key(&coll, &id))
    })
}

/// `navigator.onLine` in a page or a worker.
fn on_line() -> bool {
    let global = js_sys::global();
    if let Some(w) = global.dyn_ref::<web_sys::Window>() {
        return w.navigator().on_line();
    }
    if let Some(w) = global.dyn_ref::<web_sys::WorkerGlobalScope>() {
        return w.navigator().on_line();
    }
    true
}

/// How long confirmed data from the server may wait before it is written to IndexedDB.
const FLUSH_DELAY_MS: u32 = 25;
/// Frames handled together at most (one view rebase and one notification for all).
const FRAMES_AT_ONCE: usize = 256;
/// The app is writing while its last local write is this recent: frames from the
/// server wait (see `Shared::hold_while_writing`), at most [`FRAMES_HOLD_MS`].
const WRITES_QUIET_MS: u32 = 25;
const FRAMES_HOLD_MS: u32 = 1000;
/// Frames that may hold this replica's own effects wait for their outcomes (which the
/// server sends right after them): see `Replica::receive`. Live frames are handled
/// anyway this long after they began to wait: a server that never sends the outcome
/// must not hold the base back, and one that sends none because this replica's next
/// commit waits in its queue must not hold back the others' changes for long.
const OUTCOMES_WAIT_MS: u32 = 1000;
/// A welcome's catch-up (its snapshots, then the outcomes of the commits they hold) is
/// not cut short while it streams: handled without those outcomes, a commit with its
/// effects in some partitions' snapshots and not yet in others' runs again on them,
/// fails, and its other writes vanish from the view until its outcome comes. Its
/// frames are handled anyway only once the server has sent nothing for this long, or
/// [`CATCH_UP_WAIT_MAX_MS`] after they began to wait.
const CATCH_UP_QUIET_MS: u32 = 3000;
const CATCH_UP_WAIT_MAX_MS: u32 = 30_000;
/// While the app is writing, the commits made durable after a send (within
/// [`WRITES_QUIET_MS`] of it) wait and go together, in one push, once the writes pause
/// or this long after the first of them waited (see `Shared::send_outgoing`).
const SENDS_HOLD_MS: u32 = 100;
/// At open, the connection waits for the app's first reads: until no local operation
/// has run for this long (see `Shared::wait_for_first_reads`), at most
/// [`CONNECT_HOLD_MS`] after the open. Long enough for the open's answer to reach the
/// page and the app's first query to come back on a busy device: at 10 ms the key
/// filter's pages (570 KiB at 100,000 documents) were often read first, and the cold
/// page's query waited behind them (docs/BENCHMARKS.md).
const READS_QUIET_MS: u32 = 50;
const CONNECT_HOLD_MS: u32 = 250;

fn closed() -> JsValue {
    js_error(&Error::new(ErrorCode::Storage, "the database is closed"))
}

fn now_ms() -> i64 {
    js_sys::Date::now() as i64
}

/// A write's two answers: its optimistic result as soon as it is applied to the view,
/// then whether it became durable in IndexedDB.
struct MutateReply {
    applied: oneshot::Sender<Result<(u64, Value), Error>>,
    durable: oneshot::Sender<Result<(), Error>>,
}

enum LocalCmd {
    Mutate(Op, Option<String>, MutateReply),
    Query(String, oneshot::Sender<Result<Value, Error>>),
    Subscribe(String, oneshot::Sender<Result<(u64, Value), Error>>),
    Unsubscribe(u64),
    /// The development entry points (`explain`, `inspect`: the `devtools` feature;
    /// without it `DevCmd` has no value, and this costs nothing).
    #[cfg_attr(not(feature = "devtools"), allow(dead_code))]
    Dev(dev::DevCmd),
    /// Resolves once everything applied so far is durable.
    Flush(oneshot::Sender<Result<(), Error>>),
    /// Rebuilds the view after writes were taken back.
    Rebuild,
    Close(oneshot::Sender<Result<(), Error>>),
}

enum SyncCmd {
    Frame(Vec<u8>),
    Opened,
    Closed,
    Connect,
    SetOnline(bool),
    Ping,
    /// Writes the confirmed data the server sent to IndexedDB (scheduled after frames).
    FlushBase,
    /// Sends the durable commits that waited for the app's writes to pause.
    Send,
    /// An ephemeral presence message for the others in a partition (sent only online).
    Presence(String, Vec<u8>),
    /// Handles the frames that waited too long for outcomes ([`OUTCOMES_WAIT_MS`]).
    HandleHeld,
}

/// What JavaScript can read without a round trip through a lane.
#[derive(Default)]
struct Status {
    pending: Cell<u32>,
    connected: Cell<bool>,
    online: Cell<bool>,
    last_sync: Cell<f64>,
    /// Whether the replica has a schema (from `open`, the store, or the server).
    has_schema: Cell<bool>,
    listener: RefCell<Option<Function>>,
    /// The last `(online, connected, pending, last_sync)` reported as a `status` event.
    reported: Cell<Option<(bool, bool, u32, f64)>>,
    /// `() => Promise<string>`: a fresh token when the server says the current one
    /// expired.
    token_provider: RefCell<Option<Function>>,
    /// Values are handed out as JSON text (the package's worker), not as objects.
    json: Cell<bool>,
}

impl Status {
    fn snapshot(&self) -> JsValue {
        let o = js_sys::Object::new();
        let _ = js_sys::Reflect::set(&o, &"online".into(), &self.online.get().into());
        let _ = js_sys::Reflect::set(&o, &"connected".into(), &self.connected.get().into());
        let _ = js_sys::Reflect::set(&o, &"pending".into(), &self.pending.get().into());
        let _ = js_sys::Reflect::set(&o, &"lastSync".into(), &self.last_sync.get().into());
        let _ = js_sys::Reflect::set(&o, &"hasSchema".into(), &self.has_schema.get().into());
        o.into()
    }

    /// Emits a `status` event if anything in it changed since the last one.
    fn emit_status(&self) {
        let now = (
            self.online.get(),
            self.connected.get(),
            self.pending.get(),
            self.last_sync.get(),
        );
        if self.reported.get() == Some(now) {
            return;
        }
        self.reported.set(Some(now));
        self.emit("status", self.snapshot());
    }

    fn emit(&self, kind: &str, detail: JsValue) {
        let f = self.listener.borrow().clone();
        if let Some(f) = f {
            let o = js_sys::Object::new();
            let _ = js_sys::Reflect::set(&o, &"type".into(), &kind.into());
            let _ = js_sys::Reflect::set(&o, &"detail".into(), &detail);
            let _ = f.call1(&JsValue::NULL, &o);
        }
    }

    /// A value for JavaScript: JSON text or an object, as the caller asked.
    fn out(&self, v: &Value) -> JsValue {
        if self.json.get() {
            JsValue::from_str(&json_text(v))
        } else {
            to_js(v)
        }
    }
}

/// Someone waiting for writes to be durable.
struct Waiter {
    /// Every write up to this generation.
    gen: u64,
    /// The local write it is for, if any.
    seq: Option<u64>,
    reply: oneshot::Sender<Result<(), Error>>,
}

/// Everything the lanes share.
struct Shared {
    replica: RefCell<Replica<IdbStore>>,
    status: Status,
    url: String,
    token: RefCell<String>,
    local: UnboundedSender<LocalCmd>,
    sync: UnboundedSender<SyncCmd>,
    ws: RefCell<Option<(WebSocket, Vec<EventListener>)>>,
    waiters: RefCell<Vec<Waiter>>,
    /// Confirmations not yet reported: each waits until the data it brought (and
    /// everything written before it, up to the write generation given) is committed
    /// to IndexedDB (`IdbStore::committed_gen`).
    held: RefCell<Vec<(u64, JsValue)>>,
    /// Every local write up to this sequence number is durable (and may be sent).
    durable_seq: Cell<u64>,
    /// A flush of the local writes is due on the next turn of the event loop (or
    /// sooner, when the worker has posted their answers: `flushDue`).
    flush_soon: Cell<bool>,
    /// The turns that flush waits for (kept: a channel costs more to make than a turn).
    flush_turns: RefCell<Option<Turns>>,
    /// The last query's answer, once written as JSON text for the worker: freed when
    /// the worker has posted it (`flushDue`), not before. A large answer takes about as
    /// long to free as to write, and the page reads it meanwhile.
    spent: Cell<Option<Value>>,
    base_timer: RefCell<Option<Timeout>>,
    /// Set while frames wait for outcomes: handles them when it fires.
    outcomes_timer: RefCell<Option<Timeout>>,
    /// When the frames waiting for outcomes began to wait (`Date.now()`), and whether
    /// they are a welcome's catch-up.
    outcomes_since: Cell<f64>,
    outcomes_catch_up: Cell<bool>,
    /// When the app last made a local write (`Date.now()`).
    last_local_ms: Cell<f64>,
    /// Batches of frames that waited for the app's writes (`stats().framesHeld`).
    frames_held: Cell<u64>,
    /// When commits were last sent, and since when commits made durable have waited
    /// for the app's writes to pause (`None`: none waits); the timer that looks again.
    last_send_ms: Cell<f64>,
    sends_held_since: Cell<Option<f64>>,
    send_timer: RefCell<Option<Timeout>>,
    /// Flushes the base timer issued while confirmations waited for their data
    /// (`stats().confirmationsTimed`): none should, that data goes at once.
    confirmations_timed: Cell<u64>,
    /// Times sending waited for the app's writes (`stats().sendsHeld`), and times
    /// commits were sent (`stats().sends`; each one push frame or more).
    sends_held: Cell<u64>,
    sends: Cell<u64>,
    /// When the replica opened, and the local lane's operations: how many are in
    /// progress, and when the last one ended (`Date.now()`).
    opened_ms: f64,
    local_busy: Cell<u32>,
    local_done_ms: Cell<f64>,
    retry: RefCell<Option<Timeout>>,
    backoff_ms: Cell<f64>,
    /// The server refused the token as expired: get a new one before reconnecting.
    token_expired: Cell<bool>,
    /// The renewal asked for is ahead of the server: only this page's clock said the
    /// token expired (`connect_fresh`).
    renew_ahead: Cell<bool>,
    stopped: Cell<bool>,
    heartbeat: RefCell<Option<Interval>>,
    online_listeners: RefCell<Vec<EventListener>>,
}

/// A Warren database in the browser.
#[wasm_bindgen]
pub struct Warren {
    shared: Rc<Shared>,
}

#[wasm_bindgen]
impl Warren {
    /// Opens the replica in IndexedDB database `db` and starts syncing with `url`.
    /// `schema` is the schema source to start with offline (the server's replaces it);
    /// `auth` the claims used for local rule checks. `options`: `{ cacheBytes, db }`,
    /// the cache's byte cap (64 MiB by default) and a connection to `db` already opened
    /// (used if it is at this build's version).
    pub async fn open(
        db: String,
        client_id: String,
        url: String,
        token: String,
        schema: Option<String>,
        auth: JsValue,
        options: JsValue,
    ) -> Result<Warren, JsValue> {
        // This page now leads for the database: a page that led before writes no more
        // (the claim). The replica's own keys (its log, read whole by any open) are
        // needed at once, and so is the list of (partition, collection) pairs (`V`,
        // one key each, which counts start from): one transaction opens it all.
        // Documents load later.
        let own = [KeyRange::prefix(b"V")];
        // The worker may have opened IndexedDB already, while the engine compiled.
        let opened = js_sys::Reflect::get(&options, &"db".into())
            .ok()
            .and_then(|v| v.dyn_into::<web_sys::IdbDatabase>().ok());
        let mut store = IdbStore::open_claimed(&db, &own, opened)
            .await
            .map_err(|e| js_error(&e))?;
        if let Some(cap) = js_sys::Reflect::get(&options, &"cacheBytes".into())
            .ok()
            .and_then(|v| v.as_f64())
        {
            store.set_cache_bytes(cap as usize);
        }
        let mut replica =
            Replica::open(store, &client_id, schema.as_deref()).map_err(|e| js_error(&e))?;
        if let Some(s) = replica.schema() {
            let f = doc_of(s);
            replica.store_mut().set_doc_of(f);
        }
        replica.set_auth(from_js(auth).map_err(|e| js_error(&e))?);
        let (local_tx, local_rx) = unbounded();
        let (sync_tx, sync_rx) = unbounded();
        let status = Status::default();
        status.pending.set(replica.pending().len() as u32);
        status.has_schema.set(replica.schema().is_some());
        let online = on_line();
        status.online.set(online);
        let shared = Rc::new(Shared {
            replica: RefCell::new(replica),
            status,
            url,
            token: RefCell::new(token),
            local: local_tx,
            sync: sync_tx.clone(),
            ws: RefCell::new(None),
            waiters: RefCell::new(Vec::new()),
            held: RefCell::new(Vec::new()),
            durable_seq: Cell::new(0),
            flush_soon: Cell::new(false),
            flush_turns: RefCell::new(None),
            spent: Cell::new(None),
            base_timer: RefCell::new(None),
            outcomes_timer: RefCell::new(None),
            outcomes_since: Cell::new(0.0),
            outcomes_catch_up: Cell::new(false),
            last_local_ms: Cell::new(f64::NEG_INFINITY),
            frames_held: Cell::new(0),
            last_send_ms: Cell::new(f64::NEG_INFINITY),
            sends_held_since: Cell::new(None),
            send_timer: RefCell::new(None),
            confirmations_timed: Cell::new(0),
            sends_held: Cell::new(0),
            sends: Cell::new(0),
            opened_ms: js_sys::Date::now(),
            local_busy: Cell::new(0),
            local_done_ms: Cell::new(f64::NEG_INFINITY),
            retry: RefCell::new(None),
            backoff_ms: Cell::new(100.0),
            token_expired: Cell::new(false),
            renew_ahead: Cell::new(false),
            stopped: Cell::new(false),
            heartbeat: RefCell::new(None),
            online_listeners: RefCell::new(Vec::new()),
        });
        {
            // What is in the outbox at open is durable already.
            let last = shared
                .replica
                .borrow()
                .pending()
                .last()
                .map_or(0, |p| p.seq);
            shared.durable_seq.set(last);
        }
        {
            let weak: Weak<Shared> = Rc::downgrade(&shared);
            shared
                .replica
                .borrow_mut()
                .store_mut()
                .set_notify(Rc::new(move || {
                    if let Some(sh) = weak.upgrade() {
                        sh.on_flushed();
                    }
                }));
        }
        let global: web_sys::EventTarget = js_sys::global().unchecked_into();
        // Node's global scope has no `addEventListener` (and no online events).
        let has_events = js_sys::Reflect::get(&global, &"addEventListener".into())
            .is_ok_and(|f| f.is_function());
        for (name, on) in [("online", true), ("offline", false)]
            .into_iter()
            .filter(|_| has_events)
        {
            let t = sync_tx.clone();
            shared
                .online_listeners
                .borrow_mut()
                .push(EventListener::new(&global, name, move |_| {
                    let _ = t.unbounded_send(SyncCmd::SetOnline(on));
                }));
        }
        {
            let t = sync_tx.clone();
            *shared.heartbeat.borrow_mut() = Some(Interval::new(20_000, move || {
                let _ = t.unbounded_send(SyncCmd::Ping);
            }));
        }
        // Ask the browser to keep this origin's data under storage pressure, without
        // holding up the open; whether it agreed is reported as a `persisted` event
        // (browsers may say no; in a worker, the page asks).
        if web_sys::window().is_some() {
            let sh = shared.clone();
            wasm_bindgen_futures::spawn_local(async move {
                let persisted = persist().await;
                sh.status.emit("persisted", JsValue::from_bool(persisted));
            });
        }
        wasm_bindgen_futures::spawn_local(local_lane(shared.clone(), local_rx));
        wasm_bindgen_futures::spawn_local(sync_lane(shared.clone(), sync_rx));
        {
            // Once the app's first reads are answered (they would otherwise wait behind
            // these, on the worker and in IndexedDB): the first connection (if online),
            // the merges of runs left due by the last session (a page that wrote until
            // it closed), and the key filter's pages (until then a read of a key never
            // written asks IndexedDB; failed, the first write to the runs reads them).
            let sh = shared.clone();
            wasm_bindgen_futures::spawn_local(async move {
                sh.wait_for_first_reads().await;
                if sh.stopped.get() {
                    return;
                }
                let _ = sh.sync.unbounded_send(SyncCmd::Connect);
                if let Ok(mut r) = sh.replica.try_borrow_mut() {
                    r.store_mut().pump_merge();
                }
                let load = match sh.replica.try_borrow() {
                    Ok(r) => r.store().load_filter(),
                    Err(_) => return,
                };
                let _ = load.await;
            });
        }
        Ok(Warren { shared })
    }

    /// Hands values out as JSON text (results, live-query values, confirmations) and
    /// takes arguments as JSON text: what a worker posts to the page, which parses it
    /// once.
    #[wasm_bindgen(js_name = setJson)]
    pub fn set_json(&self, on: bool) {
        self.shared.status.json.set(on);
    }

    /// Calls a schema function. Resolves with `{seq, result, local}` as soon as the
    /// commit is applied to the local view (`result` is its optimistic result), before
    /// any IndexedDB transaction; `local` is a promise that resolves once the commit
    /// is in the IndexedDB outbox (and rejects, the commit taken back, if it could not
    /// be stored). Rejects with an `Error` whose `code` says why when a rule or the
    /// function refuses it locally.
    ///
    /// `rid`, if given, is a request id: a write whose id was made before (by this
    /// page or another) answers as it did then and makes nothing new, so a caller can
    /// retry a write whose answer it lost.
    pub async fn call(
        &self,
        function: String,
        args: JsValue,
        rid: Option<String>,
    ) -> Result<JsValue, JsValue> {
        let args = from_js(args).map_err(|e| js_error(&e))?;
        self.mutate(Op::Call { function, args }, rid).await
    }

    /// Runs an ad-hoc transaction (a block of statements); `rid` as for `call`.
    pub async fn run(&self, source: String, rid: Option<String>) -> Result<JsValue, JsValue> {
        self.mutate(Op::Run { source }, rid).await
    }

    async fn mutate(&self, op: Op, rid: Option<String>) -> Result<JsValue, JsValue> {
        let (applied, applied_rx) = oneshot::channel();
        let (durable, durable_rx) = oneshot::channel();
        self.send(LocalCmd::Mutate(op, rid, MutateReply { applied, durable }))?;
        let (seq, result) = applied_rx
            .await
            .map_err(|_| closed())?
            .map_err(|e| js_error(&e))?;
        let local = wasm_bindgen_futures::future_to_promise(async move {
            match durable_rx.await {
                Ok(Ok(())) => Ok(JsValue::UNDEFINED),
                Ok(Err(e)) => Err(js_error(&e)),
                Err(_) => Err(closed()),
            }
        });
        let o = js_sys::Object::new();
        let _ = js_sys::Reflect::set(&o, &"seq".into(), &JsValue::from_f64(seq as f64));
        let _ = js_sys::Reflect::set(&o, &"result".into(), &self.shared.status.out(&result));
        let _ = js_sys::Reflect::set(&o, &"local".into(), &local);
        Ok(o.into())
    }

    /// Starts a live query over the local view. Resolves with `{id, value}` (its first
    /// result); later results arrive as `changed` events with that id, only when they
    /// differ from the last one.
    pub async fn subscribe(&self, source: String) -> Result<JsValue, JsValue> {
        let (tx, rx) = oneshot::channel();
        self.send(LocalCmd::Subscribe(source, tx))?;
        let (id, value) = rx.await.map_err(|_| closed())?.map_err(|e| js_error(&e))?;
        let o = js_sys::Object::new();
        let _ = js_sys::Reflect::set(&o, &"id".into(), &JsValue::from_f64(id as f64));
        let _ = js_sys::Reflect::set(&o, &"value".into(), &self.shared.status.out(&value));
        Ok(o.into())
    }

    /// Stops a live query.
    pub fn unsubscribe(&self, id: f64) {
        let _ = self
            .shared
            .local
            .unbounded_send(LocalCmd::Unsubscribe(id as u64));
    }

    /// The current status: `{online, connected, pending, lastSync, hasSchema}`.
    pub fn status(&self) -> JsValue {
        self.shared.status.snapshot()
    }

    /// Runs a query against the local view (no network).
    pub async fn query(&self, source: String) -> Result<JsValue, JsValue> {
        let (tx, rx) = oneshot::channel();
        self.send(LocalCmd::Query(source, tx))?;
        let v = rx.await.map_err(|_| closed())?.map_err(|e| js_error(&e))?;
        let out = self.shared.status.out(&v);
        if self.shared.status.json.get() {
            self.shared.spent.set(Some(v));
        }
        Ok(out)
    }

    /// Resolves once everything applied so far (local writes, and what the server
    /// confirmed) is written to IndexedDB.
    pub async fn flush(&self) -> Result<(), JsValue> {
        let (tx, rx) = oneshot::channel();
        self.send(LocalCmd::Flush(tx))?;
        rx.await.map_err(|_| closed())?.map_err(|e| js_error(&e))
    }

    /// What the replica holds and did: the cache, the view, the store's counters, and
    /// the engine's WebAssembly memory, in bytes.
    pub fn stats(&self) -> JsValue {
        let o = js_sys::Object::new();
        let set = |k: &str, v: f64| {
            let _ = js_sys::Reflect::set(&o, &k.into(), &JsValue::from_f64(v));
        };
        if let Ok(r) = self.shared.replica.try_borrow() {
            let s = r.store().stats();
            let v = r.stats();
            set("cacheBytes", s.cache_bytes as f64);
            set("cacheEntries", s.cache_entries as f64);
            set("spans", s.spans as f64);
            set("unwritten", s.unwritten as f64);
            set("filterBytes", s.filter_bytes as f64);
            let _ = js_sys::Reflect::set(&o, &"filterLoaded".into(), &s.filter_loaded.into());
            set("loadTransactions", s.load_transactions as f64);
            set("loadRequests", s.load_requests as f64);
            set("recordsLoaded", s.records_loaded as f64);
            set("blocksLoaded", s.blocks_loaded as f64);
            set("runs", s.runs as f64);
            set("blocks", s.blocks as f64);
            set("runBytes", s.run_bytes as f64);
            set("merges", s.merges as f64);
            set("absentByFilter", s.absent_by_filter as f64);
            set("flushes", s.flushes as f64);
            set("failedFlushes", s.failed_flushes as f64);
            set("applies", s.applies as f64);
            set("writeRequests", s.write_requests as f64);
            set("unapplied", s.unapplied as f64);
            set("evictedBytes", s.evicted_bytes as f64);
            set("openDbMs", s.open_db_ms as f64);
            set("openReadMs", s.open_read_ms as f64);
            set("viewBytes", v.view_bytes as f64);
            set("reexecuted", v.reexecuted as f64);
            set("rebuilds", v.rebuilds as f64);
            set("liveRuns", v.live_runs as f64);
            set("pending", r.pending().len() as f64);
        }
        set("framesHeld", self.shared.frames_held.get() as f64);
        set("sendsHeld", self.shared.sends_held.get() as f64);
        set(
            "confirmationsTimed",
            self.shared.confirmations_timed.get() as f64,
        );
        set("sends", self.shared.sends.get() as f64);
        set(
            "worker",
            if js_sys::global().is_instance_of::<web_sys::WorkerGlobalScope>() {
                1.0
            } else {
                0.0
            },
        );
        set(
            "wasmMemoryBytes",
            wasm_bindgen::memory()
                .unchecked_into::<js_sys::WebAssembly::Memory>()
                .buffer()
                .unchecked_into::<ArrayBuffer>()
                .byte_length() as f64,
        );
        o.into()
    }

    fn send(&self, c: LocalCmd) -> Result<(), JsValue> {
        if self.shared.stopped.get() {
            return Err(closed());
        }
        self.shared.local.unbounded_send(c).map_err(|_| closed())
    }

    /// Commits not yet confirmed by the server.
    pub fn pending(&self) -> u32 {
        self.shared.status.pending.get()
    }

    /// Whether a connection is up and welcomed.
    pub fn connected(&self) -> bool {
        self.shared.status.connected.get()
    }

    /// When the replica was last in step with the server: it confirmed a write or
    /// sent what changed (ms since the epoch; 0 if never, in this page).
    #[wasm_bindgen(js_name = lastSync)]
    pub fn last_sync(&self) -> f64 {
        self.shared.status.last_sync.get()
    }

    /// Issues now the flush of local writes that waits for the next turn of the event
    /// loop (so that their optimistic results go first), and frees the last query's
    /// answer. The worker calls it once it has posted the answers it made: the page has
    /// them, and the flush need not wait for the turn.
    #[wasm_bindgen(js_name = flushDue)]
    pub fn flush_due(&self) {
        let sh = &self.shared;
        sh.spent.take();
        if !sh.flush_soon.get() || sh.stopped.get() || sh.replica.try_borrow_mut().is_err() {
            return;
        }
        sh.kick_flush(false);
    }

    /// Whether a local write the server has not confirmed yet created, changed or
    /// deleted document `id` of `collection` (Firestore's `hasPendingWrites`).
    #[wasm_bindgen(js_name = hasPendingWrites)]
    pub fn has_pending_writes(&self, collection: &str, id: &str) -> Result<bool, JsValue> {
        let r = self.shared.replica.try_borrow().map_err(|_| {
            js_error(&Error::new(
                ErrorCode::Internal,
                "the replica is busy (a call from inside an event)",
            ))
        })?;
        Ok(r.has_pending_writes(collection, id))
    }

    /// Goes offline (closes the connection, stops reconnecting) or online again.
    /// Offline takes effect for the writes at once: none made after it is sent, even
    /// before the sync lane (busy with the server's frames, say) closes the connection.
    #[wasm_bindgen(js_name = setOnline)]
    pub fn set_online(&self, online: bool) {
        self.shared.status.online.set(online);
        let _ = self.shared.sync.unbounded_send(SyncCmd::SetOnline(online));
    }

    /// Sends `data` (text, at most 1 KiB) to the others who hold `partition` now, as
    /// an ephemeral presence message (not logged, not stored; dropped offline).
    pub fn presence(&self, partition: String, data: String) {
        let _ = self
            .shared
            .sync
            .unbounded_send(SyncCmd::Presence(partition, data.into_bytes()));
    }

    /// Receives `{type, detail}` events: `confirmed`, `rejected`, `dropped`,
    /// `schema`, `server-error`, `status`, `persisted`, `presence` (`{partition, from,
    /// data}`).
    #[wasm_bindgen(js_name = onEvent)]
    pub fn on_event(&self, f: Function) {
        *self.shared.status.listener.borrow_mut() = Some(f);
    }

    /// Sets `() => Promise<string>`, called for a fresh token when the server refuses
    /// the current one as expired; the client then reconnects with it at once.
    #[wasm_bindgen(js_name = setTokenProvider)]
    pub fn set_token_provider(&self, f: Function) {
        *self.shared.status.token_provider.borrow_mut() = Some(f);
    }

    /// Writes what is not yet durable, stops syncing and closes the database. Resolves
    /// once everything applied before it is in IndexedDB (rejects if it could not be
    /// written); later calls are refused.
    pub async fn close(&self) -> Result<(), JsValue> {
        if self.shared.stopped.get() {
            return Ok(());
        }
        let (tx, rx) = oneshot::channel();
        self.shared
            .local
            .unbounded_send(LocalCmd::Close(tx))
            .map_err(|_| closed())?;
        match rx.await {
            Ok(r) => r.map_err(|e| js_error(&e)),
            Err(_) => Ok(()),
        }
    }
}

// ----- the lanes -----

/// Queries answered together at most (their misses load in one transaction).
const QUERIES_AT_ONCE: usize = 512;

/// A local operation in progress, from the lane taking its command to its end (see
/// `Shared::wait_for_first_reads`).
struct LocalBusy<'a>(&'a Shared);

impl<'a> LocalBusy<'a> {
    fn new(sh: &'a Shared) -> LocalBusy<'a> {
        sh.local_busy.set(sh.local_busy.get() + 1);
        LocalBusy(sh)
    }
}

impl Drop for LocalBusy<'_> {
    fn drop(&mut self) {
        self.0
            .local_busy
            .set(self.0.local_busy.get().saturating_sub(1));
        self.0.local_done_ms.set(js_sys::Date::now());
    }
}

async fn local_lane(sh: Rc<Shared>, mut rx: UnboundedReceiver<LocalCmd>) {
    let mut next: Option<LocalCmd> = None;
    loop {
        let cmd = match next.take() {
            Some(c) => c,
            None => match rx.next().await {
                Some(c) => c,
                None => break,
            },
        };
        // Queries asked together (say, many reads by id at once) are answered together:
        // what they miss loads in one transaction. Only consecutive ones: a query never
        // overtakes a write asked before it.
        let _busy = LocalBusy::new(&sh);
        let cmd = match cmd {
            LocalCmd::Query(src, reply) => {
                let mut batch = vec![(src, reply)];
                while batch.len() < QUERIES_AT_ONCE {
                    match rx.try_recv() {
                        Ok(LocalCmd::Query(s, r)) => batch.push((s, r)),
                        Ok(other) => {
                            next = Some(other);
                            break;
                        }
                        _ => break,
                    }
                }
                if batch.len() > 1 {
                    let op = sh.replica.borrow().store().begin_op();
                    sh.queries(batch).await;
                    sh.replica.borrow_mut().store_mut().end_op(op);
                    sh.status.emit_status();
                    continue;
                }
                let (src, reply) = batch.pop().expect("one");
                LocalCmd::Query(src, reply)
            }
            other => other,
        };
        if let LocalCmd::Close(reply) = cmd {
            let r = sh.durable(None).await;
            sh.stop();
            let _ = reply.send(r);
            break;
        }
        let op = sh.replica.borrow().store().begin_op();
        match cmd {
            LocalCmd::Mutate(o, rid, reply) => sh.mutate(o, rid, reply).await,
            LocalCmd::Query(src, reply) => {
                let r = sh.settle(|r| r.query(&src)).await;
                let _ = reply.send(r.and_then(|r| r));
            }
            LocalCmd::Subscribe(src, reply) => {
                let r = sh.settle(|r| r.subscribe(&src)).await;
                let _ = reply.send(r.and_then(|r| r));
            }
            LocalCmd::Unsubscribe(id) => sh.replica.borrow_mut().unsubscribe(id),
            LocalCmd::Dev(c) => sh.dev(c).await,
            LocalCmd::Flush(reply) => {
                let sh2 = sh.clone();
                // Waits without holding the lane.
                wasm_bindgen_futures::spawn_local(async move {
                    let _ = reply.send(sh2.durable(None).await);
                });
            }
            LocalCmd::Rebuild => {
                if let Err(e) = sh.rebuild().await {
                    sh.status.emit("server-error", js_error(&e));
                }
                sh.report();
            }
            LocalCmd::Close(_) => unreachable!("handled above"),
        }
        sh.replica.borrow_mut().store_mut().end_op(op);
        if sh.replica.borrow().store().is_fenced() {
            sh.stop();
            break;
        }
        sh.status.emit_status();
    }
}

async fn sync_lane(sh: Rc<Shared>, mut rx: UnboundedReceiver<SyncCmd>) {
    let mut next: Option<SyncCmd> = None;
    // Made when frames first come and kept until the lane ends (`stop`): making and
    // closing a channel each time the lane fell idle cost 2% of a page's time in a
    // run of single writes, each confirmed on its own.
    let mut turns: Option<Turns> = None;
    loop {
        let cmd = match next.take() {
            Some(c) => c,
            None => match rx.try_recv() {
                Ok(c) => c,
                Err(_) => match rx.next().await {
                    Some(c) => c,
                    None => break,
                },
            },
        };
        // A connection's `Welcome` is handled at once, alone: it holds no data, and the
        // outbox is pushed after it (a page back online right after its writes waited
        // up to WRITES_QUIET_MS more for that). Other frames wait while the app writes.
        let welcome = matches!(&cmd, SyncCmd::Frame(b) if ServerFrame::is_welcome(b));
        // Before the operation begins: what the app's writes use meanwhile stays
        // evictable (an operation in progress keeps what was used since it began).
        if matches!(cmd, SyncCmd::Frame(_)) && !welcome {
            sh.hold_while_writing().await;
        }
        if sh.stopped.get() {
            break;
        }
        let op = sh.replica.borrow().store().begin_op();
        let r = match cmd {
            SyncCmd::Frame(first) if welcome => sh.frames(vec![first]).await,
            SyncCmd::Frame(first) => {
                let turns = turns.get_or_insert_with(Turns::new);
                let frames = gather(first, &mut rx, &mut next, turns).await;
                sh.frames(frames).await
            }
            other => sh.sync_step(other).await,
        };
        if let Err(e) = r {
            sh.status.emit("server-error", js_error(&e));
        }
        sh.replica.borrow_mut().store_mut().end_op(op);
        if sh.replica.borrow().store().is_fenced() {
            sh.stop();
            break;
        }
        sh.status.emit_status();
    }
}

/// The frames to handle together with `first` (the view is rebased, live queries
/// evaluated and the store flushed once for all): those already received, and those
/// the socket has received but not delivered yet. Each socket message is a task of its
/// own, so a frame is followed by a turn of the event loop ([`Turns`]), which lets
/// every message queued before it in; as long as a turn brings more, another follows
/// (at most [`FRAMES_AT_ONCE`] frames). A command other than a frame ends the batch
/// (it goes to `next`). (A commit's effects and its outcome, which may come apart, are
/// handled together however they are gathered: see `Replica::receive`.)
async fn gather(
    first: Vec<u8>,
    rx: &mut UnboundedReceiver<SyncCmd>,
    next: &mut Option<SyncCmd>,
    turns: &mut Turns,
) -> Vec<Vec<u8>> {
    let mut frames = vec![first];
    let take_ready = |rx: &mut UnboundedReceiver<SyncCmd>,
                      frames: &mut Vec<Vec<u8>>,
                      next: &mut Option<SyncCmd>| {
        while next.is_none() && frames.len() < FRAMES_AT_ONCE {
            match rx.try_recv() {
                Ok(SyncCmd::Frame(b)) => frames.push(b),
                Ok(other) => *next = Some(other),
                _ => break,
            }
        }
    };
    take_ready(rx, &mut frames, next);
    loop {
        if next.is_some() || frames.len() >= FRAMES_AT_ONCE {
            return frames;
        }
        let had = frames.len();
        turns.turn().await;
        take_ready(rx, &mut frames, next);
        if frames.len() == had {
            return frames;
        }
    }
}

/// Turns of the event loop, awaited: a message posted to a channel of the lane's own.
/// Messages already queued (the socket's) are delivered before it, and unlike a
/// zero-delay timer it is never stretched to 4 ms when such waits follow one another.
/// One channel serves every turn (making one per turn cost more than the frames it
/// gathered). Where there is no `MessageChannel`, a turn is a zero-delay timer.
struct Turns {
    /// The port posted to, the port listened to, and its listener.
    channel: Option<(web_sys::MessagePort, web_sys::MessagePort, EventListener)>,
    waiting: Rc<Cell<Option<oneshot::Sender<()>>>>,
}

impl Turns {
    fn new() -> Turns {
        let waiting: Rc<Cell<Option<oneshot::Sender<()>>>> = Rc::new(Cell::new(None));
        let w = waiting.clone();
        let channel = web_sys::MessageChannel::new().ok().map(|c| {
            let (post, heard) = (c.port2(), c.port1());
            let listener = EventListener::new(&heard, "message", move |_| {
                if let Some(f) = w.take() {
                    let _ = f.send(());
                }
            });
            heard.start();
            (post, heard, listener)
        });
        Turns { channel, waiting }
    }

    async fn turn(&mut self) {
        let (fire, fired) = oneshot::channel::<()>();
        match &self.channel {
            Some((post, _, _)) if post.post_message(&JsValue::NULL).is_ok() => {
                self.waiting.set(Some(fire));
                let _ = fired.await;
            }
            _ => {
                let _t = Timeout::new(0, move || {
                    let _ = fire.send(());
                });
                let _ = fired.await;
            }
        }
    }
}

impl Drop for Turns {
    fn drop(&mut self) {
        if let Some((post, heard, _)) = &self.channel {
            post.close();
            heard.close();
        }
    }
}

impl Shared {
    /// Stops everything: the connection, the timers, the lanes.
    fn stop(&self) {
        if self.stopped.replace(true) {
            return;
        }
        self.close_socket();
        self.heartbeat.borrow_mut().take();
        self.retry.borrow_mut().take();
        self.base_timer.borrow_mut().take();
        self.outcomes_timer.borrow_mut().take();
        self.send_timer.borrow_mut().take();
        self.flush_turns.borrow_mut().take();
        self.online_listeners.borrow_mut().clear();
        self.local.close_channel();
        self.sync.close_channel();
        self.replica.borrow().store().close_db();
        self.replica.borrow_mut().disconnected();
        self.status.connected.set(false);
        for w in self.waiters.borrow_mut().drain(..) {
            let _ = w.reply.send(Err(Error::new(
                ErrorCode::Storage,
                "the database is closed",
            )));
        }
    }

    /// Loads what `f` missed until a run of it reads nothing unloaded.
    async fn settle<T>(&self, mut f: impl FnMut(&mut Replica<IdbStore>) -> T) -> Result<T, Error> {
        loop {
            let (r, misses) = {
                let mut rep = self.replica.borrow_mut();
                let r = f(&mut rep);
                let m = rep.store().take_misses();
                (r, m)
            };
            if misses.is_empty() {
                return Ok(r);
            }
            let gained = self.load(misses).await?;
            if gained.is_empty() {
                // Every miss was a key IndexedDB does not hold either (a new
                // document's id, say): the run saw the data as it is.
                return Ok(r);
            }
            self.replica.borrow_mut().loaded(gained);
        }
    }

    /// Answers queries asked together: each runs on what is loaded; what they all
    /// missed loads in one transaction, and those that missed run again.
    async fn queries(&self, batch: Vec<(String, oneshot::Sender<Result<Value, Error>>)>) {
        let mut todo = batch;
        loop {
            let mut missed = Vec::new();
            let mut misses = Vec::new();
            {
                let mut rep = self.replica.borrow_mut();
                rep.store().take_misses();
                for (src, reply) in todo {
                    let r = rep.query(&src);
                    let m = rep.store().take_misses();
                    if m.is_empty() {
                        let _ = reply.send(r);
                    } else {
                        misses.extend(m);
                        missed.push((src, reply, r));
                    }
                }
            }
            if missed.is_empty() {
                return;
            }
            match self.load(misses).await {
                Ok(gained) if gained.is_empty() => {
                    // Every miss was an absence: the runs saw the data as it is.
                    for (_, reply, r) in missed {
                        let _ = reply.send(r);
                    }
                    return;
                }
                Ok(gained) => self.replica.borrow_mut().loaded(gained),
                Err(e) => {
                    for (_, reply, _) in missed {
                        let _ = reply.send(Err(e.clone()));
                    }
                    return;
                }
            }
            todo = missed.into_iter().map(|(s, reply, _)| (s, reply)).collect();
        }
    }

    /// Loads `misses` with nothing borrowed while IndexedDB reads; gives the ranges
    /// that gained data.
    async fn load(&self, misses: Vec<Miss>) -> Result<Vec<KeyRange>, Error> {
        let job = self.replica.borrow_mut().store_mut().begin_load(misses)?;
        let done = job.wait().await;
        self.replica.borrow_mut().store_mut().finish_load(done)
    }

    /// Rebases the view until it reads nothing unloaded.
    async fn rebuild(&self) -> Result<(), Error> {
        self.settle(|r| r.flush()).await??;
        Ok(())
    }

    /// Applies a write to the view and answers with its optimistic result at once
    /// (live queries are notified then too), then waits for its flush and answers again.
    async fn mutate(self: &Rc<Self>, op: Op, rid: Option<String>, reply: MutateReply) {
        let now = now_ms();
        // A request made before answers as then (the `Q` space is loaded at open).
        let done = rid.as_deref().map(|r| self.replica.borrow().request(r));
        match done {
            Some(Ok(Some(done))) => {
                let _ = reply.applied.send(Ok((done.seq, done.result)));
                let _ = reply.durable.send(Ok(()));
                return;
            }
            Some(Err(e)) => {
                let _ = reply.applied.send(Err(e));
                return;
            }
            _ => {}
        }
        // Fast path: run the write on what is loaded, and let live queries see it at
        // once. If the run read something not loaded, load it: when that brings
        // nothing new (the key filter answers most absences without a read), the run
        // stands; otherwise it is taken back and made again on the full data.
        let (fast, misses) = {
            let mut r = self.replica.borrow_mut();
            r.store().take_misses();
            let fast = r.mutate_request(op.clone(), now, rid.as_deref());
            let misses = r.store().take_misses();
            (fast, misses)
        };
        let local = if misses.is_empty() {
            fast
        } else {
            if fast.is_ok() {
                self.report();
            }
            match self.load(misses).await {
                Ok(gained) if gained.is_empty() => fast,
                loaded => {
                    if let Ok(l) = &fast {
                        if let Err(e) = self.replica.borrow_mut().forget(l.seq) {
                            let _ = reply.applied.send(Err(e));
                            return;
                        }
                    }
                    match loaded {
                        Ok(gained) => self.replica.borrow_mut().loaded(gained),
                        Err(_) => self.replica.borrow_mut().invalidate(),
                    }
                    // A dry run loads what the write reads; the real run then reads
                    // only the cache.
                    match self.settle(|r| r.dry_run(op.clone(), now)).await {
                        Ok(Ok(Ok(_))) => {
                            self.replica
                                .borrow_mut()
                                .mutate_request(op, now, rid.as_deref())
                        }
                        Ok(Ok(Err(e))) | Ok(Err(e)) | Err(e) => Err(e),
                    }
                }
            }
        };
        let local = match local {
            Ok(l) => l,
            Err(e) => {
                // The fast path may have shown the write and taken it back.
                self.report();
                let _ = reply.applied.send(Err(e));
                return;
            }
        };
        let gen = self.replica.borrow().store().write_gen();
        self.last_local_ms.set(js_sys::Date::now());
        let _ = reply.applied.send(Ok((local.seq, local.result)));
        self.waiters.borrow_mut().push(Waiter {
            gen,
            seq: Some(local.seq),
            reply: reply.durable,
        });
        // The flush is issued on the next turn of the event loop: the optimistic result
        // and the live queries' new values go to the page first (issuing a transaction
        // is about half a millisecond of calls into IndexedDB, which they used to wait
        // behind), and the writes made meanwhile join the same transaction.
        if !self.flush_soon.replace(true) {
            let sh = self.clone();
            wasm_bindgen_futures::spawn_local(async move {
                // One deferral at a time (`flush_soon`): the lane's channel is free.
                let mut turns = sh.flush_turns.take().unwrap_or_else(Turns::new);
                turns.turn().await;
                sh.flush_soon.set(false);
                if sh.stopped.get() {
                    return;
                }
                *sh.flush_turns.borrow_mut() = Some(turns);
                sh.kick_flush(false);
                // Another lane's flush may have written it already (while this loaded).
                sh.answer_durable();
            });
        }
        // Live queries that read what is not loaded yet: load it, and evaluate again
        // if that brought anything in.
        let misses = self.replica.borrow().store().take_misses();
        if !misses.is_empty() {
            match self.load(misses).await {
                Ok(gained) if gained.is_empty() => {}
                Ok(gained) => {
                    self.replica.borrow_mut().loaded(gained);
                    if let Err(e) = self.rebuild().await {
                        self.status.emit("server-error", js_error(&e));
                    }
                }
                Err(e) => self.status.emit("server-error", js_error(&e)),
            }
        }
        self.report();
    }

    /// Resolves once every write made so far (up to the current generation) is
    /// durable; `seq` names the local write it is for, if any.
    async fn durable(&self, seq: Option<u64>) -> Result<(), Error> {
        let gen = self.replica.borrow().store().write_gen();
        if self.replica.borrow().store().durable_gen() >= gen {
            return Ok(());
        }
        let (tx, rx) = oneshot::channel();
        self.waiters.borrow_mut().push(Waiter {
            gen,
            seq,
            reply: tx,
        });
        self.kick_flush(true);
        rx.await
            .unwrap_or_else(|_| Err(Error::new(ErrorCode::Storage, "the database is closed")))
    }

    /// Issues a flush of what is queued: now if `force` or none is in flight, else
    /// when the one in flight completes (so writes made meanwhile share a transaction).
    fn kick_flush(&self, force: bool) {
        let r = {
            let mut rep = self.replica.borrow_mut();
            let store = rep.store_mut();
            if !force && store.has_in_flight() {
                return;
            }
            store.begin_flush()
        };
        if let Err(e) = r {
            self.flush_failed(e);
        }
    }

    /// A flush was committed to or completed: reports the confirmations now committed
    /// to, answers the writes made durable, sends the commits that may now go, and
    /// issues the next flush if writes are waiting (settling takes in only completed
    /// flushes, so a call at the commit point changes nothing else).
    fn on_flushed(&self) {
        let settled = self.replica.borrow_mut().store_mut().settle_flushes();
        self.answer_durable();
        if let Some(e) = settled.error {
            self.flush_failed(e);
        } else {
            self.send_outgoing();
            let waiting = {
                let r = self.replica.borrow();
                r.store().has_dirty() && !r.store().has_in_flight()
            };
            // Local writes waiting go at once, and so does the data of confirmations
            // held for it (the app waits for them: they came while this flush was in
            // flight); the server's data alone waits for its timer, or the next write.
            if waiting {
                if self.waiters.borrow().is_empty() && self.held.borrow().is_empty() {
                    self.schedule_base_flush();
                } else {
                    self.kick_flush(false);
                }
            }
        }
        if self.replica.borrow().store().is_fenced() {
            self.stop();
        }
    }

    /// Answers everyone waiting for writes that are durable now.
    fn answer_durable(&self) {
        let durable = self.replica.borrow().store().durable_gen();
        let mut ready = Vec::new();
        self.waiters.borrow_mut().retain_mut(|w| {
            if w.gen <= durable {
                ready.push((w.seq, std::mem::replace(&mut w.reply, oneshot::channel().0)));
                false
            } else {
                true
            }
        });
        self.release_confirmed();
        let any = !ready.is_empty();
        for (seq, reply) in ready {
            if let Some(s) = seq {
                self.durable_seq.set(self.durable_seq.get().max(s));
            }
            let _ = reply.send(Ok(()));
        }
        if any {
            self.send_outgoing();
        }
    }

    /// Writes could not be made durable: the local writes not yet durable are taken
    /// back (newest first, so sequence numbers stay whole), and everyone waiting is
    /// told why. Confirmed data stays queued: the next flush tries again.
    fn flush_failed(&self, e: Error) {
        let waiters: Vec<Waiter> = self.waiters.borrow_mut().drain(..).collect();
        let mut seqs: Vec<u64> = waiters.iter().filter_map(|w| w.seq).collect();
        seqs.sort_unstable_by(|a, b| b.cmp(a));
        {
            let mut r = self.replica.borrow_mut();
            for s in seqs {
                let _ = r.forget(s);
            }
        }
        for w in waiters {
            let _ = w.reply.send(Err(e.clone()));
        }
        let _ = self.local.unbounded_send(LocalCmd::Rebuild);
        if self.replica.borrow().store().is_fenced() {
            self.stop();
        }
    }

    async fn sync_step(&self, cmd: SyncCmd) -> Result<(), Error> {
        match cmd {
            SyncCmd::Frame(_) => unreachable!("handled by the lane"),
            SyncCmd::Opened => {
                let hello = self.replica.borrow_mut().hello(&self.token.borrow())?;
                self.send_frame(&hello);
                // An outbox never sent goes now, not a round trip later after the
                // welcome (`Replica::hello`).
                self.send_outgoing();
            }
            SyncCmd::Closed => {
                *self.ws.borrow_mut() = None;
                self.replica.borrow_mut().disconnected();
                self.status.connected.set(false);
                let ahead = self.renew_ahead.replace(false);
                if self.token_expired.get() && self.status.online.get() {
                    self.token_expired.set(false);
                    if let Some(token) = self.fresh_token().await {
                        *self.token.borrow_mut() = token;
                        self.backoff_ms.set(100.0);
                        self.connect();
                        return Ok(());
                    }
                    if ahead {
                        // The provider failed, and only this page's clock said the
                        // token expired: a phone's clock may run fast, so the server
                        // decides (an expired token is refused, and asked for again).
                        self.connect();
                        return Ok(());
                    }
                }
                if self.status.online.get() {
                    // Full jitter over an exponential backoff, capped at 30 s.
                    let b = self.backoff_ms.get();
                    let wait = (js_sys::Math::random() * b) as u32 + 50;
                    self.backoff_ms.set((b * 2.0).min(30_000.0));
                    let t = self.sync.clone();
                    *self.retry.borrow_mut() = Some(Timeout::new(wait, move || {
                        let _ = t.unbounded_send(SyncCmd::Connect);
                    }));
                }
            }
            SyncCmd::Connect => {
                if self.ws.borrow().is_none() && self.status.online.get() {
                    self.connect_fresh();
                }
            }
            SyncCmd::SetOnline(on) => {
                self.status.online.set(on);
                if on {
                    self.backoff_ms.set(100.0);
                    if self.ws.borrow().is_none() {
                        self.connect_fresh();
                    }
                } else {
                    self.retry.borrow_mut().take();
                    self.close_socket();
                    self.replica.borrow_mut().disconnected();
                    self.status.connected.set(false);
                }
            }
            SyncCmd::Send => {
                self.send_timer.borrow_mut().take();
                self.send_outgoing();
            }
            SyncCmd::HandleHeld => {
                self.outcomes_timer.borrow_mut().take();
                if self.replica.borrow().holds_frames() {
                    self.handle_frames(true).await?;
                }
            }
            SyncCmd::FlushBase => {
                self.base_timer.borrow_mut().take();
                if self.replica.borrow().store().has_in_flight() {
                    // It goes when the flush in flight completes (see `on_flushed`).
                } else {
                    if !self.held.borrow().is_empty() {
                        self.confirmations_timed
                            .set(self.confirmations_timed.get() + 1);
                    }
                    self.kick_flush(false);
                }
            }
            SyncCmd::Ping => {
                if self.status.connected.get() {
                    self.send_frame(&ClientFrame::Ping {
                        nonce: now_ms() as u64,
                    });
                }
            }
            SyncCmd::Presence(partition, data) => {
                if self.status.connected.get() {
                    self.send_frame(&ClientFrame::Presence { partition, data });
                }
            }
        }
        Ok(())
    }

    /// Applies frames from the server, then rebases the view and reports once.
    async fn frames(&self, frames: Vec<Vec<u8>>) -> Result<(), Error> {
        for bytes in frames {
            let frame = ServerFrame::decode(&bytes)?;
            // Presence is the app's, not the replica's: handed over as it comes.
            if let ServerFrame::Presence {
                partition,
                from,
                data,
            } = frame
            {
                let detail = warren_core::value::obj([
                    ("partition", partition.into()),
                    ("from", from.into()),
                    ("data", String::from_utf8_lossy(&data).into_owned().into()),
                ]);
                self.status.emit("presence", to_js(&detail));
                continue;
            }
            if let ServerFrame::Error { code, .. } = &frame {
                if code == "TOKEN_EXPIRED" {
                    self.token_expired.set(true);
                }
            }
            self.replica.borrow_mut().receive(frame);
        }
        self.handle_frames(false).await
    }

    /// Handles the frames received that are ready (`all`: every one, ready or not),
    /// then rebases the view and reports once. A frame that may hold the effects of
    /// this replica's own commits waits for their outcomes (`Replica::receive`), as
    /// long as [`OUTCOMES_WAIT_MS`] and [`CATCH_UP_QUIET_MS`] say.
    async fn handle_frames(&self, all: bool) -> Result<(), Error> {
        let ready = {
            let mut r = self.replica.borrow_mut();
            if all {
                r.take_held()
            } else {
                r.take_ready()
            }
        };
        // What they all read is loaded first, then they are handled with nothing of the
        // app's in between: a query or a write between a commit's effects and its
        // outcome would run that commit again on its own effects.
        for f in &ready {
            self.prepare_for(f).await?;
        }
        let mut welcomed = false;
        {
            let mut r = self.replica.borrow_mut();
            for f in ready {
                welcomed |= matches!(f, ServerFrame::Welcome { .. });
                r.handle(f)?;
            }
        }
        if welcomed {
            self.status.connected.set(true);
            self.backoff_ms.set(100.0);
        }
        // Frames that wait for outcomes are handled anyway after a while: live ones
        // `OUTCOMES_WAIT_MS` after they began to wait, a catch-up once the server is
        // quiet (`CATCH_UP_QUIET_MS`: the wait starts again with each frame that comes)
        // or after `CATCH_UP_WAIT_MAX_MS`.
        let (holds, catch_up) = {
            let r = self.replica.borrow();
            let holds = r.holds_frames();
            // The held frames walked again only when there are any.
            (holds, holds && r.holds_catch_up())
        };
        if !holds {
            self.outcomes_timer.borrow_mut().take();
        } else {
            let now = js_sys::Date::now();
            if self.outcomes_timer.borrow().is_none() || self.outcomes_catch_up.get() != catch_up {
                self.outcomes_since.set(now);
                self.outcomes_catch_up.set(catch_up);
            }
            let since = self.outcomes_since.get();
            let until = if catch_up {
                (now + f64::from(CATCH_UP_QUIET_MS)).min(since + f64::from(CATCH_UP_WAIT_MAX_MS))
            } else {
                since + f64::from(OUTCOMES_WAIT_MS)
            };
            let t = self.sync.clone();
            *self.outcomes_timer.borrow_mut() =
                Some(Timeout::new((until - now).max(0.0) as u32, move || {
                    let _ = t.unbounded_send(SyncCmd::HandleHeld);
                }));
        }
        self.rebuild().await?;
        self.report();
        // In step with the server as of now: what it sent is applied. (At most once a
        // second, so a busy stream of changes does not make a status event each.)
        let now = js_sys::Date::now();
        if self.status.connected.get() && now - self.status.last_sync.get() >= 1000.0 {
            self.status.last_sync.set(now);
        }
        self.send_outgoing();
        // What the server confirmed need not be on disk before the app hears of it:
        // until it is, the cursors that go with it are not either (one batch), so
        // after a crash the server sends it again, and a confirmed commit still in the
        // outbox is only sent again and skipped. So it is written a moment later, or
        // with the next write, in one transaction (`flush` and `close` write it at once).
        // But confirmations are reported once their data is committed to IndexedDB:
        // with nothing in flight, that data goes at once.
        if !self.held.borrow().is_empty() && !self.replica.borrow().store().has_in_flight() {
            self.kick_flush(false);
        } else {
            self.schedule_base_flush();
        }
        Ok(())
    }

    /// Waits while the app is writing (a local write in the last [`WRITES_QUIET_MS`]),
    /// at most [`FRAMES_HOLD_MS`]: the local writes go first on the worker's thread and
    /// in IndexedDB, and the frames that came meanwhile are handled together after.
    async fn hold_while_writing(&self) {
        let deadline = js_sys::Date::now() + f64::from(FRAMES_HOLD_MS);
        self.wait_until_quiet(
            deadline,
            |_| self.last_local_ms.get() + f64::from(WRITES_QUIET_MS),
            || self.frames_held.set(self.frames_held.get() + 1),
        )
        .await;
    }

    /// At open, waits until the app's first reads are answered (no local operation in
    /// progress nor ended in the last [`READS_QUIET_MS`]), at most [`CONNECT_HOLD_MS`]
    /// after the open: the handshake, the catch-up the server sends and its own work
    /// for it come after the reads a page makes as it starts, not between them.
    async fn wait_for_first_reads(&self) {
        let deadline = self.opened_ms + f64::from(CONNECT_HOLD_MS);
        self.wait_until_quiet(
            deadline,
            |now| {
                let last = if self.local_busy.get() > 0 {
                    now
                } else {
                    self.local_done_ms.get().max(self.opened_ms)
                };
                last + f64::from(READS_QUIET_MS)
            },
            || {},
        )
        .await;
    }

    /// Sleeps until `quiet_at(now)` (asked again on waking: the activity it watches
    /// may have moved it) or `deadline`, whichever comes first, or the replica stops;
    /// `waiting` is called once, as it begins to sleep, if it does.
    async fn wait_until_quiet(
        &self,
        deadline: f64,
        quiet_at: impl Fn(f64) -> f64,
        waiting: impl FnOnce(),
    ) {
        let mut waiting = Some(waiting);
        loop {
            let now = js_sys::Date::now();
            let until = quiet_at(now).min(deadline);
            if until <= now || self.stopped.get() {
                return;
            }
            if let Some(f) = waiting.take() {
                f();
            }
            let (fire, fired) = oneshot::channel::<()>();
            let _timer = Timeout::new((until - now).ceil() as u32, move || {
                let _ = fire.send(());
            });
            let _ = fired.await;
        }
    }

    /// Writes what is queued in a moment, unless a write is due sooner.
    fn schedule_base_flush(&self) {
        if self.base_timer.borrow().is_none() && self.replica.borrow().store().has_dirty() {
            let t = self.sync.clone();
            *self.base_timer.borrow_mut() = Some(Timeout::new(FLUSH_DELAY_MS, move || {
                let _ = t.unbounded_send(SyncCmd::FlushBase);
            }));
        }
    }

    /// Connects; first, when the token's `exp` has passed by this page's clock (back
    /// online after hours offline, say) and the app gave a token provider, asks it for a
    /// fresh token as after a refusal (`Closed` with `token_expired`): a connection with
    /// the old one would only be refused (`TOKEN_EXPIRED`), a round trip lost, and the
    /// outbox could no longer go before the welcome (`Replica::hello`). When the
    /// provider fails, it connects with the old token all the same: the page's clock
    /// may be wrong, and the server's decides.
    fn connect_fresh(&self) {
        let expired = self.status.token_provider.borrow().is_some()
            && warren_core::protocol::token_claims(&self.token.borrow())
                .and_then(|c| js_sys::JSON::parse(&c).ok())
                .and_then(|c| js_sys::Reflect::get(&c, &"exp".into()).ok())
                .and_then(|exp| exp.as_f64())
                .is_some_and(|exp| exp * 1000.0 <= js_sys::Date::now());
        if expired {
            self.token_expired.set(true);
            self.renew_ahead.set(true);
            let _ = self.sync.unbounded_send(SyncCmd::Closed);
        } else {
            self.connect();
        }
    }

    /// Asks the app's token provider for a new token.
    async fn fresh_token(&self) -> Option<String> {
        let f = self.status.token_provider.borrow().clone()?;
        let p = f.call0(&JsValue::NULL).ok()?;
        let v = match p.dyn_into::<js_sys::Promise>() {
            Ok(p) => wasm_bindgen_futures::JsFuture::from(p).await.ok()?,
            Err(v) => v,
        };
        v.as_string()
    }

    /// Loads what applying `frame` to the base will read. The frame is applied right
    /// after, in the same step: what an operation in progress loaded is not evicted.
    async fn prepare_for(&self, frame: &ServerFrame) -> Result<(), Error> {
        match frame {
            ServerFrame::Effects { writes, .. } => {
                let docs: Vec<Vec<u8>> = writes
                    .iter()
                    .map(|w| keys::doc_key(&w.collection, &w.id))
                    .collect();
                self.load_points(docs).await?;
            }
            ServerFrame::Snapshot { partition, .. } | ServerFrame::Drop { partition, .. } => {
                let members = KeyRange::prefix(&keys::partition_prefix(partition));
                self.load(vec![Miss::range(members.clone())]).await?;
                let held: Vec<Vec<u8>> = {
                    let r = self.replica.borrow();
                    let held = r
                        .store()
                        .scan(&members, false, usize::MAX)?
                        .into_iter()
                        .map(|(k, _)| k)
                        .collect();
                    r.store().take_misses();
                    held
                };
                let mut docs = Vec::with_capacity(held.len());
                for k in held {
                    let (_, coll, id) = keys::parse_partition_key(&k)?;
                    docs.push(keys::doc_key(&coll, &id));
                }
                // A snapshot's documents (its parts' too) may be held in another
                // partition (moved since that one's cursor): applying it reads them.
                if let ServerFrame::Snapshot { docs: sent, .. } = frame {
                    let r = self.replica.borrow();
                    for (coll, id) in r
                        .held_snapshot_docs()
                        .chain(sent.iter().map(|d| (d.collection.as_str(), d.id.as_str())))
                    {
                        docs.push(keys::doc_key(coll, id));
                    }
                }
                self.load_points(docs).await?;
            }
            _ => {}
        }
        Ok(())
    }

    /// Loads the keys not held (those the key filter knows absent need no read).
    async fn load_points(&self, keys: Vec<Vec<u8>>) -> Result<(), Error> {
        let misses = {
            let r = self.replica.borrow();
            let store = r.store();
            store.take_misses();
            for k in &keys {
                store.get(k)?;
            }
            store.take_misses()
        };
        if !misses.is_empty() {
            self.load(misses).await?;
        }
        Ok(())
    }

    fn report(&self) {
        let (events, gen, committed) = {
            let mut r = self.replica.borrow_mut();
            let events = r.take_events();
            (events, r.store().write_gen(), r.store().committed_gen())
        };
        if events.iter().any(|e| matches!(e, Event::Confirmed { .. })) {
            self.status.last_sync.set(js_sys::Date::now());
        }
        for e in events {
            match e {
                Event::Confirmed {
                    seq,
                    position,
                    result,
                } => {
                    let o = js_sys::Object::new();
                    let _ = js_sys::Reflect::set(&o, &"seq".into(), &JsValue::from_f64(seq as f64));
                    let _ = js_sys::Reflect::set(
                        &o,
                        &"position".into(),
                        &position.map_or(JsValue::NULL, |p| JsValue::from_f64(p as f64)),
                    );
                    let _ = js_sys::Reflect::set(&o, &"result".into(), &self.status.out(&result));
                    // Reported once what it brought is committed to IndexedDB (its
                    // transaction checked and committing: it completes even if the
                    // page goes next): a write the app saw confirmed stays confirmed.
                    if gen <= committed {
                        self.status.emit("confirmed", o.into());
                    } else {
                        self.held.borrow_mut().push((gen, o.into()));
                    }
                }
                Event::Rejected { seq, code, message } => {
                    let err = js_error(&Error::new(
                        ErrorCode::parse(&code).unwrap_or(ErrorCode::Aborted),
                        message,
                    ));
                    let _ = js_sys::Reflect::set(&err, &"code".into(), &code.into());
                    let _ =
                        js_sys::Reflect::set(&err, &"seq".into(), &JsValue::from_f64(seq as f64));
                    self.status.emit("rejected", err);
                }
                Event::Changed { live, value } => {
                    let o = js_sys::Object::new();
                    let _ =
                        js_sys::Reflect::set(&o, &"live".into(), &JsValue::from_f64(live as f64));
                    let _ = js_sys::Reflect::set(&o, &"value".into(), &self.status.out(&value));
                    self.status.emit("changed", o.into());
                }
                Event::Dropped { partition } => self.status.emit("dropped", partition.into()),
                Event::SchemaChanged { version } => {
                    self.status.has_schema.set(true);
                    let f = self.replica.borrow().schema().map(doc_of);
                    if let Some(f) = f {
                        self.replica.borrow_mut().store_mut().set_doc_of(f);
                    }
                    self.status.emit("schema", version.into());
                }
                Event::ServerError { code, message } => {
                    let err = js_sys::Error::new(&message);
                    let _ = js_sys::Reflect::set(&err, &"code".into(), &code.into());
                    self.status.emit("server-error", err.into());
                }
            }
        }
        self.set_pending();
    }

    /// Pending: the writes the server has not confirmed, and those it confirmed whose
    /// confirmation is not yet committed to IndexedDB.
    fn set_pending(&self) {
        let n = self.replica.borrow().pending().len() + self.held.borrow().len();
        self.status.pending.set(n as u32);
    }

    /// Reports the confirmations whose data is committed to IndexedDB now.
    fn release_confirmed(&self) {
        let committed = self.replica.borrow().store().committed_gen();
        let ready: Vec<JsValue> = {
            let mut held = self.held.borrow_mut();
            let n = held.iter().take_while(|(g, _)| *g <= committed).count();
            held.drain(..n).map(|(_, o)| o).collect()
        };
        if ready.is_empty() {
            return;
        }
        for o in ready {
            self.status.emit("confirmed", o);
        }
        self.set_pending();
        self.status.emit_status();
    }

    fn connect(&self) {
        let Ok(ws) = WebSocket::new(&self.url) else {
            let _ = self.sync.unbounded_send(SyncCmd::Closed);
            return;
        };
        ws.set_binary_type(BinaryType::Arraybuffer);
        let mut ls = Vec::new();
        let t = self.sync.clone();
        ls.push(EventListener::new(&ws, "open", move |_| {
            let _ = t.unbounded_send(SyncCmd::Opened);
        }));
        let t = self.sync.clone();
        ls.push(EventListener::new(&ws, "message", move |e| {
            // `data` read as a property: Node's WebSocket and the `ws` package deliver
            // events that are not `instanceof MessageEvent`.
            let Ok(data) = js_sys::Reflect::get(e, &"data".into()) else {
                return;
            };
            if let Ok(buf) = data.dyn_into::<ArrayBuffer>() {
                let message = Uint8Array::new(&buf).to_vec();
                // A batch's frames go to the lane one by one, as if each had come alone;
                // a message that is not a well-formed batch goes whole (its decoding
                // fails there, as a frame's would).
                let batch = ServerFrame::is_batch(&message)
                    .then(|| ServerFrame::unbatch(&message).ok())
                    .flatten();
                match batch {
                    Some(frames) => {
                        for f in frames {
                            let _ = t.unbounded_send(SyncCmd::Frame(f.to_vec()));
                        }
                    }
                    None => {
                        let _ = t.unbounded_send(SyncCmd::Frame(message));
                    }
                }
            }
        }));
        let t = self.sync.clone();
        ls.push(EventListener::new(&ws, "close", move |_| {
            let _ = t.unbounded_send(SyncCmd::Closed);
        }));
        *self.ws.borrow_mut() = Some((ws, ls));
    }

    fn close_socket(&self) {
        if let Some((ws, listeners)) = self.ws.borrow_mut().take() {
            drop(listeners);
            let _ = ws.close();
        }
    }

    fn send_frame(&self, f: &ClientFrame) {
        self.send_bytes(&f.encode());
    }

    /// Sends an encoded frame, if connected.
    fn send_bytes(&self, frame: &[u8]) {
        if let Some((ws, _)) = &*self.ws.borrow() {
            let _ = ws.send_with_u8_array(frame);
        }
    }

    /// Sends the commits not sent yet on this connection, as far as they are durable.
    ///
    /// A write made alone goes at once. While the app is writing (a local write in the
    /// last [`WRITES_QUIET_MS`]), the commits made durable after a send in that time
    /// wait, and go together once the writes pause, or [`SENDS_HOLD_MS`] after the
    /// first of them waited: a burst of writes is a push every tenth of a second, one
    /// log batch for the server, rather than a push a write (each its frame to encode
    /// and send here, and its work on the server, on the same cores as the app's
    /// writes when both run on one machine; docs/BENCHMARKS.md).
    fn send_outgoing(&self) {
        // Offline was asked for: the connection is about to close.
        if self.ws.borrow().is_none() || !self.status.online.get() {
            return;
        }
        let durable = self.durable_seq.get();
        if !self.replica.borrow().has_outgoing_upto(durable) {
            return;
        }
        let now = js_sys::Date::now();
        let quiet_at = self.last_local_ms.get() + f64::from(WRITES_QUIET_MS);
        let held_since = self.sends_held_since.get().or((now < quiet_at
            && now < self.last_send_ms.get() + f64::from(WRITES_QUIET_MS))
        .then_some(now));
        if let Some(since) = held_since {
            let wake = quiet_at.min(since + f64::from(SENDS_HOLD_MS));
            if now < wake {
                if self.sends_held_since.replace(Some(since)).is_none() {
                    self.sends_held.set(self.sends_held.get() + 1);
                }
                if self.send_timer.borrow().is_none() {
                    let t = self.sync.clone();
                    // At least 1 ms: `now < wake`.
                    let ms = (wake - now).ceil() as u32;
                    *self.send_timer.borrow_mut() = Some(Timeout::new(ms, move || {
                        let _ = t.unbounded_send(SyncCmd::Send);
                    }));
                }
                return;
            }
        }
        self.sends_held_since.set(None);
        self.last_send_ms.set(now);
        let frames = self.replica.borrow_mut().outgoing_encoded_upto(durable);
        self.sends.set(self.sends.get() + 1);
        for f in frames {
            self.send_bytes(&f);
        }
    }
}

// The development entry points: `dev.rs` with the `devtools` feature, else nothing.
#[cfg(feature = "devtools")]
#[path = "dev.rs"]
mod dev;
#[cfg(not(feature = "devtools"))]
mod dev {
    /// No development command exists in this build.
    pub(crate) enum DevCmd {}

    impl super::Shared {
        pub(super) async fn dev(self: &std::rc::Rc<Self>, c: DevCmd) {
            match c {}
        }
    }
}
