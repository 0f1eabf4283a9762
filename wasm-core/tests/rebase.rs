//! Rebase in proportion to what changed (the replica's view, `replica::view`).
//!
//! A small server (an [`Executor`] over a [`MemoryStore`]) runs the replica's pending
//! commits in order and hands back the frames a connection would get (`Effects` of the
//! user's partition, then the `Outcome`), one confirmation at a time. The replica's
//! work counters ([`Replica::stats`]) show what each confirmation cost, and every view
//! is compared with a replica reopened on a copy of the store, which re-executes every
//! pending commit from scratch (the definition of the view).
//!
//! 1. Confirmations whose effects equal the optimistic writes run no other commit:
//!    N confirmations cost N, not N²/2 (500 and 5,000 offline writes).
//! 2. A confirmation whose effects differ runs again only the commits that read what
//!    changed, and what their new run changes carries on to the commits that read it.
//! 3. Live queries run again only when a key they read changed.

mod common;

use std::sync::Arc;

use common::{user, SCHEMA};
use warren_core::eval::Limits;
use warren_core::exec::{self, Commit, Executor, Op, Outcome};
use warren_core::protocol::{CommitResult, ServerFrame};
use warren_core::replica::{Event, Replica};
use warren_core::storage::MemoryStore;
use warren_core::value::{obj, Value};
use warren_core::Schema;

const CLIENT: &str = "device-1";

fn add_todo(id: &str) -> Op {
    Op::Call {
        function: "addTodo".into(),
        args: obj([
            ("id", id.into()),
            ("title", format!("title of {id}").into()),
            ("created", Value::Int(1)),
        ]),
    }
}

fn run(source: &str) -> Op {
    Op::Run {
        source: source.into(),
    }
}

/// The replica, opened offline, and the server's state.
struct World {
    replica: Replica<MemoryStore>,
    server: Executor<MemoryStore>,
    /// The next pending commit the server has not run yet (by index into the outbox
    /// as it was when `connect` was called).
    sent: Vec<(u64, Op, i64)>,
}

impl World {
    fn new() -> World {
        let mut replica = Replica::open(MemoryStore::new(), CLIENT, Some(SCHEMA)).unwrap();
        replica.set_auth(user("ann"));
        World {
            replica,
            server: Executor::new(
                MemoryStore::new(),
                Arc::new(Schema::parse(SCHEMA).unwrap()),
                Limits::default(),
            ),
            sent: Vec::new(),
        }
    }

    /// A local write, offline; the clock is `now`.
    fn write(&mut self, op: Op, now: i64) -> Value {
        self.replica
            .mutate(op, now)
            .expect("the write is made")
            .result
    }

    /// Connects: the welcome, then every pending commit is handed to the server.
    fn connect(&mut self) {
        let version = self.replica.schema().unwrap().version().to_owned();
        self.replica
            .handle(ServerFrame::Welcome {
                schema_version: version,
                schema_source: SCHEMA.into(),
                position: self.server.position().unwrap(),
                applied_seq: 0,
                partitions: vec!["user:ann".into()],
            })
            .unwrap();
        self.replica.flush().unwrap();
        self.sent = self
            .replica
            .pending()
            .iter()
            .map(|p| (p.seq, p.op.clone(), p.timestamp))
            .collect();
        self.sent.reverse();
    }

    /// The server runs the next commit (with its own clock, `server_now`) and the
    /// replica receives its effects and its outcome.
    fn confirm_next(&mut self, server_now: i64) {
        let (seq, op, _) = self.sent.pop().expect("a commit to confirm");
        let commit = Commit {
            client_id: exec::scoped_client_id(&user("ann"), CLIENT),
            client_seq: seq,
            schema_version: String::new(),
            timestamp: server_now,
            auth: user("ann"),
            op,
        };
        let position = self.server.position().unwrap() + 1;
        let outcome = self.server.commit(&commit, position).unwrap();
        let Outcome::Committed { writes, result } = outcome else {
            panic!("the server refused commit {seq}: {outcome:?}");
        };
        self.replica
            .handle(ServerFrame::Effects { position, writes })
            .unwrap();
        self.replica
            .handle(ServerFrame::Outcome {
                seq,
                result: CommitResult::Committed { position, result },
            })
            .unwrap();
        self.replica.flush().unwrap();
    }

    /// The view equals base + pending re-executed from scratch (a replica reopened
    /// on a copy of the store does exactly that).
    fn check(&mut self, queries: &[&str]) {
        let mut fresh = Replica::open(self.replica.store().clone(), CLIENT, None).unwrap();
        fresh.set_auth(user("ann"));
        for q in queries {
            assert_eq!(
                self.replica.query(q).unwrap(),
                fresh.query(q).unwrap(),
                "{q}: the view differs from base + pending re-executed"
            );
        }
    }
}

const VIEW: &[&str] = &[
    "Todo.all().map(t => [t.id, t.title, t.done, t.created, versionOf(t)])",
    "Todo.byOwner(\"ann\").map(.id)",
    "Todo.all().count()",
];

/// N offline creates, then N confirmations one by one: no confirmation runs any other
/// pending commit again, so confirming N costs N whatever N is.
fn confirm_offline_writes(n: usize) {
    let mut w = World::new();
    for i in 0..n {
        w.write(add_todo(&format!("t{i:05}")), 1_000);
    }
    let before = w.replica.stats();
    w.connect();
    for i in 0..n {
        w.confirm_next(2_000);
        if i % (n / 5) == 0 {
            assert_eq!(w.replica.pending().len(), n - i - 1);
        }
    }
    let after = w.replica.stats();
    assert_eq!(
        after.reexecuted - before.reexecuted,
        0,
        "{n} confirmations ran other commits again: {after:?}"
    );
    assert_eq!(after.rebuilds, before.rebuilds, "no rebuild from scratch");
    assert_eq!(
        after.view_bytes, 0,
        "the view holds nothing once all is confirmed"
    );
    assert!(w.replica.pending().is_empty());
    assert_eq!(
        w.replica.query("Todo.all().count()").unwrap(),
        Value::Int(n as i64)
    );
    w.check(VIEW);
}

#[test]
fn confirming_500_offline_writes_runs_nothing_again() {
    confirm_offline_writes(500);
}

#[test]
fn confirming_5000_offline_writes_runs_nothing_again() {
    confirm_offline_writes(5_000);
}

/// The checks along the way: the view after each confirmation, while some are pending.
#[test]
fn the_view_is_right_after_each_confirmation() {
    let mut w = World::new();
    for i in 0..20 {
        w.write(add_todo(&format!("t{i:02}")), 1_000);
        if i % 3 == 0 {
            w.write(
                Op::Call {
                    function: "toggle".into(),
                    args: obj([("id", format!("t{i:02}").into())]),
                },
                1_000,
            );
        }
    }
    w.connect();
    while !w.sent.is_empty() {
        w.confirm_next(2_000);
        w.check(VIEW);
    }
}

/// A create whose confirmed document differs from the optimistic one (its `created`
/// is the clock, and the server's clock is not the client's): only the commits that
/// read it run again, and a commit whose new run writes something else makes the
/// commits that read that run again too.
#[test]
fn a_differing_confirmation_reruns_only_what_depends_on_it() {
    let mut w = World::new();
    // 1: a is created at the client's clock.
    w.write(
        run(r#"Todo.create({ id: "a", owner: "ann", title: "a", done: false, created: now() })"#),
        1_000,
    );
    // 2: b, unrelated.
    w.write(add_todo("b"), 1_000);
    // 3: c copies a's creation time (reads a, writes c).
    w.write(
        run(r#"let a = Todo.byId("a"); Todo.create({ id: "c", owner: "ann", title: "after " + a.created.toString(), done: false, created: 5 })"#),
        1_000,
    );
    // 4: toggles b (reads b only).
    w.write(
        Op::Call {
            function: "toggle".into(),
            args: obj([("id", "b".into())]),
        },
        1_000,
    );
    // 5: renames c after its own title (reads c only: changes only through 3's rerun).
    w.write(
        run(r#"let c = Todo.byId("c"); c.update({ title: c.title + "!" })"#),
        1_000,
    );
    assert_eq!(
        w.replica.query(r#"Todo.byId("c").title"#).unwrap(),
        Value::from("after 1000!")
    );
    w.connect();
    let before = w.replica.stats();
    w.confirm_next(7_777);
    let after = w.replica.stats();
    assert_eq!(
        after.reexecuted - before.reexecuted,
        2,
        "commits 3 (reads a) and 5 (reads what 3 wrote) run again; 2 and 4 do not"
    );
    assert_eq!(
        w.replica.query(r#"Todo.byId("c").title"#).unwrap(),
        Value::from("after 7777!")
    );
    w.check(VIEW);
    while !w.sent.is_empty() {
        w.confirm_next(8_000);
        w.check(VIEW);
    }
    assert_eq!(
        w.replica.query(r#"Todo.byId("c").title"#).unwrap(),
        Value::from("after 7777!")
    );
}

/// Live queries run again only when a key they read changed: a query of one document
/// does not run for the confirmations of others, a count does.
#[test]
fn live_queries_rerun_only_for_what_they_read() {
    let mut w = World::new();
    w.write(add_todo("x"), 1_000);
    for i in 0..30 {
        w.write(add_todo(&format!("t{i:02}")), 1_000);
    }
    let (one, _) = w.replica.subscribe(r#"Todo.byId("x").title"#).unwrap();
    let (count, first) = w.replica.subscribe("Todo.all().count()").unwrap();
    assert_eq!(first, Value::Int(31));
    w.connect();
    w.replica.take_events();
    w.confirm_next(2_000); // x itself: its version changes, so `one` looks again
    let start = w.replica.stats().live_runs;
    for _ in 0..30 {
        w.confirm_next(2_000);
    }
    let runs = w.replica.stats().live_runs - start;
    assert!(
        runs <= 30,
        "only the count runs again for the others' confirmations: {runs} runs"
    );
    let events = w.replica.take_events();
    assert!(
        !events
            .iter()
            .any(|e| matches!(e, Event::Changed { live, .. } if *live == one || *live == count)),
        "nothing the live queries show changed: {events:?}"
    );
    // A write that changes x is seen.
    w.write(
        Op::Call {
            function: "rename".into(),
            args: obj([("id", "x".into()), ("title", "renamed".into())]),
        },
        3_000,
    );
    let events = w.replica.take_events();
    assert!(events.iter().any(
        |e| matches!(e, Event::Changed { live, value } if *live == one && *value == Value::from("renamed"))
    ));
}
