// Speed: per node × model over a recent window, output tokens per second of
// generation, time to first token (p50, p95) and requests per minute
// (/api/dashboard/stats/speed), as a table and a chart.
'use strict';

(() => {
  const LR = window.LR;
  const { $, state, api, fillTable, cell, num, exact } = LR;

  const fixed = (x, digits) => (x === null ? '–' : x.toFixed(digits));
  const msOrDash = (x) => (x === null ? '–' : exact.format(x) + ' ms');

  function figure(text, value) {
    const td = cell(text, 'num');
    td.dataset.value = value === null ? '' : String(value);
    return td;
  }

  function draw(rows) {
    const labels = rows.map((r) => r.node_name + ' / ' + r.model);
    const series = [
      rows.map((r) => r.output_tokens_per_second),
      rows.map((r) => r.ttft_p50_ms),
      rows.map((r) => r.ttft_p95_ms),
    ];
    const chart = state.charts['speed-chart'];
    if (chart) {
      chart.data.labels = labels;
      series.forEach((data, i) => { chart.data.datasets[i].data = data; });
      chart.update('none');
      return;
    }
    state.charts['speed-chart'] = new window.Chart($('speed-chart'), {
      type: 'bar',
      data: {
        labels,
        datasets: [
          { label: 'Output tokens / s', data: series[0], backgroundColor: '#36b37e', yAxisID: 'speed' },
          { label: 'TTFT p50 (ms)', data: series[1], backgroundColor: '#2f6fde', yAxisID: 'ttft' },
          { label: 'TTFT p95 (ms)', data: series[2], backgroundColor: '#9db8ef', yAxisID: 'ttft' },
        ],
      },
      options: {
        responsive: true,
        maintainAspectRatio: false,
        animation: false,
        scales: {
          speed: { type: 'linear', position: 'left', beginAtZero: true, title: { display: true, text: 'tokens / s' } },
          ttft: { type: 'linear', position: 'right', beginAtZero: true, grid: { drawOnChartArea: false },
            title: { display: true, text: 'ms' } },
        },
      },
    });
  }

  async function refresh() {
    const s = await api('/api/dashboard/stats/speed?minutes=' + encodeURIComponent($('speed-window').value));
    const rows = s.by_node_model;
    const count = fillTable($('speed-table'), rows.map((r) => ({
      key: r.node_id + '/' + r.model,
      cells: [
        cell(r.node_name),
        cell(r.model),
        num(r.request_count),
        figure(fixed(r.requests_per_minute, 2), r.requests_per_minute),
        figure(msOrDash(r.ttft_p50_ms), r.ttft_p50_ms),
        figure(msOrDash(r.ttft_p95_ms), r.ttft_p95_ms),
        figure(fixed(r.output_tokens_per_second, 1), r.output_tokens_per_second),
      ],
    })));
    $('speed-empty').hidden = count > 0;
    draw(rows);
  }

  function init() {
    $('speed-window').addEventListener('change', () => LR.refresh());
  }

  LR.pages.speed = { refresh, init };
})();
