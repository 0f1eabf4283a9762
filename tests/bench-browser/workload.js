// The workload driver every implementation runs (raw.js, dexie.js, idb.js, warren.js):
// the same documents, the same operations in the same order, the same checks. Each
// timed step keeps what it read and checks it after the timer stops; a wrong result
// throws, and the runner fails the benchmark.

export const OWNERS = 50;
export const BASE_TIME = 1_700_000_000_000;

/** Document `i` of `user`: {id, owner (one of 50), title (~40 chars), done, created, tags}. */
export function makeDoc(user, i) {
  const k = i % OWNERS;
  return {
    id: `${user}-d${String(i).padStart(7, "0")}`,
    owner: `${user}:u${k}`,
    title: `Task ${i}: water the plants in room ${k}`.padEnd(40, "."),
    done: i % 3 === 0,
    created: BASE_TIME + i * 1000,
    tags: [`t${i % 7}`, `t${i % 11}`],
  };
}

export function makeDocs(user, from, to) {
  const out = [];
  for (let i = from; i < to; i++) out.push(makeDoc(user, i));
  return out;
}

/**
 * `makeDocs`, made as a page would load an import (a file read, a fetch): in slices of
 * 1,000 with the event loop let through between them, so that the longest main-thread
 * task measured during an import is the library's, not the making of 10,000 objects.
 */
export async function makeDocsSliced(user, from, to) {
  const out = [];
  for (let i = from; i < to; i += 1_000) {
    out.push(...makeDocs(user, i, Math.min(to, i + 1_000)));
    await new Promise((ok) => setTimeout(ok, 0));
  }
  return out;
}

/** The ids of owner `k`'s documents among 0..n, in index order (by created). */
export function ownerIds(user, k, n) {
  const ids = [];
  for (let i = k; i < n; i += OWNERS) ids.push(makeDoc(user, i).id);
  return ids;
}

export const indexOf = (id) => Number(id.slice(id.lastIndexOf("-d") + 2));

export class BenchError extends Error {}

export function fail(what, detail) {
  throw new BenchError(`${what}: ${typeof detail === "string" ? detail : JSON.stringify(detail).slice(0, 400)}`);
}

/** Whether a document read back equals the one written (field by field). */
export function sameDoc(a, b) {
  if (!a || !b) return false;
  const keys = ["id", "owner", "title", "done", "created"];
  for (const k of keys) if (a[k] !== b[k]) return false;
  return Array.isArray(a.tags) && a.tags.length === 2 && a.tags[0] === b.tags[0] && a.tags[1] === b.tags[1]
    && Object.keys(a).length === 6;
}

export function checkDocs(what, got, expectIds, user) {
  if (!Array.isArray(got) || got.length !== expectIds.length)
    fail(`${what}: expected ${expectIds.length} documents`, `got ${got?.length}`);
  for (let j = 0; j < got.length; j++) {
    if (got[j].id !== expectIds[j]) fail(`${what}: wrong order or id at ${j}`, { got: got[j].id, want: expectIds[j] });
    if (!sameDoc(got[j], makeDoc(user, indexOf(expectIds[j])))) fail(`${what}: wrong content`, got[j]);
  }
}

export const now = () => performance.now();

/** The read workloads, each a function of a database handle; each checks its result. */
export function reads(user, n, indexRepeats = 100) {
  const docs = makeDocs(user, 0, n);
  const order = docs.map((_, i) => (i * 7919) % n);
  const expect = [];
  for (let k = 0; k < OWNERS; k++) expect.push(ownerIds(user, k, n));
  return {
    /** 10,000 reads by id, one at a time, in a shuffled but fixed order. */
    async getById(db) {
      const got = new Array(n);
      const s = now();
      for (let j = 0; j < n; j++) got[j] = await db.get(docs[order[j]].id);
      const t = now() - s;
      for (let j = 0; j < n; j++) if (!sameDoc(got[j], docs[order[j]])) fail("read by id", { want: docs[order[j]], got: got[j] });
      return t;
    },
    /** The same reads, all asked at once. */
    async getByIdBatch(db) {
      const ids = order.map((j) => docs[j].id);
      const s = now();
      const got = await db.getMany(ids);
      const t = now() - s;
      for (let j = 0; j < n; j++) if (!sameDoc(got[j], docs[order[j]])) fail("reads by id at once", { want: docs[order[j]], got: got[j] });
      return t;
    },
    /** One owner's documents ordered by date, 100 times (cycling through the owners). */
    async indexQuery(db) {
      const results = new Array(indexRepeats);
      const s = now();
      for (let r = 0; r < indexRepeats; r++) results[r] = await db.byOwner(`${user}:u${r % OWNERS}`);
      const t = now() - s;
      for (let r = 0; r < indexRepeats; r++) checkDocs(`index query ${r}`, results[r], expect[r % OWNERS], user);
      return t;
    },
    async count(db) {
      const s = now();
      const c = await db.count();
      const t = now() - s;
      if (c !== n) fail("count", c);
      return t;
    },
    async scan(db) {
      const s = now();
      const all = await db.scan();
      const t = now() - s;
      if (all.length !== n) fail("full scan: length", all.length);
      const byId = new Map(all.map((d) => [d.id, d]));
      if (byId.size !== n) fail("full scan: distinct ids", byId.size);
      for (const d of docs) if (!sameDoc(byId.get(d.id), d)) fail("full scan: content", { want: d, got: byId.get(d.id) });
      return t;
    },
  };
}

/** `singles` inserts from document `from` on, each durable before the next. */
export async function singleInserts(db, user, from, singles) {
  const more = makeDocs(user, from, from + singles);
  const s = now();
  for (const d of more) await db.insertOne(d);
  const t = now() - s;
  for (const d of [more[0], more[singles - 1]]) if (!sameDoc(await db.get(d.id), d)) fail("single inserts: read back", d.id);
  return t;
}

/**
 * The main suite on a fresh database: a bulk insert, then every read workload warm
 * (right after the writes, the database open all along) and after closing and
 * reopening it (a fresh open on the same profile before each one), single durable
 * inserts warm and after a reopen, and a bulk insert of another `n` after a reopen.
 * `open()` gives a fresh handle on the same database.
 */
export async function suite(open, user, { n = 10_000, singles = 1_000, indexRepeats = 100 } = {}) {
  const t = {};
  let db = await open();
  const docs = makeDocs(user, 0, n);
  let s = now();
  await db.bulkInsert(docs);
  t.bulkInsert = now() - s;
  const c0 = await db.count();
  if (c0 !== n) fail("bulk insert: count after", c0);
  // Warren: the reads are measured once the server has confirmed the bulk insert
  // (untimed here, reported as its own row).
  if (db.synced) {
    s = now();
    await db.synced();
    t.bulkConfirmed = now() - s;
  }
  const w = reads(user, n, indexRepeats);
  for (const [name, f] of Object.entries(w)) t[name] = await f(db);
  // After a reopen: each read workload right after its own fresh open.
  const reopen = async () => {
    await db.close();
    db = await open();
  };
  for (const [name, f] of Object.entries(w)) {
    await reopen();
    t[`${name}Reopen`] = await f(db);
  }
  // Single durable inserts right after a reopen, then 1,000 more on the open database.
  await reopen();
  t.singleInsertsReopen = await singleInserts(db, user, n, singles);
  t.singleInserts = await singleInserts(db, user, n + singles, singles);
  if (db.synced) {
    s = now();
    await db.synced();
    t.singlesConfirmed = now() - s;
  }
  // A bulk insert of another n right after a reopen.
  await reopen();
  const held = n + 2 * singles;
  const more = makeDocs(user, held, held + n);
  s = now();
  await db.bulkInsert(more);
  t.bulkInsertReopen = now() - s;
  const c1 = await db.count();
  if (c1 !== held + n) fail("bulk insert after a reopen: count after", c1);
  if (db.synced) await db.synced();
  await db.close();
  return t;
}

/** Percentile `p` (0..1) of `xs`. */
export function percentile(xs, p) {
  const a = [...xs].sort((x, y) => x - y);
  return a[Math.min(a.length - 1, Math.max(0, Math.ceil(p * a.length) - 1))];
}

/**
 * The floor of any call to an engine in a worker: `n` round trips, one at a time, from
 * the page to a worker that answers each message at once with what it got (a message
 * the size of a read by id: `{ id, m, a: [source] }`). Gives the total in ms.
 */
export async function workerEcho(n) {
  const src = "onmessage = (e) => postMessage(e.data);";
  const url = URL.createObjectURL(new Blob([src], { type: "text/javascript" }));
  const w = new Worker(url);
  let answer = null;
  w.onmessage = (e) => answer(e.data);
  const ask = (m) => new Promise((resolve) => { answer = resolve; w.postMessage(m); });
  try {
    await ask(null);
    const s = now();
    for (let i = 0; i < n; i++) {
      const m = await ask({ id: i, m: "query", a: [`Doc.byId("doc-${i}")`] });
      if (m.id !== i) fail("worker echo", m);
    }
    return now() - s;
  } finally {
    w.terminate();
    URL.revokeObjectURL(url);
  }
}

/**
 * A local write to a live query's notification: `iterations` single inserts for one
 * owner, each timed from the write call to the live query's callback showing it.
 */
export async function liveLatency(db, user, { iterations = 200 } = {}) {
  if (!db.live) return null;
  const owner = `${user}:live`;
  let waiting = null;
  const stop = await db.live(owner, (rows) => {
    if (waiting && rows.length && rows[0].id === waiting.id) {
      const w = waiting;
      waiting = null;
      w.resolve(now());
    }
  });
  const times = [];
  for (let i = 0; i < iterations; i++) {
    const d = { ...makeDoc(user, 900_000 + i), owner };
    const seen = new Promise((resolve) => { waiting = { id: d.id, resolve }; });
    const s = now();
    const write = db.insertOne(d);
    const t1 = await seen;
    times.push(t1 - s);
    await write;   // durable before the next write, so writes do not pile up
  }
  stop();
  const c = await db.countOwner(owner);
  if (c !== iterations) fail("live: count after", c);
  return { p50: percentile(times, 0.5), p99: percentile(times, 0.99), n: times.length };
}

/**
 * Writes while a live query is open, as an app offline for a while makes them: `n`
 * writes of one owner one after another, the live query on that owner's newest 5
 * answering each. Warren is offline, so that its writes pile up pending, and each is
 * awaited to its optimistic result (the app goes on at once); the IndexedDB libraries'
 * adds are awaited. Gives the time of the first `part` writes and of the last: a cost
 * per write that grows with what is pending shows as the last above the first.
 */
export async function liveWhileWriting(db, user, { n = 2000, part = 500 } = {}) {
  if (!db.live) return null;
  const owner = `${user}:pile`;
  let seen = 0;
  const stop = await db.live(owner, () => { seen++; });
  if (db.setOnline) await db.setOnline(false);
  const parts = [];
  let s = now();
  for (let i = 0; i < n; i++) {
    const d = { ...makeDoc(user, 800_000 + i), owner };
    if (db.applyOne) await db.applyOne(d).result;
    else await db.insertOne(d);
    if ((i + 1) % part === 0) {
      const t = now();
      parts.push(t - s);
      s = t;
    }
  }
  stop();
  const c = await db.countOwner(owner);
  if (c !== n) fail("writes under a live query: count after", c);
  if (seen < 2) fail("writes under a live query: the live query answered", seen);
  return { first: parts[0], last: parts[parts.length - 1] };
}

/**
 * What the page's main thread went through: the longest task (the Long Tasks API, tasks
 * over 50 ms) and the longest gap between animation frames, while `f` runs.
 */
export async function watchMainThread(f) {
  let longest = 0;
  let gap = 0;
  const obs = typeof PerformanceObserver !== "undefined" ? new PerformanceObserver((list) => {
    for (const e of list.getEntries()) longest = Math.max(longest, e.duration);
  }) : null;
  try { obs?.observe({ type: "longtask", buffered: false }); } catch { /* not supported */ }
  let running = true;
  let last = now();
  const frame = () => {
    const t = now();
    gap = Math.max(gap, t - last);
    last = t;
    if (running) requestAnimationFrame(frame);
  };
  requestAnimationFrame(frame);
  try {
    const r = await f();
    return { r, longest, gap };
  } finally {
    running = false;
    // Entries are delivered after the task that ended: let them arrive.
    await new Promise((ok) => setTimeout(ok, 50));
    obs?.disconnect();
  }
}
