// The demo's service worker: keeps the app shell (the page, its script and style, the
// schema and the Warren package with its WebAssembly) so the app starts with no
// network after the first visit. The data itself is in IndexedDB, kept by Warren.
//
// Strategy: answer from the cache at once and refresh the cached copy in the
// background (stale-while-revalidate): instant starts on a bad network; a new version
// of the app shows on the visit after it is fetched. Sync traffic (/v1/...) never goes
// through the cache.

const CACHE = "warren-demo-v2";
const SHELL = [
  "./",
  "./index.html",
  "./app.js",
  "./notes.js",
  "./style.css",
  "./manifest.webmanifest",
  "./schema.warren",
  "./vendor/warren/dist/index.js",
  "./vendor/warren/dist/errors.js",
  "./vendor/warren/dist/query.js",
  "./vendor/warren/dist/tabs.js",
  "./vendor/warren/dist/text.js",
  "./vendor/warren/dist/engine.js",
  "./vendor/warren/dist/worker.js",
  "./vendor/warren/wasm/warren_web.js",
  "./vendor/warren/wasm/warren_web_bg.wasm",
  "./vendor/warren/wasm/warren_web_text.js",
  "./vendor/warren/wasm/warren_web_text_bg.wasm",
  // .ci/build-demo lists yjs and its lib0 modules here (for the notes).
];

self.addEventListener("install", (event) => {
  event.waitUntil(
    caches.open(CACHE).then((c) => c.addAll(SHELL)).then(() => self.skipWaiting()),
  );
});

self.addEventListener("activate", (event) => {
  event.waitUntil(
    caches
      .keys()
      .then((names) => Promise.all(names.filter((n) => n !== CACHE).map((n) => caches.delete(n))))
      .then(() => self.clients.claim()),
  );
});

self.addEventListener("fetch", (event) => {
  const url = new URL(event.request.url);
  if (event.request.method !== "GET" || url.origin !== self.location.origin) return;
  if (url.pathname.includes("/v1/") || url.pathname.endsWith("/healthz")) return;
  event.respondWith(
    caches.open(CACHE).then(async (cache) => {
      const cached = await cache.match(event.request, { ignoreSearch: true });
      const fresh = fetch(event.request)
        .then((res) => {
          if (res.ok) cache.put(event.request, res.clone());
          return res;
        })
        .catch(() => undefined);
      if (cached) {
        event.waitUntil(fresh);
        return cached;
      }
      return (await fresh) ?? new Response("offline", { status: 503 });
    }),
  );
});
