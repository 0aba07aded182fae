"""Providers can be hostile too: media URLs, redirects, file paths and sizes are input.

The Twilio and Telegram fakes serve what a hostile (or broken) provider would: a redirect to
another local port standing for loopback or a cloud metadata address, an absolute or ``..``
``file_path``, a body with no declared size past the limit, a body cut short. None of them may
become a stored attachment with the wrong content; each leaves a "not stored: …" note.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from gateway.runtime import Gateway
from gateway.testing.fakes import FakeServer, FakeTelegram, FakeTwilio
from gateway.testing.harness import read_events
from tests.conftest import MakeGateway

SID = "AC" + "7b" * 16
TW_TOKEN = "twilio-hostile-token"
TG_TOKEN = "555000222:telegram-hostile-token"
TG_SECRET = "telegram-hostile-secret"
OURS = "+14155550100"
LIMIT = 200_000
os.environ["INTAKE_HOSTILE_TW"] = TW_TOKEN
os.environ["INTAKE_HOSTILE_TG"] = TG_TOKEN
os.environ["INTAKE_HOSTILE_TG_SECRET"] = TG_SECRET

_n = iter(range(1, 10**6))


class Metadata(FakeServer):
    """Another local port: what a redirect to 127.0.0.1 or 169.254.169.254 would reach."""

    def __init__(self) -> None:
        super().__init__()
        self.hits = 0

    def build_app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/{tail:.*}", self._serve)
        return app

    async def _serve(self, request: web.Request) -> web.Response:
        self.hits += 1
        return web.Response(body=b"AWS_SECRET_ACCESS_KEY=do-not-store", content_type="image/png")


@pytest.fixture
async def twilio() -> AsyncIterator[FakeTwilio]:
    async with FakeTwilio(SID, TW_TOKEN) as fake:
        yield fake


@pytest.fixture
async def telegram() -> AsyncIterator[FakeTelegram]:
    async with FakeTelegram(TG_TOKEN) as fake:
        yield fake


def twilio_toml(fake: FakeTwilio, *, hosts: bool = True) -> str:
    return ("[adapters.twilio]\nenabled = true\n"
            f'account_sid = "{SID}"\nauth_token_env = "INTAKE_HOSTILE_TW"\n'
            f'sms_from = "{OURS}"\napi_base_url = "{fake.url}"\n'
            f"media_max_bytes = {LIMIT}\n"
            + (f'media_hosts = ["{fake.url}"]\n' if hosts else ""))


async def created(gw: Gateway, count: int, timeout: float = 10.0) -> list[dict[str, Any]]:
    """The messages of the first ``count`` tickets created, waiting for them."""
    deadline = time.monotonic() + timeout
    async with aiohttp.ClientSession() as s:
        while True:
            got = [e["data"]["message"] for e in await read_events(s, gw.url)
                   if e["type"] == "ticket.created"]
            if len(got) >= count or time.monotonic() > deadline:
                return got
            await asyncio.sleep(0.05)


async def mms(fake: FakeTwilio, gw: Gateway, media_url: str, ctype: str = "image/png") -> int:
    sid = f"MM{next(_n):032x}"
    got = await fake.post_webhook(f"{gw.url}/twilio/sms", {
        "MessageSid": sid, "AccountSid": SID, "From": f"+86139{next(_n):08d}", "To": OURS,
        "Body": f"photo {sid}", "NumMedia": "1", "MediaUrl0": media_url,
        "MediaContentType0": ctype})
    return got.status


def stored(gw: Gateway, message: dict[str, Any]) -> list[bytes]:
    return [gw.attachments.path_of(a["sha256"]).read_bytes()
            for a in message.get("attachments", [])]


# -- Twilio -------------------------------------------------------------------------------------


async def test_twilio_redirect_to_another_local_port_is_not_followed(
        make_gateway: MakeGateway, twilio: FakeTwilio) -> None:
    async with Metadata() as metadata:
        gw = await make_gateway(twilio_toml(twilio))
        url = twilio.add_media(b"unused", "image/png",
                               redirect_to=f"{metadata.url}/latest/meta-data/")
        assert await mms(twilio, gw, url) == 200
        [msg] = await created(gw, 1)
        assert msg.get("attachments", []) == []
        assert "media_hosts" in msg["metadata"]["twilio.media0"]
        assert msg["metadata"]["twilio.media0"].startswith("not stored: ")
        assert metadata.hits == 0, "the redirect off the media hosts was followed"


async def test_twilio_media_over_http_is_never_allowed_implicitly(
        make_gateway: MakeGateway, twilio: FakeTwilio) -> None:
    gw = await make_gateway(twilio_toml(twilio, hosts=False))
    assert await mms(twilio, gw, twilio.add_media(b"\x89PNG fine", "image/png")) == 200
    [msg] = await created(gw, 1)
    assert msg.get("attachments", []) == [] and "media_hosts" in msg["metadata"]["twilio.media0"]
    assert twilio.downloads == [], "nothing is requested from a host not on the list"


async def test_twilio_media_without_a_size_past_the_limit_is_refused_not_cut(
        make_gateway: MakeGateway, twilio: FakeTwilio) -> None:
    gw = await make_gateway(twilio_toml(twilio))
    big = os.urandom(LIMIT + 50_000)
    assert await mms(twilio, gw, twilio.add_media(big, "image/png", delivery="chunked")) == 200
    [msg] = await created(gw, 1)
    assert msg.get("attachments", []) == []
    assert msg["metadata"]["twilio.media0"] == f"not stored: larger than {LIMIT} bytes"


async def test_twilio_media_cut_short_is_not_stored_as_whole(
        make_gateway: MakeGateway, twilio: FakeTwilio) -> None:
    gw = await make_gateway(twilio_toml(twilio))
    assert await mms(twilio, gw, twilio.add_media(os.urandom(120_000), "image/png",
                                                  delivery="short")) == 200
    [msg] = await created(gw, 1)
    assert msg.get("attachments", []) == []
    assert msg["metadata"]["twilio.media0"].startswith("not stored: ")


async def test_twilio_streamed_media_within_the_limit_is_stored_whole(
        make_gateway: MakeGateway, twilio: FakeTwilio) -> None:
    # Once cut at the first ~100 KB the stream happened to hold, and stored as if whole.
    gw = await make_gateway(twilio_toml(twilio))
    data = os.urandom(LIMIT - 10)
    assert await mms(twilio, gw, twilio.add_media(data, "image/png", delivery="chunked")) == 200
    [msg] = await created(gw, 1)
    [att] = msg["attachments"]
    assert att["size"] == len(data) and att["sha256"] == hashlib.sha256(data).hexdigest()
    assert stored(gw, msg) == [data]


# -- Telegram -----------------------------------------------------------------------------------


def telegram_toml(fake: FakeTelegram) -> str:
    return ("[adapters.telegram]\nenabled = true\n"
            'token_env = "INTAKE_HOSTILE_TG"\nsecret_token_env = "INTAKE_HOSTILE_TG_SECRET"\n'
            f'api_base_url = "{fake.url}"\nregister_webhook = false\n'
            f"max_file_bytes = {LIMIT}\n")


async def send_document(fake: FakeTelegram, gw: Gateway, file_id: str,
                        size: int | None = None) -> int:
    chat = 9000 + next(_n)
    document: dict[str, Any] = {"file_id": file_id, "file_unique_id": file_id,
                                "file_name": "report.pdf", "mime_type": "application/pdf"}
    if size is not None:
        document["file_size"] = size
    update = {"update_id": next(_n), "message": {
        "message_id": next(_n), "date": int(time.time()),
        "chat": {"id": chat, "type": "private"},
        "from": {"id": chat, "is_bot": False, "first_name": "Mei"},
        "caption": f"the file {file_id}", "document": document}}
    status, _ = await fake.deliver(update, url=f"{gw.url}/telegram/webhook",
                                   secret_token=TG_SECRET)
    return status


@pytest.mark.parametrize("path", [
    "/etc/passwd", "/proc/self/environ", "OWN_DATABASE", "../../../../etc/passwd",
    "documents/../../../etc/passwd", "file:///etc/passwd", "http://169.254.169.254/latest",
    "documents\\..\\..\\etc\\passwd", "documents//file_9.pdf",
])
async def test_telegram_file_path_naming_a_local_or_other_file_is_refused(
        make_gateway: MakeGateway, telegram: FakeTelegram, tmp_path: Path, path: str) -> None:
    gw = await make_gateway(telegram_toml(telegram), data_dir=tmp_path / "gw")
    if path == "OWN_DATABASE":
        path = str(next((tmp_path / "gw").rglob("*.sqlite3")))
    local = Path(path).read_bytes() if path.startswith("/") else None
    telegram.add_file("doc", b"%PDF- what the Bot API serves", path)
    assert await send_document(telegram, gw, "doc") == 200
    [msg] = await created(gw, 1)
    assert msg.get("attachments", []) == [], f"{path!r} became an attachment"
    assert msg["metadata"]["telegram.document"].startswith("not stored: ")
    if local is not None:
        assert not any(local[:64] in blob for blob in stored(gw, msg))


async def test_telegram_relative_path_is_fetched_from_the_bot_api_not_the_disk(
        make_gateway: MakeGateway, telegram: FakeTelegram) -> None:
    # "pyproject.toml" exists in the working directory: the library would read it from disk.
    gw = await make_gateway(telegram_toml(telegram))
    served = b"%PDF-1.4 served by the Bot API"
    telegram.add_file("doc", served, "pyproject.toml")
    assert await send_document(telegram, gw, "doc") == 200
    [msg] = await created(gw, 1)
    assert stored(gw, msg) == [served]


async def test_telegram_file_without_a_size_past_the_limit_is_refused_not_cut(
        make_gateway: MakeGateway, telegram: FakeTelegram) -> None:
    gw = await make_gateway(telegram_toml(telegram))
    telegram.add_file("big", os.urandom(LIMIT + 50_000), "documents/file_1.pdf",
                      delivery="chunked", file_size=-1)
    assert await send_document(telegram, gw, "big") == 200
    [msg] = await created(gw, 1)
    assert msg.get("attachments", []) == []
    assert msg["metadata"]["telegram.document"] == f"not stored: larger than {LIMIT} bytes"


async def test_telegram_file_cut_short_is_not_stored_as_whole(
        make_gateway: MakeGateway, telegram: FakeTelegram) -> None:
    gw = await make_gateway(telegram_toml(telegram))
    telegram.add_file("short", os.urandom(120_000), "documents/file_2.pdf", delivery="short")
    assert await send_document(telegram, gw, "short") == 200
    [msg] = await created(gw, 1)
    assert msg.get("attachments", []) == []
    assert msg["metadata"]["telegram.document"].startswith("not stored: ")


async def test_telegram_streamed_file_within_the_limit_is_stored_whole(
        make_gateway: MakeGateway, telegram: FakeTelegram) -> None:
    gw = await make_gateway(telegram_toml(telegram))
    data = os.urandom(LIMIT - 10)
    telegram.add_file("ok", data, "documents/file_3.pdf", delivery="chunked", file_size=-1)
    assert await send_document(telegram, gw, "ok") == 200
    [msg] = await created(gw, 1)
    assert stored(gw, msg) == [data]
