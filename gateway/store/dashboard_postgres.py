"""The dashboard's reads on PostgreSQL (:class:`gateway.store.protocols.DashboardReads`).

The statements are :mod:`gateway.store.dashboard_sql`'s, in psycopg's parameter style: the
two dialects agree on all of them (``BIGINT / BIGINT`` divides as integers, as SQLite's
``INTEGER / INTEGER`` does), so the dashboard counts alike on either store. Reads go to the
store's autocommit read connections, never the writer.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import psycopg

from gateway.store import dashboard_sql as q
from gateway.store.postgres import PostgresStore
from gateway.store.protocols import AtRiskTicket, RelayLag, RepeatRow


def _pg(sql: str) -> str:
    """SQLite's ``?`` placeholders as psycopg's ``%s`` (the statements hold no other ``?``)."""
    assert "%" not in sql
    return sql.replace("?", "%s")


INTAKE_COUNTS = _pg(q.INTAKE_COUNTS)
TICKET_MIX = _pg(q.TICKET_MIX)
CREATED_BODIES = _pg(q.CREATED_BODIES)
AT_RISK = _pg(q.AT_RISK)
DUPLICATES = _pg(q.DUPLICATES)
RELAY_POSITION = _pg(q.RELAY_POSITION)
LAST_SEQ = q.LAST_SEQ
OLDEST_WAITING = _pg(q.OLDEST_WAITING)
ACK_COUNTS = q.ACK_COUNTS
CONTACT_IDENTITIES = "SELECT contact_id, kind, value FROM identities WHERE contact_id = ANY(%s)"


class PostgresDashboardReads:
    """:class:`DashboardReads` over a :class:`PostgresStore`'s read connections."""

    def __init__(self, store: PostgresStore) -> None:
        self._store = store

    async def _all(self, sql: str, args: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        return await self._store.read(lambda c: c.execute(sql, args).fetchall())

    async def intake_counts(self, since: int, bucket: int
                            ) -> list[tuple[int, str, str, int]]:
        rows = await self._all(INTAKE_COUNTS, (since, bucket, since))
        return [(int(b), str(ch), str(o), int(n)) for b, ch, o, n in rows]

    async def ticket_mix(self, since: int) -> list[tuple[str, str, str, int]]:
        rows = await self._all(TICKET_MIX, (since,))
        return [(str(k), str(p), str(a), int(n)) for k, p, a, n in rows]

    async def created_bodies(self, since: int, limit: int) -> list[bytes]:
        return [bytes(r[0]) for r in await self._all(CREATED_BODIES, (since, limit))]

    async def at_risk(self, due_before: int, limit: int) -> list[AtRiskTicket]:
        rows = await self._all(AT_RISK, (due_before, limit))
        return [AtRiskTicket(str(n), str(p), str(k), str(ch), int(c), int(d))
                for n, p, k, ch, c, d in rows]

    async def duplicates_since(self, since: int, limit: int) -> list[RepeatRow]:
        rows = await self._all(DUPLICATES, (since, limit))
        return [RepeatRow(int(i), n, t) for i, n, t in rows]

    async def contact_identities(self, contact_ids: Sequence[int]
                                 ) -> list[tuple[int, str, str]]:
        ids = [int(i) for i in list(contact_ids)[:500]]
        if not ids:
            return []
        rows = await self._all(CONTACT_IDENTITIES, (ids,))
        return [(int(i), str(k), str(v)) for i, k, v in rows]

    async def relay_lag(self, name: str) -> RelayLag:
        def read(c: psycopg.Connection[Any]) -> RelayLag:
            row = c.execute(RELAY_POSITION, (name,)).fetchone()
            position = int(row[0]) if row else 0
            last = c.execute(LAST_SEQ).fetchone()
            oldest = c.execute(OLDEST_WAITING, (position,)).fetchone()
            return RelayLag(position, int(last[0] or 0) if last else 0,
                            int(oldest[0]) if oldest else None)
        return await self._store.read(read)

    async def ack_counts(self) -> dict[str, int]:
        return {str(s): int(n) for s, n in await self._all(ACK_COUNTS)}
