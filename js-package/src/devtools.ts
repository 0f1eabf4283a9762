// `warren/devtools`: an inspector an app mounts in development. It shows what this
// replica holds (partitions with their cursors, the outbox, live queries), the
// connection, the writes refused lately with the explain trace of each, and, given the
// server's admin token, the server's side (open connections, the applied log position
// and the region's digest). It uses the engine's `db.inspect` and `db.explain`
// (docs/DEBUGGING.md).
//
//   import { mountDevtools } from "warren/devtools";
//   if (import.meta.env.DEV) mountDevtools(db);

import type { Database, Inspection, Status } from "./index.js";

/** What `mountDevtools` takes. */
export interface DevtoolsOptions {
  /** Where to mount the panel (default: a fixed panel at the bottom right of the page). */
  target?: HTMLElement;
  /** The server's operator endpoint: `GET {url}/v1/admin/state` with this admin token
   * (`url` defaults to the page's origin). Never give an admin token to a production page. */
  server?: { url?: string; adminToken: string };
  /** How often the panel refreshes, in milliseconds (default 1000). */
  interval?: number;
  /** Refused writes kept (default 20). */
  keep?: number;
}

/** A write refused (by this replica or by the server), with its trace. */
export interface Rejection {
  at: Date;
  call: string;
  args: unknown;
  code: string;
  message: string;
  /** The explain trace of the same call, replayed on the local data when the refusal
   * was reported (docs/DEBUGGING.md); `null` if it could not be made. */
  trace: unknown;
}

/** A mounted inspector. */
export interface Devtools {
  readonly element: HTMLElement;
  readonly rejections: readonly Rejection[];
  /** Reads everything again now. */
  refresh(): Promise<void>;
  /** Removes the panel and stops watching (the database's `call` is given back). */
  unmount(): void;
}

const STYLE = `
:host { all: initial; }
.panel { font: 12px/1.4 ui-monospace, Menlo, Consolas, monospace; color: #1d2330; background: #fbfbfd;
  border: 1px solid #c9ccd6; border-radius: 6px; box-shadow: 0 4px 16px rgba(0,0,0,.15);
  max-height: 70vh; overflow: auto; width: 520px; }
.fixed { position: fixed; right: 12px; bottom: 12px; z-index: 2147483647; }
header { display: flex; justify-content: space-between; align-items: center; padding: 6px 10px;
  background: #24324f; color: #fff; border-radius: 6px 6px 0 0; font-weight: 600; }
header button { all: unset; cursor: pointer; padding: 0 6px; }
section { padding: 6px 10px; border-top: 1px solid #e3e5ec; }
h3 { margin: 0 0 4px; font-size: 11px; text-transform: uppercase; letter-spacing: .05em; color: #56607a; }
table { border-collapse: collapse; width: 100%; }
td { padding: 1px 6px 1px 0; vertical-align: top; word-break: break-all; }
td:first-child { white-space: nowrap; word-break: normal; }
.ok { color: #16794c; } .bad { color: #b4232a; } .dim { color: #8a90a2; }
.rule { margin-left: 12px; } .read { margin-left: 28px; color: #56607a; }
`;

/** Mounts the inspector for `db`. */
export function mountDevtools(db: Database, options: DevtoolsOptions = {}): Devtools {
  const host = document.createElement("div");
  host.setAttribute("data-warren-devtools", "");
  const root = host.attachShadow({ mode: "open" });
  const style = document.createElement("style");
  style.textContent = STYLE;
  const panel = document.createElement("div");
  panel.className = options.target ? "panel" : "panel fixed";
  root.append(style, panel);
  (options.target ?? document.body).append(host);

  const keep = options.keep ?? 20;
  const rejections: Rejection[] = [];
  let collapsed = false;
  let status: Status = db.status.current;
  let inspection: Inspection | { error: string } = { error: "not read yet" };
  let server: unknown = null;

  // Refused writes: the database's `call` is wrapped while the panel is mounted.
  const call = db.call;
  const record = (fn: string, args: unknown, e: unknown) => {
    const err = e as { code?: string; message?: string };
    const r: Rejection = {
      at: new Date(), call: fn, args, code: err?.code ?? "UNKNOWN", message: err?.message ?? String(e), trace: null,
    };
    rejections.unshift(r);
    rejections.length = Math.min(rejections.length, keep);
    db.explain({ call: fn, args }).then(
      (t) => { r.trace = t; render(); },
      () => render(),
    );
  };
  db.call = function (this: Database, fn: string, args: Record<string, unknown> = {}) {
    const w = call.call(db, fn, args) as ReturnType<Database["call"]>;
    w.result.catch((e: unknown) => record(fn, args, e));
    w.confirmed.catch((e: unknown) => {
      // A refusal by this replica was recorded already (`result` rejected).
      w.result.then(() => record(fn, args, e), () => {});
    });
    return w as never;
  } as Database["call"];


  async function refresh(): Promise<void> {
    try {
      inspection = await db.inspect();
    } catch (e) {
      inspection = { error: (e as Error).message };
    }
    if (options.server) {
      try {
        const url = options.server.url ?? location.origin;
        const r = await fetch(`${url}/v1/admin/state`, {
          headers: { authorization: `Bearer ${options.server.adminToken}` },
        });
        server = r.ok ? await r.json() : { error: `${r.status} ${await r.text()}` };
      } catch (e) {
        server = { error: String(e) };
      }
    }
    render();
  }

  const esc = (s: unknown) =>
    String(s).replace(/[&<>"]/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;" })[c]!);
  const json = (v: unknown) => esc(JSON.stringify(v));

  function traceHtml(t: unknown): string {
    const tr = t as {
      decisions?: {
        action: string; collection: string; partition: string; id?: string; allowed: boolean;
        rules: { line: number; column: number; text: string; outcome: string; code?: string;
          reads: { collection: string; id?: string; visible: boolean; found?: boolean; value?: unknown }[] }[];
      }[];
      invisible?: Record<string, number>;
    } | null;
    if (!tr?.decisions) return `<div class="dim">no trace</div>`;
    let h = "";
    for (const d of tr.decisions) {
      h += `<div class="${d.allowed ? "ok" : "bad"}">${d.allowed ? "ALLOW" : "DENY"} ${esc(d.action)} ${esc(d.collection)}` +
        `${d.id ? ` ${esc(d.id)}` : ""} in ${esc(d.partition)}${d.rules.length ? "" : ": no rule for this action"}</div>`;
      for (const r of d.rules) {
        h += `<div class="rule">${r.line}:${r.column} ${esc(r.text)} → <b>${esc(r.outcome)}${r.code ? ` ${esc(r.code)}` : ""}</b></div>`;
        for (const rd of r.reads)
          h += `<div class="read">read ${esc(rd.collection)}/${esc(rd.id ?? "?")}: ${
            !rd.visible ? "not visible to this identity" : rd.found ? json(rd.value) : "not found"}</div>`;
      }
    }
    for (const [c, n] of Object.entries(tr.invisible ?? {}))
      h += `<div class="dim">${n} document(s) of ${esc(c)} hidden by its read rule</div>`;
    return h;
  }

  function render(): void {
    const ins = inspection as Inspection & { error?: string };
    const rows = (xs: string[]) => (xs.length ? `<table>${xs.join("")}</table>` : `<div class="dim">none</div>`);
    const state = status.connected ? "waiting for the server" : "queued (offline)";
    panel.innerHTML =
      `<header><span>Warren devtools</span><button data-toggle>${collapsed ? "▲" : "▼"}</button></header>` +
      (collapsed ? "" :
        `<section data-section="connection"><h3>Connection</h3>` +
        `<span class="${status.connected ? "ok" : "bad"}">${status.connected ? "connected" : "not connected"}</span>` +
        ` · ${status.online ? "online" : "offline"} · ${status.pending} pending · last sync ` +
        `${status.lastSync ? esc(status.lastSync.toLocaleTimeString()) : "never"}</section>` +
        (ins.error ? `<section><span class="bad">${esc(ins.error)}</span></section>` :
          `<section data-section="partitions"><h3>Partitions held (${ins.partitions.length})</h3>` +
          rows(ins.partitions.map((p) => `<tr><td>${esc(p.partition)}</td><td>cursor ${p.cursor}</td></tr>`)) +
          `</section><section data-section="outbox"><h3>Outbox (${ins.outbox.length})</h3>` +
          rows(ins.outbox.map((w) => `<tr><td>#${w.seq}</td><td>${"call" in w ? `${esc(w.call)}(${json(w.args)})` : esc(w.run)}</td><td>${state}</td></tr>`)) +
          `</section><section data-section="live"><h3>Live queries (${ins.live.length})</h3>` +
          rows(ins.live.map((l) => `<tr><td>${l.id}</td><td>${esc(l.source)}</td></tr>`)) + `</section>`) +
        `<section data-section="rejections"><h3>Refused writes (${rejections.length})</h3>` +
        (rejections.length ? rejections.map((r) =>
          `<div><span class="bad">${esc(r.code)}</span> ${esc(r.call)}(${json(r.args)}) <span class="dim">${esc(r.at.toLocaleTimeString())}</span></div>` +
          `<div class="dim">${esc(r.message)}</div>${traceHtml(r.trace)}`).join("") : `<div class="dim">none</div>`) +
        `</section>` +
        (options.server ? `<section data-section="server"><h3>Server</h3>${serverHtml(server)}</section>` : ""));
    panel.querySelector("[data-toggle]")?.addEventListener("click", () => { collapsed = !collapsed; render(); });
  }

  function serverHtml(s: unknown): string {
    const v = s as Record<string, unknown> | null;
    if (!v) return `<div class="dim">not read yet</div>`;
    if (v.error) return `<span class="bad">${esc(v.error)}</span>`;
    return `<table><tr><td>connected clients</td><td>${esc(v.connections)}</td></tr>` +
      `<tr><td>log head (applied)</td><td>${esc(v.applied_position ?? v.position)}</td></tr>` +
      `<tr><td>digest</td><td>${esc(v.digest ?? "")}</td></tr></table>`;
  }

  // Subscribed last: the first status is delivered at once, and renders.
  const stopStatus = db.status.subscribe((s) => { status = s; render(); });
  const timer = setInterval(() => void refresh(), options.interval ?? 1000);
  void refresh();
  return {
    element: host,
    rejections,
    refresh,
    unmount() {
      clearInterval(timer);
      stopStatus();
      db.call = call;
      host.remove();
    },
  };
}
