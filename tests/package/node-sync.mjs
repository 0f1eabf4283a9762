// The installed package in Node against a real `warren serve` (the binary's path is the
// first argument): `storage: "memory"` (fake-indexeddb), a WebSocket from the `ws`
// package (Node 20 has no global one), the engine's .wasm read from disk by `load()`.
//
// 1. Online: a dev token, `open` with `connectTimeout`, a write confirmed, a query and
//    a live query.
// 2. Offline: writes wait (pending), another device does not see them; back online
//    they are confirmed and the other device sees them.
// 3. A refused token fails `open` at once with TOKEN_BAD_SIGNATURE.
// 4. Server-side rendering: `useQuery` with `initialData` renders it before any result.
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { createElement } from "react";
import { renderToString } from "react-dom/server";
import { devToken, open } from "warren";
import { useQuery } from "warren/react";

const [warren, schema] = process.argv.slice(2);
const work = mkdtempSync(join(tmpdir(), "warren-node-"));
const port = await new Promise((ok) => {
  const s = createServer().listen(0, "127.0.0.1", () => { const p = s.address().port; s.close(() => ok(p)); });
});
const url = `http://127.0.0.1:${port}`;
const server = spawn(warren, ["serve", "--listen", `127.0.0.1:${port}`, "--data-dir", join(work, "data"),
  "--schema", schema, "--dev-tokens"], { stdio: ["ignore", "pipe", "inherit"], env: { ...process.env, WARREN_LOG: "warn" } });
await new Promise((ok, err) => {
  server.stdout.on("data", (d) => { if (String(d).includes("serving on")) ok(); });
  server.on("exit", (c) => err(new Error(`server exited ${c}`)));
});

const until = async (what, f, ms = 15000) => {
  const end = Date.now() + ms;
  while (!(await f())) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
};
const titles = (db) => db.query("Todo.byOwner('ann').map(t => t.title)");

let exit = 0;
const dbs = [];
try {
  // 1. Online.
  const a = await open({ url, token: () => devToken(url, "ann"), storage: "memory", name: "ann-1", connectTimeout: 10000 });
  dbs.push(a);
  assert.equal(a.status.current.state, "online");
  const { position } = await a.call("addTodo", { title: "from node" }).confirmed;
  assert.ok(position > 0, `confirmed at ${position}`);
  assert.deepEqual(await titles(a), ["from node"]);
  const b = await open({ url, token: () => devToken(url, "ann"), storage: "memory", name: "ann-2", connectTimeout: 10000 });
  dbs.push(b);
  const live = b.live("Todo.byOwner('ann').map(t => t.title)");
  let seen = [];
  live.subscribe((v) => { if (v) seen = v; });
  await until("the other device's live query", () => seen.includes("from node"));
  console.log("ok - online in Node: open, a write confirmed, a query, another device's live query");

  // 2. Offline, then back.
  a.setOnline(false);
  await until("offline", () => a.status.current.state === "offline");
  const w1 = a.call("addTodo", { title: "offline one" });
  const w2 = a.call("addTodo", { title: "offline two" });
  await Promise.all([w1.local, w2.local]);
  assert.equal(a.status.current.pending, 2);
  assert.deepEqual((await titles(a)).sort(), ["from node", "offline one", "offline two"]);
  await new Promise((r) => setTimeout(r, 200));
  assert.ok(!seen.includes("offline one"), "the other device does not see offline writes");
  a.setOnline(true);
  await Promise.all([w1.confirmed, w2.confirmed]);
  await until("the other device to see the offline writes", () => seen.includes("offline one") && seen.includes("offline two"));
  assert.equal(a.status.current.pending, 0);
  console.log("ok - offline in Node: writes wait, then are confirmed after reconnecting and reach the other device");

  // 3. A token of another server.
  const good = await devToken(url, "ann");
  const [h, p] = good.split(".");
  await assert.rejects(open({ url, token: `${h}.${p}.AAAA`, storage: "memory", name: "bad", connectTimeout: 10000 }),
    (e) => e.code === "TOKEN_BAD_SIGNATURE" && e.name === "AuthError");
  console.log("ok - a refused token fails open at once (TOKEN_BAD_SIGNATURE)");

  // 4. Server-side rendering with initial data.
  function List() {
    const { data, loading } = useQuery(a, "Todo.byOwner('ann').map(t => t.title)", { initialData: ["rendered on the server"] });
    return createElement("ul", { "data-loading": String(loading) }, data.map((t) => createElement("li", { key: t }, t)));
  }
  const html = renderToString(createElement(List));
  assert.ok(html.includes("<li>rendered on the server</li>") && html.includes('data-loading="false"'), html);
  console.log("ok - useQuery renders its initialData on the server");
} catch (e) {
  console.log(`not ok - ${e.stack || e}`);
  exit = 1;
} finally {
  for (const db of dbs) await db.close().catch(() => {});
  server.kill("SIGTERM");
  await new Promise((ok) => server.on("exit", ok));
  rmSync(work, { recursive: true, force: true });
  process.exit(exit);
}
