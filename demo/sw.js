// The demo's service worker: keeps the app shell (the page, its script and style, the
// schema and the Warren package with its WebAssembly) so the app starts with no
// network after the first visit. The data itself is in IndexedDB, kept by Warren.
//
// Strategy: answer from the cache at once and refresh the cached copy in the
// background (stale-while-revalidate): instant starts on a bad network; a new version
// of the app shows on the visit after it is fetched. Sync traffic (/v1/...) never goes
// through the cache.

const CACHE = "warren-demo-v3";
const SHELL = [
  "./",
  "./index.html",
  "./app.js",
  "./notes.js",
  "./style.css",
  "./manifest.webmanifest",
  "./schema.warren",
  // .ci/build-demo lists every module of the package (both engine modules among them)
  // and of yjs here.
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

// A page that missed the claim above asks again (see app.js).
self.addEventListener("message", (event) => {
  if (event.data === "claim") event.waitUntil(self.clients.claim());
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
