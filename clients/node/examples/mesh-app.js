'use strict';
// An example event-mesh app in Node.js, used by the end-to-end tests.
//
//   node mesh-app.js --node ws://127.0.0.1:8090/ws/events --app js-app --routes js.echo
//
// Every route answers with who served it and echoes the body; a body of "boom" throws (500),
// "fail" answers 422, "sleep" takes 2 s. With --load-route ROUTE the app also serves ROUTE, which
// fires {count: N} concurrent requests at {route: R} and answers how many came back intact.

const path = require('node:path');
const { connect, EventError } = require(path.join(__dirname, '..', 'lib'));

function args() {
  const out = { app: 'js-app', routes: '', private: '', 'load-route': '', workers: '10', token: process.env.PLEXUS_EVENTS_TOKEN };
  const argv = process.argv.slice(2);
  for (let i = 0; i < argv.length; i += 2) out[argv[i].replace(/^--/, '')] = argv[i + 1];
  if (!out.node) throw new Error('--node is required');
  return out;
}

async function main() {
  const a = args();
  const app = await connect(a.node, { app: a.app, token: a.token });
  const serve = (route) => async (event) => {
    if (event.body === 'boom') throw new Error('asked to fail');
    if (event.body === 'fail') throw new EventError(422, `${route} refuses 'fail'`);
    if (event.body === 'sleep') await new Promise((r) => setTimeout(r, 2000));
    return { route, app: a.app, lang: 'node', origin: app.origin, body: event.body, cid: event.cid, trace_id: event.traceId };
  };
  const load = async (event) => {
    const { route, count } = event.body;
    const timeout = (event.body.timeout || 30) * 1000;
    const calls = [];
    for (let i = 0; i < count; i++) calls.push(app.request(route, i, { timeout }));
    const replies = await Promise.all(calls);
    let ok = 0;
    const statuses = {};
    const servedBy = {};
    replies.forEach((r, i) => {
      statuses[r.status] = (statuses[r.status] || 0) + 1;
      if (r.body && typeof r.body === 'object') servedBy[r.body.app || '?'] = (servedBy[r.body.app || '?'] || 0) + 1;
      if (r.status === 200 && r.body && r.body.body === i) ok += 1;
    });
    return { ok, failed: count - ok, statuses, served_by: servedBy };
  };
  const workers = Number(a.workers);
  for (const route of a.routes.split(',').filter(Boolean)) await app.register(route, serve(route), { workers });
  for (const route of a.private.split(',').filter(Boolean)) await app.register(route, serve(route), { workers, private: true });
  if (a['load-route']) await app.register(a['load-route'], load, { workers: 4 });
  console.log(`ready app=${a.app} node=${app.nodeApp} origin=${app.origin}`);
  await app.closed;
  console.log('connection closed');
}

main().catch((error) => {
  console.error(`error: ${error.message}`);
  process.exit(1);
});
