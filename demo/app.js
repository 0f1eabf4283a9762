// The demo: a team task board on Warren, written only against the npm package's API
// (loaded here with no bundler, through the import map in index.html).

import { open } from "warren";
import * as Y from "yjs";
import { bindTextarea, showPresence } from "./notes.js";

const $ = (sel) => document.querySelector(sel);
const USER_KEY = "warren-demo:user";
const tokenKey = (user) => `warren-demo:token:${user}`;

// Keep the app shell for offline starts (see sw.js).
// A page that was loading while the worker activated can miss its `clients.claim()`
// (a document not yet ready is not claimed): once active, the page asks it to claim
// again, so this visit too runs offline (the text editor's module loads on demand).
if ("serviceWorker" in navigator) {
  navigator.serviceWorker.register("./sw.js").catch((e) => console.warn("no service worker:", e));
  navigator.serviceWorker.ready.then((r) => {
    if (!navigator.serviceWorker.controller) r.active?.postMessage("claim");
  });
}

/** A development token from the server, or the last one kept (offline). */
async function tokenFor(user, { fresh = false } = {}) {
  const kept = localStorage.getItem(tokenKey(user));
  if (kept && !fresh && !expired(kept)) return kept;
  try {
    const res = await fetch("./v1/dev/token", {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({ sub: user }),
    });
    if (!res.ok) throw new Error(`the server said ${res.status}`);
    const { token } = await res.json();
    localStorage.setItem(tokenKey(user), token);
    return token;
  } catch (e) {
    // Offline: the kept token still opens the local data; a fresh one comes later.
    if (kept) return kept;
    throw e;
  }
}

function expired(token) {
  try {
    const claims = JSON.parse(atob(token.split(".")[1].replace(/-/g, "+").replace(/_/g, "/")));
    return typeof claims.exp === "number" && claims.exp * 1000 < Date.now() + 60_000;
  } catch {
    return true;
  }
}

// ---- rendering helpers -------------------------------------------------------

function h(tag, props = {}, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(props)) {
    if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else if (k === "class") el.className = v;
    else if (v === true) el.setAttribute(k, "");
    else if (v !== false && v != null) el.setAttribute(k, v);
  }
  for (const c of children.flat()) if (c != null) el.append(c);
  return el;
}

/** Explains a refused write in words for the person using the board: the package's
 * `userMessage` (no rule text, no line numbers), and the board's own words for a few
 * cases. The code stays in a data attribute; the developer's message goes to the
 * console. */
const EXPLAIN = {
  PERMISSION_DENIED: "The board's rules do not allow that.",
  QUOTA_EXCEEDED: "This browser has no room left for more data.",
  DOCUMENT_NOT_FOUND: "It was deleted meanwhile.",
};

function explain(e) {
  // The schema's functions abort("no such todo") when the item is gone.
  if (e.code === "ABORTED" && /^no such/.test(e.reason ?? "")) return "It was deleted meanwhile.";
  return EXPLAIN[e.code] ?? e.userMessage ?? "Something went wrong.";
}

function showError(e, what) {
  console.warn(`${what}: ${e.code}: ${e.message}`);
  const msg = h(
    "div",
    { class: "message", role: "alert", "data-code": e.code ?? "" },
    h("strong", {}, `${what}: refused. `),
    explain(e),
  );
  $("#messages").append(msg);
  setTimeout(() => msg.remove(), 8000);
}

/** Runs a write; a refusal in this browser is shown at once (one by the server later
 * comes as a `rejected` event, see `start`). */
function write(what, w) {
  w.result.catch((e) => showError(e, what));
  return w;
}

function renderStatus(s) {
  const el = $("#status");
  const state = {
    online: "Online",
    offline: "Offline",
    connecting: "Connecting…",
    unauthorized: "Signed out by the server: sign in again",
    error: "Reconnecting…",
  }[s.state] ?? s.state;
  const pending = s.pending ? ` · ${s.pending} pending` : " · all synced";
  const last = s.lastSync ? ` · last sync ${s.lastSync.toLocaleTimeString()}` : "";
  el.textContent = state + pending + last;
  el.className = `status ${s.online && s.connected ? "online" : "offline"}`;
  el.dataset.pending = String(s.pending);
  el.dataset.connected = String(s.connected);
  el.dataset.state = s.state;
}

// ---- the app -----------------------------------------------------------------

async function start(user) {
  $("#signin").hidden = true;
  $("#app").hidden = false;
  $("#who").replaceChildren(
    h("span", {}, `Signed in as ${user}`),
    h("button", { onclick: () => signOut() }, "Sign out"),
  );
  const schema = await fetch("./schema.warren").then((r) => (r.ok ? r.text() : undefined), () => undefined);
  const db = await open({
    url: location.origin,
    token: () => tokenFor(user, { fresh: !!window.demo?.db }),
    schema,
  });
  window.demo = { db, user };

  db.status.subscribe(renderStatus);
  db.on("rejected", (e) => showError(e, "A change you made earlier"));

  // My list: one live query over the private partition.
  db.live((q) => q.Todo.index("byOwner", user)).subscribe((todos) => {
    if (!todos) return;
    $("#todos").replaceChildren(
      ...(todos.length ? [] : [h("li", { class: "empty" }, "Nothing yet.")]),
      ...todos.map((t) =>
        h(
          "li",
          { class: t.done ? "done" : "", "data-id": t.id },
          h("input", {
            type: "checkbox",
            checked: t.done,
            "aria-label": `done: ${t.title}`,
            onchange: () => write("Ticking it off", db.call("toggle", { id: t.id })),
          }),
          h("span", { class: "title" }, t.title),
          h("button", { class: "remove", title: "Delete", onclick: () => write("Deleting it", db.call("removeTodo", { id: t.id })) }, "✕"),
        ),
      ),
    );
  });

  // Team boards: every board this user may read, with its tasks, as one live query.
  const boards = db.live(`
    Team.all().order(.name).map(t => ({
      id: t.id, name: t.name, admin: t.admin, members: t.members,
      tasks: Task.byTeam(t.id).toArray()
    }))`);
  boards.subscribe((teams) => {
    if (!teams) return;
    // A board's add-task form is kept across renders (see `taskForm`); moving it
    // takes its focus, which is given back.
    const focused = document.activeElement;
    const [start, end] = [focused?.selectionStart, focused?.selectionEnd];
    $("#boards").replaceChildren(
      ...(teams.length ? [] : [h("p", { class: "empty" }, "No boards yet: create one, or ask someone to add you to theirs.")]),
      ...teams.map((team) => renderBoard(db, user, team)),
    );
    for (const id of taskForms.keys()) if (!teams.some((t) => t.id === id)) taskForms.delete(id);
    if (focused?.isConnected && document.activeElement !== focused) {
      focused.focus();
      if (start != null) focused.setSelectionRange(start, end);
    }
  });
  await boards.ready();
  document.body.dataset.ready = "true";
}

// Each board's add-task form, by board id, kept across renders: a live update (a task
// someone else added, a sync) re-renders the boards while the user may be typing, and
// must not take what they typed.
const taskForms = new Map();
function taskForm(db, team) {
  let form = taskForms.get(team.id);
  if (!form) {
    const input = h("input", { placeholder: "New task", autocomplete: "off", required: true, maxlength: 200 });
    form = h(
      "form",
      {
        class: "add",
        onsubmit: (e) => {
          e.preventDefault();
          write("Adding a task", db.call("addTask", { team: team.id, title: input.value }));
          input.value = "";
        },
      },
      input,
      h("button", {}, "Add"),
    );
    taskForms.set(team.id, form);
  }
  return form;
}

function renderBoard(db, user, team) {
  return h(
    "div",
    { class: "board", "data-team": team.name },
    h("h3", {}, team.name),
    h("div", { class: "members" }, `members: ${team.members.join(", ")} · admin: ${team.admin}`),
    taskForm(db, team),
    h(
      "ul",
      { class: "items" },
      ...(team.tasks.length ? [] : [h("li", { class: "empty" }, "No tasks.")]),
      ...team.tasks.map((t) =>
        h(
          "li",
          { class: t.done ? "done" : "", "data-id": t.id },
          h("input", {
            type: "checkbox",
            checked: t.done,
            "aria-label": `done: ${t.title}`,
            onchange: () => write("Ticking it off", db.call("toggleTask", { id: t.id })),
          }),
          h("span", { class: "title" }, t.title),
          h("span", { class: "by" }, t.by),
          h("button", { class: "notes", title: "Notes", onclick: () => openNotes(db, t).catch((e) => showError(e, "Opening the notes")) },
            t.notes ? `notes (${t.notes.length})` : "notes"),
          // Only the admin may delete; the button is there for everyone so that the
          // rules, not the UI, decide (and the refusal is explained).
          h("button", { class: "remove", title: "Delete", onclick: () => write("Deleting a task", db.call("removeTask", { id: t.id })) }, "✕"),
        ),
      ),
    ),
  );
}

// The notes of one task: its `notes` text field as a Y.Doc (db.text), bound to a
// textarea. A refused edit gives a new Y.Doc: bind the textarea to it again.
let notes = null;
async function openNotes(db, task) {
  notes?.close();
  const binding = await db.text("Task", task.id, "notes", { Y });
  const bind = () => {
    const a = bindTextarea($("#notes"), binding.text);
    const b = showPresence(Y, binding, $("#notes"), $("#presence"), db.auth.sub);
    return () => {
      a();
      b();
    };
  };
  let unbind = bind();
  notes = {
    id: task.id,
    close: () => {
      unbind();
      binding.close();
    },
  };
  binding.onReset(() => {
    unbind();
    unbind = bind();
    showError(binding.error, "Your last notes edit");
  });
  $("#notes-title").textContent = `(${task.title})`;
  $("#notes-card").hidden = false;
  $("#notes-card").dataset.task = task.id;
}

function signOut() {
  localStorage.removeItem(USER_KEY);
  window.demo?.db.close();
  location.reload();
}

function showSignIn() {
  $("#signin").hidden = false;
  for (const b of document.querySelectorAll("[data-user]")) {
    b.addEventListener("click", async () => {
      const user = b.dataset.user;
      try {
        await tokenFor(user);
      } catch (e) {
        showError({ code: "OFFLINE", message: String(e) }, "Signing in");
        return;
      }
      localStorage.setItem(USER_KEY, user);
      start(user).catch(fatal);
    });
  }
}

function fatal(e) {
  console.error(e);
  showError(e, "Opening the database");
}

$("#team-form").addEventListener("submit", (e) => {
  e.preventDefault();
  const { db } = window.demo;
  const members = $("#team-members").value.split(/[\s,]+/).filter(Boolean);
  write("Creating the board", db.call("createTeam", { name: $("#team-name").value, members }));
  $("#team-name").value = "";
  $("#team-members").value = "";
});

$("#todo-form").addEventListener("submit", (e) => {
  e.preventDefault();
  write("Adding it", window.demo.db.call("addTodo", { title: $("#todo-title").value }));
  $("#todo-title").value = "";
});

const user = localStorage.getItem(USER_KEY);
if (user) start(user).catch(fatal);
else showSignIn();
