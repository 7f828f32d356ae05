// infraetl dashboard: view switch and live updates. The page is complete without this script.
// Live: EventSource('events') -> on "run-complete" fetch api/sections.json and swap each
// [data-section] in place; if the stream drops, poll api/stats.json every second instead.
(function () {
  'use strict';

  var POLL_MS = 1000;
  var RECONNECT_MS = 15000;
  var body = document.body;
  var current = Number(body.getAttribute('data-generated-at') || 0);
  var progress = document.getElementById('progress');
  var source = null;
  var pollTimer = null;
  var reconnectTimer = null;
  var inFlight = false;
  var again = false;

  document.documentElement.classList.add('js');

  function setView(view) {
    body.setAttribute('data-view', view);
    var tabs = document.querySelectorAll('.tab[data-view]');
    for (var i = 0; i < tabs.length; i++) {
      tabs[i].setAttribute('aria-current', tabs[i].getAttribute('data-view') === view ? 'true' : 'false');
    }
  }

  document.addEventListener('click', function (event) {
    var tab = event.target.closest && event.target.closest('.tab[data-view]');
    if (!tab) { return; }
    event.preventDefault();
    setView(tab.getAttribute('data-view'));
    if (window.history && history.replaceState) { history.replaceState(null, '', '#' + tab.getAttribute('data-view')); }
  });
  window.addEventListener('hashchange', function () {
    if (location.hash === '#all' || location.hash === '#last') { setView(location.hash.slice(1)); }
  });
  setView(location.hash === '#all' ? 'all' : 'last');

  // The HTML comes from our own server's autoescaped render of the same state.
  function apply(payload) {
    if (!payload || !payload.sections || Number(payload.generated_at) === current) { return false; }
    Object.keys(payload.sections).forEach(function (id) {
      var el = document.querySelector('[data-section="' + id + '"]');
      if (el) { el.innerHTML = payload.sections[id]; }
    });
    current = Number(payload.generated_at);
    body.setAttribute('data-generated-at', String(payload.generated_at));
    document.dispatchEvent(new CustomEvent('infraetl:updated', { detail: { generated_at: payload.generated_at } }));
    return true;
  }

  // Fetch the fresh sections; retry briefly if the render has not landed yet.
  function refresh(tries) {
    if (inFlight) { again = true; return; }
    inFlight = true;
    fetch('api/sections.json', { cache: 'no-store' })
      .then(function (r) { if (!r.ok) { throw new Error('HTTP ' + r.status); } return r.json(); })
      .then(function (payload) {
        inFlight = false;
        if (!apply(payload) && tries > 0) { setTimeout(function () { refresh(tries - 1); }, 250); }
        if (again) { again = false; refresh(0); }
      })
      .catch(function () { inFlight = false; });
  }

  function count(n) { return Number(n).toLocaleString('en-US'); }

  function showProgress(data) {
    if (!progress) { return; }
    var text = data.message;
    var users = data.delivered !== undefined ? data.delivered : data.users;
    if (!text) {
      text = 'Run ' + (data.run_id || '') + ' in progress';
      if (users !== undefined && users !== null) {
        text += ': ' + count(users) + ' users';
        if (data.requested) { text += ' of ' + count(data.requested); }
      }
      if (data.applied_batches) { text += ' (' + count(data.applied_batches) + ' batches)'; }
      if (data.quarantined) { text += ', ' + count(data.quarantined) + ' quarantined'; }
    }
    progress.textContent = text;
    progress.hidden = false;
  }

  function parse(event) {
    try { return JSON.parse(event.data) || {}; } catch (e) { return {}; }
  }

  function poll() {
    fetch('api/stats.json', { cache: 'no-store' })
      .then(function (r) { return r.ok ? r.json() : null; })
      .then(function (doc) { if (doc && Number(doc.generated_at) !== current) { refresh(2); } })
      .catch(function () { /* server away: keep polling */ });
  }

  function startPolling() {
    if (!pollTimer) { pollTimer = setInterval(poll, POLL_MS); poll(); }
  }

  function stopPolling() {
    if (pollTimer) { clearInterval(pollTimer); pollTimer = null; }
  }

  function connect() {
    reconnectTimer = null;
    if (!window.EventSource) { startPolling(); return; }
    source = new EventSource('events');
    source.addEventListener('hello', function (event) {
      stopPolling();
      var data = parse(event);
      if (data.generated_at !== undefined && Number(data.generated_at) !== current) { refresh(2); }
    });
    source.addEventListener('progress', function (event) { showProgress(parse(event)); });
    source.addEventListener('run-complete', function (event) {
      var data = parse(event);
      if (progress) {
        progress.textContent = 'Run ' + (data.run_id || '') + ' ' + (data.state || 'complete') + '.';
        progress.hidden = false;
      }
      refresh(8);
    });
    source.onerror = function () {
      startPolling();
      // A stream that is CLOSED (e.g. a static copy without /events) is retried now and then.
      if (source.readyState === 2 && !reconnectTimer) {
        source = null;
        reconnectTimer = setTimeout(connect, RECONNECT_MS);
      }
    };
  }

  connect();
}());
