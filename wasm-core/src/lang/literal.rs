//! Values as source text: the literal that evaluates to a given value.
//!
//! Code that builds a program from outside input (the sync server's GraphQL endpoint
//! turns a GraphQL query into a Warren program) writes every value through
//! [`write_literal`], so that input can only ever be data: a string is quoted with its
//! quotes and backslashes escaped, and no value can close the literal it is in. The
//! program then goes through the same parser, limits and rules as any other.
//!
//! `parse(literal(v))` evaluates to `v` for every value but bytes, which have no
//! literal (the tests check this on random values).

use crate::error::{Error, ErrorCode};
use crate::value::Value;

/// The source text of a literal for `v`. Bytes have none: `INVALID_ARGUMENT`.
pub fn literal(v: &Value) -> Result<String, Error> {
    let mut out = String::new();
    write_literal(&mut out, v)?;
    Ok(out)
}

/// Appends the literal for `v` to `out` (see [`literal`]).
pub fn write_literal(out: &mut String, v: &Value) -> Result<(), Error> {
    match v {
        Value::Null => out.push_str("null"),
        Value::Bool(true) => out.push_str("true"),
        Value::Bool(false) => out.push_str("false"),
        // A negative number is unary minus on its magnitude; the lexer reads the
        // magnitude of i64::MIN on its own.
        Value::Int(i) => out.push_str(&i.to_string()),
        // The shortest round-trip form always has a `.` or an exponent (`1.0`,
        // `1e+16`, `1e-7`), so the lexer reads a float with the same bits.
        Value::Float(f) => crate::text::write_float(out, *f),
        Value::String(s) => write_string(out, s),
        Value::Bytes(_) => {
            return Err(Error::new(
                ErrorCode::InvalidArgument,
                "bytes have no literal in the language",
            ))
        }
        Value::Array(items) => {
            out.push('[');
            for (i, x) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                write_literal(out, x)?;
            }
            out.push(']');
        }
        Value::Object(o) => {
            out.push('{');
            for (i, (k, x)) in o.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                write_string(out, k);
                out.push_str(": ");
                write_literal(out, x)?;
            }
            out.push('}');
        }
    }
    Ok(())
}

/// Appends `s` as a double-quoted string literal.
pub fn write_string(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c.is_control() || c == '\u{2028}' || c == '\u{2029}' => {
                out.push_str(&format!("\\u{{{:x}}}", c as u32));
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::eval::{Context, Evaluator, Limits, Mode};
    use crate::lang::parse_block;
    use crate::schema::Schema;
    use crate::storage::MemoryStore;
    use crate::testing::Rng;
    use crate::value::Object;

    fn eval(src: &str) -> Value {
        let schema = Schema::parse("").unwrap();
        let store = MemoryStore::new();
        let limits = Limits::default();
        let ctx = Context::reader(&Value::Null, 0, 0);
        let mut ev = Evaluator::new(&schema, &store, &limits, &ctx, Mode::Query);
        let block = parse_block(src).unwrap_or_else(|e| panic!("{src}: {e}"));
        let v = ev
            .run_block(&block)
            .unwrap_or_else(|e| panic!("{src}: {e}"));
        ev.materialize(v).unwrap()
    }

    fn string(rng: &mut Rng) -> String {
        const PIECES: &[&str] = &[
            "a", "Z", "\"", "\\", "\n", "\r", "\t", "\0", "\u{1}", "\u{7f}", "é", "😀", "\u{2028}",
            "\u{2029}", "${", "//", "/*", "'", "}", "]", ")", " ",
        ];
        (0..rng.below(8)).map(|_| *rng.pick(PIECES)).collect()
    }

    fn value(rng: &mut Rng, depth: u32) -> Value {
        let kinds = if depth >= 4 { 5 } else { 7 };
        match rng.below(kinds) {
            0 => Value::Null,
            1 => Value::Bool(rng.chance(50)),
            2 => Value::Int(match rng.below(4) {
                0 => i64::MIN,
                1 => i64::MAX,
                _ => rng.next() as i64 >> rng.below(64),
            }),
            3 => {
                let f = f64::from_bits(rng.next());
                Value::Float(if f.is_finite() {
                    f
                } else {
                    *rng.pick(&[0.0, -0.0, 1.0, 1e16, 1e-7, 0.1])
                })
            }
            4 => Value::String(string(rng)),
            5 => Value::Array((0..rng.below(4)).map(|_| value(rng, depth + 1)).collect()),
            _ => {
                let mut o = Object::new();
                for _ in 0..rng.below(4) {
                    o.insert(string(rng), value(rng, depth + 1));
                }
                Value::Object(o)
            }
        }
    }

    /// Bit-exact equality (`-0.0` is not `0.0` here, unlike `==` in the language).
    fn same(a: &Value, b: &Value) -> bool {
        match (a, b) {
            (Value::Float(x), Value::Float(y)) => x.to_bits() == y.to_bits(),
            (Value::Array(x), Value::Array(y)) => {
                x.len() == y.len() && x.iter().zip(y).all(|(a, b)| same(a, b))
            }
            (Value::Object(x), Value::Object(y)) => {
                x.len() == y.len()
                    && x.iter()
                        .zip(y)
                        .all(|((ka, a), (kb, b))| ka == kb && same(a, b))
            }
            _ => a == b,
        }
    }

    #[test]
    fn literals_evaluate_to_their_values() {
        let seed = 0x5eed_1175_u64;
        println!("seed {seed:#x}");
        let mut rng = Rng::new(seed);
        for i in 0..2000 {
            let v = value(&mut rng, 0);
            let src = literal(&v).unwrap();
            let got = eval(&src);
            assert!(same(&got, &v), "case {i}: {v:?} → {src} → {got:?}");
        }
    }

    #[test]
    fn strings_cannot_escape_their_quotes() {
        for s in [
            "\" + auth.sub + \"",
            "\\\" ; abort(\"x\") //",
            "\"}) ; Todo.all() ; ({\"",
        ] {
            let src = format!("[{}, 1]", literal(&Value::String(s.into())).unwrap());
            assert_eq!(
                eval(&src),
                Value::Array(vec![Value::String(s.into()), Value::Int(1)])
            );
        }
    }

    #[test]
    fn bytes_have_no_literal() {
        let e = literal(&Value::Bytes(vec![1])).unwrap_err();
        assert_eq!(e.code, ErrorCode::InvalidArgument);
    }
}
