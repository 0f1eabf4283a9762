// The engine in a dedicated worker: the page's main thread never runs it, so no query,
// count or rebase blocks the page, whatever the data size. The page talks to it
// through `WorkerEngine` (engine.ts) with messages; values come back as JSON text,
// which the page parses once. The worker's two entries, worker.ts and worker-text.ts,
// each bundle this with one module's glue (without collaborative text, or with it).

import type { Warren } from "../wasm/warren_web.js";
import { explainOf, inspectOf } from "./dev.js";
import { errInfo as info } from "./errors.js";

/** What the worker uses of the engine's glue: the module with collaborative text, or
 * the smaller one (the same API; wasm-bindgen names the inner shims after each). */
export interface Glue {
  default(input?: { module_or_path?: unknown }): Promise<unknown>;
  Warren: typeof import("../wasm/warren_web.js").Warren;
}

interface Req {
  id: number;
  m: string;
  a: unknown[];
}


const scope = self as unknown as {
  postMessage(msg: unknown): void;
  onmessage: ((e: MessageEvent) => void) | null;
};
let engine: Warren | null = null;
let glue: Glue | null = null;
/** The engine's source, from the page's first message (`init`): the module the page
 * compiled while this worker started, or where to fetch it (nothing: the glue's
 * default, next to it in the package). */
let gotSource: (source: unknown) => void = () => {};
const source = new Promise<unknown>((resolve) => (gotSource = resolve));
/** The engine instantiated, once per worker: a worker kept from a closed database
 * (or started ahead of `open`) has it already. */
let initialized: Promise<unknown> | null = null;

/** Opens IndexedDB database `name` at whatever version it has, or gives null if it does
 * not exist yet or cannot be opened here (the engine then opens it itself: creating or
 * upgrading it is the engine's). Until the engine takes the connection, another page's
 * upgrade or deletion of the database closes it (as the engine's own does). */
function preopen(name: string): Promise<{ db: IDBDatabase; closed: boolean } | null> {
  return new Promise((resolve) => {
    let req: IDBOpenDBRequest;
    try {
      req = indexedDB.open(name);
    } catch {
      return resolve(null);
    }
    // A database that does not exist: not created here.
    req.onupgradeneeded = () => req.transaction?.abort();
    req.onsuccess = () => {
      const pre = { db: req.result, closed: false };
      pre.db.onversionchange = () => {
        pre.db.close();
        pre.closed = true;
      };
      resolve(pre);
    };
    req.onerror = (e) => {
      e.preventDefault();
      resolve(null);
    };
  });
}
/** IndexedDB opened ahead (`preopen`: the page knew the database's name before the
 * token came), taken by the `open` of that name. */
let preopened: { name: string; opening: ReturnType<typeof preopen> } | null = null;
/** Database `name` opening ahead: the one already opening, or a new one (another
 * name's connection is closed). */
const preopenAhead = (name: string): ReturnType<typeof preopen> => {
  if (preopened?.name !== name) {
    void preopened?.opening.then((pre) => pre?.db.close());
    preopened = { name, opening: preopen(name) };
  }
  return preopened.opening;
};

const tokenWaits = new Map<number, (token: string | undefined) => void>();
let nextToken = 1;

/** Messages for the page made in this turn of the event loop go as one (`{ b: [...] }`):
 * the answers to requests that arrived together are usually ready together. */
let outgoing: unknown[] | null = null;
const post = (msg: unknown) => {
  if (!outgoing) {
    outgoing = [];
    queueMicrotask(() => {
      const q = outgoing!;
      outgoing = null;
      scope.postMessage(q.length === 1 ? q[0] : { b: q });
      // The page has the writes' results: their flush goes now, not a turn later; and
      // the last query's answer, sent, is freed.
      engine?.flushDue();
    });
  }
  outgoing.push(msg);
};
const reply = (id: number, ok: unknown) => post({ id, ok });

const handle = async (raw: unknown) => {
  const msg = raw as Req | { t: "token"; id: number; token?: string };
  if ("t" in msg) {
    tokenWaits.get(msg.id)?.(msg.token);
    tokenWaits.delete(msg.id);
    return;
  }
  const { id, m, a } = msg;
  try {
    if (m === "init") {
      gotSource(a[0]);
      return;
    }
    if (m === "preopen") {
      preopenAhead(a[0] as string);
      return;
    }
    if (m === "open") {
      const [name, clientId, url, token, schema, auth, options, provider, offline] = a as [
        string, string, string, string, string | undefined, unknown, unknown, boolean, boolean,
      ];
      // IndexedDB opens while the engine is instantiated.
      const opening = preopenAhead(name);
      preopened = null;
      await initialized;
      const pre = await opening;
      // Closed meanwhile for another page's upgrade or deletion: the engine opens anew.
      const db = pre && !pre.closed ? pre.db : null;
      const w = await glue!.Warren.open(name, clientId, url, token, schema, auth, { ...(options as object), db });
      w.setJson(true);
      // Events go to the page in batches: one message for everything a step of the
      // engine reported (a catch-up confirms hundreds of writes at once).
      let batch: unknown[] | null = null;
      w.onEvent((ev: { type: string; detail: unknown }) => {
        const detail = ev.type === "rejected" || ev.type === "server-error" ? info(ev.detail) : ev.detail;
        if (!batch) {
          batch = [];
          queueMicrotask(() => {
            const evs = batch;
            batch = null;
            post({ evs });
          });
        }
        batch.push([ev.type, detail]);
      });
      if (provider)
        w.setTokenProvider(
          () =>
            new Promise<string | undefined>((resolve) => {
              const t = nextToken++;
              tokenWaits.set(t, resolve);
              post({ t: "token", id: t });
            }),
        );
      if (offline) w.setOnline(false);
      engine = w;
      return reply(id, w.status());
    }
    const w = engine;
    if (!w) throw { code: "STORAGE_ERROR", message: "the database is not open" };
    switch (m) {
      case "query":
        return reply(id, await w.query(a[0] as string));
      case "inspect":
        return reply(id, await inspectOf(w)());
      case "explain":
        return reply(id, await explainOf(w)(a[0] as string, a[1] as string, a[2] as string | undefined));
      case "call":
      case "run": {
        const r = (
          m === "call"
            ? await w.call(a[0] as string, a[1], a[2] as string | undefined)
            : await w.run(a[0] as string, a[1] as string | undefined)
        ) as { seq: number; result: string; local: Promise<void> };
        reply(id, { seq: r.seq, result: r.result });
        r.local.then(
          () => post({ local: id }),
          (err: unknown) => post({ local: id, err: info(err) }),
        );
        return;
      }
      case "subscribe":
        return reply(id, await w.subscribe(a[0] as string));
      case "unsubscribe":
        w.unsubscribe(a[0] as number);
        return reply(id, null);
      case "setOnline":
        w.setOnline(a[0] as boolean);
        return reply(id, null);
      case "presence":
        w.presence(a[0] as string, a[1] as string);
        return reply(id, null);
      case "flush":
        await w.flush();
        return reply(id, null);
      case "stats":
        return reply(id, w.stats());
      case "hasPendingWrites":
        return reply(id, w.hasPendingWrites(a[0] as string, a[1] as string));
      case "close":
        await w.close();
        engine = null;
        return reply(id, null);
      default:
        throw { code: "INVALID_ARGUMENT", message: `unknown request ${m}` };
    }
  } catch (err) {
    post({ id, err: info(err) });
  }
};

/** Serves the page with the engine of `g`, the glue this worker's entry bundles. */
export function serve(g: Glue): void {
  glue = g;
  initialized = source.then((s) => g.default({ module_or_path: s }));
  scope.onmessage = (e: MessageEvent) => {
    const data = e.data as { b?: unknown[] };
    // Requests made together on the page come as one message; each is handled as if it
    // had come alone, in order.
    for (const m of Array.isArray(data?.b) ? data.b : [data]) void handle(m);
  };
  post({ ready: true });
}
