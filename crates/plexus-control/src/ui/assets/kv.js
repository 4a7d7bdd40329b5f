// Key/Value: browse folders, create keys and folders, edit with compare-and-set, delete.

import { ApiError, encodePath, live, request } from './api.js';
import { errorBox, fill, field, h, slot, table } from './dom.js';

const decode = (b64) => {
  if (!b64) return '';
  const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
  return new TextDecoder().decode(bytes);
};

function crumbs(path) {
  const parts = path.split('/').filter(Boolean);
  const links = [h('a', { href: '#/kv/' }, 'Key/Value')];
  let prefix = '';
  parts.forEach((part, i) => {
    prefix += `${part}/`;
    const last = i === parts.length - 1 && !path.endsWith('/');
    links.push(' / ', last ? part : h('a', { href: `#/kv/${encodePath(prefix)}` }, part));
  });
  return h('p', { class: 'crumbs' }, links);
}

/** #/kv/PATH: a folder when PATH is empty or ends with '/', else a key. */
export function kvPage(main, [path], signal) {
  if (path === '' || path.endsWith('/')) folder(main, path, signal);
  else key(main, path, signal);
}

function folder(main, prefix, signal) {
  const list = slot('keys');
  const status = h('p', { class: 'status', role: 'status' });
  const name = h('input', { name: 'key', required: true, autocomplete: 'off' });
  const value = h('textarea', { name: 'value', rows: 4 });
  const form = h('form', { class: 'card', 'aria-labelledby': 'kv-create' },
    h('h2', { id: 'kv-create' }, 'Create'),
    field(`Key (under ${prefix || 'the root'}; end with / for a folder)`, name),
    field('Value', value),
    h('div', { class: 'actions' }, h('button', { type: 'submit' }, 'Create')),
    status);
  form.addEventListener('submit', async (event) => {
    event.preventDefault();
    const full = prefix + name.value.trim();
    if (!name.value.trim()) return;
    try {
      const { data } = await request('PUT', `/v1/kv/${encodePath(full)}?cas=0`,
        { body: full.endsWith('/') ? '' : value.value });
      if (data === false) {
        status.replaceChildren(errorBox(new ApiError(409, `${full} already exists`)));
        return;
      }
      status.textContent = `Created ${full}.`;
      name.value = '';
      value.value = '';
    } catch (error) {
      status.replaceChildren(errorBox(error));
    }
  });
  main.append(crumbs(prefix), h('h1', {}, prefix ? `Folder ${prefix}` : 'Key/Value'), list, form);
  live(`/v1/kv/${encodePath(prefix)}?keys&separator=/`, signal, (keys) => {
    const children = (keys || []).filter((k) => k !== prefix);
    fill(list, table(`Keys under ${prefix || 'the root'}`, ['Key', 'Kind', ''],
      children.map((k) => {
        const shown = k.slice(prefix.length);
        const isFolder = k.endsWith('/');
        const remove = h('button', { type: 'button', class: 'danger', 'aria-label': `Delete ${k}` }, 'Delete');
        remove.addEventListener('click', async () => {
          if (!window.confirm(`Delete ${k}${isFolder ? ' and everything under it' : ''}?`)) return;
          try {
            await request('DELETE', `/v1/kv/${encodePath(k)}${isFolder ? '?recurse' : ''}`);
          } catch (error) {
            status.replaceChildren(errorBox(error));
          }
        });
        return {
          attrs: { dataset: { key: k } },
          cells: [h('a', { href: `#/kv/${encodePath(k)}` }, shown), isFolder ? 'folder' : 'key', remove],
        };
      }), 'This folder is empty.'));
  }, (error) => fill(list, errorBox(error)), { allow404: true });
}

function key(main, path, signal) {
  const parent = path.includes('/') ? path.slice(0, path.lastIndexOf('/') + 1) : '';
  const body = slot('the key');
  main.append(crumbs(path), h('h1', {}, path), body);
  let loaded = null;
  const status = h('p', { class: 'status', role: 'status' });
  const value = h('textarea', { name: 'value', rows: 12, spellcheck: 'false' });
  const save = h('button', { type: 'submit' }, 'Save');
  const remove = h('button', { type: 'button', class: 'danger' }, 'Delete');
  const index = h('span', { class: 'index' });
  const form = h('form', { class: 'card' },
    field('Value', value, 'Saved with compare-and-set: if someone changed the key since it was loaded, nothing is overwritten.'),
    h('p', {}, 'Modify index: ', index),
    h('div', { class: 'actions' }, save, remove), status);
  form.addEventListener('submit', async (event) => {
    event.preventDefault();
    try {
      const { data } = await request('PUT', `/v1/kv/${encodePath(path)}?cas=${loaded.ModifyIndex}`,
        { body: value.value });
      status.replaceChildren(data === false
        ? errorBox(new ApiError(409, 'the key changed since it was loaded; nothing was saved. The newest value is shown now'))
        : `Saved.`);
    } catch (error) {
      status.replaceChildren(errorBox(error));
    }
  });
  remove.addEventListener('click', async () => {
    if (!window.confirm(`Delete ${path}?`)) return;
    try {
      await request('DELETE', `/v1/kv/${encodePath(path)}`);
      location.hash = `#/kv/${encodePath(parent)}`;
    } catch (error) {
      status.replaceChildren(errorBox(error));
    }
  });
  live(`/v1/kv/${encodePath(path)}`, signal, (data) => {
    if (!data) {
      fill(body, h('p', { class: 'empty' }, 'This key does not exist (any more). ',
        h('a', { href: `#/kv/${encodePath(parent)}` }, 'Back to the folder.')));
      return;
    }
    const first = !loaded;
    loaded = data[0];
    index.textContent = String(loaded.ModifyIndex);
    // Keep what is being typed; load the value the first time and after a save or a conflict.
    if (first || document.activeElement !== value) value.value = decode(loaded.Value);
    if (first) fill(body, form);
  }, (error) => fill(body, errorBox(error)), { allow404: true });
}
