//! The consumer of the shared log: one thread per region that watches everything
//! under the deployment's prefix, in revision order, and hands it to the region
//! thread.
//!
//! - a batch (`log/<region>`, of any region, this one included) goes to the region,
//!   which checks the region's chain, numbers the entries and applies them: entries
//!   reach the executor only this way, in the global order;
//! - another region's published state (`regions/<r>/state`) goes to the region, which
//!   compares digests (it has applied everything before it by then: the state was put
//!   after the batches it covers);
//! - a fence on this region stops it (`LOG_FENCED`);
//! - another region's presence message (`presence/<r>/<slot>`, crate::presence) goes to
//!   the region for its connections, if it is fresh;
//! - a deleted log key is fatal (nothing deletes log keys);
//! - the watch's start compacted away is fatal (`NEEDS_SNAPSHOT`).
//!
//! When the stream breaks (the member died, lost its leader, or went silent past the
//! stall timeout), the follower opens a new watch on the next member from the last
//! revision it handed over, so nothing is skipped and nothing repeated.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::log::shared::{BatchRecord, Key, LogEvent, RegionState, SharedLog, SharedLogError};
use crate::metrics::Metrics;
use crate::region::{RegionMsg, RegionTx};

/// Runs until stopped, until the region is gone, or until a fatal error.
pub fn run(
    log: Arc<dyn SharedLog>,
    own: String,
    after: i64,
    region: RegionTx,
    stop: Arc<AtomicBool>,
    metrics: Arc<Metrics>,
) -> Result<(), SharedLogError> {
    let mut last = after;
    let mut backoff = Duration::from_millis(20);
    let mut inflight = Inflight::default();
    while !stop.load(Ordering::Relaxed) {
        let stream = match log.watch(last) {
            Ok(s) => s,
            Err(e @ SharedLogError::NeedsSnapshot { .. }) => return Err(e),
            Err(e) => {
                tracing::debug!(error = %e, "opening a watch of the shared log failed; trying the next member");
                std::thread::sleep(backoff);
                backoff = (backoff * 2).min(Duration::from_secs(1));
                continue;
            }
        };
        for item in stream {
            if stop.load(Ordering::Relaxed) {
                return Ok(());
            }
            match item {
                // A progress notice only says the stream is alive. Its revision is not
                // used to skip anything: etcd before 3.4.25 / 3.5.8 can send one ahead
                // of events still to come (etcd issue 15220).
                Ok(LogEvent::Progress { .. }) => {
                    backoff = Duration::from_millis(20);
                }
                Ok(LogEvent::Change {
                    revision,
                    key,
                    value,
                }) => {
                    // (One txn's changes share a revision: all of them are handled.)
                    if revision < last {
                        continue;
                    }
                    backoff = Duration::from_millis(20);
                    if matches!(key, Key::Log(_)) {
                        // The region applies more slowly than a watch delivers when it
                        // catches up: hold the watch rather than queue the whole log.
                        let size = value.as_ref().map_or(0, Vec::len);
                        if !inflight.wait(revision, size, &metrics, &stop) {
                            return Ok(());
                        }
                    }
                    if !handle(&*log, &own, revision, key, value, &region, &metrics)? {
                        return Ok(()); // the region stopped
                    }
                    last = revision;
                }
                Err(e @ SharedLogError::NeedsSnapshot { .. }) => return Err(e),
                Err(e) => {
                    tracing::debug!(error = %e, after = last, "the watch of the shared log broke; resuming on the next member");
                    break;
                }
            }
        }
        std::thread::sleep(backoff);
        backoff = (backoff * 2).min(Duration::from_secs(1));
    }
    Ok(())
}

/// Batches handed to the region and not applied yet: at most [`MAX_INFLIGHT`] of them
/// and [`MAX_INFLIGHT_BYTES`] bytes.
#[derive(Default)]
struct Inflight {
    batches: std::collections::VecDeque<(i64, usize)>,
    bytes: usize,
}

const MAX_INFLIGHT: usize = 1024;
const MAX_INFLIGHT_BYTES: usize = 64 << 20;

impl Inflight {
    /// Waits until a batch of `size` bytes at `revision` may be handed over; `false`
    /// when stopped meanwhile.
    fn wait(&mut self, revision: i64, size: usize, metrics: &Metrics, stop: &AtomicBool) -> bool {
        loop {
            let applied = metrics.region.applied_revision.load(Ordering::Relaxed);
            while self.batches.front().is_some_and(|(r, _)| *r <= applied) {
                let (_, n) = self.batches.pop_front().expect("a batch");
                self.bytes -= n;
            }
            if self.batches.is_empty()
                || (self.batches.len() < MAX_INFLIGHT && self.bytes + size <= MAX_INFLIGHT_BYTES)
            {
                self.batches.push_back((revision, size));
                self.bytes += size;
                return true;
            }
            if stop.load(Ordering::Relaxed) {
                return false;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }
}

/// Hands one change to the region; `false` when the region is gone.
fn handle(
    log: &dyn SharedLog,
    own: &str,
    revision: i64,
    key: Key,
    value: Option<Vec<u8>>,
    region: &RegionTx,
    metrics: &Metrics,
) -> Result<bool, SharedLogError> {
    let sent = match (key, value) {
        (Key::Log(r), None) => {
            return Err(SharedLogError::Corrupt(format!(
                "region {r}'s log key was deleted at revision {revision}: nothing deletes log keys"
            )))
        }
        (Key::Log(r), Some(v)) => {
            let record = BatchRecord::decode(&v).map_err(|e| {
                SharedLogError::Corrupt(format!("region {r}'s batch at revision {revision}: {e}"))
            })?;
            if record.region != r {
                return Err(SharedLogError::Corrupt(format!(
                    "the batch at revision {revision} under log/{r} says it is region {}'s",
                    record.region
                )));
            }
            metrics
                .region
                .head_revision
                .fetch_max(revision, Ordering::Relaxed);
            region.send(RegionMsg::Shared { revision, record })
        }
        (Key::State(r), Some(v)) if r != own => match RegionState::decode(&v) {
            Ok(state) => region.send(RegionMsg::PeerState { region: r, state }),
            Err(e) => {
                tracing::warn!(region = %r, "a published region state does not decode: {e}");
                Ok(())
            }
        },
        // A fence on this region, if it still stands (an old one, lifted since, is
        // replayed too when the region resumes from an older revision).
        (Key::Fence(r), Some(v)) if r == own => match log.get(&Key::Fence(r)) {
            Ok(None) => Ok(()),
            _ => {
                return Err(SharedLogError::Fenced(format!(
                    "region {own} was fenced at revision {revision}: {}",
                    String::from_utf8_lossy(&v)
                )))
            }
        },
        (Key::Presence(slot), Some(v)) if slot.split('/').next() != Some(own) => {
            match crate::presence::Relayed::decode(&v) {
                Some(m) if m.fresh(crate::presence::now_ms()) => {
                    region.send(RegionMsg::RemotePresence(m))
                }
                _ => Ok(()),
            }
        }
        _ => Ok(()),
    };
    Ok(sent.is_ok())
}
