//! Memory is a budget: every value an evaluation builds or copies is charged against
//! `Limits::max_memory_bytes` before it is allocated, so no program can make a replica
//! allocate more than its limits allow.

mod common;

use common::*;
use warren_core::exec::Outcome;
use warren_core::ErrorCode;

/// The program of the report: one string of a megabyte, and an array of many copies.
fn copies(n: usize) -> String {
    format!(
        r#"let s = "x".repeat(1000000)
[{}].length"#,
        vec!["s"; n].join(", ")
    )
}

#[test]
fn copies_of_one_large_string_are_charged_before_they_are_built() {
    let mut db = db();
    let mut eve = Client::new("eve", user("eve"));
    let o = commit(&mut db, &eve.run(&copies(300)));
    match o {
        Outcome::Rejected { code, message } => {
            assert_eq!(code.as_str(), "MEMORY_EXHAUSTED", "{message}")
        }
        other => panic!("{other:?}"),
    }
    let _ = ErrorCode::Parse;
}
