//! The read-rule index against a real server: what each client holds is what the read
//! rules allow, whatever membership changes, connects and reconnects happen.
//!
//! Users create teams (partitions readable by their members, through a schema function
//! as the language's documentation writes it), change and delete them, add tasks,
//! todos, notes in spaces named after a user (`partition.startsWith`) and boards of the
//! teams a user's token lists (`auth.teams.includes(...)`), and go offline and online
//! (a new welcome, computed on a read view while the log moves on), in a seeded random
//! order (`WARREN_SEED=<n>` replays one; the seed is printed). At checkpoints every
//! client is online and synced, and each one's partitions and documents are compared
//! with the truth: the rules evaluated in full (every collection's rule for every
//! partition, as the server did before it had the index) over the documents a `root`
//! client holds, which may read everything.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use warren_core::eval::Limits;
use warren_core::exec::{self, Op};
use warren_core::keys;
use warren_core::storage::{KeyRange, MemoryStore, Storage};
use warren_core::testing::Rng;
use warren_core::value::obj;
use warren_core::{Schema, Value};
use warren_e2e::*;
use warren_server::client::Client;

const SCHEMA: &str = r#"
collection Todo {
  partition "user:" + doc.owner
  allow read   partition == "user:" + auth.sub || auth.role == "root"
  allow create doc.owner == auth.sub
  allow update old.owner == auth.sub
  allow delete old.owner == auth.sub
}

// As the language's documentation writes it: analysed as the membership it inlines to.
function isMember(team) {
  let t = Team.byId(team)
  t != null && t.members.includes(auth.sub)
}

collection Team {
  partition "team:" + doc.id
  allow read   isMember(partition.slice(5))
  allow read   auth.role == "root"
  allow create doc.admin == auth.sub
  allow update old.admin == auth.sub && new.admin == old.admin
  allow delete old.admin == auth.sub
}

collection Task {
  partition "team:" + doc.team
  allow read   Team.byId(partition.slice(5))?.members?.includes(auth.sub) == true || auth.role == "root"
  allow read   Team.byId(partition.slice(5))?.admin == auth.sub
  allow create Team.byId(doc.team)?.members?.includes(auth.sub) == true
  allow delete true
}

// Readable by the teams a user's token lists (`teams`, a claim).
collection Board {
  partition "team:" + doc.team
  allow read   auth.teams?.includes(partition.slice(5)) == true || auth.role == "root"
  allow create true
}

collection Note {
  partition doc.space
  allow read   partition.startsWith(auth.sub + ":") || auth.role == "root"
  allow create doc.by == auth.sub
}
"#;

const USERS: &[&str] = &["ann", "bob", "cat", "dan"];
const TEAMS: usize = 6;

fn root() -> Value {
    obj([("sub", "root".into()), ("role", "root".into())])
}

fn token_for(auth: &Value) -> String {
    let mut claims = warren_server::auth::dev_claims(&exec::subject(auth), 3600, None, None);
    if let Value::String(role) = auth.get("role") {
        claims["role"] = role.clone().into();
    }
    if let Value::Array(teams) = auth.get("teams") {
        claims["teams"] = teams
            .iter()
            .map(|t| serde_json::Value::String(t.as_str().unwrap_or_default().to_owned()))
            .collect();
    }
    warren_server::auth::mint_hs256(SECRET, &claims).unwrap()
}

fn start_client(server: &TestServer, auth: &Value, id: &str, seed: u64) -> Client {
    let mut o = server.options(&exec::subject(auth), id);
    o.token = token_for(auth);
    o.auth = auth.clone();
    o.schema = Some(SCHEMA.to_owned());
    o.seed = seed;
    Client::start(o).unwrap()
}

fn scan(store: &dyn Storage, prefix: &[u8]) -> Vec<(Vec<u8>, Vec<u8>)> {
    let mut out = Vec::new();
    let mut r = KeyRange::prefix(prefix);
    loop {
        let page = store.scan(&r, false, 512).unwrap();
        let full = page.len() == 512;
        if let Some((k, _)) = page.last() {
            r = r.after(k);
        }
        out.extend(page);
        if !full {
            return out;
        }
    }
}

/// A client's documents by partition: (collection, id) → data.
type Held = BTreeMap<String, BTreeMap<(String, String), Value>>;

fn held(store: &dyn Storage, only: Option<&BTreeMap<String, BTreeSet<String>>>) -> Held {
    let mut out: Held = BTreeMap::new();
    for (k, _) in scan(store, &[keys::SPACE_PARTITION]) {
        let (p, c, id) = keys::parse_partition_key(&k).unwrap();
        if let Some(only) = only {
            if !only.get(&p).is_some_and(|cs| cs.contains(&c)) {
                continue;
            }
        }
        let doc = store.get(&keys::doc_key(&c, &id)).unwrap().unwrap();
        let doc = warren_core::doc::StoredDoc::decode(&doc).unwrap();
        out.entry(p).or_default().insert((c, id), doc.data);
    }
    out
}

/// What `auth` may read of `all` (root's copy of every document), by evaluating every
/// read rule for every (partition, collection) pair.
fn truth(all: &MemoryStore, schema: &Schema, auth: &Value) -> Held {
    let mut allowed: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (k, _) in scan(all, &[keys::SPACE_PARTITION]) {
        let (p, c, _) = keys::parse_partition_key(&k).unwrap();
        if exec::can_read_partition(all, schema, &c, &p, auth, &Limits::default()).unwrap() {
            allowed.entry(p).or_default().insert(c);
        }
    }
    held(all, Some(&allowed))
}

fn check(clients: &[(Value, Client)], root: &Client, schema: &Schema) -> Result<(), String> {
    let all = root.replica().store().clone();
    for (auth, c) in clients {
        let want = truth(&all, schema, auth);
        let r = c.replica();
        let got = held(r.store(), None);
        let partitions: BTreeSet<String> = r
            .partitions()
            .unwrap()
            .into_iter()
            .map(|(p, _)| p)
            .collect();
        // A partition held with nothing readable in it is still held (no documents).
        let got_nonempty: BTreeSet<&String> = got.keys().collect();
        if got != want {
            // WARREN_REACH_DEBUG=<text>: the frames the client received that mention it.
            if let Ok(pat) = std::env::var("WARREN_REACH_DEBUG") {
                for f in c.received() {
                    let t = format!("{f:?}");
                    if t.contains(&pat) || t.starts_with("Welcome") {
                        let t: String = t.chars().filter(|c| *c != '\n').take(300).collect();
                        eprintln!("  {}: {t}", exec::subject(auth));
                    }
                }
            }
            return Err(format!(
                "{}: holds {:?}\n  the rules allow {:?}",
                exec::subject(auth),
                got,
                want
            ));
        }
        for p in got_nonempty {
            if !partitions.contains(p) {
                return Err(format!(
                    "{}: documents of {p} without a cursor",
                    exec::subject(auth)
                ));
            }
        }
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_hold_exactly_what_the_rules_allow() {
    let seed: u64 = std::env::var("WARREN_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
        });
    println!("seed {seed} (replay with WARREN_SEED={seed})");
    let mut cfg = config(temp_dir("reach"), hs256());
    cfg.schema = SCHEMA.to_owned();
    let server = TestServer::start_with(cfg).await;
    let schema = Schema::parse(SCHEMA).unwrap();
    let mut rng = Rng::new(seed);
    let root_client = start_client(&server, &root(), "root", seed);
    let clients: Vec<(Value, Client)> = USERS
        .iter()
        .enumerate()
        .map(|(i, u)| {
            // Two teams in the token's claims: t<i> and t<i+2>.
            let teams = [i, i + 2].map(|t| Value::String(format!("t{}", t % TEAMS)));
            let auth = obj([("sub", (*u).into()), ("teams", Value::Array(teams.into()))]);
            let c = start_client(&server, &auth, &format!("{u}-1"), seed + i as u64);
            (auth, c)
        })
        .collect();
    // The model of the teams: id → (admin, members), to make mostly allowed writes.
    let mut teams: BTreeMap<usize, (usize, Vec<usize>)> = BTreeMap::new();
    let mut offline = [false; 4];
    let mut next_doc = 0u64;
    let members = |rng: &mut Rng, must: usize| -> Vec<usize> {
        let mut m: Vec<usize> = (0..USERS.len()).filter(|_| rng.below(2) == 0).collect();
        if rng.below(3) > 0 && !m.contains(&must) {
            m.push(must);
        }
        m.sort();
        m
    };
    let names = |m: &[usize]| -> Value {
        Value::Array(m.iter().map(|i| Value::String(USERS[*i].into())).collect())
    };
    let mut checkpoints = 0;
    for step in 1..=240u64 {
        let u = rng.below(USERS.len() as u64) as usize;
        let client = &clients[u].1;
        match rng.below(12) {
            0..=2 => {
                let t = rng.below(TEAMS as u64) as usize;
                match teams.get(&t).cloned() {
                    None => {
                        let m = members(&mut rng, u);
                        client
                            .run(&format!(
                                "Team.create({{ id: \"t{t}\", admin: \"{}\", members: {} }})",
                                USERS[u],
                                names(&m)
                            ))
                            .ok();
                        teams.insert(t, (u, m));
                    }
                    Some((admin, _)) => {
                        let m = members(&mut rng, admin);
                        clients[admin]
                            .1
                            .run(&format!(
                                "Team.byId(\"t{t}\").update({{ members: {} }})",
                                names(&m)
                            ))
                            .ok();
                        teams.insert(t, (admin, m));
                    }
                }
            }
            3 => {
                let t = rng.below(TEAMS as u64) as usize;
                if let Some((admin, _)) = teams.remove(&t) {
                    clients[admin]
                        .1
                        .run(&format!("Team.byId(\"t{t}\")?.delete()"))
                        .ok();
                }
            }
            4..=5 => {
                let t = rng.below(TEAMS as u64) as usize;
                next_doc += 1;
                client
                    .run(&format!(
                        "Task.create({{ id: \"k{next_doc}\", team: \"t{t}\", by: \"{}\" }})",
                        USERS[u]
                    ))
                    .ok();
            }
            6 => {
                next_doc += 1;
                client
                    .mutate(Op::Run {
                        source: format!(
                            "Todo.create({{ id: \"d{next_doc}\", owner: \"{}\" }})",
                            USERS[u]
                        ),
                    })
                    .ok();
            }
            7 => {
                // A note in a space of any user's: readable by that user if it starts
                // with "<user>:" (a new partition another user must be sent).
                let v = USERS[rng.below(USERS.len() as u64) as usize];
                let space = match rng.below(3) {
                    0 => format!("{v}:{}", rng.below(4)),
                    1 => format!("{v}:"),
                    _ => format!("{v}{}", rng.below(2)),
                };
                next_doc += 1;
                client
                    .run(&format!(
                        "Note.create({{ id: \"n{next_doc}\", space: \"{space}\", by: \"{}\" }})",
                        USERS[u]
                    ))
                    .ok();
            }
            8 => {
                // A board of a team: readable by the users whose token lists it.
                next_doc += 1;
                client
                    .run(&format!(
                        "Board.create({{ id: \"b{next_doc}\", team: \"t{}\" }})",
                        rng.below(TEAMS as u64)
                    ))
                    .ok();
            }
            _ => {
                // Offline, online, or a reconnect (a new welcome while others write).
                offline[u] = !offline[u] || rng.below(2) == 0;
                client.set_online(false);
                if !offline[u] {
                    client.set_online(true);
                }
            }
        }
        if step % 60 == 0 {
            checkpoints += 1;
            for (i, (_, c)) in clients.iter().enumerate() {
                offline[i] = false;
                c.set_online(true);
            }
            for (_, c) in &clients {
                assert!(c.wait_synced(WAIT).await, "seed {seed}: not synced");
            }
            let t = Instant::now();
            loop {
                match check(&clients, &root_client, &schema) {
                    Ok(()) => break,
                    Err(e) if t.elapsed() > Duration::from_secs(10) => {
                        panic!("seed {seed}, step {step}: {e}")
                    }
                    Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
                }
            }
        }
        if rng.below(4) == 0 {
            tokio::time::sleep(Duration::from_millis(rng.below(4))).await;
        }
    }
    assert_eq!(checkpoints, 4);
    let held_teams: usize = clients
        .iter()
        .map(|(_, c)| {
            c.replica()
                .partitions()
                .unwrap()
                .iter()
                .filter(|(p, _)| p.starts_with("team:"))
                .count()
        })
        .sum();
    let position = server
        .running
        .as_ref()
        .unwrap()
        .metrics
        .position
        .load(std::sync::atomic::Ordering::Relaxed);
    println!("{position} log entries; {held_teams} team partitions held at the end");
    assert!(held_teams > 0, "seed {seed}: no team was ever shared");
}
