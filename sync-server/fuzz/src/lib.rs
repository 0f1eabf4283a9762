//! What each fuzz target checks, as plain functions: the fuzz targets call them, and
//! `sync-server/tests/fuzz_regressions.rs` runs the kept inputs through them on stable
//! (it includes this file with `#[path]`, so it must not depend on libfuzzer).
//!
//! The decoders: decoding arbitrary bytes never panics, and what decodes is canonical:
//! encoding it again gives exactly the input (each frame, entry and value has one
//! encoding, as `docs/PROTOCOL.md` promises).
//!
//! The language: parsing arbitrary text never panics (`lang_parse`), and running a
//! program, generated from the input's bytes by the grammar of
//! `warren_core::testing::gen` or given as text, ends in a result or an error with its
//! code, never a panic (not even one the engine's last line of defence catches) and
//! never past its memory limit (`lang_exec`; `.ci/fuzz` also caps the process's
//! resident memory, so an allocation blow-up is a finding).
//!
//! Collaborative text: a Yjs update from a client never makes the engine or `yrs`
//! panic (`text_update`).

use warren_core::protocol::{in_version, ClientFrame, LogEntry, ServerFrame};

/// `ytext::check_update` then `ytext::apply`: a Yjs update a client sends to edit a
/// text field is checked by the engine's bounded reader and, if it passes, applied by
/// `yrs` to an empty text and to one holding "hi"; neither panics (`yrs` sees only
/// what the reader passed). `true` when the update was accepted on the empty text.
pub fn text_update(data: &[u8]) -> bool {
    use warren_core::ytext::{apply, check_update};
    use warren_core::Value;
    if check_update(data).is_err() {
        return false;
    }
    // Client 7 inserts "hi" at the start.
    let hi = [
        1, 1, 7, 0, 4, 1, 4, b't', b'e', b'x', b't', 2, b'h', b'i', 0,
    ];
    let base = apply(&Value::Null, &hi).expect("the base text applies");
    let _ = apply(&base, data);
    apply(&Value::Null, data).is_ok()
}

/// `ClientFrame::decode`: the server's decoder of everything a client sends.
pub fn client_frame(data: &[u8]) -> bool {
    match ClientFrame::decode(data) {
        Ok(f) => {
            // In the version it came in (this build writes the newest).
            assert_eq!(
                in_version(&f.encode(), data[0]),
                data,
                "a client frame that is not canonical: {f:?}"
            );
            true
        }
        Err(_) => false,
    }
}

/// `ServerFrame::decode_message`: the client's decoder of everything a server sends (a
/// frame, or a batch of them).
pub fn server_frame(data: &[u8]) -> bool {
    match ServerFrame::decode_message(data) {
        Ok(frames) => {
            let encoded: Vec<Vec<u8>> = frames
                .iter()
                .map(|f| in_version(&f.encode(), data[0]))
                .collect();
            let again = if ServerFrame::is_batch(data) {
                ServerFrame::batch(encoded.iter().map(Vec::as_slice))
            } else {
                encoded.concat()
            };
            assert_eq!(
                again, data,
                "a server message that is not canonical: {frames:?}"
            );
            true
        }
        Err(_) => false,
    }
}

/// `LogEntry::decode`: each record of the log (a commit or a schema change), and each
/// commit of a client's outbox.
pub fn log_entry(data: &[u8]) -> bool {
    match LogEntry::decode(data) {
        Ok(e) => {
            assert_eq!(e.encode(), data, "a log entry that is not canonical: {e:?}");
            true
        }
        Err(_) => false,
    }
}

/// `BatchRecord::decode`: each batch of the shared log of a deployment of many
/// regions, as etcd returns it.
pub fn batch_record(data: &[u8]) -> bool {
    use warren_server::log::shared::BatchRecord;
    match BatchRecord::decode(data) {
        Ok(r) => {
            assert_eq!(
                r.encode(),
                data,
                "a batch record that is not canonical: {r:?}"
            );
            for e in &r.entries {
                let _ = log_entry(e);
            }
            true
        }
        Err(_) => false,
    }
}

/// The log's segment file format and recovery (`FileLog::open`, then `read`): the
/// bytes are the first segment of a log. Opening either fails with a code or gives a
/// log whose records all read back, with their positions, and reopening it (after a
/// torn tail was cut) finds the same.
pub fn log_segment(data: &[u8]) -> bool {
    use warren_server::log::{segment_file_name, FileLog, FileLogOptions, Log};
    let dir = scratch_dir().join("log");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("a scratch directory");
    std::fs::write(dir.join(segment_file_name(1)), data).expect("write the segment");
    let Ok((log, recovery)) = FileLog::open(&dir, FileLogOptions::default()) else {
        return false;
    };
    let last = log.last_position();
    assert_eq!(recovery.last_position, last);
    let records = log.read(1, usize::MAX).expect("a recovered log reads back");
    assert_eq!(records.len() as u64, last);
    for (i, (pos, record)) in records.iter().enumerate() {
        assert_eq!(*pos, i as u64 + 1);
        assert!(!record.is_empty());
        let _ = log_entry(record);
    }
    drop(log);
    let (again, recovery) = FileLog::open(&dir, FileLogOptions::default()).expect("reopens");
    assert_eq!((again.last_position(), recovery.truncated_bytes), (last, 0));
    true
}

/// A directory of this thread's own, in memory when the system has one.
fn scratch_dir() -> std::path::PathBuf {
    let shm = std::path::Path::new("/dev/shm");
    let base = if shm.is_dir() {
        shm.to_path_buf()
    } else {
        std::env::temp_dir()
    };
    let thread = format!("{:?}", std::thread::current().id());
    let thread: String = thread.chars().filter(char::is_ascii_digit).collect();
    base.join(format!("warren-fuzz-{}-{thread}", std::process::id()))
}

/// The language's parsers on arbitrary text: `true` when it parses as a block.
pub fn lang_parse(data: &[u8]) -> bool {
    let Ok(src) = std::str::from_utf8(data) else {
        return false;
    };
    let _ = warren_core::lang::parse_expr(src);
    let _ = warren_core::Schema::parse(src);
    warren_core::lang::parse_block(src).is_ok()
}

/// A program run as a query and as a commit against the generator's store. Input that
/// starts with `#` is the program's text; any other is the choices the generator makes.
/// `true` when the commit committed.
pub fn lang_exec(data: &[u8]) -> bool {
    use std::sync::OnceLock;
    use warren_core::exec::{execute_metered, query_metered, Commit, Executor, Op, Outcome};
    use warren_core::storage::MemoryStore;
    use warren_core::testing::gen;
    use warren_core::ErrorCode;

    static STORE: OnceLock<Executor<MemoryStore>> = OnceLock::new();
    let db = STORE.get_or_init(gen::store);
    let limits = db.limits();
    let (source, user) = match data.split_first() {
        Some((b'#', text)) => (String::from_utf8_lossy(text).into_owned(), 0),
        _ => {
            let p = gen::program(&mut gen::Bytes::new(data));
            assert!(
                warren_core::lang::parse_block(&p.source).is_ok(),
                "the generator wrote a program that does not parse:\n{}",
                p.source
            );
            (p.source, p.user)
        }
    };
    let auth = gen::auth(user);
    let (_, usage) = query_metered(db.store(), db.schema(), &source, &auth, 0, limits);
    assert!(usage.memory <= limits.max_memory_bytes, "{usage:?}");
    let commit = Commit {
        client_id: "fuzz".into(),
        client_seq: 1,
        schema_version: String::new(),
        timestamp: 1_700_000_000_000,
        auth,
        op: Op::Run { source },
    };
    let position = db.position().expect("a memory store") + 1;
    let (outcome, usage) = execute_metered(db.store(), db.schema(), &commit, position, limits)
        .expect("a memory store does not fail");
    assert!(usage.memory <= limits.max_memory_bytes, "{usage:?}");
    match outcome {
        Outcome::Rejected {
            code: ErrorCode::Internal,
            ..
        } => panic!("the engine panicked (caught by exec): run the input natively to see where"),
        Outcome::Committed { .. } => true,
        _ => false,
    }
}
