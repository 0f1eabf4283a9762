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
  "TEXT_UNAVAILABLE",
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

/** Codes the package itself gives, with no server or engine involved. */
export const CLIENT_CODES = ["NOT_CONNECTED"] as const;

export type ProgramCode = (typeof PROGRAM_CODES)[number];
export type ClientCode = (typeof CLIENT_CODES)[number];
export type StorageCode = (typeof STORAGE_CODES)[number];
export type ConnectionCode = (typeof CONNECTION_CODES)[number];
export type AuthCode = (typeof AUTH_CODES)[number];
/** Every stable error code. */
export type ErrorCode = ProgramCode | StorageCode | ConnectionCode | AuthCode | ClientCode;

/** Words for the people using an app, one per kind of failure: no rule text, no line
 * numbers, no code. `e.userMessage` gives them; an app may show its own instead. */
const USER_MESSAGES: Record<string, string> = {
  PERMISSION_DENIED: "You are not allowed to do that.",
  DOCUMENT_NOT_FOUND: "That item no longer exists.",
  DOCUMENT_EXISTS: "That item already exists.",
  UNIQUE_VIOLATION: "That value is already taken.",
  INVALID_ARGUMENT: "Some of what you entered is not valid.",
  ARGUMENT_TOO_LARGE: "That is too large to save.",
  DOCUMENT_TOO_LARGE: "That is too large to save.",
  TOO_MANY_WRITES: "That changes too much at once.",
  QUOTA_EXCEEDED: "This device is out of storage space.",
  IDENTITY_QUOTA_EXCEEDED: "Your account has reached its storage limit.",
  RATE_LIMITED: "Too many changes at once; please wait a moment.",
  NOT_CONNECTED: "Cannot reach the server. Check your connection.",
};
const AUTH_USER_MESSAGE = "Your session is not valid; please sign in again.";
const FALLBACK_USER_MESSAGE = "Something went wrong; please try again.";

/** The base class of every error Warren raises. `code` is stable; `message` is for the
 * developer (it may quote a rule and name a line); `userMessage` is for end users. */
export class WarrenError extends Error {
  readonly code: ErrorCode;
  /** For `ABORTED`: the text the function gave to `abort(...)` (otherwise undefined). */
  readonly reason?: string;
  /** The function a refused write called, and its arguments (on `rejected` events and
   * on the errors of writes made through `db.call`). */
  fn?: string;
  args?: Record<string, unknown>;
  /** Where in the schema's source the error arose (1-based), when the engine said. */
  readonly line?: number;
  readonly column?: number;
  constructor(code: ErrorCode, message: string) {
    // The engine writes `CODE at LINE:COLUMN: text` (or `CODE: text`): the code is its
    // own field, so the message says it once only, with the place at its end.
    const m = /^([A-Z_]+)(?: at (\d+):(\d+))?: ([\s\S]*)$/.exec(message);
    const own = m !== null && m[1] === code;
    const text = own ? m[4] : message;
    super(own && m[2] ? `${text} (at line ${m[2]}, column ${m[3]})` : text);
    this.code = code;
    // Set by hand: a minifier renames classes, and `new.target.name` with them.
    this.name = nameFor(code);
    if (own && m[2]) {
      this.line = Number(m[2]);
      this.column = Number(m[3]);
    }
    if (code === "ABORTED") this.reason = text;
  }

  /** A message fit for end users: no rule text, no line numbers. For `ABORTED` it is
   * the function's own `abort(...)` text, which the app's author wrote. */
  get userMessage(): string {
    if (this.reason !== undefined && this.reason !== "aborted") return this.reason;
    if (is(AUTH_CODES, this.code)) return AUTH_USER_MESSAGE;
    return USER_MESSAGES[this.code] ?? FALLBACK_USER_MESSAGE;
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

/** The server closed the connection with this code; Warren reconnects by itself. Also
 * `NOT_CONNECTED` from `open({ connectTimeout })` when no connection came up in time. */
export class ConnectionError extends WarrenError {
  declare readonly code: ConnectionCode | ClientCode;
}

/** The server refused the token. `TOKEN_EXPIRED` calls the token callback for a new one. */
export class AuthError extends WarrenError {
  declare readonly code: AuthCode;
}

/** The class name of each kind, as `e.name` gives it (the same in a minified bundle). */
function nameFor(code: string): string {
  if (code === "PERMISSION_DENIED") return "PermissionDeniedError";
  if (is(PROGRAM_CODES, code)) return "ProgramError";
  if (is(STORAGE_CODES, code)) return "StorageError";
  if (is(CONNECTION_CODES, code) || is(CLIENT_CODES, code)) return "ConnectionError";
  if (is(AUTH_CODES, code)) return "AuthError";
  return "WarrenError";
}

const is = <T extends readonly string[]>(list: T, code: string): code is T[number] =>
  (list as readonly string[]).includes(code);

/** The right subclass for `code`. Unknown codes (from a newer server) stay `WarrenError`. */
export function errorFor(code: string, message: string): WarrenError {
  if (code === "PERMISSION_DENIED") return new PermissionDeniedError(code, message);
  if (is(PROGRAM_CODES, code)) return new ProgramError(code, message);
  if (is(STORAGE_CODES, code)) return new StorageError(code, message);
  if (is(CONNECTION_CODES, code) || is(CLIENT_CODES, code)) return new ConnectionError(code, message);
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

/** An error as plain data, as it crosses from the engine's worker or the leading tab
 * to the page: its code (`STORAGE_ERROR` when it has none), its message and, for a
 * write, its sequence number. */
export interface ErrInfo {
  code: string;
  message: string;
  seq?: number;
}

/** Whatever was thrown, as an {@link ErrInfo}. */
export const errInfo = (e: unknown): ErrInfo => {
  const o = e as { code?: unknown; message?: unknown; seq?: unknown } | null;
  return {
    code: typeof o?.code === "string" ? o.code : "STORAGE_ERROR",
    message: typeof o?.message === "string" ? o.message : String(e),
    ...(typeof o?.seq === "number" ? { seq: o.seq } : {}),
  };
};
