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
    // so each cut falls between characters.
    let mut from = 0;
    for (i, &b) in s.as_bytes().iter().enumerate() {
        let escaped = match b {
            b'"' => "\\\"",
            b'\\' => "\\\\",
            b'\n' => "\\n",
            b'\r' => "\\r",
            b'\t' => "\\t",
            0..=0x1f => "",
            _ => continue,
        };
        out.push_str(&s[from..i]);
        if escaped.is_empty() {
            let _ = write!(out, "\\u{b:04x}");
        } else {
            out.push_str(escaped);
        }
        from = i + 1;
    }
    out.push_str(&s[from..]);
    out.push('"');
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
