//! The write path: `create`, `update`, `replace` and `delete` of documents, with their
//! rules, limits and unique indexes, and the ids `newId()` makes.
//!
//! What a write may reveal of documents the writer cannot read (docs/DECISIONS.md,
//! "What a hidden document may reveal"): the rules run first, so a write they deny
//! says nothing about what exists; then an id or a unique key that another document
//! holds is refused (`DOCUMENT_EXISTS`, `UNIQUE_VIOLATION`), as a primary key or a
//! unique constraint is in SQL, without naming that document. Before the rules, a typed
//! collection's document is checked against its declared field types
//! ([`crate::types`]): that reads only what the writer gave.

use std::rc::Rc;

use sha2::{Digest, Sha256};

use super::meter::{entry_extra, Data, Paid};
use super::rules::WriteVars;
use super::{cost, err, type_err, Doc, Evaluator, Mode, Owned, Touched, Val};
use crate::doc::{index_values, StoredDoc};
use crate::error::{Error, ErrorCode};
use crate::keys;
use crate::lang::ast::Action;
use crate::schema::Collection;
use crate::storage::Storage;
use crate::value::{Value, MAX_VALUE_DEPTH};

/// What an update does to a document.
enum Change<'f> {
    /// `update(patch)` or `replace(data)`.
    Patch { patch: Owned, replace: bool },
    /// `editText(field, update)`.
    Text { field: &'f str, update: Owned },
}

/// Refuses a write that sets a text field directly: text changes only by its edits.
fn no_text_fields(
    coll: &Collection,
    fields: &crate::value::Object,
    verb: &str,
) -> Result<(), Error> {
    for f in &coll.text_fields {
        if let Some(v) = fields.get(f) {
            if verb == "create" && v.is_null() {
                continue;
            }
            return Err(type_err(format!(
                "{verb} cannot set the text field {}.{f}: edit it with editText(\"{f}\", update)",
                coll.name
            )));
        }
    }
    Ok(())
}

/// A document's fields as programs and rules see them: each text field as its string
/// (`""` for one never edited, as `doc.field` reads it).
pub(super) fn visible(coll: &Collection, data: &Value) -> Result<crate::value::Object, Error> {
    visible_owned(coll, data.as_object().cloned().unwrap_or_default())
}

/// [`visible`], of fields the caller owns (no copy of them).
pub(super) fn visible_owned(
    coll: &Collection,
    mut o: crate::value::Object,
) -> Result<crate::value::Object, Error> {
    for f in &coll.text_fields {
        let s = crate::ytext::stored(o.get(f).unwrap_or(&Value::Null))?
            .text
            .to_owned();
        o.insert(f.clone(), Value::String(s));
    }
    Ok(o)
}

/// A document as it stands in the transaction: the one the program holds, or the one
/// the transaction wrote since (paid for while it is used).
enum Current<'d> {
    Held(&'d StoredDoc),
    Read { doc: StoredDoc, _paid: Paid },
}

impl Current<'_> {
    fn doc(&self) -> &StoredDoc {
        match self {
            Current::Held(d) => d,
            Current::Read { doc, .. } => doc,
        }
    }
}

impl<'a> Evaluator<'a> {
    pub(super) fn require_writable(&self) -> Result<(), Error> {
        match self.mode {
            Mode::Transaction => Ok(()),
            Mode::Query => Err(err(
                ErrorCode::ReadOnly,
                "a query cannot write; use a transaction",
            )),
            Mode::Rule => Err(err(
                ErrorCode::ReadOnly,
                "rules and partition expressions cannot write",
            )),
        }
    }

    /// A document's fields with its `id`, as rules and partition expressions see it
    /// (paid for, and shared with every rule that looks at it).
    fn with_id(&self, coll: &Collection, data: &Value, id: &str) -> Result<Data, Error> {
        let first = data.as_object().is_none_or(|o| o.is_empty());
        // Text fields read as their strings, which their stored bytes hold: the
        // stored size pays for both.
        let paid = self.pay(cost(data) + entry_extra("id", first) + id.len() as u64)?;
        let mut o = visible(coll, data)?;
        o.insert("id", Value::String(id.to_owned()));
        Ok(Data::held(Value::Object(o), paid))
    }

    /// Checks a typed collection's document against its field types
    /// ([`crate::types::validate_doc`]), paying first: one step, and one more for every
    /// 64 bytes of the document's in-memory size (the walk is linear in it).
    fn validate(&mut self, coll: &Collection, id: &str, data: &Value) -> Result<(), Error> {
        if !coll.is_typed() {
            return Ok(());
        }
        self.charge(1 + cost(data) / 64)?;
        crate::types::validate_doc(coll, id, data)
    }

    pub(super) fn create_doc(&mut self, coll: &'a Collection, data: Owned) -> Result<Val, Error> {
        self.require_writable()?;
        let Owned { value, paid } = data;
        let Value::Object(mut fields) = value else {
            return Err(type_err(format!(
                "create takes an object, not {}",
                value.type_name()
            )));
        };
        no_text_fields(coll, &fields, "create")?;
        let id = match fields.remove("id") {
            Some(Value::String(s)) => {
                check_id(&s)?;
                self.check_chosen_id(&s)?;
                s
            }
            Some(other) => {
                return Err(err(
                    ErrorCode::InvalidId,
                    format!("an id must be a string, not {}", other.type_name()),
                ))
            }
            None => self.new_id(),
        };
        let data = Value::Object(fields);
        self.validate(coll, &id, &data)?;
        let doc = self.with_id(coll, &data, &id)?;
        let partition = self.partition_of(coll, &doc)?;
        let new = StoredDoc {
            partition,
            version: self.ctx.position,
            data,
        };
        self.write(coll, &id, None, Some((&new, &doc)), Action::Create)?;
        drop(doc);
        let doc = self.new_doc(coll, id, new, paid)?;
        Ok(Val::Doc(Rc::new(doc)))
    }

    /// The document's current state in this transaction, refusing one that is gone.
    fn current<'d>(&mut self, d: &'d Doc) -> Result<(&'a Collection, Current<'d>), Error> {
        let coll = self.coll(&d.collection)?;
        let key = keys::doc_key(&coll.name, &d.id);
        // Every `Doc` was read through this evaluation's view. When the transaction has
        // not written the document, the view still holds what `d` was read from: use it
        // rather than reading and decoding the same bytes again.
        if !self.view.has_write(&key) {
            return Ok((coll, Current::Held(&d.stored)));
        }
        let bytes = self.view.get(&key)?.ok_or_else(|| {
            err(
                ErrorCode::DocumentNotFound,
                format!("{}/{} does not exist", d.collection, d.id),
            )
        })?;
        let read = self.decode_doc(coll, &d.id, &bytes)?;
        Ok((
            coll,
            Current::Read {
                doc: read.stored,
                _paid: read.paid,
            },
        ))
    }

    pub(super) fn update_doc(
        &mut self,
        d: &Doc,
        patch: Owned,
        replace: bool,
    ) -> Result<Val, Error> {
        self.change_doc(d, Change::Patch { patch, replace })
    }

    /// `d.editText(field, update)`: applies a Yjs update to a text field, then writes
    /// the document as `update` does (its rules see the text before and after).
    pub(super) fn edit_text(&mut self, d: &Doc, field: &str, update: Owned) -> Result<Val, Error> {
        self.change_doc(d, Change::Text { field, update })
    }

    fn change_doc(&mut self, d: &Doc, change: Change<'_>) -> Result<Val, Error> {
        self.require_writable()?;
        let (coll, current) = self.current(d)?;
        let old = current.doc();
        let (patch, replace, mut paid) = match change {
            Change::Patch { patch, replace } => (patch.value, replace, patch.paid),
            Change::Text { field, update } => {
                let Owned { value, mut paid } = update;
                let update = match value {
                    Value::Bytes(b) => b,
                    // An ad-hoc transaction has no bytes literal: base64 text works too.
                    Value::String(s) => {
                        use base64::Engine as _;
                        self.charge(1 + s.len() as u64 / 64)?;
                        base64::engine::general_purpose::STANDARD
                            .decode(s.as_bytes())
                            .map_err(|_| {
                                err(
                                    ErrorCode::InvalidTextUpdate,
                                    "editText was given text that is not base64",
                                )
                            })?
                    }
                    other => {
                        return Err(type_err(format!(
                            "editText takes a Yjs update as bytes (or base64 text), not {}",
                            other.type_name()
                        )))
                    }
                };
                if !coll.is_text(field) {
                    return Err(type_err(format!(
                        "{}.{field} is not a text field (declare it: field {field}: text)",
                        coll.name
                    )));
                }
                // Reading the update is linear in its bytes; applying it in the state's
                // and the update's, and in its parts (each may meet the others).
                self.charge(1 + update.len() as u64 / 64)?;
                let checked = crate::ytext::check_update(&update)?;
                let before = old.data.get(field);
                let state = match before {
                    Value::Bytes(b) => b.len(),
                    _ => 0,
                } as u64;
                // YATA may compare each new part with every concurrent item between its
                // neighbours: at worst every item of the state (fewer than its bytes)
                // and of the update. One step per 64 such comparisons.
                let parts = checked.parts;
                self.charge(
                    (state + update.len() as u64) / 16
                        + parts
                        + parts.saturating_mul(state + parts) / 64,
                )?;
                let working =
                    self.pay(crate::ytext::MEMORY_PER_BYTE * (state + update.len() as u64) + 4096)?;
                let after = crate::ytext::apply(before, &update)?;
                drop(working);
                paid.more(cost(&old.data) + cost(&after))?;
                let mut o = old.data.as_object().cloned().unwrap_or_default();
                o.insert(field.to_owned(), after);
                let data = Value::Object(o);
                let v = self.finish_update(d, coll, old, data, paid, "editText");
                drop(current);
                return v;
            }
        };
        let Value::Object(mut patch) = patch else {
            return Err(type_err(format!(
                "{} takes an object, not {}",
                if replace { "replace" } else { "update" },
                patch.type_name()
            )));
        };
        match patch.remove("id") {
            None => {}
            Some(Value::String(s)) if s == d.id => {}
            Some(_) => {
                return Err(err(
                    ErrorCode::InvalidArgument,
                    format!("the id of {}/{} cannot change", d.collection, d.id),
                ))
            }
        }
        no_text_fields(coll, &patch, if replace { "replace" } else { "update" })?;
        let data = if replace {
            // Text fields change only by their edits: replace keeps them.
            for f in &coll.text_fields {
                let v = old.data.get(f);
                if !v.is_null() {
                    paid.more(cost(v))?;
                    patch.insert(f.clone(), v.clone());
                }
            }
            Value::Object(patch)
        } else {
            // A shallow merge; a field set to null is removed.
            paid.more(cost(&old.data))?;
            let mut o = old.data.as_object().cloned().unwrap_or_default();
            o.patch(patch);
            Value::Object(o)
        };
        let v = self.finish_update(
            d,
            coll,
            old,
            data,
            paid,
            if replace { "replace" } else { "update" },
        )?;
        drop(current);
        Ok(v)
    }

    /// The rest of an update: the partition must not change, the rules and limits
    /// pass, the write is recorded.
    fn finish_update(
        &mut self,
        d: &Doc,
        coll: &'a Collection,
        old: &StoredDoc,
        data: Value,
        paid: Paid,
        verb: &str,
    ) -> Result<Val, Error> {
        self.validate(coll, &d.id, &data)?;
        let doc = self.with_id(coll, &data, &d.id)?;
        let partition = self.partition_of(coll, &doc)?;
        if partition != old.partition {
            return Err(err(
                ErrorCode::PartitionChange,
                format!(
                    "{verb} of {}/{} would move it from partition {} to {}; partitions are fixed at create",
                    d.collection,
                    d.id,
                    old.partition,
                    partition
                ),
            ));
        }
        let new = StoredDoc {
            partition,
            version: self.ctx.position,
            data,
        };
        let old_doc = self.with_id(coll, &old.data, &d.id)?;
        self.write(
            coll,
            &d.id,
            Some((old, &old_doc)),
            Some((&new, &doc)),
            Action::Update,
        )?;
        drop((doc, old_doc));
        let doc = self.new_doc(coll, d.id.clone(), new, paid)?;
        Ok(Val::Doc(Rc::new(doc)))
    }

    pub(super) fn delete_doc(&mut self, d: &Doc) -> Result<(), Error> {
        self.require_writable()?;
        let (coll, current) = self.current(d)?;
        let old = current.doc();
        let old_doc = self.with_id(coll, &old.data, &d.id)?;
        self.write(coll, &d.id, Some((old, &old_doc)), None, Action::Delete)
    }

    /// Checks limits, rules, the id and unique indexes, then records the write in the
    /// view. `old` and `new` come with the document as rules see it (fields and `id`).
    fn write(
        &mut self,
        coll: &'a Collection,
        id: &str,
        old: Option<(&StoredDoc, &Data)>,
        new: Option<(&StoredDoc, &Data)>,
        action: Action,
    ) -> Result<(), Error> {
        if let Some((n, _)) = new {
            let size = n.data.encoded_len();
            if size > self.limits.max_doc_bytes {
                return Err(err(
                    ErrorCode::DocumentTooLarge,
                    format!(
                        "{}/{id} would be {size} bytes; the limit is {}",
                        coll.name, self.limits.max_doc_bytes
                    ),
                ));
            }
            if n.data.nests_deeper_than(MAX_VALUE_DEPTH) {
                return Err(err(
                    ErrorCode::DepthExceeded,
                    format!(
                        "{}/{id} nests deeper than {MAX_VALUE_DEPTH} levels",
                        coll.name
                    ),
                ));
            }
        }
        let partition = new.or(old).map_or("", |(d, _)| d.partition.as_str());
        let vars = WriteVars {
            new: new.map(|(_, v)| v),
            old: old.map(|(_, v)| v),
            id,
            partition,
        };
        if let Err(why) = self.check_write_rules(coll, action, vars)? {
            return Err(err(
                ErrorCode::PermissionDenied,
                format!("{} of {}/{id} denied: {why}", action.as_str(), coll.name),
            ));
        }
        // Only a writer the rules allow learns that the id is taken.
        if action == Action::Create && self.view.get(&keys::doc_key(&coll.name, id))?.is_some() {
            return Err(err(
                ErrorCode::DocumentExists,
                format!("{}/{id} already exists", coll.name),
            ));
        }
        if let Some((n, _)) = new {
            for (name, ix) in coll.indexes.iter().filter(|(_, ix)| ix.unique) {
                let vals = index_values(&n.data, &ix.fields);
                // Like SQL, a null in the key leaves it out of the uniqueness check.
                if vals.iter().any(Value::is_null) {
                    continue;
                }
                let prefix = keys::index_prefix(&coll.name, name, &vals);
                let range = crate::storage::KeyRange::prefix(&prefix);
                let page = self.view.scan(&range, false, 2)?;
                for (k, _) in page {
                    let other = keys::index_key_id(&k, prefix.len(), 0)?;
                    if other != id {
                        // The key is the writer's own; whose document holds it is not.
                        return Err(err(
                            ErrorCode::UniqueViolation,
                            format!(
                                "{}/{id}: unique index {name} already holds {} for another document",
                                coll.name,
                                crate::text::preview(&Value::Array(vals.clone()))
                            ),
                        ));
                    }
                }
            }
        }
        let key = (coll.name.clone(), id.to_owned());
        if !self.touched_set.contains(&key) {
            if self.touched.len() >= self.limits.max_writes {
                return Err(err(
                    ErrorCode::TooManyWrites,
                    format!(
                        "a transaction may write at most {} documents",
                        self.limits.max_writes
                    ),
                ));
            }
            self.touched_set.insert(key);
            self.touched.push(Touched {
                collection: coll.name.clone(),
                id: id.to_owned(),
            });
        }
        self.charge(10)?;
        // The transaction holds its writes until it ends (and its outcome holds the
        // documents): paid for good.
        let held = new.map_or(0, |(n, _)| cost(&n.data))
            + 64 * (coll.indexes.len() as u64 + 2)
            + (id.len() + partition.len()) as u64 * (coll.indexes.len() as u64 + 2);
        self.spend(held)?;
        let ops = crate::doc::doc_ops(coll, id, old.map(|(d, _)| d), new.map(|(d, _)| d));
        for op in ops {
            self.view.write(op);
        }
        Ok(())
    }

    /// Pays for good, into the program's meter.
    fn spend(&self, bytes: u64) -> Result<(), Error> {
        self.program.spend(bytes)
    }

    /// `newId()`: `_` and 26 characters of base32 (128 bits): 8 bytes that name the
    /// caller (a hash of `auth.sub`), then 8 bytes of a hash of the commit's client id,
    /// sequence number and a counter. The same commit makes the same ids on every
    /// replica, and only the caller may create a document with an id of this form
    /// ([`Evaluator::check_chosen_id`]), so no one can take an id before its maker does.
    pub(crate) fn new_id(&mut self) -> String {
        let mut h = Sha256::new();
        h.update(b"warren:newId\0");
        h.update(self.ctx.client_id.as_bytes());
        h.update([0]);
        h.update(self.ctx.client_seq.to_be_bytes());
        h.update(self.ids_made.to_be_bytes());
        self.ids_made += 1;
        let mut bytes = owner_tag(&self.ctx.auth).to_vec();
        bytes.extend_from_slice(&h.finalize()[..8]);
        format!("_{}", base32(&bytes))
    }

    /// An id the program chose: one that begins with `_` is newId's, and must carry the
    /// caller's own tag.
    fn check_chosen_id(&self, id: &str) -> Result<(), Error> {
        let Some(rest) = id.strip_prefix('_') else {
            return Ok(());
        };
        let ok = rest.len() == 26
            && base32_decode(rest).is_some_and(|b| {
                b.len() == 16 && b[..8] == owner_tag(&self.ctx.auth) && base32(&b) == rest
            });
        if ok {
            Ok(())
        } else {
            Err(err(
                ErrorCode::InvalidId,
                format!(
                    "{id:?}: ids that begin with `_` are made by newId() and belong to the user \
                     who made them; choose an id without a leading `_`"
                ),
            ))
        }
    }
}

/// The 8 bytes of a `newId()` id that name its maker: a hash of the token's subject.
fn owner_tag(auth: &Value) -> [u8; 8] {
    let mut h = Sha256::new();
    h.update(b"warren:id-owner\0");
    h.update(crate::exec::subject(auth).as_bytes());
    let d = h.finalize();
    let mut tag = [0; 8];
    tag.copy_from_slice(&d[..8]);
    tag
}

/// The longest id accepted, in bytes.
pub const MAX_ID_BYTES: usize = 256;

pub(crate) fn check_id(id: &str) -> Result<(), Error> {
    if id.is_empty() || id.len() > MAX_ID_BYTES || id.chars().any(char::is_control) {
        return Err(err(
            ErrorCode::InvalidId,
            format!(
                "an id must be 1 to {MAX_ID_BYTES} bytes with no control characters: {:?}",
                id.chars().take(40).collect::<String>()
            ),
        ));
    }
    Ok(())
}

const ALPHABET: &[u8; 32] = b"0123456789abcdefghjkmnpqrstvwxyz";

/// Crockford-style lowercase base32, 5 bits a character.
fn base32(bytes: &[u8]) -> String {
    let mut out = String::new();
    let mut acc: u32 = 0;
    let mut bits = 0;
    for &b in bytes {
        acc = (acc << 8) | u32::from(b);
        bits += 8;
        while bits >= 5 {
            bits -= 5;
            out.push(ALPHABET[((acc >> bits) & 31) as usize] as char);
        }
    }
    if bits > 0 {
        out.push(ALPHABET[((acc << (5 - bits)) & 31) as usize] as char);
    }
    out
}

/// The bytes of [`base32`] text (whole bytes; leftover bits are dropped).
fn base32_decode(s: &str) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(s.len() * 5 / 8);
    let mut acc: u32 = 0;
    let mut bits = 0;
    for c in s.bytes() {
        let v = ALPHABET.iter().position(|&a| a == c)? as u32;
        acc = (acc << 5) | v;
        bits += 5;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base32_round_trips() {
        for n in 0..20u8 {
            let bytes: Vec<u8> = (0..n).map(|i| i.wrapping_mul(37).wrapping_add(n)).collect();
            assert_eq!(base32_decode(&base32(&bytes)).unwrap(), bytes);
        }
        assert!(base32_decode("u").is_none());
    }
}
