"""Rate limits counted in PostgreSQL, so every replica spends from one allowance per key.

A token bucket per (limit name, key) is one row of the UNLOGGED table ``rate_buckets``: one
``INSERT ... ON CONFLICT DO UPDATE`` refills it by the database's clock (the replicas' clocks
need not agree), spends a token if there is one, and says whether it did, atomically. The
table is UNLOGGED because a crash of the database at worst refills every bucket, which is
what an idle minute does anyway, and it saves a WAL write per request. Rows idle for a whole
window are full again; they are deleted now and then.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any, Protocol, TypeVar

from gateway.plugin.limits import RATE_LIMITED, RateLimiter

T = TypeVar("T")

MIGRATION: list[str] = [
    """CREATE UNLOGGED TABLE IF NOT EXISTS rate_buckets(
        name TEXT NOT NULL, key TEXT NOT NULL, tokens DOUBLE PRECISION NOT NULL,
        stamp DOUBLE PRECISION NOT NULL, allowed BOOLEAN NOT NULL, PRIMARY KEY(name, key))""",
]
"""The migration that adds the table (gateway/store/postgres_schema.py lists it)."""

_NOW = "extract(epoch from clock_timestamp())"
_FILLED = f"least(%(rate)s, b.tokens + ({_NOW} - b.stamp) * %(refill)s)"
_TAKE = f"""
INSERT INTO rate_buckets AS b(name, key, tokens, stamp, allowed)
VALUES (%(name)s, %(key)s, %(rate)s - 1, {_NOW}, true)
ON CONFLICT (name, key) DO UPDATE SET
    tokens = CASE WHEN {_FILLED} >= 1 THEN {_FILLED} - 1 ELSE {_FILLED} END,
    allowed = {_FILLED} >= 1,
    stamp = {_NOW}
RETURNING allowed, tokens
"""
_SWEEP = f"DELETE FROM rate_buckets WHERE name = %(name)s AND stamp < {_NOW} - %(window)s"
_SWEEP_EVERY = 500
"""One take in this many also deletes the limit's idle rows."""


class _Reads(Protocol):
    async def read(self, fn: Callable[[Any], T]) -> T: ...


class SharedRateLimiter:
    """A :class:`gateway.plugin.limits.RateLimiter` whose buckets are rows of ``rate_buckets``."""

    def __init__(self, store: _Reads, name: str, rate: int, window: float) -> None:
        if rate < 1 or window <= 0:
            raise ValueError("a rate limit needs rate >= 1 and a positive window")
        self.store = store
        self.name = name
        self.refill = rate / window
        self.params: dict[str, object] = {"name": name, "rate": float(rate),
                                          "refill": self.refill, "window": window}
        RATE_LIMITED.labels(name)  # on /metrics at 0 before the first refusal

    async def take(self, key: str) -> float:
        params = {**self.params, "key": key[:512]}
        sweep = random.randrange(_SWEEP_EVERY) == 0

        def take(conn: Any) -> tuple[bool, float]:
            if sweep:
                conn.execute(_SWEEP, params)
            allowed, tokens = conn.execute(_TAKE, params).fetchone()
            return bool(allowed), float(tokens)

        allowed, tokens = await self.store.read(take)
        if allowed:
            return 0.0
        RATE_LIMITED.labels(self.name).inc()
        return max(0.001, (1.0 - tokens) / self.refill)


def shared_rate_limiter(store: _Reads) -> Callable[[str, int, float], RateLimiter]:
    """The ``AdapterContext.rate_limiter`` factory of a PostgreSQL store."""
    return lambda name, rate, window: SharedRateLimiter(store, name, rate, window)
