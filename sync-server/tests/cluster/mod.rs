//! A deployment of many regions for the tests, all real: an etcd cluster of `etcd`
//! processes ([`etcd`]), `warren serve --etcd … --region …` processes, a TCP proxy in
//! the test process between the members and between each region and each member
//! ([`netproxy`]), and the history checker ([`checker`]). Ports come from binding port
//! 0; data, logs and every process's stderr stay under the test's directory.

#![allow(dead_code)] // each test binary uses a different part

pub mod checker;
pub mod etcd;
pub mod netproxy;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use etcd::EtcdCluster;
use netproxy::NetProxy;

pub const SECRET: &str = "regions-test-secret-0123456789abcdef";
pub const ADMIN: &str = "regions-test-admin-token";

/// An HTTP client that gives every status as an answer (not an error), each request
/// bounded by `timeout`.
pub fn http_agent(timeout: Duration) -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(timeout))
        .build()
        .into()
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Polls `check` every 20 ms for up to `within`.
pub fn wait_until(within: Duration, mut check: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + within;
    loop {
        if check() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A directory for a test's data, logs and stderr; kept on failure (its path is
/// printed), removed by [`TestDir::remove`] after success.
pub struct TestDir(pub PathBuf);

impl TestDir {
    pub fn new(name: &str) -> TestDir {
        let d = std::env::temp_dir().join(format!("warren-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        eprintln!("test files: {}", d.display());
        TestDir(d)
    }

    pub fn remove(self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// One `warren serve` process of a region.
pub struct RegionProc {
    pub name: String,
    pub port: u16,
    pub data_dir: PathBuf,
    pub stderr_path: PathBuf,
    /// Its etcd endpoints (through the proxy), nearest first.
    pub etcd: Vec<String>,
    pub child: Option<Child>,
    pub starts: u32,
}

impl RegionProc {
    pub fn url(&self) -> String {
        format!("ws://127.0.0.1:{}/v1/sync", self.port)
    }

    pub fn http(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Its stderr, every start together.
    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    pub fn running(&mut self) -> bool {
        match &mut self.child {
            Some(c) => c.try_wait().ok().flatten().is_none(),
            None => false,
        }
    }

    /// Waits for the process to exit on its own; its status.
    pub fn wait_exit(&mut self, within: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + within;
        loop {
            let c = self.child.as_mut()?;
            if let Ok(Some(s)) = c.try_wait() {
                self.child = None;
                return Some(s);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM, then waits (SIGKILL after 20 s).
    pub fn stop(&mut self) -> Option<ExitStatus> {
        let pid = self.child.as_ref()?.id() as i32;
        etcd::signal(pid, "TERM");
        let s = self.wait_exit(Duration::from_secs(20));
        if s.is_none() {
            self.kill();
        }
        s
    }

    /// `GET path` with the admin token: (status, body as text).
    pub fn get_text(&self, path: &str) -> Option<(u16, String)> {
        let agent = http_agent(Duration::from_secs(5));
        let mut r = agent
            .get(format!("{}{path}", self.http()))
            .header("authorization", format!("Bearer {ADMIN}"))
            .call()
            .ok()?;
        let status = r.status().as_u16();
        Some((status, r.body_mut().read_to_string().ok()?))
    }

    /// `GET path` with the admin token: (status, JSON body).
    pub fn get(&self, path: &str) -> Option<(u16, serde_json::Value)> {
        let agent = http_agent(Duration::from_secs(5));
        let mut r = agent
            .get(format!("{}{path}", self.http()))
            .header("authorization", format!("Bearer {ADMIN}"))
            .call()
            .ok()?;
        let status = r.status().as_u16();
        let body = r.body_mut().read_to_string().ok()?;
        Some((
            status,
            serde_json::from_str(&body).unwrap_or(serde_json::Value::Null),
        ))
    }

    /// `/v1/admin/state`.
    pub fn state(&self) -> Option<serde_json::Value> {
        self.get("/v1/admin/state").map(|(_, v)| v)
    }

    pub fn position(&self) -> Option<u64> {
        self.state()?["position"].as_u64()
    }
}

/// A deployment: the etcd cluster, its proxy, the regions.
pub struct Deployment {
    pub dir: PathBuf,
    pub etcd: EtcdCluster,
    pub proxy: Arc<NetProxy>,
    pub regions: Vec<RegionProc>,
    pub schema_path: PathBuf,
    /// Extra `warren serve` arguments for every region.
    pub args: Vec<String>,
    pub rng: u64,
}

impl Deployment {
    /// `members` etcd members with `peer_delay` one way between any two, and the
    /// schema every region boots the deployment with.
    pub fn new(
        dir: &Path,
        members: usize,
        peer_delay: Duration,
        schema: &str,
        seed: u64,
    ) -> Deployment {
        let etcd = EtcdCluster::start(dir, members, peer_delay);
        Deployment::from_cluster(dir, etcd, schema, seed)
    }

    /// A deployment on a cluster already started.
    pub fn from_cluster(dir: &Path, etcd: EtcdCluster, schema: &str, seed: u64) -> Deployment {
        let schema_path = dir.join("schema.warren");
        std::fs::write(&schema_path, schema).unwrap();
        Deployment {
            dir: dir.to_owned(),
            proxy: etcd.proxy.clone(),
            etcd,
            regions: Vec::new(),
            schema_path,
            args: Vec::new(),
            rng: seed,
        }
    }

    pub fn rand(&mut self, n: u64) -> u64 {
        self.rng = self.rng.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.rng;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        (z ^ (z >> 31)) % n.max(1)
    }

    /// Adds a region (not started): a proxy route from it to each member, its own
    /// member first.
    pub fn add_region(&mut self, name: &str) -> usize {
        let n = self.etcd.members.len();
        let k = self.regions.len();
        let mut etcd = Vec::new();
        for j in 0..n {
            let m = &self.etcd.members[(k + j) % n];
            let port = self.proxy.add(
                &format!("{name}-{}", m.name),
                0,
                format!("127.0.0.1:{}", m.client_port).parse().unwrap(),
                Duration::ZERO,
            );
            etcd.push(format!("http://127.0.0.1:{port}"));
        }
        self.regions.push(RegionProc {
            name: name.to_owned(),
            port: free_port(),
            data_dir: self.dir.join(name),
            stderr_path: self.dir.join(format!("{name}.stderr")),
            etcd,
            child: None,
            starts: 0,
        });
        k
    }

    pub fn index(&self, name: &str) -> usize {
        self.regions
            .iter()
            .position(|r| r.name == name)
            .unwrap_or_else(|| panic!("no region {name}"))
    }

    /// Starts region `i` with `extra` arguments and environment; waits for it to serve
    /// (`Ok`), or to exit (`Err` with its status).
    pub fn start_region(
        &mut self,
        i: usize,
        extra: &[String],
        env: &[(&str, String)],
    ) -> Result<(), Option<ExitStatus>> {
        let sync_every = 1 + self.rand(64);
        let schema = self.schema_path.clone();
        let args = self.args.clone();
        let r = &mut self.regions[i];
        r.starts += 1;
        for attempt in 0..50 {
            let mut err = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&r.stderr_path)
                .unwrap();
            use std::io::Write;
            let _ = writeln!(
                err,
                "=== start {} (attempt {attempt}, store-sync-every {sync_every}) ===",
                r.starts
            );
            let mut cmd = Command::new(env!("CARGO_BIN_EXE_warren"));
            cmd.arg("serve")
                .args(["--listen", &format!("127.0.0.1:{}", r.port)])
                .arg("--data-dir")
                .arg(&r.data_dir)
                .arg("--schema")
                .arg(&schema)
                .args(["--region", &r.name])
                .args(["--etcd", &r.etcd.join(",")])
                .args(["--admin-token", ADMIN])
                .args(["--store-sync-every", &sync_every.to_string()])
                .args(&args)
                .args(extra)
                .env("WARREN_HS256_SECRET", SECRET)
                .env("WARREN_LOG", "info,warren_server::log::shared=error")
                .stdout(Stdio::piped())
                .stderr(err);
            for (k, v) in env {
                cmd.env(k, v);
            }
            let mut child = cmd.spawn().expect("spawn warren serve");
            let mut line = String::new();
            let _ = BufReader::new(child.stdout.take().unwrap()).read_line(&mut line);
            if line.contains("serving on") {
                r.child = Some(child);
                return Ok(());
            }
            let status = child.wait().unwrap();
            // The port may still be held by the previous process.
            if status.code() == Some(2)
                && r.stderr()
                    .lines()
                    .last()
                    .is_some_and(|l| l.contains("cannot listen"))
            {
                std::thread::sleep(Duration::from_millis(100));
                continue;
            }
            return Err(Some(status));
        }
        Err(None)
    }

    /// Every region's URL.
    pub fn urls(&self) -> Vec<String> {
        self.regions.iter().map(RegionProc::url).collect()
    }

    /// Pauses (or resumes) every route between region `i` and etcd.
    pub fn pause_region(&self, i: usize, paused: bool) {
        for r in self.proxy.names(&format!("{}-m", self.regions[i].name)) {
            if paused {
                self.proxy.pause(&r);
            } else {
                self.proxy.resume(&r);
            }
        }
    }

    /// Waits until every running region applied at least `position` (via its state).
    pub fn wait_position(&mut self, position: u64, within: Duration) -> bool {
        let names: Vec<usize> = (0..self.regions.len())
            .filter(|i| self.regions[*i].child.is_some())
            .collect();
        let regions = &self.regions;
        wait_until(within, || {
            names
                .iter()
                .all(|i| regions[*i].position().is_some_and(|p| p >= position))
        })
    }

    /// The highest position any running region has applied.
    pub fn max_position(&self) -> u64 {
        self.regions
            .iter()
            .filter(|r| r.child.is_some())
            .filter_map(RegionProc::position)
            .max()
            .unwrap_or(0)
    }
}

impl Drop for Deployment {
    fn drop(&mut self) {
        for r in &mut self.regions {
            r.kill();
        }
    }
}
