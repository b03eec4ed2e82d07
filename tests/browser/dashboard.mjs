// Drives cutover's dashboard in a real headless Chromium (Debian's, through Playwright), for
// tests/browser_dashboard.rs, which starts cutover, Envoy and the upstreams and decides what to check.
//
//   node tests/browser/dashboard.mjs http://127.0.0.1:PORT/
//
// Opens the page, waits until it shows a service, prints {"ready": ...}, then answers commands
// read from stdin, one per line, each with one JSON line on stdout:
//   read             {"state": what the page shows: services, versions, charts, Envoys, ...}
//   screenshot PATH  {"screenshot": PATH}
//   click SERVICE COMMAND
//                    clicks the rollout button of SERVICE (accepting a confirmation), then
//                    {"clicked": COMMAND}
//   quit             (or end of input) closes the browser and exits 0
// Anything that goes wrong prints {"error": "..."} and exits 1.

import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { chromium } from 'playwright-core';

const url = process.argv[2];
const executablePath = process.env.CHROMIUM_BIN || '/usr/bin/chromium';
// This machine's network is closed: Chromium's own background connections are turned off, and
// a fresh profile keeps every run the same.
const ARGS = [
  '--no-sandbox',
  '--disable-gpu',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
  '--disable-quic',
  '--no-first-run',
];

const say = (value) => process.stdout.write(JSON.stringify(value) + '\n');

/** What the page shows, read from the DOM as a person would read it. */
function pageState() {
  const text = (node) => (node ? node.textContent.trim() : null);
  const services = {};
  for (const card of document.querySelectorAll('[data-service]')) {
    const versions = {};
    for (const row of card.querySelectorAll('tr[data-version]')) {
      const cell = (name) => text(row.querySelector('td.' + name));
      versions[row.dataset.version] = {
        configured: cell('configured'),
        observed: cell('observed'),
        observed_1m: cell('observed-1m'),
        rate: cell('rate'),
        errors: cell('errors'),
        p99: cell('p99'),
        in_flight: cell('inflight'),
        healthy: cell('healthy'),
      };
    }
    const charts = {};
    for (const chart of card.querySelectorAll('svg[data-metric]')) {
      charts[chart.dataset.metric] = Object.fromEntries(
        [...chart.querySelectorAll('path[data-version]')].map((p) => [
          p.dataset.version,
          (p.getAttribute('d').match(/[ML]/g) || []).length,
        ]),
      );
    }
    const bar = (i) =>
      [...card.querySelectorAll('.split .bar')[i].querySelectorAll('.seg')].map((s) => s.title);
    services[card.dataset.service] = {
      strategy: text(card.querySelector('header .tag')),
      total: text(card.querySelector('header .total')),
      configured_bar: bar(0),
      observed_bar: bar(1),
      versions,
      charts,
      rollout: text(card.querySelector('.rollout')),
      rollout_state: card.querySelector('.rollout')?.dataset.state || null,
      actions: [...card.querySelectorAll('.rollout .actions button')].map((b) => b.dataset.command),
      action_result: text(card.querySelector('.rollout .action-result')),
      check_points: Object.fromEntries(
        [...card.querySelectorAll('.rollout svg[data-checks]')].map((s) => [
          s.dataset.checks,
          [...s.querySelectorAll('circle.check')].map((c) => c.getAttribute('class').split(' ')[1]),
        ]),
      ),
    };
  }
  const envoys = {};
  for (const row of document.querySelectorAll('tr[data-node]')) {
    envoys[row.dataset.node] = [...row.cells].map((c) => c.textContent.trim());
  }
  return {
    connection: document.getElementById('connection').dataset.state,
    updated: document.body.dataset.updated || null,
    summary: text(document.getElementById('summary')),
    alerts: [...document.querySelectorAll('#alerts .alert')].map((a) => a.textContent.trim()),
    services,
    envoys,
  };
}

const profile = mkdtempSync(join(tmpdir(), 'cutover-chromium-'));
let context;
try {
  const started = Date.now();
  context = await chromium.launchPersistentContext(profile, {
    executablePath,
    headless: true,
    args: ARGS,
    viewport: { width: 1600, height: 1000 },
  });
  const page = context.pages()[0] || (await context.newPage());
  const problems = [];
  const requests = new Set();
  page.on('console', (m) => {
    if (m.type() === 'error' || m.type() === 'warning') problems.push(`console ${m.type()}: ${m.text()}`);
  });
  page.on('pageerror', (e) => problems.push(`page error: ${e.message}`));
  // An abort asks "are you sure?": the test's operator is.
  page.on('dialog', (d) => d.accept());
  page.on('request', (r) => requests.add(r.url()));
  page.on('requestfailed', (r) => {
    // The event stream is cut when the page closes; anything else failing is a problem.
    if (!r.url().endsWith('/events')) problems.push(`request failed: ${r.url()} ${r.failure()?.errorText}`);
  });
  const response = await page.goto(url, { waitUntil: 'load' });
  await page.waitForSelector('[data-service]', { timeout: 15000 });
  say({
    ready: true,
    ms: Date.now() - started,
    status: response.status(),
    csp: response.headers()['content-security-policy'] || null,
  });

  const lines = createInterface({ input: process.stdin });
  for await (const line of lines) {
    const [command, ...rest] = line.trim().split(' ');
    if (command === 'read') {
      say({ state: await page.evaluate(pageState), problems, requests: [...requests] });
    } else if (command === 'screenshot') {
      await page.screenshot({ path: rest.join(' '), fullPage: true });
      say({ screenshot: rest.join(' ') });
    } else if (command === 'click') {
      const [service, action] = rest;
      await page.click(`[data-service="${service}"] .rollout button[data-command="${action}"]`, { timeout: 5000 });
      say({ clicked: action });
    } else if (command === 'quit') {
      break;
    } else {
      throw new Error(`unknown command ${JSON.stringify(line)}`);
    }
  }
  await context.close();
  rmSync(profile, { recursive: true, force: true });
  process.exit(0);
} catch (e) {
  say({ error: String(e && e.stack ? e.stack : e) });
  if (context) await context.close().catch(() => {});
  rmSync(profile, { recursive: true, force: true });
  process.exit(1);
}
