"""Malformed input to the signed channels is a 4xx with a reason, never a 500.

Sent as raw bytes through the real listener: aiohttp keeps header bytes that are not UTF-8 as
surrogates, which raise when encoded, and nobody needs a credential to send them. After each
request the gateway must keep serving.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import AsyncIterator

import pytest

from gateway.runtime import Gateway
from gateway.testing.fakes import FakeTelegram, FakeTwilio
from tests.conftest import MakeGateway

SID = "AC" + "3c" * 16
os.environ["INTAKE_BAD_TW"] = "twilio-malformed-token"
os.environ["INTAKE_BAD_TG"] = "555000333:telegram-malformed-token"
os.environ["INTAKE_BAD_TG_SECRET"] = "telegram-malformed-secret"
os.environ["INTAKE_BAD_WX"] = "wechat-malformed-token"
os.environ["INTAKE_BAD_API"] = "api-malformed-secret"

FORM = {"Content-Type": b"application/x-www-form-urlencoded"}
JSON = {"Content-Type": b"application/json"}
SMS = b"From=%2B8613912345678&Body=hi&MessageSid=SM" + b"1" * 32
BODY = b'{"contact": {"email": "x@example.org"}, "text": "hi"}'
NOW = str(int(time.time())).encode()

# name: (method, path and query, headers, body)
CASES: dict[str, tuple[bytes, bytes, dict[str, bytes], bytes]] = {
    "twilio signature not UTF-8": (
        b"POST", b"/twilio/sms", {**FORM, "X-Twilio-Signature": b"\xff\xfe=="}, SMS),
    "twilio JSON with bodySHA256= inside another parameter": (
        b"POST", b"/twilio/sms?note=xbodySHA256=1", {**JSON, "X-Twilio-Signature": b"abc="},
        b"{}"),
    "twilio JSON signature not UTF-8": (
        b"POST", b"/twilio/sms?bodySHA256=00", {**JSON, "X-Twilio-Signature": b"\xff"}, b"{}"),
    "twilio forwarded host not UTF-8": (
        b"POST", b"/twilio/sms", {**FORM, "X-Forwarded-Host": b"support\xff.example",
                                  "X-Twilio-Signature": b"abc="}, SMS),
    "twilio forwarded host with port 99999": (
        b"POST", b"/twilio/sms", {**FORM, "X-Forwarded-Host": b"support.example:99999",
                                  "X-Twilio-Signature": b"abc="}, SMS),
    "twilio voice signature not UTF-8": (
        b"POST", b"/twilio/voice", {**FORM, "X-Twilio-Signature": b"\xc3"}, b"CallSid=CA1"),
    "telegram secret token not UTF-8": (
        b"POST", b"/telegram/webhook", {**JSON, "X-Telegram-Bot-Api-Secret-Token": b"\xff"},
        b"{}"),
    "api signature not UTF-8": (
        b"POST", b"/v1/messages", {**JSON, "X-Intake-Timestamp": NOW,
                                   "X-Intake-Signature": b"sha256=\xff"}, BODY),
    "api timestamp not UTF-8": (
        b"POST", b"/v1/messages", {**JSON, "X-Intake-Timestamp": b"\xff",
                                   "X-Intake-Signature": b"sha256=00"}, BODY),
    "api timestamp of 400 digits": (
        b"POST", b"/v1/messages", {**JSON, "X-Intake-Timestamp": b"1" + b"0" * 400,
                                   "X-Intake-Signature": b"sha256=00"}, BODY),
    "api timestamp in other digits": (
        b"POST", b"/v1/messages", {**JSON, "X-Intake-Timestamp": "١٧٠٠٠٠٠٠٠٠".encode(),
                                   "X-Intake-Signature": b"sha256=00"}, BODY),
    "wechat query %FF": (
        b"GET", b"/wechat?signature=%FF&timestamp=%FF&nonce=%FF&echostr=%FF", {}, b""),
    "wechat push with a timestamp of 400 digits": (
        b"POST", b"/wechat?signature=00&timestamp=1" + b"0" * 400 + b"&nonce=1", JSON, b"{}"),
    "wechat raw bytes in the query": (
        b"GET", b"/wechat?signature=\xff&timestamp=\xff&nonce=\xff&echostr=1", {}, b""),
}


@pytest.fixture
async def gw(make_gateway: MakeGateway) -> AsyncIterator[Gateway]:
    async with FakeTwilio(SID, "twilio-malformed-token") as tw, \
            FakeTelegram("555000333:telegram-malformed-token") as tg:
        yield await make_gateway(
            '[server]\nevents_token_env = "INTAKE_BAD_API"\n'
            '[adapters.api]\nsecret_env = "INTAKE_BAD_API"\n'
            f'[adapters.twilio]\nenabled = true\naccount_sid = "{SID}"\n'
            f'auth_token_env = "INTAKE_BAD_TW"\nsms_from = "+14155550100"\n'
            f'api_base_url = "{tw.url}"\n'
            '[adapters.telegram]\nenabled = true\ntoken_env = "INTAKE_BAD_TG"\n'
            'secret_token_env = "INTAKE_BAD_TG_SECRET"\nregister_webhook = false\n'
            f'api_base_url = "{tg.url}"\n'
            '[adapters.wechat]\nenabled = true\ntoken_env = "INTAKE_BAD_WX"\n')


async def send(gw: Gateway, method: bytes, target: bytes, headers: dict[str, bytes],
               body: bytes) -> tuple[int, bytes]:
    """One HTTP/1.1 request written byte for byte; returns the status and the body."""
    host, port = gw.url.removeprefix("http://").rsplit(":", 1)
    reader, writer = await asyncio.open_connection(host, int(port))
    lines = [method + b" " + target + b" HTTP/1.1", b"Host: " + host.encode(),
             b"Connection: close", b"Content-Length: " + str(len(body)).encode()]
    lines += [name.encode() + b": " + value for name, value in headers.items()]
    writer.write(b"\r\n".join(lines) + b"\r\n\r\n" + body)
    await writer.drain()
    answer = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    head, _, content = answer.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), content


@pytest.mark.parametrize("name", list(CASES))
async def test_malformed_signed_input_is_a_4xx_and_the_gateway_keeps_serving(
        gw: Gateway, name: str) -> None:
    status, body = await send(gw, *CASES[name])
    assert 400 <= status < 500, (status, body)
    if body.startswith(b"{"):
        assert json.loads(body)["error"], "a 4xx says why"
    status, _ = await send(gw, b"GET", b"/healthz", {}, b"")
    assert status == 200


async def test_accept_language_not_utf8_is_ignored_not_a_500(gateway: Gateway) -> None:
    # The unsigned API on loopback: the header is only a locale hint.
    status, body = await send(gateway, b"POST", b"/v1/messages",
                              {**JSON, "Accept-Language": b"\xff\xfe, en;q=0.5"}, BODY)
    assert status == 201, body
