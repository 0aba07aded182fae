"""Business calendar and response targets: when a ticket of a given priority is due.

Two clocks measure a target:

``calendar``
    wall-clock time: ``2h`` is two real hours, ``1d`` is 24 real hours, nights and holidays
    included (high priority: respond within 2 hours whatever the day).
``business``
    ``Nd`` is N working days: the same local time of day on the Nth following working day;
    ``Nh`` / ``Nm`` count only time while the service is open. A start outside opening hours
    first moves to the next opening (low priority: 3 working days).

Working days come from the configured weekdays, the public holidays of ``holidays_country`` (for
China including the 调休 make-up working days that fall on weekends), and explicit extra closed
and working days, which override everything else.
"""

from __future__ import annotations

import re
from datetime import UTC, date, datetime, time, timedelta, tzinfo
from functools import lru_cache
from typing import Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import msgspec

from gateway.errors import ConfigError
from gateway.language import chinese_script
from intake_schemas.message import Priority

__all__ = [
    "BusinessCalendar",
    "CalendarConfig",
    "TargetConfig",
    "TargetsConfig",
    "due_at",
    "format_due",
    "zone_label",
]

_HHMM = re.compile(r"([01]?[0-9]|2[0-3]):[0-5][0-9]|24:00")
_WITHIN = re.compile(r"\s*([1-9][0-9]*)\s*([dhm])\s*")
# No real calendar has a year without a working day; bounding the search turns a configuration
# that closes every day into an error instead of an endless loop.
_SEARCH_DAYS = 366 * 2


class CalendarConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """When the service is open. Validated at construction; errors name ``calendar.<field>``."""

    timezone: str = "Asia/Shanghai"
    """IANA time zone the opening hours and working days are in."""
    opens: str = "09:00"
    """Local opening time on a working day, ``HH:MM``."""
    closes: str = "18:00"
    """Local closing time, ``HH:MM`` (``24:00`` for midnight), later than ``opens``."""
    working_days: list[int] = msgspec.field(default_factory=lambda: [1, 2, 3, 4, 5])
    """ISO weekdays (1 = Monday ... 7 = Sunday) that are working days unless a holiday."""
    holidays_country: str | None = "CN"
    """Country whose public holidays close the service (``holidays`` package code); for ``CN``
    its make-up working days (调休) open it on weekends. None: no public holidays."""
    holidays: list[date] = []
    """Extra closed days."""
    workdays: list[date] = []
    """Extra working days; they win over weekends, public holidays and ``holidays``."""

    def __post_init__(self) -> None:
        _zone(self.timezone)
        opens = _minutes(self.opens, "calendar.opens")
        closes = _minutes(self.closes, "calendar.closes")
        if opens >= closes:
            raise ConfigError(
                f"calendar.opens: {self.opens!r} must be earlier than calendar.closes "
                f"{self.closes!r}"
            )
        if not self.working_days:
            raise ConfigError("calendar.working_days: needs at least one ISO weekday (1..7)")
        for day in self.working_days:
            if not 1 <= day <= 7:
                raise ConfigError(
                    f"calendar.working_days: {day!r} is not an ISO weekday (1 = Monday .. 7)"
                )
        # The default needs no look-up: importing the config must not load every country.
        if (
            self.holidays_country not in (None, "CN")
            and self.holidays_country not in _holidays().list_supported_countries()
        ):
            raise ConfigError(
                f"calendar.holidays_country: {self.holidays_country!r} is not a country the "
                "holidays package knows (ISO 3166 alpha-2, e.g. 'CN')"
            )


class TargetConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """One response target: how long, on which clock.

    ``within`` is a positive whole number and a unit: ``90m``, ``2h``, ``3d``. It is validated by
    :class:`TargetsConfig`, which knows the priority to name in the error.
    """

    within: str
    clock: Literal["calendar", "business"]


class TargetsConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """The response target for each priority; errors name ``targets.<priority>.<field>``."""

    high: TargetConfig = TargetConfig(within="2h", clock="calendar")
    medium: TargetConfig = TargetConfig(within="24h", clock="calendar")
    low: TargetConfig = TargetConfig(within="3d", clock="business")

    def __post_init__(self) -> None:
        for priority in ("high", "medium", "low"):
            target: TargetConfig = getattr(self, priority)
            _parse_within(target.within, f"targets.{priority}.within")
            if target.clock not in ("calendar", "business"):
                raise ConfigError(
                    f"targets.{priority}.clock: expected 'calendar' or 'business', "
                    f"got {target.clock!r}"
                )


def _holidays() -> Any:
    """The ``holidays`` package, imported on first use: it loads ~300 country modules (0.4 s),
    which reading the config or a due time of another kind never needs."""
    import holidays

    return holidays


def _zone(name: str) -> ZoneInfo:
    """Load a time zone or raise ConfigError naming ``calendar.timezone``."""
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise ConfigError(f"calendar.timezone: unknown time zone {name!r}") from exc


def _minutes(text: str, key: str) -> int:
    """Minutes after midnight of an ``HH:MM`` string."""
    if _HHMM.fullmatch(text) is None:
        raise ConfigError(f"{key}: expected HH:MM (00:00 .. 24:00), got {text!r}")
    hours, minutes = text.split(":")
    return int(hours) * 60 + int(minutes)


@lru_cache(maxsize=64)
def _parse_within(text: str, key: str = "targets.within") -> tuple[int, str]:
    """``"3d"`` -> ``(3, "d")``; raises ConfigError naming ``key``."""
    match = _WITHIN.fullmatch(text)
    if match is None:
        raise ConfigError(
            f"{key}: expected a positive whole number and a unit d, h or m "
            f"(e.g. '2h', '90m', '3d'), got {text!r}"
        )
    return int(match.group(1)), match.group(2)


class BusinessCalendar:
    """Working days and opening hours of one :class:`CalendarConfig`.

    Methods taking a ``datetime`` require an aware one and return aware datetimes in the
    calendar's time zone. Durations on the business clock are real elapsed time while open, so
    an opening day that crosses a DST change is as long as it really is.
    """

    def __init__(self, config: CalendarConfig) -> None:
        self.config = config
        self.tz: tzinfo = _zone(config.timezone)
        self._opens = timedelta(minutes=_minutes(config.opens, "calendar.opens"))
        self._closes = timedelta(minutes=_minutes(config.closes, "calendar.closes"))
        self._weekdays = frozenset(config.working_days)
        self._extra_closed = frozenset(config.holidays)
        self._extra_open = frozenset(config.workdays)
        # year -> (public holidays, make-up working days); building a holidays object is slow,
        # and this is asked for every message.
        self._years: dict[int, tuple[frozenset[date], frozenset[date]]] = {}

    def is_working_day(self, d: date) -> bool:
        """Whether the service works on local date ``d``."""
        if d in self._extra_open:
            return True
        if d in self._extra_closed:
            return False
        if self.config.holidays_country is not None:
            closed, make_up = self._public(d.year)
            if d in closed:
                return False
            if d in make_up:
                return True
        return d.isoweekday() in self._weekdays

    def is_open(self, t: datetime) -> bool:
        """Whether the service is open at instant ``t`` (opening time included, closing not)."""
        local = self._local(t)
        if not self.is_working_day(local.date()):
            return False
        return self._opens <= _since_midnight(local) < self._closes

    def next_opening(self, t: datetime) -> datetime:
        """``t`` itself if open then, else the next moment the service opens."""
        local = self._local(t)
        day = local.date()
        if self.is_working_day(day):
            offset = _since_midnight(local)
            if offset < self._opens:
                return self._at(day, self._opens)
            if offset < self._closes:
                return local
        return self._at(self._next_working_day(day), self._opens)

    def add_business_time(self, start: datetime, delta: timedelta) -> datetime:
        """The instant when ``delta`` of opening time has passed since ``start``.

        Time counts only while open; a start outside opening hours first moves to the next
        opening. A result that lands exactly on closing time stays there (due by the end of the
        day). A zero ``delta`` returns ``start`` unchanged, so that adding in parts is the same as
        adding at once.
        """
        if delta < timedelta(0):
            raise ValueError(f"business time must not be negative, got {delta}")
        if delta == timedelta(0):
            return self._local(start)
        current = self.next_opening(start)
        remaining = delta
        while True:
            close = self._at(current.date(), self._closes)
            # Subtract in UTC: aware datetimes sharing a tzinfo subtract as wall time, which
            # would count the hour a DST change adds or removes wrongly.
            available = close.astimezone(UTC) - current.astimezone(UTC)
            if remaining <= available:
                return (current.astimezone(UTC) + remaining).astimezone(self.tz)
            remaining -= available
            current = self.next_opening(close)

    def add_working_days(self, start: datetime, n: int) -> datetime:
        """The same local time of day on the ``n``-th working day after ``start``.

        A start outside opening hours first moves to the next opening; ``n = 0`` returns that.
        """
        if n < 0:
            raise ValueError(f"working days must not be negative, got {n}")
        opening = self.next_opening(start)
        day = opening.date()
        for _ in range(n):
            day = self._next_working_day(day)
        return datetime.combine(day, opening.time(), tzinfo=self.tz)

    def _public(self, year: int) -> tuple[frozenset[date], frozenset[date]]:
        """Public holidays and weekend make-up working days of one year, cached."""
        cached = self._years.get(year)
        if cached is None:
            country = _holidays().country_holidays(self.config.holidays_country, years=year)
            closed = frozenset(d for d in country if d.year == year)
            # Only some countries (CN among them) publish make-up working days.
            make_up = frozenset(
                d for d in getattr(country, "weekend_workdays", ()) if d.year == year
            )
            cached = self._years[year] = (closed, make_up)
        return cached

    def _next_working_day(self, day: date) -> date:
        """The first working day after ``day``."""
        for _ in range(_SEARCH_DAYS):
            day += timedelta(days=1)
            if self.is_working_day(day):
                return day
        raise ConfigError(
            f"calendar: no working day within {_SEARCH_DAYS} days after {day.isoformat()}"
        )

    def _local(self, t: datetime) -> datetime:
        """``t`` in the calendar's zone; naive datetimes are a programming error."""
        if t.tzinfo is None or t.utcoffset() is None:
            raise ValueError(f"expected an aware datetime, got naive {t!r}")
        return t.astimezone(self.tz)

    def _at(self, day: date, offset: timedelta) -> datetime:
        """The local instant ``offset`` of wall time after midnight of ``day``."""
        # Aware + timedelta is wall-clock arithmetic, which is what opening hours are.
        return datetime.combine(day, time(), tzinfo=self.tz) + offset


def _since_midnight(local: datetime) -> timedelta:
    """Wall time elapsed since local midnight."""
    return local.replace(tzinfo=None) - datetime.combine(local.date(), time())


def due_at(
    received_at: datetime,
    priority: Priority,
    targets: TargetsConfig,
    calendar: BusinessCalendar,
) -> datetime:
    """When a response to a message received at ``received_at`` is due, as an aware UTC datetime.

    ``received_at`` must be aware. The target for ``priority`` decides the clock: on the
    ``calendar`` clock the duration is simply added; on the ``business`` clock ``Nd`` means N
    working days (:meth:`BusinessCalendar.add_working_days`) and ``Nh`` / ``Nm`` mean opening time
    (:meth:`BusinessCalendar.add_business_time`).
    """
    if received_at.tzinfo is None or received_at.utcoffset() is None:
        raise ValueError(f"received_at must be aware, got naive {received_at!r}")
    target: TargetConfig = getattr(targets, priority)
    amount, unit = _parse_within(target.within, f"targets.{priority}.within")
    if target.clock == "calendar":
        step = {"d": timedelta(days=1), "h": timedelta(hours=1), "m": timedelta(minutes=1)}[unit]
        # In UTC: aware arithmetic in a local zone is wall-clock arithmetic, off by an hour
        # across a DST change.
        due = received_at.astimezone(UTC) + amount * step
    elif unit == "d":
        due = calendar.add_working_days(received_at, amount)
    else:
        minutes = amount * 60 if unit == "h" else amount
        due = calendar.add_business_time(received_at, timedelta(minutes=minutes))
    return due.astimezone(UTC)


_EN_WEEKDAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
_EN_MONTHS = (
    "January", "February", "March", "April", "May", "June",
    "July", "August", "September", "October", "November", "December",
)  # fmt: skip
_ZH_WEEKDAYS = ("星期一", "星期二", "星期三", "星期四", "星期五", "星期六", "星期日")


# The names customers know their zone by, where one is well known and the zone keeps it all
# year: (simplified Chinese, traditional Chinese, English). Abbreviations such as "CST" are
# ambiguous (China, US Central, Cuba), so they are never the only thing shown.
_CHINA = ("北京时间", "北京時間", "China Standard Time")
_UTC = ("协调世界时", "世界標準時間", "Coordinated Universal Time")
_ZONE_NAMES: dict[str, tuple[str, str, str]] = {
    "Asia/Shanghai": _CHINA, "Asia/Chongqing": _CHINA, "Asia/Chungking": _CHINA,
    "Asia/Harbin": _CHINA, "PRC": _CHINA,
    "Asia/Hong_Kong": ("香港时间", "香港時間", "Hong Kong Time"),
    "Hongkong": ("香港时间", "香港時間", "Hong Kong Time"),
    "Asia/Macau": ("澳门时间", "澳門時間", "Macao Time"),
    "Asia/Macao": ("澳门时间", "澳門時間", "Macao Time"),
    "Asia/Taipei": ("台北时间", "台北時間", "Taipei Standard Time"),
    "ROC": ("台北时间", "台北時間", "Taipei Standard Time"),
    "Asia/Singapore": ("新加坡时间", "新加坡時間", "Singapore Standard Time"),
    "Singapore": ("新加坡时间", "新加坡時間", "Singapore Standard Time"),
    "Asia/Kuala_Lumpur": ("马来西亚时间", "馬來西亞時間", "Malaysia Time"),
    "Asia/Tokyo": ("日本时间", "日本時間", "Japan Standard Time"),
    "Japan": ("日本时间", "日本時間", "Japan Standard Time"),
    "Asia/Seoul": ("韩国时间", "韓國時間", "Korean Standard Time"),
    "ROK": ("韩国时间", "韓國時間", "Korean Standard Time"),
    "UTC": _UTC, "Etc/UTC": _UTC, "Etc/UCT": _UTC, "UCT": _UTC, "Etc/Universal": _UTC,
    "Universal": _UTC, "Etc/Zulu": _UTC, "Zulu": _UTC,
}  # fmt: skip


def zone_label(local: datetime, locale: str) -> str:
    """The time zone of ``local`` (aware, in the calendar's zone) as a customer reads it.

    The zone's own name in the locale's language where one is known (``北京时间``, ``北京時間``,
    ``China Standard Time``); otherwise the UTC offset, after the zone's abbreviation when it has
    a letter one (``CET, UTC+01:00``; ``UTC+04:00`` for zones whose abbreviation is ``+04``).
    """
    key = getattr(local.tzinfo, "key", None)
    names = _ZONE_NAMES.get(key) if isinstance(key, str) else None
    # A historical daylight-saving date (China 1986-1991) is not "standard time".
    if names is not None and not local.dst():
        script = chinese_script(locale)
        return names[1] if script == "Hant" else names[0] if script is not None else names[2]
    offset = local.utcoffset() or timedelta(0)
    sign = "-" if offset < timedelta(0) else "+"
    minutes = abs(offset) // timedelta(minutes=1)
    utc = f"UTC{sign}{minutes // 60:02d}:{minutes % 60:02d}" if minutes else "UTC"
    abbreviation = local.tzname() or ""
    if abbreviation.isascii() and abbreviation.isalpha() and abbreviation != "UTC":
        separator = "，" if chinese_script(locale) is not None else ", "
        return f"{abbreviation}{separator}{utc}"
    return utc


def format_due(due: datetime, locale: str, calendar: BusinessCalendar) -> str:
    """``due`` as a customer reads it, in the calendar's time zone, which it names, without the
    process locale.

    English (and any non-Chinese locale): ``Monday 24 November, 10:00 (China Standard Time)``;
    ``zh-CN``: ``11月24日（星期一）10:00（北京时间）``; ``zh-TW`` (and other traditional tags):
    ``11月24日（星期一）10:00（北京時間）``. See :func:`zone_label` for zones without a name.
    """
    if due.tzinfo is None or due.utcoffset() is None:
        raise ValueError(f"due must be aware, got naive {due!r}")
    local = due.astimezone(calendar.tz)
    clock = f"{local.hour:02d}:{local.minute:02d}"
    zone = zone_label(local, locale)
    if chinese_script(locale) is not None:
        # Simplified and traditional Chinese write this date the same way (星期 in both).
        return f"{local.month}月{local.day}日（{_ZH_WEEKDAYS[local.weekday()]}）{clock}（{zone}）"
    return (f"{_EN_WEEKDAYS[local.weekday()]} {local.day} {_EN_MONTHS[local.month - 1]}, "
            f"{clock} ({zone})")
