// The browser client through the package, in Debian's Chromium, against a real
// `warren serve` with the benchmark's schema (tests/bench-browser/bench.warren):
//
// 1. The engine runs in a dedicated worker, which loads as one module and takes the
//    engine compiled by the page (its .wasm is fetched once).
// 2. A write's `result` comes before its `local`, always (the gap is printed), and
//    does not wait for IndexedDB at all: when the write cannot be stored (another tab
//    took the database over), `result` still resolves and `local` rejects. Writes
//    made together share IndexedDB transactions.
// 3. `bulk` writes 20,000 documents in chunks under the limits: applied, durable,
//    confirmed, counted.
// 4. `close()` writes what the server confirmed: reopened offline, nothing is pending
//    and everything is there; a count reads no document; an index query after the
//    reopen costs a bounded number of IndexedDB reads.
// 5. A full scan with a small cache cap stays under the cap (the cache evicts). The
//    same through `db.pages`: every document once, in order; a page over the query
//    limits asked for again at half the size; a write between two pages shows in the
//    page after it, which was read ahead. A read asked in the same turn as a write of
//    its document sees it.
// 6. `flush()`, then the browser is killed: the confirmed data survives. And a page
//    that goes away as soon as a write is confirmed (no close(), no flush()) keeps it
//    confirmed: a confirmation is reported once what it brought is on disk. Writes
//    made offline survive a killed browser; confirming them runs no pending commit
//    again. A confirmation's data is written as soon as no flush is in flight, not on
//    the timer of the server's data.
// 7. A local query is answered while a new device receives a large catch-up.
// 8. While the app writes, the server's frames wait for it (local writes first), and
//    every write is confirmed after. A write made alone is sent at once; while the app
//    writes, its commits are sent together, at most every 100 ms. Back online while
//    the app writes, the connection's welcome is not held: it connects at once.
// 9. At open, the connection waits for the app's first reads: a query asked as the
//    database opens is answered before the replica connects, and it connects after.
// 10. The key filter's pages are read after the open's first reads, not at open; a
//    create with a fresh id then reads nothing.
// 11. A token whose `exp` has passed is renewed through the app's token function before
//    the engine (in its worker) connects with it: no connection is refused.
import { spawnSync } from "node:child_process";
import { join } from "node:path";
import { check, fail, finish, until, tempDir, freePort, startWarren, stopProcess, profile, root, staticSite } from "./harness.mjs";

const work = tempDir("client");
const site = staticSite(work, "client.html");
const port = await freePort();
const base = `http://127.0.0.1:${port}`;
const args = ["--listen", `127.0.0.1:${port}`, "--data-dir", join(work, "data"),
  "--schema", join(root, "tests", "bench-browser", "bench.warren"), "--static-dir", site, "--dev-tokens"];
let server = await startWarren(args);
const N = 20_000;
const profileDir = join(work, "profile");

async function page(ctx) {
  const p = ctx.pages()[0] ?? (await ctx.newPage());
  p.on("pageerror", (e) => console.log(`page error: ${e}`));
  p.on("crash", () => console.log("page crashed"));
  p.on("console", (m) => { if (m.type() === "error" || m.type() === "warning") console.log(`console: ${m.text()}`); });
  p.on("request", (r) => requests.push(new URL(r.url()).pathname));
  await p.goto(`${base}/client.html`);
  await p.waitForFunction(() => window.ready === true);
  return p;
}

let ctx;
/** The paths the pages asked the server for, the workers' requests included. */
const requests = [];
/** Kills the browser (`kill -9`), starts it again on the same profile and opens ann's
 *  database offline: the page it opened it on. */
async function killAndReopenOffline() {
  spawnSync("pkill", ["-9", "-f", profileDir]);
  await ctx.close().catch(() => {});
  ctx = await profile(profileDir);
  const p = await page(ctx);
  await p.evaluate(() => window.openDb("ann", "client-ann", { offline: true }));
  return p;
}
try {
  ctx = await profile(profileDir);
  let p = await page(ctx);
  await p.evaluate(() => window.openDb("ann", "client-ann"));

  // 1. In a worker.
  const stats0 = await p.evaluate(() => window.db.stats());
  check("the engine runs in a dedicated worker", stats0.worker === 1, JSON.stringify(stats0));
  // 1b. The page compiled the engine while the worker started, and handed it the module;
  // the worker is one module, its glue in it.
  const loaded = requests.filter((r) => r.startsWith("/pkg/"));
  check("the engine's .wasm is fetched once, and the worker loads one module",
    loaded.filter((r) => r.endsWith(".wasm")).length === 1 && loaded.includes("/pkg/dist/worker-text.js") &&
      !loaded.some((r) => r.startsWith("/pkg/wasm/") && r.endsWith(".js")), JSON.stringify(loaded));

  // 2. result, then local: always in that order.
  const order = await p.evaluate(async () => {
    const out = [];
    for (let i = 0; i < 30; i++) {
      const w = window.db.call("put1", { doc: window.doc("ann", 900_000 + i) });
      const seen = [];
      const r = w.result.then(() => seen.push(["result", performance.now()]));
      const l = w.local.then(() => seen.push(["local", performance.now()]));
      await Promise.all([r, l]);
      out.push(seen);
    }
    return out;
  });
  const gaps = order.map((s) => s[1][1] - s[0][1]).sort((a, b) => a - b);
  check(`each write's result comes before its local (median gap ${gaps[15].toFixed(2)} ms, largest ${gaps[29].toFixed(2)} ms)`,
    order.every((s) => s[0][0] === "result" && s[1][0] === "local" && s[1][1] >= s[0][1]), JSON.stringify(order.slice(0, 3)));

  // 2c. Writes made together share IndexedDB transactions (each local still its own).
  // Offline, so that no confirmed data is written meanwhile (it has flushes of its own).
  const together = await p.evaluate(async () => {
    window.db.setOnline(false);
    await window.db.flush();
    const before = (await window.db.stats()).flushes;
    const ws = [];
    for (let i = 0; i < 50; i++) ws.push(window.db.call("put1", { doc: window.doc("ann", 950_000 + i) }));
    await Promise.all(ws.map((w) => w.local));
    const n = (await window.db.stats()).flushes - before;
    window.db.setOnline(true);
    return n;
  });
  check(`50 writes made together are written in ${together} IndexedDB transactions`, together >= 1 && together <= 5);

  // 3. bulk.
  const bulk = await p.evaluate(async (n) => {
    const w = window.db.bulk("put", window.docs("ann", 0, n));
    const result = await w.result;
    await w.local;
    const c = await w.confirmed;
    return { calls: result.length, sum: result.reduce((a, b) => a + b, 0), position: c.position,
      count: await window.db.query("Doc.all().count()") };
  }, N);
  check(`bulk writes ${N} documents in ${bulk.calls} calls, confirmed`,
    bulk.sum === N && bulk.calls >= N / 500 && bulk.position > 0 && bulk.count === N + 80, JSON.stringify(bulk));

  // 4. close() writes what the server confirmed.
  await p.evaluate(() => window.confirmedAll());
  await p.evaluate(() => window.db.close());
  await p.evaluate(() => window.openDb("ann", "client-ann", { offline: true }));
  const reopened = await p.evaluate(async () => {
    const s0 = await window.db.stats();
    const count = await window.db.query("Doc.all().count()");
    const s1 = await window.db.stats();
    const top = await window.db.query('Doc.byOwner("ann:u7").take(50)');
    const s2 = await window.db.stats();
    return { pending: window.db.status.current.pending, count, s0, s1, s2, top: top.map((d) => d.id) };
  });
  check("after close and an offline reopen nothing is pending", reopened.pending === 0, JSON.stringify(reopened.pending));
  check("and every confirmed document is there", reopened.count === N + 80, `${reopened.count}`);
  // It reads the list of partitions (50) and counts each one's membership keys: from
  // the runs' records where a block lies wholly inside one partition's, else from the
  // blocks (those at its edges, and where runs share keys). No document: reading the
  // documents too would read more than twice as many entries.
  const read = reopened.s1.recordsLoaded - reopened.s0.recordsLoaded;
  const blocks = reopened.s1.blocksLoaded - reopened.s0.blocksLoaded;
  check(`a count after the reopen reads no document (${read} entries in ${blocks} blocks: partitions and memberships)`,
    read < 1.5 * N, JSON.stringify(reopened.s1));
  const want = [];
  for (let i = 7; want.length < 50; i += 50) want.push(`ann-d${String(i).padStart(6, "0")}`);
  const txns = reopened.s2.loadTransactions - reopened.s1.loadTransactions;
  check(`an index query after the reopen: the right 50, in ${txns} IndexedDB read transactions`,
    JSON.stringify(reopened.top) === JSON.stringify(want) && txns <= 3, JSON.stringify({ txns, top: reopened.top.slice(0, 3) }));
  await p.evaluate(() => window.db.close());

  // 5. A full scan under a small cache cap.
  await p.evaluate(() => window.openDb("ann", "client-ann", { offline: true, cacheBytes: 2 << 20 }));
  const scan = await p.evaluate(async () => {
    const ids = new Set();
    let after = null;
    let peak = 0;
    do {
      const page = await window.db.query(`Doc.all().paginate(2000${after === null ? "" : `, ${window.literal(after)}`})`);
      for (const d of page.data) ids.add(d.id);
      after = page.after;
      peak = Math.max(peak, (await window.db.stats()).cacheBytes);
    } while (after !== null);
    return { n: ids.size, peak, stats: await window.db.stats() };
  });
  check(`a full scan reads every document (${scan.n})`, scan.n === N + 80);
  check(`and the cache stays under its 2 MiB cap between queries (peak ${(scan.peak / 2 ** 20).toFixed(2)} MiB, ${(scan.stats.evictedBytes / 2 ** 20).toFixed(1)} MiB evicted)`,
    scan.peak <= 2 << 20 && scan.stats.evictedBytes > 0, JSON.stringify(scan.stats));
  // 5b. The same scan through `db.pages`; a page over the query limits is asked for
  // again at half the size.
  const pages = await p.evaluate(async () => {
    let unhandled = 0;
    addEventListener("unhandledrejection", () => unhandled++);
    const read = async (q, options) => {
      const sizes = [];
      const ids = [];
      for await (const page of window.db.pages(q, options)) {
        sizes.push(page.length);
        for (const d of page) ids.push(d.id);
      }
      return { sizes, ids };
    };
    const code = async (f) => { try { await f(); return "none"; } catch (e) { return e.code; } };
    const small = await read("Doc.all()", { pageSize: 3000 });
    const huge = await read("Doc.all()", { pageSize: 100000 });
    const owner = await read('Doc.byOwner("ann:u7")', { pageSize: 7 });
    const ownerAll = (await window.db.query('Doc.byOwner("ann:u7")')).map((d) => d.id);
    // Left after the first page.
    let first = 0;
    for await (const page of window.db.pages("Doc.all()", { pageSize: 500 })) { first = page.length; break; }
    const badSize = await code(() => window.db.pages("Doc.all()", { pageSize: 0 }).next());
    const notSet = await code(() => window.db.pages("1 + 1").next());
    // A source whose end is a comment: the `paginate` appended is not taken into it.
    const commented = (await window.db.pages("Doc.all() // every one", { pageSize: 10 }).next()).value?.length;
    await new Promise((r) => setTimeout(r, 200));
    return { small, huge, owner, ownerAll, first, badSize, notSet, commented, unhandled };
  });
  const sorted = (ids) => ids.every((id, i) => i === 0 || ids[i - 1] < id);
  check(`db.pages reads every document once, in order, in pages of 3,000 (${pages.small.sizes.length} pages)`,
    pages.small.ids.length === N + 80 && sorted(pages.small.ids) && pages.small.sizes.slice(0, -1).every((n) => n === 3000),
    JSON.stringify(pages.small.sizes));
  check(`pages of 100,000 (over the 1 MiB value limit) are asked for again smaller: ${pages.huge.sizes.length} pages of ${pages.huge.sizes[0]}`,
    pages.huge.ids.length === N + 80 && sorted(pages.huge.ids) && pages.huge.sizes.length > 1 &&
      pages.huge.sizes[0] < 100000 && pages.huge.sizes.slice(0, -1).every((n) => n === pages.huge.sizes[0]),
    JSON.stringify(pages.huge.sizes));
  check(`db.pages of an index query: the owner's ${pages.owner.ids.length}, as the query gives them, in pages of 7`,
    pages.owner.ids.length > 7 && JSON.stringify(pages.owner.ids) === JSON.stringify(pages.ownerAll) &&
      pages.owner.sizes.slice(0, -1).every((n) => n === 7),
    JSON.stringify({ sizes: pages.owner.sizes, ids: pages.owner.ids.slice(0, 3) }));
  check("a loop left after its first page is left cleanly; bad page sizes and sources are refused with their codes",
    pages.first === 500 && pages.unhandled === 0 && pages.badSize === "INVALID_ARGUMENT" && pages.notSet !== "none" &&
      pages.commented === 10,
    JSON.stringify({ first: pages.first, unhandled: pages.unhandled, badSize: pages.badSize, notSet: pages.notSet, commented: pages.commented }));
  await p.evaluate(() => window.db.close());
  // 5c. A read never overtakes a write asked before it: each read asked in the same
  // turn as the write of its document sees it. (As another user, so that the writes
  // stay out of ann's counts.)
  await p.evaluate(() => window.openDb("dee", "client-dee"));
  const seen = await p.evaluate(async () => {
    const reads = [];
    for (let i = 0; i < 20; i++) {
      const d = window.doc("dee", i);
      window.db.call("put1", { doc: d });
      reads.push(window.db.query(`Doc.byId(${window.literal(d.id)})`));
    }
    return (await Promise.all(reads)).filter((d) => d !== null).length;
  });
  check(`reads asked with the writes of their documents see them (${seen} of 20)`, seen === 20);
  // 5d. db.pages reads the next page while the app handles one: a write made in
  // between (not awaited) must still show in the pages after it. The document written
  // after the first page sorts into the second, which was already asked for.
  const between = await p.evaluate(async () => {
    const id = "dee-d000004-between";
    const ids = [];
    const sizes = [];
    for await (const page of window.db.pages("Doc.all()", { pageSize: 5 })) {
      if (sizes.length === 0) window.db.call("put1", { doc: { ...window.doc("dee", 4), id } });
      sizes.push(page.length);
      for (const d of page) ids.push(d.id);
    }
    return { ids, sizes, id };
  });
  check(`a write between two pages shows in the page after it (${between.ids.length} documents in pages of ${between.sizes.join(", ")})`,
    between.ids.length === 21 && between.ids[5] === between.id && sorted(between.ids) && between.sizes[0] === 5,
    JSON.stringify(between));
  await p.evaluate(() => window.db.close());

  // 6. flush(), then the browser is killed.
  await p.evaluate(() => window.openDb("ann", "client-ann"));
  await p.evaluate(async () => {
    const w = window.db.bulk("put", window.docs("ann", 100_000, 100_100));
    await w.confirmed;
    await window.db.flush();
  });
  p = await killAndReopenOffline();
  const afterKill = await p.evaluate(async () => ({
    pending: window.db.status.current.pending,
    count: await window.db.query("Doc.all().count()"),
  }));
  check("after flush() and a killed browser, the confirmed writes are on disk, none pending",
    afterKill.pending === 0 && afterKill.count === N + 180, JSON.stringify(afterKill));
  await p.evaluate(() => window.db.close());

  // 6b. The page goes away right after the server confirmed, with neither close() nor
  //     flush(): what was confirmed is on disk.
  await p.evaluate(() => window.openDb("ann", "client-ann"));
  // It leaves in the same task as the write's `confirmed` resolves.
  await p.evaluate(() => {
    window.db.bulk("put", window.docs("ann", 200_000, 200_100)).confirmed.then(() => {
      location.href = "about:blank";
    });
  });
  await p.waitForURL("about:blank");
  p = await page(ctx);
  await p.evaluate(() => window.openDb("ann", "client-ann", { offline: true }));
  const afterHide = await p.evaluate(async () => ({
    pending: window.db.status.current.pending,
    count: await window.db.query("Doc.all().count()"),
  }));
  check("a page that goes away as a write is confirmed keeps the confirmation: reopened offline, nothing pending",
    afterHide.pending === 0 && afterHide.count === N + 280, JSON.stringify(afterHide));
  await p.evaluate(() => window.db.close());

  // 6c. Single writes offline, each durable (`local`) before the next, and the browser
  //     killed with neither close() nor flush(): each small flush was a write-ahead
  //     record, not yet applied; the next open reads them, and nothing is lost.
  await p.evaluate(() => window.openDb("ann", "client-ann", { offline: true }));
  const singles = await p.evaluate(async () => {
    const before = await window.db.stats();
    for (let i = 0; i < 20; i++) await window.db.call("put1", { doc: window.doc("ann", 300_000 + i) }).local;
    const after = await window.db.stats();
    return { flushes: after.flushes - before.flushes, applies: after.applies - before.applies, unapplied: after.unapplied };
  });
  check(`20 single writes, each durable before the next, are ${singles.flushes} flushes of which ${singles.applies} applied`,
    singles.flushes >= 20 && singles.applies === 0 && singles.unapplied > 0, JSON.stringify(singles));
  p = await killAndReopenOffline();
  const afterKill2 = await p.evaluate(async () => {
    const s0 = await window.db.stats();
    const count = await window.db.query("Doc.all().count()");
    const last = await window.db.query('Doc.byId("ann-d300019")');
    return { pending: window.db.status.current.pending, count, last: last?.id, unapplied0: s0.unapplied, s1: await window.db.stats() };
  });
  check(`after a killed browser the 20 writes are there, pending (read from ${afterKill2.unapplied0} keys of write-ahead records at the open)`,
    afterKill2.pending === 20 && afterKill2.count === N + 300 && afterKill2.last === "ann-d300019" && afterKill2.unapplied0 > 0,
    JSON.stringify(afterKill2));
  // Online: the server confirms them.
  await p.evaluate(() => window.db.setOnline(true));
  await p.evaluate(() => window.confirmedAll());
  check("and online they are confirmed", (await p.evaluate(() => window.db.status.current.pending)) === 0);

  // 6d. Offline writes confirmed: each commit's effects wait for its outcome and are
  //     handled with it, so confirming one runs no pending commit again (handled apart,
  //     its own effects looked like a change to what it read: one run per confirmation).
  await p.evaluate(() => window.db.setOnline(false));
  const rerun = await p.evaluate(async () => {
    for (let i = 0; i < 200; i++) await window.db.call("put1", { doc: window.doc("ann", 310_000 + i) }).result;
    await window.db.flush();
    const before = await window.db.stats();
    window.db.setOnline(true);
    await window.confirmedAll();
    const after = await window.db.stats();
    return { reexecuted: after.reexecuted - before.reexecuted, pending: window.db.status.current.pending };
  });
  check(`200 offline writes confirmed, running ${rerun.reexecuted} pending commits again`,
    rerun.pending === 0 && rerun.reexecuted === 0, JSON.stringify(rerun));
  // 6e. A confirmation waits for its data to be written, never for the 25 ms timer of
  //     the server's data. The page holds a transaction on the database's `meta` as the
  //     client comes back online, until every confirmation is applied: the flush of
  //     the first ones' data waits in flight, and the others, which come meanwhile, are
  //     held for a flush of their own. It must go as soon as that one completes. (The
  //     server may confirm all 100 in one frame, now and then: one flush then holds
  //     them all. Either way none waits for the timer, and all are confirmed.)
  await p.evaluate(() => window.db.setOnline(false));
  const drain = await p.evaluate(async () => {
    for (let i = 0; i < 100; i++) await window.db.call("put1", { doc: window.doc("ann", 320_000 + i) }).result;
    await window.db.flush();
    const before = await window.db.stats();
    const hold = await window.holdMeta("client-ann");
    window.db.setOnline(true);
    const until = performance.now() + 20_000;
    let applied = false;
    while (!(applied = (await window.db.stats()).pending === 0) && performance.now() < until) {
      await new Promise((ok) => setTimeout(ok, 10));
    }
    const heldBack = window.db.status.current.pending;
    hold.release();
    await window.confirmedAll();
    await hold.done;
    const after = await window.db.stats();
    return { applied, heldBack, timed: after.confirmationsTimed - before.confirmationsTimed,
      flushes: after.flushes - before.flushes, pending: window.db.status.current.pending };
  });
  check(`100 offline writes confirmed through a blocked flush (${drain.heldBack} held for it) in ${drain.flushes} flushes, none waiting for the timer`,
    drain.applied && drain.heldBack > 0 && drain.pending === 0 && drain.flushes >= 1 && drain.timed === 0, JSON.stringify(drain));
  await p.evaluate(() => window.db.close());

  // 7. A new device of ann's: its catch-up (every document) streams in while a local
  //    query is answered.
  const catchUp = await p.evaluate(async () => {
    await window.openDb("ann", "client-ann-2");
    const t0 = performance.now();
    const q = window.db.query('Doc.byId("nothing")').then(() => performance.now() - t0);
    const live = window.db.live("Doc.all().count()");
    const full = new Promise((ok) => live.subscribe((n) => n >= 20_500 && ok(performance.now() - t0)));
    return { query: await q, full: await full };
  });
  check(`a local query is answered during a catch-up (in ${catchUp.query.toFixed(1)} ms; the catch-up took ${catchUp.full.toFixed(0)} ms)`,
    catchUp.query < catchUp.full, JSON.stringify(catchUp));
  await p.evaluate(() => window.db.close());

  // 8. Writes one after another for 300 ms (each awaited to its result only, as an app
  //    that goes on at once): the first are confirmed by the server while the later are
  //    made, and those frames wait until the writing stops. Before it, a write made
  //    alone (the replica idle): sent at once, without waiting.
  const writing = await p.evaluate(async () => {
    await window.openDb("bea", "client-bea");
    await window.confirmedAll();
    const s0 = await window.db.stats();
    await window.db.call("put1", { doc: window.doc("bea", 0) }).confirmed;
    const s1 = await window.db.stats();
    const alone = { sends: s1.sends - s0.sends, held: s1.sendsHeld - s0.sendsHeld };
    const ws = [];
    const t0 = performance.now();
    while (performance.now() - t0 < 300) {
      const w = window.db.call("put1", { doc: window.doc("bea", ws.length + 1) });
      await w.result;
      ws.push(w);
    }
    await ws[ws.length - 1].local;
    const ms = performance.now() - t0;
    const s2 = await window.db.stats();
    const confirmed = (await Promise.all(ws.map((w) => w.confirmed))).length;
    const s3 = await window.db.stats();
    const count = await window.db.query("Doc.all().count()");
    await window.db.close();
    return { alone, writes: ws.length, ms, held: s2.framesHeld - s1.framesHeld, sendsHeld: s3.sendsHeld - s1.sendsHeld,
      sends: s3.sends - s1.sends, confirmed, count };
  });
  // Grouped: a send every 100 ms and one at each end, or (a busy machine pausing the
  // loop longer than 25 ms, each pause a send or two more) one send for ten writes at
  // most. Sent as each write is durable, they were 72 sends for 330 writes.
  const grouped = (w) => w.sends <= 3 + w.ms / 100 || w.sends * 10 <= w.writes;
  check(`a write made alone is sent at once (${writing.alone.sends} send, ${writing.alone.held} waits)`,
    writing.alone.sends === 1 && writing.alone.held === 0, JSON.stringify(writing.alone));
  check(`while the app writes (${writing.writes} writes in ${writing.ms.toFixed(0)} ms), the server's frames wait for it (${writing.held} times), its commits go in ${writing.sends} sends, and every write is confirmed after`,
    writing.held >= 1 && writing.sendsHeld >= 1 && grouped(writing)
      && writing.confirmed === writing.writes && writing.count === writing.writes + 1, JSON.stringify(writing));

  // 8b. Back online while the app writes: the connection's welcome is handled at once
  //     (the outbox's push follows it), not held with the other frames until the
  //     writing pauses.
  const online = await p.evaluate(async () => {
    await window.openDb("bea", "client-bea", { offline: true });
    let connectedAt = null;
    const stop = window.db.status.subscribe((s) => { if (s.connected && connectedAt === null) connectedAt = performance.now(); });
    const ws = [];
    let onlineAt = null;
    const t0 = performance.now();
    while (performance.now() - t0 < 400) {
      const w = window.db.call("put1", { doc: window.doc("bea", 10_000 + ws.length) });
      await w.result;
      ws.push(w);
      if (onlineAt === null && performance.now() - t0 > 50) {
        window.db.setOnline(true);
        onlineAt = performance.now();
      }
    }
    const end = performance.now();
    const confirmed = (await Promise.all(ws.map((w) => w.confirmed))).length;
    stop();
    await window.db.close();
    return { writes: ws.length, confirmed, onlineAt: onlineAt - t0, connectedAt: connectedAt && connectedAt - t0, end: end - t0 };
  });
  check(`back online while the app writes, it connects at once (online at ${online.onlineAt.toFixed(0)} ms, connected at ${online.connectedAt?.toFixed(0)}, writes until ${online.end.toFixed(0)}), and every write is confirmed`,
    online.connectedAt !== null && online.connectedAt < online.end && online.confirmed === online.writes, JSON.stringify(online));

  // 9. Reopened online with a query asked at once (one owner's 400 documents, read
  //    from IndexedDB): its answer comes before the connection, which comes after. The
  //    wait lasts at most 250 ms from the open: the order is checked when the answer
  //    came sooner than that after open() was called (it is printed either way).
  const first = await p.evaluate(async () => {
    const t0 = performance.now();
    await window.openDb("ann", "client-ann");
    let connectedAt = null;
    const stop = window.db.status.subscribe((s) => { if (s.connected && connectedAt === null) connectedAt = performance.now(); });
    const rows = await window.db.query('Doc.byOwner("ann:u3")');
    const answeredAt = performance.now();
    await window.confirmedAll();
    stop();
    await window.db.close();
    return { rows: rows.length, answered: answeredAt - t0, connected: connectedAt === null ? null : connectedAt - t0 };
  });
  check(`at open the connection waits for the first reads: the query answered ${first.answered.toFixed(0)} ms after open(), connected at ${first.connected?.toFixed(0)} ms`,
    first.rows >= 400 && first.connected !== null && (first.answered >= 250 || first.connected > first.answered), JSON.stringify(first));

  // 2b. A write that cannot be stored: its result still comes, its local rejects.
  await p.evaluate(() => window.openDb("ann", "client-ann"));
  const fenced = await p.evaluate(async () => {
    await window.takeOver("client-ann");
    const w = window.db.call("put1", { doc: window.doc("ann", 990_000) });
    const result = await w.result.then((r) => r, (e) => `rejected ${e.code}`);
    const local = await w.local.then(() => "durable", (e) => e.code);
    return { result, local };
  });
  check("when IndexedDB refuses the write, result still resolves and local rejects",
    fenced.result === "ann-d990000" && fenced.local === "STORAGE_ERROR", JSON.stringify(fenced));
  // 10. The key filter's pages: not read at open, but once the first reads are answered;
  //     then a create with a fresh id reads nothing from IndexedDB.
  await p.evaluate(() => window.db.close().catch(() => {}));
  await p.evaluate(() => window.openDb("ann", "client-ann", { offline: true }));
  const later = await p.evaluate(async () => {
    const atOpen = (await window.db.stats()).filterLoaded;
    await window.db.query('Doc.byOwner("ann:u7").take(5)');
    const until = performance.now() + 5000;
    while (!(await window.db.stats()).filterLoaded && performance.now() < until) await new Promise((r) => setTimeout(r, 20));
    const s0 = await window.db.stats();
    await window.db.call("put1", { doc: window.doc("ann", 991_000) }).local;
    const s1 = await window.db.stats();
    return { atOpen, loaded: s0.filterLoaded, loads: s1.loadTransactions - s0.loadTransactions, absent: s1.absentByFilter - s0.absentByFilter };
  });
  check(`the key filter is read after the open's first reads (not at open), and a create then reads nothing (${later.loads} loads)`,
    later.atOpen === false && later.loaded === true && later.loads === 0 && later.absent >= 1, JSON.stringify(later));
  // 11. A stale token: renewed before the connection, which the server never refuses.
  await p.evaluate(() => window.db.close().catch(() => {}));
  const stale = await p.evaluate(() => window.openWithStaleToken("cy", "client-cy"));
  check("a token past its exp is renewed before connecting (asked twice, never unauthorized), and a write is confirmed",
    stale.asked === 2 && !stale.states.includes("unauthorized") && stale.wrote === true, JSON.stringify(stale));
} catch (e) {
  fail(e);
} finally {
  await ctx?.close().catch(() => {});
  await stopProcess(server);
  finish();
}
