// skiff dashboard: enhances the server-rendered pages. Loaded as a file (the
// Content-Security-Policy allows no inline script and no eval). Everything a user
// controls is put into the page with textContent or as an attribute value, never as HTML.
'use strict';
(() => {
  const body = document.body;
  const view = body.dataset.view;
  const authRequired = body.dataset.auth === 'required';
  const TOKEN_KEY = 'skiff.apiToken';
  const PHASES = ['Pending', 'Creating', 'Running', 'Deleting', 'Succeeded', 'Failed', 'Invalid'];
  const FINAL = new Set(['Succeeded', 'Failed', 'Invalid']);
  const CHART_BARS = 40;

  let token = sessionStorage.getItem(TOKEN_KEY) || '';
  const tasks = new Map(); // task key -> status object, as /v1/tasks gives them
  const rows = new Map(); // task key -> <tr>
  let sortKey = 'task';
  let sortDir = 1;
  let renderQueued = false;
  // Tasks changed by an event while a full fetch was in flight: the event is newer.
  let touched = null;

  const $ = (id) => document.getElementById(id);

  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v !== undefined && v !== null) node.setAttribute(k, String(v));
    }
    for (const child of children) {
      if (child === null || child === undefined) continue;
      node.append(typeof child === 'string' || typeof child === 'number' ? String(child) : child);
    }
    return node;
  }

  const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
  const taskPath = (task) => task.split('/').map(encodeURIComponent).join('/');

  function notice(text, isError) {
    const box = $('notice');
    box.textContent = text;
    box.classList.toggle('error', !!isError);
    box.classList.remove('hidden');
    clearTimeout(notice.timer);
    notice.timer = setTimeout(() => box.classList.add('hidden'), isError ? 8000 : 3000);
  }

  // ---- the API, with the bearer token when there is one ----

  function headers(extra) {
    const h = Object.assign({}, extra || {});
    if (token) h.Authorization = 'Bearer ' + token;
    return h;
  }

  async function call(method, path, accept) {
    const res = await fetch(path, { method, headers: headers({ Accept: accept || 'application/json' }), cache: 'no-store' });
    if (res.status === 401) {
      askForToken(token ? 'The token was refused; enter it again.' : null);
      throw new Error('a token is required');
    }
    return res;
  }

  const canAct = () => !authRequired || !!token;

  function askForToken(message) {
    token = '';
    sessionStorage.removeItem(TOKEN_KEY);
    $('token-form').classList.remove('hidden');
    $('forget-token').classList.add('hidden');
    if (message) notice(message, true);
    render();
  }

  function setupToken() {
    const form = $('token-form');
    form.addEventListener('submit', (ev) => {
      ev.preventDefault();
      const given = $('token').value.trim();
      if (!given) return;
      token = given;
      sessionStorage.setItem(TOKEN_KEY, token);
      $('token').value = '';
      form.classList.add('hidden');
      $('forget-token').classList.remove('hidden');
      start();
    });
    $('forget-token').addEventListener('click', () => askForToken(null));
    if (authRequired && !token) {
      form.classList.remove('hidden');
      return false;
    }
    if (authRequired) $('forget-token').classList.remove('hidden');
    return true;
  }

  // ---- what a row shows (as the server renders it) ----

  const seconds = (a, b) => Math.max(0, Math.floor((b - a) / 1000));
  // As the server renders it: tenths below 10 s.
  const humanDuration = (ms) => (ms < 10000 ? (Math.max(0, ms) / 1000).toFixed(1) + 's' : human(Math.floor(ms / 1000)));

  function human(s) {
    if (s < 60) return s + 's';
    if (s < 3600) return Math.floor(s / 60) + 'm ' + (s % 60) + 's';
    if (s < 86400) return Math.floor(s / 3600) + 'h ' + Math.floor((s % 3600) / 60) + 'm';
    return Math.floor(s / 86400) + 'd ' + Math.floor((s % 86400) / 3600) + 'h';
  }

  function current(st) {
    const list = st.attempts || [];
    for (let i = list.length - 1; i >= 0; i--) if (list[i].number === st.attempt) return list[i];
    return null;
  }

  function facts(st, now) {
    const created = (st.attempts || []).map((a) => a.createdAt && Date.parse(a.createdAt)).filter((t) => t);
    const first = created.length ? Math.min(...created) : Date.parse(st.updatedAt);
    const a = current(st);
    let duration = null;
    if (a && a.startedAt) duration = (a.finishedAt ? Date.parse(a.finishedAt) : now) - Date.parse(a.startedAt);
    const idx = st.indexes || [];
    const done = idx.filter((l) => l.phase === 'Succeeded').length;
    return {
      age: seconds(first, now),
      duration,
      runtime: a ? a.runtime : '',
      progress: idx.length ? done / idx.length : null,
      progressText: idx.length ? done + '/' + idx.length : '',
    };
  }

  function badge(phase) {
    return el('span', { class: 'badge phase-' + phase }, phase);
  }

  function actionButtons(st) {
    const box = document.createDocumentFragment();
    if (!canAct() || !st) return box;
    if (FINAL.has(st.phase)) {
      box.append(el('button', { type: 'button', 'data-action': 'rerun', 'data-task': st.task }, 'Re-run'));
    } else {
      box.append(el('button', { type: 'button', 'data-action': 'terminate', 'data-task': st.task }, 'Terminate'));
    }
    return box;
  }

  async function act(action, task) {
    try {
      const res = await call('POST', '/v1/tasks/' + taskPath(task) + '/' + action);
      const answer = await res.json().catch(() => ({}));
      if (res.ok) notice(action === 'rerun' ? task + ' will run again' : task + ' is being terminated', false);
      else notice(task + ': ' + (answer.error || 'HTTP ' + res.status), true);
    } catch (err) {
      notice(task + ': ' + err.message, true);
    }
  }

  document.addEventListener('click', (ev) => {
    const button = ev.target.closest('button[data-action]');
    if (button) act(button.dataset.action, button.dataset.task);
  });

  // ---- the table ----

  function sortValue(st, f) {
    switch (sortKey) {
      case 'phase': return PHASES.indexOf(st.phase);
      case 'reason': return st.reason || '';
      case 'attempt': return st.attempt || 0;
      case 'age': return f.age;
      case 'duration': return f.duration === null ? -1 : f.duration;
      case 'runtime': return f.runtime;
      case 'progress': return f.progress === null ? -1 : f.progress;
      default: return st.task;
    }
  }

  function matches(st, text, phase) {
    if (phase && st.phase !== phase) return false;
    if (!text) return true;
    const hay = [st.task, st.name, st.phase, st.reason, st.message].filter((x) => x).join(' ').toLowerCase();
    return hay.includes(text);
  }

  function fillRow(tr, st, f) {
    tr.dataset.phase = st.phase;
    const cells = [
      el('td', { class: 'task' }, el('a', { href: '/tasks/' + taskPath(st.task) }, st.task),
        st.name && !st.task.endsWith(st.name) ? el('span', { class: 'name' }, ' ' + st.name) : null),
      el('td', null, badge(st.phase)),
      el('td', { class: 'reason', title: st.message || '' }, st.reason || st.message || '',
        st.phase === 'Pending' && st.message ? el('div', { class: 'why' }, st.message) : null),
      el('td', { class: 'num' }, st.attempt || 0),
      el('td', { class: 'num' }, human(f.age)),
      el('td', { class: 'num' }, f.duration === null ? '' : humanDuration(f.duration)),
      el('td', null, f.runtime),
      el('td', { class: 'num' }, f.progressText),
      el('td', { class: 'actions' }, actionButtons(st)),
    ];
    tr.replaceChildren(...cells);
  }

  function renderCounts() {
    const selected = $('filter-phase').value;
    const all = document.querySelector('.count-all b');
    all.textContent = String(tasks.size);
    for (const span of document.querySelectorAll('#counts .count')) {
      const phase = span.dataset.phase;
      if (phase) {
        let n = 0;
        for (const st of tasks.values()) if (st.phase === phase) n++;
        span.querySelector('b').textContent = String(n);
      }
      span.classList.toggle('selected', phase === selected);
    }
  }

  function renderTable() {
    const tbody = document.querySelector('#tasks tbody');
    const now = Date.now();
    const text = $('filter-text').value.trim().toLowerCase();
    const phase = $('filter-phase').value;
    for (const [task, tr] of rows) {
      if (!tasks.has(task)) {
        tr.remove();
        rows.delete(task);
      }
    }
    const shown = [];
    for (const st of tasks.values()) {
      const f = facts(st, now);
      let tr = rows.get(st.task);
      if (!tr) {
        tr = el('tr', { 'data-task': st.task });
        rows.set(st.task, tr);
      }
      fillRow(tr, st, f);
      if (matches(st, text, phase)) shown.push([sortValue(st, f), st.task, tr]);
      else tr.remove();
    }
    shown.sort((a, b) => (a[0] < b[0] ? -1 : a[0] > b[0] ? 1 : a[1] < b[1] ? -1 : a[1] > b[1] ? 1 : 0) * sortDir);
    // The server's rows (and any placeholder row) give way to the script's.
    const mine = new Set(rows.values());
    for (const node of Array.from(tbody.children)) if (!mine.has(node)) node.remove();
    for (const [, , tr] of shown) tbody.append(tr); // append moves: this is the order
    if (!shown.length) {
      const why = !canAct() && authRequired ? 'Enter the API token above to see the tasks.'
        : tasks.size ? 'No task matches the filter.' : 'No tasks yet.';
      tbody.append(el('tr', { class: 'empty' }, el('td', { colspan: 9 }, why)));
    }
    for (const th of document.querySelectorAll('#tasks th[data-sort]')) {
      th.classList.toggle('sorted-asc', th.dataset.sort === sortKey && sortDir === 1);
      th.classList.toggle('sorted-desc', th.dataset.sort === sortKey && sortDir === -1);
    }
    renderCounts();
    renderChart(now);
  }

  // A bar per finished task (the last CHART_BARS by finish time), its height the duration.
  function renderChart(now) {
    const finished = [];
    for (const st of tasks.values()) {
      const a = current(st);
      if ((st.phase === 'Succeeded' || st.phase === 'Failed') && a && a.startedAt && a.finishedAt) {
        finished.push({ task: st.task, phase: st.phase, end: Date.parse(a.finishedAt), secs: (Date.parse(a.finishedAt) - Date.parse(a.startedAt)) / 1000 });
      }
    }
    finished.sort((a, b) => a.end - b.end);
    const bars = finished.slice(-CHART_BARS);
    const box = $('chart-svg');
    const section = $('chart');
    section.classList.toggle('hidden', bars.length === 0);
    if (!bars.length) { box.replaceChildren(); return; }
    const NS = 'http://www.w3.org/2000/svg';
    const W = 640, H = 140, left = 44, bottom = 18, top = 8;
    const max = Math.max(...bars.map((b) => b.secs), 0.001);
    const svg = document.createElementNS(NS, 'svg');
    const set = (node, attrs) => { for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, String(v)); return node; };
    set(svg, { width: W, height: H, viewBox: `0 0 ${W} ${H}`, role: 'img', 'aria-label': 'durations of the last finished tasks' });
    svg.append(set(document.createElementNS(NS, 'line'), { x1: left, y1: H - bottom, x2: W, y2: H - bottom, class: 'axis' }));
    const label = (x, y, text, anchor) => {
      const t = set(document.createElementNS(NS, 'text'), { x, y, 'text-anchor': anchor || 'end' });
      t.textContent = text;
      return t;
    };
    svg.append(label(left - 4, top + 8, max >= 1 ? human(Math.round(max)) : max.toFixed(2) + 's'));
    svg.append(label(left - 4, H - bottom, '0s'));
    const slot = (W - left - 4) / CHART_BARS;
    bars.forEach((b, i) => {
      const h = Math.max(1, (b.secs / max) * (H - bottom - top));
      const rect = set(document.createElementNS(NS, 'rect'), {
        x: left + 2 + (CHART_BARS - bars.length + i) * slot, y: H - bottom - h, width: Math.max(2, slot - 3), height: h, class: 'bar phase-' + b.phase,
      });
      const title = document.createElementNS(NS, 'title');
      title.textContent = b.task + ': ' + b.secs.toFixed(1) + 's (' + b.phase + ')';
      rect.append(title);
      svg.append(rect);
    });
    svg.append(label(W - 2, H - 4, 'newest →'));
    box.replaceChildren(svg);
  }

  // ---- the one-task view: the server renders it; this swaps in the fresh rendering ----

  async function refreshTask() {
    const task = body.dataset.task;
    try {
      const res = await call('GET', '/tasks/' + taskPath(task), 'text/html');
      const doc = new DOMParser().parseFromString(await res.text(), 'text/html');
      const fresh = doc.getElementById('task-body');
      if (fresh) $('task-body').replaceChildren(...Array.from(fresh.childNodes).map((n) => document.importNode(n, true)));
      showLog();
    } catch (err) {
      // The next change or reconnect tries again.
    }
    renderTaskActions();
    const st = tasks.get(task);
    if (st && LIVE.has(st.phase)) followLog();
  }

  // The running attempt's output, followed live from /v1/logs/{task} (the status holds the
  // log tail only once the attempt is over). Kept across re-renderings of the task body.
  let liveLog = null;
  let followingLog = false;
  const LIVE = new Set(['Creating', 'Running', 'Deleting']);

  function showLog() {
    const pre = document.querySelector('#task-body pre.log');
    if (pre && liveLog !== null) pre.textContent = liveLog;
  }

  async function followLog() {
    if (followingLog) return;
    followingLog = true;
    const task = body.dataset.task;
    let over = false;
    while (!over && canAct()) {
      try {
        await readStream('/v1/logs/' + taskPath(task), (event, data) => {
          if (event !== 'log') return;
          const msg = JSON.parse(data);
          liveLog = msg.tail;
          over = msg.final;
          showLog();
        });
      } catch (err) {
        // The controller went away: the watch stream reconnects, and so does this.
      }
      const st = tasks.get(task);
      if (over || (st && !LIVE.has(st.phase) && st.phase !== 'Pending')) break;
      await sleep(1000);
    }
    liveLog = null;
    followingLog = false;
  }

  function renderTaskActions() {
    const box = $('task-actions');
    box.replaceChildren(actionButtons(tasks.get(body.dataset.task)));
  }

  function render() {
    if (renderQueued) return;
    renderQueued = true;
    requestAnimationFrame(() => {
      renderQueued = false;
      if (view === 'index') renderTable();
      else renderTaskActions();
    });
  }

  // ---- data: the full list, then every change from /v1/watch ----

  async function loadAll() {
    touched = new Map();
    const res = await call('GET', '/v1/tasks');
    if (!res.ok) throw new Error('GET /v1/tasks: HTTP ' + res.status);
    const list = await res.json();
    const during = touched;
    touched = null;
    tasks.clear();
    for (const st of list) tasks.set(st.task, st);
    for (const [task, st] of during) {
      if (st === null) tasks.delete(task);
      else tasks.set(task, st);
    }
    body.dataset.loaded = String((Number(body.dataset.loaded) || 0) + 1);
    render();
    if (view === 'task') refreshTask();
  }

  function apply(kind, data) {
    if (kind === 'status') {
      tasks.set(data.task, data);
      if (touched) touched.set(data.task, data);
    } else if (kind === 'deleted') {
      tasks.delete(data.task);
      if (touched) touched.set(data.task, null);
    }
    render();
    if (view === 'task' && data.task === body.dataset.task) refreshTask();
  }

  function setLive(on, retrying) {
    const badge = $('live');
    badge.textContent = on ? 'live' : retrying ? 'reconnecting…' : 'static';
    badge.classList.toggle('on', on);
    badge.classList.toggle('off', !on);
    badge.classList.toggle('retry', !!retrying);
    body.dataset.live = on ? '1' : '0';
  }

  // One SSE message: "event:", "data:" and "id:" lines, ended by a blank line.
  function parseMessage(block) {
    let event = 'message';
    const data = [];
    for (const line of block.split(/\r?\n/)) {
      if (!line || line.startsWith(':')) continue;
      const colon = line.indexOf(':');
      const field = colon < 0 ? line : line.slice(0, colon);
      let value = colon < 0 ? '' : line.slice(colon + 1);
      if (value.startsWith(' ')) value = value.slice(1);
      if (field === 'event') event = value;
      else if (field === 'data') data.push(value);
    }
    return { event, data: data.join('\n') };
  }

  // Reads one Server-Sent Events response until it ends, calling onMessage(event, data).
  async function readStream(path, onMessage) {
    const res = await call('GET', path, 'text/event-stream');
    if (!res.ok || !res.body) throw new Error('GET ' + path + ': HTTP ' + res.status);
    const reader = res.body.pipeThrough(new TextDecoderStream()).getReader();
    let buffer = '';
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return;
      buffer += value;
      let end;
      while ((end = buffer.search(/\r?\n\r?\n/)) >= 0) {
        const block = buffer.slice(0, end);
        buffer = buffer.slice(end).replace(/^\r?\n\r?\n/, '');
        const msg = parseMessage(block);
        onMessage(msg.event, msg.data);
      }
    }
  }

  // Follows /v1/watch with fetch rather than EventSource, because EventSource cannot send
  // the bearer token. Like EventSource it reconnects by itself (after a controller
  // restart, say), with a backoff of 0.5 s doubling to 5 s, and refetches the list each
  // time the stream is live again: events missed while away are not replayed.
  let following = false;
  async function follow() {
    if (following) return;
    following = true;
    let delay = 500;
    while (canAct()) {
      try {
        await readStream('/v1/watch', (event, data) => {
          if (event === 'ready') {
            delay = 500;
            setLive(true);
            loadAll().catch((err) => notice(err.message, true));
          } else if (event === 'resync') {
            loadAll().catch((err) => notice(err.message, true));
          } else if (event === 'status' || event === 'deleted') {
            try { apply(event, JSON.parse(data)); } catch (err) { /* a bad message changes nothing */ }
          }
        });
      } catch (err) {
        if (authRequired && !token) break;
      }
      setLive(false, true);
      await sleep(delay);
      delay = Math.min(delay * 2, 5000);
    }
    following = false;
    setLive(false, false);
  }

  function setupIndex() {
    body.classList.add('enhanced');
    $('tools').classList.remove('hidden');
    $('filter-text').addEventListener('input', render);
    $('filter-phase').addEventListener('change', render);
    for (const span of document.querySelectorAll('#counts .count')) {
      span.addEventListener('click', () => {
        const select = $('filter-phase');
        select.value = select.value === span.dataset.phase ? '' : span.dataset.phase;
        render();
      });
    }
    for (const th of document.querySelectorAll('#tasks th[data-sort]')) {
      th.addEventListener('click', () => {
        if (sortKey === th.dataset.sort) sortDir = -sortDir;
        else { sortKey = th.dataset.sort; sortDir = 1; }
        render();
      });
    }
    // Ages and running durations move on; the data does not need fetching for that.
    setInterval(render, 5000);
  }

  function start() {
    follow();
  }

  if (view === 'index') setupIndex();
  if (setupToken()) start();
  else render();
})();
