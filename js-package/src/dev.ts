// The engine's debugging entry points (`db.explain`, `db.inspect`): the `devtools`
// feature of wasm-core/web, in both shipped modules; a build without it rejects them
// (docs/DEBUGGING.md). Shared by the page's engine and the worker's.

import type { Warren as Wasm } from "../wasm/warren_web.js";

type Explain = (kind: string, source: string, args?: string) => Promise<unknown>;
type Inspect = () => Promise<unknown>;

/** The binding's method `name`, or one that rejects with a clear error when the build
 * has none. */
function devMethod<F>(w: Wasm, name: string): F {
  const f = (w as unknown as Record<string, F | undefined>)[name];
  if (!f)
    return (() =>
      Promise.reject({
        code: "INVALID_ARGUMENT",
        message:
          `this build of the engine has no ${name}: it was built without the devtools ` +
          "feature of wasm-core/web (docs/DEBUGGING.md)",
      })) as unknown as F;
  return (f as unknown as { bind(t: unknown): F }).bind(w);
}

export const explainOf = (w: Wasm): Explain => devMethod<Explain>(w, "explain");
export const inspectOf = (w: Wasm): Inspect => devMethod<Inspect>(w, "inspect");
