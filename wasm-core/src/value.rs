//! Values: the data model shared by documents, arguments, results and the language.
//!
//! A [`Value`] has three representations, each with one job:
//! - the **canonical encoding** ([`Value::encode`]): compact, unambiguous bytes used for
//!   storage and for hashing (the state digest). Equal values encode to equal bytes.
//! - the **order-preserving key encoding** ([`crate::keys`]): bytes whose lexicographic
//!   order equals [`Value::total_cmp`], used for index keys.
//! - **JSON** ([`Value::to_json`], [`Value::from_json`]) at the JS and HTTP boundary.
//!
//! Objects keep their keys sorted ([`Object`], a sorted vector), so no iteration order
//! depends on insertion history or on a hasher: one of the engine's determinism rules.

use std::cmp::Ordering;
use std::fmt;

use base64::Engine as _;

use crate::error::{Error, ErrorCode};

mod object;

pub use object::{Key, Object};

/// Values nest at most this deep (arrays and objects). Deeper input is refused when it
/// is decoded, so no recursive walk over a value can overflow the stack.
pub const MAX_VALUE_DEPTH: usize = 64;

/// The memory model of values, the same on every build (`eval::meter` explains it):
/// a value's slot (a `Value` on a 64-bit target)...
pub const MEM_SLOT: u64 = 32;
/// ...an object's own cost (a B-tree node, what objects were when the model was set)...
pub const MEM_OBJECT: u64 = 640;
/// ...and an object entry besides its key's bytes and its value's heap: the key's
/// `String`, the value's slot, and the room a half-full node leaves.
///
/// An [`Object`] is a sorted vector now and allocates less (an entry is 48 bytes, twice
/// that at most with a vector's spare room, and a [`Key`] is shared with the same key
/// decoded before or costs its bytes and 16 more). The model stays: it is part of what
/// a log means (a program over its memory limit fails on every build and every
/// version), so lowering it would let a newer server commit what an older one refused.
pub const MEM_ENTRY: u64 = 112;

/// A Warren value.
#[derive(Clone, Debug, Default)]
pub enum Value {
    #[default]
    Null,
    Bool(bool),
    Int(i64),
    /// Always finite: NaN and the infinities are refused wherever a float is made.
    Float(f64),
    String(String),
    Bytes(Vec<u8>),
    Array(Vec<Value>),
    Object(Object),
}

// Canonical encoding tags. Stable: they are part of the storage format (docs/STORAGE.md).
const T_NULL: u8 = 0x00;
const T_FALSE: u8 = 0x01;
const T_TRUE: u8 = 0x02;
const T_INT: u8 = 0x03;
const T_FLOAT: u8 = 0x04;
const T_STRING: u8 = 0x05;
const T_BYTES: u8 = 0x06;
const T_ARRAY: u8 = 0x07;
const T_OBJECT: u8 = 0x08;

impl Value {
    /// The name of the value's type, as the language's `typeOf` returns it.
    pub fn type_name(&self) -> &'static str {
        match self {
            Value::Null => "null",
            Value::Bool(_) => "boolean",
            Value::Int(_) => "int",
            Value::Float(_) => "float",
            Value::String(_) => "string",
            Value::Bytes(_) => "bytes",
            Value::Array(_) => "array",
            Value::Object(_) => "object",
        }
    }

    pub fn is_null(&self) -> bool {
        matches!(self, Value::Null)
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::String(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_object(&self) -> Option<&Object> {
        match self {
            Value::Object(o) => Some(o),
            _ => None,
        }
    }

    /// Field of an object, or `Null` for anything else (the language's `a.b`).
    pub fn get(&self, key: &str) -> &Value {
        static NULL: Value = Value::Null;
        match self {
            Value::Object(o) => o.get(key).unwrap_or(&NULL),
            _ => &NULL,
        }
    }

    /// Makes a float value, refusing NaN and infinities.
    pub fn float(f: f64) -> Result<Value, Error> {
        if f.is_finite() {
            // -0.0 and 0.0 are one value: normalise so that encodings agree.
            Ok(Value::Float(if f == 0.0 { 0.0 } else { f }))
        } else {
            Err(Error::new(
                ErrorCode::Arithmetic,
                "arithmetic produced a value that is not a finite number",
            ))
        }
    }

    /// Truthiness: only `false` and `null` are falsy.
    pub fn truthy(&self) -> bool {
        !matches!(self, Value::Null | Value::Bool(false))
    }

    fn rank(&self) -> u8 {
        match self {
            Value::Null => 0,
            Value::Bool(_) => 1,
            Value::Int(_) | Value::Float(_) => 2,
            Value::String(_) => 3,
            Value::Bytes(_) => 4,
            Value::Array(_) => 5,
            Value::Object(_) => 6,
        }
    }

    /// The engine's total order over all values, used by `order`, by `<` and by index
    /// keys. Types order as null < boolean < number < string < bytes < array < object.
    /// Numbers compare by exact value, ints and floats alike: `2` and `2.0` are equal
    /// here (and in index keys), though they stay different values.
    pub fn total_cmp(&self, other: &Value) -> Ordering {
        match (self, other) {
            (Value::Null, Value::Null) => Ordering::Equal,
            (Value::Bool(a), Value::Bool(b)) => a.cmp(b),
            (a @ (Value::Int(_) | Value::Float(_)), b @ (Value::Int(_) | Value::Float(_))) => {
                cmp_numbers(a, b)
            }
            (Value::String(a), Value::String(b)) => a.as_bytes().cmp(b.as_bytes()),
            (Value::Bytes(a), Value::Bytes(b)) => a.cmp(b),
            (Value::Array(a), Value::Array(b)) => {
                for (x, y) in a.iter().zip(b) {
                    let o = x.total_cmp(y);
                    if o != Ordering::Equal {
                        return o;
                    }
                }
                a.len().cmp(&b.len())
            }
            (Value::Object(a), Value::Object(b)) => {
                for ((ka, va), (kb, vb)) in a.iter().zip(b) {
                    let o = ka
                        .as_bytes()
                        .cmp(kb.as_bytes())
                        .then_with(|| va.total_cmp(vb));
                    if o != Ordering::Equal {
                        return o;
                    }
                }
                a.len().cmp(&b.len())
            }
            (a, b) => a.rank().cmp(&b.rank()),
        }
    }

    /// Equality as the language's `==` sees it: numbers by value (`1 == 1.0`), the rest
    /// structurally.
    pub fn loose_eq(&self, other: &Value) -> bool {
        match (self, other) {
            (Value::Int(a), Value::Float(b)) | (Value::Float(b), Value::Int(a)) => {
                exact_int(*b) == Some(*a)
            }
            (Value::Array(a), Value::Array(b)) => {
                a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x.loose_eq(y))
            }
            (Value::Object(a), Value::Object(b)) => {
                a.len() == b.len()
                    && a.iter()
                        .zip(b)
                        .all(|((ka, va), (kb, vb))| ka == kb && va.loose_eq(vb))
            }
            _ => self.total_cmp(other) == Ordering::Equal,
        }
    }

    /// The bytes the value is charged for when a program holds it ([`MEM_SLOT`]): at
    /// least what a 64-bit build allocates for it, apart from spare capacity.
    pub fn mem_cost(&self) -> u64 {
        MEM_SLOT + self.heap_cost()
    }

    /// [`Value::mem_cost`] without the value's own slot (paid by its container).
    pub fn heap_cost(&self) -> u64 {
        match self {
            Value::Null | Value::Bool(_) | Value::Int(_) | Value::Float(_) => 0,
            Value::String(s) => s.len() as u64,
            Value::Bytes(b) => b.len() as u64,
            Value::Array(a) => a.iter().map(Value::mem_cost).sum(),
            // An empty map allocates nothing.
            Value::Object(o) if o.is_empty() => 0,
            Value::Object(o) => {
                MEM_OBJECT
                    + o.iter()
                        .map(|(k, v)| MEM_ENTRY + k.len() as u64 + v.heap_cost())
                        .sum::<u64>()
            }
        }
    }

    /// The canonical encoding: the bytes that are stored and hashed.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(32);
        self.encode_into(&mut out);
        out
    }

    /// Appends the canonical encoding to `out`.
    pub fn encode_into(&self, out: &mut Vec<u8>) {
        match self {
            Value::Null => out.push(T_NULL),
            Value::Bool(false) => out.push(T_FALSE),
            Value::Bool(true) => out.push(T_TRUE),
            Value::Int(i) => {
                out.push(T_INT);
                write_varint(out, zigzag(*i));
            }
            Value::Float(f) => {
                out.push(T_FLOAT);
                out.extend_from_slice(&f.to_bits().to_le_bytes());
            }
            Value::String(s) => {
                out.push(T_STRING);
                write_varint(out, s.len() as u64);
                out.extend_from_slice(s.as_bytes());
            }
            Value::Bytes(b) => {
                out.push(T_BYTES);
                write_varint(out, b.len() as u64);
                out.extend_from_slice(b);
            }
            Value::Array(a) => {
                out.push(T_ARRAY);
                write_varint(out, a.len() as u64);
                for v in a {
                    v.encode_into(out);
                }
            }
            Value::Object(o) => {
                out.push(T_OBJECT);
                write_varint(out, o.len() as u64);
                for (k, v) in o {
                    write_varint(out, k.len() as u64);
                    out.extend_from_slice(k.as_bytes());
                    v.encode_into(out);
                }
            }
        }
    }

    /// The length of the canonical encoding, without allocating it.
    pub fn encoded_len(&self) -> usize {
        match self {
            Value::Null | Value::Bool(_) => 1,
            Value::Int(i) => 1 + varint_len(zigzag(*i)),
            Value::Float(_) => 9,
            Value::String(s) => 1 + varint_len(s.len() as u64) + s.len(),
            Value::Bytes(b) => 1 + varint_len(b.len() as u64) + b.len(),
            Value::Array(a) => {
                1 + varint_len(a.len() as u64) + a.iter().map(Value::encoded_len).sum::<usize>()
            }
            Value::Object(o) => {
                1 + varint_len(o.len() as u64)
                    + o.iter()
                        .map(|(k, v)| varint_len(k.len() as u64) + k.len() + v.encoded_len())
                        .sum::<usize>()
            }
        }
    }

    /// Decodes one canonical encoding that must fill `bytes` exactly.
    pub fn decode(bytes: &[u8]) -> Result<Value, Error> {
        let mut r = Reader::new(bytes);
        let v = r.value(0)?;
        if r.pos != bytes.len() {
            return Err(corrupt("trailing bytes after value"));
        }
        Ok(v)
    }

    /// Decodes one canonical encoding from the front of `bytes`; returns it and the
    /// number of bytes it took.
    pub fn decode_prefix(bytes: &[u8]) -> Result<(Value, usize), Error> {
        let mut r = Reader::new(bytes);
        let v = r.value(0)?;
        Ok((v, r.pos))
    }

    /// Whether the value nests deeper than `limit` (0 for a scalar, 1 for a flat array
    /// or object). Recurses at most `limit + 1` levels, so it is safe to call on any
    /// value, however deep.
    pub fn nests_deeper_than(&self, limit: usize) -> bool {
        match self {
            Value::Array(a) => limit == 0 || a.iter().any(|c| c.nests_deeper_than(limit - 1)),
            Value::Object(o) => limit == 0 || o.values().any(|c| c.nests_deeper_than(limit - 1)),
            _ => false,
        }
    }

    /// [`Value::encoded_len`], or `None` when the value nests deeper than `limit`
    /// levels (as [`Value::nests_deeper_than`] says): one walk for both, which every
    /// value a query builds takes.
    pub fn encoded_len_within(&self, limit: usize) -> Option<usize> {
        Some(match self {
            Value::Array(a) => {
                let inner = limit.checked_sub(1)?;
                let mut n = 1 + varint_len(a.len() as u64);
                for c in a {
                    n += c.encoded_len_within(inner)?;
                }
                n
            }
            Value::Object(o) => {
                let inner = limit.checked_sub(1)?;
                let mut n = 1 + varint_len(o.len() as u64);
                for (k, v) in o {
                    n += varint_len(k.len() as u64) + k.len() + v.encoded_len_within(inner)?;
                }
                n
            }
            scalar => scalar.encoded_len(),
        })
    }

    /// JSON at the boundary. Bytes become `{"$bytes": "<base64>"}`; ints stay integers
    /// and floats keep a fractional part or exponent (`1.0`), so a round trip keeps types.
    pub fn to_json(&self) -> serde_json::Value {
        use serde_json::Value as J;
        match self {
            Value::Null => J::Null,
            Value::Bool(b) => J::Bool(*b),
            Value::Int(i) => J::from(*i),
            Value::Float(f) => serde_json::Number::from_f64(*f).map_or(J::Null, J::Number),
            Value::String(s) => J::String(s.clone()),
            Value::Bytes(b) => {
                let mut m = serde_json::Map::new();
                m.insert(
                    "$bytes".into(),
                    J::String(base64::engine::general_purpose::STANDARD.encode(b)),
                );
                J::Object(m)
            }
            Value::Array(a) => J::Array(a.iter().map(Value::to_json).collect()),
            Value::Object(o) => J::Object(
                o.iter()
                    .map(|(k, v)| (k.to_string(), v.to_json()))
                    .collect(),
            ),
        }
    }

    /// Converts JSON into a value. Integers that fit an i64 become ints, other numbers
    /// floats; `{"$bytes": "<base64>"}` becomes bytes. Nesting deeper than
    /// [`MAX_VALUE_DEPTH`] is refused.
    pub fn from_json(j: &serde_json::Value) -> Result<Value, Error> {
        Self::from_json_at(j, 0)
    }

    fn from_json_at(j: &serde_json::Value, depth: usize) -> Result<Value, Error> {
        use serde_json::Value as J;
        Ok(match j {
            J::Null => Value::Null,
            J::Bool(b) => Value::Bool(*b),
            J::Number(n) => match n.as_i64() {
                Some(i) => Value::Int(i),
                None => Value::float(n.as_f64().unwrap_or(f64::NAN))?,
            },
            J::String(s) => Value::String(s.clone()),
            J::Array(a) => {
                check_depth(depth)?;
                Value::Array(
                    a.iter()
                        .map(|x| Self::from_json_at(x, depth + 1))
                        .collect::<Result<_, _>>()?,
                )
            }
            J::Object(o) => {
                check_depth(depth)?;
                if o.len() == 1 {
                    if let Some(J::String(b64)) = o.get("$bytes") {
                        let bytes = base64::engine::general_purpose::STANDARD
                            .decode(b64)
                            .map_err(|e| {
                                Error::new(ErrorCode::InvalidArgument, format!("bad $bytes: {e}"))
                            })?;
                        return Ok(Value::Bytes(bytes));
                    }
                }
                Value::Object(
                    o.iter()
                        .map(|(k, v)| {
                            Ok((Key::from(k.as_str()), Self::from_json_at(v, depth + 1)?))
                        })
                        .collect::<Result<_, Error>>()?,
                )
            }
        })
    }

    /// Parses JSON text into a value.
    pub fn parse_json(text: &str) -> Result<Value, Error> {
        let j: serde_json::Value = serde_json::from_str(text)
            .map_err(|e| Error::new(ErrorCode::InvalidArgument, format!("invalid JSON: {e}")))?;
        Value::from_json(&j)
    }
}

fn check_depth(depth: usize) -> Result<(), Error> {
    if depth >= MAX_VALUE_DEPTH {
        Err(Error::new(
            ErrorCode::DepthExceeded,
            format!("value nests deeper than {MAX_VALUE_DEPTH} levels"),
        ))
    } else {
        Ok(())
    }
}

fn cmp_numbers(a: &Value, b: &Value) -> Ordering {
    match (a, b) {
        (Value::Int(x), Value::Int(y)) => x.cmp(y),
        (Value::Float(x), Value::Float(y)) => x.total_cmp(y),
        (Value::Int(x), Value::Float(y)) => cmp_int_float(*x, *y),
        (Value::Float(x), Value::Int(y)) => cmp_int_float(*y, *x).reverse(),
        _ => unreachable!("cmp_numbers is only called with numbers"),
    }
}

/// Compares an int with a float by exact value (`2` and `2.0` are equal).
fn cmp_int_float(x: i64, y: f64) -> Ordering {
    match (x as f64).total_cmp(&y) {
        Ordering::Equal => {
            // y is integral, since it equals a rounded integer. 2^63 is beyond every i64.
            if y >= 9_223_372_036_854_775_808.0 {
                Ordering::Less
            } else {
                x.cmp(&(y as i64))
            }
        }
        o => o,
    }
}

/// The int a float is exactly equal to, if any (so `2.0` indexes as `2`).
pub(crate) fn exact_int(f: f64) -> Option<i64> {
    if f.fract() == 0.0 && (-9_223_372_036_854_775_808.0..9_223_372_036_854_775_808.0).contains(&f)
    {
        Some(f as i64)
    } else {
        None
    }
}

impl PartialEq for Value {
    /// Structural equality, consistent with the canonical encoding (`1 != 1.0`).
    fn eq(&self, other: &Value) -> bool {
        match (self, other) {
            (Value::Int(a), Value::Int(b)) => a == b,
            (Value::Float(a), Value::Float(b)) => a.to_bits() == b.to_bits(),
            (Value::Int(_), Value::Float(_)) | (Value::Float(_), Value::Int(_)) => false,
            _ => self.total_cmp(other) == Ordering::Equal,
        }
    }
}

impl Eq for Value {}

impl fmt::Display for Value {
    /// JSON text: how values appear in messages and in `toString` ([`crate::text`]).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        crate::text::write_json_to(f, self)
    }
}

impl From<&str> for Value {
    fn from(s: &str) -> Value {
        Value::String(s.to_owned())
    }
}
impl From<String> for Value {
    fn from(s: String) -> Value {
        Value::String(s)
    }
}
impl From<i64> for Value {
    fn from(i: i64) -> Value {
        Value::Int(i)
    }
}
impl From<bool> for Value {
    fn from(b: bool) -> Value {
        Value::Bool(b)
    }
}
impl From<Vec<Value>> for Value {
    fn from(a: Vec<Value>) -> Value {
        Value::Array(a)
    }
}
impl From<Object> for Value {
    fn from(o: Object) -> Value {
        Value::Object(o)
    }
}

/// Builds an object value from pairs: `obj([("a", 1.into())])`.
pub fn obj<const N: usize>(pairs: [(&str, Value); N]) -> Value {
    Value::Object(pairs.into_iter().map(|(k, v)| (k.to_owned(), v)).collect())
}

fn zigzag(i: i64) -> u64 {
    ((i << 1) ^ (i >> 63)) as u64
}

fn unzigzag(u: u64) -> i64 {
    ((u >> 1) as i64) ^ -((u & 1) as i64)
}

/// LEB128 unsigned varint.
pub fn write_varint(out: &mut Vec<u8>, mut v: u64) {
    loop {
        let byte = (v & 0x7f) as u8;
        v >>= 7;
        if v == 0 {
            out.push(byte);
            return;
        }
        out.push(byte | 0x80);
    }
}

pub(crate) fn varint_len(mut v: u64) -> usize {
    let mut n = 1;
    while v >= 0x80 {
        v >>= 7;
        n += 1;
    }
    n
}

fn corrupt(msg: &str) -> Error {
    Error::new(ErrorCode::Corrupt, format!("invalid value encoding: {msg}"))
}

/// A cursor over canonical bytes. Every read is bounds-checked; a length prefix is
/// never trusted for an allocation larger than the bytes that remain.
///
/// Values are decoded within a memory budget ([`Reader::with_budget`]; unlimited by
/// default): the [`Value::mem_cost`] of what is decoded is counted before each
/// allocation, and decoding stops with `MEMORY_EXHAUSTED` past the budget. A few bytes
/// can stand for a large value (a one-entry object is 5 bytes and 640 of the model), so
/// the length of the input alone does not bound the memory its decoding takes.
pub struct Reader<'a> {
    pub buf: &'a [u8],
    pub pos: usize,
    budget: u64,
    spent: u64,
}

impl<'a> Reader<'a> {
    pub fn new(buf: &'a [u8]) -> Self {
        Reader {
            buf,
            pos: 0,
            budget: u64::MAX,
            spent: 0,
        }
    }

    /// A reader whose decoded values may cost at most `budget` bytes in all.
    pub fn with_budget(buf: &'a [u8], budget: u64) -> Self {
        Reader {
            budget,
            ..Reader::new(buf)
        }
    }

    /// The memory cost of the values decoded so far.
    pub fn spent(&self) -> u64 {
        self.spent
    }

    fn spend(&mut self, n: u64) -> Result<(), Error> {
        self.spent = self.spent.saturating_add(n);
        if self.spent > self.budget {
            return Err(Error::new(
                ErrorCode::MemoryExhausted,
                format!(
                    "decoding would take more than the {} bytes of memory left",
                    self.budget
                ),
            ));
        }
        Ok(())
    }

    /// One value, its own slot included in what is spent.
    pub fn value_paid(&mut self) -> Result<Value, Error> {
        self.spend(MEM_SLOT)?;
        self.value(0)
    }

    pub fn byte(&mut self) -> Result<u8, Error> {
        let b = *self
            .buf
            .get(self.pos)
            .ok_or_else(|| corrupt("unexpected end"))?;
        self.pos += 1;
        Ok(b)
    }

    pub fn take(&mut self, n: usize) -> Result<&'a [u8], Error> {
        if self.buf.len() - self.pos < n {
            return Err(corrupt("length runs past the end"));
        }
        let s = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    /// A LEB128 varint in its one canonical form: no redundant trailing zero groups,
    /// and no bits beyond 64.
    pub fn varint(&mut self) -> Result<u64, Error> {
        let mut v: u64 = 0;
        for shift in (0..64).step_by(7) {
            let b = self.byte()?;
            let bits = u64::from(b & 0x7f);
            if shift == 63 && bits > 1 {
                return Err(corrupt("varint overflows 64 bits"));
            }
            v |= bits << shift;
            if b & 0x80 == 0 {
                if b == 0 && shift > 0 {
                    return Err(corrupt("varint is not in its shortest form"));
                }
                return Ok(v);
            }
        }
        Err(corrupt("varint too long"))
    }

    #[allow(clippy::len_without_is_empty)] // reads a length; not a container's
    pub fn len(&mut self) -> Result<usize, Error> {
        let n = self.varint()?;
        if n > (self.buf.len() - self.pos) as u64 {
            return Err(corrupt("length runs past the end"));
        }
        Ok(n as usize)
    }

    pub fn string(&mut self) -> Result<String, Error> {
        let n = self.len()?;
        let b = self.take(n)?;
        String::from_utf8(b.to_vec()).map_err(|_| corrupt("string is not UTF-8"))
    }

    /// A length-prefixed string's bytes inside a value, spent before they are copied.
    fn bytes_paid(&mut self) -> Result<&'a [u8], Error> {
        let n = self.len()?;
        self.spend(n as u64)?;
        self.take(n)
    }

    fn string_paid(&mut self) -> Result<String, Error> {
        String::from_utf8(self.bytes_paid()?.to_vec()).map_err(|_| corrupt("string is not UTF-8"))
    }

    /// An object's key: paid for as a string is, and shared with the same key decoded
    /// before (most documents repeat their collection's field names).
    fn key_paid(&mut self) -> Result<Key, Error> {
        Key::decoded(self.bytes_paid()?).ok_or_else(|| corrupt("string is not UTF-8"))
    }

    pub fn value(&mut self, depth: usize) -> Result<Value, Error> {
        Ok(match self.byte()? {
            T_NULL => Value::Null,
            T_FALSE => Value::Bool(false),
            T_TRUE => Value::Bool(true),
            T_INT => Value::Int(unzigzag(self.varint()?)),
            T_FLOAT => {
                let b = self.take(8)?;
                let f = f64::from_bits(u64::from_le_bytes(b.try_into().expect("8 bytes")));
                if !f.is_finite() {
                    return Err(corrupt("float is not finite"));
                }
                // The engine has one zero: -0.0 has no canonical encoding.
                if f == 0.0 && f.is_sign_negative() {
                    return Err(corrupt("negative zero"));
                }
                Value::Float(f)
            }
            T_STRING => Value::String(self.string_paid()?),
            T_BYTES => {
                let n = self.len()?;
                self.spend(n as u64)?;
                Value::Bytes(self.take(n)?.to_vec())
            }
            T_ARRAY => {
                if depth >= MAX_VALUE_DEPTH {
                    return Err(corrupt("nesting too deep"));
                }
                let n = self.len()?;
                self.spend(n as u64 * MEM_SLOT)?;
                let mut a = Vec::with_capacity(n);
                for _ in 0..n {
                    a.push(self.value(depth + 1)?);
                }
                Value::Array(a)
            }
            T_OBJECT => {
                if depth >= MAX_VALUE_DEPTH {
                    return Err(corrupt("nesting too deep"));
                }
                let n = self.len()?;
                if n > 0 {
                    self.spend(MEM_OBJECT)?;
                }
                // The entries in order, which are the object as they are (keys
                // ascending: no search per key). Grown as entries are paid for, never
                // sized by the length the bytes claim.
                let mut entries: Vec<(Key, Value)> = Vec::with_capacity(n.min(16));
                for _ in 0..n {
                    self.spend(MEM_ENTRY)?;
                    let k = self.key_paid()?;
                    // Canonical means one encoding per value: keys strictly ascending.
                    if entries
                        .last()
                        .is_some_and(|(l, _)| l.as_bytes() >= k.as_bytes())
                    {
                        return Err(corrupt("object keys out of order"));
                    }
                    let v = self.value(depth + 1)?;
                    entries.push((k, v));
                }
                Value::Object(Object::from_sorted(entries))
            }
            t => return Err(corrupt(&format!("unknown tag {t:#04x}"))),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Vec<Value> {
        vec![
            Value::Null,
            Value::Bool(false),
            Value::Bool(true),
            Value::Int(-5),
            Value::Float(-1.5),
            Value::Int(0),
            Value::Float(0.5),
            Value::Float(1.0),
            Value::Int(1),
            Value::Int(i64::MAX),
            Value::from(""),
            Value::from("a"),
            Value::from("ab"),
            Value::Bytes(vec![0, 1]),
            Value::Array(vec![]),
            Value::Array(vec![Value::Int(1)]),
            obj([("a", Value::Int(1))]),
        ]
    }

    #[test]
    fn canonical_round_trip() {
        for v in sample() {
            let e = v.encode();
            assert_eq!(e.len(), v.encoded_len(), "{v}");
            assert_eq!(Value::decode(&e).unwrap(), v);
        }
    }

    #[test]
    fn length_within_a_depth_is_the_length_or_none_as_nesting_says() {
        let mut values = sample();
        // Nested three and four deep, mixed, with empty containers at the bottom.
        let inner = obj([("a", Value::Array(vec![Value::Int(7), Value::Array(vec![])]))]);
        values.push(Value::Array(vec![inner.clone(), Value::from("x")]));
        values.push(obj([("k", Value::Array(vec![inner])), ("z", Value::Null)]));
        for v in values {
            for limit in 0..6 {
                let want = (!v.nests_deeper_than(limit)).then(|| v.encoded_len());
                assert_eq!(v.encoded_len_within(limit), want, "{v} within {limit}");
            }
        }
    }

    #[test]
    fn decode_refuses_garbage() {
        for bad in [
            &[0x09][..],
            &[T_STRING, 5, b'a'],
            &[T_ARRAY, 0xff, 0xff, 0xff, 0xff, 0x0f],
            &[T_NULL, T_NULL],
        ] {
            assert_eq!(Value::decode(bad).unwrap_err().code, ErrorCode::Corrupt);
        }
        let mut deep = [T_ARRAY, 1].repeat(1000);
        deep.push(T_NULL);
        assert_eq!(Value::decode(&deep).unwrap_err().code, ErrorCode::Corrupt);
    }

    #[test]
    fn varints_are_canonical() {
        for v in [0u64, 1, 127, 128, 300, u64::MAX] {
            let mut b = Vec::new();
            write_varint(&mut b, v);
            assert_eq!(Reader::new(&b).varint().unwrap(), v);
        }
        // 0 written in two bytes, and a tenth byte with bits past 64.
        assert!(Reader::new(&[0x80, 0x00]).varint().is_err());
        let mut too_big = vec![0xFF; 9];
        too_big.push(0x02);
        assert!(Reader::new(&too_big).varint().is_err());
        assert_eq!(
            Value::decode(&[T_INT, 0x80, 0x00]).unwrap_err().code,
            ErrorCode::Corrupt
        );
    }

    #[test]
    fn json_round_trip_keeps_types() {
        let v = Value::parse_json(r#"{"i":1,"f":1.0,"b":{"$bytes":"AAE="},"a":[null,true,"x"]}"#)
            .unwrap();
        assert_eq!(v.get("i"), &Value::Int(1));
        assert_eq!(v.get("f"), &Value::Float(1.0));
        assert_eq!(v.get("b"), &Value::Bytes(vec![0, 1]));
        assert_eq!(Value::from_json(&v.to_json()).unwrap(), v);
    }

    #[test]
    fn total_order_is_by_type_then_value() {
        let s = sample();
        for w in s.windows(2) {
            assert_ne!(
                w[0].total_cmp(&w[1]),
                Ordering::Greater,
                "{} vs {}",
                w[0],
                w[1]
            );
        }
        assert!(Value::Int(1).loose_eq(&Value::Float(1.0)));
        assert_ne!(Value::Int(1), Value::Float(1.0));
    }

    #[test]
    fn deep_json_is_refused() {
        let nest = |n: usize| "[".repeat(n) + &"]".repeat(n);
        assert!(Value::parse_json(&nest(MAX_VALUE_DEPTH)).is_ok());
        let e = Value::parse_json(&nest(MAX_VALUE_DEPTH + 1)).unwrap_err();
        assert_eq!(e.code, ErrorCode::DepthExceeded);
        // Deeper than serde_json's own limit: still a clean error.
        assert!(Value::parse_json(&nest(10_000)).is_err());
    }
}
