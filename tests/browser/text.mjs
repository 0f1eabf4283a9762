// Collaborative text end to end: Debian's Chromium driven by playwright-core, the npm
// package (db.text: a Y.Doc from the `yjs` package kept in step with the replica) in
// two browser profiles, a real `warren serve` process.
//
// 1. ann creates note n1; ann and bob bind its text; ann types, bob sees it.
// 2. Both go offline and edit the same paragraph; both pages are reloaded offline and
//    still show their own edits (from IndexedDB); both come back online and show the
//    same merged text, with both insertions, which is also the server's.
//    An edit the rules refuse (too long) is taken back from the editor, which goes on.
// 3. eve (whom the rules refuse) never receives the note, and her edit is refused at
//    once.
// 4. Rich text: ann and bob edit note n2 in ProseMirror through y-prosemirror's own
//    plugin bound to the binding's Y.XmlFragment (real key presses), online, then
//    offline at once in the same paragraph, plus a link; after reconnecting both
//    editors show the same document, and the server's text is its text.
//
// Run by .ci/test-browser after .ci/build-package and a debug build of the server.
import { createHmac } from "node:crypto";
import { createServer } from "node:http";
import { readFileSync, existsSync, mkdirSync } from "node:fs";
import { join, extname, normalize } from "node:path";
import { importMap } from "../../.ci/importmap.mjs";
import { check, fail, finish, until, tempDir, freePort, startWarren, stopProcess, profile as browser, root } from "./harness.mjs";

const work = tempDir("browser-text");
const SECRET = "browser-text-secret-0123456789abcdef";
const pkg = join(root, "js-package");
const modules = join(pkg, "node_modules");
const shots = join(process.env.CARGO_TARGET_DIR || join(root, "target"), "text-screenshots");

// The import map: `warren` from the built package, `yjs` and its dependencies from
// js-package's node_modules.
const imports = { warren: "/warren/dist/index.js", ...importMap(modules, "/nm", ["yjs", "lib0", "isomorphic.js",
  "y-prosemirror", "y-protocols", "prosemirror-state", "prosemirror-view", "prosemirror-model",
  "prosemirror-transform", "prosemirror-schema-basic", "prosemirror-keymap", "prosemirror-commands",
  "orderedmap", "w3c-keyname"]) };
const page = readFileSync(join(root, "tests", "browser", "text.html"), "utf8")
  .replace("IMPORT_MAP", JSON.stringify({ imports }));

const types = { ".html": "text/html", ".js": "text/javascript", ".mjs": "text/javascript", ".wasm": "application/wasm" };
const files = createServer((req, res) => {
  const url = new URL(req.url, "http://x");
  if (url.pathname === "/") {
    res.writeHead(200, { "content-type": "text/html" });
    res.end(page);
    return;
  }
  let path = null;
  if (url.pathname === "/schema.warren") path = join(root, "tests", "browser", "text.warren");
  else if (url.pathname.startsWith("/warren/")) path = join(pkg, normalize(url.pathname.slice(8)));
  else if (url.pathname.startsWith("/nm/")) path = join(modules, normalize(url.pathname.slice(4)));
  if (!path || !existsSync(path)) { res.writeHead(404); res.end(); return; }
  res.writeHead(200, { "content-type": types[extname(path)] || "text/plain" });
  res.end(readFileSync(path));
});
await new Promise((ok) => files.listen(0, "127.0.0.1", ok));
const pageBase = `http://127.0.0.1:${files.address().port}/`;

const syncPort = await freePort();
const ws = `ws://127.0.0.1:${syncPort}/v1/sync`;
const server = await startWarren(["--listen", `127.0.0.1:${syncPort}`, "--data-dir", join(work, "data"),
  "--schema", join(root, "tests", "browser", "text.warren"), "--hs256-secret", SECRET]);

function token(sub) {
  const b = (o) => Buffer.from(JSON.stringify(o)).toString("base64url");
  const head = `${b({ alg: "HS256", typ: "JWT" })}.${b({ sub, exp: Math.floor(Date.now() / 1000) + 3600 })}`;
  return `${head}.${createHmac("sha256", SECRET).update(head).digest("base64url")}`;
}

/** The note's text as the server holds it (what `pull` gives `sub`), or null. */
async function serverText(sub = "ann", id = "n1") {
  const r = await fetch(`http://127.0.0.1:${syncPort}/v1/pull`, {
    method: "POST", headers: { authorization: `Bearer ${token(sub)}` }, body: "{}",
  });
  const docs = (await r.json()).snapshots.flatMap((s) => s.docs).filter((d) => d.collection === "Note" && d.id === id);
  const body = docs[0]?.data?.body;
  if (!body) return docs.length ? "" : null;
  // The stored text value (docs/STORAGE.md, "Text fields"): 01, u32 length, UTF-8.
  const b = Buffer.from(body.$bytes, "base64");
  return b.subarray(5, 5 + b.readUInt32LE(1)).toString("utf8");
}

async function openPage(ctx, sub, extra = {}) {
  const p = ctx.pages()[0] || await ctx.newPage();
  p.on("pageerror", (e) => console.log(`page error (${sub}): ${e}`));
  const q = new URLSearchParams({ db: `text-${sub}`, ws, token: token(sub), ...extra });
  await p.goto(`${pageBase}?${q}`);
  await p.evaluate(() => window.ready);
  return p;
}

const contexts = [];
try {
  const ann = await browser(join(work, "profile-ann"));
  const bob = await browser(join(work, "profile-bob"));
  const eve = await browser(join(work, "profile-eve"));
  contexts.push(ann, bob, eve);
  let a = await openPage(ann, "ann");
  let b = await openPage(bob, "bob");

  // 1. Online: ann creates the note and types; bob sees it.
  await a.evaluate(async () => { const w = window.db.transact('Note.create({ id: "n1" })'); await w.confirmed; });
  await until("bob has the note", () => b.evaluate(() => window.exists()));
  await a.evaluate(() => window.bind());
  await b.evaluate(() => window.bind());
  await a.evaluate(() => window.insert(0, "The plan: meet at noon."));
  await until("bob sees ann's text", async () => (await b.evaluate(() => window.str())) === "The plan: meet at noon.");
  await until("the server has it", async () => (await serverText()) === "The plan: meet at noon.");
  check("online: an edit reaches the other editor and the server", true);

  // 2. Offline, both edit the same sentence; reload offline; reconnect.
  await a.evaluate(() => window.db.setOnline(false));
  await b.evaluate(() => window.db.setOnline(false));
  await a.evaluate(() => window.insert(9, " (ann: bring the map)"));
  await b.evaluate(() => window.insert(23, " Bob brings lunch."));
  await b.evaluate(() => window.insert(0, "NOTE: "));
  const aOffline = await a.evaluate(() => window.str());
  const bOffline = await b.evaluate(() => window.str());
  check("offline, each sees only its own edits",
    aOffline === "The plan: (ann: bring the map) meet at noon." && bOffline === "NOTE: The plan: meet at noon. Bob brings lunch.",
    `${aOffline} | ${bOffline}`);
  check("the server has neither offline edit", (await serverText()) === "The plan: meet at noon.");

  a = await openPage(ann, "ann", { offline: "1" });
  b = await openPage(bob, "bob", { offline: "1" });
  const aReloaded = await a.evaluate(() => window.bind());
  const bReloaded = await b.evaluate(() => window.bind());
  check("after an offline reload, each still shows its own edits (from IndexedDB)",
    aReloaded === aOffline && bReloaded === bOffline, `${aReloaded} | ${bReloaded}`);

  await a.evaluate(() => window.db.setOnline(true));
  await b.evaluate(() => window.db.setOnline(true));
  const t0 = Date.now();
  await until("both show the same text", async () => {
    const [x, y] = [await a.evaluate(() => window.str()), await b.evaluate(() => window.str())];
    return x === y && x.includes("ann: bring the map") && x.includes("Bob brings lunch") && x.startsWith("NOTE: ");
  }, 10000);
  const merged = await a.evaluate(() => window.str());
  check(`after reconnecting, both show the same merged text (${Date.now() - t0} ms)`, true, merged);
  await until("the server holds the merged text", async () => (await serverText()) === merged, 5000);
  check("the server's text equals both editors'", (await serverText()) === merged, merged);
  check("no editor had to start again (no edit was refused)",
    (await a.evaluate(() => window.resets)) === 0 && (await b.evaluate(() => window.resets)) === 0);

  // A refused edit (the rule bounds the text to 5,000 characters) is taken back: the
  // binding starts a new doc from the replica's text and says so.
  await a.evaluate(() => window.insert(0, "x".repeat(6000)));
  await until("ann's binding resets", async () => (await a.evaluate(() => window.resets)) === 1, 5000);
  const back = await a.evaluate(() => [window.str(), window.t.error && window.t.error.code]);
  check("a refused edit is taken back from the editor", back[0] === merged && back[1] === "PERMISSION_DENIED", JSON.stringify(back));
  await a.evaluate(() => window.insert(0, "> "));
  await until("an edit after the reset reaches bob", async () => (await b.evaluate(() => window.str())) === `> ${merged}`, 5000);
  await until("and the server", async () => (await serverText()) === `> ${merged}`, 5000);
  check("editing goes on after a reset", true);

  // 3. eve may not read the note: she never receives it, and her edit is refused at once.
  const e = await openPage(eve, "eve");
  await new Promise((ok) => setTimeout(ok, 1000));
  check("eve never receives the note", !(await e.evaluate(() => window.exists())) && (await serverText("eve")) === null);
  const refused = await e.evaluate(async () => {
    try {
      await window.db.transact('Note.byId("n1").editText("body", "AAA=")').result;
      return "accepted";
    } catch (err) {
      return `${err.code}: ${err.message}`;
    }
  });
  // She cannot read the note, so to her it does not exist.
  check("eve's edit is refused at once", refused.startsWith("TYPE_ERROR") && refused.includes("not found, or is not readable"), refused);
  check("and the text is unchanged", (await serverText()) === `> ${merged}`);

  // 4. Rich text through y-prosemirror, typed with the keyboard.
  await a.evaluate(async () => { const w = window.db.transact('Note.create({ id: "n2" })'); await w.confirmed; });
  await until("bob has note n2", () => b.evaluate(() => window.db.query('Note.byId("n2")').then((d) => d !== null)));
  await a.evaluate(() => window.mount("n2"));
  await b.evaluate(() => window.mount("n2"));
  await a.click("#pm-n2 .ProseMirror");
  await a.keyboard.type("Agenda for Monday");
  await a.keyboard.press("Enter");
  await a.keyboard.type("Budget review");
  await a.evaluate(() => window.pmBinding.flush());
  const typed = "Agenda for Monday\nBudget review";
  await until("bob's ProseMirror shows ann's paragraphs", async () =>
    JSON.stringify(await b.evaluate(() => window.pmParagraphs())) === JSON.stringify(["Agenda for Monday", "Budget review"]));
  await until("the server reads the paragraphs as text", async () => (await serverText("ann", "n2")) === typed);
  check("rich text: paragraphs typed in one ProseMirror reach the other and the server", true);

  await a.evaluate(() => window.db.setOnline(false));
  await b.evaluate(() => window.db.setOnline(false));
  await a.click("#pm-n2 .ProseMirror");
  await a.keyboard.press("Control+End");
  await a.keyboard.type(" (ann)");
  await a.evaluate(() => window.pmLink("https://example.com/agenda"));
  await b.click("#pm-n2 .ProseMirror");
  await b.keyboard.press("Control+Home");
  await b.keyboard.type("Bob: ");
  await b.keyboard.press("Control+End");
  await b.keyboard.press("Enter");
  await b.keyboard.type("Lunch at noon");
  await b.evaluate(() => window.pmBinding.flush());
  await a.evaluate(() => window.db.setOnline(true));
  await b.evaluate(() => window.db.setOnline(true));
  await until("both ProseMirrors show the same document", async () => {
    const [x, y] = [await a.evaluate(() => window.pmParagraphs()), await b.evaluate(() => window.pmParagraphs())];
    const s = JSON.stringify(x);
    return s === JSON.stringify(y) && s.includes("Bob: ") && s.includes("(ann)") && s.includes("Lunch at noon");
  }, 10000);
  const paras = await a.evaluate(() => window.pmParagraphs());
  check("offline rich-text edits of both merge the same way in both editors", true, JSON.stringify(paras));
  await until("the server holds the merged rich text", async () => (await serverText("ann", "n2")) === paras.join("\n"), 5000);
  check("the server's text is the merged document's text", (await serverText("ann", "n2")) === paras.join("\n"));
  const links = [await a.evaluate(() => window.pmLinks()), await b.evaluate(() => window.pmLinks())];
  check("the link (a mark of two attributes) reached both editors",
    links.every((l) => l.length > 0 && l.every((h) => h === "https://example.com/agenda")), JSON.stringify(links));
  mkdirSync(shots, { recursive: true });
  await a.screenshot({ path: join(shots, "prosemirror-ann.png") });
  await b.screenshot({ path: join(shots, "prosemirror-bob.png") });
} catch (e) {
  fail(e);
} finally {
  for (const c of contexts) await c.close().catch(() => {});
  await stopProcess(server);
  files.close();
}
finish();
