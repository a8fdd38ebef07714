#!/usr/bin/env python3
"""Front door under hostile connections: a benchmark, not a test (docs/reliability.md).

Starts the built agent with the front door on loopback in front of a small keep-alive copy served
by this script, then reports:
  1. RSS (VmRSS of the agent) before, with N idle keep-alive connections open (each made one
     request, then went quiet), and after they close (two sampling ticks later: the agent hands
     closed connections' memory back once a tick);
  2. a well-behaved client's request latency (p50, p99, max over R sequential keep-alive requests)
     with no other client, then while H hostile connections are held (silent TCP, an h2c preface
     and nothing else, a request head trickled a byte at a time).

Usage: scripts/hostile-bench.py [--agent target/release/endpoint-metrics-agent] [--idle 10000]
       [--hostile 1000] [--requests 2000] [--answer-bytes 2]
--answer-bytes sets the copy's answer body: with a large one (256 KiB), each idle connection
has carried a large answer before it went quiet (what its buffers keep then).
Every loop is bounded in count and time; the script raises its own file limit to the hard one.
"""

import argparse
import asyncio
import os
import resource
import signal
import socket
import subprocess
import sys
import tempfile
import time

H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00"
REQUEST = b"POST /invocations HTTP/1.1\r\nHost: bench\r\nContent-Length: 2\r\n\r\n{}"


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return -1


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


async def copy_server(answer_bytes):
    """A model copy: answers every request on a connection with 200 and answer_bytes of "o"."""
    answer = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % answer_bytes + b"o" * answer_bytes

    async def serve(reader, writer):
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":")[1])
                if length:
                    await reader.readexactly(length)
                writer.write(answer)
                await writer.drain()
        except (asyncio.IncompleteReadError, asyncio.CancelledError, ConnectionError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0, backlog=4096)
    return server, server.sockets[0].getsockname()[1]


async def read_response(reader):
    head = await reader.readuntil(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":")[1])
    body = await reader.readexactly(length)
    return head, body


async def one_request(reader, writer):
    writer.write(REQUEST)
    await writer.drain()
    head, _ = await read_response(reader)
    return head.startswith(b"HTTP/1.1 200")


async def open_idle(port, n, batch=500):
    """n keep-alive connections that each made one request and now say nothing."""
    conns = []
    for start in range(0, n, batch):
        opened = await asyncio.gather(
            *(asyncio.open_connection("127.0.0.1", port) for _ in range(min(batch, n - start))),
            return_exceptions=True,
        )
        ok = [c for c in opened if not isinstance(c, Exception)]
        answered = await asyncio.gather(
            *(asyncio.wait_for(one_request(r, w), 30) for r, w in ok), return_exceptions=True
        )
        conns.extend(c for c, a in zip(ok, answered) if a is True)
    return conns


async def latency(port, requests):
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    times = []
    for _ in range(requests):
        t = time.perf_counter()
        ok = await asyncio.wait_for(one_request(reader, writer), 30)
        times.append((time.perf_counter() - t) * 1e6)
        if not ok:
            raise RuntimeError("a well-behaved request failed")
    writer.close()
    times.sort()
    return times[len(times) // 2], times[int(len(times) * 0.99)], times[-1]


async def hostile(port, n):
    """n connections: a third silent, a third an h2c preface only, a third trickling a head."""
    conns = []
    for i in range(n):
        try:
            r, w = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            continue
        if i % 3 == 1:
            w.write(H2_PREFACE)
        elif i % 3 == 2:
            w.write(b"POST /invocations HTTP/1.1\r\nHost: x\r\n")
        conns.append((r, w))
    return conns


async def trickle(conns, stop):
    """One header byte every second on each trickling connection (slowloris) until stop."""
    while not stop.is_set():
        for i, (_, w) in enumerate(conns):
            if i % 3 == 2 and not w.is_closing():
                w.write(b"X")
        await asyncio.sleep(1)


async def main(args):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    server, copy_port = await copy_server(args.answer_bytes)
    work = tempfile.mkdtemp(prefix="ema-hostile-bench-")
    config = os.path.join(work, "agent.toml")
    front_port, admin_port = free_port(), free_port()
    with open(config, "w") as f:
        f.write(
            f"""[endpoint]
name = "bench"
instance_id = "i-bench"
[output]
emf_destination = "file:{work}/emf.jsonl"
[gpu]
enabled = false
[docker]
enabled = false
[admin]
listen = "127.0.0.1:{admin_port}"
[proxy]
enabled = true
listen = "127.0.0.1:{front_port}"
max_connections = {args.max_connections}
[[proxy.upstream]]
component = "model"
url = "http://127.0.0.1:{copy_port}"
"""
        )

    # The agent's limit can be at most the hard one: above it setrlimit fails in the child,
    # which Popen reports only as "Exception occurred in preexec_fn".
    file_limit = min(args.file_limit, hard)

    def limit():
        resource.setrlimit(resource.RLIMIT_NOFILE, (file_limit, file_limit))

    agent = subprocess.Popen(
        [args.agent, "run", "--config", config],
        stdout=subprocess.DEVNULL,
        stderr=open(os.path.join(work, "agent.log"), "w"),
        preexec_fn=limit,
        env={**os.environ, "AWS_EC2_METADATA_DISABLED": "true"},
    )
    try:
        for _ in range(100):
            try:
                socket.create_connection(("127.0.0.1", front_port), 0.1).close()
                break
            except OSError:
                await asyncio.sleep(0.1)
        await asyncio.sleep(2)
        print(
            f"agent {args.agent}, file limit {file_limit}, max_connections {args.max_connections}, answers of {args.answer_bytes} bytes"
        )
        print(f"RSS before: {rss_kib(agent.pid) / 1024:.1f} MiB")
        conns = await open_idle(front_port, args.idle)
        await asyncio.sleep(1)
        print(
            f"RSS with {len(conns)} idle keep-alive connections open ({args.idle - len(conns)} of {args.idle} refused past the cap): {rss_kib(agent.pid) / 1024:.1f} MiB"
        )
        for _, w in conns:
            w.close()
        conns.clear()
        await asyncio.sleep(3)
        print(f"RSS after they closed (3 s): {rss_kib(agent.pid) / 1024:.1f} MiB")

        p50, p99, worst = await latency(front_port, args.requests)
        print(f"latency alone, {args.requests} requests: p50 {p50:.0f} us, p99 {p99:.0f} us, max {worst:.0f} us")
        held = await hostile(front_port, args.hostile)
        stop = asyncio.Event()
        trickling = asyncio.create_task(trickle(held, stop))
        await asyncio.sleep(1)
        p50, p99, worst = await latency(front_port, args.requests)
        print(
            f"latency with {len(held)} hostile connections held: p50 {p50:.0f} us, p99 {p99:.0f} us, max {worst:.0f} us"
        )
        print(f"RSS with them held: {rss_kib(agent.pid) / 1024:.1f} MiB")
        stop.set()
        await trickling
        for _, w in held:
            w.close()
    finally:
        agent.send_signal(signal.SIGTERM)
        try:
            agent.wait(60)
        except subprocess.TimeoutExpired:
            agent.kill()
        server.close()
        print(f"agent exit status {agent.returncode}; log: {work}/agent.log")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--agent", default="target/release/endpoint-metrics-agent")
    parser.add_argument("--idle", type=int, default=10000)
    parser.add_argument("--hostile", type=int, default=1000)
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--max-connections", type=int, default=4096)
    parser.add_argument("--file-limit", type=int, default=65536)
    parser.add_argument("--answer-bytes", type=int, default=2)
    args = parser.parse_args()
    if not os.path.exists(args.agent):
        sys.exit(f"no agent binary at {args.agent}: cargo build --release first")
    asyncio.run(main(args))
