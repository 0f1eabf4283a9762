//! A seeded workload whose final state digest proves that two builds of the engine
//! (native and wasm, debug and release) compute exactly the same thing.
//!
//! It mixes what is most likely to differ between platforms if the engine were careless:
//! float arithmetic and `sqrt`, string building, sorting, ids from `newId()`, rules
//! that read other documents, rejections. Tests in both builds compare
//! [`seeded_digest`] with [`GOLDEN`].

use std::sync::Arc;

use crate::eval::Limits;
use crate::exec::{Commit, Executor, Op};
use crate::schema::Schema;
use crate::storage::MemoryStore;
use crate::value::{obj, Value};

const SCHEMA: &str = r#"
collection Item {
  partition "user:" + doc.owner
  index byOwner [owner, score]
  allow read   partition == "user:" + auth.sub
  allow create doc.owner == auth.sub
  allow update old.owner == auth.sub
  allow delete old.owner == auth.sub
}
function add(x) {
  let s = sqrt(toFloat(x)) / 3.0 + x * 0.1
  Item.create({ owner: auth.sub, score: s, label: "n" + toString(s), tags: [newId(), toString(x % 7)] })
}
function rescale(k) {
  Item.byOwner(auth.sub).order(desc(.score)).take(3).forEach(i => i.update({ score: i.score * k - 0.5 }))
}
function tidy() {
  let low = Item.byOwner(auth.sub).where(.score < 2.0).first() ?? abort("nothing low")
  low.delete()
}
"#;

/// (seed, commits, digest in hex), recorded from a native build.
pub const GOLDEN: &[(u64, usize, &str)] = &[
    (
        1,
        300,
        "95355d7bbcaa81ed0a4eceefc29a05266ccfe99b4c14da0f8a2d6c73bd615780",
    ),
    (
        2026,
        500,
        "22d23df4e282afaf20647ee8feb7704f9f91decaa692e380a622c024af0adf30",
    ),
];

/// Runs `commits` seeded commits and returns the final state digest, in hex.
pub fn seeded_digest(seed: u64, commits: usize) -> String {
    let schema = Arc::new(Schema::parse(SCHEMA).expect("the scenario schema parses"));
    let mut db = Executor::new(MemoryStore::new(), schema, Limits::default());
    let mut rng = crate::testing::Rng(seed);
    let mut next = move || rng.next();
    let users = ["ann", "bob", "cy"];
    let mut seqs = [0u64; 3];
    for pos in 1..=commits as u64 {
        let u = (next() % 3) as usize;
        seqs[u] += 1;
        let op = match next() % 5 {
            0..=2 => Op::Call {
                function: "add".into(),
                args: obj([("x", Value::Int((next() % 1000) as i64))]),
            },
            3 => Op::Call {
                function: "rescale".into(),
                args: obj([("k", Value::Float(1.0 + (next() % 100) as f64 / 37.0))]),
            },
            _ => Op::Call {
                function: "tidy".into(),
                args: Value::Null,
            },
        };
        let c = Commit {
            client_id: format!("c-{}", users[u]),
            client_seq: seqs[u],
            schema_version: String::new(),
            timestamp: 1_700_000_000_000 + pos as i64,
            auth: obj([("sub", users[u].into())]),
            op,
        };
        db.commit(&c, pos).expect("memory storage does not fail");
    }
    crate::hex(&db.digest().expect("memory storage does not fail"))
}

#[cfg(test)]
mod tests {
    #[test]
    #[ignore = "prints the digests to record in GOLDEN"]
    fn print_golden() {
        for (seed, n, _) in super::GOLDEN {
            println!("({seed}, {n}, \"{}\"),", super::seeded_digest(*seed, *n));
        }
    }
}
