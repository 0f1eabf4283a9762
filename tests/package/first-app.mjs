// The package README's "Your first app", built by .ci/test-package from the guide's own
// files and commands, used as its reader would: `warren serve --dev-tokens` with the
// guide's schema, the app's Vite build served from another origin (CORS), two users in
// Chromium.
//
//   node tests/package/first-app.mjs APP_DIR SYNC_PORT
import { createServer } from "node:http";
import { existsSync, mkdirSync, readFileSync } from "node:fs";
import { extname, join, normalize } from "node:path";
import { check, fail, finish, until, tempDir, freePort, startWarren, stopProcess, profile, root } from "../browser/harness.mjs";

const [app, syncPort] = process.argv.slice(2);
const work = tempDir("first-app");
const shots = join(process.env.CARGO_TARGET_DIR || join(root, "target"), "first-app-screenshots");
mkdirSync(shots, { recursive: true });
const server = await startWarren(["--listen", `127.0.0.1:${syncPort}`, "--data-dir", join(work, "data"),
  "--schema", join(app, "schema.warren"), "--dev-tokens"]);

// The built app on its own origin, as `vite preview` or a CDN would serve it.
const types = { ".html": "text/html", ".js": "text/javascript", ".wasm": "application/wasm", ".css": "text/css" };
const dist = join(app, "dist");
const files = createServer((req, res) => {
  const path = join(dist, normalize(new URL(req.url, "http://x").pathname === "/" ? "index.html" : new URL(req.url, "http://x").pathname));
  if (!path.startsWith(dist) || !existsSync(path)) { res.writeHead(404); res.end(); return; }
  res.writeHead(200, { "content-type": types[extname(path)] || "application/octet-stream" });
  res.end(readFileSync(path));
});
const appPort = await freePort();
await new Promise((ok) => files.listen(appPort, "127.0.0.1", ok));
const appUrl = `http://127.0.0.1:${appPort}/`;

/** The server's to-do titles for `sub` (a dev token, as the app gets one). */
async function serverTitles(sub) {
  const base = `http://127.0.0.1:${syncPort}`;
  const { token } = await (await fetch(`${base}/v1/dev/token`, {
    method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify({ sub }),
  })).json();
  const r = await fetch(`${base}/v1/pull`, { method: "POST", headers: { authorization: `Bearer ${token}` }, body: "{}" });
  return (await r.json()).snapshots.flatMap((s) => s.docs).filter((d) => d.collection === "Todo").map((d) => d.data.title);
}

const contexts = [];
try {
  const ann = await profile(join(work, "ann"));
  const bob = await profile(join(work, "bob"));
  contexts.push(ann, bob);
  const a = ann.pages()[0] || await ann.newPage();
  a.on("pageerror", (e) => console.log(`page error: ${e}`));
  await a.goto(`${appUrl}?user=ann`);
  await a.waitForSelector("h1", { timeout: 20000 });
  check("the app opens the database from another origin (CORS) with a dev token",
    (await a.textContent("h1")) === "ann's to-dos", await a.textContent("body"));

  await a.fill("input[placeholder]", "Buy milk");
  await a.press("input[placeholder]", "Enter");
  await a.waitForSelector("li:has-text('Buy milk')", { timeout: 5000 });
  check("a to-do added in the app shows at once", true);
  await until("the server has it", async () => (await serverTitles("ann")).includes("Buy milk"));
  check("and reaches the server", true);

  await a.fill("input[placeholder]", "   ");
  await a.press("input[placeholder]", "Enter");
  await a.waitForSelector("[role=alert]", { timeout: 5000 });
  const alert = await a.textContent("[role=alert]");
  check("a blank title is refused at once in the browser, with a message for people",
    alert.length > 0 && !/allow |VALIDATION_FAILED/.test(alert) && (await a.$$("li")).length === 1, alert);

  await a.click("li input[type=checkbox]");
  await until("the toggle is confirmed", async () => (await a.textContent("main p")).includes(" 0 waiting"));
  await a.reload();
  await a.waitForSelector("li:has-text('Buy milk')", { timeout: 20000 });
  check("after a reload the to-do is there, ticked",
    await a.isChecked("li input[type=checkbox]"));
  await a.screenshot({ path: join(shots, "ann.png") });

  const b = bob.pages()[0] || await bob.newPage();
  await b.goto(`${appUrl}?user=bob`);
  await b.waitForSelector("h1", { timeout: 20000 });
  await new Promise((ok) => setTimeout(ok, 1000));
  check("another user sees none of ann's to-dos", (await b.$$("li")).length === 0);
} catch (e) {
  fail(e);
} finally {
  for (const c of contexts) await c.close().catch(() => {});
  await stopProcess(server);
  files.close();
  finish();
}
