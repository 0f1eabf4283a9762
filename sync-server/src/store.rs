//! The region's state on disk: redb, behind the engine's [`Storage`] trait.
//!
//! One table of byte keys and values. Reads go through a read transaction that is
//! renewed after every write, so the executor reads without opening a transaction per
//! key. Writes are one redb write transaction per batch. The log, not this store, is
//! the source of truth: most batches commit without an fsync ([`Durability::None`]),
//! and every `sync_every` batches (and on [`RedbStore::sync`]) one commits durably.
//! After a crash redb comes back at its last durable commit, whose stored position
//! says where to resume replaying the log; state, digest and position always move
//! together, in one transaction.
//!
//! The file is created whole or not at all: initialised under a temporary name,
//! synced, then renamed (like a log segment), so a crash during the first start never
//! leaves a half-made file that redb refuses to open.

use std::ops::Bound;
use std::path::{Path, PathBuf};

use redb::backends::FileBackend;
use redb::{Database, Durability, ReadOnlyTable, StorageBackend, TableDefinition};

use crate::log::fs::{FileSystem, StdFs};
use warren_core::storage::{Batch, Entry, KeyRange, Storage};
use warren_core::{Error, ErrorCode};

const TABLE: TableDefinition<&[u8], &[u8]> = TableDefinition::new("warren");

pub struct RedbStore {
    db: Database,
    read: Table,
    sync_every: u32,
    since_sync: u32,
}

fn storage(e: impl std::fmt::Display) -> Error {
    Error::new(ErrorCode::Storage, format!("region store: {e}"))
}

impl RedbStore {
    /// Opens (or creates) the store at `path`. `sync_every`: commit durably every this
    /// many batches (1 = every batch).
    pub fn open(path: &Path, sync_every: u32) -> Result<RedbStore, Error> {
        RedbStore::open_on(&StdFs, path, sync_every, |p| {
            let file = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .open(p)
                .map_err(storage)?;
            FileBackend::new(file).map_err(storage)
        })
    }

    /// [`RedbStore::open`] on another file system: `fs` creates, renames and syncs,
    /// `backend` gives redb the file at a path (tests inject I/O failures and crashes
    /// with both: `sync-server/tests/faults.rs`).
    pub fn open_on<B: StorageBackend>(
        fs: &dyn FileSystem,
        path: &Path,
        sync_every: u32,
        backend: impl Fn(&Path) -> Result<B, Error>,
    ) -> Result<RedbStore, Error> {
        let io = |what: &str, p: &Path, e: std::io::Error| {
            storage(format!("{what} {}: {e}", p.display()))
        };
        if !fs.exists(path).map_err(|e| io("opening", path, e))? {
            // Made whole under a temporary name, then renamed: a crash before the
            // rename leaves only the temporary file, removed here next time.
            let mut tmp = path.as_os_str().to_owned();
            tmp.push(".tmp");
            let tmp = PathBuf::from(tmp);
            if fs.exists(&tmp).map_err(|e| io("opening", &tmp, e))? {
                fs.remove_file(&tmp).map_err(|e| io("removing", &tmp, e))?;
            }
            drop(
                fs.open_write(&tmp, true)
                    .map_err(|e| io("creating", &tmp, e))?,
            );
            let db = Database::builder()
                .create_with_backend(backend(&tmp)?)
                .map_err(storage)?;
            drop(RedbStore::with_database(db, 1)?);
            fs.rename(&tmp, path).map_err(|e| io("renaming", &tmp, e))?;
            let dir = path
                .parent()
                .filter(|p| !p.as_os_str().is_empty())
                .unwrap_or(Path::new("."));
            fs.sync_dir(dir).map_err(|e| io("syncing", dir, e))?;
        }
        let db = Database::builder()
            .create_with_backend(backend(path)?)
            .map_err(storage)?;
        RedbStore::with_database(db, sync_every)
    }

    /// Opens the database and makes sure its table exists, durably.
    fn with_database(db: Database, sync_every: u32) -> Result<RedbStore, Error> {
        let w = db.begin_write().map_err(storage)?;
        w.open_table(TABLE).map_err(storage)?;
        w.commit().map_err(storage)?;
        let read = db
            .begin_read()
            .map_err(storage)?
            .open_table(TABLE)
            .map_err(storage)?;
        Ok(RedbStore {
            db,
            read,
            sync_every: sync_every.max(1),
            since_sync: 0,
        })
    }

    fn refresh(&mut self) -> Result<(), Error> {
        self.read = self
            .db
            .begin_read()
            .map_err(storage)?
            .open_table(TABLE)
            .map_err(storage)?;
        Ok(())
    }

    fn write(&mut self, batch: Batch, durable: bool) -> Result<(), Error> {
        let mut w = self.db.begin_write().map_err(storage)?;
        w.set_durability(if durable {
            Durability::Immediate
        } else {
            Durability::None
        });
        {
            let mut t = w.open_table(TABLE).map_err(storage)?;
            for (k, v) in &batch.ops {
                match v {
                    Some(v) => {
                        t.insert(k.as_slice(), v.as_slice()).map_err(storage)?;
                    }
                    None => {
                        t.remove(k.as_slice()).map_err(storage)?;
                    }
                }
            }
        }
        w.commit().map_err(storage)?;
        self.since_sync = if durable { 0 } else { self.since_sync + 1 };
        self.refresh()
    }

    /// Whether the next [`Storage::apply`] commits durably.
    pub fn next_write_durable(&self) -> bool {
        self.since_sync + 1 >= self.sync_every
    }

    /// Makes everything written so far durable.
    pub fn sync(&mut self) -> Result<(), Error> {
        if self.since_sync > 0 {
            self.write(Batch::new(), true)?;
        }
        Ok(())
    }
}

fn bound(b: &Bound<Vec<u8>>) -> Bound<&[u8]> {
    match b {
        Bound::Included(v) => Bound::Included(v.as_slice()),
        Bound::Excluded(v) => Bound::Excluded(v.as_slice()),
        Bound::Unbounded => Bound::Unbounded,
    }
}

type Item<'a> = Result<
    (
        redb::AccessGuard<'a, &'static [u8]>,
        redb::AccessGuard<'a, &'static [u8]>,
    ),
    redb::StorageError,
>;

/// The first `limit` entries of a redb range.
fn take<'a>(range: impl Iterator<Item = Item<'a>>, limit: usize) -> Result<Vec<Entry>, Error> {
    let mut out = Vec::with_capacity(limit.min(256));
    for item in range.take(limit) {
        let (k, v) = item.map_err(storage)?;
        out.push((k.value().to_vec(), v.value().to_vec()));
    }
    Ok(out)
}

type Table = ReadOnlyTable<&'static [u8], &'static [u8]>;

fn table_get(t: &Table, key: &[u8]) -> Result<Option<Vec<u8>>, Error> {
    Ok(t.get(key).map_err(storage)?.map(|g| g.value().to_vec()))
}

fn table_scan(
    t: &Table,
    range: &KeyRange,
    reverse: bool,
    limit: usize,
) -> Result<Vec<Entry>, Error> {
    if limit == 0 || range.is_empty() {
        return Ok(Vec::new());
    }
    let r = t
        .range::<&[u8]>((bound(&range.start), bound(&range.end)))
        .map_err(storage)?;
    if reverse {
        take(r.rev(), limit)
    } else {
        take(r, limit)
    }
}

/// A consistent, read-only view of the store as of one write: readers on other
/// threads (a connection's catch-up) use it while the region goes on writing.
pub struct Snapshot {
    read: Table,
}

impl RedbStore {
    /// A read-only view of the state as of the last write.
    pub fn snapshot(&self) -> Result<Snapshot, Error> {
        Ok(Snapshot {
            read: self
                .db
                .begin_read()
                .map_err(storage)?
                .open_table(TABLE)
                .map_err(storage)?,
        })
    }
}

impl Storage for Snapshot {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, Error> {
        table_get(&self.read, key)
    }

    fn scan(&self, range: &KeyRange, reverse: bool, limit: usize) -> Result<Vec<Entry>, Error> {
        table_scan(&self.read, range, reverse, limit)
    }

    fn apply(&mut self, _batch: Batch) -> Result<(), Error> {
        Err(Error::new(
            ErrorCode::Storage,
            "a region store snapshot is read-only",
        ))
    }
}

impl Storage for RedbStore {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, Error> {
        table_get(&self.read, key)
    }

    fn scan(&self, range: &KeyRange, reverse: bool, limit: usize) -> Result<Vec<Entry>, Error> {
        table_scan(&self.read, range, reverse, limit)
    }

    fn apply(&mut self, batch: Batch) -> Result<(), Error> {
        let durable = self.since_sync + 1 >= self.sync_every;
        self.write(batch, durable)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_store() -> RedbStore {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("warren-redb-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let store = RedbStore::open(&dir.join("state.redb"), 4).unwrap();
        // The store keeps its file open and never opens it by path again, so the
        // directory goes now: where the file system allows it (Unix), nothing is left
        // behind when the test ends.
        let _ = std::fs::remove_dir_all(&dir);
        store
    }

    warren_core::storage_conformance_tests!(temp_store());

    #[test]
    fn a_snapshot_keeps_its_state_while_the_store_moves_on() {
        let mut s = temp_store();
        let mut b = Batch::new();
        b.put(b"k".to_vec(), b"1".to_vec());
        s.apply(b).unwrap();
        let snap = s.snapshot().unwrap();
        let mut b = Batch::new();
        b.put(b"k".to_vec(), b"2".to_vec());
        b.put(b"l".to_vec(), b"3".to_vec());
        s.apply(b).unwrap();
        assert_eq!(snap.get(b"k").unwrap(), Some(b"1".to_vec()));
        assert_eq!(snap.scan(&KeyRange::all(), false, 10).unwrap().len(), 1);
        assert_eq!(s.get(b"k").unwrap(), Some(b"2".to_vec()));
        // Readable from another thread.
        let t = std::thread::spawn(move || snap.get(b"l").unwrap());
        assert_eq!(t.join().unwrap(), None);
    }

    #[test]
    fn state_survives_reopen_after_sync() {
        let dir = std::env::temp_dir().join(format!("warren-redb-reopen-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("state.redb");
        {
            let mut s = RedbStore::open(&path, 100).unwrap();
            let mut b = Batch::new();
            b.put(b"k".to_vec(), b"v".to_vec());
            s.apply(b).unwrap();
            s.sync().unwrap();
        }
        let s = RedbStore::open(&path, 100).unwrap();
        assert_eq!(s.get(b"k").unwrap(), Some(b"v".to_vec()));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
