//! The region executor: applies the log in order and serves what each client may read.
//!
//! One thread owns the region's store and every connection's subscriptions, so that a
//! snapshot, the effects after it and a revocation can never race: a connection is
//! registered, snapshotted and then fed effects all in log order, by the same thread.
//!
//! For each log entry it runs the engine (`execute`, then `apply` into an overlay of the
//! batch), then for each connection:
//! - re-evaluates the read rules whose reads the entry's writes touched (a member
//!   removed from the team document the rule reads), and evaluates rules for
//!   (partition, collection) pairs the connection has not seen yet;
//! - sends `Drop` for partitions it may no longer read, `Snapshot` for those it now may,
//!   and `Effects` with the entry's writes to partitions it holds;
//! - sends the entry's `Outcome` to the connection of the client that made it.
//!
//! The batch's writes reach the store as one transaction at the end of the batch.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::Ordering;
use std::sync::mpsc::{Receiver, Sender};
use std::sync::Arc;
use std::time::Instant;

use tokio::sync::{mpsc, oneshot};
use warren_core::eval::{Limits, ReadSet};
use warren_core::exec::{self, Commit, KeptOutcome, Outcome, Skip, Write};
use warren_core::protocol::{codes, CommitResult, ServerFrame, SnapshotDoc};
use warren_core::storage::{Entry, KeyRange, Overlay, Storage};
use warren_core::{keys, Error, Schema, Value};

use crate::metrics::Metrics;
use crate::store::RedbStore;

/// Encoded frames to one connection. Bounded: a client that stops reading is dropped
/// instead of growing the server's memory.
pub type FrameTx = mpsc::Sender<Arc<Vec<u8>>>;

/// A connection asking to sync.
pub struct Connect {
    pub conn: u64,
    pub client_id: String,
    pub auth: Value,
    pub partitions: Vec<(String, u64)>,
    pub outbox_from: u64,
    pub tx: FrameTx,
}

pub enum RegionMsg {
    /// Durable log entries, in order.
    Batch(Vec<(u64, Commit)>),
    Connect(Connect),
    Disconnect {
        conn: u64,
    },
    /// An HTTP client waits for the outcome of (client, seq).
    Wait {
        client_id: String,
        seq: u64,
        reply: oneshot::Sender<CommitResult>,
    },
    /// An HTTP pull: the welcome and snapshots a connection would get.
    Pull {
        auth: Value,
        client_id: String,
        partitions: Vec<(String, u64)>,
        reply: oneshot::Sender<Result<Vec<ServerFrame>, Error>>,
    },
    /// Stop after what is queued; make the store durable.
    Stop,
}

struct Sub {
    allowed: bool,
    reads: ReadSet,
}

struct Conn {
    client_id: String,
    auth: Value,
    tx: FrameTx,
    subs: BTreeMap<(String, String), Sub>,
    held: BTreeSet<String>,
}

pub struct Region {
    store: RedbStore,
    schema: Arc<Schema>,
    limits: Limits,
    metrics: Arc<Metrics>,
    conns: BTreeMap<u64, Conn>,
    by_client: BTreeMap<String, u64>,
    waiters: BTreeMap<(String, u64), Vec<oneshot::Sender<CommitResult>>>,
    position: u64,
}

fn result_of(outcome: &Outcome, position: u64, kept: Option<KeptOutcome>) -> CommitResult {
    match outcome {
        Outcome::Committed { result, .. } => CommitResult::Committed {
            position,
            result: result.clone(),
        },
        Outcome::Rejected { code, message } => CommitResult::Rejected {
            code: code.as_str().to_owned(),
            message: message.clone(),
        },
        Outcome::Skipped(Skip::Duplicate) => kept_result(kept),
        Outcome::Skipped(Skip::OutOfOrder { expected }) => CommitResult::OutOfOrder {
            expected: *expected,
        },
    }
}

fn kept_result(kept: Option<KeptOutcome>) -> CommitResult {
    match kept {
        Some(KeptOutcome::Committed { position, result }) => {
            CommitResult::Committed { position, result }
        }
        Some(KeptOutcome::Rejected { code, message }) => CommitResult::Rejected { code, message },
        None => CommitResult::Duplicate,
    }
}

/// Every entry of a range.
fn scan_all(store: &dyn Storage, range: &KeyRange) -> Result<Vec<Entry>, Error> {
    let mut out = Vec::new();
    let mut r = range.clone();
    loop {
        let page = store.scan(&r, false, 512)?;
        let full = page.len() == 512;
        if let Some((last, _)) = page.last() {
            r = r.after(last);
        }
        out.extend(page);
        if !full {
            return Ok(out);
        }
    }
}

/// Sends a frame; `false` when the connection is gone or too slow (drop it).
fn send(tx: &FrameTx, metrics: &Metrics, frame: &ServerFrame) -> bool {
    Metrics::add(&metrics.frames_out, 1);
    tx.try_send(Arc::new(frame.encode())).is_ok()
}

fn evaluate(
    store: &dyn Storage,
    schema: &Schema,
    limits: &Limits,
    auth: &Value,
    partition: &str,
    collection: &str,
) -> Result<Sub, Error> {
    match exec::read_rule_with_reads(store, schema, collection, partition, auth, limits) {
        Ok((allowed, reads)) => Ok(Sub { allowed, reads }),
        // A rule that cannot be evaluated denies; only a broken store is fatal.
        Err(e) if e.code.is_deterministic() => Ok(Sub {
            allowed: false,
            reads: ReadSet::default(),
        }),
        Err(e) => Err(e),
    }
}

/// The documents of `partition` in the allowed collections, at the store's state.
fn snapshot(
    store: &dyn Storage,
    partition: &str,
    allowed: &BTreeSet<String>,
    position: u64,
) -> Result<ServerFrame, Error> {
    let mut docs = Vec::new();
    for (k, _) in scan_all(store, &KeyRange::prefix(&keys::partition_prefix(partition)))? {
        let (_, coll, id) = keys::parse_partition_key(&k)?;
        if !allowed.contains(&coll) {
            continue;
        }
        if let Some(b) = store.get(&keys::doc_key(&coll, &id))? {
            let d = warren_core::doc::StoredDoc::decode(&b)?;
            docs.push(SnapshotDoc {
                collection: coll,
                id,
                version: d.version,
                data: d.data,
            });
        }
    }
    Ok(ServerFrame::Snapshot {
        partition: partition.to_owned(),
        position,
        docs,
    })
}

fn allowed_colls(subs: &BTreeMap<(String, String), Sub>, partition: &str) -> BTreeSet<String> {
    subs.range((partition.to_owned(), String::new())..)
        .take_while(|((p, _), _)| p == partition)
        .filter(|(_, s)| s.allowed)
        .map(|((_, c), _)| c.clone())
        .collect()
}

/// The frames of a welcome, and the subscriptions and partitions it set up.
type Welcome = (
    Vec<ServerFrame>,
    BTreeMap<(String, String), Sub>,
    BTreeSet<String>,
);

/// What a client gets on connecting: the welcome, then snapshots of the partitions it
/// may read that changed since its cursors, then the kept outcomes of its outbox.
#[allow(clippy::too_many_arguments)]
fn welcome(
    store: &dyn Storage,
    schema: &Schema,
    limits: &Limits,
    position: u64,
    client_id: &str,
    auth: &Value,
    cursors: &[(String, u64)],
    outbox_from: u64,
) -> Result<Welcome, Error> {
    let mut subs = BTreeMap::new();
    let mut versions: BTreeMap<(String, String), u64> = BTreeMap::new();
    for (k, v) in scan_all(store, &KeyRange::prefix(&[keys::SPACE_VERSION]))? {
        let (p, c) = keys::parse_version_key(&k)?;
        let sub = evaluate(store, schema, limits, auth, &p, &c)?;
        let version = u64::from_be_bytes(v.as_slice().try_into().unwrap_or([0; 8]));
        versions.insert((p.clone(), c.clone()), version);
        subs.insert((p, c), sub);
    }
    let held: BTreeSet<String> = subs
        .iter()
        .filter(|(_, s)| s.allowed)
        .map(|((p, _), _)| p.clone())
        .collect();
    let applied = exec::applied_seq(store, client_id)?;
    let mut frames = vec![ServerFrame::Welcome {
        schema_version: schema.version().to_owned(),
        schema_source: schema.source().to_owned(),
        position,
        applied_seq: applied,
        partitions: held.iter().cloned().collect(),
    }];
    let cursor_of: BTreeMap<&str, u64> = cursors.iter().map(|(p, c)| (p.as_str(), *c)).collect();
    for p in &held {
        let allowed = allowed_colls(&subs, p);
        let version = allowed
            .iter()
            .map(|c| versions.get(&(p.clone(), c.clone())).copied().unwrap_or(0))
            .max()
            .unwrap_or(0);
        if version > cursor_of.get(p.as_str()).copied().unwrap_or(0) {
            frames.push(snapshot(store, p, &allowed, position)?);
        }
    }
    if outbox_from > 0 && outbox_from <= applied {
        let from = outbox_from.max(applied.saturating_sub(exec::KEPT_OUTCOMES) + 1);
        for seq in from..=applied {
            frames.push(ServerFrame::Outcome {
                seq,
                result: kept_result(exec::kept_outcome_of(store, client_id, seq)?),
            });
        }
    }
    Ok((frames, subs, held))
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
        })
    }

    /// The last applied position.
    pub fn position(&self) -> u64 {
        self.position
    }

    /// The state digest.
    pub fn digest(&self) -> Result<[u8; 32], Error> {
        exec::digest(&self.store)
    }

    /// Runs until `Stop` or until every sender is gone. An `Err` is fatal: the store
    /// failed, and the server must stop rather than serve a state it cannot trust.
    pub fn run(mut self, rx: Receiver<RegionMsg>) -> Result<(), Error> {
        let r = self.serve(rx);
        self.close_all(codes::SHUTTING_DOWN, "the server is stopping");
        let synced = self.store.sync();
        r.and(synced)
    }

    fn serve(&mut self, rx: Receiver<RegionMsg>) -> Result<(), Error> {
        while let Ok(msg) = rx.recv() {
            match msg {
                RegionMsg::Batch(entries) => self.apply_batch(entries)?,
                RegionMsg::Connect(c) => self.connect(c)?,
                RegionMsg::Disconnect { conn } => {
                    if let Some(c) = self.conns.remove(&conn) {
                        if self.by_client.get(&c.client_id) == Some(&conn) {
                            self.by_client.remove(&c.client_id);
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
                    if seq <= exec::applied_seq(&self.store, &client_id)? {
                        let r = kept_result(exec::kept_outcome_of(&self.store, &client_id, seq)?);
                        let _ = reply.send(r);
                    } else {
                        self.waiters
                            .entry((client_id, seq))
                            .or_default()
                            .push(reply);
                    }
                }
                RegionMsg::Pull {
                    auth,
                    client_id,
                    partitions,
                    reply,
                } => {
                    let r = welcome(
                        &self.store,
                        &self.schema,
                        &self.limits,
                        self.position,
                        &client_id,
                        &auth,
                        &partitions,
                        0,
                    )
                    .map(|(frames, _, _)| frames);
                    if let Err(e) = &r {
                        if !e.code.is_deterministic() {
                            let _ = reply.send(r.clone());
                            return Err(e.clone());
                        }
                    }
                    let _ = reply.send(r);
                }
                RegionMsg::Stop => return Ok(()),
            }
        }
        Ok(())
    }

    fn close_all(&mut self, code: &str, message: &str) {
        let frame = ServerFrame::Error {
            code: code.to_owned(),
            message: message.to_owned(),
        };
        for c in self.conns.values() {
            send(&c.tx, &self.metrics, &frame);
        }
        self.conns.clear();
        self.by_client.clear();
    }

    fn connect(&mut self, c: Connect) -> Result<(), Error> {
        let (frames, subs, held) = welcome(
            &self.store,
            &self.schema,
            &self.limits,
            self.position,
            &c.client_id,
            &c.auth,
            &c.partitions,
            c.outbox_from,
        )?;
        // Everything the welcome says must fit the connection's queue, or the client
        // would see a gap; if it does not, nothing is registered.
        if !frames.iter().all(|f| send(&c.tx, &self.metrics, f)) {
            return Ok(());
        }
        // One connection per client id: a new one takes over (the old one is closed).
        if let Some(old) = self.by_client.insert(c.client_id.clone(), c.conn) {
            if let Some(o) = self.conns.remove(&old) {
                send(
                    &o.tx,
                    &self.metrics,
                    &ServerFrame::Error {
                        code: codes::BAD_CLIENT_ID.into(),
                        message: "another connection took over this client id".into(),
                    },
                );
            }
        }
        self.conns.insert(
            c.conn,
            Conn {
                client_id: c.client_id,
                auth: c.auth,
                tx: c.tx,
                subs,
                held,
            },
        );
        self.metrics
            .connections
            .store(self.conns.len() as u64, Ordering::Relaxed);
        Ok(())
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
        } = self;
        let mut overlay = Overlay::new(&*store);
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
            let mut gone = Vec::new();
            for (id, conn) in conns.iter_mut() {
                if !fanout(&overlay, schema, limits, metrics, conn, pos, writes)? {
                    gone.push(*id);
                }
            }
            let kept = match &outcome {
                Outcome::Skipped(Skip::Duplicate) => {
                    exec::kept_outcome_of(&overlay, &commit.client_id, commit.client_seq)?
                }
                _ => None,
            };
            let result = result_of(&outcome, pos, kept);
            if let Some(conn_id) = by_client.get(&commit.client_id) {
                if let Some(conn) = conns.get(conn_id) {
                    let frame = ServerFrame::Outcome {
                        seq: commit.client_seq,
                        result: result.clone(),
                    };
                    if !send(&conn.tx, metrics, &frame) {
                        gone.push(*conn_id);
                    }
                }
            }
            if let Some(ws) = waiters.remove(&(commit.client_id.clone(), commit.client_seq)) {
                for w in ws {
                    let _ = w.send(result.clone());
                }
            }
            for id in gone {
                if let Some(c) = conns.remove(&id) {
                    // Best effort: a full queue cannot take even this.
                    send(
                        &c.tx,
                        metrics,
                        &ServerFrame::Error {
                            code: codes::TOO_SLOW.into(),
                            message: "the connection did not keep up with its frames".into(),
                        },
                    );
                    if by_client.get(&c.client_id) == Some(&id) {
                        by_client.remove(&c.client_id);
                    }
                }
            }
        }
        let batch = overlay.take_batch();
        drop(overlay);
        store.apply(batch)?;
        metrics.position.store(*position, Ordering::Relaxed);
        metrics
            .connections
            .store(conns.len() as u64, Ordering::Relaxed);
        Metrics::add(&metrics.apply_micros, started.elapsed().as_micros() as u64);
        Ok(())
    }
}

/// Updates one connection for the log entry at `pos`; `false` if it must be dropped.
fn fanout(
    state: &dyn Storage,
    schema: &Schema,
    limits: &Limits,
    metrics: &Metrics,
    conn: &mut Conn,
    pos: u64,
    writes: &[Write],
) -> Result<bool, Error> {
    if writes.is_empty() {
        return Ok(true);
    }
    // Which (partition, collection) answers may have changed.
    let mut recheck: BTreeSet<(String, String)> = BTreeSet::new();
    for w in writes {
        let key = (w.partition.clone(), w.collection.clone());
        if !conn.subs.contains_key(&key) {
            recheck.insert(key);
        }
    }
    for (key, sub) in &conn.subs {
        if !sub.reads.is_empty()
            && writes
                .iter()
                .any(|w| sub.reads.touched_by(&w.collection, &w.id))
        {
            recheck.insert(key.clone());
        }
    }
    let mut changed_partitions: BTreeSet<String> = BTreeSet::new();
    for (p, c) in recheck {
        let before = conn.subs.get(&(p.clone(), c.clone())).map(|s| s.allowed);
        let sub = evaluate(state, schema, limits, &conn.auth, &p, &c)?;
        if before != Some(sub.allowed) && (before.is_some() || sub.allowed) {
            changed_partitions.insert(p.clone());
        }
        conn.subs.insert((p, c), sub);
    }
    let mut snapshotted = BTreeSet::new();
    for p in changed_partitions {
        let allowed = allowed_colls(&conn.subs, &p);
        if allowed.is_empty() {
            if conn.held.remove(&p) {
                let f = ServerFrame::Drop {
                    partition: p.clone(),
                    position: pos,
                };
                if !send(&conn.tx, metrics, &f) {
                    return Ok(false);
                }
            }
        } else {
            conn.held.insert(p.clone());
            let f = snapshot(state, &p, &allowed, pos)?;
            if !send(&conn.tx, metrics, &f) {
                return Ok(false);
            }
            snapshotted.insert(p);
        }
    }
    let mine: Vec<Write> = writes
        .iter()
        .filter(|w| {
            conn.held.contains(&w.partition)
                && !snapshotted.contains(&w.partition)
                && conn
                    .subs
                    .get(&(w.partition.clone(), w.collection.clone()))
                    .is_some_and(|s| s.allowed)
        })
        .cloned()
        .collect();
    if mine.is_empty() {
        return Ok(true);
    }
    Ok(send(
        &conn.tx,
        metrics,
        &ServerFrame::Effects {
            position: pos,
            writes: mine,
        },
    ))
}

/// Starts the region on its own thread.
pub fn spawn(
    region: Region,
    rx: Receiver<RegionMsg>,
) -> std::thread::JoinHandle<Result<(), Error>> {
    std::thread::Builder::new()
        .name("warren-region".into())
        .spawn(move || region.run(rx))
        .expect("spawn the region thread")
}

/// A handle to send to the region.
pub type RegionTx = Sender<RegionMsg>;
