// Collaborative text: a Yjs `Y.Doc` kept in step with a text field of the replica
// (`field notes: text` in the schema), so that editors binding to Yjs
// (y-codemirror.next, y-quill...) work unchanged.
//
// The app passes its own `yjs` module (`db.text(c, id, f, { Y })`): the package does
// not depend on `yjs` (apps without text never load it), and the binding and the
// editor share one copy of Yjs (two copies break Yjs's own type checks).
//
// - The replica's side: a live query of `textState(field)` gives the field's whole
//   state as one Yjs update after every change, local or from the server; it is
//   merged into the Y.Doc (merging what the doc already has changes nothing).
// - The editor's side: the Y.Doc's own updates, gathered for a few milliseconds,
//   become one write each (`editText`), applied to the local replica at once, kept
//   in the outbox offline, and checked by the `update` rules on both sides.
// - A refused edit is taken back: Yjs cannot remove an update from a document, and
//   later edits would build on it, so the binding starts a new Y.Doc from the
//   replica's text and tells its `onReset` listeners to bind their editor to it.

import type { Database } from "./index.js";
import { wrap, WarrenError } from "./errors.js";

/** What the binding needs of the `yjs` module (pass the module itself:
 * `import * as Y from "yjs"`). */
export interface Yjs<D> {
  Doc: new () => D;
  applyUpdate(doc: D, update: Uint8Array, origin?: any): void;
  mergeUpdates(updates: Uint8Array[]): Uint8Array;
}

/** A Y.Doc as the binding uses it. */
interface DocLike {
  on(event: "update", f: (update: Uint8Array, origin: unknown) => void): void;
  getText(name?: string): unknown;
  getXmlFragment(name?: string): unknown;
  destroy(): void;
}

/** Options of `db.text`. */
export interface TextOptions<D> {
  /** The `yjs` module: `import * as Y from "yjs"`. */
  Y: Yjs<D>;
  /** How long local edits gather into one commit, in ms (default 40): typing sends
   * a commit per pause rather than per key. */
  batch?: number;
}

/** The origin of the updates the binding merges from the replica. */
const REPLICA = Symbol("warren replica");

const NAME = /^[A-Za-z_][A-Za-z0-9_]*$/;

/** How often a binding repeats its presence, and when others' presence expires. */
const PRESENCE_EVERY_MS = 5000;
const PRESENCE_EXPIRES_MS = 15000;

/** A text field as a Y.Doc: bind an editor to `text` (the doc's `Y.Text` named
 * `"text"`), and bind it again to the new one on `onReset`. */
export class TextBinding<D extends { getText(name?: string): unknown } = any> {
  /** The Yjs document; replaced after a refused edit (see `onReset`). */
  doc: D;
  /** The `Y.Text` plain-text editors bind to (CodeMirror, Quill, a textarea):
   * `doc.getText("text")`. */
  text: ReturnType<D["getText"]>;
  /** The `Y.XmlFragment` rich-text editors bind to (ProseMirror, TipTap):
   * `doc.getXmlFragment("xml")`. A field may hold both; programs read the text,
   * then the fragment's text (docs/LANGUAGE.md, "Collaborative text"). */
  get fragment(): D extends { getXmlFragment(name?: string): infer F } ? F : unknown {
    return (this.doc as unknown as DocLike).getXmlFragment("xml") as any;
  }
  /** The last refused edit's error, if any. */
  error: WarrenError | undefined = undefined;
  /** Resolves once the replica's text is in the doc. */
  readonly ready: Promise<void>;

  private readonly source: string;
  private readonly batch: number;
  private queue: Uint8Array[] = [];
  private timer: ReturnType<typeof setTimeout> | null = null;
  /** Bumped by each reset: refusals of edits sent before it are already handled. */
  private generation = 0;
  private resets = new Set<(binding: TextBinding<D>) => void>();
  private readonly Y: Yjs<D>;
  private stopLive: () => void;
  private closed = false;
  /** Other editors' presence here, by their `sub` (see `setPresence`). */
  readonly others = new Map<string, unknown>();
  private seen = new Map<string, number>();
  private presenceRuns = new Set<(others: Map<string, unknown>) => void>();
  private partition: string | null = null;
  private mine: unknown = null;
  private stopPresence: () => void;
  private beat: ReturnType<typeof setInterval>;

  constructor(
    private readonly db: Database<any>,
    readonly collection: string,
    readonly id: string,
    readonly field: string,
    options: TextOptions<D>,
  ) {
    this.Y = options.Y;
    if (!NAME.test(collection) || !NAME.test(field)) {
      throw new TypeError(`db.text: ${collection}.${field} is not a collection and field name`);
    }
    this.batch = options.batch ?? 40;
    this.source = `${collection}.byId(${JSON.stringify(id)})?.textState(${JSON.stringify(field)})`;
    [this.doc, this.text] = this.fresh();
    const live = db.live<Bytes | null>(this.source);
    let first: () => void = () => {};
    this.ready = new Promise((resolve) => (first = resolve));
    this.stopLive = live.subscribe((state) => {
      if (state) this.Y.applyUpdate(this.doc, fromBase64(state.$bytes), REPLICA);
      if (state !== undefined) first();
    });
    // Presence: to and from the others who hold the document's partition.
    this.stopPresence = db.on("presence", (m) => this.heard(m));
    this.beat = setInterval(() => {
      this.sendPresence();
      this.expire();
    }, PRESENCE_EVERY_MS);
    void db
      .query<string>(`partitionOf(${collection}.byId(${JSON.stringify(id)}) ?? abort("none"))`)
      .then(
        (p) => {
          this.partition = p;
          this.sendPresence();
        },
        () => {},
      );
  }

  /** Tells the others editing this text where you are: any JSON value (a cursor as
   * Yjs relative positions, a name, a colour), or `null` to leave. Sent now, again
   * every few seconds while it stands, never while offline; at most 1 KiB. */
  setPresence(state: unknown): void {
    this.mine = state;
    this.sendPresence();
  }

  /** Calls `f` with `others` now and whenever another editor's presence changes (it
   * goes after 15 s without news); returns a function that stops. */
  onPresence(f: (others: Map<string, unknown>) => void): () => void {
    this.presenceRuns.add(f);
    f(this.others);
    return () => this.presenceRuns.delete(f);
  }

  private sendPresence(): void {
    if (this.partition === null || this.closed || (this.mine === null && !this.leaving)) return;
    const msg = JSON.stringify({ c: this.collection, id: this.id, f: this.field, s: this.mine });
    this.db.presence(this.partition, msg);
  }

  private leaving = false;

  private heard(m: { partition: string; from: string; data: string }): void {
    let msg: { c?: unknown; id?: unknown; f?: unknown; s?: unknown };
    try {
      msg = JSON.parse(m.data);
    } catch {
      return;
    }
    if (msg.c !== this.collection || msg.id !== this.id || msg.f !== this.field) return;
    if (msg.s === null || msg.s === undefined) {
      this.others.delete(m.from);
      this.seen.delete(m.from);
    } else {
      this.others.set(m.from, msg.s);
      this.seen.set(m.from, Date.now());
    }
    this.presenceChanged();
  }

  private expire(): void {
    let changed = false;
    for (const [who, at] of this.seen) {
      if (Date.now() - at > PRESENCE_EXPIRES_MS) {
        this.seen.delete(who);
        this.others.delete(who);
        changed = true;
      }
    }
    if (changed) this.presenceChanged();
  }

  private presenceChanged(): void {
    for (const f of [...this.presenceRuns]) f(this.others);
  }

  /** Calls `f` with the binding each time it starts a new doc after a refused edit;
   * returns a function that stops. */
  onReset(f: (binding: TextBinding<D>) => void): () => void {
    this.resets.add(f);
    return () => this.resets.delete(f);
  }

  /** Sends what is gathered now (an app may call it before going away); resolves
   * once it is durable in IndexedDB (or refused). */
  flush(): Promise<void> {
    if (this.timer !== null) clearTimeout(this.timer);
    this.timer = null;
    if (this.queue.length === 0) return Promise.resolve();
    const update = this.queue.length === 1 ? this.queue[0] : this.Y.mergeUpdates(this.queue);
    this.queue = [];
    const generation = this.generation;
    const w = this.db.transact(
      `${this.collection}.byId(${JSON.stringify(this.id)}).editText(${JSON.stringify(this.field)}, "${toBase64(update)}")`,
    );
    const refused = (e: unknown) => {
      if (generation === this.generation && !this.closed) void this.reset(wrap(e));
    };
    w.result.catch(refused);
    w.confirmed.catch(refused);
    return w.local.then(
      () => {},
      () => {},
    );
  }

  /** Stops following the replica; sends what is gathered first. */
  close(): void {
    void this.flush();
    this.leaving = true;
    this.mine = null;
    this.sendPresence();
    this.closed = true;
    clearInterval(this.beat);
    this.stopPresence();
    this.stopLive();
    (this.doc as unknown as DocLike).destroy();
  }

  private fresh(): [D, ReturnType<D["getText"]>] {
    const doc = new this.Y.Doc();
    (doc as unknown as DocLike).on("update", (update, origin) => {
      if (origin === REPLICA || doc !== this.doc || this.closed) return;
      this.queue.push(update);
      this.timer ??= setTimeout(() => void this.flush(), this.batch);
    });
    return [doc, doc.getText("text") as ReturnType<D["getText"]>];
  }

  private async reset(error: WarrenError): Promise<void> {
    this.error = error;
    this.generation++;
    if (this.timer !== null) clearTimeout(this.timer);
    this.timer = null;
    this.queue = [];
    const old = this.doc;
    [this.doc, this.text] = this.fresh();
    const state = await this.db.query<Bytes | null>(this.source).catch(() => null);
    if (state) this.Y.applyUpdate(this.doc, fromBase64(state.$bytes), REPLICA);
    (old as unknown as DocLike).destroy();
    for (const f of [...this.resets]) f(this);
  }
}

/** Bytes as the engine gives them in JSON. */
interface Bytes {
  $bytes: string;
}

function toBase64(bytes: Uint8Array): string {
  let s = "";
  for (let i = 0; i < bytes.length; i += 0x8000) {
    s += String.fromCharCode(...bytes.subarray(i, i + 0x8000));
  }
  return btoa(s);
}

function fromBase64(b64: string): Uint8Array {
  const s = atob(b64);
  const out = new Uint8Array(s.length);
  for (let i = 0; i < s.length; i++) out[i] = s.charCodeAt(i);
  return out;
}
