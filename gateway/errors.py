"""One error root, split by who must act.

::

    IntakeError
    ├── ConfigError          the operator: bad or missing configuration; the process does not start
    ├── RejectedInput        the sender: HTTP 4xx / SMTP 5xx with ``reason`` a person can act on
    │   ├── Unauthorized     missing, bad or replayed signature (HTTP 401/403)
    │   ├── NotFound         what the request names does not exist (HTTP 404)
    │   ├── TooLarge         over a size limit (HTTP 413 / SMTP 552)
    │   └── RateLimited      too many requests from one sender (HTTP 429 / SMTP 450)
    ├── TransientError       retry later: store or broker unavailable (HTTP 503 / SMTP 451)
    │   └── StorageFull      the disk under the data directory is full (SMTP 451 4.3.1)
    └── PermanentError       will never succeed: dead-letter it, do not retry

Foreign exceptions are translated once, at the boundary that sees them, to the most specific
class, with ``raise ... from exc`` so the cause stays in the traceback.
"""

from __future__ import annotations


class IntakeError(Exception):
    """Root of every error the gateway raises on purpose."""


class ConfigError(IntakeError):
    """The configuration is wrong; the message names the key and what is expected."""


class RejectedInput(IntakeError):
    """The sender's input cannot be accepted; ``reason`` is safe to show to the sender.

    ``status`` is the HTTP status an HTTP adapter answers with; ``smtp_code`` the SMTP reply code.
    The reason never echoes customer data back into logs.
    """

    status: int = 400
    smtp_code: int = 550

    def __init__(self, reason: str, *, field: str | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.field = field


class Unauthorized(RejectedInput):
    """Missing, invalid or stale signature: fail closed."""

    status = 401
    smtp_code = 530


class Forbidden(RejectedInput):
    """Authenticated but not allowed (e.g. a signature that does not match)."""

    status = 403
    smtp_code = 550


class NotFound(RejectedInput):
    """The request names a message, file or ticket that does not exist (or no longer does)."""

    status = 404
    smtp_code = 550


class TooLarge(RejectedInput):
    """A body, a file or a message exceeds its configured limit."""

    status = 413
    smtp_code = 552

    def __init__(self, reason: str, *, field: str | None = None,
                 limit: int | None = None) -> None:
        super().__init__(reason, field=field)
        self.limit = limit
        """The limit that was exceeded (bytes or a count), when one applies."""


class RateLimited(RejectedInput):
    """Too many requests from one sender in the window; ``retry_after`` in seconds."""

    status = 429
    smtp_code = 450

    def __init__(self, reason: str, *, retry_after: float) -> None:
        super().__init__(reason)
        self.retry_after = retry_after


class TransientError(IntakeError):
    """Something we depend on is unavailable right now; the same call may succeed later.

    ``retry_after`` (seconds) is set when the other side said when to come back.
    """

    retry_after: float | None = None


class StorageFull(TransientError):
    """No room left to keep the message durably (ENOSPC, EDQUOT, SQLITE_FULL).

    Nothing was accepted; the sender retries once the operator has made room."""


class PermanentError(IntakeError):
    """The operation can never succeed (e.g. the recipient does not exist); dead-letter it."""
