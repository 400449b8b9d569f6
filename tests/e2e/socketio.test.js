// socket.io clients (v4 and the v2 line) talking to a socket.io chat through wssbridge over
// https:// and wss://, trusting only the development CA. The chat listens on a loopback port
// that only wssbridge is told about, and every test also checks wssbridge's own log lines.
'use strict';

const { describe, test, before, after } = require('node:test');
const assert = require('node:assert/strict');
const { startChat } = require('./chat-server');
const { Wssbridge, certs, once, WAIT_MS } = require('./harness');

const clients = {
  4: (url, opts) => require('socket.io-client').io(url, opts),
  2: (url, opts) => require('socket.io-client-v2')(url, opts),
};
const EIO = { 4: 'EIO=4', 2: 'EIO=3' };

for (const version of [4, 2]) {
  describe(`socket.io v${version} through wssbridge`, () => {
    let chat;
    let bridge;

    before(async () => {
      chat = await startChat(version);
      const backend = `127.0.0.1:${chat.port}`;
      bridge = await Wssbridge.start([`/socket.io/=${backend}`, `/=${backend}`]);
    });

    after(async () => {
      assert.equal(await bridge.stop(), 0, 'wssbridge exits 0 on SIGTERM');
      await chat.close();
    });

    function connect(opts = {}) {
      return clients[version](bridge.origin, {
        ca: certs().ca, forceNew: true, reconnection: false, ...opts,
      });
    }

    /// Resolves when the engine of `socket` has upgraded to a WebSocket.
    function upgraded(socket) {
      return new Promise((resolve, reject) => {
        const timer = setTimeout(() => reject(new Error('no upgrade to websocket')), WAIT_MS);
        socket.io.once('open', () => {
          socket.io.engine.once('upgrade', (transport) => {
            clearTimeout(timer);
            resolve(transport.name);
          });
        });
      });
    }

    /// wssbridge's summary line for a finished WebSocket tunnel on /socket.io/.
    function websocketTunnel() {
      return bridge.waitFor((e) => e.message === 'connection'
        && e.path.startsWith(`/socket.io/?${EIO[version]}`)
        && e.path.includes('transport=websocket')
        && e.route === '/socket.io/'
        && e.outcome === 'websocket closed'
        && e.bytes_down > 0, `a ${EIO[version]} websocket tunnel`);
    }

    test('default transports start on long-polling, then upgrade to a WebSocket', async () => {
      const socket = connect();
      const upgrade = upgraded(socket);
      await once(socket, 'connect');
      assert.equal(await upgrade, 'websocket');
      assert.equal(socket.io.engine.transport.name, 'websocket');
      socket.close();
      await bridge.waitFor((e) => e.message === 'connection'
        && e.path.includes('transport=polling') && e.route === '/socket.io/', 'a polling request');
      await websocketTunnel();
      assert.ok(chat.upgrades.some((h) => h.upgrade === 'websocket' && /upgrade/i.test(h.connection)),
        'the backend saw Upgrade: websocket and Connection: upgrade');
    });

    test('websocket-only transport connects directly', async () => {
      const before = bridge.connections().length;
      const socket = connect({ transports: ['websocket'] });
      await once(socket, 'connect');
      assert.equal(socket.io.engine.transport.name, 'websocket');
      socket.close();
      await bridge.waitFor((e) => e.message === 'connection' && e.path.includes('transport=websocket')
        && bridge.connections().indexOf(e) >= before, 'the websocket tunnel');
    });

    test('two clients: 500 messages each way arrive in order', async () => {
      const COUNT = 500;
      const a = connect();
      const b = connect({ transports: ['websocket'] });
      await Promise.all([once(a, 'connect'), once(b, 'connect')]);
      const received = { a: [], b: [] };
      const all = (who, socket) => new Promise((resolve, reject) => {
        const timer = setTimeout(() => reject(new Error(`${who} got ${received[who].length} of ${COUNT}`)), WAIT_MS);
        socket.on('chat', (msg) => {
          received[who].push(msg);
          if (received[who].length === COUNT) { clearTimeout(timer); resolve(); }
        });
      });
      const done = Promise.all([all('a', a), all('b', b)]);
      for (let i = 0; i < COUNT; i++) {
        a.emit('chat', `from a #${i}`);
        b.emit('chat', `from b #${i}`);
      }
      await done;
      assert.deepEqual(received.b, Array.from({ length: COUNT }, (_, i) => `from a #${i}`));
      assert.deepEqual(received.a, Array.from({ length: COUNT }, (_, i) => `from b #${i}`));
      a.close();
      b.close();
      await websocketTunnel();
    });
  });
}
