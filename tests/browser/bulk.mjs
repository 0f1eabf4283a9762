// `bulk`'s window of unconfirmed calls and its progress, in Debian's Chromium against a real
// `warren serve` (the benchmark's schema) that is paused (SIGSTOP) while the page
// writes: its connection stays up, so the page is connected and nothing is confirmed.
//
// 1. One `bulk` of 6 calls with `unconfirmed: 3`: 3 calls are made and the rest wait
//    (the outbox, and the memory it holds, stays at 3); `local` waits with them. Once
//    the server runs again, every call is made and confirmed.
// 2. Two `bulk`s of 3 calls each, the second begun once the first is durable locally:
//    the window is the database's, not each call's, so the second waits for the
//    first's confirmations. Regression: each `bulk` had a window of its own, so an
//    import made of many `bulk`s (a file read a piece at a time, each piece awaited to
//    `local`) kept every piece in the outbox while the server was slow (a server with
//    its default budgets confirmed a 100,000-document import in 161 s, the engine's
//    WebAssembly memory 203 MiB against 88 with confirmations keeping up).
// 3. The database closed while a `bulk` waits for that window: the `bulk` fails with
//    the closed database's error (it waited for ever).
// 4. `onProgress` (also in 1): items applied, durable, confirmed and refused, each count
//    only growing; a call the server refuses (another device created one of its
//    documents first) counts as refused.
import { join } from "node:path";
import { check, fail, finish, tempDir, freePort, startWarren, stopProcess, profile, root, staticSite } from "./harness.mjs";

const work = tempDir("bulk");
const site = staticSite(work, "client.html");
const port = await freePort();
const base = `http://127.0.0.1:${port}`;
const server = await startWarren(["--listen", `127.0.0.1:${port}`, "--data-dir", join(work, "data"),
  "--schema", join(root, "tests", "bench-browser", "bench.warren"), "--static-dir", site, "--dev-tokens"]);

const WINDOW = 3;
const CHUNK = 5;
/** How long the page writes against the paused server before it is looked at. */
const PAUSED_MS = 1500;

let ctx;
let stopped = false;
const pause = () => { server.kill("SIGSTOP"); stopped = true; };
const resume = () => { server.kill("SIGCONT"); stopped = false; };
try {
  ctx = await profile(join(work, "profile"));
  const p = await ctx.newPage();
  p.on("pageerror", (e) => console.log(`page error: ${e}`));
  await p.goto(`${base}/client.html`);
  await p.waitForFunction(() => window.ready === true);
  await p.evaluate(() => window.openDb("ann", "bulk-ann"));
  await p.waitForFunction(() => window.db.status.current.hasSchema && window.db.status.current.connected);

  // The page starts bulks (`calls`: [from, to] of the documents, each begun once the one
  // before is durable locally), and after PAUSED_MS says what stands.
  const start = (calls) => p.evaluate(async ([calls, WINDOW, CHUNK, PAUSED_MS]) => {
    window.bulks = [];
    let maxPending = 0;
    const watch = setInterval(() => (maxPending = Math.max(maxPending, window.db.status.current.pending)), 10);
    const t0 = performance.now();
    (async () => {
      for (const [from, to] of calls) {
        const b = { local: false, confirmed: false, progress: [] };
        const w = window.db.bulk("put", window.docs("ann", from, to),
          { maxItems: CHUNK, unconfirmed: WINDOW, onProgress: (p) => b.progress.push(p) });
        b.w = w;
        w.local.then(() => (b.local = true));
        w.confirmed.then(() => (b.confirmed = true));
        window.bulks.push(b);
        await w.local;
      }
    })();
    while (performance.now() - t0 < PAUSED_MS) await new Promise((r) => setTimeout(r, 50));
    clearInterval(watch);
    const s = window.db.status.current;
    return { connected: s.connected, pending: s.pending, maxPending,
      bulks: window.bulks.map((b) => ({ local: b.local, confirmed: b.confirmed, progress: b.progress.at(-1) })) };
  }, [calls, WINDOW, CHUNK, PAUSED_MS]);
  const finished = (n) => p.evaluate(async (n) => {
    await Promise.all(window.bulks.map((b) => b.w.confirmed));
    // Each count only grows, one call at a time.
    const keys = ["applied", "durable", "confirmed", "refused"];
    const grows = window.bulks.every((b) => b.progress.every((q, i) => i === 0 ||
      keys.every((k) => q[k] >= b.progress[i - 1][k])));
    return { pending: window.db.status.current.pending, count: await window.db.query("Doc.all().count()"), n,
      grows, last: window.bulks.map((b) => b.progress.at(-1)) };
  }, n);

  // 1. One bulk of 6 calls.
  pause();
  const one = await start([[0, 6 * CHUNK]]);
  check(`one bulk, the server paused: the page stays connected and ${WINDOW} calls wait for it, no more`,
    one.connected && one.pending === WINDOW && one.maxPending === WINDOW, JSON.stringify(one));
  check("and its `local` waits for the calls not yet made", one.bulks.length === 1 && !one.bulks[0].local, JSON.stringify(one));
  const sofar = one.bulks[0].progress;
  check(`its progress says so: ${WINDOW * CHUNK} items applied and durable, none confirmed`,
    sofar?.applied === WINDOW * CHUNK && sofar.durable === WINDOW * CHUNK && sofar.confirmed === 0 && sofar.refused === 0,
    JSON.stringify(sofar));
  resume();
  const oneDone = await finished(6 * CHUNK);
  check("the server running again, every call is made and confirmed", oneDone.pending === 0 && oneDone.count === 6 * CHUNK,
    JSON.stringify(oneDone));
  const all = oneDone.last[0];
  check(`and its progress ends at ${6 * CHUNK} applied, durable and confirmed, each count only growing`,
    oneDone.grows && all.applied === 6 * CHUNK && all.durable === 6 * CHUNK && all.confirmed === 6 * CHUNK && all.refused === 0,
    JSON.stringify(oneDone));

  // 2. Two bulks, the second begun once the first is durable.
  pause();
  const two = await start([[100, 100 + WINDOW * CHUNK], [200, 200 + WINDOW * CHUNK]]);
  check(`two bulks, the server paused: the first is durable, the second waits for its window (${WINDOW} calls wait, not ${2 * WINDOW})`,
    two.connected && two.pending === WINDOW && two.maxPending === WINDOW &&
      two.bulks.length === 2 && two.bulks[0].local && !two.bulks[1].local, JSON.stringify(two));
  resume();
  const twoDone = await finished(0);
  check("the server running again, both are made and confirmed",
    twoDone.pending === 0 && twoDone.count === 6 * CHUNK + 2 * WINDOW * CHUNK, JSON.stringify(twoDone));

  // 3. The database closed while a bulk waits for its window: the bulk fails, with the
  //    closed database's error, rather than waiting for ever; what it made stays in the
  //    outbox.
  pause();
  const closing = await p.evaluate(async ([WINDOW, CHUNK]) => {
    const w = window.db.bulk("put", window.docs("ann", 300, 300 + 2 * WINDOW * CHUNK), { maxItems: CHUNK, unconfirmed: WINDOW });
    w.result.catch(() => {});
    w.local.catch(() => {});
    w.confirmed.catch(() => {});
    while (window.db.status.current.pending < WINDOW) await new Promise((r) => setTimeout(r, 20));
    await new Promise((r) => setTimeout(r, 300));
    const pending = window.db.status.current.pending;
    await window.db.close();
    const settled = await Promise.race([
      w.result.then(() => "resolved", (e) => `rejected ${e.code}`),
      new Promise((r) => setTimeout(() => r("still waiting after 3 s"), 3000)),
    ]);
    return { pending, settled };
  }, [WINDOW, CHUNK]);
  resume();
  check("closed while a bulk waits for its window: the bulk fails with STORAGE_ERROR (the database is closed)",
    closing.pending === WINDOW && closing.settled === "rejected STORAGE_ERROR", JSON.stringify(closing));

  // 4. Refused by the server: offline, this page makes a bulk of 2 calls; another device
  //    of the same user creates the first call's first document meanwhile. Back online,
  //    that call is refused (the document exists) and the other confirmed.
  await p.evaluate(() => window.openDb("ann", "bulk-ann"));
  await p.waitForFunction(() => window.db.status.current.connected);
  await p.evaluate(() => window.db.setOnline(false));
  const [from, to] = [400, 400 + 2 * CHUNK];
  await p.evaluate(async ([from, to, CHUNK]) => {
    window.refusal = { progress: [] };
    const w = window.db.bulk("put", window.docs("ann", from, to), { maxItems: CHUNK, onProgress: (q) => window.refusal.progress.push(q) });
    window.refusal.w = w;
    w.confirmed.catch(() => {});
    await w.local;
  }, [from, to, CHUNK]);
  const other = await profile(join(work, "other"));
  try {
    const o = await other.newPage();
    await o.goto(`${base}/client.html`);
    await o.waitForFunction(() => window.ready === true);
    await o.evaluate(() => window.openDb("ann", "bulk-ann"));
    await o.waitForFunction(() => window.db.status.current.connected);
    await o.evaluate(async (from) => (await window.db.call("put1", { doc: window.doc("ann", from) }).confirmed), from);
  } finally {
    await other.close();
  }
  const refused = await p.evaluate(async () => {
    window.db.setOnline(true);
    const code = await window.refusal.w.confirmed.then(() => "confirmed", (e) => e.code);
    while (window.db.status.current.pending > 0) await new Promise((r) => setTimeout(r, 20));
    return { code, progress: window.refusal.progress.at(-1) };
  });
  check(`a call the server refuses counts as refused, the other as confirmed (${CHUNK} each)`,
    refused.code !== "confirmed" && refused.progress?.applied === 2 * CHUNK && refused.progress.durable === 2 * CHUNK &&
      refused.progress.confirmed === CHUNK && refused.progress.refused === CHUNK, JSON.stringify(refused));
} catch (e) {
  fail(e);
} finally {
  if (stopped) resume();
  await ctx?.close().catch(() => {});
  await stopProcess(server);
  finish();
}
