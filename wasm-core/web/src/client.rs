//! The browser client: the engine's replica on IndexedDB, synced over a WebSocket,
//! exposed to JavaScript.
//!
//! One async task (the *actor*) owns the replica and its store; every call from
//! JavaScript and every socket event becomes a command on its queue. So no borrow is
//! held across an `await` while a socket event arrives, and commands run one at a time,
//! in order.
//!
//! Loading: the replica reads through [`IdbStore`]'s cache. Before a write the actor
//! dry-runs it until it reads nothing unloaded; before applying a snapshot or effects
//! it loads what they touch; after rebuilding the view it loads whatever the view
//! missed and rebuilds again. Writes become durable with one IndexedDB transaction
//! before the call that made them resolves.

use std::cell::{Cell, RefCell};
use std::rc::Rc;

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
use web_sys::{BinaryType, MessageEvent, WebSocket};

use crate::idb::IdbStore;

/// A JavaScript `Error` with a stable `code` property.
fn js_error(e: &Error) -> JsValue {
    let err = js_sys::Error::new(&e.message);
    let _ = js_sys::Reflect::set(&err, &"code".into(), &e.code.as_str().into());
    err.into()
}

/// A value as JavaScript sees it: its JSON form (`Value::to_json`), built directly.
fn to_js(v: &Value) -> JsValue {
    match v {
        Value::Null => JsValue::NULL,
        Value::Bool(b) => JsValue::from_bool(*b),
        Value::Int(i) => JsValue::from_f64(*i as f64),
        Value::Float(f) => JsValue::from_f64(*f),
        Value::String(s) => JsValue::from_str(s),
        Value::Array(items) => {
            let a = js_sys::Array::new_with_length(items.len() as u32);
            for (i, x) in items.iter().enumerate() {
                a.set(i as u32, to_js(x));
            }
            a.into()
        }
        Value::Object(fields) => {
            let o = js_sys::Object::new();
            for (k, x) in fields {
                if k == "__proto__" {
                    // A plain data property, not the object's prototype.
                    let d = js_sys::Object::new();
                    let _ = js_sys::Reflect::set(&d, &"value".into(), &to_js(x));
                    let _ = js_sys::Reflect::set(&d, &"enumerable".into(), &true.into());
                    let _ = js_sys::Reflect::set(&d, &"writable".into(), &true.into());
                    let _ = js_sys::Reflect::set(&d, &"configurable".into(), &true.into());
                    js_sys::Object::define_property(&o, &JsValue::from_str(k), &d);
                } else {
                    let _ = js_sys::Reflect::set(&o, &JsValue::from_str(k), &to_js(x));
                }
            }
            o.into()
        }
        Value::Bytes(_) => {
            let ser = serde_wasm_bindgen::Serializer::json_compatible();
            serde::Serialize::serialize(&v.to_json(), &ser).unwrap_or(JsValue::NULL)
        }
    }
}

fn from_js(v: JsValue) -> Result<Value, Error> {
    if v.is_undefined() || v.is_null() {
        return Ok(Value::Null);
    }
    let j: serde_json::Value = serde_wasm_bindgen::from_value(v)
        .map_err(|e| Error::new(ErrorCode::InvalidArgument, format!("not a JSON value: {e}")))?;
    Value::from_json(&j)
}

/// `navigator.storage.persist()`, where the browser has it.
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

/// How long confirmed data from the server may wait before it is written to IndexedDB.
const FLUSH_DELAY_MS: u32 = 25;

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

enum Cmd {
    Mutate(Op, Option<String>, MutateReply),
    Query(String, oneshot::Sender<Result<Value, Error>>),
    Subscribe(String, oneshot::Sender<Result<(u64, Value), Error>>),
    Unsubscribe(u64),
    Frame(Vec<u8>),
    /// Frames that arrived together (made by the actor's loop from `Frame`s).
    Frames(Vec<Vec<u8>>),
    Opened,
    Closed,
    Connect,
    SetOnline(bool),
    Ping,
    /// Writes the confirmed data the server sent to IndexedDB (scheduled after frames).
    Flush,
    /// An ephemeral presence message for the others in a partition (sent only online).
    Presence(String, Vec<u8>),
}

/// What JavaScript can read without a round trip through the actor.
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
}

impl Status {
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
        let o = js_sys::Object::new();
        let _ = js_sys::Reflect::set(&o, &"online".into(), &now.0.into());
        let _ = js_sys::Reflect::set(&o, &"connected".into(), &now.1.into());
        let _ = js_sys::Reflect::set(&o, &"pending".into(), &now.2.into());
        let _ = js_sys::Reflect::set(&o, &"lastSync".into(), &now.3.into());
        let _ = js_sys::Reflect::set(&o, &"hasSchema".into(), &self.has_schema.get().into());
        self.emit("status", o.into());
    }

    fn emit(&self, kind: &str, detail: JsValue) {
        if let Some(f) = self.listener.borrow().as_ref() {
            let o = js_sys::Object::new();
            let _ = js_sys::Reflect::set(&o, &"type".into(), &kind.into());
            let _ = js_sys::Reflect::set(&o, &"detail".into(), &detail);
            let _ = f.call1(&JsValue::NULL, &o);
        }
    }
}

/// A Warren database in the browser.
#[wasm_bindgen]
pub struct Warren {
    tx: UnboundedSender<Cmd>,
    status: Rc<Status>,
}

struct Actor {
    replica: Replica<IdbStore>,
    url: String,
    token: String,
    tx: UnboundedSender<Cmd>,
    status: Rc<Status>,
    ws: Option<(WebSocket, Vec<EventListener>)>,
    /// The server refused the token as expired: get a new one before reconnecting.
    token_expired: bool,
    backoff_ms: f64,
    retry: Option<Timeout>,
    /// A pending `Flush` of what frames from the server changed.
    flush_timer: Option<Timeout>,
    _heartbeat: Option<Interval>,
    _online_listeners: Vec<EventListener>,
}

#[wasm_bindgen]
impl Warren {
    /// Opens the replica in IndexedDB database `db` and starts syncing with `url`.
    /// `schema` is the schema source to start with offline (the server's replaces it);
    /// `auth` the claims used for local rule checks.
    pub async fn open(
        db: String,
        client_id: String,
        url: String,
        token: String,
        schema: Option<String>,
        auth: JsValue,
    ) -> Result<Warren, JsValue> {
        let mut store = IdbStore::open(&db).await.map_err(|e| js_error(&e))?;
        // This page now leads for the database: a page that led before writes no more.
        // With the origin over its quota even the claim cannot be written: open anyway
        // (reads work, writes fail with QUOTA_EXCEEDED), without the fence.
        match store.claim().await {
            Err(e) if e.code != ErrorCode::QuotaExceeded => return Err(js_error(&e)),
            _ => {}
        }
        // The replica's own keys are small and needed at once; documents load later.
        for space in [b'X', b'O', b'K', b'Q'] {
            store
                .load(&KeyRange::prefix(&[space]))
                .await
                .map_err(|e| js_error(&e))?;
        }
        let mut replica =
            Replica::open(store, &client_id, schema.as_deref()).map_err(|e| js_error(&e))?;
        replica.set_auth(from_js(auth).map_err(|e| js_error(&e))?);
        let (tx, rx) = unbounded();
        let status = Rc::new(Status::default());
        status.pending.set(replica.pending().len() as u32);
        status.has_schema.set(replica.schema().is_some());
        let online = web_sys::window()
            .map(|w| w.navigator().on_line())
            .unwrap_or(true);
        status.online.set(online);
        let mut listeners = Vec::new();
        if let Some(w) = web_sys::window() {
            for (name, on) in [("online", true), ("offline", false)] {
                let t = tx.clone();
                listeners.push(EventListener::new(&w, name, move |_| {
                    let _ = t.unbounded_send(Cmd::SetOnline(on));
                }));
            }
        }
        let hb = {
            let t = tx.clone();
            Interval::new(20_000, move || {
                let _ = t.unbounded_send(Cmd::Ping);
            })
        };
        let actor = Actor {
            replica,
            url,
            token,
            tx: tx.clone(),
            status: status.clone(),
            ws: None,
            token_expired: false,
            backoff_ms: 100.0,
            retry: None,
            flush_timer: None,
            _heartbeat: Some(hb),
            _online_listeners: listeners,
        };
        // Ask the browser to keep this origin's data under storage pressure, without
        // holding up the open; whether it agreed is reported as a `persisted` event
        // (browsers may say no).
        {
            let status = status.clone();
            wasm_bindgen_futures::spawn_local(async move {
                let persisted = persist().await;
                status.emit("persisted", JsValue::from_bool(persisted));
            });
        }
        wasm_bindgen_futures::spawn_local(actor.run(rx));
        if online {
            let _ = tx.unbounded_send(Cmd::Connect);
        }
        Ok(Warren { tx, status })
    }

    /// Calls a schema function. Resolves with `{seq, result, local}` as soon as the
    /// commit is applied to the local view (`result` is its optimistic result);
    /// `local` is a promise that resolves once the commit is in the IndexedDB outbox
    /// (and rejects, the commit taken back, if it could not be stored). Rejects with
    /// an `Error` whose `code` says why when a rule or the function refuses it
    /// locally.
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
        self.send(Cmd::Mutate(op, rid, MutateReply { applied, durable }))?;
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
        let _ = js_sys::Reflect::set(&o, &"result".into(), &to_js(&result));
        let _ = js_sys::Reflect::set(&o, &"local".into(), &local);
        Ok(o.into())
    }

    /// Starts a live query over the local view. Resolves with `{id, value}` (its first
    /// result); later results arrive as `changed` events with that id, only when they
    /// differ from the last one.
    pub async fn subscribe(&self, source: String) -> Result<JsValue, JsValue> {
        let (tx, rx) = oneshot::channel();
        self.send(Cmd::Subscribe(source, tx))?;
        let (id, value) = rx.await.map_err(|_| closed())?.map_err(|e| js_error(&e))?;
        let o = js_sys::Object::new();
        let _ = js_sys::Reflect::set(&o, &"id".into(), &JsValue::from_f64(id as f64));
        let _ = js_sys::Reflect::set(&o, &"value".into(), &to_js(&value));
        Ok(o.into())
    }

    /// Stops a live query.
    pub fn unsubscribe(&self, id: f64) {
        let _ = self.tx.unbounded_send(Cmd::Unsubscribe(id as u64));
    }

    /// The current status: `{online, connected, pending, lastSync}`.
    pub fn status(&self) -> JsValue {
        let o = js_sys::Object::new();
        let s = &self.status;
        let _ = js_sys::Reflect::set(&o, &"online".into(), &s.online.get().into());
        let _ = js_sys::Reflect::set(&o, &"connected".into(), &s.connected.get().into());
        let _ = js_sys::Reflect::set(&o, &"pending".into(), &s.pending.get().into());
        let _ = js_sys::Reflect::set(&o, &"lastSync".into(), &s.last_sync.get().into());
        let _ = js_sys::Reflect::set(&o, &"hasSchema".into(), &s.has_schema.get().into());
        o.into()
    }

    /// Runs a query against the local view (no network).
    pub async fn query(&self, source: String) -> Result<JsValue, JsValue> {
        let (tx, rx) = oneshot::channel();
        self.send(Cmd::Query(source, tx))?;
        let v = rx.await.map_err(|_| closed())?.map_err(|e| js_error(&e))?;
        Ok(to_js(&v))
    }

    fn send(&self, c: Cmd) -> Result<(), JsValue> {
        self.tx.unbounded_send(c).map_err(|_| closed())
    }

    /// Commits not yet confirmed by the server.
    pub fn pending(&self) -> u32 {
        self.status.pending.get()
    }

    /// Whether a connection is up and welcomed.
    pub fn connected(&self) -> bool {
        self.status.connected.get()
    }

    /// When the server last confirmed something (ms since the epoch; 0 if never).
    #[wasm_bindgen(js_name = lastSync)]
    pub fn last_sync(&self) -> f64 {
        self.status.last_sync.get()
    }

    /// Goes offline (closes the connection, stops reconnecting) or online again.
    #[wasm_bindgen(js_name = setOnline)]
    pub fn set_online(&self, online: bool) {
        let _ = self.tx.unbounded_send(Cmd::SetOnline(online));
    }

    /// Sends `data` (text, at most 1 KiB) to the others who hold `partition` now, as
    /// an ephemeral presence message (not logged, not stored; dropped offline).
    pub fn presence(&self, partition: String, data: String) {
        let _ = self
            .tx
            .unbounded_send(Cmd::Presence(partition, data.into_bytes()));
    }

    /// Receives `{type, detail}` events: `confirmed`, `rejected`, `dropped`,
    /// `schema`, `server-error`, `status`, `presence` (`{partition, from, data}`).
    #[wasm_bindgen(js_name = onEvent)]
    pub fn on_event(&self, f: Function) {
        *self.status.listener.borrow_mut() = Some(f);
    }

    /// Sets `() => Promise<string>`, called for a fresh token when the server refuses
    /// the current one as expired; the client then reconnects with it at once.
    #[wasm_bindgen(js_name = setTokenProvider)]
    pub fn set_token_provider(&self, f: Function) {
        *self.status.token_provider.borrow_mut() = Some(f);
    }

    /// Stops syncing.
    pub fn close(&self) {
        self.tx.close_channel();
    }
}

impl Actor {
    async fn run(mut self, mut rx: UnboundedReceiver<Cmd>) {
        let mut next: Option<Cmd> = None;
        loop {
            let cmd = match next.take() {
                Some(c) => c,
                None => match rx.next().await {
                    Some(c) => c,
                    None => break,
                },
            };
            // Frames that arrived together are handled together: the view is rebuilt,
            // live queries evaluated and the store flushed once for all of them.
            let cmd = match cmd {
                Cmd::Frame(first) => {
                    let mut frames = vec![first];
                    while let Ok(c) = rx.try_recv() {
                        match c {
                            Cmd::Frame(b) => frames.push(b),
                            other => {
                                next = Some(other);
                                break;
                            }
                        }
                    }
                    Cmd::Frames(frames)
                }
                other => other,
            };
            if let Err(e) = self.step(cmd).await {
                self.status.emit("server-error", js_error(&e));
            }
            if self.replica.store().is_fenced() {
                // Another page claimed the database: stop, with the connection.
                break;
            }
            self.status.emit_status();
        }
        self.close_socket();
    }

    async fn step(&mut self, cmd: Cmd) -> Result<(), Error> {
        match cmd {
            Cmd::Mutate(op, rid, reply) => {
                self.mutate(op, rid, reply).await;
                self.send_outgoing();
            }
            Cmd::Query(src, reply) => {
                let r = self.query(&src).await;
                let _ = reply.send(r);
            }
            Cmd::Subscribe(src, reply) => {
                let r = self.settle(|r| r.subscribe(&src)).await;
                let _ = reply.send(r.and_then(|r| r));
            }
            Cmd::Unsubscribe(id) => self.replica.unsubscribe(id),
            Cmd::Frame(bytes) => self.frames(vec![bytes]).await?,
            Cmd::Frames(frames) => self.frames(frames).await?,
            Cmd::Opened => {
                let hello = self.replica.hello(&self.token)?;
                self.send_frame(&hello);
            }
            Cmd::Closed => {
                self.ws = None;
                self.replica.disconnected();
                self.status.connected.set(false);
                if self.token_expired && self.status.online.get() {
                    self.token_expired = false;
                    if let Some(token) = self.fresh_token().await {
                        self.token = token;
                        self.backoff_ms = 100.0;
                        self.connect();
                        return Ok(());
                    }
                }
                if self.status.online.get() {
                    // Full jitter over an exponential backoff, capped at 30 s.
                    let wait = (js_sys::Math::random() * self.backoff_ms) as u32 + 50;
                    self.backoff_ms = (self.backoff_ms * 2.0).min(30_000.0);
                    let t = self.tx.clone();
                    self.retry = Some(Timeout::new(wait, move || {
                        let _ = t.unbounded_send(Cmd::Connect);
                    }));
                }
            }
            Cmd::Connect => {
                if self.ws.is_none() && self.status.online.get() {
                    self.connect();
                }
            }
            Cmd::SetOnline(on) => {
                self.status.online.set(on);
                if on {
                    self.backoff_ms = 100.0;
                    if self.ws.is_none() {
                        self.connect();
                    }
                } else {
                    self.retry = None;
                    self.close_socket();
                    self.replica.disconnected();
                    self.status.connected.set(false);
                }
            }
            Cmd::Flush => {
                self.flush_timer = None;
                self.replica.store_mut().flush().await?;
            }
            Cmd::Presence(partition, data) => {
                if self.status.connected.get() {
                    self.send_frame(&ClientFrame::Presence { partition, data });
                }
            }
            Cmd::Ping => {
                if self.status.connected.get() {
                    self.send_frame(&ClientFrame::Ping {
                        nonce: now_ms() as u64,
                    });
                }
            }
        }
        Ok(())
    }

    /// Applies frames from the server, then rebuilds the view, flushes and reports once.
    async fn frames(&mut self, frames: Vec<Vec<u8>>) -> Result<(), Error> {
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
                self.token_expired |= code == "TOKEN_EXPIRED";
            }
            self.prepare_for(&frame).await?;
            let welcomed = matches!(frame, ServerFrame::Welcome { .. });
            self.replica.handle(frame)?;
            if welcomed {
                self.status.connected.set(true);
                self.backoff_ms = 100.0;
            }
        }
        self.rebuild().await?;
        self.report();
        self.send_outgoing();
        // What the server confirmed need not be on disk before the app hears of it:
        // until it is, the cursors that go with it are not either (one batch), so
        // after a crash the server sends it again, and a confirmed commit still in the
        // outbox is only sent again and skipped. So it is written a moment later, or
        // with the next write, in one transaction, and the next command need not wait.
        if self.flush_timer.is_none() {
            let t = self.tx.clone();
            self.flush_timer = Some(Timeout::new(FLUSH_DELAY_MS, move || {
                let _ = t.unbounded_send(Cmd::Flush);
            }));
        }
        Ok(())
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

    /// Loads what `ranges` need until a run of `f` reads nothing unloaded.
    async fn settle<T>(
        &mut self,
        mut f: impl FnMut(&mut Replica<IdbStore>) -> T,
    ) -> Result<T, Error> {
        loop {
            let r = f(&mut self.replica);
            let misses = self.replica.store().take_misses();
            if misses.is_empty() {
                return Ok(r);
            }
            self.replica.store_mut().take_changed();
            self.replica.store_mut().load_many(&misses).await?;
            if !self.replica.store_mut().take_changed() {
                // Every miss was a key IndexedDB does not hold either (a new
                // document's id, say): the run saw the data as it is.
                return Ok(r);
            }
            self.replica.invalidate();
        }
    }

    /// Applies a write to the view and answers with its optimistic result at once
    /// (live queries are notified then too), then makes it durable and answers again.
    async fn mutate(&mut self, op: Op, rid: Option<String>, reply: MutateReply) {
        let now = now_ms();
        // A request made before answers as then (the `Q` space is loaded at open).
        match rid.as_deref().map(|r| self.replica.request(r)) {
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
        // nothing new (a new document's id is in IndexedDB no more than in memory),
        // the run stands; otherwise it is taken back and made again on the full data.
        self.replica.store().take_misses();
        let fast = self.replica.mutate_request(op.clone(), now, rid.as_deref());
        let misses = self.replica.store().take_misses();
        let local = if misses.is_empty() {
            fast
        } else {
            if fast.is_ok() {
                self.report();
            }
            self.replica.store_mut().take_changed();
            let loaded = self.replica.store_mut().load_many(&misses).await;
            if loaded.is_ok() && !self.replica.store_mut().take_changed() {
                fast
            } else {
                if let Ok(l) = &fast {
                    if let Err(e) = self.replica.forget(l.seq) {
                        let _ = reply.applied.send(Err(e));
                        return;
                    }
                }
                self.replica.invalidate();
                // A dry run loads what the write reads; the real run then reads only
                // the cache.
                match self.settle(|r| r.dry_run(op.clone(), now)).await {
                    Ok(Ok(Ok(_))) => self.replica.mutate_request(op, now, rid.as_deref()),
                    Ok(Ok(Err(e))) | Ok(Err(e)) | Err(e) => Err(e),
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
        let _ = reply.applied.send(Ok((local.seq, local.result)));
        // Live queries that read what is not loaded yet: load it, and evaluate again
        // if that brought anything in.
        let misses = self.replica.store().take_misses();
        if !misses.is_empty() {
            self.replica.store_mut().take_changed();
            let loaded = self.replica.store_mut().load_many(&misses).await;
            if loaded.is_err() || self.replica.store_mut().take_changed() {
                self.replica.invalidate();
                if let Err(e) = self.rebuild().await {
                    self.status.emit("server-error", js_error(&e));
                }
            }
        }
        self.report();
        let durable = match self.replica.store_mut().flush().await {
            Ok(()) => Ok(()),
            Err(e) => {
                // Not durable, so not made: take it back before anyone sends it.
                // Everything written before stays (it was flushed already).
                let _ = self.replica.forget(local.seq);
                let _ = self.replica.store_mut().flush().await;
                let _ = self.rebuild().await;
                self.report();
                Err(e)
            }
        };
        let _ = reply.durable.send(durable);
    }

    async fn query(&mut self, src: &str) -> Result<Value, Error> {
        self.settle(|r| r.query(src)).await?
    }

    /// Loads what applying `frame` to the base will read.
    async fn prepare_for(&mut self, frame: &ServerFrame) -> Result<(), Error> {
        let store = self.replica.store_mut();
        match frame {
            ServerFrame::Effects { writes, .. } => {
                let docs: Vec<KeyRange> = writes
                    .iter()
                    .map(|w| KeyRange::point(&keys::doc_key(&w.collection, &w.id)))
                    .collect();
                store.load_many(&docs).await?;
            }
            ServerFrame::Snapshot { partition, .. } | ServerFrame::Drop { partition, .. } => {
                let members = KeyRange::prefix(&keys::partition_prefix(partition));
                store.load(&members).await?;
                let held: Vec<Vec<u8>> = store
                    .scan(&members, false, usize::MAX)?
                    .into_iter()
                    .map(|(k, _)| k)
                    .collect();
                store.take_misses();
                let mut docs = Vec::with_capacity(held.len());
                for k in held {
                    let (_, coll, id) = keys::parse_partition_key(&k)?;
                    docs.push(KeyRange::point(&keys::doc_key(&coll, &id)));
                }
                store.load_many(&docs).await?;
            }
            _ => {}
        }
        Ok(())
    }

    /// Rebuilds the view until it reads nothing unloaded.
    async fn rebuild(&mut self) -> Result<(), Error> {
        self.settle(|r| r.flush()).await??;
        Ok(())
    }

    fn report(&mut self) {
        self.status.pending.set(self.replica.pending().len() as u32);
        for e in self.replica.take_events() {
            match e {
                Event::Confirmed {
                    seq,
                    position,
                    result,
                } => {
                    self.status.last_sync.set(js_sys::Date::now());
                    let o = js_sys::Object::new();
                    let _ = js_sys::Reflect::set(&o, &"seq".into(), &JsValue::from_f64(seq as f64));
                    let _ = js_sys::Reflect::set(
                        &o,
                        &"position".into(),
                        &position.map_or(JsValue::NULL, |p| JsValue::from_f64(p as f64)),
                    );
                    let _ = js_sys::Reflect::set(&o, &"result".into(), &to_js(&result));
                    self.status.emit("confirmed", o.into());
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
                    let _ = js_sys::Reflect::set(&o, &"value".into(), &to_js(&value));
                    self.status.emit("changed", o.into());
                }
                Event::Dropped { partition } => self.status.emit("dropped", partition.into()),
                Event::SchemaChanged { version } => {
                    self.status.has_schema.set(true);
                    self.status.emit("schema", version.into());
                }
                Event::ServerError { code, message } => {
                    let err = js_sys::Error::new(&message);
                    let _ = js_sys::Reflect::set(&err, &"code".into(), &code.into());
                    self.status.emit("server-error", err.into());
                }
            }
        }
    }

    fn connect(&mut self) {
        let Ok(ws) = WebSocket::new(&self.url) else {
            let _ = self.tx.unbounded_send(Cmd::Closed);
            return;
        };
        ws.set_binary_type(BinaryType::Arraybuffer);
        let mut ls = Vec::new();
        let t = self.tx.clone();
        ls.push(EventListener::new(&ws, "open", move |_| {
            let _ = t.unbounded_send(Cmd::Opened);
        }));
        let t = self.tx.clone();
        ls.push(EventListener::new(&ws, "message", move |e| {
            let Some(e) = e.dyn_ref::<MessageEvent>() else {
                return;
            };
            if let Ok(buf) = e.data().dyn_into::<ArrayBuffer>() {
                let _ = t.unbounded_send(Cmd::Frame(Uint8Array::new(&buf).to_vec()));
            }
        }));
        let t = self.tx.clone();
        ls.push(EventListener::new(&ws, "close", move |_| {
            let _ = t.unbounded_send(Cmd::Closed);
        }));
        self.ws = Some((ws, ls));
    }

    fn close_socket(&mut self) {
        if let Some((ws, listeners)) = self.ws.take() {
            drop(listeners);
            let _ = ws.close();
        }
    }

    fn send_frame(&self, f: &ClientFrame) {
        if let Some((ws, _)) = &self.ws {
            let _ = ws.send_with_u8_array(&f.encode());
        }
    }

    fn send_outgoing(&mut self) {
        if self.ws.is_none() {
            return;
        }
        for f in self.replica.outgoing() {
            self.send_frame(&f);
        }
    }
}
