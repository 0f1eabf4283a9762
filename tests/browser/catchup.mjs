// A slow catch-up after a reopen, in Debian's Chromium against a real `warren serve`
// (the benchmark's schema), the page's connection passing through a TCP proxy here:
//
// 1. Offline, the page writes N documents across 50 partitions (bulk commits of a few
//    hundred each).
// 2. Back online through the proxy, which passes the page's push to the server and
//    drops all the server answers but the WebSocket's upgrade: the server applies
//    every commit, the page hears nothing, and closes with its outbox whole.
// 3. Reopened online through the proxy, which now lets the server's frames through a
//    slice every 250 ms: the welcome, a snapshot of each partition (holding the
//    commits' documents), then the commits' outcomes, over several seconds. Until the
//    outcomes come, the snapshots wait (they hold the effects of commits still
//    pending); they must not be handled while the stream still runs. Regression: the
//    page handled them anyway one second after they began to wait, with some
//    partitions' snapshots in and not others: the pending commits ran again on their
//    own documents, failed ("already exists"), and their documents in the other
//    partitions vanished from the view until the outcomes came. Polled every 50 ms,
//    the count must never fall below N, and all must be confirmed at the end.
import net from "node:net";
import { join } from "node:path";
import { check, fail, finish, until, tempDir, freePort, startWarren, stopProcess, profile, root, staticSite } from "./harness.mjs";

const N = 6000;
const SLICE = 24 * 1024;
const EVERY_MS = 250;

const work = tempDir("catchup");
const site = staticSite(work, "client.html");
const port = await freePort();
const args = ["--listen", `127.0.0.1:${port}`, "--data-dir", join(work, "data"),
  "--schema", join(root, "tests", "bench-browser", "bench.warren"), "--static-dir", site, "--dev-tokens",
  // No budgets: the server applies the push at once (what this test slows is the way back).
  "--commits-per-sec", "0", "--frames-per-sec", "0", "--cost-ms-per-sec", "0"];
const server = await startWarren(args);

// The proxy: plain HTTP passes as it is; a WebSocket's server-to-page bytes pass, are
// dropped after the upgrade's answer ("drop"), or go a slice at a time ("slow"), as
// `mode` was when it connected.
let mode = "pass";
const proxy = net.createServer((page) => {
  const now = mode;
  const up = net.connect(port, "127.0.0.1");
  let ws = null;
  let queue = Buffer.alloc(0);
  let timer = null;
  let ended = false;
  const pump = () => {
    if (queue.length === 0) {
      clearInterval(timer);
      timer = null;
      if (ended) page.end();
      return;
    }
    page.write(queue.subarray(0, SLICE));
    queue = queue.subarray(SLICE);
  };
  page.on("data", (d) => {
    ws ??= /upgrade:\s*websocket/i.test(d.toString("latin1"));
    up.write(d);
  });
  let head = true; // the upgrade's answer (its headers) always passes
  up.on("data", (d) => {
    const m = ws ? now : "pass";
    if (m === "drop") {
      if (!head) return;
      const end = d.indexOf("\r\n\r\n");
      head = end < 0;
      return void page.write(head ? d : d.subarray(0, end + 4));
    }
    if (m === "pass") return void page.write(d);
    queue = Buffer.concat([queue, d]);
    timer ??= setInterval(pump, EVERY_MS);
  });
  up.on("end", () => { ended = true; if (!timer) page.end(); });
  up.on("error", () => page.destroy());
  page.on("error", () => up.destroy());
  page.on("close", () => { clearInterval(timer); up.destroy(); });
});
const proxyPort = await freePort();
await new Promise((ok) => proxy.listen(proxyPort, "127.0.0.1", ok));
const base = `http://127.0.0.1:${proxyPort}`;

const committed = async () => {
  const text = await (await fetch(`http://127.0.0.1:${port}/metrics`)).text();
  return Number(/warren_commits_total\{outcome="committed"\} (\d+)/.exec(text)?.[1] ?? NaN);
};

let ctx;
try {
  ctx = await profile(join(work, "profile"));
  const openPage = async () => {
    const p = await ctx.newPage();
    p.on("pageerror", (e) => console.log(`page error: ${e}`));
    await p.goto(`${base}/client.html`);
    await p.waitForFunction(() => window.ready === true);
    await p.evaluate(() => window.openDb("ann", "catchup-ann"));
    return p;
  };

  // 1. Offline writes.
  const p1 = await openPage();
  await p1.waitForFunction(() => window.db.status.current.hasSchema);
  await p1.evaluate(async (n) => {
    window.db.setOnline(false);
    await window.db.bulk("put", window.docs("ann", 0, n)).local;
  }, N);
  // 2. Back online: the outbox, never sent, goes right after the Hello; the server
  //    applies it and its answers are lost.
  mode = "drop";
  const before = await committed();
  const commits = await p1.evaluate(() => window.db.status.current.pending);
  await p1.evaluate(() => window.db.setOnline(true));
  await until("the server to apply the page's commits", async () => (await committed()) >= before + commits);
  await p1.evaluate(() => window.db.close());
  await p1.close();
  check(`the server applied the ${commits} commits of ${N} documents while the page heard nothing`,
    commits > 10 && (await committed()) === before + commits, `${await committed()} - ${before}`);

  // 3. The slow catch-up.
  mode = "slow";
  const p = await openPage();
  const seen = await p.evaluate(async (n) => {
    const t0 = performance.now();
    let min = Infinity, samples = 0;
    for (;;) {
      min = Math.min(min, await window.db.query("Doc.all().count()"));
      samples++;
      const s = window.db.status.current;
      if (s.connected && s.pending === 0) break;
      if (performance.now() - t0 > 90_000) break;
      await new Promise((r) => setTimeout(r, 50));
    }
    return { min, samples, ms: performance.now() - t0, pending: window.db.status.current.pending,
      count: await window.db.query("Doc.all().count()") };
  }, N);
  console.log(`# catch-up: ${seen.ms.toFixed(0)} ms, ${seen.samples} counts, the least ${seen.min}`);
  check("the catch-up came slowly (over 2 s, so the frames waited that long for their outcomes)",
    seen.ms > 2000, `${seen.ms.toFixed(0)} ms`);
  check(`during it the view never lost a document: every count was ${N}`, seen.min === N, `the least ${seen.min}`);
  check("and in the end every commit is confirmed and every document there",
    seen.pending === 0 && seen.count === N, JSON.stringify(seen));
} catch (e) {
  fail(e);
} finally {
  await ctx?.close().catch(() => {});
  proxy.close();
  await stopProcess(server);
  finish();
}
