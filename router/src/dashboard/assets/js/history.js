// Requests: the history with filters (node, model, key, status) and cursor paging;
// a row opens the full record in a dialog.
'use strict';

(() => {
  const LR = window.LR;
  const { $, api, fillTable, cell, num, badge, ms, when } = LR;
  const PAGE = 25;
  const paging = { cursors: [], cursor: null, filtersLoaded: false };

  async function refresh() {
    if (!paging.filtersLoaded) {
      await LR.loadFilters();
      paging.filtersLoaded = true;
    }
    const q = new URLSearchParams({ limit: String(PAGE) });
    if ($('history-node').value) q.set('node_id', $('history-node').value);
    if ($('history-model').value.trim()) q.set('model', $('history-model').value.trim());
    if ($('history-key').value) q.set('key_id', $('history-key').value);
    if ($('history-status').value) q.set('status', $('history-status').value);
    if (paging.cursor) q.set('cursor', paging.cursor);
    const page = await api('/api/dashboard/request-history?' + q);
    const count = fillTable($('history-table'), page.records.map((r) => {
      // The time opens the record: a button, so it works by keyboard too.
      const open = document.createElement('button');
      open.type = 'button';
      open.className = 'link-button';
      open.dataset.action = 'open';
      open.dataset.id = String(r.id);
      open.textContent = new Date(r.timestamp).toLocaleString();
      return {
        key: r.id,
        cells: [
          cell(open),
          cell(r.model || '–'),
          cell(r.node_name || '–'),
          cell(badge(r.status)),
          cell(ms(r.duration_ms), 'num'),
          num(r.input_tokens),
          num(r.output_tokens),
          cell(badge(r.token_source)),
          cell(r.api_key_name || 'anonymous'),
        ],
      };
    }));
    $('history-empty').hidden = count > 0;
    $('older').disabled = !page.next_cursor;
    $('older').dataset.cursor = page.next_cursor || '';
    $('newer').disabled = paging.cursors.length === 0;
  }

  // Every field of the record, in the API's order, with its raw value.
  const LABELS = {
    id: 'Id', timestamp: 'Started', completed_at: 'Completed', request_type: 'Endpoint', model: 'Model',
    node_id: 'Node id', node_name: 'Node', client_ip: 'Client address', api_key_id: 'Key id',
    api_key_name: 'Key', stream: 'Streamed', status: 'Status', http_status: 'HTTP status',
    error_message: 'Error', duration_ms: 'Duration (ms)', time_to_first_token_ms: 'Time to first token (ms)',
    input_tokens: 'Input tokens', output_tokens: 'Output tokens', total_tokens: 'Total tokens',
    token_source: 'Token source', request_body: 'Request body', response_body: 'Node\u2019s answer',
  };
  // A stored body (`--store-bodies`): its text as sent, and a note when it was cut.
  function bodyView(body) {
    const pre = document.createElement('pre');
    pre.className = 'body';
    pre.textContent = body.text;
    if (!body.truncated) return [pre];
    const note = document.createElement('p');
    note.className = 'hint';
    note.textContent = 'Cut: only the first bytes are stored.';
    return [pre, note];
  }
  async function openRecord(id) {
    const r = await api('/api/dashboard/request-history/' + encodeURIComponent(id));
    const items = [];
    for (const [field, value] of Object.entries(r)) {
      const dt = document.createElement('dt');
      dt.textContent = LABELS[field] || field;
      const dd = document.createElement('dd');
      dd.dataset.field = field;
      if (field === 'request_body' || field === 'response_body') dd.append(...bodyView(value));
      else dd.textContent = value === null ? '–' : String(value);
      if (field === 'timestamp' || field === 'completed_at') dd.title = when(value);
      items.push(dt, dd);
    }
    $('record-fields').replaceChildren(...items);
    $('record-title').textContent = 'Request ' + r.id;
    $('record').showModal();
    $('record-close').focus();
  }

  function resetPaging() {
    paging.cursors = [];
    paging.cursor = null;
    LR.refresh();
  }

  function init() {
    ['history-node', 'history-status', 'history-model', 'history-key']
      .forEach((id) => $(id).addEventListener('change', resetPaging));
    $('older').addEventListener('click', () => {
      paging.cursors.push(paging.cursor);
      paging.cursor = $('older').dataset.cursor;
      LR.refresh();
    });
    $('newer').addEventListener('click', () => {
      paging.cursor = paging.cursors.pop() || null;
      LR.refresh();
    });
    $('history-table').addEventListener('click', (e) => {
      const b = e.target.closest('button[data-action="open"]');
      if (b) openRecord(b.dataset.id);
    });
  }

  LR.pages.history = { refresh, init };
})();
