"""Structured logs: one JSON object per line, with the correlation id of the work in progress.

``{"ts": "...Z", "level": "INFO", "logger": "intake.webform", "message": "...",
"correlation_id": "..."}``, plus ``"exc"`` with the (redacted) traceback. The message is the
record's text after :mod:`gateway.logs` redacted it (secrets, addresses, phone numbers); no
``extra`` fields are copied, so nothing a caller attaches to a record leaks into the line.
"""

from __future__ import annotations

import logging
import sys
from datetime import UTC, datetime
from typing import Literal, TextIO

import msgspec

from gateway.correlation import current_correlation_id
from gateway.logs import redact

LogFormat = Literal["auto", "json", "text"]
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


_encode = msgspec.json.Encoder().encode  # compact, UTF-8 as is: what json.dumps was asked for


class JsonLogFormatter(logging.Formatter):
    """Formats a record as one JSON line (see the module docstring)."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, object] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(
                timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "message": (record.getMessage() if getattr(record, "redacted", False)
                        else redact(record.getMessage())),
        }
        cid = current_correlation_id()
        if cid:
            line["correlation_id"] = cid
        if record.exc_info and not record.exc_text:
            record.exc_text = redact(self.formatException(record.exc_info))
        if record.exc_text:
            line["exc"] = record.exc_text
        return _encode(line).decode()


def configure_logging(fmt: LogFormat = "auto", *, level: int = logging.INFO,
                      stream: TextIO | None = None) -> str:
    """Install one stderr handler; ``auto`` is text on a terminal, JSON otherwise (a service
    manager, a container, a pipe). Returns the format chosen."""
    stream = stream or sys.stderr
    # One line per submission is logged: no format here names the caller's file, line, thread
    # or process, so the record need not look them up (a stack walk per record).
    logging._srcfile = None
    logging.logThreads = logging.logProcesses = logging.logMultiprocessing = False
    chosen = fmt
    if fmt == "auto":
        chosen = "text" if getattr(stream, "isatty", lambda: False)() else "json"
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonLogFormatter() if chosen == "json" else
                         logging.Formatter(TEXT_FORMAT))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    return chosen
