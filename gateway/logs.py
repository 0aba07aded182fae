"""What the gateway's log may carry: no secret in any line, and no flood of repeated failures.

Three measures, installed once per process by :func:`install_log_guards` (``serve`` and
``Gateway.start`` both call it; repeated calls are no-ops):

- **Redaction at the source.** A log record factory rewrites every record as it is created,
  before any handler or filter sees it, so no handler added later, at any level, can print a
  secret. It replaces every secret value registered with :func:`register_secret` (the config
  registers each one it resolves) and anything shaped like a Telegram bot token in a URL
  (``/bot<digits>:<token>/``), message and traceback alike.
- **Quiet libraries.** httpx logs each request URL at INFO (the Bot API puts the token in the
  path), python-telegram-bot logs whole updates (customer text) at DEBUG, aiosmtpd logs peers
  and envelopes at INFO and DEBUG. Their loggers are held at WARNING unless the operator set a
  level on them explicitly.
- **Throttled resource errors.** When the process runs out of file descriptors, asyncio logs a
  traceback per failed ``accept()``; one line per interval with a count says the same.

Customer data is kept out of log lines by the code that logs them: log outcomes, ticket numbers
and ids, never addresses, phone numbers or text. Redaction is the net under that rule: secrets,
and anything shaped like an email address or a phone number, in messages and tracebacks alike.
"""

from __future__ import annotations

import errno
import logging
import re
import threading
import time
import urllib.parse
from collections.abc import Callable
from typing import Any

REDACTED = "[redacted]"

_BOT_TOKEN = re.compile(r"bot\d{3,}:[A-Za-z0-9_-]{10,}")
"""A Telegram bot token as it appears in Bot API URLs (``/bot123456:AA...``)."""

_MIN_SECRET_CHARS = 4
"""Shorter values would shred every line; no real secret is that short."""

QUIET_LOGGERS = ("httpx", "httpcore", "telegram", "mail.log", "hpack", "aiormq", "aio_pika")
"""Third-party loggers that log URLs, headers or message contents below WARNING."""

RESOURCE_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})

_lock = threading.Lock()
_secrets: set[str] = set()
_pattern: re.Pattern[str] | None = None
_installed = False


def register_secret(value: str | None) -> None:
    """Redact ``value`` (and its URL-encoded form) from every log record from now on."""
    if not value or len(value) < _MIN_SECRET_CHARS:
        return
    global _pattern
    with _lock:
        before = len(_secrets)
        _secrets.add(value)
        _secrets.add(urllib.parse.quote(value, safe=""))
        if len(_secrets) != before:
            # Longest first, so a secret containing another is replaced whole.
            alternatives = sorted(_secrets, key=len, reverse=True)
            _pattern = re.compile("|".join(re.escape(s) for s in alternatives))


_EMAIL = re.compile(r"[\w.+-]+@[\w-]+(?:\.[\w-]+)+")
_PHONE = re.compile(r"(?<![\w+])\+\d[\d ()-]{6,18}\d")
"""An address or an E.164-looking number: what an exception's text may carry of a customer
(``SMTPRecipientsRefused`` names the recipient, a provider error the number it refused)."""


def redact(text: str) -> str:
    """``text`` with every registered secret, bot-token-shaped URL part, email address and
    phone number replaced (the last two as a net under the rule not to log them)."""
    pattern = _pattern
    if pattern is not None:
        text = pattern.sub(REDACTED, text)
    if "bot" in text:
        text = _BOT_TOKEN.sub(f"bot{REDACTED}", text)
    if "@" in text:
        text = _EMAIL.sub("[email]", text)
    if "+" in text:
        text = _PHONE.sub("[phone]", text)
    return text


def _redacting(factory: Callable[..., logging.LogRecord]) -> Callable[..., logging.LogRecord]:
    def make_record(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = factory(*args, **kwargs)
        try:
            message = record.getMessage()
        except Exception:  # a bad format string: let the handler report it as usual
            return record
        # The redacted text replaces the format and its arguments: handlers neither format
        # it again nor redact it again (``redacted``, read by gateway/jsonlog.py).
        record.msg, record.args = redact(message), None
        record.redacted = True
        if record.exc_info and not record.exc_text:
            # Tracebacks carry URLs too (httpx errors name the request); format it now, redacted,
            # and handlers print the cached text.
            record.exc_text = redact(logging.Formatter().formatException(record.exc_info))
        if record.stack_info:
            record.stack_info = redact(record.stack_info)
        return record

    make_record.redacting = True  # type: ignore[attr-defined]
    return make_record


class ResourceErrorThrottle(logging.Filter):
    """Lets one record per ``interval`` through for "out of file descriptors"-style failures.

    The one that passes is shortened to a line (no traceback) that counts those suppressed
    since the last one; everything else passes untouched.
    """

    def __init__(self, interval: float = 60.0, *, clock: Callable[[], float] = time.monotonic
                 ) -> None:
        super().__init__()
        self.interval = interval
        self.clock = clock
        self._last: float | None = None
        self.suppressed = 0

    def filter(self, record: logging.LogRecord) -> bool:
        code = _resource_errno(record)
        if code is None:
            return True
        now = self.clock()
        if self._last is not None and now - self._last < self.interval:
            self.suppressed += 1
            return False
        suppressed, self.suppressed, self._last = self.suppressed, 0, now
        what = "accept failed" if "accept" in str(record.msg) else "out of resources"
        record.msg = (f"{what}: {errno.errorcode.get(code, code)} (file descriptors or memory "
                      f"exhausted; {suppressed} similar suppressed; at most one line per "
                      f"{self.interval:.0f} s)")
        record.args, record.exc_info, record.exc_text = None, None, None
        return True


def _resource_errno(record: logging.LogRecord) -> int | None:
    exc = record.exc_info[1] if record.exc_info else None
    if isinstance(exc, OSError) and exc.errno in RESOURCE_ERRNOS:
        return exc.errno
    return None


THROTTLE = ResourceErrorThrottle()


def install_log_guards() -> None:
    """Redact secrets in every record, quiet chatty libraries, throttle resource errors (once)."""
    global _installed
    with _lock:
        if _installed:
            return
        _installed = True
        current = logging.getLogRecordFactory()
        if not getattr(current, "redacting", False):
            logging.setLogRecordFactory(_redacting(current))
    for name in QUIET_LOGGERS:
        logger = logging.getLogger(name)
        if logger.level == logging.NOTSET:
            logger.setLevel(logging.WARNING)
    # asyncio reports failed accepts through its own logger; aiohttp its failed requests.
    for name in ("asyncio", "aiohttp.server"):
        logging.getLogger(name).addFilter(THROTTLE)
