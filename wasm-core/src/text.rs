//! How values read as text: JSON, and the one way a float prints.
//!
//! This is the engine's own code on purpose. `toString`, string concatenation and error
//! messages are part of results, and results must be the same on every replica and
//! stay the same when a dependency is updated: a JSON library's float formatter is free
//! to change its output (two shortest forms can tie), ours is pinned by tests
//! (`tests/determinism.rs`, `floats_print_the_same_in_every_build`).

use base64::Engine as _;

use crate::value::Value;

/// Appends `v` as JSON text: object keys in byte order, no spaces; bytes as
/// `{"$bytes":"<base64>"}`; strings escaped as JSON requires (`"`, `\`, and control
/// characters; nothing else). The engine's one JSON writer: `toString`, messages, and
/// every answer handed to JavaScript (`warren-web`'s `json_text`).
pub fn write_json(out: &mut String, v: &Value) {
    match v {
        Value::Null => out.push_str("null"),
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::Int(i) => {
            use std::fmt::Write as _;
            // Writing to a String cannot fail.
            let _ = write!(out, "{i}");
        }
        Value::Float(f) => write_float(out, *f),
        Value::String(s) => write_str(out, s),
        Value::Bytes(b) => {
            out.push_str("{\"$bytes\":\"");
            base64::engine::general_purpose::STANDARD.encode_string(b, out);
            out.push_str("\"}");
        }
        Value::Array(a) => {
            out.push('[');
            for (i, x) in a.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_json(out, x);
            }
            out.push(']');
        }
        Value::Object(o) => {
            out.push('{');
            for (i, (k, x)) in o.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_str(out, k);
                out.push(':');
                write_json(out, x);
            }
            out.push('}');
        }
    }
}

/// [`write_json`] into any writer (`Display`): the text is made, then written.
pub fn write_json_to<W: std::fmt::Write>(out: &mut W, v: &Value) -> std::fmt::Result {
    let mut s = String::new();
    write_json(&mut s, v);
    out.write_str(&s)
}

/// `v` as JSON for a message: the text when it is short, a description when it is not
/// (a message never carries a large value, nor takes long to make).
pub fn preview(v: &Value) -> String {
    const SHORT: usize = 200;
    let n = json_len(v);
    if n <= SHORT {
        v.to_string()
    } else {
        format!("a {} of {n} bytes of JSON", v.type_name())
    }
}

/// The length in bytes of `v`'s JSON text, without building it.
pub fn json_len(v: &Value) -> usize {
    match v {
        Value::Null => 4,
        Value::Bool(b) => 4 + usize::from(!*b),
        Value::Int(i) => {
            let mut n = usize::from(*i < 0);
            let mut u = i.unsigned_abs();
            loop {
                n += 1;
                u /= 10;
                if u == 0 {
                    break n;
                }
            }
        }
        Value::Float(f) => {
            let mut s = String::new();
            write_float(&mut s, *f);
            s.len()
        }
        Value::String(s) => str_len(s),
        Value::Bytes(b) => 13 + b.len().div_ceil(3) * 4,
        Value::Array(a) => 2 + a.len().saturating_sub(1) + a.iter().map(json_len).sum::<usize>(),
        Value::Object(o) => {
            2 + o.len().saturating_sub(1)
                + o.iter()
                    .map(|(k, x)| str_len(k) + 1 + json_len(x))
                    .sum::<usize>()
        }
    }
}

fn escape(c: char) -> Option<&'static str> {
    Some(match c {
        '"' => "\\\"",
        '\\' => "\\\\",
        '\n' => "\\n",
        '\r' => "\\r",
        '\t' => "\\t",
        '\u{8}' => "\\b",
        '\u{c}' => "\\f",
        _ => return None,
    })
}

fn write_str(out: &mut String, s: &str) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    out.reserve(s.len() + 2);
    out.push('"');
    // Runs of bytes that need no escape are written whole; every byte escaped is ASCII
    // (a control character, `"` or `\`), so each cut falls between characters. Eight
    // bytes at a time are passed over while none of them needs an escape (most strings
    // hold none): a character at a time, a scan's answer spent most of its JSON's time
    // here (docs/BENCHMARKS.md, "JSON strings scanned eight bytes at a time").
    let bytes = s.as_bytes();
    let (mut start, mut i) = (0, 0);
    while i < bytes.len() {
        if let Some(Ok(word)) = bytes.get(i..i + 8).map(<[u8; 8]>::try_from) {
            if !needs_escape(u64::from_le_bytes(word)) {
                i += 8;
                continue;
            }
        }
        let b = bytes[i];
        if b >= b' ' && b != b'"' && b != b'\\' {
            i += 1;
            continue;
        }
        out.push_str(&s[start..i]);
        match escape(char::from(b)) {
            Some(e) => out.push_str(e),
            None => {
                out.push_str("\\u00");
                out.push(char::from(HEX[usize::from(b >> 4)]));
                out.push(char::from(HEX[usize::from(b & 15)]));
            }
        }
        i += 1;
        start = i;
    }
    out.push_str(&s[start..]);
    out.push('"');
}

/// Whether any of the eight bytes of `word` needs an escape in a JSON string: a control
/// character (under 0x20), `"` or `\`. Exact, by the classic test: for `n` up to 0x80,
/// `(x - n·0x0101…) & !x & 0x8080…` is nonzero exactly when a byte of `x` is under `n`;
/// a byte equal to `c` is a byte of `x ^ c·0x0101…` under 1.
fn needs_escape(word: u64) -> bool {
    const ONES: u64 = u64::MAX / 255;
    const HIGH: u64 = ONES * 0x80;
    let under = |x: u64, n: u64| x.wrapping_sub(ONES * n) & !x & HIGH != 0;
    under(word, 0x20)
        || under(word ^ (ONES * u64::from(b'"')), 1)
        || under(word ^ (ONES * u64::from(b'\\')), 1)
}

fn str_len(s: &str) -> usize {
    2 + s
        .chars()
        .map(|c| match c {
            c if c >= ' ' && c != '"' && c != '\\' => c.len_utf8(),
            c => escape(c).map_or(6, str::len),
        })
        .sum::<usize>()
}

/// Appends a finite float: the shortest digits that read back as `f` (the closest such
/// digits, and the even last digit when two are exactly as close), written with `.0` on
/// whole numbers from 1e-5 up to 1e16, and as `1.5e+16` / `2.5e-8` outside that range.
/// `-0.0` is written `0.0` (the engine has one zero).
pub fn write_float(out: &mut String, f: f64) {
    if f == 0.0 || !f.is_finite() {
        // Values never hold a non-finite float; print something harmless if asked.
        out.push_str(if f == 0.0 { "0.0" } else { "null" });
        return;
    }
    if f < 0.0 {
        out.push('-');
    }
    let (digits, exp) = shortest(f.abs());
    let digits = std::str::from_utf8(&digits).expect("ASCII digits");
    if (-5..16).contains(&exp) {
        if exp >= 0 {
            let int_len = exp as usize + 1;
            if digits.len() <= int_len {
                out.push_str(digits);
                out.extend(std::iter::repeat_n('0', int_len - digits.len()));
                out.push_str(".0");
            } else {
                out.push_str(&digits[..int_len]);
                out.push('.');
                out.push_str(&digits[int_len..]);
            }
        } else {
            out.push_str("0.");
            out.extend(std::iter::repeat_n('0', (-exp - 1) as usize));
            out.push_str(digits);
        }
    } else {
        out.push_str(&digits[..1]);
        if digits.len() > 1 {
            out.push('.');
            out.push_str(&digits[1..]);
        }
        out.push('e');
        out.push(if exp < 0 { '-' } else { '+' });
        use std::fmt::Write as _;
        let _ = write!(out, "{}", exp.unsigned_abs());
    }
}

/// The shortest decimal digits of a positive finite float and the exponent of the first
/// digit (`d.ddd × 10^exp`): Steele & White's and Burger & Dybvig's free-format
/// algorithm, with exact integer arithmetic. Of the shortest digit strings that read
/// back as `v`, the closest to `v`; on an exact tie, the one ending in an even digit.
fn shortest(v: f64) -> (Vec<u8>, i32) {
    let bits = v.to_bits();
    let frac = bits & ((1 << 52) - 1);
    let biased = ((bits >> 52) & 0x7ff) as i32;
    let (m, e) = if biased == 0 {
        (frac, -1074)
    } else {
        (frac | (1 << 52), biased - 1075)
    };
    // Round-half-even reading: the ends of the interval of texts that read back as v
    // belong to it exactly when the mantissa is even.
    let inclusive = m % 2 == 0;
    // The gap to the next float below is half the gap above at a power of two (except
    // for the smallest normal).
    let unequal = frac == 0 && biased > 1;
    // v = r/s; the interval is (v - mm/s, v + mp/s).
    let (mut r, mut s, mut mp, mut mm);
    if e >= 0 {
        let be = Big::pow2(e as u32);
        if unequal {
            r = Big::from(m).shl(e as u32 + 2);
            s = Big::from(4);
            mp = be.clone().shl(1);
            mm = be;
        } else {
            r = Big::from(m).shl(e as u32 + 1);
            s = Big::from(2);
            mp = be.clone();
            mm = be;
        }
    } else if unequal {
        r = Big::from(m).shl(2);
        s = Big::pow2((2 - e) as u32);
        mp = Big::from(2);
        mm = Big::from(1);
    } else {
        r = Big::from(m).shl(1);
        s = Big::pow2((1 - e) as u32);
        mp = Big::from(1);
        mm = Big::from(1);
    }
    // k: the smallest exponent with v + mp/s below (or at) 10^k. Estimated from the
    // binary exponent (never above the true value), then corrected upward.
    let bitlen = 64 - m.leading_zeros() as i32;
    let mut k = (((e + bitlen - 1) as f64) * std::f64::consts::LOG10_2 - 1e-10).ceil() as i32;
    if k >= 0 {
        s.mul_pow10(k as u32);
    } else {
        r.mul_pow10((-k) as u32);
        mp.mul_pow10((-k) as u32);
        mm.mul_pow10((-k) as u32);
    }
    let high = |r: &Big, mp: &Big, s: &Big| {
        let c = r.add(mp).cmp(s);
        c == std::cmp::Ordering::Greater || (inclusive && c == std::cmp::Ordering::Equal)
    };
    while high(&r, &mp, &s) {
        s.mul_small(10);
        k += 1;
    }
    let mut digits = Vec::with_capacity(17);
    loop {
        r.mul_small(10);
        mp.mul_small(10);
        mm.mul_small(10);
        let mut d = 0u8;
        while r.cmp(&s) != std::cmp::Ordering::Less {
            r.sub_assign(&s);
            d += 1;
        }
        let low_ok = {
            let c = r.cmp(&mm);
            c == std::cmp::Ordering::Less || (inclusive && c == std::cmp::Ordering::Equal)
        };
        let high_ok = high(&r, &mp, &s);
        if !low_ok && !high_ok {
            digits.push(b'0' + d);
            continue;
        }
        let up = match (low_ok, high_ok) {
            (true, false) => false,
            (false, true) => true,
            _ => match r.shl_copy(1).cmp(&s) {
                std::cmp::Ordering::Less => false,
                std::cmp::Ordering::Greater => true,
                std::cmp::Ordering::Equal => d % 2 == 1,
            },
        };
        digits.push(b'0' + d + u8::from(up));
        break;
    }
    (digits, k - 1)
}

/// A non-negative big integer, little-endian 32-bit limbs: just what [`shortest`] needs.
#[derive(Clone, Debug)]
struct Big(Vec<u32>);

impl Big {
    fn from(v: u64) -> Big {
        let mut b = Big(vec![v as u32, (v >> 32) as u32]);
        b.trim();
        b
    }

    fn pow2(n: u32) -> Big {
        Big::from(1).shl(n)
    }

    fn trim(&mut self) {
        while self.0.last() == Some(&0) {
            self.0.pop();
        }
    }

    fn shl(mut self, n: u32) -> Big {
        let (limbs, bits) = ((n / 32) as usize, n % 32);
        if bits > 0 {
            let mut carry = 0u32;
            for x in &mut self.0 {
                let v = (*x as u64) << bits | carry as u64;
                *x = v as u32;
                carry = (v >> 32) as u32;
            }
            if carry > 0 {
                self.0.push(carry);
            }
        }
        if limbs > 0 && !self.0.is_empty() {
            self.0.splice(0..0, std::iter::repeat_n(0, limbs));
        }
        self
    }

    fn shl_copy(&self, n: u32) -> Big {
        self.clone().shl(n)
    }

    fn mul_small(&mut self, k: u32) {
        let mut carry = 0u64;
        for x in &mut self.0 {
            let v = *x as u64 * k as u64 + carry;
            *x = v as u32;
            carry = v >> 32;
        }
        if carry > 0 {
            self.0.push(carry as u32);
        }
    }

    fn mul_pow10(&mut self, mut n: u32) {
        while n >= 9 {
            self.mul_small(1_000_000_000);
            n -= 9;
        }
        self.mul_small(10u32.pow(n));
    }

    fn add(&self, o: &Big) -> Big {
        let (a, b) = if self.0.len() >= o.0.len() {
            (self, o)
        } else {
            (o, self)
        };
        let mut out = Vec::with_capacity(a.0.len() + 1);
        let mut carry = 0u64;
        for i in 0..a.0.len() {
            let v = a.0[i] as u64 + *b.0.get(i).unwrap_or(&0) as u64 + carry;
            out.push(v as u32);
            carry = v >> 32;
        }
        if carry > 0 {
            out.push(carry as u32);
        }
        Big(out)
    }

    /// `self -= o`; `o` must not be larger.
    fn sub_assign(&mut self, o: &Big) {
        let mut borrow = 0i64;
        for i in 0..self.0.len() {
            let v = self.0[i] as i64 - *o.0.get(i).unwrap_or(&0) as i64 - borrow;
            if v < 0 {
                self.0[i] = (v + (1 << 32)) as u32;
                borrow = 1;
            } else {
                self.0[i] = v as u32;
                borrow = 0;
            }
        }
        self.trim();
    }

    fn cmp(&self, o: &Big) -> std::cmp::Ordering {
        self.0
            .len()
            .cmp(&o.0.len())
            .then_with(|| self.0.iter().rev().cmp(o.0.iter().rev()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fmt(f: f64) -> String {
        let mut s = String::new();
        write_float(&mut s, f);
        s
    }

    /// Every float printed reads back as itself, and no shorter text would: checked
    /// against the standard library's parser on a seeded sample of all bit patterns.
    #[test]
    fn shortest_and_round_trips() {
        let mut rng = crate::testing::Rng(0x_F10A7);
        for i in 0..20_000 {
            let f = if i % 2 == 0 {
                f64::from_bits(rng.next())
            } else {
                (rng.below(1 << 40) as f64) / 10f64.powi(rng.below(25) as i32)
            };
            if !f.is_finite() || f == 0.0 {
                continue;
            }
            let s = fmt(f);
            assert_eq!(s.parse::<f64>().unwrap(), f, "{s}");
            let (digits, _) = shortest(f.abs());
            if digits.len() > 1 {
                // One digit fewer, rounded either way, never reads back as f.
                let e = format!("{:.*e}", digits.len() - 2, f);
                assert_ne!(
                    e.parse::<f64>().unwrap(),
                    f,
                    "{s} is not the shortest ({e})"
                );
            }
        }
    }

    /// Whatever needs an escape is found wherever it stands against the eight-byte
    /// steps: each such character (and characters around them that need none) at every
    /// place of strings up to 24 characters, among ASCII and characters of 2 to 4
    /// bytes; the text is serde_json's to the byte, and its length `json_len`'s.
    #[test]
    fn strings_are_escaped_at_every_place() {
        let specials = [
            '"', '\\', '\n', '\r', '\t', '\u{8}', '\u{c}', '\u{0}', '\u{1f}', ' ', '!', '#', '[',
            ']', '\u{7f}', 'é', '😀',
        ];
        for len in 0..24 {
            for at in 0..len {
                for c in specials {
                    for fill in ['a', 'é'] {
                        let s: String = (0..len).map(|i| if i == at { c } else { fill }).collect();
                        let v = Value::String(s.clone());
                        let mut text = String::new();
                        write_json(&mut text, &v);
                        assert_eq!(text, serde_json::to_string(&s).unwrap(), "{s:?}");
                        assert_eq!(json_len(&v), text.len(), "{s:?}");
                    }
                }
            }
        }
    }

    /// The word test against a byte at a time, on seeded words whose bytes are drawn
    /// mostly around the bytes it must find.
    #[test]
    fn needs_escape_is_exact() {
        let seed: u64 = 0x6a50_e5ca_9e11;
        println!("seed {seed:#x}");
        let mut rng = crate::testing::Rng::new(seed);
        let near = [
            0x00, 0x01, 0x1f, 0x20, 0x21, 0x22, 0x23, 0x5b, 0x5c, 0x5d, 0x7f, 0x80, 0x9f, 0xa0,
            0xa2, 0xdc, 0xff,
        ];
        for _ in 0..200_000 {
            // Most bytes near those it must find, some anything.
            let bytes: [u8; 8] = std::array::from_fn(|_| {
                if rng.chance(25) {
                    rng.next() as u8
                } else {
                    *rng.pick(&near)
                }
            });
            let want = bytes.iter().any(|&b| b < 0x20 || b == b'"' || b == b'\\');
            assert_eq!(
                needs_escape(u64::from_le_bytes(bytes)),
                want,
                "{bytes:02x?}"
            );
        }
    }

    #[test]
    fn json_len_matches_the_text() {
        let v = Value::parse_json(
            r#"{"a\n\"b":[1,-20,3.5,1e300,null,true,false,"\u0001é",{"$bytes":"AAEC"}],"":{}}"#,
        )
        .unwrap();
        let mut s = String::new();
        write_json(&mut s, &v);
        assert_eq!(json_len(&v), s.len(), "{s}");
        assert_eq!(
            s,
            r#"{"":{},"a\n\"b":[1,-20,3.5,1e+300,null,true,false,"\u0001é",{"$bytes":"AAEC"}]}"#
        );
    }
}
