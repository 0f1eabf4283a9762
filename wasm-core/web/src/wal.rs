//! The IndexedDB backend's write-ahead records: a small flush is one record in the
//! `meta` object store instead of one request per key in `kv` (in Chromium each request
//! crosses to the storage process: a single insert's flush of about ten keys cost 2.4x a
//! flush of one record, measured). The records are applied to `kv` together, later, in
//! one transaction that also deletes them; a database opened with records left applies
//! them over `kv` in order. The format is in `docs/STORAGE.md`; the rules that keep it
//! right are in `idb.rs` (every record is newer than what `kv` holds for its keys).
//!
//! Pure: builds and is tested everywhere.

use std::collections::BTreeMap;

use warren_core::value::{write_varint, Reader};

/// Where the records live in `meta`: this prefix · the record's number (u64 BE).
pub const PREFIX: &[u8] = b"\xFFwal/";
/// The format byte each record starts with.
const FORMAT: u8 = 1;

/// Writes by key: `Some(value)` puts, `None` deletes.
pub type Writes = BTreeMap<Vec<u8>, Option<Vec<u8>>>;

/// The bytes of one write's key and value (what the records' bound counts).
pub fn write_bytes(k: &[u8], v: &Option<Vec<u8>>) -> usize {
    k.len() + v.as_ref().map_or(0, Vec::len)
}

/// The `meta` key of record `n` (keys of higher numbers sort after).
pub fn key(n: u64) -> Vec<u8> {
    let mut k = PREFIX.to_vec();
    k.extend_from_slice(&n.to_be_bytes());
    k
}

/// The number of a record from its `meta` key, in a log under `prefix` ([`PREFIX`] for
/// the write-ahead records; the own spaces' log has the same form).
pub fn number(prefix: &[u8], k: &[u8]) -> Option<u64> {
    let n = k.strip_prefix(prefix)?;
    Some(u64::from_be_bytes(n.try_into().ok()?))
}

/// One record holding `writes`.
pub fn encode(writes: &Writes) -> Vec<u8> {
    let size: usize = writes.iter().map(|(k, v)| write_bytes(k, v) + 12).sum();
    let mut out = Vec::with_capacity(size + 10);
    out.push(FORMAT);
    write_varint(&mut out, writes.len() as u64);
    for (k, v) in writes {
        write_varint(&mut out, k.len() as u64);
        out.extend_from_slice(k);
        match v {
            None => out.push(0),
            Some(v) => {
                out.push(1);
                write_varint(&mut out, v.len() as u64);
                out.extend_from_slice(v);
            }
        }
    }
    out
}

/// A record that is not one (written by something else, or damaged).
#[derive(Debug, PartialEq, Eq)]
pub struct BadRecord(pub String);

/// Applies a record's writes over `into` (a later record's write of a key wins).
pub fn decode_into(record: &[u8], into: &mut Writes) -> Result<(), BadRecord> {
    let bad = |e: warren_core::Error| BadRecord(e.message);
    let mut r = Reader::new(record);
    if r.byte().map_err(bad)? != FORMAT {
        return Err(BadRecord("unknown format".into()));
    }
    let n = r.varint().map_err(bad)?;
    for _ in 0..n {
        let klen = r.len().map_err(bad)?;
        let k = r.take(klen).map_err(bad)?.to_vec();
        let v = match r.byte().map_err(bad)? {
            0 => None,
            1 => {
                let vlen = r.len().map_err(bad)?;
                Some(r.take(vlen).map_err(bad)?.to_vec())
            }
            _ => return Err(BadRecord("a write is neither a put nor a delete".into())),
        };
        into.insert(k, v);
    }
    if r.pos != record.len() {
        return Err(BadRecord("bytes after the last write".into()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_and_later_writes_win() {
        let mut a = Writes::new();
        a.insert(b"Dk".to_vec(), Some(b"one".to_vec()));
        a.insert(b"Dgone".to_vec(), Some(vec![0; 300]));
        a.insert(Vec::new(), Some(Vec::new()));
        let mut b = Writes::new();
        b.insert(b"Dgone".to_vec(), None);
        b.insert(b"Dk".to_vec(), Some(b"two".to_vec()));
        let mut all = Writes::new();
        decode_into(&encode(&a), &mut all).unwrap();
        assert_eq!(all, a);
        decode_into(&encode(&b), &mut all).unwrap();
        assert_eq!(all.get(&b"Dk"[..]), Some(&Some(b"two".to_vec())));
        assert_eq!(all.get(&b"Dgone"[..]), Some(&None));
        assert_eq!(all.get(&b""[..]), Some(&Some(Vec::new())));
    }

    #[test]
    fn damaged_records_are_refused() {
        let mut w = Writes::new();
        w.insert(b"key".to_vec(), Some(b"value".to_vec()));
        let good = encode(&w);
        let mut out = Writes::new();
        for cut in 0..good.len() {
            assert!(decode_into(&good[..cut], &mut out).is_err(), "cut at {cut}");
        }
        let mut longer = good.clone();
        longer.push(0);
        assert!(decode_into(&longer, &mut out).is_err());
        let mut other = good.clone();
        other[0] = 2;
        assert!(decode_into(&other, &mut out).is_err());
        // A length past the end allocates nothing.
        assert!(decode_into(&[1, 1, 0xff, 0xff, 0xff, 0xff, 0x0f], &mut out).is_err());
    }

    #[test]
    fn keys_sort_by_number() {
        assert!(key(1) < key(2));
        assert!(key(255) < key(256));
        assert_eq!(number(PREFIX, &key(77)), Some(77));
        assert_eq!(number(PREFIX, b"\xFFfilter"), None);
    }
}
