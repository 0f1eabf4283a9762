//! The durable log: the trait's contract on both backends, the file format, and
//! recovery (torn tails are truncated, anything else refuses to open).

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use warren_server::log::{
    segment_file_name, FileLog, FileLogOptions, Log, LogError, MemoryLog, Recovery,
    DEFAULT_MAX_RECORD_SIZE, FORMAT_VERSION, FRAME_HEADER_LEN, HEADER_LEN, MAGIC,
};

// ---------------------------------------------------------------------------------
// Helpers

/// A directory under the system's temporary directory, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> TempDir {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let path =
            std::env::temp_dir().join(format!("warren-log-test-{}-{name}-{n}", std::process::id()));
        let _ = fs::remove_dir_all(&path);
        TempDir(path)
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// Record `i`: distinct, of varied lengths (10 to 100 bytes).
fn rec(i: u64) -> Vec<u8> {
    format!("record-{i:04}|")
        .repeat((i % 9 + 1) as usize)
        .into_bytes()
}

fn recs(range: std::ops::RangeInclusive<u64>) -> Vec<Vec<u8>> {
    range.map(rec).collect()
}

fn expected(range: std::ops::RangeInclusive<u64>) -> Vec<(u64, Vec<u8>)> {
    range.map(|i| (i, rec(i))).collect()
}

fn open(dir: &Path, options: &FileLogOptions) -> (FileLog, Recovery) {
    FileLog::open(dir, options.clone()).unwrap_or_else(|e| panic!("open failed: {e}"))
}

fn open_err(dir: &Path, options: &FileLogOptions) -> LogError {
    match FileLog::open(dir, options.clone()) {
        Ok((log, _)) => panic!(
            "open succeeded with {} records, expected an error",
            log.last_position()
        ),
        Err(e) => e,
    }
}

fn all(log: &impl Log) -> Vec<(u64, Vec<u8>)> {
    log.read(1, usize::MAX).unwrap()
}

fn code<T>(r: Result<T, LogError>) -> &'static str {
    match r {
        Ok(_) => panic!("expected an error"),
        Err(e) => e.code(),
    }
}

fn tiny_segments() -> FileLogOptions {
    FileLogOptions {
        segment_size: 200,
        ..FileLogOptions::default()
    }
}

/// The segment files of `dir`, in name order.
fn segment_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "wlog"))
        .collect();
    files.sort();
    files
}

fn last_segment(dir: &Path) -> PathBuf {
    segment_files(dir).pop().unwrap()
}

fn copy_dir(from: &Path, to: &Path) {
    fs::create_dir_all(to).unwrap();
    for e in fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        fs::copy(e.path(), to.join(e.file_name())).unwrap();
    }
}

fn flip_bit(path: &Path, offset: u64, bit: u8) {
    let mut bytes = fs::read(path).unwrap();
    bytes[offset as usize] ^= 1 << bit;
    fs::write(path, bytes).unwrap();
}

fn truncate(path: &Path, len: u64) {
    fs::OpenOptions::new()
        .write(true)
        .open(path)
        .unwrap()
        .set_len(len)
        .unwrap();
}

fn file_len(path: &Path) -> u64 {
    fs::metadata(path).unwrap().len()
}

fn frame_len(record: &[u8]) -> u64 {
    FRAME_HEADER_LEN + record.len() as u64
}

/// Every file of `dir` and its bytes, to check that a refused open changed nothing.
fn snapshot(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut files: Vec<(PathBuf, Vec<u8>)> = fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let p = e.unwrap().path();
            let bytes = fs::read(&p).unwrap();
            (p, bytes)
        })
        .collect();
    files.sort();
    files
}

fn header(first: u64, version: u32) -> Vec<u8> {
    let mut h = Vec::new();
    h.extend_from_slice(&MAGIC);
    h.extend_from_slice(&version.to_le_bytes());
    h.extend_from_slice(&first.to_le_bytes());
    let crc = crc32fast::hash(&h);
    h.extend_from_slice(&crc.to_le_bytes());
    h
}

// ---------------------------------------------------------------------------------
// The trait's contract, on both backends

fn contract(log: &mut dyn Log) {
    assert_eq!(log.last_position(), 0);
    assert!(log.read(1, 10).unwrap().is_empty());
    assert_eq!(log.append(&[]).unwrap(), 1, "an empty batch writes nothing");
    assert_eq!(log.last_position(), 0);

    assert_eq!(log.append(&recs(1..=3)).unwrap(), 1);
    assert_eq!(log.append(&recs(4..=4)).unwrap(), 4);
    assert_eq!(log.append(&[]).unwrap(), 5);
    assert_eq!(log.append(&recs(5..=9)).unwrap(), 5);
    assert_eq!(log.last_position(), 9);

    assert_eq!(log.read(1, usize::MAX).unwrap(), expected(1..=9));
    assert_eq!(
        log.read(0, 2).unwrap(),
        expected(1..=2),
        "from 0 reads from 1"
    );
    assert_eq!(log.read(3, 4).unwrap(), expected(3..=6));
    assert_eq!(log.read(8, 100).unwrap(), expected(8..=9));
    assert!(log.read(10, 100).unwrap().is_empty());
    assert!(log.read(u64::MAX, 100).unwrap().is_empty());
    assert!(log.read(1, 0).unwrap().is_empty());

    // A refused batch writes nothing, not even its valid records.
    let e = log.append(&[rec(10), Vec::new()]).unwrap_err();
    assert_eq!(e.code(), "LOG_RECORD_EMPTY");
    assert_eq!(log.last_position(), 9);
    assert_eq!(log.append(&recs(10..=10)).unwrap(), 10);
    assert_eq!(log.read(1, usize::MAX).unwrap(), expected(1..=10));
}

#[test]
fn memory_log_keeps_the_contract() {
    let mut log = MemoryLog::new();
    contract(&mut log);
    assert_eq!(log.records().len(), 10);

    let mut boxed: Box<dyn Log> = Box::new(MemoryLog::default());
    contract(&mut boxed);

    let mut small = MemoryLog::with_max_record_size(10);
    assert_eq!(code(small.append(&[vec![1; 11]])), "LOG_RECORD_TOO_LARGE");
    assert_eq!(small.append(&[vec![1; 10]]).unwrap(), 1);
}

#[test]
fn file_log_keeps_the_contract() {
    let dir = TempDir::new("contract");
    let (mut log, _) = open(dir.path(), &FileLogOptions::default());
    contract(&mut log);
    drop(log);
    let (log, recovery) = open(dir.path(), &FileLogOptions::default());
    assert_eq!(recovery.last_position, 10);
    assert_eq!(all(&log), expected(1..=10));

    let dir = TempDir::new("contract-tiny");
    let (mut log, _) = open(dir.path(), &tiny_segments());
    contract(&mut log);
    assert!(log.segment_first_positions().len() > 2);
}

// ---------------------------------------------------------------------------------
// Round trip, positions, rollover

#[test]
fn round_trip_and_positions_across_reopen() {
    let dir = TempDir::new("reopen");
    let options = FileLogOptions::default();
    let mut next = 1;
    for round in 0..5u64 {
        let (mut log, recovery) = open(dir.path(), &options);
        assert_eq!(
            recovery,
            Recovery {
                segments: if round == 0 { 0 } else { 1 },
                last_position: next - 1,
                truncated_bytes: 0,
                created: round == 0,
                removed_temp_files: 0,
            }
        );
        for size in [1, 3, 7] {
            let batch = recs(next..=next + size - 1);
            assert_eq!(log.append(&batch).unwrap(), next);
            next += size;
            assert_eq!(log.last_position(), next - 1);
        }
        assert_eq!(all(&log), expected(1..=next - 1));
    }
    let (log, _) = open(dir.path(), &options);
    assert_eq!(log.last_position(), 55);
    assert_eq!(all(&log), expected(1..=55));
    assert_eq!(segment_files(dir.path()).len(), 1);
}

#[test]
fn binary_records_round_trip() {
    let dir = TempDir::new("binary");
    let (mut log, _) = open(dir.path(), &FileLogOptions::default());
    let records: Vec<Vec<u8>> = vec![
        vec![0],
        vec![0; 1000],
        (0..=255u8).collect(),
        vec![0xff; 70_000],
    ];
    assert_eq!(log.append(&records).unwrap(), 1);
    drop(log);
    let (log, _) = open(dir.path(), &FileLogOptions::default());
    let got: Vec<Vec<u8>> = all(&log).into_iter().map(|(_, r)| r).collect();
    assert_eq!(got, records);
}

#[test]
fn segments_roll_over_and_reads_span_them() {
    let dir = TempDir::new("rollover");
    let options = tiny_segments();
    let (mut log, _) = open(dir.path(), &options);
    let mut next = 1;
    for size in [1u64, 2, 3, 1, 4, 2, 1, 5, 1, 1, 3] {
        assert_eq!(log.append(&recs(next..=next + size - 1)).unwrap(), next);
        next += size;
    }
    let last = next - 1;
    let firsts = log.segment_first_positions();
    assert!(firsts.len() >= 5, "{firsts:?}");
    assert_eq!(firsts[0], 1);

    // The files are named by their first position, zero-padded, and sort by name.
    let names: Vec<String> = segment_files(dir.path())
        .iter()
        .map(|p| p.file_name().unwrap().to_str().unwrap().to_string())
        .collect();
    let want: Vec<String> = firsts.iter().map(|&f| segment_file_name(f)).collect();
    assert_eq!(names, want);
    assert_eq!(names[0], "00000000000000000001.wlog");

    // A segment past the threshold holds at least one record; no batch is split, so
    // only a segment with a single batch may be larger than the threshold.
    for path in segment_files(dir.path()) {
        assert!(file_len(&path) > HEADER_LEN);
    }

    // Reads from every position, of every length, across segment boundaries.
    for from in 1..=last + 1 {
        for max in [1, 2, 3, 7, 100] {
            let got = log.read(from, max).unwrap();
            let to = (from + max as u64 - 1).min(last);
            let want = if from > last {
                Vec::new()
            } else {
                expected(from..=to)
            };
            assert_eq!(got, want, "read({from}, {max})");
        }
    }

    drop(log);
    let (mut log, recovery) = open(dir.path(), &options);
    assert_eq!(recovery.segments, firsts.len());
    assert_eq!(recovery.last_position, last);
    assert_eq!(log.segment_first_positions(), firsts);
    assert_eq!(log.append(&recs(last + 1..=last + 2)).unwrap(), last + 1);
    assert_eq!(all(&log), expected(1..=last + 2));
}

#[test]
fn reads_seek_through_large_segments() {
    // Records of 1000 bytes: several sparse-index entries per segment.
    let dir = TempDir::new("sparse");
    let options = FileLogOptions {
        segment_size: 300_000,
        ..FileLogOptions::default()
    };
    let big = |i: u64| {
        let mut r = vec![(i % 251) as u8; 1000];
        r[..8].copy_from_slice(&i.to_le_bytes());
        r
    };
    let (mut log, _) = open(dir.path(), &options);
    for b in 0..50u64 {
        let batch: Vec<Vec<u8>> = (b * 20 + 1..=b * 20 + 20).map(big).collect();
        assert_eq!(log.append(&batch).unwrap(), b * 20 + 1);
    }
    assert!(log.segment_first_positions().len() >= 3);
    let check = |log: &FileLog| {
        for from in (1..=1000).step_by(7).chain([64, 65, 66, 999, 1000]) {
            let got = log.read(from, 3).unwrap();
            let want: Vec<(u64, Vec<u8>)> =
                (from..=(from + 2).min(1000)).map(|i| (i, big(i))).collect();
            assert_eq!(got, want, "read({from}, 3)");
        }
    };
    check(&log);
    drop(log);
    let (log, _) = open(dir.path(), &options);
    check(&log);
}

// ---------------------------------------------------------------------------------
// Recovery: torn tails

/// Writes `batches`, then for every cut point in the last batch's bytes: copies the
/// directory, truncates the last segment there, reopens. The log must hold exactly the
/// records of the complete frames before the cut and continue at the next position.
fn torn_tail_at_every_offset(options: &FileLogOptions, batches: &[Vec<Vec<u8>>]) {
    let src = TempDir::new("torn-src");
    let (mut log, _) = open(src.path(), options);
    for b in batches {
        log.append(b).unwrap();
    }
    let written = all(&log);
    let last_batch = batches.last().unwrap();
    let before = log.last_position() - last_batch.len() as u64;
    drop(log);

    let segment_name = last_segment(src.path()).file_name().unwrap().to_owned();
    let end = file_len(&last_segment(src.path()));
    let start = end - last_batch.iter().map(|r| frame_len(r)).sum::<u64>();
    let mut frame_ends = Vec::new();
    let mut at = start;
    for r in last_batch {
        at += frame_len(r);
        frame_ends.push(at);
    }

    for cut in start..=end {
        let dst = TempDir::new("torn-cut");
        copy_dir(src.path(), dst.path());
        let seg = dst.path().join(&segment_name);
        truncate(&seg, cut);

        let complete = frame_ends.iter().filter(|&&e| e <= cut).count() as u64;
        let kept_end = if complete == 0 {
            start
        } else {
            frame_ends[complete as usize - 1]
        };
        let (mut log, recovery) = open(dst.path(), options);
        let want_last = before + complete;
        assert_eq!(recovery.last_position, want_last, "cut at {cut}");
        assert_eq!(recovery.truncated_bytes, cut - kept_end, "cut at {cut}");
        assert_eq!(file_len(&seg), kept_end, "cut at {cut}: truncated on disk");
        assert_eq!(log.last_position(), want_last);
        assert_eq!(all(&log), written[..want_last as usize], "cut at {cut}");

        assert_eq!(log.append(&[b"after".to_vec()]).unwrap(), want_last + 1);
        drop(log);
        let (log, recovery) = open(dst.path(), options);
        assert_eq!(recovery.truncated_bytes, 0);
        assert_eq!(recovery.last_position, want_last + 1);
        assert_eq!(
            log.read(want_last, 2).unwrap().last().unwrap(),
            &(want_last + 1, b"after".to_vec())
        );
    }
}

#[test]
fn torn_tail_at_every_offset_of_the_last_batch() {
    let batches = vec![recs(1..=3), recs(4..=4), recs(5..=9)];
    torn_tail_at_every_offset(&FileLogOptions::default(), &batches);
}

#[test]
fn torn_tail_at_every_offset_in_a_fresh_segment() {
    // With tiny segments the last batch starts a segment of its own: cutting at its
    // first frame leaves an empty last segment.
    let batches = vec![recs(1..=3), recs(4..=6), recs(7..=8)];
    torn_tail_at_every_offset(&tiny_segments(), &batches);
}

#[test]
fn torn_tail_of_the_first_batch() {
    torn_tail_at_every_offset(&FileLogOptions::default(), &[recs(1..=4)]);
}

#[test]
fn flipped_bit_in_the_last_record_is_a_torn_tail() {
    let dir = TempDir::new("flip-last");
    let options = FileLogOptions::default();
    let (mut log, _) = open(dir.path(), &options);
    log.append(&recs(1..=3)).unwrap();
    log.append(&recs(4..=6)).unwrap();
    drop(log);
    let seg = last_segment(dir.path());
    let len = file_len(&seg);
    flip_bit(&seg, len - 3, 5);

    let (mut log, recovery) = open(dir.path(), &options);
    assert_eq!(recovery.last_position, 5);
    assert_eq!(recovery.truncated_bytes, frame_len(&rec(6)));
    assert_eq!(all(&log), expected(1..=5));
    assert_eq!(log.append(&recs(6..=6)).unwrap(), 6);
    assert_eq!(all(&log), expected(1..=6));
}

#[test]
fn zeros_after_the_last_record_are_a_torn_tail() {
    // A file extended by a write whose data never reached the disk reads as zeros.
    let dir = TempDir::new("zeros");
    let options = FileLogOptions::default();
    let (mut log, _) = open(dir.path(), &options);
    log.append(&recs(1..=3)).unwrap();
    drop(log);
    let seg = last_segment(dir.path());
    let mut bytes = fs::read(&seg).unwrap();
    bytes.extend_from_slice(&[0; 100]);
    fs::write(&seg, bytes).unwrap();

    let (log, recovery) = open(dir.path(), &options);
    assert_eq!(recovery.truncated_bytes, 100);
    assert_eq!(all(&log), expected(1..=3));
}

#[test]
fn flipped_bit_before_valid_records_is_corruption() {
    let options = FileLogOptions::default();
    let src = TempDir::new("flip-early-src");
    let (mut log, _) = open(src.path(), &options);
    log.append(&recs(1..=3)).unwrap();
    log.append(&recs(4..=6)).unwrap();
    drop(log);
    let name = last_segment(src.path()).file_name().unwrap().to_owned();
    let frame1 = HEADER_LEN;
    let frame5 = HEADER_LEN + (1..=4).map(|i| frame_len(&rec(i))).sum::<u64>();

    // (offset, what) for every kind of damage followed by valid frames: in a payload,
    // in a checksum, in a length (making the frame longer or shorter), in the last
    // batch itself.
    let cases = [
        (frame1 + FRAME_HEADER_LEN + 2, 0, "payload of record 1"),
        (frame1 + 5, 3, "checksum of record 1"),
        (frame1, 4, "length of record 1 (longer)"),
        (frame1, 1, "length of record 1 (shorter)"),
        (frame1 + 3, 7, "length of record 1 (huge)"),
        (frame5 + FRAME_HEADER_LEN, 0, "payload of record 5"),
    ];
    for (offset, bit, what) in cases {
        let dir = TempDir::new("flip-early");
        copy_dir(src.path(), dir.path());
        let seg = dir.path().join(&name);
        flip_bit(&seg, offset, bit);
        let before = snapshot(dir.path());
        let e = open_err(dir.path(), &options);
        assert_eq!(e.code(), "LOG_CORRUPT", "{what}: {e}");
        assert_eq!(
            snapshot(dir.path()),
            before,
            "{what}: a refused open changes nothing"
        );
    }
}

#[test]
fn damage_in_an_earlier_segment_is_corruption() {
    let options = tiny_segments();
    let dir = TempDir::new("flip-segment");
    let (mut log, _) = open(dir.path(), &options);
    for b in 0..4u64 {
        log.append(&recs(b * 3 + 1..=b * 3 + 3)).unwrap();
    }
    drop(log);
    let first = &segment_files(dir.path())[0];
    // Its very last byte: at the end of the last segment this would be a torn tail.
    flip_bit(first, file_len(first) - 1, 0);
    assert_eq!(open_err(dir.path(), &options).code(), "LOG_CORRUPT");

    // A truncated earlier segment too.
    let dir = TempDir::new("cut-segment");
    let (mut log, _) = open(dir.path(), &options);
    for b in 0..4u64 {
        log.append(&recs(b * 3 + 1..=b * 3 + 3)).unwrap();
    }
    drop(log);
    let first = &segment_files(dir.path())[0];
    truncate(first, file_len(first) - 1);
    assert_eq!(open_err(dir.path(), &options).code(), "LOG_CORRUPT");
}

// ---------------------------------------------------------------------------------
// Recovery: headers, names, gaps

fn two_batches(dir: &Path, options: &FileLogOptions) {
    let (mut log, _) = open(dir, options);
    log.append(&recs(1..=3)).unwrap();
    log.append(&recs(4..=5)).unwrap();
}

#[test]
fn bad_headers_refuse_to_open() {
    let options = FileLogOptions::default();
    let seg_name = segment_file_name(1);

    // (damage, expected code)
    type Damage = fn(&Path);
    let cases: [(&str, Damage, &str); 6] = [
        ("magic", |p| flip_bit(p, 0, 1), "LOG_CORRUPT"),
        ("header checksum", |p| flip_bit(p, 21, 0), "LOG_CORRUPT"),
        ("first position", |p| flip_bit(p, 12, 2), "LOG_CORRUPT"),
        (
            "first position, checksum valid",
            |p| {
                let mut bytes = fs::read(p).unwrap();
                bytes[..HEADER_LEN as usize].copy_from_slice(&header(7, FORMAT_VERSION));
                fs::write(p, bytes).unwrap();
            },
            "LOG_CORRUPT",
        ),
        (
            "another version",
            |p| {
                let mut bytes = fs::read(p).unwrap();
                bytes[..HEADER_LEN as usize].copy_from_slice(&header(1, 2));
                fs::write(p, bytes).unwrap();
            },
            "LOG_VERSION",
        ),
        ("shorter than a header", |p| truncate(p, 10), "LOG_CORRUPT"),
    ];
    for (what, damage, want) in cases {
        let dir = TempDir::new("header");
        two_batches(dir.path(), &options);
        damage(&dir.path().join(&seg_name));
        let before = snapshot(dir.path());
        let e = open_err(dir.path(), &options);
        assert_eq!(e.code(), want, "{what}: {e}");
        assert!(e.to_string().starts_with(want), "{e}");
        assert_eq!(snapshot(dir.path()), before, "{what}");
    }
}

#[test]
fn missing_segments_refuse_to_open() {
    let options = tiny_segments();
    let make = |dir: &Path| {
        let (mut log, _) = open(dir, &options);
        for b in 0..4u64 {
            log.append(&recs(b * 3 + 1..=b * 3 + 3)).unwrap();
        }
        segment_files(dir)
    };

    let dir = TempDir::new("gap");
    let files = make(dir.path());
    assert!(files.len() >= 3);
    fs::remove_file(&files[1]).unwrap();
    let e = open_err(dir.path(), &options);
    assert_eq!(e.code(), "LOG_CORRUPT", "{e}");

    let dir = TempDir::new("no-first");
    let files = make(dir.path());
    fs::remove_file(&files[0]).unwrap();
    let e = open_err(dir.path(), &options);
    assert_eq!(e.code(), "LOG_CORRUPT", "{e}");

    let dir = TempDir::new("bad-name");
    make(dir.path());
    fs::write(dir.path().join("123.wlog"), header(123, FORMAT_VERSION)).unwrap();
    assert_eq!(open_err(dir.path(), &options).code(), "LOG_CORRUPT");
}

#[test]
fn leftovers_of_segment_creation_are_removed_and_other_files_ignored() {
    let dir = TempDir::new("leftovers");
    let options = FileLogOptions::default();
    two_batches(dir.path(), &options);
    let tmp = dir.path().join(format!("{}.tmp", segment_file_name(6)));
    fs::write(&tmp, &header(6, FORMAT_VERSION)[..10]).unwrap();
    fs::write(dir.path().join("README"), "not a segment").unwrap();

    let (log, recovery) = open(dir.path(), &options);
    assert_eq!(recovery.removed_temp_files, 1);
    assert_eq!(recovery.segments, 1);
    assert!(!tmp.exists());
    assert!(dir.path().join("README").exists());
    assert_eq!(all(&log), expected(1..=5));
}

// ---------------------------------------------------------------------------------
// Empty logs, limits, options, errors

#[test]
fn an_empty_directory_becomes_an_empty_log() {
    let dir = TempDir::new("empty");
    fs::create_dir_all(dir.path()).unwrap();
    let (log, recovery) = open(dir.path(), &FileLogOptions::default());
    assert_eq!(
        recovery,
        Recovery {
            segments: 0,
            last_position: 0,
            truncated_bytes: 0,
            created: true,
            removed_temp_files: 0,
        }
    );
    assert_eq!(log.last_position(), 0);
    assert!(all(&log).is_empty());
    let seg = dir.path().join("00000000000000000001.wlog");
    assert_eq!(fs::read(&seg).unwrap(), header(1, FORMAT_VERSION));
    drop(log);

    let (log, recovery) = open(dir.path(), &FileLogOptions::default());
    assert_eq!(recovery.segments, 1);
    assert!(!recovery.created);
    assert_eq!(log.last_position(), 0);

    // A missing directory is created, parents included.
    let nested = TempDir::new("nested");
    let (mut log, recovery) = open(&nested.path().join("a/b"), &FileLogOptions::default());
    assert!(recovery.created);
    assert_eq!(log.append(&recs(1..=1)).unwrap(), 1);
}

#[test]
fn records_over_the_limit_are_refused() {
    let dir = TempDir::new("limit");
    let options = FileLogOptions {
        max_record_size: 100,
        ..FileLogOptions::default()
    };
    let (mut log, _) = open(dir.path(), &options);
    let seg = last_segment(dir.path());
    let e = log.append(&[vec![1; 50], vec![2; 101]]).unwrap_err();
    assert_eq!(e.code(), "LOG_RECORD_TOO_LARGE");
    assert!(e.to_string().contains("101"), "{e}");
    assert_eq!(log.last_position(), 0);
    assert_eq!(
        file_len(&seg),
        HEADER_LEN,
        "nothing of the batch was written"
    );
    assert_eq!(log.append(&[vec![3; 100]]).unwrap(), 1);
    drop(log);

    // The limit binds appends only: a lower limit still reads what is written.
    let lower = FileLogOptions {
        max_record_size: 10,
        ..FileLogOptions::default()
    };
    let (log, recovery) = open(dir.path(), &lower);
    assert_eq!(recovery.truncated_bytes, 0);
    assert_eq!(all(&log), vec![(1, vec![3; 100])]);

    // The default limit is 16 MiB.
    let dir = TempDir::new("limit-default");
    let (mut log, _) = open(dir.path(), &FileLogOptions::default());
    assert_eq!(DEFAULT_MAX_RECORD_SIZE, 16 << 20);
    assert_eq!(
        code(log.append(&[vec![0; DEFAULT_MAX_RECORD_SIZE + 1]])),
        "LOG_RECORD_TOO_LARGE"
    );
    assert_eq!(code(log.append(&[Vec::new()])), "LOG_RECORD_EMPTY");
}

#[test]
fn invalid_options_and_io_errors() {
    let dir = TempDir::new("options");
    let e = open_err(
        dir.path(),
        &FileLogOptions {
            max_record_size: 0,
            ..FileLogOptions::default()
        },
    );
    assert_eq!(e.code(), "LOG_INVALID_OPTIONS");

    // A file where the directory should be.
    fs::create_dir_all(dir.path()).unwrap();
    let file = dir.path().join("not-a-dir");
    fs::write(&file, "x").unwrap();
    let e = open_err(&file, &FileLogOptions::default());
    assert_eq!(e.code(), "LOG_IO");
    assert!(e.io_kind().is_some());
    assert!(std::error::Error::source(&e).is_some());
    assert!(e.to_string().starts_with("LOG_IO: "), "{e}");
}

#[test]
fn the_bytes_are_as_documented() {
    let dir = TempDir::new("bytes");
    let (mut log, _) = open(dir.path(), &FileLogOptions::default());
    log.append(&[b"hello".to_vec(), b"log".to_vec()]).unwrap();
    drop(log);
    let bytes = fs::read(dir.path().join("00000000000000000001.wlog")).unwrap();

    let mut want = Vec::new();
    want.extend_from_slice(b"WARRNLOG");
    want.extend_from_slice(&[1, 0, 0, 0]); // format version 1
    want.extend_from_slice(&[1, 0, 0, 0, 0, 0, 0, 0]); // first position 1
    let header_crc = crc32fast::hash(&want);
    assert_eq!(header_crc, 0xAFBA_3B25);
    want.extend_from_slice(&header_crc.to_le_bytes());
    assert_eq!(want.len() as u64, HEADER_LEN);
    for payload in [&b"hello"[..], &b"log"[..]] {
        want.extend_from_slice(&(payload.len() as u32).to_le_bytes());
        want.extend_from_slice(&crc32fast::hash(payload).to_le_bytes());
        want.extend_from_slice(payload);
    }
    assert_eq!(bytes, want);
    // CRC-32 is the IEEE polynomial (zlib, PNG, Ethernet): check value of "123456789".
    assert_eq!(crc32fast::hash(b"123456789"), 0xCBF4_3926);
    assert_eq!(crc32fast::hash(b"hello"), 0x3610_A686);
    assert_eq!(crc32fast::hash(b"log"), 0x8F3F_68C5);
}
