"""One client cannot stall the door: connection limits, timeouts and allowances, on the wire.

Every test talks to the real listeners: raw sockets and aiohttp against the HTTP listener,
raw sockets and smtplib against the SMTP adapter. Limits are configured low so the door fills
with a handful of sockets; a second loopback address (127.0.0.2) plays "another customer".
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import re
import signal
import smtplib
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from gateway.logs import ResourceErrorThrottle
from gateway.plugin.limits import peer_key
from gateway.runtime import Gateway
from intake_adapters.mail import SmtpAdapter
from tests.conftest import MakeGateway

SUPPORT = "support@example.com"
ROOT = Path(__file__).resolve().parent.parent


def smtp_of(gw: Gateway) -> SmtpAdapter:
    return next(a for a in gw.adapters if isinstance(a, SmtpAdapter))


async def until(check: Callable[[], Any], timeout: float = 10.0) -> Any:
    deadline = time.monotonic() + timeout
    while not (result := check()):
        if time.monotonic() > deadline:
            raise AssertionError("timed out")
        await asyncio.sleep(0.02)
    return result


class Sockets:
    """Raw client sockets held open by a test, closed at the end."""

    def __init__(self) -> None:
        self.held: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []

    async def open(self, port: int, *, source: str = "127.0.0.1"
                   ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        pair = await asyncio.open_connection("127.0.0.1", port, local_addr=(source, 0))
        self.held.append(pair)
        return pair

    def close(self) -> None:
        for _, writer in self.held:
            writer.close()
        self.held.clear()


@pytest.fixture
async def sockets() -> AsyncIterator[Sockets]:
    held = Sockets()
    yield held
    held.close()


async def reads_eof(reader: asyncio.StreamReader, timeout: float) -> bool:
    """True once the server closed the connection (anything it sent first is skipped)."""
    with contextlib.suppress(ConnectionError):
        async with asyncio.timeout(timeout):
            while await reader.read(4096):
                pass
    return reader.at_eof()


async def raw_get(port: int, path: str = "/healthz", *, source: str = "127.0.0.1"
                  ) -> tuple[int, bytes]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=(source, 0))
    try:
        writer.write(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
        async with asyncio.timeout(10):
            data = await reader.read()
    finally:
        writer.close()
    status = int(data.split(b" ", 2)[1]) if data.startswith(b"HTTP/") else 0
    return status, data


async def post_form(base_url: str, *, source: str = "127.0.0.1") -> int:
    connector = aiohttp.TCPConnector(local_addr=(source, 0), force_close=True)
    async with aiohttp.ClientSession(connector=connector) as session:
        form = aiohttp.FormData()
        for name, value in (("lang", "en"), ("name", "Mei"), ("email", "mei@example.org"),
                            ("message", "my router blinks red"), ("website", "")):
            form.add_field(name, value)
        async with session.post(f"{base_url}/form", data=form) as resp:
            page = await resp.text()
            assert "data-ticket-number" in page or resp.status >= 400, page[:300]
            return resp.status


def smtp_config(extra: str = "") -> str:
    return f'[adapters.smtp]\nlisten = "127.0.0.1:0"\naccept = ["{SUPPORT}"]\n{extra}'


def mail(sender: str, n: int) -> bytes:
    return (f"From: {sender}\r\nTo: {SUPPORT}\r\nSubject: question {n}\r\n"
            f"Message-ID: <q{n}.{time.monotonic_ns()}@example.org>\r\n\r\n"
            f"Hello, this is question {n}.\r\n").encode()


# -- peers ------------------------------------------------------------------------------------


def test_a_peer_is_an_ipv4_address_or_an_ipv6_64() -> None:
    assert peer_key("192.0.2.7") == "192.0.2.7"
    assert peer_key("2001:db8:1:2:aaaa::1") == peer_key("2001:db8:1:2:ffff::9") \
        == "2001:db8:1:2::/64"
    assert peer_key("2001:db8:1:3::1") != peer_key("2001:db8:1:2::1")
    assert peer_key("::ffff:192.0.2.7") == "192.0.2.7"


# -- HTTP -------------------------------------------------------------------------------------


async def test_idle_http_sockets_fill_the_total_limit_then_time_out_and_the_door_reopens(
        make_gateway: MakeGateway, sockets: Sockets) -> None:
    gw = await make_gateway("[server]\nmax_connections = 20\nmax_connections_per_peer = 0\n"
                            "idle_timeout = 1.5\n[adapters.webform]\nrate_limit = 0\n")
    idle = [await sockets.open(gw.port) for _ in range(20)]
    await until(lambda: gw.http_gate.open == 20)
    status, answer = await raw_get(gw.port)
    assert status == 503, answer
    assert b"Retry-After: 5" in answer and b"too many connections" in answer
    # Nobody closes the idle sockets: the idle timeout does, and the door opens again.
    for reader, _ in idle:
        assert await reads_eof(reader, timeout=10), "an idle socket was not closed"
    assert (await raw_get(gw.port))[0] == 200
    assert await post_form(gw.url) == 200


async def test_one_peer_holding_its_share_does_not_stall_anyone_else(
        make_gateway: MakeGateway, sockets: Sockets) -> None:
    gw = await make_gateway("[server]\nmax_connections = 100\nmax_connections_per_peer = 20\n"
                            "per_peer_exempt = []\n[adapters.webform]\nrate_limit = 0\n")
    for _ in range(20):
        await sockets.open(gw.port)
    await until(lambda: gw.http_gate.open == 20)
    assert (await raw_get(gw.port))[0] == 503  # the same peer, one more: refused politely
    # Another address is another peer: health and the web form still answer.
    assert (await raw_get(gw.port, source="127.0.0.2"))[0] == 200
    assert await post_form(gw.url, source="127.0.0.2") == 200
    sockets.close()
    await until(lambda: gw.http_gate.open == 0)
    assert (await raw_get(gw.port))[0] == 200


@pytest.mark.parametrize("exempt", ["", 'per_peer_exempt = ["127.0.0.1/32"]\n'])
async def test_a_proxy_on_loopback_or_named_in_per_peer_exempt_is_held_to_the_total_only(
        make_gateway: MakeGateway, sockets: Sockets, exempt: str) -> None:
    gw = await make_gateway("[server]\nmax_connections = 12\nmax_connections_per_peer = 5\n"
                            + exempt)
    for _ in range(10):
        await sockets.open(gw.port)
    await until(lambda: gw.http_gate.open == 10)
    assert (await raw_get(gw.port))[0] == 200
    for _ in range(2):
        await sockets.open(gw.port)
    await until(lambda: gw.http_gate.open == 12)
    assert (await raw_get(gw.port))[0] == 503  # the total still holds


async def test_a_slowloris_header_is_cut_off_after_the_idle_timeout(
        make_gateway: MakeGateway, sockets: Sockets) -> None:
    gw = await make_gateway("[server]\nidle_timeout = 1.0\n")
    reader, writer = await sockets.open(gw.port)
    writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
    started = time.monotonic()
    closed = False
    # The attack itself: one header byte every 0.1 s, for as long as the server listens.
    for byte in (b"X-Slow: " + b"a" * 200):
        with contextlib.suppress(ConnectionError):
            writer.write(bytes([byte]))
        with contextlib.suppress(TimeoutError, ConnectionError):
            async with asyncio.timeout(0.1):
                await reader.read(4096)
        if reader.at_eof() or writer.is_closing():
            closed = True
            break
    assert closed, "a header dribbled for 20 s was never cut off"
    assert time.monotonic() - started < 5


async def test_an_idle_keepalive_connection_is_closed_after_the_idle_timeout(
        make_gateway: MakeGateway, sockets: Sockets) -> None:
    gw = await make_gateway("[server]\nidle_timeout = 1.0\n")
    reader, writer = await sockets.open(gw.port)
    writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
    async with asyncio.timeout(5):
        head = await reader.readuntil(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200")
    started = time.monotonic()
    assert await reads_eof(reader, timeout=10)
    assert time.monotonic() - started < 5


async def test_a_body_that_does_not_arrive_is_cut_off_without_a_traceback(
        make_gateway: MakeGateway, sockets: Sockets, caplog: pytest.LogCaptureFixture) -> None:
    gw = await make_gateway("[server]\nbody_timeout = 1.0\n")
    reader, writer = await sockets.open(gw.port)
    writer.write(b"POST /v1/messages HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                 b"Content-Length: 5000\r\n\r\n{\"text\": \"")
    started = time.monotonic()
    assert await reads_eof(reader, timeout=10)
    assert time.monotonic() - started < 5
    assert not [r for r in caplog.records if r.levelno >= 40], caplog.text
    assert (await raw_get(gw.port))[0] == 200


# -- SMTP -------------------------------------------------------------------------------------


async def test_idle_smtp_sessions_get_421_beyond_the_limit_and_http_keeps_serving(
        make_gateway: MakeGateway, sockets: Sockets) -> None:
    gw = await make_gateway(smtp_config("max_connections = 20\nmax_connections_per_peer = 0\n")
                            + "[adapters.webform]\nrate_limit = 0\n")
    smtp = smtp_of(gw)
    for _ in range(20):
        reader, _ = await sockets.open(smtp.port)
        async with asyncio.timeout(5):
            assert (await reader.readline()).startswith(b"220 ")
    reader, _ = await sockets.open(smtp.port)
    async with asyncio.timeout(5):
        line = await reader.readline()
    assert line.startswith(b"421 4.7.0 too many connections"), line
    assert await reads_eof(reader, timeout=5)
    # The HTTP door is another door: it serves while SMTP is full.
    assert (await raw_get(gw.port))[0] == 200
    assert await post_form(gw.url) == 200
    sockets.close()
    await until(lambda: smtp.gate.open == 0)
    code, _ = await asyncio.to_thread(_noop_session, smtp.port, "127.0.0.1")
    assert code == 250


async def test_one_smtp_peer_at_its_limit_does_not_stop_another(
        make_gateway: MakeGateway, sockets: Sockets) -> None:
    gw = await make_gateway(smtp_config("max_connections = 100\nmax_connections_per_peer = 5\n"
                                        "per_peer_exempt = []\n"))
    smtp = smtp_of(gw)
    for _ in range(5):
        await sockets.open(smtp.port)
    await until(lambda: smtp.gate.open == 5)
    reader, _ = await sockets.open(smtp.port)
    async with asyncio.timeout(5):
        assert (await reader.readline()).startswith(b"421 4.7.0 too many connections from your")
    code, reply = await asyncio.to_thread(_send_one, smtp.port, "127.0.0.2",
                                          "mei@example.org", 1)
    assert code == 250, reply


def _noop_session(port: int, source: str) -> tuple[int, bytes]:
    with smtplib.SMTP("127.0.0.1", port, timeout=10, source_address=(source, 0)) as client:
        return client.noop()


def _send_one(port: int, source: str, sender: str, n: int) -> tuple[int, str]:
    with smtplib.SMTP("127.0.0.1", port, timeout=10, source_address=(source, 0)) as client:
        client.ehlo("client.example.org")
        try:
            client.sendmail(sender, [SUPPORT], mail(sender, n))
        except smtplib.SMTPSenderRefused as exc:
            return exc.smtp_code, exc.smtp_error.decode()
    return 250, "sent"


async def test_an_idle_smtp_session_is_closed_after_the_command_timeout(
        make_gateway: MakeGateway, sockets: Sockets) -> None:
    gw = await make_gateway(smtp_config("timeout = 1.0\n"))
    reader, _ = await sockets.open(smtp_of(gw).port)
    started = time.monotonic()
    assert await reads_eof(reader, timeout=10)
    assert time.monotonic() - started < 5


def test_the_smtp_command_timeout_defaults_to_a_minute() -> None:
    assert SmtpAdapter.Config().timeout == 60.0  # type: ignore[call-arg, attr-defined]


async def test_a_slow_data_phase_is_not_cut_by_the_command_timeout(
        make_gateway: MakeGateway, sockets: Sockets) -> None:
    gw = await make_gateway(smtp_config("timeout = 1.0\ndata_timeout = 30.0\n"))
    reader, writer = await sockets.open(smtp_of(gw).port)

    async def say(line: bytes) -> bytes:
        writer.write(line + b"\r\n")
        async with asyncio.timeout(10):
            answer = await reader.readline()
            while answer[3:4] == b"-":
                answer = await reader.readline()
        return answer

    async with asyncio.timeout(5):
        await reader.readline()
    assert (await say(b"EHLO client.example.org")).startswith(b"250")
    assert (await say(b"MAIL FROM:<mei@example.org>")).startswith(b"250")
    assert (await say(f"RCPT TO:<{SUPPORT}>".encode())).startswith(b"250")
    assert (await say(b"DATA")).startswith(b"354")
    body = mail("mei@example.org", 1).split(b"\r\n")
    for line in body:  # a slow link: the message takes longer than the command timeout
        writer.write(line + b"\r\n")
        await asyncio.sleep(0.3)
    answer = await say(b".")
    assert answer.startswith(b"250 2.0.0 OK"), answer


async def test_one_sender_and_one_client_get_450_beyond_their_allowance(
        make_gateway: MakeGateway) -> None:
    gw = await make_gateway(smtp_config("max_messages_per_sender = 3\n"
                                        "max_messages_per_client = 5\nrate_window = 600.0\n"
                                        "per_peer_exempt = []\n"))
    port = smtp_of(gw).port
    results = [await asyncio.to_thread(_send_one, port, "127.0.0.1", "flood@example.org", n)
               for n in range(4)]
    assert [code for code, _ in results] == [250, 250, 250, 450]
    assert results[3][1].startswith("4.7.1 too many messages from this sender, try again in")
    # Another sender from the same client: one more fits the client's allowance, then 450.
    other = [await asyncio.to_thread(_send_one, port, "127.0.0.1", "other@example.org", n)
             for n in range(2)]
    assert [code for code, _ in other] == [250, 450]
    assert other[1][1].startswith("4.7.1 too many messages from your address")
    # A different client is not held to the first one's allowance.
    assert (await asyncio.to_thread(_send_one, port, "127.0.0.2", "third@example.org", 9))[0] \
        == 250


# -- out of file descriptors -------------------------------------------------------------------


def test_resource_errors_are_logged_once_per_interval_with_a_count() -> None:
    now = [0.0]
    throttle = ResourceErrorThrottle(60.0, clock=lambda: now[0])

    def record() -> logging.LogRecord:
        try:
            raise OSError(errno.EMFILE, "Too many open files")
        except OSError:
            info = sys.exc_info()
        return logging.LogRecord("asyncio", logging.ERROR, __file__, 1,
                                 "socket.accept() out of system resource", None, info)

    first = record()
    assert throttle.filter(first) and first.exc_info is None
    assert first.getMessage().startswith("accept failed: EMFILE (")
    assert [throttle.filter(record()) for _ in range(50)] == [False] * 50
    now[0] = 61.0
    later = record()
    assert throttle.filter(later) and "50 similar suppressed" in later.getMessage()
    other = logging.LogRecord("asyncio", logging.ERROR, __file__, 1, "other", None, None)
    assert throttle.filter(other) and other.getMessage() == "other"


def _limit_files(n: int) -> Callable[[], None]:
    def apply() -> None:
        import resource

        resource.setrlimit(resource.RLIMIT_NOFILE, (n, n))
    return apply


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def test_running_out_of_file_descriptors_logs_one_line_not_a_traceback_per_accept(
        tmp_path: Path, sockets: Sockets) -> None:
    # A real process under a low open-file limit, with the connection limit switched off so the
    # descriptors run out: asyncio then fails every accept() for as long as it lasts.
    port = _free_port()
    config = tmp_path / "gateway.toml"
    config.write_text("[server]\nmax_connections = 0\nmax_connections_per_peer = 0\n"
                      "[adapters.smtp]\nenabled = false\n")
    log_file = tmp_path / "stderr.log"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with log_file.open("wb") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "gateway.cli", "serve", "--config", str(config),
             "--data-dir", str(tmp_path / "data"), "--listen", f"127.0.0.1:{port}"],
            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=err, env=env,
            preexec_fn=_limit_files(160))
    try:
        await until(lambda: "listening on" in log_file.read_text(), timeout=30)
        assert "open-file limit: 160 (hard 160)" in log_file.read_text()
        for _ in range(220):
            await sockets.open(port)
        # Unthrottled, the first failed accept already logs a traceback (and then one a second).
        await until(lambda: "accept failed: EMFILE" in log_file.read_text(), timeout=15)
        text = log_file.read_text()
        assert "Traceback" not in text, text[-3000:]
        assert "socket.accept() out of system resource" not in text
        assert len(re.findall("accept failed", text)) == 1
        sockets.close()
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
