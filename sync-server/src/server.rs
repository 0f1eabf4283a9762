//! Assembles a running server: log, region store, region thread, sequencer thread and
//! gateway, all data under one directory.
//!
//! ```text
//! data-dir/
//!   log/          the global log (segments, docs/LOG.md)
//!   state.redb    the region's state: documents, indexes, cursors, digest, position
//!   dev-secret    the development HS256 secret, made on first start if none is given
//! ```
//!
//! Start order: open the log and the store (on a blocking thread), start the region,
//! start the sequencer thread (it first replays the log after the store's position,
//! then takes new commits), then serve; `/readyz` answers ready once the replay is
//! applied. Stop order: stop accepting, tell
//! every connection, let the sequencer finish its queue (its last batch is synced and
//! applied), stop the region (the store is synced), join both threads.

use crate::web::WebOptions;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use warren_core::eval::Limits;
use warren_core::Schema;

use crate::auth::{AuthConfig, Verifier};
use crate::conns::Conns;
use crate::gateway::{self, AppState, GatewayLimits};
use crate::limits::{CatchUps, Slots};
use crate::log::{FileLog, FileLogOptions, Log};
use crate::metrics::Metrics;
use crate::region::{self, Region, RegionMsg};
use crate::sequencer::{self, Backlog, SequencerOptions, BACKLOG_BYTES, BACKLOG_ENTRIES};
use crate::store::RedbStore;

/// Everything a server needs.
#[derive(Clone, Debug)]
pub struct Config {
    pub data_dir: PathBuf,
    /// The schema's source text.
    pub schema: String,
    pub auth: AuthConfig,
    pub sequencer: SequencerOptions,
    pub limits: Limits,
    pub gateway: GatewayLimits,
    /// Commit the region store durably every this many batches.
    pub store_sync_every: u32,
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

/// A running server.
pub struct Running {
    pub addr: SocketAddr,
    pub metrics: Arc<Metrics>,
    identities: Arc<crate::limits::Identities>,
    shutdown: watch::Sender<bool>,
    serve: tokio::task::JoinHandle<std::io::Result<()>>,
    sequencer: std::thread::JoinHandle<Result<(), crate::log::LogError>>,
    region: std::thread::JoinHandle<Result<(), warren_core::Error>>,
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
        tokio::task::spawn_blocking(move || {
            let s = seq
                .join()
                .map_err(|_| StartError("the sequencer panicked".into()))?;
            let r = region
                .join()
                .map_err(|_| StartError("the region panicked".into()))?;
            s.map_err(|e| start_err("log", e))?;
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
    let (region_tx, region_rx) = std::sync::mpsc::channel::<RegionMsg>();
    let region_thread = region::spawn(region, region_rx);
    let backlog = Backlog::new(BACKLOG_ENTRIES, BACKLOG_BYTES);
    // The sequencer thread replays the log after the store's position into the region
    // (within the backlog's bound, so replay never holds the whole unapplied log in
    // memory), then serves: the gateway's commits wait in its queue meanwhile.
    let target = log.last_position();
    let (seq_tx, seq_rx) = mpsc::channel(4096);
    let seq_region = region_tx.clone();
    let seq_opts = config.sequencer.clone();
    let seq_metrics = metrics.clone();
    let sequencer_thread = std::thread::Builder::new()
        .name("warren-sequencer".into())
        .spawn(move || {
            let replayed = sequencer::replay(&log, applied, &seq_region, &backlog)?;
            tracing::info!(from = applied, entries = replayed, "replayed the log");
            let log: Box<dyn Log> = Box::new(log);
            sequencer::run(log, seq_rx, seq_region, backlog, seq_opts, seq_metrics)
        })
        .map_err(|e| start_err("sequencer", e))?;
    let verifier = Verifier::new(config.auth.clone())
        .await
        .map_err(|e| start_err("auth", e))?;
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let ready = Arc::new(AtomicBool::new(false));
    let state = AppState {
        seq: seq_tx,
        region: region_tx,
        verifier,
        metrics: metrics.clone(),
        limits: config.gateway.clone(),
        ready: ready.clone(),
        next_conn: Arc::new(AtomicU64::new(1)),
        shutdown: shutdown_rx.clone(),
        identities: identities.clone(),
        slots: Arc::new(Slots::new(config.gateway.max_connections)),
        pending_hellos: Conns::pool(config.gateway.max_pending_hellos),
        catch_ups: Arc::new(CatchUps::new(
            gateway::catch_up_workers(),
            gateway::catch_up_workers().div_ceil(2),
        )),
    };
    // Ready once the region has applied what the log held at start.
    let ready_metrics = metrics.clone();
    tokio::spawn(async move {
        while ready_metrics.position.load(Ordering::Relaxed) < target {
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        ready.store(true, Ordering::Relaxed);
    });
    let addr = listener
        .local_addr()
        .map_err(|e| start_err("listener", e))?;
    let app = gateway::app(state).merge(crate::web::router(web));
    let conns = Conns::new(&config.gateway.conns, metrics.clone());
    let (max_tcp, reserved) = conns.limits();
    tracing::info!(max_tcp, reserved, "connection limits");
    let serve = tokio::spawn(crate::conns::serve(
        listener,
        app,
        conns,
        config.gateway.conns.header_timeout,
        shutdown_rx,
    ));
    tracing::info!(%addr, position = applied, "serving");
    Ok(Running {
        addr,
        metrics,
        identities,
        shutdown: shutdown_tx,
        serve,
        sequencer: sequencer_thread,
        region: region_thread,
    })
}
