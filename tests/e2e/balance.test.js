// socket.io on every core: three real socket.io v4 processes (no adapter) behind wssbridge.
// Clients come from 30 source addresses (127.0.0.2 … 127.0.0.31: all of 127/8 is loopback on
// Linux). With ip-hash, every client's requests reach one process, so long-polling works; with
// round-robin it does not (which shows the first test can fail). A killed process's clients
// move to the others and come back once its health check passes; nobody else moves.
'use strict';

const { describe, test, before, after } = require('node:test');
const assert = require('node:assert/strict');
const https = require('node:https');
const { io } = require('socket.io-client');
const { Wssbridge, certs, freePort, WAIT_MS } = require('./harness');
const { startNode, stopNode } = require('./cluster');

const ADDRESSES = Array.from({ length: 30 }, (_, i) => `127.0.0.${i + 2}`);

/// A socket.io client from `localAddress`. No keep-alive, so every poll is a connection of
/// its own and must be balanced on its own: the hard case for stickiness.
function client(origin, localAddress, opts = {}) {
  const ca = certs().ca;
  const agent = new https.Agent({ localAddress, ca, keepAlive: false });
  return io(origin, { ca, agent, forceNew: true, reconnection: false, ...opts });
}

function within(promise, what, ms = WAIT_MS) {
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`timed out: ${what}`)), ms);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

function connected(socket, what) {
  return within(new Promise((resolve, reject) => {
    socket.once('connect', resolve);
    socket.once('connect_error', (e) => reject(new Error(`${what}: ${e.message}`)));
  }), what);
}

function whoami(socket) {
  return within(socket.timeout(WAIT_MS).emitWithAck('whoami'), 'whoami');
}

/// Connects from `address`, asks `whoami` three times, and returns the ports answered.
async function ports(origin, address, opts) {
  const socket = client(origin, address, opts);
  try {
    await connected(socket, `${address} ${JSON.stringify(opts)}`);
    if (!opts.transports) {
      await within(new Promise((resolve) => {
        if (socket.io.engine.transport.name === 'websocket') return resolve();
        socket.io.engine.once('upgrade', resolve);
      }), `${address} upgrade`);
    }
    const answers = [];
    for (let i = 0; i < 3; i++) answers.push((await whoami(socket)).port);
    return answers;
  } finally {
    socket.disconnect();
  }
}

describe('socket.io on every core', () => {
  let nodes;
  let backends;

  before(async () => {
    const free = [await freePort(), await freePort(), await freePort()];
    nodes = await Promise.all(free.map((port) => startNode(port)));
    backends = nodes.map((n) => `127.0.0.1:${n.port}`).join(',');
  });

  after(async () => {
    await Promise.all(nodes.map(stopNode));
  });

  test('ip-hash: polling-only and default clients from 30 addresses each stay on one process', async () => {
    const bridge = await Wssbridge.start([`/socket.io/=${backends}`], ['--balance', '/socket.io/=ip-hash']);
    try {
      const placed = new Map();
      for (const address of ADDRESSES) {
        const polling = await ports(bridge.origin, address, { transports: ['polling'] });
        assert.equal(new Set(polling).size, 1, `${address} polling reached one process: ${polling}`);
        const upgraded = await ports(bridge.origin, address, {});
        assert.deepEqual(upgraded, polling, `${address} with the upgrade reached the same process`);
        placed.set(address, polling[0]);
      }
      const used = new Set(placed.values());
      assert.equal(used.size, 3, `every process gets clients: ${[...used]}`);
      // The traffic went through wssbridge, polls and WebSockets alike.
      await bridge.waitFor((e) => e.message === 'connection' && e.path.includes('transport=polling'));
      await bridge.waitFor((e) => e.message === 'connection' && e.path.includes('transport=websocket'));
    } finally {
      assert.equal(await bridge.stop(), 0);
    }
  });

  test('round-robin breaks polling-only clients (so the test above can fail)', async () => {
    const bridge = await Wssbridge.start([`/socket.io/=${backends}`], ['--balance', 'round-robin']);
    try {
      let failed = 0;
      for (const address of ADDRESSES.slice(0, 10)) {
        try {
          const answers = await ports(bridge.origin, address, { transports: ['polling'] });
          if (new Set(answers).size !== 1) failed += 1;
        } catch {
          failed += 1; // "Session ID unknown" from a process that never saw the handshake
        }
      }
      assert.ok(failed >= 5, `only ${failed} of 10 polling clients failed under round-robin`);
    } finally {
      await bridge.stop();
    }
  });

  test('a killed process: its clients move, nobody else does, and they return after its health check passes', async () => {
    const bridge = await Wssbridge.start([`/socket.io/=${backends}`], [
      '--balance', '/socket.io/=ip-hash', '--fail-timeout', '5s',
      '--health-check', '/socket.io/=tcp', '--health-interval', '300ms',
    ]);
    const sockets = [];
    try {
      const placed = new Map();
      const dropped = new Set();
      for (const address of ADDRESSES) {
        const socket = client(bridge.origin, address, {
          reconnection: true, reconnectionDelay: 100, reconnectionDelayMax: 300,
        });
        sockets.push(socket);
        await connected(socket, address);
        placed.set(address, (await whoami(socket)).port);
        socket.on('disconnect', () => dropped.add(address));
      }
      const victim = nodes[0];
      const moved = ADDRESSES.filter((a) => placed.get(a) === victim.port);
      assert.ok(moved.length > 0);
      const reconnected = moved.map((a) => new Promise((resolve) => {
        sockets[ADDRESSES.indexOf(a)].io.once('reconnect', resolve);
      }));
      const killed = Date.now();
      await stopNode(victim);
      await within(Promise.all(reconnected), 'moved clients reconnect', 5000);
      const took = Date.now() - killed;
      assert.ok(took < 5000, `moved within --fail-timeout: ${took} ms`);
      for (const address of moved) {
        const { port } = await whoami(sockets[ADDRESSES.indexOf(address)]);
        assert.notEqual(port, victim.port, `${address} is served elsewhere`);
      }
      const others = ADDRESSES.filter((a) => !moved.includes(a));
      assert.deepEqual(others.filter((a) => dropped.has(a)), [], 'no other client dropped');

      // Back on its port; once two tcp checks pass, its addresses' new connections return.
      nodes[0] = await startNode(victim.port);
      await bridge.waitFor((e) => e.message.startsWith('backend up')
        && e.backend === `127.0.0.1:${victim.port}`, 'backend up');
      for (const address of moved) {
        const answers = await ports(bridge.origin, address, {});
        assert.equal(answers[0], victim.port, `${address} returned`);
      }
      await bridge.waitFor((e) => e.message.startsWith('backend down')
        && e.level === 'WARN', 'backend down warning');
    } finally {
      for (const s of sockets) s.disconnect();
      await bridge.stop();
    }
  });
});
