// Route confinement in a real browser: a page served by one route loads a script, an image,
// fetches and a WebSocket from other routes. Chromium reuses keep-alive connections for
// them; wssbridge must never let a request reach a backend its path does not route to, and
// nothing may fail (a browser retries a request whose reused connection was closed).
'use strict';

const { test, before, after } = require('node:test');
const assert = require('node:assert/strict');
const fs = require('node:fs');
const http = require('node:http');
const os = require('node:os');
const path = require('node:path');
const { WebSocketServer } = require('ws');
const { chromium } = require('playwright-core');
const { Wssbridge, serverSpkiHash, WAIT_MS } = require('./harness');

const PAGE = `<!doctype html><html><head><meta charset="utf-8"><title>confinement</title>
<script src="/b/app.js"></script></head><body><img id="img" src="/c/pixel.svg">
<script>
window.results = (async () => {
  const out = { script: window.fromB };
  const img = document.getElementById('img');
  await new Promise((ok, bad) => img.complete ? ok() : (img.onload = ok, img.onerror = bad));
  out.img = img.naturalWidth;
  for (const p of ['/b/one', '/c/two', '/three', '/b/four', '/c/five', '/six']) {
    out[p] = await (await fetch(p)).text();
  }
  out.ws = await new Promise((ok, bad) => {
    const ws = new WebSocket('wss://' + location.host + '/ws/echo');
    ws.onopen = () => ws.send('ping');
    ws.onmessage = (e) => { ok(e.data); ws.close(); };
    ws.onerror = () => bad(new Error('websocket failed'));
  });
  return out;
})();
</script></body></html>`;

/// A backend that answers every request with its name and records the paths it saw.
function backend(name, handler) {
  return new Promise((resolve) => {
    const paths = [];
    const server = http.createServer((req, res) => {
      paths.push(req.url);
      handler ? handler(req, res) : res.end(name);
    });
    server.keepAliveTimeout = 30000;
    server.listen(0, '127.0.0.1', () => resolve({ name, paths, server, port: server.address().port }));
  });
}

let backends;
let bridge;
let context;
let profile;

before(async () => {
  const site = await backend('A', (req, res) => {
    if (req.url === '/') {
      res.setHeader('Content-Type', 'text/html');
      res.end(PAGE);
    } else res.end('A');
  });
  const scripts = await backend('B', (req, res) => {
    if (req.url === '/b/app.js') {
      res.setHeader('Content-Type', 'text/javascript');
      res.end("window.fromB = 'B';");
    } else res.end('B');
  });
  const images = await backend('C', (req, res) => {
    if (req.url === '/c/pixel.svg') {
      res.setHeader('Content-Type', 'image/svg+xml');
      res.end('<svg xmlns="http://www.w3.org/2000/svg" width="3" height="3"><rect width="3" height="3"/></svg>');
    } else res.end('C');
  });
  const sockets = await backend('D');
  new WebSocketServer({ server: sockets.server }).on('connection', (ws, req) => {
    sockets.paths.push(req.url);
    ws.on('message', (m) => ws.send(`D:${m}`));
  });
  backends = { site, scripts, images, sockets };
  bridge = await Wssbridge.start([
    `/=127.0.0.1:${site.port}`,
    `/b/=127.0.0.1:${scripts.port}`,
    `/c/=127.0.0.1:${images.port}`,
    `/ws/=127.0.0.1:${sockets.port}`,
  ]);
  profile = fs.mkdtempSync(path.join(os.tmpdir(), 'wssbridge-chromium-'));
  context = await chromium.launchPersistentContext(profile, {
    executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
    headless: true,
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--no-first-run', '--disable-quic',
      '--disable-background-networking', '--disable-component-update', '--disable-sync',
      `--ignore-certificate-errors-spki-list=${serverSpkiHash()}`],
  });
  context.setDefaultTimeout(WAIT_MS);
});

after(async () => {
  await context?.close();
  if (profile) fs.rmSync(profile, { recursive: true, force: true });
  await bridge?.stop();
  for (const b of Object.values(backends || {})) b.server.closeAllConnections?.(), b.server.close();
});

test('every resource of a page comes from the backend its route names, and none fails', async () => {
  const page = await context.newPage();
  const failed = [];
  page.on('requestfailed', (r) => failed.push(`${r.url()}: ${r.failure()?.errorText}`));
  await page.goto(`${bridge.origin}/`);
  const results = await page.evaluate(() => window.results);
  assert.deepEqual(results, {
    script: 'B', img: 3,
    '/b/one': 'B', '/c/two': 'C', '/three': 'A', '/b/four': 'B', '/c/five': 'C', '/six': 'A',
    ws: 'D:ping',
  });
  assert.deepEqual(failed, []);
  // No backend ever saw a path that routes elsewhere.
  const { site, scripts, images, sockets } = backends;
  assert.ok(site.paths.every((p) => !/^\/(b|c|ws)\//.test(p)), `site saw ${site.paths}`);
  assert.ok(scripts.paths.every((p) => p.startsWith('/b/')), `scripts saw ${scripts.paths}`);
  assert.ok(images.paths.every((p) => p.startsWith('/c/')), `images saw ${images.paths}`);
  assert.ok(sockets.paths.every((p) => p.startsWith('/ws/')), `sockets saw ${sockets.paths}`);
  await page.close();
  // The browser did reuse connections across routes, and wssbridge closed them in time.
  await bridge.waitFor((e) => e.message === 'connection'
    && e.outcome === 'http closed before a request for another route', 'a confinement close');
});
