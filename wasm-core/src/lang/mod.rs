//! The Warren language: one small, deterministic, functional language for queries,
//! transactions, partition expressions and rules. `docs/LANGUAGE.md` is its manual.
//!
//! - [`lexer`]: source text to tokens, each with its line and column.
//! - [`ast`]: the syntax tree.
//! - [`parser`]: tokens to expressions, blocks and schema items, with a nesting limit
//!   so hostile input cannot overflow the stack.

pub mod ast;
pub mod lexer;
pub mod parser;

pub use parser::{parse_block, parse_expr, parse_schema};
