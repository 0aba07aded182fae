"""Files an adapter keeps under the data directory (a quarantine) that must survive a crash.

State every replica needs belongs in :attr:`AdapterContext.state`; files are for what an
operator inspects on this machine.
"""

from __future__ import annotations

import os
import re
import tempfile
import unicodedata
from pathlib import Path

__all__ = ["safe_filename", "write_durably"]


def write_durably(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data`` atomically and durably (temp file, fsync, rename, fsync dir).

    A reader sees the old content or the new, never a part; after return, a power loss keeps
    the new content.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)  # the rename is durable only once the directory is synced
    finally:
        os.close(dir_fd)


_UNSAFE = re.compile(r"[\x00-\x1f\x7f/\\:*?\"<>|]+")


def safe_filename(name: str, *, fallback: str = "attachment") -> str:
    """A file name with no path, no control or reserved characters, no leading dots, ≤ 120 chars."""
    # Header values arrive with undecodable bytes as lone surrogates, which no encoder takes.
    name = name.encode("utf-8", "surrogatepass").decode("utf-8", "replace")
    name = unicodedata.normalize("NFC", name)
    # Keep only the last path component of whatever separators the sender's OS used.
    name = re.split(r"[/\\]", name)[-1]
    name = _UNSAFE.sub("_", name).strip().lstrip(".").strip()
    if not name:
        return fallback
    if len(name) > 120:
        stem, dot, ext = name.rpartition(".")
        name = (stem[: 110] + dot + ext[:9]) if dot and len(ext) < 10 else name[:120]
    return name
