// The REST API client of the console. Authentication is the HttpOnly session cookie set by
// POST /api/v1/session; every request carries X-Outgrow-CSRF: 1 (see api/deps.py).

export class ApiError extends Error {
  constructor(status, body) {
    const b = body && typeof body === "object" ? body : {};
    super(b.message || `HTTP ${status}`);
    this.status = status;
    this.code = b.error || "http";
    this.field = b.field || inferField(b.message || "");
  }
}

// Spec validation errors may name the field only in the message ("publish: ..."): take it
// from there when the body has no "field".
function inferField(message) {
  const m = /^([A-Za-z_][A-Za-z0-9_.]*): /.exec(message);
  return m ? m[1] : "";
}

let unauthorizedHandler = () => {};
export function onUnauthorized(fn) {
  unauthorizedHandler = fn;
}

export async function api(method, path, body, { signal } = {}) {
  const headers = { Accept: "application/json", "X-Outgrow-CSRF": "1" };
  const opts = { method, headers, credentials: "same-origin", signal };
  if (body !== undefined) {
    headers["Content-Type"] = "application/json";
    opts.body = JSON.stringify(body);
  }
  let resp;
  try {
    resp = await fetch(`/api/v1${path}`, opts);
  } catch (exc) {
    if (exc.name === "AbortError") throw exc;
    throw new ApiError(0, { error: "network", message: "cannot reach the control plane" });
  }
  if (resp.status === 204) return null;
  let data = null;
  const text = await resp.text();
  if (text) {
    try {
      data = JSON.parse(text);
    } catch {
      data = { message: text.slice(0, 200) };
    }
  }
  if (!resp.ok) {
    const err = new ApiError(resp.status, data);
    if (resp.status === 401 && !path.startsWith("/session")) unauthorizedHandler(err);
    throw err;
  }
  return data;
}

export const get = (path, opts) => api("GET", path, undefined, opts);
export const post = (path, body) => api("POST", path, body ?? {});
export const patch = (path, body) => api("PATCH", path, body);
export const del = (path) => api("DELETE", path);

export const enc = encodeURIComponent;

// Small cache for things that rarely change (images, instance types).
const cache = new Map();
export function cached(path, ttlMs = 30000) {
  const hit = cache.get(path);
  if (hit && Date.now() - hit.at < ttlMs) return hit.promise;
  const promise = get(path).catch((e) => {
    cache.delete(path);
    throw e;
  });
  cache.set(path, { at: Date.now(), promise });
  return promise;
}
export function invalidate(path) {
  cache.delete(path);
}
