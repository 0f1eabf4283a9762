// Loads the installed package in Chromium, bundled by Vite and with no bundler, against
// a real `warren serve` serving the app directory given as the first argument.
import { execFileSync } from "node:child_process";
import { join } from "node:path";
import { check, fail, finish, tempDir, freePort, startWarren, stopProcess, profile, root, warren } from "../browser/harness.mjs";

const app = process.argv[2];
const work = tempDir("package");
const port = await freePort();
const server = await startWarren(["--listen", `127.0.0.1:${port}`, "--data-dir", join(work, "data"),
  "--schema", join(root, "demo", "schema.warren"), "--static-dir", app, "--dev-tokens"]);
let ctx;
try {
  ctx = await profile(join(work, "profile"));
  const page = await ctx.newPage();
  page.on("pageerror", (e) => console.log(`page error: ${e}`));
  await page.goto(`http://127.0.0.1:${port}/dist/index.html`);
  const vite = await page.evaluate(() => window.result);
  check("the package works bundled by Vite: write, confirm, builder query",
    vite.optimistic === "from vite" && vite.position > 0 && vite.titles?.includes("from vite"), JSON.stringify(vite));
  check("a refused write is a PermissionDeniedError in the bundle", vite.refused === "PERMISSION_DENIED", JSON.stringify(vite));
  check("useQuery and useStatus render the live result and follow a write",
    vite.react?.includes("from vite") && vite.react?.includes("seen by react"), JSON.stringify(vite));
  check("the bundled engine runs in a dedicated worker", vite.worker === 1, JSON.stringify(vite));
  await page.goto(`http://127.0.0.1:${port}/plain.html`);
  const plain = await page.evaluate(() => window.result);
  check("the package works from a plain <script type=module>",
    plain.position > 0 && plain.titles?.includes("from a plain script"), JSON.stringify(plain));
  // A token for "refresher", signed by the server's secret, that expired long ago.
  const expired = execFileSync(warren, ["token", "--data-dir", join(work, "data"), "--sub", "refresher", "--claim", "exp=1"])
    .toString().trim();
  await page.goto(`http://127.0.0.1:${port}/api.html?expired=${expired}`);
  for (const [name, ok, detail] of await page.evaluate(() => window.result)) check(name, ok, detail);
} catch (e) {
  fail(e);
} finally {
  await ctx?.close().catch(() => {});
  await stopProcess(server);
  finish();
}
