//! An etcd cluster of real `etcd` processes on 127.0.0.1 for the tests, each member's
//! peer traffic through a [`NetProxy`] route (so a test can delay or cut it), with
//! data and logs under the test's directory. Members are stopped by their process ids
//! when the cluster is dropped.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use warren_server::log::etcd::{EtcdClient, EtcdOptions, EtcdTls};

use super::netproxy::NetProxy;
use super::{free_port, wait_until};

pub struct Member {
    pub name: String,
    pub client_port: u16,
    pub peer_port: u16,
    /// The port other members dial: a proxy route to `peer_port`.
    pub advertised_peer_port: u16,
    pub data_dir: PathBuf,
    pub child: Option<Child>,
    pub paused: bool,
}

pub struct EtcdCluster {
    pub dir: PathBuf,
    pub members: Vec<Member>,
    pub proxy: Arc<NetProxy>,
    initial_cluster: String,
    token: String,
    /// Clients over TLS (`https`), with these files, when set.
    pub tls: Option<EtcdTls>,
    /// The members' own certificate, key and the CA their clients must be signed by.
    server_tls: Option<EtcdTls>,
    /// Flags after the usual ones (the last of a repeated flag wins).
    flags: Vec<String>,
}

/// The flags every member runs with: faster snapshots (so a restarted member catches
/// up by raft snapshot, the path of etcd's old "restored member sends no watch events"
/// bug), progress notifications on idle watches every 500 ms (the followers' stall
/// timers rely on them), and a small quota.
const FLAGS: &[&str] = &[
    "--heartbeat-interval=100",
    "--election-timeout=1000",
    "--snapshot-count=2000",
    "--experimental-watch-progress-notify-interval=500ms",
    "--quota-backend-bytes=268435456",
    "--auto-compaction-retention=0",
];

/// Fails with a clear message when etcd is not installed.
pub fn require_etcd() {
    let ok = Command::new("etcd")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        ok,
        "etcd is not installed: `apt-get install -y etcd-server etcd-client` (./.ci/test installs it)"
    );
}

impl EtcdCluster {
    /// Starts `n` members whose peer routes have `peer_delay` one way.
    pub fn start(dir: &Path, n: usize, peer_delay: Duration) -> EtcdCluster {
        EtcdCluster::start_with(dir, n, peer_delay, None, &[])
    }

    /// [`EtcdCluster::start`], serving clients over TLS with `tls` (the server's
    /// certificate and key in `cert` and `key`, clients required to present a
    /// certificate signed by `ca`) when given.
    pub fn start_with(
        dir: &Path,
        n: usize,
        peer_delay: Duration,
        tls: Option<(EtcdTls, EtcdTls)>,
        flags: &[&str],
    ) -> EtcdCluster {
        require_etcd();
        let proxy = NetProxy::new();
        let mut members = Vec::new();
        for i in 1..=n {
            let peer_port = free_port();
            let name = format!("m{i}");
            let adv = proxy.add(
                &format!("peer-{name}"),
                0,
                format!("127.0.0.1:{peer_port}").parse().unwrap(),
                peer_delay,
            );
            members.push(Member {
                data_dir: dir.join(&name),
                name,
                client_port: free_port(),
                peer_port,
                advertised_peer_port: adv,
                child: None,
                paused: false,
            });
        }
        let initial_cluster = members
            .iter()
            .map(|m| format!("{}=http://127.0.0.1:{}", m.name, m.advertised_peer_port))
            .collect::<Vec<_>>()
            .join(",");
        let (server_tls, client_tls) = match tls {
            Some((s, c)) => (Some(s), Some(c)),
            None => (None, None),
        };
        let mut c = EtcdCluster {
            dir: dir.to_owned(),
            members,
            proxy,
            initial_cluster,
            token: format!("warren-test-{}", std::process::id()),
            tls: client_tls,
            server_tls,
            flags: flags.iter().map(|f| f.to_string()).collect(),
        };
        for i in 0..n {
            c.spawn(i);
        }
        c.wait_healthy(Duration::from_secs(30));
        c
    }

    fn scheme(&self) -> &'static str {
        if self.server_tls.is_some() {
            "https"
        } else {
            "http"
        }
    }

    fn spawn(&mut self, i: usize) {
        let scheme = self.scheme();
        let mut tls_flags = Vec::new();
        if let Some(t) = &self.server_tls {
            let p = |x: &Option<PathBuf>| x.as_ref().unwrap().display().to_string();
            tls_flags = vec![
                format!("--cert-file={}", p(&t.cert)),
                format!("--key-file={}", p(&t.key)),
                format!("--trusted-ca-file={}", p(&t.ca)),
                "--client-cert-auth".to_owned(),
            ];
        }
        let m = &mut self.members[i];
        let log = self.dir.join(format!("{}.log", m.name));
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .unwrap();
        let child = Command::new("etcd")
            .arg("--name")
            .arg(&m.name)
            .arg("--data-dir")
            .arg(&m.data_dir)
            .arg(format!(
                "--listen-client-urls={scheme}://127.0.0.1:{}",
                m.client_port
            ))
            .arg(format!(
                "--advertise-client-urls={scheme}://127.0.0.1:{}",
                m.client_port
            ))
            .args(&tls_flags)
            .arg(format!(
                "--listen-peer-urls=http://127.0.0.1:{}",
                m.peer_port
            ))
            .arg(format!(
                "--initial-advertise-peer-urls=http://127.0.0.1:{}",
                m.advertised_peer_port
            ))
            .arg(format!("--initial-cluster={}", self.initial_cluster))
            .arg("--initial-cluster-state=new")
            .arg(format!("--initial-cluster-token={}", self.token))
            .args(FLAGS)
            .args(&self.flags)
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .expect("start etcd");
        m.child = Some(child);
        m.paused = false;
    }

    /// Every member's client URL, direct (not through a proxy).
    pub fn client_urls(&self) -> Vec<String> {
        let scheme = self.scheme();
        self.members
            .iter()
            .map(|m| format!("{scheme}://127.0.0.1:{}", m.client_port))
            .collect()
    }

    pub fn client(&self) -> EtcdClient {
        EtcdClient::new(
            &self.client_urls(),
            EtcdOptions {
                request_timeout: Duration::from_secs(2),
                tls: self.tls.clone().unwrap_or_default(),
                ..EtcdOptions::default()
            },
        )
        .unwrap()
    }

    /// Waits until every running member answers and one leads.
    pub fn wait_healthy(&self, within: Duration) {
        let client = self.client();
        let live: Vec<usize> = (0..self.members.len())
            .filter(|i| self.members[*i].child.is_some() && !self.members[*i].paused)
            .collect();
        let ok = wait_until(within, || {
            live.iter().all(|i| client.status(*i).is_ok())
                && live
                    .iter()
                    .any(|i| client.status(*i).is_ok_and(|s| s.is_leader()))
        });
        assert!(
            ok,
            "etcd is not healthy after {within:?}; logs in {}",
            self.dir.display()
        );
    }

    /// The index of the member that leads now.
    pub fn leader(&self) -> Option<usize> {
        let client = self.client();
        (0..self.members.len()).find(|i| {
            self.members[*i].child.is_some()
                && !self.members[*i].paused
                && client.status(*i).is_ok_and(|s| s.is_leader())
        })
    }

    fn pid(&self, i: usize) -> i32 {
        self.members[i]
            .child
            .as_ref()
            .expect("a running member")
            .id() as i32
    }

    pub fn kill(&mut self, i: usize) {
        if let Some(mut c) = self.members[i].child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn restart(&mut self, i: usize) {
        assert!(self.members[i].child.is_none());
        self.spawn(i);
    }

    /// SIGSTOP / SIGCONT.
    pub fn pause(&mut self, i: usize) {
        signal(self.pid(i), "STOP");
        self.members[i].paused = true;
    }

    pub fn resume(&mut self, i: usize) {
        signal(self.pid(i), "CONT");
        self.members[i].paused = false;
    }

    /// Every member defragmented, and the `NOSPACE` alarm disarmed: what an operator
    /// does after freeing space.
    pub fn defragment_and_disarm(&self) {
        let c = self.client();
        for i in 0..self.members.len() {
            c.call(i, "/v3/maintenance/defragment", &serde_json::json!({}))
                .expect("defragment");
        }
        // Each alarm is disarmed for the member that raised it.
        let alarms = c
            .call_any(
                "/v3/maintenance/alarm",
                &serde_json::json!({ "action": "GET" }),
            )
            .expect("the alarms");
        for a in alarms["alarms"].as_array().cloned().unwrap_or_default() {
            c.call_any(
                "/v3/maintenance/alarm",
                &serde_json::json!({
                    "action": "DEACTIVATE", "memberID": a["memberID"], "alarm": a["alarm"]
                }),
            )
            .expect("disarm");
        }
    }

    /// Compacts the history up to the current revision.
    pub fn compact_to_head(&self) -> i64 {
        let c = self.client();
        let head = c.status(c.current()).map(|s| s.revision).unwrap_or(0);
        let _ = c.compact(head);
        head
    }
}

pub fn signal(pid: i32, sig: &str) {
    let _ = Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .status();
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        for i in 0..self.members.len() {
            if self.members[i].paused {
                self.resume(i);
            }
            self.kill(i);
        }
    }
}

/// Waits up to `within` for a member to report `revision` or more.
#[allow(dead_code)]
pub fn wait_revision(client: &EtcdClient, revision: i64, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if client
            .status(client.current())
            .is_ok_and(|s| s.revision >= revision)
        {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}
