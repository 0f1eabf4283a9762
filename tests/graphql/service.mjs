// The service-token worked example, end to end: the demo's backend job
// (demo/service/digest.mjs, a Node script standing for an edge worker or a cron job)
// runs with a token whose `role` claim is "service". It reads every board through
// GraphQL, across partitions no browser can read all of, and posts a digest on each
// board through a function, while two users have the demo open in headless Chromium
// and see the digest appear live on their shared board.
//
// - ann and bob share the board "Launch" (made in ann's browser); carol's board "Solo"
//   is hers alone.
// - The job posts a digest on both boards; ann and bob see Launch's within a second,
//   never Solo's.
// - Run again the same day, it posts nothing twice (an idempotency key per board and
//   day).
// - An end user's token reads only that user's boards: the rule grants more to the
//   service role, nothing else does.
//
// Run by .ci/test-graphql after .ci/build-demo and a debug build of the server.
import { execFileSync, spawnSync } from "node:child_process";
import { join } from "node:path";
import { GraphQLClient, gql } from "graphql-request";
import { check, fail, finish, until, tempDir, freePort, startWarren, stopProcess, profile, root, warren } from "../browser/harness.mjs";

const work = tempDir("graphql-service");
const dataDir = join(work, "data");
const port = await freePort();
const base = `http://127.0.0.1:${port}`;
const server = await startWarren(["--listen", `127.0.0.1:${port}`, "--data-dir", dataDir,
  "--schema", join(root, "demo", "schema.warren"), "--static-dir", join(root, "demo", "dist"), "--dev-tokens"]);
const token = (sub, ...claims) => execFileSync(warren,
  ["token", "--data-dir", dataDir, "--sub", sub, ...claims.flatMap((c) => ["--claim", c])]).toString().trim();
const client = (t) => new GraphQLClient(`${base}/v1/graphql`, { headers: { authorization: `Bearer ${t}` } });

/** Runs the example as its README says, with `tok`; its exit code and output. */
function runJob(tok) {
  const r = spawnSync(process.execPath, [join(root, "demo", "service", "digest.mjs")], {
    env: { ...process.env, WARREN_URL: base, WARREN_TOKEN: tok },
    encoding: "utf8",
  });
  return { code: r.status, out: r.stdout + r.stderr };
}

async function signIn(ctx, user) {
  const page = ctx.pages()[0] || await ctx.newPage();
  page.on("pageerror", (e) => console.log(`page error (${user}): ${e}`));
  await page.goto(`${base}/`);
  await page.click(`[data-user=${user}]`);
  await page.waitForSelector("body[data-ready=true]");
  return page;
}
const board = (name) => `.board[data-team="${name}"]`;
const titles = (page, name) => page.$$eval(`${board(name)} li .title`, (els) => els.map((e) => e.textContent));

let annCtx, bobCtx;
try {
  annCtx = await profile(join(work, "ann"));
  bobCtx = await profile(join(work, "bob"));
  const ann = await signIn(annCtx, "ann");
  const bob = await signIn(bobCtx, "bob");

  // The shared board, made in ann's browser, with two tasks; bob sees it.
  await ann.fill("#team-name", "Launch");
  await ann.fill("#team-members", "bob");
  await ann.click("#team-form button");
  await ann.waitForSelector(board("Launch"));
  for (const t of ["Write the plan", "Buy the domain"]) {
    await ann.fill(`${board("Launch")} input[placeholder="New task"]`, t);
    await ann.press(`${board("Launch")} input[placeholder="New task"]`, "Enter");
  }
  await until("bob to see both tasks", async () => (await titles(bob, "Launch")).length === 2, 10000);
  // carol's board, in her own partition, made through GraphQL.
  const carol = client(token("carol"));
  const { createTeam: solo } = await carol.request(gql`mutation { createTeam(name: "Solo", members: []) }`);
  await carol.request(gql`mutation($team: JSON) { addTask(team: $team, title: "carol's secret") }`, { team: solo.id });

  // The job, with a service token.
  const service = token("digest-bot", "role=service");
  const t0 = Date.now();
  const first = runJob(service);
  console.log(first.out.trim().split("\n").map((l) => `# ${l}`).join("\n"));
  check("the job runs with a service token", first.code === 0, first.out);
  check("it reads across partitions: both boards, each with its open tasks",
    /Launch: Digest .*: 2 open: Write the plan, Buy the domain/.test(first.out) && /Solo: Digest .*: 1 open: carol's secret/.test(first.out));
  const seen = await Promise.all([ann, bob].map((p) => until("the digest on the shared board",
    async () => (await titles(p, "Launch")).some((t) => t.startsWith("Digest ")), 5000).then(() => Date.now() - t0)));
  check(`ann and bob see the digest live (${seen.join(" and ")} ms after the job started)`, seen.every((ms) => ms < 5000));
  check("nobody's browser sees carol's board", !(await ann.content()).includes("carol's secret") && !(await bob.content()).includes("Solo"));

  // Run again: the idempotency key (board and day) keeps it from posting twice.
  const second = runJob(service);
  check("the job runs again", second.code === 0, second.out);
  const { Task_byTeam: launch } = await client(service).request(gql`query($team: JSON) {
    Task_byTeam(team: $team) { nodes { _fields } }
  }`, { team: (await client(token("ann")).request(gql`{ Team_all { nodes { id _fields } } }`)).Team_all.nodes.find((t) => t._fields.name === "Launch").id });
  const digests = launch.nodes.filter((n) => n._fields.digest);
  check("and nothing is posted twice", digests.length === 1, JSON.stringify(digests));
  await new Promise((r) => setTimeout(r, 300));
  check("the browsers still show one digest",
    (await titles(ann, "Launch")).filter((t) => t.startsWith("Digest ")).length === 1);

  // An end user's token reads only that user's boards.
  const annTeams = (await client(token("ann")).request(gql`{ Team_all { nodes { _fields } } }`)).Team_all.nodes.map((n) => n._fields.name);
  const jobTeams = (await client(service).request(gql`{ Team_all { nodes { _fields } } }`)).Team_all.nodes.map((n) => n._fields.name);
  check("an end user reads only the boards of their teams; the service reads all",
    annTeams.join() === "Launch" && jobTeams.sort().join() === "Launch,Solo", `${annTeams} / ${jobTeams}`);
  // Nor do private lists open up to the service: the rule grants it boards only.
  await ann.fill("#todo-title", "ann's private note");
  await ann.press("#todo-title", "Enter");
  await until("ann's todo to reach the server", async () =>
    (await client(token("ann")).request(gql`{ Todo_all { nodes { id } } }`)).Todo_all.nodes.length === 1);
  const jobTodos = (await client(service).request(gql`{ Todo_all { nodes { id } } }`)).Todo_all.nodes;
  check("private lists stay private to the service", jobTodos.length === 0);
} catch (e) {
  fail(e);
} finally {
  await annCtx?.close().catch(() => {});
  await bobCtx?.close().catch(() => {});
  await stopProcess(server);
  finish();
}
