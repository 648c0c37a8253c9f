// OpenTrail console: one page, hash routes, plain DOM. Every call goes to the server's
// /console/api endpoints with the session cookie; writes carry the CSRF token.
'use strict';

// ---------------------------------------------------------------------------------------------
// Small helpers
// ---------------------------------------------------------------------------------------------

const $ = (sel, root = document) => root.querySelector(sel);

/** Builds an element: attributes (on* are listeners, booleans toggle), then children. */
function h(tag, attrs, ...kids) {
  const svg = ['svg', 'polyline', 'line', 'rect', 'text', 'g', 'path', 'circle'].includes(tag);
  const el = svg ? document.createElementNS('http://www.w3.org/2000/svg', tag) : document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k.startsWith('on') && typeof v === 'function') el.addEventListener(k.slice(2), v);
    else if (k === 'class') el.setAttribute('class', v);
    else if (v === true) el.setAttribute(k, '');
    else el.setAttribute(k, String(v));
  }
  for (const kid of kids.flat(Infinity)) {
    if (kid === null || kid === undefined || kid === false) continue;
    el.append(kid instanceof Node ? kid : document.createTextNode(String(kid)));
  }
  return el;
}

class ApiError extends Error {
  constructor(type, message, status) {
    super(message);
    this.type = type;
    this.status = status;
  }
  toString() { return `${this.type}: ${this.message}`; }
}

const state = {
  session: null,
  prefs: loadPrefs(),
  view: 0,
  timers: [],
  // A message for the next page to show (set before navigating away).
  flash: null,
};

function loadPrefs() {
  try {
    const p = JSON.parse(localStorage.getItem('opentrail.prefs') || '{}');
    return { tz: p.tz === 'local' ? 'local' : 'utc', columns: Array.isArray(p.columns) ? p.columns : null };
  } catch (_) {
    return { tz: 'utc', columns: null };
  }
}

function savePrefs() {
  localStorage.setItem('opentrail.prefs', JSON.stringify(state.prefs));
}

const pad = (n) => String(n).padStart(2, '0');

/** A time in the chosen zone: `2026-11-21 10:32:05 UTC` or the browser's local time. */
function fmtTime(ms) {
  if (ms === null || ms === undefined || Number.isNaN(ms)) return '';
  const d = new Date(ms);
  if (state.prefs.tz === 'utc') {
    return `${d.getUTCFullYear()}-${pad(d.getUTCMonth() + 1)}-${pad(d.getUTCDate())} ${pad(d.getUTCHours())}:${pad(d.getUTCMinutes())}:${pad(d.getUTCSeconds())} UTC`;
  }
  const off = -d.getTimezoneOffset();
  const sign = off >= 0 ? '+' : '-';
  const zone = `UTC${sign}${pad(Math.floor(Math.abs(off) / 60))}:${pad(Math.abs(off) % 60)}`;
  return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())} ${zone}`;
}

/** Epoch seconds or an ISO string (as the API answers) to milliseconds. */
function toMs(v) {
  if (v === null || v === undefined || v === '') return null;
  if (typeof v === 'number') return v * 1000;
  const n = Number(v);
  if (!Number.isNaN(n)) return n * 1000;
  const t = Date.parse(v);
  return Number.isNaN(t) ? null : t;
}

function showAlert(message, ok = false) {
  const box = $('#alert');
  box.replaceChildren(
    h('span', {}, message),
    h('button', { type: 'button', class: 'link', onclick: () => { box.hidden = true; } }, 'Dismiss'),
  );
  box.classList.toggle('ok', ok);
  box.hidden = false;
}

function clearAlert() { $('#alert').hidden = true; }

/** Navigates to `hash` and shows `message` there. */
function go(hash, message) {
  state.flash = message;
  if (location.hash === hash) route(); else location.hash = hash;
}

function showError(err) {
  if (err instanceof ApiError) showAlert(`${err.type}: ${err.message}`);
  else showAlert(String(err && err.message ? err.message : err));
}

// ---------------------------------------------------------------------------------------------
// Talking to the server
// ---------------------------------------------------------------------------------------------

async function request(url, init) {
  const resp = await fetch(url, { credentials: 'same-origin', ...init });
  const text = await resp.text();
  let data = {};
  try { data = text ? JSON.parse(text) : {}; } catch (_) { data = { message: text }; }
  if (!resp.ok) {
    const type = String(data.__type || 'Error').split('#').pop();
    const err = new ApiError(type, data.message || data.Message || resp.statusText, resp.status);
    if (type === 'MissingAuthenticationTokenException' && state.session) {
      state.session = null;
      renderSignIn('Your session has ended. Sign in again.');
    }
    throw err;
  }
  return data;
}

/** One CloudTrail operation, run as the signed-in user. */
function call(op, body = {}) {
  return request(`api/call/${op}`, {
    method: 'POST',
    headers: {
      'Content-Type': 'application/json',
      'X-OpenTrail-Csrf': state.session ? state.session.CsrfToken : '',
    },
    body: JSON.stringify(body),
  });
}

/** Whether the user's policies allow `action` (the server decides anyway). */
function may(action) {
  return !!(state.session && state.session.Permissions && state.session.Permissions[action]);
}

function guarded(action, attrs, label) {
  const allowed = may(action);
  return h('button', {
    type: 'button',
    ...attrs,
    disabled: !allowed,
    title: allowed ? null : `Your policies do not allow cloudtrail:${action}`,
  }, label);
}

// ---------------------------------------------------------------------------------------------
// Sign-in
// ---------------------------------------------------------------------------------------------

function renderSignIn(message) {
  stopTimers();
  $('#nav').hidden = true;
  $('#who').hidden = true;
  const error = h('p', { class: 'invalid', role: 'alert', id: 'signin-error' }, message || '');
  const form = h('form', { class: 'card signin', 'aria-labelledby': 'signin-title' },
    h('h1', { id: 'signin-title' }, 'Sign in to OpenTrail'),
    h('p', { class: 'muted' }, 'Use an access key of your OpenTrail user.'),
    h('div', { class: 'field' },
      h('label', { for: 'akid' }, 'Access key ID'),
      h('input', { id: 'akid', name: 'akid', autocomplete: 'username', required: true, spellcheck: 'false' })),
    h('div', { class: 'field' },
      h('label', { for: 'secret' }, 'Secret access key'),
      h('input', { id: 'secret', name: 'secret', type: 'password', autocomplete: 'current-password', required: true })),
    error,
    h('button', { type: 'submit', class: 'primary' }, 'Sign in'));
  form.addEventListener('submit', async (ev) => {
    ev.preventDefault();
    error.textContent = '';
    try {
      state.session = await request('api/signin', {
        method: 'POST',
        headers: { 'Content-Type': 'application/json' },
        body: JSON.stringify({ AccessKeyId: $('#akid').value.trim(), SecretAccessKey: $('#secret').value }),
      });
      signedIn();
    } catch (err) {
      error.textContent = err instanceof ApiError && err.type === 'InvalidClientTokenId'
        ? 'Sign-in failed: the access key ID or secret access key is not correct.'
        : `Sign-in failed: ${err}`;
    }
  });
  $('#main').replaceChildren(form);
  $('#akid').focus();
}

function signedIn() {
  const u = state.session.User;
  $('#whoami').textContent = u.UserName ? `${u.UserName} @ ${u.AccountId}` : `root @ ${u.AccountId}`;
  $('#whoami').title = u.Arn;
  $('#nav').hidden = false;
  $('#who').hidden = false;
  route();
}

async function signOut() {
  try {
    await request('api/signout', { method: 'POST', headers: { 'X-OpenTrail-Csrf': state.session.CsrfToken } });
  } catch (_) { /* the session is gone either way */ }
  state.session = null;
  renderSignIn('You are signed out.');
}

// ---------------------------------------------------------------------------------------------
// Routing
// ---------------------------------------------------------------------------------------------

function stopTimers() {
  for (const t of state.timers) clearInterval(t);
  state.timers = [];
}

function setPage(title, navKey, ...content) {
  document.title = `${title} · OpenTrail`;
  for (const a of document.querySelectorAll('#nav a')) {
    if (a.dataset.nav === navKey) a.setAttribute('aria-current', 'page');
    else a.removeAttribute('aria-current');
  }
  $('#main').replaceChildren(h('h1', {}, title), ...content);
}

async function route() {
  if (!state.session) return;
  stopTimers();
  clearAlert();
  if (state.flash) {
    showAlert(state.flash, true);
    state.flash = null;
  }
  const view = ++state.view;
  const hash = location.hash.slice(1) || '/';
  const [path, qs] = hash.split('?');
  const params = new URLSearchParams(qs || '');
  const parts = path.split('/').filter(Boolean).map(decodeURIComponent);
  const live = () => view === state.view;
  try {
    if (parts.length === 0) await viewDashboard(live);
    else if (parts[0] === 'events' && parts.length === 1) await viewEvents(live, params);
    else if (parts[0] === 'events') await viewEvent(live, parts[1]);
    else if (parts[0] === 'compare') await viewCompare(live, (params.get('ids') || '').split(',').filter(Boolean));
    else if (parts[0] === 'trails' && parts.length === 1) await viewTrails(live);
    else if (parts[0] === 'trails' && parts[1] === 'new') viewWizard(live);
    else if (parts[0] === 'trails') await viewTrail(live, parts[1]);
    else if (parts[0] === 'insights' && parts.length === 1) await viewInsights(live);
    else if (parts[0] === 'insights') await viewInsight(live, parts[1]);
    else if (parts[0] === 'alerts') await viewAlerts(live);
    else setPage('Not found', '', h('p', {}, 'There is no such page. ', h('a', { href: '#/' }, 'Go to the dashboard.')));
  } catch (err) {
    if (live() && state.session) {
      showError(err);
      if ($('#main .loading')) $('#main .loading').textContent = 'Could not load this page.';
    }
  }
  if (live()) $('#main').focus({ preventScroll: true });
}

// ---------------------------------------------------------------------------------------------
// Events: shared pieces
// ---------------------------------------------------------------------------------------------

const ATTRIBUTES = [
  ['EventName', 'Event name'], ['Username', 'User name'], ['EventSource', 'Event source'],
  ['ResourceType', 'Resource type'], ['ResourceName', 'Resource name'], ['AccessKeyId', 'AWS access key'],
  ['EventId', 'Event ID'], ['ReadOnly', 'Read-only'],
];

/** Adds the parsed record to a LookupEvents result. */
function withRecord(e) {
  let rec = {};
  try { rec = JSON.parse(e.CloudTrailEvent || '{}'); } catch (_) { rec = {}; }
  return { ...e, rec, timeMs: toMs(e.EventTime) };
}

const joinRes = (e, k) => (e.Resources || []).map((r) => r[k]).filter(Boolean).join(', ');

const COLUMNS = [
  { id: 'eventName', label: 'Event name', def: true, get: (e) => e.EventName },
  { id: 'eventTime', label: 'Event time', def: true, get: (e) => fmtTime(e.timeMs) },
  { id: 'username', label: 'User name', def: true, get: (e) => e.Username },
  { id: 'eventSource', label: 'Event source', def: true, get: (e) => e.EventSource },
  { id: 'resourceType', label: 'Resource type', def: true, get: (e) => joinRes(e, 'ResourceType') },
  { id: 'resourceName', label: 'Resource name', def: true, get: (e) => joinRes(e, 'ResourceName') },
  { id: 'accessKeyId', label: 'AWS access key', def: false, get: (e) => e.AccessKeyId },
  { id: 'region', label: 'AWS region', def: false, get: (e) => e.rec.awsRegion },
  { id: 'errorCode', label: 'Error code', def: false, get: (e) => e.rec.errorCode },
  { id: 'eventId', label: 'Event ID', def: false, get: (e) => e.EventId },
  { id: 'readOnly', label: 'Read-only', def: false, get: (e) => e.ReadOnly },
  { id: 'sourceIp', label: 'Source IP address', def: false, get: (e) => e.rec.sourceIPAddress },
];

function shownColumns() {
  const chosen = state.prefs.columns;
  return COLUMNS.filter((c) => (chosen ? chosen.includes(c.id) : c.def));
}

function eventLink(e) {
  return h('a', { href: `#/events/${encodeURIComponent(e.EventId)}` }, e.EventName || e.EventId);
}

function smallEventTable(events) {
  if (!events.length) return h('p', { class: 'muted' }, 'No events.');
  return h('div', { class: 'table-wrap' }, h('table', {},
    h('thead', {}, h('tr', {}, ['Event name', 'Event time', 'User name', 'Event source'].map((t) => h('th', { scope: 'col' }, t)))),
    h('tbody', {}, events.map((e) => h('tr', {},
      h('td', {}, eventLink(e)), h('td', { class: 'nowrap' }, fmtTime(e.timeMs)), h('td', {}, e.Username || ''), h('td', {}, e.EventSource || ''))))));
}

async function findEvent(id, insight = false) {
  const req = { LookupAttributes: [{ AttributeKey: 'EventId', AttributeValue: id }], MaxResults: 1 };
  if (insight) req.EventCategory = 'insight';
  const r = await call('LookupEvents', req);
  return r.Events && r.Events.length ? withRecord(r.Events[0]) : null;
}

// ---------------------------------------------------------------------------------------------
// Dashboard
// ---------------------------------------------------------------------------------------------

function card(title, ...content) {
  return h('section', { class: 'card', 'aria-label': title }, h('h2', {}, title), ...content);
}

async function loadInto(el, fn) {
  try {
    el.replaceChildren(await fn());
  } catch (err) {
    el.replaceChildren(h('p', { class: 'invalid' }, String(err)));
  }
}

async function trailRows() {
  const { trailList = [] } = await call('DescribeTrails', {});
  return Promise.all(trailList.map(async (t) => {
    let status = null;
    let error = null;
    try { status = await call('GetTrailStatus', { Name: t.TrailARN }); } catch (err) { error = err; }
    return { trail: t, status, error };
  }));
}

function loggingBadge(status) {
  if (!status) return h('span', { class: 'badge neutral' }, 'Unknown');
  return status.IsLogging ? h('span', { class: 'badge good' }, 'Logging') : h('span', { class: 'badge bad' }, 'Not logging');
}

function trailErrors(status) {
  if (!status) return '';
  return [status.LatestDeliveryError, status.LatestDigestDeliveryError, status.LatestNotificationError,
    status.LatestCloudWatchLogsDeliveryError].filter(Boolean).join('; ');
}

async function viewDashboard(live) {
  const recent = h('div', { class: 'loading' }, 'Loading…');
  const trails = h('div', { class: 'loading' }, 'Loading…');
  const insights = h('div', { class: 'loading' }, 'Loading…');
  setPage('Dashboard', 'dashboard', h('div', { class: 'grid' },
    h('section', { class: 'card wide', 'aria-label': 'Recent events' }, h('h2', {}, 'Recent events'), recent, h('p', {}, h('a', { href: '#/events' }, 'View full event history'))),
    card('Trails', trails, h('p', {}, h('a', { href: '#/trails' }, 'View all trails'))),
    card('Recent Insights', insights, h('p', {}, h('a', { href: '#/insights' }, 'View all Insights')))));
  await Promise.all([
    loadInto(recent, async () => smallEventTable(((await call('LookupEvents', { MaxResults: 10 })).Events || []).map(withRecord))),
    loadInto(trails, async () => {
      const rows = await trailRows();
      if (!rows.length) return h('p', { class: 'muted' }, 'No trails yet. ', h('a', { href: '#/trails/new' }, 'Create one.'));
      return h('ul', {}, rows.map(({ trail, status }) => h('li', {},
        h('a', { href: `#/trails/${encodeURIComponent(trail.Name)}` }, trail.Name), ' ', loggingBadge(status),
        status && status.LatestDeliveryTime ? h('span', { class: 'muted' }, ` last delivery ${fmtTime(toMs(status.LatestDeliveryTime))}`) : h('span', { class: 'muted' }, ' no delivery yet'),
        trailErrors(status) ? h('div', { class: 'invalid' }, trailErrors(status)) : null)));
    }),
    loadInto(insights, async () => {
      const r = await call('LookupEvents', { EventCategory: 'insight', MaxResults: 10 });
      const list = insightPairs((r.Events || []).map(withRecord)).slice(0, 5);
      if (!list.length) return h('p', { class: 'muted' }, 'No Insights events.');
      return h('ul', {}, list.map((i) => h('li', {},
        h('a', { href: `#/insights/${encodeURIComponent(i.id)}` }, `${i.name} · ${insightLabel(i.type)}`),
        h('span', { class: 'muted' }, ` ${fmtTime(i.start)}`))));
    }),
  ]);
  if (!live()) return;
}

// ---------------------------------------------------------------------------------------------
// Event history
// ---------------------------------------------------------------------------------------------

const PRESETS = { '30m': 30 * 60e3, '1h': 3600e3, '3h': 3 * 3600e3, '12h': 12 * 3600e3 };

/** The filter state a URL's query holds. */
function readFilter(params) {
  const filters = params.getAll('f').map((f) => {
    const i = f.indexOf('=');
    return i < 0 ? null : [f.slice(0, i), f.slice(i + 1)];
  }).filter(Boolean);
  return {
    filters,
    range: params.get('range') || 'all',
    start: params.get('start') ? Number(params.get('start')) : null,
    end: params.get('end') ? Number(params.get('end')) : null,
    hideReadOnly: params.get('ro') === '0',
  };
}

function filterHash(f) {
  const p = new URLSearchParams();
  for (const [k, v] of f.filters) p.append('f', `${k}=${v}`);
  if (f.range !== 'all') p.set('range', f.range);
  if (f.range === 'custom') {
    if (f.start !== null) p.set('start', String(f.start));
    if (f.end !== null) p.set('end', String(f.end));
  }
  if (f.hideReadOnly) p.set('ro', '0');
  const qs = p.toString();
  return qs ? `#/events?${qs}` : '#/events';
}

/** The LookupEvents request (without paging) for a filter state. */
function lookupRequest(f) {
  const attrs = f.filters.map(([k, v]) => ({ AttributeKey: k, AttributeValue: v }));
  if (f.hideReadOnly && !f.filters.some(([k]) => k === 'ReadOnly')) attrs.push({ AttributeKey: 'ReadOnly', AttributeValue: 'false' });
  const req = {};
  if (attrs.length) req.LookupAttributes = attrs;
  if (PRESETS[f.range]) req.StartTime = Math.floor((Date.now() - PRESETS[f.range]) / 1000);
  if (f.range === 'custom') {
    if (f.start !== null) req.StartTime = f.start;
    if (f.end !== null) req.EndTime = f.end;
  }
  return req;
}

/** `datetime-local` value ⇄ epoch seconds, in the zone the user chose. */
function inputToEpoch(v) {
  if (!v) return null;
  const ms = state.prefs.tz === 'utc' ? Date.parse(`${v}Z`) : new Date(v).getTime();
  return Number.isNaN(ms) ? null : Math.floor(ms / 1000);
}

function epochToInput(s) {
  if (s === null) return '';
  const d = new Date(s * 1000);
  if (state.prefs.tz === 'utc') return d.toISOString().slice(0, 16);
  return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())}T${pad(d.getHours())}:${pad(d.getMinutes())}`;
}

function filterRow(key, value) {
  const sel = h('select', { 'aria-label': 'Lookup attribute', class: 'f-key' },
    ATTRIBUTES.map(([k, label]) => h('option', { value: k, selected: k === key }, label)));
  const input = h('input', { 'aria-label': 'Attribute value', class: 'f-value', value: value || '', placeholder: 'Enter a value' });
  const row = h('div', { class: 'filter-row' }, sel, input,
    h('button', { type: 'button', 'aria-label': 'Remove this filter', onclick: () => row.remove() }, 'Remove'));
  return row;
}

async function viewEvents(live, params) {
  const f = readFilter(params);
  const rows = h('div', { class: 'filters', id: 'filter-rows' }, f.filters.map(([k, v]) => filterRow(k, v)));
  const range = h('select', { id: 'range' },
    [['all', 'Any time (history kept)'], ['30m', 'Last 30 minutes'], ['1h', 'Last hour'], ['3h', 'Last 3 hours'], ['12h', 'Last 12 hours'], ['custom', 'Custom range']]
      .map(([v, l]) => h('option', { value: v, selected: v === f.range }, l)));
  const start = h('input', { type: 'datetime-local', id: 'start', value: epochToInput(f.start) });
  const end = h('input', { type: 'datetime-local', id: 'end', value: epochToInput(f.end) });
  const custom = h('div', { class: 'filter-row', id: 'custom-range', hidden: f.range !== 'custom' },
    h('label', {}, `From (${state.prefs.tz === 'utc' ? 'UTC' : 'local time'})`, start),
    h('label', {}, 'To', end));
  range.addEventListener('change', () => { custom.hidden = range.value !== 'custom'; });
  const readOnly = h('input', { type: 'checkbox', id: 'show-ro', checked: !f.hideReadOnly });
  const form = h('form', { class: 'card', 'aria-label': 'Filter events' },
    h('h2', {}, 'Filter'),
    rows,
    h('div', { class: 'toolbar' },
      h('button', { type: 'button', id: 'add-filter', onclick: () => { rows.append(filterRow('EventName', '')); rows.lastChild.querySelector('input').focus(); } }, 'Add filter'),
      h('label', {}, 'Time range', range),
      custom,
      h('label', { class: 'inline' }, readOnly, 'Show read-only events'),
      h('span', { class: 'spacer' }),
      h('button', { type: 'submit', class: 'primary', id: 'apply' }, 'Apply')));
  form.addEventListener('submit', (ev) => {
    ev.preventDefault();
    const next = {
      filters: [...rows.querySelectorAll('.filter-row')].map((r) => [r.querySelector('.f-key').value, r.querySelector('.f-value').value.trim()]).filter(([, v]) => v),
      range: range.value,
      start: inputToEpoch(start.value),
      end: inputToEpoch(end.value),
      hideReadOnly: !readOnly.checked,
    };
    const target = filterHash(next);
    if (location.hash === target) route(); else location.hash = target;
  });

  const req = lookupRequest(f);
  const q = encodeURIComponent(JSON.stringify(req));
  const selected = new Map();
  const compareBtn = h('button', { type: 'button', id: 'compare', disabled: true }, 'Compare selected (0)');
  compareBtn.addEventListener('click', () => { location.hash = `#/compare?ids=${[...selected.keys()].map(encodeURIComponent).join(',')}`; });
  const columnsBox = h('details', { class: 'columns' }, h('summary', {}, 'Columns'),
    h('div', { role: 'group', 'aria-label': 'Columns shown' }, COLUMNS.map((c) => {
      const box = h('input', { type: 'checkbox', value: c.id, checked: shownColumns().includes(c) });
      box.addEventListener('change', () => {
        state.prefs.columns = [...columnsBox.querySelectorAll('input:checked')].map((i) => i.value);
        savePrefs();
        draw();
      });
      return h('label', { class: 'inline' }, box, c.label);
    })));
  const toolbar = h('div', { class: 'toolbar' },
    compareBtn,
    h('span', { class: 'spacer' }),
    h('a', { class: 'button', id: 'download-csv', href: `api/download?format=csv&q=${q}`, download: '' }, 'Download CSV'),
    h('a', { class: 'button', id: 'download-json', href: `api/download?format=json&q=${q}`, download: '' }, 'Download JSON'),
    columnsBox);
  const tableArea = h('div', { class: 'loading', 'aria-live': 'polite' }, 'Loading…');
  const pageInfo = h('span', { class: 'muted' });
  const prev = h('button', { type: 'button', id: 'prev', disabled: true }, 'Previous page');
  const next = h('button', { type: 'button', id: 'next', disabled: true }, 'Next page');
  setPage('Event history', 'events', form, toolbar, tableArea, h('div', { class: 'pager' }, pageInfo, prev, next));

  const tokens = [null];
  let page = 0;
  let events = [];
  let nextToken = null;

  function draw() {
    const cols = shownColumns();
    if (!events.length) {
      tableArea.replaceChildren(h('p', { class: 'muted', id: 'no-events' }, 'No events match these filters.'));
      return;
    }
    tableArea.replaceChildren(h('div', { class: 'table-wrap' }, h('table', { id: 'events-table' },
      h('thead', {}, h('tr', {}, h('th', { scope: 'col' }, h('span', { class: 'muted' }, 'Compare')), cols.map((c) => h('th', { scope: 'col', 'data-col': c.id }, c.label)))),
      h('tbody', {}, events.map((e) => {
        const box = h('input', { type: 'checkbox', 'aria-label': `Select ${e.EventName} ${e.EventId} for comparison`, checked: selected.has(e.EventId) });
        box.addEventListener('change', () => {
          if (box.checked) {
            if (selected.size >= 5) { box.checked = false; showAlert('At most five events can be compared.'); return; }
            selected.set(e.EventId, true);
          } else selected.delete(e.EventId);
          compareBtn.textContent = `Compare selected (${selected.size})`;
          compareBtn.disabled = selected.size < 2;
        });
        return h('tr', { 'data-event-id': e.EventId }, h('td', {}, box), cols.map((c) => h('td', { 'data-col': c.id }, c.id === 'eventName' ? eventLink(e) : (c.get(e) || ''))));
      })))));
  }

  async function load() {
    tableArea.classList.add('loading');
    const r = await call('LookupEvents', { ...req, MaxResults: 50, ...(tokens[page] ? { NextToken: tokens[page] } : {}) });
    if (!live()) return;
    events = (r.Events || []).map(withRecord);
    nextToken = r.NextToken || null;
    tokens[page + 1] = nextToken;
    prev.disabled = page === 0;
    next.disabled = !nextToken;
    pageInfo.textContent = `Page ${page + 1} · ${events.length} event${events.length === 1 ? '' : 's'}`;
    tableArea.classList.remove('loading');
    draw();
  }
  prev.addEventListener('click', () => { page -= 1; load().catch(showError); });
  next.addEventListener('click', () => { page += 1; load().catch(showError); });
  await load();
}

// ---------------------------------------------------------------------------------------------
// Event details and comparison
// ---------------------------------------------------------------------------------------------

const SUMMARY = [
  ['Event time', (e) => fmtTime(e.timeMs)], ['User name', (e) => e.Username], ['AWS access key', (e) => e.AccessKeyId],
  ['Event ID', (e) => e.EventId], ['Request ID', (e) => e.rec.requestID], ['Event source', (e) => e.EventSource],
  ['AWS region', (e) => e.rec.awsRegion], ['Source IP address', (e) => e.rec.sourceIPAddress],
  ['User agent', (e) => e.rec.userAgent], ['Error code', (e) => e.rec.errorCode], ['Error message', (e) => e.rec.errorMessage],
  ['Read-only', (e) => e.ReadOnly], ['Event type', (e) => e.rec.eventType],
  ['Identity ARN', (e) => e.rec.userIdentity && e.rec.userIdentity.arn],
];

async function copyText(text, status) {
  try {
    await navigator.clipboard.writeText(text);
    status.textContent = 'Copied to the clipboard.';
  } catch (_) {
    status.textContent = 'Copying is not allowed here; select the text and copy it.';
  }
}

async function viewEvent(live, id) {
  setPage('Event', 'events', h('p', { class: 'loading' }, 'Loading…'));
  const e = await findEvent(id);
  if (!live()) return;
  if (!e) {
    setPage('Event not found', 'events', h('p', {}, `No event with ID ${id} is in event history. `, h('a', { href: '#/events' }, 'Back to event history')));
    return;
  }
  const json = JSON.stringify(e.rec, null, 2);
  const status = h('span', { class: 'muted', 'aria-live': 'polite', id: 'copy-status' });
  const resources = e.Resources || [];
  setPage(e.EventName || 'Event', 'events',
    h('p', {}, h('a', { href: '#/events' }, '← Event history')),
    h('div', { class: 'grid' },
      card('Details', h('dl', { class: 'summary', id: 'event-summary' }, SUMMARY.flatMap(([label, get]) => {
        const v = get(e);
        return v === undefined || v === null || v === '' ? [] : [h('dt', {}, label), h('dd', {}, String(v))];
      }))),
      card('Resources', resources.length
        ? h('div', { class: 'table-wrap' }, h('table', { id: 'resources' },
          h('thead', {}, h('tr', {}, h('th', { scope: 'col' }, 'Resource type'), h('th', { scope: 'col' }, 'Resource name'))),
          h('tbody', {}, resources.map((r) => h('tr', {},
            h('td', {}, r.ResourceType ? h('a', { href: filterHash({ filters: [['ResourceType', r.ResourceType]], range: 'all', hideReadOnly: false }) }, r.ResourceType) : ''),
            h('td', {}, r.ResourceName ? h('a', { href: filterHash({ filters: [['ResourceName', r.ResourceName]], range: 'all', hideReadOnly: false }), title: 'Other events on this resource' }, r.ResourceName) : ''))))))
        : h('p', { class: 'muted' }, 'This event names no resources.'))),
    card('Event record',
      h('div', { class: 'toolbar' }, h('button', { type: 'button', id: 'copy', onclick: () => copyText(json, status) }, 'Copy JSON'), status),
      h('pre', { class: 'json', id: 'record-json', tabindex: '0' }, json)));
}

async function viewCompare(live, ids) {
  if (ids.length < 2 || ids.length > 5) {
    setPage('Compare events', 'events', h('p', {}, 'Choose two to five events in event history to compare.'));
    return;
  }
  setPage('Compare events', 'events', h('p', { class: 'loading' }, 'Loading…'));
  const events = await Promise.all(ids.map((id) => findEvent(id)));
  if (!live()) return;
  const found = events.filter(Boolean);
  const rows = [['Event name', (e) => e.EventName], ...SUMMARY];
  setPage('Compare events', 'events',
    h('p', {}, h('a', { href: '#/events' }, '← Event history'), found.length < ids.length ? h('span', { class: 'invalid' }, ` ${ids.length - found.length} event(s) not found.`) : null),
    h('div', { class: 'table-wrap' }, h('table', { class: 'compare', id: 'compare-table' },
      h('thead', {}, h('tr', {}, h('th', { scope: 'col' }, 'Field'), found.map((e) => h('th', { scope: 'col' }, eventLink(e))))),
      h('tbody', {}, rows.map(([label, get]) => {
        const vals = found.map((e) => { const v = get(e); return v === undefined || v === null ? '' : String(v); });
        const differ = new Set(vals).size > 1;
        return h('tr', {}, h('th', { scope: 'row' }, label), vals.map((v) => h('td', { class: differ ? 'diff' : null }, v)));
      })))),
    h('h2', {}, 'Records'),
    h('div', { class: 'grid' }, found.map((e) => h('pre', { class: 'json', tabindex: '0' }, JSON.stringify(e.rec, null, 2)))));
}

// ---------------------------------------------------------------------------------------------
// Trails
// ---------------------------------------------------------------------------------------------

async function viewTrails(live) {
  setPage('Trails', 'trails', h('p', { class: 'loading' }, 'Loading…'));
  const rows = await trailRows();
  if (!live()) return;
  setPage('Trails', 'trails',
    h('div', { class: 'toolbar' }, h('span', { class: 'spacer' }),
      guarded('CreateTrail', { class: 'primary', id: 'create-trail', onclick: () => { location.hash = '#/trails/new'; } }, 'Create trail')),
    rows.length ? h('div', { class: 'table-wrap' }, h('table', { id: 'trails-table' },
      h('thead', {}, h('tr', {}, ['Name', 'Home region', 'Multi-region', 'S3 bucket', 'Status', 'Last delivery', 'Errors'].map((t) => h('th', { scope: 'col' }, t)))),
      h('tbody', {}, rows.map(({ trail, status, error }) => h('tr', {},
        h('td', {}, h('a', { href: `#/trails/${encodeURIComponent(trail.Name)}` }, trail.Name)),
        h('td', {}, trail.HomeRegion || ''),
        h('td', {}, trail.IsMultiRegionTrail ? 'Yes' : 'No'),
        h('td', {}, trail.S3BucketName || ''),
        h('td', {}, loggingBadge(status)),
        h('td', {}, status && status.LatestDeliveryTime ? fmtTime(toMs(status.LatestDeliveryTime)) : '—'),
        h('td', { class: 'invalid' }, error ? String(error) : trailErrors(status)))))))
      : h('p', { class: 'muted' }, 'No trails yet.'));
}

/** CloudTrail's trail name rules; the message says what is wrong, or null. */
function trailNameProblem(name) {
  if (name.length < 3 || name.length > 128) return 'Trail names are 3 to 128 characters long.';
  if (!/^[A-Za-z0-9._-]+$/.test(name)) return 'Use only ASCII letters, numbers, periods, underscores and dashes.';
  if (!/^[A-Za-z0-9]/.test(name) || !/[A-Za-z0-9]$/.test(name)) return 'Start and end with a letter or number.';
  if (/[._-]{2}/.test(name)) return 'Periods, underscores and dashes cannot be next to each other.';
  if (/^\d+\.\d+\.\d+\.\d+$/.test(name)) return 'A trail name cannot look like an IP address.';
  return null;
}

function bucketProblem(name) {
  if (!name) return 'A bucket name is required.';
  if (name.length < 3 || name.length > 63 || !/^[a-z0-9][a-z0-9.-]*[a-z0-9]$/.test(name)) return 'Bucket names are 3 to 63 lowercase letters, numbers, periods and dashes.';
  return null;
}

function field(label, input, hint, problemEl) {
  return h('div', { class: 'field' }, h('label', { for: input.id }, label), input,
    hint ? h('span', { class: 'hint', id: `${input.id}-hint` }, hint) : null, problemEl || null);
}

function check(label, input) {
  return h('div', { class: 'field' }, h('label', { class: 'inline' }, input, label));
}

function tagEditor(tags) {
  const list = h('div', { class: 'filters', id: 'tag-rows' });
  const add = (k = '', v = '') => {
    const row = h('div', { class: 'filter-row' },
      h('input', { 'aria-label': 'Tag key', class: 'tag-key', value: k, placeholder: 'Key' }),
      h('input', { 'aria-label': 'Tag value', class: 'tag-value', value: v, placeholder: 'Value' }),
      h('button', { type: 'button', onclick: () => row.remove() }, 'Remove'));
    list.append(row);
  };
  for (const t of tags) add(t.Key, t.Value);
  return {
    el: h('div', {}, list, h('button', { type: 'button', id: 'add-tag', onclick: () => add() }, 'Add tag')),
    read: () => [...list.querySelectorAll('.filter-row')].map((r) => ({ Key: r.querySelector('.tag-key').value.trim(), Value: r.querySelector('.tag-value').value }))
      .filter((t) => t.Key),
  };
}

const STEPS = ['Trail attributes', 'Log events', 'Review and create'];

function viewWizard(live) {
  if (!may('CreateTrail')) {
    setPage('Create trail', 'trails', h('p', {}, 'Your policies do not allow cloudtrail:CreateTrail.'));
    return;
  }
  const s = state.session;
  const w = {
    step: 0, name: '', bucket: '', prefix: '', validation: true, multiRegion: true, kms: '', sns: '', logGroup: '', role: '',
    tags: [], mode: 'basic', management: true, readWrite: 'All', excludeKms: false, excludeRds: false,
    dataType: '', dataValues: '', advanced: '[\n  {\n    "Name": "Management events",\n    "FieldSelectors": [{ "Field": "eventCategory", "Equals": ["Management"] }]\n  }\n]',
    callRate: false, errorRate: false, start: true,
  };
  const body = h('div', {});
  const steps = h('ol', { class: 'steps' });
  setPage('Create trail', 'trails', h('p', {}, h('a', { href: '#/trails' }, '← Trails')), steps, body);

  function drawSteps() {
    steps.replaceChildren(...STEPS.map((t, i) => h('li', { 'aria-current': i === w.step ? 'step' : null }, `${i + 1}. ${t}`)));
  }

  function step1() {
    const nameProblem = h('span', { class: 'invalid', id: 'name-problem', 'aria-live': 'polite' });
    const name = h('input', { id: 'trail-name', value: w.name, 'aria-describedby': 'trail-name-hint name-problem', autocomplete: 'off' });
    const validateName = () => {
      const p = name.value ? trailNameProblem(name.value) : 'A trail name is required.';
      nameProblem.textContent = name.value || w.touched ? (p || '') : '';
      name.setAttribute('aria-invalid', p && (name.value || w.touched) ? 'true' : 'false');
      return p;
    };
    name.addEventListener('input', validateName);
    const bucketProb = h('span', { class: 'invalid', id: 'bucket-problem', 'aria-live': 'polite' });
    const bucket = h('input', { id: 'bucket', value: w.bucket, 'aria-describedby': 'bucket-problem', autocomplete: 'off' });
    bucket.addEventListener('input', () => { bucketProb.textContent = bucket.value ? (bucketProblem(bucket.value) || '') : ''; });
    const prefix = h('input', { id: 'prefix', value: w.prefix });
    const validation = h('input', { type: 'checkbox', id: 'validation', checked: w.validation });
    const multi = h('input', { type: 'checkbox', id: 'multi-region', checked: w.multiRegion });
    const kms = h('input', { id: 'kms', value: w.kms, placeholder: 'alias/name, key ID or key ARN' });
    const sns = h('select', { id: 'sns' }, h('option', { value: '' }, 'No notifications'),
      (s.SnsTopics || []).map((t) => h('option', { value: t, selected: t === w.sns }, t)));
    const group = h('select', { id: 'log-group' }, h('option', { value: '' }, 'No log streaming'),
      (s.LogGroups || []).map((t) => h('option', { value: t, selected: t === w.logGroup }, t)));
    const role = h('input', { id: 'log-role', value: w.role, placeholder: `arn:aws:iam::${s.AccountId}:role/CloudTrail_CloudWatchLogs` });
    const tags = tagEditor(w.tags);
    body.replaceChildren(h('form', { class: 'card', id: 'step1', novalidate: true, onsubmit: (ev) => {
      ev.preventDefault();
      w.touched = true;
      const np = validateName();
      const bp = bucketProblem(bucket.value.trim());
      bucketProb.textContent = bp || '';
      if (np || bp) { (np ? name : bucket).focus(); return; }
      Object.assign(w, {
        name: name.value, bucket: bucket.value.trim(), prefix: prefix.value.trim(), validation: validation.checked,
        multiRegion: multi.checked, kms: kms.value.trim(), sns: sns.value, logGroup: group.value, role: role.value.trim(), tags: tags.read(), step: 1,
      });
      draw();
    } },
    h('h2', {}, 'Trail attributes'),
    field('Trail name', name, '3–128 letters, numbers, periods, underscores or dashes.', nameProblem),
    field('S3 bucket', bucket, 'Where log files are delivered (a local directory bucket by default).', bucketProb),
    field('Log file prefix (optional)', prefix),
    check('Log file validation (hourly signed digest files)', validation),
    check('Apply the trail to all regions', multi),
    field('Log file SSE-KMS encryption key (optional)', kms, 'Leave empty to deliver unencrypted gzip files.'),
    field('SNS notification on delivery', sns),
    field('Log streaming (CloudWatch Logs log group)', group),
    field('Log streaming role ARN', role),
    h('div', { class: 'field' }, h('span', { class: 'label' }, 'Tags'), tags.el),
    h('div', { class: 'actions' }, h('a', { class: 'button', href: '#/trails' }, 'Cancel'), h('button', { type: 'submit', class: 'primary', id: 'next-step' }, 'Next'))));
    name.focus();
  }

  function step2() {
    const basic = h('input', { type: 'radio', name: 'mode', id: 'mode-basic', value: 'basic', checked: w.mode === 'basic' });
    const adv = h('input', { type: 'radio', name: 'mode', id: 'mode-advanced', value: 'advanced', checked: w.mode === 'advanced' });
    const management = h('input', { type: 'checkbox', id: 'mgmt', checked: w.management });
    const rw = h('select', { id: 'read-write' }, [['All', 'Read and write'], ['ReadOnly', 'Read only'], ['WriteOnly', 'Write only']]
      .map(([v, l]) => h('option', { value: v, selected: v === w.readWrite }, l)));
    const exKms = h('input', { type: 'checkbox', id: 'exclude-kms', checked: w.excludeKms });
    const exRds = h('input', { type: 'checkbox', id: 'exclude-rds', checked: w.excludeRds });
    const dataType = h('select', { id: 'data-type' }, [['', 'No data events'], ['AWS::S3::Object', 'S3 objects'], ['AWS::Lambda::Function', 'Lambda functions'], ['AWS::DynamoDB::Table', 'DynamoDB tables']]
      .map(([v, l]) => h('option', { value: v, selected: v === w.dataType }, l)));
    const dataValues = h('textarea', { id: 'data-values', rows: '3', placeholder: 'arn:aws:s3:::my-bucket/ (one per line; arn:aws:s3 for all)' }, w.dataValues);
    const advanced = h('textarea', { id: 'advanced', rows: '10', spellcheck: 'false' }, w.advanced);
    const advProblem = h('span', { class: 'invalid', id: 'advanced-problem', 'aria-live': 'polite' });
    const callRate = h('input', { type: 'checkbox', id: 'insights-call-rate', checked: w.callRate });
    const errorRate = h('input', { type: 'checkbox', id: 'insights-error-rate', checked: w.errorRate });
    const basicBox = h('fieldset', { id: 'basic-box' }, h('legend', {}, 'Basic event selectors'),
      check('Management events', management), field('API activity', rw),
      check('Exclude AWS KMS events', exKms), check('Exclude Amazon RDS Data API events', exRds),
      field('Data events', dataType), field('Data event resources', dataValues));
    const advBox = h('fieldset', { id: 'advanced-box' }, h('legend', {}, 'Advanced event selectors (JSON)'), advanced, advProblem);
    const sync = () => { basicBox.hidden = !basic.checked; advBox.hidden = !adv.checked; };
    basic.addEventListener('change', sync);
    adv.addEventListener('change', sync);
    body.replaceChildren(h('form', { class: 'card', id: 'step2', onsubmit: (ev) => {
      ev.preventDefault();
      const mode = adv.checked ? 'advanced' : 'basic';
      if (mode === 'advanced') {
        try {
          const parsed = JSON.parse(advanced.value);
          if (!Array.isArray(parsed)) throw new Error('the selectors must be a JSON array');
        } catch (err) { advProblem.textContent = `Not valid: ${err.message}`; advanced.focus(); return; }
      }
      Object.assign(w, {
        mode, management: management.checked, readWrite: rw.value, excludeKms: exKms.checked, excludeRds: exRds.checked,
        dataType: dataType.value, dataValues: dataValues.value, advanced: advanced.value, callRate: callRate.checked, errorRate: errorRate.checked, step: 2,
      });
      draw();
    } },
    h('h2', {}, 'Log events'),
    h('fieldset', {}, h('legend', {}, 'Event selectors'),
      h('label', { class: 'inline' }, basic, 'Basic'), h('label', { class: 'inline' }, adv, 'Advanced')),
    basicBox, advBox,
    h('fieldset', {}, h('legend', {}, 'Insights events'), check('API call rate', callRate), check('API error rate', errorRate)),
    h('div', { class: 'actions' }, h('button', { type: 'button', onclick: () => { w.step = 0; draw(); } }, 'Previous'), h('button', { type: 'submit', class: 'primary', id: 'next-step' }, 'Next'))));
    sync();
  }

  function selectorsRequest() {
    if (w.mode === 'advanced') return { TrailName: w.name, AdvancedEventSelectors: JSON.parse(w.advanced) };
    const exclude = [];
    if (w.excludeKms) exclude.push('kms.amazonaws.com');
    if (w.excludeRds) exclude.push('rdsdata.amazonaws.com');
    const sel = { ReadWriteType: w.readWrite, IncludeManagementEvents: w.management };
    if (exclude.length) sel.ExcludeManagementEventSources = exclude;
    const values = w.dataValues.split('\n').map((v) => v.trim()).filter(Boolean);
    if (w.dataType && values.length) sel.DataResources = [{ Type: w.dataType, Values: values }];
    return { TrailName: w.name, EventSelectors: [sel] };
  }

  function step3() {
    const start = h('input', { type: 'checkbox', id: 'start-logging', checked: w.start });
    const insights = [w.callRate && 'API call rate', w.errorRate && 'API error rate'].filter(Boolean).join(', ') || 'Off';
    const rows = [['Trail name', w.name], ['S3 bucket', w.bucket], ['Log file prefix', w.prefix || '—'],
      ['Log file validation', w.validation ? 'On' : 'Off'], ['All regions', w.multiRegion ? 'Yes' : 'No'],
      ['Encryption key', w.kms || 'None'], ['SNS topic', w.sns || 'None'], ['Log streaming', w.logGroup || 'None'],
      ['Tags', w.tags.map((t) => `${t.Key}=${t.Value}`).join(', ') || 'None'], ['Insights', insights]];
    const create = h('button', { type: 'submit', class: 'primary', id: 'create' }, 'Create trail');
    body.replaceChildren(h('form', { class: 'card', id: 'step3', onsubmit: async (ev) => {
      ev.preventDefault();
      create.disabled = true;
      create.textContent = 'Creating…';
      let created = false;
      try {
        const req = { Name: w.name, S3BucketName: w.bucket, EnableLogFileValidation: w.validation, IsMultiRegionTrail: w.multiRegion };
        if (w.prefix) req.S3KeyPrefix = w.prefix;
        if (w.kms) req.KmsKeyId = w.kms;
        if (w.sns) req.SnsTopicName = w.sns;
        if (w.logGroup) { req.CloudWatchLogsLogGroupArn = w.logGroup; req.CloudWatchLogsRoleArn = w.role; }
        if (w.tags.length) req.TagsList = w.tags;
        await call('CreateTrail', req);
        created = true;
        await call('PutEventSelectors', selectorsRequest());
        const types = [w.callRate && 'ApiCallRateInsight', w.errorRate && 'ApiErrorRateInsight'].filter(Boolean);
        if (types.length) await call('PutInsightSelectors', { TrailName: w.name, InsightSelectors: types.map((t) => ({ InsightType: t })) });
        if (start.checked) await call('StartLogging', { Name: w.name });
        go(`#/trails/${encodeURIComponent(w.name)}`, `Trail ${w.name} created${start.checked ? ' and logging' : ''}.`);
      } catch (err) {
        create.disabled = false;
        create.textContent = 'Create trail';
        showError(err);
        if (created) showAlert(`The trail was created, but a later step failed: ${err}. Finish it on the trail's page.`);
      }
    } },
    h('h2', {}, 'Review and create'),
    h('dl', { class: 'summary', id: 'review' }, rows.flatMap(([k, v]) => [h('dt', {}, k), h('dd', {}, v)])),
    h('h2', {}, 'Event selectors'),
    h('pre', { class: 'json' }, JSON.stringify(selectorsRequest(), null, 2)),
    check('Start logging when the trail is created', start),
    h('div', { class: 'actions' }, h('button', { type: 'button', onclick: () => { w.step = 1; draw(); } }, 'Previous'), create)));
  }

  function draw() {
    if (!live()) return;
    drawSteps();
    [step1, step2, step3][w.step]();
  }
  draw();
}

function dl(id, rows) {
  return h('dl', { class: 'summary', id }, rows.flatMap(([k, v]) => [h('dt', {}, k), h('dd', {}, v === undefined || v === null || v === '' ? '—' : v)]));
}

async function viewTrail(live, name) {
  setPage(name, 'trails', h('p', { class: 'loading' }, 'Loading…'));
  const { Trail: t } = await call('GetTrail', { Name: name });
  const [status, selectors, insightSel, tagsResp] = await Promise.all([
    call('GetTrailStatus', { Name: t.TrailARN }),
    call('GetEventSelectors', { TrailName: t.TrailARN }),
    call('GetInsightSelectors', { TrailName: t.TrailARN }).catch((err) => (err.type === 'InsightNotEnabledException' ? { InsightSelectors: [] } : Promise.reject(err))),
    call('ListTags', { ResourceIdList: [t.TrailARN] }),
  ]);
  if (!live()) return;
  const tags = ((tagsResp.ResourceTagList || [])[0] || {}).TagsList || [];
  const insightTypes = (insightSel.InsightSelectors || []).map((s) => s.InsightType);
  const refresh = () => route();

  const statusBox = h('div', {});
  const drawStatus = (st) => statusBox.replaceChildren(dl('trail-status', [
    ['Logging', loggingBadge(st)],
    ['Started logging', fmtTime(toMs(st.StartLoggingTime))],
    ['Stopped logging', fmtTime(toMs(st.StopLoggingTime))],
    ['Last log file delivered', fmtTime(toMs(st.LatestDeliveryTime))],
    ['Last delivery error', st.LatestDeliveryError],
    ['Last digest file delivered', fmtTime(toMs(st.LatestDigestDeliveryTime))],
    ['Last digest error', st.LatestDigestDeliveryError],
    ['Last notification', fmtTime(toMs(st.LatestNotificationTime))],
    ['Last notification error', st.LatestNotificationError],
  ]));
  drawStatus(status);
  state.timers.push(setInterval(async () => {
    try {
      const st = await call('GetTrailStatus', { Name: t.TrailARN });
      if (live()) drawStatus(st);
    } catch (_) { /* shown on the next full load */ }
  }, 3000));

  const act = async (fn, done) => {
    try { await fn(); state.flash = done; await refresh(); } catch (err) { showError(err); }
  };
  const logging = status.IsLogging
    ? guarded('StopLogging', { id: 'stop-logging', onclick: () => act(() => call('StopLogging', { Name: t.TrailARN }), `Logging stopped for ${t.Name}.`) }, 'Stop logging')
    : guarded('StartLogging', { id: 'start-logging', class: 'primary', onclick: () => act(() => call('StartLogging', { Name: t.TrailARN }), `Logging started for ${t.Name}.`) }, 'Start logging');
  const insightsBtn = guarded('PutInsightSelectors', {
    id: 'toggle-insights',
    onclick: () => act(() => call('PutInsightSelectors', {
      TrailName: t.TrailARN,
      InsightSelectors: insightTypes.length ? [] : [{ InsightType: 'ApiCallRateInsight' }, { InsightType: 'ApiErrorRateInsight' }],
    }), insightTypes.length ? 'Insights turned off.' : 'Insights turned on.'),
  }, insightTypes.length ? 'Turn Insights off' : 'Turn Insights on');

  const confirm = h('dialog', { id: 'confirm-delete', 'aria-labelledby': 'confirm-title' },
    h('h2', { id: 'confirm-title' }, `Delete trail ${t.Name}?`),
    h('p', {}, 'Logging stops and the trail is removed. Log files already delivered stay in the bucket.'),
    h('div', { class: 'actions' },
      h('button', { type: 'button', onclick: () => confirm.close() }, 'Cancel'),
      h('button', { type: 'button', class: 'danger', id: 'confirm-delete-yes', onclick: async () => {
        confirm.close();
        try { await call('DeleteTrail', { Name: t.TrailARN }); go('#/trails', `Trail ${t.Name} deleted.`); } catch (err) { showError(err); }
      } }, 'Delete')));

  const editForm = trailEditForm(t, act);
  const tagKey = h('input', { id: 'new-tag-key', 'aria-label': 'New tag key', placeholder: 'Key' });
  const tagValue = h('input', { id: 'new-tag-value', 'aria-label': 'New tag value', placeholder: 'Value' });
  setPage(t.Name, 'trails',
    h('p', {}, h('a', { href: '#/trails' }, '← Trails')),
    h('div', { class: 'toolbar' }, logging,
      guarded('UpdateTrail', { id: 'edit-trail', onclick: () => { editForm.hidden = !editForm.hidden; if (!editForm.hidden) editForm.querySelector('input').focus(); } }, 'Edit'),
      insightsBtn,
      guarded('DeleteTrail', { class: 'danger', id: 'delete-trail', onclick: () => confirm.showModal() }, 'Delete trail')),
    editForm, confirm,
    h('div', { class: 'grid' },
      card('Status', statusBox),
      card('Settings', dl('trail-settings', [
        ['ARN', t.TrailARN], ['Home region', t.HomeRegion], ['All regions', t.IsMultiRegionTrail ? 'Yes' : 'No'],
        ['Organization trail', t.IsOrganizationTrail ? 'Yes' : 'No'], ['S3 bucket', t.S3BucketName], ['Log file prefix', t.S3KeyPrefix],
        ['Log file validation', t.LogFileValidationEnabled ? 'On' : 'Off'], ['Encryption key', t.KmsKeyId], ['SNS topic', t.SnsTopicARN],
        ['Log streaming', t.CloudWatchLogsLogGroupArn], ['Insights', insightTypes.length ? insightTypes.join(', ') : 'Off'],
      ]))),
    card('Event selectors', h('pre', { class: 'json', id: 'selectors-json' }, JSON.stringify(selectors.AdvancedEventSelectors ? { AdvancedEventSelectors: selectors.AdvancedEventSelectors } : { EventSelectors: selectors.EventSelectors }, null, 2))),
    card('Tags',
      tags.length ? h('div', { class: 'table-wrap' }, h('table', { id: 'tags-table' },
        h('thead', {}, h('tr', {}, h('th', { scope: 'col' }, 'Key'), h('th', { scope: 'col' }, 'Value'), h('th', { scope: 'col' }, h('span', { class: 'muted' }, 'Action')))),
        h('tbody', {}, tags.map((tag) => h('tr', {}, h('td', {}, tag.Key), h('td', {}, tag.Value || ''),
          h('td', {}, guarded('RemoveTags', { onclick: () => act(() => call('RemoveTags', { ResourceId: t.TrailARN, TagsList: [{ Key: tag.Key }] }), `Tag ${tag.Key} removed.`) }, 'Remove')))))))
        : h('p', { class: 'muted' }, 'No tags.'),
      h('form', { class: 'toolbar', onsubmit: (ev) => {
        ev.preventDefault();
        if (!tagKey.value.trim()) { tagKey.focus(); return; }
        act(() => call('AddTags', { ResourceId: t.TrailARN, TagsList: [{ Key: tagKey.value.trim(), Value: tagValue.value }] }), `Tag ${tagKey.value.trim()} added.`);
      } }, tagKey, tagValue, guarded('AddTags', { type: 'submit', id: 'add-tag' }, 'Add tag'))));
}

function trailEditForm(t, act) {
  const bucket = h('input', { id: 'edit-bucket', value: t.S3BucketName || '' });
  const prefix = h('input', { id: 'edit-prefix', value: t.S3KeyPrefix || '' });
  const validation = h('input', { type: 'checkbox', id: 'edit-validation', checked: !!t.LogFileValidationEnabled });
  const multi = h('input', { type: 'checkbox', id: 'edit-multi', checked: !!t.IsMultiRegionTrail });
  const kms = h('input', { id: 'edit-kms', value: t.KmsKeyId || '' });
  const sns = h('select', { id: 'edit-sns' }, h('option', { value: '' }, 'No notifications'),
    (state.session.SnsTopics || []).map((n) => h('option', { value: n, selected: (t.SnsTopicName || '') === n }, n)));
  const form = h('form', { class: 'card', id: 'edit-form', hidden: true, 'aria-label': 'Edit trail', onsubmit: (ev) => {
    ev.preventDefault();
    // Only what is set is sent: an empty box leaves that setting as it is.
    const req = { Name: t.TrailARN, S3BucketName: bucket.value.trim(), EnableLogFileValidation: validation.checked, IsMultiRegionTrail: multi.checked };
    if (prefix.value.trim()) req.S3KeyPrefix = prefix.value.trim();
    if (kms.value.trim() && kms.value.trim() !== (t.KmsKeyId || '')) req.KmsKeyId = kms.value.trim();
    if (sns.value) req.SnsTopicName = sns.value;
    act(() => call('UpdateTrail', req), `Trail ${t.Name} updated.`);
  } },
  h('h2', {}, 'Edit trail'),
  field('S3 bucket', bucket), field('Log file prefix', prefix), check('Log file validation', validation),
  check('Apply the trail to all regions', multi), field('Encryption key', kms), field('SNS topic', sns),
  h('div', { class: 'actions' }, h('button', { type: 'button', onclick: () => { form.hidden = true; } }, 'Cancel'), h('button', { type: 'submit', class: 'primary', id: 'save-trail' }, 'Save changes')));
  return form;
}

// ---------------------------------------------------------------------------------------------
// Insights
// ---------------------------------------------------------------------------------------------

function insightLabel(type) {
  return type === 'ApiErrorRateInsight' ? 'API error rate' : 'API call rate';
}

/** One entry per Insight (its Start and End records joined by sharedEventID), newest first. */
function insightPairs(events) {
  const byId = new Map();
  for (const e of events) {
    const d = e.rec.insightDetails || {};
    const key = e.rec.sharedEventID || e.EventId;
    const item = byId.get(key) || { id: null, name: d.eventName || e.EventName, source: d.eventSource || e.EventSource, type: d.insightType, errorCode: d.errorCode, start: null, end: null, startEvent: null, endEvent: null };
    if (d.state === 'End') { item.end = e.timeMs; item.endEvent = e; }
    else { item.start = e.timeMs; item.startEvent = e; item.id = e.EventId; }
    if (!item.id) item.id = e.EventId;
    byId.set(key, item);
  }
  return [...byId.values()].sort((a, b) => (b.start || b.end) - (a.start || a.end));
}

async function viewInsights(live) {
  setPage('Insights', 'insights', h('p', { class: 'loading' }, 'Loading…'));
  const events = [];
  let token = null;
  do {
    const r = await call('LookupEvents', { EventCategory: 'insight', MaxResults: 50, ...(token ? { NextToken: token } : {}) });
    events.push(...(r.Events || []).map(withRecord));
    token = r.NextToken;
  } while (token && events.length < 1000);
  if (!live()) return;
  const list = insightPairs(events);
  setPage('Insights', 'insights',
    h('p', { class: 'muted' }, 'Unusual API call rates and error rates, found against each API\'s own baseline. Turn Insights on in a trail\'s settings.'),
    list.length ? h('div', { class: 'table-wrap' }, h('table', { id: 'insights-table' },
      h('thead', {}, h('tr', {}, ['API', 'Event source', 'Insight type', 'Error code', 'Start', 'End'].map((t) => h('th', { scope: 'col' }, t)))),
      h('tbody', {}, list.map((i) => h('tr', {},
        h('td', {}, h('a', { href: `#/insights/${encodeURIComponent(i.id)}` }, i.name)),
        h('td', {}, i.source || ''), h('td', {}, insightLabel(i.type)), h('td', {}, i.errorCode || ''),
        h('td', {}, fmtTime(i.start)), h('td', {}, i.end ? fmtTime(i.end) : 'ongoing'))))))
      : h('p', { class: 'muted', id: 'no-insights' }, 'No Insights events yet.'));
}

// ---------------------------------------------------------------------------------------------
// Alerts: rules, subscriptions with their delivery state, dead letters
// ---------------------------------------------------------------------------------------------

function isoTime(v) {
  return v ? fmtTime(Date.parse(v)) : '—';
}

function table(id, heads, rows, empty) {
  if (!rows.length) return h('p', { class: 'muted', id: `${id}-empty` }, empty);
  return h('div', { class: 'table-wrap' }, h('table', { id },
    h('thead', {}, h('tr', {}, heads.map((t) => h('th', { scope: 'col' }, t)))),
    h('tbody', {}, rows)));
}

async function viewAlerts(live) {
  setPage('Alerts', 'alerts', h('p', { class: 'loading' }, 'Loading…'));
  const [rules, subs, dead] = await Promise.all([
    call('events.ListRules', { Limit: 100 }),
    call('sns.ListSubscriptions', {}),
    call('sns.ListDeadLetters', { MaxItems: 50 }),
  ]);
  const targets = await Promise.all((rules.Rules || []).map((r) => call('events.ListTargetsByRule', { Rule: r.Name })));
  if (!live()) return;
  const endpointOf = Object.fromEntries((subs.Subscriptions || []).map((s) => [s.SubscriptionArn, `${s.Protocol}: ${s.Endpoint}`]));
  const topicName = (arn) => String(arn || '').split(':').pop();
  const ruleRows = (rules.Rules || []).map((r, i) => h('tr', { 'data-rule': r.Name },
    h('td', {}, r.Name),
    h('td', {}, h('span', { class: `badge ${r.State === 'DISABLED' ? 'neutral' : 'good'}` }, r.State === 'DISABLED' ? 'Disabled' : 'Enabled')),
    h('td', {}, (targets[i].Targets || []).map((t) => topicName(t.Arn)).join(', ') || '—'),
    h('td', {}, r.Threshold ? `${r.Threshold.Count} in ${r.Threshold.Period}s` : '—'),
    h('td', {}, h('code', {}, r.EventPattern)),
    h('td', {}, r.Description || '')));
  const subRows = (subs.Subscriptions || []).map((s) => {
    const d = s.Delivery || {};
    return h('tr', { 'data-subscription': s.SubscriptionArn },
      h('td', {}, topicName(s.TopicArn)), h('td', {}, s.Protocol), h('td', { class: 'wrap' }, s.Endpoint),
      h('td', { class: 'num' }, String(d.Delivered ?? 0)), h('td', { class: 'num' }, String(d.Pending ?? 0)),
      h('td', { class: 'num' }, String(d.FailedAttempts ?? 0)), h('td', { class: 'num' }, String(d.DeadLettered ?? 0)),
      h('td', {}, isoTime(d.LastSuccessTime)),
      h('td', { class: 'wrap' }, d.LastError ? `${d.LastError} (${isoTime(d.LastErrorTime)})` : '—'));
  });
  const deadRows = (dead.DeadLetters || []).map((d) => h('tr', {},
    h('td', {}, isoTime(d.FailedTime)), h('td', { class: 'wrap' }, endpointOf[d.SubscriptionArn] || d.SubscriptionArn),
    h('td', {}, d.Rule || '(published)'), h('td', { class: 'wrap' }, d.Subject || ''),
    h('td', { class: 'num' }, String(d.Attempts)), h('td', { class: 'wrap' }, d.Error)));
  setPage('Alerts', 'alerts',
    h('p', { class: 'muted' }, 'Rules send matching events to topics; each subscription of a topic receives them by webhook, email or NATS. Manage them with opentrail topics / opentrail rules or aws events.'),
    h('h2', {}, 'Rules'),
    table('rules-table', ['Name', 'State', 'Topics', 'Threshold', 'Pattern', 'Description'], ruleRows, 'No rules yet.'),
    h('h2', {}, 'Subscriptions'),
    table('subscriptions-table', ['Topic', 'Protocol', 'Endpoint', 'Delivered', 'Pending', 'Failed attempts', 'Dead letters', 'Last success', 'Last error'], subRows, 'No subscriptions yet.'),
    h('h2', {}, 'Dead letters'),
    table('dead-letters-table', ['Failed', 'Subscription', 'Rule', 'Subject', 'Attempts', 'Error'], deadRows, 'No dead letters.'));
}

function chart(timestamps, values, baseline, from, to) {
  const W = 760; const H = 260; const L = 46; const R = 12; const T = 12; const B = 34;
  const n = values.length;
  const tMin = timestamps.length ? timestamps[0] : from;
  const tMax = timestamps.length ? timestamps[n - 1] : to;
  const vMax = Math.max(1, baseline || 0, ...values) * 1.1;
  const x = (t) => L + ((t - tMin) / Math.max(1, tMax - tMin)) * (W - L - R);
  const y = (v) => T + (1 - v / vMax) * (H - T - B);
  const ticks = [0, vMax / 2, vMax].map((v) => h('g', {},
    h('line', { class: 'axis', x1: L, x2: W - R, y1: y(v), y2: y(v) }),
    h('text', { x: 4, y: y(v) + 4 }, v >= 10 ? Math.round(v) : v.toFixed(1))));
  const timeTicks = [tMin, (tMin + tMax) / 2, tMax].map((t, i) => h('text', { x: i === 0 ? L : i === 2 ? W - R - 80 : x(t) - 40, y: H - 10 }, fmtTime(t).slice(11, 16)));
  return h('svg', { class: 'chart', viewBox: `0 0 ${W} ${H}`, role: 'img', 'aria-label': `Calls per minute from ${fmtTime(tMin)} to ${fmtTime(tMax)}; baseline ${baseline === null ? 'unknown' : baseline.toFixed(2)} per minute` },
    h('rect', { class: 'anomaly', x: x(from), y: T, width: Math.max(2, x(to) - x(from)), height: H - T - B }),
    ticks, timeTicks,
    baseline === null ? null : h('line', { class: 'baseline', x1: L, x2: W - R, y1: y(baseline), y2: y(baseline) }),
    h('polyline', { class: 'series', points: values.map((v, i) => `${x(timestamps[i]).toFixed(1)},${y(v).toFixed(1)}`).join(' ') }));
}

async function viewInsight(live, id) {
  setPage('Insight', 'insights', h('p', { class: 'loading' }, 'Loading…'));
  const e = await findEvent(id, true);
  if (!live()) return;
  if (!e) { setPage('Insight not found', 'insights', h('p', {}, `No Insights event with ID ${id}. `, h('a', { href: '#/insights' }, 'Back to Insights'))); return; }
  const d = e.rec.insightDetails || {};
  // Its partner record (the other of Start/End): same API, same sharedEventID.
  const around = await call('LookupEvents', {
    EventCategory: 'insight',
    LookupAttributes: [{ AttributeKey: 'EventName', AttributeValue: d.eventName || e.EventName }],
    StartTime: Math.floor(e.timeMs / 1000) - 86400, EndTime: Math.floor(e.timeMs / 1000) + 86400, MaxResults: 50,
  });
  const pair = insightPairs((around.Events || []).map(withRecord).filter((x) => x.rec.sharedEventID === e.rec.sharedEventID))[0]
    || insightPairs([e])[0];
  const start = pair.start || e.timeMs;
  const end = pair.end || Date.now();
  const context = ((pair.endEvent || pair.startEvent || e).rec.insightDetails || {}).insightContext || {};
  const stats = context.statistics || {};
  const baseline = stats.baseline && typeof stats.baseline.average === 'number' ? stats.baseline.average : null;
  const from = start - 60 * 60e3;
  const to = Math.min(Date.now(), end + 60 * 60e3);
  const metricReq = {
    EventSource: d.eventSource, EventName: d.eventName, InsightType: d.insightType,
    StartTime: Math.floor(from / 1000), EndTime: Math.floor(to / 1000), Period: 60, DataType: 'FillWithZeros',
  };
  if (d.insightType === 'ApiErrorRateInsight' && d.errorCode) metricReq.ErrorCode = d.errorCode;
  let chartEl;
  try {
    const m = await call('ListInsightsMetricData', metricReq);
    const ts = (m.Timestamps || []).map(toMs);
    chartEl = h('figure', { id: 'insight-chart' }, chart(ts, m.Values || [], baseline, start, end),
      h('figcaption', { class: 'legend' },
        h('span', {}, h('span', { class: 'sw', id: 'sw-series' }), `${d.insightType === 'ApiErrorRateInsight' ? 'Errors' : 'Calls'} per minute`),
        h('span', {}, h('span', { class: 'sw', id: 'sw-baseline' }), `Baseline ${baseline === null ? '—' : baseline.toFixed(2)} per minute`),
        h('span', {}, h('span', { class: 'sw', id: 'sw-anomaly' }), 'Insight')));
  } catch (err) {
    chartEl = h('p', { class: 'invalid' }, `The rate could not be loaded: ${err}`);
  }
  if (!live()) return;
  const attributions = (context.attributions || []).map((a) => {
    const label = { userIdentityArn: 'Top users', userAgent: 'Top user agents', errorCode: 'Top error codes' }[a.attribute] || a.attribute;
    const baseMap = new Map((a.baseline || []).map((b) => [b.value, b.average]));
    return card(label, (a.insight || []).length ? h('div', { class: 'table-wrap' }, h('table', { class: 'attribution', 'data-attribute': a.attribute },
      h('thead', {}, h('tr', {}, ['Value', 'Average during the Insight', 'Average in the baseline'].map((t) => h('th', { scope: 'col' }, t)))),
      h('tbody', {}, (a.insight || []).map((v) => h('tr', {}, h('td', {}, v.value), h('td', {}, Number(v.average).toFixed(2)),
        h('td', {}, baseMap.has(v.value) ? Number(baseMap.get(v.value)).toFixed(2) : '0.00'))))))
      : h('p', { class: 'muted' }, 'None.'));
  });
  setPage(`${d.eventName || e.EventName} · ${insightLabel(d.insightType)}`, 'insights',
    h('p', {}, h('a', { href: '#/insights' }, '← Insights')),
    h('div', { class: 'grid' },
      card('Summary', dl('insight-summary', [
        ['API', d.eventName], ['Event source', d.eventSource], ['Insight type', insightLabel(d.insightType)], ['Error code', d.errorCode],
        ['Start', fmtTime(start)], ['End', pair.end ? fmtTime(pair.end) : 'ongoing'],
        ['Average during the Insight', stats.insight && typeof stats.insight.average === 'number' ? `${stats.insight.average.toFixed(2)} per minute` : null],
        ['Baseline average', baseline === null ? null : `${baseline.toFixed(2)} per minute`],
        ['Duration', stats.insightDuration ? `${stats.insightDuration} min` : null],
      ])),
      card('Rate around the Insight', chartEl)),
    h('h2', {}, 'Attributions'),
    h('div', { class: 'grid' }, attributions.length ? attributions : h('p', { class: 'muted' }, 'Attributions are in the End record; this Insight has not ended.')),
    card('Records', h('div', { class: 'grid' }, [pair.startEvent, pair.endEvent].filter(Boolean).map((r) => h('div', {},
      h('h3', {}, (r.rec.insightDetails || {}).state || ''), h('pre', { class: 'json' }, JSON.stringify(r.rec, null, 2)))))));
}

// ---------------------------------------------------------------------------------------------
// Start
// ---------------------------------------------------------------------------------------------

async function start() {
  $('#tz').value = state.prefs.tz;
  $('#tz').addEventListener('change', () => { state.prefs.tz = $('#tz').value; savePrefs(); route(); });
  $('#signout').addEventListener('click', signOut);
  window.addEventListener('hashchange', route);
  try {
    state.session = await request('api/session', {});
    signedIn();
  } catch (_) {
    renderSignIn();
  }
}

document.addEventListener('DOMContentLoaded', start);
