//! Open TCP connections: the accept loop, a server-wide cap with a reserve for
//! authenticated connections, and the timeouts that keep idle and slow sockets from
//! holding the server.
//!
//! Every accepted connection starts **unauthenticated**: it holds a place in the
//! unauthenticated pool, which may use `max - reserved` of the server's `max` places.
//! It is **promoted** once a token it carried verified (a WebSocket's `Hello`, an HTTP
//! request's bearer token): it then counts against `max` only, so the `reserved` places
//! are always there for users who logged in. When the unauthenticated pool is full, a
//! new connection takes the place of the **oldest** unauthenticated one, which is
//! closed: a flood of sockets that never log in cannot keep a client out for longer
//! than it takes the flood to cycle through the whole pool, and each of its sockets
//! lives only until pushed out. When every place is taken by authenticated connections,
//! a new connection is closed at once.
//!
//! HTTP/1.1 only (no HTTP/2: browsers speak HTTP/1.1 to a plain-HTTP or proxied
//! server, and each HTTP/2 stream would need the same care). A request's headers must
//! arrive within `header_timeout`, and a kept-alive connection that sends no next
//! request within it is closed (hyper's header-read timer starts as soon as the
//! connection waits for a request). A request body must arrive within the same time.
//! WebSocket sessions have their own timeouts (`Hello`, writes): see `gateway::ws`.
//!
//! `docs/PROTOCOL.md` ("Connections") lists the limits and their flags.

use std::collections::BTreeMap;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Notify};

use crate::metrics::Metrics;

/// The connection limits of one server.
#[derive(Clone, Debug)]
pub struct ConnLimits {
    /// Open TCP connections, all together (0: as many as the open-file limit allows,
    /// less a margin for the server's own files: [`auto_max`]).
    pub max: usize,
    /// Places only authenticated connections may take (0: half of `max`).
    pub reserved: usize,
    /// How long a request's headers may take to arrive, how long a kept-alive
    /// connection may wait for its next request, and how long a body may take.
    pub header_timeout: Duration,
}

impl Default for ConnLimits {
    fn default() -> Self {
        ConnLimits {
            max: 0,
            reserved: 0,
            header_timeout: Duration::from_secs(10),
        }
    }
}

/// Files the server keeps open besides connections (log segments, the store, ...).
const FILE_MARGIN: u64 = 256;

/// The connection cap the open-file limit allows: the soft limit less a margin, at
/// least 64, at most a million.
pub fn auto_max() -> usize {
    let soft = open_file_limit().unwrap_or(1024);
    soft.saturating_sub(FILE_MARGIN).clamp(64, 1_000_000) as usize
}

fn open_file_limit() -> Option<u64> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit only writes the struct passed to it.
    (unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } == 0).then_some(lim.rlim_cur)
}

impl ConnLimits {
    /// (max, reserved) with the automatic values filled in.
    pub fn resolved(&self) -> (usize, usize) {
        let max = if self.max == 0 { auto_max() } else { self.max };
        let reserved = if self.reserved == 0 {
            max / 2
        } else {
            self.reserved.min(max.saturating_sub(1))
        };
        (max, reserved)
    }
}

struct State {
    next: u64,
    /// Unauthenticated connections, oldest first.
    unauthenticated: BTreeMap<u64, Arc<Conn>>,
    authenticated: usize,
}

/// The open connections of one server (or another pool of places with the same
/// rule: the WebSocket sessions waiting for `Hello`, [`Conns::pool`]).
pub struct Conns {
    state: Mutex<State>,
    max: usize,
    reserved: usize,
    metrics: Option<Arc<Metrics>>,
}

/// One open connection, as its handlers see it (a request extension).
pub struct Conn {
    id: u64,
    conns: Weak<Conns>,
    authenticated: AtomicBool,
    evicted: AtomicBool,
    evict: Notify,
}

impl Conn {
    /// The connection's token verified: it leaves the unauthenticated pool.
    pub fn promote(&self) {
        if self.authenticated.swap(true, Ordering::AcqRel) {
            return;
        }
        if let Some(conns) = self.conns.upgrade() {
            let mut s = conns.state.lock().expect("conns lock");
            if s.unauthenticated.remove(&self.id).is_some() {
                s.authenticated += 1;
            }
        }
    }

    pub fn is_authenticated(&self) -> bool {
        self.authenticated.load(Ordering::Acquire)
    }

    /// Resolves when the connection was pushed out of the unauthenticated pool.
    pub async fn evicted(&self) {
        let notified = self.evict.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        if self.evicted.load(Ordering::Acquire) {
            return;
        }
        notified.await;
    }

    /// A connection that belongs to no pool (tests, tools).
    pub fn detached() -> Arc<Conn> {
        Arc::new(Conn {
            id: 0,
            conns: Weak::new(),
            authenticated: AtomicBool::new(true),
            evicted: AtomicBool::new(false),
            evict: Notify::new(),
        })
    }
}

/// Holds a connection's place until the socket is dropped.
struct Place(Arc<Conn>);

/// A place in a [`Conns::pool`].
pub struct Ticket(Place);

impl Ticket {
    /// Resolves when a newcomer pushed this ticket out.
    pub async fn evicted(&self) {
        self.0 .0.evicted().await
    }
}

impl Drop for Place {
    fn drop(&mut self) {
        if let Some(conns) = self.0.conns.upgrade() {
            let mut s = conns.state.lock().expect("conns lock");
            if s.unauthenticated.remove(&self.0.id).is_none() && self.0.is_authenticated() {
                s.authenticated = s.authenticated.saturating_sub(1);
            }
            conns.gauge(&s);
        }
    }
}

impl Conns {
    pub fn new(limits: &ConnLimits, metrics: Arc<Metrics>) -> Arc<Conns> {
        let (max, reserved) = limits.resolved();
        Conns::with(max, reserved, Some(metrics))
    }

    /// A pool of `max` places with no reserve, where a newcomer pushes the oldest out.
    pub fn pool(max: usize) -> Arc<Conns> {
        Conns::with(max, 0, None)
    }

    fn with(max: usize, reserved: usize, metrics: Option<Arc<Metrics>>) -> Arc<Conns> {
        Arc::new(Conns {
            state: Mutex::new(State {
                next: 1,
                unauthenticated: BTreeMap::new(),
                authenticated: 0,
            }),
            max: max.max(1),
            reserved,
            metrics,
        })
    }

    fn gauge(&self, s: &State) {
        if let Some(m) = &self.metrics {
            m.tcp_unauthenticated
                .store(s.unauthenticated.len() as u64, Ordering::Relaxed);
            m.tcp_authenticated
                .store(s.authenticated as u64, Ordering::Relaxed);
        }
    }

    /// A place in the pool (see [`Conns::pool`]), until the ticket is dropped.
    pub fn enter(self: &Arc<Self>) -> Option<Ticket> {
        self.admit().map(Ticket)
    }

    /// A place for a new connection, pushing out the oldest unauthenticated one if
    /// need be; `None` when every place is taken by authenticated connections.
    fn admit(self: &Arc<Self>) -> Option<Place> {
        let mut s = self.state.lock().expect("conns lock");
        let pool = self.max - self.reserved;
        let total = s.unauthenticated.len() + s.authenticated;
        if s.unauthenticated.len() >= pool.max(1) || total >= self.max {
            let (_, oldest) = s.unauthenticated.pop_first()?;
            oldest.evicted.store(true, Ordering::Release);
            oldest.evict.notify_waiters();
            if let Some(m) = &self.metrics {
                Metrics::add(&m.tcp_evicted, 1);
            }
        }
        let id = s.next;
        s.next += 1;
        let conn = Arc::new(Conn {
            id,
            conns: Arc::downgrade(self),
            authenticated: AtomicBool::new(false),
            evicted: AtomicBool::new(false),
            evict: Notify::new(),
        });
        s.unauthenticated.insert(id, conn.clone());
        self.gauge(&s);
        Some(Place(conn))
    }

    /// (unauthenticated, authenticated) connections open now.
    pub fn open(&self) -> (usize, usize) {
        let s = self.state.lock().expect("conns lock");
        (s.unauthenticated.len(), s.authenticated)
    }

    /// (max, reserved).
    pub fn limits(&self) -> (usize, usize) {
        (self.max, self.reserved)
    }
}

/// A socket with its place: the place is given back when the socket is dropped, by
/// the HTTP connection or by the WebSocket it was upgraded to.
struct Tracked {
    io: TcpStream,
    _place: Place,
}

impl AsyncRead for Tracked {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl AsyncWrite for Tracked {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

/// Accepts and serves connections until `shutdown` turns true; then stops accepting,
/// lets each HTTP connection finish its request, and returns once they are done (a
/// WebSocket session ends on the same signal by itself).
pub async fn serve(
    listener: TcpListener,
    app: Router,
    conns: Arc<Conns>,
    header_timeout: Duration,
    mut shutdown: watch::Receiver<bool>,
) -> std::io::Result<()> {
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(header_timeout);
    let mut tasks = tokio::task::JoinSet::new();
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = shutdown.wait_for(|s| *s) => break,
            Some(_) = tasks.join_next(), if !tasks.is_empty() => continue,
        };
        let (tcp, _) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // Out of file descriptors and the like: wait a little, go on.
                tracing::warn!("accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Some(place) = conns.admit() else {
            if let Some(m) = &conns.metrics {
                Metrics::add(&m.tcp_refused, 1);
            }
            drop(tcp);
            continue;
        };
        // No Nagle: frames are small and an outcome waits on its frame.
        let _ = tcp.set_nodelay(true);
        let conn = place.0.clone();
        let io = hyper_util::rt::TokioIo::new(Tracked {
            io: tcp,
            _place: place,
        });
        let app = app.clone();
        let svc_conn = conn.clone();
        let svc =
            hyper::service::service_fn(move |mut req: hyper::Request<hyper::body::Incoming>| {
                req.extensions_mut().insert(svc_conn.clone());
                tower::ServiceExt::oneshot(app.clone(), req)
            });
        let http = builder.serve_connection(io, svc).with_upgrades();
        let mut stop = shutdown.clone();
        tasks.spawn(async move {
            tokio::pin!(http);
            tokio::select! {
                _ = &mut http => return,
                _ = conn.evicted() => return, // closed: the socket is dropped
                _ = stop.wait_for(|s| *s) => {}
            }
            http.as_mut().graceful_shutdown();
            let _ = tokio::time::timeout(Duration::from_secs(10), http).await;
        });
    }
    drop(listener);
    while tasks.join_next().await.is_some() {}
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conns(max: usize, reserved: usize) -> Arc<Conns> {
        Conns::new(
            &ConnLimits {
                max,
                reserved,
                ..ConnLimits::default()
            },
            Arc::new(Metrics::default()),
        )
    }

    #[tokio::test]
    async fn the_oldest_unauthenticated_connection_makes_room() {
        let c = conns(4, 2);
        let a = c.admit().unwrap();
        let b = c.admit().unwrap();
        assert_eq!(c.open(), (2, 0));
        // The pool (2) is full: the oldest, a, is pushed out.
        let a_conn = a.0.clone();
        let evicted = tokio::spawn(async move { a_conn.evicted().await });
        tokio::task::yield_now().await;
        let c3 = c.admit().unwrap();
        tokio::time::timeout(Duration::from_secs(1), evicted)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(c.open(), (2, 0));
        drop(a);
        assert_eq!(c.open(), (2, 0), "its place was already given");
        // b logs in: it leaves the pool, and the reserve is for it and its like.
        b.0.promote();
        assert_eq!(c.open(), (1, 1));
        let d = c.admit().unwrap();
        assert_eq!(c.open(), (2, 1));
        let e = c.admit().unwrap(); // pushes out c3
        assert!(c3.0.evicted.load(Ordering::Acquire));
        d.0.promote();
        e.0.promote();
        assert_eq!(c.open(), (0, 3));
        let f = c.admit().unwrap();
        f.0.promote();
        assert_eq!(c.open(), (0, 4));
        // Every place is taken by authenticated connections: refused.
        assert!(c.admit().is_none());
        drop(b);
        assert_eq!(c.open(), (0, 3));
        assert!(c.admit().is_some());
    }

    #[test]
    fn the_automatic_cap_follows_the_open_file_limit() {
        let (max, reserved) = ConnLimits::default().resolved();
        let soft = open_file_limit().unwrap();
        assert!(max as u64 <= soft.max(64 + FILE_MARGIN));
        assert_eq!(reserved, max / 2);
    }
}
