// Nodes: add, edit (name, API key, kind, capacity, weight, enabled, include_usage) and delete the
// nodes of /api/nodes; the list shows status, kind and last_error and refreshes in
// place. An error of the API is shown next to the field it names.
'use strict';

(() => {
  const LR = window.LR;
  const { $, api, send, fillTable, cell, badge, button, showError, clearErrors, confirmAction, limitValue } = LR;
  let nodes = [];
  let editing = null;

  // 409 (a live node has this base_url) concerns the URL, though it names no parameter.
  const conflictIsUrl = (e) => (e.status === 409 ? 'base_url' : null);

  async function refresh() {
    nodes = (await api('/api/nodes')).nodes;
    const count = fillTable($('node-list'), nodes.map((n) => {
      const actions = document.createElement('div');
      actions.className = 'row-actions';
      actions.append(
        button('Edit', 'edit', n.id),
        button(n.enabled ? 'Disable' : 'Enable', n.enabled ? 'disable' : 'enable', n.id),
        button('Delete', 'delete', n.id, 'danger'),
      );
      return {
        key: n.id,
        cls: n.enabled ? '' : 'disabled',
        cells: [
          cell(n.name),
          cell(n.base_url),
          cell(n.kind + (n.kind_explicit ? '' : ' (detected)')),
          cell(n.enabled ? badge(n.status) : badge('disabled')),
          cell(n.enabled ? 'yes' : 'no'),
          cell(n.capacity == null ? 'no limit' : String(n.capacity) + (n.max_concurrent == null ? ' (slots)' : '')),
          cell(String(n.weight)),
          cell(n.include_usage ? (n.include_usage_supported ? 'asked' : 'asked, refused by node') : 'not asked'),
          cell(n.models.join(', ') || '–'),
          cell(n.last_error || '–', 'wrap'),
          cell(actions),
        ],
      };
    }));
    $('node-list-empty').hidden = count > 0;
  }

  async function add(e) {
    e.preventDefault();
    clearErrors('node-add');
    const body = { base_url: $('node-add-base_url').value.trim() };
    if ($('node-add-name').value.trim()) body.name = $('node-add-name').value.trim();
    if ($('node-add-api_key').value) body.api_key = $('node-add-api_key').value;
    if ($('node-add-kind').value) body.kind = $('node-add-kind').value;
    $('node-add-submit').disabled = true;
    try {
      const node = await send('POST', '/api/nodes', body);
      $('node-add').reset();
      $('node-add-status').textContent = 'Added ' + node.name + ' (' + node.status + ').';
      await refresh();
    } catch (err) {
      $('node-add-status').textContent = '';
      if (err instanceof LR.Unauthorized) throw err;
      showError('node-add', err, conflictIsUrl);
    } finally {
      $('node-add-submit').disabled = false;
    }
  }

  function openEdit(node) {
    editing = node;
    clearErrors('node-edit');
    $('node-edit-title').textContent = 'Edit ' + node.name;
    $('node-edit-name').value = node.name;
    $('node-edit-api_key').value = '';
    $('node-edit-api_key').placeholder = node.has_api_key ? 'unchanged (a key is set)' : 'none';
    $('node-edit-clear_key').checked = false;
    $('node-edit-clear_key').disabled = !node.has_api_key;
    $('node-edit-api_key').disabled = false;
    $('node-edit-kind').value = node.kind_explicit ? node.kind : '';
    $('node-edit-max_concurrent').value = node.max_concurrent == null ? '' : String(node.max_concurrent);
    $('node-edit-weight').value = String(node.weight);
    $('node-edit-enabled').checked = node.enabled;
    $('node-edit-include_usage').checked = node.include_usage;
    $('node-edit').showModal();
    $('node-edit-name').focus();
  }

  // Only what changed is sent.
  async function save(e) {
    e.preventDefault();
    const n = editing;
    const body = {};
    const name = $('node-edit-name').value.trim();
    if (name !== n.name) body.name = name;
    if ($('node-edit-clear_key').checked) body.api_key = null;
    else if ($('node-edit-api_key').value) body.api_key = $('node-edit-api_key').value;
    const kind = $('node-edit-kind').value;
    if (kind !== (n.kind_explicit ? n.kind : '')) body.kind = kind || null;
    const max = limitValue($('node-edit-max_concurrent'));
    if (max !== n.max_concurrent) body.max_concurrent = max;
    const weight = limitValue($('node-edit-weight'));
    if (weight !== n.weight) body.weight = weight;
    if ($('node-edit-enabled').checked !== n.enabled) body.enabled = $('node-edit-enabled').checked;
    if ($('node-edit-include_usage').checked !== n.include_usage) body.include_usage = $('node-edit-include_usage').checked;
    $('node-edit-save').disabled = true;
    try {
      if (Object.keys(body).length > 0) await send('PATCH', '/api/nodes/' + n.id, body);
      $('node-edit-api_key').value = '';
      $('node-edit').close();
      await refresh();
    } catch (err) {
      if (err instanceof LR.Unauthorized) throw err;
      showError('node-edit', err);
    } finally {
      $('node-edit-save').disabled = false;
    }
  }

  async function act(e) {
    const b = e.target.closest('button[data-action]');
    if (!b) return;
    const node = nodes.find((n) => String(n.id) === b.dataset.id);
    if (!node) return;
    switch (b.dataset.action) {
      case 'edit':
        openEdit(node);
        break;
      case 'disable':
      case 'enable':
        await send('PATCH', '/api/nodes/' + node.id, { enabled: b.dataset.action === 'enable' });
        await refresh();
        break;
      case 'delete':
        confirmAction('Delete ' + node.name + '?',
          'The node leaves routing at once. Its statistics stay in every figure.', 'Delete node',
          async () => {
            await send('DELETE', '/api/nodes/' + node.id);
            await refresh();
          });
        break;
      default:
    }
  }

  function init() {
    $('node-add').addEventListener('submit', add);
    $('node-edit-form').addEventListener('submit', save);
    $('node-list').addEventListener('click', act);
    $('node-edit-clear_key').addEventListener('change', () => {
      $('node-edit-api_key').disabled = $('node-edit-clear_key').checked;
    });
  }

  LR.pages.nodes = { refresh, init };
})();
