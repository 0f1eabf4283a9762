//! Assembles a running server: log, region store, region thread, sequencer thread and
//! gateway, all data under one directory.
//!
//! ```text
//! data-dir/
//!   log/          the global log (segments, docs/LOG.md); not in a region of many
//!   state.redb    the region's state: documents, indexes, cursors, digest, position
//!   dev-secret    the development HS256 secret, made on first start if none is given
//! ```
//!
//! **The embedded default** (no [`Config::shared`]). Start order: open the log and the
//! store (on a blocking thread), start the region, start the sequencer thread (it first
//! replays the log after the store's position, records a changed schema file as a
//! schema entry of the log, then takes new commits), then serve; `/readyz` answers
//! ready once the replay is applied, and reads wait for it ([`gateway::Ready`]). Stop
//! order: stop accepting, tell every connection, let the sequencer finish its queue
//! (its last batch is synced and applied), stop the region (the store is synced), join
//! both threads.
//!
//! **A region of a deployment of many** ([`Config::shared`], `docs/REGIONS.md`): the
//! log is shared (etcd). Start: check the deployment's engine and settings (creating
//! them with the initial schema on a new cluster), refuse a fenced region, open the
//! store (or boot it from another region's snapshot when it is new or behind the
//! log's compaction), start the region, the follower (the log's consumer), the
//! sequencer (which first claims the region: a second process of it is fenced), the
//! housekeeping thread (publishes the digest, keeps the region alive, watches etcd's
//! health and quota, compacts), then serve; ready once caught up with the log's head.

use crate::web::WebOptions;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use warren_core::eval::Limits;
use warren_core::protocol::{codes, LogEntry, SchemaChange};
use warren_core::Schema;

use crate::auth::{AuthConfig, Verifier};
use crate::barrier::Barrier;
use crate::conns::Conns;
use crate::gateway::{self, Admin, AppState, GatewayLimits, Ready};
use crate::limits::{CatchUps, Identities, Slots};
use crate::log::etcd::{EtcdClient, EtcdOptions};
use crate::log::shared::{
    check_region_name, random_incarnation, Appender, BatchRecord, EtcdLog, Key, Meta, RegionState,
    SharedLog, SharedLogError, ADMIN_REGION, DEFAULT_MAX_RECORD_BYTES, DEFAULT_PREFIX,
};
use crate::log::{FileLog, FileLogOptions, Log};
use crate::metrics::Metrics;
use crate::region::{self, BatchEnd, Region, RegionError, RegionMsg, RegionTx, SharedRegion};
use crate::sequencer::{self, Backlog, SequencerOptions, BACKLOG_BYTES, BACKLOG_ENTRIES};
use crate::store::RedbStore;

/// Everything a server needs.
#[derive(Clone, Debug)]
pub struct Config {
    pub data_dir: PathBuf,
    /// The schema's source text. In a region of many, only the initial schema of a new
    /// deployment (changes go through `warren schema apply`).
    pub schema: String,
    pub auth: AuthConfig,
    pub sequencer: SequencerOptions,
    pub limits: Limits,
    pub gateway: GatewayLimits,
    /// Commit the region store durably every this many batches.
    pub store_sync_every: u32,
    /// The bearer token of `/v1/admin/...` (snapshots, state); off without one.
    pub admin_token: Option<String>,
    /// A region of a deployment of many regions on a shared log (etcd).
    pub shared: Option<SharedConfig>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            data_dir: PathBuf::from("warren-data"),
            schema: String::new(),
            auth: AuthConfig::default(),
            sequencer: SequencerOptions::default(),
            limits: Limits::default(),
            gateway: GatewayLimits::default(),
            store_sync_every: 64,
            admin_token: None,
            shared: None,
        }
    }
}

/// A region of a deployment of many regions.
#[derive(Clone, Debug)]
pub struct SharedConfig {
    /// This region's name (1 to 64 of `a-z 0-9 - _`).
    pub region: String,
    /// The etcd cluster's client URLs, nearest first.
    pub etcd: Vec<String>,
    /// The key prefix of the deployment in etcd.
    pub prefix: String,
    pub etcd_options: EtcdOptions,
    /// The largest batch record appended (what one etcd request may carry).
    pub max_record_bytes: usize,
    /// Another region's `/v1/admin/snapshot` URL, to boot from when this region's store
    /// is new or behind the log's compaction.
    pub boot_from: Option<String>,
    /// The admin token of the region booted from.
    pub boot_token: Option<String>,
    /// How long a welcome or a pull may wait for the region to catch up.
    pub barrier_timeout: Duration,
    /// After this long without an etcd quorum, the region closes its connections
    /// (`REGION_UNAVAILABLE`) so clients move to another region.
    pub unavailable_after: Duration,
    /// How often the region publishes its digest.
    pub publish_every: Duration,
    /// How often the region compacts the log (zero: never).
    pub compact_every: Duration,
    /// Revisions of history kept behind the head even when every region has them.
    pub retain_revisions: i64,
    /// Log an alert when etcd's database grows past this many bytes.
    pub quota_warn_bytes: i64,
}

impl SharedConfig {
    pub fn new(region: &str, etcd: Vec<String>) -> SharedConfig {
        SharedConfig {
            region: region.to_owned(),
            etcd,
            prefix: DEFAULT_PREFIX.to_owned(),
            etcd_options: EtcdOptions::default(),
            max_record_bytes: DEFAULT_MAX_RECORD_BYTES,
            boot_from: None,
            boot_token: None,
            barrier_timeout: Duration::from_secs(5),
            unavailable_after: Duration::from_secs(10),
            publish_every: Duration::from_secs(1),
            compact_every: Duration::from_secs(60),
            retain_revisions: 100_000,
            quota_warn_bytes: 1_600_000_000,
        }
    }
}

/// A server start failure.
#[derive(Debug)]
pub struct StartError(pub String);

impl std::fmt::Display for StartError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for StartError {}

fn start_err(what: &str, e: impl std::fmt::Display) -> StartError {
    StartError(format!("{what}: {e}"))
}

/// How long a stopping region of many waits for its sequencer to land what it had
/// accepted before it gives up on an unreachable etcd.
const STOP_GRACE: Duration = Duration::from_secs(10);

/// What a region of many runs beside the region thread.
struct SharedRunning {
    log: Arc<dyn SharedLog>,
    name: String,
    stop: Arc<AtomicBool>,
    region_tx: RegionTx,
    housekeeping: std::thread::JoinHandle<()>,
}

/// A running server.
pub struct Running {
    pub addr: SocketAddr,
    pub metrics: Arc<Metrics>,
    identities: Arc<crate::limits::Identities>,
    shutdown: watch::Sender<bool>,
    serve: tokio::task::JoinHandle<std::io::Result<()>>,
    /// Ends with the revision of the last batch it appended (0 in the embedded mode).
    sequencer: std::thread::JoinHandle<Result<i64, StartError>>,
    region: std::thread::JoinHandle<Result<(), RegionError>>,
    shared: Option<SharedRunning>,
}

impl Running {
    /// The per-identity budgets (connections, rates, cost).
    pub fn identities(&self) -> &crate::limits::Identities {
        &self.identities
    }

    /// Stops gracefully: nothing acknowledged is lost, nothing queued is dropped
    /// unanswered without the client being told.
    pub async fn stop(self) -> Result<(), StartError> {
        let _ = self.shutdown.send(true);
        let served = self.serve.await.map_err(|e| start_err("gateway", e))?;
        let seq = self.sequencer;
        let region = self.region;
        let shared = self.shared;
        let metrics = self.metrics.clone();
        tokio::task::spawn_blocking(move || {
            // A region of many gives its sequencer a while to land what it accepted;
            // past that (no etcd quorum), its retries stop: the outcome of its last
            // batch is unknown, and none of its commits was acknowledged.
            if let Some(sh) = &shared {
                let deadline = Instant::now() + STOP_GRACE;
                while !seq.is_finished() && Instant::now() < deadline {
                    std::thread::sleep(Duration::from_millis(10));
                }
                sh.stop.store(true, Ordering::Relaxed);
            }
            let s = seq
                .join()
                .map_err(|_| StartError("the sequencer panicked".into()))?;
            if let Some(sh) = &shared {
                // The region applies the sequencer's last batches when the follower
                // delivers them; wait for that (bounded), then stop.
                let last = *s.as_ref().unwrap_or(&0);
                let deadline = Instant::now() + Duration::from_secs(10);
                while metrics.region.applied_revision.load(Ordering::Relaxed) < last
                    && Instant::now() < deadline
                    && !region.is_finished()
                {
                    std::thread::sleep(Duration::from_millis(5));
                }
                sh.stop.store(true, Ordering::Relaxed);
                let _ = sh.region_tx.send(RegionMsg::Stop);
            }
            let r = region
                .join()
                .map_err(|_| StartError("the region panicked".into()))?;
            if let Some(sh) = shared {
                if let Err(RegionError::Stopped { code, message }) = &r {
                    if *code == region::stop_codes::REGION_DIVERGED {
                        // Publish this region's digest where it disagrees, so that the
                        // other side of the comparison stops too, then fence this
                        // region: it must not append or serve again until an operator
                        // looks (docs/REGIONS.md).
                        let at = *metrics.region.diverged_at.lock().expect("status lock");
                        if let Some((position, digest)) = at {
                            let state = RegionState {
                                revision: metrics.region.applied_revision.load(Ordering::Relaxed),
                                position,
                                digest,
                                durable_revision: metrics
                                    .region
                                    .durable_revision
                                    .load(Ordering::Relaxed),
                                wall_ms: now_ms(),
                            };
                            put_retrying(&*sh.log, &Key::State(sh.name.clone()), &state.encode());
                        }
                        let why = format!("{code}: {message}");
                        put_retrying(&*sh.log, &Key::Fence(sh.name.clone()), why.as_bytes());
                    }
                }
                sh.stop.store(true, Ordering::Relaxed);
                let _ = sh.housekeeping.join();
            }
            s.map(|_| ())?;
            r.map_err(|e| start_err("region", e))?;
            Ok::<_, StartError>(())
        })
        .await
        .map_err(|e| start_err("stop", e))??;
        served.map_err(|e| start_err("gateway", e))
    }

    /// Resolves when the server stops on its own (a fatal error).
    pub fn is_finished(&self) -> bool {
        self.serve.is_finished() || self.sequencer.is_finished() || self.region.is_finished()
    }
}

/// The log and the region, opened.
struct Opened {
    log: FileLog,
    region: Region,
}

/// Opens the log and the region's store (blocking).
fn open(config: &Config, schema: Arc<Schema>, metrics: Arc<Metrics>) -> Result<Opened, StartError> {
    let (log, recovery) = FileLog::open(config.data_dir.join("log"), FileLogOptions::default())
        .map_err(|e| start_err("log", e))?;
    if recovery.truncated_bytes > 0 {
        tracing::warn!(
            bytes = recovery.truncated_bytes,
            "truncated a torn tail of the log"
        );
    }
    let store = RedbStore::open(&config.data_dir.join("state.redb"), config.store_sync_every)
        .map_err(|e| start_err("region store", e))?;
    let region = Region::new(store, schema, config.limits.clone(), metrics)
        .map_err(|e| start_err("region", e))?;
    let applied = region.position();
    if applied > log.last_position() {
        return Err(StartError(format!(
            "the region store is at position {applied} but the log ends at {}: the log is not this store's",
            log.last_position()
        )));
    }
    Ok(Opened { log, region })
}

/// Starts a server on `listener`.
pub async fn start(config: Config, listener: TcpListener) -> Result<Running, StartError> {
    start_with_web(config, listener, WebOptions::default()).await
}

/// [`start`], also serving the optional web parts (static files, dev tokens).
pub async fn start_with_web(
    config: Config,
    listener: TcpListener,
    web: WebOptions,
) -> Result<Running, StartError> {
    config
        .gateway
        .validate()
        .map_err(|e| start_err("limits", e))?;
    let schema = Arc::new(Schema::parse(&config.schema).map_err(|e| start_err("schema", e))?);
    std::fs::create_dir_all(&config.data_dir).map_err(|e| start_err("data directory", e))?;
    if let Some(dir) = &web.static_dir {
        if crate::web::contains(dir, &config.data_dir) {
            return Err(StartError(format!(
                "the static directory {} holds the data directory {}: it would serve the log and the secrets; keep them apart",
                dir.display(),
                config.data_dir.display()
            )));
        }
    }
    if config.shared.is_some() {
        return start_shared(config, listener, web).await;
    }
    // Opening the log (it reads every segment's records) and the store are blocking
    // work: done on a blocking thread, not on the runtime's workers.
    let metrics = Arc::new(Metrics::default());
    let opened = {
        let (config, schema, metrics) = (config.clone(), schema.clone(), metrics.clone());
        tokio::task::spawn_blocking(move || open(&config, schema, metrics))
            .await
            .map_err(|e| start_err("opening", e))??
    };
    let Opened { log, mut region } = opened;
    let identities = Arc::new(config.gateway.identities());
    region.set_costs(identities.clone());
    let applied = region.position();
    let changes = region.changes();
    let schemas = region.schemas();
    let (region_tx, region_rx) = std::sync::mpsc::channel::<RegionMsg>();
    let region_thread = region::spawn(region, region_rx);
    let backlog = Backlog::new(BACKLOG_ENTRIES, BACKLOG_BYTES);
    // Ready once the region has applied what the log held at start (and the schema
    // entry of a changed file): the sequencer thread says so before it takes commits.
    let ready = Ready::default();
    let seq_ready = ready.clone();
    let seq_schema = config.schema.clone();
    let seq_version = schema.version().to_owned();
    let (seq_tx, seq_rx) = mpsc::channel(4096);
    let seq_region = region_tx.clone();
    let seq_opts = config.sequencer.clone();
    let seq_metrics = metrics.clone();
    let sequencer_thread = std::thread::Builder::new()
        .name("warren-sequencer".into())
        .spawn(move || {
            // The sequencer thread replays the log after the store's position into
            // the region (within the backlog's bound, so replay never holds the whole
            // unapplied log in memory), then serves: the gateway's commits wait in its
            // queue meanwhile.
            let mut log = log;
            let replayed = sequencer::replay(&log, applied, &seq_region, &backlog)
                .map_err(|e| start_err("replay", e))?;
            tracing::info!(from = applied, entries = replayed, "replayed the log");
            // The schema in force after the replay, against the file: an edited file
            // becomes a schema entry of the log, so every replay of the log switches at
            // this position.
            let (tx, rx) = tokio::sync::oneshot::channel();
            let _ = seq_region.send(RegionMsg::SchemaSource(tx));
            let in_force = rx
                .blocking_recv()
                .map_err(|_| StartError("the region stopped while replaying the log".into()))?;
            if in_force != seq_schema {
                let entry = LogEntry::Schema(SchemaChange { source: seq_schema });
                let bytes = entry.encode();
                let permit = backlog.acquire(1, bytes.len());
                let position = log.append(&[bytes]).map_err(|e| start_err("log", e))?;
                tracing::info!(
                    position,
                    version = seq_version,
                    "the schema file changed: the change is in the log at this position"
                );
                let _ = seq_region.send(RegionMsg::Batch(vec![(position, entry)], permit));
                // The region handles its messages in order: once it answers this, it
                // has applied the schema entry too.
                let (tx, rx) = tokio::sync::oneshot::channel();
                let _ = seq_region.send(RegionMsg::SchemaSource(tx));
                rx.blocking_recv().map_err(|_| {
                    StartError("the region stopped while applying the schema change".into())
                })?;
            }
            // Everything the log held is applied (the region answered after it).
            seq_ready.set();
            let log: Box<dyn Log> = Box::new(log);
            sequencer::run(log, seq_rx, seq_region, backlog, seq_opts, seq_metrics)
                .map(|()| 0)
                .map_err(|e| start_err("log", e))
        })
        .map_err(|e| start_err("sequencer", e))?;
    let admin = config.admin_token.clone().map(|token| Admin {
        token,
        region: String::new(),
        latest: None,
    });
    serve(
        config,
        listener,
        web,
        Parts {
            metrics,
            seq_tx,
            region_tx,
            ready,
            barrier: None,
            admin,
            sequencer: sequencer_thread,
            region: region_thread,
            shared: None,
            position: applied,
            identities,
            schemas,
            changes,
        },
    )
    .await
}

/// What [`serve`] puts behind the gateway.
struct Parts {
    metrics: Arc<Metrics>,
    seq_tx: mpsc::Sender<warren_core::exec::Commit>,
    region_tx: RegionTx,
    ready: Ready,
    barrier: Option<Arc<Barrier>>,
    admin: Option<Admin>,
    sequencer: std::thread::JoinHandle<Result<i64, StartError>>,
    region: std::thread::JoinHandle<Result<(), RegionError>>,
    shared: Option<SharedRunning>,
    position: u64,
    identities: Arc<Identities>,
    /// The schema in force, which GraphQL is generated from and follows.
    schemas: tokio::sync::watch::Receiver<Arc<Schema>>,
    /// Where the region publishes what each batch changed (GraphQL's live queries).
    changes: tokio::sync::broadcast::Sender<Arc<region::Changes>>,
}

async fn serve(
    config: Config,
    listener: TcpListener,
    web: WebOptions,
    p: Parts,
) -> Result<Running, StartError> {
    let verifier = Verifier::new(config.auth.clone())
        .await
        .map_err(|e| start_err("auth", e))?;
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let state = AppState {
        seq: p.seq_tx,
        region: p.region_tx,
        verifier,
        metrics: p.metrics.clone(),
        limits: config.gateway.clone(),
        ready: p.ready,
        next_conn: Arc::new(AtomicU64::new(1)),
        shutdown: shutdown_rx.clone(),
        identities: p.identities.clone(),
        service_identities: Arc::new(config.gateway.service_identities()),
        slots: Arc::new(Slots::new(config.gateway.max_connections)),
        pending_hellos: Conns::pool(config.gateway.max_pending_hellos),
        catch_ups: Arc::new(CatchUps::new(
            gateway::catch_up_workers(),
            gateway::catch_up_workers().div_ceil(2),
        )),
        barrier: p.barrier,
        admin: p.admin,
    };
    let addr = listener
        .local_addr()
        .map_err(|e| start_err("listener", e))?;
    let graphql = crate::graphql::router(
        state.clone(),
        p.schemas,
        config.limits.clone(),
        p.changes,
        web.graphiql,
    );
    let cors = axum::middleware::from_fn_with_state(web.clone(), crate::web::cors);
    let app = gateway::app(state)
        .merge(graphql)
        .merge(crate::web::router(web))
        .layer(cors);
    let conns = Conns::new(&config.gateway.conns, p.metrics.clone());
    let (max_tcp, reserved) = conns.limits();
    tracing::info!(max_tcp, reserved, "connection limits");
    let serve = tokio::spawn(crate::conns::serve(
        listener,
        app,
        conns,
        config.gateway.conns.header_timeout,
        shutdown_rx,
    ));
    tracing::info!(%addr, position = p.position, "serving");
    Ok(Running {
        addr,
        metrics: p.metrics,
        identities: p.identities,
        shutdown: shutdown_tx,
        serve,
        sequencer: p.sequencer,
        region: p.region,
        shared: p.shared,
    })
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Runs `f` until the shared log answers (it may still be starting), up to `within`.
fn until_available<T>(
    within: Duration,
    mut f: impl FnMut() -> Result<T, SharedLogError>,
) -> Result<T, SharedLogError> {
    let deadline = Instant::now() + within;
    let mut backoff = Duration::from_millis(50);
    loop {
        match f() {
            Err(SharedLogError::Unavailable(e)) if Instant::now() < deadline => {
                tracing::info!("waiting for etcd: {e}");
                std::thread::sleep(backoff);
                backoff = (backoff * 2).min(Duration::from_secs(1));
            }
            r => return r,
        }
    }
}

/// Writes a stopping region's last word to the shared log (its digest where it diverged,
/// its fence): retried while etcd is unavailable, for up to 10 s. A failure is logged;
/// the region stops either way.
fn put_retrying(log: &dyn SharedLog, key: &Key, value: &[u8]) {
    if let Err(e) = until_available(Duration::from_secs(10), || log.put(key, value)) {
        tracing::error!("could not write {key:?} to the shared log: {e}");
    }
}

/// Makes sure the deployment exists (creating it with `schema` as its initial schema
/// on a new cluster) and that this build may join it.
pub fn join_deployment(
    log: &dyn SharedLog,
    limits: &Limits,
    schema: &str,
) -> Result<(), SharedLogError> {
    let ours = Meta::ours(limits);
    let meta = match until_available(Duration::from_secs(30), || log.get(&Key::Meta))? {
        Some((_, m)) => m,
        None => {
            let first = BatchRecord {
                region: ADMIN_REGION.into(),
                incarnation: random_incarnation(),
                batch_seq: 1,
                prev_revision: 0,
                entries: vec![LogEntry::Schema(SchemaChange {
                    source: schema.to_owned(),
                })
                .encode()],
            };
            let created = until_available(Duration::from_secs(30), || {
                log.bootstrap(&ours.encode(), schema.as_bytes(), &first.encode())
            })?;
            if created {
                tracing::info!("created the deployment in the shared log, with the schema file as its initial schema");
            }
            until_available(Duration::from_secs(30), || log.get(&Key::Meta))?
                .map(|(_, m)| m)
                .ok_or_else(|| SharedLogError::Corrupt("meta vanished after its creation".into()))?
        }
    };
    let meta = Meta::decode(&meta).map_err(SharedLogError::Corrupt)?;
    meta.check(&ours)
}

/// A region of a deployment of many regions.
async fn start_shared(
    config: Config,
    listener: TcpListener,
    web: WebOptions,
) -> Result<Running, StartError> {
    let sc = config.shared.clone().expect("a shared config");
    check_region_name(&sc.region).map_err(|e| start_err("region", e))?;
    let ceiling = sc.max_record_bytes / 4;
    if config.gateway.max_frame_bytes > ceiling {
        return Err(StartError(format!(
            "limits: max_frame_bytes ({}) must be at most a quarter of the largest batch record ({}), so every commit fits one etcd request",
            config.gateway.max_frame_bytes, sc.max_record_bytes
        )));
    }
    let metrics = Arc::new(Metrics::default());
    let _ = metrics.region.name.set(sc.region.clone());
    let stop = Arc::new(AtomicBool::new(false));
    // The blocking part: etcd, the store, the snapshot.
    let prep = {
        let config = config.clone();
        let metrics = metrics.clone();
        let stop = stop.clone();
        tokio::task::spawn_blocking(move || prepare_shared(&config, metrics, stop))
            .await
            .map_err(|e| start_err("start", e))??
    };
    let Prepared {
        log,
        mut region,
        appender,
        target,
    } = prep;
    let (applied_tx, applied_rx) = watch::channel(0i64);
    region.on_applied(applied_tx);
    let identities = Arc::new(config.gateway.identities());
    region.set_costs(identities.clone());
    region.set_presence_relay(
        crate::presence::spawn(log.clone(), sc.region.clone(), stop.clone())
            .map_err(|e| start_err("presence relay", e))?,
    );
    let after = region.revision();
    let position = region.position();
    let latest = region.latest();
    let (region_tx, region_rx) = std::sync::mpsc::channel::<RegionMsg>();
    let schemas = region.schemas();
    let changes = region.changes();
    let region_thread = region::spawn(region, region_rx);
    // The log's consumer. Its fatal errors (a compacted history, a gap, a fence) stop
    // the region with their code.
    {
        let (log, own, tx, stop, metrics) = (
            log.clone(),
            sc.region.clone(),
            region_tx.clone(),
            stop.clone(),
            metrics.clone(),
        );
        std::thread::Builder::new()
            .name("warren-follower".into())
            .spawn(move || {
                if let Err(e) = crate::follower::run(log, own, after, tx.clone(), stop, metrics) {
                    let _ = tx.send(RegionMsg::Fail {
                        code: e.code(),
                        message: e.to_string(),
                    });
                }
            })
            .map_err(|e| start_err("follower", e))?;
    }
    let last_appended = Arc::new(AtomicI64::new(appender.last_revision()));
    let (seq_tx, seq_rx) = mpsc::channel(4096);
    let sequencer_thread = {
        let (opts, max, metrics, tx, last) = (
            config.sequencer.clone(),
            sc.max_record_bytes,
            metrics.clone(),
            region_tx.clone(),
            last_appended.clone(),
        );
        std::thread::Builder::new()
            .name("warren-sequencer".into())
            .spawn(move || {
                let r = sequencer::run_shared(appender, seq_rx, opts, max, metrics);
                match r {
                    Ok(rev) => {
                        last.store(rev, Ordering::Relaxed);
                        Ok(rev)
                    }
                    Err(e) => {
                        let _ = tx.send(RegionMsg::Fail {
                            code: e.code(),
                            message: e.to_string(),
                        });
                        Err(start_err("log", e))
                    }
                }
            })
            .map_err(|e| start_err("sequencer", e))?
    };
    {
        let (log, sc, metrics, tx, stop) = (
            log.clone(),
            sc.clone(),
            metrics.clone(),
            region_tx.clone(),
            stop.clone(),
        );
        std::thread::Builder::new()
            .name("warren-health".into())
            .spawn(move || health(log, sc, metrics, tx, stop))
            .map_err(|e| start_err("health", e))?;
    }
    let housekeeping = {
        let (log, sc, metrics, tx, stop, latest) = (
            log.clone(),
            sc.clone(),
            metrics.clone(),
            region_tx.clone(),
            stop.clone(),
            latest.clone(),
        );
        std::thread::Builder::new()
            .name("warren-housekeeping".into())
            .spawn(move || housekeeping(log, sc, metrics, tx, stop, latest))
            .map_err(|e| start_err("housekeeping", e))?
    };
    // Ready once the region has applied what the log held after this process claimed
    // its region.
    let ready = Ready::default();
    {
        let (metrics, ready) = (metrics.clone(), ready.clone());
        tokio::spawn(async move {
            while metrics.region.applied_revision.load(Ordering::Relaxed) < target {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            ready.set();
            tracing::info!(revision = target, "caught up with the shared log");
        });
    }
    let barrier = Arc::new(Barrier::new(
        log.clone(),
        applied_rx,
        sc.barrier_timeout,
        metrics.clone(),
    ));
    let admin = config.admin_token.clone().map(|token| Admin {
        token,
        region: sc.region.clone(),
        latest: Some(latest),
    });
    tracing::info!(region = %sc.region, revision = after, "a region of many: following the shared log");
    serve(
        config,
        listener,
        web,
        Parts {
            metrics,
            seq_tx,
            region_tx: region_tx.clone(),
            ready,
            barrier: Some(barrier),
            admin,
            sequencer: sequencer_thread,
            region: region_thread,
            shared: Some(SharedRunning {
                log,
                name: sc.region,
                stop,
                region_tx,
                housekeeping,
            }),
            position,
            identities,
            schemas,
            changes,
        },
    )
    .await
}

struct Prepared {
    log: Arc<dyn SharedLog>,
    region: Region,
    appender: Appender,
    /// The revision to apply before being ready.
    target: i64,
}

fn prepare_shared(
    config: &Config,
    metrics: Arc<Metrics>,
    stop: Arc<AtomicBool>,
) -> Result<Prepared, StartError> {
    let sc = config.shared.as_ref().expect("a shared config");
    let client =
        EtcdClient::new(&sc.etcd, sc.etcd_options.clone()).map_err(|e| start_err("etcd", e))?;
    let log: Arc<dyn SharedLog> = Arc::new(EtcdLog::new(client, &sc.prefix));
    join_deployment(&*log, &config.limits, &config.schema)
        .map_err(|e| StartError(e.to_string()))?;
    if let Ok(Some((_, s))) = log.get(&Key::Schema) {
        if s != config.schema.as_bytes() {
            tracing::warn!("the schema file differs from the deployment's last schema change; it is not used (change the schema with `warren schema apply`)");
        }
    }
    // The store: kept, or booted from another region's snapshot when it is new or the
    // log no longer holds the history it needs.
    let path = config.data_dir.join("state.redb");
    let mut store = RedbStore::open(&path, config.store_sync_every)
        .map_err(|e| start_err("region store", e))?;
    let revision = region::stored_revision(&store).map_err(|e| start_err("region store", e))?;
    let empty = warren_core::exec::position(&store).map_err(|e| start_err("region store", e))? == 0
        && revision == 0;
    let compacted = until_available(Duration::from_secs(30), || log.compacted_after(revision))
        .map_err(|e| StartError(e.to_string()))?;
    if let Some(url) = &sc.boot_from {
        if empty || compacted {
            drop(store);
            if !empty {
                let aside = path.with_extension("redb.behind");
                tracing::warn!(file = %aside.display(), "this region's store is behind the log's compaction; it is kept aside and replaced by a snapshot");
                std::fs::rename(&path, &aside).map_err(|e| start_err("region store", e))?;
            } else {
                let _ = std::fs::remove_file(&path);
            }
            let h = crate::snapshot::fetch(url, sc.boot_token.as_deref(), &path)
                .map_err(|e| start_err("boot", e))?;
            tracing::info!(from = %h.region, position = h.position, revision = h.revision, "booted from a snapshot");
            store = RedbStore::open(&path, config.store_sync_every)
                .map_err(|e| start_err("region store", e))?;
            let rev = region::stored_revision(&store).map_err(|e| start_err("region store", e))?;
            if log
                .compacted_after(rev)
                .map_err(|e| StartError(e.to_string()))?
            {
                return Err(StartError(
                    SharedLogError::NeedsSnapshot {
                        compacted: 0,
                        needed: rev + 1,
                    }
                    .to_string()
                        + " (the snapshot booted from is older than the log's compaction too; take a newer one)",
                ));
            }
        } else {
            tracing::info!("--boot-from is not needed: the store is current with the log");
        }
    } else if compacted {
        return Err(StartError(
            SharedLogError::NeedsSnapshot {
                compacted: 0,
                needed: revision + 1,
            }
            .to_string(),
        ));
    }
    let region = Region::new_shared(
        store,
        config.limits.clone(),
        metrics.clone(),
        SharedRegion::new(&sc.region),
    )
    .map_err(|e| start_err("region", e))?;
    // Claim the region: an empty batch, so that a process still appending for it (a
    // zombie, a copy) is fenced at its next append.
    let mut appender =
        Appender::open(log.clone(), &sc.region, stop).map_err(|e| StartError(e.to_string()))?;
    let claimed = appender
        .append(Vec::new())
        .map_err(|e| StartError(e.to_string()))?;
    tracing::info!(region = %sc.region, incarnation = %warren_core::hex(&appender.incarnation()), revision = claimed, "claimed the region");
    metrics
        .region
        .head_revision
        .fetch_max(claimed, Ordering::Relaxed);
    Ok(Prepared {
        log,
        region,
        appender,
        target: claimed,
    })
}

/// Checks every second that the region reaches an etcd quorum (a linearizable read
/// of the log's heads), for `/readyz`, the lag, and to close every connection
/// (`REGION_UNAVAILABLE`) when it has not for `unavailable_after`: its clients then
/// move to a region that can serve them. On a thread of its own, so that slow calls
/// elsewhere never delay it.
fn health(
    log: Arc<dyn SharedLog>,
    sc: SharedConfig,
    metrics: Arc<Metrics>,
    region: RegionTx,
    stop: Arc<AtomicBool>,
) {
    let r = &metrics.region;
    let mut last_ok = Instant::now();
    let mut closed = false;
    while !stop.load(Ordering::Relaxed) {
        let started = Instant::now();
        match log.heads() {
            Ok(heads) => {
                let head = heads.iter().map(|(_, rev)| *rev).max().unwrap_or(0);
                r.head_revision.fetch_max(head, Ordering::Relaxed);
                r.etcd_ok.store(true, Ordering::Relaxed);
                r.etcd_last_ok_ms.store(now_ms(), Ordering::Relaxed);
                last_ok = Instant::now();
                closed = false;
            }
            Err(e) => {
                r.etcd_ok.store(false, Ordering::Relaxed);
                tracing::debug!("etcd health check failed: {e}");
                if !closed && last_ok.elapsed() >= sc.unavailable_after {
                    tracing::warn!(
                        "no etcd quorum for {:?}: closing every connection (clients move to another region)",
                        last_ok.elapsed()
                    );
                    let _ = region.send(RegionMsg::CloseAll {
                        code: codes::REGION_UNAVAILABLE,
                        message:
                            "this region cannot reach the global log; connect to another region"
                                .into(),
                    });
                    closed = true;
                }
            }
        }
        let left = Duration::from_secs(1).saturating_sub(started.elapsed());
        let wake = Instant::now() + left;
        while Instant::now() < wake && !stop.load(Ordering::Relaxed) {
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// Publishes the region's digest, keeps it alive, watches etcd's quota, and compacts
/// the log.
fn housekeeping(
    log: Arc<dyn SharedLog>,
    sc: SharedConfig,
    metrics: Arc<Metrics>,
    _region: RegionTx,
    stop: Arc<AtomicBool>,
    latest: Arc<std::sync::Mutex<BatchEnd>>,
) {
    let r = &metrics.region;
    let tick = Duration::from_millis(50);
    let mut published = BatchEnd::default();
    let mut last_publish = Instant::now() - sc.publish_every;
    let mut last_health = Instant::now() - Duration::from_secs(10);
    let mut last_alive = Instant::now() - Duration::from_secs(10);
    let mut last_compact = Instant::now();
    let mut last_alert = Instant::now() - Duration::from_secs(600);
    while !stop.load(Ordering::Relaxed) {
        std::thread::sleep(tick);
        if last_publish.elapsed() >= sc.publish_every {
            let l = *latest.lock().expect("latest lock");
            if l != published && l.revision > 0 {
                let state = RegionState {
                    revision: l.revision,
                    position: l.position,
                    digest: l.digest,
                    durable_revision: r.durable_revision.load(Ordering::Relaxed),
                    wall_ms: now_ms(),
                };
                match log.put(&Key::State(sc.region.clone()), &state.encode()) {
                    Ok(_) => published = l,
                    Err(e) => tracing::debug!("publishing the region's state failed: {e}"),
                }
            }
            last_publish = Instant::now();
        }
        if last_alive.elapsed() >= Duration::from_secs(3)
            && log.keep_alive(&sc.region, Duration::from_secs(10)).is_ok()
        {
            last_alive = Instant::now();
        }
        if last_health.elapsed() >= Duration::from_secs(5) {
            last_health = Instant::now();
            if let Ok((size, alarms)) = log.health() {
                r.etcd_db_bytes.store(size, Ordering::Relaxed);
                let alert = size > sc.quota_warn_bytes || !alarms.is_empty();
                if alert && last_alert.elapsed() >= Duration::from_secs(60) {
                    tracing::error!(db_bytes = size, alarms = ?alarms, warn_at = sc.quota_warn_bytes, "ALERT: etcd's database is near its quota or raised an alarm; appends stop at NOSPACE (compact, defragment, disarm: docs/REGIONS.md)");
                    last_alert = Instant::now();
                }
                *r.etcd_alarms.lock().expect("status lock") = alarms;
            }
        }
        if !sc.compact_every.is_zero() && last_compact.elapsed() >= sc.compact_every {
            last_compact = Instant::now();
            if let Err(e) = compact_once(&*log, &sc, &metrics) {
                tracing::debug!("compaction skipped: {e}");
            }
        }
    }
}

/// Compacts the shared log up to what every live region holds durably (and no
/// closer than `retain_revisions` to the head). A region down long enough for its
/// `alive` key to expire no longer holds compaction back; it boots from a snapshot.
pub fn compact_once(
    log: &dyn SharedLog,
    sc: &SharedConfig,
    metrics: &Metrics,
) -> Result<Option<i64>, SharedLogError> {
    let (head, keys) = log.list("regions/")?;
    let mut alive = std::collections::BTreeSet::new();
    let mut durable = std::collections::BTreeMap::new();
    for (k, _, v) in keys {
        match k {
            Key::Alive(r) => {
                alive.insert(r);
            }
            Key::State(r) => {
                if let Ok(s) = RegionState::decode(&v) {
                    durable.insert(r, s.durable_revision);
                }
            }
            _ => {}
        }
    }
    let mut c = head - sc.retain_revisions;
    for r in &alive {
        match durable.get(r) {
            Some(d) => c = c.min(*d),
            None => return Ok(None), // a live region that has not published yet
        }
    }
    let done = metrics.region.compacted_revision.load(Ordering::Relaxed);
    if c <= done.max(1) {
        return Ok(None);
    }
    log.compact(c)?;
    metrics
        .region
        .compacted_revision
        .store(c, Ordering::Relaxed);
    tracing::info!(revision = c, "compacted the shared log");
    Ok(Some(c))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::log::shared::MemorySharedLog;

    fn state(durable: i64) -> Vec<u8> {
        RegionState {
            revision: durable,
            position: 1,
            digest: [0; 32],
            durable_revision: durable,
            wall_ms: 0,
        }
        .encode()
    }

    #[test]
    fn compaction_keeps_what_every_live_region_needs() {
        let log = MemorySharedLog::new();
        for _ in 0..100 {
            log.put(&Key::Other("filler".into()), b"x").unwrap();
        }
        let mut sc = SharedConfig::new("eu", vec![]);
        sc.retain_revisions = 10;
        let m = Metrics::default();
        log.put(&Key::State("eu".into()), &state(50)).unwrap();
        log.put(&Key::State("us".into()), &state(30)).unwrap();
        log.keep_alive("eu", Duration::from_secs(10)).unwrap();
        // us published but is not alive (its lease expired): it holds nothing back.
        assert_eq!(compact_once(&log, &sc, &m).unwrap(), Some(50));
        // Once us is alive, nothing behind its durable revision goes (and nothing is
        // compacted twice).
        log.keep_alive("us", Duration::from_secs(10)).unwrap();
        assert_eq!(compact_once(&log, &sc, &m).unwrap(), None);
        // A live region that has not published yet holds everything back.
        log.keep_alive("ap", Duration::from_secs(10)).unwrap();
        log.put(&Key::State("us".into()), &state(90)).unwrap();
        assert_eq!(compact_once(&log, &sc, &m).unwrap(), None);
        log.put(&Key::State("ap".into()), &state(95)).unwrap();
        assert_eq!(
            compact_once(&log, &sc, &m).unwrap(),
            None,
            "eu still needs 50"
        );
        log.put(&Key::State("eu".into()), &state(200)).unwrap();
        assert_eq!(
            compact_once(&log, &sc, &m).unwrap(),
            Some(90),
            "us needs 90"
        );
        // The retained revisions bound it too: the head is about 110.
        log.put(&Key::State("us".into()), &state(200)).unwrap();
        log.put(&Key::State("ap".into()), &state(200)).unwrap();
        let c = compact_once(&log, &sc, &m).unwrap().unwrap();
        assert!((95..=105).contains(&c), "{c}");
    }
}
