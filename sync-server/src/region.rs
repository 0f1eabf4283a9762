//! The region executor: applies the log in order and serves what each client may read.
//!
//! One thread owns the region's store and every connection's subscriptions, so that a
//! snapshot, the effects after it and a revocation can never race: a connection is
//! registered, snapshotted and then fed effects all in log order, by the same thread.
//!
//! For each log entry it runs the engine (`exec::commit_batch`: execute, quotas, and the
//! batch that records the outcome, applied into an overlay of the batch), charges the
//! time it took to the commit's identity (`crate::limits`), then for each connection
//! the entry can concern (see `Routes`):
//! - re-evaluates the read rules whose reads the entry's writes touched (a member
//!   removed from the team document the rule reads), and evaluates rules for
//!   (partition, collection) pairs the connection has not seen yet and may read
//!   (`warren_core::reach`);
//! - sends `Drop` for partitions it may no longer read and `Effects` with the entry's
//!   writes to partitions it holds; those it now may read are owed a snapshot;
//! - sends the entry's `Outcome` to the connection of the client that made it.
//!
//! At the end of the batch, the snapshots owed are queued as what to read
//! ([`LazySnapshot`]), and what their connections were sent after they became owed
//! follows them. Frames are handed over in bunches (every `FLUSH_EVERY` entries and at
//! the end of a batch) through a dispatcher task. Batches queued behind each other are
//! applied as one; their writes stay in an overlay over the store and reach it as one
//! transaction every `STORE_WRITE_EVERY` batches, and before anything else reads the
//! store for long (a catch-up, a snapshot). `docs/BENCHMARKS.md` ("Sync server vs
//! PostgreSQL") measures why.
//!
//! The interface, for what feeds a region (the sequencer; a follower of another
//! region's log): [`RegionMsg::Batch`] hands it durable entries in log order with the
//! [`crate::sequencer::Permit`] of the backlog they hold (dropped once applied);
//! [`RegionMsg::Connect`] / [`RegionMsg::Join`] / [`RegionMsg::Disconnect`] run a
//! connection's life; [`RegionMsg::Wait`] and [`RegionMsg::View`] serve HTTP.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use std::panic::AssertUnwindSafe;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use tokio::sync::oneshot;
use warren_core::entry::{self as log_entry, Applied, SchemaApplied};
use warren_core::eval::Limits;
use warren_core::exec::{self, Outcome, Skip, Write};
use warren_core::protocol::{codes, CommitResult, LogEntry, ServerFrame};
use warren_core::storage::{Batch, Layered, Overlay, OverlayWrites, Storage};
use warren_core::subscription::{
    kept_result, result_of, welcome, Out, SnapshotCursor, SnapshotRef, Subscription,
};
use warren_core::{Error, Schema, Value};

use crate::limits::Identities;
use crate::log::shared::{BatchRecord, Chain, RegionState};
use crate::metrics::{Comparison, Metrics};
use crate::queue::Item;
use crate::sequencer::Permit;
use crate::store::{RedbStore, Snapshot};

/// Encoded frames to one connection. Bounded in frames and in bytes: a client that
/// stops reading is dropped instead of growing the server's memory.
pub use crate::queue::FrameTx;

/// A connection asking to sync. The region registers it as joining and sends `views`
/// a read view; the session computes the welcome on it off the region thread and
/// hands it back with [`RegionMsg::Join`]. If the welcome comes back too late (the
/// entries applied meanwhile outgrew [`WINDOW_MAX_BYTES`]), the region sends a newer
/// view to compute it again on (at most [`MAX_CATCH_UP_TRIES`] in all).
pub struct Connect {
    pub conn: u64,
    pub client_id: String,
    pub auth: Value,
    pub tx: FrameTx,
    pub views: tokio::sync::mpsc::Sender<ReadView>,
}

/// The committed writes kept for joining connections (see [`Connect`]), in bytes
/// (their canonical data plus names), at most.
pub const WINDOW_MAX_BYTES: usize = 64 << 20;
/// How many read views one connection's welcome may be computed on.
pub const MAX_CATCH_UP_TRIES: u32 = 3;

/// A consistent read-only view of the region's state at one position, for work done
/// off the region thread (a connection's catch-up, an HTTP pull): the store as of its
/// last write, plus the applied writes not written to it yet.
pub struct ReadView {
    snapshot: Arc<Snapshot>,
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
        Layered::new(&*self.snapshot, &self.pending)
    }

    /// The schema in force at the view's position.
    pub fn schema(&self) -> &Arc<Schema> {
        &self.schema
    }

    /// The engine's limits the region executes with.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// What a client gets on connecting at this view's position (see
    /// [`warren_core::subscription::welcome`]).
    pub fn welcome(
        &self,
        client_id: &str,
        auth: &Value,
        cursors: &[(String, u64)],
        outbox_from: u64,
    ) -> Result<(Vec<Out>, Subscription), Error> {
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

impl ReadView {
    /// A snapshot to read later from this view, a part at a time (see
    /// [`LazySnapshot`]). The region makes such views with no applied writes outside
    /// the store (`Region::lasting_view`), so nothing is copied; otherwise only the
    /// writes that can matter to this partition are kept: its membership keys, and the
    /// documents that are in it.
    pub fn lazy(&self, snapshot: SnapshotRef) -> LazySnapshot {
        let member = warren_core::keys::partition_prefix(&snapshot.partition);
        let mut writes = OverlayWrites::new();
        for (k, v) in self.pending.iter() {
            let keep = k.starts_with(&member)
                || (k.first() == Some(&warren_core::keys::SPACE_DOC)
                    && v.as_ref().is_some_and(|v| {
                        warren_core::doc::StoredDoc::decode(v)
                            .is_ok_and(|d| d.partition == snapshot.partition)
                    }));
            if keep {
                writes.insert(k.clone(), v.clone());
            }
        }
        LazySnapshot {
            base: self.snapshot.clone(),
            writes,
            snapshot,
        }
    }
}

/// A snapshot queued for a connection as what to read, not as its documents: a read
/// view of the store (a redb read transaction) and the applied writes not in it yet
/// that concern the partition. The connection's writer reads it a part at a time, so a
/// large partition never sits whole in memory (`crate::queue`).
pub struct LazySnapshot {
    base: Arc<Snapshot>,
    writes: OverlayWrites,
    pub snapshot: SnapshotRef,
}

impl LazySnapshot {
    /// The next documents from `cursor` on, about `max_bytes` of them.
    pub fn read_part(
        &self,
        cursor: &mut SnapshotCursor,
        max_bytes: usize,
    ) -> Result<Vec<warren_core::protocol::SnapshotDoc>, Error> {
        let state = Overlay::with_writes(&*self.base, self.writes.clone());
        self.snapshot.read_part(&state, cursor, max_bytes)
    }

    /// The whole snapshot in one frame (an HTTP pull answers with it).
    pub fn read(&self) -> Result<ServerFrame, Error> {
        let state = Overlay::with_writes(&*self.base, self.writes.clone());
        self.snapshot.read(&state)
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
    views: tokio::sync::mpsc::Sender<ReadView>,
    /// Read views sent so far.
    tries: u32,
}

pub enum RegionMsg {
    /// Durable log entries with their positions, in order (the embedded log), and what
    /// they hold of the sequencer's backlog (given back once they are applied).
    Batch(Vec<(u64, LogEntry)>, Permit),
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
    /// A joining connection's welcome, computed on the read view at `at` (given back:
    /// the welcome's snapshots are read from it).
    Join {
        conn: u64,
        at: u64,
        welcome: Box<Result<(Vec<Out>, Subscription), Error>>,
        view: ReadView,
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
    /// A connection's presence message for the others that hold `partition`
    /// (`ServerFrame::Presence`; dropped unless the sender holds it too).
    Presence {
        conn: u64,
        from: String,
        partition: String,
        data: Vec<u8>,
    },
    /// Another region's presence message (crate::presence), for this region's
    /// connections that hold its partition.
    RemotePresence(crate::presence::Relayed),
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
/// those instead of every connection (and one user's writes to partitions nobody else
/// may read cost the others nothing).
///
/// A connection has a read-rule answer for every *candidate* (partition, collection)
/// pair that exists (see `warren_core::reach`): its welcome evaluates them, and later
/// ones are routed to it here. An entry's write to (p, c) concerns:
/// - the connections holding `p` (effects), and those whose rules read the written
///   document or scanned its collection (revocation, new access);
/// - if the pair is new (nothing was written to it before this entry), those for which
///   it may be a candidate: `p` named exactly or starting with a prefix of theirs, `c`
///   readable everywhere, or a member index key held by the document the partition
///   names;
/// - if the document belongs to a member index's source, the connections whose keys it
///   now holds (a member added: the partition it names may open).
///
/// The sets may hold connections that are gone or no longer concerned: they are looked
/// up and skipped, and each connection checks for itself.
#[derive(Default)]
struct Routes {
    holders: HashMap<String, BTreeSet<u64>>,
    exact: HashMap<String, BTreeSet<u64>>,
    /// Partition prefix → connections (`partition.startsWith(...)` rules).
    prefixes: HashMap<String, BTreeSet<u64>>,
    /// How many keys of `prefixes` have each length, so that a new partition is looked
    /// up at those lengths only, not at every one of its own.
    prefix_lens: BTreeMap<usize, usize>,
    everywhere: HashMap<String, BTreeSet<u64>>,
    /// (member index, encoded key) → connections.
    members: HashMap<(usize, Vec<u8>), BTreeSet<u64>>,
    /// Member index → connections with any key on it (for string fields).
    member_any: HashMap<usize, BTreeSet<u64>>,
    read_docs: HashMap<(String, String), BTreeSet<u64>>,
    read_colls: HashMap<String, BTreeSet<u64>>,
    /// What each connection is routed by now, to take it back.
    routed: HashMap<u64, Routed>,
    /// The (partition, collection) pairs written since the region started: a write to
    /// a pair not in it is treated as the pair's first (after a restart, that sends a
    /// few connections a write they already know about; they check for themselves).
    known: HashMap<String, HashSet<String>>,
}

#[derive(Default)]
struct Routed {
    held: BTreeSet<String>,
    docs: BTreeSet<(String, String)>,
    colls: BTreeSet<String>,
}

fn route<K: std::hash::Hash + Eq>(map: &mut HashMap<K, BTreeSet<u64>>, key: K, id: u64) {
    map.entry(key).or_default().insert(id);
}

fn unroute<K: std::hash::Hash + Eq>(map: &mut HashMap<K, BTreeSet<u64>>, key: &K, id: u64) {
    if let Some(ids) = map.get_mut(key) {
        ids.remove(&id);
        if ids.is_empty() {
            map.remove(key);
        }
    }
}

impl Routes {
    /// Routes a new connection: what its claims may reach, and what it holds and reads.
    fn add(&mut self, id: u64, sub: &mut Subscription) {
        let r = sub.reachable();
        for ps in r.exact.values() {
            for p in ps {
                route(&mut self.exact, p.clone(), id);
            }
        }
        // A prefix of several collections is routed once.
        for p in r.prefixes.values().flatten().collect::<BTreeSet<_>>() {
            if !self.prefixes.contains_key(p) {
                *self.prefix_lens.entry(p.len()).or_default() += 1;
            }
            route(&mut self.prefixes, p.clone(), id);
        }
        for c in &r.everywhere {
            route(&mut self.everywhere, c.clone(), id);
        }
        for m in &r.members {
            route(&mut self.members, (m.spec, m.encoded.clone()), id);
            route(&mut self.member_any, m.spec, id);
        }
        sub.take_changed();
        self.update(id, sub);
    }

    /// Routes what the connection holds and reads now, after a change.
    fn update(&mut self, id: u64, sub: &Subscription) {
        let old = self.routed.remove(&id).unwrap_or_default();
        let (docs, colls) = sub.watched_reads();
        let new = Routed {
            held: sub.held().clone(),
            docs,
            colls,
        };
        for p in old.held.difference(&new.held) {
            unroute(&mut self.holders, p, id);
        }
        for p in new.held.difference(&old.held) {
            route(&mut self.holders, p.clone(), id);
        }
        for d in old.docs.difference(&new.docs) {
            unroute(&mut self.read_docs, d, id);
        }
        for d in new.docs.difference(&old.docs) {
            route(&mut self.read_docs, d.clone(), id);
        }
        for c in old.colls.difference(&new.colls) {
            unroute(&mut self.read_colls, c, id);
        }
        for c in new.colls.difference(&old.colls) {
            route(&mut self.read_colls, c.clone(), id);
        }
        self.routed.insert(id, new);
    }

    fn forget(&mut self, id: u64, sub: &Subscription) {
        let r = sub.reachable();
        for ps in r.exact.values() {
            for p in ps {
                unroute(&mut self.exact, p, id);
            }
        }
        for p in r.prefixes.values().flatten().collect::<BTreeSet<_>>() {
            unroute(&mut self.prefixes, p, id);
            if !self.prefixes.contains_key(p) {
                if let Some(n) = self.prefix_lens.get_mut(&p.len()) {
                    *n -= 1;
                    if *n == 0 {
                        self.prefix_lens.remove(&p.len());
                    }
                }
            }
        }
        for c in &r.everywhere {
            unroute(&mut self.everywhere, c, id);
        }
        for m in &r.members {
            unroute(&mut self.members, &(m.spec, m.encoded.clone()), id);
            unroute(&mut self.member_any, &m.spec, id);
        }
        let old = self.routed.remove(&id).unwrap_or_default();
        for p in &old.held {
            unroute(&mut self.holders, p, id);
        }
        for d in &old.docs {
            unroute(&mut self.read_docs, d, id);
        }
        for c in &old.colls {
            unroute(&mut self.read_colls, c, id);
        }
    }

    /// The pairs `writes` write for the first time (see `known`), noted as known now.
    fn first_writes(&mut self, writes: &[Write]) -> BTreeSet<(String, String)> {
        let mut new = BTreeSet::new();
        for w in writes {
            let fresh = match self.known.get_mut(&w.partition) {
                Some(cs) => !cs.contains(&w.collection) && cs.insert(w.collection.clone()),
                None => {
                    self.known
                        .insert(w.partition.clone(), HashSet::from([w.collection.clone()]));
                    true
                }
            };
            if fresh {
                new.insert((w.partition.clone(), w.collection.clone()));
            }
        }
        new
    }

    /// The connections an entry's `writes` concern (see [`Routes`]); `new_pairs` are
    /// the written pairs that did not exist before the entry, `state` the state after it.
    fn visits(
        &self,
        state: &dyn Storage,
        schema: &Schema,
        writes: &[Write],
        new_pairs: &BTreeSet<(String, String)>,
    ) -> Result<BTreeSet<u64>, Error> {
        let reach = schema.reach();
        let mut visit = BTreeSet::new();
        let mut add = |ids: Option<&BTreeSet<u64>>| {
            if let Some(ids) = ids {
                visit.extend(ids.iter().copied());
            }
        };
        let add_member =
            |spec: usize, data: &Value, add: &mut dyn FnMut(Option<&BTreeSet<u64>>)| {
                let (keys, any) = reach.member_routes(spec, data);
                for k in keys {
                    add(self.members.get(&(spec, k)));
                }
                if any {
                    add(self.member_any.get(&spec));
                }
            };
        for w in writes {
            add(self.holders.get(&w.partition));
            if !self.read_docs.is_empty() {
                add(self.read_docs.get(&(w.collection.clone(), w.id.clone())));
            }
            add(self.read_colls.get(&w.collection));
            if let Some(data) = &w.data {
                for (i, spec) in reach.specs().iter().enumerate() {
                    if spec.source == w.collection {
                        add_member(i, data, &mut add);
                    }
                }
            }
            if new_pairs.contains(&(w.partition.clone(), w.collection.clone())) {
                add(self.exact.get(&w.partition));
                for n in self
                    .prefix_lens
                    .range(..=w.partition.len())
                    .map(|(n, _)| *n)
                {
                    if let Some(p) = w.partition.get(..n) {
                        add(self.prefixes.get(p));
                    }
                }
                add(self.everywhere.get(&w.collection));
                for (spec, prefix) in reach.member_clauses(&w.collection) {
                    let Some(id) = w.partition.strip_prefix(prefix) else {
                        continue;
                    };
                    let source = &reach.specs()[spec].source;
                    if let Some(b) = state.get(&warren_core::keys::doc_key(source, id))? {
                        let d = warren_core::doc::StoredDoc::decode(&b)?;
                        add_member(spec, &d.data, &mut add);
                    }
                }
            }
        }
        Ok(visit)
    }
}

struct Conn {
    tx: FrameTx,
    sub: Subscription,
}

/// Abandoned HTTP waiters are looked for once there are at least this many.
const MIN_WAITER_PRUNE: usize = 64;

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

fn frame_item(f: &ServerFrame) -> Item {
    Item::Frame(Arc::new(f.encode()))
}

pub struct Region {
    store: RedbStore,
    schema: Arc<Schema>,
    limits: Limits,
    metrics: Arc<Metrics>,
    conns: BTreeMap<u64, Conn>,
    by_client: BTreeMap<String, u64>,
    waiters: BTreeMap<(String, u64), Vec<oneshot::Sender<CommitResult>>>,
    /// Abandoned waiters are looked for when there are this many (see `Region::wait`).
    prune_waiters_at: usize,
    position: u64,
    /// Applied writes not yet written to the store (see [`STORE_WRITE_EVERY`]); shared
    /// with read views, copied only if one still holds it when the next batch comes.
    pending: Arc<OverlayWrites>,
    /// Batches applied into `pending` since the last store write.
    pending_batches: u32,
    routes: Routes,
    /// Connections whose welcome is being computed off the region thread.
    joining: BTreeMap<u64, Joining>,
    /// The committed writes of the entries applied since the oldest joining
    /// connection's read view (empty when none is joining), to bring its welcome up to
    /// date when it joins.
    window: VecDeque<(u64, Vec<Write>)>,
    /// The window's size (see [`WINDOW_MAX_BYTES`]), and the first position it still
    /// holds every entry from (a joining connection whose view is older must start
    /// again).
    window_bytes: usize,
    window_from: u64,
    window_max_bytes: usize,
    /// The task that hands frames to connections, when the region runs next to a
    /// tokio runtime (see [`spawn`]); without it the region hands them over itself.
    dispatch: Option<Dispatch>,
    /// Where each batch's [`Changes`] go.
    changes: tokio::sync::broadcast::Sender<Arc<Changes>>,
    /// The schema in force, for those that follow it (GraphQL).
    schema_tx: tokio::sync::watch::Sender<Arc<Schema>>,
    /// In a deployment of many regions: chains, digests, comparisons.
    shared: Option<SharedRegion>,
    /// Tells waiting clients (the Welcome barrier) which revision is applied.
    applied_tx: Option<tokio::sync::watch::Sender<i64>>,
    /// Told what each identity's commits cost (the gateway's budgets), if anyone is.
    costs: Option<Arc<Identities>>,
    /// In a deployment of many regions: where presence messages go for the others.
    relay: Option<crate::presence::Relay>,
}

/// Frames for the dispatcher task, in order.
type Dispatch = tokio::sync::mpsc::UnboundedSender<Vec<(FrameTx, Item)>>;

/// Hands frames to their connections' queues. Waking a connection's writer from the
/// region thread costs a system call and usually a context switch (the writer's worker
/// thread takes the CPU from the region); from a task on the runtime it is a push onto
/// a run queue. So the region wakes this task once per flush, and it wakes the writers.
/// A frame a queue does not take overflows it: its writer ends the connection with
/// `TOO_SLOW` and the session tells the region (`Disconnect`).
async fn dispatch(mut rx: tokio::sync::mpsc::UnboundedReceiver<Vec<(FrameTx, Item)>>) {
    while let Some(frames) = rx.recv().await {
        for (tx, frame) in frames {
            let _ = tx.try_send_item(frame);
        }
    }
}

impl Region {
    /// Hands a presence message to every other connection that holds `partition`
    /// now (what it holds, it may read: a revocation drops it first), if the sender
    /// holds it too; otherwise drops it. Never logged nor stored; a connection too
    /// slow to take it misses it.
    fn presence(&self, conn: u64, from: String, partition: String, data: Vec<u8>) {
        let Some(sender) = self.conns.get(&conn) else {
            return;
        };
        if !sender.sub.held().contains(&partition) {
            return;
        }
        if let Some(relay) = &self.relay {
            relay.send(crate::presence::Relayed {
                partition: partition.clone(),
                from: from.clone(),
                at_ms: crate::presence::now_ms(),
                data: data.clone(),
            });
        }
        self.deliver_presence(conn, from, partition, data);
    }

    /// Hands a presence message to this region's connections that hold `partition`
    /// now, but `sender` (0: from another region, whose region checked its sender).
    fn deliver_presence(&self, sender: u64, from: String, partition: String, data: Vec<u8>) {
        let conn = sender;
        let Some(holders) = self.routes.holders.get(&partition) else {
            return;
        };
        let frame = Arc::new(
            ServerFrame::Presence {
                partition: partition.clone(),
                from,
                data,
            }
            .encode(),
        );
        for id in holders.iter().filter(|id| **id != conn) {
            if let Some(c) = self.conns.get(id) {
                if c.sub.held().contains(&partition) {
                    Metrics::add(&self.metrics.frames_out, 1);
                    let _ = c.tx.try_send(frame.clone());
                }
            }
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
        let mut store = store;
        // The read-rule index's member entries follow the schema: made (or remade)
        // here when the state was written under another schema or before they existed.
        let rebuild = schema.reach().rebuild_ops(&store)?;
        if !rebuild.is_empty() {
            tracing::info!(
                keys = rebuild.len(),
                "rebuilding the read-rule member index"
            );
            store.apply(warren_core::storage::Batch { ops: rebuild })?;
            store.sync()?;
        }
        for (c, why) in schema.reach().unindexed() {
            tracing::warn!(
                collection = %c,
                "catch-up evaluates the read rule of {c} for every partition of {c}: {why}"
            );
        }
        let position = exec::position(&store)?;
        metrics.position.store(position, Ordering::Relaxed);
        let schema_tx = tokio::sync::watch::channel(schema.clone()).0;
        Ok(Region {
            store,
            schema,
            limits,
            metrics,
            conns: BTreeMap::new(),
            by_client: BTreeMap::new(),
            waiters: BTreeMap::new(),
            prune_waiters_at: MIN_WAITER_PRUNE,
            position,
            pending: Arc::new(OverlayWrites::new()),
            pending_batches: 0,
            routes: Routes::default(),
            joining: BTreeMap::new(),
            window: VecDeque::new(),
            window_bytes: 0,
            window_from: 0,
            window_max_bytes: WINDOW_MAX_BYTES,
            dispatch: None,
            changes: tokio::sync::broadcast::channel(CHANGES_BACKLOG).0,
            schema_tx,
            shared,
            applied_tx: None,
            costs: None,
            relay: None,
        })
    }

    /// The channel each applied batch's [`Changes`] go to (take it before the region
    /// starts; subscribe through it).
    pub fn changes(&self) -> tokio::sync::broadcast::Sender<Arc<Changes>> {
        self.changes.clone()
    }

    /// The schema in force, and each one a schema entry of the log switches to.
    pub fn schemas(&self) -> tokio::sync::watch::Receiver<Arc<Schema>> {
        self.schema_tx.subscribe()
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

    /// Charges each commit's cost (the region's time executing and recording it) to
    /// its identity in `costs` (see `crate::limits`).
    pub fn set_costs(&mut self, costs: Arc<Identities>) {
        self.costs = Some(costs);
    }

    /// Sends presence messages to the other regions through `relay` too.
    pub fn set_presence_relay(&mut self, relay: crate::presence::Relay) {
        self.relay = Some(relay);
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

    /// A read view of the current state for work that may take long and must hold no
    /// copy of the applied writes (a connection's catch-up, the snapshots it is sent a
    /// part at a time): the writes not in the store yet are written to it first, so
    /// the view is a redb read transaction alone and the region never has to copy
    /// writes a view still shares.
    fn lasting_view(&mut self) -> Result<ReadView, Error> {
        self.write_pending()?;
        self.view()
    }

    /// A read view of the current state.
    fn view(&self) -> Result<ReadView, Error> {
        Ok(ReadView {
            snapshot: Arc::new(self.store.snapshot()?),
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
                RegionMsg::Batch(entries, permit) => {
                    // Every batch already queued joins this one: one store transaction
                    // for all of them. Messages keep their order. The backlog's permits
                    // are given back once they are applied.
                    let mut batches = vec![Incoming::File(entries)];
                    let mut permits = vec![permit];
                    next = gather(&rx, &mut batches, &mut permits);
                    self.apply_batches(batches)?;
                    drop(permits);
                }
                RegionMsg::Shared { revision, record } => {
                    let mut batches = vec![Incoming::Shared { revision, record }];
                    let mut permits = Vec::new();
                    next = gather(&rx, &mut batches, &mut permits);
                    self.apply_batches(batches)?;
                    drop(permits);
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
                RegionMsg::Join {
                    conn,
                    at,
                    welcome,
                    view,
                } => self.join(conn, at, (*welcome)?, view)?,
                RegionMsg::Disconnect { conn } => {
                    if let Some(j) = self.joining.remove(&conn) {
                        if self.by_client.get(&j.client_id) == Some(&conn) {
                            self.by_client.remove(&j.client_id);
                        }
                        self.trim_window();
                    }
                    if let Some(c) = self.conns.remove(&conn) {
                        self.routes.forget(conn, &c.sub);
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
                        self.wait(client_id, seq, reply);
                    }
                }
                RegionMsg::View { reply } => {
                    let _ = reply.send(self.view()?);
                }
                RegionMsg::Presence {
                    conn,
                    from,
                    partition,
                    data,
                } => self.presence(conn, from, partition, data),
                RegionMsg::RemotePresence(m) => {
                    self.deliver_presence(0, m.from, m.partition, m.data)
                }
                RegionMsg::Stop => return Ok(()),
            }
        }
        Ok(())
    }

    /// Registers an HTTP push's wait for the outcome of (client, seq). A push abandoned
    /// before its commit reached the sequencer (the client went away) leaves a waiter
    /// whose commit never comes: waiters nobody listens to any more are forgotten
    /// whenever their number doubles, so they cannot pile up.
    fn wait(&mut self, client_id: String, seq: u64, reply: oneshot::Sender<CommitResult>) {
        if self.waiter_count() >= self.prune_waiters_at {
            self.waiters.retain(|_, ws| {
                ws.retain(|w| !w.is_closed());
                !ws.is_empty()
            });
            self.prune_waiters_at = (2 * self.waiter_count()).max(MIN_WAITER_PRUNE);
        }
        self.waiters
            .entry((client_id, seq))
            .or_default()
            .push(reply);
    }

    /// HTTP pushes waiting for outcomes.
    pub fn waiter_count(&self) -> usize {
        self.waiters.values().map(Vec::len).sum()
    }

    /// Sends a frame after every frame handed to the dispatcher before it.
    fn send_after(&self, tx: &FrameTx, frame: &ServerFrame) {
        Metrics::add(&self.metrics.frames_out, 1);
        let f = frame_item(frame);
        match &self.dispatch {
            Some(d) => {
                if let Err(e) = d.send(vec![(tx.clone(), f)]) {
                    for (tx, f) in e.0 {
                        let _ = tx.try_send_item(f);
                    }
                }
            }
            None => {
                let _ = tx.try_send_item(f);
            }
        }
    }

    fn close_all(&mut self, code: &str, message: &str) {
        close_conns(
            &mut self.conns,
            &mut self.by_client,
            &mut self.routes,
            &mut self.joining,
            &self.metrics,
            &self.dispatch,
            code,
            message,
        );
        self.window.clear();
        self.window_bytes = 0;
    }

    /// Registers a joining connection and hands its session a read view to compute
    /// the welcome on. One connection per client id: a new one takes over (the old
    /// one is closed).
    fn connect(&mut self, c: Connect) -> Result<(), Error> {
        if let Some(old) = self.by_client.insert(c.client_id.clone(), c.conn) {
            let tx = match (self.conns.remove(&old), self.joining.remove(&old)) {
                (Some(o), _) => {
                    self.routes.forget(old, &o.sub);
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
        let view = self.lasting_view()?;
        if self.joining.is_empty() {
            self.window_from = view.position;
        }
        self.joining.insert(
            c.conn,
            Joining {
                tx: c.tx,
                client_id: c.client_id,
                from: view.position,
                outcomes: Vec::new(),
                views: c.views.clone(),
                tries: 1,
            },
        );
        let _ = c.views.try_send(view);
        Ok(())
    }

    /// A joining connection's welcome (computed at `at`) arrived: brings it up to the
    /// current position with the entries applied since, sends it all, and registers
    /// the connection.
    fn join(
        &mut self,
        conn: u64,
        at: u64,
        (frames, mut sub): (Vec<Out>, Subscription),
        view: ReadView,
    ) -> Result<(), Error> {
        let Some(mut j) = self.joining.remove(&conn) else {
            return Ok(()); // gone, or taken over, meanwhile
        };
        if at < self.window_from {
            // The entries since `at` are no longer all kept: compute it again on a newer
            // view, or give up.
            if j.tries >= MAX_CATCH_UP_TRIES {
                self.send_after(
                    &j.tx,
                    &ServerFrame::Error {
                        code: codes::TOO_SLOW.into(),
                        message: "the catch-up could not keep up with the log; reconnect later"
                            .into(),
                    },
                );
                if self.by_client.get(&j.client_id) == Some(&conn) {
                    self.by_client.remove(&j.client_id);
                }
                self.trim_window();
                return Ok(());
            }
            let view = self.lasting_view()?;
            j.from = view.position;
            j.tries += 1;
            let _ = j.views.try_send(view);
            self.joining.insert(conn, j);
            self.trim_window();
            return Ok(());
        }
        // The welcome's snapshots are read from the view it was computed on.
        let mut frames: Vec<Item> = frames
            .into_iter()
            .map(|o| match o {
                Out::Frame(f) => frame_item(&f),
                Out::Snapshot(r) => Item::Snapshot(Arc::new(view.lazy(r))),
            })
            .collect();
        drop(view);
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
                &mut |f| frames.push(frame_item(&f)),
            );
            self.pending = Arc::new(state.into_writes());
            r?;
            if sub.has_due() {
                let view = self.lasting_view()?;
                for r in sub.snapshots_due(self.position) {
                    frames.push(Item::Snapshot(Arc::new(view.lazy(r))));
                }
            }
        }
        frames.extend(j.outcomes.into_iter().map(Item::Frame));
        Metrics::add(&self.metrics.rules_catch_up, sub.take_evaluated());
        self.trim_window();
        // Everything the welcome says must fit the connection's queue, or the client
        // would see a gap; if it does not, nothing is registered (the queue overflowed:
        // its writer ends the connection with TOO_SLOW).
        for f in frames {
            Metrics::add(&self.metrics.frames_out, 1);
            if j.tx.try_send_item(f).is_err() {
                if self.by_client.get(&j.client_id) == Some(&conn) {
                    self.by_client.remove(&j.client_id);
                }
                return Ok(());
            }
        }
        self.routes.add(conn, &mut sub);
        let conn_state = Conn { tx: j.tx, sub };
        self.conns.insert(conn, conn_state);
        self.metrics
            .connections
            .store(self.conns.len() as u64, Ordering::Relaxed);
        Ok(())
    }

    /// Forgets the window's entries no joining connection needs.
    fn trim_window(&mut self) {
        match self.joining.values().map(|j| j.from).min() {
            None => {
                self.window.clear();
                self.window_bytes = 0;
                self.window_from = self.position;
            }
            Some(from) => {
                while self.window.front().is_some_and(|(pos, _)| *pos <= from) {
                    if let Some((_, w)) = self.window.pop_front() {
                        self.window_bytes -= writes_bytes(&w);
                    }
                }
                self.window_from = self.window_from.max(from);
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

    /// Applies commits as one batch of the embedded log (the unit tests' way in).
    #[cfg(test)]
    fn apply_batch(
        &mut self,
        entries: Vec<(u64, warren_core::exec::Commit)>,
    ) -> Result<(), RegionError> {
        let entries = entries
            .into_iter()
            .map(|(p, c)| (p, LogEntry::Commit(c)))
            .collect();
        self.apply_batches(vec![Incoming::File(entries)])
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
            routes,
            joining,
            window,
            window_bytes,
            window_from,
            window_max_bytes,
            dispatch,
            changes,
            schema_tx,
            shared,
            applied_tx,
            costs,
            ..
        } = self;
        // The keys live queries watch, collected only while someone listens.
        let mut changed: Option<Vec<Vec<u8>>> = (changes.receiver_count() > 0).then(Vec::new);
        let mut charges: BTreeMap<String, (u64, u32)> = BTreeMap::new();
        let taken = std::mem::take(pending);
        let mut overlay = Overlay::with_writes(
            &*store,
            Arc::try_unwrap(taken).unwrap_or_else(|shared| (*shared).clone()),
        );
        // Frames for connections, queued in order and handed over every FLUSH_EVERY
        // entries: one wake-up of a connection's writer carries many frames.
        let mut out: Vec<(u64, Item)> = Vec::new();
        let mut since_flush = 0;
        // Connections owed snapshots, sent once the batch is applied; what they are sent
        // after the snapshot became due waits for it (an outcome must not come before
        // the effects it confirms).
        let mut due: BTreeSet<u64> = BTreeSet::new();
        // What is held is sent after the snapshots, without what concerns their
        // partitions (the snapshots hold it, or replace it): such a `Drop`, such writes.
        let mut held: BTreeMap<u64, Vec<Held>> = BTreeMap::new();
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
                let ran = Instant::now();
                let (b, applied) = log_entry::entry_batch(&overlay, schema, entry, pos, limits)?;
                if let Some(keys) = &mut changed {
                    keys.extend(
                        b.ops
                            .iter()
                            .map(|(k, _)| k)
                            .filter(|k| {
                                matches!(
                                    k.first(),
                                    Some(
                                        &warren_core::keys::SPACE_DOC
                                            | &warren_core::keys::SPACE_INDEX
                                    )
                                )
                            })
                            .cloned(),
                    );
                }
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
                        schema_tx.send_replace(new.clone());
                        *schema = new;
                        // Every client learns the new schema in a new welcome (and
                        // re-runs its pending commits under it): what it was sent
                        // before this position goes first. Welcomes being computed on
                        // the old schema are dropped too, and so are the frames held
                        // behind snapshots owed (the new welcome replaces them).
                        due.clear();
                        held.clear();
                        flush(&mut out, conns, by_client, routes, metrics, dispatch);
                        since_flush = 0;
                        close_conns(
                            conns,
                            by_client,
                            routes,
                            joining,
                            metrics,
                            dispatch,
                            codes::SCHEMA_CHANGED,
                            "the schema changed; reconnect for the new one",
                        );
                        window.clear();
                        *window_bytes = 0;
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
                if let Outcome::Rejected {
                    code: warren_core::ErrorCode::Internal,
                    ..
                } = &outcome
                {
                    // A bug in the engine, caught: the entry is rejected the same way on
                    // every replica and the region goes on, but someone must look.
                    tracing::error!(
                        position = pos,
                        client = %commit.client_id,
                        seq = commit.client_seq,
                        "the engine failed inside while executing this log entry; it is rejected \
                         with INTERNAL_ERROR on every replica and the region goes on (a bug: report it)"
                    );
                }
                let writes: &[Write] = match &outcome {
                    Outcome::Committed { writes, .. } => writes,
                    _ => &[],
                };
                // The pairs this entry writes first (see `Routes`).
                let new_pairs = routes.first_writes(writes);
                if costs.is_some() {
                    let micros = ran.elapsed().as_micros() as u64;
                    let c = charges.entry(exec::subject(&commit.auth)).or_default();
                    c.0 += micros;
                    c.1 += 1;
                }
                match &outcome {
                    Outcome::Committed { .. } => Metrics::add(&metrics.commits_committed, 1),
                    Outcome::Rejected { code, .. } => metrics.rejected(code.as_str()),
                    Outcome::Skipped(_) => Metrics::add(&metrics.commits_duplicate, 1),
                }
                if !joining.is_empty() && !writes.is_empty() {
                    *window_bytes += writes_bytes(writes);
                    window.push_back((pos, writes.to_vec()));
                    // Bounded: the oldest entries go, and the connections whose views are
                    // older compute their welcome again when it comes (see `join`).
                    while *window_bytes > *window_max_bytes {
                        let Some((p, w)) = window.pop_front() else {
                            break;
                        };
                        *window_bytes -= writes_bytes(&w);
                        *window_from = p;
                    }
                }
                if !writes.is_empty() {
                    for id in routes.visits(&overlay, schema, writes, &new_pairs)? {
                        if let Some(conn) = conns.get_mut(&id) {
                            let waits = due.contains(&id);
                            // As for execution, a panic of the engine (a bug) must not
                            // stop the region: it costs this connection (`drop_broken`).
                            let routed = std::panic::catch_unwind(AssertUnwindSafe(|| {
                                conn.sub
                                    .fanout(&overlay, schema, limits, pos, writes, &mut |f| {
                                        if waits {
                                            held.entry(id).or_default().push(Held::Frame(f));
                                        } else {
                                            out.push((id, frame_item(&f)));
                                        }
                                    })
                            }));
                            let Ok(routed) = routed else {
                                held.remove(&id);
                                drop_broken(conns, by_client, routes, metrics, id, pos);
                                continue;
                            };
                            routed?;
                            if conn.sub.has_due() {
                                due.insert(id);
                            }
                            if conn.sub.take_changed() {
                                routes.update(id, &conn.sub);
                            }
                            Metrics::add(&metrics.rules_fanout, conn.sub.take_evaluated());
                        }
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
                        None if due.contains(&conn_id) => {
                            held.entry(conn_id).or_default().push(Held::Encoded(frame))
                        }
                        None => out.push((conn_id, Item::Frame(frame))),
                    }
                }
                since_flush += 1;
                if since_flush >= FLUSH_EVERY {
                    flush(&mut out, conns, by_client, routes, metrics, dispatch);
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
        flush(&mut out, conns, by_client, routes, metrics, dispatch);
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
        if let Some(keys) = changed {
            // No listener left is no error: the next batch looks again.
            let _ = changes.send(Arc::new(Changes {
                position: *position,
                keys,
            }));
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
        // The snapshots owed, at the batch's end: read later by each connection's
        // writer, a part at a time, from a view of the state now.
        if !due.is_empty() {
            // As `lasting_view`: the store takes the applied writes first.
            if !pending.is_empty() {
                *pending_batches = 0;
                let taken = std::mem::take(pending);
                let writes = Arc::try_unwrap(taken).unwrap_or_else(|shared| (*shared).clone());
                let batch = Overlay::with_writes(&*store, writes).take_batch();
                store_apply(store, metrics, shared.is_some(), batch)?;
            }
            let view = ReadView {
                snapshot: Arc::new(store.snapshot()?),
                pending: pending.clone(),
                position: *position,
                schema: schema.clone(),
                limits: limits.clone(),
            };
            for id in due {
                let mut snapshotted = BTreeSet::new();
                if let Some(conn) = conns.get_mut(&id) {
                    for r in conn.sub.snapshots_due(*position) {
                        snapshotted.insert(r.partition.clone());
                        out.push((id, Item::Snapshot(Arc::new(view.lazy(r)))));
                    }
                }
                for h in held.remove(&id).unwrap_or_default() {
                    if let Some(f) = h.without(&snapshotted) {
                        out.push((id, f));
                    }
                }
            }
            flush(&mut out, conns, by_client, routes, metrics, dispatch);
        }
        if let Some(costs) = costs {
            let charges: Vec<(String, u64, u32)> = charges
                .into_iter()
                .map(|(sub, (m, n))| (sub, m, n))
                .collect();
            costs.charge(&charges);
        }
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
fn gather(
    rx: &Receiver<RegionMsg>,
    batches: &mut Vec<Incoming>,
    permits: &mut Vec<Permit>,
) -> Option<RegionMsg> {
    let mut n: usize = batches
        .iter()
        .map(|b| match b {
            Incoming::File(e) => e.len(),
            Incoming::Shared { record, .. } => record.entries.len().max(1),
        })
        .sum();
    while n < MAX_APPLY {
        match rx.try_recv() {
            Ok(RegionMsg::Batch(more, permit)) => {
                n += more.len();
                permits.push(permit);
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
    routes: &mut Routes,
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
    let frames: Vec<(FrameTx, Item)> = conns
        .values()
        .map(|c| c.tx.clone())
        .chain(joining.values().map(|j| j.tx.clone()))
        .map(|tx| (tx, Item::Frame(frame.clone())))
        .collect();
    Metrics::add(&metrics.frames_out, frames.len() as u64);
    match dispatch {
        Some(d) => {
            if let Err(e) = d.send(frames) {
                for (tx, f) in e.0 {
                    let _ = tx.try_send_item(f);
                }
            }
        }
        None => {
            for (tx, f) in frames {
                let _ = tx.try_send_item(f);
            }
        }
    }
    conns.clear();
    joining.clear();
    by_client.clear();
    *routes = Routes {
        known: std::mem::take(&mut routes.known),
        ..Routes::default()
    };
    metrics.connections.store(0, Ordering::Relaxed);
}

/// Closes connection `id`, whose subscription the engine failed inside of (a panic
/// while routing the entry at `position` to it): it is told `INTERNAL` and may
/// connect again (its new welcome is computed afresh); the region goes on.
fn drop_broken(
    conns: &mut BTreeMap<u64, Conn>,
    by_client: &mut BTreeMap<String, u64>,
    routes: &mut Routes,
    metrics: &Metrics,
    id: u64,
    position: u64,
) {
    tracing::error!(
        conn = id,
        position,
        "the engine failed inside while routing this log entry to a connection; the \
         connection is closed with INTERNAL and the region goes on (a bug: report it)"
    );
    let Some(c) = conns.remove(&id) else {
        return;
    };
    routes.forget(id, &c.sub);
    if by_client.get(c.sub.client_id()) == Some(&id) {
        by_client.remove(c.sub.client_id());
    }
    Metrics::add(&metrics.frames_out, 1);
    let _ = c.tx.try_send_item(frame_item(&ServerFrame::Error {
        code: codes::INTERNAL.to_owned(),
        message: "the server failed inside while sending you an update (a bug); reconnect"
            .to_owned(),
    }));
    metrics
        .connections
        .store(conns.len() as u64, Ordering::Relaxed);
}

/// A frame held back behind the snapshots a connection is owed (see `apply_batch`).
enum Held {
    Frame(ServerFrame),
    Encoded(Frame),
}

impl Held {
    /// The frame to send after snapshots of `snapshotted` partitions at the batch's
    /// end: without its writes to them, and not at all if it is a `Drop` of one of
    /// them or has no write left.
    fn without(self, snapshotted: &BTreeSet<String>) -> Option<Item> {
        match self {
            Held::Encoded(f) => Some(Item::Frame(f)),
            Held::Frame(ServerFrame::Drop { partition, .. })
                if snapshotted.contains(&partition) =>
            {
                None
            }
            Held::Frame(ServerFrame::Effects { position, writes }) => {
                let writes: Vec<Write> = writes
                    .into_iter()
                    .filter(|w| !snapshotted.contains(&w.partition))
                    .collect();
                (!writes.is_empty()).then(|| frame_item(&ServerFrame::Effects { position, writes }))
            }
            Held::Frame(f) => Some(frame_item(&f)),
        }
    }
}

/// The size a window entry is counted at.
fn writes_bytes(writes: &[Write]) -> usize {
    writes
        .iter()
        .map(|w| {
            64 + w.collection.len()
                + w.id.len()
                + w.partition.len()
                + w.data.as_ref().map_or(0, Value::encoded_len)
        })
        .sum()
}

/// Hands queued frames to their connections, in order: through the dispatcher task
/// when there is one. Otherwise a connection whose queue does not take a frame is too
/// slow: it is told (best effort) and forgotten, and the rest of its frames are dropped.
fn flush(
    out: &mut Vec<(u64, Item)>,
    conns: &mut BTreeMap<u64, Conn>,
    by_client: &mut BTreeMap<String, u64>,
    routes: &mut Routes,
    metrics: &Metrics,
    dispatch: &Option<Dispatch>,
) {
    if out.is_empty() {
        return;
    }
    if let Some(d) = dispatch {
        let frames: Vec<(FrameTx, Item)> = out
            .drain(..)
            .filter_map(|(id, f)| Some((conns.get(&id)?.tx.clone(), f)))
            .collect();
        Metrics::add(&metrics.frames_out, frames.len() as u64);
        if let Err(e) = d.send(frames) {
            // The runtime is stopping: hand them over directly.
            for (tx, f) in e.0 {
                let _ = tx.try_send_item(f);
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
        if c.tx.try_send_item(frame).is_err() {
            gone.push(id);
        }
    }
    for id in gone {
        if let Some(c) = conns.remove(&id) {
            routes.forget(id, &c.sub);
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::queue::Received;
    use warren_core::exec::Commit;
    use warren_core::exec::Op;

    fn region(name: &str) -> (Region, std::path::PathBuf) {
        let dir = std::env::temp_dir().join(format!("warren-region-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let store = RedbStore::open(&dir.join("state.redb"), 1).unwrap();
        let schema = Arc::new(
            Schema::parse("collection A {\n allow read true\n allow create true\n}").unwrap(),
        );
        let r = Region::new(
            store,
            schema,
            Limits::default(),
            Arc::new(Metrics::default()),
        );
        (r.unwrap(), dir)
    }

    #[test]
    fn abandoned_http_waiters_do_not_pile_up() {
        let (mut r, dir) = region("waiters");
        // 10,000 pushes abandoned before their commits reached the sequencer.
        for seq in 1..=10_000 {
            let (tx, rx) = oneshot::channel();
            r.wait("c".into(), seq, tx);
            drop(rx);
        }
        assert!(
            r.waiter_count() <= 2 * MIN_WAITER_PRUNE,
            "{}",
            r.waiter_count()
        );
        // One still listened to is kept and answered.
        let (tx, mut rx) = oneshot::channel();
        r.wait("c".into(), 1, tx);
        for seq in 10_001..=10_500 {
            let (tx, rx) = oneshot::channel();
            r.wait("c".into(), seq, tx);
            drop(rx);
        }
        let commit = Commit {
            client_id: "c".into(),
            client_seq: 1,
            schema_version: String::new(),
            timestamp: 1,
            auth: Value::Null,
            op: Op::Run {
                source: "1 + 1".into(),
            },
        };
        r.apply_batch(vec![(1, commit)]).unwrap();
        match rx.try_recv() {
            Ok(CommitResult::Committed { position: 1, .. }) => {}
            other => panic!("{other:?}"),
        }
        drop(r);
        let _ = std::fs::remove_dir_all(dir);
    }

    fn create(seq: u64, bytes: usize) -> Commit {
        Commit {
            client_id: "writer".into(),
            client_seq: seq,
            schema_version: String::new(),
            timestamp: 1,
            auth: Value::Null,
            op: Op::Run {
                source: format!(
                    "A.create({{ id: \"a{seq}\", body: \"{}\" }})",
                    "x".repeat(bytes)
                ),
            },
        }
    }

    #[test]
    fn a_late_welcome_is_computed_again_once_the_window_outgrew_its_bound() {
        let (mut r, dir) = region("window");
        r.window_max_bytes = 4096;
        let (tx, mut rx) = crate::queue::channel(100, 1 << 20);
        let (views_tx, mut views) = tokio::sync::mpsc::channel(1);
        r.connect(Connect {
            conn: 7,
            client_id: "c".into(),
            auth: Value::Null,
            tx,
            views: views_tx,
        })
        .unwrap();
        let mut seq = 0;
        let mut tries = 0;
        loop {
            let view = views.try_recv().expect("a view to compute on");
            tries += 1;
            let at = view.position;
            let welcome = view.welcome("c", &Value::Null, &[], 0).unwrap();
            // While it is computed, 10 entries of 1 KB: more than the window holds.
            if tries <= 2 {
                for _ in 0..10 {
                    seq += 1;
                    r.apply_batch(vec![(seq, create(seq, 1000))]).unwrap();
                }
                assert!(r.window_bytes <= 4096, "{}", r.window_bytes);
            }
            r.join(7, at, welcome, view).unwrap();
            if tries <= 2 {
                assert!(r.conns.is_empty(), "joined with a gap at try {tries}");
                continue;
            }
            break;
        }
        assert!(r.conns.contains_key(&7));
        assert!(r.window.is_empty());
        // Its welcome (on the third view, at 20) holds every document.
        let Received::Frame(f) = rx.recv_now() else {
            panic!("no welcome");
        };
        assert!(matches!(
            ServerFrame::decode(&f).unwrap(),
            ServerFrame::Welcome { position: 20, .. }
        ));
        // Its snapshot is queued to be read from the view, at 20.
        let Received::Snapshot(lazy) = rx.recv_now() else {
            panic!("no snapshot");
        };
        match lazy.read().unwrap() {
            ServerFrame::Snapshot { docs, position, .. } => {
                assert_eq!((docs.len(), position), (20, 20))
            }
            other => panic!("{other:?}"),
        }
        drop(r);
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn a_welcome_that_never_catches_up_ends_with_too_slow() {
        let (mut r, dir) = region("window-slow");
        r.window_max_bytes = 4096;
        let (tx, mut rx) = crate::queue::channel(100, 1 << 20);
        let (views_tx, mut views) = tokio::sync::mpsc::channel(1);
        r.connect(Connect {
            conn: 7,
            client_id: "c".into(),
            auth: Value::Null,
            tx,
            views: views_tx,
        })
        .unwrap();
        let mut seq = 0;
        for _ in 0..MAX_CATCH_UP_TRIES {
            let view = views.try_recv().expect("a view");
            let at = view.position;
            let welcome = view.welcome("c", &Value::Null, &[], 0).unwrap();
            for _ in 0..10 {
                seq += 1;
                r.apply_batch(vec![(seq, create(seq, 1000))]).unwrap();
            }
            r.join(7, at, welcome, view).unwrap();
        }
        assert!(r.joining.is_empty() && r.conns.is_empty());
        assert!(views.try_recv().is_err());
        let Received::Frame(f) = rx.recv_now() else {
            panic!("no error");
        };
        assert!(matches!(
            ServerFrame::decode(&f).unwrap(),
            ServerFrame::Error { code, .. } if code == codes::TOO_SLOW
        ));
        drop(r);
        let _ = std::fs::remove_dir_all(dir);
    }

    /// A connection granted a partition by an entry gets its snapshot at the end of
    /// the batch; its own outcome of that entry (and whatever else comes after) waits
    /// for it: an outcome never confirms a write the client does not have yet.
    #[test]
    fn an_outcome_waits_for_the_snapshot_its_entry_made_due() {
        let dir = std::env::temp_dir().join(format!("warren-region-due-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let store = RedbStore::open(&dir.join("state.redb"), 1).unwrap();
        let schema = Arc::new(
            Schema::parse(
                "collection N {\n partition \"p:\" + doc.p\n allow read partition == \"p:\" + auth.sub\n allow create true\n}",
            )
            .unwrap(),
        );
        let mut r = Region::new(
            store,
            schema,
            Limits::default(),
            Arc::new(Metrics::default()),
        )
        .unwrap();
        let ann = warren_core::value::obj([("sub", "ann".into())]);
        let (tx, mut rx) = crate::queue::channel(100, 1 << 20);
        let (views_tx, mut views) = tokio::sync::mpsc::channel(1);
        r.connect(Connect {
            conn: 1,
            client_id: "c".into(),
            auth: ann.clone(),
            tx,
            views: views_tx,
        })
        .unwrap();
        let view = views.try_recv().unwrap();
        let welcome = view.welcome("c", &ann, &[], 0).unwrap();
        r.join(1, view.position, welcome, view).unwrap();
        assert!(matches!(rx.recv_now(), Received::Frame(_)), "the welcome");
        // ann's first note makes p:ann readable to her, in her own commit.
        let commit = Commit {
            client_id: "c".into(),
            client_seq: 1,
            schema_version: String::new(),
            timestamp: 1,
            auth: ann.clone(),
            op: Op::Run {
                source: "N.create({ id: \"a\", p: \"ann\" })".into(),
            },
        };
        r.apply_batch(vec![(1, commit)]).unwrap();
        let Received::Snapshot(lazy) = rx.recv_now() else {
            panic!("the snapshot first");
        };
        assert!(
            matches!(lazy.read().unwrap(), ServerFrame::Snapshot { ref docs, .. } if docs.len() == 1)
        );
        let Received::Frame(f) = rx.recv_now() else {
            panic!("then the outcome");
        };
        assert!(matches!(
            ServerFrame::decode(&f).unwrap(),
            ServerFrame::Outcome { seq: 1, .. }
        ));
        drop(r);
        let _ = std::fs::remove_dir_all(dir);
    }

    /// In one batch, while another snapshot is owed, a partition is written, revoked
    /// and granted again: its `Effects` and its `Drop` (held behind the owed snapshots)
    /// are not sent after its own snapshot, which would bring back an old document or
    /// leave the client without a partition it may read; another partition's `Drop`
    /// still is.
    #[test]
    fn a_drop_overtaken_by_its_partitions_snapshot_is_not_sent() {
        let dir = std::env::temp_dir().join(format!("warren-region-redrop-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let store = RedbStore::open(&dir.join("state.redb"), 1).unwrap();
        let schema = Arc::new(
            Schema::parse(
                "collection Team {\n partition \"team:\" + doc.id\n allow read Team.byId(partition.slice(5))?.members?.includes(auth.sub) == true\n allow create true\n allow update true\n}",
            )
            .unwrap(),
        );
        let mut r = Region::new(
            store,
            schema,
            Limits::default(),
            Arc::new(Metrics::default()),
        )
        .unwrap();
        let run = |seq: u64, source: &str| Commit {
            client_id: "admin".into(),
            client_seq: seq,
            schema_version: String::new(),
            timestamp: 1,
            auth: warren_core::value::obj([("sub", "root".into())]),
            op: Op::Run {
                source: source.into(),
            },
        };
        r.apply_batch(vec![
            (
                1,
                run(
                    1,
                    "Team.create({ id: \"t\", members: [\"root\", \"ann\"] })",
                ),
            ),
            (
                2,
                run(
                    2,
                    "Team.create({ id: \"v\", members: [\"root\", \"ann\"] })",
                ),
            ),
        ])
        .unwrap();
        let ann = warren_core::value::obj([("sub", "ann".into())]);
        let (tx, mut rx) = crate::queue::channel(100, 1 << 20);
        let (views_tx, mut views) = tokio::sync::mpsc::channel(1);
        r.connect(Connect {
            conn: 1,
            client_id: "c".into(),
            auth: ann.clone(),
            tx,
            views: views_tx,
        })
        .unwrap();
        let view = views.try_recv().unwrap();
        let welcome = view.welcome("c", &ann, &[], 0).unwrap();
        r.join(1, view.position, welcome, view).unwrap();
        // Welcome, and snapshots of team:t and team:v.
        for _ in 0..3 {
            assert!(!matches!(rx.recv_now(), Received::Closed));
        }
        r.apply_batch(vec![
            (3, run(3, "Team.create({ id: \"u\", members: [\"root\", \"ann\"] })")),
            (4, run(4, "Team.byId(\"t\").update({ name: \"renamed\" })")),
            (5, run(5, "Team.byId(\"t\").update({ members: [\"root\"] })\nTeam.byId(\"v\").update({ members: [\"root\"] })")),
            (6, run(6, "Team.byId(\"t\").update({ members: [\"root\", \"ann\"] })")),
        ])
        .unwrap();
        assert_eq!(r.metrics.commits_committed.load(Ordering::Relaxed), 6);
        let mut got = Vec::new();
        loop {
            match rx.recv_now() {
                Received::Frame(f) => match ServerFrame::decode(&f).unwrap() {
                    ServerFrame::Drop { partition, .. } => got.push(format!("drop {partition}")),
                    other => got.push(format!("{other:?}")),
                },
                Received::Snapshot(l) => got.push(format!("snapshot {}", l.snapshot.partition)),
                _ => break,
            }
        }
        assert_eq!(got, ["snapshot team:t", "snapshot team:u", "drop team:v"]);
        drop(r);
        let _ = std::fs::remove_dir_all(dir);
    }
}
