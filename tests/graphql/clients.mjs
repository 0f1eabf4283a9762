// GraphQL through the standard npm clients, against a real `warren serve` running the
// demo's schema: graphql-request for queries and mutations, graphql-ws for a
// subscription, the demo app in headless Chromium (the npm package, IndexedDB, its own
// WebSocket) for a change made by a browser.
//
// 1. Introspection: the schema a client sees (types, index arguments, mutations,
//    subscriptions), as graphql-js builds it.
// 2. A mutation calling a function; queries by index, page by page with cursors.
// 3. A denied read is invisible (null, empty pages); a denied write carries the rule's
//    code in `extensions.code`.
// 4. A subscription (live query) receives a todo added in the browser.
//
// Run by .ci/test-graphql after .ci/build-demo and a debug build of the server.
import { execFileSync } from "node:child_process";
import { join } from "node:path";
import { GraphQLClient, gql } from "graphql-request";
import { createClient } from "graphql-ws";
import WebSocket from "ws";
import { buildClientSchema, getIntrospectionQuery, printType } from "graphql";
import { check, fail, finish, until, tempDir, freePort, startWarren, stopProcess, profile, root, warren } from "../browser/harness.mjs";

const work = tempDir("graphql-clients");
const dataDir = join(work, "data");
const port = await freePort();
const base = `http://127.0.0.1:${port}`;
const server = await startWarren(["--listen", `127.0.0.1:${port}`, "--data-dir", dataDir,
  "--schema", join(root, "demo", "schema.warren"), "--static-dir", join(root, "demo", "dist"), "--dev-tokens"]);

/** A token for `sub`, as `warren token` mints it with the server's secret. */
const token = (sub, ...claims) => execFileSync(warren,
  ["token", "--data-dir", dataDir, "--sub", sub, ...claims.flatMap((c) => ["--claim", c])]).toString().trim();
const client = (t) => new GraphQLClient(`${base}/v1/graphql`, { headers: { authorization: `Bearer ${t}` } });
/** The error codes a failed request carried. */
async function codesOf(p) {
  try {
    await p;
    return [];
  } catch (e) {
    return (e.response?.errors ?? []).map((x) => x.extensions?.code);
  }
}

let browser, sub;
try {
  const ann = client(token("ann"));
  const bob = client(token("bob"));

  // 1. Introspection.
  const intro = await ann.request(getIntrospectionQuery());
  const schema = buildClientSchema(intro);
  const byOwner = schema.getQueryType().getFields().Todo_byOwner;
  check("introspection: an index is a query field with its key fields as arguments",
    byOwner && byOwner.args.map((a) => a.name).join() === "owner,created,range,order,first,after",
    byOwner?.args.map((a) => a.name).join());
  check("introspection: reads return Relay connections",
    String(byOwner?.type) === "TodoConnection!" && !!schema.getType("TodoConnection").getFields().pageInfo);
  check("introspection: byId per collection", String(schema.getQueryType().getFields().Task_byId?.type) === "Task");
  const addTodo = schema.getMutationType().getFields().addTodo;
  check("introspection: each function is a mutation with its parameters",
    addTodo && addTodo.args.map((a) => a.name).join() === "title" && String(addTodo.type) === "JSON");
  check("introspection: every read is a subscription too",
    String(schema.getSubscriptionType().getFields().Task_byTeam?.type) === "TaskConnection!");
  console.log(printType(schema.getType("Task")).split("\n").map((l) => `# ${l}`).join("\n"));

  // 2. Mutations and pages.
  const titles = ["milk", "eggs", "tea", "bread", "jam"];
  const made = [];
  for (const title of titles) {
    const { addTodo: doc } = await ann.request(gql`mutation($t: JSON) { addTodo(title: $t) }`, { t: title });
    made.push(doc);
  }
  check("a mutation calls the function and answers with its result once committed",
    made.every((d, i) => d.title === titles[i] && d.owner === "ann" && typeof d.id === "string"));
  const page = gql`query($after: String) {
    Todo_byOwner(owner: "ann", first: 2, after: $after) {
      edges { cursor node { id _fields } }
      pageInfo { hasNextPage endCursor }
    }
  }`;
  const seen = [];
  let after = null;
  let pages = 0;
  do {
    const { Todo_byOwner: c } = await ann.request(page, { after });
    seen.push(...c.edges.map((e) => e.node._fields.title));
    after = c.pageInfo.hasNextPage ? c.pageInfo.endCursor : null;
    pages++;
  } while (after);
  check("an index query reads page by page with cursors, in index order",
    seen.join() === titles.join() && pages === 3, `${seen} in ${pages} pages`);
  const { Todo_byOwner: back } = await ann.request(gql`{ Todo_byOwner(owner: "ann", order: DESC, first: 2) { nodes { _fields } } }`);
  check("order: DESC reads the index backwards", back.nodes.map((n) => n._fields.title).join() === "jam,bread");

  // 3. Denied reads are invisible; denied writes carry their code.
  const hidden = await bob.request(gql`query($id: ID!) {
    Todo_byId(id: $id) { id }
    Todo_byOwner(owner: "ann") { nodes { id } pageInfo { hasNextPage } }
  }`, { id: made[0].id });
  check("a read the rules deny is invisible: null, an empty page, no error",
    hidden.Todo_byId === null && hidden.Todo_byOwner.nodes.length === 0 && hidden.Todo_byOwner.pageInfo.hasNextPage === false);
  const { createTeam: team } = await ann.request(gql`mutation { createTeam(name: "Launch", members: ["bob"]) }`);
  const { addTask: task } = await ann.request(gql`mutation($team: JSON) { addTask(team: $team, title: "plan") }`, { team: team.id });
  const denied = await codesOf(bob.request(gql`mutation($id: JSON) { removeTask(id: $id) }`, { id: task.id }));
  check("a write the rules deny fails with its code in extensions", denied.join() === "PERMISSION_DENIED", denied.join());
  const still = await bob.request(gql`query($id: ID!) { Task_byId(id: $id) { id } }`, { id: task.id });
  check("and changes nothing", still.Task_byId?.id === task.id);
  const bad = await codesOf(client("not-a-token").request(gql`{ _schemaVersion }`));
  check("a bad token is refused with its code", bad.join() === "TOKEN_MALFORMED", bad.join());

  // 4. A subscription receives a change made in a browser.
  const events = [];
  const ws = createClient({
    url: `ws://127.0.0.1:${port}/v1/graphql`,
    webSocketImpl: WebSocket,
    connectionParams: () => ({ Authorization: `Bearer ${token("ann")}` }),
    retryAttempts: 0,
  });
  sub = ws.iterate({ query: `subscription { Todo_byOwner(owner: "ann", first: 100) { nodes { _fields } } }` });
  const listening = (async () => {
    for await (const e of sub) events.push({ at: Date.now(), titles: e.data?.Todo_byOwner.nodes.map((n) => n._fields.title), errors: e.errors });
  })();
  await until("the subscription's first result", async () => events.length === 1, 10000);
  check("a subscription starts with the current result", events[0].titles?.join() === titles.join(), JSON.stringify(events[0]));

  browser = await profile(join(work, "browser"));
  const pageAnn = browser.pages()[0] || await browser.newPage();
  await pageAnn.goto(`${base}/`);
  await pageAnn.click("[data-user=ann]");
  await pageAnn.waitForSelector("body[data-ready=true]");
  await until("the browser to show ann's todos", async () =>
    (await pageAnn.$$eval("#todos li .title", (els) => els.length)) === titles.length);
  const t0 = Date.now();
  await pageAnn.fill("#todo-title", "from the browser");
  await pageAnn.press("#todo-title", "Enter");
  await until("the subscription to receive the browser's todo", async () =>
    events.some((e) => e.titles?.includes("from the browser")), 10000);
  const got = events.find((e) => e.titles?.includes("from the browser"));
  check(`the subscription receives a todo added in the browser (${got.at - t0} ms after the keypress)`,
    got.titles.at(-1) === "from the browser" && got.at - t0 < 3000);
  check("each event is a changed result (no repeats)",
    events.every((e, i) => i === 0 || JSON.stringify(e.titles) !== JSON.stringify(events[i - 1].titles)));
  await sub.return?.();
  await ws.dispose();
  await listening.catch(() => {});
} catch (e) {
  fail(e);
} finally {
  await browser?.close().catch(() => {});
  await stopProcess(server);
  finish();
}
