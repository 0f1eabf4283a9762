//! The embedded log: a directory of append-only segment files.
//!
//! The byte format and the recovery rules are specified in `docs/LOG.md`; this file
//! implements them. In short: segment `<first position, 20 digits>.wlog`, a 24-byte
//! header, then frames `[u32 length][u32 CRC-32 of the payload][payload]`
//! (little-endian). One `write` and one `sync_data` per batch.

use std::io::{self, BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::fs::{FileSystem, StdFs, WriteFile};
use super::{check_records, Log, LogError, DEFAULT_MAX_RECORD_SIZE};

/// The first 8 bytes of every segment file.
pub const MAGIC: [u8; 8] = *b"WARRNLOG";
/// The format version this build reads and writes.
pub const FORMAT_VERSION: u32 = 1;
/// The size of a segment header: magic, version, first position, header CRC.
pub const HEADER_LEN: u64 = 24;
/// The size of a frame's header: payload length and payload CRC.
pub const FRAME_HEADER_LEN: u64 = 8;
/// The extension of segment files.
pub const SEGMENT_EXTENSION: &str = "wlog";
/// The default size past which a new segment is started: 64 MiB.
pub const DEFAULT_SEGMENT_SIZE: u64 = 64 << 20;

/// Digits of the position in a segment's name (enough for `u64::MAX`).
const NAME_DIGITS: usize = 20;
/// A segment being created is written under its name plus this suffix, then renamed.
const TEMP_SUFFIX: &str = ".tmp";
/// The sparse offset index keeps one entry per this many bytes of a segment.
const INDEX_INTERVAL: u64 = 64 << 10;

/// The file name of the segment whose first record has position `first`:
/// `00000000000000000001.wlog`.
pub fn segment_file_name(first: u64) -> String {
    format!("{first:0NAME_DIGITS$}.{SEGMENT_EXTENSION}")
}

/// Options of [`FileLog::open`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileLogOptions {
    /// A batch that would take the current segment past this many bytes (header
    /// included) goes to a new segment, unless the current one holds no record yet.
    /// A batch is never split, so one batch larger than this makes a larger segment.
    pub segment_size: u64,
    /// `append` refuses a record larger than this (`LOG_RECORD_TOO_LARGE`); at most
    /// `u32::MAX`. Recovery does not use it: records written under a larger limit
    /// still read back.
    pub max_record_size: usize,
}

impl Default for FileLogOptions {
    fn default() -> FileLogOptions {
        FileLogOptions {
            segment_size: DEFAULT_SEGMENT_SIZE,
            max_record_size: DEFAULT_MAX_RECORD_SIZE,
        }
    }
}

/// What [`FileLog::open`] found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Recovery {
    /// Segment files found (0 for a new log).
    pub segments: usize,
    /// The last durable position after recovery (0 when empty).
    pub last_position: u64,
    /// Bytes cut from the end of the last segment (a torn tail), 0 when none.
    pub truncated_bytes: u64,
    /// Whether the directory held no segment, so a first one was created.
    pub created: bool,
    /// Leftover `*.wlog.tmp` files (segments whose creation was interrupted) removed.
    pub removed_temp_files: usize,
}

/// One segment file, as far as it is durable and valid.
#[derive(Debug)]
struct Segment {
    /// Position of its first record (from its name and header).
    first: u64,
    /// Position of its last record; `first - 1` when it holds none.
    last: u64,
    /// Bytes of the header and the complete frames.
    len: u64,
    path: PathBuf,
    /// Sparse `(position, frame offset)`, ascending; the first frame is always in it.
    index: Vec<(u64, u64)>,
}

impl Segment {
    fn note_frame(&mut self, position: u64, offset: u64) {
        match self.index.last() {
            Some(&(_, o)) if offset - o < INDEX_INTERVAL => {}
            _ => self.index.push((position, offset)),
        }
    }

    fn file_name(&self) -> String {
        segment_file_name(self.first)
    }
}

/// The embedded, fsynced, segmented log. Exactly one `FileLog` may have a directory
/// open at a time (nothing enforces it).
///
/// After an I/O error in `append`, the tail of the file is in an unknown state: every
/// later append fails with `LOG_FAILED` (reads keep working). Drop the log and open it
/// again; recovery decides what of the failed batch survived (nothing or a prefix).
#[derive(Debug)]
pub struct FileLog {
    fs: Arc<dyn FileSystem>,
    dir: PathBuf,
    options: FileLogOptions,
    /// Ascending by `first`, contiguous; never empty. The last one is being appended to.
    segments: Vec<Segment>,
    /// The last segment, opened for writing, positioned at its end.
    active: Box<dyn WriteFile>,
    last: u64,
    /// Set when an append failed after it may have written: the tail is unknown.
    failed: bool,
}

impl FileLog {
    /// Opens the log in `dir` (created if missing), recovering it: a torn tail of the
    /// last segment is truncated; any other damage is `LOG_CORRUPT`.
    pub fn open(
        dir: impl AsRef<Path>,
        options: FileLogOptions,
    ) -> Result<(FileLog, Recovery), LogError> {
        FileLog::open_with(Arc::new(StdFs), dir, options)
    }

    /// [`FileLog::open`] on another file system: every file operation of the log goes
    /// through `fs` (tests inject failures and crashes with it).
    pub fn open_with(
        fs: Arc<dyn FileSystem>,
        dir: impl AsRef<Path>,
        options: FileLogOptions,
    ) -> Result<(FileLog, Recovery), LogError> {
        let fs_ref: &dyn FileSystem = &*fs;
        if options.max_record_size == 0 || options.max_record_size as u64 > u32::MAX as u64 {
            return Err(LogError::InvalidOptions {
                detail: format!(
                    "max_record_size must be between 1 and {}, not {}",
                    u32::MAX,
                    options.max_record_size
                ),
            });
        }
        let dir = dir.as_ref().to_path_buf();
        let mut recovery = Recovery::default();

        match fs_ref.exists(&dir) {
            Ok(true) => {}
            Ok(false) => {
                fs_ref
                    .create_dir_all(&dir)
                    .map_err(|e| LogError::io(format!("creating {}", dir.display()), e))?;
                let parent = dir
                    .parent()
                    .filter(|p| !p.as_os_str().is_empty())
                    .unwrap_or(Path::new("."));
                sync_dir(fs_ref, parent)?;
            }
            Err(e) => return Err(LogError::io(format!("opening {}", dir.display()), e)),
        }

        // List the segments; remove leftovers of interrupted segment creation.
        let mut names: Vec<(u64, PathBuf)> = Vec::new();
        let entries = fs_ref
            .list(&dir)
            .map_err(|e| LogError::io(format!("listing {}", dir.display()), e))?;
        for name in entries {
            let path = dir.join(&name);
            if name.ends_with(&format!(".{SEGMENT_EXTENSION}{TEMP_SUFFIX}")) {
                fs_ref
                    .remove_file(&path)
                    .map_err(|e| LogError::io(format!("removing {}", path.display()), e))?;
                recovery.removed_temp_files += 1;
                continue;
            }
            let Some(stem) = name.strip_suffix(&format!(".{SEGMENT_EXTENSION}")) else {
                continue;
            };
            let first = (stem.len() == NAME_DIGITS && stem.bytes().all(|b| b.is_ascii_digit()))
                .then(|| stem.parse::<u64>().ok())
                .flatten()
                .ok_or_else(|| {
                    LogError::corrupt(format!(
                        "{name} in {} is not a segment name ({NAME_DIGITS} digits and .{SEGMENT_EXTENSION})",
                        dir.display()
                    ))
                })?;
            names.push((first, path));
        }
        if recovery.removed_temp_files > 0 {
            sync_dir(fs_ref, &dir)?;
        }
        names.sort_by_key(|(first, _)| *first);
        recovery.segments = names.len();

        let mut segments: Vec<Segment> = Vec::with_capacity(names.len().max(1));
        let mut torn: Option<u64> = None;
        if names.is_empty() {
            segments.push(create_segment(fs_ref, &dir, 1)?);
            recovery.created = true;
        } else {
            let count = names.len();
            for (i, (first, path)) in names.into_iter().enumerate() {
                let expected = segments.last().map_or(1, |s| s.last + 1);
                if first != expected {
                    let name = segment_file_name(first);
                    return Err(LogError::corrupt(match segments.last() {
                        None => format!(
                            "the first segment is {name} in {}; the log must start at position 1 (segment {} is missing)",
                            dir.display(),
                            segment_file_name(1)
                        ),
                        Some(prev) => format!(
                            "segment {} ends at position {} but the next segment is {name} in {} (positions must be contiguous)",
                            prev.file_name(),
                            prev.last,
                            dir.display()
                        ),
                    }));
                }
                let (segment, bad) = scan_segment(fs_ref, path, first, i + 1 == count)?;
                if bad.is_some() {
                    torn = bad;
                }
                segments.push(segment);
            }
        }

        let active_seg = segments.last().expect("at least one segment");
        if let Some(at) = torn {
            let mut f = fs_ref
                .open_write(&active_seg.path, false)
                .map_err(|e| LogError::io(format!("opening {}", active_seg.path.display()), e))?;
            let file_len = f
                .size()
                .map_err(|e| LogError::io(format!("reading {}", active_seg.path.display()), e))?;
            f.set_len(at).and_then(|_| f.sync_all()).map_err(|e| {
                LogError::io(format!("truncating {}", active_seg.path.display()), e)
            })?;
            recovery.truncated_bytes = file_len - at;
        }
        let active = open_for_append(fs_ref, &active_seg.path, active_seg.len)?;
        let last = active_seg.last;
        recovery.last_position = last;
        Ok((
            FileLog {
                fs,
                dir,
                options,
                segments,
                active,
                last,
                failed: false,
            },
            recovery,
        ))
    }

    /// The log's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The options it was opened with.
    pub fn options(&self) -> &FileLogOptions {
        &self.options
    }

    /// The first position of each segment, ascending (the segment files' names).
    pub fn segment_first_positions(&self) -> Vec<u64> {
        self.segments.iter().map(|s| s.first).collect()
    }

    /// Starts a new segment whose first record will be `first`.
    fn roll(&mut self, first: u64) -> Result<(), LogError> {
        let segment = create_segment(&*self.fs, &self.dir, first)?;
        let active = open_for_append(&*self.fs, &segment.path, segment.len)?;
        self.segments.push(segment);
        self.active = active;
        Ok(())
    }
}

impl Log for FileLog {
    fn append(&mut self, records: &[Vec<u8>]) -> Result<u64, LogError> {
        if self.failed {
            return Err(LogError::Failed);
        }
        check_records(records, self.options.max_record_size)?;
        let first = self.last + 1;
        if records.is_empty() {
            return Ok(first);
        }
        let batch_len: u64 = records
            .iter()
            .map(|r| FRAME_HEADER_LEN + r.len() as u64)
            .sum();
        let current = self.segments.last().expect("at least one segment");
        if current.last >= current.first
            && current.len.saturating_add(batch_len) > self.options.segment_size
        {
            if let Err(e) = self.roll(first) {
                self.failed = true;
                return Err(e);
            }
        }

        let mut buf = Vec::with_capacity(batch_len as usize);
        for r in records {
            buf.extend_from_slice(&(r.len() as u32).to_le_bytes());
            buf.extend_from_slice(&crc32fast::hash(r).to_le_bytes());
            buf.extend_from_slice(r);
        }
        let segment = self.segments.last_mut().expect("at least one segment");
        let written = self
            .active
            .write_all(&buf)
            .map_err(|e| LogError::io(format!("writing {}", segment.path.display()), e))
            .and_then(|_| {
                self.active
                    .sync_data()
                    .map_err(|e| LogError::io(format!("syncing {}", segment.path.display()), e))
            });
        if let Err(e) = written {
            self.failed = true;
            return Err(e);
        }

        let mut offset = segment.len;
        for (i, r) in records.iter().enumerate() {
            segment.note_frame(first + i as u64, offset);
            offset += FRAME_HEADER_LEN + r.len() as u64;
        }
        segment.len = offset;
        segment.last = first + records.len() as u64 - 1;
        self.last = segment.last;
        Ok(first)
    }

    fn read(&self, from: u64, max: usize) -> Result<Vec<(u64, Vec<u8>)>, LogError> {
        let from = from.max(1);
        let mut out = Vec::new();
        if max == 0 || from > self.last {
            return Ok(out);
        }
        let mut at = self.segments.partition_point(|s| s.first <= from) - 1;
        let mut position = from;
        while out.len() < max && at < self.segments.len() {
            let segment = &self.segments[at];
            at += 1;
            if segment.last < position {
                continue;
            }
            read_segment(&*self.fs, segment, position, max, &mut out)?;
            position = segment.last + 1;
        }
        Ok(out)
    }

    fn last_position(&self) -> u64 {
        self.last
    }
}

/// Appends to `out`, until it holds `max` records, the records of `segment` from
/// `from` (which it holds) on.
fn read_segment(
    fs: &dyn FileSystem,
    segment: &Segment,
    from: u64,
    max: usize,
    out: &mut Vec<(u64, Vec<u8>)>,
) -> Result<(), LogError> {
    let io_err = |e| LogError::io(format!("reading {}", segment.path.display()), e);
    let i = segment.index.partition_point(|&(p, _)| p <= from);
    let (mut position, mut offset) = segment.index[i - 1];
    let mut file = fs.open_read(&segment.path).map_err(io_err)?;
    file.seek(SeekFrom::Start(offset)).map_err(io_err)?;
    let mut reader = BufReader::with_capacity(64 << 10, file);
    while position <= segment.last && out.len() < max {
        let mut header = [0u8; FRAME_HEADER_LEN as usize];
        reader.read_exact(&mut header).map_err(io_err)?;
        let len = u32::from_le_bytes(header[0..4].try_into().unwrap());
        let crc = u32::from_le_bytes(header[4..8].try_into().unwrap());
        let end = offset + FRAME_HEADER_LEN + len as u64;
        if len == 0 || end > segment.len {
            return Err(LogError::corrupt(format!(
                "{} at offset {offset} (position {position}): frame length {len} changed since the log was opened",
                segment.file_name()
            )));
        }
        if position < from {
            reader.seek_relative(len as i64).map_err(io_err)?;
        } else {
            let mut payload = vec![0u8; len as usize];
            reader.read_exact(&mut payload).map_err(io_err)?;
            if crc32fast::hash(&payload) != crc {
                return Err(LogError::corrupt(format!(
                    "{} at offset {offset} (position {position}): checksum mismatch (the file changed since the log was opened)",
                    segment.file_name()
                )));
            }
            out.push((position, payload));
        }
        offset = end;
        position += 1;
    }
    Ok(())
}

/// The header of the segment starting at `first`.
fn encode_header(first: u64) -> [u8; HEADER_LEN as usize] {
    let mut h = [0u8; HEADER_LEN as usize];
    h[0..8].copy_from_slice(&MAGIC);
    h[8..12].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
    h[12..20].copy_from_slice(&first.to_le_bytes());
    let crc = crc32fast::hash(&h[0..20]);
    h[20..24].copy_from_slice(&crc.to_le_bytes());
    h
}

/// Creates the segment starting at `first`, durably: written under a temporary name,
/// synced, renamed, and the directory synced. A segment file under its final name
/// therefore always has a complete header.
fn create_segment(fs: &dyn FileSystem, dir: &Path, first: u64) -> Result<Segment, LogError> {
    let name = segment_file_name(first);
    let path = dir.join(&name);
    let tmp = dir.join(format!("{name}{TEMP_SUFFIX}"));
    let write = || -> io::Result<()> {
        let mut f = fs.open_write(&tmp, true)?;
        f.write_all(&encode_header(first))?;
        f.sync_all()
    };
    write().map_err(|e| LogError::io(format!("creating {}", tmp.display()), e))?;
    fs.rename(&tmp, &path)
        .map_err(|e| LogError::io(format!("renaming {} to {name}", tmp.display()), e))?;
    sync_dir(fs, dir)?;
    Ok(Segment {
        first,
        last: first - 1,
        len: HEADER_LEN,
        path,
        index: Vec::new(),
    })
}

fn open_for_append(
    fs: &dyn FileSystem,
    path: &Path,
    len: u64,
) -> Result<Box<dyn WriteFile>, LogError> {
    let mut f = fs
        .open_write(path, false)
        .map_err(|e| LogError::io(format!("opening {}", path.display()), e))?;
    f.seek(SeekFrom::Start(len))
        .map_err(|e| LogError::io(format!("seeking in {}", path.display()), e))?;
    Ok(f)
}

/// Makes a directory's entries (created, renamed, removed files) durable.
fn sync_dir(fs: &dyn FileSystem, dir: &Path) -> Result<(), LogError> {
    fs.sync_dir(dir)
        .map_err(|e| LogError::io(format!("syncing directory {}", dir.display()), e))
}

/// Reads and checks a segment's header and frames. Returns the valid part, and for the
/// last segment the offset of a torn tail to truncate (`None` when the file ends with a
/// complete frame). Modifies nothing.
fn scan_segment(
    fs: &dyn FileSystem,
    path: PathBuf,
    first: u64,
    is_last: bool,
) -> Result<(Segment, Option<u64>), LogError> {
    let name = segment_file_name(first);
    let io_err = |e| LogError::io(format!("reading {}", path.display()), e);
    let file = fs.open_read(&path).map_err(io_err)?;
    let file_len = file.size().map_err(io_err)?;
    let mut reader = BufReader::with_capacity(1 << 20, file);

    if file_len < HEADER_LEN {
        return Err(LogError::corrupt(format!(
            "{name}: {file_len} bytes, shorter than the {HEADER_LEN}-byte header"
        )));
    }
    let mut header = [0u8; HEADER_LEN as usize];
    reader.read_exact(&mut header).map_err(io_err)?;
    if header[0..8] != MAGIC {
        return Err(LogError::corrupt(format!(
            "{name}: bad magic {:02x?} (not a Warren log segment)",
            &header[0..8]
        )));
    }
    let version = u32::from_le_bytes(header[8..12].try_into().unwrap());
    if version != FORMAT_VERSION {
        return Err(LogError::UnsupportedVersion {
            file: name,
            version,
        });
    }
    let stored_crc = u32::from_le_bytes(header[20..24].try_into().unwrap());
    if crc32fast::hash(&header[0..20]) != stored_crc {
        return Err(LogError::corrupt(format!(
            "{name}: header checksum mismatch"
        )));
    }
    let header_first = u64::from_le_bytes(header[12..20].try_into().unwrap());
    if header_first != first {
        return Err(LogError::corrupt(format!(
            "{name}: header says first position {header_first}"
        )));
    }

    let mut segment = Segment {
        first,
        last: first - 1,
        len: HEADER_LEN,
        path: path.clone(),
        index: Vec::new(),
    };
    let mut payload = Vec::new();
    let bad = loop {
        let offset = segment.len;
        if offset == file_len {
            break None;
        }
        let remaining = file_len - offset;
        if remaining < FRAME_HEADER_LEN {
            break Some("incomplete frame header");
        }
        let mut fh = [0u8; FRAME_HEADER_LEN as usize];
        reader.read_exact(&mut fh).map_err(io_err)?;
        let len = u32::from_le_bytes(fh[0..4].try_into().unwrap());
        let crc = u32::from_le_bytes(fh[4..8].try_into().unwrap());
        if len == 0 {
            break Some("zero length");
        }
        if len as u64 > remaining - FRAME_HEADER_LEN {
            break Some("frame extends past the end of the file");
        }
        payload.resize(len as usize, 0);
        reader.read_exact(&mut payload).map_err(io_err)?;
        if crc32fast::hash(&payload) != crc {
            break Some("checksum mismatch");
        }
        let position = segment.last + 1;
        segment.note_frame(position, offset);
        segment.last = position;
        segment.len = offset + FRAME_HEADER_LEN + len as u64;
    };
    let Some(reason) = bad else {
        return Ok((segment, None));
    };

    let offset = segment.len;
    let position = segment.last + 1;
    if !is_last {
        return Err(LogError::corrupt(format!(
            "{name}: bad frame at offset {offset} (position {position}: {reason}) in a segment that is not the last"
        )));
    }
    // A torn tail, unless a valid frame follows the bad one: then the damage is in
    // the middle of written (hence possibly acknowledged) data.
    let mut tail = Vec::with_capacity((file_len - offset) as usize);
    let mut file = reader.into_inner();
    file.seek(SeekFrom::Start(offset)).map_err(io_err)?;
    file.take(file_len - offset)
        .read_to_end(&mut tail)
        .map_err(io_err)?;
    if let Some(at) = find_valid_frame(&tail) {
        return Err(LogError::corrupt(format!(
            "{name}: bad frame at offset {offset} (position {position}: {reason}) is followed by a valid frame at offset {}",
            offset + at as u64
        )));
    }
    Ok((segment, Some(offset)))
}

/// The first offset after 0 in `tail` where a valid frame starts (a non-zero length
/// that fits, and a matching checksum).
fn find_valid_frame(tail: &[u8]) -> Option<usize> {
    let header = FRAME_HEADER_LEN as usize;
    (1..tail.len()).find(|&p| {
        let rest = &tail[p..];
        if rest.len() <= header {
            return false;
        }
        let len = u32::from_le_bytes(rest[0..4].try_into().unwrap()) as usize;
        if len == 0 || len > rest.len() - header {
            return false;
        }
        let crc = u32::from_le_bytes(rest[4..8].try_into().unwrap());
        crc32fast::hash(&rest[header..header + len]) == crc
    })
}
