// The socket.io example of `wssbridge --help` run as written against the example app
// (examples/socketio/server.js, the app `make demo-socketio` starts), issue #38: only its
// addresses and certificate files are swapped for free ports and the test's certificate.
// Every backend it names must pass its health check (/readyz says 200, /status.json shows
// each up), and two socket.io clients chat through it over wss://.
'use strict';

const { test, after } = require('node:test');
const assert = require('node:assert/strict');
const { spawn, execFileSync } = require('node:child_process');
const path = require('node:path');
const https = require('node:https');
const http = require('node:http');
const readline = require('node:readline');
const { certs, freePort, once, WAIT_MS } = require('./harness');

const ROOT = path.resolve(__dirname, '..', '..');
const BIN = process.env.WSSBRIDGE_BIN || path.join(ROOT, 'target', 'debug', 'wssbridge');
const children = [];
after(() => children.forEach((c) => c.kill('SIGTERM')));

/// The command under "A socket.io cluster" in --help, as argv (its lines joined).
function socketioExample() {
  const help = execFileSync(BIN, ['--help'], { encoding: 'utf8' });
  const from = help.indexOf('A socket.io cluster');
  assert.ok(from >= 0, 'the socket.io example is in --help');
  const lines = help.slice(from).split('\n').slice(1);
  let command = '';
  for (const line of lines) {
    command += ` ${line.trim().replace(/\\$/, '')}`;
    if (!line.trimEnd().endsWith('\\')) break;
  }
  const argv = command.trim().split(/\s+/);
  assert.equal(argv[0], 'wssbridge');
  return argv.slice(1);
}

function startApp(addr) {
  // The example app's own code; socket.io from the test suite's node_modules.
  const app = spawn('node', [path.join(ROOT, 'examples', 'socketio', 'server.js'), addr], {
    env: { ...process.env, NODE_PATH: path.join(__dirname, 'node_modules') },
    stdio: ['ignore', 'pipe', 'inherit'],
  });
  children.push(app);
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`the app on ${addr} did not start`)), WAIT_MS);
    readline.createInterface({ input: app.stdout }).on('line', (line) => {
      if (line.startsWith('chat backend on')) { clearTimeout(timer); resolve(app); }
    });
  });
}

function get(url) {
  return new Promise((resolve, reject) => {
    http.get(url, (res) => {
      let body = '';
      res.on('data', (d) => { body += d; });
      res.on('end', () => resolve({ status: res.statusCode, body }));
    }).on('error', reject);
  });
}

test("--help's socket.io example, run as written against examples/socketio, serves and is healthy", async () => {
  const argv = socketioExample();
  // Swap each address it names for a free one, and its files for the test's certificate.
  const c = certs();
  const addrs = new Map();
  const swapped = [];
  for (const arg of argv) {
    let out = arg;
    for (const m of arg.match(/127\.0\.0\.1:\d+/g) || []) {
      if (!addrs.has(m)) addrs.set(m, `127.0.0.1:${await freePort()}`);
      out = out.replace(m, addrs.get(m));
    }
    if (out === ':443') out = `127.0.0.1:${await freePort()}`;
    if (out.endsWith('.pem')) out = c.cert;
    if (out.endsWith('.key')) out = c.key;
    swapped.push(out);
  }
  assert.ok(swapped.includes('--health-check'), `${argv}`);
  assert.equal(addrs.size, 3, 'two socket.io processes and the rest');
  const listen = swapped[swapped.indexOf('--listen') + 1];
  const admin = `127.0.0.1:${await freePort()}`;
  for (const addr of addrs.values()) await startApp(addr);

  const bridge = spawn(BIN, [...swapped, '--admin', admin, '--health-interval', '1s'], {
    stdio: ['ignore', 'ignore', 'pipe'],
  });
  children.push(bridge);
  let log = '';
  const listening = new Promise((resolve) => {
    readline.createInterface({ input: bridge.stderr }).on('line', (line) => {
      log += `${line}\n`;
      if (line.includes('listening addr=')) resolve();
    });
  });
  await listening;

  // Backends start up; three failed checks in a row (3 s at --health-interval 1s) would
  // take one down, as /healthz answered 404 did. After 4 s every one must still be up.
  await new Promise((r) => setTimeout(r, 4000));
  const status = JSON.parse((await get(`http://${admin}/status.json`)).body);
  const backends = status.routes.flatMap((r) => r.backends);
  assert.equal(backends.length, 3, JSON.stringify(status.routes)); // 2 on /socket.io/, 1 on /
  assert.ok(backends.every((b) => b.state === 'up'), `${JSON.stringify(status.routes)}\n${log}`);
  assert.ok(status.routes.every((r) => r.health_check === '/healthz'), JSON.stringify(status.routes));
  assert.equal((await get(`http://${admin}/readyz`)).status, 200);
  assert.doesNotMatch(log, /backend down/, log);

  // Two socket.io clients chat through it, over wss:// once upgraded.
  const { io } = require('socket.io-client');
  const origin = `https://localhost:${listen.split(':').pop()}`;
  const a = io(origin, { ca: c.ca, forceNew: true, reconnection: false, query: { room: 'r' } });
  const b = io(origin, { ca: c.ca, forceNew: true, reconnection: false, query: { room: 'r' } });
  try {
    await Promise.all([once(a, 'connect'), once(b, 'connect')]);
    const heard = once(b, 'chat');
    a.emit('chat', 'hello through the --help example');
    assert.deepEqual(await heard, ['hello through the --help example']);
  } finally {
    a.close();
    b.close();
  }
  // The page too, from the default route's backend.
  const page = await new Promise((resolve, reject) => {
    https.get(`${origin}/`, { ca: c.ca }, (res) => {
      res.resume();
      resolve(res.statusCode);
    }).on('error', reject);
  });
  assert.equal(page, 200);
});
