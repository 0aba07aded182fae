"""An agent's reply the visitor did not see in the chat goes to the email or phone they gave in
this session's pre-chat: queued through ``Intake.forward_reply`` as a reply on that channel,
once, and sent by the real mailer to the SMTP capture (or by the twilio adapter to the Twilio
fake). Real gateway (SQLite store), the chat's real HTTP API, the signed reply endpoint.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from gateway.errors import NotFound, RejectedInput
from gateway.runtime import Gateway
from gateway.testing.drivers_webchat import webchat_toml
from gateway.testing.fakes import FakeTwilio
from gateway.testing.postgres import postgres_database, postgres_dsn
from gateway.testing.smtp_capture import CapturedMail, SmtpCapture
from intake_adapters.webchat.session import identity_signature
from tests.conftest import MakeGateway
from tests.test_replies import events, post_reply, replies_settled, wait_event
from tests.test_replies_twilio import toml as twilio_toml
from tests.test_webchat import IDENTITY_SECRET, ORIGIN, Visitor, adapter_of, open_session

__all__ = ["postgres_database", "postgres_dsn"]

SITE_NAME = "Example Shop"
SUPPORT = "support@example.com"


def chat_toml(delay: str = "1s", extra: str = "") -> str:
    table = webchat_toml(extra=f'reply_fallback_delay = "{delay}"\n' + extra,
                         site_extra=f'name = "{SITE_NAME}"\n'
                         'identity_secret_env = "INTAKE_TEST_WEBCHAT_IDENTITY"\n')
    return ('[intake]\nchat_followup_window = "10m"\n'
            + table.replace('allowed_origins = ["http://127.0.0.1"]',
                            f'allowed_origins = ["{ORIGIN}"]'))


def mailer_toml(capture: SmtpCapture) -> str:
    return f'[adapters.mailer]\nport = {capture.port}\nfrom_address = "{SUPPORT}"\n'


@pytest.fixture
def capture() -> Iterator[SmtpCapture]:
    with SmtpCapture() as cap:
        yield cap


@pytest.fixture
async def twilio() -> AsyncIterator[FakeTwilio]:
    from tests.test_replies_twilio import SID, TOKEN

    async with FakeTwilio(SID, TOKEN) as fake:
        yield fake


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


@pytest.fixture
async def gw(make_gateway: MakeGateway, capture: SmtpCapture) -> Gateway:
    return await make_gateway(chat_toml() + mailer_toml(capture))


async def ticket_of(v: Visitor, text: str) -> tuple[str, int]:
    """The visitor writes over HTTP and leaves (no socket): the ticket and the entry's seq."""
    status, body = await v.post(text)
    assert status == 200, body
    return body["entry"]["ticket_number"], body["entry"]["seq"]


async def reply(gw: Gateway, number: str, text: str, key: str) -> str:
    status, body = await post_reply(gw, number, {"text": text}, key=key)
    assert status == 202 and body["channel"] == "webchat", body
    await wait_event(gw, "reply.sent", reply_id=body["reply_id"])
    return str(body["reply_id"])


async def mail_to(capture: SmtpCapture, address: str) -> CapturedMail:
    return await capture.wait_for(lambda m: address in m.rcpt_tos, timeout=15)


async def forwarded(gw: Gateway, chat_reply_id: str) -> list[dict[str, Any]]:
    """The ``reply.queued`` events of the forward of one chat reply."""
    mine = [e for e in await events(gw) if e["type"] == "reply.queued"
            and str(e["data"]["chosen_because"]).startswith("chat_unseen_")]
    return [e for e in mine if e["data"]["reply_id"] != chat_reply_id]


async def test_an_unseen_reply_reaches_the_email_given_in_the_chat_once(
        gw: Gateway, capture: SmtpCapture, http: aiohttp.ClientSession) -> None:
    v = await open_session(http, gw, email="Li.Wei@Example.com", locale="en")
    number, _ = await ticket_of(v, "My parcel has not arrived.")
    chat_id = await reply(gw, number, "It arrives tomorrow before noon.", key="fb-1")

    mail = await mail_to(capture, "li.wei@example.com")
    assert number in mail.subject
    assert "It arrives tomorrow before noon." in mail.text() and number in mail.text()
    assert f"This address was given in the chat on {SITE_NAME}" in mail.text()
    assert "My parcel has not arrived." not in mail.text(), "no history in the forward"
    queued = await wait_event(gw, "reply.queued", chosen_because="chat_unseen_email")
    assert queued["subject"] == number and queued["data"]["channel"] == "email"
    sent = await wait_event(gw, "reply.sent", reply_id=queued["data"]["reply_id"])
    assert sent["data"]["channel"] == "email"
    assert sent["data"]["provider_message_id"] == mail.message_id
    await replies_settled(gw)
    assert len(capture.to("li.wei@example.com")) == 1
    assert [e["data"]["reply_id"] for e in await forwarded(gw, chat_id)] == [
        queued["data"]["reply_id"]]
    # The claimed address never became an identity: the ticket's contact has only the chat.
    created = next(e for e in await events(gw) if e["type"] == "ticket.created")
    assert "email" not in created["data"]["contact"]


async def test_the_email_a_site_signed_gets_the_reply_without_the_claim_line(
        gw: Gateway, capture: SmtpCapture, http: aiohttp.ClientSession) -> None:
    sig = identity_signature(IDENTITY_SECRET.encode(), "user-9", "signed@example.com")
    v = await open_session(http, gw, locale="en", identity={
        "user_id": "user-9", "email": "signed@example.com", "signature": sig})
    number, _ = await ticket_of(v, "Signed in and away.")
    await reply(gw, number, "Your order ships today.", key="signed")
    mail = await mail_to(capture, "signed@example.com")
    assert "Your order ships today." in mail.text() and number in mail.text()
    assert "given in the chat" not in mail.text()


async def test_a_visitor_who_saw_the_reply_or_gave_no_address_gets_nothing(
        gw: Gateway, capture: SmtpCapture, http: aiohttp.ClientSession) -> None:
    adapter = adapter_of(gw)
    online = await open_session(http, gw, email="online@example.com")
    await online.connect()
    number_online = (await online.say("Connected question."))["ticket_number"]
    back = await open_session(http, gw, email="back@example.com")
    number_back, seq = await ticket_of(back, "I will come back.")
    nobody = await open_session(http, gw)
    number_nobody, _ = await ticket_of(nobody, "No address given.")
    sentinel = await open_session(http, gw, email="sentinel@example.com")
    number_sentinel, _ = await ticket_of(sentinel, "Last one.")

    await reply(gw, number_online, "Live answer.", key="online")
    await reply(gw, number_back, "Answer you will catch up on.", key="back")
    assert await adapter.ctx.state.get(f"f/{back.sid}/{seq + 1}") is not None
    entries = await back.history(after=seq)  # caught up before the delay
    assert [e["text"] for e in entries] == ["Answer you will catch up on."]
    assert await adapter.ctx.state.get(f"f/{back.sid}/{seq + 1}") is None, \
        "seeing a reply deletes its pending fallback"
    await reply(gw, number_nobody, "Answer to nobody's address.", key="nobody")
    await reply(gw, number_sentinel, "Sentinel answer.", key="sentinel")

    # The sentinel's fallback fires after every other one's time: then nothing else was sent.
    await mail_to(capture, "sentinel@example.com")
    await replies_settled(gw)
    assert [m.rcpt_tos for m in capture.messages] == [["sentinel@example.com"]]
    kinds = [e["data"]["chosen_because"] for e in await events(gw) if e["type"] == "reply.queued"]
    assert kinds.count("chat_unseen_email") == 1


async def test_a_fallback_seen_by_another_replica_does_not_fire(
        gw: Gateway, capture: SmtpCapture, http: aiohttp.ClientSession) -> None:
    """Another replica that served the catch-up deletes the shared key; this process, which
    never saw the visitor again, must then not send."""
    adapter = adapter_of(gw)
    v = await open_session(http, gw, email="elsewhere@example.com")
    number, seq = await ticket_of(v, "Seen on another replica.")
    sentinel = await open_session(http, gw, email="sentinel@example.com")
    number_sentinel, _ = await ticket_of(sentinel, "Sentinel.")
    await reply(gw, number, "Read elsewhere.", key="elsewhere")
    await adapter.ctx.state.delete(f"f/{v.sid}/{seq + 1}")  # what that replica's catch-up does
    await reply(gw, number_sentinel, "Sentinel answer.", key="sentinel")
    await mail_to(capture, "sentinel@example.com")
    await replies_settled(gw)
    assert capture.to("elsewhere@example.com") == []


async def test_only_a_phone_given_goes_by_sms(
        make_gateway: MakeGateway, twilio: FakeTwilio, http: aiohttp.ClientSession) -> None:
    gw = await make_gateway(chat_toml() + twilio_toml(twilio, replies="quiet_hours = false"))
    v = await open_session(http, gw, phone="13912345678", locale="zh-CN")
    number, _ = await ticket_of(v, "请回电话。")
    await reply(gw, number, "我们已经给您回电。", key="sms-1")
    queued = await wait_event(gw, "reply.queued", chosen_because="chat_unseen_sms", timeout=15)
    assert queued["data"]["channel"] == "sms"
    await wait_event(gw, "reply.sent", reply_id=queued["data"]["reply_id"])
    [sms] = [m for m in twilio.messages if m.to == "+8613912345678"]
    assert "我们已经给您回电。" in sms.body and number in sms.body
    assert f"此地址是在 {SITE_NAME} 的在线客服中填写的" in sms.body


async def test_a_pending_fallback_survives_a_restart_and_mails_once(
        make_gateway: MakeGateway, capture: SmtpCapture, tmp_path: Path,
        http: aiohttp.ClientSession) -> None:
    config = chat_toml(delay="3s") + mailer_toml(capture)
    gw = await make_gateway(config, data_dir=tmp_path / "gw")
    v = await open_session(http, gw, email="restart@example.com")
    number, _ = await ticket_of(v, "Before the restart.")
    await reply(gw, number, "After the restart.", key="restart")
    await gw.stop()  # before the fallback is due
    assert capture.messages == []

    gw2 = await make_gateway(config, data_dir=tmp_path / "gw")
    mail = await mail_to(capture, "restart@example.com")
    assert "After the restart." in mail.text()
    await replies_settled(gw2)
    assert len(capture.to("restart@example.com")) == 1


async def test_the_same_key_twice_queues_one_reply(
        gw: Gateway, capture: SmtpCapture, http: aiohttp.ClientSession) -> None:
    v = await open_session(http, gw)
    number, _ = await ticket_of(v, "Twice?")
    args: dict[str, Any] = dict(ticket_number=number, text="Once.", channel="email",
                                to="twice@example.com", key="webchat-fallback:r-x",
                                locale="en", because="chat_unseen_email")
    ids = await asyncio.gather(*(gw.intake.forward_reply(**args) for _ in range(2)))
    assert ids[0] == ids[1] == await gw.intake.forward_reply(**args)
    await mail_to(capture, "twice@example.com")
    await replies_settled(gw)
    assert len(capture.to("twice@example.com")) == 1
    queued = [e for e in await events(gw) if e["type"] == "reply.queued"
              and e["data"]["reply_id"] == ids[0]]
    assert len(queued) == 1

    for bad, field in (({"channel": "telegram"}, "channel"), ({"to": "not an address"}, "to"),
                       ({"channel": "sms", "to": "+86"}, "channel"),
                       ({"text": "   ", "key": "other"}, "text")):
        with pytest.raises(RejectedInput) as err:
            await gw.intake.forward_reply(**(args | bad))
        assert err.value.field == field, bad
    with pytest.raises(NotFound):
        await gw.intake.forward_reply(**(args | {"ticket_number": "not-a-ticket"}))


async def test_a_fallback_that_fires_again_after_a_crash_mails_once(
        make_gateway: MakeGateway, capture: SmtpCapture, tmp_path: Path,
        http: aiohttp.ClientSession) -> None:
    """A process that queued the forward and died before deleting its key: the next one fires
    the same fallback again, and the reply's key (``webchat-fallback:<reply id>``) queues
    nothing the second time. (Two replicas firing together are the same case.)"""
    config = chat_toml() + mailer_toml(capture)
    gw = await make_gateway(config, data_dir=tmp_path / "gw")
    v = await open_session(http, gw, email="crash@example.com")
    number, seq = await ticket_of(v, "Before the crash.")
    await reply(gw, number, "Sent before the crash.", key="crash")
    await mail_to(capture, "crash@example.com")
    key = f"f/{v.sid}/{seq + 1}"
    state = adapter_of(gw).ctx.state
    await _until_gone(state, key)
    await state.put(key, repr(time.time()).encode())  # as it was before the delete
    await gw.stop()

    gw2 = await make_gateway(config, data_dir=tmp_path / "gw")
    await _until_gone(adapter_of(gw2).ctx.state, key)  # fired again, then deleted
    await replies_settled(gw2)
    assert len(capture.to("crash@example.com")) == 1
    kinds = [e["data"]["chosen_because"] for e in await events(gw2) if e["type"] == "reply.queued"]
    assert kinds.count("chat_unseen_email") == 1


async def _until_gone(state: Any, key: str, timeout: float = 10.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while await state.get(key) is not None:
        assert loop.time() < deadline, f"{key} still pending"
        await asyncio.sleep(0.02)


# -- two replicas on PostgreSQL ---------------------------------------------------------------


@pytest.fixture
def replica_toml(postgres_dsn: str, monkeypatch: pytest.MonkeyPatch) -> str:
    from gateway.store.postgres import migrate

    migrate(postgres_dsn)
    monkeypatch.setenv("INTAKE_TEST_WEBCHAT_FALLBACK_PG_DSN", postgres_dsn)
    return '[store]\nbackend = "postgres"\ndsn_env = "INTAKE_TEST_WEBCHAT_FALLBACK_PG_DSN"\n'


async def test_two_replicas_mail_once_and_a_catch_up_on_either_stops_it(
        make_gateway: MakeGateway, capture: SmtpCapture, replica_toml: str,
        http: aiohttp.ClientSession) -> None:
    config = replica_toml + chat_toml() + mailer_toml(capture)
    a, b = await make_gateway(config), await make_gateway(config)
    away, last = (f"{uuid.uuid4().hex[:8]}@example.com" for _ in range(2))
    here = await open_session(http, a, email=away)
    number, seq = await ticket_of(here, "Seen on the other replica.")
    sentinel = await open_session(http, a, email=last)
    number_sentinel, _ = await ticket_of(sentinel, "Sentinel.")
    site = adapter_of(a).config.sites[0].key
    # Delivered by replica a (its timer), caught up through replica b.
    await adapter_of(a).deliver_reply(f"{site}:s:{here.sid}", "Read on b.", reply_id="pg-1",
                                      ticket_number=number)
    entries = await Visitor(http, b, here.token, here.sid).history(after=seq)
    assert [e["text"] for e in entries] == ["Read on b."]
    await adapter_of(a).deliver_reply(f"{site}:s:{sentinel.sid}", "Sentinel answer.",
                                      reply_id="pg-2", ticket_number=number_sentinel)
    await capture.wait_for(lambda m: m.rcpt_tos == [last], timeout=15)
    # Both replicas fire the same forward at once: one row, one mail.
    args: dict[str, Any] = dict(ticket_number=number_sentinel, text="Sentinel answer.",
                                channel="email", to=last,
                                key="webchat-fallback:pg-2", locale="zh-CN",
                                because="chat_unseen_email")
    ids = await asyncio.gather(a.intake.forward_reply(**args), b.intake.forward_reply(**args))
    assert ids[0] == ids[1]
    await replies_settled(a)
    await replies_settled(b)
    assert [m.rcpt_tos for m in capture.messages] == [[last]], "nothing to the one who read b"
    assert capture.to(away) == []
