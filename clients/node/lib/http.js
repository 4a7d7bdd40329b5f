'use strict';
// Event over HTTP: the fallback when a WebSocket is not an option (`POST /api/event`).

const { Event } = require('./envelope');

/**
 * Posts `event` to `url` (`http://node/api/event`) and returns the reply event. With `json` the
 * envelope travels as JSON, otherwise as MsgPack; the reply comes in the same form. The event's
 * trace id is carried as a W3C `traceparent` header.
 */
async function postEvent(url, event, { timeout = 10000, asynchronous = false, json = false, token } = {}) {
  const headers = { 'X-Timeout': String(Math.max(1, Math.round(timeout))) };
  if (asynchronous) headers['X-Async'] = 'true';
  if (token) headers.Authorization = `Bearer ${token}`;
  if (event.traceId && /^[0-9a-f]{32}$/.test(event.traceId)) {
    const span = (event.spanId || '0000000000000001').slice(-16).padStart(16, '0');
    headers.traceparent = `00-${event.traceId}-${span}-01`;
  }
  let body;
  if (json) {
    headers['Content-Type'] = 'application/json';
    const map = event.toMap();
    if (map.exception) map.exception = Buffer.from(map.exception).toString('base64');
    body = JSON.stringify(map);
  } else {
    headers['Content-Type'] = 'application/msgpack';
    body = event.toBytes();
  }
  const response = await fetch(url, { method: 'POST', headers, body, signal: AbortSignal.timeout(timeout + 5000) });
  const bytes = new Uint8Array(await response.arrayBuffer());
  const reply = json ? Event.fromMap(JSON.parse(Buffer.from(bytes).toString('utf8'))).event : Event.fromBytes(bytes);
  if (reply.status === 200 && response.status !== 200) reply.status = response.status;
  return reply;
}

module.exports = { postEvent };
