// A tiny app bundled by Vite: it opens Warren, writes, waits for the server's
// confirmation, queries with the builder, and tries a write the rules refuse.
import { open, PermissionDeniedError } from "warren";
import { useQuery, useStatus } from "warren/react";
import { createElement as h } from "react";
import { createRoot } from "react-dom/client";

/** A React component on the hooks: the user's titles and the pending count. */
function Titles({ db }) {
  const { data, loading } = useQuery(db, (q) => q.Todo.index("byOwner", "vite").pick("title"));
  const status = useStatus(db);
  if (loading) return h("p", { id: "react" }, "loading");
  return h("ul", { id: "react", "data-pending": status.pending, "data-connected": String(status.connected) },
    data.map((t) => h("li", { key: t.id }, t.title)));
}

/** Waits until `f()` is true. */
async function until(f, ms = 5000) {
  const end = Date.now() + ms;
  while (!f()) {
    if (Date.now() > end) throw new Error(`timed out: ${f}`);
    await new Promise((r) => setTimeout(r, 10));
  }
}

async function run() {
  const res = await fetch("/v1/dev/token", {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify({ sub: "vite" }),
  });
  const { token } = await res.json();
  const db = await open({ url: location.origin, token });
  const w = db.call("addTodo", { title: "from vite" });
  const optimistic = await w.result;
  await w.local;
  const confirmed = await w.confirmed;
  const titles = await db.query(db.q.Todo.index("byOwner", "vite").pick("title"));
  let refused = null;
  try {
    await db.transact('Todo.create({ owner: "someone-else", title: "x", done: false, created: 0 })').result;
  } catch (e) {
    refused = e instanceof PermissionDeniedError ? e.code : `wrong error: ${e}`;
  }
  // React: the hooks render the live result and follow a new write.
  const mount = document.createElement("div");
  document.body.append(mount);
  createRoot(mount).render(h(Titles, { db }));
  const items = () => [...document.querySelectorAll("#react li")].map((li) => li.textContent);
  await until(() => items().includes("from vite"));
  await db.call("addTodo", { title: "seen by react" }).local;
  await until(() => items().includes("seen by react"));
  await until(() => document.querySelector("#react").dataset.pending === "0");
  const react = items();
  // The engine runs in its worker in the bundle too (Vite builds worker.js apart).
  const worker = (await db.stats()).worker;
  return { optimistic: optimistic.title, position: confirmed.position, titles: titles.map((t) => t.title), refused, react, worker };
}

window.result = run().then(
  (r) => ((document.getElementById("out").textContent = JSON.stringify(r)), r),
  (e) => ({ error: String(e), code: e.code }),
);
