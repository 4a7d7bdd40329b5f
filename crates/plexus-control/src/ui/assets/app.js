// The shell: routes by URL fragment, the token dialog, and page lifetimes (a page's live reads
// stop when another page opens).

import { setToken, token } from './api.js';
import { errorBox, h } from './dom.js';
import { serviceList, serviceDetail, nodeList } from './services.js';
import { kvPage } from './kv.js';
import { intentionsPage, configPage, eventsPage, caPage } from './connect.js';
import { topologyPage } from './graph.js';

const routes = [
  [/^\/services$/, 'services', serviceList],
  [/^\/services\/(.+)$/, 'services', serviceDetail],
  [/^\/nodes$/, 'nodes', nodeList],
  [/^\/kv\/(.*)$/, 'kv', kvPage],
  [/^\/intentions$/, 'intentions', intentionsPage],
  [/^\/config$/, 'config', configPage],
  [/^\/topology$/, 'topology', topologyPage],
  [/^\/events$/, 'events', eventsPage],
  [/^\/ca$/, 'ca', caPage],
];

let current = null;

function render() {
  const path = decodeURIComponent(location.hash.replace(/^#/, '')) || '/services';
  if (current) current.abort();
  current = new AbortController();
  const main = document.getElementById('main');
  main.replaceChildren();
  const match = routes.find(([pattern]) => pattern.test(path));
  for (const link of document.querySelectorAll('#nav a')) {
    if (match && link.dataset.section === match[1]) link.setAttribute('aria-current', 'page');
    else link.removeAttribute('aria-current');
  }
  if (!match) {
    main.append(h('h1', {}, 'Not found'), h('p', {}, `No page ${path}. `,
      h('a', { href: '#/services' }, 'Go to services.')));
    document.title = 'Not found · Plexus';
    return;
  }
  const [pattern, section, page] = match;
  const params = pattern.exec(path).slice(1);
  try {
    page(main, params, current.signal);
  } catch (error) {
    main.append(errorBox(error));
  }
  const heading = main.querySelector('h1');
  document.title = `${heading ? heading.textContent : section} · Plexus`;
}

function setupToken() {
  const dialog = document.getElementById('token-dialog');
  const input = document.getElementById('token-input');
  const button = document.getElementById('token-button');
  const label = () => {
    button.textContent = token() ? 'ACL token (set)' : 'ACL token';
  };
  label();
  button.addEventListener('click', () => {
    input.value = token();
    dialog.showModal();
    input.focus();
  });
  document.getElementById('token-form').addEventListener('submit', (event) => {
    event.preventDefault();
    setToken(input.value.trim());
    dialog.close();
    label();
    render();
  });
  document.getElementById('token-clear').addEventListener('click', () => {
    setToken('');
    input.value = '';
    dialog.close();
    label();
    render();
  });
  document.getElementById('token-cancel').addEventListener('click', () => dialog.close());
}

function start() {
  setupToken();
  window.addEventListener('hashchange', () => {
    render();
    document.getElementById('main').focus({ preventScroll: true });
  });
  if (!location.hash) history.replaceState(null, '', '#/services');
  render();
}

start();
