//! Determinism across builds: the engine compiled to wasm, in a real browser, gives the
//! same state digests as the native build for the same seeded workload (the native test
//! is `the_seeded_scenario_matches_the_recorded_digests` in `wasm-core/tests`).
#![cfg(target_arch = "wasm32")]

use wasm_bindgen_test::*;

wasm_bindgen_test_configure!(run_in_browser);

#[wasm_bindgen_test]
fn the_browser_computes_the_native_digests() {
    for (seed, n, want) in warren_core::scenario::GOLDEN {
        assert_eq!(
            warren_core::scenario::seeded_digest(*seed, *n),
            *want,
            "seed {seed}"
        );
    }
}
