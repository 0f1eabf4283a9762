//! The syntax tree.

use std::sync::Arc;

use crate::error::Pos;
use crate::value::Value;

/// The name of the implicit parameter of a `.field` shorthand lambda.
pub const IT: &str = "$it";

#[derive(Clone, Debug, PartialEq)]
pub struct Expr {
    pub kind: ExprKind,
    pub pos: Pos,
    /// The height of the tree below this node (1 for a leaf). The parser refuses trees
    /// higher than its limit, so every recursive walk over an `Expr` is bounded.
    pub height: u32,
}

impl Expr {
    /// Makes a node, computing its height from its children's.
    pub fn new(kind: ExprKind, pos: Pos) -> Expr {
        let h = |e: &Expr| e.height;
        let hb = |b: &Block| b.height();
        let below = match &kind {
            ExprKind::Lit(_) | ExprKind::Var(_) => 0,
            ExprKind::Array(xs) => xs.iter().map(h).max().unwrap_or(0),
            ExprKind::Object(kv) => kv.iter().map(|(_, e)| h(e)).max().unwrap_or(0),
            ExprKind::Field { recv, .. } => h(recv),
            ExprKind::Index { recv, index } => h(recv).max(h(index)),
            ExprKind::Call { args, .. } => args.iter().map(h).max().unwrap_or(0),
            ExprKind::Method { recv, args, .. } => {
                args.iter().map(h).max().unwrap_or(0).max(h(recv))
            }
            ExprKind::Unary(_, a) => h(a),
            ExprKind::Binary(_, a, b)
            | ExprKind::And(a, b)
            | ExprKind::Or(a, b)
            | ExprKind::Coalesce(a, b) => h(a).max(h(b)),
            ExprKind::If {
                cond,
                then,
                otherwise,
            } => h(cond)
                .max(hb(then))
                .max(otherwise.as_deref().map_or(0, hb)),
            ExprKind::Lambda(l) => hb(&l.body),
            ExprKind::Block(b) => hb(b),
        };
        Expr {
            kind,
            pos,
            height: below + 1,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UnOp {
    Neg,
    Not,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BinOp {
    Add,
    Sub,
    Mul,
    Div,
    Rem,
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
}

#[derive(Clone, Debug, PartialEq)]
pub enum ExprKind {
    Lit(Value),
    Var(String),
    Array(Vec<Expr>),
    Object(Vec<(crate::value::Key, Expr)>),
    /// `a.b`, or `a?.b` when `optional` (null when `a` is null).
    Field {
        recv: Box<Expr>,
        name: String,
        optional: bool,
    },
    /// `a[i]`.
    Index {
        recv: Box<Expr>,
        index: Box<Expr>,
    },
    /// `name(args)`: a local function value, a schema function or a built-in.
    Call {
        name: String,
        args: Vec<Expr>,
    },
    /// `recv.name(args)`, or `recv?.name(args)` when `optional`.
    Method {
        recv: Box<Expr>,
        name: String,
        args: Vec<Expr>,
        optional: bool,
    },
    Unary(UnOp, Box<Expr>),
    Binary(BinOp, Box<Expr>, Box<Expr>),
    And(Box<Expr>, Box<Expr>),
    Or(Box<Expr>, Box<Expr>),
    /// `a ?? b`: `b` only when `a` is null.
    Coalesce(Box<Expr>, Box<Expr>),
    If {
        cond: Box<Expr>,
        then: Arc<Block>,
        otherwise: Option<Arc<Block>>,
    },
    Lambda(Arc<Lambda>),
    Block(Arc<Block>),
}

/// `x => body`, `(a, b) => body`, or the `.field` shorthand.
#[derive(Debug, PartialEq)]
pub struct Lambda {
    pub params: Vec<String>,
    pub body: Block,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Stmt {
    Let(String, Expr, Pos),
    Expr(Expr),
}

/// Statements; the value of a block is the value of its last expression statement
/// (null if it ends with a `let` or is empty).
#[derive(Clone, Debug, PartialEq)]
pub struct Block {
    pub stmts: Vec<Stmt>,
    pub pos: Pos,
}

impl Block {
    pub fn height(&self) -> u32 {
        self.stmts
            .iter()
            .map(|s| match s {
                Stmt::Let(_, e, _) | Stmt::Expr(e) => e.height,
            })
            .max()
            .unwrap_or(0)
    }
}

/// What a rule allows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Action {
    Read,
    Create,
    Update,
    Delete,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Read => "read",
            Action::Create => "create",
            Action::Update => "update",
            Action::Delete => "delete",
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct Rule {
    pub action: Action,
    pub expr: Expr,
    pub pos: Pos,
}

#[derive(Clone, Debug, PartialEq)]
pub struct IndexDecl {
    pub name: String,
    /// Field paths: `created` is `["created"]`, `meta.at` is `["meta", "at"]`.
    pub fields: Vec<Vec<String>>,
    pub unique: bool,
    pub pos: Pos,
}

#[derive(Clone, Debug, PartialEq)]
pub struct CollectionDecl {
    pub name: String,
    pub partition: Option<Expr>,
    pub indexes: Vec<IndexDecl>,
    /// `field name: type` declarations.
    pub fields: Vec<FieldDecl>,
    pub rules: Vec<Rule>,
    pub pos: Pos,
}

/// `field notes: text`, `field title: string(nonblank, ..200)`, `field doneBy?: string`:
/// a field with a declared type (docs/LANGUAGE.md, "Field types").
#[derive(Clone, Debug, PartialEq)]
pub struct FieldDecl {
    pub name: String,
    pub ty: TypeExpr,
    /// Declared with `?`: the field may be absent (or null).
    pub optional: bool,
    pub pos: Pos,
}

/// A declared type: of a document's field, an object's member, an array's elements or
/// a function's parameter. Its nesting is bounded by the parser ([`MAX_TYPE_DEPTH`]).
#[derive(Clone, Debug, PartialEq)]
pub enum TypeExpr {
    /// Any value (the gradual escape hatch).
    Any,
    /// A string of `min..=max` characters (as `.length` counts them); `nonblank`: not
    /// empty or only whitespace.
    String {
        min: Option<u64>,
        max: Option<u64>,
        nonblank: bool,
    },
    Int,
    /// A number: an int or a float.
    Float,
    Bool,
    /// A point in time: milliseconds since the Unix epoch, as `now()` gives it (an int).
    Time,
    /// Collaborative text (document fields only).
    Text,
    /// `[T]`: an array whose elements are all `T`.
    Array(Box<TypeExpr>),
    /// `{ a: T, b?: U }`: an object with exactly these members.
    Object(Vec<FieldDecl>),
    /// `ref Team`: the id of a document of that collection (a valid id; whether the
    /// document exists is not checked).
    Ref(String),
}

/// How deeply types may nest (`[[{ a: [int] }]]` is 4).
pub const MAX_TYPE_DEPTH: u32 = 16;

impl TypeExpr {
    /// The type as the schema language writes it.
    pub fn describe(&self) -> String {
        match self {
            TypeExpr::Any => "any".into(),
            TypeExpr::String { min, max, nonblank } => {
                let mut parts = Vec::new();
                if *nonblank {
                    parts.push("nonblank".to_owned());
                }
                if min.is_some() || max.is_some() {
                    parts.push(format!(
                        "{}..{}",
                        min.map(|m| m.to_string()).unwrap_or_default(),
                        max.map(|m| m.to_string()).unwrap_or_default()
                    ));
                }
                if parts.is_empty() {
                    "string".into()
                } else {
                    format!("string({})", parts.join(", "))
                }
            }
            TypeExpr::Int => "int".into(),
            TypeExpr::Float => "float".into(),
            TypeExpr::Bool => "bool".into(),
            TypeExpr::Time => "time".into(),
            TypeExpr::Text => "text".into(),
            TypeExpr::Array(t) => format!("[{}]", t.describe()),
            TypeExpr::Object(fs) => format!(
                "{{ {} }}",
                fs.iter()
                    .map(|f| format!(
                        "{}{}: {}",
                        f.name,
                        if f.optional { "?" } else { "" },
                        f.ty.describe()
                    ))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            TypeExpr::Ref(c) => format!("ref {c}"),
        }
    }
}

#[derive(Debug, PartialEq)]
pub struct FunctionDecl {
    pub name: String,
    pub params: Vec<String>,
    /// The parameters' declared types (`None` where none is declared), one per param.
    pub param_types: Vec<Option<(TypeExpr, bool)>>,
    pub body: Block,
    pub pos: Pos,
}

#[derive(Debug, PartialEq)]
pub enum Item {
    Collection(CollectionDecl),
    Function(Arc<FunctionDecl>),
}
