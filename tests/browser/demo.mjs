// The demo, end to end, as its users would use it: Debian's Chromium driven by
// playwright-core, two users in separate browser profiles, the demo served by a real
// `warren serve --static-dir demo/dist --dev-tokens` process.
//
// 1. ann signs in, creates a board shared with bob, and keeps a private list.
// 2. bob sees the board and its tasks within a second of ann's writes; never ann's
//    private list (neither on screen nor in his IndexedDB).
// 3. ann goes offline (the browser's network is cut), adds and edits tasks, reloads the
//    page (the service worker starts the app with no network), comes back online; bob
//    sees it all within a second of the reconnection.
// 4. bob tries a forbidden edit (deleting a task: only the admin may): the UI refuses it
//    at once with a message for people (no rule text), and the task stays everywhere.
// 5. Before signing in, the page shows the sign-in card and none of the app's forms;
//    it has a favicon.
// 6. A toggle of a todo deleted meanwhile says so ("deleted meanwhile", from the
//    function's abort reason); a 60 KB or blank title through the API is refused by
//    the schema, and the longest allowed keeps the page short.
// Screenshots of each step go to target/demo-screenshots/.
//
// Run by .ci/test-browser after .ci/build-demo and a debug build of the server.
import { mkdirSync } from "node:fs";
import { join } from "node:path";
import { check, fail, finish, until, tempDir, freePort, startWarren, stopProcess, profile, root } from "./harness.mjs";

const work = tempDir("demo-e2e");
const shots = join(root, "target", "demo-screenshots");
mkdirSync(shots, { recursive: true });
const port = await freePort();
const base = `http://127.0.0.1:${port}/`;
const server = await startWarren(["--listen", `127.0.0.1:${port}`, "--data-dir", join(work, "data"),
  "--schema", join(root, "demo", "schema.warren"), "--static-dir", join(root, "demo", "dist"), "--dev-tokens"]);

const shot = (page, name) => page.screenshot({ path: join(shots, `${name}.png`), fullPage: true });

async function signIn(ctx, user) {
  const page = ctx.pages()[0] || await ctx.newPage();
  page.on("pageerror", (e) => console.log(`page error (${user}): ${e}`));
  await page.goto(base);
  await page.click(`[data-user=${user}]`);
  await page.waitForSelector("body[data-ready=true]");
  return page;
}

/** The titles the page shows in a list (`#todos`, or a board's). */
const titles = (page, sel) => page.$$eval(`${sel} li .title`, (els) => els.map((e) => e.textContent));
const board = (name) => `.board[data-team="${name}"]`;
const pending = (page) => page.$eval("#status", (e) => Number(e.dataset.pending));

/** Waits until `f` is true and says how long that took, in ms. */
async function timed(what, f, ms) {
  const t0 = Date.now();
  await until(what, f, ms);
  return Date.now() - t0;
}

let annCtx, bobCtx;
try {
  annCtx = await profile(join(work, "ann"));
  bobCtx = await profile(join(work, "bob"));
  const first = annCtx.pages()[0] || await annCtx.newPage();
  await first.goto(base);
  await first.waitForSelector("#signin:not([hidden])");
  check("the sign-in page shows the sign-in card and none of the app's forms",
    (await first.isVisible("#signin")) && !(await first.isVisible("#app")) && !(await first.isVisible("#todo-title")));
  check("the page has a favicon", await first.$eval("link[rel=icon]", (l) => l.href.startsWith("data:image/svg")));
  await shot(first, "0-sign-in");
  const ann = await signIn(annCtx, "ann");
  const bob = await signIn(bobCtx, "bob");
  check("both users are signed in and online", await until("connections", async () =>
    (await ann.$eval("#status", (e) => e.dataset.connected)) === "true"
    && (await bob.$eval("#status", (e) => e.dataset.connected)) === "true"));
  check("the status pill shows the `online` state", (await ann.$eval("#status", (e) => e.dataset.state)) === "online");

  // 1. ann's private list and a shared board.
  await ann.fill("#todo-title", "ann's private note");
  await ann.press("#todo-title", "Enter");
  await ann.fill("#team-name", "Launch");
  await ann.fill("#team-members", "bob");
  await ann.click("#team-form button");
  await ann.waitForSelector(board("Launch"));
  await ann.fill(`${board("Launch")} input[placeholder="New task"]`, "Write the plan");
  await ann.press(`${board("Launch")} input[placeholder="New task"]`, "Enter");
  const seen = await timed("bob to see the board", async () =>
    (await titles(bob, board("Launch"))).includes("Write the plan"), 5000);
  check(`bob sees the shared board and its task within a second (${seen} ms)`, seen <= 1000);
  await shot(ann, "1-ann-online");
  await shot(bob, "1-bob-sees-board");

  // 2. ann goes offline: the browser's network is cut.
  await ann.evaluate(() => navigator.serviceWorker.ready);
  // `ready` resolves once the worker is active; it takes the page over (clients.claim)
  // a moment later, after caching the app shell (both engine modules among it).
  await until("a service worker to control the page", () => ann.evaluate(() => !!navigator.serviceWorker.controller), 10000);
  check("a service worker controls the page", await ann.evaluate(() => !!navigator.serviceWorker.controller));
  await annCtx.setOffline(true);
  await until("ann to notice being offline", async () =>
    (await ann.$eval("#status", (e) => e.dataset.connected)) === "false");
  for (const t of ["Buy the domain", "Draft the launch post"]) {
    await ann.fill(`${board("Launch")} input[placeholder="New task"]`, t);
    await ann.press(`${board("Launch")} input[placeholder="New task"]`, "Enter");
  }
  await until("the new tasks on ann's screen", async () => (await titles(ann, board("Launch"))).length === 3);
  // An edit: tick off the first task.
  await ann.click(`${board("Launch")} li[data-id] input[type=checkbox]`);
  await until("the tick on ann's screen", async () => (await ann.$$(`${board("Launch")} li.done`)).length === 1);
  check("offline writes wait in the outbox", (await pending(ann)) === 3, `pending ${await pending(ann)}`);
  await shot(ann, "2-ann-offline");
  check("bob does not see them while ann is offline", (await titles(bob, board("Launch"))).length === 1);

  // 3. A reload with no network: the service worker starts the app, IndexedDB has the data.
  await ann.reload();
  await ann.waitForSelector("body[data-ready=true]");
  const afterReload = await titles(ann, board("Launch"));
  check("after an offline reload the app starts and shows every task",
    afterReload.length === 3 && afterReload.includes("Buy the domain"), JSON.stringify(afterReload));
  check("after an offline reload the outbox still holds the writes", (await pending(ann)) === 3);
  check("the page really had no network", await ann.evaluate(() => fetch("/healthz").then(() => false, () => true)));
  await shot(ann, "3-ann-reloaded-offline");

  // 4. Back online: everything syncs once; bob sees it within a second of the reconnection.
  // Meanwhile bob is typing a task on the board the sync re-renders: what he typed, and
  // his focus, stay (a re-render used to replace the input, and a task typed while an
  // update arrived was lost).
  const bobInput = `${board("Launch")} input[placeholder="New task"]`;
  await bob.fill(bobInput, "half-typed");
  const t0 = Date.now();
  await annCtx.setOffline(false);
  await until("ann's outbox to drain", async () => (await pending(ann)) === 0, 15000);
  const drained = Date.now() - t0;
  const bobSaw = await timed("bob to see ann's offline work", async () => {
    const ts = await titles(bob, board("Launch"));
    return ts.length === 3 && (await bob.$$(`${board("Launch")} li.done`)).length === 1;
  }, 5000);
  check(`bob sees the offline work within a second of ann's reconnection (synced in ${drained} ms, then ${bobSaw} ms)`,
    bobSaw <= 1000);
  check("the update kept what bob was typing on that board, and his focus",
    (await bob.$eval(bobInput, (e) => e.value === "half-typed" && document.activeElement === e)));
  await bob.fill(bobInput, "");
  await shot(bob, "4-bob-after-sync");

  // 5. bob never sees ann's private list: not on screen, not in his IndexedDB.
  check("bob's screen never shows ann's private list", !(await bob.content()).includes("ann's private note"));
  const bobStored = await bob.evaluate(async () => {
    const dbs = await indexedDB.databases();
    const out = [];
    for (const { name } of dbs) {
      const idb = await new Promise((ok, err) => { const r = indexedDB.open(name); r.onsuccess = () => ok(r.result); r.onerror = () => err(r.error); });
      for (const store of idb.objectStoreNames) {
        const tx = idb.transaction(store);
        const [keys, values] = await Promise.all([tx.objectStore(store).getAllKeys(), tx.objectStore(store).getAll()]
          .map((r) => new Promise((ok) => { r.onsuccess = () => ok(r.result); })));
        const text = (x) => x instanceof ArrayBuffer ? new TextDecoder("latin1").decode(new Uint8Array(x))
          : ArrayBuffer.isView(x) ? new TextDecoder("latin1").decode(x) : JSON.stringify(x);
        out.push(...keys.map(text), ...values.map(text));
      }
      idb.close();
    }
    return out.join("\n");
  });
  check("bob's IndexedDB holds the shared tasks", bobStored.includes("Buy the domain"));
  check("bob's IndexedDB never held ann's private list", !bobStored.includes("ann's private note"));

  // 6. A forbidden edit: bob deletes a task of ann's board (only the admin may).
  await bob.click(`${board("Launch")} li[data-id] button.remove`);
  const msg = await bob.waitForSelector(".message[data-code=PERMISSION_DENIED]", { timeout: 2000 });
  const text = await msg.textContent();
  check("a forbidden edit is refused in the UI with a message", text.includes("rules do not allow"), text);
  check("the message shows no rule text", !/auth\.sub|Team\.byId|denied|PERMISSION_DENIED/.test(text), text);
  await shot(bob, "5-bob-refused");
  check("the refused delete changed nothing for bob", (await titles(bob, board("Launch"))).length === 3);
  check("nor anything for ann", (await titles(ann, board("Launch"))).length === 3);
  check("nothing was queued for the server", (await pending(bob)) === 0);

  // 7. The admin may delete.
  await ann.click(`${board("Launch")} li[data-id] button.remove`);
  const gone = await timed("bob to see the delete", async () => (await titles(bob, board("Launch"))).length === 2, 5000);
  check(`the admin's delete reaches bob within a second (${gone} ms)`, gone <= 1000);

  // 8. A todo deleted meanwhile: its checkbox, still on screen, is ticked.
  await ann.evaluate(async () => {
    const li = document.querySelector("#todos li[data-id]");
    const box = li.querySelector("input[type=checkbox]");
    await window.demo.db.call("removeTodo", { id: li.dataset.id }).result;
    box.dispatchEvent(new Event("change"));
  });
  const meanwhile = await ann.waitForSelector(".message[data-code=ABORTED]", { timeout: 2000 });
  const said = await meanwhile.textContent();
  check("ticking a todo deleted meanwhile says so", said.includes("deleted meanwhile") && !said.includes("ABORTED"), said);
  await shot(ann, "6-ann-deleted-meanwhile");

  // 9. The schema says what a title is: a 60 KB or a blank one through the API is
  // refused at once; the longest it allows (200 characters, one word, no spaces) keeps
  // the page short.
  const refusedCodes = await ann.evaluate(async () => {
    const codeOf = (title) => window.demo.db.call("addTodo", { title }).result.then(() => "accepted", (e) => e.code);
    return [await codeOf("W".repeat(60_000)), await codeOf("   ")];
  });
  check("a 60 KB title and a blank one through the API are refused by the schema",
    refusedCodes.every((c) => c === "VALIDATION_FAILED"), JSON.stringify(refusedCodes));
  await ann.evaluate(() => window.demo.db.call("addTodo", { title: "W".repeat(200) }).result);
  await until("the long title on screen", async () =>
    (await titles(ann, "#todos")).some((t) => t.length === 200));
  const height = await ann.evaluate(() => document.documentElement.scrollHeight);
  const width = await ann.evaluate(() => document.documentElement.scrollWidth - document.documentElement.clientWidth);
  check(`a title of 200 characters in one word keeps the page short and unscrolled sideways (${height} px high)`, height < 2000 && width <= 0,
    `${height} ${width}`);
  await shot(ann, "7-ann-long-title");
} catch (e) {
  fail(e);
} finally {
  await annCtx?.close().catch(() => {});
  await bobCtx?.close().catch(() => {});
  await stopProcess(server);
  finish();
}
