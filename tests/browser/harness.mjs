// What the browser tests share: TAP-style checks, waiting, a `warren serve` process
// on a free port, the static site it serves (a page and the package), and Debian's
// Chromium in separate persistent profiles.
import { spawn } from "node:child_process";
import { createServer } from "node:http";
import { copyFileSync, cpSync, mkdirSync, mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, dirname } from "node:path";
import { fileURLToPath } from "node:url";
import { chromium } from "../../.ci/node/node_modules/playwright-core/index.mjs";

export const root = join(dirname(fileURLToPath(import.meta.url)), "..", "..");
/** Cargo's target directory (CARGO_TARGET_DIR, as cargo itself reads it). */
export const target = process.env.CARGO_TARGET_DIR || join(root, "target");
export const warren = join(target, "debug", "warren");

let failures = 0;
let passed = 0;

export function check(name, ok, detail = "") {
  if (ok) { passed++; console.log(`ok - ${name}`); }
  else { failures++; console.log(`not ok - ${name} ${detail}`); }
}

/** Counts an exception as a failure (the run goes on to clean up). */
export function fail(e) {
  failures++;
  console.log(`not ok - ${e.stack || e}`);
}

/** Prints the tally and sets the exit code. */
export function finish() {
  console.log(`\n${passed} passed, ${failures} failed`);
  process.exitCode = failures ? 1 : 0;
}

export async function until(what, f, ms = 20000) {
  const end = Date.now() + ms;
  while (Date.now() < end) {
    if (await f()) return true;
    await new Promise((r) => setTimeout(r, 25));
  }
  throw new Error(`timed out waiting for ${what}`);
}

/** The run's scratch directories, removed when the process exits (set WARREN_KEEP_TEMP=1 to
 * keep them for a look after a failure). A browser profile is tens of megabytes, so a
 * suite run a few times a day would otherwise fill a small disk. */
const scratch = [];
process.on("exit", () => {
  if (process.env.WARREN_KEEP_TEMP) {
    for (const d of scratch) console.log(`# kept ${d}`);
    return;
  }
  for (const d of scratch) rmSync(d, { recursive: true, force: true });
});

export const tempDir = (name) => {
  const dir = mkdtempSync(join(tmpdir(), `warren-${name}-`));
  scratch.push(dir);
  return dir;
};

/** A directory `site` under `work` for `warren serve --static-dir`: this directory's
 * `page` (an HTML file) and a copy of the built package under `pkg/` (the server serves
 * nothing through a symbolic link out of its static directory). Gives its path. */
export function staticSite(work, page) {
  const dir = join(work, "site");
  mkdirSync(dir);
  copyFileSync(join(root, "tests", "browser", page), join(dir, page));
  for (const d of ["dist", "wasm"]) cpSync(join(root, "js-package", d), join(dir, "pkg", d), { recursive: true });
  return dir;
}

/** Chromium's own temporary files (it leaves `scoped_dir`s behind when killed, as the
 * durability checks do) go under the run's scratch space too. */
let browserTmp;

/** A port nothing listens on now (kept across a server's restarts). */
export async function freePort() {
  const probe = createServer();
  await new Promise((ok) => probe.listen(0, "127.0.0.1", ok));
  const port = probe.address().port;
  await new Promise((ok) => probe.close(ok));
  return port;
}

/** Starts `warren serve` with `args`; resolves once it is serving. */
export async function startWarren(args, env = {}) {
  const proc = spawn(warren, ["serve", ...args], {
    stdio: ["ignore", "pipe", "inherit"],
    env: { ...process.env, WARREN_LOG: "warn", ...env },
  });
  await new Promise((ok, err) => {
    proc.stdout.on("data", (d) => { if (String(d).includes("serving on")) ok(); });
    proc.on("exit", (c) => err(new Error(`server exited ${c}`)));
  });
  return proc;
}

/** Stops a server process with `signal` and waits for it to exit. */
export async function stopProcess(proc, signal = "SIGTERM") {
  if (!proc || proc.exitCode !== null) return;
  const exited = new Promise((ok) => proc.on("exit", ok));
  proc.kill(signal);
  await exited;
}

const browserArgs = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
  "--disable-background-networking", "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic"];

/** A browser with its own on-disk profile under `dir` (`args`: more command-line
 * arguments, after the usual ones). */
export function profile(dir, { args = [], ...options } = {}) {
  browserTmp ??= tempDir("chromium-tmp");
  return chromium.launchPersistentContext(dir, {
    executablePath: process.env.CHROMIUM || "/usr/bin/chromium", args: [...browserArgs, ...args], headless: true,
    env: { ...process.env, TMPDIR: browserTmp },
    ...options,
  });
}
