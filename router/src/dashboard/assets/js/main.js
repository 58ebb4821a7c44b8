// Sign-in, navigation between pages and the refresh loop: the visible page is
// refreshed every 5 s (and after every change made through it), replacing only
// what changed.
'use strict';

(() => {
  const LR = window.LR;
  const { $, state, pages, Unauthorized } = LR;
  const REFRESH_MS = 5000;

  function showLogin(message) {
    $('nav').hidden = true;
    document.querySelectorAll('.page').forEach((p) => { p.hidden = true; });
    document.querySelectorAll('dialog[open]').forEach((d) => d.close());
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
    } else if (r.status === 401) {
      $('login-error').textContent = 'Wrong admin key.';
    } else if (r.status === 429) {
      $('login-error').textContent = 'Too many wrong keys: wait ' + (r.headers.get('retry-after') || 'a few') + ' s and try again.';
    } else {
      $('login-error').textContent = 'Sign-in failed (' + r.status + ').';
    }
  });

  $('logout').addEventListener('click', async () => {
    await fetch('/dashboard/logout', { method: 'POST', credentials: 'same-origin' });
    showLogin('Signed out.');
  });

  async function refresh() {
    if (!state.page || document.hidden) return;
    try {
      await pages[state.page].refresh();
    } catch (e) {
      if (e instanceof Unauthorized) showLogin('Your session has ended; sign in again.');
      else console.warn('refresh failed:', e.message);
    }
  }
  LR.refresh = refresh;
  LR.showLogin = showLogin;

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

  // A failed write's session error signs out; other errors are shown where they occur.
  window.addEventListener('unhandledrejection', (e) => {
    if (e.reason instanceof Unauthorized) {
      e.preventDefault();
      showLogin('Your session has ended; sign in again.');
    }
  });

  window.addEventListener('hashchange', route);
  Object.values(pages).forEach((p) => { if (p.init) p.init(); });
  setInterval(refresh, REFRESH_MS);
  LR.api('/api/dashboard/stats').then(route, (e) => {
    if (e instanceof Unauthorized) showLogin();
    else showLogin('The router did not answer: ' + e.message);
  });
})();
