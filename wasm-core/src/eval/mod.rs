//! The evaluator: runs the language against a transaction's view of the state.
//!
//! Every evaluation is bounded, and every bound is a deterministic error with its own
//! code, never a hang, a stack overflow, an abort or a panic:
//! - each step costs fuel ([`Limits::fuel`]);
//! - recursion is bounded ([`Limits::max_depth`]);
//! - what the program holds is paid for in bytes before it is allocated
//!   ([`Limits::max_memory_bytes`], see [`meter`]); a variable read shares its value
//!   instead of copying it;
//! - every value the program builds is checked against the size and nesting limits.
//!
//! What the program cannot see costs it nothing it can observe (DESIGN invariant 9):
//! entries of partitions it may not read are skipped without fuel or memory, rules run
//! on budgets of their own ([`Limits::rule_fuel`], [`Limits::rule_memory_bytes`]), and
//! both count instead against a separate limit on unobservable work
//! ([`Limits::max_hidden_work`]), whose exhaustion is the one coarse signal left
//! (docs/DECISIONS.md, "What a hidden document may reveal").
//!
//! Nothing here reads a clock, a random source or a hash map's iteration order: `now()`
//! and `newId()` come from the [`Context`], and every map is a `BTreeMap`.
//!
//! The files: `sets` (lazy queries), `builtins`, `rules` (read and write rules and
//! their budgets), `write` (the write path and ids), `arith` (operators), `meter`
//! (memory).

mod arith;
pub mod builtins;
mod meter;
mod rules;
mod sets;
mod write;
pub(crate) use rules::readable_key;
pub(crate) use write::check_id;

use std::collections::BTreeMap;
use std::rc::Rc;
use std::sync::Arc;

pub(crate) use arith::{as_f64, binary, display};
pub use meter::Data;
pub(crate) use meter::{cost, Meter, Paid, SLOT};
pub(crate) use sets::SetQ;
pub use sets::COUNTED_KEYS_PER_STEP;
pub use write::MAX_ID_BYTES;

use crate::doc::StoredDoc;
use crate::error::{Error, ErrorCode, Pos};
use crate::keys;
use crate::lang::ast::{Block, Expr, ExprKind, Lambda, Stmt, UnOp};
use crate::schema::{Collection, Schema};
use crate::storage::{Overlay, Storage};
use crate::value::{Value, MAX_VALUE_DEPTH};

/// Limits on one evaluation (a transaction or a query, with the rules they run).
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
    /// Bytes the program may hold at once: every value it builds or copies and every
    /// document it reads is paid for before it is allocated, and given back when the
    /// program lets go of it; a transaction's writes are paid for until it ends
    /// (`Value::mem_cost` is the model). `MEMORY_EXHAUSTED` beyond.
    pub max_memory_bytes: u64,
    /// Steps of one rule evaluation: a read rule for a partition, the rules of one
    /// write, a partition expression. Rules do not spend the program's fuel; a read
    /// rule that runs out of its own denies.
    pub rule_fuel: u64,
    /// Bytes one rule evaluation may hold, apart from the program's.
    pub rule_memory_bytes: u64,
    /// Work the program cannot see, in steps: entries of partitions it may not read
    /// that a scan passes over (one each, and one per KiB), and the steps of the
    /// rules it causes to run. `HIDDEN_WORK_EXHAUSTED` beyond.
    pub max_hidden_work: u64,
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
            max_memory_bytes: 64 * 1024 * 1024,
            rule_fuel: 10_000,
            rule_memory_bytes: 16 * 1024 * 1024,
            max_hidden_work: 1_000_000,
            quotas: crate::quota::Quotas::UNLIMITED,
        }
    }
}

impl Limits {
    /// Every limit that decides execution, as one comparable string: replicas that
    /// apply one log must have the same (a region of many refuses to join a deployment
    /// with others: `SETTINGS_MISMATCH`). Every field is named here, so a new limit
    /// cannot be left out.
    pub fn fingerprint(&self) -> String {
        let Limits {
            fuel,
            max_depth,
            max_args_bytes,
            max_doc_bytes,
            max_result_bytes,
            max_value_bytes,
            max_writes,
            max_memory_bytes,
            rule_fuel,
            rule_memory_bytes,
            max_hidden_work,
            quotas:
                crate::quota::Quotas {
                    documents,
                    bytes,
                    partitions,
                },
        } = self;
        format!(
            "fuel={fuel} depth={max_depth} args={max_args_bytes} doc={max_doc_bytes} \
             result={max_result_bytes} value={max_value_bytes} writes={max_writes} \
             memory={max_memory_bytes} rule_fuel={rule_fuel} rule_memory={rule_memory_bytes} \
             hidden={max_hidden_work} quota_documents={documents} quota_bytes={bytes} \
             quota_partitions={partitions}"
        )
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
    Data(Data),
    Doc(Rc<Doc>),
    Coll(Rc<str>),
    Set(Rc<SetQ>),
    Func(Rc<Closure>),
    /// `asc(v)` / `desc(v)`: a sort key with its direction.
    Order {
        key: Data,
        desc: bool,
    },
}

impl Val {
    pub const NULL: Val = Val::Data(Data::NULL);

    /// The length of the value's canonical encoding when known without a walk (see
    /// [`Data::known_encoded_len`]).
    pub(crate) fn known_encoded_len(&self) -> Option<u64> {
        match self {
            Val::Data(d) => d.known_encoded_len(),
            _ => None,
        }
    }

    /// Null, a boolean or a number (nothing to pay for).
    pub(crate) fn scalar(v: Value) -> Val {
        debug_assert!(matches!(
            v,
            Value::Null | Value::Bool(_) | Value::Int(_) | Value::Float(_)
        ));
        Val::Data(Data::Scalar(v))
    }

    pub(crate) fn bool(b: bool) -> Val {
        Val::scalar(Value::Bool(b))
    }

    pub(crate) fn int(i: i64) -> Val {
        Val::scalar(Value::Int(i))
    }

    pub(crate) fn is_null(&self) -> bool {
        matches!(self, Val::Data(d) if d.value().is_null())
    }

    /// The data, when this is data.
    pub(crate) fn value(&self) -> Option<&Value> {
        match self {
            Val::Data(d) => Some(d.value()),
            _ => None,
        }
    }

    pub(crate) fn kind(&self) -> &'static str {
        match self {
            Val::Data(d) => d.value().type_name(),
            Val::Doc(_) => "document",
            Val::Coll(_) => "collection",
            Val::Set(_) => "set",
            Val::Func(_) => "function",
            Val::Order { .. } => "sort key",
        }
    }
}

/// A document as a program holds it (paid for while it is held).
#[derive(Debug)]
pub struct Doc {
    pub collection: String,
    pub id: String,
    pub stored: StoredDoc,
    paid: Paid,
}

impl Doc {
    /// The memory a document's own fields take besides its data.
    fn overhead(collection: &str, id: &str, partition: &str) -> u64 {
        3 * SLOT + (collection.len() + id.len() + partition.len()) as u64
    }
}

/// A value the evaluator owns, with what it paid for it (at least its cost).
pub(crate) struct Owned {
    pub value: Value,
    pub paid: Paid,
}

/// A lambda with the variables it captured.
#[derive(Debug)]
pub struct Closure {
    pub lambda: Arc<Lambda>,
    env: Env,
    _paid: Paid,
}

/// What a closure takes to hold, besides the variables it shares.
const CLOSURE_BYTES: u64 = 64;
/// What a variable's binding takes to hold, besides its value.
const BINDING_BYTES: u64 = 96;

#[derive(Debug)]
pub(crate) struct EnvNode {
    name: Name,
    val: Val,
    parent: Env,
    _paid: Paid,
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

/// Binds a variable (the binding paid for with `paid`).
fn bind(env: &Env, name: &str, val: Val, paid: Paid) -> Env {
    Some(Rc::new(EnvNode {
        name: Name::Owned(name.to_owned()),
        val,
        parent: env.clone(),
        _paid: paid,
    }))
}

/// [`bind`] for a name the engine itself gives.
fn bind_static(env: &Env, name: &'static str, val: Val, paid: Paid) -> Env {
    Some(Rc::new(EnvNode {
        name: Name::Static(name),
        val,
        parent: env.clone(),
        _paid: paid,
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
    /// Fuel left in the current budget: the program's, or a rule's while one runs.
    fuel: u64,
    /// The program's fuel left while a rule runs.
    program_fuel: Option<u64>,
    depth: u32,
    /// Scans in progress, one inside another's sink.
    scans: u32,
    ids_made: u64,
    /// The program's memory, and the meter values are paid into now (a rule's while
    /// one runs).
    program: Rc<Meter>,
    meter: Rc<Meter>,
    /// Unobservable work done so far ([`Limits::max_hidden_work`]).
    hidden: u64,
    /// Read-rule answers per collection and partition, so each is evaluated once,
    /// keyed as [`readable_key`] makes them.
    readable: BTreeMap<String, bool>,
    /// The buffer a lookup in `readable` makes its key in, so that a hit allocates
    /// nothing (a scan asks once per document).
    readable_key: String,
    /// Bytes of keys in `readable` (the cache stops growing at a bound).
    readable_bytes: usize,
    pub(crate) touched: Vec<Touched>,
    touched_set: std::collections::BTreeSet<(String, String)>,
    /// What the evaluation read, when tracking is on (for read-rule invalidation).
    pub(crate) reads: Option<ReadSet>,
    /// The root environment (`auth`), built once: environments are immutable, so
    /// every function call and rule check can share it instead of copying `auth`.
    root: Option<Env>,
    /// The explain trace, when explaining ([`crate::explain`]): only written to, so
    /// nothing the evaluation does depends on it.
    pub(crate) explain: Option<Box<crate::explain::Recorder>>,
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
        let program = Meter::new(limits.max_memory_bytes, "the program");
        Evaluator {
            schema,
            view: Overlay::new(store),
            limits,
            ctx,
            mode,
            fuel: limits.fuel,
            program_fuel: None,
            depth: 0,
            scans: 0,
            ids_made: 0,
            meter: program.clone(),
            program,
            hidden: 0,
            readable: BTreeMap::new(),
            readable_key: String::new(),
            readable_bytes: 0,
            touched: Vec::new(),
            touched_set: Default::default(),
            reads: None,
            root: None,
            explain: None,
        }
    }

    /// The program's fuel left.
    pub fn fuel_left(&self) -> u64 {
        self.program_fuel.unwrap_or(self.fuel)
    }

    /// What the evaluation has used of its limits so far.
    pub fn usage(&self) -> crate::exec::Usage {
        crate::exec::Usage {
            fuel: self.limits.fuel - self.fuel_left(),
            memory: self.program.peak(),
            hidden_work: self.hidden,
        }
    }

    /// Spends `n` steps of fuel from the current budget.
    pub(crate) fn charge(&mut self, n: u64) -> Result<(), Error> {
        if self.fuel < n {
            self.fuel = 0;
            let (whose, limit) = match self.program_fuel {
                None => ("the program's", self.limits.fuel),
                Some(_) => ("a rule's", self.limits.rule_fuel),
            };
            return Err(err(
                ErrorCode::FuelExhausted,
                format!("{whose} step budget of {limit} ran out"),
            ));
        }
        self.fuel -= n;
        Ok(())
    }

    /// Counts `n` steps of work the program cannot see.
    pub(crate) fn hidden_work(&mut self, n: u64) -> Result<(), Error> {
        self.hidden = self.hidden.saturating_add(n);
        if self.hidden > self.limits.max_hidden_work {
            return Err(err(
                ErrorCode::HiddenWorkExhausted,
                format!(
                    "the evaluation passed over more than {} steps of work it cannot see \
                     (documents of partitions it may not read, rule evaluations); \
                     narrow the scan with an index whose first fields select readable partitions",
                    self.limits.max_hidden_work
                ),
            ));
        }
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

    /// Pays for `bytes` about to be allocated, into the current meter.
    pub(crate) fn pay(&self, bytes: u64) -> Result<Paid, Error> {
        self.meter.pay(bytes)
    }

    /// Holds data the evaluator owns, whose encoding's length `encoded` was measured as
    /// it was built.
    pub(crate) fn hold_sized(o: Owned, encoded: u64) -> Val {
        Val::Data(Data::held_sized(o.value, o.paid, encoded))
    }

    /// A copy of `v` for the program to hold, paid for (memory, and a step per KiB
    /// copied, as for documents read) before it is made.
    pub(crate) fn copy(&mut self, v: &Value) -> Result<Val, Error> {
        match v {
            Value::Null | Value::Bool(_) | Value::Int(_) | Value::Float(_) => {
                Ok(Val::scalar(v.clone()))
            }
            _ => {
                let bytes = cost(v);
                self.charge(bytes / 1024)?;
                let paid = self.pay(bytes)?;
                Ok(Val::Data(Data::held(v.clone(), paid)))
            }
        }
    }

    /// What a binding takes to hold.
    fn binding(&self) -> Result<Paid, Error> {
        self.pay(BINDING_BYTES)
    }

    /// A new string for the program to hold, paid for before it is made.
    pub(crate) fn string(&self, len: usize, make: impl FnOnce() -> String) -> Result<Val, Error> {
        let paid = self.pay(meter::string_cost(len as u64))?;
        Ok(Val::Data(Data::held(Value::String(make()), paid)))
    }

    /// Checks a value the program built: nesting, size, and fuel in proportion to its
    /// size. Gives the size (the length of its canonical encoding).
    pub(crate) fn check_built(&mut self, v: &Value) -> Result<u64, Error> {
        let Some(n) = v.encoded_len_within(MAX_VALUE_DEPTH) else {
            return Err(err(
                ErrorCode::DepthExceeded,
                format!("a value nests deeper than {MAX_VALUE_DEPTH} levels"),
            ));
        };
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
        Ok(n as u64)
    }

    /// The root environment: `auth`, paid for by the program.
    fn root_env(&mut self) -> Result<Env, Error> {
        if let Some(env) = &self.root {
            return Ok(env.clone());
        }
        let auth = &self.ctx.auth;
        let val = match auth {
            Value::Null | Value::Bool(_) | Value::Int(_) | Value::Float(_) => {
                Val::scalar(auth.clone())
            }
            _ => Val::Data(Data::held(auth.clone(), self.program.pay(cost(auth))?)),
        };
        let env = bind_static(&None, "auth", val, self.program.pay(BINDING_BYTES)?);
        self.root = Some(env.clone());
        Ok(env)
    }

    /// Runs a block as a transaction or query body.
    pub fn run_block(&mut self, block: &Block) -> Result<Val, Error> {
        let env = self.root_env()?;
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
        if f.param_types.iter().any(Option::is_some) {
            // Typed parameters: checked at the outside entry (a call from a client),
            // paid for as a document's fields are (crate::types).
            self.charge(1 + cost(args) / 64)?;
            let given: Vec<&Value> = match args {
                Value::Array(a) => a.iter().collect(),
                Value::Object(o) => f
                    .params
                    .iter()
                    .map(|p| o.get(p).unwrap_or(&Value::Null))
                    .collect(),
                _ => Vec::new(),
            };
            if given.len() == f.params.len() {
                crate::types::validate_args(name, &f.params, &f.param_types, &given)?;
            }
        }
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
                a.iter().map(|v| self.copy(v)).collect::<Result<_, _>>()?
            }
            Value::Object(o) => {
                if let Some(k) = o.keys().find(|k| !f.params.iter().any(|p| p == k.as_str())) {
                    return Err(err(
                        ErrorCode::InvalidArgument,
                        format!("{name} has no parameter named {k}"),
                    ));
                }
                f.params
                    .iter()
                    .map(|p| self.copy(o.get(p).unwrap_or(&Value::Null)))
                    .collect::<Result<_, _>>()?
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
        let mut env = self.root_env()?;
        for (p, v) in f.params.iter().zip(args) {
            env = bind(&env, p, v, self.binding()?);
        }
        self.enter()?;
        let r = self.block(&f.body, &env);
        self.depth -= 1;
        r
    }

    pub(crate) fn call_closure(&mut self, c: &Closure, args: Vec<Val>) -> Result<Val, Error> {
        let mut env = c.env.clone();
        let mut args = args.into_iter();
        for p in &c.lambda.params {
            env = bind(&env, p, args.next().unwrap_or(Val::NULL), self.binding()?);
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
                    env = bind(&env, name, v, self.binding()?);
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
            ExprKind::Lit(v) => self.copy(v),
            ExprKind::Var(name) => self.var(name, env),
            ExprKind::Array(items) => {
                let mut paid = self.pay(SLOT)?;
                let mut out = Vec::with_capacity(items.len());
                for x in items {
                    let v = self.eval(x, env)?;
                    // Moved when nothing else holds it, copied (and paid for) when
                    // something does: `[s, s, s]` pays for three copies of `s`.
                    let o = self.own(v)?;
                    paid.absorb(o.paid)?;
                    out.push(o.value);
                }
                let v = Value::Array(out);
                self.check_built(&v)?;
                Ok(Val::Data(Data::held(v, paid)))
            }
            ExprKind::Object(fields) => {
                let mut paid = self.pay(SLOT)?;
                // The fields as written, sorted once at the end (a field written twice
                // keeps its last value).
                let mut entries = Vec::with_capacity(fields.len());
                for (k, x) in fields {
                    let v = self.eval(x, env)?;
                    let v = self.own(v)?;
                    paid.more(meter::entry_extra(k, entries.is_empty()))?;
                    paid.absorb(v.paid)?;
                    entries.push((k.clone(), v.value));
                }
                let v = Value::Object(entries.into_iter().collect());
                self.check_built(&v)?;
                Ok(Val::Data(Data::held(v, paid)))
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
                // `!` of a document or a set needs no copy of it (nor reading the set).
                if *op == UnOp::Not && matches!(v, Val::Doc(_) | Val::Set(_)) {
                    return Ok(Val::bool(false));
                }
                let v = self.data(v)?;
                match op {
                    UnOp::Not => Ok(Val::bool(!v.value().truthy())),
                    UnOp::Neg => match v.value() {
                        Value::Int(i) => i
                            .checked_neg()
                            .map(Val::int)
                            .ok_or_else(|| err(ErrorCode::Arithmetic, "integer overflow")),
                        Value::Float(f) => Ok(Val::scalar(Value::float(-f)?)),
                        other => Err(type_err(format!("cannot negate {}", other.type_name()))),
                    },
                }
            }
            ExprKind::Binary(op, a, b) => {
                let x = self.eval(a, env)?;
                let x = self.data(x)?;
                let y = self.eval(b, env)?;
                let y = self.data(y)?;
                let need = arith::result_cost(*op, &x, &y);
                let paid = if need > 0 {
                    Some(self.pay(need)?)
                } else {
                    None
                };
                let v = binary(*op, x.value(), y.value())?;
                match paid {
                    None => Ok(Val::scalar(v)),
                    Some(mut paid) => {
                        if matches!(v, Value::String(_) | Value::Array(_) | Value::Bytes(_)) {
                            self.check_built(&v)?;
                        }
                        if matches!(v, Value::Array(_)) {
                            paid.settle(cost(&v))?;
                        }
                        Ok(Val::Data(Data::held(v, paid)))
                    }
                }
            }
            ExprKind::And(a, b) => {
                let x = self.eval(a, env)?;
                if !self.truthy(&x) {
                    return Ok(Val::bool(false));
                }
                let y = self.eval(b, env)?;
                Ok(Val::bool(self.truthy(&y)))
            }
            ExprKind::Or(a, b) => {
                let x = self.eval(a, env)?;
                if self.truthy(&x) {
                    return Ok(Val::bool(true));
                }
                let y = self.eval(b, env)?;
                Ok(Val::bool(self.truthy(&y)))
            }
            ExprKind::Coalesce(a, b) => {
                let x = self.eval(a, env)?;
                if x.is_null() {
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
                _paid: self.pay(CLOSURE_BYTES)?,
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
            Ok(r.filter(|v| !(optional && v.is_null())))
        };
        match &e.kind {
            ExprKind::Field {
                recv,
                name,
                optional,
            } => {
                // A field of a variable (`auth.sub`, `doc.owner`): read it in place. The
                // same fuel and depth are spent as `eval` of the variable would spend.
                if let ExprKind::Var(var) = &recv.kind {
                    if let Some(v) = lookup(env, var) {
                        let v = v.clone();
                        self.charge(1).map_err(|x| x.or_at(recv.pos))?;
                        self.enter().map_err(|x| x.or_at(recv.pos))?;
                        self.depth -= 1;
                        if *optional && v.is_null() {
                            return Ok(None);
                        }
                        return self.field(&v, name).map(Some);
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
                let i = self.data(i)?;
                self.index(&r, i.value()).map(Some)
            }
            _ => self.eval(e, env).map(Some),
        }
    }

    /// `r[i]`: the element, field or character, copied for the program to hold.
    fn index(&mut self, r: &Val, i: &Value) -> Result<Val, Error> {
        match (r, i) {
            (Val::Doc(_), Value::String(k)) => self.field(r, k),
            (Val::Doc(_), i) => Err(type_err(format!(
                "cannot index a document with a {}",
                i.type_name()
            ))),
            (Val::Data(d), _) => match arith::index_value(d.value(), i)? {
                arith::Indexed::Null => Ok(Val::NULL),
                arith::Indexed::Ref(v) => self.copy(v),
                arith::Indexed::Char(c) => self.string(c.len_utf8(), || c.to_string()),
            },
            (other, _) => Err(type_err(format!("cannot index a {}", other.kind()))),
        }
    }

    pub(crate) fn truthy(&self, v: &Val) -> bool {
        match v {
            Val::Data(d) => d.value().truthy(),
            _ => true,
        }
    }

    fn var(&mut self, name: &str, env: &Env) -> Result<Val, Error> {
        if let Some(v) = lookup(env, name) {
            // Shared, not copied: a read of a variable costs no memory.
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
            Val::Data(d) => match d.value() {
                Value::Object(o) => match o.get(name) {
                    Some(v) => self.copy(v),
                    None => Ok(Val::NULL),
                },
                // As in JavaScript, `length` reads as a property of strings and arrays.
                Value::String(s) if name == "length" => Ok(Val::int(s.chars().count() as i64)),
                Value::Array(a) if name == "length" => Ok(Val::int(a.len() as i64)),
                Value::Null => Err(type_err(format!(
                    "cannot read field {name} of null (use ?. to allow null)"
                ))),
                other => Err(type_err(format!(
                    "cannot read field {name} of a {}",
                    other.type_name()
                ))),
            },
            Val::Doc(d) => {
                if name == "id" {
                    let id = &d.id;
                    self.string(id.len(), || id.clone())
                } else if self.coll(&d.collection)?.is_text(name) {
                    let text = crate::ytext::stored(d.stored.data.get(name))?.text;
                    self.string(text.len(), || text.to_owned())
                } else {
                    self.copy(d.stored.data.get(name))
                }
            }
            other => Err(type_err(format!(
                "cannot read field {name} of a {}",
                other.kind()
            ))),
        }
    }

    /// A runtime value as data the program holds: documents become objects with `id`
    /// (a copy, paid for), sets are read into arrays. Functions and collections are
    /// not data.
    pub(crate) fn data(&mut self, v: Val) -> Result<Data, Error> {
        match v {
            Val::Data(d) => Ok(d),
            Val::Order { key, .. } => Ok(key),
            other => {
                let o = self.own(other)?;
                Ok(Data::held(o.value, o.paid))
            }
        }
    }

    /// A runtime value as data the evaluator owns, with its payment: moved out when
    /// nothing else holds it, copied and paid for when something does.
    pub(crate) fn own(&mut self, v: Val) -> Result<Owned, Error> {
        match v {
            Val::Data(d) | Val::Order { key: d, .. } => match d.try_take() {
                Ok((value, Some(paid))) => Ok(Owned { value, paid }),
                Ok((value, None)) => Ok(Owned {
                    value,
                    paid: self.pay(SLOT)?,
                }),
                Err(shared) => {
                    let bytes = shared.cost().max(SLOT);
                    self.charge(bytes / 1024)?;
                    let paid = self.pay(bytes)?;
                    Ok(Owned {
                        value: shared.value().clone(),
                        paid,
                    })
                }
            },
            Val::Doc(d) => {
                let data = &d.stored.data;
                let first = data.as_object().is_none_or(|o| o.is_empty());
                let paid = self.pay(
                    cost(data)
                        + meter::entry_extra("id", first)
                        + meter::string_cost(d.id.len() as u64),
                )?;
                let coll = self.coll(&d.collection)?;
                // A document nobody else holds (one a scan just read) gives its fields up
                // rather than having them copied; what it paid is released after, as
                // when it is dropped.
                let (mut o, id, _held) = match Rc::try_unwrap(d) {
                    Ok(Doc {
                        id, stored, paid, ..
                    }) => match stored.data {
                        Value::Object(o) => (write::visible_owned(coll, o)?, id, Some(paid)),
                        other => (write::visible(coll, &other)?, id, Some(paid)),
                    },
                    Err(d) => (write::visible(coll, &d.stored.data)?, d.id.clone(), None),
                };
                o.insert("id", Value::String(id));
                Ok(Owned {
                    value: Value::Object(o),
                    paid,
                })
            }
            Val::Set(s) => self.read_all(&s),
            other => Err(type_err(format!("a {} is not a value", other.kind()))),
        }
    }

    /// A runtime value as plain data, for a value that leaves the evaluation (a
    /// result) or is consumed at once.
    pub(crate) fn materialize(&mut self, v: Val) -> Result<Value, Error> {
        self.own(v).map(|o| o.value)
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
                    let patch = self.own(patch)?;
                    return self.update_doc(d, patch, name == "replace");
                }
                "delete" => {
                    no_args(name, &args)?;
                    self.delete_doc(d)?;
                    return Ok(Val::NULL);
                }
                "editText" => {
                    let [field, update] = one_arg(name, args)?;
                    let field = self.data(field)?;
                    let Value::String(field) = field.value() else {
                        return Err(type_err(format!(
                            "editText takes a field name, not {}",
                            field.value().type_name()
                        )));
                    };
                    let update = self.own(update)?;
                    return self.edit_text(d, field, update);
                }
                "textState" => {
                    let [field] = one_arg(name, args)?;
                    let field = self.data(field)?;
                    let coll = self.coll(&d.collection)?;
                    let field = match field.value() {
                        Value::String(f) if coll.is_text(f) => f,
                        other => {
                            return Err(type_err(format!(
                                "textState takes the name of a text field of {}, not {}",
                                coll.name,
                                crate::text::preview(other)
                            )))
                        }
                    };
                    let state = crate::ytext::stored(d.stored.data.get(field))?.state;
                    // A text never edited: the update of an empty document.
                    let state = if state.is_empty() { &[0, 0][..] } else { state };
                    let paid = self.pay(meter::string_cost(state.len() as u64))?;
                    return Ok(Val::Data(Data::held(Value::Bytes(state.to_vec()), paid)));
                }
                _ => {}
            },
            Val::Data(v)
                if matches!(name, "update" | "delete" | "editText" | "textState")
                    || (name == "replace" && !matches!(v.value(), Value::String(_))) =>
            {
                return Err(type_err(format!(
                    "{name} applies to a document, not {}{}",
                    v.value().type_name(),
                    if v.value().is_null() {
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
                let id = self.data(id)?;
                let Value::String(id) = id.value() else {
                    return Err(type_err(format!(
                        "byId takes a string id, not {}",
                        id.value().type_name()
                    )));
                };
                Ok(self
                    .get_doc(coll, id)?
                    .map_or(Val::NULL, |d| Val::Doc(Rc::new(d))))
            }
            "all" => {
                no_args(name, &args)?;
                Ok(Val::Set(Rc::new(SetQ::collection(self, coll)?)))
            }
            "create" => {
                let [data] = one_arg(name, args)?;
                let data = self.own(data)?;
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
                let mut paid = self.pay(0)?;
                for a in args {
                    let o = self.own(a)?;
                    paid.absorb(o.paid)?;
                    prefix.push(o.value);
                }
                Ok(Val::Set(Rc::new(SetQ::index(
                    self, coll, index, prefix, paid,
                )?)))
            }
        }
    }

    /// Reads a document as the program sees it: the transaction's own writes included,
    /// and, outside rules, only if its partition is readable. A document the program
    /// may not read costs what a missing one costs.
    pub(crate) fn get_doc(&mut self, coll: &Collection, id: &str) -> Result<Option<Doc>, Error> {
        self.charge(1)?;
        if let Some(r) = &mut self.reads {
            r.docs.insert((coll.name.clone(), id.to_owned()));
        }
        let Some(bytes) = self.view.get(&keys::doc_key(&coll.name, id))? else {
            if let Some(x) = &mut self.explain {
                x.read(&coll.name, id, None);
            }
            return Ok(None);
        };
        if !self.can_read(coll, StoredDoc::partition_of(&bytes)?)? {
            self.hidden_work(1 + bytes.len() as u64 / 1024)?;
            if let Some(x) = &mut self.explain {
                x.invisible(&coll.name, 1);
            }
            return Ok(None);
        }
        self.charge(bytes.len() as u64 / 1024)?;
        self.decode_doc(coll, id, &bytes).map(Some)
    }

    /// Decodes a stored document for the program to hold, paying for it as it is
    /// decoded.
    pub(crate) fn decode_doc(
        &mut self,
        coll: &Collection,
        id: &str,
        bytes: &[u8],
    ) -> Result<Doc, Error> {
        let partition = StoredDoc::partition_of(bytes)?;
        let mut paid = self.pay(Doc::overhead(&coll.name, id, partition))?;
        let (stored, cost) = StoredDoc::decode_within(bytes, self.meter.left()).map_err(|e| {
            if e.code == ErrorCode::MemoryExhausted {
                err(
                    ErrorCode::MemoryExhausted,
                    format!(
                        "reading {}/{id} would hold more than the memory budget of {} bytes",
                        coll.name,
                        self.meter.limit()
                    ),
                )
            } else {
                e
            }
        })?;
        paid.more(cost)?;
        if let Some(x) = &mut self.explain {
            x.read(&coll.name, id, Some((&stored.partition, &stored.data)));
        }
        Ok(Doc {
            collection: coll.name.clone(),
            id: id.to_owned(),
            stored,
            paid,
        })
    }

    /// A document the evaluator made (a write), holding what was paid for its data.
    pub(crate) fn new_doc(
        &mut self,
        coll: &Collection,
        id: String,
        stored: StoredDoc,
        mut paid: Paid,
    ) -> Result<Doc, Error> {
        paid.more(Doc::overhead(&coll.name, &id, &stored.partition))?;
        Ok(Doc {
            collection: coll.name.clone(),
            id,
            stored,
            paid,
        })
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
