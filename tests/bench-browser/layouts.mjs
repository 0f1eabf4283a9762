// What IndexedDB itself costs for four ways of laying out the same documents, with no
// engine: the floor under any design of the browser's storage. Headless Chromium, an
// on-disk profile, one page per measurement after a reopen (a fresh page and a fresh
// `open()`), medians. docs/BENCHMARKS.md ("What the storage layout costs") reads it.
//
//   node tests/bench-browser/layouts.mjs [--runs 5] [--n 10000]
//
// The layouts, for documents of ~150 bytes owned by one of 50 owners:
// - records: today's (docs/STORAGE.md): a document is three records, its document
//   (`D` key), its index entry (`I`) and its partition membership (`P`), binary keys
//   and `Uint8Array` values; a range is read as getAllKeys + getAll.
// - packed: one record per document under its `D` key, `{k, v, x: [I key, P key], y}`,
//   with a multiEntry IndexedDB index on `x`.
// - objects: Dexie's: one object per document keyed by id, an index on [owner, created].
// - blocks: the `records` layout's entries, sorted, packed into 32 KiB blocks keyed by
//   their first key (as a B-tree's leaves or an LSM's sorted runs would be).
// And, for today's layout, two ways to read a range (where the browser has
// getAllRecords): all the documents, and the last 50 reversed.
//
// Needs Debian's Chromium and playwright-core (.ci/setup-browser). Every count is
// checked: a layout that loses or invents a document stops the benchmark.
import { createServer } from "node:http";
import { profile, tempDir } from "../browser/harness.mjs";

const args = process.argv.slice(2);
const opt = (name, dflt) => (args.includes(name) ? Number(args[args.indexOf(name) + 1]) : dflt);
const RUNS = opt("--runs", 5);
const N = opt("--n", 10_000);
const SINGLES = 300;

const page = `<!doctype html><meta charset="utf-8"><script>
const N = ${N}, OWNERS = 50, BLOCK = 32768, SINGLES = ${SINGLES};
const te = new TextEncoder();
const cat = (...a) => { let n = 0; for (const x of a) n += x.length; const o = new Uint8Array(n); let i = 0; for (const x of a) { o.set(x, i); i += x.length; } return o; };
const str = (s) => cat(te.encode(s), new Uint8Array([0]));
const id = (i) => "doc-" + String(i).padStart(7, "0");
const owner = (i) => "u:" + String(i % OWNERS).padStart(2, "0");
const dKey = (i) => cat(new Uint8Array([0x44]), str("Doc"), str(id(i)));
const iPrefix = (o) => cat(new Uint8Array([0x49]), str("Doc"), str("byOwner"), new Uint8Array([5]), str(o));
const iKey = (i) => cat(iPrefix(owner(i)), new Uint8Array([3]), te.encode(String(1e12 + i)), str(id(i)));
const pKey = (i) => cat(new Uint8Array([0x50]), str(owner(i)), str("Doc"), str(id(i)));
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
const entries = (i) => [[dKey(i), body(i)], [iKey(i), te.encode(owner(i))], [pKey(i), new Uint8Array(0)]];
/** Documents from..to as blocks: [first key, bytes] (per entry: key length, value length, key, value). */
function blocks(from, to) {
  const all = [];
  for (let i = from; i < to; i++) all.push(...entries(i));
  all.sort((x, y) => cmp(x[0], y[0]));
  const out = [];
  let cur = [], size = 0;
  for (const e of all) {
    cur.push(e);
    size += 2 + e[0].length + e[1].length;
    if (size >= BLOCK) { out.push(cur); cur = []; size = 0; }
  }
  if (cur.length) out.push(cur);
  return out.map((b) => {
    const o = new Uint8Array(b.reduce((n, [k, v]) => n + 2 + k.length + v.length, 0));
    let at = 0;
    for (const [k, v] of b) { o[at++] = k.length; o[at++] = v.length; o.set(k, at); at += k.length; o.set(v, at); at += v.length; }
    return [b[0][0], o];
  });
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
  else if (layout === "objects") tx.objectStore("objects").put({ id: id(i), owner: owner(i), title: "a title of about forty characters, " + i, done: false, created: 1e12 + i, tags: ["x", "y"] });
}
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
