"""Raw RFC 5322 bytes to a :class:`ParsedEmail`, and a ``ParsedEmail`` to the schema's message.

Contract:

- :func:`parse_email` never raises, whatever the bytes. Input that is not a usable mail comes
  back with ``refusal`` set to a reason a person can act on (the adapter answers SMTP 5xx or
  quarantines it); everything else is best effort, with what went wrong listed in ``defects``
  and the attachments left out for a size or count limit listed in ``dropped``.
- ``text`` is readable text: the text/plain parts, or the HTML converted to text. Forwarded
  (message/rfc822) mail is included in it under a "Forwarded message" header block; the outer
  sender stays the sender.
- ``html`` is sanitized (nh3): no scripts, no event handlers, no styles, no remote loads
  (images keep only ``cid:`` sources); links keep their text and target.
- Attachment names are safe file names (:func:`safe_filename`); inline ``cid:`` images count
  as attachments.
- :func:`to_inbound` builds the schema's ``InboundMessage``; it raises ``RejectedInput`` for a
  refused mail.

Why compat32 and not ``email.policy.default``: the default policy parses address and
Message-ID headers eagerly and raises (IndexError, AttributeError, TypeError) on malformed
ones, and its ``get_content`` raises LookupError for charsets Python does not know. Here
compat32 keeps every header as the raw string (8-bit bytes as surrogate escapes) and the
decoding is ours, with the charset fallbacks of :mod:`adapters.mail.charsets`.
"""

from __future__ import annotations

import mimetypes
import re
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.message import Message
from email.parser import BytesParser
from email.policy import Compat32
from email.utils import parsedate_to_datetime
from html.parser import HTMLParser
from typing import Any

import msgspec
import nh3

from gateway.errors import RejectedInput
from intake_adapters.mail.charsets import (
    codec_chain,
    decode_bytes,
    decode_encoded_words,
    has_raw_bytes,
    locale_for_charset,
    to_raw_bytes,
)
from intake_adapters.mail.loop_policy import classify, should_acknowledge
from intake_schemas.message import Attachment, Contact, FileNotKept, InboundMessage, ThreadHints

MiB = 1024 * 1024


class MailLimits(msgspec.Struct, frozen=True, kw_only=True):
    """Attachment limits; attachments over them are dropped (and listed), never an error."""

    max_attachment_bytes: int = 10 * MiB
    max_total_bytes: int = 25 * MiB
    max_attachments: int = 20


class MailAttachment(msgspec.Struct, frozen=True, kw_only=True):
    """One attachment or inline part, decoded."""

    name: str
    """A safe file name (see :func:`safe_filename`)."""
    content_type: str
    data: bytes
    content_id: str | None = None
    """The Content-ID without angle brackets, for ``cid:`` references in the HTML."""
    inline: bool = False


class ParsedEmail(msgspec.Struct, frozen=True, kw_only=True):
    """What one email says, decoded; built only by :func:`parse_email`."""

    message_id: str | None = None
    """Message-ID without angle brackets."""
    from_address: str | None = None
    """Lower-cased addr-spec of the (first) From mailbox, or Sender when From has none."""
    from_name: str | None = None
    reply_to: str | None = None
    """First Reply-To address, lower-cased."""
    to: list[str] = []
    cc: list[str] = []
    subject: str = ""
    date: datetime | None = None
    """The Date header in UTC; None when missing or unparseable."""
    in_reply_to: str | None = None
    references: list[str] = []
    text: str = ""
    html: str | None = None
    """Sanitized HTML, if the mail had any."""
    attachments: list[MailAttachment] = []
    dropped: list[str] = []
    """One reason per attachment left out for a limit (the first 50, then a count)."""
    not_kept: list[FileNotKept] = []
    """The attachments left out, as the acknowledgement names them (the first 50)."""
    locale: str | None = None
    """BCP 47 guess: Content-Language; else kana / Hangul in the text (``ja`` / ``ko``); else
    the body charset (GB2312/GBK ``zh-CN``, Big5 ``zh-TW``, Shift_JIS/ISO-2022-JP ``ja``...);
    else Han characters, simplified or traditional (``zh-CN`` / ``zh-TW``); else None."""
    content_type: str = "text/plain"
    """The top-level MIME type."""
    report_type: str | None = None
    """``delivery-status``, ``disposition-notification`` or ``feedback-report`` for reports."""
    loop_headers: dict[str, str] = {}
    """Headers the loop policy reads, by lower-cased name (first occurrence, decoded)."""
    enclosed_message_ids: list[str] = []
    """Message-IDs of enclosed messages (message/rfc822, text/rfc822-headers parts) and MDN
    Original-Message-ID fields: in a bounce, the ids of the mail that bounced."""
    defects: list[str] = []
    refusal: str | None = None
    """Why this input cannot be taken as a mail at all; None for a usable mail."""
    auth_results: str | None = None
    """The topmost ``Authentication-Results`` header (RFC 8601), as the nearest MTA wrote it:
    its SPF/DKIM/DMARC verdicts on the sender. Meaningful only when that MTA removes forged
    ones carrying its own authserv-id, as RFC 8601 section 5 asks; recorded, not trusted."""


DEFAULT_LIMITS = MailLimits()

LOOP_HEADERS = (
    "auto-submitted",
    "precedence",
    "x-precedence",
    "list-id",
    "list-unsubscribe",
    "list-post",
    "x-auto-response-suppress",
    "x-autoreply",
    "x-autorespond",
    "x-autoresponder",
    "x-autogenerated",
    "x-apple-action",
    "x-ms-exchange-inbox-rules-loop",
    "x-ms-exchange-generated-message-source",
    "return-path",
    "x-failed-recipients",
    "sender",
)

_MAX_DEPTH = 32
_MAX_PARTS = 1000
_MAX_DEFECTS = 50
_MAX_DROPPED = 50
_MAX_REFERENCES = 100
_MAX_RECIPIENTS = 200
_MAX_NAME_BYTES = 200

_FORWARD_MARK = "---------- Forwarded message ----------"


class _RawHeaders(Compat32):
    """compat32, except header values come back as the raw strings the parser stored."""

    def header_fetch_parse(self, name: str, value: str) -> str:
        # compat32 would wrap 8-bit values in a Header object; we decode them ourselves.
        return value


_POLICY = _RawHeaders()


# ---------------------------------------------------------------- small text helpers

_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")
_LINE_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]+")
_MIME_TYPE = re.compile(r"[a-z0-9][a-z0-9!#$&^_.+-]*/[a-z0-9][a-z0-9!#$&^_.+-]*")
_ENCODED_WORD = re.compile(r"=\?[^?\s]{1,80}\?[bBqQ]\?[^?]*\?=")


def _clean_line(text: str) -> str:
    """One header line of text: controls and folding become single spaces."""
    return " ".join(_LINE_CONTROL.sub(" ", text).split())


def _clean_text(text: str) -> str:
    """Body text: LF line ends, no control characters but tabs and newlines."""
    text = text.replace("\r\n", "\n").replace("\r", "\n").lstrip("\ufeff")
    return _CONTROL.sub("", text)


def _header(msg: Message, name: str, fallbacks: tuple[str | None, ...]) -> str:
    value = msg.get(name)
    if value is None:
        return ""
    return _clean_line(decode_encoded_words(str(value), fallbacks=fallbacks))


def _raw_text(value: str, fallbacks: tuple[str | None, ...] = ()) -> str:
    """A header string with its raw 8-bit bytes decoded (no RFC 2047 decoding)."""
    if has_raw_bytes(value):
        return decode_bytes(to_raw_bytes(value), None, fallbacks=fallbacks)
    return value


# ---------------------------------------------------------------- identifiers and dates

_ANGLE_ID = re.compile(r"<\s*([^<>\s]+)\s*>")


def _message_id(value: str | None) -> str | None:
    if not value:
        return None
    text = _clean_line(_raw_text(str(value)))
    match = _ANGLE_ID.search(text)
    if match is not None:
        ident = match.group(1)
    else:
        tokens = text.replace("<", " ").replace(">", " ").split()
        ident = tokens[0] if tokens else ""
    return ident[:998] or None


def _message_ids(value: str | None) -> list[str]:
    if not value:
        return []
    text = _clean_line(_raw_text(str(value)))
    found = _ANGLE_ID.findall(text)
    if not found:
        # Some clients drop the brackets; only tokens that look like ids count then.
        found = [token for token in re.split(r"[\s,]+", text) if "@" in token]
    unique = list(dict.fromkeys(ident[:998] for ident in found))
    if len(unique) > _MAX_REFERENCES:
        # The thread root and the most recent ancestors are what threading needs.
        unique = unique[:1] + unique[-(_MAX_REFERENCES - 1) :]
    return unique


_DATE_COMMENT = re.compile(r"\([^()]*\)")


def _date(value: str | None) -> datetime | None:
    if not value:
        return None
    # "00:19:00 (EDT) -0400": the comment hides the zone from parsedate; comments carry nothing.
    text = " ".join(_DATE_COMMENT.sub(" ", _clean_line(_raw_text(str(value)))).split())
    try:
        parsed = parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if parsed.tzinfo is None:
        # RFC 5322: "-0000" (and no zone at all, in practice) is UTC without local-zone info.
        parsed = parsed.replace(tzinfo=UTC)
    try:
        return parsed.astimezone(UTC)
    except (OverflowError, ValueError):
        return None


# ---------------------------------------------------------------- addresses

_GROUP_PREFIX = re.compile(r'^[^"<>@,;:()]*:(?!:)')
_COMMENT = re.compile(r"\(([^()]*)\)")
_ADDRESS_IN_NAME = re.compile(r"[^\s<>()\"',;:@]+@[^\s<>()\"',;:@]+\.[^\s<>()\"',;:@]+")
_BAD_DOMAIN_CHARS = set('<>(),;:"\\ \t')


def _split_address_list(value: str) -> list[str]:
    """Split on top-level ',' and ';' (not inside quotes, comments, <> or encoded-words)."""
    chunks: list[str] = []
    buf: list[str] = []
    quoted = False
    angle = paren = 0
    i, n = 0, len(value)
    while i < n:
        ch = value[i]
        if quoted:
            buf.append(ch)
            if ch == "\\" and i + 1 < n:
                buf.append(value[i + 1])
                i += 2
                continue
            if ch == '"':
                quoted = False
        elif paren:
            buf.append(ch)
            if ch == "(":
                paren += 1
            elif ch == ")":
                paren -= 1
        elif ch == '"':
            quoted = True
            buf.append(ch)
        elif ch == "(":
            paren = 1
            buf.append(ch)
        elif ch == "<":
            angle += 1
            buf.append(ch)
        elif ch == ">" and angle:
            angle -= 1
            buf.append(ch)
        elif ch == "=" and (word := _ENCODED_WORD.match(value, i)) is not None:
            # Mailers put raw commas inside encoded-words ("=?utf-8?Q?Doe,_John?=").
            buf.append(word.group(0))
            i = word.end()
            continue
        elif ch in ",;" and not angle:
            chunks.append("".join(buf))
            buf = []
        else:
            buf.append(ch)
        i += 1
    chunks.append("".join(buf))
    return chunks


def _unquote_name(name: str) -> str:
    name = name.strip()
    if len(name) >= 2 and name[0] == name[-1] and name[0] in "\"'":
        name = name[1:-1]
        name = re.sub(r"\\(.)", r"\1", name)
    return name


def _normalize_address(addr: str, fallbacks: tuple[str | None, ...]) -> str | None:
    addr = "".join(_raw_text(addr, fallbacks).split()).strip("<>")
    if addr.lower().startswith("mailto:"):
        addr = addr[len("mailto:") :]
    local, at, domain = addr.rpartition("@")
    domain = domain.rstrip(".")
    if not at or not local or not domain or len(addr) > 320:
        return None
    if any(ch in _BAD_DOMAIN_CHARS for ch in domain) or _LINE_CONTROL.search(addr):
        return None
    return f"{local}@{domain}".lower()


def _mailboxes(chunk: str, fallbacks: tuple[str | None, ...]) -> list[tuple[str, str | None]]:
    """(display name, address) pairs in one comma-separated chunk of an address header."""
    chunk = chunk.strip()
    group = _GROUP_PREFIX.match(chunk)
    if group is not None:
        chunk = chunk[group.end() :]
    chunk = chunk.strip().rstrip(";").strip()
    if not chunk:
        return []
    lt = chunk.rfind("<")
    if lt != -1:
        gt = chunk.find(">", lt)
        addr = chunk[lt + 1 : gt] if gt != -1 else chunk[lt + 1 :]
        name = chunk[:lt] + (chunk[gt + 1 :] if gt != -1 else "")
        comments = _COMMENT.findall(name)
        name = _COMMENT.sub(" ", name).strip() or " ".join(comments)
        return [(name, _normalize_address(addr, fallbacks))]
    comments = _COMMENT.findall(chunk)
    rest = _COMMENT.sub(" ", chunk)
    tokens = [token for token in rest.split() if "@" in token]
    if not tokens:
        decoded = decode_encoded_words(chunk, fallbacks=fallbacks)
        if decoded != chunk and "@" in decoded and "=?" not in decoded:
            # Some mailers encode the whole mailbox: =?utf-8?B?(客户 <a@b.example>)?=
            return _mailboxes(decoded, fallbacks)
        return [(rest.strip() or " ".join(comments), None)]
    # Several bare addresses separated by spaces: a common mistake, each is a mailbox.
    name = " ".join(comments)
    return [
        (name if i == 0 else "", _normalize_address(token, fallbacks))
        for i, token in enumerate(tokens)
    ]


def _address_list(
    values: list[str] | None, fallbacks: tuple[str | None, ...], defects: list[str]
) -> list[tuple[str | None, str | None]]:
    result: list[tuple[str | None, str | None]] = []
    for value in values or []:
        unfolded = re.sub(r"\r?\n", " ", str(value))
        for chunk in _split_address_list(unfolded):
            for raw_name, addr in _mailboxes(chunk, fallbacks):
                decoded = decode_encoded_words(_unquote_name(raw_name), fallbacks=fallbacks)
                name = _clean_line(decoded)
                spoof = _ADDRESS_IN_NAME.search(name) if name and addr else None
                if spoof is not None and spoof.group(0).lower() != addr:
                    defects.append("display name shows a different address than the mailbox")
                result.append((name or None, addr))
            if len(result) >= _MAX_RECIPIENTS:
                return result
    return result


def _addresses_only(pairs: list[tuple[str | None, str | None]]) -> list[str]:
    return list(dict.fromkeys(addr for _, addr in pairs if addr))


# ---------------------------------------------------------------- file names


def _default_types() -> mimetypes.MimeTypes:
    # A private table so fallback names do not depend on the machine's /etc/mime.types.
    types = mimetypes.MimeTypes()
    for ext, ctype in ((".txt", "text/plain"), (".jpg", "image/jpeg"), (".html", "text/html"),
                       (".eml", "message/rfc822"), (".bin", "application/octet-stream")):
        types.add_type(ctype, ext)
    return types


_TYPES = _default_types()
_PREFERRED_EXT = {
    "text/plain": ".txt",
    "image/jpeg": ".jpg",
    "text/html": ".html",
    "message/rfc822": ".eml",
    "application/octet-stream": ".bin",
}
_UNSAFE_NAME_CHARS = re.compile(r'[:*?"<>|]')
_WINDOWS_RESERVED = re.compile(r"^(con|prn|aux|nul|com[0-9]|lpt[0-9])(\..*)?$", re.IGNORECASE)


def _extension_for(content_type: str) -> str:
    ext = _PREFERRED_EXT.get(content_type)
    if ext is None:
        ext = _TYPES.guess_extension(content_type, strict=False) or ".bin"
    return ext


def _truncate_name(name: str) -> str:
    if len(name.encode("utf-8")) <= _MAX_NAME_BYTES:
        return name
    stem, dot, ext = name.rpartition(".")
    if not dot or not stem or len(ext) > 16:
        stem, ext = name, ""
    suffix = f".{ext}" if ext else ""
    budget = _MAX_NAME_BYTES - len(suffix.encode("utf-8"))
    cut = stem.encode("utf-8")[:budget].decode("utf-8", "ignore").rstrip(" .")
    return cut + suffix


def safe_filename(name: str | None, *, index: int, content_type: str) -> str:
    """A file name safe to show and to store: never raises, never empty.

    Keeps only the last path component, drops control and format characters (newlines become
    spaces; bidi overrides disappear), replaces characters Windows forbids, strips leading
    dots and spaces, guards reserved device names and caps the length at 200 UTF-8 bytes
    (keeping the extension). Without a usable name: ``attachment-<index><ext>``.
    """
    cleaned = ""
    if name:
        chars: list[str] = []
        for ch in unicodedata.normalize("NFC", str(name)):
            category = unicodedata.category(ch)
            if ch in "\t\n\r\x0b\x0c" or category in ("Zl", "Zp"):
                chars.append(" ")
            elif category in ("Cc", "Cf", "Cs"):
                continue
            else:
                chars.append(ch)
        cleaned = "".join(chars)
        cleaned = re.split(r"[/\\]", cleaned)[-1]
        cleaned = _UNSAFE_NAME_CHARS.sub("_", cleaned)
        cleaned = " ".join(cleaned.split()).strip(" .")
        if _WINDOWS_RESERVED.match(cleaned):
            cleaned = "_" + cleaned
        cleaned = _truncate_name(cleaned)
    if not cleaned:
        cleaned = f"attachment-{index}{_extension_for(content_type)}"
    return cleaned


# ---------------------------------------------------------------- HTML


_CLEAN_CONTENT = {"script", "style", "title", "template", "noscript", "xmp", "iframe", "object"}


def _keep_attribute(tag: str, attribute: str, value: str) -> str | None:
    # Images may only point into the mail itself; any other source (http, https,
    # protocol-relative, relative) would be fetched when the mail is shown: a tracking beacon.
    if tag == "img" and attribute == "src" and not value.strip().lower().startswith("cid:"):
        return None
    return value


def sanitize_html(html: str) -> str:
    """HTML safe to show an agent: no scripts, handlers, styles, forms or remote loads."""
    try:
        return nh3.clean(
            html,
            clean_content_tags=_CLEAN_CONTENT,
            url_schemes={"http", "https", "mailto", "tel", "cid"},
            attribute_filter=_keep_attribute,
            link_rel="noopener noreferrer nofollow",
            strip_comments=True,
        )
    except Exception:  # a sanitizer failure must not let raw HTML through, nor lose the mail
        return ""


class _TextExtractor(HTMLParser):
    """Readable text from HTML: block structure as line breaks, link targets kept."""

    _BLOCKS = frozenset({
        "p", "div", "br", "tr", "li", "ul", "ol", "table", "h1", "h2", "h3", "h4", "h5", "h6",
        "blockquote", "pre", "hr", "section", "article", "header", "footer", "dd", "dt", "dl",
        "address", "center", "form", "fieldset", "caption", "body", "html",
    })
    _SKIP = frozenset({"script", "style", "title", "template", "noscript", "xmp", "head"})

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self._skip = 0
        self._pre = 0
        self._href: str | None = None
        self._link_text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in self._SKIP:
            # <head> is skipped only while it holds nothing but metadata (see handle_data).
            self._skip += 1
            return
        if tag in self._BLOCKS:
            self.parts.append("\n")
        if tag == "pre":
            self._pre += 1
        elif tag == "li":
            self.parts.append("- ")
        elif tag in ("td", "th"):
            self.parts.append(" ")
        elif tag == "a":
            self._href = dict(attrs).get("href")
            self._link_text = []

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in ("br", "hr"):
            self.parts.append("\n")

    def handle_endtag(self, tag: str) -> None:
        if tag in self._SKIP:
            self._skip = max(0, self._skip - 1)
            return
        if tag == "pre":
            self._pre = max(0, self._pre - 1)
        if tag == "a" and self._href is not None:
            href, text = self._href.strip(), "".join(self._link_text).strip()
            if href.lower().startswith(("http://", "https://")) and href not in text:
                self.parts.append(f" <{href}>")
            self._href = None
        if tag in self._BLOCKS:
            self.parts.append("\n")

    def handle_data(self, data: str) -> None:
        if self._skip:
            return
        if not self._pre:
            data = re.sub(r"\s+", " ", data)
        if self._href is not None:
            self._link_text.append(data)
        self.parts.append(data)


def html_to_text(html: str) -> str:
    """Readable plain text from an HTML body; never raises."""
    extractor = _TextExtractor()
    try:
        extractor.feed(html)
        extractor.close()
        raw = "".join(extractor.parts)
    except Exception:  # html.parser gives up on some broken markup: fall back to tag stripping
        raw = re.sub(r"<[^>]*>", " ", re.sub(r"(?is)<(script|style)\b.*?</\1\s*>", " ", html))
    lines = [" ".join(line.split()) if "\t" not in line else line.strip()
             for line in _clean_text(raw).split("\n")]
    text = "\n".join(lines)
    return re.sub(r"\n{3,}", "\n\n", text).strip()


_META_CHARSET = re.compile(
    rb"<meta[^>]{0,200}?charset\s*=\s*[\"']?\s*([A-Za-z0-9_.:-]{1,40})", re.IGNORECASE
)


def _html_charset(data: bytes, declared: str | None) -> str | None:
    if codec_chain(declared) not in ((), ("ascii",)):
        # A real MIME label wins over <meta> (the meta is often stale: "utf-16" in UTF-8 mail).
        return declared
    match = _META_CHARSET.search(data[:4096])
    if match is None:
        return declared
    label = match.group(1).decode("ascii")
    chain = codec_chain(label)
    if not chain or chain[0].startswith(("utf-16", "utf-32")):
        return declared
    return label


# ---------------------------------------------------------------- format=flowed


def _unflow(text: str, delsp: bool) -> str:
    """RFC 3676 format=flowed to plain lines: soft breaks joined, quote depth respected."""
    out: list[str] = []
    buf: str | None = None
    buf_depth = 0
    for line in text.split("\n"):
        stripped = line.lstrip(">")
        depth = len(line) - len(stripped)
        if stripped.startswith(" "):
            stripped = stripped[1:]  # space-stuffing (or the space after the quote marks)
        if buf is not None and depth != buf_depth:
            out.append(">" * buf_depth + (" " if buf_depth else "") + buf)
            buf = None
        flowed = stripped.endswith(" ") and stripped != "-- "
        piece = stripped[:-1] if (flowed and delsp) else stripped
        buf = piece if buf is None else buf + piece
        buf_depth = depth
        if not flowed:
            out.append(">" * depth + (" " if depth else "") + buf)
            buf = None
    if buf is not None:
        out.append(">" * buf_depth + (" " if buf_depth else "") + buf)
    return "\n".join(out)


# ---------------------------------------------------------------- the MIME walk


@dataclass
class _Body:
    texts: list[str] = field(default_factory=list)
    htmls: list[str] = field(default_factory=list)

    def text(self) -> str:
        text = "\n\n".join(part.strip("\n") for part in self.texts if part.strip())
        if not text and self.htmls:
            text = html_to_text("\n".join(self.htmls))
        return text


def _param(part: Message, name: str, header: str = "content-type") -> str | None:
    try:
        value: Any = part.get_param(name, header=header)
    except Exception:
        return None
    if isinstance(value, tuple):
        value = value[2]
    if not value:
        return None
    return _clean_line(str(value)) or None


def _content_type(part: Message) -> str:
    ctype = part.get_content_type()
    return ctype if _MIME_TYPE.fullmatch(ctype) else "text/plain"


def _disposition(part: Message) -> str:
    value = part.get("content-disposition")
    if not value:
        return ""
    return str(value).split(";", 1)[0].strip().lower()


def _latin1_bytes(text: str) -> bytes:
    try:
        return text.encode("latin-1", "surrogateescape")
    except UnicodeError:
        return to_raw_bytes(text)


class _MimeWalk:
    """One pass over a parsed message, collecting the body, attachments and facts."""

    def __init__(self, limits: MailLimits, fallbacks: tuple[str | None, ...]) -> None:
        self.limits = limits
        self.fallbacks = fallbacks
        self.attachments: list[MailAttachment] = []
        self.dropped: list[str] = []
        self.not_kept: list[FileNotKept] = []
        self.defects: list[str] = []
        self.enclosed_ids: list[str] = []
        self.report_type: str | None = None
        self.body_charsets: list[str] = []
        self.total_bytes = 0
        self.parts_seen = 0
        self.enclosed_depth = 0

    # --- dispatch

    def visit(self, part: Message, depth: int, body: _Body) -> None:
        if depth > _MAX_DEPTH or self.parts_seen >= _MAX_PARTS:
            self.defects.append("MIME tree too deep or too large; the rest was skipped")
            return
        self.parts_seen += 1
        self.defects.extend(type(defect).__name__ for defect in getattr(part, "defects", []))
        try:
            self._visit(part, depth, body)
        except Exception as exc:  # one broken part must not lose the rest of the mail
            self.defects.append(f"part skipped after {type(exc).__name__}")

    def _visit(self, part: Message, depth: int, body: _Body) -> None:
        ctype = _content_type(part)
        if ctype == "multipart/report":
            self._note_report((_param(part, "report-type") or "").lower())
        if part.is_multipart():
            children = [c for c in part.get_payload() if isinstance(c, Message)]
            if ctype.startswith("message/"):
                self._visit_message(ctype, children, depth, body)
            elif ctype == "multipart/alternative":
                self._visit_alternative(children, depth, body)
            else:
                for child in children:
                    self.visit(child, depth + 1, body)
            self._visit_epilogue_parts(part, depth, body)
            return
        if ctype.startswith("multipart/"):
            recovered = self._recover_multipart(part, ctype)
            if recovered is not None:
                self.visit(recovered, depth + 1, body)
                return
            ctype = "text/plain"  # RFC 2046: an unreadable multipart is shown as text
        self._visit_leaf(part, ctype, body)

    def _visit_alternative(self, children: list[Message], depth: int, body: _Body) -> None:
        # Every alternative is walked (their attachments and cid: images all count); the
        # text comes from the first one that has plain text, the HTML from the last with HTML.
        bodies = []
        for child in children:
            child_body = _Body()
            self.visit(child, depth + 1, child_body)
            bodies.append(child_body)
        with_text = [b for b in bodies if any(t.strip() for t in b.texts)]
        with_html = [b for b in bodies if b.htmls]
        if with_text:
            body.texts.extend(with_text[0].texts)
        if with_html:
            body.htmls.extend(with_html[-1].htmls)

    def _visit_message(
        self, ctype: str, children: list[Message], depth: int, body: _Body
    ) -> None:
        if ctype == "message/delivery-status":
            self._note_report("delivery-status")
            body.texts.append("\n\n".join(self._field_block(block) for block in children))
            return
        if ctype in ("message/disposition-notification", "message/feedback-report"):
            self._note_report(ctype.split("/", 1)[1])
            for block in children:
                original = block.get("original-message-id")
                if original and (ident := _message_id(str(original))):
                    self.enclosed_ids.append(ident)
                body.texts.append(self._field_block(block))
            return
        if ctype in ("message/partial", "message/external-body"):
            self.defects.append(f"{ctype} is not reassembled or fetched")
            return
        for enclosed in children[:1]:
            self._visit_enclosed(enclosed, depth, body)

    def _visit_enclosed(self, enclosed: Message, depth: int, body: _Body) -> None:
        ident = _message_id(enclosed.get("message-id"))
        if ident:
            self.enclosed_ids.append(ident)
        inner = _Body()
        self.enclosed_depth += 1
        try:
            self.visit(enclosed, depth + 1, inner)
        finally:
            self.enclosed_depth -= 1
        lines = [_FORWARD_MARK]
        for name in ("From", "Date", "Subject", "To"):
            value = _header(enclosed, name, self.fallbacks)
            if value:
                lines.append(f"{name}: {value}")
        text = inner.text()
        body.texts.append("\n".join(lines) + ("\n\n" + text if text else ""))

    def _field_block(self, block: Message) -> str:
        return "\n".join(
            f"{name}: {_clean_line(decode_encoded_words(str(value), fallbacks=self.fallbacks))}"
            for name, value in block.items()
        )

    def _visit_epilogue_parts(self, part: Message, depth: int, body: _Body) -> None:
        """Parts after the close delimiter: an inner multipart reused the outer boundary.

        (Outlook Express for Mac did this; the inner close then ends the outer multipart
        early and the attachments that follow land in the epilogue.)
        """
        boundary = part.get_boundary()
        epilogue = part.epilogue
        if not boundary or not epilogue or f"--{boundary}" not in epilogue:
            return
        head = f'Content-Type: multipart/mixed; boundary="{boundary}"\r\n\r\n'
        try:
            rest = BytesParser(policy=_POLICY).parsebytes(to_raw_bytes(head + epilogue))
        except (UnicodeError, ValueError):
            return
        if rest.is_multipart():
            self.defects.append("parts found after the closing boundary")
            for child in rest.get_payload():
                if isinstance(child, Message):
                    self.visit(child, depth + 1, body)

    def _recover_multipart(self, part: Message, ctype: str) -> Message | None:
        """A multipart whose declared boundary never appears: use the delimiter it does have."""
        payload = self._payload(part)
        match = re.search(rb"^--([!#-~][ !#-~]{0,200}?)[ \t]*\r?$", payload, re.MULTILINE)
        if match is None:
            return None
        boundary = match.group(1)
        self.defects.append("declared multipart boundary not found; used the one in the body")
        head = b"Content-Type: " + ctype.encode("ascii") + b'; boundary="' + boundary + b'"\r\n\r\n'
        recovered = BytesParser(policy=_POLICY).parsebytes(head + payload)
        if recovered.is_multipart() and recovered.get_payload():
            return recovered
        return None

    # --- leaves

    def _visit_leaf(self, part: Message, ctype: str, body: _Body) -> None:
        disposition = _disposition(part)
        filename = self._filename(part)
        is_body = (
            ctype in ("text/plain", "text/html")
            and disposition != "attachment"
            and filename is None
        )
        if not is_body and ctype == "text/rfc822-headers":
            self._visit_headers_part(part, body)
            return
        if not is_body:
            self._add_attachment(part, ctype, filename, disposition)
            return
        data = self._payload(part)
        charset = _param(part, "charset")
        if ctype == "text/html":
            charset = _html_charset(data, charset)
            html = decode_bytes(data, charset, fallbacks=self.fallbacks)
            if html.strip():
                body.htmls.append(_clean_text(html))
                self._note_charset(charset)
            return
        text = _clean_text(decode_bytes(data, charset, fallbacks=self.fallbacks))
        if (_param(part, "format") or "").lower() == "flowed":
            text = _unflow(text, (_param(part, "delsp") or "").lower() == "yes")
        if text.strip():
            body.texts.append(text)
            self._note_charset(charset)

    def _visit_headers_part(self, part: Message, body: _Body) -> None:
        headers = BytesParser(policy=_POLICY).parsebytes(self._payload(part), headersonly=True)
        ident = _message_id(headers.get("message-id"))
        if ident:
            self.enclosed_ids.append(ident)
        lines = ["---------- Original message headers ----------"]
        for name in ("From", "Date", "Subject", "To", "Message-ID"):
            value = _header(headers, name, self.fallbacks)
            if value:
                lines.append(f"{name}: {value}")
        body.texts.append("\n".join(lines))

    def _note_report(self, report_type: str) -> None:
        # A report inside a forwarded mail is the forwarded mail's, not this one's.
        if report_type and self.report_type is None and not self.enclosed_depth:
            self.report_type = report_type

    def _note_charset(self, charset: str | None) -> None:
        # The charset of a forwarded or bounced original says nothing about the sender.
        if charset and not self.enclosed_depth:
            self.body_charsets.append(charset)

    def _payload(self, part: Message) -> bytes:
        try:
            data = part.get_payload(decode=True)
        except Exception as exc:
            self.defects.append(f"payload not decodable ({type(exc).__name__})")
            return b""
        if isinstance(data, bytes):
            return data
        return b""

    def _filename(self, part: Message) -> str | None:
        for header, param in (("content-disposition", "filename"), ("content-type", "name")):
            try:
                value: Any = part.get_param(param, header=header)
            except Exception:
                continue
            if not value:
                continue
            if isinstance(value, tuple):
                # RFC 2231: (charset, language, percent-decoded text as Latin-1 code points).
                charset, _, text = value
                name = decode_bytes(_latin1_bytes(str(text)), charset or "utf-8",
                                    fallbacks=self.fallbacks)
            else:
                # Encoded-words in a quoted name are not standard but are what Outlook sends.
                unfolded = re.sub(r"\r?\n[ \t]?", "", str(value))
                name = decode_encoded_words(unfolded, fallbacks=self.fallbacks)
            if name.strip():
                return name
        return None

    def _add_attachment(
        self, part: Message, ctype: str, filename: str | None, disposition: str
    ) -> None:
        index = len(self.attachments) + len(self.dropped) + 1
        name = safe_filename(filename, index=index, content_type=ctype)
        limits = self.limits
        if len(self.attachments) >= limits.max_attachments:
            self.dropped.append(f"{name}: more than {limits.max_attachments} attachments")
            self.not_kept.append(FileNotKept(name=name, reason="too_many",
                                             limit=limits.max_attachments))
            return
        data = self._payload(part)
        if len(data) > limits.max_attachment_bytes:
            self.dropped.append(
                f"{name}: {len(data)} bytes, over the {limits.max_attachment_bytes}-byte limit "
                "per attachment"
            )
            self.not_kept.append(FileNotKept(name=name, reason="too_large",
                                             limit=limits.max_attachment_bytes))
            return
        if self.total_bytes + len(data) > limits.max_total_bytes:
            self.dropped.append(
                f"{name}: {len(data)} bytes, over the {limits.max_total_bytes}-byte total limit"
            )
            self.not_kept.append(FileNotKept(name=name, reason="too_large",
                                             limit=limits.max_total_bytes))
            return
        self.total_bytes += len(data)
        content_id = _message_id(part.get("content-id"))
        self.attachments.append(
            MailAttachment(
                name=name,
                content_type=ctype,
                data=data,
                content_id=content_id,
                inline=disposition == "inline" or (disposition == "" and content_id is not None),
            )
        )


# ---------------------------------------------------------------- locale

_LANGUAGE_TAG = re.compile(r"^[A-Za-z]{2,3}(-[A-Za-z0-9]{1,8})*$")


def _language_tag(value: str) -> str | None:
    first = value.split(",", 1)[0].split(";", 1)[0].strip()
    if not _LANGUAGE_TAG.match(first):
        return None
    subtags = first.split("-")
    out = [subtags[0].lower()]
    for sub in subtags[1:]:
        if len(sub) == 4 and sub.isalpha():
            out.append(sub.title())
        elif (len(sub) == 2 and sub.isalpha()) or (len(sub) == 3 and sub.isdigit()):
            out.append(sub.upper())
        else:
            out.append(sub.lower())
    return "-".join(out)


def _encodable(ch: str, codec: str) -> bool:
    try:
        ch.encode(codec)
    except UnicodeError:
        return False
    return True


_KANA = re.compile("[\u3040-\u30ff\uff66-\uff9f]")
_HANGUL = re.compile("[\uac00-\ud7af\u1100-\u11ff]")
_HAN = re.compile("[\u4e00-\u9fff\u3400-\u4dbf]")


def _locale_from_script(text: str) -> str | None:
    text = text[:4000]
    if text.isascii():  # most mail: no script to guess from, and no per-character loop
        return None
    kana = len(_KANA.findall(text))
    hangul = len(_HANGUL.findall(text))
    han = _HAN.findall(text)
    if kana >= 2:
        return "ja"
    if hangul >= 2 and hangul >= len(han):
        return "ko"
    if len(han) < 2:
        return None
    # Simplified characters exist only in GB2312, traditional ones only in Big5.
    sample = han[:500]
    simplified = sum(1 for ch in sample if _encodable(ch, "gb2312") and not _encodable(ch, "big5"))
    traditional = sum(1 for ch in sample if _encodable(ch, "big5") and not _encodable(ch, "gb2312"))
    return "zh-TW" if traditional > simplified else "zh-CN"


def _guess_locale(content_language: str, charsets: list[str], text: str) -> str | None:
    if content_language and (tag := _language_tag(content_language)):
        return tag
    by_script = _locale_from_script(text)
    if by_script in ("ja", "ko"):
        # Kana and Hangul are unambiguous; a GB2312 label on Japanese text is not.
        return by_script
    for charset in charsets:
        locale = locale_for_charset(charset)
        if locale is not None:
            return locale
    return by_script


# ---------------------------------------------------------------- entry points

_LEADING_BLANK_LINES = re.compile(rb"(?:[ \t]*\r?\n)+")
_INDENTED_FIRST_HEADER = re.compile(rb"[ \t]+(?=[!-9;-~]+:)")
_HEADER_LINE = re.compile(rb"[!-9;-~]+[ \t]*:")
_KNOWN_HEADER = re.compile(
    rb"(?i)(from|to|cc|subject|date|message-id|reply-to|sender|mime-version|content-[a-z-]+"
    rb"|received|return-path|in-reply-to|references|x-[!-9;-~]+)[ \t]*:"
)
# A MIME parameter wrapped onto a new line without the leading whitespace folding needs.
_UNFOLDED_PARAM = re.compile(
    rb"(?im)^(content-(?:type|disposition)[ \t]*:[^\r\n]*;[ \t]*\r?\n)(?=[a-z0-9*_-]+[ \t]*=)"
)


def _trim_preamble(raw: bytes, defects: list[str]) -> bytes:
    if raw.startswith(b"\xef\xbb\xbf"):
        raw = raw[3:]
    # Relays and export tools prepend blank lines or indent the first header by mistake.
    match = _LEADING_BLANK_LINES.match(raw)
    if match is not None:
        raw = raw[match.end() :]
    match = _INDENTED_FIRST_HEADER.match(raw)
    if match is not None:
        raw = raw[match.end() :]
        defects.append("first header line was indented")
    raw, count = _UNFOLDED_PARAM.subn(rb"\1\t", raw)
    if count:
        defects.append("MIME parameter wrapped without folding whitespace")
    return _drop_garbage_header_lines(raw, defects)


def _drop_garbage_header_lines(raw: bytes, defects: list[str]) -> bytes:
    """Drop a non-header line inside the header block when real headers follow it.

    The stdlib ends the header block at the first line that is not a header, turning every
    later header (Subject, From...) into body text. A line followed by a known header is
    garbage inside the header block; a line followed by no header is the body's first line.
    """
    lines = raw.split(b"\n", 200)
    dropped: set[int] = set()
    for i, line in enumerate(lines[:-1]):
        bare = line.rstrip(b"\r")
        if not bare:
            break
        if (i == 0 and bare.startswith(b"From ")) or bare[:1] in (b" ", b"\t"):
            continue
        if _HEADER_LINE.match(bare):
            continue
        if _KNOWN_HEADER.match(lines[i + 1].rstrip(b"\r")):
            dropped.add(i)
            continue
        break  # the body's first line, with no blank line before it: the parser copes
    if not dropped:
        return raw
    defects.append("non-header line inside the header block was dropped")
    return b"\n".join(line for i, line in enumerate(lines) if i not in dropped)


def _declared_charsets(msg: Message) -> tuple[str | None, ...]:
    """Every charset the message declares, in order: hints for undeclared 8-bit bytes."""
    found: list[str] = []
    stack = [msg]
    seen = 0
    while stack and seen < _MAX_PARTS:
        part = stack.pop(0)
        seen += 1
        charset = _param(part, "charset")
        if charset and codec_chain(charset) not in ((), ("ascii",)) and charset not in found:
            found.append(charset)
        # get_payload() on a leaf decodes 8-bit text with the declared charset and can raise
        # on a bogus one; only multiparts are opened here.
        if part.is_multipart():
            stack.extend(p for p in part.get_payload() if isinstance(p, Message))
    return tuple(found)


def _loop_headers(msg: Message, fallbacks: tuple[str | None, ...]) -> dict[str, str]:
    headers: dict[str, str] = {}
    for name in LOOP_HEADERS:
        values = msg.get_all(name)
        if not values:
            continue
        decoded = [_clean_line(decode_encoded_words(str(v), fallbacks=fallbacks)) for v in values]
        headers[name] = ", ".join(decoded) if name == "x-failed-recipients" else decoded[0]
    return headers


def _capped_reasons(reasons: list[str]) -> list[str]:
    if len(reasons) <= _MAX_DROPPED:
        return reasons
    return [*reasons[:_MAX_DROPPED], f"and {len(reasons) - _MAX_DROPPED} more attachments"]


def _dedupe(items: list[str], limit: int) -> list[str]:
    return list(dict.fromkeys(items))[:limit]


def parse_email(raw: bytes, *, limits: MailLimits = DEFAULT_LIMITS) -> ParsedEmail:
    """Parse one email; never raises (see the module docstring for the contract)."""
    try:
        return _parse(bytes(raw), limits)
    except RecursionError:
        # The stdlib parser recurses once per nesting level; thousands of levels is an attack.
        return ParsedEmail(refusal="the MIME structure is nested too deeply",
                           defects=["parser failure: RecursionError"])
    except Exception as exc:  # the contract is "never raises": refuse instead of crashing
        return ParsedEmail(
            refusal="the message could not be parsed",
            defects=[f"parser failure: {type(exc).__name__}"],
        )


_AUTH_RESULT = re.compile(r"\b(spf|dkim|dmarc|arc)\s*=\s*([a-z]+)", re.IGNORECASE)


def _auth_results(msg: Message) -> str | None:
    """``"mx.example.org; spf=pass dkim=pass dmarc=pass"`` from the topmost header, or None."""
    value = msg.get("authentication-results")
    if value is None:
        return None
    text = " ".join(str(value).split())
    authserv = text.split(";", 1)[0].strip()[:100]
    verdicts = [f"{m.group(1).lower()}={m.group(2).lower()}"
                for m in _AUTH_RESULT.finditer(text)][:8]
    return f"{authserv}; {' '.join(verdicts) or 'none'}"


def _parse(raw: bytes, limits: MailLimits) -> ParsedEmail:
    defects: list[str] = []
    raw = _trim_preamble(raw, defects)
    if not raw.strip():
        return ParsedEmail(refusal="empty message")
    msg = BytesParser(policy=_POLICY).parsebytes(raw)
    fallbacks = _declared_charsets(msg)

    senders = _address_list(msg.get_all("from"), fallbacks, defects)
    if not any(addr for _, addr in senders):
        senders += _address_list(msg.get_all("sender"), fallbacks, defects)
    from_address = next((addr for _, addr in senders if addr), None)
    from_name = next((name for name, addr in senders if addr == from_address and name), None)
    if from_name is None and from_address is None:
        from_name = next((name for name, _ in senders if name), None)
    reply_to = _addresses_only(_address_list(msg.get_all("reply-to"), fallbacks, defects))
    to = _addresses_only(_address_list(msg.get_all("to"), fallbacks, defects))
    cc = _addresses_only(_address_list(msg.get_all("cc"), fallbacks, defects))
    subject = _header(msg, "subject", fallbacks)

    walk = _MimeWalk(limits, fallbacks)
    body = _Body()
    walk.visit(msg, 0, body)
    text = body.text()
    html = sanitize_html("\n".join(body.htmls)) if body.htmls else None

    report_type = walk.report_type
    locale = _guess_locale(
        _header(msg, "content-language", fallbacks),
        walk.body_charsets,
        f"{subject}\n{text}",
    )
    refusal = None
    if not msg.keys():
        refusal = "not an email: no header fields"
    elif from_address is None and not text.strip() and not html and not walk.attachments:
        refusal = "no From address and no body"

    return ParsedEmail(
        message_id=_message_id(msg.get("message-id")),
        from_address=from_address,
        from_name=from_name,
        reply_to=reply_to[0] if reply_to else None,
        to=to,
        cc=cc,
        subject=subject,
        date=_date(msg.get("date")),
        in_reply_to=_message_id(msg.get("in-reply-to")),
        references=_message_ids(msg.get("references")),
        text=text,
        html=html,
        attachments=walk.attachments,
        dropped=_capped_reasons(walk.dropped),
        not_kept=walk.not_kept[:50],
        locale=locale,
        content_type=_content_type(msg),
        report_type=report_type,
        loop_headers=_loop_headers(msg, fallbacks),
        auth_results=_auth_results(msg),
        enclosed_message_ids=_dedupe(walk.enclosed_ids, _MAX_REFERENCES),
        defects=_dedupe(defects + walk.defects, _MAX_DEFECTS),
        refusal=refusal,
    )


def to_inbound(
    parsed: ParsedEmail,
    *,
    channel: str,
    mailbox: str,
    received_at: datetime,
    attachments: list[Attachment],
    not_kept: Sequence[FileNotKept] = (),
) -> InboundMessage:
    """The schema message for a parsed email, as the core's ``submit`` takes it.

    ``attachments`` are the stored forms of ``parsed.attachments`` (the adapter stores the
    bytes and passes their sha256). ``provider_message_id`` is the Message-ID and
    ``delivery_scope`` the mailbox, so the same mail delivered to two mailboxes is two
    deliveries. ``auto_submitted`` is set for everything the loop policy does not call human.
    Raises ``RejectedInput`` for a mail that ``parse_email`` refused, and ``ValueError`` for
    a naive ``received_at``.
    """
    if parsed.refusal is not None:
        raise RejectedInput(parsed.refusal)
    if received_at.tzinfo is None:
        raise ValueError("received_at must be timezone-aware")
    mail_class = classify(parsed)
    metadata = {"mailbox": mailbox}
    if parsed.to:
        metadata["to"] = ", ".join(parsed.to)
    if parsed.cc:
        metadata["cc"] = ", ".join(parsed.cc)
    if parsed.reply_to:
        metadata["reply_to"] = parsed.reply_to
    if parsed.date is not None:
        metadata["sent_at"] = parsed.date.isoformat()
    if mail_class.kind != "human":
        metadata["mail_class"] = mail_class.kind
    if parsed.dropped:
        metadata["dropped_attachments"] = "; ".join(parsed.dropped)
    # The sender address is vouched for by the mail channel as far as mail can be: the verdict
    # of the MTA in front is kept with it, so agents (and a stricter policy) can weigh it.
    metadata["mail_auth"] = parsed.auth_results or "none: no Authentication-Results header"
    return InboundMessage(
        channel=channel,
        provider_message_id=parsed.message_id,
        delivery_scope=mailbox,
        received_at=received_at.astimezone(UTC),
        contact=Contact(name=parsed.from_name, email=parsed.from_address, verified_by=channel),
        subject=parsed.subject,
        text=parsed.text,
        html=parsed.html,
        attachments=attachments,
        files_not_kept=[*parsed.not_kept, *not_kept],
        thread=ThreadHints(in_reply_to=parsed.in_reply_to, references=list(parsed.references)),
        locale=parsed.locale,
        auto_submitted=not should_acknowledge(mail_class),
        metadata=metadata,
    )
