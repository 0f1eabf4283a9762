//! Prometheus metrics, hand-rolled: a few counters and gauges, rendered as text.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

#[derive(Default)]
pub struct Metrics {
    pub commits_committed: AtomicU64,
    pub commits_duplicate: AtomicU64,
    pub batches: AtomicU64,
    pub batch_commits: AtomicU64,
    pub fsync_micros: AtomicU64,
    pub apply_micros: AtomicU64,
    pub connections: AtomicU64,
    pub connections_total: AtomicU64,
    pub position: AtomicU64,
    pub frames_in: AtomicU64,
    pub frames_out: AtomicU64,
    pub protocol_errors: AtomicU64,
    rejections: Mutex<BTreeMap<String, u64>>,
}

impl Metrics {
    pub fn rejected(&self, code: &str) {
        *self
            .rejections
            .lock()
            .expect("metrics lock")
            .entry(code.to_owned())
            .or_default() += 1;
    }

    pub fn add(c: &AtomicU64, n: u64) {
        c.fetch_add(n, Ordering::Relaxed);
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let g = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let mut s = String::new();
        let mut metric = |name: &str, kind: &str, help: &str, value: String| {
            let _ = writeln!(s, "# HELP {name} {help}\n# TYPE {name} {kind}\n{value}");
        };
        metric("warren_commits_total", "counter", "Commits by outcome.", {
            let mut v = format!(
                "warren_commits_total{{outcome=\"committed\"}} {}\nwarren_commits_total{{outcome=\"duplicate\"}} {}",
                g(&self.commits_committed),
                g(&self.commits_duplicate)
            );
            let rej: u64 = self.rejections.lock().expect("metrics lock").values().sum();
            let _ = write!(v, "\nwarren_commits_total{{outcome=\"rejected\"}} {rej}");
            v
        });
        metric(
            "warren_rejections_total",
            "counter",
            "Rejected commits by error code.",
            {
                let r = self.rejections.lock().expect("metrics lock");
                r.iter()
                    .map(|(code, n)| format!("warren_rejections_total{{code=\"{code}\"}} {n}"))
                    .collect::<Vec<_>>()
                    .join("\n")
            },
        );
        metric(
            "warren_log_batches_total",
            "counter",
            "Batches appended to the log.",
            format!("warren_log_batches_total {}", g(&self.batches)),
        );
        metric(
            "warren_log_batch_commits_total",
            "counter",
            "Commits appended to the log (divide by batches for the mean batch size).",
            format!("warren_log_batch_commits_total {}", g(&self.batch_commits)),
        );
        metric(
            "warren_log_fsync_seconds_total",
            "counter",
            "Time spent appending and syncing the log.",
            format!(
                "warren_log_fsync_seconds_total {:.6}",
                g(&self.fsync_micros) as f64 / 1e6
            ),
        );
        metric(
            "warren_apply_seconds_total",
            "counter",
            "Time spent executing and applying batches.",
            format!(
                "warren_apply_seconds_total {:.6}",
                g(&self.apply_micros) as f64 / 1e6
            ),
        );
        metric(
            "warren_connections",
            "gauge",
            "Open sync connections.",
            format!("warren_connections {}", g(&self.connections)),
        );
        metric(
            "warren_connections_total",
            "counter",
            "Sync connections accepted.",
            format!("warren_connections_total {}", g(&self.connections_total)),
        );
        metric(
            "warren_log_position",
            "gauge",
            "Last applied log position.",
            format!("warren_log_position {}", g(&self.position)),
        );
        metric("warren_frames_total", "counter", "Frames received and sent.", format!("warren_frames_total{{direction=\"in\"}} {}\nwarren_frames_total{{direction=\"out\"}} {}", g(&self.frames_in), g(&self.frames_out)));
        metric(
            "warren_protocol_errors_total",
            "counter",
            "Connections closed for a protocol error.",
            format!("warren_protocol_errors_total {}", g(&self.protocol_errors)),
        );
        s
    }
}
