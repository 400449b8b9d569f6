// Starts the real wssbridge binary in front of a backend and reads its JSON log lines, so a
// test can prove its traffic went through wssbridge. Paths come from the Makefile (`make e2e`):
//   WSSBRIDGE_BIN  the binary (default ../../target/debug/wssbridge)
//   E2E_CERTS      a folder written by certs/gen.sh (ca.pem, server.pem, server.key)
'use strict';

const { spawn } = require('node:child_process');
const path = require('node:path');
const fs = require('node:fs');
const crypto = require('node:crypto');
const net = require('node:net');
const readline = require('node:readline');

const ROOT = path.resolve(__dirname, '..', '..');
const BIN = process.env.WSSBRIDGE_BIN || path.join(ROOT, 'target', 'debug', 'wssbridge');
const CERTS = process.env.E2E_CERTS || path.join(ROOT, 'target', 'e2e-certs');
const WAIT_MS = 20000;

function certs() {
  return {
    ca: fs.readFileSync(path.join(CERTS, 'ca.pem')),
    cert: path.join(CERTS, 'server.pem'),
    key: path.join(CERTS, 'server.key'),
  };
}

/// base64(SHA-256(SPKI)) of the server certificate: what Chromium's
/// --ignore-certificate-errors-spki-list takes to trust exactly this key.
function serverSpkiHash() {
  const pem = fs.readFileSync(certs().cert, 'utf8');
  const leaf = new crypto.X509Certificate(pem.split(/(?<=-----END CERTIFICATE-----)/)[0]);
  const spki = leaf.publicKey.export({ type: 'spki', format: 'der' });
  return crypto.createHash('sha256').update(spki).digest('base64');
}

class Wssbridge {
  constructor(child) {
    this.child = child;
    this.lines = []; // parsed JSON log objects
    this.waiters = [];
  }

  /// `extra` may name its own `--listen` (a fixed port, to start again on it); else port 0.
  static start(routes, extra = []) {
    const c = certs();
    const listen = extra.includes('--listen') ? [] : ['--listen', '127.0.0.1:0'];
    const args = [...listen, '--cert', c.cert, '--key', c.key, '--log-format', 'json'];
    for (const r of routes) args.push('--route', r);
    args.push(...extra);
    const child = spawn(BIN, args, { stdio: ['ignore', 'ignore', 'pipe'] });
    const bridge = new Wssbridge(child);
    readline.createInterface({ input: child.stderr }).on('line', (line) => {
      let entry;
      try { entry = JSON.parse(line); } catch { entry = { message: line }; }
      bridge.lines.push(entry);
      bridge.waiters = bridge.waiters.filter((w) => !w(entry));
    });
    return bridge.waitFor((e) => e.message === 'listening' && e.addr).then((e) => {
      bridge.addr = e.addr;
      bridge.port = Number(e.addr.split(':').pop());
      bridge.origin = `https://localhost:${bridge.port}`;
      return bridge;
    });
  }

  /// Resolves with the first log entry (past or future) that satisfies `pred`.
  waitFor(pred, what = 'log line') {
    const seen = this.lines.find(pred);
    if (seen) return Promise.resolve(seen);
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`no ${what} in wssbridge's log: ${JSON.stringify(this.lines)}`)), WAIT_MS);
      this.waiters.push((entry) => {
        if (!pred(entry)) return false;
        clearTimeout(timer);
        resolve(entry);
        return true;
      });
    });
  }

  /// The summary lines of connections that ended.
  connections() {
    return this.lines.filter((e) => e.message === 'connection');
  }

  stop() {
    return new Promise((resolve) => {
      if (this.child.exitCode !== null) return resolve(this.child.exitCode);
      this.child.once('exit', (code) => resolve(code));
      this.child.kill('SIGTERM');
    });
  }
}

/// Resolves when `emitter` emits `event`, or rejects after WAIT_MS.
function once(emitter, event, what = event) {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`timed out waiting for ${what}`)), WAIT_MS);
    emitter.once(event, (...args) => { clearTimeout(timer); resolve(args); });
  });
}

/// A port free on 127.0.0.1 a moment ago (for a process that must be started on a known port).
function freePort() {
  return new Promise((resolve) => {
    const s = net.createServer().listen(0, '127.0.0.1', () => {
      const { port } = s.address();
      s.close(() => resolve(port));
    });
  });
}

module.exports = { Wssbridge, certs, serverSpkiHash, once, freePort, WAIT_MS };
