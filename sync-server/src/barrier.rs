//! The Welcome barrier of a region of a deployment of many regions: before a region
//! welcomes a client or answers a pull, it applies everything the shared log held
//! when the request arrived. A client moving from a region at position 990 to one at
//! 950 would otherwise see older data than it already has, or a partition it was just
//! removed from come back for the lag's duration (`docs/REGIONS.md`, "Reads across
//! regions").
//!
//! One linearizable read of every region's log head (keys only: a few bytes per
//! region) gives the target revision; the request waits until the region applied a
//! batch at or after it. Requests that arrive while a read is in flight share the
//! next read: one read serves a burst of reconnects. A region that cannot read the
//! heads or catch up within the timeout answers `REGION_UNAVAILABLE`, so the client
//! tries another region instead of being served a frozen state.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot, watch};

use crate::log::shared::SharedLog;
use crate::metrics::Metrics;

type Reply = oneshot::Sender<Result<i64, String>>;

pub struct Barrier {
    requests: mpsc::UnboundedSender<Reply>,
    applied: watch::Receiver<i64>,
    timeout: Duration,
    metrics: Arc<Metrics>,
}

impl Barrier {
    /// A barrier over `log`, with `applied` the revision the region has applied. Must
    /// be made on a tokio runtime (it starts the task that reads the heads).
    pub fn new(
        log: Arc<dyn SharedLog>,
        applied: watch::Receiver<i64>,
        timeout: Duration,
        metrics: Arc<Metrics>,
    ) -> Barrier {
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(read_heads(log, rx, metrics.clone()));
        Barrier {
            requests: tx,
            applied,
            timeout,
            metrics,
        }
    }

    /// Waits until the region applied everything the log held now. `Err` with a
    /// message when that did not happen within the timeout.
    pub async fn wait(&self) -> Result<(), String> {
        let r = tokio::time::timeout(self.timeout, async {
            let (tx, rx) = oneshot::channel();
            self.requests
                .send(tx)
                .map_err(|_| "the region is stopping".to_owned())?;
            let target = rx
                .await
                .map_err(|_| "the region is stopping".to_owned())??;
            let mut applied = self.applied.clone();
            applied
                .wait_for(|r| *r >= target)
                .await
                .map_err(|_| "the region is stopping".to_owned())?;
            Ok::<(), String>(())
        })
        .await;
        let r = match r {
            Ok(r) => r,
            Err(_) => Err(format!(
                "this region could not catch up with the global log within {:?}",
                self.timeout
            )),
        };
        if r.is_err() {
            Metrics::add(&self.metrics.region.barrier_timeouts, 1);
        }
        r
    }
}

/// Reads the heads for every request queued, one read per round.
async fn read_heads(
    log: Arc<dyn SharedLog>,
    mut rx: mpsc::UnboundedReceiver<Reply>,
    metrics: Arc<Metrics>,
) {
    while let Some(first) = rx.recv().await {
        let mut waiting = vec![first];
        while let Ok(more) = rx.try_recv() {
            waiting.push(more);
        }
        let l = log.clone();
        let r = tokio::task::spawn_blocking(move || l.heads())
            .await
            .map_err(|e| e.to_string())
            .and_then(|r| r.map_err(|e| e.to_string()))
            .map(|heads| heads.iter().map(|(_, rev)| *rev).max().unwrap_or(0));
        if let Ok(target) = &r {
            metrics
                .region
                .head_revision
                .fetch_max(*target, Ordering::Relaxed);
        }
        for w in waiting {
            let _ = w.send(r.clone());
        }
    }
}
