//! Arithmetic, comparison and indexing of data values.
//!
//! The operators take their operands by reference: a value the program holds is never
//! copied to be compared or added. What an operator builds (`+` of strings or arrays)
//! is paid for first: [`result_cost`] is at least what [`binary`] allocates.

use super::meter::{string_cost, Data, SLOT};
use super::{err, type_err};
use crate::error::{Error, ErrorCode};
use crate::lang::ast::BinOp;
use crate::text::json_len;
use crate::value::Value;

/// What indexing found: nothing, a value inside the receiver, or a character.
pub(super) enum Indexed<'v> {
    Null,
    Ref(&'v Value),
    Char(char),
}

/// `r[i]`. Positions are compared as 64-bit numbers, never converted to `usize`, so a
/// position past 2^32 means the same on a 32-bit build (the browser's wasm) as on a
/// 64-bit one.
pub(super) fn index_value<'v>(r: &'v Value, i: &Value) -> Result<Indexed<'v>, Error> {
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
            Ok(at(*i, a.len()).map_or(Indexed::Null, |k| Indexed::Ref(&a[k])))
        }
        (Value::Object(o), Value::String(k)) => Ok(o.get(k).map_or(Indexed::Null, Indexed::Ref)),
        (Value::String(s), Value::Int(i)) => Ok(at(*i, s.chars().count())
            .and_then(|k| s.chars().nth(k))
            .map_or(Indexed::Null, Indexed::Char)),
        (Value::Null, _) => Err(type_err("cannot index null")),
        (r, i) => Err(type_err(format!(
            "cannot index a {} with a {}",
            r.type_name(),
            i.type_name()
        ))),
    }
}

/// What the result of `x op y` may cost, when the operator builds one (0 when it
/// gives a scalar or fails).
pub(super) fn result_cost(op: BinOp, x: &Data, y: &Data) -> u64 {
    if op != BinOp::Add {
        return 0;
    }
    match (x.value(), y.value()) {
        (Value::String(a), Value::String(b)) => string_cost((a.len() + b.len()) as u64),
        (Value::String(a), b) | (b, Value::String(a)) => {
            string_cost((a.len() + json_len(b)) as u64)
        }
        // The items of both, copied: what each was paid for, less one slot.
        (Value::Array(_), Value::Array(_)) => (x.cost() + y.cost()).saturating_sub(SLOT).max(SLOT),
        _ => 0,
    }
}

/// Arithmetic and comparison. Integer arithmetic is checked; `/` of two ints divides
/// with truncation; a float result must be finite.
pub(crate) fn binary(op: BinOp, x: &Value, y: &Value) -> Result<Value, Error> {
    use std::cmp::Ordering;
    let overflow = || err(ErrorCode::Arithmetic, "integer overflow");
    Ok(match op {
        BinOp::Eq => Value::Bool(x.loose_eq(y)),
        BinOp::Ne => Value::Bool(!x.loose_eq(y)),
        BinOp::Lt | BinOp::Le | BinOp::Gt | BinOp::Ge => {
            let comparable = matches!(
                (x, y),
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
            let o = if x.loose_eq(y) {
                Ordering::Equal
            } else {
                x.total_cmp(y)
            };
            Value::Bool(match op {
                BinOp::Lt => o == Ordering::Less,
                BinOp::Le => o != Ordering::Greater,
                BinOp::Gt => o == Ordering::Greater,
                _ => o != Ordering::Less,
            })
        }
        BinOp::Add => match (x, y) {
            (Value::Int(a), Value::Int(b)) => Value::Int(a.checked_add(*b).ok_or_else(overflow)?),
            (Value::String(a), Value::String(b)) => Value::String(format!("{a}{b}")),
            (Value::String(a), b) => Value::String(format!("{a}{b}")),
            (a, Value::String(b)) => Value::String(format!("{a}{b}")),
            (Value::Array(a), Value::Array(b)) => {
                let mut out = Vec::with_capacity(a.len() + b.len());
                out.extend(a.iter().cloned());
                out.extend(b.iter().cloned());
                Value::Array(out)
            }
            (a, b) => float_op(a, b, "+", |p, q| p + q)?,
        },
        BinOp::Sub => match (x, y) {
            (Value::Int(a), Value::Int(b)) => Value::Int(a.checked_sub(*b).ok_or_else(overflow)?),
            (a, b) => float_op(a, b, "-", |p, q| p - q)?,
        },
        BinOp::Mul => match (x, y) {
            (Value::Int(a), Value::Int(b)) => Value::Int(a.checked_mul(*b).ok_or_else(overflow)?),
            (a, b) => float_op(a, b, "*", |p, q| p * q)?,
        },
        BinOp::Div => match (x, y) {
            (Value::Int(_), Value::Int(0)) => {
                return Err(err(ErrorCode::Arithmetic, "division by zero"))
            }
            (Value::Int(a), Value::Int(b)) => Value::Int(a.checked_div(*b).ok_or_else(overflow)?),
            (a, b) => float_op(a, b, "/", |p, q| p / q)?,
        },
        BinOp::Rem => match (x, y) {
            (Value::Int(_), Value::Int(0)) => {
                return Err(err(ErrorCode::Arithmetic, "division by zero"))
            }
            (Value::Int(a), Value::Int(b)) => Value::Int(a.checked_rem(*b).ok_or_else(overflow)?),
            (a, b) => float_op(a, b, "%", |p, q| p % q)?,
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

/// The length of [`display`]'s text, without building it.
pub(crate) fn display_len(v: &Value) -> usize {
    match v {
        Value::String(s) => s.len(),
        other => json_len(other),
    }
}
