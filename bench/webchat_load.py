"""The chat's WebSocket under a crowd: N concurrent visitors, K messages each, one gateway.

    .venv/bin/python bench/webchat_load.py [--visitors 1000] [--messages 3] [--timeout 600]

In one run, against one ``intake-gateway serve`` process on a fresh data directory:

1. **baseline**: ``N × K`` messages through the JSON API (``POST /v1/messages``, 64 at a time),
   each a new contact: the gateway's CPU time per message through the core's plainest door;
2. ``N`` visitor sessions are opened over HTTP and 50 warm-up WebSockets connected; the
   gateway's RSS is read, then ``N`` WebSockets connect and authenticate and the RSS is read
   again: **memory per idle connection** = the difference / N;
3. every visitor sends K messages one after another over its socket, all visitors at once,
   waiting for each answer: **CPU per message** (the gateway's user + system time, from
   ``/proc/<pid>/stat``) and its ratio to the baseline's.

Every message must be answered with a ticket number (each visitor's first opens a ticket, the
later ones follow up on it); the script exits 1 otherwise. Nothing here is timed by a test;
``tests/test_webchat_load.py`` runs a small crowd in the default suite.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gateway.testing.drivers_webchat import Visitors, load_toml

TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise LookupError("VmRSS")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def wait_healthy(url: str, proc: subprocess.Popen[bytes], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    async with aiohttp.ClientSession() as http:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"the gateway exited with {proc.returncode}")
            try:
                async with http.get(f"{url}/healthz") as r:
                    if r.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.1)
    raise RuntimeError("the gateway did not become healthy")


async def api_baseline(url: str, count: int) -> int:
    gate = asyncio.Semaphore(64)
    ok = 0
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=64)) as http:
        async def one(i: int) -> None:
            nonlocal ok
            body = {"contact": {"email": f"baseline-{i}@example.org"},
                    "text": f"Baseline question {i}: is order {200000 + i} on its way?"}
            async with gate, http.post(f"{url}/v1/messages", json=body,
                                       headers={"Idempotency-Key": uuid.uuid4().hex}) as r:
                if r.status < 300:
                    ok += 1
        await asyncio.gather(*(one(i) for i in range(count)))
    return ok


async def run(args: argparse.Namespace) -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(soft, 4 * args.visitors + 1000)),
                                                hard))
    n, k = args.visitors, args.messages
    with tempfile.TemporaryDirectory(prefix="webchat-load-") as tmp:
        config = Path(tmp) / "gateway.toml"
        config.write_text(f"[server]\nmax_connections = {2 * n + 500}\n"
                          + load_toml(n + 50))
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        exe = Path(sys.executable).with_name("intake-gateway")
        proc = subprocess.Popen([str(exe), "serve", "--config", str(config), "--data-dir",
                                 str(Path(tmp) / "data"), "--listen", f"127.0.0.1:{port}"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            await wait_healthy(url, proc)
            cpu0 = cpu_seconds(proc.pid)
            t0 = time.monotonic()
            base_ok = await api_baseline(url, n * k)
            base_cpu = cpu_seconds(proc.pid) - cpu0
            base_wall = time.monotonic() - t0
            async with Visitors(url, 50) as warm, Visitors(url, n) as crowd:
                await warm.open_sessions()
                await warm.connect()
                await crowd.open_sessions()
                rss_before = rss_bytes(proc.pid)
                t0 = time.monotonic()
                await crowd.connect()
                connect_wall = time.monotonic() - t0
                rss_idle = rss_bytes(proc.pid)
                cpu0 = cpu_seconds(proc.pid)
                t0 = time.monotonic()
                result = await crowd.chat(k, timeout=args.timeout)
                chat_wall = time.monotonic() - t0
                chat_cpu = cpu_seconds(proc.pid) - cpu0
                rss_after = rss_bytes(proc.pid)
        finally:
            proc.terminate()
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
    per_idle = (rss_idle - rss_before) / n
    per_msg = chat_cpu / max(result.answered, 1)
    per_base = base_cpu / max(base_ok, 1)
    print(f"visitors {n}, messages each {k}")
    print(f"baseline  API: {base_ok}/{n * k} answered in {base_wall:.1f} s, "
          f"gateway CPU {1e6 * per_base:.0f} µs per message")
    print(f"connect      : {n} WebSockets opened and authenticated in {connect_wall:.1f} s")
    print(f"memory       : RSS {rss_before / 2**20:.1f} MiB before, {rss_idle / 2**20:.1f} MiB "
          f"with {n} idle connections: {per_idle / 1024:.1f} KiB per idle connection "
          f"({rss_after / 2**20:.1f} MiB after the chat)")
    print(f"chat         : {result.answered}/{result.sent} answered in {chat_wall:.1f} s, "
          f"{result.tickets} tickets, gateway CPU {1e6 * per_msg:.0f} µs per message, "
          f"{per_msg / per_base:.2f}× the API baseline")
    if result.errors:
        print(f"errors ({len(result.errors)}): {result.errors[:5]}")
    ok = (not result.errors and result.answered == n * k and result.tickets == n
          and base_ok == n * k)
    print("OK" if ok else "FAILED: not every message was answered")
    return 0 if ok else 1


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--visitors", type=int, default=1000)
    p.add_argument("--messages", type=int, default=3)
    p.add_argument("--timeout", type=float, default=600.0,
                   help="bound on the chat phase, seconds")
    args = p.parse_args()
    return asyncio.run(asyncio.wait_for(run(args), args.timeout + 300))


if __name__ == "__main__":
    sys.exit(main())
