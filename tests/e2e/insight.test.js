// How each WebSocket ended and what it carried (issue #42), seen from real clients: a
// socket.io v4 client whose every engine.io packet (heartbeats included) is one WebSocket
// message, and Python's `websockets` closing with 1000 and a reason, or closed by its backend
// with 1009 for a message too big. Each checks wssbridge's log line for the tunnel against
// what the client itself counted, and the samples on /metrics.
'use strict';

const { describe, test, before, after } = require('node:test');
const assert = require('node:assert/strict');
const http = require('node:http');
const { spawn } = require('node:child_process');
const { WebSocketServer } = require('ws');
const { io } = require('socket.io-client');
const { Server } = require('socket.io');
const { Wssbridge, certs, freePort, once, WAIT_MS } = require('./harness');

// Debian's python3 with python3-websockets (.ci/run installs it).
const PYTHON = process.env.PYTHON_WS || '/usr/bin/python3';

function get(url) {
  return new Promise((resolve, reject) => {
    http.get(url, (res) => {
      let body = '';
      res.on('data', (d) => { body += d; });
      res.on('end', () => resolve(body));
    }).on('error', reject);
  });
}

/// The value of `series` (name and labels as printed) in a scrape, 0 when absent.
function sample(scrape, series) {
  const line = scrape.split('\n').find((l) => l.startsWith(`${series} `));
  return line ? Number(line.split(' ').pop()) : 0;
}

describe('WebSocket insight', () => {
  let bridge;
  let metrics;
  let sio;
  let sioServer;
  let plain;

  before(async () => {
    // socket.io with a fast heartbeat, so engine.io's own pings ("2") and pongs ("3") go by.
    sioServer = http.createServer();
    sio = new Server(sioServer, { pingInterval: 300, pingTimeout: 5000 });
    sio.on('connection', (socket) => socket.on('chat', (msg, ack) => ack(msg)));
    await new Promise((r) => sioServer.listen(0, '127.0.0.1', r));
    // A plain WebSocket echo that closes with 1009 when a message passes 1 KiB (ws does).
    plain = new WebSocketServer({ host: '127.0.0.1', port: 0, maxPayload: 1024 });
    plain.on('connection', (ws) => {
      ws.on('message', (m, binary) => ws.send(m, { binary }));
      // ws closes with 1009 itself and reports why here: expected, not a failure.
      ws.on('error', () => {});
    });
    await once(plain, 'listening');
    const adminPort = await freePort();
    bridge = await Wssbridge.start([
      `/socket.io/=127.0.0.1:${sioServer.address().port}`,
      `/plain/=127.0.0.1:${plain.address().port}`,
    ], ['--admin', `127.0.0.1:${adminPort}`]);
    metrics = () => get(`http://127.0.0.1:${adminPort}/metrics`);
  });

  after(async () => {
    await bridge?.stop();
    sio?.close();
    plain?.close();
  });

  test('socket.io: each engine.io packet is one message, heartbeats included; the close is the client\'s', async () => {
    const socket = io(bridge.origin, {
      ca: certs().ca, forceNew: true, reconnection: false, transports: ['websocket'],
    });
    await once(socket, 'connect');
    const engine = socket.io.engine;
    // Counted from here: the packets of the open ("0") and connect ("40") came before.
    let sent = 0;
    let received = 0;
    let pings = 0;
    engine.on('packetCreate', () => { sent += 1; });
    engine.on('packet', (p) => { received += 1; if (p.type === 'ping') pings += 1; });
    for (let i = 0; i < 10; i++) {
      assert.equal(await socket.timeout(WAIT_MS).emitWithAck('chat', `m${i}`), `m${i}`);
    }
    // Long enough for several heartbeats.
    while (pings < 4) await new Promise((r) => setTimeout(r, 100));
    const closing = once(socket, 'disconnect');
    socket.close();
    await closing;
    const line = await bridge.waitFor((e) => e.message === 'connection' && e.route === '/socket.io/'
      && e.ended_by, 'the socket.io tunnel\'s line');
    // Before counting began: "0{...}" and "40{...}" down, "40" up.
    assert.equal(line.messages_up, sent + 1, JSON.stringify(line));
    assert.equal(line.messages_down, received + 2, JSON.stringify(line));
    assert.equal(line.frames_up, line.messages_up + line.controls_up, 'no fragments');
    assert.equal(line.ended_by, 'client_close');
    assert.ok([1000, 1005].includes(line.close_client), JSON.stringify(line));
    const scrape = await metrics();
    const route = 'route="/socket.io/"';
    assert.equal(sample(scrape, `wssbridge_websocket_messages_total{${route},direction="client_to_backend"}`), line.messages_up);
    assert.equal(sample(scrape, `wssbridge_websocket_messages_total{${route},direction="backend_to_client"}`), line.messages_down);
    assert.equal(sample(scrape, `wssbridge_websocket_closes_total{${route},side="client",code="${line.close_client}"}`), 1);
  });

  /// Runs a Python `websockets` client against /plain/, trusting only the development CA:
  /// `bye` closes with 1000 and a reason, `big` sends 2 KiB to a backend that takes 1 KiB.
  /// Resolves with the close code the client saw.
  function python(mode) {
    const script = `
import asyncio, os, ssl, sys, websockets
async def main():
    ctx = ssl.create_default_context(cadata=os.environ["CA_PEM"])
    async with websockets.connect(sys.argv[1], ssl=ctx, compression=None) as ws:
        for text in ("hello", "again"):
            await ws.send(text)
            assert await ws.recv() == text
        if sys.argv[3] == "big":
            await ws.send("x" * 2048)
            try:
                await ws.recv()
            except websockets.ConnectionClosed as e:
                print(e.rcvd.code if e.rcvd else "none")
        else:
            await ws.close(code=1000, reason="bye")
            print(ws.close_code)
asyncio.run(main())
`;
    const url = `wss://localhost:${bridge.port}/plain/`;
    return new Promise((resolve, reject) => {
      const env = { ...process.env, CA_PEM: certs().ca.toString() };
      const child = spawn(PYTHON, ['-c', script, url, '-', mode], { stdio: ['ignore', 'pipe', 'pipe'], env });
      let out = '';
      let err = '';
      child.stdout.on('data', (d) => { out += d; });
      child.stderr.on('data', (d) => { err += d; });
      const timer = setTimeout(() => { child.kill(); reject(new Error(`python timed out: ${err}`)); }, WAIT_MS);
      child.on('exit', (code) => {
        clearTimeout(timer);
        if (code === 0) resolve(out.trim());
        else reject(new Error(`python exited ${code}: ${err}`));
      });
    });
  }

  test('Python websockets: a client\'s 1000 with a reason, and the backend\'s 1009 for a message too big', async () => {
    const before = await metrics();
    const plainRoute = 'route="/plain/"';
    const count = (scrape, side, code) => sample(scrape, `wssbridge_websocket_closes_total{${plainRoute},side="${side}",code="${code}"}`);
    assert.equal(await python('bye'), '1000');
    const bye = await bridge.waitFor((e) => e.message === 'connection' && e.route === '/plain/'
      && e.ended_by === 'client_close', 'the client\'s close');
    assert.equal(bye.close_client, 1000);
    assert.equal(bye.close_client_reason, 3);
    assert.equal(bye.messages_up, 2);
    assert.equal(bye.messages_down, 2);

    assert.equal(await python('big'), '1009');
    const big = await bridge.waitFor((e) => e.message === 'connection' && e.route === '/plain/'
      && e.ended_by === 'backend_close', 'the backend\'s 1009');
    assert.equal(big.close_backend, 1009);
    assert.equal(big.messages_up, 3);
    const after = await metrics();
    assert.equal(count(after, 'client', '1000') - count(before, 'client', '1000'), 1);
    assert.equal(count(after, 'backend', '1009') - count(before, 'backend', '1009'), 1);
    const sizes = `wssbridge_websocket_message_size_bytes_bucket{${plainRoute},direction="client_to_backend",le="4096"}`;
    assert.equal(sample(after, sizes), 5, 'five messages up to 4 KiB');
  });
});
