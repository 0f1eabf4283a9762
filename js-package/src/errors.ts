// Errors with stable codes. Every code here is one the engine or the server uses (a
// test in the repository checks that the lists match), so an app can branch on
// `e.code` whether the browser refused a write at once or the server refused it later.

/** Codes of a Warren program (a query, a transaction, a rule, a schema function). */
export const PROGRAM_CODES = [
  "PARSE_ERROR",
  "SCHEMA_ERROR",
  "ABORTED",
  "PERMISSION_DENIED",
  "FUEL_EXHAUSTED",
  "DEPTH_EXCEEDED",
  "ARGUMENT_TOO_LARGE",
  "DOCUMENT_TOO_LARGE",
  "RESULT_TOO_LARGE",
  "TOO_MANY_WRITES",
  "TYPE_ERROR",
  "UNKNOWN_NAME",
  "INVALID_ARGUMENT",
  "ARITHMETIC_ERROR",
  "DOCUMENT_EXISTS",
  "DOCUMENT_NOT_FOUND",
  "INVALID_ID",
  "UNIQUE_VIOLATION",
  "PARTITION_CHANGE",
  "READ_ONLY",
  "MEMORY_EXHAUSTED",
  "HIDDEN_WORK_EXHAUSTED",
  "INTERNAL_ERROR",
  "IDENTITY_QUOTA_EXCEEDED",
  "INVALID_TEXT_UPDATE",
  "TEXT_UPDATE_OUT_OF_ORDER",
  "VALIDATION_FAILED",
] as const;

/** Codes of local storage (IndexedDB). */
export const STORAGE_CODES = ["CORRUPT", "STORAGE_ERROR", "QUOTA_EXCEEDED"] as const;

/** Codes the server closes a connection with (the client reconnects by itself). */
export const CONNECTION_CODES = [
  "BAD_FRAME",
  "UNSUPPORTED_PROTOCOL",
  "UNEXPECTED_FRAME",
  "FRAME_TOO_LARGE",
  "TOO_MANY_COMMITS",
  "BAD_CLIENT_ID",
  "RATE_LIMITED",
  "TOO_MANY_CONNECTIONS",
  "TOO_SLOW",
  "SHUTTING_DOWN",
  "INTERNAL",
  "SEQUENCE_GAP",
  "SCHEMA_CHANGED",
  "REGION_UNAVAILABLE",
  "REGION_DIVERGED",
] as const;

/** Codes of a refused token. */
export const AUTH_CODES = [
  "TOKEN_MISSING",
  "TOKEN_MALFORMED",
  "TOKEN_EXPIRED",
  "TOKEN_NOT_YET_VALID",
  "TOKEN_BAD_SIGNATURE",
  "TOKEN_WRONG_ISSUER",
  "TOKEN_WRONG_AUDIENCE",
  "TOKEN_ALGORITHM",
  "TOKEN_UNKNOWN_KEY",
  "AUTH_CONFIG",
] as const;

export type ProgramCode = (typeof PROGRAM_CODES)[number];
export type StorageCode = (typeof STORAGE_CODES)[number];
export type ConnectionCode = (typeof CONNECTION_CODES)[number];
export type AuthCode = (typeof AUTH_CODES)[number];
/** Every stable error code. */
export type ErrorCode = ProgramCode | StorageCode | ConnectionCode | AuthCode;

/** The base class of every error Warren raises; `code` is stable, `message` is for people. */
export class WarrenError extends Error {
  readonly code: ErrorCode;
  constructor(code: ErrorCode, message: string) {
    super(message);
    this.code = code;
    this.name = new.target.name;
  }
}

/** A Warren program failed: a query or a write with a mistake in it, a function that
 * called `abort`, a limit hit, a document that exists or does not. */
export class ProgramError extends WarrenError {
  declare readonly code: ProgramCode;
}

/** A rule refused a write (`PERMISSION_DENIED`): in the browser at once, or on the
 * server when the rules or the data changed meanwhile. */
export class PermissionDeniedError extends ProgramError {
  declare readonly code: "PERMISSION_DENIED";
}

/** IndexedDB failed or is full (`QUOTA_EXCEEDED`); the write that hit it was taken back. */
export class StorageError extends WarrenError {
  declare readonly code: StorageCode;
}

/** The server closed the connection with this code; Warren reconnects by itself. */
export class ConnectionError extends WarrenError {
  declare readonly code: ConnectionCode;
}

/** The server refused the token. `TOKEN_EXPIRED` calls the token callback for a new one. */
export class AuthError extends WarrenError {
  declare readonly code: AuthCode;
}

const is = <T extends readonly string[]>(list: T, code: string): code is T[number] =>
  (list as readonly string[]).includes(code);

/** The right subclass for `code`. Unknown codes (from a newer server) stay `WarrenError`. */
export function errorFor(code: string, message: string): WarrenError {
  if (code === "PERMISSION_DENIED") return new PermissionDeniedError(code, message);
  if (is(PROGRAM_CODES, code)) return new ProgramError(code, message);
  if (is(STORAGE_CODES, code)) return new StorageError(code, message);
  if (is(CONNECTION_CODES, code)) return new ConnectionError(code, message);
  if (is(AUTH_CODES, code)) return new AuthError(code, message);
  return new WarrenError(code as ErrorCode, message);
}

/** Turns whatever the engine threw (an `Error` with a `code`) into a `WarrenError`. */
export function wrap(e: unknown): WarrenError {
  if (e instanceof WarrenError) return e;
  const err = e as { code?: unknown; message?: unknown } | null;
  const code = typeof err?.code === "string" ? err.code : "STORAGE_ERROR";
  const message = typeof err?.message === "string" ? err.message : String(e);
  const w = errorFor(code, message);
  const seq = (e as { seq?: unknown } | null)?.seq;
  if (typeof seq === "number") (w as { seq?: number }).seq = seq;
  return w;
}
