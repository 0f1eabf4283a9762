// What the runner calls in a page (bench.html?lib=raw|idb|dexie|warren|warren-page;
// warren-page is Warren with its engine on the page, `worker: false`): the suite, the
// live-query latency, the offline burst, the one-page import with its count and scan,
// the cold open (run at page load when the URL says mode=cold), and the two halves of
// the cross-tab workload. Warren's pages get the sync server's address in `sync=` and
// tokens from the runner (`window.warrenToken`), so that the pages load even when the
// sync server is down.
import * as W from "./workload.js";

const params = new URLSearchParams(location.search);
const lib = params.get("lib");
const warren = lib.startsWith("warren");
const impl = await import(`./${warren ? "warren" : lib}.js`);
const now = () => performance.now();

const openDb = (name, user, options) => impl.openDb(name, user, options);

const COLD_N = Number(params.get("coldN") ?? 100_000);

/** Memory the page can see: the main thread's JS heap, and Warren's engine. */
async function memory(db) {
  const out = { jsHeap: performance.memory?.usedJSHeapSize ?? 0 };
  if (db?.stats) {
    const s = await db.stats();
    out.wasm = s.wasmMemoryBytes;
    out.cache = s.cacheBytes;
    out.view = s.viewBytes;
    out.worker = s.worker;
  }
  return out;
}

window.bench = {
  lib,
  async suite(user, opts) {
    const t = await W.suite(() => openDb(`bench-${lib}-${user}`, user), user, opts);
    // The floor of a read through a worker, in the same page as its reads.
    if (lib === "warren") t.workerEcho = await W.workerEcho(opts.n);
    return t;
  },
  async live(user, opts) {
    const db = await openDb(`bench-${lib}-${user}`, user);
    try {
      const l = await W.liveLatency(db, user, opts);
      if (l) l.pile = await W.liveWhileWriting(db, user);
      return l;
    } finally {
      await db.close();
    }
  },
  /**
   * `n` writes made offline: the IndexedDB libraries add them one by one, each awaited;
   * Warren makes them one by one, each awaited to its optimistic result, and they count
   * once all are durable locally. Then (Warren) back online: until all are confirmed.
   */
  async offlineBurst(user, n) {
    const docs = W.makeDocs(user, 0, n);
    if (!warren) {
      const db = await openDb(`burst-${lib}-${user}`, user);
      const s = now();
      for (const d of docs) await db.insertOne(d);
      const local = now() - s;
      const c = await db.count();
      await db.close();
      if (c !== n) W.fail("offline burst: count", c);
      return { local };
    }
    const db = await openDb(`burst-${lib}-${user}`, user, { offline: true });
    const s = now();
    const locals = [];
    for (const d of docs) {
      const w = db.applyOne(d);
      await w.result;
      locals.push(w.local);
    }
    const applied = now() - s;
    await Promise.all(locals);
    const local = now() - s;
    const t0 = now();
    let connected = null;
    const stop = db.db.status.subscribe((st) => { if (st.connected && connected === null) connected = now() - t0; });
    db.setOnline(true);
    await db.synced();
    const confirm = now() - t0;
    stop();
    const c = await db.count();
    await db.close();
    if (c !== n) W.fail("offline burst: count", c);
    return { applied, local, confirm, connected };
  },
  /**
   * One page imports `n` documents (in 10,000-document transactions for the IndexedDB
   * libraries; Warren's bulk path), then counts them and reads them all, online. Each
   * phase is timed, with the longest main-thread task and frame gap during it, and the
   * memory the page sees after it. The database stays for the cold open.
   */
  async importCountScan(user, name, n) {
    const db = await openDb(name, user);
    const out = { memory: {} };
    const phase = async (key, f) => {
      const { r, longest, gap } = await W.watchMainThread(async () => {
        const s = now();
        await f();
        return now() - s;
      });
      out[key] = r;
      out[`${key}LongestTask`] = longest;
      out[`${key}FrameGap`] = gap;
      out.memory[key] = await memory(db);
    };
    await phase("import", async () => {
      for (let i = 0; i < n; i += 10_000) await db.bulkInsert(await W.makeDocsSliced(user, i, Math.min(n, i + 10_000)));
    });
    if (db.synced) await phase("importConfirmed", () => db.synced());
    await phase("count", async () => {
      const c = await db.count();
      if (c !== n) W.fail("count after the import", c);
    });
    await phase("scan", async () => {
      const all = await db.scan();
      if (all.length !== n) W.fail("scan after the import", all.length);
    });
    await db.close();
    return out;
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
    const opened = now();
    const rows = await db.firstByOwner(`${user}:u${k}`, 50);
    const ms = now();
    const stats = db.stats ? await db.stats() : undefined;
    const want = W.ownerIds(user, k, COLD_N).slice(0, 50);
    const ok = rows.length === 50 && rows.every((r, j) => r.id === want[j] && W.sameDoc(r, W.makeDoc(user, W.indexOf(want[j]))));
    await db.close();
    return { ms, opened, ok, got: rows.length, first: rows[0]?.id, want: want[0], stats };
  })().catch((e) => ({ ok: false, error: String(e) }));
}
window.benchDoc = W.makeDoc;
window.benchReady = true;
