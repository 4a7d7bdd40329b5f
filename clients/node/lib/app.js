'use strict';
// An app connected to a Plexus event node over its WebSocket (`/ws/events`).
//
//   const app = await connect('ws://127.0.0.1:8090/ws/events', { app: 'orders' });
//   await app.register('orders.create', async (event) => ({ created: event.body }));
//   const reply = await app.request('inventory.check', { sku: 'x' }, { timeout: 5000 });
//
// Handlers are async functions taking an Event. Their return value is the reply body; an Event
// returned is the whole reply (status, headers, body); throwing an EventError answers with its
// status; any other error answers 500 with the message and stack.

const WebSocket = require('ws');
const { encode, decode } = require('@msgpack/msgpack');
const { Event, Reassembler, split } = require('./envelope');

const FRAME_OVERHEAD = 1024;

class EventError extends Error {
  constructor(status, message) {
    super(`${status}: ${message}`);
    this.status = status;
    this.reason = message;
  }
}

function toEvent(to, body, options = {}) {
  if (to instanceof Event) return to;
  return new Event({ to, body: body === undefined ? null : body, headers: { ...(options.headers || {}) } });
}

class App {
  constructor(ws, name, welcome) {
    this.ws = ws;
    this.name = name;
    this.origin = welcome.origin;
    this.nodeApp = welcome.app;
    this.maxFrameBytes = welcome.max_frame_bytes;
    this.maxEventBytes = welcome.max_event_bytes;
    this.maxInFlight = welcome.max_in_flight;
    this.nextRef = 1;
    this.waiting = new Map();
    this.handlers = new Map();
    this.reassembly = new Reassembler(this.maxEventBytes);
    this.closed = new Promise((resolve) => {
      ws.on('close', () => {
        for (const { reject } of this.waiting.values()) reject(new EventError(503, 'connection to the event node closed'));
        this.waiting.clear();
        resolve();
      });
    });
    ws.on('message', (data, isBinary) => {
      if (isBinary) this.onFrame(data);
    });
    ws.on('error', () => {});
  }

  /** Serves `route` with `handler` (at most `workers` events at once). */
  async register(route, handler, { workers = 10, private: isPrivate = false } = {}) {
    this.handlers.set(route, handler);
    try {
      await this.command({ type: 'register', route, workers, private: isPrivate });
    } catch (error) {
      this.handlers.delete(route);
      throw error;
    }
  }

  /** Stops serving `route`. */
  async unregister(route) {
    await this.command({ type: 'unregister', route });
    this.handlers.delete(route);
  }

  /** Sends an event and waits for the reply; failures come back as error events. */
  async request(to, body, { headers, timeout = 10000 } = {}) {
    return this.command({ type: 'request', timeout_ms: Math.max(1, Math.round(timeout)) }, toEvent(to, body, { headers }));
  }

  /** Sends an event without waiting for a reply (rejects with EventError when refused). */
  async send(to, body, { headers } = {}) {
    await this.command({ type: 'send' }, toEvent(to, body, { headers }));
  }

  /** Sends an event to every instance serving its route. */
  async broadcast(to, body, { headers } = {}) {
    await this.command({ type: 'broadcast' }, toEvent(to, body, { headers }));
  }

  /** Closes the connection (the node releases this app's routes). */
  async close() {
    this.ws.close();
    await this.closed;
  }

  write(frame, eventBytes) {
    const parts = eventBytes ? split(eventBytes, this.maxFrameBytes - FRAME_OVERHEAD) : [null];
    for (const part of parts) {
      const out = part ? { ...frame, event: part } : frame;
      this.ws.send(encode(out));
    }
  }

  command(frame, event) {
    const ref = this.nextRef++;
    return new Promise((resolve, reject) => {
      this.waiting.set(ref, { resolve, reject });
      try {
        this.write({ ...frame, ref }, event ? event.toBytes() : null);
      } catch (error) {
        this.waiting.delete(ref);
        reject(error);
      }
    });
  }

  whole(bytes) {
    const event = Event.fromBytes(bytes);
    if (!Reassembler.isSegment(event)) return event;
    const whole = this.reassembly.add(event);
    return whole ? Event.fromBytes(whole) : null;
  }

  onFrame(data) {
    let frame;
    try {
      frame = decode(data);
    } catch {
      return;
    }
    if (frame.type === 'deliver') {
      const event = this.whole(frame.event);
      if (event) this.handle(frame.id, frame.route, event);
      return;
    }
    const waiter = this.waiting.get(frame.ref);
    if (frame.type === 'error') {
      const error = new EventError(frame.status || 500, frame.message || '');
      if (waiter) {
        this.waiting.delete(frame.ref);
        waiter.reject(error);
      } else {
        process.emitWarning(`event node refused a frame: ${error.message}`);
      }
      return;
    }
    if (!waiter) return;
    if (frame.type === 'ack') {
      this.waiting.delete(frame.ref);
      waiter.resolve();
    } else if (frame.type === 'reply') {
      const reply = this.whole(frame.event);
      if (reply) {
        this.waiting.delete(frame.ref);
        waiter.resolve(reply);
      }
    }
  }

  async handle(id, route, event) {
    let reply;
    try {
      const handler = this.handlers.get(route);
      if (!handler) throw new EventError(404, `route ${route} is not served by this app`);
      const outcome = await handler(event);
      reply = outcome instanceof Event ? outcome : new Event({ body: outcome === undefined ? null : outcome });
    } catch (error) {
      reply = error instanceof EventError
        ? new Event({ status: error.status, body: error.reason })
        : new Event({ status: 500, body: `${error.name}: ${error.message}`, stack: String(error.stack || '') });
    }
    if (this.ws.readyState === WebSocket.OPEN) this.write({ type: 'result', id }, reply.toBytes());
  }
}

/** Connects to an event node (`ws://host:port/ws/events`) as `app`. */
function connect(url, { app, token } = {}) {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(url, { maxPayload: 0 });
    ws.binaryType = 'nodebuffer';
    ws.once('error', reject);
    ws.once('open', () => {
      const hello = { type: 'hello', protocol: 1, app };
      if (token !== undefined && token !== null) hello.token = token;
      ws.send(encode(hello));
    });
    ws.once('message', (data) => {
      ws.removeListener('error', reject);
      const frame = decode(data);
      if (frame.type !== 'welcome') {
        ws.close();
        reject(new EventError(frame.status || 500, frame.message || 'refused by the node'));
        return;
      }
      resolve(new App(ws, app, frame));
    });
  });
}

module.exports = { App, EventError, connect };
