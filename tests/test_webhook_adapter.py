"""The generic signed JSON webhook: signatures, replay guard, mapping, limits, config, docs.

Most tests drive the adapter's real routes through aiohttp's test server against
:class:`~gateway.testing.recording.RecordingIntake` (the fake at the plug-in seam), wrapped in
the gateway's own error middleware so the statuses are the ones a platform gets. A few run
through a real gateway; the contract suite runs it via tests/test_adapter_contract.py.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import re
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import msgspec
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from gateway.config import convert_section, parse_config
from gateway.errors import ConfigError
from gateway.http import errors_middleware
from gateway.plugin import IntakeLimits, check_adapter
from gateway.runtime import Gateway
from gateway.testing.drivers_webhook import standard_webhooks_headers
from gateway.testing.harness import read_events
from gateway.testing.recording import RecordingIntake, context
from intake_adapters.webhook import WebhookAdapter, WebhookConfig
from tests.conftest import MakeGateway

ROOT = Path(__file__).resolve().parent.parent
NOW = datetime(2024, 5, 6, 7, 8, 9, tzinfo=UTC)
KEY = b"a-test-key-of-twenty-four-bytes+"
SECRET = "whsec_" + base64.b64encode(KEY).decode()
MAPPING = {"text": "data.review.body", "email": "data.reviewer.email",
           "name": "data.reviewer.name"}
PAYLOAD = {"type": "review.created", "data": {
    "review": {"id": "r-1", "body": "The charger broke after two days."},
    "reviewer": {"name": "Li Wei", "email": "Li.Wei@Example.org"}}}


def _adapter(intake: RecordingIntake, *sources: dict[str, Any],
             now: datetime = NOW) -> WebhookAdapter:
    config = convert_section({"enabled": True, "sources": list(sources)}, WebhookConfig,
                             where="adapters.webhook")
    ctx = msgspec.structs.replace(context("webhook"), clock=lambda: now)
    return WebhookAdapter(config, intake, ctx)


def _source(**over: Any) -> dict[str, Any]:
    return {"name": "reviews", "secret_env": "TEST_WEBHOOK_SECRET", "mapping": MAPPING, **over}


@pytest.fixture(autouse=True)
def _secret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TEST_WEBHOOK_SECRET", SECRET)
    monkeypatch.setenv("TEST_PLAIN_SECRET", "a plain shared secret")


@pytest.fixture
async def serve() -> AsyncIterator[Callable[[WebhookAdapter], Any]]:
    """Serve an adapter's routes behind the gateway's error middleware."""
    clients: list[TestClient[Any, Any]] = []

    async def start(adapter: WebhookAdapter) -> TestClient[Any, Any]:
        app = web.Application(middlewares=[errors_middleware])
        app.router.add_routes(list(adapter.routes()))
        client: TestClient[Any, Any] = TestClient(TestServer(app))
        await client.start_server()
        clients.append(client)
        return client

    yield start
    for client in clients:
        await client.close()


def _body(payload: Any = PAYLOAD) -> bytes:
    return json.dumps(payload).encode()


def _signed(body: bytes, *, msg_id: str = "msg_1", at: datetime = NOW,
            secret: str = SECRET) -> dict[str, str]:
    return standard_webhooks_headers(secret, msg_id, int(at.timestamp()), body)


# -- Standard Webhooks ----------------------------------------------------------------------


def test_standard_webhooks_accepts_the_reference_test_vector() -> None:
    # The signing test of the Standard Webhooks reference library (libraries/python/tests):
    # an oracle computed by someone else, not by our own signer.
    from intake_adapters.webhook import StandardWebhooks

    scheme = StandardWebhooks("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", tolerance=300, key="k")
    headers = {"webhook-id": "msg_p5jXN8AQM9LWM0D4loKWxJek", "webhook-timestamp": "1614265330",
               "webhook-signature": "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="}
    verified = scheme.verify(headers, b'{"test": 2432232314}', now=1614265330.0)
    assert verified.delivery_id == "msg_p5jXN8AQM9LWM0D4loKWxJek"
    from gateway.errors import Forbidden

    with pytest.raises(Forbidden):
        scheme.verify({**headers, "webhook-signature":
                       "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OA="},
                      b'{"test": 2432232314}', now=1614265330.0)


async def test_signed_event_becomes_a_message_with_its_receipt(serve: Any) -> None:
    intake = RecordingIntake()
    client = await serve(_adapter(intake, _source()))
    body = _body()
    resp = await client.post("/webhooks/reviews", data=body, headers=_signed(body))
    assert resp.status == 200, await resp.text()
    answer = await resp.json()
    assert answer["outcome"] == "created" and answer["ticket_number"]
    assert answer["due_at"] and answer["acknowledgement"]["text"]
    assert answer["ticket_number"] in answer["acknowledgement"]["text"]
    [sub] = intake.submitted
    m = sub.message
    assert type(sub.reply).__name__ == "Inline"
    assert (m.channel, m.delivery_scope, m.provider_message_id) == ("webhook", "reviews", "msg_1")
    assert m.text == "The charger broke after two days."
    assert (m.contact.name, m.contact.email) == ("Li Wei", "li.wei@example.org")
    assert m.contact.verified_by == "webhook:reviews"
    assert m.received_at == NOW and m.metadata == {"webhook_source": "reviews"}


async def test_key_rotation_any_v1_signature_may_match(serve: Any) -> None:
    intake = RecordingIntake()
    client = await serve(_adapter(intake, _source()))
    body = _body()
    good = _signed(body)
    other = "v1," + base64.b64encode(b"x" * 32).decode()
    headers = {**good, "webhook-signature":
               f"{other} v1a,{other[3:]} {good['webhook-signature']}"}
    assert (await client.post("/webhooks/reviews", data=body, headers=headers)).status == 200
    # Only non-matching signatures (v1a is asymmetric, not ours to check) are refused.
    headers = {**good, "webhook-signature": f"{other} v1a{good['webhook-signature'][2:]}"}
    assert (await client.post("/webhooks/reviews", data=body, headers=headers)).status == 403


@pytest.mark.parametrize(("change", "status", "words"), [
    ({"webhook-signature": None}, 401, "webhook-signature"),
    ({"webhook-id": None}, 401, "webhook-id"),
    ({"webhook-timestamp": None}, 401, "webhook-timestamp"),
    ({"webhook-timestamp": "yesterday"}, 401, "Unix seconds"),
    ({"webhook-timestamp": "9" * 400}, 401, "Unix seconds"),
    ({"webhook-id": "msg.1"}, 401, "without a dot"),
    ({"webhook-signature": "v1,not base64!"}, 403, "matches"),
])
async def test_standard_webhooks_refusals(serve: Any, change: dict[str, str | None],
                                          status: int, words: str) -> None:
    intake = RecordingIntake()
    client = await serve(_adapter(intake, _source()))
    body = _body()
    headers = {k: v for k, v in {**_signed(body), **change}.items() if v is not None}
    resp = await client.post("/webhooks/reviews", data=body, headers=headers)
    assert resp.status == status
    assert words in (await resp.json())["error"]
    assert not intake.submitted


@pytest.mark.parametrize("skew", [-301, 301])
async def test_timestamp_outside_the_tolerance_is_refused(serve: Any, skew: int) -> None:
    intake = RecordingIntake()
    client = await serve(_adapter(intake, _source()))
    body = _body()
    at = datetime.fromtimestamp(NOW.timestamp() + skew, UTC)
    resp = await client.post("/webhooks/reviews", data=body, headers=_signed(body, at=at))
    assert resp.status == 401 and "tolerance" in (await resp.json())["error"]
    inside = datetime.fromtimestamp(NOW.timestamp() + (299 if skew > 0 else -299), UTC)
    resp = await client.post("/webhooks/reviews", data=body, headers=_signed(body, at=inside))
    assert resp.status == 200


async def test_tampered_body_or_wrong_secret_is_refused(serve: Any) -> None:
    intake = RecordingIntake()
    client = await serve(_adapter(intake, _source()))
    body = _body()
    tampered = body.replace(b"two days", b"ten days")
    resp = await client.post("/webhooks/reviews", data=tampered, headers=_signed(body))
    assert resp.status == 403
    wrong = "whsec_" + base64.b64encode(b"another-key-of-24-bytes!").decode()
    resp = await client.post("/webhooks/reviews", data=body, headers=_signed(body, secret=wrong))
    assert resp.status == 403
    assert not intake.submitted


async def test_replayed_request_is_refused_and_a_fresh_retry_is_answered(serve: Any) -> None:
    intake = RecordingIntake()
    client = await serve(_adapter(intake, _source()))
    body = _body()
    headers = _signed(body)
    first = await client.post("/webhooks/reviews", data=body, headers=headers)
    assert first.status == 200
    again = await client.post("/webhooks/reviews", data=body, headers=headers)
    assert again.status == 409 and "replay" in (await again.json())["error"]
    assert len(intake.submitted) == 1
    # The platform's retry: same webhook-id, signed afresh with a later timestamp.
    later = datetime.fromtimestamp(NOW.timestamp() + 5, UTC)
    retry = await client.post("/webhooks/reviews", data=body, headers=_signed(body, at=later))
    assert retry.status == 200
    assert (await retry.json())["outcome"] == "replayed"
    assert intake.submitted[1].message.provider_message_id == "msg_1"
    assert ("webhook:reviews", f"msg_1.{int(NOW.timestamp())}") in intake.used


# -- HMAC over the body -----------------------------------------------------------------------


def _hex(body: bytes, secret: str = "a plain shared secret") -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def _b64(body: bytes, secret: str = "a plain shared secret") -> str:
    return base64.b64encode(hmac.new(secret.encode(), body, hashlib.sha256).digest()).decode()


async def test_hmac_hex_github_style(serve: Any) -> None:
    intake = RecordingIntake()
    client = await serve(_adapter(intake, _source(
        signature="hmac-sha256-hex", secret_env="TEST_PLAIN_SECRET", idempotency="data.review.id")))
    body = _body()
    ok = await client.post("/webhooks/reviews", data=body,
                           headers={"X-Hub-Signature-256": _hex(body)})
    assert ok.status == 200, await ok.text()
    assert intake.submitted[0].message.provider_message_id == "r-1"
    # No timestamp is signed: a redelivery repeats the signature, and is answered, not refused.
    again = await client.post("/webhooks/reviews", data=body,
                              headers={"X-Hub-Signature-256": _hex(body).upper()
                                       .replace("SHA256=", "sha256=")})
    assert again.status == 200 and (await again.json())["outcome"] == "replayed"
    for headers, status in (({}, 401), ({"X-Hub-Signature-256": _hex(body)[7:]}, 403),
                            ({"X-Hub-Signature-256": _hex(body, "other")}, 403),
                            ({"X-Hub-Signature-256": "sha256=zz"}, 403)):
        resp = await client.post("/webhooks/reviews", data=body, headers=headers)
        assert resp.status == status, headers
    assert len(intake.submitted) == 2


async def test_hmac_base64_shopify_style_with_its_own_header(serve: Any) -> None:
    intake = RecordingIntake()
    client = await serve(_adapter(intake, _source(
        signature="hmac-sha256-base64", secret_env="TEST_PLAIN_SECRET"), _source(
        name="app", signature="hmac-sha256-hex", secret_env="TEST_PLAIN_SECRET",
        signature_header="X-App-Signature", signature_prefix="")))
    body = _body()
    ok = await client.post("/webhooks/reviews", data=body,
                           headers={"X-Shopify-Hmac-Sha256": _b64(body)})
    assert ok.status == 200
    # Without an id in the payload, the body's SHA-256 is the delivery id.
    assert (intake.submitted[0].message.provider_message_id
            == "sha256:" + hashlib.sha256(body).hexdigest())
    bad = await client.post("/webhooks/reviews", data=body,
                            headers={"X-Shopify-Hmac-Sha256": _b64(body, "other")})
    assert bad.status == 403
    app = await client.post("/webhooks/app", data=body,
                            headers={"X-App-Signature": _hex(body)[7:]})
    assert app.status == 200 and intake.submitted[1].message.delivery_scope == "app"


# -- mapping -----------------------------------------------------------------------------------


async def test_every_mapped_field_reaches_the_message(serve: Any) -> None:
    intake = RecordingIntake()
    mapping = {"text": "event.messages[1].text", "subject": "event.topic",
               "name": "event.user.nick", "email": "event.user.emails[0]",
               "phone": "event.user.phone", "chat_id": "event.user.id",
               "locale": "event.lang", "order_number": "event.order",
               "device_model": "event.device", "ticket_number": "event.ref"}
    client = await serve(_adapter(intake, _source(mapping=mapping, idempotency="event.id",
                                                  conversational=True)))
    payload = {"event": {"id": 987654321, "topic": "  Refund  ", "lang": "en",
                         "messages": [{"text": "ignored"}, {"text": "Where is my refund?"}],
                         "user": {"nick": " Ann ", "emails": ["ANN@example.org"],
                                  "phone": "138 0013 8000", "id": 4242},
                         "order": 20240506, "device": "X-200", "ref": "T-1"}}
    body = _body(payload)
    resp = await client.post("/webhooks/reviews", data=body, headers=_signed(body))
    assert resp.status == 200, await resp.text()
    m = intake.submitted[0].message
    assert (m.text, m.subject, m.locale) == ("Where is my refund?", "Refund", "en")
    assert m.contact.name == "Ann" and m.contact.email == "ann@example.org"
    assert m.contact.phone == "+8613800138000" and m.contact.chat_ids == {"reviews": "4242"}
    assert (m.order_number, m.device_model, m.thread.ticket_number) == ("20240506", "X-200",
                                                                        "T-1")
    assert m.provider_message_id == "987654321" and m.conversational


async def test_identities_are_claims_when_the_source_says_so(serve: Any) -> None:
    intake = RecordingIntake()
    client = await serve(_adapter(intake, _source(identities_verified=False)))
    body = _body()
    assert (await client.post("/webhooks/reviews", data=body, headers=_signed(body))).status == 200
    assert intake.submitted[0].message.contact.verified_by is None


@pytest.mark.parametrize("junk", ["*; q=0.5", "en-" + "-".join(["abcdefgh"] * 9), "zh\u00e9"])
async def test_a_junk_locale_is_ignored_not_refused(serve: Any, junk: str) -> None:
    intake = RecordingIntake()
    client = await serve(_adapter(intake, _source(mapping={**MAPPING, "locale": "lang"})))
    body = _body({**PAYLOAD, "lang": junk})
    assert (await client.post("/webhooks/reviews", data=body, headers=_signed(body))).status == 200
    assert intake.submitted[0].message.locale is None


@pytest.mark.parametrize(("payload", "status", "words"), [
    ({"data": {"reviewer": {"email": "a@example.org"}}}, 422, "`data.review.body`"),
    ({"data": {"review": {"body": {"text": "x"}}, "reviewer": {"email": "a@example.org"}}},
     422, "must be a string, not an object"),
    ({"data": {"review": {"body": True}, "reviewer": {"email": "a@example.org"}}},
     422, "not a boolean"),
    ({"data": {"review": {"body": "hi"}, "reviewer": {"name": "Nobody"}}}, 422,
     "no email, phone or chat id"),
    ({"data": {"review": {"body": "hi"}, "reviewer": {"email": "not an address"}}}, 400,
     "email address is not valid"),
    (["a", "list"], 422, "`data.review.body`"),
    (42, 422, "`data.review.body`"),
])
async def test_payloads_that_do_not_fit_the_mapping_are_refused_naming_the_path(
        serve: Any, payload: Any, status: int, words: str) -> None:
    intake = RecordingIntake()
    client = await serve(_adapter(intake, _source()))
    body = _body(payload)
    resp = await client.post("/webhooks/reviews", data=body, headers=_signed(body))
    assert resp.status == status, await resp.text()
    assert words in (await resp.json())["error"]
    assert not intake.submitted


async def test_missing_idempotency_field_and_bad_json_are_refused(serve: Any) -> None:
    intake = RecordingIntake()
    client = await serve(_adapter(intake, _source(idempotency="data.review.uuid")))
    body = _body()
    resp = await client.post("/webhooks/reviews", data=body, headers=_signed(body))
    assert resp.status == 422
    assert (await resp.json())["field"] == "data.review.uuid"
    junk = b'{"data": '
    resp = await client.post("/webhooks/reviews", data=junk, headers=_signed(junk, msg_id="m2"))
    assert resp.status == 400 and "JSON" in (await resp.json())["error"]
    for n, odd in enumerate((b"[" * 100_000 + b"]" * 100_000, b'{"a": 1' + b"0" * 5000 + b"}")):
        resp = await client.post("/webhooks/reviews", data=odd,
                                 headers=_signed(odd, msg_id=f"odd{n}"))
        assert resp.status == 400, await resp.text()
    latin = '{"data": "caf\xe9"}'.encode("latin-1")
    resp = await client.post("/webhooks/reviews", data=latin, headers=_signed(latin, msg_id="m3"))
    assert resp.status == 400
    assert not intake.submitted


# -- body limits -------------------------------------------------------------------------------


async def test_body_over_the_source_limit_is_413_declared_or_streamed(serve: Any) -> None:
    intake = RecordingIntake()
    client = await serve(_adapter(intake, _source(max_body_bytes=300)))
    big = _body({**PAYLOAD, "pad": "x" * 400})
    resp = await client.post("/webhooks/reviews", data=big, headers=_signed(big))
    assert resp.status == 413 and "300" in (await resp.json())["error"]

    async def chunks() -> AsyncIterator[bytes]:
        for i in range(0, len(big), 100):
            yield big[i:i + 100]

    resp = await client.post("/webhooks/reviews", data=chunks(), headers=_signed(big))
    assert resp.status == 413
    assert not intake.submitted
    small = _body()
    assert len(small) < 300
    resp = await client.post("/webhooks/reviews", data=small, headers=_signed(small))
    assert resp.status == 200


async def test_a_declared_length_over_the_limit_is_refused_before_the_body(serve: Any) -> None:
    # The body never comes: only a refusal from the declared length answers at all.
    client = await serve(_adapter(RecordingIntake(), _source(max_body_bytes=300)))
    reader, writer = await asyncio.open_connection(client.server.host, client.server.port)
    writer.write(b"POST /webhooks/reviews HTTP/1.1\r\nHost: x\r\nContent-Type: application/json"
                 b"\r\nContent-Length: 10000000\r\n\r\n{")
    await writer.drain()
    status_line = await asyncio.wait_for(reader.readline(), timeout=10)
    writer.close()
    assert status_line.startswith(b"HTTP/1.1 413"), status_line


async def test_the_gateway_limit_holds_when_a_source_asks_for_more(serve: Any) -> None:
    limits = IntakeLimits(max_text_chars=1000, max_attachments=1, max_attachment_bytes=10,
                          max_body_bytes=200, default_locale="en")
    intake = RecordingIntake(limits=limits)
    client = await serve(_adapter(intake, _source(max_body_bytes=10_000)))
    big = _body({**PAYLOAD, "pad": "x" * 200})
    resp = await client.post("/webhooks/reviews", data=big, headers=_signed(big))
    assert resp.status == 413 and "200" in (await resp.json())["error"]


# -- config ------------------------------------------------------------------------------------


@pytest.mark.parametrize(("sources", "words"), [
    ([_source(signature="hmac-md5")], "hmac-md5' is not a scheme we know; choose one of "
                                      "standard-webhooks, hmac-sha256-hex, hmac-sha256-base64"),
    ([_source(secret_env=None)], "set secret_env or secret_file"),
    ([_source(secret_env="TEST_NOT_SET_ANYWHERE")], "$TEST_NOT_SET_ANYWHERE, which is not set"),
    ([_source(), _source(path="/elsewhere")], "two sources are named 'reviews'"),
    ([_source(), _source(name="other", path="/webhooks/reviews")],
     "'reviews' and 'other' are both served at /webhooks/reviews"),
    ([_source(mapping={"email": "a.b"})], "mapping.text is required"),
    ([_source(mapping={"text": "data..body"})], "mapping.text: 'data..body' is not a path"),
    ([_source(mapping={"text": "items[x]"})], "'items[x]' is not a path"),
    ([_source(idempotency="a[0")], "idempotency: 'a[0' is not a path"),
    ([_source(name="Bad Name")], "sources[0].name: 'Bad Name' must be"),
    ([_source(path="webhooks/x")], "path must start with '/'"),
    ([_source(signature="hmac-sha256-hex", tolerance="5m")], "signs no timestamp"),
    ([_source(signature_header="X-Sig")], "Standard Webhooks has fixed headers"),
    ([_source(tolerance="soon")], "expected a duration"),
    ([_source(secret_env="TEST_PLAIN_SECRET")], "whsec_ followed by base64"),
    ([_source(max_body_bytes=0)], "max_body_bytes must be positive"),
    ([], "has no [[adapters.webhook.sources]]"),
])
def test_config_errors_are_clear(sources: list[dict[str, Any]], words: str) -> None:
    with pytest.raises(ConfigError) as err:
        _adapter(RecordingIntake(), *sources)
    assert words in str(err.value)


def test_example_config_builds_the_adapter(monkeypatch: pytest.MonkeyPatch) -> None:
    # The documented example, uncommented, is a working source: it cannot drift from the code.
    text = (ROOT / "deploy/gateway.example.toml").read_text(encoding="utf-8")
    section = text[text.index("[adapters.webhook]"):]
    uncommented = re.sub(r"(?m)^# (?=\[|[a-z_]+ = )", "", section)
    uncommented = re.sub(r"(?m)^(secret_file|signature_header|signature_prefix|tolerance|"
                         r"mapping) = .*\n", "", uncommented)  # alternatives to other keys
    uncommented = uncommented.replace("enabled = false", "enabled = true")
    monkeypatch.setenv("INTAKE_WEBHOOK_REVIEWS_SECRET", SECRET)
    config = parse_config(uncommented)
    adapter_config = convert_section(config.adapters["webhook"], WebhookConfig,
                                     where="adapters.webhook")
    [source] = adapter_config.sources
    assert source.mapping.ticket_number == "data.reply_to_ticket"
    adapter = WebhookAdapter(adapter_config, RecordingIntake(), context("webhook"))
    assert [s.path for s in adapter.sources] == ["/webhooks/reviews"]


# -- through a real gateway --------------------------------------------------------------------

GATEWAY_TOML = """
[adapters.webhook]
enabled = true
[[adapters.webhook.sources]]
name = "shop"
secret_env = "TEST_WEBHOOK_SECRET"
max_body_bytes = 2048
[adapters.webhook.sources.mapping]
text = "data.review.body"
email = "data.reviewer.email"
"""


async def test_through_a_gateway_a_ticket_with_a_verified_contact(
        make_gateway: MakeGateway, http: aiohttp.ClientSession) -> None:
    gw = await make_gateway(GATEWAY_TOML)
    body = _body()
    headers = _signed(body, msg_id="msg_gw", at=datetime.now(UTC))
    async with http.post(f"{gw.url}/webhooks/shop", data=body, headers=headers) as resp:
        assert resp.status == 200, await resp.text()
        answer = await resp.json()
    assert answer["outcome"] == "created"
    [event] = await read_events(http, gw.url)
    data: Any = event["data"]
    assert event["type"] == "ticket.created" and event["subject"] == answer["ticket_number"]
    assert data["message"]["channel"] == "webhook"
    assert data["message"]["verified_by"] == "webhook:shop"
    assert data["acknowledged_inline"] is True
    big = _body({**PAYLOAD, "pad": "x" * 3000})
    async with http.post(f"{gw.url}/webhooks/shop", data=big,
                         headers=_signed(big, msg_id="msg_big", at=datetime.now(UTC))) as resp:
        assert resp.status == 413


async def test_the_replay_guard_survives_a_restart(make_gateway: MakeGateway,
                                                   http: aiohttp.ClientSession,
                                                   tmp_path: Path) -> None:
    body = _body()
    headers = _signed(body, msg_id="msg_restart", at=datetime.now(UTC))
    first = await make_gateway(GATEWAY_TOML, data_dir=tmp_path / "kept")
    async with http.post(f"{first.url}/webhooks/shop", data=body, headers=headers) as resp:
        assert resp.status == 200
    await first.stop()
    second = await make_gateway(GATEWAY_TOML, data_dir=tmp_path / "kept")
    async with http.post(f"{second.url}/webhooks/shop", data=body, headers=headers) as resp:
        assert resp.status == 409


def test_a_bad_source_stops_the_gateway_at_start(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="is not a scheme we know"):
        Gateway(parse_config(GATEWAY_TOML.replace('name = "shop"',
                                                  'name = "shop"\nsignature = "rsa"')),
                tmp_path, listen="127.0.0.1:0")


# -- the integrator's guide --------------------------------------------------------------------


def test_the_adapter_declares_what_the_contract_asks() -> None:
    check_adapter(WebhookAdapter)


def test_the_guides_excerpts_are_the_real_code() -> None:
    """Every code block of docs/integrators.md headed ``<!-- excerpt: FILE -->`` is in FILE."""
    guide = (ROOT / "docs/integrators.md").read_text(encoding="utf-8")
    excerpts = re.findall(r"<!-- excerpt: (\S+) -->\n```[a-z]*\n(.*?)```", guide, re.S)
    assert len(excerpts) >= 3, "the guide's excerpts are not marked"
    for path, code in excerpts:
        source = (ROOT / path).read_text(encoding="utf-8")
        assert code in source, f"docs/integrators.md quotes {path}, which no longer says:\n{code}"
