//! The sequencer: puts commits into one order, durably, in batches.
//!
//! Commits arrive from every connection on one queue. The sequencer takes everything
//! queued (up to `max_batch`), optionally waits up to `linger` for more, stamps each
//! commit with the time (milliseconds, never going backwards), appends the batch to the
//! log with one fsync, and hands the entries with their positions to the region. While
//! one batch is being synced the next one fills: group commit. A commit is acknowledged
//! (its outcome sent) only after the region applied it, which is after its batch was
//! durable.

use std::sync::atomic::Ordering;
use std::sync::Arc;
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
        let started = Instant::now();
        let first_pos = log.append(&records)?;
        metrics.batch_appended(batch.len(), started.elapsed());
        let entries = batch
            .into_iter()
            .enumerate()
            .map(|(i, c)| (first_pos + i as u64, LogEntry::Commit(c)))
            .collect();
        if region.send(RegionMsg::Batch(entries)).is_err() {
            break; // the region stopped (it failed); nothing more can be applied
        }
    }
    let _ = metrics.position.load(Ordering::Relaxed);
    Ok(())
}

/// Replays the log after `from` into the region (on start, before serving).
pub fn replay(log: &dyn Log, from: u64, region: &RegionTx) -> Result<u64, LogError> {
    let mut next = from + 1;
    let mut n = 0;
    loop {
        let records = log.read(next, 1024)?;
        if records.is_empty() {
            return Ok(n);
        }
        let mut entries = Vec::with_capacity(records.len());
        for (pos, bytes) in records {
            let c = LogEntry::decode(&bytes).map_err(|e| LogError::Corrupt {
                detail: format!("log entry {pos} does not decode: {e}"),
            })?;
            entries.push((pos, c));
            next = pos + 1;
            n += 1;
        }
        if region.send(RegionMsg::Batch(entries)).is_err() {
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
                    if waited % 30 == 0 {
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
