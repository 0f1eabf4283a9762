//! Stored documents and the key-value writes that follow from a document write.
//!
//! [`doc_ops`] is the one place that turns "document X goes from `old` to `new`" into
//! key-value writes (the document, its index entries, its partition membership). The
//! executor uses it while a transaction runs and replicas use it when they apply
//! recorded effects, so both produce exactly the same keys.

use crate::error::{Error, ErrorCode};
use crate::keys;
use crate::schema::Collection;
use crate::storage::BatchOp;
use crate::value::{write_varint, Reader, Value};

/// A document as stored under its key.
#[derive(Clone, Debug, PartialEq)]
pub struct StoredDoc {
    pub partition: String,
    /// The log position of the document's last write.
    pub version: u64,
    /// The document's fields (an object, without `id`).
    pub data: Value,
}

/// Format version of [`StoredDoc`] bytes, the first byte of every stored document.
const DOC_FORMAT: u8 = 1;

impl StoredDoc {
    /// Bytes: format (1) · version (varint) · partition (varint length, UTF-8) · data
    /// (canonical value encoding).
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(16 + self.partition.len() + self.data.encoded_len());
        out.push(DOC_FORMAT);
        write_varint(&mut out, self.version);
        write_varint(&mut out, self.partition.len() as u64);
        out.extend_from_slice(self.partition.as_bytes());
        self.data.encode_into(&mut out);
        out
    }

    pub fn decode(bytes: &[u8]) -> Result<StoredDoc, Error> {
        Self::decode_within(bytes, u64::MAX).map(|(d, _)| d)
    }

    /// Decodes within a memory budget: the document and the memory cost of its fields
    /// (`Value::mem_cost`), counted before each allocation; `MEMORY_EXHAUSTED` past the
    /// budget.
    pub fn decode_within(bytes: &[u8], budget: u64) -> Result<(StoredDoc, u64), Error> {
        let mut r = Reader::with_budget(bytes, budget);
        let (version, partition) = header(&mut r)?;
        let data = r.value_paid()?;
        if r.pos != bytes.len() {
            return Err(Error::new(
                ErrorCode::Corrupt,
                "trailing bytes after document",
            ));
        }
        let cost = r.spent();
        Ok((
            StoredDoc {
                partition: partition.to_owned(),
                version,
                data,
            },
            cost,
        ))
    }

    /// The partition of stored document bytes, read without decoding the fields: a
    /// scan checks the read rule before it decodes (or pays for) anything more.
    pub fn partition_of(bytes: &[u8]) -> Result<&str, Error> {
        header(&mut Reader::new(bytes)).map(|(_, p)| p)
    }
}

/// The format byte, the version and the partition.
fn header<'b>(r: &mut Reader<'b>) -> Result<(u64, &'b str), Error> {
    if r.byte()? != DOC_FORMAT {
        return Err(Error::new(
            ErrorCode::Corrupt,
            "unknown stored document format",
        ));
    }
    let version = r.varint()?;
    let n = r.len()?;
    let partition = std::str::from_utf8(r.take(n)?)
        .map_err(|_| Error::new(ErrorCode::Corrupt, "partition is not UTF-8"))?;
    Ok((version, partition))
}

/// The value at a field path (`Null` when any step is missing).
pub fn field_at<'v>(data: &'v Value, path: &[String]) -> &'v Value {
    path.iter().fold(data, |v, k| v.get(k))
}

/// The values an index holds for a document.
pub fn index_values(data: &Value, fields: &[Vec<String>]) -> Vec<Value> {
    fields.iter().map(|f| field_at(data, f).clone()).collect()
}

/// The key-value writes that take document `id` of `coll` from `old` to `new` (either
/// may be absent). Index entries and partition membership that do not change are not
/// rewritten.
pub fn doc_ops(
    coll: &Collection,
    id: &str,
    old: Option<&StoredDoc>,
    new: Option<&StoredDoc>,
) -> Vec<BatchOp> {
    let mut ops = Vec::new();
    let dk = keys::doc_key(&coll.name, id);
    ops.push((dk, new.map(StoredDoc::encode)));
    // Index entries hold the document's partition, so a scan can check the read rule
    // without fetching the document.
    let partition_changed = old.map(|d| &d.partition) != new.map(|d| &d.partition);
    for (name, ix) in &coll.indexes {
        let ok =
            old.map(|d| keys::index_key(&coll.name, name, &index_values(&d.data, &ix.fields), id));
        let nk =
            new.map(|d| keys::index_key(&coll.name, name, &index_values(&d.data, &ix.fields), id));
        if ok == nk && !partition_changed {
            continue;
        }
        if let Some(k) = ok {
            ops.push((k, None));
        }
        if let (Some(k), Some(d)) = (nk, new) {
            ops.push((k, Some(d.partition.as_bytes().to_vec())));
        }
    }
    let op = old.map(|d| d.partition.as_str());
    let np = new.map(|d| d.partition.as_str());
    if op != np {
        if let Some(p) = op {
            ops.push((keys::partition_key(p, &coll.name, id), None));
        }
        if let Some(p) = np {
            ops.push((keys::partition_key(p, &coll.name, id), Some(Vec::new())));
        }
    }
    ops
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::value::obj;

    #[test]
    fn stored_doc_round_trip() {
        let d = StoredDoc {
            partition: "user:a".into(),
            version: 300,
            data: obj([("x", Value::Int(1))]),
        };
        assert_eq!(StoredDoc::decode(&d.encode()).unwrap(), d);
        let mut bad = d.encode();
        bad[0] = 9;
        assert_eq!(
            StoredDoc::decode(&bad).unwrap_err().code,
            ErrorCode::Corrupt
        );
    }
}
