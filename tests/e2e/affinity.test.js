// --balance cookie (issue #41): three real socket.io v4 processes (no adapter) behind one
// route, clients with the default transports (long-polling first, then the upgrade) and
// Engine.IO's own cookie jar (withCredentials), each poll a connection of its own.
//
// - One address for 300 clients (an office, a carrier NAT): with `cookie` they spread over
//   the three, each within ±20% of a third; with `ip-hash` all land on one. No session is
//   lost in either.
// - One client whose address changes between polls (a phone leaving Wi-Fi): with `cookie`
//   it stays on its process and upgrades there; with `ip-hash` its session is lost (400).
'use strict';

const { describe, test, before, after } = require('node:test');
const assert = require('node:assert/strict');
const https = require('node:https');
const { io } = require('socket.io-client');
const { Wssbridge, certs, freePort, WAIT_MS } = require('./harness');
const { startNode, stopNode } = require('./cluster');

// Long-polls still held when a test stops its wssbridge need not hold the stop.
const QUICK_STOP = ['--shutdown-grace', '1s'];

function within(promise, what, ms = WAIT_MS) {
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`timed out: ${what}`)), ms);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

/// A socket.io client from `localAddress` (changeable: every poll is a new connection made
/// with the agent's options as they are then), keeping cookies as a browser does.
function client(origin, localAddress, opts = {}) {
  const ca = certs().ca;
  const agent = new https.Agent({ localAddress, ca, keepAlive: false });
  const socket = io(origin, {
    ca, agent, forceNew: true, reconnection: false, withCredentials: true, ...opts,
  });
  socket.agent = agent;
  return socket;
}

function connected(socket, what) {
  return within(new Promise((resolve, reject) => {
    socket.once('connect', resolve);
    socket.once('connect_error', (e) => reject(new Error(`${what}: ${e.message}`)));
  }), what);
}

async function whoami(socket) {
  return within(socket.timeout(WAIT_MS).emitWithAck('whoami'), 'whoami');
}

/// 300 clients from 127.0.0.2, 30 at a time, each asking whoami twice on long-polling:
/// where they landed, and every problem seen.
async function threeHundred(origin) {
  const counts = new Map();
  const problems = [];
  const open = [];
  for (let batch = 0; batch < 10; batch++) {
    const sockets = Array.from({ length: 30 }, () => client(origin, '127.0.0.2', { transports: ['polling'] }));
    for (const s of sockets) {
      s.on('disconnect', (why) => { if (why !== 'io client disconnect') problems.push(why); });
      s.on('connect_error', (e) => problems.push(e.message));
    }
    await Promise.all(sockets.map((s) => connected(s, 'polling client')));
    for (const s of sockets) {
      const first = await whoami(s);
      const second = await whoami(s);
      assert.equal(first.port, second.port, 'a session stays on its process');
      counts.set(first.port, (counts.get(first.port) || 0) + 1);
    }
    open.push(...sockets);
  }
  for (const s of open) s.disconnect();
  return { counts, problems };
}

describe('--balance cookie', () => {
  let nodes;
  let backends;

  before(async () => {
    const ports = [await freePort(), await freePort(), await freePort()];
    nodes = await Promise.all(ports.map((port) => startNode(port)));
    backends = nodes.map((n) => `127.0.0.1:${n.port}`).join(',');
  });

  after(async () => {
    await Promise.all((nodes || []).map(stopNode));
  });

  test('300 clients behind one address: cookie spreads them, ip-hash piles them on one', async (t) => {
    for (const [policy, check] of [
      ['cookie', (n) => n >= 80 && n <= 120],
      ['ip-hash', (n) => n === 0 || n === 300],
    ]) {
      const bridge = await Wssbridge.start([`/socket.io/=${backends}`], ['--balance', `/socket.io/=${policy}`, ...QUICK_STOP]);
      try {
        const { counts, problems } = await threeHundred(bridge.origin);
        t.diagnostic(`${policy}: ${nodes.map((n) => counts.get(n.port) || 0).join(' / ')}`);
        assert.deepEqual(problems, [], `${policy}: no session lost`);
        for (const node of nodes) {
          const n = counts.get(node.port) || 0;
          assert.ok(check(n), `${policy}: ${node.port} has ${n} of 300: ${JSON.stringify([...counts])}`);
        }
        const lost = bridge.connections().filter((c) => c.outcome === 'status 400');
        assert.equal(lost.length, 0);
      } finally {
        await bridge.stop();
      }
    }
  });

  test('a client whose address changes keeps its process with cookie, loses it with ip-hash', async () => {
    for (const policy of ['cookie', 'ip-hash']) {
      const bridge = await Wssbridge.start([`/socket.io/=${backends}`], ['--balance', `/socket.io/=${policy}`, ...QUICK_STOP]);
      const socket = client(bridge.origin, '127.0.0.2', { upgrade: false });
      const problems = [];
      socket.on('disconnect', (why) => problems.push(why));
      try {
        await connected(socket, policy);
        const home = (await whoami(socket)).port;
        const seen = [];
        for (const address of ['127.0.0.3', '127.0.0.4', '127.0.0.5', '127.0.0.6']) {
          socket.agent.options.localAddress = address;
          try {
            seen.push((await within(socket.timeout(3000).emitWithAck('whoami'), 'whoami')).port);
          } catch (e) {
            seen.push(`lost: ${e.message}`);
            break;
          }
        }
        if (policy === 'cookie') {
          assert.deepEqual(seen, [home, home, home, home], 'the cookie follows the client');
          assert.deepEqual(problems, []);
          // It upgrades to WebSocket on the same process (the upgrade carries the cookie).
          // (Built with upgrade: false so the polls above stay polls; the probe is what the
          // engine runs after its handshake when upgrades are on.)
          const engine = socket.io.engine;
          const upgraded = new Promise((resolve) => engine.once('upgrade', resolve));
          engine._probe('websocket');
          await within(upgraded, 'upgrade');
          assert.equal(engine.transport.name, 'websocket');
          assert.equal((await whoami(socket)).port, home);
        } else {
          // Four new addresses with three processes: one lands elsewhere, and the process
          // there does not know the session.
          assert.ok(seen.some((p) => typeof p === 'string') || problems.length > 0,
            `ip-hash kept the client through 4 address changes: ${seen}`);
          // The poll that went elsewhere is logged when its connection closes, which may be
          // a moment after the client saw its answer: waited for, not raced.
          await bridge.waitFor((c) => c.message === 'connection' && (c.outcome === 'status 400'
            || (c.backend && !c.backend.endsWith(`:${home}`))), 'a poll that reached another process');
        }
      } finally {
        socket.disconnect();
        await bridge.stop();
      }
    }
  });

  test('a process that goes down: its clients are placed again once; nobody else moves', async () => {
    const bridge = await Wssbridge.start([`/socket.io/=${backends}`], ['--balance', '/socket.io/=cookie', ...QUICK_STOP]);
    const sockets = [];
    try {
      for (let i = 0; i < 30; i++) {
        const s = client(bridge.origin, '127.0.0.2', { transports: ['polling'], reconnection: true, reconnectionDelay: 100 });
        await connected(s, 'client');
        sockets.push({ s, home: (await whoami(s)).port });
      }
      const victim = nodes[1];
      const theirs = sockets.filter((x) => x.home === victim.port);
      assert.ok(theirs.length > 0);
      await stopNode(victim);
      const moved = await Promise.all(theirs.map(async (x) => {
        await within(new Promise((resolve) => x.s.once('connect', resolve)), 'reconnected');
        return (await whoami(x.s)).port;
      }));
      for (const port of moved) assert.notEqual(port, victim.port);
      for (const x of sockets.filter((y) => y.home !== victim.port)) {
        assert.equal((await whoami(x.s)).port, x.home, 'nobody else moved');
      }
    } finally {
      for (const x of sockets) x.s.disconnect();
      await bridge.stop();
      nodes[1] = await startNode(nodes[1].port);
    }
  });
});
