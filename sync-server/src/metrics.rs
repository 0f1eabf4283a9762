//! Prometheus metrics, hand-rolled: counters, gauges and a few histograms, rendered as
//! text. Every name is listed in `docs/PROTOCOL.md` ("HTTP endpoints").

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

/// A Prometheus histogram with fixed upper bounds.
pub struct Histogram {
    bounds: &'static [f64],
    /// One per bound, then `+Inf`; not cumulative (cumulated when rendered).
    counts: Vec<AtomicU64>,
    /// The sum, in millionths of the unit.
    sum_micros: AtomicU64,
}

impl Histogram {
    pub fn new(bounds: &'static [f64]) -> Histogram {
        Histogram {
            bounds,
            counts: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            sum_micros: AtomicU64::new(0),
        }
    }

    pub fn observe(&self, v: f64) {
        let i = self.bounds.partition_point(|b| *b < v);
        self.counts[i].fetch_add(1, Ordering::Relaxed);
        self.sum_micros
            .fetch_add((v.max(0.0) * 1e6) as u64, Ordering::Relaxed);
    }

    /// Observations so far.
    pub fn count(&self) -> u64 {
        self.counts.iter().map(|c| c.load(Ordering::Relaxed)).sum()
    }

    fn render(&self, name: &str, out: &mut String) {
        let mut cum = 0;
        for (i, c) in self.counts.iter().enumerate() {
            cum += c.load(Ordering::Relaxed);
            let le = self
                .bounds
                .get(i)
                .map_or_else(|| "+Inf".to_owned(), |b| b.to_string());
            let _ = writeln!(out, "{name}_bucket{{le=\"{le}\"}} {cum}");
        }
        let _ = writeln!(
            out,
            "{name}_sum {:.6}\n{name}_count {cum}",
            self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6
        );
    }
}

/// Seconds: 50 µs to 2.5 s.
const SECONDS: &[f64] = &[
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
    2.5,
];
/// Commits in a batch.
const BATCH_SIZES: &[f64] = &[
    1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0,
];

/// One digest comparison with another region.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Comparison {
    pub position: u64,
    pub peer: String,
    pub equal: bool,
    /// Milliseconds since the Unix epoch.
    pub at_ms: i64,
}

/// A region of a deployment of many regions (empty in the embedded mode): what
/// `/metrics` and `/readyz` report about it, kept up to date by the region thread,
/// the follower and the housekeeping thread.
#[derive(Default)]
pub struct RegionStatus {
    /// The region's name; unset in the embedded mode.
    pub name: OnceLock<String>,
    /// The revision of the last batch applied.
    pub applied_revision: AtomicI64,
    /// The highest revision of a batch in the shared log, as last read.
    pub head_revision: AtomicI64,
    /// The revision the store holds durably (the log must keep history after it).
    pub durable_revision: AtomicI64,
    /// Whether the last health check reached an etcd quorum, and when one last did.
    pub etcd_ok: AtomicBool,
    pub etcd_last_ok_ms: AtomicI64,
    pub etcd_db_bytes: AtomicI64,
    pub etcd_alarms: Mutex<Vec<String>>,
    /// Digest comparisons with other regions, and how many differed.
    pub comparisons: AtomicU64,
    pub mismatches: AtomicU64,
    pub last_comparison: Mutex<Option<Comparison>>,
    /// Set when the region stopped on a digest mismatch.
    pub diverged: AtomicBool,
    /// Where: the position and this region's digest there (published as it stops, so
    /// that the other side of the comparison stops too).
    pub diverged_at: Mutex<Option<(u64, [u8; 32])>>,
    /// Appends retried after an unknown outcome, and retries that found their batch
    /// already appended.
    pub append_retries: AtomicU64,
    pub append_found_own: AtomicU64,
    /// The revision the log was last compacted to (by this region).
    pub compacted_revision: AtomicI64,
    /// Clients refused because the region could not catch up (`REGION_UNAVAILABLE`).
    pub barrier_timeouts: AtomicU64,
}

impl RegionStatus {
    /// The name, if this is a region of a deployment of many.
    pub fn name(&self) -> Option<&str> {
        self.name.get().map(String::as_str)
    }

    /// How many revisions the region is behind the newest batch it knows of.
    pub fn lag(&self) -> i64 {
        (self.head_revision.load(Ordering::Relaxed) - self.applied_revision.load(Ordering::Relaxed))
            .max(0)
    }

    /// A JSON summary for `/readyz` and `/v1/admin/state`.
    pub fn summary(&self) -> serde_json::Value {
        let l = |a: &AtomicI64| a.load(Ordering::Relaxed);
        let last = self
            .last_comparison
            .lock()
            .expect("status lock")
            .clone()
            .map(|c| {
                serde_json::json!({
                    "position": c.position, "peer": c.peer, "equal": c.equal, "at_ms": c.at_ms
                })
            });
        serde_json::json!({
            "region": self.name(),
            "applied_revision": l(&self.applied_revision),
            "head_revision": l(&self.head_revision),
            "lag_revisions": self.lag(),
            "durable_revision": l(&self.durable_revision),
            "etcd_ok": self.etcd_ok.load(Ordering::Relaxed),
            "etcd_last_ok_ms": l(&self.etcd_last_ok_ms),
            "etcd_db_bytes": l(&self.etcd_db_bytes),
            "etcd_alarms": *self.etcd_alarms.lock().expect("status lock"),
            "comparisons": self.comparisons.load(Ordering::Relaxed),
            "mismatches": self.mismatches.load(Ordering::Relaxed),
            "last_comparison": last,
            "diverged": self.diverged.load(Ordering::Relaxed),
        })
    }
}

pub struct Metrics {
    /// The region of a deployment of many regions (unnamed in the embedded mode).
    pub region: RegionStatus,
    /// Commits per log batch.
    pub batch_size: Histogram,
    /// Seconds to append and fsync one batch.
    pub fsync_seconds: Histogram,
    /// Seconds to execute and apply one batch.
    pub apply_seconds: Histogram,
    /// Sync connections refused before they started (too many), by code.
    refused: Mutex<BTreeMap<String, u64>>,
    /// Requests refused by a rate limit, by budget (`commits`, `frames`).
    rate_limited: Mutex<BTreeMap<&'static str, u64>>,
    /// `Error` frames sent (and connections dropped as too slow), by code.
    errors_sent: Mutex<BTreeMap<String, u64>>,
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
    /// GraphQL's own counters.
    pub graphql: crate::graphql::GraphqlMetrics,
    /// Open TCP connections, not logged in yet and logged in (`crate::conns`).
    pub tcp_unauthenticated: AtomicU64,
    pub tcp_authenticated: AtomicU64,
    /// TCP connections closed to make room (the oldest not logged in), and refused
    /// (every place taken by logged-in ones).
    pub tcp_evicted: AtomicU64,
    pub tcp_refused: AtomicU64,
    /// Read rules evaluated: for catch-ups (welcomes, pulls) and for the fan-out of
    /// log entries (what the read-rule index keeps in proportion).
    pub rules_catch_up: AtomicU64,
    pub rules_fanout: AtomicU64,
    /// Snapshot frames written (a snapshot is one or more: `SnapshotPart`s then its
    /// `Snapshot`).
    pub snapshot_frames: AtomicU64,
}

impl Default for Metrics {
    fn default() -> Metrics {
        Metrics {
            region: RegionStatus::default(),
            batch_size: Histogram::new(BATCH_SIZES),
            fsync_seconds: Histogram::new(SECONDS),
            apply_seconds: Histogram::new(SECONDS),
            refused: Default::default(),
            rate_limited: Default::default(),
            errors_sent: Default::default(),
            commits_committed: Default::default(),
            commits_duplicate: Default::default(),
            batches: Default::default(),
            batch_commits: Default::default(),
            fsync_micros: Default::default(),
            apply_micros: Default::default(),
            connections: Default::default(),
            connections_total: Default::default(),
            position: Default::default(),
            frames_in: Default::default(),
            frames_out: Default::default(),
            protocol_errors: Default::default(),
            rejections: Default::default(),
            graphql: Default::default(),
            tcp_unauthenticated: Default::default(),
            tcp_authenticated: Default::default(),
            tcp_evicted: Default::default(),
            tcp_refused: Default::default(),
            rules_catch_up: Default::default(),
            rules_fanout: Default::default(),
            snapshot_frames: Default::default(),
        }
    }
}

fn bump<K: Ord>(m: &Mutex<BTreeMap<K, u64>>, k: K) {
    *m.lock().expect("metrics lock").entry(k).or_default() += 1;
}

fn labelled<K: AsRef<str>>(m: &Mutex<BTreeMap<K, u64>>, name: &str, label: &str) -> String {
    m.lock()
        .expect("metrics lock")
        .iter()
        .map(|(k, n)| format!("{name}{{{label}=\"{}\"}} {n}", k.as_ref()))
        .collect::<Vec<_>>()
        .join("\n")
}

impl Metrics {
    /// A batch of `commits` appended and synced in `took`.
    pub fn batch_appended(&self, commits: usize, took: Duration) {
        Metrics::add(&self.fsync_micros, took.as_micros() as u64);
        Metrics::add(&self.batches, 1);
        Metrics::add(&self.batch_commits, commits as u64);
        self.batch_size.observe(commits as f64);
        self.fsync_seconds.observe(took.as_secs_f64());
    }

    /// A batch executed and applied in `took`.
    pub fn batch_applied(&self, took: Duration) {
        Metrics::add(&self.apply_micros, took.as_micros() as u64);
        self.apply_seconds.observe(took.as_secs_f64());
    }

    /// An `Error` frame with `code` was sent (the connection ends).
    pub fn error_sent(&self, code: &str) {
        bump(&self.errors_sent, code.to_owned());
    }

    /// A sync connection refused before it started, with `code`.
    pub fn refused(&self, code: &str) {
        bump(&self.refused, code.to_owned());
    }

    /// A request over a rate limit.
    pub fn rate_limited(&self, budget: &'static str) {
        bump(&self.rate_limited, budget);
    }

    pub fn rejected(&self, code: &str) {
        bump(&self.rejections, code.to_owned());
    }

    pub fn add(c: &AtomicU64, n: u64) {
        c.fetch_add(n, Ordering::Relaxed);
    }

    fn render_region(&self, name: &str, metric: &mut impl FnMut(&str, &str, &str, String)) {
        let r = &self.region;
        let l = |a: &AtomicI64| a.load(Ordering::Relaxed);
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let lbl = format!("{{region=\"{name}\"}}");
        metric(
            "warren_region_info",
            "gauge",
            "This server is a region of a deployment of many (always 1).",
            format!("warren_region_info{lbl} 1"),
        );
        metric(
            "warren_region_applied_revision",
            "gauge",
            "Revision of the shared log's last batch applied here.",
            format!(
                "warren_region_applied_revision{lbl} {}",
                l(&r.applied_revision)
            ),
        );
        metric(
            "warren_region_head_revision",
            "gauge",
            "Revision of the newest batch in the shared log, as last read.",
            format!("warren_region_head_revision{lbl} {}", l(&r.head_revision)),
        );
        metric(
            "warren_region_lag_revisions",
            "gauge",
            "Revisions this region is behind the newest batch it knows of.",
            format!("warren_region_lag_revisions{lbl} {}", r.lag()),
        );
        metric(
            "warren_region_durable_revision",
            "gauge",
            "Revision the region's store holds durably.",
            format!(
                "warren_region_durable_revision{lbl} {}",
                l(&r.durable_revision)
            ),
        );
        metric(
            "warren_etcd_up",
            "gauge",
            "Whether the last health check reached an etcd quorum.",
            format!(
                "warren_etcd_up{lbl} {}",
                u8::from(r.etcd_ok.load(Ordering::Relaxed))
            ),
        );
        metric(
            "warren_etcd_db_bytes",
            "gauge",
            "Size of the etcd member's database (alert well before its quota).",
            format!("warren_etcd_db_bytes{lbl} {}", l(&r.etcd_db_bytes)),
        );
        let alarms = r.etcd_alarms.lock().expect("status lock").clone();
        metric(
            "warren_etcd_alarm",
            "gauge",
            "Active etcd alarms (NOSPACE: the cluster takes no writes).",
            if alarms.is_empty() {
                format!("warren_etcd_alarm{{region=\"{name}\",alarm=\"NONE\"}} 0")
            } else {
                alarms
                    .iter()
                    .map(|a| format!("warren_etcd_alarm{{region=\"{name}\",alarm=\"{a}\"}} 1"))
                    .collect::<Vec<_>>()
                    .join("\n")
            },
        );
        metric(
            "warren_region_digest_comparisons_total",
            "counter",
            "Digest comparisons with other regions, by result.",
            format!(
                "warren_region_digest_comparisons_total{{region=\"{name}\",result=\"equal\"}} {}\nwarren_region_digest_comparisons_total{{region=\"{name}\",result=\"different\"}} {}",
                g(&r.comparisons) - g(&r.mismatches),
                g(&r.mismatches)
            ),
        );
        let last = r.last_comparison.lock().expect("status lock").clone();
        metric(
            "warren_region_last_comparison_position",
            "gauge",
            "Position of the last digest comparison with another region (0: none yet).",
            format!(
                "warren_region_last_comparison_position{lbl} {}",
                last.as_ref().map_or(0, |c| c.position)
            ),
        );
        metric(
            "warren_region_last_comparison_equal",
            "gauge",
            "Whether the last digest comparison found the digests equal.",
            format!(
                "warren_region_last_comparison_equal{lbl} {}",
                last.as_ref().map_or(1, |c| u8::from(c.equal))
            ),
        );
        metric(
            "warren_region_diverged",
            "gauge",
            "1 when this region stopped on a digest mismatch.",
            format!(
                "warren_region_diverged{lbl} {}",
                u8::from(r.diverged.load(Ordering::Relaxed))
            ),
        );
        metric(
            "warren_region_append_retries_total",
            "counter",
            "Appends retried after an unknown outcome (and of those, found already appended).",
            format!(
                "warren_region_append_retries_total{{region=\"{name}\",found_own=\"false\"}} {}\nwarren_region_append_retries_total{{region=\"{name}\",found_own=\"true\"}} {}",
                g(&r.append_retries),
                g(&r.append_found_own)
            ),
        );
        metric(
            "warren_region_barrier_timeouts_total",
            "counter",
            "Clients refused with REGION_UNAVAILABLE: the region could not reach the global head in time.",
            format!("warren_region_barrier_timeouts_total{lbl} {}", g(&r.barrier_timeouts)),
        );
    }

    /// The Prometheus text exposition.
    /// One snapshot frame (a part or the last) was written.
    pub fn snapshot_part(&self) {
        Metrics::add(&self.snapshot_frames, 1);
    }

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
            labelled(&self.rejections, "warren_rejections_total", "code"),
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
            "warren_tcp_connections",
            "gauge",
            "Open TCP connections, by whether a token they carried verified.",
            format!(
                "warren_tcp_connections{{state=\"unauthenticated\"}} {}\nwarren_tcp_connections{{state=\"authenticated\"}} {}",
                g(&self.tcp_unauthenticated),
                g(&self.tcp_authenticated)
            ),
        );
        metric(
            "warren_tcp_closed_total",
            "counter",
            "TCP connections closed by the cap: the oldest unauthenticated to make room (evicted), or new ones when every place is authenticated (refused).",
            format!(
                "warren_tcp_closed_total{{reason=\"evicted\"}} {}\nwarren_tcp_closed_total{{reason=\"refused\"}} {}",
                g(&self.tcp_evicted),
                g(&self.tcp_refused)
            ),
        );
        metric(
            "warren_read_rules_total",
            "counter",
            "Read rules evaluated, for catch-ups (welcomes and pulls) and for the fan-out of log entries.",
            format!(
                "warren_read_rules_total{{for=\"catch_up\"}} {}\nwarren_read_rules_total{{for=\"fanout\"}} {}",
                g(&self.rules_catch_up),
                g(&self.rules_fanout)
            ),
        );
        metric(
            "warren_snapshot_frames_total",
            "counter",
            "Snapshot frames written: a snapshot is sent in parts (SnapshotPart) ending with a Snapshot.",
            format!("warren_snapshot_frames_total {}", g(&self.snapshot_frames)),
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
        metric(
            "warren_errors_sent_total",
            "counter",
            "Sync connections ended with an Error frame, by code.",
            labelled(&self.errors_sent, "warren_errors_sent_total", "code"),
        );
        metric(
            "warren_rate_limited_total",
            "counter",
            "Requests refused by a per-identity rate limit, by budget.",
            labelled(&self.rate_limited, "warren_rate_limited_total", "budget"),
        );
        metric(
            "warren_connections_refused_total",
            "counter",
            "Sync connections refused by a connection limit, by code.",
            labelled(&self.refused, "warren_connections_refused_total", "code"),
        );
        if let Some(name) = self.region.name() {
            self.render_region(name, &mut metric);
        }
        for (name, help, h) in [
            (
                "warren_log_batch_size",
                "Commits per log batch.",
                &self.batch_size,
            ),
            (
                "warren_log_fsync_seconds",
                "Time to append and fsync one log batch.",
                &self.fsync_seconds,
            ),
            (
                "warren_apply_seconds",
                "Time to execute and apply one batch.",
                &self.apply_seconds,
            ),
        ] {
            let _ = writeln!(s, "# HELP {name} {help}\n# TYPE {name} histogram");
            h.render(name, &mut s);
        }
        self.graphql.render(&mut s);
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histograms_render_cumulative_buckets() {
        let m = Metrics::default();
        m.batch_appended(3, Duration::from_micros(700));
        m.batch_appended(1, Duration::from_millis(30));
        m.batch_applied(Duration::from_micros(80));
        m.rate_limited("commits");
        m.error_sent("BAD_FRAME");
        m.refused("TOO_MANY_CONNECTIONS");
        let t = m.render();
        for line in [
            "warren_log_batch_size_bucket{le=\"1\"} 1",
            "warren_log_batch_size_bucket{le=\"2\"} 1",
            "warren_log_batch_size_bucket{le=\"4\"} 2",
            "warren_log_batch_size_bucket{le=\"+Inf\"} 2",
            "warren_log_batch_size_sum 4.000000",
            "warren_log_batch_size_count 2",
            "warren_log_fsync_seconds_bucket{le=\"0.001\"} 1",
            "warren_log_fsync_seconds_bucket{le=\"0.05\"} 2",
            "warren_apply_seconds_bucket{le=\"0.0001\"} 1",
            "warren_apply_seconds_bucket{le=\"0.00005\"} 0",
            "warren_log_batches_total 2",
            "warren_rate_limited_total{budget=\"commits\"} 1",
            "warren_errors_sent_total{code=\"BAD_FRAME\"} 1",
            "warren_connections_refused_total{code=\"TOO_MANY_CONNECTIONS\"} 1",
        ] {
            assert!(t.lines().any(|l| l == line), "{line} not in\n{t}");
        }
    }
}
