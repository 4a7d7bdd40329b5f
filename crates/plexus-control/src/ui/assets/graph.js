// Pictures: the topology of who calls whom (with traffic on the edges) and a service's compiled
// discovery chain, drawn as SVG, each with a table that says the same for screen readers.

import { live } from './api.js';
import { errorBox, fill, fmt, h, s, section, slot, table } from './dom.js';

const NODE_W = 170;
const NODE_H = 54;
const GAP_X = 110;
const GAP_Y = 36;

function marker(id) {
  return s('defs', {}, s('marker', {
    id, viewBox: '0 0 10 10', refX: 10, refY: 5, markerWidth: 8, markerHeight: 8, orient: 'auto-start-reverse',
  }, s('path', { d: 'M 0 0 L 10 5 L 0 10 z', class: 'arrowhead' })));
}

/** Columns by longest path from a caller nobody calls (cycles are cut). */
function layers(names, edges) {
  const depth = new Map(names.map((n) => [n, 0]));
  for (let round = 0; round < names.length; round += 1) {
    let changed = false;
    for (const e of edges) {
      const next = (depth.get(e.Source) ?? 0) + 1;
      if (e.Source !== e.Destination && next > (depth.get(e.Destination) ?? 0) && next < names.length) {
        depth.set(e.Destination, next);
        changed = true;
      }
    }
    if (!changed) break;
  }
  const columns = [];
  for (const n of names) {
    const d = depth.get(n) ?? 0;
    (columns[d] = columns[d] || []).push(n);
  }
  return columns.filter(Boolean);
}

function box(x, y, title, lines, attrs = {}) {
  return s('g', { class: 'node', transform: `translate(${x},${y})`, ...attrs },
    s('rect', { width: NODE_W, height: NODE_H, rx: 6 }),
    s('text', { x: 10, y: 20, class: 'title' }, title),
    lines.map((line, i) => s('text', { x: 10, y: 38 + i * 14, class: 'detail' }, line)));
}

function edgeLabel(e) {
  const g = e.Golden;
  if (g.RequestsTotal + g.ConnectionsTotal === 0) return 'no traffic';
  if (g.RequestsTotal > 0) {
    return `${fmt.rate(g.RequestRate)} · ${fmt.pct(g.SuccessRate)} · p99 ${fmt.ms(g.P99Ms)}`;
  }
  return `${g.ConnectionsTotal} conn · ${fmt.rate(g.ConnectionRate)}`;
}

/** The topology SVG for a mesh view. */
export function drawTopology(view) {
  const names = [...new Set([...Object.keys(view.Services),
    ...view.Edges.flatMap((e) => [e.Source, e.Destination])])].sort();
  const columns = layers(names, view.Edges);
  const at = new Map();
  columns.forEach((column, c) => column.forEach((n, r) => at.set(n, {
    x: 20 + c * (NODE_W + GAP_X), y: 20 + r * (NODE_H + GAP_Y),
  })));
  const width = 40 + columns.length * (NODE_W + GAP_X) - GAP_X;
  const height = 40 + Math.max(1, ...columns.map((c) => c.length)) * (NODE_H + GAP_Y) - GAP_Y;
  const svg = s('svg', {
    class: 'topology', role: 'img', viewBox: `0 0 ${width} ${height}`, width, height,
    'aria-label': `Topology: ${names.length} services, ${view.Edges.length} calls`,
  }, marker('arrow'));
  for (const e of view.Edges) {
    const a = at.get(e.Source);
    const b = at.get(e.Destination);
    if (!a || !b) continue;
    const traffic = e.Golden.RequestsTotal + e.Golden.ConnectionsTotal > 0;
    const x1 = a.x + NODE_W;
    const y1 = a.y + NODE_H / 2;
    const x2 = e.Source === e.Destination ? a.x + NODE_W : b.x;
    const y2 = b.y + NODE_H / 2;
    const ok = e.Golden.SuccessRate === null || e.Golden.SuccessRate >= 0.99;
    svg.append(s('g', {
      class: `edge ${traffic ? 'traffic' : 'idle'} ${ok ? '' : 'failing'}`,
      'data-edge': `${e.Source}->${e.Destination}`, 'data-traffic': traffic ? 'yes' : 'no',
    },
    s('path', { d: `M ${x1} ${y1} C ${x1 + GAP_X / 2} ${y1}, ${x2 - GAP_X / 2} ${y2}, ${x2} ${y2}`, 'marker-end': 'url(#arrow)' }),
    s('text', { x: (x1 + x2) / 2, y: (y1 + y2) / 2 - 6, 'text-anchor': 'middle', class: 'label' }, edgeLabel(e))));
  }
  for (const n of names) {
    const p = at.get(n);
    const node = view.Services[n];
    const g = node ? node.Golden : null;
    const lines = g && g.RequestsTotal > 0
      ? [`${fmt.rate(g.RequestRate)} · ${fmt.pct(g.SuccessRate)}`]
      : [node && node.Sidecars ? `${node.Sidecars} sidecar(s)` : 'no sidecar'];
    const link = s('a', { href: `#/services/${encodeURIComponent(n)}` }, box(p.x, p.y, n, lines, { 'data-service': n }));
    svg.append(link);
  }
  return svg;
}

/** #/topology */
export function topologyPage(main, _params, signal) {
  const picture = slot('topology');
  const list = slot('calls');
  main.append(h('h1', {}, 'Topology'),
    h('p', { class: 'hint' }, 'Who calls whom: declared upstreams (dashed until traffic flows) and observed traffic, from the sidecars\' metrics. Rate, success rate and p99 are over the last few seconds.'),
    picture, section('Calls', list));
  live('/v1/mesh/topology', signal, (view) => {
    fill(picture, h('div', { class: 'scroll' }, drawTopology(view)));
    fill(list, table('Calls between services', ['From', 'To', 'Declared', 'Rate', 'Success', 'p50', 'p99', 'Requests', 'Connections'],
      view.Edges.map((e) => ({ attrs: { dataset: { edge: `${e.Source}->${e.Destination}` } },
        cells: [e.Source, e.Destination, e.Declared ? 'yes' : 'no', fmt.rate(e.Golden.RequestRate),
          fmt.pct(e.Golden.SuccessRate), fmt.ms(e.Golden.P50Ms), fmt.ms(e.Golden.P99Ms),
          String(e.Golden.RequestsTotal), String(e.Golden.ConnectionsTotal)] })),
      'No calls: no sidecar declares an upstream or carried traffic yet.'),
    view.Sidecars.some((x) => x.Error)
      ? h('p', { class: 'hint' }, `Sidecars whose metrics could not be read: ${view.Sidecars.filter((x) => x.Error).map((x) => `${x.ID} (${x.Error})`).join(', ')}.`)
      : null);
  }, (error) => fill(picture, errorBox(error)));
}

function describeMatch(route) {
  const m = route.matcher || {};
  const parts = [];
  if (m.path) parts.push(`path ${m.path.kind} ${m.path.value}`);
  for (const hd of m.headers || []) parts.push(`header ${hd.name}${hd.invert ? ' not' : ''} ${hd.value.kind}${hd.value.value ? ` ${hd.value.value}` : ''}`);
  for (const q of m.query || []) parts.push(`query ${q.name} ${q.value.kind}${q.value.value ? ` ${q.value.value}` : ''}`);
  if ((m.methods || []).length) parts.push(m.methods.join('|'));
  return parts.length ? parts.join(', ') : 'everything else';
}

/** A compiled discovery chain: routes → splits → targets (→ failover), as SVG and a table. */
export function drawChain(chain) {
  const routes = chain.routes || [];
  const targets = Object.entries(chain.targets || {});
  const targetRow = new Map(targets.map(([id], i) => [id, i]));
  const rows = Math.max(routes.length, targets.length, 1);
  const width = 2 * (NODE_W + GAP_X) + NODE_W + 140;
  const height = 40 + rows * (NODE_H + GAP_Y);
  const svg = s('svg', {
    class: 'chain', role: 'img', viewBox: `0 0 ${width} ${height}`, width, height,
    'aria-label': `Discovery chain of ${chain.service}: ${routes.length} route(s), ${targets.length} target(s)`,
  }, marker('chain-arrow'));
  const start = { x: 20, y: 20 };
  const col = (c) => 20 + c * (NODE_W + GAP_X);
  const y = (r) => 20 + r * (NODE_H + GAP_Y);
  const line = (x1, y1, x2, y2, cls, label) => svg.append(s('g', { class: `edge ${cls}` },
    s('path', { d: `M ${x1} ${y1} C ${x1 + GAP_X / 2} ${y1}, ${x2 - GAP_X / 2} ${y2}, ${x2} ${y2}`, 'marker-end': 'url(#chain-arrow)' }),
    label ? s('text', { x: (x1 + x2) / 2, y: (y1 + y2) / 2 - 5, 'text-anchor': 'middle', class: 'label' }, label) : null));
  routes.forEach((route, r) => {
    line(start.x + NODE_W, start.y + NODE_H / 2, col(1), y(r) + NODE_H / 2, 'traffic', '');
    for (const split of route.splits || []) {
      const t = targetRow.get(split.target);
      if (t === undefined) continue;
      line(col(1) + NODE_W, y(r) + NODE_H / 2, col(2), y(t) + NODE_H / 2, 'traffic', `${split.weight}%`);
    }
  });
  targets.forEach(([, target], t) => {
    (target.failover || []).forEach((other) => {
      const f = targetRow.get(other);
      if (f === undefined) return;
      const x = col(2) + NODE_W;
      const [y1, y2] = [y(t) + NODE_H / 2, y(f) + NODE_H / 2];
      svg.append(s('g', { class: 'edge idle' },
        s('path', { d: `M ${x} ${y1} C ${x + 70} ${y1}, ${x + 70} ${y2}, ${x} ${y2}`, 'marker-end': 'url(#chain-arrow)' }),
        s('text', { x: x + 58, y: (y1 + y2) / 2, class: 'label' }, 'failover')));
    });
  });
  svg.append(box(start.x, start.y, chain.service, [`protocol ${chain.protocol}`], { 'data-chain': 'service' }));
  routes.forEach((route, r) => svg.append(box(col(1), y(r), `route ${route.name}`, [describeMatch(route).slice(0, 24)], { 'data-chain': 'route' })));
  targets.forEach(([id, target], t) => svg.append(box(col(2), y(t), id,
    [`${target.load_balancer?.policy || 'round_robin'}${target.subset ? ` · ${target.subset}` : ''}`], { 'data-chain': 'target' })));
  const described = table(`Routes of ${chain.service}`, ['Route', 'Matches', 'Splits', 'Timeout', 'Retries'],
    routes.map((route) => [route.name, describeMatch(route),
      (route.splits || []).map((x) => `${x.weight}% → ${x.target}`).join(', '),
      route.request_timeout || '–', String(route.retry?.num_retries ?? 0)]));
  return [h('div', { class: 'scroll' }, svg), described];
}
