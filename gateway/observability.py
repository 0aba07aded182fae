"""Gauges read from the store when ``/metrics`` is scraped, and the channels declared up front.

Counters (messages, acks, relay, IMAP, SMTP, rate limits, connections) count as things happen;
what is a state rather than a stream (acknowledgements waiting, dead letters, tickets at risk,
readiness) is read once per scrape here, so a restart never shows a stale value.
``deploy/prometheus-alerts.yml`` and ``deploy/grafana-dashboard.json`` use these names.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Iterable

from prometheus_client import Gauge

from gateway.intake import SUBMITTED
from gateway.store.protocols import DashboardReads, DeadLetters

ACKS_BY_STATUS = Gauge("intake_outbox_acks", "Acknowledgements in the outbox, by status",
                       ["status"])
DEAD_LETTERS = Gauge("intake_dead_letters", "Events dead-lettered (or held) now, by publisher",
                     ["publisher"])
RELAY_OLDEST = Gauge("intake_relay_oldest_wait_seconds",
                     "Age of the oldest event the relay has not had confirmed (0: none)")
AT_RISK = Gauge("intake_tickets_at_risk",
                "Open tickets due within dashboard.at_risk_within or overdue")
OVERDUE = Gauge("intake_tickets_overdue", "Open tickets past their response target")
READY = Gauge("intake_ready", "1 when /readyz would answer ready, else 0")
NOT_READY = Gauge("intake_not_ready", "1 for each readiness check failing now", ["check"])
ACK_STATUSES = ("pending", "sent", "failed", "suppressed")
OUTCOMES = ("created", "followup", "duplicate", "replayed", "automated")


def declare_channels(kinds: Iterable[str]) -> None:
    """Every enabled channel shows on /metrics from the start, at 0, with every outcome."""
    for kind in kinds:
        for outcome in OUTCOMES:
            SUBMITTED.labels(kind, outcome)


class ScrapeGauges:
    """Refreshes the state gauges; ``await gauges.refresh()`` before each exposition."""

    def __init__(self, reads: DashboardReads, letters: DeadLetters, *, publisher: str,
                 relay_active: bool, at_risk_within: float,
                 readiness: Callable[[], Awaitable[dict[str, str]]],
                 checks: Iterable[str]) -> None:
        self.reads = reads
        self.letters = letters
        self.publisher = publisher
        self.relay_active = relay_active
        self.at_risk_within = at_risk_within
        self.readiness = readiness
        self.checks = tuple(checks)

    async def refresh(self) -> None:
        now_us = int(time.time() * 1_000_000)
        acks = await self.reads.ack_counts()
        for status in {*ACK_STATUSES, *acks}:
            ACKS_BY_STATUS.labels(status).set(acks.get(status, 0))
        DEAD_LETTERS.labels(self.publisher).set(len(await self.letters.dead_letters(
            self.publisher)))
        if self.relay_active:
            lag = await self.reads.relay_lag(self.publisher)
            RELAY_OLDEST.set(0 if lag.oldest_waiting_at is None
                             else max(0.0, (now_us - lag.oldest_waiting_at) / 1e6))
        risky = await self.reads.at_risk(now_us + int(self.at_risk_within * 1e6), 100_000)
        AT_RISK.set(len(risky))
        OVERDUE.set(sum(1 for t in risky if t.due_at < now_us))
        problems = await self.readiness()
        READY.set(0 if problems else 1)
        for check in {*self.checks, *problems}:
            NOT_READY.labels(check).set(1 if check in problems else 0)
