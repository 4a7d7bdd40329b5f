// The public HTTP API, with the session's ACL token, errors in the API's shape, and live
// (blocking-query) reads.

const TOKEN_KEY = 'plexus.token';

/** The ACL token for this tab ('' when none). */
export function token() {
  return sessionStorage.getItem(TOKEN_KEY) || '';
}

/** Sets (or, with '', forgets) the tab's token. */
export function setToken(value) {
  if (value) sessionStorage.setItem(TOKEN_KEY, value);
  else sessionStorage.removeItem(TOKEN_KEY);
}

/** An error answer: HTTP status, message, and the field at fault when the API names one. */
export class ApiError extends Error {
  constructor(status, message, field) {
    super(message);
    this.name = 'ApiError';
    this.status = status;
    this.field = field || null;
  }
}

/**
 * One request. `body`: an object (sent as JSON) or a string (sent as is).
 * Resolves to {data, index}; rejects with ApiError.
 */
export async function request(method, path, { body, signal } = {}) {
  const headers = {};
  const secret = token();
  if (secret) headers['X-Consul-Token'] = secret;
  let payload;
  if (body !== undefined) {
    payload = typeof body === 'string' ? body : JSON.stringify(body);
    if (typeof body !== 'string') headers['Content-Type'] = 'application/json';
  }
  let response;
  try {
    response = await fetch(path, { method, headers, body: payload, signal });
  } catch (error) {
    if (error.name === 'AbortError') throw error;
    throw new ApiError(0, 'The control plane cannot be reached.');
  }
  const text = await response.text();
  let data = text;
  try {
    data = text ? JSON.parse(text) : null;
  } catch {
    // Not JSON (a raw KV value): keep the text.
  }
  const index = Number(response.headers.get('X-Consul-Index') || 0);
  if (!response.ok) {
    const error = data && data.error ? data.error : {};
    const message = error.message || (typeof data === 'string' && data) || response.statusText;
    const failure = new ApiError(response.status, message, error.field);
    failure.index = index;
    throw failure;
  }
  return { data, index };
}

const sleep = (ms, signal) => new Promise((resolve) => {
  const timer = setTimeout(resolve, ms);
  signal.addEventListener('abort', () => { clearTimeout(timer); resolve(); }, { once: true });
});

/**
 * Follows `path` with blocking queries until `signal` aborts: `onData(data)` on the first answer
 * and every time the index moves; `onError(error)` on failures (retried with backoff up to 10 s).
 * One request in flight at a time: no polling. With `allow404`, a 404 is data (`null`), as for
 * an empty KV folder.
 */
export function live(path, signal, onData, onError, { allow404 = false } = {}) {
  const separator = path.includes('?') ? '&' : '?';
  (async () => {
    let index = 0;
    let failures = 0;
    while (!signal.aborted) {
      try {
        const query = index > 0 ? `${separator}index=${index}&wait=30s` : '';
        const answer = await request('GET', path + query, { signal });
        failures = 0;
        const moved = answer.index === 0 || answer.index !== index;
        // An index that goes backwards (a restored store) starts over, as Consul clients do.
        index = answer.index < index ? 0 : answer.index;
        if (moved) onData(answer.data);
        if (answer.index === 0) await sleep(5000, signal);
      } catch (error) {
        if (signal.aborted || error.name === 'AbortError') return;
        if (allow404 && error.status === 404 && error.index > 0) {
          const moved = error.index !== index;
          index = error.index;
          if (moved) onData(null);
          continue;
        }
        failures += 1;
        onError(error);
        index = 0;
        await sleep(Math.min(10000, 500 * 2 ** failures), signal);
      }
    }
  })();
}

/** Encodes each segment of a path (keys with `/` keep their slashes). */
export function encodePath(path) {
  return path.split('/').map(encodeURIComponent).join('/');
}
