//! The evaluator: runs the language against a transaction's view of the state.
//!
//! Every evaluation is bounded: each step costs fuel ([`Limits::fuel`]), recursion is
//! bounded ([`Limits::max_depth`]), and every value the program builds is checked
//! against the size and nesting limits. Running out of any of them is a deterministic
//! error with its own code, never a hang, a stack overflow or a panic.
//!
//! Nothing here reads a clock, a random source or a hash map's iteration order: `now()`
//! and `newId()` come from the [`Context`], and every map is a `BTreeMap`.

mod arith;
pub mod builtins;
mod rules;
mod sets;
mod write;

use std::collections::BTreeMap;
use std::rc::Rc;
use std::sync::Arc;

use arith::index_value;
pub(crate) use arith::{as_f64, binary, display};
pub(crate) use sets::SetQ;
pub use write::MAX_ID_BYTES;

use crate::doc::StoredDoc;
use crate::error::{Error, ErrorCode, Pos};
use crate::keys;
use crate::lang::ast::{Block, Expr, ExprKind, Lambda, Stmt, UnOp};
use crate::schema::{Collection, Schema};
use crate::storage::{Overlay, Storage};
use crate::value::{Object, Value, MAX_VALUE_DEPTH};

/// Limits on one evaluation (a transaction, a query or a rule check).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Steps: one per expression evaluated, plus costs for documents read and for
    /// large values built.
    pub fuel: u64,
    /// Nesting of evaluation: expressions inside expressions and calls inside calls.
    pub max_depth: u32,
    /// Canonical size of a commit's arguments (or an ad-hoc transaction's source).
    pub max_args_bytes: usize,
    /// Canonical size of one document's fields.
    pub max_doc_bytes: usize,
    /// Canonical size of a result.
    pub max_result_bytes: usize,
    /// Size of any one string, bytes, array or object built during evaluation.
    pub max_value_bytes: usize,
    /// Documents one transaction may write.
    pub max_writes: usize,
    /// What one identity may keep in a server's state (checked by the server when it
    /// applies a commit, `exec::commit_batch`; unlimited by default).
    pub quotas: crate::quota::Quotas,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            fuel: 1_000_000,
            max_depth: 128,
            max_args_bytes: 64 * 1024,
            max_doc_bytes: 256 * 1024,
            max_result_bytes: 4 * 1024 * 1024,
            max_value_bytes: 1024 * 1024,
            max_writes: 1_000,
            quotas: crate::quota::Quotas::UNLIMITED,
        }
    }
}

/// What an evaluation may do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// A transaction: reads filtered by read rules, writes checked by write rules.
    Transaction,
    /// A query: reads filtered by read rules, no writes.
    Query,
    /// A rule or partition expression: unfiltered reads, no writes.
    Rule,
}

/// The facts an evaluation is given rather than reads: who, when, and the seed for ids.
#[derive(Clone, Debug)]
pub struct Context {
    /// The verified claims (`auth` in the language); `Null` when anonymous.
    pub auth: Value,
    /// `now()`: milliseconds since the Unix epoch, fixed by the sequencer for a commit.
    pub now: i64,
    /// Seed for `newId()`: the commit's client id and sequence number.
    pub client_id: String,
    pub client_seq: u64,
    /// The log position writes are stamped with (a document's `version`).
    pub position: u64,
}

impl Context {
    /// The context of a read (a query, a read rule): no commit, so no ids to make.
    pub fn reader(auth: &Value, now: i64, position: u64) -> Context {
        Context {
            auth: auth.clone(),
            now,
            client_id: String::new(),
            client_seq: 0,
            position,
        }
    }
}

/// A runtime value: data, or one of the things only a running program holds.
#[derive(Clone, Debug)]
pub enum Val {
    Data(Value),
    Doc(Rc<Doc>),
    Coll(Rc<str>),
    Set(Rc<SetQ>),
    Func(Rc<Closure>),
    /// `asc(v)` / `desc(v)`: a sort key with its direction.
    Order {
        key: Value,
        desc: bool,
    },
}

impl Val {
    pub const NULL: Val = Val::Data(Value::Null);

    fn kind(&self) -> &'static str {
        match self {
            Val::Data(v) => v.type_name(),
            Val::Doc(_) => "document",
            Val::Coll(_) => "collection",
            Val::Set(_) => "set",
            Val::Func(_) => "function",
            Val::Order { .. } => "sort key",
        }
    }
}

impl From<Value> for Val {
    fn from(v: Value) -> Val {
        Val::Data(v)
    }
}

/// A document as a program holds it.
#[derive(Debug)]
pub struct Doc {
    pub collection: String,
    pub id: String,
    pub stored: StoredDoc,
}

impl Doc {
    /// The document as data: its fields plus `id`.
    pub fn to_value(&self) -> Value {
        let mut o = match &self.stored.data {
            Value::Object(o) => o.clone(),
            _ => Object::new(),
        };
        o.insert("id".into(), Value::String(self.id.clone()));
        Value::Object(o)
    }

    fn field(&self, name: &str) -> Value {
        if name == "id" {
            Value::String(self.id.clone())
        } else {
            self.stored.data.get(name).clone()
        }
    }
}

/// A lambda with the variables it captured.
#[derive(Debug)]
pub struct Closure {
    pub lambda: Arc<Lambda>,
    env: Env,
}

#[derive(Debug)]
pub(crate) struct EnvNode {
    name: Name,
    val: Val,
    parent: Env,
}

/// A variable's name: the engine's own names (`auth`, `doc`, a rule's variables) are
/// not copied for every binding.
#[derive(Debug)]
enum Name {
    Static(&'static str),
    Owned(String),
}

impl Name {
    fn as_str(&self) -> &str {
        match self {
            Name::Static(s) => s,
            Name::Owned(s) => s,
        }
    }
}

pub(crate) type Env = Option<Rc<EnvNode>>;

fn bind(env: &Env, name: &str, val: Val) -> Env {
    Some(Rc::new(EnvNode {
        name: Name::Owned(name.to_owned()),
        val,
        parent: env.clone(),
    }))
}

/// [`bind`] for a name the engine itself gives.
fn bind_static(env: &Env, name: &'static str, val: Val) -> Env {
    Some(Rc::new(EnvNode {
        name: Name::Static(name),
        val,
        parent: env.clone(),
    }))
}

fn lookup<'e>(mut env: &'e Env, name: &str) -> Option<&'e Val> {
    while let Some(n) = env {
        if n.name.as_str() == name {
            return Some(&n.val);
        }
        env = &n.parent;
    }
    None
}

/// A write a transaction made: its final state per document, in order of first touch.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Touched {
    pub collection: String,
    pub id: String,
}

/// One evaluation.
pub struct Evaluator<'a> {
    pub(crate) schema: &'a Schema,
    pub(crate) view: Overlay<'a>,
    pub(crate) limits: &'a Limits,
    pub(crate) ctx: &'a Context,
    mode: Mode,
    fuel: u64,
    depth: u32,
    ids_made: u64,
    /// Read-rule answers per (collection, partition), so each is evaluated once.
    readable: BTreeMap<(String, String), bool>,
    pub(crate) touched: Vec<Touched>,
    touched_set: std::collections::BTreeSet<(String, String)>,
    /// What the evaluation read, when tracking is on (for read-rule invalidation).
    pub(crate) reads: Option<ReadSet>,
    /// The root environment (`auth`), built once: environments are immutable, so
    /// every function call and rule check can share it instead of copying `auth`.
    root: std::cell::OnceCell<Env>,
}

/// What an evaluation read: documents by id and whole collections (any scan). A write
/// to one of these may change the evaluation's answer.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ReadSet {
    pub docs: std::collections::BTreeSet<(String, String)>,
    pub collections: std::collections::BTreeSet<String>,
}

impl ReadSet {
    /// Whether a write to document `id` of `collection` may change what was read.
    pub fn touched_by(&self, collection: &str, id: &str) -> bool {
        self.collections.contains(collection)
            || self.docs.contains(&(collection.to_owned(), id.to_owned()))
    }

    pub fn is_empty(&self) -> bool {
        self.docs.is_empty() && self.collections.is_empty()
    }
}

fn err(code: ErrorCode, msg: impl Into<String>) -> Error {
    Error::new(code, msg)
}

fn type_err(msg: impl Into<String>) -> Error {
    Error::new(ErrorCode::Type, msg)
}

impl<'a> Evaluator<'a> {
    pub fn new(
        schema: &'a Schema,
        store: &'a dyn Storage,
        limits: &'a Limits,
        ctx: &'a Context,
        mode: Mode,
    ) -> Evaluator<'a> {
        Evaluator {
            schema,
            view: Overlay::new(store),
            limits,
            ctx,
            mode,
            fuel: limits.fuel,
            depth: 0,
            ids_made: 0,
            readable: BTreeMap::new(),
            touched: Vec::new(),
            touched_set: Default::default(),
            reads: None,
            root: std::cell::OnceCell::new(),
        }
    }

    /// Fuel left.
    pub fn fuel_left(&self) -> u64 {
        self.fuel
    }

    /// Spends `n` steps of fuel.
    pub(crate) fn charge(&mut self, n: u64) -> Result<(), Error> {
        if self.fuel < n {
            self.fuel = 0;
            return Err(err(
                ErrorCode::FuelExhausted,
                format!("the step budget of {} ran out", self.limits.fuel),
            ));
        }
        self.fuel -= n;
        Ok(())
    }

    fn enter(&mut self) -> Result<(), Error> {
        self.depth += 1;
        if self.depth > self.limits.max_depth {
            return Err(err(
                ErrorCode::DepthExceeded,
                format!(
                    "evaluation nests deeper than {} levels (a recursive function?)",
                    self.limits.max_depth
                ),
            ));
        }
        Ok(())
    }

    /// Checks a value the program built: nesting, size, and fuel in proportion to its
    /// size (so repeatedly building large values runs out of fuel, not memory).
    pub(crate) fn check_built(&mut self, v: &Value) -> Result<(), Error> {
        if v.nests_deeper_than(MAX_VALUE_DEPTH) {
            return Err(err(
                ErrorCode::DepthExceeded,
                format!("a value nests deeper than {MAX_VALUE_DEPTH} levels"),
            ));
        }
        let n = v.encoded_len();
        self.charge(n as u64 / 64)?;
        if n > self.limits.max_value_bytes {
            return Err(err(
                ErrorCode::ResultTooLarge,
                format!(
                    "a value of {n} bytes was built; the limit is {}",
                    self.limits.max_value_bytes
                ),
            ));
        }
        Ok(())
    }

    /// The root environment: `auth`.
    fn root_env(&self) -> Env {
        self.root
            .get_or_init(|| bind_static(&None, "auth", Val::Data(self.ctx.auth.clone())))
            .clone()
    }

    /// Runs a block as a transaction or query body.
    pub fn run_block(&mut self, block: &Block) -> Result<Val, Error> {
        let env = self.root_env();
        self.block(block, &env)
    }

    /// Calls a schema function with arguments: an object (by parameter name) or an
    /// array (by position).
    pub fn call_function(&mut self, name: &str, args: &Value) -> Result<Val, Error> {
        let f = self.schema.functions.get(name).cloned().ok_or_else(|| {
            err(
                ErrorCode::Unknown,
                format!("the schema has no function named {name}"),
            )
        })?;
        let vals: Vec<Val> = match args {
            Value::Array(a) => {
                if a.len() != f.params.len() {
                    return Err(err(
                        ErrorCode::InvalidArgument,
                        format!(
                            "{name} takes {} arguments, {} given",
                            f.params.len(),
                            a.len()
                        ),
                    ));
                }
                a.iter().cloned().map(Val::Data).collect()
            }
            Value::Object(o) => {
                if let Some(k) = o.keys().find(|k| !f.params.contains(k)) {
                    return Err(err(
                        ErrorCode::InvalidArgument,
                        format!("{name} has no parameter named {k}"),
                    ));
                }
                f.params
                    .iter()
                    .map(|p| Val::Data(o.get(p).cloned().unwrap_or(Value::Null)))
                    .collect()
            }
            Value::Null if f.params.is_empty() => Vec::new(),
            other => {
                return Err(err(
                    ErrorCode::InvalidArgument,
                    format!(
                        "arguments must be an object or an array, not {}",
                        other.type_name()
                    ),
                ))
            }
        };
        self.call_schema_function(&f, vals, Pos { line: 0, col: 0 })
    }

    fn call_schema_function(
        &mut self,
        f: &crate::lang::ast::FunctionDecl,
        args: Vec<Val>,
        pos: Pos,
    ) -> Result<Val, Error> {
        if args.len() != f.params.len() {
            return Err(Error::at(
                ErrorCode::InvalidArgument,
                pos,
                format!(
                    "{} takes {} arguments, {} given",
                    f.name,
                    f.params.len(),
                    args.len()
                ),
            ));
        }
        let mut env = self.root_env();
        for (p, v) in f.params.iter().zip(args) {
            env = bind(&env, p, v);
        }
        self.enter()?;
        let r = self.block(&f.body, &env);
        self.depth -= 1;
        r
    }

    pub(crate) fn call_closure(&mut self, c: &Closure, args: Vec<Val>) -> Result<Val, Error> {
        let mut env = c.env.clone();
        for (i, p) in c.lambda.params.iter().enumerate() {
            env = bind(&env, p, args.get(i).cloned().unwrap_or(Val::NULL));
        }
        self.enter()?;
        let r = self.block(&c.lambda.body, &env);
        self.depth -= 1;
        r
    }

    fn block(&mut self, b: &Block, env: &Env) -> Result<Val, Error> {
        let mut env = env.clone();
        let mut last = Val::NULL;
        for s in &b.stmts {
            match s {
                Stmt::Let(name, e, _) => {
                    let v = self.eval(e, &env)?;
                    env = bind(&env, name, v);
                    last = Val::NULL;
                }
                Stmt::Expr(e) => last = self.eval(e, &env)?,
            }
        }
        Ok(last)
    }

    /// Evaluates an expression.
    pub(crate) fn eval(&mut self, e: &Expr, env: &Env) -> Result<Val, Error> {
        self.charge(1).map_err(|x| x.or_at(e.pos))?;
        self.enter().map_err(|x| x.or_at(e.pos))?;
        let r = self.eval_inner(e, env).map_err(|x| x.or_at(e.pos));
        self.depth -= 1;
        r
    }

    fn eval_inner(&mut self, e: &Expr, env: &Env) -> Result<Val, Error> {
        match &e.kind {
            ExprKind::Lit(v) => Ok(Val::Data(v.clone())),
            ExprKind::Var(name) => self.var(name, env),
            ExprKind::Array(items) => {
                let mut out = Vec::with_capacity(items.len());
                for x in items {
                    let v = self.eval(x, env)?;
                    out.push(self.materialize(v)?);
                }
                let v = Value::Array(out);
                self.check_built(&v)?;
                Ok(Val::Data(v))
            }
            ExprKind::Object(fields) => {
                let mut o = Object::new();
                for (k, x) in fields {
                    let v = self.eval(x, env)?;
                    o.insert(k.clone(), self.materialize(v)?);
                }
                let v = Value::Object(o);
                self.check_built(&v)?;
                Ok(Val::Data(v))
            }
            ExprKind::Field { .. } | ExprKind::Method { .. } | ExprKind::Index { .. } => {
                Ok(self.chain(e, env)?.unwrap_or(Val::NULL))
            }
            ExprKind::Call { name, args } => {
                let mut vals = Vec::with_capacity(args.len());
                for a in args {
                    vals.push(self.eval(a, env)?);
                }
                if let Some(Val::Func(c)) = lookup(env, name) {
                    let c = c.clone();
                    return self.call_closure(&c, vals);
                }
                if let Some(f) = self.schema.functions.get(name).cloned() {
                    return self.call_schema_function(&f, vals, e.pos);
                }
                self.call_builtin(name, vals)
            }
            ExprKind::Unary(op, a) => {
                let v = self.eval(a, env)?;
                let v = self.materialize(v)?;
                match op {
                    UnOp::Not => Ok(Val::Data(Value::Bool(!v.truthy()))),
                    UnOp::Neg => match v {
                        Value::Int(i) => i
                            .checked_neg()
                            .map(|i| Val::Data(Value::Int(i)))
                            .ok_or_else(|| err(ErrorCode::Arithmetic, "integer overflow")),
                        Value::Float(f) => Ok(Val::Data(Value::float(-f)?)),
                        other => Err(type_err(format!("cannot negate {}", other.type_name()))),
                    },
                }
            }
            ExprKind::Binary(op, a, b) => {
                let x = self.eval(a, env)?;
                let x = self.materialize(x)?;
                let y = self.eval(b, env)?;
                let y = self.materialize(y)?;
                let v = binary(*op, x, y)?;
                if matches!(v, Value::String(_) | Value::Array(_) | Value::Bytes(_)) {
                    self.check_built(&v)?;
                }
                Ok(Val::Data(v))
            }
            ExprKind::And(a, b) => {
                let x = self.eval(a, env)?;
                if !self.truthy(&x) {
                    return Ok(Val::Data(Value::Bool(false)));
                }
                let y = self.eval(b, env)?;
                Ok(Val::Data(Value::Bool(self.truthy(&y))))
            }
            ExprKind::Or(a, b) => {
                let x = self.eval(a, env)?;
                if self.truthy(&x) {
                    return Ok(Val::Data(Value::Bool(true)));
                }
                let y = self.eval(b, env)?;
                Ok(Val::Data(Value::Bool(self.truthy(&y))))
            }
            ExprKind::Coalesce(a, b) => {
                let x = self.eval(a, env)?;
                if matches!(x, Val::Data(Value::Null)) {
                    self.eval(b, env)
                } else {
                    Ok(x)
                }
            }
            ExprKind::If {
                cond,
                then,
                otherwise,
            } => {
                let c = self.eval(cond, env)?;
                if self.truthy(&c) {
                    self.block(then, env)
                } else if let Some(o) = otherwise {
                    self.block(o, env)
                } else {
                    Ok(Val::NULL)
                }
            }
            ExprKind::Lambda(l) => Ok(Val::Func(Rc::new(Closure {
                lambda: l.clone(),
                env: env.clone(),
            }))),
            ExprKind::Block(b) => self.block(b, env),
        }
    }

    /// Evaluates a chain of field reads, indexing and method calls. `None` means an
    /// optional step (`?.`) met null: the rest of the chain is skipped, as in
    /// JavaScript (`a?.b.c` is null when `a` is null).
    fn chain(&mut self, e: &Expr, env: &Env) -> Result<Option<Val>, Error> {
        // The receiver, or `None` when the chain is skipped: an earlier `?.` met null, or
        // this step is optional and its receiver is null.
        let recv_of = |ev: &mut Self, recv: &Expr, optional: bool| -> Result<Option<Val>, Error> {
            let r = match recv.kind {
                ExprKind::Field { .. } | ExprKind::Method { .. } | ExprKind::Index { .. } => {
                    ev.charge(1).map_err(|x| x.or_at(recv.pos))?;
                    ev.enter().map_err(|x| x.or_at(recv.pos))?;
                    let r = ev.chain(recv, env).map_err(|x| x.or_at(recv.pos));
                    ev.depth -= 1;
                    r?
                }
                _ => Some(ev.eval(recv, env)?),
            };
            Ok(r.filter(|v| !(optional && matches!(v, Val::Data(Value::Null)))))
        };
        match &e.kind {
            ExprKind::Field {
                recv,
                name,
                optional,
            } => {
                // A field of a variable (`auth.sub`, `doc.owner`): read it in place
                // rather than copying the variable's whole value first. The same fuel
                // and depth are spent as `eval` of the variable would spend.
                if let ExprKind::Var(var) = &recv.kind {
                    if let Some(v) = lookup(env, var) {
                        self.charge(1).map_err(|x| x.or_at(recv.pos))?;
                        self.enter().map_err(|x| x.or_at(recv.pos))?;
                        self.depth -= 1;
                        if *optional && matches!(v, Val::Data(Value::Null)) {
                            return Ok(None);
                        }
                        return self.field(v, name).map(Some);
                    }
                }
                let Some(r) = recv_of(self, recv, *optional)? else {
                    return Ok(None);
                };
                self.field(&r, name).map(Some)
            }
            ExprKind::Method {
                recv,
                name,
                args,
                optional,
            } => {
                let Some(r) = recv_of(self, recv, *optional)? else {
                    return Ok(None);
                };
                let mut vals = Vec::with_capacity(args.len());
                for a in args {
                    vals.push(self.eval(a, env)?);
                }
                self.method(r, name, vals).map(Some)
            }
            ExprKind::Index { recv, index } => {
                let Some(r) = recv_of(self, recv, false)? else {
                    return Ok(None);
                };
                let i = self.eval(index, env)?;
                let i = self.materialize(i)?;
                let r = match r {
                    Val::Doc(d) => d.to_value(),
                    other => self.materialize(other)?,
                };
                Ok(Some(Val::Data(index_value(&r, &i)?)))
            }
            _ => self.eval(e, env).map(Some),
        }
    }

    pub(crate) fn truthy(&self, v: &Val) -> bool {
        match v {
            Val::Data(d) => d.truthy(),
            _ => true,
        }
    }

    fn var(&mut self, name: &str, env: &Env) -> Result<Val, Error> {
        if let Some(v) = lookup(env, name) {
            return Ok(v.clone());
        }
        if self.schema.collections.contains_key(name) {
            return Ok(Val::Coll(Rc::from(name)));
        }
        if self.schema.functions.contains_key(name) || crate::lang::is_builtin(name) {
            return Err(type_err(format!(
                "{name} is a function: call it as {name}(...)"
            )));
        }
        Err(err(ErrorCode::Unknown, format!("nothing is named {name}")))
    }

    fn field(&mut self, r: &Val, name: &str) -> Result<Val, Error> {
        match r {
            Val::Data(v) => Ok(Val::Data(match v {
                Value::Object(o) => o.get(name).cloned().unwrap_or(Value::Null),
                // As in JavaScript, `length` reads as a property of strings and arrays.
                Value::String(s) if name == "length" => Value::Int(s.chars().count() as i64),
                Value::Array(a) if name == "length" => Value::Int(a.len() as i64),
                Value::Null => {
                    return Err(type_err(format!(
                        "cannot read field {name} of null (use ?. to allow null)"
                    )))
                }
                other => {
                    return Err(type_err(format!(
                        "cannot read field {name} of a {}",
                        other.type_name()
                    )))
                }
            })),
            Val::Doc(d) => Ok(Val::Data(d.field(name))),
            other => Err(type_err(format!(
                "cannot read field {name} of a {}",
                other.kind()
            ))),
        }
    }

    /// Converts a runtime value to data: documents become objects with `id`, sets are
    /// read to the end into arrays. Functions and collections are not data.
    pub(crate) fn materialize(&mut self, v: Val) -> Result<Value, Error> {
        match v {
            Val::Data(d) => Ok(d),
            Val::Doc(d) => Ok(d.to_value()),
            Val::Set(s) => {
                let mut out = Vec::new();
                // Count the size as elements arrive, so a set too large to hold stops
                // at the limit instead of after it has been read whole.
                let mut size = 0usize;
                let limit = self.limits.max_value_bytes;
                self.drive(&s, &mut |ev, v, _| {
                    let v = ev.materialize(v)?;
                    size += v.encoded_len();
                    if size > limit {
                        return Err(err(
                            ErrorCode::ResultTooLarge,
                            format!("a set grew past {limit} bytes as it was read"),
                        ));
                    }
                    ev.charge(v.encoded_len() as u64 / 64)?;
                    out.push(v);
                    Ok(true)
                })?;
                let v = Value::Array(out);
                self.check_built(&v)?;
                Ok(v)
            }
            Val::Order { key, .. } => Ok(key),
            other => Err(type_err(format!("a {} is not a value", other.kind()))),
        }
    }

    fn method(&mut self, recv: Val, name: &str, args: Vec<Val>) -> Result<Val, Error> {
        match &recv {
            Val::Coll(c) => return self.collection_method(c, name, args),
            Val::Set(s) => {
                if let Some(v) = self.set_method(s, name, &args)? {
                    return Ok(v);
                }
            }
            Val::Doc(d) => match name {
                "update" | "replace" => {
                    let [patch] = one_arg(name, args)?;
                    let patch = self.materialize(patch)?;
                    return self.update_doc(d, patch, name == "replace");
                }
                "delete" => {
                    no_args(name, &args)?;
                    self.delete_doc(d)?;
                    return Ok(Val::NULL);
                }
                _ => {}
            },
            Val::Data(v)
                if matches!(name, "update" | "delete")
                    || (name == "replace" && !matches!(v, Value::String(_))) =>
            {
                return Err(type_err(format!(
                    "{name} applies to a document, not {}{}",
                    v.type_name(),
                    if v.is_null() {
                        " (the document was not found, or is not readable)"
                    } else {
                        ""
                    }
                )));
            }
            _ => {}
        }
        let mut all = Vec::with_capacity(args.len() + 1);
        all.push(recv);
        all.extend(args);
        self.call_builtin(name, all)
    }

    // ----- collections and documents -----

    fn coll(&self, name: &str) -> Result<&'a Collection, Error> {
        self.schema.collection(name)
    }

    fn collection_method(&mut self, cname: &str, name: &str, args: Vec<Val>) -> Result<Val, Error> {
        let coll = self.coll(cname)?;
        match name {
            "byId" => {
                let [id] = one_arg(name, args)?;
                let id = match self.materialize(id)? {
                    Value::String(s) => s,
                    other => {
                        return Err(type_err(format!(
                            "byId takes a string id, not {}",
                            other.type_name()
                        )))
                    }
                };
                Ok(self
                    .get_doc(coll, &id)?
                    .map_or(Val::NULL, |d| Val::Doc(Rc::new(d))))
            }
            "all" => {
                no_args(name, &args)?;
                Ok(Val::Set(Rc::new(SetQ::collection(coll))))
            }
            "create" => {
                let [data] = one_arg(name, args)?;
                let data = self.materialize(data)?;
                self.create_doc(coll, data)
            }
            ix => {
                let Some(index) = coll.indexes.get(ix) else {
                    return Err(err(
                        ErrorCode::Unknown,
                        format!("collection {cname} has no index or method named {ix}"),
                    ));
                };
                if args.len() > index.fields.len() {
                    return Err(err(
                        ErrorCode::InvalidArgument,
                        format!(
                            "index {cname}.{ix} has {} fields; {} values given",
                            index.fields.len(),
                            args.len()
                        ),
                    ));
                }
                let mut prefix = Vec::with_capacity(args.len());
                for a in args {
                    prefix.push(self.materialize(a)?);
                }
                Ok(Val::Set(Rc::new(SetQ::index(coll, index, prefix))))
            }
        }
    }

    /// Reads a document as the program sees it: the transaction's own writes included,
    /// and, outside rules, only if its partition is readable.
    pub(crate) fn get_doc(&mut self, coll: &Collection, id: &str) -> Result<Option<Doc>, Error> {
        self.charge(1)?;
        if let Some(r) = &mut self.reads {
            r.docs.insert((coll.name.clone(), id.to_owned()));
        }
        let Some(bytes) = self.view.get(&keys::doc_key(&coll.name, id))? else {
            return Ok(None);
        };
        self.charge(bytes.len() as u64 / 1024)?;
        let stored = StoredDoc::decode(&bytes)?;
        if !self.can_read(coll, &stored.partition)? {
            return Ok(None);
        }
        Ok(Some(Doc {
            collection: coll.name.clone(),
            id: id.to_owned(),
            stored,
        }))
    }
}

pub(crate) fn one_arg<const N: usize>(name: &str, args: Vec<Val>) -> Result<[Val; N], Error> {
    let n = args.len();
    args.try_into().map_err(|_| {
        err(
            ErrorCode::InvalidArgument,
            format!(
                "{name} takes {N} argument{}, {n} given",
                if N == 1 { "" } else { "s" }
            ),
        )
    })
}

pub(crate) fn no_args(name: &str, args: &[Val]) -> Result<(), Error> {
    if args.is_empty() {
        Ok(())
    } else {
        Err(err(
            ErrorCode::InvalidArgument,
            format!("{name} takes no arguments, {} given", args.len()),
        ))
    }
}
