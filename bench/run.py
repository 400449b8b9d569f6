#!/usr/bin/env python3
"""`make bench`: wssbridge beside nginx (as is, and with 16 KiB proxy buffers) and HAProxy on
this machine's loopback: in each of several rounds, all peers are started and short runs take
turns between them (see `turns`); idle memory is measured one peer after the other.

Each peer terminates TLS in front of the same backend (examples/benchd.rs) and is driven by
the same load generator (examples/loadgen.rs). For every metric the peer's own CPU time
(all its processes, from /proc) is recorded, so per-CPU-second figures can be compared.
Writes bench/results/<stamp>/{results.csv, summary.md, ratios.png}.
"""

import argparse
import base64
import csv
import datetime
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RELEASE = os.path.join(ROOT, "target", "release")
WSSBRIDGE = os.path.join(RELEASE, "wssbridge")
LOADGEN = os.path.join(RELEASE, "examples", "loadgen")
BENCHD = os.path.join(RELEASE, "examples", "benchd")
CLK_TCK = os.sysconf("SC_CLK_TCK")
CORES = os.cpu_count() or 1

NGINX_CONF = """
worker_processes {cores};
worker_rlimit_nofile 20000;
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
events {{ worker_connections 19000; }}
http {{
    access_log off;
    client_body_temp_path {dir}/body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
    ssl_session_cache shared:SSL:10m;
    map $http_upgrade $connection_upgrade {{ default upgrade; '' ''; }}
    upstream app {{ server 127.0.0.1:{backend}; {keepalive} }}
    server {{
        listen 127.0.0.1:{port} ssl;
        ssl_certificate {cert};
        ssl_certificate_key {key};
        ssl_session_ticket_key {tickets_bin};
        location / {{
            proxy_pass http://app;
            proxy_http_version 1.1;
            proxy_set_header Upgrade $http_upgrade;
            proxy_set_header Connection {connection};
            proxy_set_header Host $host;
            proxy_read_timeout 1h;
            {buffers}
        }}
    }}
}}
"""

HAPROXY_CONF = """
global
    nbthread {cores}
    maxconn 9400
    tune.ssl.default-dh-param 2048
defaults
    mode http
    timeout connect 5s
    timeout client 1h
    timeout server 1h
    timeout tunnel 1h
frontend tls
    bind 127.0.0.1:{port} ssl crt {combined} alpn http/1.1 tls-ticket-keys {tickets_b64}
    default_backend app
backend app
    server s1 127.0.0.1:{backend}
"""


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, seconds=10):
    deadline = time.time() + seconds
    while time.time() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {port}")


def tree(pid):
    """pid and all its descendants."""
    parents = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
                parents.setdefault(ppid, []).append(int(entry))
            except OSError:
                pass
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(parents.get(p, []))
    return out


def cpu_seconds(pids):
    total = 0
    for p in pids:
        try:
            with open(f"/proc/{p}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
        except OSError:
            pass
    return total / CLK_TCK


def pss_kib(pids):
    total = 0
    for p in pids:
        try:
            with open(f"/proc/{p}/smaps_rollup") as f:
                for line in f:
                    if line.startswith("Pss:"):
                        total += int(line.split()[1])
        except OSError:
            pass
    return total


# Session-ticket key files every peer is given (written by `main`): one key of 80 random
# bytes, base64 for wssbridge and HAProxy, raw for nginx.
TICKETS = {}


class Peer:
    def __init__(self, name, workdir, extra=(), ticket_file=True):
        self.name = name
        self.dir = os.path.join(workdir, name)
        os.makedirs(self.dir, exist_ok=True)
        self.proc = None
        self.extra = list(extra)
        self.ticket_file = ticket_file

    def start(self, cert, key, backend):
        self.port = free_port()
        if self.name.startswith("wssbridge"):
            # wssbridge-base: an earlier build (WSSBRIDGE_BASE=path), for a before/after
            # comparison paired in one run.
            binary = os.environ["WSSBRIDGE_BASE"] if self.name == "wssbridge-base" else WSSBRIDGE
            cmd = [binary, "--listen", f"127.0.0.1:{self.port}", "--cert", cert, "--key", key,
                   "--to", f"127.0.0.1:{backend}", "-q"] + self.extra
            if self.name in ("wssbridge", "wssbridge-per-core") and self.ticket_file:
                # (the base binary may predate the flag: it keeps its own keys)
                cmd += ["--ticket-keys", TICKETS["b64"]]
            if self.name == "wssbridge-per-core":
                # The same binary in the other runtime mode, for when each is better.
                cmd += ["--runtime", "per-core"]
            if self.name == "wssbridge-full":
                # The features a production deployment turns on: forwarded headers on every
                # request, and the admin endpoint (metrics are always counted).
                cmd += ["--add-forwarded", "--admin", f"127.0.0.1:{free_port()}"]
        elif self.name.startswith("nginx"):
            for sub in ("body", "proxy", "fastcgi", "uwsgi", "scgi"):
                os.makedirs(os.path.join(self.dir, sub), exist_ok=True)
            # nginx: the classic WebSocket block everyone copies (Connection "upgrade", a new
            # upstream connection per request). nginx-16k: tuned as an expert would, with
            # 16 KiB proxy buffers, upstream keep-alive and the $connection_upgrade map.
            tuned = self.name == "nginx-16k"
            buffers = "proxy_buffer_size 16k; proxy_buffers 8 16k;" if tuned else ""
            keepalive = "keepalive 64;" if tuned else ""
            connection = "$connection_upgrade" if tuned else '"upgrade"'
            conf = os.path.join(self.dir, "nginx.conf")
            with open(conf, "w") as f:
                f.write(NGINX_CONF.format(cores=CORES, dir=self.dir, port=self.port, cert=cert, key=key,
                                          backend=backend, buffers=buffers, keepalive=keepalive,
                                          connection=connection, tickets_bin=TICKETS["bin"]))
            cmd = [shutil.which("nginx") or "/usr/sbin/nginx", "-p", self.dir, "-c", conf, "-g", "daemon off;"]
        else:
            combined = os.path.join(self.dir, "combined.pem")
            with open(combined, "w") as f:
                f.write(open(cert).read() + open(key).read())
            conf = os.path.join(self.dir, "haproxy.cfg")
            with open(conf, "w") as f:
                f.write(HAPROXY_CONF.format(cores=CORES, port=self.port, combined=combined, backend=backend,
                                            tickets_b64=TICKETS["b64"]))
            cmd = [shutil.which("haproxy") or "/usr/sbin/haproxy", "-f", conf, "-db"]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=open(os.path.join(self.dir, "stderr.log"), "a"))
        wait_port(self.port)
        time.sleep(0.3)

    def pids(self):
        return tree(self.proc.pid)

    def stop(self):
        if self.proc:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                for p in self.pids():
                    try:
                        os.kill(p, 9)
                    except OSError:
                        pass
                self.proc.wait()
            self.proc = None


def loadgen(mode, port, conns, seconds, size=None, extra=()):
    cmd = [LOADGEN, mode, f"127.0.0.1:{port}", "--conns", str(conns), "--seconds", str(seconds)]
    if size:
        cmd += ["--size", str(size)]
    cmd += list(extra)
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 120)
    if out.returncode != 0:
        raise RuntimeError(f"loadgen {mode}: {out.stderr.strip()}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def wrk(port, conns, seconds):
    """HTTP keep-alive with wrk (OpenSSL's client): `conns` connections of small GETs."""
    out = subprocess.run([shutil.which("wrk") or "/usr/bin/wrk", "-t2", f"-c{conns}", f"-d{seconds:g}s",
                          f"https://127.0.0.1:{port}/ping"], capture_output=True, text=True,
                         timeout=seconds + 60)
    if out.returncode != 0:
        raise RuntimeError(f"wrk: {out.stderr.strip()}")
    requests = None
    errors = 0
    for line in out.stdout.splitlines():
        line = line.strip()
        if " requests in " in line:
            requests = int(line.split()[0])
        elif line.startswith("Non-2xx") or line.startswith("Socket errors"):
            errors += sum(int(x) for x in line.replace(",", " ").split() if x.isdigit())
    if requests is None:
        raise RuntimeError(f"wrk: no result in {out.stdout}")
    return {"requests": requests, "per_sec": requests / seconds, "errors": errors, "conns": requests}


def measure(peer, mode, conns, seconds):
    pids = peer.pids()
    before = cpu_seconds(pids)
    if mode == "wrk":
        result = wrk(peer.port, conns, seconds)
    elif mode == "rate-chromium":
        result = loadgen("rate", peer.port, conns, seconds, extra=["--kx", "chromium"])
    elif "@" in mode:
        name, echo_read = mode.split("@")
        result = loadgen(name, peer.port, conns, seconds, extra=["--echo-read", echo_read])
    elif ":" in mode:
        name, size = mode.split(":")
        result = loadgen(name, peer.port, conns, seconds, int(size))
    else:
        result = loadgen(mode, peer.port, conns, seconds)
    if result.get("errors", 0) > result.get("conns", 1) / 100:
        raise RuntimeError(f"{peer.name} {mode}: {result}")
    return result, cpu_seconds(pids) - before


def turns(r, order, cert, backend, workdir, tag, jobs, windows):
    """Every peer started at once; `windows` turns, in each of which every job runs once on
    every peer, the order of the peers rotating from turn to turn. A burst of outside noise
    on a shared 2-core machine lasts a second or two: with one long run per peer in a row it
    lands on one peer and decides its figure (one peer's RTT p99 once spread 564–2,627 us over
    3 rounds); with short runs taking turns it is spread over every peer, and the median over
    the runs is robust to the few that catch one. Only the peer measured has load."""
    peers = [Peer(name, os.path.join(workdir, tag)) for name in order]
    rows = []
    try:
        for peer in peers:
            peer.start(*cert, backend)
        for w in range(windows):
            turn = peers[w % len(peers):] + peers[:w % len(peers)]
            for mode, conns, seconds, extract in jobs:
                for peer in turn:
                    res, cpu = measure(peer, mode, conns, seconds)
                    res["turn"] = w
                    for metric, value, work in extract(res, seconds):
                        rows.append((r, peer.name, metric, value, cpu, work, res))
    finally:
        for peer in peers:
            peer.stop()
    return rows


def rate_job(metric, seconds, mode="rate"):
    return (mode, 8, seconds, lambda res, s: [(metric, res["per_sec"], res["conns"])])


def bulk_job(seconds, echo_read=0):
    """4 upgraded tunnels, 16 KiB client writes as fast as they are taken, echoed: by benchd's
    default echo (tokio's copy, 8 KiB at a time), or with `echo_read`-byte reads (an outside
    harness's echo, 64 KiB)."""
    if echo_read:
        metric = f"bulk MB/s tx+rx, echo reading {echo_read // 1024} KiB"
        return (f"throughput@{echo_read}", 4, seconds,
                lambda res, s: [(metric, res["mb_per_sec"], res["mb_per_sec"] * s)])
    return ("throughput", 4, seconds, lambda res, s: [("bulk MB/s tx+rx", res["mb_per_sec"], res["mb_per_sec"] * s)])


def message_job(size, conns, seconds):
    """Upgraded tunnels echoing client writes of `size` bytes, each one TLS record: chat-like
    traffic at the small end."""
    metric = f"messages {size} B x{conns} MB/s"
    return (f"throughput:{size}", conns, seconds,
            lambda res, s: [(metric, res["mb_per_sec"], res["mb_per_sec"] * s)])


def chat_job(conns, seconds):
    """A chat: `conns` tunnels in rooms of 8, each sending one 100-byte message at a time and
    waiting for the backend's fan-out to bring it back (benchd's /chat): one small message
    per connection per wake-up, where no coalescing helps."""
    metric = f"chat deliveries/s (100 B, x{conns}, rooms of 8)"
    return ("chat", conns, seconds, lambda res, s: [(metric, res["per_sec"], res["deliveries"])])


def stream_job(size, frames, conns, seconds):
    """`conns` upgraded tunnels streaming both ways at once, `size` bytes per write: raw bytes,
    or one WebSocket frame per write (a header for the frame reader to follow and count each
    time)."""
    mode = "frames" if frames else "stream"
    metric = f"{mode} {size} B x{conns} MB/s"
    return (f"{mode}:{size}", conns, seconds, lambda res, s: [(metric, res["mb_per_sec"], res["mb_per_sec"] * s)])


def keepalive_job(seconds):
    """wrk: 16 keep-alive connections of GET /ping (socket.io's polling, a page's assets)."""
    return ("wrk", 16, seconds, lambda res, s: [("keep-alive req/s (wrk, 16 conns)", res["per_sec"], res["requests"])])


def rtt_job():
    return ("latency", 4, 1.0, lambda res, s: [("RTT p50 us", res["p50_us"], None), ("RTT p99 us", res["p99_us"], None)])


def idle(peer, count):
    pids = peer.pids()
    time.sleep(0.5)
    base = pss_kib(pids)
    gen = subprocess.Popen([LOADGEN, "idle", f"127.0.0.1:{peer.port}", "--conns", str(count)],
                           stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    opened = json.loads(gen.stdout.readline())["opened"]
    time.sleep(1.0)
    held = pss_kib(peer.pids())
    # What holding them costs: the proxy's CPU over 5 idle seconds, in % of one core.
    cpu_before = cpu_seconds(peer.pids())
    time.sleep(5.0)
    idle_cpu = (cpu_seconds(peer.pids()) - cpu_before) / 5.0 * 100
    gen.stdin.write("check\n")
    gen.stdin.flush()
    echoed = json.loads(gen.stdout.readline())["echoed"]
    gen.wait(timeout=60)
    return {"kib_per_conn": (held - base) / max(opened, 1), "opened": opened, "echoed": echoed,
            "idle_cpu_percent": idle_cpu}


def storm(peer, count, trigger):
    """A reconnect storm (loadgen's `storm`): `count` clients with a session each are ended
    at once, by themselves (`client`: a network blip) or by the proxy (`server`: SIGUSR2, a
    wssbridge upgrade with --websocket-close-on-drain), and reconnect within 0.5-1.5 s. The
    proxy's CPU is counted from the end to the last return (not for an upgrade, whose new
    process is not the one measured)."""
    gen = subprocess.Popen([LOADGEN, "storm", f"127.0.0.1:{peer.port}", "--conns", str(count),
                            "--trigger", trigger], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        json.loads(gen.stdout.readline())
        time.sleep(1.0)
        pids = peer.pids()
        before = cpu_seconds(pids)
        gen.stdin.write("go\n")
        gen.stdin.flush()
        if trigger == "server":
            peer.proc.send_signal(signal.SIGUSR2)
        res = json.loads(gen.stdout.readline())
        cpu = None if trigger == "server" else cpu_seconds(pids) - before
        gen.wait(timeout=60)
    finally:
        if gen.poll() is None:
            gen.kill()
    return res, cpu


def storm_rows(r, name, label, res, cpu):
    n = res["conns"]
    return [
        (r, name, f"storm {label}: reconnects of {n}", res["back"], cpu, res["back"] if cpu else None, res),
        (r, name, f"storm {label}: % resumed", 100.0 * res["resumed"] / max(n, 1), None, None, res),
        (r, name, f"storm {label}: seconds until all back", res["seconds"], None, None, res),
        (r, name, f"storm {label}: failed", res["failed"], None, None, res),
    ]


def paired_ratios(rows, metrics, peers_names):
    """For metrics measured in turns: {metric: {peer: (median of wssbridge / peer over the
    turns, turns where wssbridge did better, turns)}}."""
    groups = {}
    for r, name, metric, value, cpu, work, raw in rows:
        if "turn" not in raw:
            continue
        key = (r, raw["turn"])
        groups.setdefault((metric, key), {})[name] = value
        if work is not None and cpu:
            groups.setdefault((metric + " per proxy CPU-s", key), {})[name] = work / cpu
    out = {}
    for m in metrics:
        lower_better = m.startswith("RTT") or "KiB" in m or "CPU %" in m
        for n in peers_names:
            if n == "wssbridge":
                continue
            pairs = [g["wssbridge"] / g[n] for (metric, _), g in groups.items()
                     if metric == m and "wssbridge" in g and g.get(n)]
            if pairs:
                better = sum(1 for x in pairs if (x < 1 if lower_better else x > 1))
                out.setdefault(m, {})[n] = (statistics.median(pairs), better, len(pairs))
    return out


def certificates(workdir):
    certs = {}
    for kind, args in (("ecdsa", ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256"]),
                       ("rsa", ["-newkey", "rsa:2048"])):
        cert, key = os.path.join(workdir, f"{kind}.pem"), os.path.join(workdir, f"{kind}.key")
        subprocess.run(["openssl", "req", "-x509", *args, "-nodes", "-keyout", key, "-out", cert, "-days", "30",
                        "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost"],
                       check=True, capture_output=True)
        certs[kind] = (cert, key)
    return certs


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="about 1 minute: 1 round, fewer and shorter runs")
    parser.add_argument("--rounds", type=int)
    parser.add_argument("--seconds", type=float, help="length of one rate or bulk run")
    parser.add_argument("--windows", type=int, help="rate and bulk runs per peer per round")
    parser.add_argument("--idle", type=int, help="idle connections to hold")
    parser.add_argument("--rtt-windows", type=int, help="1-second RTT windows per peer per round")
    parser.add_argument("--peers", default="wssbridge,nginx,nginx-16k,haproxy",
                        help="also: wssbridge-full (with --add-forwarded and --admin), "
                        "wssbridge-base (the binary at $WSSBRIDGE_BASE, for before/after), "
                        "wssbridge-per-core (this binary with --runtime per-core)")
    parser.add_argument("--skip", default="", help="comma-separated parts to leave out: "
                        "rsa, ecdsa, sweep, chat, keepalive, frames, rtt, idle, storm")
    parser.add_argument("--storm", type=int, help="clients in the reconnect storm")
    opts = parser.parse_args()
    rounds = opts.rounds or (1 if opts.quick else 3)
    seconds = opts.seconds or (1.0 if opts.quick else 2.0)
    runs = opts.windows or (2 if opts.quick else 6)
    idle_count = opts.idle or (1000 if opts.quick else 9000)
    windows = opts.rtt_windows or (3 if opts.quick else 10)
    peers_names = opts.peers.split(",")
    skip = set(filter(None, opts.skip.split(",")))

    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    outdir = os.path.join(ROOT, "bench", "results", stamp)
    os.makedirs(outdir, exist_ok=True)
    workdir = tempfile.mkdtemp(prefix="wssbridge-bench-")
    certs = certificates(workdir)
    key = os.urandom(80)
    TICKETS["bin"] = os.path.join(workdir, "tickets.bin")
    TICKETS["b64"] = os.path.join(workdir, "tickets.b64")
    # Three lines of the one key: HAProxy wants a ring of at least three.
    for path, data in ((TICKETS["bin"], key), (TICKETS["b64"], (base64.b64encode(key) + b"\n") * 3)):
        with open(os.open(path, os.O_WRONLY | os.O_CREAT, 0o600), "wb") as f:
            f.write(data)
    storm_count = opts.storm or (1000 if opts.quick else 5000)
    backend_proc = subprocess.Popen([BENCHD, "127.0.0.1:0"], stdout=subprocess.PIPE, text=True)
    backend = int(backend_proc.stdout.readline().strip().rsplit(":", 1)[1])

    rows = []
    try:
        for r in range(rounds):
            order = peers_names[r % len(peers_names):] + peers_names[:r % len(peers_names)]
            if "rsa" not in skip:
                print(f"round {r + 1}/{rounds}: RSA-2048 rate, {runs} turns of {seconds:g} s", flush=True)
                rows.extend(turns(r, order, certs["rsa"], backend, workdir, "rsa",
                                  [rate_job("conn/s RSA-2048", seconds)], runs))
            if "ecdsa" not in skip:
                print(f"round {r + 1}/{rounds}: ECDSA P-256 rate and bulk, {runs} turns", flush=True)
                # The same handshakes with Chromium's key-exchange groups (X25519MLKEM768
                # first): wssbridge (rustls) takes the post-quantum hybrid, OpenSSL 3.0 peers
                # X25519.
                rows.extend(turns(r, order, certs["ecdsa"], backend, workdir, "ecdsa",
                                  [rate_job("conn/s ECDSA P-256", seconds),
                                   rate_job("conn/s ECDSA P-256, Chromium's groups", seconds,
                                            "rate-chromium"),
                                   bulk_job(seconds), bulk_job(seconds, 64 * 1024)], runs))
            if "keepalive" not in skip:
                print(f"round {r + 1}/{rounds}: keep-alive with wrk, {runs} turns", flush=True)
                rows.extend(turns(r, order, certs["ecdsa"], backend, workdir, "keepalive",
                                  [keepalive_job(seconds)], runs))
            if "sweep" not in skip:
                sweep = [message_job(size, conns, seconds) for conns in (4, 64)
                         for size in (256, 1024, 4096, 16384)]
                sweep_turns = max(2, runs // 2)
                print(f"round {r + 1}/{rounds}: message sizes 256 B-16 KiB x4 and x64 tunnels, "
                      f"{sweep_turns} turns", flush=True)
                rows.extend(turns(r, order, certs["ecdsa"], backend, workdir, "sweep", sweep, sweep_turns))
            if "chat" not in skip:
                chats = [chat_job(conns, seconds) for conns in (64, 256)]
                print(f"round {r + 1}/{rounds}: chat fan-out, 64 and 256 tunnels, {runs} turns", flush=True)
                rows.extend(turns(r, order, certs["ecdsa"], backend, workdir, "chat", chats, runs))
            if "frames" not in skip:
                # What following WebSocket frame boundaries costs (for the close frame at
                # shutdown): the same streams with and without a frame header per write.
                streams = [stream_job(size, frames, conns, seconds) for size in (16384, 256)
                           for frames in (False, True) for conns in (4, 64)]
                print(f"round {r + 1}/{rounds}: frame reader cost, {runs} turns", flush=True)
                rows.extend(turns(r, order, certs["ecdsa"], backend, workdir, "frames", streams, runs))
            if "rtt" not in skip:
                print(f"round {r + 1}/{rounds}: RTT, {windows} windows of 1 s per peer", flush=True)
                rows.extend(turns(r, order, certs["ecdsa"], backend, workdir, "rtt", [rtt_job()], windows))
            for name in ([] if "storm" in skip else order):
                print(f"round {r + 1}/{rounds}: {name} reconnect storm of {storm_count}", flush=True)
                storm_dir = os.path.join(workdir, "storm")

                def storm_on(peer, trigger, label, pid_file=None):
                    try:
                        peer.start(*certs["ecdsa"], backend)
                        res, cpu = storm(peer, storm_count, trigger)
                        rows.extend(storm_rows(r, name, label, res, cpu))
                    finally:
                        peer.stop()
                        if pid_file:
                            # The upgrade's new process, which the peer did not start.
                            try:
                                os.kill(int(open(pid_file).read().strip()), signal.SIGTERM)
                            except (OSError, ValueError):
                                pass
                            time.sleep(1.0)

                storm_on(Peer(name, storm_dir), "client", "after a blip")
                if name != "wssbridge":
                    continue
                # Across a binary upgrade, with no key file: the old process hands its own keys
                # to the new one, which resumes the old one's sessions.
                pid_file = os.path.join(storm_dir, "upgrade.pid")
                if os.path.exists(pid_file):
                    os.remove(pid_file)
                peer = Peer(name, storm_dir, ["--websocket-close-on-drain", "--pid-file", pid_file],
                            ticket_file=False)
                storm_on(peer, "server", "across an upgrade", pid_file)
            for name in ([] if "idle" in skip else order):
                peer = Peer(name, workdir)
                print(f"round {r + 1}/{rounds}: {name} idle", flush=True)
                try:
                    peer.start(*certs["ecdsa"], backend)
                    res = idle(peer, idle_count)
                    rows.append((r, name, "KiB per idle tunnel", res["kib_per_conn"], None, None, res))
                    rows.append((r, name, "idle tunnels echoing afterwards", res["echoed"], None, None, res))
                    rows.append((r, name, "CPU % of a core holding them idle", res["idle_cpu_percent"], None, None, res))
                finally:
                    peer.stop()
    finally:
        backend_proc.terminate()
        shutil.rmtree(workdir, ignore_errors=True)

    with open(os.path.join(outdir, "results.csv"), "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["round", "peer", "metric", "value", "proxy_cpu_s", "work", "raw"])
        for r, name, metric, value, cpu, work, raw in rows:
            w.writerow([r, name, metric, f"{value:.3f}", "" if cpu is None else f"{cpu:.3f}",
                        "" if work is None else f"{work:.1f}", json.dumps(raw)])

    metrics = []
    for _, _, metric, *_ in rows:
        if metric not in metrics:
            metrics.append(metric)
    table = {}
    for r, name, metric, value, cpu, work, _ in rows:
        table.setdefault((metric, name), []).append(value)
        if work is not None and cpu:
            table.setdefault((metric + " per proxy CPU-s", name), []).append(work / cpu)
    derived = []
    for m in metrics:
        derived.append(m)
        if any(k == (m + " per proxy CPU-s", n) for k in table for n in peers_names):
            derived.append(m + " per proxy CPU-s")

    def cell(values):
        med = statistics.median(values)
        return f"{med:,.1f} [{min(values):,.1f}–{max(values):,.1f}]", med

    lines = [f"# wssbridge beside nginx and HAProxy — {stamp}", "",
             f"{CORES} cores, loopback, {rounds} interleaved round(s); in each, all peers started and short runs "
             f"taking turns between them: {runs} rate and bulk runs of {seconds:g} s and {windows} RTT runs of 1 s per peer; "
             f"{idle_count} idle tunnels, one peer after the other. Medians over all runs [min–max]; "
             f"ratio = wssbridge / nginx (higher is better except RTT and KiB). "
             f"Load: rate 8 workers; bulk 4 tunnels of 16 KiB writes; messages: 4 or 64 tunnels echoing client writes of one TLS record each; "
             f"keep-alive: wrk (OpenSSL), 16 connections of GET /ping; RTT 4 tunnels of 64-byte ping-pong; client key exchange X25519 for every peer.", "",
             "| metric | " + " | ".join(peers_names) + " | wssbridge / nginx |",
             "|---|" + "---|" * (len(peers_names) + 1)]
    paired = paired_ratios(rows, derived, peers_names)
    ratios = {}
    for m in derived:
        cells, meds = [], {}
        for n in peers_names:
            if (m, n) in table:
                text, med = cell(table[(m, n)])
                cells.append(text)
                meds[n] = med
            else:
                cells.append("—")
        ratio = meds.get("wssbridge", 0) / meds["nginx"] if meds.get("nginx") else float("nan")
        ratios[m] = ratio
        lines.append(f"| {m} | " + " | ".join(cells) + f" | {ratio:.2f}x |")
    if paired:
        others = [n for n in peers_names if n != "wssbridge"]
        lines += ["", "Paired by turn (runs of the same turn are seconds apart, so they share the machine's "
                  "state): median over turns of wssbridge / peer, and in how many turns wssbridge did better.", "",
                  "| metric | " + " | ".join(f"vs {n}" for n in others) + " |",
                  "|---|" + "---|" * len(others)]
        for m in derived:
            if m in paired:
                cells = []
                for n in others:
                    ratio, better, count = paired[m].get(n, (float("nan"), 0, 0))
                    cells.append(f"{ratio:.2f}x ({better}/{count})")
                lines.append(f"| {m} | " + " | ".join(cells) + " |")
    summary = "\n".join(lines) + "\n"
    with open(os.path.join(outdir, "summary.md"), "w") as f:
        f.write(summary)
    print(summary)

    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        fig, ax = plt.subplots(figsize=(10, 5))
        names = list(ratios)
        ax.barh(names, [ratios[n] for n in names], color="#3b7dd8")
        ax.axvline(1.0, color="black", linewidth=1)
        ax.set_xlabel("wssbridge / nginx (median)")
        ax.set_title(f"wssbridge vs nginx, {stamp}")
        fig.tight_layout()
        fig.savefig(os.path.join(outdir, "ratios.png"), dpi=100)
    except ImportError:
        print("matplotlib missing: no chart (make bench installs it)", file=sys.stderr)
    print(f"results in {outdir}")


if __name__ == "__main__":
    main()
