//! Built-in functions. Each can be called as a function, `upper(s)`, or as a method of
//! its first argument, `s.upper()`. `docs/LANGUAGE.md` lists them with examples.
//!
//! Determinism: nothing here uses platform maths (`sin`, `exp`, `powf`); `sqrt` and the
//! four operations are exactly rounded by IEEE 754 on every platform, and `pow` on
//! floats multiplies by squaring. Number-to-string is the engine's own code
//! ([`crate::text`]), pinned by golden strings.
//!
//! Memory: arguments are borrowed, never copied to be read; what a built-in builds is
//! paid for before it runs, at the most it can hold (`estimate`), and settled at what
//! the result holds.

use std::cmp::Ordering;
use std::rc::Rc;

use super::arith::display_len;
use super::meter::{string_cost, Data, SLOT};
use super::{as_f64, cost, display, err, type_err, Evaluator, Val};
use crate::error::{Error, ErrorCode};
use crate::lang::is_builtin;
use crate::value::{Object, Value};

fn arity(name: &str, args: &[Val], min: usize, max: usize) -> Result<(), Error> {
    if args.len() < min || args.len() > max {
        let want = if min == max {
            format!("{min}")
        } else {
            format!("{min} to {max}")
        };
        return Err(err(
            ErrorCode::InvalidArgument,
            format!("{name} takes {want} arguments, {} given", args.len()),
        ));
    }
    Ok(())
}

fn int_arg(name: &str, v: &Value) -> Result<i64, Error> {
    match v {
        Value::Int(i) => Ok(*i),
        other => Err(type_err(format!(
            "{name} takes an int here, not {}",
            other.type_name()
        ))),
    }
}

fn str_arg<'v>(name: &str, v: &'v Value) -> Result<&'v str, Error> {
    match v {
        Value::String(s) => Ok(s),
        other => Err(type_err(format!(
            "{name} takes a string here, not {}",
            other.type_name()
        ))),
    }
}

fn arr_arg<'v>(name: &str, v: &'v Value) -> Result<&'v Vec<Value>, Error> {
    match v {
        Value::Array(a) => Ok(a),
        other => Err(type_err(format!(
            "{name} takes an array here, not {}",
            other.type_name()
        ))),
    }
}

fn obj_arg<'v>(name: &str, v: &'v Value) -> Result<&'v Object, Error> {
    match v {
        Value::Object(o) => Ok(o),
        other => Err(type_err(format!(
            "{name} takes an object here, not {}",
            other.type_name()
        ))),
    }
}

/// A count of zero or more, as a 64-bit number (never a `usize`: that is 32 bits in the
/// browser's wasm build, and the language must not change with it).
fn count(name: &str, v: &Value) -> Result<u64, Error> {
    u64::try_from(int_arg(name, v)?).map_err(|_| {
        err(
            ErrorCode::InvalidArgument,
            format!("{name} takes a count of zero or more"),
        )
    })
}

/// Resolves a possibly negative index against a length, clamped to `0..=len`.
fn clamp_index(i: i64, len: usize) -> usize {
    let len = len as i64;
    (if i < 0 { len + i } else { i }).clamp(0, len) as usize
}

fn to_int(f: f64, name: &str) -> Result<Value, Error> {
    // i64::MAX as f64 rounds up to 2^63, which does not fit: compare against 2^63.
    if (-9_223_372_036_854_775_808.0..9_223_372_036_854_775_808.0).contains(&f) {
        Ok(Value::Int(f as i64))
    } else {
        let mut m = format!("{name}: ");
        crate::text::write_float(&mut m, f);
        m.push_str(" does not fit in an int");
        Err(err(ErrorCode::Arithmetic, m))
    }
}

impl<'a> Evaluator<'a> {
    /// Calls a built-in by name.
    pub(crate) fn call_builtin(&mut self, name: &str, args: Vec<Val>) -> Result<Val, Error> {
        match name {
            #[cfg(feature = "test-panic")]
            "__panic" => panic!("__panic() was called (the test-panic feature)"),
            "abort" => {
                arity(name, &args, 0, 1)?;
                let msg = match args.into_iter().next() {
                    None => "aborted".to_owned(),
                    Some(v) => {
                        let d = self.data(v)?;
                        // The message leaves with the error (exec caps its length).
                        let _paid = self.pay(display_len(d.value()) as u64)?;
                        display(d.value())
                    }
                };
                Err(err(ErrorCode::Aborted, msg))
            }
            "now" => {
                arity(name, &args, 0, 0)?;
                Ok(Val::int(self.ctx.now))
            }
            "newId" => {
                arity(name, &args, 0, 0)?;
                let id = self.new_id();
                self.string(id.len(), || id)
            }
            "asc" | "desc" => {
                arity(name, &args, 1, 1)?;
                let key = self.data(args.into_iter().next().expect("arity"))?;
                Ok(Val::Order {
                    key,
                    desc: name == "desc",
                })
            }
            "typeOf" => {
                arity(name, &args, 1, 1)?;
                let t = args[0].kind();
                self.string(t.len(), || t.to_owned())
            }
            "partitionOf" | "versionOf" => {
                arity(name, &args, 1, 1)?;
                match &args[0] {
                    Val::Doc(d) if name == "partitionOf" => {
                        let p = &d.stored.partition;
                        self.string(p.len(), || p.clone())
                    }
                    Val::Doc(d) => Ok(Val::int(d.stored.version as i64)),
                    other => Err(type_err(format!(
                        "{name} takes a document, not a {}",
                        other.kind()
                    ))),
                }
            }
            "map" | "filter" | "where" | "reduce" | "some" | "every" | "find" | "order" => {
                self.higher_order(name, args)
            }
            _ => {
                if !is_builtin(name) {
                    return Err(err(
                        ErrorCode::Unknown,
                        format!("no function or method named {name}"),
                    ));
                }
                let mut vals = Vec::with_capacity(args.len());
                for a in args {
                    vals.push(self.data(a)?);
                }
                let size: u64 = vals.iter().map(Data::encoded_len).sum();
                self.charge(1 + size / 256)?;
                let refs: Vec<&Value> = vals.iter().map(Data::value).collect();
                // Refuse work whose result would be over the limit before doing it.
                if matches!(name, "repeat" | "range" | "replace" | "join") {
                    self.precheck_size(name, &refs)?;
                }
                // Pay for the most the result (and the work on the way) can hold,
                // then settle at what it does hold.
                let mut paid = self.pay(estimate(name, &refs, &vals))?;
                let v = pure(name, &refs)?;
                if matches!(
                    v,
                    Value::String(_) | Value::Array(_) | Value::Object(_) | Value::Bytes(_)
                ) {
                    paid.settle(cost(&v))?;
                    self.check_built(&v)?;
                    Ok(Val::Data(Data::held(v, paid)))
                } else {
                    Ok(Val::scalar(v))
                }
            }
        }
    }

    fn precheck_size(&mut self, name: &str, vals: &[&Value]) -> Result<(), Error> {
        let n: i128 = match (name, vals) {
            ("repeat", [Value::String(s), Value::Int(n)]) => s.len() as i128 * *n as i128,
            ("range", [Value::Int(n)]) => *n as i128 * 2,
            ("range", [Value::Int(a), Value::Int(b)]) => (*b as i128 - *a as i128) * 2,
            ("replace", [Value::String(s), Value::String(from), Value::String(to)])
                if !from.is_empty() =>
            {
                let k = s.matches(from.as_str()).count() as i128;
                s.len() as i128 + k * (to.len() as i128 - from.len() as i128)
            }
            ("join", [Value::Array(xs), rest @ ..]) => {
                let sep = match rest {
                    [Value::String(sep)] => sep.len(),
                    _ => 0,
                };
                xs.len().saturating_sub(1) as i128 * sep as i128
                    + xs.iter().map(|x| display_len(x) as i128).sum::<i128>()
            }
            _ => 0,
        };
        if n > self.limits.max_value_bytes as i128 {
            return Err(err(
                ErrorCode::ResultTooLarge,
                format!(
                    "{name} would build about {n} bytes; the limit is {}",
                    self.limits.max_value_bytes
                ),
            ));
        }
        if name == "repeat" || name == "range" {
            self.charge(n.max(0) as u64 / 64)?;
        }
        Ok(())
    }

    fn higher_order(&mut self, name: &str, args: Vec<Val>) -> Result<Val, Error> {
        let mut it = args.into_iter();
        let Some(recv) = it.next() else {
            return Err(err(
                ErrorCode::InvalidArgument,
                format!("{name} needs an array"),
            ));
        };
        let rest: Vec<Val> = it.collect();
        // Sets have their own lazy versions of these.
        if let Val::Set(s) = &recv {
            if let Some(v) = self.set_method(&s.clone(), name, &rest)? {
                return Ok(v);
            }
        }
        let arr = self.data(recv)?;
        let Value::Array(items) = arr.value() else {
            return Err(type_err(format!(
                "{name} takes an array, not {}",
                arr.value().type_name()
            )));
        };
        let func = |i: usize| -> Result<Rc<super::Closure>, Error> {
            match rest.get(i) {
                Some(Val::Func(c)) => Ok(c.clone()),
                Some(other) => Err(type_err(format!(
                    "{name} takes a function, not a {}",
                    other.kind()
                ))),
                None => Err(err(
                    ErrorCode::InvalidArgument,
                    format!("{name} needs a function"),
                )),
            }
        };
        match name {
            "map" => {
                arity(name, &rest, 1, 1)?;
                let f = func(0)?;
                let mut out = Vec::with_capacity(items.len());
                let mut paid = self.pay(SLOT)?;
                // Stop as soon as the result is over the limit, not after building it all.
                let mut size = 0;
                for x in items {
                    let x = self.copy(x)?;
                    let v = self.call_closure(&f, vec![x])?;
                    let v = self.own(v)?;
                    size += v.value.encoded_len();
                    if size > self.limits.max_value_bytes {
                        return Err(err(
                            ErrorCode::ResultTooLarge,
                            format!(
                                "map would build more than {} bytes, the limit",
                                self.limits.max_value_bytes
                            ),
                        ));
                    }
                    paid.absorb(v.paid)?;
                    out.push(v.value);
                }
                let v = Value::Array(out);
                self.check_built(&v)?;
                Ok(Val::Data(Data::held(v, paid)))
            }
            "filter" | "where" => {
                arity(name, &rest, 1, 1)?;
                let f = func(0)?;
                let mut out = Vec::new();
                let mut paid = self.pay(SLOT)?;
                for x in items {
                    let v = self.copy(x)?;
                    let keep = self.call_closure(&f, vec![v.clone()])?;
                    if self.truthy(&keep) {
                        let v = self.own(v)?;
                        paid.absorb(v.paid)?;
                        out.push(v.value);
                    }
                }
                Ok(Val::Data(Data::held(Value::Array(out), paid)))
            }
            "reduce" => {
                arity(name, &rest, 2, 2)?;
                let f = func(0)?;
                let mut acc = rest[1].clone();
                for x in items {
                    let x = self.copy(x)?;
                    acc = self.call_closure(&f, vec![acc, x])?;
                    if let Val::Data(v) = &acc {
                        if matches!(
                            v.value(),
                            Value::Array(_) | Value::Object(_) | Value::String(_)
                        ) {
                            self.check_built(v.value())?;
                        }
                    }
                }
                Ok(acc)
            }
            "some" | "every" | "find" => {
                arity(name, &rest, 1, 1)?;
                let f = func(0)?;
                for x in items {
                    let x = self.copy(x)?;
                    let r = self.call_closure(&f, vec![x.clone()])?;
                    let t = self.truthy(&r);
                    match (name, t) {
                        ("some", true) => return Ok(Val::bool(true)),
                        ("every", false) => return Ok(Val::bool(false)),
                        ("find", true) => return Ok(x),
                        _ => {}
                    }
                }
                Ok(match name {
                    "some" => Val::bool(false),
                    "every" => Val::bool(true),
                    _ => Val::NULL,
                })
            }
            _ => {
                // order(array, keys...)
                if rest.is_empty() {
                    return Err(err(
                        ErrorCode::InvalidArgument,
                        "order takes one or more sort keys",
                    ));
                }
                let keys = (0..rest.len()).map(func).collect::<Result<Vec<_>, _>>()?;
                self.sort_values(items, &keys)
            }
        }
    }

    /// `order` of an array: the elements copied (paid for), sorted by their keys.
    fn sort_values(&mut self, arr: &[Value], keys: &[Rc<super::Closure>]) -> Result<Val, Error> {
        let mut desc = vec![false; keys.len()];
        let mut keyed = Vec::with_capacity(arr.len());
        let mut paid = self.pay(SLOT)?;
        for x in arr {
            let mut ks = Vec::with_capacity(keys.len());
            let v = self.copy(x)?;
            for (i, f) in keys.iter().enumerate() {
                match self.call_closure(f, vec![v.clone()])? {
                    Val::Order { key, desc: d } => {
                        desc[i] = d;
                        ks.push(key);
                    }
                    other => ks.push(self.data(other)?),
                }
            }
            // Keys are kept until the sort ends: large ones cost fuel, as built values do.
            let enc: u64 = ks.iter().map(Data::encoded_len).sum();
            self.charge(enc / 64)?;
            let v = self.own(v)?;
            paid.absorb(v.paid)?;
            keyed.push((ks, v.value));
        }
        let n = keyed.len() as u64;
        self.charge(n * (64 - n.leading_zeros() as u64))?;
        keyed.sort_by(|a, b| super::sets::cmp_key_lists(&a.0, &b.0, &desc));
        let v = Value::Array(keyed.into_iter().map(|(_, v)| v).collect());
        Ok(Val::Data(Data::held(v, paid)))
    }
}

/// At least what [`pure`] holds while it works and in its result, paid before it runs
/// (and settled at the result's cost afterwards). `vals` are the arguments as held,
/// with what each was paid for.
fn estimate(name: &str, a: &[&Value], vals: &[Data]) -> u64 {
    // What the arguments cost: a result made of their parts costs no more.
    let inputs: u64 = a.iter().map(|v| cost(v)).sum::<u64>() + SLOT;
    let len = |i: usize| match a.get(i) {
        Some(Value::String(s)) => s.len() as u64,
        Some(Value::Array(x)) => x.len() as u64,
        Some(Value::Bytes(b)) => b.len() as u64,
        _ => 0,
    };
    let _ = vals;
    match name {
        // Scalars, or short strings.
        "toInt" | "toFloat" | "abs" | "floor" | "ceil" | "round" | "sqrt" | "pow" | "length"
        | "isEmpty" | "startsWith" | "endsWith" | "includes" | "indexOf" | "has" | "sum" => 0,
        "toString" => string_cost(a.first().map_or(0, |v| display_len(v)) as u64),
        "upper" | "lower" => string_cost(3 * len(0)),
        "split" => SLOT + (len(0) + 1) * (SLOT + 4),
        "join" => {
            let sep = len(1);
            let parts: u64 = match a.first() {
                Some(Value::Array(xs)) => xs.iter().map(|x| display_len(x) as u64 + sep).sum(),
                _ => 0,
            };
            string_cost(parts)
        }
        "replace" => match a {
            [Value::String(s), Value::String(from), Value::String(to)] if !from.is_empty() => {
                let k = s.matches(from.as_str()).count() as u64;
                string_cost(s.len() as u64 + k * to.len() as u64)
            }
            _ => 0,
        },
        "repeat" => match a {
            [Value::String(s), Value::Int(n)] => {
                string_cost((s.len() as u64).saturating_mul((*n).max(0) as u64))
            }
            _ => 0,
        },
        "range" => {
            let n = match a {
                [Value::Int(n)] => (*n).max(0) as u64,
                [Value::Int(lo), Value::Int(hi)] => (*hi as i128 - *lo as i128).max(0) as u64,
                _ => 0,
            };
            SLOT + n.saturating_mul(SLOT)
        }
        // The key encoding of every element, held while they are compared.
        "distinct" => 4 * inputs,
        "entries" | "fromEntries" | "keys" | "values" => 2 * inputs + crate::value::MEM_OBJECT,
        // Parts of the arguments, copied.
        _ => inputs + crate::value::MEM_OBJECT,
    }
}

/// The built-ins that only take and give data.
fn pure(name: &str, a: &[&Value]) -> Result<Value, Error> {
    let n = a.len();
    let one = |min: usize, max: usize| -> Result<(), Error> {
        if n < min || n > max {
            Err(err(
                ErrorCode::InvalidArgument,
                format!(
                    "{name} takes {min}{} arguments, {n} given",
                    if max > min {
                        format!(" to {max}")
                    } else {
                        String::new()
                    }
                ),
            ))
        } else {
            Ok(())
        }
    };
    Ok(match name {
        "toString" => {
            one(1, 1)?;
            Value::String(display(a[0]))
        }
        "toInt" => {
            one(1, 1)?;
            match a[0] {
                Value::Int(i) => Value::Int(*i),
                Value::Float(f) => to_int(f.trunc(), name)?,
                Value::String(s) => Value::Int(s.trim().parse().map_err(|_| {
                    err(
                        ErrorCode::InvalidArgument,
                        format!("toInt: {s:?} is not an integer"),
                    )
                })?),
                Value::Bool(b) => Value::Int(i64::from(*b)),
                other => {
                    return Err(type_err(format!(
                        "toInt cannot convert {}",
                        other.type_name()
                    )))
                }
            }
        }
        "toFloat" => {
            one(1, 1)?;
            match a[0] {
                Value::Int(i) => Value::Float(*i as f64),
                Value::Float(f) => Value::Float(*f),
                Value::Bool(b) => Value::Float(if *b { 1.0 } else { 0.0 }),
                Value::String(s) => Value::float(s.trim().parse().map_err(|_| {
                    err(
                        ErrorCode::InvalidArgument,
                        format!("toFloat: {s:?} is not a number"),
                    )
                })?)?,
                other => {
                    return Err(type_err(format!(
                        "toFloat cannot convert {}",
                        other.type_name()
                    )))
                }
            }
        }
        "abs" => {
            one(1, 1)?;
            match a[0] {
                Value::Int(i) => Value::Int(
                    i.checked_abs()
                        .ok_or_else(|| err(ErrorCode::Arithmetic, "integer overflow"))?,
                ),
                Value::Float(f) => Value::Float(f.abs()),
                other => {
                    return Err(type_err(format!(
                        "abs takes a number, not {}",
                        other.type_name()
                    )))
                }
            }
        }
        "floor" | "ceil" | "round" => {
            one(1, 1)?;
            match a[0] {
                Value::Int(i) => Value::Int(*i),
                Value::Float(f) => to_int(
                    match name {
                        "floor" => f.floor(),
                        "ceil" => f.ceil(),
                        // Half away from zero, as f64::round.
                        _ => f.round(),
                    },
                    name,
                )?,
                other => {
                    return Err(type_err(format!(
                        "{name} takes a number, not {}",
                        other.type_name()
                    )))
                }
            }
        }
        "sqrt" => {
            one(1, 1)?;
            let f = as_f64(a[0]).ok_or_else(|| type_err("sqrt takes a number"))?;
            if f < 0.0 {
                return Err(err(ErrorCode::Arithmetic, "sqrt of a negative number"));
            }
            Value::float(f.sqrt())?
        }
        "pow" => {
            one(2, 2)?;
            let e = int_arg(name, a[1])?;
            match a[0] {
                Value::Int(b) => {
                    let e = u32::try_from(e).map_err(|_| {
                        err(
                            ErrorCode::Arithmetic,
                            "pow of an int takes an exponent from 0 to 4294967295",
                        )
                    })?;
                    Value::Int(
                        b.checked_pow(e)
                            .ok_or_else(|| err(ErrorCode::Arithmetic, "integer overflow"))?,
                    )
                }
                Value::Float(b) => Value::float(powi(*b, e))?,
                other => {
                    return Err(type_err(format!(
                        "pow takes a number, not {}",
                        other.type_name()
                    )))
                }
            }
        }
        "min" | "max" => {
            if n == 0 {
                return Err(err(
                    ErrorCode::InvalidArgument,
                    format!("{name} needs values"),
                ));
            }
            let items: Vec<&Value> = match a {
                [Value::Array(xs)] => xs.iter().collect(),
                _ => a.to_vec(),
            };
            let mut best: Option<&Value> = None;
            let numeric = |v: &Value| matches!(v, Value::Int(_) | Value::Float(_));
            for x in items {
                if !matches!(x, Value::Int(_) | Value::Float(_) | Value::String(_)) {
                    return Err(type_err(format!(
                        "{name} compares numbers or strings, not {}",
                        x.type_name()
                    )));
                }
                if best.is_some_and(|b| numeric(b) != numeric(x)) {
                    return Err(type_err(format!(
                        "{name} compares numbers with numbers and strings with strings"
                    )));
                }
                best = Some(match best {
                    None => x,
                    Some(b) => {
                        let o = x.total_cmp(b);
                        if (name == "min" && o == Ordering::Less)
                            || (name == "max" && o == Ordering::Greater)
                        {
                            x
                        } else {
                            b
                        }
                    }
                });
            }
            best.cloned().unwrap_or(Value::Null)
        }
        "sum" => {
            one(1, 1)?;
            let xs = arr_arg(name, a[0])?;
            let mut acc = Value::Int(0);
            for x in xs {
                if !matches!(x, Value::Int(_) | Value::Float(_)) {
                    return Err(type_err("sum adds numbers"));
                }
                acc = super::binary(crate::lang::ast::BinOp::Add, &acc, x)?;
            }
            acc
        }
        "range" => {
            one(1, 2)?;
            let (lo, hi) = if n == 1 {
                (0, int_arg(name, a[0])?)
            } else {
                (int_arg(name, a[0])?, int_arg(name, a[1])?)
            };
            Value::Array((lo..hi.max(lo)).map(Value::Int).collect())
        }
        "length" => {
            one(1, 1)?;
            Value::Int(match a[0] {
                Value::String(s) => s.chars().count(),
                Value::Bytes(b) => b.len(),
                Value::Array(x) => x.len(),
                Value::Object(o) => o.len(),
                other => {
                    return Err(type_err(format!(
                        "length of {} is not defined",
                        other.type_name()
                    )))
                }
            } as i64)
        }
        "isEmpty" => {
            one(1, 1)?;
            Value::Bool(match a[0] {
                Value::String(s) => s.is_empty(),
                Value::Bytes(b) => b.is_empty(),
                Value::Array(x) => x.is_empty(),
                Value::Object(o) => o.is_empty(),
                Value::Null => true,
                other => {
                    return Err(type_err(format!(
                        "isEmpty of {} is not defined",
                        other.type_name()
                    )))
                }
            })
        }
        "upper" | "lower" | "trim" => {
            one(1, 1)?;
            let s = str_arg(name, a[0])?;
            Value::String(match name {
                "upper" => s.to_uppercase(),
                "lower" => s.to_lowercase(),
                _ => s.trim().to_owned(),
            })
        }
        "startsWith" | "endsWith" => {
            one(2, 2)?;
            let (s, p) = (str_arg(name, a[0])?, str_arg(name, a[1])?);
            Value::Bool(if name == "startsWith" {
                s.starts_with(p)
            } else {
                s.ends_with(p)
            })
        }
        "includes" => {
            one(2, 2)?;
            Value::Bool(match a[0] {
                Value::String(s) => s.contains(str_arg(name, a[1])?),
                Value::Array(xs) => xs.iter().any(|x| x.loose_eq(a[1])),
                other => {
                    return Err(type_err(format!(
                        "includes takes a string or an array, not {}",
                        other.type_name()
                    )))
                }
            })
        }
        "indexOf" => {
            one(2, 2)?;
            Value::Int(match a[0] {
                Value::String(s) => {
                    let p = str_arg(name, a[1])?;
                    s.find(p)
                        .map_or(-1, |byte| s[..byte].chars().count() as i64)
                }
                Value::Array(xs) => xs
                    .iter()
                    .position(|x| x.loose_eq(a[1]))
                    .map_or(-1, |i| i as i64),
                other => {
                    return Err(type_err(format!(
                        "indexOf takes a string or an array, not {}",
                        other.type_name()
                    )))
                }
            })
        }
        "slice" => {
            one(2, 3)?;
            let start = int_arg(name, a[1])?;
            match a[0] {
                Value::String(s) => {
                    // By characters, without a vector of them.
                    let count = s.chars().count();
                    let end = if n == 3 {
                        int_arg(name, a[2])?
                    } else {
                        count as i64
                    };
                    let (i, j) = (clamp_index(start, count), clamp_index(end, count));
                    Value::String(if i < j {
                        s.chars().skip(i).take(j - i).collect()
                    } else {
                        String::new()
                    })
                }
                Value::Array(xs) => {
                    let end = if n == 3 {
                        int_arg(name, a[2])?
                    } else {
                        xs.len() as i64
                    };
                    let (i, j) = (clamp_index(start, xs.len()), clamp_index(end, xs.len()));
                    Value::Array(if i < j { xs[i..j].to_vec() } else { Vec::new() })
                }
                other => {
                    return Err(type_err(format!(
                        "slice takes a string or an array, not {}",
                        other.type_name()
                    )))
                }
            }
        }
        "split" => {
            one(2, 2)?;
            let (s, sep) = (str_arg(name, a[0])?, str_arg(name, a[1])?);
            if sep.is_empty() {
                Value::Array(s.chars().map(|c| Value::String(c.to_string())).collect())
            } else {
                Value::Array(s.split(sep).map(Value::from).collect())
            }
        }
        "join" => {
            one(1, 2)?;
            let xs = arr_arg(name, a[0])?;
            let sep = if n == 2 { str_arg(name, a[1])? } else { "" };
            // Into one string, with no vector of parts on the way.
            let mut out = String::new();
            for (i, x) in xs.iter().enumerate() {
                if i > 0 {
                    out.push_str(sep);
                }
                match x {
                    Value::String(s) => out.push_str(s),
                    other => crate::text::write_json(&mut out, other),
                }
            }
            Value::String(out)
        }
        "replace" => {
            one(3, 3)?;
            let (s, from, to) = (
                str_arg(name, a[0])?,
                str_arg(name, a[1])?,
                str_arg(name, a[2])?,
            );
            if from.is_empty() {
                return Err(err(
                    ErrorCode::InvalidArgument,
                    "replace: the text to replace is empty",
                ));
            }
            Value::String(s.replace(from, to))
        }
        "repeat" => {
            one(2, 2)?;
            let s = str_arg(name, a[0])?;
            let n = count(name, a[1])?;
            // Counted in 64 bits: the size check before the call refuses a result over
            // the limit the same way on every build; an empty string stays empty.
            let k = if s.is_empty() {
                0
            } else {
                usize::try_from(n).map_err(|_| {
                    err(
                        ErrorCode::ResultTooLarge,
                        "repeat would build too large a string",
                    )
                })?
            };
            Value::String(s.repeat(k))
        }
        "concat" => {
            one(2, 2)?;
            match (a[0], a[1]) {
                (Value::Array(x), Value::Array(y)) => {
                    Value::Array(x.iter().chain(y).cloned().collect())
                }
                (Value::String(x), Value::String(y)) => Value::String(format!("{x}{y}")),
                _ => return Err(type_err("concat joins two arrays or two strings")),
            }
        }
        "first" | "last" => {
            one(1, 1)?;
            let xs = arr_arg(name, a[0])?;
            (if name == "first" {
                xs.first()
            } else {
                xs.last()
            })
            .cloned()
            .unwrap_or(Value::Null)
        }
        "append" => {
            one(2, 2)?;
            let mut xs = arr_arg(name, a[0])?.clone();
            xs.push(a[1].clone());
            Value::Array(xs)
        }
        "reverse" => {
            one(1, 1)?;
            match a[0] {
                Value::Array(xs) => Value::Array(xs.iter().rev().cloned().collect()),
                Value::String(s) => Value::String(s.chars().rev().collect()),
                other => {
                    return Err(type_err(format!(
                        "reverse takes an array or a string, not {}",
                        other.type_name()
                    )))
                }
            }
        }
        "sort" => {
            one(1, 1)?;
            let mut xs = arr_arg(name, a[0])?.clone();
            xs.sort_by(Value::total_cmp);
            Value::Array(xs)
        }
        "distinct" => {
            one(1, 1)?;
            let xs = arr_arg(name, a[0])?;
            let mut seen = std::collections::BTreeSet::new();
            let mut out = Vec::new();
            // By the index key encoding, so that values `==` calls equal (1 and 1.0)
            // count once, as they do for `includes` and `indexOf`.
            for x in xs {
                let mut k = Vec::new();
                crate::keys::encode_value(&mut k, x);
                if seen.insert(k) {
                    out.push(x.clone());
                }
            }
            Value::Array(out)
        }
        "flatten" => {
            one(1, 1)?;
            let xs = arr_arg(name, a[0])?;
            let mut out = Vec::new();
            for x in xs {
                match x {
                    Value::Array(inner) => out.extend(inner.iter().cloned()),
                    other => out.push(other.clone()),
                }
            }
            Value::Array(out)
        }
        "take" | "skip" => {
            one(2, 2)?;
            let xs = arr_arg(name, a[0])?;
            // Clamped in 64 bits, so that a count past 2^32 means the same everywhere.
            let k = count(name, a[1])?.min(xs.len() as u64) as usize;
            Value::Array(if name == "take" {
                xs[..k].to_vec()
            } else {
                xs[k..].to_vec()
            })
        }
        "keys" | "values" | "entries" => {
            one(1, 1)?;
            let o = obj_arg(name, a[0])?;
            Value::Array(match name {
                "keys" => o.keys().map(|k| Value::String(k.to_string())).collect(),
                "values" => o.values().cloned().collect(),
                _ => o
                    .iter()
                    .map(|(k, v)| Value::Array(vec![Value::String(k.to_string()), v.clone()]))
                    .collect(),
            })
        }
        "fromEntries" => {
            one(1, 1)?;
            // The pairs in any order, sorted once; a key given twice keeps its last value.
            let o: Object = arr_arg(name, a[0])?
                .iter()
                .map(|e| match e {
                    Value::Array(kv) if kv.len() == 2 => {
                        Ok((str_arg(name, &kv[0])?.to_owned(), kv[1].clone()))
                    }
                    _ => Err(type_err("fromEntries takes an array of [key, value] pairs")),
                })
                .collect::<Result<_, Error>>()?;
            Value::Object(o)
        }
        "has" => {
            one(2, 2)?;
            Value::Bool(obj_arg(name, a[0])?.contains_key(str_arg(name, a[1])?))
        }
        "merge" => {
            one(2, 2)?;
            let mut o = obj_arg(name, a[0])?.clone();
            o.merge(obj_arg(name, a[1])?.clone());
            Value::Object(o)
        }
        "without" => {
            if n < 1 {
                return Err(err(ErrorCode::InvalidArgument, "without needs an object"));
            }
            // The keys as a patch of nulls: one walk over the object, however many go.
            let mut o = obj_arg(name, a[0])?.clone();
            let gone = a[1..]
                .iter()
                .map(|k| Ok((str_arg(name, k)?.to_owned(), Value::Null)))
                .collect::<Result<Object, Error>>()?;
            o.patch(gone);
            Value::Object(o)
        }
        _ => {
            return Err(err(
                ErrorCode::Unknown,
                format!("{name} cannot be used here"),
            ))
        }
    })
}

/// `b^e` by repeated squaring: only multiplications, exactly rounded on every platform.
fn powi(b: f64, e: i64) -> f64 {
    let mut result = 1.0;
    let mut base = b;
    let mut k = e.unsigned_abs();
    while k > 0 {
        if k & 1 == 1 {
            result *= base;
        }
        base *= base;
        k >>= 1;
    }
    if e < 0 {
        1.0 / result
    } else {
        result
    }
}
