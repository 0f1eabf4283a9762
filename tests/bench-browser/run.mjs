// The browser benchmark: the same workloads (workload.js) on hand-written IndexedDB,
// idb 8, Dexie 4 and Warren, in headless Chromium with on-disk profiles, in one run.
// Prints a table of medians and the ratios to Dexie; fails if any result is wrong.
//
//   node tests/bench-browser/run.mjs [--runs N] [--cold-runs N] [--skip-cold]
//
// Needs: Debian's Chromium (.ci/setup-browser), the package built (.ci/build-package),
// `npm ci` here, and the release server (cargo build --release -p warren-server).
// .ci/bench-browser does all of it. docs/BENCHMARKS.md explains the figures.
import { cpSync, mkdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { cpus, loadavg, totalmem } from "node:os";
import { join, dirname } from "node:path";
import { fileURLToPath } from "node:url";
import { spawn } from "node:child_process";
import { freePort, profile, root, stopProcess, tempDir } from "../browser/harness.mjs";

const here = dirname(fileURLToPath(import.meta.url));
const args = process.argv.slice(2);
const opt = (name, dflt) => {
  const i = args.indexOf(name);
  return i >= 0 ? Number(args[i + 1]) : dflt;
};
const RUNS = opt("--runs", 5);
const COLD_RUNS = opt("--cold-runs", 3);
const SKIP_COLD = args.includes("--skip-cold");
const COLD_ONLY = args.includes("--cold-only");
const LIVE_ITER = opt("--live-iterations", 200);
const XTAB_ITER = opt("--xtab-iterations", 100);
const ALL_LIBS = ["raw", "idb", "dexie", "warren"];
const LIBS = args.includes("--libs") ? args[args.indexOf("--libs") + 1].split(",") : ALL_LIBS;
const N = opt("--n", 10_000);
const LIVE_LIBS = ["dexie", "warren"].filter((l) => LIBS.includes(l));
const started = Date.now();
const log = (...a) => console.error(`[${((Date.now() - started) / 1000).toFixed(0).padStart(4)} s]`, ...a);

// The static directory: the pages, the implementations and the libraries they import.
const work = tempDir("bench-browser");
const site = join(work, "site");
mkdirSync(join(site, "lib"), { recursive: true });
for (const f of ["bench.html", "page.js", "workload.js", "raw.js", "idb.js", "dexie.js", "warren.js"])
  cpSync(join(here, f), join(site, f));
cpSync(join(here, "node_modules", "dexie", "dist", "modern", "dexie.min.mjs"), join(site, "lib", "dexie", "dexie.min.mjs"));
cpSync(join(here, "node_modules", "idb", "build"), join(site, "lib", "idb"), { recursive: true });
cpSync(join(root, "js-package", "dist"), join(site, "lib", "warren", "dist"), { recursive: true });
cpSync(process.env.WARREN_WASM_DIR || join(root, "js-package", "wasm"), join(site, "lib", "warren", "wasm"), { recursive: true });
// --cpuprofile DIR: saves a CPU profile of each Warren page (for profile.mjs).
const PROFILE_DIR = args.includes("--cpuprofile") ? args[args.indexOf("--cpuprofile") + 1] : null;

// The release server (the harness's startWarren runs the debug build).
const port = await freePort();
// A copy, so that a rebuild during the run does not touch the binary being run.
const bin = join(work, "warren");
cpSync(process.env.WARREN_BIN || join(root, "target", "release", "warren"), bin);
const server = spawn(bin, ["serve",
  "--listen", `127.0.0.1:${port}`, "--data-dir", join(work, "data"),
  "--schema", join(here, "bench.warren"), "--static-dir", site, "--dev-tokens"],
  { stdio: ["ignore", "pipe", "inherit"], env: { ...process.env, WARREN_LOG: "warn" } });
await new Promise((ok, err) => {
  server.stdout.on("data", (d) => { if (String(d).includes("serving on")) ok(); });
  server.on("exit", (c) => err(new Error(`server exited ${c}`)));
});
const base = `http://127.0.0.1:${port}/bench.html`;
const profileDir = join(work, "profile");
let ctx = await profile(profileDir);
const browserVersion = ctx.browser()?.version() ?? (await (async () => {
  const p = await ctx.newPage();
  const ua = await p.evaluate(() => navigator.userAgent);
  await p.close();
  return ua.match(/Chrome\/([\d.]+)/)?.[1] ?? ua;
})());

async function page(query, c = ctx) {
  const p = await c.newPage();
  p.on("pageerror", (e) => console.error(`page error (${query}): ${e}`));
  p.on("console", (m) => { if (m.type() === "error" || process.env.BENCH_DEBUG) console.error(`console (${query}): ${m.text()}`); });
  await p.goto(`${base}?${query}`);
  await p.waitForFunction(() => window.benchReady === true);
  return p;
}

const results = {};   // results[workload][lib] = [values]
const record = (w, lib, v) => (((results[w] ??= {})[lib] ??= []).push(v));
const median = (xs) => {
  const a = [...xs].sort((x, y) => x - y);
  return a.length % 2 ? a[(a.length - 1) / 2] : (a[a.length / 2 - 1] + a[a.length / 2]) / 2;
};

let failed = false;
try {
  // The suite and the live-query latency: RUNS runs, each library once per run, in a
  // rotating order, each on a fresh database in a fresh page.
  for (let r = 0; r < (COLD_ONLY ? 0 : RUNS); r++) {
    const order = LIBS.map((_, i) => LIBS[(i + r) % LIBS.length]);
    for (const lib of order) {
      const p = await page(`lib=${lib}`);
      let cdp = null;
      if (PROFILE_DIR && lib === "warren") {
        cdp = await ctx.newCDPSession(p);
        await cdp.send("Profiler.enable");
        await cdp.send("Profiler.setSamplingInterval", { interval: 200 });
        await cdp.send("Profiler.start");
      }
      const t = await p.evaluate(({ user, n }) => window.bench.suite(user, { n, singles: n / 10 }), { user: `${lib}${r}`, n: N });
      if (cdp) {
        const { profile: prof } = await cdp.send("Profiler.stop");
        mkdirSync(PROFILE_DIR, { recursive: true });
        writeFileSync(join(PROFILE_DIR, `suite-${r}.cpuprofile`), JSON.stringify(prof));
      }
      for (const [w, v] of Object.entries(t)) record(w, lib, v);
      if (LIVE_LIBS.includes(lib)) {
        const l = await p.evaluate(([user, n]) => window.bench.live(user, { iterations: n }), [`${lib}${r}`, LIVE_ITER]);
        record("liveP50", lib, l.p50);
        record("liveP99", lib, l.p99);
      }
      await p.close();
      log(`run ${r + 1}/${RUNS} ${lib}: ${Object.entries(t).map(([k, v]) => `${k} ${v.toFixed(0)}`).join(", ")}`);
    }
  }

  // Cross-tab: two tabs of one profile open the same database; a write in one, timed
  // to its appearance in a live query in the other.
  for (const lib of COLD_ONLY ? [] : LIVE_LIBS) {
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

  // The cold open: a 100,000-document database per library, populated once; then the
  // browser is closed and started again on the same on-disk profile before each
  // measurement, so nothing is in memory.
  if (!SKIP_COLD) {
    for (const lib of LIBS) {
      let t;
      if (lib === "warren") {
        // Warren: one page per 10,000 documents (one page writing all 100,000 ran out
        // of memory after ~10 minutes: see docs/BENCHMARKS.md).
        t = { local: 0, all: 0 };
        for (let i = 0; i < 100_000; i += 10_000) {
          const p = await page(`lib=${lib}`);
          const b = await p.evaluate(([u, n, from, to]) => window.bench.populateBlock(u, n, from, to),
            [`cold${lib}`, `cold-${lib}`, i, i + 10_000]);
          await p.close();
          t.local += b.local;
          t.all += b.all;
          log(`  warren: ${i + 10_000} documents (${b.local.toFixed(0)} ms local, ${b.all.toFixed(0)} ms confirmed)`);
        }
      } else {
        const p = await page(`lib=${lib}`);
        t = await p.evaluate(([u, n]) => window.bench.populate(u, n), [`cold${lib}`, `cold-${lib}`]);
        await p.close();
      }
      log(`populated 100,000 documents with ${lib}: ${t.local.toFixed(0)} ms local, ${t.all.toFixed(0)} ms with confirmation`);
      record("populate100k", lib, t.local);
      if (lib === "warren") record("populate100kConfirmed", lib, t.all);
    }
    for (let r = 0; r < COLD_RUNS; r++) {
      for (const lib of LIBS.map((_, i) => LIBS[(i + r) % LIBS.length])) {
        await ctx.close();
        ctx = await profile(profileDir);
        const p = ctx.pages()[0] ?? (await ctx.newPage());
        p.on("pageerror", (e) => console.error(`page error (cold ${lib}): ${e}`));
        const owner = (r * 17 + 3) % 50;
        await p.goto(`${base}?lib=${lib}&mode=cold&user=cold${lib}&name=cold-${lib}&owner=${owner}`);
        await p.waitForFunction(() => window.coldResult !== undefined, null, { timeout: 120_000 });
        const c = await p.evaluate(() => window.coldResult);
        if (!c.ok) throw new Error(`cold open with ${lib}: wrong result ${JSON.stringify(c)}`);
        record("coldOpen", lib, c.ms);
        log(`cold open ${r + 1}/${COLD_RUNS} ${lib}: ${c.ms.toFixed(1)} ms`);
      }
    }
  }
} catch (e) {
  failed = true;
  console.error(`\nBENCHMARK FAILED: ${e.stack || e}`);
} finally {
  await ctx.close().catch(() => {});
  await stopProcess(server);
}

// The table.
const ROWS = [
  ["bulkInsert", "bulk insert 10,000 docs, one transaction", "ms"],
  ["singleInserts", "1,000 single inserts, each durable before the next", "ms"],
  ["getById", "10,000 reads by id, one at a time", "ms"],
  ["indexQuery", "index query (one owner's 200 docs by date) x 100", "ms"],
  ["count", "count 10,000", "ms"],
  ["scan", "full scan 10,000", "ms"],
  ["coldOpen", "cold open 100,000 docs: load to first 50 of an index query", "ms"],
  ["liveP50", "local write -> live query notified, p50", "ms"],
  ["liveP99", "local write -> live query notified, p99", "ms"],
  ["xtabP50", "write in tab A -> live query in tab B, p50", "ms"],
  ["xtabP99", "write in tab A -> live query in tab B, p99", "ms"],
  ["bulkConfirmed", "(Warren) bulk insert: after the last local, until the server confirmed all", "ms"],
  ["confirmedAll", "(Warren) single inserts: after the last local, until the server confirmed all", "ms"],
  ["populate100k", "(setup) 100,000 docs, 10,000 per call, durable locally", "ms"],
  ["populate100kConfirmed", "(setup) same, until the server confirmed all", "ms"],
];
const fmt = (v) => (v === undefined ? "-" : v >= 100 ? v.toFixed(0) : v >= 10 ? v.toFixed(1) : v.toFixed(2));
const lines = [];
lines.push(`| workload | raw IndexedDB | idb 8.0.4 | Dexie 4.4.7 | Warren | Warren / Dexie |`);
lines.push(`|---|---:|---:|---:|---:|---:|`);
for (const [key, label] of ROWS) {
  const row = results[key];
  if (!row) continue;
  const m = Object.fromEntries(LIBS.map((l) => [l, row[l] ? median(row[l]) : undefined]));
  const ratio = m.warren !== undefined && m.dexie ? `${(m.warren / m.dexie).toFixed(2)}x` : "-";
  lines.push(`| ${label} | ${fmt(m.raw)} | ${fmt(m.idb)} | ${fmt(m.dexie)} | ${fmt(m.warren)} | ${ratio} |`);
}
const cpu = cpus()[0]?.model ?? "?";
console.log(`\nBrowser benchmark: medians of ${RUNS} runs (cold open: ${COLD_RUNS}; live: ${LIVE_ITER} writes per run; cross-tab: ${XTAB_ITER} per run), times in ms`);
console.log(`machine: ${cpus().length} CPUs (${cpu}), ${(totalmem() / 2 ** 30).toFixed(1)} GiB, Chromium ${browserVersion}, load average ${loadavg().map((x) => x.toFixed(2)).join(" ")}, ${((Date.now() - started) / 1000).toFixed(0)} s`);
console.log(lines.join("\n"));
if (process.env.BENCH_JSON) writeFileSync(process.env.BENCH_JSON, JSON.stringify(results, null, 1));
rmSync(work, { recursive: true, force: true });
if (failed) process.exit(1);
