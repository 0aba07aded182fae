"""One snapshot of what the gateway has taken in, for the page and ``<path>/data.json``.

Everything comes from :class:`gateway.store.protocols.DashboardReads`, the dead-letter table,
the adapters' quarantines and the process's own counters. Customer data stays in here: the
snapshot carries counts, ticket numbers and masked contacts only.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import msgspec

from gateway.dashboard.regions import region_of
from gateway.intake import SUBMITTED
from gateway.store.protocols import DashboardReads, DeadLetters
from intake_schemas import InboundMessage

HOUR = 3_600_000_000
DAY = 24 * HOUR
WEEK = 7 * DAY
OUTCOMES = ("created", "followup", "duplicate", "replayed", "automated")
MAX_DETAIL_ROWS = 5000
"""Stored messages decoded for regions and device models per snapshot (the newest)."""

_decode_message = msgspec.msgpack.Decoder(InboundMessage).decode


class Series(msgspec.Struct, frozen=True):
    labels: list[str]
    by_channel: dict[str, list[int]]


class Quarantined(msgspec.Struct, frozen=True):
    adapter: str
    id: str
    where: str
    reason: str


class DeadLetterRow(msgspec.Struct, frozen=True):
    seq: int
    type: str
    subject: str
    attempts: int
    error: str


class AtRiskRow(msgspec.Struct, frozen=True):
    number: str
    priority: str
    kind: str
    channel: str
    due_in_minutes: int
    """Negative: overdue by that many minutes."""


class RepeatContact(msgspec.Struct, frozen=True):
    contact: str
    """Masked: first character of the name and of each identity, the rest hidden."""
    duplicates: int
    tickets: list[str]


class Snapshot(msgspec.Struct, frozen=True, kw_only=True):
    generated_at: str
    hour: Series
    day: Series
    total_day: int
    outcomes: dict[str, int]
    """Over the last 24 h; ``replayed`` since this process started (replays write nothing)."""
    priorities: dict[str, int]
    kinds: dict[str, int]
    areas: dict[str, int]
    regions: list[tuple[str, int]]
    devices: list[tuple[str, int]]
    at_risk: list[AtRiskRow]
    relay_backend: str
    relay_lag_events: int | None
    """None for the embedded queue, which consumers read themselves."""
    relay_oldest_wait_seconds: float | None
    dead_letters: list[DeadLetterRow]
    acks: dict[str, int]
    quarantined: list[Quarantined]
    repeat_contacts: list[RepeatContact]


def mask(value: str) -> str:
    """``"wang.xm@example.com"`` -> ``"w…@e…"``, ``"+8613800138000"`` -> ``"+86…8000"``."""
    if "@" in value:
        local, _, domain = value.partition("@")
        return f"{local[:1]}…@{domain[:1]}…"
    if value.startswith("+") and len(value) > 7:
        return f"{value[:3]}…{value[-4:]}"
    return value[:1] + "…" if value else ""


def _replayed_since_start() -> int:
    total = 0.0
    for metric in SUBMITTED.collect():
        for sample in metric.samples:
            if sample.name.endswith("_total") and sample.labels.get("outcome") == "replayed":
                total += sample.value
    return int(total)


def _series(rows: Sequence[tuple[int, str, str, int]], buckets: int, start: int, step: int,
            fmt: str, tz: ZoneInfo) -> Series:
    labels = [datetime.fromtimestamp((start + i * step) / 1e6, tz).strftime(fmt)
              for i in range(buckets)]
    by_channel: dict[str, list[int]] = {}
    for bucket, channel, _outcome, n in rows:
        if 0 <= bucket < buckets:
            by_channel.setdefault(channel, [0] * buckets)[bucket] += n
    return Series(labels=labels, by_channel=dict(sorted(by_channel.items())))


async def take_snapshot(reads: DashboardReads, letters: DeadLetters, *, relay_backend: str,
                        relay_active: bool, quarantine: Callable[[], Awaitable[list[Quarantined]]],
                        at_risk_within: float, repeat_min: int, timezone: str = "UTC",
                        now: float | None = None) -> Snapshot:
    """Read everything the page shows, once; time labels in ``timezone``."""
    tz = ZoneInfo(timezone)
    now_us = int((now if now is not None else time.time()) * 1_000_000)
    hour_step, day_step = 5 * 60_000_000, HOUR
    hour_start = now_us - now_us % hour_step - 11 * hour_step
    day_start = now_us - now_us % day_step - 23 * day_step
    hour = _series(await reads.intake_counts(hour_start, hour_step), 12, hour_start, hour_step,
                   "%H:%M", tz)
    day_rows = await reads.intake_counts(day_start, day_step)
    day = _series(day_rows, 24, day_start, day_step, "%H:00", tz)
    outcomes = dict.fromkeys(OUTCOMES, 0)
    for _b, _ch, outcome, n in day_rows:
        outcomes[outcome] = outcomes.get(outcome, 0) + n
    outcomes["replayed"] = _replayed_since_start()
    priorities: Counter[str] = Counter()
    kinds: Counter[str] = Counter()
    areas: Counter[str] = Counter()
    for kind, priority, area, n in await reads.ticket_mix(day_start):
        kinds[kind] += n
        priorities[priority] += n
        areas[area] += n
    regions: Counter[str] = Counter()
    devices: Counter[str] = Counter()
    for body in await reads.created_bodies(day_start, MAX_DETAIL_ROWS):
        try:
            message = _decode_message(body)
        except msgspec.DecodeError:
            continue  # a row of an older, incompatible layout: skipped, not fatal
        regions[region_of(message.contact.phone)] += 1
        if message.device_model and message.device_model.strip():
            devices[" ".join(message.device_model.split())[:60]] += 1
    risk = [AtRiskRow(number=t.number, priority=t.priority, kind=t.kind, channel=t.channel,
                      due_in_minutes=int((t.due_at - now_us) // 60_000_000))
            for t in await reads.at_risk(now_us + int(at_risk_within * 1_000_000), 100)]
    lag_events: int | None = None
    oldest_wait: float | None = None
    if relay_active:
        lag = await reads.relay_lag(relay_backend)
        lag_events = max(0, lag.last_seq - lag.position)
        if lag.oldest_waiting_at is not None:
            oldest_wait = max(0.0, (now_us - lag.oldest_waiting_at) / 1e6)
    dead = [DeadLetterRow(seq=e.seq, type=e.type, subject=e.subject, attempts=a, error=err[:200])
            for e, a, err in await letters.dead_letters(relay_backend)]
    duplicates = await reads.duplicates_since(now_us - WEEK, 10_000)
    per_contact: dict[int, list[str | None]] = {}
    names: dict[int, str | None] = {}
    for row in duplicates:
        per_contact.setdefault(row.contact_id, []).append(row.ticket_number)
        names[row.contact_id] = row.name
    repeaters = sorted(((cid, t) for cid, t in per_contact.items() if len(t) >= repeat_min),
                       key=lambda item: -len(item[1]))[:20]
    identities: dict[int, list[str]] = {}
    for cid, _kind, value in await reads.contact_identities([cid for cid, _ in repeaters]):
        identities.setdefault(cid, []).append(mask(value))
    repeat = [RepeatContact(
        contact=" ".join(filter(None, [mask(names[cid] or ""), *sorted(identities.get(cid, []))]))
        or f"contact {cid}", duplicates=len(t),
        tickets=sorted({n for n in t if n}))
        for cid, t in repeaters]
    return Snapshot(
        generated_at=datetime.fromtimestamp(now_us / 1e6, UTC).isoformat(timespec="seconds"),
        hour=hour, day=day, total_day=sum(n for *_, n in day_rows), outcomes=outcomes,
        priorities=dict(priorities.most_common()), kinds=dict(kinds.most_common()),
        areas=dict(areas.most_common()), regions=regions.most_common(12),
        devices=devices.most_common(12), at_risk=risk, relay_backend=relay_backend,
        relay_lag_events=lag_events, relay_oldest_wait_seconds=oldest_wait,
        dead_letters=dead, acks=await reads.ack_counts(), quarantined=await quarantine(),
        repeat_contacts=repeat)
