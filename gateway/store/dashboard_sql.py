"""The dashboard's reads on SQLite (:class:`gateway.store.protocols.DashboardReads`).

Plain SQL with ``?`` parameters and only ``GROUP BY``/``COUNT``, so a second store repeats
these statements with its own parameter style.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from typing import TYPE_CHECKING

from gateway.store.protocols import AtRiskTicket, DashboardReads, RelayLag, RepeatRow
from gateway.store.sqlite import SqliteStore

if TYPE_CHECKING:
    from gateway.store.postgres import PostgresStore

INTAKE_COUNTS = (
    "SELECT (received_at - ?) / ? AS bucket, channel, outcome, COUNT(*) FROM messages"
    " WHERE received_at >= ? GROUP BY bucket, channel, outcome")
TICKET_MIX = (
    "SELECT kind, priority, area, COUNT(*) FROM tickets WHERE created_at >= ?"
    " GROUP BY kind, priority, area")
CREATED_BODIES = (
    "SELECT body FROM messages WHERE outcome = 'created' AND received_at >= ?"
    " ORDER BY received_at DESC LIMIT ?")
AT_RISK = (
    "SELECT number, priority, kind, channel, created_at, due_at FROM tickets"
    " WHERE status = 'open' AND due_at <= ? ORDER BY due_at LIMIT ?")
DUPLICATES = (
    "SELECT m.contact_id, c.name, t.number FROM messages m"
    " JOIN contacts c ON c.id = m.contact_id LEFT JOIN tickets t ON t.id = m.ticket_id"
    " WHERE m.outcome = 'duplicate' AND m.received_at >= ? ORDER BY m.received_at DESC LIMIT ?")
RELAY_POSITION = "SELECT position FROM relay_positions WHERE name = ?"
LAST_SEQ = "SELECT MAX(seq) FROM events"
OLDEST_WAITING = "SELECT created_at FROM events WHERE seq > ? ORDER BY seq LIMIT 1"
ACK_COUNTS = "SELECT status, COUNT(*) FROM acks GROUP BY status"


def dashboard_reads(store: SqliteStore | PostgresStore) -> DashboardReads:
    """The dashboard's reads on the store the gateway runs on (PostgreSQL's module, and
    psycopg, imported only for a PostgreSQL store)."""
    if isinstance(store, SqliteStore):
        return SqliteDashboardReads(store)
    from gateway.store.dashboard_postgres import PostgresDashboardReads

    return PostgresDashboardReads(store)


class SqliteDashboardReads:
    """:class:`DashboardReads` over a :class:`SqliteStore`'s reader connection."""

    def __init__(self, store: SqliteStore) -> None:
        self._store = store

    async def intake_counts(self, since: int, bucket: int
                            ) -> list[tuple[int, str, str, int]]:
        rows = await self._store.read(
            lambda c: c.execute(INTAKE_COUNTS, (since, bucket, since)).fetchall())
        return [(int(b), str(ch), str(o), int(n)) for b, ch, o, n in rows]

    async def ticket_mix(self, since: int) -> list[tuple[str, str, str, int]]:
        rows = await self._store.read(lambda c: c.execute(TICKET_MIX, (since,)).fetchall())
        return [(str(k), str(p), str(a), int(n)) for k, p, a, n in rows]

    async def created_bodies(self, since: int, limit: int) -> list[bytes]:
        rows = await self._store.read(
            lambda c: c.execute(CREATED_BODIES, (since, limit)).fetchall())
        return [bytes(r[0]) for r in rows]

    async def at_risk(self, due_before: int, limit: int) -> list[AtRiskTicket]:
        rows = await self._store.read(
            lambda c: c.execute(AT_RISK, (due_before, limit)).fetchall())
        return [AtRiskTicket(*r) for r in rows]

    async def duplicates_since(self, since: int, limit: int) -> list[RepeatRow]:
        rows = await self._store.read(
            lambda c: c.execute(DUPLICATES, (since, limit)).fetchall())
        return [RepeatRow(int(i), n, t) for i, n, t in rows]

    async def contact_identities(self, contact_ids: Sequence[int]
                                 ) -> list[tuple[int, str, str]]:
        ids = list(contact_ids)[:500]
        if not ids:
            return []
        marks = ",".join("?" * len(ids))
        sql = f"SELECT contact_id, kind, value FROM identities WHERE contact_id IN ({marks})"
        rows = await self._store.read(lambda c: c.execute(sql, ids).fetchall())
        return [(int(i), str(k), str(v)) for i, k, v in rows]

    async def relay_lag(self, name: str) -> RelayLag:
        def read(c: sqlite3.Connection) -> RelayLag:
            row = c.execute(RELAY_POSITION, (name,)).fetchone()
            position = int(row[0]) if row else 0
            last = c.execute(LAST_SEQ).fetchone()[0] or 0
            oldest = c.execute(OLDEST_WAITING, (position,)).fetchone()
            return RelayLag(position, int(last), int(oldest[0]) if oldest else None)
        return await self._store.read(read)

    async def ack_counts(self) -> dict[str, int]:
        rows = await self._store.read(lambda c: c.execute(ACK_COUNTS).fetchall())
        return {str(s): int(n) for s, n in rows}
