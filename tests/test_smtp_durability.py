"""A 250 means durable: SIGKILL `intake-gateway serve` during an SMTP burst, restart, and every
mail that was answered 250 is in the queue exactly once."""

from __future__ import annotations

import json
import os
import signal
import smtplib
import subprocess
import sys
import threading
import time
import urllib.request
from collections import Counter
from pathlib import Path

from gateway.testing.drivers_mail import customer_mail, smtp_transaction
from gateway.testing.services import free_port

SUPPORT = "support@example.com"


def start_server(data_dir: Path, config: Path, http_port: int) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "gateway.cli", "serve", "--config", str(config),
         "--listen", f"127.0.0.1:{http_port}", "--data-dir", str(data_dir)],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def wait_ready(http_port: int, proc: subprocess.Popen[bytes]) -> None:
    for _ in range(300):
        assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/readyz", timeout=1) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.05)
    raise AssertionError("gateway did not become ready")


def test_sigkill_during_an_smtp_burst_loses_no_answered_mail(tmp_path: Path) -> None:
    smtp_port = free_port()
    config = tmp_path / "gateway.toml"
    # No relay for acknowledgements: they stay in the outbox (ack.failed), not under test here.
    config.write_text(f'[adapters.smtp]\nlisten = "127.0.0.1:{smtp_port}"\n'
                      f'accept = ["{SUPPORT}"]\n[adapters.mailer]\nenabled = false\n')
    data = tmp_path / "data"
    http_port = free_port()
    proc = start_server(data, config, http_port)
    answered: list[tuple[str, str]] = []  # (Message-ID, ticket number)
    lock = threading.Lock()
    stop = threading.Event()

    def client(n: int) -> None:
        for i in range(10_000):
            if stop.is_set():
                return
            message_id = f"burst-{n}-{i}@customers.example.org"
            sender = f"load{n}@customers.example.org"
            try:
                reply = smtp_transaction(smtp_port, sender=sender, recipients=[SUPPORT],
                                         data=customer_mail(sender=sender,
                                                            subject=f"burst {n}-{i}",
                                                            text=f"message {n}-{i}",
                                                            message_id=message_id),
                                         timeout=10)
            except (smtplib.SMTPException, OSError):
                return  # the server died mid-session: this mail was never answered 250
            if reply.code != 250:
                return
            assert reply.ticket is not None and reply.ticket[1] == "created", reply
            with lock:
                answered.append((message_id, reply.ticket[0]))

    try:
        wait_ready(http_port, proc)
        threads = [threading.Thread(target=client, args=(n,)) for n in range(16)]
        for t in threads:
            t.start()
        deadline = time.monotonic() + 60
        while len(answered) < 300 and time.monotonic() < deadline:
            time.sleep(0.01)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        stop.set()
        for t in threads:
            t.join(30)
    finally:
        stop.set()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stderr is not None:
            proc.stderr.close()

    # Restart on the same data: the store recovers from its WAL and serves again.
    http_port = free_port()
    proc = start_server(data, config, http_port)
    try:
        wait_ready(http_port, proc)
    finally:
        proc.terminate()
        proc.wait(10)
        if proc.stderr is not None:
            proc.stderr.close()
    out = subprocess.run(
        [sys.executable, "-m", "gateway.cli", "tail", "--from-start", "--data-dir", str(data),
         "--consumer", "audit"], capture_output=True, check=True, timeout=60)
    events = [json.loads(line) for line in out.stdout.splitlines()]
    created = Counter(e["subject"] for e in events if e["type"] == "ticket.created")
    assert len(answered) >= 300
    missing = [number for _, number in answered if created[number] != 1]
    assert not missing, f"{len(missing)} answered mails not in the queue exactly once"
    assert all(count == 1 for count in created.values()), "a mail was recorded twice"
    assert len({mid for mid, _ in answered}) == len(answered)
