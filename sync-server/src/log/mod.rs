//! The global log: the sequencer appends each epoch's batch of commits, the executor
//! reads them back in order.
//!
//! [`Log`] is the trait (synchronous: the sequencer runs it on its own thread);
//! [`FileLog`] is the embedded backend (a directory of segment files, the default) and
//! [`MemoryLog`] a `Vec` for tests of other components. The byte format, the durability
//! contract and the recovery rules are specified in `docs/LOG.md`.
//!
//! A deployment of many regions shares one log instead: [`shared`] (the key layout,
//! the batch record, compare-and-swap appends, the chain check) over [`etcd`] (a client
//! of etcd's JSON gateway); `docs/REGIONS.md`.

use std::fmt;
use std::io;

pub mod etcd;
mod file;
pub mod fs;
pub mod shared;

pub use file::{
    segment_file_name, FileLog, FileLogOptions, Recovery, DEFAULT_SEGMENT_SIZE, FORMAT_VERSION,
    FRAME_HEADER_LEN, HEADER_LEN, MAGIC, SEGMENT_EXTENSION,
};

/// The default limit on one record's size: 16 MiB.
pub const DEFAULT_MAX_RECORD_SIZE: usize = 16 << 20;

/// An append-only sequence of records with consecutive positions starting at 1.
///
/// Contract shared by every backend:
/// - a record is a non-empty byte string no larger than the backend's limit; a batch
///   with an empty or oversized record is refused whole, and nothing of it is written;
/// - `append` returns only once the whole batch is durable; positions are consecutive
///   across batches and across reopening;
/// - after a failed `append` (other than a refused record), the outcome of that batch
///   is unknown: after recovery, none of it, or a prefix of it, may be in the log.
pub trait Log: Send {
    /// Appends `records` as one batch, durably (one fsync for the whole batch), and
    /// returns the position of the first; positions are consecutive and start at 1.
    ///
    /// An empty batch writes nothing and returns the position the next record will get.
    fn append(&mut self, records: &[Vec<u8>]) -> Result<u64, LogError>;

    /// Up to `max` records from position `from` (inclusive), in order, with positions.
    ///
    /// Positions start at 1, so `from` 0 reads from 1. Fewer than `max` records means
    /// the log holds no more; `from` past the last position or `max` 0 return nothing.
    fn read(&self, from: u64, max: usize) -> Result<Vec<(u64, Vec<u8>)>, LogError>;

    /// The last durable position (0 when empty).
    fn last_position(&self) -> u64;
}

impl<L: Log + ?Sized> Log for Box<L> {
    fn append(&mut self, records: &[Vec<u8>]) -> Result<u64, LogError> {
        (**self).append(records)
    }

    fn read(&self, from: u64, max: usize) -> Result<Vec<(u64, Vec<u8>)>, LogError> {
        (**self).read(from, max)
    }

    fn last_position(&self) -> u64 {
        (**self).last_position()
    }
}

/// A log failure. [`LogError::code`] is a stable string; the message is for people.
#[derive(Debug)]
#[non_exhaustive]
pub enum LogError {
    /// An I/O operation failed (`LOG_IO`); `context` says which and on what file.
    Io { context: String, source: io::Error },
    /// Stored bytes are not a valid log (`LOG_CORRUPT`): a bad header, a bad frame
    /// followed by valid data, a gap between segments... The log refuses to open rather
    /// than drop acknowledged records; see `docs/LOG.md` ("Recovery").
    Corrupt { detail: String },
    /// A segment was written by another format version (`LOG_VERSION`).
    UnsupportedVersion { file: String, version: u32 },
    /// A record is larger than the limit (`LOG_RECORD_TOO_LARGE`).
    RecordTooLarge {
        index: usize,
        size: usize,
        max: usize,
    },
    /// A record is empty (`LOG_RECORD_EMPTY`).
    EmptyRecord { index: usize },
    /// An earlier append failed, so the state of the file is unknown (`LOG_FAILED`);
    /// reopen the log to recover.
    Failed,
    /// Invalid options (`LOG_INVALID_OPTIONS`).
    InvalidOptions { detail: String },
}

impl LogError {
    /// The stable code.
    pub fn code(&self) -> &'static str {
        match self {
            LogError::Io { .. } => "LOG_IO",
            LogError::Corrupt { .. } => "LOG_CORRUPT",
            LogError::UnsupportedVersion { .. } => "LOG_VERSION",
            LogError::RecordTooLarge { .. } => "LOG_RECORD_TOO_LARGE",
            LogError::EmptyRecord { .. } => "LOG_RECORD_EMPTY",
            LogError::Failed => "LOG_FAILED",
            LogError::InvalidOptions { .. } => "LOG_INVALID_OPTIONS",
        }
    }

    /// The kind of the underlying I/O error, for `LOG_IO`.
    pub fn io_kind(&self) -> Option<io::ErrorKind> {
        match self {
            LogError::Io { source, .. } => Some(source.kind()),
            _ => None,
        }
    }

    pub(crate) fn io(context: impl Into<String>, source: io::Error) -> LogError {
        LogError::Io {
            context: context.into(),
            source,
        }
    }

    pub(crate) fn corrupt(detail: impl Into<String>) -> LogError {
        LogError::Corrupt {
            detail: detail.into(),
        }
    }
}

impl fmt::Display for LogError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: ", self.code())?;
        match self {
            LogError::Io { context, source } => write!(f, "{context}: {source}"),
            LogError::Corrupt { detail } => f.write_str(detail),
            LogError::UnsupportedVersion { file, version } => write!(
                f,
                "{file} has format version {version}; this build reads version {FORMAT_VERSION}"
            ),
            LogError::RecordTooLarge { index, size, max } => write!(
                f,
                "record {index} of the batch is {size} bytes; the limit is {max}"
            ),
            LogError::EmptyRecord { index } => {
                write!(f, "record {index} of the batch is empty")
            }
            LogError::Failed => f.write_str(
                "an earlier append failed and the log's tail is in an unknown state; reopen the log",
            ),
            LogError::InvalidOptions { detail } => f.write_str(detail),
        }
    }
}

impl std::error::Error for LogError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            LogError::Io { source, .. } => Some(source),
            _ => None,
        }
    }
}

/// Refuses a batch with an empty record or one over `max` bytes.
pub(crate) fn check_records(records: &[Vec<u8>], max: usize) -> Result<(), LogError> {
    for (index, r) in records.iter().enumerate() {
        if r.is_empty() {
            return Err(LogError::EmptyRecord { index });
        }
        if r.len() > max {
            return Err(LogError::RecordTooLarge {
                index,
                size: r.len(),
                max,
            });
        }
    }
    Ok(())
}

/// A log in memory (a `Vec`), with the same contract as [`FileLog`] minus durability:
/// for unit tests of the sequencer and the executor.
#[derive(Clone, Debug)]
pub struct MemoryLog {
    records: Vec<Vec<u8>>,
    max_record_size: usize,
}

impl MemoryLog {
    /// An empty log with the default record limit ([`DEFAULT_MAX_RECORD_SIZE`]).
    pub fn new() -> MemoryLog {
        MemoryLog::with_max_record_size(DEFAULT_MAX_RECORD_SIZE)
    }

    /// An empty log refusing records over `max` bytes.
    pub fn with_max_record_size(max: usize) -> MemoryLog {
        MemoryLog {
            records: Vec::new(),
            max_record_size: max,
        }
    }

    /// Every record, position `i + 1` at index `i`.
    pub fn records(&self) -> &[Vec<u8>] {
        &self.records
    }
}

impl Default for MemoryLog {
    fn default() -> MemoryLog {
        MemoryLog::new()
    }
}

impl Log for MemoryLog {
    fn append(&mut self, records: &[Vec<u8>]) -> Result<u64, LogError> {
        check_records(records, self.max_record_size)?;
        let first = self.records.len() as u64 + 1;
        self.records.extend_from_slice(records);
        Ok(first)
    }

    fn read(&self, from: u64, max: usize) -> Result<Vec<(u64, Vec<u8>)>, LogError> {
        let from = from.max(1);
        let start = usize::try_from(from - 1).unwrap_or(usize::MAX);
        Ok(self
            .records
            .iter()
            .enumerate()
            .skip(start)
            .take(max)
            .map(|(i, r)| (i as u64 + 1, r.clone()))
            .collect())
    }

    fn last_position(&self) -> u64 {
        self.records.len() as u64
    }
}
