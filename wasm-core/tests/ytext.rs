//! Collaborative text fields (`field body: text`, `doc.editText(field, update)`):
//! concurrent offline edits merge the same way on every replica, reads give the
//! string, rules check each edit, and hostile updates are refused with a code.
//!
//! Seeded: the seed is printed; rerun a failure with `WARREN_SEED=<seed>`.

mod common;

use common::{assert_committed, assert_rejected, seed, Client, Rng};

/// An editor and the client that sends its updates.
fn person(n: u64) -> (Editor, Client) {
    (
        Editor::new(n),
        Client::new(&format!("c{n}"), obj([("sub", format!("u{n}").into())])),
    )
}
use warren_core::eval::Limits;
use warren_core::exec::{Commit, Executor, Outcome};
use warren_core::storage::MemoryStore;
use warren_core::testing::text::Editor;
use warren_core::value::{obj, Value};
use warren_core::ErrorCode;

fn db() -> Executor<MemoryStore> {
    db_with(Limits::default())
}

fn db_with(limits: Limits) -> Executor<MemoryStore> {
    warren_core::testing::text::store_with(limits)
}

fn run(db: &mut Executor<MemoryStore>, c: &Commit) -> Outcome {
    let pos = db.position().unwrap() + 1;
    db.commit(c, pos).expect("storage does not fail")
}

fn edit(client: &mut Client, update: Vec<u8>) -> Commit {
    client.call(
        "edit",
        obj([("id", "n".into()), ("update", Value::Bytes(update))]),
    )
}

fn body(db: &Executor<MemoryStore>) -> String {
    match db
        .query(r#"Note.byId("n").body"#, &obj([("sub", "ann".into())]), 0)
        .unwrap()
    {
        Value::String(s) => s,
        other => panic!("body reads as {other:?}"),
    }
}

/// N people edit the same text offline, then reconnect: their commits reach the log
/// interleaved in a random order (each person's in their own order). Every replica
/// that applies the log gets the same bytes and digest; each person's editor, which
/// receives the others' updates in its own random order, shows the server's text.
#[test]
fn concurrent_offline_edits_converge_in_every_replica() {
    let s = seed(15);
    for round in 0..40u64 {
        let mut rng = Rng::new(s.wrapping_add(round));
        let people = 2 + rng.below(3);
        let (mut editors, mut clients): (Vec<Editor>, Vec<Client>) =
            (0..people).map(person).unzip();
        let mut replicas = [db(), db(), db()];
        let mut log: Vec<Commit> = Vec::new();
        let mut log_updates: Vec<Vec<u8>> = Vec::new();
        for _session in 0..1 + rng.below(3) {
            // Offline: each edits on what it has.
            for e in editors.iter_mut() {
                for _ in 0..rng.below(6) {
                    e.random_edit(&mut rng);
                }
            }
            // Online: the sequencer takes the outboxes interleaved at random.
            let mut queues: Vec<(usize, std::collections::VecDeque<Vec<u8>>)> = editors
                .iter_mut()
                .enumerate()
                .map(|(i, e)| (i, std::mem::take(&mut e.outbox).into()))
                .collect();
            let first = log.len();
            while queues.iter().any(|(_, q)| !q.is_empty()) {
                let live: Vec<usize> = (0..queues.len())
                    .filter(|&i| !queues[i].1.is_empty())
                    .collect();
                let qi = *rng.pick(&live);
                let (who, q) = &mut queues[qi];
                let u = q.pop_front().unwrap();
                log.push(edit(&mut clients[*who], u.clone()));
                log_updates.push(u);
            }
            for r in replicas.iter_mut() {
                for c in &log[first..] {
                    assert_committed(&run(r, c));
                }
            }
            // Each editor receives the new updates (its own again, too) in its own
            // random order.
            for e in editors.iter() {
                let mut mine: Vec<&Vec<u8>> = log_updates[first..].iter().collect();
                for i in (1..mine.len()).rev() {
                    mine.swap(i, rng.below(i as u64 + 1) as usize);
                }
                for u in mine {
                    e.receive(u);
                }
            }
        }
        let text = body(&replicas[0]);
        let digest = replicas[0].digest().unwrap();
        for r in &replicas[1..] {
            assert_eq!(r.digest().unwrap(), digest, "seed {s} round {round}");
            assert_eq!(body(r), text);
        }
        for e in &editors {
            assert_eq!(
                e.string(),
                text,
                "seed {s} round {round}: an editor differs"
            );
        }
        // A replica that saw the same edits in another order allowed by causality
        // (here: person by person) holds the same text.
        let mut other = db();
        let mut by_person: Vec<&Commit> = log.iter().collect();
        by_person.sort_by(|a, b| a.client_id.cmp(&b.client_id));
        let mut sessions_ok = true;
        for c in by_person {
            if !matches!(run(&mut other, c), Outcome::Committed { .. }) {
                // Person by person can break causality (an edit on another's text):
                // refused as out of order, which the comparison below skips.
                sessions_ok = false;
            }
        }
        if sessions_ok {
            assert_eq!(body(&other), text, "seed {s} round {round}");
        }
    }
}

#[test]
fn reads_give_the_string_and_rules_see_it() {
    let mut db = db();
    let (mut e, mut ec) = person(1);
    e.insert(0, "hello world");
    let u = e.outbox.pop().unwrap();
    assert_committed(&run(&mut db, &edit(&mut ec, u)));
    let ann = obj([("sub", "ann".into())]);
    let q = |db: &Executor<MemoryStore>, src: &str| db.query(src, &ann, 0).unwrap();
    assert_eq!(q(&db, r#"Note.byId("n").body"#), Value::from("hello world"));
    assert_eq!(q(&db, r#"Note.byId("n").body.length"#), Value::Int(11));
    assert_eq!(
        q(&db, r#"Note.byId("n").body.includes("wor")"#),
        Value::Bool(true)
    );
    assert_eq!(
        q(&db, r#"typeOf(Note.byId("n").body)"#),
        Value::from("string")
    );
    assert_eq!(
        q(
            &db,
            r#"Note.all().where(.body.startsWith("hello")).map(n => n.body)"#
        ),
        Value::Array(vec!["hello world".into()])
    );
    // A whole document reads with its text as a string.
    assert_eq!(
        q(&db, r#"Note.byId("n")"#),
        obj([
            ("id", "n".into()),
            ("title", "shared".into()),
            ("body", "hello world".into())
        ])
    );

    // The update rule sees the new text: one longer than 2,000 characters is denied.
    e.insert(0, &"x".repeat(2000));
    let u = e.outbox.pop().unwrap();
    assert_rejected(
        &run(&mut db, &edit(&mut ec, u)),
        ErrorCode::PermissionDenied,
    );
    // And a user the rule refuses cannot edit.
    let (mut m, _) = person(2);
    let mut mc = Client::new("m", obj([("sub", "mallory".into())]));
    m.random_edit(&mut Rng::new(1));
    let u = m.outbox.pop().unwrap();
    assert_rejected(
        &run(&mut db, &edit(&mut mc, u)),
        ErrorCode::PermissionDenied,
    );
    assert_eq!(body(&db), "hello world");
}

#[test]
fn text_changes_only_by_its_edits() {
    let mut db = db();
    let mut c = Client::new("w", obj([("sub", "ann".into())]));
    for src in [
        r#"Note.create({ id: "m", body: "x" })"#,
        r#"Note.byId("n").update({ body: "x" })"#,
        r#"Note.byId("n").update({ body: null })"#,
        r#"Note.byId("n").replace({ title: "t", body: "x" })"#,
        r#"Note.byId("n").editText("body", 42)"#,
        r#"Note.byId("n").textState("title")"#,
        r#"Note.byId("missing").editText("body", "AAA=")"#,
        r#"Note.byId("missing").textState("body")"#,
    ] {
        let o = run(&mut db, &c.run(src));
        assert!(
            matches!(&o, Outcome::Rejected { code, .. } if *code == ErrorCode::Type),
            "{src}: {o:?}"
        );
    }
    // Create may leave it out or null; replace keeps it.
    assert_committed(&run(
        &mut db,
        &c.run(r#"Note.create({ id: "m", body: null })"#),
    ));
    // Never edited, it reads as "", for programs and rules alike (the update rule reads
    // `new.body.length`).
    assert_committed(&run(
        &mut db,
        &c.run(r#"Note.byId("m").update({ title: "t" })"#),
    ));
    assert_eq!(
        db.query(r#"Note.byId("m")"#, &obj([("sub", "ann".into())]), 0)
            .unwrap(),
        obj([
            ("id", "m".into()),
            ("title", "t".into()),
            ("body", "".into())
        ])
    );
    let (mut e, mut ec) = person(3);
    e.random_edit(&mut Rng::new(3));
    let u = e.outbox.pop().unwrap();
    assert_committed(&run(&mut db, &edit(&mut ec, u)));
    let before = body(&db);
    assert!(!before.is_empty());
    assert_committed(&run(
        &mut db,
        &c.run(r#"Note.byId("n").replace({ title: "renamed" })"#),
    ));
    assert_eq!(body(&db), before);
}

/// Applying an update the text already has changes nothing: an edit is applied once.
#[test]
fn an_update_applied_twice_changes_nothing() {
    let mut db = db();
    let (mut e, mut ec) = person(4);
    e.random_edit(&mut Rng::new(4));
    let u = e.outbox.pop().unwrap();
    assert_committed(&run(&mut db, &edit(&mut ec, u.clone())));
    let text = body(&db);
    assert_committed(&run(&mut db, &edit(&mut ec, u)));
    assert_eq!(body(&db), text);
}

/// An update that builds on one the text does not have (refused earlier) is refused
/// with its own code, not kept pending.
#[test]
fn an_update_without_its_predecessor_is_refused() {
    let mut db = db();
    let (mut e, mut ec) = person(5);
    e.insert(0, "abc");
    e.insert(1, "d");
    let second = e.outbox.pop().unwrap();
    let first = e.outbox.pop().unwrap();
    assert_rejected(
        &run(&mut db, &edit(&mut ec, second.clone())),
        ErrorCode::TextUpdateOutOfOrder,
    );
    assert_eq!(body(&db), "");
    assert_committed(&run(&mut db, &edit(&mut ec, first)));
    assert_committed(&run(&mut db, &edit(&mut ec, second)));
    assert_eq!(body(&db), e.string());
}

/// lib0 v1 pieces, to build hostile updates by hand.
fn var(out: &mut Vec<u8>, mut v: u64) {
    loop {
        let b = (v & 0x7f) as u8;
        v >>= 7;
        if v == 0 {
            out.push(b);
            return;
        }
        out.push(b | 0x80);
    }
}

fn string(out: &mut Vec<u8>, s: &str) {
    var(out, s.len() as u64);
    out.extend_from_slice(s.as_bytes());
}

/// One client's single root-parented item with the given info byte and content.
fn item(
    client: u64,
    clock: u64,
    info: u8,
    root: &str,
    content: impl FnOnce(&mut Vec<u8>),
) -> Vec<u8> {
    let mut u = Vec::new();
    var(&mut u, 1); // clients
    var(&mut u, 1); // structs
    var(&mut u, client);
    var(&mut u, clock);
    u.push(info);
    var(&mut u, 1); // parent: a root by name
    string(&mut u, root);
    content(&mut u);
    var(&mut u, 0); // delete set: no clients
    u
}

#[test]
fn hostile_updates_are_refused_with_a_code() {
    let ok = item(7, 0, 4, "text", |u| string(u, "hi"));
    let mut db = db();
    let mut c = Client::new("h", obj([("sub", "ann".into())]));
    assert_committed(&run(&mut db, &edit(&mut c, ok.clone())));
    assert_eq!(body(&db), "hi");

    let deep = format!("{}1{}", "[".repeat(40), "]".repeat(40));
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("empty", vec![]),
        ("truncated", ok[..ok.len() - 2].to_vec()),
        ("trailing bytes", [ok.clone(), vec![0]].concat()),
        ("another root", item(7, 1, 4, "other", |u| string(u, "x"))),
        ("a nested type", item(7, 1, 7, "text", |u| var(u, 0))),
        (
            "JSON content",
            item(7, 1, 2, "text", |u| {
                var(u, 1);
                string(u, "1")
            }),
        ),
        (
            "any content",
            item(7, 1, 8, "text", |u| {
                var(u, 1);
                u.push(119);
                string(u, "x")
            }),
        ),
        (
            "a sub-document",
            item(7, 1, 9, "text", |u| string(u, "guid")),
        ),
        (
            "a map entry",
            item(7, 1, 4 | 0x20, "text", |u| {
                string(u, "key");
                string(u, "x")
            }),
        ),
        (
            "an embed nested too deep",
            item(7, 1, 5, "text", |u| string(u, &deep)),
        ),
        (
            "text straight in the fragment",
            item(7, 1, 4, "xml", |u| string(u, "x")),
        ),
        (
            "an element in the Y.Text",
            item(7, 1, 7, "text", |u| {
                var(u, 3);
                string(u, "p")
            }),
        ),
        (
            "an attribute of the fragment",
            item(7, 1, 8 | 0x20, "xml", |u| {
                string(u, "key");
                var(u, 1);
                u.push(119);
                string(u, "x")
            }),
        ),
        (
            "a value nested too deep",
            item(7, 1, 8 | 0x20, "xml", |u| {
                string(u, "key");
                var(u, 1);
                for _ in 0..40 {
                    u.push(117);
                    var(u, 1);
                }
                u.push(126);
            }),
        ),
        (
            "a value of an unknown kind",
            item(7, 1, 8 | 0x20, "xml", |u| {
                string(u, "key");
                var(u, 1);
                u.push(3);
            }),
        ),
        (
            "an attribute that is not JSON",
            item(7, 1, 6, "text", |u| {
                string(u, "bold");
                string(u, "{")
            }),
        ),
        (
            "the engine's client id",
            item((1 << 53) - 1, 0, 4, "text", |u| string(u, "x")),
        ),
        (
            "a client id past 2^53",
            item(1 << 53, 0, 4, "text", |u| string(u, "x")),
        ),
        (
            "a clock past 2^31",
            item(7, 1 << 31, 4, "text", |u| string(u, "x")),
        ),
        (
            "a deleted run of length 0",
            item(7, 1, 1, "text", |u| var(u, 0)),
        ),
        (
            "a string that is not UTF-8",
            item(7, 1, 4, "text", |u| {
                var(u, 2);
                u.extend_from_slice(&[0xff, 0xfe]);
            }),
        ),
        ("a huge struct count", {
            let mut u = Vec::new();
            var(&mut u, 1);
            var(&mut u, u32::MAX as u64);
            var(&mut u, 7);
            var(&mut u, 0);
            u
        }),
        ("a huge client count", {
            let mut u = Vec::new();
            var(&mut u, (1 << 53) - 2);
            u
        }),
        ("a delete range past 2^31", {
            let mut u = Vec::new();
            var(&mut u, 0);
            var(&mut u, 1);
            var(&mut u, 7);
            var(&mut u, 1);
            var(&mut u, (1 << 31) - 2);
            var(&mut u, 5);
            u
        }),
    ];
    for (what, u) in cases {
        let o = run(&mut db, &edit(&mut c, u));
        assert!(
            matches!(
                &o,
                Outcome::Rejected {
                    code: ErrorCode::InvalidTextUpdate,
                    ..
                }
            ),
            "{what}: {o:?}"
        );
    }
    assert_eq!(body(&db), "hi");
}

/// Random mutations of real updates: each is committed or refused with a code the
/// engine gives on purpose, never by a failure inside it (`INTERNAL_ERROR`).
#[test]
fn mutated_updates_never_fail_inside_the_engine() {
    let s = seed(1515);
    let mut rng = Rng::new(s);
    let mut db = db();
    let mut c = Client::new("fuzz", obj([("sub", "ann".into())]));
    let (mut e, _) = person(9);
    let mut committed = 0;
    for i in 0..3000 {
        // A fresh note now and then, within the rule's 2,000 characters.
        if i % 200 == 0 {
            db = self::db();
            c = Client::new("fuzz", obj([("sub", "ann".into())]));
        }
        e.random_edit(&mut rng);
        let mut u = e.outbox.pop().unwrap();
        if i % 4 != 0 {
            for _ in 0..1 + rng.below(4) {
                match rng.below(4) {
                    0 if !u.is_empty() => {
                        let at = rng.index(u.len());
                        u[at] ^= 1 << rng.below(8);
                    }
                    1 if !u.is_empty() => {
                        let at = rng.index(u.len());
                        u.truncate(at);
                    }
                    2 => {
                        let at = rng.index(u.len() + 1);
                        u.insert(at, rng.below(256) as u8);
                    }
                    _ if !u.is_empty() => {
                        let at = rng.index(u.len());
                        u[at] = [0x00, 0x7f, 0x80, 0xff][rng.index(4)];
                    }
                    _ => {}
                }
            }
        }
        match run(&mut db, &edit(&mut c, u)) {
            Outcome::Committed { .. } => committed += 1,
            Outcome::Rejected { code, message } => assert!(
                matches!(
                    code,
                    ErrorCode::InvalidTextUpdate
                        | ErrorCode::TextUpdateOutOfOrder
                        | ErrorCode::PermissionDenied
                ),
                "seed {s} step {i}: {code}: {message}"
            ),
            other => panic!("seed {s} step {i}: {other:?}"),
        }
        // Keep the editor in step with what the text has (a refused edit of its own
        // leaves the editor ahead, and its next updates out of order).
        if i % 10 == 9 {
            e = Editor::new(10 + i as u64);
        }
    }
    assert!(committed > 150, "seed {s}: only {committed} committed");
}

/// Work and memory are paid before `yrs` runs: a large update on a small budget is
/// refused for fuel or memory, and the text stays as it was.
#[test]
fn an_update_is_paid_for_before_it_runs() {
    let big = item(7, 0, 4, "text", |u| string(u, &"y".repeat(60_000)));
    for (limits, code) in [
        (
            Limits {
                fuel: 2_000,
                ..Limits::default()
            },
            ErrorCode::FuelExhausted,
        ),
        (
            Limits {
                max_memory_bytes: 1024 * 1024,
                ..Limits::default()
            },
            ErrorCode::MemoryExhausted,
        ),
    ] {
        let mut db = db_with(limits);
        let mut c = Client::new("big", obj([("sub", "ann".into())]));
        assert_rejected(&run(&mut db, &edit(&mut c, big.clone())), code);
        assert_eq!(body(&db), "");
    }
}

/// Deleted text is collected: after its text is deleted, the stored value holds
/// little more than the ids of what was there.
#[test]
fn deleted_text_is_garbage_collected() {
    let mut db = db();
    let (mut e, mut ec) = person(11);
    for _ in 0..20 {
        e.insert(0, &"z".repeat(90));
    }
    e.remove(0, 1_800);
    let updates = std::mem::take(&mut e.outbox);
    for u in updates {
        assert_committed(&run(&mut db, &edit(&mut ec, u)));
    }
    assert_eq!(body(&db), "");
    let stored = stored_len(&db);
    assert!(
        stored < 300,
        "the stored text holds {stored} bytes after deleting 1,800"
    );
}

fn stored_len(db: &Executor<MemoryStore>) -> usize {
    use warren_core::storage::{KeyRange, Storage};
    let page = db
        .store()
        .scan(
            &KeyRange::prefix(&warren_core::keys::doc_key("Note", "n")),
            false,
            10,
        )
        .unwrap();
    page.iter().map(|(_, v)| v.len()).sum()
}

/// What an editor binds to: `textState` gives the whole state as one Yjs update, and
/// an ad-hoc transaction can send an edit as base64 text.
#[test]
fn an_editor_starts_from_text_state_and_sends_base64() {
    use base64::Engine as _;
    let mut db = db();
    let ann = obj([("sub", "ann".into())]);
    // Never edited: the update of an empty document.
    let empty = db
        .query(r#"Note.byId("n").textState("body")"#, &ann, 0)
        .unwrap();
    assert_eq!(empty, Value::Bytes(vec![0, 0]));
    let (mut a, mut ac) = person(20);
    a.insert(0, "from a");
    let u = a.outbox.pop().unwrap();
    assert_committed(&run(&mut db, &edit(&mut ac, u)));
    // A second editor starts from the state and edits on top of it.
    let (mut b, mut bc) = person(21);
    let Value::Bytes(state) = db
        .query(r#"Note.byId("n").textState("body")"#, &ann, 0)
        .unwrap()
    else {
        panic!("textState gives bytes")
    };
    b.receive(&state);
    assert_eq!(b.string(), "from a");
    b.insert(6, ", then b");
    let u = b.outbox.pop().unwrap();
    let b64 = base64::engine::general_purpose::STANDARD.encode(&u);
    let src = format!(r#"Note.byId("n").editText("body", "{b64}").body"#);
    assert_eq!(
        assert_committed(&run(&mut db, &bc.run(&src))),
        Value::from("from a, then b")
    );
    assert_rejected(
        &run(
            &mut db,
            &bc.run(r#"Note.byId("n").editText("body", "not base64!")"#),
        ),
        ErrorCode::InvalidTextUpdate,
    );
}

/// Many concurrent insertions at one place make the merge quadratic (each is compared
/// with the others): the fuel charged grows with parts × (state + parts), so such an
/// update on a full text runs out of fuel instead of holding the replica.
#[test]
fn concurrent_siblings_are_paid_for() {
    // n clients each insert "x" at the start of the text, with no origin.
    let siblings = |first: u64, n: u64| {
        let mut u = Vec::new();
        var(&mut u, n);
        for c in first..first + n {
            var(&mut u, 1);
            var(&mut u, c);
            var(&mut u, 0);
            u.push(4);
            var(&mut u, 1);
            string(&mut u, "text");
            string(&mut u, "x");
        }
        var(&mut u, 0);
        u
    };
    let schema = "collection Note { field body: text\n allow read true\n allow create true\n allow update true }\n\
                  function edit(id, update) { Note.byId(id).editText(\"body\", update) }";
    let mut db = Executor::new(
        MemoryStore::new(),
        std::sync::Arc::new(warren_core::Schema::parse(schema).unwrap()),
        Limits {
            max_doc_bytes: 1024 * 1024,
            ..Limits::default()
        },
    );
    let mut c = Client::new("s", obj([("sub", "ann".into())]));
    assert_committed(&run(&mut db, &c.run(r#"Note.create({ id: "n" })"#)));
    let mut refused = None;
    for round in 0..40 {
        let u = siblings(100_000 + round * 4000, 4000);
        let t0 = std::time::Instant::now();
        let o = run(&mut db, &edit(&mut c, u));
        eprintln!(
            "round {round}: {:?} in {:?}",
            matches!(o, Outcome::Committed { .. }),
            t0.elapsed()
        );
        if let Outcome::Rejected { code, .. } = o {
            refused = Some((round, code));
            break;
        }
    }
    let (round, code) = refused.expect("some round runs out of fuel");
    assert_eq!(code, ErrorCode::FuelExhausted);
    assert!(
        round >= 1,
        "a first round of 4,000 siblings on an empty text is affordable"
    );
}

/// Elements nested `depth` deep in the fragment, each the parent of the next, in one
/// update of client 7 (built by hand: an editor would need `depth` transactions).
fn nested(depth: u64) -> Vec<u8> {
    let mut u = Vec::new();
    var(&mut u, 1); // clients
    var(&mut u, depth); // structs
    var(&mut u, 7);
    var(&mut u, 0);
    for i in 0..depth {
        u.push(7); // a type, no origins
        if i == 0 {
            var(&mut u, 1);
            string(&mut u, "xml");
        } else {
            var(&mut u, 0); // parent: the element before it
            var(&mut u, 7);
            var(&mut u, i - 1);
        }
        var(&mut u, 3); // Y.XmlElement
        string(&mut u, "div");
    }
    var(&mut u, 0);
    u
}

/// `yrs` deletes and garbage-collects nested types by recursion: elements may nest 32
/// deep, and an update that would nest them deeper (alone or on top of the stored
/// ones) is refused before `yrs` sees it.
#[test]
fn elements_nest_a_bounded_depth() {
    let mut db = db();
    let mut c = Client::new("h", obj([("sub", "ann".into())]));
    assert_committed(&run(&mut db, &edit(&mut c, nested(32))));
    for depth in [33, 5_000] {
        let o = run(&mut db, &edit(&mut c, nested(depth)));
        assert_rejected(&o, ErrorCode::InvalidTextUpdate);
    }
    // One more level below the 32 stored: its parent is in the state, not the update.
    let mut u = Vec::new();
    var(&mut u, 1);
    var(&mut u, 1);
    var(&mut u, 8);
    var(&mut u, 0);
    u.push(7);
    var(&mut u, 0);
    var(&mut u, 7);
    var(&mut u, 31);
    var(&mut u, 3);
    string(&mut u, "div");
    var(&mut u, 0);
    assert_rejected(
        &run(&mut db, &edit(&mut c, u)),
        ErrorCode::InvalidTextUpdate,
    );
}

/// The rich-text root (a `Y.XmlFragment` named "xml", what y-prosemirror binds):
/// editors insert paragraphs with attributes and links whose values are objects of
/// several keys, which `yrs` keeps in randomly seeded maps. Replicas applying the
/// same log in separate documents (separate seeds) hold the same bytes, and programs
/// read the paragraphs' text.
#[test]
fn rich_text_edits_converge_byte_for_byte() {
    let s = seed(1516);
    for round in 0..20u64 {
        let mut rng = Rng::new(s.wrapping_add(round));
        let (mut editors, mut clients): (Vec<Editor>, Vec<Client>) = (0..3).map(person).unzip();
        let mut replicas = [db(), db(), db()];
        for _ in 0..3 {
            for e in editors.iter_mut() {
                for _ in 0..1 + rng.below(4) {
                    e.random_xml_edit(&mut rng);
                }
            }
            let mut sent = Vec::new();
            for (e, c) in editors.iter_mut().zip(clients.iter_mut()) {
                for u in std::mem::take(&mut e.outbox) {
                    let commit = edit(c, u.clone());
                    for r in replicas.iter_mut() {
                        assert_committed(&run(r, &commit));
                    }
                    sent.push(u);
                }
            }
            for e in &editors {
                for u in &sent {
                    e.receive(u);
                }
            }
        }
        let digests: Vec<_> = replicas.iter().map(|r| r.digest().unwrap()).collect();
        assert!(
            digests.windows(2).all(|w| w[0] == w[1]),
            "seed {s} round {round}"
        );
        let text = body(&replicas[0]);
        for e in &editors {
            assert_eq!(e.string(), text, "seed {s} round {round}");
        }
    }
}
