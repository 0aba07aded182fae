"""The correlation id: one per HTTP request or submission, in every log line and in the event.

A request may bring its own (``X-Request-Id``, e.g. from the proxy in front, when it is a
short token of safe characters); otherwise one is made. :meth:`IntakeService.submit` makes one
when none is set (SMTP sessions, IMAP fetches), so every event written carries the id of the
work that wrote it, as the CloudEvents extension attribute ``correlationid``.
"""

from __future__ import annotations

import contextvars
import os
import re

HEADER = "X-Request-Id"
_VALID = re.compile(r"^[A-Za-z0-9._:-]{8,64}$")
_current: contextvars.ContextVar[str | None] = contextvars.ContextVar("correlation_id",
                                                                     default=None)


def new_correlation_id() -> str:
    # 128 random bits as 32 hex digits, like uuid4().hex without its 2 µs of object building
    # (one per request).
    return os.urandom(16).hex()


def current_correlation_id() -> str | None:
    """The id of the work in progress, or None outside any."""
    return _current.get()


def accepted(given: str | None) -> str:
    """``given`` when it is a safe token (it goes into logs and events), else a new id."""
    return given if given and _VALID.match(given) else new_correlation_id()


def bind(value: str) -> contextvars.Token[str | None]:
    """Set the id for this task (and what it starts); undo with :func:`unbind`."""
    return _current.set(value)


def unbind(token: contextvars.Token[str | None]) -> None:
    _current.reset(token)
