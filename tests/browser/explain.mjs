// db.explain in Chromium against a real `warren serve` (the demo's schema): the trace
// the browser gives on its replica is the trace the server gives on its state
// (POST /v1/admin/explain, behind the admin token) for the same identity and program,
// byte for byte: queries, a write that is allowed, one that is denied, and "why this
// partition".
import { join } from "node:path";
import { check, fail, finish, until, tempDir, freePort, startWarren, stopProcess, profile, root, staticSite } from "./harness.mjs";

const work = tempDir("explain");
const site = staticSite(work, "explain.html");
const port = await freePort();
const base = `http://127.0.0.1:${port}`;
const ADMIN = "explain-test-admin-token";
const server = await startWarren(["--listen", `127.0.0.1:${port}`, "--data-dir", join(work, "data"),
  "--schema", join(root, "demo", "schema.warren"), "--static-dir", site, "--dev-tokens", "--admin-token", ADMIN]);

/** The server's trace for `sub` and a request in the form db.explain takes. */
async function serverTrace(sub, what) {
  const body = { auth: { sub } };
  if (typeof what === "string") body.query = what;
  else if (what.call) Object.assign(body, { call: what.call, args: what.args ?? {} });
  else if (what.partition) body.partition = what.partition;
  const r = await fetch(`${base}/v1/admin/explain`, {
    method: "POST", headers: { authorization: `Bearer ${ADMIN}` }, body: JSON.stringify(body),
  });
  if (r.status !== 200) throw new Error(`explain: ${r.status} ${await r.text()}`);
  return r.json();
}

let ctx;
try {
  ctx = await profile(join(work, "profile"));
  const p = ctx.pages()[0] ?? (await ctx.newPage());
  p.on("pageerror", (e) => console.log(`page error: ${e}`));
  await p.goto(`${base}/explain.html`);
  await p.waitForFunction(() => window.ready === true);

  // ann makes team Red (ann and bob), a task on it, and a private todo.
  const ids = await p.evaluate(async () => {
    await window.openDb("ann", "explain-ann");
    await window.db.call("createTeam", { name: "Red", members: ["bob"] }).confirmed;
    const team = (await window.db.query("Team.all().map(.id)"))[0];
    await window.db.call("addTask", { team, title: "plan" }).confirmed;
    await window.db.call("addTodo", { title: "ann's secret" }).confirmed;
    const task = (await window.db.query("Task.all().map(.id)"))[0];
    await window.db.close();
    return { team, task };
  });
  // bob's replica receives the team's partition.
  await p.evaluate(() => window.openDb("bob", "explain-bob"));
  await until("bob's replica holds the board", () =>
    p.evaluate(async () => (await window.db.query("Task.all().count()")) === 1));

  const cases = [
    ["a query", "Team.all().map(.name)"],
    ["a query over the board", "Task.all().map(.title)"],
    ["an allowed call", { call: "toggleTask", args: { id: ids.task } }],
    ["a denied call", { call: "removeTask", args: { id: ids.task } }],
    ["a readable partition", { partition: `team:${ids.team}` }],
    ["another user's partition", { partition: "user:ann" }],
  ];
  for (const [name, what] of cases) {
    const browser = await p.evaluate((w) => window.db.explain(w), what);
    const server = await serverTrace("bob", what);
    const b = JSON.stringify(browser);
    check(`${name}: the browser's trace is the server's`, b === JSON.stringify(server),
      `\n  browser ${b}\n  server  ${JSON.stringify(server)}`);
    check(`${name}: the trace has decisions`, browser.decisions.length > 0, b);
  }
  // The denied call names the delete rule, which read the team (visible to bob).
  const denied = await p.evaluate((id) => window.db.explain({ call: "removeTask", args: { id } }), ids.task);
  const d = denied.decisions.find((x) => x.action === "delete");
  check("the denied delete names its rule and what it read",
    denied.outcome.code === "PERMISSION_DENIED" && d && !d.allowed &&
      d.rules[0].text.startsWith("allow delete Team.byId(old.team)?.admin == auth.sub") &&
      d.rules[0].reads[0].visible && d.rules[0].reads[0].value.admin === "ann",
    JSON.stringify(denied));
  // Nothing was written or queued by explaining.
  const after = await p.evaluate(async () => ({
    pending: window.db.status.value?.pending ?? (await window.db.stats()).pending,
    done: await window.db.query("Task.all().map(.done)"),
  }));
  check("explaining wrote nothing", JSON.stringify(after.done) === "[false]", JSON.stringify(after));
  // ann's private partition: the server counts nothing bob cannot read in a query of
  // his own board, and the trace never names ann's todo.
  const mine = await serverTrace("bob", "Todo.all().map(.title)");
  check("a hidden document is counted, not shown", mine.invisible.Todo === 1 &&
    !JSON.stringify(mine).includes("secret"), JSON.stringify(mine));
} catch (e) {
  fail(e);
} finally {
  await ctx?.close().catch(() => {});
  await stopProcess(server);
  finish();
}
