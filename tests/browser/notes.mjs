// The demo's collaborative notes, end to end: Debian's Chromium driven by
// playwright-core, two users in separate browser profiles, the demo served by a real
// `warren serve --static-dir demo/dist --dev-tokens` process.
//
// 1. ann makes a board shared with bob, with a task; both open its notes; what ann
//    types shows in bob's notes within a second; each sees the other's caret
//    (presence, over the sync connection), which stays in place through edits.
// 2. Both lose the network (the browser's network is cut) and type in the same
//    paragraph; both reload with no network: the app starts and the notes keep each
//    one's own edits; back online, both show the same merged text, with both edits,
//    within a second, and the server holds that text.
// 3. carol, not on the board, never receives the notes, and her edit is refused at
//    once.
// Screenshots of each step go to target/notes-screenshots/.
//
// Run by .ci/test-browser after .ci/build-demo and a debug build of the server.
import { mkdirSync } from "node:fs";
import { join } from "node:path";
import { check, fail, finish, until, tempDir, freePort, startWarren, stopProcess, profile, root } from "./harness.mjs";

const work = tempDir("notes-e2e");
const shots = join(root, "target", "notes-screenshots");
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

const board = (name) => `.board[data-team="${name}"]`;
const notes = (page) => page.$eval("#notes", (e) => e.value);
const pending = (page) => page.$eval("#status", (e) => Number(e.dataset.pending));

/** Opens the notes of the board's first task. */
async function openNotes(page) {
  await page.click(`${board("Launch")} li[data-id] button.notes`);
  await page.waitForSelector("#notes-card:not([hidden])");
}

/** Types `text` at `at` (a character offset, or "end") of the notes, as a person does. */
async function typeAt(page, at, text) {
  await page.focus("#notes");
  await page.$eval("#notes", (e, at) => {
    const i = at === "end" ? e.value.length : at;
    e.setSelectionRange(i, i);
  }, at);
  await page.keyboard.type(text);
}

/** The task's notes as the server holds them (docs/STORAGE.md, "Text fields"). */
async function serverNotes(user) {
  const { token } = await (await fetch(`${base}v1/dev/token`, {
    method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify({ sub: user }),
  })).json();
  const r = await fetch(`${base}v1/pull`, { method: "POST", headers: { authorization: `Bearer ${token}` }, body: "{}" });
  const tasks = (await r.json()).snapshots.flatMap((s) => s.docs).filter((d) => d.collection === "Task");
  if (!tasks.length) return null;
  const body = tasks[0].data.notes;
  if (!body) return "";
  const b = Buffer.from(body.$bytes, "base64");
  return b.subarray(5, 5 + b.readUInt32LE(1)).toString("utf8");
}

async function timed(what, f, ms) {
  const t0 = Date.now();
  await until(what, f, ms);
  return Date.now() - t0;
}

const contexts = [];
try {
  const annCtx = await profile(join(work, "ann"));
  const bobCtx = await profile(join(work, "bob"));
  const carolCtx = await profile(join(work, "carol"));
  contexts.push(annCtx, bobCtx, carolCtx);
  let ann = await signIn(annCtx, "ann");
  let bob = await signIn(bobCtx, "bob");

  // 1. A shared board with a task; both open its notes; ann types.
  await ann.fill("#team-name", "Launch");
  await ann.fill("#team-members", "bob");
  await ann.click("#team-form button");
  await ann.waitForSelector(board("Launch"));
  await ann.fill(`${board("Launch")} input[placeholder="New task"]`, "Plan the launch");
  await ann.press(`${board("Launch")} input[placeholder="New task"]`, "Enter");
  await bob.waitForSelector(`${board("Launch")} li[data-id] button.notes`);
  await openNotes(ann);
  await openNotes(bob);
  await typeAt(ann, 0, "Agenda: venue, press, budget.");
  const seen = await timed("bob to see ann's notes", async () => (await notes(bob)) === "Agenda: venue, press, budget.", 5000);
  check(`what ann types shows in bob's notes within a second (${seen} ms)`, seen <= 1000);
  await until("the server to hold the notes", async () => (await serverNotes("ann")) === "Agenda: venue, press, budget.", 5000);
  await shot(ann, "1-ann-types");
  await shot(bob, "1-bob-sees-notes");

  // Presence: bob puts his caret after "Agenda: "; ann sees who and where, and it
  // stays on that word when ann types before it.
  await bob.focus("#notes");
  await bob.$eval("#notes", (e) => { e.setSelectionRange(8, 8); e.dispatchEvent(new Event("select")); });
  const caret = (page, who) => page.$eval(`#presence li[data-user=${who}]`, (e) => Number(e.dataset.index)).catch(() => null);
  const shown = await timed("ann to see bob's caret", async () => (await caret(ann, "bob")) === 8, 5000);
  check(`ann sees bob's caret within a second (${shown} ms)`, shown <= 1000);
  await typeAt(ann, 0, "# ");
  await until("bob's caret moves with the text", async () => (await caret(ann, "bob")) === 10, 5000);
  await ann.$eval("#notes", (e) => { e.setSelectionRange(0, 0); e.dispatchEvent(new Event("select")); });
  await until("bob sees ann's caret", async () => (await caret(bob, "ann")) === 0, 5000);
  check("presence shows each one's caret to the other, kept in place through edits", true);
  await shot(ann, "1-ann-sees-bobs-caret");
  await shot(bob, "1-bob-sees-anns-caret");

  // 2. Both offline, both type in the same sentence, both reload offline.
  // The service worker must have taken each page over (it does so a moment after it is
  // `ready`, once it has cached the app shell) for the offline reload to start the app.
  for (const p of [ann, bob]) {
    await p.evaluate(() => navigator.serviceWorker.ready);
    await until("a service worker to control the page", () => p.evaluate(() => !!navigator.serviceWorker.controller), 10000);
  }
  await annCtx.setOffline(true);
  await bobCtx.setOffline(true);
  for (const p of [ann, bob]) {
    await until("offline", async () => (await p.$eval("#status", (e) => e.dataset.connected)) === "false");
  }
  await typeAt(ann, "# Agenda: venue,".length, " catering,");
  await typeAt(bob, "end", " Bob books the venue.");
  await until("both edits durable", async () => (await pending(ann)) > 0 && (await pending(bob)) > 0);
  await new Promise((ok) => setTimeout(ok, 300)); // the binding gathers keys for 40 ms
  const annOffline = await notes(ann);
  const bobOffline = await notes(bob);
  check("offline, each has only its own edit",
    annOffline === "# Agenda: venue, catering, press, budget." && bobOffline === "# Agenda: venue, press, budget. Bob books the venue.",
    `${annOffline} | ${bobOffline}`);
  await shot(ann, "2-ann-offline");
  await shot(bob, "2-bob-offline");

  await ann.reload();
  await bob.reload();
  for (const p of [ann, bob]) {
    await p.waitForSelector("body[data-ready=true]");
    await openNotes(p);
  }
  await until("the notes after the offline reload", async () => (await notes(ann)) === annOffline && (await notes(bob)) === bobOffline, 5000);
  check("after an offline reload, the app starts and each keeps its own edit", true);
  await shot(bob, "3-bob-reloaded-offline");

  await annCtx.setOffline(false);
  await bobCtx.setOffline(false);
  const merged = "# Agenda: venue, catering, press, budget. Bob books the venue.";
  const t = await timed("both to show the merged notes", async () => (await notes(ann)) === merged && (await notes(bob)) === merged, 15000);
  check(`back online, both show the same merged notes within a second (${t} ms after reconnecting)`, t <= 1000);
  await until("the server to hold them", async () => (await serverNotes("ann")) === merged, 5000);
  check("the server holds the same notes", (await serverNotes("bob")) === merged);
  await shot(ann, "4-ann-merged");
  await shot(bob, "4-bob-merged");

  // 3. carol is not on the board: no notes for her, and her edit is refused at once.
  const carol = await signIn(carolCtx, "carol");
  await new Promise((ok) => setTimeout(ok, 1000));
  check("carol sees no board", (await carol.$$(board("Launch"))).length === 0);
  check("carol never receives the notes", (await serverNotes("carol")) === null
    && !(await carol.content()).includes("Bob books the venue"));
  const taskId = await ann.$eval(`${board("Launch")} li[data-id]`, (e) => e.dataset.id);
  const refused = await carol.evaluate(async (id) => {
    try {
      await window.demo.db.transact(`Task.byId(${JSON.stringify(id)}).editText("notes", "AAA=")`).result;
      return "accepted";
    } catch (e) {
      return e.code;
    }
  }, taskId);
  check("carol's edit is refused at once", refused === "TYPE_ERROR", refused);
  await shot(carol, "5-carol-sees-nothing");
  check("and the notes are unchanged", (await serverNotes("ann")) === merged);
} catch (e) {
  fail(e);
} finally {
  for (const c of contexts) await c.close().catch(() => {});
  await stopProcess(server);
}
finish();
