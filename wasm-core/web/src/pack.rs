//! Byte arrays from JavaScript in one copy.
//!
//! A load from IndexedDB answers with arrays of thousands of keys (`ArrayBuffer`s) and
//! values (`Uint8Array`s). Taking each into WebAssembly on its own costs several calls
//! across the boundary and a JavaScript object per element: in a profile of a full scan
//! after a reopen (10,000 documents), a fifth of the load's time. [`unpack`] has a
//! small JavaScript function lay them all out in one buffer instead, which crosses
//! once.
//!
//! The buffer: for each element a little-endian `u32`, its length (`u32::MAX` for
//! `undefined`, an absent key), then the elements' bytes one after another.
//!
//! Memory: while a load is taken in, its bytes are held twice in WebAssembly (the
//! buffer, then each element's own copy) and once in JavaScript, for a moment; a load
//! is bounded by the cache's sizing (`idb.rs`: chunks and read-ahead), so this is too.

use js_sys::{Array, Uint8Array};
use wasm_bindgen::prelude::wasm_bindgen;

#[wasm_bindgen(inline_js = r#"
export function packBytes(items) {
  const n = items.length;
  const views = new Array(n);
  let total = 4 * n;
  for (let i = 0; i < n; i++) {
    const x = items[i];
    let v = null;
    if (x instanceof Uint8Array) v = x;
    else if (x instanceof ArrayBuffer) v = new Uint8Array(x);
    else if (ArrayBuffer.isView(x)) v = new Uint8Array(x.buffer, x.byteOffset, x.byteLength);
    else if (x !== undefined) v = new Uint8Array(x);
    views[i] = v;
    if (v !== null) total += v.byteLength;
  }
  const out = new Uint8Array(total);
  const lens = new DataView(out.buffer);
  let at = 4 * n;
  for (let i = 0; i < n; i++) {
    const v = views[i];
    if (v === null) {
      lens.setUint32(4 * i, 0xffffffff, true);
      continue;
    }
    lens.setUint32(4 * i, v.byteLength, true);
    out.set(v, at);
    at += v.byteLength;
  }
  return out;
}
export function packRecords(records) {
  const n = records.length;
  const items = new Array(2 * n);
  for (let i = 0; i < n; i++) {
    items[2 * i] = records[i].key;
    items[2 * i + 1] = records[i].value;
  }
  return packBytes(items);
}
"#)]
extern "C" {
    #[wasm_bindgen(js_name = packBytes)]
    fn pack_bytes(items: &Array) -> Uint8Array;
    #[wasm_bindgen(js_name = packRecords)]
    fn pack_records(records: &Array) -> Uint8Array;
}

/// The elements' bytes as laid out by `packBytes`.
fn split(buf: &[u8], n: usize) -> Vec<Option<Vec<u8>>> {
    let (lens, mut data) = buf.split_at(4 * n);
    lens.chunks_exact(4)
        .map(|l| {
            let len = u32::from_le_bytes([l[0], l[1], l[2], l[3]]);
            (len != u32::MAX).then(|| {
                let (v, rest) = data.split_at(len as usize);
                data = rest;
                v.to_vec()
            })
        })
        .collect()
}

/// The bytes of each element of `items` (`ArrayBuffer`s or typed arrays; anything
/// else as `new Uint8Array(x)` reads it), `None` for `undefined`.
pub fn unpack(items: &Array) -> Vec<Option<Vec<u8>>> {
    let n = items.length() as usize;
    if n == 0 {
        return Vec::new();
    }
    split(&pack_bytes(items).to_vec(), n)
}

/// Keys and values of a `getAllKeys` and a `getAll` of one range, paired (as many
/// as the shorter has).
pub fn entries(keys: &Array, values: &Array) -> Vec<(Vec<u8>, Vec<u8>)> {
    unpack(keys)
        .into_iter()
        .zip(unpack(values))
        .map(|(k, v)| (k.unwrap_or_default(), v.unwrap_or_default()))
        .collect()
}

/// The keys and values of a `getAllRecords` answer (`IDBRecord`s).
pub fn records(records: &Array) -> Vec<(Vec<u8>, Vec<u8>)> {
    let n = records.length() as usize;
    if n == 0 {
        return Vec::new();
    }
    let mut items = split(&pack_records(records).to_vec(), 2 * n).into_iter();
    let mut out = Vec::with_capacity(n);
    while let (Some(k), Some(v)) = (items.next(), items.next()) {
        out.push((k.unwrap_or_default(), v.unwrap_or_default()));
    }
    out
}
