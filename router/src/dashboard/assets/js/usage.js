// Usage (P-2): daily and monthly token charts over a range, by node, model and key,
// filters (node, model, key, time zone) and the CSV export of the same range.
'use strict';

(() => {
  const LR = window.LR;
  const { $, state, api, fillTable, cell, num, setOptions, compact, exact } = LR;

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
    if ($('key-filter').value) q.set('key_id', $('key-filter').value);
    return q;
  }

  function drawChart(id, labels, input, output) {
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
      data: {
        labels,
        datasets: [
          { label: 'Input tokens', data: input, backgroundColor: '#2f6fde', stack: 'tokens' },
          { label: 'Output tokens', data: output, backgroundColor: '#36b37e', stack: 'tokens' },
        ],
      },
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

  // The node, model and key choices of the usage and request pages.
  async function loadFilters() {
    const [nodes, tokens, keys] = await Promise.all([
      api('/api/dashboard/nodes'), api('/api/dashboard/stats/tokens'), api('/api/keys'),
    ]);
    const nodeOptions = nodes.nodes.map((n) => [String(n.id), n.name + (n.deleted ? ' (deleted)' : '')]);
    setOptions($('node-filter'), nodeOptions);
    setOptions($('history-node'), nodeOptions);
    setOptions($('model-filter'), tokens.by_model.map((m) => [m.model, m.model]));
    const keyOptions = [['anonymous', 'anonymous (no key)'],
      ...keys.keys.map((k) => [String(k.id), k.name + (k.revoked ? ' (revoked)' : '')])];
    setOptions($('key-filter'), keyOptions);
    setOptions($('history-key'), keyOptions);
  }
  LR.loadFilters = loadFilters;

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

  // The export covers what the page shows: its range, zone and filters.
  function updateExportLink(tz, from, to) {
    const q = filterQuery();
    const group = $('export-group').value;
    q.set('group', group);
    q.set('tz', tz);
    q.set('from', group === 'month' ? from.slice(0, 7) : from);
    q.set('to', group === 'month' ? to.slice(0, 7) : to);
    $('export-link').href = '/api/dashboard/export.csv?' + q;
    $('export-link').download = 'llm-router-usage-' + from + '-' + to + '-' + group + '.csv';
  }

  async function refresh() {
    await loadFilters();
    const { tz, from, to } = statsRange();
    updateExportLink(tz, from, to);
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
    fillTable($('by-key'), tokens.by_key.map((k) => ({
      key: k.key_id === null ? 'anonymous' : k.key_id,
      cells: row(k.key_name, k),
    })));
  }

  function init() {
    fillTimeZones();
    $('range').addEventListener('change', () => {
      const custom = $('range').value === 'custom';
      document.querySelectorAll('#stats-controls .custom').forEach((l) => { l.hidden = !custom; });
      if (custom && !$('to').value) {
        const { from, to } = statsRange();
        $('from').value = from;
        $('to').value = to;
      }
      LR.refresh();
    });
    ['from', 'to', 'node-filter', 'model-filter', 'key-filter', 'tz', 'export-group']
      .forEach((id) => $(id).addEventListener('change', () => LR.refresh()));
  }

  LR.pages.stats = { refresh, init };
})();
