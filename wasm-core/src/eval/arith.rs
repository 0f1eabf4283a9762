//! Arithmetic, comparison and indexing of data values.

use super::{err, type_err};
use crate::error::{Error, ErrorCode};
use crate::lang::ast::BinOp;
use crate::value::Value;

/// `r[i]`. Positions are compared as 64-bit numbers, never converted to `usize`, so a
/// position past 2^32 means the same on a 32-bit build (the browser's wasm) as on a
/// 64-bit one.
pub(super) fn index_value(r: &Value, i: &Value) -> Result<Value, Error> {
    /// The position `i` counts to in something `len` long (negative from the end).
    fn at(i: i64, len: usize) -> Option<usize> {
        let len = len as u64;
        let k = if i < 0 {
            len.checked_sub(i.unsigned_abs())?
        } else {
            i as u64
        };
        (k < len).then_some(k as usize)
    }
    match (r, i) {
        (Value::Array(a), Value::Int(i)) => {
            Ok(at(*i, a.len()).map_or(Value::Null, |k| a[k].clone()))
        }
        (Value::Object(o), Value::String(k)) => Ok(o.get(k).cloned().unwrap_or(Value::Null)),
        (Value::String(s), Value::Int(i)) => Ok(at(*i, s.chars().count())
            .and_then(|k| s.chars().nth(k))
            .map_or(Value::Null, |c| Value::String(c.to_string()))),
        (Value::Null, _) => Err(type_err("cannot index null")),
        (r, i) => Err(type_err(format!(
            "cannot index a {} with a {}",
            r.type_name(),
            i.type_name()
        ))),
    }
}

/// Arithmetic and comparison. Integer arithmetic is checked; `/` of two ints divides
/// with truncation; a float result must be finite.
pub(crate) fn binary(op: BinOp, x: Value, y: Value) -> Result<Value, Error> {
    use std::cmp::Ordering;
    let overflow = || err(ErrorCode::Arithmetic, "integer overflow");
    Ok(match op {
        BinOp::Eq => Value::Bool(x.loose_eq(&y)),
        BinOp::Ne => Value::Bool(!x.loose_eq(&y)),
        BinOp::Lt | BinOp::Le | BinOp::Gt | BinOp::Ge => {
            let comparable = matches!(
                (&x, &y),
                (
                    Value::Int(_) | Value::Float(_),
                    Value::Int(_) | Value::Float(_)
                ) | (Value::String(_), Value::String(_))
                    | (Value::Bool(_), Value::Bool(_))
                    | (Value::Bytes(_), Value::Bytes(_))
                    | (Value::Array(_), Value::Array(_))
            );
            if !comparable {
                return Err(type_err(format!(
                    "cannot compare {} with {}",
                    x.type_name(),
                    y.type_name()
                )));
            }
            let o = if x.loose_eq(&y) {
                Ordering::Equal
            } else {
                x.total_cmp(&y)
            };
            Value::Bool(match op {
                BinOp::Lt => o == Ordering::Less,
                BinOp::Le => o != Ordering::Greater,
                BinOp::Gt => o == Ordering::Greater,
                _ => o != Ordering::Less,
            })
        }
        BinOp::Add => match (x, y) {
            (Value::Int(a), Value::Int(b)) => Value::Int(a.checked_add(b).ok_or_else(overflow)?),
            (Value::String(a), Value::String(b)) => Value::String(a + &b),
            (Value::String(a), b) => Value::String(a + &display(&b)),
            (a, Value::String(b)) => Value::String(display(&a) + &b),
            (Value::Array(mut a), Value::Array(b)) => {
                a.extend(b);
                Value::Array(a)
            }
            (a, b) => float_op(&a, &b, "+", |p, q| p + q)?,
        },
        BinOp::Sub => match (x, y) {
            (Value::Int(a), Value::Int(b)) => Value::Int(a.checked_sub(b).ok_or_else(overflow)?),
            (a, b) => float_op(&a, &b, "-", |p, q| p - q)?,
        },
        BinOp::Mul => match (x, y) {
            (Value::Int(a), Value::Int(b)) => Value::Int(a.checked_mul(b).ok_or_else(overflow)?),
            (a, b) => float_op(&a, &b, "*", |p, q| p * q)?,
        },
        BinOp::Div => match (x, y) {
            (Value::Int(_), Value::Int(0)) => {
                return Err(err(ErrorCode::Arithmetic, "division by zero"))
            }
            (Value::Int(a), Value::Int(b)) => Value::Int(a.checked_div(b).ok_or_else(overflow)?),
            (a, b) => float_op(&a, &b, "/", |p, q| p / q)?,
        },
        BinOp::Rem => match (x, y) {
            (Value::Int(_), Value::Int(0)) => {
                return Err(err(ErrorCode::Arithmetic, "division by zero"))
            }
            (Value::Int(a), Value::Int(b)) => Value::Int(a.checked_rem(b).ok_or_else(overflow)?),
            (a, b) => float_op(&a, &b, "%", |p, q| p % q)?,
        },
    })
}

fn float_op(a: &Value, b: &Value, sym: &str, f: impl Fn(f64, f64) -> f64) -> Result<Value, Error> {
    let (Some(p), Some(q)) = (as_f64(a), as_f64(b)) else {
        return Err(type_err(format!(
            "cannot apply {sym} to {} and {}",
            a.type_name(),
            b.type_name()
        )));
    };
    Value::float(f(p, q))
}

pub(crate) fn as_f64(v: &Value) -> Option<f64> {
    match v {
        Value::Int(i) => Some(*i as f64),
        Value::Float(f) => Some(*f),
        _ => None,
    }
}

/// How a value reads when joined into a string: strings as they are, the rest as JSON.
pub(crate) fn display(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}
