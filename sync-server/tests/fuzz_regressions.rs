//! The fuzz targets' checks (`sync-server/fuzz/src/lib.rs`) on stable, in the normal
//! test run:
//!
//! - every input kept under `sync-server/fuzz/regressions/<target>/` (crashes the
//!   fuzzers found, and hand-made hostile inputs) is refused with an error, without a
//!   panic;
//! - every seed under `sync-server/fuzz/seeds/<target>/` (the documented examples)
//!   decodes, and re-encodes to the same bytes.
//!
//! - the language targets' kept inputs and seeds (`lang_parse`, `lang_exec`) run
//!   without a panic (a kept program may well be valid: what it once did was crash);
//!   the parser's seeds parse.
//!
//! A new crash input goes into `regressions/<target>/` once it is fixed.

#[path = "../fuzz/src/lib.rs"]
mod checks;

use std::path::PathBuf;

/// A target's check: `true` when the input decoded (and re-encoded to itself).
type Check = fn(&[u8]) -> bool;

const TARGETS: [(&str, Check); 5] = [
    ("client_frame", checks::client_frame),
    ("server_frame", checks::server_frame),
    ("log_entry", checks::log_entry),
    ("log_segment", checks::log_segment),
    ("batch_record", checks::batch_record),
];

fn inputs(kind: &str, target: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz")
        .join(kind)
        .join(target);
    let mut out: Vec<(PathBuf, Vec<u8>)> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| {
            let p = e.unwrap().path();
            let bytes = std::fs::read(&p).unwrap();
            (p, bytes)
        })
        .collect();
    out.sort();
    assert!(!out.is_empty(), "no inputs in {}", dir.display());
    out
}

#[test]
fn kept_fuzz_inputs_are_refused_without_panicking() {
    for (target, check) in TARGETS {
        for (path, bytes) in inputs("regressions", target) {
            let r = std::panic::catch_unwind(|| check(&bytes));
            match r {
                Ok(false) => {}
                Ok(true) => panic!("{} was accepted", path.display()),
                Err(_) => panic!("{} panicked", path.display()),
            }
        }
    }
}

#[test]
fn fuzz_seeds_decode_and_are_canonical() {
    for (target, check) in TARGETS {
        for (path, bytes) in inputs("seeds", target) {
            assert!(check(&bytes), "{} does not decode", path.display());
        }
    }
}

#[test]
fn kept_language_inputs_run_without_panicking() {
    const LANG: [(&str, Check); 2] = [
        ("lang_parse", checks::lang_parse),
        ("lang_exec", checks::lang_exec),
    ];
    for (target, check) in LANG {
        for kind in ["regressions", "seeds"] {
            for (path, bytes) in inputs(kind, target) {
                let r = std::panic::catch_unwind(|| check(&bytes));
                match r {
                    Err(_) => panic!("{} panicked", path.display()),
                    Ok(false) if kind == "seeds" && target == "lang_parse" => {
                        panic!("{} does not parse", path.display())
                    }
                    Ok(_) => {}
                }
            }
        }
    }
}
