"""Broker processes a test owns: started on a spare port, killed, frozen and restarted.

Fault tests stop these, never the shared servers other tests use (shared/services.md).
"""

from __future__ import annotations

import contextlib
import signal
import socket
import subprocess
import time
from pathlib import Path


class PrivateServer:
    """A broker process on a fixed spare port and directory that a test may kill and restart."""

    def __init__(self, argv: list[str], port: int, log: Path) -> None:
        self.argv = argv
        self.port = port
        self.log = log
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        """Start it and wait until it accepts connections."""
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(self.argv, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.argv[0]} exited: {self.log.read_text()[-2000:]}")
            with contextlib.suppress(OSError), socket.create_connection(
                ("127.0.0.1", self.port), timeout=0.2
            ):
                return
            time.sleep(0.05)
        raise RuntimeError(f"{self.argv[0]} did not listen on {self.port} within 10s")

    def kill(self) -> None:
        """SIGKILL: no goodbye to the clients, as in a crash."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)

    def freeze(self) -> None:
        """SIGSTOP: connections stay open and nothing answers, as in a hung server.

        Returns once every thread has stopped: SIGSTOP takes effect asynchronously (10-25 ms
        on a loaded machine), and a broker still acknowledging meanwhile made frozen-server
        tests fail by luck.
        """
        assert self.proc is not None
        self.proc.send_signal(signal.SIGSTOP)
        deadline = time.monotonic() + 10
        while not _all_threads_stopped(self.proc.pid):
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.argv[0]} did not stop within 10s")
            time.sleep(0.001)

    def thaw(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGCONT)


def _all_threads_stopped(pid: int) -> bool:
    """Every thread of ``pid`` is stopped (state T or t in /proc); True where there is no /proc."""
    tasks = Path(f"/proc/{pid}/task")
    if not tasks.is_dir():
        return True
    for stat in tasks.glob("*/stat"):
        with contextlib.suppress(OSError):  # a thread that exited meanwhile
            if stat.read_text().rpartition(")")[2].split()[0] not in "tT":
                return False
    return True
