// Services (list and one service: instances, checks, upstreams, downstreams, intentions,
// discovery chain, golden metrics) and nodes.

import { encodePath, live } from './api.js';
import { actionCell, badge, errorBox, fill, fmt, h, section, slot, table, worst } from './dom.js';
import { drawChain } from './graph.js';

const link = (name) => h('a', { href: `#/services/${encodeURIComponent(name)}` }, name);

/** #/services */
export function serviceList(main, _params, signal) {
  const list = slot('services');
  main.append(h('h1', {}, 'Services'), list);
  live('/v1/mesh/services', signal, (rows) => {
    fill(list, table('Every service, with the health of its instances', [
      'Service', 'Health', 'Instances', 'With sidecar', 'Tags'],
    rows.map((row) => {
      const status = row.Critical ? 'critical' : row.Warning ? 'warning' : 'passing';
      return {
        attrs: { dataset: { service: row.Name, status } },
        cells: [
          h('span', {}, link(row.Name), row.EventApp ? h('span', { class: 'tag' }, 'event app') : null),
          h('span', { class: 'health' }, badge(status),
            h('span', { class: 'counts' },
              ` ${row.Passing} passing, ${row.Warning} warning, ${row.Critical} critical`)),
          String(row.Instances),
          `${row.WithSidecar} of ${row.Instances}`,
          h('span', {}, row.Tags.map((t) => h('span', { class: 'tag' }, t))),
        ],
      };
    }), 'No services are registered.'));
  }, (error) => fill(list, errorBox(error)));
}

/** #/services/NAME */
export function serviceDetail(main, [name], signal) {
  const path = encodePath(name);
  const instances = slot('instances');
  const summary = h('p', { class: 'summary', 'aria-live': 'polite' });
  const metrics = slot('golden metrics');
  const calls = slot('upstreams and downstreams');
  const intentions = slot('intentions');
  const chain = slot('discovery chain');
  main.append(
    h('p', { class: 'crumbs' }, h('a', { href: '#/services' }, 'Services'), ' / ', name),
    h('h1', {}, name),
    summary,
    section('Golden metrics', h('p', { class: 'hint' },
      'From the sidecars\' own counters, over the last few seconds.'), metrics),
    section('Instances', instances),
    section('Upstreams and downstreams', calls),
    section('Intentions', intentions),
    section('Discovery chain', chain),
  );

  let sidecars = new Set();
  let entries = null;
  const drawInstances = () => {
    if (!entries) return;
    const statuses = entries.map((e) => worst(e.Checks.map((c) => c.Status)));
    const overall = entries.length === 0 ? 'critical' : worst(statuses);
    summary.replaceChildren('Health: ', badge(overall), ` — ${entries.length} instance(s)`);
    summary.dataset.status = overall;
    fill(instances, table('Instances with their checks', [
      'Instance', 'Node', 'Address', 'Sidecar', 'Checks'],
    entries.map((e, i) => ({
      attrs: { dataset: { instance: e.Service.ID, status: statuses[i] } },
      cells: [
        h('span', {}, e.Service.ID, ' ', badge(statuses[i])),
        e.Node.Node,
        `${e.Service.Address || e.Node.Address}:${e.Service.Port}`,
        sidecars.has(e.Service.ID) ? 'yes' : 'no',
        h('ul', { class: 'checks' }, e.Checks.map((c) => h('li', { dataset: { check: c.CheckID } },
          badge(c.Status), ` ${c.Name || c.CheckID}`,
          c.Output ? h('pre', { class: 'output' }, c.Output) : null))),
      ],
    })), 'No instances are registered.'));
  };
  live(`/v1/health/service/${path}`, signal, (data) => { entries = data; drawInstances(); },
    (error) => fill(instances, errorBox(error)));
  live(`/v1/health/connect/${path}`, signal, (data) => {
    sidecars = new Set(data.filter((e) => e.Service.Proxy)
      .map((e) => e.Service.Proxy.DestinationServiceID));
    drawInstances();
  }, () => {});

  live('/v1/mesh/topology', signal, (view) => {
    const node = view.Services[name];
    const g = node ? node.Golden : null;
    fill(metrics, g ? h('dl', { class: 'golden', dataset: { requests: g.RequestsTotal } },
      h('div', {}, h('dt', {}, 'Request rate'), h('dd', {}, fmt.rate(g.RequestRate))),
      h('div', {}, h('dt', {}, 'Success rate'), h('dd', {}, fmt.pct(g.SuccessRate))),
      h('div', {}, h('dt', {}, 'p50 latency'), h('dd', {}, fmt.ms(g.P50Ms))),
      h('div', {}, h('dt', {}, 'p99 latency'), h('dd', {}, fmt.ms(g.P99Ms))),
      h('div', {}, h('dt', {}, 'Requests (total)'), h('dd', {}, String(g.RequestsTotal))),
      h('div', {}, h('dt', {}, 'Connections (total)'), h('dd', {}, String(g.ConnectionsTotal))),
    ) : h('p', { class: 'empty' }, 'No sidecar reports traffic for this service.'));
    const row = (e, other) => [link(other), e.Declared ? 'declared' : 'observed',
      fmt.rate(e.Golden.RequestRate), fmt.pct(e.Golden.SuccessRate), fmt.ms(e.Golden.P99Ms)];
    const heads = ['Service', 'Source', 'Rate', 'Success', 'p99'];
    fill(calls,
      table(`Upstreams: services ${name} calls`, heads,
        view.Edges.filter((e) => e.Source === name).map((e) => row(e, e.Destination)),
        'No upstreams.'),
      table(`Downstreams: services that call ${name}`, heads,
        view.Edges.filter((e) => e.Destination === name).map((e) => row(e, e.Source)),
        'No downstreams.'));
  }, (error) => fill(metrics, errorBox(error)));

  // One live read of every intention (filtered here) rather than two `match` reads: a browser
  // keeps at most six connections per server, and each live view holds one.
  live('/v1/connect/intentions', signal, (all) => {
    const names = (side) => (i) => i[side] === name || i[side] === '*';
    const row = (i) => [i.SourceName, i.DestinationName,
      actionCell(i), String(i.Precedence), i.Description || ''];
    const heads = ['Source', 'Destination', 'Action', 'Precedence', 'Description'];
    fill(intentions,
      table(`Who may call ${name}`, heads, all.filter(names('DestinationName')).map(row),
        'No intention names it as a destination: the default policy decides.'),
      table(`Whom ${name} may call`, heads, all.filter(names('SourceName')).map(row),
        'No intention names it as a source.'),
      h('p', {}, h('a', { href: '#/intentions' }, 'Manage intentions')));
  }, (error) => fill(intentions, errorBox(error)));
  live(`/v1/discovery-chain/${path}`, signal, (data) => fill(chain, drawChain(data)),
    (error) => fill(chain, errorBox(error)));
}

/** #/nodes */
export function nodeList(main, _params, signal) {
  const list = slot('nodes');
  main.append(h('h1', {}, 'Nodes'), list);
  let nodes = null;
  let checks = [];
  const draw = () => {
    if (!nodes) return;
    fill(list, table('Every node, with its checks and service instances', [
      'Node', 'Address', 'Datacenter', 'Health', 'Services'],
    nodes.map((n) => {
      const mine = checks.filter((c) => c.Node === n.Node);
      const nodeChecks = mine.filter((c) => !c.ServiceID);
      const services = [...new Set(mine.filter((c) => c.ServiceName).map((c) => c.ServiceName))];
      const status = worst(mine.map((c) => c.Status));
      return {
        attrs: { dataset: { node: n.Node, status } },
        cells: [n.Node, n.Address, n.Datacenter, h('span', {}, badge(status),
          nodeChecks.length ? ` (${nodeChecks.length} node check(s))` : ''),
        h('span', {}, services.map((s) => h('span', { class: 'tag' }, link(s))))],
      };
    }), 'No nodes.'));
  };
  live('/v1/catalog/nodes', signal, (data) => { nodes = data; draw(); }, (e) => fill(list, errorBox(e)));
  live('/v1/health/state/any', signal, (data) => { checks = data; draw(); }, () => {});
}
