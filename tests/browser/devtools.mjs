// warren/devtools in Chromium against a real `warren serve` (the demo's schema): the
// panel mounted on a page shows the partitions the replica holds with their cursors,
// the outbox with a write waiting offline, a live query, a write refused by the rules
// with its explain trace, the connection, and the server's side (open connections, the
// applied log position, the digest). Screenshots are written for a person to look at.
import { mkdirSync } from "node:fs";
import { join } from "node:path";
import { check, fail, finish, until, tempDir, freePort, startWarren, stopProcess, profile, root, staticSite } from "./harness.mjs";

const work = tempDir("devtools");
const shots = process.env.SCREENSHOT_DIR || join(work, "screenshots");
mkdirSync(shots, { recursive: true });
const site = staticSite(work, "explain.html");
const port = await freePort();
const base = `http://127.0.0.1:${port}`;
const ADMIN = "devtools-test-admin-token";
const server = await startWarren(["--listen", `127.0.0.1:${port}`, "--data-dir", join(work, "data"),
  "--schema", join(root, "demo", "schema.warren"), "--static-dir", site, "--dev-tokens", "--admin-token", ADMIN]);

let ctx;
try {
  ctx = await profile(join(work, "profile"), { viewport: { width: 1100, height: 900 } });
  const p = ctx.pages()[0] ?? (await ctx.newPage());
  p.on("pageerror", (e) => console.log(`page error: ${e}`));
  await p.goto(`${base}/explain.html`);
  await p.waitForFunction(() => window.ready === true);

  // ann's team Red (ann and bob) with a task.
  const ids = await p.evaluate(async () => {
    await window.openDb("ann", "devtools-ann");
    await window.db.call("createTeam", { name: "Red", members: ["bob"] }).confirmed;
    const team = (await window.db.query("Team.all().map(.id)"))[0];
    await window.db.call("addTask", { team, title: "plan the launch" }).confirmed;
    const task = (await window.db.query("Task.all().map(.id)"))[0];
    await window.db.close();
    return { team, task };
  });

  // bob's page with the inspector.
  await p.evaluate(async (admin) => {
    await window.openDb("bob", "devtools-bob");
    const { mountDevtools } = await import("./pkg/dist/devtools.js");
    window.devtools = mountDevtools(window.db, { server: { adminToken: admin }, interval: 200 });
    window.titles = window.db.live("Task.all().map(.title)");
    window.titles.subscribe(() => {});
  }, ADMIN);
  await until("bob's replica holds the board", () =>
    p.evaluate(async () => (await window.db.query("Task.all().count()")) === 1));
  // A write the rules refuse (only the board's admin deletes a task), and one waiting
  // offline in the outbox.
  await p.evaluate(async (task) => {
    await window.db.call("removeTask", { id: task }).result.catch(() => {});
    window.db.setOnline(false);
    await window.db.call("toggleTask", { id: task }).local;
  }, ids.task);

  const text = (section) => p.evaluate((s) =>
    document.querySelector("[data-warren-devtools]").shadowRoot
      .querySelector(`[data-section="${s}"]`)?.textContent ?? "", section);
  await until("the panel shows the refusal's trace", async () => (await text("rejections")).includes("allow delete"));
  await until("the panel shows the outbox", async () => (await text("outbox")).includes("toggleTask"));
  await until("the panel shows the server", async () => /[0-9a-f]{64}/.test(await text("server")));

  const partitions = await text("partitions");
  check("partitions held, with cursors", partitions.includes(`team:${ids.team}`) && /cursor \d+/.test(partitions), partitions);
  const outbox = await text("outbox");
  check("the outbox: the write waiting offline", outbox.includes("toggleTask") && outbox.includes("queued (offline)"), outbox);
  const live = await text("live");
  check("the live query", live.includes("Task.all().map(.title)"), live);
  const rejections = await text("rejections");
  check("the refused write with its trace", rejections.includes("PERMISSION_DENIED") && rejections.includes("removeTask") &&
    rejections.includes("DENY delete Task") && rejections.includes(`read Team/${ids.team}`), rejections);
  const connection = await text("connection");
  check("the connection", connection.includes("not connected") && connection.includes("1 pending"), connection);
  const srv = await text("server");
  check("the server: connected clients, log head, digest", /connected clients\d+/.test(srv) && /log head \(applied\)\d+/.test(srv), srv);

  await p.screenshot({ path: join(shots, "devtools-page.png") });
  // Playwright's CSS locators pierce the panel's (open) shadow root.
  await p.locator("[data-warren-devtools] .panel").screenshot({ path: join(shots, "devtools-panel.png") });
  console.log(`# screenshots in ${shots}`);

  // Unmounted: gone, and the database's call is its own again.
  const gone = await p.evaluate(() => {
    window.devtools.unmount();
    return document.querySelector("[data-warren-devtools]") === null;
  });
  check("unmount removes the panel", gone);
} catch (e) {
  fail(e);
} finally {
  await ctx?.close().catch(() => {});
  await stopProcess(server);
  finish();
}
