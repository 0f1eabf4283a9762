//! The file operations the log makes (and the region store when it creates its
//! file), behind a small trait, so that a test can put a file system under them that
//! fails, tears writes or loses power at a chosen operation
//! (`sync-server/tests/faults.rs`). [`StdFs`] is the real one, and the one
//! [`FileLog::open`](super::FileLog::open) and `RedbStore::open` use.
//!
//! The contract is the subset of POSIX the log's durability argument relies on
//! (docs/LOG.md, "The durability contract"): a write is durable once the file's
//! `sync_data` or `sync_all` returned; a created, renamed or removed name is durable
//! once its directory's `sync_dir` returned.

use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Cursor, Read, Seek, Write};
use std::path::Path;

/// A file opened for reading.
pub trait ReadFile: Read + Seek + Send {
    /// The file's length in bytes.
    fn size(&self) -> io::Result<u64>;
}

/// A file opened for writing, positioned where the next write goes.
pub trait WriteFile: Write + Seek + Send + fmt::Debug {
    /// The file's length in bytes.
    fn size(&self) -> io::Result<u64>;
    /// Truncates or extends (with zeros) the file to `len` bytes.
    fn set_len(&mut self, len: u64) -> io::Result<()>;
    /// Makes the file's data (and its length) durable.
    fn sync_data(&mut self) -> io::Result<()>;
    /// Makes the file's data and metadata durable.
    fn sync_all(&mut self) -> io::Result<()>;
}

/// The file system under a [`FileLog`](super::FileLog) (and `RedbStore::open_on`).
pub trait FileSystem: fmt::Debug + Send + Sync {
    /// Whether something exists at `path`.
    fn exists(&self, path: &Path) -> io::Result<bool>;
    /// Creates a directory and its missing parents.
    fn create_dir_all(&self, dir: &Path) -> io::Result<()>;
    /// The names of a directory's entries, in any order; names that are not UTF-8 are
    /// left out (no log file has one).
    fn list(&self, dir: &Path) -> io::Result<Vec<String>>;
    fn remove_file(&self, path: &Path) -> io::Result<()>;
    /// Renames `from` to `to`, replacing `to` if it exists.
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()>;
    /// Makes a directory's entries (created, renamed, removed names) durable.
    fn sync_dir(&self, dir: &Path) -> io::Result<()>;
    fn open_read(&self, path: &Path) -> io::Result<Box<dyn ReadFile>>;
    /// Opens a file for writing at offset 0; `create`: create it, or empty it if it
    /// exists; otherwise it must exist.
    fn open_write(&self, path: &Path, create: bool) -> io::Result<Box<dyn WriteFile>>;
}

/// The operating system's file system.
#[derive(Clone, Copy, Debug, Default)]
pub struct StdFs;

impl ReadFile for File {
    fn size(&self) -> io::Result<u64> {
        Ok(self.metadata()?.len())
    }
}

impl ReadFile for Cursor<Vec<u8>> {
    fn size(&self) -> io::Result<u64> {
        Ok(self.get_ref().len() as u64)
    }
}

impl WriteFile for File {
    fn size(&self) -> io::Result<u64> {
        Ok(self.metadata()?.len())
    }

    fn set_len(&mut self, len: u64) -> io::Result<()> {
        File::set_len(self, len)
    }

    fn sync_data(&mut self) -> io::Result<()> {
        File::sync_data(self)
    }

    fn sync_all(&mut self) -> io::Result<()> {
        File::sync_all(self)
    }
}

impl FileSystem for StdFs {
    fn exists(&self, path: &Path) -> io::Result<bool> {
        match fs::metadata(path) {
            Ok(_) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(e),
        }
    }

    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        fs::create_dir_all(dir)
    }

    fn list(&self, dir: &Path) -> io::Result<Vec<String>> {
        let mut out = Vec::new();
        for entry in fs::read_dir(dir)? {
            if let Ok(name) = entry?.file_name().into_string() {
                out.push(name);
            }
        }
        Ok(out)
    }

    fn remove_file(&self, path: &Path) -> io::Result<()> {
        fs::remove_file(path)
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        fs::rename(from, to)
    }

    #[cfg(unix)]
    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        File::open(dir)?.sync_all()
    }

    /// Directories cannot be opened, hence not synced, on this platform.
    #[cfg(not(unix))]
    fn sync_dir(&self, _dir: &Path) -> io::Result<()> {
        Ok(())
    }

    fn open_read(&self, path: &Path) -> io::Result<Box<dyn ReadFile>> {
        Ok(Box::new(File::open(path)?))
    }

    fn open_write(&self, path: &Path, create: bool) -> io::Result<Box<dyn WriteFile>> {
        let f = OpenOptions::new()
            .write(true)
            .create(create)
            .truncate(create)
            .open(path)?;
        Ok(Box::new(f))
    }
}
