//! A small etcd v3 client over etcd's JSON gateway (`/v3/*`, grpc-gateway), with the
//! blocking `ureq` the server already depends on: no gRPC stack, no `protoc`. The
//! choice and its costs are in `docs/DECISIONS.md` ("etcd through its JSON gateway").
//!
//! It speaks the proto3 JSON mapping etcd's gateway uses: keys and values are base64,
//! 64-bit integers are strings, fields with default values are left out (a `PUT`
//! event has no `type`, a failed txn no `succeeded`), and a watch is a stream of
//! newline-delimited `{"result": …}` objects over one chunked HTTP/1.1 response.
//!
//! Every call goes to one endpoint. [`EtcdClient::call_any`] moves on to the next
//! endpoint when one does not answer; appends must not (a retried append needs its
//! own rule: `shared.rs`), so they use [`EtcdClient::txn_once`] and decide themselves.
//! Errors say whether the outcome is known ([`EtcdError::is_unknown_outcome`]).

use std::io::BufRead;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use base64::prelude::*;
use serde_json::{json, Value as Json};

/// How the client talks to the cluster.
#[derive(Clone, Debug)]
pub struct EtcdOptions {
    /// The budget of one request (a txn, a range...). A request that takes longer has
    /// an unknown outcome. etcd answers a request it cannot commit (no leader) after
    /// about 7 s; this is shorter, so a stalled member is left sooner.
    pub request_timeout: Duration,
    /// How long a watch may stay silent before it counts as stalled (the cluster
    /// sends progress notifications on idle watches; see `docs/REGIONS.md`).
    pub watch_stall: Duration,
    /// The largest response body read (a range of big values, a long watch message).
    pub max_response_bytes: u64,
    /// TLS for `https://` endpoints: the CA that signed the members' certificates
    /// (PEM; the public web roots when absent) and a client certificate chain and key
    /// (PEM) for members that require one (`--client-cert-auth`).
    pub tls: EtcdTls,
}

/// Files of PEM certificates and keys for etcd over TLS.
#[derive(Clone, Debug, Default)]
pub struct EtcdTls {
    pub ca: Option<std::path::PathBuf>,
    pub cert: Option<std::path::PathBuf>,
    pub key: Option<std::path::PathBuf>,
}

impl EtcdTls {
    /// The TLS configuration these files describe.
    fn config(&self) -> Result<ureq::tls::TlsConfig, String> {
        use ureq::tls::{parse_pem, Certificate, ClientCert, PemItem, PrivateKey, RootCerts};
        let read = |p: &std::path::Path| {
            std::fs::read(p).map_err(|e| format!("cannot read {}: {e}", p.display()))
        };
        let certs = |p: &std::path::Path| -> Result<Vec<Certificate<'static>>, String> {
            let pem = read(p)?;
            let mut out = Vec::new();
            for item in parse_pem(&pem) {
                if let PemItem::Certificate(c) =
                    item.map_err(|e| format!("{}: {e}", p.display()))?
                {
                    out.push(c);
                }
            }
            if out.is_empty() {
                return Err(format!("{} holds no PEM certificate", p.display()));
            }
            Ok(out)
        };
        let mut b = ureq::tls::TlsConfig::builder();
        if let Some(ca) = &self.ca {
            b = b.root_certs(RootCerts::new_with_certs(&certs(ca)?));
        }
        match (&self.cert, &self.key) {
            (Some(c), Some(k)) => {
                let key =
                    PrivateKey::from_pem(&read(k)?).map_err(|e| format!("{}: {e}", k.display()))?;
                b = b.client_cert(Some(ClientCert::new_with_certs(&certs(c)?, key)));
            }
            (None, None) => {}
            _ => {
                return Err("a client certificate needs its key, and a key its certificate".into())
            }
        }
        Ok(b.build())
    }
}

impl Default for EtcdOptions {
    fn default() -> Self {
        EtcdOptions {
            request_timeout: Duration::from_secs(3),
            watch_stall: Duration::from_secs(5),
            max_response_bytes: 64 << 20,
            tls: EtcdTls::default(),
        }
    }
}

/// An etcd failure.
#[derive(Debug, Clone)]
pub enum EtcdError {
    /// The endpoint did not answer, timed out, has no leader, or answered 5xx: the
    /// request may or may not have taken effect.
    Unavailable { endpoint: String, detail: String },
    /// The revision asked for was compacted away (`required revision has been
    /// compacted`, or a watch canceled with `compact_revision`).
    Compacted { revision: i64 },
    /// etcd refused the request (4xx other than the above: too large, no space...):
    /// it did not take effect.
    Refused { code: i64, message: String },
    /// An answer that does not follow the gateway's JSON mapping.
    BadAnswer(String),
}

impl EtcdError {
    /// Whether the request may have taken effect without its answer arriving.
    pub fn is_unknown_outcome(&self) -> bool {
        matches!(self, EtcdError::Unavailable { .. })
    }
}

impl std::fmt::Display for EtcdError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            EtcdError::Unavailable { endpoint, detail } => {
                write!(f, "etcd at {endpoint} is unavailable: {detail}")
            }
            EtcdError::Compacted { revision } => {
                write!(f, "etcd compacted its history up to revision {revision}")
            }
            EtcdError::Refused { code, message } => {
                write!(f, "etcd refused the request: {message} (code {code})")
            }
            EtcdError::BadAnswer(m) => write!(f, "etcd's answer does not decode: {m}"),
        }
    }
}

impl std::error::Error for EtcdError {}

/// A key-value pair as etcd holds it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Kv {
    pub key: Vec<u8>,
    pub value: Vec<u8>,
    pub create_revision: i64,
    pub mod_revision: i64,
    pub version: i64,
    pub lease: i64,
}

/// What a range returned.
#[derive(Clone, Debug, Default)]
pub struct RangeResult {
    /// The store's revision when the range was served.
    pub revision: i64,
    pub kvs: Vec<Kv>,
}

/// What a compare of a txn looks at.
#[derive(Clone, Debug)]
pub enum Compare {
    /// `mod_revision(key) == n` (0: the key does not exist).
    ModRevision(Vec<u8>, i64),
    /// `create_revision(key) == n` (0: the key does not exist).
    CreateRevision(Vec<u8>, i64),
    /// `version(key) == n` (0: the key does not exist).
    Version(Vec<u8>, i64),
}

/// One operation of a txn branch.
#[derive(Clone, Debug)]
pub enum Op {
    Put {
        key: Vec<u8>,
        value: Vec<u8>,
        lease: i64,
    },
    /// A range of one key, or of `[key, range_end)`.
    Range {
        key: Vec<u8>,
        range_end: Option<Vec<u8>>,
    },
    Delete {
        key: Vec<u8>,
    },
}

/// A transaction: if every compare holds, `success` runs, else `failure`.
#[derive(Clone, Debug, Default)]
pub struct Txn {
    pub compare: Vec<Compare>,
    pub success: Vec<Op>,
    pub failure: Vec<Op>,
}

/// What a txn did.
#[derive(Clone, Debug, Default)]
pub struct TxnResult {
    pub succeeded: bool,
    /// The store's revision after the txn (the revision of its puts when it wrote).
    pub revision: i64,
    /// The key-values of each range operation of the branch that ran, in order.
    pub ranges: Vec<Vec<Kv>>,
}

/// A member's status.
#[derive(Clone, Debug, Default)]
pub struct Status {
    pub endpoint: String,
    pub member_id: u64,
    pub leader: u64,
    pub revision: i64,
    pub raft_term: u64,
    pub db_size: i64,
    pub db_size_in_use: i64,
    pub version: String,
}

impl Status {
    pub fn is_leader(&self) -> bool {
        self.member_id != 0 && self.member_id == self.leader
    }
}

/// An event of a watch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    Put(Kv),
    Delete(Kv),
}

impl Event {
    pub fn kv(&self) -> &Kv {
        match self {
            Event::Put(kv) | Event::Delete(kv) => kv,
        }
    }
}

/// One message of a watch stream.
#[derive(Clone, Debug)]
pub enum WatchMessage {
    /// Events, in revision order; `revision` is the store's revision when sent.
    Events { revision: i64, events: Vec<Event> },
    /// Nothing happened under the watched keys up to `revision` (a progress
    /// notification, or the creation of the watch).
    Progress { revision: i64 },
}

/// The first key after every key starting with `prefix` (etcd's `range_end` for a
/// prefix).
pub fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0] // every key
}

fn b64(b: &[u8]) -> String {
    BASE64_STANDARD.encode(b)
}

fn bad(what: &str, v: &Json) -> EtcdError {
    let mut s = v.to_string();
    s.truncate(300);
    EtcdError::BadAnswer(format!("{what} in {s}"))
}

/// An int64 of the JSON mapping: a string (or, leniently, a number); absent is 0.
fn int(v: &Json) -> Result<i64, EtcdError> {
    match v {
        Json::Null => Ok(0),
        Json::String(s) => s.parse().map_err(|_| bad("an integer", v)),
        Json::Number(n) => n.as_i64().ok_or_else(|| bad("an integer", v)),
        _ => Err(bad("an integer", v)),
    }
}

fn uint(v: &Json) -> Result<u64, EtcdError> {
    match v {
        Json::Null => Ok(0),
        Json::String(s) => s.parse().map_err(|_| bad("an integer", v)),
        Json::Number(n) => n.as_u64().ok_or_else(|| bad("an integer", v)),
        _ => Err(bad("an integer", v)),
    }
}

fn bytes(v: &Json) -> Result<Vec<u8>, EtcdError> {
    match v {
        Json::Null => Ok(Vec::new()),
        Json::String(s) => BASE64_STANDARD
            .decode(s)
            .map_err(|_| bad("base64 bytes", v)),
        _ => Err(bad("base64 bytes", v)),
    }
}

fn kv(v: &Json) -> Result<Kv, EtcdError> {
    Ok(Kv {
        key: bytes(&v["key"])?,
        value: bytes(&v["value"])?,
        create_revision: int(&v["create_revision"])?,
        mod_revision: int(&v["mod_revision"])?,
        version: int(&v["version"])?,
        lease: int(&v["lease"])?,
    })
}

fn kvs(v: &Json) -> Result<Vec<Kv>, EtcdError> {
    match v {
        Json::Null => Ok(Vec::new()),
        Json::Array(a) => a.iter().map(kv).collect(),
        _ => Err(bad("a list of key-values", v)),
    }
}

fn header_revision(v: &Json) -> Result<i64, EtcdError> {
    int(&v["header"]["revision"])
}

fn op_json(op: &Op) -> Json {
    match op {
        Op::Put { key, value, lease } => {
            let mut p = json!({ "key": b64(key), "value": b64(value) });
            if *lease != 0 {
                p["lease"] = lease.to_string().into();
            }
            json!({ "request_put": p })
        }
        Op::Range { key, range_end } => {
            let mut r = json!({ "key": b64(key) });
            if let Some(end) = range_end {
                r["range_end"] = b64(end).into();
            }
            json!({ "request_range": r })
        }
        Op::Delete { key } => json!({ "request_delete_range": { "key": b64(key) } }),
    }
}

fn compare_json(c: &Compare) -> Json {
    match c {
        Compare::ModRevision(k, n) => json!({
            "key": b64(k), "target": "MOD", "result": "EQUAL", "mod_revision": n.to_string()
        }),
        Compare::CreateRevision(k, n) => json!({
            "key": b64(k), "target": "CREATE", "result": "EQUAL", "create_revision": n.to_string()
        }),
        Compare::Version(k, n) => json!({
            "key": b64(k), "target": "VERSION", "result": "EQUAL", "version": n.to_string()
        }),
    }
}

/// Turns a gateway error body into an error. `status` is the HTTP status.
fn error_of(endpoint: &str, status: u16, body: &Json) -> EtcdError {
    let message = body["message"]
        .as_str()
        .or_else(|| body["error"].as_str())
        .unwrap_or("")
        .to_owned();
    let code = body["code"].as_i64().unwrap_or(0);
    if message.contains("required revision has been compacted") {
        return EtcdError::Compacted { revision: 0 };
    }
    // gRPC codes: 4 deadline exceeded, 14 unavailable, 13 internal, 10 aborted: the
    // outcome is unknown. Everything else is a definite refusal.
    if status >= 500 || status == 0 || matches!(code, 4 | 10 | 13 | 14) {
        return EtcdError::Unavailable {
            endpoint: endpoint.to_owned(),
            detail: format!("{status} {message}"),
        };
    }
    EtcdError::Refused { code, message }
}

/// A client for one etcd cluster. Cheap to share between threads (`&self` methods).
pub struct EtcdClient {
    endpoints: Vec<String>,
    /// The endpoint tried first (the last one that answered).
    preferred: AtomicUsize,
    agent: ureq::Agent,
    watch_agent: ureq::Agent,
    opts: EtcdOptions,
}

impl EtcdClient {
    /// A client for the cluster at `endpoints` (`http://host:port` or `host:port`).
    pub fn new(endpoints: &[String], opts: EtcdOptions) -> Result<EtcdClient, String> {
        let endpoints: Vec<String> = endpoints
            .iter()
            .flat_map(|e| e.split(','))
            .map(str::trim)
            .filter(|e| !e.is_empty())
            .map(|e| {
                let e = e.trim_end_matches('/');
                if e.starts_with("http://") || e.starts_with("https://") {
                    e.to_owned()
                } else {
                    format!("http://{e}")
                }
            })
            .collect();
        if endpoints.is_empty() {
            return Err("no etcd endpoint given".into());
        }
        let tls = opts.tls.config()?;
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .tls_config(tls.clone())
            .http_status_as_error(false)
            .timeout_global(Some(opts.request_timeout))
            .timeout_connect(Some(opts.request_timeout.min(Duration::from_secs(1))))
            .max_idle_connections_per_host(4)
            .no_delay(true)
            .build()
            .into();
        let watch_agent: ureq::Agent = ureq::Agent::config_builder()
            .tls_config(tls)
            .http_status_as_error(false)
            .timeout_connect(Some(opts.request_timeout.min(Duration::from_secs(1))))
            .timeout_recv_response(Some(opts.request_timeout))
            .timeout_per_read(Some(opts.watch_stall))
            .max_idle_connections(0)
            .no_delay(true)
            .build()
            .into();
        Ok(EtcdClient {
            endpoints,
            preferred: AtomicUsize::new(0),
            agent,
            watch_agent,
            opts,
        })
    }

    /// The endpoints, as given.
    pub fn endpoints(&self) -> &[String] {
        &self.endpoints
    }

    /// The endpoint tried first.
    pub fn current(&self) -> usize {
        self.preferred.load(Ordering::Relaxed) % self.endpoints.len()
    }

    /// Moves on to the next endpoint (after one failed).
    pub fn rotate(&self) {
        let n = self.endpoints.len();
        let _ = self
            .preferred
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |p| Some((p + 1) % n));
    }

    /// One POST of `body` to `path` on endpoint `i`.
    pub fn call(&self, i: usize, path: &str, body: &Json) -> Result<Json, EtcdError> {
        let endpoint = &self.endpoints[i % self.endpoints.len()];
        let unavailable = |detail: String| EtcdError::Unavailable {
            endpoint: endpoint.clone(),
            detail,
        };
        let payload = serde_json::to_vec(body).map_err(|e| EtcdError::BadAnswer(e.to_string()))?;
        let mut resp = self
            .agent
            .post(format!("{endpoint}{path}"))
            .header("content-type", "application/json")
            .send(&payload[..])
            .map_err(|e| unavailable(e.to_string()))?;
        let status = resp.status().as_u16();
        let data = resp
            .body_mut()
            .with_config()
            .limit(self.opts.max_response_bytes)
            .read_to_vec()
            .map_err(|e| unavailable(format!("reading the answer: {e}")))?;
        let v: Json = serde_json::from_slice(&data).map_err(|_| {
            if status >= 500 {
                unavailable(format!("{status} {}", String::from_utf8_lossy(&data)))
            } else {
                EtcdError::BadAnswer(format!(
                    "{status}: {}",
                    String::from_utf8_lossy(&data[..data.len().min(300)])
                ))
            }
        })?;
        if status != 200 {
            return Err(error_of(endpoint, status, &v));
        }
        Ok(v)
    }

    /// [`EtcdClient::call`] on the preferred endpoint, then on each other one while they
    /// are unavailable. Only for requests that may safely run twice (reads, idempotent
    /// writes).
    pub fn call_any(&self, path: &str, body: &Json) -> Result<Json, EtcdError> {
        let n = self.endpoints.len();
        let mut last = None;
        for _ in 0..n {
            let i = self.current();
            match self.call(i, path, body) {
                Err(e) if e.is_unknown_outcome() => {
                    last = Some(e);
                    self.rotate();
                }
                r => return r,
            }
        }
        Err(last.expect("at least one endpoint"))
    }

    /// A linearizable (or, with `serializable`, a possibly stale local) range of one
    /// key or of `[key, range_end)`, at `revision` (0: the latest).
    pub fn range(
        &self,
        key: &[u8],
        range_end: Option<&[u8]>,
        revision: i64,
        keys_only: bool,
        serializable: bool,
    ) -> Result<RangeResult, EtcdError> {
        let mut body = json!({ "key": b64(key) });
        if let Some(end) = range_end {
            body["range_end"] = b64(end).into();
        }
        if revision > 0 {
            body["revision"] = revision.to_string().into();
        }
        if keys_only {
            body["keys_only"] = true.into();
        }
        if serializable {
            body["serializable"] = true.into();
        }
        let v = self.call_any("/v3/kv/range", &body)?;
        Ok(RangeResult {
            revision: header_revision(&v)?,
            kvs: kvs(&v["kvs"])?,
        })
    }

    /// The value of one key (linearizable), if it exists.
    pub fn get(&self, key: &[u8]) -> Result<Option<Kv>, EtcdError> {
        Ok(self
            .range(key, None, 0, false, false)?
            .kvs
            .into_iter()
            .next())
    }

    fn txn_body(txn: &Txn) -> Json {
        json!({
            "compare": txn.compare.iter().map(compare_json).collect::<Vec<_>>(),
            "success": txn.success.iter().map(op_json).collect::<Vec<_>>(),
            "failure": txn.failure.iter().map(op_json).collect::<Vec<_>>(),
        })
    }

    fn txn_result(v: &Json) -> Result<TxnResult, EtcdError> {
        let mut ranges = Vec::new();
        if let Some(rs) = v["responses"].as_array() {
            for r in rs {
                if !r["response_range"].is_null() {
                    ranges.push(kvs(&r["response_range"]["kvs"])?);
                }
            }
        }
        Ok(TxnResult {
            succeeded: v["succeeded"].as_bool().unwrap_or(false),
            revision: header_revision(v)?,
            ranges,
        })
    }

    /// A txn on endpoint `i`, once. An unknown outcome is the caller's to resolve.
    pub fn txn_once(&self, i: usize, txn: &Txn) -> Result<TxnResult, EtcdError> {
        let v = self.call(i, "/v3/kv/txn", &Self::txn_body(txn))?;
        Self::txn_result(&v)
    }

    /// A txn, moving to the next endpoint while one is unavailable. Only for txns that
    /// may safely run twice (their compares make a second run fail harmlessly).
    pub fn txn(&self, txn: &Txn) -> Result<TxnResult, EtcdError> {
        let v = self.call_any("/v3/kv/txn", &Self::txn_body(txn))?;
        Self::txn_result(&v)
    }

    /// Puts `value` at `key` (with a lease, or 0) and returns the revision.
    pub fn put(&self, key: &[u8], value: &[u8], lease: i64) -> Result<i64, EtcdError> {
        let mut body = json!({ "key": b64(key), "value": b64(value) });
        if lease != 0 {
            body["lease"] = lease.to_string().into();
        }
        header_revision(&self.call_any("/v3/kv/put", &body)?)
    }

    /// Deletes one key; returns the revision.
    pub fn delete(&self, key: &[u8]) -> Result<i64, EtcdError> {
        header_revision(&self.call_any("/v3/kv/deleterange", &json!({ "key": b64(key) }))?)
    }

    /// Compacts the history before `revision` (a compaction at or behind the current
    /// one is `Compacted`: harmless).
    pub fn compact(&self, revision: i64) -> Result<(), EtcdError> {
        self.call_any(
            "/v3/kv/compaction",
            &json!({ "revision": revision.to_string() }),
        )
        .map(|_| ())
    }

    /// The status of endpoint `i`.
    pub fn status(&self, i: usize) -> Result<Status, EtcdError> {
        let v = self.call(i, "/v3/maintenance/status", &json!({}))?;
        Ok(Status {
            endpoint: self.endpoints[i % self.endpoints.len()].clone(),
            member_id: uint(&v["header"]["member_id"])?,
            leader: uint(&v["leader"])?,
            revision: header_revision(&v)?,
            raft_term: uint(&v["raftTerm"]).or_else(|_| uint(&v["raft_term"]))?,
            db_size: int(&v["dbSize"]).or_else(|_| int(&v["db_size"]))?,
            db_size_in_use: int(&v["dbSizeInUse"]).or_else(|_| int(&v["db_size_in_use"]))?,
            version: v["version"].as_str().unwrap_or("").to_owned(),
        })
    }

    /// The cluster's active alarms (`NOSPACE`, `CORRUPT`).
    pub fn alarms(&self) -> Result<Vec<String>, EtcdError> {
        let v = self.call_any("/v3/maintenance/alarm", &json!({ "action": "GET" }))?;
        Ok(v["alarms"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|x| x["alarm"].as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default())
    }

    /// Grants a lease of `ttl` seconds; returns its id.
    pub fn lease_grant(&self, ttl: i64) -> Result<i64, EtcdError> {
        let v = self.call_any("/v3/lease/grant", &json!({ "TTL": ttl.to_string() }))?;
        int(&v["ID"])
    }

    /// Renews a lease; returns its remaining TTL (0 or less: the lease is gone).
    pub fn lease_keepalive(&self, id: i64) -> Result<i64, EtcdError> {
        let v = self.call_any("/v3/lease/keepalive", &json!({ "ID": id.to_string() }))?;
        int(&v["result"]["TTL"])
    }

    /// Opens a watch of every key under `prefix` from `start_revision`, on endpoint
    /// `i`, with progress notifications and `hasleader` (a member cut off from the
    /// quorum ends the stream instead of going silent).
    pub fn watch(&self, i: usize, prefix: &[u8], start_revision: i64) -> Result<Watch, EtcdError> {
        let endpoint = self.endpoints[i % self.endpoints.len()].clone();
        let unavailable = |detail: String| EtcdError::Unavailable {
            endpoint: endpoint.clone(),
            detail,
        };
        let body = json!({ "create_request": {
            "key": b64(prefix),
            "range_end": b64(&prefix_end(prefix)),
            "start_revision": start_revision.to_string(),
            "progress_notify": true,
        }});
        let payload = serde_json::to_vec(&body).map_err(|e| EtcdError::BadAnswer(e.to_string()))?;
        let resp = self
            .watch_agent
            .post(format!("{endpoint}/v3/watch"))
            .header("content-type", "application/json")
            .header("grpc-metadata-hasleader", "true")
            .send(&payload[..])
            .map_err(|e| unavailable(e.to_string()))?;
        let status = resp.status().as_u16();
        let reader = std::io::BufReader::new(resp.into_body().into_reader());
        let mut w = Watch {
            endpoint,
            reader,
            max_line: self.opts.max_response_bytes,
        };
        if status != 200 {
            let mut line = String::new();
            let _ = w.reader.read_line(&mut line);
            let v: Json = serde_json::from_str(&line).unwrap_or(Json::Null);
            return Err(error_of(&w.endpoint, status, &v));
        }
        Ok(w)
    }
}

/// An open watch: [`Watch::next`] blocks for the next message.
pub struct Watch {
    endpoint: String,
    reader: std::io::BufReader<ureq::BodyReader<'static>>,
    max_line: u64,
}

impl Watch {
    /// The endpoint it reads from.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// The next message. `Unavailable` when the stream ends, stalls (no byte for the
    /// stall timeout) or the member lost its leader; `Compacted` when the watch's
    /// start was compacted away.
    pub fn recv(&mut self) -> Result<WatchMessage, EtcdError> {
        loop {
            if let Some(m) = self.next_message()? {
                return Ok(m);
            }
        }
    }

    /// One line of the stream: `None` for the watch's creation notice (its revision is
    /// the store's, not how far the watch has delivered: events before it may follow).
    fn next_message(&mut self) -> Result<Option<WatchMessage>, EtcdError> {
        let unavailable = |detail: String| EtcdError::Unavailable {
            endpoint: self.endpoint.clone(),
            detail,
        };
        let mut line = Vec::new();
        let n = (&mut self.reader)
            .take(self.max_line)
            .read_until(b'\n', &mut line)
            .map_err(|e| unavailable(format!("watch stream: {e}")))?;
        if n == 0 {
            return Err(unavailable("the watch stream ended".into()));
        }
        if !line.ends_with(b"\n") && n as u64 >= self.max_line {
            return Err(EtcdError::BadAnswer("a watch message is too large".into()));
        }
        let v: Json = serde_json::from_slice(&line)
            .map_err(|e| EtcdError::BadAnswer(format!("a watch message: {e}")))?;
        if !v["error"].is_null() {
            let e = &v["error"];
            let code = e["grpc_code"].as_i64().unwrap_or(0);
            let http = e["http_code"].as_u64().unwrap_or(503) as u16;
            let body = json!({ "code": code, "message": e["message"] });
            return Err(error_of(&self.endpoint, http, &body));
        }
        let r = &v["result"];
        let revision = header_revision(r)?;
        if r["created"].as_bool().unwrap_or(false) && r["events"].is_null() {
            return Ok(None);
        }
        if r["canceled"].as_bool().unwrap_or(false) {
            let compact = int(&r["compact_revision"])?;
            if compact > 0 {
                return Err(EtcdError::Compacted { revision: compact });
            }
            return Err(unavailable(format!(
                "the watch was canceled: {}",
                r["cancel_reason"].as_str().unwrap_or("no reason given")
            )));
        }
        let events = match &r["events"] {
            Json::Null => Vec::new(),
            Json::Array(a) => a
                .iter()
                .map(|e| {
                    let kv = kv(&e["kv"])?;
                    Ok(match e["type"].as_str() {
                        None | Some("PUT") => Event::Put(kv),
                        Some("DELETE") => Event::Delete(kv),
                        Some(_) => return Err(bad("an event type", e)),
                    })
                })
                .collect::<Result<Vec<_>, EtcdError>>()?,
            other => return Err(bad("a list of events", other)),
        };
        if events.is_empty() {
            Ok(Some(WatchMessage::Progress { revision }))
        } else {
            Ok(Some(WatchMessage::Events { revision, events }))
        }
    }
}

use std::io::Read as _;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_ends() {
        assert_eq!(prefix_end(b"/warren/v1/"), b"/warren/v10".to_vec());
        assert_eq!(prefix_end(b"a\xff"), b"b".to_vec());
        assert_eq!(prefix_end(b"\xff\xff"), vec![0]);
    }

    #[test]
    fn the_json_mapping_is_followed() {
        // As etcd 3.4's gateway answers: int64 as strings, defaults left out.
        let v: Json = serde_json::from_str(
            r#"{"header":{"revision":"12"},"kvs":[{"key":"YQ==","create_revision":"3","mod_revision":"12","version":"2","value":"Yg=="}],"count":"1"}"#,
        )
        .unwrap();
        assert_eq!(header_revision(&v).unwrap(), 12);
        let k = kvs(&v["kvs"]).unwrap();
        assert_eq!(k[0].key, b"a");
        assert_eq!(k[0].value, b"b");
        assert_eq!(k[0].mod_revision, 12);
        let failed: Json = serde_json::from_str(
            r#"{"header":{"revision":"13"},"responses":[{"response_range":{"header":{"revision":"13"},"kvs":[{"key":"YQ==","mod_revision":"13"}],"count":"1"}}]}"#,
        )
        .unwrap();
        let t = EtcdClient::txn_result(&failed).unwrap();
        assert!(!t.succeeded);
        assert_eq!(t.ranges[0][0].mod_revision, 13);
        let e = error_of(
            "x",
            400,
            &serde_json::from_str(
                r#"{"error":"etcdserver: mvcc: required revision has been compacted","code":11}"#,
            )
            .unwrap(),
        );
        assert!(matches!(e, EtcdError::Compacted { .. }));
        let e = error_of(
            "x",
            503,
            &serde_json::from_str(r#"{"error":"etcdserver: request timed out","code":14}"#)
                .unwrap(),
        );
        assert!(e.is_unknown_outcome());
        let e = error_of(
            "x",
            400,
            &serde_json::from_str(r#"{"error":"etcdserver: request is too large","code":3}"#)
                .unwrap(),
        );
        assert!(matches!(e, EtcdError::Refused { code: 3, .. }));
    }
}
