"""Ticket numbers: format, parse, find, and the Damm check digit."""

from __future__ import annotations

import itertools
from datetime import date

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.errors import ConfigError
from gateway.numbering import NumberingConfig, TicketNumbering, damm_check_digit, damm_valid

DEFAULT = TicketNumbering(NumberingConfig())
MASKS = [
    NumberingConfig(),
    NumberingConfig(mask="{date}{seq:04}{check}", date_format="%y%j"),
    NumberingConfig(mask="T{seq:03}-{check}", reset="never"),
    NumberingConfig(mask="No.{seq:06}/{date}/{check}", date_format="%Y-%m-%d"),
]
NUMBERINGS = [TicketNumbering(config) for config in MASKS]

days = st.dates(min_value=date(1000, 1, 1), max_value=date(9999, 12, 31))
seqs = st.integers(min_value=0, max_value=10**7)
numberings = st.sampled_from(NUMBERINGS)


def digit_positions(number: str) -> list[int]:
    """Indexes of the digits in a ticket number."""
    return [i for i, c in enumerate(number) if c.isdigit()]


# --- Damm ------------------------------------------------------------------------------------


def test_damm_known_vector() -> None:
    # The worked example from the literature: 572 -> 4.
    assert damm_check_digit("572") == "4"
    assert damm_valid("5724")
    assert not damm_valid("5723")
    assert not damm_valid("")
    assert not damm_valid("57a4")
    with pytest.raises(ValueError):
        damm_check_digit("5\uff172")  # a full-width digit


@given(st.text(alphabet="0123456789", max_size=30))
def test_damm_appended_digit_is_valid(digits: str) -> None:
    assert damm_valid(digits + damm_check_digit(digits))


# --- examples --------------------------------------------------------------------------------


def test_default_format() -> None:
    assert DEFAULT.format(date(2026, 11, 22), 42) == "CX-20261122-00042-5"
    assert DEFAULT.scope(date(2026, 11, 22)) == "20261122"


def test_wide_sequence_is_never_truncated() -> None:
    number = DEFAULT.format(date(2026, 11, 22), 1234567)
    assert number.startswith("CX-20261122-1234567-")
    assert DEFAULT.parse(number) == number


def test_never_reset_scope() -> None:
    numbering = TicketNumbering(NumberingConfig(mask="T{seq:03}-{check}", reset="never"))
    assert numbering.scope(date(2026, 1, 1)) == numbering.scope(date(2027, 5, 5)) == "all"
    assert numbering.format(date(2026, 1, 1), 7) == "T007-" + damm_check_digit("007")


@pytest.mark.parametrize(
    "typed",
    [
        "CX-20261122-00042-5",
        "  cx-20261122-00042-5\n",
        "Cx - 20261122 - 00042 - 5",
        "ＣＸ－２０２６１１２２－０００４２－５",
        "CX\u201320261122\u201300042\u20135",  # en dashes from a word processor
    ],
)
def test_parse_tolerates_how_people_type(typed: str) -> None:
    assert DEFAULT.parse(typed) == "CX-20261122-00042-5"


@pytest.mark.parametrize(
    "typed",
    [
        "CX-20261122-00042-4",  # wrong check digit
        "CX-20261122-00024-5",  # transposed
        "CX-20261122-000042-5",  # over-padded: a different spelling is not our number
        "CX-20261322-00042-5",  # no such month
        "CX-20261122-0042-5",  # too short
        "XX-20261122-00042-5",
        "CX-20261122-00042-5 and more",
        "CX20261122000425",
        "",
    ],
)
def test_parse_rejects(typed: str) -> None:
    assert DEFAULT.parse(typed) is None


def test_find_in_email_subject() -> None:
    other = DEFAULT.format(date(2026, 1, 2), 7)
    subject = f"Re: [CX-20261122-00042-5] my order; see also {other}, CX-20261122-00042-5 again"
    assert DEFAULT.find_in(subject) == ["CX-20261122-00042-5", other]


def test_find_in_chinese_text_and_invalid_neighbours() -> None:
    text = "您好，工单号CX-20261122-00042-5，还有CX-20261122-00042-4（错的）和ACX-20261122-00042-5"
    assert DEFAULT.find_in(text) == ["CX-20261122-00042-5"]


def test_find_in_needs_edges_for_an_all_digit_mask() -> None:
    numbering = TicketNumbering(NumberingConfig(mask="{date}{seq:03}{check}", reset="never"))
    number = numbering.format(date(2026, 11, 22), 5)
    assert numbering.find_in(f"ref {number}, 工单{number}。") == [number]
    # Glued to other digits it is part of some other number, not ours.
    assert numbering.find_in(f"ref 9{number} {number}9") == []


@pytest.mark.parametrize(
    ("mask", "reset", "date_format", "field"),
    [
        ("CX-{date}", "daily", "%Y%m%d", "numbering.mask"),
        ("CX-{date}-{seq:05}-{seq:02}", "daily", "%Y%m%d", "numbering.mask"),
        ("CX-{check}-{date}-{seq:05}", "daily", "%Y%m%d", "numbering.mask"),
        ("CX-{date}-{check}-{seq:05}", "daily", "%Y%m%d", "numbering.mask"),
        ("CX9-{date}-{seq:05}", "daily", "%Y%m%d", "numbering.mask"),
        ("CX-{date}-{sequence}", "daily", "%Y%m%d", "numbering.mask"),
        ("CX-{date}-{seq:5}", "daily", "%Y%m%d", "numbering.mask"),
        ("CX-{date-{seq:05}", "daily", "%Y%m%d", "numbering.mask"),
        ("T-{seq:05}", "daily", "%Y%m%d", "numbering.mask"),
        ("CX-{date}-{seq:05}", "daily", "%d %b %Y", "numbering.date_format"),
        ("CX-{date}-{seq:05}", "daily", "CX", "numbering.date_format"),
    ],
)
def test_invalid_config(mask: str, reset: str, date_format: str, field: str) -> None:
    with pytest.raises(ConfigError, match=field):
        NumberingConfig(mask=mask, reset=reset, date_format=date_format)  # type: ignore[arg-type]


def test_config_from_toml_like_dict_is_validated() -> None:
    with pytest.raises(ConfigError, match=r"numbering\.mask"):
        msgspec.convert({"mask": "{seq}"}, NumberingConfig)
    with pytest.raises(msgspec.ValidationError, match="masc"):
        msgspec.convert({"masc": "{seq}"}, NumberingConfig)


# --- properties ------------------------------------------------------------------------------


@settings(max_examples=200)
@given(numberings, days, seqs)
def test_format_parse_round_trip(numbering: TicketNumbering, day: date, seq: int) -> None:
    number = numbering.format(day, seq)
    assert numbering.parse(number) == number
    assert numbering.parse(f"  {number.lower()} ") == number


@settings(max_examples=200)
@given(numberings, days, seqs, st.data())
def test_single_digit_error_never_matches(
    numbering: TicketNumbering, day: date, seq: int, data: st.DataObject
) -> None:
    number = numbering.format(day, seq)
    i = data.draw(st.sampled_from(digit_positions(number)))
    wrong = data.draw(st.sampled_from([d for d in "0123456789" if d != number[i]]))
    assert numbering.parse(number[:i] + wrong + number[i + 1 :]) is None


@settings(max_examples=200)
@given(numberings, days, seqs, st.data())
def test_adjacent_transposition_never_matches(
    numbering: TicketNumbering, day: date, seq: int, data: st.DataObject
) -> None:
    number = numbering.format(day, seq)
    positions = digit_positions(number)
    # Adjacent in the digit sequence, even across a separator ("...22-00..." -> "...20-20...").
    pairs = [(a, b) for a, b in itertools.pairwise(positions) if number[a] != number[b]]
    if not pairs:
        return
    a, b = data.draw(st.sampled_from(pairs))
    swapped = list(number)
    swapped[a], swapped[b] = swapped[b], swapped[a]
    assert numbering.parse("".join(swapped)) is None


@settings(max_examples=200)
@given(numberings, days, seqs, days, seqs, st.text(), st.text(), st.text())
def test_find_in_finds_embedded_numbers_in_order(
    numbering: TicketNumbering,
    day1: date,
    seq1: int,
    day2: date,
    seq2: int,
    before: str,
    between: str,
    after: str,
) -> None:
    first, second = numbering.format(day1, seq1), numbering.format(day2, seq2)
    found = numbering.find_in(f"{before} {first} {between} {second} {after}")
    assert first in found
    assert second in found
    assert len(found) == len(set(found))
    if first != second:
        assert found.index(first) < found.index(second)
