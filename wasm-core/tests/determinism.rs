//! The engine's contract: the same commits in the same order give the same outcomes,
//! the same state and the same digest on every replica; and replaying the recorded
//! outcomes (effects) gives the same state as executing the commits.
//!
//! Seeded: the seed is printed; rerun a failure with `WARREN_SEED=<seed>`.

mod common;

use common::*;
use warren_core::exec::{Commit, Executor, Outcome, Skip};
use warren_core::storage::MemoryStore;
use warren_core::value::{obj, Value};

const USERS: &[&str] = &["ann", "bob", "carol", "dave"];

/// A random commit from a random client. Covers successful writes, rule denials,
/// aborts, unique violations, parse errors, duplicates and out-of-order sequence
/// numbers.
fn random_commit(rng: &mut Rng, clients: &mut [Client], ids: &mut Vec<String>) -> Commit {
    let ci = rng.below(clients.len() as u64) as usize;
    let c = &mut clients[ci];
    let some_id = |rng: &mut Rng, ids: &Vec<String>| {
        if ids.is_empty() || rng.below(10) == 0 {
            format!("missing{}", rng.below(5))
        } else {
            rng.pick(ids).clone()
        }
    };
    let team = format!("t{}", rng.below(3));
    let commit = match rng.below(14) {
        0..=3 => {
            let id = format!("{}-{}", c.id, rng.below(1000));
            ids.push(id.clone());
            c.call(
                "addTodo",
                obj([
                    ("id", id.into()),
                    ("title", format!("title {}", rng.below(100)).into()),
                    ("created", Value::Int(rng.below(50) as i64)),
                ]),
            )
        }
        4 | 5 => c.call("toggle", obj([("id", some_id(rng, ids).into())])),
        6 => c.call(
            "rename",
            obj([("id", some_id(rng, ids).into()), ("title", format!("r{}", rng.below(9)).into())]),
        ),
        7 => c.call("removeTodo", obj([("id", some_id(rng, ids).into())])),
        8 => {
            let members: Vec<Value> = USERS.iter().filter(|_| rng.below(2) == 0).map(|u| Value::from(*u)).collect();
            c.call("makeTeam", obj([("id", team.into()), ("members", Value::Array(members))]))
        }
        9 => c.call(
            "addTask",
            obj([
                ("team", team.into()),
                ("title", format!("task {}", rng.below(20)).into()),
                ("slug", format!("s{}", rng.below(30)).into()),
            ]),
        ),
        10 => c.run(&format!(
            "let n = Todo.byOwner(auth.sub).count()\n\
             Todo.byOwner(auth.sub).order(desc(.created)).take({}).forEach(t => t.update({{ done: n % 2 == 0, n }}))\n\
             n",
            rng.below(4)
        )),
        11 => c.run(&format!(
            "Todo.create({{ owner: auth.sub, title: newId(), created: now() % 100 }})\n\
             if {} {{ abort(\"changed my mind\") }}",
            rng.below(2) == 0
        )),
        12 => c.run("this is not ( valid"),
        _ => c.call(
            "setMembers",
            obj([("team", team.into()), ("members", Value::Array(vec![Value::from(*rng.pick(USERS))]))]),
        ),
    };
    // Sometimes retransmit an old sequence number, or skip ahead by one.
    match rng.below(20) {
        0 if commit.client_seq > 1 => {
            let mut dup = commit.clone();
            dup.client_seq = 1 + rng.below(commit.client_seq - 1);
            c.seq -= 1; // the fresh number was not used
            dup
        }
        1 => {
            let mut ahead = commit.clone();
            ahead.client_seq += 1;
            c.seq -= 1;
            ahead
        }
        _ => commit,
    }
}

fn run_seed(seed: u64, commits: usize) {
    let mut rng = Rng(seed);
    let mut clients: Vec<Client> = USERS
        .iter()
        .enumerate()
        .map(|(i, u)| {
            Client::new(
                &format!("client-{i}"),
                if i == 3 { admin(u) } else { user(u) },
            )
        })
        .collect();
    let mut ids = Vec::new();
    let mut a = db();
    let mut b = Executor::new(MemoryStore::new(), schema(), Default::default());
    let mut replay = db();
    let mut kinds = [0usize; 4];
    for pos in 1..=commits as u64 {
        let c = random_commit(&mut rng, &mut clients, &mut ids);
        let oa = a.commit(&c, pos).unwrap();
        let ob = b.commit(&c, pos).unwrap();
        assert_eq!(oa, ob, "seed {seed}: outcomes differ at position {pos}");
        assert_eq!(
            a.digest().unwrap(),
            b.digest().unwrap(),
            "seed {seed}: digests differ at {pos}"
        );
        // The third replica never executes: it applies what the first recorded.
        let d = replay.apply(pos, &c.client_id, c.client_seq, &oa).unwrap();
        assert_eq!(
            d,
            a.digest().unwrap(),
            "seed {seed}: replayed digest differs at {pos}"
        );
        kinds[match oa {
            Outcome::Committed { .. } => 0,
            Outcome::Rejected { .. } => 1,
            Outcome::Skipped(Skip::Duplicate) => 2,
            Outcome::Skipped(Skip::OutOfOrder { .. }) => 3,
        }] += 1;
    }
    assert_eq!(a.store(), b.store(), "seed {seed}: states differ");
    assert_eq!(
        a.store(),
        replay.store(),
        "seed {seed}: replayed state differs"
    );
    // The mix must exercise every path, or the test proves little.
    eprintln!(
        "seed {seed}: committed {}, rejected {}, duplicate {}, out of order {}",
        kinds[0], kinds[1], kinds[2], kinds[3]
    );
    assert!(
        kinds.iter().all(|k| *k > 0),
        "seed {seed}: outcome mix {kinds:?}"
    );
    // And queries agree too.
    for u in USERS {
        let src =
            "Todo.all().order(.created, .id).map(t => [t.id, t.done, versionOf(t)]).toArray()";
        assert_eq!(
            a.query(src, &user(u), 0).unwrap(),
            replay.query(src, &user(u), 0).unwrap()
        );
    }
}

#[test]
fn replicas_agree_and_replay_matches_execution() {
    let base = seed(0x5eed_2026);
    for i in 0..4 {
        run_seed(base.wrapping_add(i), 1_500);
    }
}

#[test]
fn the_digest_depends_on_every_effect() {
    let mut a = db();
    let mut b = db();
    let mut ca = Client::new("c", user("ann"));
    let mut cb = Client::new("c", user("ann"));
    let x = ca.call(
        "addTodo",
        obj([
            ("id", "x".into()),
            ("title", "one".into()),
            ("created", Value::Int(1)),
        ]),
    );
    let y = cb.call(
        "addTodo",
        obj([
            ("id", "x".into()),
            ("title", "two".into()),
            ("created", Value::Int(1)),
        ]),
    );
    a.commit(&x, 1).unwrap();
    b.commit(&y, 1).unwrap();
    assert_ne!(a.digest().unwrap(), b.digest().unwrap());
    // Same effects at a different position: a different digest.
    let mut c = db();
    let mut cc = Client::new("c", user("ann"));
    c.commit(
        &cc.call(
            "addTodo",
            obj([
                ("id", "x".into()),
                ("title", "one".into()),
                ("created", Value::Int(1)),
            ]),
        ),
        2,
    )
    .unwrap();
    assert_ne!(a.digest().unwrap(), c.digest().unwrap());
}

#[test]
fn positions_must_increase() {
    let mut a = db();
    let mut c = Client::new("c", user("ann"));
    a.commit(
        &c.call(
            "addTodo",
            obj([
                ("id", "x".into()),
                ("title", "t".into()),
                ("created", Value::Int(1)),
            ]),
        ),
        5,
    )
    .unwrap();
    let e = a
        .commit(&c.call("toggle", obj([("id", "x".into())])), 5)
        .unwrap_err();
    assert_eq!(e.code, warren_core::ErrorCode::InvalidArgument);
    assert_eq!(a.position().unwrap(), 5);
}

/// The same seeded workload gives the same digest in every build: this native test and
/// the browser test in `wasm-core/web/tests/determinism.rs` both check these values.
#[test]
fn the_seeded_scenario_matches_the_recorded_digests() {
    for (seed, n, want) in warren_core::scenario::GOLDEN {
        let got = warren_core::scenario::seeded_digest(*seed, *n);
        println!("seed {seed}, {n} commits: {got}");
        assert_eq!(got, *want, "seed {seed}");
    }
}

fn q(src: &str) -> Result<Value, warren_core::Error> {
    let db = db();
    db.query(src, &user("ann"), 0)
}

/// `-0.0` is not a second zero anywhere a float enters: canonical bytes (the log, the
/// store, frames) refuse it, and JSON and arithmetic make `0.0`.
#[test]
fn negative_zero_enters_nowhere() {
    let mut bytes = vec![0x04];
    bytes.extend_from_slice(&(-0.0f64).to_bits().to_le_bytes());
    assert_eq!(
        Value::decode(&bytes).unwrap_err().code,
        warren_core::ErrorCode::Corrupt
    );
    let mut arr = vec![0x07, 0x01];
    arr.extend_from_slice(&bytes);
    assert!(Value::decode(&arr).is_err());
    let zero = |v: &Value| matches!(v, Value::Float(f) if f.to_bits() == 0);
    assert!(zero(&Value::parse_json("-0.0").unwrap()));
    assert!(
        zero(&Value::parse_json("-0").unwrap())
            || Value::parse_json("-0").unwrap() == Value::Int(0)
    );
    for src in [
        "-1.0 * 0.0",
        "0.0 / -3.0",
        "-(0.0)",
        "toFloat(-0)",
        "-0.0 % 5.0",
        "abs(-0.0)",
    ] {
        let v = q(src).unwrap();
        assert!(zero(&v), "{src} gave {v:?}");
    }
    assert_eq!(
        q("[distinct([0.0, -0.0]).length, -0.0 == 0.0, toString(-0.0), order([-0.0, 0.0, -1.0], x => x)]")
            .unwrap()
            .to_string(),
        r#"[1,true,"0.0",[-1.0,0.0,0.0]]"#
    );
}

/// Counts beyond 32 bits mean the same on every build (wasm32's `usize` is 32 bits).
#[test]
fn counts_past_32_bits_clamp_the_same_everywhere() {
    for (src, want) in [
        ("[1, 2, 3].take(5000000000)", "[1,2,3]"),
        ("[1, 2, 3].skip(5000000000)", "[]"),
        ("take([1, 2, 3], 9223372036854775807)", "[1,2,3]"),
        (r#""".repeat(5000000000)"#, r#""""#),
        (r#""ab".slice(-5000000000, 5000000000)"#, r#""ab""#),
        ("[1, 2, 3].slice(4294967297)", "[]"),
        ("[1, 2, 3][4294967296]", "null"),
        (r#""abc"[-4294967296]"#, "null"),
    ] {
        assert_eq!(q(src).unwrap().to_string(), want, "{src}");
    }
    let e = q(r#""x".repeat(5000000000)"#).unwrap_err();
    assert_eq!(e.code, warren_core::ErrorCode::ResultTooLarge);
}

/// Floats print one way, by the engine's own code: the shortest text that reads back as
/// the same float (the closest one, and the even last digit on an exact tie), with
/// `.0` on whole numbers and an exponent from 1e16 up and below 1e-5.
// The ties are written with every digit of their exact values.
#[allow(clippy::excessive_precision)]
#[test]
fn floats_print_the_same_in_every_build() {
    let cases: &[(f64, &str)] = &[
        (0.0, "0.0"),
        (1.0, "1.0"),
        (-1.5, "-1.5"),
        (0.1 + 0.2, "0.30000000000000004"),
        (1.0 / 3.0, "0.3333333333333333"),
        (100.0, "100.0"),
        (123.456, "123.456"),
        (1e15, "1000000000000000.0"),
        (9999999999999998.0, "9999999999999998.0"),
        (1e16, "1e+16"),
        (1.5e16, "1.5e+16"),
        (1e21, "1e+21"),
        (1e100, "1e+100"),
        (0.001, "0.001"),
        (1e-5, "0.00001"),
        (0.000012345, "0.000012345"),
        (1.2345e-6, "1.2345e-6"),
        (1e-7, "1e-7"),
        (5e-324, "5e-324"),
        (2.2250738585072014e-308, "2.2250738585072014e-308"),
        (f64::MAX, "1.7976931348623157e+308"),
        (9007199254740993.0, "9007199254740992.0"),
        // Exact ties between two shortest texts: the even last digit.
        (-1808899083386983.25, "-1808899083386983.2"),
        (30281395965754.3125, "30281395965754.312"),
        (152572149567684.125, "152572149567684.12"),
        (-169051908651573.625, "-169051908651573.62"),
    ];
    for (f, want) in cases {
        let v = Value::float(*f).unwrap();
        assert_eq!(v.to_string(), *want, "{f:e}");
        assert_eq!(want.parse::<f64>().unwrap(), *f, "{want} reads back");
    }
    assert_eq!(
        q("[toString(0.1), toString(2.5e-8), toString([1.5, -2.0]), 0.1 + 0.2 + \"\"]")
            .unwrap()
            .to_string(),
        r#"["0.1","2.5e-8","[1.5,-2.0]","0.30000000000000004"]"#
    );
}
