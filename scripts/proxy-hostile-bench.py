#!/usr/bin/env python3
"""The front door under hostile connections (issue 14): a benchmark, not a test.

Starts the agent's front door (a static upstream: a tiny HTTP server in this script), then:
  1. RSS before, with N idle client connections held (default 10,000), and after they close;
  2. a well-behaved client's latency (p50/p99 over sequential requests) alone, and while H
     hostile connections (default 1,000: silent, h2 preface only, slow header trickle) are held.
Prints one table. Usage:

    cargo build --release
    python3 scripts/proxy-hostile-bench.py [--binary target/release/endpoint-metrics-agent]
        [--idle 10000] [--hostile 1000] [--requests 2000]

The agent runs under the unit's limit (LimitNOFILE=65536) with max_connections above N; this
script raises its own file limit to match.
"""
import argparse
import asyncio
import os
import re
import resource
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

# The unit's LimitNOFILE, or as much of it as this shell may grant.
NOFILE = min(65536, resource.getrlimit(resource.RLIMIT_NOFILE)[1])


class Ok(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Headers and body go out in separate writes: without this, Nagle and delayed ACKs add
    # 40 ms to every request and the benchmark measures Python, not the front door.
    disable_nagle_algorithm = True

    def do_POST(self):
        n = int(self.headers.get("Content-Length") or 0)
        self.rfile.read(n)
        body = b"ok\n"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def start_agent(binary, upstream_port, workdir):
    config = os.path.join(workdir, "agent.toml")
    with open(config, "w") as f:
        f.write(
            f"""[endpoint]
name = "bench"
instance_id = "i-bench"
[output]
emf_destination = "file:{workdir}/emf.jsonl"
[gpu]
enabled = false
[docker]
enabled = false
[admin]
enabled = false
[proxy]
enabled = true
listen = "127.0.0.1:0"
max_connections = 60000
idle_timeout_ms = 600000
[[proxy.upstream]]
component = "model"
url = "http://127.0.0.1:{upstream_port}"
"""
        )
    log = open(os.path.join(workdir, "agent.log"), "w+")
    proc = subprocess.Popen(
        ["prlimit", f"--nofile={NOFILE}:{NOFILE}", binary, "run", "--config", config],
        stdout=subprocess.DEVNULL,
        stderr=log,
    )
    deadline = time.time() + 30
    while time.time() < deadline:
        log.seek(0)
        m = re.search(r"front door listening.*?address=\"?([0-9.:]+)", log.read())
        if m:
            host, port = m.group(1).rsplit(":", 1)
            return proc, (host, int(port))
        time.sleep(0.1)
    proc.kill()
    sys.exit("the front door did not start; see " + log.name)


async def hold(addr, n, kind):
    """Opens n connections of a kind and returns their writers (held open)."""
    held = []
    for i in range(n):
        try:
            r, w = await asyncio.open_connection(*addr)
        except OSError as e:
            print(f"  connection {i} of {n} ({kind}) failed: {e}", file=sys.stderr)
            break
        if kind == "h2":
            w.write(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00")
        elif kind == "trickle":
            w.write(b"POST /invocations HTTP/1.1\r\nHost: x\r\n")
        held.append(w)
        if i % 500 == 499:
            await asyncio.sleep(0.05)
    return held


def latencies(addr, requests):
    s = socket.create_connection(addr)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    req = b"POST /invocations HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\nhi"
    out = []
    for _ in range(requests):
        t = time.perf_counter()
        s.sendall(req)
        buf = b""
        while not buf.endswith(b"ok\n"):
            chunk = s.recv(4096)
            if not chunk:
                raise SystemExit("the front door closed the well-behaved client")
            buf += chunk
        out.append((time.perf_counter() - t) * 1e6)
    s.close()
    out.sort()
    return statistics.median(out), out[int(len(out) * 0.99) - 1]


async def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--binary", default="target/release/endpoint-metrics-agent")
    ap.add_argument("--idle", type=int, default=10_000)
    ap.add_argument("--hostile", type=int, default=1_000)
    ap.add_argument("--requests", type=int, default=2_000)
    args = ap.parse_args()
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    upstream = ThreadingHTTPServer(("127.0.0.1", 0), Ok)
    threading.Thread(target=upstream.serve_forever, daemon=True).start()
    with tempfile.TemporaryDirectory() as workdir:
        proc, addr = start_agent(args.binary, upstream.server_address[1], workdir)
        try:
            time.sleep(1)
            rows = [("RSS at start (KiB)", rss_kib(proc.pid))]
            held = await hold(addr, args.idle, "silent")
            await asyncio.sleep(2)
            rows.append((f"RSS with {len(held)} idle connections (KiB)", rss_kib(proc.pid)))
            for w in held:
                w.close()
            held.clear()
            await asyncio.sleep(3)
            rows.append(("RSS after they closed (KiB)", rss_kib(proc.pid)))
            p50, p99 = latencies(addr, args.requests)
            rows.append(("well-behaved client alone: p50 / p99 (us)", f"{p50:.0f} / {p99:.0f}"))
            third = args.hostile // 3
            hostile = await hold(addr, third, "silent")
            hostile += await hold(addr, third, "h2")
            hostile += await hold(addr, args.hostile - 2 * third, "trickle")
            await asyncio.sleep(1)
            p50, p99 = latencies(addr, args.requests)
            rows.append(
                (f"with {len(hostile)} hostile connections held: p50 / p99 (us)", f"{p50:.0f} / {p99:.0f}")
            )
            rows.append(("RSS with the hostile connections (KiB)", rss_kib(proc.pid)))
            for w in hostile:
                w.close()
        finally:
            proc.terminate()
            proc.wait(timeout=60)
    width = max(len(r[0]) for r in rows)
    for name, value in rows:
        print(f"{name:<{width}}  {value}")


if __name__ == "__main__":
    asyncio.run(main())
