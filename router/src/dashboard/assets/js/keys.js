// Keys: create client keys (the secret shown once, with a copy button), edit their
// limits and budgets, disable and revoke them; per key, usage today and this month
// against its budgets, last use and total tokens (/api/keys + /api/dashboard/keys).
//
// The secret lives in the creation dialog's input only, and is wiped when the dialog
// closes: no variable, storage or other element keeps it.
'use strict';

(() => {
  const LR = window.LR;
  const { $, api, send, fillTable, cell, num, badge, button, showError, clearErrors, confirmAction,
    limitValue, modelsValue, exact, when } = LR;
  const LIMITS = ['daily_token_budget', 'monthly_token_budget', 'rpm_limit', 'tpm_limit', 'max_concurrent'];
  let keys = [];
  let editing = null;

  function status(k) {
    if (k.revoked) return badge('revoked');
    if (k.expires_at && new Date(k.expires_at) <= new Date()) return badge('expired');
    return k.enabled ? badge('active') : badge('disabled');
  }

  // Used tokens against a budget: a bar (<meter>) and the exact figures.
  function budget(used, limit, what) {
    const wrap = document.createElement('div');
    wrap.className = 'budget';
    const text = document.createElement('span');
    text.dataset.value = String(used);
    text.textContent = exact.format(used) + (limit === null ? '' : ' / ' + exact.format(limit));
    if (limit !== null) {
      const meter = document.createElement('meter');
      meter.min = 0;
      meter.max = Math.max(limit, 1);
      meter.value = Math.min(used, meter.max);
      meter.high = meter.max * 0.8;
      meter.optimum = 0;
      meter.setAttribute('aria-label', what + ': ' + text.textContent + ' tokens');
      wrap.append(meter);
    }
    wrap.append(text);
    return wrap;
  }

  function limitsText(k) {
    const parts = [];
    if (k.rpm_limit !== null) parts.push(k.rpm_limit + ' rpm');
    if (k.tpm_limit !== null) parts.push(exact.format(k.tpm_limit) + ' tpm');
    if (k.max_concurrent !== null) parts.push(k.max_concurrent + ' at once');
    if (k.allowed_models !== null) parts.push('models: ' + k.allowed_models.join(', '));
    if (k.budget_tz !== 'UTC') parts.push('budgets in ' + k.budget_tz);
    return parts.join(' · ') || 'none';
  }

  async function refresh() {
    const [list, usage] = await Promise.all([api('/api/keys'), api('/api/dashboard/keys')]);
    keys = list.keys;
    const usageOf = new Map(usage.keys.map((u) => [u.id, u]));
    const count = fillTable($('key-list'), keys.map((k) => {
      const u = usageOf.get(k.id) || { today_tokens: 0, month_tokens: 0, total_requests: 0, total_tokens: 0 };
      const actions = document.createElement('div');
      actions.className = 'row-actions';
      if (!k.revoked) {
        actions.append(
          button('Edit', 'edit', k.id),
          button(k.enabled ? 'Disable' : 'Enable', k.enabled ? 'disable' : 'enable', k.id),
          button('Revoke', 'revoke', k.id, 'danger'),
        );
      }
      return {
        key: k.id,
        cls: k.revoked ? 'deleted' : '',
        cells: [
          cell(k.name),
          cell(k.prefix + '…', 'mono'),
          cell(status(k)),
          cell(budget(u.today_tokens, k.daily_token_budget, 'today')),
          cell(budget(u.month_tokens, k.monthly_token_budget, 'this month')),
          num(u.total_requests),
          num(u.total_tokens),
          cell(when(k.last_used_at)),
          cell(limitsText(k), 'wrap'),
          cell(actions),
        ],
      };
    }));
    $('key-list-empty').hidden = count > 0;
  }

  // The body of a create or edit form (`prefix` = key-add or key-edit); on edit, only
  // the fields that differ from `before`.
  function formBody(prefix, before) {
    const body = {};
    const name = $(prefix + '-name').value.trim();
    if (!before || name !== before.name) body.name = name;
    for (const f of LIMITS) {
      const v = limitValue($(prefix + '-' + f));
      if (!before ? v !== null : v !== before[f]) body[f] = v;
    }
    const models = modelsValue($(prefix + '-allowed_models'));
    if (!before ? models !== null : JSON.stringify(models) !== JSON.stringify(before.allowed_models)) {
      body.allowed_models = models;
    }
    const tz = $(prefix + '-budget_tz').value.trim() || 'UTC';
    if (!before ? tz !== 'UTC' : tz !== before.budget_tz) body.budget_tz = tz;
    return body;
  }

  async function create(e) {
    e.preventDefault();
    clearErrors('key-add');
    $('key-add-status').textContent = '';
    $('key-add-submit').disabled = true;
    try {
      const created = await send('POST', '/api/keys', formBody('key-add', null));
      $('key-add').reset();
      $('key-add-status').textContent = 'Created ' + created.name + '.';
      $('key-secret-value').value = created.key;
      $('key-secret-copied').textContent = '';
      $('key-secret').showModal();
      $('key-secret-value').select();
      $('key-secret-copy').focus();
      await refresh();
    } catch (err) {
      if (err instanceof LR.Unauthorized) throw err;
      showError('key-add', err);
    } finally {
      $('key-add-submit').disabled = false;
    }
  }

  async function copySecret() {
    const input = $('key-secret-value');
    try {
      await navigator.clipboard.writeText(input.value);
    } catch (_) {
      // No clipboard permission (plain http, older browsers): copy the selection.
      input.select();
      document.execCommand('copy');
    }
    $('key-secret-copied').textContent = 'Copied to the clipboard.';
  }

  function openEdit(k) {
    editing = k;
    clearErrors('key-edit');
    $('key-edit-title').textContent = 'Edit ' + k.name;
    $('key-edit-name').value = k.name;
    for (const f of LIMITS) $('key-edit-' + f).value = k[f] === null ? '' : String(k[f]);
    $('key-edit-allowed_models').value = k.allowed_models ? k.allowed_models.join(', ') : '';
    $('key-edit-budget_tz').value = k.budget_tz;
    $('key-edit').showModal();
    $('key-edit-name').focus();
  }

  async function save(e) {
    e.preventDefault();
    const body = formBody('key-edit', editing);
    $('key-edit-save').disabled = true;
    try {
      if (Object.keys(body).length > 0) await send('PATCH', '/api/keys/' + editing.id, body);
      $('key-edit').close();
      await refresh();
    } catch (err) {
      if (err instanceof LR.Unauthorized) throw err;
      showError('key-edit', err);
    } finally {
      $('key-edit-save').disabled = false;
    }
  }

  async function act(e) {
    const b = e.target.closest('button[data-action]');
    if (!b) return;
    const k = keys.find((x) => String(x.id) === b.dataset.id);
    if (!k) return;
    switch (b.dataset.action) {
      case 'edit':
        openEdit(k);
        break;
      case 'disable':
      case 'enable':
        await send('PATCH', '/api/keys/' + k.id, { enabled: b.dataset.action === 'enable' });
        await refresh();
        break;
      case 'revoke':
        confirmAction('Revoke ' + k.name + '?',
          'Requests with this key are refused from now on, for good. Its usage stays in every figure.',
          'Revoke key', async () => {
            await send('DELETE', '/api/keys/' + k.id);
            await refresh();
          });
        break;
      default:
    }
  }

  function init() {
    $('key-add').addEventListener('submit', create);
    $('key-edit-form').addEventListener('submit', save);
    $('key-list').addEventListener('click', act);
    $('key-secret-copy').addEventListener('click', copySecret);
    // However the dialog closes (button, Escape), the secret leaves the page.
    $('key-secret').addEventListener('close', () => {
      $('key-secret-value').value = '';
      $('key-secret-copied').textContent = '';
    });
  }

  LR.pages.keys = { refresh, init };
})();
