//! Presence across regions: a connection's presence message (who is editing, a
//! cursor; `ClientFrame::Presence`) reaches the connections of *other* regions that
//! hold the partition too, through etcd but not through the log.
//!
//! The region that takes the message (after checking that its sender holds the
//! partition) hands it to this relay, which puts it under `presence/<region>/<slot>`
//! in the deployment's prefix: 64 slots per region, written in turn, so the keys stay
//! bounded and nothing needs a lease. Every region's follower watches the whole prefix
//! anyway; it hands other regions' puts to its region, which gives them to its
//! connections holding the partition ([`crate::region::RegionMsg::RemotePresence`]).
//! Nothing of it is logged, applied or stored by a region.
//!
//! Presence is best effort, as on one region. The relay gathers messages for 100 ms,
//! keeping only the latest of each sender for each partition (a cursor that moved
//! twice is sent once), then puts them one sender at a time in turn, so that a sender
//! who holds many partitions or sends often cannot crowd out the others; at most
//! [`RATE_PER_SEC`] puts a second per region, the rest wait for the next flush (and
//! may be replaced meanwhile). A full queue drops messages, and a follower ignores a
//! message older than [`MAX_AGE_MS`] by its writer's clock (a follower that resumes from
//! an older revision replays old puts). The package repeats a binding's presence every
//! 5 s.
//!
//! Value: `01` · varint length · partition · varint length · sender's `sub` ·
//! u64 big-endian wall-clock ms · data.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use warren_core::value::{write_varint, Reader};

use crate::log::shared::{Key, SharedLog};

/// Messages a region relays each second (and at most at once).
pub const RATE_PER_SEC: f64 = 50.0;
/// Slots (keys) per region.
pub const SLOTS: u64 = 64;
/// A relayed message older than this (by the writer's clock) is dropped.
pub const MAX_AGE_MS: u64 = 10_000;
/// Messages waiting for the relay; more are dropped.
const QUEUE: usize = 256;
/// The format's version byte.
const FORMAT: u8 = 1;

/// One presence message between regions.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Relayed {
    pub partition: String,
    pub from: String,
    pub at_ms: u64,
    pub data: Vec<u8>,
}

impl Relayed {
    pub fn encode(&self) -> Vec<u8> {
        let mut b = vec![FORMAT];
        write_varint(&mut b, self.partition.len() as u64);
        b.extend_from_slice(self.partition.as_bytes());
        write_varint(&mut b, self.from.len() as u64);
        b.extend_from_slice(self.from.as_bytes());
        b.extend_from_slice(&self.at_ms.to_be_bytes());
        b.extend_from_slice(&self.data);
        b
    }

    /// Reads a value another region put; `None` if it is not one.
    pub fn decode(b: &[u8]) -> Option<Relayed> {
        let mut r = Reader::new(b);
        if r.byte().ok()? != FORMAT {
            return None;
        }
        let partition = r.string().ok()?;
        let from = r.string().ok()?;
        let at_ms = u64::from_be_bytes(r.take(8).ok()?.try_into().ok()?);
        let data = b[r.pos..].to_vec();
        Some(Relayed {
            partition,
            from,
            at_ms,
            data,
        })
    }

    /// Whether a follower should still hand it over at `now_ms`.
    pub fn fresh(&self, now_ms: u64) -> bool {
        now_ms.abs_diff(self.at_ms) <= MAX_AGE_MS
    }
}

/// The wall clock in ms since the Unix epoch (0 if it is before it).
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// The region's end of the relay.
#[derive(Clone)]
pub struct Relay(SyncSender<Relayed>);

impl Relay {
    /// Queues a message for the other regions; drops it if the queue is full.
    pub fn send(&self, m: Relayed) {
        match self.0.try_send(m) {
            Ok(()) | Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {}
        }
    }
}

/// Starts the relay of region `region`; it stops with `stop`.
pub fn spawn(
    log: Arc<dyn SharedLog>,
    region: String,
    stop: Arc<AtomicBool>,
) -> std::io::Result<Relay> {
    let (tx, rx) = std::sync::mpsc::sync_channel(QUEUE);
    std::thread::Builder::new()
        .name("warren-presence".into())
        .spawn(move || run(&*log, &region, rx, &stop))?;
    Ok(Relay(tx))
}

/// How often the relay puts what it gathered.
const FLUSH: Duration = Duration::from_millis(100);
/// Messages the relay holds between flushes (one per sender and partition).
const MAX_PENDING: usize = 4096;

/// What waits for the next flush: the latest message of each sender for each
/// partition (a newer cursor replaces the older).
#[derive(Default)]
struct Pending {
    by_sender: BTreeMap<String, BTreeMap<String, Relayed>>,
    len: usize,
}

impl Pending {
    fn add(&mut self, m: Relayed) {
        let mine = self.by_sender.entry(m.from.clone()).or_default();
        if !mine.contains_key(&m.partition) {
            if self.len >= MAX_PENDING {
                return;
            }
            self.len += 1;
        }
        mine.insert(m.partition.clone(), m);
    }

    /// One message of each sender in turn, at most `n` in all.
    fn take(&mut self, n: usize) -> Vec<Relayed> {
        let mut out = Vec::new();
        while out.len() < n && self.len > 0 {
            for mine in self.by_sender.values_mut() {
                if out.len() == n {
                    break;
                }
                if let Some((_, m)) = mine.pop_first() {
                    out.push(m);
                    self.len -= 1;
                }
            }
            self.by_sender.retain(|_, mine| !mine.is_empty());
        }
        out
    }
}

fn run(log: &dyn SharedLog, region: &str, rx: Receiver<Relayed>, stop: &AtomicBool) {
    let mut tokens = RATE_PER_SEC;
    let mut last = Instant::now();
    let mut slot = 0u64;
    let mut pending = Pending::default();
    let mut next_flush = Instant::now() + FLUSH;
    while !stop.load(Ordering::Relaxed) {
        match rx.recv_timeout(next_flush.saturating_duration_since(Instant::now())) {
            Ok(m) => {
                pending.add(m);
                continue;
            }
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => return,
        }
        next_flush = Instant::now() + FLUSH;
        let now = Instant::now();
        tokens = (tokens + now.duration_since(last).as_secs_f64() * RATE_PER_SEC).min(RATE_PER_SEC);
        last = now;
        for m in pending.take(tokens as usize) {
            tokens -= 1.0;
            let key = Key::Presence(format!("{region}/{slot}"));
            slot = (slot + 1) % SLOTS;
            if let Err(e) = log.put(&key, &m.encode()) {
                tracing::debug!(error = %e, "relaying presence to the other regions failed");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_message_reads_back_and_garbage_does_not() {
        let m = Relayed {
            partition: "team:t".into(),
            from: "ann".into(),
            at_ms: 1_700_000_000_000,
            data: b"{\"cursor\":3}".to_vec(),
        };
        assert_eq!(Relayed::decode(&m.encode()), Some(m.clone()));
        let b = m.encode();
        for cut in 0..b.len() - m.data.len() {
            assert_eq!(Relayed::decode(&b[..cut]), None, "cut at {cut}");
        }
        assert_eq!(Relayed::decode(&[2, 0, 0]), None);
        assert!(m.fresh(m.at_ms + MAX_AGE_MS));
        assert!(!m.fresh(m.at_ms + MAX_AGE_MS + 1));
    }

    fn msg(from: &str, partition: &str, n: u8) -> Relayed {
        Relayed {
            partition: partition.into(),
            from: from.into(),
            at_ms: 0,
            data: vec![n],
        }
    }

    /// A sender who holds many partitions and sends often gets one message a turn, as
    /// does everyone else; a newer message of a sender for a partition replaces the
    /// older.
    #[test]
    fn senders_take_turns_and_newer_replaces_older() {
        let mut p = Pending::default();
        for i in 0..100 {
            p.add(msg("mallory", &format!("p{i}"), 0));
        }
        p.add(msg("ann", "team:t", 1));
        p.add(msg("ann", "team:t", 2));
        p.add(msg("bob", "team:t", 3));
        let first = p.take(3);
        let from: Vec<&str> = first.iter().map(|m| m.from.as_str()).collect();
        assert_eq!(from, ["ann", "bob", "mallory"]);
        assert_eq!(first[0].data, [2]);
        assert_eq!(p.take(1000).len(), 99);
        assert_eq!(p.len, 0);
    }
}
