//! Source text to tokens.

use crate::error::{Error, ErrorCode, Pos};

/// Source longer than this is refused before lexing (1 MiB).
pub const MAX_SOURCE_BYTES: usize = 1 << 20;

#[derive(Clone, Debug, PartialEq)]
pub enum Tok {
    Ident(String),
    Int(i64),
    /// 9223372036854775808: only valid after a minus sign, as the smallest int.
    IntMinMagnitude,
    Float(f64),
    Str(String),
    LParen,
    RParen,
    LBracket,
    RBracket,
    LBrace,
    RBrace,
    Comma,
    Colon,
    Semi,
    Dot,
    QDot,
    QQ,
    /// A lone `?`: an optional field or parameter in a type declaration.
    Question,
    Arrow,
    Plus,
    Minus,
    Star,
    Slash,
    Percent,
    EqEq,
    NotEq,
    Lt,
    Le,
    Gt,
    Ge,
    AndAnd,
    OrOr,
    Bang,
    Assign,
    Eof,
}

impl Tok {
    /// How the token reads in an error message.
    pub fn describe(&self) -> String {
        match self {
            Tok::Ident(s) => format!("`{s}`"),
            Tok::Int(i) => format!("number {i}"),
            Tok::IntMinMagnitude => "number 9223372036854775808".into(),
            Tok::Float(f) => {
                // The engine's own shortest form (as values print), not `f64`'s
                // `Display`, whose code the WebAssembly build would then carry.
                let mut s = String::from("number ");
                crate::text::write_float(&mut s, *f);
                s
            }
            Tok::Str(_) => "a string".into(),
            Tok::Eof => "the end of the input".into(),
            t => format!("`{}`", t.symbol()),
        }
    }

    fn symbol(&self) -> &'static str {
        match self {
            Tok::LParen => "(",
            Tok::RParen => ")",
            Tok::LBracket => "[",
            Tok::RBracket => "]",
            Tok::LBrace => "{",
            Tok::RBrace => "}",
            Tok::Comma => ",",
            Tok::Colon => ":",
            Tok::Semi => ";",
            Tok::Dot => ".",
            Tok::QDot => "?.",
            Tok::QQ => "??",
            Tok::Question => "?",
            Tok::Arrow => "=>",
            Tok::Plus => "+",
            Tok::Minus => "-",
            Tok::Star => "*",
            Tok::Slash => "/",
            Tok::Percent => "%",
            Tok::EqEq => "==",
            Tok::NotEq => "!=",
            Tok::Lt => "<",
            Tok::Le => "<=",
            Tok::Gt => ">",
            Tok::Ge => ">=",
            Tok::AndAnd => "&&",
            Tok::OrOr => "||",
            Tok::Bang => "!",
            Tok::Assign => "=",
            _ => "?",
        }
    }
}

/// A token, where it starts, and whether a line break comes before it (a call's `(` or
/// an index's `[` on a new line starts a new statement instead of continuing).
#[derive(Clone, Debug, PartialEq)]
pub struct Token {
    pub tok: Tok,
    pub pos: Pos,
    pub newline_before: bool,
}

/// Splits source text into tokens; the last is always [`Tok::Eof`].
pub fn lex(src: &str) -> Result<Vec<Token>, Error> {
    if src.len() > MAX_SOURCE_BYTES {
        return Err(Error::new(
            ErrorCode::ArgumentTooLarge,
            format!(
                "source is {} bytes; the limit is {MAX_SOURCE_BYTES}",
                src.len()
            ),
        ));
    }
    let mut lx = Lexer {
        chars: src.chars().collect(),
        i: 0,
        line: 1,
        col: 1,
    };
    let mut out = Vec::new();
    loop {
        let newline_before = lx.skip_trivia()?;
        let pos = lx.pos();
        let Some(c) = lx.peek(0) else {
            out.push(Token {
                tok: Tok::Eof,
                pos,
                newline_before,
            });
            return Ok(out);
        };
        let tok = lx.token(c, pos)?;
        out.push(Token {
            tok,
            pos,
            newline_before,
        });
    }
}

struct Lexer {
    chars: Vec<char>,
    i: usize,
    line: u32,
    col: u32,
}

impl Lexer {
    fn pos(&self) -> Pos {
        Pos {
            line: self.line,
            col: self.col,
        }
    }

    fn peek(&self, ahead: usize) -> Option<char> {
        self.chars.get(self.i + ahead).copied()
    }

    fn bump(&mut self) -> Option<char> {
        let c = self.peek(0)?;
        self.i += 1;
        if c == '\n' {
            self.line += 1;
            self.col = 1;
        } else {
            self.col += 1;
        }
        Some(c)
    }

    /// Skips white space and comments; returns whether a line break was crossed.
    fn skip_trivia(&mut self) -> Result<bool, Error> {
        let mut newline = false;
        loop {
            match (self.peek(0), self.peek(1)) {
                (Some('\n'), _) => {
                    newline = true;
                    self.bump();
                }
                (Some(c), _) if c.is_whitespace() => {
                    self.bump();
                }
                (Some('/'), Some('/')) => {
                    while self.peek(0).is_some_and(|c| c != '\n') {
                        self.bump();
                    }
                }
                (Some('/'), Some('*')) => {
                    let start = self.pos();
                    self.bump();
                    self.bump();
                    loop {
                        match (self.peek(0), self.peek(1)) {
                            (Some('*'), Some('/')) => {
                                self.bump();
                                self.bump();
                                break;
                            }
                            (Some(c), _) => {
                                newline |= c == '\n';
                                self.bump();
                            }
                            (None, _) => {
                                return Err(Error::at(
                                    ErrorCode::Parse,
                                    start,
                                    "unterminated comment",
                                ))
                            }
                        }
                    }
                }
                _ => return Ok(newline),
            }
        }
    }

    fn token(&mut self, c: char, pos: Pos) -> Result<Tok, Error> {
        if c.is_ascii_digit() {
            return self.number(pos);
        }
        if c.is_alphabetic() || c == '_' || c == '$' {
            let mut s = String::new();
            while let Some(c) = self
                .peek(0)
                .filter(|c| c.is_alphanumeric() || *c == '_' || *c == '$')
            {
                s.push(c);
                self.bump();
            }
            return Ok(Tok::Ident(s));
        }
        if c == '"' || c == '\'' {
            return self.string(c, pos);
        }
        self.bump();
        let two = |lx: &mut Lexer, next: char, yes: Tok, no: Tok| {
            if lx.peek(0) == Some(next) {
                lx.bump();
                yes
            } else {
                no
            }
        };
        Ok(match c {
            '(' => Tok::LParen,
            ')' => Tok::RParen,
            '[' => Tok::LBracket,
            ']' => Tok::RBracket,
            '{' => Tok::LBrace,
            '}' => Tok::RBrace,
            ',' => Tok::Comma,
            ':' => Tok::Colon,
            ';' => Tok::Semi,
            '.' => Tok::Dot,
            '+' => Tok::Plus,
            '-' => Tok::Minus,
            '*' => Tok::Star,
            '/' => Tok::Slash,
            '%' => Tok::Percent,
            '?' => match self.peek(0) {
                Some('?') => {
                    self.bump();
                    Tok::QQ
                }
                Some('.') => {
                    self.bump();
                    Tok::QDot
                }
                _ => Tok::Question,
            },
            '=' => match self.peek(0) {
                Some('=') => {
                    self.bump();
                    Tok::EqEq
                }
                Some('>') => {
                    self.bump();
                    Tok::Arrow
                }
                _ => Tok::Assign,
            },
            '!' => two(self, '=', Tok::NotEq, Tok::Bang),
            '<' => two(self, '=', Tok::Le, Tok::Lt),
            '>' => two(self, '=', Tok::Ge, Tok::Gt),
            '&' if self.peek(0) == Some('&') => {
                self.bump();
                Tok::AndAnd
            }
            '|' if self.peek(0) == Some('|') => {
                self.bump();
                Tok::OrOr
            }
            c => {
                return Err(Error::at(
                    ErrorCode::Parse,
                    pos,
                    format!("unexpected character {c:?}"),
                ))
            }
        })
    }

    fn number(&mut self, pos: Pos) -> Result<Tok, Error> {
        let mut s = String::new();
        let mut float = false;
        while let Some(c) = self.peek(0) {
            if c.is_ascii_digit() || c == '_' {
                if c != '_' {
                    s.push(c);
                }
            } else if c == '.' && !float && self.peek(1).is_some_and(|d| d.is_ascii_digit()) {
                float = true;
                s.push(c);
            } else if (c == 'e' || c == 'E')
                && (self.peek(1).is_some_and(|d| d.is_ascii_digit())
                    || (matches!(self.peek(1), Some('+' | '-'))
                        && self.peek(2).is_some_and(|d| d.is_ascii_digit())))
            {
                float = true;
                s.push(c);
                self.bump();
                s.push(self.bump().expect("checked"));
                continue;
            } else {
                break;
            }
            self.bump();
        }
        if float {
            let f: f64 = s
                .parse()
                .map_err(|_| Error::at(ErrorCode::Parse, pos, format!("bad number {s}")))?;
            if !f.is_finite() {
                return Err(Error::at(
                    ErrorCode::Parse,
                    pos,
                    format!("number {s} is too large"),
                ));
            }
            Ok(Tok::Float(f))
        } else {
            if s.trim_start_matches('0') == "9223372036854775808" {
                return Ok(Tok::IntMinMagnitude);
            }
            s.parse::<i64>().map(Tok::Int).map_err(|_| {
                Error::at(
                    ErrorCode::Parse,
                    pos,
                    format!("integer {s} does not fit in 64 bits"),
                )
            })
        }
    }

    fn string(&mut self, quote: char, pos: Pos) -> Result<Tok, Error> {
        self.bump();
        let mut s = String::new();
        loop {
            let Some(c) = self.bump() else {
                return Err(Error::at(ErrorCode::Parse, pos, "unterminated string"));
            };
            match c {
                c if c == quote => return Ok(Tok::Str(s)),
                '\n' => return Err(Error::at(ErrorCode::Parse, pos, "unterminated string")),
                '\\' => {
                    let epos = self.pos();
                    let e = self
                        .bump()
                        .ok_or_else(|| Error::at(ErrorCode::Parse, pos, "unterminated string"))?;
                    s.push(match e {
                        'n' => '\n',
                        't' => '\t',
                        'r' => '\r',
                        '0' => '\0',
                        '\\' => '\\',
                        '"' => '"',
                        '\'' => '\'',
                        'u' => self.unicode_escape(epos)?,
                        other => {
                            return Err(Error::at(
                                ErrorCode::Parse,
                                epos,
                                format!("unknown escape \\{other}"),
                            ))
                        }
                    });
                }
                c => s.push(c),
            }
        }
    }

    fn unicode_escape(&mut self, pos: Pos) -> Result<char, Error> {
        let bad = || {
            Error::at(
                ErrorCode::Parse,
                pos,
                "bad \\u escape: use \\u{1F600} or \\u00e9",
            )
        };
        let mut hex = String::new();
        if self.peek(0) == Some('{') {
            self.bump();
            while let Some(c) = self.bump() {
                if c == '}' {
                    break;
                }
                hex.push(c);
                if hex.len() > 6 {
                    return Err(bad());
                }
            }
        } else {
            for _ in 0..4 {
                hex.push(self.bump().ok_or_else(bad)?);
            }
        }
        u32::from_str_radix(&hex, 16)
            .ok()
            .and_then(char::from_u32)
            .ok_or_else(bad)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn toks(s: &str) -> Vec<Tok> {
        lex(s).unwrap().into_iter().map(|t| t.tok).collect()
    }

    #[test]
    fn lexes_operators_and_literals() {
        assert_eq!(
            toks("a?.b ?? 1_000 + 2.5e3 => \"x\\n\\u{e9}\" // c\n/* d */ !="),
            vec![
                Tok::Ident("a".into()),
                Tok::QDot,
                Tok::Ident("b".into()),
                Tok::QQ,
                Tok::Int(1000),
                Tok::Plus,
                Tok::Float(2500.0),
                Tok::Arrow,
                Tok::Str("x\n\u{e9}".into()),
                Tok::NotEq,
                Tok::Eof
            ]
        );
    }

    #[test]
    fn errors_carry_line_and_column() {
        let e = lex("a\n  \"open").unwrap_err();
        assert_eq!(
            (e.code, e.pos),
            (ErrorCode::Parse, Some(Pos { line: 2, col: 3 }))
        );
        let e = lex("99999999999999999999").unwrap_err();
        assert_eq!(e.code, ErrorCode::Parse);
        assert!(lex("a # b").is_err());
    }
}
