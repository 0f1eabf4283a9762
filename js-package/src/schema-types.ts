// Types that `open<Schema>(...)` derives from a schema's generated TypeScript
// (`warren codegen ts schema.warren > schema.ts`). Types only: nothing here exists at
// run time. An app that opens without a generated `Schema` (a plain map from
// collection name to document type, or nothing) keeps the untyped API.

import type { Value } from "./query.js";

/** The shape `warren codegen ts` writes. */
export interface GeneratedSchema {
  readonly __warrenSchema: true;
  collections: Record<string, { doc: unknown; indexes: Record<string, unknown[]> }>;
  functions: Record<string, { args: Record<string, unknown>; result: unknown }>;
}

/** Whether `S` is a generated schema. */
type IsGenerated<S> = S extends { readonly __warrenSchema: true } ? true : false;

/** The document type of each collection: from a generated schema, or `S` itself. */
export type DocsOf<S> = IsGenerated<S> extends true
  ? S extends { collections: infer C }
    ? { [K in keyof C]: C[K] extends { doc: infer D } ? D : never }
    : never
  : S;

/** The indexes of collection `K` and their key types (any name, any values when the
 * schema is not generated). */
export type IndexesOf<S, K> = IsGenerated<S> extends true
  ? S extends { collections: infer C }
    ? K extends keyof C
      ? C[K] extends { indexes: infer I }
        ? I
        : never
      : never
    : never
  : Record<string, Value[]>;

/** A function's name: one the schema declares (any string when it is not generated). */
export type FunctionName<S> = IsGenerated<S> extends true
  ? S extends { functions: infer F }
    ? keyof F & string
    : never
  : string;

/** A function's arguments, by parameter name. */
export type ArgsOf<S, N> = IsGenerated<S> extends true
  ? S extends { functions: infer F }
    ? N extends keyof F
      ? F[N] extends { args: infer A }
        ? A
        : never
      : never
    : never
  : Record<string, unknown>;

/** A function's result. */
export type ResultOf<S, N> = IsGenerated<S> extends true
  ? S extends { functions: infer F }
    ? N extends keyof F
      ? F[N] extends { result: infer R }
        ? R
        : never
      : never
    : never
  : unknown;

/** The arguments of `db.call(name, ...)`: optional when the function has no required
 * parameter. */
export type CallArgs<S, N> = {} extends ArgsOf<S, N> ? [args?: ArgsOf<S, N>] : [args: ArgsOf<S, N>];

/** The values an index lookup takes: any prefix of the index's key fields. */
export type KeyPrefix<T extends unknown[]> = T extends [...infer H, unknown] ? T | KeyPrefix<H> : T;

/** `fn` for an untyped database; `never` once the schema is generated (so that only
 * the typed overload applies). */
export type Untyped<S, T> = IsGenerated<S> extends true ? never : T;
