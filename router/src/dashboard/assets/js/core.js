// llm-router console, shared pieces: the API client, number formatting, table
// helpers, dialogs and form errors. Each page is a file of its own that registers
// itself in LR.pages; main.js routes between them. Plain JS, no build step.
'use strict';

window.LR = (() => {
  const $ = (id) => document.getElementById(id);
  const state = { page: null, charts: {} };

  // Uncaught errors and Content-Security-Policy violations are kept for the
  // end-to-end tests ("no console errors", "the page satisfies its policy").
  // An ended session (main.js then shows the sign-in form) is not an error.
  class Unauthorized extends Error {}
  window.__dashboardErrors = [];
  window.addEventListener('error', (e) => window.__dashboardErrors.push(String(e.message)));
  window.addEventListener('unhandledrejection', (e) => {
    if (!(e.reason instanceof Unauthorized)) window.__dashboardErrors.push(String(e.reason));
  });
  document.addEventListener('securitypolicyviolation', (e) =>
    window.__dashboardErrors.push('CSP violation: ' + e.violatedDirective + ' ' + e.blockedURI));

  // An answer of the API that is not a success: its message, and the parameter it
  // names (`invalid parameter 'base_url': …`), if any.
  class ApiError extends Error {
    constructor(status, message) {
      super(message);
      this.status = status;
      const m = /^invalid parameter '([a-z_]+)'/.exec(message);
      this.param = m ? m[1] : null;
    }
  }

  async function api(path) {
    const r = await fetch(path, { credentials: 'same-origin', headers: { accept: 'application/json' } });
    if (r.status === 401) throw new Unauthorized('session expired');
    const body = await r.json();
    if (!r.ok) throw new ApiError(r.status, body.error ? body.error.message : r.statusText);
    return body;
  }

  // A write through the admin API with the session cookie (the browser adds Origin).
  async function send(method, path, body) {
    const init = { method, credentials: 'same-origin', headers: { accept: 'application/json' } };
    if (body !== undefined) {
      init.headers['content-type'] = 'application/json';
      init.body = JSON.stringify(body);
    }
    const r = await fetch(path, init);
    if (r.status === 401) throw new Unauthorized('session expired');
    const text = await r.text();
    const json = text ? JSON.parse(text) : null;
    if (!r.ok) throw new ApiError(r.status, json && json.error ? json.error.message : r.statusText);
    return json;
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
  function when(iso) {
    return iso ? new Date(iso).toLocaleString() : '–';
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
  function button(text, action, id, cls) {
    const b = document.createElement('button');
    b.type = 'button';
    b.textContent = text;
    b.dataset.action = action;
    b.dataset.id = String(id);
    if (cls) b.className = cls;
    return b;
  }
  // Swaps the body only when its content changed: no flicker, scroll and focus kept.
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

  // ---- forms and dialogs -------------------------------------------------
  // Shows an API error next to the field it names (`<prefix>-<param>-error`), else
  // in the form's general error line (`<prefix>-error`).
  function showError(prefix, err, fieldOf) {
    clearErrors(prefix);
    const param = err.param || (fieldOf ? fieldOf(err) : null);
    const slot = param && $(prefix + '-' + param + '-error');
    if (slot) {
      slot.textContent = err.message;
      const input = $(prefix + '-' + param);
      if (input) {
        input.setAttribute('aria-invalid', 'true');
        input.focus();
      }
    } else {
      $(prefix + '-error').textContent = err.message;
    }
  }
  function clearErrors(prefix) {
    document.querySelectorAll('[id^="' + prefix + '-"][id$="-error"]').forEach((e) => { e.textContent = ''; });
    if ($(prefix + '-error')) $(prefix + '-error').textContent = '';
    document.querySelectorAll('[id^="' + prefix + '-"][aria-invalid]').forEach((e) => e.removeAttribute('aria-invalid'));
  }
  // An optional number field: '' is null (no limit); anything else must be digits.
  function limitValue(input) {
    const v = input.value.trim();
    if (v === '') return null;
    return /^\d+$/.test(v) ? Number(v) : v;
  }
  function modelsValue(input) {
    const v = input.value.trim();
    return v === '' ? null : v.split(',').map((m) => m.trim()).filter((m) => m !== '');
  }

  // Asks for confirmation; `action` runs on Confirm, and its error stays in the dialog.
  function confirmAction(title, text, label, action) {
    const dialog = $('confirm');
    $('confirm-title').textContent = title;
    $('confirm-text').textContent = text;
    $('confirm-error').textContent = '';
    $('confirm-ok').textContent = label;
    $('confirm-ok').onclick = async () => {
      $('confirm-ok').disabled = true;
      try {
        await action();
        dialog.close();
      } catch (e) {
        if (e instanceof Unauthorized) throw e;
        $('confirm-error').textContent = e.message;
      } finally {
        $('confirm-ok').disabled = false;
      }
    };
    dialog.showModal();
    $('confirm-cancel').focus();
  }
  // Cancel buttons of form dialogs.
  document.querySelectorAll('dialog .cancel').forEach((b) =>
    b.addEventListener('click', () => b.closest('dialog').close()));

  return {
    $, state, pages: {}, Unauthorized, ApiError, api, send, exact, compact, setNumber, ms, when,
    cell, num, badge, button, fillTable, setOptions, showError, clearErrors, limitValue, modelsValue,
    confirmAction, refresh: () => {},
  };
})();
