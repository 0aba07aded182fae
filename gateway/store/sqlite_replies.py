"""Replies in the embedded store: one ``replies`` row is the reply's record and its outbox row.

Mixed into :class:`gateway.store.sqlite.SqliteTx` (the writes, inside the writer's
transaction) and :class:`gateway.store.sqlite.SqliteStore` (the reads), implementing
:class:`gateway.store.protocols.ReplyOutboxTx` and :class:`~gateway.store.protocols.ReplyOutbox`.
Plain SQL, so a second store writes the same statements.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable
from datetime import datetime
from typing import Any, TypeVar

from gateway.store.protocols import DueReply, NewEvent, NewReply, ReplyRow, ReplyTarget

T = TypeVar("T")

REPLY_SCHEMA = """
CREATE TABLE IF NOT EXISTS replies(
    id INTEGER PRIMARY KEY, uid TEXT NOT NULL UNIQUE, ticket_id INTEGER NOT NULL,
    idempotency_key TEXT NOT NULL, request_hash TEXT NOT NULL, channel TEXT NOT NULL,
    recipient TEXT NOT NULL, reply_to TEXT, payload BLOB NOT NULL,
    resolution INTEGER NOT NULL DEFAULT 0, status TEXT NOT NULL DEFAULT 'queued',
    attempts INTEGER NOT NULL DEFAULT 0, next_attempt_at INTEGER NOT NULL, provider_id TEXT,
    last_error TEXT, created_at INTEGER NOT NULL, sent_at INTEGER, rating INTEGER,
    rated_at INTEGER, UNIQUE(ticket_id, idempotency_key));
CREATE INDEX IF NOT EXISTS replies_due ON replies(status, next_attempt_at);
CREATE INDEX IF NOT EXISTS replies_recipient ON replies(channel, recipient, sent_at);
CREATE INDEX IF NOT EXISTS replies_provider ON replies(provider_id);
"""

_ROW = ("uid, ticket_id, channel, recipient, status, request_hash, provider_id, resolution")


def _row(r: tuple[Any, ...] | None) -> ReplyRow | None:
    if r is None:
        return None
    return ReplyRow(str(r[0]), int(r[1]), str(r[2]), str(r[3]), str(r[4]), str(r[5]), r[6],
                    bool(r[7]))


class SqliteReplyTx:
    """:class:`gateway.store.protocols.ReplyOutboxTx` (mixed into ``SqliteTx``)."""

    conn: sqlite3.Connection

    def append_event(self, *, event_id: str, type_: str, subject: str, priority: str | None,
                     body: bytes, escalated: bool = False) -> int:
        raise NotImplementedError  # SqliteTx's

    def _append(self, event: NewEvent) -> None:
        self.append_event(event_id=event.id, type_=event.type, subject=event.subject,
                          priority=event.priority, body=event.body, escalated=event.escalated)

    def insert_reply(self, reply: NewReply, event: NewEvent) -> ReplyRow:
        earlier = _row(self.conn.execute(
            f"SELECT {_ROW} FROM replies WHERE ticket_id = ? AND idempotency_key = ?",
            (reply.ticket_id, reply.idempotency_key)).fetchone())
        if earlier is not None:
            return earlier
        self.conn.execute(
            "INSERT INTO replies(uid, ticket_id, idempotency_key, request_hash, channel,"
            " recipient, reply_to, payload, resolution, next_attempt_at, created_at)"
            " VALUES (?,?,?,?,?,?,?,?,?,?,?)",
            (reply.uid, reply.ticket_id, reply.idempotency_key, reply.request_hash,
             reply.channel, reply.recipient, reply.reply_to, reply.payload,
             int(reply.resolution), int(reply.not_before * 1_000_000), time.time_ns() // 1000))
        self._append(event)
        return ReplyRow(reply.uid, reply.ticket_id, reply.channel, reply.recipient, "queued",
                        reply.request_hash, None, reply.resolution)

    def retry_reply(self, uid: str, attempts: int, at: float, error: str) -> None:
        self.conn.execute("UPDATE replies SET attempts = ?, next_attempt_at = ?, last_error = ?"
                          " WHERE uid = ?", (attempts, int(at * 1_000_000), error[:300], uid))

    def finish_reply(self, uid: str, status: str, *, provider_id: str | None = None,
                     error: str | None = None, event: NewEvent | None = None,
                     unguessable: bool = False, attempts: int | None = None) -> None:
        c = self.conn
        sent_at = time.time_ns() // 1000 if status == "sent" else None
        c.execute("UPDATE replies SET status = ?, provider_id = coalesce(?, provider_id),"
                  " last_error = coalesce(?, last_error), sent_at = coalesce(sent_at, ?),"
                  " attempts = coalesce(?, attempts) WHERE uid = ?",
                  (status, provider_id, error and error[:300], sent_at, attempts, uid))
        if provider_id:
            row = c.execute("SELECT ticket_id FROM replies WHERE uid = ?", (uid,)).fetchone()
            if row is not None:
                # The customer's answer quotes our reply's id (In-Reply-To, a Telegram reply):
                # it joins the ticket as a follow-up, as an answer to an acknowledgement does.
                c.execute("INSERT OR IGNORE INTO ack_refs(ref, ticket_id, unguessable)"
                          " VALUES (?, ?, ?)", (provider_id, row[0], int(unguessable)))
        if event is not None:
            self._append(event)

    def reply_by_provider_id(self, provider_id: str) -> ReplyRow | None:
        return _row(self.conn.execute(
            f"SELECT {_ROW} FROM replies WHERE provider_id = ? ORDER BY id LIMIT 1",
            (provider_id,)).fetchone())


    def resolve_ticket(self, ticket_id: int) -> None:
        self.conn.execute("UPDATE tickets SET status = 'resolved' WHERE id = ?", (ticket_id,))

    def pending_rating(self, contact_id: int, since: datetime) -> tuple[str, str] | None:
        row = self.conn.execute(
            "SELECT r.uid, t.number FROM replies r JOIN tickets t ON t.id = r.ticket_id"
            " WHERE t.contact_id = ? AND r.resolution = 1 AND r.status IN ('sent', 'delivered')"
            " AND r.sent_at >= ? AND r.rated_at IS NULL ORDER BY r.sent_at DESC, r.id DESC"
            " LIMIT 1", (contact_id, int(since.timestamp() * 1_000_000))).fetchone()
        return None if row is None else (str(row[0]), str(row[1]))

    def ratable_reply(self, uid: str) -> tuple[str, str] | None:
        row = self.conn.execute(
            "SELECT t.number, t.priority FROM replies r JOIN tickets t ON t.id = r.ticket_id"
            " WHERE r.uid = ? AND r.resolution = 1 AND r.status IN ('sent', 'delivered')"
            " AND r.rated_at IS NULL", (uid,)).fetchone()
        return None if row is None else (str(row[0]), str(row[1]))

    def mark_rated(self, reply_uid: str, rating: int) -> None:
        self.conn.execute("UPDATE replies SET rating = ?, rated_at = ? WHERE uid = ?",
                          (rating, time.time_ns() // 1000, reply_uid))

    def reply_ticket_number(self, uid: str) -> str:
        return str(self.conn.execute(
            "SELECT t.number FROM replies r JOIN tickets t ON t.id = r.ticket_id"
            " WHERE r.uid = ?", (uid,)).fetchone()[0])


class SqliteReplyReads:
    """:class:`gateway.store.protocols.ReplyOutbox` (mixed into ``SqliteStore``)."""

    async def read(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        raise NotImplementedError  # SqliteStore's

    async def reply_target(self, number: str, *, recent_limit: int = 10) -> ReplyTarget | None:
        def one(c: sqlite3.Connection) -> ReplyTarget | None:
            t = c.execute("SELECT id, number, priority, contact_id FROM tickets"
                          " WHERE number = ?", (number,)).fetchone()
            if t is None:
                return None
            identities = [(str(k), str(v)) for k, v in c.execute(
                "SELECT kind, value FROM identities WHERE contact_id = ? ORDER BY kind, value",
                (t[3],))]
            # The customer's own latest message: not a colleague's, not a bounce's sender.
            latest = c.execute("SELECT body FROM messages WHERE ticket_id = ? AND contact_id = ?"
                               " ORDER BY received_at DESC, id DESC LIMIT 1",
                               (t[0], t[3])).fetchone()
            recent = [bytes(b) for (b,) in c.execute(
                "SELECT body FROM messages WHERE contact_id = ?"
                " ORDER BY received_at DESC, id DESC LIMIT ?", (t[3], recent_limit))]
            return ReplyTarget(int(t[0]), str(t[1]), str(t[2]), int(t[3]), identities,
                               None if latest is None else bytes(latest[0]), recent)
        return await self.read(one)

    async def reply_by_key(self, ticket_id: int, idempotency_key: str) -> ReplyRow | None:
        return await self.read(lambda c: _row(c.execute(
            f"SELECT {_ROW} FROM replies WHERE ticket_id = ? AND idempotency_key = ?",
            (ticket_id, idempotency_key)).fetchone()))

    async def due_replies(self, limit: int, now: float) -> list[DueReply]:
        def rows(c: sqlite3.Connection) -> list[DueReply]:
            return [DueReply(str(u), int(t), str(n), str(ch), str(r), rt, bytes(p), int(a),
                             bool(res))
                    for u, t, n, ch, r, rt, p, a, res in c.execute(
                        "SELECT r.uid, r.ticket_id, t.number, r.channel, r.recipient,"
                        " r.reply_to, r.payload, r.attempts, r.resolution FROM replies r"
                        " JOIN tickets t ON t.id = r.ticket_id"
                        " WHERE r.status = 'queued' AND r.next_attempt_at <= ?"
                        " ORDER BY r.id LIMIT ?", (int(now * 1_000_000), limit))]
        return await self.read(rows)

    async def next_reply_attempt(self) -> float | None:
        def one(c: sqlite3.Connection) -> float | None:
            row = c.execute("SELECT min(next_attempt_at) FROM replies"
                            " WHERE status = 'queued'").fetchone()
            return None if row[0] is None else float(row[0]) / 1_000_000
        return await self.read(one)

    async def replies_sent_since(self, channel: str, recipient: str, since: float) -> int:
        return await self.read(lambda c: int(c.execute(
            "SELECT count(*) FROM replies WHERE channel = ? AND recipient = ?"
            " AND sent_at >= ?", (channel, recipient, int(since * 1_000_000))).fetchone()[0]))
