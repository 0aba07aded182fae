"""App notifications of the chat: FCM HTTP v1 against a local FCM, and the signed push webhook.

The app speaks the chat's HTTP protocol (no Origin header, a site with ``allow_apps``), registers
its device, and gets acknowledgements and replies as notifications.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import time
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from gateway.runtime import Gateway
from gateway.testing.drivers_webchat import SITE, webchat_toml
from gateway.testing.fakes.fcm import FakeFcm
from gateway.testing.webhook_receiver import WebhookReceiver
from intake_adapters.webchat import WebchatAdapter
from intake_adapters.webchat.push import FcmSender
from tests.conftest import MakeGateway

PROJECT = "demo-project"
PUSH_SECRET = "whsec_" + base64.b64encode(b"webchat-push-signing-key-32bytes").decode()
os.environ["INTAKE_TEST_WEBCHAT_PUSH"] = PUSH_SECRET


async def until(check: Callable[[], Any], timeout: float = 10.0) -> Any:
    deadline = time.monotonic() + timeout
    while not (result := check()):
        if time.monotonic() > deadline:
            raise AssertionError("timed out")
        await asyncio.sleep(0.02)
    return result


class App:
    """A mobile app: one session, HTTP only."""

    def __init__(self, http: aiohttp.ClientSession, gw: Gateway) -> None:
        self.http, self.gw, self.token, self.sid = http, gw, "", ""

    async def open(self, **fields: Any) -> App:
        async with self.http.post(f"{self.gw.url}/webchat/v1/sessions",
                                  json={"site": SITE, "locale": "en", **fields}) as r:
            assert r.status == 200, await r.text()
            body = await r.json()
        self.token, self.sid = body["token"], body["session_id"]
        return self

    async def call(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        async with self.http.request(method, f"{self.gw.url}/webchat/v1/{path}", json=body,
                                     headers={"Authorization": f"Bearer {self.token}"}) as r:
            return r.status, await r.json()

    async def say(self, text: str) -> dict[str, Any]:
        status, body = await self.call("POST", "messages",
                                       {"client_id": uuid.uuid4().hex, "text": text})
        assert status == 200, body
        return dict(body["entry"])


def adapter_of(gw: Gateway) -> WebchatAdapter:
    return next(a for a in gw.adapters if isinstance(a, WebchatAdapter))


@pytest.fixture
async def fcm() -> AsyncIterator[FakeFcm]:
    async with FakeFcm(PROJECT) as fake:
        yield fake


@pytest.fixture
async def receiver() -> AsyncIterator[WebhookReceiver]:
    async with WebhookReceiver(PUSH_SECRET) as r:
        yield r


@pytest.fixture
async def gw(make_gateway: MakeGateway, fcm: FakeFcm, receiver: WebhookReceiver,
             tmp_path: Path) -> Gateway:
    creds = fcm.write_service_account(tmp_path / "service-account.json")
    push = ("[adapters.webchat.push]\n"
            f'fcm_project_id = "{PROJECT}"\nfcm_credentials_file = "{creds}"\n'
            f'fcm_api_base = "{fcm.url}"\n'
            f'webhook_url = "{receiver.url("/push")}"\n'
            'webhook_secret_env = "INTAKE_TEST_WEBCHAT_PUSH"\n')
    # No forward by email or SMS (the default mailer is enabled): the push webhook's fallback.
    return await make_gateway(webchat_toml(
        extra='reply_fallback_delay = "1s"\nreply_fallback = []\n') + push)


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


async def test_fcm_device_gets_the_ack_and_the_reply(gw: Gateway, fcm: FakeFcm,
                                                     http: aiohttp.ClientSession) -> None:
    fcm.register("device-token-1")
    app = await App(http, gw).open()
    status, _ = await app.call("POST", "devices", {"kind": "fcm", "token": "device-token-1"})
    assert status == 200
    entry = await app.say("My order 7781 has not arrived.")
    await until(lambda: fcm.sent)
    ack = fcm.sent[0].message
    assert ack["token"] == "device-token-1"
    assert ack["notification"] == {"title": "We have your message", "body": entry["ack"]}
    assert ack["data"] == {"type": "webchat.ack", "seq": "1",
                           "ticket_number": entry["ticket_number"]}
    result = await adapter_of(gw).deliver_reply(f"{SITE}:s:{app.sid}", "It ships today.",
                                                reply_id="r1")
    assert result.status == "queued" and result.pushed == 1
    reply = fcm.sent[1].message
    assert reply["data"]["type"] == "webchat.reply"
    assert reply["notification"]["body"] == "It ships today."
    assert fcm.tokens_issued == 1  # the access token is kept until it expires


async def test_unregistered_token_is_dropped_and_outage_loses_nothing(
        gw: Gateway, fcm: FakeFcm, http: aiohttp.ClientSession) -> None:
    app = await App(http, gw).open()
    await app.call("POST", "devices", {"kind": "fcm", "token": "uninstalled-app"})
    adapter = adapter_of(gw)
    result = await adapter.deliver_reply(f"{SITE}:s:{app.sid}", "Hello?", reply_id="r1")
    assert result.pushed == 0
    conv = await adapter.convs.get(app.sid)
    assert conv is not None and conv.record.devices == []
    fcm.register("device-2")
    await app.call("POST", "devices", {"kind": "fcm", "token": "device-2"})
    fcm.fail_next(503)
    result = await adapter.deliver_reply(f"{SITE}:s:{app.sid}", "Still there?", reply_id="r2")
    assert result.pushed == 0 and fcm.sent == []
    status, body = await app.call("GET", "messages?after=0")
    assert status == 200
    assert [e["text"] for e in body["entries"]] == ["Hello?", "Still there?"]


async def test_webhook_device_and_the_fallback_are_signed(
        gw: Gateway, receiver: WebhookReceiver, http: aiohttp.ClientSession) -> None:
    app = await App(http, gw).open(email="li@example.com")
    await app.call("POST", "devices", {"kind": "webhook", "token": "ios:abc123"})
    entry = await app.say("Can I change my delivery address?")
    await until(lambda: receiver.deliveries)
    ack = json.loads(receiver.deliveries[0].body)
    assert ack["type"] == "webchat.ack"
    assert ack["data"]["device"] == "ios:abc123" and ack["data"]["body"] == entry["ack"]
    await adapter_of(gw).deliver_reply(f"{SITE}:s:{app.sid}", "Yes, until noon.",
                                       reply_id="w1", ticket_number=entry["ticket_number"])
    # The reply is pushed at once; unseen after reply_fallback_delay it goes to the operator's
    # push service as a fallback to the visitor's email (reply_fallback = [] here).
    await until(lambda: len(receiver.deliveries) >= 3)
    kinds = [json.loads(d.body)["type"] for d in receiver.deliveries]
    assert kinds == ["webchat.ack", "webchat.reply", "webchat.reply.fallback"]
    fallback = json.loads(receiver.deliveries[2].body)["data"]
    assert fallback["email"] == "li@example.com" and fallback["reply_id"] == "w1"
    assert fallback["ticket_number"] == entry["ticket_number"]


async def test_registering_an_unconfigured_push_kind_is_refused(
        make_gateway: MakeGateway, http: aiohttp.ClientSession) -> None:
    gw = await make_gateway(webchat_toml())
    app = await App(http, gw).open()
    for kind in ("fcm", "webhook"):
        status, body = await app.call("POST", "devices", {"kind": kind, "token": "t"})
        assert status == 400 and body["field"] == "kind"
    status, _ = await app.call("POST", "devices", {"kind": "apns", "token": "t"})
    assert status == 400


async def test_fake_fcm_refuses_what_fcm_refuses(fcm: FakeFcm,
                                                 http: aiohttp.ClientSession) -> None:
    sender = FcmSender(PROJECT, fcm.service_account(), fcm.url)
    good = sender.assertion(time.time())
    grant = "urn:ietf:params:oauth:grant-type:jwt-bearer"
    stranger = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    forged = FcmSender(PROJECT, fcm.service_account(), fcm.url)
    forged.key = stranger
    for form, status in (({"grant_type": grant, "assertion": good}, 200),
                         ({"grant_type": grant, "assertion": forged.assertion(time.time())}, 400),
                         ({"grant_type": grant, "assertion": sender.assertion(0)}, 400),
                         ({"grant_type": "password", "assertion": good}, 400)):
        async with http.post(fcm.token_uri, data=form) as r:
            assert r.status == status, form
    async with http.post(f"{fcm.url}/v1/projects/{PROJECT}/messages:send",
                         json={"message": {"token": "x"}},
                         headers={"Authorization": "Bearer nope"}) as r:
        assert r.status == 401
        assert (await r.json())["error"]["status"] == "UNAUTHENTICATED"
