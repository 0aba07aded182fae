"""Ticket numbers: formatting, Damm check digits, and recognising numbers customers type.

A ticket number is built from a mask such as ``CX-{date}-{seq:05}-{check}``:

``{date}``
    the ticket's day, formatted with ``date_format`` (numeric directives only: ``%Y %y %m %d %j``);
``{seq:0N}``
    the sequence number within its scope, zero-padded to at least ``N`` digits (``{seq}`` means
    ``N = 1``); larger numbers simply get longer, they are never truncated;
``{check}``
    a Damm check digit over every digit before it, so that a customer's one-digit typo or swapped
    pair of neighbouring digits is recognised as invalid instead of naming someone else's ticket.

Everything else in the mask is literal text (letters, dashes), which must not contain digits so
that the digits of a number are exactly the digits of its placeholders.
"""

from __future__ import annotations

import re
import unicodedata
from datetime import date, datetime
from typing import Literal

import msgspec

from gateway.errors import ConfigError

__all__ = [
    "NumberingConfig",
    "TicketNumbering",
    "damm_check_digit",
    "damm_valid",
]

# The standard Damm table: a totally anti-symmetric quasigroup of order 10 with a zero diagonal,
# which is what makes it catch every single-digit error and every adjacent transposition.
_DAMM = (
    (0, 3, 1, 7, 5, 9, 8, 6, 4, 2),
    (7, 0, 9, 2, 1, 5, 4, 8, 6, 3),
    (4, 2, 0, 6, 8, 7, 1, 3, 5, 9),
    (1, 7, 5, 0, 9, 8, 3, 4, 2, 6),
    (6, 1, 2, 3, 0, 4, 5, 9, 7, 8),
    (3, 6, 7, 4, 2, 0, 9, 5, 8, 1),
    (5, 8, 6, 9, 7, 2, 0, 1, 3, 4),
    (8, 9, 4, 5, 3, 6, 2, 0, 1, 7),
    (9, 4, 3, 8, 6, 1, 7, 2, 0, 5),
    (2, 5, 8, 1, 4, 3, 6, 7, 9, 0),
)
_ASCII_DIGITS = frozenset("0123456789")


def _damm_interim(digits: str) -> int:
    """Run the Damm quasigroup over ASCII digits."""
    if not _ASCII_DIGITS.issuperset(digits):
        raise ValueError(f"not a string of ASCII digits: {digits!r}")
    interim = 0
    for ch in digits:
        interim = _DAMM[interim][ord(ch) - 48]
    return interim


def damm_check_digit(digits: str) -> str:
    """Return the Damm check digit for a string of ASCII digits.

    Appending the result to ``digits`` gives a string for which :func:`damm_valid` is true.
    Leading zeros do not change the check digit (the table maps 0 to 0 from the start state).

    Raises:
        ValueError: ``digits`` contains anything other than ``0``-``9``.
    """
    return str(_damm_interim(digits))


def damm_valid(digits_with_check: str) -> bool:
    """Return whether a non-empty string of ASCII digits ends with its correct Damm check digit.

    Anything that is not a non-empty string of ``0``-``9`` is simply invalid (no exception).
    """
    if not digits_with_check or not _ASCII_DIGITS.issuperset(digits_with_check):
        return False
    return _damm_interim(digits_with_check) == 0


class NumberingConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """How ticket numbers look and when their sequence starts again.

    Validated at construction; :class:`ConfigError` names ``numbering.<field>``.
    """

    mask: str = "CX-{date}-{seq:05}-{check}"
    """Placeholders ``{date}``, ``{seq:0N}`` (exactly one) and ``{check}`` (optional, after every
    digit-producing placeholder); other text is literal and must not contain digits."""
    date_format: str = "%Y%m%d"
    """``strftime``-style, numeric directives only (``%Y %y %m %d %j``, and ``%%``)."""
    reset: Literal["daily", "never"] = "daily"
    """``daily``: one sequence per formatted date (the mask must then contain ``{date}``);
    ``never``: one sequence for ever."""

    def __post_init__(self) -> None:
        _compile_mask(self)


# --- mask compilation ------------------------------------------------------------------------

_Token = tuple[Literal["lit", "date", "seq", "check"], str, int]
"""(kind, literal text or "", seq width or 0)."""

_PLACEHOLDER = re.compile(r"\{([^{}]*)\}")
_SEQ_SPEC = re.compile(r"seq(?::0([1-9][0-9]?))?")
_DATE_DIRECTIVES = {"Y": 4, "y": 2, "m": 2, "d": 2, "j": 3}
# Dashes customers (and their keyboards and word processors) produce instead of "-".
_DASHES = dict.fromkeys(
    map(ord, "\u2010\u2011\u2012\u2013\u2014\u2015\u2212\ufe58\ufe63\uff0d"), "-"
)
# Spaces are tolerated around separators; only horizontal ones, so a number never spans lines.
_SP = "[ \\t]*"
# A number must not be glued to a neighbouring Latin letter or digit ("ACX-...", "...-53").
_EDGE = "0-9A-Za-z"


_ANY_DASH = re.compile("[" + "".join(map(chr, _DASHES)) + "]")


def _normalize(text: str) -> str:
    """NFKC (full-width digits and letters become ASCII) and unify dashes."""
    # Each step only when it changes something: NFKC of normalized Chinese text and translate()
    # of text without those dashes cost 3 µs each per message for nothing (is_normalized is a
    # quick check, exact).
    if not unicodedata.is_normalized("NFKC", text):
        text = unicodedata.normalize("NFKC", text)
    return text.translate(_DASHES) if _ANY_DASH.search(text) else text


def _literal_regex(literal: str) -> str:
    """Regex for literal mask text: case-insensitive, spaces allowed around punctuation."""
    out: list[str] = []
    for run in re.findall(r"[^\W\d_]+|\s+|.", _normalize(literal), flags=re.DOTALL):
        if run.isspace():
            out.append(_SP)
        elif run[0].isalpha():
            out.append(re.escape(run))
        else:
            out.append(f"{_SP}{re.escape(run)}{_SP}")
    return "".join(out)


def _date_parts(date_format: str) -> list[tuple[str, str]]:
    """Split a date format into ("dir", letter) and ("lit", text) parts, rejecting the rest."""
    parts: list[tuple[str, str]] = []
    i = 0
    while i < len(date_format):
        ch = date_format[i]
        if ch != "%":
            parts.append(("lit", ch))
            i += 1
            continue
        directive = date_format[i + 1 : i + 2]
        if directive == "%":
            parts.append(("lit", "%"))
        elif directive in _DATE_DIRECTIVES:
            parts.append(("dir", directive))
        else:
            raise ConfigError(
                f"numbering.date_format: unsupported directive %{directive} in {date_format!r}; "
                "use numeric ones only: %Y %y %m %d %j"
            )
        i += 2
    if not any(kind == "dir" for kind, _ in parts):
        raise ConfigError(f"numbering.date_format: {date_format!r} has no date directive")
    for kind, text in parts:
        if kind == "lit" and any(c.isdigit() for c in _normalize(text)):
            raise ConfigError(f"numbering.date_format: literal digits in {date_format!r}")
    return parts


def _tokenize(mask: str) -> list[_Token]:
    """Split a mask into literal and placeholder tokens, rejecting unknown placeholders."""
    tokens: list[_Token] = []
    pos = 0
    for m in _PLACEHOLDER.finditer(mask):
        if m.start() > pos:
            tokens.append(("lit", mask[pos : m.start()], 0))
        name = m.group(1)
        seq = _SEQ_SPEC.fullmatch(name)
        if name == "date":
            tokens.append(("date", "", 0))
        elif name == "check":
            tokens.append(("check", "", 0))
        elif seq is not None:
            tokens.append(("seq", "", int(seq.group(1) or 1)))
        else:
            raise ConfigError(
                f"numbering.mask: unknown placeholder {m.group(0)} in {mask!r}; "
                "use {date}, {seq:0N} or {check}"
            )
        pos = m.end()
    if pos < len(mask):
        tokens.append(("lit", mask[pos:], 0))
    for kind, text, _ in tokens:
        if kind != "lit":
            continue
        if "{" in text or "}" in text:
            raise ConfigError(f"numbering.mask: unbalanced brace in {mask!r}")
        if any(c.isdigit() for c in _normalize(text)):
            raise ConfigError(f"numbering.mask: literal text {text!r} must not contain digits")
    return tokens


def _compile_mask(config: NumberingConfig) -> tuple[list[_Token], list[tuple[str, str]], str]:
    """Validate a config and return its tokens, date parts and regex source."""
    tokens = _tokenize(config.mask)
    kinds = [kind for kind, _, _ in tokens]
    if kinds.count("seq") != 1:
        raise ConfigError(
            f"numbering.mask: needs exactly one {{seq:0N}} placeholder, got {config.mask!r}"
        )
    for name in ("date", "check"):
        if kinds.count(name) > 1:
            raise ConfigError(f"numbering.mask: {{{name}}} appears more than once")
    if "check" in kinds:
        last_digits = max(i for i, kind in enumerate(kinds) if kind in ("date", "seq"))
        if kinds.index("check") < last_digits:
            raise ConfigError(
                "numbering.mask: {check} must come after every {date} and {seq} placeholder"
            )
    if config.reset not in ("daily", "never"):
        raise ConfigError(f"numbering.reset: expected 'daily' or 'never', got {config.reset!r}")
    if config.reset == "daily" and "date" not in kinds:
        # Without the date in the number, a daily sequence would hand out the same number again.
        raise ConfigError("numbering.mask: reset = 'daily' needs a {date} placeholder")
    date_parts = _date_parts(config.date_format)

    date_regex = "".join(
        f"[0-9]{{{_DATE_DIRECTIVES[text]}}}" if kind == "dir" else _literal_regex(text)
        for kind, text in date_parts
    )
    body: list[str] = []
    for kind, text, width in tokens:
        if kind == "lit":
            body.append(_literal_regex(text))
        elif kind == "date":
            body.append(f"(?P<date>{date_regex})")
        elif kind == "seq":
            body.append(f"(?P<seq>[0-9]{{{width},}})")
        else:
            body.append("(?P<check>[0-9])")
    source = f"(?<![{_EDGE}]){''.join(body)}(?![{_EDGE}])"
    return tokens, date_parts, source


# --- numbering -------------------------------------------------------------------------------


class TicketNumbering:
    """Formats, parses and finds ticket numbers for one :class:`NumberingConfig`."""

    pattern: re.Pattern[str]
    """Matches a number in NFKC-normalized text (dashes unified), case-insensitively, with
    named groups ``date``, ``seq`` and ``check`` for the placeholders the mask has. A match is a
    candidate only: :meth:`parse` and :meth:`find_in` also verify the check digit and date."""

    def __init__(self, config: NumberingConfig) -> None:
        self.config = config
        self._tokens, self._date_parts, source = _compile_mask(config)
        self._width = next(width for kind, _, width in self._tokens if kind == "seq")
        self._has_date = any(kind == "date" for kind, _, _ in self._tokens)
        self._has_check = any(kind == "check" for kind, _, _ in self._tokens)
        self.pattern = re.compile(source, re.IGNORECASE)
        self._date_cache: dict[date, str] = {}

    def scope(self, day: date) -> str:
        """The sequence scope a number issued on ``day`` belongs to."""
        return self._format_date(day) if self.config.reset == "daily" else "all"

    def format(self, day: date, seq: int) -> str:
        """The canonical ticket number for sequence ``seq`` (>= 0) issued on ``day``."""
        if seq < 0:
            raise ValueError(f"sequence number must be >= 0, got {seq}")
        out: list[str] = []
        for kind, text, width in self._tokens:
            if kind == "lit":
                out.append(text)
            elif kind == "date":
                out.append(self._format_date(day))
            elif kind == "seq":
                out.append(f"{seq:0{width}d}")
            else:
                # Literals hold no digits, so the digits so far are exactly date + seq digits.
                out.append(damm_check_digit("".join(c for c in "".join(out) if c in _ASCII_DIGITS)))
        return "".join(out)

    def parse(self, typed: str) -> str | None:
        """The canonical number for what a customer typed, or None if it is not a valid one."""
        match = self.pattern.fullmatch(_normalize(typed).strip())
        return None if match is None else self._canonical(match)

    def find_in(self, text: str) -> list[str]:
        """Every valid number in free text, canonical, in order of appearance, without repeats."""
        text = _normalize(text)
        found: dict[str, None] = {}
        pos = 0
        while (match := self.pattern.search(text, pos)) is not None:
            number = self._canonical(match)
            if number is None:
                # An invalid candidate may hide a valid one that overlaps it: look again just after.
                pos = match.start() + 1
            else:
                found.setdefault(number)
                pos = match.end()
        return list(found)

    def _format_date(self, day: date) -> str:
        """Format a date with the numeric directives only, independent of the process locale."""
        # Every ticket of a day formats the same date twice (scope and number): remember it.
        cached = self._date_cache.get(day)
        if cached is None:
            if len(self._date_cache) > 64:
                self._date_cache.clear()
            cached = self._date_cache[day] = self._format_date_uncached(day)
        return cached

    def _format_date_uncached(self, day: date) -> str:
        values = {
            "Y": f"{day.year:04d}",
            "y": f"{day.year % 100:02d}",
            "m": f"{day.month:02d}",
            "d": f"{day.day:02d}",
            "j": f"{day.timetuple().tm_yday:03d}",
        }
        return "".join(values[text] if kind == "dir" else text for kind, text in self._date_parts)

    def _canonical(self, match: re.Match[str]) -> str | None:
        """Verify a regex match (canonical date and seq, check digit) and return the number."""
        seq_text = match.group("seq")
        if len(seq_text) > self._width and seq_text[0] == "0":
            return None  # over-padded: not how we wrote it, and zeros do not move the check digit
        day = date(2000, 1, 1)  # any day will do when the mask shows no date
        if self._has_date:
            typed_date = re.sub(r"[ \t]", "", match.group("date"))
            try:
                day = datetime.strptime(typed_date, self.config.date_format).date()
            except ValueError:
                return None
            if _normalize(self._format_date(day)).casefold() != typed_date.casefold():
                return None
        number = self.format(day, int(seq_text))
        # The check digit is the number's last digit; date and seq are as typed (checked above),
        # so comparing it with ours is the same as running Damm over the typed digits.
        if self._has_check and _last_digit(number) != match.group("check"):
            return None
        return number


def _last_digit(text: str) -> str:
    """The last ASCII digit in ``text``."""
    return next(c for c in reversed(text) if c in _ASCII_DIGITS)
