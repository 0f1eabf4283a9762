// Many tabs, one replica: Debian's Chromium with one profile and three tabs of one
// origin, the package's `open` in each, a real `warren serve`.
//
// 1. Exactly one tab leads (holds the engine and the connection).
// 2. A write in any tab appears in the others' live queries within 200 ms.
// 3. Two tabs writing at once: every write lands once, the outbox stays whole.
//    3b. `db.pages` gives every document in order in each tab, leader and followers.
// 4. The server receives each commit exactly once (no duplicates in its metrics).
// 5. The leader is frozen (the page lifecycle's freeze): another tab takes over.
// 6. The leader is closed: another tab takes over; writes made meanwhile sync.
// 7. The server restarts in the middle of writing: nothing is lost, nothing doubled.
import { join } from "node:path";
import { check, fail, finish, until, tempDir, freePort, startWarren, stopProcess, profile, root, warren, staticSite } from "./harness.mjs";
import { execFileSync } from "node:child_process";

const work = tempDir("tabs");
const site = staticSite(work, "tabs.html");
const port = await freePort();
const base = `http://127.0.0.1:${port}`;
const args = ["--listen", `127.0.0.1:${port}`, "--data-dir", join(work, "data"),
  "--schema", join(root, "demo", "schema.warren"), "--static-dir", site, "--dev-tokens"];
let server = await startWarren(args);

const USER = "tabber";
const token = () => execFileSync(warren, ["token", "--data-dir", join(work, "data"), "--sub", USER]).toString().trim();
async function serverTitles() {
  const r = await fetch(`${base}/v1/pull`, { method: "POST", headers: { authorization: `Bearer ${token()}` }, body: "{}" });
  const body = await r.json();
  return body.snapshots.flatMap((s) => s.docs).filter((d) => d.collection === "Todo").map((d) => d.data.title);
}
async function duplicates() {
  const text = await (await fetch(`${base}/metrics`)).text();
  return Number(/warren_commits_total\{outcome="duplicate"\} (\d+)/.exec(text)?.[1] ?? NaN);
}
const isLeader = (p) => p.evaluate(() => window.db.isLeader);
async function leaders(pages) {
  const out = [];
  for (const p of pages) if (await isLeader(p)) out.push(p);
  return out;
}
const pending = (p) => p.evaluate(() => window.db.status.current.pending);

let ctx;
try {
  ctx = await profile(join(work, "profile"));
  const tabs = [];
  for (let i = 0; i < 3; i++) {
    const p = await ctx.newPage();
    p.on("pageerror", (e) => console.log(`page error (tab ${i}): ${e}`));
    await p.goto(`${base}/tabs.html?user=${USER}`);
    await p.evaluate(() => window.ready);
    tabs.push(p);
  }
  check("exactly one tab leads", (await leaders(tabs)).length === 1);
  const written = [];

  // 2. A write in each tab shows in the others within 200 ms.
  let worst = 0;
  for (let round = 0; round < 5; round++) {
    for (let i = 0; i < tabs.length; i++) {
      const title = `r${round}-t${i}`;
      const at = await tabs[i].evaluate((t) => window.write(t), title);
      written.push(title);
      for (const [j, other] of tabs.entries()) {
        if (j === i) continue;
        await until(`tab ${j} to see ${title}`, () => other.evaluate((t) => window.seen[t] !== undefined, title), 2000);
        const seenAt = await other.evaluate((t) => window.seen[t], title);
        worst = Math.max(worst, seenAt - at);
      }
    }
  }
  check(`a write in any tab shows in every other within 200 ms (worst ${worst.toFixed(1)} ms of 30)`, worst < 200);

  // 3. Two tabs writing at once.
  await Promise.all([1, 2].map((i) => tabs[i].evaluate(async (i) => {
    const ws = [];
    for (let k = 0; k < 40; k++) ws.push(window.write(`burst-${i}-${k}`));
    await Promise.all(ws);
  }, i)));
  for (const i of [1, 2]) for (let k = 0; k < 40; k++) written.push(`burst-${i}-${k}`);
  await until("everything confirmed", async () => (await pending(tabs[0])) === 0, 20000);
  let titles = await serverTitles();
  check("two tabs writing at once: the server has every write once",
    titles.length === written.length && written.every((t) => titles.includes(t)), `${titles.length} of ${written.length}`);
  const local = await tabs[0].evaluate((u) => window.db.query(`Todo.byOwner("${u}").count()`), USER);
  check("and every tab's view agrees", local === written.length, `${local}`);
  check("the server received no commit twice", (await duplicates()) === 0, `${await duplicates()}`);

  // 3b. `db.pages` in every tab, the followers' through the leader (each page crosses
  //     the tabs as a message): each gives the query's documents, in its order.
  const titlesOf = (p) => p.evaluate((u) => window.db.query(`Todo.byOwner("${u}").map(.title)`), USER);
  const pagedTitles = (p) => p.evaluate(async (u) => {
    const out = [];
    for await (const docs of window.db.pages(`Todo.byOwner("${u}")`, { pageSize: 7 })) for (const d of docs) out.push(d.title);
    return out;
  }, USER);
  const expected = await titlesOf(tabs[0]);
  for (const [i, p] of tabs.entries()) {
    const got = await pagedTitles(p);
    check(`tab ${i}'s db.pages (${(await isLeader(p)) ? "the leader" : "a follower"}) gives the query's ${expected.length} documents in order`,
      expected.length === written.length && JSON.stringify(got) === JSON.stringify(expected), `${got.length} of ${expected.length}`);
  }

  // 5. The leader hangs (frozen: its page runs nothing for 7 s): another tab takes over,
  //    and the old leader, when it runs again, follows and writes nothing.
  let [leader] = await leaders(tabs);
  const hung = leader.evaluate(() => { const end = Date.now() + 7000; while (Date.now() < end); });
  const others = tabs.filter((p) => p !== leader);
  await until("another tab to lead", async () => (await leaders(others)).length === 1, 15000);
  await others[0].evaluate((t) => window.write(t), "while-frozen");
  written.push("while-frozen");
  await until("the write during the freeze to be confirmed",
    () => others[0].evaluate(() => window.confirmed["while-frozen"] !== undefined), 10000);
  check("with the leader frozen, another tab leads and syncs",
    typeof (await others[0].evaluate(() => window.confirmed["while-frozen"])) === "number");
  await hung;
  await until("the thawed tab to catch up as a follower",
    () => leader.evaluate(() => window.seen["while-frozen"] !== undefined), 10000);
  check("the thawed tab follows again and sees what happened", !(await isLeader(leader)));
  check("still one leader", (await leaders(tabs)).length === 1);
  await until("everything confirmed", async () => (await pending(others[0])) === 0, 20000);
  check("no commit was received twice across the freeze", (await duplicates()) === 0, `${await duplicates()}`);

  // 6. The leader is closed: another takes over; writes made meanwhile sync.
  [leader] = await leaders(tabs);
  const rest = tabs.filter((p) => p !== leader);
  const unsent = rest[0].evaluate(async () => {
    const ws = [];
    for (let k = 0; k < 10; k++) ws.push(window.write(`handover-${k}`));
    await Promise.all(ws);
  });
  await leader.close();
  await unsent;
  for (let k = 0; k < 10; k++) written.push(`handover-${k}`);
  await until("a new leader", async () => (await leaders(rest)).length === 1, 10000);
  await until("the handover writes confirmed", async () => (await pending(rest[0])) === 0, 20000);
  titles = await serverTitles();
  check("closing the leader hands over: every write lands once",
    titles.length === written.length && written.every((t) => titles.includes(t)), `${titles.length} of ${written.length}`);
  check("still no commit received twice", (await duplicates()) === 0, `${await duplicates()}`);

  // 7. The server restarts in the middle of writing.
  const during = rest[1].evaluate(async () => {
    for (let k = 0; k < 30; k++) {
      await window.write(`restart-${k}`);
      await new Promise((r) => setTimeout(r, 20));
    }
  });
  await new Promise((r) => setTimeout(r, 150));
  await stopProcess(server, "SIGKILL");
  await new Promise((r) => setTimeout(r, 300));
  server = await startWarren(args);
  await during;
  for (let k = 0; k < 30; k++) written.push(`restart-${k}`);
  await until("everything confirmed after the restart", async () => (await pending(rest[0])) === 0, 30000);
  titles = await serverTitles();
  check("a server restart in the middle loses nothing and doubles nothing",
    titles.length === written.length && new Set(titles).size === titles.length && written.every((t) => titles.includes(t)),
    `${titles.length} of ${written.length}`);
  for (const [i, p] of rest.entries()) {
    const n = await p.evaluate((u) => window.db.query(`Todo.byOwner("${u}").count()`), USER);
    check(`tab ${i}'s view has every write`, n === written.length, `${n}`);
  }
} catch (e) {
  fail(e);
} finally {
  await ctx?.close().catch(() => {});
  await stopProcess(server);
  finish();
}
