//! Tokens to syntax trees.
//!
//! A recursive-descent parser. Two limits keep hostile input from overflowing the stack:
//! the parser's own recursion depth, and the height of every tree it builds
//! ([`MAX_TREE_HEIGHT`]), since evaluating a tree recurses as deep as the tree is high.

use std::sync::Arc;

use super::ast::*;
use super::lexer::{lex, Tok, Token};
use crate::error::{Error, ErrorCode, Pos};
use crate::value::Value;

/// The highest tree accepted.
pub const MAX_TREE_HEIGHT: u32 = 256;
/// The deepest nesting of brackets, blocks and prefix operators accepted.
pub const MAX_NESTING: u32 = 100;

/// Parses one expression that must fill the source.
pub fn parse_expr(src: &str) -> Result<Expr, Error> {
    let mut p = Parser::new(src)?;
    let e = p.expr()?;
    p.expect_eof()?;
    Ok(e)
}

/// Parses a block body (statements without braces): an ad-hoc transaction or query.
pub fn parse_block(src: &str) -> Result<Block, Error> {
    let mut p = Parser::new(src)?;
    let pos = p.peek_pos();
    let stmts = p.stmts(&Tok::Eof)?;
    p.expect_eof()?;
    Ok(Block { stmts, pos })
}

/// Parses a schema: `collection` and `function` items.
pub fn parse_schema(src: &str) -> Result<Vec<Item>, Error> {
    let mut p = Parser::new(src)?;
    let mut items = Vec::new();
    loop {
        let t = p.peek().clone();
        match &t.tok {
            Tok::Eof => return Ok(items),
            Tok::Ident(k) if k == "collection" => {
                p.bump();
                items.push(Item::Collection(p.collection(t.pos)?));
            }
            Tok::Ident(k) if k == "function" => {
                p.bump();
                items.push(Item::Function(Arc::new(p.function(t.pos)?)));
            }
            other => {
                return Err(Error::at(
                    ErrorCode::Parse,
                    t.pos,
                    format!(
                        "expected `collection` or `function`, found {}",
                        other.describe()
                    ),
                ))
            }
        }
    }
}

const KEYWORDS: &[&str] = &["let", "if", "else", "true", "false", "null"];

struct Parser {
    toks: Vec<Token>,
    i: usize,
    depth: u32,
}

impl Parser {
    fn new(src: &str) -> Result<Parser, Error> {
        Ok(Parser {
            toks: lex(src)?,
            i: 0,
            depth: 0,
        })
    }

    fn peek(&self) -> &Token {
        &self.toks[self.i.min(self.toks.len() - 1)]
    }

    fn peek_at(&self, ahead: usize) -> &Tok {
        &self.toks[(self.i + ahead).min(self.toks.len() - 1)].tok
    }

    fn peek_pos(&self) -> Pos {
        self.peek().pos
    }

    fn bump(&mut self) -> Token {
        let t = self.peek().clone();
        if self.i < self.toks.len() - 1 {
            self.i += 1;
        }
        t
    }

    fn eat(&mut self, t: &Tok) -> bool {
        if &self.peek().tok == t {
            self.bump();
            true
        } else {
            false
        }
    }

    fn expect(&mut self, t: &Tok, what: &str) -> Result<Pos, Error> {
        let here = self.peek().clone();
        if &here.tok == t {
            self.bump();
            Ok(here.pos)
        } else {
            Err(Error::at(
                ErrorCode::Parse,
                here.pos,
                format!("expected {what}, found {}", here.tok.describe()),
            ))
        }
    }

    fn expect_eof(&mut self) -> Result<(), Error> {
        let t = self.peek();
        if t.tok == Tok::Eof {
            Ok(())
        } else {
            Err(Error::at(
                ErrorCode::Parse,
                t.pos,
                format!("unexpected {}", t.tok.describe()),
            ))
        }
    }

    fn ident(&mut self, what: &str) -> Result<(String, Pos), Error> {
        let t = self.peek().clone();
        match t.tok {
            Tok::Ident(s) if !KEYWORDS.contains(&s.as_str()) => {
                self.bump();
                Ok((s, t.pos))
            }
            other => Err(Error::at(
                ErrorCode::Parse,
                t.pos,
                format!("expected {what}, found {}", other.describe()),
            )),
        }
    }

    fn is_word(&self, w: &str) -> bool {
        matches!(&self.peek().tok, Tok::Ident(s) if s == w)
    }

    /// Enters one level of recursion.
    fn enter(&mut self) -> Result<(), Error> {
        self.depth += 1;
        if self.depth > MAX_NESTING {
            return Err(too_deep(self.peek_pos()));
        }
        Ok(())
    }

    fn leave(&mut self) {
        self.depth -= 1;
    }

    /// Makes a node, refusing trees higher than the limit.
    fn node(&self, kind: ExprKind, pos: Pos) -> Result<Expr, Error> {
        let e = Expr::new(kind, pos);
        if e.height > MAX_TREE_HEIGHT {
            return Err(too_deep(pos));
        }
        Ok(e)
    }

    // ----- statements -----

    /// Statements up to (not including) `end`. Statements are separated by `;` or by
    /// line breaks; a statement is a `let` or an expression.
    fn stmts(&mut self, end: &Tok) -> Result<Vec<Stmt>, Error> {
        let mut out = Vec::new();
        loop {
            while self.eat(&Tok::Semi) {}
            if &self.peek().tok == end || self.peek().tok == Tok::Eof {
                return Ok(out);
            }
            if self.is_word("let") {
                let pos = self.bump().pos;
                let (name, _) = self.ident("a name after `let`")?;
                self.expect(&Tok::Assign, "`=`")?;
                let e = self.expr()?;
                out.push(Stmt::Let(name, e, pos));
            } else {
                out.push(Stmt::Expr(self.expr()?));
            }
            let t = self.peek();
            if !(t.newline_before || t.tok == Tok::Semi || &t.tok == end || t.tok == Tok::Eof) {
                return Err(Error::at(
                    ErrorCode::Parse,
                    t.pos,
                    format!("expected a line break or `;` before {}", t.tok.describe()),
                ));
            }
        }
    }

    fn braced_block(&mut self) -> Result<Block, Error> {
        let pos = self.expect(&Tok::LBrace, "`{`")?;
        self.enter()?;
        let stmts = self.stmts(&Tok::RBrace)?;
        self.leave();
        self.expect(&Tok::RBrace, "`}`")?;
        let b = Block { stmts, pos };
        if b.height() >= MAX_TREE_HEIGHT {
            return Err(too_deep(pos));
        }
        Ok(b)
    }

    // ----- expressions, lowest precedence first -----

    fn expr(&mut self) -> Result<Expr, Error> {
        self.enter()?;
        let r = self.binary(0);
        self.leave();
        r
    }

    /// Binary operators by precedence climbing: one frame per operator level in use,
    /// not one per level of the grammar, so deep input costs little stack.
    fn binary(&mut self, min_prec: u8) -> Result<Expr, Error> {
        let mut lhs = self.unary()?;
        loop {
            let Some(prec) = precedence(&self.peek().tok) else {
                return Ok(lhs);
            };
            if prec < min_prec {
                return Ok(lhs);
            }
            let t = self.bump();
            let rhs = self.binary(prec + 1)?;
            let (l, r) = (Box::new(lhs), Box::new(rhs));
            let kind = match t.tok {
                Tok::QQ => ExprKind::Coalesce(l, r),
                Tok::OrOr => ExprKind::Or(l, r),
                Tok::AndAnd => ExprKind::And(l, r),
                Tok::EqEq => ExprKind::Binary(BinOp::Eq, l, r),
                Tok::NotEq => ExprKind::Binary(BinOp::Ne, l, r),
                Tok::Lt => ExprKind::Binary(BinOp::Lt, l, r),
                Tok::Le => ExprKind::Binary(BinOp::Le, l, r),
                Tok::Gt => ExprKind::Binary(BinOp::Gt, l, r),
                Tok::Ge => ExprKind::Binary(BinOp::Ge, l, r),
                Tok::Plus => ExprKind::Binary(BinOp::Add, l, r),
                Tok::Minus => ExprKind::Binary(BinOp::Sub, l, r),
                Tok::Star => ExprKind::Binary(BinOp::Mul, l, r),
                Tok::Slash => ExprKind::Binary(BinOp::Div, l, r),
                _ => ExprKind::Binary(BinOp::Rem, l, r),
            };
            lhs = self.node(kind, t.pos)?;
        }
    }

    fn unary(&mut self) -> Result<Expr, Error> {
        let op = match self.peek().tok {
            Tok::Minus => UnOp::Neg,
            Tok::Bang => UnOp::Not,
            _ => return self.postfix(),
        };
        let pos = self.bump().pos;
        if op == UnOp::Neg && self.peek().tok == Tok::IntMinMagnitude {
            self.bump();
            return self.node(ExprKind::Lit(Value::Int(i64::MIN)), pos);
        }
        self.enter()?;
        let operand = self.unary();
        self.leave();
        let operand = operand?;
        // Fold `-5` into a literal so that i64::MIN is writable and constants are cheap.
        if op == UnOp::Neg {
            match operand.kind {
                ExprKind::Lit(Value::Int(i)) => {
                    // Never overflows: a literal is at most i64::MAX.
                    return self.node(ExprKind::Lit(Value::Int(-i)), pos);
                }
                ExprKind::Lit(Value::Float(f)) => {
                    // Through Value::float, so that `-0.0` is the one zero.
                    let v = Value::float(-f).map_err(|e| e.or_at(pos))?;
                    return self.node(ExprKind::Lit(v), pos);
                }
                _ => {}
            }
        }
        self.node(ExprKind::Unary(op, Box::new(operand)), pos)
    }

    fn postfix(&mut self) -> Result<Expr, Error> {
        let mut e = self.primary()?;
        loop {
            let t = self.peek().clone();
            match t.tok {
                Tok::Dot | Tok::QDot => {
                    self.bump();
                    let optional = t.tok == Tok::QDot;
                    let (name, npos) = self.field_name()?;
                    if self.peek().tok == Tok::LParen && !self.peek().newline_before {
                        let args = self.args()?;
                        e = self.node(
                            ExprKind::Method {
                                recv: Box::new(e),
                                name,
                                args,
                                optional,
                            },
                            npos,
                        )?;
                    } else {
                        e = self.node(
                            ExprKind::Field {
                                recv: Box::new(e),
                                name,
                                optional,
                            },
                            npos,
                        )?;
                    }
                }
                Tok::LBracket if !t.newline_before => {
                    self.bump();
                    let index = self.expr()?;
                    self.expect(&Tok::RBracket, "`]`")?;
                    e = self.node(
                        ExprKind::Index {
                            recv: Box::new(e),
                            index: Box::new(index),
                        },
                        t.pos,
                    )?;
                }
                _ => return Ok(e),
            }
        }
    }

    /// A field name after `.`: any identifier, keywords included (`doc.if` is fine).
    fn field_name(&mut self) -> Result<(String, Pos), Error> {
        let t = self.peek().clone();
        match t.tok {
            Tok::Ident(s) => {
                self.bump();
                Ok((s, t.pos))
            }
            other => Err(Error::at(
                ErrorCode::Parse,
                t.pos,
                format!(
                    "expected a field name after `.`, found {}",
                    other.describe()
                ),
            )),
        }
    }

    /// Call arguments. An argument that uses the `.field` shorthand becomes a lambda of
    /// one parameter: `where(.done == false)` is `where($it => $it.done == false)`.
    /// The arguments of `asc` and `desc` are not wrapped (`wrap` is false), so that
    /// `order(desc(.created))` is `order($it => desc($it.created))`.
    fn args(&mut self) -> Result<Vec<Expr>, Error> {
        self.args_wrapping(true)
    }

    fn args_wrapping(&mut self, wrap: bool) -> Result<Vec<Expr>, Error> {
        self.expect(&Tok::LParen, "`(`")?;
        let mut args = Vec::new();
        while self.peek().tok != Tok::RParen {
            let a = self.expr()?;
            let a = if wrap && uses_it(&a) {
                let pos = a.pos;
                let body = Block {
                    stmts: vec![Stmt::Expr(a)],
                    pos,
                };
                self.node(
                    ExprKind::Lambda(Arc::new(Lambda {
                        params: vec![IT.to_owned()],
                        body,
                    })),
                    pos,
                )?
            } else {
                a
            };
            args.push(a);
            if !self.eat(&Tok::Comma) {
                break;
            }
        }
        self.expect(&Tok::RParen, "`)` or `,`")?;
        Ok(args)
    }

    fn primary(&mut self) -> Result<Expr, Error> {
        let t = self.peek().clone();
        let pos = t.pos;
        match t.tok {
            Tok::Int(i) => {
                self.bump();
                self.node(ExprKind::Lit(Value::Int(i)), pos)
            }
            Tok::Float(f) => {
                self.bump();
                self.node(ExprKind::Lit(Value::float(f).map_err(|e| e.or_at(pos))?), pos)
            }
            Tok::IntMinMagnitude => Err(Error::at(
                ErrorCode::Parse,
                pos,
                "integer 9223372036854775808 does not fit in 64 bits (only -9223372036854775808 does)",
            )),
            Tok::Str(s) => {
                self.bump();
                self.node(ExprKind::Lit(Value::String(s)), pos)
            }
            Tok::Dot => {
                // `.field` shorthand: the implicit parameter's field.
                self.bump();
                let (name, npos) = self.field_name()?;
                let it = self.node(ExprKind::Var(IT.to_owned()), pos)?;
                self.node(
                    ExprKind::Field {
                        recv: Box::new(it),
                        name,
                        optional: false,
                    },
                    npos,
                )
            }
            Tok::LParen => {
                if self.lambda_ahead() {
                    return self.lambda();
                }
                self.bump();
                let e = self.expr()?;
                self.expect(&Tok::RParen, "`)`")?;
                Ok(e)
            }
            Tok::LBracket => {
                self.bump();
                self.enter()?;
                let mut items = Vec::new();
                while self.peek().tok != Tok::RBracket {
                    items.push(self.expr()?);
                    if !self.eat(&Tok::Comma) {
                        break;
                    }
                }
                self.leave();
                self.expect(&Tok::RBracket, "`]` or `,`")?;
                self.node(ExprKind::Array(items), pos)
            }
            Tok::LBrace => {
                self.bump();
                self.enter()?;
                let mut fields: Vec<(crate::value::Key, Expr)> = Vec::new();
                while self.peek().tok != Tok::RBrace {
                    let kt = self.bump();
                    let shorthand_ok = matches!(kt.tok, Tok::Ident(_));
                    let key = match kt.tok {
                        Tok::Ident(s) => s,
                        Tok::Str(s) => s,
                        other => {
                            return Err(Error::at(
                                ErrorCode::Parse,
                                kt.pos,
                                format!("expected a field name, found {}", other.describe()),
                            ))
                        }
                    };
                    if fields.iter().any(|(k, _)| k.as_str() == key) {
                        return Err(Error::at(
                            ErrorCode::Parse,
                            kt.pos,
                            format!("field `{key}` appears twice"),
                        ));
                    }
                    let value = if self.eat(&Tok::Colon) {
                        self.expr()?
                    } else if !shorthand_ok {
                        return Err(Error::at(
                            ErrorCode::Parse,
                            self.peek_pos(),
                            format!("expected `:` after the field name \"{key}\""),
                        ));
                    } else {
                        // `{ id }` is `{ id: id }`.
                        self.node(ExprKind::Var(key.clone()), kt.pos)?
                    };
                    fields.push((key.into(), value));
                    if !self.eat(&Tok::Comma) {
                        break;
                    }
                }
                self.leave();
                self.expect(&Tok::RBrace, "`}` or `,`")?;
                self.node(ExprKind::Object(fields), pos)
            }
            Tok::Ident(ref w) => {
                match w.as_str() {
                    "true" | "false" => {
                        self.bump();
                        return self.node(ExprKind::Lit(Value::Bool(w == "true")), pos);
                    }
                    "null" => {
                        self.bump();
                        return self.node(ExprKind::Lit(Value::Null), pos);
                    }
                    "if" => return self.if_expr(),
                    "let" | "else" => {
                        return Err(Error::at(
                            ErrorCode::Parse,
                            pos,
                            format!("`{w}` cannot start an expression"),
                        ))
                    }
                    _ => {}
                }
                if self.peek_at(1) == &Tok::Arrow {
                    return self.lambda();
                }
                let (name, _) = self.ident("a name")?;
                if self.peek().tok == Tok::LParen && !self.peek().newline_before {
                    let args = self.args_wrapping(name != "asc" && name != "desc")?;
                    return self.node(ExprKind::Call { name, args }, pos);
                }
                self.node(ExprKind::Var(name), pos)
            }
            other => Err(Error::at(
                ErrorCode::Parse,
                pos,
                format!("expected an expression, found {}", other.describe()),
            )),
        }
    }

    /// At `(`: is this the parameter list of a lambda (`(a, b) =>`, `() =>`)?
    fn lambda_ahead(&self) -> bool {
        let mut k = 1;
        loop {
            match self.peek_at(k) {
                Tok::RParen => return self.peek_at(k + 1) == &Tok::Arrow,
                Tok::Ident(_) => {
                    k += 1;
                    match self.peek_at(k) {
                        Tok::Comma => k += 1,
                        Tok::RParen => {}
                        _ => return false,
                    }
                }
                _ => return false,
            }
        }
    }

    fn lambda(&mut self) -> Result<Expr, Error> {
        let pos = self.peek_pos();
        let mut params = Vec::new();
        if self.eat(&Tok::LParen) {
            while self.peek().tok != Tok::RParen {
                params.push(self.ident("a parameter name")?.0);
                if !self.eat(&Tok::Comma) {
                    break;
                }
            }
            self.expect(&Tok::RParen, "`)`")?;
        } else {
            params.push(self.ident("a parameter name")?.0);
        }
        self.expect(&Tok::Arrow, "`=>`")?;
        let body = if self.peek().tok == Tok::LBrace {
            self.braced_block()?
        } else {
            let e = self.expr()?;
            Block {
                pos: e.pos,
                stmts: vec![Stmt::Expr(e)],
            }
        };
        self.node(ExprKind::Lambda(Arc::new(Lambda { params, body })), pos)
    }

    fn if_expr(&mut self) -> Result<Expr, Error> {
        let pos = self.bump().pos; // `if`
        self.enter()?;
        let r = self.if_rest(pos);
        self.leave();
        r
    }

    fn if_rest(&mut self, pos: Pos) -> Result<Expr, Error> {
        let cond = self.expr()?;
        let then = self.braced_block()?;
        let otherwise = if self.is_word("else") {
            self.bump();
            if self.is_word("if") {
                let e = self.if_expr()?;
                Some(Block {
                    pos: e.pos,
                    stmts: vec![Stmt::Expr(e)],
                })
            } else {
                Some(self.braced_block()?)
            }
        } else {
            None
        };
        self.node(
            ExprKind::If {
                cond: Box::new(cond),
                then: Arc::new(then),
                otherwise: otherwise.map(Arc::new),
            },
            pos,
        )
    }

    // ----- schema items -----

    fn collection(&mut self, pos: Pos) -> Result<CollectionDecl, Error> {
        let (name, _) = self.ident("a collection name")?;
        self.expect(&Tok::LBrace, "`{`")?;
        let mut c = CollectionDecl {
            name,
            partition: None,
            indexes: Vec::new(),
            fields: Vec::new(),
            rules: Vec::new(),
            pos,
        };
        loop {
            while self.eat(&Tok::Semi) {}
            let t = self.peek().clone();
            let word = match &t.tok {
                Tok::RBrace => {
                    self.bump();
                    return Ok(c);
                }
                Tok::Ident(w) => w.clone(),
                other => {
                    return Err(Error::at(
                        ErrorCode::Parse,
                        t.pos,
                        format!(
                            "expected `partition`, `index`, `unique index`, `field` or `allow`, found {}",
                            other.describe()
                        ),
                    ))
                }
            };
            self.bump();
            match word.as_str() {
                "partition" => {
                    if c.partition.is_some() {
                        return Err(Error::at(
                            ErrorCode::Schema,
                            t.pos,
                            format!("collection {} has two partition expressions", c.name),
                        ));
                    }
                    c.partition = Some(self.expr()?);
                }
                "index" => c.indexes.push(self.index(false, t.pos)?),
                "field" => {
                    let (name, _) = self.field_name()?;
                    let optional = self.eat(&Tok::Question);
                    self.expect(&Tok::Colon, "`:` and the field's type")?;
                    let ty = self.type_expr(0)?;
                    c.fields.push(FieldDecl {
                        name,
                        ty,
                        optional,
                        pos: t.pos,
                    });
                }
                "unique" => {
                    if !self.is_word("index") {
                        return Err(Error::at(
                            ErrorCode::Parse,
                            self.peek_pos(),
                            "expected `index` after `unique`",
                        ));
                    }
                    self.bump();
                    c.indexes.push(self.index(true, t.pos)?);
                }
                "allow" => {
                    let (a, apos) = self.field_name()?;
                    let action = match a.as_str() {
                        "read" => Action::Read,
                        "create" => Action::Create,
                        "update" => Action::Update,
                        "delete" => Action::Delete,
                        other => {
                            return Err(Error::at(
                                ErrorCode::Parse,
                                apos,
                                format!(
                                    "expected read, create, update or delete after `allow`, found `{other}`"
                                ),
                            ))
                        }
                    };
                    let expr = self.expr()?;
                    c.rules.push(Rule {
                        action,
                        expr,
                        pos: t.pos,
                    });
                }
                other => {
                    return Err(Error::at(
                        ErrorCode::Parse,
                        t.pos,
                        format!(
                        "expected `partition`, `index`, `unique index`, `field` or `allow`, found `{other}`"
                    ),
                    ))
                }
            }
        }
    }

    fn index(&mut self, unique: bool, pos: Pos) -> Result<IndexDecl, Error> {
        let (name, _) = self.ident("an index name")?;
        self.expect(&Tok::LBracket, "`[` and the indexed fields")?;
        let mut fields = Vec::new();
        while self.peek().tok != Tok::RBracket {
            let mut path = vec![self.field_name()?.0];
            while self.eat(&Tok::Dot) {
                path.push(self.field_name()?.0);
            }
            fields.push(path);
            if !self.eat(&Tok::Comma) {
                break;
            }
        }
        self.expect(&Tok::RBracket, "`]` or `,`")?;
        Ok(IndexDecl {
            name,
            fields,
            unique,
            pos,
        })
    }

    fn function(&mut self, pos: Pos) -> Result<FunctionDecl, Error> {
        let (name, _) = self.ident("a function name")?;
        self.expect(&Tok::LParen, "`(`")?;
        let mut params = Vec::new();
        let mut param_types = Vec::new();
        while self.peek().tok != Tok::RParen {
            let (p, ppos) = self.ident("a parameter name")?;
            if params.contains(&p) {
                return Err(Error::at(
                    ErrorCode::Parse,
                    ppos,
                    format!("parameter `{p}` appears twice"),
                ));
            }
            params.push(p);
            let optional = self.eat(&Tok::Question);
            if optional || self.peek().tok == Tok::Colon {
                self.expect(&Tok::Colon, "`:` and the parameter's type")?;
                param_types.push(Some((self.type_expr(0)?, optional)));
            } else {
                param_types.push(None);
            }
            if !self.eat(&Tok::Comma) {
                break;
            }
        }
        self.expect(&Tok::RParen, "`)` or `,`")?;
        let body = self.braced_block()?;
        Ok(FunctionDecl {
            name,
            params,
            param_types,
            body,
            pos,
        })
    }
}

impl Parser {
    /// A type (docs/LANGUAGE.md, "Field types"): `any`, `string`, `string(nonblank,
    /// 1..200)`, `int`, `float`, `bool`, `time`, `text`, `[T]`, `{ a: T, b?: U }`,
    /// `ref Collection`.
    fn type_expr(&mut self, depth: u32) -> Result<TypeExpr, Error> {
        let t = self.peek().clone();
        if depth >= MAX_TYPE_DEPTH {
            return Err(Error::at(
                ErrorCode::DepthExceeded,
                t.pos,
                format!("types nest deeper than {MAX_TYPE_DEPTH} levels"),
            ));
        }
        match &t.tok {
            Tok::LBracket => {
                self.bump();
                let inner = self.type_expr(depth + 1)?;
                self.expect(&Tok::RBracket, "`]` after the array's element type")?;
                return Ok(TypeExpr::Array(Box::new(inner)));
            }
            Tok::LBrace => {
                self.bump();
                let mut fields: Vec<FieldDecl> = Vec::new();
                while self.peek().tok != Tok::RBrace {
                    let (name, pos) = self.field_name_here()?;
                    if fields.iter().any(|f| f.name == name) {
                        return Err(Error::at(
                            ErrorCode::Schema,
                            pos,
                            format!("member `{name}` appears twice"),
                        ));
                    }
                    let optional = self.eat(&Tok::Question);
                    self.expect(&Tok::Colon, "`:` and the member's type")?;
                    let ty = self.type_expr(depth + 1)?;
                    if ty == TypeExpr::Text {
                        return Err(Error::at(
                            ErrorCode::Schema,
                            pos,
                            "`text` is a type for a document's own fields only",
                        ));
                    }
                    fields.push(FieldDecl {
                        name,
                        ty,
                        optional,
                        pos,
                    });
                    if !self.eat(&Tok::Comma) {
                        break;
                    }
                }
                self.expect(&Tok::RBrace, "`}` or `,`")?;
                return Ok(TypeExpr::Object(fields));
            }
            _ => {}
        }
        let (word, pos) = self.ident("a type")?;
        Ok(match word.as_str() {
            "any" => TypeExpr::Any,
            "int" => TypeExpr::Int,
            "float" => TypeExpr::Float,
            "bool" => TypeExpr::Bool,
            "time" => TypeExpr::Time,
            "text" => TypeExpr::Text,
            "ref" => TypeExpr::Ref(self.ident("a collection name after `ref`")?.0),
            "string" => {
                let (mut min, mut max, mut nonblank) = (None, None, false);
                if self.eat(&Tok::LParen) {
                    while self.peek().tok != Tok::RParen {
                        let here = self.peek().clone();
                        match here.tok {
                            Tok::Ident(w) if w == "nonblank" => {
                                self.bump();
                                nonblank = true;
                            }
                            Tok::Int(_) | Tok::Dot => {
                                min = self.bound()?;
                                self.expect(&Tok::Dot, "`..` (a range: 1..200, ..200, 1..)")?;
                                self.expect(&Tok::Dot, "`..` (a range: 1..200, ..200, 1..)")?;
                                max = self.bound()?;
                                if let (Some(a), Some(b)) = (min, max) {
                                    if a > b {
                                        return Err(Error::at(
                                            ErrorCode::Schema,
                                            here.pos,
                                            format!("the range {a}..{b} is empty"),
                                        ));
                                    }
                                }
                            }
                            other => {
                                return Err(Error::at(
                                    ErrorCode::Parse,
                                    here.pos,
                                    format!(
                                        "expected `nonblank` or a length range (1..200), found {}",
                                        other.describe()
                                    ),
                                ))
                            }
                        }
                        if !self.eat(&Tok::Comma) {
                            break;
                        }
                    }
                    self.expect(&Tok::RParen, "`)` or `,`")?;
                }
                TypeExpr::String { min, max, nonblank }
            }
            other => {
                return Err(Error::at(
                    ErrorCode::Schema,
                    pos,
                    format!(
                        "unknown type `{other}` (the types: any, string, int, float, bool, time, text, [T], {{ a: T }}, ref Collection)"
                    ),
                ))
            }
        })
    }

    /// An optional length bound: a non-negative int literal.
    fn bound(&mut self) -> Result<Option<u64>, Error> {
        match self.peek().tok {
            Tok::Int(n) => {
                self.bump();
                Ok(Some(n as u64))
            }
            _ => Ok(None),
        }
    }

    /// A member name in an object type: an identifier or a string.
    fn field_name_here(&mut self) -> Result<(String, Pos), Error> {
        let t = self.peek().clone();
        match t.tok {
            Tok::Ident(s) | Tok::Str(s) => {
                self.bump();
                Ok((s, t.pos))
            }
            other => Err(Error::at(
                ErrorCode::Parse,
                t.pos,
                format!("expected a member name, found {}", other.describe()),
            )),
        }
    }
}

/// Binding strength of a binary operator; all are left-associative.
fn precedence(t: &Tok) -> Option<u8> {
    Some(match t {
        Tok::QQ => 1,
        Tok::OrOr => 2,
        Tok::AndAnd => 3,
        Tok::EqEq | Tok::NotEq => 4,
        Tok::Lt | Tok::Le | Tok::Gt | Tok::Ge => 5,
        Tok::Plus | Tok::Minus => 6,
        Tok::Star | Tok::Slash | Tok::Percent => 7,
        _ => return None,
    })
}

fn too_deep(pos: Pos) -> Error {
    Error::at(
        ErrorCode::DepthExceeded,
        pos,
        format!("expression nests deeper than {MAX_TREE_HEIGHT} levels"),
    )
}

/// Whether `e` refers to the implicit parameter outside any lambda that binds it.
fn uses_it(e: &Expr) -> bool {
    let block_uses = |b: &Block| {
        b.stmts.iter().any(|s| match s {
            Stmt::Let(_, e, _) | Stmt::Expr(e) => uses_it(e),
        })
    };
    match &e.kind {
        ExprKind::Var(v) => v == IT,
        ExprKind::Lit(_) => false,
        ExprKind::Array(xs) => xs.iter().any(uses_it),
        ExprKind::Object(kv) => kv.iter().any(|(_, e)| uses_it(e)),
        ExprKind::Field { recv, .. } => uses_it(recv),
        ExprKind::Index { recv, index } => uses_it(recv) || uses_it(index),
        ExprKind::Call { args, .. } => args.iter().any(uses_it),
        ExprKind::Method { recv, args, .. } => uses_it(recv) || args.iter().any(uses_it),
        ExprKind::Unary(_, a) => uses_it(a),
        ExprKind::Binary(_, a, b)
        | ExprKind::And(a, b)
        | ExprKind::Or(a, b)
        | ExprKind::Coalesce(a, b) => uses_it(a) || uses_it(b),
        ExprKind::If {
            cond,
            then,
            otherwise,
        } => uses_it(cond) || block_uses(then) || otherwise.as_deref().is_some_and(block_uses),
        ExprKind::Lambda(l) => !l.params.iter().any(|p| p == IT) && block_uses(&l.body),
        ExprKind::Block(b) => block_uses(b),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn precedence() {
        let e = parse_expr("1 + 2 * 3 == 7 && !false || a ?? b").unwrap();
        assert!(matches!(e.kind, ExprKind::Coalesce(..)));
        let ExprKind::Coalesce(lhs, _) = e.kind else {
            unreachable!()
        };
        assert!(matches!(lhs.kind, ExprKind::Or(..)));
    }

    #[test]
    fn shorthand_lambda() {
        let e = parse_expr("Todo.all().where(.done == false).order(desc(.created))").unwrap();
        let ExprKind::Method { args, name, .. } = e.kind else {
            panic!()
        };
        assert_eq!(name, "order");
        assert!(matches!(&args[0].kind, ExprKind::Lambda(l) if l.params == vec![IT.to_string()]));
    }

    #[test]
    fn lambdas() {
        for src in [
            "x => x + 1",
            "(a, b) => a + b",
            "() => 1",
            "(x) => { let y = x\n y }",
        ] {
            assert!(
                matches!(parse_expr(src).unwrap().kind, ExprKind::Lambda(_)),
                "{src}"
            );
        }
        assert!(matches!(parse_expr("(a)").unwrap().kind, ExprKind::Var(_)));
    }

    #[test]
    fn statements_need_separators() {
        assert!(parse_block("let a = 1\nlet b = 2; a + b").is_ok());
        let e = parse_block("let a = 1 let b = 2").unwrap_err();
        assert_eq!(e.code, ErrorCode::Parse);
        assert_eq!(e.pos, Some(Pos { line: 1, col: 11 }));
        // A `(` on a new line starts a new statement rather than calling.
        let b = parse_block("let f = x => x\nf\n(1)").unwrap();
        assert_eq!(b.stmts.len(), 3);
    }

    #[test]
    fn deep_nesting_is_refused_not_overflowed() {
        for src in [
            "(".repeat(100_000) + "1" + &")".repeat(100_000),
            "[".repeat(100_000) + &"]".repeat(100_000),
            "-".repeat(100_000) + "x",
            "!".repeat(100_000) + "x",
            "a".to_string() + &".b".repeat(100_000),
            "1".to_string() + &" + 1".repeat(100_000),
            "{a:".repeat(50_000) + "1" + &"}".repeat(50_000),
            "f(".repeat(50_000) + &")".repeat(50_000),
            "if x {".repeat(50_000) + &"}".repeat(50_000),
        ] {
            let e = parse_block(&src).unwrap_err();
            assert_eq!(e.code, ErrorCode::DepthExceeded, "{}", &src[..20]);
        }
    }

    #[test]
    fn schema_items() {
        let items = parse_schema(
            r#"
            collection Todo {
              partition "user:" + doc.owner
              index byOwner [owner, created]
              unique index bySlug [meta.slug]
              allow read partition == "user:" + auth.sub
              allow create doc.owner == auth.sub
            }
            function toggle(id) {
              let t = Todo.byId(id) ?? abort("no such todo")
              t.update({ done: !t.done })
            }"#,
        )
        .unwrap();
        assert_eq!(items.len(), 2);
        let Item::Collection(c) = &items[0] else {
            panic!()
        };
        assert_eq!(
            c.indexes[1].fields,
            vec![vec!["meta".to_string(), "slug".to_string()]]
        );
        assert!(c.indexes[1].unique);
        assert_eq!(c.rules.len(), 2);
    }

    #[test]
    fn schema_errors_name_line_and_column() {
        let e = parse_schema("collection A {\n  allow write true\n}").unwrap_err();
        assert_eq!(e.pos, Some(Pos { line: 2, col: 9 }));
        let e = parse_schema("collection A {\n  index x owner\n}").unwrap_err();
        assert_eq!(e.pos, Some(Pos { line: 2, col: 11 }));
        let e = parse_schema("function f(a, a) { 1 }").unwrap_err();
        assert_eq!(e.pos, Some(Pos { line: 1, col: 15 }));
    }
}
