// The one way the console talks to the server: same origin, the key as a bearer header.
// The key lives in sessionStorage only (gone when the tab closes), never in a URL or cookie.

const STORE = "voxgate.key";

export function getKey() {
  return sessionStorage.getItem(STORE) || "";
}

export function setKey(value) {
  if (value) sessionStorage.setItem(STORE, value);
  else sessionStorage.removeItem(STORE);
  document.dispatchEvent(new CustomEvent("voxgate:key"));
}

/** An error carrying OpenAI's envelope: message, code, param and the HTTP status. */
export class ApiError extends Error {
  constructor(status, envelope) {
    const e = (envelope && envelope.error) || {};
    super(e.message || `HTTP ${status}`);
    this.status = status;
    this.code = e.code || null;
    this.param = e.param || null;
  }
}

/** fetch() on this server with the signed-in key; throws ApiError on a non-2xx answer. */
export async function request(path, options = {}) {
  const headers = new Headers(options.headers || {});
  const key = getKey();
  if (key) headers.set("Authorization", `Bearer ${key}`);
  const response = await fetch(path, { ...options, headers, credentials: "omit" });
  if (!response.ok) {
    let envelope = null;
    try {
      envelope = await response.json();
    } catch {
      envelope = null;
    }
    throw new ApiError(response.status, envelope);
  }
  return response;
}

export async function json(path, options = {}) {
  return (await request(path, options)).json();
}

/** Parse a text/event-stream body, calling onEvent(object) for each `data:` JSON event. */
export async function readSse(response, onEvent) {
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += value;
    let cut;
    while ((cut = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, cut);
      buffer = buffer.slice(cut + 2);
      const data = block
        .split("\n")
        .filter((line) => line.startsWith("data:"))
        .map((line) => line.slice(5).trimStart())
        .join("\n");
      if (data) onEvent(JSON.parse(data));
    }
  }
}

let catalog = null;

/** The public catalog (GET /api/models), fetched once per page load. */
export async function models() {
  if (!catalog) catalog = json("/api/models").then((body) => body.data);
  return catalog;
}

export function needKey(element) {
  if (getKey()) return false;
  showError(element, "Sign in first: paste an API key (or the admin key) at the top.");
  return true;
}

export function showError(element, error) {
  if (!error) {
    element.hidden = true;
    element.textContent = "";
    return;
  }
  element.hidden = false;
  const where = error.param ? ` (${error.param})` : "";
  element.textContent = typeof error === "string" ? error : `${error.message}${where}`;
}

export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (value === null || value === undefined || value === false) continue;
    if (name === "text") node.textContent = value;
    else if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
    else node.setAttribute(name, value === true ? "" : value);
  }
  for (const child of children) if (child !== null && child !== undefined) node.append(child);
  return node;
}
