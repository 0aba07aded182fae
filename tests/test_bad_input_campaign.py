"""The bad-input campaign: generated hostile input against one running gateway, every door open.

Hypothesis generates JSON for the API, multipart and urlencoded forms, webhook requests for
Twilio, Telegram and WeChat, MIME mails and raw SMTP command streams; each is sent over a real
socket to the gateway the test started. What must hold for every input: no HTTP status of 500
or above, no SMTP reply that admits an internal error, no connection dropped without a reply
to a well-formed request or command line; after each batch ``/healthz`` still answers, and at
the end the process's memory has not grown beyond a bound. The inputs tried per target are
printed (``campaign: <target> = <n>``), for the record.

Each batch is bounded in count (``max_examples``) and the whole module runs in well under a
minute. Hypothesis runs in a worker thread and sends through the gateway's own loop, so the
gateway keeps serving while the blocking clients (smtplib, sockets) wait.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import gc
import json
import logging
import os
import re
import secrets
import socket
import time
import traceback
import tracemalloc
from collections import Counter
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from typing import Any
from urllib.parse import quote, urlencode

import msgspec
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from gateway.runtime import Gateway
from gateway.testing.drivers_mail import smtp_transaction
from gateway.testing.fakes import FakeTelegram, FakeTwilio
from intake_adapters.api import sign_request
from intake_adapters.mail import SmtpAdapter
from intake_adapters.twilio import TwilioAdapter
from intake_adapters.twilio.protocol import compute_twilio_signature
from intake_adapters.wechat.protocol import compute_signature
from tests.conftest import MakeGateway
from tests.memory_probe import rss_bytes

SID = "AC" + "c4" * 16
TWILIO_TOKEN = "campaign-twilio-auth-token"
TELEGRAM_TOKEN = "555000222:campaign-telegram-token"
TELEGRAM_SECRET = "campaign-webhook-secret"
WECHAT_TOKEN = "campaign-wechat-token"
WECHAT_AES = base64.b64encode(secrets.token_bytes(32)).decode().rstrip("=")
API_SECRET = "campaign-api-secret"
SUPPORT = "support@example.com"
os.environ.update({
    "INTAKE_CAMPAIGN_TWILIO": TWILIO_TOKEN, "INTAKE_CAMPAIGN_TELEGRAM": TELEGRAM_TOKEN,
    "INTAKE_CAMPAIGN_TELEGRAM_SECRET": TELEGRAM_SECRET, "INTAKE_CAMPAIGN_WECHAT": WECHAT_TOKEN,
    "INTAKE_CAMPAIGN_WECHAT_AES": WECHAT_AES, "INTAKE_CAMPAIGN_API": API_SECRET,
    "INTAKE_CAMPAIGN_WEBCHAT": "campaign-webchat-session-secret-0123456789",
})
WEBCHAT_SITE = "campaign-site"
WEBCHAT_ORIGIN = "https://shop.example.com"

KEPT_BOUND = 4 * 1_048_576
"""Python memory one round of 150 inputs may leave allocated: caches fill, nothing per input."""
RSS_BOUND = 256 * 1_048_576
"""RSS growth allowed over that round: the allocator keeps what the largest inputs needed."""

TRIED: Counter[str] = Counter()
FAILURES: list[str] = []


class Tracebacks(logging.Handler):
    """The gateway's logged exceptions, so a failure names the file and line that raised."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.seen: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.exc_info and record.exc_info[1] is not None:
            frames = traceback.extract_tb(record.exc_info[2])
            where = [f"{f.filename.split('/work/main/')[-1]}:{f.lineno}" for f in frames[-3:]]
            self.seen.append(f"{record.exc_info[1]!r} at {' <- '.join(reversed(where))}")


TRACEBACKS = Tracebacks()


def last_traceback() -> str:
    return TRACEBACKS.seen[-1] if TRACEBACKS.seen else "(nothing logged)"


def campaign(**kwargs: Any) -> Any:
    """Hypothesis settings for one batch: bounded, no per-example deadline, no database noise."""
    return settings(deadline=None, database=None, derandomize=False,
                    suppress_health_check=list(HealthCheck), **kwargs)


# -- the gateway -----------------------------------------------------------------------------


def known_keys(config: type[msgspec.Struct], **values: str) -> str:
    """TOML lines for the keys this build's ``config`` has: the campaign runs on older builds
    too (to show what it finds there), and other engineers are adding keys right now."""
    have = {f.name for f in msgspec.structs.fields(config)}
    return "".join(f"{key} = {value}\n" for key, value in values.items() if key in have)


def gateway_toml(twilio: FakeTwilio, telegram: FakeTelegram) -> str:
    # The campaign sends hundreds of mails from one client: per-sender allowances would answer
    # 450 after a few dozen and hide the parser from the inputs.
    smtp_unlimited = known_keys(SmtpAdapter.Config, max_messages_per_sender="0",
                                max_messages_per_client="0", max_connections_per_peer="0")
    # The fake serves media over http: allowed explicitly, as only that origin.
    media = known_keys(TwilioAdapter.Config, media_hosts=f'["{twilio.url}"]')
    return (
        "[adapters.webform]\nrate_limit = 0\nmax_attachment_bytes = 200000\n"
        '[adapters.api]\nenabled = true\nsecret_env = "INTAKE_CAMPAIGN_API"\n'
        f'[adapters.smtp]\nlisten = "127.0.0.1:0"\naccept = ["{SUPPORT}"]\n{smtp_unlimited}'
        "[adapters.mailer]\nenabled = false\n"
        f'[adapters.twilio]\nenabled = true\naccount_sid = "{SID}"\n'
        f'auth_token_env = "INTAKE_CAMPAIGN_TWILIO"\nsms_from = "+14155550100"\n'
        f'api_base_url = "{twilio.url}"\n{media}'
        '[adapters.telegram]\nenabled = true\ntoken_env = "INTAKE_CAMPAIGN_TELEGRAM"\n'
        'secret_token_env = "INTAKE_CAMPAIGN_TELEGRAM_SECRET"\n'
        f'api_base_url = "{telegram.url}"\n'
        '[adapters.wechat]\nenabled = true\ntoken_env = "INTAKE_CAMPAIGN_WECHAT"\n'
        'mode = "compat"\nencoding_aes_key_env = "INTAKE_CAMPAIGN_WECHAT_AES"\n'
        'app_id = "wx00000000campaign"\n'
        # Limits far above what the campaign sends: the inputs, not the rate limits, are tested.
        '[adapters.webchat]\nenabled = true\nsession_secret_env = "INTAKE_CAMPAIGN_WEBCHAT"\n'
        "message_rate = 100000\nip_message_rate = 100000\nsession_rate = 100000\n"
        'auth_timeout = "2s"\n'
        f'[[adapters.webchat.sites]]\nkey = "{WEBCHAT_SITE}"\nallow_apps = true\n'
        f'allowed_origins = ["{WEBCHAT_ORIGIN}"]\n')


@pytest.fixture
async def gw(make_gateway: MakeGateway) -> AsyncIterator[Gateway]:
    async with FakeTwilio(SID, TWILIO_TOKEN) as twilio, FakeTelegram(TELEGRAM_TOKEN) as telegram:
        yield await make_gateway(gateway_toml(twilio, telegram))


@pytest.fixture(autouse=True)
def report_counts(request: pytest.FixtureRequest, capsys: pytest.CaptureFixture[str]
                  ) -> Iterator[None]:
    """Print the inputs each test tried, even without ``-s``; collect the gateway's errors."""
    before = Counter(TRIED)
    logging.getLogger().addHandler(TRACEBACKS)
    try:
        yield
    finally:
        logging.getLogger().removeHandler(TRACEBACKS)
    with capsys.disabled():
        for target, n in sorted((TRIED - before).items()):
            print(f"\ncampaign: {target} = {n}", end="")
        print()


async def run_batch(gw: Gateway, body: Callable[[Callable[[Coroutine[Any, Any, Any]], Any]], None]
                    ) -> None:
    """Run a Hypothesis batch in a thread; ``body(on_loop)`` sends through the gateway's loop."""
    loop = asyncio.get_running_loop()

    def on_loop(coro: Coroutine[Any, Any, Any]) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, loop).result(60)

    await asyncio.to_thread(body, on_loop)
    assert await http_status(gw, request_bytes(gw, "GET", "/healthz")) == 200


# -- HTTP over a raw socket ------------------------------------------------------------------

Header = tuple[bytes, bytes]


def request_bytes(gw: Gateway, method: str, target: str, headers: list[Header] = (),  # type: ignore[assignment]
                  body: bytes = b"") -> bytes:
    """One HTTP/1.1 request, byte for byte: headers may carry any byte a socket can."""
    lines = [f"{method} {target} HTTP/1.1".encode(), f"Host: {gw.host}:{gw.port}".encode()]
    lines += [name + b": " + value for name, value in headers]
    lines += [b"Content-Length: " + str(len(body)).encode(), b"Connection: close"]
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


REFUSED_MID_BODY = 0
"""The server answered (a 4xx) and closed while the body was still coming, and the reset that
closing causes took the answer with it: a refusal, as HTTP allows, never a 5xx."""


async def http_status(gw: Gateway, raw: bytes) -> int | None:
    """Send ``raw`` and read the status line; None when the server closed without one, and
    ``REFUSED_MID_BODY`` when it cut the connection while the request was still being sent."""
    reader, writer = await asyncio.open_connection(gw.host, gw.port)
    cut_while_sending = False
    try:
        writer.write(raw)
        try:
            await writer.drain()  # the server may answer (and close) before taking it all
        except ConnectionError:
            cut_while_sending = True
        line = await asyncio.wait_for(reader.readline(), 30)
        while line.startswith(b"HTTP/1.1 100"):
            await reader.readuntil(b"\r\n\r\n")
            line = await reader.readline()
    except ConnectionError:
        line = b""
    finally:
        writer.close()
    match = re.match(rb"HTTP/1\.[01] (\d{3}) ", line)
    if match:
        return int(match.group(1))
    return REFUSED_MID_BODY if cut_while_sending or (not line and len(raw) > 1_000_000) else None


def check_http(target: str, raw: bytes, status: int | None, *, must_refuse: bool = False
               ) -> None:
    """The rule for every HTTP input: an answer below 500; a 4xx when ``must_refuse``."""
    TRIED[target] += 1
    ok = status is not None and (status == REFUSED_MID_BODY
                                 or (status < 500 and (not must_refuse or status >= 400)))
    if not ok:
        FAILURES.append(f"{target}: {status} for {raw[:600]!r}")
    assert ok, f"{target}: status {status} for {raw[:2000]!r}; logged: {last_traceback()}"


# -- hostile values --------------------------------------------------------------------------

ANY_CHAR = st.characters(codec=None, categories=None)  # surrogates and controls included
hostile_text = st.one_of(
    st.text(max_size=40),
    st.text(ANY_CHAR, max_size=40),
    st.text(st.characters(max_codepoint=0x1F), max_size=20),
    st.integers(1000, 300_000).map(lambda n: "长" * n),
    st.sampled_from(["", " ", "\x00", "\ud800", "\udfff", "\u202e", "\ufeff", "\r\n.\r\n",
                     "<telegram:1:1>", "CX-20260101-00001-0", "../../etc/passwd", "%00",
                     "=?utf-8?b?////?=", "a@b", "+0", "+8613800138000", "vip", "\\u0000",
                     "bodySHA256=", "x=1&bodySHA256=00", "sha256=00", "0", "-1",
                     "99999999999999999999"]),
)
hostile_bytes = st.one_of(
    st.binary(max_size=80),
    hostile_text.map(lambda s: s.encode("utf-8", "surrogatepass")),
    st.sampled_from([b"\xff\xfe", b"\xc3\x28", b"\xed\xa0\x80", b"\x00", b"\xe9t\xe9"]),
)
json_scalar = st.one_of(
    st.none(), st.booleans(), st.integers(), st.integers(10**30, 10**400),
    st.floats(allow_nan=True, allow_infinity=True), hostile_text)
json_value = st.recursive(json_scalar, lambda inner: st.one_of(
    st.lists(inner, max_size=6), st.dictionaries(hostile_text, inner, max_size=6)),
    max_leaves=25)


def maybe(valid: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """Mostly the right shape, sometimes any JSON at all (wrong types)."""
    return st.one_of(valid, valid, json_value)


emails = st.one_of(st.emails(), hostile_text)
api_message = st.fixed_dictionaries(
    {"contact": maybe(st.fixed_dictionaries({}, optional={
        "name": maybe(hostile_text), "email": maybe(emails),
        "phone": maybe(st.one_of(st.from_regex(r"\+?[0-9 ()-]{1,30}", fullmatch=True),
                                 hostile_text)),
        "chat_ids": maybe(st.dictionaries(hostile_text, hostile_text, max_size=3))}))},
    optional={
        "text": maybe(hostile_text), "subject": maybe(hostile_text),
        "locale": maybe(st.one_of(st.sampled_from(["en", "zh-CN", "zh-TW", "xx"]),
                                  hostile_text)),
        "customer_type": maybe(st.sampled_from(["new", "existing", "vip", "VIP", ""])),
        "kind": maybe(st.sampled_from(["consultation", "complaint", "fault", "suggestion"])),
        "ticket_number": maybe(hostile_text), "in_reply_to": maybe(hostile_text),
        "order_number": maybe(hostile_text), "device_model": maybe(hostile_text),
        "metadata": maybe(st.dictionaries(hostile_text, hostile_text, max_size=4)),
        "attachments": maybe(st.lists(st.fixed_dictionaries(
            {"name": maybe(hostile_text), "data": maybe(st.one_of(
                st.binary(max_size=300).map(lambda b: base64.b64encode(b).decode()),
                hostile_text))},
            optional={"content_type": maybe(hostile_text)}), max_size=3)),
    })


def dump_json(value: Any, ascii_only: bool = True) -> bytes:
    # NaN and Infinity come out as the bare words JSON does not allow: more bad input.
    return json.dumps(value, ensure_ascii=ascii_only).encode("utf-8", "surrogatepass")


def as_json(values: st.SearchStrategy[Any]) -> st.SearchStrategy[bytes]:
    """``values`` encoded, with \\u escapes or raw UTF-8 (lone surrogates kept either way)."""
    return st.tuples(values, st.booleans()).map(lambda vb: dump_json(*vb))


raw_json_bodies = st.one_of(
    st.integers(1, 200_000).map(lambda n: b"[" * n + b"]" * n),
    st.integers(1, 200_000).map(lambda n: b'{"a":' * n + b"1" + b"}" * n),
    st.integers(1, 20_000).map(lambda n: b'{"contact": {"email": "a@b.cn"}, "text": ' + b"9" * n
                               + b"}"),
    st.binary(max_size=200),
    as_json(api_message).flatmap(lambda b: st.integers(0, max(len(b) - 1, 0)).map(
        lambda i: b[:i] + b"\xff" + b[i:])),
)
header_value = st.one_of(
    hostile_text.filter(lambda s: "\r" not in s and "\n" not in s).map(
        lambda s: s.encode("utf-8", "surrogatepass")),
    # Bytes HTTP lets through in a header but UTF-8 does not decode: aiohttp hands them on as
    # surrogates, and any .encode() of them fails.
    st.lists(st.one_of(st.integers(0x21, 0x7E), st.integers(0x80, 0xFF)), min_size=1,
             max_size=40).map(bytes),
    st.sampled_from([b"\xff", b"sha256=\xe9", b"\xc3\x28", b"\xed\xa0\x80", b"1700000000\xff"]),
    st.binary(max_size=60).filter(lambda b: b"\r" not in b and b"\n" not in b),
)


# -- the API ---------------------------------------------------------------------------------


async def test_api_survives_generated_json(gw: Gateway) -> None:
    def body(on_loop: Callable[[Any], Any]) -> None:
        @campaign(max_examples=250)
        @given(payload=st.one_of(as_json(api_message), as_json(json_value),
                                 raw_json_bodies),
               headers=st.lists(st.tuples(
                   st.sampled_from([b"Idempotency-Key", b"Accept-Language", b"X-Intake-Timestamp",
                                    b"X-Intake-Signature", b"Content-Encoding"]),
                   header_value), max_size=3),
               ctype=st.one_of(st.just(b"application/json"), st.sampled_from([
                   b"application/json; charset=latin-1", b"application/json; charset=\xff",
                   b"text/plain", b"application/json; boundary=\"", b""])),
               signed=st.booleans())
        def one(payload: bytes, headers: list[Header], ctype: bytes, signed: bool) -> None:
            heads = [(b"Content-Type", ctype)] if ctype else []
            # Signed requests take the junk past the signature to the decoder and the core;
            # the rest carry whatever the headers above drew, and must be refused.
            signed = signed and not any(name.startswith(b"X-Intake") for name, _ in headers)
            if signed:
                ts = str(int(time.time()))
                heads += [(b"X-Intake-Timestamp", ts.encode()),
                          (b"X-Intake-Signature", sign_request(API_SECRET, ts, payload).encode())]
            raw = request_bytes(gw, "POST", "/v1/messages", [*heads, *headers], payload)
            check_http(f"api{' signed' if signed else ''}", raw, on_loop(http_status(gw, raw)),
                       must_refuse=not signed)

        one()

    await run_batch(gw, body)


# -- the web form ----------------------------------------------------------------------------

FORM_NAMES = ["name", "email", "phone", "customer_type", "kind", "order_number", "device_model",
              "subject", "message", "ticket_number", "website", "lang", "form_token",
              "attachments", "_charset_"]
part_name = st.one_of(st.sampled_from(FORM_NAMES), hostile_text.filter(
    lambda s: '"' not in s and "\r" not in s and "\n" not in s))
file_name = st.one_of(st.none(), st.sampled_from([
    "../../etc/passwd", "/etc/shadow", "C:\\Windows\\system.ini", "a\x00.png", "", ".",
    "..", "报告.pdf", "\u202egnp.exe", "x" * 500, "%2e%2e%2fsecret"]),
    hostile_text.filter(lambda s: '"' not in s and "\r" not in s and "\n" not in s))
part = st.tuples(part_name, file_name,
                 st.one_of(st.none(), st.sampled_from(["image/png", "text/plain; charset=gbk",
                                                      "multipart/mixed; boundary=inner",
                                                      "application/x-www-form-urlencoded",
                                                      "../../x", ""])),
                 hostile_bytes)


def multipart_body(parts: list[tuple[str, str | None, str | None, bytes]], boundary: str,
                   ending: bytes) -> bytes:
    out = b""
    for name, filename, ctype, value in parts:
        disposition = f'form-data; name="{name}"'
        if filename is not None:
            disposition += f'; filename="{filename}"'
        out += f"--{boundary}\r\nContent-Disposition: {disposition}\r\n".encode(
            "utf-8", "surrogatepass")
        if ctype is not None:
            out += f"Content-Type: {ctype}\r\n".encode()
        out += b"\r\n" + value + b"\r\n"
    return out + ending


async def test_form_survives_generated_bodies(gw: Gateway) -> None:
    def body(on_loop: Callable[[Any], Any]) -> None:
        @campaign(max_examples=250)
        @given(parts=st.lists(part, max_size=8),
               boundary=st.one_of(st.just("campaignBoundary"), st.text(
                   st.characters(min_codepoint=33, max_codepoint=126, exclude_characters='";'),
                   min_size=1, max_size=90)),
               declared=st.one_of(st.none(), st.text(max_size=20).map(str)),
               ending=st.sampled_from([b"", b"--campaignBoundary--\r\n", b"--wrong--\r\n",
                                       b"--campaignBoundary", b"\r\n\r\n"]),
               urlencoded=st.one_of(st.none(), st.lists(st.tuples(hostile_bytes, hostile_bytes),
                                                        max_size=10)),
               lang=st.sampled_from(["en", "zh-CN", "zh-TW", "xx", "%ff", ""]))
        def one(parts: list[Any], boundary: str, declared: str | None, ending: bytes,
                urlencoded: list[tuple[bytes, bytes]] | None, lang: str) -> None:
            if urlencoded is not None:
                payload = b"&".join(quote(k).encode() + b"=" + v for k, v in urlencoded)
                ctype = b"application/x-www-form-urlencoded"
            else:
                payload = multipart_body(parts, boundary, ending)
                header_boundary = boundary if declared is None else declared
                ctype = f"multipart/form-data; boundary={header_boundary}".encode(
                    "utf-8", "surrogatepass")
            raw = request_bytes(gw, "POST", f"/form?lang={lang}",
                                [(b"Content-Type", ctype)], payload)
            check_http("webform", raw, on_loop(http_status(gw, raw)))

        one()

    await run_batch(gw, body)


# -- webhooks --------------------------------------------------------------------------------

TWILIO_PATHS = ["/twilio/sms", "/twilio/status", "/twilio/voice", "/twilio/voice/recording",
                "/twilio/voice/transcription"]
form_pairs = st.lists(st.tuples(st.one_of(st.sampled_from([
    "MessageSid", "From", "To", "Body", "NumMedia", "MediaUrl0", "MediaContentType0",
    "AccountSid", "RecordingSid", "RecordingUrl", "TranscriptionText", "CallSid",
    "MessageStatus", "bodySHA256"]), hostile_text), hostile_text), max_size=10)
xml_body = st.one_of(
    st.binary(max_size=200),
    st.lists(st.tuples(st.sampled_from(["ToUserName", "FromUserName", "CreateTime", "MsgType",
                                        "Content", "MsgId", "PicUrl", "MediaId", "Encrypt",
                                        "Event", "Recognition", "Location_X"]),
                       hostile_text.filter(lambda s: "]]>" not in s)), max_size=8).map(
        lambda kv: ("<xml>" + "".join(f"<{k}><![CDATA[{v}]]></{k}>" for k, v in kv)
                    + "</xml>").encode("utf-8", "surrogatepass")),
    st.just(b'<?xml version="1.0"?><!DOCTYPE x [<!ENTITY e SYSTEM "file:///etc/passwd">]>'
            b"<xml><Content>&e;</Content></xml>"),
    st.integers(1, 50_000).map(lambda n: b"<xml>" + b"<a>" * n + b"</a>" * n + b"</xml>"),
)


def encodable(pair: tuple[str, str]) -> bool:
    try:
        "".join(pair).encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


async def test_webhooks_survive_generated_requests(gw: Gateway) -> None:
    def body(on_loop: Callable[[Any], Any]) -> None:
        @campaign(max_examples=400)
        @given(target=st.sampled_from(["twilio", "telegram", "wechat-get", "wechat-post"]),
               signed=st.booleans(), pairs=form_pairs, json_body=json_value,
               xml=xml_body, signature=header_value, query=st.lists(st.tuples(st.sampled_from([
                   "signature", "timestamp", "nonce", "echostr", "openid", "encrypt_type",
                   "msg_signature", "bodySHA256"]), hostile_text), max_size=6),
               path=st.sampled_from(TWILIO_PATHS), as_json=st.booleans())
        def one(target: str, signed: bool, pairs: list[tuple[str, str]], json_body: Any,
                xml: bytes, signature: bytes, query: list[tuple[str, str]], path: str,
                as_json: bool) -> None:
            qs = urlencode([(k, v.encode("utf-8", "surrogatepass")) for k, v in query])
            if target == "twilio":
                payload = urlencode([(k.encode("utf-8", "surrogatepass"),
                                      v.encode("utf-8", "surrogatepass")) for k, v in pairs]
                                    ).encode()
                ctype = b"application/x-www-form-urlencoded"
                if as_json:
                    payload, ctype = dump_json(json_body), b"application/json"
                target_path = f"{path}?{qs}" if qs else path
                # Signed as Twilio would sign it: the parsers behind the signature get the junk.
                signed = signed and not as_json and all(map(encodable, (*query, *pairs)))
                sig = (compute_twilio_signature(TWILIO_TOKEN, gw.url + target_path, pairs)
                       .encode() if signed else signature)
                raw = request_bytes(gw, "POST", target_path, [
                    (b"Content-Type", ctype), (b"X-Twilio-Signature", sig)], payload)
                check_http(f"twilio{' signed' if signed else ''}", raw,
                           on_loop(http_status(gw, raw)), must_refuse=not signed)
            elif target == "telegram":
                secret = TELEGRAM_SECRET.encode() if signed else signature
                raw = request_bytes(gw, "POST", "/telegram/webhook", [
                    (b"Content-Type", b"application/json"),
                    (b"X-Telegram-Bot-Api-Secret-Token", secret)], dump_json(json_body))
                check_http(f"telegram{' signed' if signed else ''}", raw,
                           on_loop(http_status(gw, raw)), must_refuse=not signed)
            else:
                method = "GET" if target == "wechat-get" else "POST"
                if signed:
                    ts, nonce = str(int(time.time())), secrets.token_hex(6)
                    qs = urlencode({"signature": compute_signature(WECHAT_TOKEN, ts, nonce),
                                    "timestamp": ts, "nonce": nonce, "echostr": "e",
                                    "openid": "o"}) + ("&" + qs if qs else "")
                raw = request_bytes(gw, method, f"/wechat?{qs}",
                                    [(b"Content-Type", b"text/xml")],
                                    xml if method == "POST" else b"")
                check_http(f"wechat{' signed' if signed else ''}", raw,
                           on_loop(http_status(gw, raw)), must_refuse=not signed)

        one()

    await run_batch(gw, body)


# -- mail ------------------------------------------------------------------------------------

CHARSETS = ["utf-8", "gb2312", "gbk", "gb18030", "big5", "iso-2022-jp", "shift_jis", "utf-7",
            "us-ascii", "latin-1", "x-unknown-charset", "", "utf-8\x00", "ébad"]
header_names = st.sampled_from(["From", "To", "Cc", "Subject", "Message-ID", "In-Reply-To",
                                "References", "Date", "Reply-To", "Auto-Submitted", "Precedence",
                                "Return-Path", "X-Autoreply", "Content-Type", "MIME-Version",
                                "Content-Transfer-Encoding", "Content-Disposition", "X-Junk"])


@st.composite
def encoded_word(draw: st.DrawFn) -> bytes:
    charset = draw(st.sampled_from(CHARSETS))
    kind = draw(st.sampled_from("BQbqX"))
    payload = draw(st.one_of(st.binary(max_size=30).map(base64.b64encode),
                             st.text(max_size=20).map(lambda s: s.encode("utf-8", "replace")),
                             st.just(b"=FF=FE=")))
    return b"=?" + charset.encode("utf-8", "surrogatepass") + b"?" + kind.encode() + b"?" \
        + payload.replace(b"?=", b"") + b"?="


header_text = st.one_of(hostile_bytes, encoded_word(), st.just(b"<telegram:777002:1000>"),
                        st.integers(1, 3000).map(lambda n: b"x" * n))


@st.composite
def mime_part(draw: st.DrawFn, depth: int = 0) -> bytes:
    charset = draw(st.sampled_from(CHARSETS)).encode("utf-8", "surrogatepass")
    cte = draw(st.sampled_from([b"", b"base64", b"quoted-printable", b"8bit", b"7bit", b"x-uue",
                                b"binary"]))
    ctype = draw(st.sampled_from([b"text/plain", b"text/html", b"image/png", b"message/rfc822",
                                  b"multipart/mixed", b"multipart/alternative",
                                  b"multipart/report", b"application/octet-stream", b"", b"/"]))
    head = b"Content-Type: " + ctype + b"; charset=" + charset
    if cte:
        head += b"\r\nContent-Transfer-Encoding: " + cte
    if draw(st.booleans()):
        head += b'\r\nContent-Disposition: attachment; filename="' + draw(st.sampled_from(
            [b"../../x", b"a\x00b", "报告.pdf".encode(), b"=?utf-8?b?Li4vZXRj?=", b""])) + b'"'
    if ctype.startswith(b"multipart") and depth < 4:
        boundary = draw(st.sampled_from([b"b1", b"b2", b"", b"b1\x00"])) + str(depth).encode()
        children = draw(st.lists(mime_part(depth + 1), max_size=3))
        body = b"".join(b"--" + boundary + b"\r\n" + c + b"\r\n" for c in children)
        body += draw(st.sampled_from([b"--" + boundary + b"--\r\n", b"", b"--other--\r\n"]))
        head = head.replace(b"; charset=" + charset, b'; boundary="' + boundary + b'"')
    else:
        body = draw(st.one_of(hostile_bytes, st.binary(max_size=2000),
                              st.integers(1, 200_000).map(lambda n: b"A" * n)))
    return head + b"\r\n\r\n" + body


@st.composite
def mail(draw: st.DrawFn) -> tuple[str, bytes]:
    sender = draw(st.one_of(st.just("zhang@example.cn"), st.emails(), st.just("<>")))
    headers = draw(st.lists(st.tuples(header_names, header_text), max_size=12))
    if draw(st.booleans()):
        headers.append(("From", sender.encode()))
    head = b"".join(n.encode() + b": " + v.replace(b"\r", b"").replace(b"\n", b"\n ") + b"\r\n"
                    for n, v in headers)
    raw = head + draw(mime_part())
    if draw(st.booleans()):
        raw = raw.replace(b"\r\n", b"\n")  # bare newlines, as some scripts send
    return ("" if sender == "<>" else sender), raw


def smtp_port(gw: Gateway) -> int:
    return next(a for a in gw.adapters if isinstance(a, SmtpAdapter)).port


async def test_smtp_survives_generated_mail(gw: Gateway) -> None:
    port = smtp_port(gw)

    def body(on_loop: Callable[[Any], Any]) -> None:
        @campaign(max_examples=150)
        @given(message=mail())
        def one(message: tuple[str, bytes]) -> None:
            sender, data = message
            TRIED["smtp mail"] += 1
            try:
                reply = smtp_transaction(port, sender=sender, recipients=[SUPPORT], data=data)
            except (OSError, EOFError) as exc:
                FAILURES.append(f"smtp mail: {exc!r} for {data[:600]!r}")
                raise AssertionError(f"the connection dropped: {exc!r} for {data[:2000]!r}"
                                     ) from exc
            ok = "internal" not in reply.text.lower() and (
                reply.code == 250 or 400 <= reply.code < 600)
            if not ok:
                FAILURES.append(f"smtp mail: {reply.code} {reply.text} for {data[:600]!r}")
            assert ok, f"{reply.code} {reply.text} for {data[:2000]!r}; logged: {last_traceback()}"

        one()

    await run_batch(gw, body)


VERBS = ["HELO", "EHLO", "MAIL FROM:", "RCPT TO:", "DATA", "RSET", "NOOP", "QUIT", "VRFY",
         "EXPN", "HELP", "STARTTLS", "AUTH PLAIN", "BDAT 10", "XCLIENT", "mail from:", "HELLO"]
command_line = st.one_of(
    st.tuples(st.sampled_from(VERBS), st.one_of(st.just(""), st.sampled_from([
        " <zhang@example.cn>", f" <{SUPPORT}>", " <>", " <a@b> SIZE=99999999999",
        " <a@b> BODY=8BITMIME SMTPUTF8", " client.example", " <@relay:x@y>"]),
        hostile_text.map(lambda s: " " + s))).map(
        lambda vt: (vt[0] + vt[1]).encode("utf-8", "surrogatepass")),
    hostile_bytes,
    st.integers(500, 5000).map(lambda n: b"NOOP " + b"x" * n),
)


def smtp_replies(sock: socket.socket, buf: bytearray) -> list[bytes] | None:
    """Read one complete reply (all its lines); None when the server closed first."""
    lines: list[bytes] = []
    while True:
        while b"\n" not in buf:
            try:
                chunk = sock.recv(65536)
            except ConnectionResetError:
                return None
            if not chunk:
                return None
            buf += chunk
        line, _, rest = bytes(buf).partition(b"\n")
        buf[:] = rest
        lines.append(line.rstrip(b"\r"))
        if len(line) < 4 or line[3:4] != b"-":
            return lines


async def test_smtp_survives_generated_command_streams(gw: Gateway) -> None:
    port = smtp_port(gw)

    def body(on_loop: Callable[[Any], Any]) -> None:
        @campaign(max_examples=120)
        @given(commands=st.lists(command_line, min_size=1, max_size=12),
               pipelined=st.booleans())
        def one(commands: list[bytes], pipelined: bool) -> None:
            TRIED["smtp commands"] += 1
            with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
                buf = bytearray()
                greeting = smtp_replies(sock, buf)
                assert greeting and greeting[0].startswith(b"220"), greeting
                if pipelined:
                    # Everything at once, junk between: replies may stop once the server
                    # gives up on the session, but never with an internal error.
                    # The server may close while junk is still arriving (after a 500 on an
                    # overlong line): a reset then is the session ending, not a failure.
                    with contextlib.suppress(ConnectionError, OSError):
                        sock.sendall(b"".join(c.replace(b"\n", b"") + b"\r\n"
                                              for c in commands))
                        sock.shutdown(socket.SHUT_WR)
                    replies: list[list[bytes]] = []
                    with contextlib.suppress(ConnectionError):
                        while (reply := smtp_replies(sock, buf)) is not None:
                            replies.append(reply)
                    for reply in replies:
                        assert b"internal" not in b" ".join(reply).lower(), (reply, commands)
                    return
                for command in commands:
                    line = command.replace(b"\r", b"").replace(b"\n", b"")
                    sock.sendall(line + b"\r\n")
                    reply = smtp_replies(sock, buf)
                    text = b" ".join(reply or [])
                    if reply is None or b"internal" in text.lower():
                        FAILURES.append(f"smtp commands: {reply!r} after {line[:300]!r} in "
                                        f"{commands!r}"[:900])
                    assert reply is not None, f"closed without a reply to {line[:300]!r}"
                    assert b"internal" not in text.lower(), (reply, line)
                    code = reply[-1][:3]
                    if code == b"354":
                        sock.sendall(b"Subject: x\r\n\r\n" + line + b"\r\n.\r\n")
                        reply = smtp_replies(sock, buf)
                        assert reply is not None and b"internal" not in b" ".join(
                            reply).lower(), (reply, commands)
                    if code in (b"221", b"421") or b"goodbye" in text.lower():
                        return  # the server ended the session, and said so first

        one()

    await run_batch(gw, body)


# -- the whole ------------------------------------------------------------------------------


async def test_campaign_keeps_memory_flat(gw: Gateway) -> None:
    """Two equal rounds of API and form input: the second may not leave memory behind.

    The first round warms everything up (allocator arenas, caches, Hypothesis's own state);
    a leak proportional to the inputs shows again in the second, a one-time cost does not.
    """

    def body(on_loop: Callable[[Any], Any]) -> None:
        @campaign(max_examples=150)
        @given(payload=st.one_of(as_json(api_message), raw_json_bodies),
               parts=st.lists(part, max_size=6))
        def one(payload: bytes, parts: list[Any]) -> None:
            ts = str(int(time.time()))
            raw = request_bytes(gw, "POST", "/v1/messages", [
                (b"Content-Type", b"application/json"), (b"X-Intake-Timestamp", ts.encode()),
                (b"X-Intake-Signature", sign_request(API_SECRET, ts, payload).encode())], payload)
            check_http("memory rounds: api", raw, on_loop(http_status(gw, raw)))
            raw = request_bytes(gw, "POST", "/form", [(
                b"Content-Type", b"multipart/form-data; boundary=campaignBoundary")],
                multipart_body(parts, "campaignBoundary", b"--campaignBoundary--\r\n"))
            check_http("memory rounds: webform", raw, on_loop(http_status(gw, raw)))

        one()

    await run_batch(gw, body)
    gc.collect()
    rss_before = rss_bytes()
    # Python objects still alive after the second round: exact, unlike RSS, which keeps the
    # allocator's high-water mark of the biggest inputs (a 200,000-deep JSON array, say).
    tracemalloc.start()
    try:
        await run_batch(gw, body)
        gc.collect()
        kept, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    rss_grown = rss_bytes() - rss_before
    TRIED["memory rounds: objects kept by the second, in KB"] = max(1, kept // 1024)
    TRIED["memory rounds: RSS growth over the second, in MB"] = max(1, rss_grown // 1_048_576)
    assert kept < KEPT_BOUND, f"{kept / 1_048_576:.1f} MB of objects kept by 150 inputs"
    assert rss_grown < RSS_BOUND, f"RSS grew by {rss_grown / 1_048_576:.1f} MB in the second round"


# -- the live chat: its HTTP routes and its WebSocket -----------------------------------------

WS_CLOSE_CODES = {1000, 1001, 1003, 1007, 1008, 1009, 4001}
"""What the chat may close a WebSocket with: never 1011 (an internal error)."""
WS_FRAME_TYPES = {"ready", "entry", "ack", "error", "pong"}

chat_client_id = st.one_of(st.from_regex(r"[A-Za-z0-9_-]{8,64}", fullmatch=True), hostile_text)
chat_frame = st.fixed_dictionaries(
    {"type": maybe(st.sampled_from(["auth", "message", "catchup", "ping", "bye"]))},
    optional={"token": maybe(hostile_text), "after": maybe(st.integers()),
              "client_id": maybe(chat_client_id), "text": maybe(hostile_text),
              "attachments": maybe(st.lists(hostile_text, max_size=3))})
ws_input = st.one_of(
    as_json(chat_frame).map(lambda b: ("text", b)),
    as_json(chat_frame).map(lambda b: ("text", b)),
    as_json(json_value).map(lambda b: ("text", b)),
    raw_json_bodies.map(lambda b: ("text", b)),
    hostile_bytes.map(lambda b: ("text", b)),
    st.binary(max_size=100).map(lambda b: ("binary", b)),
)


async def webchat_token(gw: Gateway) -> str:
    import aiohttp

    async with aiohttp.ClientSession() as http, http.post(
            f"{gw.url}/webchat/v1/sessions", json={"site": WEBCHAT_SITE}) as resp:
        assert resp.status == 200
        return str((await resp.json())["token"])


async def ws_exchange(gw: Gateway, token: str, auth: tuple[str, bytes] | None,
                      frames: list[tuple[str, bytes]], origin: bytes | None) -> list[str]:
    """Connect, authenticate (with ``auth`` instead of the real token when given), send the
    frames; return what went wrong (empty when every answer kept the rules)."""
    import aiohttp

    problems: list[str] = []
    logged = len(TRACEBACKS.seen)
    headers = {"Origin": origin.decode("latin-1")} if origin is not None else {}
    async with aiohttp.ClientSession() as http:
        try:
            ws = await http.ws_connect(f"{gw.url}/webchat/v1/ws?site={WEBCHAT_SITE}",
                                       headers=headers, max_msg_size=0)
        except aiohttp.WSServerHandshakeError as exc:
            if exc.status >= 500:
                problems.append(f"handshake answered {exc.status}")
            return problems
        except ValueError:
            return problems  # the client library itself refuses to send such a header
        async with ws:
            first = auth or ("text", json.dumps({"type": "auth", "token": token}).encode())
            with contextlib.suppress(ConnectionError):
                for kind, data in [first, *frames]:
                    if ws.closed:
                        break
                    opcode = aiohttp.WSMsgType.TEXT if kind == "text" else aiohttp.WSMsgType.BINARY
                    await ws.send_frame(data, opcode)
                if not ws.closed:
                    await ws.send_str('{"type": "ping"}')
            while True:
                msg = await ws.receive(timeout=10)
                if msg.type == aiohttp.WSMsgType.TEXT:
                    frame = json.loads(msg.data)
                    if frame.get("type") not in WS_FRAME_TYPES:
                        problems.append(f"unknown frame {msg.data[:200]}")
                    if frame.get("type") == "error" and frame.get("status", 0) >= 500:
                        problems.append(f"error frame {msg.data[:200]}")
                    if frame.get("type") == "pong":
                        break
                elif msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSING,
                                  aiohttp.WSMsgType.CLOSED):
                    break
                elif msg.type == aiohttp.WSMsgType.ERROR:
                    problems.append(f"transport error {msg.data!r}")
                    break
            await ws.close()
            # 1006 (no close frame read) is also what a client sees when it kept sending after
            # the server closed (1009, 1008) and the reset overtook the close frame: a crash
            # is told apart by the traceback it logs.
            code = ws.close_code
            if code is not None and code not in WS_CLOSE_CODES and (
                    code != 1006 or len(TRACEBACKS.seen) > logged):
                problems.append(f"closed with {code}")
    if len(TRACEBACKS.seen) > logged:
        problems.append(f"the gateway logged {TRACEBACKS.seen[-1]}")
    return problems


async def test_webchat_websocket_survives_generated_frames(gw: Gateway) -> None:
    token = await webchat_token(gw)

    def body(on_loop: Callable[[Any], Any]) -> None:
        @campaign(max_examples=150)
        @example(auth=None, frames=[("text", b'{"type": "message", "client_id": "abcdefgh", '
                                             b'"text": "\\ud800"}'),
                                    ("text", b"\xff\xfe"), ("binary", b"\x00")], origin=None)
        @example(auth=None, frames=[("text", b'{"type": "message", "text": "' + b"x" * 70_000
                                     + b'"}')], origin=None)
        @example(auth=("text", b"[" * 50_000 + b"]" * 50_000), frames=[], origin=None)
        @given(auth=st.one_of(st.none(), st.none(), ws_input),
               frames=st.lists(ws_input, max_size=5),
               origin=st.one_of(st.none(), st.just(WEBCHAT_ORIGIN.encode()), header_value))
        def one(auth: tuple[str, bytes] | None, frames: list[tuple[str, bytes]],
                origin: bytes | None) -> None:
            TRIED["webchat: websocket sessions"] += 1
            TRIED["webchat: websocket frames"] += len(frames) + 1
            problems = on_loop(ws_exchange(gw, token, auth, frames, origin))
            FAILURES.extend(problems)
            assert not problems, (f"{problems} for {repr(auth)[:500]} {repr(frames)[:1500]}; "
                                  f"{last_traceback()}")

        one()

    await run_batch(gw, body)
    # Still taking messages afterwards.
    problems = await ws_exchange(gw, token, None, [("text", json.dumps({
        "type": "message", "client_id": "after-the-campaign", "text": "hello"}).encode())],
        None)
    assert not problems


async def test_webchat_http_survives_generated_requests(gw: Gateway) -> None:
    token = await webchat_token(gw)
    routes = [("POST", "/webchat/v1/sessions"), ("POST", "/webchat/v1/messages"),
              ("GET", "/webchat/v1/messages"), ("POST", "/webchat/v1/uploads"),
              ("POST", "/webchat/v1/devices"), ("GET", "/webchat/v1/session"),
              ("DELETE", "/webchat/v1/session"), ("GET", "/webchat/v1/ws"),
              ("OPTIONS", "/webchat/v1/messages")]

    def body(on_loop: Callable[[Any], Any]) -> None:
        @campaign(max_examples=200)
        # Always tried, whatever Hypothesis draws: bytes that are not UTF-8 inside JSON.
        @example(route=routes[0], payload=b'{"\x80":', query={},
                 auth=b"Bearer " + token.encode(), headers=[])
        @example(route=routes[1], payload=b'{"client_id": "\xed\xa0\x80"}', query={},
                 auth=b"Bearer " + token.encode(), headers=[])
        # A file name (and type) header with a byte that is not UTF-8 (once a 500).
        @example(route=routes[3], payload=b"[]", query={}, auth=b"Bearer " + token.encode(),
                 headers=[(b"X-Filename", b"\xff"), (b"Content-Type", b"text/\xff")])
        @given(route=st.sampled_from(routes),
               payload=st.one_of(as_json(chat_frame), as_json(json_value), raw_json_bodies,
                                 hostile_bytes),
               query=st.dictionaries(st.sampled_from(["after", "wait", "site"]), hostile_text,
                                     max_size=3),
               auth=st.one_of(st.just(b"Bearer " + token.encode()), header_value),
               headers=st.lists(st.tuples(
                   st.sampled_from([b"Origin", b"X-Filename", b"Content-Type",
                                    b"Upgrade", b"Connection", b"Sec-WebSocket-Key",
                                    b"Sec-WebSocket-Version"]), header_value), max_size=4))
        def one(route: tuple[str, str], payload: bytes, query: dict[str, str], auth: bytes,
                headers: list[Header]) -> None:
            method, path = route
            if method != "DELETE" or auth != b"Bearer " + token.encode():
                target = path + ("?" + urlencode({k: v.encode("utf-8", "surrogatepass")
                                                  for k, v in query.items()}) if query else "")
                raw = request_bytes(gw, method, target, [(b"Authorization", auth), *headers],
                                    payload if method in ("POST", "DELETE") else b"")
                check_http(f"webchat: {method} {path.rsplit('/', 1)[-1]}", raw,
                           on_loop(http_status(gw, raw)))

        one()

    await run_batch(gw, body)
