//! Sets: lazy queries over a collection or an index.
//!
//! A set is a source (a key range of a collection or an index, or a sorted list that
//! `order` produced) and a pipeline of operations (`where`, `map`, `skip`, `take`). It
//! is read page by page only when a terminal operation (`first`, `count`, `toArray`,
//! `paginate`, `forEach`, or returning it) needs it, so a `take(20)` over a million
//! documents reads about twenty, and every document read costs fuel.
//!
//! An entry of a partition the program may not read costs it nothing: no fuel, no
//! memory, no change to what it sees; it counts as hidden work instead
//! (`Limits::max_hidden_work`). A document of a collection scan is not even decoded
//! before its partition has been found readable.

use std::cmp::Ordering;
use std::ops::Bound;
use std::rc::Rc;

use base64::Engine as _;

use super::meter::{string_cost, Data, Paid, SLOT};
use super::{err, type_err, Closure, Evaluator, Owned, Val};
use crate::doc::StoredDoc;
use crate::error::{Error, ErrorCode};
use crate::keys;
use crate::lang::ast::IndexDecl;
use crate::schema::Collection;
use crate::storage::{KeyRange, Storage};
use crate::value::{Object, Value};

/// Documents read from storage per page.
const PAGE: usize = 64;
/// Bytes of a page kept while its elements are handed on: beyond, the rest of the page
/// is dropped and read again later. A sink can start another scan (a `forEach` that
/// queries), so each scan in progress holds its page; this bounds what they hold, and
/// entries the program may not read (which it does not pay for) with it.
const PAGE_BYTES: usize = 256 * 1024;
/// Scans in progress at once, one inside another's sink.
pub(crate) const MAX_NESTED_SCANS: u32 = 32;
/// Keys a `count()` from keys counts per step of fuel: counting a key reads no
/// document, decodes nothing and builds nothing, so it is charged as a small part of a
/// document read (which costs at least one step). With the default budget a query can
/// count up to 16,000,000 documents this way; a count that does read documents (a
/// filtered set, a transaction) still pays per document.
pub const COUNTED_KEYS_PER_STEP: u64 = 16;

/// An element of a sorted set and its cursor key.
pub(crate) type Sorted = (Val, Value);

#[derive(Debug)]
pub(crate) enum Source {
    /// A range of a collection's documents (`index: None`, in id order) or of an index.
    Scan {
        collection: String,
        index: Option<IndexScan>,
        range: KeyRange,
        reverse: bool,
    },
    /// The output of `order`: elements with their cursor keys, and the sort directions;
    /// the set starts at `start` (a cursor resumes it there without a copy).
    Sorted {
        items: Rc<Vec<Sorted>>,
        desc: Rc<Vec<bool>>,
        start: usize,
    },
}

/// A source and what the program paid for it.
#[derive(Debug)]
pub(crate) struct Held {
    source: Source,
    _paid: Paid,
}

#[derive(Clone, Debug)]
pub(crate) struct IndexScan {
    pub name: String,
    /// Length of the key prefix before the field values.
    pub prefix_len: usize,
    pub fields: usize,
    /// The equality prefix the set was made with.
    pub values: Rc<Vec<Value>>,
}

#[derive(Clone, Debug)]
pub(crate) enum Op {
    Where(Rc<Closure>),
    Map(Rc<Closure>),
    Skip(u64),
    Take(u64),
}

/// What one step of a pipeline takes to hold.
const OP_BYTES: u64 = 16;

#[derive(Debug)]
pub struct SetQ {
    pub(crate) source: Rc<Held>,
    pub(crate) ops: Vec<Op>,
    _paid: Paid,
}

/// Where an element came from, for pagination cursors.
pub(crate) enum At<'k> {
    Key(&'k [u8]),
    Sorted(&'k Value),
}

/// What a scan source holds: its range's bounds and the values of its prefix.
fn scan_bytes(range: &KeyRange, values: &[Value]) -> u64 {
    use std::ops::Bound;
    let b = |x: &Bound<Vec<u8>>| match x {
        Bound::Included(k) | Bound::Excluded(k) => k.len() as u64 + SLOT,
        Bound::Unbounded => 0,
    };
    4 * SLOT + b(&range.start) + b(&range.end) + values.iter().map(Value::mem_cost).sum::<u64>()
}

impl SetQ {
    /// A set over a source the program paid `paid` for (beyond the ranges).
    fn new(ev: &Evaluator, source: Source, mut paid: Paid) -> Result<SetQ, Error> {
        if let Source::Scan { range, .. } = &source {
            paid.more(scan_bytes(range, &[]))?;
        }
        Ok(SetQ {
            source: Rc::new(Held {
                source,
                _paid: paid,
            }),
            ops: Vec::new(),
            _paid: ev.pay(SLOT)?,
        })
    }

    pub(crate) fn collection(ev: &Evaluator, coll: &Collection) -> Result<SetQ, Error> {
        SetQ::new(
            ev,
            Source::Scan {
                collection: coll.name.clone(),
                index: None,
                range: KeyRange::prefix(&keys::collection_prefix(&coll.name)),
                reverse: false,
            },
            ev.pay(coll.name.len() as u64)?,
        )
    }

    /// A set over an index, with the values of its equality prefix (paid for: `paid`).
    pub(crate) fn index(
        ev: &Evaluator,
        coll: &Collection,
        index: &IndexDecl,
        values: Vec<Value>,
        mut paid: Paid,
    ) -> Result<SetQ, Error> {
        let prefix_len = keys::index_prefix(&coll.name, &index.name, &[]).len();
        // The prefix key is about as long as the values' encoding: paid before it is made.
        paid.more(
            values
                .iter()
                .map(|v| 2 * v.encoded_len() as u64 + 16)
                .sum::<u64>(),
        )?;
        let prefix = keys::index_prefix(&coll.name, &index.name, &values);
        SetQ::new(
            ev,
            Source::Scan {
                collection: coll.name.clone(),
                index: Some(IndexScan {
                    name: index.name.clone(),
                    prefix_len,
                    fields: index.fields.len(),
                    values: Rc::new(values),
                }),
                range: KeyRange::prefix(&prefix),
                reverse: false,
            },
            paid,
        )
    }

    /// This set with one more step; paid for, and fuel for the steps copied.
    fn with(ev: &mut Evaluator, s: &SetQ, op: Op) -> Result<Val, Error> {
        ev.charge(1 + s.ops.len() as u64 / 8)?;
        let paid = ev.pay(SLOT + OP_BYTES * (s.ops.len() as u64 + 1))?;
        let mut ops = Vec::with_capacity(s.ops.len() + 1);
        ops.extend(s.ops.iter().cloned());
        ops.push(op);
        Ok(Val::Set(Rc::new(SetQ {
            source: s.source.clone(),
            ops,
            _paid: paid,
        })))
    }

    fn src(&self) -> &Source {
        &self.source.source
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
    match v.value() {
        Some(Value::Int(n)) if *n >= 0 => Ok(*n as u64),
        _ => Err(err(
            ErrorCode::InvalidArgument,
            format!("{name} takes a count of zero or more, not {}", v.kind()),
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
                SetQ::with(self, s, Op::Where(closure(name, arg(0)?)?))?
            }
            "map" => {
                exact(1)?;
                SetQ::with(self, s, Op::Map(closure(name, arg(0)?)?))?
            }
            "take" => {
                exact(1)?;
                SetQ::with(self, s, Op::Take(count_arg(name, arg(0)?)?))?
            }
            "skip" => {
                exact(1)?;
                SetQ::with(self, s, Op::Skip(count_arg(name, arg(0)?)?))?
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
                    return Ok(Some(Val::int(n)));
                }
                let mut n = 0i64;
                self.drive_with(s, false, &mut |_, _, _| {
                    n += 1;
                    Ok(true)
                })?;
                Val::int(n)
            }
            "isEmpty" => {
                exact(0)?;
                let mut empty = true;
                self.drive_with(s, false, &mut |_, _, _| {
                    empty = false;
                    Ok(false)
                })?;
                Val::bool(empty)
            }
            "toArray" => {
                exact(0)?;
                let (o, n) = self.read_all_sized(s)?;
                Evaluator::hold_sized(o, n)
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
                // The elements are held until the sort ends: their slots are paid for.
                let mut paid = self.pay(SLOT)?;
                self.drive(s, &mut |ev, v, _| {
                    paid.more(2 * SLOT)?;
                    let _ = ev;
                    elems.push(v);
                    Ok(true)
                })?;
                let (items, desc) = self.sort(elems, &keys, &mut paid)?;
                Val::Set(Rc::new(SetQ::new(
                    self,
                    Source::Sorted {
                        items: Rc::new(items),
                        desc: Rc::new(desc),
                        start: 0,
                    },
                    paid,
                )?))
            }
            "reverse" => {
                exact(0)?;
                if !s.ops.is_empty() {
                    return Err(type_err(
                        "reverse() must come before where, map, skip and take",
                    ));
                }
                let (source, paid) = match s.src() {
                    Source::Scan {
                        collection,
                        index,
                        range,
                        reverse,
                    } => (
                        Source::Scan {
                            collection: collection.clone(),
                            index: index.clone(),
                            range: range.clone(),
                            reverse: !reverse,
                        },
                        self.pay(collection.len() as u64)?,
                    ),
                    Source::Sorted { items, desc, start } => {
                        // A reversed copy: the elements are shared, the keys copied.
                        let rest = &items[*start..];
                        let mut paid = self.pay(SLOT)?;
                        for (_, k) in rest {
                            paid.more(2 * SLOT + k.mem_cost())?;
                        }
                        (
                            Source::Sorted {
                                items: Rc::new(rest.iter().rev().cloned().collect()),
                                desc: Rc::new(desc.iter().map(|d| !d).collect()),
                                start: 0,
                            },
                            paid,
                        )
                    }
                };
                Val::Set(Rc::new(SetQ::new(self, source, paid)?))
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
                let cursor = match args.get(1).map(|a| (a, a.value())) {
                    None | Some((_, Some(Value::Null))) => None,
                    Some((_, Some(Value::String(c)))) => Some(c.clone()),
                    Some((other, _)) => {
                        return Err(err(
                            ErrorCode::InvalidArgument,
                            format!("a cursor is a string, not {}", other.kind()),
                        ))
                    }
                };
                let (o, n) = self.paginate(s, size, cursor)?;
                Evaluator::hold_sized(o, n)
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
        } = s.src()
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
        let b = self.data(bounds)?;
        let Value::Object(b) = b.value() else {
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
        // The bounds' keys, paid for before they are made.
        let mut paid = self.pay(
            b.values()
                .map(|v| 2 * v.encoded_len() as u64 + 64)
                .sum::<u64>()
                + ix.values
                    .iter()
                    .map(|v| 2 * v.encoded_len() as u64 + 16)
                    .sum::<u64>(),
        )?;
        let at = |v: &Value| {
            let mut vals = (*ix.values).clone();
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
        paid.more(collection.len() as u64)?;
        SetQ::new(
            self,
            Source::Scan {
                collection: collection.clone(),
                index: Some(ix.clone()),
                range: KeyRange { start, end },
                reverse: *reverse,
            },
            paid,
        )
    }

    /// Sorts elements by key functions; ties keep their order, then break by the
    /// element's id (documents) so that cursors are exact. The keys are paid into
    /// `paid`, which the sorted source keeps.
    fn sort(
        &mut self,
        elems: Vec<Val>,
        keys: &[Rc<Closure>],
        paid: &mut Paid,
    ) -> Result<(Vec<Sorted>, Vec<bool>), Error> {
        // One direction per key, and one for the tie-break, so that reverse() can flip
        // the whole order and cursors still find their place.
        let mut desc = vec![false; keys.len() + 1];
        let mut keyed = Vec::with_capacity(elems.len());
        for (n, v) in elems.into_iter().enumerate() {
            let mut ks = Vec::with_capacity(keys.len() + 1);
            paid.more(SLOT * (keys.len() as u64 + 2))?;
            for (i, f) in keys.iter().enumerate() {
                let k = match self.call_closure(f, vec![v.clone()])? {
                    Val::Order { key, desc: d } => {
                        desc[i] = d;
                        Val::Data(key)
                    }
                    other => other,
                };
                let k = self.own(k)?;
                paid.absorb(k.paid)?;
                ks.push(k.value);
            }
            let tie = match &v {
                Val::Doc(d) => {
                    paid.more(d.id.len() as u64)?;
                    Value::String(d.id.clone())
                }
                _ => Value::Int(n as i64),
            };
            ks.push(tie);
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
        } = s.src()
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
        let paid = self.pay(collection.len() as u64)?;
        SetQ::new(
            self,
            Source::Scan {
                collection: collection.clone(),
                index: Some(ix.clone()),
                range: range.clone(),
                reverse: direction == Some(true),
            },
            paid,
        )
        .map(Some)
    }

    /// `count()` of a whole collection in a query, from keys alone: the `V` space
    /// lists every partition the collection has documents in, and no document is read
    /// or decoded. When the read rule allows every one of them (a client's replica holds
    /// only what it may read), the collection's document keys (`D coll`) are counted in
    /// one go; otherwise, from the first partition the rule hides on, each readable
    /// partition's membership keys (`P partition coll`) are counted, the ones passed
    /// before it included. A store may count a range without reading it, as IndexedDB
    /// does. The answer is the scan's (the documents the caller may read); the fuel is
    /// one per readable partition, plus one per [`COUNTED_KEYS_PER_STEP`] documents of
    /// the total (rounded up), the same on both ways: what the caller may not read
    /// changes neither the answer nor the fuel.
    /// Queries only: transactions run on the server too, where the partitions are all
    /// of everyone's, so there they keep the scan, charged per document.
    fn count_collection(&mut self, s: &SetQ) -> Result<Option<i64>, Error> {
        let Source::Scan {
            collection,
            index: None,
            range,
            ..
        } = s.src()
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
        let versions = KeyRange::prefix(&[keys::SPACE_VERSION]);
        let mut total = 0u64;
        // Until a partition is hidden, the readable ones are only noted (`any`): the
        // collection's keys count them all at the end.
        let mut whole = true;
        let mut any = false;
        let mut next = Some(versions.clone());
        while let Some(r) = next {
            let (page, rest) = self.view.scan_page(&r, false, PAGE)?;
            next = rest;
            for (k, _) in page {
                let (p, c) = keys::parse_version_key(&k)?;
                if c != *collection {
                    self.charge(1)?;
                    continue;
                }
                // A partition the caller may not read costs it nothing it can see.
                if !self.can_read(coll, &p)? {
                    self.hidden_work(1)?;
                    if self.explain.is_some() {
                        // Explaining only: how many the partition hid (no fuel spent).
                        let n = self.view.count(&members_of(&p, collection), u64::MAX)?;
                        if let Some(x) = &mut self.explain {
                            x.invisible(collection, n);
                        }
                    }
                    if whole {
                        // The readable partitions passed so far, one by one (their
                        // keys were paid for when they were passed).
                        whole = false;
                        let before = KeyRange {
                            start: versions.start.clone(),
                            end: Bound::Excluded(k.clone()),
                        };
                        let mut next = Some(before);
                        while let Some(r) = next {
                            let (page, rest) = self.view.scan_page(&r, false, PAGE)?;
                            next = rest;
                            for (k, _) in page {
                                let (p, c) = keys::parse_version_key(&k)?;
                                if c == *collection {
                                    total = self.count_more(total, &members_of(&p, collection))?;
                                }
                            }
                        }
                    }
                    continue;
                }
                self.charge(1)?;
                if whole {
                    any = true;
                } else {
                    total = self.count_more(total, &members_of(&p, collection))?;
                }
            }
        }
        if whole && any {
            total = self.count_more(total, range)?;
        }
        Ok(Some(total as i64))
    }

    /// `total` plus the keys in `range`, paying one step per [`COUNTED_KEYS_PER_STEP`]
    /// of the running total: counting stops once the count is more than the fuel left
    /// can pay for.
    fn count_more(&mut self, total: u64, range: &KeyRange) -> Result<u64, Error> {
        // What the fuel left pays for, and what the last step paid already covers.
        let paid_ahead = total.next_multiple_of(COUNTED_KEYS_PER_STEP) - total;
        let limit = self
            .fuel
            .saturating_mul(COUNTED_KEYS_PER_STEP)
            .saturating_add(paid_ahead)
            .saturating_add(1);
        let n = self.view.count(range, limit)?;
        if n == limit {
            // Cut short: more than the fuel left pays for, whatever the total's rounding.
            self.charge(u64::MAX)?;
        }
        let after = total.saturating_add(n);
        self.charge(after.div_ceil(COUNTED_KEYS_PER_STEP) - total.div_ceil(COUNTED_KEYS_PER_STEP))?;
        Ok(after)
    }

    /// A page of the set, and the length of its encoding.
    fn paginate(
        &mut self,
        s: &Rc<SetQ>,
        size: u64,
        cursor: Option<String>,
    ) -> Result<(Owned, u64), Error> {
        let resumed: Rc<SetQ> = match cursor {
            None => s.clone(),
            Some(c) => Rc::new(self.resume(s, &c)?),
        };
        let mut data = Vec::new();
        let mut paid = self.pay(2 * SLOT + crate::value::MEM_OBJECT + 2 * 112)?;
        // Where the last element stands (`k` and its key, or `s` and its encoded sort
        // value): the page's cursor is made of it once, at the end. Each element pays
        // for the cursor it would make, as if it were the last.
        let mut last: Option<(char, Vec<u8>)> = None;
        let mut more = false;
        self.drive(&resumed, &mut |ev, v, at| {
            if data.len() as u64 == size {
                more = true;
                return Ok(false);
            }
            let v = ev.own(v)?;
            paid.absorb(v.paid)?;
            data.push(v.value);
            let cursor_len = match at {
                At::Key(k) => 1 + k.len().div_ceil(3) * 4,
                At::Sorted(v) => 1 + (v.encoded_len()).div_ceil(3) * 4,
            };
            let _cursor = ev.pay(string_cost(cursor_len as u64))?;
            let (tag, bytes) = last.get_or_insert_with(|| ('k', Vec::new()));
            bytes.clear();
            match at {
                At::Key(k) => {
                    *tag = 'k';
                    bytes.extend_from_slice(k);
                }
                At::Sorted(v) => {
                    *tag = 's';
                    v.encode_into(bytes);
                }
            }
            Ok(true)
        })?;
        let last = last.map(|(tag, bytes)| format!("{tag}{}", b64(&bytes)));
        if let Some(c) = &last {
            paid.more(c.len() as u64)?;
        }
        let page = Value::Array(data);
        let page_len = self.check_built(&page)?;
        // The page's object measured around an empty array, then the page put in: its
        // encoding is the empty one's with the page's in place of the empty array's.
        let mut o = Object::new();
        o.insert("data", Value::Array(Vec::new()));
        o.insert(
            "after",
            match (more, last) {
                (true, Some(c)) => Value::String(c),
                _ => Value::Null,
            },
        );
        let shell = Value::Object(o);
        let len =
            shell.encoded_len() as u64 - Value::Array(Vec::new()).encoded_len() as u64 + page_len;
        let Value::Object(mut o) = shell else {
            unreachable!("made an object above")
        };
        o.insert("data", page);
        Ok((
            Owned {
                value: Value::Object(o),
                paid,
            },
            len,
        ))
    }

    /// Reads a set to the end into an array, paying for each element as it arrives and
    /// stopping at the size limit rather than after it.
    pub(crate) fn read_all(&mut self, s: &SetQ) -> Result<Owned, Error> {
        self.read_all_sized(s).map(|(o, _)| o)
    }

    /// [`Evaluator::read_all`], and the length of the array's encoding.
    fn read_all_sized(&mut self, s: &SetQ) -> Result<(Owned, u64), Error> {
        let mut out = Vec::new();
        let mut paid = self.pay(SLOT)?;
        let mut size = 0usize;
        let limit = self.limits.max_value_bytes;
        self.drive(s, &mut |ev, v, _| {
            let v = ev.own(v)?;
            let n = v.value.encoded_len();
            size += n;
            if size > limit {
                return Err(err(
                    ErrorCode::ResultTooLarge,
                    format!("a set grew past {limit} bytes as it was read"),
                ));
            }
            ev.charge(n as u64 / 64)?;
            paid.absorb(v.paid)?;
            out.push(v.value);
            Ok(true)
        })?;
        let v = Value::Array(out);
        let n = self.check_built(&v)?;
        Ok((Owned { value: v, paid }, n))
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
        match s.src() {
            Source::Sorted { items, start, .. } => {
                for (v, key) in &items[*start..] {
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
                if self.scans >= MAX_NESTED_SCANS {
                    return Err(err(
                        ErrorCode::DepthExceeded,
                        format!("more than {MAX_NESTED_SCANS} scans run one inside another"),
                    ));
                }
                self.scans += 1;
                let scan = Scan {
                    collection,
                    index: index.as_ref(),
                    range,
                    reverse: *reverse,
                };
                let r = self.drive_scan(&scan, &s.ops, need_docs, &mut counts, sink);
                self.scans -= 1;
                r
            }
        }
    }

    fn drive_scan(
        &mut self,
        scan: &Scan,
        ops: &[Op],
        need_docs: bool,
        counts: &mut [u64],
        sink: &mut dyn FnMut(&mut Evaluator<'a>, Val, At) -> Result<bool, Error>,
    ) -> Result<(), Error> {
        let Scan {
            collection,
            index,
            range,
            reverse,
        } = *scan;
        let coll = self.schema.collection(collection)?;
        if let Some(r) = &mut self.reads {
            r.collections.insert(collection.to_owned());
        }
        // How many elements of the source a `skip`/`take` pipeline can use, at most:
        // pages then ask for no more than that (and one more, to see the end), so a
        // store that loads what a scan asks for loads about `take + 1` entries.
        let mut wanted = wanted(ops);
        let mut next = Some(range.clone());
        while let Some(r) = next {
            let size = wanted.map_or(PAGE, |w| (w + 1).min(PAGE as u64) as usize);
            let (mut page, rest) = self.view.scan_page(&r, reverse, size)?;
            next = rest;
            // Keep at most PAGE_BYTES (and one entry) of the page.
            let mut bytes = 0;
            if let Some(keep) = page.iter().position(|(k, v)| {
                bytes += k.len() + v.len();
                bytes > PAGE_BYTES
            }) {
                let keep = keep.max(1);
                if keep < page.len() {
                    let last = &page[keep - 1].0;
                    next = Some(if reverse {
                        r.before(last)
                    } else {
                        r.after(last)
                    });
                    page.truncate(keep);
                }
            }
            for (k, v) in page {
                if let Some(w) = &mut wanted {
                    *w = w.saturating_sub(1);
                }
                // The pipeline's closures may write: an entry this transaction wrote
                // since the page was read is read as it is now, and one it removed
                // (a document deleted, or moved out of the index's range) is passed
                // over, on every store alike (docs/LANGUAGE.md, "Writing while a
                // scan runs").
                let v = if self.view.has_write(&k) {
                    match self.view.get(&k)? {
                        Some(now) => now,
                        None => continue,
                    }
                } else {
                    v
                };
                let elem = match index {
                    None => {
                        // The partition first: an unreadable document is not
                        // decoded, and costs the program nothing.
                        if !self.can_read(coll, StoredDoc::partition_of(&v)?)? {
                            self.hidden_work(1 + v.len() as u64 / 1024)?;
                            if let Some(x) = &mut self.explain {
                                x.invisible(collection, 1);
                            }
                            continue;
                        }
                        self.charge(1 + v.len() as u64 / 1024)?;
                        let mut pos = 1;
                        keys::read_str(&k, &mut pos)?;
                        let id = keys::read_str(&k, &mut pos)?;
                        Val::Doc(Rc::new(self.decode_doc(coll, &id, &v)?))
                    }
                    Some(ix) => {
                        let partition = std::str::from_utf8(&v)
                            .map_err(|_| Error::new(ErrorCode::Corrupt, "bad index entry"))?;
                        if !self.can_read(coll, partition)? {
                            self.hidden_work(1 + v.len() as u64 / 1024)?;
                            if let Some(x) = &mut self.explain {
                                x.invisible(collection, 1);
                            }
                            continue;
                        }
                        self.charge(1 + v.len() as u64 / 1024)?;
                        if need_docs {
                            let id = keys::index_key_id(&k, ix.prefix_len, ix.fields)?;
                            let key = keys::doc_key(collection, &id);
                            let Some(bytes) = self.view.get(&key)? else {
                                // A store that loads lazily has recorded the read as a
                                // miss, and this run will be repeated once it is
                                // loaded: go on, so that the other documents the scan
                                // needs are loaded with it (one load, not one each).
                                if self.view.is_partial() {
                                    continue;
                                }
                                return Err(Error::new(
                                    ErrorCode::Corrupt,
                                    format!("index {} names missing document {id}", ix.name),
                                ));
                            };
                            self.charge(bytes.len() as u64 / 1024)?;
                            Val::Doc(Rc::new(self.decode_doc(coll, &id, &bytes)?))
                        } else {
                            Val::NULL
                        }
                    }
                };
                match self.pipeline(ops, counts, elem)? {
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
                    self.charge(1)?;
                    if counts[i] < *n {
                        counts[i] += 1;
                        return Ok(Flow::Skip);
                    }
                }
                Op::Take(n) => {
                    self.charge(1)?;
                    if counts[i] >= *n {
                        return Ok(Flow::Stop);
                    }
                    counts[i] += 1;
                }
            }
        }
        Ok(Flow::Emit(v))
    }

    /// The set, started just after the element a cursor names.
    fn resume(&mut self, s: &SetQ, cursor: &str) -> Result<SetQ, Error> {
        let decode = |c: &str| {
            base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(c)
                .map_err(|_| bad_cursor())
        };
        let (source, paid) = match (s.src(), cursor.split_at_checked(1)) {
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
                (
                    Source::Scan {
                        collection: collection.clone(),
                        index: index.clone(),
                        range: if *reverse {
                            range.before(&key)
                        } else {
                            range.after(&key)
                        },
                        reverse: *reverse,
                    },
                    self.pay(collection.len() as u64 + key.len() as u64)?,
                )
            }
            (Source::Sorted { items, desc, start }, Some(("s", rest))) => {
                let key = Value::decode(&decode(rest)?).map_err(|_| bad_cursor())?;
                let at = *start
                    + items[*start..]
                        .partition_point(|(_, k)| cmp_keys(k, &key, desc) != Ordering::Greater);
                (
                    Source::Sorted {
                        items: items.clone(),
                        desc: desc.clone(),
                        start: at,
                    },
                    self.pay(SLOT)?,
                )
            }
            _ => return Err(bad_cursor()),
        };
        let mut r = SetQ::new(self, source, paid)?;
        r.ops = s.ops.clone();
        Ok(r)
    }
}

/// A scan source's parts, borrowed while it is read.
struct Scan<'s> {
    collection: &'s str,
    index: Option<&'s IndexScan>,
    range: &'s KeyRange,
    reverse: bool,
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
    cmp_lists(a.iter(), b.iter(), a.len(), b.len(), desc)
}

/// [`cmp_keys`] of keys held as data.
pub(crate) fn cmp_key_lists(a: &[Data], b: &[Data], desc: &[bool]) -> Ordering {
    cmp_lists(
        a.iter().map(Data::value),
        b.iter().map(Data::value),
        a.len(),
        b.len(),
        desc,
    )
}

fn cmp_lists<'v>(
    a: impl Iterator<Item = &'v Value>,
    b: impl Iterator<Item = &'v Value>,
    la: usize,
    lb: usize,
    desc: &[bool],
) -> Ordering {
    for (i, (x, y)) in a.zip(b).enumerate() {
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
    la.cmp(&lb)
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

/// A partition's membership keys of one collection: `P partition coll`.
fn members_of(partition: &str, collection: &str) -> KeyRange {
    let mut members = keys::partition_prefix(partition);
    keys::push_str(&mut members, collection);
    KeyRange::prefix(&members)
}
