//! Schemas: collections (partition expression, indexes, rules) and named functions.
//!
//! A [`Schema`] is compiled once from source text and then shared (it is `Send + Sync`).
//! Its [`Schema::version`] is a hash of the source: every commit names the version it
//! was made against, and two replicas with the same version run the same rules.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use sha2::{Digest, Sha256};

use crate::error::{Error, ErrorCode};
use crate::lang::ast::{
    Action, CollectionDecl, Expr, FieldDecl, FunctionDecl, IndexDecl, Item, Rule, TypeExpr,
};
use crate::lang::{is_builtin, parse_schema};

/// A compiled schema.
#[derive(Debug)]
pub struct Schema {
    source: String,
    version: String,
    pub collections: BTreeMap<String, Collection>,
    pub functions: BTreeMap<String, Arc<FunctionDecl>>,
    /// The read rules analysed for the read-rule index, made when first asked for.
    reach: std::sync::OnceLock<crate::reach::Reach>,
}

/// A collection's compiled declaration.
#[derive(Debug)]
pub struct Collection {
    pub name: String,
    /// `None` means every document is in the one partition named after the collection.
    pub partition: Option<Expr>,
    pub indexes: BTreeMap<String, IndexDecl>,
    pub rules: BTreeMap<Action, Vec<Rule>>,
    /// Fields declared `text`: collaborative text ([`crate::ytext`]).
    pub text_fields: BTreeSet<String>,
    /// Fields declared with another type, in declaration order. A collection with at
    /// least one is *typed*: every write must give a document of exactly these fields
    /// (and its text fields), checked by [`crate::types::validate_doc`].
    pub fields: Vec<FieldDecl>,
    /// The names of `fields` and `text_fields`: what a typed document may hold.
    pub field_names: BTreeSet<String>,
}

impl Collection {
    /// Whether `field` is a collaborative text field.
    pub fn is_text(&self, field: &str) -> bool {
        !self.text_fields.is_empty() && self.text_fields.contains(field)
    }

    /// Whether the collection declares its fields' types (any field other than `text`).
    pub fn is_typed(&self) -> bool {
        !self.fields.is_empty()
    }
}

/// Names a collection member cannot take: they are the collection's own methods.
const RESERVED_INDEX_NAMES: &[&str] = &["byId", "all", "create"];

impl Schema {
    /// Parses and checks a schema. Errors carry the line and column.
    pub fn parse(source: &str) -> Result<Schema, Error> {
        let items = parse_schema(source)?;
        let mut collections = BTreeMap::new();
        let mut functions: BTreeMap<String, Arc<FunctionDecl>> = BTreeMap::new();
        for item in items {
            match item {
                Item::Collection(c) => {
                    let pos = c.pos;
                    let name = c.name.clone();
                    if collections.contains_key(&name) {
                        return Err(Error::at(
                            ErrorCode::Schema,
                            pos,
                            format!("collection {name} is declared twice"),
                        ));
                    }
                    collections.insert(name, compile_collection(c)?);
                }
                Item::Function(f) => {
                    if functions.contains_key(&f.name) {
                        return Err(Error::at(
                            ErrorCode::Schema,
                            f.pos,
                            format!("function {} is declared twice", f.name),
                        ));
                    }
                    if is_builtin(&f.name) {
                        return Err(Error::at(
                            ErrorCode::Schema,
                            f.pos,
                            format!("function {} has the name of a built-in", f.name),
                        ));
                    }
                    functions.insert(f.name.clone(), f);
                }
            }
        }
        for f in functions.values() {
            if collections.contains_key(&f.name) {
                return Err(Error::at(
                    ErrorCode::Schema,
                    f.pos,
                    format!("function {} has the name of a collection", f.name),
                ));
            }
        }
        for c in collections.values() {
            for f in &c.fields {
                known_refs(&f.ty, &collections).map_err(|e| e.or_at(f.pos))?;
            }
        }
        for f in functions.values() {
            for (ty, _) in f.param_types.iter().flatten() {
                if *ty == TypeExpr::Text {
                    return Err(Error::at(
                        ErrorCode::Schema,
                        f.pos,
                        format!(
                            "function {}: `text` is a type for a document's own fields only",
                            f.name
                        ),
                    ));
                }
                known_refs(ty, &collections).map_err(|e| e.or_at(f.pos))?;
            }
        }
        let hash = Sha256::digest(source.as_bytes());
        let version = crate::hex(&hash[..16]);
        Ok(Schema {
            source: source.to_owned(),
            version,
            collections,
            functions,
            reach: std::sync::OnceLock::new(),
        })
    }

    /// The read-rule index's analysis of this schema (see [`crate::reach`]).
    pub fn reach(&self) -> &crate::reach::Reach {
        self.reach.get_or_init(|| crate::reach::Reach::of(self))
    }

    /// The version: the first 16 bytes of the SHA-256 of the source, in hex.
    pub fn version(&self) -> &str {
        &self.version
    }

    /// The source text the schema was compiled from.
    pub fn source(&self) -> &str {
        &self.source
    }

    pub fn collection(&self, name: &str) -> Result<&Collection, Error> {
        self.collections
            .get(name)
            .ok_or_else(|| Error::new(ErrorCode::Unknown, format!("no collection named {name}")))
    }
}

fn compile_collection(c: CollectionDecl) -> Result<Collection, Error> {
    let mut indexes = BTreeMap::new();
    for ix in c.indexes {
        if RESERVED_INDEX_NAMES.contains(&ix.name.as_str()) {
            return Err(Error::at(
                ErrorCode::Schema,
                ix.pos,
                format!("`{}` is reserved and cannot name an index", ix.name),
            ));
        }
        if ix.fields.is_empty() {
            return Err(Error::at(
                ErrorCode::Schema,
                ix.pos,
                format!("index {} has no fields", ix.name),
            ));
        }
        if ix
            .fields
            .iter()
            .any(|f| f.first().is_some_and(|s| s == "id"))
        {
            return Err(Error::at(
                ErrorCode::Schema,
                ix.pos,
                format!(
                    "index {} lists `id`: entries already end with the id, and byId looks it up",
                    ix.name
                ),
            ));
        }
        if indexes.contains_key(&ix.name) {
            return Err(Error::at(
                ErrorCode::Schema,
                ix.pos,
                format!("index {} is declared twice in {}", ix.name, c.name),
            ));
        }
        indexes.insert(ix.name.clone(), ix);
    }
    let mut text_fields = BTreeSet::new();
    let mut fields = Vec::new();
    let mut field_names = BTreeSet::new();
    for f in c.fields {
        if f.name == "id" || !field_names.insert(f.name.clone()) {
            return Err(Error::at(
                ErrorCode::Schema,
                f.pos,
                format!(
                    "field {} cannot be declared here (`id`, or declared twice)",
                    f.name
                ),
            ));
        }
        if f.ty != TypeExpr::Text {
            fields.push(f);
            continue;
        }
        if f.optional {
            return Err(Error::at(
                ErrorCode::Schema,
                f.pos,
                format!(
                    "text field {} cannot be optional: it reads as \"\" until edited",
                    f.name
                ),
            ));
        }
        if !text_fields.insert(f.name.clone()) {
            return Err(Error::at(
                ErrorCode::Schema,
                f.pos,
                format!(
                    "field {} cannot be declared here (`id`, or declared twice)",
                    f.name
                ),
            ));
        }
    }
    for ix in indexes.values() {
        if let Some(f) = ix.fields.iter().find(|f| text_fields.contains(&f[0])) {
            return Err(Error::at(
                ErrorCode::Schema,
                ix.pos,
                format!(
                    "index {} lists the text field {}: text cannot be indexed",
                    ix.name, f[0]
                ),
            ));
        }
    }
    let mut rules: BTreeMap<Action, Vec<Rule>> = BTreeMap::new();
    for r in c.rules {
        rules.entry(r.action).or_default().push(r);
    }
    Ok(Collection {
        name: c.name,
        partition: c.partition,
        indexes,
        rules,
        text_fields,
        fields,
        field_names,
    })
}

/// Refuses a `ref` to a collection the schema does not declare.
fn known_refs(ty: &TypeExpr, collections: &BTreeMap<String, Collection>) -> Result<(), Error> {
    match ty {
        TypeExpr::Ref(c) if !collections.contains_key(c) => Err(Error::new(
            ErrorCode::Schema,
            format!("`ref {c}`: there is no collection named {c}"),
        )),
        TypeExpr::Array(t) => known_refs(t, collections),
        TypeExpr::Object(fs) => fs
            .iter()
            .try_for_each(|f| known_refs(&f.ty, collections).map_err(|e| e.or_at(f.pos))),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_is_a_hash_of_the_source() {
        let a = Schema::parse("collection A { allow read true }").unwrap();
        let b = Schema::parse("collection A { allow read true }").unwrap();
        let c = Schema::parse("collection A { allow read false }").unwrap();
        assert_eq!(a.version(), b.version());
        assert_ne!(a.version(), c.version());
        assert_eq!(a.version().len(), 32);
    }

    #[test]
    fn schema_errors() {
        let cases = [
            ("collection A {}\ncollection A {}", 2, 1),
            ("collection A {\n  index byId [x]\n}", 2, 3),
            ("collection A {\n  index e []\n}", 2, 3),
            ("collection A {\n  index x [a]\n  index x [b]\n}", 3, 3),
            ("collection A {\n  index x [id]\n}", 2, 3),
            ("function f() { 1 }\nfunction f() { 2 }", 2, 1),
            ("function upper(s) { s }", 1, 1),
            ("collection A {}\nfunction A() { 1 }", 2, 1),
            ("collection A {\n  partition 1\n  partition 2\n}", 3, 3),
            ("collection A {\n  field n: strin\n}", 2, 12),
            ("collection A {\n  field n: string(3..2)\n}", 2, 19),
            ("collection A {\n  field n: ref B\n}", 2, 3),
            ("collection A {\n  field n?: text\n}", 2, 3),
            ("collection A {\n  field n: int\n  field n: text\n}", 3, 3),
            ("collection A {\n  field n: { a: int, a: int }\n}", 2, 22),
            ("function f(a: ref B) { 1 }", 1, 1),
            ("collection A {\n  field n: text\n  field n: text\n}", 3, 3),
            ("collection A {\n  field id: text\n}", 2, 3),
            ("collection A {\n  field n: text\n  index byN [n]\n}", 3, 3),
        ];
        for (src, line, col) in cases {
            let e = Schema::parse(src).unwrap_err();
            assert_eq!(e.code, ErrorCode::Schema, "{src}: {e}");
            let p = e.pos.unwrap();
            assert_eq!((p.line, p.col), (line, col), "{src}: {e}");
        }
    }
}
