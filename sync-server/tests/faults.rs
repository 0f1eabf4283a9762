//! Crash safety with injected faults: the log and the region store run on a simulated
//! disk that fails, tears a write or loses power at a chosen operation. A scenario (a
//! first start, batches of commits through the log and the region, segment rolls,
//! durable and non-durable store commits, a client's retransmission) is run once to
//! count its operations, then once per operation and kind of fault; after each, the
//! server's recovery runs on what the disk holds, and:
//!
//! - the log holds every batch whose append returned, in order, then at most a prefix
//!   of the batch being appended (nothing else);
//! - every acknowledged commit is in the log at the position its acknowledgement gave,
//!   and no commit took effect twice;
//! - the recovered store's state, position and digest are the log's replay, exactly;
//! - the recovered server keeps going: a client's retransmission of what was in flight
//!   and new commits are applied once, and the same checks hold again.
//!
//! `WARREN_FAULT_SEED` replays a run (the seed picks how much of what was not synced
//! survives a power loss, and where a write tears).

mod replay;

use std::collections::{BTreeMap, BTreeSet};
use std::io::{self, Cursor, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use replay::{assert_same_state, Replay, Rng, SCHEMA};
use warren_core::eval::Limits;
use warren_core::exec::{Commit, Op};
use warren_core::protocol::{encode_log_entry, CommitResult, LogEntry};
use warren_core::value::obj;
use warren_core::Schema;
use warren_server::log::fs::{FileSystem, ReadFile, WriteFile};
use warren_server::log::{FileLog, FileLogOptions, Log};
use warren_server::metrics::Metrics;
use warren_server::region::{self, Region, RegionMsg};
use warren_server::sequencer::{self, Backlog, Permit};
use warren_server::store::RedbStore;

// ---------------------------------------------------------------------------------
// The simulated disk

/// What happens at the chosen operation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Fault {
    /// The operation fails with an I/O error (a write first writes part of its bytes);
    /// later operations succeed. Then the process exits and starts again (what the
    /// page cache holds survives).
    Error,
    /// Like `Error`, then the power fails before the restart.
    ErrorThenPowerLoss,
    /// The process is killed during the operation (a write is torn); the page cache
    /// survives.
    Kill,
    /// The power fails during the operation: what was not synced survives only as a
    /// prefix, in the order it was written, torn anywhere.
    PowerLoss,
}

const FAULTS: [Fault; 4] = [
    Fault::PowerLoss,
    Fault::Error,
    Fault::ErrorThenPowerLoss,
    Fault::Kill,
];

#[derive(Clone, Debug)]
enum Pending {
    Write { offset: u64, bytes: Vec<u8> },
    SetLen(u64),
}

/// A file's bytes in copy-on-write chunks, so that keeping what is durable beside
/// what the page cache holds costs little (the region store's file is megabytes).
#[derive(Clone, Debug, Default)]
struct Content {
    len: usize,
    /// `CHUNK` bytes each, zeros past `len`.
    chunks: Vec<Arc<Vec<u8>>>,
}

const CHUNK: usize = 64 << 10;

impl Content {
    fn len(&self) -> usize {
        self.len
    }

    fn set_len(&mut self, len: usize) {
        if len < self.len {
            self.chunks.truncate(len.div_ceil(CHUNK));
            if !len.is_multiple_of(CHUNK) {
                let last = Arc::make_mut(self.chunks.last_mut().unwrap());
                last[len % CHUNK..].fill(0);
            }
        } else {
            let zero = Arc::new(vec![0u8; CHUNK]);
            self.chunks.resize(len.div_ceil(CHUNK), zero);
        }
        self.len = len;
    }

    fn write(&mut self, offset: usize, bytes: &[u8]) {
        let end = offset + bytes.len();
        if end > self.len {
            self.set_len(end);
        }
        let mut at = offset;
        while at < end {
            let (i, o) = (at / CHUNK, at % CHUNK);
            let n = (CHUNK - o).min(end - at);
            Arc::make_mut(&mut self.chunks[i])[o..o + n]
                .copy_from_slice(&bytes[at - offset..at - offset + n]);
            at += n;
        }
    }

    fn read(&self, offset: usize, len: usize) -> Vec<u8> {
        // copy_from_slice, not extend_from_slice: a memcpy even unoptimised.
        let mut out = vec![0u8; len];
        let mut at = offset;
        while at < offset + len {
            let (i, o) = (at / CHUNK, at % CHUNK);
            let n = (CHUNK - o).min(offset + len - at);
            out[at - offset..at - offset + n].copy_from_slice(&self.chunks[i][o..o + n]);
            at += n;
        }
        out
    }
}

#[derive(Clone, Debug, Default)]
struct SimFile {
    /// What reads see (the page cache).
    data: Content,
    /// What survives a power loss for sure.
    durable: Content,
    /// The changes since the last sync, in order.
    pending: Vec<Pending>,
}

fn apply_pending(data: &mut Content, op: &Pending) {
    match op {
        Pending::Write { offset, bytes } => data.write(*offset as usize, bytes),
        Pending::SetLen(len) => data.set_len(*len as usize),
    }
}

#[derive(Debug, Default)]
struct Disk {
    files: BTreeMap<u64, SimFile>,
    /// Directory entries: what the running system sees, and what is durable.
    names: BTreeMap<PathBuf, u64>,
    durable_names: BTreeMap<PathBuf, u64>,
    dirs: BTreeSet<PathBuf>,
    next_id: u64,
    /// Mutating operations so far.
    ops: u64,
    fault: Option<(u64, Fault)>,
    /// Set once a `Kill` or `PowerLoss` happened: every operation fails.
    dead: bool,
    rng: Rng,
}

/// What an operation may do.
enum Go {
    Run,
    /// Fail; a write first writes this many of its bytes.
    Fail {
        torn: usize,
    },
}

impl Disk {
    fn begin(&mut self, bytes: usize) -> io::Result<Go> {
        if self.dead {
            return Err(io::Error::other("the process is dead"));
        }
        let n = self.ops;
        self.ops += 1;
        match self.fault {
            Some((at, fault)) if at == n => {
                let torn = if bytes == 0 {
                    0
                } else {
                    self.rng.below(bytes as u64) as usize
                };
                if matches!(fault, Fault::Kill | Fault::PowerLoss) {
                    self.dead = true;
                }
                Ok(Go::Fail { torn })
            }
            _ => Ok(Go::Run),
        }
    }

    fn injected(&self) -> io::Error {
        io::Error::other(format!("injected fault at operation {}", self.ops - 1))
    }

    fn write(&mut self, id: u64, offset: u64, bytes: &[u8]) -> io::Result<()> {
        let go = self.begin(bytes.len())?;
        let bytes = match go {
            Go::Run => bytes,
            Go::Fail { torn } => &bytes[..torn],
        };
        let op = Pending::Write {
            offset,
            bytes: bytes.to_vec(),
        };
        let f = self.files.get_mut(&id).expect("open file exists");
        apply_pending(&mut f.data, &op);
        f.pending.push(op);
        match go {
            Go::Run => Ok(()),
            Go::Fail { .. } => Err(self.injected()),
        }
    }

    fn set_len(&mut self, id: u64, len: u64) -> io::Result<()> {
        if let Go::Fail { .. } = self.begin(0)? {
            return Err(self.injected());
        }
        let op = Pending::SetLen(len);
        let f = self.files.get_mut(&id).expect("open file exists");
        apply_pending(&mut f.data, &op);
        f.pending.push(op);
        Ok(())
    }

    fn sync(&mut self, id: u64) -> io::Result<()> {
        if let Go::Fail { .. } = self.begin(0)? {
            // A failed fsync: the data stays in the page cache, not durable.
            return Err(self.injected());
        }
        let f = self.files.get_mut(&id).expect("open file exists");
        f.durable = f.data.clone();
        f.pending.clear();
        Ok(())
    }

    /// The process exits: the page cache survives.
    fn restart(&mut self) {
        self.dead = false;
        self.fault = None;
    }

    /// The power fails: each file keeps what was synced plus a prefix of what was not
    /// (in write order, the last write of the prefix torn anywhere); only durable
    /// directory entries remain.
    fn power_loss(&mut self) {
        for f in self.files.values_mut() {
            let mut data = f.durable.clone();
            let keep = self.rng.below(f.pending.len() as u64 + 1) as usize;
            for op in &f.pending[..keep] {
                apply_pending(&mut data, op);
            }
            if let Some(Pending::Write { offset, bytes }) = f.pending.get(keep) {
                let torn = self.rng.below(bytes.len() as u64 + 1) as usize;
                let op = Pending::Write {
                    offset: *offset,
                    bytes: bytes[..torn].to_vec(),
                };
                apply_pending(&mut data, &op);
            }
            f.durable = data.clone();
            f.data = data;
            f.pending.clear();
        }
        self.names = self.durable_names.clone();
        let live: BTreeSet<u64> = self.names.values().copied().collect();
        self.files.retain(|id, _| live.contains(id));
        self.restart();
    }

    fn id(&self, path: &Path) -> io::Result<u64> {
        self.names
            .get(path)
            .copied()
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, path.display().to_string()))
    }
}

#[derive(Clone, Debug)]
struct SimFs(Arc<Mutex<Disk>>);

impl SimFs {
    fn disk(&self) -> MutexGuard<'_, Disk> {
        self.0.lock().unwrap()
    }
}

#[derive(Debug)]
struct SimWriteFile {
    fs: SimFs,
    id: u64,
    at: u64,
}

impl Write for SimWriteFile {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.fs.disk().write(self.id, self.at, buf)?;
        self.at += buf.len() as u64;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Seek for SimWriteFile {
    fn seek(&mut self, pos: SeekFrom) -> io::Result<u64> {
        self.at = match pos {
            SeekFrom::Start(p) => p,
            SeekFrom::End(d) => (self.size()? as i64 + d) as u64,
            SeekFrom::Current(d) => (self.at as i64 + d) as u64,
        };
        Ok(self.at)
    }
}

impl WriteFile for SimWriteFile {
    fn size(&self) -> io::Result<u64> {
        Ok(self.fs.disk().files[&self.id].data.len() as u64)
    }

    fn set_len(&mut self, len: u64) -> io::Result<()> {
        self.fs.disk().set_len(self.id, len)
    }

    fn sync_data(&mut self) -> io::Result<()> {
        self.fs.disk().sync(self.id)
    }

    fn sync_all(&mut self) -> io::Result<()> {
        self.fs.disk().sync(self.id)
    }
}

impl FileSystem for SimFs {
    fn exists(&self, path: &Path) -> io::Result<bool> {
        let d = self.disk();
        Ok(d.dirs.contains(path) || d.names.contains_key(path))
    }

    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        let mut d = self.disk();
        if let Go::Fail { .. } = d.begin(0)? {
            return Err(d.injected());
        }
        // Directories are durable at once (the log syncs the parent anyway).
        for a in dir.ancestors() {
            d.dirs.insert(a.to_path_buf());
        }
        Ok(())
    }

    fn list(&self, dir: &Path) -> io::Result<Vec<String>> {
        let d = self.disk();
        if d.dead {
            return Err(io::Error::other("the process is dead"));
        }
        Ok(d.names
            .keys()
            .filter(|p| p.parent() == Some(dir))
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect())
    }

    fn remove_file(&self, path: &Path) -> io::Result<()> {
        let mut d = self.disk();
        d.id(path)?;
        if let Go::Fail { .. } = d.begin(0)? {
            return Err(d.injected());
        }
        d.names.remove(path);
        Ok(())
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        let mut d = self.disk();
        let id = d.id(from)?;
        if let Go::Fail { .. } = d.begin(0)? {
            return Err(d.injected());
        }
        d.names.remove(from);
        d.names.insert(to.to_path_buf(), id);
        Ok(())
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        let mut d = self.disk();
        if let Go::Fail { .. } = d.begin(0)? {
            return Err(d.injected());
        }
        let Disk {
            names,
            durable_names,
            ..
        } = &mut *d;
        durable_names.retain(|p, _| p.parent() != Some(dir));
        for (p, id) in names.iter() {
            if p.parent() == Some(dir) {
                durable_names.insert(p.clone(), *id);
            }
        }
        Ok(())
    }

    fn open_read(&self, path: &Path) -> io::Result<Box<dyn ReadFile>> {
        let d = self.disk();
        if d.dead {
            return Err(io::Error::other("the process is dead"));
        }
        let id = d.id(path)?;
        let data = &d.files[&id].data;
        Ok(Box::new(Cursor::new(data.read(0, data.len()))))
    }

    fn open_write(&self, path: &Path, create: bool) -> io::Result<Box<dyn WriteFile>> {
        let mut d = self.disk();
        let id = if create {
            if let Go::Fail { .. } = d.begin(0)? {
                return Err(d.injected());
            }
            match d.names.get(path) {
                Some(&id) => {
                    let op = Pending::SetLen(0);
                    let f = d.files.get_mut(&id).unwrap();
                    apply_pending(&mut f.data, &op);
                    f.pending.push(op);
                    id
                }
                None => {
                    let id = d.next_id;
                    d.next_id += 1;
                    d.files.insert(id, SimFile::default());
                    d.names.insert(path.to_path_buf(), id);
                    id
                }
            }
        } else {
            if d.dead {
                return Err(io::Error::other("the process is dead"));
            }
            d.id(path)?
        };
        Ok(Box::new(SimWriteFile {
            fs: self.clone(),
            id,
            at: 0,
        }))
    }
}

/// The region store's file on the simulated disk, as a redb backend.
#[derive(Debug)]
struct SimBackend {
    fs: SimFs,
    id: u64,
}

impl redb::StorageBackend for SimBackend {
    fn len(&self) -> io::Result<u64> {
        let d = self.fs.disk();
        if d.dead {
            return Err(io::Error::other("the process is dead"));
        }
        Ok(d.files[&self.id].data.len() as u64)
    }

    fn read(&self, offset: u64, len: usize) -> io::Result<Vec<u8>> {
        let d = self.fs.disk();
        if d.dead {
            return Err(io::Error::other("the process is dead"));
        }
        let data = &d.files[&self.id].data;
        let end = offset as usize + len;
        if end > data.len() {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "read past the end",
            ));
        }
        Ok(data.read(offset as usize, len))
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        self.fs.disk().set_len(self.id, len)
    }

    fn sync_data(&self, eventual: bool) -> io::Result<()> {
        if eventual {
            // A write barrier only: the prefix model of a power loss keeps the order.
            let mut d = self.fs.disk();
            if let Go::Fail { .. } = d.begin(0)? {
                return Err(d.injected());
            }
            return Ok(());
        }
        self.fs.disk().sync(self.id)
    }

    fn write(&self, offset: u64, data: &[u8]) -> io::Result<()> {
        self.fs.disk().write(self.id, offset, data)
    }
}

// ---------------------------------------------------------------------------------
// The server's parts on the simulated disk

const LOG_DIR: &str = "/data/log";
const STORE_FILE: &str = "/data/state.redb";
const CLIENTS: [&str; 3] = ["ann", "bob", "cy"];

fn log_options() -> FileLogOptions {
    FileLogOptions {
        // A few records per segment: the scenario rolls several times.
        segment_size: 400,
        ..FileLogOptions::default()
    }
}

/// The region store on the simulated disk, opened the way `RedbStore::open` does.
fn open_store(fs: &SimFs, sync_every: u32) -> Result<RedbStore, warren_core::Error> {
    RedbStore::open_on(fs, Path::new(STORE_FILE), sync_every, |p| {
        let id = fs
            .disk()
            .id(p)
            .map_err(|e| warren_core::Error::new(warren_core::ErrorCode::Storage, e.to_string()))?;
        Ok(SimBackend { fs: fs.clone(), id })
    })
}

/// A running log and region (the sequencer's part is played by the scenario).
struct Node {
    log: FileLog,
    region: region::RegionTx,
    thread: std::thread::JoinHandle<Result<(), region::RegionError>>,
}

/// Starts the way `server::start` does: open the log and the store, replay the log
/// after the store's position into the region.
fn start(fs: &SimFs, schema: &Arc<Schema>) -> Result<Node, String> {
    let (log, _) = FileLog::open_with(Arc::new(fs.clone()), LOG_DIR, log_options())
        .map_err(|e| format!("opening the log: {e}"))?;
    let store = open_store(fs, 2).map_err(|e| format!("opening the store: {e}"))?;
    let region = Region::new(
        store,
        schema.clone(),
        Limits::default(),
        Arc::new(Metrics::default()),
    )
    .map_err(|e| format!("the region: {e}"))?;
    let applied = region.position();
    if applied > log.last_position() {
        return Err(format!(
            "the store is at {applied}, past the log's end {}",
            log.last_position()
        ));
    }
    let (tx, rx) = std::sync::mpsc::channel();
    let thread = region::spawn(region, rx);
    sequencer::replay(&log, applied, &tx, &Backlog::new(8192, 64 << 20))
        .map_err(|e| format!("replaying: {e}"))?;
    Ok(Node {
        log,
        region: tx,
        thread,
    })
}

impl Node {
    /// Stops the region (it syncs the store); its error, if any.
    fn stop(self) -> Result<FileLog, String> {
        let _ = self.region.send(RegionMsg::Stop);
        match self.thread.join() {
            Ok(Ok(())) => Ok(self.log),
            Ok(Err(e)) => Err(format!("the region failed: {e}")),
            Err(_) => Err("the region panicked".into()),
        }
    }
}

fn commit(client: &str, seq: u64) -> Commit {
    let op = if seq % 2 == 1 {
        Op::Call {
            function: "bump".into(),
            args: obj([("id", client.into())]),
        }
    } else {
        Op::Call {
            function: "note".into(),
            args: obj([
                ("id", format!("{client}-{seq}").into()),
                ("text", "x".repeat(seq as usize * 7 % 40).into()),
            ]),
        }
    };
    Commit {
        client_id: client.into(),
        client_seq: seq,
        schema_version: String::new(),
        timestamp: 1_700_000_000_000 + seq as i64,
        auth: obj([("sub", client.into())]),
        op,
    }
}

/// What the scenario saw: batches whose append returned, the one in flight when it
/// stopped, and the acknowledgements.
#[derive(Default)]
struct Seen {
    appended: Vec<Vec<u8>>,
    in_flight: Vec<Vec<u8>>,
    in_flight_commits: Vec<Commit>,
    /// (client, seq) → the position its acknowledgement gave.
    acked: BTreeMap<(String, u64), u64>,
}

/// Plays the sequencer: appends `batch` to the log, hands it to the region, and waits
/// for each commit's outcome. `false` when something failed (the node is then dead).
fn push(node: &mut Node, seen: &mut Seen, batch: Vec<Commit>) -> bool {
    let records: Vec<Vec<u8>> = batch.iter().map(encode_log_entry).collect();
    let first = match node.log.append(&records) {
        Ok(first) => first,
        Err(_) => {
            seen.in_flight = records;
            seen.in_flight_commits = batch;
            return false;
        }
    };
    seen.appended.extend(records);
    let entries: Vec<(u64, LogEntry)> = batch
        .iter()
        .enumerate()
        .map(|(i, c)| (first + i as u64, LogEntry::Commit(c.clone())))
        .collect();
    if node
        .region
        .send(RegionMsg::Batch(entries, Permit::none()))
        .is_err()
    {
        return false;
    }
    for c in &batch {
        let (reply, rx) = tokio::sync::oneshot::channel();
        let wait = RegionMsg::Wait {
            client_id: c.client_id.clone(),
            seq: c.client_seq,
            reply,
        };
        if node.region.send(wait).is_err() {
            return false;
        }
        match rx.blocking_recv() {
            Ok(CommitResult::Committed { position, .. }) => {
                seen.acked
                    .insert((c.client_id.clone(), c.client_seq), position);
            }
            Ok(other) => panic!("{}/{}: {other:?}", c.client_id, c.client_seq),
            Err(_) => return false, // the region stopped: not acknowledged
        }
    }
    true
}

/// The scenario's batches: each client's commits in order, in batches of 1 to 3, and
/// once a retransmission of a batch already applied.
fn batches() -> Vec<Vec<Commit>> {
    let mut next = [1u64; 3];
    let mut out = Vec::new();
    for i in 0..9usize {
        let mut b = Vec::new();
        for j in 0..(i % 3 + 1) {
            let c = (i + j) % CLIENTS.len();
            b.push(commit(CLIENTS[c], next[c]));
            next[c] += 1;
        }
        out.push(b);
    }
    let again = out[2].clone();
    out.insert(5, again);
    out
}

/// Runs the scenario on a fresh disk with `fault` at operation `at` (none: `None`),
/// recovers, checks, and goes on after recovery. Returns the number of operations the
/// scenario made before recovery.
fn run(seed: u64, fault: Option<(u64, Fault)>) -> u64 {
    let schema = Arc::new(Schema::parse(SCHEMA).unwrap());
    let disk = Disk {
        fault,
        rng: Rng(seed),
        ..Disk::default()
    };
    let fs = SimFs(Arc::new(Mutex::new(disk)));
    let context = format!("seed {seed}, fault {fault:?}");

    let mut seen = Seen::default();
    if let Ok(mut node) = start(&fs, &schema) {
        for b in batches() {
            if !push(&mut node, &mut seen, b) {
                break;
            }
        }
        let _ = node.stop();
    }
    let ops = fs.disk().ops;
    match fault.map(|(_, f)| f) {
        Some(Fault::PowerLoss | Fault::ErrorThenPowerLoss) => fs.disk().power_loss(),
        _ => fs.disk().restart(),
    }

    let node = start(&fs, &schema).unwrap_or_else(|e| panic!("{context}: {e}"));
    let recovered = check(&fs, node, &seen, &context);

    // Going on: the client whose batch was in flight sends it again (whatever of it
    // survived must apply nothing twice), then a new client commits.
    let mut node = start(&fs, &schema).unwrap_or_else(|e| panic!("{context}: restarting: {e}"));
    let mut after = Seen {
        appended: recovered,
        acked: seen.acked.clone(),
        ..Seen::default()
    };
    let mut more = seen.in_flight_commits.clone();
    more.push(commit("dee", 1));
    more.push(commit("dee", 2));
    assert!(
        push(&mut node, &mut after, more),
        "{context}: a push after recovery failed"
    );
    check(&fs, node, &after, &format!("{context}, after recovery"));
    ops
}

/// The checks after recovery: the log is what was appended (plus at most a prefix of
/// the batch in flight), every acknowledged commit is where its acknowledgement said,
/// nothing took effect twice, and the store (reopened) is the log's replay. Returns
/// the log's records.
fn check(fs: &SimFs, node: Node, seen: &Seen, context: &str) -> Vec<Vec<u8>> {
    let log = node
        .stop()
        .unwrap_or_else(|e| panic!("{context}: recovery: {e}"));
    let records: Vec<Vec<u8>> = log
        .read(1, usize::MAX)
        .unwrap()
        .into_iter()
        .map(|(_, r)| r)
        .collect();
    let n = seen.appended.len();
    assert!(
        records.len() >= n && records[..n] == seen.appended[..],
        "{context}: the log lost or changed records whose append returned ({} records, {n} appended)",
        records.len()
    );
    let extra = &records[n..];
    assert!(
        extra.len() <= seen.in_flight.len() && extra == &seen.in_flight[..extra.len()],
        "{context}: after the appended records the log holds {} records that are not a prefix of the batch in flight",
        extra.len()
    );

    let mut replay = Replay::new(SCHEMA);
    replay.catch_up(&log);
    for ((client, seq), position) in &seen.acked {
        assert!(
            replay.committed_at(client, *seq, *position),
            "{context}: acknowledged ({client}, {seq}) at position {position} is not there"
        );
    }
    replay.check_exactly_once();
    drop(log);
    let store = open_store(fs, 1).unwrap_or_else(|e| panic!("{context}: reopening the store: {e}"));
    assert_same_state(&store, &replay, context);
    records
}

/// A power loss at every operation, and at each operation one of the other faults in
/// turn; with `WARREN_FAULT_ALL=1`, every fault at every operation, and
/// `WARREN_FAULT_SEEDS=n` repeats it all with `n` seeds (the power loss's choices).
#[test]
fn recovery_is_correct_after_a_fault_at_every_operation() {
    let seed = replay::seed("WARREN_FAULT_SEED");
    let all = std::env::var("WARREN_FAULT_ALL").is_ok_and(|v| v == "1");
    let seeds: u64 = std::env::var("WARREN_FAULT_SEEDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1);
    let total = run(seed, None);
    assert!(total > 50, "the scenario makes {total} operations");
    let mut jobs = Vec::new();
    for s in 0..seeds {
        for at in 0..total {
            for (i, fault) in FAULTS.into_iter().enumerate() {
                let turn = 1 + at as usize % (FAULTS.len() - 1);
                if all || fault == Fault::PowerLoss || i == turn {
                    let mut rng = Rng(seed ^ s.wrapping_mul(0x9E37_79B9) ^ at << 8 ^ i as u64);
                    jobs.push((rng.next(), at, fault));
                }
            }
        }
    }
    let started = std::time::Instant::now();
    let next = std::sync::atomic::AtomicUsize::new(0);
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get().min(4));
    std::thread::scope(|scope| {
        for _ in 0..threads {
            scope.spawn(|| loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let Some(&(seed, at, fault)) = jobs.get(i) else {
                    return;
                };
                run(seed, Some((at, fault)));
            });
        }
    });
    eprintln!(
        "{} faults at {total} operations checked in {:?}",
        jobs.len(),
        started.elapsed()
    );
}

/// Without a fault the scenario runs to its end, and a fault point past its last
/// operation changes nothing (the runs above do cover every operation).
#[test]
fn the_scenario_without_a_fault() {
    let seed = replay::seed("WARREN_FAULT_SEED");
    let total = run(seed, None);
    assert_eq!(run(seed, Some((total, Fault::Error))), total);
}
