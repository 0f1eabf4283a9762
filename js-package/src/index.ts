// Warren in the browser: a local-first database. Queries and transactions are answered
// from IndexedDB with no network; writes apply at once, wait durably in an outbox and
// sync through a Warren server, which puts them in one global order.

import { LeaderEngine, OpenParams, openHere, prestart, WorkerEngine } from "./engine.js";
import { errorFor, wrap, WarrenError } from "./errors.js";
import { collections, Collections, literal, Query, sourceOf, Value } from "./query.js";
import type { CallArgs, FunctionName, ResultOf, Untyped } from "./schema-types.js";
import { Applied, EngineApi, Tabs } from "./tabs.js";
import { TextBinding, TextOptions } from "./text.js";

export * from "./errors.js";
export { Collection, SetQuery, literal } from "./query.js";
export type { Bounds, Collections, Comparison, Doc, Query, Value } from "./query.js";
export type * from "./schema-types.js";
export { TextBinding } from "./text.js";
export type { TextOptions, Yjs } from "./text.js";

/** Where the engine's WebAssembly comes from, if not next to this module. */
export type WasmSource = string | URL | Response | BufferSource | WebAssembly.Module;

export interface OpenOptions {
  /** The server: `wss://eu.example.com` (the sync path `/v1/sync` is added when the URL
   * has no path), or a full `ws(s)://…/v1/sync` URL. `http(s)` works too. */
  url: string;
  /** A JWT, or a function giving one; the function is called again for a fresh
   * token whenever the server says the current one expired, and before connecting
   * when its `exp` has passed by this device's clock (back online after hours away;
   * if it then fails, the client connects with the token it has: the server's clock
   * decides). */
  token: string | (() => string | Promise<string>);
  /** The schema's source, so that the very first start works offline; after the
   * first connection the server's schema is kept locally. */
  schema?: string;
  /** The IndexedDB database name. Defaults to one per server and user. */
  name?: string;
  /** Start offline (no connection until `setOnline(true)`). */
  offline?: boolean;
  /** Where the data lives: `"indexeddb"` (the default, in browsers) or `"memory"`, for
   * Node (tests, server-side rendering, trusted server code): an IndexedDB held in
   * memory by the `fake-indexeddb` package, which the app installs. It lasts as long
   * as the process. */
  storage?: "indexeddb" | "memory";
  /** Where to load the engine's `.wasm` from (an address relative to the page, a `Response`,
   * bytes or a compiled module; defaults to the file in this package:
   * `wasm/warren_web_text_bg.wasm` when `text` is on, else `wasm/warren_web_bg.wasm`). */
  wasm?: WasmSource;
  /** Load the engine with collaborative text (`text` fields, `db.text`), about 75 KB
   * more gzipped. Default: on, unless `schema` is given and declares no `text` field.
   * Without it a text edit fails at once with `TEXT_UNAVAILABLE`. */
  text?: boolean;
  /** On the very first start without `schema`, how long `open` waits for the server
   * to send it, in ms (default 15 000). After that `open` resolves anyway, and writes
   * fail with `UNKNOWN_NAME` until the schema arrives. */
  firstSyncTimeout?: number;
  /** Run the engine in a dedicated worker (default: `true` where the browser has
   * module workers), so that no query, count or sync work ever blocks the page. With
   * `false`, or when the worker cannot start, it runs on the page. */
  worker?: boolean;
  /** The byte cap of the engine's cache of loaded data (default 64 MiB); past it the
   * data used least recently is dropped from memory (it stays in IndexedDB). */
  cacheBytes?: number;
  /** Called with the status at once and on every change, from before `open` resolves
   * (so a refused token or an unreachable server is seen while `open` still waits). */
  onStatus?: (status: Status) => void;
  /** Wait at most this long (ms) for a connection to the server: `open` then rejects
   * with `NOT_CONNECTED` if none came up, or at once with the server's `AuthError`
   * (`TOKEN_BAD_SIGNATURE`, `TOKEN_EXPIRED`...) if it refused the token. Without it,
   * `open` resolves without waiting for the network (see `firstSyncTimeout`). */
  connectTimeout?: number;
}

/** Where the connection stands:
 * - `connecting`: online, trying to reach the server (the first time, or again);
 * - `online`: connected and syncing;
 * - `offline`: no network, or `setOnline(false)` / `offline: true`;
 * - `unauthorized`: the server refused the token (`status.error.code` says why:
 *   `TOKEN_BAD_SIGNATURE`, `TOKEN_EXPIRED`...); a token function is asked again;
 * - `error`: the server closed the connection with an error (`status.error`); Warren
 *   reconnects by itself. */
export type ConnectionState = "connecting" | "online" | "offline" | "unauthorized" | "error";

/** The sync state, as `db.status` gives it. */
export interface Status {
  /** Whether Warren may use the network (the browser's online state, or `setOnline`). */
  online: boolean;
  /** Whether a connection to the server is up. */
  connected: boolean;
  /** Local writes the server has not confirmed yet. */
  pending: number;
  /** When this replica was last in step with the server: the server confirmed a write
   * or sent others' changes (to the second). Kept across reloads (in `localStorage`,
   * where there is one); `null` if never. */
  lastSync: Date | null;
  /** Whether the schema is known (given to `open`, kept from before, or sent by the
   * server): writes need it. */
  hasSchema: boolean;
  /** Where the connection stands, see `ConnectionState`. */
  state: ConnectionState;
  /** Why the state is `unauthorized` or `error` (`null` otherwise). */
  error: WarrenError | null;
}

/** A value over time, with the store contract of Svelte and others: `subscribe` calls
 * back at once with the current value, then on each change, and returns a function
 * that unsubscribes. */
export interface Readable<T> {
  subscribe(run: (value: T) => void): () => void;
}

/** How a write ended on the server. */
export interface Confirmation<R> {
  /** The log position it committed at (`null` if the server had forgotten, having
   * applied it long ago: its effects are in the data all the same). */
  position: number | null;
  /** The function's result as the server computed it. */
  result: R;
}

/** A write: its optimistic result at once, then `local`, then `confirmed`. */
export interface Write<R> {
  /** The optimistic result, as soon as the write is applied to the local view (live
   * queries see it then). Rejects with a coded error if the browser refused it. */
  readonly result: Promise<R>;
  /** Resolves once the write is durable in IndexedDB: a reload, a crash or a week
   * offline does not lose it. */
  readonly local: Promise<R>;
  /** Resolves once the server committed it at a log position; rejects with a coded
   * error if the server refused it (its optimistic effects are then undone). */
  readonly confirmed: Promise<Confirmation<R>>;
}

/** What a bulk write does: see `Database.bulk`. */
export interface BulkOptions {
  /** The function's parameter that takes each chunk (default `"docs"`). */
  param?: string;
  /** Most items per call (default 500; a transaction writes at most 1,000 documents). */
  maxItems?: number;
  /** About the most JSON text per call (default 48 KiB; a commit's arguments are at
   * most 64 KiB). A chunk the engine still finds too large is split in two. */
  maxBytes?: number;
  /** Most calls not yet durable locally at once (default 8): the items are handed to
   * the engine as it takes them. */
  window?: number;
  /** While connected, most calls not yet confirmed by the server (default 64), those of
   * every `bulk` of the database together: an import online keeps the outbox, and the
   * memory it holds, this small. Offline, the outbox grows (it is all in IndexedDB). */
  unconfirmed?: number;
  /** Called as the bulk moves on (an import's progress bar): how many items are applied
   * locally, durable in IndexedDB, and settled by the server (confirmed or refused).
   * Each count only grows. */
  onProgress?: (progress: BulkProgress) => void;
}

/** How far a `bulk` has come, in items: see `BulkOptions.onProgress`. */
export interface BulkProgress {
  /** Applied to the local view (their calls' optimistic results are in). */
  applied: number;
  /** Durable in IndexedDB. */
  durable: number;
  /** Committed by the server. */
  confirmed: number;
  /** Refused by the server (their calls' `rejected` events say why). */
  refused: number;
}

/** Engine counters and memory, for diagnostics (the benchmark reads them). */
export type EngineStats = Record<string, number>;

/** The events `db.on` delivers. */
export interface Events {
  /** A write was refused by the server; `error.seq` says which, and for a write made
   * with `db.call` in this page `error.fn` and `error.args` say what it was. */
  rejected: WarrenError & { seq?: number };
  /** The server stopped sending a partition (access revoked); its data is gone locally. */
  dropped: string;
  /** A connection-level error (the client reconnects by itself). */
  error: WarrenError;
  /** The server's schema changed; pending writes re-run under the new one. */
  schema: string;
  /** Another user's ephemeral presence message in a partition you hold
   * (`db.presence`; `db.text` bindings use it for cursors). */
  presence: { partition: string; from: string; data: string };
}

/** What `db.inspect()` answers. */
export interface Inspection {
  partitions: { partition: string; cursor: number }[];
  outbox: ({ seq: number; call: string; args: unknown } | { seq: number; run: string })[];
  live: { id: number; source: string }[];
}

/** A live query: `subscribe` is notified only when the result changes. */
export class LiveQuery<R> implements Readable<R | undefined> {
  /** The latest result (`undefined` until the first one). */
  current: R | undefined = undefined;
  /** The latest error, if the query failed (a parse error, say). */
  error: WarrenError | undefined = undefined;
  private runs = new Set<(value: R | undefined) => void>();
  /** The engine's id for the running subscription, once it has one. */
  private starting: Promise<number | null> | null = null;

  constructor(
    private db: Database<any>,
    readonly source: string,
  ) {}

  /** Calls `run` with the current result (if there is one yet) and again on each
   * change, or with `undefined` when the query fails (see `error`); returns a function
   * that unsubscribes. The last unsubscribe stops the live query. */
  subscribe(run: (value: R | undefined) => void): () => void {
    this.runs.add(run);
    if (this.current !== undefined) run(this.current);
    this.starting ??= this.start();
    return () => {
      if (!this.runs.delete(run) || this.runs.size > 0) return;
      const started = this.starting;
      this.starting = null;
      void started?.then((id) => {
        if (id !== null) this.db._unsubscribe(id);
      });
    };
  }

  /** Resolves with the current result (waiting for the first one). */
  ready(): Promise<R> {
    return new Promise((resolve, reject) => {
      let done = false;
      let stop: (() => void) | undefined;
      const run = (v: R | undefined) => {
        if (done) return;
        if (v === undefined && !this.error) return;
        done = true;
        queueMicrotask(() => stop?.());
        if (this.error) reject(this.error);
        else resolve(v as R);
      };
      stop = this.subscribe(run);
      if (done) stop();
    });
  }

  private async start(): Promise<number | null> {
    try {
      const { id, value } = await this.db._subscribe(this);
      const early = this.db._register(id, this);
      this._set((early !== undefined ? early : value) as R);
      return id;
    } catch (e) {
      this.error = wrap(e);
      this.starting = null;
      for (const run of [...this.runs]) run(undefined);
      return null;
    }
  }

  /** @internal */
  _set(value: R): void {
    this.current = value;
    this.error = undefined;
    for (const run of [...this.runs]) run(value);
  }
}

let ready: Promise<unknown> | null = null;

let readyText = false;

/** What the package uses of either module's glue (the same API; wasm-bindgen names
 * the internal shims after each module). */
interface Glue {
  default(input?: { module_or_path?: WasmSource }): Promise<unknown>;
  Warren: typeof import("../wasm/warren_web.js").Warren;
}

/** The engine's JavaScript glue, loaded on the page only when the engine runs here:
 * the module with collaborative text, or the smaller one without it. */
const glue = (text: boolean): Promise<Glue> =>
  (text ? import("../wasm/warren_web_text.js") : import("../wasm/warren_web.js")) as Promise<unknown> as Promise<Glue>;

/** Whether an app opened with `options` needs the engine with collaborative text. */
export function wantsText(options: { text?: boolean; schema?: string }): boolean {
  if (options.text !== undefined) return options.text;
  if (options.schema === undefined) return true;
  // A field declared `text` (comments removed first).
  return /\bfield\s+[A-Za-z_]\w*\??\s*:\s*text\b/.test(options.schema.replace(/\/\/[^\n]*/g, ""));
}

/** Loads the engine on this page (once per page): what `open` does when it runs the
 * engine here rather than in a worker. `text`: the module with collaborative text
 * (default); a page loads one of the two. */
export function load(wasm?: WasmSource, text = true): Promise<unknown> {
  if (ready && readyText !== text)
    return Promise.reject(
      errorFor("STORAGE_ERROR", `this page loaded the engine ${readyText ? "with" : "without"} collaborative text already`),
    );
  readyText = text;
  ready ??= glue(text)
    .then(async (m) => m.default({ module_or_path: wasm ?? (await nodeWasm(text)) }))
    .catch((e: unknown) => {
      ready = null;
      throw errorFor("STORAGE_ERROR", `could not load Warren's WebAssembly: ${String(e)}`);
    });
  return ready;
}

/** In Node (where `fetch` cannot read a `file:` URL), the engine's `.wasm` file read
 * from disk; elsewhere `undefined` (the glue fetches the file next to it). */
async function nodeWasm(text: boolean): Promise<BufferSource | undefined> {
  if (!isNode()) return undefined;
  const fs = (await optionalImport("node:fs/promises")) as unknown as {
    readFile(u: URL): Promise<Uint8Array<ArrayBuffer>>;
  };
  return fs.readFile(new URL(text ? "../wasm/warren_web_text_bg.wasm" : "../wasm/warren_web_bg.wasm", import.meta.url));
}

/** The claims of a JWT, read without checking it (the server checks it; the browser
 * uses the claims for its local rule checks and for the UI). */
export function claimsOf(token: string): Record<string, Value> {
  const part = token.split(".")[1];
  if (!part) throw errorFor("TOKEN_MALFORMED", "the token is not a JWT");
  try {
    const b64 = part.replace(/-/g, "+").replace(/_/g, "/");
    const bin = atob(b64 + "=".repeat((4 - (b64.length % 4)) % 4));
    const json = new TextDecoder().decode(Uint8Array.from(bin, (c) => c.charCodeAt(0)));
    const claims = JSON.parse(json);
    if (typeof claims !== "object" || claims === null) throw new Error("not an object");
    return claims;
  } catch (e) {
    throw errorFor("TOKEN_MALFORMED", `the token's claims do not decode: ${String(e)}`);
  }
}

/** The WebSocket URL of a server given as `wss://host`, `https://host` or a full URL. */
export function syncUrl(url: string): string {
  const u = new URL(url);
  if (u.protocol === "http:") u.protocol = "ws:";
  if (u.protocol === "https:") u.protocol = "wss:";
  if (u.protocol !== "ws:" && u.protocol !== "wss:")
    throw new TypeError(`not a server URL: ${url}`);
  if (u.pathname === "" || u.pathname === "/") u.pathname = "/v1/sync";
  return u.toString();
}

/** The HTTP origin of a server given as `wss://host`, `https://host` or a full URL. */
function httpBase(url: string): string {
  const u = new URL(syncUrl(url));
  u.protocol = u.protocol === "wss:" ? "https:" : "http:";
  return u.origin;
}

/**
 * DEVELOPMENT ONLY: a token for user `sub` from a server run with `--dev-tokens`
 * (`POST /v1/dev/token`). From a page of another origin (a Vite dev server, say), the
 * server must allow that origin: pages on `localhost` are allowed with `--dev-tokens`,
 * others with `--cors-origin`. Rejects with `NOT_CONNECTED` when the server cannot be
 * reached or refuses the origin, or with the server's code (`INVALID_ARGUMENT` for a
 * bad name).
 */
export async function devToken(url: string, sub: string): Promise<string> {
  const at = `${httpBase(url)}/v1/dev/token`;
  let res: Response;
  try {
    res = await fetch(at, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({ sub }),
    });
  } catch (e) {
    throw errorFor(
      "NOT_CONNECTED",
      `could not reach ${at} (${String(e)}): is the server running with --dev-tokens, and does it allow this page's origin (--cors-origin)?`,
    );
  }
  const body = (await res.json().catch(() => null)) as { token?: unknown; code?: unknown; message?: unknown } | null;
  if (res.ok && typeof body?.token === "string") return body.token;
  if (typeof body?.code === "string")
    throw errorFor(body.code, typeof body.message === "string" ? body.message : `${res.status}`);
  throw errorFor(
    "NOT_CONNECTED",
    res.status === 404
      ? `${at} answered 404: run the server with --dev-tokens`
      : `${at} answered ${res.status}`,
  );
}

/**
 * Opens the database for the user the token names, in IndexedDB, and starts syncing.
 * Works offline: without a network it opens what this browser holds.
 */
export async function open<S = Record<string, Record<string, Value>>>(
  options: OpenOptions,
): Promise<Database<S>> {
  if (options.storage === "memory") await memoryStorage();
  if (typeof indexedDB === "undefined")
    throw errorFor(
      "STORAGE_ERROR",
      'IndexedDB is not available here: in Node, open with storage: "memory" (and install fake-indexeddb)',
    );
  if (!options.offline) await nodeWebSocket();
  // The engine's worker starts now and compiles the engine while the token comes (and
  // opens IndexedDB, when the database's name does not wait for the token's `sub`).
  const text = wantsText(options);
  if (options.worker !== false && typeof Worker !== "undefined") prestart(options.wasm, text, options.name);
  const provider = typeof options.token === "function" ? options.token : null;
  const token = provider ? await provider() : (options.token as string);
  const auth = claimsOf(token);
  if (typeof auth.sub !== "string" || auth.sub === "")
    throw errorFor("TOKEN_MALFORMED", "the token has no `sub` claim");
  const url = syncUrl(options.url);
  const name = options.name ?? `warren:${auth.sub}@${url}`;
  // Tabs of this origin that open the same database share one engine (see tabs.ts):
  // this one opens it only if it becomes the leader.
  let leaderBefore = false;
  const tabs = new Tabs(name, async () => {
    const clientId = `${auth.sub}:${crypto.randomUUID()}`;
    // A tab that takes over later asks for a fresh token.
    const now = leaderBefore && provider ? await provider() : token;
    leaderBefore = true;
    return startEngine(options, {
      wasm: options.wasm,
      text,
      name,
      clientId,
      url,
      token: now,
      schema: options.schema,
      auth,
      cacheBytes: options.cacheBytes,
      offline: options.offline === true,
      provider: provider ? async () => provider() : null,
    });
  });
  try {
    await tabs.start();
  } catch (e) {
    throw wrap(e);
  }
  const db = new Database<S>(tabs, auth, name);
  if (options.onStatus) db.status.subscribe(options.onStatus);
  if (options.connectTimeout !== undefined && !options.offline) {
    try {
      await connected(db, options.connectTimeout);
    } catch (e) {
      await db.close().catch(() => {});
      throw e;
    }
  } else if (!options.offline && !(tabs.status() as { hasSchema: boolean }).hasSchema) {
    // The first start ever, with no schema given: the server's comes with the welcome.
    await new Promise<void>((resolve) => {
      const timer = setTimeout(() => done(), options.firstSyncTimeout ?? 15_000);
      const stop = db.status.subscribe((s) => s.hasSchema && done());
      function done() {
        clearTimeout(timer);
        queueMicrotask(() => stop());
        resolve();
      }
    });
  }
  return db;
}

const isNode = () =>
  typeof (globalThis as { process?: { versions?: { node?: string } } }).process?.versions?.node === "string";

/** `import()` of a package the app may have installed, by a name bundlers leave alone
 * (these run in Node only). */
const optionalImport = (name: string): Promise<Record<string, unknown>> => import(/* @vite-ignore */ name);

/** `storage: "memory"`: IndexedDB in memory (fake-indexeddb), where there is none. */
async function memoryStorage(): Promise<void> {
  if (typeof indexedDB !== "undefined" && !isNode())
    throw errorFor("STORAGE_ERROR", 'storage: "memory" is for Node; a browser has IndexedDB');
  if (typeof indexedDB !== "undefined") return;
  try {
    await optionalImport("fake-indexeddb/auto");
  } catch (e) {
    throw errorFor("STORAGE_ERROR", `storage: "memory" needs the fake-indexeddb package (npm install fake-indexeddb): ${String(e)}`);
  }
}

/** In Node without a global WebSocket (before 22), the `ws` package's, if installed. */
async function nodeWebSocket(): Promise<void> {
  const g = globalThis as { WebSocket?: unknown };
  if (g.WebSocket !== undefined || !isNode()) return;
  try {
    const ws = await optionalImport("ws");
    g.WebSocket = ws.WebSocket ?? ws.default;
  } catch (e) {
    throw errorFor("NOT_CONNECTED", `this Node has no WebSocket: use Node 22 or later, or npm install ws (${String(e)})`);
  }
}

/** Resolves once `db` is connected; rejects with the server's refusal of the token at
 * once, or with NOT_CONNECTED after `ms`. */
function connected(db: Database<any>, ms: number): Promise<void> {
  return new Promise<void>((resolve, reject) => {
    let stop: (() => void) | undefined;
    let done = false;
    const finish = (e?: WarrenError) => {
      if (done) return;
      done = true;
      clearTimeout(timer);
      queueMicrotask(() => stop?.());
      if (e) reject(e);
      else resolve();
    };
    const timer = setTimeout(() => {
      const last = db.status.current.error;
      finish(
        errorFor(
          "NOT_CONNECTED",
          `no connection to the server within ${ms} ms` + (last ? ` (last error: ${last.code}: ${last.message})` : ""),
        ),
      );
    }, ms);
    stop = db.status.subscribe((s) => {
      if (s.state === "online") finish();
      else if (s.state === "unauthorized" && s.error) finish(s.error);
      else if (s.state === "offline") finish(errorFor("NOT_CONNECTED", "offline: the browser has no network"));
    });
  });
}

/** Opens the engine in a worker, or on the page when that is turned off or fails. */
async function startEngine(options: OpenOptions, p: OpenParams): Promise<LeaderEngine> {
  if (options.worker !== false && typeof Worker !== "undefined") {
    try {
      const engine = await WorkerEngine.open(p);
      // A worker cannot ask for persistent storage; the page can.
      void navigator.storage?.persist?.().catch(() => false);
      return engine;
    } catch (e) {
      // A refusal from the engine itself (storage, quota) is the answer; a worker that
      // could not start is not: run on the page instead.
      if (!(e as { worker?: boolean } | null)?.worker) throw e;
      console.warn("warren: the engine runs on the page (its worker did not start):", e);
    }
  }
  await load(options.wasm, p.text);
  return openHere((await glue(p.text)).Warren, p);
}

/** Arguments as JSON text; values JSON cannot hold (NaN, Infinity, BigInt, cycles)
 * are refused with INVALID_ARGUMENT rather than changed. */
function toJson(value: unknown): string {
  try {
    return JSON.stringify(value ?? null, (_k, v) => {
      if (typeof v === "number" && !Number.isFinite(v))
        throw errorFor("INVALID_ARGUMENT", `a number that is not finite: ${v}`);
      return v;
    });
  } catch (e) {
    if (e instanceof WarrenError) throw e;
    throw errorFor("INVALID_ARGUMENT", `the arguments are not JSON: ${String(e)}`);
  }
}

type Listener<K extends keyof Events> = (value: Events[K]) => void;

interface Waiter {
  resolve: (c: Confirmation<unknown>) => void;
  reject: (e: WarrenError) => void;
}

/** `Database.pages`'s page size when none is given: documents of a few hundred bytes
 * make pages of a few hundred KiB, under the engine's 1 MiB value limit. */
const PAGE_SIZE = 1000;
/** The errors of a page too large for the query limits: asked for again at half. */
const SHRINK_ON = new Set(["RESULT_TOO_LARGE", "MEMORY_EXHAUSTED", "FUEL_EXHAUSTED"]);

/** An open Warren database. */
export class Database<S = Record<string, Record<string, Value>>> {
  /** The collections, for the query builder: `db.q.Todo.index("byOwner", sub)`. */
  readonly q: Collections<S> = collections<S>();
  /** Writes made through this database so far (`pages` reads ahead only across none). */
  private writesMade = 0;
  /** The sync state: online, connected, pending writes, last sync. */
  readonly status: Readable<Status> & { readonly current: Status };
  /** Live queries by engine id. */
  private lives = new Map<number, LiveQuery<any>>();
  /** Results that arrived before their live query learned its id. */
  private early = new Map<number, unknown>();
  private waiters = new Map<number, Waiter>();
  private outcomes = new Map<number, { ok: Confirmation<unknown> } | { err: WarrenError }>();
  private listeners = new Map<keyof Events, Set<(value: unknown) => void>>();
  private statusRuns = new Set<(s: Status) => void>();
  /** `bulk` calls not yet confirmed, of every `bulk` of this database: their window is
   * one, so an import made of many `bulk` calls is bounded as one call is. */
  private bulkUnconfirmed = 0;
  /** The `bulk`s waiting for that window: woken as any of their calls is confirmed. */
  private bulkWaiting = new Set<() => void>();
  private statusNow: Status;
  /** The engine's last status, and the last error the server closed with. */
  private rawStatus: unknown;
  private lastError: WarrenError | null = null;
  /** The last sync kept from before (ms), its localStorage key, and when it was
   * last written there. */
  private syncFloor = 0;
  private syncKey: string | null = null;
  private syncSaved = 0;
  /** What each of this page's pending calls was, by sequence number, for the errors
   * of refused writes (bounded like `outcomes`). */
  private calls = new Map<number, { fn: string; args: Record<string, unknown> }>();
  private closed = false;
  private onHide: ((e: Event) => void) | null = null;

  private engine: EngineApi;

  /** @internal use `open` (the engine is untyped here so that the declarations do not
   * depend on the engine's). */
  constructor(
    engine: unknown,
    /** The token's claims (as the local rule checks see `auth`). */
    readonly auth: Record<string, Value>,
    /** The database's name, under which the last sync is kept across reloads. */
    name?: string,
  ) {
    this.engine = engine as EngineApi;
    if (name !== undefined && typeof localStorage !== "undefined") {
      this.syncKey = `warren:lastSync:${name}`;
      this.syncFloor = Number(localStorage.getItem(this.syncKey)) || 0;
    }
    this.rawStatus = this.engine.status();
    this.statusNow = toStatus(this.rawStatus, null, this.syncFloor);
    const self = this;
    this.status = {
      get current() {
        return self.statusNow;
      },
      subscribe(run) {
        self.statusRuns.add(run);
        run(self.statusNow);
        return () => self.statusRuns.delete(run);
      },
    };
    this.engine.onEvent((e: { type: string; detail: unknown }) => this.onEvent(e.type, e.detail));
    // A page going away (or hidden, after which a phone may kill it) writes what the
    // server confirmed and is not yet on disk.
    if (typeof addEventListener === "function" && typeof document !== "undefined") {
      const hide = (e: Event) => {
        if (e.type === "pagehide" || document.visibilityState === "hidden") {
          this.saveSync();
          void this.flush().catch(() => {});
        }
      };
      this.onHide = hide;
      addEventListener("pagehide", hide);
      document.addEventListener("visibilitychange", hide);
    }
  }

  /** Whether this tab holds the database's engine and connection for every tab of
   * this origin (the others forward to it; see "Many tabs" in the README). */
  get isLeader(): boolean {
    return (this.engine as { isLeader?: boolean }).isLeader ?? true;
  }

  /** Runs a query against the local data (no network): Warren source text, or a
   * builder query. */
  async query<R = unknown>(q: Query<R> | string): Promise<R> {
    try {
      return (await this.engine.query(sourceOf(q))) as R;
    } catch (e) {
      throw wrap(e);
    }
  }

  /** Every element of a set query, page by page (`for await (const docs of db.pages(q))`):
   * the set's `paginate` with the cursor passed on, one query a page, so a set larger
   * than one result may be (1 MiB) is read whole. The next page is read while the app
   * handles this one; a write made through this database in the meantime has it read
   * again, so a write between two pages shows in the pages after it, as with
   * `paginate` by hand. A page too large for the query limits (`RESULT_TOO_LARGE`,
   * `MEMORY_EXHAUSTED`, `FUEL_EXHAUSTED`) is asked for again at half the size, and the
   * pages after it stay at that size. */
  async *pages<E = unknown>(
    q: Query<E[]> | string | ((c: Collections<S>) => Query<E[]>),
    options: { pageSize?: number } = {},
  ): AsyncGenerator<E[], void, undefined> {
    let size = options.pageSize ?? PAGE_SIZE;
    if (!Number.isSafeInteger(size) || size < 1)
      throw errorFor("INVALID_ARGUMENT", `pageSize must be a positive integer, not ${String(size)}`);
    const set = sourceOf(typeof q === "function" ? q(this.q) : q);
    let after: string | null = null;
    // The page after `after`, asked for now, and the writes made when it was.
    const ask = () => {
      const page = this.engine.query(
        // On a line of its own: a source that ends with a comment does not take it in.
        `${set}\n.paginate(${size}${after === null ? "" : `, ${literal(after)}`})`,
      ) as Promise<{ data: E[]; after: unknown }>;
      page.catch(() => {}); // a page read ahead that the app never takes
      return { page, writes: this.writesMade };
    };
    let next = ask();
    for (;;) {
      if (next.writes !== this.writesMade) next = ask();
      let page: { data: E[]; after: unknown };
      try {
        page = await next.page;
      } catch (e) {
        const code = (e as { code?: unknown })?.code;
        if (size > 1 && typeof code === "string" && SHRINK_ON.has(code)) {
          size = Math.ceil(size / 2);
          next = ask();
          continue;
        }
        throw wrap(e);
      }
      if (!Array.isArray(page?.data))
        throw errorFor("INVALID_ARGUMENT", "pages needs a set query: its paginate gave no page");
      const last = typeof page.after !== "string";
      if (!last) {
        after = page.after as string;
        next = ask();
      }
      if (page.data.length > 0) yield page.data;
      if (last) return;
    }
  }

  /** Replays a decision on the local data as this database's identity, with the trace
   * of every rule it evaluated (docs/DEBUGGING.md): a query (source text or a builder
   * query), `{ call: "fn", args }`, `{ run: "source" }` or `{ partition: "team:red" }`.
   * Nothing is stored or sent: the same engine as the server's, on what this replica
   * holds. */
  async explain(
    what: Query<unknown> | string | { call: string; args?: unknown } | { run: string } | { partition: string },
  ): Promise<unknown> {
    try {
      if (!this.engine.explain) throw { code: "INVALID_ARGUMENT", message: "this engine cannot explain" };
      if (typeof what === "object" && what !== null && "call" in what)
        return await this.engine.explain("call", what.call, JSON.stringify(what.args ?? {}));
      if (typeof what === "object" && what !== null && "run" in what)
        return await this.engine.explain("run", what.run);
      if (typeof what === "object" && what !== null && "partition" in what)
        return await this.engine.explain("partition", what.partition);
      return await this.engine.explain("query", sourceOf(what as Query<unknown> | string));
    } catch (e) {
      throw wrap(e);
    }
  }

  /** What this replica holds, for the inspector (`warren/devtools`): the partitions with their cursors, the outbox (each pending
   * write's sequence number and operation), the live queries. */
  async inspect(): Promise<Inspection> {
    try {
      if (!this.engine.inspect) throw { code: "INVALID_ARGUMENT", message: "this engine cannot inspect" };
      return (await this.engine.inspect()) as Inspection;
    } catch (e) {
      throw wrap(e);
    }
  }

  /** A live query: its subscribers hear its result now and whenever it changes, after
   * local writes and after the server's confirmed effects alike. Accepts source text,
   * a builder query, or a function of the collections: `db.live(q => q.Todo.all())`. */
  live<R = unknown>(q: Query<R> | string | ((c: Collections<S>) => Query<R>)): LiveQuery<R> {
    const query = typeof q === "function" ? q(this.q) : q;
    return new LiveQuery<R>(this, sourceOf(query));
  }

  /** Calls one of the schema's functions. With a generated schema (`open<Schema>`),
   * the name, the arguments and the result are typed. */
  call<N extends FunctionName<S>>(fn: N, ...args: CallArgs<S, N>): Write<ResultOf<S, N>>;
  call<R = unknown>(fn: Untyped<S, string>, args?: Record<string, unknown>): Write<R>;
  call(fn: string, args: any = {}): Write<any> {
    return this.invoke(fn, args as Record<string, unknown>);
  }

  /** `call` without the schema's types. @internal */
  invoke<R>(fn: string, args: Record<string, unknown>): Write<R> {
    return this.write<R>(() => this.engine.call(fn, toJson(args)), { fn, args });
  }

  /**
   * Calls `fn` once per chunk of `items`, each call's arguments `{ [param]: chunk }`:
   * an import or an offline burst of any size, where one call is limited to 64 KiB of
   * arguments and 1,000 writes. The chunks are made in order, each its own commit;
   * `result` resolves with every call's optimistic result once all are applied,
   * `local` once all are durable, `confirmed` once the server committed all (the last
   * position). While connected, at most `unconfirmed` calls wait for the server at a
   * time, counting those of every `bulk` of this database, so memory stays bounded
   * however many items there are and however many `bulk`s make the import.
   */
  bulk<R = unknown>(fn: string, items: Iterable<unknown>, options: BulkOptions = {}): Write<R[]> {
    const param = options.param ?? "docs";
    const maxItems = options.maxItems ?? 500;
    const maxBytes = options.maxBytes ?? 48 * 1024;
    const window = options.window ?? 8;
    const unconfirmedMax = options.unconfirmed ?? 64;
    const results: [number, R][] = [];
    const locals: Promise<unknown>[] = [];
    const confirms: Promise<Confirmation<R>>[] = [];
    const progress: BulkProgress = { applied: 0, durable: 0, confirmed: 0, refused: 0 };
    const onProgress = options.onProgress;
    const moved = (k: keyof BulkProgress, n: number) => {
      if (!onProgress) return;
      progress[k] += n;
      try {
        onProgress({ ...progress });
      } catch (e) {
        // The app's error is the app's: reported, and the bulk goes on.
        queueMicrotask(() => {
          throw e;
        });
      }
    };
    let unlocal = 0;
    let wake: (() => void) | null = null;
    const nudge = () => {
      const w = wake;
      wake = null;
      w?.();
    };
    // Another `bulk`'s confirmation frees the shared window too.
    this.bulkWaiting.add(nudge);
    const stopStatus = this.status.subscribe(() => nudge());
    // Each item is turned into JSON once: its text measures it and goes into the call.
    const head = `{${JSON.stringify(param)}:[`;
    const send = async (chunk: unknown[], parts: string[], at: number): Promise<void> => {
      const w = this.write<R>(() => this.engine.call(fn, head + parts.join(",") + "]}"), {
        fn,
        args: { [param]: chunk },
      });
      let r: R;
      try {
        r = await w.result;
      } catch (e) {
        if ((e as WarrenError).code === "ARGUMENT_TOO_LARGE" && chunk.length > 1) {
          const half = Math.ceil(chunk.length / 2);
          await send(chunk.slice(0, half), parts.slice(0, half), at);
          await send(chunk.slice(half), parts.slice(half), at + 0.5);
          return;
        }
        throw e;
      }
      results.push([at, r]);
      unlocal++;
      this.bulkUnconfirmed++;
      moved("applied", chunk.length);
      // Settled by the server once durable (a call that failed locally is neither).
      w.local.then(
        () => {
          moved("durable", chunk.length);
          return w.confirmed.then(
            () => moved("confirmed", chunk.length),
            () => moved("refused", chunk.length),
          );
        },
        () => {},
      );
      locals.push(w.local.finally(() => (unlocal--, nudge())));
      const c = w.confirmed.finally(() => (this.bulkUnconfirmed--, this.wakeBulks()));
      c.catch(() => {});
      confirms.push(c);
    };
    const run = (async () => {
      try {
        let chunk: unknown[] = [];
        let parts: string[] = [];
        let bytes = 0;
        let n = 0;
        const flushChunk = async () => {
          if (!chunk.length) return;
          const c = chunk;
          const p = parts;
          chunk = [];
          parts = [];
          bytes = 0;
          // Closed, it waits no more: the call fails as the closed database's do.
          while (
            !this.closed &&
            (unlocal >= window || (this.bulkUnconfirmed >= unconfirmedMax && this.statusNow.connected))
          )
            await new Promise<void>((ok) => (wake = ok));
          await send(c, p, n++);
        };
        for (const item of items) {
          const text = toJson(item);
          const size = text.length + 1;
          if (chunk.length && (chunk.length >= maxItems || bytes + size > maxBytes)) await flushChunk();
          chunk.push(item);
          parts.push(text);
          bytes += size;
        }
        await flushChunk();
        return results.sort((a, b) => a[0] - b[0]).map((x) => x[1]);
      } finally {
        stopStatus();
        this.bulkWaiting.delete(nudge);
      }
    })();
    const result = run.catch((e: unknown) => {
      throw wrap(e);
    });
    const local = result.then(async (r) => {
      await Promise.all(locals);
      return r;
    });
    const confirmed = local.then(async (r) => {
      const all = await Promise.all(confirms);
      return { position: all.length ? all[all.length - 1].position : null, result: r };
    });
    for (const p of [result, local, confirmed]) p.catch(() => {});
    return { result, local, confirmed } as Write<R[]>;
  }

  /** Runs an ad-hoc transaction: a block of Warren statements whose last value is
   * the result. The rules apply to every write in it. */
  transact<R = unknown>(source: string): Write<R> {
    return this.write<R>(() => this.engine.run(source));
  }

  /** A collaborative text field (`field notes: text`) as a Yjs `Y.Doc` kept in step
   * with the replica: bind an editor to `binding.text`. Pass the app's `yjs` module:
   * `db.text("Task", id, "notes", { Y })`. See "Collaborative text" in the README. */
  async text<D extends { getText(name?: string): unknown }>(
    collection: string,
    id: string,
    field: string,
    options: TextOptions<D>,
  ): Promise<TextBinding<D>> {
    const binding = new TextBinding<D>(this, collection, id, field, options);
    await binding.ready;
    return binding;
  }

  /** Sends `data` (text, at most 1 KiB) to the others who may read `partition` and
   * hold it now: ephemeral (not logged, not stored, dropped while offline). They hear
   * it as a `presence` event. */
  presence(partition: string, data: string): void {
    this.engine.presence?.(partition, data);
  }

  /** Listens for `rejected`, `dropped`, `error` or `schema`; returns an unsubscribe. */
  on<K extends keyof Events>(type: K, f: Listener<K>): () => void {
    let set = this.listeners.get(type);
    if (!set) this.listeners.set(type, (set = new Set()));
    set.add(f as (value: unknown) => void);
    return () => set.delete(f as (value: unknown) => void);
  }

  /** Goes offline (closes the connection and stays off) or back online. */
  setOnline(online: boolean): void {
    this.engine.setOnline(online);
  }

  /** Resolves once everything applied so far is written to IndexedDB: local writes
   * (as their `local` promises say) and what the server confirmed, which is otherwise
   * written a moment after it arrives. After it, a reload or a crash finds all of it
   * on disk. */
  async flush(): Promise<void> {
    try {
      await this.engine.flush();
    } catch (e) {
      throw wrap(e);
    }
  }

  /** Whether this device has a write to document `id` of `collection` that the server
   * has not confirmed yet (it created, changed or deleted it): Firestore's
   * `hasPendingWrites`, for a row's "saving..." mark. Answered from memory. */
  async hasPendingWrites(collection: string, id: string): Promise<boolean> {
    try {
      return await this.engine.hasPendingWrites(collection, id);
    } catch (e) {
      throw wrap(e);
    }
  }

  /** Engine counters and memory (the cache, the view, IndexedDB reads and writes, the
   * WebAssembly memory), for diagnostics. */
  async stats(): Promise<EngineStats> {
    return (await this.engine.stats()) as EngineStats;
  }

  /** Wakes every `bulk` waiting for the shared window, to look at it again. */
  private wakeBulks(): void {
    for (const n of [...this.bulkWaiting]) n();
  }

  /** Writes what is not yet on disk (local writes and confirmed data), stops syncing
   * and releases the database; resolves once all of it is in IndexedDB. Pending writes
   * stay in the outbox for next time. */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    // `bulk`s waiting for their windows go on, to fail.
    this.wakeBulks();
    this.saveSync();
    if (this.onHide) {
      removeEventListener("pagehide", this.onHide);
      document.removeEventListener("visibilitychange", this.onHide);
    }
    try {
      await this.engine.close();
    } catch (e) {
      throw wrap(e);
    }
  }

  private write<R>(start: () => Promise<Applied>, what?: { fn: string; args: Record<string, unknown> }): Write<R> {
    this.writesMade++;
    let started: Promise<Applied>;
    try {
      started = start();
    } catch (e) {
      started = Promise.reject(e);
    }
    const applied = started.catch((e: unknown) => {
      let err = wrap(e);
      // With no schema yet, every name is unknown: say what is true instead.
      if (err.code === "UNKNOWN_NAME" && !this.statusNow.hasSchema)
        err = errorFor(
          "NOT_CONNECTED",
          "the schema is not known yet: this database has not reached the server since it was created (pass `schema` to open, or wait until status.hasSchema)",
        );
      if (what) Object.assign(err, what);
      throw err;
    });
    if (what)
      void applied.then(
        (a) =>
          a.local.then(
            (seq) => {
              if (this.outcomes.has(seq) || this.calls.size >= 10_000) return;
              this.calls.set(seq, what);
            },
            () => {},
          ),
        () => {},
      );
    const result = applied.then((a) => a.result as R);
    // `local` resolves with the sequence number the write is durable under (another
    // tab's engine may have had to make it again, see tabs.ts).
    const durable = applied.then((a) =>
      a.local.catch((e: unknown) => {
        throw wrap(e);
      }),
    );
    const local = durable.then(() => result);
    const confirmed = durable.then(
      (seq) =>
        new Promise<Confirmation<R>>((resolve, reject) =>
          this.waitFor(seq, resolve as Waiter["resolve"], reject),
        ),
    );
    // A write that fails locally rejects all three; keep the unobserved ones quiet.
    for (const p of [result, local, confirmed]) p.catch(() => {});
    return { result, local, confirmed };
  }

  private waitFor(seq: number, resolve: Waiter["resolve"], reject: Waiter["reject"]): void {
    const done = this.outcomes.get(seq);
    if (done) {
      this.outcomes.delete(seq);
      if ("ok" in done) resolve(done.ok);
      else reject(done.err);
    } else {
      this.waiters.set(seq, { resolve, reject });
    }
  }

  private settle(seq: number, outcome: { ok: Confirmation<unknown> } | { err: WarrenError }): void {
    this.calls.delete(seq);
    const w = this.waiters.get(seq);
    if (w) {
      this.waiters.delete(seq);
      if ("ok" in outcome) w.resolve(outcome.ok);
      else w.reject(outcome.err);
      return;
    }
    // An outcome before anyone waits for it (a write from before a reload, or one
    // whose durability is still being confirmed): keep a bounded number.
    this.outcomes.set(seq, outcome);
    if (this.outcomes.size > 10_000) {
      const oldest = this.outcomes.keys().next().value;
      if (oldest !== undefined) this.outcomes.delete(oldest);
    }
  }

  private emit<K extends keyof Events>(type: K, value: Events[K]): void {
    for (const f of [...(this.listeners.get(type) ?? [])]) {
      try {
        f(value);
      } catch (e) {
        queueMicrotask(() => {
          throw e;
        });
      }
    }
  }

  private onEvent(type: string, detail: unknown): void {
    switch (type) {
      case "changed": {
        const { live, value } = detail as { live: number; value: unknown };
        const lq = this.lives.get(live);
        if (lq) lq._set(value);
        else this.early.set(live, value);
        break;
      }
      case "confirmed": {
        const { seq, position, result } = detail as { seq: number; position: number | null; result: unknown };
        this.settle(seq, { ok: { position, result } });
        break;
      }
      case "rejected": {
        const err = wrap(detail) as WarrenError & { seq?: number };
        const what = typeof err.seq === "number" ? this.calls.get(err.seq) : undefined;
        if (what) Object.assign(err, what);
        if (typeof err.seq === "number") this.settle(err.seq, { err });
        this.emit("rejected", err);
        break;
      }
      case "status": {
        this.rawStatus = detail;
        if ((detail as { connected?: boolean }).connected) this.lastError = null;
        this.publishStatus();
        break;
      }
      case "dropped":
        this.emit("dropped", String(detail));
        break;
      case "schema":
        this.emit("schema", String(detail));
        break;
      case "presence":
        this.emit("presence", detail as Events["presence"]);
        break;
      case "server-error": {
        const err = wrap(detail);
        this.lastError = err;
        this.publishStatus();
        this.emit("error", err);
        break;
      }
    }
  }

  private saveSync(): void {
    if (!this.syncKey || this.syncFloor <= this.syncSaved) return;
    this.syncSaved = this.syncFloor;
    try {
      localStorage.setItem(this.syncKey, String(this.syncFloor));
    } catch {
      // Storage full or refused: the last sync is only not kept.
    }
  }

  private publishStatus(): void {
    const last = (this.rawStatus as { lastSync?: number }).lastSync ?? 0;
    if (last > this.syncFloor) {
      this.syncFloor = last;
      // At most once a second (and at close and when the page hides): a page that
      // crashes loses at most that much.
      if (last - this.syncSaved >= 1000) this.saveSync();
    }
    const next = toStatus(this.rawStatus, this.lastError, this.syncFloor);
    const was = this.statusNow;
    if (
      was.state === next.state &&
      was.error === next.error &&
      was.online === next.online &&
      was.connected === next.connected &&
      was.pending === next.pending &&
      was.lastSync?.getTime() === next.lastSync?.getTime() &&
      was.hasSchema === next.hasSchema
    )
      return;
    this.statusNow = next;
    for (const run of [...this.statusRuns]) run(next);
  }

  /** @internal */
  _subscribe(lq: LiveQuery<any>): Promise<{ id: number; value: unknown }> {
    return this.engine.subscribe(lq.source);
  }

  /** @internal Records a live query's engine id; gives a result that came early. */
  _register(id: number, lq: LiveQuery<any>): unknown {
    this.lives.set(id, lq);
    const early = this.early.get(id);
    // Ids only grow and answers come in order: anything older belongs to a live query
    // that has stopped.
    for (const k of this.early.keys()) if (k <= id) this.early.delete(k);
    return early;
  }

  /** @internal */
  _unsubscribe(id: number): void {
    this.lives.delete(id);
    if (!this.closed) this.engine.unsubscribe(id);
  }
}

function toStatus(s: unknown, error: WarrenError | null, lastSync: number): Status {
  const o = s as { online: boolean; connected: boolean; pending: number; lastSync: number; hasSchema: boolean };
  const state: ConnectionState = o.connected
    ? "online"
    : !o.online
      ? "offline"
      : error === null
        ? "connecting"
        : error.name === "AuthError"
          ? "unauthorized"
          : "error";
  return {
    online: o.online,
    connected: o.connected,
    pending: o.pending,
    lastSync: Math.max(o.lastSync, lastSync) ? new Date(Math.max(o.lastSync, lastSync)) : null,
    hasSchema: o.hasSchema,
    state,
    error: o.connected ? null : error,
  };
}
