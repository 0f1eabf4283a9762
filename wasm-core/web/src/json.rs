//! Values as JSON text for JavaScript, written in one pass with no intermediate tree
//! (`JSON.parse` on the other side is the one conversion), by the engine's one JSON
//! writer (`warren_core::text`, which `toString` and the messages use too). Pure: built
//! everywhere and tested natively.

use warren_core::Value;

/// A value as JSON text, as `Value::to_json` makes it (`{"$bytes": base64}` for bytes),
/// written directly: one pass, no intermediate tree.
pub fn json_text(v: &Value) -> String {
    let mut out = String::new();
    warren_core::text::write_json(&mut out, v);
    out
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
