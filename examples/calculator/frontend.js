// The calculator's frontend (Node.js, standard library only).
//
// GET /calc?a=7&b=3 calls `add` and `sub` through this instance's sidecar (the upstream
// addresses the agent passes as PLEXUS_UPSTREAM_ADD and PLEXUS_UPSTREAM_SUB) and answers
//   {"a":7,"b":3,"sum":10,"difference":4,"add":"<instance>","sub":"<instance>","frontend":"<instance>"}
// GET /health answers 200. A failed upstream call answers 502 naming the upstream.
'use strict';

const http = require('http');

const port = Number(process.env.PLEXUS_PORT_http);
const instance = process.env.PLEXUS_ALLOC_ID || 'local';
const upstreams = {
  add: process.env.PLEXUS_UPSTREAM_ADD,
  sub: process.env.PLEXUS_UPSTREAM_SUB,
};
// One keep-alive pool per upstream (to the local sidecar).
const agent = new http.Agent({ keepAlive: true, maxSockets: 64 });

function call(name, a, b) {
  return new Promise((resolve, reject) => {
    const [host, p] = (upstreams[name] || '').split(':');
    if (!host || !p) {
      reject(new Error(`PLEXUS_UPSTREAM_${name.toUpperCase()} is not set`));
      return;
    }
    const path = `/${name}?a=${encodeURIComponent(a)}&b=${encodeURIComponent(b)}`;
    const req = http.get({ host, port: Number(p), path, agent, timeout: 5000 }, (res) => {
      let body = '';
      res.setEncoding('utf8');
      res.on('data', (chunk) => { body += chunk; });
      res.on('end', () => {
        if (res.statusCode !== 200) {
          reject(new Error(`${name} answered ${res.statusCode}: ${body.trim()}`));
          return;
        }
        try {
          resolve(JSON.parse(body));
        } catch (e) {
          reject(new Error(`${name} answered something that is not JSON: ${e.message}`));
        }
      });
    });
    req.on('timeout', () => req.destroy(new Error(`${name} did not answer within 5s`)));
    req.on('error', reject);
  });
}

function answer(res, code, value) {
  const body = JSON.stringify(value) + '\n';
  res.writeHead(code, { 'Content-Type': 'application/json', 'Content-Length': Buffer.byteLength(body) });
  res.end(body);
}

const server = http.createServer(async (req, res) => {
  const url = new URL(req.url, 'http://frontend');
  if (url.pathname === '/health') {
    res.writeHead(200, { 'Content-Type': 'text/plain' });
    res.end('ok\n');
    return;
  }
  if (url.pathname !== '/calc') {
    answer(res, 404, { error: `no such path: ${url.pathname}` });
    return;
  }
  const a = url.searchParams.get('a') || '0';
  const b = url.searchParams.get('b') || '0';
  try {
    const [sum, difference] = await Promise.all([call('add', a, b), call('sub', a, b)]);
    answer(res, 200, {
      a: Number(a), b: Number(b),
      sum: sum.result, difference: difference.result,
      add: sum.instance, sub: difference.instance, frontend: instance,
    });
  } catch (e) {
    answer(res, 502, { error: e.message, frontend: instance });
  }
});

server.keepAliveTimeout = 30000;
server.listen(port, '127.0.0.1', () => {
  console.log(`frontend listening on 127.0.0.1:${port} as ${instance}; add=${upstreams.add} sub=${upstreams.sub}`);
});
process.on('SIGTERM', () => server.close(() => process.exit(0)));
