"""The test process's own memory, from ``/proc/self``: the gateway under test runs in it."""

from __future__ import annotations

from pathlib import Path

_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")


def _status_kib(field: str) -> int:
    for line in _STATUS.read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise LookupError(field)


def rss_bytes() -> int:
    """Resident memory now."""
    return _status_kib("VmRSS") * 1024


def peak_bytes() -> int:
    """The most resident memory since the last :func:`reset_peak` (or the start)."""
    return _status_kib("VmHWM") * 1024


def reset_peak() -> bool:
    """Start a new peak from the current RSS (Linux ≥ 4.0); False when the kernel refuses."""
    try:
        _CLEAR_REFS.write_text("5")
    except OSError:
        return False
    return True
