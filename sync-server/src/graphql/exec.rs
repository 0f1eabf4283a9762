//! Running GraphQL fields through the engine: reads on snapshots, mutations as commits,
//! live queries.
//!
//! - **Reads** run `warren_core::exec::query` (read rules, fuel, limits) on a
//!   [`ReadView`] of the region's state, on tokio's blocking pool, never on the region
//!   thread. At most `graphql_concurrency` run at once, and at most
//!   `graphql_concurrency_per_identity` of one identity ([`Gate`]): one identity's
//!   queries wait for each other, not for everyone else's.
//! - **Mutations** are commits of `Op::Call`, sent to the sequencer like a push and
//!   answered with their outcome. Their client id and sequence number: see
//!   [`Sequences`] and `docs/GRAPHQL.md` ("Mutations, exactly once").
//! - **Live queries** (`live`) record the keys and key ranges a run read
//!   ([`ReadKeys`]); each batch the region applies publishes the document and index
//!   keys it wrote, and a live query runs again only when one of them falls in what it
//!   read, then sends its result only if it changed.

use std::cell::RefCell;
use std::collections::{BTreeSet, HashMap};
use std::ops::Bound;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use sha2::{Digest, Sha256};
use tokio::sync::{broadcast, oneshot, OwnedSemaphorePermit, Semaphore};
use warren_core::exec::{Commit, Op};
use warren_core::protocol::{codes as protocol_codes, CommitResult};
use warren_core::storage::{Batch, Entry, KeyRange, Storage};
use warren_core::{Error, ErrorCode, Value};

use super::program::{Cursor, PageRequest};
use super::{codes, engine_error, error, Caller, Service};
use crate::gateway::{self, GatewayLimits};
use crate::limits::Budget;
use crate::region::{Changes, ReadView, RegionMsg};

/// Bounds concurrent evaluations: all together, and per identity.
pub struct Gate {
    global: Arc<Semaphore>,
    per_user: usize,
    per_service: usize,
    identities: Mutex<HashMap<(bool, String), Arc<Semaphore>>>,
}

/// Identities remembered by the gate before idle ones are forgotten.
const GATE_PRUNE_ABOVE: usize = 4096;

impl Gate {
    pub fn new(limits: &GatewayLimits) -> Gate {
        let global = if limits.graphql_concurrency > 0 {
            limits.graphql_concurrency
        } else {
            2 * std::thread::available_parallelism().map_or(2, |n| n.get())
        };
        Gate {
            global: Arc::new(Semaphore::new(global)),
            per_user: limits.graphql_concurrency_per_identity.max(1),
            per_service: limits.service_graphql_concurrency_per_identity.max(1),
            identities: Mutex::new(HashMap::new()),
        }
    }

    /// Waits for a turn of `caller`'s identity, then for a turn among all.
    pub async fn enter(&self, caller: &Caller) -> (OwnedSemaphorePermit, OwnedSemaphorePermit) {
        let key = (caller.service, warren_core::exec::subject(&caller.auth));
        let own = {
            let mut map = self.identities.lock().expect("gate lock");
            if map.len() >= GATE_PRUNE_ABOVE && !map.contains_key(&key) {
                // Idle identities: nobody holds or waits for their semaphore.
                map.retain(|_, s| Arc::strong_count(s) > 1);
            }
            let n = if caller.service {
                self.per_service
            } else {
                self.per_user
            };
            map.entry(key)
                .or_insert_with(|| Arc::new(Semaphore::new(n)))
                .clone()
        };
        let own = own.acquire_owned().await.expect("never closed");
        let all = self
            .global
            .clone()
            .acquire_owned()
            .await
            .expect("never closed");
        (own, all)
    }
}

/// What a run read: keys got, and key ranges scanned (as far as the scan went). Held
/// per live query, so it is bounded: past [`MAX_READ_KEYS`] keys or ranges it becomes
/// "everything" (any write runs the query again: correct, only more work).
#[derive(Clone, Debug, Default)]
pub struct ReadKeys {
    keys: BTreeSet<Vec<u8>>,
    ranges: Vec<KeyRange>,
    everything: bool,
}

/// Keys (and, apart, ranges) a live query's read set holds before it becomes
/// "everything".
pub const MAX_READ_KEYS: usize = 4096;

impl ReadKeys {
    /// Whether a write of any of `written` may change what was read.
    pub fn touched_by(&self, written: &[Vec<u8>]) -> bool {
        (self.everything && !written.is_empty())
            || written
                .iter()
                .any(|k| self.keys.contains(k) || self.ranges.iter().any(|r| r.contains(k)))
    }

    fn got(&mut self, key: &[u8]) {
        if self.everything {
            return;
        }
        self.keys.insert(key.to_vec());
        self.bound();
    }

    fn scanned(&mut self, r: KeyRange) {
        if self.everything {
            return;
        }
        // Pages of one scan follow each other: (.., k] then (k, ..) is one range.
        if let Some(last) = self.ranges.last_mut() {
            match (&last.end, &r.start) {
                (Bound::Included(a), Bound::Excluded(b)) if a == b => {
                    last.end = r.end;
                    return;
                }
                _ => {}
            }
            match (&r.end, &last.start) {
                (Bound::Included(a), Bound::Excluded(b)) if a == b => {
                    last.start = r.start;
                    return;
                }
                _ => {}
            }
        }
        self.ranges.push(r);
        self.bound();
    }

    fn bound(&mut self) {
        if self.keys.len() > MAX_READ_KEYS || self.ranges.len() > MAX_READ_KEYS {
            *self = ReadKeys {
                everything: true,
                ..ReadKeys::default()
            };
        }
    }

    /// Adds what another run read.
    pub fn merge(&mut self, other: ReadKeys) {
        if other.everything {
            self.everything = true;
        }
        for k in other.keys {
            self.got(&k);
        }
        for r in other.ranges {
            self.scanned(r);
        }
    }

    /// Whether it stands for everything (it grew past its bound).
    pub fn is_everything(&self) -> bool {
        self.everything
    }
}

/// A store that records what is read from it.
struct Recorder<'a> {
    inner: &'a dyn Storage,
    reads: RefCell<ReadKeys>,
}

impl Storage for Recorder<'_> {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, Error> {
        self.reads.borrow_mut().got(key);
        self.inner.get(key)
    }

    fn scan(&self, range: &KeyRange, reverse: bool, limit: usize) -> Result<Vec<Entry>, Error> {
        let page = self.inner.scan(range, reverse, limit)?;
        // A short page read the whole range; a full one up to its last key.
        let covered = match page.last() {
            Some((last, _)) if page.len() >= limit => {
                if reverse {
                    KeyRange {
                        start: Bound::Included(last.clone()),
                        end: range.end.clone(),
                    }
                } else {
                    KeyRange {
                        start: range.start.clone(),
                        end: Bound::Included(last.clone()),
                    }
                }
            }
            _ => range.clone(),
        };
        self.reads.borrow_mut().scanned(covered);
        Ok(page)
    }

    fn apply(&mut self, _batch: Batch) -> Result<(), Error> {
        Err(Error::new(ErrorCode::ReadOnly, "reads only"))
    }
}

fn shutting_down() -> async_graphql::Error {
    error(protocol_codes::SHUTTING_DOWN, "the server is stopping")
}

/// A read view of the region's state after everything applied so far, once what the
/// log held at the server's start is applied ([`crate::gateway::Ready`]); in a region
/// of many, for a read the caller asked for (`fresh`, not a live query's run again),
/// also once the region applied what the global log held when it asked
/// ([`crate::barrier::Barrier`], as for a pull or a welcome).
pub(crate) async fn snapshot(
    svc: &Service,
    fresh: bool,
) -> Result<Arc<ReadView>, async_graphql::Error> {
    svc.app
        .ready
        .wait()
        .await
        .map_err(|m| error(protocol_codes::REGION_UNAVAILABLE, m))?;
    if let (true, Some(b)) = (fresh, &svc.app.barrier) {
        b.wait().await.map_err(|m| {
            error(
                protocol_codes::REGION_UNAVAILABLE,
                format!("{m}; try another region"),
            )
        })?;
    }
    let (tx, rx) = oneshot::channel();
    svc.app
        .region
        .send(RegionMsg::View { reply: tx })
        .map_err(|_| shutting_down())?;
    // No answer: the region stopped (it stops on a store failure).
    rx.await.map(Arc::new).map_err(|_| shutting_down())
}

/// The wall clock in milliseconds: `now()` in a query (queries are not replicated).
fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// Runs the read-only program `source` as `caller` on `snap`, on the blocking pool,
/// after waiting for a turn: its result, and what it read (up to where it stopped, if
/// it failed: a deterministic failure depends on nothing else).
pub(crate) async fn run(
    svc: &Arc<Service>,
    caller: &Caller,
    snap: Arc<ReadView>,
    source: String,
) -> (Result<Value, async_graphql::Error>, ReadKeys) {
    let _turn = svc.gate.enter(caller).await;
    svc.metrics().reads.fetch_add(1, Ordering::Relaxed);
    let auth = caller.auth.clone();
    let limits = svc.limits.clone();
    let done = tokio::task::spawn_blocking(move || {
        let state = snap.state();
        let rec = Recorder {
            inner: &state,
            reads: RefCell::new(ReadKeys::default()),
        };
        let v = warren_core::exec::query(&rec, snap.schema(), &source, &auth, now_ms(), &limits);
        (v, rec.reads.into_inner())
    })
    .await;
    match done {
        Ok((Ok(v), reads)) => (Ok(v), reads),
        Ok((Err(e), reads)) if e.code.is_deterministic() => (Err(engine_error(&e)), reads),
        Ok((Err(e), reads)) => {
            tracing::error!(
                code = e.code.as_str(),
                "a GraphQL read failed: {}",
                e.message
            );
            (
                Err(error(protocol_codes::INTERNAL, "the state cannot be read")),
                reads,
            )
        }
        Err(_) => (
            Err(error(
                protocol_codes::INTERNAL,
                "the query stopped unexpectedly",
            )),
            ReadKeys::default(),
        ),
    }
}

/// A document as a read gives it.
#[derive(Clone, Debug, PartialEq)]
pub struct Doc {
    /// Its fields and `id`, as JSON.
    pub data: serde_json::Value,
    pub partition: String,
    pub version: u64,
}

/// A page of a connection.
#[derive(Clone, Debug, PartialEq)]
pub struct Page {
    pub edges: Vec<Edge>,
    pub has_next: bool,
    pub has_previous: bool,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Edge {
    pub node: Doc,
    pub cursor: String,
}

fn unexpected() -> Error {
    Error::new(
        ErrorCode::Corrupt,
        "a GraphQL read gave an unexpected shape",
    )
}

/// A document from `{d, p, v}`.
pub fn doc_of(v: &Value) -> Result<Doc, Error> {
    let (Value::String(p), Value::Int(ver)) = (v.get("p"), v.get("v")) else {
        return Err(unexpected());
    };
    Ok(Doc {
        data: v.get("d").to_json(),
        partition: p.clone(),
        version: u64::try_from(*ver).map_err(|_| unexpected())?,
    })
}

/// A page from `{data, after, c}` (see `program::source`).
pub fn page_of(v: &Value, req: &PageRequest) -> Result<Page, Error> {
    let Value::Array(items) = v.get("data") else {
        return Err(unexpected());
    };
    let text = |x: &Value| match x {
        Value::String(s) => Ok(Some(s.clone())),
        Value::Null => Ok(None),
        _ => Err(unexpected()),
    };
    let after = text(v.get("after"))?;
    let start = text(v.get("c"))?;
    let n = items.len();
    let mut edges = Vec::with_capacity(n);
    for (i, item) in items.iter().enumerate() {
        // The last edge of a page with more after it takes the engine's own cursor;
        // the others, the page's start and how many to skip.
        let cursor = match &after {
            Some(a) if i + 1 == n => Cursor {
                base: Some(a.clone()),
                skip: 0,
            },
            _ => Cursor {
                base: start.clone(),
                skip: i as u64 + 1,
            },
        };
        edges.push(Edge {
            node: doc_of(item)?,
            cursor: cursor.encode(),
        });
    }
    Ok(Page {
        edges,
        has_next: after.is_some(),
        has_previous: req.after.is_some(),
    })
}

/// The client ids GraphQL mutations run under: the caller's subject, then `#` and a
/// tail of the server's making. A sync client's id is scoped as `len:sub/id`
/// (`warren_core::exec::scoped_client_id`), so no sync client can name one of these.
pub fn client_id(auth: &Value, tail: &str) -> String {
    let sub = warren_core::exec::subject(auth);
    format!("{}:{sub}#{tail}", sub.len())
}

/// Sequence numbers for mutations sent without an idempotency key: one client id per
/// identity per server run (`run:<random>:<generation>`), numbered in the order the
/// commits enter the sequencer (the lock is held while sending, so numbers and order
/// agree). The ids live in the replicated state like any client's (its sequence
/// number and last 1,024 outcomes), so a run makes one per identity, not one per
/// request; past `SEQUENCES_MAX` (100,000) identities the table starts a new generation.
pub struct Sequences {
    run: String,
    state: tokio::sync::Mutex<(u64, HashMap<String, u64>)>,
}

/// Identities numbered in one generation.
const SEQUENCES_MAX: usize = 100_000;

impl Sequences {
    pub fn new() -> Sequences {
        Sequences {
            run: random_hex(),
            state: tokio::sync::Mutex::new((0, HashMap::new())),
        }
    }
}

impl Default for Sequences {
    fn default() -> Self {
        Sequences::new()
    }
}

/// 128 random bits in hex, from the operating system.
fn random_hex() -> String {
    let mut bytes = [0u8; 16];
    let read = std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut bytes));
    if read.is_err() {
        // Hashers are keyed from the operating system's randomness too.
        use std::hash::{BuildHasher, Hasher};
        for chunk in bytes.chunks_mut(8) {
            let mut h = std::collections::hash_map::RandomState::new().build_hasher();
            h.write_u64(0);
            chunk.copy_from_slice(&h.finish().to_le_bytes());
        }
    }
    warren_core::hex(&bytes)
}

/// Calls schema function `function` with `args` as `caller`: a commit, answered with
/// its outcome.
pub(crate) async fn call(
    svc: &Arc<Service>,
    caller: &Caller,
    function: &str,
    args: Value,
) -> Result<Value, async_graphql::Error> {
    // The field's place among the request's mutations, counted before anything can
    // fail, so a retried request numbers its fields the same.
    let index = caller.mutations.fetch_add(1, Ordering::SeqCst) + 1;
    let app = &svc.app;
    gateway::take_http(app, &caller.auth, Budget::Commits, 1)
        .await
        .map_err(|e| error(&e.code, e.message))?;
    svc.metrics().mutations.fetch_add(1, Ordering::Relaxed);
    let commit = |client_id: String, seq: u64| Commit {
        client_id,
        client_seq: seq,
        schema_version: svc
            .schema_version
            .read()
            .expect("schema version lock")
            .clone(),
        timestamp: 0,
        auth: caller.auth.clone(),
        op: Op::Call {
            function: function.to_owned(),
            args: args.clone(),
        },
    };
    let rx = match &caller.idempotency_key {
        Some(key) => {
            let id = client_id(&caller.auth, &format!("key:{key}"));
            gateway::http::submit(app, commit(id, index)).await
        }
        None => {
            let mut state = svc.sequences.state.lock().await;
            let (generation, next) = &mut *state;
            if next.len() >= SEQUENCES_MAX {
                next.clear();
                *generation += 1;
            }
            let sub = warren_core::exec::subject(&caller.auth);
            let seq = next.get(&sub).copied().unwrap_or(0) + 1;
            let id = client_id(
                &caller.auth,
                &format!("run:{}:{generation}", svc.sequences.run),
            );
            let sent = gateway::http::submit(app, commit(id, seq)).await;
            // The number is taken only by a commit the sequencer accepted.
            if sent.is_ok() {
                next.insert(sub, seq);
            }
            sent
        }
    }
    .map_err(|e| error(&e.code, e.message))?;
    let outcome = rx.await.map_err(|_| {
        error(
            protocol_codes::SHUTTING_DOWN,
            "the server stopped before answering",
        )
    })?;
    match outcome {
        CommitResult::Committed { result, .. } => Ok(result),
        CommitResult::Rejected { code, message } => Err(error(&code, message)),
        CommitResult::Duplicate => Err(error(
            codes::DUPLICATE,
            "this mutation was applied before (same idempotency key), and its outcome is no longer kept",
        )),
        CommitResult::OutOfOrder { .. } => Err(error(
            codes::OUT_OF_ORDER,
            "an earlier mutation of this request was not applied, so this one was not either; retry the request",
        )),
    }
}

/// Counts a live query while it is open.
struct LiveGuard(Arc<Service>);

impl Drop for LiveGuard {
    fn drop(&mut self) {
        self.0.metrics().live.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A subscription as it runs: the operation, parsed, to run as a query each time.
pub(crate) struct LiveOperation {
    query: String,
    variables: async_graphql::Variables,
    operation_name: Option<String>,
    doc: Option<async_graphql::parser::types::ExecutableDocument>,
    auth: Value,
}

impl LiveOperation {
    /// `request` has been prepared and turned into its query (`super::as_query`).
    pub fn new(mut request: async_graphql::Request, auth: Value) -> LiveOperation {
        let doc = request.parsed_query().ok().cloned();
        LiveOperation {
            query: request.query,
            variables: request.variables,
            operation_name: request.operation_name,
            doc,
            auth,
        }
    }

    fn request(&self, caller: Arc<Caller>) -> async_graphql::Request {
        let mut req =
            async_graphql::Request::new(self.query.clone()).variables(self.variables.clone());
        if let Some(n) = &self.operation_name {
            req = req.operation_name(n.clone());
        }
        if let Some(doc) = &self.doc {
            req.set_parsed_query(doc.clone());
        }
        req.data(caller)
    }
}

/// A live query: runs the operation now and yields its response, then runs it again
/// whenever a batch writes a key one of its reads read, and yields the response when
/// it differs from the last one. Each run reads one fresh snapshot with the caller's
/// claims, so a document that stops being readable (a member removed from a team)
/// leaves the result at once. Errors are responses like any other (the query keeps
/// watching what the failed run read, since a deterministic failure depends on nothing
/// else). The stream ends when the server stops.
pub(crate) fn live(
    svc: Arc<Service>,
    schema: async_graphql::dynamic::Schema,
    op: LiveOperation,
) -> impl futures_util::Stream<Item = async_graphql::Response> + Send + 'static {
    svc.metrics().live.fetch_add(1, Ordering::Relaxed);
    struct St {
        svc: Arc<Service>,
        schema: async_graphql::dynamic::Schema,
        op: LiveOperation,
        // Subscribed before the first snapshot, so no batch after it is missed.
        changes: broadcast::Receiver<Arc<Changes>>,
        /// The SHA-256 of the last response sent (not the response: live queries
        /// are many, responses up to the result limit).
        last: Option<[u8; 32]>,
        reads: ReadKeys,
        /// The position of the last run's snapshot (`None`: it read nothing).
        position: Option<u64>,
        _guard: LiveGuard,
    }
    let st = St {
        changes: svc.changes.subscribe(),
        _guard: LiveGuard(svc.clone()),
        svc,
        schema,
        op,
        last: None,
        reads: ReadKeys::default(),
        position: None,
    };
    futures_util::stream::unfold(st, |mut st| async move {
        loop {
            if st.last.is_some() {
                let Some(position) = st.position else {
                    // It read nothing: nothing can change it.
                    return std::future::pending().await;
                };
                // Wait for a batch after the last run that wrote something it read.
                let mut touched = false;
                while !touched {
                    match st.changes.recv().await {
                        Ok(c) => touched = c.position > position && st.reads.touched_by(&c.keys),
                        // Missed some: anything may have changed.
                        Err(broadcast::error::RecvError::Lagged(_)) => touched = true,
                        Err(broadcast::error::RecvError::Closed) => return None,
                    }
                }
                // What queued meanwhile is in the next snapshot.
                while st.changes.try_recv().is_ok() {}
                st.svc.metrics().live_reruns.fetch_add(1, Ordering::Relaxed);
            }
            let first = st.last.is_none();
            let caller = Arc::new(Caller::live(&st.svc.app, st.op.auth.clone(), first));
            let resp = super::with_codes(st.schema.execute(st.op.request(caller.clone())).await);
            st.position = caller.snapshot.get().map(|s| s.position);
            st.reads = caller
                .reads
                .as_ref()
                .map(|r| std::mem::take(&mut *r.lock().expect("reads lock")))
                .unwrap_or_default();
            let digest: [u8; 32] =
                Sha256::digest(serde_json::to_vec(&resp).unwrap_or_default()).into();
            if st.last != Some(digest) {
                st.last = Some(digest);
                st.svc
                    .metrics()
                    .live_updates
                    .fetch_add(1, Ordering::Relaxed);
                return Some((resp, st));
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn k(b: &[u8]) -> Vec<u8> {
        b.to_vec()
    }

    #[test]
    fn read_sets_match_keys_and_scanned_ranges() {
        let mut r = ReadKeys::default();
        r.got(b"Da");
        // Two pages of one forward scan make one range.
        r.scanned(KeyRange {
            start: Bound::Included(k(b"Ib")),
            end: Bound::Included(k(b"Id")),
        });
        r.scanned(KeyRange {
            start: Bound::Excluded(k(b"Id")),
            end: Bound::Excluded(k(b"If")),
        });
        assert_eq!(r.ranges.len(), 1);
        for (key, hit) in [
            (&b"Da"[..], true),
            (b"Db", false),
            (b"Ib", true),
            (b"Ie", true),
            (b"If", false),
            (b"Ia", false),
        ] {
            assert_eq!(
                r.touched_by(&[k(key)]),
                hit,
                "{:?}",
                String::from_utf8_lossy(key)
            );
        }
        assert!(!r.touched_by(&[]));
    }

    #[test]
    fn read_sets_are_bounded() {
        let mut r = ReadKeys::default();
        for i in 0..=MAX_READ_KEYS as u32 {
            r.got(&i.to_be_bytes());
        }
        assert!(r.is_everything());
        assert!(r.keys.is_empty() && r.ranges.is_empty());
        assert!(r.touched_by(&[k(b"anything")]));
        let mut m = ReadKeys::default();
        m.merge(r);
        assert!(m.is_everything());
    }
}
