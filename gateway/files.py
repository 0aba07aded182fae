"""Files that must survive a crash once written."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from gateway.plugin.files import write_durably  # noqa: F401  (the core writes durably too)


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


def make_private_tree(root: Path, *, skip: tuple[Path, ...] = ()) -> None:
    """Take group and other permissions off every directory and file under ``root``.

    The net under the rule that each component creates its files owner-only: state kept by
    plug-ins (SQLite files, JSON) is covered whoever wrote it. Directories in ``skip`` (the
    attachment store, large and written 0600 file by file) are made private but not walked.
    """
    skipped = {p.resolve() for p in skip}
    for folder, dirs, files in os.walk(root):
        here = Path(folder)
        _drop_group_other(here, 0o700)
        for name in files:
            _drop_group_other(here / name, 0o600)
        for name in list(dirs):
            if (here / name).resolve() in skipped:
                _drop_group_other(here / name, 0o700)
                dirs.remove(name)


def _drop_group_other(path: Path, mode: int) -> None:
    try:
        if os.lstat(path).st_mode & 0o077 and not path.is_symlink():
            os.chmod(path, mode)
    except FileNotFoundError:
        pass  # removed meanwhile (a temporary file)


def probe_disk(directory: Path, size: int = 65_536) -> None:
    """Write, fsync and remove ``size`` bytes in ``directory``; OSError when the disk is full.

    SQLite may reuse WAL space on a full disk and still commit a tiny probe; a fresh file
    needs the free blocks every new attachment and raw mail needs too.
    """
    probe = directory / ".ready-probe"
    try:
        with open(probe, "wb") as fh:
            fh.write(b"\0" * size)
            fh.flush()
            os.fsync(fh.fileno())
    finally:
        with contextlib.suppress(OSError):
            probe.unlink()
