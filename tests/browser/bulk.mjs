// `bulk`'s window of unconfirmed calls, in Debian's Chromium against a real
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
import { cpSync, mkdirSync, copyFileSync } from "node:fs";
import { join } from "node:path";
import { check, fail, finish, tempDir, freePort, startWarren, stopProcess, profile, root } from "./harness.mjs";

const work = tempDir("bulk");
const site = join(work, "site");
mkdirSync(site);
copyFileSync(join(root, "tests", "browser", "client.html"), join(site, "client.html"));
for (const d of ["dist", "wasm"]) cpSync(join(root, "js-package", d), join(site, "pkg", d), { recursive: true });
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
        const w = window.db.bulk("put", window.docs("ann", from, to), { maxItems: CHUNK, unconfirmed: WINDOW });
        const b = { local: false, confirmed: false, w };
        w.local.then(() => (b.local = true));
        w.confirmed.then(() => (b.confirmed = true));
        window.bulks.push(b);
        await w.local;
      }
    })();
    while (performance.now() - t0 < PAUSED_MS) await new Promise((r) => setTimeout(r, 50));
    clearInterval(watch);
    const s = window.db.status.current;
    return { connected: s.connected, pending: s.pending, maxPending, bulks: window.bulks.map((b) => ({ local: b.local, confirmed: b.confirmed })) };
  }, [calls, WINDOW, CHUNK, PAUSED_MS]);
  const finished = (n) => p.evaluate(async (n) => {
    await Promise.all(window.bulks.map((b) => b.w.confirmed));
    return { pending: window.db.status.current.pending, count: await window.db.query("Doc.all().count()"), n };
  }, n);

  // 1. One bulk of 6 calls.
  pause();
  const one = await start([[0, 6 * CHUNK]]);
  check(`one bulk, the server paused: the page stays connected and ${WINDOW} calls wait for it, no more`,
    one.connected && one.pending === WINDOW && one.maxPending === WINDOW, JSON.stringify(one));
  check("and its `local` waits for the calls not yet made", one.bulks.length === 1 && !one.bulks[0].local, JSON.stringify(one));
  resume();
  const oneDone = await finished(6 * CHUNK);
  check("the server running again, every call is made and confirmed", oneDone.pending === 0 && oneDone.count === 6 * CHUNK,
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
} catch (e) {
  fail(e);
} finally {
  if (stopped) resume();
  await ctx?.close().catch(() => {});
  await stopProcess(server);
  finish();
}
