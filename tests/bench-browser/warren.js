// The workloads on Warren: the npm package (js-package) against a real `warren serve`
// with bench.warren. Writes call the schema's functions; a write counts as done when
// its `local` promise resolves (durable in IndexedDB; the server confirms later).
import { open, literal } from "./lib/warren/dist/index.js";

/** Warren bounds a transaction's arguments to 64 KiB and its writes to 1,000
 * documents (the engine's default limits), so a bulk insert goes in chunks. */
const CHUNK_BYTES = 48 * 1024;

const SCAN_PAGE = 4000;

export function chunks(docs) {
  const out = [];
  let cur = [];
  let bytes = 0;
  for (const d of docs) {
    const b = JSON.stringify(d).length;
    if (cur.length && (bytes + b > CHUNK_BYTES || cur.length >= 1000)) { out.push(cur); cur = []; bytes = 0; }
    cur.push(d);
    bytes += b;
  }
  if (cur.length) out.push(cur);
  return out;
}

export async function tokenFor(sub) {
  const r = await fetch("/v1/dev/token", { method: "POST", headers: { "content-type": "application/json" },
    body: JSON.stringify({ sub }) });
  return (await r.json()).token;
}

const byOwner = (owner) => `Doc.byOwner(${literal(owner)})`;

export async function openDb(name, user) {
  const db = await open({ url: location.origin, token: () => tokenFor(user), name });
  return {
    db,
    async bulkInsert(docs) {
      const writes = chunks(docs).map((c) => db.call("put", { docs: c }));
      await Promise.all(writes.map((w) => w.local));
    },
    async insertOne(doc) {
      await db.call("put1", { doc }).local;
    },
    get: (id) => db.query(`Doc.byId(${literal(id)})`),
    byOwner: (owner) => db.query(byOwner(owner)),
    firstByOwner: (owner, n) => db.query(`${byOwner(owner)}.take(${n})`),
    count: () => db.query("Doc.all().count()"),
    countOwner: (owner) => db.query(`${byOwner(owner)}.count()`),
    /** A query's result is bounded to 1 MiB (max_value_bytes), so a full scan reads
     * pages of SCAN_PAGE documents. */
    async scan() {
      const out = [];
      let after = null;
      do {
        const page = await db.query(`Doc.all().paginate(${SCAN_PAGE}${after === null ? "" : `, ${literal(after)}`})`);
        for (const d of page.data) out.push(d);
        after = page.after;
      } while (after !== null);
      return out;
    },
    /** A live query on one owner's newest 5 documents; resolves once it has a first result. */
    async live(owner, onRows) {
      const lq = db.live(`${byOwner(owner)}.reverse().take(5)`);
      const stop = lq.subscribe((rows) => rows && onRows(rows));
      await lq.ready();
      return stop;
    },
    /** Resolves once the server has confirmed every local write. */
    synced: () => new Promise((ok) => {
      const stop = db.status.subscribe((s) => { if (s.connected && s.pending === 0) { queueMicrotask(() => stop()); ok(); } });
    }),
    close: () => db.close(),
  };
}
