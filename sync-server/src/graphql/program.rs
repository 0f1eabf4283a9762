//! GraphQL reads as Warren programs.
//!
//! A query or subscription field names one read of one collection ([`Read`]) and its
//! arguments; [`source`] writes the Warren program for it, every argument value as an
//! escaped literal (`warren_core::lang::literal`), so no input can change what the
//! program does. The program runs like any query: through the parser, the limits and
//! the read rules.
//!
//! Pages are Relay connections over the language's `paginate`: a cursor is the
//! engine's cursor of a page's end plus how many elements to skip after it, so every
//! edge has a cursor of its own while the engine's cursors stay positions, not offsets
//! (see [`Cursor`]).

use std::collections::BTreeMap;

use base64::Engine as _;
use warren_core::lang::literal::{write_literal, write_string};
use warren_core::{Error, ErrorCode, Value};

/// Elements in a page when `first` is not given.
pub const DEFAULT_PAGE: u64 = 100;
/// The most elements one page may ask for.
pub const MAX_PAGE: u64 = 1000;

/// One read of a collection, as a query field exposes it.
#[derive(Clone, Debug, PartialEq)]
pub enum Read {
    /// `Todo_byId(id)`: one document or null.
    ById { collection: String },
    /// `Todo_all(...)`: every readable document, in id order.
    All { collection: String },
    /// `Todo_byOwner(owner, created, range, ...)`: an index. `args` are the GraphQL
    /// argument names of the index's fields, in the index's order.
    Index {
        collection: String,
        index: String,
        args: Vec<String>,
    },
}

impl Read {
    pub fn collection(&self) -> &str {
        match self {
            Read::ById { collection }
            | Read::All { collection }
            | Read::Index { collection, .. } => collection,
        }
    }
}

/// A field's arguments, as JSON: a name is absent when the caller did not give it, and
/// `null` when it gave null (an index lookup for `null` is a real lookup).
pub type Args = BTreeMap<String, serde_json::Value>;

/// A page cursor: the engine's cursor of an earlier page's end (`None`: the start), and
/// how many elements after it to skip. The cursor of the `i`th edge of a page is the
/// page's start plus `i + 1`; resuming from it reads `skip` elements (at most
/// [`MAX_PAGE`]) before the page. As a string it is opaque (base64url).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cursor {
    pub base: Option<String>,
    pub skip: u64,
}

impl Cursor {
    pub fn encode(&self) -> String {
        let text = match &self.base {
            Some(b) => format!("{}:{b}", self.skip),
            None => self.skip.to_string(),
        };
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(text)
    }

    pub fn decode(s: &str) -> Result<Cursor, Error> {
        let bad = || {
            Error::new(
                ErrorCode::InvalidArgument,
                "`after` is not a cursor this server gave",
            )
        };
        if s.len() > 4096 {
            return Err(bad());
        }
        let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(s)
            .map_err(|_| bad())?;
        let text = String::from_utf8(bytes).map_err(|_| bad())?;
        let (skip, base) = match text.split_once(':') {
            Some((n, b)) => (n, Some(b.to_owned())),
            None => (text.as_str(), None),
        };
        let skip: u64 = skip.parse().map_err(|_| bad())?;
        if skip > MAX_PAGE || (skip == 0 && base.is_none()) {
            return Err(bad());
        }
        Ok(Cursor { base, skip })
    }
}

/// The page a connection field asks for.
#[derive(Clone, Debug, PartialEq)]
pub struct PageRequest {
    pub first: u64,
    pub after: Option<Cursor>,
}

/// Reads `first` and `after`.
pub fn page_request(args: &Args) -> Result<PageRequest, Error> {
    let first = match args.get("first") {
        None | Some(serde_json::Value::Null) => DEFAULT_PAGE,
        Some(v) => match v.as_u64() {
            Some(n) if (1..=MAX_PAGE).contains(&n) => n,
            _ => {
                return Err(Error::new(
                    ErrorCode::InvalidArgument,
                    format!("`first` is 1 to {MAX_PAGE}"),
                ))
            }
        },
    };
    let after = match args.get("after") {
        None | Some(serde_json::Value::Null) => None,
        Some(serde_json::Value::String(s)) => Some(Cursor::decode(s)?),
        Some(_) => {
            return Err(Error::new(
                ErrorCode::InvalidArgument,
                "`after` is a cursor string",
            ))
        }
    };
    Ok(PageRequest { first, after })
}

fn value(j: &serde_json::Value) -> Result<Value, Error> {
    Value::from_json(j)
}

/// Each document a program gives is `{d: fields and id, p: partition, v: version}`.
const DOC: &str = "{d: d, p: partitionOf(d), v: versionOf(d)}";

/// The Warren program for `read` with `args`. A `ById` program gives one document (in
/// the shape above) or null; the others give `{data, after, c}`: the page, the engine's
/// cursor after it (null on the last page) and the engine's cursor the page started
/// after (null at the start).
pub fn source(read: &Read, args: &Args) -> Result<String, Error> {
    let mut out = String::new();
    match read {
        Read::ById { collection } => {
            let id = match args.get("id") {
                Some(serde_json::Value::String(s)) => Value::String(s.clone()),
                // GraphQL's ID accepts an integer literal too; Warren ids are strings.
                Some(serde_json::Value::Number(n)) => Value::String(n.to_string()),
                _ => return Err(Error::new(ErrorCode::InvalidArgument, "`id` is a string")),
            };
            out.push_str("let d = ");
            out.push_str(collection);
            out.push_str(".byId(");
            write_literal(&mut out, &id)?;
            out.push_str(")\nif d == null { null } else { (");
            out.push_str(DOC);
            out.push_str(") }\n");
        }
        Read::All { collection } => {
            out.push_str("let s = ");
            out.push_str(collection);
            out.push_str(".all()");
            order(&mut out, args)?;
            page(&mut out, args)?;
        }
        Read::Index {
            collection,
            index,
            args: names,
        } => {
            // The equality prefix: the given fields, which must be the first ones.
            let mut prefix = Vec::new();
            for name in names {
                match args.get(name) {
                    Some(v) => prefix.push(value(v)?),
                    None => break,
                }
            }
            if let Some(late) = names[prefix.len()..].iter().find(|n| args.contains_key(*n)) {
                return Err(Error::new(
                    ErrorCode::InvalidArgument,
                    format!(
                        "{index} looks up its fields in order: give `{}` before `{late}`",
                        names[prefix.len()]
                    ),
                ));
            }
            out.push_str("let s = ");
            out.push_str(collection);
            out.push('.');
            out.push_str(index);
            out.push('(');
            for (i, v) in prefix.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                write_literal(&mut out, v)?;
            }
            out.push(')');
            if let Some(r) = args.get("range").filter(|r| !r.is_null()) {
                let r = value(r)?;
                // `range` takes only the bounds it knows; null bounds are left out (a
                // GraphQL client may send every input field).
                let mut bounds = warren_core::value::Object::new();
                if let Value::Object(o) = &r {
                    for (k, v) in o {
                        if !v.is_null() {
                            bounds.insert(k.clone(), v.clone());
                        }
                    }
                }
                out.push_str(".range(");
                write_literal(&mut out, &Value::Object(bounds))?;
                out.push(')');
            }
            order(&mut out, args)?;
            page(&mut out, args)?;
        }
    }
    Ok(out)
}

/// `order: DESC` reads the set backwards.
fn order(out: &mut String, args: &Args) -> Result<(), Error> {
    match args.get("order").and_then(|o| o.as_str()) {
        None | Some("ASC") => {}
        Some("DESC") => out.push_str(".reverse()"),
        Some(other) => {
            return Err(Error::new(
                ErrorCode::InvalidArgument,
                format!("order is ASC or DESC, not {other}"),
            ))
        }
    }
    Ok(())
}

/// The page of set `s`: skip to the cursor, then `paginate`.
fn page(out: &mut String, args: &Args) -> Result<(), Error> {
    let req = page_request(args)?;
    out.push_str(".map(d => (");
    out.push_str(DOC);
    out.push_str("))\n");
    let (base, skip) = match &req.after {
        None => (None, 0),
        Some(c) => (c.base.as_deref(), c.skip),
    };
    let mut base_lit = String::new();
    match base {
        Some(b) => write_string(&mut base_lit, b),
        None => base_lit.push_str("null"),
    }
    if skip == 0 {
        out.push_str(&format!("let c = {base_lit}\n"));
    } else {
        // Past the cursor's edge first: its page's start plus `skip`.
        out.push_str(&format!("let c = s.paginate({skip}, {base_lit}).after\n"));
        out.push_str("if c == null { ({data: [], after: null, c: null}) } else {\n");
    }
    out.push_str(&format!(
        "let p = s.paginate({}, c)\n({{data: p.data, after: p.after, c: c}})\n",
        req.first
    ));
    if skip > 0 {
        out.push_str("}\n");
    }
    Ok(())
}

/// Refuses GraphQL text that nests brackets deeper than `MAX_NESTING` before any parser
/// reads it (a guard against deep recursion; GraphQL's own depth limits apply after).
/// Strings, block strings and comments are skipped.
pub fn check_nesting(query: &str) -> Result<(), String> {
    const MAX_NESTING: usize = 64;
    let b = query.as_bytes();
    let mut depth = 0usize;
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'#' => {
                while i < b.len() && b[i] != b'\n' {
                    i += 1;
                }
            }
            b'"' if b[i..].starts_with(b"\"\"\"") => {
                i += 3;
                while i < b.len() && !b[i..].starts_with(b"\"\"\"") {
                    i += if b[i] == b'\\' { 2 } else { 1 };
                }
                i += 2;
            }
            b'"' => {
                i += 1;
                while i < b.len() && b[i] != b'"' && b[i] != b'\n' {
                    i += if b[i] == b'\\' { 2 } else { 1 };
                }
            }
            b'{' | b'[' | b'(' => {
                depth += 1;
                if depth > MAX_NESTING {
                    return Err(format!(
                        "the query nests brackets deeper than {MAX_NESTING} levels"
                    ));
                }
            }
            b'}' | b']' | b')' => depth = depth.saturating_sub(1),
            _ => {}
        }
        i += 1;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(pairs: &[(&str, serde_json::Value)]) -> Args {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect()
    }

    #[test]
    fn cursors_round_trip_and_refuse_what_they_did_not_make() {
        for c in [
            Cursor {
                base: None,
                skip: 3,
            },
            Cursor {
                base: Some("kAbc".into()),
                skip: 0,
            },
            Cursor {
                base: Some("s:x:y".into()),
                skip: 1000,
            },
        ] {
            assert_eq!(Cursor::decode(&c.encode()).unwrap(), c);
        }
        for bad in ["", "!!", "MTAwMQ", "bm9wZQ", "MA", &"A".repeat(5000)] {
            let e = Cursor::decode(bad).unwrap_err();
            assert_eq!(e.code, ErrorCode::InvalidArgument, "{bad}");
        }
    }

    #[test]
    fn index_fields_must_be_given_in_order() {
        let read = Read::Index {
            collection: "Todo".into(),
            index: "byOwner".into(),
            args: vec!["owner".into(), "created".into()],
        };
        let e = source(&read, &args(&[("created", 1.into())])).unwrap_err();
        assert_eq!(e.code, ErrorCode::InvalidArgument);
        assert!(e.message.contains("give `owner` before `created`"), "{e}");
        let src = source(&read, &args(&[("owner", "a\"n".into())])).unwrap();
        assert!(src.starts_with("let s = Todo.byOwner(\"a\\\"n\")"), "{src}");
        let src = source(&read, &args(&[("owner", serde_json::Value::Null)])).unwrap();
        assert!(src.starts_with("let s = Todo.byOwner(null)"), "{src}");
    }

    #[test]
    fn page_sizes_are_bounded() {
        let read = Read::All {
            collection: "Todo".into(),
        };
        for first in [0i64, -1, 1001] {
            let e = source(&read, &args(&[("first", first.into())])).unwrap_err();
            assert_eq!(e.code, ErrorCode::InvalidArgument);
        }
        assert!(source(&read, &args(&[("first", 1000.into())])).is_ok());
    }

    /// The programs run on the engine: pages, cursors at every edge, order, ranges.
    mod engine {
        use super::*;
        use crate::graphql::exec::{doc_of, page_of};
        use std::sync::Arc;
        use warren_core::exec::{Commit, Executor, Op};
        use warren_core::storage::MemoryStore;

        const SCHEMA: &str = r#"
collection Todo {
  partition "user:" + doc.owner
  index byOwner [owner, n]
  allow read partition == "user:" + auth.sub
  allow create doc.owner == auth.sub
}
"#;

        fn db() -> Executor<MemoryStore> {
            let schema = Arc::new(warren_core::Schema::parse(SCHEMA).unwrap());
            let mut ex = Executor::new(MemoryStore::new(), schema, Default::default());
            let mut pos = 0;
            for (owner, n) in [("ann", 5), ("bob", 3)] {
                for i in 1..=n {
                    pos += 1;
                    let auth = warren_core::value::obj([("sub", owner.into())]);
                    let source =
                        format!("Todo.create({{id: \"{owner}{i}\", owner: \"{owner}\", n: {i}}})");
                    let c = Commit {
                        client_id: owner.into(),
                        client_seq: i,
                        schema_version: String::new(),
                        timestamp: 0,
                        auth: auth.clone(),
                        op: Op::Run { source },
                    };
                    let o = ex.commit(&c, pos).unwrap();
                    assert!(
                        matches!(o, warren_core::exec::Outcome::Committed { .. }),
                        "{o:?}"
                    );
                }
            }
            ex
        }

        fn ann() -> Value {
            warren_core::value::obj([("sub", "ann".into())])
        }

        fn ids(
            ex: &Executor<MemoryStore>,
            read: &Read,
            a: &Args,
        ) -> (Vec<String>, Vec<String>, bool) {
            let src = source(read, a).unwrap();
            let v = ex
                .query(&src, &ann(), 0)
                .unwrap_or_else(|e| panic!("{src}\n{e}"));
            let page = page_of(&v, &page_request(a).unwrap()).unwrap();
            (
                page.edges
                    .iter()
                    .map(|e| e.node.data["id"].as_str().unwrap().to_owned())
                    .collect(),
                page.edges.iter().map(|e| e.cursor.clone()).collect(),
                page.has_next,
            )
        }

        #[test]
        fn pages_and_edge_cursors() {
            let ex = db();
            let all = Read::All {
                collection: "Todo".into(),
            };
            // Bob's documents are invisible to ann.
            let (first, cursors, more) = ids(&ex, &all, &args(&[("first", 2.into())]));
            assert_eq!(first, ["ann1", "ann2"]);
            assert!(more);
            // Resuming from every edge's cursor gives what follows that edge.
            let everything = ["ann1", "ann2", "ann3", "ann4", "ann5"];
            for (i, c) in cursors.iter().enumerate() {
                let (next, _, _) = ids(
                    &ex,
                    &all,
                    &args(&[("first", 10.into()), ("after", c.clone().into())]),
                );
                assert_eq!(next, everything[i + 1..], "after edge {i}");
            }
            // Walking page by page by each page's last cursor reads everything once.
            let mut seen = Vec::new();
            let mut after: Option<String> = None;
            loop {
                let mut a = args(&[("first", 2.into())]);
                if let Some(c) = &after {
                    a.insert("after".into(), c.clone().into());
                }
                let (ids_, cursors, more) = ids(&ex, &all, &a);
                seen.extend(ids_);
                after = cursors.last().cloned();
                if !more {
                    break;
                }
            }
            assert_eq!(seen, everything);
            // From the last edge of the last page: nothing yet.
            let (rest, _, more) = ids(&ex, &all, &args(&[("after", after.unwrap().into())]));
            assert!(rest.is_empty() && !more);
        }

        #[test]
        fn index_prefix_range_and_order() {
            let ex = db();
            let ix = Read::Index {
                collection: "Todo".into(),
                index: "byOwner".into(),
                args: vec!["owner".into(), "n".into()],
            };
            let q = |a: &[(&str, serde_json::Value)]| ids(&ex, &ix, &args(a)).0;
            assert_eq!(q(&[("owner", "ann".into()), ("n", 3.into())]), ["ann3"]);
            assert_eq!(
                q(&[
                    ("owner", "ann".into()),
                    ("range", serde_json::json!({"gt": 1, "lte": 3, "lt": null}))
                ]),
                ["ann2", "ann3"]
            );
            assert_eq!(
                q(&[
                    ("owner", "ann".into()),
                    ("order", "DESC".into()),
                    ("first", 2.into())
                ]),
                ["ann5", "ann4"]
            );
            // A cursor of a backwards page goes on backwards.
            let (_, cursors, _) = ids(
                &ex,
                &ix,
                &args(&[
                    ("owner", "ann".into()),
                    ("order", "DESC".into()),
                    ("first", 2.into()),
                ]),
            );
            assert_eq!(
                q(&[
                    ("owner", "ann".into()),
                    ("order", "DESC".into()),
                    ("after", cursors[0].clone().into())
                ]),
                ["ann4", "ann3", "ann2", "ann1"]
            );
            // Bob's index entries are there, but not for ann.
            assert!(q(&[("owner", "bob".into())]).is_empty());
        }

        #[test]
        fn by_id_gives_the_document_or_null() {
            let ex = db();
            let read = Read::ById {
                collection: "Todo".into(),
            };
            let v = ex
                .query(
                    &source(&read, &args(&[("id", "ann2".into())])).unwrap(),
                    &ann(),
                    0,
                )
                .unwrap();
            let d = doc_of(&v).unwrap();
            assert_eq!(
                (d.data["n"].as_i64(), d.partition.as_str(), d.version),
                (Some(2), "user:ann", 2)
            );
            for id in ["bob1", "nope", "\" + Todo.byId(\"bob1\") + \""] {
                let v = ex
                    .query(
                        &source(&read, &args(&[("id", id.into())])).unwrap(),
                        &ann(),
                        0,
                    )
                    .unwrap();
                assert!(v.is_null(), "{id}: {v:?}");
            }
        }
    }

    #[test]
    fn nesting_is_checked_outside_strings_and_comments() {
        assert!(check_nesting("{ a { b { c } } }").is_ok());
        let deep = "{a".repeat(65) + &"}".repeat(65);
        assert!(check_nesting(&deep).is_err());
        let quoted = format!("{{ a(x: \"{}\") }}", "{".repeat(1000));
        assert!(check_nesting(&quoted).is_ok());
        let block = format!("{{ a(x: \"\"\"{}\"\"\") }}", "[".repeat(1000));
        assert!(check_nesting(&block).is_ok());
        let comment = format!("# {}\n{{ a }}", "(".repeat(1000));
        assert!(check_nesting(&comment).is_ok());
    }
}
