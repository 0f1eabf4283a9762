// The engine as the page sees it: in a dedicated worker (`WorkerEngine`, the default),
// or on the page itself (the wasm binding, where workers are unavailable or turned off).
// Both take arguments as JSON text and give values as JavaScript values; the worker's
// come back as JSON text and are parsed here, once.

import type { Warren as Wasm } from "../wasm/warren_web.js";
import type { WasmSource } from "./index.js";
import { explainOf, inspectOf } from "./dev.js";

/** What a write answers first (`local` settles once it is durable). */
export interface EngineWrite {
  seq: number;
  result: unknown;
  local: Promise<void>;
}

/** The engine in the leader tab: the wasm binding, or the worker that runs it. */
export interface LeaderEngine {
  query(source: string): Promise<unknown>;
  /** Replays a query ("query"), a write ("call" with its arguments as JSON text, or
   * "run") or a partition's read rule ("partition") on the local view, with the trace
   * of the rules evaluated (docs/DEBUGGING.md). Nothing is stored or sent. */
  explain?(kind: string, source: string, argsJson?: string): Promise<unknown>;
  /** What the replica holds, for the inspector (see dev.ts). */
  inspect?(): Promise<unknown>;
  call(fn: string, argsJson: string, rid?: string): Promise<EngineWrite>;
  run(source: string, rid?: string): Promise<EngineWrite>;
  subscribe(source: string): Promise<{ id: number; value: unknown }>;
  unsubscribe(id: number): void;
  status(): unknown;
  onEvent(f: (e: { type: string; detail: unknown }) => void): void;
  setOnline(online: boolean): void;
  /** Sends an ephemeral presence message to the others in a partition (see text.ts). */
  presence(partition: string, data: string): void;
  setTokenProvider(f: () => Promise<string>): void;
  flush(): Promise<void>;
  stats(): Promise<unknown>;
  hasPendingWrites(collection: string, id: string): Promise<boolean>;
  close(): Promise<void>;
}

/** Everything `Warren.open` takes. */
export interface OpenParams {
  wasm?: WasmSource;
  /** The engine with collaborative text, or the smaller one without it. */
  text: boolean;
  name: string;
  clientId: string;
  url: string;
  token: string;
  schema?: string;
  auth: unknown;
  cacheBytes?: number;
  offline: boolean;
  provider: (() => Promise<string>) | null;
}

/** The wasm binding on this page. */
export async function openHere(Engine: typeof Wasm, p: OpenParams): Promise<LeaderEngine> {
  const w = await Engine.open(p.name, p.clientId, p.url, p.token, p.schema, p.auth, {
    cacheBytes: p.cacheBytes,
  });
  if (p.provider) w.setTokenProvider(p.provider);
  if (p.offline) w.setOnline(false);
  return {
    query: (s) => w.query(s),
    explain: async (k, s, a) => JSON.parse((await explainOf(w)(k, s, a)) as string),
    inspect: async () => JSON.parse((await inspectOf(w)()) as string),
    call: (fn, args, rid) => w.call(fn, args, rid) as Promise<EngineWrite>,
    run: (s, rid) => w.run(s, rid) as Promise<EngineWrite>,
    subscribe: (s) => w.subscribe(s) as Promise<{ id: number; value: unknown }>,
    unsubscribe: (id) => w.unsubscribe(id),
    status: () => w.status(),
    onEvent: (f) => w.onEvent(f),
    setOnline: (on) => w.setOnline(on),
    presence: (partition, data) => w.presence(partition, data),
    setTokenProvider: (f) => w.setTokenProvider(f),
    flush: () => w.flush(),
    stats: async () => w.stats(),
    hasPendingWrites: async (c, id) => w.hasPendingWrites(c, id),
    close: () => w.close(),
  };
}

interface ErrInfo {
  code: string;
  message: string;
  seq?: number;
  /** The worker itself failed (it did not start, or died). */
  worker?: boolean;
}

interface Waiting {
  resolve: (v: unknown) => void;
  reject: (e: unknown) => void;
}

/** A worker whose database was closed (or started ahead), kept for the next open in
 * this page: its WebAssembly is compiled (and warm, if it ran before). */
let idle: Worker | null = null;
/** The idle worker failed (it could not load, say): it is not reused. */
let idleFailed = false;
/** Which module the idle worker loads: with collaborative text or without. */
let idleText = false;

/** Starts the engine's worker and its WebAssembly's compilation ahead of `open`, and
 * opens database `name`'s IndexedDB in it when given. */
export function prestart(wasm: WasmSource | undefined, text: boolean, name?: string): void {
  // The database's name known before the token: its IndexedDB opens too.
  const preopen = (w: Worker) => name !== undefined && w.postMessage({ id: 0, m: "preopen", a: [name] });
  if (idle) {
    if (!idleFailed && idleText === text) preopen(idle);
    return;
  }
  try {
    const w = startWorker(wasm, text);
    idle = w;
    idleFailed = false;
    idleText = text;
    w.onerror = () => {
      if (idle === w) idleFailed = true;
    };
    preopen(w);
  } catch {
    idle = null;
  }
}

/** A new worker for the engine with collaborative text or without (each entry bundles
 * its module's glue), sent the engine's source as soon as there is one. The page
 * compiles the engine while the worker starts, and hands it the module. */
function startWorker(wasm: WasmSource | undefined, text: boolean): Worker {
  // Each URL written out whole, so that an app's bundler finds both workers.
  const w = text
    ? new Worker(new URL("./worker-text.js", import.meta.url), { type: "module" })
    : new Worker(new URL("./worker.js", import.meta.url), { type: "module" });
  const init = (src: unknown) => w.postMessage({ id: 0, m: "init", a: [src] });
  void sourceFor(wasm, text).then((src) => {
    try {
      init(src);
    } catch {
      // A browser that cannot pass a compiled module to a worker: it compiles its own,
      // from the app's address, or (the app gave a module, which cannot be passed
      // either) from the package's `.wasm` next to it. Never nothing: the worker would
      // wait for it, and `open` with it.
      void toTransferable(wasm).then(
        (s) => {
          try {
            init(s);
          } catch {
            init(undefined);
          }
        },
        () => init(undefined),
      );
    }
  });
  return w;
}

/** The engine's module compiled here, from `wasm` or from the package's own `.wasm`
 * file; or, where this cannot be done (a server that does not say `application/wasm`,
 * a failed download), `wasm` as the worker can take it: it then loads the engine
 * itself, and reports what fails. */
async function sourceFor(wasm: WasmSource | undefined, text: boolean): Promise<unknown> {
  if (typeof WebAssembly === "object" && wasm instanceof WebAssembly.Module) return wasm;
  if (
    typeof WebAssembly === "object" &&
    typeof WebAssembly.compileStreaming === "function" &&
    (wasm === undefined || typeof wasm === "string" || wasm instanceof URL)
  ) {
    const url =
      wasm ??
      (text
        ? new URL("../wasm/warren_web_text_bg.wasm", import.meta.url)
        : new URL("../wasm/warren_web_bg.wasm", import.meta.url));
    try {
      return await WebAssembly.compileStreaming(fetch(url));
    } catch {
      // The worker tries again.
    }
  }
  return toTransferable(wasm);
}

/** The engine's source as the worker can take it: an address resolved here (a
 * relative one names a file from the page, as the page's own `fetch` reads it); for a
 * compiled module, which could not be passed to it, nothing (the package's own). */
async function toTransferable(wasm: unknown): Promise<unknown> {
  if (typeof WebAssembly === "object" && wasm instanceof WebAssembly.Module) return undefined;
  if (typeof Response !== "undefined" && wasm instanceof Response) return wasm.arrayBuffer();
  if (wasm instanceof URL) return wasm.href;
  if (typeof wasm === "string" && typeof location !== "undefined") return new URL(wasm, location.href).href;
  return wasm;
}

/** The engine in a dedicated worker (worker.ts). */
export class WorkerEngine implements LeaderEngine {
  private next = 1;
  private waits = new Map<number, Waiting>();
  private locals = new Map<number, Waiting>();
  private listener: (e: { type: string; detail: unknown }) => void = () => {};
  private statusNow: unknown = null;
  private provider: (() => Promise<string>) | null = null;
  private dead: ErrInfo | null = null;
  /** The page's online and offline events, passed on (a worker's own may not fire when
   * only the page's network changes, as when a test or DevTools cuts it). */
  private onOnline = () => this.setOnline(true);
  private onOffline = () => this.setOnline(false);

  /** Messages for the worker made in this turn of the event loop: they go as one
   * (`{ b: [...] }`), so many requests made together (a page of reads, `Promise.all`)
   * cost one message and one task in the worker, and reach its engine together. */
  private outgoing: unknown[] | null = null;

  private constructor(private worker: Worker) {
    worker.onmessage = (e: MessageEvent) => this.onMessage(e.data);
    worker.onerror = (e: ErrorEvent) => {
      e.preventDefault?.();
      this.fail({
        code: "STORAGE_ERROR",
        message: `the engine's worker failed: ${e.message ?? "no message"}`,
        worker: true,
      });
    };
  }

  /** Starts the worker and opens the database in it; rejects if the worker cannot
   * start (the caller then runs the engine on the page). */
  static async open(p: OpenParams): Promise<WorkerEngine> {
    if (idle && (idleFailed || idleText !== p.text)) {
      idle.terminate();
      idle = null;
    }
    const worker = idle ?? startWorker(p.wasm, p.text);
    idle = null;
    const engine = new WorkerEngine(worker);
    engine.provider = p.provider;
    try {
      engine.statusNow = await engine.ask("open", [
        p.name,
        p.clientId,
        p.url,
        p.token,
        p.schema,
        p.auth,
        { cacheBytes: p.cacheBytes },
        p.provider !== null,
        p.offline,
      ]);
    } catch (e) {
      worker.terminate();
      throw e;
    }
    if (typeof addEventListener === "function") {
      addEventListener("online", engine.onOnline);
      addEventListener("offline", engine.onOffline);
    }
    return engine;
  }

  private fail(err: ErrInfo, report = true): void {
    if (this.dead) return;
    this.dead = err;
    if (typeof removeEventListener === "function") {
      removeEventListener("online", this.onOnline);
      removeEventListener("offline", this.onOffline);
    }
    for (const w of [...this.waits.values(), ...this.locals.values()]) w.reject(err);
    this.waits.clear();
    this.locals.clear();
    if (report) this.listener({ type: "server-error", detail: err });
  }

  private send(msg: unknown): void {
    if (!this.outgoing) {
      this.outgoing = [];
      queueMicrotask(() => {
        const q = this.outgoing!;
        this.outgoing = null;
        this.worker.postMessage(q.length === 1 ? q[0] : { b: q });
      });
    }
    this.outgoing.push(msg);
  }

  private ask(m: string, a: unknown[]): Promise<unknown> {
    if (this.dead) return Promise.reject(this.dead);
    const id = this.next++;
    return new Promise((resolve, reject) => {
      this.waits.set(id, { resolve, reject });
      this.send({ id, m, a });
    });
  }

  private onMessage(msg: {
    b?: unknown[];
    id?: number;
    ok?: unknown;
    err?: ErrInfo;
    local?: number;
    evs?: [string, unknown][];
    t?: string;
    ready?: boolean;
  }): void {
    if (msg.b) {
      for (const m of msg.b) this.onMessage(m as typeof msg);
      return;
    }
    if (msg.ready) return;
    if (msg.evs) {
      for (const [type, detail] of msg.evs) this.onWorkerEvent(type, detail);
      return;
    }
    if (msg.t === "token") {
      const id = msg.id;
      const p = this.provider ? this.provider() : Promise.resolve(undefined);
      p.then(
        (token) => this.send({ t: "token", id, token }),
        () => this.send({ t: "token", id, token: undefined }),
      );
      return;
    }

    if (msg.local !== undefined) {
      const w = this.locals.get(msg.local);
      this.locals.delete(msg.local);
      if (msg.err) w?.reject(msg.err);
      else w?.resolve(undefined);
      return;
    }
    if (msg.id !== undefined) {
      const w = this.waits.get(msg.id);
      this.waits.delete(msg.id);
      if (msg.err) w?.reject(msg.err);
      else w?.resolve(msg.ok);
    }
  }

  private onWorkerEvent(type: string, detail: unknown): void {
    if (type === "changed" || type === "confirmed") {
      const d = detail as { value?: string; result?: string };
      detail = {
        ...d,
        ...(d.value !== undefined ? { value: JSON.parse(d.value) } : {}),
        ...(d.result !== undefined ? { result: JSON.parse(d.result) } : {}),
      };
    }
    if (type === "status") this.statusNow = detail;
    this.listener({ type, detail });
  }

  async query(source: string): Promise<unknown> {
    return JSON.parse((await this.ask("query", [source])) as string);
  }

  async explain(kind: string, source: string, argsJson?: string): Promise<unknown> {
    return JSON.parse((await this.ask("explain", [kind, source, argsJson])) as string);
  }

  async inspect(): Promise<unknown> {
    return JSON.parse((await this.ask("inspect", [])) as string);
  }

  private async write(m: string, a: unknown[]): Promise<EngineWrite> {
    if (this.dead) throw this.dead;
    const id = this.next++;
    const local = new Promise<void>((resolve, reject) => {
      this.locals.set(id, { resolve: resolve as (v: unknown) => void, reject });
    });
    local.catch(() => {});
    const answer = new Promise((resolve, reject) => {
      this.waits.set(id, { resolve, reject });
      this.send({ id, m, a });
    });
    try {
      const r = (await answer) as { seq: number; result: string };
      return { seq: r.seq, result: JSON.parse(r.result), local };
    } catch (e) {
      this.locals.delete(id);
      throw e;
    }
  }

  call(fn: string, argsJson: string, rid?: string): Promise<EngineWrite> {
    return this.write("call", [fn, argsJson, rid]);
  }

  run(source: string, rid?: string): Promise<EngineWrite> {
    return this.write("run", [source, rid]);
  }

  async subscribe(source: string): Promise<{ id: number; value: unknown }> {
    const r = (await this.ask("subscribe", [source])) as { id: number; value: string };
    return { id: r.id, value: JSON.parse(r.value) };
  }

  unsubscribe(id: number): void {
    this.ask("unsubscribe", [id]).catch(() => {});
  }

  status(): unknown {
    return this.statusNow;
  }

  onEvent(f: (e: { type: string; detail: unknown }) => void): void {
    this.listener = f;
  }

  setOnline(online: boolean): void {
    this.ask("setOnline", [online]).catch(() => {});
  }

  presence(partition: string, data: string): void {
    this.ask("presence", [partition, data]).catch(() => {});
  }

  setTokenProvider(f: () => Promise<string>): void {
    this.provider = f;
  }

  async flush(): Promise<void> {
    await this.ask("flush", []);
  }

  stats(): Promise<unknown> {
    return this.ask("stats", []);
  }

  hasPendingWrites(collection: string, id: string): Promise<boolean> {
    return this.ask("hasPendingWrites", [collection, id]) as Promise<boolean>;
  }

  async close(): Promise<void> {
    let clean = false;
    try {
      await this.ask("close", []);
      clean = true;
    } finally {
      this.fail({ code: "STORAGE_ERROR", message: "the database is closed" }, false);
      // A worker closed cleanly serves the next open in this page; one is enough.
      if (clean && idle === null) {
        this.worker.onmessage = null;
        this.worker.onerror = null;
        idle = this.worker;
        idleFailed = false;
      } else {
        this.worker.terminate();
      }
    }
  }
}
