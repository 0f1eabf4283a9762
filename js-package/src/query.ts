// A small typed query builder. It writes Warren language source (the same text you
// could write by hand), so everything it builds runs through the engine's parser and
// rules like any other query. Values become literals through `literal`, which escapes
// them, so user input can never change a query's meaning.

import type { DocsOf, IndexesOf, KeyPrefix } from "./schema-types.js";

/** A value Warren can store: JSON without `undefined`, NaN or infinities. */
export type Value = null | boolean | number | string | Value[] | { [key: string]: Value };

/** A document as a query gives it: its fields plus its `id`. */
export type Doc<T> = T & { id: string };

/** Turns a JavaScript value into Warren source text for it. */
export function literal(v: unknown): string {
  if (v === null || v === undefined) return "null";
  switch (typeof v) {
    case "boolean":
      return v ? "true" : "false";
    case "number":
      if (!Number.isFinite(v)) throw new TypeError(`Warren has no literal for ${v}`);
      // A safe integer is an int; anything else a float (`toExponential` keeps a large
      // integral value from being read as an int that overflows).
      if (Number.isInteger(v) && !Number.isSafeInteger(v)) return v.toExponential();
      return String(v);
    case "string":
      return quote(v);
    case "object": {
      if (Array.isArray(v)) return `[${v.map(literal).join(", ")}]`;
      if (v instanceof Date) return String(v.getTime());
      const fields = Object.entries(v as Record<string, unknown>)
        .filter(([, x]) => x !== undefined)
        .map(([k, x]) => `${quote(k)}: ${literal(x)}`);
      return `{${fields.join(", ")}}`;
    }
    default:
      throw new TypeError(`Warren has no literal for a ${typeof v}`);
  }
}

function quote(s: string): string {
  let out = '"';
  for (const ch of s) {
    const c = ch.codePointAt(0)!;
    if (ch === '"') out += '\\"';
    else if (ch === "\\") out += "\\\\";
    else if (ch === "\n") out += "\\n";
    else if (ch === "\r") out += "\\r";
    else if (ch === "\t") out += "\\t";
    else if (c < 0x20 || c === 0x7f || (c >= 0x2028 && c <= 0x2029))
      out += `\\u${c.toString(16).padStart(4, "0")}`;
    else out += ch;
  }
  return out + '"';
}

/** A field name: an identifier, or bracketed and quoted. */
function field(name: string): string {
  return /^[A-Za-z_$][A-Za-z0-9_$]*$/.test(name) ? `.${name}` : `[${quote(name)}]`;
}

/** Something that can be turned into Warren source: a builder query or plain text. */
export interface Query<R> {
  /** The Warren source of the query. */
  readonly source: string;
  /** Only for typing: the query's result type. */
  readonly __result?: R;
}

export type Comparison = "==" | "!=" | "<" | "<=" | ">" | ">=";

/** Bounds for `range` on the first index field after the fixed ones. */
export interface Bounds {
  gt?: Value;
  gte?: Value;
  lt?: Value;
  lte?: Value;
}

/** A lazy set of documents: a collection or index with steps after it. */
export class SetQuery<T> implements Query<Doc<T>[]> {
  /** Only for typing: the query's result type. */
  declare readonly __result?: Doc<T>[];
  constructor(readonly source: string) {}

  /** Keeps the documents whose `name` compares to `value`; or, given raw Warren
   * source of a lambda over `x` (`"x => x.done && x.size > 2"`), those it is true for. */
  where<K extends keyof T & string>(name: K, op: Comparison, value: T[K]): SetQuery<T>;
  where(lambda: string): SetQuery<T>;
  where(a: string, op?: Comparison, value?: unknown): SetQuery<T> {
    if (op === undefined) return new SetQuery(`${this.source}.where(${a})`);
    if (!["==", "!=", "<", "<=", ">", ">="].includes(op))
      throw new TypeError(`unknown comparison ${op}`);
    return new SetQuery(`${this.source}.where(x => x${field(a)} ${op} ${literal(value)})`);
  }

  /** Sorts by a field (ascending by default). On an index, sorting by its next field
   * walks the index instead of reading everything. */
  order<K extends keyof Doc<T> & string>(name: K, dir: "asc" | "desc" = "asc"): SetQuery<T> {
    const key = dir === "desc" ? `x => desc(x${field(name)})` : `x => x${field(name)}`;
    return new SetQuery(`${this.source}.order(${key})`);
  }

  /** Bounds the first index field after the fixed ones (straight after an index only). */
  range(bounds: Bounds): SetQuery<T> {
    return new SetQuery(`${this.source}.range(${literal(bounds)})`);
  }

  /** The opposite order (before other steps only). */
  reverse(): SetQuery<T> {
    return new SetQuery(`${this.source}.reverse()`);
  }

  take(n: number): SetQuery<T> {
    return new SetQuery(`${this.source}.take(${literal(n)})`);
  }

  skip(n: number): SetQuery<T> {
    return new SetQuery(`${this.source}.skip(${literal(n)})`);
  }

  /** The number of documents. */
  count(): Query<number> {
    return { source: `${this.source}.count()` };
  }

  /** The first document, or `null`. */
  first(): Query<Doc<T> | null> {
    return { source: `${this.source}.first()` };
  }

  /** Just these fields of each document (and always `id`). */
  pick<K extends keyof T & string>(...names: K[]): Query<Array<Pick<T, K> & { id: string }>> {
    const fields = ["id", ...names.filter((n) => n !== "id")]
      .map((n) => `${quote(n)}: x${field(n)}`)
      .join(", ");
    return { source: `${this.source}.map(x => ({${fields}}))` };
  }
}

/** A collection of the schema; `I` maps its index names to their key types (a
 * generated schema gives them: `warren codegen ts`). */
export class Collection<T, I = Record<string, Value[]>> {
  constructor(readonly name: string) {
    if (!/^[A-Za-z_$][A-Za-z0-9_$]*$/.test(name))
      throw new TypeError(`not a collection name: ${JSON.stringify(name)}`);
  }

  /** The document with this id, or `null` (also when you may not read it). */
  byId(id: string): Query<Doc<T> | null> {
    return { source: `${this.name}.byId(${literal(id)})` };
  }

  /** Every document you may read, in id order. */
  all(): SetQuery<T> {
    return new SetQuery(`${this.name}.all()`);
  }

  /** The documents of index `name` whose first fields equal `values`, in index order. */
  index<N extends keyof I & string>(
    name: N,
    ...values: I[N] extends unknown[] ? KeyPrefix<I[N]> : Value[]
  ): SetQuery<T> {
    if (!/^[A-Za-z_$][A-Za-z0-9_$]*$/.test(name))
      throw new TypeError(`not an index name: ${JSON.stringify(name)}`);
    return new SetQuery(`${this.name}.${name}(${(values as Value[]).map(literal).join(", ")})`);
  }
}

/** The collections of a schema, typed by a generated schema (`warren codegen ts`) or by
 * a map from collection name to document type: `q.Todo.index("byOwner", "ann")`. */
export type Collections<S> = {
  readonly [K in keyof DocsOf<S> & string]: Collection<DocsOf<S>[K], IndexesOf<S, K>>;
};

/** A proxy giving a `Collection` for any name. */
export function collections<S>(): Collections<S> {
  const cache = new Map<string, Collection<unknown>>();
  return new Proxy({} as Collections<S>, {
    get(_, name) {
      if (typeof name !== "string") return undefined;
      let c = cache.get(name);
      if (!c) cache.set(name, (c = new Collection(name)));
      return c;
    },
  });
}

/** The source text of a query given as a builder or as text. */
export function sourceOf<R>(q: Query<R> | string): string {
  return typeof q === "string" ? q : q.source;
}
