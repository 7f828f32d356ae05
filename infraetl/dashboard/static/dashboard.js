// infraetl dashboard: view switch and live updates. The page is complete without this script.
// Live: EventSource('events') -> on "run-complete" fetch api/sections.json and swap each
// [data-section] in place, keeping open "Numbers" tables open and the focus where it was.
// While the stream is down (or absent: a static copy), poll api/stats.json instead. A hidden
// tab holds no stream (a browser allows six connections to a host: six open tabs would take
// them all) and catches up when shown. Every retry backs off, with jitter.
(function () {
  'use strict';

  var POLL_MS = 2000;        // between polls that succeed (a static copy has no stream)
  var MAX_BACKOFF_MS = 60000;
  var SILENT_MS = 45000;     // the server pings every 15 s of silence: past this the stream is dead
  var body = document.body;
  var current = Number(body.getAttribute('data-generated-at') || 0);
  var progress = document.getElementById('progress');
  var source = null;
  var lastEvent = 0;
  var streamFailures = 0;
  var pollFailures = 0;
  var pollTimer = null;
  var reconnectTimer = null;
  var watchdog = null;
  var inFlight = false;
  var again = false;
  var refreshTimer = null;

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

  // Printing shows both views (the style sheet) and every "Numbers" table, closed again after.
  var openedForPrint = [];
  window.addEventListener('beforeprint', function () {
    openedForPrint = Array.prototype.filter.call(document.querySelectorAll('details:not([open])'), function (d) {
      d.open = true;
      return true;
    });
  });
  window.addEventListener('afterprint', function () {
    openedForPrint.forEach(function (d) { d.open = false; });
    openedForPrint = [];
  });

  // Up to twice the base delay per failure so far, capped, times 0.5-1.5: a hundred tabs that
  // lost the same server do not come back in step.
  function backoff(base, failures) {
    return Math.min(MAX_BACKOFF_MS, base * Math.pow(2, Math.min(failures, 10))) * (0.5 + Math.random());
  }

  // Which "Numbers" tables are open, and where the focus is, by their place in the page.
  function openTables(el) {
    return Array.prototype.map.call(el.querySelectorAll('[data-chart] details[open]'), function (d) {
      return d.closest('[data-chart]').getAttribute('data-chart');
    });
  }

  function restore(el, open, focusChart) {
    open.forEach(function (chart) {
      var d = el.querySelector('[data-chart="' + chart + '"] details');
      if (d) { d.open = true; }
    });
    if (focusChart) {
      var summary = el.querySelector('[data-chart="' + focusChart + '"] summary');
      if (summary) { summary.focus({ preventScroll: true }); }
    }
  }

  // The HTML comes from our own server's autoescaped render of the same state.
  function apply(payload) {
    if (!payload || !payload.sections || Number(payload.generated_at) === current) { return false; }
    var focused = document.activeElement;
    var focusChart = focused && focused.tagName === 'SUMMARY' && focused.closest('[data-chart]');
    // Another element that holds the focus by name (the run table's scroller): it keeps it.
    var focusName = focused && focused.getAttribute && focused.getAttribute('data-focus');
    Object.keys(payload.sections).forEach(function (id) {
      var el = document.querySelector('[data-section="' + CSS.escape(id) + '"]');
      if (!el) { return; }
      var open = openTables(el);
      var chart = focusChart && el.contains(focusChart) ? focusChart.getAttribute('data-chart') : null;
      var hadFocus = focusName && el.contains(focused);
      el.innerHTML = payload.sections[id];
      restore(el, open, chart);
      if (hadFocus) {
        var named = el.querySelector('[data-focus="' + CSS.escape(focusName) + '"]');
        if (named) { named.focus({ preventScroll: true }); }
      }
    });
    current = Number(payload.generated_at);
    body.setAttribute('data-generated-at', String(payload.generated_at));
    document.dispatchEvent(new CustomEvent('infraetl:updated', { detail: { generated_at: payload.generated_at } }));
    return true;
  }

  // Fetch the fresh sections; retry if the render has not landed yet (``tries`` times) or the
  // fetch failed (until it succeeds, backing off).
  function refresh(tries, failures) {
    failures = failures || 0;
    // One fetch, or one retry waiting, at a time: every other trigger just asks for one more.
    if (inFlight || refreshTimer) { again = true; return; }
    inFlight = true;
    fetch('api/sections.json', { cache: 'no-store' })
      .then(function (r) { if (!r.ok) { throw new Error('HTTP ' + r.status); } return r.json(); })
      .then(function (payload) {
        inFlight = false;
        if (!apply(payload) && tries > 0) { retry(tries - 1, 0, 250); return; }
        if (again) { again = false; refresh(0); }
      })
      .catch(function () {
        // Until it lands: the stream said there is something new, and will not say it again.
        // (A hidden page stops here; shown again, its stream's hello asks afresh.)
        inFlight = false;
        again = false;
        if (!document.hidden) { retry(Math.max(tries - 1, 0), failures + 1, backoff(500, failures)); }
      });
  }

  function retry(tries, failures, delay) {
    refreshTimer = setTimeout(function () { refreshTimer = null; refresh(tries, failures); }, delay);
  }

  function count(n) { return Number(n).toLocaleString('en-US'); }

  function showEnd(data) {
    if (!progress) { return; }
    progress.textContent = 'Run ' + (data.run_id || '') + ' ' + (data.state || 'complete') + '.';
    progress.hidden = false;
  }

  // What the page missed while away: the last run's progress, or how it ended.
  function showNews(news) {
    if (!news || !news.data) { return; }
    if (news.event === 'progress') { showProgress(news.data); } else { showEnd(news.data); }
  }

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

  // Conditional requests where the server offers them (nginx: ETag), so an idle poll costs a 304.
  function poll() {
    pollTimer = null;
    fetch('api/stats.json', { cache: 'no-cache' })
      .then(function (r) { if (!r.ok) { throw new Error('HTTP ' + r.status); } return r.json(); })
      .then(function (doc) {
        pollFailures = 0;
        if (doc && Number(doc.generated_at) !== current) { refresh(2); }
        schedulePoll(POLL_MS);
      })
      .catch(function () { pollFailures += 1; schedulePoll(backoff(1000, pollFailures)); });
  }

  function schedulePoll(delay) {
    if (!pollTimer && !document.hidden && !(source && source.readyState === 1)) {
      pollTimer = setTimeout(poll, delay);
    }
  }

  function startPolling() { schedulePoll(0); }

  function stopPolling() {
    if (pollTimer) { clearTimeout(pollTimer); pollTimer = null; }
  }

  function heard() { lastEvent = Date.now(); streamFailures = 0; }

  function disconnect() {
    if (source) { source.close(); source = null; }
    if (reconnectTimer) { clearTimeout(reconnectTimer); reconnectTimer = null; }
    if (watchdog) { clearInterval(watchdog); watchdog = null; }
  }

  function reconnectLater() {
    disconnect();
    streamFailures += 1;
    reconnectTimer = setTimeout(connect, backoff(1000, streamFailures));
    startPolling();
  }

  function connect() {
    disconnect();
    if (document.hidden) { return; }
    if (!window.EventSource) { startPolling(); return; }
    source = new EventSource('events');
    lastEvent = Date.now();
    source.addEventListener('hello', function (event) {
      heard();
      stopPolling();
      var data = parse(event);
      showNews(data.last);
      if (data.generated_at !== undefined && Number(data.generated_at) !== current) { refresh(2); }
    });
    source.addEventListener('ping', heard);
    source.addEventListener('progress', function (event) { heard(); showProgress(parse(event)); });
    // The figures changed without a run ending (a BEGIN that came last): fetch them.
    source.addEventListener('updated', function () { heard(); refresh(8); });
    source.addEventListener('run-complete', function (event) {
      heard();
      showEnd(parse(event));
      refresh(8);
    });
    // The browser's own reconnect would retry every second, for ever: back off instead.
    source.onerror = reconnectLater;
    // A stream a middlebox dropped without a word looks open: no ping for SILENT_MS says otherwise.
    watchdog = setInterval(function () {
      if (Date.now() - lastEvent > SILENT_MS) { reconnectLater(); }
    }, 5000);
  }

  document.addEventListener('visibilitychange', function () {
    if (document.hidden) {
      disconnect();
      stopPolling();
      if (refreshTimer) { clearTimeout(refreshTimer); refreshTimer = null; }
    } else {
      streamFailures = 0;
      connect();  // its hello says whether the page is behind
    }
  });

  connect();
}());
