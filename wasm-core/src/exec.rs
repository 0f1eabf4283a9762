//! The executor: commits in, outcomes and effects out.
//!
//! [`execute`] is a pure function of (state, schema, commit, position): it reads the
//! store and returns an [`Outcome`] without writing anything. [`apply`] then writes the
//! outcome's effects (documents, index entries, partition membership, the client's
//! sequence number, the digest and the position) as one atomic batch. A replica that
//! receives recorded outcomes instead of commits calls only [`apply`], and reaches the
//! same state and digest as one that executes: both paths build their key-value writes
//! with [`crate::doc::doc_ops`].

use sha2::{Digest, Sha256};

use crate::doc::StoredDoc;
use crate::error::{Error, ErrorCode};
use crate::eval::{Context, Evaluator, Limits, Mode};
use crate::explain::Recorder;
use crate::keys;
use crate::lang::parse_block;
use crate::schema::Schema;
use crate::storage::{Batch, Storage};
use crate::value::{write_varint, Value, MAX_VALUE_DEPTH};

/// What a commit asks for.
#[derive(Clone, Debug, PartialEq)]
pub enum Op {
    /// Call a schema function; `args` is an object by parameter name or an array.
    Call { function: String, args: Value },
    /// Run an ad-hoc transaction: a block of statements in the language.
    Run { source: String },
}

/// A commit, as it stands in the log.
#[derive(Clone, Debug, PartialEq)]
pub struct Commit {
    /// Who made it (a client replica's id) and its place in that client's sequence:
    /// `(client_id, client_seq)` identifies the commit; sequence numbers start at 1.
    pub client_id: String,
    pub client_seq: u64,
    /// The schema version the client made it against (informational: a commit runs
    /// under the schema in force at its log position).
    pub schema_version: String,
    /// `now()`, in milliseconds since the Unix epoch: fixed by the sequencer.
    pub timestamp: i64,
    /// The verified claims of the client's token (`auth`), or null.
    pub auth: Value,
    pub op: Op,
}

/// A document write: the effect of a committed transaction on one document.
#[derive(Clone, Debug, PartialEq)]
pub struct Write {
    pub collection: String,
    pub id: String,
    pub partition: String,
    /// The log position of the commit (the document's new version).
    pub version: u64,
    /// The document's new fields, or `None` when it was deleted.
    pub data: Option<Value>,
}

/// Why a commit was not applied at all.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Skip {
    /// Its sequence number was applied before: a retransmission.
    Duplicate,
    /// Its sequence number skips ahead; `expected` is the next one the client owes.
    OutOfOrder { expected: u64 },
}

/// The outcome of a commit.
#[derive(Clone, Debug, PartialEq)]
pub enum Outcome {
    /// Applied: the document writes, in order of first write, and the result.
    Committed { writes: Vec<Write>, result: Value },
    /// Refused with a stable code; the client's sequence number still advances, so a
    /// retransmission is recognised as a duplicate.
    Rejected { code: ErrorCode, message: String },
    /// Not applied and not recorded (the state does not change but for the position).
    Skipped(Skip),
}

impl Outcome {
    /// The canonical bytes of the outcome's effects: what the state digest hashes.
    /// The result and the message are not effects and are left out.
    pub fn effect_bytes(&self, client_id: &str, client_seq: u64) -> Vec<u8> {
        let mut out = Vec::new();
        put_str(&mut out, client_id);
        write_varint(&mut out, client_seq);
        match self {
            Outcome::Committed { writes, .. } => {
                out.push(0);
                write_varint(&mut out, writes.len() as u64);
                for w in writes {
                    put_str(&mut out, &w.collection);
                    put_str(&mut out, &w.id);
                    put_str(&mut out, &w.partition);
                    write_varint(&mut out, w.version);
                    match &w.data {
                        None => out.push(0),
                        Some(d) => {
                            out.push(1);
                            d.encode_into(&mut out);
                        }
                    }
                }
            }
            Outcome::Rejected { code, .. } => {
                out.push(1);
                put_str(&mut out, code.as_str());
            }
            Outcome::Skipped(Skip::Duplicate) => out.push(2),
            Outcome::Skipped(Skip::OutOfOrder { expected }) => {
                out.push(3);
                write_varint(&mut out, *expected);
            }
        }
        out
    }
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    write_varint(out, s.len() as u64);
    out.extend_from_slice(s.as_bytes());
}

/// The client id a commit runs under: the client's own id scoped by the token's
/// subject (`sub`), so that one user can neither take over another's client id nor
/// read its kept outcomes or use up its sequence numbers. The server keys clients by it,
/// and `newId()` is seeded with it, so a client computes the same form for its
/// optimistic runs: the ids it makes offline are the ids the server makes.
pub fn scoped_client_id(auth: &Value, client_id: &str) -> String {
    let sub = subject(auth);
    format!("{}:{sub}/{client_id}", sub.len())
}

/// The token's subject (`sub`), empty when it has none.
pub fn subject(auth: &Value) -> String {
    match auth.get("sub") {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

/// The highest sequence number applied for a client (0 if none).
pub fn applied_seq(store: &dyn Storage, client_id: &str) -> Result<u64, Error> {
    Ok(match store.get(&keys::client_key(client_id))? {
        Some(b) => u64::from_be_bytes(
            b.as_slice()
                .try_into()
                .map_err(|_| Error::new(ErrorCode::Corrupt, "bad client sequence record"))?,
        ),
        None => 0,
    })
}

/// The state digest after the last applied position (all zeros for an empty state).
pub fn digest(store: &dyn Storage) -> Result<[u8; 32], Error> {
    Ok(match store.get(keys::META_DIGEST)? {
        Some(b) => b
            .as_slice()
            .try_into()
            .map_err(|_| Error::new(ErrorCode::Corrupt, "bad digest record"))?,
        None => [0; 32],
    })
}

/// The last applied log position (0 for an empty state).
pub fn position(store: &dyn Storage) -> Result<u64, Error> {
    Ok(match store.get(keys::META_POSITION)? {
        Some(b) => u64::from_be_bytes(
            b.as_slice()
                .try_into()
                .map_err(|_| Error::new(ErrorCode::Corrupt, "bad position record"))?,
        ),
        None => 0,
    })
}

/// Runs a commit against the state at log position `position` and returns its outcome.
/// Reads only; [`apply`] records the outcome.
///
/// Deterministic: the outcome depends on nothing but the arguments. An `Err` means the
/// store failed (a local accident, not a property of the commit): the caller must stop
/// and retry, never record a rejection.
pub fn execute(
    store: &dyn Storage,
    schema: &Schema,
    commit: &Commit,
    position: u64,
    limits: &Limits,
) -> Result<Outcome, Error> {
    execute_metered(store, schema, commit, position, limits).map(|(o, _)| o)
}

/// What one evaluation used of its limits. Every figure is deterministic: the same on
/// every replica for the same state and commit.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Usage {
    /// Fuel the program spent ([`Limits::fuel`]).
    pub fuel: u64,
    /// The most memory the program held at once, in the model of
    /// [`Limits::max_memory_bytes`].
    pub memory: u64,
    /// Work the program could not see ([`Limits::max_hidden_work`]): the one figure
    /// here that depends on what the caller may not read. It is not an outcome: only
    /// its limit is observable, and only as `HIDDEN_WORK_EXHAUSTED`.
    pub hidden_work: u64,
}

/// [`execute`], and what the commit used of its limits (zero for a skipped commit).
pub fn execute_metered(
    store: &dyn Storage,
    schema: &Schema,
    commit: &Commit,
    position: u64,
    limits: &Limits,
) -> Result<(Outcome, Usage), Error> {
    let applied = applied_seq(store, &commit.client_id)?;
    if commit.client_seq <= applied {
        return Ok((Outcome::Skipped(Skip::Duplicate), Usage::default()));
    }
    if commit.client_seq != applied + 1 {
        return Ok((
            Outcome::Skipped(Skip::OutOfOrder {
                expected: applied + 1,
            }),
            Usage::default(),
        ));
    }
    optimistic_metered(store, schema, commit, position, limits)
}

fn check_input(v: &Value, limits: &Limits) -> Result<(), Error> {
    // Depth and size in one walk, which stops at a hostile value's first level too deep.
    let Some(size) = v.encoded_len_within(MAX_VALUE_DEPTH) else {
        return Err(Error::new(
            ErrorCode::DepthExceeded,
            format!("the arguments nest deeper than {MAX_VALUE_DEPTH} levels"),
        ));
    };
    if size > limits.max_args_bytes {
        return Err(Error::new(
            ErrorCode::ArgumentTooLarge,
            format!(
                "the arguments are {size} bytes; the limit is {}",
                limits.max_args_bytes
            ),
        ));
    }
    Ok(())
}

fn run(
    store: &dyn Storage,
    schema: &Schema,
    commit: &Commit,
    position: u64,
    limits: &Limits,
    trace: bool,
) -> (Result<Outcome, Error>, Usage, Option<Box<Recorder>>) {
    let ctx = Context {
        auth: commit.auth.clone(),
        now: commit.timestamp,
        client_id: commit.client_id.clone(),
        client_seq: commit.client_seq,
        position,
    };
    if let Err(e) = check_input(&commit.auth, limits) {
        return (Err(e), Usage::default(), None);
    }
    let mut ev = Evaluator::new(schema, store, limits, &ctx, Mode::Transaction);
    if trace {
        ev.explain = Some(Box::default());
    }
    let outcome = run_in(&mut ev, commit, position, limits);
    (outcome, ev.usage(), ev.explain.take())
}

fn run_in(
    ev: &mut Evaluator<'_>,
    commit: &Commit,
    position: u64,
    limits: &Limits,
) -> Result<Outcome, Error> {
    let result = match &commit.op {
        Op::Call { function, args } => {
            check_input(args, limits)?;
            ev.call_function(function, args)?
        }
        Op::Run { source } => {
            if source.len() > limits.max_args_bytes {
                return Err(Error::new(
                    ErrorCode::ArgumentTooLarge,
                    format!(
                        "the transaction source is {} bytes; the limit is {}",
                        source.len(),
                        limits.max_args_bytes
                    ),
                ));
            }
            let block = parse_block(source)?;
            ev.run_block(&block)?
        }
    };
    let result = ev.materialize(result)?;
    check_result(&result, limits)?;
    let mut writes = Vec::with_capacity(ev.touched.len());
    for t in &ev.touched {
        let key = keys::doc_key(&t.collection, &t.id);
        // Of the document before, only its partition matters.
        let before = ev.view.base_get(&key)?;
        let before = before.as_deref().map(StoredDoc::partition_of).transpose()?;
        let after = ev
            .view
            .get(&key)?
            .map(|b| StoredDoc::decode(&b))
            .transpose()?;
        let write = |partition: &str, data: Option<Value>| Write {
            collection: t.collection.clone(),
            id: t.id.clone(),
            partition: partition.to_owned(),
            version: position,
            data,
        };
        // A document deleted and created again in another partition in the same
        // transaction is two effects: the readers of the old partition must see it go.
        if let Some(b) = before {
            if after.as_ref().is_none_or(|a| a.partition != b) {
                writes.push(write(b, None));
            }
        }
        if let Some(a) = after {
            writes.push(write(&a.partition, Some(a.data)));
        }
    }
    Ok(Outcome::Committed { writes, result })
}

fn check_result(result: &Value, limits: &Limits) -> Result<(), Error> {
    check_result_len(result.encoded_len() as u64, limits)
}

/// [`check_result`] of a result whose encoding is `size` bytes long.
fn check_result_len(size: u64, limits: &Limits) -> Result<(), Error> {
    if size > limits.max_result_bytes as u64 {
        return Err(Error::new(
            ErrorCode::ResultTooLarge,
            format!(
                "the result is {size} bytes; the limit is {}",
                limits.max_result_bytes
            ),
        ));
    }
    Ok(())
}

/// The key-value batch that records an outcome at `position`, and the new digest.
pub fn effects_batch(
    store: &dyn Storage,
    schema: &Schema,
    position: u64,
    client_id: &str,
    client_seq: u64,
    outcome: &Outcome,
) -> Result<(Batch, [u8; 32]), Error> {
    let last = self::position(store)?;
    if position <= last {
        return Err(Error::new(
            ErrorCode::InvalidArgument,
            format!("position {position} is not after the last applied position {last}"),
        ));
    }
    let mut batch = match outcome {
        Outcome::Committed { writes, .. } => writes_batch(store, schema, writes)?,
        _ => Batch::new(),
    };
    if let Some(record) = kept_outcome(position, outcome) {
        batch.put(
            keys::client_key(client_id),
            client_seq.to_be_bytes().to_vec(),
        );
        // Keep the last KEPT_OUTCOMES outcomes per client, so a client that lost the
        // answer to a commit in a disconnect learns it when it reconnects.
        batch.put(keys::outcome_key(client_id, client_seq), record);
        if client_seq > KEPT_OUTCOMES {
            batch.delete(keys::outcome_key(client_id, client_seq - KEPT_OUTCOMES));
        }
    }
    let mut h = Sha256::new();
    h.update(digest(store)?);
    h.update(position.to_be_bytes());
    h.update(outcome.effect_bytes(client_id, client_seq));
    let d: [u8; 32] = h.finalize().into();
    batch.put(keys::META_DIGEST.to_vec(), d.to_vec());
    batch.put(
        keys::META_POSITION.to_vec(),
        position.to_be_bytes().to_vec(),
    );
    Ok((batch, d))
}

/// How many outcomes are kept per client (see [`kept_outcome`]).
pub const KEPT_OUTCOMES: u64 = 1024;

/// The record kept for an outcome: `00 · varint position · canonical result` for a
/// commit, `01 · code · message` for a rejection (strings varint-length-prefixed).
/// Skipped commits keep nothing.
fn kept_outcome(position: u64, outcome: &Outcome) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    match outcome {
        Outcome::Committed { result, .. } => {
            out.push(0);
            write_varint(&mut out, position);
            // Results can be large; then the kept copy is only the position.
            if result.encoded_len() <= 4096 {
                result.encode_into(&mut out);
            } else {
                Value::Null.encode_into(&mut out);
            }
        }
        Outcome::Rejected { code, message } => {
            out.push(1);
            put_str(&mut out, code.as_str());
            put_str(&mut out, message);
        }
        Outcome::Skipped(_) => return None,
    }
    Some(out)
}

/// What is kept of one outcome.
#[derive(Clone, Debug, PartialEq)]
pub enum KeptOutcome {
    Committed { position: u64, result: Value },
    Rejected { code: String, message: String },
}

/// The kept outcome of a client's commit, if it is still kept.
pub fn kept_outcome_of(
    store: &dyn Storage,
    client_id: &str,
    seq: u64,
) -> Result<Option<KeptOutcome>, Error> {
    let Some(b) = store.get(&keys::outcome_key(client_id, seq))? else {
        return Ok(None);
    };
    let mut r = crate::value::Reader::new(&b);
    Ok(Some(match r.byte()? {
        0 => KeptOutcome::Committed {
            position: r.varint()?,
            result: r.value(0)?,
        },
        1 => KeptOutcome::Rejected {
            code: r.string()?,
            message: r.string()?,
        },
        _ => return Err(Error::new(ErrorCode::Corrupt, "bad kept outcome")),
    }))
}

/// The key-value writes of document writes: each document, its index entries, its
/// partition membership, and the (partition, collection) version.
pub fn writes_batch(
    store: &dyn Storage,
    schema: &Schema,
    writes: &[Write],
) -> Result<Batch, Error> {
    let mut batch = Batch::new();
    for w in writes {
        let coll = schema.collection(&w.collection)?;
        let key = keys::doc_key(&w.collection, &w.id);
        let old = store
            .get(&key)?
            .map(|b| StoredDoc::decode(&b))
            .transpose()?;
        // A delete removes the document from the partition it names. If the document is
        // held in another partition now (it was created again there, and that arrived
        // first), it stays.
        if w.data.is_none() && old.as_ref().is_some_and(|d| d.partition != w.partition) {
            batch.put(
                keys::version_key(&w.partition, &w.collection),
                w.version.to_be_bytes().to_vec(),
            );
            continue;
        }
        let new = w.data.as_ref().map(|d| StoredDoc {
            partition: w.partition.clone(),
            version: w.version,
            data: d.clone(),
        });
        batch
            .ops
            .extend(crate::doc::doc_ops(coll, &w.id, old.as_ref(), new.as_ref()));
        batch.put(
            keys::version_key(&w.partition, &w.collection),
            w.version.to_be_bytes().to_vec(),
        );
    }
    Ok(batch)
}

/// Runs a commit without the sequence-number check, as a client does when it applies
/// its own pending commits optimistically. Never `Skipped`.
pub fn execute_optimistic(
    store: &dyn Storage,
    schema: &Schema,
    commit: &Commit,
    position: u64,
    limits: &Limits,
) -> Result<Outcome, Error> {
    optimistic_metered(store, schema, commit, position, limits).map(|(o, _)| o)
}

fn optimistic_metered(
    store: &dyn Storage,
    schema: &Schema,
    commit: &Commit,
    position: u64,
    limits: &Limits,
) -> Result<(Outcome, Usage), Error> {
    optimistic_traced(store, schema, commit, position, limits, false).map(|(o, u, _)| (o, u))
}

/// [`optimistic_metered`], with the explain trace when `trace` ([`crate::explain`]).
#[allow(clippy::type_complexity)]
pub(crate) fn optimistic_traced(
    store: &dyn Storage,
    schema: &Schema,
    commit: &Commit,
    position: u64,
    limits: &Limits,
    trace: bool,
) -> Result<(Outcome, Usage, Option<Box<Recorder>>), Error> {
    // The last line of defence: a panic inside the engine is a bug, but it must not
    // stop a replica, and every replica must record the same outcome for the entry. The
    // execution only reads the store, so nothing is left half-done. (The browser's
    // build aborts on a panic instead; it only executes its own commits.)
    let run = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        run(store, schema, commit, position, limits, trace)
    }));
    let (r, usage, rec) = match run {
        Ok(r) => r,
        Err(_) => {
            return Ok((
                Outcome::Rejected {
                    code: ErrorCode::Internal,
                    message: INTERNAL_MESSAGE.to_owned(),
                },
                Usage::default(),
                None,
            ))
        }
    };
    match r {
        Ok(o) => Ok((o, usage, rec)),
        Err(e) if e.code.is_deterministic() => Ok((
            Outcome::Rejected {
                code: e.code,
                message: cap_message(e.to_string()),
            },
            usage,
            rec,
        )),
        Err(e) => Err(e),
    }
}

/// The message of a commit the engine failed on (the same on every replica: no panic
/// text, which names source lines that differ between versions).
pub const INTERNAL_MESSAGE: &str = "INTERNAL_ERROR: the engine failed inside while executing \
     this commit (a bug); it is refused on every replica";

/// The longest message a rejection keeps, in bytes: messages are stored with kept
/// outcomes and sent to clients, and `abort` takes any value.
pub const MAX_MESSAGE_BYTES: usize = 1024;

fn cap_message(mut m: String) -> String {
    if m.len() > MAX_MESSAGE_BYTES {
        let mut cut = MAX_MESSAGE_BYTES - 3;
        while !m.is_char_boundary(cut) {
            cut -= 1;
        }
        m.truncate(cut);
        m.push('…');
    }
    m
}

/// What a server does with a commit at `position`: runs it ([`execute`]), checks and
/// counts the identity's quotas ([`crate::quota`]), and builds the batch that records
/// its outcome ([`effects_batch`]) together with the server's own derived state (the
/// quota counts, the read-rule index's member entries, [`crate::reach`]). A replica
/// applying outcomes computed by a server uses [`apply`] instead.
pub fn commit_batch(
    store: &dyn Storage,
    schema: &Schema,
    commit: &Commit,
    position: u64,
    limits: &Limits,
) -> Result<(Batch, Outcome), Error> {
    let mut outcome = execute(store, schema, commit, position, limits)?;
    let batch = |outcome: &Outcome| {
        effects_batch(
            store,
            schema,
            position,
            &commit.client_id,
            commit.client_seq,
            outcome,
        )
        .map(|(b, _)| b)
    };
    let mut b = batch(&outcome)?;
    if let Outcome::Committed { writes, .. } = &outcome {
        // The identity's quotas: over one, the commit is rejected and changes nothing.
        let sub = subject(&commit.auth);
        match crate::quota::account(store, &limits.quotas, &sub, writes, &b)? {
            Ok(ops) => {
                b.ops.extend(ops);
                b.ops.extend(schema.reach().member_ops(store, writes)?);
            }
            Err(message) => {
                outcome = Outcome::Rejected {
                    code: ErrorCode::IdentityQuota,
                    message: format!("{}: {message}", ErrorCode::IdentityQuota),
                };
                b = batch(&outcome)?;
            }
        }
    }
    Ok((b, outcome))
}

/// Records an outcome at `position`: its writes, the client's sequence number, the
/// digest and the position, in one atomic batch. Returns the new digest.
pub fn apply(
    store: &mut dyn Storage,
    schema: &Schema,
    position: u64,
    client_id: &str,
    client_seq: u64,
    outcome: &Outcome,
) -> Result<[u8; 32], Error> {
    let (batch, d) = effects_batch(store, schema, position, client_id, client_seq, outcome)?;
    store.apply(batch)?;
    Ok(d)
}

/// Runs a read-only query (a block of statements) and returns its result as data.
/// Reads are filtered by the read rules for `auth`.
pub fn query(
    store: &dyn Storage,
    schema: &Schema,
    source: &str,
    auth: &Value,
    now: i64,
    limits: &Limits,
) -> Result<Value, Error> {
    query_metered(store, schema, source, auth, now, limits).0
}

/// [`query`], and what it used of its limits.
pub fn query_metered(
    store: &dyn Storage,
    schema: &Schema,
    source: &str,
    auth: &Value,
    now: i64,
    limits: &Limits,
) -> (Result<Value, Error>, Usage) {
    let (r, usage, _) = query_traced(store, schema, source, auth, now, limits, false);
    (r, usage)
}

/// [`query_metered`], with the explain trace when `trace` ([`crate::explain`]).
pub(crate) fn query_traced(
    store: &dyn Storage,
    schema: &Schema,
    source: &str,
    auth: &Value,
    now: i64,
    limits: &Limits,
    trace: bool,
) -> (Result<Value, Error>, Usage, Option<Box<Recorder>>) {
    let block = (|| {
        if source.len() > limits.max_args_bytes {
            return Err(Error::new(
                ErrorCode::ArgumentTooLarge,
                format!(
                    "the query is {} bytes; the limit is {}",
                    source.len(),
                    limits.max_args_bytes
                ),
            ));
        }
        check_input(auth, limits)?;
        let block = parse_block(source)?;
        Ok((block, position(store)?))
    })();
    let (block, at) = match block {
        Ok(b) => b,
        Err(e) => return (Err(e), Usage::default(), None),
    };
    let ctx = Context::reader(auth, now, at);
    let mut ev = Evaluator::new(schema, store, limits, &ctx, Mode::Query);
    if trace {
        ev.explain = Some(Box::default());
    }
    let r = (|| {
        let v = ev.run_block(&block)?;
        // A page or an array read from a set was measured as it was built.
        let known = v.known_encoded_len();
        let v = ev.materialize(v)?;
        check_result_len(known.unwrap_or_else(|| v.encoded_len() as u64), limits)?;
        Ok(v)
    })();
    (r, ev.usage(), ev.explain.take())
}

/// Whether `auth` may read documents of `collection` in `partition` (the sync server
/// asks this before it sends a partition to a client).
pub fn can_read_partition(
    store: &dyn Storage,
    schema: &Schema,
    collection: &str,
    partition: &str,
    auth: &Value,
    limits: &Limits,
) -> Result<bool, Error> {
    read_rule_with_reads(store, schema, collection, partition, auth, limits).map(|(ok, _)| ok)
}

/// Like [`can_read_partition`], and also what the rule read: a write to any of it may
/// change the answer (a member removed from the team document the rule reads).
pub fn read_rule_with_reads(
    store: &dyn Storage,
    schema: &Schema,
    collection: &str,
    partition: &str,
    auth: &Value,
    limits: &Limits,
) -> Result<(bool, crate::eval::ReadSet), Error> {
    let coll = schema.collection(collection)?;
    let ctx = Context::reader(auth, 0, 0);
    let mut ev = Evaluator::new(schema, store, limits, &ctx, Mode::Query);
    ev.reads = Some(Default::default());
    let ok = ev.can_read(coll, partition)?;
    Ok((ok, ev.reads.take().unwrap_or_default()))
}

/// A store, a schema and limits: the engine as a replica runs it.
pub struct Executor<S: Storage> {
    store: S,
    schema: std::sync::Arc<Schema>,
    limits: Limits,
}

impl<S: Storage> Executor<S> {
    pub fn new(store: S, schema: std::sync::Arc<Schema>, limits: Limits) -> Executor<S> {
        Executor {
            store,
            schema,
            limits,
        }
    }

    /// Executes a commit at `position` and records its outcome.
    pub fn commit(&mut self, commit: &Commit, position: u64) -> Result<Outcome, Error> {
        let outcome = execute(&self.store, &self.schema, commit, position, &self.limits)?;
        apply(
            &mut self.store,
            &self.schema,
            position,
            &commit.client_id,
            commit.client_seq,
            &outcome,
        )?;
        Ok(outcome)
    }

    /// Applies a log entry at `position`: a commit (as [`Executor::commit`] does, with
    /// its time clamped) or a schema change, which switches this executor's schema when
    /// it passes. See [`crate::entry`].
    pub fn apply_entry(
        &mut self,
        entry: crate::protocol::LogEntry,
        position: u64,
    ) -> Result<crate::entry::Applied, Error> {
        use crate::entry::{Applied, SchemaApplied};
        let (batch, applied) =
            crate::entry::entry_batch(&self.store, &self.schema, entry, position, &self.limits)?;
        self.store.apply(batch)?;
        if let Applied::Schema(SchemaApplied::Switched(s)) = &applied {
            self.schema = s.clone();
        }
        Ok(applied)
    }

    /// [`Executor::commit`] as a server does it, with the server's derived state
    /// ([`commit_batch`]).
    pub fn serve_commit(&mut self, commit: &Commit, position: u64) -> Result<Outcome, Error> {
        let (batch, outcome) =
            commit_batch(&self.store, &self.schema, commit, position, &self.limits)?;
        self.store.apply(batch)?;
        Ok(outcome)
    }

    /// Records an outcome another replica computed (replaying effects).
    pub fn apply(
        &mut self,
        position: u64,
        client_id: &str,
        client_seq: u64,
        outcome: &Outcome,
    ) -> Result<[u8; 32], Error> {
        apply(
            &mut self.store,
            &self.schema,
            position,
            client_id,
            client_seq,
            outcome,
        )
    }

    pub fn query(&self, source: &str, auth: &Value, now: i64) -> Result<Value, Error> {
        query(&self.store, &self.schema, source, auth, now, &self.limits)
    }

    pub fn digest(&self) -> Result<[u8; 32], Error> {
        digest(&self.store)
    }

    pub fn position(&self) -> Result<u64, Error> {
        position(&self.store)
    }

    pub fn store(&self) -> &S {
        &self.store
    }

    pub fn store_mut(&mut self) -> &mut S {
        &mut self.store
    }

    pub fn schema(&self) -> &Schema {
        &self.schema
    }

    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    pub fn set_limits(&mut self, limits: Limits) {
        self.limits = limits;
    }

    pub fn into_store(self) -> S {
        self.store
    }
}
