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
use crate::metrics::Metrics;
use crate::region::{Connect, RegionMsg, RegionTx};

/// Limits the gateway enforces per connection.
#[derive(Clone, Debug)]
pub struct GatewayLimits {
    /// The largest frame accepted.
    pub max_frame_bytes: usize,
    /// The most commits in one push.
    pub max_commits_per_push: usize,
    /// Frames queued for one connection before it counts as too slow.
    pub conn_queue: usize,
    /// How long a new connection has to send `Hello`.
    pub hello_timeout: Duration,
}

impl Default for GatewayLimits {
    fn default() -> Self {
        GatewayLimits {
            max_frame_bytes: 1 << 20,
            max_commits_per_push: 1000,
            conn_queue: 4096,
            hello_timeout: Duration::from_secs(10),
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
    pub ready: Arc<AtomicBool>,
    pub next_conn: Arc<AtomicU64>,
    pub shutdown: watch::Receiver<bool>,
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
    let max = s.limits.max_frame_bytes;
    ws.max_message_size(max)
        .max_frame_size(max)
        .on_upgrade(move |socket| session(s, socket))
}

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

async fn session(mut s: AppState, socket: WebSocket) {
    Metrics::add(&s.metrics.connections_total, 1);
    let (mut sink, mut stream) = socket.split();
    let fail = |code: &str, m: String| error_frame(code, m);
    // The first frame must be Hello.
    let first = match tokio::time::timeout(s.limits.hello_timeout, stream.next()).await {
        Ok(Some(Ok(Message::Binary(b)))) => b,
        Ok(Some(Ok(_))) => {
            let _ = sink
                .send(fail(
                    codes::UNEXPECTED_FRAME,
                    "the first frame must be a binary Hello".into(),
                ))
                .await;
            Metrics::add(&s.metrics.protocol_errors, 1);
            return;
        }
        _ => return,
    };
    Metrics::add(&s.metrics.frames_in, 1);
    if let Some(v) = frame_version(&first).filter(|v| *v != PROTOCOL_VERSION) {
        let _ = sink
            .send(fail(
                codes::UNSUPPORTED_PROTOCOL,
                format!(
                    "protocol version {v} is not supported; this server speaks {PROTOCOL_VERSION}"
                ),
            ))
            .await;
        Metrics::add(&s.metrics.protocol_errors, 1);
        return;
    }
    let (client_id, token, partitions, outbox_from) = match ClientFrame::decode(&first) {
        Ok(ClientFrame::Hello {
            client_id,
            token,
            partitions,
            outbox_from,
            ..
        }) => (client_id, token, partitions, outbox_from),
        Ok(_) => {
            let _ = sink
                .send(fail(
                    codes::UNEXPECTED_FRAME,
                    "the first frame must be Hello".into(),
                ))
                .await;
            Metrics::add(&s.metrics.protocol_errors, 1);
            return;
        }
        Err(e) => {
            let _ = sink.send(fail(codes::BAD_FRAME, e.message)).await;
            Metrics::add(&s.metrics.protocol_errors, 1);
            return;
        }
    };
    let auth = match s.verifier.verify_async(&token).await {
        Ok(a) => a,
        Err(e) => {
            let _ = sink.send(fail(e.code(), e.to_string())).await;
            return;
        }
    };
    if let Err(m) = check_client_id(&client_id) {
        let _ = sink.send(fail(codes::BAD_CLIENT_ID, m)).await;
        return;
    }
    // The session keys everything by the scoped id; the client's own id is only used
    // in what it is told.
    let client_id = scoped_client_id(&auth, &client_id);
    let conn = s.next_conn.fetch_add(1, Ordering::Relaxed);
    let (tx, mut rx) = mpsc::channel::<Arc<Vec<u8>>>(s.limits.conn_queue);
    if s.region
        .send(RegionMsg::Connect(Connect {
            conn,
            client_id: client_id.clone(),
            auth: auth.clone(),
            partitions,
            outbox_from,
            tx,
        }))
        .is_err()
    {
        let _ = sink
            .send(fail(codes::SHUTTING_DOWN, "the server is stopping".into()))
            .await;
        return;
    }
    loop {
        tokio::select! {
            out = rx.recv() => match out {
                Some(bytes) => {
                    let closing = is_error_frame(&bytes);
                    if sink.send(Message::Binary(bytes.to_vec().into())).await.is_err() || closing {
                        break;
                    }
                }
                None => {
                    let _ = sink.send(fail(codes::TOO_SLOW, "the connection did not keep up with its frames".into())).await;
                    break;
                }
            },
            msg = stream.next() => match msg {
                Some(Ok(Message::Binary(b))) => {
                    Metrics::add(&s.metrics.frames_in, 1);
                    match ClientFrame::decode(&b) {
                        Ok(ClientFrame::Push { commits }) => {
                            if commits.len() > s.limits.max_commits_per_push {
                                let _ = sink.send(fail(codes::TOO_MANY_COMMITS, format!("a push holds at most {} commits", s.limits.max_commits_per_push))).await;
                                Metrics::add(&s.metrics.protocol_errors, 1);
                                break;
                            }
                            if commits.iter().any(|c| c.seq == 0) {
                                let _ = sink.send(fail(codes::BAD_FRAME, "sequence numbers start at 1".into())).await;
                                Metrics::add(&s.metrics.protocol_errors, 1);
                                break;
                            }
                            let mut stopped = false;
                            for c in commits {
                                let commit = Commit {
                                    client_id: client_id.clone(),
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
                                let _ = sink.send(fail(codes::SHUTTING_DOWN, "the server is stopping".into())).await;
                                break;
                            }
                        }
                        Ok(ClientFrame::Ping { nonce }) => {
                            let pong = ServerFrame::Pong { nonce }.encode();
                            if sink.send(Message::Binary(pong.into())).await.is_err() {
                                break;
                            }
                        }
                        Ok(ClientFrame::Hello { .. }) => {
                            let _ = sink.send(fail(codes::UNEXPECTED_FRAME, "Hello was already received".into())).await;
                            Metrics::add(&s.metrics.protocol_errors, 1);
                            break;
                        }
                        Err(e) => {
                            let _ = sink.send(fail(codes::BAD_FRAME, e.message)).await;
                            Metrics::add(&s.metrics.protocol_errors, 1);
                            break;
                        }
                    }
                }
                Some(Ok(Message::Text(_))) => {
                    let _ = sink.send(fail(codes::BAD_FRAME, "frames are binary".into())).await;
                    Metrics::add(&s.metrics.protocol_errors, 1);
                    break;
                }
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => break,
                Some(Ok(_)) => {}
            },
            _ = s.shutdown.changed() => {
                let _ = sink.send(fail(codes::SHUTTING_DOWN, "the server is stopping; reconnect later".into())).await;
                break;
            }
        }
    }
    let _ = s.region.send(RegionMsg::Disconnect { conn });
    let _ = sink.close().await;
}
