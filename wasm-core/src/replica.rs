//! The client replica, without I/O.
//!
//! A [`Replica`] holds, in one [`Storage`]:
//! - the **base**: the confirmed documents of the partitions the client may read, each
//!   partition with the log position it is current to (its cursor);
//! - the **outbox**: the client's own commits not yet confirmed, in sequence order.
//!
//! The **view** is the base with the pending commits re-executed on top; queries and
//! live queries read the view. A write is executed at once against the view (a
//! forbidden write is refused there and never queued), stored in the outbox, and sent
//! when a connection is up. Frames from the server change the base (snapshots,
//! effects, dropped partitions) and settle pending commits (outcomes); the view is then
//! rebased and every live query whose result changed is reported.
//!
//! **Rebase in proportion to what changed.** The view keeps each pending commit's
//! writes as a layer and what it read (see [`view`]). When frames change the base or
//! settle commits, only the commits that read a key whose value they would now see
//! differently run again, each on exactly the view it saw before, and a change they
//! make to their own writes carries on to the commits after them that read it. A
//! commit confirmed with the effects it was made with changes no key anyone sees (the
//! base now holds what its layer held), so confirming it runs nothing else. Live
//! queries likewise run again only when a key they read changed. Anything that may
//! change every result (the schema, the claims, a driver's [`Replica::invalidate`])
//! re-executes every pending commit in order, as the definition says.
//!
//! The replica does no I/O: a driver (native: `warren_server::client`; browser: the
//! wasm binding) moves frames between it and a socket, calls [`Replica::handle`] for each
//! frame it receives and [`Replica::flush`] when it has handled what was ready, and sends
//! what [`Replica::outgoing`] returns. Durability is the store's: in the browser the
//! store is IndexedDB, so a write is in the outbox on disk before `mutate` returns.
//!
//! Client keys, beside the engine's documents (see `docs/STORAGE.md`):
//! `Xclient` (the client id), `Xschema` (the schema source), `Xseq` (the next sequence
//! number), `O seq` (a pending commit, as a log entry), `K partition` (a cursor).

mod view;

use std::collections::{BTreeMap, BTreeSet};
use std::ops::Bound;
use std::sync::Arc;

use crate::error::{Error, ErrorCode};
use crate::eval::Limits;
use crate::exec::{self, Commit, Op, Outcome, Write};
use crate::keys;
use crate::protocol::{
    decode_log_entry, encode_log_entry, encode_push, ClientCommit, ClientFrame, CommitResult,
    ServerFrame, SnapshotDoc,
};
use crate::schema::Schema;
use crate::storage::{scan_all, Batch, KeyRange, Overlay, Reads, Recorder, Storage};
use crate::value::Value;
use view::View;

const KEY_CLIENT: &[u8] = b"Xclient";
const KEY_SCHEMA: &[u8] = b"Xschema";
const KEY_SEQ: &[u8] = b"Xseq";
const SPACE_OUTBOX: u8 = b'O';
const SPACE_CURSOR: u8 = b'K';
/// Request ids of recent writes: `Q 0x00 rid` → seq (8 bytes) + the optimistic result,
/// and `Q 0x01 seq` → rid, to prune by age. A driver that forwards writes for other
/// callers (a browser tab for its sibling tabs) tags each with a request id, so a write
/// retried after the forwarding tab went away is made once.
const SPACE_REQUEST: u8 = b'Q';
/// How many request ids are remembered.
pub const KEPT_REQUESTS: u64 = 1024;

fn request_key(rid: &str) -> Vec<u8> {
    let mut k = vec![SPACE_REQUEST, 0];
    k.extend_from_slice(rid.as_bytes());
    k
}

fn request_seq_key(seq: u64) -> Vec<u8> {
    let mut k = vec![SPACE_REQUEST, 1];
    k.extend_from_slice(&seq.to_be_bytes());
    k
}

/// Commits per `Push` frame, at most.
pub const PUSH_CHUNK: usize = 100;
/// Bytes per `Push` frame, about (a single larger commit still goes alone); the server
/// accepts frames up to 1 MiB by default.
pub const PUSH_MAX_BYTES: usize = 256 * 1024;

fn outbox_key(seq: u64) -> Vec<u8> {
    let mut k = vec![SPACE_OUTBOX];
    k.extend_from_slice(&seq.to_be_bytes());
    k
}

fn cursor_key(partition: &str) -> Vec<u8> {
    let mut k = vec![SPACE_CURSOR];
    keys::push_str(&mut k, partition);
    k
}

fn be_u64(b: &[u8]) -> Result<u64, Error> {
    b.try_into()
        .map(u64::from_be_bytes)
        .map_err(|_| Error::new(ErrorCode::Corrupt, "bad number in the replica's store"))
}

/// A commit waiting for the server.
#[derive(Clone, Debug, PartialEq)]
pub struct Pending {
    pub seq: u64,
    pub schema_version: String,
    pub timestamp: i64,
    pub op: Op,
}

/// What happened, for the app: a driver hands these to it.
#[derive(Clone, Debug, PartialEq)]
pub enum Event {
    /// A pending commit was committed at `position` (`None` when the server no longer
    /// kept its outcome: it was applied, and the view already shows its effects).
    Confirmed {
        seq: u64,
        position: Option<u64>,
        result: Value,
    },
    /// A pending commit was refused by the server; its optimistic effects are gone.
    Rejected {
        seq: u64,
        code: String,
        message: String,
    },
    /// A live query's result changed.
    Changed { live: u64, value: Value },
    /// The client may no longer read a partition; its documents were removed.
    Dropped { partition: String },
    /// The server runs another schema now.
    SchemaChanged { version: String },
    /// The server refused the connection or a frame.
    ServerError { code: String, message: String },
}

/// The result of a local write.
#[derive(Clone, Debug, PartialEq)]
pub struct Local {
    /// The commit's sequence number: its identity with the server.
    pub seq: u64,
    /// The optimistic result.
    pub result: Value,
}

struct Live {
    source: String,
    last: Option<Result<Value, Error>>,
    /// What its last evaluation read: a change elsewhere cannot change its result.
    reads: Reads,
}

/// The pending commits, in order. Confirmations come in order and take commits from the
/// front: that is O(1) here (a start offset, compacted now and then), where removing
/// the first element of a `Vec` moves all the others (quadratic over an outbox).
#[derive(Debug, Default)]
struct PendingQueue {
    items: Vec<Pending>,
    head: usize,
}

impl std::ops::Deref for PendingQueue {
    type Target = [Pending];
    fn deref(&self) -> &[Pending] {
        &self.items[self.head..]
    }
}

impl std::ops::DerefMut for PendingQueue {
    fn deref_mut(&mut self) -> &mut [Pending] {
        &mut self.items[self.head..]
    }
}

impl PendingQueue {
    fn push(&mut self, p: Pending) {
        self.items.push(p);
    }

    fn pop(&mut self) -> Option<Pending> {
        if self.items.len() > self.head {
            self.items.pop()
        } else {
            None
        }
    }

    /// Removes commit `seq`; whether it was there.
    fn remove(&mut self, seq: u64) -> bool {
        if self.first().map(|p| p.seq) == Some(seq) {
            self.head += 1;
            self.compact();
            return true;
        }
        match self.binary_search_by_key(&seq, |p| p.seq) {
            Ok(i) => {
                self.items.remove(self.head + i);
                true
            }
            Err(_) => false,
        }
    }

    /// Removes every commit up to `seq`.
    fn remove_through(&mut self, seq: u64) {
        let n = self.partition_point(|p| p.seq <= seq);
        self.head += n;
        self.compact();
    }

    fn compact(&mut self) {
        if self.head == self.items.len() {
            self.items.clear();
            self.head = 0;
        } else if self.head > 64 && self.head * 2 > self.items.len() {
            self.items.drain(..self.head);
            self.head = 0;
        }
    }
}

/// What may have changed in the view: keys, and ranges a driver loaded.
#[derive(Debug, Default)]
struct Changes {
    keys: BTreeSet<Vec<u8>>,
    ranges: Vec<KeyRange>,
}

impl Changes {
    /// Whether an evaluation that read `reads` may see something else now.
    fn meets(&self, reads: &Reads) -> bool {
        let point = if self.keys.len() < reads.points.len() {
            self.keys.iter().any(|k| reads.points.contains(k))
        } else {
            reads.points.iter().any(|k| self.keys.contains(k))
        };
        point
            || reads.ranges.iter().any(|r| view::in_range(&self.keys, r))
            || self.ranges.iter().any(|c| {
                reads.points.iter().any(|k| c.contains(k))
                    || reads.ranges.iter().any(|r| r.overlaps(c))
            })
    }
}

/// Counters of the work the replica did, for tests and profiles.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Pending commits run to build or rebase the view (not counting the first run of
    /// each write, in `mutate`).
    pub reexecuted: u64,
    /// Full rebuilds of the view (every pending commit run again).
    pub rebuilds: u64,
    /// Live-query evaluations after the first.
    pub live_runs: u64,
    /// About the bytes the view's layers hold over the base.
    pub view_bytes: u64,
}

/// The client replica. See the module documentation.
pub struct Replica<S: Storage> {
    store: S,
    client_id: String,
    schema: Option<Arc<Schema>>,
    limits: Limits,
    auth: Value,
    pending: PendingQueue,
    next_seq: u64,
    view: View,
    /// The view must be rebuilt from scratch (every pending commit run again).
    stale: bool,
    /// Base keys the frames changed since the view was last rebased.
    base_changed: BTreeSet<Vec<u8>>,
    /// Ranges of the base a driver loaded since (data a run may have missed).
    base_loaded: Vec<KeyRange>,
    /// Commits settled (confirmed, refused, taken back) since then: their layers are
    /// still in the view.
    settled: BTreeSet<u64>,
    /// What may have changed in the view since live queries were last evaluated
    /// (`None`: anything; a query between `handle` and `flush` rebases the view, and
    /// `flush` must still report the change).
    live_changed: Option<Changes>,
    live_due: bool,
    stats: Stats,
    live: BTreeMap<u64, Live>,
    next_live: u64,
    connected: bool,
    /// Commits may go on this connection before its welcome: when its `Hello` was made,
    /// no pending commit had ever been sent, so the server has applied every commit
    /// before the first pending one and none after, and the push it would be sent after
    /// the welcome (every commit after its applied seq) is the whole outbox. It goes a
    /// round trip sooner, while the server computes the welcome (the server reads a
    /// connection's frames meanwhile, and holds their outcomes until the welcome).
    early: bool,
    /// Every pending commit up to this sequence number was sent on this connection.
    sent_upto: u64,
    /// The server expects a commit this client no longer has: send nothing more on
    /// this connection.
    stalled: bool,
    events: Vec<Event>,
    now: i64,
    /// The parts of a large snapshot received so far: (partition, position, documents),
    /// applied with the `Snapshot` that ends them.
    parts: Option<(String, u64, Vec<SnapshotDoc>)>,
    /// Every pending commit up to this sequence number may have reached the server (on
    /// this connection or an earlier one, or before a reload): its effects may come
    /// before its outcome.
    maybe_sent: u64,
    /// Frames received and not handled yet: see [`Replica::receive`].
    held: Vec<ServerFrame>,
    /// This connection's welcome, once handled: its position and applied seq (the
    /// frames at its position or before wait only for the outcomes up to that seq).
    welcomed: Option<(u64, u64)>,
}

/// The commits up to this sequence number have no outcome kept on a server that has
/// applied everything up to `applied_seq`: a welcome settles them.
fn forgotten_upto(applied_seq: u64) -> u64 {
    applied_seq.saturating_sub(exec::KEPT_OUTCOMES)
}

impl<S: Storage> Replica<S> {
    /// Opens a replica on `store`, resuming what it holds (client id, schema, outbox,
    /// cursors). `client_id` and `schema` are used when the store has none yet.
    pub fn open(mut store: S, client_id: &str, schema: Option<&str>) -> Result<Replica<S>, Error> {
        let mut init = Batch::new();
        let client_id = match store.get(KEY_CLIENT)? {
            Some(b) => String::from_utf8(b)
                .map_err(|_| Error::new(ErrorCode::Corrupt, "bad client id in the store"))?,
            None => {
                if client_id.is_empty() {
                    return Err(Error::new(
                        ErrorCode::InvalidArgument,
                        "a client id is required",
                    ));
                }
                init.put(KEY_CLIENT.to_vec(), client_id.as_bytes().to_vec());
                client_id.to_owned()
            }
        };
        let source = match store.get(KEY_SCHEMA)? {
            Some(b) => Some(
                String::from_utf8(b)
                    .map_err(|_| Error::new(ErrorCode::Corrupt, "bad schema in the store"))?,
            ),
            None => {
                if let Some(s) = schema {
                    init.put(KEY_SCHEMA.to_vec(), s.as_bytes().to_vec());
                }
                schema.map(str::to_owned)
            }
        };
        let schema = source
            .map(|s| Schema::parse(&s).map(Arc::new))
            .transpose()?;
        if !init.is_empty() {
            store.apply(init)?;
        }
        let mut pending = PendingQueue::default();
        for (_, v) in scan_all(&store, &KeyRange::prefix(&[SPACE_OUTBOX]))? {
            let c = decode_log_entry(&v)?;
            pending.push(Pending {
                seq: c.client_seq,
                schema_version: c.schema_version,
                timestamp: c.timestamp,
                op: c.op,
            });
        }
        let stored_seq = store
            .get(KEY_SEQ)?
            .map(|b| be_u64(&b))
            .transpose()?
            .unwrap_or(1);
        let next_seq = stored_seq.max(pending.last().map_or(1, |p| p.seq + 1));
        // Whether the outbox was sent before the reload is not known: any of it may be.
        let maybe_sent = pending.last().map_or(0, |p| p.seq);
        Ok(Replica {
            store,
            client_id,
            schema,
            limits: Limits::default(),
            auth: Value::Null,
            pending,
            next_seq,
            view: View::default(),
            stale: true,
            base_changed: BTreeSet::new(),
            base_loaded: Vec::new(),
            settled: BTreeSet::new(),
            live_changed: Some(Changes::default()),
            live_due: false,
            stats: Stats::default(),
            live: BTreeMap::new(),
            next_live: 1,
            connected: false,
            early: false,
            sent_upto: 0,
            stalled: false,
            events: Vec::new(),
            now: 0,
            parts: None,
            maybe_sent,
            held: Vec::new(),
            welcomed: None,
        })
    }

    pub fn client_id(&self) -> &str {
        &self.client_id
    }

    pub fn schema(&self) -> Option<&Schema> {
        self.schema.as_deref()
    }

    /// The claims used to check rules locally (the payload of the client's token).
    pub fn set_auth(&mut self, auth: Value) {
        self.auth = auth;
        self.stale = true;
    }

    pub fn auth(&self) -> &Value {
        &self.auth
    }

    pub fn set_limits(&mut self, limits: Limits) {
        self.limits = limits;
    }

    /// The live queries: their ids and sources, in order of id.
    pub fn live_queries(&self) -> Vec<(u64, &str)> {
        self.live
            .iter()
            .map(|(id, l)| (*id, l.source.as_str()))
            .collect()
    }

    /// The commits not yet confirmed, in order.
    pub fn pending(&self) -> &[Pending] {
        &self.pending
    }

    /// The work done so far (see [`Stats`]).
    pub fn stats(&self) -> Stats {
        Stats {
            view_bytes: self.view.bytes() as u64,
            ..self.stats
        }
    }

    /// Whether a pending commit (a local write the server has not confirmed or refused
    /// yet) wrote document `id` of `collection`: created, changed or deleted it.
    pub fn has_pending_writes(&self, collection: &str, id: &str) -> bool {
        self.view.is_written(&keys::doc_key(collection, id))
    }

    pub fn is_connected(&self) -> bool {
        self.connected
    }

    pub fn store(&self) -> &S {
        &self.store
    }

    /// The documents of the snapshot parts held until their `Snapshot` comes, as
    /// (collection, id): a driver whose store loads lazily loads them before applying
    /// the `Snapshot` (a document may still be held in another partition).
    pub fn held_snapshot_docs(&self) -> impl Iterator<Item = (&str, &str)> {
        self.parts
            .iter()
            .flat_map(|(_, _, docs)| docs.iter())
            .map(|d| (d.collection.as_str(), d.id.as_str()))
    }

    /// The store, to open the replica again later (as after a reload).
    pub fn into_store(self) -> S {
        self.store
    }

    /// The store, to load into it (a driver over a lazily loaded store loads what a run
    /// missed, then calls [`Replica::invalidate`] and runs again).
    pub fn store_mut(&mut self) -> &mut S {
        &mut self.store
    }

    /// Takes back the last write, when its outbox entry could not be made durable (the
    /// store's own persistence failed after `mutate` returned): it is removed from the
    /// outbox and its sequence number is given out again. Only the last write can be
    /// taken back.
    pub fn forget(&mut self, seq: u64) -> Result<(), Error> {
        if self.pending.last().map(|p| p.seq) != Some(seq) {
            return Err(Error::new(
                ErrorCode::InvalidArgument,
                format!("commit {seq} is not the last write"),
            ));
        }
        let mut b = Batch::new();
        b.delete(outbox_key(seq));
        b.put(KEY_SEQ.to_vec(), seq.to_be_bytes().to_vec());
        if let Some(rid) = self.store.get(&request_seq_key(seq))? {
            b.delete(request_seq_key(seq));
            b.delete([&[SPACE_REQUEST, 0][..], &rid].concat());
        }
        self.store.apply(b)?;
        self.pending.pop();
        self.next_seq = seq;
        self.settled.insert(seq);
        Ok(())
    }

    /// Marks the view as needing a rebuild from scratch (the store gained data a run
    /// may have missed, and the driver does not say which).
    pub fn invalidate(&mut self) {
        self.stale = true;
    }

    /// The store gained data in these ranges (a driver over a lazily loaded store
    /// loaded them after a run missed them): the commits and live queries that read
    /// anything in them run again at the next rebase.
    pub fn loaded(&mut self, ranges: impl IntoIterator<Item = KeyRange>) {
        self.base_loaded.extend(ranges);
    }

    /// Runs a write against the view without keeping anything: what `mutate` would
    /// answer, with no outbox entry and no change to the view. A driver over a lazily
    /// loaded store uses it to learn what the write reads before making it.
    pub fn dry_run(&mut self, op: Op, now: i64) -> Result<Result<Value, Error>, Error> {
        let schema = self.schema_or_err()?;
        self.rebase_if_stale()?;
        let commit = self.next_commit(&schema, op, now);
        let view = self.view.over(&self.store, u64::MAX);
        let run = exec::execute_optimistic(&view, &schema, &commit, 0, &self.limits);
        Ok(match run? {
            Outcome::Committed { result, .. } => Ok(result),
            Outcome::Rejected { code, message } => Err(Error::new(code, message)),
            Outcome::Skipped(_) => unreachable!("optimistic execution never skips"),
        })
    }

    /// The partitions held, with their cursors.
    pub fn partitions(&self) -> Result<Vec<(String, u64)>, Error> {
        let mut out = Vec::new();
        for (k, v) in scan_all(&self.store, &KeyRange::prefix(&[SPACE_CURSOR]))? {
            let mut pos = 1;
            out.push((keys::read_str(&k, &mut pos)?, be_u64(&v)?));
        }
        Ok(out)
    }

    /// The commit a write made now would be: the next sequence number, the client's
    /// claims and clock.
    fn next_commit(&self, schema: &Schema, op: Op, now: i64) -> Commit {
        Commit {
            client_id: exec::scoped_client_id(&self.auth, &self.client_id),
            client_seq: self.next_seq,
            schema_version: schema.version().to_owned(),
            timestamp: now,
            auth: self.auth.clone(),
            op,
        }
    }

    fn schema_or_err(&self) -> Result<Arc<Schema>, Error> {
        self.schema.clone().ok_or_else(|| {
            Error::new(
                ErrorCode::Unknown,
                "the schema is not known yet: open the replica with one, or connect once",
            )
        })
    }

    /// Makes a write: executes it against the view at once, and, unless it is refused
    /// there, stores it in the outbox (durably, as the store is) before returning.
    /// `now` is the client's clock, `now()` for the optimistic run; the server runs the
    /// commit again with its own timestamp.
    pub fn mutate(&mut self, op: Op, now: i64) -> Result<Local, Error> {
        self.mutate_request(op, now, None)
    }

    /// The write made earlier with request id `rid`, if it is still remembered (the
    /// last [`KEPT_REQUESTS`] are).
    pub fn request(&self, rid: &str) -> Result<Option<Local>, Error> {
        let Some(b) = self.store.get(&request_key(rid))? else {
            return Ok(None);
        };
        if b.len() < 8 {
            return Err(Error::new(ErrorCode::Corrupt, "bad request record"));
        }
        Ok(Some(Local {
            seq: be_u64(&b[..8])?,
            result: Value::decode(&b[8..])?,
        }))
    }

    /// [`Replica::mutate`], at most once per request id: a write whose `rid` was made
    /// before answers as it did then (its sequence number and optimistic result), and
    /// makes nothing new. The id is stored in the same batch as the outbox entry.
    pub fn mutate_request(&mut self, op: Op, now: i64, rid: Option<&str>) -> Result<Local, Error> {
        if let Some(rid) = rid {
            if let Some(done) = self.request(rid)? {
                return Ok(done);
            }
        }
        let schema = self.schema_or_err()?;
        self.now = now;
        self.rebase_if_stale()?;
        let mut commit = self.next_commit(&schema, op, now);
        let (writes, result, view_batch, reads) = {
            let view = self.view.over(&self.store, u64::MAX);
            let rec = Recorder::new(&view);
            let (writes, result) =
                match exec::execute_optimistic(&rec, &schema, &commit, 0, &self.limits)? {
                    Outcome::Committed { writes, result } => (writes, result),
                    Outcome::Rejected { code, message } => return Err(Error::new(code, message)),
                    Outcome::Skipped(_) => unreachable!("optimistic execution never skips"),
                };
            let vb = exec::writes_batch(&rec, &schema, &writes)?;
            (writes, result, vb, rec.into_reads())
        };
        drop(writes);
        // Durable first: if the outbox write fails, nothing happened. The outbox keeps
        // no claims (the server's gateway writes them); taken out, not copied with the
        // rest of the commit (its arguments may be a thousand documents).
        commit.auth = Value::Null;
        let mut batch = Batch::new();
        batch.put(outbox_key(commit.client_seq), encode_log_entry(&commit));
        batch.put(
            KEY_SEQ.to_vec(),
            (commit.client_seq + 1).to_be_bytes().to_vec(),
        );
        if let Some(rid) = rid {
            let mut record = commit.client_seq.to_be_bytes().to_vec();
            result.encode_into(&mut record);
            batch.put(request_key(rid), record);
            batch.put(request_seq_key(commit.client_seq), rid.as_bytes().to_vec());
            // Keep the ids of the last KEPT_REQUESTS sequence numbers, this one included.
            let stale = KeyRange {
                start: std::ops::Bound::Included(vec![SPACE_REQUEST, 1]),
                end: std::ops::Bound::Excluded(request_seq_key(
                    commit.client_seq.saturating_sub(KEPT_REQUESTS) + 1,
                )),
            };
            for (k, old_rid) in self.store.scan(&stale, false, 16)? {
                batch.delete(k);
                batch.delete([&[SPACE_REQUEST, 0][..], &old_rid].concat());
            }
        }
        self.store.apply(batch)?;
        let written: BTreeSet<Vec<u8>> = view_batch.ops.iter().map(|(k, _)| k.clone()).collect();
        self.view.insert(commit.client_seq, view_batch, reads);
        self.pending.push(Pending {
            seq: commit.client_seq,
            schema_version: commit.schema_version,
            timestamp: now,
            op: commit.op,
        });
        self.next_seq += 1;
        self.live_touched(written);
        self.notify_live()?;
        Ok(Local {
            seq: commit.client_seq,
            result,
        })
    }

    /// Runs a query against the view.
    pub fn query(&mut self, source: &str) -> Result<Value, Error> {
        self.rebase_if_stale()?;
        self.eval(source, None)
    }

    /// Runs a query on the view as it is, recording what it read into `reads` if asked.
    fn eval(&self, source: &str, reads: Option<&mut Reads>) -> Result<Value, Error> {
        let schema = self.schema_or_err()?;
        let view = self.view.over(&self.store, u64::MAX);
        let Some(out) = reads else {
            return exec::query(&view, &schema, source, &self.auth, self.now, &self.limits);
        };
        let rec = Recorder::new(&view);
        let r = exec::query(&rec, &schema, source, &self.auth, self.now, &self.limits);
        *out = rec.into_reads();
        r
    }

    /// Replays a query, a write (as a write made now would run: nothing is stored) or
    /// a partition's read rule on the view, as this replica's identity, with the trace
    /// of the rules evaluated ([`crate::explain`]). The same engine as the server's, on
    /// the data this replica holds.
    pub fn explain(
        &mut self,
        what: &crate::explain::Subject,
        now: i64,
    ) -> Result<crate::explain::Explanation, Error> {
        use crate::explain::{self as x, Subject};
        let schema = self.schema_or_err()?;
        self.rebase_if_stale()?;
        let view = self.view.over(&self.store, u64::MAX);
        match what {
            Subject::Query(src) => {
                x::explain_query(&view, &schema, src, &self.auth, now, &self.limits)
            }
            Subject::Write(op) => {
                let commit = self.next_commit(&schema, op.clone(), now);
                x::explain_commit(&view, &schema, &commit, 0, &self.limits)
            }
            Subject::Partition(p) => {
                x::explain_partition(&view, &schema, p, &self.auth, &self.limits)
            }
        }
    }

    /// Starts a live query; returns its id and its first result. Its later results
    /// arrive as [`Event::Changed`], only when they differ from the last one.
    pub fn subscribe(&mut self, source: &str) -> Result<(u64, Value), Error> {
        self.rebase_if_stale()?;
        let mut reads = Reads::default();
        let first = self.eval(source, Some(&mut reads))?;
        let id = self.next_live;
        self.next_live += 1;
        self.live.insert(
            id,
            Live {
                source: source.to_owned(),
                last: Some(Ok(first.clone())),
                reads,
            },
        );
        Ok((id, first))
    }

    pub fn unsubscribe(&mut self, id: u64) {
        self.live.remove(&id);
    }

    /// The events since the last call.
    pub fn take_events(&mut self) -> Vec<Event> {
        std::mem::take(&mut self.events)
    }

    // ----- the protocol -----

    /// The `Hello` to open a connection with. Once it is sent, [`Replica::outgoing`]
    /// may give the outbox before the welcome comes (see `early`).
    pub fn hello(&mut self, token: &str) -> Result<ClientFrame, Error> {
        // `maybe_sent` covers every commit that may have been sent, on any connection or
        // before a reload (at open it is the outbox's last).
        self.early =
            !self.connected && self.pending.first().is_none_or(|p| p.seq > self.maybe_sent);
        Ok(ClientFrame::Hello {
            client_id: self.client_id.clone(),
            token: token.to_owned(),
            schema_version: self
                .schema
                .as_ref()
                .map(|s| s.version().to_owned())
                .unwrap_or_default(),
            outbox_from: self.pending.first().map_or(0, |p| p.seq),
            partitions: self.partitions()?,
        })
    }

    /// The connection closed: everything unconfirmed is sent again on the next one.
    pub fn disconnected(&mut self) {
        self.connected = false;
        self.early = false;
        self.sent_upto = 0;
        self.parts = None;
        self.welcomed = None;
        // Not handled, so not in the base: the next connection sends them again (the
        // cursors did not move).
        self.held.clear();
    }

    /// The frames to send now: the pending commits not yet sent on this connection.
    pub fn outgoing(&mut self) -> Vec<ClientFrame> {
        self.outgoing_upto(u64::MAX)
    }

    /// [`Replica::outgoing`], up to sequence number `last`: a driver whose store makes
    /// writes durable later than `mutate` returns sends only those already durable.
    pub fn outgoing_upto(&mut self, last: u64) -> Vec<ClientFrame> {
        let chunks = self.take_unsent(last);
        chunks
            .into_iter()
            .map(|c| ClientFrame::Push {
                commits: self.pending[c]
                    .iter()
                    .map(|p| ClientCommit {
                        seq: p.seq,
                        schema_version: p.schema_version.clone(),
                        op: p.op.clone(),
                    })
                    .collect(),
            })
            .collect()
    }

    /// [`Replica::outgoing_upto`], each frame encoded (as [`ClientFrame::encode`]
    /// would), straight from the outbox: no commit is copied to be sent.
    pub fn outgoing_encoded_upto(&mut self, last: u64) -> Vec<Vec<u8>> {
        let chunks = self.take_unsent(last);
        chunks
            .into_iter()
            .map(|c| {
                encode_push(
                    self.pending[c]
                        .iter()
                        .map(|p| (p.seq, p.schema_version.as_str(), &p.op)),
                )
            })
            .collect()
    }

    /// Marks the pending commits up to `last` not yet sent on this connection as sent,
    /// and gives them as the outbox's index ranges of the frames they go in: at most
    /// PUSH_CHUNK commits and about PUSH_MAX_BYTES a frame, so that a long offline queue
    /// of large commits never makes a frame the server refuses.
    fn take_unsent(&mut self, last: u64) -> Vec<std::ops::Range<usize>> {
        let from = self.first_unsent();
        // Pending commits are in sequence order.
        let to = from + self.pending[from..].partition_point(|p| p.seq <= last);
        if let Some(p) = self.pending[from..to].last() {
            self.sent_upto = p.seq;
            self.maybe_sent = self.maybe_sent.max(p.seq);
        }
        let mut chunks = Vec::new();
        let (mut start, mut bytes) = (from, 0);
        for (i, p) in self.pending.iter().enumerate().take(to).skip(from) {
            let size = approx_size(&p.schema_version, &p.op);
            if i > start && (i - start == PUSH_CHUNK || bytes + size > PUSH_MAX_BYTES) {
                chunks.push(start..i);
                (start, bytes) = (i, 0);
            }
            bytes += size;
        }
        if to > start {
            chunks.push(start..to);
        }
        chunks
    }

    /// Whether [`Replica::outgoing_upto`] would send anything now.
    pub fn has_outgoing_upto(&self, last: u64) -> bool {
        self.unsent_upto(last).next().is_some()
    }

    /// The pending commits not yet sent on this connection, up to sequence number
    /// `last` (none while disconnected or stalled).
    fn unsent_upto(&self, last: u64) -> impl Iterator<Item = &Pending> {
        self.pending[self.first_unsent()..]
            .iter()
            .take_while(move |p| p.seq <= last)
    }

    /// Where the pending commits not yet sent on this connection begin in the outbox
    /// (its end while disconnected, before the welcome unless `early`, or stalled).
    fn first_unsent(&self) -> usize {
        if (self.connected || self.early) && !self.stalled {
            // Pending commits are in sequence order.
            self.pending.partition_point(|p| p.seq <= self.sent_upto)
        } else {
            self.pending.len()
        }
    }

    /// Takes in a frame from the server, to be handled when [`Replica::take_ready`]
    /// gives it: frames are handled in the order received, and a frame that may hold
    /// the effects of this client's own commits waits for their outcomes.
    ///
    /// The server sends a commit's effects before its outcome (`Effects` at its
    /// position, or a `Snapshot` at the end of its batch, then the `Outcome`; see
    /// `docs/PROTOCOL.md`, "Live"). Handled apart, the base would hold a commit's
    /// effects while the commit is still pending, and the view would run it again on
    /// them: a create would fail as "already exists" and its documents vanish from the
    /// view until its outcome came. So while a commit that may have reached the server
    /// has no outcome, a frame that changes the base waits, with the frames after it,
    /// until the stream shows that every outcome up to that frame's position has come:
    /// a committed outcome at that position or later (outcomes come in log order), or
    /// no such commit left. They are then handled together. (A frame at a later
    /// position shows nothing: a connection that joins late gets the entries since its
    /// welcome first, and their outcomes after them.) A welcome's snapshots, at its
    /// position, wait only for the outcomes of the commits it says were applied (up to
    /// its `applied_seq`), which follow them: not for the outbox's later commits, which
    /// the server may not apply for a long while (its budgets).
    pub fn receive(&mut self, frame: ServerFrame) {
        self.held.push(frame);
    }

    /// The frames received that may be handled now, in order (see
    /// [`Replica::receive`]); handle each with [`Replica::handle`], with nothing else
    /// between them, then [`Replica::flush`].
    pub fn take_ready(&mut self) -> Vec<ServerFrame> {
        let (n, _) = self.ready_len();
        self.held.drain(..n).collect()
    }

    /// Every frame received and not handled yet, whether ready or not: for a driver
    /// that has waited long enough for the outcomes (a server that never sends them
    /// must not hold the base back for ever).
    pub fn take_held(&mut self) -> Vec<ServerFrame> {
        std::mem::take(&mut self.held)
    }

    /// Whether frames received wait for outcomes.
    pub fn holds_frames(&self) -> bool {
        !self.held.is_empty()
    }

    /// Whether what waits is a welcome's catch-up (its snapshots, waiting for the
    /// outcomes that follow them: a stream a driver must not cut short), rather than
    /// live frames waiting for an outcome at their position.
    pub fn holds_catch_up(&self) -> bool {
        self.ready_len().1
    }

    /// Handles the frames that are ready (see [`Replica::receive`]); gives how many.
    pub fn handle_ready(&mut self) -> Result<usize, Error> {
        let ready = self.take_ready();
        let n = ready.len();
        for f in ready {
            self.handle(f)?;
        }
        Ok(n)
    }

    /// How many of the frames held may be handled now: up to the last point where
    /// every outcome of the base's position had come (see [`Replica::receive`]); and
    /// whether a welcome's catch-up is among those that wait. In time of the frames
    /// held and the logarithm of the outbox: it runs for each batch of frames, and an
    /// outbox can hold thousands of commits.
    fn ready_len(&self) -> (usize, bool) {
        // The pending commits up to `seq` (the outbox is in sequence order).
        let upto = |seq: u64| self.pending.partition_point(|p| p.seq <= seq);
        // The commits that may have reached the server and have no outcome yet are the
        // pending ones in (`after`, `until`], less those settled by outcomes held here.
        let (mut after, mut until) = (0, self.maybe_sent);
        let mut settled_here: BTreeSet<u64> = BTreeSet::new();
        let mut unsettled = upto(until);
        // The position of the base frames waiting for outcomes, if any.
        let mut waiting: Option<u64> = None;
        // After a welcome at position `P` with applied seq `A`: its snapshots (at `P`)
        // hold the effects of commits up to `A` only, whose outcomes follow them; a
        // commit after `A` is applied after `P` (docs/PROTOCOL.md, "Welcome, snapshots,
        // kept outcomes"). So frames at `P` or before wait for those alone, not for
        // the outbox's later commits, which may wait on the server's budgets for long.
        let mut welcome = self.welcomed;
        let mut unsettled_caught_up = welcome.map_or(0, |(_, applied)| upto(applied));
        let mut waiting_caught_up: Option<u64> = None;
        let mut ready = 0;
        for (i, f) in self.held.iter().enumerate() {
            match f {
                ServerFrame::Welcome {
                    applied_seq,
                    position,
                    ..
                } => {
                    // A new connection: the outcomes the server no longer keeps do not
                    // come (the welcome settles those commits); those of the rest of
                    // what it applied come after its snapshots.
                    after = forgotten_upto(*applied_seq);
                    until = until.max(*applied_seq);
                    let unsettled_in = |to: u64| {
                        let here = settled_here
                            .range((Bound::Excluded(after), Bound::Included(to)))
                            .count();
                        upto(to).saturating_sub(upto(after)).saturating_sub(here)
                    };
                    unsettled = unsettled_in(until);
                    unsettled_caught_up = unsettled_in(*applied_seq);
                    welcome = Some((*position, *applied_seq));
                    waiting = None;
                    waiting_caught_up = None;
                }
                ServerFrame::Effects { position, .. }
                | ServerFrame::Snapshot { position, .. }
                | ServerFrame::SnapshotPart { position, .. }
                | ServerFrame::Drop { position, .. } => {
                    let wait =
                        |w: &mut Option<u64>| *w = Some(w.map_or(*position, |w| w.max(*position)));
                    match welcome {
                        Some((at, _)) if *position <= at => {
                            if unsettled_caught_up > 0 {
                                wait(&mut waiting_caught_up);
                            }
                        }
                        _ => {
                            if unsettled > 0 {
                                wait(&mut waiting);
                            }
                        }
                    }
                }
                ServerFrame::Outcome { seq, result } => {
                    let settles = !matches!(result, CommitResult::OutOfOrder { .. })
                        && *seq > after
                        && *seq <= until
                        && self.pending.binary_search_by_key(seq, |p| p.seq).is_ok()
                        && settled_here.insert(*seq);
                    if settles {
                        unsettled = unsettled.saturating_sub(1);
                        if welcome.is_some_and(|(_, applied)| *seq <= applied) {
                            unsettled_caught_up = unsettled_caught_up.saturating_sub(1);
                        }
                    }
                    // Outcomes come in log order: none for the base's position is still
                    // to come.
                    if let CommitResult::Committed { position, .. } = result {
                        for w in [&mut waiting, &mut waiting_caught_up] {
                            if w.is_some_and(|w| *position >= w) {
                                *w = None;
                            }
                        }
                    }
                }
                ServerFrame::Error { .. }
                | ServerFrame::Pong { .. }
                | ServerFrame::Presence { .. } => {}
            }
            if unsettled == 0 {
                waiting = None;
                waiting_caught_up = None;
            }
            if unsettled_caught_up == 0 {
                waiting_caught_up = None;
            }
            if waiting.is_none() && waiting_caught_up.is_none() {
                ready = i + 1;
            }
        }
        (ready, waiting_caught_up.is_some())
    }

    /// Handles one frame from the server. Changes to the base take effect in the view
    /// at the next [`Replica::flush`] (call it when no more frames are ready).
    pub fn handle(&mut self, frame: ServerFrame) -> Result<(), Error> {
        match frame {
            ServerFrame::Welcome {
                schema_version,
                schema_source,
                position,
                applied_seq,
                partitions,
            } => {
                self.welcomed = Some((position, applied_seq));
                if self.schema.as_ref().map(|s| s.version()) != Some(schema_version.as_str()) {
                    let schema = Schema::parse(&schema_source)?;
                    let mut b = Batch::new();
                    b.put(KEY_SCHEMA.to_vec(), schema_source.into_bytes());
                    self.store.apply(b)?;
                    self.schema = Some(Arc::new(schema));
                    self.stale = true;
                    self.events.push(Event::SchemaChanged {
                        version: schema_version,
                    });
                }
                // Partitions held but no longer readable go.
                for (p, _) in self.partitions()? {
                    if !partitions.contains(&p) {
                        self.drop_partition(&p)?;
                    }
                }
                self.connected = true;
                // The server has everything up to applied_seq; the outcomes it still
                // keeps follow. Older ones it no longer keeps: those commits were
                // applied, and their effects are in the partitions.
                let forgotten = forgotten_upto(applied_seq);
                let settled: Vec<u64> = self
                    .pending
                    .iter()
                    .map(|p| p.seq)
                    .take_while(|s| *s <= forgotten)
                    .collect();
                if !settled.is_empty() {
                    let mut b = Batch::new();
                    for seq in &settled {
                        b.delete(outbox_key(*seq));
                    }
                    self.store.apply(b)?;
                    self.pending.remove_through(forgotten);
                    self.settled.extend(settled.iter().copied());
                    for seq in settled {
                        self.events.push(Event::Confirmed {
                            seq,
                            position: None,
                            result: Value::Null,
                        });
                    }
                }
                // What went before the welcome (`early`) is not sent again: it is all
                // after `applied_seq`.
                self.sent_upto = self.sent_upto.max(applied_seq);
                self.early = false;
                self.maybe_sent = self.maybe_sent.max(applied_seq);
                self.stalled = false;
            }
            ServerFrame::SnapshotPart {
                partition,
                position,
                docs,
            } => match &mut self.parts {
                Some((p, at, held)) if *p == partition && *at == position => held.extend(docs),
                _ => self.parts = Some((partition, position, docs)),
            },
            ServerFrame::Snapshot {
                partition,
                position,
                mut docs,
            } => {
                // The parts sent before it come first.
                if let Some((p, at, mut held)) = self.parts.take() {
                    if p == partition && at == position {
                        held.append(&mut docs);
                        docs = held;
                    }
                }
                let schema = self.schema_or_err()?;
                let mut batch = self.clear_partition_batch(&partition)?;
                // The deletes and the puts in one batch: the later write wins.
                let writes: Vec<Write> = docs
                    .into_iter()
                    .map(|d| Write {
                        collection: d.collection,
                        id: d.id,
                        partition: partition.clone(),
                        version: d.version,
                        data: Some(d.data),
                    })
                    .collect();
                // Snapshot documents are written over the base with the partition
                // cleared: new to it, but a document with the same id may still be held
                // in another partition (it moved since that one's cursor), and its index
                // entries and membership there must go.
                let mut cleared = Overlay::new(&self.store);
                cleared.apply(batch.clone())?;
                let puts = exec::writes_batch(&cleared, &schema, &writes)?;
                drop(cleared);
                batch.ops.extend(puts.ops);
                batch.put(cursor_key(&partition), position.to_be_bytes().to_vec());
                self.apply_base(batch)?;
            }
            ServerFrame::Drop { partition, .. } => {
                self.drop_partition(&partition)?;
            }
            ServerFrame::Effects { position, writes } => {
                let schema = self.schema_or_err()?;
                let mut batch = exec::writes_batch(&self.store, &schema, &writes)?;
                let mut seen = std::collections::BTreeSet::new();
                for w in &writes {
                    if seen.insert(w.partition.clone()) {
                        batch.put(cursor_key(&w.partition), position.to_be_bytes().to_vec());
                    }
                }
                self.apply_base(batch)?;
            }
            ServerFrame::Outcome { seq, result } => match result {
                CommitResult::OutOfOrder { expected } => {
                    if self.pending.iter().any(|p| p.seq == expected) {
                        // Send again from the one the server expects.
                        self.sent_upto = self.sent_upto.min(expected.saturating_sub(1));
                    } else if !self.stalled {
                        // The server expects a commit this client no longer has (it
                        // was restored from an older state): resending cannot help.
                        // Stop sending until the next welcome and say so, once.
                        self.stalled = true;
                        self.events.push(Event::ServerError {
                            code: "SEQUENCE_GAP".into(),
                            message: format!(
                                "the server expects commit {expected}, which this client no longer has"
                            ),
                        });
                    }
                }
                other => {
                    if self.pending.binary_search_by_key(&seq, |p| p.seq).is_err() {
                        return Ok(()); // settled already (a repeat after a reconnect)
                    }
                    let mut b = Batch::new();
                    b.delete(outbox_key(seq));
                    self.store.apply(b)?;
                    self.pending.remove(seq);
                    self.settled.insert(seq);
                    self.events.push(match other {
                        CommitResult::Committed { position, result } => Event::Confirmed {
                            seq,
                            position: Some(position),
                            result,
                        },
                        CommitResult::Rejected { code, message } => {
                            Event::Rejected { seq, code, message }
                        }
                        _ => Event::Confirmed {
                            seq,
                            position: None,
                            result: Value::Null,
                        },
                    });
                }
            },
            ServerFrame::Error { code, message } => {
                self.events.push(Event::ServerError { code, message });
            }
            // Presence is for the app (the driver hands it over), not the replica.
            ServerFrame::Pong { .. } | ServerFrame::Presence { .. } => {}
        }
        Ok(())
    }

    /// Rebases the view if frames changed the base, and reports changed live queries.
    pub fn flush(&mut self) -> Result<(), Error> {
        self.rebase_if_stale()?;
        if self.live_due {
            self.notify_live()?;
        }
        Ok(())
    }

    /// Applies a batch of the server's to the base, noting the keys it changes.
    fn apply_base(&mut self, batch: Batch) -> Result<(), Error> {
        let keys: Vec<Vec<u8>> = batch.ops.iter().map(|(k, _)| k.clone()).collect();
        self.store.apply(batch)?;
        self.base_changed.extend(keys);
        Ok(())
    }

    fn clear_partition_batch(&self, partition: &str) -> Result<Batch, Error> {
        let schema = self.schema_or_err()?;
        let mut batch = Batch::new();
        for (k, _) in scan_all(
            &self.store,
            &KeyRange::prefix(&keys::partition_prefix(partition)),
        )? {
            let (_, coll, id) = keys::parse_partition_key(&k)?;
            let Ok(c) = schema.collection(&coll) else {
                continue;
            };
            let dk = keys::doc_key(&coll, &id);
            let old = self
                .store
                .get(&dk)?
                .map(|b| crate::doc::StoredDoc::decode(&b))
                .transpose()?;
            batch
                .ops
                .extend(crate::doc::doc_ops(c, &id, old.as_ref(), None));
        }
        Ok(batch)
    }

    fn drop_partition(&mut self, partition: &str) -> Result<(), Error> {
        let mut batch = self.clear_partition_batch(partition)?;
        batch.delete(cursor_key(partition));
        self.apply_base(batch)?;
        self.events.push(Event::Dropped {
            partition: partition.to_owned(),
        });
        Ok(())
    }

    /// View = base + pending re-executed, in order. A pending commit that now fails
    /// (another client's write got there first) shows nothing; the server decides.
    ///
    /// From scratch when [`Replica::stale`]; otherwise in proportion to what changed
    /// (see the module docs): the settled commits' layers go, and the commits that read
    /// a key whose value changed for them run again, in order.
    fn rebase_if_stale(&mut self) -> Result<(), Error> {
        let Some(schema) = self.schema.clone() else {
            return Ok(());
        };
        if self.stale {
            self.view = View::default();
            for i in 0..self.pending.len() {
                self.run_pending(&schema, i)?;
            }
            self.stats.rebuilds += 1;
            self.stale = false;
            self.base_changed.clear();
            self.base_loaded.clear();
            self.settled.clear();
            self.live_changed = None;
            self.live_due = true;
            return Ok(());
        }
        if self.settled.is_empty() && self.base_changed.is_empty() && self.base_loaded.is_empty() {
            return Ok(());
        }
        let settled = std::mem::take(&mut self.settled);
        let mut changed = self.view.settled_changes(&settled, &self.store)?;
        for seq in &settled {
            let written = self.view.remove(*seq);
            // A key the settled commits wrote and the base now holds as they wrote it
            // changes nothing; any other base change may.
            for k in written.into_keys() {
                self.base_changed.remove(&k);
            }
        }
        changed.append(&mut self.base_changed);
        let loaded = std::mem::take(&mut self.base_loaded);
        let mut queue = self.view.readers(&changed, 0);
        queue.append(&mut self.view.range_readers(&loaded, 0));
        let mut seen = changed;
        while let Some(seq) = queue.pop_first() {
            let Ok(i) = self.pending.binary_search_by_key(&seq, |p| p.seq) else {
                continue;
            };
            let before = self.view.remove(seq);
            self.run_pending(&schema, i)?;
            let after = self.view.written(seq);
            let mut moved = BTreeSet::new();
            for (k, v) in &before {
                if after.get(k) != Some(v) {
                    moved.insert(k.clone());
                }
            }
            for k in after.keys() {
                if !before.contains_key(k) {
                    moved.insert(k.clone());
                }
            }
            queue.extend(self.view.readers(&moved, seq));
            // One key at a time: `append` would rebuild `seen` whole for each commit
            // run again, and a confirmation that all pending commits read would cost
            // the square of their number.
            seen.extend(moved);
        }
        self.live_touched(seen);
        self.live_ranges(loaded);
        Ok(())
    }

    /// Runs pending commit `i` on the view it saw (the base and the layers of the
    /// commits before it) and lays its writes over the view.
    fn run_pending(&mut self, schema: &Schema, i: usize) -> Result<(), Error> {
        // The commit borrows the pending commit's op and the replica's auth for the
        // run (an op may hold a bulk write's documents: a copy for each run was a
        // tenth of a rebuild's time), and gives them back whatever the outcome.
        let p = &mut self.pending[i];
        let commit = Commit {
            client_id: exec::scoped_client_id(&self.auth, &self.client_id),
            client_seq: p.seq,
            schema_version: p.schema_version.clone(),
            timestamp: p.timestamp,
            auth: std::mem::take(&mut self.auth),
            op: std::mem::replace(
                &mut p.op,
                Op::Run {
                    source: String::new(),
                },
            ),
        };
        let ran = {
            let view = self.view.over(&self.store, commit.client_seq);
            let rec = Recorder::new(&view);
            match exec::execute_optimistic(&rec, schema, &commit, 0, &self.limits) {
                Ok(Outcome::Committed { writes, .. }) => {
                    exec::writes_batch(&rec, schema, &writes).map(|b| (b, rec.into_reads()))
                }
                Ok(_) => Ok((Batch::new(), rec.into_reads())),
                Err(e) => Err(e),
            }
        };
        self.pending[i].op = commit.op;
        self.auth = commit.auth;
        let (batch, reads) = ran?;
        self.view.insert(commit.client_seq, batch, reads);
        self.stats.reexecuted += 1;
        Ok(())
    }

    /// Live queries must look again at these keys.
    fn live_touched(&mut self, keys: BTreeSet<Vec<u8>>) {
        if keys.is_empty() {
            return;
        }
        if let Some(c) = &mut self.live_changed {
            c.keys.extend(keys);
        }
        self.live_due = true;
    }

    /// Live queries must look again at these ranges.
    fn live_ranges(&mut self, ranges: Vec<KeyRange>) {
        if ranges.is_empty() {
            return;
        }
        if let Some(c) = &mut self.live_changed {
            c.ranges.extend(ranges);
        }
        self.live_due = true;
    }

    fn notify_live(&mut self) -> Result<(), Error> {
        self.live_due = false;
        let changed = self.live_changed.replace(Changes::default());
        let ids: Vec<u64> = self.live.keys().copied().collect();
        for id in ids {
            if let Some(c) = &changed {
                if !c.meets(&self.live[&id].reads) {
                    continue;
                }
            }
            let source = self.live[&id].source.clone();
            let mut reads = Reads::default();
            self.stats.live_runs += 1;
            let now = match self.eval(&source, Some(&mut reads)) {
                Ok(v) => Ok(v),
                Err(e) if e.code.is_deterministic() => Err(e),
                Err(e) => return Err(e),
            };
            let live = self.live.get_mut(&id).expect("listed");
            live.reads = reads;
            if live.last.as_ref() != Some(&now) {
                if let Ok(v) = &now {
                    self.events.push(Event::Changed {
                        live: id,
                        value: v.clone(),
                    });
                }
                live.last = Some(now);
            }
        }
        Ok(())
    }
}

/// About the bytes a commit takes in a `Push` (without encoding it).
fn approx_size(schema_version: &str, op: &Op) -> usize {
    let op = match op {
        Op::Call { function, args } => function.len() + args.encoded_len(),
        Op::Run { source } => source.len(),
    };
    16 + schema_version.len() + op
}
