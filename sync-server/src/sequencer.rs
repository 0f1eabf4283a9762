//! The sequencer: puts commits into one order, durably, in batches.
//!
//! Commits arrive from every connection on one queue. The sequencer takes everything
//! queued (up to `max_batch`), optionally waits up to `linger` for more, stamps each
//! commit with the time (milliseconds, never going backwards), appends the batch to the
//! log with one fsync, and hands the entries with their positions to the region. While
//! one batch is being synced the next one fills: group commit. A commit is acknowledged
//! (its outcome sent) only after the region applied it, which is after its batch was
//! durable.
//!
//! The region may fall behind (a burst of expensive commits, a slow disk): the entries
//! handed to it and not yet applied are bounded by a [`Backlog`]. When it is full the
//! sequencer waits before appending more, stops taking commits from its queue, and the
//! gateway's sessions wait on that queue: backpressure reaches the clients instead of
//! the region's memory. Replaying the log on start goes through the same bound.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio::sync::mpsc;
use warren_core::exec::Commit;
use warren_core::protocol::{encode_log_entry, LogEntry};

use crate::log::shared::{Appender, SharedLogError};
use crate::log::{Log, LogError};
use crate::metrics::Metrics;
use crate::region::{RegionMsg, RegionTx};

#[derive(Clone, Debug)]
pub struct SequencerOptions {
    /// The most commits in one batch.
    pub max_batch: usize,
    /// How long a batch may wait for more commits after the first (0: take what is
    /// queued and go; batches still form while the previous one is being synced).
    pub linger: Duration,
}

impl Default for SequencerOptions {
    fn default() -> Self {
        SequencerOptions {
            max_batch: 1024,
            linger: Duration::ZERO,
        }
    }
}

/// Log entries handed to the region and not applied yet, bounded in entries and in
/// bytes (their log records). A batch takes a [`Permit`] before it is handed over and
/// the region drops the permit once the batch is applied.
pub struct Backlog {
    used: Mutex<(usize, usize)>,
    freed: Condvar,
    max_entries: usize,
    max_bytes: usize,
}

/// What a batch holds of the [`Backlog`]; given back when dropped.
pub struct Permit {
    backlog: Option<Arc<Backlog>>,
    entries: usize,
    bytes: usize,
}

/// The default bound: entries (twice what the region applies in one go) and bytes.
pub const BACKLOG_ENTRIES: usize = 8192;
pub const BACKLOG_BYTES: usize = 64 << 20;

impl Backlog {
    pub fn new(max_entries: usize, max_bytes: usize) -> Arc<Backlog> {
        Arc::new(Backlog {
            used: Mutex::new((0, 0)),
            freed: Condvar::new(),
            max_entries: max_entries.max(1),
            max_bytes: max_bytes.max(1),
        })
    }

    /// Waits until `entries` entries of `bytes` bytes fit, and takes them. A batch
    /// larger than the bound passes an empty backlog, so that everything can pass.
    pub fn acquire(self: &Arc<Self>, entries: usize, bytes: usize) -> Permit {
        let mut used = self.used.lock().expect("backlog lock");
        while used.0 > 0 && (used.0 + entries > self.max_entries || used.1 + bytes > self.max_bytes)
        {
            used = self.freed.wait(used).expect("backlog lock");
        }
        used.0 += entries;
        used.1 += bytes;
        Permit {
            backlog: Some(self.clone()),
            entries,
            bytes,
        }
    }

    /// Entries and bytes held now.
    pub fn used(&self) -> (usize, usize) {
        *self.used.lock().expect("backlog lock")
    }
}

impl Permit {
    /// A permit of no backlog (a test handing batches to a region directly).
    pub fn none() -> Permit {
        Permit {
            backlog: None,
            entries: 0,
            bytes: 0,
        }
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        if let Some(b) = self.backlog.take() {
            let mut used = b.used.lock().expect("backlog lock");
            used.0 -= self.entries;
            used.1 -= self.bytes;
            drop(used);
            b.freed.notify_all();
        }
    }
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Runs until the queue closes. An error is fatal: the log can no longer be trusted to
/// take appends, and no commit of the failed batch was acknowledged.
pub fn run(
    mut log: Box<dyn Log>,
    mut rx: mpsc::Receiver<Commit>,
    region: RegionTx,
    backlog: Arc<Backlog>,
    opts: SequencerOptions,
    metrics: Arc<Metrics>,
) -> Result<(), LogError> {
    let mut last_ts = 0i64;
    while let Some(first) = rx.blocking_recv() {
        let mut batch = vec![first];
        let opened = Instant::now();
        loop {
            while batch.len() < opts.max_batch {
                match rx.try_recv() {
                    Ok(c) => batch.push(c),
                    Err(_) => break,
                }
            }
            let left = opts.linger.saturating_sub(opened.elapsed());
            if batch.len() >= opts.max_batch || left.is_zero() {
                break;
            }
            std::thread::sleep(left.min(Duration::from_micros(200)));
        }
        let ts = now_ms().max(last_ts);
        last_ts = ts;
        let records: Vec<Vec<u8>> = batch
            .iter_mut()
            .map(|c| {
                c.timestamp = ts;
                encode_log_entry(c)
            })
            .collect();
        // Wait for the region before appending more (see `Backlog`).
        let bytes = records.iter().map(Vec::len).sum();
        let permit = backlog.acquire(records.len(), bytes);
        let started = Instant::now();
        let first_pos = log.append(&records)?;
        metrics.batch_appended(batch.len(), started.elapsed());
        let entries = batch
            .into_iter()
            .enumerate()
            .map(|(i, c)| (first_pos + i as u64, LogEntry::Commit(c)))
            .collect();
        if region.send(RegionMsg::Batch(entries, permit)).is_err() {
            break; // the region stopped (it failed); nothing more can be applied
        }
    }
    let _ = metrics.position.load(Ordering::Relaxed);
    Ok(())
}

/// Replays the log after `from` into the region (on start, before serving), a page at
/// a time within the backlog's bound. It blocks: call it off the async runtime.
pub fn replay(
    log: &dyn Log,
    from: u64,
    region: &RegionTx,
    backlog: &Arc<Backlog>,
) -> Result<u64, LogError> {
    let mut next = from + 1;
    let mut n = 0;
    loop {
        let records = log.read(next, 1024)?;
        if records.is_empty() {
            return Ok(n);
        }
        let bytes = records.iter().map(|(_, b)| b.len()).sum();
        let permit = backlog.acquire(records.len(), bytes);
        let mut entries = Vec::with_capacity(records.len());
        for (pos, bytes) in records {
            let c = LogEntry::decode(&bytes).map_err(|e| LogError::Corrupt {
                detail: format!("log entry {pos} does not decode: {e}"),
            })?;
            entries.push((pos, c));
            next = pos + 1;
            n += 1;
        }
        if region.send(RegionMsg::Batch(entries, permit)).is_err() {
            return Ok(n);
        }
    }
}

/// Bytes of a batch record besides its entries: the format byte, the region name, the
/// incarnation, three varints, and up to five bytes of length per entry.
const RECORD_OVERHEAD: usize = 128;

/// The sequencer of a region of a deployment of many regions: batches as [`run`]
/// does, also cut by bytes (`max_record_bytes`, what one etcd request may carry),
/// appended to the shared log by compare-and-swap, retried until decided. The region
/// applies them when the log's consumer delivers them. Runs until the queue closes and
/// returns the revision of its last batch; an error is fatal (`LOG_FENCED`: another
/// process owns the region).
pub fn run_shared(
    mut appender: Appender,
    mut rx: mpsc::Receiver<Commit>,
    opts: SequencerOptions,
    max_record_bytes: usize,
    metrics: Arc<Metrics>,
) -> Result<i64, SharedLogError> {
    let mut last_ts = 0i64;
    // An entry taken from the queue that did not fit the last batch.
    let mut carry: Option<Vec<u8>> = None;
    let budget = max_record_bytes.saturating_sub(RECORD_OVERHEAD);
    loop {
        let ts = now_ms().max(last_ts);
        last_ts = ts;
        let encode = |mut c: Commit| {
            c.timestamp = ts;
            encode_log_entry(&c)
        };
        let first = match carry.take() {
            Some(e) => e,
            None => match rx.blocking_recv() {
                Some(c) => encode(c),
                None => return Ok(appender.last_revision()),
            },
        };
        let mut bytes = first.len() + 5;
        let mut records = vec![first];
        let opened = Instant::now();
        'fill: loop {
            while records.len() < opts.max_batch {
                match rx.try_recv() {
                    Ok(c) => {
                        let e = encode(c);
                        if bytes + e.len() + 5 > budget {
                            carry = Some(e);
                            break 'fill;
                        }
                        bytes += e.len() + 5;
                        records.push(e);
                    }
                    Err(_) => break,
                }
            }
            let left = opts.linger.saturating_sub(opened.elapsed());
            if records.len() >= opts.max_batch || left.is_zero() {
                break;
            }
            std::thread::sleep(left.min(Duration::from_micros(200)));
        }
        let n = records.len();
        let started = Instant::now();
        let mut waited = 0u64;
        loop {
            let (retries, found) = (appender.retries, appender.found_own);
            let r = appender.append(records.clone());
            Metrics::add(&metrics.region.append_retries, appender.retries - retries);
            Metrics::add(&metrics.region.append_found_own, appender.found_own - found);
            match r {
                Ok(_) => {
                    metrics.batch_appended(n, started.elapsed());
                    break;
                }
                // Stopping while the log is unreachable: the batch's outcome is
                // unknown, and no commit of it was acknowledged.
                Err(SharedLogError::Stopped) => return Ok(appender.last_revision()),
                // etcd is out of space (NOSPACE): nothing was appended; it takes
                // writes again once an operator compacts, defragments and disarms.
                Err(SharedLogError::Refused(m)) if m.contains("space exceeded") => {
                    if waited.is_multiple_of(30) {
                        tracing::error!(
                            waited_secs = waited,
                            "the shared log is out of space; appends wait: {m}"
                        );
                    }
                    waited += 1;
                    std::thread::sleep(Duration::from_secs(1));
                }
                Err(e) => return Err(e),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::log::MemoryLog;
    use std::sync::mpsc::RecvTimeoutError;
    use warren_core::exec::{Commit, Op};
    use warren_core::Value;

    fn commit(seq: u64) -> Commit {
        Commit {
            client_id: "c".into(),
            client_seq: seq,
            schema_version: String::new(),
            timestamp: 1,
            auth: Value::Null,
            op: Op::Run { source: "1".into() },
        }
    }

    #[test]
    fn the_backlog_waits_for_room_and_lets_a_large_batch_pass_when_empty() {
        let b = Backlog::new(10, 1000);
        let big = b.acquire(50, 10);
        assert_eq!(b.used(), (50, 10));
        let (tx, rx) = std::sync::mpsc::channel();
        let b2 = b.clone();
        let waiter = std::thread::spawn(move || {
            let p = b2.acquire(1, 1);
            tx.send(()).unwrap();
            p
        });
        assert_eq!(
            rx.recv_timeout(Duration::from_millis(100)),
            Err(RecvTimeoutError::Timeout),
            "took room while the backlog was full"
        );
        drop(big);
        rx.recv_timeout(Duration::from_secs(5)).unwrap();
        let p = waiter.join().unwrap();
        assert_eq!(b.used(), (1, 1));
        drop(p);
        assert_eq!(b.used(), (0, 0));
    }

    #[test]
    fn replay_hands_the_log_over_a_bounded_page_at_a_time() {
        let mut log = MemoryLog::new();
        let records: Vec<Vec<u8>> = (1..=3000).map(|s| encode_log_entry(&commit(s))).collect();
        log.append(&records).unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let backlog = Backlog::new(100, 64 << 20);
        let replay = {
            let backlog = backlog.clone();
            std::thread::spawn(move || replay(&log, 0, &tx, &backlog).unwrap())
        };
        // The first page is handed over; while the region holds it, nothing more.
        let Ok(RegionMsg::Batch(first, permit)) = rx.recv_timeout(Duration::from_secs(5)) else {
            panic!("no first batch");
        };
        assert_eq!(first.first().map(|e| e.0), Some(1));
        assert!(matches!(
            rx.recv_timeout(Duration::from_millis(150)),
            Err(RecvTimeoutError::Timeout)
        ));
        let mut applied = first.len();
        drop(permit);
        while applied < 3000 {
            match rx.recv_timeout(Duration::from_secs(5)) {
                Ok(RegionMsg::Batch(entries, permit)) => {
                    assert_eq!(entries[0].0 as usize, applied + 1, "in order");
                    applied += entries.len();
                    assert_eq!(backlog.used().0, entries.len());
                    drop(permit);
                }
                _ => panic!("replay stopped at {applied}"),
            }
        }
        assert_eq!(replay.join().unwrap(), 3000);
        assert_eq!(backlog.used(), (0, 0));
    }
}
