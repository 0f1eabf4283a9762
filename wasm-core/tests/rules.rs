//! Permission rules: allowed and denied cases for read, create, update and delete,
//! rules that read other documents (team membership) and rules that use `auth` claims.

mod common;

use common::*;
use warren_core::value::{obj, Value};
use warren_core::ErrorCode;

fn strs(xs: &[&str]) -> Value {
    Value::Array(xs.iter().map(|s| Value::from(*s)).collect())
}

fn q(
    db: &warren_core::Executor<warren_core::storage::MemoryStore>,
    auth: &Value,
    src: &str,
) -> Value {
    db.query(src, auth, 0)
        .unwrap_or_else(|e| panic!("{src}: {e}"))
}

/// ann and bob each with two todos.
fn seeded() -> (
    warren_core::Executor<warren_core::storage::MemoryStore>,
    Client,
    Client,
) {
    let mut db = db();
    let mut ann = Client::new("c-ann", user("ann"));
    let mut bob = Client::new("c-bob", user("bob"));
    for (c, ids) in [(&mut ann, ["a1", "a2"]), (&mut bob, ["b1", "b2"])] {
        for (i, id) in ids.iter().enumerate() {
            let o = commit(
                &mut db,
                &c.call(
                    "addTodo",
                    obj([
                        ("id", (*id).into()),
                        ("title", "t".into()),
                        ("created", Value::Int(i as i64)),
                    ]),
                ),
            );
            assert_committed(&o);
        }
    }
    (db, ann, bob)
}

#[test]
fn read_rule_filters_by_partition() {
    let (db, _, _) = seeded();
    assert_eq!(
        q(&db, &user("ann"), "Todo.all().map(.id)"),
        strs(&["a1", "a2"])
    );
    assert_eq!(
        q(&db, &user("bob"), "Todo.all().map(.id)"),
        strs(&["b1", "b2"])
    );
    // Another user's document is invisible, by id and through an index.
    assert_eq!(q(&db, &user("ann"), "Todo.byId(\"b1\")"), Value::Null);
    assert_eq!(
        q(&db, &user("ann"), "Todo.byOwner(\"bob\").count()"),
        Value::Int(0)
    );
    // Anonymous callers see nothing.
    assert_eq!(q(&db, &Value::Null, "Todo.all().count()"), Value::Int(0));
}

#[test]
fn read_rule_uses_auth_claims() {
    let (db, _, _) = seeded();
    assert_eq!(q(&db, &admin("carol"), "Todo.all().count()"), Value::Int(4));
    // The claim must be exactly right: a different role reads nothing.
    let other_role = obj([("sub", "carol".into()), ("role", "editor".into())]);
    assert_eq!(q(&db, &other_role, "Todo.all().count()"), Value::Int(0));
}

#[test]
fn create_allowed_and_denied() {
    let (mut db, mut ann, _) = seeded();
    let ok = commit(
        &mut db,
        &ann.run(r#"Todo.create({ id: "a3", owner: "ann", created: 9 })"#),
    );
    assert_committed(&ok);
    let denied = commit(
        &mut db,
        &ann.run(r#"Todo.create({ id: "x1", owner: "bob", created: 9 })"#),
    );
    let msg = assert_rejected(&denied, ErrorCode::PermissionDenied);
    assert!(msg.contains("create of Todo/x1"), "{msg}");
    assert!(msg.contains("allow create"), "{msg}");
    // Nothing of the denied transaction was written, even for the admin.
    assert_eq!(q(&db, &admin("root"), "Todo.byId(\"x1\")"), Value::Null);
}

#[test]
fn update_allowed_and_denied() {
    let (mut db, mut ann, _) = seeded();
    assert_committed(&commit(
        &mut db,
        &ann.call("toggle", obj([("id", "a1".into())])),
    ));
    assert_eq!(
        q(&db, &user("ann"), "Todo.byId(\"a1\").done"),
        Value::Bool(true)
    );

    // The admin can read ann's todo (read rule) but the update rule wants the owner.
    let mut carol = Client::new("c-carol", admin("carol"));
    let o = commit(
        &mut db,
        &carol.run(r#"Todo.byId("a1").update({ title: "mine now" })"#),
    );
    let msg = assert_rejected(&o, ErrorCode::PermissionDenied);
    assert!(msg.contains("update of Todo/a1"), "{msg}");
    assert!(msg.contains("`allow update`"), "{msg}");
    assert_eq!(
        q(&db, &user("ann"), "Todo.byId(\"a1\").title"),
        Value::from("t")
    );

    // bob cannot even see ann's todo: the function aborts before any write.
    let mut bob = Client::new("c-bob2", user("bob"));
    let o = commit(&mut db, &bob.call("toggle", obj([("id", "a1".into())])));
    assert!(assert_rejected(&o, ErrorCode::Aborted).contains("no such todo"));
}

#[test]
fn update_cannot_move_a_document_to_another_partition() {
    let (mut db, mut ann, _) = seeded();
    let o = commit(
        &mut db,
        &ann.run(r#"Todo.byId("a1").update({ owner: "bob" })"#),
    );
    let msg = assert_rejected(&o, ErrorCode::PartitionChange);
    assert!(
        msg.contains("user:ann") && msg.contains("user:bob"),
        "{msg}"
    );
    let o = commit(
        &mut db,
        &ann.run(r#"Todo.byId("a1").replace({ owner: "bob", created: 1 })"#),
    );
    assert_rejected(&o, ErrorCode::PartitionChange);
}

#[test]
fn delete_allowed_and_denied() {
    let (mut db, mut ann, _) = seeded();
    // An ordinary user cannot delete another's todo through a hand-written transaction
    // either: it is not even visible to them.
    let mut bob = Client::new("c-bob3", user("bob"));
    let o = commit(&mut db, &bob.run(r#"Todo.byId("a1").delete()"#));
    assert_rejected(&o, ErrorCode::Type);
    // The admin claim allows the delete.
    let mut carol = Client::new("c-carol", admin("carol"));
    assert_committed(&commit(&mut db, &carol.run(r#"Todo.byId("a1").delete()"#)));
    assert_eq!(q(&db, &user("ann"), "Todo.all().map(.id)"), strs(&["a2"]));
    // The owner deletes their own.
    assert_committed(&commit(
        &mut db,
        &ann.call("removeTodo", obj([("id", "a2".into())])),
    ));
    assert_eq!(q(&db, &user("ann"), "Todo.all().count()"), Value::Int(0));
}

#[test]
fn a_collection_without_a_rule_denies() {
    let mut db = db();
    let mut ann = Client::new("c", user("ann"));
    let o = commit(&mut db, &ann.run(r#"Log.create({ line: "x" })"#));
    let msg = assert_rejected(&o, ErrorCode::PermissionDenied);
    assert!(msg.contains("no `allow create` rule"), "{msg}");
}

fn team_db() -> (
    warren_core::Executor<warren_core::storage::MemoryStore>,
    Client,
    Client,
    Client,
) {
    let mut db = db();
    let mut ann = Client::new("c-ann", user("ann"));
    let bob = Client::new("c-bob", user("bob"));
    let carol = Client::new("c-carol", user("carol"));
    assert_committed(&commit(
        &mut db,
        &ann.call(
            "makeTeam",
            obj([("id", "t1".into()), ("members", strs(&["ann", "bob"]))]),
        ),
    ));
    assert_committed(&commit(
        &mut db,
        &ann.call(
            "addTask",
            obj([
                ("team", "t1".into()),
                ("title", "plan".into()),
                ("slug", "plan".into()),
            ]),
        ),
    ));
    (db, ann, bob, carol)
}

#[test]
fn rules_that_read_the_team_document() {
    let (mut db, _ann, mut bob, mut carol) = team_db();
    // Members read the team's partition; others do not.
    assert_eq!(
        q(&db, &user("bob"), "Task.all().map(.title)"),
        strs(&["plan"])
    );
    assert_eq!(q(&db, &user("carol"), "Task.all().count()"), Value::Int(0));
    assert_eq!(q(&db, &user("carol"), "Team.byId(\"t1\")"), Value::Null);
    // Create: a member may add a task, a non-member may not.
    assert_committed(&commit(
        &mut db,
        &bob.call(
            "addTask",
            obj([
                ("team", "t1".into()),
                ("title", "build".into()),
                ("slug", "build".into()),
            ]),
        ),
    ));
    let o = commit(
        &mut db,
        &carol.call(
            "addTask",
            obj([
                ("team", "t1".into()),
                ("title", "spy".into()),
                ("slug", "spy".into()),
            ]),
        ),
    );
    let msg = assert_rejected(&o, ErrorCode::PermissionDenied);
    assert!(msg.contains("create of Task/"), "{msg}");
    // Delete: only the team's admin.
    let o = commit(
        &mut db,
        &bob.run(r#"Task.byTeam("t1", "plan").first().delete()"#),
    );
    let msg = assert_rejected(&o, ErrorCode::PermissionDenied);
    assert!(msg.contains("delete of Task/"), "{msg}");
}

#[test]
fn removing_a_member_revokes_reads_and_writes() {
    let (mut db, mut ann, mut bob, _) = team_db();
    assert_eq!(q(&db, &user("bob"), "Task.all().count()"), Value::Int(1));
    assert_committed(&commit(
        &mut db,
        &ann.call(
            "setMembers",
            obj([("team", "t1".into()), ("members", strs(&["ann"]))]),
        ),
    ));
    assert_eq!(q(&db, &user("bob"), "Task.all().count()"), Value::Int(0));
    let o = commit(
        &mut db,
        &bob.call(
            "addTask",
            obj([
                ("team", "t1".into()),
                ("title", "late".into()),
                ("slug", "late".into()),
            ]),
        ),
    );
    assert_rejected(&o, ErrorCode::PermissionDenied);
    // Only the admin may change the member list.
    let o = commit(
        &mut db,
        &bob.call(
            "setMembers",
            obj([("team", "t1".into()), ("members", strs(&["bob"]))]),
        ),
    );
    assert_rejected(&o, ErrorCode::Aborted); // bob no longer sees the team at all
}

#[test]
fn a_rule_sees_the_writes_made_earlier_in_the_same_transaction() {
    let mut db = db();
    let mut ann = Client::new("c-ann", user("ann"));
    // The create rule of Task reads the team created one statement before.
    let o = commit(
        &mut db,
        &ann.run(
            r#"
            Team.create({ id: "t9", admin: "ann", members: ["ann"] })
            Task.create({ team: "t9", title: "first", slug: "first" })
            Task.byTeam("t9").count()
            "#,
        ),
    );
    assert_eq!(assert_committed(&o), Value::Int(1));
}

#[test]
fn unique_index_and_denials_roll_back_the_whole_transaction() {
    let (mut db, mut ann, _, _) = team_db();
    let before = db.store().clone();
    // The first create succeeds inside the transaction, the second violates bySlug:
    // nothing of the transaction remains but the client's sequence number and digest.
    let o = commit(
        &mut db,
        &ann.run(
            r#"
            Task.create({ team: "t1", title: "a", slug: "fresh" })
            Task.create({ team: "t1", title: "b", slug: "plan" })
            "#,
        ),
    );
    assert_rejected(&o, ErrorCode::UniqueViolation);
    let docs = |s: &warren_core::storage::MemoryStore| {
        s.entries()
            .filter(|(k, _)| !matches!(k[0], b'C' | b'M' | b'R'))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect::<Vec<_>>()
    };
    assert_eq!(docs(db.store()), docs(&before));
}
