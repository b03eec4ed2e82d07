// cutover's dashboard: reads `events` (server-sent events from the admin API) and draws the
// page. No library and no build step: what is here is what runs. Everything that comes from the
// server is written as text (textContent), never as HTML, so an error message from Envoy or a
// reload cannot become markup.
'use strict';

const WINDOW_MS = 5 * 60 * 1000; // what the charts show
const STALE_MS = 3500; // no frame for this long: the page says so and dims
const SVG = 'http://www.w3.org/2000/svg';
const PALETTE = ['#6cb6ff', '#4cc38a', '#e5b454', '#c398f5', '#4fd1c5', '#f39a6b', '#e879b9', '#a3b1c2'];
// A blue-green deployment reads best in blue and green.
const NAMED = { blue: '#6cb6ff', green: '#4cc38a' };
const METRICS = [
  { key: 'rps', index: 0, title: 'requests/s', floor: 1, format: (x) => fmtRate(x) },
  { key: 'errors', index: 1, title: 'errors %', floor: 1, format: (x) => fmtNumber(x) + '%' },
  { key: 'p99', index: 2, title: 'p99 latency', floor: 10, format: (x) => fmtMs(x) },
];

const state = {
  frame: null, // the latest frame: { at, status, telemetry, point }
  points: [], // chart points, oldest first: { t, v: { service: { version: [rps, err, p99] } } }
  lastFrame: 0, // Date.now() when the latest frame arrived
  connection: 'connecting',
};

// --- building the page ------------------------------------------------------------------------

/** An element with attributes (`class`, `data-*`, others) and children (nodes or text). */
function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  setAttrs(node, attrs);
  append(node, children);
  return node;
}

function svg(tag, attrs, ...children) {
  const node = document.createElementNS(SVG, tag);
  setAttrs(node, attrs);
  append(node, children);
  return node;
}

function setAttrs(node, attrs) {
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    node.setAttribute(k, v === true ? '' : String(v));
  }
}

function append(node, children) {
  for (const c of children.flat()) {
    if (c === null || c === undefined || c === false) continue;
    node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
}

/** A coloured cell or span: CSSOM, not a style attribute, which the page's policy forbids. */
function colored(node, prop, color) {
  node.style[prop] = color;
  return node;
}

// --- formatting -------------------------------------------------------------------------------

function fmtNumber(x) {
  if (x === null || x === undefined) return '–';
  if (x === 0) return '0';
  if (x < 0.01) return '<0.01';
  if (x < 1) return x.toFixed(2).replace(/0$/, '');
  if (x < 100) return x.toFixed(1).replace(/\.0$/, '');
  return Math.round(x).toString();
}
const fmtRate = (x) => fmtNumber(x);
const fmtPct = (x) => (x === null || x === undefined ? '–' : fmtNumber(x) + '%');
const fmtMs = (x) => (x === null || x === undefined ? '–' : x >= 1000 ? fmtNumber(x / 1000) + ' s' : fmtNumber(x) + ' ms');
const fmtShare = (x) => (x === null || x === undefined ? '–' : x.toFixed(1).replace(/\.0$/, '') + '%');

/** Seconds as `4m 12s`, `43s`. */
function fmtDuration(seconds) {
  const s = Math.max(0, Math.ceil(seconds));
  const h = Math.floor(s / 3600);
  const m = Math.floor((s % 3600) / 60);
  const r = s % 60;
  if (h) return `${h}h ${m}m`;
  if (m) return r ? `${m}m ${r}s` : `${m}m`;
  return `${r}s`;
}

/** How long before the frame's own time `iso` was, as `12s ago`: ages follow cutover's clock. */
function ago(iso) {
  if (!iso || !state.frame) return '';
  const seconds = (Date.parse(state.frame.at) - Date.parse(iso)) / 1000;
  if (!(seconds >= 0)) return 'just now';
  if (seconds < 1) return 'just now';
  return fmtDuration(seconds) + ' ago';
}

const short = (version) => (version ? version.slice(0, 8) : '–');

// --- colours ----------------------------------------------------------------------------------

/** A colour per version of a service, stable while its versions stay the same. */
function versionColors(names) {
  const colors = {};
  const used = new Set();
  for (const n of names) {
    if (NAMED[n]) {
      colors[n] = NAMED[n];
      used.add(NAMED[n]);
    }
  }
  const free = PALETTE.filter((c) => !used.has(c));
  let i = 0;
  for (const n of names) {
    if (!colors[n]) colors[n] = free[i++ % free.length];
  }
  return colors;
}

/** Every version a service has: deployed, in the split, observed. */
function versionsOf(service) {
  const names = new Set([...(service.deployed || []), ...Object.keys(service.split || {})]);
  for (const v of Object.keys(service.observed?.versions || {})) names.add(v);
  return [...names].sort();
}

// --- the parts of the page --------------------------------------------------------------------

function renderSummary(status) {
  const parts = [];
  parts.push(el('span', {}, 'file ', el('b', {}, status.file || '–')));
  parts.push(el('span', {}, 'config ', el('b', {}, short(status.config_version))));
  const c = status.cluster;
  if (c) {
    // Cluster mode: which replica this page is served by, and who decides.
    const role = c.role === 'leader'
      ? 'leader'
      : c.role === 'follower'
        ? `follower of ${c.leader || '?'}`
        : 'no etcd lease: deciding nothing';
    parts.push(el('span', { class: c.role === 'unknown' ? 'bad' : '', 'data-cluster': c.role },
      'replica ', el('b', {}, c.replica), ` · ${role} · record ${c.revision}`));
  }
  const r = status.last_reload;
  if (r) {
    parts.push(
      r.ok
        ? el('span', {}, 'reloaded ', el('b', {}, ago(r.at)))
        : el('span', { class: 'bad' }, el('b', {}, 'last reload FAILED'), ' ', ago(r.at)),
    );
  }
  const nodes = status.nodes || [];
  const inSync = nodes.filter((n) => nodeInSync(n, status)).length;
  parts.push(el('span', { class: inSync < nodes.length ? 'warn' : '' }, 'Envoys ', el('b', {}, `${inSync}/${nodes.length}`), ' in sync'));
  document.getElementById('summary').replaceChildren(...parts);
  const at = state.frame ? new Date(state.frame.at) : null;
  document.getElementById('clock').textContent = at ? at.toLocaleTimeString([], { hour12: false }) : '';
}

function renderAlerts(status) {
  const alerts = [];
  const r = status.last_reload;
  if (r && !r.ok) {
    alerts.push(
      el('div', { class: 'alert bad' },
        el('b', {}, 'The deployment file was rejected'),
        status.config_version ? ` · still serving config ${short(status.config_version)}` : ' · nothing is served yet',
        el('pre', {}, r.error || ''),
      ),
    );
  }
  for (const [what, text] of [
    ['etcd', status.cluster?.etcd_problem],
    ['Not applied yet', status.cluster?.unrecorded],
    ["This replica's copy of the file", status.cluster?.local_file],
  ]) {
    if (text) alerts.push(el('div', { class: 'alert bad' }, el('b', {}, `${what}: `), text));
  }
  if (status.state_file && !status.state_file.ok) {
    alerts.push(el('div', { class: 'alert bad' }, el('b', {}, 'Runtime state file: '), status.state_file.error || status.state_file.path));
  }
  const silent = status.nodes_without_telemetry || [];
  if (silent.length) {
    alerts.push(
      el('div', { class: 'alert', 'data-alert': 'no-telemetry' },
        el('b', {}, `No telemetry from ${silent.join(', ')}`),
        ': their traffic is not in these figures (unknown, not zero). Start them from a `cutover bootstrap` with the stats sink.',
      ),
    );
  }
  const stale = (status.nodes || []).filter((n) => n.telemetry === 'stale').map((n) => n.id);
  if (stale.length) {
    alerts.push(el('div', { class: 'alert' }, el('b', {}, `Telemetry stopped from ${stale.join(', ')}`), ': left out of the figures until it speaks again.'));
  }
  const dropped = state.frame?.telemetry?.dropped;
  if (dropped && (dropped.streams || dropped.clusters || dropped.endpoints)) {
    alerts.push(el('div', { class: 'alert' }, el('b', {}, 'Telemetry over its limits'), `: refused ${dropped.streams} streams, ${dropped.clusters} clusters, ${dropped.endpoints} endpoints so far.`));
  }
  document.getElementById('alerts').replaceChildren(...alerts);
}

function splitBar(label, shares, colors, names, emptyText) {
  const known = names.filter((n) => typeof shares[n] === 'number' && shares[n] > 0);
  const bar = el('div', { class: 'bar' });
  if (!known.length) {
    bar.append(el('span', { class: 'none' }, emptyText));
  }
  for (const n of known) {
    const pct = shares[n];
    // As much of the label as the segment has room for.
    const label = pct >= 16 ? `${n} ${fmtShare(pct)}` : pct >= 7 ? fmtShare(pct) : '';
    const seg = el('div', { class: 'seg', title: `${n} ${fmtShare(pct)}` }, label);
    seg.style.flexBasis = `${pct}%`;
    colored(seg, 'background', colors[n]);
    bar.append(seg);
  }
  return [el('span', { class: 'label' }, label), bar];
}

function versionRow(service, name, colors) {
  const o = service.observed?.versions?.[name];
  const mirror = service.mirror?.version === name;
  const configured = service.split?.[name];
  const cell = (cls, text, extra) => el('td', { class: [cls, extra].filter(Boolean).join(' ') }, text);
  const unknown = (cls) => cell(cls, '–', 'unknown');
  const tr = el('tr', { 'data-version': name });
  tr.append(
    el('td', { class: 'version' }, colored(el('span', { class: 'dot' }), 'background', colors[name]), name),
    cell('configured', configured === undefined ? (mirror ? `mirror ${fmtShare(service.mirror.percent)}` : '–') : fmtShare(configured)),
  );
  if (!o) {
    tr.append(unknown('observed'), unknown('observed-1m'), unknown('rate'), unknown('errors'), unknown('p99'), unknown('inflight'), unknown('healthy'));
    return tr;
  }
  const errorClass = o.error_rate === null || o.error_rate === undefined ? 'unknown' : o.error_rate >= 1 ? 'bad' : o.error_rate > 0 ? 'warn' : '';
  let healthy = '–';
  let healthClass = 'unknown';
  if (o.endpoints !== null && o.endpoints !== undefined) {
    healthy = `${o.healthy}/${o.endpoints}` + (o.ejected ? ` · ${o.ejected} ejected` : '');
    healthClass = o.healthy < o.endpoints || o.ejected ? 'warn' : '';
  }
  tr.append(
    cell('observed', mirror ? 'copies' : fmtShare(o.share_10s)),
    cell('observed-1m', mirror ? '–' : fmtShare(o.share_1m), 'muted'),
    cell('rate', fmtRate(o.requests_per_second)),
    cell('errors', fmtPct(o.error_rate), errorClass),
    cell('p99', fmtMs(o.p99_ms), o.p99_ms === null || o.p99_ms === undefined ? 'unknown' : ''),
    cell('inflight', String(o.in_flight)),
    cell('healthy', healthy, healthClass),
  );
  return tr;
}

/** A nice round upper bound for a chart: 1, 2 or 5 times a power of ten. */
function niceMax(x, floor) {
  const v = Math.max(x * 1.15, floor);
  const p = Math.pow(10, Math.floor(Math.log10(v)));
  for (const m of [1, 2, 5, 10]) if (m * p >= v) return m * p;
  return 10 * p;
}

function chart(serviceName, metric, names, colors, limit) {
  const W = 300;
  const H = 70;
  const latest = state.points.length ? state.points[state.points.length - 1].t : 0;
  const from = latest - WINDOW_MS;
  const series = {};
  let max = 0;
  let now = null;
  for (const name of names) series[name] = [];
  for (const p of state.points) {
    if (p.t < from) continue;
    const versions = p.v[serviceName] || {};
    for (const name of names) {
      const value = versions[name]?.[metric.index];
      series[name].push([p.t, value === undefined ? null : value]);
      if (typeof value === 'number') max = Math.max(max, value);
    }
  }
  if (typeof limit === 'number') max = Math.max(max, limit);
  const top = niceMax(max, metric.floor);
  const x = (t) => ((t - from) / WINDOW_MS) * W;
  const y = (v) => H - 2 - (v / top) * (H - 6);
  const box = svg('svg', { viewBox: `0 0 ${W} ${H}`, preserveAspectRatio: 'none', 'data-metric': metric.key, role: 'img', 'aria-label': `${serviceName} ${metric.title}` });
  box.append(svg('line', { class: 'grid', x1: 0, x2: W, y1: y(top / 2), y2: y(top / 2), 'vector-effect': 'non-scaling-stroke' }));
  if (typeof limit === 'number') {
    box.append(svg('line', { class: 'limit', x1: 0, x2: W, y1: y(limit), y2: y(limit), 'vector-effect': 'non-scaling-stroke' }));
  }
  for (const name of names) {
    let d = '';
    let last = null;
    for (const [t, v] of series[name]) {
      if (v === null) {
        last = null;
        continue;
      }
      // A gap of more than a few seconds (cutover restarted, the page was away) is not joined.
      const jump = last === null || t - last > 3500;
      d += `${jump ? 'M' : 'L'}${x(t).toFixed(1)},${y(v).toFixed(1)}`;
      last = t;
    }
    if (d) {
      box.append(colored(svg('path', { class: 'line', d, 'data-version': name, 'vector-effect': 'non-scaling-stroke' }), 'stroke', colors[name]));
    }
  }
  // The newest value of the busiest version, as the chart's headline.
  for (const name of names) {
    const s = series[name];
    const v = s.length ? s[s.length - 1][1] : null;
    if (typeof v === 'number' && (now === null || v > now)) now = v;
  }
  return el('div', { class: 'chart' },
    el('div', { class: 'head' }, el('span', {}, metric.title), el('b', { class: 'now' }, now === null ? '–' : metric.format(now))),
    el('div', { class: 'plot' }, box, el('span', { class: 'scale' }, metric.format(top))),
    el('div', { class: 'axis' }, el('span', {}, '−5 min'), el('span', {}, 'now')),
  );
}

/** The operator's commands for a rollout in `state`, as the admin API allows them. */
const COMMANDS = {
  progressing: ['pause', 'promote', 'abort'],
  paused: ['resume', 'promote', 'abort'],
  rolled_back: ['resume'],
};

/**
 * Sends `command` for `service` through the admin API (the same rules: loopback, or the admin
 * token, asked for once and kept for this tab) and shows the answer in `out`.
 */
const answers = {};

async function rolloutCommand(service, command) {
  // Kept by service: the page is drawn afresh with every frame.
  const show = (text, cls) => {
    answers[service] = { text, cls };
    render();
  };
  const send = (token) => fetch(`rollouts/${encodeURIComponent(service)}/${command}`, {
    method: 'POST',
    headers: token ? { Authorization: `Bearer ${token}` } : {},
  });
  show(`${command}…`, 'muted');
  try {
    let token = sessionStorage.getItem('cutover-admin-token');
    let res = await send(token);
    if (res.status === 403) {
      token = window.prompt('Changes from this address need cutover\'s admin token (--admin-token):');
      if (token) {
        sessionStorage.setItem('cutover-admin-token', token);
        res = await send(token);
      }
    }
    show((await res.text()).trim(), res.ok ? 'ok' : 'bad');
  } catch (e) {
    show(`${command}: ${e.message}`, 'bad');
  }
}

function rolloutActions(service, r) {
  const commands = COMMANDS[r.state] || [];
  const answer = answers[service];
  if (!commands.length && !answer) return null;
  const out = el('span', { class: `action-result ${answer ? answer.cls : ''}` }, answer ? answer.text : '');
  const buttons = commands.map((c) => {
    const b = el('button', { type: 'button', 'data-command': c }, c);
    b.addEventListener('click', () => {
      if (c === 'abort' && !window.confirm(`Abort the rollout of ${service}? Every request goes back to ${r.baseline}.`)) return;
      rolloutCommand(service, c);
    });
    return b;
  });
  return el('div', { class: 'actions' }, ...buttons, out);
}

/**
 * The rollout's checks, one point each (coloured by verdict), against the analysis's limit:
 * what each step was judged on.
 */
function checksChart(r, key, title, limit, format) {
  const points = (r.checks || []).filter((c) => typeof c[key] === 'number');
  if (points.length < 2 && typeof limit !== 'number') return null;
  const W = 300;
  const H = 60;
  let max = typeof limit === 'number' ? limit : 0;
  for (const c of points) max = Math.max(max, c[key]);
  const top = niceMax(max, 1);
  const x = (i) => (points.length < 2 ? W / 2 : (i / (points.length - 1)) * (W - 8) + 4);
  const y = (v) => H - 4 - (v / top) * (H - 10);
  const box = svg('svg', { viewBox: `0 0 ${W} ${H}`, preserveAspectRatio: 'none', 'data-checks': key, role: 'img', 'aria-label': `${title} of each check` });
  if (typeof limit === 'number') {
    box.append(svg('line', { class: 'limit', x1: 0, x2: W, y1: y(limit), y2: y(limit), 'vector-effect': 'non-scaling-stroke' }));
  }
  if (points.length > 1) {
    box.append(svg('path', { class: 'line checks', d: points.map((c, i) => `${i ? 'L' : 'M'}${x(i).toFixed(1)},${y(c[key]).toFixed(1)}`).join(''), 'vector-effect': 'non-scaling-stroke' }));
  }
  points.forEach((c, i) => box.append(svg('circle', { class: `check ${c.verdict}`, cx: x(i).toFixed(1), cy: y(c[key]).toFixed(1), r: 2.5 })));
  const last = points.length ? points[points.length - 1][key] : null;
  return el('div', { class: 'chart' },
    el('div', { class: 'head' }, el('span', {}, `${title} per check`), el('b', { class: 'now' }, last === null ? '–' : format(last))),
    el('div', { class: 'plot' }, box, el('span', { class: 'scale' }, format(top))),
    el('div', { class: 'axis' }, el('span', {}, `${points.length} check(s)`), el('span', {}, 'last')),
  );
}

function rolloutSection(r, service) {
  const canary = r.kind === 'canary';
  const at = typeof r.mirror === 'number' ? `a mirror of ${fmtShare(r.mirror)}` : r.matching ? r.matching : fmtShare(r.weight);
  const what = canary ? `canary ${r.version} at ${at} · stable ${r.baseline}`
    : r.before_switch ? `switch ${r.baseline} → ${r.version} · checking ${r.version}'s preview traffic first` : `switch ${r.baseline} → ${r.version}`;
  const when = [];
  if (r.awaiting_ack) when.push('waiting for every Envoy to ACK');
  else if (typeof r.step_ends_in_seconds === 'number' && r.step_ends_in_seconds > 0) when.push(`${canary ? 'step' : r.before_switch ? 'check before the switch' : 'window'} ends in ${fmtDuration(r.step_ends_in_seconds)}`);
  else if (typeof r.step_ends_in_seconds === 'number' && r.state === 'progressing') when.push('time is up: waits for a passing check');
  if (typeof r.next_check_in_seconds === 'number' && (r.state === 'progressing')) when.push(`next check in ${fmtDuration(r.next_check_in_seconds)}`);
  const section = el('section', { class: 'rollout', 'data-state': r.state },
    el('div', { class: 'head' },
      el('span', { class: `badge ${r.state}` }, r.state.replace('_', ' ')),
      el('b', {}, what),
      r.step && r.steps ? el('span', { class: 'muted' }, `step ${r.step} of ${r.steps}`) : null,
      when.length ? el('span', { class: 'muted' }, when.join(' · ')) : null,
    ),
  );
  if (r.step && r.steps) {
    const steps = el('div', { class: 'steps', title: `step ${r.step} of ${r.steps}` });
    for (let i = 1; i <= r.steps; i++) {
      steps.append(el('span', { class: i < r.step || r.state === 'promoted' ? 'done' : i === r.step ? 'now' : '' }));
    }
    section.append(steps);
  }
  if (r.reason) section.append(el('div', { class: 'bad' }, r.reason));
  const t = r.thresholds || {};
  const charts = [
    checksChart(r, 'error_rate', 'errors', t.max_error_rate, fmtPct),
    checksChart(r, 'p99_ms', 'p99', t.max_p99_ms, fmtMs),
  ].filter(Boolean);
  if (charts.length && (r.checks || []).length) section.append(el('div', { class: 'charts checks' }, ...charts));
  const actions = rolloutActions(service, r);
  if (actions) section.append(actions);
  const c = r.last_check;
  if (c) {
    const t = r.thresholds || {};
    const err = el('span', { class: typeof t.max_error_rate === 'number' && c.error_rate > t.max_error_rate ? 'bad' : '' },
      `errors ${fmtPct(c.error_rate)}`, typeof t.max_error_rate === 'number' ? ` (max ${fmtPct(t.max_error_rate)})` : '');
    const p99 = typeof c.p99_ms === 'number'
      ? el('span', { class: typeof t.max_p99_ms === 'number' && c.p99_ms > t.max_p99_ms ? 'bad' : '' },
        `p99 ${fmtMs(c.p99_ms)}`, typeof t.max_p99_ms === 'number' ? ` (max ${fmtMs(t.max_p99_ms)})` : '')
      : null;
    section.append(
      el('div', { class: 'check' },
        'last check ', el('span', { class: 'muted' }, ago(c.at)), ' ',
        el('span', { class: `badge ${c.verdict}` }, c.verdict), ' · ',
        `${c.requests} requests`, typeof t.min_requests === 'number' ? el('span', { class: 'muted' }, ` (min ${t.min_requests})`) : null,
        typeof c.window_seconds === 'number' ? el('span', { class: 'muted' }, ` over ${c.window_seconds.toFixed(1)} s`) : null, ' · ',
        err, p99 ? ' · ' : null, p99,
        r.failed_checks ? el('span', { class: 'warn' }, ` · failed checks ${r.failed_checks}/${t.failure_limit ?? '?'}`) : null,
        c.reason ? el('span', { class: 'muted' }, ` · ${c.reason}`) : null,
      ),
    );
    const b = c.baseline;
    if (b) {
      section.append(el('div', { class: 'check muted' },
        `against ${b.version}: ${b.requests} requests · errors ${fmtPct(b.error_rate)}`,
        typeof b.p99_ms === 'number' ? ` · p99 ${fmtMs(b.p99_ms)}` : '',
        typeof b.error_rate_p_value === 'number' ? ` · errors p = ${b.error_rate_p_value.toPrecision(2)}` : '',
        typeof b.latency_p_value === 'number' ? ` · latency p = ${b.latency_p_value.toPrecision(2)}` : ''));
    }
  }
  const history = (r.history || []).slice(-4);
  if (history.length) {
    section.append(el('ol', { start: Math.max(1, (r.history.length - history.length) + 1) },
      history.map((h) => el('li', {}, h.what, el('span', { class: 'muted' }, ` · ${ago(h.at)}`)))));
  }
  if (r.advice) section.append(el('div', { class: 'advice' }, r.advice));
  return section;
}

function notes(service) {
  const items = [];
  for (const d of service.draining || []) {
    const what = d.endpoint ? `${d.endpoint} of ${d.version}` : `${d.version} (left the file)`;
    const when = d.reason === 'marked' ? 'drain: true in the file' : typeof d.removed_in_seconds === 'number' ? `removed in ${fmtDuration(d.removed_in_seconds)}` : 'removed after the drain period';
    const inFlight = typeof d.in_flight === 'number' ? `${d.in_flight} in flight` : 'in flight unknown';
    items.push(el('li', { 'data-drain': d.endpoint || d.version }, el('b', {}, 'draining '), `${what} · ${when} · ${inFlight}`));
  }
  for (const r of service.retiring || []) {
    const when = r.awaiting_ack || typeof r.retires_in_seconds !== 'number' ? 'after every Envoy ACKs the switch' : `in ${fmtDuration(r.retires_in_seconds)}`;
    items.push(el('li', {}, el('b', {}, 'retiring '), `${r.version}, kept for rollback, removed ${when}`));
  }
  return items.length ? el('ul', { class: 'notes' }, items) : null;
}

// What a service's figures count (`counts` in /status): HTTP requests, gRPC calls (failed on
// their grpc-status) or TCP connections (connect failures as errors).
function rateUnit(service) {
  return { calls: 'calls/s', connections: 'conn/s' }[service.counts] || 'req/s';
}

function serviceCard(name, service) {
  const names = versionsOf(service);
  const colors = versionColors(names);
  const o = service.observed;
  const card = el('article', { class: 'service', 'data-service': name },
    el('header', {},
      el('h2', {}, name),
      el('span', { class: 'tag' }, service.strategy),
      service.rules ? el('span', { class: 'tag' }, `${service.rules} rule${service.rules > 1 ? 's' : ''}`) : null,
      el('span', { class: service.synced ? 'sync' : 'sync pending' }, service.synced ? '✓ in sync' : '… Envoys converging'),
      service.counts === 'connections' ? el('span', { class: 'tag' }, 'tcp') : null,
      el('span', { class: 'total' }, o ? fmtRate(o.requests_per_second) : '–', el('small', {}, rateUnit(service))),
    ),
  );
  const observed = {};
  const observed1m = {};
  for (const [v, f] of Object.entries(o?.versions || {})) {
    if (typeof f.share_10s === 'number') observed[v] = f.share_10s;
    if (typeof f.share_1m === 'number') observed1m[v] = f.share_1m;
  }
  card.append(el('div', { class: 'split' },
    splitBar('configured', service.split || {}, colors, names, 'no traffic configured'),
    splitBar('observed 10 s', observed, colors, names, o ? 'no requests in the last 10 s' : 'unknown: no Envoy sends telemetry'),
  ));
  card.append(el('table', { class: 'versions' },
    el('thead', {}, el('tr', {}, ['version', 'split', 'observed', '1 min', rateUnit(service), 'errors', 'p99', 'in flight', 'healthy'].map((h) => el('th', {}, h)))),
    el('tbody', {}, names.map((v) => versionRow(service, v, colors))),
  ));
  const t = service.rollout?.thresholds || {};
  card.append(el('div', { class: 'charts' },
    chart(name, METRICS[0], names, colors),
    chart(name, METRICS[1], names, colors, t.max_error_rate),
    chart(name, METRICS[2], names, colors, t.max_p99_ms),
  ));
  if (service.rollout) card.append(rolloutSection(service.rollout, name));
  // Earlier rollouts, newest first: how each ended (the whole story: `cutover status NAME --history`).
  const past = (service.past_rollouts || []).slice(0, 3);
  if (past.length) {
    card.append(el('details', { class: 'past' },
      el('summary', {}, `${service.past_rollouts.length} earlier rollout(s)`),
      el('ul', {}, past.map((p) => el('li', {},
        `${p.kind === 'canary' ? `canary ${p.version}` : `switch to ${p.version}`}: ${p.state.replace('_', ' ')}`,
        p.reason ? el('span', { class: 'muted' }, ` · ${p.reason}`) : null,
        el('span', { class: 'muted' }, ` · started ${ago(p.started)}`))))));
  }
  const n = notes(service);
  if (n) card.append(n);
  return card;
}

function renderServices(status) {
  const main = document.getElementById('services');
  const names = Object.keys(status.services || {}).sort();
  if (!names.length) {
    main.replaceChildren(el('p', { class: 'empty' }, status.config_version ? 'No services in the deployment file.' : 'No valid deployment file is loaded yet.'));
    return;
  }
  main.replaceChildren(...names.map((n) => serviceCard(n, status.services[n])));
}

/**
 * Whether an Envoy holds its current config: its group's version with node groups (`groups`
 * in /status), the served version without.
 */
function nodeInSync(n, status) {
  const current = status.groups?.[n.group]?.config_version ?? status.config_version;
  return n.in_sync && (!current || n.config_version === current);
}

function renderEnvoys(status) {
  const section = document.getElementById('envoys');
  const nodes = status.nodes || [];
  const streams = new Map((state.frame?.telemetry?.nodes || []).map((n) => [n.id, n]));
  if (!nodes.length) {
    section.replaceChildren(el('h2', {}, 'Envoys'), el('p', { class: 'empty' }, 'No Envoy connected.'));
    return;
  }
  const types = ['cds', 'eds', 'lds', 'rds'];
  const rows = [];
  for (const n of nodes) {
    const synced = nodeInSync(n, status);
    const held = types.filter((t) => n.types?.[t]).map((t) => {
      const s = n.types[t];
      return el('span', { class: s.pending ? 'warn' : '' }, `${t} ${short(s.acked)}${s.pending ? ` → ${short(s.pending)}` : ''}  `);
    });
    const tel = n.telemetry;
    const stream = streams.get(n.id);
    const telText = tel === 'reporting' ? `reporting${stream?.stats_sink ? ` · ${fmtNumber(stream.stats_sink.bytes_per_second / 1024)} KB/s` : ''}` : tel || '–';
    const nacks = types.filter((t) => n.types?.[t]?.last_nack);
    rows.push(el('tr', { 'data-node': n.id },
      el('td', {}, el('b', {}, n.id || '(no id)')),
      el('td', {}, n.cluster || '–'),
      el('td', { class: n.group?.startsWith('(') ? 'warn' : '' }, n.group || '–'),
      el('td', {}, n.address || '–'),
      el('td', {}, n.stream),
      el('td', { title: n.connected_since }, ago(n.connected_since)),
      el('td', { class: synced ? 'ok' : 'warn' }, synced ? '✓ in sync' : 'converging'),
      el('td', { class: 'versions' }, held.length ? held : el('span', { class: 'muted' }, 'nothing subscribed yet')),
      el('td', { class: tel === 'reporting' ? 'ok' : 'warn' }, telText),
      el('td', { class: nacks.length ? 'bad' : 'muted' }, nacks.length ? nacks.map((t) => `${t} ${short(n.types[t].last_nack.version)} ${ago(n.types[t].last_nack.at)}`).join(', ') : 'none'),
    ));
    for (const t of nacks) {
      const nack = n.types[t].last_nack;
      rows.push(el('tr', { class: 'nack' }, el('td', {}), el('td', { colspan: 9 }, `${t} rejected ${short(nack.version)}: ${nack.error}`)));
    }
  }
  section.replaceChildren(
    el('h2', {}, `Envoys (${nodes.length})`),
    el('table', {},
      el('thead', {}, el('tr', {}, ['node', 'cluster', 'group', 'address', 'stream', 'connected', 'config', 'ACKed (→ pending)', 'telemetry', 'last NACK'].map((h) => el('th', {}, h)))),
      el('tbody', {}, rows),
    ),
  );
}

function render() {
  const f = state.frame;
  if (!f) return;
  // Someone is selecting text (an error to copy): leave the page still until they are done.
  const selection = document.getSelection();
  if (selection && !selection.isCollapsed && selection.toString().trim()) return;
  renderSummary(f.status);
  renderAlerts(f.status);
  renderServices(f.status);
  renderEnvoys(f.status);
  document.body.dataset.updated = f.at;
}

// --- the event stream -------------------------------------------------------------------------

function setConnection(s, text) {
  state.connection = s;
  const node = document.getElementById('connection');
  node.dataset.state = s;
  node.textContent = text || s;
  if (s === 'live') delete document.body.dataset.stale;
  else if (state.frame) document.body.dataset.stale = '';
}

function addPoint(point) {
  const last = state.points[state.points.length - 1];
  if (last && point.t <= last.t) return;
  state.points.push(point);
  const from = point.t - WINDOW_MS - 5000;
  while (state.points.length && state.points[0].t < from) state.points.shift();
}

function connect() {
  const events = new EventSource('events');
  events.addEventListener('history', (e) => {
    const history = JSON.parse(e.data);
    state.points = [];
    for (const p of history.points || []) addPoint(p);
  });
  events.onmessage = (e) => {
    const frame = JSON.parse(e.data);
    state.frame = frame;
    state.lastFrame = Date.now();
    if (frame.point) addPoint(frame.point);
    setConnection('live');
    render();
  };
  events.onopen = () => setConnection('live');
  // EventSource reconnects by itself; the page says so meanwhile.
  events.onerror = () => setConnection('reconnecting', 'reconnecting…');
}

setInterval(() => {
  if (state.connection === 'live' && state.frame && Date.now() - state.lastFrame > STALE_MS) {
    setConnection('stale', `no update for ${fmtDuration((Date.now() - state.lastFrame) / 1000)}`);
  }
}, 1000);

connect();
