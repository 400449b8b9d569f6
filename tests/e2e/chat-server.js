// A tiny socket.io chat server that also serves its page, on plain http:// and ws://.
// startChat(4) uses socket.io v4 (EIO=4); startChat(2) the v2 line (EIO=3) that many deployed
// apps still run. It listens on 127.0.0.1 only, on a port only wssbridge is told about.
'use strict';

const http = require('node:http');
const fs = require('node:fs');
const path = require('node:path');

const PAGE = fs.readFileSync(path.join(__dirname, 'index.html'), 'utf8');

function startChat(version) {
  return new Promise((resolve) => {
    const upgrades = []; // request headers of every WebSocket upgrade the server saw
    const server = http.createServer((req, res) => {
      if (req.url === '/' || req.url.startsWith('/?')) {
        res.writeHead(200, { 'Content-Type': 'text/html; charset=utf-8' });
        res.end(PAGE.replace('__VERSION__', String(version)));
      } else if (!req.url.startsWith('/socket.io/')) {
        res.writeHead(404);
        res.end();
      }
      // /socket.io/ requests are answered by socket.io's own listener.
    });
    server.prependListener('upgrade', (req) => upgrades.push(req.headers));
    let io;
    if (version === 4) {
      const { Server } = require('socket.io');
      io = new Server(server);
    } else {
      io = require('socket.io-v2')(server);
    }
    io.on('connection', (socket) => {
      socket.on('chat', (msg) => socket.broadcast.emit('chat', msg));
    });
    server.listen(0, '127.0.0.1', () => {
      resolve({
        port: server.address().port,
        upgrades,
        close: () => new Promise((done) => {
          io.close();
          server.close(() => done());
          server.closeAllConnections?.();
        }),
      });
    });
  });
}

module.exports = { startChat };
