//! Sets: lazy queries over a collection or an index.
//!
//! A set is a source (a key range of a collection or an index, or a sorted list that
//! `order` produced) and a pipeline of operations (`where`, `map`, `skip`, `take`). It
//! is read page by page only when a terminal operation (`first`, `count`, `toArray`,
//! `paginate`, `forEach`, or returning it) needs it, so a `take(20)` over a million
//! documents reads about twenty, and every document read costs fuel.

use std::cmp::Ordering;
use std::rc::Rc;

use base64::Engine as _;

use super::{err, type_err, Closure, Doc, Evaluator, Val};
use crate::doc::StoredDoc;
use crate::error::{Error, ErrorCode};
use crate::keys;
use crate::lang::ast::IndexDecl;
use crate::schema::Collection;
use crate::storage::{KeyRange, Storage};
use crate::value::{Object, Value};

/// Documents read from storage per page.
const PAGE: usize = 64;

/// An element of a sorted set and its cursor key.
pub(crate) type Sorted = (Val, Value);

#[derive(Clone, Debug)]
pub(crate) enum Source {
    /// A range of a collection's documents (`index: None`, in id order) or of an index.
    Scan {
        collection: String,
        index: Option<IndexScan>,
        range: KeyRange,
        reverse: bool,
    },
    /// The output of `order`: elements with their cursor keys, and the sort directions.
    Sorted {
        items: Rc<Vec<Sorted>>,
        desc: Rc<Vec<bool>>,
    },
}

#[derive(Clone, Debug)]
pub(crate) struct IndexScan {
    pub name: String,
    /// Length of the key prefix before the field values.
    pub prefix_len: usize,
    pub fields: usize,
    /// The equality prefix the set was made with.
    pub values: Vec<Value>,
}

#[derive(Clone, Debug)]
pub(crate) enum Op {
    Where(Rc<Closure>),
    Map(Rc<Closure>),
    Skip(u64),
    Take(u64),
}

#[derive(Clone, Debug)]
pub struct SetQ {
    pub(crate) source: Source,
    pub(crate) ops: Vec<Op>,
}

/// Where an element came from, for pagination cursors.
pub(crate) enum At<'k> {
    Key(&'k [u8]),
    Sorted(&'k Value),
}

impl SetQ {
    pub(crate) fn collection(coll: &Collection) -> SetQ {
        SetQ {
            source: Source::Scan {
                collection: coll.name.clone(),
                index: None,
                range: KeyRange::prefix(&keys::collection_prefix(&coll.name)),
                reverse: false,
            },
            ops: Vec::new(),
        }
    }

    pub(crate) fn index(coll: &Collection, index: &IndexDecl, values: Vec<Value>) -> SetQ {
        let prefix_len = keys::index_prefix(&coll.name, &index.name, &[]).len();
        let prefix = keys::index_prefix(&coll.name, &index.name, &values);
        SetQ {
            source: Source::Scan {
                collection: coll.name.clone(),
                index: Some(IndexScan {
                    name: index.name.clone(),
                    prefix_len,
                    fields: index.fields.len(),
                    values,
                }),
                range: KeyRange::prefix(&prefix),
                reverse: false,
            },
            ops: Vec::new(),
        }
    }

    fn with(&self, op: Op) -> Val {
        let mut s = self.clone();
        s.ops.push(op);
        Val::Set(Rc::new(s))
    }
}

/// The field path and direction of a sort key written as `.a.b`, `desc(.a.b)`,
/// `asc(.a)` or `x => x.a`; `None` for anything else.
fn key_field(c: &Closure) -> Option<(Vec<String>, bool)> {
    use crate::lang::ast::{ExprKind, Stmt};
    let [param] = c.lambda.params.as_slice() else {
        return None;
    };
    let [Stmt::Expr(e)] = c.lambda.body.stmts.as_slice() else {
        return None;
    };
    fn path(e: &crate::lang::ast::Expr, param: &str) -> Option<Vec<String>> {
        match &e.kind {
            ExprKind::Var(v) if v == param => Some(Vec::new()),
            ExprKind::Field {
                recv,
                name,
                optional: false,
            } => {
                let mut p = path(recv, param)?;
                p.push(name.clone());
                Some(p)
            }
            _ => None,
        }
    }
    match &e.kind {
        ExprKind::Call { name, args } if name == "asc" || name == "desc" => match args.as_slice() {
            [a] => Some((path(a, param)?, name == "desc")),
            _ => None,
        },
        _ => Some((path(e, param)?, false)),
    }
    .filter(|(p, _)| !p.is_empty())
}

fn closure(name: &str, v: &Val) -> Result<Rc<Closure>, Error> {
    match v {
        Val::Func(c) => Ok(c.clone()),
        other => Err(type_err(format!(
            "{name} takes a function (like `.done == false` or `t => t.done`), not a {}",
            other.kind()
        ))),
    }
}

fn count_arg(name: &str, v: &Val) -> Result<u64, Error> {
    match v {
        Val::Data(Value::Int(n)) if *n >= 0 => Ok(*n as u64),
        other => Err(err(
            ErrorCode::InvalidArgument,
            format!("{name} takes a count of zero or more, not {}", other.kind()),
        )),
    }
}

impl<'a> Evaluator<'a> {
    /// The methods of a set; `None` when `name` is not one (a built-in may take it).
    pub(crate) fn set_method(
        &mut self,
        s: &Rc<SetQ>,
        name: &str,
        args: &[Val],
    ) -> Result<Option<Val>, Error> {
        let arg = |i: usize| -> Result<&Val, Error> {
            args.get(i).ok_or_else(|| {
                err(
                    ErrorCode::InvalidArgument,
                    format!("{name} needs an argument"),
                )
            })
        };
        let exact = |n: usize| -> Result<(), Error> {
            if args.len() == n {
                Ok(())
            } else {
                Err(err(
                    ErrorCode::InvalidArgument,
                    format!("{name} takes {n} argument(s), {} given", args.len()),
                ))
            }
        };
        Ok(Some(match name {
            "where" | "filter" => {
                exact(1)?;
                s.with(Op::Where(closure(name, arg(0)?)?))
            }
            "map" => {
                exact(1)?;
                s.with(Op::Map(closure(name, arg(0)?)?))
            }
            "take" => {
                exact(1)?;
                s.with(Op::Take(count_arg(name, arg(0)?)?))
            }
            "skip" => {
                exact(1)?;
                s.with(Op::Skip(count_arg(name, arg(0)?)?))
            }
            "first" => {
                exact(0)?;
                let mut found = Val::NULL;
                self.drive(s, &mut |_, v, _| {
                    found = v;
                    Ok(false)
                })?;
                found
            }
            "count" => {
                exact(0)?;
                if let Some(n) = self.count_collection(s)? {
                    return Ok(Some(Val::Data(Value::Int(n))));
                }
                let mut n = 0i64;
                self.drive_with(s, false, &mut |_, _, _| {
                    n += 1;
                    Ok(true)
                })?;
                Val::Data(Value::Int(n))
            }
            "isEmpty" => {
                exact(0)?;
                let mut empty = true;
                self.drive_with(s, false, &mut |_, _, _| {
                    empty = false;
                    Ok(false)
                })?;
                Val::Data(Value::Bool(empty))
            }
            "toArray" => {
                exact(0)?;
                Val::Data(self.materialize(Val::Set(s.clone()))?)
            }
            "forEach" => {
                exact(1)?;
                let f = closure(name, arg(0)?)?;
                self.drive(s, &mut |ev, v, _| {
                    ev.call_closure(&f, vec![v])?;
                    Ok(true)
                })?;
                Val::NULL
            }
            "order" => {
                if args.is_empty() {
                    return Err(err(
                        ErrorCode::InvalidArgument,
                        "order takes one or more sort keys, like order(desc(.created), .title)",
                    ));
                }
                let keys = args
                    .iter()
                    .map(|a| closure(name, a))
                    .collect::<Result<Vec<_>, _>>()?;
                if let Some(scan) = self.order_by_index(s, &keys)? {
                    return Ok(Some(Val::Set(Rc::new(scan))));
                }
                let mut elems = Vec::new();
                self.drive(s, &mut |_, v, _| {
                    elems.push(v);
                    Ok(true)
                })?;
                let (items, desc) = self.sort(elems, &keys)?;
                Val::Set(Rc::new(SetQ {
                    source: Source::Sorted {
                        items: Rc::new(items),
                        desc: Rc::new(desc),
                    },
                    ops: Vec::new(),
                }))
            }
            "reverse" => {
                exact(0)?;
                if !s.ops.is_empty() {
                    return Err(type_err(
                        "reverse() must come before where, map, skip and take",
                    ));
                }
                let source = match &s.source {
                    Source::Scan {
                        collection,
                        index,
                        range,
                        reverse,
                    } => Source::Scan {
                        collection: collection.clone(),
                        index: index.clone(),
                        range: range.clone(),
                        reverse: !reverse,
                    },
                    Source::Sorted { items, desc } => Source::Sorted {
                        items: Rc::new(items.iter().rev().cloned().collect()),
                        desc: Rc::new(desc.iter().map(|d| !d).collect()),
                    },
                };
                Val::Set(Rc::new(SetQ {
                    source,
                    ops: Vec::new(),
                }))
            }
            "range" => {
                exact(1)?;
                Val::Set(Rc::new(self.range(s, arg(0)?.clone())?))
            }
            "paginate" => {
                if args.is_empty() || args.len() > 2 {
                    return Err(err(
                        ErrorCode::InvalidArgument,
                        "paginate takes a page size and, optionally, the cursor of the page before",
                    ));
                }
                let size = count_arg(name, &args[0])?;
                if size == 0 {
                    return Err(err(
                        ErrorCode::InvalidArgument,
                        "paginate takes a page size of 1 or more",
                    ));
                }
                // A cursor resumes the source, so a skip or take before paginate would
                // start counting again on every page.
                if s.ops.iter().any(|o| matches!(o, Op::Skip(_) | Op::Take(_))) {
                    return Err(err(
                        ErrorCode::InvalidArgument,
                        "paginate does not combine with skip or take: the page size and the cursor do their work",
                    ));
                }
                let cursor = match args.get(1) {
                    None | Some(Val::Data(Value::Null)) => None,
                    Some(Val::Data(Value::String(c))) => Some(c.clone()),
                    Some(other) => {
                        return Err(err(
                            ErrorCode::InvalidArgument,
                            format!("a cursor is a string, not {}", other.kind()),
                        ))
                    }
                };
                Val::Data(self.paginate(s, size, cursor)?)
            }
            _ => return Ok(None),
        }))
    }

    /// `range({gte, gt, lte, lt})`: bounds on the index field after the equality prefix.
    fn range(&mut self, s: &SetQ, bounds: Val) -> Result<SetQ, Error> {
        let Source::Scan {
            collection,
            index: Some(ix),
            reverse,
            ..
        } = &s.source
        else {
            return Err(type_err(
                "range() applies to an index, like Todo.byOwner(\"a\").range({ gte: 10 })",
            ));
        };
        if !s.ops.is_empty() {
            return Err(type_err(
                "range() must come before where, map, skip and take",
            ));
        }
        if ix.values.len() >= ix.fields {
            return Err(err(
                ErrorCode::InvalidArgument,
                format!(
                    "index {} has no field left after the equality prefix to range over",
                    ix.name
                ),
            ));
        }
        let b = self.materialize(bounds)?;
        let Value::Object(b) = b else {
            return Err(type_err("range takes an object like { gte: 1, lt: 10 }"));
        };
        if let Some(k) = b
            .keys()
            .find(|k| !matches!(k.as_str(), "gt" | "gte" | "lt" | "lte"))
        {
            return Err(err(
                ErrorCode::InvalidArgument,
                format!("range bounds are gt, gte, lt and lte, not {k}"),
            ));
        }
        let at = |v: &Value| {
            let mut vals = ix.values.clone();
            vals.push(v.clone());
            keys::index_prefix(collection, &ix.name, &vals)
        };
        let base = KeyRange::prefix(&keys::index_prefix(collection, &ix.name, &ix.values));
        use std::ops::Bound;
        let start = match (b.get("gt"), b.get("gte")) {
            (Some(_), Some(_)) => {
                return Err(err(ErrorCode::InvalidArgument, "give gt or gte, not both"))
            }
            (Some(v), None) => match keys::prefix_end(&at(v)) {
                Some(k) => Bound::Included(k),
                None => Bound::Excluded(at(v)),
            },
            (None, Some(v)) => Bound::Included(at(v)),
            (None, None) => base.start.clone(),
        };
        let end = match (b.get("lt"), b.get("lte")) {
            (Some(_), Some(_)) => {
                return Err(err(ErrorCode::InvalidArgument, "give lt or lte, not both"))
            }
            (Some(v), None) => Bound::Excluded(at(v)),
            (None, Some(v)) => match keys::prefix_end(&at(v)) {
                Some(k) => Bound::Excluded(k),
                None => Bound::Unbounded,
            },
            (None, None) => base.end.clone(),
        };
        Ok(SetQ {
            source: Source::Scan {
                collection: collection.clone(),
                index: Some(ix.clone()),
                range: KeyRange { start, end },
                reverse: *reverse,
            },
            ops: Vec::new(),
        })
    }

    /// Sorts elements by key functions; ties keep their order, then break by the
    /// element's id (documents) so that cursors are exact.
    fn sort(
        &mut self,
        elems: Vec<Val>,
        keys: &[Rc<Closure>],
    ) -> Result<(Vec<Sorted>, Vec<bool>), Error> {
        // One direction per key, and one for the tie-break, so that reverse() can flip
        // the whole order and cursors still find their place.
        let mut desc = vec![false; keys.len() + 1];
        let mut keyed = Vec::with_capacity(elems.len());
        for (n, v) in elems.into_iter().enumerate() {
            let mut ks = Vec::with_capacity(keys.len() + 1);
            for (i, f) in keys.iter().enumerate() {
                match self.call_closure(f, vec![v.clone()])? {
                    Val::Order { key, desc: d } => {
                        desc[i] = d;
                        ks.push(key);
                    }
                    other => ks.push(self.materialize(other)?),
                }
            }
            ks.push(match &v {
                Val::Doc(d) => Value::String(d.id.clone()),
                _ => Value::Int(n as i64),
            });
            let ks = Value::Array(ks);
            // Keys are held until the sort ends: large ones cost fuel, as in `order`
            // on arrays.
            self.charge(ks.encoded_len() as u64 / 64)?;
            keyed.push((v, ks));
        }
        // Ties break by id in the direction of the last key: exactly the order of an
        // index whose fields are the keys, read forward or backward.
        desc[keys.len()] = keys.len().checked_sub(1).is_some_and(|i| desc[i]);
        let n = keyed.len() as u64;
        self.charge(n * (64 - n.leading_zeros() as u64))?;
        keyed.sort_by(|a, b| cmp_keys(&a.1, &b.1, &desc));
        Ok((keyed, desc))
    }

    /// `order` on an index scan whose keys are the index's next fields, all in one
    /// direction, needs no sort: it is the scan itself, read forward or backward.
    /// `Todo.byOwner(x).order(desc(.created)).take(20)` then reads twenty documents.
    fn order_by_index(&mut self, s: &SetQ, keys: &[Rc<Closure>]) -> Result<Option<SetQ>, Error> {
        let Source::Scan {
            collection,
            index: Some(ix),
            range,
            reverse: false,
        } = &s.source
        else {
            return Ok(None);
        };
        if !s.ops.is_empty() {
            return Ok(None);
        }
        let decl = &self.schema.collection(collection)?.indexes[&ix.name];
        let rest = &decl.fields[ix.values.len()..];
        if keys.len() > rest.len() {
            return Ok(None);
        }
        let mut direction = None;
        for (k, field) in keys.iter().zip(rest) {
            let Some((path, desc)) = key_field(k) else {
                return Ok(None);
            };
            if &path != field || direction.is_some_and(|d| d != desc) {
                return Ok(None);
            }
            direction = Some(desc);
        }
        Ok(Some(SetQ {
            source: Source::Scan {
                collection: collection.clone(),
                index: Some(ix.clone()),
                range: range.clone(),
                reverse: direction == Some(true),
            },
            ops: Vec::new(),
        }))
    }

    /// `count()` of a whole collection in a query, from keys alone: the `V` space
    /// lists every partition the collection has documents in; for each one the read
    /// rule allows, the partition's membership keys (`P partition coll`) are counted
    /// (a store may count a range without reading it, as IndexedDB does), and no
    /// document is read or decoded. The answer is the scan's (the documents the caller
    /// may read); the fuel is one per partition visited and one per document counted.
    /// Queries only: transactions run on the server too, where the partitions are all
    /// of everyone's, so there they keep the scan, charged per document.
    fn count_collection(&mut self, s: &SetQ) -> Result<Option<i64>, Error> {
        let Source::Scan {
            collection,
            index: None,
            range,
            ..
        } = &s.source
        else {
            return Ok(None);
        };
        if self.mode != super::Mode::Query
            || !s.ops.is_empty()
            || *range != KeyRange::prefix(&keys::collection_prefix(collection))
        {
            return Ok(None);
        }
        let coll = self.schema.collection(collection)?;
        if let Some(r) = &mut self.reads {
            r.collections.insert(collection.clone());
        }
        let mut total = 0u64;
        let mut next = Some(KeyRange::prefix(&[keys::SPACE_VERSION]));
        while let Some(r) = next {
            let (page, rest) = self.view.scan_page(&r, false, PAGE)?;
            next = rest;
            for (k, _) in page {
                self.charge(1)?;
                let (p, c) = keys::parse_version_key(&k)?;
                if c != *collection || !self.can_read(coll, &p)? {
                    continue;
                }
                let mut members = keys::partition_prefix(&p);
                keys::push_str(&mut members, collection);
                let left = self.fuel_left();
                let n = self
                    .view
                    .count(&KeyRange::prefix(&members), left.saturating_add(1))?;
                self.charge(n)?;
                total += n;
            }
        }
        Ok(Some(total as i64))
    }

    fn paginate(
        &mut self,
        s: &Rc<SetQ>,
        size: u64,
        cursor: Option<String>,
    ) -> Result<Value, Error> {
        let resumed: Rc<SetQ> = match cursor {
            None => s.clone(),
            Some(c) => Rc::new(resume(s, &c)?),
        };
        let mut data = Vec::new();
        let mut last: Option<String> = None;
        let mut more = false;
        self.drive(&resumed, &mut |ev, v, at| {
            if data.len() as u64 == size {
                more = true;
                return Ok(false);
            }
            data.push(ev.materialize(v)?);
            last = Some(match at {
                At::Key(k) => format!("k{}", b64(k)),
                At::Sorted(v) => format!("s{}", b64(&v.encode())),
            });
            Ok(true)
        })?;
        let mut o = Object::new();
        let page = Value::Array(data);
        self.check_built(&page)?;
        o.insert("data".into(), page);
        o.insert(
            "after".into(),
            match (more, last) {
                (true, Some(c)) => Value::String(c),
                _ => Value::Null,
            },
        );
        Ok(Value::Object(o))
    }

    /// Reads the set, calling `sink` with each element until it returns `false`.
    pub(crate) fn drive(
        &mut self,
        s: &SetQ,
        sink: &mut dyn FnMut(&mut Evaluator<'a>, Val, At) -> Result<bool, Error>,
    ) -> Result<(), Error> {
        self.drive_with(s, true, sink)
    }

    /// Like [`Evaluator::drive`]; with `need_docs` false and no `where` or `map`, index
    /// scans hand the sink `null` instead of fetching each document (for `count`).
    pub(crate) fn drive_with(
        &mut self,
        s: &SetQ,
        need_docs: bool,
        sink: &mut dyn FnMut(&mut Evaluator<'a>, Val, At) -> Result<bool, Error>,
    ) -> Result<(), Error> {
        let need_docs = need_docs || s.ops.iter().any(|o| matches!(o, Op::Where(_) | Op::Map(_)));
        let mut counts = vec![0u64; s.ops.len()];
        // How many elements of the source a `skip`/`take` pipeline can use, at most:
        // pages then ask for no more than that (and one more, to see the end), so a
        // store that loads what a scan asks for loads about `take + 1` entries.
        let mut wanted = wanted(&s.ops);
        match &s.source {
            Source::Sorted { items, .. } => {
                for (v, key) in items.iter() {
                    self.charge(1)?;
                    match self.pipeline(&s.ops, &mut counts, v.clone())? {
                        Flow::Emit(v) => {
                            if !sink(self, v, At::Sorted(key))? {
                                return Ok(());
                            }
                        }
                        Flow::Skip => {}
                        Flow::Stop => return Ok(()),
                    }
                }
                Ok(())
            }
            Source::Scan {
                collection,
                index,
                range,
                reverse,
            } => {
                let coll = self.schema.collection(collection)?;
                if let Some(r) = &mut self.reads {
                    r.collections.insert(collection.clone());
                }
                let mut next = Some(range.clone());
                while let Some(r) = next {
                    let size = wanted.map_or(PAGE, |w| (w + 1).min(PAGE as u64) as usize);
                    let (page, rest) = self.view.scan_page(&r, *reverse, size)?;
                    next = rest;
                    for (k, v) in page {
                        if let Some(w) = &mut wanted {
                            *w = w.saturating_sub(1);
                        }
                        self.charge(1 + v.len() as u64 / 1024)?;
                        let elem = match index {
                            None => {
                                let mut pos = 1;
                                keys::read_str(&k, &mut pos)?;
                                let id = keys::read_str(&k, &mut pos)?;
                                let stored = StoredDoc::decode(&v)?;
                                if !self.can_read(coll, &stored.partition)? {
                                    continue;
                                }
                                Val::Doc(Rc::new(Doc {
                                    collection: collection.clone(),
                                    id,
                                    stored,
                                }))
                            }
                            Some(ix) => {
                                let partition = std::str::from_utf8(&v).map_err(|_| {
                                    Error::new(ErrorCode::Corrupt, "bad index entry")
                                })?;
                                if !self.can_read(coll, partition)? {
                                    continue;
                                }
                                if need_docs {
                                    let id = keys::index_key_id(&k, ix.prefix_len, ix.fields)?;
                                    let key = keys::doc_key(collection, &id);
                                    let Some(bytes) = self.view.get(&key)? else {
                                        // A store that loads lazily has recorded the
                                        // read as a miss, and this run will be repeated
                                        // once it is loaded: go on, so that the other
                                        // documents the scan needs are loaded with it.
                                        if self.view.is_partial() {
                                            continue;
                                        }
                                        return Err(Error::new(
                                            ErrorCode::Corrupt,
                                            format!(
                                                "index {} names missing document {id}",
                                                ix.name
                                            ),
                                        ));
                                    };
                                    self.charge(bytes.len() as u64 / 1024)?;
                                    Val::Doc(Rc::new(Doc {
                                        collection: collection.clone(),
                                        id,
                                        stored: StoredDoc::decode(&bytes)?,
                                    }))
                                } else {
                                    Val::NULL
                                }
                            }
                        };
                        match self.pipeline(&s.ops, &mut counts, elem)? {
                            Flow::Emit(v) => {
                                if !sink(self, v, At::Key(&k))? {
                                    return Ok(());
                                }
                            }
                            Flow::Skip => {}
                            Flow::Stop => return Ok(()),
                        }
                    }
                }
                Ok(())
            }
        }
    }

    fn pipeline(&mut self, ops: &[Op], counts: &mut [u64], mut v: Val) -> Result<Flow, Error> {
        for (i, op) in ops.iter().enumerate() {
            match op {
                Op::Where(f) => {
                    let keep = self.call_closure(f, vec![v.clone()])?;
                    if !self.truthy(&keep) {
                        return Ok(Flow::Skip);
                    }
                }
                Op::Map(f) => v = self.call_closure(f, vec![v])?,
                Op::Skip(n) => {
                    if counts[i] < *n {
                        counts[i] += 1;
                        return Ok(Flow::Skip);
                    }
                }
                Op::Take(n) => {
                    if counts[i] >= *n {
                        return Ok(Flow::Stop);
                    }
                    counts[i] += 1;
                }
            }
        }
        Ok(Flow::Emit(v))
    }
}

/// The most elements of its source a pipeline can use: the skips before its first
/// `take` plus that take; `None` when unbounded or when a `where` may drop elements.
fn wanted(ops: &[Op]) -> Option<u64> {
    let mut skipped = 0u64;
    for op in ops {
        match op {
            Op::Where(_) => return None,
            Op::Map(_) => {}
            Op::Skip(n) => skipped = skipped.saturating_add(*n),
            Op::Take(n) => return Some(skipped.saturating_add(*n)),
        }
    }
    None
}

enum Flow {
    Emit(Val),
    Skip,
    Stop,
}

pub(crate) fn cmp_keys(a: &Value, b: &Value, desc: &[bool]) -> Ordering {
    let (Value::Array(a), Value::Array(b)) = (a, b) else {
        return a.total_cmp(b);
    };
    for (i, (x, y)) in a.iter().zip(b).enumerate() {
        let o = x.total_cmp(y);
        let o = if desc.get(i).copied().unwrap_or(false) {
            o.reverse()
        } else {
            o
        };
        if o != Ordering::Equal {
            return o;
        }
    }
    a.len().cmp(&b.len())
}

fn b64(b: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
}

fn bad_cursor() -> Error {
    err(
        ErrorCode::InvalidArgument,
        "the cursor does not belong to this query",
    )
}

/// The set, started just after the element a cursor names.
fn resume(s: &SetQ, cursor: &str) -> Result<SetQ, Error> {
    let decode = |c: &str| {
        base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(c)
            .map_err(|_| bad_cursor())
    };
    let source = match (&s.source, cursor.split_at_checked(1)) {
        (
            Source::Scan {
                collection,
                index,
                range,
                reverse,
            },
            Some(("k", rest)),
        ) => {
            let key = decode(rest)?;
            if !range.contains(&key) {
                return Err(bad_cursor());
            }
            Source::Scan {
                collection: collection.clone(),
                index: index.clone(),
                range: if *reverse {
                    range.before(&key)
                } else {
                    range.after(&key)
                },
                reverse: *reverse,
            }
        }
        (Source::Sorted { items, desc }, Some(("s", rest))) => {
            let key = Value::decode(&decode(rest)?).map_err(|_| bad_cursor())?;
            let start =
                items.partition_point(|(_, k)| cmp_keys(k, &key, desc) != Ordering::Greater);
            Source::Sorted {
                items: Rc::new(items[start..].to_vec()),
                desc: desc.clone(),
            }
        }
        _ => return Err(bad_cursor()),
    };
    Ok(SetQ {
        source,
        ops: s.ops.clone(),
    })
}
