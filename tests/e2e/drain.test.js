// socket.io clients through a binary upgrade (SIGUSR2): when the old process's grace ends,
// every client gets a clean close (1001 Going Away, not a transport error), reconnects within
// 2 seconds of it, to the new process, and the reconnects are spread over the jitter window.
'use strict';

const { test } = require('node:test');
const assert = require('node:assert/strict');
const { startChat } = require('./chat-server');
const { Wssbridge, certs, once, WAIT_MS } = require('./harness');

const CLIENTS = 30;
const GRACE_MS = 1000;

/// Waits until `pid` has exited (it is not our child once its parent has gone).
async function exited(pid) {
  const deadline = Date.now() + WAIT_MS;
  for (;;) {
    try { process.kill(pid, 0); } catch { return; }
    assert.ok(Date.now() < deadline, `process ${pid} did not exit`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

test('a binary upgrade closes every socket.io client with 1001; each reconnects within 2 s', async () => {
  const chat = await startChat(4);
  const backend = `127.0.0.1:${chat.port}`;
  const bridge = await Wssbridge.start([`/socket.io/=${backend}`],
    ['--shutdown-grace', `${GRACE_MS}ms`]);
  const { io } = require('socket.io-client');
  const clients = [];
  let newPid;
  try {
    for (let i = 0; i < CLIENTS; i++) {
      const socket = io(bridge.origin, {
        ca: certs().ca, forceNew: true, transports: ['websocket'],
        // Reconnect at once: the spread measured is wssbridge's, not the client's backoff.
        reconnectionDelay: 50, randomizationFactor: 0,
      });
      const client = { socket, closes: [], connects: [] };
      socket.on('connect', () => {
        client.connects.push(Date.now());
        // The engine's WebSocket (the `ws` package): its close event has the close code.
        socket.io.engine.transport.ws.addEventListener('close', (e) => {
          client.closes.push({ code: e.code, at: Date.now() });
        });
      });
      clients.push(client);
      await once(socket, 'connect');
    }

    bridge.child.kill('SIGUSR2');
    const ready = await bridge.waitFor((e) => typeof e.message === 'string'
      && e.message.startsWith('upgrade: the new process is ready'), 'the new process ready');
    newPid = Number(ready.pid);
    assert.ok(newPid > 0, JSON.stringify(ready));
    const readyAt = Date.now();

    // Every client is closed once and connected again.
    const deadline = Date.now() + WAIT_MS;
    while (clients.some((c) => c.connects.length < 2)) {
      assert.ok(Date.now() < deadline,
        `not all reconnected: ${clients.filter((c) => c.connects.length < 2).length} left`);
      await new Promise((r) => setTimeout(r, 50));
    }
    const closes = clients.map((c) => c.closes[0]);
    for (const [i, c] of clients.entries()) {
      assert.equal(c.closes.length, 1, `client ${i} closed once`);
      assert.equal(c.closes[0].code, 1001, `client ${i}: a clean 1001 close, not ${c.closes[0].code}`);
      const after = c.connects[1] - c.closes[0].at;
      assert.ok(after <= 2000, `client ${i} reconnected ${after} ms after its close`);
      assert.ok(c.closes[0].at - readyAt >= GRACE_MS - 100, `client ${i} closed before the grace ended`);
    }
    const times = closes.map((c) => c.at);
    const spread = Math.max(...times) - Math.min(...times);
    assert.ok(spread >= 400, `${CLIENTS} closes within ${spread} ms: not spread`);
    assert.ok(spread <= 2500, `closes spread over ${spread} ms`);

    // The old process has exited cleanly; the chat goes on through the new one.
    assert.equal(await new Promise((r) => (bridge.child.exitCode !== null
      ? r(bridge.child.exitCode) : bridge.child.once('exit', r))), 0);
    const [a, b] = [clients[0].socket, clients[1].socket];
    const got = once(b, 'chat');
    a.emit('chat', 'after the upgrade');
    assert.deepEqual(await got, ['after the upgrade']);
    await bridge.waitFor((e) => e.message === 'connection'
      && e.outcome === 'websocket closed with 1001 going away: shutting down', 'a 1001 summary');
  } finally {
    for (const c of clients) c.socket.close();
    if (newPid) {
      try { process.kill(newPid, 'SIGTERM'); } catch { /* gone */ }
      await exited(newPid);
    }
    if (bridge.child.exitCode === null) bridge.child.kill('SIGKILL');
    await chat.close();
  }
});
