// The Node side of a socket.io app run on every core: one `cluster-server.js` process per
// port, started and killed as a whole process (as pm2 or a crash would).
'use strict';

const path = require('node:path');
const { spawn } = require('node:child_process');
const { WAIT_MS } = require('./harness');

/// Starts `PORT=port HOST=host node cluster-server.js` and resolves once it listens.
function startNode(port, host = '127.0.0.1') {
  const child = spawn(process.execPath, [path.join(__dirname, 'cluster-server.js')], {
    env: { ...process.env, PORT: String(port), HOST: host },
    stdio: ['ignore', 'pipe', 'inherit'],
  });
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`node on ${port} did not start`)), WAIT_MS);
    child.stdout.on('data', (d) => {
      if (String(d).includes(`listening ${port}`)) {
        clearTimeout(timer);
        resolve({ port, host, child });
      }
    });
  });
}

function stopNode(node) {
  return new Promise((resolve) => {
    if (node.child.exitCode !== null || node.child.signalCode !== null) return resolve();
    node.child.once('exit', () => resolve());
    node.child.kill('SIGKILL');
  });
}

module.exports = { startNode, stopNode };
