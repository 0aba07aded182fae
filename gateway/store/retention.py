"""``intake-gateway purge``: what is kept, for how long, on both stores.

Raw content goes first: message bodies (the stored ``InboundMessage``), the words of replies
sent (``replies.payload``; a reply still queued is kept), kept raw mails and attachments older
than ``retention.raw_after``. Ticket records (tickets, their messages' metadata,
acknowledgements, replies and references, contacts left without tickets, events long
relayed) go only after ``retention.records_for``, which may never be shorter than
``retention.legal_minimum`` (two years by the service standard; the operator may set more).

The statements are the same text on SQLite and PostgreSQL (``?`` placeholders, turned into
``%s`` for psycopg), and run in small batches through the store's own transaction, so a purge
beside a running gateway delays its commits by one batch at most.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from gateway.errors import ConfigError
from gateway.plugin.settings import parse_duration

_BATCH = 500


class _Conn(Protocol):
    def execute(self, sql: Any, params: Sequence[Any] = ...) -> Any: ...


class _Tx(Protocol):
    conn: Any


class _Runs(Protocol):
    async def run(self, fn: Callable[[Any], Any]) -> Any: ...


@dataclass
class PurgeReport:
    """What one purge removed, by kind."""

    bodies: int = 0
    files: int = 0
    tickets: int = 0
    messages: int = 0
    contacts: int = 0
    events: int = 0
    cutoffs: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class Cutoffs:
    """Epoch seconds: raw content before ``raw``, records before ``records`` (None: keep)."""

    raw: float
    records: float | None


def cutoffs(retention: Any, now: float | None = None) -> Cutoffs:
    """The cutoffs of ``[retention]``; ConfigError for records kept less than the minimum."""
    now = time.time() if now is None else now
    raw = parse_duration(retention.raw_after, key="retention.raw_after").total_seconds()
    minimum = parse_duration(retention.legal_minimum,
                             key="retention.legal_minimum").total_seconds()
    records = None
    if retention.records_for is not None:
        records = parse_duration(retention.records_for,
                                 key="retention.records_for").total_seconds()
        if records < minimum:
            raise ConfigError(f"retention.records_for = {retention.records_for!r} is less than "
                              f"retention.legal_minimum = {retention.legal_minimum!r}: records "
                              "must be kept at least that long")
    return Cutoffs(raw=now - raw, records=None if records is None else now - records)


class _Sql:
    """The shared statements in one store's dialect."""

    def __init__(self, postgres: bool) -> None:
        self.postgres = postgres

    def __call__(self, sql: str) -> str:
        return sql.replace("?", "%s") if self.postgres else sql

    def ids(self, n: int) -> str:
        return ",".join(["?"] * n)


def _blank_bodies(conn: _Conn, q: _Sql, before_us: int) -> int:
    cur = conn.execute(q("UPDATE messages SET body = ? WHERE id IN (SELECT id FROM messages"
                         " WHERE received_at < ? AND length(body) > 0 ORDER BY id LIMIT ?)"),
                       (b"", before_us, _BATCH))
    return int(cur.rowcount)


def _blank_replies(conn: _Conn, q: _Sql, before_us: int) -> int:
    # A reply's payload holds the words sent to the customer: raw content. A queued one is
    # kept whole (it has not been sent yet, it may be due after quiet hours).
    cur = conn.execute(q("UPDATE replies SET payload = ? WHERE id IN (SELECT id FROM replies"
                         " WHERE created_at < ? AND status <> 'queued' AND length(payload) > 0"
                         " ORDER BY id LIMIT ?)"), (b"", before_us, _BATCH))
    return int(cur.rowcount)


def _delete_tickets(conn: _Conn, q: _Sql, before_us: int) -> tuple[int, int]:
    ids = [int(r[0]) for r in conn.execute(
        q("SELECT id FROM tickets WHERE updated_at < ? ORDER BY id LIMIT ?"),
        (before_us, _BATCH)).fetchall()]
    if not ids:
        cur = conn.execute(q("DELETE FROM messages WHERE id IN (SELECT id FROM messages"
                             " WHERE ticket_id IS NULL AND received_at < ? LIMIT ?)"),
                           (before_us, _BATCH))
        return 0, int(cur.rowcount)
    marks = q(",".join(["?"] * len(ids)))
    for table in ("ack_refs", "acks", "replies"):
        conn.execute(f"DELETE FROM {table} WHERE ticket_id IN ({marks})", ids)
    messages = conn.execute(f"DELETE FROM messages WHERE ticket_id IN ({marks})", ids).rowcount
    conn.execute(f"DELETE FROM tickets WHERE id IN ({marks})", ids)
    return len(ids), int(messages)


def _delete_contacts(conn: _Conn, q: _Sql, before_us: int) -> int:
    orphans = ("SELECT c.id FROM contacts c WHERE c.created_at < ? AND NOT EXISTS"
               " (SELECT 1 FROM tickets t WHERE t.contact_id = c.id) AND NOT EXISTS"
               " (SELECT 1 FROM messages m WHERE m.contact_id = c.id) ORDER BY c.id LIMIT ?")
    ids = [int(r[0]) for r in conn.execute(q(orphans), (before_us, _BATCH)).fetchall()]
    if not ids:
        return 0
    marks = q(",".join(["?"] * len(ids)))
    conn.execute(f"DELETE FROM identities WHERE contact_id IN ({marks})", ids)
    conn.execute(f"DELETE FROM contacts WHERE id IN ({marks})", ids)
    return len(ids)


def _delete_events(conn: _Conn, q: _Sql, before_us: int) -> int:
    # Never an event a publisher still holds as a dead letter, nor the newest one (its seq
    # is what a restarted SQLite store numbers on from).
    cur = conn.execute(q(
        "DELETE FROM events WHERE seq IN (SELECT seq FROM events WHERE created_at < ?"
        " AND seq < (SELECT max(seq) FROM events)"
        " AND seq NOT IN (SELECT seq FROM dead_letters) ORDER BY seq LIMIT ?)"),
        (before_us, _BATCH))
    return int(cur.rowcount)


async def _drain(store: _Runs, step: Callable[[Any], int]) -> int:
    total = 0
    while True:
        n = await store.run(lambda tx: step(tx.conn))
        total += n
        if n == 0:
            return total


async def purge(store: Any, attachments_root: Path | None, cut: Cutoffs, *,
                postgres: bool) -> PurgeReport:
    """Remove what ``cut`` says from an open store (and its attachment files)."""
    q = _Sql(postgres)
    raw_us = int(cut.raw * 1_000_000)
    report = PurgeReport(cutoffs={"raw": cut.raw, **({"records": cut.records}
                                                     if cut.records is not None else {})})
    report.bodies = await _drain(store, lambda c: _blank_bodies(c, q, raw_us))
    report.bodies += await _drain(store, lambda c: _blank_replies(c, q, raw_us))
    if postgres:
        def blobs(c: _Conn) -> int:
            return int(c.execute("DELETE FROM blobs WHERE sha256 IN (SELECT sha256 FROM blobs"
                                 " WHERE created_at < %s LIMIT %s)", (raw_us, _BATCH)).rowcount)
        report.files = await _drain(store, blobs)
    elif attachments_root is not None:
        report.files = await asyncio.to_thread(_purge_files, attachments_root, cut.raw)
    if cut.records is not None:
        rec_us = int(cut.records * 1_000_000)
        while True:
            tickets, messages = await store.run(lambda tx: _delete_tickets(tx.conn, q, rec_us))
            report.tickets += tickets
            report.messages += messages
            if tickets == 0 and messages == 0:
                break
        report.contacts = await _drain(store, lambda c: _delete_contacts(c, q, rec_us))
        report.events = await _drain(store, lambda c: _delete_events(c, q, rec_us))
    return report


def _purge_files(root: Path, before: float) -> int:
    """Attachment files (content-addressed) not stored again since ``before``."""
    removed = 0
    if not root.is_dir():
        return 0
    for folder in root.iterdir():
        if not folder.is_dir():
            continue
        for path in folder.iterdir():
            try:
                if path.is_file() and path.stat().st_mtime < before:
                    path.unlink()
                    removed += 1
            except FileNotFoundError:
                continue
    return removed


def purge_configured(config: Any, data_dir: Path) -> PurgeReport:
    """``intake-gateway purge``: open the configured store, purge it, close it."""
    from gateway.store.backends import open_configured_store
    from gateway.store.postgres import PostgresStore

    cut = cutoffs(config.retention)
    store = open_configured_store(config.store, data_dir)
    postgres = isinstance(store, PostgresStore)
    root = None if postgres else Path(config.attachments.path or data_dir / "attachments")

    async def go() -> PurgeReport:
        await store.open()
        try:
            return await purge(store, root, cut, postgres=postgres)
        finally:
            await store.close()
    return asyncio.run(go())


__all__ = ["Cutoffs", "PurgeReport", "cutoffs", "purge", "purge_configured"]
