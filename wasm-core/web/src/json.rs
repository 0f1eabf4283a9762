//! Values as JSON text for JavaScript, written in one pass with no intermediate tree
//! (`JSON.parse` on the other side is the one conversion). Pure: built everywhere and
//! tested natively.

use warren_core::Value;

/// A value as JSON text, as `Value::to_json` makes it (`{"$bytes": base64}` for bytes),
/// written directly: one pass, no intermediate tree.
pub fn json_text(v: &Value) -> String {
    let mut out = String::new();
    write_json(v, &mut out);
    out
}

fn write_json(v: &Value, out: &mut String) {
    use std::fmt::Write;
    match v {
        Value::Null => out.push_str("null"),
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::Int(i) => {
            let _ = write!(out, "{i}");
        }
        // Floats are always finite: the shortest text that reads back (the engine's
        // own formatter, as everywhere: not `f64`'s, whose code would add about 7 KB
        // to the WebAssembly, gzipped).
        Value::Float(f) => warren_core::text::write_float(out, *f),
        Value::String(s) => write_str(s, out),
        Value::Bytes(_) => {
            let j = v.to_json();
            out.push_str(&j.to_string());
        }
        Value::Array(items) => {
            out.push('[');
            for (i, x) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_json(x, out);
            }
            out.push(']');
        }
        Value::Object(fields) => {
            out.push('{');
            for (i, (k, x)) in fields.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_str(k, out);
                out.push(':');
                write_json(x, out);
            }
            out.push('}');
        }
    }
}

fn write_str(s: &str, out: &mut String) {
    use std::fmt::Write;
    out.reserve(s.len() + 2);
    out.push('"');
    // Runs of bytes that need no escape are copied whole; every byte escaped is ASCII,
    // so each cut falls between characters. Eight bytes at a time are passed over while
    // none of them needs an escape (most strings hold none): a byte at a time, a
    // scan's answer spent more time here than in the rest of its JSON.
    let bytes = s.as_bytes();
    let mut from = 0;
    let mut i = 0;
    while i < bytes.len() {
        if i + 8 <= bytes.len() {
            // SAFETY: `i + 8 <= bytes.len()`; an unaligned read of bytes only read.
            let word = unsafe { bytes.as_ptr().add(i).cast::<u64>().read_unaligned() };
            if !needs_escape(word) {
                i += 8;
                continue;
            }
        }
        let escaped = match bytes[i] {
            b'"' => "\\\"",
            b'\\' => "\\\\",
            b'\n' => "\\n",
            b'\r' => "\\r",
            b'\t' => "\\t",
            0..=0x1f => "",
            _ => {
                i += 1;
                continue;
            }
        };
        out.push_str(&s[from..i]);
        if escaped.is_empty() {
            let _ = write!(out, "\\u{:04x}", bytes[i]);
        } else {
            out.push_str(escaped);
        }
        i += 1;
        from = i;
    }
    out.push_str(&s[from..]);
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The JSON text made directly reads back as the value, for every ASCII character
    /// (each control character escaped) and characters of 2, 3 and 4 bytes around them.
    #[test]
    fn json_text_of_strings_reads_back() {
        let mut all: String = (0u8..0x80).map(char::from).collect();
        all.push_str("é€😀\"\\\u{7f}\u{1f}x");
        for s in [
            all.clone(),
            String::new(),
            "\u{1}".into(),
            "plain".into(),
            all + "end",
        ] {
            let v = Value::Array(vec![Value::String(s.clone())]);
            let text = json_text(&v);
            let back: serde_json::Value = serde_json::from_str(&text).unwrap();
            assert_eq!(back, v.to_json(), "{s:?}");
        }
    }

    /// Whatever needs an escape is found wherever it stands against the eight-byte
    /// steps: each such byte (and bytes just around them, which need none) at every
    /// place of strings up to 24 bytes, among ASCII and characters of 2 to 4 bytes.
    #[test]
    fn json_text_escapes_at_every_place() {
        let specials = [
            '"', '\\', '\n', '\r', '\t', '\u{0}', '\u{1f}', ' ', '!', '#', '[', ']', '\u{7f}', 'é',
            '😀',
        ];
        for len in 0..24 {
            for at in 0..len {
                for c in specials {
                    for fill in ['a', 'é'] {
                        let s: String = (0..len).map(|i| if i == at { c } else { fill }).collect();
                        let text = json_text(&Value::String(s.clone()));
                        let back: serde_json::Value = serde_json::from_str(&text).unwrap();
                        assert_eq!(back, serde_json::Value::String(s.clone()), "{s:?}");
                        assert_eq!(text, serde_json::to_string(&s).unwrap(), "{s:?}");
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
        let mut x = seed;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let near = [
            0x00, 0x01, 0x1f, 0x20, 0x21, 0x22, 0x23, 0x5b, 0x5c, 0x5d, 0x7f, 0x80, 0x9f, 0xa0,
            0xa2, 0xdc, 0xff,
        ];
        for _ in 0..200_000 {
            let r = next();
            let bytes: [u8; 8] = std::array::from_fn(|i| {
                let pick = (r >> (8 * i)) as u8;
                if pick.is_multiple_of(4) {
                    pick
                } else {
                    near[usize::from(pick) % near.len()]
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

    /// Floats are written in the engine's shortest form (not `f64`'s own formatting, kept
    /// out of the WebAssembly build) and read back with the same bits, at every scale.
    #[test]
    fn json_text_of_floats_reads_back() {
        for f in [
            0.0,
            -0.5,
            1.0,
            1.5,
            0.1,
            1e-7,
            1e16,
            1e21,
            2.5e300,
            -1e-300,
            5e-324,
            f64::MAX,
        ] {
            let v = Value::Array(vec![Value::Float(f), Value::Int(3)]);
            let text = json_text(&v);
            let back: serde_json::Value = serde_json::from_str(&text).unwrap();
            assert_eq!(
                back[0].as_f64().map(f64::to_bits),
                Some(f.to_bits()),
                "{text}"
            );
            assert_eq!(back, v.to_json(), "{text}");
        }
        assert_eq!(json_text(&Value::Float(1e21)), "1e+21");
    }
}
