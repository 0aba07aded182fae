"""What an event carries inline: the message's words cut to a byte budget that fits every broker.

A mail with a 1.6 MB HTML part made an event over NATS's 1 MiB limit, which no retry could ever
deliver. Events therefore carry at most ``intake.event_inline_bytes`` of subject, text, sanitized
HTML and metadata; the rest is fetched by reference (the event's ``body_url``). Attachments are
always by reference (their sha256 under the same URL).
"""

from __future__ import annotations

import msgspec

_MAX_SUBJECT = 1000
_MAX_META_KEYS = 50
_MAX_META_KEY = 100
_MAX_META_VALUE = 1000


class Inline(msgspec.Struct, frozen=True, kw_only=True):
    """The parts of a message that go into its event, and whether anything was cut."""

    subject: str
    text: str
    html: str | None
    metadata: dict[str, str]
    truncated: bool


def cut_utf8(s: str, limit: int) -> str:
    """The longest prefix of ``s`` whose UTF-8 form has at most ``limit`` bytes."""
    data = s.encode("utf-8", "surrogatepass")
    if len(data) <= limit:
        return s
    return data[:max(0, limit)].decode("utf-8", "ignore")


def _size(s: str | None) -> int:
    return 0 if s is None else len(s.encode("utf-8", "surrogatepass"))


def fit_inline(*, subject: str, text: str, html: str | None, metadata: dict[str, str],
               budget: int) -> Inline:
    """Cut metadata, subject, HTML and text, in that order of sacrifice, to ``budget`` bytes.

    Text is kept before HTML: every consumer can show text, and the HTML is a second rendering
    of the same words. Nothing is cut when everything fits.
    """
    cut = False
    meta: dict[str, str] = {}
    for i, (key, value) in enumerate(metadata.items()):
        if i >= _MAX_META_KEYS:
            cut = True
            break
        k, v = key[:_MAX_META_KEY], value[:_MAX_META_VALUE]
        cut |= (k != key or v != value)
        meta[k] = v
    subj = subject[:_MAX_SUBJECT]
    cut |= subj != subject
    left = budget - _size(subj) - sum(_size(k) + _size(v) for k, v in meta.items())
    if _size(text) + _size(html) <= left:
        return Inline(subject=subj, text=text, html=html, metadata=meta, truncated=cut)
    if _size(text) <= left:
        # The text fits alone: the HTML goes by reference.
        return Inline(subject=subj, text=text, html=None, metadata=meta, truncated=True)
    return Inline(subject=subj, text=cut_utf8(text, left), html=None, metadata=meta,
                  truncated=True)
