// The wasm32 side of the differential run: node run.mjs MODULE.wasm SEED COUNT prints
// the lines the module's `run` made (the same lines the native binary prints).
import { readFileSync } from "node:fs";

const [wasmPath, seed, count] = process.argv.slice(2);
if (!count) {
  console.error("usage: node run.mjs MODULE.wasm SEED COUNT");
  process.exit(2);
}
const { instance } = await WebAssembly.instantiate(readFileSync(wasmPath), {});
const { run, out_ptr, memory } = instance.exports;
const len = run(BigInt(seed), Number(count));
const bytes = new Uint8Array(memory.buffer, out_ptr(), len);
process.stdout.write(Buffer.from(bytes));
