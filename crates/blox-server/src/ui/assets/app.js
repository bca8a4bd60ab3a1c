// The blox dashboard: one page that routes by its address, reads the JSON API with the token the
// browser session holds, and redraws the page in view when /ui/api/events says something it shows
// changed. No library, no build step: this file is served as it is, from inside the binary.
'use strict';

const COVERAGE = ['healthy', 'starting', 'old', 'failed', 'missing', 'held', 'kept', 'excluded', 'none'];
const COVERAGE_TEXT = {
  healthy: 'current revision, healthy', starting: 'starting', old: 'old revision', failed: 'failed starts',
  missing: 'missing', held: 'held by the canary', kept: 'kept (draining or disconnected)',
  excluded: 'not the environment\'s (outside its group, drained or gone)', none: 'no deployment',
};
const TOKEN_KEY = 'blox.token';

const app = {
  token: sessionStorage.getItem(TOKEN_KEY),
  session: null,
  page: null,        // { name, render(), wants(change) }
  refreshing: false,
  dirty: false,
  lastChange: null,  // the last change event, for the event-to-render latency
  samples: [],       // [ms, healthy] of the environment page's rollout, for the ETA
  ingest: null,      // the last [ms, eventsApplied], for the ingest rate
};
window.bloxRenders = 0;
window.bloxTiming = {};
window.bloxLatencies = [];

// ---- helpers ---------------------------------------------------------------------------------

const $ = (sel, root = document) => root.querySelector(sel);
const esc = (v) => String(v ?? '').replace(/[&<>"']/g, (c) => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' }[c]));
const enc = encodeURIComponent;
const num = (n) => (n === null || n === undefined ? '—' : Number(n).toLocaleString('en-US'));
const shortArn = (arn) => String(arn).split('/').pop();
const ago = (iso) => {
  if (!iso) return '—';
  const s = Math.max(0, Math.round((Date.now() - Date.parse(iso)) / 1000));
  return s < 90 ? `${s}s ago` : s < 5400 ? `${Math.round(s / 60)}m ago` : `${Math.round(s / 3600)}h ago`;
};

class AuthNeeded extends Error {}

async function api(path, options = {}) {
  const headers = { Accept: 'application/json', ...(options.headers || {}) };
  if (app.token) headers.Authorization = `Bearer ${app.token}`;
  const response = await fetch(path, { ...options, headers });
  const text = await response.text();
  let body = null;
  try { body = text ? JSON.parse(text) : null; } catch (_) { body = text; }
  if (response.status === 401) {
    forgetToken();
    throw new AuthNeeded((body && body.message) || 'a token is needed');
  }
  if (!response.ok) {
    const error = new Error((body && body.message) || `${response.status} ${response.statusText}`);
    error.status = response.status;
    error.code = body && body.code;
    throw error;
  }
  return body;
}

function forgetToken() {
  app.token = null;
  sessionStorage.removeItem(TOKEN_KEY);
}

function say(text, kind = 'ok') {
  $('#message').innerHTML = text ? `<div class="${kind}">${esc(text)}</div>` : '';
}

function coverageBar(counts, total) {
  const sum = total || Object.values(counts || {}).reduce((a, b) => a + b, 0);
  if (!sum) return '<div class="bar"></div>';
  return `<div class="bar" title="${esc(COVERAGE.filter((c) => counts[c]).map((c) => `${c}: ${counts[c]}`).join(', '))}">${
    COVERAGE.filter((c) => counts[c]).map((c) => `<span class="c-${c}" style="width:${(100 * counts[c]) / sum}%"></span>`).join('')}</div>`;
}

function legend(counts) {
  return `<div class="legend">${COVERAGE.filter((c) => !counts || counts[c]).map((c) =>
    `<span data-coverage-count="${c}"><i class="c-${c}"></i>${esc(COVERAGE_TEXT[c])}${counts ? `: ${num(counts[c])}` : ''}</span>`).join('')}</div>`;
}

function cells(list, coverageOf) {
  // One string, one innerHTML: 10,000 cells in a few milliseconds.
  let html = '';
  for (let i = 0; i < list.length; i++) {
    const c = coverageOf(list[i]);
    const k = esc(c);
    html += `<div class="cell c-${k}" data-i="${i}" data-arn="${esc(list[i].containerInstanceArn)}" data-coverage="${k}"></div>`;
  }
  return html;
}

// Cells as large as the fleet allows.
function size(count) {
  return count > 2000 ? 'small' : count <= 300 ? 'large' : '';
}

function isAdmin() {
  return app.session && app.session.role === 'admin';
}

// ---- routing ---------------------------------------------------------------------------------

function route() {
  const path = decodeURIComponent(location.pathname).replace(/^\/ui\/?/, '');
  const parts = location.pathname.replace(/^\/ui\/?/, '').split('/').filter(Boolean).map(decodeURIComponent);
  if (!path) return overviewPage();
  if (parts[0] === 'clusters' && parts.length === 2) return clusterPage(parts[1]);
  if (parts[0] === 'environments' && parts.length === 2) return environmentPage(parts[1]);
  if ((parts[0] === 'tasks' || parts[0] === 'instances') && parts.length === 1) return listPage(parts[0]);
  if ((parts[0] === 'tasks' || parts[0] === 'instances') && parts.length === 3) return entityPage(parts[0], parts[1], parts[2]);
  return { name: 'missing', wants: () => false, render: async () => { $('#main').innerHTML = `<h1>Not found</h1><p>No page at ${esc(location.pathname)}. <a href="/ui/" data-nav>Overview</a></p>`; } };
}

function navigate(url) {
  history.pushState(null, '', url);
  show();
}

async function show() {
  say('');
  app.samples = [];
  app.page = route();
  document.body.dataset.page = app.page.name;
  await refresh();
}

// Redraws the page in view; a change that arrives while it draws makes it draw once more after.
async function refresh() {
  if (app.refreshing) { app.dirty = true; return; }
  app.refreshing = true;
  try {
    do {
      app.dirty = false;
      const change = app.lastChange;
      const page = app.page;
      const wait = page.every && page.drawnAt ? page.drawnAt + page.every - Date.now() : 0;
      if (wait > 0) {
        // Drawn again once its interval is up, with everything that changed meanwhile.
        clearTimeout(page.later);
        page.later = setTimeout(refresh, wait);
        break;
      }
      page.drawnAt = Date.now();
      document.body.dataset.ready = '0';
      try {
        await page.render();
      } catch (error) {
        if (error instanceof AuthNeeded) { login(error.message); return; }
        say(error.message, 'error');
      }
      if (page !== app.page) continue;
      window.bloxRenders += 1;
      document.body.dataset.ready = '1';
      if (change && change.atMs) {
        window.bloxLatencies.push(Date.now() - change.atMs);
        if (window.bloxLatencies.length > 1000) window.bloxLatencies.shift();
        app.lastChange = null;
      }
    } while (app.dirty);
  } finally {
    app.refreshing = false;
  }
}

document.addEventListener('click', (event) => {
  const link = event.target.closest('a[data-nav]');
  if (link && !event.ctrlKey && !event.metaKey && !event.shiftKey && event.button === 0) {
    event.preventDefault();
    navigate(link.getAttribute('href'));
  }
});
window.addEventListener('popstate', show);
window.addEventListener('pagehide', () => { if (app.events) app.events.abort(); });

// ---- live updates ----------------------------------------------------------------------------

// Server-sent events read with fetch, which (unlike EventSource) can send the token.
async function follow() {
  let pause = 500;
  for (;;) {
    try {
      const headers = { Accept: 'text/event-stream' };
      if (app.token) headers.Authorization = `Bearer ${app.token}`;
      // Aborted when the page goes, so that the browser closes the connection at once rather than
      // keep it (and one of its six per host) until the server next writes.
      app.events = new AbortController();
      const response = await fetch('/ui/api/events', { headers, signal: app.events.signal });
      if (response.status === 401) {
        // A sign-in starts following again; a form already shown is left to the user typing in it.
        app.following = false;
        forgetToken();
        if (document.body.dataset.page !== 'login') login('The token was refused.');
        return;
      }
      if (!response.ok || !response.body) throw new Error(`events: ${response.status}`);
      const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
      let buffer = '';
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buffer += value;
        let end;
        while ((end = buffer.indexOf('\n\n')) >= 0) {
          const block = buffer.slice(0, end);
          buffer = buffer.slice(end + 2);
          const event = { type: 'message', data: '' };
          for (const line of block.split('\n')) {
            if (line.startsWith('event:')) event.type = line.slice(6).trim();
            else if (line.startsWith('data:')) event.data += line.slice(5).trim();
          }
          if (event.type === 'ready') {
            live(true);
            pause = 500;
            // Whatever changed before this subscription (at start: since the first draw's data).
            if (app.page) refresh();
          } else if (event.type === 'change') {
            const change = JSON.parse(event.data);
            if (change.reload || (app.page && app.page.wants(change))) {
              app.lastChange = change;
              refresh();
            }
          }
        }
      }
    } catch (_) {
      // Reconnects below; the indicator says so.
    }
    live(false);
    app.reconnected = true;
    await new Promise((resolve) => setTimeout(resolve, pause));
    pause = Math.min(pause * 2, 10000);
  }
}

function live(on) {
  const el = $('#live');
  el.className = `live ${on ? 'on' : 'off'}`;
  el.textContent = on ? 'live' : 'reconnecting…';
}

// ---- login -----------------------------------------------------------------------------------

function login(why) {
  document.body.dataset.page = 'login';
  $('#main').innerHTML = `
    <h1>Sign in</h1>
    <form id="login">
      <div>This blox asks for a token (<span class="mono">--auth-token-file</span>). It is kept for this browser session only.</div>
      ${why ? `<div class="muted">${esc(why)}</div>` : ''}
      <input id="token" type="password" autocomplete="off" placeholder="token" required>
      <button id="login-submit" type="submit">Sign in</button>
    </form>`;
  $('#login').addEventListener('submit', async (event) => {
    event.preventDefault();
    app.token = $('#token').value.trim();
    try {
      await start();
    } catch (error) {
      login(error.message);
    }
  });
  document.body.dataset.ready = '1';
}

async function start() {
  // The session probe answers without a token: it says whether one is needed.
  app.session = await api('/ui/api/session');
  if (app.session.auth && !app.session.role) { forgetToken(); login(); return; }
  if (app.token) sessionStorage.setItem(TOKEN_KEY, app.token);
  $('#who').innerHTML = app.session.auth
    ? `${esc(app.session.role)} token · <a href="/ui/" id="sign-out">sign out</a> · blox ${esc(app.session.version)}`
    : `blox ${esc(app.session.version)}`;
  const signOut = $('#sign-out');
  if (signOut) {
    signOut.addEventListener('click', (event) => {
      event.preventDefault();
      forgetToken();
      if (app.events) app.events.abort();
      $('#who').textContent = '';
      login();
    });
  }
  if (!app.following) { app.following = true; follow(); }
  await show();
}

// ---- overview --------------------------------------------------------------------------------

function overviewPage() {
  return {
    name: 'overview',
    // Every change concerns it: redrawn at most once a second.
    every: 1000,
    wants: () => true,
    async render() {
      const o = await api('/ui/api/overview');
      const leader = !o.reconcile.role || o.reconcile.role === 'leader';
      // The server is still counting tasks (once after its start): ask again shortly.
      if (o.clusters.some((c) => !c.tasksByStatus)) {
        clearTimeout(app.recount);
        app.recount = setTimeout(() => { if (app.page && app.page.name === 'overview') refresh(); }, 1000);
      }
      const now = Date.now();
      // Changes committed per second, from the change log's head: the same on every replica (only the
      // leader ingests, so its event counters are the only ones that move).
      let rate = app.lastRate || '—';
      if (app.ingest && now - app.ingest[0] >= 1000) {
        rate = `${num(Math.max(0, Math.round(((o.changeLogHead - app.ingest[1]) * 1000) / (now - app.ingest[0]))))}/s`;
      }
      if (!app.ingest || now - app.ingest[0] >= 1000) app.ingest = [now, o.changeLogHead];
      app.lastRate = rate;
      const statuses = ['RUNNING', 'PENDING', 'STOPPED'];
      const r = o.reconcile;
      $('#main').innerHTML = `
        <h1>Overview</h1>
        <div class="cards">
          <div class="card"><div class="label">clusters</div><div class="value" id="cluster-count">${num(o.clusters.length)}</div></div>
          <div class="card"><div class="label">changes committed</div><div class="value" id="change-log-head">${num(o.changeLogHead)}</div><div class="label"><span id="ingest-rate">${rate}</span> · ${leader ? `${num(o.ingest.eventsApplied)} events applied here` : 'ingested by the leader'}</div></div>
          <div class="card"><div class="label">queue lag</div><div class="value" id="ingest-lag">${!leader || o.ingest.queueLagSeconds === undefined ? '—' : `${o.ingest.queueLagSeconds.toFixed(1)} s`}</div><div class="label">${!leader ? 'sampled by the leader' : o.ingest.queueMessages === undefined ? 'no queue sampled' : `${num(o.ingest.queueMessages)} waiting`}</div></div>
          <div class="card"><div class="label">reconcile</div><div class="value" id="reconcile">${r.ready ? 'ready' : 'not ready'}</div><div class="label">${num(r.reconcilePasses)} passes · last ${ago(r.lastPassCompletedAt)}${r.failingClusters && r.failingClusters.length ? ` · <span class="failed">${r.failingClusters.length} failing</span>` : ''}</div></div>
          <div class="card"><div class="label">dead letters</div><div class="value"><span id="dead-letters" class="${o.deadLetters ? 'failed' : ''}">${o.deadLettersAtLeast ? '≥ ' : ''}${num(o.deadLetters)}</span></div><div class="label">${num(o.ingest.eventsParked)} parked since start</div></div>
          <div class="card"><div class="label">leader</div><div class="value" style="font-size:14px" id="leader">${esc(o.leader.leader || 'none')}</div><div class="label">this replica: ${esc(o.leader.self)}${r.role ? ` (${esc(r.role)})` : ''}</div></div>
        </div>
        <h2>Clusters</h2>
        <table id="clusters"><thead><tr><th>cluster</th><th class="num">instances</th><th class="num">ACTIVE</th><th class="num">DRAINING</th><th class="num">agent disconnected</th>
          ${statuses.map((s) => `<th class="num">tasks ${s}</th>`).join('')}<th>environments</th></tr></thead><tbody>
          ${o.clusters.map((c) => `<tr data-cluster="${esc(c.cluster)}">
            <td><a href="/ui/clusters/${enc(c.cluster)}" data-nav>${esc(c.cluster)}</a></td>
            <td class="num" data-field="instances">${c.instances}</td>
            <td class="num" data-field="instances-ACTIVE">${c.instancesByStatus.ACTIVE || 0}</td>
            <td class="num" data-field="instances-DRAINING">${c.instancesByStatus.DRAINING || 0}</td>
            <td class="num" data-field="agents-disconnected">${c.agentsDisconnected}</td>
            ${statuses.map((s) => `<td class="num" data-field="tasks-${s}">${c.tasksByStatus ? (c.tasksByStatus[s] || 0) : '…'}</td>`).join('')}
            <td>${c.environments.map((e) => `<a href="/ui/environments/${enc(e)}" data-nav>${esc(e)}</a>`).join(', ')}</td></tr>`).join('')}
        </tbody></table>
        <h2>Environments</h2>
        ${o.environments.length ? '' : '<p class="muted">No environment yet: <span class="mono">blox env create NAME --cluster CLUSTER --task-definition FAMILY:REV</span></p>'}
        <table id="environments"><thead><tr><th>environment</th><th>cluster</th><th>health</th><th>status</th><th>deployment</th>
          <th class="num">desired</th><th class="num">healthy</th><th class="num">total</th><th class="num">uncovered</th><th>coverage</th></tr></thead><tbody>
          ${o.environments.map((e) => `<tr data-environment="${esc(e.environmentName)}">
            <td><a href="/ui/environments/${enc(e.environmentName)}" data-nav>${esc(e.environmentName)}</a></td>
            <td>${esc(e.cluster)}</td>
            <td data-field="health" class="${esc(e.environmentHealth)}" title="${esc(e.healthReason)}">${esc(e.environmentHealth)}</td>
            <td data-field="status">${esc(e.environmentStatus)}</td>
            <td data-field="deployment" class="${esc(e.activeDeploymentStatus)}">${esc(e.activeDeploymentStatus || '—')}</td>
            <td class="num" data-field="desired">${e.counts.desired}</td>
            <td class="num" data-field="healthy">${e.counts.healthy}</td>
            <td class="num" data-field="total">${e.counts.total}</td>
            <td class="num" data-field="uncovered">${e.uncovered}</td>
            <td>${coverageBar(e.coverage)}</td></tr>`).join('')}
        </tbody></table>`;
    },
  };
}

// ---- cluster ---------------------------------------------------------------------------------

function clusterPage(cluster) {
  const page = {
    name: 'cluster',
    filter: new URLSearchParams(location.search).get('filter') || '',
    environment: 0,
    grid: null,
    wants: (c) => c.clusters.includes(cluster),
    async render() {
      const query = page.filter ? `?filter=${enc(page.filter)}` : '';
      const grid = await api(`/ui/api/clusters/${enc(cluster)}${query}`);
      const fetched = performance.now();
      page.grid = grid;
      const env = Math.min(page.environment, Math.max(0, grid.environments.length - 1));
      const coverageOf = grid.environments.length ? (i) => i.coverage[env] : () => 'none';
      const counts = {};
      for (const i of grid.instances) { const c = coverageOf(i); counts[c] = (counts[c] || 0) + 1; }
      const focused = document.activeElement && document.activeElement.id === 'filter';
      $('#main').innerHTML = `
        <h1>Cluster ${esc(grid.cluster)}</h1>
        <div class="toolbar">
          <input id="filter" placeholder="cluster query, e.g. attribute:ecs.availability-zone == us-east-1a" value="${esc(page.filter)}">
          <button id="apply-filter">Filter</button>
          ${grid.environments.length > 1 ? `<label>environment <select id="environment">${grid.environments.map((e, i) => `<option value="${i}" ${i === env ? 'selected' : ''}>${esc(e)}</option>`).join('')}</select></label>`
            : grid.environments.length ? `<span>environment <a href="/ui/environments/${enc(grid.environments[0])}" data-nav>${esc(grid.environments[0])}</a></span>` : '<span class="muted">no environment in this cluster</span>'}
          <span class="muted"><span id="grid-count">${grid.instances.length}</span> of ${num(grid.total)} instances</span>
        </div>
        ${legend(counts)}
        <div id="grid" class="grid ${size(grid.instances.length)}">${cells(grid.instances, coverageOf)}</div>`;
      // Layout forced here, so that the time includes it.
      void $('#grid').offsetHeight;
      window.bloxTiming.renderMs = performance.now() - fetched;
      window.bloxTiming.cells = grid.instances.length;
      const filter = $('#filter');
      if (focused) { filter.focus(); filter.setSelectionRange(filter.value.length, filter.value.length); }
      const apply = () => {
        page.filter = filter.value.trim();
        history.replaceState(null, '', `/ui/clusters/${enc(cluster)}${page.filter ? `?filter=${enc(page.filter)}` : ''}`);
        refresh();
      };
      filter.addEventListener('keydown', (e) => { if (e.key === 'Enter') apply(); });
      $('#apply-filter').addEventListener('click', apply);
      const select = $('#environment');
      if (select) select.addEventListener('change', () => { page.environment = Number(select.value); refresh(); });
      hover($('#grid'), (i) => {
        const instance = grid.instances[i];
        return `<div class="mono">${esc(instance.containerInstanceArn)}</div>
          <div>${esc(instance.status)} · agent ${instance.agentConnected ? 'connected' : 'disconnected'} · ${num(instance.runningTasksCount)} running tasks</div>
          ${grid.environments.map((e, k) => `<div>${esc(e)}: <b>${esc(COVERAGE_TEXT[instance.coverage[k]] || instance.coverage[k])}</b></div>`).join('')}`;
      }, (i) => `/ui/instances/${enc(cluster)}/${enc(grid.instances[i].containerInstanceArn)}`);
    },
  };
  return page;
}

// Details of a grid cell on hover; a click opens the instance.
function hover(grid, describe, link) {
  const details = $('#details');
  grid.addEventListener('mousemove', (event) => {
    const cell = event.target.closest('.cell');
    if (!cell) { details.hidden = true; return; }
    details.innerHTML = describe(Number(cell.dataset.i));
    details.style.left = `${Math.min(event.clientX + 14, window.innerWidth - 540)}px`;
    details.style.top = `${event.clientY + 14}px`;
    details.hidden = false;
  });
  grid.addEventListener('mouseleave', () => { details.hidden = true; });
  grid.addEventListener('click', (event) => {
    const cell = event.target.closest('.cell');
    if (cell && link) { details.hidden = true; navigate(link(Number(cell.dataset.i))); }
  });
}

// ---- environment -----------------------------------------------------------------------------

function environmentPage(name) {
  const page = {
    name: 'environment',
    cluster: null,
    wants: (c) => c.environments.includes(name) || (page.cluster && c.clusters.includes(page.cluster) && c.kinds.includes('instance')),
    async render() {
      // One answer: the environment, its deployments and revisions, and the rollout, planned once.
      const data = await api(`/ui/api/environments/${enc(name)}`);
      const { rollout, environment: env, deployments, revisions } = data;
      page.cluster = rollout.cluster;
      const active = deployments.find((d) => d.deploymentId === rollout.deploymentId);
      const desired = rollout.counts.desired;
      const progress = desired ? Math.round((100 * rollout.counts.healthy) / desired) : (rollout.complete ? 100 : 0);
      const now = Date.now();
      if (rollout.deploymentStatus === 'running') {
        app.samples.push([now, rollout.counts.healthy]);
        app.samples = app.samples.filter(([t]) => now - t < 120000);
      }
      const eta = estimate(rollout);
      const floorAt = rollout.eligible ? (100 * rollout.floor) / rollout.eligible : 0;
      const fleetAt = rollout.eligible ? (100 * rollout.healthy) / rollout.eligible : 0;
      const statusText = rollout.deploymentStatus || 'none';
      const admin = isAdmin();
      $('#main').innerHTML = `
        <h1>Environment ${esc(name)} <span class="muted" style="font-size:14px">in <a href="/ui/clusters/${enc(rollout.cluster)}" data-nav>${esc(rollout.cluster)}</a></span></h1>
        <div class="cards">
          <div class="card"><div class="label">health</div><div class="value ${esc(env.environmentHealth)}" id="health">${esc(env.environmentHealth)}</div><div class="label">${esc(env.healthReason || '')}</div></div>
          <div class="card"><div class="label">status</div><div class="value" id="environment-status">${esc(env.environmentStatus)}</div><div class="label">revision ${esc(env.activeEnvironmentRevisionId ?? '—')} active · ${esc(env.latestEnvironmentRevisionId)} latest</div></div>
          <div class="card"><div class="label">deployment</div><div class="value ${esc(statusText)}" id="deployment-status">${esc(statusText)}</div><div class="label mono">${esc(rollout.deploymentId || '')}</div></div>
          <div class="card"><div class="label">task definition</div><div class="value" style="font-size:14px" title="${esc(env.taskDefinition)}">${esc(shortArn(env.taskDefinition))}</div><div class="label">${esc(rollout.deploymentMethod)}</div></div>
          <div class="card"><div class="label">uncovered</div><div class="value" id="uncovered">${env.uncovered}</div><div class="label">past coverageGraceSeconds</div></div>
        </div>
        ${admin ? actions(rollout, env, revisions) : ''}
        <h2>Rollout</h2>
        <div id="rollout">
          <div class="cards">
            <div class="card"><div class="label">desired</div><div class="value" data-field="desired">${desired}</div></div>
            <div class="card"><div class="label">healthy</div><div class="value" data-field="healthy">${rollout.counts.healthy}</div></div>
            <div class="card"><div class="label">total</div><div class="value" data-field="total">${rollout.counts.total}</div></div>
            <div class="card"><div class="label">failed attempts</div><div class="value" data-field="failed">${rollout.failedAttempts}</div><div class="label">of ${rollout.failureThreshold} allowed</div></div>
            <div class="card"><div class="label">floor</div><div class="value" id="floor">${rollout.floor}</div><div class="label">${rollout.healthy} of ${rollout.eligible} eligible healthy</div></div>
            <div class="card"><div class="label">surge</div><div class="value" id="surge">${rollout.surged} / ${rollout.surge}</div><div class="label">instances with two tasks</div></div>
            <div class="card"><div class="label">ETA</div><div class="value" id="eta">${eta}</div><div class="label">${rollout.startedAt ? `started ${ago(rollout.startedAt)}` : ''}</div></div>
          </div>
          <div class="bar-label">revision ${esc(env.activeEnvironmentRevisionId ?? '—')}: ${progress}% of ${desired} desired instances run a healthy task of it</div>
          <div class="progress" id="progress" data-progress="${progress}">
            <div class="fill" style="width:${progress}%"></div>
          </div>
          <div class="bar-label">fleet: ${rollout.healthy} of ${rollout.eligible} eligible instances have a healthy daemon (any revision); the rollout keeps at least the floor, ${rollout.floor}</div>
          <div class="progress" id="fleet" data-healthy="${rollout.healthy}" data-floor="${rollout.floor}">
            <div class="fill" style="width:${fleetAt}%"></div>
            ${rollout.eligible ? `<div class="floor" style="left:${floorAt}%"></div>` : ''}
          </div>
          ${rollout.deploymentMethod === 'ReplaceThenTerminate' ? `<div class="bar-label">surge: ${rollout.surged} of ${rollout.surge} instances may carry two tasks at once</div>
          <div class="progress surge" id="surge-bar" data-surged="${rollout.surged}" data-surge="${rollout.surge}"><div class="fill" style="width:${rollout.surge ? (100 * Math.min(rollout.surged, rollout.surge)) / rollout.surge : 0}%"></div></div>` : ''}
          <div class="muted">${rollout.outdated} outdated · ${rollout.failing} failing · ${rollout.held} held</div>
          ${legend(rollout.coverage)}
          <div id="rollout-grid" class="grid ${size(rollout.instances.length)}">${cells(rollout.instances, (i) => i.coverage)}</div>
        </div>
        <h2>Deployments</h2>
        <table id="deployments"><thead><tr><th>deployment</th><th class="num">revision</th><th>status</th><th class="num">desired</th><th class="num">healthy</th><th class="num">total</th><th>created</th><th>ended</th><th>transitions</th></tr></thead><tbody>
          ${deployments.map((d) => `<tr data-deployment="${esc(d.deploymentId)}">
            <td class="mono">${esc(d.deploymentId)}${d.rollback ? ' <span class="muted">(rollback)</span>' : ''}</td>
            <td class="num">${esc(d.environmentRevisionId)}</td>
            <td data-field="status" class="${esc(d.status)}" title="${esc(d.statusReason)}">${esc(d.status)}</td>
            <td class="num">${d.counts.desired}</td><td class="num">${d.counts.healthy}</td><td class="num">${d.counts.total}</td>
            <td>${ago(d.createdAt)}</td><td>${d.endedAt ? ago(d.endedAt) : '—'}</td>
            <td><ul class="history">${d.history.map((h) => `<li>${esc(h.status)} ${ago(h.at)}${h.reason ? `: ${esc(h.reason)}` : ''}</li>`).join('')}</ul></td></tr>`).join('')}
        </tbody></table>
        <h2>Revisions</h2>
        <table id="revisions"><thead><tr><th class="num">revision</th><th>task definition</th><th>method</th><th>instance group</th><th class="num">healthy</th><th class="num">total</th><th>created</th></tr></thead><tbody>
          ${revisions.map((r) => `<tr data-revision="${esc(r.environmentRevisionId)}">
            <td class="num">${esc(r.environmentRevisionId)}</td><td title="${esc(r.taskDefinition)}">${esc(shortArn(r.taskDefinition))}</td><td>${esc(r.deploymentMethod)}</td>
            <td class="mono">${esc(r.instanceGroup.query || r.instanceGroup.attributes.map((a) => `${a.name}${a.value ? `=${a.value}` : ''}`).join(', ') || 'every instance')}</td>
            <td class="num">${r.counts.healthy}</td><td class="num">${r.counts.total}</td><td>${ago(r.createdAt)}</td></tr>`).join('')}
        </tbody></table>`;
      if (active && active.failures && active.failures.length) {
        $('#rollout').insertAdjacentHTML('beforeend', `<h2>Failed starts</h2><table id="failures"><tbody>${active.failures.map((f) =>
          `<tr><td class="mono">${esc(f.containerInstanceArn)}</td><td class="num">${f.attempts}</td><td>${esc(f.reason)}</td></tr>`).join('')}</tbody></table>`);
      }
      hover($('#rollout-grid'), (i) => {
        const cell = rollout.instances[i];
        return `<div class="mono">${esc(cell.containerInstanceArn)}</div><div><b>${esc(COVERAGE_TEXT[cell.coverage] || cell.coverage)}</b></div>`;
      }, (i) => `/ui/instances/${enc(rollout.cluster)}/${enc(rollout.instances[i].containerInstanceArn)}`);
      if (admin) wireActions(rollout, env);
    },
  };
  return page;
}

// At the rate healthy instances were gained over the last two minutes.
function estimate(rollout) {
  if (rollout.complete && rollout.deploymentStatus === 'completed') return 'done';
  if (rollout.deploymentStatus !== 'running') return '—';
  const samples = app.samples;
  if (samples.length < 2) return '…';
  const [t0, h0] = samples[0];
  const [t1, h1] = samples[samples.length - 1];
  const remaining = rollout.counts.desired - rollout.counts.healthy;
  if (remaining <= 0) return 'finishing';
  if (h1 <= h0 || t1 <= t0) return '…';
  const seconds = (remaining * (t1 - t0)) / (h1 - h0) / 1000;
  return seconds < 90 ? `${Math.ceil(seconds)} s` : `${Math.ceil(seconds / 60)} min`;
}

// The buttons of what the lifecycle allows now (the server says which).
function actions(rollout, env, revisions) {
  const allowed = new Set(rollout.actions);
  const button = (action, text, danger) => (allowed.has(action) ? `<button data-action="${action}"${danger ? ' class="danger"' : ''}>${text}</button>` : '');
  const latest = env.latestEnvironmentRevisionId;
  return `<div class="toolbar" id="actions">
    ${allowed.has('deploy') ? `<label>revision <select id="deploy-revision">${revisions.map((r) =>
      `<option value="${esc(r.environmentRevisionId)}" ${r.environmentRevisionId === latest ? 'selected' : ''}>${esc(r.environmentRevisionId)} · ${esc(shortArn(r.taskDefinition))}</option>`).join('')}</select></label>` : ''}
    ${button('deploy', 'Deploy…')}
    ${button('stop', 'Stop…', true)}
    ${button('promote', 'Promote…')}
    ${button('rollback', 'Roll back…', true)}
    ${button('freeze', 'Freeze…')}
    ${button('thaw', 'Thaw…')}
  </div>`;
}

function wireActions(rollout, env) {
  const base = `/v1/${enc(rollout.cluster)}/environments/${enc(env.environmentName)}`;
  const deployment = rollout.deploymentId ? `${base}/deployments/${enc(rollout.deploymentId)}` : null;
  const act = {
    async deploy() {
      const revision = Number($('#deploy-revision').value);
      // The route decides what a rollback is: asked first as a deploy, then, if it says so, as one.
      let query = `revisionId=${revision}`;
      let title = `Deploy revision ${revision}`;
      let plan;
      try {
        plan = await api(`${base}/deployments?${query}&dryRun=true`, { method: 'POST' });
      } catch (error) {
        if (error.code !== 'RollbackRequired') throw error;
        query += '&rollback=true';
        title = `Roll back to revision ${revision}`;
        plan = await api(`${base}/deployments?${query}&dryRun=true`, { method: 'POST' });
      }
      const starts = plan.batches.reduce((n, b) => n + b.starts.length, 0);
      const stops = plan.batches.reduce((n, b) => n + b.stops.length, 0);
      return [title, `${esc(shortArn(plan.taskDefinition))} by ${esc(plan.deploymentMethod)} over ${plan.eligible} eligible instances:
        ${starts} starts and ${stops} stops in ${plan.batches.length} passes, about ${Math.ceil(plan.estimatedSeconds)} s on a quiet fleet (its dry run)
        ${plan.complete ? '' : `<div class="failed">It would stall: ${esc(plan.stalledReason)}</div>`}`,
      async () => { const r = await api(`${base}/deployments?${query}`, { method: 'POST' }); return `Deployment ${r.deploymentId} started`; }];
    },
    stop: async () => [`Stop deployment ${rollout.deploymentId}`, 'Nothing more is started or stopped; tasks already started stay.',
      async () => { await api(`${deployment}/stop`, { method: 'POST' }); return 'Deployment stopped'; }],
    promote: async () => [`Promote the canary of ${rollout.deploymentId}`, 'The rest of the fleet is rolled out.',
      async () => { await api(`${deployment}/promote`, { method: 'POST' }); return 'Canary promoted'; }],
    rollback: async () => ['Roll back', 'Deploys the revision of the last deployment that completed before the active one.',
      async () => { const r = await api(`${base}/rollback`, { method: 'POST', headers: { 'Content-Type': 'application/json' }, body: '{}' }); return `Rollback ${r.deploymentId} started`; }],
    freeze: async () => ['Freeze', 'The scheduler acts on nothing in this environment until it is thawed.',
      async () => { await api(`${base}/freeze`, { method: 'POST' }); return 'Environment frozen'; }],
    thaw: async () => ['Thaw', 'The scheduler acts on this environment again.',
      async () => { await api(`${base}/thaw`, { method: 'POST' }); return 'Environment thawed'; }],
  };
  for (const button of document.querySelectorAll('button[data-action]')) {
    button.addEventListener('click', async () => {
      try {
        const [title, body, run] = await act[button.dataset.action]();
        confirmThen(title, body, run);
      } catch (error) {
        say(error.message, 'error');
      }
    });
  }
}

function confirmThen(title, body, run) {
  const dialog = $('#confirm');
  $('#confirm-title').textContent = title;
  $('#confirm-body').innerHTML = body;
  dialog.onclose = async () => {
    if (dialog.returnValue !== 'ok') return;
    try {
      say(await run());
    } catch (error) {
      say(error.message, 'error');
    }
    refresh();
  };
  dialog.returnValue = '';
  dialog.showModal();
}

// ---- tasks and instances ---------------------------------------------------------------------

function listPage(kind) {
  const page = {
    name: kind,
    tokens: [null],
    wants: () => false, // a table being read does not move under the reader
    async render() {
      const params = new URLSearchParams(location.search);
      const cluster = params.get('cluster') || '';
      const status = params.get('status') || '';
      const filter = params.get('filter') || '';
      const token = page.tokens[page.tokens.length - 1];
      const query = new URLSearchParams({ maxResults: '100' });
      if (cluster) query.set('cluster', cluster);
      if (status) query.set('status', status);
      if (filter && kind === 'instances') query.set('filter', filter);
      if (token) query.set('nextToken', token);
      const list = await api(`/v1/${kind}?${query}`);
      const rows = list.items.map((item) => {
        const e = item.entity;
        const arn = kind === 'tasks' ? e.taskARN : e.containerInstanceARN;
        const clusterName = (e.clusterARN || '').split('/').pop();
        const link = `/ui/${kind}/${enc(clusterName)}/${enc(arn)}`;
        return kind === 'tasks'
          ? `<tr data-arn="${esc(arn)}"><td class="mono"><a href="${link}" data-nav>${esc(shortArn(arn))}</a></td><td>${esc(clusterName)}</td><td>${esc(e.lastStatus)}</td><td>${esc(e.desiredStatus)}</td><td>${esc(shortArn(e.taskDefinitionARN || ''))}</td><td class="mono">${esc(shortArn(e.containerInstanceARN || ''))}</td><td>${esc(e.startedBy || '')}</td></tr>`
          : `<tr data-arn="${esc(arn)}"><td class="mono"><a href="${link}" data-nav>${esc(shortArn(arn))}</a></td><td>${esc(clusterName)}</td><td>${esc(e.status)}</td><td>${e.agentConnected ? 'connected' : 'disconnected'}</td><td class="num">${num(e.runningTasksCount)}</td><td class="num">${num(e.pendingTasksCount)}</td><td>${esc(e.EC2InstanceID || '')}</td></tr>`;
      }).join('');
      $('#main').innerHTML = `
        <h1>${kind === 'tasks' ? 'Tasks' : 'Container instances'}</h1>
        <form class="toolbar" id="search-form">
          <input id="search-cluster" placeholder="cluster" value="${esc(cluster)}">
          <input id="search-status" placeholder="status, e.g. ${kind === 'tasks' ? 'running' : 'active'}" value="${esc(status)}">
          ${kind === 'instances' ? `<input id="search-filter" placeholder="cluster query" value="${esc(filter)}">` : ''}
          <button id="search" type="submit">Search</button>
          <span class="muted">page ${page.tokens.length}</span>
          ${page.tokens.length > 1 ? '<button id="previous" type="button">Previous</button>' : ''}
          ${list.nextToken ? '<button id="next" type="button">Next</button>' : ''}
        </form>
        <table id="entities"><thead><tr>${kind === 'tasks'
          ? '<th>task</th><th>cluster</th><th>last status</th><th>desired</th><th>task definition</th><th>instance</th><th>started by</th>'
          : '<th>instance</th><th>cluster</th><th>status</th><th>agent</th><th class="num">running</th><th class="num">pending</th><th>EC2 instance</th>'}</tr></thead>
          <tbody>${rows || `<tr><td colspan="7" class="muted">none</td></tr>`}</tbody></table>`;
      $('#search-form').addEventListener('submit', (event) => {
        event.preventDefault();
        const next = new URLSearchParams();
        for (const [key, id] of [['cluster', 'search-cluster'], ['status', 'search-status'], ['filter', 'search-filter']]) {
          const input = $(`#${id}`);
          if (input && input.value.trim()) next.set(key, input.value.trim());
        }
        page.tokens = [null];
        history.replaceState(null, '', `/ui/${kind}${next.toString() ? `?${next}` : ''}`);
        refresh();
      });
      const next = $('#next');
      if (next) next.addEventListener('click', () => { page.tokens.push(list.nextToken); refresh(); });
      const previous = $('#previous');
      if (previous) previous.addEventListener('click', () => { page.tokens.pop(); refresh(); });
    },
  };
  return page;
}

function entityPage(kind, cluster, arn) {
  return {
    name: kind === 'tasks' ? 'task' : 'instance',
    wants: (c) => c.clusters.includes(cluster) && c.kinds.includes(kind === 'tasks' ? 'task' : 'instance'),
    async render() {
      // Encoded: an ARN (or a crafted link) must not change the path it is asked at.
      const record = await api(`/v1/${kind}/${enc(cluster)}/${enc(arn)}`);
      const e = record.entity || record;
      $('#main').innerHTML = `
        <h1>${kind === 'tasks' ? 'Task' : 'Container instance'} <span class="mono">${esc(shortArn(arn))}</span></h1>
        <p>cluster <a href="/ui/clusters/${enc(cluster)}" data-nav>${esc(cluster)}</a> · ${esc(kind === 'tasks' ? e.lastStatus : e.status)}
          ${kind === 'tasks' && e.containerInstanceARN ? ` · on <a href="/ui/instances/${enc(cluster)}/${enc(e.containerInstanceARN)}" data-nav class="mono">${esc(shortArn(e.containerInstanceARN))}</a>` : ''}
          ${kind === 'instances' ? ` · <a href="/ui/tasks?cluster=${enc(cluster)}" data-nav>tasks of the cluster</a>` : ''}</p>
        <pre id="raw">${esc(JSON.stringify(record, null, 2))}</pre>`;
    },
  };
}

// ---- start -----------------------------------------------------------------------------------

start().catch((error) => {
  if (error instanceof AuthNeeded) login(error.message);
  else say(error.message, 'error');
});
