//! A TCP proxy in the test process for network faults on loopback (the kernel's
//! traffic shaping is not available everywhere the tests run, and a proxy needs no
//! privileges): each route listens on a port and forwards to a target, with
//!
//! - `delay`: a one-way delay, both directions, order kept;
//! - `pause`: every byte held both ways, connections kept open (a partition that ends
//!   in timeouts), until `resume` delivers what was held, in order;
//! - `cut`: every connection aborted (RST) and new ones refused (a partition that is
//!   noticed at once), until `heal`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

pub struct Route {
    pub port: u16,
    target: SocketAddr,
    delay_ms: AtomicU64,
    /// `true` while paused.
    paused: watch::Sender<bool>,
    cut: AtomicBool,
    conns: Mutex<Vec<tokio::task::AbortHandle>>,
    pub bytes: AtomicU64,
}

/// The proxy: routes by name. It runs on a runtime of its own, so that a test
/// blocking its threads (a synchronous etcd call waits on traffic between members,
/// which crosses the proxy) never stalls it.
pub struct NetProxy {
    routes: Mutex<BTreeMap<String, Arc<Route>>>,
    rt: tokio::runtime::Runtime,
}

impl NetProxy {
    pub fn new() -> Arc<NetProxy> {
        Arc::new(NetProxy {
            routes: Mutex::default(),
            rt: tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .thread_name("netproxy")
                .enable_all()
                .build()
                .expect("the proxy's runtime"),
        })
    }

    /// Adds a route listening on `listen` (0: any free port) to `target`; returns the
    /// port it listens on.
    pub fn add(&self, name: &str, listen: u16, target: SocketAddr, delay: Duration) -> u16 {
        let listener = std::net::TcpListener::bind(("127.0.0.1", listen))
            .unwrap_or_else(|e| panic!("proxy route {name} on port {listen}: {e}"));
        listener.set_nonblocking(true).unwrap();
        let port = listener.local_addr().unwrap().port();
        let (paused, _) = watch::channel(false);
        let route = Arc::new(Route {
            port,
            target,
            delay_ms: AtomicU64::new(delay.as_millis() as u64),
            paused,
            cut: AtomicBool::new(false),
            conns: Mutex::new(Vec::new()),
            bytes: AtomicU64::new(0),
        });
        self.routes
            .lock()
            .unwrap()
            .insert(name.to_owned(), route.clone());
        self.rt.spawn(async move {
            let listener = TcpListener::from_std(listener).expect("a tokio listener");
            accept(listener, route).await
        });
        port
    }

    fn route(&self, name: &str) -> Arc<Route> {
        self.routes
            .lock()
            .unwrap()
            .get(name)
            .unwrap_or_else(|| panic!("no proxy route {name}"))
            .clone()
    }

    /// The names of every route starting with `prefix`.
    pub fn names(&self, prefix: &str) -> Vec<String> {
        self.routes
            .lock()
            .unwrap()
            .keys()
            .filter(|k| k.starts_with(prefix))
            .cloned()
            .collect()
    }

    pub fn set_delay(&self, name: &str, delay: Duration) {
        self.route(name)
            .delay_ms
            .store(delay.as_millis() as u64, Ordering::Relaxed);
    }

    pub fn pause(&self, name: &str) {
        self.route(name).paused.send_replace(true);
    }

    pub fn resume(&self, name: &str) {
        self.route(name).paused.send_replace(false);
    }

    pub fn cut(&self, name: &str) {
        let r = self.route(name);
        r.cut.store(true, Ordering::Relaxed);
        for c in r.conns.lock().unwrap().drain(..) {
            c.abort();
        }
    }

    pub fn heal(&self, name: &str) {
        self.route(name).cut.store(false, Ordering::Relaxed);
    }
}

async fn accept(listener: TcpListener, route: Arc<Route>) {
    loop {
        let Ok((client, _)) = listener.accept().await else {
            continue;
        };
        if route.cut.load(Ordering::Relaxed) {
            let _ = client.set_zero_linger();
            drop(client);
            continue;
        }
        let r = route.clone();
        let task = tokio::spawn(async move {
            let Ok(upstream) = TcpStream::connect(r.target).await else {
                let _ = client.set_zero_linger();
                return;
            };
            let _ = client.set_nodelay(true);
            let _ = upstream.set_nodelay(true);
            // Abort (a cut) resets both sides rather than closing them cleanly.
            let _ = client.set_zero_linger();
            let _ = upstream.set_zero_linger();
            let (cr, cw) = client.into_split();
            let (ur, uw) = upstream.into_split();
            tokio::join!(pump(r.clone(), cr, uw), pump(r.clone(), ur, cw));
        });
        let mut conns = route.conns.lock().unwrap();
        conns.retain(|c| !c.is_finished());
        conns.push(task.abort_handle());
    }
}

/// Copies one direction: chunks are stamped when read and written once their delay
/// has passed and the route is not paused, in order.
async fn pump(
    route: Arc<Route>,
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
) {
    let (tx, mut rx) = mpsc::unbounded_channel::<(Instant, Vec<u8>)>();
    let r = route.clone();
    let deliver = async move {
        let mut paused = r.paused.subscribe();
        while let Some((due, data)) = rx.recv().await {
            let _ = paused.wait_for(|p| !*p).await;
            tokio::time::sleep_until(due).await;
            let _ = paused.wait_for(|p| !*p).await;
            if to.write_all(&data).await.is_err() {
                return;
            }
            r.bytes.fetch_add(data.len() as u64, Ordering::Relaxed);
        }
        let _ = to.shutdown().await;
    };
    let read = async move {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match from.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    let due = Instant::now()
                        + Duration::from_millis(route.delay_ms.load(Ordering::Relaxed));
                    if tx.send((due, buf[..n].to_vec())).is_err() {
                        break;
                    }
                }
            }
        }
    };
    tokio::join!(read, deliver);
}
