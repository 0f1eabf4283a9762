//! `warren check`'s static checks of a compiled schema: names and arguments in
//! functions, rules and partition expressions, against the collections, indexes,
//! fields and functions the schema declares (docs/LANGUAGE.md, "Checking a schema").
//!
//! The checks are conservative: they report what would fail on every run (an unknown
//! collection, index, function or variable; a call with the wrong number of
//! arguments; a field a typed collection does not declare; a literal that cannot fit
//! a declared type) and say nothing where a value's type is not known statically.
//! They are not run when a schema is loaded (a schema that fails them still runs, as
//! before): `warren check` runs them and fails on any.

use crate::error::{Error, ErrorCode, Pos};
use crate::lang::ast::{Action, Block, Expr, ExprKind, FieldDecl, Stmt, TypeExpr};
use crate::lang::is_builtin;
use crate::schema::{Collection, Schema};
use crate::types::check_value;
use crate::value::Value;

/// What the checker knows of an expression's value.
#[derive(Clone, Debug, PartialEq)]
enum Ty {
    Unknown,
    /// A literal (scalar) value.
    Lit(Value),
    /// A collection's document (or null, after `?.`).
    Doc(String),
    /// A collection itself (`Task` in `Task.byId(...)`).
    Coll(String),
    Bool,
    Array,
    Object,
}

struct Checker<'s> {
    schema: &'s Schema,
    errors: Vec<Error>,
    /// Variables in scope, innermost last.
    scope: Vec<(String, Ty)>,
}

/// Checks every function, rule and partition expression; the errors in source order.
pub fn check(schema: &Schema) -> Vec<Error> {
    let mut c = Checker {
        schema,
        errors: Vec::new(),
        scope: Vec::new(),
    };
    for coll in schema.collections.values() {
        let doc = || Ty::Doc(coll.name.clone());
        if let Some(p) = &coll.partition {
            c.with(&[("auth", Ty::Unknown), ("doc", doc())], |c| {
                c.expr(p);
            });
        }
        for (action, rules) in &coll.rules {
            for r in rules {
                let vars: Vec<(&str, Ty)> = match action {
                    Action::Read => vec![
                        ("auth", Ty::Unknown),
                        ("partition", Ty::Unknown),
                        ("collection", Ty::Unknown),
                    ],
                    _ => vec![
                        ("auth", Ty::Unknown),
                        ("partition", Ty::Unknown),
                        ("collection", Ty::Unknown),
                        ("doc", doc()),
                        ("new", doc()),
                        ("old", doc()),
                    ],
                };
                c.with(&vars, |c| {
                    c.expr(&r.expr);
                });
            }
        }
    }
    for f in schema.functions.values() {
        let mut vars: Vec<(&str, Ty)> = vec![("auth", Ty::Unknown)];
        for p in &f.params {
            vars.push((p.as_str(), Ty::Unknown));
        }
        c.with(&vars, |c| {
            c.block(&f.body);
        });
    }
    let mut errors = c.errors;
    errors.sort_by_key(|e| e.pos.map(|p| (p.line, p.col)));
    errors.dedup();
    errors
}

impl<'s> Checker<'s> {
    fn with(&mut self, vars: &[(&str, Ty)], f: impl FnOnce(&mut Self)) {
        let n = self.scope.len();
        for (k, t) in vars {
            self.scope.push(((*k).to_owned(), t.clone()));
        }
        f(self);
        self.scope.truncate(n);
    }

    fn lookup(&self, name: &str) -> Option<&Ty> {
        self.scope
            .iter()
            .rev()
            .find(|(k, _)| k == name)
            .map(|(_, t)| t)
    }

    fn error(&mut self, code: ErrorCode, pos: Pos, message: String) {
        self.errors.push(Error::at(code, pos, message));
    }

    fn coll(&self, name: &str) -> Option<&'s Collection> {
        self.schema.collections.get(name)
    }

    fn block(&mut self, b: &Block) -> Ty {
        let n = self.scope.len();
        let mut last = Ty::Lit(Value::Null);
        for s in &b.stmts {
            match s {
                Stmt::Let(name, e, _) => {
                    let t = self.expr(e);
                    self.scope.push((name.clone(), t));
                    last = Ty::Lit(Value::Null);
                }
                Stmt::Expr(e) => last = self.expr(e),
            }
        }
        self.scope.truncate(n);
        last
    }

    fn expr(&mut self, e: &Expr) -> Ty {
        match &e.kind {
            ExprKind::Lit(v) => match v {
                Value::Array(_) => Ty::Array,
                Value::Object(_) => Ty::Object,
                v => Ty::Lit(v.clone()),
            },
            ExprKind::Var(name) => {
                if let Some(t) = self.lookup(name) {
                    return t.clone();
                }
                if self.schema.collections.contains_key(name) {
                    return Ty::Coll(name.clone());
                }
                if self.schema.functions.contains_key(name) || is_builtin(name) {
                    return Ty::Unknown;
                }
                self.error(
                    ErrorCode::Unknown,
                    e.pos,
                    format!("nothing is named {name} (no variable or collection)"),
                );
                Ty::Unknown
            }
            ExprKind::Array(xs) => {
                for x in xs {
                    self.expr(x);
                }
                Ty::Array
            }
            ExprKind::Object(kv) => {
                for (_, x) in kv {
                    self.expr(x);
                }
                Ty::Object
            }
            ExprKind::Field { recv, name, .. } => {
                let t = self.expr(recv);
                if let Ty::Doc(c) = &t {
                    if let Some(coll) = self.coll(c) {
                        if coll.is_typed()
                            && name != "id"
                            && !coll.is_text(name)
                            && !coll.fields.iter().any(|f| &f.name == name)
                        {
                            self.error(
                                ErrorCode::Unknown,
                                e.pos,
                                format!("collection {c} has no field named {name}"),
                            );
                        }
                    }
                }
                Ty::Unknown
            }
            ExprKind::Index { recv, index } => {
                self.expr(recv);
                self.expr(index);
                Ty::Unknown
            }
            ExprKind::Call { name, args } => {
                let tys: Vec<Ty> = args.iter().map(|a| self.expr(a)).collect();
                if self.lookup(name).is_some() {
                    return Ty::Unknown;
                }
                if let Some(f) = self.schema.functions.get(name) {
                    if args.len() != f.params.len() {
                        self.error(
                            ErrorCode::InvalidArgument,
                            e.pos,
                            format!(
                                "{name} takes {} arguments, {} given",
                                f.params.len(),
                                args.len()
                            ),
                        );
                    } else {
                        for ((p, ty), (a, t)) in f
                            .params
                            .iter()
                            .zip(&f.param_types)
                            .zip(args.iter().zip(&tys))
                        {
                            if let Some((ty, optional)) = ty {
                                self.fits(ty, *optional, t, a.pos, || {
                                    format!("{name}: argument {p}")
                                });
                            }
                        }
                    }
                    return Ty::Unknown;
                }
                if is_builtin(name) {
                    return Ty::Unknown;
                }
                self.error(
                    ErrorCode::Unknown,
                    e.pos,
                    format!("no function named {name} (no schema function or built-in)"),
                );
                Ty::Unknown
            }
            ExprKind::Method {
                recv, name, args, ..
            } => {
                let t = self.expr(recv);
                let tys: Vec<Ty> = args.iter().map(|a| self.expr(a)).collect();
                match t {
                    Ty::Coll(c) => self.collection_method(&c, name, args, &tys, e.pos),
                    Ty::Doc(c) => self.doc_method(&c, name, args, &tys, e.pos),
                    _ => Ty::Unknown,
                }
            }
            ExprKind::Unary(op, a) => {
                self.expr(a);
                match op {
                    crate::lang::ast::UnOp::Not => Ty::Bool,
                    crate::lang::ast::UnOp::Neg => Ty::Unknown,
                }
            }
            ExprKind::Binary(op, a, b) => {
                self.expr(a);
                self.expr(b);
                use crate::lang::ast::BinOp::*;
                match op {
                    Eq | Ne | Lt | Le | Gt | Ge => Ty::Bool,
                    _ => Ty::Unknown,
                }
            }
            ExprKind::And(a, b) | ExprKind::Or(a, b) => {
                self.expr(a);
                self.expr(b);
                Ty::Unknown
            }
            ExprKind::Coalesce(a, b) => {
                let ta = self.expr(a);
                let tb = self.expr(b);
                match ta {
                    Ty::Doc(_) => ta,
                    _ if ta == tb => ta,
                    _ => Ty::Unknown,
                }
            }
            ExprKind::If {
                cond,
                then,
                otherwise,
            } => {
                self.expr(cond);
                let a = self.block(then);
                let b = otherwise.as_ref().map(|o| self.block(o));
                match b {
                    Some(b) if a == b => a,
                    _ => Ty::Unknown,
                }
            }
            ExprKind::Lambda(l) => {
                let vars: Vec<(&str, Ty)> =
                    l.params.iter().map(|p| (p.as_str(), Ty::Unknown)).collect();
                self.with(&vars, |c| {
                    c.block(&l.body);
                });
                Ty::Unknown
            }
            ExprKind::Block(b) => self.block(b),
        }
    }

    fn collection_method(
        &mut self,
        c: &str,
        name: &str,
        args: &[Expr],
        tys: &[Ty],
        pos: Pos,
    ) -> Ty {
        let Some(coll) = self.coll(c) else {
            return Ty::Unknown;
        };
        let want = |n: usize, this: &mut Self| {
            if args.len() != n {
                this.error(
                    ErrorCode::InvalidArgument,
                    pos,
                    format!("{c}.{name} takes {n} argument(s), {} given", args.len()),
                );
            }
        };
        match name {
            "byId" => {
                want(1, self);
                if let Some(Ty::Lit(v)) = tys.first() {
                    if !matches!(v, Value::String(_)) {
                        self.error(
                            ErrorCode::InvalidArgument,
                            args[0].pos,
                            format!("{c}.byId takes a string id, not {}", v.type_name()),
                        );
                    }
                }
                Ty::Doc(c.to_owned())
            }
            "all" => {
                want(0, self);
                Ty::Unknown
            }
            "create" => {
                want(1, self);
                if let Some(ExprKind::Object(kv)) = args.first().map(|a| &a.kind) {
                    self.literal_fields(coll, kv, true);
                }
                Ty::Doc(c.to_owned())
            }
            ix => {
                match coll.indexes.get(ix) {
                    None => self.error(
                        ErrorCode::Unknown,
                        pos,
                        format!(
                            "collection {c} has no index or method named {ix} (its indexes: {})",
                            if coll.indexes.is_empty() {
                                "none".to_owned()
                            } else {
                                coll.indexes.keys().cloned().collect::<Vec<_>>().join(", ")
                            }
                        ),
                    ),
                    Some(index) if args.len() > index.fields.len() => self.error(
                        ErrorCode::InvalidArgument,
                        pos,
                        format!(
                            "index {c}.{ix} has {} fields; {} values given",
                            index.fields.len(),
                            args.len()
                        ),
                    ),
                    Some(index) => {
                        for ((path, a), t) in index.fields.iter().zip(args).zip(tys) {
                            if path.len() != 1 {
                                continue;
                            }
                            if let Some(f) = coll.fields.iter().find(|f| f.name == path[0]) {
                                let f = f.clone();
                                self.fits(&f.ty, true, t, a.pos, || {
                                    format!("index {c}.{ix}: value for {}", f.name)
                                });
                            }
                        }
                    }
                }
                Ty::Unknown
            }
        }
    }

    fn doc_method(&mut self, c: &str, name: &str, args: &[Expr], tys: &[Ty], pos: Pos) -> Ty {
        let Some(coll) = self.coll(c) else {
            return Ty::Unknown;
        };
        match name {
            "update" | "replace" => {
                if let Some(ExprKind::Object(kv)) = args.first().map(|a| &a.kind) {
                    self.literal_fields(coll, kv, name == "replace");
                }
                Ty::Doc(c.to_owned())
            }
            "editText" | "textState" => {
                if let Some(Ty::Lit(Value::String(f))) = tys.first() {
                    if !coll.is_text(f) {
                        self.error(
                            ErrorCode::Unknown,
                            pos,
                            format!("{c}.{f} is not a text field"),
                        );
                    }
                }
                if name == "editText" {
                    Ty::Doc(c.to_owned())
                } else {
                    Ty::Unknown
                }
            }
            _ => Ty::Unknown,
        }
    }

    /// The fields of an object literal written to a typed collection (`whole`: the
    /// literal is the whole document, as in create and replace).
    fn literal_fields(&mut self, coll: &Collection, kv: &[(crate::value::Key, Expr)], whole: bool) {
        if !coll.is_typed() {
            return;
        }
        for (k, x) in kv {
            if k == "id" || coll.is_text(k) {
                continue;
            }
            let Some(f) = coll.fields.iter().find(|f| f.name == k.as_str()).cloned() else {
                self.error(
                    ErrorCode::Unknown,
                    x.pos,
                    format!("collection {} has no field named {k}", coll.name),
                );
                continue;
            };
            let t = self.expr_quiet(x);
            self.fits(&f.ty, f.optional, &t, x.pos, || {
                format!("{}.{}", coll.name, f.name)
            });
        }
        if whole {
            let missing: Vec<&FieldDecl> = coll
                .fields
                .iter()
                .filter(|f| !f.optional && !kv.iter().any(|(k, _)| k.as_str() == f.name))
                .collect();
            if let (Some(f), Some((_, first))) = (missing.first(), kv.first()) {
                let msg = format!(
                    "{} requires the field {} ({}), which this object does not give",
                    coll.name,
                    f.name,
                    f.ty.describe()
                );
                self.error(ErrorCode::Validation, first.pos, msg);
            }
        }
    }

    /// An expression's type without reporting (it was checked already).
    fn expr_quiet(&mut self, e: &Expr) -> Ty {
        let n = self.errors.len();
        let t = self.expr(e);
        self.errors.truncate(n);
        t
    }

    /// Reports a value of known type that cannot fit `ty`.
    fn fits(
        &mut self,
        ty: &TypeExpr,
        optional: bool,
        t: &Ty,
        pos: Pos,
        what: impl FnOnce() -> String,
    ) {
        let why = match t {
            Ty::Lit(Value::Null) if optional => return,
            Ty::Lit(Value::Null) => "is required, and null is given".to_owned(),
            Ty::Lit(v) => match check_value(ty, v) {
                Ok(()) => return,
                Err(m) => m.why,
            },
            Ty::Bool if !matches!(ty, TypeExpr::Bool | TypeExpr::Any) => {
                format!("expected {}, got boolean", ty.describe())
            }
            Ty::Array if !matches!(ty, TypeExpr::Array(_) | TypeExpr::Any) => {
                format!("expected {}, got an array", ty.describe())
            }
            Ty::Object | Ty::Doc(_) if !matches!(ty, TypeExpr::Object(_) | TypeExpr::Any) => {
                format!("expected {}, got an object", ty.describe())
            }
            _ => return,
        };
        self.error(ErrorCode::Validation, pos, format!("{} {why}", what()));
    }
}

/// The collection whose document a function returns, when its last expression is a
/// write that gives one (`Task.create(...)`, `t.update(...)` with `t` a `Task`):
/// codegen types its result as that document.
pub fn written_doc(schema: &Schema, f: &crate::lang::ast::FunctionDecl) -> Option<String> {
    let Some(Stmt::Expr(last)) = f.body.stmts.last() else {
        return None;
    };
    let ExprKind::Method { name, .. } = &last.kind else {
        return None;
    };
    if !matches!(name.as_str(), "create" | "update" | "replace" | "editText") {
        return None;
    }
    let mut c = Checker {
        schema,
        errors: Vec::new(),
        scope: vec![("auth".to_owned(), Ty::Unknown)],
    };
    for p in &f.params {
        c.scope.push((p.clone(), Ty::Unknown));
    }
    for s in &f.body.stmts {
        if let Stmt::Let(name, e, _) = s {
            let t = c.expr(e);
            c.scope.push((name.clone(), t));
        }
    }
    match c.expr(last) {
        Ty::Doc(coll) => Some(coll),
        _ => None,
    }
}
