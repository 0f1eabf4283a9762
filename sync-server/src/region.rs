//! The region executor: applies the log in order and serves what each client may read.
//!
//! One thread owns the region's store and every connection's subscriptions, so that a
//! snapshot, the effects after it and a revocation can never race: a connection is
//! registered, snapshotted and then fed effects all in log order, by the same thread.
//!
//! For each log entry it runs the engine (`execute`, then `apply` into an overlay of the
//! batch), then for each connection the entry can concern (see `Index`):
//! - re-evaluates the read rules whose reads the entry's writes touched (a member
//!   removed from the team document the rule reads), and evaluates rules for
//!   (partition, collection) pairs the connection has not seen yet;
//! - sends `Drop` for partitions it may no longer read, `Snapshot` for those it now may,
//!   and `Effects` with the entry's writes to partitions it holds;
//! - sends the entry's `Outcome` to the connection of the client that made it.
//!
//! Frames are handed over in bunches (every `FLUSH_EVERY` entries and at the end of a
//! batch) through a dispatcher task. Batches queued behind each other are applied as
//! one; their writes stay in an overlay over the store and reach it as one transaction
//! every `STORE_WRITE_EVERY` batches, and before anything else reads the store.
//! `docs/BENCHMARKS.md` ("Sync server vs PostgreSQL") measures why.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::mpsc::{Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use tokio::sync::oneshot;
use warren_core::entry::{self as log_entry, Applied, SchemaApplied};
use warren_core::eval::Limits;
use warren_core::exec::{self, Outcome, Skip, Write};
use warren_core::protocol::{codes, CommitResult, LogEntry, ServerFrame};
use warren_core::storage::{Batch, Overlay, OverlayWrites, Storage};
use warren_core::subscription::{kept_result, result_of, welcome, Subscription};
use warren_core::{Error, Schema, Value};

use crate::log::shared::{BatchRecord, Chain, RegionState};
use crate::metrics::{Comparison, Metrics};
use crate::store::{RedbStore, Snapshot};

/// Encoded frames to one connection. Bounded in frames and in bytes: a client that
/// stops reading is dropped instead of growing the server's memory.
pub use crate::queue::FrameTx;

/// A connection asking to sync. The region registers it as joining and answers
/// `ready` with a read view; the session computes the welcome on it off the region
/// thread and hands it back with [`RegionMsg::Join`].
pub struct Connect {
    pub conn: u64,
    pub client_id: String,
    pub auth: Value,
    pub tx: FrameTx,
    pub ready: oneshot::Sender<ReadView>,
}

/// A consistent read-only view of the region's state at one position, for work done
/// off the region thread (a connection's catch-up, an HTTP pull): the store as of its
/// last write, plus the applied writes not written to it yet.
pub struct ReadView {
    snapshot: Snapshot,
    pending: Arc<OverlayWrites>,
    /// The position the view is at.
    pub position: u64,
    schema: Arc<Schema>,
    limits: Limits,
}

impl ReadView {
    /// What a client gets on connecting at this view's position (see
    /// [`warren_core::subscription::welcome`]).
    pub fn welcome(
        &self,
        client_id: &str,
        auth: &Value,
        cursors: &[(String, u64)],
        outbox_from: u64,
    ) -> Result<(Vec<ServerFrame>, Subscription), Error> {
        let state = Overlay::with_writes(&self.snapshot, (*self.pending).clone());
        welcome(
            &state,
            &self.schema,
            &self.limits,
            self.position,
            client_id,
            auth,
            cursors,
            outbox_from,
        )
    }
}

/// A connection whose welcome is being computed: the outcomes of its client's commits
/// wait here until it joins.
struct Joining {
    tx: FrameTx,
    client_id: String,
    /// The position of the read view its welcome is computed on.
    from: u64,
    outcomes: Vec<Frame>,
}

pub enum RegionMsg {
    /// Durable log entries with their positions, in order (the embedded log).
    Batch(Vec<(u64, LogEntry)>),
    /// A batch of the shared log of a deployment of many regions, delivered at
    /// `revision`: the region checks its chain and numbers its entries.
    Shared {
        revision: i64,
        record: BatchRecord,
    },
    /// Another region published its digest at a batch end.
    PeerState {
        region: String,
        state: RegionState,
    },
    /// The source of the schema in force (after everything queued before).
    SchemaSource(oneshot::Sender<String>),
    /// A consistent view of the whole state at the last applied batch end, for a
    /// snapshot stream.
    Snapshot(oneshot::Sender<Result<SnapshotSource, Error>>),
    /// Stop serving: close every connection with `code` and end with that error.
    Fail {
        code: &'static str,
        message: String,
    },
    /// Close every connection with `code`, and go on (clients should go elsewhere).
    CloseAll {
        code: &'static str,
        message: String,
    },
    Connect(Connect),
    /// A joining connection's welcome, computed on the read view at `at`.
    Join {
        conn: u64,
        at: u64,
        welcome: Result<(Vec<ServerFrame>, Subscription), Error>,
    },
    Disconnect {
        conn: u64,
    },
    /// An HTTP client waits for the outcome of (client, seq).
    Wait {
        client_id: String,
        seq: u64,
        reply: oneshot::Sender<CommitResult>,
    },
    /// A read view of the current state (an HTTP pull computes on it).
    View {
        reply: oneshot::Sender<ReadView>,
    },
    /// Stop after what is queued; make the store durable.
    Stop,
}

/// A consistent view of a region's store for a snapshot, with what it holds.
pub struct SnapshotSource {
    pub view: Snapshot,
    pub position: u64,
    pub digest: [u8; 32],
    /// The shared log's revision of the last batch in it (0 in the embedded mode).
    pub revision: i64,
}

/// Why a region stopped: a stable code and a message. `Engine` errors are the store
/// failing (`STORAGE_ERROR`, `CORRUPT`).
#[derive(Debug, Clone)]
pub enum RegionError {
    Engine(Error),
    Stopped { code: &'static str, message: String },
}

impl RegionError {
    pub fn code(&self) -> &str {
        match self {
            RegionError::Engine(e) => e.code.as_str(),
            RegionError::Stopped { code, .. } => code,
        }
    }
}

impl std::fmt::Display for RegionError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RegionError::Engine(e) => write!(f, "{}: {e}", e.code),
            RegionError::Stopped { code, message } => write!(f, "{code}: {message}"),
        }
    }
}

impl std::error::Error for RegionError {}

impl From<Error> for RegionError {
    fn from(e: Error) -> Self {
        RegionError::Engine(e)
    }
}

/// Stable codes of a region that stops (and closes its connections with them).
pub mod stop_codes {
    /// This region's digest differs from another region's at the same position.
    pub const REGION_DIVERGED: &str = "REGION_DIVERGED";
    /// A region's batches did not arrive exactly once and in order.
    pub const LOG_GAP: &str = "LOG_GAP";
    /// A batch of the shared log does not decode.
    pub const LOG_CORRUPT: &str = "LOG_CORRUPT";
}

/// The latest batch end a region applied: what it publishes for comparison.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BatchEnd {
    pub revision: i64,
    pub position: u64,
    pub digest: [u8; 32],
}

/// How many batch ends a region remembers to compare with other regions' digests.
const RING: usize = 65_536;

/// The region's part in a deployment of many regions.
pub struct SharedRegion {
    /// This region's name.
    pub name: String,
    /// Each region's chain, as applied.
    chain: Chain,
    /// The revision of the last batch applied.
    revision: i64,
    /// Digests at the last batch ends, oldest first.
    ring: VecDeque<(u64, [u8; 32])>,
    /// Publications of other regions at positions this region has not reached.
    future: BTreeMap<u64, Vec<(String, [u8; 32])>>,
    /// The latest batch end, read by the publisher.
    pub latest: Arc<Mutex<BatchEnd>>,
    /// Test hook (debug builds, `WARREN_TEST_SKEW_DIGEST_AT`): from this position on,
    /// the region believes (and publishes) a wrong digest.
    skew_at: Option<u64>,
}

impl SharedRegion {
    pub fn new(name: &str) -> SharedRegion {
        #[cfg(debug_assertions)]
        let skew_at = std::env::var("WARREN_TEST_SKEW_DIGEST_AT")
            .ok()
            .and_then(|v| v.parse().ok());
        #[cfg(not(debug_assertions))]
        let skew_at = None;
        SharedRegion {
            name: name.to_owned(),
            chain: Chain::default(),
            revision: 0,
            ring: VecDeque::new(),
            future: BTreeMap::new(),
            latest: Arc::new(Mutex::new(BatchEnd::default())),
            skew_at,
        }
    }
}

/// In a deployment of many regions, the revision of the shared log's last batch
/// applied (u64 big-endian), in the same store transaction as the state it produced.
pub const META_REVISION: &[u8] = b"Mrevision";
/// In a deployment of many regions, each region's chain as applied ([`Chain::encode`]).
pub const META_CHAIN: &[u8] = b"Mchain";

/// The revision of the shared log's last batch a store holds (0: none).
pub fn stored_revision(store: &dyn Storage) -> Result<i64, Error> {
    Ok(match store.get(META_REVISION)? {
        Some(b) => u64::from_be_bytes(
            b.as_slice()
                .try_into()
                .map_err(|_| Error::new(warren_core::ErrorCode::Corrupt, "bad Mrevision"))?,
        ) as i64,
        None => 0,
    })
}

/// Each region's chain, as a store holds it.
pub fn stored_chain(store: &dyn Storage) -> Result<Chain, Error> {
    match store.get(META_CHAIN)? {
        Some(b) => Chain::decode(&b).map_err(|m| Error::new(warren_core::ErrorCode::Corrupt, m)),
        None => Ok(Chain::default()),
    }
}

/// Which connections an entry's writes can concern, so that an entry visits only
/// those instead of every connection.
///
/// Every connection has a read-rule answer for every (partition, collection) written
/// before: its welcome answers all of them, and the first write to a new pair visits
/// every connection. So an entry writing only such `known` pairs concerns only the
/// connections holding a partition it writes (effects) and those whose rules read
/// documents (revocation). The sets may hold connections that are gone or no longer
/// hold the partition: they are looked up and skipped.
#[derive(Default)]
struct Index {
    known: HashMap<String, HashSet<String>>,
    holders: HashMap<String, BTreeSet<u64>>,
    watchers: BTreeSet<u64>,
}

impl Index {
    fn known(&self, partition: &str, collection: &str) -> bool {
        self.known
            .get(partition)
            .is_some_and(|cs| cs.contains(collection))
    }

    /// Notes what `conn` holds and whether its rules read documents.
    fn add(&mut self, id: u64, conn: &Conn) {
        for p in conn.sub.held() {
            match self.holders.get_mut(p) {
                Some(ids) => {
                    ids.insert(id);
                }
                None => {
                    self.holders.insert(p.clone(), BTreeSet::from([id]));
                }
            }
        }
        if conn.sub.watches_documents() {
            self.watchers.insert(id);
        }
    }

    fn forget(&mut self, id: u64, conn: &Conn) {
        for p in conn.sub.held() {
            if let Some(ids) = self.holders.get_mut(p) {
                ids.remove(&id);
                if ids.is_empty() {
                    self.holders.remove(p);
                }
            }
        }
        self.watchers.remove(&id);
    }
}

struct Conn {
    tx: FrameTx,
    sub: Subscription,
}

/// The most log entries applied in one go when batches queue up.
const MAX_APPLY: usize = 4096;

/// Applied batches are written to the store together, every this many batches (or
/// when they hold [`STORE_WRITE_KEYS`] keys), and before anything else reads the store.
/// The log is the truth: a crash loses at most what the store would lose anyway
/// between its durable commits, and the store catches up from the log.
const STORE_WRITE_EVERY: u32 = 16;
const STORE_WRITE_KEYS: usize = 4096;

/// Frames are handed to connections after this many entries (and at the end of a
/// batch).
const FLUSH_EVERY: usize = 32;

/// An encoded frame.
type Frame = Arc<Vec<u8>>;

pub struct Region {
    store: RedbStore,
    schema: Arc<Schema>,
    limits: Limits,
    metrics: Arc<Metrics>,
    conns: BTreeMap<u64, Conn>,
    by_client: BTreeMap<String, u64>,
    waiters: BTreeMap<(String, u64), Vec<oneshot::Sender<CommitResult>>>,
    position: u64,
    /// Applied writes not yet written to the store (see [`STORE_WRITE_EVERY`]); shared
    /// with read views, copied only if one still holds it when the next batch comes.
    pending: Arc<OverlayWrites>,
    /// Batches applied into `pending` since the last store write.
    pending_batches: u32,
    index: Index,
    /// Connections whose welcome is being computed off the region thread.
    joining: BTreeMap<u64, Joining>,
    /// The committed writes of the entries applied since the oldest joining
    /// connection's read view (empty when none is joining), to bring its welcome up to
    /// date when it joins.
    window: VecDeque<(u64, Vec<Write>)>,
    /// The task that hands frames to connections, when the region runs next to a
    /// tokio runtime (see [`spawn`]); without it the region hands them over itself.
    dispatch: Option<Dispatch>,
    /// In a deployment of many regions: chains, digests, comparisons.
    shared: Option<SharedRegion>,
    /// Tells waiting clients (the Welcome barrier) which revision is applied.
    applied_tx: Option<tokio::sync::watch::Sender<i64>>,
}

/// Frames for the dispatcher task, in order.
type Dispatch = tokio::sync::mpsc::UnboundedSender<Vec<(FrameTx, Frame)>>;

/// Hands frames to their connections' queues. Waking a connection's writer from the
/// region thread costs a system call and usually a context switch (the writer's worker
/// thread takes the CPU from the region); from a task on the runtime it is a push onto
/// a run queue. So the region wakes this task once per flush, and it wakes the writers.
/// A frame a queue does not take overflows it: its writer ends the connection with
/// `TOO_SLOW` and the session tells the region (`Disconnect`).
async fn dispatch(mut rx: tokio::sync::mpsc::UnboundedReceiver<Vec<(FrameTx, Frame)>>) {
    while let Some(frames) = rx.recv().await {
        for (tx, frame) in frames {
            let _ = tx.try_send(frame);
        }
    }
}

/// Sends a frame; `false` when the connection is gone or too slow (drop it).
fn send(tx: &FrameTx, metrics: &Metrics, frame: &ServerFrame) -> bool {
    Metrics::add(&metrics.frames_out, 1);
    tx.try_send(Arc::new(frame.encode())).is_ok()
}

impl Region {
    /// A region on its embedded log. `schema` is the schema in force when the store
    /// records none yet (a new store, or one made before schemas were recorded): it is
    /// recorded, so that a later change is a log entry, never a silent switch.
    pub fn new(
        mut store: RedbStore,
        schema: Arc<Schema>,
        limits: Limits,
        metrics: Arc<Metrics>,
    ) -> Result<Region, Error> {
        let schema = match log_entry::schema_source(&store)? {
            Some(src) if src == schema.source() => schema,
            Some(src) => Arc::new(Schema::parse(&src)?),
            None => {
                store.apply(log_entry::initial_schema_batch(schema.source()))?;
                schema
            }
        };
        Region::with(store, schema, limits, metrics, None)
    }

    /// A region of a deployment of many regions: its schema is the one its store
    /// records (none before the shared log's first schema entry is applied), and it
    /// applies the shared log's batches.
    pub fn new_shared(
        store: RedbStore,
        limits: Limits,
        metrics: Arc<Metrics>,
        mut shared: SharedRegion,
    ) -> Result<Region, Error> {
        let schema = Arc::new(match log_entry::schema_source(&store)? {
            Some(src) => Schema::parse(&src)?,
            None => Schema::parse("")?,
        });
        shared.chain = stored_chain(&store)?;
        shared.revision = stored_revision(&store)?;
        metrics
            .region
            .applied_revision
            .store(shared.revision, Ordering::Relaxed);
        metrics
            .region
            .durable_revision
            .store(shared.revision, Ordering::Relaxed);
        let mut r = Region::with(store, schema, limits, metrics, Some(shared))?;
        let position = r.position;
        let digest = r.digest()?;
        if let Some(sh) = &mut r.shared {
            *sh.latest.lock().expect("latest lock") = BatchEnd {
                revision: sh.revision,
                position,
                digest,
            };
        }
        Ok(r)
    }

    fn with(
        store: RedbStore,
        schema: Arc<Schema>,
        limits: Limits,
        metrics: Arc<Metrics>,
        shared: Option<SharedRegion>,
    ) -> Result<Region, Error> {
        let position = exec::position(&store)?;
        metrics.position.store(position, Ordering::Relaxed);
        Ok(Region {
            store,
            schema,
            limits,
            metrics,
            conns: BTreeMap::new(),
            by_client: BTreeMap::new(),
            waiters: BTreeMap::new(),
            position,
            pending: Arc::new(OverlayWrites::new()),
            pending_batches: 0,
            index: Index::default(),
            joining: BTreeMap::new(),
            window: VecDeque::new(),
            dispatch: None,
            shared,
            applied_tx: None,
        })
    }

    /// Tells `tx` the revision of every batch applied (for the Welcome barrier).
    pub fn on_applied(&mut self, tx: tokio::sync::watch::Sender<i64>) {
        if let Some(sh) = &self.shared {
            tx.send_replace(sh.revision);
        }
        self.applied_tx = Some(tx);
    }

    /// The revision of the shared log's last batch applied (0 in the embedded mode).
    pub fn revision(&self) -> i64 {
        self.shared.as_ref().map_or(0, |s| s.revision)
    }

    /// The latest batch end applied (a region of many; the default otherwise).
    pub fn latest(&self) -> Arc<Mutex<BatchEnd>> {
        self.shared
            .as_ref()
            .map(|s| s.latest.clone())
            .unwrap_or_default()
    }

    /// The schema in force.
    pub fn schema(&self) -> &Arc<Schema> {
        &self.schema
    }

    /// The last applied position.
    pub fn position(&self) -> u64 {
        self.position
    }

    /// The state digest.
    pub fn digest(&self) -> Result<[u8; 32], Error> {
        exec::digest(&Overlay::with_writes(&self.store, (*self.pending).clone()))
    }

    /// The applied writes not in the store yet, to own (copied only if a read view
    /// still shares them).
    fn take_pending(&mut self) -> OverlayWrites {
        let p = std::mem::take(&mut self.pending);
        Arc::try_unwrap(p).unwrap_or_else(|shared| (*shared).clone())
    }

    /// Runs `f` on the current state (the store and the writes not in it yet).
    fn with_state<R>(&mut self, f: impl FnOnce(&dyn Storage) -> R) -> R {
        let writes = self.take_pending();
        let state = Overlay::with_writes(&self.store, writes);
        let r = f(&state);
        self.pending = Arc::new(state.into_writes());
        r
    }

    /// A read view of the current state.
    fn view(&self) -> Result<ReadView, Error> {
        Ok(ReadView {
            snapshot: self.store.snapshot()?,
            pending: self.pending.clone(),
            position: self.position,
            schema: self.schema.clone(),
            limits: self.limits.clone(),
        })
    }

    /// Writes the applied writes not in the store yet into it (one transaction).
    fn write_pending(&mut self) -> Result<(), Error> {
        self.pending_batches = 0;
        if self.pending.is_empty() {
            return Ok(());
        }
        let writes = self.take_pending();
        let batch = Overlay::with_writes(&self.store, writes).take_batch();
        store_apply(&mut self.store, &self.metrics, self.shared.is_some(), batch)
    }

    /// Runs until `Stop` or until every sender is gone. An `Err` is fatal: the store
    /// failed, or (in a deployment of many regions) the log or another region's digest
    /// says this region must not serve; every connection is closed with its code.
    pub fn run(mut self, rx: Receiver<RegionMsg>) -> Result<(), RegionError> {
        let r = self.serve(rx);
        match &r {
            Ok(()) => self.close_all(codes::SHUTTING_DOWN, "the server is stopping"),
            Err(RegionError::Stopped { code, message }) => {
                tracing::error!(code, "{message}");
                // Clients learn that they must go elsewhere; a divergence by its name.
                let client_code = if *code == stop_codes::REGION_DIVERGED {
                    codes::REGION_DIVERGED
                } else {
                    codes::REGION_UNAVAILABLE
                };
                self.close_all(
                    client_code,
                    &format!("this region stopped ({code}); connect to another region"),
                )
            }
            Err(RegionError::Engine(e)) => {
                tracing::error!(code = e.code.as_str(), "the region's store failed: {e}");
                self.close_all(codes::SHUTTING_DOWN, "the server is stopping")
            }
        }
        let synced = self
            .write_pending()
            .and_then(|_| self.store.sync())
            .map_err(RegionError::from);
        if synced.is_ok() && self.shared.is_some() {
            let durable = stored_revision(&self.store).unwrap_or(0);
            self.metrics
                .region
                .durable_revision
                .store(durable, Ordering::Relaxed);
        }
        r.and(synced)
    }

    fn serve(&mut self, rx: Receiver<RegionMsg>) -> Result<(), RegionError> {
        // A message taken from the queue while gathering batches, handled next.
        let mut next: Option<RegionMsg> = None;
        while let Some(msg) = next.take().or_else(|| rx.recv().ok()) {
            match msg {
                RegionMsg::Batch(entries) => {
                    // Every batch already queued joins this one: one store transaction
                    // for all of them. Messages keep their order.
                    let mut batches = vec![Incoming::File(entries)];
                    next = gather(&rx, &mut batches);
                    self.apply_batches(batches)?
                }
                RegionMsg::Shared { revision, record } => {
                    let mut batches = vec![Incoming::Shared { revision, record }];
                    next = gather(&rx, &mut batches);
                    self.apply_batches(batches)?
                }
                RegionMsg::PeerState { region, state } => self.compare(&region, &state)?,
                RegionMsg::SchemaSource(reply) => {
                    let _ = reply.send(self.schema.source().to_owned());
                }
                RegionMsg::Snapshot(reply) => {
                    // The whole state in the store, then a read view of it.
                    let r = self.write_pending().and_then(|_| {
                        Ok(SnapshotSource {
                            view: self.store.snapshot()?,
                            position: self.position,
                            digest: exec::digest(&self.store)?,
                            revision: self.revision(),
                        })
                    });
                    let _ = reply.send(r);
                }
                RegionMsg::Fail { code, message } => {
                    return Err(RegionError::Stopped { code, message })
                }
                RegionMsg::CloseAll { code, message } => self.close_all(code, &message),
                RegionMsg::Connect(c) => self.connect(c)?,
                RegionMsg::Join { conn, at, welcome } => self.join(conn, at, welcome?)?,
                RegionMsg::Disconnect { conn } => {
                    if let Some(j) = self.joining.remove(&conn) {
                        if self.by_client.get(&j.client_id) == Some(&conn) {
                            self.by_client.remove(&j.client_id);
                        }
                        self.trim_window();
                    }
                    if let Some(c) = self.conns.remove(&conn) {
                        self.index.forget(conn, &c);
                        if self.by_client.get(c.sub.client_id()) == Some(&conn) {
                            self.by_client.remove(c.sub.client_id());
                        }
                        self.metrics
                            .connections
                            .store(self.conns.len() as u64, Ordering::Relaxed);
                    }
                }
                RegionMsg::Wait {
                    client_id,
                    seq,
                    reply,
                } => {
                    // Already settled: answer from the kept outcomes.
                    let kept = self.with_state(|state| -> Result<_, Error> {
                        if seq <= exec::applied_seq(state, &client_id)? {
                            Ok(Some(kept_result(exec::kept_outcome_of(
                                state, &client_id, seq,
                            )?)))
                        } else {
                            Ok(None)
                        }
                    })?;
                    if let Some(r) = kept {
                        let _ = reply.send(r);
                    } else {
                        self.waiters
                            .entry((client_id, seq))
                            .or_default()
                            .push(reply);
                    }
                }
                RegionMsg::View { reply } => {
                    let _ = reply.send(self.view()?);
                }
                RegionMsg::Stop => return Ok(()),
            }
        }
        Ok(())
    }

    /// Sends a frame after every frame handed to the dispatcher before it.
    fn send_after(&self, tx: &FrameTx, frame: &ServerFrame) {
        Metrics::add(&self.metrics.frames_out, 1);
        let f = Arc::new(frame.encode());
        match &self.dispatch {
            Some(d) => {
                if let Err(e) = d.send(vec![(tx.clone(), f)]) {
                    for (tx, f) in e.0 {
                        let _ = tx.try_send(f);
                    }
                }
            }
            None => {
                let _ = tx.try_send(f);
            }
        }
    }

    fn close_all(&mut self, code: &str, message: &str) {
        close_conns(
            &mut self.conns,
            &mut self.by_client,
            &mut self.index,
            &mut self.joining,
            &self.metrics,
            &self.dispatch,
            code,
            message,
        );
        self.window.clear();
    }

    /// Registers a joining connection and hands its session a read view to compute
    /// the welcome on. One connection per client id: a new one takes over (the old
    /// one is closed).
    fn connect(&mut self, c: Connect) -> Result<(), Error> {
        if let Some(old) = self.by_client.insert(c.client_id.clone(), c.conn) {
            let tx = match (self.conns.remove(&old), self.joining.remove(&old)) {
                (Some(o), _) => {
                    self.index.forget(old, &o);
                    Some(o.tx)
                }
                (None, Some(j)) => Some(j.tx),
                (None, None) => None,
            };
            if let Some(tx) = tx {
                self.send_after(
                    &tx,
                    &ServerFrame::Error {
                        code: codes::BAD_CLIENT_ID.into(),
                        message: "another connection took over this client id".into(),
                    },
                );
            }
        }
        let view = self.view()?;
        self.joining.insert(
            c.conn,
            Joining {
                tx: c.tx,
                client_id: c.client_id,
                from: view.position,
                outcomes: Vec::new(),
            },
        );
        let _ = c.ready.send(view);
        Ok(())
    }

    /// A joining connection's welcome (computed at `at`) arrived: brings it up to the
    /// current position with the entries applied since, sends it all, and registers
    /// the connection.
    fn join(
        &mut self,
        conn: u64,
        at: u64,
        (frames, mut sub): (Vec<ServerFrame>, Subscription),
    ) -> Result<(), Error> {
        let Some(j) = self.joining.remove(&conn) else {
            return Ok(()); // gone, or taken over, meanwhile
        };
        let mut frames: Vec<Frame> = frames.iter().map(|f| Arc::new(f.encode())).collect();
        if at < self.position {
            let writes = self.take_pending();
            let window: Vec<(u64, &[Write])> = self
                .window
                .iter()
                .filter(|(pos, _)| *pos > at)
                .map(|(pos, w)| (*pos, w.as_slice()))
                .collect();
            let state = Overlay::with_writes(&self.store, writes);
            let r = sub.advance(
                &state,
                &self.schema,
                &self.limits,
                self.position,
                &window,
                &mut |f| frames.push(Arc::new(f.encode())),
            );
            self.pending = Arc::new(state.into_writes());
            r?;
        }
        frames.extend(j.outcomes);
        self.trim_window();
        // Everything the welcome says must fit the connection's queue, or the client
        // would see a gap; if it does not, nothing is registered (the queue overflowed:
        // its writer ends the connection with TOO_SLOW).
        for f in frames {
            Metrics::add(&self.metrics.frames_out, 1);
            if j.tx.try_send(f).is_err() {
                if self.by_client.get(&j.client_id) == Some(&conn) {
                    self.by_client.remove(&j.client_id);
                }
                return Ok(());
            }
        }
        let conn_state = Conn { tx: j.tx, sub };
        self.index.add(conn, &conn_state);
        self.conns.insert(conn, conn_state);
        self.metrics
            .connections
            .store(self.conns.len() as u64, Ordering::Relaxed);
        Ok(())
    }

    /// Forgets the window's entries no joining connection needs.
    fn trim_window(&mut self) {
        match self.joining.values().map(|j| j.from).min() {
            None => self.window.clear(),
            Some(from) => {
                while self.window.front().is_some_and(|(pos, _)| *pos <= from) {
                    self.window.pop_front();
                }
            }
        }
    }

    /// Compares another region's digest at a position with this region's.
    fn compare(&mut self, peer: &str, state: &RegionState) -> Result<(), RegionError> {
        let position = self.position;
        let Some(sh) = &mut self.shared else {
            return Ok(());
        };
        if peer == sh.name {
            return Ok(());
        }
        if state.position > position {
            // Not reached yet (it arrives after the batches it covers, so this happens
            // only while a region catches up from a snapshot): compare there.
            sh.future
                .entry(state.position)
                .or_default()
                .push((peer.to_owned(), state.digest));
            return Ok(());
        }
        let mine = sh
            .ring
            .iter()
            .rev()
            .find(|(p, _)| *p == state.position)
            .map(|(_, d)| *d);
        match mine {
            Some(d) => check_digest(
                &self.metrics,
                &sh.name,
                peer,
                state.position,
                &d,
                &state.digest,
            ),
            // Before this region's memory (or its snapshot): nothing to compare.
            None => Ok(()),
        }
    }

    fn apply_batches(&mut self, batches: Vec<Incoming>) -> Result<(), RegionError> {
        let started = Instant::now();
        let Region {
            store,
            schema,
            limits,
            metrics,
            conns,
            by_client,
            waiters,
            position,
            pending,
            pending_batches,
            index,
            joining,
            window,
            dispatch,
            shared,
            applied_tx,
        } = self;
        let taken = std::mem::take(pending);
        let mut overlay = Overlay::with_writes(
            &*store,
            Arc::try_unwrap(taken).unwrap_or_else(|shared| (*shared).clone()),
        );
        // Frames for connections, queued in order and handed over every FLUSH_EVERY
        // entries: one wake-up of a connection's writer carries many frames.
        let mut out: Vec<(u64, Frame)> = Vec::new();
        let mut since_flush = 0;
        for batch in batches {
            let (entries, end) = match batch {
                Incoming::File(entries) => (entries, None),
                Incoming::Shared { revision, record } => {
                    let sh = shared
                        .as_mut()
                        .expect("shared batches reach only a shared region");
                    if revision <= sh.revision {
                        continue; // applied before (a watch resumed from an older point)
                    }
                    sh.chain
                        .check(revision, &record)
                        .map_err(|e| RegionError::Stopped {
                            code: stop_codes::LOG_GAP,
                            message: e.to_string(),
                        })?;
                    let mut entries = Vec::with_capacity(record.entries.len());
                    for (i, bytes) in record.entries.iter().enumerate() {
                        let e = LogEntry::decode(bytes).map_err(|e| RegionError::Stopped {
                            code: stop_codes::LOG_CORRUPT,
                            message: format!(
                                "entry {i} of region {}'s batch {} at revision {revision} does not decode: {e}",
                                record.region, record.batch_seq
                            ),
                        })?;
                        entries.push((*position + 1 + i as u64, e));
                    }
                    (entries, Some(revision))
                }
            };
            for (pos, entry) in entries {
                if pos <= *position {
                    continue; // replayed from the log and already in the store
                }
                let (b, applied) = log_entry::entry_batch(&overlay, schema, entry, pos, limits)?;
                overlay.apply(b)?;
                *position = pos;
                let (commit, outcome) = match applied {
                    Applied::Commit { commit, outcome } => (commit, outcome),
                    Applied::Schema(SchemaApplied::Switched(new)) => {
                        tracing::info!(
                            position = pos,
                            from = schema.version(),
                            to = new.version(),
                            "schema changed"
                        );
                        *schema = new;
                        // Every client learns the new schema in a new welcome (and
                        // re-runs its pending commits under it): what it was sent
                        // before this position goes first. Welcomes being computed on
                        // the old schema are dropped too.
                        flush(&mut out, conns, by_client, index, metrics, dispatch);
                        since_flush = 0;
                        close_conns(
                            conns,
                            by_client,
                            index,
                            joining,
                            metrics,
                            dispatch,
                            codes::SCHEMA_CHANGED,
                            "the schema changed; reconnect for the new one",
                        );
                        window.clear();
                        continue;
                    }
                    Applied::Schema(SchemaApplied::Refused { code, message }) => {
                        tracing::warn!(
                            position = pos,
                            code = code.as_str(),
                            "a schema change was refused: {message}"
                        );
                        continue;
                    }
                };
                match &outcome {
                    Outcome::Committed { .. } => Metrics::add(&metrics.commits_committed, 1),
                    Outcome::Rejected { code, .. } => metrics.rejected(code.as_str()),
                    Outcome::Skipped(_) => Metrics::add(&metrics.commits_duplicate, 1),
                }
                let writes: &[Write] = match &outcome {
                    Outcome::Committed { writes, .. } => writes,
                    _ => &[],
                };
                if !joining.is_empty() && !writes.is_empty() {
                    window.push_back((pos, writes.to_vec()));
                }
                if writes
                    .iter()
                    .all(|w| index.known(&w.partition, &w.collection))
                {
                    let mut visit = index.watchers.clone();
                    for w in writes {
                        if let Some(ids) = index.holders.get(&w.partition) {
                            visit.extend(ids);
                        }
                    }
                    for id in visit {
                        if let Some(conn) = conns.get_mut(&id) {
                            conn.sub
                                .fanout(&overlay, schema, limits, pos, writes, &mut |f| {
                                    out.push((id, Arc::new(f.encode())))
                                })?;
                            index.add(id, conn);
                        }
                    }
                } else {
                    for (id, conn) in conns.iter_mut() {
                        conn.sub
                            .fanout(&overlay, schema, limits, pos, writes, &mut |f| {
                                out.push((*id, Arc::new(f.encode())))
                            })?;
                        index.add(*id, conn);
                    }
                    for w in writes {
                        index
                            .known
                            .entry(w.partition.clone())
                            .or_default()
                            .insert(w.collection.clone());
                    }
                }
                let kept = match &outcome {
                    Outcome::Skipped(Skip::Duplicate) => {
                        exec::kept_outcome_of(&overlay, &commit.client_id, commit.client_seq)?
                    }
                    _ => None,
                };
                let result = result_of(outcome, pos, kept);
                // Those waiting over HTTP for this commit (rarely any) get copies; the
                // outcome frame takes the result itself. (Both are handed over before
                // the frames are flushed, as before.)
                if !waiters.is_empty() {
                    if let Some(ws) = waiters.remove(&(commit.client_id.clone(), commit.client_seq))
                    {
                        for w in ws {
                            let _ = w.send(result.clone());
                        }
                    }
                }
                if let Some(&conn_id) = by_client.get(&commit.client_id) {
                    let frame = ServerFrame::Outcome {
                        seq: commit.client_seq,
                        result,
                    };
                    let frame = Arc::new(frame.encode());
                    match joining.get_mut(&conn_id) {
                        // It joins with its welcome.
                        Some(j) => j.outcomes.push(frame),
                        None => out.push((conn_id, frame)),
                    }
                }
                since_flush += 1;
                if since_flush >= FLUSH_EVERY {
                    flush(&mut out, conns, by_client, index, metrics, dispatch);
                    since_flush = 0;
                }
            }
            // A batch end of the shared log: where it leaves each region's chain goes
            // in the same store transaction as the state; the digest there is kept to
            // compare with other regions.
            if let (Some(revision), Some(sh)) = (end, shared.as_mut()) {
                sh.revision = revision;
                overlay.write((
                    META_REVISION.to_vec(),
                    Some((revision as u64).to_be_bytes().to_vec()),
                ));
                overlay.write((META_CHAIN.to_vec(), Some(sh.chain.encode())));
                let mut digest = exec::digest(&overlay)?;
                if sh.skew_at.is_some_and(|p| *position >= p) {
                    digest[0] ^= 0xff;
                }
                if sh.ring.back().map(|(p, _)| *p) != Some(*position) {
                    if sh.ring.len() >= RING {
                        sh.ring.pop_front();
                    }
                    sh.ring.push_back((*position, digest));
                } else if let Some(last) = sh.ring.back_mut() {
                    last.1 = digest;
                }
                *sh.latest.lock().expect("latest lock") = BatchEnd {
                    revision,
                    position: *position,
                    digest,
                };
                // Publications of other regions that waited for this position.
                while let Some(entry) = sh.future.first_entry() {
                    if *entry.key() > *position {
                        break;
                    }
                    let (p, peers) = entry.remove_entry();
                    if p == *position {
                        for (peer, d) in peers {
                            check_digest(metrics, &sh.name, &peer, p, &digest, &d)?;
                        }
                    }
                }
            }
        }
        // The frames go out before the store write: the entries are durable in the log.
        flush(&mut out, conns, by_client, index, metrics, dispatch);
        // The store takes the writes every STORE_WRITE_EVERY batches, or sooner when
        // they pile up: a store transaction costs about as much for 1 batch as for 16.
        *pending_batches += 1;
        let writes = overlay.into_writes();
        if *pending_batches >= STORE_WRITE_EVERY || writes.len() >= STORE_WRITE_KEYS {
            *pending_batches = 0;
            let batch = Overlay::with_writes(&*store, writes).take_batch();
            store_apply(store, metrics, shared.is_some(), batch)?;
        } else {
            *pending = Arc::new(writes);
        }
        metrics.position.store(*position, Ordering::Relaxed);
        if let Some(sh) = shared {
            metrics
                .region
                .applied_revision
                .store(sh.revision, Ordering::Relaxed);
            if let Some(tx) = applied_tx {
                tx.send_replace(sh.revision);
            }
        }
        metrics
            .connections
            .store(conns.len() as u64, Ordering::Relaxed);
        metrics.batch_applied(started.elapsed());
        Ok(())
    }
}

/// A batch to apply.
enum Incoming {
    File(Vec<(u64, LogEntry)>),
    Shared { revision: i64, record: BatchRecord },
}

/// Takes the batches queued behind the first (up to [`MAX_APPLY`] entries), so they
/// are applied as one; returns the first other message, to handle next.
fn gather(rx: &Receiver<RegionMsg>, batches: &mut Vec<Incoming>) -> Option<RegionMsg> {
    let mut n: usize = batches
        .iter()
        .map(|b| match b {
            Incoming::File(e) => e.len(),
            Incoming::Shared { record, .. } => record.entries.len().max(1),
        })
        .sum();
    while n < MAX_APPLY {
        match rx.try_recv() {
            Ok(RegionMsg::Batch(more)) => {
                n += more.len();
                batches.push(Incoming::File(more));
            }
            Ok(RegionMsg::Shared { revision, record }) => {
                n += record.entries.len().max(1);
                batches.push(Incoming::Shared { revision, record });
            }
            Ok(other) => return Some(other),
            Err(_) => break,
        }
    }
    None
}

/// Writes a batch to the store; in a deployment of many regions, notes the revision
/// the store then holds durably.
fn store_apply(
    store: &mut RedbStore,
    metrics: &Metrics,
    shared: bool,
    batch: Batch,
) -> Result<(), Error> {
    let durable = store.next_write_durable();
    store.apply(batch)?;
    if durable && shared {
        metrics
            .region
            .durable_revision
            .store(stored_revision(store)?, Ordering::Relaxed);
    }
    Ok(())
}

/// One digest comparison: equal, or the region stops (`REGION_DIVERGED`).
fn check_digest(
    metrics: &Metrics,
    me: &str,
    peer: &str,
    position: u64,
    mine: &[u8; 32],
    theirs: &[u8; 32],
) -> Result<(), RegionError> {
    let equal = mine == theirs;
    let r = &metrics.region;
    Metrics::add(&r.comparisons, 1);
    *r.last_comparison.lock().expect("status lock") = Some(Comparison {
        position,
        peer: peer.to_owned(),
        equal,
        at_ms: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as i64)
            .unwrap_or(0),
    });
    if equal {
        return Ok(());
    }
    Metrics::add(&r.mismatches, 1);
    r.diverged.store(true, Ordering::Relaxed);
    *r.diverged_at.lock().expect("status lock") = Some((position, *mine));
    Err(RegionError::Stopped {
        code: stop_codes::REGION_DIVERGED,
        message: format!(
            "region {me} has digest {} at position {position}, region {peer} published {}: the regions applied the same log and disagree",
            warren_core::hex(mine),
            warren_core::hex(theirs)
        ),
    })
}

/// Closes every connection, joined or joining, with `code` (after what was handed
/// over before).
#[allow(clippy::too_many_arguments)]
fn close_conns(
    conns: &mut BTreeMap<u64, Conn>,
    by_client: &mut BTreeMap<String, u64>,
    index: &mut Index,
    joining: &mut BTreeMap<u64, Joining>,
    metrics: &Metrics,
    dispatch: &Option<Dispatch>,
    code: &str,
    message: &str,
) {
    let frame = Arc::new(
        ServerFrame::Error {
            code: code.to_owned(),
            message: message.to_owned(),
        }
        .encode(),
    );
    let frames: Vec<(FrameTx, Frame)> = conns
        .values()
        .map(|c| c.tx.clone())
        .chain(joining.values().map(|j| j.tx.clone()))
        .map(|tx| (tx, frame.clone()))
        .collect();
    Metrics::add(&metrics.frames_out, frames.len() as u64);
    match dispatch {
        Some(d) => {
            if let Err(e) = d.send(frames) {
                for (tx, f) in e.0 {
                    let _ = tx.try_send(f);
                }
            }
        }
        None => {
            for (tx, f) in frames {
                let _ = tx.try_send(f);
            }
        }
    }
    conns.clear();
    joining.clear();
    by_client.clear();
    *index = Index::default();
    metrics.connections.store(0, Ordering::Relaxed);
}

/// Hands queued frames to their connections, in order: through the dispatcher task
/// when there is one. Otherwise a connection whose queue does not take a frame is too
/// slow: it is told (best effort) and forgotten, and the rest of its frames are dropped.
fn flush(
    out: &mut Vec<(u64, Frame)>,
    conns: &mut BTreeMap<u64, Conn>,
    by_client: &mut BTreeMap<String, u64>,
    index: &mut Index,
    metrics: &Metrics,
    dispatch: &Option<Dispatch>,
) {
    if out.is_empty() {
        return;
    }
    if let Some(d) = dispatch {
        let frames: Vec<(FrameTx, Frame)> = out
            .drain(..)
            .filter_map(|(id, f)| Some((conns.get(&id)?.tx.clone(), f)))
            .collect();
        Metrics::add(&metrics.frames_out, frames.len() as u64);
        if let Err(e) = d.send(frames) {
            // The runtime is stopping: hand them over directly.
            for (tx, f) in e.0 {
                let _ = tx.try_send(f);
            }
        }
        return;
    }
    let mut gone: Vec<u64> = Vec::new();
    for (id, frame) in out.drain(..) {
        if gone.contains(&id) {
            continue;
        }
        let Some(c) = conns.get(&id) else {
            continue;
        };
        Metrics::add(&metrics.frames_out, 1);
        if c.tx.try_send(frame).is_err() {
            gone.push(id);
        }
    }
    for id in gone {
        if let Some(c) = conns.remove(&id) {
            index.forget(id, &c);
            // Best effort: a full queue cannot take even this.
            send(
                &c.tx,
                metrics,
                &ServerFrame::Error {
                    code: codes::TOO_SLOW.into(),
                    message: "the connection did not keep up with its frames".into(),
                },
            );
            if by_client.get(c.sub.client_id()) == Some(&id) {
                by_client.remove(c.sub.client_id());
            }
        }
    }
}

/// Starts the region on its own thread, with its dispatcher task on the current tokio
/// runtime if there is one.
pub fn spawn(
    mut region: Region,
    rx: Receiver<RegionMsg>,
) -> std::thread::JoinHandle<Result<(), RegionError>> {
    if let Ok(rt) = tokio::runtime::Handle::try_current() {
        let (tx, frames) = tokio::sync::mpsc::unbounded_channel();
        rt.spawn(dispatch(frames));
        region.dispatch = Some(tx);
    }
    std::thread::Builder::new()
        .name("warren-region".into())
        .spawn(move || region.run(rx))
        .expect("spawn the region thread")
}

/// A handle to send to the region.
pub type RegionTx = Sender<RegionMsg>;
