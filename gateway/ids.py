"""Identifiers for messages, contacts and events: UUIDv7 strings (RFC 9562).

Why not ``uuid.uuid4()``: every call is a ``getrandom`` system call that releases the GIL, and
on a busy gateway the event loop then waits for the store's writer thread to hand the GIL back
(a few milliseconds each time, several times per request). Here each thread draws its random
bits from a 4 KiB buffer of ``os.urandom`` (one system call per ~400 identifiers), so the
identifiers stay unpredictable. Version 7 puts the millisecond time first, so new rows land at
the end of the UNIQUE indexes instead of at random pages, and ids sort by creation time.
"""

from __future__ import annotations

import os
import threading
import time

_CHUNK = 4096
_RAND_BYTES = 10  # 12 bits rand_a + 62 bits rand_b need 74 bits
_RAND_A = 0xFFF
_RAND_B = (1 << 62) - 1


class _Pool(threading.local):
    buf: bytes = b""
    pos: int = 0


_pool = _Pool()


def _after_fork() -> None:
    # A child must not repeat its parent's buffered randomness.
    global _pool
    _pool = _Pool()


os.register_at_fork(after_in_child=_after_fork)


def new_id() -> str:
    """A new UUIDv7 in its canonical 36-character form; safe from any thread."""
    pool = _pool
    pos = pool.pos
    if pos + _RAND_BYTES > len(pool.buf):
        pool.buf = os.urandom(_CHUNK)
        pos = 0
    pool.pos = pos + _RAND_BYTES
    rand = int.from_bytes(pool.buf[pos:pos + _RAND_BYTES])
    value = ((time.time_ns() // 1_000_000) << 80 | 0x7 << 76 | ((rand >> 62) & _RAND_A) << 64
             | 0b10 << 62 | rand & _RAND_B)
    h = f"{value:032x}"
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"
