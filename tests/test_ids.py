"""Identifiers: valid UUIDv7, unique across threads and across a fork, ordered by time."""

from __future__ import annotations

import os
import threading
import time
import uuid

from gateway.ids import new_id


def test_ids_are_rfc9562_version_7() -> None:
    value = uuid.UUID(new_id())
    assert value.version == 7
    assert value.variant == uuid.RFC_4122
    # The first 48 bits are the Unix time in milliseconds.
    assert abs((value.int >> 80) - time.time_ns() // 1_000_000) < 5_000


def test_ids_are_unique_across_threads() -> None:
    found: list[list[str]] = [[] for _ in range(4)]

    def draw(out: list[str]) -> None:
        out.extend(new_id() for _ in range(20_000))

    threads = [threading.Thread(target=draw, args=(out,)) for out in found]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    every = [i for out in found for i in out]
    assert len(set(every)) == len(every) == 80_000


def test_ids_sort_by_creation_millisecond() -> None:
    first = new_id()
    time.sleep(0.002)
    assert new_id() > first


def test_a_forked_child_does_not_repeat_the_parents_ids() -> None:
    new_id()  # the parent's buffer now holds randomness a child could inherit
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the child
        os.write(write, "".join(new_id() for _ in range(50)).encode())
        os._exit(0)
    os.close(write)
    os.waitpid(pid, 0)
    with os.fdopen(read) as pipe:
        child = pipe.read()
    parent = [new_id() for _ in range(50)]
    child_ids = {child[i:i + 36] for i in range(0, len(child), 36)}
    assert len(child_ids) == 50
    # Same millisecond prefixes are likely; the random tails must differ.
    assert not {i[14:] for i in child_ids} & {i[14:] for i in parent}
