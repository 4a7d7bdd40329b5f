// Intentions, config entries (with validation errors at the field), the event mesh and the CA.

import { ApiError, live, request } from './api.js';
import { actionCell, errorBox, fill, field, h, section, slot, table } from './dom.js';

/** #/intentions: list, create, delete, check. */
export function intentionsPage(main, _params, signal) {
  const list = slot('intentions');
  const status = h('div', { role: 'status', class: 'status' });
  const source = h('input', { name: 'source', required: true, autocomplete: 'off' });
  const destination = h('input', { name: 'destination', required: true, autocomplete: 'off' });
  const action = h('select', { name: 'action' },
    h('option', { value: 'allow' }, 'allow'), h('option', { value: 'deny' }, 'deny'));
  const description = h('input', { name: 'description', autocomplete: 'off' });
  const create = h('form', { class: 'card', id: 'intention-create' },
    h('h2', {}, 'Create an intention'),
    h('div', { class: 'row' },
      field('Source service (or *)', source), field('Destination service (or *)', destination),
      field('Action', action), field('Description', description)),
    h('div', { class: 'actions' }, h('button', { type: 'submit' }, 'Create')), status);
  create.addEventListener('submit', async (event) => {
    event.preventDefault();
    try {
      await request('POST', '/v1/connect/intentions', {
        body: {
          SourceName: source.value.trim(),
          DestinationName: destination.value.trim(),
          Action: action.value,
          Description: description.value,
        },
      });
      status.replaceChildren(`Created: ${source.value} → ${destination.value} (${action.value}).`);
      source.value = '';
      destination.value = '';
      description.value = '';
    } catch (error) {
      status.replaceChildren(errorBox(error));
    }
  });

  const checkSource = h('input', { name: 'check-source', required: true, autocomplete: 'off' });
  const checkDestination = h('input', { name: 'check-destination', required: true, autocomplete: 'off' });
  const verdict = h('p', { role: 'status', class: 'status', id: 'check-result' });
  const check = h('form', { class: 'card', id: 'intention-check' },
    h('h2', {}, 'May A call B?'),
    h('div', { class: 'row' }, field('Source service', checkSource),
      field('Destination service', checkDestination)),
    h('div', { class: 'actions' }, h('button', { type: 'submit' }, 'Check')), verdict);
  check.addEventListener('submit', async (event) => {
    event.preventDefault();
    const q = `source=${encodeURIComponent(checkSource.value.trim())}`
      + `&destination=${encodeURIComponent(checkDestination.value.trim())}`;
    try {
      const { data } = await request('GET', `/v1/connect/intentions/check?${q}`);
      verdict.dataset.allowed = String(data.Allowed);
      verdict.textContent = `${checkSource.value} → ${checkDestination.value}: `
        + (data.Allowed ? 'allowed' : 'denied');
    } catch (error) {
      verdict.replaceChildren(errorBox(error));
    }
  });

  main.append(h('h1', {}, 'Intentions'), list, create, check);
  live('/v1/connect/intentions', signal, (rows) => {
    fill(list, table('Intentions, highest precedence first', [
      'Source', 'Destination', 'Action', 'Precedence', 'Description', ''],
    rows.map((i) => {
      const remove = h('button', { type: 'button', class: 'danger',
        'aria-label': `Delete intention ${i.SourceName} to ${i.DestinationName}` }, 'Delete');
      remove.addEventListener('click', async () => {
        if (!window.confirm(`Delete ${i.SourceName} → ${i.DestinationName}?`)) return;
        try {
          await request('DELETE', `/v1/connect/intentions/${encodeURIComponent(i.ID)}`);
        } catch (error) {
          status.replaceChildren(errorBox(error));
        }
      });
      return {
        attrs: { dataset: { intention: `${i.SourceName}->${i.DestinationName}` } },
        cells: [i.SourceName, i.DestinationName,
          actionCell(i), String(i.Precedence), i.Description || '', remove],
      };
    }), 'No intentions: the default policy decides.'));
  }, (error) => fill(list, errorBox(error)));
}

// Listed live (each holds one blocking query, and a browser keeps at most six connections
// per server: a seventh request would wait behind them)...
const KINDS = ['service-defaults', 'service-resolver', 'service-splitter', 'service-router'];
// ...and read once, again after each save (service-intentions also live on #/intentions).
const READ_ONCE = ['proxy-defaults', 'service-intentions'];
const TEMPLATE = { Kind: 'service-defaults', Name: 'web', Protocol: 'http' };

/** The line of `text` where the last segment of `field` (`Routes[1].Destination.NumRetries`)
 * appears as a JSON key, or 0. */
function lineOf(text, path) {
  const last = path.split('.').pop().replace(/\[\d+\]$/, '');
  const lines = text.split('\n');
  const found = lines.findIndex((l) => l.includes(`"${last}"`));
  return found + 1;
}

/** #/config: entries by kind; an editor that shows validation errors at the field. */
export function configPage(main, _params, signal) {
  const lists = slot('config entries');
  const editor = h('textarea', { name: 'entry', rows: 16, spellcheck: 'false', class: 'code' });
  const problem = h('div', { id: 'entry-error', class: 'field-error', role: 'alert' });
  const status = h('p', { role: 'status', class: 'status' });
  const form = h('form', { class: 'card', id: 'config-editor' },
    h('h2', {}, 'Edit an entry'),
    field('Entry (JSON, Consul\'s shape)', editor, 'Write a new entry or pick one above.'),
    problem,
    h('div', { class: 'actions' }, h('button', { type: 'submit' }, 'Save')), status);
  editor.value = JSON.stringify(TEMPLATE, null, 2);
  const clear = () => {
    problem.replaceChildren();
    editor.removeAttribute('aria-invalid');
  };
  form.addEventListener('submit', async (event) => {
    event.preventDefault();
    clear();
    status.textContent = '';
    let entry;
    try {
      entry = JSON.parse(editor.value);
    } catch (error) {
      problem.replaceChildren(h('strong', {}, 'Not JSON: '), error.message);
      editor.setAttribute('aria-invalid', 'true');
      return;
    }
    try {
      await request('PUT', '/v1/config', { body: entry });
      status.textContent = `Saved ${entry.Kind} ${entry.Name}.`;
      readOnce();
    } catch (error) {
      editor.setAttribute('aria-invalid', 'true');
      if (error.field) {
        const line = lineOf(editor.value, error.field);
        problem.dataset.field = error.field;
        problem.replaceChildren(h('strong', {}, error.field),
          line ? ` (line ${line})` : '', `: ${error.message}`);
        if (line) {
          const start = editor.value.split('\n').slice(0, line - 1).join('\n').length + (line > 1 ? 1 : 0);
          const end = start + editor.value.split('\n')[line - 1].length;
          editor.focus();
          editor.setSelectionRange(start, end);
        }
      } else {
        problem.replaceChildren(errorBox(error));
      }
    }
  });
  editor.setAttribute('aria-describedby', `${editor.getAttribute('aria-describedby') || ''} entry-error`.trim());
  main.append(h('h1', {}, 'Config entries'), lists, form);

  const byKind = {};
  const draw = () => {
    const entries = [...KINDS, ...READ_ONCE]
      .flatMap((kind) => (byKind[kind] || []).map((entry) => [kind, entry]));
    fill(lists, table('Config entries by kind', ['Kind', 'Name', 'Modify index', ''],
      entries.map(([kind, entry]) => {
        const edit = h('button', { type: 'button', class: 'secondary', 'aria-label': `Edit ${kind} ${entry.Name}` }, 'Edit');
        edit.addEventListener('click', () => {
          const shown = { ...entry };
          delete shown.CreateIndex;
          delete shown.ModifyIndex;
          editor.value = JSON.stringify(shown, null, 2);
          clear();
          editor.focus();
        });
        const remove = h('button', { type: 'button', class: 'danger', 'aria-label': `Delete ${kind} ${entry.Name}` }, 'Delete');
        remove.addEventListener('click', async () => {
          if (!window.confirm(`Delete ${kind} ${entry.Name}?`)) return;
          try {
            await request('DELETE', `/v1/config/${kind}/${encodeURIComponent(entry.Name)}`);
            readOnce();
          } catch (error) {
            status.replaceChildren(errorBox(error));
          }
        });
        return { attrs: { dataset: { entry: `${kind}/${entry.Name}` } },
          cells: [kind, entry.Name, String(entry.ModifyIndex), h('span', {}, edit, ' ', remove)] };
      }), `No entries (${[...KINDS, ...READ_ONCE].join(', ')}).`));
  };
  // Hoisted: the save and delete handlers above call it.
  function readOnce() {
    for (const kind of READ_ONCE) {
      request('GET', `/v1/config/${kind}`, { signal })
        .then(({ data }) => { byKind[kind] = data || []; draw(); })
        .catch((error) => { if (error.name !== 'AbortError') fill(lists, errorBox(error)); });
    }
  }
  readOnce();
  for (const kind of KINDS) {
    live(`/v1/config/${kind}`, signal, (rows) => { byKind[kind] = rows || []; draw(); },
      (error) => fill(lists, errorBox(error)));
  }
}

/** #/events: apps with their routes, topics, presence. */
export function eventsPage(main, _params, signal) {
  const apps = slot('event apps');
  const topics = slot('topics');
  main.append(h('h1', {}, 'Event mesh'),
    h('p', { class: 'hint' }, 'Apps connected to the presence monitor, their public routes and the broker topics they were given.'),
    section('Apps', apps), section('Topics', topics));
  const refresh = async () => {
    try {
      const [a, t] = await Promise.all([request('GET', '/v1/events/apps'), request('GET', '/v1/events/topics')]);
      fill(apps, table('Connected apps (presence)', ['Origin', 'App', 'Group', 'Topic', 'Routes', 'Replica'],
        a.data.map((x) => ({ attrs: { dataset: { origin: x.origin } },
          cells: [x.origin, x.app, x.group, x.topic, h('span', {}, x.routes.map((r) => h('span', { class: 'tag' }, r))), x.replica] })),
        'No app is connected.'));
      fill(topics, table('Topics and their owners', ['Topic', 'Origin'],
        Object.entries(t.data).map(([topic, origin]) => [topic, origin]), 'No topic is assigned.'));
    } catch (error) {
      fill(apps, errorBox(error));
    }
  };
  // Presence changes come with the catalog (each app is a catalog instance): follow its index.
  live('/v1/catalog/services', signal, () => refresh(), (error) => fill(apps, errorBox(error)));
}

/** #/ca: roots and rotation state. */
export function caPage(main, _params, signal) {
  const roots = slot('roots');
  const config = slot('configuration');
  const status = h('p', { role: 'status', class: 'status' });
  const rotate = h('button', { type: 'button', class: 'secondary' }, 'Rotate the root');
  rotate.addEventListener('click', async () => {
    if (!window.confirm('Create a new root, cross-signed by the current one?')) return;
    try {
      await request('POST', '/v1/connect/ca/rotate');
      status.textContent = 'Rotation started: both roots are trusted until the old leaves expire.';
    } catch (error) {
      status.replaceChildren(errorBox(error));
    }
  });
  main.append(h('h1', {}, 'Certificate authority'), section('Roots', roots),
    section('Configuration', config), h('div', { class: 'actions' }, rotate), status);
  live('/v1/connect/ca/roots', signal, (data) => {
    const retiring = data.Roots.filter((r) => !r.Active).length;
    fill(roots, h('p', {}, `Trust domain: `, h('code', {}, data.TrustDomain), '. ',
      retiring ? `Rotation in progress: ${retiring} retiring root(s) still trusted.` : 'No rotation in progress.'),
    table('Roots', ['Name', 'State', 'Valid from', 'Valid until', 'Key'],
      data.Roots.map((r) => ({ attrs: { dataset: { root: r.ID } },
        cells: [r.Name, r.Active ? 'active' : 'retiring (trusted)', r.NotBefore, r.NotAfter,
          `${r.PrivateKeyType} ${r.PrivateKeyBits}`] }))));
  }, (error) => fill(roots, errorBox(error)));
  request('GET', '/v1/connect/ca/configuration').then(({ data }) => {
    fill(config, h('dl', { class: 'pairs' }, h('dt', {}, 'Provider'), h('dd', {}, data.Provider),
      ...Object.entries(data.Config || {}).flatMap(([k, v]) => [h('dt', {}, k), h('dd', {}, String(v))])));
  }).catch((error) => {
    if (!(error instanceof ApiError) || !signal.aborted) fill(config, errorBox(error));
  });
}
