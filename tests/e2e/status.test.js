// The status page on the admin port, in headless Chromium: it loads with no console error,
// shows a backend going down within one refresh after its process is killed, and reads on a
// laptop and a phone (screenshots in target/: look at them).
'use strict';

const { test, before, after } = require('node:test');
const assert = require('node:assert/strict');
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');
const { spawn } = require('node:child_process');
const { chromium } = require('playwright-core');
const { Wssbridge, freePort, WAIT_MS } = require('./harness');

const CHROMIUM = process.env.CHROMIUM || '/usr/bin/chromium';
const SHOTS = path.resolve(__dirname, '..', '..', 'target');

/// A backend in its own process, so the test can kill it as a crash would.
async function backendProcess() {
  const port = await freePort();
  const child = spawn(process.execPath, ['-e',
    `require('http').createServer((q, r) => r.end('ok')).listen(${port}, '127.0.0.1', () => console.log('up'))`],
  { stdio: ['ignore', 'pipe', 'inherit'] });
  await new Promise((resolve) => child.stdout.once('data', resolve));
  return { child, addr: `127.0.0.1:${port}` };
}

let a;
let b;
let bridge;
let browser;
let admin;

before(async () => {
  a = await backendProcess();
  b = await backendProcess();
  bridge = await Wssbridge.start([`/=${a.addr},${b.addr}`],
    ['--admin', '127.0.0.1:0', '--health-check', 'tcp', '--health-interval', '1s']);
  const line = await bridge.waitFor((e) => String(e.message).startsWith('admin:') && e.addr, 'admin line');
  admin = `http://${line.addr}`;
  browser = await chromium.launch({
    executablePath: CHROMIUM,
    headless: true,
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--no-first-run'],
  });
});

after(async () => {
  await browser?.close();
  await bridge?.stop();
  a?.child.kill('SIGKILL');
  b?.child.kill('SIGKILL');
});

test('the status page shows a killed backend down within one refresh, without console errors', async () => {
  const page = await browser.newPage({ viewport: { width: 1280, height: 800 } });
  const errors = [];
  page.on('console', (m) => { if (m.type() === 'error') errors.push(m.text()); });
  page.on('pageerror', (e) => errors.push(String(e)));
  await page.goto(`${admin}/`);
  assert.match(await page.title(), /wssbridge status/);
  assert.equal(await page.locator('tr.backend.up').count(), 2);
  await page.screenshot({ path: path.join(SHOTS, 'status-laptop.png'), fullPage: true });

  b.child.kill('SIGKILL');
  // Down after 3 failed checks a second apart; the page refreshes every 5 s.
  const down = page.locator('tr.backend.down');
  await down.first().waitFor({ timeout: 3000 + 5000 + 4000 });
  assert.match(await down.first().innerText(), new RegExp(b.addr.replace(/\./g, '\\.')));
  assert.match(await down.first().innerText(), /health check/);
  assert.equal(await page.locator('tr.backend.up').count(), 1);
  await page.screenshot({ path: path.join(SHOTS, 'status-laptop-down.png'), fullPage: true });

  const phone = await browser.newPage({ viewport: { width: 390, height: 844 }, deviceScaleFactor: 2 });
  phone.on('pageerror', (e) => errors.push(String(e)));
  await phone.goto(`${admin}/`);
  await phone.screenshot({ path: path.join(SHOTS, 'status-phone.png'), fullPage: true });
  const overflow = await phone.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
  assert.ok(overflow <= 1, `the page is ${overflow}px wider than a phone`);
  assert.deepEqual(errors, []);
});
