// The workloads on Warren: the npm package (js-package) against a real `warren serve`
// with bench.warren. Writes call the schema's functions; a write counts as done when
// its `local` promise resolves (durable in IndexedDB; the server confirms later).
import { open, literal } from "./lib/warren/dist/index.js";
// The schema from the start, as an offline-first app gives it (a first start with no
// network can write at once), in the page's scripts as a bundled app has it (the runner
// writes this module from bench.warren).
import schema from "./schema.js";

const SCAN_PAGE = 4000;

const params = new URLSearchParams(location.search);
/** The sync server: `sync=` in the page's address (the pages are served apart from it,
 * so that they load when it is down). */
const syncUrl = params.get("sync") ?? location.origin;
/** The engine on the page (`worker: false`): the library `warren-page`, or `worker=0`
 * (so that a CPU profile of the page sees it). */
const onPage = params.get("lib") === "warren-page" || params.get("worker") === "0" ? { worker: false } : {};

/** A token for `sub`, from the runner (`warren token`), or the server's dev endpoint. */
export async function tokenFor(sub) {
  if (window.warrenToken) return window.warrenToken(sub);
  const r = await fetch("/v1/dev/token", { method: "POST", headers: { "content-type": "application/json" },
    body: JSON.stringify({ sub }) });
  return (await r.json()).token;
}

const byOwner = (owner) => `Doc.byOwner(${literal(owner)})`;
const byId = (id) => `Doc.byId(${literal(id)})`;

/** Opens database `name` for `user`; `options` go to `open` (offline, cacheBytes...).
 * The token is fetched once per page and kept (the server may be down later); it is
 * given as a function, as the package's README shows, so that the engine starts while
 * it comes. */
const tokens = new Map();
const tokenOf = (user) => {
  if (!tokens.has(user)) tokens.set(user, tokenFor(user));
  return tokens.get(user);
};
export async function openDb(name, user, options = {}) {
  const db = await open({ url: syncUrl, token: () => tokenOf(user), name, schema, ...onPage, ...options });
  return {
    db,
    /** Any number of documents: the package's bulk path (chunks under the limits). */
    async bulkInsert(docs) {
      await db.bulk("put", docs).local;
    },
    async insertOne(doc) {
      await db.call("put1", { doc }).local;
    },
    /** A write awaited to its optimistic result only (the app goes on at once). */
    applyOne: (doc) => db.call("put1", { doc }),
    get: (id) => db.query(byId(id)),
    getMany: (ids) => Promise.all(ids.map((id) => db.query(byId(id)))),
    byOwner: (owner) => db.query(byOwner(owner)),
    firstByOwner: (owner, n) => db.query(`${byOwner(owner)}.take(${n})`),
    count: () => db.query("Doc.all().count()"),
    countOwner: (owner) => db.query(`${byOwner(owner)}.count()`),
    /** A query's result is bounded to 1 MiB (max_value_bytes), so a full scan reads
     * pages of SCAN_PAGE documents (`db.pages`: the set's `paginate` to the end). */
    async scan() {
      const out = [];
      for await (const page of db.pages("Doc.all()", { pageSize: SCAN_PAGE })) for (const d of page) out.push(d);
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
    setOnline: (on) => db.setOnline(on),
    stats: () => db.stats(),
    close: () => db.close(),
  };
}
