"""Files that must survive a crash once written."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


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


def make_private_dir(path: Path) -> None:
    """Create ``path`` (and parents) if needed and make it accessible to its owner only (0700)."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(path, 0o700)  # an existing directory keeps its mode on mkdir; set it every start


def make_private(path: str | os.PathLike[str]) -> None:
    """Make a database file and its journal, WAL and shared-memory files owner-only (0600).

    SQLite creates ``-wal``, ``-shm`` and ``-journal`` files with the database file's mode, so
    setting it right after the first connection covers the ones created later too.
    """
    base = os.fspath(path)
    for name in (base, base + "-wal", base + "-shm", base + "-journal"):
        try:
            os.chmod(name, 0o600)
        except FileNotFoundError:
            continue
