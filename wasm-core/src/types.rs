//! Field types: what a typed collection's documents hold, and a function's typed
//! parameters (docs/LANGUAGE.md, "Field types").
//!
//! [`validate_doc`] runs on every write the engine makes (create, update, replace,
//! editText), in the browser and on the server alike, after the size and depth limits
//! and before the rules; a document that does not fit is refused with
//! `VALIDATION_FAILED`, naming the collection, the document and the field. The walk
//! follows the declared type, whose depth the parser bounds
//! ([`crate::lang::ast::MAX_TYPE_DEPTH`]), and the evaluator pays for it in fuel
//! before it starts (in proportion to the document's encoded size).

use crate::error::{Error, ErrorCode};
use crate::lang::ast::{FieldDecl, TypeExpr};
use crate::schema::Collection;
use crate::value::{Object, Value};

/// Why a value does not fit a type: the path to the part that does not (`tags[2]`,
/// `meta.at`; empty for the value itself) and what is wrong.
#[derive(Debug, PartialEq, Eq)]
pub struct Misfit {
    pub path: String,
    pub why: String,
}

/// Names in messages are cut to this many characters.
const NAME_CHARS: usize = 64;

fn short(s: &str) -> String {
    if s.chars().count() <= NAME_CHARS {
        s.to_owned()
    } else {
        format!("{}…", s.chars().take(NAME_CHARS).collect::<String>())
    }
}

fn misfit(why: String) -> Misfit {
    Misfit {
        path: String::new(),
        why,
    }
}

fn within(mut m: Misfit, part: String) -> Misfit {
    m.path = if m.path.is_empty() {
        part
    } else if m.path.starts_with('[') {
        format!("{part}{}", m.path)
    } else {
        format!("{part}.{}", m.path)
    };
    m
}

/// Whether `v` is a value of type `ty`. A null fits only where the field is optional
/// (the caller's business).
pub fn check_value(ty: &TypeExpr, v: &Value) -> Result<(), Misfit> {
    let expected = || misfit(format!("expected {}, got {}", ty.describe(), v.type_name()));
    match (ty, v) {
        (TypeExpr::Any, _) => Ok(()),
        (TypeExpr::String { min, max, nonblank }, Value::String(s)) => {
            if *nonblank && s.trim().is_empty() {
                return Err(misfit("must not be blank (empty or only spaces)".into()));
            }
            // Counting stops past the bound, so a long string costs only what it must.
            let stop = max.map_or(0, |m| m.saturating_add(1)).max(min.unwrap_or(0));
            // (A bound past the address space counts every character, on every target.)
            let stop = usize::try_from(stop).unwrap_or(usize::MAX);
            let n = s.chars().take(stop).count() as u64;
            if let Some(m) = max {
                if n > *m {
                    return Err(misfit(format!(
                        "is longer than {m} characters ({} bytes)",
                        s.len()
                    )));
                }
            }
            if let Some(m) = min {
                if n < *m {
                    return Err(misfit(format!("is shorter than {m} characters ({n})")));
                }
            }
            Ok(())
        }
        (TypeExpr::Int | TypeExpr::Time, Value::Int(_)) => Ok(()),
        (TypeExpr::Float, Value::Int(_) | Value::Float(_)) => Ok(()),
        (TypeExpr::Bool, Value::Bool(_)) => Ok(()),
        (TypeExpr::Ref(c), Value::String(s)) => crate::eval::check_id(s)
            .map_err(|_| misfit(format!("is not a valid id of a {c} document"))),
        (TypeExpr::Array(t), Value::Array(xs)) => {
            for (i, x) in xs.iter().enumerate() {
                check_value(t, x).map_err(|m| within(m, format!("[{i}]")))?;
            }
            Ok(())
        }
        (TypeExpr::Object(fields), Value::Object(o)) => {
            check_members(fields, o, &|k| fields.iter().any(|f| f.name == k))
        }
        // Text is stored as its own bytes and checked by its edits (crate::ytext).
        (TypeExpr::Text, _) => Ok(()),
        _ => Err(expected()),
    }
}

/// An object's members against declared fields: each declared one present (unless
/// optional) and fitting, and no other member (`known` tells a declared name, or one
/// the caller allows besides).
fn check_members(
    fields: &[FieldDecl],
    o: &Object,
    known: &dyn Fn(&str) -> bool,
) -> Result<(), Misfit> {
    for f in fields {
        match o.get(&f.name) {
            None | Some(Value::Null) if f.optional => {}
            None | Some(Value::Null) => {
                return Err(within(misfit("is required".into()), short(&f.name)))
            }
            Some(v) => check_value(&f.ty, v).map_err(|m| within(m, short(&f.name)))?,
        }
    }
    if let Some(k) = o.keys().find(|k| !known(k)) {
        return Err(within(misfit("is not a declared field".into()), short(k)));
    }
    Ok(())
}

/// Checks a document of a typed collection (an untyped one takes any fields).
/// `data` is the stored fields (without `id`).
pub fn validate_doc(coll: &Collection, id: &str, data: &Value) -> Result<(), Error> {
    if !coll.is_typed() {
        return Ok(());
    }
    let empty = Object::new();
    let o = data.as_object().unwrap_or(&empty);
    check_members(&coll.fields, o, &|k| coll.field_names.contains(k)).map_err(|m| {
        Error::new(
            ErrorCode::Validation,
            format!("{}/{}: field {} {}", coll.name, short(id), m.path, m.why),
        )
    })
}

/// Checks a function's arguments against its declared parameter types.
pub fn validate_args(
    function: &str,
    params: &[String],
    types: &[Option<(TypeExpr, bool)>],
    args: &[&Value],
) -> Result<(), Error> {
    for ((name, ty), v) in params.iter().zip(types).zip(args) {
        let Some((ty, optional)) = ty else { continue };
        if v.is_null() {
            if *optional {
                continue;
            }
            return Err(Error::new(
                ErrorCode::Validation,
                format!("{function}: argument {name} is required"),
            ));
        }
        check_value(ty, v).map_err(|m| {
            let m = within(m, name.clone());
            Error::new(
                ErrorCode::Validation,
                format!("{function}: argument {} {}", m.path, m.why),
            )
        })?;
    }
    Ok(())
}
