"""Nothing is dropped silently (issue 9, item 8): a file that did not reach us is named in the
acknowledgement, with why and what to do, on every channel that takes files."""

from __future__ import annotations

import asyncio
import base64
import os

import aiohttp

from gateway.testing.drivers_mail import smtp_transaction
from gateway.testing.fakes import FakeTwilio
from gateway.testing.harness import read_events
from gateway.testing.smtp_capture import SmtpCapture
from intake_adapters.mail import SmtpAdapter
from tests.conftest import MakeGateway

SUPPORT = "support@example.com"
SID = "AC" + "6b" * 16
TOKEN = "twilio-files-token"
os.environ["INTAKE_FILES_TWILIO_TOKEN"] = TOKEN


def _mail_with(files: dict[str, bytes]) -> bytes:
    parts = "".join(
        f"--b\r\nContent-Type: application/octet-stream\r\n"
        f'Content-Disposition: attachment; filename="{name}"\r\n'
        f"Content-Transfer-Encoding: base64\r\n\r\n"
        f"{base64.encodebytes(data).decode().replace(chr(10), chr(13) + chr(10))}\r\n"
        for name, data in files.items())
    return ("From: li@customers.example.org\r\nTo: support@example.com\r\n"
            "Subject: Photos of the damage\r\nMessage-ID: <files-1@customers.example.org>\r\n"
            'MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary="b"\r\n\r\n'
            "--b\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n"
            "The parcel arrived crushed, photos attached.\r\n"
            f"{parts}--b--\r\n").encode()


async def test_a_mail_attachment_over_the_limit_is_named_in_the_acknowledgement(
        make_gateway: MakeGateway) -> None:
    with SmtpCapture() as capture:
        gw = await make_gateway(
            '[intake]\ndefault_locale = "en"\nmax_attachment_bytes = 100000\n'
            f'[adapters.smtp]\nlisten = "127.0.0.1:0"\naccept = ["{SUPPORT}"]\n'
            f'[adapters.mailer]\nport = {capture.port}\nfrom_address = "{SUPPORT}"\n')
        port = next(a for a in gw.adapters if isinstance(a, SmtpAdapter)).port
        mail = _mail_with({"small.jpg": b"j" * 2000, "video.mp4": os.urandom(300_000)})
        reply = await asyncio.to_thread(smtp_transaction, port, sender="li@customers.example.org",
                                        recipients=[SUPPORT], data=mail)
        assert reply.code == 250, reply
        ack = await capture.wait_for(lambda m: "li@customers.example.org" in m.rcpt_tos)
        body = ack.message.get_body(("plain",))
        assert body is not None
        text = body.get_content()
    assert "video.mp4" in text and "did not reach us" in text and "larger than" in text
    assert "small.jpg" not in text
    async with aiohttp.ClientSession() as s:
        [created] = [e for e in await read_events(s, gw.url) if e["type"] == "ticket.created"]
    message = created["data"]["message"]
    assert [a["name"] for a in message["attachments"]] == ["small.jpg"]
    assert message["files_not_kept"] == [
        {"name": "video.mp4", "reason": "too_large", "limit": 100000}]


async def test_an_mms_whose_media_was_refused_says_so_in_the_reply(
        make_gateway: MakeGateway) -> None:
    async with FakeTwilio(SID, TOKEN) as fake:
        gw = await make_gateway(
            '[intake]\ndefault_locale = "en"\n[adapters.twilio]\nenabled = true\n'
            f'account_sid = "{SID}"\nauth_token_env = "INTAKE_FILES_TWILIO_TOKEN"\n'
            f'sms_from = "+14155550100"\napi_base_url = "{fake.url}"\n'
            f'media_hosts = ["{fake.url}"]\nmedia_max_bytes = 1000\n')
        big = fake.add_media(b"\xff\xd8" + b"0" * 5000, "image/jpeg")
        sid = "MM" + "1" * 32
        got = await fake.post_webhook(f"{gw.url}/twilio/sms", {
            "MessageSid": sid, "SmsSid": sid, "AccountSid": SID, "From": "+8613912345678",
            "To": "+14155550100", "Body": "Photo of the broken screen", "NumMedia": "1",
            "MediaUrl0": big, "MediaContentType0": "image/jpeg"})
    assert got.status == 200
    reply = got.body.decode()
    assert "media0" in reply and "did not reach us" in reply, reply
