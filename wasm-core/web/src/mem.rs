//! The byte comparison every ordered map of byte keys runs on.
//!
//! Comparing two `Vec<u8>` (a `BTreeMap` key, a span's bound, a run's key) lowers to
//! the C function `memcmp`. WebAssembly has no C library: on `wasm32-unknown-unknown`
//! the one Rust links (`compiler_builtins`) compares a byte at a time, and the engine's
//! keys share long prefixes (`D`, the collection, an owner's partition...), so in the
//! browser it was the function the engine spent most time in (16% of the benchmark's
//! one-page import of 100,000 documents, docs/BENCHMARKS.md). That one is linked
//! weakly, so the engine's module defines its own, which compares eight bytes at a
//! time. Natively the C library's is used and this module only holds the comparison,
//! for its tests.

/// `memcmp` of two byte strings over the shorter's length: negative, zero or positive
/// as `a` orders before, with or after `b`, the first byte that differs deciding (as
/// unsigned). For tests: the engine's module calls `memcmp`, below.
pub fn compare(a: &[u8], b: &[u8]) -> i32 {
    let n = a.len().min(b.len());
    // SAFETY: both hold at least `n` bytes.
    unsafe { compare_raw(a.as_ptr(), b.as_ptr(), n) }
}

/// The comparison, as a plain loop of loads: the module is optimised for size, which
/// leaves iterator adapters as calls. It must not compare slices: that would call
/// `memcmp`.
///
/// # Safety
/// `a` and `b` point to `n` readable bytes each.
#[inline(always)]
unsafe fn compare_raw(a: *const u8, b: *const u8, n: usize) -> i32 {
    let mut i = 0;
    while i + 8 <= n {
        // SAFETY: `i + 8 <= n`; unaligned reads, of bytes only read.
        let (x, y) = unsafe {
            (
                u64::from_le(a.add(i).cast::<u64>().read_unaligned()),
                u64::from_le(b.add(i).cast::<u64>().read_unaligned()),
            )
        };
        if x != y {
            // Read little-endian, the lowest byte that differs comes first in memory.
            i += ((x ^ y).trailing_zeros() / 8) as usize;
            break;
        }
        i += 8;
    }
    while i < n {
        // SAFETY: `i < n`.
        let (x, y) = unsafe { (*a.add(i), *b.add(i)) };
        if x != y {
            return i32::from(x) - i32::from(y);
        }
        i += 1;
    }
    0
}

/// The C library's `memcmp`, for the engine's WebAssembly module (see the module's
/// comment).
///
/// # Safety
/// As C's: `a` and `b` point to `n` readable bytes each.
#[cfg(target_arch = "wasm32")]
#[no_mangle]
pub unsafe extern "C" fn memcmp(a: *const u8, b: *const u8, n: usize) -> i32 {
    // SAFETY: the caller's contract.
    unsafe { compare_raw(a, b, n) }
}

/// C's `bcmp` (zero when equal, nonzero when not), which LLVM calls for equality: the
/// same comparison.
///
/// # Safety
/// As [`memcmp`]'s.
#[cfg(target_arch = "wasm32")]
#[no_mangle]
pub unsafe extern "C" fn bcmp(a: *const u8, b: *const u8, n: usize) -> i32 {
    // SAFETY: the same contract.
    unsafe { memcmp(a, b, n) }
}

#[cfg(test)]
mod tests {
    use super::compare;
    use std::cmp::Ordering;

    /// Seeded byte strings of every length up to 40, with common prefixes of every
    /// length and the first difference anywhere (high bytes too: the comparison is of
    /// unsigned bytes), against the standard library's order.
    #[test]
    fn orders_as_byte_strings_do() {
        let seed: u64 = 0x5eed_0fb1_7e5a;
        println!("seed {seed:#x}");
        let mut rng = warren_core::testing::Rng::new(seed);
        for _ in 0..20_000 {
            let n = rng.index(41);
            let a: Vec<u8> = (0..n).map(|_| rng.next() as u8).collect();
            let mut b = a.clone();
            if n > 0 && !rng.chance(25) {
                let at = rng.index(n);
                b[at] = rng.next() as u8;
                if rng.chance(50) {
                    for x in &mut b[at + 1..] {
                        *x = rng.next() as u8;
                    }
                }
            }
            let want = a.cmp(&b);
            let got = compare(&a, &b).cmp(&0);
            assert_eq!(got, want, "{a:?} against {b:?}");
            assert_eq!(compare(&b, &a).cmp(&0), want.reverse());
            assert_eq!(compare(&a, &a), 0);
            if want != Ordering::Equal {
                let at = a.iter().zip(&b).position(|(x, y)| x != y).expect("differ");
                assert_eq!(compare(&a, &b), i32::from(a[at]) - i32::from(b[at]));
            }
        }
    }
}
