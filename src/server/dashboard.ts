/**
 * The dashboard: one self-contained page (no build step, no external assets) that reads the JSON
 * API and follows the live event stream. Routes: `/` (projects and runs), `/runs/<id>` (a run:
 * jobs, steps, live logs, resource chart, artifacts to download, cancel and re-run).
 */
export const DASHBOARD_HTML = `<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>berth</title>
<style>
  :root { --bg:#0d1117; --panel:#161b22; --line:#30363d; --text:#e6edf3; --dim:#8b949e; --ok:#3fb950; --bad:#f85149; --run:#d29922; --q:#8b949e; }
  * { box-sizing: border-box; }
  body { margin:0; font:14px/1.45 system-ui, -apple-system, Segoe UI, sans-serif; background:var(--bg); color:var(--text); }
  header { display:flex; align-items:center; gap:16px; padding:12px 24px; border-bottom:1px solid var(--line); }
  header a { color:var(--text); text-decoration:none; font-weight:600; font-size:16px; }
  main { padding:24px; max-width:1200px; margin:0 auto; }
  h2 { font-size:15px; margin:24px 0 8px; color:var(--dim); font-weight:600; text-transform:uppercase; letter-spacing:.04em; }
  table { width:100%; border-collapse:collapse; background:var(--panel); border:1px solid var(--line); border-radius:6px; overflow:hidden; }
  th, td { text-align:left; padding:8px 12px; border-bottom:1px solid var(--line); }
  th { color:var(--dim); font-weight:500; }
  tr:last-child td { border-bottom:none; }
  a { color:#58a6ff; }
  .st { display:inline-block; padding:1px 8px; border-radius:10px; font-size:12px; font-weight:600; }
  .succeeded,.passed { background:#1f3d2a; color:var(--ok); } .failed,.interrupted,.timed_out { background:#3d1f1f; color:var(--bad); }
  .running { background:#3d311f; color:var(--run); } .queued,.cancelled,.skipped { background:#262c33; color:var(--q); }
  .dagbox { overflow-x:auto; background:var(--panel); border:1px solid var(--line); border-radius:6px; padding:8px; }
  svg#dag .node { cursor:pointer; }
  svg#dag .node rect { fill:#0d1117; stroke:var(--line); stroke-width:1.5; rx:6; }
  svg#dag .node.sel rect { stroke:#58a6ff; }
  svg#dag .node .name { fill:var(--text); font-weight:600; font-size:13px; }
  svg#dag .node .meta { fill:var(--dim); font-size:11px; }
  svg#dag .edge { fill:none; stroke:#484f58; stroke-width:1.5; marker-end:url(#arrow); }
  svg#dag .dot.succeeded, svg#dag .dot.passed { fill:var(--ok); } svg#dag .dot.failed, svg#dag .dot.timed_out, svg#dag .dot.interrupted { fill:var(--bad); }
  svg#dag .dot.running { fill:var(--run); } svg#dag .dot.queued, svg#dag .dot.skipped, svg#dag .dot.cancelled { fill:var(--q); }
  .steps { margin:6px 0 0; padding:0; list-style:none; font-size:13px; }
  .steps li { padding:3px 0; }
  pre#log { background:#010409; border:1px solid var(--line); border-radius:6px; padding:12px; height:420px; overflow:auto; font:12px/1.4 ui-monospace, SFMono-Regular, Menlo, monospace; white-space:pre-wrap; }
  .err { color:var(--bad); } .sys { color:var(--dim); }
  button { background:#21262d; color:var(--text); border:1px solid var(--line); border-radius:6px; padding:5px 12px; cursor:pointer; }
  button:hover { border-color:#8b949e; }
  .bar { display:flex; gap:8px; align-items:center; }
  svg.chart { background:var(--panel); border:1px solid var(--line); border-radius:6px; }
  #login { display:none; gap:8px; }
  .muted { color:var(--dim); }
</style>
</head>
<body>
<header><a href="/">⚓ berth</a><span class="muted" id="where"></span><span style="flex:1"></span>
  <form id="login"><input id="tok" type="password" placeholder="API token"><button>Sign in</button></form></header>
<main id="app"><p class="muted">Loading…</p></main>
<script>
const $ = (s) => document.querySelector(s);
const esc = (s) => String(s ?? '').replace(/[&<>"]/g, (c) => ({ '&':'&amp;', '<':'&lt;', '>':'&gt;', '"':'&quot;' })[c]);
const token = () => localStorage.getItem('berth.token') || '';
const st = (s) => '<span class="st ' + esc(s) + '">' + esc(s) + '</span>';
const dur = (a, b) => { if (!a) return ''; const ms = (b || Date.now()) - a; return ms < 1000 ? ms + ' ms' : ms < 60000 ? (ms/1000).toFixed(1) + ' s' : Math.floor(ms/60000) + ' m ' + Math.round(ms%60000/1000) + ' s'; };
async function api(path, opts = {}) {
  const r = await fetch(path, { ...opts, headers: { 'Authorization': 'Bearer ' + token(), 'Content-Type': 'application/json' } });
  if (r.status === 401) { $('#login').style.display = 'flex'; throw new Error('sign in with the server token'); }
  const body = await r.json();
  if (!r.ok) throw new Error(body.message || r.status);
  return body;
}
$('#login').addEventListener('submit', (e) => { e.preventDefault(); localStorage.setItem('berth.token', $('#tok').value); location.reload(); });
let source;
function events(run, on) {
  if (source) source.close();
  source = new EventSource('/api/events?token=' + encodeURIComponent(token()) + (run ? '&run=' + encodeURIComponent(run) : ''));
  for (const k of ['run.queued', 'run.updated', 'runner', 'sample']) source.addEventListener(k, (m) => on(JSON.parse(m.data)));
}
async function home() {
  $('#where').textContent = '';
  const [projects, runs] = await Promise.all([api('/api/projects'), api('/api/runs?limit=50')]);
  const pname = Object.fromEntries(projects.map((p) => [p.id, p.name]));
  $('#app').innerHTML = '<h2>Projects</h2><table><tr><th>project</th><th>repository</th><th>branch</th><th>badge</th><th></th></tr>' +
    projects.map((p) => '<tr><td>' + esc(p.name) + '</td><td class="muted">' + esc(p.repoUrl) + '</td><td>' + esc(p.branch || '') + '</td><td><img alt="status" src="/badge/' + encodeURIComponent(p.name) + '.svg"></td><td><button data-run="' + esc(p.name) + '">Run now</button></td></tr>').join('') +
    '</table><h2>Runs</h2><table id="runs"><tr><th>run</th><th>project</th><th>status</th><th>commit</th><th>trigger</th><th>duration</th></tr>' +
    runs.map((r) => '<tr><td><a href="/runs/' + esc(r.id) + '">' + esc(r.id) + '</a></td><td>' + esc(pname[r.projectId]) + '</td><td>' + st(r.status) + '</td><td class="muted">' + esc((r.sha || '').slice(0, 8)) + ' ' + esc(r.message || '') + '</td><td>' + esc(r.trigger) + '</td><td>' + dur(r.startedAt, r.finishedAt) + '</td></tr>').join('') + '</table>';
  for (const b of document.querySelectorAll('button[data-run]')) b.onclick = async () => { const r = await api('/api/projects/' + encodeURIComponent(b.dataset.run) + '/runs', { method: 'POST', body: '{}' }); location.href = '/runs/' + r.id; };
  events(undefined, () => { clearTimeout(window.t); window.t = setTimeout(home, 300); });
}
// The job DAG: a column per dependency depth (a job sits one column right of its deepest need),
// an arrow from every need to its dependant, each node coloured by status; click to select.
function dag(jobs, selected, allSteps) {
  const byName = new Map(jobs.map((j) => [j.name, j]));
  const depth = new Map();
  const depthOf = (n, seen = new Set()) => {
    if (depth.has(n)) return depth.get(n);
    if (seen.has(n)) return 0;
    seen.add(n);
    const d = Math.max(-1, ...((byName.get(n) || {}).needs || []).filter((x) => byName.has(x)).map((x) => depthOf(x, seen))) + 1;
    depth.set(n, d);
    return d;
  };
  const cols = [];
  for (const j of jobs) { const d = depthOf(j.name); (cols[d] = cols[d] || []).push(j); }
  const W = 200, H = 56, GX = 70, GY = 18, P = 10;
  const pos = new Map();
  cols.forEach((col, c) => col.forEach((j, r) => pos.set(j.name, { x: P + c * (W + GX), y: P + r * (H + GY) })));
  const width = P * 2 + cols.length * W + Math.max(0, cols.length - 1) * GX;
  const height = P * 2 + Math.max(1, ...cols.map((c) => c.length)) * (H + GY) - GY;
  let edges = '';
  for (const j of jobs) for (const n of j.needs || []) {
    const a = pos.get(n), b = pos.get(j.name); if (!a || !b) continue;
    const x1 = a.x + W, y1 = a.y + H / 2, x2 = b.x - 4, y2 = b.y + H / 2, mx = (x1 + x2) / 2;
    edges += '<path class="edge" data-from="' + esc(n) + '" data-to="' + esc(j.name) + '" d="M' + x1 + ',' + y1 + ' C' + mx + ',' + y1 + ' ' + mx + ',' + y2 + ' ' + x2 + ',' + y2 + '"/>';
  }
  const nodes = jobs.map((j) => {
    const p = pos.get(j.name);
    const s = allSteps.filter((x) => x.job === j.name);
    const done = s.filter((x) => x.finishedAt).length;
    return '<g class="node' + (j.name === selected ? ' sel' : '') + '" data-job="' + esc(j.name) + '" data-status="' + esc(j.status) + '" transform="translate(' + p.x + ',' + p.y + ')">' +
      '<rect width="' + W + '" height="' + H + '"/><circle class="dot ' + esc(j.status) + '" cx="16" cy="19" r="5"/>' +
      '<text class="name" x="28" y="23">' + esc(j.name.length > 24 ? j.name.slice(0, 23) + '…' : j.name) + '</text>' +
      '<text class="meta" x="16" y="43">' + esc(j.status) + (s.length ? ' · ' + done + '/' + s.length + ' steps' : '') + (j.startedAt ? ' · ' + dur(j.startedAt, j.finishedAt) : '') + '</text></g>';
  }).join('');
  return '<svg id="dag" width="' + width + '" height="' + height + '" viewBox="0 0 ' + width + ' ' + height + '">' +
    '<defs><marker id="arrow" viewBox="0 0 8 8" refX="7" refY="4" markerWidth="8" markerHeight="8" orient="auto"><path d="M0,0 L8,4 L0,8 z" fill="#484f58"/></marker></defs>' + edges + nodes + '</svg>';
}
const size = (n) => n < 1024 ? n + ' B' : n < 1048576 ? (n / 1024).toFixed(1) + ' KiB' : (n / 1048576).toFixed(1) + ' MiB';
// An artifact is fetched with the token (never put in a URL) and handed to the browser as a download.
async function download(runId, a) {
  const r = await fetch('/api/runs/' + encodeURIComponent(runId) + '/artifacts/' + [a.job].concat(a.path.split('/')).map(encodeURIComponent).join('/'), { headers: { 'Authorization': 'Bearer ' + token() } });
  if (!r.ok) throw new Error((await r.json().catch(() => ({}))).message || r.status);
  const url = URL.createObjectURL(await r.blob());
  const link = document.createElement('a');
  link.href = url; link.download = a.path.split('/').pop();
  document.body.append(link); link.click(); link.remove();
  setTimeout(() => URL.revokeObjectURL(url), 60000);
}
const finished = (run) => run.status !== 'queued' && run.status !== 'running';
async function runPage(id) {
  let run = await api('/api/runs/' + encodeURIComponent(id));
  let selected = run.jobs[0] ? run.jobs[0].name : undefined;
  let after = 0;
  const logs = [];
  let artifacts = finished(run) ? await api('/api/runs/' + encodeURIComponent(id) + '/artifacts') : [];
  const draw = () => {
    $('#where').textContent = 'run ' + run.id;
    const steps = (job) => run.steps.filter((s) => s.job === job).map((s) => '<li>' + st(s.status) + ' ' + esc(s.name) + ' <span class="muted">' + dur(s.startedAt, s.finishedAt) + '</span></li>').join('');
    $('#app').innerHTML = '<div class="bar"><h2 style="margin:0;flex:1">Run ' + esc(run.id) + ' ' + st(run.status) + '</h2>' +
      '<span class="muted">' + esc((run.sha || '').slice(0, 12)) + ' ' + esc(run.branch || '') + ' · ' + dur(run.startedAt, run.finishedAt) + '</span>' +
      '<button id="cancel">Cancel</button><button id="rerun">Re-run</button></div>' +
      '<h2>Jobs</h2><div class="dagbox">' + dag(run.jobs, selected, run.steps) + '</div>' +
      (selected ? '<h2>Steps — ' + esc(selected) + '</h2><ul class="steps" id="steps">' + steps(selected) + '</ul>' : '') +
      '<h2>Resources' + (selected ? ' — ' + esc(selected) : '') + '</h2><svg class="chart" id="chart" width="100%" height="120" viewBox="0 0 600 120" preserveAspectRatio="none"></svg>' +
      (artifacts.length ? '<h2>Artifacts</h2><table id="artifacts"><tr><th>job</th><th>file</th><th>size</th></tr>' + artifacts.map((a, i) => '<tr><td>' + esc(a.job) + '</td><td><a href="#" data-i="' + i + '">' + esc(a.path) + '</a></td><td>' + size(a.size) + '</td></tr>').join('') + '</table>' : '') +
      '<h2>Logs</h2><pre id="log"></pre>';
    for (const el of document.querySelectorAll('#dag .node')) el.onclick = () => { selected = el.dataset.job; draw(); };
    for (const el of document.querySelectorAll('#artifacts a')) el.onclick = (e) => { e.preventDefault(); download(run.id, artifacts[Number(el.dataset.i)]).catch((err) => { el.textContent += ' (' + err.message + ')'; }); };
    $('#cancel').onclick = async () => { await api('/api/runs/' + run.id + '/cancel', { method: 'POST' }); };
    $('#rerun').onclick = async () => { const r = await api('/api/runs/' + run.id + '/rerun', { method: 'POST' }); location.href = '/runs/' + r.id; };
    drawLogs(); drawChart();
  };
  const drawLogs = () => {
    const el = $('#log'); if (!el) return;
    const atEnd = el.scrollTop + el.clientHeight >= el.scrollHeight - 20;
    el.innerHTML = logs.map((l) => '<span class="' + (l.stream === 'stderr' ? 'err' : l.stream === 'system' ? 'sys' : '') + '">[' + esc(l.job) + '] ' + esc(l.text) + '</span>').join('\\n');
    if (atEnd) el.scrollTop = el.scrollHeight;
  };
  let samples = [];
  const drawChart = async () => {
    if (!selected) return;
    samples = await api('/api/runs/' + run.id + '/samples?job=' + encodeURIComponent(selected));
    const el = $('#chart'); if (!el || samples.length < 2) { if (el) el.innerHTML = '<text x="10" y="60" fill="#8b949e" font-size="12">no samples yet</text>'; return; }
    const t0 = samples[0].ts, t1 = samples[samples.length - 1].ts || t0 + 1, maxMem = Math.max(...samples.map((s) => s.memBytes), 1), maxCpu = Math.max(100, ...samples.map((s) => s.cpuPercent));
    const pts = (f) => samples.map((s) => ((s.ts - t0) / (t1 - t0 || 1) * 590 + 5).toFixed(1) + ',' + (115 - f(s) * 105).toFixed(1)).join(' ');
    el.innerHTML = '<polyline fill="none" stroke="#3fb950" stroke-width="1.5" points="' + pts((s) => s.cpuPercent / maxCpu) + '"/><polyline fill="none" stroke="#58a6ff" stroke-width="1.5" points="' + pts((s) => s.memBytes / maxMem) + '"/>' +
      '<text x="8" y="14" fill="#3fb950" font-size="11">CPU %</text><text x="60" y="14" fill="#58a6ff" font-size="11">memory (peak ' + (maxMem / 1048576).toFixed(0) + ' MiB)</text>';
  };
  const more = async () => { const page = await api('/api/runs/' + run.id + '/logs?after=' + after + '&limit=5000'); for (const l of page) { logs.push(l); after = l.seq; } };
  await more();
  draw();
  events(id, async (e) => {
    // A line right after the last one shown goes on; past a gap (this stream was dropped while the
    // tab did not keep up, or lines were stored without an event) the gap is read from the API.
    if (e.kind === 'runner' && e.event.kind === 'log') { if (e.seq === after + 1) { logs.push({ seq: e.seq, job: e.event.job, stream: e.event.stream, text: e.event.line }); after = e.seq; drawLogs(); } else if (e.seq > after + 1) { await more(); drawLogs(); } return; }
    if (e.kind === 'sample') { if (e.job === selected) drawChart(); return; }
    run = await api('/api/runs/' + encodeURIComponent(id)); if (!selected && run.jobs[0]) selected = run.jobs[0].name;
    // Once the run ended: the lines the server wrote after the last log event, and the artifacts.
    if (finished(run)) { await more(); if (!artifacts.length) artifacts = await api('/api/runs/' + encodeURIComponent(id) + '/artifacts'); }
    draw();
  });
}
const m = location.pathname.match(/^\\/runs\\/([^/]+)/);
(m ? runPage(decodeURIComponent(m[1])) : home()).catch((e) => { $('#app').innerHTML = '<p class="err">' + esc(e.message) + '</p>'; });
</script>
</body>
</html>
`;
