"""Events fit every broker (issue 9, item 1): words inline up to a budget, the rest by reference.

A mail answered 250 with a 1.6 MB HTML part used to make an event over NATS's 1 MiB limit.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os

import aiohttp
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.inline import cut_utf8, fit_inline
from gateway.testing.drivers_mail import smtp_transaction
from gateway.testing.harness import read_events
from intake_adapters.mail import SmtpAdapter
from tests.conftest import MakeGateway

SUPPORT = "support@example.com"
TOKEN = "event-size-token-0123456789"
os.environ["INTAKE_EVENT_SIZE_TOKEN"] = TOKEN


def _bytes(*parts: str | None) -> int:
    return sum(len(p.encode("utf-8", "surrogatepass")) for p in parts if p)


@settings(max_examples=300, deadline=None)
@given(subject=st.text(max_size=2000), text=st.text(max_size=3000),
       html=st.none() | st.text(max_size=3000),
       metadata=st.dictionaries(st.text(max_size=150), st.text(max_size=1500), max_size=60),
       budget=st.integers(min_value=3000, max_value=20_000))
def test_what_an_event_carries_fits_its_budget(subject: str, text: str, html: str | None,
                                               metadata: dict[str, str], budget: int) -> None:
    got = fit_inline(subject=subject, text=text, html=html, metadata=metadata, budget=budget)
    size = _bytes(got.subject, got.text, got.html, *got.metadata, *got.metadata.values())
    assert size <= budget or not got.text
    assert text.startswith(got.text) and subject.startswith(got.subject)
    assert got.html in (html, None)
    whole = (got.subject == subject and got.text == text and got.html == html
             and got.metadata == metadata)
    assert got.truncated == (not whole), "truncated says exactly whether anything was cut"


@given(st.text(max_size=500), st.integers(min_value=0, max_value=600))
def test_cut_utf8_never_splits_a_character(s: str, limit: int) -> None:
    cut = cut_utf8(s, limit)
    assert s.startswith(cut) and len(cut.encode("utf-8", "surrogatepass")) <= max(limit, 0)


def _big_mail(html: str, attachment: bytes) -> bytes:
    body = base64.encodebytes(html.encode()).decode().replace("\n", "\r\n")
    att = base64.encodebytes(attachment).decode().replace("\n", "\r\n")
    return (f"From: big@customers.example.org\r\nTo: {SUPPORT}\r\nSubject: Newsletter reply\r\n"
            "Message-ID: <big-1@customers.example.org>\r\nMIME-Version: 1.0\r\n"
            'Content-Type: multipart/mixed; boundary="b"\r\n\r\n'
            '--b\r\nContent-Type: multipart/alternative; boundary="a"\r\n\r\n'
            "--a\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n"
            "Our router keeps dropping the connection every evening.\r\n"
            "--a\r\nContent-Type: text/html; charset=utf-8\r\n"
            f"Content-Transfer-Encoding: base64\r\n\r\n{body}\r\n--a--\r\n"
            "--b\r\nContent-Type: application/pdf\r\n"
            'Content-Disposition: attachment; filename="invoice.pdf"\r\n'
            f"Content-Transfer-Encoding: base64\r\n\r\n{att}\r\n--b--\r\n").encode()


async def test_a_huge_html_mail_makes_an_event_every_broker_takes(
        make_gateway: MakeGateway) -> None:
    gw = await make_gateway(
        '[server]\nevents_token_env = "INTAKE_EVENT_SIZE_TOKEN"\n'
        f'[adapters.smtp]\nlisten = "127.0.0.1:0"\naccept = ["{SUPPORT}"]\n'
        "[adapters.mailer]\nenabled = false\n")
    paragraph = "<p>Our router keeps dropping the connection every evening.</p>\n"
    html = paragraph * (1_600_000 // len(paragraph))
    pdf = os.urandom(200_000)
    port = next(a for a in gw.adapters if isinstance(a, SmtpAdapter)).port
    reply = await asyncio.to_thread(smtp_transaction, port, sender="big@customers.example.org",
                                    recipients=[SUPPORT], data=_big_mail(html, pdf))
    assert reply.code == 250, reply
    auth = {"Authorization": f"Bearer {TOKEN}"}
    async with aiohttp.ClientSession() as s:
        async with s.get(f"{gw.url}/v1/events", headers=auth) as resp:
            raw = await resp.read()
        events = await read_events(s, gw.url, token=TOKEN)
        assert len(raw) < 1_048_576 // 4, "an event well under the smallest broker's limit"
        message = events[0]["data"]["message"]
        assert message["truncated"] is True and "html" not in message
        url = message["body_url"]
        assert url == f"{gw.url}/v1/messages/{message['id']}"
        async with s.get(url) as resp:
            assert resp.status == 401, "the events token guards what events refer to"
        async with s.get(url, headers=auth) as resp:
            assert resp.status == 200
            whole = await resp.json()
        assert len(whole["html"]) > 1_000_000 and "dropping the connection" in whole["html"]
        (att,) = message["attachments"]
        assert att["sha256"] == hashlib.sha256(pdf).hexdigest()
        async with s.get(f"{url}/attachments/{att['sha256']}", headers=auth) as resp:
            assert resp.status == 200 and await resp.read() == pdf
        async with s.get(f"{url}/attachments/{'0' * 64}", headers=auth) as resp:
            assert resp.status == 404
        async with s.get(f"{gw.url}/v1/messages/not-an-id", headers=auth) as resp:
            assert resp.status == 400
