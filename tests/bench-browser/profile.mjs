// Summarises a .cpuprofile (from run.mjs --cpuprofile DIR): self and total time by
// function, top N. With WARREN_WASM_DIR pointing at a wasm-bindgen output that kept the
// name section (no wasm-opt), the engine's Rust functions appear by name.
//
//   node tests/bench-browser/profile.mjs FILE.cpuprofile [N] [--under SUBSTRING]
//
// --under keeps only the samples with a frame whose name contains SUBSTRING (for
// example `Actor::query` for the query path).
import { readFileSync } from "node:fs";

const prof = JSON.parse(readFileSync(process.argv[2], "utf8"));
const top = Number(process.argv[3] ?? 40);
const under = process.argv.includes("--under") ? process.argv[process.argv.indexOf("--under") + 1] : null;
const byId = new Map(prof.nodes.map((n) => [n.id, n]));
const parent = new Map();
for (const n of prof.nodes) for (const c of n.children ?? []) parent.set(c, n.id);
const dt = new Map();
for (let i = 0; i < prof.samples.length; i++) dt.set(prof.samples[i], (dt.get(prof.samples[i]) ?? 0) + (prof.timeDeltas[i] ?? 0));
const name = (n) => `${n.callFrame.functionName || "(anonymous)"} ${n.callFrame.url.split("/").pop()}`.trim();
const self = new Map();
const total = new Map();
let all = 0;
for (const [id, us] of dt) {
  if (under) {
    let hit = false;
    for (let x = id; x !== undefined && !hit; x = parent.get(x)) hit = name(byId.get(x)).includes(under);
    if (!hit) continue;
  }
  all += us;
  const n = byId.get(id);
  self.set(name(n), (self.get(name(n)) ?? 0) + us);
  const seen = new Set();
  for (let x = id; x !== undefined; x = parent.get(x)) {
    const k = name(byId.get(x));
    if (seen.has(k)) continue;
    seen.add(k);
    total.set(k, (total.get(k) ?? 0) + us);
  }
}
const show = (title, m) => {
  console.log(`\n${title} (of ${(all / 1000).toFixed(0)} ms sampled)`);
  for (const [k, us] of [...m].sort((a, b) => b[1] - a[1]).slice(0, top))
    console.log(`${(us / 1000).toFixed(1).padStart(9)} ms ${((100 * us) / all).toFixed(1).padStart(5)}%  ${k.slice(0, 150)}`);
};
show("self time", self);
show("total time (inclusive)", total);
