// What IndexedDB itself costs for several ways of laying out the same documents, with no
// engine: the floor under any design of the browser's storage. Headless Chromium, an
// on-disk profile, one page per measurement after a reopen (a fresh page and a fresh
// `open()`), medians. docs/BENCHMARKS.md ("What the storage layout costs") reads it.
//
//   node tests/bench-browser/layouts.mjs [--runs 5] [--n 10000] [--import-n N] [--variants a,b,c] [--block-kib 32]
//
// The layouts, for documents of ~150 bytes owned by one of 50 owners:
// - records: today's (docs/STORAGE.md): a document is three records, its document
//   (`D` key), its index entry (`I`) and its partition membership (`P`), binary keys
//   and `Uint8Array` values; a range is read as getAllKeys + getAll.
// - packed: one record per document under its `D` key, `{k, v, x: [I key, P key], y}`,
//   with a multiEntry IndexedDB index on `x`.
// - objects: Dexie's: one object per document keyed by id, an index on [owner, created].
// - blocks: the `records` layout's entries, sorted, packed into 32 KiB blocks keyed by
//   their first key (as a B-tree's leaves or an LSM's sorted runs would be). --block-kib
//   sets that size, for this layout and the import's blocks and lsm variants (every
//   "32 KiB" and "16 KiB" below scales with it).
// And, for today's layout, two ways to read a range (where the browser has
// getAllRecords): all the documents, and the last 50 reversed.
//
// And an import as the package's `bulk` sends one: --import-n documents (default N) in
// chunks of 1,000, a readwrite transaction each, each awaited, into an empty database of
// its own, with sequential ids (`D` keys append at one end, `I` and `P` keys at one point
// per owner) or random ones (a bijective hash of the number, as long: `D` and `P` keys
// land anywhere; `I` keys still append, since they sort by owner and creation). The
// variants (--variants picks some; default all): records-seq, objects-seq, blocks-seq,
// blocks-rnd, records-rnd, blocks-app-seq, blocks-app-rnd, lsm-seq, lsm-rnd, packed-rnd.
// - blocks: each chunk merges its sorted entries into the blocks they land in (the store
//   starts empty: the first chunk packs full blocks, the first keyed by an empty key, so
//   every key has a block; the block first keys are kept in memory, as read at open):
//   it reads those blocks in the transaction, merges, and splits a block past 32 KiB into
//   parts of about 16 KiB (the first keeps its key, the others are keyed by their first
//   key), then puts them back.
// - blocks-app: the same, but a block past 32 KiB whose new entries all sort after its
//   last old one (an append) is packed into full blocks instead (the first keeps its key).
//   Here it nearly never fires: the block a range's new entries append to also holds the
//   next range's first entries (the last `D` block the first `I` ones, an owner's last
//   `I` or `P` block the next owner's first), so they land before its last old entry.
// - lsm: each chunk's sorted entries are written as a new immutable run of full blocks,
//   nothing read; a block's key is its run's number (4 bytes, big-endian, increasing) then
//   its first key. The runs and their blocks' first keys are kept in memory (read at open
//   with one getAllKeys), and their sizes. Size-tiered compaction, after each chunk: while
//   4 runs are of one size class (floor(log2(bytes)): within a factor of 2), the oldest 4
//   of such a class (the class with the oldest run) are read, merged (the newer wins on an
//   equal key) and written as a new run, their blocks deleted (a range each), in a
//   readwrite transaction of its own, awaited, timed as part of the import. Each run has a
//   Bloom filter over all its keys (~10 bits a key, 7 probes), a Uint8Array under the run's
//   number in a store `filters`, put in the run's transaction (a compaction deletes the 4
//   runs' and puts the new one's); built and written in the import's time, its puts and
//   bytes counted apart.
// - packed: a record per document as above, put in the chunk's transaction.
// Counted: the puts and their bytes (keys + values), against the entries' own bytes
// (objects: a JSON estimate of their size; packed: the record's keys and values). After a
// reopen every entry is read back and checked (blocks: sorted across blocks, each keyed by
// its first key, none past 32 KiB + an entry; lsm: the same within each run, then the runs
// merged, N each of D, I and P, and a filter a run that holds every key of it; packed: N
// records, N I and N P keys in the index). After another, one owner's documents are read
// (blocks: the first keys, then in one transaction the blocks covering its index range,
// then those holding its documents: with owners dealt round-robin, nearly every `D` block;
// lsm: the same in every run, each document looked for in every run that may hold it, as
// without a per-run filter; packed: its index).
// After another, every document (records: keys and values of the D range; blocks and lsm:
// every block decoded, lsm's runs merged; packed and objects: every record). After
// another, 50 documents scattered by id, as an app's cold start reads the first results of
// an index query: those numbered i * floor(N / 50), i < 50 (over the whole id range,
// sequential or random), in one readonly transaction, every request issued before any is
// awaited, each value checked (records and packed: a get per D key; objects: per id;
// blocks: the first keys, then the blocks holding them, deduplicated; lsm: the fence
// pointers, then each document's block in every run that may hold it, deduplicated, the
// newest run's value taken). For lsm, also after a reopen (the two in turns), the same with
// the runs' filters: read with the fence pointers (one getAll), a run's block read only
// where its filter says maybe; the blocks read, their bytes and the false positives reported.
//
// Needs Debian's Chromium and playwright-core (.ci/setup-browser). Every count is
// checked: a layout that loses or invents a document stops the benchmark.
import { createServer } from "node:http";
import { profile, tempDir } from "../browser/harness.mjs";

const args = process.argv.slice(2);
const opt = (name, dflt) => (args.includes(name) ? Number(args[args.indexOf(name) + 1]) : dflt);
const RUNS = opt("--runs", 5);
const N = opt("--n", 10_000);
const IMPORT_N = opt("--import-n", N);
const BLOCK_KIB = opt("--block-kib", 32);
const SINGLES = 300;
/** The import's variants (--variants a,b,c: some of them; default all). */
const IMPORTS = {
  "records-seq": "records, sequential ids", "objects-seq": "objects (Dexie's), sequential ids",
  "blocks-seq": "blocks, sequential ids", "blocks-rnd": "blocks, random ids", "records-rnd": "records, random ids",
  "blocks-app-seq": "blocks, append-aware split, sequential ids", "blocks-app-rnd": "blocks, append-aware split, random ids",
  "lsm-seq": "LSM runs, size-tiered, sequential ids", "lsm-rnd": "LSM runs, size-tiered, random ids", "packed-rnd": "packed, random ids",
};
const VARIANTS = args.includes("--variants") ? args[args.indexOf("--variants") + 1].split(",") : Object.keys(IMPORTS);
for (const v of VARIANTS) if (!(v in IMPORTS)) throw new Error(`--variants: no variant ${v} (${Object.keys(IMPORTS).join(", ")})`);

const page = `<!doctype html><meta charset="utf-8"><script>
const N = ${N}, OWNERS = 50, BLOCK = ${BLOCK_KIB * 1024}, SINGLES = ${SINGLES}, IMPORT_N = ${IMPORT_N}, CHUNK = 1000;
const te = new TextEncoder();
const cat = (...a) => { let n = 0; for (const x of a) n += x.length; const o = new Uint8Array(n); let i = 0; for (const x of a) { o.set(x, i); i += x.length; } return o; };
const str = (s) => cat(te.encode(s), new Uint8Array([0]));
const id = (i) => "doc-" + String(i).padStart(7, "0");
/** A random-looking id as long as id's: 28 bits of i through a bijective hash (xorshifts and odd multipliers mod 2^28). */
const rid = (i) => { let x = i; x = Math.imul(x ^ (x >>> 15), 0x2c1b3c6d) & 0xfffffff; x = Math.imul(x ^ (x >>> 12), 0x297a2d39) & 0xfffffff; return "doc-" + (x ^ (x >>> 15)).toString(16).padStart(7, "0"); };
const owner = (i) => "u:" + String(i % OWNERS).padStart(2, "0");
const dKey = (i, f = id) => cat(new Uint8Array([0x44]), str("Doc"), str(f(i)));
const iPrefix = (o) => cat(new Uint8Array([0x49]), str("Doc"), str("byOwner"), new Uint8Array([5]), str(o));
const iKey = (i, f = id) => cat(iPrefix(owner(i)), new Uint8Array([3]), te.encode(String(1e12 + i)), str(f(i)));
const pKey = (i, f = id) => cat(new Uint8Array([0x50]), str(owner(i)), str("Doc"), str(f(i)));
const body = (i) => { const v = new Uint8Array(150); for (let j = 0; j < 150; j++) v[j] = (i * 7 + j) & 255; return v; };
const upTo = (p) => cat(p, new Uint8Array([255]));
const cmp = (a, b) => { const n = Math.min(a.length, b.length); for (let i = 0; i < n; i++) if (a[i] !== b[i]) return a[i] - b[i]; return a.length - b.length; };
const open = () => new Promise((res, rej) => {
  const r = indexedDB.open("layouts", 1);
  r.onupgradeneeded = () => {
    const d = r.result;
    d.createObjectStore("records");
    d.createObjectStore("packed").createIndex("x", "x", { multiEntry: true });
    d.createObjectStore("objects", { keyPath: "id" }).createIndex("oc", ["owner", "created"]);
    d.createObjectStore("blocks");
  };
  r.onsuccess = () => res(r.result);
  r.onerror = () => rej(r.error);
});
const done = (tx) => new Promise((res, rej) => { tx.oncomplete = res; tx.onabort = () => rej(tx.error); });
const req = (r) => new Promise((res, rej) => { r.onsuccess = () => res(r.result); r.onerror = () => rej(r.error); });
const entries = (i, f = id) => [[dKey(i, f), body(i)], [iKey(i, f), te.encode(owner(i))], [pKey(i, f), new Uint8Array(0)]];
/** Documents from..to as blocks: [first key, bytes] (per entry: key length, value length, key, value). */
function blocks(from, to) {
  const all = [];
  for (let i = from; i < to; i++) all.push(...entries(i));
  all.sort((x, y) => cmp(x[0], y[0]));
  return fill(all).map((b) => [b[0][0], pack(b)]);
}
/** Sorted entries as full blocks: each closed once it reaches 32 KiB. */
function fill(es) {
  const out = [];
  let cur = [], n = 0;
  for (const e of es) { cur.push(e); n += 2 + e[0].length + e[1].length; if (n >= BLOCK) { out.push(cur); cur = []; n = 0; } }
  if (cur.length) out.push(cur);
  return out;
}
/** A block's bytes from its entries. */
function pack(b) {
  const o = new Uint8Array(b.reduce((n, [k, v]) => n + 2 + k.length + v.length, 0));
  let at = 0;
  for (const [k, v] of b) { o[at++] = k.length; o[at++] = v.length; o.set(k, at); at += k.length; o.set(v, at); at += v.length; }
  return o;
}
/** Which of the blocks, by their sorted first keys, holds key k: the last whose first key is at most k. */
function blockOf(firsts, k) {
  let lo = 0, hi = firsts.length - 1;
  while (lo < hi) { const mid = (lo + hi + 1) >> 1; if (cmp(new Uint8Array(firsts[mid]), k) <= 0) lo = mid; else hi = mid - 1; }
  return lo;
}
/** Entries in a block's bytes. */
function unblock(o) { const out = []; for (let at = 0; at < o.length;) { const kl = o[at], vl = o[at + 1]; at += 2; out.push([o.subarray(at, at + kl), o.subarray(at + kl, at + kl + vl)]); at += kl + vl; } return out; }
function put(tx, layout, i) {
  if (layout === "records") { const s = tx.objectStore("records"); for (const [k, v] of entries(i)) s.put(v, k); }
  else if (layout === "packed") tx.objectStore("packed").put({ k: dKey(i), v: body(i), x: [iKey(i), pKey(i)], y: [te.encode(owner(i))] }, dKey(i));
  else if (layout === "objects") tx.objectStore("objects").put(object(i));
}
const object = (i) => ({ id: id(i), owner: owner(i), title: "a title of about forty characters, " + i, done: false, created: 1e12 + i, tags: ["x", "y"] });
/** The blocks (the write-ahead records sort after them, under FF). */
const blockRange = IDBKeyRange.upperBound(new Uint8Array([0xff]), true);
const time = async (f) => { const t0 = performance.now(); const n = await f(); return { ms: performance.now() - t0, n }; };
window.layouts = {
  /** N documents in one transaction. */
  write: (layout) => time(async () => {
    const db = await open();
    const tx = db.transaction([layout], "readwrite");
    if (layout === "blocks") for (const [k, o] of blocks(0, N)) tx.objectStore("blocks").put(o, k);
    else for (let i = 0; i < N; i++) put(tx, layout, i);
    await done(tx);
    db.close();
    return N;
  }),
  /** SINGLES documents, one transaction each, each awaited. */
  singles: async (layout, from) => {
    const db = await open();
    const keys = layout === "blocks" ? await req(db.transaction(["blocks"]).objectStore("blocks").getAllKeys(blockRange)) : [];
    const r = await time(async () => {
      for (let i = from; i < from + SINGLES; i++) {
        const tx = db.transaction([layout], "readwrite");
        if (layout === "blocks") {
          // As the store's write-ahead records do today: a record per write, and every
          // 64 writes one transaction that reads and rewrites every block their keys
          // land in (a document's, its index entry's and its membership's: the blocks
          // are not split here, so they only grow a little) and deletes the records.
          const s = tx.objectStore("blocks");
          s.put(cat(...entries(i).flat()), cat(new Uint8Array([0xff]), te.encode("wal/" + i)));
          if ((i - from) % 64 === 63) {
            await done(tx);
            const tx2 = db.transaction(["blocks"], "readwrite");
            const s2 = tx2.objectStore("blocks");
            const touched = new Set();
            for (let j = i - 63; j <= i; j++) for (const [k] of entries(j)) touched.add(blockOf(keys, k));
            const olds = await Promise.all([...touched].map((b) => req(s2.get(keys[b]))));
            [...touched].forEach((b, j) => { const o = olds[j]; o[o.length - 1] ^= 1; s2.put(o, keys[b]); });
            s2.delete(IDBKeyRange.bound(cat(new Uint8Array([0xff]), te.encode("wal/")), cat(new Uint8Array([0xff]), te.encode("wal0"))));
            await done(tx2);
            continue;
          }
        }
        else put(tx, layout, i);
        await done(tx);
      }
      return SINGLES;
    });
    db.close();
    return r;
  },
  /** Each owner's documents in index order (blocks: every block read once, which holds them all). */
  owners: (layout) => time(async () => {
    const db = await open();
    let n = 0;
    if (layout === "blocks") {
      for (const o of await req(db.transaction(["blocks"]).objectStore("blocks").getAll(blockRange))) for (const [k] of unblock(o)) if (k[0] === 0x44) n++;
    } else for (let o = 0; o < OWNERS; o++) {
      const own = "u:" + String(o).padStart(2, "0");
      const tx = db.transaction([layout]);
      const s = tx.objectStore(layout);
      if (layout === "records") {
        const q = IDBKeyRange.bound(iPrefix(own), upTo(iPrefix(own)));
        const [keys] = await Promise.all([req(s.getAllKeys(q)), req(s.getAll(q))]);
        const docs = await Promise.all(keys.map((k) => { const b = new Uint8Array(k); return req(s.get(cat(new Uint8Array([0x44]), str("Doc"), b.subarray(b.length - 12)))); }));
        n += docs.filter((d) => d !== undefined).length;
      } else if (layout === "packed") n += (await req(s.index("x").getAll(IDBKeyRange.bound(iPrefix(own), upTo(iPrefix(own)))))).length;
      else n += (await req(s.index("oc").getAll(IDBKeyRange.bound([own, -Infinity], [own, Infinity])))).length;
    }
    db.close();
    return n;
  }),
  /** Every document. */
  scan: (layout) => time(async () => {
    const db = await open();
    const s = db.transaction([layout]).objectStore(layout);
    const d = IDBKeyRange.bound(new Uint8Array([0x44]), new Uint8Array([0x45]));
    let n;
    if (layout === "records") { const [keys, values] = await Promise.all([req(s.getAllKeys(d)), req(s.getAll(d))]); n = Math.min(keys.length, values.length); }
    else if (layout === "blocks") { n = 0; for (const o of await req(s.getAll(IDBKeyRange.upperBound(new Uint8Array([0x45]), true)))) for (const [k] of unblock(o)) if (k[0] === 0x44) n++; }
    else n = (await req(s.getAll())).length;
    db.close();
    return n;
  }),
};
/** How today's layout reads a range after a reopen: all the documents, and the last 50
 * (as a reverse limited scan does), each way the engine can (docs/STORAGE.md). */
window.reads = {
  all: (way) => time(async () => {
    const db = await open();
    const s = db.transaction(["records"]).objectStore("records");
    const d = IDBKeyRange.bound(new Uint8Array([0x44]), new Uint8Array([0x45]));
    let n;
    if (way === "pair") { const [keys, values] = await Promise.all([req(s.getAllKeys(d)), req(s.getAll(d))]); n = Math.min(keys.length, values.length); }
    else n = (await req(s.getAllRecords({ query: d }))).filter((r) => r.value.byteLength === 150).length;
    db.close();
    return n;
  }),
  last50: (way) => time(async () => {
    const db = await open();
    const s = db.transaction(["records"]).objectStore("records");
    const d = IDBKeyRange.bound(new Uint8Array([0x44]), new Uint8Array([0x45]));
    let n = 0;
    if (way === "records") n = (await req(s.getAllRecords({ query: d, count: 50, direction: "prev" }))).filter((r) => r.value.byteLength === 150).length;
    else await new Promise((ok, fail) => {
      const c = s.openCursor(d, "prev");
      c.onerror = () => fail(c.error);
      c.onsuccess = () => { const cur = c.result; if (!cur || n === 50) return ok(); if (cur.value.byteLength === 150) n++; cur.continue(); };
    });
    db.close();
    return n;
  }),
};
/** The import's variants, each in a database of its own ("import-" + variant): a layout, and sequential or random ids. */
const idOf = (v) => (v.endsWith("-rnd") ? rid : id);
const openImport = (v) => new Promise((res, rej) => {
  const r = indexedDB.open("import-" + v, 1);
  r.onupgradeneeded = () => {
    if (v.startsWith("objects")) r.result.createObjectStore("s", { keyPath: "id" }).createIndex("oc", ["owner", "created"]);
    else if (v.startsWith("packed")) r.result.createObjectStore("s").createIndex("x", "x", { multiEntry: true });
    else r.result.createObjectStore("s");
    if (v.startsWith("lsm")) r.result.createObjectStore("filters");
  };
  r.onsuccess = () => res(r.result);
  r.onerror = () => rej(r.error);
});
/** The first block's key: empty, below every key, so that every key has a block. */
const none = new Uint8Array(0);
/** Which block holds k, by the sorted first keys (Uint8Arrays, the first empty). */
function blockAt(firsts, k) {
  let lo = 0, hi = firsts.length - 1;
  while (lo < hi) { const mid = (lo + hi + 1) >> 1; if (cmp(firsts[mid], k) <= 0) lo = mid; else hi = mid - 1; }
  return lo;
}
/** The value of key k in sorted entries, or undefined; whether they hold it. */
function find(es, k) {
  let lo = 0, hi = es.length - 1;
  while (lo <= hi) { const mid = (lo + hi) >> 1, c = cmp(es[mid][0], k); if (!c) return es[mid][1]; if (c < 0) lo = mid + 1; else hi = mid - 1; }
}
const has = (es, k) => find(es, k) !== undefined;
/** Two sorted runs of entries as one (b's wins on an equal key). */
function merge(a, b) {
  const o = [];
  let i = 0, j = 0;
  while (i < a.length && j < b.length) { const c = cmp(a[i][0], b[j][0]); if (c < 0) o.push(a[i++]); else { if (!c) i++; o.push(b[j++]); } }
  while (i < a.length) o.push(a[i++]);
  while (j < b.length) o.push(b[j++]);
  return o;
}
const bytes = (es) => es.reduce((n, [k, v]) => n + 2 + k.length + v.length, 0);
/** A merged block: itself up to 32 KiB, else parts of about 16 KiB (at least two, of about equal size). */
function split(es) {
  const size = bytes(es);
  if (size <= BLOCK) return [es];
  const parts = [], k = Math.max(2, Math.round(size / (BLOCK / 2)));
  let cur = [], at = 0;
  for (const e of es) {
    if (cur.length && at >= (size * (parts.length + 1)) / k) { parts.push(cur); cur = []; }
    cur.push(e);
    at += 2 + e[0].length + e[1].length;
  }
  parts.push(cur);
  return parts;
}
/** LSM: a block's store key is its run's number (4 bytes, big-endian) then its first key. */
const be32 = (n) => new Uint8Array([n >>> 24, (n >>> 16) & 255, (n >>> 8) & 255, n & 255]);
const runNo = (k) => ((k[0] << 24) | (k[1] << 16) | (k[2] << 8) | k[3]) >>> 0;
const runRange = (no) => IDBKeyRange.bound(be32(no), be32(no + 1), false, true);
/** The runs, oldest first, from the store's sorted keys (one getAllKeys at open): each
 * run's number, its blocks' first keys and store keys, and its size guessed from them. */
function runsOf(keys) {
  const runs = [];
  for (const key of keys) {
    const k = new Uint8Array(key), no = runNo(k);
    if (runs.at(-1)?.no !== no) runs.push({ no, firsts: [], keys: [], bytes: 0 });
    const r = runs.at(-1);
    r.firsts.push(k.subarray(4)); r.keys.push(key); r.bytes += BLOCK;
  }
  return runs;
}
/** The blocks [a, b) of a run that may hold keys lo..hi (none if hi sorts before its first key). */
const span = (firsts, lo, hi) => (cmp(firsts[0], hi) > 0 ? [0, 0] : [cmp(firsts[0], lo) > 0 ? 0 : blockAt(firsts, lo), blockAt(firsts, hi) + 1]);
/** LSM: a run's Bloom filter, over all its keys: ~10 bits a key (m = the bytes * 8), 7 probes
 * a + j * b mod m (a, b: FNV-1a of the key through murmur3's finalizer, then a through it again). */
const fmix = (h) => { h ^= h >>> 16; h = Math.imul(h, 0x85ebca6b); h ^= h >>> 13; h = Math.imul(h, 0xc2b2ae35); return (h ^ (h >>> 16)) >>> 0; };
/** Whether f holds for every probe of key k into m bits (stopping at the first that fails). */
function probes(k, m, f) {
  let h = 0x811c9dc5;
  for (let i = 0; i < k.length; i++) h = Math.imul(h ^ k[i], 0x01000193);
  const a = fmix(h), b = (fmix(a ^ 0x9e3779b9) | 1) >>> 0;
  for (let j = 0; j < 7; j++) if (!f((a + j * b) % m)) return false;
  return true;
}
function bloom(es) { const o = new Uint8Array(Math.ceil((es.length * 10) / 8)), m = o.length * 8; for (const e of es) probes(e[0], m, (p) => (o[p >> 3] |= 1 << (p & 7))); return o; }
const maybe = (o, k) => probes(k, o.length * 8, (p) => o[p >> 3] & (1 << (p & 7)));
/** Sorted entries written as a new run of full blocks, the puts counted in w; its Bloom filter
 * put in fs under the run's number (counted apart, with the time it took to build). */
function writeRun(s, no, es, w, fs) {
  const t0 = performance.now(), f = bloom(es);
  w.bloomMs += performance.now() - t0;
  fs.put(f, be32(no)); w.filterPuts++; w.filterBytes += f.length + 4;
  const run = { no, firsts: [], bytes: 0 };
  for (const b of fill(es)) {
    const o = pack(b), first = b[0][0].slice(), k = cat(be32(no), first);
    s.put(o, k);
    w.puts++; w.bytes += o.length + k.length;
    run.firsts.push(first); run.bytes += o.length;
  }
  return run;
}
/** A run's size class: runs in one are within a factor of 2 of each other. */
const sizeClass = (r) => Math.floor(Math.log2(r.bytes));
/** The oldest 4 runs of a size class that has 4 (of those, the class with the oldest run), or none. */
function tier(runs) {
  const by = new Map();
  for (const r of runs) { const c = sizeClass(r); if (!by.has(c)) by.set(c, []); by.get(c).push(r); }
  return [...by.values()].filter((g) => g.length >= 4).map((g) => g.slice(0, 4)).sort((a, b) => a[0].no - b[0].no)[0];
}
/** The blocks' entries of each run (given as [key, block] pairs sorted by key), checked: each
 * block keyed by its run and first key, entries sorted within the run, none stray. */
function entriesOfRuns(keys, blocks, v) {
  const runs = [];
  let largest = 0;
  blocks.forEach((o, j) => {
    const key = new Uint8Array(keys[j]), no = runNo(key), es = unblock(o);
    if (!es.length || cmp(key.subarray(4), es[0][0])) throw new Error(v + ": block " + j + " is not keyed by its run and first key");
    if (runs.at(-1)?.no !== no) runs.push({ no, es: [], blocks: 0 });
    const r = runs.at(-1);
    for (const e of es) {
      if (r.es.length && cmp(r.es[r.es.length - 1][0], e[0]) >= 0) throw new Error(v + ": entries out of order in run " + no);
      if (![0x44, 0x49, 0x50].includes(e[0][0])) throw new Error(v + ": a stray entry in run " + no);
      r.es.push(e);
      largest = Math.max(largest, 2 + e[0].length + e[1].length);
    }
    r.blocks++;
  });
  return { runs, largest };
}
window.imports = {
  /** IMPORT_N documents into an emptied database, CHUNK to a transaction, each awaited; the
   * puts counted, with their bytes (keys + values) and the entries' own. */
  run: async (v) => {
    await req(indexedDB.deleteDatabase("import-" + v));
    const f = idOf(v), w = { puts: 0, bytes: 0, entry: 0, splits: 0, appends: 0, compactions: 0, filterPuts: 0, filterBytes: 0, bloomMs: 0 };
    const isBlocks = v.startsWith("blocks"), app = v.startsWith("blocks-app"), lsm = v.startsWith("lsm");
    const r = await time(async () => {
      const db = await openImport(v);
      // Blocks: their first keys, as read at open. LSM: the runs, as read at open (sizes then
      // guessed from their block counts; from here on kept exactly, as a manifest could).
      const keys = isBlocks || lsm ? await req(db.transaction(["s"]).objectStore("s").getAllKeys()) : [];
      let firsts = isBlocks ? keys.map((k) => new Uint8Array(k)) : [];
      let runs = lsm ? runsOf(keys) : [], next = runs.length ? runs.at(-1).no + 1 : 0;
      for (let from = 0; from < IMPORT_N; from += CHUNK) {
        const to = Math.min(from + CHUNK, IMPORT_N);
        const tx = db.transaction(lsm ? ["s", "filters"] : ["s"], "readwrite"), s = tx.objectStore("s");
        if (v.startsWith("objects")) for (let i = from; i < to; i++) { s.put(object(i)); w.puts++; }
        else if (v.startsWith("records")) for (let i = from; i < to; i++) for (const [k, x] of entries(i, f)) { s.put(x, k); w.puts++; w.bytes += k.length + x.length; }
        else if (v.startsWith("packed")) for (let i = from; i < to; i++) {
          // As the packed layout: a record per document, its I and P keys in the index.
          const [[d, b], [ik, o], [pk]] = entries(i, f);
          s.put({ k: d, v: b, x: [ik, pk], y: [o] }, d);
          w.puts++; w.bytes += 2 * d.length + b.length + ik.length + pk.length + o.length;
        } else {
          const es = [];
          for (let i = from; i < to; i++) es.push(...entries(i, f));
          es.sort((x, y) => cmp(x[0], y[0]));
          const put = (b, k) => { const o = pack(b); s.put(o, k); w.puts++; w.bytes += o.length + k.length; };
          // LSM: the chunk as a new run, nothing read.
          if (lsm) runs.push(writeRun(s, next++, es, w, tx.objectStore("filters")));
          // An empty store: full blocks, the first under the empty key.
          else if (!firsts.length) firsts = fill(es).map((b, j) => { const k = j ? b[0][0].slice() : none; put(b, k); return k; });
          else {
            // The blocks the entries land in, read, merged with them, split, written back
            // (append-aware: a block whose new entries all sort after its old ones, past
            // 32 KiB, packed into full blocks instead of halves).
            const by = new Map();
            for (const e of es) { const b = blockAt(firsts, e[0]); if (by.has(b)) by.get(b).push(e); else by.set(b, [e]); }
            const olds = await Promise.all([...by.keys()].map((b) => req(s.get(firsts[b]))));
            const added = [];
            [...by].forEach(([b, news], j) => {
              const old = unblock(olds[j]), all = merge(old, news), big = bytes(all) > BLOCK;
              const append = app && big && cmp(news[0][0], old[old.length - 1][0]) > 0;
              if (big) { w.splits++; if (append) w.appends++; }
              (append ? fill(all) : split(all)).forEach((part, x) => {
                const k = x ? part[0][0].slice() : firsts[b];
                if (x) added.push(k);
                put(part, k);
              });
            });
            if (added.length) firsts = firsts.concat(added).sort(cmp);
          }
        }
        await done(tx);
        // LSM, size-tiered: while 4 runs are of one size class, the oldest such 4 merged
        // into a new run (the newer wins on an equal key), in a transaction of their own.
        for (let g; lsm && (g = tier(runs));) {
          // The 4 are always the newest runs (older ones are of larger classes), so a new
          // number keeps the runs' order by age.
          if (runs.indexOf(g[3]) - runs.indexOf(g[0]) !== 3) throw new Error(v + ": a compaction would reorder the runs");
          const tx = db.transaction(["s", "filters"], "readwrite"), s = tx.objectStore("s"), fs = tx.objectStore("filters");
          const read = await Promise.all(g.map((r) => req(s.getAll(runRange(r.no)))));
          const run = writeRun(s, next++, read.map((bs) => bs.flatMap((o) => unblock(o))).reduce(merge), w, fs);
          for (const r of g) { s.delete(runRange(r.no)); fs.delete(be32(r.no)); }
          await done(tx);
          runs = runs.filter((r) => !g.includes(r)).concat([run]);
          w.compactions++;
        }
      }
      db.close();
      w.runs = runs.length;
      return IMPORT_N;
    });
    // The entries' own bytes (objects: their JSON's length, as a guess at what is put).
    for (let i = 0; i < IMPORT_N; i++) {
      if (v.startsWith("objects")) { const o = object(i), n = JSON.stringify(o).length + o.id.length; w.bytes += n; w.entry += n; }
      else for (const [k, x] of entries(i, f)) w.entry += k.length + x.length;
    }
    return { ...r, ...w };
  },
  /** Everything read back after a reopen: the number of documents, and an error if the store is wrong. */
  check: async (v) => {
    const db = await openImport(v);
    const s = db.transaction(["s"]).objectStore("s");
    const tag = (t) => IDBKeyRange.bound(new Uint8Array([t]), new Uint8Array([t + 1]), false, true);
    const out = {};
    const counts = (es) => { const n = { [0x44]: 0, [0x49]: 0, [0x50]: 0 }; for (const [k] of es) n[k[0]]++; return n; };
    if (v.startsWith("objects")) out.n = (await req(s.getAll())).length;
    else if (v.startsWith("records")) {
      const [d, i, p] = await Promise.all([0x44, 0x49, 0x50].map((t) => req(s.getAllKeys(tag(t)))));
      if (i.length !== d.length || p.length !== d.length || (await req(s.count())) !== 3 * d.length) throw new Error(v + ": " + d.length + " D, " + i.length + " I, " + p.length + " P keys");
      out.n = d.length;
    } else if (v.startsWith("packed")) {
      // Every record a document under its D key, each in the index under its I and P keys.
      const x = s.index("x");
      const [all, d, i, p, n] = await Promise.all([req(s.getAll()), req(s.count(tag(0x44))), req(x.count(tag(0x49))), req(x.count(tag(0x50))), req(x.count())]);
      if (all.length !== d || i !== d || p !== d || n !== 2 * d || all.some((r) => r.v.byteLength !== 150)) throw new Error(v + ": " + all.length + " records, " + d + " D, " + i + " I, " + p + " P keys, " + n + " in the index");
      out.n = d;
    } else if (v.startsWith("lsm")) {
      // Each run sorted, its blocks keyed by it and their first key; all runs merged (the
      // newest wins): N of each of D, I and P.
      const [keys, blocks] = await Promise.all([req(s.getAllKeys()), req(s.getAll())]);
      const { runs, largest } = entriesOfRuns(keys, blocks, v);
      const big = blocks.findIndex((o) => o.length > BLOCK + largest);
      if (big >= 0) throw new Error(v + ": block " + big + " holds " + blocks[big].length + " bytes");
      const n = counts(runs.map((r) => r.es).reduce(merge, []));
      if (n[0x49] !== n[0x44] || n[0x50] !== n[0x44]) throw new Error(v + ": " + n[0x44] + " D, " + n[0x49] + " I, " + n[0x50] + " P entries");
      // A Bloom filter a run, under its number, that holds every key of it.
      const fs = db.transaction(["filters"]).objectStore("filters"), [fk, fl] = await Promise.all([req(fs.getAllKeys()), req(fs.getAll())]);
      if (fk.length !== runs.length || runs.some((r, j) => runNo(new Uint8Array(fk[j])) !== r.no || r.es.some(([k]) => !maybe(fl[j], k)))) throw new Error(v + ": " + fk.length + " filters for " + runs.length + " runs, or one misses a key");
      Object.assign(out, { n: n[0x44], blocks: blocks.length, fill: blocks.reduce((a, o) => a + o.length, 0) / blocks.length / BLOCK, runs: runs.length, sizes: runs.map((r) => r.blocks), filters: fl.map((o) => o.length) });
    } else {
      const [keys, blocks] = await Promise.all([req(s.getAllKeys()), req(s.getAll())]);
      const n = { [0x44]: 0, [0x49]: 0, [0x50]: 0 };
      let prev = null, largest = 0;
      blocks.forEach((o, j) => {
        const es = unblock(o), key = new Uint8Array(keys[j]);
        if (!es.length || (j ? cmp(key, es[0][0]) : key.length)) throw new Error(v + ": block " + j + " is not keyed by its first key");
        for (const [k, x] of es) {
          if (prev && cmp(prev, k) >= 0) throw new Error(v + ": entries out of order in block " + j);
          if (!(k[0] in n)) throw new Error(v + ": a stray entry in block " + j);
          prev = k;
          n[k[0]]++;
          largest = Math.max(largest, 2 + k.length + x.length);
        }
      });
      const big = blocks.findIndex((o) => o.length > BLOCK + largest);
      if (big >= 0) throw new Error(v + ": block " + big + " holds " + blocks[big].length + " bytes");
      if (n[0x49] !== n[0x44] || n[0x50] !== n[0x44]) throw new Error(v + ": " + n[0x44] + " D, " + n[0x49] + " I, " + n[0x50] + " P entries");
      Object.assign(out, { n: n[0x44], blocks: blocks.length, fill: blocks.reduce((a, o) => a + o.length, 0) / blocks.length / BLOCK });
    }
    db.close();
    return out;
  },
  /** One owner's documents after a reopen (blocks: the first keys read at open, then, in one
   * transaction, the blocks covering its index range, then those holding its documents;
   * LSM: the same in every run, a document looked for in each run; packed: its index). */
  one: async (v) => {
    let read = 0;
    const r = await time(async () => {
      const db = await openImport(v);
      const own = owner(7), lo = iPrefix(own), hi = upTo(lo);
      const docKey = (k) => cat(new Uint8Array([0x44]), str("Doc"), k.subarray(k.length - 12));
      const inRange = (k) => cmp(k, lo) > 0 && cmp(k, hi) < 0;
      let n = 0;
      if (v.startsWith("blocks")) {
        const firsts = (await req(db.transaction(["s"]).objectStore("s").getAllKeys())).map((k) => new Uint8Array(k));
        const s = db.transaction(["s"]).objectStore("s");
        const index = await Promise.all(firsts.slice(blockAt(firsts, lo), blockAt(firsts, hi) + 1).map((k) => req(s.get(k))));
        const want = new Map();
        for (const o of index) for (const [k] of unblock(o)) if (inRange(k)) {
          const d = docKey(k), b = blockAt(firsts, d);
          if (want.has(b)) want.get(b).push(d); else want.set(b, [d]);
        }
        const docs = await Promise.all([...want.keys()].map((b) => req(s.get(firsts[b]))));
        [...want.values()].forEach((ds, j) => { const es = unblock(docs[j]); for (const d of ds) if (has(es, d)) n++; });
        read = index.length + docs.length;
      } else if (v.startsWith("lsm")) {
        // The fence pointers: every run's blocks' first keys.
        const runs = runsOf(await req(db.transaction(["s"]).objectStore("s").getAllKeys()));
        const s = db.transaction(["s"]).objectStore("s");
        const index = await Promise.all(runs.map((r) => { const [a, b] = span(r.firsts, lo, hi); return Promise.all(r.keys.slice(a, b).map((k) => req(s.get(k)))); }));
        // The owner's index entries, the runs merged; then each document's block in every run.
        const ik = index.map((bs) => bs.flatMap((o) => unblock(o)).filter(([k]) => inRange(k))).reduce(merge, []);
        const want = new Map();
        for (const [k] of ik) {
          const d = docKey(k);
          runs.forEach((r) => { if (cmp(r.firsts[0], d) > 0) return; const key = r.keys[blockAt(r.firsts, d)]; if (!want.has(key)) want.set(key, []); want.get(key).push(d); });
        }
        const docs = await Promise.all([...want.keys()].map((k) => req(s.get(k))));
        const found = new Set();
        [...want.values()].forEach((ds, j) => { const es = unblock(docs[j]); for (const d of ds) if (has(es, d)) found.add(d.join()); });
        n = found.size;
        read = index.reduce((a, bs) => a + bs.length, 0) + docs.length;
      } else {
        const s = db.transaction(["s"]).objectStore("s");
        if (v.startsWith("records")) {
          const q = IDBKeyRange.bound(lo, hi);
          const [keys] = await Promise.all([req(s.getAllKeys(q)), req(s.getAll(q))]);
          n = (await Promise.all(keys.map((k) => req(s.get(docKey(new Uint8Array(k))))))).filter((d) => d !== undefined).length;
        } else if (v.startsWith("packed")) n = (await req(s.index("x").getAll(IDBKeyRange.bound(lo, hi)))).length;
        else n = (await req(s.index("oc").getAll(IDBKeyRange.bound([own, -Infinity], [own, Infinity])))).length;
      }
      db.close();
      return n;
    });
    return { ...r, read };
  },
  /** 50 documents scattered over the ids (those numbered i * floor(IMPORT_N / 50)) after a
   * reopen, in one readonly transaction, every request issued before any is awaited, each
   * checked (its body; objects: the object). Blocks: the first keys, then the blocks holding
   * them. LSM: the fence pointers, then each document's block in every run that may hold it,
   * the newest run's value taken; with bloom, the runs' filters read with them (one getAll)
   * and only the runs whose filter says maybe. Counted: gets and bytes read (values; blocks:
   * theirs), LSM's fence keys and their bytes, blocks read without the document (misses:
   * with the filters, their false positives), the filters' bytes. */
  scatter: async (v, bloom) => {
    const f = idOf(v), nos = Array.from({ length: 50 }, (_, i) => i * Math.floor(IMPORT_N / 50)), ds = nos.map((i) => dKey(i, f));
    const w = { gets: 0, bytes: 0, fence: 0, fenceBytes: 0, looks: 0, miss: 0, filters: 0 };
    const r = await time(async () => {
      const db = await openImport(v);
      const tx = db.transaction(bloom ? ["s", "filters"] : ["s"]), s = tx.objectStore("s");
      let got;
      if (v.startsWith("blocks")) {
        const firsts = (await req(s.getAllKeys())).map((k) => new Uint8Array(k)), at = ds.map((d) => blockAt(firsts, d)), bs = [...new Set(at)];
        const es = new Map((await Promise.all(bs.map((b) => req(s.get(firsts[b]))))).map((o, j) => { w.bytes += o.length; return [bs[j], unblock(o)]; }));
        got = ds.map((d, j) => find(es.get(at[j]), d));
        Object.assign(w, { gets: bs.length, fence: firsts.length, fenceBytes: firsts.reduce((a, k) => a + k.length, 0) });
      } else if (v.startsWith("lsm")) {
        const [keys, fl] = await Promise.all([req(s.getAllKeys()), bloom && req(tx.objectStore("filters").getAll())]);
        const runs = runsOf(keys), want = new Map();
        if (bloom && fl.length !== runs.length) throw new Error(v + ": " + fl.length + " filters for " + runs.length + " runs");
        ds.forEach((d, j) => runs.forEach((r, x) => {
          if (cmp(r.firsts[0], d) > 0 || (bloom && !maybe(fl[x], d))) return;
          const key = r.keys[blockAt(r.firsts, d)];
          if (!want.has(key)) want.set(key, []);
          want.get(key).push([j, x]);
        }));
        const bs = await Promise.all([...want.keys()].map((k) => req(s.get(k))));
        // Each document's value from the newest run that holds it.
        const best = [];
        [...want.values()].forEach((jx, b) => { const es = unblock(bs[b]); w.bytes += bs[b].length; for (const [j, x] of jx) { w.looks++; const val = find(es, ds[j]); if (val === undefined) w.miss++; else if (!best[j] || best[j][0] < x) best[j] = [x, val]; } });
        got = ds.map((_, j) => best[j]?.[1]);
        Object.assign(w, { gets: bs.length, fence: keys.length, fenceBytes: keys.reduce((a, k) => a + k.byteLength, 0), filters: bloom ? fl.reduce((a, o) => a + o.length, 0) : 0 });
      } else {
        got = await Promise.all(v.startsWith("objects") ? nos.map((i) => req(s.get(id(i)))) : ds.map((d) => req(s.get(d))));
        // Packed: the record's keys and values, as the import counts them; objects: the JSON.
        w.gets = got.length;
        for (const o of got) w.bytes += !o ? 0 : o.byteLength ?? (o.v ? o.k.length + o.v.length + o.x[0].length + o.x[1].length + o.y[0].length : JSON.stringify(o).length);
        if (v.startsWith("packed")) got = got.map((o) => o?.v);
      }
      db.close();
      const same = (a, b) => a.length === b.length && a.every((x, j) => x === b[j]);
      return nos.filter((i, j) => got[j] && (v.startsWith("objects") ? JSON.stringify(got[j]) === JSON.stringify(object(i)) : same(got[j], body(i)))).length;
    });
    return { ...r, ...w };
  },
  /** Every document after a reopen (records: keys and values of the D range; packed and
   * objects: every record; blocks: every block decoded; LSM: every run's, merged). */
  full: (v) => time(async () => {
    const db = await openImport(v);
    const s = db.transaction(["s"]).objectStore("s");
    const d = IDBKeyRange.bound(new Uint8Array([0x44]), new Uint8Array([0x45]), false, true);
    let n = 0;
    if (v.startsWith("records")) { const [keys, values] = await Promise.all([req(s.getAllKeys(d)), req(s.getAll(d))]); n = Math.min(keys.length, values.length); }
    else if (v.startsWith("blocks")) { for (const o of await req(s.getAll())) for (const [k] of unblock(o)) if (k[0] === 0x44) n++; }
    else if (v.startsWith("lsm")) {
      const [keys, blocks] = await Promise.all([req(s.getAllKeys()), req(s.getAll())]);
      const runs = [];
      blocks.forEach((o, j) => { const no = runNo(new Uint8Array(keys[j])); if (runs.at(-1)?.no !== no) runs.push({ no, es: [] }); const es = runs.at(-1).es; for (const e of unblock(o)) es.push(e); });
      for (const [k] of runs.map((r) => r.es).reduce(merge, [])) if (k[0] === 0x44) n++;
    } else n = (await req(s.getAll())).length;
    db.close();
    return n;
  }),
};
</script>`;

const srv = createServer((_, res) => { res.setHeader("content-type", "text/html"); res.end(page); });
await new Promise((ok) => srv.listen(0, "127.0.0.1", ok));
const url = `http://127.0.0.1:${srv.address().port}/`;
const ctx = await profile(tempDir("bench-layouts"));
let p = await ctx.newPage();
const reopen = async () => { await p.close(); p = await ctx.newPage(); await p.goto(url); };
await p.goto(url);
const LAYOUTS = ["records", "packed", "objects", "blocks"];
const times = {};
const record = (what, layout, r, want) => {
  if (r.n !== want) throw new Error(`${what} with ${layout}: ${r.n} documents, not ${want}`);
  ((times[what] ??= {})[layout] ??= []).push(r.ms);
};
for (const l of LAYOUTS) record("write", l, await p.evaluate((l) => window.layouts.write(l), l), N);
// Two ways to read a range of today's layout, where the browser has getAllRecords.
const hasRecords = await p.evaluate(() => typeof IDBObjectStore.prototype.getAllRecords === "function");
const WAYS = ["pair", "records"];
// The single inserts add documents (blocks: they rewrite blocks, adding none).
const held = Object.fromEntries(LAYOUTS.map((l) => [l, N]));
for (let r = 0; r < RUNS; r++) {
  for (const l of r % 2 ? LAYOUTS : [...LAYOUTS].reverse()) {
    await reopen();
    record("owners", l, await p.evaluate((l) => window.layouts.owners(l), l), held[l]);
    await reopen();
    record("scan", l, await p.evaluate((l) => window.layouts.scan(l), l), held[l]);
    record("singles", l, await p.evaluate(([l, f]) => window.layouts.singles(l, f), [l, N + r * SINGLES]), SINGLES);
    if (l !== "blocks") held[l] += SINGLES;
  }
  if (hasRecords) for (const way of r % 2 ? WAYS : [...WAYS].reverse()) {
    await reopen();
    record(`all-${way}`, "records", await p.evaluate((w) => window.reads.all(w), way), held.records);
    await reopen();
    record(`last50-${way}`, "records", await p.evaluate((w) => window.reads.last50(w), way), 50);
  }
}
// The import, each variant into an emptied database of its own; after a reopen every
// entry read back and checked; after another, one owner's documents; after another, all.
let ownerDocs = 0;
for (let i = 7; i < IMPORT_N; i += 50) ownerDocs++;
const imported = {};
for (let r = 0; r < RUNS; r++) {
  for (const v of r % 2 ? VARIANTS : [...VARIANTS].reverse()) {
    await reopen();
    const w = await p.evaluate((v) => window.imports.run(v), v);
    record("import", v, w, IMPORT_N);
    await reopen();
    const c = await p.evaluate((v) => window.imports.check(v), v);
    if (c.n !== IMPORT_N) throw new Error(`import with ${v}: ${c.n} documents read back, not ${IMPORT_N}`);
    if (c.runs !== undefined && c.runs !== w.runs) throw new Error(`import with ${v}: ${c.runs} runs in the store, ${w.runs} in memory`);
    await reopen();
    const o = await p.evaluate((v) => window.imports.one(v), v);
    record("one", v, o, ownerDocs);
    await reopen();
    record("full", v, await p.evaluate((v) => window.imports.full(v), v), IMPORT_N);
    // 50 documents scattered by id (LSM: also with its filters, the two in turns).
    const sc = {};
    for (const bloom of v.startsWith("lsm") ? (r % 2 ? [false, true] : [true, false]) : [false]) {
      await reopen();
      record(bloom ? "scatter-bloom" : "scatter", v, (sc[bloom] = await p.evaluate(([v, b]) => window.imports.scatter(v, b), [v, bloom])), 50);
    }
    imported[v] = { ...w, ...c, read: o.read, scatter: sc.false, bloom: sc.true };
  }
}
await ctx.close();
srv.close();
const median = (a) => [...a].sort((x, y) => x - y)[a.length >> 1];
const rows = [
  ["write", `${N.toLocaleString("en")} documents in one transaction (1 run)`],
  ["singles", `${SINGLES} documents, a transaction each (blocks: a record each, the blocks they touch rewritten every 64)`],
  ["owners", "after a reopen: each of 50 owners' documents by the index"],
  ["scan", `after a reopen: all ${N.toLocaleString("en")} documents`],
];
console.log(`IndexedDB alone, ms (medians of ${RUNS} runs, one write run)`);
console.log(`| workload | ${LAYOUTS.join(" | ")} |`);
console.log(`|---|${LAYOUTS.map(() => "---:").join("|")}|`);
for (const [k, label] of rows) console.log(`| ${label} | ${LAYOUTS.map((l) => median(times[k][l]).toFixed(0)).join(" | ")} |`);
if (hasRecords) {
  console.log(`\nToday's layout after a reopen, ms (medians of ${RUNS} runs): a range read as getAllKeys + getAll (forward) or a reverse cursor, against one getAllRecords`);
  console.log("| read | getAllKeys + getAll, or a cursor | getAllRecords |");
  console.log("|---|---:|---:|");
  console.log(`| all ${N.toLocaleString("en")} documents | ${median(times["all-pair"].records).toFixed(1)} | ${median(times["all-records"].records).toFixed(1)} |`);
  console.log(`| the last 50, reversed | ${median(times["last50-pair"].records).toFixed(1)} | ${median(times["last50-records"].records).toFixed(1)} |`);
}
console.log(`\nAn import of ${IMPORT_N.toLocaleString("en")} documents in chunks of ${(1000).toLocaleString("en")}, a transaction each, into an empty store, ms (medians of ${RUNS} runs); written: the keys and values put, against the entries' own bytes${BLOCK_KIB === 32 ? "" : `; blocks of ${BLOCK_KIB} KiB`}`);
console.log("| variant | import ms | puts | MiB written | amplification (written / entry bytes) | one owner after reopen ms | all documents after reopen ms | 50 scattered by id after reopen ms |");
console.log("|---|---:|---:|---:|---:|---:|---:|---:|");
for (const v of Object.keys(IMPORTS).filter((v) => VARIANTS.includes(v))) {
  const c = imported[v], guess = v.startsWith("objects") || v.startsWith("packed") ? "~" : "";
  console.log(`| ${IMPORTS[v]} | ${median(times.import[v]).toFixed(0)} | ${c.puts.toLocaleString("en")} | ${guess}${(c.bytes / 2 ** 20).toFixed(1)} | ${(c.bytes / c.entry).toFixed(2)} | ${median(times.one[v]).toFixed(1)} | ${median(times.full[v]).toFixed(0)} | ${median(times.scatter[v]).toFixed(1)} |`);
  if (v.startsWith("lsm")) console.log(`| ${IMPORTS[v]}, read with its runs' Bloom filters | (the same import) | | | | | | ${median(times["scatter-bloom"][v]).toFixed(1)} |`);
}
const ran = (...vs) => vs.filter((v) => VARIANTS.includes(v));
const blocksAt = (v) => `${IMPORTS[v].replace("blocks, ", "")} ${imported[v].blocks} blocks, ${(imported[v].fill * 100).toFixed(0)}% full on average, ${imported[v].splits.toLocaleString("en")} splits${v.includes("app") ? ` (appends: ${imported[v].appends.toLocaleString("en")})` : ""}, one owner's documents in ${imported[v].read}`;
const blocksLine = ran("blocks-seq", "blocks-rnd", "blocks-app-seq", "blocks-app-rnd").map(blocksAt);
if (blocksLine.length) console.log(`Blocks at the end: ${blocksLine.join("; ")}.`);
const lsmAt = (v) => `${IMPORTS[v].replace("LSM runs, size-tiered, ", "")} ${imported[v].runs} runs (${imported[v].sizes.join(", ")} blocks, oldest first), ${imported[v].blocks} blocks, ${(imported[v].fill * 100).toFixed(0)}% full on average, after ${imported[v].compactions} compactions, one owner's documents in ${imported[v].read}`;
const lsmLine = ran("lsm-seq", "lsm-rnd").map(lsmAt);
if (lsmLine.length) console.log(`LSM at the end: ${lsmLine.join("; ")}.`);
const kib = (n) => `${(n / 1024).toFixed(1)} KiB`;
const scatterAt = (v) => {
  const s = imported[v].scatter, b = imported[v].bloom;
  if (v.startsWith("lsm")) return `${IMPORTS[v]}: the fence pointers (${s.fence.toLocaleString("en")} keys, ${kib(s.fenceBytes)}), then ${s.gets} blocks (${kib(s.bytes)}), ${s.looks} lookups (a document in a run's block), ${s.miss} of them in a run without it; with its runs' Bloom filters (${imported[v].filters.length}: ${kib(b.filters)} read, ${imported[v].filters.map(kib).join(", ")}, oldest first; built in ${imported[v].bloomMs.toFixed(0)} ms of the import, ${imported[v].filterPuts} puts, ${kib(imported[v].filterBytes)} written) ${b.gets} blocks (${kib(b.bytes)}), ${b.miss} false positives`;
  if (v.startsWith("blocks")) return `${IMPORTS[v]}: the first keys (${s.fence.toLocaleString("en")}, ${kib(s.fenceBytes)}), then ${s.gets} blocks (${kib(s.bytes)})`;
  return `${IMPORTS[v]}: ${s.gets} gets (${v.startsWith("records") ? "" : "~"}${kib(s.bytes)})`;
};
console.log(`50 documents scattered by id after a reopen, what was read: ${Object.keys(IMPORTS).filter((v) => VARIANTS.includes(v)).map(scatterAt).join("; ")}.`);
const guessed = ran("objects-seq", "packed-rnd");
if (guessed.length) console.log(`${guessed.map((v) => v.split("-")[0]).join(" and ").replace(/^./, (c) => c.toUpperCase())}: a guess (objects: their JSON's length; packed: the keys, the value and the index keys in the record; their index entries are not counted).`);
