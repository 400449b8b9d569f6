// One Node process of a socket.io app run on every core: `PORT=3001 node cluster-server.js`,
// as pm2 in fork mode or plain `node` starts one per port. No adapter is used, so a client's
// requests must all reach the same process (stickiness) for long-polling to work.
// `whoami` answers with the process's port, so a test can see where each client landed;
// `chat` goes to the other clients of this process and is acknowledged with the port.
'use strict';

const http = require('node:http');
const { Server } = require('socket.io');

const port = Number(process.env.PORT);
const server = http.createServer();
const io = new Server(server);
io.on('connection', (socket) => {
  socket.on('whoami', (ack) => ack({ port, transport: socket.conn.transport.name }));
  socket.on('chat', (msg, ack) => {
    socket.broadcast.emit('chat', msg);
    if (typeof ack === 'function') ack(port);
  });
});
server.listen(port, '127.0.0.1', () => console.log(`listening ${port}`));
