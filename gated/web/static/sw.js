// The pass's service worker, scoped to /app/: it keeps the pass page and what it loads so the
// pass opens with the network off. It never touches /api/ (member data and key registration
// always go to head office), and it caches nothing else.
"use strict";

const CACHE = "gated-pass-__ASSETS_VERSION__";
const PAGE = "/app/pass";
const ASSETS = [
  "/app/static/app.css",
  "/app/static/pass.js",
  "/app/static/qrcode-generator-2.0.4.js",
  "/app/static/manifest.webmanifest",
  "/app/static/icon.svg",
  "/app/static/icon-192.png",
  "/app/static/icon-512.png",
];

self.addEventListener("install", (event) => {
  event.waitUntil((async () => {
    const cache = await caches.open(CACHE);
    await cache.addAll(ASSETS);
    // The page that registered this worker, kept at once: the pass works offline from now on.
    const page = await fetch(PAGE, { credentials: "same-origin", redirect: "manual" });
    if (page.ok && page.type === "basic") await cache.put(PAGE, page);
    await self.skipWaiting();
  })());
});

self.addEventListener("activate", (event) => {
  event.waitUntil(
    caches.keys()
      .then((names) => Promise.all(
        names.filter((n) => n.startsWith("gated-pass-") && n !== CACHE).map((n) => caches.delete(n)),
      ))
      .then(() => self.clients.claim()),
  );
});

self.addEventListener("fetch", (event) => {
  const url = new URL(event.request.url);
  if (url.origin !== self.location.origin || event.request.method !== "GET") return;
  if (url.pathname.startsWith("/api/")) return; // never cached, never answered from a cache
  if (url.pathname === PAGE) {
    event.respondWith(passPage(event.request));
  } else if (ASSETS.includes(url.pathname)) {
    event.respondWith(caches.match(url.pathname).then((hit) => hit || fetch(event.request)));
  }
});

// The page from head office when it answers (kept for next time), else the kept copy. A
// redirect means the member is signed out: the kept copy goes too.
async function passPage(request) {
  const cache = await caches.open(CACHE);
  let response;
  try {
    response = await fetch(request);
  } catch (offline) {
    const kept = await cache.match(PAGE);
    if (kept) return kept;
    throw offline;
  }
  if (response.ok && response.type === "basic") {
    await cache.put(PAGE, response.clone());
  } else if (response.type === "opaqueredirect" || response.status === 303) {
    await cache.delete(PAGE);
  }
  return response;
}
