//! Memory is a budget: every value an evaluation builds or copies is charged against
//! `Limits::max_memory_bytes` before it is allocated, so no program can make a replica
//! allocate more than its limits allow. `peak_rss` runs hostile programs in a child
//! process and holds its peak resident memory to the bound in docs/DECISIONS.md.

mod common;

use common::*;
use warren_core::eval::Limits;
use warren_core::exec::{execute_metered, query_metered, Outcome};
use warren_core::Value;

/// The program of the report: one string of a megabyte, and an array of copies.
fn copies(n: usize) -> String {
    format!(
        "let s = \"x\".repeat(1000000)\n[{}].length",
        vec!["s"; n].join(", ")
    )
}

/// Runs `src` as eve's next commit; returns the rejection code (or "COMMITTED") and
/// the most memory the program held.
fn run(
    db: &mut warren_core::Executor<warren_core::storage::MemoryStore>,
    src: &str,
) -> (String, u64) {
    let mut eve = Client::new("eve", user("eve"));
    eve.seq = db.position().unwrap();
    let c = eve.run(src);
    let pos = db.position().unwrap() + 1;
    let (o, usage) = execute_metered(db.store(), db.schema(), &c, pos, db.limits()).unwrap();
    db.apply(pos, &c.client_id, c.client_seq, &o).unwrap();
    let code = match o {
        Outcome::Rejected { code, .. } => code.as_str().to_owned(),
        Outcome::Committed { .. } => "COMMITTED".to_owned(),
        other => panic!("{other:?}"),
    };
    (code, usage.memory)
}

#[test]
fn copies_of_one_large_string_are_charged_before_they_are_built() {
    let mut db = db();
    let limit = db.limits().max_memory_bytes;
    // 300 copies held 276 MiB before they ran out of fuel; the 16 KiB program with
    // 8,000 copies aborted the server. Both are refused before the 65th copy now.
    for n in [300, 8000] {
        let (code, peak) = run(&mut db, &copies(n));
        assert_eq!(code, "MEMORY_EXHAUSTED", "{n} copies");
        assert!(peak <= limit, "{n} copies: peak {peak}");
        assert!(peak > limit - 2_000_000, "{n} copies: peak {peak}");
    }
    // Within the budget, copies are fine (the size limit of one value applies too).
    let src = "let s = \"x\".repeat(400000)\n[s, s].length";
    assert_eq!(run(&mut db, src).0, "COMMITTED");
    assert_eq!(run(&mut db, &copies(20)).0, "RESULT_TOO_LARGE");
    // Copies held in variables, each value within the size limit (with fuel enough to
    // build them all).
    db.set_limits(Limits {
        fuel: 10_000_000,
        ..Limits::default()
    });
    let lets: String = (0..200).map(|i| format!("let a{i} = [s]\n")).collect();
    let src = format!("let s = \"x\".repeat(500000)\n{lets}a0.length");
    let (code, peak) = run(&mut db, &src);
    assert_eq!(code, "MEMORY_EXHAUSTED");
    assert!(peak <= limit);
}

#[test]
fn reading_a_variable_shares_its_value() {
    let db = db();
    let q = |src: &str| query_metered(db.store(), db.schema(), src, &user("eve"), 0, db.limits());
    // A hundred thousand reads of a megabyte, passed to a lambda and a function each
    // time: no copies, so about a megabyte held, and fuel for the steps alone.
    let (r, usage) = q(
        "let s = \"x\".repeat(1000000)\nlet f = (a, b) => b\nrange(100000).filter(i => f(s, i) < 0).length",
    );
    assert_eq!(r.unwrap(), Value::Int(0));
    assert!(usage.memory < 5_000_000, "{usage:?}");
    assert!(usage.fuel < 1_000_000, "{usage:?}");
}

#[test]
fn what_a_transaction_writes_stays_paid_for() {
    let mut db = db();
    db.set_limits(Limits {
        max_memory_bytes: 4 << 20,
        ..Limits::default()
    });
    // Each document is built, written and let go of; the writes add up.
    let src = "range(40).map(i => Todo.create({ owner: \"eve\", title: \"x\".repeat(200000) + i }).id).length";
    assert_eq!(run(&mut db, src).0, "MEMORY_EXHAUSTED");
    let src = "range(10).map(i => Todo.create({ owner: \"eve\", title: \"x\".repeat(200000) + i }).id).length";
    assert_eq!(run(&mut db, src).0, "COMMITTED");
}

/// Each scan in progress holds a page: at most 32 run one inside another.
#[test]
fn scans_nest_at_most_32_deep() {
    use std::sync::Arc;
    use warren_core::{Executor, Schema};
    let schema = Schema::parse(
        r#"
        collection Item { allow read true  allow create true }
        function nest(n) { Item.all().forEach(i => nest(n + 1)) }
        function shallow(n) { if n < 5 { Item.all().forEach(i => shallow(n + 1)) } else { n } }
        "#,
    )
    .unwrap();
    // Deep evaluation allowed, so that the scans' own limit is the one that holds (on a
    // thread with the stack for it).
    let limits = Limits {
        max_depth: 2_000,
        fuel: 10_000_000,
        ..Limits::default()
    };
    std::thread::Builder::new()
        .stack_size(256 << 20)
        .spawn(move || {
            let store = warren_core::storage::MemoryStore::new();
            let mut db = Executor::new(store, Arc::new(schema), limits);
            let mut c = Client::new("c", user("ann"));
            assert_committed(&commit(&mut db, &c.run("Item.create({ id: \"a\" }).id")));
            let o = commit(&mut db, &c.call("nest", Value::Array(vec![Value::Int(0)])));
            let msg = assert_rejected(&o, warren_core::ErrorCode::DepthExceeded);
            assert!(msg.contains("32 scans"), "{msg}");
            let o = commit(
                &mut db,
                &c.call("shallow", Value::Array(vec![Value::Int(0)])),
            );
            assert_committed(&o);
        })
        .unwrap()
        .join()
        .unwrap();
}

/// Peak resident memory, measured (`/proc/self/status`, so Linux).
#[cfg(target_os = "linux")]
mod peak {
    use super::*;

    /// The bound docs/DECISIONS.md ("Memory") states for one evaluation: twice what the
    /// program and one rule may hold, plus a fixed allowance (pages of scans in progress,
    /// the parsed program, stacks).
    fn documented_bound(l: &Limits) -> u64 {
        2 * (l.max_memory_bytes + l.rule_memory_bytes) + 48 * 1024 * 1024
    }

    /// `VmRSS` and `VmHWM` (the peak) of this process, in bytes.
    fn rss() -> (u64, u64) {
        let status = std::fs::read_to_string("/proc/self/status").unwrap();
        let field = |name: &str| -> u64 {
            let line = status
                .lines()
                .find(|l| l.starts_with(name))
                .unwrap_or_else(|| panic!("no {name}"));
            let kib: u64 = line
                .split_whitespace()
                .nth(1)
                .and_then(|n| n.parse().ok())
                .unwrap();
            kib * 1024
        };
        (field("VmRSS:"), field("VmHWM:"))
    }

    /// Hostile programs, each run once (with enough fuel that memory is the limit that
    /// holds them). The setup gives the attacker documents of their own to read.
    const HOSTILE: &[&str] = &[
        // The report's program: copies of a megabyte.
        "COPIES",
        // Copies held in variables, each within the size limit.
        "LETS",
        // Many small objects: a B-tree node each.
        "range(200000).map(i => ({ a: i }))",
        // Arrays of arrays.
        "range(60000).map(i => [[i], [i], [i]]).length",
        // A string grown a kilobyte at a time.
        "range(1500).reduce((acc, i) => acc + \"x\".repeat(1000), \"\").length",
        // Recursion holding a copy at every level.
        "grow(\"x\".repeat(900000), 0)",
        // Scans inside scans, down the recursion, over large documents.
        "nest(0)",
        // Scans inside scans whose pages are full of documents eve may not read.
        "past(0)",
        "Big.all().where(.n < 0).count()",
        // Large documents read and held.
        "Big.all().toArray().length",
        "Big.all().order(.n).map(b => b.blob.length).toArray().length",
        // Sorting many elements.
        "range(100000).map(i => \"k\" + (i * 7919 % 100000)).order(x => x).length",
        // Object amplification on decoding: documents of many one-entry objects.
        "Tiny.all().map(t => t.items.length).toArray()",
        "[Tiny.byId(\"t0\"), Tiny.byId(\"t1\"), Tiny.byId(\"t2\"), Tiny.byId(\"t3\")].length",
    ];

    const HOSTILE_SCHEMA: &str = r#"
    collection Big {
      partition "user:" + doc.owner
      allow read partition == "user:" + auth.sub
      allow create doc.owner == auth.sub
    }
    collection Tiny {
      partition "user:" + doc.owner
      allow read partition == "user:" + auth.sub
      allow create doc.owner == auth.sub
    }
    function grow(s, n) { let c = [s]; grow(s, n + 1) }
    function nest(n) { Big.all().forEach(b => nest(n + 1)) }
    function past(n) { Big.all().take(1).forEach(b => past(n + 1)) }
    "#;

    #[test]
    #[ignore = "run by peak_rss_stays_within_the_documented_bound in a child process"]
    fn peak_rss_child() {
        if std::env::var("WARREN_PEAK_RSS_CHILD").is_ok() {
            use std::sync::Arc;
            use warren_core::storage::MemoryStore;
            use warren_core::{Executor, Schema};
            let schema = Arc::new(Schema::parse(HOSTILE_SCHEMA).unwrap());
            let limits = Limits {
                fuel: 50_000_000,
                max_args_bytes: 1 << 20,
                ..Limits::default()
            };
            let mut db = Executor::new(MemoryStore::new(), schema, limits.clone());
            let mut eve = Client::new("eve", user("eve"));
            // Eve's: 64 documents of 250 KB, and 8 of 20,000 one-entry objects each.
            for i in 0..64 {
                let src = format!(
                    "Big.create({{ id: \"b{i}\", owner: \"eve\", n: {i}, blob: \"y\".repeat(250000) }}).id"
                );
                assert_committed(&commit(&mut db, &eve.run(&src)));
            }
            // Bob's, which eve may not read, first in id order.
            let mut bob = Client::new("bob", user("bob"));
            for i in 0..64 {
                let src = format!(
                    "Big.create({{ id: \"a{i}\", owner: \"bob\", n: {i}, blob: \"z\".repeat(250000) }}).id"
                );
                assert_committed(&commit(&mut db, &bob.run(&src)));
            }
            for i in 0..8 {
                let src = format!(
                    "Tiny.create({{ id: \"t{i}\", owner: \"eve\", items: range(20000).map(i => ({{ a: null }})) }}).id"
                );
                assert_committed(&commit(&mut db, &eve.run(&src)));
            }
            let (base, _) = rss();
            let mut codes = Vec::new();
            for p in HOSTILE {
                let src = match *p {
                    "COPIES" => copies(8000),
                    "LETS" => {
                        let lets: String = (0..300).map(|i| format!("let a{i} = [s]\n")).collect();
                        format!("let s = \"x\".repeat(500000)\n{lets}a0.length")
                    }
                    other => other.to_owned(),
                };
                let c = eve.run(&src);
                let pos = db.position().unwrap() + 1;
                let (o, usage) =
                    execute_metered(db.store(), db.schema(), &c, pos, &limits).unwrap();
                assert!(usage.memory <= limits.max_memory_bytes);
                db.apply(pos, &c.client_id, c.client_seq, &o).unwrap();
                codes.push(match o {
                    Outcome::Rejected { code, .. } => code.as_str().to_owned(),
                    Outcome::Committed { .. } => "COMMITTED".into(),
                    other => format!("{other:?}"),
                });
            }
            let (_, peak) = rss();
            println!(
                "\nPEAK_RSS base={base} peak={peak} growth={}",
                peak.saturating_sub(base)
            );
            println!("PEAK_RSS codes={}", codes.join(","));
        }
    }

    /// Runs the hostile programs in a child process and holds its peak resident memory,
    /// above what it had before they ran, to the documented bound.
    #[test]
    fn peak_rss_stays_within_the_documented_bound() {
        let out = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "peak::peak_rss_child",
                "--exact",
                "--ignored",
                "--nocapture",
                "--test-threads=1",
            ])
            .env("WARREN_PEAK_RSS_CHILD", "1")
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "the child failed:\n{text}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let line = text
            .lines()
            .find(|l| l.starts_with("PEAK_RSS base="))
            .unwrap_or_else(|| panic!("no measurement:\n{text}"));
        // Shown by `cargo test -- --nocapture` (docs/DECISIONS.md quotes it).
        let growth: u64 = line
            .rsplit("growth=")
            .next()
            .and_then(|n| n.trim().parse().ok())
            .unwrap();
        let codes = text
            .lines()
            .find(|l| l.starts_with("PEAK_RSS codes="))
            .unwrap();
        println!("{line}\n{codes}");
        let bound = documented_bound(&Limits::default());
        assert!(
            growth <= bound,
            "peak RSS grew by {} MiB; the documented bound is {} MiB",
            growth >> 20,
            bound >> 20
        );
        // Every hostile program was stopped by a limit (or stayed within them).
        assert!(!codes.contains("FUEL_EXHAUSTED"), "{codes}");
    }
}
