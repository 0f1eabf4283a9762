// A tiny app bundled by Vite: it opens Warren, writes, waits for the server's
// confirmation, queries with the builder, and tries a write the rules refuse.
import { open, PermissionDeniedError } from "warren";

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
  return { optimistic: optimistic.title, position: confirmed.position, titles: titles.map((t) => t.title), refused };
}

window.result = run().then(
  (r) => ((document.getElementById("out").textContent = JSON.stringify(r)), r),
  (e) => ({ error: String(e), code: e.code }),
);
