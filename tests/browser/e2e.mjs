// The browser end to end: Debian's Chromium driven by playwright-core, the wasm build
// in a page, a real `warren serve` process.
//
// 1. ann writes while the server is down; the page is reloaded; the outbox is still
//    there; the server starts; the commits are confirmed exactly once.
// 2. bob, in another browser profile, never receives (nor stores) ann's documents.
// 3. The network is cut mid-sync: the server is killed (SIGKILL) while pushes are in
//    flight, then restarted; every write lands exactly once.
// 4. An expired token is refreshed through the app's callback before the client
//    connects with it (its `exp` has passed by the page's clock): no connection is
//    refused. And a page whose clock runs two hours fast, whose token provider fails,
//    connects with its token all the same: the server's clock decides.
// 5. Storage pressure: past the origin's quota a write fails with QUOTA_EXCEEDED, and
//    everything written before it survives a reload and syncs.
// 6. The tab crashes (the browser is killed): the outbox survives and drains.
// 7. A live app crosses its token's expiry: the server ends the connection with
//    TOKEN_EXPIRED, the package's token callback gives a fresh token, the client
//    reconnects, and every write the app made meanwhile lands exactly once.
//
// The server runs with a one-second token leeway (--token-leeway-secs 1), so that a
// connection ends one second after its token's `exp`.
//
// Run by .ci/test-browser after .ci/build-wasm and a debug build of the server.
import { execFileSync, spawnSync } from "node:child_process";
import { createHmac } from "node:crypto";
import { createServer } from "node:http";
import { readFileSync, existsSync } from "node:fs";
import { join, extname } from "node:path";
import { check, fail, finish, until, tempDir, freePort, startWarren, stopProcess, profile as browser, root, warren } from "./harness.mjs";

const work = tempDir("browser-e2e");
const data = join(work, "data");
const SECRET = "browser-e2e-secret-0123456789abcdef";

// Static files: the page, the wasm build, the schema.
const types = { ".html": "text/html", ".js": "text/javascript", ".wasm": "application/wasm" };
const files = createServer((req, res) => {
  const url = new URL(req.url, "http://x");
  let path = null;
  if (url.pathname === "/") path = join(root, "tests", "browser", "page.html");
  else if (url.pathname === "/schema.warren") path = join(root, "demo", "schema.warren");
  else if (url.pathname.startsWith("/wasm/")) path = join(root, "js-package", url.pathname.slice(1));
  if (!path || !existsSync(path)) { res.writeHead(404); res.end(); return; }
  res.writeHead(200, { "content-type": types[extname(path)] || "text/plain" });
  res.end(readFileSync(path));
});
await new Promise((ok) => files.listen(0, "127.0.0.1", ok));
const pageBase = `http://127.0.0.1:${files.address().port}/`;

// A free port for the sync server, kept across its restarts.
const syncPort = await freePort();
const ws = `ws://127.0.0.1:${syncPort}/v1/sync`;

let server = null;
async function startServer() {
  server = await startWarren(["--listen", `127.0.0.1:${syncPort}`, "--data-dir", data,
    "--schema", join(root, "demo", "schema.warren"), "--hs256-secret", SECRET,
    "--token-leeway-secs", "1"]);
}
async function killServer(signal) {
  const s = server;
  server = null;
  await stopProcess(s, signal);
}
const token = (sub) => execFileSync(warren, ["token", "--sub", sub, "--hs256-secret", SECRET]).toString().trim();
// An HS256 token with any claims (an expired one, say), signed like the server's.
function jwt(claims) {
  const b = (o) => Buffer.from(JSON.stringify(o)).toString("base64url");
  const head = `${b({ alg: "HS256", typ: "JWT" })}.${b(claims)}`;
  return `${head}.${createHmac("sha256", SECRET).update(head).digest("base64url")}`;
}
async function pull(sub) {
  const r = await fetch(`http://127.0.0.1:${syncPort}/v1/pull`, {
    method: "POST", headers: { authorization: `Bearer ${token(sub)}` }, body: "{}",
  });
  return r.json();
}
const profile = (name) => browser(join(work, `profile-${name}`));
async function openPage(ctx, sub, extra = {}) {
  const page = ctx.pages()[0] || await ctx.newPage();
  page.on("pageerror", (e) => console.log(`page error (${sub}): ${e}`));
  const q = new URLSearchParams({ db: `warren-${sub}`, client: `${sub}-browser`, ws, token: token(sub), sub, ...extra });
  await page.goto(`${pageBase}?${q}`);
  await page.evaluate(() => window.ready);
  return page;
}

try {
  // 1. Offline writes survive a reload and are confirmed exactly once.
  const annCtx = await profile("ann");
  let ann = await openPage(annCtx, "ann");
  for (const t of ["milk", "bread", "eggs"]) {
    await ann.evaluate((t) => window.call("addTodo", { title: t }), t);
  }
  check("writes succeed offline and wait in the outbox", (await ann.evaluate(() => window.db.pending())) === 3);
  await ann.reload();
  await ann.evaluate(() => window.ready);
  check("the outbox survives a reload", (await ann.evaluate(() => window.db.pending())) === 3);
  const titles = await ann.evaluate(() => window.db.query("Todo.all().order(.title).map(.title)"));
  check("the view after a reload shows the pending writes", JSON.stringify(titles) === '["bread","eggs","milk"]', JSON.stringify(titles));
  await startServer();
  await until("ann's outbox to drain", async () => (await ann.evaluate(() => window.db.pending())) === 0);
  let server1 = await pull("ann");
  const docs = server1.snapshots.flatMap((s) => s.docs).filter((d) => d.collection === "Todo");
  check("the server has each offline write exactly once", docs.length === 3 && new Set(docs.map((d) => d.data.title)).size === 3, JSON.stringify(docs));

  // 2. Another user's browser never receives or stores ann's documents.
  const bobCtx = await profile("bob");
  const bob = await openPage(bobCtx, "bob");
  await bob.evaluate(() => window.call("addTodo", { title: "bob's" }));
  await until("bob to sync", async () => (await bob.evaluate(() => window.db.pending())) === 0);
  const bobSees = await bob.evaluate(() => window.db.query("Todo.all().map(.title)"));
  check("bob sees only his own", JSON.stringify(bobSees) === '["bob\'s"]', JSON.stringify(bobSees));
  const bobKeys = await bob.evaluate(() => window.storedKeys());
  check("bob's IndexedDB holds nothing of ann's partition", bobKeys.length > 0 && !bobKeys.some((k) => k.includes("user:ann")), JSON.stringify(bobKeys.filter((k) => k.includes("ann"))));
  const refused = await bob.evaluate(async () => {
    try { await window.run('Todo.create({ owner: "ann", title: "evil", done: false, created: 0 })'); return "accepted"; }
    catch (e) { return e.code; }
  });
  check("a forbidden write is refused at once with its code", refused === "PERMISSION_DENIED", refused);
  // The schema's field types are checked by the same engine in the browser: a blank
  // title is refused locally, at once, naming the collection and the field.
  const blankTitle = await bob.evaluate(async () => {
    try { await window.run('Todo.create({ owner: "bob", title: "   ", done: false, created: 0 })'); return "accepted"; }
    catch (e) { return `${e.code} ${e.message}`; }
  });
  check("a write that does not fit the field types is refused locally with VALIDATION_FAILED",
    blankTitle.startsWith("VALIDATION_FAILED") && blankTitle.includes("field title must not be blank"), blankTitle);

  // 3. The server is killed while pushes are in flight.
  for (let i = 0; i < 40; i++) {
    ann.evaluate((i) => window.call("addTodo", { title: `burst ${i}` }), i).catch(() => {});
  }
  await new Promise((r) => setTimeout(r, 30));
  await killServer("SIGKILL");
  await until("the burst to be in the outbox", async () => {
    const n = await ann.evaluate(() => window.db.query("Todo.all().count()"));
    return n === 43;
  });
  await startServer();
  await until("ann's outbox to drain after the crash", async () => (await ann.evaluate(() => window.db.pending())) === 0, 30000);
  server1 = await pull("ann");
  const after = server1.snapshots.flatMap((s) => s.docs).filter((d) => d.collection === "Todo");
  const burst = after.filter((d) => d.data.title.startsWith("burst "));
  // On failure the details say what each side held: the pull's partitions and
  // positions, the browser's count and its outbox.
  const seen = () => JSON.stringify({
    server: after.length, position: server1.position, partitions: server1.partitions,
    snapshots: server1.snapshots.map((s) => [s.partition, s.position, s.docs.length]),
  });
  check("every write of the burst landed exactly once", burst.length === 40 && new Set(burst.map((d) => d.data.title)).size === 40, `${burst.length} burst documents; ${seen()}`);
  const annCount = await ann.evaluate(() => window.db.query("Todo.all().count()"));
  const annPending = await ann.evaluate(() => window.db.pending());
  check("the browser's view equals the server's", annCount === after.length, `browser ${annCount} (pending ${annPending}); ${seen()}`);

  // 4. An expired token: the app's provider gives a new one before the client connects.
  const metric = async (line) => {
    const text = await (await fetch(`http://127.0.0.1:${syncPort}/metrics`)).text();
    const l = text.split("\n").find((x) => x.startsWith(line));
    return l ? Number(l.slice(line.length).trim()) : 0;
  };
  const expiredLine = 'warren_errors_sent_total{code="TOKEN_EXPIRED"}';
  const refusedBefore = await metric(expiredLine);
  const now = Math.floor(Date.now() / 1000);
  const carolCtx = await profile("carol");
  const carol = await openPage(carolCtx, "carol", {
    token: jwt({ sub: "carol", iat: now - 7200, exp: now - 3600 }),
    fresh: token("carol"),
  });
  await carol.evaluate(() => window.call("addTodo", { title: "with a fresh token" }));
  await until("carol to sync with a refreshed token", async () =>
    (await carol.evaluate(() => window.db.connected() && window.db.pending() === 0)));
  const carolDocs = (await pull("carol")).snapshots.flatMap((s) => s.docs);
  check("an expired token is refreshed through the callback", carolDocs.length === 1);
  const refusedAfter = await metric(expiredLine);
  check("the expired token was refreshed before connecting: no connection refused",
    refusedAfter === refusedBefore, `${refusedBefore} -> ${refusedAfter}`);

  // 4b. The page's clock runs two hours fast, so its token (an hour left by the server's
  //     clock) looks expired there, and its token provider fails: it connects with
  //     the token it has, which the server accepts. (Before, it asked the provider
  //     again and again and never connected.)
  const gusCtx = await profile("gus");
  const gus = await openPage(gusCtx, "gus", {
    token: jwt({ sub: "gus", iat: now, exp: now + 3600 }),
    fresh: "fail",
    skew: String(2 * 3600 * 1000),
  });
  await gus.evaluate(() => window.call("addTodo", { title: "with a fast clock" }));
  await until("gus to sync with the token he has", async () =>
    (await gus.evaluate(() => window.db.connected() && window.db.pending() === 0)));
  const gusAsked = await gus.evaluate(() => window.asked);
  check("a page with a fast clock asks its provider, then connects with the token it has when that fails",
    gusAsked >= 1 && (await pull("gus")).snapshots.flatMap((s) => s.docs).length === 1, `asked ${gusAsked}`);
  await gusCtx.close();

  // 5. Storage pressure: a fresh profile whose origin gets a small quota before the
  //    database exists; a write past it fails with QUOTA_EXCEEDED, and everything
  //    written before it survives a reload and syncs.
  const erinCtx = await profile("erin");
  const blank = erinCtx.pages()[0] || await erinCtx.newPage();
  const cdp = await erinCtx.newCDPSession(blank);
  const origin = new URL(pageBase).origin;
  await cdp.send("Storage.overrideQuotaForOrigin", { origin, quotaSize: 600 * 1024 });
  const erin = await openPage(erinCtx, "erin", { offline: "1" });
  const outcome = await erin.evaluate(async () => {
    // Random text: the browser compresses large values, so repeated text would fit.
    // A title is at most 200 characters (the demo schema's types): the bulk goes into
    // a board's member list, 200 characters a member.
    const random = () => {
      const b = new Uint8Array(40 * 1024);
      crypto.getRandomValues(b);
      return btoa(String.fromCharCode(...b)).match(/.{1,200}/g);
    };
    let ok = 0;
    for (let i = 0; i < 100; i++) {
      try { await window.call("createTeam", { name: `big ${i}`, members: random() }); ok++; }
      catch (e) { return { ok, code: e.code, pending: window.db.pending() }; }
    }
    return { ok, code: null };
  });
  check("a write over the quota fails with QUOTA_EXCEEDED", outcome.code === "QUOTA_EXCEEDED" && outcome.ok > 0, JSON.stringify(outcome));
  check("the refused write is not in the outbox", outcome.pending === outcome.ok, JSON.stringify(outcome));
  const erinUrl = new URL(erin.url());
  await erin.reload();
  await erin.evaluate(() => window.ready);
  check("everything written before the quota survives a reload", (await erin.evaluate(() => window.db.pending())) === outcome.ok);
  await cdp.send("Storage.overrideQuotaForOrigin", { origin });
  erinUrl.searchParams.delete("offline");
  await erin.goto(erinUrl.toString());
  await erin.evaluate(() => window.ready);
  await until("erin's writes to drain", async () => (await erin.evaluate(() => window.db.pending())) === 0, 60000);
  check("the server has each of them once", (await pull("erin")).snapshots.flatMap((s) => s.docs).length === outcome.ok);
  await erinCtx.close();

  // 6. The tab crashes: the browser process is killed with writes in the outbox.
  let daveCtx = await profile("dave");
  let dave = await openPage(daveCtx, "dave");
  await dave.evaluate(() => window.db.setOnline(false));
  for (const t of ["one", "two"]) await dave.evaluate((t) => window.call("addTodo", { title: t }), t);
  spawnSync("pkill", ["-9", "-f", join(work, "profile-dave")]);
  await daveCtx.close().catch(() => {});
  daveCtx = await profile("dave");
  // Reopened offline: online, the outbox may be sent and confirmed before it is read.
  dave = await openPage(daveCtx, "dave", { offline: "1" });
  const davePending = await dave.evaluate(() => window.db.pending());
  check("the outbox survives a crash of the browser", davePending === 2, `pending ${davePending}`);
  await dave.evaluate(() => window.db.setOnline(true));
  await until("dave's outbox to drain", async () => (await dave.evaluate(() => window.db.pending())) === 0);
  check("dave's writes landed once", (await pull("dave")).snapshots.flatMap((s) => s.docs).length === 2);

  // 7. A live app crosses its token's expiry, writing all the while.
  const expiredBefore = await metric(expiredLine);
  const fayCtx = await profile("fay");
  const soon = Math.floor(Date.now() / 1000) + 3;
  const fay = await openPage(fayCtx, "fay", { token: jwt({ sub: "fay", exp: soon }), fresh: token("fay") });
  await until("fay to connect", async () => fay.evaluate(() => window.db.connected()));
  // A write every 100 ms for 7 s: across `exp` (3 s) plus the leeway (1 s).
  const written = await fay.evaluate(async () => {
    let n = 0;
    const until = Date.now() + 7000;
    while (Date.now() < until) {
      await window.call("addTodo", { title: `live ${n}` });
      n++;
      await new Promise((r) => setTimeout(r, 100));
    }
    return n;
  });
  await until("fay's outbox to drain", async () =>
    (await fay.evaluate(() => window.db.connected() && window.db.pending() === 0)), 30000);
  const expiredAfter = await metric(expiredLine);
  check("the server ended fay's connection when her token expired", expiredAfter > expiredBefore,
    `${expiredBefore} -> ${expiredAfter}`);
  const fayDocs = (await pull("fay")).snapshots.flatMap((s) => s.docs).filter((d) => d.collection === "Todo");
  const fayTitles = new Set(fayDocs.map((d) => d.data.title));
  check("every write across the expiry landed exactly once",
    written > 40 && fayDocs.length === written && fayTitles.size === written,
    `${written} written, ${fayDocs.length} on the server`);
  check("fay's view equals the server's",
    (await fay.evaluate(() => window.db.query("Todo.all().count()"))) === written);
  await fayCtx.close();

  await daveCtx.close();
  await carolCtx.close();
  await annCtx.close();
  await bobCtx.close();
} catch (e) {
  fail(e);
} finally {
  await killServer("SIGTERM");
  files.close();
  finish();
}
