#!/usr/bin/env python3
"""Memory held by connections that never finish their TLS handshake (issue #37 §4).

Starts wssbridge on loopback, measures its PSS, opens N connections of one kind, waits,
measures again and prints KiB per connection:

  silent   - TCP connected, nothing sent;
  hello11  - the first 11 bytes of a ClientHello, then nothing;
  stalled  - 48 KB of a 60 KB ClientHello, then nothing.

Usage: bench/prehandshake.py BINARY KIND N [extra wssbridge flags...]
Prints one line: kind, n, connections still open, KiB per connection, PSS before/after.
"""
import os
import socket
import struct
import subprocess
import sys
import time


def pss_kib(pid):
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            if line.startswith("Pss:"):
                return int(line.split()[1])
    return 0


def client_hello(total):
    """A ClientHello handshake message of about `total` bytes (a padding extension)."""
    suites = struct.pack("!H", 2) + b"\x13\x01"
    body = b"\x03\x03" + os.urandom(32) + b"\x00" + suites + b"\x01\x00"
    pad = max(0, total - len(body) - 4 - 2 - 4)
    ext = struct.pack("!HH", 21, pad) + b"\x00" * pad
    body += struct.pack("!H", len(ext)) + ext
    msg = b"\x01" + struct.pack("!I", len(body))[1:] + body
    records = b""
    for i in range(0, len(msg), 16384):
        frag = msg[i:i + 16384]
        records += b"\x16\x03\x01" + struct.pack("!H", len(frag)) + frag
    return records


def main():
    binary, kind, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
    extra = sys.argv[4:]
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    proc = subprocess.Popen(
        [binary, "--listen", f"127.0.0.1:{port}", "--to", "127.0.0.1:9",
         "--handshake-timeout", "600s", "--header-timeout", "600s",
         "--max-connections", str(n + 100), *extra],
        stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", port)).close()
                break
            except OSError:
                if time.time() > deadline or proc.poll() is not None:
                    sys.exit(f"wssbridge did not start: {proc.stderr.read()[-2000:]}")
                time.sleep(0.05)
        time.sleep(1)
        before = pss_kib(proc.pid)
        payload = {"silent": b"", "hello11": client_hello(512)[:11],
                   "stalled": client_hello(60000)[:48000]}[kind]
        conns = []
        for _ in range(n):
            s = socket.create_connection(("127.0.0.1", port))
            if payload:
                s.sendall(payload)
            conns.append(s)
        time.sleep(3)
        after = pss_kib(proc.pid)
        # How many wssbridge still holds: a closed one reads as EOF here.
        open_now = 0
        for s in conns:
            s.setblocking(False)
            try:
                open_now += 1 if s.recv(1) else 0
            except BlockingIOError:
                open_now += 1
            except OSError:
                pass
        print(f"{kind} n={n} open={open_now} kib_per_conn={(after - before) / n:.1f} "
              f"pss_before={before}KiB pss_after={after}KiB")
        for s in conns:
            s.close()
    finally:
        proc.terminate()
        proc.wait()


if __name__ == "__main__":
    main()
