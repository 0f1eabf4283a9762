//! The history checker: what a run of a deployment of many regions must satisfy,
//! computed from the shared log itself.
//!
//! The [`Observer`] watches the deployment's whole prefix from revision 1 for the
//! whole test (so a later compaction hides nothing from it). [`History::of`] checks
//! every region's chain of batches in what it saw (each batch exactly once, in order),
//! numbers the entries, and replays them with the engine (`replay`), digest at every
//! position. The checks then compare the regions, the clients and the replay.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use warren_core::protocol::ServerFrame;
use warren_core::Value;
use warren_server::log::etcd::{EtcdClient, EtcdOptions};
use warren_server::log::shared::{
    BatchRecord, Chain, EtcdLog, Key, LogEvent, RegionState, SharedLog,
};

use crate::replay::Replay;

/// Records every change under the prefix, from revision 1, for the whole test.
pub struct Observer {
    events: Arc<Mutex<Vec<LogEvent>>>,
    last: Arc<Mutex<i64>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Observer {
    pub fn start(urls: Vec<String>) -> Observer {
        let events = Arc::new(Mutex::new(Vec::new()));
        let last = Arc::new(Mutex::new(0i64));
        let stop = Arc::new(AtomicBool::new(false));
        let (e, l, s) = (events.clone(), last.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            let client = EtcdClient::new(
                &urls,
                EtcdOptions {
                    request_timeout: Duration::from_secs(2),
                    watch_stall: Duration::from_secs(2),
                    ..EtcdOptions::default()
                },
            )
            .unwrap();
            let log = EtcdLog::new(client, "/warren/v1/");
            while !s.load(Ordering::Relaxed) {
                let after = *l.lock().unwrap();
                let Ok(stream) = log.watch(after) else {
                    std::thread::sleep(Duration::from_millis(50));
                    continue;
                };
                for item in stream {
                    if s.load(Ordering::Relaxed) {
                        return;
                    }
                    match item {
                        Ok(LogEvent::Progress { .. }) => {}
                        Ok(ev @ LogEvent::Change { revision, .. }) => {
                            let mut last = l.lock().unwrap();
                            if revision >= *last {
                                *last = revision;
                                e.lock().unwrap().push(ev);
                            }
                        }
                        Err(err) => {
                            assert!(
                                !matches!(err.code(), "NEEDS_SNAPSHOT"),
                                "the observer fell behind a compaction: {err}"
                            );
                            break;
                        }
                    }
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        });
        Observer {
            events,
            last,
            stop,
            thread: Some(thread),
        }
    }

    pub fn events(&self) -> Vec<LogEvent> {
        self.events.lock().unwrap().clone()
    }

    /// The last revision seen.
    pub fn revision(&self) -> i64 {
        *self.last.lock().unwrap()
    }

    /// Waits until the observer has seen `revision`.
    pub fn wait(&self, revision: i64, within: Duration) -> bool {
        super::wait_until(within, || self.revision() >= revision)
    }
}

impl Drop for Observer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // The thread ends at its next message (progress notifications come often).
        if let Some(t) = self.thread.take() {
            let _ = t;
        }
    }
}

/// One batch of the global log, as the observer saw it.
#[derive(Clone, Debug)]
pub struct Batch {
    pub revision: i64,
    pub region: String,
    pub batch_seq: u64,
    pub incarnation: [u8; 16],
    /// The position of its first entry, and how many it has.
    pub first: u64,
    pub entries: usize,
}

/// The global log as the observer saw it, replayed.
pub struct History {
    pub replay: Replay,
    pub batches: Vec<Batch>,
    /// Every published region state, in revision order.
    pub states: Vec<(i64, String, RegionState)>,
    /// Fences put, with their reasons.
    pub fences: Vec<(String, String)>,
}

impl History {
    /// Checks the chains and replays every batch.
    pub fn of(events: &[LogEvent]) -> History {
        let mut chain = Chain::default();
        let mut replay = Replay::empty();
        let mut batches = Vec::new();
        let mut states = Vec::new();
        let mut fences = Vec::new();
        for e in events {
            let LogEvent::Change {
                revision,
                key,
                value,
            } = e
            else {
                continue;
            };
            match (key, value) {
                (Key::Log(r), Some(v)) => {
                    let rec = BatchRecord::decode(v)
                        .unwrap_or_else(|e| panic!("the batch at revision {revision}: {e}"));
                    assert_eq!(&rec.region, r);
                    chain
                        .check(*revision, &rec)
                        .unwrap_or_else(|e| panic!("the observer's chain check: {e}"));
                    let first = replay.position() + 1;
                    for bytes in &rec.entries {
                        replay.push(replay.position() + 1, bytes);
                    }
                    batches.push(Batch {
                        revision: *revision,
                        region: rec.region.clone(),
                        batch_seq: rec.batch_seq,
                        incarnation: rec.incarnation,
                        first,
                        entries: rec.entries.len(),
                    });
                }
                (Key::Log(r), None) => panic!("log/{r} was deleted at revision {revision}"),
                (Key::State(r), Some(v)) => {
                    states.push((*revision, r.clone(), RegionState::decode(v).unwrap()));
                }
                (Key::Fence(r), Some(v)) => {
                    fences.push((r.clone(), String::from_utf8_lossy(v).into_owned()))
                }
                _ => {}
            }
        }
        History {
            replay,
            batches,
            states,
            fences,
        }
    }

    /// Every published state's digest is the replay's at its position (but those
    /// `skip` names: a region made to diverge on purpose).
    pub fn check_states(&self, skip: impl Fn(&str, u64) -> bool) -> usize {
        let mut n = 0;
        for (rev, region, s) in &self.states {
            if skip(region, s.position) {
                continue;
            }
            assert!(
                s.position <= self.replay.position(),
                "{region} published position {} at revision {rev}, past the log's {}",
                s.position,
                self.replay.position()
            );
            assert_eq!(
                s.digest,
                self.replay.digests[s.position as usize],
                "{region}'s digest at position {} (published at revision {rev}) is not the replay's",
                s.position
            );
            n += 1;
        }
        n
    }

    /// Every acknowledged commit is in the log exactly at the position its
    /// acknowledgement gave (the replay checks that no commit took effect twice).
    pub fn check_acks(&self, acks: &BTreeMap<(String, u64), Option<u64>>) {
        for ((client, seq), position) in acks {
            match position {
                Some(p) => assert!(
                    self.replay.committed_at(client, *seq, *p),
                    "({client}, {seq}) was acknowledged at position {p}, but the log has {:?} there",
                    self.replay.entries.get(*p as usize - 1)
                ),
                None => assert!(
                    self.replay
                        .entries
                        .iter()
                        .any(|e| e.client_id == *client && e.client_seq == *seq),
                    "({client}, {seq}) was acknowledged, but is not in the log"
                ),
            }
        }
        self.replay.check_exactly_once();
    }

    /// The revision of the last batch.
    pub fn head(&self) -> i64 {
        self.batches.last().map_or(0, |b| b.revision)
    }
}

/// A query whose answer is everything a user may read of the test's schema.
pub const EVERYTHING: &str =
    "[Counter.all().map({ id: .id, n: .n }), Team.all().map({ id: .id, m: .members }), Task.all().map({ id: .id, by: .by })]";

/// What a user may read, in the replay.
pub fn everything_as(h: &History, sub: &str) -> Value {
    h.replay.query_as(sub, EVERYTHING)
}

/// After `partition` was dropped for a client (a `Drop`, or a `Welcome` that no
/// longer lists it: a revocation while the client was away), nothing may give it
/// back: no `Snapshot` or `Effects` of it and no `Welcome` listing it, whichever region
/// sent them, and no welcome older than the drop. Returns whether it was dropped.
pub fn check_revocation(frames: &[ServerFrame], partition: &str) -> bool {
    let mut dropped_at: Option<u64> = None;
    let mut held = false;
    for (i, f) in frames.iter().enumerate() {
        match f {
            ServerFrame::Drop {
                partition: p,
                position,
            } if p == partition => {
                dropped_at.get_or_insert(*position);
                held = false;
            }
            ServerFrame::Welcome {
                partitions,
                position,
                ..
            } => {
                let listed = partitions.iter().any(|p| p == partition);
                if let Some(d) = dropped_at {
                    assert!(
                        !listed,
                        "frame {i}: a welcome at position {position} lists {partition}, dropped at {d}"
                    );
                    assert!(
                        *position >= d,
                        "frame {i}: a welcome at position {position}, older than the drop of {partition} at {d}: a region served a stale state"
                    );
                } else if held && !listed {
                    dropped_at = Some(*position);
                    held = false;
                }
            }
            ServerFrame::Snapshot {
                partition: p,
                position,
                ..
            } if p == partition => {
                assert!(
                    dropped_at.is_none(),
                    "frame {i}: a snapshot of {partition} at {position} after its drop at {dropped_at:?}"
                );
                held = true;
            }
            ServerFrame::Effects { position, writes } => {
                if let Some(d) = dropped_at {
                    assert!(
                        !writes.iter().any(|w| w.partition == partition),
                        "frame {i}: effects of {partition} at {position} after its drop at {d}"
                    );
                }
            }
            _ => {}
        }
    }
    dropped_at.is_some()
}

/// The regions that appear in a history.
pub fn regions_of(h: &History) -> BTreeSet<String> {
    h.batches.iter().map(|b| b.region.clone()).collect()
}
