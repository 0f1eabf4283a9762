//! Collaborative text fields: a Yjs-compatible CRDT document held by `yrs`.
//!
//! A collection declares `field notes: text`. The field's stored value is
//! [`Value::Bytes`] in the format below; programs and rules read it as its string, and
//! change it only with `doc.editText("notes", update)`, where `update` is a Yjs update
//! (lib0 v1 encoding) made by any Yjs or yrs client.
//!
//! # One answer everywhere
//!
//! The stored value is a function of the edits in the order the log applied them:
//! [`apply`] decodes the stored state into a fresh `yrs` document whose client id and
//! guid are fixed (the engine never writes content of its own, and `yrs` draws no
//! random number for a document made with explicit options), applies the update, and
//! encodes the whole state again with `yrs`'s v1 encoder, which writes clients in
//! descending id order and the delete set from a `BTreeMap`. Each replica folds the
//! same function over the same updates in the same order, so every replica holds the
//! same bytes and the same digest. Before the log orders them, a replica's local view
//! may apply edits in another order: the CRDT gives it the same string, and the log's
//! order then gives it the same bytes (the property test in `tests/ytext.rs`).
//! What would bring a process's `HashMap` order into the bytes, an object with more
//! than one key in a formatting attribute or an embed (`yrs` keeps them in a
//! `HashMap` with a random seed), is refused.
//!
//! # Hostile updates
//!
//! An update is checked by [`check_update`], a bounded reader of the v1 format, before
//! `yrs` sees it: every count is bounded by the bytes left, clocks stay below 2^31 (so
//! `yrs`'s `u32` clock arithmetic cannot overflow), JSON values nest at most
//! [`MAX_JSON_DEPTH`] levels, and only the content a `Y.Text` named [`ROOT`] holds is
//! accepted (strings, deletions, formatting attributes, embeds). An update that
//! depends on edits the text does not have (an earlier edit was rejected) is refused
//! with `TEXT_UPDATE_OUT_OF_ORDER` rather than kept pending.
//!
//! # Stored format (docs/STORAGE.md, "Text fields")
//!
//! `0x01` (the format's version), the text's UTF-8 length as `u32` little-endian, the
//! text, then the `yrs` state as a v1 update. The text is kept beside the state so that
//! reading a field never runs `yrs`.

use std::collections::BTreeSet;

use yrs::updates::decoder::Decode;
use yrs::{GetString, Options, ReadTxn, StateVector, Transact, Update};

use crate::error::{Error, ErrorCode};
use crate::value::Value;

/// The name of the `Y.Text` in the document: clients edit `doc.getText("text")`.
pub const ROOT: &str = "text";
/// The version byte of the stored format.
const FORMAT: u8 = 1;
/// The engine's own client id in its `yrs` documents; no update may use it.
const ENGINE_CLIENT: u64 = (1 << 53) - 1;
/// Clocks and lengths stay below this, so `yrs`'s `u32` and `i32` clock arithmetic
/// never overflows.
const MAX_CLOCK: u64 = (1 << 31) - 1;
/// How deep a formatting attribute's or an embed's JSON value may nest.
pub const MAX_JSON_DEPTH: usize = 16;
/// Memory an update's application may hold, per byte of state and update: a `yrs`
/// block takes about a hundred bytes for the few bytes it is encoded in.
pub const MEMORY_PER_BYTE: u64 = 64;

/// A stored text value: the string and the `yrs` state it was read from.
#[derive(Debug, PartialEq, Eq)]
pub struct Stored<'a> {
    pub text: &'a str,
    pub state: &'a [u8],
}

/// Reads a stored text value; `null` (a field never edited) is the empty text.
pub fn stored(v: &Value) -> Result<Stored<'_>, Error> {
    match v {
        Value::Null => Ok(Stored {
            text: "",
            state: &[],
        }),
        Value::Bytes(b) => decode(b),
        other => Err(corrupt(format!(
            "a text field holds a {}, not its stored bytes",
            other.type_name()
        ))),
    }
}

fn decode(b: &[u8]) -> Result<Stored<'_>, Error> {
    if b.len() < 5 || b[0] != FORMAT {
        return Err(corrupt("a text field's bytes have no header".into()));
    }
    let n = u32::from_le_bytes([b[1], b[2], b[3], b[4]]) as usize;
    let rest = &b[5..];
    if n > rest.len() {
        return Err(corrupt("a text field's string runs past its bytes".into()));
    }
    let text = std::str::from_utf8(&rest[..n])
        .map_err(|_| corrupt("a text field's string is not UTF-8".into()))?;
    Ok(Stored {
        text,
        state: &rest[n..],
    })
}

fn encode(text: &str, state: &[u8]) -> Value {
    let mut b = Vec::with_capacity(5 + text.len() + state.len());
    b.push(FORMAT);
    b.extend_from_slice(&(text.len() as u32).to_le_bytes());
    b.extend_from_slice(text.as_bytes());
    b.extend_from_slice(state);
    Value::Bytes(b)
}

/// Stored bytes that are not a text value: a rejection, the same on every replica
/// (they are part of the state), never a reason to stop.
fn corrupt(msg: String) -> Error {
    Error::new(ErrorCode::Type, msg)
}

fn invalid(msg: impl Into<String>) -> Error {
    Error::new(ErrorCode::InvalidTextUpdate, msg.into())
}

/// What [`check_update`] found in an update.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Checked {
    /// Structs (insertions, deletions, gaps) and delete-set ranges.
    pub parts: u64,
}

/// Checks that `update` is a well-formed v1 Yjs update of a `Y.Text` named [`ROOT`]
/// within the bounds above, reading each byte once.
pub fn check_update(update: &[u8]) -> Result<Checked, Error> {
    let mut r = Reader { b: update, i: 0 };
    let mut parts = 0u64;
    let clients = r.count()?;
    let mut seen = BTreeSet::new();
    for _ in 0..clients {
        let structs = r.count()?;
        let client = r.client()?;
        if !seen.insert(client) {
            return Err(invalid(format!("client {client} appears twice")));
        }
        let mut clock = r.clock()?;
        for _ in 0..structs {
            parts += 1;
            let info = r.byte()?;
            let len = match info & 0x1f {
                // GC and Skip: a run of clocks with no content.
                0 | 10 => r.len()?,
                content => {
                    let has_origin = info & 0x80 != 0;
                    let has_right = info & 0x40 != 0;
                    if info & 0x20 != 0 {
                        return Err(invalid("an entry of a map (parentSub) is not text"));
                    }
                    if has_origin {
                        r.id()?;
                    }
                    if has_right {
                        r.id()?;
                    }
                    if !has_origin && !has_right {
                        // The parent: 1 and a root type's name, or 0 and a nested type's id.
                        if r.var()? != 1 {
                            return Err(invalid("only the root text may be edited"));
                        }
                        let name = r.string()?;
                        if name != ROOT {
                            return Err(invalid(format!(
                                "the update edits the root {name:?}; a text field's is {ROOT:?}"
                            )));
                        }
                    }
                    match content {
                        1 => r.len()?,
                        4 => {
                            let s = r.string()?;
                            let n = s.encode_utf16().count() as u64;
                            if n == 0 {
                                return Err(invalid("an empty string insertion"));
                            }
                            n
                        }
                        5 => {
                            json(r.string()?)?;
                            1
                        }
                        6 => {
                            r.string()?;
                            json(r.string()?)?;
                            1
                        }
                        other => {
                            return Err(invalid(format!(
                                "content of kind {other} is not text (strings, deletions, formats and embeds are)"
                            )))
                        }
                    }
                }
            };
            clock = clock
                .checked_add(len)
                .filter(|c| *c <= MAX_CLOCK)
                .ok_or_else(|| invalid("a clock passes 2^31"))?;
        }
    }
    let clients = r.count()?;
    for _ in 0..clients {
        r.client()?;
        let ranges = r.count()?;
        for _ in 0..ranges {
            parts += 1;
            let clock = r.clock()?;
            let len = r.len()?;
            if clock + len > MAX_CLOCK {
                return Err(invalid("a deleted range passes 2^31"));
            }
        }
    }
    if r.i != update.len() {
        return Err(invalid("bytes after the update's end"));
    }
    Ok(Checked { parts })
}

/// A JSON value of a formatting attribute or an embed: parses, nests at most
/// [`MAX_JSON_DEPTH`] levels, and has no object with more than one key.
fn json(s: &str) -> Result<(), Error> {
    let v: serde_json::Value =
        serde_json::from_str(s).map_err(|_| invalid("an attribute or embed is not JSON"))?;
    fn walk(v: &serde_json::Value, depth: usize) -> Result<(), Error> {
        if depth > MAX_JSON_DEPTH {
            return Err(invalid(format!(
                "an attribute or embed nests deeper than {MAX_JSON_DEPTH}"
            )));
        }
        match v {
            serde_json::Value::Array(a) => a.iter().try_for_each(|x| walk(x, depth + 1)),
            serde_json::Value::Object(o) => {
                if o.len() > 1 {
                    return Err(invalid(
                        "an attribute or embed object may have one key (yrs would order more by a random hash)",
                    ));
                }
                o.values().try_for_each(|x| walk(x, depth + 1))
            }
            _ => Ok(()),
        }
    }
    walk(&v, 0)
}

struct Reader<'a> {
    b: &'a [u8],
    i: usize,
}

impl<'a> Reader<'a> {
    fn byte(&mut self) -> Result<u8, Error> {
        let b = *self
            .b
            .get(self.i)
            .ok_or_else(|| invalid("the update ends early"))?;
        self.i += 1;
        Ok(b)
    }

    /// A lib0 variable-length unsigned integer, at most 2^53 - 1 (what JavaScript's
    /// lib0 writes).
    fn var(&mut self) -> Result<u64, Error> {
        let mut v = 0u64;
        for shift in (0..56).step_by(7) {
            let b = self.byte()?;
            v |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                if v >= 1 << 53 {
                    break;
                }
                return Ok(v);
            }
        }
        Err(invalid("a number is larger than 2^53"))
    }

    /// A count of things that each take at least one more byte.
    fn count(&mut self) -> Result<u64, Error> {
        let n = self.var()?;
        if n > (self.b.len() - self.i) as u64 {
            return Err(invalid("a count is larger than the bytes left"));
        }
        Ok(n)
    }

    fn client(&mut self) -> Result<u64, Error> {
        let c = self.var()?;
        if c == ENGINE_CLIENT {
            return Err(invalid("the client id 2^53-1 is the engine's"));
        }
        Ok(c)
    }

    fn clock(&mut self) -> Result<u64, Error> {
        let c = self.var()?;
        if c > MAX_CLOCK {
            return Err(invalid("a clock passes 2^31"));
        }
        Ok(c)
    }

    fn len(&mut self) -> Result<u64, Error> {
        let n = self.clock()?;
        if n == 0 {
            return Err(invalid("a run of length 0"));
        }
        Ok(n)
    }

    fn id(&mut self) -> Result<(), Error> {
        self.client()?;
        self.clock()?;
        Ok(())
    }

    fn string(&mut self) -> Result<&'a str, Error> {
        let n = self.count()? as usize;
        let s = &self.b[self.i..self.i + n];
        self.i += n;
        std::str::from_utf8(s).map_err(|_| invalid("a string is not UTF-8"))
    }
}

/// A fresh document with the engine's fixed options (no random id or guid).
fn new_doc() -> yrs::Doc {
    let mut o =
        Options::with_guid_and_client_id("warren".into(), yrs::ClientID::new(ENGINE_CLIENT));
    o.skip_gc = false;
    yrs::Doc::with_options(o)
}

/// Applies a checked `update` to a stored text value (`null` for a text never edited)
/// and returns the new stored value. The caller has run [`check_update`] and paid
/// for the work and memory.
pub fn apply(old: &Value, update: &[u8]) -> Result<Value, Error> {
    let old = stored(old)?;
    let doc = new_doc();
    let text = doc.get_or_insert_text(ROOT);
    if !old.state.is_empty() {
        let u = Update::decode_v1(old.state)
            .map_err(|e| corrupt(format!("a text field's state does not decode: {e}")))?;
        let mut txn = doc.transact_mut();
        txn.apply_update(u)
            .map_err(|e| corrupt(format!("a text field's state does not apply: {e}")))?;
    }
    {
        let u = Update::decode_v1(update).map_err(|e| invalid(format!("{e}")))?;
        let mut txn = doc.transact_mut();
        txn.apply_update(u).map_err(|e| invalid(format!("{e}")))?;
        if txn.has_missing_updates() {
            return Err(Error::new(
                ErrorCode::TextUpdateOutOfOrder,
                "the update depends on edits this text does not have (an earlier edit was refused, or not sent yet)",
            ));
        }
    }
    let txn = doc.transact();
    let s = text.get_string(&txn);
    let state = txn.encode_state_as_update_v1(&StateVector::default());
    Ok(encode(&s, &state))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn null_is_the_empty_text() {
        assert_eq!(stored(&Value::Null).unwrap().text, "");
    }
}
