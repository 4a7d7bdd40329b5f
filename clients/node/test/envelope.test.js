'use strict';
// Envelope codec against the shared vectors (crates/plexus-events/tests/vectors/envelope.json).

const test = require('node:test');
const assert = require('node:assert');
const fs = require('node:fs');
const path = require('node:path');
const { encode } = require('@msgpack/msgpack');
const { Event, DecodeError, Reassembler, split } = require('../lib/envelope');

const VECTORS = path.join(__dirname, '..', '..', '..', 'crates', 'plexus-events', 'tests', 'vectors', 'envelope.json');

function canonical(value) {
  if (value instanceof Uint8Array) return { $bin: Buffer.from(value).toString('hex') };
  if (Array.isArray(value)) return value.map(canonical);
  if (value && typeof value === 'object') {
    const out = {};
    for (const [k, v] of Object.entries(value)) out[k] = canonical(v);
    return out;
  }
  return value;
}

function described(e) {
  const out = { id: e.id, status: e.status };
  const names = [['to', 'to'], ['from', 'from'], ['replyTo', 'reply_to'], ['traceId', 'trace_id'],
    ['tracePath', 'trace_path'], ['spanId', 'span_id'], ['cid', 'cid'], ['stack', 'stack'],
    ['objType', 'obj_type'], ['execTime', 'exec_time'], ['roundTrip', 'round_trip']];
  for (const [prop, key] of names) if (e[prop] !== null) out[key] = e[prop];
  for (const prop of ['headers', 'tags', 'annotations']) {
    if (Object.keys(e[prop]).length) out[prop] = canonical(e[prop]);
  }
  if (e.body !== null) out.body = canonical(e.body);
  if (e.exception !== null) out.exception = canonical(e.exception);
  return out;
}

test('every vector decodes and round trips in both forms', () => {
  const { vectors } = JSON.parse(fs.readFileSync(VECTORS, 'utf8'));
  assert.ok(vectors.length >= 10);
  for (const vector of vectors) {
    const { event, compact } = Event.decode(Buffer.from(vector.msgpack, 'hex'));
    assert.strictEqual(compact, vector.form === 'compact', vector.name);
    assert.deepStrictEqual(described(event), vector.expected, vector.name);
    for (const form of [false, true]) {
      const back = Event.decode(event.toBytes(form));
      assert.deepStrictEqual(described(back.event), described(event), `${vector.name} as ${form}`);
      assert.strictEqual(back.compact, form, vector.name);
    }
    assert.ok('headers' in Event.fromBytes(event.toBytes()).toMap(), vector.name);
  }
});

test('errors name the field', () => {
  assert.throws(() => Event.fromBytes(encode({ status: 'ok' })), (e) => e instanceof DecodeError && e.message.includes('"status"'));
  assert.throws(() => Event.fromBytes(encode([1])), /map/);
  assert.throws(() => Event.fromBytes(Uint8Array.from([0x82, 0xa1])), /MsgPack/);
});

test('segments reassemble', () => {
  const body = new Uint8Array(10000).map((_, i) => i % 256);
  const event = new Event({ to: 'a.b', body });
  const parts = split(event.toBytes(), 1024);
  assert.ok(parts.length > 5);
  const r = new Reassembler();
  let whole = null;
  for (const part of parts.reverse()) {
    assert.ok(part.length <= 1024);
    whole = r.add(Event.fromBytes(part));
  }
  assert.deepStrictEqual(described(Event.fromBytes(whole)), described(event));
});
