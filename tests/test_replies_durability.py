"""Accepted means durable, for replies too: SIGKILL the gateway after the 202, restart it, and
the reply reaches the customer exactly once."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import aiohttp

from gateway.testing.services import free_port
from gateway.testing.smtp_capture import SmtpCapture
from tests.test_durability import wait_ready


def start(data_dir: Path, port: int, config: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "gateway.cli", "serve", "--listen", f"127.0.0.1:{port}",
         "--data-dir", str(data_dir), "--config", str(config)],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def write_config(path: Path, relay_port: int) -> Path:
    path.write_text(f'[intake]\ndefault_locale = "en"\n[replies]\nmax_backoff = 0.5\n'
                    f'[adapters.mailer]\nport = {relay_port}\nfrom_address = "help@example.com"\n'
                    "timeout = 2.0\n")
    return path


async def test_a_reply_accepted_before_a_sigkill_is_delivered_once_after_restart(
        tmp_path: Path) -> None:
    with SmtpCapture() as capture:
        # First the relay is unreachable: the reply is accepted (202) and waits in the outbox,
        # retried, when the gateway is killed.
        config = write_config(tmp_path / "gateway.toml", free_port())
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        proc = start(tmp_path / "data", port, config)
        try:
            await wait_ready(url, proc)
            async with aiohttp.ClientSession() as s:
                async with s.post(f"{url}/v1/messages", json={
                        "contact": {"email": "kill@customers.example.org"},
                        "text": "My router is broken"}) as resp:
                    assert resp.status == 201
                    number = (await resp.json())["ticket_number"]
                body = json.dumps({"text": "A technician comes tomorrow."}).encode()
                async with s.post(f"{url}/v1/tickets/{number}/replies", data=body, headers={
                        "Content-Type": "application/json",
                        "Idempotency-Key": "tech-1"}) as resp:
                    assert resp.status == 202
                    reply_id = (await resp.json())["reply_id"]
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        assert capture.to("kill@customers.example.org") == []

        # Restarted, with the relay back: the reply goes out, once.
        write_config(config, capture.port)
        port = free_port()
        proc = start(tmp_path / "data", port, config)
        try:
            await wait_ready(f"http://127.0.0.1:{port}", proc)
            mail = await capture.wait_for(lambda m: "kill@customers.example.org" in m.rcpt_tos,
                                          timeout=15)
            assert "A technician comes tomorrow." in mail.text()
            assert f"[{number}]" in mail.subject
            # Retried with the same key after the restart: the same reply, nothing new sent.
            async with aiohttp.ClientSession() as s, s.post(
                    f"http://127.0.0.1:{port}/v1/tickets/{number}/replies", data=body,
                    headers={"Content-Type": "application/json",
                             "Idempotency-Key": "tech-1"}) as resp:
                again = await resp.json()
            assert resp.status == 202 and again["reply_id"] == reply_id and again["replayed"]
            deadline = asyncio.get_running_loop().time() + 10
            while True:  # until the dispatcher has settled the row: then nothing more is sent
                out = subprocess.run(
                    [sys.executable, "-m", "gateway.cli", "tail", "--from-start",
                     "--data-dir", str(tmp_path / "data")], capture_output=True, check=True,
                    timeout=60)
                types = [json.loads(line)["type"] for line in out.stdout.splitlines()]
                if "reply.sent" in types:
                    break
                assert asyncio.get_running_loop().time() < deadline, types
                await asyncio.sleep(0.05)
        finally:
            proc.terminate()
            proc.wait(10)
        assert len(capture.to("kill@customers.example.org")) == 1, "exactly once"
        assert types.count("reply.queued") == 1 and types.count("reply.sent") == 1
