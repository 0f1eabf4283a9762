//! The key layout and the order-preserving encoding of values.
//!
//! Every key the engine stores starts with a one-byte *space*, followed by components.
//! A component is encoded so that comparing encoded keys byte by byte gives the same
//! order as comparing the components one by one, and so that no component's encoding is
//! a prefix of another's (an equality-prefix scan must never match a longer value):
//! strings are escaped (`00` becomes `00 FF`) and end with `00 01`; values (index fields) use [`encode_value`], whose byte
//! order equals [`Value::total_cmp`]. The full layout is in `docs/STORAGE.md`.

use crate::error::{Error, ErrorCode};
use crate::value::Value;

/// Document: `D coll id` → [`crate::doc::StoredDoc`] bytes.
pub const SPACE_DOC: u8 = b'D';
/// Index entry: `I coll index value.. id` → the document's partition (UTF-8), so a
/// scan can check the read rule without the document.
pub const SPACE_INDEX: u8 = b'I';
/// Partition membership: `P partition coll id` → empty.
pub const SPACE_PARTITION: u8 = b'P';
/// A client's highest applied sequence number: `C client` → u64 big-endian.
pub const SPACE_CLIENT: u8 = b'C';
/// Replica metadata: `M name` → bytes (see [`META_DIGEST`], [`META_POSITION`]).
pub const SPACE_META: u8 = b'M';
/// The last position that wrote a collection's documents in a partition:
/// `V partition coll` → u64 big-endian. Lists every (partition, collection) pair.
pub const SPACE_VERSION: u8 = b'V';
/// A kept outcome: `R client seq(u64 BE)` → outcome record (server only).
pub const SPACE_OUTCOME: u8 = b'R';

/// The state digest (32 bytes) after the last applied log position.
pub const META_DIGEST: &[u8] = b"Mdigest";
/// The last applied log position (u64 big-endian).
pub const META_POSITION: &[u8] = b"Mposition";
/// The source of the schema in force (UTF-8), set by schema entries (`entry`).
pub const META_SCHEMA: &[u8] = b"Mschema";
/// `now()` of the last applied commit, milliseconds (i64 as u64, big-endian): a
/// commit's time is never earlier (`entry`).
pub const META_NOW: &[u8] = b"Mnow";

/// Appends an escaped, terminated string component.
pub fn push_str(out: &mut Vec<u8>, s: &str) {
    push_escaped(out, s.as_bytes());
}

fn push_escaped(out: &mut Vec<u8>, b: &[u8]) {
    out.reserve(b.len() + 2);
    // Runs without a zero byte are copied whole; each zero is followed by FF.
    let mut rest = b;
    while let Some(i) = rest.iter().position(|&c| c == 0) {
        out.extend_from_slice(&rest[..=i]);
        out.push(0xFF);
        rest = &rest[i + 1..];
    }
    out.extend_from_slice(rest);
    out.extend_from_slice(&[0, 1]);
}

/// Reads an escaped, terminated string component at `*pos`.
pub fn read_str(key: &[u8], pos: &mut usize) -> Result<String, Error> {
    let bytes = read_escaped(key, pos)?;
    String::from_utf8(bytes).map_err(|_| bad_key())
}

fn read_escaped(key: &[u8], pos: &mut usize) -> Result<Vec<u8>, Error> {
    let mut out = Vec::new();
    loop {
        let c = *key.get(*pos).ok_or_else(bad_key)?;
        *pos += 1;
        if c == 0 {
            let next = *key.get(*pos).ok_or_else(bad_key)?;
            *pos += 1;
            match next {
                0xFF => out.push(0),
                0x01 => return Ok(out),
                _ => return Err(bad_key()),
            }
        } else {
            out.push(c);
        }
    }
}

fn bad_key() -> Error {
    Error::new(ErrorCode::Corrupt, "malformed storage key")
}

// Value component tags, in the order of `Value::total_cmp`'s type ranks.
const K_NULL: u8 = 0x10;
const K_FALSE: u8 = 0x20;
const K_TRUE: u8 = 0x21;
const K_NUM: u8 = 0x30;
const K_STRING: u8 = 0x40;
const K_BYTES: u8 = 0x50;
const K_ARRAY: u8 = 0x60;
const K_OBJECT: u8 = 0x70;

/// Appends the order-preserving encoding of `v`: for any two values,
/// `encode(a).cmp(encode(b)) == a.total_cmp(b)`.
pub fn encode_value(out: &mut Vec<u8>, v: &Value) {
    match v {
        Value::Null => out.push(K_NULL),
        Value::Bool(false) => out.push(K_FALSE),
        Value::Bool(true) => out.push(K_TRUE),
        Value::Int(i) => {
            out.push(K_NUM);
            out.extend_from_slice(&ordered_f64(*i as f64));
            // After the approximate value, ints order exactly; a (non-integral) float
            // never shares its approximation with an int, so the order is by value.
            out.push(1);
            out.extend_from_slice(&((*i as u64) ^ (1 << 63)).to_be_bytes());
        }
        Value::Float(f) => match crate::value::exact_int(*f) {
            // An integral float is keyed as the int it equals: `byPrice(2)` finds 2.0.
            Some(i) => encode_value(out, &Value::Int(i)),
            None => {
                out.push(K_NUM);
                out.extend_from_slice(&ordered_f64(*f));
                out.push(0);
            }
        },
        Value::String(s) => {
            out.push(K_STRING);
            push_escaped(out, s.as_bytes());
        }
        Value::Bytes(b) => {
            out.push(K_BYTES);
            push_escaped(out, b);
        }
        Value::Array(a) => {
            out.push(K_ARRAY);
            for x in a {
                encode_value(out, x);
            }
            out.push(0);
        }
        Value::Object(o) => {
            out.push(K_OBJECT);
            for (k, x) in o {
                out.push(1);
                push_escaped(out, k.as_bytes());
                encode_value(out, x);
            }
            out.push(0);
        }
    }
}

fn ordered_f64(f: f64) -> [u8; 8] {
    let bits = f.to_bits();
    let bits = if bits >> 63 == 0 {
        bits ^ (1 << 63)
    } else {
        !bits
    };
    bits.to_be_bytes()
}

/// Key of a document.
pub fn doc_key(collection: &str, id: &str) -> Vec<u8> {
    // The space byte and two terminators: no reallocation unless a string holds a zero.
    let mut k = Vec::with_capacity(collection.len() + id.len() + 5);
    k.push(SPACE_DOC);
    push_str(&mut k, collection);
    push_str(&mut k, id);
    k
}

/// Prefix of all documents of a collection, in id order.
pub fn collection_prefix(collection: &str) -> Vec<u8> {
    let mut k = vec![SPACE_DOC];
    push_str(&mut k, collection);
    k
}

/// Prefix of the entries of every index of a collection.
pub fn collection_index_prefix(collection: &str) -> Vec<u8> {
    let mut k = vec![SPACE_INDEX];
    push_str(&mut k, collection);
    k
}

/// Prefix of an index's entries, optionally with leading field values.
pub fn index_prefix(collection: &str, index: &str, values: &[Value]) -> Vec<u8> {
    let mut k = vec![SPACE_INDEX];
    push_str(&mut k, collection);
    push_str(&mut k, index);
    for v in values {
        encode_value(&mut k, v);
    }
    k
}

/// Key of one index entry.
pub fn index_key(collection: &str, index: &str, values: &[Value], id: &str) -> Vec<u8> {
    let mut k = index_prefix(collection, index, values);
    push_str(&mut k, id);
    k
}

/// Reads the document id off the end of an index key. The id is the last component,
/// so it is found by walking the key from its prefix: `prefix_len` is the length of
/// `index_prefix(collection, index, [])`.
pub fn index_key_id(key: &[u8], prefix_len: usize, fields: usize) -> Result<String, Error> {
    let mut pos = prefix_len;
    for _ in 0..fields {
        skip_value(key, &mut pos)?;
    }
    read_str(key, &mut pos)
}

fn skip_value(key: &[u8], pos: &mut usize) -> Result<(), Error> {
    let tag = *key.get(*pos).ok_or_else(bad_key)?;
    *pos += 1;
    match tag {
        K_NULL | K_FALSE | K_TRUE => {}
        K_NUM => {
            *pos += 8;
            let sub = *key.get(*pos).ok_or_else(bad_key)?;
            *pos += 1 + if sub == 1 { 8 } else { 0 };
        }
        K_STRING | K_BYTES => {
            read_escaped(key, pos)?;
        }
        K_ARRAY => loop {
            if *key.get(*pos).ok_or_else(bad_key)? == 0 {
                *pos += 1;
                break;
            }
            skip_value(key, pos)?;
        },
        K_OBJECT => loop {
            let m = *key.get(*pos).ok_or_else(bad_key)?;
            *pos += 1;
            if m == 0 {
                break;
            }
            read_escaped(key, pos)?;
            skip_value(key, pos)?;
        },
        _ => return Err(bad_key()),
    }
    if *pos > key.len() {
        return Err(bad_key());
    }
    Ok(())
}

/// Key of a partition membership entry.
pub fn partition_key(partition: &str, collection: &str, id: &str) -> Vec<u8> {
    let mut k = partition_prefix(partition);
    push_str(&mut k, collection);
    push_str(&mut k, id);
    k
}

/// Prefix of all membership entries of a partition.
pub fn partition_prefix(partition: &str) -> Vec<u8> {
    let mut k = vec![SPACE_PARTITION];
    push_str(&mut k, partition);
    k
}

/// Reads (collection, id) from a partition membership key.
pub fn parse_partition_key(key: &[u8]) -> Result<(String, String, String), Error> {
    if key.first() != Some(&SPACE_PARTITION) {
        return Err(bad_key());
    }
    let mut pos = 1;
    let p = read_str(key, &mut pos)?;
    let c = read_str(key, &mut pos)?;
    let i = read_str(key, &mut pos)?;
    Ok((p, c, i))
}

/// Key of a (partition, collection) pair's last write position.
pub fn version_key(partition: &str, collection: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(partition.len() + collection.len() + 5);
    k.push(SPACE_VERSION);
    push_str(&mut k, partition);
    push_str(&mut k, collection);
    k
}

/// The start every version key of a partition that starts with `prefix` shares (the
/// escaping maps each byte on its own, and a whole string is followed by its terminator).
pub fn version_partition_prefix(prefix: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(prefix.len() + 3);
    k.push(SPACE_VERSION);
    push_str(&mut k, prefix);
    k.truncate(k.len() - 2);
    k
}

/// Reads (partition, collection) from a version key.
pub fn parse_version_key(key: &[u8]) -> Result<(String, String), Error> {
    if key.first() != Some(&SPACE_VERSION) {
        return Err(bad_key());
    }
    let mut pos = 1;
    let p = read_str(key, &mut pos)?;
    let c = read_str(key, &mut pos)?;
    Ok((p, c))
}

/// Key of a kept outcome.
pub fn outcome_key(client_id: &str, seq: u64) -> Vec<u8> {
    let mut k = Vec::with_capacity(client_id.len() + 11);
    k.push(SPACE_OUTCOME);
    push_str(&mut k, client_id);
    k.extend_from_slice(&seq.to_be_bytes());
    k
}

/// Key of a client's applied sequence number.
pub fn client_key(client_id: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(client_id.len() + 3);
    k.push(SPACE_CLIENT);
    push_str(&mut k, client_id);
    k
}

/// The smallest key greater than every key that starts with `prefix`, or `None` when
/// no such key exists (the prefix is all `FF`).
pub fn prefix_end(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xFF {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::value::obj;

    #[test]
    fn value_encoding_preserves_order() {
        let vals = vec![
            Value::Null,
            Value::Bool(false),
            Value::Bool(true),
            Value::Int(i64::MIN),
            Value::Float(-1e300),
            Value::Int(-2),
            Value::Float(-1.5),
            Value::Int(0),
            Value::Float(0.25),
            Value::Int(1),
            Value::Float(1.5),
            Value::Int(9_007_199_254_740_992),
            Value::Int(9_007_199_254_740_993),
            Value::Int(i64::MAX),
            Value::from(""),
            Value::from("a"),
            Value::from("a\0"),
            Value::from("a\0b"),
            Value::from("ab"),
            Value::from("b"),
            Value::Bytes(vec![]),
            Value::Bytes(vec![0]),
            Value::Array(vec![]),
            Value::Array(vec![Value::Null]),
            Value::Array(vec![Value::Int(1)]),
            Value::Array(vec![Value::Int(1), Value::Int(0)]),
            Value::Object(Default::default()),
            obj([("a", Value::Int(1))]),
            obj([("a", Value::Int(1)), ("b", Value::Null)]),
            obj([("b", Value::Null)]),
        ];
        for (i, a) in vals.iter().enumerate() {
            for b in &vals[i..] {
                let (mut ea, mut eb) = (Vec::new(), Vec::new());
                encode_value(&mut ea, a);
                encode_value(&mut eb, b);
                assert_eq!(ea.cmp(&eb), a.total_cmp(b), "{a} vs {b}");
            }
        }
    }

    #[test]
    fn equal_numbers_share_a_key() {
        for (i, f) in [
            (2, 2.0),
            (-7, -7.0),
            (0, 0.0),
            (1 << 60, (1u64 << 60) as f64),
        ] {
            let (mut a, mut b) = (Vec::new(), Vec::new());
            encode_value(&mut a, &Value::Int(i));
            encode_value(&mut b, &Value::Float(f));
            assert_eq!(a, b, "{i} vs {f}");
        }
        let (mut a, mut b) = (Vec::new(), Vec::new());
        encode_value(&mut a, &Value::Float(2.5));
        encode_value(&mut b, &Value::Int(2));
        assert!(a > b);
    }

    #[test]
    fn index_key_id_walks_every_component() {
        let vals = [
            Value::from("o\0wner"),
            Value::Int(-3),
            Value::Array(vec![Value::Float(2.5), obj([("k", Value::Bool(true))])]),
        ];
        let k = index_key("Todo", "byX", &vals, "id\0x");
        let p = index_prefix("Todo", "byX", &[]).len();
        assert_eq!(index_key_id(&k, p, 3).unwrap(), "id\0x");
    }

    #[test]
    fn encodings_are_prefix_free() {
        let vals = [
            Value::from("a"),
            Value::from("a\0"),
            Value::from("a\0\0"),
            Value::Bytes(vec![1]),
            Value::Bytes(vec![1, 0]),
            Value::Array(vec![Value::Int(1)]),
            Value::Array(vec![Value::Int(1), Value::Int(2)]),
        ];
        for a in &vals {
            for b in &vals {
                let (mut ea, mut eb) = (Vec::new(), Vec::new());
                encode_value(&mut ea, a);
                encode_value(&mut eb, b);
                if a != b {
                    assert!(!eb.starts_with(&ea), "{a} is a prefix of {b}");
                }
            }
        }
    }

    #[test]
    fn prefix_end_bounds_the_prefix() {
        assert_eq!(prefix_end(b"ab"), Some(b"ac".to_vec()));
        assert_eq!(prefix_end(&[1, 0xFF]), Some(vec![2]));
        assert_eq!(prefix_end(&[0xFF]), None);
    }
}
