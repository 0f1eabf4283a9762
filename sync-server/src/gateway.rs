//! The gateway: WebSocket sync and HTTP endpoints.
//!
//! | route | what |
//! |---|---|
//! | `GET /v1/sync` | WebSocket: binary frames of `docs/PROTOCOL.md` |
//! | `POST /v1/push` | JSON commits with a bearer token; answers with their outcomes |
//! | `POST /v1/pull` | JSON cursors with a bearer token; answers with snapshots |
//! | `GET /healthz` | the process is up |
//! | `GET /readyz` | the log is replayed and commits are being served |
//! | `GET /metrics` | Prometheus text |
//!
//! The gateway verifies tokens and writes the verified claims into each commit, so
//! every region evaluates rules with the same `auth`.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use futures_util::{SinkExt, StreamExt};
use tokio::sync::{mpsc, oneshot, watch};
use warren_core::exec::{Commit, Op};
use warren_core::protocol::{
    codes, frame_version, ClientFrame, CommitResult, ServerFrame, PROTOCOL_VERSION,
};
use warren_core::Value;

use crate::auth::Verifier;
use crate::limits::{Budget, Identities, Rate, Slots};
use crate::metrics::Metrics;
use crate::queue::{self, FrameRx, Received};
use crate::region::{Connect, RegionMsg, RegionTx};

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
}

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
            hello_timeout: Duration::from_secs(10),
            write_timeout: Duration::from_secs(30),
            max_connections: 10_000,
            max_connections_per_identity: 64,
            commits_per_sec: 200,
            commit_burst: 2000,
            frames_per_sec: 200,
            frame_burst: 1000,
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
        Identities::new(
            self.max_connections_per_identity,
            Self::rate(self.commits_per_sec, self.commit_burst),
            Self::rate(self.frames_per_sec, self.frame_burst),
        )
    }
}

#[derive(Clone)]
pub struct AppState {
    pub seq: mpsc::Sender<Commit>,
    pub region: RegionTx,
    pub verifier: Verifier,
    pub metrics: Arc<Metrics>,
    pub limits: GatewayLimits,
    pub ready: Arc<AtomicBool>,
    pub next_conn: Arc<AtomicU64>,
    pub shutdown: watch::Receiver<bool>,
    /// Per-identity connection counts and rate budgets.
    pub identities: Arc<Identities>,
    /// Open sync connections, against `limits.max_connections`.
    pub slots: Arc<Slots>,
}

pub fn app(state: AppState) -> Router {
    let body_limit = axum::extract::DefaultBodyLimit::max(state.limits.max_frame_bytes);
    Router::new()
        .route("/v1/sync", get(sync))
        .route("/v1/push", post(push))
        .route("/v1/pull", post(pull))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .layer(body_limit)
        .with_state(state)
}

/// An error answer with a stable code.
pub struct AppError {
    status: StatusCode,
    code: String,
    message: String,
}

impl AppError {
    fn new(status: StatusCode, code: &str, message: impl Into<String>) -> AppError {
        AppError {
            status,
            code: code.to_owned(),
            message: message.into(),
        }
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
    if s.ready.load(Ordering::Relaxed) && !*s.shutdown.borrow() {
        "ready\n".into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready\n").into_response()
    }
}

async fn metrics(State(s): State<AppState>) -> Response {
    (
        [("content-type", "text/plain; version=0.0.4")],
        s.metrics.render(),
    )
        .into_response()
}

async fn verify(s: &AppState, headers: &HeaderMap) -> Result<Value, AppError> {
    let token = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    s.verifier.verify_async(token).await.map_err(|e| {
        let status = if e.code() == "AUTH_CONFIG" {
            StatusCode::INTERNAL_SERVER_ERROR
        } else {
            StatusCode::UNAUTHORIZED
        };
        AppError::new(status, e.code(), e.to_string())
    })
}

/// Takes `n` from an identity's budget for an HTTP request: `429 RATE_LIMITED` when
/// it is short.
fn take_http(s: &AppState, sub: &str, budget: Budget, n: u64) -> Result<(), AppError> {
    if s.identities.take(sub, budget, n) {
        return Ok(());
    }
    s.metrics.rate_limited(budget.as_str());
    Err(AppError::new(
        StatusCode::TOO_MANY_REQUESTS,
        codes::RATE_LIMITED,
        format!(
            "this identity sends more {} than it may; retry later",
            budget.as_str()
        ),
    ))
}

/// The answer when the server is stopping.
fn stopping() -> AppError {
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

fn result_json(seq: u64, r: &CommitResult) -> serde_json::Value {
    match r {
        CommitResult::Committed { position, result } => serde_json::json!({
            "seq": seq, "status": "committed", "position": position, "result": result.to_json()
        }),
        CommitResult::Rejected { code, message } => serde_json::json!({
            "seq": seq, "status": "rejected", "code": code, "message": message
        }),
        CommitResult::Duplicate => serde_json::json!({ "seq": seq, "status": "duplicate" }),
        CommitResult::OutOfOrder { expected } => serde_json::json!({
            "seq": seq, "status": "out_of_order", "expected": expected
        }),
    }
}

/// `POST /v1/push`: `{"client_id": "...", "commits": [{"seq": 1, "function": "f",
/// "args": {...}} | {"seq": 2, "source": "..."}]}` → `{"outcomes": [...]}`.
async fn push(
    State(s): State<AppState>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Result<Response, AppError> {
    let auth = verify(&s, &headers).await?;
    let sub = subject(&auth);
    take_http(&s, &sub, Budget::Frames, 1)?;
    if body.len() > s.limits.max_frame_bytes {
        return Err(AppError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            codes::FRAME_TOO_LARGE,
            "the request is too large",
        ));
    }
    let bad = |m: &str| AppError::new(StatusCode::BAD_REQUEST, codes::BAD_FRAME, m);
    let req: serde_json::Value =
        serde_json::from_slice(&body).map_err(|e| bad(&format!("invalid JSON: {e}")))?;
    let client_id = req["client_id"]
        .as_str()
        .ok_or_else(|| bad("client_id is required"))?
        .to_owned();
    check_client_id(&client_id).map_err(|m| bad(&m))?;
    let commits = req["commits"]
        .as_array()
        .ok_or_else(|| bad("commits is required"))?;
    if commits.len() > s.limits.max_commits_per_push {
        return Err(AppError::new(
            StatusCode::BAD_REQUEST,
            codes::TOO_MANY_COMMITS,
            "too many commits in one push",
        ));
    }
    // Check every commit before sending any: a bad request changes nothing.
    let mut parsed = Vec::with_capacity(commits.len());
    for c in commits {
        let seq = c["seq"]
            .as_u64()
            .filter(|n| *n > 0)
            .ok_or_else(|| bad("each commit needs a seq of 1 or more"))?;
        let op = if let Some(f) = c["function"].as_str() {
            let args = Value::from_json(&c["args"]).map_err(|e| bad(&e.to_string()))?;
            Op::Call {
                function: f.to_owned(),
                args,
            }
        } else if let Some(src) = c["source"].as_str() {
            Op::Run {
                source: src.to_owned(),
            }
        } else {
            return Err(bad("each commit needs a function or a source"));
        };
        let schema_version = c["schema_version"].as_str().unwrap_or("").to_owned();
        parsed.push((seq, op, schema_version));
    }
    take_http(&s, &sub, Budget::Commits, parsed.len() as u64)?;
    let client_id = scoped_client_id(&auth, &client_id);
    let mut waits = Vec::new();
    for (seq, op, schema_version) in parsed {
        let (tx, rx) = oneshot::channel();
        s.region
            .send(RegionMsg::Wait {
                client_id: client_id.clone(),
                seq,
                reply: tx,
            })
            .map_err(|_| stopping())?;
        s.seq
            .send(Commit {
                client_id: client_id.clone(),
                client_seq: seq,
                schema_version,
                timestamp: 0,
                auth: auth.clone(),
                op,
            })
            .await
            .map_err(|_| stopping())?;
        waits.push((seq, rx));
    }
    let mut outcomes = Vec::new();
    for (seq, rx) in waits {
        let r = rx.await.map_err(|_| {
            AppError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                codes::SHUTTING_DOWN,
                "the server stopped before answering",
            )
        })?;
        outcomes.push(result_json(seq, &r));
    }
    Ok(Json(serde_json::json!({ "outcomes": outcomes })).into_response())
}

/// `POST /v1/pull`: `{"client_id": "...", "partitions": {"user:ann": 12}}` → the
/// partitions the caller may read and snapshots of those changed since the cursors.
async fn pull(
    State(s): State<AppState>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Result<Response, AppError> {
    let auth = verify(&s, &headers).await?;
    take_http(&s, &subject(&auth), Budget::Frames, 1)?;
    let auth_for_id = auth.clone();
    let bad = |m: &str| AppError::new(StatusCode::BAD_REQUEST, codes::BAD_FRAME, m);
    let req: serde_json::Value = if body.is_empty() {
        serde_json::json!({})
    } else {
        serde_json::from_slice(&body).map_err(|e| bad(&format!("invalid JSON: {e}")))?
    };
    let partitions: Vec<(String, u64)> = req["partitions"]
        .as_object()
        .map(|o| {
            o.iter()
                .map(|(k, v)| (k.clone(), v.as_u64().unwrap_or(0)))
                .collect()
        })
        .unwrap_or_default();
    let (tx, rx) = oneshot::channel();
    s.region
        .send(RegionMsg::Pull {
            auth,
            client_id: scoped_client_id(&auth_for_id, req["client_id"].as_str().unwrap_or("")),
            partitions,
            reply: tx,
        })
        .map_err(|_| stopping())?;
    let frames = rx
        .await
        .map_err(|_| {
            AppError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                codes::SHUTTING_DOWN,
                "the server stopped",
            )
        })?
        .map_err(|e| {
            AppError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                e.code.as_str(),
                e.message,
            )
        })?;
    let mut out = serde_json::json!({ "snapshots": [] });
    for f in frames {
        match f {
            ServerFrame::Welcome {
                schema_version,
                position,
                partitions,
                ..
            } => {
                out["schema_version"] = schema_version.into();
                out["position"] = position.into();
                out["partitions"] = partitions.into();
            }
            ServerFrame::Snapshot {
                partition,
                position,
                docs,
            } => {
                let docs: Vec<serde_json::Value> = docs
                    .into_iter()
                    .map(|d| serde_json::json!({
                        "collection": d.collection, "id": d.id, "version": d.version, "data": d.data.to_json()
                    }))
                    .collect();
                out["snapshots"]
                    .as_array_mut()
                    .expect("an array")
                    .push(serde_json::json!({ "partition": partition, "position": position, "docs": docs }));
            }
            _ => {}
        }
    }
    Ok(Json(out).into_response())
}

async fn sync(State(s): State<AppState>, ws: WebSocketUpgrade) -> Response {
    let Some(slot) = s.slots.take() else {
        s.metrics.refused(codes::TOO_MANY_CONNECTIONS);
        tracing::info!(
            max = s.limits.max_connections,
            "sync connection refused: too many connections"
        );
        return AppError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            codes::TOO_MANY_CONNECTIONS,
            "the server holds as many sync connections as it may; reconnect later",
        )
        .into_response();
    };
    let max = s.limits.max_frame_bytes;
    ws.max_message_size(max)
        .max_frame_size(max)
        .on_upgrade(move |socket| async move {
            let conn = s.next_conn.fetch_add(1, Ordering::Relaxed);
            let metrics = s.metrics.clone();
            Metrics::add(&metrics.connections_total, 1);
            let (end, linger) = session(s.clone(), socket, conn).await;
            if let Some(code) = end.code {
                tracing::debug!(conn, code, message = %end.message, "sync connection closed");
            } else {
                tracing::debug!(conn, "sync connection closed");
            }
            // After a frame too large the client may still be sending it; closing at
            // once could reset the connection before it reads the Error frame.
            if let Some(stream) = linger {
                tokio::select! {
                    _ = tokio::time::sleep(LINGER) => {}
                    _ = stopped(s.shutdown.clone()) => {}
                }
                drop(stream);
            }
            drop(slot);
        })
}

/// Resolves when the server starts stopping (or its stop signal is gone).
async fn stopped(mut shutdown: watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|v| *v).await;
}

/// How long the final `Error` frame and the close may take to write.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(1);
/// How long a connection is kept open after `FRAME_TOO_LARGE`.
const LINGER: Duration = Duration::from_millis(500);

fn error_frame(code: &str, message: impl Into<String>) -> Message {
    Message::Binary(
        ServerFrame::Error {
            code: code.to_owned(),
            message: message.into(),
        }
        .encode()
        .into(),
    )
}

/// Is this encoded frame an `Error` (after which the connection closes)?
fn is_error_frame(b: &[u8]) -> bool {
    b.get(1) == Some(&0x86)
}

/// Did reading fail because the message or frame is over the size limit?
fn too_large(e: &axum::Error) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = source {
        if let Some(tungstenite::Error::Capacity(_)) = err.downcast_ref::<tungstenite::Error>() {
            return true;
        }
        source = err.source();
    }
    false
}

/// How a session ended: the `Error` frame it sent last, if any.
struct End {
    code: Option<&'static str>,
    message: String,
}

impl End {
    fn quiet() -> End {
        End {
            code: None,
            message: String::new(),
        }
    }

    fn error(code: &'static str, message: impl Into<String>) -> End {
        End {
            code: Some(code),
            message: message.into(),
        }
    }

    fn is_protocol_error(&self) -> bool {
        matches!(
            self.code,
            Some(
                codes::BAD_FRAME
                    | codes::UNEXPECTED_FRAME
                    | codes::UNSUPPORTED_PROTOCOL
                    | codes::FRAME_TOO_LARGE
                    | codes::TOO_MANY_COMMITS
            )
        )
    }
}

type Sink = futures_util::stream::SplitSink<WebSocket, Message>;
type Stream = futures_util::stream::SplitStream<WebSocket>;

/// Sends the one `Error` frame of a connection refused before it started.
async fn refuse(s: &AppState, sink: &mut Sink, end: &End) {
    if let Some(code) = end.code {
        s.metrics.error_sent(code);
        if end.is_protocol_error() {
            Metrics::add(&s.metrics.protocol_errors, 1);
        }
        let _ = tokio::time::timeout(CLOSE_TIMEOUT, async {
            let _ = sink.send(error_frame(code, end.message.clone())).await;
            let _ = sink.close().await;
        })
        .await;
    }
}

/// One sync connection: the `Hello` phase, then a reader (this task) and a writer
/// task. Returns how it ended, and the stream to keep open a little when the client
/// may still be sending.
async fn session(s: AppState, socket: WebSocket, conn: u64) -> (End, Option<Stream>) {
    let (mut sink, mut stream) = socket.split();
    // The first frame must be Hello.
    let first = match tokio::time::timeout(s.limits.hello_timeout, stream.next()).await {
        Ok(Some(Ok(Message::Binary(b)))) => b,
        Ok(Some(Ok(_))) => {
            let end = End::error(
                codes::UNEXPECTED_FRAME,
                "the first frame must be a binary Hello",
            );
            refuse(&s, &mut sink, &end).await;
            return (end, None);
        }
        Ok(Some(Err(e))) if too_large(&e) => {
            let end = End::error(codes::FRAME_TOO_LARGE, too_large_message(&s));
            refuse(&s, &mut sink, &end).await;
            return (end, Some(stream));
        }
        _ => return (End::quiet(), None),
    };
    Metrics::add(&s.metrics.frames_in, 1);
    let hello = match hello(&s, &first).await {
        Ok(h) => h,
        Err(end) => {
            refuse(&s, &mut sink, &end).await;
            return (end, None);
        }
    };
    let Hello {
        client_id,
        auth,
        partitions,
        outbox_from,
    } = hello;
    let sub = subject(&auth);
    // The identity's limits: connections, and the Hello counts as a frame.
    let Some(identity) = s.identities.connect(&sub) else {
        s.metrics.refused(codes::TOO_MANY_CONNECTIONS);
        tracing::info!(conn, sub = %sub, max = s.limits.max_connections_per_identity, "sync connection refused: too many connections for one identity");
        let end = End::error(
            codes::TOO_MANY_CONNECTIONS,
            format!(
                "this identity holds {} sync connections, the most it may",
                s.limits.max_connections_per_identity
            ),
        );
        refuse(&s, &mut sink, &end).await;
        return (end, None);
    };
    if !s.identities.take(&sub, Budget::Frames, 1) {
        let end = rate_limited(&s, conn, &sub, Budget::Frames);
        refuse(&s, &mut sink, &end).await;
        return (end, None);
    }
    // The session keys everything by the scoped id; the client's own id is only used
    // in what it is told.
    let scoped = scoped_client_id(&auth, &client_id);
    let (tx, rx) = queue::channel(s.limits.conn_queue, s.limits.conn_queue_bytes);
    let (close_tx, close_rx) = oneshot::channel::<Message>();
    let mut writer = tokio::spawn(write_loop(
        sink,
        rx,
        close_rx,
        s.limits.write_timeout,
        s.metrics.clone(),
    ));
    if s.region
        .send(RegionMsg::Connect(Connect {
            conn,
            client_id: scoped.clone(),
            auth: auth.clone(),
            partitions,
            outbox_from,
            tx: tx.clone(),
        }))
        .is_err()
    {
        let end = End::error(codes::SHUTTING_DOWN, "the server is stopping");
        return finish(&s, end, close_tx, writer, None).await;
    }
    tracing::debug!(conn, sub = %sub, client = %client_id, "sync connection");
    let stopping = stopped(s.shutdown.clone());
    tokio::pin!(stopping);
    let mut writer_done = false;
    let mut linger = false;
    let end = loop {
        tokio::select! {
            _ = &mut writer => {
                writer_done = true;
                break End::quiet();
            }
            _ = &mut stopping => {
                break End::error(codes::SHUTTING_DOWN, "the server is stopping; reconnect later");
            }
            msg = stream.next() => {
                let b = match msg {
                    Some(Ok(Message::Binary(b))) => b,
                    Some(Ok(Message::Close(_))) | None => break End::quiet(),
                    Some(Err(e)) if too_large(&e) => {
                        linger = true;
                        break End::error(codes::FRAME_TOO_LARGE, too_large_message(&s));
                    }
                    Some(Err(_)) => break End::quiet(),
                    Some(Ok(other)) => {
                        // Text, and WebSocket pings and pongs: they count as frames too.
                        Metrics::add(&s.metrics.frames_in, 1);
                        if !s.identities.take(&sub, Budget::Frames, 1) {
                            break rate_limited(&s, conn, &sub, Budget::Frames);
                        }
                        if let Message::Text(_) = other {
                            break End::error(codes::BAD_FRAME, "frames are binary");
                        }
                        continue;
                    }
                };
                Metrics::add(&s.metrics.frames_in, 1);
                if !s.identities.take(&sub, Budget::Frames, 1) {
                    break rate_limited(&s, conn, &sub, Budget::Frames);
                }
                match ClientFrame::decode(&b) {
                    Ok(ClientFrame::Push { commits }) => {
                        if commits.len() > s.limits.max_commits_per_push {
                            break End::error(codes::TOO_MANY_COMMITS, format!("a push holds at most {} commits", s.limits.max_commits_per_push));
                        }
                        if commits.iter().any(|c| c.seq == 0) {
                            break End::error(codes::BAD_FRAME, "sequence numbers start at 1");
                        }
                        // All of the push or none of it: a client over its budget
                        // resends the whole push after reconnecting.
                        if !s.identities.take(&sub, Budget::Commits, commits.len() as u64) {
                            break rate_limited(&s, conn, &sub, Budget::Commits);
                        }
                        let mut stopped = false;
                        for c in commits {
                            let commit = Commit {
                                client_id: scoped.clone(),
                                client_seq: c.seq,
                                schema_version: c.schema_version,
                                timestamp: 0,
                                auth: auth.clone(),
                                op: c.op,
                            };
                            if s.seq.send(commit).await.is_err() {
                                stopped = true;
                                break;
                            }
                        }
                        if stopped {
                            break End::error(codes::SHUTTING_DOWN, "the server is stopping");
                        }
                    }
                    Ok(ClientFrame::Ping { nonce }) => {
                        let pong = Arc::new(ServerFrame::Pong { nonce }.encode());
                        if tx.try_send(pong).is_err() {
                            // Overflowed: the writer ends the connection with TOO_SLOW.
                            continue;
                        }
                    }
                    Ok(ClientFrame::Hello { .. }) => {
                        break End::error(codes::UNEXPECTED_FRAME, "Hello was already received");
                    }
                    Err(e) => break End::error(codes::BAD_FRAME, e.message),
                }
            }
        }
    };
    drop(identity);
    let writer = if writer_done { None } else { Some(writer) };
    let end = match writer {
        Some(w) => finish(&s, end, close_tx, w, None).await.0,
        None => end,
    };
    let _ = s.region.send(RegionMsg::Disconnect { conn });
    (end, linger.then_some(stream))
}

/// Ends a registered connection: hands the last `Error` frame (if any) to the writer,
/// which sends it before anything still queued, and waits for the writer to close.
async fn finish(
    s: &AppState,
    end: End,
    close_tx: oneshot::Sender<Message>,
    writer: tokio::task::JoinHandle<()>,
    stream: Option<Stream>,
) -> (End, Option<Stream>) {
    if let Some(code) = end.code {
        if end.is_protocol_error() {
            Metrics::add(&s.metrics.protocol_errors, 1);
        }
        s.metrics.error_sent(code);
        let _ = close_tx.send(error_frame(code, end.message.clone()));
    } else {
        drop(close_tx);
    }
    let _ = writer.await;
    (end, stream)
}

fn too_large_message(s: &AppState) -> String {
    format!("a frame is at most {} bytes", s.limits.max_frame_bytes)
}

fn rate_limited(s: &AppState, conn: u64, sub: &str, budget: Budget) -> End {
    s.metrics.rate_limited(budget.as_str());
    let (rate, burst) = match budget {
        Budget::Commits => (s.limits.commits_per_sec, s.limits.commit_burst),
        Budget::Frames => (s.limits.frames_per_sec, s.limits.frame_burst),
    };
    tracing::info!(conn, sub = %sub, budget = budget.as_str(), "rate limited");
    End::error(
        codes::RATE_LIMITED,
        format!(
            "this identity sends more {} than it may ({rate} a second, {burst} at once); reconnect later",
            budget.as_str()
        ),
    )
}

/// A verified `Hello`.
struct Hello {
    client_id: String,
    auth: Value,
    partitions: Vec<(String, u64)>,
    outbox_from: u64,
}

/// Checks the first frame: version, decoding, `Hello`, token, client id, in that order.
async fn hello(s: &AppState, first: &[u8]) -> Result<Hello, End> {
    if let Some(v) = frame_version(first).filter(|v| *v != PROTOCOL_VERSION) {
        return Err(End::error(
            codes::UNSUPPORTED_PROTOCOL,
            format!("protocol version {v} is not supported; this server speaks {PROTOCOL_VERSION}"),
        ));
    }
    let (client_id, token, partitions, outbox_from) = match ClientFrame::decode(first) {
        Ok(ClientFrame::Hello {
            client_id,
            token,
            partitions,
            outbox_from,
            ..
        }) => (client_id, token, partitions, outbox_from),
        Ok(_) => {
            return Err(End::error(
                codes::UNEXPECTED_FRAME,
                "the first frame must be Hello",
            ))
        }
        Err(e) => return Err(End::error(codes::BAD_FRAME, e.message)),
    };
    let auth = s
        .verifier
        .verify_async(&token)
        .await
        .map_err(|e| End::error(e.code(), e.to_string()))?;
    check_client_id(&client_id).map_err(|m| End::error(codes::BAD_CLIENT_ID, m))?;
    Ok(Hello {
        client_id,
        auth,
        partitions,
        outbox_from,
    })
}

/// Writes a connection's queued frames to its socket, in order. Ends after writing an
/// `Error` frame, when the queue overflows (`TOO_SLOW`), when the session hands it a
/// last frame (sent at once, before anything still queued), or when writing one frame
/// takes longer than `write_timeout` (the client does not read: dropped without a
/// word, since nothing more can reach it).
async fn write_loop(
    mut sink: Sink,
    mut rx: FrameRx,
    mut close: oneshot::Receiver<Message>,
    write_timeout: Duration,
    metrics: Arc<Metrics>,
) {
    let last = loop {
        let frame = tokio::select! {
            biased;
            m = &mut close => break m.ok(),
            r = rx.recv() => match r {
                Received::Frame(f) => f,
                Received::Overflowed => {
                    metrics.error_sent(codes::TOO_SLOW);
                    break Some(error_frame(codes::TOO_SLOW, "the connection did not keep up with its frames"));
                }
                Received::Closed => break None,
            },
        };
        let len = frame.len();
        let closing = is_error_frame(&frame);
        if closing {
            if let Ok(ServerFrame::Error { code, .. }) = ServerFrame::decode(&frame) {
                metrics.error_sent(&code);
            }
        }
        let msg = Message::Binary(frame.to_vec().into());
        drop(frame);
        let written = tokio::select! {
            biased;
            m = &mut close => {
                rx.written(len);
                break m.ok();
            }
            // More frames queued: buffer this one (flushed with the last of them).
            r = tokio::time::timeout(write_timeout, async {
                if !closing && rx.has_more() {
                    sink.feed(msg).await
                } else {
                    sink.send(msg).await
                }
            }) => r,
        };
        rx.written(len);
        match written {
            Ok(Ok(())) if !closing => {}
            Ok(Ok(())) => break None,
            Ok(Err(_)) => return,
            Err(_) => {
                metrics.error_sent(codes::TOO_SLOW);
                tracing::info!("dropped a sync connection that did not read for {write_timeout:?}");
                return;
            }
        }
    };
    let _ = tokio::time::timeout(CLOSE_TIMEOUT, async {
        if let Some(m) = last {
            let _ = sink.send(m).await;
        }
        let _ = sink.close().await;
    })
    .await;
}
