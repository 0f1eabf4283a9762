//! GraphQL over WebSocket: the `graphql-transport-ws` protocol (what the `graphql-ws`
//! npm client, urql, Apollo Client and GraphiQL speak).
//!
//! ```text
//! client                                   server
//! connection_init {payload: {Authorization: "Bearer ..."}}
//!                                          connection_ack
//! subscribe {id, payload: {query, variables}}
//!                                          next {id, payload: {data}}   (each change)
//! complete {id}                            ... or complete {id} when it ends
//! ping                                     pong
//! ```
//!
//! The token comes in `connection_init`'s payload (`Authorization` or `token`), or in
//! the upgrade request's `Authorization` header. The connection closes when the token
//! expires (4403), so a client's `connectionParams` function can bring a fresh one.
//!
//! Limits, as for sync connections: the server's connection slots and the identity's
//! connections (a GraphQL WebSocket counts as one), every message takes a frame token
//! of the identity's budget, messages are at most `max_frame_bytes`, the outgoing queue
//! is bounded (a client that stops reading is dropped), and a connection holds at most
//! `graphql_subscriptions_per_connection` operations.
//!
//! Close codes: 4400 bad message, 4401 subscribe before the ack, 4403 token refused or
//! expired, 4406 no `graphql-transport-ws` subprotocol, 4408 no `connection_init` in
//! time, 4409 an id already in use, 4429 a second `connection_init`, 1013 try again
//! later (rate limited, too many connections, too slow), 1001 the server is stopping.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use futures_util::{SinkExt, StreamExt};
use serde_json::json;
use tokio::sync::{mpsc, oneshot};
use warren_core::protocol::codes as protocol_codes;

use async_graphql::parser::types::OperationType;

use super::{codes, exec, failed_before_running, refusal, with_codes, Caller, Service};
use crate::limits::{Budget, Identities};
use crate::queue::{self, FrameRx, Received};

/// The subprotocol.
pub const PROTOCOL: &str = "graphql-transport-ws";

/// Messages queued for one GraphQL WebSocket before it counts as too slow, and bytes.
const QUEUE_FRAMES: usize = 1024;

fn close(code: u16, reason: &str) -> Message {
    // A close reason is at most 123 bytes.
    let mut r = reason.to_owned();
    if r.len() > 123 {
        let mut end = 120;
        while !r.is_char_boundary(end) {
            end -= 1;
        }
        r.truncate(end);
        r.push_str("...");
    }
    Message::Close(Some(CloseFrame {
        code,
        reason: Utf8Bytes::from(r),
    }))
}

/// Upgrades `GET /v1/graphql` to a GraphQL WebSocket.
pub(crate) async fn upgrade(
    svc: Arc<Service>,
    schema: Result<async_graphql::dynamic::Schema, Arc<str>>,
    tcp: Arc<crate::conns::Conn>,
    headers: HeaderMap,
    ws: WebSocketUpgrade,
) -> Response {
    let schema = match schema {
        Ok(s) => s,
        Err(why) => return refusal(StatusCode::SERVICE_UNAVAILABLE, codes::UNAVAILABLE, &why),
    };
    let header_token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::to_owned);
    let offered = ws
        .requested_protocols()
        .any(|p| p.to_str().is_ok_and(|p| p.trim() == PROTOCOL));
    let max = svc.app.limits.max_frame_bytes;
    ws.protocols([PROTOCOL])
        .max_message_size(max)
        .max_frame_size(max)
        .on_upgrade(move |socket| async move {
            session(svc, schema, tcp, header_token, offered, socket).await;
        })
        .into_response()
}

/// The token in a `connection_init` payload: `Authorization: "Bearer ..."` (any case)
/// or `token`.
fn payload_token(payload: &serde_json::Value) -> Option<String> {
    let o = payload.as_object()?;
    for (k, v) in o {
        if k.eq_ignore_ascii_case("authorization") {
            let s = v.as_str()?;
            return Some(s.strip_prefix("Bearer ").unwrap_or(s).to_owned());
        }
    }
    o.get("token").and_then(|t| t.as_str()).map(str::to_owned)
}

/// Writes queued messages; a close handed over through `close` goes first, and ends.
async fn write_loop(
    mut sink: futures_util::stream::SplitSink<WebSocket, Message>,
    mut rx: FrameRx,
    mut close_rx: oneshot::Receiver<Message>,
    write_timeout: Duration,
) {
    let last = loop {
        let frame = tokio::select! {
            biased;
            m = &mut close_rx => break m.ok(),
            r = rx.recv() => match r {
                Received::Frame(f) => f,
                // Snapshots are for sync connections; nothing queues one here.
                Received::Snapshot(_) => continue,
                Received::Overflowed => break Some(close(1013, "TOO_SLOW: the connection did not keep up with its messages")),
                Received::Closed => break None,
            },
        };
        let len = frame.len();
        let text = match Utf8Bytes::try_from(frame.to_vec()) {
            Ok(t) => t,
            Err(_) => {
                rx.written(len);
                continue;
            }
        };
        let sent = tokio::time::timeout(write_timeout, sink.send(Message::Text(text))).await;
        rx.written(len);
        match sent {
            Ok(Ok(())) => {}
            // Broken, or not read for `write_timeout`: nothing more can reach it.
            _ => return,
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        if let Some(m) = last {
            let _ = sink.send(m).await;
        }
        let _ = sink.close().await;
    })
    .await;
}

/// How a session ended, for the writer to say.
struct End(u16, String);

impl End {
    fn new(code: u16, reason: impl Into<String>) -> End {
        End(code, reason.into())
    }
}

/// One GraphQL WebSocket: `connection_init`, then operations until the client leaves,
/// the token expires or the server stops.
async fn session(
    svc: Arc<Service>,
    schema: async_graphql::dynamic::Schema,
    tcp: Arc<crate::conns::Conn>,
    header_token: Option<String>,
    offered: bool,
    socket: WebSocket,
) {
    let app = &svc.app;
    let (sink, mut stream) = socket.split();
    let (tx, rx) = queue::channel(QUEUE_FRAMES, app.limits.conn_queue_bytes);
    let (close_tx, close_rx) = oneshot::channel();
    let writer = tokio::spawn(write_loop(sink, rx, close_rx, app.limits.write_timeout));
    let send = |v: serde_json::Value| tx.try_send(Arc::new(v.to_string().into_bytes())).is_ok();
    let end = 'end: {
        if !offered {
            break 'end End::new(4406, "Subprotocol not acceptable: use graphql-transport-ws");
        }
        // connection_init, in time, while the connection keeps its place among those
        // waiting to log in (the sync connections' pool) and among the unauthenticated
        // TCP connections: pushed out of either, it is dropped. Its connection slot is
        // taken only once its token verified.
        let Some(pending) = app.pending_hellos.enter() else {
            break 'end End::new(1013, "the server is busy; reconnect later");
        };
        let first = tokio::select! {
            first = tokio::time::timeout(app.limits.hello_timeout, stream.next()) => first,
            _ = pending.evicted() => break 'end End::new(1013, "the server is busy; reconnect later"),
            _ = tcp.evicted() => break 'end End::new(1013, "the server is busy; reconnect later"),
        };
        let first = match first {
            Ok(Some(Ok(Message::Text(t)))) => t,
            Ok(Some(Ok(Message::Close(_)))) | Ok(None) | Ok(Some(Err(_))) => {
                break 'end End::new(1000, "")
            }
            Ok(Some(Ok(_))) => break 'end End::new(4400, "messages are JSON text"),
            Err(_) => break 'end End::new(4408, "Connection initialisation timeout"),
        };
        let msg: serde_json::Value = match serde_json::from_str(&first) {
            Ok(m) => m,
            Err(e) => break 'end End::new(4400, format!("invalid message: {e}")),
        };
        if msg["type"] != "connection_init" {
            break 'end End::new(4401, "Unauthorized: connection_init comes first");
        }
        let token = payload_token(&msg["payload"])
            .or(header_token)
            .unwrap_or_default();
        let auth = match app.verifier.verify_async(&token).await {
            Ok(a) => a,
            Err(e) => break 'end End::new(4403, format!("{}: {e}", e.code())),
        };
        // Authenticated: out of the waiting pools, into a connection slot if one is free.
        tcp.promote();
        drop(pending);
        let Some(_slot) = app.slots.take() else {
            app.metrics.refused(protocol_codes::TOO_MANY_CONNECTIONS);
            break 'end End::new(
                1013,
                format!(
                    "{}: the server holds as many connections as it may; reconnect later",
                    protocol_codes::TOO_MANY_CONNECTIONS
                ),
            );
        };
        let sub = warren_core::exec::subject(&auth);
        let identities: Arc<Identities> = app.identities_for(&auth).clone();
        let Some(_identity) = identities.connect(&sub) else {
            app.metrics.refused(protocol_codes::TOO_MANY_CONNECTIONS);
            break 'end End::new(
                1013,
                format!(
                    "{}: this identity holds as many connections as it may",
                    protocol_codes::TOO_MANY_CONNECTIONS
                ),
            );
        };
        if !identities.take(&sub, Budget::Frames, 1) {
            app.metrics.rate_limited(Budget::Frames.as_str());
            break 'end End::new(
                1013,
                format!("{}: too many messages", protocol_codes::RATE_LIMITED),
            );
        }
        if !send(json!({ "type": "connection_ack" })) {
            break 'end End::new(1013, "TOO_SLOW");
        }
        // As for sync connections: at `exp` plus the leeway.
        let expired = tokio::time::sleep_until(crate::gateway::ws::expiry(
            &auth,
            app.verifier.leeway_secs(),
        ));
        tokio::pin!(expired);
        let stopping = stopped(app.shutdown.clone());
        tokio::pin!(stopping);
        // Operations: id → the task running it. A task says when it is done.
        let mut ops: HashMap<String, tokio::task::AbortHandle> = HashMap::new();
        let (done_tx, mut done_rx) = mpsc::unbounded_channel::<String>();
        let end = loop {
            tokio::select! {
                _ = &mut expired => break End::new(4403, "TOKEN_EXPIRED: the token has expired; connect again with a fresh one"),
                _ = &mut stopping => break End::new(1001, format!("{}: the server is stopping", protocol_codes::SHUTTING_DOWN)),
                Some(id) = done_rx.recv() => { ops.remove(&id); }
                msg = stream.next() => {
                    let text = match msg {
                        Some(Ok(Message::Text(t))) => t,
                        Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                        Some(Ok(Message::Binary(_))) => break End::new(4400, "messages are JSON text"),
                        Some(Ok(Message::Close(_))) | None | Some(Err(_)) => break End::new(1000, ""),
                    };
                    // Over the identity's budget a message waits (this connection reads
                    // nothing meanwhile), as a sync connection's frame does; past
                    // `max_wait` the connection ends.
                    if identities.take_waiting(&sub, Budget::Frames, 1).await.is_err() {
                        app.metrics.rate_limited(Budget::Frames.as_str());
                        break End::new(1013, format!("{}: this identity sends more messages than it may; reconnect later", protocol_codes::RATE_LIMITED));
                    }
                    let msg: serde_json::Value = match serde_json::from_str(&text) {
                        Ok(m) => m,
                        Err(e) => break End::new(4400, format!("invalid message: {e}")),
                    };
                    match msg["type"].as_str() {
                        Some("ping") => {
                            if !send(json!({ "type": "pong" })) { break End::new(1013, "TOO_SLOW"); }
                        }
                        Some("pong") => {}
                        Some("connection_init") => break End::new(4429, "Too many initialisation requests"),
                        Some("complete") => {
                            if let Some(h) = msg["id"].as_str().and_then(|id| ops.remove(id)) {
                                h.abort();
                            }
                        }
                        Some("subscribe") => {
                            let Some(id) = msg["id"].as_str().filter(|i| !i.is_empty() && i.len() <= 128) else {
                                break End::new(4400, "subscribe needs an id of 1 to 128 bytes");
                            };
                            if ops.contains_key(id) {
                                break End::new(4409, format!("Subscriber for {id} already exists"));
                            }
                            let mut request: async_graphql::Request = match serde_json::from_value(msg["payload"].clone()) {
                                Ok(r) => r,
                                Err(e) => break End::new(4400, format!("invalid subscribe payload: {e}")),
                            };
                            app.metrics.graphql.operations.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                            if ops.len() >= app.limits.graphql_subscriptions_per_connection {
                                let e = json!({ "type": "error", "id": id, "payload": [{
                                    "message": format!("a connection holds at most {} operations", app.limits.graphql_subscriptions_per_connection),
                                    "extensions": { "code": codes::TOO_MANY_SUBSCRIPTIONS },
                                }]});
                                if !send(e) { break End::new(1013, "TOO_SLOW"); }
                                continue;
                            }
                            let live = match super::prepare(&mut request) {
                                Err(resp) => {
                                    if !send(json!({ "type": "error", "id": id, "payload": resp.errors })) {
                                        break End::new(1013, "TOO_SLOW");
                                    }
                                    continue;
                                }
                                Ok(ty) => ty == OperationType::Subscription,
                            };
                            let responses = if live {
                                super::as_query(&mut request);
                                exec::live(svc.clone(), schema.clone(), exec::LiveOperation::new(request, auth.clone())).boxed()
                            } else {
                                let caller = Arc::new(Caller::new(app, auth.clone(), None));
                                let schema = schema.clone();
                                futures_util::stream::once(async move { schema.execute(request.data(caller)).await }).boxed()
                            };
                            let task = tokio::spawn(operation(
                                responses,
                                id.to_owned(),
                                tx.clone(),
                                done_tx.clone(),
                            ));
                            ops.insert(id.to_owned(), task.abort_handle());
                        }
                        _ => break End::new(4400, "unknown message type"),
                    }
                }
            }
        };
        for (_, h) in ops.drain() {
            h.abort();
        }
        end
    };
    let End(code, reason) = end;
    let _ = close_tx.send(close(code, &reason));
    drop(tx);
    let _ = writer.await;
}

/// Sends an operation's responses as `next` messages, then `complete` when they end;
/// or `error` alone, when it failed before running (it did not parse or validate).
async fn operation(
    mut responses: futures_util::stream::BoxStream<'static, async_graphql::Response>,
    id: String,
    tx: queue::FrameTx,
    done: mpsc::UnboundedSender<String>,
) {
    let send = |v: serde_json::Value| tx.try_send(Arc::new(v.to_string().into_bytes())).is_ok();
    let mut first = true;
    while let Some(resp) = responses.next().await {
        let resp = with_codes(resp);
        if first && failed_before_running(&resp) {
            send(json!({ "type": "error", "id": id, "payload": resp.errors }));
            let _ = done.send(id);
            return;
        }
        first = false;
        if !send(json!({ "type": "next", "id": id, "payload": resp })) {
            // The queue overflowed: the writer ends the connection.
            let _ = done.send(id);
            return;
        }
    }
    send(json!({ "type": "complete", "id": id }));
    let _ = done.send(id);
}

/// Resolves when the server starts stopping.
async fn stopped(mut shutdown: tokio::sync::watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|v| *v).await;
}
