//! The write path: `create`, `update`, `replace` and `delete` of documents, with their
//! rules, limits and unique indexes, and the ids `newId()` makes.

use std::rc::Rc;

use sha2::{Digest, Sha256};

use super::{bind_static, err, type_err, Doc, EnvNode, Evaluator, Mode, Touched, Val};
use crate::doc::{index_values, StoredDoc};
use crate::error::{Error, ErrorCode};
use crate::keys;
use crate::lang::ast::Action;
use crate::schema::Collection;
use crate::storage::Storage;
use crate::value::{Value, MAX_VALUE_DEPTH};

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

    /// The partition of a document (`doc`: its fields with `id`), and `doc` back.
    pub(super) fn partition_of(
        &mut self,
        coll: &Collection,
        doc: Value,
    ) -> Result<(String, Value), Error> {
        let Some(expr) = &coll.partition else {
            return Ok((coll.name.clone(), doc));
        };
        let env = bind_static(&self.root_env(), "doc", Val::Data(doc));
        let saved = self.mode;
        self.mode = Mode::Rule;
        let r = self.eval(expr, &env);
        self.mode = saved;
        match r? {
            Val::Data(Value::String(s)) if !s.is_empty() => {
                // Take `doc` back out of the environment (a copy only if something
                // still holds the environment).
                let doc = match env.map(Rc::try_unwrap) {
                    Some(Ok(EnvNode {
                        val: Val::Data(v), ..
                    })) => v,
                    Some(Err(node)) => match &node.val {
                        Val::Data(v) => v.clone(),
                        _ => Value::Null,
                    },
                    _ => Value::Null,
                };
                Ok((s, doc))
            }
            other => Err(type_err(format!(
                "the partition expression of {} must give a non-empty string, not {}",
                coll.name,
                match &other {
                    Val::Data(v) => v.to_string(),
                    v => v.kind().to_owned(),
                }
            ))),
        }
    }

    pub(super) fn create_doc(&mut self, coll: &'a Collection, data: Value) -> Result<Val, Error> {
        self.require_writable()?;
        let Value::Object(mut fields) = data else {
            return Err(type_err(format!(
                "create takes an object, not {}",
                data.type_name()
            )));
        };
        let id = match fields.remove("id") {
            Some(Value::String(s)) => s,
            Some(other) => {
                return Err(err(
                    ErrorCode::InvalidId,
                    format!("an id must be a string, not {}", other.type_name()),
                ))
            }
            None => self.new_id(),
        };
        check_id(&id)?;
        let key = keys::doc_key(&coll.name, &id);
        if self.view.get(&key)?.is_some() {
            return Err(err(
                ErrorCode::DocumentExists,
                format!("{}/{id} already exists", coll.name),
            ));
        }
        let data = Value::Object(fields);
        let (partition, with_id) = self.partition_of(coll, with_id(&data, &id))?;
        let new = StoredDoc {
            partition,
            version: self.ctx.position,
            data,
        };
        let vars = vec![
            ("doc", with_id.clone()),
            ("new", with_id),
            ("old", Value::Null),
            ("partition", Value::String(new.partition.clone())),
        ];
        self.write(coll, &id, None, Some(&new), Action::Create, vars)?;
        Ok(Val::Doc(Rc::new(Doc {
            collection: coll.name.clone(),
            id,
            stored: new,
        })))
    }

    /// The document's current state in this transaction, refusing one that is gone.
    pub(super) fn current(&mut self, d: &Doc) -> Result<(&'a Collection, StoredDoc), Error> {
        let coll = self.coll(&d.collection)?;
        let key = keys::doc_key(&coll.name, &d.id);
        // Every `Doc` was read through this evaluation's view. When the transaction has
        // not written the document, the view still holds what `d` was read from: use it
        // rather than reading and decoding the same bytes again.
        if !self.view.has_write(&key) {
            return Ok((coll, d.stored.clone()));
        }
        let bytes = self.view.get(&key)?.ok_or_else(|| {
            err(
                ErrorCode::DocumentNotFound,
                format!("{}/{} does not exist", d.collection, d.id),
            )
        })?;
        Ok((coll, StoredDoc::decode(&bytes)?))
    }

    pub(super) fn update_doc(
        &mut self,
        d: &Doc,
        patch: Value,
        replace: bool,
    ) -> Result<Val, Error> {
        self.require_writable()?;
        let (coll, old) = self.current(d)?;
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
        let (partition, new_with_id) = self.partition_of(coll, with_id(&data, &d.id))?;
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
        let vars = vec![
            ("doc", new_with_id.clone()),
            ("new", new_with_id),
            ("old", with_id(&old.data, &d.id)),
            ("partition", Value::String(new.partition.clone())),
        ];
        self.write(coll, &d.id, Some(&old), Some(&new), Action::Update, vars)?;
        Ok(Val::Doc(Rc::new(Doc {
            collection: d.collection.clone(),
            id: d.id.clone(),
            stored: new,
        })))
    }

    pub(super) fn delete_doc(&mut self, d: &Doc) -> Result<(), Error> {
        self.require_writable()?;
        let (coll, old) = self.current(d)?;
        let old_with_id = with_id(&old.data, &d.id);
        let vars = vec![
            ("doc", old_with_id.clone()),
            ("old", old_with_id),
            ("new", Value::Null),
            ("partition", Value::String(old.partition.clone())),
        ];
        self.write(coll, &d.id, Some(&old), None, Action::Delete, vars)
    }

    /// Checks rules, limits and unique indexes, then records the write in the view.
    fn write(
        &mut self,
        coll: &'a Collection,
        id: &str,
        old: Option<&StoredDoc>,
        new: Option<&StoredDoc>,
        action: Action,
        mut vars: Vec<(&'static str, Value)>,
    ) -> Result<(), Error> {
        if let Some(n) = new {
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
        vars.push(("collection", Value::String(coll.name.clone())));
        if let Err(why) = self.check_rules(coll, action, vars)? {
            return Err(err(
                ErrorCode::PermissionDenied,
                format!("{} of {}/{id} denied: {why}", action.as_str(), coll.name),
            ));
        }
        if let Some(n) = new {
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
                        return Err(err(
                            ErrorCode::UniqueViolation,
                            format!(
                                "{}/{id}: unique index {name} already holds {} for {}/{other}",
                                coll.name,
                                Value::Array(vals.clone()),
                                coll.name
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
        for op in crate::doc::doc_ops(coll, id, old, new) {
            self.view.write(op);
        }
        Ok(())
    }

    /// `newId()`: 16 characters from a hash of the commit's client id, sequence number
    /// and a counter. The same commit makes the same ids on every replica.
    pub(crate) fn new_id(&mut self) -> String {
        let mut h = Sha256::new();
        h.update(self.ctx.client_id.as_bytes());
        h.update([0]);
        h.update(self.ctx.client_seq.to_be_bytes());
        h.update(self.ids_made.to_be_bytes());
        self.ids_made += 1;
        let d = h.finalize();
        base32(&d[..10])
    }
}

fn with_id(data: &Value, id: &str) -> Value {
    let mut o = data.as_object().cloned().unwrap_or_default();
    o.insert("id".into(), Value::String(id.to_owned()));
    Value::Object(o)
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

/// Crockford-style lowercase base32, 5 bits a character.
fn base32(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 32] = b"0123456789abcdefghjkmnpqrstvwxyz";
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
