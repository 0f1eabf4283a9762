//! Limits per identity (a token's subject, `sub`): how many sync connections it may
//! hold, and how fast it may send commits and frames. One identity's connections (and
//! its HTTP pushes) share one budget, so opening more connections buys nothing.
//!
//! Rates are token buckets: a bucket holds at most `burst` tokens, refills at `per_sec`
//! tokens a second, and starts full. A commit takes one commit token; a frame received
//! on a sync connection takes one frame token. What the gateway does when a bucket is
//! short is in `docs/DECISIONS.md` ("Rate limits close the connection").

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// A token bucket's parameters. `per_sec` 0 means unlimited.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Rate {
    pub per_sec: f64,
    pub burst: f64,
}

impl Rate {
    pub const UNLIMITED: Rate = Rate {
        per_sec: 0.0,
        burst: 0.0,
    };

    pub fn is_unlimited(&self) -> bool {
        self.per_sec <= 0.0
    }
}

/// Which budget a request draws on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Budget {
    Commits,
    Frames,
}

impl Budget {
    /// The label in metrics and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Budget::Commits => "commits",
            Budget::Frames => "frames",
        }
    }
}

#[derive(Clone, Copy, Debug)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

impl Bucket {
    fn full(rate: Rate, now: Instant) -> Bucket {
        Bucket {
            tokens: rate.burst,
            at: now,
        }
    }

    fn refill(&mut self, rate: Rate, now: Instant) {
        let secs = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens = (self.tokens + secs * rate.per_sec).min(rate.burst);
        self.at = now;
    }
}

struct Identity {
    connections: usize,
    commits: Bucket,
    frames: Bucket,
}

/// The per-identity budgets of one server.
pub struct Identities {
    max_connections: usize,
    commits: Rate,
    frames: Rate,
    map: Mutex<HashMap<String, Identity>>,
}

/// Forgetting identities: when the map grows past this, entries with no connection
/// and full buckets (they would start over identically) are removed.
const PRUNE_ABOVE: usize = 4096;

impl Identities {
    /// `max_connections` 0 means unlimited.
    pub fn new(max_connections: usize, commits: Rate, frames: Rate) -> Identities {
        Identities {
            max_connections,
            commits,
            frames,
            map: Mutex::new(HashMap::new()),
        }
    }

    fn entry<'a>(
        &self,
        map: &'a mut HashMap<String, Identity>,
        sub: &str,
        now: Instant,
    ) -> &'a mut Identity {
        if map.len() >= PRUNE_ABOVE && !map.contains_key(sub) {
            let (commits, frames) = (self.commits, self.frames);
            map.retain(|_, id| {
                id.commits.refill(commits, now);
                id.frames.refill(frames, now);
                id.connections > 0
                    || id.commits.tokens < commits.burst
                    || id.frames.tokens < frames.burst
            });
        }
        map.entry(sub.to_owned()).or_insert_with(|| Identity {
            connections: 0,
            commits: Bucket::full(self.commits, now),
            frames: Bucket::full(self.frames, now),
        })
    }

    /// Registers a sync connection of `sub`; `None` when it already has the most it may.
    /// The connection counts until the guard is dropped.
    pub fn connect(self: &Arc<Self>, sub: &str) -> Option<IdentityGuard> {
        let mut map = self.map.lock().expect("identities lock");
        let id = self.entry(&mut map, sub, Instant::now());
        if self.max_connections > 0 && id.connections >= self.max_connections {
            return None;
        }
        id.connections += 1;
        Some(IdentityGuard {
            ids: self.clone(),
            sub: sub.to_owned(),
        })
    }

    /// Takes `n` tokens from `sub`'s budget; `false` (and nothing taken) when it holds
    /// fewer.
    pub fn take(&self, sub: &str, budget: Budget, n: u64) -> bool {
        let rate = match budget {
            Budget::Commits => self.commits,
            Budget::Frames => self.frames,
        };
        if rate.is_unlimited() || n == 0 {
            return true;
        }
        let now = Instant::now();
        let mut map = self.map.lock().expect("identities lock");
        let id = self.entry(&mut map, sub, now);
        let bucket = match budget {
            Budget::Commits => &mut id.commits,
            Budget::Frames => &mut id.frames,
        };
        bucket.refill(rate, now);
        if bucket.tokens >= n as f64 {
            bucket.tokens -= n as f64;
            true
        } else {
            false
        }
    }

    /// Sync connections `sub` holds now.
    pub fn connections(&self, sub: &str) -> usize {
        let map = self.map.lock().expect("identities lock");
        map.get(sub).map_or(0, |id| id.connections)
    }
}

/// One registered connection of an identity.
pub struct IdentityGuard {
    ids: Arc<Identities>,
    sub: String,
}

impl Drop for IdentityGuard {
    fn drop(&mut self) {
        let mut map = self.ids.map.lock().expect("identities lock");
        if let Some(id) = map.get_mut(&self.sub) {
            id.connections = id.connections.saturating_sub(1);
        }
    }
}

/// A counter of open sync connections with a ceiling (0: none).
pub struct Slots {
    max: usize,
    used: AtomicUsize,
}

/// One taken slot, given back on drop.
pub struct Slot(Arc<Slots>);

impl Slots {
    pub fn new(max: usize) -> Slots {
        Slots {
            max,
            used: AtomicUsize::new(0),
        }
    }

    /// A slot, or `None` when all are taken.
    pub fn take(self: &Arc<Self>) -> Option<Slot> {
        let before = self.used.fetch_add(1, Ordering::AcqRel);
        if self.max > 0 && before >= self.max {
            self.used.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        Some(Slot(self.clone()))
    }

    pub fn used(&self) -> usize {
        self.used.load(Ordering::Acquire)
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.used.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Catch-up slots (a connection's welcome, an HTTP pull), computed off the region
/// thread: at most `workers` at once, and at most `per_identity` of them for one
/// identity, so that one user with huge partitions cannot hold every slot while
/// others wait. Both queues are first come, first served.
pub struct CatchUps {
    global: Arc<tokio::sync::Semaphore>,
    per_identity: usize,
    map: Mutex<HashMap<String, Arc<tokio::sync::Semaphore>>>,
}

/// One catch-up slot, given back on drop.
pub struct CatchUpPermit {
    _own: tokio::sync::OwnedSemaphorePermit,
    _global: tokio::sync::OwnedSemaphorePermit,
}

impl CatchUps {
    /// `workers` slots (at least 1), at most `per_identity` (at least 1) per identity.
    pub fn new(workers: usize, per_identity: usize) -> CatchUps {
        CatchUps {
            global: Arc::new(tokio::sync::Semaphore::new(workers.max(1))),
            per_identity: per_identity.max(1),
            map: Mutex::new(HashMap::new()),
        }
    }

    /// A slot for `sub`; `None` only if the server is stopping.
    pub async fn acquire(&self, sub: &str) -> Option<CatchUpPermit> {
        let own = {
            let mut map = self.map.lock().expect("catch-up lock");
            if map.len() >= PRUNE_ABOVE && !map.contains_key(sub) {
                // Identities holding and awaiting nothing start over identically.
                map.retain(|_, s| {
                    Arc::strong_count(s) > 1 || s.available_permits() < self.per_identity
                });
            }
            map.entry(sub.to_owned())
                .or_insert_with(|| Arc::new(tokio::sync::Semaphore::new(self.per_identity)))
                .clone()
        };
        let own = own.acquire_owned().await.ok()?;
        let global = self.global.clone().acquire_owned().await.ok()?;
        Some(CatchUpPermit {
            _own: own,
            _global: global,
        })
    }

    /// Slots free now, all identities together.
    pub fn available(&self) -> usize {
        self.global.available_permits()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_bucket_refills_at_its_rate_up_to_its_burst() {
        let ids = Identities::new(
            0,
            Rate {
                per_sec: 100.0,
                burst: 10.0,
            },
            Rate::UNLIMITED,
        );
        assert!(ids.take("ann", Budget::Commits, 10));
        assert!(!ids.take("ann", Budget::Commits, 5), "empty");
        // Another identity has its own bucket; frames are unlimited here.
        assert!(ids.take("bob", Budget::Commits, 10));
        assert!(ids.take("ann", Budget::Frames, 1_000_000));
        std::thread::sleep(Duration::from_millis(60));
        assert!(ids.take("ann", Budget::Commits, 5), "refilled about 6");
        std::thread::sleep(Duration::from_millis(300));
        assert!(
            !ids.take("ann", Budget::Commits, 11),
            "never more than the burst"
        );
        assert!(ids.take("ann", Budget::Commits, 10));
    }

    #[test]
    fn connections_per_identity_are_counted_until_dropped() {
        let ids = Arc::new(Identities::new(2, Rate::UNLIMITED, Rate::UNLIMITED));
        let a = ids.connect("ann").unwrap();
        let b = ids.connect("ann").unwrap();
        assert!(ids.connect("ann").is_none());
        assert!(ids.connect("bob").is_some());
        drop(a);
        assert_eq!(ids.connections("ann"), 1);
        let _c = ids.connect("ann").unwrap();
        drop(b);
        assert_eq!(ids.connections("ann"), 1);
    }

    #[test]
    fn slots_have_a_ceiling() {
        let s = Arc::new(Slots::new(2));
        let a = s.take().unwrap();
        let _b = s.take().unwrap();
        assert!(s.take().is_none());
        drop(a);
        let _c = s.take().unwrap();
        assert_eq!(s.used(), 2);
    }

    #[test]
    fn idle_identities_are_forgotten() {
        let ids = Arc::new(Identities::new(
            0,
            Rate {
                per_sec: 1.0,
                burst: 5.0,
            },
            Rate::UNLIMITED,
        ));
        let _kept = ids.connect("holder").unwrap();
        for i in 0..PRUNE_ABOVE + 10 {
            ids.connect(&format!("u{i}"));
        }
        let len = ids.map.lock().unwrap().len();
        assert!(len < PRUNE_ABOVE, "{len}");
        assert_eq!(ids.connections("holder"), 1);
    }
}

#[cfg(test)]
mod catch_up_tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn one_identity_cannot_hold_every_catch_up_slot() {
        let c = Arc::new(CatchUps::new(2, 1));
        let a1 = c.acquire("mallory").await.unwrap();
        // mallory's second catch-up waits for her first; it does not take the last slot.
        let c2 = c.clone();
        let mut a2 = tokio::spawn(async move { c2.acquire("mallory").await.map(|_| ()) });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!a2.is_finished());
        assert_eq!(c.available(), 1);
        let b = tokio::time::timeout(Duration::from_secs(1), c.acquire("ann"))
            .await
            .expect("ann got a slot while mallory waited")
            .unwrap();
        drop(b);
        drop(a1);
        tokio::time::timeout(Duration::from_secs(1), &mut a2)
            .await
            .unwrap()
            .unwrap()
            .unwrap();
    }
}
