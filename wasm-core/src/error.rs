//! Errors with stable codes.
//!
//! Every failure the engine reports carries an [`ErrorCode`]. The code's string form
//! (`ErrorCode::as_str`) is part of Warren's public contract: the server sends it in
//! `Outcome` and `Error` frames, the JS package exposes it as `error.code`, and apps
//! branch on it. Codes are never renamed or reused; new ones may be added.

use std::fmt;

/// A stable error code. See `docs/LANGUAGE.md` ("Error codes") for what each means.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[non_exhaustive]
pub enum ErrorCode {
    /// Source text (a schema, a query, a transaction) does not parse.
    Parse,
    /// A schema is well-formed text but not a valid schema (duplicate names, an index
    /// over no fields, a rule for an unknown action...).
    Schema,
    /// `abort(message)` was called.
    Aborted,
    /// A rule denied a write; the message names the collection, document and rule.
    PermissionDenied,
    /// The step budget ran out.
    FuelExhausted,
    /// Evaluation or value nesting went deeper than the limit.
    DepthExceeded,
    /// The arguments of a commit are larger than the limit.
    ArgumentTooLarge,
    /// A document is larger than the limit.
    DocumentTooLarge,
    /// A result, or an intermediate string or array, is larger than the limit.
    ResultTooLarge,
    /// A transaction writes more documents than the limit.
    TooManyWrites,
    /// An operation was applied to a value of the wrong type.
    Type,
    /// A name that is not bound: a variable, function, collection, index or method.
    Unknown,
    /// A function was called with the wrong number or kind of arguments.
    InvalidArgument,
    /// Integer overflow, division by zero, or a float that is not finite.
    Arithmetic,
    /// A document with this id already exists in the collection.
    DocumentExists,
    /// The document to update, replace or delete does not exist (any more).
    DocumentNotFound,
    /// A document id is empty, too long or has forbidden characters.
    InvalidId,
    /// A unique index already holds this key for another document.
    UniqueViolation,
    /// An update or replace would move the document to another partition.
    PartitionChange,
    /// A write was attempted where only reads are allowed (a query, a rule).
    ReadOnly,
    /// Stored or received bytes do not decode.
    Corrupt,
    /// The storage backend failed.
    Storage,
    /// The storage backend is out of space (the browser's quota for the origin).
    QuotaExceeded,
    /// The evaluation would hold more memory than its budget.
    MemoryExhausted,
    /// The evaluation did more work that it cannot see (entries of partitions it may
    /// not read, rule evaluations) than the limit allows.
    HiddenWorkExhausted,
    /// The engine failed inside (a bug): the commit is refused the same way on every
    /// replica, which keeps running.
    Internal,
    /// The commit would take its identity (or a document's owner) over a quota of
    /// documents, bytes or partitions kept on the server (`crate::quota`).
    IdentityQuota,
    /// A collaborative text update is malformed, edits something other than the text,
    /// or passes a bound (docs/LANGUAGE.md, "Text fields").
    InvalidTextUpdate,
    /// A collaborative text update depends on edits the text does not have: an
    /// earlier edit was refused, or has not been sent yet.
    TextUpdateOutOfOrder,
    /// This build of the engine has no collaborative text (the browser's smaller
    /// module) and cannot apply a text edit; the server, which has it, decides.
    TextUnavailable,
    /// A document does not fit its collection's declared field types, or an argument
    /// its function's parameter type; the message names the collection, document and
    /// field (or the function and argument).
    Validation,
}

impl ErrorCode {
    /// Every code, for tests and documentation.
    pub const ALL: &'static [ErrorCode] = &[
        ErrorCode::Parse,
        ErrorCode::Schema,
        ErrorCode::Aborted,
        ErrorCode::PermissionDenied,
        ErrorCode::FuelExhausted,
        ErrorCode::DepthExceeded,
        ErrorCode::ArgumentTooLarge,
        ErrorCode::DocumentTooLarge,
        ErrorCode::ResultTooLarge,
        ErrorCode::TooManyWrites,
        ErrorCode::Type,
        ErrorCode::Unknown,
        ErrorCode::InvalidArgument,
        ErrorCode::Arithmetic,
        ErrorCode::DocumentExists,
        ErrorCode::DocumentNotFound,
        ErrorCode::InvalidId,
        ErrorCode::UniqueViolation,
        ErrorCode::PartitionChange,
        ErrorCode::ReadOnly,
        ErrorCode::Corrupt,
        ErrorCode::Storage,
        ErrorCode::QuotaExceeded,
        ErrorCode::MemoryExhausted,
        ErrorCode::HiddenWorkExhausted,
        ErrorCode::Internal,
        ErrorCode::IdentityQuota,
        ErrorCode::InvalidTextUpdate,
        ErrorCode::TextUpdateOutOfOrder,
        ErrorCode::TextUnavailable,
        ErrorCode::Validation,
    ];

    /// The stable string form.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::Parse => "PARSE_ERROR",
            ErrorCode::Schema => "SCHEMA_ERROR",
            ErrorCode::Aborted => "ABORTED",
            ErrorCode::PermissionDenied => "PERMISSION_DENIED",
            ErrorCode::FuelExhausted => "FUEL_EXHAUSTED",
            ErrorCode::DepthExceeded => "DEPTH_EXCEEDED",
            ErrorCode::ArgumentTooLarge => "ARGUMENT_TOO_LARGE",
            ErrorCode::DocumentTooLarge => "DOCUMENT_TOO_LARGE",
            ErrorCode::ResultTooLarge => "RESULT_TOO_LARGE",
            ErrorCode::TooManyWrites => "TOO_MANY_WRITES",
            ErrorCode::Type => "TYPE_ERROR",
            ErrorCode::Unknown => "UNKNOWN_NAME",
            ErrorCode::InvalidArgument => "INVALID_ARGUMENT",
            ErrorCode::Arithmetic => "ARITHMETIC_ERROR",
            ErrorCode::DocumentExists => "DOCUMENT_EXISTS",
            ErrorCode::DocumentNotFound => "DOCUMENT_NOT_FOUND",
            ErrorCode::InvalidId => "INVALID_ID",
            ErrorCode::UniqueViolation => "UNIQUE_VIOLATION",
            ErrorCode::PartitionChange => "PARTITION_CHANGE",
            ErrorCode::ReadOnly => "READ_ONLY",
            ErrorCode::Corrupt => "CORRUPT",
            ErrorCode::Storage => "STORAGE_ERROR",
            ErrorCode::QuotaExceeded => "QUOTA_EXCEEDED",
            ErrorCode::MemoryExhausted => "MEMORY_EXHAUSTED",
            ErrorCode::HiddenWorkExhausted => "HIDDEN_WORK_EXHAUSTED",
            ErrorCode::Internal => "INTERNAL_ERROR",
            ErrorCode::IdentityQuota => "IDENTITY_QUOTA_EXCEEDED",
            ErrorCode::InvalidTextUpdate => "INVALID_TEXT_UPDATE",
            ErrorCode::TextUpdateOutOfOrder => "TEXT_UPDATE_OUT_OF_ORDER",
            ErrorCode::TextUnavailable => "TEXT_UNAVAILABLE",
            ErrorCode::Validation => "VALIDATION_FAILED",
        }
    }

    /// The code for a stable string, if it is one.
    pub fn parse(s: &str) -> Option<ErrorCode> {
        ErrorCode::ALL.iter().copied().find(|c| c.as_str() == s)
    }

    /// Whether a transaction that fails with this code would fail the same way on every
    /// replica (a property of the commit and the state). Storage and corruption
    /// failures are local accidents: the executor must stop, not record a rejection.
    /// `TEXT_UNAVAILABLE` is a property of the build (the browser's module without
    /// text): the replica does not take the write, the server decides it.
    pub fn is_deterministic(self) -> bool {
        !matches!(
            self,
            ErrorCode::Storage
                | ErrorCode::Corrupt
                | ErrorCode::QuotaExceeded
                | ErrorCode::TextUnavailable
        )
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where in source text an error was found (1-based).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Pos {
    pub line: u32,
    pub col: u32,
}

impl fmt::Display for Pos {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.line, self.col)
    }
}

/// An engine error: a stable code, a message for people, and a source position when
/// one is known.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Error {
    pub code: ErrorCode,
    pub message: String,
    pub pos: Option<Pos>,
}

impl Error {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Error {
        Error {
            code,
            message: message.into(),
            pos: None,
        }
    }

    pub fn at(code: ErrorCode, pos: Pos, message: impl Into<String>) -> Error {
        Error {
            code,
            message: message.into(),
            pos: Some(pos),
        }
    }

    /// Attaches a position if the error has none yet.
    pub fn or_at(mut self, pos: Pos) -> Error {
        if self.pos.is_none() {
            self.pos = Some(pos);
        }
        self
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.pos {
            Some(p) => write!(f, "{} at {}: {}", self.code, p, self.message),
            None => write!(f, "{}: {}", self.code, self.message),
        }
    }
}

impl std::error::Error for Error {}

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_unique_and_round_trip() {
        let mut seen = std::collections::BTreeSet::new();
        for c in ErrorCode::ALL {
            assert!(seen.insert(c.as_str()), "duplicate {c}");
            assert_eq!(ErrorCode::parse(c.as_str()), Some(*c));
        }
        assert_eq!(ErrorCode::parse("NOPE"), None);
    }

    #[test]
    fn display_includes_position() {
        let e = Error::at(ErrorCode::Parse, Pos { line: 3, col: 7 }, "expected )");
        assert_eq!(e.to_string(), "PARSE_ERROR at 3:7: expected )");
    }
}
