// Building the page: elements from data (text only, never HTML strings), tables, badges, errors.

/** An element: h('a', {href: '#/x', class: 'y'}, 'text', child, ...). */
export function h(tag, attrs = {}, ...children) {
  const element = document.createElement(tag);
  setAttrs(element, attrs);
  element.append(...children.flat().filter((c) => c !== null && c !== undefined && c !== false));
  return element;
}

const SVG = 'http://www.w3.org/2000/svg';

/** An SVG element. */
export function s(tag, attrs = {}, ...children) {
  const element = document.createElementNS(SVG, tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value !== null && value !== undefined) element.setAttribute(key, String(value));
  }
  element.append(...children.flat().filter((c) => c !== null && c !== undefined));
  return element;
}

function setAttrs(element, attrs) {
  for (const [key, value] of Object.entries(attrs)) {
    if (value === null || value === undefined || value === false) continue;
    if (key.startsWith('on') && typeof value === 'function') {
      element.addEventListener(key.slice(2), value);
    } else if (key === 'dataset') {
      Object.assign(element.dataset, value);
    } else if (value === true) {
      element.setAttribute(key, '');
    } else {
      element.setAttribute(key, String(value));
    }
  }
}

/** A table with a caption, header cells and rows of cells (strings or nodes). */
export function table(caption, headers, rows, empty = 'Nothing here yet.') {
  if (rows.length === 0) return h('p', { class: 'empty' }, empty);
  return h('table', {},
    h('caption', {}, caption),
    h('thead', {}, h('tr', {}, headers.map((x) => h('th', { scope: 'col' }, x)))),
    h('tbody', {}, rows.map((row) => {
      const cells = Array.isArray(row) ? row : row.cells;
      const tr = h('tr', row.attrs || {});
      tr.append(...cells.map((c) => h('td', {}, c ?? '')));
      return tr;
    })));
}

/** A health word with a shape as well as a colour (never colour alone). */
export function badge(status) {
  const marks = { passing: '✔', warning: '!', critical: '✖', maintenance: '⏸' };
  const word = status || 'unknown';
  return h('span', { class: `badge ${word}`, dataset: { status: word } },
    h('span', { 'aria-hidden': 'true' }, marks[word] || '?'), ` ${word}`);
}

/** An intention's action: `allow`/`deny`, or its L7 permissions as `METHODS path → action` lines. */
export function actionCell(i) {
  if (i.Action) return h('span', { class: `action ${i.Action}` }, i.Action);
  const rule = (p) => {
    const http = p.HTTP || {};
    const path = http.PathExact || (http.PathPrefix && `${http.PathPrefix}*`) || http.PathRegex || '';
    const headers = (http.Header || []).map((x) => x.Name).join(', ');
    const what = [(http.Methods || []).join('|'), path, headers && `[${headers}]`].filter(Boolean);
    return h('div', {}, `${what.join(' ')} → `, h('span', { class: `action ${p.Action}` }, p.Action));
  };
  return h('div', { class: 'permissions' }, 'L7:', ...(i.Permissions || []).map(rule));
}

/** Worst of a list of check statuses (Consul's order). */
export function worst(statuses) {
  const order = ['passing', 'warning', 'critical', 'maintenance'];
  return statuses.reduce((a, b) => (order.indexOf(b) > order.indexOf(a) ? b : a), 'passing');
}

/** A section with a heading. */
export function section(title, ...children) {
  const id = `s-${title.toLowerCase().replace(/[^a-z0-9]+/g, '-')}`;
  return h('section', { 'aria-labelledby': id }, h('h2', { id }, title), ...children);
}

/** The message for an error: 403 says what to do, never a blank page. */
export function errorBox(error) {
  let text = error.message || String(error);
  if (error.status === 403) {
    text = `Permission denied (403): ${text}. Enter a token with the right policy with the `
      + '"ACL token" button.';
  } else if (error.status === 401) {
    text = `Not authenticated (401): ${text}.`;
  } else if (error.status) {
    text = `Error ${error.status}: ${text}`;
  }
  return h('div', { class: 'error', role: 'alert', dataset: { status: error.status || 0 } }, text);
}

/** A placeholder that a live read replaces: shows errors in place. */
export function slot(label) {
  return h('div', { class: 'slot', 'aria-busy': 'true' }, h('p', { class: 'loading' }, `Loading ${label}…`));
}

/** Replaces a slot's content (and clears its busy state). */
export function fill(target, ...children) {
  target.removeAttribute('aria-busy');
  target.replaceChildren(...children.flat().filter((c) => c !== null && c !== undefined));
}

/** A labelled form field. */
export function field(label, input, hint) {
  const id = input.id || `f-${Math.random().toString(36).slice(2)}`;
  input.id = id;
  const hintId = hint ? `${id}-hint` : null;
  if (hintId) input.setAttribute('aria-describedby', hintId);
  return h('div', { class: 'field' }, h('label', { for: id }, label), input,
    hint ? h('small', { id: hintId }, hint) : null);
}

/** Formats a number of milliseconds, a rate or a ratio for people. */
export const fmt = {
  ms: (v) => (v === null || v === undefined ? '–' : `${v < 10 ? v.toFixed(2) : v.toFixed(0)} ms`),
  rate: (v) => (v ? `${v < 10 ? v.toFixed(2) : v.toFixed(0)}/s` : '0/s'),
  pct: (v) => (v === null || v === undefined ? '–' : `${(v * 100).toFixed(v === 1 ? 0 : 1)}%`),
};
