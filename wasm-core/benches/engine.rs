//! Engine benchmark on the memory backend.
//!
//! Run with `cargo bench -p warren-core --bench engine`; add `-- TEXT` to run only the
//! workloads whose name contains TEXT, e.g. `-- query` or `-- count`.
//! `docs/BENCHMARKS.md` explains the workloads and how to read the figures.
//!
//! A hand-written harness, std only, so that it builds quickly. Every workload is timed
//! against a *peer* in the same run (the raw storage writes the engine has to make, or a
//! hand-written `BTreeMap` scan answering the same question), so the ratio
//! Warren/peer means something even on a noisy shared machine. Every result is checked
//! (ids, order, counts, the written state), so a broken engine cannot post a fast time.
//!
//! Without `--bench` (as under `cargo test --benches`) it runs a small smoke version:
//! the same checks on a small data set, one repetition.

use std::collections::{BTreeSet, HashMap};
use std::hint::black_box;
use std::ops::Bound;
use std::sync::Arc;
use std::time::{Duration, Instant};

use warren_core::doc::StoredDoc;
use warren_core::eval::Limits;
use warren_core::exec::{Commit, Executor, Op, Outcome};
use warren_core::keys;
use warren_core::schema::Schema;
use warren_core::storage::{Batch, MemoryStore, Storage};
use warren_core::testing::Rng;
use warren_core::value::{obj, Value};

const SCHEMA: &str = r#"
collection Todo {
  partition "user:" + doc.owner
  index byOwner [owner, created]
  allow read   partition == "user:" + auth.sub
  allow create doc.owner == auth.sub
  allow update old.owner == auth.sub && doc.owner == auth.sub
}

function add(title, tags) {
  Todo.create({ owner: auth.sub, title, done: false, created: now(), tags })
}

function toggle(id) {
  let t = Todo.byId(id) ?? abort("no such todo")
  t.update({ done: !t.done })
}
"#;

/// Base timestamp of the data set (ms); document `i` is created at `T0 + i * 1000`.
const T0: i64 = 1_700_000_000_000;

struct Config {
    docs: usize,
    owners: usize,
    clients: usize,
    writes: usize,
    reps: usize,
    /// Time one repetition of a query workload should take (sets its iteration count).
    query_rep: Duration,
}

const FULL: Config = Config {
    docs: 100_000,
    owners: 50,
    clients: 100,
    writes: 5_000,
    reps: 7,
    query_rep: Duration::from_millis(150),
};

const SMOKE: Config = Config {
    docs: 2_000,
    owners: 50,
    clients: 100,
    writes: 200,
    reps: 1,
    query_rep: Duration::from_millis(2),
};

// ----- data -----

const WORDS: &[&str] = &[
    "buy",
    "milk",
    "call",
    "the",
    "plumber",
    "about",
    "kitchen",
    "sink",
    "review",
    "pull",
    "request",
    "for",
    "sync",
    "server",
    "book",
    "flights",
    "to",
    "lisbon",
    "renew",
    "passport",
    "water",
    "plants",
    "write",
    "quarterly",
    "report",
    "fix",
    "bike",
    "tyre",
    "pay",
    "rent",
];

const TAGS: &[&str] = &[
    "home", "work", "errand", "urgent", "later", "health", "money", "travel", "family", "code",
];

fn title(rng: &mut Rng) -> String {
    let mut t = String::new();
    while t.len() < 36 {
        if !t.is_empty() {
            t.push(' ');
        }
        t.push_str(WORDS[rng.index(WORDS.len())]);
    }
    t
}

/// A todo as the bench's own model knows it (the expected state).
#[derive(Clone, Debug)]
struct Row {
    id: String,
    client: usize,
    owner: String,
    title: String,
    created: i64,
    tags: [String; 2],
}

/// Commit `n` of the data set (and of the create workload after it): its client, owner,
/// title, tags and timestamp. Owner `n % owners`, so owners get equal shares.
fn spec(n: usize, cfg: &Config, rng: &mut Rng) -> Row {
    let client = n % cfg.clients;
    let a = rng.index(TAGS.len());
    let b = (a + 1 + rng.index(TAGS.len() - 1)) % TAGS.len();
    Row {
        id: String::new(),
        client,
        owner: format!("u{}", client % cfg.owners),
        title: title(rng),
        created: T0 + n as i64 * 1000,
        tags: [TAGS[a].to_owned(), TAGS[b].to_owned()],
    }
}

fn client_id(client: usize) -> String {
    format!("device-{client:03}")
}

fn auth(owner: &str) -> Value {
    obj([("sub", Value::from(owner))])
}

fn add_commit(r: &Row, seq: u64) -> Commit {
    Commit {
        client_id: client_id(r.client),
        client_seq: seq,
        schema_version: String::new(),
        timestamp: r.created,
        auth: auth(&r.owner),
        op: Op::Call {
            function: "add".into(),
            args: obj([
                ("title", Value::from(r.title.as_str())),
                (
                    "tags",
                    Value::Array(r.tags.iter().map(|t| Value::from(t.as_str())).collect()),
                ),
            ]),
        },
    }
}

// ----- checks -----

fn fail(msg: String) -> ! {
    panic!("benchmark result check failed: {msg}")
}

fn check(ok: bool, msg: impl FnOnce() -> String) {
    if !ok {
        fail(msg())
    }
}

/// The one document write of a committed single-document commit.
fn single_write(out: &Outcome, what: &str) -> (String, Value) {
    match out {
        Outcome::Committed { writes, .. } if writes.len() == 1 => {
            let w = &writes[0];
            check(w.collection == "Todo", || format!("{what}: wrote {w:?}"));
            let data = w
                .data
                .clone()
                .unwrap_or_else(|| fail(format!("{what}: deleted")));
            (w.id.clone(), data)
        }
        other => fail(format!(
            "{what}: expected one committed write, got {other:?}"
        )),
    }
}

/// Checks the outcome of `add` for `r` at `pos` and returns the new id.
fn check_created(out: &Outcome, r: &Row, pos: u64) -> String {
    let (id, data) = single_write(out, "add");
    let Outcome::Committed { writes, result } = out else {
        unreachable!()
    };
    let w = &writes[0];
    let tags = Value::Array(r.tags.iter().map(|t| Value::from(t.as_str())).collect());
    check(
        w.version == pos
            && w.partition == format!("user:{}", r.owner)
            && data.get("owner").as_str() == Some(r.owner.as_str())
            && data.get("title").as_str() == Some(r.title.as_str())
            && matches!(data.get("done"), Value::Bool(false))
            && matches!(data.get("created"), Value::Int(c) if *c == r.created)
            && data.get("tags").loose_eq(&tags)
            && result.get("id").as_str() == Some(id.as_str()),
        || format!("add at {pos}: unexpected write {w:?} / result {result}"),
    );
    id
}

/// Ids of an array-of-documents query result, checking each document's owner.
fn result_ids(v: &Value, owner: &str) -> Vec<String> {
    let Value::Array(items) = v else {
        fail(format!("expected an array, got {v}"))
    };
    items
        .iter()
        .map(|d| {
            check(d.get("owner").as_str() == Some(owner), || {
                format!("document of the wrong owner {d}")
            });
            d.get("id")
                .as_str()
                .unwrap_or_else(|| fail(format!("no id in {d}")))
                .to_owned()
        })
        .collect()
}

/// Compares two stores entry by entry, except the digest (the peers do not hash) and
/// the kept outcomes (the peers write a record of the same size, not the same bytes).
fn same_state(a: &MemoryStore, b: &MemoryStore) -> bool {
    let skip = |e: &(&Vec<u8>, &Vec<u8>)| {
        e.0.as_slice() != keys::META_DIGEST && e.0.first() != Some(&keys::SPACE_OUTCOME)
    };
    a.len() == b.len() && a.entries().filter(skip).eq(b.entries().filter(skip))
}

/// The peer's stand-in for the engine's kept outcome: a record of about the same size,
/// and the same pruning of the record KEPT_OUTCOMES commits back.
fn peer_outcome(b: &mut Batch, client: &str, seq: u64, record: Vec<u8>) {
    b.put(keys::outcome_key(client, seq), record);
    if seq > warren_core::exec::KEPT_OUTCOMES {
        b.delete(keys::outcome_key(
            client,
            seq - warren_core::exec::KEPT_OUTCOMES,
        ));
    }
}

// ----- timing -----

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

fn percentile(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(f64::total_cmp);
    let i = ((v.len() as f64 - 1.0) * p).round() as usize;
    v[i]
}

/// Nanoseconds per operation.
fn per_op(d: Duration, n: usize) -> f64 {
    d.as_secs_f64() * 1e9 / n as f64
}

fn fmt_ns(ns: f64) -> String {
    if ns >= 1e6 {
        format!("{:.2} ms", ns / 1e6)
    } else if ns >= 1e3 {
        format!("{:.2} µs", ns / 1e3)
    } else {
        format!("{ns:.0} ns")
    }
}

fn fmt_rate(ns: f64) -> String {
    let r = 1e9 / ns;
    if r >= 1e6 {
        format!("{:.2} M/s", r / 1e6)
    } else if r >= 1e3 {
        format!("{:.1} k/s", r / 1e3)
    } else {
        format!("{r:.0} /s")
    }
}

struct Line {
    name: String,
    warren: f64,
    p99: Option<f64>,
    peer_name: &'static str,
    peer: f64,
}

struct Report {
    rows: Vec<Line>,
}

impl Report {
    fn add(
        &mut self,
        name: &str,
        warren: &mut [f64],
        samples: Option<&mut [f64]>,
        peer_name: &'static str,
        peer: &mut [f64],
    ) {
        let row = Line {
            name: name.to_owned(),
            warren: median(warren),
            p99: samples.map(|s| percentile(s, 0.99)),
            peer_name,
            peer: median(peer),
        };
        println!(
            "  {:<44} warren {:>10}  peer {:>10}  ratio {:>7.1}x",
            row.name,
            fmt_ns(row.warren),
            fmt_ns(row.peer),
            row.warren / row.peer
        );
        self.rows.push(row);
    }

    fn print(&self, reps: usize) {
        println!();
        println!("Medians of {reps} repetitions; time per operation (one commit / one query).");
        println!();
        println!("| workload | Warren median | Warren ops/s | Warren p99 | peer | peer median | peer ops/s | ratio Warren/peer |");
        println!("|---|---:|---:|---:|---|---:|---:|---:|");
        for r in &self.rows {
            println!(
                "| {} | {} | {} | {} | {} | {} | {} | {:.1}x |",
                r.name,
                fmt_ns(r.warren),
                fmt_rate(r.warren),
                r.p99.map_or("-".to_owned(), fmt_ns),
                r.peer_name,
                fmt_ns(r.peer),
                fmt_rate(r.peer),
                r.warren / r.peer
            );
        }
    }
}

// ----- machine -----

fn machine_facts() {
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let field = |name: &str| {
        cpuinfo
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split(':').nth(1))
            .map(|s| s.trim().to_owned())
    };
    let mem = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .next()
                .map(|l| l.split_whitespace().nth(1).unwrap_or("").to_owned())
        })
        .and_then(|kb| kb.parse::<u64>().ok())
        .map_or("?".to_owned(), |kb| {
            format!("{:.1} GiB", kb as f64 / 1048576.0)
        });
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    println!("machine:");
    println!("  cpus available : {cpus}");
    println!(
        "  cpu model      : {}",
        field("model name").unwrap_or("?".into())
    );
    println!(
        "  cpu MHz        : {}",
        field("cpu MHz").unwrap_or("?".into())
    );
    println!("  memory         : {mem}");
    println!(
        "  os             : {} {} {}",
        std::env::consts::OS,
        std::env::consts::ARCH,
        kernel.trim()
    );
    println!("  load average   : {}", loadavg());
    // What one `Instant::now()` pair costs, since query samples are timed one by one.
    let t = Instant::now();
    let mut x = t;
    for _ in 0..10_000 {
        x = black_box(Instant::now());
    }
    println!(
        "  timer overhead : {:.0} ns per Instant::now()",
        per_op(x - t, 10_000)
    );
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into())
}

// ----- the hand-written peer for queries -----

#[derive(Clone, Debug)]
#[allow(dead_code)] // the fields are the payload a query returns
struct Todo {
    id: String,
    owner: String,
    title: String,
    done: bool,
    created: i64,
    tags: Vec<String>,
}

/// Documents by id and an index `(owner, created, id)`, as one would write them by hand.
struct NativeDb {
    docs: HashMap<String, Todo>,
    by_owner: BTreeSet<(String, i64, String)>,
}

type IxKey = (String, i64, String);

impl NativeDb {
    fn owner_range(&self, owner: &str, from: i64) -> (Bound<IxKey>, Bound<IxKey>) {
        (
            Bound::Included((owner.to_owned(), from, String::new())),
            Bound::Excluded((owner.to_owned(), i64::MAX, String::new())),
        )
    }

    fn newest(&self, owner: &str, n: usize) -> Vec<Todo> {
        self.by_owner
            .range(self.owner_range(owner, i64::MIN))
            .rev()
            .take(n)
            .map(|(_, _, id)| self.docs[id].clone())
            .collect()
    }

    fn from(&self, owner: &str, gte: i64, n: usize) -> Vec<Todo> {
        self.by_owner
            .range(self.owner_range(owner, gte))
            .take(n)
            .map(|(_, _, id)| self.docs[id].clone())
            .collect()
    }

    fn count(&self, owner: &str) -> usize {
        self.by_owner
            .range(self.owner_range(owner, i64::MIN))
            .count()
    }

    fn get(&self, id: &str) -> Option<Todo> {
        self.docs.get(id).cloned()
    }
}

// ----- workloads -----

struct Base {
    store: MemoryStore,
    rows: Vec<Row>,
    seqs: Vec<u64>,
}

/// Loads the data set through the engine: one `add` commit per document.
fn load(cfg: &Config, schema: &Arc<Schema>) -> Base {
    let mut ex = Executor::new(MemoryStore::new(), schema.clone(), Limits::default());
    let mut rng = Rng(42);
    let mut seqs = vec![0u64; cfg.clients];
    let mut rows = Vec::with_capacity(cfg.docs);
    let t = Instant::now();
    for n in 0..cfg.docs {
        let mut r = spec(n, cfg, &mut rng);
        seqs[r.client] += 1;
        let pos = n as u64 + 1;
        let out = ex
            .commit(&add_commit(&r, seqs[r.client]), pos)
            .unwrap_or_else(|e| fail(format!("load commit {pos}: {e}")));
        r.id = check_created(&out, &r, pos);
        rows.push(r);
    }
    let el = t.elapsed();
    let store = ex.into_store();
    println!(
        "loaded {} documents with {} commits in {:.2} s ({} per commit on a growing store); {} keys",
        cfg.docs,
        cfg.docs,
        el.as_secs_f64(),
        fmt_ns(per_op(el, cfg.docs)),
        store.len()
    );
    Base { store, rows, seqs }
}

fn bench_create(cfg: &Config, schema: &Arc<Schema>, base: &Base, report: &mut Report) {
    // The same commits every repetition, each from a fresh copy of the loaded store.
    let mut rng = Rng(7);
    let mut seqs = base.seqs.clone();
    let work: Vec<(Commit, u64, Row)> = (0..cfg.writes)
        .map(|k| {
            let n = cfg.docs + k;
            let r = spec(n, cfg, &mut rng);
            seqs[r.client] += 1;
            (add_commit(&r, seqs[r.client]), n as u64 + 1, r)
        })
        .collect();
    let mut warren = Vec::new();
    let mut first: Option<(MemoryStore, Vec<String>, [u8; 32])> = None;
    for _ in 0..cfg.reps {
        let mut ex = Executor::new(base.store.clone(), schema.clone(), Limits::default());
        let mut outs = Vec::with_capacity(work.len());
        let t = Instant::now();
        for (c, pos, _) in &work {
            outs.push(ex.commit(c, *pos));
        }
        let el = t.elapsed();
        warren.push(per_op(el, work.len()));
        let ids: Vec<String> = outs
            .iter()
            .zip(&work)
            .map(|(o, (_, pos, r))| {
                let o = o
                    .as_ref()
                    .unwrap_or_else(|e| fail(format!("create {pos}: {e}")));
                check_created(o, r, *pos)
            })
            .collect();
        let per_owner = (cfg.docs + cfg.writes) / cfg.owners;
        for owner in ["u0", "u7"] {
            let n = ex
                .query("Todo.byOwner(auth.sub).count()", &auth(owner), 0)
                .unwrap_or_else(|e| fail(format!("count: {e}")));
            check(n == Value::Int(per_owner as i64), || {
                format!("after creates, {owner} has {n} todos, expected {per_owner}")
            });
        }
        let digest = ex.digest().unwrap();
        match &first {
            None => first = Some((ex.into_store(), ids, digest)),
            Some((_, ids0, d0)) => check(*ids0 == ids && *d0 == digest, || {
                "create repetitions disagree (ids or digest): not deterministic".into()
            }),
        }
    }
    let (warren_state, ids, _) = first.unwrap();

    // Peer: the same key-value writes, built and applied directly, one batch per document.
    let docs: Vec<(StoredDoc, &str, &Row, u64)> = work
        .iter()
        .zip(&ids)
        .map(|((c, pos, r), id)| {
            let data = obj([
                ("owner", Value::from(r.owner.as_str())),
                ("title", Value::from(r.title.as_str())),
                ("done", Value::Bool(false)),
                ("created", Value::Int(r.created)),
                (
                    "tags",
                    Value::Array(r.tags.iter().map(|t| Value::from(t.as_str())).collect()),
                ),
            ]);
            let d = StoredDoc {
                partition: format!("user:{}", r.owner),
                version: *pos,
                data,
            };
            (d, id.as_str(), r, c.client_seq)
        })
        .collect();
    let clients: Vec<String> = (0..cfg.clients).map(client_id).collect();
    let mut peer = Vec::new();
    for rep in 0..cfg.reps {
        let mut store = base.store.clone();
        let t = Instant::now();
        for (d, id, r, seq) in &docs {
            let mut b = Batch::new();
            b.put(keys::doc_key("Todo", id), d.encode());
            let ix = [Value::from(r.owner.as_str()), Value::Int(r.created)];
            b.put(
                keys::index_key("Todo", "byOwner", &ix, id),
                d.partition.as_bytes().to_vec(),
            );
            b.put(keys::partition_key(&d.partition, "Todo", id), Vec::new());
            b.put(
                keys::version_key(&d.partition, "Todo"),
                d.version.to_be_bytes().to_vec(),
            );
            b.put(
                keys::client_key(&clients[r.client]),
                seq.to_be_bytes().to_vec(),
            );
            peer_outcome(&mut b, &clients[r.client], *seq, d.encode());
            b.put(keys::META_DIGEST.to_vec(), vec![0; 32]);
            b.put(
                keys::META_POSITION.to_vec(),
                d.version.to_be_bytes().to_vec(),
            );
            store.apply(b).unwrap();
        }
        let el = t.elapsed();
        peer.push(per_op(el, docs.len()));
        if rep == 0 {
            check(same_state(&store, &warren_state), || {
                "the create peer's state differs from the engine's".into()
            });
        }
    }
    report.add(
        &format!("create: 1 doc per commit ({} on {})", cfg.writes, cfg.docs),
        &mut warren,
        None,
        "raw Batch (6 keys)",
        &mut peer,
    );
}

fn bench_update(cfg: &Config, schema: &Arc<Schema>, base: &Base, report: &mut Report) {
    let mut rng = Rng(99);
    let mut seqs = base.seqs.clone();
    let mut done: HashMap<usize, bool> = HashMap::new();
    // (commit, position, document number, done after)
    let work: Vec<(Commit, u64, usize, bool)> = (0..cfg.writes)
        .map(|k| {
            let j = rng.index(cfg.docs);
            let r = &base.rows[j];
            seqs[r.client] += 1;
            let d = done.entry(j).or_insert(false);
            *d = !*d;
            let c = Commit {
                client_id: client_id(r.client),
                client_seq: seqs[r.client],
                schema_version: String::new(),
                timestamp: T0 + (cfg.docs + k) as i64 * 1000,
                auth: auth(&r.owner),
                op: Op::Call {
                    function: "toggle".into(),
                    args: obj([("id", Value::from(r.id.as_str()))]),
                },
            };
            (c, (cfg.docs + k) as u64 + 1, j, *d)
        })
        .collect();
    let mut warren = Vec::new();
    let mut first: Option<(MemoryStore, [u8; 32])> = None;
    for _ in 0..cfg.reps {
        let mut ex = Executor::new(base.store.clone(), schema.clone(), Limits::default());
        let mut outs = Vec::with_capacity(work.len());
        let t = Instant::now();
        for (c, pos, _, _) in &work {
            outs.push(ex.commit(c, *pos));
        }
        let el = t.elapsed();
        warren.push(per_op(el, work.len()));
        for (o, (_, pos, j, want)) in outs.iter().zip(&work) {
            let o = o
                .as_ref()
                .unwrap_or_else(|e| fail(format!("toggle {pos}: {e}")));
            let (id, data) = single_write(o, "toggle");
            let r = &base.rows[*j];
            check(
                id == r.id
                    && matches!(data.get("done"), Value::Bool(b) if b == want)
                    && data.get("title").as_str() == Some(r.title.as_str())
                    && matches!(data.get("created"), Value::Int(c) if *c == r.created),
                || format!("toggle {pos} of {}: unexpected {data}", r.id),
            );
        }
        let digest = ex.digest().unwrap();
        match &first {
            None => first = Some((ex.into_store(), digest)),
            Some((_, d0)) => check(*d0 == digest, || {
                "update repetitions disagree (digest): not deterministic".into()
            }),
        }
    }
    let (warren_state, _) = first.unwrap();

    // Peer: read the stored document, flip `done`, write it back with the client's
    // sequence number, digest and position: the same 4 keys a toggle commit writes.
    let work: Vec<(String, String, u64, u64)> = work
        .iter()
        .map(|(c, pos, j, _)| {
            (
                base.rows[*j].id.clone(),
                c.client_id.clone(),
                c.client_seq,
                *pos,
            )
        })
        .collect();
    let mut peer = Vec::new();
    for rep in 0..cfg.reps {
        let mut store = base.store.clone();
        let t = Instant::now();
        for (id, cid, seq, pos) in &work {
            let key = keys::doc_key("Todo", id);
            let bytes = store.get(&key).unwrap().expect("document present");
            let mut d = StoredDoc::decode(&bytes).unwrap();
            if let Value::Object(o) = &mut d.data {
                let v = matches!(o.get("done"), Some(Value::Bool(true)));
                o.insert("done", Value::Bool(!v));
            }
            d.version = *pos;
            let mut b = Batch::new();
            let record = d.encode();
            b.put(
                keys::version_key(&d.partition, "Todo"),
                pos.to_be_bytes().to_vec(),
            );
            b.put(key, record.clone());
            b.put(keys::client_key(cid), seq.to_be_bytes().to_vec());
            peer_outcome(&mut b, cid, *seq, record);
            b.put(keys::META_DIGEST.to_vec(), vec![0; 32]);
            b.put(keys::META_POSITION.to_vec(), pos.to_be_bytes().to_vec());
            store.apply(b).unwrap();
        }
        let el = t.elapsed();
        peer.push(per_op(el, work.len()));
        if rep == 0 {
            check(same_state(&store, &warren_state), || {
                "the update peer's state differs from the engine's".into()
            });
        }
    }
    report.add(
        &format!(
            "update: toggle 1 doc per commit ({} on {})",
            cfg.writes, cfg.docs
        ),
        &mut warren,
        None,
        "get + decode + Batch (4 keys)",
        &mut peer,
    );
}

/// Checks Warren's answer for an owner.
type CheckFn<'a> = Box<dyn Fn(usize, &Value) + 'a>;
/// Answers the same question for an owner with the hand-written peer; the answer's size.
type PeerFn<'a> = Box<dyn Fn(&NativeDb, usize) -> usize + 'a>;

/// A query workload: Warren's source and the expected answer per owner, and the peer.
struct QueryWork<'a> {
    name: String,
    /// Per owner: (query source, auth).
    sources: Vec<(String, Value)>,
    check: CheckFn<'a>,
    peer_name: &'static str,
    peer: PeerFn<'a>,
}

/// Runs `op(k)` for k = 0.. until about `target` has passed; the iteration count.
fn calibrate(target: Duration, mut op: impl FnMut(usize)) -> usize {
    let t = Instant::now();
    let mut n = 0;
    while n < 3 || t.elapsed() < target / 10 {
        op(n);
        n += 1;
    }
    let each = t.elapsed().as_secs_f64() / n as f64;
    ((target.as_secs_f64() / each) as usize).clamp(5, 1_000_000)
}

fn bench_query(
    cfg: &Config,
    ex: &Executor<MemoryStore>,
    db: &NativeDb,
    w: &QueryWork,
    report: &mut Report,
) {
    let owners = cfg.owners;
    let run = |k: usize| -> Value {
        let (src, a) = &w.sources[k % owners];
        ex.query(src, a, 0)
            .unwrap_or_else(|e| fail(format!("{}: {e}", w.name)))
    };
    let n = calibrate(cfg.query_rep, |k| (w.check)(k % owners, &run(k)));
    let mut warren = Vec::new();
    let mut samples = Vec::new();
    for _ in 0..cfg.reps {
        let mut total = Duration::ZERO;
        for k in 0..n {
            let t = Instant::now();
            let v = run(k);
            let el = t.elapsed();
            total += el;
            samples.push(el.as_secs_f64() * 1e9);
            (w.check)(k % owners, &v);
        }
        warren.push(per_op(total, n));
    }

    // The peer is timed as a whole loop (it is fast enough for the timer to matter) and
    // returns the size of its answer, checked against the expected one.
    let expected: Vec<usize> = (0..owners)
        .map(|o| match &run(o) {
            Value::Array(a) => a.len(),
            Value::Int(c) => *c as usize,
            Value::Object(_) => 1,
            other => fail(format!("{}: unexpected result {other}", w.name)),
        })
        .collect();
    let pn = calibrate(cfg.query_rep, |k| {
        let got = (w.peer)(db, k % owners);
        check(got == expected[k % owners], || {
            format!(
                "{} peer: {got} results, expected {}",
                w.name,
                expected[k % owners]
            )
        });
    });
    let mut peer = Vec::new();
    let mut sink = 0usize;
    for _ in 0..cfg.reps {
        let t = Instant::now();
        for k in 0..pn {
            sink = sink.wrapping_add(black_box((w.peer)(db, k % owners)));
        }
        peer.push(per_op(t.elapsed(), pn));
    }
    black_box(sink);
    report.add(
        &w.name,
        &mut warren,
        Some(samples.as_mut_slice()),
        w.peer_name,
        &mut peer,
    );
}

fn query_workloads<'a>(cfg: &Config, base: &'a Base) -> Vec<QueryWork<'a>> {
    // Per owner, its rows in `created` order (rows are already in that order).
    let mut by_owner: Vec<Vec<&Row>> = vec![Vec::new(); cfg.owners];
    for r in &base.rows {
        let o: usize = r.owner[1..].parse().unwrap();
        by_owner[o].push(r);
    }
    let by_owner = Arc::new(by_owner);
    let owner = |o: usize| format!("u{o}");
    let per_owner = by_owner[0].len();
    let mid = |o: usize| by_owner[o][by_owner[o].len() / 2].created;

    let newest = {
        let b = by_owner.clone();
        move |o: usize, v: &Value, what: &str| {
            let want: Vec<&str> = b[o].iter().rev().take(20).map(|r| r.id.as_str()).collect();
            let got = result_ids(v, &format!("u{o}"));
            check(got == want, || {
                format!("{what} for u{o}: got {got:?}, expected {want:?}")
            });
        }
    };
    let newest2 = newest.clone();
    let b = by_owner.clone();
    vec![
        QueryWork {
            name: format!(
                "query: byOwner.order(desc(.created)).take(20) ({per_owner} of {})",
                cfg.docs
            ),
            sources: (0..cfg.owners)
                .map(|o| {
                    (
                        format!(
                            "Todo.byOwner(\"{}\").order(desc(.created)).take(20)",
                            owner(o)
                        ),
                        auth(&owner(o)),
                    )
                })
                .collect(),
            check: Box::new(move |o, v| newest(o, v, "order(desc).take(20)")),
            peer_name: "BTreeSet rev range, take 20",
            peer: Box::new(|db, o| db.newest(&format!("u{o}"), 20).len()),
        },
        QueryWork {
            name: format!(
                "query: byOwner.reverse().take(20) ({per_owner} of {})",
                cfg.docs
            ),
            sources: (0..cfg.owners)
                .map(|o| {
                    (
                        format!("Todo.byOwner(\"{}\").reverse().take(20)", owner(o)),
                        auth(&owner(o)),
                    )
                })
                .collect(),
            check: Box::new(move |o, v| newest2(o, v, "reverse().take(20)")),
            peer_name: "BTreeSet rev range, take 20",
            peer: Box::new(|db, o| db.newest(&format!("u{o}"), 20).len()),
        },
        QueryWork {
            name: format!(
                "query: byOwner.range({{gte}}).take(50) ({per_owner} of {})",
                cfg.docs
            ),
            sources: (0..cfg.owners)
                .map(|o| {
                    (
                        format!(
                            "Todo.byOwner(\"{}\").range({{ gte: {} }}).take(50)",
                            owner(o),
                            mid(o)
                        ),
                        auth(&owner(o)),
                    )
                })
                .collect(),
            check: {
                let b = by_owner.clone();
                Box::new(move |o, v| {
                    let rows = &b[o];
                    let want: Vec<&str> = rows[rows.len() / 2..]
                        .iter()
                        .take(50)
                        .map(|r| r.id.as_str())
                        .collect();
                    let got = result_ids(v, &format!("u{o}"));
                    check(got == want, || {
                        format!("range for u{o}: got {got:?}, expected {want:?}")
                    });
                })
            },
            peer_name: "BTreeSet range, take 50",
            peer: {
                let b = by_owner.clone();
                Box::new(move |db, o| {
                    let rows = &b[o];
                    db.from(&format!("u{o}"), rows[rows.len() / 2].created, 50)
                        .len()
                })
            },
        },
        QueryWork {
            name: format!("query: byOwner.count() ({per_owner} of {})", cfg.docs),
            sources: (0..cfg.owners)
                .map(|o| {
                    (
                        format!("Todo.byOwner(\"{}\").count()", owner(o)),
                        auth(&owner(o)),
                    )
                })
                .collect(),
            check: {
                let b = by_owner.clone();
                Box::new(move |o, v| {
                    check(*v == Value::Int(b[o].len() as i64), || {
                        format!("count for u{o}: got {v}, expected {}", b[o].len())
                    })
                })
            },
            peer_name: "BTreeSet range count",
            peer: Box::new(|db, o| db.count(&format!("u{o}"))),
        },
        QueryWork {
            name: format!("query: byId (point read of 1 of {})", cfg.docs),
            sources: (0..cfg.owners)
                .map(|o| {
                    let r = b[o][b[o].len() / 3];
                    (format!("Todo.byId(\"{}\")", r.id), auth(&owner(o)))
                })
                .collect(),
            check: {
                let b = by_owner.clone();
                Box::new(move |o, v| {
                    let r = b[o][b[o].len() / 3];
                    check(
                        v.get("id").as_str() == Some(r.id.as_str())
                            && v.get("title").as_str() == Some(r.title.as_str()),
                        || format!("byId {}: got {v}", r.id),
                    )
                })
            },
            peer_name: "HashMap get + clone",
            peer: {
                let b = by_owner.clone();
                Box::new(move |db, o| {
                    let r = b[o][b[o].len() / 3];
                    usize::from(db.get(&r.id).is_some())
                })
            },
        },
    ]
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let full = args.iter().any(|a| a == "--bench");
    let filter = args.iter().find(|a| !a.starts_with('-')).cloned();
    let wanted = |name: &str| filter.as_deref().is_none_or(|f| name.contains(f));
    let cfg = if full { &FULL } else { &SMOKE };

    println!(
        "warren-core engine benchmark (memory backend){}",
        if full { "" } else { ": smoke run" }
    );
    machine_facts();
    let started = Instant::now();
    let schema = Arc::new(Schema::parse(SCHEMA).unwrap_or_else(|e| fail(format!("schema: {e}"))));
    let base = load(cfg, &schema);
    let mut report = Report { rows: Vec::new() };

    if wanted("create") {
        bench_create(cfg, &schema, &base, &mut report);
    }
    if wanted("update") {
        bench_update(cfg, &schema, &base, &mut report);
    }
    let queries: Vec<QueryWork> = query_workloads(cfg, &base)
        .into_iter()
        .filter(|w| wanted(&w.name))
        .collect();
    if !queries.is_empty() {
        let db = NativeDb {
            docs: base
                .rows
                .iter()
                .map(|r| {
                    let t = Todo {
                        id: r.id.clone(),
                        owner: r.owner.clone(),
                        title: r.title.clone(),
                        done: false,
                        created: r.created,
                        tags: r.tags.to_vec(),
                    };
                    (r.id.clone(), t)
                })
                .collect(),
            by_owner: base
                .rows
                .iter()
                .map(|r| (r.owner.clone(), r.created, r.id.clone()))
                .collect(),
        };
        let ex = Executor::new(base.store.clone(), schema.clone(), Limits::default());
        for w in &queries {
            bench_query(cfg, &ex, &db, w, &mut report);
        }
    }

    report.print(cfg.reps);
    println!();
    println!(
        "all results checked; total {:.1} s; load average now {}",
        started.elapsed().as_secs_f64(),
        loadavg()
    );
}
