//! A native client: the engine's [`Replica`] driven over a WebSocket, for tests and
//! tools. The browser drives the same replica from wasm.
//!
//! A background task keeps a connection up while the client is online: it connects,
//! sends `Hello` with the replica's cursors, sends every pending commit, feeds each
//! frame it receives to the replica, and reconnects with exponential backoff and
//! jitter when the connection drops. Every frame received is also recorded, so tests
//! can assert on exactly what the server sent.

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures_util::{SinkExt, StreamExt};
use tokio::sync::{watch, Notify};
use tokio_tungstenite::tungstenite::Message;
use warren_core::exec::Op;
use warren_core::protocol::{ClientFrame, ServerFrame};
use warren_core::replica::{Event, Local, Replica};
use warren_core::storage::MemoryStore;
use warren_core::{Error, Value};

/// How to reach the server and who we are.
#[derive(Clone, Debug)]
pub struct ClientOptions {
    /// `ws://host:port/v1/sync`.
    pub url: String,
    /// Other regions of the same deployment (`ws://…/v1/sync` each): each connection
    /// goes to one of `url` and these, at random (a region that refuses or drops the
    /// client is then left for another at the next attempt).
    pub regions: Vec<String>,
    pub token: String,
    pub client_id: String,
    /// The schema to start with (offline first runs); the server's replaces it.
    pub schema: Option<String>,
    /// Claims for local rule checks (normally the token's payload).
    pub auth: Value,
    /// Backoff between reconnects: from `min` doubling to `max`, with jitter.
    pub backoff_min: Duration,
    pub backoff_max: Duration,
    /// Seed for the jitter (tests pass one; the default mixes in the clock).
    pub seed: u64,
}

impl ClientOptions {
    pub fn new(url: &str, token: &str, client_id: &str) -> ClientOptions {
        ClientOptions {
            url: url.to_owned(),
            regions: Vec::new(),
            token: token.to_owned(),
            client_id: client_id.to_owned(),
            schema: None,
            auth: Value::Null,
            backoff_min: Duration::from_millis(50),
            backoff_max: Duration::from_secs(5),
            seed: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(1),
        }
    }
}

struct Shared {
    replica: Mutex<Replica<MemoryStore>>,
    events: Mutex<Vec<Event>>,
    received: Mutex<Vec<ServerFrame>>,
    changed: Notify,
    outgoing: Notify,
    connects: std::sync::atomic::AtomicU64,
}

/// A native client. Dropping it stops its connection task.
pub struct Client {
    shared: Arc<Shared>,
    online: watch::Sender<bool>,
    task: Option<tokio::task::JoinHandle<()>>,
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

impl Client {
    /// Starts a client with an in-memory replica, online.
    pub fn start(opts: ClientOptions) -> Result<Client, Error> {
        Client::start_with(opts, MemoryStore::new(), true)
    }

    /// Starts a client on a given store (to resume one), online or not.
    pub fn start_with(
        opts: ClientOptions,
        store: MemoryStore,
        online: bool,
    ) -> Result<Client, Error> {
        let mut replica = Replica::open(store, &opts.client_id, opts.schema.as_deref())?;
        replica.set_auth(opts.auth.clone());
        let shared = Arc::new(Shared {
            replica: Mutex::new(replica),
            events: Mutex::new(Vec::new()),
            received: Mutex::new(Vec::new()),
            changed: Notify::new(),
            outgoing: Notify::new(),
            connects: Default::default(),
        });
        let (online_tx, online_rx) = watch::channel(online);
        let task = tokio::spawn(connection_loop(shared.clone(), opts, online_rx));
        Ok(Client {
            shared,
            online: online_tx,
            task: Some(task),
        })
    }

    /// Makes a write (optimistic at once, queued for the server).
    pub fn mutate(&self, op: Op) -> Result<Local, Error> {
        let r = self.replica().mutate(op, now_ms());
        self.take_replica_events();
        self.shared.outgoing.notify_one();
        r
    }

    pub fn call(&self, function: &str, args: Value) -> Result<Local, Error> {
        self.mutate(Op::Call {
            function: function.to_owned(),
            args,
        })
    }

    pub fn run(&self, source: &str) -> Result<Local, Error> {
        self.mutate(Op::Run {
            source: source.to_owned(),
        })
    }

    /// Queries the view.
    pub fn query(&self, source: &str) -> Result<Value, Error> {
        self.replica().query(source)
    }

    pub fn replica(&self) -> std::sync::MutexGuard<'_, Replica<MemoryStore>> {
        self.shared.replica.lock().expect("replica lock")
    }

    fn take_replica_events(&self) {
        let evs = self.replica().take_events();
        if !evs.is_empty() {
            self.shared.events.lock().expect("events lock").extend(evs);
            self.shared.changed.notify_waiters();
        }
    }

    /// The events so far (confirmations, rejections, live query changes...).
    pub fn take_events(&self) -> Vec<Event> {
        self.take_replica_events();
        std::mem::take(&mut *self.shared.events.lock().expect("events lock"))
    }

    /// Every frame received from the server so far.
    pub fn received(&self) -> Vec<ServerFrame> {
        self.shared.received.lock().expect("frames lock").clone()
    }

    /// How many times a connection was established.
    pub fn connects(&self) -> u64 {
        self.shared
            .connects
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Goes offline (closes the connection, stops reconnecting) or back online. Going
    /// offline takes effect before this returns: no write made after it is sent until
    /// the client is online again.
    pub fn set_online(&self, online: bool) {
        let mut r = self.replica();
        if !online {
            r.disconnected();
        }
        let _ = self.online.send(online);
    }

    /// Waits until `check` holds on the replica, up to `timeout`. Returns whether it did.
    pub async fn wait_until(
        &self,
        timeout: Duration,
        mut check: impl FnMut(&mut Replica<MemoryStore>) -> bool,
    ) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let notified = self.shared.changed.notified();
            if check(&mut self.replica()) {
                return true;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return check(&mut self.replica());
            }
        }
    }

    /// Waits until no commit is pending.
    pub async fn wait_synced(&self, timeout: Duration) -> bool {
        self.wait_until(timeout, |r| r.pending().is_empty()).await
    }

    /// Stops the connection task and returns the replica's store (to resume later).
    pub async fn shutdown(mut self) -> MemoryStore {
        if let Some(task) = self.task.take() {
            task.abort();
            let _ = task.await;
        }
        let shared = self.shared.clone();
        drop(self);
        let shared = Arc::try_unwrap(shared)
            .ok()
            .expect("the connection task holds no reference after it stopped");
        shared
            .replica
            .into_inner()
            .expect("replica lock")
            .into_store()
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        if let Some(t) = &self.task {
            t.abort();
        }
    }
}

/// splitmix64, for jitter.
fn next_rand(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

async fn connection_loop(
    shared: Arc<Shared>,
    opts: ClientOptions,
    mut online: watch::Receiver<bool>,
) {
    let mut rng = opts.seed;
    let mut backoff = opts.backoff_min;
    loop {
        if !*online.borrow() {
            if online.changed().await.is_err() {
                return;
            }
            continue;
        }
        let url = if opts.regions.is_empty() {
            opts.url.as_str()
        } else {
            let i = next_rand(&mut rng) as usize % (opts.regions.len() + 1);
            if i == 0 {
                opts.url.as_str()
            } else {
                opts.regions[i - 1].as_str()
            }
        };
        match session(&shared, opts.token.as_str(), url, &mut online).await {
            Ok(()) => backoff = opts.backoff_min,
            Err(e) => tracing::debug!(error = %e, "sync connection failed"),
        }
        shared.replica.lock().expect("replica lock").disconnected();
        if !*online.borrow() {
            continue;
        }
        // Full jitter: a random wait up to the current backoff.
        let wait = backoff.mul_f64((next_rand(&mut rng) % 1000) as f64 / 1000.0);
        tokio::select! {
            _ = tokio::time::sleep(wait.max(Duration::from_millis(5))) => {}
            _ = online.changed() => {}
        }
        backoff = (backoff * 2).min(opts.backoff_max);
    }
}

async fn session(
    shared: &Arc<Shared>,
    token: &str,
    url: &str,
    online: &mut watch::Receiver<bool>,
) -> Result<(), String> {
    // No Nagle (browsers set TCP_NODELAY on WebSockets too): frames are small.
    // A server that accepts but never answers (stopped, or cut off) is left for
    // another attempt.
    let (ws, _) = tokio::time::timeout(
        Duration::from_secs(10),
        tokio_tungstenite::connect_async_with_config(url, None, true),
    )
    .await
    .map_err(|_| format!("connecting to {url} timed out"))?
    .map_err(|e| e.to_string())?;
    let (mut sink, mut stream) = ws.split();
    let hello = shared
        .replica
        .lock()
        .expect("replica lock")
        .hello(token)
        .map_err(|e| e.to_string())?;
    sink.send(Message::Binary(hello.encode().into()))
        .await
        .map_err(|e| e.to_string())?;
    shared
        .connects
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let mut welcomed = false;
    loop {
        // Send what is pending. The session ends when the client is offline now, or
        // went offline and back since the welcome: `set_online(false)` marks the
        // replica disconnected under its lock, and the flag may be true again before
        // this task runs, so the flag alone can miss it. A new session then sends
        // Hello and everything unconfirmed again.
        let out: Option<Vec<ClientFrame>> = {
            let mut r = shared.replica.lock().expect("replica lock");
            let went_offline = welcomed && !r.is_connected();
            if *online.borrow() && !went_offline {
                Some(r.outgoing())
            } else {
                r.disconnected();
                None
            }
        };
        let Some(out) = out else {
            let _ = tokio::time::timeout(Duration::from_millis(500), sink.close()).await;
            return Ok(());
        };
        for f in out {
            sink.send(Message::Binary(f.encode().into()))
                .await
                .map_err(|e| e.to_string())?;
        }
        tokio::select! {
            msg = stream.next() => {
                let Some(msg) = msg else { return Ok(()) };
                let msg = msg.map_err(|e| e.to_string())?;
                let Message::Binary(b) = msg else {
                    if matches!(msg, Message::Close(_)) { return Ok(()) }
                    continue;
                };
                let mut closing = false;
                {
                    let mut r = shared.replica.lock().expect("replica lock");
                    // This message's frames, and whatever else is ready, before
                    // rebuilding the view.
                    let mut message = Some(b);
                    while let Some(b) = message.take().or_else(|| {
                        match stream.next().now_or_never() {
                            Some(Some(Ok(Message::Binary(b)))) => Some(b),
                            _ => None,
                        }
                    }) {
                        for f in ServerFrame::decode_message(&b).map_err(|e| e.to_string())? {
                            closing |= matches!(f, ServerFrame::Error { .. });
                            welcomed |= matches!(f, ServerFrame::Welcome { .. });
                            shared.received.lock().expect("frames lock").push(f.clone());
                            r.receive(f);
                        }
                    }
                    // Frames that may hold this client's own effects wait for their
                    // outcomes (see `Replica::receive`).
                    r.handle_ready().map_err(|e| e.to_string())?;
                    r.flush().map_err(|e| e.to_string())?;
                    let evs = r.take_events();
                    shared.events.lock().expect("events lock").extend(evs);
                }
                shared.changed.notify_waiters();
                if closing {
                    return Err("the server closed the connection with an error".into());
                }
            }
            _ = shared.outgoing.notified() => {}
            _ = online.changed() => {
                if !*online.borrow() {
                    let _ = tokio::time::timeout(Duration::from_millis(500), sink.close()).await;
                    return Ok(());
                }
            }
        }
    }
}

use futures_util::FutureExt as _;

/// A raw connection that sends and receives frames exactly as given: for tests that
/// play a hostile or hand-built client.
pub struct RawConnection {
    ws: tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >,
    /// Frames of a batch received and not returned yet.
    held: std::collections::VecDeque<ServerFrame>,
}

impl RawConnection {
    pub async fn connect(url: &str) -> Result<RawConnection, String> {
        let (ws, _) = tokio_tungstenite::connect_async_with_config(url, None, true)
            .await
            .map_err(|e| e.to_string())?;
        Ok(RawConnection {
            ws,
            held: Default::default(),
        })
    }

    pub async fn send(&mut self, frame: &ClientFrame) -> Result<(), String> {
        self.send_bytes(frame.encode()).await
    }

    pub async fn send_bytes(&mut self, bytes: Vec<u8>) -> Result<(), String> {
        self.ws
            .send(Message::Binary(bytes.into()))
            .await
            .map_err(|e| e.to_string())
    }

    /// The next frame, or `None` when the connection closed or `timeout` passed.
    pub async fn recv(&mut self, timeout: Duration) -> Option<ServerFrame> {
        loop {
            if let Some(f) = self.held.pop_front() {
                return Some(f);
            }
            let b = self.recv_message(timeout).await?;
            self.held = ServerFrame::decode_message(&b).ok()?.into();
        }
    }

    /// A frame received already, if there is one, without waiting; `None` too when the
    /// connection closed or a message did not decode.
    pub fn ready(&mut self) -> Option<ServerFrame> {
        loop {
            if let Some(f) = self.held.pop_front() {
                return Some(f);
            }
            let b = self.message().now_or_never()??;
            self.held = ServerFrame::decode_message(&b).ok()?.into();
        }
    }

    /// The next message as it came, its bytes undecoded (a frame, or a batch of
    /// them), or `None` when the connection closed or `timeout` passed.
    pub async fn recv_message(&mut self, timeout: Duration) -> Option<Vec<u8>> {
        tokio::time::timeout(timeout, self.message()).await.ok()?
    }

    /// The next binary message, or `None` when the connection closed.
    async fn message(&mut self) -> Option<Vec<u8>> {
        loop {
            match self.ws.next().await?.ok()? {
                Message::Binary(b) => return Some(b.to_vec()),
                Message::Close(_) => return None,
                _ => continue,
            }
        }
    }

    /// Frames until `pred` matches one (returned last), the connection closes, or the
    /// timeout passes.
    pub async fn recv_until(
        &mut self,
        timeout: Duration,
        mut pred: impl FnMut(&ServerFrame) -> bool,
    ) -> Vec<ServerFrame> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut out = Vec::new();
        while let Some(f) = self
            .recv(deadline.saturating_duration_since(tokio::time::Instant::now()))
            .await
        {
            let done = pred(&f);
            out.push(f);
            if done {
                break;
            }
        }
        out
    }
}
