"""Readiness means ready (issue 9, item 4): a full disk, a stuck relay, a listener down.

The full disk is real: the gateway's data directory is a small tmpfs mounted for the test, and a
file fills it. Mounting needs root (CI runs as root); elsewhere the test skips, unless
INTAKE_REQUIRE_SERVICES=1 makes that a failure.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest

from gateway.testing.drivers_mail import customer_mail, smtp_transaction
from intake_adapters.mail import SmtpAdapter
from tests.conftest import MakeGateway

SUPPORT = "support@example.com"
os.environ["INTAKE_READY_HOOK_SECRET"] = "whsec_" + "cmVhZHluZXNzLXRlc3Qtc2VjcmV0LTAxMjM0NQ=="
SMTP = (f'[adapters.smtp]\nlisten = "127.0.0.1:0"\naccept = ["{SUPPORT}"]\n'
        "[adapters.mailer]\nenabled = false\n")


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 16 MiB tmpfs, unmounted after the test."""
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(mount)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        reason = f"cannot mount a tmpfs for a full-disk test: {done.stderr.strip()}"
        if os.environ.get("INTAKE_REQUIRE_SERVICES") == "1":
            pytest.fail(reason)
        pytest.skip(reason)
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def fill(disk: Path) -> Path:
    """Write until the disk says no; returns the filler, to delete to make room again."""
    filler = disk / "filler"
    with open(filler, "wb") as fh, contextlib.suppress(OSError):
        while True:
            fh.write(b"\0" * 65_536)
            fh.flush()
    return filler


async def ready(http: aiohttp.ClientSession, url: str) -> tuple[int, dict]:
    async with http.get(f"{url}/readyz") as resp:
        return resp.status, await resp.json()


async def test_a_full_disk_is_not_ready_and_says_insufficient_storage(
        make_gateway: MakeGateway, small_disk: Path) -> None:
    gw = await make_gateway(SMTP, data_dir=small_disk / "data")
    port = next(a for a in gw.adapters if isinstance(a, SmtpAdapter)).port
    async with aiohttp.ClientSession() as http:
        assert await ready(http, gw.url) == (200, {"status": "ready"})
        async with http.post(f"{gw.url}/v1/messages", json={
                "contact": {"email": "before@example.org"}, "text": "Before the disk fills"}) as r:
            assert r.status == 201
        filler = fill(small_disk)

        status, body = await ready(http, gw.url)
        assert status == 503 and "disk" in body["problems"], body
        async with http.post(f"{gw.url}/v1/messages", json={
                "contact": {"email": "full@example.org"}, "text": "full disk " * 9_000}) as r:
            assert r.status == 503
            assert "insufficient storage" in (await r.json())["error"]
        mail = customer_mail(sender="full@example.org", subject="Disk",
                             text="mail on a full disk " * 4_000,
                             message_id=f"{uuid.uuid4().hex}@example.org")
        reply = await asyncio.to_thread(smtp_transaction, port, sender="full@example.org",
                                        recipients=[SUPPORT], data=mail)
        assert reply.code == 451 and reply.text.startswith("4.3.1 insufficient storage"), reply

        # An operator can still read what was taken in, read-only.
        tail = await asyncio.to_thread(
            subprocess.run, [sys.executable, "-m", "gateway.cli", "tail", "--from-start",
                             "--data-dir", str(small_disk / "data")],
            capture_output=True, text=True, timeout=60)
        assert tail.returncode == 0, tail.stderr
        assert "ticket.created" in tail.stdout

        filler.unlink()
        deadline = time.monotonic() + 10
        while (await ready(http, gw.url))[0] != 200:
            assert time.monotonic() < deadline, "ready again once there is room"
            await asyncio.sleep(0.05)
        async with http.post(f"{gw.url}/v1/messages", json={
                "contact": {"email": "after@example.org"}, "text": "After the room is made"}) as r:
            assert r.status == 201


async def test_a_relay_whose_publish_never_returns_is_not_ready(
        make_gateway: MakeGateway) -> None:
    # A receiver that accepts the connection and never answers, with a publish timeout longer
    # than the test: the relay is stuck (not merely retrying a broker that is down).
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)
        port = silent.getsockname()[1]
        gw = await make_gateway(
            '[queue]\nbackend = "webhook"\nstuck_after = 0.5\n'
            f'[queue.settings]\nurl = "http://127.0.0.1:{port}/hook"\ntimeout = 300.0\n'
            'secret_env = "INTAKE_READY_HOOK_SECRET"\n')
        async with aiohttp.ClientSession() as http:
            assert (await ready(http, gw.url))[0] == 200
            async with http.post(f"{gw.url}/v1/messages", json={
                    "contact": {"email": "stuck@example.org"}, "text": "Hello"}) as r:
                assert r.status == 201
            deadline = time.monotonic() + 10
            while True:
                status, body = await ready(http, gw.url)
                if status == 503:
                    break
                assert time.monotonic() < deadline, "a stuck relay must show in /readyz"
                await asyncio.sleep(0.1)
            assert "relay" in body["problems"] and "events waiting" in body["problems"]["relay"]


async def test_a_broker_that_is_down_keeps_the_replica_ready(make_gateway: MakeGateway) -> None:
    # Nothing listens there: every publish fails at once and the relay backs off (0.2 s at
    # most). The gateway keeps taking messages into the outbox, so it stays ready for longer
    # than stuck_after, however many rounds of backoff that takes.
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    gw = await make_gateway(
        '[queue]\nbackend = "webhook"\nstuck_after = 1.0\nmax_backoff = 0.2\n'
        f'[queue.settings]\nurl = "http://127.0.0.1:{port}/hook"\nattempts = 1\n'
        'secret_env = "INTAKE_READY_HOOK_SECRET"\n')
    assert gw.relay is not None
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{gw.url}/v1/messages", json={
                "contact": {"email": "down@example.org"}, "text": "Hello"}) as r:
            assert r.status == 201
        started = time.monotonic()
        deadline = started + 20
        # Until the outage has lasted well past stuck_after, and the relay went round often:
        while time.monotonic() - started < 1.8 or gw.relay.failures < 5:
            assert time.monotonic() < deadline, "the relay should keep retrying"
            status, body = await ready(http, gw.url)
            assert status == 200, body
            await asyncio.sleep(0.1)


async def test_a_listener_that_stopped_is_not_ready(make_gateway: MakeGateway) -> None:
    gw = await make_gateway(SMTP)
    smtp = next(a for a in gw.adapters if isinstance(a, SmtpAdapter))
    async with aiohttp.ClientSession() as http:
        assert (await ready(http, gw.url))[0] == 200
        # The listening socket goes away under the adapter (as after an fd exhaustion crash).
        assert smtp._server is not None
        smtp._server.close()
        status, body = await ready(http, gw.url)
    assert status == 503 and body["problems"]["smtp"] == "the SMTP listener stopped serving"
