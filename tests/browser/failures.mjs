// Failures that speak, and CORS, in Debian's Chromium against a real `warren serve`
// (--dev-tokens, --cors-origin http://app.test:PORT), the page served by this script from
// other origins than the server's (Chromium maps app.test and evil.test to 127.0.0.1):
//
// 1. CORS: a page of an allowed origin gets a dev token (`devToken`) and syncs; a page
//    on localhost (allowed with --dev-tokens) gets one too; a page of another origin
//    gets neither a token (NOT_CONNECTED) nor a sync connection (`connectTimeout`).
// 2. `open({ connectTimeout })` fails fast: with a token of another server at once with
//    TOKEN_BAD_SIGNATURE (`onStatus` saw `unauthorized`), with no server listening with
//    NOT_CONNECTED (`onStatus` saw `connecting`).
// 3. Offline from the very start, with no schema: a write fails with NOT_CONNECTED,
//    not UNKNOWN_NAME.
// 4. Refusals with context: an `abort("...")` gives `e.reason` and a `userMessage`; a
//    rule's refusal has its rule text in `message` only; `e.name` is set; messages do
//    not repeat the code; a write the server refuses later comes as a `rejected`
//    event with its function and arguments.
// 5. `hasPendingWrites(collection, id)` while a row's write is unconfirmed; `lastSync`
//    moves when another device's change arrives, and survives a reload.
// 6. The engine's `.wasm` served without `application/wasm`, named by a relative
//    address: the page cannot compile it, the worker loads it itself from the page's
//    address, and the database works. A browser that cannot pass a compiled module to
//    a worker, given the app's own module: the worker loads the package's `.wasm`
//    (`open` used to wait forever).
import { createHmac } from "node:crypto";
import { createServer } from "node:http";
import { readFileSync, existsSync } from "node:fs";
import { join, extname } from "node:path";
import { chromium } from "../../.ci/node/node_modules/playwright-core/index.mjs";
import { check, fail, finish, tempDir, freePort, startWarren, stopProcess, root } from "./harness.mjs";

const work = tempDir("failures");
const types = { ".html": "text/html", ".js": "text/javascript", ".wasm": "application/wasm" };
/** Requests for the engine served as `application/octet-stream` (`/octet/NAME.wasm`). */
let octetRequests = 0;
const files = createServer((req, res) => {
  const url = new URL(req.url, "http://x");
  let path = null;
  let type = null;
  if (url.pathname === "/failures.html") path = join(root, "tests", "browser", "failures.html");
  else if (url.pathname.startsWith("/pkg/")) path = join(root, "js-package", url.pathname.slice(5));
  else if (url.pathname.startsWith("/octet/")) {
    path = join(root, "js-package", "wasm", url.pathname.slice(7));
    type = "application/octet-stream";
    octetRequests++;
  }
  if (!path || path.includes("..") || !existsSync(path)) { res.writeHead(404); res.end(); return; }
  res.writeHead(200, { "content-type": type ?? types[extname(path)] ?? "text/plain" });
  res.end(readFileSync(path));
});
await new Promise((ok) => files.listen(0, "127.0.0.1", ok));
const filesPort = files.address().port;
const app = `http://app.test:${filesPort}`;
const evil = `http://evil.test:${filesPort}`;
const local = `http://localhost:${filesPort}`;

const port = await freePort();
const url = `http://127.0.0.1:${port}`;
const server = await startWarren(["--listen", `127.0.0.1:${port}`, "--data-dir", join(work, "data"),
  "--schema", join(root, "demo", "schema.warren"), "--dev-tokens", "--cors-origin", app]);

/** A token for `sub` signed with another secret than the server's. */
function foreignToken(sub) {
  const b64 = (o) => Buffer.from(JSON.stringify(o)).toString("base64url");
  const head = `${b64({ alg: "HS256", typ: "JWT" })}.${b64({ sub, exp: Math.floor(Date.now() / 1000) + 3600 })}`;
  return `${head}.${createHmac("sha256", "another-server-secret-0123456789").update(head).digest("base64url")}`;
}

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  headless: true,
  args: ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
    "--disable-background-networking", "--disable-component-update", "--disable-sync", "--no-first-run",
    "--disable-quic", "--host-resolver-rules=MAP app.test 127.0.0.1, MAP evil.test 127.0.0.1",
    // crypto.randomUUID and Web Locks want a secure context.
    `--unsafely-treat-insecure-origin-as-secure=${app},${evil}`],
});

async function pageAt(origin) {
  const p = await (await browser.newContext()).newPage();
  p.on("pageerror", (e) => console.log(`page error: ${e}`));
  await p.goto(`${origin}/failures.html`);
  await p.waitForFunction(() => window.ready === true);
  return p;
}

try {
  // 1. CORS.
  const a = await pageAt(app);
  const synced = await a.evaluate(async (url) => {
    const { devToken, open } = window.warren;
    const states = [];
    const db = await open({ url, token: () => devToken(url, "ann"), name: "ann-a", connectTimeout: 15000,
      onStatus: (s) => states.push(s.state) });
    const w = db.call("addTodo", { title: "from another origin" });
    const c = await w.confirmed;
    const todos = await db.query("Todo.byOwner('ann')");
    window.db = db;
    return { position: c.position, n: todos.length, states, state: db.status.current.state };
  }, url);
  check("a page of an allowed origin gets a dev token, connects and syncs a write",
    synced.position > 0 && synced.n === 1 && synced.state === "online", JSON.stringify(synced));
  check("onStatus heard `connecting` then `online` before open resolved",
    synced.states[0] === "connecting" && synced.states.includes("online"), JSON.stringify(synced.states));

  const l = await pageAt(local);
  const localToken = await l.evaluate((url) => window.outcome(() => window.warren.devToken(url, "bob")), url);
  check("a page on localhost gets a dev token (--dev-tokens)", typeof localToken.ok === "string", JSON.stringify(localToken));

  const e = await pageAt(evil);
  const evilToken = await e.evaluate((url) => window.outcome(() => window.warren.devToken(url, "eve")), url);
  check("a page of another origin gets no token: NOT_CONNECTED naming --cors-origin",
    evilToken.err?.code === "NOT_CONNECTED" && /cors-origin/.test(evilToken.err.message), JSON.stringify(evilToken));
  const token = await (await fetch(`${url}/v1/dev/token`, { method: "POST", headers: { "content-type": "application/json" },
    body: JSON.stringify({ sub: "eve" }) })).json();
  const evilOpen = await e.evaluate(({ url, token }) => window.outcome(async () => {
    const db = await window.warren.open({ url, token, name: "eve", connectTimeout: 3000 });
    return db.status.current;
  }), { url, token: token.token });
  check("a page of another origin cannot open the sync WebSocket (NOT_CONNECTED after connectTimeout)",
    evilOpen.err?.code === "NOT_CONNECTED", JSON.stringify(evilOpen));

  // 2. Fast failures.
  const bad = await a.evaluate(async ({ url, token }) => {
    const states = [];
    const t0 = performance.now();
    const r = await window.outcome(() => window.warren.open({ url, token, name: "mallory", connectTimeout: 20000,
      onStatus: (s) => states.push([s.state, s.error?.code ?? null]) }));
    return { r, states, ms: performance.now() - t0 };
  }, { url, token: foreignToken("mallory") });
  check(`a token of another server: open rejects with TOKEN_BAD_SIGNATURE as an AuthError (${bad.ms.toFixed(0)} ms, connectTimeout 20000)`,
    bad.r.err?.code === "TOKEN_BAD_SIGNATURE" && bad.r.err.name === "AuthError" && bad.ms < 20000, JSON.stringify(bad));
  check("onStatus saw `unauthorized` with the code",
    bad.states.some(([s, c]) => s === "unauthorized" && c === "TOKEN_BAD_SIGNATURE"), JSON.stringify(bad.states));
  const nowhere = await freePort();
  const gone = await a.evaluate(async (url) => {
    const states = [];
    const token = await window.warren.devToken(url.real, "ann");
    const r = await window.outcome(() => window.warren.open({ url: url.nowhere, token, name: "nowhere", connectTimeout: 1500,
      onStatus: (s) => states.push(s.state) }));
    return { r, states };
  }, { real: url, nowhere: `http://127.0.0.1:${nowhere}` });
  check("no server listening: open rejects with NOT_CONNECTED (a ConnectionError) after connectTimeout",
    gone.r.err?.code === "NOT_CONNECTED" && gone.r.err.name === "ConnectionError", JSON.stringify(gone));
  check("... while onStatus said `connecting`", gone.states.includes("connecting"), JSON.stringify(gone.states));

  // 3. Offline from the start, no schema.
  const offline = await a.evaluate(async (url) => {
    const token = await window.warren.devToken(url, "olga");
    const db = await window.warren.open({ url, token, name: "olga", offline: true });
    const r = await window.outcome(() => db.call("addTodo", { title: "x" }).result);
    return { r, state: db.status.current.state };
  }, url);
  check("offline from the start with no schema: a write fails with NOT_CONNECTED, state `offline`",
    offline.r.err?.code === "NOT_CONNECTED" && offline.state === "offline", JSON.stringify(offline));

  // 6. The .wasm without its type, at an address relative to the page.
  const octet = await a.evaluate(async ([url, schema]) => {
    const token = await window.warren.devToken(url, "omar");
    const db = await window.warren.open({ url, token, name: "omar", offline: true, schema,
      wasm: "octet/warren_web_text_bg.wasm" });
    const w = db.call("addTodo", { title: "typed" });
    await w.local;
    const titles = (await db.query(`Todo.byOwner("omar")`)).map((t) => t.title);
    const worker = (await db.stats()).worker;
    await db.close();
    return { titles, worker };
  }, [url, readFileSync(join(root, "demo", "schema.warren"), "utf8")]);
  check(`a .wasm served without application/wasm: the worker loads it itself (${octetRequests} requests) and the database works`,
    octet.worker === 1 && octetRequests === 2 && octet.titles.length === 1 && octet.titles[0] === "typed",
    JSON.stringify({ ...octet, octetRequests }));

  // 6b. No module can be passed to a worker; the app gives its own compiled module.
  const noModules = await (await pageAt(app)).evaluate(async ([url, schema]) => {
    const post = Worker.prototype.postMessage;
    let refused = 0;
    Worker.prototype.postMessage = function (m, ...rest) {
      if ((m?.b ?? [m]).some((x) => x?.a?.some?.((v) => v instanceof WebAssembly.Module))) {
        refused++;
        throw new DOMException("a WebAssembly.Module could not be cloned", "DataCloneError");
      }
      return post.call(this, m, ...rest);
    };
    const wasm = await WebAssembly.compileStreaming(fetch("pkg/wasm/warren_web_text_bg.wasm"));
    const token = await window.warren.devToken(url, "nadia");
    const opened = window.warren.open({ url, token, name: "nadia", offline: true, schema, wasm }).then(async (db) => {
      await db.call("addTodo", { title: "no modules" }).local;
      const titles = (await db.query(`Todo.byOwner("nadia")`)).map((t) => t.title);
      const worker = (await db.stats()).worker;
      await db.close();
      return { titles, worker };
    });
    const late = new Promise((ok) => setTimeout(() => ok({ err: "open had not resolved after 20 s" }), 20_000));
    return { ...(await Promise.race([opened, late])), refused };
  }, [url, readFileSync(join(root, "demo", "schema.warren"), "utf8")]);
  check("a browser that cannot pass a module to a worker, given the app's module: the worker loads the package's .wasm and the database works",
    noModules.refused >= 1 && noModules.worker === 1 && noModules.titles?.length === 1 && noModules.titles[0] === "no modules",
    JSON.stringify(noModules));

  // 4. Refusals with context.
  const aborted = await a.evaluate(() => window.outcome(() => window.db.call("toggle", { id: "nope" }).result));
  const ab = aborted.err ?? {};
  check("abort(\"...\"): code ABORTED, e.reason and e.userMessage are its text, e.name is set, fn and args",
    ab.code === "ABORTED" && ab.reason === "no such todo" && ab.userMessage === "no such todo" &&
    ab.name === "ProgramError" && ab.fn === "toggle" && ab.args?.id === "nope" && ab.isWarren, JSON.stringify(ab));
  check("the message does not repeat the code, and says where", /^no such todo \(at line \d+, column \d+\)$/.test(ab.message ?? ""),
    ab.message);
  const denied = await a.evaluate(() =>
    window.outcome(() => window.db.transact(`Todo.create({ owner: "bob", title: "t", done: false, created: 1 })`).result));
  const dn = denied.err ?? {};
  check("a rule's refusal: PERMISSION_DENIED; the rule text is in message, not in userMessage",
    dn.code === "PERMISSION_DENIED" && dn.name === "PermissionDeniedError" && /denied/.test(dn.message) &&
    !/auth|owner|denied/.test(dn.userMessage ?? "auth"), JSON.stringify(dn));
  const later = await a.evaluate(async (url) => {
    const { devToken, open } = window.warren;
    const db1 = window.db;
    const db2 = await open({ url, token: () => devToken(url, "ann"), name: "ann-b", connectTimeout: 15000 });
    window.db2 = db2;
    const id = (await db1.query("Todo.byOwner('ann')"))[0].id;
    await new Promise((ok) => { const stop = db2.live(`Todo.byId(${JSON.stringify(id)})`).subscribe((v) => v && (queueMicrotask(() => stop()), ok())); });
    db2.setOnline(false);
    const events = [];
    db2.on("rejected", (e) => events.push(window.plain(e)));
    const w = db2.call("toggle", { id });
    await w.local;
    await db1.call("removeTodo", { id }).confirmed;
    db2.setOnline(true);
    const r = await window.outcome(() => w.confirmed);
    return { r, events, id };
  }, url);
  const ev = later.events[0] ?? {};
  check("a write the server refused later: a `rejected` event with the function and its arguments",
    later.events.length === 1 && ev.code === "ABORTED" && ev.fn === "toggle" && ev.args?.id === later.id &&
    ev.reason === "no such todo" && typeof ev.seq === "number", JSON.stringify(later));
  check("... and its `confirmed` rejects with the same", later.r.err?.fn === "toggle" && later.r.err.code === "ABORTED",
    JSON.stringify(later.r));

  // 5. Pending per document, and the last sync.
  const pend = await a.evaluate(async () => {
    const db = window.db;
    db.setOnline(false);
    const w = db.call("addTodo", { title: "pending one" });
    await w.local;
    const todo = (await db.query("Todo.byOwner('ann')")).find((t) => t.title === "pending one");
    const before = await db.hasPendingWrites("Todo", todo.id);
    db.setOnline(true);
    await w.confirmed;
    const after = await db.hasPendingWrites("Todo", todo.id);
    return { before, after, other: await db.hasPendingWrites("Todo", "nope") };
  });
  check("hasPendingWrites: true while a write to the row is unconfirmed, false once confirmed",
    pend.before === true && pend.after === false && pend.other === false, JSON.stringify(pend));
  const moved = await a.evaluate(async () => {
    const db2 = window.db2;
    const t0 = db2.status.current.lastSync?.getTime() ?? 0;
    await new Promise((ok) => setTimeout(ok, 1100));
    const id = (await window.db.call("addTodo", { title: "from the other device" }).confirmed).result;
    await new Promise((ok) => {
      const stop = db2.live("Todo.byOwner('ann')").subscribe((v) =>
        v?.some((t) => t.title === "from the other device") && (queueMicrotask(() => stop()), ok()));
    });
    await new Promise((ok) => setTimeout(ok, 50));
    return { t0, t1: db2.status.current.lastSync?.getTime() ?? 0, pending: db2.status.current.pending, id };
  });
  check("lastSync moves when another device's change arrives (no write of its own)",
    moved.t1 > moved.t0 && moved.pending === 0, JSON.stringify(moved));
  await a.evaluate(() => window.db2.close());
  await a.reload();
  await a.waitForFunction(() => window.ready === true);
  const kept = await a.evaluate(async (url) => {
    const db = await window.warren.open({ url, token: await window.warren.devToken(url, "ann"), name: "ann-b", offline: true });
    return db.status.current.lastSync?.getTime() ?? 0;
  }, url);
  check("lastSync survives a reload (opened offline)", kept === moved.t1, `${kept} vs ${moved.t1}`);
} catch (e) {
  fail(e);
} finally {
  await browser.close().catch(() => {});
  files.close();
  await stopProcess(server);
  finish();
}
