// The console's shell: sign-in, navigation between the views, the notices, the language switch. Each view gets a
// context of its own whose calls stop (and whose notices go quiet) when the person leaves the view or signs out.
import {aborted, api, ApiError, session, whenUnauthorized} from './api.js';
import {clear, field, h} from './dom.js';
import {lang, setLang, t} from './i18n.js';
import {galleryView, uploadView} from './gallery.js';
import {bulkView} from './bulk.js';
import {accountView, describeView, generateView, searchView} from './create.js';

const VIEWS = {
  gallery: galleryView, upload: uploadView, bulk: bulkView, search: searchView,
  generate: generateView, describe: describeView, account: accountView,
};
const main = document.getElementById('main');
const nav = document.getElementById('nav');
const statusLine = document.getElementById('status');
const alertLine = document.getElementById('alert');
const signOutButton = document.getElementById('signout');
const langButton = document.getElementById('lang');
let current = null;  // the AbortController of the view on screen

// What a refused call means, in words a person reads.
export function explain(error) {
  if (!(error instanceof ApiError) || error.status === 0) return t('error_network');
  if (error.status === 401) return t('key_refused');  // and the tab is back at sign-in (whenUnauthorized)
  if (error.status === 429 && error.code === 'quota_exceeded') return t('error_quota', {message: error.message});
  if (error.status === 429) return t('error_rate', {seconds: error.retryAfter || 1});
  if (error.status === 503) return t('error_busy', {seconds: error.retryAfter || 1});
  if (error.status === 504) return t('error_timeout');
  return error.message;
}

function say(text, kind = 'info') {
  clear(kind === 'error' ? alertLine : statusLine, text ? h('p', {class: `note ${kind}`}, text) : null);
  clear(kind === 'error' ? statusLine : alertLine);
}

function leave() {
  if (current) current.abort();
  current = null;
  document.querySelectorAll('dialog').forEach((d) => d.remove());
}

// A view's context: its calls carry its signal; its notices are dropped once it is gone.
function context() {
  const controller = new AbortController();
  current = controller;
  const live = () => !controller.signal.aborted;
  return {
    signal: controller.signal,
    api: (path, options = {}) => api(path, {...options, signal: controller.signal}),
    say: (text, kind) => { if (live()) say(text, kind); },
    fail: (error) => { if (live() && !aborted(error) && !(error instanceof ApiError && error.status === 401)) say(explain(error), 'error'); },
    explain,
    go: (view, params = '') => { location.hash = `#/${view}${params}`; },
    // The notes an answer carries about where it came from.
    provenance(answer) {
      return [answer && answer.random_weights ? h('p', {class: 'note warn'}, t('random_weights')) : null,
        answer && answer.degraded ? h('p', {class: 'note warn'}, t('degraded')) : null];
    },
  };
}

function renderSignIn(message, kind = 'info') {
  leave();
  nav.replaceChildren();
  signOutButton.hidden = true;
  const input = h('input', {type: 'password', name: 'key', autocomplete: 'off', spellcheck: 'false', required: true});
  const submit = h('button', {type: 'submit'}, t('sign_in'));
  const form = h('form', {class: 'card narrow', 'aria-labelledby': 'signin-title'},
    h('h1', {id: 'signin-title'}, t('sign_in_title')),
    h('p', {}, t('sign_in_intro')),
    field(t('api_key'), input, t('api_key_hint')),
    submit);
  form.addEventListener('submit', async (event) => {
    event.preventDefault();
    const key = input.value.trim();
    submit.disabled = true;
    try {
      await api('/api/me/usage', {key});
      session.set(key);
      say('');
      start();
    } catch (error) {
      say(explain(error), 'error');
      submit.disabled = false;
    }
  });
  clear(main, form);
  say(message || '', kind);
  input.focus();
}

function renderNav() {
  clear(nav, h('ul', {}, Object.keys(VIEWS).map((name) => h('li', {},
    h('a', {href: `#/${name}`, 'data-view': name}, t(`nav_${name}`))))));
}

function route() {
  if (!session.key) return renderSignIn();
  const [name, query] = location.hash.replace(/^#\/?/, '').split('?');
  const view = VIEWS[name] ? name : 'gallery';
  if (!nav.querySelector('a')) renderNav();
  for (const link of nav.querySelectorAll('a')) {
    if (link.dataset.view === view) link.setAttribute('aria-current', 'page');
    else link.removeAttribute('aria-current');
  }
  signOutButton.hidden = false;
  document.title = `${t(`nav_${view}`)} · atelier`;
  leave();
  say('');
  clear(main);
  const from = document.activeElement;
  VIEWS[view](main, context(), new URLSearchParams(query || ''));
  // Focus follows the navigation to the view's heading (kept where it was on the first load).
  const heading = main.querySelector('h1');
  if (heading && from && nav.contains(from)) {
    heading.tabIndex = -1;
    heading.focus();
  }
}

function start() {
  if (!location.hash.startsWith('#/')) location.hash = '#/gallery';
  else route();
}

function labels() {
  document.documentElement.lang = lang() === 'zh' ? 'zh-CN' : 'en';
  langButton.textContent = t('switch_language');
  langButton.setAttribute('lang', lang() === 'zh' ? 'en' : 'zh-CN');
  signOutButton.textContent = t('sign_out');
  document.getElementById('skip').textContent = t('skip');
  nav.setAttribute('aria-label', t('nav_label'));
}

whenUnauthorized(() => {
  session.forget();
  renderSignIn(t('key_refused'), 'error');
});
signOutButton.addEventListener('click', () => {
  session.forget();
  history.replaceState(null, '', location.pathname);
  renderSignIn(t('signed_out'));
});
langButton.addEventListener('click', () => {
  setLang(lang() === 'zh' ? 'en' : 'zh');
  labels();
  if (session.key) {
    renderNav();
    route();
  } else {
    renderSignIn();
  }
});
document.getElementById('skip').addEventListener('click', (event) => {
  event.preventDefault();
  const target = main.querySelector('h1') || main;
  target.tabIndex = -1;
  target.focus();
});
window.addEventListener('hashchange', route);

labels();
if (session.key) start(); else renderSignIn();
