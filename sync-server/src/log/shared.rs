//! The global log of a deployment of many regions: one key per region in a shared,
//! strictly serializable store (etcd), whose revision order is the global order.
//!
//! Layout under a prefix (`/warren/v1/` by default; `docs/REGIONS.md` has the table):
//!
//! | key | value |
//! |---|---|
//! | `meta` | [`Meta`]: the engine and the settings every region must share |
//! | `schema` | the source of the last schema change (for operators; the log is the truth) |
//! | `log/<region>` | the region's latest [`BatchRecord`]; each put is one batch of the log |
//! | `regions/<region>/state` | [`RegionState`]: position and digest at a batch end, published every second |
//! | `regions/<region>/alive` | empty, on a lease: the region runs |
//! | `fence/<region>` | why the region must not append (diverged, retired) |
//!
//! The [`SharedLog`] trait is the handful of operations Warren needs of the store, in
//! its own terms, so another client (gRPC) or an in-memory double can stand in. The
//! rules that make the log safe are written once, over the trait: [`Appender`] (a
//! compare-and-swap append that a retry cannot duplicate and that fences a second
//! process of the same region) and [`Chain`] (each region's batches are seen exactly
//! once, in order, or the consumer stops).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::json;
use warren_core::value::{write_varint, Reader};

use super::etcd::{self, Compare, EtcdClient, EtcdError, Op, Txn};

/// The pseudo-region whose batches hold schema changes (`warren schema apply`).
pub const ADMIN_REGION: &str = "~admin";

/// The default key prefix.
pub const DEFAULT_PREFIX: &str = "/warren/v1/";

/// Format version of [`BatchRecord`] bytes.
pub const BATCH_FORMAT: u8 = 1;

/// The largest batch record a region appends by default: etcd refuses requests over
/// 1.5 MiB unless started with a larger `--max-request-bytes` (measured: a
/// 1,400,000-byte value passes the JSON gateway, 1,600,000 does not).
pub const DEFAULT_MAX_RECORD_BYTES: usize = 1_400_000;

/// A shared-log failure, with a stable code.
#[derive(Debug, Clone)]
pub enum SharedLogError {
    /// Another process appends for this region, or the region is fenced (`LOG_FENCED`).
    Fenced(String),
    /// A region's batches did not arrive exactly once and in order (`LOG_GAP`).
    Gap(String),
    /// The history this region needs was compacted away (`NEEDS_SNAPSHOT`).
    NeedsSnapshot { compacted: i64, needed: i64 },
    /// The store did not answer in time; the outcome of a write is unknown
    /// (`LOG_UNAVAILABLE`).
    Unavailable(String),
    /// The store refused a write (too large, out of space...) (`LOG_REFUSED`).
    Refused(String),
    /// Stored bytes do not decode (`LOG_CORRUPT`).
    Corrupt(String),
    /// The deployment runs another engine (`ENGINE_MISMATCH`).
    EngineMismatch(String),
    /// The deployment runs with other settings that decide execution
    /// (`SETTINGS_MISMATCH`).
    SettingsMismatch(String),
    /// The log was stopped (the process is stopping).
    Stopped,
}

impl SharedLogError {
    pub fn code(&self) -> &'static str {
        match self {
            SharedLogError::Fenced(_) => "LOG_FENCED",
            SharedLogError::Gap(_) => "LOG_GAP",
            SharedLogError::NeedsSnapshot { .. } => "NEEDS_SNAPSHOT",
            SharedLogError::Unavailable(_) => "LOG_UNAVAILABLE",
            SharedLogError::Refused(_) => "LOG_REFUSED",
            SharedLogError::Corrupt(_) => "LOG_CORRUPT",
            SharedLogError::EngineMismatch(_) => "ENGINE_MISMATCH",
            SharedLogError::SettingsMismatch(_) => "SETTINGS_MISMATCH",
            SharedLogError::Stopped => "SHUTTING_DOWN",
        }
    }
}

impl std::fmt::Display for SharedLogError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: ", self.code())?;
        match self {
            SharedLogError::NeedsSnapshot { compacted, needed } => {
                if *compacted > 0 {
                    write!(
                        f,
                        "the shared log's history before revision {compacted} was compacted, and "
                    )?;
                } else {
                    write!(f, "the shared log no longer holds the history ")?;
                }
                write!(f, "this region needs it from revision {needed}; start the region with --boot-from another region's snapshot (/v1/admin/snapshot)")
            }
            SharedLogError::Stopped => f.write_str("the log was stopped"),
            SharedLogError::Fenced(m)
            | SharedLogError::Gap(m)
            | SharedLogError::Unavailable(m)
            | SharedLogError::Refused(m)
            | SharedLogError::Corrupt(m)
            | SharedLogError::EngineMismatch(m)
            | SharedLogError::SettingsMismatch(m) => f.write_str(m),
        }
    }
}

impl std::error::Error for SharedLogError {}

impl From<EtcdError> for SharedLogError {
    fn from(e: EtcdError) -> Self {
        match e {
            EtcdError::Unavailable { .. } => SharedLogError::Unavailable(e.to_string()),
            EtcdError::Compacted { revision } => SharedLogError::NeedsSnapshot {
                compacted: revision,
                needed: 0,
            },
            EtcdError::Refused { .. } => SharedLogError::Refused(e.to_string()),
            EtcdError::BadAnswer(_) => SharedLogError::Corrupt(e.to_string()),
        }
    }
}

/// Checks a region name: 1 to 64 of `a-z 0-9 - _`.
pub fn check_region_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "a region name is 1 to 64 characters of a-z, 0-9, - and _, not {name:?}"
        ))
    }
}

/// One batch of the global log: what `log/<region>` holds after one append.
///
/// Bytes (`docs/REGIONS.md`, "The batch record"): `u8 format (1) · str region ·
/// 16 bytes incarnation · varint batch_seq · varint prev_revision · varint count ·
/// count × (varint length · log entry)`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BatchRecord {
    pub region: String,
    /// Random per process start: tells this process's appends from another's.
    pub incarnation: [u8; 16],
    /// 1, 2, 3... per region, continuing across restarts.
    pub batch_seq: u64,
    /// The revision of the region's previous batch (0 for its first).
    pub prev_revision: i64,
    /// Log entries (`protocol::LogEntry` bytes), in order. A batch may be empty (a
    /// process claiming its region at start).
    pub entries: Vec<Vec<u8>>,
}

impl BatchRecord {
    pub fn encode(&self) -> Vec<u8> {
        let size: usize = self.entries.iter().map(|e| e.len() + 5).sum();
        let mut out = Vec::with_capacity(48 + self.region.len() + size);
        out.push(BATCH_FORMAT);
        write_varint(&mut out, self.region.len() as u64);
        out.extend_from_slice(self.region.as_bytes());
        out.extend_from_slice(&self.incarnation);
        write_varint(&mut out, self.batch_seq);
        write_varint(&mut out, self.prev_revision as u64);
        write_varint(&mut out, self.entries.len() as u64);
        for e in &self.entries {
            write_varint(&mut out, e.len() as u64);
            out.extend_from_slice(e);
        }
        out
    }

    /// Decodes a record; never panics, never allocates more than the bytes could hold.
    pub fn decode(bytes: &[u8]) -> Result<BatchRecord, String> {
        let mut r = Reader::new(bytes);
        let err = |e: warren_core::Error| format!("a batch record does not decode: {e}");
        let format = r.byte().map_err(err)?;
        if format != BATCH_FORMAT {
            return Err(format!(
                "a batch record has format {format}; this build reads format {BATCH_FORMAT}"
            ));
        }
        let region = r.string().map_err(err)?;
        let mut incarnation = [0u8; 16];
        for b in &mut incarnation {
            *b = r.byte().map_err(err)?;
        }
        let batch_seq = r.varint().map_err(err)?;
        let prev_revision = r.varint().map_err(err)? as i64;
        let n = r.varint().map_err(err)?;
        if n > (bytes.len() - r.pos) as u64 {
            return Err("a batch record's count is larger than the record".into());
        }
        let mut entries = Vec::with_capacity(n as usize);
        for _ in 0..n {
            let len = r.varint().map_err(err)?;
            if len == 0 || len > (bytes.len() - r.pos) as u64 {
                return Err("a batch record's entry length is out of bounds".into());
            }
            let start = r.pos;
            r.pos += len as usize;
            entries.push(bytes[start..r.pos].to_vec());
        }
        if r.pos != bytes.len() {
            return Err("trailing bytes after a batch record".into());
        }
        Ok(BatchRecord {
            region,
            incarnation,
            batch_seq,
            prev_revision,
            entries,
        })
    }
}

/// What a deployment's regions must share, in `meta`: written once, by the first
/// region (or `warren schema apply` on a new cluster).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Meta {
    pub format: u64,
    /// [`warren_core::ENGINE_VERSION`].
    pub engine: String,
    /// The engine's execution limits, as [`limits_fingerprint`] writes them.
    pub limits: String,
}

impl Meta {
    pub fn ours(limits: &warren_core::eval::Limits) -> Meta {
        Meta {
            format: 1,
            engine: warren_core::ENGINE_VERSION.to_owned(),
            limits: limits_fingerprint(limits),
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        json!({ "format": self.format, "engine": self.engine, "limits": self.limits })
            .to_string()
            .into_bytes()
    }

    pub fn decode(b: &[u8]) -> Result<Meta, String> {
        let v: serde_json::Value =
            serde_json::from_slice(b).map_err(|e| format!("meta does not decode: {e}"))?;
        Ok(Meta {
            format: v["format"].as_u64().unwrap_or(0),
            engine: v["engine"].as_str().unwrap_or("").to_owned(),
            limits: v["limits"].as_str().unwrap_or("").to_owned(),
        })
    }

    /// Refuses a deployment this build cannot join.
    pub fn check(&self, ours: &Meta) -> Result<(), SharedLogError> {
        if self.format != ours.format {
            return Err(SharedLogError::EngineMismatch(format!(
                "the shared log has format {}; this build speaks {}",
                self.format, ours.format
            )));
        }
        if self.engine != ours.engine {
            return Err(SharedLogError::EngineMismatch(format!(
                "the deployment runs engine {}; this binary is {}: every region must run the same engine",
                self.engine, ours.engine
            )));
        }
        if self.limits != ours.limits {
            return Err(SharedLogError::SettingsMismatch(format!(
                "the deployment executes with limits {}; this region with {}",
                self.limits, ours.limits
            )));
        }
        Ok(())
    }
}

/// The limits that decide execution, as one comparable string
/// ([`warren_core::eval::Limits::fingerprint`]: every limit, the quotas included).
pub fn limits_fingerprint(l: &warren_core::eval::Limits) -> String {
    l.fingerprint()
}

/// A region's published state at a batch end.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RegionState {
    /// The revision of the last batch applied.
    pub revision: i64,
    pub position: u64,
    pub digest: [u8; 32],
    /// The revision the region's store holds durably: it restarts from there, so the
    /// log must keep history after it.
    pub durable_revision: i64,
    /// The publisher's clock, milliseconds (for operators).
    pub wall_ms: i64,
}

impl RegionState {
    pub fn encode(&self) -> Vec<u8> {
        json!({
            "revision": self.revision,
            "position": self.position,
            "digest": warren_core::hex(&self.digest),
            "durable_revision": self.durable_revision,
            "wall_ms": self.wall_ms,
        })
        .to_string()
        .into_bytes()
    }

    pub fn decode(b: &[u8]) -> Result<RegionState, String> {
        let v: serde_json::Value = serde_json::from_slice(b)
            .map_err(|e| format!("a region state does not decode: {e}"))?;
        let digest = parse_digest(v["digest"].as_str().unwrap_or(""))?;
        Ok(RegionState {
            revision: v["revision"].as_i64().unwrap_or(0),
            position: v["position"].as_u64().unwrap_or(0),
            digest,
            durable_revision: v["durable_revision"].as_i64().unwrap_or(0),
            wall_ms: v["wall_ms"].as_i64().unwrap_or(0),
        })
    }
}

/// A digest from its 64 hex digits.
pub fn parse_digest(hex: &str) -> Result<[u8; 32], String> {
    let mut digest = [0u8; 32];
    if hex.len() != 64 || !hex.is_ascii() {
        return Err(format!("a digest is 64 hex digits, not {hex:?}"));
    }
    for (i, d) in digest.iter_mut().enumerate() {
        *d = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16)
            .map_err(|_| format!("a digest is 64 hex digits, not {hex:?}"))?;
    }
    Ok(digest)
}

/// A key of the layout, relative to the prefix.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Key {
    Meta,
    Schema,
    Log(String),
    State(String),
    Alive(String),
    Fence(String),
    /// `presence/<region>/<slot>`: a presence message for the other regions
    /// (crate::presence), never part of the log.
    Presence(String),
    Other(String),
}

impl Key {
    pub fn parse(rel: &str) -> Key {
        if rel == "meta" {
            return Key::Meta;
        }
        if rel == "schema" {
            return Key::Schema;
        }
        if let Some(r) = rel.strip_prefix("log/") {
            return Key::Log(r.to_owned());
        }
        if let Some(r) = rel.strip_prefix("fence/") {
            return Key::Fence(r.to_owned());
        }
        if let Some(r) = rel.strip_prefix("presence/") {
            return Key::Presence(r.to_owned());
        }
        if let Some(rest) = rel.strip_prefix("regions/") {
            if let Some(r) = rest.strip_suffix("/state") {
                return Key::State(r.to_owned());
            }
            if let Some(r) = rest.strip_suffix("/alive") {
                return Key::Alive(r.to_owned());
            }
        }
        Key::Other(rel.to_owned())
    }

    pub fn rel(&self) -> String {
        match self {
            Key::Meta => "meta".into(),
            Key::Schema => "schema".into(),
            Key::Log(r) => format!("log/{r}"),
            Key::State(r) => format!("regions/{r}/state"),
            Key::Alive(r) => format!("regions/{r}/alive"),
            Key::Fence(r) => format!("fence/{r}"),
            Key::Presence(r) => format!("presence/{r}"),
            Key::Other(s) => s.clone(),
        }
    }
}

/// A change under the prefix, as the consumer sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LogEvent {
    /// `key` was set (`Some`) or deleted (`None`) at `revision`.
    Change {
        revision: i64,
        key: Key,
        value: Option<Vec<u8>>,
    },
    /// Nothing changed under the prefix up to `revision`.
    Progress { revision: i64 },
}

/// The head of one region's log key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Head {
    pub revision: i64,
    pub record: Vec<u8>,
}

/// Keys under a directory of the layout, with the store's revision: `(revision,
/// [(key, its mod revision, its value)])`.
pub type Listing = (i64, Vec<(Key, i64, Vec<u8>)>);

/// A watch of the layout: changes in revision order, then an error when it breaks.
pub type LogStream = Box<dyn Iterator<Item = Result<LogEvent, SharedLogError>> + Send>;

/// How a compare-and-swap append ended.
#[derive(Clone, Debug)]
pub enum CasResult {
    /// Appended at this revision.
    Appended(i64),
    /// The compare failed: what `log/<region>` holds now, and the fence if any.
    Conflict {
        current: Option<Head>,
        fence: Option<Vec<u8>>,
    },
}

/// The operations Warren needs of the shared store. Synchronous, like [`super::Log`]:
/// the sequencer, the follower and the publisher each run on a thread of their own.
pub trait SharedLog: Send + Sync {
    /// Linearizable read of one key.
    fn get(&self, key: &Key) -> Result<Option<(i64, Vec<u8>)>, SharedLogError>;

    /// Linearizable read of every key under `dir/` (`regions/`, `log/`...), with the
    /// store's revision.
    fn list(&self, dir: &str) -> Result<Listing, SharedLogError>;

    /// Linearizable read of every region's log head: `(region, revision of its last
    /// batch)`, without the batches themselves.
    fn heads(&self) -> Result<Vec<(String, i64)>, SharedLogError>;

    /// Whether the history after `revision` is partly gone (a watch from `revision +
    /// 1` would miss changes).
    fn compacted_after(&self, revision: i64) -> Result<bool, SharedLogError>;

    /// Appends `record` as the next batch of `region` if `log/<region>` is still at
    /// `prev_revision` (0: absent) and `fence/<region>` does not exist. One attempt; an
    /// `Unavailable` error leaves the outcome unknown.
    fn append_cas(
        &self,
        region: &str,
        prev_revision: i64,
        record: &[u8],
        extra: &[(Key, Vec<u8>)],
        extra_compare: Option<(Key, i64)>,
    ) -> Result<CasResult, SharedLogError>;

    /// Creates `meta` and the first batch of [`ADMIN_REGION`] (the initial schema) in
    /// one step if `meta` does not exist yet; returns whether this call created them.
    fn bootstrap(&self, meta: &[u8], schema: &[u8], record: &[u8]) -> Result<bool, SharedLogError>;

    /// Sets a key (states, fences). Idempotent.
    fn put(&self, key: &Key, value: &[u8]) -> Result<i64, SharedLogError>;

    /// Every change under the prefix after `after`, in revision order, with progress
    /// notices. The iterator ends (an `Err`) when the stream breaks; the consumer
    /// opens a new one after the last revision it handled.
    fn watch(&self, after: i64) -> Result<LogStream, SharedLogError>;

    /// Drops the history before `revision`.
    fn compact(&self, revision: i64) -> Result<(), SharedLogError>;

    /// Keeps `regions/<region>/alive` on a lease of `ttl`; call again within the ttl.
    fn keep_alive(&self, region: &str, ttl: Duration) -> Result<(), SharedLogError>;

    /// The store's health: `(db size in bytes, alarms)`.
    fn health(&self) -> Result<(i64, Vec<String>), SharedLogError>;
}

/// [`SharedLog`] on an etcd cluster through its JSON gateway.
pub struct EtcdLog {
    client: EtcdClient,
    prefix: String,
    lease: Mutex<Option<i64>>,
    /// Watches opened so far: each new one (after the previous one broke) goes to the
    /// next endpoint, starting with the first listed (the region's nearest).
    watches: std::sync::atomic::AtomicUsize,
}

impl EtcdLog {
    pub fn new(client: EtcdClient, prefix: &str) -> EtcdLog {
        let mut prefix = prefix.to_owned();
        if !prefix.ends_with('/') {
            prefix.push('/');
        }
        EtcdLog {
            client,
            prefix,
            lease: Mutex::new(None),
            watches: std::sync::atomic::AtomicUsize::new(0),
        }
    }

    pub fn client(&self) -> &EtcdClient {
        &self.client
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    fn key(&self, k: &Key) -> Vec<u8> {
        format!("{}{}", self.prefix, k.rel()).into_bytes()
    }

    fn rel<'a>(&self, k: &'a [u8]) -> Option<&'a str> {
        std::str::from_utf8(k).ok()?.strip_prefix(&self.prefix)
    }
}

impl SharedLog for EtcdLog {
    fn get(&self, key: &Key) -> Result<Option<(i64, Vec<u8>)>, SharedLogError> {
        Ok(self
            .client
            .get(&self.key(key))?
            .map(|kv| (kv.mod_revision, kv.value)))
    }

    fn list(&self, dir: &str) -> Result<Listing, SharedLogError> {
        let start = format!("{}{dir}", self.prefix).into_bytes();
        let r = self
            .client
            .range(&start, Some(&etcd::prefix_end(&start)), 0, false, false)?;
        let kvs = r
            .kvs
            .into_iter()
            .filter_map(|kv| {
                let k = Key::parse(self.rel(&kv.key)?);
                Some((k, kv.mod_revision, kv.value))
            })
            .collect();
        Ok((r.revision, kvs))
    }

    fn heads(&self) -> Result<Vec<(String, i64)>, SharedLogError> {
        let start = format!("{}log/", self.prefix).into_bytes();
        let r = self
            .client
            .range(&start, Some(&etcd::prefix_end(&start)), 0, true, false)?;
        Ok(r.kvs
            .into_iter()
            .filter_map(|kv| match Key::parse(self.rel(&kv.key)?) {
                Key::Log(region) => Some((region, kv.mod_revision)),
                _ => None,
            })
            .collect())
    }

    fn compacted_after(&self, revision: i64) -> Result<bool, SharedLogError> {
        match self
            .client
            .range(&self.key(&Key::Meta), None, revision + 1, true, false)
        {
            Ok(_) => Ok(false),
            Err(EtcdError::Compacted { .. }) => Ok(true),
            // A revision after the newest: nothing after it is gone.
            Err(EtcdError::Refused { message, .. }) if message.contains("future revision") => {
                Ok(false)
            }
            Err(e) => Err(e.into()),
        }
    }

    fn append_cas(
        &self,
        region: &str,
        prev_revision: i64,
        record: &[u8],
        extra: &[(Key, Vec<u8>)],
        extra_compare: Option<(Key, i64)>,
    ) -> Result<CasResult, SharedLogError> {
        let log = self.key(&Key::Log(region.to_owned()));
        let fence = self.key(&Key::Fence(region.to_owned()));
        let mut compare = vec![
            Compare::ModRevision(log.clone(), prev_revision),
            Compare::Version(fence.clone(), 0),
        ];
        if let Some((k, rev)) = extra_compare {
            compare.push(Compare::ModRevision(self.key(&k), rev));
        }
        let mut success = vec![Op::Put {
            key: log.clone(),
            value: record.to_vec(),
            lease: 0,
        }];
        for (k, v) in extra {
            success.push(Op::Put {
                key: self.key(k),
                value: v.clone(),
                lease: 0,
            });
        }
        let txn = Txn {
            compare,
            success,
            failure: vec![
                Op::Range {
                    key: log,
                    range_end: None,
                },
                Op::Range {
                    key: fence,
                    range_end: None,
                },
            ],
        };
        let i = self.client.current();
        let r = match self.client.txn_once(i, &txn) {
            Ok(r) => r,
            Err(e) => {
                if e.is_unknown_outcome() {
                    self.client.rotate();
                }
                return Err(e.into());
            }
        };
        if r.succeeded {
            return Ok(CasResult::Appended(r.revision));
        }
        let current = r.ranges.first().and_then(|kvs| kvs.first()).map(|kv| Head {
            revision: kv.mod_revision,
            record: kv.value.clone(),
        });
        let fence = r
            .ranges
            .get(1)
            .and_then(|kvs| kvs.first())
            .map(|kv| kv.value.clone());
        Ok(CasResult::Conflict { current, fence })
    }

    fn bootstrap(&self, meta: &[u8], schema: &[u8], record: &[u8]) -> Result<bool, SharedLogError> {
        let meta_key = self.key(&Key::Meta);
        let txn = Txn {
            compare: vec![Compare::CreateRevision(meta_key.clone(), 0)],
            success: vec![
                Op::Put {
                    key: meta_key,
                    value: meta.to_vec(),
                    lease: 0,
                },
                Op::Put {
                    key: self.key(&Key::Schema),
                    value: schema.to_vec(),
                    lease: 0,
                },
                Op::Put {
                    key: self.key(&Key::Log(ADMIN_REGION.into())),
                    value: record.to_vec(),
                    lease: 0,
                },
            ],
            failure: vec![],
        };
        // A retry after an unknown outcome fails the compare if the first attempt
        // passed: the caller reads `meta` either way.
        Ok(self.client.txn(&txn)?.succeeded)
    }

    fn put(&self, key: &Key, value: &[u8]) -> Result<i64, SharedLogError> {
        Ok(self.client.put(&self.key(key), value, 0)?)
    }

    fn watch(&self, after: i64) -> Result<LogStream, SharedLogError> {
        let i = self.watches.fetch_add(1, Ordering::Relaxed);
        let w = match self.client.watch(i, self.prefix.as_bytes(), after + 1) {
            Ok(w) => w,
            Err(e) => {
                return Err(match e {
                    EtcdError::Compacted { revision } => SharedLogError::NeedsSnapshot {
                        compacted: revision,
                        needed: after + 1,
                    },
                    e => e.into(),
                });
            }
        };
        Ok(Box::new(EtcdStream {
            watch: w,
            prefix: self.prefix.clone(),
            queue: std::collections::VecDeque::new(),
            after,
            failed: false,
        }))
    }

    fn compact(&self, revision: i64) -> Result<(), SharedLogError> {
        match self.client.compact(revision) {
            Ok(()) | Err(EtcdError::Compacted { .. }) => Ok(()),
            Err(EtcdError::Refused { message, .. })
                if message.contains("compacted") || message.contains("future revision") =>
            {
                Ok(())
            }
            Err(e) => Err(e.into()),
        }
    }

    fn keep_alive(&self, region: &str, ttl: Duration) -> Result<(), SharedLogError> {
        let mut lease = self.lease.lock().expect("lease lock");
        if let Some(id) = *lease {
            if self.client.lease_keepalive(id)? > 0 {
                return Ok(());
            }
        }
        let id = self.client.lease_grant(ttl.as_secs().max(2) as i64)?;
        self.client
            .put(&self.key(&Key::Alive(region.to_owned())), b"", id)?;
        *lease = Some(id);
        Ok(())
    }

    fn health(&self) -> Result<(i64, Vec<String>), SharedLogError> {
        let mut last = None;
        let n = self.client.endpoints().len();
        let mut size = None;
        for k in 0..n {
            match self.client.status((self.client.current() + k) % n) {
                Ok(s) => {
                    size = Some(s.db_size);
                    break;
                }
                Err(e) => last = Some(e),
            }
        }
        let size = match size {
            Some(s) => s,
            None => return Err(last.expect("an endpoint").into()),
        };
        Ok((size, self.client.alarms()?))
    }
}

struct EtcdStream {
    watch: etcd::Watch,
    prefix: String,
    queue: std::collections::VecDeque<LogEvent>,
    /// The last revision handed out.
    after: i64,
    failed: bool,
}

impl Iterator for EtcdStream {
    type Item = Result<LogEvent, SharedLogError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed {
            return None;
        }
        loop {
            if let Some(e) = self.queue.pop_front() {
                return Some(Ok(e));
            }
            match self.watch.recv() {
                Ok(etcd::WatchMessage::Progress { revision }) => {
                    if revision > self.after {
                        self.after = revision;
                        return Some(Ok(LogEvent::Progress { revision }));
                    }
                }
                Ok(etcd::WatchMessage::Events { events, .. }) => {
                    for ev in events {
                        let kv = ev.kv();
                        let Some(rel) = std::str::from_utf8(&kv.key)
                            .ok()
                            .and_then(|k| k.strip_prefix(&self.prefix))
                        else {
                            continue;
                        };
                        self.queue.push_back(LogEvent::Change {
                            revision: kv.mod_revision,
                            key: Key::parse(rel),
                            value: match &ev {
                                etcd::Event::Put(kv) => Some(kv.value.clone()),
                                etcd::Event::Delete(_) => None,
                            },
                        });
                    }
                    if let Some(LogEvent::Change { revision: r, .. }) = self.queue.back() {
                        self.after = (*r).max(self.after);
                    }
                }
                Err(e) => {
                    self.failed = true;
                    return Some(Err(match e {
                        EtcdError::Compacted { revision } => SharedLogError::NeedsSnapshot {
                            compacted: revision,
                            needed: self.after + 1,
                        },
                        e => e.into(),
                    }));
                }
            }
        }
    }
}

/// The chain check: each region's batches must arrive exactly once, in order. Etcd's
/// watch delivers every revision once in a correct run; bugs in some versions have
/// skipped or repeated events around compaction and restarts (see `docs/REGIONS.md`),
/// so a consumer checks and stops (`LOG_GAP`) rather than apply a wrong history.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Chain {
    /// Per region: the revision and `batch_seq` of its last batch seen.
    pub last: BTreeMap<String, (i64, u64)>,
}

impl Chain {
    /// Checks the batch `record` delivered at `revision` and records it.
    pub fn check(&mut self, revision: i64, record: &BatchRecord) -> Result<(), SharedLogError> {
        let (prev_rev, prev_seq) = self.last.get(&record.region).copied().unwrap_or((0, 0));
        if record.prev_revision != prev_rev || record.batch_seq != prev_seq + 1 {
            return Err(SharedLogError::Gap(format!(
                "region {}'s batch {} at revision {revision} follows revision {} (batch {}), but the last batch seen of it was batch {prev_seq} at revision {prev_rev}: the log skipped or repeated a batch",
                record.region, record.batch_seq, record.prev_revision, record.batch_seq.wrapping_sub(1)
            )));
        }
        self.last
            .insert(record.region.clone(), (revision, record.batch_seq));
        Ok(())
    }

    /// Encodes the chain for the store: `varint count · count × (str region · varint
    /// revision · varint batch_seq)`.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        write_varint(&mut out, self.last.len() as u64);
        for (r, (rev, seq)) in &self.last {
            write_varint(&mut out, r.len() as u64);
            out.extend_from_slice(r.as_bytes());
            write_varint(&mut out, *rev as u64);
            write_varint(&mut out, *seq);
        }
        out
    }

    pub fn decode(b: &[u8]) -> Result<Chain, String> {
        let mut r = Reader::new(b);
        let err = |e: warren_core::Error| format!("a stored chain does not decode: {e}");
        let n = r.varint().map_err(err)?;
        if n > b.len() as u64 {
            return Err("a stored chain's count is too large".into());
        }
        let mut last = BTreeMap::new();
        for _ in 0..n {
            let region = r.string().map_err(err)?;
            let rev = r.varint().map_err(err)? as i64;
            let seq = r.varint().map_err(err)?;
            last.insert(region, (rev, seq));
        }
        if r.pos != b.len() {
            return Err("trailing bytes after a stored chain".into());
        }
        Ok(Chain { last })
    }
}

/// Appends one region's batches: compare-and-swap on the region's log key, so that a
/// retry after an unknown outcome can never append a batch twice, and a second
/// process of the same region (a zombie woken from a pause, a copy started by
/// mistake) is fenced at its next append.
pub struct Appender {
    log: Arc<dyn SharedLog>,
    region: String,
    incarnation: [u8; 16],
    /// The revision of this region's last batch.
    prev_revision: i64,
    batch_seq: u64,
    stop: Arc<AtomicBool>,
    /// Attempts that had to be retried, and retries that found their batch already
    /// appended (for metrics and tests).
    pub retries: u64,
    pub found_own: u64,
}

/// 16 random bytes (the incarnation of a process).
pub fn random_incarnation() -> [u8; 16] {
    let mut b = [0u8; 16];
    if let Ok(mut f) = std::fs::File::open("/dev/urandom") {
        let _ = std::io::Read::read_exact(&mut f, &mut b);
    }
    // Mixed with the time and the pid, in case /dev/urandom is missing.
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    for (i, x) in t.to_le_bytes().iter().enumerate() {
        b[i] ^= x;
    }
    b[15] ^= std::process::id() as u8;
    b
}

impl Appender {
    /// Reads the region's head (where its chain continues) and refuses a fenced region.
    pub fn open(
        log: Arc<dyn SharedLog>,
        region: &str,
        stop: Arc<AtomicBool>,
    ) -> Result<Appender, SharedLogError> {
        let mut a = Appender {
            log,
            region: region.to_owned(),
            incarnation: random_incarnation(),
            prev_revision: 0,
            batch_seq: 0,
            stop,
            retries: 0,
            found_own: 0,
        };
        let head = a.retry(|l| l.get(&Key::Log(a.region.clone())))?;
        if let Some(f) = a.retry(|l| l.get(&Key::Fence(a.region.clone())))? {
            return Err(SharedLogError::Fenced(format!(
                "region {} is fenced: {}",
                a.region,
                String::from_utf8_lossy(&f.1)
            )));
        }
        if let Some((rev, bytes)) = head {
            let rec = BatchRecord::decode(&bytes).map_err(SharedLogError::Corrupt)?;
            a.prev_revision = rev;
            a.batch_seq = rec.batch_seq;
        }
        Ok(a)
    }

    pub fn incarnation(&self) -> [u8; 16] {
        self.incarnation
    }

    pub fn region(&self) -> &str {
        &self.region
    }

    /// The revision of the last batch this appender appended (or found at open).
    pub fn last_revision(&self) -> i64 {
        self.prev_revision
    }

    /// Runs a read until it answers, with backoff, or until stopped.
    fn retry<T>(
        &self,
        f: impl Fn(&dyn SharedLog) -> Result<T, SharedLogError>,
    ) -> Result<T, SharedLogError> {
        let mut backoff = Duration::from_millis(20);
        loop {
            match f(&*self.log) {
                Err(SharedLogError::Unavailable(e)) => {
                    if self.stop.load(Ordering::Relaxed) {
                        return Err(SharedLogError::Unavailable(e));
                    }
                    std::thread::sleep(backoff);
                    backoff = (backoff * 2).min(Duration::from_secs(1));
                }
                r => return r,
            }
        }
    }

    /// Appends `entries` as this region's next batch and returns its revision. Retries
    /// the same compare-and-swap after an unknown outcome (on the next endpoint, with
    /// backoff) until it is decided: appended, found appended by an earlier attempt,
    /// or refused because another process owns the region (`LOG_FENCED`). Gives up
    /// only when stopped (`Stopped`: the outcome of the last attempt is unknown).
    pub fn append(&mut self, entries: Vec<Vec<u8>>) -> Result<i64, SharedLogError> {
        self.append_with(entries, &[], None)
    }

    /// [`Appender::append`], also putting `extra` keys in the same step, if
    /// `extra_compare` (a key at a revision) still holds.
    pub fn append_with(
        &mut self,
        entries: Vec<Vec<u8>>,
        extra: &[(Key, Vec<u8>)],
        extra_compare: Option<(Key, i64)>,
    ) -> Result<i64, SharedLogError> {
        let record = BatchRecord {
            region: self.region.clone(),
            incarnation: self.incarnation,
            batch_seq: self.batch_seq + 1,
            prev_revision: self.prev_revision,
            entries,
        };
        let bytes = record.encode();
        let mut backoff = Duration::from_millis(10);
        let mut attempt = 0u32;
        loop {
            attempt += 1;
            let r = self.log.append_cas(
                &self.region,
                self.prev_revision,
                &bytes,
                extra,
                extra_compare.clone(),
            );
            match r {
                Ok(CasResult::Appended(rev)) => {
                    self.prev_revision = rev;
                    self.batch_seq += 1;
                    return Ok(rev);
                }
                Ok(CasResult::Conflict { current, fence }) => {
                    // Did an earlier attempt of this very append go through?
                    if let Some(h) = &current {
                        if h.record == bytes && attempt > 1 {
                            self.found_own += 1;
                            self.prev_revision = h.revision;
                            self.batch_seq += 1;
                            return Ok(h.revision);
                        }
                    }
                    if let Some(f) = fence {
                        return Err(SharedLogError::Fenced(format!(
                            "region {} is fenced: {}",
                            self.region,
                            String::from_utf8_lossy(&f)
                        )));
                    }
                    let other = current
                        .as_ref()
                        .and_then(|h| BatchRecord::decode(&h.record).ok());
                    if let (Some((k, _)), Some(o)) = (&extra_compare, &other) {
                        if o.incarnation == self.incarnation {
                            // Our own chain is intact: the extra compare failed.
                            return Err(SharedLogError::Refused(format!(
                                "{} changed since it was read",
                                k.rel()
                            )));
                        }
                    }
                    return Err(SharedLogError::Fenced(format!(
                        "another process appends for region {}: its log key is at revision {} (batch {}, incarnation {}), this process (incarnation {}) expected revision {}",
                        self.region,
                        current.as_ref().map_or(0, |h| h.revision),
                        other.as_ref().map_or(0, |o| o.batch_seq),
                        other.as_ref().map_or_else(|| "none".into(), |o| warren_core::hex(&o.incarnation)),
                        warren_core::hex(&self.incarnation),
                        self.prev_revision
                    )));
                }
                Err(SharedLogError::Unavailable(e)) => {
                    self.retries += 1;
                    if self.stop.load(Ordering::Relaxed) {
                        return Err(SharedLogError::Stopped);
                    }
                    tracing::warn!(region = %self.region, attempt, error = %e, "append outcome unknown; retrying the same compare-and-swap");
                    std::thread::sleep(backoff);
                    backoff = (backoff * 2).min(Duration::from_millis(500));
                }
                Err(e) => return Err(e),
            }
        }
    }
}

/// A [`SharedLog`] in memory, for tests of the rules above: it can answer "unknown"
/// after applying a write, and deliver a batch twice or skip one, as a faulty store
/// might.
#[derive(Default)]
pub struct MemorySharedLog {
    inner: Mutex<MemInner>,
}

#[derive(Default)]
struct MemInner {
    revision: i64,
    kv: BTreeMap<String, (i64, Vec<u8>)>,
    history: Vec<LogEvent>,
    compacted: i64,
    /// Faults for the next append: apply it but answer Unavailable.
    lose_next_answer: bool,
    /// Faults for the next append: answer Unavailable without applying it.
    fail_next: bool,
}

impl MemorySharedLog {
    pub fn new() -> MemorySharedLog {
        MemorySharedLog::default()
    }

    /// The next append is applied, but its answer is lost.
    pub fn lose_next_answer(&self) {
        self.inner.lock().expect("lock").lose_next_answer = true;
    }

    /// The next append fails without effect.
    pub fn fail_next(&self) {
        self.inner.lock().expect("lock").fail_next = true;
    }

    /// Every change so far, in order (what a watch from the start delivers).
    pub fn history(&self) -> Vec<LogEvent> {
        self.inner.lock().expect("lock").history.clone()
    }

    fn set(inner: &mut MemInner, key: &Key, value: Option<Vec<u8>>) {
        inner.revision += 1;
        let rev = inner.revision;
        match &value {
            Some(v) => {
                inner.kv.insert(key.rel(), (rev, v.clone()));
            }
            None => {
                inner.kv.remove(&key.rel());
            }
        }
        inner.history.push(LogEvent::Change {
            revision: rev,
            key: key.clone(),
            value,
        });
    }
}

impl SharedLog for MemorySharedLog {
    fn get(&self, key: &Key) -> Result<Option<(i64, Vec<u8>)>, SharedLogError> {
        Ok(self.inner.lock().expect("lock").kv.get(&key.rel()).cloned())
    }

    fn list(&self, dir: &str) -> Result<Listing, SharedLogError> {
        let i = self.inner.lock().expect("lock");
        Ok((
            i.revision,
            i.kv.iter()
                .filter(|(k, _)| k.starts_with(dir))
                .map(|(k, (rev, v))| (Key::parse(k), *rev, v.clone()))
                .collect(),
        ))
    }

    fn heads(&self) -> Result<Vec<(String, i64)>, SharedLogError> {
        let i = self.inner.lock().expect("lock");
        Ok(i.kv
            .iter()
            .filter_map(|(k, (rev, _))| match Key::parse(k) {
                Key::Log(r) => Some((r, *rev)),
                _ => None,
            })
            .collect())
    }

    fn compacted_after(&self, revision: i64) -> Result<bool, SharedLogError> {
        Ok(revision + 1 < self.inner.lock().expect("lock").compacted)
    }

    fn append_cas(
        &self,
        region: &str,
        prev_revision: i64,
        record: &[u8],
        extra: &[(Key, Vec<u8>)],
        extra_compare: Option<(Key, i64)>,
    ) -> Result<CasResult, SharedLogError> {
        let mut i = self.inner.lock().expect("lock");
        if std::mem::take(&mut i.fail_next) {
            return Err(SharedLogError::Unavailable("injected".into()));
        }
        let log = Key::Log(region.to_owned());
        let current = i.kv.get(&log.rel()).cloned();
        let fence = i.kv.get(&Key::Fence(region.to_owned()).rel()).cloned();
        let extra_ok = extra_compare
            .as_ref()
            .is_none_or(|(k, rev)| i.kv.get(&k.rel()).map_or(0, |x| x.0) == *rev);
        if current.as_ref().map_or(0, |c| c.0) != prev_revision || fence.is_some() || !extra_ok {
            return Ok(CasResult::Conflict {
                current: current.map(|(revision, record)| Head { revision, record }),
                fence: fence.map(|f| f.1),
            });
        }
        Self::set(&mut i, &log, Some(record.to_vec()));
        let rev = i.revision;
        for (k, v) in extra {
            // In one step: the same revision, as etcd gives a txn's puts.
            i.kv.insert(k.rel(), (rev, v.clone()));
        }
        if std::mem::take(&mut i.lose_next_answer) {
            return Err(SharedLogError::Unavailable(
                "injected after applying".into(),
            ));
        }
        Ok(CasResult::Appended(rev))
    }

    fn bootstrap(&self, meta: &[u8], schema: &[u8], record: &[u8]) -> Result<bool, SharedLogError> {
        let mut i = self.inner.lock().expect("lock");
        if i.kv.contains_key(&Key::Meta.rel()) {
            return Ok(false);
        }
        Self::set(&mut i, &Key::Meta, Some(meta.to_vec()));
        Self::set(&mut i, &Key::Schema, Some(schema.to_vec()));
        Self::set(
            &mut i,
            &Key::Log(ADMIN_REGION.into()),
            Some(record.to_vec()),
        );
        Ok(true)
    }

    fn put(&self, key: &Key, value: &[u8]) -> Result<i64, SharedLogError> {
        let mut i = self.inner.lock().expect("lock");
        Self::set(&mut i, key, Some(value.to_vec()));
        Ok(i.revision)
    }

    fn watch(&self, after: i64) -> Result<LogStream, SharedLogError> {
        let i = self.inner.lock().expect("lock");
        if after + 1 < i.compacted {
            return Err(SharedLogError::NeedsSnapshot {
                compacted: i.compacted,
                needed: after + 1,
            });
        }
        let events: Vec<_> = i
            .history
            .iter()
            .filter(|e| matches!(e, LogEvent::Change { revision, .. } if *revision > after))
            .cloned()
            .map(Ok)
            .collect();
        Ok(Box::new(events.into_iter()))
    }

    fn compact(&self, revision: i64) -> Result<(), SharedLogError> {
        let mut i = self.inner.lock().expect("lock");
        i.compacted = i.compacted.max(revision);
        Ok(())
    }

    fn keep_alive(&self, region: &str, _ttl: Duration) -> Result<(), SharedLogError> {
        self.put(&Key::Alive(region.to_owned()), b"").map(|_| ())
    }

    fn health(&self) -> Result<(i64, Vec<String>), SharedLogError> {
        Ok((0, Vec::new()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stop() -> Arc<AtomicBool> {
        Arc::new(AtomicBool::new(false))
    }

    /// Every limit that decides execution is compared between regions: one differing
    /// quota, memory or rule budget refuses the join.
    #[test]
    fn a_region_with_other_limits_refuses_to_join() {
        use warren_core::eval::Limits;
        let base = Limits::default();
        let ours = Meta::ours(&base);
        assert!(Meta::decode(&ours.encode()).unwrap().check(&ours).is_ok());
        let mut others = Vec::new();
        let mut l = base.clone();
        l.quotas.documents = 10;
        others.push(l);
        let mut l = base.clone();
        l.quotas.bytes = 1 << 20;
        others.push(l);
        let mut l = base.clone();
        l.max_memory_bytes /= 2;
        others.push(l);
        let mut l = base.clone();
        l.rule_fuel += 1;
        others.push(l);
        let mut l = base.clone();
        l.max_hidden_work += 1;
        others.push(l);
        for l in others {
            let theirs = Meta::ours(&l);
            let e = theirs.check(&ours).unwrap_err();
            assert_eq!(e.code(), "SETTINGS_MISMATCH", "{l:?}");
        }
    }

    #[test]
    fn batch_records_round_trip_and_refuse_damage() {
        let r = BatchRecord {
            region: "eu".into(),
            incarnation: [7; 16],
            batch_seq: 300,
            prev_revision: 1234,
            entries: vec![vec![1, 2, 3], vec![9]],
        };
        let b = r.encode();
        assert_eq!(BatchRecord::decode(&b).unwrap(), r);
        for cut in 0..b.len() {
            assert!(BatchRecord::decode(&b[..cut]).is_err(), "cut at {cut}");
        }
        let mut longer = b.clone();
        longer.push(0);
        assert!(BatchRecord::decode(&longer).is_err());
        let mut other = b.clone();
        other[0] = 2;
        assert!(BatchRecord::decode(&other)
            .unwrap_err()
            .contains("format 2"));
    }

    /// The example of `docs/REGIONS.md` ("The batch record").
    #[test]
    fn the_batch_bytes_are_as_documented() {
        use warren_core::exec::{Commit, Op};
        use warren_core::value::obj;
        let entry = warren_core::protocol::encode_log_entry(&Commit {
            client_id: "c1".into(),
            client_seq: 3,
            schema_version: "3f9a".into(),
            timestamp: 1_700_000_000_123,
            auth: obj([("sub", "ann".into())]),
            op: Op::Call {
                function: "toggle".into(),
                args: obj([("id", "a".into())]),
            },
        });
        let mut incarnation = [0u8; 16];
        for (i, b) in incarnation.iter_mut().enumerate() {
            *b = i as u8;
        }
        let r = BatchRecord {
            region: "eu".into(),
            incarnation,
            batch_seq: 3,
            prev_revision: 1234,
            entries: vec![entry],
        };
        assert_eq!(
            warren_core::hex(&r.encode()),
            "01026575000102030405060708090a0b0c0d0e0f03d209012b\
             01026331030433663961fbd095ffbc310801037375620503616e6e0006746f67676c650801026964050161"
        );
    }

    #[test]
    fn a_retry_after_a_lost_answer_appends_once() {
        let log = Arc::new(MemorySharedLog::new());
        let mut a = Appender::open(log.clone(), "eu", stop()).unwrap();
        a.append(vec![b"one".to_vec()]).unwrap();
        log.lose_next_answer();
        let rev = a.append(vec![b"two".to_vec()]).unwrap();
        assert_eq!(a.found_own, 1, "the retry found its own batch");
        log.fail_next();
        a.append(vec![b"three".to_vec()]).unwrap();
        let mut chain = Chain::default();
        let mut seen = Vec::new();
        for e in log.history() {
            if let LogEvent::Change {
                revision,
                key: Key::Log(_),
                value: Some(v),
            } = e
            {
                let rec = BatchRecord::decode(&v).unwrap();
                chain.check(revision, &rec).unwrap();
                seen.push(rec.entries[0].clone());
            }
        }
        assert_eq!(seen, [b"one".to_vec(), b"two".to_vec(), b"three".to_vec()]);
        assert_eq!(chain.last["eu"].0, rev + 1);
    }

    #[test]
    fn a_second_process_of_a_region_fences_the_first() {
        let log = Arc::new(MemorySharedLog::new());
        let mut old = Appender::open(log.clone(), "eu", stop()).unwrap();
        old.append(vec![b"a".to_vec()]).unwrap();
        let mut new = Appender::open(log.clone(), "eu", stop()).unwrap();
        new.append(vec![]).unwrap(); // the claim at start
        let e = old.append(vec![b"b".to_vec()]).unwrap_err();
        assert_eq!(e.code(), "LOG_FENCED", "{e}");
        new.append(vec![b"c".to_vec()]).unwrap();
        log.put(&Key::Fence("eu".into()), b"diverged").unwrap();
        assert_eq!(
            new.append(vec![b"d".to_vec()]).unwrap_err().code(),
            "LOG_FENCED"
        );
        assert_eq!(
            Appender::open(log, "eu", stop()).err().unwrap().code(),
            "LOG_FENCED"
        );
    }

    #[test]
    fn the_chain_check_stops_on_a_repeated_or_skipped_batch() {
        let rec = |seq: u64, prev: i64| BatchRecord {
            region: "eu".into(),
            incarnation: [1; 16],
            batch_seq: seq,
            prev_revision: prev,
            entries: vec![],
        };
        let mut c = Chain::default();
        c.check(5, &rec(1, 0)).unwrap();
        c.check(9, &rec(2, 5)).unwrap();
        let mut twice = c.clone();
        assert_eq!(twice.check(9, &rec(2, 5)).unwrap_err().code(), "LOG_GAP");
        let mut skipped = c.clone();
        assert_eq!(
            skipped.check(20, &rec(4, 15)).unwrap_err().code(),
            "LOG_GAP"
        );
        c.check(12, &rec(3, 9)).unwrap();
        assert_eq!(Chain::decode(&c.encode()).unwrap(), c);
    }
}
