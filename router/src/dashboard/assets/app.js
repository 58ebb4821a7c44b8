// llm-router dashboard: a dependency-free single page over /api/dashboard/* (plus the
// vendored Chart.js). Pages: overview (cards + nodes), statistics (charts + tables),
// request history. Refreshes the visible page every 5 s, replacing only what changed.
'use strict';

(() => {
  const REFRESH_MS = 5000;
  const HISTORY_PAGE = 25;
  const $ = (id) => document.getElementById(id);
  const state = { page: null, charts: {}, historyCursors: [], historyCursor: null, filtersLoaded: false };

  // Uncaught errors are kept for the end-to-end tests ("no console errors").
  window.__dashboardErrors = [];
  window.addEventListener('error', (e) => window.__dashboardErrors.push(String(e.message)));
  window.addEventListener('unhandledrejection', (e) => window.__dashboardErrors.push(String(e.reason)));

  class Unauthorized extends Error {}

  async function api(path) {
    const r = await fetch(path, { credentials: 'same-origin', headers: { accept: 'application/json' } });
    if (r.status === 401) throw new Unauthorized('session expired');
    const body = await r.json();
    if (!r.ok) throw new Error(body.error ? body.error.message : r.statusText);
    return body;
  }

  // ---- number formatting -------------------------------------------------
  const exact = new Intl.NumberFormat('en-US');
  function compact(n) {
    const units = [['T', 1e12], ['B', 1e9], ['M', 1e6], ['K', 1e3]];
    for (const [unit, size] of units) {
      if (n >= size) {
        const x = n / size;
        return (x >= 100 ? x.toFixed(0) : x.toFixed(1)).replace(/\.0$/, '') + unit;
      }
    }
    return String(n);
  }
  function setNumber(el, n) {
    el.textContent = compact(n);
    el.title = exact.format(n);
    el.dataset.value = String(n);
  }
  function ms(n) {
    return n >= 1000 ? (n / 1000).toFixed(2) + ' s' : Math.round(n) + ' ms';
  }

  // ---- table helpers -----------------------------------------------------
  function cell(content, cls) {
    const td = document.createElement('td');
    if (cls) td.className = cls;
    if (content instanceof Node) td.append(content);
    else td.textContent = content;
    return td;
  }
  function num(n) {
    const td = cell('', 'num');
    setNumber(td, n);
    return td;
  }
  function badge(kind, text) {
    const span = document.createElement('span');
    span.className = 'badge ' + kind;
    span.textContent = text || kind;
    return span;
  }
  // Swaps the body only when its content changed: no flicker, scroll kept.
  function fillTable(table, rows) {
    const fresh = document.createElement('tbody');
    for (const { cells, cls, key } of rows) {
      const tr = document.createElement('tr');
      if (cls) tr.className = cls;
      if (key !== undefined) tr.dataset.key = key;
      tr.append(...cells);
      fresh.append(tr);
    }
    const old = table.tBodies[0];
    if (old.innerHTML !== fresh.innerHTML) old.replaceWith(fresh);
    return rows.length;
  }

  // ---- login -------------------------------------------------------------
  function showLogin(message) {
    $('nav').hidden = true;
    document.querySelectorAll('.page').forEach((p) => { p.hidden = true; });
    $('login').hidden = false;
    $('login-error').textContent = message || '';
    $('admin-key').focus();
    state.page = null;
  }

  $('login-form').addEventListener('submit', async (e) => {
    e.preventDefault();
    const r = await fetch('/dashboard/login', {
      method: 'POST',
      credentials: 'same-origin',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ key: $('admin-key').value }),
    });
    if (r.status === 204) {
      $('admin-key').value = '';
      $('login').hidden = true;
      route();
    } else {
      $('login-error').textContent = r.status === 401 ? 'Wrong admin key.' : 'Sign-in failed (' + r.status + ').';
    }
  });

  $('logout').addEventListener('click', async () => {
    await fetch('/dashboard/logout', { method: 'POST', credentials: 'same-origin' });
    showLogin('Signed out.');
  });

  // ---- pages -------------------------------------------------------------
  async function refreshOverview() {
    const [stats, nodes] = await Promise.all([api('/api/dashboard/stats'), api('/api/dashboard/nodes')]);
    setNumber($('card-requests'), stats.total_requests);
    setNumber($('card-success'), stats.successful_requests);
    setNumber($('card-failed'), stats.failed_requests);
    setNumber($('card-active'), stats.active_requests);
    setNumber($('card-online'), stats.online_nodes);
    setNumber($('card-nodes'), stats.total_nodes);
    setNumber($('card-input'), stats.total_input_tokens);
    setNumber($('card-output'), stats.total_output_tokens);
    setNumber($('card-total'), stats.total_tokens);
    const shown = nodes.nodes.filter((n) => !n.deleted || n.total_requests > 0);
    const count = fillTable($('nodes-table'), shown.map((n) => ({
      key: n.id,
      cls: n.deleted ? 'deleted' : '',
      cells: [
        cell(n.name),
        cell(n.deleted ? badge('deleted') : badge(n.status)),
        cell(n.models.join(', ') || '–'),
        num(n.total_requests),
        cell(ms(n.average_response_time_ms), 'num'),
        num(n.total_input_tokens),
        num(n.total_output_tokens),
        num(n.total_tokens),
        cell(n.average_tokens_per_request.toFixed(1), 'num'),
      ],
    })));
    $('nodes-empty').hidden = count > 0;
  }

  function todayIn(tz) {
    return new Intl.DateTimeFormat('en-CA', { timeZone: tz }).format(new Date());
  }
  function addDays(iso, days) {
    const d = new Date(iso + 'T00:00:00Z');
    d.setUTCDate(d.getUTCDate() + days);
    return d.toISOString().slice(0, 10);
  }
  function statsRange() {
    const tz = $('tz').value || 'UTC';
    const preset = $('range').value;
    const to = preset === 'custom' && $('to').value ? $('to').value : todayIn(tz);
    let from;
    if (preset === 'custom') {
      from = $('from').value || addDays(to, -29);
    } else if (preset === '12m') {
      const d = new Date(to.slice(0, 7) + '-01T00:00:00Z');
      d.setUTCMonth(d.getUTCMonth() - 11);
      from = d.toISOString().slice(0, 10);
    } else {
      from = addDays(to, 1 - parseInt(preset, 10));
    }
    return { tz, from, to };
  }
  function filterQuery() {
    const q = new URLSearchParams();
    if ($('node-filter').value) q.set('node_id', $('node-filter').value);
    if ($('model-filter').value) q.set('model', $('model-filter').value);
    return q;
  }

  function drawChart(id, labels, input, output) {
    const data = {
      labels,
      datasets: [
        { label: 'Input tokens', data: input, backgroundColor: '#2f6fde', stack: 'tokens' },
        { label: 'Output tokens', data: output, backgroundColor: '#36b37e', stack: 'tokens' },
      ],
    };
    const existing = state.charts[id];
    if (existing) {
      existing.data.labels = labels;
      existing.data.datasets[0].data = input;
      existing.data.datasets[1].data = output;
      existing.update('none');
      return;
    }
    state.charts[id] = new window.Chart($(id), {
      type: 'bar',
      data,
      options: {
        responsive: true,
        maintainAspectRatio: false,
        animation: false,
        scales: {
          x: { stacked: true },
          y: { stacked: true, beginAtZero: true, ticks: { callback: (v) => compact(v) } },
        },
        plugins: {
          tooltip: { callbacks: { label: (c) => c.dataset.label + ': ' + exact.format(c.parsed.y) } },
        },
      },
    });
  }

  function setOptions(select, options) {
    const current = select.value;
    const first = select.options[0];
    const fresh = [first.cloneNode(true)];
    for (const [value, label] of options) {
      const o = document.createElement('option');
      o.value = value;
      o.textContent = label;
      fresh.push(o);
    }
    const before = Array.from(select.options).map((o) => o.value + o.textContent).join('|');
    const after = fresh.map((o) => o.value + o.textContent).join('|');
    if (before !== after) {
      select.replaceChildren(...fresh);
      select.value = current;
    }
  }

  async function loadFilters() {
    const [nodes, tokens] = await Promise.all([api('/api/dashboard/nodes'), api('/api/dashboard/stats/tokens')]);
    const nodeOptions = nodes.nodes.map((n) => [String(n.id), n.name + (n.deleted ? ' (deleted)' : '')]);
    setOptions($('node-filter'), nodeOptions);
    setOptions($('history-node'), nodeOptions);
    setOptions($('model-filter'), tokens.by_model.map((m) => [m.model, m.model]));
  }

  function fillTimeZones() {
    const browser = Intl.DateTimeFormat().resolvedOptions().timeZone || 'UTC';
    const zones = typeof Intl.supportedValuesOf === 'function' ? Intl.supportedValuesOf('timeZone') : [];
    const all = Array.from(new Set([browser, 'UTC', ...zones]));
    $('tz').replaceChildren(...all.map((z) => {
      const o = document.createElement('option');
      o.value = z;
      o.textContent = z === browser ? z + ' (browser)' : z;
      return o;
    }));
    $('tz').value = browser;
  }

  async function refreshStats() {
    await loadFilters();
    const { tz, from, to } = statsRange();
    const q = filterQuery();
    q.set('tz', tz);
    const dq = new URLSearchParams(q);
    dq.set('from', from);
    dq.set('to', to);
    const mq = new URLSearchParams(q);
    mq.set('from', from.slice(0, 7));
    mq.set('to', to.slice(0, 7));
    const [daily, monthly, tokens] = await Promise.all([
      api('/api/dashboard/stats/tokens/daily?' + dq),
      api('/api/dashboard/stats/tokens/monthly?' + mq),
      api('/api/dashboard/stats/tokens?' + filterQuery()),
    ]);
    drawChart('daily-chart', daily.days.map((d) => d.date), daily.days.map((d) => d.input_tokens), daily.days.map((d) => d.output_tokens));
    drawChart('monthly-chart', monthly.months.map((m) => m.month), monthly.months.map((m) => m.input_tokens), monthly.months.map((m) => m.output_tokens));
    $('stats-empty').hidden = daily.days.some((d) => d.total_tokens > 0);
    const row = (name, t) => [cell(name), num(t.request_count), num(t.input_tokens), num(t.output_tokens), num(t.total_tokens)];
    fillTable($('by-node'), tokens.by_node.map((n) => ({ key: n.node_id, cells: row(n.node_name, n) })));
    fillTable($('by-model'), tokens.by_model.map((m) => ({ key: m.model, cells: row(m.model, m) })));
  }

  async function refreshHistory() {
    if (!state.filtersLoaded) {
      await loadFilters();
      state.filtersLoaded = true;
    }
    const q = new URLSearchParams({ limit: String(HISTORY_PAGE) });
    if ($('history-node').value) q.set('node_id', $('history-node').value);
    if ($('history-model').value.trim()) q.set('model', $('history-model').value.trim());
    if ($('history-status').value) q.set('status', $('history-status').value);
    if (state.historyCursor) q.set('cursor', state.historyCursor);
    const page = await api('/api/dashboard/request-history?' + q);
    const count = fillTable($('history-table'), page.records.map((r) => ({
      key: r.id,
      cells: [
        cell(new Date(r.timestamp).toLocaleString()),
        cell(r.model || '–'),
        cell(r.node_name || '–'),
        cell(badge(r.status)),
        cell(ms(r.duration_ms), 'num'),
        num(r.input_tokens),
        num(r.output_tokens),
        cell(badge(r.token_source)),
      ],
    })));
    $('history-empty').hidden = count > 0;
    $('older').disabled = !page.next_cursor;
    $('older').dataset.cursor = page.next_cursor || '';
    $('newer').disabled = state.historyCursors.length === 0;
  }

  const pages = { overview: refreshOverview, stats: refreshStats, history: refreshHistory };

  async function refresh() {
    if (!state.page || document.hidden) return;
    try {
      await pages[state.page]();
    } catch (e) {
      if (e instanceof Unauthorized) showLogin('Your session has ended; sign in again.');
      else console.warn('refresh failed:', e.message);
    }
  }

  function route() {
    const name = (location.hash.replace('#/', '') || 'overview');
    const page = pages[name] ? name : 'overview';
    state.page = page;
    $('login').hidden = true;
    $('nav').hidden = false;
    document.querySelectorAll('.page').forEach((p) => { p.hidden = p.id !== 'page-' + page; });
    document.querySelectorAll('#nav a').forEach((a) => {
      if (a.dataset.page === page) a.setAttribute('aria-current', 'page');
      else a.removeAttribute('aria-current');
    });
    refresh();
  }

  // ---- controls ----------------------------------------------------------
  $('range').addEventListener('change', () => {
    const custom = $('range').value === 'custom';
    document.querySelectorAll('#stats-controls .custom').forEach((l) => { l.hidden = !custom; });
    if (custom && !$('to').value) {
      const { from, to } = statsRange();
      $('from').value = from;
      $('to').value = to;
    }
    refresh();
  });
  ['from', 'to', 'node-filter', 'model-filter', 'tz'].forEach((id) => $(id).addEventListener('change', refresh));
  ['history-node', 'history-status', 'history-model'].forEach((id) => $(id).addEventListener('change', () => {
    state.historyCursors = [];
    state.historyCursor = null;
    refresh();
  }));
  $('older').addEventListener('click', () => {
    state.historyCursors.push(state.historyCursor);
    state.historyCursor = $('older').dataset.cursor;
    refresh();
  });
  $('newer').addEventListener('click', () => {
    state.historyCursor = state.historyCursors.pop() || null;
    refresh();
  });

  window.addEventListener('hashchange', route);
  fillTimeZones();
  setInterval(refresh, REFRESH_MS);
  api('/api/dashboard/stats').then(route, (e) => {
    if (e instanceof Unauthorized) showLogin();
    else showLogin('The router did not answer: ' + e.message);
  });
})();
