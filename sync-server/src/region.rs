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
use std::sync::Arc;
use std::time::Instant;

use tokio::sync::oneshot;
use warren_core::eval::Limits;
use warren_core::exec::{self, Commit, Outcome, Skip, Write};
use warren_core::protocol::{codes, CommitResult, ServerFrame};
use warren_core::storage::{Layered, Overlay, OverlayWrites, Storage};
use warren_core::subscription::{kept_result, result_of, welcome, Subscription};
use warren_core::{Error, Schema, Value};

use crate::metrics::Metrics;
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
    /// The state the view reads: the store as of its last write with the applied
    /// writes after it laid over, shared (nothing is copied).
    pub fn state(&self) -> Layered<'_> {
        Layered::new(&self.snapshot, &self.pending)
    }

    /// The schema in force at the view's position.
    pub fn schema(&self) -> &Arc<Schema> {
        &self.schema
    }

    /// What a client gets on connecting at this view's position (see
    /// [`warren_core::subscription::welcome`]).
    pub fn welcome(
        &self,
        client_id: &str,
        auth: &Value,
        cursors: &[(String, u64)],
        outbox_from: u64,
    ) -> Result<(Vec<ServerFrame>, Subscription), Error> {
        let state = self.state();
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
    /// Durable log entries, in order.
    Batch(Vec<(u64, Commit)>),
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

/// What one applied batch changed, published for live queries (GraphQL
/// subscriptions): the document and index keys its commits wrote, and the position
/// after it. Sent only while someone listens (see [`Region::changes`]).
#[derive(Debug)]
pub struct Changes {
    pub position: u64,
    pub keys: Vec<Vec<u8>>,
}

/// How many batches' [`Changes`] wait for a slow listener before it misses some (it is
/// then told so, and must assume everything changed): a bound on what slow live
/// queries can keep in memory.
const CHANGES_BACKLOG: usize = 128;

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
    /// Where each batch's [`Changes`] go.
    changes: tokio::sync::broadcast::Sender<Arc<Changes>>,
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
    pub fn new(
        store: RedbStore,
        schema: Arc<Schema>,
        limits: Limits,
        metrics: Arc<Metrics>,
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
            changes: tokio::sync::broadcast::channel(CHANGES_BACKLOG).0,
        })
    }

    /// The channel each applied batch's [`Changes`] go to (take it before the region
    /// starts; subscribe through it).
    pub fn changes(&self) -> tokio::sync::broadcast::Sender<Arc<Changes>> {
        self.changes.clone()
    }

    /// The last applied position.
    pub fn position(&self) -> u64 {
        self.position
    }

    /// The state digest.
    pub fn digest(&self) -> Result<[u8; 32], Error> {
        exec::digest(&Layered::new(&self.store, &self.pending))
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
        self.store.apply(batch)
    }

    /// Runs until `Stop` or until every sender is gone. An `Err` is fatal: the store
    /// failed, and the server must stop rather than serve a state it cannot trust.
    pub fn run(mut self, rx: Receiver<RegionMsg>) -> Result<(), Error> {
        let r = self.serve(rx);
        self.close_all(codes::SHUTTING_DOWN, "the server is stopping");
        let synced = self.write_pending().and_then(|_| self.store.sync());
        r.and(synced)
    }

    fn serve(&mut self, rx: Receiver<RegionMsg>) -> Result<(), Error> {
        // A message taken from the queue while gathering batches, handled next.
        let mut next: Option<RegionMsg> = None;
        while let Some(msg) = next.take().or_else(|| rx.recv().ok()) {
            match msg {
                RegionMsg::Batch(mut entries) => {
                    // Every batch already queued joins this one: one store transaction
                    // for all of them. Messages keep their order.
                    while entries.len() < MAX_APPLY {
                        match rx.try_recv() {
                            Ok(RegionMsg::Batch(more)) => entries.extend(more),
                            Ok(other) => {
                                next = Some(other);
                                break;
                            }
                            Err(_) => break,
                        }
                    }
                    self.apply_batch(entries)?
                }
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
        let frame = ServerFrame::Error {
            code: code.to_owned(),
            message: message.to_owned(),
        };
        for c in self.conns.values() {
            self.send_after(&c.tx, &frame);
        }
        self.conns.clear();
        self.by_client.clear();
        self.index = Index::default();
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

    fn apply_batch(&mut self, entries: Vec<(u64, Commit)>) -> Result<(), Error> {
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
            changes,
        } = self;
        // The keys live queries watch, collected only while someone listens.
        let mut changed: Option<Vec<Vec<u8>>> = (changes.receiver_count() > 0).then(Vec::new);
        let taken = std::mem::take(pending);
        let mut overlay = Overlay::with_writes(
            &*store,
            Arc::try_unwrap(taken).unwrap_or_else(|shared| (*shared).clone()),
        );
        // Frames for connections, queued in order and handed over every FLUSH_EVERY
        // entries: one wake-up of a connection's writer carries many frames.
        let mut out: Vec<(u64, Frame)> = Vec::new();
        let mut since_flush = 0;
        for (pos, commit) in entries {
            if pos <= *position {
                continue; // replayed from the log and already in the store
            }
            let outcome = exec::execute(&overlay, schema, &commit, pos, limits)?;
            let (b, _) = exec::effects_batch(
                &overlay,
                schema,
                pos,
                &commit.client_id,
                commit.client_seq,
                &outcome,
            )?;
            if let Some(keys) = &mut changed {
                keys.extend(
                    b.ops
                        .iter()
                        .map(|(k, _)| k)
                        .filter(|k| {
                            matches!(
                                k.first(),
                                Some(
                                    &warren_core::keys::SPACE_DOC | &warren_core::keys::SPACE_INDEX
                                )
                            )
                        })
                        .cloned(),
                );
            }
            overlay.apply(b)?;
            *position = pos;
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
            // outcome frame takes the result itself. (Both are handed over before the
            // frames are flushed, as before.)
            if !waiters.is_empty() {
                if let Some(ws) = waiters.remove(&(commit.client_id.clone(), commit.client_seq)) {
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
        // The frames go out before the store write: the entries are durable in the log.
        flush(&mut out, conns, by_client, index, metrics, dispatch);
        // The store takes the writes every STORE_WRITE_EVERY batches, or sooner when
        // they pile up: a store transaction costs about as much for 1 batch as for 16.
        *pending_batches += 1;
        let writes = overlay.into_writes();
        if *pending_batches >= STORE_WRITE_EVERY || writes.len() >= STORE_WRITE_KEYS {
            *pending_batches = 0;
            let batch = Overlay::with_writes(&*store, writes).take_batch();
            store.apply(batch)?;
        } else {
            *pending = Arc::new(writes);
        }
        if let Some(keys) = changed {
            // No listener left is no error: the next batch looks again.
            let _ = changes.send(Arc::new(Changes {
                position: *position,
                keys,
            }));
        }
        metrics.position.store(*position, Ordering::Relaxed);
        metrics
            .connections
            .store(conns.len() as u64, Ordering::Relaxed);
        metrics.batch_applied(started.elapsed());
        Ok(())
    }
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
) -> std::thread::JoinHandle<Result<(), Error>> {
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
