"""Finding the real servers tests talk to.

Addresses come from environment variables with the defaults of ``shared/services.md``. A test
whose server is unreachable is skipped with the reason, unless ``INTAKE_REQUIRE_SERVICES=1``
(as CI sets it), in which case it fails: in CI a missing server is a defect, not a skip.
"""

from __future__ import annotations

import os
import shutil
import socket
from urllib.parse import urlsplit

import pytest

DEFAULTS: dict[str, str] = {
    "INTAKE_TEST_POSTGRES_DSN": "postgresql://postgres@127.0.0.1:5432/test",
    "INTAKE_TEST_NATS_URL": "nats://127.0.0.1:4222",
    "INTAKE_TEST_RABBITMQ_URL": "amqp://guest:guest@127.0.0.1:5672/",
    "INTAKE_TEST_REDIS_URL": "redis://127.0.0.1:6379/0",
}


def services_required() -> bool:
    """True when a missing server must fail the test instead of skipping it."""
    return os.environ.get("INTAKE_REQUIRE_SERVICES") == "1"


def unavailable(reason: str) -> None:
    """Skip (or, when services are required, fail) the current test with ``reason``."""
    if services_required():
        pytest.fail(f"required service unavailable: {reason}", pytrace=False)
    pytest.skip(reason)


def service_url(env: str) -> str:
    """The URL for a service, from ``env`` or the default, skipping if nothing listens there."""
    url = os.environ.get(env, DEFAULTS[env])
    parts = urlsplit(url)
    host = parts.hostname or "127.0.0.1"
    port = parts.port
    if port is None:
        unavailable(f"{env}={url} names no port")
    try:
        with socket.create_connection((host, port), timeout=1.0):
            pass
    except OSError as exc:
        unavailable(f"{env}: nothing answers at {host}:{port} ({exc.strerror or exc})")
    return url


def require_executable(name: str, *, hint: str) -> str:
    """The path of an executable, skipping (or failing in CI) with ``hint`` when it is absent."""
    path = shutil.which(name)
    if path is None:
        # Debian puts daemons in sbin, which a non-root PATH may lack.
        for folder in ("/usr/sbin", "/sbin", "/usr/lib/postgresql"):
            candidate = os.path.join(folder, name)
            if os.access(candidate, os.X_OK):
                return candidate
        unavailable(f"{name} is not installed ({hint})")
    assert path is not None
    return path


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
