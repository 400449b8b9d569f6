#!/usr/bin/env python3
"""`make bench-scale`: how many idle WebSockets one VM holds, and what they cost (issue #25).

1. The curve, one process: wssbridge, then HAProxy beside it, each holding 1,000, 2,500,
   5,000 and 9,900 upgraded tunnels opened by one loadgen (9,900 is what one process can
   hold under this machine's hard RLIMIT_NOFILE of 20,000: two descriptors a tunnel). At
   each count: the proxy's RSS and PSS, KiB per tunnel over the proxy at rest, how long each
   1,000 took to open, the proxy's CPU over --idle-seconds idle seconds, and the kernel's
   TCP sockets and memory (/proc/net/sockstat, the TCP slab of /proc/slabinfo).
2. 100,000 on one machine: --proxies wssbridge processes with --reuse-port on one port (the
   kernel spreads connections), 6 backends and 6 loadgens connecting from 127.0.0.11-16, so
   no process passes its descriptor limit and no source address runs out of ports. Held,
   then every one checked to echo; the proxies' memory, the kernel's, and idle CPU.

Release build, ECDSA P-256, loopback only. Writes bench/results/scale-<stamp>/summary.md.
Bounded: every wait has a timeout, and every process started is stopped at the end.
"""

import argparse
import datetime
import json
import os
import resource
import select
import shutil
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from run import BENCHD, LOADGEN, WSSBRIDGE, certificates, cpu_seconds, free_port, pss_kib, tree, wait_port  # noqa: E402

CURVE = (1000, 2500, 5000, 9900)
HAPROXY_CONF = """
global
    nbthread {cores}
    maxconn 9950
defaults
    mode http
    timeout connect 5s
    timeout client 1h
    timeout server 1h
    timeout tunnel 1h
frontend tls
    bind 127.0.0.1:{port} ssl crt {combined} alpn http/1.1
    default_backend app
backend app
    server s1 127.0.0.1:{backend}
"""


def raise_nofile():
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def rss_kib(pids):
    total = 0
    for p in pids:
        try:
            with open(f"/proc/{p}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1])
        except OSError:
            pass
    return total


def kernel():
    """The machine's TCP sockets in use, their buffer memory (KiB) and the slab their
    `struct sock`s live in (KiB; needs root, else None)."""
    out = {}
    with open("/proc/net/sockstat") as f:
        for line in f:
            if line.startswith("TCP:"):
                fields = line.split()[1:]
                values = dict(zip(fields[::2], map(int, fields[1::2])))
                out["sockets"] = values["inuse"]
                out["buffers_kib"] = values["mem"] * os.sysconf("SC_PAGE_SIZE") // 1024
    out["slab_kib"] = None
    try:
        with open("/proc/slabinfo") as f:
            for line in f:
                parts = line.split()
                if parts and parts[0] in ("TCP", "TCPv6"):
                    active, size = int(parts[1]), int(parts[3])
                    out["slab_kib"] = (out["slab_kib"] or 0) + active * size // 1024
    except OSError:
        pass
    return out


def idle_cpu_percent(pids, seconds):
    before = cpu_seconds(pids)
    time.sleep(seconds)
    return (cpu_seconds(pids) - before) / seconds * 100


def start_backend():
    proc = subprocess.Popen([BENCHD, "127.0.0.1:0"], stdout=subprocess.PIPE, text=True, preexec_fn=raise_nofile)
    return proc, int(proc.stdout.readline().strip().rsplit(":", 1)[1])


def start_loadgen(port, count, steps=(), source=None):
    cmd = [LOADGEN, "idle", f"127.0.0.1:{port}", "--conns", str(count)]
    if steps:
        cmd += ["--steps", ",".join(map(str, steps))]
    if source:
        cmd += ["--from", source]
    return subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, preexec_fn=raise_nofile)


def read_json(proc, timeout=600):
    """The loadgen's next line (it prints one when it reaches a step or ends)."""
    ready, _, _ = select.select([proc.stdout], [], [], timeout)
    if not ready:
        raise RuntimeError(f"loadgen said nothing in {timeout} s")
    line = proc.stdout.readline()
    if not line:
        raise RuntimeError(f"loadgen ended early (exit {proc.poll()})")
    return json.loads(line)


def tell(proc, line="go"):
    proc.stdin.write(line + "\n")
    proc.stdin.flush()


def stop(proc):
    if proc and proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def start_proxy(name, cert, key, backend, workdir):
    port = free_port()
    if name == "wssbridge":
        cmd = [WSSBRIDGE, "--listen", f"127.0.0.1:{port}", "--cert", cert, "--key", key,
               "--to", f"127.0.0.1:{backend}", "-q"]
    else:
        combined = os.path.join(workdir, "combined.pem")
        with open(combined, "w") as f:
            f.write(open(cert).read() + open(key).read())
        conf = os.path.join(workdir, "haproxy.cfg")
        with open(conf, "w") as f:
            f.write(HAPROXY_CONF.format(cores=os.cpu_count() or 1, port=port, combined=combined, backend=backend))
        cmd = [shutil.which("haproxy") or "/usr/sbin/haproxy", "-f", conf, "-db"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, preexec_fn=raise_nofile)
    wait_port(port)
    time.sleep(0.5)
    return proc, port


def curve(name, cert, key, workdir, idle_seconds):
    backend_proc, backend = start_backend()
    proxy = gen = None
    rows = []
    try:
        proxy, port = start_proxy(name, cert, key, backend, workdir)
        pids = tree(proxy.pid)
        base = pss_kib(pids)
        gen = start_loadgen(port, CURVE[-1], CURVE[:-1])
        for count in CURVE:
            step = read_json(gen)
            assert step["opened"] == count, step
            time.sleep(1.0)
            pids = tree(proxy.pid)
            pss, rss = pss_kib(pids), rss_kib(pids)
            k = kernel()
            cpu = idle_cpu_percent(pids, idle_seconds)
            per = step["ms_per_1000"]
            rows.append({"count": count, "pss": pss, "rss": rss, "kib_per_tunnel": (pss - base) / count,
                         "ms_last_1000": per[-1] if per else None, "ms_first_1000": per[0] if per else None,
                         "idle_cpu": cpu, **k})
            print(f"{name} {count}: PSS {pss} KiB ({(pss - base) / count:.1f} KiB/tunnel), "
                  f"last 1,000 opened in {rows[-1]['ms_last_1000']} ms, idle CPU {cpu:.2f}%, kernel {k}", flush=True)
            tell(gen)
        echoed = read_json(gen)["echoed"]
        return {"base": base, "rows": rows, "echoed": echoed}
    finally:
        stop(gen)
        stop(proxy)
        stop(backend_proc)


def hundred_thousand(total, proxies, cert, key, idle_seconds, outdir):
    backends = [start_backend() for _ in range(6)]
    port = free_port()
    bridges, gens = [], []
    try:
        for i in range(proxies):
            backend = backends[i % len(backends)][1]
            proc = subprocess.Popen([WSSBRIDGE, "--listen", f"127.0.0.1:{port}", "--reuse-port", "--cert", cert,
                                     "--key", key, "--to", f"127.0.0.1:{backend}", "-q"],
                                    stdout=subprocess.DEVNULL,
                                    stderr=open(os.path.join(outdir, f"wssbridge-{i}.log"), "w"))
            bridges.append(proc)
        wait_port(port)
        time.sleep(1.0)
        dead = [b.pid for b in bridges if b.poll() is not None]
        if dead:
            raise RuntimeError(f"wssbridge processes {dead} did not start (--reuse-port)")
        pids = [p for b in bridges for p in tree(b.pid)]
        base = pss_kib(pids)
        kernel_before = kernel()
        clients = 6
        shares = [total // clients + (1 if i < total % clients else 0) for i in range(clients)]
        began = time.time()
        gens = [start_loadgen(port, n, source=f"127.0.0.{11 + i}") for i, n in enumerate(shares)]
        opened = sum(read_json(g, timeout=1200)["opened"] for g in gens)
        took = time.time() - began
        time.sleep(2.0)
        pss, rss = pss_kib(pids), rss_kib(pids)
        k = kernel()
        per_process = sorted((len(os.listdir(f"/proc/{b.pid}/fd")) - 8) // 2 for b in bridges)
        cpu = idle_cpu_percent(pids, idle_seconds)
        for g in gens:
            tell(g, "check")
        echoed = sum(read_json(g, timeout=600)["echoed"] for g in gens)
        return {"total": total, "proxies": proxies, "opened": opened, "echoed": echoed, "took": took,
                "base": base, "pss": pss, "rss": rss, "kernel_before": kernel_before, "kernel": k,
                "idle_cpu": cpu, "per_process": per_process}
    finally:
        for g in gens:
            stop(g)
        for b in bridges:
            stop(b)
        for proc, _ in backends:
            stop(proc)


def summary(stamp, curves, big, idle_seconds):
    lines = [f"# wssbridge bench-scale — {stamp}", "",
             f"Idle upgraded WebSocket tunnels, ECDSA P-256, release build; idle CPU over {idle_seconds:g} s. "
             "KiB per tunnel: the proxy's PSS over its PSS at rest, divided by the count. Kernel: the "
             "whole machine's TCP sockets (clients, proxy, backends), their buffer memory and the TCP "
             "slab (`struct sock`, about 2.3 KiB each).", ""]
    if curves:
        lines += ["## The curve, one process", ""]
        lines += ["| proxy | tunnels | RSS KiB | PSS KiB | KiB per tunnel | ms to open the last 1,000 | "
                  "idle CPU % | TCP sockets | TCP buffers KiB | TCP slab KiB |", "|---|---|---|---|---|---|---|---|---|---|"]
    notes = []
    for name, c in curves.items():
        for r in c["rows"]:
            lines.append(f"| {name} | {r['count']:,} | {r['rss']:,} | {r['pss']:,} | {r['kib_per_tunnel']:.1f} | "
                         f"{r['ms_last_1000']} | {r['idle_cpu']:.2f} | {r['sockets']:,} | {r['buffers_kib']:,} | "
                         f"{r['slab_kib'] if r['slab_kib'] is not None else 'n/a'} |")
        first, last = c["rows"][0]["ms_last_1000"], c["rows"][-1]["ms_last_1000"]
        ratio = f"{last / first:.2f}x" if first and last else "n/a"
        notes.append(f"{name}: at rest {c['base']:,} KiB PSS; the last 1,000 at {c['rows'][-1]['count']:,} took "
                     f"{ratio} the time of the first 1,000; {c['echoed']:,} of {CURVE[-1]:,} echoed afterwards.")
    if curves:
        lines += ["", *[f"- {n}" for n in notes], ""]
    if big:
        kib = (big["pss"] - big["base"]) / max(big["opened"], 1)
        lines += ["## 100,000 on one machine", "",
                  f"{big['proxies']} wssbridge processes with `--reuse-port` on one port, 6 backends, 6 loadgens "
                  f"from 127.0.0.11-16.", "", "| what | value |", "|---|---|",
                  f"| opened / echoed afterwards | {big['opened']:,} / {big['echoed']:,} of {big['total']:,} |",
                  f"| time to open them all | {big['took']:.0f} s |",
                  f"| tunnels per process (from descriptors), min–max | {big['per_process'][0]:,}–{big['per_process'][-1]:,} |",
                  f"| proxies' PSS at rest / holding them | {big['base']:,} / {big['pss']:,} KiB ({kib:.1f} KiB per tunnel) |",
                  f"| proxies' RSS holding them | {big['rss']:,} KiB |",
                  f"| kernel TCP sockets before / holding | {big['kernel_before']['sockets']:,} / {big['kernel']['sockets']:,} |",
                  f"| kernel TCP buffers holding | {big['kernel']['buffers_kib']:,} KiB |",
                  f"| kernel TCP slab before / holding | {big['kernel_before']['slab_kib']} / {big['kernel']['slab_kib']} KiB |",
                  f"| proxies' idle CPU, % of one core | {big['idle_cpu']:.2f} |", ""]
    return "\n".join(lines) + "\n"


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--idle-seconds", type=float, default=30.0)
    parser.add_argument("--total", type=int, default=100_000, help="tunnels in the many-process part (0: skip)")
    parser.add_argument("--proxies", type=int, default=11)
    parser.add_argument("--peers", default="wssbridge,haproxy", help="proxies for the curve ('' to skip)")
    opts = parser.parse_args()
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    outdir = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bench", "results",
                          f"scale-{stamp}")
    os.makedirs(outdir, exist_ok=True)
    workdir = tempfile.mkdtemp(prefix="wssbridge-scale-")
    try:
        cert, key = certificates(workdir)["ecdsa"]
        curves = {}
        for name in filter(None, opts.peers.split(",")):
            print(f"curve: {name}", flush=True)
            curves[name] = curve(name, cert, key, workdir, opts.idle_seconds)
        big = None
        if opts.total:
            print(f"{opts.total:,} tunnels through {opts.proxies} processes", flush=True)
            big = hundred_thousand(opts.total, opts.proxies, cert, key, opts.idle_seconds, outdir)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    text = summary(stamp, curves, big, opts.idle_seconds)
    with open(os.path.join(outdir, "summary.md"), "w") as f:
        f.write(text)
    with open(os.path.join(outdir, "results.json"), "w") as f:
        json.dump({"curves": curves, "hundred_thousand": big}, f, indent=1)
    print(text)
    print(f"results in {outdir}")
    ok = all(c["echoed"] == CURVE[-1] for c in curves.values()) and (not big or big["echoed"] == big["total"])
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
