//! The read-rule index: which partitions a read rule may allow, found without evaluating
//! the rule for every partition.
//!
//! A connection's catch-up (and each write to a partition nobody has seen yet) must
//! decide which partitions its client may read. Evaluating every collection's read rule
//! for every partition costs what the region holds, not what the user may read: one
//! user creating 20,000 partitions would slow every other user's catch-up. So the
//! schema's read rules are analysed once ([`Reach::of`]) into the forms below, and for
//! one set of claims ([`Reach::reachable`]) they name the **candidate** partitions: a
//! superset of what the rules allow. Only candidates are evaluated, with the rule
//! itself; a partition that is not a candidate is one the rule cannot allow.
//!
//! A rule is split into clauses at its top-level `||` (and several `allow read` rules
//! are clauses too), each clause into conjuncts at its top-level `&&`. A clause is
//! true only if each of its conjuncts is, so one conjunct that pins the partition pins
//! the clause. The forms, for a collection `c`:
//!
//! | form | a clause with a conjunct like | candidates |
//! |---|---|---|
//! | exact | `partition == "user:" + auth.sub` (the right side depends only on `auth`) | the one partition it names |
//! | prefix | `partition.startsWith(auth.sub + ":")` (the argument depends only on `auth`) | the partitions of `c` that start with the string it gives |
//! | listed | `auth.teams.includes(partition.slice(5))`, or `...includes(partition)` (the list depends only on `auth`) | `P + s` for each string `s` of the list, `P` as for membership; every partition of `c` if the list is a string (`includes` is then a substring's) |
//! | membership | `Team.byId(partition.slice(5))?.members?.includes(auth.sub) == true`, or `...?.admin == auth.sub` | `P + d.id` for each `Team` document `d` whose `members` holds (or `admin` equals) the value, where `P` is the literal prefix of `c`'s partition expression (`"team:" + ...`) and has 5 characters |
//! | uniform | the clause does not mention `partition` and depends only on `auth` and `collection` (`auth.role == "admin"`, `true`) | every partition of `c` if it holds, none if not |
//! | single | `c` has no partition expression | its one partition, named after it |
//!
//! A call of a schema function is analysed as the function's body, its parameters and
//! `let`s substituted ([`inline`]), so `isMember(partition.slice(5))` is a membership
//! when `isMember` reads the team's member list. A clause of none of these forms (it
//! calls a function with an `if` or a lambda, reads documents in another way, ...)
//! makes `c` **everywhere**: every partition of `c` is a candidate,
//! as before the index. [`Reach::unindexed`] lists those collections, and the server
//! says so when it starts.
//!
//! Membership needs a lookup from a value to the documents holding it: the **member
//! index**, kept by the server in its state (`L` keys, [`Reach::member_ops`]) next to
//! the documents, so a read view sees it at the same position as the data. Its layout
//! is in `docs/STORAGE.md`. A string field that `includes` is asked of (substring, not
//! element) cannot be looked up by value: such documents are listed apart and
//! checked one by one.

use std::collections::{BTreeMap, BTreeSet};

use crate::doc::StoredDoc;
use crate::error::Error;
use crate::eval::{Context, Evaluator, Limits, Mode};
use crate::exec::Write;
use crate::keys;
use crate::lang::ast::{Action, BinOp, Expr, ExprKind, FunctionDecl, Stmt};
use crate::lang::is_builtin;
use crate::lang::parser::MAX_TREE_HEIGHT;
use crate::schema::Schema;
use crate::storage::{scan_all, BatchOp, KeyRange, Storage};
use crate::value::Value;

/// How a membership conjunct compares the document's field with the claim's value.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Match {
    /// `field.includes(value)`: an array holding it, or a string containing it.
    Includes,
    /// `field == value`.
    Equals,
}

impl Match {
    fn tag(self) -> u8 {
        match self {
            Match::Includes => b'i',
            Match::Equals => b'e',
        }
    }
}

/// A member index: documents of `source` by the value(s) at `path`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct MemberSpec {
    pub source: String,
    pub path: Vec<String>,
    pub how: Match,
}

#[derive(Debug)]
enum Clause {
    Exact(Expr),
    Prefix(Expr),
    Listed {
        list: Expr,
        prefix: String,
    },
    Uniform(Expr),
    Member {
        spec: usize,
        prefix: String,
        key: Expr,
    },
}

#[derive(Debug)]
enum CollReach {
    Single,
    /// Each clause, and whether schema functions were inlined into its rule.
    Clauses(Vec<(Clause, bool)>),
    Everywhere(String),
}

/// A schema's read rules, analysed (see the module documentation).
#[derive(Debug)]
pub struct Reach {
    colls: BTreeMap<String, CollReach>,
    specs: Vec<MemberSpec>,
}

/// One membership clause as one user's claims answer it: the documents of the spec
/// whose field holds `key` name partitions `prefix + id` of `collections`.
#[derive(Clone, Debug, PartialEq)]
pub struct MemberKey {
    /// `key` in the order-preserving encoding (how the member index and routes key it).
    pub encoded: Vec<u8>,
    pub spec: usize,
    pub key: Value,
    pub prefix: String,
    pub collections: BTreeSet<String>,
}

/// What one set of claims may reach: the candidates of [`Reach`] for them.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Reachable {
    /// Partitions named exactly, by collection.
    pub exact: BTreeMap<String, BTreeSet<String>>,
    /// Prefixes every partition of a candidate starts with, by collection.
    pub prefixes: BTreeMap<String, BTreeSet<String>>,
    /// Collections whose every partition is a candidate.
    pub everywhere: BTreeSet<String>,
    pub members: Vec<MemberKey>,
}

/// The last step of a chain `recv.name` / `recv?.name`, for matching.
fn field_chain<'e>(mut e: &'e Expr, path: &mut Vec<String>) -> &'e Expr {
    while let ExprKind::Field { recv, name, .. } = &e.kind {
        path.push(name.clone());
        e = recv;
    }
    path.reverse();
    e
}

/// `Coll.byId(partition)` or `Coll.byId(partition.slice(n))`: (Coll, n).
fn by_partition_id(e: &Expr, schema: &Schema) -> Option<(String, usize)> {
    let ExprKind::Method {
        recv, name, args, ..
    } = &e.kind
    else {
        return None;
    };
    let ExprKind::Var(coll) = &recv.kind else {
        return None;
    };
    if name != "byId" || args.len() != 1 || !schema.collections.contains_key(coll) {
        return None;
    }
    Some((coll.clone(), partition_slice(&args[0])?))
}

/// Whether `e` depends on nothing but `auth` (and `collection` when allowed): literals,
/// operators, field access and built-ins, no documents, no schema functions, no
/// bindings.
fn claims_only(e: &Expr, schema: &Schema, collection_ok: bool) -> bool {
    let ok = |x: &Expr| claims_only(x, schema, collection_ok);
    match &e.kind {
        ExprKind::Lit(_) => true,
        ExprKind::Var(v) => v == "auth" || (collection_ok && v == "collection"),
        ExprKind::Array(xs) => xs.iter().all(ok),
        ExprKind::Object(kv) => kv.iter().all(|(_, x)| ok(x)),
        ExprKind::Field { recv, .. } => ok(recv),
        ExprKind::Index { recv, index } => ok(recv) && ok(index),
        ExprKind::Call { name, args } => {
            is_builtin(name)
                && !schema.functions.contains_key(name)
                && !matches!(name.as_str(), "newId" | "abort")
                && args.iter().all(ok)
        }
        ExprKind::Method { recv, args, .. } => ok(recv) && args.iter().all(ok),
        ExprKind::Unary(_, a) => ok(a),
        ExprKind::Binary(_, a, b)
        | ExprKind::And(a, b)
        | ExprKind::Or(a, b)
        | ExprKind::Coalesce(a, b) => ok(a) && ok(b),
        ExprKind::If { .. } | ExprKind::Lambda(_) | ExprKind::Block(_) => false,
    }
}

fn mentions_partition(e: &Expr) -> bool {
    match &e.kind {
        ExprKind::Lit(_) => false,
        ExprKind::Var(v) => v == "partition",
        ExprKind::Array(xs) => xs.iter().any(mentions_partition),
        ExprKind::Object(kv) => kv.iter().any(|(_, x)| mentions_partition(x)),
        ExprKind::Field { recv, .. } => mentions_partition(recv),
        ExprKind::Index { recv, index } => mentions_partition(recv) || mentions_partition(index),
        ExprKind::Call { args, .. } => args.iter().any(mentions_partition),
        ExprKind::Method { recv, args, .. } => {
            mentions_partition(recv) || args.iter().any(mentions_partition)
        }
        ExprKind::Unary(_, a) => mentions_partition(a),
        ExprKind::Binary(_, a, b)
        | ExprKind::And(a, b)
        | ExprKind::Or(a, b)
        | ExprKind::Coalesce(a, b) => mentions_partition(a) || mentions_partition(b),
        // Conservative: anything with bindings may mention it.
        ExprKind::If { .. } | ExprKind::Lambda(_) | ExprKind::Block(_) => true,
    }
}

fn split_or<'e>(e: &'e Expr, out: &mut Vec<&'e Expr>) {
    match &e.kind {
        ExprKind::Or(a, b) => {
            split_or(a, out);
            split_or(b, out);
        }
        _ => out.push(e),
    }
}

fn split_and<'e>(e: &'e Expr, out: &mut Vec<&'e Expr>) {
    match &e.kind {
        ExprKind::And(a, b) => {
            split_and(a, out);
            split_and(b, out);
        }
        _ => out.push(e),
    }
}

fn is_var(e: &Expr, name: &str) -> bool {
    matches!(&e.kind, ExprKind::Var(v) if v == name)
}

/// The prefix of `n` characters that `partition.slice(n)` strips: none for 0, else the
/// partition expression's literal prefix if it has `n` characters.
fn literal_prefix(pexpr: &Expr, n: usize) -> Option<String> {
    if n == 0 {
        return Some(String::new());
    }
    partition_prefix(pexpr).filter(|p| p.chars().count() == n)
}

/// `partition` or `partition.slice(n)`: `n`.
fn partition_slice(e: &Expr) -> Option<usize> {
    match &e.kind {
        ExprKind::Var(v) if v == "partition" => Some(0),
        ExprKind::Method {
            recv,
            name,
            args,
            optional: false,
        } if name == "slice" && args.len() == 1 && is_var(recv, "partition") => match &args[0].kind
        {
            ExprKind::Lit(Value::Int(n)) if *n >= 0 => usize::try_from(*n).ok(),
            _ => None,
        },
        _ => None,
    }
}

/// `E.includes(partition)` or `E.includes(partition.slice(n))` (optionally `== true`):
/// (`E`, `n`).
fn listed_partition(e: &Expr) -> Option<(&Expr, usize)> {
    match &strip_eq_true(e).kind {
        ExprKind::Method {
            recv, name, args, ..
        } if name == "includes" && args.len() == 1 => Some((recv, partition_slice(&args[0])?)),
        _ => None,
    }
}

/// `x == true` or `true == x`: `x`; anything else as it is.
fn strip_eq_true(e: &Expr) -> &Expr {
    match &e.kind {
        ExprKind::Binary(BinOp::Eq, a, b) if matches!(b.kind, ExprKind::Lit(Value::Bool(true))) => {
            a
        }
        ExprKind::Binary(BinOp::Eq, a, b) if matches!(a.kind, ExprKind::Lit(Value::Bool(true))) => {
            b
        }
        _ => e,
    }
}

/// `partition.startsWith(E)` (optionally `== true`): `E`.
fn starts_with_partition(e: &Expr) -> Option<&Expr> {
    match &strip_eq_true(e).kind {
        ExprKind::Method {
            recv,
            name,
            args,
            optional: false,
        } if name == "startsWith" && args.len() == 1 && is_var(recv, "partition") => Some(&args[0]),
        _ => None,
    }
}

/// The literal prefix every partition of a collection starts with: `"team:" + ...`.
fn partition_prefix(partition: &Expr) -> Option<String> {
    match &partition.kind {
        ExprKind::Binary(BinOp::Add, a, _) => match &a.kind {
            ExprKind::Lit(Value::String(s)) => Some(s.clone()),
            _ => partition_prefix(a),
        },
        _ => None,
    }
}

/// How many calls deep schema functions are inlined into a read rule.
const INLINE_DEPTH: u32 = 4;

/// The most nodes a function's inlined value (or one of its `let`s) may have: a
/// parameter used many times, in functions calling one another, would otherwise grow the
/// analysed rule exponentially. Past it the call is left as it is.
const INLINE_NODES: u32 = 2_000;

/// Whether `e` has at most [`INLINE_NODES`] nodes.
fn fits(e: &Expr) -> bool {
    let mut left = INLINE_NODES;
    small(e, &mut left)
}

/// Whether `e` has at most `left` nodes (an `if`, a lambda or a block counts as one).
fn small(e: &Expr, left: &mut u32) -> bool {
    if *left == 0 {
        return false;
    }
    *left -= 1;
    let kids: Vec<&Expr> = match &e.kind {
        ExprKind::Lit(_)
        | ExprKind::Var(_)
        | ExprKind::If { .. }
        | ExprKind::Lambda(_)
        | ExprKind::Block(_) => Vec::new(),
        ExprKind::Array(xs) | ExprKind::Call { args: xs, .. } => xs.iter().collect(),
        ExprKind::Object(kv) => kv.iter().map(|(_, x)| x).collect(),
        ExprKind::Field { recv, .. } | ExprKind::Unary(_, recv) => vec![&**recv],
        ExprKind::Method { recv, args, .. } => std::iter::once(&**recv).chain(args).collect(),
        ExprKind::Index { recv: a, index: b }
        | ExprKind::Binary(_, a, b)
        | ExprKind::And(a, b)
        | ExprKind::Or(a, b)
        | ExprKind::Coalesce(a, b) => vec![&**a, &**b],
    };
    kids.into_iter().all(|x| small(x, left))
}

/// `e` with each call of a schema function replaced by the function's value, where the
/// function's body is `let`s and then one expression and none of them holds a lambda, an
/// `if` or a block: the parameters and `let`s are substituted in it (several calls deep,
/// at most [`INLINE_DEPTH`]). So `isMember(partition.slice(5))`, with `isMember` the
/// documentation's `let t = Team.byId(team)` then `t != null && t.members.includes(
/// auth.sub)`, is analysed as the membership it is. A call that cannot be inlined stays
/// as it is, and makes its clause of no form, as before.
///
/// The inlined rule is only analysed, never evaluated in place of the rule: where it and
/// the call differ (the call failing on a parameter's type, say, or a body naming
/// something only the rule's scope has), the call is false and allows nothing, so the
/// candidates remain a superset of what the rule allows. The one way an inlined part
/// could name less than the call allows, failing where the call would not (out of fuel,
/// its parameters copied), makes every partition a candidate ([`Reach::reachable`]).
fn inline(e: &Expr, schema: &Schema, depth: u32) -> Expr {
    if let ExprKind::If { .. } | ExprKind::Lambda(_) | ExprKind::Block(_) = &e.kind {
        return e.clone();
    }
    let Some(out) = rebuild(e, &mut |x| Some(inline(x, schema, depth))) else {
        return e.clone();
    };
    if let ExprKind::Call { name, args } = &out.kind {
        if let Some(f) = schema.functions.get(name).filter(|_| depth > 0) {
            if let Some(body) = Reach::substituted(f, args) {
                return inline(&body, schema, depth - 1);
            }
        }
    }
    out
}

/// `e` with the names of `env` replaced by their expressions; `None` if it holds a
/// lambda, an `if` or a block (whose own names could capture), calls a name of `env`,
/// or grows higher than a parsed tree may be.
fn substitute(e: &Expr, env: &BTreeMap<&str, Expr>) -> Option<Expr> {
    match &e.kind {
        ExprKind::Var(v) => Some(env.get(v.as_str()).cloned().unwrap_or_else(|| e.clone())),
        ExprKind::Call { name, .. } if env.contains_key(name.as_str()) => None,
        _ => rebuild(e, &mut |x| substitute(x, env)),
    }
}

/// `e` with each child replaced by `f`'s answer for it: `None` if `f` gives none for
/// one, if `e` is an `if`, a lambda or a block (their children are not all
/// expressions), or if the result is higher than a parsed tree may be.
fn rebuild(e: &Expr, f: &mut dyn FnMut(&Expr) -> Option<Expr>) -> Option<Expr> {
    fn all(xs: &[Expr], f: &mut dyn FnMut(&Expr) -> Option<Expr>) -> Option<Vec<Expr>> {
        xs.iter().map(f).collect()
    }
    let mut b = |x: &Expr| f(x).map(Box::new);
    let kind = match &e.kind {
        ExprKind::Lit(_) | ExprKind::Var(_) => return Some(e.clone()),
        ExprKind::If { .. } | ExprKind::Lambda(_) | ExprKind::Block(_) => return None,
        ExprKind::Array(xs) => ExprKind::Array(all(xs, f)?),
        ExprKind::Object(kv) => ExprKind::Object(
            kv.iter()
                .map(|(k, x)| Some((k.clone(), *b(x)?)))
                .collect::<Option<_>>()?,
        ),
        ExprKind::Field {
            recv,
            name,
            optional,
        } => ExprKind::Field {
            recv: b(recv)?,
            name: name.clone(),
            optional: *optional,
        },
        ExprKind::Index { recv, index } => ExprKind::Index {
            recv: b(recv)?,
            index: b(index)?,
        },
        ExprKind::Call { name, args } => ExprKind::Call {
            name: name.clone(),
            args: all(args, f)?,
        },
        ExprKind::Method {
            recv,
            name,
            args,
            optional,
        } => ExprKind::Method {
            recv: b(recv)?,
            name: name.clone(),
            args: all(args, f)?,
            optional: *optional,
        },
        ExprKind::Unary(op, a) => ExprKind::Unary(*op, b(a)?),
        ExprKind::Binary(op, x, y) => ExprKind::Binary(*op, b(x)?, b(y)?),
        ExprKind::And(x, y) => ExprKind::And(b(x)?, b(y)?),
        ExprKind::Or(x, y) => ExprKind::Or(b(x)?, b(y)?),
        ExprKind::Coalesce(x, y) => ExprKind::Coalesce(b(x)?, b(y)?),
    };
    let out = Expr::new(kind, e.pos);
    (out.height <= MAX_TREE_HEIGHT).then_some(out)
}

impl Reach {
    /// Analyses a schema's read rules.
    pub fn of(schema: &Schema) -> Reach {
        let mut specs: Vec<MemberSpec> = Vec::new();
        let mut colls = BTreeMap::new();
        for (name, coll) in &schema.collections {
            let reach = match &coll.partition {
                None => CollReach::Single,
                Some(pexpr) => {
                    let mut clauses = Vec::new();
                    let mut everywhere = None;
                    for rule in coll.rules.get(&Action::Read).into_iter().flatten() {
                        let expr = inline(&rule.expr, schema, INLINE_DEPTH);
                        let inlined = expr != rule.expr;
                        let mut ors = Vec::new();
                        split_or(&expr, &mut ors);
                        for clause in ors {
                            match Self::clause(clause, schema, pexpr, &mut specs) {
                                Some(c) => clauses.push((c, inlined)),
                                None => {
                                    everywhere = Some(format!(
                                        "its read rule at {} is not of a form the index knows",
                                        rule.pos
                                    ));
                                }
                            }
                        }
                    }
                    match everywhere {
                        Some(why) => CollReach::Everywhere(why),
                        None => CollReach::Clauses(clauses),
                    }
                }
            };
            colls.insert(name.clone(), reach);
        }
        Reach { colls, specs }
    }

    /// The value of a call of `f` with `args`, as one expression (see [`inline`]).
    fn substituted(f: &FunctionDecl, args: &[Expr]) -> Option<Expr> {
        if f.params.len() != args.len() {
            return None;
        }
        let mut env: BTreeMap<&str, Expr> = f
            .params
            .iter()
            .map(String::as_str)
            .zip(args.iter().cloned())
            .collect();
        let mut value = None;
        for (i, stmt) in f.body.stmts.iter().enumerate() {
            match stmt {
                Stmt::Let(name, x, _) => {
                    let x = substitute(x, &env)?;
                    fits(&x).then_some(())?;
                    env.insert(name, x);
                }
                // Statements before the last are not the value (and cannot write).
                Stmt::Expr(x) if i + 1 == f.body.stmts.len() => {
                    let x = substitute(x, &env)?;
                    fits(&x).then_some(())?;
                    value = Some(x);
                }
                Stmt::Expr(_) => {}
            }
        }
        Some(value.unwrap_or_else(|| Expr::new(ExprKind::Lit(Value::Null), f.pos)))
    }

    fn clause(
        clause: &Expr,
        schema: &Schema,
        pexpr: &Expr,
        specs: &mut Vec<MemberSpec>,
    ) -> Option<Clause> {
        let mut conj = Vec::new();
        split_and(clause, &mut conj);
        for c in &conj {
            if let ExprKind::Binary(BinOp::Eq, a, b) = &c.kind {
                for (p, e) in [(a, b), (b, a)] {
                    if is_var(p, "partition") && claims_only(e, schema, false) {
                        return Some(Clause::Exact((**e).clone()));
                    }
                }
            }
        }
        for c in &conj {
            if let Some((list, n)) = listed_partition(c) {
                if claims_only(list, schema, false) {
                    if let Some(prefix) = literal_prefix(pexpr, n) {
                        return Some(Clause::Listed {
                            list: list.clone(),
                            prefix,
                        });
                    }
                }
            }
        }
        for c in &conj {
            if let Some(arg) = starts_with_partition(c) {
                if claims_only(arg, schema, false) {
                    return Some(Clause::Prefix(arg.clone()));
                }
            }
        }
        for c in &conj {
            if let Some((spec, n, key)) = Self::membership(c, schema) {
                let Some(prefix) = literal_prefix(pexpr, n) else {
                    continue;
                };
                let i = match specs.iter().position(|s| *s == spec) {
                    Some(i) => i,
                    None => {
                        specs.push(spec);
                        specs.len() - 1
                    }
                };
                return Some(Clause::Member {
                    spec: i,
                    prefix,
                    key,
                });
            }
        }
        if !mentions_partition(clause) && claims_only(clause, schema, true) {
            return Some(Clause::Uniform(clause.clone()));
        }
        None
    }

    /// `D?.path.includes(E)` (optionally `== true`) or `D?.path == E`, with `D` the
    /// document named by the partition and `E` depending only on the claims.
    fn membership(e: &Expr, schema: &Schema) -> Option<(MemberSpec, usize, Expr)> {
        let stripped = strip_eq_true(e);
        let (e, eq_true) = (stripped, !std::ptr::eq(stripped, e));
        // `D?.path.includes(E)`
        if let ExprKind::Method {
            recv, name, args, ..
        } = &e.kind
        {
            if name == "includes" && args.len() == 1 && claims_only(&args[0], schema, false) {
                let mut path = Vec::new();
                let doc = field_chain(recv, &mut path);
                if !path.is_empty() {
                    if let Some((source, n)) = by_partition_id(doc, schema) {
                        let spec = MemberSpec {
                            source,
                            path,
                            how: Match::Includes,
                        };
                        return Some((spec, n, args[0].clone()));
                    }
                }
            }
            return None;
        }
        if eq_true {
            return None;
        }
        // `D?.path == E`
        if let ExprKind::Binary(BinOp::Eq, a, b) = &e.kind {
            for (f, v) in [(a, b), (b, a)] {
                if !claims_only(v, schema, false) {
                    continue;
                }
                let mut path = Vec::new();
                let doc = field_chain(f, &mut path);
                if path.is_empty() {
                    continue;
                }
                if let Some((source, n)) = by_partition_id(doc, schema) {
                    let spec = MemberSpec {
                        source,
                        path,
                        how: Match::Equals,
                    };
                    return Some((spec, n, (**v).clone()));
                }
            }
        }
        None
    }

    /// The member indexes this schema needs.
    pub fn specs(&self) -> &[MemberSpec] {
        &self.specs
    }

    /// The membership clauses of `collection`'s read rule: (member index, prefix).
    pub fn member_clauses(&self, collection: &str) -> impl Iterator<Item = (usize, &str)> {
        let clauses = match self.colls.get(collection) {
            Some(CollReach::Clauses(cs)) => cs.as_slice(),
            _ => &[],
        };
        clauses.iter().filter_map(|(c, _)| match c {
            Clause::Member { spec, prefix, .. } => Some((*spec, prefix.as_str())),
            _ => None,
        })
    }

    /// Where a connection that may reach document `id` of member index `spec` through
    /// one of its keys is routed: the encoded keys the document's field holds, and
    /// whether it is a string (any key may be a part of it).
    pub fn member_routes(&self, spec: usize, data: &Value) -> (Vec<Vec<u8>>, bool) {
        self.specs[spec].routes(data)
    }

    /// The collections whose every partition is a candidate, with why.
    pub fn unindexed(&self) -> Vec<(String, String)> {
        self.colls
            .iter()
            .filter_map(|(c, r)| match r {
                CollReach::Everywhere(why) => Some((c.clone(), why.clone())),
                _ => None,
            })
            .collect()
    }

    /// What `auth` may reach: evaluates the claims-only parts of the clauses. A part
    /// that cannot be evaluated (a type error, fuel) names nothing, as the rule would
    /// then be false or fail.
    pub fn reachable(
        &self,
        store: &dyn Storage,
        schema: &Schema,
        limits: &Limits,
        auth: &Value,
    ) -> Result<Reachable, Error> {
        let ctx = Context::reader(auth, 0, 0);
        let mut out = Reachable::default();
        let mut members: BTreeMap<(usize, Vec<u8>, String), MemberKey> = BTreeMap::new();
        for (name, reach) in &self.colls {
            let clauses = match reach {
                CollReach::Single => {
                    out.exact
                        .entry(name.clone())
                        .or_default()
                        .insert(name.clone());
                    continue;
                }
                CollReach::Everywhere(_) => {
                    out.everywhere.insert(name.clone());
                    continue;
                }
                CollReach::Clauses(cs) => cs,
            };
            for (clause, inlined) in clauses {
                let mut ev = Evaluator::new(schema, store, limits, &ctx, Mode::Query);
                let failed = std::cell::Cell::new(false);
                let value = |ev: &mut Evaluator, e: &Expr, vars| match ev.eval_rule_part(e, vars) {
                    Ok(v) => Ok(Some(v)),
                    Err(e) if e.code.is_deterministic() => {
                        failed.set(true);
                        Ok(None)
                    }
                    Err(e) => Err(e),
                };
                match clause {
                    Clause::Exact(e) => {
                        if let Some(Value::String(p)) = value(&mut ev, e, vec![])? {
                            out.exact.entry(name.clone()).or_default().insert(p);
                        }
                    }
                    Clause::Listed { list, prefix } => match value(&mut ev, list, vec![])? {
                        Some(Value::Array(xs)) => {
                            let ps = out.exact.entry(name.clone()).or_default();
                            for x in xs {
                                // Only a string can equal a partition.
                                if let Value::String(s) = x {
                                    ps.insert(format!("{prefix}{s}"));
                                }
                            }
                        }
                        // A string's `includes` is a substring's: not looked up.
                        Some(Value::String(_)) => {
                            out.everywhere.insert(name.clone());
                        }
                        _ => {}
                    },
                    Clause::Prefix(e) => {
                        if let Some(Value::String(p)) = value(&mut ev, e, vec![])? {
                            out.prefixes.entry(name.clone()).or_default().insert(p);
                        }
                    }
                    Clause::Uniform(e) => {
                        let vars = vec![("collection", Value::String(name.clone()))];
                        if value(&mut ev, e, vars)?.is_some_and(|v| v.truthy()) {
                            out.everywhere.insert(name.clone());
                        }
                    }
                    Clause::Member { spec, prefix, key } => {
                        if let Some(k) = value(&mut ev, key, vec![])? {
                            let mut kb = Vec::new();
                            keys::encode_value(&mut kb, &k);
                            members
                                .entry((*spec, kb.clone(), prefix.clone()))
                                .or_insert_with(|| MemberKey {
                                    encoded: kb.clone(),
                                    spec: *spec,
                                    key: k,
                                    prefix: prefix.clone(),
                                    collections: BTreeSet::new(),
                                })
                                .collections
                                .insert(name.clone());
                        }
                    }
                }
                // An inlined part may fail where the rule would not (its parameters
                // copied where they are used cost more fuel): then every partition.
                if *inlined && failed.get() {
                    out.everywhere.insert(name.clone());
                }
            }
        }
        out.members = members.into_values().collect();
        Ok(out)
    }

    /// The member index's writes for an entry's committed `writes`, given the state
    /// before them (`before`). Documents of no member index's source cost nothing.
    pub fn member_ops(
        &self,
        before: &dyn Storage,
        writes: &[Write],
    ) -> Result<Vec<BatchOp>, Error> {
        if self.specs.is_empty() {
            return Ok(Vec::new());
        }
        // The last write of each document is its state after the entry.
        let mut last: BTreeMap<(&str, &str), Option<&Value>> = BTreeMap::new();
        for w in writes {
            if self.specs.iter().any(|s| s.source == w.collection) {
                last.insert((&w.collection, &w.id), w.data.as_ref());
            }
        }
        let mut ops = Vec::new();
        for ((coll, id), new) in last {
            let old = before
                .get(&keys::doc_key(coll, id))?
                .map(|b| StoredDoc::decode(&b))
                .transpose()?;
            for spec in self.specs.iter().filter(|s| s.source == coll) {
                let old_entries = old
                    .as_ref()
                    .map_or(Vec::new(), |d| spec.entries(&d.data, id));
                let new_entries = new.map_or(Vec::new(), |d| spec.entries(d, id));
                for e in &old_entries {
                    if !new_entries.contains(e) {
                        ops.push((e.0.clone(), None));
                    }
                }
                for e in new_entries {
                    if !old_entries.contains(&e) {
                        ops.push((e.0, Some(e.1)));
                    }
                }
            }
        }
        Ok(ops)
    }

    /// The marker of which member indexes a state holds (see [`Reach::rebuild_ops`]).
    fn marker(&self) -> Vec<u8> {
        let mut out = Vec::new();
        for s in &self.specs {
            keys::push_str(&mut out, &s.source);
            keys::push_str(&mut out, &s.path.join("."));
            out.push(s.how.tag());
        }
        out
    }

    /// The writes that make the member index of `store` this schema's: nothing when it
    /// already is; otherwise every `L` key removed and rebuilt from the documents (a
    /// new schema, or a state written before the index existed).
    pub fn rebuild_ops(&self, store: &dyn Storage) -> Result<Vec<BatchOp>, Error> {
        let marker = self.marker();
        if store.get(META_REACH)?.as_deref() == Some(marker.as_slice())
            || (self.specs.is_empty() && store.get(META_REACH)?.is_none())
        {
            return Ok(Vec::new());
        }
        let mut ops: Vec<BatchOp> = Vec::new();
        for (k, _) in scan_all(store, &KeyRange::prefix(&[SPACE_MEMBER]))? {
            ops.push((k, None));
        }
        for spec in &self.specs {
            for (k, v) in scan_all(
                store,
                &KeyRange::prefix(&keys::collection_prefix(&spec.source)),
            )? {
                let mut pos = 1;
                keys::read_str(&k, &mut pos)?;
                let id = keys::read_str(&k, &mut pos)?;
                let doc = StoredDoc::decode(&v)?;
                for (k, v) in spec.entries(&doc.data, &id) {
                    ops.push((k, Some(v)));
                }
            }
        }
        ops.push((META_REACH.to_vec(), Some(marker)));
        Ok(ops)
    }
}

/// The member index: `L str(source) str(path) how 01 val(value) str(id)` → empty, and
/// for `includes` over a string field `L str(source) str(path) i 02 str(id)` → the
/// string.
pub const SPACE_MEMBER: u8 = b'L';
/// Which member indexes the state holds (see [`Reach::rebuild_ops`]).
pub const META_REACH: &[u8] = b"Mreach";

impl MemberSpec {
    fn prefix(&self) -> Vec<u8> {
        let mut k = vec![SPACE_MEMBER];
        keys::push_str(&mut k, &self.source);
        keys::push_str(&mut k, &self.path.join("."));
        k.push(self.how.tag());
        k
    }

    fn value_key(&self, v: &Value, id: Option<&str>) -> Vec<u8> {
        let mut k = self.prefix();
        k.push(1);
        keys::encode_value(&mut k, v);
        if let Some(id) = id {
            keys::push_str(&mut k, id);
        }
        k
    }

    fn strings_prefix(&self) -> Vec<u8> {
        let mut k = self.prefix();
        k.push(2);
        k
    }

    /// The field this spec looks at, in a document's data.
    fn field<'v>(&self, data: &'v Value) -> &'v Value {
        let mut v = data;
        for f in &self.path {
            v = v.get(f);
        }
        v
    }

    /// The index entries of a document.
    fn entries(&self, data: &Value, id: &str) -> Vec<(Vec<u8>, Vec<u8>)> {
        let field = self.field(data);
        let mut out = Vec::new();
        match (self.how, field) {
            (_, Value::Null) => {}
            (Match::Includes, Value::Array(xs)) => {
                for x in xs {
                    let e = (self.value_key(x, Some(id)), Vec::new());
                    if !out.contains(&e) {
                        out.push(e);
                    }
                }
            }
            (Match::Includes, Value::String(s)) => {
                let mut k = self.strings_prefix();
                keys::push_str(&mut k, id);
                out.push((k, s.as_bytes().to_vec()));
            }
            // `includes` of anything else is a type error: the rule cannot hold.
            (Match::Includes, _) => {}
            (Match::Equals, v) => out.push((self.value_key(v, Some(id)), Vec::new())),
        }
        out
    }

    /// The encoded keys a document's field holds for routing, and whether the field
    /// is a string searched by `includes` (then any key may be a part of it).
    fn routes(&self, data: &Value) -> (Vec<Vec<u8>>, bool) {
        let enc = |v: &Value| {
            let mut k = Vec::new();
            keys::encode_value(&mut k, v);
            k
        };
        match (self.how, self.field(data)) {
            (_, Value::Null) => (Vec::new(), false),
            (Match::Includes, Value::Array(xs)) => (xs.iter().map(enc).collect(), false),
            (Match::Includes, Value::String(_)) => (Vec::new(), true),
            (Match::Includes, _) => (Vec::new(), false),
            (Match::Equals, v) => (vec![enc(v)], false),
        }
    }

    /// Whether a document's data holds `key` as the rule asks.
    pub fn holds(&self, data: &Value, key: &Value) -> bool {
        match (self.how, self.field(data)) {
            (_, Value::Null) => false,
            (Match::Includes, Value::Array(xs)) => xs.iter().any(|x| x.loose_eq(key)),
            (Match::Includes, Value::String(s)) => match key {
                Value::String(k) => s.contains(k.as_str()),
                _ => false,
            },
            (Match::Includes, _) => false,
            (Match::Equals, v) => v.loose_eq(key),
        }
    }

    /// The ids of the documents whose field holds `key`, from the member index.
    fn ids(&self, store: &dyn Storage, key: &Value) -> Result<BTreeSet<String>, Error> {
        let mut ids = BTreeSet::new();
        let prefix = self.value_key(key, None);
        for (k, _) in scan_all(store, &KeyRange::prefix(&prefix))? {
            let mut pos = prefix.len();
            ids.insert(keys::read_str(&k, &mut pos)?);
        }
        if self.how == Match::Includes {
            if let Value::String(want) = key {
                let prefix = self.strings_prefix();
                for (k, v) in scan_all(store, &KeyRange::prefix(&prefix))? {
                    if std::str::from_utf8(&v).is_ok_and(|s| s.contains(want.as_str())) {
                        let mut pos = prefix.len();
                        ids.insert(keys::read_str(&k, &mut pos)?);
                    }
                }
            }
        }
        Ok(ids)
    }

    /// Whether document `id`'s field holds `key`, from the member index.
    fn has(&self, store: &dyn Storage, key: &Value, id: &str) -> Result<bool, Error> {
        if store.get(&self.value_key(key, Some(id)))?.is_some() {
            return Ok(true);
        }
        if let (Match::Includes, Value::String(want)) = (self.how, key) {
            let mut k = self.strings_prefix();
            keys::push_str(&mut k, id);
            if let Some(s) = store.get(&k)? {
                return Ok(std::str::from_utf8(&s).is_ok_and(|s| s.contains(want.as_str())));
            }
        }
        Ok(false)
    }
}

impl Reachable {
    /// The candidate (partition, collection) pairs that exist in `store` (a version
    /// key: something was written there).
    pub fn candidates(
        &self,
        store: &dyn Storage,
        reach: &Reach,
    ) -> Result<BTreeMap<(String, String), u64>, Error> {
        let mut out = BTreeMap::new();
        let mut version = |store: &dyn Storage, p: &str, c: &str| -> Result<(), Error> {
            if let Some(v) = store.get(&keys::version_key(p, c))? {
                out.insert((p.to_owned(), c.to_owned()), version_of(&v));
            }
            Ok(())
        };
        for (c, ps) in &self.exact {
            if self.everywhere.contains(c) {
                continue;
            }
            for p in ps {
                version(store, p, c)?;
            }
        }
        for m in &self.members {
            let spec = &reach.specs[m.spec];
            for id in spec.ids(store, &m.key)? {
                let p = format!("{}{id}", m.prefix);
                for c in m
                    .collections
                    .iter()
                    .filter(|c| !self.everywhere.contains(*c))
                {
                    version(store, &p, c)?;
                }
            }
        }
        for (c, prefixes) in &self.prefixes {
            if self.everywhere.contains(c) {
                continue;
            }
            for prefix in prefixes {
                let from = keys::version_partition_prefix(prefix);
                for (k, v) in scan_all(store, &KeyRange::prefix(&from))? {
                    let (p, pc) = keys::parse_version_key(&k)?;
                    if pc == *c && p.starts_with(prefix.as_str()) {
                        out.insert((p, pc), version_of(&v));
                    }
                }
            }
        }
        if !self.everywhere.is_empty() {
            for (k, v) in scan_all(store, &KeyRange::prefix(&[keys::SPACE_VERSION]))? {
                let (p, c) = keys::parse_version_key(&k)?;
                if self.everywhere.contains(&c) {
                    out.insert((p, c), version_of(&v));
                }
            }
        }
        Ok(out)
    }

    /// Whether (partition, collection) is a candidate at `store`'s state.
    pub fn may_reach(
        &self,
        store: &dyn Storage,
        reach: &Reach,
        partition: &str,
        collection: &str,
    ) -> Result<bool, Error> {
        if self.everywhere.contains(collection)
            || self
                .exact
                .get(collection)
                .is_some_and(|ps| ps.contains(partition))
            || self
                .prefixes
                .get(collection)
                .is_some_and(|ps| ps.iter().any(|p| partition.starts_with(p.as_str())))
        {
            return Ok(true);
        }
        for m in &self.members {
            if !m.collections.contains(collection) {
                continue;
            }
            if let Some(id) = partition.strip_prefix(m.prefix.as_str()) {
                if reach.specs[m.spec].has(store, &m.key, id)? {
                    return Ok(true);
                }
            }
        }
        Ok(false)
    }

    /// The partitions a written document of a member index's source makes candidates
    /// (its field now holds one of this user's keys), with their collections.
    pub fn opened_by<'a>(
        &'a self,
        reach: &'a Reach,
        w: &'a Write,
    ) -> impl Iterator<Item = (String, &'a BTreeSet<String>)> + 'a {
        self.members.iter().filter_map(move |m| {
            let spec = &reach.specs[m.spec];
            let data = w.data.as_ref()?;
            (spec.source == w.collection && spec.holds(data, &m.key))
                .then(|| (format!("{}{}", m.prefix, w.id), &m.collections))
        })
    }
}

fn version_of(v: &[u8]) -> u64 {
    u64::from_be_bytes(v.try_into().unwrap_or([0; 8]))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn schema(src: &str) -> Schema {
        Schema::parse(src).unwrap()
    }

    #[test]
    fn rules_are_analysed_into_their_forms() {
        let s = schema(
            r#"
collection Todo {
  partition "user:" + doc.owner
  allow read partition == "user:" + auth.sub || auth.role == "admin"
}
collection Team {
  partition "team:" + doc.id
  allow read Team.byId(partition.slice(5))?.members?.includes(auth.sub) == true
}
collection Task {
  partition "team:" + doc.team
  allow read Team.byId(partition.slice(5))?.admin == auth.sub
}
collection Log { allow read true }
collection Odd {
  partition "o:" + doc.x
  allow read partition.length() > 3
}
collection Short {
  partition "t:" + doc.team
  allow read Team.byId(partition.slice(5))?.members?.includes(auth.sub) == true
}
"#,
        );
        let r = s.reach();
        assert_eq!(
            r.specs(),
            &[
                // Task's rule comes first (collections in name order).
                MemberSpec {
                    source: "Team".into(),
                    path: vec!["admin".into()],
                    how: Match::Equals
                },
                MemberSpec {
                    source: "Team".into(),
                    path: vec!["members".into()],
                    how: Match::Includes
                },
            ]
        );
        let unindexed: Vec<String> = r.unindexed().into_iter().map(|(c, _)| c).collect();
        // `Short`'s prefix has 2 characters, not 5: not indexed.
        assert_eq!(unindexed, ["Odd", "Short"]);
        let store = crate::storage::MemoryStore::new();
        let ann = crate::value::obj([("sub", "ann".into())]);
        let got = r.reachable(&store, &s, &Limits::default(), &ann).unwrap();
        assert_eq!(got.exact["Todo"], BTreeSet::from(["user:ann".to_owned()]));
        assert_eq!(got.exact["Log"], BTreeSet::from(["Log".to_owned()]));
        assert_eq!(
            got.everywhere,
            BTreeSet::from(["Odd".to_owned(), "Short".to_owned()])
        );
        assert_eq!(got.members.len(), 2);
        let admin = crate::value::obj([("sub", "root".into()), ("role", "admin".into())]);
        let got = r.reachable(&store, &s, &Limits::default(), &admin).unwrap();
        assert!(got.everywhere.contains("Todo"));
    }

    /// `list.includes(partition.slice(n))` with a list of the claims names `P + s` for
    /// each string `s` of it; a string list (a substring's `includes`) names every
    /// partition; a missing list none.
    #[test]
    fn a_listed_rule_names_the_partitions_of_its_list() {
        let s = schema(
            r#"
collection Board {
  partition "team:" + doc.team
  allow read auth.teams?.includes(partition.slice(5)) == true
}
collection Space {
  partition doc.space
  allow read auth.spaces.includes(partition)
}
collection Wrong {
  partition "t:" + doc.team
  allow read auth.teams.includes(partition.slice(5))
}
"#,
        );
        let r = s.reach();
        let unindexed: Vec<String> = r.unindexed().into_iter().map(|(c, _)| c).collect();
        // Wrong's prefix has 2 characters, not 5.
        assert_eq!(unindexed, ["Wrong"]);
        let store = crate::storage::MemoryStore::new();
        let reach = |auth: &Value| r.reachable(&store, &s, &Limits::default(), auth).unwrap();
        let ann = crate::value::obj([
            (
                "teams",
                Value::Array(vec!["a".into(), "b".into(), Value::Int(3)]),
            ),
            ("spaces", Value::Array(vec!["s:1".into()])),
        ]);
        let got = reach(&ann);
        assert_eq!(
            got.exact["Board"],
            BTreeSet::from(["team:a".to_owned(), "team:b".to_owned()])
        );
        assert_eq!(got.exact["Space"], BTreeSet::from(["s:1".to_owned()]));
        assert_eq!(got.everywhere, BTreeSet::from(["Wrong".to_owned()]));
        let text = crate::value::obj([("spaces", "s:1 s:2".into())]);
        let got = reach(&text);
        assert!(!got.exact.contains_key("Board"), "no teams: no board");
        assert_eq!(
            got.everywhere,
            BTreeSet::from(["Space".to_owned(), "Wrong".to_owned()])
        );
    }

    /// Calls of schema functions are analysed as their bodies (parameters and `let`s
    /// substituted, calls inside them too): the documentation's `isMember` is a
    /// membership; a body with a lambda, a recursion, a call with the wrong number of
    /// arguments and values that would grow exponentially are not inlined, and leave
    /// their collections everywhere.
    #[test]
    fn schema_functions_are_analysed_as_their_bodies() {
        let s = schema(
            r#"
function isMember(team) {
  let t = Team.byId(team)
  t != null && t.members.includes(auth.sub)
}
function admin() { auth.role == "admin" }
function own(p) { let u = "user:" + auth.sub
  p == u }
function either(p) { own(p) || admin() }
function loop(x) { loop(x) }
function anyOf(p) { [1].some(i => p == "user:" + auth.sub) }
function dbl(x) { x + x }
function huge(p) {
  let a = p + p
  let b = a + a
  let c = b + b
  let d = c + c
  let e = d + d
  let f = e + e
  let g = f + f
  let h = g + g
  let i = h + h
  let j = i + i
  let k = j + j
  let l = k + k
  l != null && p == "user:" + auth.sub
}
collection Team {
  partition "team:" + doc.id
  allow read isMember(partition.slice(5)) || admin()
}
collection Todo {
  partition "user:" + doc.owner
  allow read either(partition)
}
collection Loop {
  partition doc.x
  allow read loop(partition)
}
collection Lambda {
  partition doc.x
  allow read anyOf(partition)
}
collection Arity {
  partition doc.x
  allow read own(partition, 1)
}
collection Doubled {
  partition doc.x
  allow read dbl(dbl(dbl(dbl(dbl(dbl(dbl(dbl(dbl(dbl(dbl(dbl(partition)))))))))))) == "a"
}
collection Huge {
  partition doc.x
  allow read huge(partition)
}
"#,
        );
        let r = s.reach();
        let unindexed: Vec<String> = r.unindexed().into_iter().map(|(c, _)| c).collect();
        // Doubled and Huge would grow past `INLINE_NODES`: left as calls.
        assert_eq!(unindexed, ["Arity", "Doubled", "Huge", "Lambda", "Loop"]);
        assert_eq!(
            r.specs(),
            &[MemberSpec {
                source: "Team".into(),
                path: vec!["members".into()],
                how: Match::Includes
            }]
        );
        let store = crate::storage::MemoryStore::new();
        let ann = crate::value::obj([("sub", "ann".into())]);
        let got = r.reachable(&store, &s, &Limits::default(), &ann).unwrap();
        assert_eq!(got.exact["Todo"], BTreeSet::from(["user:ann".to_owned()]));
        assert_eq!(got.members.len(), 1);
        assert_eq!(got.members[0].prefix, "team:");
        assert!(!got.everywhere.contains("Team") && !got.everywhere.contains("Todo"));
        let admin = crate::value::obj([("sub", "root".into()), ("role", "admin".into())]);
        let got = r.reachable(&store, &s, &Limits::default(), &admin).unwrap();
        assert!(got.everywhere.contains("Team") && got.everywhere.contains("Todo"));
        // An inlined part that fails (out of fuel here) names every partition, where
        // a part of the rule as written names none (the rule fails the same way).
        let starved = Limits {
            rule_fuel: 1,
            ..Limits::default()
        };
        let got = r.reachable(&store, &s, &starved, &ann).unwrap();
        assert!(got.everywhere.contains("Team") && got.everywhere.contains("Todo"));
        let plain = schema(
            r#"
collection Todo {
  partition "user:" + doc.owner
  allow read partition == "user:" + auth.sub
}
"#,
        );
        let got = plain
            .reach()
            .reachable(&store, &plain, &starved, &ann)
            .unwrap();
        assert!(got.everywhere.is_empty() && got.exact.is_empty(), "{got:?}");
    }

    /// `partition.startsWith(E)` names the partitions of its collection that start with
    /// `E`'s string, found among the version keys under it (a zero byte included: the
    /// escaping of keys keeps prefixes), and no others.
    #[test]
    fn a_prefix_rule_names_the_partitions_that_start_with_its_prefix() {
        let s = schema(
            r#"
collection Note {
  partition doc.space
  allow read partition.startsWith(auth.sub + ":") == true || auth.role == "admin"
}
collection Other {
  partition doc.space
  allow read partition.startsWith(auth.sub) && auth.sub != ""
}
"#,
        );
        let r = s.reach();
        assert!(r.unindexed().is_empty(), "{:?}", r.unindexed());
        let mut store = crate::storage::MemoryStore::new();
        let pairs = [
            ("ann:1", "Note"),
            ("ann:\u{0}z", "Note"),
            ("ann:2", "Other"),
            ("ann", "Note"),
            ("anna:1", "Note"),
            ("an\u{0}:1", "Note"),
            ("bob:1", "Note"),
            ("ann:1", "Other"),
        ];
        let ops = pairs
            .iter()
            .enumerate()
            .map(|(i, (p, c))| {
                (
                    keys::version_key(p, c),
                    Some((i as u64 + 1).to_be_bytes().to_vec()),
                )
            })
            .collect();
        store.apply(crate::storage::Batch { ops }).unwrap();
        let candidates = |auth: &Value| -> Vec<(String, String, u64)> {
            let got = r.reachable(&store, &s, &Limits::default(), auth).unwrap();
            let out: Vec<_> = got
                .candidates(&store, r)
                .unwrap()
                .into_iter()
                .map(|((p, c), v)| (p, c, v))
                .collect();
            // Each candidate is one `may_reach` accepts, and so is no other pair.
            for (i, (p, c)) in pairs.iter().enumerate() {
                let listed = out.iter().any(|(q, d, _)| q == p && d == c);
                assert_eq!(
                    got.may_reach(&store, r, p, c).unwrap(),
                    listed,
                    "{p:?} {c} ({i})"
                );
            }
            out
        };
        let t = |p: &str, c: &str, v: u64| (p.to_owned(), c.to_owned(), v);
        let ann = crate::value::obj([("sub", "ann".into())]);
        assert_eq!(
            candidates(&ann),
            [
                // Not "ann" or "anna:1" (Note wants "ann:"), nor "an\0:1".
                t("ann:\u{0}z", "Note", 2),
                t("ann:1", "Note", 1),
                t("ann:1", "Other", 8),
                t("ann:2", "Other", 3),
            ]
        );
        let nul = crate::value::obj([("sub", "an\u{0}".into())]);
        assert_eq!(candidates(&nul), [t("an\u{0}:1", "Note", 6)]);
        let admin = crate::value::obj([("sub", "root".into()), ("role", "admin".into())]);
        assert_eq!(candidates(&admin).len(), 6, "every Note");
    }

    /// A state written without the member index (before it existed, or under a schema
    /// that needed another) gets it rebuilt from its documents; then the index follows
    /// each write, and a lookup finds exactly the documents holding the value.
    #[test]
    fn the_member_index_is_rebuilt_and_then_kept() {
        use crate::exec::{Commit, Executor, Op};
        use crate::storage::MemoryStore;
        let src = r#"
collection Team {
  partition "team:" + doc.id
  allow read Team.byId(partition.slice(5))?.members?.includes(auth.sub) == true
  allow create true
  allow update true
}
"#;
        let schema = std::sync::Arc::new(schema(src));
        let mut ex = Executor::new(MemoryStore::new(), schema.clone(), Limits::default());
        let commit = |seq: u64, source: &str| Commit {
            client_id: "c".into(),
            client_seq: seq,
            schema_version: String::new(),
            timestamp: 1,
            auth: crate::value::obj([("sub", "bob".into())]),
            op: Op::Run {
                source: source.into(),
            },
        };
        // Written as a replica does: no member entries.
        ex.commit(
            &commit(1, r#"Team.create({ id: "a", members: ["ann", "bob"] })"#),
            1,
        )
        .unwrap();
        ex.commit(
            &commit(2, r#"Team.create({ id: "b", members: ["bob"] })"#),
            2,
        )
        .unwrap();
        let reach = schema.reach();
        let ann = crate::value::obj([("sub", "ann".into())]);
        let bob = crate::value::obj([("sub", "bob".into())]);
        let pairs = |ex: &Executor<MemoryStore>, who: &Value| -> Vec<String> {
            let r = reach
                .reachable(ex.store(), &schema, &Limits::default(), who)
                .unwrap();
            r.candidates(ex.store(), reach)
                .unwrap()
                .into_keys()
                .map(|(p, _)| p)
                .collect()
        };
        assert!(pairs(&ex, &ann).is_empty(), "no index yet");
        let ops = reach.rebuild_ops(ex.store()).unwrap();
        ex.store_mut().apply(crate::storage::Batch { ops }).unwrap();
        assert!(
            reach.rebuild_ops(ex.store()).unwrap().is_empty(),
            "built once"
        );
        assert_eq!(pairs(&ex, &ann), ["team:a"]);
        assert_eq!(pairs(&ex, &bob), ["team:a", "team:b"]);
        // From now on, as a server applies commits.
        for (seq, src) in [
            (3, r#"Team.byId("a").update({ members: ["bob"] })"#),
            (4, r#"Team.byId("b").update({ members: ["bob", "ann"] })"#),
        ] {
            let outcome = ex.serve_commit(&commit(seq, src), seq).unwrap();
            assert!(
                matches!(outcome, crate::exec::Outcome::Committed { .. }),
                "{outcome:?}"
            );
        }
        assert_eq!(pairs(&ex, &ann), ["team:b"]);
        assert_eq!(pairs(&ex, &bob), ["team:a", "team:b"]);
    }
}
