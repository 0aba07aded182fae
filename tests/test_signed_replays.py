"""Replays of signed requests are refused durably, across a restart on the same data dir.

WeChat plain mode signs the query (token, timestamp, nonce), never the body, so a captured
query, a push's or the GET verification's, must not carry another body. The signed API signs
``timestamp.body``: a byte-identical request is accepted once; a retry is signed afresh.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

import aiohttp
import pytest

from gateway.config import parse_config
from gateway.runtime import Gateway
from gateway.testing.fakes import FakeWeChat
from gateway.testing.harness import read_events
from intake_adapters.api import sign_request
from tests.conftest import MakeGateway

WX_TOKEN = "wechat-replay-token"
API_SECRET = "api-replay-secret"
os.environ["INTAKE_REPLAY_WX"] = WX_TOKEN
os.environ["INTAKE_REPLAY_API"] = API_SECRET
os.environ["INTAKE_REPLAY_EVENTS"] = "events-replay-token"

WECHAT = '[adapters.wechat]\nenabled = true\ntoken_env = "INTAKE_REPLAY_WX"\n'
API = '[adapters.api]\nsecret_env = "INTAKE_REPLAY_API"\n'


async def event_types(gw: Gateway) -> list[str]:
    async with aiohttp.ClientSession() as s:
        return [str(e["type"]) for e in await read_events(s, gw.url)]


def text(content: str, msg_id: int) -> dict[str, str | int]:
    return {"MsgType": "text", "Content": content, "MsgId": msg_id}


# -- WeChat -------------------------------------------------------------------------------------


async def test_wechat_verification_query_reused_as_a_push_is_refused(
        make_gateway: MakeGateway) -> None:
    gw = await make_gateway(WECHAT)
    url = f"{gw.url}/wechat"
    async with FakeWeChat(WX_TOKEN) as wechat:
        verified = await wechat.verify_url(url)
        assert verified.status == 200
        q = verified.query
        forged = await wechat.push(url, text("Close my account", 7001),
                                   timestamp=q["timestamp"], nonce=q["nonce"])
        assert forged.status == 403
        assert b"already used" in forged.body
        # The handshake itself may be repeated (same query, same echostr): it reveals nothing.
        again = await wechat.verify_url(url, echostr=verified.echostr)
        assert again.status == 200
    assert await event_types(gw) == []


async def test_wechat_replay_guard_survives_a_restart(make_gateway: MakeGateway,
                                                      tmp_path: Path) -> None:
    data = tmp_path / "wechat"
    gw = await make_gateway(WECHAT, data_dir=data)
    async with FakeWeChat(WX_TOKEN) as wechat:
        first = await wechat.push(f"{gw.url}/wechat", text("Where is my parcel?", 7101))
        assert first.status == 200
        verified = await wechat.verify_url(f"{gw.url}/wechat")
        assert verified.status == 200
        await gw.stop()
        gw = await make_gateway(WECHAT, data_dir=data)
        url = f"{gw.url}/wechat"
        q = first.query
        forged = await wechat.push(url, text("Refund to another card", 7102),
                                   timestamp=q["timestamp"], nonce=q["nonce"])
        assert forged.status == 403
        v = verified.query
        from_get = await wechat.push(url, text("Change my phone number", 7103),
                                     timestamp=v["timestamp"], nonce=v["nonce"])
        assert from_get.status == 403
        # WeChat's own retry of the first push (same query, same body) is still answered.
        retry = await wechat.push(url, first.sent, timestamp=q["timestamp"], nonce=q["nonce"])
        assert retry.status == 200
    assert await event_types(gw) == ["ticket.created"]


async def test_plain_mode_off_loopback_warns_once_at_start(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    config = parse_config(f'[server]\nevents_token_env = "INTAKE_REPLAY_EVENTS"\n{API}{WECHAT}')
    gw = Gateway(config, tmp_path / "open", listen="0.0.0.0:0")
    with caplog.at_level(logging.WARNING, logger="intake.wechat"):
        await gw.start()
        await gw.stop()
    warnings = [r for r in caplog.records if r.name == "intake.wechat" and "plain" in r.message]
    assert len(warnings) == 1 and 'mode = "safe"' in warnings[0].getMessage()
    assert WX_TOKEN not in warnings[0].getMessage()


async def test_plain_mode_on_loopback_does_not_warn(
        make_gateway: MakeGateway, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="intake.wechat"):
        await make_gateway(WECHAT)
    assert not [r for r in caplog.records if r.name == "intake.wechat"]


# -- the signed API -----------------------------------------------------------------------------


def signed(body: bytes, ts: int, key: str) -> dict[str, str]:
    t = str(ts)
    return {"Content-Type": "application/json", "X-Intake-Timestamp": t,
            "X-Intake-Signature": sign_request(API_SECRET, t, body), "Idempotency-Key": key}


async def test_signed_api_request_is_accepted_once_even_across_a_restart(
        make_gateway: MakeGateway, tmp_path: Path) -> None:
    data = tmp_path / "api"
    gw = await make_gateway(API, data_dir=data)
    body = b'{"contact": {"email": "li@example.org"}, "text": "Invoice 4411 is wrong"}'
    now = int(time.time())
    first = signed(body, now - 20, "inv-4411")
    async with aiohttp.ClientSession() as s:
        async with s.post(f"{gw.url}/v1/messages", data=body, headers=first) as r:
            assert r.status == 201
        async with s.post(f"{gw.url}/v1/messages", data=body, headers=first) as r:
            assert r.status == 409
            reason = (await r.json())["error"]
            assert "afresh" in reason and "Idempotency-Key" in reason
        await gw.stop()
        gw = await make_gateway(API, data_dir=data)
        async with s.post(f"{gw.url}/v1/messages", data=body, headers=first) as r:
            assert r.status == 409, "the replay guard was empty after the restart"
        # A retry signed afresh with the same Idempotency-Key is the client's own retry.
        async with s.post(f"{gw.url}/v1/messages", data=body,
                          headers=signed(body, now - 10, "inv-4411")) as r:
            assert r.status == 200
            assert (await r.json())["outcome"] == "replayed"
    assert await event_types(gw) == ["ticket.created"]
