"""Voice mail through Twilio: the call's TwiML, recording and transcription callbacks, SMS ack."""

from __future__ import annotations

import asyncio
import os
import time
import xml.etree.ElementTree as ET
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from gateway.runtime import Gateway
from gateway.testing.fakes import FakeTwilio
from gateway.testing.harness import outbox_settled, read_events
from tests.conftest import MakeGateway

SID = "AC" + "7b" * 16
TOKEN = "twilio-voice-test-token"
OURS = "+14155550100"
MOBILE = "+8613912345678"
LANDLINE = "+861012345678"
AUDIO = b"RIFF\x24\x08\x00\x00WAVEfmt " + bytes(range(256)) * 16
os.environ["INTAKE_TEST_TWILIO_VOICE_TOKEN"] = TOKEN

_calls = iter(range(10**6))


def toml(fake: FakeTwilio, wait: str = "1m") -> str:
    return ("[adapters.twilio]\nenabled = true\n"
            f'account_sid = "{SID}"\nauth_token_env = "INTAKE_TEST_TWILIO_VOICE_TOKEN"\n'
            f'sms_from = "{OURS}"\napi_base_url = "{fake.url}"\n'
            # The fake serves media over http: allowed explicitly, as only that origin.
            f'media_hosts = ["{fake.url}"]\n'
            f'transcription_wait = "{wait}"\n')


@pytest.fixture
async def twilio() -> AsyncIterator[FakeTwilio]:
    async with FakeTwilio(SID, TOKEN) as fake:
        yield fake


@pytest.fixture
async def gw(make_gateway: MakeGateway, twilio: FakeTwilio) -> Gateway:
    return await make_gateway(toml(twilio))


class Call:
    """One call's callbacks, with the parameters Twilio sends in each."""

    def __init__(self, fake: FakeTwilio, gw: Gateway, caller: str = MOBILE) -> None:
        self.fake, self.gw = fake, gw
        self.sid = f"CA{next(_calls):032x}"
        self.recording_url = fake.add_media(AUDIO, "audio/x-wav")
        self.common = {"AccountSid": SID, "CallSid": self.sid, "From": caller, "To": OURS,
                       "Caller": caller, "Called": OURS, "ApiVersion": "2010-04-01"}

    async def incoming(self) -> Any:
        return await self.fake.post_webhook(f"{self.gw.url}/twilio/voice",
                                            {**self.common, "CallStatus": "ringing",
                                             "Direction": "inbound"})

    async def recording(self, duration: str = "14") -> Any:
        return await self.fake.post_webhook(f"{self.gw.url}/twilio/voice/recording", {
            **self.common, "RecordingUrl": self.recording_url, "RecordingSid": "RE" + "1" * 32,
            "RecordingDuration": duration, "Digits": "hangup"})

    async def transcription(self, text: str = "", status: str = "completed") -> Any:
        return await self.fake.post_webhook(f"{self.gw.url}/twilio/voice/transcription", {
            **self.common, "RecordingUrl": self.recording_url, "RecordingSid": "RE" + "1" * 32,
            "TranscriptionSid": "TR" + "2" * 32, "TranscriptionText": text,
            "TranscriptionStatus": status, "TranscriptionType": "fast",
            "TranscriptionUrl": f"{self.fake.url}/2010-04-01/Accounts/{SID}/Transcriptions/TR1",
            "url": "/twilio/voice/transcription"})


async def events(gw: Gateway) -> list[dict[str, Any]]:
    async with aiohttp.ClientSession() as s:
        return await read_events(s, gw.url)


async def wait_events(gw: Gateway, count: int, timeout: float = 10.0) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout
    while True:
        got = await events(gw)
        if len(got) >= count or time.monotonic() > deadline:
            return got
        await asyncio.sleep(0.05)


def created(got: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [e for e in got if e["type"] == "ticket.created"]


async def test_the_call_is_invited_to_leave_a_transcribed_message(
        gw: Gateway, twilio: FakeTwilio) -> None:
    got = await Call(twilio, gw).incoming()
    assert got.status == 200 and got.content_type == "text/xml"
    root = ET.fromstring(got.body)
    say, record = root.find("Say"), root.find("Record")
    assert say is not None and say.get("language") == "zh-CN" and "留言" in (say.text or "")
    assert record is not None and record.get("transcribe") == "true"
    assert record.get("action") == f"{gw.url}/twilio/voice/recording"
    assert record.get("transcribeCallback") == f"{gw.url}/twilio/voice/transcription"
    assert record.get("maxLength") == "120"
    assert root.find("Hangup") is not None


async def test_recording_then_transcription_make_one_ticket_acknowledged_by_sms(
        gw: Gateway, twilio: FakeTwilio) -> None:
    call = Call(twilio, gw)
    await call.incoming()
    rec = await call.recording()
    assert rec.status == 200 and b"<Hangup" in rec.body
    assert await events(gw) == [], "the ticket waits for the transcription"
    text = "Hello, my internet has been down since this morning, please call me back."
    assert (await call.transcription(text)).status == 200
    got = await wait_events(gw, 2)
    assert [e["type"] for e in got] == ["ticket.created", "ack.sent"]
    message = got[0]["data"]["message"]
    assert message["text"] == text
    [audio] = message["attachments"]
    assert audio["content_type"] == "audio/x-wav" and audio["size"] == len(AUDIO)
    assert gw.attachments.path_of(audio["sha256"]).read_bytes() == AUDIO
    assert message["metadata"]["twilio.channel"] == "voice"
    assert message["metadata"]["twilio.call_sid"] == call.sid
    assert got[0]["data"]["contact"]["phone"] == MOBILE
    assert got[0]["data"].get("acknowledged_inline", False) is False
    [sms] = twilio.messages
    assert sms.to == MOBILE and got[0]["subject"] in sms.body


async def test_either_order_and_repeated_callbacks_make_one_ticket(
        gw: Gateway, twilio: FakeTwilio) -> None:
    call = Call(twilio, gw)
    await call.transcription("The bill is wrong, I was charged twice.")
    await call.recording()
    await call.transcription("The bill is wrong, I was charged twice.")
    await call.recording()
    other = Call(twilio, gw, caller="+8613912345679")
    await asyncio.gather(other.recording(), other.transcription("Router is broken."),
                         other.recording(), other.transcription("Router is broken."))
    got = await wait_events(gw, 4)
    tickets = created(got)
    assert len(tickets) == 2
    assert {t["data"]["message"]["text"] for t in tickets} == {
        "The bill is wrong, I was charged twice.", "Router is broken."}
    assert all(len(t["data"]["message"]["attachments"]) == 1 for t in tickets)
    assert [e["type"] for e in got].count("ticket.message_added") == 0
    assert len(twilio.messages) == 2


async def test_failed_transcription_makes_the_ticket_with_the_recording(
        gw: Gateway, twilio: FakeTwilio) -> None:
    call = Call(twilio, gw)
    await call.recording(duration="42")
    await call.transcription(status="failed")
    [ticket] = created(await wait_events(gw, 1))
    message = ticket["data"]["message"]
    assert "Voice mail of 42 s" in message["text"] and "attached" in message["text"]
    assert message["metadata"]["twilio.transcription"] == "failed"
    assert len(message["attachments"]) == 1


async def test_a_missing_transcription_does_not_hold_the_ticket_and_a_late_one_joins_it(
        make_gateway: MakeGateway, twilio: FakeTwilio) -> None:
    gw = await make_gateway(toml(twilio, wait="1s"))
    call = Call(twilio, gw)
    started = time.monotonic()
    await call.recording()
    [ticket] = created(await wait_events(gw, 1))
    assert 0.9 < time.monotonic() - started < 5
    assert ticket["data"]["message"]["metadata"]["twilio.transcription"] == "pending"
    await call.transcription("Please also send the invoice by email.")
    await call.transcription("Please also send the invoice by email.")
    got = await wait_events(gw, 3)
    added = [e for e in got if e["type"] == "ticket.message_added"]
    assert len(added) == 1 and added[0]["subject"] == ticket["subject"]
    assert added[0]["data"]["message"]["text"] == "Please also send the invoice by email."
    assert added[0]["data"]["matched_by"] == "ticket_number"


async def test_voice_mail_waiting_for_its_transcription_is_submitted_after_a_restart(
        make_gateway: MakeGateway, twilio: FakeTwilio, tmp_path: Path) -> None:
    data = tmp_path / "gw"
    gw = await make_gateway(toml(twilio, wait="2s"), data_dir=data)
    call = Call(twilio, gw)
    assert (await call.recording()).status == 200
    await gw.stop()  # before the transcription wait is over: no ticket yet
    gw = await make_gateway(toml(twilio, wait="2s"), data_dir=data)
    [ticket] = created(await wait_events(gw, 1))
    assert ticket["data"]["message"]["metadata"]["twilio.call_sid"] == call.sid
    assert ticket["data"]["message"]["metadata"]["twilio.transcription"] == "pending"


async def test_callers_who_cannot_get_an_sms_still_make_tickets(
        gw: Gateway, twilio: FakeTwilio) -> None:
    for caller in ("client:joey_ramone", LANDLINE, ""):
        call = Call(twilio, gw, caller=caller)
        await call.recording()
        await call.transcription("Something is wrong with my meter.")
    got = await wait_events(gw, 3)
    assert len(created(got)) == 3
    contacts = [e["data"]["contact"] for e in created(got)]
    assert contacts[0]["chat_ids"] == {"twilio_client": "joey_ramone"}
    assert contacts[1]["phone"] == LANDLINE
    assert list(contacts[2]["chat_ids"]) == ["twilio_call"]
    # Nobody heard a ticket number, so no event may claim an inline acknowledgement.
    assert [e["data"].get("acknowledged_inline", False) for e in created(got)] == [False] * 3
    await outbox_settled(gw)
    assert twilio.messages == [], "no SMS to a client identity, a landline or a withheld number"


async def test_a_hang_up_before_the_beep_makes_no_ticket(gw: Gateway, twilio: FakeTwilio) -> None:
    call = Call(twilio, gw)
    got = await twilio.post_webhook(f"{gw.url}/twilio/voice/recording",
                                    {**call.common, "RecordingDuration": "0"})
    assert got.status == 200
    await asyncio.sleep(0.2)
    assert await events(gw) == []


async def test_unsigned_voice_callbacks_are_refused(gw: Gateway, twilio: FakeTwilio) -> None:
    call = Call(twilio, gw)
    for path, extra in (("voice", {}), ("voice/recording", {"RecordingUrl": call.recording_url}),
                        ("voice/transcription", {"TranscriptionText": "refund me",
                                                 "TranscriptionStatus": "completed",
                                                 "RecordingUrl": call.recording_url})):
        got = await twilio.post_webhook(f"{gw.url}/twilio/{path}", {**call.common, **extra},
                                        signature="forged")
        assert got.status == 403, path
    no_sid = {k: v for k, v in call.common.items() if k != "CallSid"}
    assert (await twilio.post_webhook(f"{gw.url}/twilio/voice", no_sid)).status == 400
    await asyncio.sleep(0.2)
    assert await events(gw) == []
    assert twilio.downloads == []
