"""Answered means durable: SIGKILL the gateway under load, restart, every answered number is
in the queue exactly once."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path

import aiohttp

from gateway.testing.services import free_port


def start_server(data_dir: Path, port: int) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "gateway.cli", "serve", "--listen", f"127.0.0.1:{port}",
         "--data-dir", str(data_dir)],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


async def wait_ready(url: str, proc: subprocess.Popen[bytes]) -> None:
    async with aiohttp.ClientSession() as s:
        for _ in range(200):
            assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
            try:
                async with s.get(f"{url}/readyz") as resp:
                    if resp.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.05)
    raise AssertionError("gateway did not become ready")


async def test_sigkill_under_load_loses_no_answered_message(tmp_path: Path) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc = start_server(tmp_path, port)
    answered: list[str] = []
    try:
        await wait_ready(url, proc)

        async def client(n: int) -> None:
            async with aiohttp.ClientSession() as s:
                for i in range(10_000):
                    body = {"contact": {"email": f"load{n}@example.org"},
                            "text": f"message {n}-{i}"}
                    try:
                        async with s.post(f"{url}/v1/messages", json=body,
                                          headers={"Idempotency-Key": f"{n}-{i}"}) as resp:
                            data = await resp.json()
                    except (TimeoutError, aiohttp.ClientError, json.JSONDecodeError):
                        return  # the server died mid-request: this one was never answered
                    assert resp.status == 201, data
                    answered.append(data["ticket_number"])

        clients = [asyncio.create_task(client(n)) for n in range(16)]
        while len(answered) < 300:
            await asyncio.sleep(0.01)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        await asyncio.wait_for(asyncio.gather(*clients), 30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()

    # Restart on the same data: the store recovers from its WAL and serves again.
    port2 = free_port()
    proc = start_server(tmp_path, port2)
    try:
        await wait_ready(f"http://127.0.0.1:{port2}", proc)
    finally:
        proc.terminate()
        proc.wait(10)
    out = subprocess.run(
        [sys.executable, "-m", "gateway.cli", "tail", "--from-start", "--data-dir",
         str(tmp_path), "--consumer", "audit"], capture_output=True, check=True, timeout=60)
    events = [json.loads(line) for line in out.stdout.splitlines()]
    created = Counter(e["subject"] for e in events if e["type"] == "ticket.created")
    assert len(answered) >= 300
    missing = [n for n in answered if created[n] != 1]
    assert not missing, f"{len(missing)} answered tickets not in the queue exactly once"
    assert all(count == 1 for count in created.values())
