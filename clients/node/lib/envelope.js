'use strict';
// The event envelope and its MsgPack codec (Mercury's standard and compact key forms).
// Encoding writes the standard form (descriptive keys, `headers` always present); decoding reads
// both forms, treats nil as absent and ignores unknown keys.

const crypto = require('node:crypto');
const { encode, decode } = require('@msgpack/msgpack');

// [property, standard key, compact key, kind]
const FIELDS = [
  ['id', 'id', '0', 'text'],
  ['to', 'to', 'T', 'text'],
  ['from', 'from', 'F', 'text'],
  ['replyTo', 'reply_to', 'R', 'text'],
  ['traceId', 'trace_id', 't', 'text'],
  ['tracePath', 'trace_path', 'p', 'text'],
  ['spanId', 'span_id', 's', 'text'],
  ['cid', 'cid', 'X', 'text'],
  ['status', 'status', 'S', 'status'],
  ['headers', 'headers', 'H', 'strings'],
  ['body', 'body', 'B', 'any'],
  ['tags', 'tags', '7', 'tags'],
  ['annotations', 'annotations', '6', 'map'],
  ['exception', 'exception', '4', 'binary'],
  ['stack', 'stack', '5', 'text'],
  ['objType', 'obj_type', 'O', 'text'],
  ['execTime', 'exec_time', '1', 'float'],
  ['roundTrip', 'round_trip', '2', 'float'],
];
const BY_KEY = new Map();
for (const f of FIELDS) {
  BY_KEY.set(f[1], f);
  BY_KEY.set(f[2], f);
}

class DecodeError extends Error {}

function newId() {
  return crypto.randomUUID().replace(/-/g, '');
}

class Event {
  constructor(fields = {}) {
    this.id = newId();
    this.to = null;
    this.from = null;
    this.replyTo = null;
    this.traceId = null;
    this.tracePath = null;
    this.spanId = null;
    this.cid = null;
    this.status = 200;
    this.headers = {};
    this.body = null;
    this.tags = {};
    this.annotations = {};
    this.exception = null;
    this.stack = null;
    this.objType = null;
    this.execTime = null;
    this.roundTrip = null;
    Object.assign(this, fields);
  }

  get isError() {
    return this.status >= 400;
  }

  /** The error message of an error event (its body as text). */
  get error() {
    if (!this.isError) return null;
    return typeof this.body === 'string' ? this.body : this.body == null ? '' : JSON.stringify(this.body);
  }

  /** The envelope as a plain object with standard (or compact) keys. */
  toMap(compact = false) {
    const out = {};
    for (const [prop, long, short] of FIELDS) {
      const key = compact ? short : long;
      const value = this[prop];
      if (prop === 'headers') {
        if (!compact || Object.keys(value).length) out[key] = { ...value };
      } else if (prop === 'tags' || prop === 'annotations') {
        if (Object.keys(value).length) out[key] = { ...value };
      } else if (value !== null && value !== undefined) {
        out[key] = value;
      }
    }
    return out;
  }

  /** Encodes the standard (or compact) form. */
  toBytes(compact = false) {
    return encode(this.toMap(compact), { ignoreUndefined: true });
  }

  static fromBytes(bytes) {
    return Event.decode(bytes).event;
  }

  /** Decodes either form: { event, compact }. */
  static decode(bytes) {
    let value;
    try {
      value = decode(bytes);
    } catch (error) {
      throw new DecodeError(`not valid MsgPack: ${error.message}`);
    }
    return Event.fromMap(value);
  }

  /** Reads a decoded map: { event, compact }. */
  static fromMap(value) {
    if (value === null || typeof value !== 'object' || Array.isArray(value) || value instanceof Uint8Array) {
      throw new DecodeError('an envelope must be a MsgPack map');
    }
    const keys = Object.keys(value);
    const compact = !keys.some((k) => k.length > 1);
    const event = new Event({ id: '' });
    for (const key of keys) {
      const field = BY_KEY.get(key);
      const item = value[key];
      if (!field || item === null || item === undefined) continue;
      event[field[0]] = readField(key, field[3], item);
    }
    return { event, compact };
  }
}

function text(value) {
  if (value === null || value === undefined) return '';
  return typeof value === 'string' ? value : String(value);
}

function readField(key, kind, item) {
  const wrong = (expected) => new DecodeError(`field "${key}": expected ${expected}`);
  switch (kind) {
    case 'text':
      if (typeof item !== 'string') throw wrong('a string');
      return item;
    case 'status': {
      const n = typeof item === 'string' ? Number(item.trim()) : Number(item);
      if (typeof item === 'boolean' || !Number.isInteger(n) || n < 100 || n > 999) {
        throw wrong('an integer status from 100 to 999');
      }
      return n;
    }
    case 'tags':
      if (typeof item === 'string') {
        const out = {};
        for (const kv of item.split('|').filter(Boolean)) {
          const i = kv.indexOf('=');
          if (i < 0) out[kv] = '';
          else out[kv.slice(0, i)] = kv.slice(i + 1);
        }
        return out;
      }
    // falls through: a map of strings
    case 'strings': {
      if (typeof item !== 'object' || Array.isArray(item) || item instanceof Uint8Array) throw wrong('a map of strings');
      const out = {};
      for (const [k, v] of Object.entries(item)) out[k] = text(v);
      return out;
    }
    case 'map':
      if (typeof item !== 'object' || Array.isArray(item) || item instanceof Uint8Array) throw wrong('a map with string keys');
      return { ...item };
    case 'binary':
      if (!(item instanceof Uint8Array)) throw wrong('binary (bin)');
      return item;
    case 'float': {
      const n = Number(item);
      if (typeof item === 'boolean' || !Number.isFinite(n)) throw wrong('a number');
      return Math.max(0, n);
    }
    default:
      return item;
  }
}

// Segmentation: events larger than a frame travel as segment envelopes, as over the brokers.
function split(bytes, maxPayload) {
  if (bytes.length <= maxPayload) return [bytes];
  const chunk = Math.max(1, maxPayload - 256);
  const count = Math.ceil(bytes.length / chunk);
  const seg = newId();
  const parts = [];
  for (let i = 0; i < count; i++) {
    parts.push(new Event({
      body: bytes.subarray(i * chunk, (i + 1) * chunk),
      tags: { _seg: seg, _n: String(i), _of: String(count) },
    }).toBytes());
  }
  return parts;
}

class Reassembler {
  constructor(maxBytes = 64 * 1024 * 1024) {
    this.maxBytes = maxBytes;
    this.pending = new Map();
  }

  static isSegment(event) {
    return Object.prototype.hasOwnProperty.call(event.tags, '_seg');
  }

  /** Adds a segment; returns the whole encoded event once every part arrived, else null. */
  add(segment) {
    const seg = segment.tags._seg;
    const n = Number(segment.tags._n);
    const of = Number(segment.tags._of);
    if (!Number.isInteger(n) || !Number.isInteger(of) || n < 0 || n >= of || !(segment.body instanceof Uint8Array)) {
      throw new DecodeError('malformed segment');
    }
    let entry = this.pending.get(seg);
    if (!entry) {
      entry = { parts: new Map(), bytes: 0 };
      this.pending.set(seg, entry);
    }
    if (!entry.parts.has(n)) {
      entry.parts.set(n, segment.body);
      entry.bytes += segment.body.length;
    }
    if (entry.bytes > this.maxBytes) {
      this.pending.delete(seg);
      throw new DecodeError('segmented event too large');
    }
    if (entry.parts.size < of) return null;
    this.pending.delete(seg);
    const out = new Uint8Array(entry.bytes);
    let at = 0;
    for (let i = 0; i < of; i++) {
      out.set(entry.parts.get(i), at);
      at += entry.parts.get(i).length;
    }
    return out;
  }
}

module.exports = { Event, DecodeError, Reassembler, split, newId, FIELDS };
