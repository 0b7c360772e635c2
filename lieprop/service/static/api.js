// The REST API as the page uses it: relative URLs (the page may sit behind a path prefix) and the API key.
// The key lives in sessionStorage (this tab only, gone when it closes) and goes out as X-API-Key.

const KEY = "lieprop-api-key";

export function apiKey() {
  return sessionStorage.getItem(KEY) || "";
}

export function setApiKey(key) {
  if (key) sessionStorage.setItem(KEY, key);
  else sessionStorage.removeItem(KEY);
}

/** An error answer of the API: `code` and `message` from its JSON body, `status` the HTTP status. */
export class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

function headers(extra = {}) {
  const key = apiKey();
  return key ? { ...extra, "X-API-Key": key } : extra;
}

async function check(response) {
  if (response.ok) return response;
  let code = `http_${response.status}`, message = response.statusText;
  try {
    const body = await response.json();
    code = body.error?.code ?? code;
    message = body.error?.message ?? message;
  } catch { /* not JSON */ }
  throw new ApiError(response.status, code, message);
}

export async function getJson(path) {
  return (await check(await fetch(path, { headers: headers() }))).json();
}

export async function postJson(path, body) {
  const init = { method: "POST", headers: headers({ "Content-Type": "application/json" }), body: JSON.stringify(body) };
  return (await check(await fetch(path, init))).json();
}

/** Start a batch job: the file as multipart/form-data, with the properties as a form field. */
export async function startJob(file, properties, relaxedWith = "dft") {
  const form = new FormData();
  form.append("file", file, file.name);
  if (properties.length) form.append("properties", properties.join(","));
  form.append("relaxed_with", relaxedWith);
  return (await check(await fetch("v1/jobs", { method: "POST", headers: headers(), body: form }))).json();
}

export async function deleteJob(id) {
  return (await check(await fetch(`v1/jobs/${encodeURIComponent(id)}`, { method: "DELETE", headers: headers() })))
    .json();
}

/** A job's results as text: JSON Lines (default) or CSV. */
export async function jobResults(id, format = "jsonl") {
  const query = format === "csv" ? "?format=csv" : "";
  return (await check(await fetch(`v1/jobs/${encodeURIComponent(id)}/results${query}`, { headers: headers() })))
    .text();
}
