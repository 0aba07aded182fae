"""Helpers every plug-in's settings need: secrets, durations, listen addresses.

Secrets are never values in the config file: a key names an environment variable (``*_env``) or
a file (``*_file``), :func:`resolve_secret` reads it once at start and registers it with the log
redactor, so it never appears in a log line.
"""

from __future__ import annotations

import contextvars
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path

from gateway.errors import ConfigError
from gateway.logs import register_secret


def resolve_secret(env: str | None, file: str | None, *, key: str) -> str | None:
    """Read a secret from the environment variable ``env`` or the file ``file`` (one of them).

    Raises ConfigError naming ``key`` when the named variable or file is missing or empty.
    Every value read is registered with the log redactor, so it never appears in a log line.
    """
    missing = _MISSING.get()
    if missing is not None and env and not file and not os.environ.get(env):
        # Checking a file, not starting: an unset variable is a step of the deployment
        # ("set $X"), not a fault of the file. The placeholder never leaves the check.
        missing.append((key, env))
        return MISSING_SECRET_PLACEHOLDER
    value = _read_secret(env, file, key=key)
    register_secret(value)
    return value


MISSING_SECRET_PLACEHOLDER = "unset-secret-placeholder-for-check-config-only"
_MISSING: contextvars.ContextVar[list[tuple[str, str]] | None] = contextvars.ContextVar(
    "missing_secrets", default=None)


@contextmanager
def collecting_missing_secrets() -> Iterator[list[tuple[str, str]]]:
    """Within the block, :func:`resolve_secret` records (key, variable) for each secret whose
    environment variable is unset and returns a placeholder instead of failing.

    Only ``check-config`` uses it: the file is valid, and the variables still to be set are
    reported as such. ``serve`` never does: there a missing secret stops the start.
    """
    found: list[tuple[str, str]] = []
    token = _MISSING.set(found)
    try:
        yield found
    finally:
        _MISSING.reset(token)


def _read_secret(env: str | None, file: str | None, *, key: str) -> str | None:
    if env and file:
        raise ConfigError(f"{key}: give either {key}_env or {key}_file, not both")
    if env:
        value = os.environ.get(env)
        if not value:
            raise ConfigError(f"{key}_env names ${env}, which is not set or empty")
        return value
    if file:
        try:
            value = Path(file).read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise ConfigError(f"{key}_file: cannot read {file}: {exc.strerror}") from exc
        if not value:
            raise ConfigError(f"{key}_file: {file} is empty")
        return value
    return None


_DURATION = re.compile(r"^\s*(\d+)\s*(s|m|h|d)\s*$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(text: str, *, key: str) -> timedelta:
    """``"90s"``, ``"15m"``, ``"24h"``, ``"7d"`` → timedelta; else ConfigError naming ``key``."""
    match = _DURATION.match(text)
    if not match:
        raise ConfigError(f"{key}: expected a duration like '30s', '15m', '24h' or '7d', "
                          f"got {text!r}")
    return timedelta(seconds=int(match.group(1)) * _UNITS[match.group(2)])


def split_listen(listen: str, *, key: str = "server.listen") -> tuple[str, int]:
    """``"host:port"`` (IPv6 in brackets) → (host, port)."""
    host, sep, port = listen.rpartition(":")
    if not sep or not port.isdigit() or not host:
        raise ConfigError(f"{key}: expected HOST:PORT, got {listen!r}")
    return host.strip("[]"), int(port)


def is_loopback(host: str) -> bool:
    """True for addresses only this machine can reach."""
    import ipaddress

    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
