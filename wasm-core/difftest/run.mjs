// The wasm32 side of the differential run: node run.mjs MODULE.wasm SEED COUNT prints
// the lines the module's `run` made (the same lines the native binary prints).
import { readFileSync } from "node:fs";

const [wasmPath, seed, count] = process.argv.slice(2);
if (!count) {
  console.error("usage: node run.mjs MODULE.wasm SEED COUNT");
  process.exit(2);
}
const module = await WebAssembly.compile(readFileSync(wasmPath));
// The engine imports nothing of its own; yrs links in a random source through
// wasm-bindgen (fastrand's `js` feature) that the engine never calls (its yrs documents
// are made with fixed ids). Each such import fails loudly if it ever is called.
const imports = {};
for (const { module: m, name, kind } of WebAssembly.Module.imports(module)) {
  if (kind !== "function") throw new Error(`unexpected import ${m}.${name} (${kind})`);
  (imports[m] ??= {})[name] = () => {
    throw new Error(`the engine called ${m}.${name}: it must not use JS (randomness)`);
  };
}
const instance = await WebAssembly.instantiate(module, imports);
const { run, out_ptr, memory } = instance.exports;
const len = run(BigInt(seed), Number(count));
const bytes = new Uint8Array(memory.buffer, out_ptr(), len);
process.stdout.write(Buffer.from(bytes));
