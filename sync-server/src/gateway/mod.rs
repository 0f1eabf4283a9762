//! The gateway: WebSocket sync and HTTP endpoints.
//!
//! | route | what |
//! |---|---|
//! | `GET /v1/sync` | WebSocket: binary frames of `docs/PROTOCOL.md` |
//! | `POST /v1/push` | JSON commits with a bearer token; answers with their outcomes |
//! | `POST /v1/pull` | JSON cursors with a bearer token; answers with snapshots |
//! | `GET /healthz` | the process is up |
//! | `GET /readyz` | the log is replayed and commits are being served ([`Ready`]) |
//! | `GET /metrics` | Prometheus text |
//! | `GET /v1/admin/snapshot` | the region's store as a stream (admin token) |
//! | `POST /v1/admin/explain` | a program or a partition's read rule run as an identity, with the rules' trace (admin token) |
//! | `GET /v1/admin/state` | position, digest and, for a region of many, its status (admin token) |
//!
//! (`/v1/graphql` is [`crate::graphql`]'s, on the same state.)
//!
//! The gateway verifies tokens and writes the verified claims into each commit, so
//! every region evaluates rules with the same `auth`.
//!
//! This module holds what both halves share (limits, state, routes, errors, token
//! checks); [`http`] answers the JSON endpoints, [`ws`] runs WebSocket sessions, and
//! [`admin`] answers the operator's endpoints.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use tokio::sync::{mpsc, watch};
use warren_core::exec::Commit;
use warren_core::protocol::codes;
use warren_core::Value;

use crate::auth::Verifier;
use crate::barrier::Barrier;
use crate::conns::{Conn, ConnLimits, Conns};
use crate::limits::{Budget, CatchUps, Cost, Identities, Rate, Refused, Slots};
use crate::metrics::Metrics;
use crate::region::RegionTx;

pub mod admin;
pub mod http;
pub mod ws;

/// Limits the gateway enforces per connection and per identity (the token's `sub`).
/// Every one is a `warren serve` flag; `docs/PROTOCOL.md` ("Limits") lists them.
#[derive(Clone, Debug)]
pub struct GatewayLimits {
    /// The largest frame (WebSocket message) or HTTP body accepted. At most
    /// [`MAX_FRAME_BYTES_CEILING`], so that every commit fits a log record.
    pub max_frame_bytes: usize,
    /// The most commits in one push.
    pub max_commits_per_push: usize,
    /// Frames queued for one connection before it counts as too slow.
    pub conn_queue: usize,
    /// Bytes queued for one connection before it counts as too slow (a single frame
    /// larger than this still passes an empty queue).
    pub conn_queue_bytes: usize,
    /// How long a new connection has to send `Hello`.
    pub hello_timeout: Duration,
    /// How long writing one frame to a connection may take before it is dropped.
    pub write_timeout: Duration,
    /// Open sync connections, all identities together (0: no limit).
    pub max_connections: usize,
    /// Open sync connections of one identity (0: no limit).
    pub max_connections_per_identity: usize,
    /// Commits one identity may send per second, over WebSocket and HTTP together
    /// (0: no limit), and how many it may send at once.
    pub commits_per_sec: u32,
    pub commit_burst: u32,
    /// Frames (and HTTP requests) one identity may send per second (0: no limit), and
    /// how many at once.
    pub frames_per_sec: u32,
    pub frame_burst: u32,
    /// Identities whose token's `role` claim equals this are services (trusted backend
    /// code: a job, an edge function): they are counted apart from end users, with the
    /// `service_*` limits instead of the ones above. Empty: no identity is a service.
    pub service_role: String,
    /// A service identity's open connections, commits and frames (as above).
    pub service_max_connections_per_identity: usize,
    pub service_commits_per_sec: u32,
    pub service_commit_burst: u32,
    pub service_frames_per_sec: u32,
    pub service_frame_burst: u32,
    /// GraphQL query evaluations running at once, all identities together (0: twice
    /// the number of CPUs). More wait for a turn.
    pub graphql_concurrency: usize,
    /// GraphQL query evaluations of one identity running at once (its others wait), for
    /// end users and for services.
    pub graphql_concurrency_per_identity: usize,
    pub service_graphql_concurrency_per_identity: usize,
    /// Subscriptions (live queries) one GraphQL WebSocket may hold.
    pub graphql_subscriptions_per_connection: usize,
    /// Region time one identity's commits may use: milliseconds a second (0: no
    /// limit), and at most in its bucket. See [`crate::limits`] ("Cost").
    pub cost_ms_per_sec: u32,
    pub cost_burst_ms: u32,
    /// Commits of one identity let through to the sequencer and not yet run.
    pub max_in_flight: u32,
    /// How long a request waits for its identity's budget (commits, frames, cost)
    /// before it is refused with `RATE_LIMITED`.
    pub max_wait: Duration,
    /// Open TCP connections, the places kept for authenticated ones, and the
    /// header-read and idle timeout (see [`crate::conns`]).
    pub conns: ConnLimits,
    /// WebSocket connections waiting for their `Hello` at once; a newer one closes the
    /// oldest (each waits `hello_timeout` at most).
    pub max_pending_hellos: usize,
}

/// What a commit of an identity not seen yet is expected to cost, in microseconds of
/// region time, until its first commit is measured (a small commit costs tens).
pub const FIRST_COST_ESTIMATE_MICROS: f64 = 5000.0;

/// The largest `max_frame_bytes` a server accepts: a quarter of the log's record
/// limit, so that a commit's log entry (its arguments re-encoded from JSON, which can
/// grow a number from 3 bytes to 9, plus the verified claims) always fits a record.
pub const MAX_FRAME_BYTES_CEILING: usize = crate::log::DEFAULT_MAX_RECORD_SIZE / 4;

impl Default for GatewayLimits {
    fn default() -> Self {
        GatewayLimits {
            max_frame_bytes: 1 << 20,
            max_commits_per_push: 1000,
            conn_queue: 4096,
            conn_queue_bytes: 8 << 20,
            hello_timeout: Duration::from_secs(5),
            write_timeout: Duration::from_secs(30),
            max_connections: 10_000,
            max_connections_per_identity: 64,
            commits_per_sec: 200,
            commit_burst: 2000,
            frames_per_sec: 200,
            frame_burst: 1000,
            service_role: "service".into(),
            service_max_connections_per_identity: 256,
            service_commits_per_sec: 2000,
            service_commit_burst: 20_000,
            service_frames_per_sec: 2000,
            service_frame_burst: 10_000,
            graphql_concurrency: 0,
            graphql_concurrency_per_identity: 2,
            service_graphql_concurrency_per_identity: 8,
            graphql_subscriptions_per_connection: 64,
            cost_ms_per_sec: 10,
            cost_burst_ms: 250,
            max_in_flight: 8,
            max_wait: Duration::from_secs(30),
            conns: ConnLimits::default(),
            max_pending_hellos: 256,
        }
    }
}

impl GatewayLimits {
    /// Checks that the limits work together.
    pub fn validate(&self) -> Result<(), String> {
        if self.max_frame_bytes == 0 || self.max_frame_bytes > MAX_FRAME_BYTES_CEILING {
            return Err(format!(
                "max_frame_bytes must be between 1 and {MAX_FRAME_BYTES_CEILING}, not {}",
                self.max_frame_bytes
            ));
        }
        if self.max_commits_per_push == 0 || self.conn_queue == 0 || self.conn_queue_bytes == 0 {
            return Err(
                "max_commits_per_push, conn_queue and conn_queue_bytes must be at least 1".into(),
            );
        }
        if self.commits_per_sec > 0 && (self.commit_burst as usize) < self.max_commits_per_push {
            return Err(format!(
                "commit_burst ({}) must be at least max_commits_per_push ({}), or a full push could never pass",
                self.commit_burst, self.max_commits_per_push
            ));
        }
        if self.frames_per_sec > 0 && self.frame_burst == 0 {
            return Err("frame_burst must be at least 1".into());
        }
        if self.service_commits_per_sec > 0
            && (self.service_commit_burst as usize) < self.max_commits_per_push
        {
            return Err(format!(
                "service_commit_burst ({}) must be at least max_commits_per_push ({}), or a full push could never pass",
                self.service_commit_burst, self.max_commits_per_push
            ));
        }
        if self.service_frames_per_sec > 0 && self.service_frame_burst == 0 {
            return Err("service_frame_burst must be at least 1".into());
        }
        if self.graphql_concurrency_per_identity == 0
            || self.service_graphql_concurrency_per_identity == 0
            || self.graphql_subscriptions_per_connection == 0
        {
            return Err(
                "the GraphQL concurrency per identity and subscriptions per connection must be at least 1"
                    .into(),
            );
        }
        if self.max_pending_hellos == 0 {
            return Err("max_pending_hellos must be at least 1".into());
        }
        if self.cost_ms_per_sec > 0 && (self.cost_burst_ms == 0 || self.max_in_flight == 0) {
            return Err("cost_burst_ms and max_in_flight must be at least 1".into());
        }
        Ok(())
    }

    fn rate(per_sec: u32, burst: u32) -> Rate {
        Rate {
            per_sec: per_sec as f64,
            burst: burst as f64,
        }
    }

    /// The per-identity budgets these limits describe.
    pub fn identities(&self) -> Identities {
        Identities::with_cost(
            self.max_connections_per_identity,
            Self::rate(self.commits_per_sec, self.commit_burst),
            Self::rate(self.frames_per_sec, self.frame_burst),
            Cost {
                rate: Rate {
                    per_sec: self.cost_ms_per_sec as f64 * 1000.0,
                    burst: self.cost_burst_ms as f64 * 1000.0,
                },
                max_in_flight: self.max_in_flight,
                first_estimate: FIRST_COST_ESTIMATE_MICROS,
            },
            self.max_wait,
        )
    }

    /// The per-identity budgets of service identities.
    pub fn service_identities(&self) -> Identities {
        // Services are trusted code: no region-time budget (they wait for the rates
        // above, as end users do).
        Identities::with_cost(
            self.service_max_connections_per_identity,
            Self::rate(self.service_commits_per_sec, self.service_commit_burst),
            Self::rate(self.service_frames_per_sec, self.service_frame_burst),
            Cost::UNLIMITED,
            self.max_wait,
        )
    }

    /// Whether the verified claims `auth` are those of a service identity.
    pub fn is_service(&self, auth: &Value) -> bool {
        !self.service_role.is_empty()
            && matches!(auth.get("role"), Value::String(r) if *r == self.service_role)
    }

    /// The connection limit and the rates (commits, frames: per second and at once) of
    /// an end user or a service.
    pub fn of(&self, service: bool) -> (usize, (u32, u32), (u32, u32)) {
        if service {
            (
                self.service_max_connections_per_identity,
                (self.service_commits_per_sec, self.service_commit_burst),
                (self.service_frames_per_sec, self.service_frame_burst),
            )
        } else {
            (
                self.max_connections_per_identity,
                (self.commits_per_sec, self.commit_burst),
                (self.frames_per_sec, self.frame_burst),
            )
        }
    }

    /// What `RATE_LIMITED` says for a budget.
    pub fn rate_limited_message(&self, budget: Budget, service: bool) -> String {
        let (_, (commits_per_sec, commit_burst), (frames_per_sec, frame_burst)) = self.of(service);
        match budget {
            Budget::Commits => format!(
                "this identity sends more commits than it may ({} a second, {} at once) and would wait longer than {:?}; retry later",
                commits_per_sec, commit_burst, self.max_wait
            ),
            Budget::Frames => format!(
                "this identity sends more frames than it may ({} a second, {} at once) and would wait longer than {:?}; retry later",
                frames_per_sec, frame_burst, self.max_wait
            ),
            Budget::Cost => format!(
                "this identity's commits use more of the region's time than they may ({} ms a second, {} ms at once) and would wait longer than {:?}; retry later",
                self.cost_ms_per_sec, self.cost_burst_ms, self.max_wait
            ),
        }
    }
}

#[derive(Clone)]
pub struct AppState {
    pub seq: mpsc::Sender<Commit>,
    pub region: RegionTx,
    pub verifier: Verifier,
    pub metrics: Arc<Metrics>,
    pub limits: GatewayLimits,
    pub ready: Ready,
    pub next_conn: Arc<AtomicU64>,
    pub shutdown: watch::Receiver<bool>,
    /// Per-identity connection counts and rate budgets of end users...
    pub identities: Arc<Identities>,
    /// ...and of services (see [`GatewayLimits::service_role`]).
    pub service_identities: Arc<Identities>,
    /// Open sync connections, against `limits.max_connections`.
    pub slots: Arc<Slots>,
    /// Catch-ups (welcomes and pulls) computed at once, off the region thread, in all
    /// and per identity.
    pub catch_ups: Arc<CatchUps>,
    /// WebSocket sessions waiting for `Hello`.
    pub pending_hellos: Arc<Conns>,
    /// In a deployment of many regions: catch up with the global log before a
    /// welcome or a pull.
    pub barrier: Option<Arc<Barrier>>,
    /// The operator's endpoints (`/v1/admin/...`), when an admin token is set.
    pub admin: Option<admin::Admin>,
}

pub use admin::Admin;

/// How long a read waits for [`Ready`] before it is answered `REGION_UNAVAILABLE`.
pub const READY_WAIT: Duration = Duration::from_secs(5);

/// Whether this process has applied what its log held when it started: the embedded
/// default's replay of its log into its store, a region of many's catch-up with the
/// shared log's head as it claimed its region. The server serves while it replays
/// (`/healthz` answers, commits queue up), but its store alone may then be older than
/// what it acknowledged before it stopped or crashed: so `/readyz` says not ready, and
/// every read of the region's state (a welcome, a pull, a GraphQL query) waits for it
/// ([`Ready::wait`]), and a client never sees its confirmed writes go back in time
/// across a restart.
#[derive(Clone)]
pub struct Ready(Arc<watch::Sender<bool>>);

impl Default for Ready {
    fn default() -> Self {
        Ready(Arc::new(watch::Sender::new(false)))
    }
}

impl Ready {
    /// Marks the process ready (once; it never becomes unready).
    pub fn set(&self) {
        self.0.send_replace(true);
    }

    /// Whether it is ready now.
    pub fn get(&self) -> bool {
        *self.0.borrow()
    }

    /// Waits until it is ready, at most [`READY_WAIT`]; `Err` with the message a
    /// refused read answers with after it. (The sender is `self`'s: the wait ends
    /// only when ready or at the timeout.)
    pub async fn wait(&self) -> Result<(), String> {
        let mut rx = self.0.subscribe();
        let ready = tokio::time::timeout(READY_WAIT, rx.wait_for(|r| *r))
            .await
            .is_ok_and(|r| r.is_ok());
        if ready {
            return Ok(());
        }
        Err(format!(
            "this server is still applying its log after its start (waited \
             {READY_WAIT:?}); try again shortly"
        ))
    }
}

/// How many catch-ups run at once: one per core, at least two.
pub fn catch_up_workers() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(2)
        .max(2)
}

impl AppState {
    /// The budgets `auth`'s identity draws on: a service's or an end user's.
    pub fn identities_for(&self, auth: &Value) -> &Arc<Identities> {
        if self.limits.is_service(auth) {
            &self.service_identities
        } else {
            &self.identities
        }
    }
}

pub fn app(state: AppState) -> Router {
    let body_limit = axum::extract::DefaultBodyLimit::max(state.limits.max_frame_bytes);
    // A body must arrive in time, as the headers must (see `crate::conns`).
    let body_timeout =
        tower_http::timeout::RequestBodyTimeoutLayer::new(state.limits.conns.header_timeout);
    Router::new()
        .route("/v1/sync", get(ws::sync))
        .route("/v1/push", post(http::push))
        .route("/v1/pull", post(http::pull))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/v1/admin/snapshot", get(admin::snapshot))
        .route("/v1/admin/state", get(admin::state))
        .route("/v1/admin/explain", post(admin::explain))
        .layer(body_limit)
        .layer(body_timeout)
        .with_state(state)
}

/// An error answer with a stable code.
pub struct AppError {
    pub(crate) status: StatusCode,
    pub(crate) code: String,
    pub(crate) message: String,
}

impl AppError {
    pub(crate) fn new(status: StatusCode, code: &str, message: impl Into<String>) -> AppError {
        AppError {
            status,
            code: code.to_owned(),
            message: message.into(),
        }
    }

    /// An engine error the server met answering a request (a failed read of its own
    /// state): 500 with the engine's code and message.
    pub(crate) fn engine(e: warren_core::Error) -> AppError {
        AppError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            e.code.as_str(),
            e.message,
        )
    }
}

impl IntoResponse for AppError {
    fn into_response(self) -> Response {
        (
            self.status,
            Json(serde_json::json!({ "code": self.code, "message": self.message })),
        )
            .into_response()
    }
}

async fn readyz(State(s): State<AppState>) -> Response {
    let ready = s.ready.get() && !*s.shutdown.borrow();
    let r = &s.metrics.region;
    if r.name().is_none() {
        return if ready {
            "ready\n".into_response()
        } else {
            (StatusCode::SERVICE_UNAVAILABLE, "not ready\n").into_response()
        };
    }
    // A region of many: ready when caught up at start, reaching an etcd quorum, and
    // not diverged; the body says where it stands.
    let ready = ready && r.etcd_ok.load(Ordering::Relaxed) && !r.diverged.load(Ordering::Relaxed);
    let mut body = r.summary();
    body["ready"] = ready.into();
    body["position"] = s.metrics.position.load(Ordering::Relaxed).into();
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(body)).into_response()
}

async fn metrics(State(s): State<AppState>) -> Response {
    (
        [("content-type", "text/plain; version=0.0.4")],
        s.metrics.render(),
    )
        .into_response()
}

/// The connection a request came on (a request extension set by the accept loop,
/// `crate::conns`); a detached one when served otherwise (tests).
pub(crate) type ConnExt = Option<axum::Extension<Arc<Conn>>>;

pub(crate) fn conn_of(c: ConnExt) -> Arc<Conn> {
    c.map(|axum::Extension(c)| c).unwrap_or_else(Conn::detached)
}

/// Verifies a request's bearer token; once one verified, its connection counts as
/// authenticated (see [`crate::conns`]).
pub(crate) async fn verify(
    s: &AppState,
    headers: &HeaderMap,
    conn: &Conn,
) -> Result<Value, AppError> {
    let token = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    let verified = s.verifier.verify_async(token).await;
    if verified.is_ok() {
        conn.promote();
    }
    verified.map_err(|e| {
        let status = if e.code() == "AUTH_CONFIG" {
            StatusCode::INTERNAL_SERVER_ERROR
        } else {
            StatusCode::UNAUTHORIZED
        };
        AppError::new(status, e.code(), e.to_string())
    })
}

/// Takes `n` from the budget of `auth`'s identity for an HTTP request, waiting for it
/// up to `max_wait`: `429 RATE_LIMITED` when it would take longer.
pub(crate) async fn take_http(
    s: &AppState,
    auth: &Value,
    budget: Budget,
    n: u64,
) -> Result<(), AppError> {
    s.identities_for(auth)
        .take_waiting(&subject(auth), budget, n)
        .await
        .map_err(|r| http_refused(s, auth, r))
}

/// `429 RATE_LIMITED`.
pub(crate) fn http_refused(s: &AppState, auth: &Value, r: Refused) -> AppError {
    let Refused::RateLimited(budget) = r;
    s.metrics.rate_limited(budget.as_str());
    AppError::new(
        StatusCode::TOO_MANY_REQUESTS,
        codes::RATE_LIMITED,
        s.limits
            .rate_limited_message(budget, s.limits.is_service(auth)),
    )
}

/// The answer when the server is stopping.
pub(crate) fn stopping() -> AppError {
    AppError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        codes::SHUTTING_DOWN,
        "the server is stopping",
    )
}

fn check_client_id(id: &str) -> Result<(), String> {
    if id.is_empty() || id.len() > 128 || id.chars().any(char::is_control) {
        Err("a client id is 1 to 128 bytes with no control characters".into())
    } else {
        Ok(())
    }
}

/// The client id as the server keys it (see [`warren_core::exec::scoped_client_id`]):
/// the client computes the same form for its optimistic runs. The client never sees it.
pub use warren_core::exec::{scoped_client_id, subject};
