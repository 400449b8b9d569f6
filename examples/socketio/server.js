// The seed's own case: a socket.io v4 chat, served on plain http:// and ws:// on one port,
// for wssbridge to put TLS in front of. `make demo-socketio` runs it behind wssbridge; on its
// own: npm ci && node server.js 127.0.0.1:3000.
'use strict';

const http = require('node:http');
const fs = require('node:fs');
const path = require('node:path');
const { Server } = require('socket.io');

const addr = process.argv[2] || '127.0.0.1:3000';
const at = addr.lastIndexOf(':');
const host = addr.slice(0, at);
const port = Number(addr.slice(at + 1));
const page = fs.readFileSync(path.join(__dirname, 'index.html'));

const server = http.createServer((req, res) => {
  if (req.url === '/' || req.url.startsWith('/?')) {
    res.writeHead(200, { 'Content-Type': 'text/html; charset=utf-8' });
    res.end(page);
  } else if (req.url === '/healthz') {
    // What `wssbridge --health-check /healthz` (the --help example) asks.
    res.writeHead(200, { 'Content-Type': 'text/plain' });
    res.end('ok\n');
  } else if (!req.url.startsWith('/socket.io/')) {
    res.writeHead(404);
    res.end();
  }
  // /socket.io/ requests are answered by socket.io's own listener.
});

// Rooms: a client joins the room its page names (?room=...), messages stay in it.
const io = new Server(server);
io.on('connection', (socket) => {
  const room = String(socket.handshake.query.room || 'lobby').slice(0, 40);
  socket.join(room);
  socket.on('chat', (msg) => socket.to(room).emit('chat', String(msg).slice(0, 1000)));
});

server.on('error', (e) => {
  console.error(`socket.io chat: cannot listen on ${addr}: ${e.message}. Something else holds ` +
    'that port: stop it, or pick another (make demo-socketio DEMO_BACKEND=127.0.0.1:3001).');
  process.exit(1);
});
server.listen(port, host, () => {
  console.log(`chat backend on http://${addr} (socket.io v4)`);
});
