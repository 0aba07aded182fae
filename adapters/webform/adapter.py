"""``GET/POST /form``: the customer web form (zh-CN, zh-TW, en), plain HTML that needs no script."""

from __future__ import annotations

import hashlib
import ipaddress
import json
import math
import re
import secrets
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, ClassVar, cast, get_args
from urllib.parse import unquote_to_bytes

import jinja2
import msgspec
from aiohttp import BodyPartReader, HttpVersion11, MultipartReader, StreamReader, hdrs, web
from aiohttp.http_exceptions import HttpProcessingError

from gateway.errors import ConfigError, RejectedInput, TooLarge, TransientError
from gateway.plugin import (
    AdapterBase,
    AdapterContext,
    Intake,
    normalize_email,
    normalize_phone,
    parse_duration,
)
from gateway.plugin.files import safe_filename
from gateway.plugin.limits import TokenBuckets
from gateway.plugin.locales import pick_locale
from gateway.plugin.openapi import Operation
from intake_adapters.webform.branding import DEFAULT_ACCENT, Localized, build_brand
from intake_adapters.webform.openapi import form_operations
from intake_schemas import Contact, CustomerType, InboundMessage, Kind, Receipt, ThreadHints

_TEMPLATES = Path(__file__).parent / "templates"

SUPPORTED_LOCALES = ("zh-CN", "zh-TW", "en")
"""The page's languages: the acknowledgement languages the core has (each page shows its
receipt in its own language, so the two lists are one)."""


class WebformConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """``[adapters.webform]``."""

    enabled: bool = True
    path: str = "/form"
    rate_limit: int = 5
    """Submissions per ``rate_window`` from one client address (an IPv6 /64); 0 turns it off."""
    rate_window: str = "1m"
    trust_forwarded_for: bool = False
    """Take the client address from the last ``X-Forwarded-For`` entry (the one our own reverse
    proxy appended). Only behind such a proxy: otherwise anyone can pick their address."""
    max_attachments: int = 5
    max_attachment_bytes: int = 10_485_760
    default_region: str = "CN"
    """Region used to read phone numbers written without a country code."""
    # Branding (adapters/webform/branding.py): texts are one string or a table by locale.
    organisation: Localized | None = None
    """The organisation's name, in the page header and title."""
    logo_file: str | None = None
    """A PNG, JPEG, GIF, WebP or SVG file (at most 256 KiB), served at ``<path>/logo``."""
    privacy_url: Localized | None = None
    """The privacy notice, linked under the form and on the result page."""
    contact_hours: Localized | None = None
    """When people answer, e.g. "周一至周五 9:00–18:00", shown on both pages."""
    accent_color: str = DEFAULT_ACCENT
    """Buttons, links and the ticket number's frame (a hex colour)."""


CUSTOMER_TYPES: tuple[str, ...] = get_args(CustomerType)
KINDS: tuple[str, ...] = get_args(Kind)

# Longest value accepted per text field, in characters; the template's ``maxlength`` agrees, so
# a browser stops the person before the server has to.
FIELD_LIMITS: dict[str, int] = {
    "name": 100, "email": 254, "phone": 40, "customer_type": 20, "kind": 20,
    "order_number": 100, "device_model": 100, "subject": 200, "message": 20_000,
    "ticket_number": 60, "website": 200, "lang": 20, "form_token": 64,
}  # fmt: skip
_HIDDEN = frozenset({"lang", "form_token", "website"})
_VISIBLE = (frozenset(FIELD_LIMITS) - _HIDDEN) | {"contact", "attachments"}
_MAX_PARTS = 64
"""Form parts read at most: the fields, the files, and slack for what browsers add."""
_TEXT_ROOM = sum(FIELD_LIMITS.values()) * 4 + _MAX_PARTS * 2048
"""Body bytes allowed beside the files: every text field at 4 bytes a character, and each
part's boundary and headers (a file name included)."""
_TOKEN = re.compile(r"^[A-Za-z0-9_-]{16,64}$")
_CHUNK = 65_536
_PERCENT = re.compile(r"%[0-9A-Fa-f]{2}")


class ClientRateLimiter(TokenBuckets):
    """Submissions per client address: the kit's token buckets, keyed by :func:`client_key`."""

    def __init__(self, rate: int, window: float, *, max_clients: int = 50_000,
                 clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__(rate, window, max_keys=max_clients, clock=clock, name="webform")


def client_key(request: web.Request, *, trust_forwarded_for: bool) -> str:
    """The address a submission is counted against; IPv6 clients by their /64."""
    raw = request.remote or ""
    if trust_forwarded_for:
        hops = [h.strip() for h in request.headers.get("X-Forwarded-For", "").split(",")]
        hops = [h for h in hops if h]
        if hops:
            raw = hops[-1]
    try:
        addr = ipaddress.ip_address(raw.strip("[]"))
    except ValueError:
        return raw or "unknown"
    if isinstance(addr, ipaddress.IPv6Address):
        if addr.ipv4_mapped is not None:
            return str(addr.ipv4_mapped)
        return str(ipaddress.IPv6Network((addr, 64), strict=False))
    return str(addr)


def _match_locale(tag: str) -> str | None:
    t = tag.strip().lower().replace("_", "-")
    if t in ("zh", "en") or t.startswith(("zh-", "en-")):
        return pick_locale(t, "en")
    return None


def negotiate_locale(query_lang: str | None, accept_language: str | None, default: str) -> str:
    """``?lang=`` if supported, else the best-weighted supported Accept-Language tag, else
    ``default``."""
    if query_lang and (chosen := _match_locale(query_lang)):
        return chosen
    best: tuple[float, int, str] | None = None
    for pos, item in enumerate((accept_language or "").split(",")[:32]):
        tag, _, params = item.partition(";")
        found = _match_locale(tag)
        if found is None:
            continue
        q = 1.0
        for p in params.split(";"):
            key, _, value = p.strip().partition("=")
            if key.strip().lower() == "q":
                try:
                    q = float(value)
                except ValueError:
                    q = 0.0
        if q > 0 and (best is None or (q, -pos) > (best[0], best[1])):
            best = (q, -pos, found)
    return best[2] if best else pick_locale(default, "zh-CN")


def _load_texts() -> dict[str, dict[str, str]]:
    texts = msgspec.json.decode((_TEMPLATES / "messages.json").read_bytes(),
                                type=dict[str, dict[str, str]])
    keys = set(texts["en"])
    for loc in SUPPORTED_LOCALES:
        if set(texts.get(loc, {})) != keys:
            raise RuntimeError(f"webform messages.json: {loc} has not the same keys as en")
    return texts


TEXTS = _load_texts()


class BodyTooLarge(Exception):
    """The body went past the form's cap while it was being read."""


class CountedBody:
    """``request.content`` as aiohttp's multipart reader sees it, counting what it takes.

    The reader drains the preamble, part headers and skipped parts by itself, out of the
    handler's sight, and aiohttp's ``client_max_size`` does not apply to ``multipart()``: this
    is the one place every byte of the body passes, so the cap holds for chunked bodies and
    skipped parts too. It raises :class:`BodyTooLarge` as soon as the count passes ``cap``.
    """

    def __init__(self, stream: StreamReader, cap: int) -> None:
        self._stream = stream
        self._cap = cap
        self.count = 0

    def _take(self, data: bytes) -> bytes:
        self.count += len(data)
        if self.count > self._cap:
            raise BodyTooLarge
        return data

    async def read(self, n: int = -1) -> bytes:
        return self._take(await self._stream.read(n))

    async def readline(self, *, max_line_length: int | None = None) -> bytes:
        return self._take(await self._stream.readline(max_line_length=max_line_length))

    async def readany(self) -> bytes:
        return self._take(await self._stream.readany())

    async def readexactly(self, n: int) -> bytes:
        return self._take(await self._stream.readexactly(n))

    def unread_data(self, data: bytes) -> None:
        self.count -= len(data)  # handed back, to be counted again when taken again
        self._stream.unread_data(data)

    def at_eof(self) -> bool:
        return self._stream.at_eof()

    def __getattr__(self, name: str) -> Any:
        # Anything else aiohttp may call passes through; the reads above are the counted ones.
        return getattr(self._stream, name)


class Upload(msgspec.Struct, kw_only=True):
    name: str
    content_type: str
    data: bytes


class FilledForm(msgspec.Struct, kw_only=True):
    """What one POST carried, kept to re-show the form when something must be fixed."""

    fields: dict[str, str] = {}
    files: list[Upload] = []
    files_sent: bool = False
    """Files were chosen; if the form is shown again they must be chosen again."""


class Problem(msgspec.Struct, frozen=True):
    """One thing the person must fix: a key of ``messages.json`` and its placeholders."""

    key: str
    args: dict[str, Any] = {}

    def render(self, t: dict[str, str]) -> str:
        return t[self.key].format(**self.args)


class FormRejected(RejectedInput):
    """Problems with named fields (``form`` for the whole body), shown next to those fields."""

    def __init__(self, problems: dict[str, Problem], *, status: int = 400) -> None:
        super().__init__("the form has errors", field=next(iter(problems), None))
        self.problems = problems
        self.status = status


def _human_size(n: int) -> str:
    if n >= 1_048_576:
        return f"{n / 1_048_576:.3g} MB"
    if n >= 1024:
        return f"{n / 1024:.3g} KB"
    return f"{n} B"


def _minutes(seconds: float, t: dict[str, str]) -> str:
    n = max(1, math.ceil(seconds / 60))
    return (t["minute_one"] if n == 1 else t["minute_many"]).format(n=n)


def _clean_header_text(s: str) -> str:
    # aiohttp keeps undecodable header bytes as surrogates; they cannot be stored or encoded.
    return s.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def _file_name(raw: str) -> str:
    """The name as the person saw it: browsers send raw UTF-8, some HTTP libraries %-encode it."""
    name = _clean_header_text(raw)
    if _PERCENT.search(name):
        try:
            decoded = unquote_to_bytes(name).decode("utf-8")
        except UnicodeDecodeError:
            return name
        if not decoded.isascii():
            return decoded
    return name


class WebformAdapter(AdapterBase):
    """The form customers fill in; the answer page shows the ticket number and the due time."""

    kind: ClassVar[str] = "webform"
    Config: ClassVar[type[msgspec.Struct]] = WebformConfig

    def __init__(self, config: WebformConfig, intake: Intake, ctx: AdapterContext) -> None:
        if not config.path.startswith("/"):
            raise ConfigError("adapters.webform.path must start with '/'")
        if config.rate_limit < 0 or config.max_attachments < 0 or config.max_attachment_bytes < 1:
            raise ConfigError("adapters.webform: rate_limit and max_attachments must be >= 0, "
                              "max_attachment_bytes >= 1")
        window = parse_duration(config.rate_window, key="adapters.webform.rate_window")
        if window.total_seconds() <= 0:
            raise ConfigError("adapters.webform.rate_window must be longer than zero")
        super().__init__(config, intake, ctx)
        self.config: WebformConfig = config
        # The core has its own limits; enforcing the smaller while streaming means the person
        # is told before anything is stored, and the page states the limit that really holds.
        self.max_files = min(config.max_attachments, intake.limits.max_attachments)
        self.max_file_bytes = min(config.max_attachment_bytes, intake.limits.max_attachment_bytes)
        # The whole body: room for the files and the text, never more than the listener's own
        # limit (which aiohttp does not apply to streamed multipart bodies).
        self.max_body_bytes = min(intake.limits.max_body_bytes,
                                  self.max_files * self.max_file_bytes + _TEXT_ROOM)
        self.default_locale = pick_locale(ctx.default_locale, "zh-CN")
        # From the context: counted across replicas when the store is shared.
        self.limiter = (ctx.rate_limiter("webform", config.rate_limit, window.total_seconds())
                        if config.rate_limit else None)
        self.brand = build_brand(organisation=config.organisation,
                                 contact_hours=config.contact_hours,
                                 privacy_url=config.privacy_url,
                                 accent_color=config.accent_color, logo_file=config.logo_file)
        self.env = jinja2.Environment(
            loader=jinja2.FileSystemLoader(_TEMPLATES), autoescape=True,
            undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)

    def routes(self) -> Iterable[web.AbstractRouteDef]:
        routes = [web.get(self.config.path, self.show_form),
                  web.post(self.config.path, self.handle_post, expect_handler=self.expect)]
        if self.brand.logo is not None:
            routes.append(web.get(self.logo_path, self.show_logo))
        return routes

    @property
    def logo_path(self) -> str:
        return self.config.path.rstrip("/") + "/logo"

    async def show_logo(self, request: web.Request) -> web.Response:
        """The configured logo, from memory; an SVG opened directly runs nothing."""
        assert self.brand.logo is not None
        return web.Response(body=self.brand.logo.data, content_type=self.brand.logo.content_type,
                            headers={"Cache-Control": "public, max-age=3600",
                                     "Content-Security-Policy": "default-src 'none'; "
                                     "style-src 'unsafe-inline'; sandbox",
                                     "X-Content-Type-Options": "nosniff"})

    @classmethod
    def http_operations(cls, config: WebformConfig) -> Sequence[Operation]:
        return form_operations(config.path, FIELD_LIMITS)

    # -- pages -----------------------------------------------------------------------------

    def _page(self, template: str, locale: str, *, status: int = 200,
              headers: dict[str, str] | None = None, **values: Any) -> web.Response:
        nonce = secrets.token_urlsafe(12)
        body = self.env.get_template(template).render(
            t=TEXTS[locale], locale=locale, locales=SUPPORTED_LOCALES, names=TEXTS,
            path=self.config.path, nonce=nonce, brand=self.brand,
            logo_path=self.logo_path if self.brand.logo is not None else None, **values)
        resp = web.Response(text=body, status=status, content_type="text/html", charset="utf-8")
        resp.headers.update({
            # The pages carry a person's details and a one-time token: keep them out of caches.
            "Cache-Control": "no-store",
            "Content-Security-Policy": (f"default-src 'none'; style-src 'nonce-{nonce}'; "
                                        f"{self._img_src}"
                                        "form-action 'self'; base-uri 'none'; "
                                        "frame-ancestors 'none'"),
            "X-Content-Type-Options": "nosniff",
            "Referrer-Policy": "same-origin",
            "Content-Language": locale,
            **(headers or {}),
        })
        return resp

    @property
    def _img_src(self) -> str:
        # Only our own logo may load: no image from elsewhere tracks the person.
        return "img-src 'self'; " if self.brand.logo is not None else ""

    def _form_page(self, locale: str, *, form: FilledForm | None = None,
                   problems: dict[str, Problem] | None = None, notice: str | None = None,
                   status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
        fields = dict(form.fields) if form else {}
        fields.pop("website", None)  # never echo the honeypot
        token = fields.get("form_token", "")
        if not _TOKEN.match(token):
            token = secrets.token_urlsafe(18)
        t = TEXTS[locale]
        errors: dict[str, str] = {}
        for field, problem in (problems or {}).items():
            # Hidden fields have no place on the page: their problems are the whole form's.
            errors.setdefault(field if field in _VISIBLE else "form", problem.render(t))
        if form and form.files_sent and "attachments" not in errors:
            # Shown again means not submitted, and browsers cannot re-fill a file input.
            errors["attachments"] = t["err_files_again"]
        return self._page(
            "form.html", locale, status=status, headers=headers, values=fields, errors=errors,
            notice=notice, token=token, limits=FIELD_LIMITS, kinds=KINDS,
            customer_types=CUSTOMER_TYPES, max_files=self.max_files,
            max_size=_human_size(self.max_file_bytes))

    async def show_form(self, request: web.Request) -> web.Response:
        """The empty form, in the language of ``?lang=`` or Accept-Language."""
        locale = negotiate_locale(request.query.get("lang"),
                                  request.headers.get("Accept-Language"), self.default_locale)
        return self._form_page(locale)

    # -- submission ------------------------------------------------------------------------

    def _locale(self, request: web.Request, form: FilledForm | None = None) -> str:
        lang = request.query.get("lang") or (form.fields.get("lang") if form else None)
        return negotiate_locale(lang, request.headers.get("Accept-Language"),
                                self.default_locale)

    def _body_too_large(self, request: web.Request,
                        form: FilledForm | None = None) -> web.Response:
        resp = self._form_page(
            self._locale(request, form), form=form, status=413,
            problems={"attachments": Problem("err_body_too_large",
                                             {"size": _human_size(self.max_body_bytes)})})
        # The rest of the body is not wanted: a client that reads the answer stops sending.
        resp.force_close()
        return resp

    async def expect(self, request: web.Request) -> web.StreamResponse | None:
        """``Expect: 100-continue``: refuse a declared oversized body before it is sent."""
        if (request.content_length or 0) > self.max_body_bytes:
            return self._body_too_large(request)
        # aiohttp's default behaviour, which a route's own expect handler replaces.
        if request.version == HttpVersion11:
            if request.headers.get(hdrs.EXPECT, "").lower() != "100-continue":
                raise web.HTTPExpectationFailed(text="Only Expect: 100-continue is understood")
            await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            request.writer.output_size = 0
        return None

    async def handle_post(self, request: web.Request) -> web.Response:
        """Rate limit, read, check, submit; every problem re-shows the form with the input kept."""
        if (request.content_length or 0) > self.max_body_bytes:
            return self._body_too_large(request)  # before a byte of it is read
        wait = 0.0
        if self.limiter is not None:
            wait = await self.limiter.take(client_key(
                request, trust_forwarded_for=self.config.trust_forwarded_for))
        form = FilledForm()
        rejected: FormRejected | None = None
        try:
            # Over the limit, the text is still read (to show it again) but files are skipped.
            await self._read(request, form, keep_files=not wait)
        except FormRejected as exc:
            rejected = exc
        except BodyTooLarge:
            form.files.clear()  # what was read so far is kept to show again; the files are not
            return self._body_too_large(request, form)
        locale = self._locale(request, form)
        t = TEXTS[locale]
        if wait:
            retry = max(1, math.ceil(wait))
            return self._form_page(
                locale, form=form, status=429, headers={"Retry-After": str(retry)},
                notice=t["err_rate_limited"].format(minutes=_minutes(retry, t)))
        if rejected is not None:
            return self._form_page(locale, form=form, problems=rejected.problems,
                                   status=rejected.status)
        if form.fields.get("website", "").strip():
            # A bot filled the hidden field: thank it like a person and submit nothing.
            return self._page("receipt.html", locale, receipt=None, number=None, due=None,
                              ack=None)
        try:
            message = await self._to_message(form, locale)
            receipt = await self.intake.submit(message)
        except FormRejected as exc:
            return self._form_page(locale, form=form, problems=exc.problems, status=exc.status)
        except TransientError:
            return self._form_page(locale, form=form, status=503, headers={"Retry-After": "5"},
                                   notice=t["err_unavailable"])
        except RejectedInput as exc:
            # The core's own checks; the form's checks above should have caught these first.
            field = {"text": "message", "contact": "contact"}.get(exc.field or "")
            problem = Problem("err_generic", {"reason": exc.reason})
            if field:
                return self._form_page(locale, form=form, problems={field: problem},
                                       status=exc.status)
            return self._form_page(locale, form=form, notice=problem.render(t),
                                   status=exc.status)
        self.ctx.log.info("webform submission: outcome=%s ticket=%s", receipt.outcome,
                 receipt.ticket_number)
        return self._receipt_page(receipt, locale)

    def _receipt_page(self, receipt: Receipt, locale: str) -> web.Response:
        due = self.intake.format_due(receipt.due_at, locale)  # type: ignore[arg-type]
        ack = None
        if receipt.acknowledgement is not None:
            # The person chose this page's language: the receipt on it speaks it too, whatever
            # language they typed in (events and later mail follow their words).
            ack = self.intake.render_ack(number=receipt.acknowledgement.ticket_number,
                                         outcome=receipt.outcome,
                                         due_at=receipt.acknowledgement.due_at,
                                         locale=locale).text
        return self._page("receipt.html", locale, receipt=receipt,
                          number=receipt.ticket_number, due=due, ack=ack)

    async def _read(self, request: web.Request, form: FilledForm, *, keep_files: bool) -> None:
        """Fill ``form`` from the body, enforcing every limit while reading."""
        ctype = request.content_type
        try:
            if ctype == "multipart/form-data":
                await self._read_multipart(request, form, keep_files=keep_files)
            elif ctype == "application/x-www-form-urlencoded":
                await self._read_urlencoded(request, form)
            else:
                raise FormRejected({"form": Problem("err_form")})
        except (ValueError, RuntimeError, HttpProcessingError) as exc:
            # A malformed body: aiohttp says so with these; the person can only send it again.
            raise FormRejected({"form": Problem("err_form")}) from exc

    def _add_field(self, form: FilledForm, name: str, raw: bytes) -> None:
        if name not in FIELD_LIMITS or name in form.fields:
            return  # unknown or repeated: the first value of each known field counts
        if name == "website":
            # The honeypot: any content at all means a bot, and a bot is never told why.
            form.fields[name] = "x" if raw.strip() else ""
            return
        try:
            value = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise FormRejected({name: Problem("err_encoding")}) from None
        value = value.replace("\r\n", "\n").replace("\r", "\n")
        if len(value) > FIELD_LIMITS[name]:
            raise FormRejected({name: Problem("err_too_long", {"max": FIELD_LIMITS[name]})},
                               status=413)
        form.fields[name] = value

    async def _read_multipart(self, request: web.Request, form: FilledForm, *,
                              keep_files: bool) -> None:
        body = CountedBody(request.content, self.max_body_bytes)
        # The reader request.multipart() would build, with its default header limits, reading
        # through the counter.
        reader = MultipartReader(request.headers, cast(StreamReader, body))
        limit_bytes = self.max_file_bytes
        for _ in range(_MAX_PARTS):
            part = await reader.next()
            if part is None:
                return
            if not isinstance(part, BodyPartReader):
                raise FormRejected({"form": Problem("err_form")})
            name = _clean_header_text(part.name or "")
            if part.filename is not None:
                if name != "attachments":
                    continue  # release() on next() drains it
                filename = _file_name(part.filename)
                first = await part.read_chunk(_CHUNK)
                if not first and not filename:
                    continue  # the browser's empty part for "no file chosen"
                form.files_sent = True
                if not keep_files:
                    continue
                if len(form.files) >= self.max_files:
                    raise FormRejected({"attachments": Problem(
                        "err_too_many_files", {"max": self.max_files})}, status=413)
                chunks = [first]
                size = len(first)
                while size <= limit_bytes and (chunk := await part.read_chunk(_CHUNK)):
                    size += len(chunk)
                    chunks.append(chunk)
                if size > limit_bytes:
                    raise FormRejected({"attachments": self._too_large(filename)}, status=413)
                ctype = _clean_header_text(part.headers.get("Content-Type",
                                                            "application/octet-stream"))
                form.files.append(Upload(name=filename or "attachment", content_type=ctype,
                                         data=b"".join(chunks)))
                continue
            cap = FIELD_LIMITS.get(name)
            if cap is None or name in form.fields:
                continue
            buf = bytearray()
            # UTF-8 needs at most 4 bytes a character, browsers send CRLF for a newline.
            while chunk := await part.read_chunk(_CHUNK):
                buf += chunk
                if len(buf) > cap * 4 + 2:
                    if name == "website":
                        break  # the honeypot: any content is a bot, never an error
                    raise FormRejected({name: Problem("err_too_long", {"max": cap})},
                                       status=413)
            self._add_field(form, name, bytes(buf))
        raise FormRejected({"form": Problem("err_form")}, status=413)

    async def _read_urlencoded(self, request: web.Request, form: FilledForm) -> None:
        # Scripts (and aiohttp's FormData without files) send this; no files can come this way.
        # Percent-encoding triples each byte.
        cap = min(sum(FIELD_LIMITS.values()) * 12 + 4096, self.max_body_bytes)
        if (request.content_length or 0) > cap:
            raise FormRejected({"form": Problem("err_form")}, status=413)
        body = bytearray()
        while chunk := await request.content.read(_CHUNK):
            body += chunk
            if len(body) > cap:
                raise FormRejected({"form": Problem("err_form")}, status=413)
        for pair in bytes(body).split(b"&")[:_MAX_PARTS]:
            key, _, value = pair.partition(b"=")
            name = unquote_to_bytes(key.replace(b"+", b" ")).decode("utf-8", "replace")
            self._add_field(form, name, unquote_to_bytes(value.replace(b"+", b" ")))

    async def _to_message(self, form: FilledForm, locale: str) -> InboundMessage:
        """Check what the person wrote and build the message; all field errors at once."""
        f = {k: v.strip() if k != "message" else v for k, v in form.fields.items()}
        errors: dict[str, Problem] = {}
        email = phone = None
        if f.get("email"):
            try:
                email = normalize_email(f["email"])
            except RejectedInput:
                errors["email"] = Problem("err_email")
        if f.get("phone"):
            try:
                phone = normalize_phone(f["phone"], default_region=self.config.default_region)
            except RejectedInput:
                errors["phone"] = Problem("err_phone")
        if not f.get("email") and not f.get("phone"):
            errors["contact"] = Problem("err_contact")
        customer_type = f.get("customer_type") or None
        if customer_type is not None and customer_type not in CUSTOMER_TYPES:
            errors["customer_type"] = Problem("err_choice")
        kind = f.get("kind") or None
        if kind is not None and kind not in KINDS:
            errors["kind"] = Problem("err_choice")
        text = f.get("message", "")
        if not text.strip():
            errors["message"] = Problem("err_message")
        ticket = f.get("ticket_number") or None
        if ticket is not None:
            parsed = self.intake.parse_ticket_number(ticket)
            if parsed is None:
                errors["ticket_number"] = Problem("err_ticket")
            ticket = parsed
        if errors:
            raise FormRejected(errors)
        attachments = []
        for up in form.files:
            try:
                attachments.append(await self.intake.store_attachment(
                    up.data, name=up.name, content_type=up.content_type))
            except TooLarge:
                raise FormRejected({"attachments": self._too_large(up.name)},
                                   status=413) from None
        return InboundMessage(
            channel=self.kind, provider_message_id=self._delivery_id(f, attachments),
            received_at=self.ctx.clock(),
            contact=Contact(name=f.get("name") or None, email=email, phone=phone),
            subject=f.get("subject", ""), text=text, attachments=attachments,
            thread=ThreadHints(ticket_number=ticket), locale=locale,
            customer_type=customer_type,  # type: ignore[arg-type]
            kind=kind,  # type: ignore[arg-type]
            order_number=f.get("order_number") or None,
            device_model=f.get("device_model") or None,
        )

    def _too_large(self, filename: str) -> Problem:
        return Problem("err_file_too_large", {"name": safe_filename(filename),
                                              "size": _human_size(self.max_file_bytes)})

    @staticmethod
    def _delivery_id(fields: dict[str, str], attachments: list[Any]) -> str | None:
        """The rendered form's token plus a digest of what was sent.

        The same page sent twice (a double click, a browser resending) is ``replayed``; the same
        page edited after Back and sent again is a new delivery, not silently dropped.
        """
        token = fields.get("form_token", "")
        if not _TOKEN.match(token):
            return None
        content = {k: v for k, v in fields.items() if k not in ("form_token", "lang")}
        content["attachments"] = ",".join(a.sha256 for a in attachments)
        digest = hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()
        return f"{token}.{digest[:32]}"
