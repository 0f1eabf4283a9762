//! The differential harness: one function, [`run`], that runs the generated programs of
//! `warren_core::testing::gen` (as queries and as commits, against one evolving store)
//! and returns one line per run: the result or the error, the fuel, the memory and the
//! digest. The native binary (`src/main.rs`) prints it; the wasm32 module exports it to
//! Node (`run.mjs`) with two plain functions, so it needs no JS glue. The lines must be
//! identical: any difference is a build that gives another answer.

use std::cell::RefCell;

thread_local! {
    /// The text of the last run (read from Node through [`out_ptr`]).
    static OUT: RefCell<String> = const { RefCell::new(String::new()) };
}

/// Runs `count` generated programs of `seed` (after the fixed regressions) and keeps the
/// lines; returns their length in bytes.
#[no_mangle]
pub extern "C" fn run(seed: u64, count: u32) -> u32 {
    let text = warren_core::testing::gen::differential(seed, u64::from(count));
    let len = text.len() as u32;
    OUT.with(|o| *o.borrow_mut() = text);
    len
}

/// Where the text of the last run starts in this module's memory.
#[no_mangle]
pub extern "C" fn out_ptr() -> *const u8 {
    OUT.with(|o| o.borrow().as_ptr())
}

/// The source of the program at index `i` of a run (the index each line starts with:
/// the kept regressions first, then the generated programs).
pub fn source(seed: u64, i: u64) -> String {
    use warren_core::testing::gen::{nth, REGRESSIONS};
    match REGRESSIONS.get(i as usize) {
        Some(s) => (*s).to_owned(),
        None => nth(seed, i - REGRESSIONS.len() as u64).source,
    }
}
