// The browser benchmark: the same workloads (workload.js) on hand-written IndexedDB,
// idb 8, Dexie 4 and Warren, in headless Chromium with on-disk profiles, in one run.
// Prints one table of medians, the ratios to Dexie and whether each goal is met; fails
// if any result is wrong.
//
//   node tests/bench-browser/run.mjs [options]   (--help lists them)
//
// Needs: Debian's Chromium (.ci/setup-browser), the package built (.ci/build-package),
// `npm ci` here, and the release server (cargo build --release -p warren-server).
// .ci/bench-browser does all of it. docs/BENCHMARKS.md explains the figures.
import { cpSync, existsSync, mkdirSync, readFileSync, readdirSync, rmSync, statSync, writeFileSync } from "node:fs";
import { createServer } from "node:http";
import { cpus, loadavg, totalmem } from "node:os";
import { join, dirname, extname } from "node:path";
import { fileURLToPath } from "node:url";
import { execFileSync, spawn } from "node:child_process";
import { freePort, profile, root, stopProcess, target, tempDir } from "../browser/harness.mjs";

const here = dirname(fileURLToPath(import.meta.url));
const args = process.argv.slice(2);
// Every option is read through these, which note its name: anything else on the command
// line stops the runner before any work (below), and `--help` lists them.
const known = new Map();
const opt = (name, dflt, what = "N") => {
  known.set(name, what);
  const i = args.indexOf(name);
  return i >= 0 ? Number(args[i + 1]) : dflt;
};
const strOpt = (name, dflt, what) => {
  known.set(name, what);
  const i = args.indexOf(name);
  return i >= 0 ? args[i + 1] : dflt;
};
const flag = (name) => {
  known.set(name, null);
  return args.includes(name);
};
const RUNS = opt("--runs", 5);
const COLD_RUNS = opt("--cold-runs", 3);
const LIVE_ITER = opt("--live-iterations", 200);
const XTAB_ITER = opt("--xtab-iterations", 100);
// warren-page: Warren with its engine on the page (`worker: false`), for what the
// worker costs and gives (the goals are judged on the default, `warren`).
const ALL_LIBS = ["raw", "idb", "dexie", "warren", "warren-page"];
const LIBS = strOpt("--libs", ALL_LIBS.join(","), ALL_LIBS.join(",")).split(",");
for (const l of LIBS) if (!ALL_LIBS.includes(l)) throw new Error(`--libs: no library "${l}" (${ALL_LIBS.join(", ")})`);
const N = opt("--n", 10_000);
const BIG = opt("--big", 100_000);
const BURST = [500, 5000];
// "million" (a page importing a million documents) runs only when asked for: `--million`
// adds it, `--only million` runs it alone.
const ALL_PHASES = ["suite", "live", "burst", "big", "cold", "million"];
const PHASES = new Set(strOpt("--only", ALL_PHASES.slice(0, -1).join(","), ALL_PHASES.join(",")).split(","));
for (const p of PHASES) if (!ALL_PHASES.includes(p)) throw new Error(`--only: no phase "${p}" (${ALL_PHASES.join(", ")})`);
if (flag("--skip-cold")) PHASES.delete("cold");
if (flag("--million")) PHASES.add("million");
const MILLION = PHASES.has("million");
const LIVE_LIBS = ["dexie", "warren", "warren-page"].filter((l) => LIBS.includes(l));
const XTAB_LIBS = ["dexie", "warren"].filter((l) => LIBS.includes(l));
const PROFILE_DIR = strOpt("--cpuprofile", null, "DIR");
const JSON_OUT = strOpt("--json", process.env.BENCH_JSON, "FILE");
// The server with its default per-identity limits (budgets and quotas), as an end user
// meets them: how fast one user's import and burst are confirmed then.
const SERVER_LIMITS = flag("--server-limits");
// V8's flags for every browser of the run (experiments: `--no-wasm-lazy-compilation`).
const JS_FLAGS = strOpt("--js-flags", null, "FLAGS");
{
  const usage = () =>
    `usage: node tests/bench-browser/run.mjs ${[...known].map(([k, v]) => `[${k}${v ? ` ${v}` : ""}]`).join(" ")}\n` +
    `docs/BENCHMARKS.md ("Browser") explains the workloads and the figures.`;
  for (let i = 0; i < args.length; i++) {
    if (args[i] === "--help" || args[i] === "-h") {
      console.log(usage());
      process.exit(0);
    }
    if (known.get(args[i]) && i + 1 < args.length) i++;
    else if (known.get(args[i]) !== null) {
      console.error(`unknown or incomplete argument: ${args[i]}\n${usage()}`);
      process.exit(2);
    }
  }
}
const started = Date.now();
const log = (...a) => console.error(`[${((Date.now() - started) / 1000).toFixed(0).padStart(5)} s]`, ...a);

// The static site: the pages, the implementations and the libraries they import, served
// by a plain HTTP server here (the pages must load when the sync server is down).
const work = tempDir("bench-browser");
const site = join(work, "site");
mkdirSync(join(site, "lib"), { recursive: true });
for (const f of ["bench.html", "bench.warren", "page.js", "workload.js", "raw.js", "idb.js", "dexie.js", "warren.js"])
  cpSync(join(here, f), join(site, f));
// Warren's schema as a bundled app has it: a string in the page's scripts.
writeFileSync(join(site, "schema.js"), `export default ${JSON.stringify(readFileSync(join(here, "bench.warren"), "utf8"))};\n`);
cpSync(join(here, "node_modules", "dexie", "dist", "modern", "dexie.min.mjs"), join(site, "lib", "dexie", "dexie.min.mjs"));
cpSync(join(here, "node_modules", "idb", "build"), join(site, "lib", "idb"), { recursive: true });
cpSync(process.env.WARREN_DIST_DIR || join(root, "js-package", "dist"), join(site, "lib", "warren", "dist"), { recursive: true });
cpSync(process.env.WARREN_WASM_DIR || join(root, "js-package", "wasm"), join(site, "lib", "warren", "wasm"), { recursive: true });
const types = { ".html": "text/html", ".js": "text/javascript", ".mjs": "text/javascript", ".wasm": "application/wasm", ".warren": "text/plain" };
// As a static host serves an app (Vite's preview, a CDN): with a validator, revalidated
// on every load (`no-cache`), so a page loaded again on a profile takes its files, and the
// code the browser compiled from them, from its cache after a 304.
const files = createServer((req, res) => {
  const path = join(site, decodeURIComponent(new URL(req.url, "http://x").pathname));
  if (!path.startsWith(site) || !existsSync(path) || !extname(path)) { res.writeHead(404); res.end(); return; }
  const st = statSync(path);
  const etag = `"${st.size.toString(16)}-${Math.floor(st.mtimeMs).toString(16)}"`;
  const headers = { "content-type": types[extname(path)] || "application/octet-stream", etag, "cache-control": "no-cache" };
  if (req.headers["if-none-match"] === etag) { res.writeHead(304, headers); res.end(); return; }
  res.writeHead(200, headers);
  res.end(readFileSync(path));
});
await new Promise((ok) => files.listen(0, "127.0.0.1", ok));
const base = `http://127.0.0.1:${files.address().port}/bench.html`;

// The release server, on a port kept across its restarts (a copy, so that a rebuild
// during the run does not touch the binary being run).
const syncPort = await freePort();
const sync = `ws://127.0.0.1:${syncPort}/v1/sync`;
const bin = join(work, "warren");
cpSync(process.env.WARREN_BIN || join(target, "release", "warren"), bin);
const dataDir = join(work, "data");
let server = null;
async function startServer() {
  // The per-identity limits (abuse protection: the commit rate, the region-time budget
  // of 10 ms a second, the quotas of 100,000 documents and 64 MiB) are off, as in the
  // server benchmark: one user's 5,000-write offline burst or 100,000-document import
  // would otherwise drain at the server's pace for one identity, not the client's
  // (docs/BENCHMARKS.md). `--server-limits` keeps them.
  const unlimited = ["--commits-per-sec", "0", "--frames-per-sec", "0", "--cost-ms-per-sec", "0",
    "--quota-documents", "0", "--quota-bytes", "0", "--quota-partitions", "0"];
  server = spawn(bin, ["serve", "--listen", `127.0.0.1:${syncPort}`, "--data-dir", dataDir,
    "--schema", join(here, "bench.warren"), ...(SERVER_LIMITS ? [] : unlimited)],
  { stdio: ["ignore", "pipe", "inherit"], env: { ...process.env, WARREN_LOG: "warn" } });
  await new Promise((ok, err) => {
    server.stdout.on("data", (d) => { if (String(d).includes("serving on")) ok(); });
    server.on("exit", (c) => err(new Error(`server exited ${c}`)));
  });
}
async function stopServer() {
  const s = server;
  server = null;
  await stopProcess(s);
}
await startServer();
const tokens = new Map();
const tokenFor = (sub) => {
  if (!tokens.has(sub))
    tokens.set(sub, execFileSync(bin, ["token", "--data-dir", dataDir, "--sub", sub]).toString().trim());
  return tokens.get(sub);
};

// The tab's memory: the renderer processes of the browser (the page and its workers run
// in one), from /proc: resident now, and the peak since the last reset.
function renderers() {
  const out = [];
  for (const pid of readdirSync("/proc").filter((x) => /^\d+$/.test(x))) {
    try {
      if (!readFileSync(`/proc/${pid}/cmdline`, "utf8").includes("--type=renderer")) continue;
      const st = readFileSync(`/proc/${pid}/status`, "utf8");
      out.push({ pid, rss: Number(/VmRSS:\s+(\d+)/.exec(st)[1]) * 1024, hwm: Number(/VmHWM:\s+(\d+)/.exec(st)[1]) * 1024 });
    } catch { /* gone */ }
  }
  return out;
}
/** Samples the largest renderer's resident memory until stopped; gives the peak. */
function sampleMemory() {
  let peak = 0;
  const t = setInterval(() => { for (const r of renderers()) peak = Math.max(peak, r.rss); }, 100);
  return () => { clearInterval(t); for (const r of renderers()) peak = Math.max(peak, r.rss); return peak; };
}

const root_profiles = join(work, "profiles");
const browser = (dir) => profile(dir, JS_FLAGS ? { args: [`--js-flags=${JS_FLAGS}`] } : {});
let ctx = await browser(join(root_profiles, "main"));
const browserVersion = await (async () => {
  const p = await ctx.newPage();
  const ua = await p.evaluate(() => navigator.userAgent);
  await p.close();
  return ua.match(/Chrome\/([\d.]+)/)?.[1] ?? ua;
})();

async function page(query, c = ctx) {
  const p = await c.newPage();
  p.on("pageerror", (e) => console.error(`page error (${query}): ${e}`));
  p.on("crash", () => console.error(`PAGE CRASHED (${query})`));
  p.on("console", (m) => { if (m.type() === "error" || process.env.BENCH_DEBUG) console.error(`console (${query}): ${m.text()}`); });
  await p.exposeFunction("warrenToken", tokenFor);
  await p.goto(`${base}?${query}&sync=${encodeURIComponent(sync)}`);
  await p.waitForFunction(() => window.benchReady === true);
  return p;
}

/** A CPU profile of page `p` (--cpuprofile): started here, saved by `stopProfile`. */
async function startProfile(p) {
  const cdp = await ctx.newCDPSession(p);
  await cdp.send("Profiler.enable");
  await cdp.send("Profiler.setSamplingInterval", { interval: 200 });
  await cdp.send("Profiler.start");
  return cdp;
}
async function stopProfile(cdp, name) {
  const { profile: prof } = await cdp.send("Profiler.stop");
  mkdirSync(PROFILE_DIR, { recursive: true });
  writeFileSync(join(PROFILE_DIR, `${name}.cpuprofile`), JSON.stringify(prof));
}

const results = {};   // results[workload][lib] = [values]
const record = (w, lib, v) => { if (v !== undefined && v !== null) ((results[w] ??= {})[lib] ??= []).push(v); };
const median = (xs) => {
  const a = [...xs].sort((x, y) => x - y);
  return a.length % 2 ? a[(a.length - 1) / 2] : (a[a.length / 2 - 1] + a[a.length / 2]) / 2;
};
const rotate = (r) => LIBS.map((_, i) => LIBS[(i + r) % LIBS.length]);

let failed = false;
try {
  // 1. The suite: RUNS runs, each library once per run in a rotating order, each on a
  // fresh database in a fresh page: every workload warm and after a reopen.
  for (let r = 0; r < (PHASES.has("suite") ? RUNS : 0); r++) {
    for (const lib of rotate(r)) {
      // Profiled, the engine runs on the page (the page's profiler does not see a worker).
      const profiled = PROFILE_DIR && lib === "warren";
      const p = await page(`lib=${lib}${profiled ? "&worker=0" : ""}`);
      const cdp = profiled ? await startProfile(p) : null;
      const t = await p.evaluate(({ user, n }) => window.bench.suite(user, { n, singles: n / 10 }), { user: `${lib}${r}`, n: N });
      if (cdp) await stopProfile(cdp, `suite-${r}`);
      for (const [w, v] of Object.entries(t)) record(w, lib, v);
      await p.close();
      log(`run ${r + 1}/${RUNS} ${lib}: ${Object.entries(t).map(([k, v]) => `${k} ${v.toFixed(0)}`).join(", ")}`);
    }
  }

  // 2. Live queries: a local write to the callback; writes piling up (offline) under a
  // live query; a write in one tab to the other's.
  for (let r = 0; r < (PHASES.has("live") ? RUNS : 0); r++) {
    for (const lib of LIVE_LIBS) {
      const p = await page(`lib=${lib}`);
      const l = await p.evaluate(([user, n]) => window.bench.live(user, { iterations: n }), [`live${lib}${r}`, LIVE_ITER]);
      record("liveP50", lib, l.p50);
      record("liveP99", lib, l.p99);
      record("livePileFirst", lib, l.pile?.first);
      record("livePileLast", lib, l.pile?.last);
      log(`live ${lib} run ${r + 1}: p50 ${l.p50.toFixed(1)} ms, p99 ${l.p99.toFixed(1)}; 2,000 writes under a live query: the first 500 ${l.pile.first.toFixed(0)} ms, the last ${l.pile.last.toFixed(0)}`);
      await p.close();
    }
  }
  for (const lib of PHASES.has("live") ? XTAB_LIBS : []) {
    for (let r = 0; r < Math.max(1, Math.min(RUNS, 3)); r++) {
      const user = `x${lib}${r}`;
      const name = `xtab-${lib}-${r}`;
      const owner = `${user}:live`;
      const reader = await page(`lib=${lib}`);
      const writer = await page(`lib=${lib}`);
      await reader.evaluate(([u, n, o]) => window.bench.openShared(u, n, o), [user, name, owner]);
      await writer.evaluate(([u, n]) => window.bench.openShared(u, n, null), [user, name]);
      const times = [];
      for (let i = 0; i < XTAB_ITER; i++) {
        const doc = await writer.evaluate(([u, i, o]) => ({ ...window.benchDoc(u, i), owner: o }), [user, 800_000 + i, owner]);
        const t0 = await writer.evaluate((d) => window.bench.write(d), doc);
        const t1 = await reader.evaluate((id) => window.bench.waitFor(id), doc.id);
        times.push(t1 - t0);
      }
      times.sort((a, b) => a - b);
      record("xtabP50", lib, times[Math.ceil(0.5 * times.length) - 1]);
      record("xtabP99", lib, times[Math.ceil(0.99 * times.length) - 1]);
      await reader.close();
      await writer.close();
      log(`cross-tab ${lib} run ${r + 1}: p50 ${times[Math.ceil(0.5 * times.length) - 1].toFixed(2)} ms`);
    }
  }

  // 3. Offline bursts: 500 and 5,000 writes offline, then (Warren) back online.
  for (let r = 0; r < (PHASES.has("burst") ? RUNS : 0); r++) {
    for (const lib of rotate(r)) {
      for (const n of BURST) {
        const profiled = PROFILE_DIR && lib === "warren";
        const p = await page(`lib=${lib}${profiled ? "&worker=0" : ""}`);
        const cdp = profiled ? await startProfile(p) : null;
        const b = await p.evaluate(([u, n]) => window.bench.offlineBurst(u, n), [`burst${lib}${r}n${n}`, n]);
        if (cdp) await stopProfile(cdp, `burst${n}-${r}`);
        await p.close();
        record(`burst${n}Local`, lib, b.local);
        record(`burst${n}Confirm`, lib, b.confirm);
        log(`offline burst ${n} ${lib} run ${r + 1}: local ${b.local.toFixed(0)} ms${b.confirm !== undefined ? `, connected after ${b.connected?.toFixed(0)} ms, all confirmed ${b.confirm.toFixed(0)} ms after reconnecting` : ""}`);
      }
    }
  }

  // 4. One page imports BIG documents, counts them, reads them all; each library in a
  // browser of its own (its memory alone), whose profile keeps the database for the
  // cold opens.
  const bigProfile = (lib) => join(root_profiles, `big-${lib}`);
  for (const lib of PHASES.has("big") || PHASES.has("cold") ? LIBS : []) {
    await ctx.close();
    ctx = await browser(bigProfile(lib));
    const profiled = PROFILE_DIR && lib === "warren";
    const p = await page(`lib=${lib}${profiled ? "&worker=0" : ""}`);
    const cdp = profiled ? await startProfile(p) : null;
    const stop = sampleMemory();
    const b = await p.evaluate(([u, n, n2]) => window.bench.importCountScan(u, n2, n), [`big${lib}`, BIG, `big-${lib}`]);
    const peak = stop();
    if (cdp) await stopProfile(cdp, "big");
    await p.close();
    for (const k of ["import", "importConfirmed", "count", "scan"]) record(`big_${k}`, lib, b[k]);
    record("big_longestTask", lib, Math.max(b.importLongestTask, b.countLongestTask, b.scanLongestTask, b.importConfirmedLongestTask ?? 0));
    record("big_frameGap", lib, Math.max(b.importFrameGap, b.countFrameGap, b.scanFrameGap, b.importConfirmedFrameGap ?? 0));
    record("big_peakRss", lib, peak / 2 ** 20);
    record("big_jsHeap", lib, b.memory.scan.jsHeap / 2 ** 20);
    if (b.memory.scan.wasm !== undefined) record("big_wasm", lib, b.memory.scan.wasm / 2 ** 20);
    log(`${lib}: ${BIG} documents imported in one page: ${JSON.stringify({ ...b, memory: undefined })}, peak resident ${(peak / 2 ** 20).toFixed(0)} MiB, memory ${JSON.stringify(b.memory)}`);
  }

  // 5. Cold open: the browser closed and started again on the profile that holds the
  // BIG-document database, the page loaded anew; with the sync server reachable, then
  // with it down.
  for (const reachable of PHASES.has("cold") ? [true, false] : []) {
    if (!reachable) await stopServer();
    for (let r = 0; r < COLD_RUNS; r++) {
      for (const lib of rotate(r)) {
        await ctx.close();
        ctx = await browser(bigProfile(lib));
        const p = ctx.pages()[0] ?? (await ctx.newPage());
        p.on("pageerror", (e) => console.error(`page error (cold ${lib}): ${e}`));
        p.on("console", (m) => { if (process.env.BENCH_DEBUG) console.error(`console (cold ${lib}): ${m.text()}`); });
        await p.exposeFunction("warrenToken", tokenFor);
        const owner = (r * 17 + 3) % 50;
        // Profiled, from the page's load on, the engine on the page (as the suite's).
        const profiled = PROFILE_DIR && lib === "warren";
        const cdp = profiled ? await startProfile(p) : null;
        await p.goto(`${base}?lib=${lib}${profiled ? "&worker=0" : ""}&mode=cold&user=big${lib}&name=big-${lib}&owner=${owner}&coldN=${BIG}&sync=${encodeURIComponent(sync)}`);
        await p.waitForFunction(() => window.coldResult !== undefined, null, { timeout: 120_000 });
        const c = await p.evaluate(() => window.coldResult);
        if (cdp) await stopProfile(cdp, `cold${reachable ? "" : "Offline"}-${r}`);
        if (!c.ok) throw new Error(`cold open with ${lib}: wrong result ${JSON.stringify(c)}`);
        const phase = reachable ? "" : "Offline";
        record(`coldOpen${phase}`, lib, c.ms);
        // Where it went: until the page had the database, then the query.
        record(`coldOpened${phase}`, lib, c.opened);
        record(`coldQuery${phase}`, lib, c.ms - c.opened);
        log(`cold open ${r + 1}/${COLD_RUNS} ${lib}, server ${reachable ? "reachable" : "down"}: ${c.ms.toFixed(1)} ms (opened at ${c.opened.toFixed(1)})${c.stats ? ` ${JSON.stringify(c.stats)}` : ""}`);
      }
    }
    if (!reachable) await startServer();
  }

  // 6. (--million) One page imports a million documents.
  for (const lib of MILLION ? ["dexie", "warren"].filter((l) => LIBS.includes(l)) : []) {
    await ctx.close();
    ctx = await browser(join(root_profiles, `million-${lib}`));
    const p = await page(`lib=${lib}`);
    const stop = sampleMemory();
    const b = await p.evaluate(([u, name, n]) => window.bench.importCountScan(u, name, n), [`m${lib}`, `million-${lib}`, 1_000_000]);
    const peak = stop();
    await p.close();
    for (const k of ["import", "importConfirmed", "count", "scan"]) record(`m_${k}`, lib, b[k]);
    record("m_peakRss", lib, peak / 2 ** 20);
    record("m_longestTask", lib, Math.max(b.importLongestTask, b.countLongestTask, b.scanLongestTask, b.importConfirmedLongestTask ?? 0));
    log(`${lib}: a million documents imported in one page: ${JSON.stringify({ ...b, memory: undefined })}, peak resident ${(peak / 2 ** 20).toFixed(0)} MiB, memory ${JSON.stringify(b.memory)}`);
  }
} catch (e) {
  failed = true;
  console.error(`\nBENCHMARK FAILED: ${e.stack || e}`);
} finally {
  await ctx.close().catch(() => {});
  await stopServer();
  files.close();
}

// The table. Each row: key, label, how its goal reads (see docs/BENCHMARKS.md).
const k = (n) => n.toLocaleString("en-US");
const ROWS = [
  ["bulkInsert", `bulk insert ${k(N)} docs (Warren: bulk())`, "dexie"],
  ["bulkInsertReopen", `  same (${k(N)} more), right after a reopen`, "dexie"],
  ["singleInserts", `${k(N / 10)} single inserts, each durable before the next`, "dexie"],
  ["singleInsertsReopen", `  same, right after a reopen`, "dexie"],
  ["getById", `${k(N)} reads by id, one at a time`, "5x"],
  ["getByIdReopen", `  same, after a reopen`, "dexie"],
  ["workerEcho", `  (the floor through a worker: ${k(N)} round trips page -> worker -> page, nothing done)`, ""],
  ["getByIdBatch", `${k(N)} reads by id, all at once`, "dexie"],
  ["getByIdBatchReopen", `  same, after a reopen`, "dexie"],
  ["indexQuery", `index query (one owner's ${k(N / 50)} docs by date) x 100`, "5x"],
  ["indexQueryReopen", `  same, after a reopen`, "dexie"],
  ["count", `count ${k(N)}`, "dexie"],
  ["countReopen", `  same, after a reopen`, "dexie"],
  ["scan", `full scan ${k(N)}`, "dexie"],
  ["scanReopen", `  same, after a reopen`, "dexie"],
  ["coldOpen", `cold page load, ${k(BIG)} docs: to the first 50 of an index query, server reachable`, "dexie"],
  ["coldOpenOffline", `  same, server down (peers: no server)`, "dexie:coldOpen"],
  ["coldOpened", `  of it, reachable: until the page had the database open`, ""],
  ["coldQuery", `  of it, reachable: then the query`, ""],
  ["coldOpenedOffline", `  of it, down: until the page had the database open`, ""],
  ["coldQueryOffline", `  of it, down: then the query`, ""],
  ["burst500Local", `500 writes offline, durable locally (peers: 500 adds one by one)`, "2x"],
  ["burst500Confirm", `(Warren) back online: until all 500 are confirmed`, "<100"],
  ["burst5000Local", `5,000 writes offline, durable locally`, "dexie"],
  ["burst5000Confirm", `(Warren) back online: until all 5,000 are confirmed`, "linear"],
  ["big_import", `one page imports ${k(BIG)} docs, durable locally`, "dexie"],
  ["big_importConfirmed", `(Warren) then until the server confirmed all`, ""],
  ["big_count", `  then count ${k(BIG)}`, "dexie"],
  ["big_scan", `  then full scan ${k(BIG)}`, "dexie"],
  ["big_longestTask", `  longest main-thread task in all of it (ms, 0: none over 50)`, "<=50"],
  ["big_frameGap", `  longest gap between animation frames (ms)`, ""],
  ["big_peakRss", `  the tab's peak resident memory (MiB)`, ""],
  ["big_jsHeap", `  page JS heap after the scan (MiB)`, ""],
  ["big_wasm", `  (Warren) engine's WebAssembly memory after the scan (MiB)`, ""],
  ["liveP50", "local write -> live query notified, p50", "dexie"],
  ["liveP99", "local write -> live query notified, p99", "dexie"],
  ["livePileFirst", "a live query open, 2,000 writes one by one (Warren offline): the first 500", ""],
  ["livePileLast", "  the last 500 (a cost per write that grows with what is pending shows here)", ""],
  ["xtabP50", "write in tab A -> live query in tab B, p50", "dexie"],
  ["xtabP99", "write in tab A -> live query in tab B, p99", "dexie"],
  ["bulkConfirmed", "(Warren) bulk insert: until the server confirmed all", ""],
  ["singlesConfirmed", "(Warren) single inserts: after the last local, until the server confirmed all", ""],
  ["m_import", "one page imports 1,000,000 docs, durable locally", ""],
  ["m_importConfirmed", "(Warren) then until the server confirmed all", ""],
  ["m_count", "  then count 1,000,000", ""],
  ["m_scan", "  then full scan 1,000,000", ""],
  ["m_longestTask", "  longest main-thread task (ms)", ""],
  ["m_peakRss", "  the tab's peak resident memory (MiB)", ""],
];
const fmt = (v) => (v === undefined ? "-" : v >= 100 ? v.toFixed(0) : v >= 10 ? v.toFixed(1) : v.toFixed(2));
const med = (key, lib) => (results[key]?.[lib] ? median(results[key][lib]) : undefined);
function goal(key, rule) {
  const w = med(key, "warren");
  if (w === undefined || !rule) return "";
  const against = rule.startsWith("dexie:") ? rule.slice(6) : key;
  const d = med(against, "dexie");
  const yes = (ok) => (ok ? "met" : "**not met**");
  switch (rule.split(":")[0]) {
    case "dexie": return d === undefined ? "" : yes(w <= d);
    case "5x": return d === undefined ? "" : yes(w * 5 <= d);
    case "2x": return d === undefined ? "" : yes(w <= 2 * d);
    case "<100": return yes(w < 100);
    case "<=50": return yes(w <= 50);
    case "linear": {
      const small = med("burst500Confirm", "warren");
      return small === undefined ? "" : `${yes(w < 10 * small)} (${(w / small).toFixed(1)}x the 500)`;
    }
    default: return "";
  }
}
const lines = [];
const onPage = LIBS.includes("warren-page");
lines.push(`| workload | raw IndexedDB | idb 8.0.4 | Dexie 4.4.7 | Warren | Warren / Dexie | goal |${onPage ? " Warren, engine on the page | on the page / Dexie |" : ""}`);
lines.push(`|---|---:|---:|---:|---:|---:|---|${onPage ? "---:|---:|" : ""}`);
for (const [key, label, rule] of ROWS) {
  if (!results[key]) continue;
  const m = Object.fromEntries(LIBS.map((l) => [l, med(key, l)]));
  const dk = rule?.startsWith("dexie:") ? rule.slice(6) : key;
  const dd = med(dk, "dexie");
  const ratioOf = (v) => (v !== undefined && dd ? `${(v / dd).toFixed(2)}x` : "-");
  const ratio = ratioOf(m.warren);
  const peer = (l) => fmt(key === "coldOpenOffline" && l !== "warren" ? med("coldOpen", l) : m[l]);
  const page = onPage ? ` ${fmt(m["warren-page"])} | ${ratioOf(m["warren-page"])} |` : "";
  lines.push(`| ${label} | ${peer("raw")} | ${peer("idb")} | ${peer("dexie")} | ${fmt(m.warren)} | ${ratio} | ${goal(key, rule)} |${page}`);
}
const cpu = cpus()[0]?.model ?? "?";
console.log(`\nBrowser benchmark: medians of ${RUNS} runs (cold open: ${COLD_RUNS}; live: ${LIVE_ITER} writes per run; cross-tab: ${XTAB_ITER} per run), times in ms`);
console.log(`machine: ${cpus().length} CPUs (${cpu}), ${(totalmem() / 2 ** 30).toFixed(1)} GiB, Chromium ${browserVersion}, load average ${loadavg().map((x) => x.toFixed(2)).join(" ")}, ${((Date.now() - started) / 1000).toFixed(0)} s`);
if (SERVER_LIMITS) console.log("server: its default per-identity limits (--server-limits): budgets and quotas on");
console.log(lines.join("\n"));
if (JSON_OUT) writeFileSync(JSON_OUT, JSON.stringify(results, null, 1));
rmSync(work, { recursive: true, force: true });
if (failed) process.exit(1);
