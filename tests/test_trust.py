"""Trust at the front door (issue 8, items 1 to 3), through the real listeners.

A reference, a delivery key and a typed address are all chosen by the sender. None of them may
lead a stranger into another customer's ticket, reveal its number, or change that customer's
contact. Each test here failed on b7fad44 (the attack worked) and passes now.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from gateway.runtime import Gateway
from gateway.testing.drivers import first_number
from gateway.testing.drivers_mail import SmtpReply, customer_mail, smtp_transaction
from gateway.testing.fakes import FakeTelegram
from gateway.testing.harness import read_events
from gateway.testing.smtp_capture import SmtpCapture
from intake_adapters.api import sign_request
from intake_adapters.mail import SmtpAdapter
from tests.conftest import MakeGateway

SUPPORT = "support@example.com"
TG_TOKEN = "555000222:trust-test-token"
TG_SECRET = "trust-webhook-secret_1"
API_SECRET = "trust-api-secret-0123456789"
os.environ["INTAKE_TRUST_TG_TOKEN"] = TG_TOKEN
os.environ["INTAKE_TRUST_TG_SECRET"] = TG_SECRET
os.environ["INTAKE_TRUST_API_SECRET"] = API_SECRET


def smtp_toml(*, mailer_port: int | None = None) -> str:
    mailer = (f'[adapters.mailer]\nport = {mailer_port}\nfrom_address = "{SUPPORT}"\n'
              if mailer_port else "[adapters.mailer]\nenabled = false\n")
    return (f'[intake]\ndefault_locale = "en"\n[adapters.smtp]\nlisten = "127.0.0.1:0"\n'
            f'accept = ["{SUPPORT}"]\n{mailer}')


async def mail(gw: Gateway, *, sender: str, text: str, subject: str = "Help",
               message_id: str | None = None, headers: dict[str, str] | None = None,
               name: str | None = None) -> SmtpReply:
    port = next(a for a in gw.adapters if isinstance(a, SmtpAdapter)).port
    data = customer_mail(sender=f"{name} <{sender}>" if name else sender, subject=subject,
                         text=text,
                         message_id=message_id or f"{uuid.uuid4().hex}@mail.example.org",
                         headers=headers)
    return await asyncio.to_thread(smtp_transaction, port, sender=sender, recipients=[SUPPORT],
                                   data=data)


async def events(gw: Gateway) -> list[dict[str, Any]]:
    async with aiohttp.ClientSession() as s:
        return await read_events(s, gw.url, token=gw.events_token)


def tickets(evs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [e for e in evs if str(e["type"]).startswith("ticket.")]


async def wait_for_event(gw: Gateway, type_: str, *, timeout: float = 10.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        found = [e for e in await events(gw) if e["type"] == type_]
        if found:
            return found[-1]
        assert time.monotonic() < deadline, f"no {type_} event"
        await asyncio.sleep(0.05)


async def form_post(http: aiohttp.ClientSession, gw: Gateway, **fields: str) -> tuple[int, str]:
    data = aiohttp.FormData()
    for name, value in {"lang": "en", "form_token": uuid.uuid4().hex, **fields}.items():
        data.add_field(name, value)
    async with http.post(f"{gw.url}/form", data=data) as resp:
        return resp.status, await resp.text()


async def api_post(http: aiohttp.ClientSession, gw: Gateway, body: dict[str, Any], *,
                   key: str | None = None, secret: str | None = None) -> tuple[int, dict]:
    raw = json.dumps(body).encode()
    headers = {"Content-Type": "application/json"}
    if key:
        headers["Idempotency-Key"] = key
    if secret:
        ts = str(int(time.time()))
        headers.update({"X-Intake-Timestamp": ts,
                        "X-Intake-Signature": sign_request(secret, ts, raw)})
    async with http.post(f"{gw.url}/v1/messages", data=raw, headers=headers) as resp:
        return resp.status, await resp.json()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


# -- 1. A reference proves nothing about who sent it --------------------------------------


async def test_a_guessable_reference_from_a_stranger_opens_a_new_ticket(
        make_gateway: MakeGateway, http: aiohttp.ClientSession) -> None:
    async with FakeTelegram(TG_TOKEN) as fake:
        gw = await make_gateway(
            smtp_toml() + '[adapters.telegram]\nenabled = true\n'
            'token_env = "INTAKE_TRUST_TG_TOKEN"\nsecret_token_env = "INTAKE_TRUST_TG_SECRET"\n'
            f'api_base_url = "{fake.url}"\n')
        update = {"update_id": 9001, "message": {
            "message_id": 31, "date": int(time.time()),
            "chat": {"id": 777002, "type": "private", "first_name": "Mei"},
            "from": {"id": 777002, "is_bot": False, "first_name": "Mei"},
            "text": "My bank card was charged twice for one order"}}
        status, _ = await fake.deliver(update, url=f"{gw.url}/telegram/webhook",
                                       secret_token=TG_SECRET)
        assert status == 200
        sent = await wait_for_event(gw, "ack.sent")
        victim_number = sent["subject"]
        ref = sent["data"]["provider_message_id"]
        assert ref and ref.startswith("telegram:777002:")

        # The stored id is built from a chat id and a counter: anyone can write it.
        reply = await mail(gw, sender="mallory@attacker.example", text="Refund it to me",
                           headers={"In-Reply-To": f"<{ref}>", "References": f"<{ref}>"})
        assert reply.code == 250, reply
        assert victim_number not in reply.text
        assert reply.ticket is not None and reply.ticket[1] == "created"

        status, body = await api_post(http, gw, {"contact": {"email": "eve@attacker.example"},
                                                 "text": "Me too", "in_reply_to": ref})
        assert status == 201 and body["ticket_number"] != victim_number

    found = tickets(await events(gw))
    assert [e["type"] for e in found] == ["ticket.created"] * 3
    assert [e["data"].get("hinted_tickets") for e in found[1:]] == [[victim_number]] * 2


async def test_our_random_message_id_joins_whoever_quotes_it(
        make_gateway: MakeGateway) -> None:
    # The reverse case must keep working: a colleague answering our acknowledgement by mail.
    with SmtpCapture() as capture:
        gw = await make_gateway(smtp_toml(mailer_port=capture.port))
        first = await mail(gw, sender="owner@customer.example", text="The printer jams")
        assert first.ticket is not None
        number = first.ticket[0]
        ack = await capture.wait_for(lambda m: "owner@customer.example" in m.rcpt_tos)
        our_id = str(ack.message["Message-ID"]).strip("<>")
        reply = await mail(gw, sender="colleague@customer.example", text="It is model P-200",
                           headers={"In-Reply-To": f"<{our_id}>"})
    assert reply.ticket == (number, "followup")


# -- 2. A delivery key belongs to its sender -----------------------------------------------


async def test_another_sender_reusing_a_message_id_is_a_new_mail(
        make_gateway: MakeGateway) -> None:
    gw = await make_gateway(smtp_toml())
    mid = f"{uuid.uuid4().hex}@victim.example"
    first = await mail(gw, sender="victim@victim.example", text="My meter reads wrong",
                       message_id=mid)
    again = await mail(gw, sender="victim@victim.example", text="My meter reads wrong",
                       message_id=mid)
    stolen = await mail(gw, sender="mallory@attacker.example", text="Send me the reading",
                        message_id=mid)
    assert first.ticket is not None and again.ticket == (first.ticket[0], "replayed")
    assert stolen.ticket is not None and stolen.ticket[1] == "created"
    assert first.ticket[0] not in stolen.text
    assert len(tickets(await events(gw))) == 2, "the stranger's mail must not be dropped"


async def test_another_client_reusing_an_idempotency_key_is_a_new_message(
        gateway: Gateway, http: aiohttp.ClientSession) -> None:
    body = {"contact": {"email": "victim@victim.example"}, "text": "Where is order 77?"}
    _, first = await api_post(http, gateway, body, key="order-77")
    _, again = await api_post(http, gateway, body, key="order-77")
    status, other = await api_post(http, gateway, {"contact": {"email": "eve@attacker.example"},
                                                   "text": "Where is order 77?"}, key="order-77")
    # Same typed contact, other words, same key: not silently dropped either.
    _, edited = await api_post(http, gateway, {**body, "text": "Order 77 arrived broken"},
                               key="order-77")
    assert again["outcome"] == "replayed" and again["ticket_number"] == first["ticket_number"]
    assert status == 201 and other["outcome"] == "created"
    assert other["ticket_number"] != first["ticket_number"]
    assert edited["outcome"] != "replayed"


# -- 3. Unverified identities stay unverified ----------------------------------------------


def _api_toml() -> str:
    return '[adapters.api]\nsecret_env = "INTAKE_TRUST_API_SECRET"\n'


async def test_a_typed_address_never_renames_upgrades_links_or_reveals(
        make_gateway: MakeGateway, http: aiohttp.ClientSession) -> None:
    gw = await make_gateway(smtp_toml() + _api_toml())
    victim = "li.lei@victim.example"
    text = "The router in the living room has no signal"
    first = await mail(gw, sender=victim, name="Li Lei", text=text)
    assert first.ticket is not None
    number = first.ticket[0]
    mallory_phone = "+8613911112222"

    # The same words, the victim's address, a VIP claim, a new name and the stranger's phone.
    status, page = await form_post(http, gw, name="Mallory", email=victim, phone=mallory_phone,
                                   customer_type="vip", message=text)
    assert status == 200 and number not in page and first_number(page)
    # Quoting the number does not help without telling the owner (no mailer here).
    status, page = await form_post(http, gw, email=victim, ticket_number=number,
                                   message="Close it and send the refund to me")
    assert status == 200 and first_number(page) != number
    # The stranger's own phone, now verified by a signed client, reaches nothing of the victim.
    status, body = await api_post(http, gw, {"contact": {"phone": mallory_phone},
                                             "text": "Any news?", "ticket_number": number},
                                  secret=API_SECRET)
    assert status == 201 and body["ticket_number"] != number

    evs = tickets(await events(gw))
    assert [e["type"] for e in evs] == ["ticket.created"] * 4
    contacts = [e["data"]["contact"] for e in evs]
    victim_id = contacts[0]["id"]
    assert [c["id"] == victim_id for c in contacts] == [True, True, True, False]
    # The victim's contact as the last event on it shows it: untouched.
    assert contacts[2].get("name") == "Li Lei" and "customer_type" not in contacts[2]
    assert "phone" not in contacts[2]
    assert evs[1]["data"]["hinted_tickets"] == [number]
    assert evs[2]["data"]["hinted_tickets"] == [number]
    assert evs[1]["data"]["message"].get("verified_by") is None
    assert evs[0]["data"]["message"]["verified_by"] == "smtp"


async def test_a_typed_follow_up_joins_only_when_the_owner_is_told(
        make_gateway: MakeGateway, http: aiohttp.ClientSession) -> None:
    with SmtpCapture() as capture:
        gw = await make_gateway(smtp_toml(mailer_port=capture.port))
        owner = "han.mei@owner.example"
        first = await mail(gw, sender=owner, text="My package never arrived")
        assert first.ticket is not None
        number = first.ticket[0]
        await capture.wait_for(lambda m: owner in m.rcpt_tos)
        status, page = await form_post(http, gw, email=owner, ticket_number=number,
                                       message="I am still waiting for the package")
        assert status == 200 and first_number(page) == number
        # The owner hears of it at the ticket's own address, whoever typed it.
        await capture.wait_for(lambda _: len(capture.to(owner)) >= 2)
        told = capture.to(owner)[1]
        assert number in str(told.message["Subject"])
        # A different typed address, with the number, is somebody else: a ticket of its own.
        status, page = await form_post(http, gw, email="other@elsewhere.example",
                                       ticket_number=number, message="Cancel the package")
        assert status == 200 and first_number(page) != number


async def test_a_claim_first_does_not_capture_the_real_owner(
        make_gateway: MakeGateway, http: aiohttp.ClientSession) -> None:
    # The stranger types the victim's address and their own phone before the victim ever
    # wrote. When the victim then mails, and the stranger's phone later arrives verified, the
    # two must not end up on one contact.
    gw = await make_gateway(smtp_toml() + _api_toml())
    victim, phone = "wang.fang@victim.example", "+8613922223333"
    status, _ = await form_post(http, gw, email=victim, phone=phone, name="Wang Fang",
                                message="Please call me about my contract")
    assert status == 200
    mailed = await mail(gw, sender=victim, text="My contract number is 55-1234, renewal")
    assert mailed.ticket is not None and mailed.ticket[1] == "created"
    number = mailed.ticket[0]
    status, body = await api_post(http, gw, {"contact": {"phone": phone},
                                             "text": "status?", "ticket_number": number},
                                  secret=API_SECRET)
    assert status == 201 and body["ticket_number"] != number
    evs = tickets(await events(gw))
    ids = [e["data"]["contact"]["id"] for e in evs]
    assert len(set(ids)) == 3, ids
    assert evs[1]["data"]["contact"].get("email") == victim
    assert "phone" not in evs[1]["data"]["contact"]


async def test_self_declared_vip_is_ignored_on_a_new_contact(
        gateway: Gateway, http: aiohttp.ClientSession) -> None:
    status, _ = await form_post(http, gateway, email="newcomer@example.org",
                                customer_type="vip", message="I want priority service")
    assert status == 200
    status, _ = await api_post(http, gateway, {"contact": {"email": "other@example.org"},
                                               "customer_type": "existing", "text": "Hi"})
    assert status == 201
    contacts = [e["data"]["contact"] for e in tickets(await events(gateway))]
    assert "customer_type" not in contacts[0]
    assert contacts[1]["customer_type"] == "existing"  # only VIP is a privilege to claim
