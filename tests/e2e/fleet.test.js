// A fleet behind the balancer a user already runs (issue #23 §2, docs/scale-out.md): HAProxy
// in `mode tcp`, configured from deploy/haproxy/haproxy.cfg (only its addresses and check
// timings swapped), sends PROXY v2 to 3 wssbridge instances and checks each one's /readyz;
// every instance balances /socket.io/ with ip-hash over the same 3 socket.io processes.
//
// - A client address reaches the same Node process through every instance.
// - A rolling restart (SIGTERM, exit, start again, ready), one instance at a time, while 50
//   socket.io clients chat and new clients keep arriving: no connection fails, each client
//   moved gets a 1001 close only when its instance's grace ends and is back within 2 s, and
//   every client still reaches its own Node process at the end.
// - The same through a binary upgrade (SIGUSR2) of each instance in turn.
//
// `make fleet-test` runs this file alone; `make e2e` (so `make test`) runs it with the rest.
'use strict';

const { describe, test, before, after } = require('node:test');
const assert = require('node:assert/strict');
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');
const http = require('node:http');
const https = require('node:https');
const net = require('node:net');
const { spawn } = require('node:child_process');
const { io } = require('socket.io-client');
const { Wssbridge, certs, freePort, WAIT_MS } = require('./harness');
const { startNode, stopNode } = require('./cluster');

const ROOT = path.resolve(__dirname, '..', '..');
const INSTANCES = 3;
// HAProxy marks an instance down after FALL failed checks INTER_MS apart; the instance's
// --shutdown-delay must outlast that, or its listener closes while HAProxy still sends to it.
const INTER_MS = 300;
const FALL = 2;
const DELAY_MS = 1500;
const GRACE_MS = 2000;
const CLIENTS = 50;
// The socket.io client's own backoff before a reconnect (150–450 ms with its jitter): the
// 2 s measured is the proxy's part plus this.
const RECONNECT = { reconnectionDelay: 300, randomizationFactor: 0.5 };

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

async function until(what, check, ms = WAIT_MS) {
  const deadline = Date.now() + ms;
  for (;;) {
    const value = await check();
    if (value) return value;
    assert.ok(Date.now() < deadline, `timed out: ${what}`);
    await sleep(50);
  }
}

/// The shipped HAProxy configuration, pointed at this test's instances.
function haproxyConfig(port, instances, statsSocket) {
  let cfg = fs.readFileSync(path.join(ROOT, 'deploy', 'haproxy', 'haproxy.cfg'), 'utf8');
  const swap = (from, to) => {
    assert.match(cfg, from, `deploy/haproxy/haproxy.cfg no longer has ${from}`);
    cfg = cfg.replace(from, to);
  };
  swap(/^global$/m, `global\n    stats socket ${statsSocket} mode 600 level admin`);
  // This machine's descriptor limit is 20,000; HAProxy refuses a maxconn it cannot back.
  swap(/^ {4}maxconn \d+$/m, '    maxconn 2000');
  swap(/^ {4}bind :443$/m, `    bind 127.0.0.1:${port}`);
  swap(/ inter 2s fall 2 rise 2$/m, ` inter ${INTER_MS} fall ${FALL} rise 2`);
  const servers = /^ {4}server wss\d .*\n?/gm;
  assert.equal(cfg.match(servers)?.length, 3, 'the shipped file has 3 server lines');
  cfg = cfg.replace(servers, '');
  if (!cfg.endsWith('\n')) cfg += '\n';
  cfg += instances.map((b, i) =>
    `    server wss${i + 1} 127.0.0.1:${b.port} port ${b.adminPort}\n`).join('');
  return cfg;
}

/// HAProxy's view of each server: `wss1` → its `show stat` row (`status`: `UP`, `DOWN`,
/// `UP 1/2`, …; `chkdown`: how many times it went down).
function serverStats(statsSocket) {
  return new Promise((resolve, reject) => {
    let out = '';
    const c = net.connect(statsSocket);
    c.on('data', (d) => { out += d; });
    c.on('error', reject);
    c.on('end', () => {
      const [head, ...rows] = out.trim().split('\n');
      const names = head.replace(/^# /, '').split(',');
      const states = new Map();
      for (const row of rows) {
        const f = Object.fromEntries(row.split(',').map((v, i) => [names[i], v]));
        if (f.pxname === 'wssbridge' && /^wss\d$/.test(f.svname)) states.set(f.svname, f);
      }
      resolve(states);
    });
    c.end('show stat\n');
  });
}

async function serverStates(statsSocket) {
  const stats = await serverStats(statsSocket);
  return new Map([...stats].map(([name, f]) => [name, f.status]));
}

function readyz(adminPort) {
  return new Promise((resolve) => {
    http.get({ host: '127.0.0.1', port: adminPort, path: '/readyz' }, (res) => {
      res.resume();
      resolve(res.statusCode);
    }).on('error', () => resolve(0));
  });
}

/// Waits until `pid` has exited (a process a binary upgrade started is not our child).
function exited(pid, what) {
  return until(`${what} exits`, () => {
    try { process.kill(pid, 0); return false; } catch { return true; }
  });
}

/// One wssbridge of the fleet, on fixed ports so it can be started again where HAProxy
/// expects it. `pid` follows binary upgrades; `bridge` reads the log of every process that
/// wrote to the first one's stderr (an upgraded process inherits it).
class Instance {
  constructor(name, port, adminPort, backends) {
    Object.assign(this, { name, port, adminPort, backends });
  }

  async start() {
    this.bridge = await Wssbridge.start([`/socket.io/=${this.backends}`], [
      '--listen', `127.0.0.1:${this.port}`, '--admin', `127.0.0.1:${this.adminPort}`,
      '--accept-proxy-from', '127.0.0.1/32', '--balance', '/socket.io/=ip-hash',
      '--shutdown-delay', `${DELAY_MS}ms`, '--shutdown-grace', `${GRACE_MS}ms`,
    ]);
    this.pid = this.bridge.child.pid;
    await until(`${this.name} ready`, async () => (await readyz(this.adminPort)) === 200);
  }

  /// SIGTERM; resolves with the exit code.
  stop() {
    return this.bridge.stop();
  }

  /// SIGUSR2; resolves once the new process is ready, with the old one's pid.
  async upgrade() {
    const old = this.pid;
    process.kill(old, 'SIGUSR2');
    const ready = await this.bridge.waitFor((e) => typeof e.message === 'string'
      && e.message.startsWith('upgrade: the new process is ready') && Number(e.pid) !== old
      && !this.upgradedTo?.has(Number(e.pid)), `${this.name}'s new process ready`);
    this.pid = Number(ready.pid);
    (this.upgradedTo ??= new Set()).add(this.pid);
    return old;
  }

  async kill() {
    for (const pid of new Set([this.bridge?.child.pid, this.pid])) {
      try { process.kill(pid, 'SIGKILL'); } catch { /* gone */ }
    }
  }
}

/// A socket.io client from `address`, reconnecting as a browser would. It records every
/// connect, disconnect and WebSocket close (with its code), and each ack's Node port.
function chatClient(origin, address) {
  const ca = certs().ca;
  // No keep-alive: every long-poll is a connection of its own, balanced by HAProxy on its
  // own, so stickiness must hold across instances.
  const agent = new https.Agent({ localAddress: address, ca, keepAlive: false });
  const socket = io(origin, { ca, agent, forceNew: true, ...RECONNECT });
  const c = { address, socket, connects: [], disconnects: [], closes: [], errors: [], ports: new Set(), acks: 0 };
  const watch = (transport) => {
    if (transport.name !== 'websocket') return;
    transport.ws.addEventListener('close', (e) => c.closes.push({ code: e.code, at: Date.now() }));
  };
  socket.io.on('open', () => {
    const engine = socket.io.engine;
    watch(engine.transport);
    engine.on('upgrade', watch);
  });
  socket.on('connect', () => c.connects.push(Date.now()));
  socket.on('disconnect', (reason) => c.disconnects.push({ reason, at: Date.now() }));
  socket.on('connect_error', (e) => c.errors.push(e.message));
  return c;
}

function chat(c, text) {
  return c.socket.timeout(WAIT_MS).emitWithAck('chat', text).then((port) => {
    c.ports.add(port);
    c.acks += 1;
    return port;
  });
}

/// Every second each client says something (spread over the second), until stopped.
function chatter(clients) {
  let n = 0;
  const timers = clients.map((c, i) => setTimeout(function tick() {
    if (c.socket.connected) chat(c, `message ${n++}`).catch(() => {});
    timers[i] = setTimeout(tick, 1000);
  }, (1000 * i) / clients.length));
  return () => timers.forEach(clearTimeout);
}

/// New clients arriving one after another (from 20 addresses) while the fleet changes:
/// each must connect and reach its address's Node process. Returns a stop function that
/// resolves with the failures.
function arrivals(origin) {
  const failures = [];
  const placed = new Map();
  let count = 0;
  let stopped = false;
  const loop = (async () => {
    while (!stopped) {
      const address = `127.0.1.${(count % 20) + 1}`;
      count += 1;
      const ca = certs().ca;
      const agent = new https.Agent({ localAddress: address, ca, keepAlive: false });
      const socket = io(origin, { ca, agent, forceNew: true, reconnection: false });
      try {
        await new Promise((resolve, reject) => {
          const timer = setTimeout(() => reject(new Error('no connect in 5 s')), 5000);
          socket.once('connect', () => { clearTimeout(timer); resolve(); });
          socket.once('connect_error', (e) => { clearTimeout(timer); reject(e); });
        });
        const { port } = await socket.timeout(5000).emitWithAck('whoami');
        if (placed.has(address) && placed.get(address) !== port) {
          failures.push(`${address} reached ${port}, before ${placed.get(address)}`);
        }
        placed.set(address, port);
      } catch (e) {
        failures.push(`${address}: ${e.message}`);
      } finally {
        socket.disconnect();
      }
      await sleep(100);
    }
  })();
  return async () => {
    stopped = true;
    await loop;
    return { failures, count };
  };
}

describe('a fleet of 3 wssbridge behind HAProxy (PROXY v2, /readyz checks)', () => {
  let nodes = [];
  const instances = [];
  let haproxy;
  let haproxyLog = '';
  let statsSocket;
  let origin;

  before(async () => {
    nodes = await Promise.all([0, 1, 2].map(async () => startNode(await freePort())));
    const backends = nodes.map((n) => `127.0.0.1:${n.port}`).join(',');
    for (let i = 0; i < INSTANCES; i++) {
      const instance = new Instance(`wss${i + 1}`, await freePort(), await freePort(), backends);
      await instance.start();
      instances.push(instance);
    }
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'wssbridge-fleet-'));
    statsSocket = path.join(dir, 'haproxy.sock');
    const port = await freePort();
    const cfg = path.join(dir, 'haproxy.cfg');
    fs.writeFileSync(cfg, haproxyConfig(port, instances, statsSocket));
    haproxy = spawn('haproxy', ['-db', '-f', cfg], { stdio: ['ignore', 'pipe', 'pipe'] });
    haproxy.stdout.on('data', (d) => { haproxyLog += d; });
    haproxy.stderr.on('data', (d) => { haproxyLog += d; });
    origin = `https://localhost:${port}`;
    await until('HAProxy sees every instance up', async () => {
      assert.equal(haproxy.exitCode, null, `haproxy exited: ${haproxyLog}`);
      const states = await serverStates(statsSocket).catch(() => new Map());
      return states.size === INSTANCES && [...states.values()].every((s) => s === 'UP');
    });
  });

  after(async () => {
    haproxy?.kill('SIGKILL');
    await Promise.all(instances.map((i) => i.kill()));
    await Promise.all(nodes.map(stopNode));
  });

  test('a client address reaches the same Node process through every instance', async () => {
    const addresses = Array.from({ length: 10 }, (_, i) => `127.0.0.${i + 2}`);
    const ca = certs().ca;
    const seen = new Map(); // `address:port` of each connection → the Node port it reached
    for (const address of addresses) {
      // Three WebSockets at once: HAProxy's leastconn puts each on another instance.
      const sockets = [];
      for (let k = 0; k < INSTANCES; k++) {
        const agent = new https.Agent({ localAddress: address, ca, keepAlive: false });
        const socket = io(origin, { ca, agent, forceNew: true, reconnection: false, transports: ['websocket'] });
        sockets.push(socket);
        await new Promise((resolve, reject) => {
          socket.once('connect', resolve);
          socket.once('connect_error', reject);
        });
        const { port } = await socket.timeout(WAIT_MS).emitWithAck('whoami');
        seen.set(`${address}:${socket.io.engine.transport.ws._socket.localPort}`, port);
      }
      for (const s of sockets) s.disconnect();
    }
    // Each instance logs the client's own address (from the PROXY header) and the backend.
    const through = new Map(); // address → the instances its connections went through
    for (const [client, port] of seen) {
      const instance = await until(`a log line for ${client}`, () => instances.find((i) =>
        i.bridge.lines.some((e) => e.message === 'connection' && e.client === client)));
      const line = instance.bridge.lines.find((e) => e.message === 'connection' && e.client === client);
      assert.equal(line.backend, `127.0.0.1:${port}`, `${client}: the log and whoami agree`);
      const address = client.split(':')[0];
      if (!through.has(address)) through.set(address, { instances: new Set(), ports: new Set() });
      through.get(address).instances.add(instance.name);
      through.get(address).ports.add(port);
    }
    for (const [address, { instances: via, ports }] of through) {
      assert.equal(via.size, INSTANCES, `${address} went through ${[...via]}`);
      assert.equal(ports.size, 1, `${address} reached one Node process: ${[...ports]}`);
    }
    const used = new Set([...through.values()].map((t) => [...t.ports][0]));
    assert.equal(used.size, 3, `the addresses are spread over the Node processes: ${[...used]}`);
  });

  /// 50 chatting clients and a stream of new ones through `change`, which alters the fleet
  /// one instance at a time and returns when each change began (the signal's time, by
  /// instance). Checks what must hold whatever the change.
  async function throughChange(change) {
    const clients = [];
    let stopChat = () => {};
    let stopArrivals = async () => ({});
    try {
      for (let i = 0; i < CLIENTS; i++) {
        const c = chatClient(origin, `127.0.0.${i + 2}`);
        clients.push(c);
        await until(`client ${i} connected`, () => c.socket.connected);
      }
      await until('every client on a WebSocket', () =>
        clients.every((c) => c.socket.io.engine?.transport.name === 'websocket'));
      await Promise.all(clients.map((c) => chat(c, 'hello')));
      stopChat = chatter(clients);
      stopArrivals = arrivals(origin);
      const began = await change();
      await sleep(1000);
      stopChat();
      const { failures, count } = await stopArrivals();

      // Everyone is connected and exchanging at the end, with the Node process they began on.
      await until('every client connected at the end', () => clients.every((c) => c.socket.connected));
      await Promise.all(clients.map((c) => chat(c, 'still here')));
      for (const c of clients) {
        assert.deepEqual(c.errors, [], `${c.address}: no connection failed`);
        assert.equal(c.ports.size, 1, `${c.address} stayed on one Node process: ${[...c.ports]}`);
      }
      assert.deepEqual(failures, [], `${failures.length} of ${count} new clients failed`);
      assert.ok(count >= 20, `only ${count} new clients arrived during the change`);

      // Each client moved was closed cleanly, no earlier than its instance's grace allowed,
      // and reconnected within 2 s.
      const moved = clients.filter((c) => c.disconnects.length > 0);
      assert.ok(moved.length > 0, 'some clients were moved');
      const times = [...began.values()].sort((a, b) => a - b);
      let slowest = 0;
      for (const c of moved) {
        assert.equal(c.closes.length, c.disconnects.length,
          `${c.address}: every disconnect was a WebSocket close: ${JSON.stringify([c.disconnects, c.closes])}`);
        for (const [k, close] of c.closes.entries()) {
          assert.equal(close.code, 1001, `${c.address}: a 1001 close, not ${close.code}`);
          const signalled = times.filter((t) => t <= close.at).pop();
          assert.ok(close.at - signalled >= GRACE_MS - 100,
            `${c.address} closed ${close.at - signalled} ms after its instance's signal`);
          const back = c.connects.find((t) => t >= close.at);
          assert.ok(back, `${c.address} reconnected after close ${k}`);
          assert.ok(back - close.at <= 2000, `${c.address} reconnected ${back - close.at} ms after its close`);
          slowest = Math.max(slowest, back - close.at);
        }
      }
      return { moved, slowest, arrivals: count };
    } finally {
      stopChat();
      await stopArrivals();
      for (const c of clients) c.socket.disconnect();
    }
  }

  test('a rolling restart (SIGTERM, start again) moves clients cleanly and fails no connection', async () => {
    const began = new Map();
    const downs = [];
    const result = await throughChange(async () => {
      for (const instance of instances) {
        began.set(instance.name, Date.now());
        const exit = instance.stop();
        // HAProxy stops sending before the listener closes (--shutdown-delay > inter × fall).
        await until(`HAProxy marks ${instance.name} down`, async () =>
          (await serverStates(statsSocket)).get(instance.name) === 'DOWN');
        const down = Date.now() - began.get(instance.name);
        assert.ok(down < DELAY_MS, `${instance.name} marked down ${down} ms after SIGTERM`);
        downs.push(down);
        assert.equal(await exit, 0, `${instance.name} exits 0`);
        await instance.start();
        await until(`HAProxy marks ${instance.name} up`, async () =>
          (await serverStates(statsSocket)).get(instance.name) === 'UP');
      }
      return began;
    });
    console.log(`rolling restart: HAProxy marked each down ${downs.join(', ')} ms after its SIGTERM; `
      + `${result.moved.length} of ${CLIENTS} clients moved, the slowest back in ${result.slowest} ms; `
      + `${result.arrivals} new clients during it, none failed`);
  });

  test('a binary upgrade (SIGUSR2) of each instance in turn moves no client before its grace', async () => {
    const began = new Map();
    const downs = new Map([...await serverStats(statsSocket)].map(([n, f]) => [n, f.chkdown]));
    const result = await throughChange(async () => {
      for (const instance of instances) {
        began.set(instance.name, Date.now());
        const old = await instance.upgrade();
        // The new process answers /readyz on the shared admin port: HAProxy keeps it up.
        assert.equal(await readyz(instance.adminPort), 200);
        await exited(old, `${instance.name}'s old process`);
        const stats = (await serverStats(statsSocket)).get(instance.name);
        assert.equal(stats.status, 'UP', `${instance.name} is up after its upgrade`);
        assert.equal(stats.chkdown, downs.get(instance.name), `${instance.name} never went down`);
      }
      return began;
    });
    console.log(`upgrade: ${result.moved.length} of ${CLIENTS} clients moved after the grace, the `
      + `slowest back in ${result.slowest} ms; ${result.arrivals} new clients during it, none failed`);
  });
});
