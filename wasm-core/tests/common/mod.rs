//! Shared fixtures for the engine's integration tests: a test schema with per-user and
//! per-team partitions, and helpers to make commits and run queries.
#![allow(dead_code)]

use std::sync::Arc;

use warren_core::eval::Limits;
use warren_core::exec::{Commit, Executor, Op, Outcome};
use warren_core::protocol::ServerFrame;
use warren_core::replica::Replica;
use warren_core::storage::{MemoryStore, Storage};
use warren_core::value::{obj, Value};
use warren_core::{ErrorCode, Schema};

/// Personal todos (one partition per user), teams whose member list decides who reads
/// the team's partition, and tasks in a team's partition.
pub const SCHEMA: &str = r#"
collection Todo {
  partition "user:" + doc.owner
  index byOwner [owner, created]
  allow read   partition == "user:" + auth.sub || auth.role == "admin"
  allow create doc.owner == auth.sub
  allow update old.owner == auth.sub && new.owner == old.owner
  allow delete old.owner == auth.sub || auth.role == "admin"
}

collection Team {
  partition "team:" + doc.id
  allow read   Team.byId(partition.slice(5))?.members?.includes(auth.sub) == true
  allow create doc.admin == auth.sub && doc.members.includes(auth.sub)
  allow update old.admin == auth.sub
  allow delete old.admin == auth.sub
}

collection Task {
  partition "team:" + doc.team
  index byTeam [team, title]
  unique index bySlug [slug]
  allow read   Team.byId(partition.slice(5))?.members?.includes(auth.sub) == true
  allow create Team.byId(doc.team)?.members?.includes(auth.sub) == true
  allow update Team.byId(old.team)?.members?.includes(auth.sub) == true
  allow delete Team.byId(old.team)?.admin == auth.sub
}

collection Log {
  allow read true
}

function addTodo(id, title, created) {
  Todo.create({ id, owner: auth.sub, title, done: false, created })
}

function toggle(id) {
  let t = Todo.byId(id) ?? abort("no such todo: " + id)
  t.update({ done: !t.done })
}

function rename(id, title) {
  let t = Todo.byId(id) ?? abort("no such todo: " + id)
  t.update({ title })
}

function removeTodo(id) {
  let t = Todo.byId(id) ?? abort("no such todo: " + id)
  t.delete()
}

function makeTeam(id, members) {
  Team.create({ id, admin: auth.sub, members })
}

function setMembers(team, members) {
  let t = Team.byId(team) ?? abort("no such team")
  t.update({ members })
}

function addTask(team, title, slug) {
  Task.create({ team, title, slug, done: false })
}
"#;

pub fn schema() -> Arc<Schema> {
    Arc::new(Schema::parse(SCHEMA).expect("test schema parses"))
}

pub fn db() -> Executor<MemoryStore> {
    Executor::new(MemoryStore::new(), schema(), Limits::default())
}

/// Welcomes replica `r` as a server that holds nothing yet does (position 0, none of
/// its commits applied, the schema [`SCHEMA`]): its outbox may then be sent.
pub fn welcome_fresh<S: Storage>(r: &mut Replica<S>) {
    let version = r.schema().unwrap().version().to_owned();
    r.handle(ServerFrame::Welcome {
        schema_version: version,
        schema_source: SCHEMA.into(),
        position: 0,
        applied_seq: 0,
        partitions: vec![],
    })
    .unwrap();
}

pub fn user(sub: &str) -> Value {
    obj([("sub", sub.into())])
}

pub fn admin(sub: &str) -> Value {
    obj([("sub", sub.into()), ("role", "admin".into())])
}

/// Makes commits for one client, numbering them 1, 2, 3...
pub struct Client {
    pub id: String,
    pub auth: Value,
    pub seq: u64,
}

impl Client {
    pub fn new(id: &str, auth: Value) -> Client {
        Client {
            id: id.into(),
            auth,
            seq: 0,
        }
    }

    pub fn call(&mut self, function: &str, args: Value) -> Commit {
        self.seq += 1;
        Commit {
            client_id: self.id.clone(),
            client_seq: self.seq,
            schema_version: String::new(),
            timestamp: 1_700_000_000_000 + self.seq as i64,
            auth: self.auth.clone(),
            op: Op::Call {
                function: function.into(),
                args,
            },
        }
    }

    pub fn run(&mut self, source: &str) -> Commit {
        self.seq += 1;
        Commit {
            client_id: self.id.clone(),
            client_seq: self.seq,
            schema_version: String::new(),
            timestamp: 1_700_000_000_000 + self.seq as i64,
            auth: self.auth.clone(),
            op: Op::Run {
                source: source.into(),
            },
        }
    }
}

/// Commits at the next position.
pub fn commit(db: &mut Executor<MemoryStore>, c: &Commit) -> Outcome {
    let pos = db.position().unwrap() + 1;
    db.commit(c, pos).expect("storage does not fail")
}

#[track_caller]
pub fn assert_committed(o: &Outcome) -> Value {
    match o {
        Outcome::Committed { result, .. } => result.clone(),
        other => panic!("expected Committed, got {other:?}"),
    }
}

#[track_caller]
pub fn assert_rejected(o: &Outcome, code: ErrorCode) -> String {
    match o {
        Outcome::Rejected { code: c, message } => {
            assert_eq!(*c, code, "message: {message}");
            message.clone()
        }
        other => panic!("expected Rejected({code}), got {other:?}"),
    }
}

#[allow(unused_imports)]
pub use warren_core::testing::Rng;

/// The seed from `WARREN_SEED`, or the given default; printed either way.
pub fn seed(default: u64) -> u64 {
    let s = std::env::var("WARREN_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default);
    eprintln!("seed: {s} (rerun with WARREN_SEED={s})");
    s
}
