"""A private PostgreSQL cluster for fault tests: its own data directory and port, stopped and
restarted at will, never the shared server other tests use.

``initdb`` and ``pg_ctl`` come from ``/usr/lib/postgresql/*/bin``. PostgreSQL refuses to run
as root, so as root the cluster runs as the ``postgres`` system user (``runuser``); as anyone
else it runs as that user.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import psycopg

from gateway.testing.services import free_port, unavailable

__all__ = ["PrivatePostgres"]


def _bin(name: str) -> str:
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    if not found:
        unavailable(f"{name} is not installed (Debian: postgresql)")
    return found[-1]


class PrivatePostgres:
    """``with PrivatePostgres() as pg:`` a cluster on ``pg.port``; ``pg.restart()``."""

    def __init__(self) -> None:
        self.port = free_port()
        self.root = Path(tempfile.mkdtemp(prefix="intake-pg-", dir="/tmp"))
        self.data = self.root / "data"
        self._as: list[str] = []
        if os.geteuid() == 0:
            try:
                pw = pwd.getpwnam("postgres")
            except KeyError:
                unavailable("running as root and there is no postgres user to run a cluster as")
            os.chown(self.root, pw.pw_uid, pw.pw_gid)
            self._as = ["runuser", "-u", "postgres", "--"]

    @property
    def dsn(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, *args: str, timeout: float = 60) -> None:
        subprocess.run([*self._as, *args], check=True, capture_output=True, timeout=timeout)

    def start(self) -> PrivatePostgres:
        if not (self.data / "PG_VERSION").exists():
            self._run(_bin("initdb"), "-D", str(self.data), "-U", "postgres",
                      "--auth=trust", "--no-sync", "-E", "UTF8")
        options = (f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.root}"
                   " -c fsync=on -c synchronous_commit=on -c max_connections=100"
                   " -c shared_buffers=32MB")
        self._run(_bin("pg_ctl"), "-D", str(self.data), "-l", str(self.root / "log"),
                  "-o", options, "-w", "-t", "30", "start")
        self._wait_up()
        return self

    def _wait_up(self) -> None:
        deadline = time.monotonic() + 30
        while True:
            try:
                with psycopg.connect(self.dsn, connect_timeout=2):
                    return
            except psycopg.OperationalError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)

    def stop(self, mode: str = "fast") -> None:
        with contextlib.suppress(subprocess.CalledProcessError):
            self._run(_bin("pg_ctl"), "-D", str(self.data), "-m", mode, "-w", "stop")

    def restart(self) -> None:
        """Stop (fast: every connection is cut) and start again on the same port and data."""
        self.stop("fast")
        self.start()

    def __enter__(self) -> PrivatePostgres:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop("immediate")
        shutil.rmtree(self.root, ignore_errors=True)
