// socket.io processes found by DNS (issue #40): three real socket.io v4 processes (no
// adapter) behind one name, `dns:chat.test:3000`, answered by a real DNS server on loopback
// (Debian's dnsmasq, TTL 1 s) whose answers the test changes, with wssbridge balancing
// /socket.io/ by ip-hash. Each process has an address of its own on one port, as pods behind
// a headless Service do. Clients come from 30 source addresses (127.0.0.2 … 127.0.0.31).
//
// - 300 long-polling clients (no keep-alive: every poll a connection of its own, balanced on
//   its own) spread over the three, each within ±30% of a third, with no "Session ID
//   unknown": every poll of a session reaches its process.
// - A fourth address appears: it gets new clients within the TTL; no client moves between
//   the first three.
// - An address disappears while 50 WebSockets are open through it: they go on exchanging
//   until they close themselves; new clients go elsewhere.
//
// ip-hash places addresses, not clients: with 30 addresses a third is ten of them, and how
// evenly 30 addresses fall on 3 backends depends on the addresses (a fixed hash,
// `src/balance/hash.rs`). The backends here are 127.0.3.11–14:3000.
'use strict';

const { describe, test, before, after } = require('node:test');
const assert = require('node:assert/strict');
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');
const https = require('node:https');
const { spawn } = require('node:child_process');
const { io } = require('socket.io-client');
const { Wssbridge, certs, freePort, WAIT_MS } = require('./harness');
const { startNode, stopNode } = require('./cluster');

const ADDRESSES = Array.from({ length: 30 }, (_, i) => `127.0.0.${i + 2}`);
const PORT = 3000;
const HOSTS = ['127.0.3.11', '127.0.3.12', '127.0.3.13', '127.0.3.14'];

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

function within(promise, what, ms = WAIT_MS) {
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`timed out: ${what}`)), ms);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

/// dnsmasq on 127.0.0.1:port, authoritative for .test, A records from files in a directory
/// it watches; `set` rewrites one name's records.
class Dns {
  static async start() {
    const dns = new Dns();
    dns.dir = fs.mkdtempSync(path.join(os.tmpdir(), 'wssbridge-dns-'));
    fs.mkdirSync(path.join(dns.dir, 'hosts'));
    dns.port = await freePort();
    dns.child = spawn('dnsmasq', [
      '--keep-in-foreground', '--no-resolv', '--no-hosts', '--bind-interfaces',
      '--listen-address=127.0.0.1', `--port=${dns.port}`, '--local=/test/', '--local-ttl=1',
      '--user=root', '--pid-file=', '--log-facility=-',
      `--hostsdir=${path.join(dns.dir, 'hosts')}`,
    ], { stdio: ['ignore', 'ignore', 'pipe'] });
    dns.log = '';
    dns.child.stderr.on('data', (d) => { dns.log += d; });
    await within(new Promise((resolve, reject) => {
      dns.child.once('error', reject);
      const check = () => (dns.log.includes('started') ? resolve() : setTimeout(check, 20));
      check();
    }), `dnsmasq started: ${dns.log}`);
    return dns;
  }

  set(name, ips) {
    const tmp = path.join(this.dir, `.${name}`);
    fs.writeFileSync(tmp, ips.map((ip) => `${ip} ${name}\n`).join(''));
    fs.renameSync(tmp, path.join(this.dir, 'hosts', name));
  }

  stop() {
    this.child.kill('SIGKILL');
    fs.rmSync(this.dir, { recursive: true, force: true });
  }
}

function client(origin, localAddress, opts = {}) {
  const ca = certs().ca;
  const agent = new https.Agent({ localAddress, ca, keepAlive: false });
  return io(origin, { ca, agent, forceNew: true, reconnection: false, ...opts });
}

function connected(socket, what) {
  return within(new Promise((resolve, reject) => {
    socket.once('connect', resolve);
    socket.once('connect_error', (e) => reject(new Error(`${what}: ${e.message}`)));
  }), what);
}

async function whoami(socket) {
  return (await within(socket.timeout(WAIT_MS).emitWithAck('whoami'), 'whoami')).host;
}

/// The process `address` lands on now, by a polling-only client asked three times.
async function landing(origin, address) {
  const socket = client(origin, address, { transports: ['polling'] });
  try {
    await connected(socket, address);
    const hosts = [await whoami(socket), await whoami(socket), await whoami(socket)];
    assert.equal(new Set(hosts).size, 1, `${address}: ${hosts}`);
    return hosts[0];
  } finally {
    socket.disconnect();
  }
}

describe('socket.io processes found by DNS', () => {
  let dns;
  let nodes;
  let bridge;

  before(async () => {
    dns = await Dns.start();
    nodes = await Promise.all(HOSTS.map((host) => startNode(PORT, host)));
    dns.set('chat.test', HOSTS.slice(0, 3));
    bridge = await Wssbridge.start([`/socket.io/=dns:chat.test:${PORT}`], [
      '--balance', '/socket.io/=ip-hash', '--resolver', `127.0.0.1:${dns.port}`,
    ]);
    await bridge.waitFor((e) => e.message?.startsWith('discovered backends changed') && e.backends === 3);
  });

  after(async () => {
    await bridge?.stop();
    await Promise.all((nodes || []).map(stopNode));
    dns?.stop();
  });

  test('300 polling clients from 30 addresses spread over three, none loses its session', async () => {
    const problems = [];
    const counts = new Map();
    // Ten clients per address, one address at a time (all ten at once).
    for (const address of ADDRESSES) {
      const sockets = Array.from({ length: 10 }, () => client(bridge.origin, address, { transports: ['polling'] }));
      for (const s of sockets) {
        s.on('disconnect', (why) => { if (why !== 'io client disconnect') problems.push(`${address}: ${why}`); });
        s.on('connect_error', (e) => problems.push(`${address}: ${e.message}`));
      }
      await Promise.all(sockets.map((s) => connected(s, address)));
      for (const s of sockets) {
        const hosts = [await whoami(s), await whoami(s)];
        assert.equal(hosts[0], hosts[1]);
        counts.set(hosts[0], (counts.get(hosts[0]) || 0) + 1);
      }
      for (const s of sockets) s.disconnect();
    }
    assert.deepEqual(problems, [], 'no session lost ("Session ID unknown" ends one)');
    const unknown = bridge.connections().filter((c) => c.outcome === 'status 400');
    assert.equal(unknown.length, 0);
    for (const host of HOSTS.slice(0, 3)) {
      const n = counts.get(host) || 0;
      assert.ok(n >= 70 && n <= 130, `${host} has ${n} of 300: ${JSON.stringify([...counts])}`);
    }
  });

  test('a fourth address takes new clients within the TTL; none moves between the first three', async () => {
    const before = new Map();
    for (const address of ADDRESSES) before.set(address, await landing(bridge.origin, address));
    dns.set('chat.test', HOSTS);
    await bridge.waitFor((e) => e.message?.startsWith('discovered backends changed') && e.added === `${HOSTS[3]}:${PORT}`);
    const after = new Map();
    for (const address of ADDRESSES) after.set(address, await landing(bridge.origin, address));
    const moved = ADDRESSES.filter((a) => before.get(a) !== after.get(a));
    assert.ok(moved.length > 0, 'the new process took no client');
    for (const a of moved) assert.equal(after.get(a), HOSTS[3], `${a} moved between the first three`);
  });

  test('an address gone from the answer keeps its 50 WebSockets; new clients go elsewhere', async () => {
    const placed = new Map();
    for (const address of ADDRESSES) placed.set(address, await landing(bridge.origin, address));
    const victim = HOSTS[1];
    const theirs = ADDRESSES.filter((a) => placed.get(a) === victim);
    assert.ok(theirs.length > 0);
    const sockets = [];
    for (let i = 0; sockets.length < 50; i++) {
      const s = client(bridge.origin, theirs[i % theirs.length], { transports: ['websocket'] });
      await connected(s, 'websocket');
      assert.equal(await whoami(s), victim);
      sockets.push(s);
    }
    const dropped = [];
    for (const s of sockets) s.on('disconnect', (why) => dropped.push(why));
    dns.set('chat.test', HOSTS.filter((h) => h !== victim));
    await bridge.waitFor((e) => e.message?.startsWith('discovered backends changed') && e.removed === `${victim}:${PORT}`);
    for (const address of theirs) {
      assert.notEqual(await landing(bridge.origin, address), victim, `${address} still sent to the removed process`);
    }
    // The open ones exchange on, for a while, then close themselves.
    for (let round = 0; round < 3; round++) {
      const acks = await Promise.all(sockets.map((s) => within(s.timeout(WAIT_MS).emitWithAck('chat', `round ${round}`), 'chat')));
      for (const port of acks) assert.equal(port, PORT);
      await sleep(300);
    }
    assert.deepEqual(dropped, [], 'no WebSocket was closed by the change');
    for (const s of sockets) s.disconnect();
  });
});
