//! Quotas per identity (`warren_core::quota`), as a server applies commits
//! (`Executor::serve_commit`, i.e. `exec::commit_batch`): documents, bytes and
//! partitions counted for their creator, a commit over a quota rejected with
//! `IDENTITY_QUOTA_EXCEEDED` and changing nothing, deletes giving counts back; and a
//! seeded random run checking that the counts always equal a recount of the state and
//! never pass a quota.

use std::collections::BTreeMap;
use std::sync::Arc;

use warren_core::eval::Limits;
use warren_core::exec::{Commit, Executor, Op, Outcome};
use warren_core::keys;
use warren_core::quota::{self, Quotas, Usage};
use warren_core::storage::{KeyRange, MemoryStore, Storage};
use warren_core::testing::Rng;
use warren_core::value::obj;
use warren_core::{Schema, Value};

const SCHEMA: &str = r#"
collection Item {
  partition "p:" + doc.p
  allow read   true
  allow create true
  allow update true
  allow delete true
}
"#;

struct Db {
    ex: Executor<MemoryStore>,
    seqs: BTreeMap<String, u64>,
    pos: u64,
}

impl Db {
    fn new(quotas: Quotas) -> Db {
        let limits = Limits {
            quotas,
            ..Limits::default()
        };
        Db {
            ex: Executor::new(
                MemoryStore::new(),
                Arc::new(Schema::parse(SCHEMA).unwrap()),
                limits,
            ),
            seqs: BTreeMap::new(),
            pos: 0,
        }
    }

    fn run(&mut self, sub: &str, source: &str) -> Outcome {
        let seq = self.seqs.entry(sub.to_owned()).or_default();
        *seq += 1;
        self.pos += 1;
        let c = Commit {
            client_id: format!("{sub}-client"),
            client_seq: *seq,
            schema_version: String::new(),
            timestamp: 1,
            auth: obj([("sub", sub.into())]),
            op: Op::Run {
                source: source.into(),
            },
        };
        self.ex.serve_commit(&c, self.pos).unwrap()
    }

    fn ok(&mut self, sub: &str, source: &str) {
        match self.run(sub, source) {
            Outcome::Committed { .. } => {}
            other => panic!("{sub}: {source}: {other:?}"),
        }
    }

    fn over(&mut self, sub: &str, source: &str) -> String {
        let digest = self.ex.digest().unwrap();
        let count = self.count();
        match self.run(sub, source) {
            Outcome::Rejected { code, message } => {
                assert_eq!(code.as_str(), "IDENTITY_QUOTA_EXCEEDED", "{message}");
                assert_eq!(self.count(), count, "a rejected commit changed documents");
                assert_ne!(
                    self.ex.digest().unwrap(),
                    digest,
                    "the rejection is an outcome"
                );
                message
            }
            other => panic!("{sub}: {source}: expected a quota rejection, got {other:?}"),
        }
    }

    fn count(&self) -> i64 {
        match self
            .ex
            .query("Item.all().count()", &Value::Null, 0)
            .unwrap()
        {
            Value::Int(n) => n,
            other => panic!("{other:?}"),
        }
    }

    fn usage(&self, sub: &str) -> Usage {
        quota::usage(self.ex.store(), sub).unwrap()
    }
}

fn create(id: &str, p: u32, body: usize) -> String {
    format!(
        "Item.create({{ id: \"{id}\", p: \"{p}\", body: \"{}\" }})",
        "x".repeat(body)
    )
}

#[test]
fn documents_count_for_their_creator_until_deleted_by_anyone() {
    let mut db = Db::new(Quotas {
        documents: 3,
        ..Quotas::UNLIMITED
    });
    for id in ["a", "b", "c"] {
        db.ok("ann", &create(id, 1, 0));
    }
    let m = db.over("ann", &create("d", 1, 0));
    assert!(
        m.contains("this identity would keep 4 documents; its quota is 3"),
        "{m}"
    );
    // bob has his own count; his delete of ann's document gives it back to her.
    db.ok("bob", &create("e", 1, 0));
    db.ok("bob", "Item.byId(\"a\").delete()");
    assert_eq!(db.usage("ann").documents, 2);
    assert_eq!(db.usage("bob").documents, 1);
    db.ok("ann", &create("d", 1, 0));
    // A transaction creating two where one fits: all of it is refused.
    db.ok("bob", "Item.byId(\"b\").delete()");
    db.over(
        "ann",
        &format!("{}\n{}", create("f", 1, 0), create("g", 1, 0)),
    );
    db.ok("ann", &create("f", 1, 0));
}

#[test]
fn bytes_follow_the_documents_size_and_count_for_their_owner() {
    // "b" with a body of 90: its id (1) and its fields' canonical encoding.
    let mut db = Db::new(Quotas {
        bytes: 400,
        ..Quotas::UNLIMITED
    });
    db.ok("ann", &create("a", 1, 90));
    let one = db.usage("ann").bytes;
    assert!(one > 90 && one < 120, "{one}");
    db.ok("ann", &create("b", 1, 90));
    db.ok("ann", &create("c", 1, 90));
    let m = db.over("ann", &create("d", 1, 90));
    assert!(m.contains("this identity would keep"), "{m}");
    // Growing a document counts too; for its owner, whoever writes it.
    let m = db.over(
        "bob",
        &format!(
            "Item.byId(\"a\").update({{ body: \"{}\" }})",
            "y".repeat(200)
        ),
    );
    assert!(m.contains("the document's owner would keep"), "{m}");
    assert_eq!(db.usage("bob"), Usage::default());
    // Shrinking always passes.
    db.ok("bob", "Item.byId(\"a\").update({ body: \"\" })");
    assert_eq!(db.usage("ann").bytes, 3 * one - 90);
    db.ok("ann", &create("d", 1, 90));
}

#[test]
fn partitions_count_while_they_hold_documents() {
    let mut db = Db::new(Quotas {
        partitions: 2,
        ..Quotas::UNLIMITED
    });
    db.ok("ann", &create("a", 1, 0));
    db.ok("ann", &create("b", 2, 0));
    db.ok("ann", &create("c", 2, 0));
    let m = db.over("ann", &create("d", 3, 0));
    assert!(
        m.contains("would hold documents in 3 partitions it created; its quota is 2"),
        "{m}"
    );
    // bob writing into ann's partition adds none to his count, nor to hers.
    db.ok("bob", &create("e", 1, 0));
    assert_eq!(db.usage("ann").partitions, 2);
    assert_eq!(db.usage("bob").partitions, 0);
    // Partition 1 empties: it counts no more.
    db.ok(
        "bob",
        "Item.byId(\"a\").delete()\nItem.byId(\"e\").delete()",
    );
    assert_eq!(db.usage("ann").partitions, 1);
    db.ok("ann", &create("d", 3, 0));
    // Moving a document with replace is not a partition change the engine allows;
    // deleting and creating in one transaction is.
    db.ok(
        "ann",
        "Item.byId(\"d\").delete()\nItem.create({ id: \"d\", p: \"4\" })",
    );
    assert_eq!(db.usage("ann").partitions, 2);
    assert_eq!(db.usage("ann").documents, 3);
}

/// Recounts from the state: every live document has an owner record (those created
/// while counts were kept: all, here), the counts are the sums of the records, and a
/// partition counts while it holds a document.
fn recount(store: &MemoryStore) -> BTreeMap<String, Usage> {
    let scan = |prefix: &[u8]| {
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
    };
    let mut want: BTreeMap<String, Usage> = BTreeMap::new();
    let docs = scan(&keys::collection_prefix("Item"));
    let owners = scan(&[quota::SPACE_QUOTA, 2]);
    assert_eq!(
        docs.len(),
        owners.len(),
        "an owner record per live document"
    );
    for (_, v) in &owners {
        let (sub, bytes) = read_owner(v);
        let u = want.entry(sub).or_default();
        u.documents += 1;
        u.bytes += bytes;
    }
    for (k, v) in scan(&[quota::SPACE_QUOTA, 3]) {
        let mut pos = 2;
        let p = keys::read_str(&k, &mut pos).unwrap();
        assert!(
            !scan(&keys::partition_prefix(&p)).is_empty(),
            "{p} counts but holds nothing"
        );
        want.entry(String::from_utf8(v).unwrap())
            .or_default()
            .partitions += 1;
    }
    want
}

fn read_owner(v: &[u8]) -> (String, u64) {
    // str(sub) · varint bytes
    let mut pos = 0;
    let varint = |pos: &mut usize| {
        let mut n = 0u64;
        let mut shift = 0;
        loop {
            let b = v[*pos];
            *pos += 1;
            n |= ((b & 0x7f) as u64) << shift;
            if b & 0x80 == 0 {
                return n;
            }
            shift += 7;
        }
    };
    let len = varint(&mut pos) as usize;
    let sub = String::from_utf8(v[pos..pos + len].to_vec()).unwrap();
    pos += len;
    (sub, varint(&mut pos))
}

#[test]
fn counts_always_equal_a_recount_and_never_pass_a_quota() {
    let seed: u64 = std::env::var("WARREN_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20_260_101);
    println!("seed {seed} (replay with WARREN_SEED={seed})");
    let quotas = Quotas {
        documents: 12,
        bytes: 1500,
        partitions: 4,
    };
    let mut db = Db::new(quotas);
    let mut rng = Rng::new(seed);
    let subs = ["ann", "bob", "cat"];
    let (mut committed, mut refused) = (0, 0);
    for step in 0..1500 {
        let sub = subs[rng.below(3) as usize];
        let id = format!("i{}", rng.below(30));
        let p = rng.below(8) as u32;
        let src = match rng.below(6) {
            0 | 1 => create(&id, p, rng.below(200) as usize),
            2 => format!(
                "Item.byId(\"{id}\")?.update({{ body: \"{}\" }})",
                "z".repeat(rng.below(300) as usize)
            ),
            3 => format!("Item.byId(\"{id}\")?.delete()"),
            4 => format!(
                "Item.byId(\"{id}\")?.delete()\n{}",
                create(&id, p, rng.below(100) as usize)
            ),
            _ => format!(
                "{}\n{}",
                create(&format!("{id}x"), p, 10),
                create(&format!("{id}y"), (p + 1) % 8, 10)
            ),
        };
        match db.run(sub, &src) {
            Outcome::Committed { .. } => committed += 1,
            Outcome::Rejected { code, .. } if code.as_str() == "IDENTITY_QUOTA_EXCEEDED" => {
                refused += 1
            }
            Outcome::Rejected { .. } => {}
            other => panic!("{other:?}"),
        }
        let want = recount(db.ex.store());
        for s in subs {
            let got = db.usage(s);
            assert_eq!(
                got,
                want.get(s).copied().unwrap_or_default(),
                "seed {seed}, step {step}: {s}'s counts"
            );
            assert!(
                got.documents <= quotas.documents,
                "seed {seed}: {s} {got:?}"
            );
            assert!(got.bytes <= quotas.bytes, "seed {seed}: {s} {got:?}");
            assert!(
                got.partitions <= quotas.partitions,
                "seed {seed}: {s} {got:?}"
            );
        }
    }
    println!("{committed} committed, {refused} refused for a quota");
    assert!(committed > 300 && refused > 50, "{committed} {refused}");
}
