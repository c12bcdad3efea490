// faena's operator dashboard: plain JavaScript over the public REST API and the
// WebSocket feed. Every value from the server goes into the page as text (never as
// HTML). Pages are hash routes; the feed connection is shared by all of them and
// resumes after a reconnect from the last event it saw, so nothing is missed.
'use strict';

const API = '/api/v1';
// The API key this browser signs in with (an operator's or a viewer's), kept in this
// browser only. Fetches send it as a bearer token; the feed, images and file links,
// which cannot send a header, as `?token=`.
const KEY_ITEM = 'faena.key';
let apiKey = localStorage.getItem(KEY_ITEM) || '';

/** `url` with the key as `token`, for what cannot send an Authorization header. */
function withToken(url) {
  return `${url}${url.includes('?') ? '&' : '?'}token=${encodeURIComponent(apiKey)}`;
}
const STATUSES = ['pending', 'queued', 'running', 'succeeded', 'failed', 'needs_review', 'cancelled'];
const JOB_STATUSES = ['pending', 'running', 'paused', 'completed', 'cancelled'];
const EVENT_TYPES = ['job_created', 'job_started', 'job_paused', 'job_resumed', 'job_updated',
  'job_completed', 'job_cancelled', 'job_awaiting_review', 'item_status_changed', 'item_step', 'item_progress',
  'item_failed', 'item_log', 'session_opened', 'session_closed'];

// ---- small helpers ---------------------------------------------------------------

/** An element with attributes (`on*` become listeners) and children (strings are text). */
function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith('on')) e.addEventListener(k.slice(2), v);
    else if (k === 'dataset') Object.assign(e.dataset, v);
    else if (v === true) e.setAttribute(k, '');
    else e.setAttribute(k, String(v));
  }
  for (const c of children.flat(Infinity)) {
    if (c === undefined || c === null || c === false) continue;
    e.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return e;
}

function fmtTime(ms) {
  if (!ms) return '';
  const d = new Date(ms);
  return d.toLocaleString(undefined, { dateStyle: 'short', timeStyle: 'medium' });
}

function fmtDuration(ms) {
  if (ms == null) return '';
  if (ms < 1000) return `${ms} ms`;
  if (ms < 60000) return `${(ms / 1000).toFixed(1)} s`;
  return `${Math.floor(ms / 60000)} min ${Math.round((ms % 60000) / 1000)} s`;
}

function status(s) {
  return el('span', { class: `status ${s}` }, String(s).replace('_', ' '));
}

// A job's status, and whether it only waits for a person (items in review).
function jobStatus(j) {
  return j.awaiting_review
    ? el('span', {}, status(j.status), ' ', el('span', { class: 'status awaiting_review', title: 'only items in review are left' }, 'awaiting review'))
    : status(j.status);
}

function toast(message, bad) {
  const box = document.getElementById('toast');
  const t = el('div', { class: bad ? 'bad' : '' }, message);
  box.append(t);
  setTimeout(() => t.remove(), bad ? 8000 : 3500);
}

async function api(path, opts = {}) {
  const init = { method: opts.method || 'GET', headers: { authorization: `Bearer ${apiKey}` } };
  if (opts.json !== undefined) {
    init.headers['content-type'] = 'application/json';
    init.body = JSON.stringify(opts.json);
  } else if (opts.form) {
    init.body = opts.form;
  }
  const resp = await fetch(API + path, init);
  const text = await resp.text();
  let body = null;
  try { body = text ? JSON.parse(text) : null; } catch { body = text; }
  if (resp.status === 401) {
    signIn(body && body.message);
    throw new Error('sign in with an API key');
  }
  if (!resp.ok) {
    const msg = body && body.message ? body.message : `${resp.status} ${resp.statusText}`;
    const err = new Error(msg);
    err.status = resp.status;
    throw err;
  }
  return body;
}

/**
 * Up to `limit` items of an item listing (`path` holds its filters), following
 * `next_cursor`: a page of a rare status or reference can be cut short by the engine
 * with a cursor to go on from. Answers the items and the cursor where it stopped.
 */
async function listItems(path, limit) {
  const items = [];
  let cursor = null;
  do {
    const q = new URLSearchParams({ limit: String(limit - items.length) });
    if (cursor) q.set('cursor', cursor);
    const page = await api(`${path}${path.includes('?') ? '&' : '?'}${q}`);
    items.push(...page.items);
    cursor = page.next_cursor || null;
  } while (cursor && items.length < limit);
  return { items, next_cursor: cursor };
}

/** Run `f` at most once per `ms`, the last call winning. */
function throttle(f, ms) {
  let timer = null;
  let again = false;
  return () => {
    if (timer) { again = true; return; }
    f();
    timer = setTimeout(() => { timer = null; if (again) { again = false; f(); } }, ms);
  };
}

function progressBar(c) {
  const total = Object.values(c).reduce((a, b) => a + b, 0) || 1;
  const done = c.succeeded + c.failed + c.needs_review + c.cancelled;
  const pct = Math.round((done * 1000) / total) / 10;
  // Sizes through the CSSOM: the page's CSP allows no inline style attributes.
  const seg = (cls, n, left) => {
    const s = el('span', { class: cls });
    s.style.left = `${(left * 100) / total}%`;
    s.style.width = `${(n * 100) / total}%`;
    return s;
  };
  return el('div', { class: 'row' },
    el('div', { class: 'bar', role: 'progressbar', 'aria-valuenow': pct, 'aria-valuemin': 0, 'aria-valuemax': 100 },
      seg('ok', c.succeeded, 0),
      seg('rev', c.needs_review, c.succeeded),
      seg('bad', c.failed + c.cancelled, c.succeeded + c.needs_review)),
    el('span', { class: 'pct', dataset: { pct } }, `${pct}%`));
}

function counts(c) {
  return el('span', { class: 'counts small' },
    STATUSES.filter((s) => c[s] > 0).map((s) => el('span', { dataset: { count: s } }, `${s.replace('_', ' ')} ${c[s]}`)));
}

function json(v) {
  return el('pre', {}, JSON.stringify(v, null, 2));
}

// ---- the live feed ---------------------------------------------------------------

const feed = {
  lastSeq: 0, received: 0, reconnects: 0, gaps: 0, buffer: [], listeners: new Set(), ws: null, retry: 500,
};

function onFeed(f) {
  feed.listeners.add(f);
  return () => feed.listeners.delete(f);
}

function feedState(text, cls) {
  const s = document.getElementById('feed-state');
  s.textContent = text;
  s.className = `feed ${cls}`;
}

function connectFeed() {
  const proto = location.protocol === 'https:' ? 'wss' : 'ws';
  if (!apiKey) {
    feedState('signed out', 'down');
    return;
  }
  const ws = new WebSocket(withToken(`${proto}://${location.host}/ws`));
  feed.ws = ws;
  ws.onopen = () => {
    feed.retry = 500;
    ws.send(JSON.stringify({ type: 'subscribe', jobs: [], types: [], after: feed.lastSeq }));
  };
  ws.onmessage = (m) => {
    const ev = JSON.parse(m.data);
    if (ev.type === 'subscribed') {
      feedState(`live · seq ${ev.head}`, 'live');
      return;
    }
    if (typeof ev.seq !== 'number' || ev.seq <= feed.lastSeq) return;
    // `prev` is the previous event of this subscription: larger than the last one seen
    // means some were missed (seqs alone have holes: other tenants' events).
    if (typeof ev.prev === 'number' && ev.prev > feed.lastSeq) feed.gaps += 1;
    feed.lastSeq = ev.seq;
    feed.received += 1;
    feed.buffer.push(ev);
    if (feed.buffer.length > 2000) feed.buffer.splice(0, feed.buffer.length - 2000);
    document.getElementById('feed-state').textContent = `live · seq ${ev.seq}`;
    for (const f of feed.listeners) {
      try { f(ev); } catch (e) { console.error(e); }
    }
  };
  ws.onclose = (e) => {
    // The key was refused (4401: unknown or revoked, 4403: not allowed): retrying
    // would be refused again.
    if (e.code === 4401 || e.code === 4403) {
      feedState(`refused: ${e.reason}`, 'down');
      return;
    }
    feedState('reconnecting…', 'down');
    feed.reconnects += 1;
    setTimeout(connectFeed, feed.retry);
    feed.retry = Math.min(feed.retry * 2, 10000);
  };
}

// ---- pages -----------------------------------------------------------------------

let cleanup = [];
const view = () => document.getElementById('view');

function mount(...nodes) {
  view().replaceChildren(...nodes.flat(Infinity).filter(Boolean));
}

async function jobsPage(params) {
  const filter = { status: params.get('status') || '', plugin: params.get('plugin') || '' };
  const plugins = (await api('/plugins')).plugins;
  const tbody = el('tbody');
  const table = el('table', { id: 'jobs' },
    el('thead', {}, el('tr', {}, ['Job', 'Plugin', 'Status', 'Progress', 'Items', 'Created', ''].map((h) => el('th', {}, h)))),
    tbody);
  const rows = new Map();

  const jobRow = (j) => {
    const actions = el('span', { class: 'row' });
    const act = (label, action, cls) => el('button', {
      class: cls, onclick: async () => {
        try { render(await api(`/jobs/${j.id}/${action}`, { method: 'POST' })); toast(`${label}: ${j.name || j.id}`); } catch (e) { toast(e.message, true); }
      },
    }, label);
    if (j.status === 'pending') actions.append(act('Start', 'start', 'primary'));
    if (j.status === 'running') actions.append(act('Pause', 'pause'));
    if (j.status === 'paused') actions.append(act('Resume', 'resume', 'primary'));
    if (['pending', 'running', 'paused'].includes(j.status)) actions.append(act('Cancel', 'cancel', 'danger'));
    if (j.counts.failed > 0 && j.status !== 'cancelled') actions.append(act('Retry failed', 'retry'));
    return el('tr', { dataset: { jobId: j.id, status: j.status } },
      el('td', {}, el('a', { href: `#/jobs/${j.id}` }, j.name || j.id), el('div', { class: 'muted small' }, j.id)),
      el('td', {}, j.plugin, el('div', { class: 'muted small' }, j.operation)),
      el('td', {}, jobStatus(j)),
      el('td', {}, progressBar(j.counts)),
      el('td', {}, counts(j.counts)),
      el('td', { class: 'small' }, fmtTime(j.created_at)),
      el('td', {}, actions));
  };
  const render = (j) => {
    const row = jobRow(j);
    const old = rows.get(j.id);
    if (old) old.replaceWith(row); else tbody.prepend(row);
    rows.set(j.id, row);
  };
  const load = async () => {
    const q = new URLSearchParams({ limit: '100' });
    if (filter.status) q.set('status', filter.status);
    if (filter.plugin) q.set('plugin', filter.plugin);
    const page = await api(`/jobs?${q}`);
    tbody.replaceChildren();
    rows.clear();
    for (const j of page.jobs.reverse()) render(j);
    if (!page.jobs.length) tbody.append(el('tr', {}, el('td', { colspan: 7, class: 'muted' }, 'No jobs yet.')));
  };

  // Live: refresh a job at most twice a second while its events arrive.
  const pending = new Map();
  cleanup.push(onFeed((ev) => {
    if (!ev.job_id) return;
    if (ev.type === 'job_created' && !rows.has(ev.job_id)) { load(); return; }
    if (!rows.has(ev.job_id)) return;
    if (!pending.has(ev.job_id)) {
      pending.set(ev.job_id, throttle(async () => {
        try { render(await api(`/jobs/${ev.job_id}`)); } catch { /* gone */ }
      }, 500));
    }
    pending.get(ev.job_id)();
  }));

  const setFilter = (k, v) => {
    filter[k] = v;
    const q = new URLSearchParams(Object.entries(filter).filter(([, x]) => x));
    history.replaceState(null, '', `#/jobs${q.toString() ? `?${q}` : ''}`);
    load();
  };
  const filters = el('div', { class: 'row' },
    el('label', {}, 'Status ', el('select', { id: 'filter-status', onchange: (e) => setFilter('status', e.target.value) },
      el('option', { value: '' }, 'any'), JOB_STATUSES.map((s) => el('option', { value: s, selected: s === filter.status }, s)))),
    el('label', {}, 'Plugin ', el('select', { id: 'filter-plugin', onchange: (e) => setFilter('plugin', e.target.value) },
      el('option', { value: '' }, 'any'), plugins.map((p) => el('option', { value: p.name, selected: p.name === filter.plugin }, p.name)))));

  mount(
    el('div', { class: 'row spread' }, el('h1', {}, 'Jobs'), filters),
    createPanel(plugins, (j) => { render(j); location.hash = `#/jobs/${j.id}`; }),
    table);
  await load();
}

function createPanel(plugins, created) {
  const pluginSel = el('select', { id: 'new-plugin', required: true },
    plugins.map((p) => el('option', { value: p.name }, `${p.name} ${p.version}`)));
  const opSel = el('select', { id: 'new-operation' });
  const fillOps = () => {
    const p = plugins.find((x) => x.name === pluginSel.value);
    opSel.replaceChildren(...(p ? p.operations : []).map((o) => el('option', { value: o.name }, o.name)));
  };
  pluginSel.addEventListener('change', fillOps);
  fillOps();
  const review = el('input', { type: 'checkbox', id: 'new-review' });
  const file = el('input', { type: 'file', id: 'new-file', accept: '.csv,.xlsx,text/csv,application/vnd.openxmlformats-officedocument.spreadsheetml.sheet' });
  const items = el('textarea', { id: 'new-json', placeholder: '[{"input": {...}, "reference": "OC-1"}, ...]  or  {"items": [...], "options": {...}}' });
  const error = el('div', { class: 'error', hidden: true, id: 'new-error' });
  const options = () => (review.checked ? { on_failure: 'review' } : {});
  const fail = (e) => { error.hidden = false; error.textContent = e.message; };
  const upload = el('button', {
    class: 'primary', id: 'new-upload', onclick: async () => {
      error.hidden = true;
      if (!file.files.length) { fail(new Error('Choose a CSV or XLSX file first.')); return; }
      const form = new FormData();
      form.append('file', file.files[0]);
      form.append('plugin', pluginSel.value);
      form.append('operation', opSel.value);
      form.append('options', JSON.stringify(options()));
      try { const j = await api('/jobs/import', { method: 'POST', form }); toast(`Created ${j.name}: ${j.counts.queued + j.counts.pending} items`); created(j); } catch (e) { fail(e); }
    },
  }, 'Upload spreadsheet');
  const submit = el('button', {
    id: 'new-submit', onclick: async () => {
      error.hidden = true;
      let body;
      try { body = JSON.parse(items.value); } catch (e) { fail(new Error(`The JSON does not parse: ${e.message}`)); return; }
      const job = Array.isArray(body) ? { items: body } : body;
      job.plugin = job.plugin || pluginSel.value;
      job.operation = job.operation || opSel.value;
      job.options = { ...options(), ...(job.options || {}) };
      try { const j = await api('/jobs', { method: 'POST', json: job }); toast(`Created ${j.id}`); created(j); } catch (e) { fail(e); }
    },
  }, 'Create from JSON');
  return el('details', { class: 'panel', id: 'create' },
    el('summary', {}, el('strong', {}, 'New job'), ' — upload a spreadsheet or paste JSON'),
    el('section', { class: 'panel' },
      el('div', { class: 'row' }, el('label', {}, 'Plugin ', pluginSel), el('label', {}, 'Operation ', opSel),
        el('label', {}, review, ' failures go to review')),
      el('div', { class: 'grid2' },
        el('div', {}, el('h2', {}, 'Spreadsheet'), el('p', { class: 'muted small' }, 'CSV or XLSX with a header row; the plugin says how rows become items.'), file, ' ', upload),
        el('div', {}, el('h2', {}, 'JSON'), items, submit)),
      error));
}

async function jobPage(id, params) {
  const filter = { status: params.get('status') || '', q: params.get('q') || '' };
  const head = el('div');
  const tbody = el('tbody');
  let job = await api(`/jobs/${id}`);
  const renderHead = () => {
    const act = (label, action, cls) => el('button', {
      class: cls, onclick: async () => { try { job = await api(`/jobs/${id}/${action}`, { method: 'POST' }); renderHead(); loadItems(); } catch (e) { toast(e.message, true); } },
    }, label);
    const res = job.resources && Object.keys(job.resources).length
      ? el('p', { class: 'small' }, 'Resources: ', Object.entries(job.resources).map(([r, u]) => `${r} ${u.succeeded} ok / ${u.failed} failed / ${u.rate_limited} rate limited`).join(' · '))
      : null;
    head.replaceChildren(
      el('div', { class: 'row spread' },
        el('h1', {}, job.name || job.id, ' ', jobStatus(job)),
        el('span', { class: 'row' },
          job.status === 'pending' && act('Start', 'start', 'primary'),
          job.status === 'running' && act('Pause', 'pause'),
          job.status === 'paused' && act('Resume', 'resume', 'primary'),
          ['pending', 'running', 'paused'].includes(job.status) && act('Cancel', 'cancel', 'danger'),
          job.counts.failed > 0 && job.status !== 'cancelled' && act('Retry failed', 'retry'))),
      el('section', { class: 'panel', id: 'job-progress', dataset: { jobId: job.id, status: job.status } },
        progressBar(job.counts), counts(job.counts),
        el('p', { class: 'muted small' }, `${job.plugin} ${job.plugin_version || ''} · ${job.operation} · created ${fmtTime(job.created_at)}`,
          job.finished_at ? ` · finished ${fmtTime(job.finished_at)} (${fmtDuration(job.finished_at - (job.started_at || job.created_at))})` : ''),
        res));
  };
  const loadItems = async () => {
    const q = new URLSearchParams();
    if (filter.status) q.set('status', filter.status);
    if (filter.q) q.set('q', filter.q);
    const page = await listItems(`/jobs/${id}/items${q.toString() ? `?${q}` : ''}`, 500);
    tbody.replaceChildren(...page.items.map((it) => el('tr', { dataset: { itemId: it.id, status: it.status } },
      el('td', { class: 'num' }, it.index),
      el('td', {}, el('a', { href: `#/items/${it.id}` }, it.reference || it.id)),
      el('td', {}, status(it.status)),
      el('td', { class: 'num' }, it.attempt),
      el('td', { class: 'small' }, it.steps.length ? it.steps[it.steps.length - 1].name : ''),
      el('td', { class: 'small' }, it.error ? `${it.error.code ? `[${it.error.code}] ` : ''}${it.error.message}` : ''),
      el('td', { class: 'small' }, it.resource || ''))));
    if (!page.items.length) tbody.append(el('tr', {}, el('td', { colspan: 7, class: 'muted' }, 'No items match.')));
    if (page.next_cursor) tbody.append(el('tr', {}, el('td', { colspan: 7, class: 'muted small' }, 'Showing the first 500; filter to narrow down.')));
  };
  const refresh = throttle(async () => { job = await api(`/jobs/${id}`); renderHead(); loadItems(); }, 1000);
  cleanup.push(onFeed((ev) => { if (ev.job_id === id) refresh(); }));
  const setFilter = (k, v) => {
    filter[k] = v;
    const q = new URLSearchParams(Object.entries(filter).filter(([, x]) => x));
    history.replaceState(null, '', `#/jobs/${id}${q.toString() ? `?${q}` : ''}`);
    loadItems();
  };
  const search = el('input', { type: 'search', id: 'item-search', placeholder: 'Search by reference  (/)', value: filter.q, oninput: (e) => setFilter('q', e.target.value.trim()) });
  renderHead();
  mount(head,
    el('div', { class: 'row' },
      el('label', {}, 'Status ', el('select', { id: 'item-status', onchange: (e) => setFilter('status', e.target.value) },
        el('option', { value: '' }, 'any'), STATUSES.map((s) => el('option', { value: s, selected: s === filter.status }, s)))),
      search),
    el('table', { id: 'items' },
      el('thead', {}, el('tr', {}, ['#', 'Reference', 'Status', 'Attempt', 'Last step', 'Error', 'Resource'].map((h) => el('th', {}, h)))),
      tbody));
  await loadItems();
}

async function itemPage(id) {
  const d = await api(`/items/${id}`);
  const it = d;
  const requeue = el('button', {
    class: 'primary', id: 'item-requeue', onclick: async () => {
      try { await api(`/items/${id}/transition`, { method: 'POST', json: { to: 'queued', reason: 'sent back from the dashboard' } }); toast('Queued again'); route(); } catch (e) { toast(e.message, true); }
    },
  }, 'Send back to queue');
  const retry = el('button', {
    id: 'item-retry', onclick: async () => { try { await api(`/items/${id}/retry`, { method: 'POST' }); toast('Retrying'); route(); } catch (e) { toast(e.message, true); } },
  }, 'Retry');
  const images = d.artifacts.filter((a) => a.content_type.startsWith('image/'));
  const files = d.artifacts.filter((a) => !a.content_type.startsWith('image/'));
  cleanup.push(onFeed((ev) => { if (ev.item_id === id && ev.type === 'item_status_changed') route(); }));
  mount(
    el('p', { class: 'small' }, el('a', { href: `#/jobs/${it.job_id}` }, `← job ${it.job_id}`)),
    el('div', { class: 'row spread' },
      el('h1', {}, it.reference || it.id, ' ', status(it.status)),
      el('span', { class: 'row' }, ['needs_review', 'failed', 'cancelled'].includes(it.status) && requeue, it.status === 'failed' && retry)),
    el('div', { class: 'grid2' },
      el('div', {},
        it.error && el('section', { class: 'panel' }, el('h2', {}, 'Error'),
          el('div', { class: 'error', id: 'item-error' }, `${it.error.kind}${it.error.code ? ` · ${it.error.code}` : ''}: ${it.error.message}`)),
        el('section', { class: 'panel' }, el('h2', {}, 'Steps'),
          it.steps.length
            ? el('ol', { class: 'timeline', id: 'item-steps' }, it.steps.map((s) => el('li', {}, el('strong', {}, s.name), ' ',
              el('span', { class: 'muted small' }, `attempt ${s.attempt} · ${fmtTime(s.at)}`), s.state ? el('div', { class: 'small' }, s.state) : null)))
            : el('p', { class: 'muted' }, 'No checkpoints recorded.')),
        el('section', { class: 'panel' }, el('h2', {}, 'Attempts'),
          el('table', {}, el('thead', {}, el('tr', {}, ['#', 'Started', 'Took', 'Outcome', 'Resource', 'Error'].map((h) => el('th', {}, h)))),
            el('tbody', {}, it.attempts.map((a) => el('tr', {},
              el('td', {}, a.number), el('td', { class: 'small' }, fmtTime(a.started_at)),
              el('td', { class: 'small' }, a.finished_at ? fmtDuration(a.finished_at - a.started_at) : 'running'),
              el('td', {}, a.outcome ? status(a.outcome) : ''), el('td', { class: 'small' }, a.resource || ''),
              el('td', { class: 'small' }, a.error ? a.error.message : '')))))),
        el('section', { class: 'panel' }, el('h2', {}, 'Input'), json(it.input)),
        it.result && el('section', { class: 'panel' }, el('h2', {}, 'Result'), json(it.result))),
      el('div', {},
        images.length > 0 && el('section', { class: 'panel' }, el('h2', {}, 'Screenshots'),
          images.map((a) => el('figure', {}, el('img', { class: 'shot', src: withToken(`${API}/artifacts/${a.id}`), alt: a.name }), el('figcaption', { class: 'small muted' }, a.name)))),
        files.length > 0 && el('section', { class: 'panel' }, el('h2', {}, 'Files'),
          el('ul', {}, files.map((a) => el('li', {}, el('a', { href: withToken(`${API}/artifacts/${a.id}`) }, a.name), ` · ${a.content_type} · ${a.size} bytes`)))),
        el('section', { class: 'panel' }, el('h2', {}, 'Log'),
          d.logs.length
            ? el('pre', { id: 'item-log' }, d.logs.map((l) => `${new Date(l.ts).toLocaleTimeString()} [${l.level}] (attempt ${l.attempt}) ${l.message}`).join('\n'))
            : el('p', { class: 'muted' }, 'No log lines.')))));
}

async function reviewPage() {
  const tbody = el('tbody');
  const selected = new Set();
  const sendBack = async (ids) => {
    let ok = 0;
    for (const id of ids) {
      try { await api(`/items/${id}/transition`, { method: 'POST', json: { to: 'queued', reason: 'sent back from the review queue' } }); ok += 1; } catch (e) { toast(`${id}: ${e.message}`, true); }
    }
    if (ok) toast(`${ok} item${ok > 1 ? 's' : ''} queued again`);
    selected.clear();
    load();
  };
  const bulk = el('button', { class: 'primary', id: 'review-requeue-selected', disabled: true, onclick: () => sendBack([...selected]) }, 'Send selected back to queue');
  const all = el('input', {
    type: 'checkbox', 'aria-label': 'Select all', onchange: (e) => {
      for (const box of tbody.querySelectorAll('input[type=checkbox]')) { box.checked = e.target.checked; box.dispatchEvent(new Event('change')); }
    },
  });
  const load = async () => {
    const page = await listItems('/items?status=needs_review', 500);
    updateReviewBadge(page.items.length, page.next_cursor);
    bulk.disabled = true;
    all.checked = false;
    tbody.replaceChildren(...page.items.map((it) => el('tr', { dataset: { itemId: it.id } },
      el('td', {}, el('input', {
        type: 'checkbox', 'aria-label': `Select ${it.reference || it.id}`, onchange: (e) => {
          if (e.target.checked) selected.add(it.id); else selected.delete(it.id);
          bulk.disabled = selected.size === 0;
        },
      })),
      el('td', {}, el('a', { href: `#/items/${it.id}` }, it.reference || it.id)),
      el('td', { class: 'small' }, el('a', { href: `#/jobs/${it.job_id}` }, it.job_id)),
      el('td', { class: 'small' }, it.plugin),
      el('td', { class: 'small' }, it.error ? `${it.error.code ? `[${it.error.code}] ` : ''}${it.error.message}` : ''),
      el('td', { class: 'small' }, fmtTime(it.updated_at)),
      el('td', {}, el('button', { class: 'requeue', onclick: () => sendBack([it.id]) }, 'Back to queue')))));
    if (!page.items.length) tbody.append(el('tr', {}, el('td', { colspan: 7, class: 'muted' }, 'Nothing waits for review.')));
  };
  const refresh = throttle(load, 1000);
  cleanup.push(onFeed((ev) => { if (ev.type === 'item_status_changed') refresh(); }));
  mount(el('div', { class: 'row spread' }, el('h1', {}, 'Review queue'), bulk),
    el('p', { class: 'muted' }, 'Items a plugin could not finish and whose job sends failures to review. Fix the data in the portal or the item, then send them back.'),
    el('table', { id: 'review' }, el('thead', {}, el('tr', {}, el('th', {}, all), ['Reference', 'Job', 'Plugin', 'Error', 'Since', ''].map((h) => el('th', {}, h)))), tbody));
  await load();
}

function updateReviewBadge(n, more) {
  const b = document.getElementById('review-count');
  b.hidden = n === 0;
  b.textContent = more ? `${n}+` : String(n);
}

function eventsPage(params) {
  const filter = { type: params.get('type') || '', job: params.get('job') || '' };
  const tbody = el('tbody');
  const stats = el('span', { class: 'muted small', id: 'events-stats' });
  const matches = (ev) => (!filter.type || ev.type === filter.type) && (!filter.job || ev.job_id === filter.job);
  const row = (ev, fresh) => el('tr', { class: fresh ? 'fresh' : '', dataset: { seq: ev.seq, type: ev.type } },
    el('td', { class: 'num' }, ev.seq),
    el('td', {}, new Date(ev.ts).toLocaleTimeString()),
    el('td', {}, ev.type),
    el('td', {}, ev.job_id ? el('a', { href: `#/jobs/${ev.job_id}` }, ev.job_id) : ev.session_id ? el('a', { href: `#/sessions/${ev.session_id}` }, `session ${ev.session_id}`) : ''),
    el('td', {}, ev.item_id ? el('a', { href: `#/items/${ev.item_id}` }, ev.item_id.split('-').pop()) : ''),
    el('td', { class: 'small' }, summary(ev)));
  const renderAll = () => {
    const shown = feed.buffer.filter(matches).slice(-300).reverse();
    tbody.replaceChildren(...shown.map((ev) => row(ev, false)));
  };
  const renderStats = () => {
    stats.textContent = `${feed.received} events received · last seq ${feed.lastSeq} · reconnects ${feed.reconnects} · gaps ${feed.gaps}`;
  };
  cleanup.push(onFeed((ev) => {
    renderStats();
    if (!matches(ev)) return;
    tbody.prepend(row(ev, true));
    while (tbody.children.length > 300) tbody.lastChild.remove();
  }));
  const setFilter = (k, v) => {
    filter[k] = v;
    const q = new URLSearchParams(Object.entries(filter).filter(([, x]) => x));
    history.replaceState(null, '', `#/events${q.toString() ? `?${q}` : ''}`);
    renderAll();
  };
  mount(
    el('div', { class: 'row spread' }, el('h1', {}, 'Live events'), stats),
    el('div', { class: 'row' },
      el('label', {}, 'Type ', el('select', { id: 'event-type', onchange: (e) => setFilter('type', e.target.value) },
        el('option', { value: '' }, 'any'), EVENT_TYPES.map((t) => el('option', { value: t, selected: t === filter.type }, t)))),
      el('label', {}, 'Job ', el('input', { id: 'event-job', placeholder: 'job id  (/)', value: filter.job, oninput: (e) => setFilter('job', e.target.value.trim()) }))),
    el('table', { class: 'events', id: 'events' },
      el('thead', {}, el('tr', {}, ['Seq', 'Time', 'Type', 'Job / session', 'Item', 'Data'].map((h) => el('th', {}, h)))), tbody));
  renderAll();
  renderStats();
}

function summary(ev) {
  const d = ev.data || {};
  switch (ev.type) {
    case 'item_status_changed': return `${d.from} → ${d.to} (attempt ${d.attempt})${d.reason ? ` · ${d.reason}` : ''}`;
    case 'item_progress': return `${d.done}/${d.total} (${d.percentage}%)${d.reference ? ` · ${d.reference}` : ''}${d.resource ? ` · ${d.resource}` : ''}`;
    case 'item_failed': return `${d.error ? d.error.message : ''}${d.will_retry ? ' · will retry' : ''}`;
    case 'item_step': return `${d.step} (attempt ${d.attempt})`;
    case 'item_log': return `[${d.level}] ${d.message}`;
    case 'job_created': return `${d.plugin} · ${d.operation} · ${d.total} items${d.name ? ` · ${d.name}` : ''}`;
    case 'job_awaiting_review': return `${d.needs_review} item(s) wait for review`;
    case 'job_started': return `${d.queued} queued of ${d.total}`;
    case 'job_updated': return d.pool ? `pool: ${d.pool.resources.length} resources × ${d.pool.concurrency}${d.pool.rate_per_minute ? `, ${d.pool.rate_per_minute}/min` : ''}` : JSON.stringify(d).slice(0, 160);
    case 'job_completed': return d.results ? `${d.results.succeeded} ok, ${d.results.failed} failed of ${d.results.total}` : '';
    case 'session_opened': case 'session_closed': return `${d.plugin} · ${d.account}${d.reason ? ` · ${d.reason}` : ''}`;
    default: return JSON.stringify(d).slice(0, 160);
  }
}

async function sessionsPage() {
  const list = (await api('/sessions')).sessions;
  mount(el('h1', {}, 'Sessions'),
    el('p', { class: 'muted' }, 'Logged-in plugin instances, each with its own browser. Open one through the API: POST /api/v1/sessions.'),
    el('table', { id: 'sessions' },
      el('thead', {}, el('tr', {}, ['Session', 'Plugin', 'Account', 'State', 'Calls', 'Last activity', 'Closed'].map((h) => el('th', {}, h)))),
      el('tbody', {}, list.length ? list.map((s) => el('tr', { dataset: { sessionId: s.id } },
        el('td', {}, el('a', { href: `#/sessions/${s.id}` }, s.id)), el('td', {}, s.plugin), el('td', {}, s.account),
        el('td', {}, status(s.state)), el('td', { class: 'num' }, s.calls), el('td', { class: 'small' }, fmtTime(s.last_activity)),
        el('td', { class: 'small' }, s.close_reason || ''))) : el('tr', {}, el('td', { colspan: 7, class: 'muted' }, 'No sessions.')))));
  cleanup.push(onFeed((ev) => { if (ev.type.startsWith('session_')) route(); }));
}

async function sessionPage(id) {
  const s = await api(`/sessions/${id}`);
  const screen = el('img', { id: 'session-view', alt: 'The session\'s page' });
  const note = el('p', { class: 'muted small' });
  const output = el('div');
  const firstCall = s.operations.find((o) => o !== 'login');
  const opSel = el('select', { id: 'session-op' }, s.operations.map((o) => el('option', { value: o, selected: o === firstCall }, o)));
  const input = el('textarea', { id: 'session-input' }, '{}');
  let ws = null;
  let lastUrl = null;
  if (s.state === 'open') {
    screen.src = withToken(`${API}/sessions/${id}/screenshot?t=${Date.now()}`);
    const proto = location.protocol === 'https:' ? 'wss' : 'ws';
    ws = new WebSocket(withToken(`${proto}://${location.host}/ws/sessions/${id}/screencast`));
    ws.binaryType = 'blob';
    ws.onopen = () => { note.textContent = 'Live: frames arrive as the page changes.'; };
    ws.onmessage = (m) => {
      const url = URL.createObjectURL(new Blob([m.data], { type: 'image/jpeg' }));
      screen.src = url;
      if (lastUrl) URL.revokeObjectURL(lastUrl);
      lastUrl = url;
    };
    ws.onclose = () => { note.textContent = 'The live view ended.'; };
    cleanup.push(() => { ws.close(); if (lastUrl) URL.revokeObjectURL(lastUrl); });
  }
  const call = el('button', {
    class: 'primary', id: 'session-call', disabled: s.state !== 'open', onclick: async () => {
      let body;
      try { body = JSON.parse(input.value || '{}'); } catch (e) { toast(`The input does not parse: ${e.message}`, true); return; }
      call.disabled = true;
      try {
        const r = await api(`/sessions/${id}/invoke`, { method: 'POST', json: { operation: opSel.value, input: body } });
        output.replaceChildren(json(r.result), ...r.artifacts.map((a) => el('p', {}, el('a', { href: withToken(`${API}/artifacts/${a.id}`) }, a.name))));
      } catch (e) { output.replaceChildren(el('div', { class: 'error' }, e.message)); } finally { call.disabled = false; }
    },
  }, 'Call');
  const close = el('button', {
    class: 'danger', disabled: s.state !== 'open', onclick: async () => {
      try { await api(`/sessions/${id}`, { method: 'DELETE' }); toast('Session closed'); route(); } catch (e) { toast(e.message, true); }
    },
  }, 'Close session');
  cleanup.push(onFeed((ev) => { if (ev.session_id === id) route(); }));
  mount(el('p', { class: 'small' }, el('a', { href: '#/sessions' }, '← sessions')),
    el('div', { class: 'row spread' }, el('h1', {}, `${s.plugin} · ${s.account} `, status(s.state)), close),
    el('div', { class: 'grid2' },
      el('section', { class: 'panel' }, el('h2', {}, 'Live view'),
        s.state === 'open' ? el('div', { class: 'live-view' }, screen) : el('p', { class: 'muted' }, `Closed: ${s.close_reason || s.state}`), note),
      el('div', {},
        el('section', { class: 'panel' },
          el('p', { class: 'small' }, `${s.calls} calls · opened ${fmtTime(s.opened_at)} · last activity ${fmtTime(s.last_activity)} · idle timeout ${s.idle_timeout_secs} s`),
          s.error && el('div', { class: 'error' }, s.error.message)),
        el('section', { class: 'panel' }, el('h2', {}, 'Call an operation'), el('div', { class: 'row' }, opSel, call), input, output))));
}

async function schedulesPage() {
  const list = (await api('/schedules')).schedules;
  const act = (s, action) => el('button', {
    onclick: async () => {
      try { await api(`/schedules/${s.id}/${action}`, { method: 'POST' }); route(); } catch (e) { toast(e.message, true); }
    },
  }, action === 'pause' ? 'Pause' : 'Resume');
  mount(el('h1', {}, 'Schedules'),
    el('p', { class: 'muted' }, 'Cron schedules that create jobs. Create one through the API (POST /api/v1/schedules) or `faena schedules create`.'),
    el('table', { id: 'schedules' },
      el('thead', {}, el('tr', {}, ['Name', 'Cron', 'Zone', 'Next run', 'Last job', 'State', ''].map((h) => el('th', {}, h)))),
      el('tbody', {}, list.length ? list.map((s) => el('tr', { dataset: { scheduleId: s.id } },
        el('td', {}, s.name || s.id), el('td', {}, el('code', {}, s.cron)), el('td', {}, s.timezone),
        el('td', { class: 'small' }, s.next_run_at ? fmtTime(s.next_run_at) : ''),
        el('td', { class: 'small' }, s.last_job_id ? el('a', { href: `#/jobs/${s.last_job_id}` }, s.last_job_id) : ''),
        el('td', {}, status(s.paused ? 'paused' : 'active')), el('td', {}, act(s, s.paused ? 'resume' : 'pause'))))
        : el('tr', {}, el('td', { colspan: 7, class: 'muted' }, 'No schedules.')))));
  cleanup.push(onFeed((ev) => { if (ev.type.startsWith('schedule_')) route(); }));
}

/** The `faena worker` processes reporting to this engine. They report every few seconds
 * over HTTP, not on the feed, so the list is read again on a timer. */
async function workersPage() {
  const table = el('table', { id: 'workers' });
  const render = (list) => table.replaceChildren(
    el('thead', {}, el('tr', {}, ['Worker', 'Labels', 'Plugins', 'Version', 'Running', 'Sessions', 'Last heard', 'State'].map((h) => el('th', {}, h)))),
    el('tbody', {}, list.length ? list.map((w) => el('tr', { dataset: { worker: w.name } },
      el('td', {}, w.name), el('td', {}, w.labels.join(', ')), el('td', {}, w.plugins.join(', ') || 'all'),
      el('td', { class: 'small' }, w.version), el('td', { class: 'num' }, `${w.running} / ${w.concurrency}`),
      el('td', { class: 'num' }, w.takes_sessions ? w.sessions : '—'),
      el('td', { class: 'small' }, fmtTime(w.last_seen_at)), el('td', {}, status(w.gone ? 'gone' : 'live'))))
      : el('tr', {}, el('td', { colspan: 8, class: 'muted' }, 'No workers have reported. Start one with `faena worker --server URL --key KEY`.'))));
  render((await api('/workers')).workers);
  mount(el('h1', {}, 'Workers'),
    el('p', { class: 'muted' }, 'Processes that run plugins for this engine on other machines; one silent for three heartbeats is gone, and its items run again elsewhere.'),
    table);
  const timer = setInterval(async () => { try { render((await api('/workers')).workers); } catch { /* shown at the next tick */ } }, 5000);
  cleanup.push(() => clearInterval(timer));
}

async function pluginsPage() {
  const list = (await api('/plugins')).plugins;
  mount(el('h1', {}, 'Plugins'),
    list.map((p) => el('section', { class: 'panel', dataset: { plugin: p.name } },
      el('div', { class: 'row spread' }, el('h2', {}, `${p.name} `, el('span', { class: 'muted' }, p.version)),
        el('span', { class: 'small muted' }, p.builtin ? 'built in' : 'installed', p.versions.length > 1 ? ` · versions ${p.versions.join(', ')}` : '')),
      el('p', {}, p.description),
      el('p', { class: 'small muted' }, `Granted: ${[p.grants.browser && 'browser', p.grants.http_hosts.length && `http ${p.grants.http_hosts.join(', ')}`, p.grants.secrets.length && `secrets ${p.grants.secrets.join(', ')}`].filter(Boolean).join(' · ') || 'nothing'} · ${p.grants.memory_mib} MiB · ${p.grants.deadline_secs} s`),
      p.operations.map((o) => el('details', {},
        el('summary', {}, el('strong', {}, o.name), ` — ${o.description}`, o.not_granted.length ? el('span', { class: 'error small' }, ` needs ${o.not_granted.join(', ')}`) : ''),
        json(o.input_schema))))));
}

// ---- signing in ---------------------------------------------------------------------

/** Ask for an API key; it is checked against the API before it is kept. */
function signIn(why) {
  const input = el('input', { type: 'password', id: 'api-key', autocomplete: 'off', placeholder: 'fk_…', 'aria-label': 'API key', size: 60 });
  const problem = el('div', { class: 'error', hidden: !why }, why || '');
  const form = el('form', {
    class: 'signin',
    onsubmit: async (e) => {
      e.preventDefault();
      const key = input.value.trim();
      const resp = await fetch(`${API}/jobs?limit=1`, { headers: { authorization: `Bearer ${key}` } });
      if (!resp.ok) {
        const body = await resp.json().catch(() => ({}));
        problem.textContent = body.message || `${resp.status} ${resp.statusText}`;
        problem.hidden = false;
        return;
      }
      apiKey = key;
      localStorage.setItem(KEY_ITEM, key);
      location.reload();
    },
  },
  el('label', { for: 'api-key' }, 'API key'), input, el('button', { type: 'submit' }, 'Sign in'), problem);
  mount(el('h1', {}, 'Sign in'),
    el('p', { class: 'muted' }, 'faena needs an API key. The first start of the engine writes an admin key to ',
      el('code', {}, '<data dir>/admin.key'), '; an admin creates others with ', el('code', {}, 'faena keys create'), '.'),
    form);
  input.focus();
}

function signOut() {
  localStorage.removeItem(KEY_ITEM);
  apiKey = '';
  location.reload();
}

// ---- routing and keys ------------------------------------------------------------

async function route() {
  for (const f of cleanup) f();
  cleanup = [];
  if (!apiKey) {
    signIn();
    return;
  }
  const [path, query] = (location.hash.slice(1) || '/jobs').split('?');
  const params = new URLSearchParams(query || '');
  const parts = path.split('/').filter(Boolean);
  const tab = parts[0] === 'items' ? 'jobs' : parts[0];
  for (const a of document.querySelectorAll('nav a')) a.classList.toggle('active', a.dataset.tab === tab);
  try {
    if (parts[0] === 'jobs' && parts[1]) await jobPage(decodeURIComponent(parts[1]), params);
    else if (parts[0] === 'items' && parts[1]) await itemPage(decodeURIComponent(parts[1]));
    else if (parts[0] === 'review') await reviewPage();
    else if (parts[0] === 'events') eventsPage(params);
    else if (parts[0] === 'sessions' && parts[1]) await sessionPage(decodeURIComponent(parts[1]));
    else if (parts[0] === 'sessions') await sessionsPage();
    else if (parts[0] === 'plugins') await pluginsPage();
    else if (parts[0] === 'schedules') await schedulesPage();
    else if (parts[0] === 'workers') await workersPage();
    else await jobsPage(params);
    document.title = `faena · ${tab || 'jobs'}`;
  } catch (e) {
    mount(el('h1', {}, 'Something went wrong'), el('div', { class: 'error' }, e.message));
  }
}

document.addEventListener('keydown', (e) => {
  const t = e.target;
  if (e.ctrlKey || e.metaKey || e.altKey || ['INPUT', 'TEXTAREA', 'SELECT'].includes(t.tagName)) return;
  const tabs = ['jobs', 'review', 'events', 'sessions', 'plugins', 'schedules', 'workers'];
  if (e.key >= '1' && e.key <= '7') { location.hash = `#/${tabs[Number(e.key) - 1]}`; e.preventDefault(); }
  if (e.key === '/') {
    const search = view().querySelector('input[type=search], input[placeholder*="(/)"]');
    if (search) { search.focus(); e.preventDefault(); }
  }
});

window.addEventListener('hashchange', route);
window.addEventListener('DOMContentLoaded', async () => {
  // Start the feed a little before the head so the events page has some history.
  try {
    const health = await fetch('/health').then((r) => r.json());
    feed.lastSeq = Math.max(0, health.last_seq - 200);
  } catch { /* the feed starts at 0 */ }
  const out = document.getElementById('sign-out');
  out.hidden = !apiKey;
  out.addEventListener('click', signOut);
  connectFeed();
  route();
  if (!apiKey) return;
  listItems('/items?status=needs_review', 500).then((p) => updateReviewBadge(p.items.length, p.next_cursor)).catch(() => {});
  onFeed(throttle(() => {
    listItems('/items?status=needs_review', 500).then((p) => updateReviewBadge(p.items.length, p.next_cursor)).catch(() => {});
  }, 2000));
});
