// One Node process of a socket.io app run on every core: `PORT=3001 node cluster-server.js`,
// as pm2 in fork mode or plain `node` starts one per port. No adapter is used, so a client's
// requests must all reach the same process (stickiness) for long-polling to work.
// `whoami` answers with the process's port, so a test can see where each client landed;
// `chat` goes to the other clients of this process and is acknowledged with the port.
'use strict';

const http = require('node:http');
const { Server } = require('socket.io');

const port = Number(process.env.PORT);
// HOST: an address of 127/8 of its own, for processes that share a port (as pods behind one
// DNS name do).
const host = process.env.HOST || '127.0.0.1';
const server = http.createServer();
const io = new Server(server);
io.on('connection', (socket) => {
  socket.on('whoami', (ack) => ack({ port, host, transport: socket.conn.transport.name }));
  socket.on('chat', (msg, ack) => {
    socket.broadcast.emit('chat', msg);
    if (typeof ack === 'function') ack(port);
  });
});
server.listen(port, host, () => console.log(`listening ${port}`));
