//! The Warren language: one small, deterministic, functional language for queries,
//! transactions, partition expressions and rules. `docs/LANGUAGE.md` is its manual.
//!
//! - [`lexer`]: source text to tokens, each with its line and column.
//! - [`ast`]: the syntax tree.
//! - [`builtins`]: the names of the built-in functions.
//! - [`parser`]: tokens to expressions, blocks and schema items, with a nesting limit
//!   so hostile input cannot overflow the stack.
//! - [`literal`]: values back to source text, for programs built from outside input.

pub mod ast;
pub mod builtins;
pub mod lexer;
pub mod literal;
pub mod parser;

pub use builtins::{is_builtin, BUILTINS};
pub use parser::{parse_block, parse_expr, parse_schema};
