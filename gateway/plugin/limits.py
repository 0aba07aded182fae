"""Admission limits every listener shares: open connections (total and per peer), rates per key.

A peer is an IPv4 address or an IPv6 /64 (one subscriber usually holds a whole /64, so counting
single IPv6 addresses would let one client open a limit's worth from each of 2**64 addresses).
"""

from __future__ import annotations

import ipaddress
import logging
import resource
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from typing import Protocol

from prometheus_client import Counter, Gauge

log = logging.getLogger("intake.limits")

CONNECTIONS_OPEN = Gauge("intake_connections_open", "Connections open now, by listener",
                         ["listener"])
CONNECTIONS_REFUSED = Counter("intake_connections_refused_total",
                              "Connections refused at accept, by listener and limit "
                              "(total, peer)", ["listener", "limit"])
RATE_LIMITED = Counter("intake_rate_limited_total",
                       "Requests or messages held back by a rate limit, by limit", ["limit"])


def peer_key(address: str) -> str:
    """What a connection from ``address`` is counted against: the IPv4 address, the IPv6 /64."""
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return address  # not an IP (a Unix socket): counted as itself
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((ip, 64), strict=False))
    return str(ip)


class ConnectionGate:
    """Counts a listener's open connections; :meth:`admit` refuses beyond either limit.

    ``0`` disables a limit. Peers in ``exempt`` (networks, e.g. the TLS proxy in front, whose
    connections carry every customer) count towards the total but not against a per-peer limit.
    """

    def __init__(self, listener: str, *, total: int, per_peer: int,
                 exempt: Iterable[str] = ()) -> None:
        self.listener = listener
        self.total = total
        self.per_peer = per_peer
        self.exempt = [ipaddress.ip_network(net, strict=False) for net in exempt]
        self.open = 0
        self._peers: dict[str, int] = {}
        self._gauge = CONNECTIONS_OPEN.labels(listener)

    def admit(self, address: str) -> tuple[str | None, str]:
        """Count one new connection from ``address``.

        Returns ``(None, key)`` when admitted (call :meth:`release` with ``key`` when it
        closes), or ``(limit, key)`` naming the limit it hit (``"total"`` or ``"peer"``).
        """
        key = peer_key(address)
        if self.total and self.open >= self.total:
            CONNECTIONS_REFUSED.labels(self.listener, "total").inc()
            return "total", key
        held = self._peers.get(key, 0)
        if self.per_peer and held >= self.per_peer and not self.is_exempt(address):
            CONNECTIONS_REFUSED.labels(self.listener, "peer").inc()
            return "peer", key
        self._peers[key] = held + 1
        self.open += 1
        self._gauge.set(self.open)
        return None, key

    def release(self, key: str) -> None:
        """One connection admitted under ``key`` closed."""
        held = self._peers.get(key, 0)
        if held <= 1:
            self._peers.pop(key, None)
        else:
            self._peers[key] = held - 1
        self.open = max(0, self.open - 1)
        self._gauge.set(self.open)

    def held_by(self, address: str) -> int:
        """Connections open now from the peer ``address`` belongs to."""
        return self._peers.get(peer_key(address), 0)

    def is_exempt(self, address: str) -> bool:
        """True when ``address`` is in one of the exempt networks."""
        if not self.exempt:
            return False
        try:
            ip = ipaddress.ip_address(address.split("%", 1)[0])
        except ValueError:
            return False
        return any(ip in net for net in self.exempt)


class TokenBuckets:
    """A token bucket per key: ``rate`` events, refilled evenly over ``window`` seconds.

    Memory is bounded: a key idle for a whole window has a full bucket again and is forgotten,
    and beyond ``max_keys`` the least recently seen are forgotten first. Adapters get theirs
    through ``AdapterContext.rate_limiter`` (:class:`RateLimiter`), which a shared store may
    count across replicas instead.
    """

    def __init__(self, rate: int, window: float, *, max_keys: int = 50_000,
                 clock: Callable[[], float] = time.monotonic, name: str = "other") -> None:
        self.name = name
        """The ``limit`` label of ``intake_rate_limited_total`` when a take is held back."""
        RATE_LIMITED.labels(name)  # present on /metrics (at 0) before the first refusal
        self.rate = rate
        self.window = window
        self.refill = rate / window
        self.max_keys = max_keys
        self.clock = clock
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()

    def take(self, key: str) -> float:
        """Spend one token: 0.0 when allowed, else the seconds until the next one is."""
        now = self.clock()
        self._evict(now)
        tokens, stamp = self._buckets.pop(key, (float(self.rate), now))
        tokens = min(float(self.rate), tokens + (now - stamp) * self.refill)
        wait = 0.0
        if tokens >= 1.0:
            tokens -= 1.0
        else:
            wait = (1.0 - tokens) / self.refill
            RATE_LIMITED.labels(self.name).inc()
        self._buckets[key] = (tokens, now)
        return wait

    def __len__(self) -> int:
        return len(self._buckets)

    def _evict(self, now: float) -> None:
        # Ordered by last use, so the idle ones are at the front.
        while self._buckets:
            _, stamp = next(iter(self._buckets.values()))
            if now - stamp < self.window and len(self._buckets) < self.max_keys:
                break
            self._buckets.popitem(last=False)


class RateLimiter(Protocol):
    """A rate limit an adapter asks its context for (``AdapterContext.rate_limiter``).

    On one process (SQLite) it is this process's :class:`TokenBuckets`; on a shared store
    (PostgreSQL, replicas) the buckets live in the store, so a sender's allowance is counted
    across every replica, not once per replica.
    """

    async def take(self, key: str) -> float:
        """Spend one token for ``key``: 0.0 when allowed, else the seconds until one is."""
        ...


RateLimiterFactory = Callable[[str, int, float], RateLimiter]
"""``factory(name, rate, window)``: a limit of ``rate`` per ``window`` seconds per key, named
``name`` (unique per adapter and purpose; the ``limit`` label of ``intake_rate_limited_total``)."""


class LocalRateLimiter:
    """:class:`TokenBuckets` of this process behind the :class:`RateLimiter` interface."""

    def __init__(self, name: str, rate: int, window: float) -> None:
        self.buckets = TokenBuckets(rate, window, name=name)

    async def take(self, key: str) -> float:
        return self.buckets.take(key)


def local_rate_limiter(name: str, rate: int, window: float) -> RateLimiter:
    """The :data:`RateLimiterFactory` of a single process."""
    return LocalRateLimiter(name, rate, window)


_raised: tuple[int, int] | None = None


def raise_open_file_limit() -> tuple[int, int]:
    """Raise the soft RLIMIT_NOFILE to the hard limit (once per process, logged once).

    Each connection is a file descriptor; the common soft default of 1024 is below the
    connection limits' defaults. Returns ``(soft, hard)`` as they are afterwards.
    """
    global _raised
    if _raised is not None:
        return _raised
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = hard
    if wanted == resource.RLIM_INFINITY:
        wanted = 1_048_576  # macOS reports "unlimited" but refuses more than the kernel's cap
    if soft != resource.RLIM_INFINITY and soft < wanted:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
            soft = wanted
        except (ValueError, OSError) as exc:
            log.warning("open-file limit stays at %s (hard %s): %s", soft, hard, exc)
    _raised = (soft, hard)
    log.info("open-file limit: %s (hard %s)", soft, hard)
    return _raised
