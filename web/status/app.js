// The twinfs status page: one server-sent event stream (/events) carries the whole state
// first, then every event, state change and cache sample as it happens. Nothing polls.
'use strict';

const $ = (id) => document.getElementById(id);
const MiB = 1024 * 1024;

function fmtBytes(n) {
  if (n == null) return '–';
  const u = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let i = 0;
  for (; n >= 1024 && i < u.length - 1; i++) n /= 1024;
  return `${i === 0 ? n : n.toFixed(1)} ${u[i]}`;
}
function fmtSecs(s) {
  if (s == null) return '–';
  if (s < 60) return `${Math.round(s)}s`;
  if (s < 3600) return `${Math.floor(s / 60)}m${String(Math.round(s % 60)).padStart(2, '0')}s`;
  return `${Math.floor(s / 3600)}h${String(Math.floor((s % 3600) / 60)).padStart(2, '0')}m`;
}
const fmtTime = (ms) => new Date(ms).toLocaleTimeString();
const ago = (ms) => `${fmtSecs((Date.now() - ms) / 1000)} ago`;
/** A selection as the protocol sends it ({paths}|{subtree}) or as the server keeps it ({paths, subtrees, volume}). */
function selText(sel) {
  if (!sel) return '?';
  if (sel.volume) return '/ (volume)';
  const names = [
    ...(sel.paths || []),
    ...(sel.subtree !== undefined ? [sel.subtree] : []),
    ...(sel.subtrees || []),
  ].map((p) => ((sel.subtrees || []).includes(p) || p === sel.subtree ? `${p}/…` : p));
  return names.length <= 3 ? names.join(' ') : `${names.slice(0, 3).join(' ')} +${names.length - 3}`;
}
const fmtMs = (ms) => (ms == null ? '–' : `${Math.round(ms * 10) / 10} ms`);

/** Replaces a table's body with rows of cells (text only: nothing from the server is HTML). */
function fill(id, rows, fresh) {
  const body = $(id).tBodies[0];
  body.replaceChildren(
    ...rows.map((cells, i) => {
      const tr = document.createElement('tr');
      if (fresh && fresh(i)) tr.className = 'fresh';
      for (const c of cells) {
        const td = document.createElement('td');
        if (c instanceof Node) td.append(c);
        else td.textContent = c;
        tr.append(td);
      }
      return tr;
    }),
  );
}

function progressBar(done, total) {
  const wrap = document.createElement('span');
  const bar = document.createElement('span');
  bar.className = 'bar';
  const fillEl = document.createElement('span');
  const pct = total > 0 ? Math.min(100, (100 * done) / total) : 0;
  fillEl.style.width = `${pct}%`;
  bar.append(fillEl);
  wrap.append(bar, document.createTextNode(total > 0 ? `${fmtBytes(done)} / ${fmtBytes(total)}` : fmtBytes(done)));
  return wrap;
}

// Charts (uPlot, served from the server's node_modules).
let cacheChart;
let stallChart;
const cacheData = [[], [], []];
const STALL_EDGES = [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000];
const STALL_LABELS = ['<1', '1-2', '2-5', '5-10', '10-20', '20-50', '50-100', '100-200', '200-500', '500-1000', '>1000'];

function chartWidth(el) {
  return Math.max(300, el.clientWidth - 4);
}

function makeCharts() {
  const cacheEl = $('cache-chart');
  cacheChart = new uPlot(
    {
      width: chartWidth(cacheEl),
      height: 220,
      scales: { x: { time: true }, mib: { auto: true }, rate: { auto: true } },
      series: [
        {},
        { label: 'dirty (MiB)', scale: 'mib', stroke: '#2b6cb0', fill: 'rgba(43,108,176,0.12)', width: 2 },
        { label: 'write-back (MiB/s)', scale: 'rate', stroke: '#dd6b20', width: 2 },
      ],
      axes: [{}, { scale: 'mib', label: 'MiB' }, { scale: 'rate', side: 1, label: 'MiB/s', grid: { show: false } }],
    },
    cacheData,
    cacheEl,
  );
  const stallEl = $('stall-chart');
  stallChart = new uPlot(
    {
      width: chartWidth(stallEl),
      height: 220,
      scales: { x: { time: false, range: [-0.5, STALL_LABELS.length - 0.5] }, y: { range: (_u, _min, max) => [0, Math.max(1, max)] } },
      series: [
        { label: 'stall (ms)', value: (_u, v) => (v == null ? '' : STALL_LABELS[v]) },
        { label: 'prepares', stroke: '#2f855a', fill: 'rgba(47,133,90,0.5)', paths: uPlot.paths.bars({ size: [0.8] }), points: { show: false } },
      ],
      axes: [{ values: (_u, ticks) => ticks.map((t) => STALL_LABELS[t] ?? ''), splits: () => STALL_LABELS.map((_, i) => i), label: 'ms' }, { label: 'prepares' }],
    },
    [STALL_LABELS.map((_, i) => i), STALL_LABELS.map(() => 0)],
    stallEl,
  );
}

function addSample(s) {
  cacheData[0].push(s.t);
  cacheData[1].push(s.dirtyBytes / MiB);
  cacheData[2].push(s.writebackBytesPerSec / MiB);
  const keep = 600;
  if (cacheData[0].length > keep) for (const a of cacheData) a.splice(0, a.length - keep);
  cacheChart?.setData(cacheData);
}

function renderStall(recentMs) {
  const counts = STALL_LABELS.map(() => 0);
  for (const ms of recentMs) {
    let i = STALL_EDGES.findIndex((e) => ms < e);
    if (i < 0) i = STALL_EDGES.length;
    counts[i]++;
  }
  stallChart?.setData([STALL_LABELS.map((_, i) => i), counts]);
}

let lastState;
let freshPrepare;
let freshSuccess = new Set();

function render(st) {
  lastState = st;
  $('volume').textContent = `${st.fs.mount}  ←  ${st.fs.primary}  (pid ${st.pid})`;
  const m = st.mirror;
  $('mirror-state').textContent = m ? m.state : 'no mirror';
  $('mirror-state').className = `big ${m && m.state === 'PAIR' ? 'ok' : m && m.state === 'DEGRADED' ? 'bad' : 'warn'}`;
  $('mirror-detail').textContent = m ? `${m.splits.length} split(s), queue ${m.queueLength}` : '';
  const broken = m ? m.broken : [];
  $('broken-count').textContent = String(broken.length);
  $('broken-count').className = `big ${broken.length ? 'bad' : 'ok'}`;
  fill('broken', broken.map((p) => [p, (m.brokenReasons && m.brokenReasons[p]) || 'being repaired']));
  const c = st.fs.cache;
  $('dirty').textContent = fmtBytes(c.dirtyBytes);
  $('dirty-detail').textContent = st.fs.writeThrough
    ? 'write-through'
    : `${c.dirtyFiles} file(s), limit ${fmtBytes(c.limitBytes)}, ${fmtBytes(c.flushedBytes)} written back`;
  if (st.stall) {
    const r = st.stall.recentMs;
    $('stall-last').textContent = r.length ? fmtMs(r[r.length - 1]) : '–';
    $('stall-detail').textContent = `${st.stall.prepares} prepare(s), ${st.stall.failedPrepares} failed, budget ${st.stall.maxStallMs} ms`;
    renderStall(r);
  }
  $('holds').textContent = `${st.freezes.length} / ${st.leases.length}`;
  fill('freezes', st.freezes.map((f) => [f.freezeId, selText(f.selector), fmtSecs((Date.now() - f.since) / 1000)]));
  fill('leases', st.leases.map((b) => [b.backupId, selText(b.selector), fmtMs(b.stallMs), fmtSecs(Math.max(0, (b.expiresAt - Date.now()) / 1000))]));
  fill(
    'prepares',
    st.prepares.map((p) => [fmtTime(p.time), selText(p.selector), fmtMs(p.stallMs), p.backupId]),
    (i) => i === 0 && st.prepares[0] && st.prepares[0].backupId === freshPrepare,
  );
  fill(
    'backups',
    st.backups.map((b) => [
      b.target,
      b.phase,
      progressBar(b.bytes, b.bytesTotal),
      b.bytesPerSec == null ? '–' : `${fmtBytes(b.bytesPerSec)}/s`,
      fmtSecs(b.etaSec),
    ]),
  );
  const targets = [...new Set([...Object.keys(st.lastSuccess), ...Object.keys(st.lastFailure || {})])].sort();
  fill(
    'last-success',
    targets.map((t) => {
      const s = st.lastSuccess[t];
      const f = (st.lastFailure || {})[t];
      const failed = f ? document.createElement('span') : '–';
      if (f) {
        failed.className = 'bad';
        failed.textContent = `${f.code} ${ago(f.time)}`;
        failed.title = f.message || '';
      }
      return s
        ? [t, s.snapshotId || '–', ago(s.time), String(s.files), fmtBytes(s.copiedBytes), failed]
        : [t, '–', 'never', '–', '–', failed];
    }),
    (i) => freshSuccess.has(targets[i]),
  );
  if (st.smb) {
    const clients = st.smb.clients || [];
    $('smb').textContent = st.smb.error ? '?' : String(clients.length);
    $('smb-detail').textContent = st.smb.error ? st.smb.error : `${st.smb.state}${st.smb.url ? ` ${st.smb.url}` : ''}`;
  } else {
    $('smb').textContent = '–';
    $('smb-detail').textContent = 'not served';
  }
  renderEvents(st.events);
}

function describeEvent(e) {
  const d = e.data || {};
  switch (e.event) {
    case 'frozen': return `frozen ${selText(d.selector)} (${d.freezeId})`;
    case 'thawed': return `thawed ${d.freezeId} after ${d.heldMs} ms`;
    case 'split': return `prepared ${selText(d.selector)}: writes held ${fmtMs(d.stallMs)} (${d.backupId})`;
    case 'prepare-failed': return `prepare of ${selText(d.selector)} failed: ${d.code}: ${d.message}`;
    case 'released': return `released ${d.backupId}`;
    case 'resynced': return `resynced ${d.backupId}: ${fmtBytes(d.bytesCopied)} in ${d.ms} ms`;
    case 'lease-expired': return `lease of ${d.backupId} expired`;
    case 'backup-progress': return `backup to ${d.target}: ${fmtBytes(d.bytes)}`;
    case 'backup-done': return d.outcome === 'ok'
      ? `backup ${d.snapshotId || d.backupId} to ${d.target} done: ${d.files} entries, ${fmtBytes(d.copiedBytes)} copied`
      : `backup to ${d.target} failed: ${d.error ? `${d.error.code}: ${d.error.message}` : ''}`;
    case 'broken': return `pair broken: ${d.path} (${d.error})`;
    case 'state': {
      const what = d.paths === 'volume' ? 'volume' : (d.paths || []).join(' ') || `split ${d.splitId || ''}`;
      return `${what}: ${d.state}`;
    }
    case 'auth-failed': return `wrong token from ${d.remote}`;
    case 'repaired': return 'mirror repair done';
    case 'backup-lost': return `backup ${d.backupId} to ${d.target}: its peer went away without an outcome`;
    case 'repair-failed': return `mirror repair failed: ${d.code}`;
    default: return JSON.stringify(d);
  }
}

let events = [];
function renderEvents(list) {
  events = list.filter((e) => e.event !== 'backup-progress').slice(0, 30);
  fill('events', events.map((e) => [fmtTime(e.time), e.event, describeEvent(e)]));
}

function onMessage(m) {
  if (m.type === 'state') render(m.state);
  else if (m.type === 'sample') addSample(m.sample);
  else if (m.type === 'event') {
    if (m.event === 'split') freshPrepare = m.data.backupId;
    if (m.event === 'backup-done' && m.data.outcome === 'ok') freshSuccess = new Set([m.data.target]);
    if (m.event !== 'backup-progress') renderEvents([m, ...events]);
  }
}

function connect() {
  const es = new EventSource('/events');
  es.onopen = () => {
    $('live').textContent = 'live';
    $('live').className = 'badge on';
  };
  es.onmessage = (ev) => onMessage(JSON.parse(ev.data));
  es.onerror = () => {
    $('live').textContent = 'reconnecting';
    $('live').className = 'badge off';
  };
}

async function login(token) {
  const r = await fetch('/session', {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ token }),
    credentials: 'same-origin',
  });
  return r.ok;
}

async function start() {
  // A token in the fragment (never sent to the server in the URL) becomes a session cookie.
  const m = /(?:^|[#&])token=([^&]+)/.exec(location.hash);
  if (m) {
    history.replaceState(null, '', location.pathname);
    await login(decodeURIComponent(m[1]));
  }
  const probe = await fetch('/api/status', { credentials: 'same-origin' });
  if (probe.status === 401) {
    $('login').hidden = false;
    $('live').textContent = 'signed out';
    $('login').onsubmit = async (ev) => {
      ev.preventDefault();
      if (await login($('token').value)) location.reload();
      else $('login-error').textContent = 'wrong token';
    };
    return;
  }
  $('main').hidden = false;
  makeCharts();
  const st = await probe.json();
  for (const s of st.samples) addSample(s);
  render(st);
  connect();
  // The tables show ages ("12s ago", "expires in"): redrawn from the last state each second.
  setInterval(() => lastState && render(lastState), 1000);
}

window.addEventListener('DOMContentLoaded', () => void start());
