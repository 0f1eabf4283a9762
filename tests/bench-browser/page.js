// What the runner calls in a page (bench.html?lib=raw|idb|dexie|warren): the suite, the
// live-query latency, populating the 100,000-document database, the cold open (run at
// page load when the URL says mode=cold), and the two halves of the cross-tab workload.
import * as W from "./workload.js";

const params = new URLSearchParams(location.search);
const lib = params.get("lib");
const impl = await import(`./${lib}.js`);
const now = () => performance.now();

async function openDb(name, user) {
  return impl.openDb(name, user);
}

const COLD_N = 100_000;

window.bench = {
  lib,
  async suite(user, opts) {
    const db = await openDb(`bench-${lib}-${user}`, user);
    try {
      const t = await W.suite(db, user, opts);
      if (db.synced) {
        const s = now();
        await db.synced();
        t.confirmedAll = now() - s;
      }
      return t;
    } finally { db.close(); }
  },
  async live(user, opts) {
    const db = await openDb(`bench-${lib}-${user}`, user);
    try { return await W.liveLatency(db, user, opts); } finally { db.close(); }
  },
  /** Fills the cold-open database: 100,000 documents, 10,000 per transaction (Warren:
   * in its chunks, then waits for the server to confirm all). */
  async populate(user, name) {
    const db = await openDb(name, user);
    const s = now();
    let local = 0;
    for (let i = 0; i < COLD_N; i += 10_000) {
      const t = now();
      await db.bulkInsert(W.makeDocs(user, i, i + 10_000));
      local += now() - t;
      // Warren: let the server confirm each block before the next, so that at most
      // one block's commits are pending (see docs/BENCHMARKS.md).
      if (db.synced) await db.synced();
    }
    const all = now() - s;
    const c = await db.count();
    db.close();
    if (c !== COLD_N) throw new W.BenchError(`populate: count ${c}`);
    return { local, all };
  },
  /** Warren's cold-open database, one block of documents per page: a single page
   * writing all 100,000 crashed (see docs/BENCHMARKS.md). */
  async populateBlock(user, name, from, to) {
    const db = await openDb(name, user);
    const s = now();
    await db.bulkInsert(W.makeDocs(user, from, to));
    const local = now() - s;
    await db.synced();
    const all = now() - s;
    const c = await db.count();
    db.close();
    if (c !== to) throw new W.BenchError(`populate: count ${c}, expected ${to}`);
    return { local, all };
  },
  shared: null,
  seen: new Map(),
  /** Cross-tab: opens `name` and (in the reading tab) watches owner `owner`. */
  async openShared(user, name, owner) {
    const db = (this.shared = await openDb(name, user));
    if (owner) {
      this.stopWatch = await db.live(owner, (rows) => {
        const t = performance.timeOrigin + now();
        for (const r of rows) if (!this.seen.has(r.id)) this.seen.set(r.id, t);
      });
    }
    return true;
  },
  /** Cross-tab, writing tab: writes `doc` and gives the (absolute) time it started. */
  async write(doc) {
    const t = performance.timeOrigin + now();
    await this.shared.insertOne(doc);
    return t;
  },
  /** Cross-tab, reading tab: the absolute time `id` first appeared in the live query. */
  async waitFor(id, ms = 20_000) {
    const end = Date.now() + ms;
    while (!this.seen.has(id)) {
      if (Date.now() > end) throw new W.BenchError(`cross-tab: ${id} never appeared`);
      await new Promise((r) => setTimeout(r, 2));
    }
    return this.seen.get(id);
  },
};

// The cold open: the page was loaded anew on a database populated earlier; time from
// navigation start (performance.now()'s origin) to the first 50 results of an index query.
if (params.get("mode") === "cold") {
  const user = params.get("user");
  const k = Number(params.get("owner"));
  window.coldResult = (async () => {
    const db = await openDb(params.get("name"), user);
    const rows = await db.firstByOwner(`${user}:u${k}`, 50);
    const ms = now();
    const want = W.ownerIds(user, k, COLD_N).slice(0, 50);
    const ok = rows.length === 50 && rows.every((r, j) => r.id === want[j] && W.sameDoc(r, W.makeDoc(user, Number(want[j].slice(want[j].lastIndexOf("-d") + 2)))));
    db.close();
    return { ms, ok, got: rows.length, first: rows[0]?.id, want: want[0] };
  })();
}
window.benchDoc = W.makeDoc;
window.benchReady = true;
