"""Replies in the replicas' store: the ``replies`` table (migration 3), leased to one replica.

Mixed into :class:`gateway.store.postgres.PostgresTx` (the writes, inside the writer's
transaction) and :class:`gateway.store.postgres.PostgresStore` (the reads), implementing
:class:`gateway.store.protocols.ReplyOutboxTx` and :class:`~gateway.store.protocols.ReplyOutbox`
with the statements of :mod:`gateway.store.sqlite_replies` in PostgreSQL's dialect.

What replicas add: a queued reply is *leased* when a dispatcher takes it (``FOR UPDATE SKIP
LOCKED``, a lease owner and an expiry), as acknowledgements are. Two replicas' dispatchers
never take one row at once; a replica that dies mid-send delays its rows by the lease, and the
next replica sends them again (at least once, as on one process after a crash).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import datetime
from typing import Any, TypeVar

import psycopg

from gateway.store.protocols import DueReply, NewEvent, NewReply, ReplyRow, ReplyTarget

T = TypeVar("T")

_ROW = "uid, ticket_id, channel, recipient, status, request_hash, provider_id, resolution"


def _now_us() -> int:
    return time.time_ns() // 1000


def _row(r: tuple[Any, ...] | None) -> ReplyRow | None:
    if r is None:
        return None
    return ReplyRow(str(r[0]), int(r[1]), str(r[2]), str(r[3]), str(r[4]), str(r[5]), r[6],
                    bool(r[7]))


class PostgresReplyTx:
    """:class:`gateway.store.protocols.ReplyOutboxTx` (mixed into ``PostgresTx``)."""

    conn: psycopg.Connection[Any]

    def append_event(self, *, event_id: str, type_: str, subject: str, priority: str | None,
                     body: bytes, escalated: bool = False) -> int:
        raise NotImplementedError  # PostgresTx's

    def _append(self, event: NewEvent) -> None:
        self.append_event(event_id=event.id, type_=event.type, subject=event.subject,
                          priority=event.priority, body=event.body, escalated=event.escalated)

    def insert_reply(self, reply: NewReply, event: NewEvent) -> ReplyRow:
        # Every write transaction holds the event counter's lock (see gateway.store.postgres):
        # no other replica inserts between this look and the insert; the UNIQUE guards anyway.
        earlier = _row(self.conn.execute(
            f"SELECT {_ROW} FROM replies WHERE ticket_id = %s AND idempotency_key = %s",
            (reply.ticket_id, reply.idempotency_key)).fetchone())
        if earlier is not None:
            return earlier
        self.conn.execute(
            "INSERT INTO replies(uid, ticket_id, idempotency_key, request_hash, channel,"
            " recipient, reply_to, payload, resolution, next_attempt_at, created_at)"
            " VALUES (%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s)",
            (reply.uid, reply.ticket_id, reply.idempotency_key, reply.request_hash,
             reply.channel, reply.recipient, reply.reply_to, reply.payload,
             reply.resolution, int(reply.not_before * 1_000_000), _now_us()))
        self._append(event)
        return ReplyRow(reply.uid, reply.ticket_id, reply.channel, reply.recipient, "queued",
                        reply.request_hash, None, reply.resolution)

    def retry_reply(self, uid: str, attempts: int, at: float, error: str) -> None:
        # The lease ends with the attempt: whichever replica is free then takes the retry.
        self.conn.execute("UPDATE replies SET attempts = %s, next_attempt_at = %s,"
                          " last_error = %s, lease_owner = NULL, leased_until = 0"
                          " WHERE uid = %s", (attempts, int(at * 1_000_000), error[:300], uid))

    def finish_reply(self, uid: str, status: str, *, provider_id: str | None = None,
                     error: str | None = None, event: NewEvent | None = None,
                     unguessable: bool = False, attempts: int | None = None) -> None:
        c = self.conn
        sent_at = _now_us() if status == "sent" else None
        row = c.execute(
            "UPDATE replies SET status = %s, provider_id = coalesce(%s, provider_id),"
            " last_error = coalesce(%s, last_error), sent_at = coalesce(sent_at, %s),"
            " attempts = coalesce(%s, attempts), lease_owner = NULL WHERE uid = %s"
            " RETURNING ticket_id",
            (status, provider_id, error and error[:300], sent_at, attempts, uid)).fetchone()
        if provider_id and row is not None:
            # The customer's answer quotes our reply's id (In-Reply-To, a Telegram reply):
            # it joins the ticket as a follow-up, as an answer to an acknowledgement does.
            c.execute("INSERT INTO ack_refs(ref, ticket_id, unguessable) VALUES (%s, %s, %s)"
                      " ON CONFLICT DO NOTHING", (provider_id, row[0], unguessable))
        if event is not None:
            self._append(event)

    def reply_by_provider_id(self, provider_id: str) -> ReplyRow | None:
        return _row(self.conn.execute(
            f"SELECT {_ROW} FROM replies WHERE provider_id = %s ORDER BY id LIMIT 1",
            (provider_id,)).fetchone())

    def resolve_ticket(self, ticket_id: int) -> None:
        self.conn.execute("UPDATE tickets SET status = 'resolved' WHERE id = %s", (ticket_id,))

    def pending_rating(self, contact_id: int, since: datetime) -> tuple[str, str] | None:
        row = self.conn.execute(
            "SELECT r.uid, t.number FROM replies r JOIN tickets t ON t.id = r.ticket_id"
            " WHERE t.contact_id = %s AND r.resolution AND r.status IN ('sent', 'delivered')"
            " AND r.sent_at >= %s AND r.rated_at IS NULL ORDER BY r.sent_at DESC, r.id DESC"
            " LIMIT 1", (contact_id, int(since.timestamp() * 1_000_000))).fetchone()
        return None if row is None else (str(row[0]), str(row[1]))

    def ratable_reply(self, uid: str) -> tuple[str, str] | None:
        row = self.conn.execute(
            "SELECT t.number, t.priority FROM replies r JOIN tickets t ON t.id = r.ticket_id"
            " WHERE r.uid = %s AND r.resolution AND r.status IN ('sent', 'delivered')"
            " AND r.rated_at IS NULL", (uid,)).fetchone()
        return None if row is None else (str(row[0]), str(row[1]))

    def mark_rated(self, reply_uid: str, rating: int) -> None:
        self.conn.execute("UPDATE replies SET rating = %s, rated_at = %s WHERE uid = %s",
                          (rating, _now_us(), reply_uid))

    def reply_ticket_number(self, uid: str) -> str:
        row = self.conn.execute(
            "SELECT t.number FROM replies r JOIN tickets t ON t.id = r.ticket_id"
            " WHERE r.uid = %s", (uid,)).fetchone()
        if row is None:
            raise KeyError(uid)
        return str(row[0])

    def lease_replies(self, owner: str, limit: int, now: float, lease: float) -> list[DueReply]:
        """Take up to ``limit`` due queued replies for ``owner`` until ``now + lease``.

        Rows another owner holds an unexpired lease on are left alone; rows another
        transaction is taking right now are skipped (``SKIP LOCKED``), never waited for.
        """
        now_us = int(now * 1_000_000)
        rows = self.conn.execute(
            "UPDATE replies r SET lease_owner = %s, leased_until = %s FROM tickets t"
            " WHERE t.id = r.ticket_id AND r.id IN ("
            " SELECT id FROM replies WHERE status = 'queued' AND next_attempt_at <= %s"
            " AND (lease_owner IS NULL OR lease_owner = %s OR leased_until <= %s)"
            " ORDER BY id LIMIT %s FOR UPDATE SKIP LOCKED)"
            " RETURNING r.id, r.uid, r.ticket_id, t.number, r.channel, r.recipient, r.reply_to,"
            " r.payload, r.attempts, r.resolution",
            (owner, now_us + int(lease * 1_000_000), now_us, owner, now_us, limit)).fetchall()
        return [DueReply(str(u), int(t), str(n), str(ch), str(r), rt, bytes(p), int(a),
                         bool(res))
                for _id, u, t, n, ch, r, rt, p, a, res in sorted(rows, key=lambda x: x[0])]


class PostgresReplyReads:
    """:class:`gateway.store.protocols.ReplyOutbox` (mixed into ``PostgresStore``)."""

    owner: str
    ack_lease: float

    async def read(self, fn: Callable[[psycopg.Connection[Any]], T]) -> T:
        raise NotImplementedError  # PostgresStore's

    async def run(self, fn: Callable[[Any], T]) -> T:
        raise NotImplementedError  # PostgresStore's

    async def reply_target(self, number: str, *, recent_limit: int = 10) -> ReplyTarget | None:
        def one(c: psycopg.Connection[Any]) -> ReplyTarget | None:
            t = c.execute("SELECT id, number, priority, contact_id FROM tickets"
                          " WHERE number = %s", (number,)).fetchone()
            if t is None:
                return None
            identities = [(str(k), str(v)) for k, v in c.execute(
                "SELECT kind, value FROM identities WHERE contact_id = %s"
                ' ORDER BY kind COLLATE "C", value COLLATE "C"', (t[3],))]
            # The customer's own latest message: not a colleague's, not a bounce's sender.
            latest = c.execute("SELECT body FROM messages WHERE ticket_id = %s"
                               " AND contact_id = %s ORDER BY received_at DESC, id DESC LIMIT 1",
                               (t[0], t[3])).fetchone()
            recent = [bytes(b) for (b,) in c.execute(
                "SELECT body FROM messages WHERE contact_id = %s"
                " ORDER BY received_at DESC, id DESC LIMIT %s", (t[3], recent_limit))]
            return ReplyTarget(int(t[0]), str(t[1]), str(t[2]), int(t[3]), identities,
                               None if latest is None else bytes(latest[0]), recent)
        return await self.read(one)

    async def reply_by_key(self, ticket_id: int, idempotency_key: str) -> ReplyRow | None:
        return await self.read(lambda c: _row(c.execute(
            f"SELECT {_ROW} FROM replies WHERE ticket_id = %s AND idempotency_key = %s",
            (ticket_id, idempotency_key)).fetchone()))

    async def due_replies(self, limit: int, now: float) -> list[DueReply]:
        """Queued replies due at ``now``, oldest first, leased to this replica."""
        owner, lease = self.owner, self.ack_lease
        return await self.run(lambda tx: tx.lease_replies(owner, limit, now, lease))

    async def next_reply_attempt(self) -> float | None:
        """When the earliest queued reply is due (or another replica's lease on it runs
        out), or None."""
        owner = self.owner

        def one(c: psycopg.Connection[Any]) -> float | None:
            row = c.execute(
                "SELECT min(greatest(next_attempt_at, CASE WHEN lease_owner IS DISTINCT FROM %s"
                " THEN leased_until ELSE 0 END)) FROM replies WHERE status = 'queued'",
                (owner,)).fetchone()
            return None if row is None or row[0] is None else float(row[0]) / 1_000_000
        return await self.read(one)

    async def replies_sent_since(self, channel: str, recipient: str, since: float) -> int:
        """Replies sent to ``recipient`` on ``channel`` since ``since``, by any replica."""
        def one(c: psycopg.Connection[Any]) -> int:
            row = c.execute("SELECT count(*) FROM replies WHERE channel = %s"
                            " AND recipient = %s AND sent_at >= %s",
                            (channel, recipient, int(since * 1_000_000))).fetchone()
            return int(row[0]) if row else 0
        return await self.read(one)
