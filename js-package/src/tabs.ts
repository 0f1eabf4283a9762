// Many tabs, one replica. Tabs of one origin that open the same database share one
// engine: the tab holding a Web Lock named after the database is the leader. It owns
// the engine (IndexedDB and the server connection); the others are followers and send
// it their queries, writes and live queries over a BroadcastChannel. Every tab sees
// every write (live queries run in the one engine), and only the leader talks to the
// server, so no commit is ever sent twice.
//
// When the leader goes (closed, crashed, or frozen by the browser), the lock passes to
// another tab, which opens the engine from IndexedDB (the outbox is there) and announces
// itself; the followers send it again whatever was not answered. Writes carry a request
// id that the engine stores with the outbox entry, so a write the old leader made
// before it went is not made twice.

import type { LeaderEngine } from "./engine.js";
import { errInfo as info, type ErrInfo } from "./errors.js";

/** What a write answers first (its `local` resolves with the final sequence number). */
export interface Applied {
  seq: number;
  result: unknown;
  local: Promise<number>;
}

/** The engine as the `Database` uses it: the real one in the leader, a proxy elsewhere.
 * Arguments go as JSON text. */
export interface EngineApi {
  query(source: string): Promise<unknown>;
  /** Replays a query ("query"), a write ("call" with its arguments as JSON text, or
   * "run") or a partition's read rule ("partition") on the local view, with the trace
   * of the rules evaluated (docs/DEBUGGING.md). Nothing is stored or sent. */
  explain?(kind: string, source: string, argsJson?: string): Promise<unknown>;
  /** What the replica holds, for the inspector (see dev.ts). */
  inspect?(): Promise<unknown>;
  call(fn: string, argsJson: string): Promise<Applied>;
  run(source: string): Promise<Applied>;
  subscribe(source: string): Promise<{ id: number; value: unknown }>;
  unsubscribe(id: number): void;
  status(): unknown;
  onEvent(f: (e: { type: string; detail: unknown }) => void): void;
  setOnline(online: boolean): void;
  /** Sends an ephemeral presence message to the others in a partition (see text.ts). */
  presence?(partition: string, data: string): void;
  flush(): Promise<void>;
  stats(): Promise<unknown>;
  hasPendingWrites(collection: string, id: string): Promise<boolean>;
  close(): Promise<void>;
}

/** How often a follower pings the leader. */
const HEARTBEAT_MS = 1000;
/** How long a follower waits for a silent leader before taking over. A leader that is
 * frozen or hung cannot answer; when it runs again it finds its lock taken and stops. */
const STEAL_AFTER_MS = 4000;

type Msg =
  | { t: "leader"; tab: string }
  | { t: "hello"; tab: string }
  | { t: "ping"; tab: string }
  | { t: "pong"; to: string }
  | { t: "req"; tab: string; to: string; id: number; m: string; a: unknown[] }
  | { t: "res"; from: string; to: string; id: number; ok?: unknown; err?: ErrInfo }
  | { t: "local"; from: string; to: string; id: number; seq?: number; err?: ErrInfo }
  | { t: "ev"; from: string; to?: string; type: string; detail: unknown };

interface Pending {
  m: string;
  a: unknown[];
  resolve: (v: unknown) => void;
  reject: (e: unknown) => void;
  /** For writes: settles once the leader says the write is durable. */
  local?: { promise: Promise<number>; resolve: (seq: number) => void; reject: (e: unknown) => void };
  seq?: number;
  answered?: boolean;
}

/** Plain data for the channel (errors lose their own properties when cloned). */
const plain = (type: string, detail: unknown): unknown =>
  type === "rejected" || type === "server-error" ? info(detail) : detail;

function deferred<T>() {
  let resolve!: (v: T) => void;
  let reject!: (e: unknown) => void;
  const promise = new Promise<T>((ok, err) => {
    resolve = ok;
    reject = err;
  });
  promise.catch(() => {});
  return { promise, resolve, reject };
}

/**
 * Routes the `Database`'s calls to the engine, here or in the leader tab. Without Web
 * Locks or BroadcastChannel (an old browser, a worker), the tab is its own leader.
 */
export class Tabs implements EngineApi {
  readonly tab = crypto.randomUUID();
  private engine: LeaderEngine | null = null;
  private channel: BroadcastChannel | null = null;
  private listener: (e: { type: string; detail: unknown }) => void = () => {};
  private next = 1;
  private pending = new Map<number, Pending>();
  /** This tab's live queries: id → source (re-subscribed at a new leader). */
  private lives = new Map<number, string>();
  /** In the leader: engine live ids ↔ (tab, that tab's live id). */
  private byEngineId = new Map<number, { tab: string; id: number }>();
  private byTabLive = new Map<string, number>();
  private statusNow: unknown;
  private release: (() => void) | null = null;
  private holding = false;
  private abort = new AbortController();
  private heartbeat: ReturnType<typeof setInterval> | undefined;
  /** When this follower last heard from a leader. */
  private leaderSeen = Date.now();
  /** When this leader last heard from a follower: events go on the channel only while
   * some tab may listen (a post costs a round trip through the browser). */
  private followerSeen = -Infinity;
  private stealing = false;
  private closed = false;
  /** The tab this one sends its requests to (itself when leading). */
  private leaderTab: string | null = null;

  constructor(
    private name: string,
    private openEngine: () => Promise<LeaderEngine>,
  ) {
    this.statusNow = {
      online: typeof navigator === "undefined" || navigator.onLine,
      connected: false,
      pending: 0,
      lastSync: 0,
      hasSchema: false,
    };
  }

  /** Becomes the leader (opening the engine) or a follower of the current one. */
  async start(): Promise<void> {
    const locks = typeof navigator !== "undefined" ? navigator.locks : undefined;
    if (!locks || typeof BroadcastChannel === "undefined") {
      await this.lead();
      return;
    }
    this.channel = new BroadcastChannel(`warren:${this.name}`);
    this.channel.onmessage = (e: MessageEvent<Msg>) => this.onMessage(e.data);
    if (await this.acquire("try")) {
      await this.lead();
    } else {
      this.follow();
    }
    this.heartbeat = setInterval(() => this.beat(), HEARTBEAT_MS);
    // A tab the browser freezes cannot serve the others: it hands over first.
    if (typeof document !== "undefined")
      document.addEventListener("freeze", () => {
        if (!this.engine) return;
        this.abdicate();
        this.follow();
      });
  }

  /** Takes the leader's lock: if free (`try`), when it frees (`wait`), or from a leader
   * that stopped answering (`steal`). Resolves whether this tab got it. */
  private acquire(mode: "try" | "wait" | "steal"): Promise<boolean> {
    const got = deferred<boolean>();
    const options: LockOptions =
      mode === "try" ? { ifAvailable: true } : mode === "steal" ? { steal: true } : { signal: this.abort.signal };
    navigator.locks
      .request(`warren:${this.name}`, options, (lock) => {
        if (!lock || this.closed) return got.resolve(false);
        this.holding = true;
        got.resolve(true);
        return new Promise<void>((release) => (this.release = release));
      })
      .then(
        () => (this.holding = false),
        () => {
          got.resolve(false);
          // Stolen by a tab that found this one unresponsive (frozen, say): stop at
          // once, then follow the new leader.
          if (this.holding) {
            this.holding = false;
            this.abdicate();
            if (!this.closed) this.follow();
          }
        },
      );
    return got.promise;
  }

  /** Follows the current leader, and waits in line to lead. */
  private follow(): void {
    this.post({ t: "hello", tab: this.tab });
    this.abort = new AbortController();
    void this.acquire("wait").then(async (got) => {
      if (!got) return;
      try {
        await this.lead();
      } catch (e) {
        this.listener({ type: "server-error", detail: info(e) });
        this.abdicate();
      }
    });
  }

  /** A follower pings the leader; one that heard nothing for a while takes over. */
  private beat(): void {
    if (this.engine || this.closed) return;
    this.post({ t: "ping", tab: this.tab });
    if (Date.now() - this.leaderSeen < STEAL_AFTER_MS || this.stealing) return;
    // One candidate at a time (a second lock), so followers do not steal in turns.
    this.stealing = true;
    void navigator.locks
      .request(`warren:${this.name}:candidate`, { ifAvailable: true }, async (candidate) => {
        if (!candidate || this.engine || Date.now() - this.leaderSeen < STEAL_AFTER_MS) return;
        this.abort.abort();
        if (await this.acquire("steal")) {
          try {
            await this.lead();
          } catch (e) {
            this.listener({ type: "server-error", detail: info(e) });
            this.abdicate();
            this.follow();
          }
        }
      })
      .finally(() => (this.stealing = false));
  }

  /** Opens the engine here and serves every tab; asks for everything unanswered again. */
  private async lead(): Promise<void> {
    const engine = await this.openEngine();
    if (this.closed) {
      void engine.close().catch(() => {});
      return;
    }
    this.engine = engine;
    this.leaderTab = this.tab;
    this.statusNow = engine.status();
    engine.onEvent((e: { type: string; detail: unknown }) => this.onEngineEvent(e.type, e.detail));
    this.post({ t: "leader", tab: this.tab });
    this.listener({ type: "status", detail: this.statusNow });
    this.resend();
  }

  /** Stops leading: closes the engine (writing what is not yet durable) and lets the
   * lock go. */
  private abdicate(): void {
    void this.engine?.close().catch(() => {});
    this.engine = null;
    this.leaderTab = null;
    this.byEngineId.clear();
    this.byTabLive.clear();
    const release = this.release;
    this.release = null;
    release?.();
  }

  /** Sends every unanswered request and every live query again (a new leader). */
  private resend(): void {
    for (const [id, p] of this.pending) this.dispatch(id, p);
    for (const [id, source] of this.lives) {
      void this.ask("subscribe", [source, id]).then(
        (r) => {
          const { value } = r as { id: number; value: unknown };
          this.listener({ type: "changed", detail: { live: id, value } });
        },
        () => {},
      );
    }
  }

  // ----- the EngineApi the Database uses -----

  query(source: string): Promise<unknown> {
    return this.ask("query", [source]);
  }

  explain(kind: string, source: string, argsJson?: string): Promise<unknown> {
    return this.ask("explain", [kind, source, argsJson]);
  }

  inspect(): Promise<unknown> {
    return this.ask("inspect", []);
  }

  call(fn: string, argsJson: string): Promise<Applied> {
    return this.write("call", [fn, argsJson, crypto.randomUUID()]);
  }

  run(source: string): Promise<Applied> {
    return this.write("run", [source, crypto.randomUUID()]);
  }

  async subscribe(source: string): Promise<{ id: number; value: unknown }> {
    const id = this.next++;
    this.lives.set(id, source);
    try {
      const r = (await this.ask("subscribe", [source, id])) as { id: number; value: unknown };
      return { id, value: r.value };
    } catch (e) {
      this.lives.delete(id);
      throw e;
    }
  }

  unsubscribe(id: number): void {
    if (this.lives.delete(id)) void this.ask("unsubscribe", [id]).catch(() => {});
  }

  status(): unknown {
    return this.statusNow;
  }

  /** Whether this tab holds the engine (and the connection) for all of them. */
  get isLeader(): boolean {
    return this.engine !== null;
  }

  onEvent(f: (e: { type: string; detail: unknown }) => void): void {
    this.listener = f;
  }

  setOnline(online: boolean): void {
    void this.ask("setOnline", [online]).catch(() => {});
  }

  presence(partition: string, data: string): void {
    void this.ask("presence", [partition, data]).catch(() => {});
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

  /** Leaves: a leader writes what is not yet durable and closes its engine (resolving
   * once that is done), then lets another tab lead. */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    clearInterval(this.heartbeat);
    this.abort.abort();
    const engine = this.engine;
    this.engine = null;
    let failed: unknown = null;
    try {
      await engine?.close();
    } catch (e) {
      failed = e;
    }
    this.abdicate();
    this.channel?.close();
    for (const p of this.pending.values()) {
      const e = { code: "STORAGE_ERROR", message: "the database is closed" };
      p.reject(e);
      p.local?.reject(e);
    }
    this.pending.clear();
    if (failed) throw failed;
  }

  // ----- requests -----

  private ask(m: string, a: unknown[]): Promise<unknown> {
    if (this.closed) return Promise.reject({ code: "STORAGE_ERROR", message: "the database is closed" });
    const id = this.next++;
    const d = deferred<unknown>();
    const p: Pending = { m, a, resolve: d.resolve, reject: d.reject };
    this.pending.set(id, p);
    this.dispatch(id, p);
    return d.promise;
  }

  private async write(m: string, a: unknown[]): Promise<Applied> {
    if (this.closed) throw { code: "STORAGE_ERROR", message: "the database is closed" };
    const id = this.next++;
    const d = deferred<unknown>();
    const p: Pending = { m, a, resolve: d.resolve, reject: d.reject, local: deferred<number>() };
    this.pending.set(id, p);
    this.dispatch(id, p);
    const { seq, result } = (await d.promise) as { seq: number; result: unknown };
    return { seq, result, local: p.local!.promise };
  }

  private dispatch(id: number, p: Pending): void {
    if (this.engine) void this.serve(this.tab, id, p.m, p.a);
    // With no leader known yet, it waits: `resend` sends it when one is.
    else if (this.leaderTab) this.post({ t: "req", tab: this.tab, to: this.leaderTab, id, m: p.m, a: p.a });
  }

  /** Leader: runs a request from `tab` (this one included) on the engine. */
  private async serve(tab: string, id: number, m: string, a: unknown[]): Promise<void> {
    const engine = this.engine;
    if (!engine) return;
    try {
      switch (m) {
        case "query":
          return this.answer(tab, id, await engine.query(a[0] as string));
        case "inspect":
          if (!engine.inspect) throw { code: "INVALID_ARGUMENT", message: "this engine cannot inspect" };
          return this.answer(tab, id, await engine.inspect());
        case "explain":
          if (!engine.explain) throw { code: "INVALID_ARGUMENT", message: "this engine cannot explain" };
          return this.answer(
            tab,
            id,
            await engine.explain(a[0] as string, a[1] as string, a[2] as string | undefined),
          );
        case "call":
        case "run": {
          const w =
            m === "call"
              ? await engine.call(a[0] as string, a[1] as string, a[2] as string)
              : await engine.run(a[0] as string, a[1] as string);
          this.answer(tab, id, { seq: w.seq, result: w.result });
          w.local.then(
            () => this.answerLocal(tab, id, w.seq),
            (e) => this.answerLocal(tab, id, undefined, info(e)),
          );
          return;
        }
        case "subscribe": {
          const key = `${tab}:${a[1]}`;
          const old = this.byTabLive.get(key);
          if (old !== undefined) engine.unsubscribe(old);
          const r = (await engine.subscribe(a[0] as string)) as { id: number; value: unknown };
          this.byEngineId.set(r.id, { tab, id: a[1] as number });
          this.byTabLive.set(key, r.id);
          return this.answer(tab, id, { id: a[1], value: r.value });
        }
        case "unsubscribe": {
          const key = `${tab}:${a[0]}`;
          const eid = this.byTabLive.get(key);
          if (eid !== undefined) {
            engine.unsubscribe(eid);
            this.byTabLive.delete(key);
            this.byEngineId.delete(eid);
          }
          return this.answer(tab, id, null);
        }
        case "setOnline":
          engine.setOnline(a[0] as boolean);
          return this.answer(tab, id, null);
        case "presence":
          engine.presence?.(a[0] as string, a[1] as string);
          return this.answer(tab, id, null);
        case "flush":
          await engine.flush();
          return this.answer(tab, id, null);
        case "stats":
          return this.answer(tab, id, await engine.stats());
        case "hasPendingWrites":
          return this.answer(tab, id, await engine.hasPendingWrites(a[0] as string, a[1] as string));
        default:
          return this.answer(tab, id, undefined, { code: "INVALID_ARGUMENT", message: `unknown request ${m}` });
      }
    } catch (e) {
      this.answer(tab, id, undefined, info(e));
    }
  }

  private answer(tab: string, id: number, ok: unknown, err?: ErrInfo): void {
    const msg = { t: "res", from: this.tab, to: tab, id, ok, err } as const;
    if (tab === this.tab) this.settle(msg);
    else this.post(msg);
  }

  private answerLocal(tab: string, id: number, seq?: number, err?: ErrInfo): void {
    const msg = { t: "local", from: this.tab, to: tab, id, seq, err } as const;
    if (tab === this.tab) this.settleLocal(msg);
    else this.post(msg);
  }

  /** An answer to one of this tab's requests. */
  private settle(msg: Extract<Msg, { t: "res" }>): void {
    const p = this.pending.get(msg.id);
    if (!p) return;
    if (msg.err) {
      this.pending.delete(msg.id);
      p.reject(msg.err);
      p.local?.reject(msg.err);
      return;
    }
    p.resolve(msg.ok);
    if (!p.local) this.pending.delete(msg.id);
    // A write stays pending until it is durable: if the leader goes before that, the
    // next one is asked again (the request id keeps it from being made twice).
  }

  private settleLocal(msg: Extract<Msg, { t: "local" }>): void {
    const p = this.pending.get(msg.id);
    if (!p?.local) return;
    this.pending.delete(msg.id);
    if (msg.err) p.local.reject(msg.err);
    else p.local.resolve(msg.seq!);
  }

  // ----- events and messages -----

  /** Leader: an event from the engine, for this tab, another tab, or all of them. */
  private onEngineEvent(type: string, detail: unknown): void {
    if (type === "changed") {
      const { live, value } = detail as { live: number; value: unknown };
      const to = this.byEngineId.get(live);
      if (!to) return;
      const ev = { type, detail: { live: to.id, value } };
      if (to.tab === this.tab) this.listener(ev);
      else this.post({ t: "ev", from: this.tab, to: to.tab, ...ev });
      return;
    }
    if (type === "status") this.statusNow = detail;
    this.listener({ type, detail });
    if (Date.now() - this.followerSeen < 3 * HEARTBEAT_MS)
      this.post({ t: "ev", from: this.tab, type, detail: plain(type, detail) });
  }

  private onMessage(msg: Msg): void {
    if (this.closed) return;
    if (msg.t === "hello" || msg.t === "ping" || msg.t === "req") this.followerSeen = Date.now();
    if (msg.t === "leader" || msg.t === "pong" || msg.t === "res" || msg.t === "local" || msg.t === "ev")
      this.leaderSeen = Date.now();
    switch (msg.t) {
      case "ping":
        if (this.engine) this.post({ t: "pong", to: msg.tab });
        break;
      case "pong":
        break;
      case "req":
        if (this.engine && msg.to === this.tab) void this.serve(msg.tab, msg.id, msg.m, msg.a);
        break;
      case "hello":
        if (this.engine)
          this.post({ t: "ev", from: this.tab, to: msg.tab, type: "status", detail: this.engine.status() });
        break;
      case "leader":
        if (msg.tab !== this.tab && !this.engine) this.newLeader(msg.tab);
        break;
      case "res":
        // Answers count only from the current leader: one from a leader that has
        // since been replaced is stale (the new one was asked again).
        if (msg.to === this.tab && msg.from === this.leaderTab) this.settle(msg);
        break;
      case "local":
        if (msg.to === this.tab && msg.from === this.leaderTab) this.settleLocal(msg);
        break;
      case "ev":
        if (this.engine || (msg.to !== undefined && msg.to !== this.tab)) break;
        if (msg.to === this.tab && msg.type === "status" && msg.from !== this.leaderTab) {
          // The answer to our hello: this is the leader.
          this.newLeader(msg.from);
        } else if (msg.from !== this.leaderTab) {
          break;
        }
        if (msg.type === "status") this.statusNow = msg.detail;
        this.listener({ type: msg.type, detail: msg.detail });
        break;
    }
  }

  /** A follower learns who leads: everything unanswered goes there. */
  private newLeader(tab: string): void {
    if (this.leaderTab === tab) return;
    this.leaderTab = tab;
    this.post({ t: "hello", tab: this.tab });
    this.resend();
  }

  private post(msg: Msg): void {
    this.channel?.postMessage(msg);
  }
}
