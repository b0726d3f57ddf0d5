// The member's pass: this device's own Ed25519 key (WebCrypto, non-extractable, kept in
// IndexedDB) mints a fresh GQ1 code every qr_refresh_s seconds and shows it as a QR code.
// Code format (DESIGN, Rotating QR): GQ1.<member_id>.<unix_ts>.<nonce>.<sig>, nonce 16 hex
// digits, sig base64url without padding over the ASCII bytes before the last dot. Timestamps
// are corrected by the offset to head office's clock measured at the last contact. While the
// browser is offline the page makes no request at all.
import qrcode from "./qrcode-generator-2.0.4.js";

const root = document.getElementById("pass");
const memberId = root.dataset.memberId;
const csrf = root.dataset.csrf;
const $ = (id) => document.getElementById(id);
const HEARD_EVERY_MS = 60_000;
const SUPPORTED = "a current Chrome or Edge (137 or later), Firefox (129 or later) or Safari (17 or later)";

// --- storage: one IndexedDB store, keyed per member --------------------------------------------

function db() {
  return new Promise((resolve, reject) => {
    const open = indexedDB.open("gated-pass", 1);
    open.onupgradeneeded = () => open.result.createObjectStore("kv");
    open.onsuccess = () => resolve(open.result);
    open.onerror = () => reject(open.error);
  });
}

async function load(key) {
  const d = await db();
  return new Promise((resolve, reject) => {
    const get = d.transaction("kv").objectStore("kv").get(`${memberId}:${key}`);
    get.onsuccess = () => resolve(get.result);
    get.onerror = () => reject(get.error);
  });
}

async function save(key, value) {
  const d = await db();
  return new Promise((resolve, reject) => {
    const tx = d.transaction("kv", "readwrite");
    tx.objectStore("kv").put(value, `${memberId}:${key}`);
    tx.oncomplete = () => resolve();
    tx.onerror = () => reject(tx.error);
  });
}

// --- encodings ---------------------------------------------------------------------------------

function b64(bytes) {
  return btoa(String.fromCharCode(...new Uint8Array(bytes)));
}

function b64url(bytes) {
  return b64(bytes).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
}

function hex(bytes) {
  return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

// --- state -------------------------------------------------------------------------------------

const state = {
  keys: null, // this device's CryptoKeyPair
  publicKey: "", // its public half, standard base64 of the raw 32 bytes
  info: null, // what head office last said: name, status, valid, headline, qr_key, qr_refresh_s
  offsetMs: 0, // head office's clock minus this device's, at the last contact
  heardAt: null, // when that was (head office's time, ms)
  timer: null,
};

async function ensureKeys() {
  if (state.keys) return state.keys;
  let keys = await load("keys");
  if (!keys) {
    keys = await crypto.subtle.generateKey({ name: "Ed25519" }, false, ["sign", "verify"]);
    await save("keys", keys);
  }
  state.keys = keys;
  state.publicKey = b64(await crypto.subtle.exportKey("raw", keys.publicKey));
  return keys;
}

async function ed25519Works() {
  try {
    if (!window.isSecureContext || !crypto.subtle || !window.indexedDB) return false;
    await ensureKeys();
    return true;
  } catch (e) {
    return false;
  }
}

// --- talking to head office --------------------------------------------------------------------

async function api(path, options = {}) {
  const sent = Date.now();
  const response = await fetch(path, {
    credentials: "same-origin",
    cache: "no-store",
    ...options,
    headers: { "X-CSRF-Token": csrf, ...(options.headers || {}) },
  });
  const received = Date.now();
  const body = await response.json().catch(() => ({}));
  return { response, body, sent, received };
}

// Ask head office how things stand and how far this device's clock is off (assuming the answer
// was made halfway through the round trip). Offline, nothing is asked.
async function contact() {
  if (!navigator.onLine) return;
  let answer;
  try {
    answer = await api("/api/v1/pass");
  } catch (e) {
    return; // unreachable: keep what was last heard
  }
  const { response, body, sent, received } = answer;
  if (response.status === 401) {
    showMessage("You are signed out. Sign in again to use your pass.");
    return;
  }
  if (!response.ok) return;
  state.offsetMs = body.now_ms - (sent + received) / 2;
  state.heardAt = body.now_ms;
  state.info = body;
  await save("heard", { info: body, offsetMs: state.offsetMs, heardAt: state.heardAt });
  render();
}

async function register() {
  const button = $("pass-register-button");
  button.disabled = true;
  $("pass-error").textContent = "";
  try {
    const keys = await ensureKeys();
    const asked = await api("/api/v1/pass/challenge", { method: "POST" });
    if (!asked.response.ok) throw new Error(asked.body.error || "head office did not answer");
    const nonce = String(asked.body.nonce);
    if (!/^[A-Za-z0-9_-]{16,64}$/.test(nonce)) throw new Error("head office sent a bad challenge");
    // Built here, not taken from the server: this key signs nothing shaped like a GQ1 code.
    const message = new TextEncoder().encode(`gated-pass-key-v1.${memberId}.${nonce}`);
    const signature = await crypto.subtle.sign({ name: "Ed25519" }, keys.privateKey, message);
    const sent = await api("/api/v1/pass/key", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ public_key: state.publicKey, nonce, signature: b64url(signature) }),
    });
    if (!sent.response.ok) throw new Error(sent.body.error || "head office refused the key");
    await contact();
  } catch (e) {
    $("pass-error").textContent = `This device could not become your pass: ${e.message}.`;
  } finally {
    button.disabled = false;
  }
}

// --- minting and showing -----------------------------------------------------------------------

async function mint() {
  const ts = Math.floor((Date.now() + state.offsetMs) / 1000);
  const nonce = hex(crypto.getRandomValues(new Uint8Array(8)));
  const head = `GQ1.${memberId}.${ts}.${nonce}`;
  const sig = await crypto.subtle.sign(
    { name: "Ed25519" }, state.keys.privateKey, new TextEncoder().encode(head),
  );
  return `${head}.${b64url(sig)}`;
}

function draw(code) {
  const qr = qrcode(0, "M");
  qr.addData(code);
  qr.make();
  const modules = qr.getModuleCount();
  const quiet = 4;
  const scale = Math.max(3, Math.floor(Math.min(300, window.innerWidth - 48) / (modules + 2 * quiet)));
  const size = (modules + 2 * quiet) * scale;
  const canvas = $("pass-qr");
  canvas.width = size;
  canvas.height = size;
  const g = canvas.getContext("2d");
  g.fillStyle = "#fff";
  g.fillRect(0, 0, size, size);
  g.fillStyle = "#000";
  for (let r = 0; r < modules; r += 1) {
    for (let c = 0; c < modules; c += 1) {
      if (qr.isDark(r, c)) g.fillRect((c + quiet) * scale, (r + quiet) * scale, scale, scale);
    }
  }
  $("pass-code").dataset.code = code;
}

async function show() {
  draw(await mint());
}

function showMessage(text) {
  $("pass-message").textContent = text;
}

function registered() {
  return Boolean(state.info && state.info.qr_key && state.info.qr_key === state.publicKey);
}

function render() {
  const info = state.info;
  if (info) {
    $("pass-name").textContent = info.name;
    const status = $("pass-status");
    status.textContent = info.valid ? info.headline : `Not valid: ${info.headline}`;
    status.className = `pass-status ${info.valid ? "ok" : "stop"}`;
    root.dataset.valid = String(Boolean(info.valid));
  }
  if (state.heardAt) {
    $("pass-heard").textContent = new Date(state.heardAt).toLocaleString();
  }
  const mine = registered();
  $("pass-code").hidden = !mine;
  $("pass-register").hidden = mine;
  if (mine) {
    showMessage("Hold the code to the scanner. It changes every few seconds.");
    if (!state.timer) {
      const every = 1000 * Number((info && info.qr_refresh_s) || root.dataset.refreshS || 10);
      show();
      state.timer = setInterval(show, every);
    }
  } else {
    clearInterval(state.timer);
    state.timer = null;
    $("pass-code").dataset.code = "";
    showMessage(
      info && info.qr_key
        ? "Another device is your pass now. Codes from this one no longer open the gates."
        : "This device is not your pass yet.",
    );
  }
}

async function start() {
  if (!(await ed25519Works())) {
    showMessage(`This browser cannot make a pass: it has no Ed25519 in WebCrypto. Use ${SUPPORTED}.`);
    return;
  }
  $("pass-register-button").addEventListener("click", register);
  const heard = await load("heard");
  if (heard) {
    Object.assign(state, { info: heard.info, offsetMs: heard.offsetMs, heardAt: heard.heardAt });
  } else {
    // The page itself was made by head office just now: a first estimate of the offset.
    state.offsetMs = Number(root.dataset.serverNowMs) - Date.now();
  }
  render();
  await contact();
  setInterval(contact, HEARD_EVERY_MS);
  window.addEventListener("online", contact);
  if ("serviceWorker" in navigator && navigator.onLine) {
    navigator.serviceWorker.register("/app/sw.js", { scope: "/app/" }).catch(() => {});
  }
}

start();
