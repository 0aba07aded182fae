"""Business calendar and response targets."""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

import holidays
import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.errors import ConfigError
from gateway.sla import (
    BusinessCalendar,
    CalendarConfig,
    TargetConfig,
    TargetsConfig,
    due_at,
    format_due,
)

SHANGHAI = ZoneInfo("Asia/Shanghai")
BERLIN = ZoneInfo("Europe/Berlin")
TARGETS = TargetsConfig()
CN = BusinessCalendar(CalendarConfig())
DE = BusinessCalendar(CalendarConfig(timezone="Europe/Berlin", holidays_country="DE"))
# Open round the clock every day, so opening hours cross DST changes.
ALWAYS = BusinessCalendar(
    CalendarConfig(
        timezone="Europe/Berlin",
        opens="00:00",
        closes="24:00",
        working_days=[1, 2, 3, 4, 5, 6, 7],
        holidays_country=None,
    )
)
CALENDARS = [CN, DE, ALWAYS]

instants = st.datetimes(
    min_value=datetime(2024, 1, 1), max_value=datetime(2028, 12, 31), timezones=st.just(UTC)
)
calendars = st.sampled_from(CALENDARS)
priorities = st.sampled_from(["high", "medium", "low"])
business_deltas = st.timedeltas(min_value=timedelta(seconds=1), max_value=timedelta(hours=120))


def shanghai(*args: int) -> datetime:
    """An aware Shanghai datetime."""
    return datetime(*args, tzinfo=SHANGHAI)  # type: ignore[misc]


# --- working days ----------------------------------------------------------------------------


def test_holidays_package_knows_the_2026_make_up_days() -> None:
    # What the examples below rely on, checked against the package itself.
    cn = holidays.country_holidays("CN", years=2026)
    assert {date(2026, 2, 14), date(2026, 2, 28)} <= set(cn.weekend_workdays)
    assert date(2026, 2, 17) in cn


def test_make_up_saturday_is_a_working_day() -> None:
    assert date(2026, 2, 14).isoweekday() == 6
    assert CN.is_working_day(date(2026, 2, 14))
    assert CN.is_working_day(date(2026, 2, 28))
    assert CN.is_open(shanghai(2026, 2, 14, 10, 0))


@pytest.mark.parametrize("day", [16, 17, 18, 19, 20, 23])
def test_spring_festival_days_are_closed(day: int) -> None:
    assert not CN.is_working_day(date(2026, 2, day))


def test_ordinary_week() -> None:
    assert CN.is_working_day(date(2026, 11, 20))  # Friday
    assert not CN.is_working_day(date(2026, 11, 21))  # Saturday
    assert not CN.is_working_day(date(2026, 10, 1))  # National Day


def test_extra_days_override() -> None:
    calendar = BusinessCalendar(
        CalendarConfig(
            holidays=[date(2026, 11, 20)], workdays=[date(2026, 11, 21), date(2026, 10, 1)]
        )
    )
    assert not calendar.is_working_day(date(2026, 11, 20))
    assert calendar.is_working_day(date(2026, 11, 21))
    assert calendar.is_working_day(date(2026, 10, 1))


def test_no_country_means_only_weekdays() -> None:
    calendar = BusinessCalendar(CalendarConfig(holidays_country=None))
    assert calendar.is_working_day(date(2026, 10, 1))
    assert not calendar.is_working_day(date(2026, 2, 14))


def test_holidays_are_built_once_per_year(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []
    real = holidays.country_holidays

    def counting(country: str, years: int) -> holidays.HolidayBase:
        calls.append(years)
        return real(country, years=years)

    monkeypatch.setattr(holidays, "country_holidays", counting)
    calendar = BusinessCalendar(CalendarConfig())
    start = shanghai(2026, 3, 2, 10, 0)
    for minutes in range(0, 60 * 24 * 30, 97):
        due_at(start + timedelta(minutes=minutes), "low", TARGETS, calendar)
    assert calls == [2026]


# --- opening hours ---------------------------------------------------------------------------


def test_next_opening() -> None:
    assert CN.next_opening(shanghai(2026, 11, 20, 8, 0)) == shanghai(2026, 11, 20, 9, 0)
    assert CN.next_opening(shanghai(2026, 11, 20, 12, 0)) == shanghai(2026, 11, 20, 12, 0)
    assert CN.next_opening(shanghai(2026, 11, 20, 18, 0)) == shanghai(2026, 11, 23, 9, 0)
    assert CN.next_opening(shanghai(2026, 2, 13, 19, 0)) == shanghai(2026, 2, 14, 9, 0)
    assert CN.next_opening(shanghai(2026, 2, 15, 9, 0)) == shanghai(2026, 2, 24, 9, 0)


def test_is_open_edges() -> None:
    assert CN.is_open(shanghai(2026, 11, 20, 9, 0))
    assert CN.is_open(shanghai(2026, 11, 20, 17, 59, 59))
    assert not CN.is_open(shanghai(2026, 11, 20, 18, 0))
    assert not CN.is_open(shanghai(2026, 11, 21, 12, 0))
    assert CN.is_open(datetime(2026, 11, 20, 2, 0, tzinfo=UTC))  # 10:00 in Shanghai


def test_naive_datetimes_are_refused() -> None:
    with pytest.raises(ValueError, match="aware"):
        CN.is_open(datetime(2026, 11, 20, 10, 0))
    with pytest.raises(ValueError, match="aware"):
        due_at(datetime(2026, 11, 20, 10, 0), "high", TARGETS, CN)


def test_business_hours_carry_over_the_weekend() -> None:
    # 2 h on Friday, 6 h on Monday.
    friday = shanghai(2026, 11, 20, 16, 0)
    assert CN.add_business_time(friday, timedelta(hours=8)) == shanghai(2026, 11, 23, 15, 0)
    assert CN.add_business_time(friday, timedelta(hours=2)) == shanghai(2026, 11, 20, 18, 0)
    assert CN.add_business_time(shanghai(2026, 11, 21, 3, 0), timedelta(minutes=90)) == shanghai(
        2026, 11, 23, 10, 30
    )


# --- due dates -------------------------------------------------------------------------------


def test_low_priority_friday_afternoon_is_due_wednesday() -> None:
    due = due_at(shanghai(2026, 11, 20, 16, 0), "low", TARGETS, CN)
    assert due == shanghai(2026, 11, 25, 16, 0)
    assert due.tzinfo is UTC


def test_low_priority_over_spring_festival_counts_make_up_saturday() -> None:
    # Friday 13 Feb 2026 -> Sat 14 (调休, works), then closed until Tue 24: 14, 24, 25.
    due = due_at(shanghai(2026, 2, 13, 16, 0), "low", TARGETS, CN)
    assert due == shanghai(2026, 2, 25, 16, 0)


def test_low_priority_received_at_night_starts_next_morning() -> None:
    due = due_at(shanghai(2026, 11, 20, 22, 30), "low", TARGETS, CN)
    assert due == shanghai(2026, 11, 26, 9, 0)


def test_high_and_medium_run_on_the_calendar_clock() -> None:
    saturday_night = shanghai(2026, 11, 21, 23, 0)
    assert due_at(saturday_night, "high", TARGETS, CN) == saturday_night + timedelta(hours=2)
    assert due_at(saturday_night, "medium", TARGETS, CN) == saturday_night + timedelta(hours=24)


def test_business_clock_in_hours() -> None:
    targets = TargetsConfig(medium=TargetConfig(within="8h", clock="business"))
    due = due_at(shanghai(2026, 11, 20, 16, 0), "medium", targets, CN)
    assert due == shanghai(2026, 11, 23, 15, 0)


def test_dst_spring_forward_in_berlin() -> None:
    # Friday 27 March 2026 16:00 CET (UTC+1); clocks go forward on Sunday 29 March.
    received = datetime(2026, 3, 27, 16, 0, tzinfo=BERLIN)
    due = due_at(received, "low", TARGETS, DE)
    assert due == datetime(2026, 4, 1, 16, 0, tzinfo=BERLIN)
    assert due == datetime(2026, 4, 1, 14, 0, tzinfo=UTC)
    # The calendar clock counts real hours across the change: 01:30 CET + 2 h = 04:30 CEST.
    night = datetime(2026, 3, 29, 1, 30, tzinfo=BERLIN)
    assert due_at(night, "high", TARGETS, DE) == datetime(2026, 3, 29, 4, 30, tzinfo=BERLIN)


def test_dst_business_hours_are_real_hours() -> None:
    start = datetime(2026, 3, 28, 20, 0, tzinfo=BERLIN)
    end = ALWAYS.add_business_time(start, timedelta(hours=10))
    # Python adds to an aware datetime in wall time, so add in UTC to get real hours.
    assert end == start.astimezone(UTC) + timedelta(hours=10)
    assert end.replace(tzinfo=None) == datetime(2026, 3, 29, 7, 0)  # 06:00 does not exist


def test_dst_fall_back_in_berlin() -> None:
    received = datetime(2026, 10, 23, 16, 0, tzinfo=BERLIN)  # Friday, CEST
    assert due_at(received, "low", TARGETS, DE) == datetime(2026, 10, 28, 16, 0, tzinfo=BERLIN)


# --- rendering -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("locale", "text"),
    [
        ("en", "Monday 24 November, 10:00 (China Standard Time)"),
        ("en-GB", "Monday 24 November, 10:00 (China Standard Time)"),
        ("zh-CN", "11月24日（星期一）10:00（北京时间）"),
        ("zh_CN", "11月24日（星期一）10:00（北京时间）"),
        ("zh", "11月24日（星期一）10:00（北京时间）"),
        ("zh-TW", "11月24日（星期一）10:00（北京時間）"),
        ("zh-Hant-HK", "11月24日（星期一）10:00（北京時間）"),
        ("zh-HK", "11月24日（星期一）10:00（北京時間）"),
        ("zh-Hans-HK", "11月24日（星期一）10:00（北京时间）"),
        ("fr", "Monday 24 November, 10:00 (China Standard Time)"),
        ("", "Monday 24 November, 10:00 (China Standard Time)"),
    ],
)
def test_format_due(locale: str, text: str) -> None:
    due = datetime(2025, 11, 24, 2, 0, tzinfo=UTC)  # 10:00 in Shanghai
    assert format_due(due, locale, CN) == text


@pytest.mark.parametrize(
    ("timezone", "en", "zh_cn", "zh_tw"),
    [
        ("Asia/Hong_Kong", "10:00 (Hong Kong Time)", "10:00（香港时间）", "10:00（香港時間）"),
        ("Asia/Taipei", "10:00 (Taipei Standard Time)", "10:00（台北时间）", "10:00（台北時間）"),
        ("Asia/Singapore", "10:00 (Singapore Standard Time)", "10:00（新加坡时间）",
         "10:00（新加坡時間）"),
        ("Asia/Tokyo", "11:00 (Japan Standard Time)", "11:00（日本时间）", "11:00（日本時間）"),
        ("UTC", "02:00 (Coordinated Universal Time)", "02:00（协调世界时）",
         "02:00（世界標準時間）"),
        # No name we know: the abbreviation with its offset ("CET" alone is not enough, "CST"
        # would be worse), or the offset alone where the abbreviation is a number.
        ("Europe/Berlin", "03:00 (CET, UTC+01:00)", "03:00（CET，UTC+01:00）",
         "03:00（CET，UTC+01:00）"),
        ("America/New_York", "21:00 (EST, UTC-05:00)", "21:00（EST，UTC-05:00）",
         "21:00（EST，UTC-05:00）"),
        ("Asia/Kolkata", "07:30 (IST, UTC+05:30)", "07:30（IST，UTC+05:30）",
         "07:30（IST，UTC+05:30）"),
        ("Asia/Dubai", "06:00 (UTC+04:00)", "06:00（UTC+04:00）", "06:00（UTC+04:00）"),
        ("Asia/Urumqi", "08:00 (UTC+06:00)", "08:00（UTC+06:00）", "08:00（UTC+06:00）"),
    ],
)
def test_format_due_names_the_calendars_time_zone(
        timezone: str, en: str, zh_cn: str, zh_tw: str) -> None:
    calendar = BusinessCalendar(CalendarConfig(timezone=timezone, holidays_country=None))
    due = datetime(2025, 11, 24, 2, 0, tzinfo=UTC)
    assert format_due(due, "en", calendar).endswith(f", {en}")
    assert format_due(due, "zh-CN", calendar).endswith(f"）{zh_cn}")
    assert format_due(due, "zh-TW", calendar).endswith(f"）{zh_tw}")


def test_format_due_follows_daylight_saving_time() -> None:
    summer = datetime(2026, 7, 6, 8, 0, tzinfo=UTC)
    assert format_due(summer, "en", DE) == "Monday 6 July, 10:00 (CEST, UTC+02:00)"
    # China kept summer time 1986-1991: a date then is not "China Standard Time".
    assert format_due(datetime(1988, 7, 4, 2, 0, tzinfo=UTC), "en", CN) == (
        "Monday 4 July, 11:00 (CDT, UTC+09:00)")


@given(due=instants, calendar=calendars, locale=st.sampled_from(["en", "zh-CN", "zh-TW", "ja"]))
def test_format_due_always_says_which_zone(
        due: datetime, calendar: BusinessCalendar, locale: str) -> None:
    text = format_due(due, locale, calendar)
    assert text.endswith((")", "）"))
    assert any(name in text for name in ("北京时间", "北京時間", "China Standard Time", "UTC"))


# --- configuration ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "key"),
    [
        ({"timezone": "Asia/Shang_hai"}, "calendar.timezone"),
        ({"timezone": ""}, "calendar.timezone"),
        ({"opens": "18:00", "closes": "09:00"}, "calendar.opens"),
        ({"opens": "09:00", "closes": "09:00"}, "calendar.opens"),
        ({"opens": "9am"}, "calendar.opens"),
        ({"closes": "25:00"}, "calendar.closes"),
        ({"working_days": [0, 1]}, "calendar.working_days"),
        ({"working_days": [8]}, "calendar.working_days"),
        ({"working_days": []}, "calendar.working_days"),
        ({"holidays_country": "XX"}, "calendar.holidays_country"),
    ],
)
def test_invalid_calendar(fields: dict[str, object], key: str) -> None:
    with pytest.raises(ConfigError, match=key):
        msgspec.convert(fields, CalendarConfig)


@pytest.mark.parametrize("within", ["", "2", "h", "0h", "-1h", "2 hours", "1.5h", "2w", "1h30m"])
def test_invalid_within(within: str) -> None:
    with pytest.raises(ConfigError, match=r"targets\.low\.within"):
        msgspec.convert({"low": {"within": within, "clock": "business"}}, TargetsConfig)


def test_targets_from_config_dict() -> None:
    targets = msgspec.convert({"high": {"within": "90m", "clock": "business"}}, TargetsConfig)
    assert targets.high == TargetConfig(within="90m", clock="business")
    assert targets.low == TargetConfig(within="3d", clock="business")
    with pytest.raises(msgspec.ValidationError, match="urgent"):
        msgspec.convert({"urgent": {"within": "1h", "clock": "calendar"}}, TargetsConfig)


# --- properties ------------------------------------------------------------------------------


@settings(max_examples=200)
@given(instants, priorities, calendars)
def test_due_is_never_before_receipt(
    received: datetime, priority: str, calendar: BusinessCalendar
) -> None:
    due = due_at(received, priority, TARGETS, calendar)  # type: ignore[arg-type]
    assert due >= received
    assert due.utcoffset() == timedelta(0)


def assert_within_opening_hours(calendar: BusinessCalendar, t: datetime, *, closing: bool) -> None:
    """``t`` is on a working day between opening and closing (closing itself if ``closing``)."""
    local = t.astimezone(calendar.tz)
    assert calendar.is_working_day(local.date())
    opens = time.fromisoformat(calendar.config.opens)
    if calendar.config.closes == "24:00":
        return
    closes = time.fromisoformat(calendar.config.closes)
    assert opens <= local.time()
    assert local.time() <= closes if closing else local.time() < closes


@settings(max_examples=200)
@given(instants, business_deltas, calendars)
def test_business_time_ends_inside_opening_hours(
    start: datetime, delta: timedelta, calendar: BusinessCalendar
) -> None:
    assert_within_opening_hours(calendar, calendar.add_business_time(start, delta), closing=True)


@settings(max_examples=200)
@given(instants, st.integers(min_value=0, max_value=15), calendars)
def test_working_days_end_inside_opening_hours(
    start: datetime, n: int, calendar: BusinessCalendar
) -> None:
    end = calendar.add_working_days(start, n)
    assert end >= start
    assert_within_opening_hours(calendar, end, closing=False)


@settings(max_examples=200)
@given(instants, st.timedeltas(min_value=timedelta(0), max_value=timedelta(days=10)), priorities)
def test_due_is_monotonic(received: datetime, later_by: timedelta, priority: str) -> None:
    for calendar in CALENDARS:
        first = due_at(received, priority, TARGETS, calendar)  # type: ignore[arg-type]
        second = due_at(received + later_by, priority, TARGETS, calendar)  # type: ignore[arg-type]
        assert first <= second


@settings(max_examples=200)
@given(instants, business_deltas, business_deltas, calendars)
def test_adding_business_time_in_parts_is_adding_it_at_once(
    start: datetime, a: timedelta, b: timedelta, calendar: BusinessCalendar
) -> None:
    in_parts = calendar.add_business_time(calendar.add_business_time(start, a), b)
    assert in_parts == calendar.add_business_time(start, a + b)
