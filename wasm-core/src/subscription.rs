//! What each client may read, and the frames that keep it up to date: the welcome on
//! connecting, partition snapshots, and the fan-out of each log entry (effects, drops,
//! new snapshots). No I/O: the sync server's region runs this over its store and hands
//! the frames to sockets; the replica's tests run the same code over a memory store.
//!
//! A [`Subscription`] is one connection's read-rule answers by (partition, collection),
//! with what each rule read (so a write to a team's member list re-evaluates the rules
//! that read it), and the partitions the connection holds.

use std::collections::{BTreeMap, BTreeSet};

use crate::doc::StoredDoc;
use crate::eval::{Limits, ReadSet};
use crate::exec::{self, KeptOutcome, Outcome, Skip, Write};
use crate::protocol::{CommitResult, ServerFrame, SnapshotDoc};
use crate::reach::Reachable;
use crate::storage::{KeyRange, Storage};
use crate::{keys, Error, Schema, Value};

/// One read-rule answer and what the rule read to give it.
struct Sub {
    allowed: bool,
    reads: ReadSet,
}

/// One connection's view of the region: who it is, its read-rule answers by partition
/// and collection (and which of them read documents), and the partitions it holds.
pub struct Subscription {
    client_id: String,
    auth: Value,
    /// Read-rule answers, only for candidate pairs (see [`crate::reach`]): a pair that
    /// is not a candidate is one the rules cannot allow.
    by_partition: BTreeMap<String, BTreeMap<String, Sub>>,
    watching: BTreeSet<(String, String)>,
    held: BTreeSet<String>,
    /// What the claims may reach.
    reachable: Reachable,
    /// Whether `held` or what the watched rules read changed since
    /// [`Subscription::take_changed`].
    changed: bool,
    /// Read rules evaluated since [`Subscription::take_evaluated`].
    evaluated: u64,
    /// Partitions the client may now read whose snapshot is still to be sent
    /// ([`Subscription::snapshots_due`]), with whether it held them before (a copy a
    /// revocation must still drop). Their effects are not sent meanwhile: the snapshot
    /// holds them.
    due: BTreeMap<String, bool>,
}

impl Subscription {
    fn new(client_id: &str, auth: &Value, reachable: Reachable) -> Subscription {
        Subscription {
            client_id: client_id.to_owned(),
            auth: auth.clone(),
            by_partition: BTreeMap::new(),
            watching: BTreeSet::new(),
            held: BTreeSet::new(),
            reachable,
            changed: true,
            evaluated: 0,
            due: BTreeMap::new(),
        }
    }

    /// Whether snapshots are due (see [`Subscription::snapshots_due`]).
    pub fn has_due(&self) -> bool {
        !self.due.is_empty()
    }

    /// The snapshots the client is owed, taken at `position` (the state the caller will
    /// read them from): partitions it may read since the entries given to
    /// [`Subscription::fanout`] or [`Subscription::advance`]. Reading them later, at a
    /// later position, is allowed: their effects were held back, the snapshot brings
    /// them. A caller that sends the frames of each entry at once takes them after each
    /// entry; the sync server takes them once per batch.
    pub fn snapshots_due(&mut self, position: u64) -> Vec<SnapshotRef> {
        std::mem::take(&mut self.due)
            .into_keys()
            .map(|p| SnapshotRef {
                collections: self.allowed_colls(&p),
                partition: p,
                position,
            })
            .collect()
    }

    /// A partition the client may read now: its snapshot is due.
    fn grant(&mut self, p: &str) {
        let held_before = self.held.contains(p);
        self.due.entry(p.to_owned()).or_insert(held_before);
        self.changed |= self.held.insert(p.to_owned());
    }

    /// A partition the client may no longer read: `true` if it must be told to drop
    /// it (it held a copy).
    fn revoke(&mut self, p: &str) -> bool {
        let due = self.due.remove(p);
        if !self.held.remove(p) {
            return false;
        }
        self.changed = true;
        // Granted and revoked before its snapshot went: it never had a copy.
        due != Some(false)
    }

    /// How many read rules were evaluated for this connection since the last call
    /// (what its catch-up and its fan-out cost; the server counts them in metrics).
    pub fn take_evaluated(&mut self) -> u64 {
        std::mem::take(&mut self.evaluated)
    }

    /// What the connection's claims may reach (the partitions to route to it).
    pub fn reachable(&self) -> &Reachable {
        &self.reachable
    }

    /// Whether the partitions held or the documents the rules read changed since the
    /// last call (the region then updates what it routes to the connection).
    pub fn take_changed(&mut self) -> bool {
        std::mem::take(&mut self.changed)
    }

    /// What the connection's document-reading rules read: a write to one of these
    /// documents, or to any document of one of these collections, may change an
    /// answer.
    pub fn watched_reads(&self) -> (BTreeSet<(String, String)>, BTreeSet<String>) {
        let mut docs = BTreeSet::new();
        let mut colls = BTreeSet::new();
        for (p, c) in &self.watching {
            if let Some(sub) = self.get(p, c) {
                docs.extend(sub.reads.docs.iter().cloned());
                colls.extend(sub.reads.collections.iter().cloned());
            }
        }
        (docs, colls)
    }

    /// The (scoped) client id the subscription serves.
    pub fn client_id(&self) -> &str {
        &self.client_id
    }

    /// The verified claims the read rules are evaluated with.
    pub fn auth(&self) -> &Value {
        &self.auth
    }

    /// The partitions the connection holds (may read something of).
    pub fn held(&self) -> &BTreeSet<String> {
        &self.held
    }

    /// Whether some read rule of the connection read documents: any entry may then
    /// change an answer, so every entry must visit it.
    pub fn watches_documents(&self) -> bool {
        !self.watching.is_empty()
    }

    /// Whether the connection has an answer for (partition, collection).
    pub fn knows(&self, partition: &str, collection: &str) -> bool {
        self.get(partition, collection).is_some()
    }

    fn get(&self, partition: &str, collection: &str) -> Option<&Sub> {
        self.by_partition.get(partition)?.get(collection)
    }

    fn insert(&mut self, partition: String, collection: String, sub: Sub) {
        if !sub.reads.is_empty() {
            self.changed |= self
                .get(&partition, &collection)
                .is_none_or(|s| s.reads != sub.reads);
            self.watching
                .insert((partition.clone(), collection.clone()));
        } else if !self.watching.is_empty() {
            self.changed |= self
                .watching
                .remove(&(partition.clone(), collection.clone()));
        }
        self.by_partition
            .entry(partition)
            .or_default()
            .insert(collection, sub);
    }

    /// The collections of `partition` the connection may read.
    fn allowed_colls(&self, partition: &str) -> BTreeSet<String> {
        self.by_partition
            .get(partition)
            .into_iter()
            .flatten()
            .filter(|(_, s)| s.allowed)
            .map(|(c, _)| c.clone())
            .collect()
    }

    /// Updates the subscription for the log entry at `pos` (whose committed writes are
    /// `writes`), evaluated over `state`, the state after the entry. Hands `emit` the
    /// frames the connection gets, in order: `Drop` for partitions it may no longer
    /// read, then `Effects` with the entry's writes to partitions it holds. Partitions
    /// it now may read become due ([`Subscription::snapshots_due`]). (The entry's
    /// `Outcome` is the caller's: it goes to the client's connection whatever it holds.)
    pub fn fanout(
        &mut self,
        state: &dyn Storage,
        schema: &Schema,
        limits: &Limits,
        pos: u64,
        writes: &[Write],
        emit: &mut dyn FnMut(ServerFrame),
    ) -> Result<(), Error> {
        if writes.is_empty() {
            return Ok(());
        }
        let recheck = self.rechecks(state, schema, writes.iter())?;
        let mut changed_partitions: BTreeSet<String> = BTreeSet::new();
        for (p, c) in recheck {
            let before = self.get(&p, &c).map(|s| s.allowed);
            let sub = evaluate(state, schema, limits, &self.auth, &p, &c)?;
            self.evaluated += 1;
            if before != Some(sub.allowed) && (before.is_some() || sub.allowed) {
                changed_partitions.insert(p.clone());
            }
            self.insert(p, c, sub);
        }
        for p in changed_partitions {
            if self.allowed_colls(&p).is_empty() {
                if self.revoke(&p) {
                    emit(ServerFrame::Drop {
                        partition: p,
                        position: pos,
                    });
                }
            } else {
                self.grant(&p);
            }
        }
        let mine: Vec<Write> = writes
            .iter()
            .filter(|w| {
                self.held.contains(&w.partition)
                    && !self.due.contains_key(&w.partition)
                    && self
                        .get(&w.partition, &w.collection)
                        .is_some_and(|s| s.allowed)
            })
            .cloned()
            .collect();
        if !mine.is_empty() {
            emit(ServerFrame::Effects {
                position: pos,
                writes: mine,
            });
        }
        Ok(())
    }
}

impl Subscription {
    /// Brings a subscription made at an earlier position (a welcome computed on a read
    /// snapshot while the log went on) up to `pos`: `window` holds every log entry
    /// after the welcome's position up to `pos`, in order, with its committed writes;
    /// `state` is the state at `pos`. Hands `emit` the frames that take the client from
    /// the welcome to `pos`:
    /// - `Effects` of each entry, in order, for the partitions whose read-rule answers
    ///   the window cannot have changed (no rule of theirs read what it wrote);
    /// - then, at `pos`, for every partition whose answer may have changed (a new
    ///   (partition, collection) pair, or a rule that read a written document): `Drop`
    ///   if it may no longer be read, else its snapshot is due (it holds what the
    ///   window wrote to it, so none of its effects are sent).
    pub fn advance(
        &mut self,
        state: &dyn Storage,
        schema: &Schema,
        limits: &Limits,
        pos: u64,
        window: &[(u64, &[Write])],
        emit: &mut dyn FnMut(ServerFrame),
    ) -> Result<(), Error> {
        let recheck = self.rechecks(
            state,
            schema,
            window.iter().flat_map(|(_, writes)| writes.iter()),
        )?;
        let mut unstable: BTreeSet<String> = BTreeSet::new();
        for (p, c) in recheck {
            let sub = evaluate(state, schema, limits, &self.auth, &p, &c)?;
            self.evaluated += 1;
            self.insert(p.clone(), c, sub);
            unstable.insert(p);
        }
        for (at, writes) in window {
            let mine: Vec<Write> = writes
                .iter()
                .filter(|w| {
                    self.held.contains(&w.partition)
                        && !unstable.contains(&w.partition)
                        && self
                            .get(&w.partition, &w.collection)
                            .is_some_and(|s| s.allowed)
                })
                .cloned()
                .collect();
            if !mine.is_empty() {
                emit(ServerFrame::Effects {
                    position: *at,
                    writes: mine,
                });
            }
        }
        for p in unstable {
            if self.allowed_colls(&p).is_empty() {
                if self.revoke(&p) {
                    emit(ServerFrame::Drop {
                        partition: p,
                        position: pos,
                    });
                }
            } else {
                self.grant(&p);
            }
        }
        Ok(())
    }
}

impl Subscription {
    /// Which (partition, collection) answers `writes` may have changed, at `state`
    /// (the state after them):
    /// - a written pair the connection has no answer for, if it is a candidate (a new
    ///   pair, or one that became a candidate);
    /// - for a written document of a member index's source whose field now holds one of
    ///   the connection's keys, the existing pairs of the partition it opens;
    /// - answers whose rule read a written document.
    fn rechecks<'w>(
        &self,
        state: &dyn Storage,
        schema: &Schema,
        writes: impl Iterator<Item = &'w Write> + Clone,
    ) -> Result<BTreeSet<(String, String)>, Error> {
        let reach = schema.reach();
        let mut recheck: BTreeSet<(String, String)> = BTreeSet::new();
        for w in writes.clone() {
            let pair = (w.partition.clone(), w.collection.clone());
            if self.get(&w.partition, &w.collection).is_none()
                && !recheck.contains(&pair)
                && self
                    .reachable
                    .may_reach(state, reach, &w.partition, &w.collection)?
            {
                recheck.insert(pair);
            }
            if self.reachable.members.is_empty() {
                continue;
            }
            for (p, colls) in self.reachable.opened_by(reach, w) {
                for c in colls {
                    if self.get(&p, c).is_none() && state.get(&keys::version_key(&p, c))?.is_some()
                    {
                        recheck.insert((p.clone(), c.clone()));
                    }
                }
            }
        }
        for (p, c) in &self.watching {
            let touched = self.get(p, c).is_some_and(|sub| {
                writes
                    .clone()
                    .any(|w| sub.reads.touched_by(&w.collection, &w.id))
            });
            if touched {
                recheck.insert((p.clone(), c.clone()));
            }
        }
        Ok(recheck)
    }
}

/// Evaluates the read rule of `collection` for `partition`. A rule that cannot be
/// evaluated (out of fuel, a type error) denies; only a broken store is an error.
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
        Err(e) if e.code.is_deterministic() => Ok(Sub {
            allowed: false,
            reads: ReadSet::default(),
        }),
        Err(e) => Err(e),
    }
}

/// A snapshot to send: the documents of `partition` in `collections`, at `position`
/// (read from a state at that position).
#[derive(Clone, Debug, PartialEq)]
pub struct SnapshotRef {
    pub partition: String,
    pub collections: BTreeSet<String>,
    pub position: u64,
}

/// What a subscription hands out: a frame, or a snapshot for the caller to read (whole,
/// or in parts of a bounded size: [`SnapshotRef::read_part`]).
#[derive(Clone, Debug, PartialEq)]
pub enum Out {
    Frame(ServerFrame),
    Snapshot(SnapshotRef),
}

/// Where reading a snapshot in parts has got to.
#[derive(Clone, Debug, Default)]
pub struct SnapshotCursor {
    after: Option<Vec<u8>>,
    done: bool,
}

impl SnapshotCursor {
    /// Whether the last part was read.
    pub fn done(&self) -> bool {
        self.done
    }
}

impl SnapshotRef {
    /// The whole snapshot as one `Snapshot` frame, from `store` (at `position`).
    pub fn read(&self, store: &dyn Storage) -> Result<ServerFrame, Error> {
        let mut cursor = SnapshotCursor::default();
        let mut docs = Vec::new();
        while !cursor.done {
            docs.extend(self.read_part(store, &mut cursor, usize::MAX)?);
        }
        Ok(self.frame(docs, true))
    }

    /// The next documents from `cursor` on, about `max_bytes` of them (at least one
    /// document if any is left, so every part makes progress); the cursor says when
    /// the last were read.
    pub fn read_part(
        &self,
        store: &dyn Storage,
        cursor: &mut SnapshotCursor,
        max_bytes: usize,
    ) -> Result<Vec<SnapshotDoc>, Error> {
        let mut docs = Vec::new();
        let mut bytes = 0usize;
        let prefix = keys::partition_prefix(&self.partition);
        while !cursor.done && bytes < max_bytes {
            let range = match &cursor.after {
                Some(k) => KeyRange::prefix(&prefix).after(k),
                None => KeyRange::prefix(&prefix),
            };
            let page = store.scan(&range, false, 64)?;
            if page.len() < 64 {
                cursor.done = true;
            }
            for (k, _) in page {
                if bytes >= max_bytes {
                    cursor.done = false;
                    break;
                }
                cursor.after = Some(k.clone());
                let (_, coll, id) = keys::parse_partition_key(&k)?;
                if !self.collections.contains(&coll) {
                    continue;
                }
                if let Some(b) = store.get(&keys::doc_key(&coll, &id))? {
                    let d = StoredDoc::decode(&b)?;
                    bytes = bytes.saturating_add(coll.len() + id.len() + 12 + d.data.encoded_len());
                    docs.push(SnapshotDoc {
                        collection: coll,
                        id,
                        version: d.version,
                        data: d.data,
                    });
                }
            }
        }
        Ok(docs)
    }

    /// A frame of this snapshot: the `Snapshot` that ends it (`last`), or a
    /// `SnapshotPart` before it.
    pub fn frame(&self, docs: Vec<SnapshotDoc>, last: bool) -> ServerFrame {
        let (partition, position) = (self.partition.clone(), self.position);
        if last {
            ServerFrame::Snapshot {
                partition,
                position,
                docs,
            }
        } else {
            ServerFrame::SnapshotPart {
                partition,
                position,
                docs,
            }
        }
    }
}

/// What a client gets on connecting, at `store`'s state (at `position`): the
/// `Welcome`, then snapshots of the partitions it may read that changed since its
/// `cursors` (to read from the same state), then the kept outcomes of its outbox from
/// `outbox_from` (0: none). With them comes the subscription that the entries after
/// `position` update.
#[allow(clippy::too_many_arguments)]
pub fn welcome(
    store: &dyn Storage,
    schema: &Schema,
    limits: &Limits,
    position: u64,
    client_id: &str,
    auth: &Value,
    cursors: &[(String, u64)],
    outbox_from: u64,
) -> Result<(Vec<Out>, Subscription), Error> {
    let reach = schema.reach();
    let reachable = reach.reachable(store, schema, limits, auth)?;
    let versions = reachable.candidates(store, reach)?;
    let mut sub = Subscription::new(client_id, auth, reachable);
    for (p, c) in versions.keys() {
        let answer = evaluate(store, schema, limits, auth, p, c)?;
        sub.evaluated += 1;
        sub.insert(p.clone(), c.clone(), answer);
    }
    sub.held = sub
        .by_partition
        .iter()
        .filter(|(_, cs)| cs.values().any(|s| s.allowed))
        .map(|(p, _)| p.clone())
        .collect();
    let applied = exec::applied_seq(store, client_id)?;
    let mut frames = vec![Out::Frame(ServerFrame::Welcome {
        schema_version: schema.version().to_owned(),
        schema_source: schema.source().to_owned(),
        position,
        applied_seq: applied,
        partitions: sub.held.iter().cloned().collect(),
    })];
    let cursor_of: BTreeMap<&str, u64> = cursors.iter().map(|(p, c)| (p.as_str(), *c)).collect();
    for p in &sub.held {
        let allowed = sub.allowed_colls(p);
        let version = allowed
            .iter()
            .map(|c| versions.get(&(p.clone(), c.clone())).copied().unwrap_or(0))
            .max()
            .unwrap_or(0);
        let cursor = cursor_of.get(p.as_str()).copied().unwrap_or(0);
        // A copy made when another collection of the partition was readable may hold
        // its documents: a partition with a collection the client may not read now is
        // sent again whole (its snapshot holds only what it may read).
        let unreadable_here = cursor > 0 && {
            let mut other = false;
            let mut prefix = vec![keys::SPACE_VERSION];
            keys::push_str(&mut prefix, p);
            let n = schema.collections.len() + 1;
            for (k, _) in store.scan(&KeyRange::prefix(&prefix), false, n)? {
                let (_, c) = keys::parse_version_key(&k)?;
                if !allowed.contains(&c) {
                    other = true;
                    break;
                }
            }
            other
        };
        if version > cursor || unreadable_here {
            frames.push(Out::Snapshot(SnapshotRef {
                partition: p.clone(),
                collections: allowed,
                position,
            }));
        }
    }
    if outbox_from > 0 && outbox_from <= applied {
        let from = outbox_from.max(applied.saturating_sub(exec::KEPT_OUTCOMES) + 1);
        for seq in from..=applied {
            frames.push(Out::Frame(ServerFrame::Outcome {
                seq,
                result: kept_result(exec::kept_outcome_of(store, client_id, seq)?),
            }));
        }
    }
    Ok((frames, sub))
}

/// The answer to a commit, as its `Outcome` frame says it: `kept` is the outcome kept
/// for a duplicate (see [`exec::kept_outcome_of`]).
pub fn result_of(outcome: Outcome, position: u64, kept: Option<KeptOutcome>) -> CommitResult {
    match outcome {
        Outcome::Committed { result, .. } => CommitResult::Committed { position, result },
        Outcome::Rejected { code, message } => CommitResult::Rejected {
            code: code.as_str().to_owned(),
            message,
        },
        Outcome::Skipped(Skip::Duplicate) => kept_result(kept),
        Outcome::Skipped(Skip::OutOfOrder { expected }) => CommitResult::OutOfOrder { expected },
    }
}

/// The answer kept for a settled commit (`Duplicate` once it is older than the kept
/// window).
pub fn kept_result(kept: Option<KeptOutcome>) -> CommitResult {
    match kept {
        Some(KeptOutcome::Committed { position, result }) => {
            CommitResult::Committed { position, result }
        }
        Some(KeptOutcome::Rejected { code, message }) => CommitResult::Rejected { code, message },
        None => CommitResult::Duplicate,
    }
}
