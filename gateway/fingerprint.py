"""The content fingerprint duplicate detection compares: what the customer actually wrote.

The same complaint sent twice, or through a second channel, differs in everything but its words:
whitespace, letter case, full-width characters, the quoted conversation a mail client appends,
the signature and the "Sent from my iPhone" line. :func:`normalize_for_dedup` removes those, and
:func:`content_fingerprint` hashes what is left.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from functools import lru_cache

__all__ = ["content_fingerprint", "normalize_for_dedup"]

# Lines are matched after NFKC and casefolding, so full-width colons are ":" and "On" is "on".
# "On <date>, <name> wrote:" (Gmail, Apple Mail) and its German / French / Chinese siblings:
# (how the line starts, what it contains); it also ends with a colon and holds a digit (the date),
# which keeps "On Monday my son wrote:" in the customer's own text. Plain string tests rather than
# a regex with two ".*", which would be quadratic on a hostile line.
_ATTRIBUTIONS = (
    ("on ", " wrote:"),
    ("am ", " schrieb "),
    ("le ", " a écrit"),
    ("在", "写道"),
    ("在", "寫道"),
    ("於", "寫道"),
)
_ATTRIBUTION_MAX = 500
_ORIGINAL_MESSAGE = re.compile(
    r"-{2,}\s*(?:original message|原始邮件|原始郵件|原始信件|ursprüngliche nachricht)\s*-{2,}"
)
# An Outlook-style header block: a From line followed closely by Sent / Date / To / Subject.
_HEADER_FROM = re.compile(r"(?:from|发件人|寄件者|寄件人|von|de)\s*:.*")
_HEADER_NEXT = re.compile(
    r"(?:sent|date|to|cc|subject|发送时间|日期|收件人|主题|傳送時間|寄件日期|主旨|gesendet|an|betreff)"
    r"\s*:.*"
)
_HEADER_WINDOW = 3
_SIGNATURE_DELIMITER = "--"  # RFC 3676 "-- "; many clients strip the trailing space
_MOBILE_SIGNATURE = re.compile(
    r"(?:sent from my .+|sent from .+ for (?:ios|android)|get outlook for .+"
    r"|发自我的.+|從我的.+傳送|从我的.+发送|来自我的.+|發自我的.+)"
)
# Invisible characters that survive NFKC and make equal texts differ.
_INVISIBLE_CHARS = "\u200b\u200c\u200d\u2060\ufeff\u00ad"
_INVISIBLE = dict.fromkeys(map(ord, _INVISIBLE_CHARS))
_ANY_INVISIBLE = re.compile(f"[{_INVISIBLE_CHARS}]")
_REPLY_PREFIX = re.compile(
    r"^(?:\s*(?:re|fwd?|fw|aw|wg|tr|sv|回复|回覆|答复|转发|轉寄|轉發)\s*(?:\[\d+\]|\(\d+\))?\s*:)+"
)


def _fold(text: str) -> str:
    """NFKC and casefold, NFKC again since casefolding can produce unnormalized text."""
    folded = unicodedata.normalize("NFKC", unicodedata.normalize("NFKC", text).casefold())
    # str.translate looks every character up in the table; most texts have nothing to remove.
    if folded.isascii() or _ANY_INVISIBLE.search(folded) is None:
        return folded
    return folded.translate(_INVISIBLE)


def _is_header_block(lines: list[str], i: int) -> bool:
    """Whether line ``i`` starts an Outlook header block (From: then Sent:/Date:/To: soon)."""
    if _HEADER_FROM.fullmatch(lines[i].strip()) is None:
        return False
    following = lines[i + 1 : i + 1 + _HEADER_WINDOW]
    return any(_HEADER_NEXT.fullmatch(line.strip()) for line in following)


def _attribution(line: str) -> bool:
    """Whether one (possibly re-joined) line is a reply attribution."""
    if len(line) > _ATTRIBUTION_MAX or not line.endswith(":"):
        return False
    compact = " ".join(line.split()).replace(" :", ":")
    return any(c.isdigit() for c in compact) and any(
        compact.startswith(start) and marker in compact for start, marker in _ATTRIBUTIONS
    )


def _is_attribution(lines: list[str], i: int) -> bool:
    """Whether line ``i`` is a reply attribution, possibly wrapped onto the next line."""
    line = lines[i].strip()
    if _attribution(line):
        return True
    # Gmail wraps a long one: "On Mon, 23 Nov 2026 at 10:00, Alice <" / "a@example.com> wrote:".
    return i + 1 < len(lines) and _attribution(f"{line} {lines[i + 1].strip()}")


def _own_lines(text: str) -> list[str]:
    """The lines the sender wrote: quoted replies, forwarded history and signatures cut."""
    lines = text.splitlines()
    kept: list[str] = []
    for i, line in enumerate(lines):
        stripped = line.strip()
        if (
            line.rstrip() == _SIGNATURE_DELIMITER
            or _ORIGINAL_MESSAGE.fullmatch(stripped)
            or _is_attribution(lines, i)
            or _is_header_block(lines, i)
        ):
            break  # everything from here on was written by someone else, or is boilerplate
        if stripped.startswith(">"):
            continue
        kept.append(line)
    # "Sent from my iPhone" closes the message; mail apps put it last, just above the quote.
    while kept and (not kept[-1].strip() or _MOBILE_SIGNATURE.fullmatch(kept[-1].strip())):
        kept.pop()
    return kept


# A new message's text is normalized twice in a row: for its language (gateway.language), then
# for its fingerprint (gateway.intake). The last few results are kept, for texts up to this
# many characters (longer ones are rare and the language looks at the first 2400 only).
_CACHED_CHARS = 4096


def normalize_for_dedup(text: str) -> str:
    """Reduce a message body to the words its sender wrote, for comparing with other messages.

    Applies NFKC and casefolding; removes quoted lines (``>``), a reply attribution ("On ...
    wrote:", "在 ... 写道：") and everything after it, an Outlook separator ("-----Original
    Message-----", "-----原始邮件-----") or header block ("From: ... / Sent: ...", "发件人: ... /
    发送时间: ...") and everything after it, a signature after a ``-- `` line, and trailing
    "Sent from my iPhone" / "发自我的iPhone" lines; then collapses all whitespace, full-width
    spaces included, to single spaces and strips the ends.
    """
    if len(text) > _CACHED_CHARS:
        return _normalize(text)
    return _normalize_recent(text)


def _normalize(text: str) -> str:
    return " ".join(" ".join(_own_lines(_fold(text))).split())


_normalize_recent = lru_cache(maxsize=64)(_normalize)


def content_fingerprint(subject: str, text: str) -> str:
    """Hex SHA-256 of :func:`normalize_for_dedup` of the body.

    A message with no words of its own in the body (e.g. a subject-only email) is fingerprinted
    by its normalized subject instead, with reply and forward prefixes (``Re:``, ``Fwd:``,
    ``AW:``, ``回复:``, ``转发:`` ..., repeated) removed. Two empty messages share a fingerprint.
    """
    content = normalize_for_dedup(text)
    if not content:
        content = _REPLY_PREFIX.sub("", normalize_for_dedup(subject)).strip()
    return hashlib.sha256(content.encode("utf-8")).hexdigest()
