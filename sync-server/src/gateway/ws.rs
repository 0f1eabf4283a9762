//! The gateway's WebSocket half: `GET /v1/sync`. A session reads `Hello` (version,
//! token, client id), registers with the region, then reads pushes and pings while a
//! writer task drains the connection's bounded queue to the socket.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use futures_util::{SinkExt, StreamExt};
use tokio::sync::{oneshot, watch};
use warren_core::exec::Commit;
use warren_core::protocol::{codes, frame_version, ClientFrame, ServerFrame, PROTOCOL_VERSION};
use warren_core::Value;

use super::{check_client_id, scoped_client_id, subject, AppError, AppState};
use crate::limits::Budget;
use crate::metrics::Metrics;
use crate::queue::{self, FrameRx, Received};
use crate::region::{Connect, RegionMsg};

pub(crate) async fn sync(State(s): State<AppState>, ws: WebSocketUpgrade) -> Response {
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
    // A region of many catches up with the global log first, so the welcome is never
    // older than what the client saw elsewhere.
    if let Some(b) = &s.barrier {
        if let Err(m) = b.wait().await {
            tracing::info!(conn, "sync connection refused: {m}");
            let end = End::error(
                codes::REGION_UNAVAILABLE,
                format!("{m}; connect to another region"),
            );
            refuse(&s, &mut sink, &end).await;
            return (end, None);
        }
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
    let (ready_tx, ready_rx) = oneshot::channel();
    if s.region
        .send(RegionMsg::Connect(Connect {
            conn,
            client_id: scoped.clone(),
            auth: auth.clone(),
            tx: tx.clone(),
            ready: ready_tx,
        }))
        .is_err()
    {
        let end = End::error(codes::SHUTTING_DOWN, "the server is stopping");
        return finish(&s, end, close_tx, writer, None).await;
    }
    // The welcome is computed off the region thread, on a read view of the state, while
    // this session already reads the client's frames; the region brings it up to date
    // when it joins.
    tokio::spawn(catch_up(
        s.clone(),
        conn,
        ready_rx,
        scoped.clone(),
        auth.clone(),
        partitions,
        outbox_from,
    ));
    tracing::debug!(conn, sub = %sub, client = %client_id, "sync connection");
    let stopping = stopped(s.shutdown.clone());
    tokio::pin!(stopping);
    // The token's expiry (plus the leeway) ends the connection: nothing it sends after
    // that is committed. The client reconnects with a fresh token.
    let expires = expiry(&auth, s.verifier.leeway_secs());
    let expired = tokio::time::sleep_until(expires);
    tokio::pin!(expired);
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
            _ = &mut expired => {
                break token_expired();
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
                    Ok(ClientFrame::Push { .. }) if tokio::time::Instant::now() >= expires => {
                        break token_expired();
                    }
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

/// Computes a joining connection's welcome on the region's read view, on a blocking
/// thread (at most `catch_up_workers` at once), and hands it to the region.
async fn catch_up(
    s: AppState,
    conn: u64,
    ready: oneshot::Receiver<crate::region::ReadView>,
    client_id: String,
    auth: Value,
    partitions: Vec<(String, u64)>,
    outbox_from: u64,
) {
    let Ok(view) = ready.await else {
        return; // the region is stopping
    };
    let Ok(_permit) = s.catch_ups.acquire().await else {
        return;
    };
    let at = view.position;
    let welcome = tokio::task::spawn_blocking(move || {
        view.welcome(&client_id, &auth, &partitions, outbox_from)
    })
    .await;
    let welcome = match welcome {
        Ok(w) => w,
        Err(e) => Err(warren_core::Error::new(
            warren_core::ErrorCode::Storage,
            format!("the catch-up task failed: {e}"),
        )),
    };
    let _ = s.region.send(RegionMsg::Join { conn, at, welcome });
}

fn token_expired() -> End {
    End::error(
        crate::auth::AuthError::Expired.code(),
        "the token expired; reconnect with a fresh one",
    )
}

/// When a connection made with these verified claims must end: `exp` plus the leeway
/// (verification guarantees `exp` is a number in the future, within the leeway).
fn expiry(auth: &Value, leeway_secs: u64) -> tokio::time::Instant {
    let exp = match auth.get("exp") {
        Value::Int(n) => *n as f64,
        Value::Float(f) => *f,
        _ => 0.0,
    };
    let unix_now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0);
    // At most a year ahead, so the deadline stays representable.
    let left = (exp + leeway_secs as f64 - unix_now).clamp(0.0, 365.0 * 86_400.0);
    tokio::time::Instant::now() + Duration::from_secs_f64(left)
}
