//! A region's store as one stream: what a new region (or one behind the shared log's
//! compaction) boots from. Byte format in `docs/REGIONS.md` ("The snapshot stream").
//!
//! ```text
//! magic "WARRNSNP" · u32 LE format (1) · varint header length · header (JSON)
//! · entries: varint key length (≥ 1) · key · varint value length · value, in key order
//! · varint 0 (the end) · 32 bytes: SHA-256 of every byte before them
//! ```
//!
//! The header repeats what the store itself holds (position, digest, revision) so a
//! reader can check them against the data. A snapshot is taken on the region thread
//! between two batches (a redb read transaction: consistent, and later writes do not
//! touch it) and streamed by a worker thread.

use std::io::Read;
use std::path::Path;

use sha2::{Digest, Sha256};
use warren_core::storage::{Batch, KeyRange, Storage};
use warren_core::value::write_varint;
use warren_core::{exec, Error, ErrorCode};

use crate::region::{stored_revision, SnapshotSource};
use crate::store::RedbStore;

pub const MAGIC: &[u8; 8] = b"WARRNSNP";
pub const FORMAT: u32 = 1;

/// The header of a snapshot.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Header {
    pub region: String,
    pub position: u64,
    pub digest: [u8; 32],
    pub revision: i64,
}

/// Streams `source` as chunks of about `chunk` bytes to `send` (which returns false
/// when the reader went away).
pub fn write(
    source: SnapshotSource,
    region: &str,
    chunk: usize,
    mut send: impl FnMut(Vec<u8>) -> bool,
) -> Result<(), Error> {
    let mut hash = Sha256::new();
    let mut buf = Vec::with_capacity(chunk + 4096);
    buf.extend_from_slice(MAGIC);
    buf.extend_from_slice(&FORMAT.to_le_bytes());
    let header = serde_json::json!({
        "region": region,
        "position": source.position,
        "digest": warren_core::hex(&source.digest),
        "revision": source.revision,
    })
    .to_string();
    write_varint(&mut buf, header.len() as u64);
    buf.extend_from_slice(header.as_bytes());
    let mut range = KeyRange::all();
    loop {
        let page = source.view.scan(&range, false, 512)?;
        let Some((last, _)) = page.last() else {
            break;
        };
        range = range.after(last);
        for (k, v) in &page {
            write_varint(&mut buf, k.len() as u64);
            buf.extend_from_slice(k);
            write_varint(&mut buf, v.len() as u64);
            buf.extend_from_slice(v);
        }
        if buf.len() >= chunk {
            hash.update(&buf);
            if !send(std::mem::take(&mut buf)) {
                return Ok(());
            }
        }
    }
    write_varint(&mut buf, 0);
    hash.update(&buf);
    buf.extend_from_slice(&hash.finalize());
    send(buf);
    Ok(())
}

fn bad(m: impl Into<String>) -> Error {
    Error::new(ErrorCode::Corrupt, format!("snapshot: {}", m.into()))
}

/// Reads a snapshot stream into a new store at `path` (which must not exist): every
/// entry is written, the hash and the header are checked against the data, and the
/// store is synced. On any failure the partial file is removed.
pub fn install(mut input: impl Read, path: &Path, max_entry: usize) -> Result<Header, Error> {
    let tmp = path.with_extension("boot");
    let _ = std::fs::remove_file(&tmp);
    let r = (|| {
        let mut hashed = HashingReader {
            inner: &mut input,
            hash: Sha256::new(),
        };
        let mut magic = [0u8; 12];
        hashed
            .read_exact(&mut magic)
            .map_err(|e| bad(format!("reading: {e}")))?;
        if &magic[..8] != MAGIC {
            return Err(bad("not a Warren snapshot (bad magic)"));
        }
        let format = u32::from_le_bytes(magic[8..].try_into().expect("4 bytes"));
        if format != FORMAT {
            return Err(bad(format!(
                "format {format}; this build reads format {FORMAT}"
            )));
        }
        let n = read_varint(&mut hashed)? as usize;
        if n > 64 * 1024 {
            return Err(bad("the header is too large"));
        }
        let mut h = vec![0u8; n];
        hashed
            .read_exact(&mut h)
            .map_err(|e| bad(format!("reading: {e}")))?;
        let v: serde_json::Value =
            serde_json::from_slice(&h).map_err(|e| bad(format!("the header: {e}")))?;
        let digest_hex = v["digest"].as_str().unwrap_or("");
        let header = Header {
            region: v["region"].as_str().unwrap_or("").to_owned(),
            position: v["position"].as_u64().unwrap_or(0),
            digest: crate::log::shared::parse_digest(digest_hex).map_err(bad)?,
            revision: v["revision"].as_i64().unwrap_or(0),
        };
        let mut store = RedbStore::open(&tmp, u32::MAX)?;
        let mut batch = Batch::new();
        let mut bytes = 0usize;
        loop {
            let klen = read_varint(&mut hashed)? as usize;
            if klen == 0 {
                break;
            }
            if klen > max_entry {
                return Err(bad("a key is too large"));
            }
            let mut k = vec![0u8; klen];
            hashed
                .read_exact(&mut k)
                .map_err(|e| bad(format!("reading: {e}")))?;
            let vlen = read_varint(&mut hashed)? as usize;
            if vlen > max_entry {
                return Err(bad("a value is too large"));
            }
            let mut val = vec![0u8; vlen];
            hashed
                .read_exact(&mut val)
                .map_err(|e| bad(format!("reading: {e}")))?;
            bytes += klen + vlen;
            batch.put(k, val);
            if bytes >= 4 << 20 {
                store.apply(std::mem::take(&mut batch))?;
                bytes = 0;
            }
        }
        let want: [u8; 32] = hashed.hash.clone().finalize().into();
        let mut got = [0u8; 32];
        input
            .read_exact(&mut got)
            .map_err(|e| bad(format!("reading the hash: {e}")))?;
        if got != want {
            return Err(bad("the stream's hash does not match: it was damaged"));
        }
        let mut extra = [0u8; 1];
        if input.read(&mut extra).unwrap_or(0) != 0 {
            return Err(bad("bytes after the hash"));
        }
        store.apply(batch)?;
        store.sync()?;
        if exec::position(&store)? != header.position
            || exec::digest(&store)? != header.digest
            || stored_revision(&store)? != header.revision
        {
            return Err(bad(
                "the data's position, digest or revision is not the header's",
            ));
        }
        drop(store);
        Ok(header)
    })();
    match r {
        Ok(h) => {
            std::fs::rename(&tmp, path).map_err(|e| bad(format!("renaming: {e}")))?;
            if let Some(dir) = path.parent() {
                if let Ok(d) = std::fs::File::open(dir) {
                    let _ = d.sync_all();
                }
            }
            Ok(h)
        }
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            Err(e)
        }
    }
}

struct HashingReader<'a, R: Read> {
    inner: &'a mut R,
    hash: Sha256,
}

impl<R: Read> Read for HashingReader<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hash.update(&buf[..n]);
        Ok(n)
    }
}

fn read_varint(r: &mut impl Read) -> Result<u64, Error> {
    let mut v: u64 = 0;
    for shift in (0..64).step_by(7) {
        let mut b = [0u8; 1];
        r.read_exact(&mut b)
            .map_err(|e| bad(format!("reading: {e}")))?;
        v |= u64::from(b[0] & 0x7f) << shift;
        if b[0] & 0x80 == 0 {
            return Ok(v);
        }
    }
    Err(bad("a varint is too long"))
}

/// Fetches a snapshot from another region's `/v1/admin/snapshot` (with its admin
/// token) and installs it at `path`.
pub fn fetch(url: &str, token: Option<&str>, path: &Path) -> Result<Header, Error> {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_connect(Some(std::time::Duration::from_secs(5)))
        .timeout_per_read(Some(std::time::Duration::from_secs(30)))
        .build()
        .into();
    let mut req = agent.get(url);
    if let Some(t) = token {
        req = req.header("authorization", format!("Bearer {t}"));
    }
    let resp = req
        .call()
        .map_err(|e| bad(format!("fetching {url}: {e}")))?;
    let status = resp.status().as_u16();
    if status != 200 {
        let mut body = String::new();
        let _ = resp
            .into_body()
            .into_reader()
            .take(2000)
            .read_to_string(&mut body);
        return Err(bad(format!("{url} answered {status}: {body}")));
    }
    install(resp.into_body().into_reader(), path, 64 << 20)
}

#[cfg(test)]
mod tests {
    use super::*;
    use warren_core::storage::Storage;

    #[test]
    fn a_snapshot_installs_the_same_store_and_damage_is_refused() {
        let dir = std::env::temp_dir().join(format!("warren-snap-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let mut src = RedbStore::open(&dir.join("src.redb"), 1).unwrap();
        let mut b = Batch::new();
        for i in 0..2000u32 {
            b.put(format!("D{i:05}").into_bytes(), vec![i as u8; 100]);
        }
        b.put(
            warren_core::keys::META_POSITION.to_vec(),
            7u64.to_be_bytes().to_vec(),
        );
        b.put(warren_core::keys::META_DIGEST.to_vec(), vec![3; 32]);
        b.put(
            crate::region::META_REVISION.to_vec(),
            42u64.to_be_bytes().to_vec(),
        );
        src.apply(b).unwrap();
        let source = SnapshotSource {
            view: src.snapshot().unwrap(),
            position: 7,
            digest: [3; 32],
            revision: 42,
        };
        let mut bytes = Vec::new();
        write(source, "eu", 4096, |c| {
            bytes.extend(c);
            true
        })
        .unwrap();
        let h = install(&bytes[..], &dir.join("a.redb"), 1 << 20).unwrap();
        assert_eq!((h.position, h.revision, h.region.as_str()), (7, 42, "eu"));
        let a = RedbStore::open(&dir.join("a.redb"), 1).unwrap();
        let all = |s: &dyn Storage| {
            s.scan(&warren_core::storage::KeyRange::all(), false, 10_000)
                .unwrap()
        };
        assert_eq!(all(&a), all(&src));
        // One flipped byte anywhere is refused, and leaves no file behind.
        for at in [20, bytes.len() / 2, bytes.len() - 1] {
            let mut bad = bytes.clone();
            bad[at] ^= 1;
            let p = dir.join(format!("bad{at}.redb"));
            assert!(install(&bad[..], &p, 1 << 20).is_err(), "flip at {at}");
            assert!(!p.exists() && !p.with_extension("boot").exists());
        }
        assert!(install(&bytes[..bytes.len() - 10], &dir.join("short.redb"), 1 << 20).is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
