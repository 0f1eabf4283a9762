// The engine's worker with collaborative text: worker-core.ts with this module's glue,
// bundled into one file (.ci/build-package), so the worker loads one module.
import * as glue from "../wasm/warren_web_text.js";
import { serve, type Glue } from "./worker-core.js";

serve(glue as unknown as Glue);
