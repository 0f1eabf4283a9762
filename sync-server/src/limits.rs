//! Limits per identity (a token's subject, `sub`): how many sync connections it may
//! hold, how fast it may send commits and frames, and how much of the region's time
//! its commits may use. One identity's connections (and its HTTP requests) share one
//! budget, so opening more connections buys nothing.
//!
//! Rates are token buckets: a bucket holds at most `burst` tokens, refills at `per_sec`
//! tokens a second, and starts full. A commit takes one commit token; a frame received
//! on a sync connection takes one frame token. A request whose bucket is short
//! **waits** for the tokens (its connection reads nothing meanwhile), and is refused
//! with `RATE_LIMITED` only when the wait would be longer than `max_wait`: a client
//! that awaits each write is slowed, never cut off.
//!
//! **Cost.** A commit's cost is only known once the region has run it: the region's
//! time spent executing it ([`Identities::charge`]). Each identity has a cost bucket
//! (microseconds of region time, refilled at `per_sec`) that may go into debt; a
//! commit is let through to the sequencer ([`Identities::admit`]) only while the bucket
//! covers what the identity's commits still in flight may cost (each counted at the
//! identity's recent cost, [`Cost::first_estimate`] for a new one) and fewer than
//! [`Cost::max_in_flight`] are in flight. Over budget, its commits wait in its own
//! sessions, in front of the sequencer, so other identities' commits are not delayed:
//! one identity takes at most `per_sec` of the region's time in the long run, and at
//! most `max_in_flight` commits at once. `docs/DECISIONS.md` ("Cost, not count").

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::Notify;

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
    /// Region time (see [`Cost`]).
    Cost,
}

impl Budget {
    /// The label in metrics and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Budget::Commits => "commits",
            Budget::Frames => "frames",
            Budget::Cost => "cost",
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

/// The cost budget: region time per identity.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Cost {
    /// Microseconds of region time per second, and at most in the bucket (0 a
    /// second: unlimited).
    pub rate: Rate,
    /// Commits of one identity sent to the sequencer and not yet run, at most.
    pub max_in_flight: u32,
    /// What a commit of an identity not seen yet is expected to cost, microseconds.
    pub first_estimate: f64,
}

impl Cost {
    pub const UNLIMITED: Cost = Cost {
        rate: Rate::UNLIMITED,
        max_in_flight: 0,
        first_estimate: 0.0,
    };
}

struct Identity {
    connections: usize,
    commits: Bucket,
    frames: Bucket,
    /// Microseconds of region time; negative in debt.
    cost: Bucket,
    /// Commits admitted and not charged yet.
    in_flight: u32,
    /// The identity's recent cost per commit (the last one's, or half the previous
    /// estimate if that is more), microseconds.
    estimate: f64,
    /// Woken when a commit of the identity is charged.
    charged: Arc<Notify>,
}

/// The per-identity budgets of one server.
pub struct Identities {
    max_connections: usize,
    commits: Rate,
    frames: Rate,
    cost: Cost,
    /// The longest a request waits for its budget before `RATE_LIMITED`.
    max_wait: Duration,
    map: Mutex<HashMap<String, Identity>>,
}

/// What a request found of its budget.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refused {
    /// The wait would be longer than `max_wait`.
    RateLimited(Budget),
}

/// Forgetting identities: when the map grows past this, entries with no connection
/// and full buckets (they would start over identically) are removed.
const PRUNE_ABOVE: usize = 4096;

impl Identities {
    /// `max_connections` 0 means unlimited.
    pub fn new(max_connections: usize, commits: Rate, frames: Rate) -> Identities {
        Identities::with_cost(
            max_connections,
            commits,
            frames,
            Cost::UNLIMITED,
            Duration::ZERO,
        )
    }

    /// With a cost budget, and requests waiting up to `max_wait` for their budgets.
    pub fn with_cost(
        max_connections: usize,
        commits: Rate,
        frames: Rate,
        cost: Cost,
        max_wait: Duration,
    ) -> Identities {
        Identities {
            max_connections,
            commits,
            frames,
            cost,
            max_wait,
            map: Mutex::new(HashMap::new()),
        }
    }

    /// The longest a request waits for its budget.
    pub fn max_wait(&self) -> Duration {
        self.max_wait
    }

    fn entry<'a>(
        &self,
        map: &'a mut HashMap<String, Identity>,
        sub: &str,
        now: Instant,
    ) -> &'a mut Identity {
        if map.len() >= PRUNE_ABOVE && !map.contains_key(sub) {
            let (commits, frames, cost) = (self.commits, self.frames, self.cost.rate);
            map.retain(|_, id| {
                id.commits.refill(commits, now);
                id.frames.refill(frames, now);
                id.cost.refill(cost, now);
                id.connections > 0
                    || id.in_flight > 0
                    || id.commits.tokens < commits.burst
                    || id.frames.tokens < frames.burst
                    || id.cost.tokens < cost.burst
            });
        }
        map.entry(sub.to_owned()).or_insert_with(|| Identity {
            connections: 0,
            commits: Bucket::full(self.commits, now),
            frames: Bucket::full(self.frames, now),
            cost: Bucket::full(self.cost.rate, now),
            in_flight: 0,
            estimate: self.cost.first_estimate,
            charged: Arc::new(Notify::new()),
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

    /// Takes `n` tokens from `sub`'s budget, or says how long until the bucket holds
    /// them (nothing is taken then).
    fn try_take(&self, sub: &str, budget: Budget, n: u64) -> Result<(), Duration> {
        let rate = match budget {
            Budget::Commits => self.commits,
            Budget::Frames => self.frames,
            Budget::Cost => return Ok(()),
        };
        if rate.is_unlimited() || n == 0 {
            return Ok(());
        }
        let now = Instant::now();
        let mut map = self.map.lock().expect("identities lock");
        let id = self.entry(&mut map, sub, now);
        let bucket = match budget {
            Budget::Commits => &mut id.commits,
            _ => &mut id.frames,
        };
        bucket.refill(rate, now);
        if bucket.tokens >= n as f64 {
            bucket.tokens -= n as f64;
            Ok(())
        } else if n as f64 > rate.burst {
            Err(Duration::MAX)
        } else {
            Err(Duration::from_secs_f64(
                (n as f64 - bucket.tokens) / rate.per_sec,
            ))
        }
    }

    /// Takes `n` tokens from `sub`'s budget now; `false` (and nothing taken) when it
    /// holds fewer.
    pub fn take(&self, sub: &str, budget: Budget, n: u64) -> bool {
        self.try_take(sub, budget, n).is_ok()
    }

    /// Takes `n` tokens from `sub`'s budget, waiting for them up to `max_wait` in all;
    /// refused (nothing taken) when they would take longer.
    pub async fn take_waiting(&self, sub: &str, budget: Budget, n: u64) -> Result<(), Refused> {
        let deadline = Instant::now() + self.max_wait;
        loop {
            match self.try_take(sub, budget, n) {
                Ok(()) => return Ok(()),
                Err(wait) => {
                    let until = Instant::now().checked_add(wait);
                    match until {
                        Some(t) if t <= deadline => {
                            tokio::time::sleep(wait.max(Duration::from_micros(100))).await
                        }
                        _ => return Err(Refused::RateLimited(budget)),
                    }
                }
            }
        }
    }

    /// Lets one commit of `sub` through to the sequencer, waiting while its cost
    /// budget does not cover what its commits in flight may cost (see the module
    /// documentation), up to `max_wait`. The region's [`Identities::charge`] settles it.
    pub async fn admit(self: &Arc<Self>, sub: &str) -> Result<Admitted, Refused> {
        if self.cost.rate.is_unlimited() {
            return Ok(Admitted(None));
        }
        let deadline = Instant::now() + self.max_wait;
        loop {
            // Listen for charges before looking, so that none is missed in between.
            let charged = {
                let mut map = self.map.lock().expect("identities lock");
                self.entry(&mut map, sub, Instant::now()).charged.clone()
            };
            let notified = charged.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let until = {
                let now = Instant::now();
                let mut map = self.map.lock().expect("identities lock");
                let id = self.entry(&mut map, sub, now);
                id.cost.refill(self.cost.rate, now);
                let owed = id.in_flight as f64 * id.estimate;
                if id.in_flight < self.cost.max_in_flight.max(1) && id.cost.tokens >= owed {
                    id.in_flight += 1;
                    return Ok(Admitted(Some((self.clone(), sub.to_owned()))));
                }
                // What refilling alone takes; a charge may come sooner.
                let refill = if id.cost.tokens < owed {
                    Duration::from_secs_f64((owed - id.cost.tokens) / self.cost.rate.per_sec)
                } else {
                    Duration::ZERO
                };
                let until = now.checked_add(refill);
                if id.in_flight == 0 && until.is_none_or(|t| t > deadline) {
                    // Nothing in flight to settle, and the debt outlasts the wait.
                    return Err(Refused::RateLimited(Budget::Cost));
                }
                match until {
                    Some(t) if id.in_flight == 0 || refill > Duration::ZERO => t.min(deadline),
                    _ => deadline,
                }
            };
            tokio::select! {
                _ = &mut notified => {}
                _ = tokio::time::sleep_until(until.into()) => {
                    if Instant::now() >= deadline {
                        return Err(Refused::RateLimited(Budget::Cost));
                    }
                }
            }
        }
    }

    /// Charges what commits cost, as the region measured: `(sub, microseconds,
    /// commits)` each. Settles that many commits in flight (commits replayed from the
    /// log were never in flight: nothing to settle) and wakes the identity's waiting
    /// commits.
    pub fn charge(&self, charges: &[(String, u64, u32)]) {
        if self.cost.rate.is_unlimited() || charges.is_empty() {
            return;
        }
        let now = Instant::now();
        let mut map = self.map.lock().expect("identities lock");
        for (sub, micros, commits) in charges {
            let id = self.entry(&mut map, sub, now);
            id.cost.refill(self.cost.rate, now);
            id.cost.tokens -= *micros as f64;
            id.in_flight = id.in_flight.saturating_sub(*commits);
            let each = *micros as f64 / (*commits).max(1) as f64;
            id.estimate = each.max(id.estimate / 2.0);
            id.charged.notify_waiters();
        }
    }

    /// An identity's cost bucket now (microseconds; negative in debt) and its commits
    /// in flight.
    pub fn cost_of(&self, sub: &str) -> (f64, u32) {
        let now = Instant::now();
        let mut map = self.map.lock().expect("identities lock");
        let id = self.entry(&mut map, sub, now);
        id.cost.refill(self.cost.rate, now);
        (id.cost.tokens, id.in_flight)
    }

    /// Sync connections `sub` holds now.
    pub fn connections(&self, sub: &str) -> usize {
        let map = self.map.lock().expect("identities lock");
        map.get(sub).map_or(0, |id| id.connections)
    }
}

/// A commit let through by [`Identities::admit`]: in flight once [`Admitted::sent`];
/// dropped unsent (the request went away first), it is not.
#[must_use]
pub struct Admitted(Option<(Arc<Identities>, String)>);

impl Admitted {
    /// The commit reached the sequencer: the region's charge settles it.
    pub fn sent(mut self) {
        self.0 = None;
    }
}

impl Drop for Admitted {
    fn drop(&mut self) {
        if let Some((ids, sub)) = self.0.take() {
            let mut map = ids.map.lock().expect("identities lock");
            if let Some(id) = map.get_mut(&sub) {
                id.in_flight = id.in_flight.saturating_sub(1);
                id.charged.notify_waiters();
            }
        }
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
