//! The gateway's WebSocket half: `GET /v1/sync`. A session reads `Hello` (version,
//! token, client id), registers with the region, then reads pushes and pings while a
//! writer task drains the connection's bounded queue to the socket.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::State;
use axum::response::Response;
use futures_util::{SinkExt, StreamExt};
use tokio::sync::{oneshot, watch};
use warren_core::exec::Commit;
use warren_core::protocol::{
    codes, frame_version, in_version, supported_version, ClientFrame, ServerFrame,
    OLDEST_PROTOCOL_VERSION, PROTOCOL_VERSION,
};
use warren_core::Value;

use super::{check_client_id, scoped_client_id, subject, AppState};
use crate::limits::{Budget, Refused};
use crate::metrics::Metrics;
use crate::queue::{self, FrameRx, Received};
use crate::region::{Connect, RegionMsg};
use warren_core::subscription::SnapshotCursor;

/// The upgrade is not refused for lack of room: until its `Hello` authenticated, a
/// connection holds only a place among those waiting for one (the oldest of which a
/// newcomer closes when they are all taken); its sync slot is taken after `Hello`.
pub(crate) async fn sync(
    State(s): State<AppState>,
    tcp: super::ConnExt,
    ws: WebSocketUpgrade,
) -> Response {
    let tcp = super::conn_of(tcp);
    let max = s.limits.max_frame_bytes;
    ws.max_message_size(max)
        .max_frame_size(max)
        .on_upgrade(move |socket| async move {
            let conn = s.next_conn.fetch_add(1, Ordering::Relaxed);
            let metrics = s.metrics.clone();
            Metrics::add(&metrics.connections_total, 1);
            let (end, linger) = session(s.clone(), socket, conn, tcp).await;
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

/// An `Error` frame in protocol version `version`.
fn error_frame(code: &str, message: impl Into<String>, version: u8) -> Message {
    let f = ServerFrame::Error {
        code: code.to_owned(),
        message: message.into(),
    }
    .encode();
    Message::Binary(in_version(&f, version).into())
}

/// The most bytes of frames a batch (protocol version 2) holds: the frames queued
/// together go as one WebSocket message, up to this, so a client handles one message
/// event for hundreds of confirmations rather than one for each of their frames. A
/// larger frame goes alone.
const BATCH_BYTES: usize = 256 * 1024;

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

/// Sends the one `Error` frame of a connection refused before it started, in protocol
/// version `version`.
async fn refuse(s: &AppState, sink: &mut Sink, end: &End, version: u8) {
    if let Some(code) = end.code {
        s.metrics.error_sent(code);
        if end.is_protocol_error() {
            Metrics::add(&s.metrics.protocol_errors, 1);
        }
        let _ = tokio::time::timeout(CLOSE_TIMEOUT, async {
            let _ = sink
                .send(error_frame(code, end.message.clone(), version))
                .await;
            let _ = sink.close().await;
        })
        .await;
    }
}

/// One sync connection: the `Hello` phase, then a reader (this task) and a writer
/// task. Returns how it ended, and the stream to keep open a little when the client
/// may still be sending.
async fn session(
    s: AppState,
    socket: WebSocket,
    conn: u64,
    tcp: Arc<crate::conns::Conn>,
) -> (End, Option<Stream>) {
    let (mut sink, mut stream) = socket.split();
    // The first frame must be Hello, within the Hello timeout, while the connection
    // keeps its place among those waiting for one (and among the unauthenticated TCP
    // connections): pushed out of either, it is dropped.
    let Some(pending) = s.pending_hellos.enter() else {
        return (End::quiet(), None);
    };
    let first = tokio::select! {
        first = tokio::time::timeout(s.limits.hello_timeout, stream.next()) => first,
        _ = pending.evicted() => return (End::quiet(), None),
        _ = tcp.evicted() => return (End::quiet(), None),
    };
    let first = match first {
        Ok(Some(Ok(Message::Binary(b)))) => b,
        Ok(Some(Ok(_))) => {
            let end = End::error(
                codes::UNEXPECTED_FRAME,
                "the first frame must be a binary Hello",
            );
            refuse(&s, &mut sink, &end, PROTOCOL_VERSION).await;
            return (end, None);
        }
        Ok(Some(Err(e))) if too_large(&e) => {
            let end = End::error(codes::FRAME_TOO_LARGE, too_large_message(&s));
            refuse(&s, &mut sink, &end, PROTOCOL_VERSION).await;
            return (end, Some(stream));
        }
        _ => return (End::quiet(), None),
    };
    Metrics::add(&s.metrics.frames_in, 1);
    // The connection speaks the version of its Hello (one this server speaks; else
    // it is refused in the newest).
    let version = frame_version(&first)
        .filter(|v| supported_version(*v))
        .unwrap_or(PROTOCOL_VERSION);
    let hello = match hello(&s, &first).await {
        Ok(h) => h,
        Err(end) => {
            refuse(&s, &mut sink, &end, version).await;
            return (end, None);
        }
    };
    let Hello {
        client_id,
        auth,
        partitions,
        outbox_from,
    } = hello;
    // Authenticated: out of the waiting pools, into a sync slot if one is free.
    tcp.promote();
    drop(pending);
    let Some(_slot) = s.slots.take() else {
        s.metrics.refused(codes::TOO_MANY_CONNECTIONS);
        tracing::info!(
            conn,
            max = s.limits.max_connections,
            "sync connection refused: too many connections"
        );
        let end = End::error(
            codes::TOO_MANY_CONNECTIONS,
            "the server holds as many sync connections as it may; reconnect later",
        );
        refuse(&s, &mut sink, &end, version).await;
        return (end, None);
    };
    let sub = subject(&auth);
    // A service's budgets or an end user's.
    let identities = s.identities_for(&auth).clone();
    let service = s.limits.is_service(&auth);
    // The identity's limits: connections, and the Hello counts as a frame.
    let Some(identity) = identities.connect(&sub) else {
        s.metrics.refused(codes::TOO_MANY_CONNECTIONS);
        let (max, _, _) = s.limits.of(service);
        tracing::info!(conn, sub = %sub, max, "sync connection refused: too many connections for one identity");
        let end = End::error(
            codes::TOO_MANY_CONNECTIONS,
            format!("this identity holds {max} sync connections, the most it may"),
        );
        refuse(&s, &mut sink, &end, version).await;
        return (end, None);
    };
    if !identities.take(&sub, Budget::Frames, 1) {
        let end = rate_limited(&s, conn, &sub, Budget::Frames, service);
        refuse(&s, &mut sink, &end, version).await;
        return (end, None);
    }
    // A server applies what its log held at its start first, so the welcome is never
    // older than what it confirmed before a restart.
    if let Err(m) = s.ready.wait().await {
        tracing::info!(conn, "sync connection refused: {m}");
        let end = End::error(codes::REGION_UNAVAILABLE, m);
        refuse(&s, &mut sink, &end, version).await;
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
            refuse(&s, &mut sink, &end, version).await;
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
        version,
        close_rx,
        s.limits.write_timeout,
        queue::part_bytes(s.limits.conn_queue_bytes),
        s.metrics.clone(),
    ));
    let (views_tx, views_rx) = tokio::sync::mpsc::channel(1);
    if s.region
        .send(RegionMsg::Connect(Connect {
            conn,
            client_id: scoped.clone(),
            auth: auth.clone(),
            tx: tx.clone(),
            views: views_tx,
        }))
        .is_err()
    {
        let end = End::error(codes::SHUTTING_DOWN, "the server is stopping");
        return finish(&s, end, close_tx, writer, None, version).await;
    }
    // The welcome is computed off the region thread, on a read view of the state, while
    // this session already reads the client's frames; the region brings it up to date
    // when it joins.
    tokio::spawn(catch_up(
        s.clone(),
        conn,
        views_rx,
        sub.clone(),
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
                    Some(Ok(Message::Binary(b))) => Some(b),
                    Some(Ok(Message::Close(_))) | None => break End::quiet(),
                    Some(Err(e)) if too_large(&e) => {
                        linger = true;
                        break End::error(codes::FRAME_TOO_LARGE, too_large_message(&s));
                    }
                    Some(Err(_)) => break End::quiet(),
                    Some(Ok(Message::Text(_))) => {
                        Metrics::add(&s.metrics.frames_in, 1);
                        break End::error(codes::BAD_FRAME, "frames are binary");
                    }
                    // WebSocket pings and pongs count as frames too.
                    Some(Ok(_)) => None,
                };
                Metrics::add(&s.metrics.frames_in, 1);
                // The frame, with the waits for the identity's budgets, as long as the
                // connection has nothing else to do: a client over its budget is slowed
                // (this connection reads nothing meanwhile), not cut off.
                let frame = received(&s, conn, &sub, &scoped, &auth, &tx, expires, version, b);
                tokio::select! {
                    r = frame => match r {
                        Some(end) => break end,
                        None => continue,
                    },
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
                }
            }
        }
    };
    drop(identity);
    let writer = if writer_done { None } else { Some(writer) };
    let end = match writer {
        Some(w) => finish(&s, end, close_tx, w, None, version).await.0,
        None => end,
    };
    let _ = s.region.send(RegionMsg::Disconnect { conn });
    (end, linger.then_some(stream))
}

/// One frame received after `Hello` (`None`: a WebSocket ping or pong): takes its
/// frame token, and for a push the commit tokens and each commit's admission (see
/// `crate::limits`), waiting for them; then hands the commits to the sequencer, or
/// answers a ping. `Some` ends the connection.
#[allow(clippy::too_many_arguments)]
async fn received(
    s: &AppState,
    conn: u64,
    sub: &str,
    scoped: &str,
    auth: &Value,
    tx: &queue::FrameTx,
    expires: tokio::time::Instant,
    version: u8,
    frame: Option<axum::body::Bytes>,
) -> Option<End> {
    // A service's budgets or an end user's.
    let identities = s.identities_for(auth);
    let service = s.limits.is_service(auth);
    if let Err(Refused::RateLimited(b)) = identities.take_waiting(sub, Budget::Frames, 1).await {
        return Some(rate_limited(s, conn, sub, b, service));
    }
    let b = frame?;
    if let Some(v) = frame_version(&b).filter(|v| *v != version) {
        return Some(End::error(
            codes::BAD_FRAME,
            format!("a frame of protocol version {v} on a connection of version {version}"),
        ));
    }
    match ClientFrame::decode(&b) {
        Ok(ClientFrame::Push { .. }) if tokio::time::Instant::now() >= expires => {
            Some(token_expired())
        }
        Ok(ClientFrame::Push { commits }) => {
            if commits.len() > s.limits.max_commits_per_push {
                return Some(End::error(
                    codes::TOO_MANY_COMMITS,
                    format!(
                        "a push holds at most {} commits",
                        s.limits.max_commits_per_push
                    ),
                ));
            }
            if commits.iter().any(|c| c.seq == 0) {
                return Some(End::error(codes::BAD_FRAME, "sequence numbers start at 1"));
            }
            // The commit tokens for the whole push or none.
            if let Err(Refused::RateLimited(b)) = identities
                .take_waiting(sub, Budget::Commits, commits.len() as u64)
                .await
            {
                return Some(rate_limited(s, conn, sub, b, service));
            }
            for c in commits {
                // Each commit waits for the identity's cost budget; a refusal leaves
                // the commits before it sent (the client resends what is not
                // confirmed; each runs once).
                let admitted = match identities.admit(sub).await {
                    Ok(a) => a,
                    Err(Refused::RateLimited(b)) => {
                        return Some(rate_limited(s, conn, sub, b, service))
                    }
                };
                let commit = Commit {
                    client_id: scoped.to_owned(),
                    client_seq: c.seq,
                    schema_version: c.schema_version,
                    timestamp: 0,
                    auth: auth.clone(),
                    op: c.op,
                };
                if s.seq.send(commit).await.is_err() {
                    return Some(End::error(codes::SHUTTING_DOWN, "the server is stopping"));
                }
                admitted.sent();
            }
            None
        }
        Ok(ClientFrame::Ping { nonce }) => {
            // A queue that does not take it overflowed: the writer ends the connection
            // with TOO_SLOW.
            let _ = tx.try_send(Arc::new(ServerFrame::Pong { nonce }.encode()));
            None
        }
        Ok(ClientFrame::Presence { partition, data }) => {
            // The region hands it to the others who hold the partition, if this
            // connection holds it too.
            let _ = s.region.send(RegionMsg::Presence {
                conn,
                from: sub.to_owned(),
                partition,
                data,
            });
            None
        }
        Ok(ClientFrame::Hello { .. }) => Some(End::error(
            codes::UNEXPECTED_FRAME,
            "Hello was already received",
        )),
        Err(e) => Some(End::error(codes::BAD_FRAME, e.message)),
    }
}

/// Ends a registered connection: hands the last `Error` frame (if any) to the writer,
/// which sends it before anything still queued, and waits for the writer to close.
async fn finish(
    s: &AppState,
    end: End,
    close_tx: oneshot::Sender<Message>,
    writer: tokio::task::JoinHandle<()>,
    stream: Option<Stream>,
    version: u8,
) -> (End, Option<Stream>) {
    if let Some(code) = end.code {
        if end.is_protocol_error() {
            Metrics::add(&s.metrics.protocol_errors, 1);
        }
        s.metrics.error_sent(code);
        let _ = close_tx.send(error_frame(code, end.message.clone(), version));
    } else {
        drop(close_tx);
    }
    let _ = writer.await;
    (end, stream)
}

fn too_large_message(s: &AppState) -> String {
    format!("a frame is at most {} bytes", s.limits.max_frame_bytes)
}

fn rate_limited(s: &AppState, conn: u64, sub: &str, budget: Budget, service: bool) -> End {
    s.metrics.rate_limited(budget.as_str());
    tracing::info!(conn, sub = %sub, budget = budget.as_str(), "rate limited");
    End::error(
        codes::RATE_LIMITED,
        s.limits.rate_limited_message(budget, service),
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
    if let Some(v) = frame_version(first).filter(|v| !supported_version(*v)) {
        return Err(End::error(
            codes::UNSUPPORTED_PROTOCOL,
            format!(
                "protocol version {v} is not supported; this server speaks \
                 {OLDEST_PROTOCOL_VERSION} to {PROTOCOL_VERSION}"
            ),
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

/// How long sending one snapshot (all its parts) may take before the connection is
/// dropped as too slow: the read view it is read from is held until then.
const SNAPSHOT_TIMEOUT: Duration = Duration::from_secs(300);

/// How writing one message ended.
enum Wrote {
    Done,
    /// The session handed over a last frame meanwhile: send it, then close.
    Closing(Option<Message>),
    /// The socket failed or the client did not read for `write_timeout`.
    Failed,
}

/// Writes one message, or stops early when the session hands over a last frame.
/// `buffer`: more is queued, so the message may wait in the sink's buffer (flushed with
/// the next).
async fn write_one(
    sink: &mut Sink,
    msg: Message,
    buffer: bool,
    close: &mut oneshot::Receiver<Message>,
    write_timeout: Duration,
    metrics: &Metrics,
) -> Wrote {
    let written = tokio::select! {
        biased;
        m = close => return Wrote::Closing(m.ok()),
        r = tokio::time::timeout(write_timeout, async {
            if buffer {
                sink.feed(msg).await
            } else {
                sink.send(msg).await
            }
        }) => r,
    };
    match written {
        Ok(Ok(())) => Wrote::Done,
        Ok(Err(_)) => Wrote::Failed,
        Err(_) => {
            metrics.error_sent(codes::TOO_SLOW);
            tracing::info!("dropped a sync connection that did not read for {write_timeout:?}");
            Wrote::Failed
        }
    }
}

/// Writes a connection's queued frames to its socket, in order, a queued snapshot as
/// parts of about `part_bytes` read one at a time (see `crate::queue`). Ends after
/// writing an `Error` frame, when the queue overflows (`TOO_SLOW`), when the session
/// hands it a last frame (sent at once, before anything still queued), or when writing
/// one frame takes longer than `write_timeout`, or one snapshot longer than
/// [`SNAPSHOT_TIMEOUT`] (the client does not read: dropped without a word, since
/// nothing more can reach it). In protocol version 2 the frames queued together go as
/// batches (up to [`BATCH_BYTES`]), a snapshot read whole among them; in version 1 each
/// goes alone, its version byte set to 1.
async fn write_loop(
    mut sink: Sink,
    mut rx: FrameRx,
    version: u8,
    mut close: oneshot::Receiver<Message>,
    write_timeout: Duration,
    part_bytes: usize,
    metrics: Arc<Metrics>,
) {
    // Frames held for a batch (only while more are queued).
    let mut batch = Batch::default();
    // Writes what the batch holds (`buffer`: the next write sends it), with what every
    // write of this connection takes.
    macro_rules! batch_write {
        ($buffer:expr) => {
            write_batch(
                &mut sink,
                &mut batch,
                &rx,
                $buffer,
                &mut close,
                write_timeout,
                &metrics,
            )
            .await
        };
    }
    let last = loop {
        let received = tokio::select! {
            biased;
            m = &mut close => break m.ok(),
            r = rx.recv() => r,
        };
        // Version 2: a frame joins the frames held for a batch, unless it is an `Error`
        // (which goes alone) or there is no room left; what is held goes before
        // anything that does not join it. A snapshot may join too: whether it does is
        // known once it is read (below).
        let joins = match &received {
            Received::Frame(f) => version >= 2 && !is_error_frame(f) && batch.fits(f.len()),
            Received::Snapshot(_) => version >= 2,
            _ => false,
        };
        if !joins {
            match batch_write!(true) {
                Wrote::Done => {}
                Wrote::Closing(m) => break m,
                Wrote::Failed => return,
            }
        }
        let frame = match received {
            Received::Frame(f) => f,
            Received::Snapshot(lazy) => {
                let started = tokio::time::Instant::now();
                let mut cursor = SnapshotCursor::default();
                let mut outcome = Wrote::Done;
                while !cursor.done() {
                    if started.elapsed() > SNAPSHOT_TIMEOUT {
                        metrics.error_sent(codes::TOO_SLOW);
                        tracing::info!("dropped a sync connection that did not read a snapshot in {SNAPSHOT_TIMEOUT:?}");
                        outcome = Wrote::Failed;
                        break;
                    }
                    let l = lazy.clone();
                    let mut c = cursor.clone();
                    let read = tokio::task::spawn_blocking(move || {
                        let docs = l.read_part(&mut c, part_bytes);
                        (docs, c)
                    })
                    .await;
                    let docs = match read {
                        Ok((Ok(docs), c)) => {
                            cursor = c;
                            docs
                        }
                        Ok((Err(e), _)) => {
                            tracing::error!("reading a snapshot failed: {e}");
                            outcome = Wrote::Failed;
                            break;
                        }
                        Err(_) => {
                            outcome = Wrote::Failed;
                            break;
                        }
                    };
                    let frame = lazy.snapshot.frame(docs, cursor.done()).encode();
                    metrics.snapshot_part();
                    // A snapshot read whole in one part (a partition just made or small:
                    // the usual case), or a large one's last part, joins the batch as a
                    // frame does when other frames are held or queued (alone, it goes at
                    // once). A burst of writes that made 50 partitions had its 50
                    // snapshots sent as 50 messages, each written and flushed before the
                    // next was read, and the outcomes behind them waited.
                    let together = !batch.is_empty() || rx.has_more();
                    if joins && cursor.done() && together && batch.fits(frame.len()) {
                        batch.push_unqueued(Arc::new(frame));
                        break;
                    }
                    // Else its parts go alone, after what the batch holds.
                    outcome = batch_write!(true);
                    if !matches!(outcome, Wrote::Done) {
                        break;
                    }
                    let msg = Message::Binary(in_version(&frame, version).into());
                    // Parts go out at once: the next is read only when this one is sent.
                    outcome =
                        write_one(&mut sink, msg, false, &mut close, write_timeout, &metrics).await;
                    if !matches!(outcome, Wrote::Done) {
                        break;
                    }
                }
                rx.written(queue::Item::Snapshot(lazy).len());
                // What the batch holds goes once nothing more is queued (until then,
                // more may join it).
                if matches!(outcome, Wrote::Done) && !rx.has_more() {
                    outcome = batch_write!(false);
                }
                match outcome {
                    Wrote::Done => continue,
                    Wrote::Closing(m) => break m,
                    Wrote::Failed => return,
                }
            }
            Received::Overflowed => {
                metrics.error_sent(codes::TOO_SLOW);
                break Some(error_frame(
                    codes::TOO_SLOW,
                    "the connection did not keep up with its frames",
                    version,
                ));
            }
            Received::Closed => break None,
        };
        let len = frame.len();
        let closing = is_error_frame(&frame);
        if closing {
            if let Ok(ServerFrame::Error { code, .. }) = ServerFrame::decode(&frame) {
                metrics.error_sent(&code);
            }
        }
        if joins {
            batch.push_queued(frame);
            if rx.has_more() {
                continue;
            }
            match batch_write!(false) {
                Wrote::Done => continue,
                Wrote::Closing(m) => break m,
                Wrote::Failed => return,
            }
        }
        let msg = Message::Binary(in_version(&frame, version).into());
        drop(frame);
        let buffer = !closing && rx.has_more();
        let wrote = write_one(&mut sink, msg, buffer, &mut close, write_timeout, &metrics).await;
        rx.written(len);
        match wrote {
            Wrote::Done if !closing => {}
            Wrote::Done => break None,
            Wrote::Closing(m) => break m,
            Wrote::Failed => return,
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

/// Frames held to go as one message (protocol version 2): at most [`BATCH_BYTES`] of
/// them, and what they count for in the connection's queue, given back once written.
#[derive(Default)]
struct Batch {
    frames: Vec<queue::Frame>,
    bytes: usize,
    queued: usize,
}

impl Batch {
    fn is_empty(&self) -> bool {
        self.frames.is_empty()
    }

    fn fits(&self, len: usize) -> bool {
        self.bytes + len <= BATCH_BYTES
    }

    /// A frame taken from the queue (counted there until written).
    fn push_queued(&mut self, f: queue::Frame) {
        self.queued += f.len();
        self.push_unqueued(f);
    }

    /// A frame made here (a snapshot read whole: its queue item was given back).
    fn push_unqueued(&mut self, f: queue::Frame) {
        self.bytes += f.len();
        self.frames.push(f);
    }
}

/// Writes the frames held in `batch` as one message, a batch of them (or the one frame
/// alone), and counts them written; nothing when it holds none.
async fn write_batch(
    sink: &mut Sink,
    batch: &mut Batch,
    rx: &FrameRx,
    buffer: bool,
    close: &mut oneshot::Receiver<Message>,
    write_timeout: Duration,
    metrics: &Metrics,
) -> Wrote {
    if batch.is_empty() {
        return Wrote::Done;
    }
    let msg = match batch.frames.as_slice() {
        [one] => one.to_vec(),
        all => ServerFrame::batch(all.iter().map(|f| f.as_slice())),
    };
    let wrote = write_one(
        sink,
        Message::Binary(msg.into()),
        buffer,
        close,
        write_timeout,
        metrics,
    )
    .await;
    rx.written(std::mem::take(&mut batch.queued));
    batch.frames.clear();
    batch.bytes = 0;
    wrote
}

/// Computes a joining connection's welcome on the region's read view, on a blocking
/// thread (a catch-up slot: at most `catch_up_workers` at once, and fewer for one
/// identity), and hands it to the region; again on a newer view if the region sends
/// one (the first came back too late). Ends when the region no longer waits for it.
#[allow(clippy::too_many_arguments)]
async fn catch_up(
    s: AppState,
    conn: u64,
    mut views: tokio::sync::mpsc::Receiver<crate::region::ReadView>,
    sub: String,
    client_id: String,
    auth: Value,
    partitions: Vec<(String, u64)>,
    outbox_from: u64,
) {
    let Some(mut view) = views.recv().await else {
        return; // the region is stopping
    };
    loop {
        // The region drops its end when the connection goes: stop waiting then.
        let permit = tokio::select! {
            p = s.catch_ups.acquire(&sub) => p,
            next = views.recv() => match next {
                Some(v) => {
                    view = v;
                    continue;
                }
                None => return,
            },
        };
        let Some(_permit) = permit else {
            return;
        };
        let at = view.position;
        let (client_id, auth, partitions) = (client_id.clone(), auth.clone(), partitions.clone());
        let computed = tokio::task::spawn_blocking(move || {
            let w = view.welcome(&client_id, &auth, &partitions, outbox_from);
            (w, view)
        })
        .await;
        let Ok((welcome, used)) = computed else {
            tracing::error!("a catch-up task failed");
            return;
        };
        drop(_permit);
        // The view goes back with the welcome: its snapshots are read from it.
        let join = RegionMsg::Join {
            conn,
            at,
            welcome: Box::new(welcome),
            view: used,
        };
        if s.region.send(join).is_err() {
            return;
        }
        match views.recv().await {
            Some(v) => view = v,
            None => return,
        }
    }
}

fn token_expired() -> End {
    End::error(
        crate::auth::AuthError::Expired.code(),
        "the token expired; reconnect with a fresh one",
    )
}

/// When a connection made with these verified claims must end: `exp` plus the leeway
/// (verification guarantees `exp` is a number in the future, within the leeway).
pub(crate) fn expiry(auth: &Value, leeway_secs: u64) -> tokio::time::Instant {
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
