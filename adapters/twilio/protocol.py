"""Twilio webhooks and replies: public URL, signature check, SMS segments, keywords, TwiML.

Pure protocol code with no I/O, used by the ``twilio`` adapter and the test fake. Signing and
TwiML rendering are delegated to the ``twilio`` library so they follow Twilio's own rules
(port variants, repeated keys, the ``bodySHA256`` JSON variant, XML escaping).
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable, Mapping, Sequence
from typing import Literal
from urllib.parse import parse_qs, urlsplit, urlunsplit

from multidict import MultiDict, MultiMapping
from twilio.request_validator import RequestValidator, get_signature_algorithm
from twilio.twiml.messaging_response import MessagingResponse
from twilio.twiml.voice_response import VoiceResponse

__all__ = [
    "GSM7_BASIC",
    "GSM7_EXTENSION",
    "HELP_KEYWORDS",
    "OPT_IN_KEYWORDS",
    "OPT_OUT_KEYWORDS",
    "Encoding",
    "Keyword",
    "Params",
    "classify_keyword",
    "compute_twilio_signature",
    "fit_one_segment",
    "public_url",
    "render_twiml_empty",
    "render_twiml_message",
    "render_voice_record_twiml",
    "sms_segments",
    "verify_twilio_signature",
]

Params = MultiMapping[str] | Mapping[str, str | Sequence[str]] | Iterable[tuple[str, str]]
"""Webhook parameters: a multidict (aiohttp's ``await request.post()``), a plain mapping whose
values are a string or a list of strings, or ``(name, value)`` pairs in body order."""


# -- the URL Twilio requested -------------------------------------------------------------------


def _header(headers: Mapping[str, str], name: str) -> str | None:
    value = headers.get(name)
    if value is None:
        # A plain dict is case-sensitive; aiohttp's CIMultiDictProxy answered above already.
        lowered = name.lower()
        value = next((v for k, v in headers.items() if k.lower() == lowered), None)
    return value


def _first(headers: Mapping[str, str], name: str) -> str | None:
    # Behind several proxies the header is a list; the left-most entry is the one facing Twilio.
    value = _header(headers, name)
    if not value:
        return None
    first = value.split(",")[0].strip()
    return first or None


def public_url(
    request_url: str, headers: Mapping[str, str], configured_base: str | None = None
) -> str:
    """Reconstruct the URL as Twilio requested it, which is the URL Twilio signed.

    ``request_url`` is the URL as this process received it: absolute (``str(request.url)``) or
    just the raw path and query (aiohttp's ``request.raw_path``, which keeps Twilio's exact
    percent-encoding). ``configured_base`` is the public URL under which the gateway's root is
    served (``https://support.example.com`` or ``https://example.com/intake``); when set it wins
    over any header. Otherwise ``X-Forwarded-Proto`` / ``X-Forwarded-Host`` (left-most entries),
    then ``Host``, then the request URL itself give scheme and host.

    Trusting forwarded headers is safe here: they only choose which URL the signature is checked
    against, and a forger who picks the URL still cannot produce the HMAC without the auth token.
    """
    if request_url.startswith("/"):
        # A raw path is split by hand: urlsplit would read "//x/y" as host "x".
        raw_path, _, query = request_url.partition("?")
        request_scheme = request_host = ""
    else:
        parts = urlsplit(request_url)
        raw_path, query = parts.path, parts.query
        request_scheme, request_host = parts.scheme, parts.netloc
    path = raw_path or "/"
    if configured_base:
        base = urlsplit(configured_base)
        return urlunsplit((base.scheme, base.netloc, base.path.rstrip("/") + path, query, ""))
    scheme = _first(headers, "X-Forwarded-Proto") or request_scheme or "http"
    host = _first(headers, "X-Forwarded-Host") or _header(headers, "Host") or request_host
    return f"{scheme.lower()}://{host}{path}" + (f"?{query}" if query else "")


# -- signatures ---------------------------------------------------------------------------------


def _multidict(params: Params) -> MultiDict[str]:
    out: MultiDict[str] = MultiDict()
    if isinstance(params, MultiMapping):
        out.extend(params.items())
    elif isinstance(params, Mapping):
        for name, value in params.items():
            if isinstance(value, str):
                out.add(name, value)
            else:
                for item in value:
                    out.add(name, item)
    else:
        out.extend(params)
    return out


def compute_twilio_signature(auth_token: str, url: str, params: Params | str) -> str:
    """Return the ``X-Twilio-Signature`` Twilio would send for this request.

    For a form request ``params`` are the form fields. For a JSON request pass the body as a
    string: Twilio then signs the URL alone, and ``url`` must already carry
    ``bodySHA256=<hex sha256 of the body>`` in its query.
    """
    fields: MultiDict[str] = MultiDict() if isinstance(params, str) else _multidict(params)
    return RequestValidator(auth_token).compute_signature(url, fields)


def verify_twilio_signature(
    auth_token: str,
    url: str,
    params: Params | str | bytes,
    signature: str | None,
    *,
    signature_settings: str | None = None,
) -> bool:
    """True when ``signature`` (the ``X-Twilio-Signature`` header) signs this request.

    ``url`` is :func:`public_url`'s result. ``params`` are the form fields, or the raw body
    (``str`` or ``bytes``) of a JSON webhook whose URL carries ``bodySHA256``: then the body hash
    is checked too. The library tries the URL with and without its default port, as Twilio's own
    signing is inconsistent there. ``signature_settings`` is the optional
    ``X-Twilio-Webhooks-Signature-Settings`` header naming another HMAC algorithm; an algorithm
    the library does not know fails closed.
    """
    if not signature or not auth_token:
        return False
    try:
        # Header bytes that are not UTF-8 arrive as surrogates, a Host header may name port
        # 99999: neither is a URL Twilio signed, and the library would raise on both.
        url.encode("utf-8")
        signature.encode("ascii")
        urlsplit(url).port  # noqa: B018 - raises ValueError for a port out of range
    except (UnicodeError, ValueError):
        return False
    validator = RequestValidator(auth_token)
    algorithm = get_signature_algorithm(signature_settings)
    if isinstance(params, bytes):
        try:
            params = params.decode("utf-8")
        except UnicodeDecodeError:
            return False
    if isinstance(params, str):
        if len(parse_qs(urlsplit(url).query).get("bodySHA256", ())) != 1:
            # A raw body without the hash parameter is not something Twilio signs; a
            # "bodySHA256=" inside another parameter's value is not that parameter (the library
            # would then treat the body as form fields and raise).
            return False
        return bool(validator.validate(url, params, signature, algorithm))
    return bool(validator.validate(url, _multidict(params), signature, algorithm))


# -- SMS segments -------------------------------------------------------------------------------

Encoding = Literal["GSM-7", "UCS-2"]

# 3GPP TS 23.038 default alphabet (one septet each) and its extension table (escape + septet).
GSM7_BASIC = frozenset(
    "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?"
    "¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà"
)
GSM7_EXTENSION = frozenset("\f^{}\\[~]|€")

_SINGLE = {"GSM-7": 160, "UCS-2": 70}
_PART = {"GSM-7": 153, "UCS-2": 67}  # a 6-byte concatenation header takes the rest


def _encoding(text: str) -> Encoding:
    return "GSM-7" if all(c in GSM7_BASIC or c in GSM7_EXTENSION for c in text) else "UCS-2"


def _cost(char: str, encoding: Encoding) -> int:
    if encoding == "GSM-7":
        return 2 if char in GSM7_EXTENSION else 1
    return 2 if ord(char) > 0xFFFF else 1  # UTF-16 code units: astral characters are pairs


def sms_segments(text: str) -> tuple[Encoding, int]:
    """Return the encoding an SMS of ``text`` needs and how many segments it is billed as.

    GSM-7 when every character is in the default alphabet or its extension table (extension
    characters cost two septets), otherwise UCS-2 counted in UTF-16 code units. One segment holds
    160 septets / 70 units; a concatenated message holds 153 / 67 per segment, and an escape
    sequence or a surrogate pair is never split across two segments. An empty text is one segment.
    """
    encoding = _encoding(text)
    costs = [_cost(c, encoding) for c in text]
    if sum(costs) <= _SINGLE[encoding]:
        return encoding, 1
    limit = _PART[encoding]
    segments, used = 1, 0
    for cost in costs:
        if used + cost > limit:
            segments, used = segments + 1, 0
        used += cost
    return encoding, segments


def fit_one_segment(text: str, ellipsis: str = "...") -> str:
    """Return ``text`` if it fits one segment, else its longest prefix plus ``ellipsis`` that does.

    The encoding is that of ``text`` itself, so a GSM-7 text is never pushed into UCS-2 by the cut
    (``ellipsis`` should be GSM-7 for that reason: ``"..."``, not ``"…"``).
    """
    encoding, count = sms_segments(text)
    if count == 1:
        return text
    budget = _SINGLE[encoding] - sum(_cost(c, encoding) for c in ellipsis)
    used, kept = 0, 0
    while kept < len(text) and used + _cost(text[kept], encoding) <= budget:
        used += _cost(text[kept], encoding)
        kept += 1
    return text[:kept].rstrip() + ellipsis


# -- keywords -----------------------------------------------------------------------------------

Keyword = Literal["opt_out", "opt_in", "help"]

OPT_OUT_KEYWORDS = frozenset(
    {"STOP", "STOPALL", "UNSUBSCRIBE", "CANCEL", "END", "QUIT", "REVOKE", "OPTOUT"}
)
"""Twilio's default opt-out words (REVOKE and OPTOUT were added to the long-code defaults)."""
OPT_IN_KEYWORDS = frozenset({"START", "UNSTOP", "YES"})
HELP_KEYWORDS = frozenset({"HELP", "INFO"})

_TRIM = re.compile(r"^[\s\W_]+|[\s\W_]+$")


def classify_keyword(body: str | None) -> Keyword | None:
    """Classify a message that is exactly one of Twilio's reserved keywords.

    Like Twilio, only a message consisting of the single word counts ("STOP" does, "STOP PLEASE"
    does not), in any letter case. Surrounding whitespace and punctuation ("Stop.", "*STOP*") and
    full-width letters are tolerated: honouring an opt-out that Twilio did not recognise is
    harmless, missing one is not.
    """
    if not body:
        return None
    word = _TRIM.sub("", unicodedata.normalize("NFKC", body)).upper()
    if word in OPT_OUT_KEYWORDS:
        return "opt_out"
    if word in OPT_IN_KEYWORDS:
        return "opt_in"
    if word in HELP_KEYWORDS:
        return "help"
    return None


# -- TwiML --------------------------------------------------------------------------------------

# ElementTree writes these raw, which makes the document invalid XML and Twilio rejects it.
_ILLEGAL_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")


def _xml_text(text: str) -> str:
    return _ILLEGAL_XML.sub("", text)


def render_twiml_message(text: str) -> bytes:
    """Render ``<Response><Message>text</Message></Response>``: the reply in the webhook answer."""
    response = MessagingResponse()
    response.message(_xml_text(text))
    return response.to_xml().encode("utf-8")


def render_twiml_empty() -> bytes:
    """Render ``<Response/>``: acknowledge the webhook and send nothing."""
    return MessagingResponse().to_xml().encode("utf-8")


def render_voice_record_twiml(
    prompt: str,
    action_url: str,
    transcribe_callback_url: str,
    max_length: int,
    *,
    language: str | None = None,
    goodbye: str | None = None,
) -> bytes:
    """Render the voice-mail TwiML: say ``prompt``, record with a beep and transcription.

    Twilio requests ``action_url`` when the recording ends (``RecordingUrl``,
    ``RecordingDuration``) and later ``transcribe_callback_url`` (``TranscriptionText``,
    ``TranscriptionStatus``). ``max_length`` is in seconds. The verbs after ``<Record>`` run only
    when Twilio does not fetch the action (nothing was recorded): ``goodbye`` is said, then the
    call ends. ``language`` is a Twilio ``<Say>`` language such as ``zh-CN``; note that
    ``<Record transcribe>`` transcribes English only, so other languages arrive with
    ``TranscriptionStatus=failed`` and the recording is the message.
    """
    response = VoiceResponse()
    response.say(_xml_text(prompt), language=language)
    response.record(
        action=action_url,
        method="POST",
        max_length=max_length,
        play_beep=True,
        transcribe=True,
        transcribe_callback=transcribe_callback_url,
    )
    if goodbye:
        response.say(_xml_text(goodbye), language=language)
    response.hangup()
    return response.to_xml().encode("utf-8")
