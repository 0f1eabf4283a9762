// `db.explain` at the engine's edge: only development builds of the wasm engine have it
// (the `explain` feature of wasm-core/web, left out of the shipped package for its size;
// docs/DEBUGGING.md). Shared by the page's engine and the worker's.

import type { Warren as Wasm } from "../wasm/warren_web.js";

type Explain = (kind: string, source: string, args?: string) => Promise<unknown>;

/** The binding's `explain`, or one that rejects with a clear error when the build has
 * none. */
export function explainOf(w: Wasm): Explain {
  const f = (w as unknown as { explain?: Explain }).explain;
  if (!f)
    return () =>
      Promise.reject({
        code: "INVALID_ARGUMENT",
        message:
          "this build of the engine has no explain: build the package with " +
          "WARREN_WASM_FEATURES=explain ./.ci/build-package (docs/DEBUGGING.md)",
      });
  return f.bind(w);
}
