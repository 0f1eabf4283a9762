//! GraphQL over HTTP next to the sync server's own HTTP push, in the same run.
//!
//! Run with `cargo bench -p warren-server --bench graphql`. It starts the real `warren
//! serve` binary on loopback with a fresh data directory, and `--clients` threads, each
//! a user with its own token and one keep-alive HTTP/1.1 connection, send requests in a
//! closed loop (one at a time, the next when the answer is in). The workloads alternate,
//! `--reps` runs each:
//!
//! - `push`: `POST /v1/push` of one commit, `bump` of one of the user's counters: the
//!   peer, the same commit without GraphQL;
//! - `mutation`: the same commit as a GraphQL mutation, `mutation { bump(id: ...) }`
//!   (the server numbers it: one client id per identity);
//! - `keyed mutation`: the same with an `Idempotency-Key` (a new one each time);
//! - `page`: a GraphQL query of a page of 20 of the user's counters by an index
//!   (`Counter_byOwner(owner: ..., first: 20)`), each with its `_fields`;
//! - `version`: `{ _schemaVersion }`, GraphQL's own cost with no read at all.
//!
//! Every answer is checked (committed, 20 documents, no errors) or the benchmark fails.
//! Printed: requests a second and the median and 99th-percentile latency of each
//! workload (the medians over the runs), and the ratios against `push`. Options (after
//! `--`): `--secs N` (5), `--reps N` (3), `--clients N` (8). Without `--bench` (as
//! under `cargo test --benches`) it runs a short smoke version.

use std::io::{BufRead, BufReader, Read, Write as _};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use warren_server::auth;

const SCHEMA: &str = r#"
collection Counter {
  partition "user:" + doc.owner
  index byOwner [owner]
  allow read   partition == "user:" + auth.sub
  allow create doc.owner == auth.sub
  allow update old.owner == auth.sub && new.owner == old.owner
}

function bump(id) {
  let c = Counter.byId(id) ?? Counter.create({ id, owner: auth.sub, n: 0 })
  c.update({ n: c.n + 1 }).n
}
"#;

const SECRET: &str = "benchmark-secret-0123456789abcdef";
const DOCS: usize = 20;

struct Server {
    child: Child,
    addr: SocketAddr,
    dir: PathBuf,
}

impl Server {
    fn start() -> Server {
        let dir = std::env::temp_dir().join(format!("warren-bench-graphql-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("schema.warren"), SCHEMA).unwrap();
        let addr = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_warren"))
            .arg("serve")
            .arg("--data-dir")
            .arg(dir.join("data"))
            .arg("--schema")
            .arg(dir.join("schema.warren"))
            .arg("--listen")
            .arg(addr.to_string())
            .arg("--hs256-secret")
            .arg(SECRET)
            .env("WARREN_LOG", "warn")
            // Each user sends as fast as answers come: the per-identity rates (meant
            // for one abusive user among many) would measure the limiter.
            .env("WARREN_COMMITS_PER_SEC", "0")
            .env("WARREN_FRAMES_PER_SEC", "0")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .expect("start warren serve");
        let s = Server { child, addr, dir };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let ready = Conn::open(s.addr)
                .and_then(|mut c| c.request("GET", "/readyz", "", None, ""))
                .is_some_and(|(status, body)| status == 200 && body.starts_with("ready"));
            if ready {
                return s;
            }
            assert!(Instant::now() < deadline, "the server did not get ready");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// One keep-alive HTTP/1.1 connection.
struct Conn {
    r: BufReader<TcpStream>,
    w: TcpStream,
}

impl Conn {
    fn open(addr: SocketAddr) -> Option<Conn> {
        let s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
        s.set_nodelay(true).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(30))).ok()?;
        Some(Conn {
            r: BufReader::new(s.try_clone().ok()?),
            w: s,
        })
    }

    /// The status and body.
    fn request(
        &mut self,
        method: &str,
        path: &str,
        token: &str,
        key: Option<&str>,
        body: &str,
    ) -> Option<(u16, String)> {
        let key = key
            .map(|k| format!("Idempotency-Key: {k}\r\n"))
            .unwrap_or_default();
        write!(
            self.w,
            "{method} {path} HTTP/1.1\r\nHost: bench\r\nAuthorization: Bearer {token}\r\n{key}Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .ok()?;
        let mut line = String::new();
        self.r.read_line(&mut line).ok()?;
        let status: u16 = line.split_whitespace().nth(1)?.parse().ok()?;
        let mut len = 0;
        loop {
            line.clear();
            self.r.read_line(&mut line).ok()?;
            let l = line.trim_end();
            if l.is_empty() {
                break;
            }
            if let Some((k, v)) = l.split_once(':') {
                if k.eq_ignore_ascii_case("content-length") {
                    len = v.trim().parse().ok()?;
                }
            }
        }
        let mut buf = vec![0; len];
        self.r.read_exact(&mut buf).ok()?;
        Some((status, String::from_utf8(buf).ok()?))
    }
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Work {
    Push,
    Mutation,
    Keyed,
    Page,
    Version,
}

impl Work {
    const ALL: [Work; 5] = [
        Work::Push,
        Work::Mutation,
        Work::Keyed,
        Work::Page,
        Work::Version,
    ];

    fn name(self) -> &'static str {
        match self {
            Work::Push => "push (HTTP, the peer)",
            Work::Mutation => "mutation (GraphQL)",
            Work::Keyed => "mutation with a key (GraphQL)",
            Work::Page => "page of 20 (GraphQL)",
            Work::Version => "_schemaVersion (GraphQL)",
        }
    }
}

/// A user's client: its token, connection and the next push sequence number.
struct User {
    name: String,
    token: String,
    conn: Conn,
    seq: u64,
    i: usize,
}

impl User {
    /// Sends one request of `work` and checks its answer.
    fn one(&mut self, work: Work) {
        self.i += 1;
        let id = format!("{}-{}", self.name, self.i % DOCS);
        let (path, body) = match work {
            Work::Push => {
                self.seq += 1;
                (
                    "/v1/push",
                    format!(
                        r#"{{"client_id":"bench","commits":[{{"seq":{},"function":"bump","args":{{"id":"{id}"}}}}]}}"#,
                        self.seq
                    ),
                )
            }
            Work::Mutation | Work::Keyed => (
                "/v1/graphql",
                format!(r#"{{"query":"mutation {{ bump(id: \"{id}\") }}"}}"#),
            ),
            Work::Page => (
                "/v1/graphql",
                format!(
                    r#"{{"query":"{{ Counter_byOwner(owner: \"{}\", first: {DOCS}) {{ nodes {{ id _fields }} pageInfo {{ hasNextPage }} }} }}"}}"#,
                    self.name
                ),
            ),
            Work::Version => (
                "/v1/graphql",
                r#"{"query":"{ _schemaVersion }"}"#.to_owned(),
            ),
        };
        let key = (work == Work::Keyed).then(|| format!("{}-{}", self.name, self.i));
        let (status, answer) = self
            .conn
            .request("POST", path, &self.token, key.as_deref(), &body)
            .expect("an answer");
        let ok = status == 200
            && match work {
                Work::Push => answer.contains(r#""status":"committed""#),
                Work::Mutation | Work::Keyed => {
                    answer.contains(r#"{"data":{"bump":"#) && !answer.contains("errors")
                }
                Work::Page => {
                    answer.matches(r#""_fields""#).count() == DOCS && !answer.contains("errors")
                }
                Work::Version => answer.contains("_schemaVersion") && !answer.contains("errors"),
            };
        assert!(ok, "{work:?}: {status} {answer}");
    }
}

struct Run {
    rps: f64,
    p50_ms: f64,
    p99_ms: f64,
}

fn run(addr: SocketAddr, users: &mut [User], work: Work, secs: f64) -> Run {
    let until = Instant::now() + Duration::from_secs_f64(secs);
    let lat: Vec<Vec<u32>> = std::thread::scope(|s| {
        let handles: Vec<_> = users
            .iter_mut()
            .map(|u| {
                s.spawn(move || {
                    let mut lat = Vec::new();
                    while Instant::now() < until {
                        let t = Instant::now();
                        u.one(work);
                        lat.push(t.elapsed().as_micros() as u32);
                    }
                    lat
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let _ = addr;
    let mut all: Vec<u32> = lat.into_iter().flatten().collect();
    all.sort_unstable();
    let pct = |p: f64| {
        let i = ((all.len() as f64 * p).ceil() as usize).clamp(1, all.len()) - 1;
        all[i] as f64 / 1000.0
    };
    Run {
        rps: all.len() as f64 / secs,
        p50_ms: pct(0.5),
        p99_ms: pct(0.99),
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let full = args.iter().any(|a| a == "--bench");
    let opt = |name: &str, default: f64| -> f64 {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    };
    let (secs, reps, clients) = if full {
        (
            opt("--secs", 5.0),
            opt("--reps", 3.0) as usize,
            opt("--clients", 8.0) as usize,
        )
    } else {
        (0.3, 1, 2)
    };
    let server = Server::start();
    let mut users: Vec<User> = (0..clients)
        .map(|i| {
            let name = format!("u{i}");
            let claims = auth::dev_claims(&name, 3600, None, None);
            User {
                token: auth::mint_hs256(SECRET, &claims).unwrap(),
                conn: Conn::open(server.addr).expect("connect"),
                name,
                seq: 0,
                i: 0,
            }
        })
        .collect();
    // Every user's counters exist before anything is measured.
    for u in &mut users {
        for _ in 0..DOCS {
            u.one(Work::Push);
        }
    }
    println!(
        "GraphQL vs HTTP push: {clients} clients in a closed loop, {secs} s per run, {reps} runs each (medians)"
    );
    let mut runs: Vec<Vec<Run>> = Work::ALL.iter().map(|_| Vec::new()).collect();
    for _ in 0..reps {
        for (i, w) in Work::ALL.iter().enumerate() {
            runs[i].push(run(server.addr, &mut users, *w, secs));
        }
    }
    let figures: Vec<(f64, f64, f64)> = runs
        .iter()
        .map(|rs| {
            (
                median(rs.iter().map(|r| r.rps).collect()),
                median(rs.iter().map(|r| r.p50_ms).collect()),
                median(rs.iter().map(|r| r.p99_ms).collect()),
            )
        })
        .collect();
    let (push_rps, push_p50, _) = figures[0];
    println!("| workload | requests/s | p50 ms | p99 ms | rate vs push | p50 vs push |");
    println!("|---|---|---|---|---|---|");
    for (w, (rps, p50, p99)) in Work::ALL.iter().zip(&figures) {
        println!(
            "| {} | {rps:.0} | {p50:.2} | {p99:.2} | {:.2} | {:.2} |",
            w.name(),
            rps / push_rps,
            p50 / push_p50
        );
    }
}
