//! The write path: `create`, `update`, `replace` and `delete` of documents, with their
//! rules, limits and unique indexes, and the ids `newId()` makes.
//!
//! What a write may reveal of documents the writer cannot read (docs/DECISIONS.md,
//! "What a hidden document may reveal"): the rules run first, so a write they deny
//! says nothing about what exists; then an id or a unique key that another document
//! holds is refused (`DOCUMENT_EXISTS`, `UNIQUE_VIOLATION`), as a primary key or a
//! unique constraint is in SQL, without naming that document.

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
    fn with_id(&self, data: &Value, id: &str) -> Result<Data, Error> {
        let first = data.as_object().is_none_or(|o| o.is_empty());
        let paid = self.pay(cost(data) + entry_extra("id", first) + id.len() as u64)?;
        let mut o = data.as_object().cloned().unwrap_or_default();
        o.insert("id".into(), Value::String(id.to_owned()));
        Ok(Data::held(Value::Object(o), paid))
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
        let doc = self.with_id(&data, &id)?;
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
        self.require_writable()?;
        let (coll, current) = self.current(d)?;
        let old = current.doc();
        let Owned {
            value: patch,
            mut paid,
        } = patch;
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
        let data = if replace {
            Value::Object(patch)
        } else {
            // A shallow merge; a field set to null is removed.
            paid.more(cost(&old.data))?;
            let mut o = old.data.as_object().cloned().unwrap_or_default();
            for (k, v) in patch {
                if v.is_null() {
                    o.remove(&k);
                } else {
                    o.insert(k, v);
                }
            }
            Value::Object(o)
        };
        let doc = self.with_id(&data, &d.id)?;
        let partition = self.partition_of(coll, &doc)?;
        if partition != old.partition {
            return Err(err(
                ErrorCode::PartitionChange,
                format!(
                    "{} of {}/{} would move it from partition {} to {}; partitions are fixed at create",
                    if replace { "replace" } else { "update" },
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
        let old_doc = self.with_id(&old.data, &d.id)?;
        self.write(
            coll,
            &d.id,
            Some((old, &old_doc)),
            Some((&new, &doc)),
            Action::Update,
        )?;
        drop((doc, old_doc, current));
        let doc = self.new_doc(coll, d.id.clone(), new, paid)?;
        Ok(Val::Doc(Rc::new(doc)))
    }

    pub(super) fn delete_doc(&mut self, d: &Doc) -> Result<(), Error> {
        self.require_writable()?;
        let (coll, current) = self.current(d)?;
        let old = current.doc();
        let old_doc = self.with_id(&old.data, &d.id)?;
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

fn check_id(id: &str) -> Result<(), Error> {
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
