// A real browser (Debian's Chromium, headless, driven by playwright-core) opens the socket.io
// chat through wssbridge in two tabs: a message sent in one appears in the other. From the
// browser's side it checks what a person would check in the developer tools: the page came
// over TLS with ALPN http/1.1, and the WebSocket request got 101 with Upgrade/Connection.
'use strict';

const { test, before, after } = require('node:test');
const assert = require('node:assert/strict');
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');
const { chromium } = require('playwright-core');
const { startChat } = require('./chat-server');
const { Wssbridge, serverSpkiHash, WAIT_MS } = require('./harness');

const CHROMIUM = process.env.CHROMIUM || '/usr/bin/chromium';
const FLAGS = [
  '--headless', '--no-sandbox', '--disable-gpu', '--no-first-run', '--disable-quic',
  '--disable-background-networking', '--disable-component-update', '--disable-sync',
];

let chat;
let bridge;
let context;
let profile;

before(async () => {
  chat = await startChat(4);
  const backend = `127.0.0.1:${chat.port}`;
  bridge = await Wssbridge.start([`/socket.io/=${backend}`, `/=${backend}`]);
  profile = fs.mkdtempSync(path.join(os.tmpdir(), 'wssbridge-chromium-'));
  context = await chromium.launchPersistentContext(profile, {
    executablePath: CHROMIUM,
    headless: true,
    // Trust exactly the development server key, as a user who imported the CA would.
    args: [...FLAGS, `--ignore-certificate-errors-spki-list=${serverSpkiHash()}`],
  });
  context.setDefaultTimeout(WAIT_MS);
});

after(async () => {
  await context?.close();
  if (profile) fs.rmSync(profile, { recursive: true, force: true });
  await bridge?.stop();
  await chat?.close();
});

/// Opens the chat in a new tab, recording what the DevTools network panel would show.
async function openTab(origin = bridge.origin) {
  const page = await context.newPage();
  const seen = { document: null, sockets: new Map() };
  const cdp = await context.newCDPSession(page);
  await cdp.send('Network.enable');
  cdp.on('Network.responseReceived', (e) => {
    if (e.type === 'Document') seen.document = e.response;
  });
  cdp.on('Network.webSocketCreated', (e) => seen.sockets.set(e.requestId, { url: e.url }));
  cdp.on('Network.webSocketWillSendHandshakeRequest', (e) => {
    seen.sockets.get(e.requestId).request = e.request.headers;
  });
  cdp.on('Network.webSocketHandshakeResponseReceived', (e) => {
    seen.sockets.get(e.requestId).response = e.response;
  });
  await page.goto(`${origin}/`);
  // Engine.IO starts on long-polling and upgrades: wait for the upgrade to finish.
  await page.waitForFunction(() => window.chatSocket?.connected
    && window.chatSocket.io.engine?.transport?.name === 'websocket');
  return { page, seen };
}

function header(headers, name) {
  const key = Object.keys(headers || {}).find((k) => k.toLowerCase() === name);
  return key === undefined ? undefined : headers[key];
}

test('two tabs chat through wssbridge over wss, and DevTools shows 101 over TLS with http/1.1', async () => {
  const one = await openTab();
  const two = await openTab();

  await one.page.fill('#input', 'hello from tab one');
  await one.page.click('button');
  await two.page.locator('#messages li', { hasText: 'hello from tab one' }).waitFor();
  await two.page.fill('#input', 'and back from tab two');
  await two.page.click('button');
  await one.page.locator('#messages li', { hasText: 'and back from tab two' }).waitFor();

  for (const { seen } of [one, two]) {
    assert.equal(seen.document.protocol, 'http/1.1', 'page served over ALPN http/1.1');
    assert.match(seen.document.securityDetails.protocol, /^TLS 1\.[23]$/);
    const sockets = [...seen.sockets.values()];
    const ws = sockets.find((s) => /^wss:\/\/localhost:\d+\/socket\.io\/\?EIO=4&transport=websocket/.test(s.url));
    assert.ok(ws, `a wss:// socket.io WebSocket: ${JSON.stringify(sockets)}`);
    assert.equal(ws.response.status, 101);
    assert.equal(header(ws.request, 'upgrade').toLowerCase(), 'websocket');
    assert.match(header(ws.request, 'connection'), /upgrade/i);
    assert.equal(header(ws.response.headers, 'upgrade').toLowerCase(), 'websocket');
    assert.match(header(ws.response.headers, 'connection'), /upgrade/i);
  }
  // The backend saw the same upgrade, and wssbridge carried it.
  assert.ok(chat.upgrades.filter((h) => h.upgrade === 'websocket' && /upgrade/i.test(h.connection)).length >= 2);
  await one.page.close();
  await two.page.close();
  // Closing a tab resets its sockets: wssbridge logs that as the client aborting the tunnel.
  await bridge.waitFor((e) => e.message === 'connection' && e.path.includes('transport=websocket')
    && /^websocket (closed|aborted by client)/.test(e.outcome) && e.bytes_down > 0,
  'a browser websocket tunnel');
});

// --balance cookie (issue #41) in a real browser: three chat processes without an adapter,
// so the two tabs chat only if every request of both reaches one process. The first
// response under /socket.io/ (the client script) sets the affinity cookie; both tabs share
// the browser's cookie jar, so their polls and WebSocket upgrades carry it.
test('two tabs chat over polling then WebSocket across three processes, held together by the affinity cookie', async () => {
  const chats = [await startChat(4), await startChat(4), await startChat(4)];
  const backends = chats.map((c) => `127.0.0.1:${c.port}`);
  const sticky = await Wssbridge.start(
    [`/socket.io/=${backends.join(',')}`, `/=${backends[0]}`],
    ['--balance', '/socket.io/=cookie', '--shutdown-grace', '1s'],
  );
  try {
    const one = await openTab(sticky.origin);
    const two = await openTab(sticky.origin);
    await one.page.fill('#input', 'sticky hello');
    await one.page.click('button');
    await two.page.locator('#messages li', { hasText: 'sticky hello' }).waitFor();
    // The cookie's Path is the route's: it is sent with /socket.io/ requests only.
    const cookie = (await context.cookies(`${sticky.origin}/socket.io/`)).find((c) => c.name === 'wssbridge');
    assert.equal((await context.cookies(`${sticky.origin}/`)).filter((c) => c.name === 'wssbridge').length, 0);
    assert.ok(cookie, 'the affinity cookie is in the browser');
    assert.equal(cookie.path, '/socket.io/');
    assert.equal(cookie.secure, true);
    assert.equal(cookie.httpOnly, true);
    assert.equal(cookie.sameSite, 'Lax');
    assert.equal(cookie.expires, -1, 'a session cookie');
    await one.page.close();
    await two.page.close();
    await sticky.waitFor((e) => e.message === 'connection' && e.path?.includes('transport=websocket'),
      'a WebSocket tunnel ended');
    const used = new Set(sticky.connections()
      .filter((e) => e.path?.startsWith('/socket.io/?') && e.backend && e.backend !== '-')
      .map((e) => e.backend));
    assert.equal(used.size, 1, `every socket.io request on one process: ${[...used]}`);
    await context.clearCookies();
  } finally {
    await sticky.stop();
    await Promise.all(chats.map((c) => c.close()));
  }
});

// Issue #42: a tab that leaves the page closes its WebSocket with the browser's own close
// frame, 1001 Going Away; the tunnel's log line says the client ended it, and how.
test('a tab that leaves the page closes its WebSocket with 1001, and the log line says so', async () => {
  const start = bridge.lines.length;
  const tab = await openTab();
  await tab.page.goto('about:blank');
  const line = await bridge.waitFor((e) => e.message === 'connection' && e.ended_by
    && e.path?.includes('transport=websocket') && bridge.lines.indexOf(e) >= start,
  'the tab\'s WebSocket line');
  assert.equal(line.ended_by, 'client_close', JSON.stringify(line));
  assert.equal(line.close_client, 1001, JSON.stringify(line));
  assert.ok(line.messages_up > 0 && line.messages_down > 0, JSON.stringify(line));
  await tab.page.close();
});
