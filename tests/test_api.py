"""The JSON API through real HTTP against a running gateway: outcomes, concurrency, bad input."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import time

import aiohttp
import pytest

from gateway.runtime import Gateway
from gateway.testing.harness import read_events
from intake_adapters.api import sign_request
from tests.conftest import MakeGateway


async def post(s: aiohttp.ClientSession, gw: Gateway, body: object, *,
               key: str | None = None, headers: dict[str, str] | None = None
               ) -> tuple[int, dict[str, object]]:
    h = dict(headers or {})
    if key:
        h["Idempotency-Key"] = key
    async with s.post(f"{gw.url}/v1/messages", json=body, headers=h) as resp:
        return resp.status, await resp.json()


async def test_created_answer_carries_number_due_time_and_ack(gateway: Gateway, http) -> None:
    status, data = await post(http, gateway, {
        "contact": {"name": "Li Lei", "email": "LiLei@Example.COM"},
        "subject": "发票问题", "text": "上个月的账单扣费两次，请退款。", "locale": "zh-CN"})
    assert status == 201
    assert data["outcome"] == "created"
    number = data["ticket_number"]
    assert gateway.intake.numbering.parse(number) == number
    ack = data["acknowledgement"]
    assert number in ack["text"] and "工单编号" in ack["text"]
    [event] = await read_events(http, gateway.url)
    assert event["type"] == "ticket.created" and event["subject"] == number
    assert event["data"]["ticket"]["area"] == "billing"
    assert event["data"]["contact"]["email"] == "lilei@example.com"
    assert event["data"]["acknowledged_inline"] is True


async def test_idempotency_key_replays_the_first_receipt(gateway: Gateway, http) -> None:
    body = {"contact": {"email": "a@example.org"}, "text": "Where is my order?"}
    s1, first = await post(http, gateway, body, key="order-q-1")
    s2, again = await post(http, gateway, body, key="order-q-1")
    assert (s1, s2) == (201, 200)
    assert again["outcome"] == "replayed"
    assert again["ticket_number"] == first["ticket_number"]
    assert again["message_id"] == first["message_id"]
    assert len(await read_events(http, gateway.url)) == 1


async def test_two_hundred_identical_requests_make_one_ticket(gateway: Gateway, http) -> None:
    body = {"contact": {"phone": "+8613800138000"}, "text": "停电了，整栋楼都没电！"}
    results = await asyncio.gather(*(post(http, gateway, body, key="burst-1") for _ in range(200)))
    numbers = {data["ticket_number"] for _, data in results}
    outcomes = sorted(data["outcome"] for _, data in results)
    assert len(numbers) == 1
    assert outcomes.count("created") == 1 and outcomes.count("replayed") == 199
    events = await read_events(http, gateway.url)
    assert [e["type"] for e in events] == ["ticket.created"]
    assert events[0]["data"]["ticket"]["priority"] == "high"


async def test_same_content_from_a_claim_is_seen_but_never_shows_the_first_number(
        gateway: Gateway, http) -> None:
    # The unsigned API and the form carry typed addresses: whoever typed b@example.org the
    # second time must not learn the first ticket's number. Agents see the repeat as a hint.
    _, first = await post(http, gateway, {"contact": {"email": "b@example.org"},
                                          "text": "The app crashes when I log in.\n\n-- \nBob"})
    form = aiohttp.FormData()
    for k, v in {"lang": "en", "email": "B@example.org",
                 "message": "the app CRASHES when I log in.\n> quoted old text"}.items():
        form.add_field(k, v)
    async with http.post(f"{gateway.url}/form", data=form) as resp:
        page = await resp.text()
    assert resp.status == 200
    assert first["ticket_number"] not in page
    events = await read_events(http, gateway.url)
    assert [e["type"] for e in events] == ["ticket.created", "ticket.created"]
    assert events[1]["data"]["hinted_tickets"] == [first["ticket_number"]]


async def test_followup_by_number_only_from_the_owner(gateway: Gateway, http) -> None:
    _, first = await post(http, gateway, {"contact": {"email": "c@example.org"},
                                          "text": "My parcel is late."})
    number = first["ticket_number"]
    _, own = await post(http, gateway, {"contact": {"email": "c@example.org"},
                                        "text": "Tracking says Shanghai.",
                                        "subject": f"Re: {number}"})
    assert own["outcome"] == "followup" and own["ticket_number"] == number
    _, other = await post(http, gateway, {"contact": {"email": "mallory@example.org"},
                                          "text": "Cancel it.", "ticket_number": number})
    assert other["outcome"] == "created" and other["ticket_number"] != number


async def test_a_one_digit_typo_never_reaches_another_ticket(gateway: Gateway, http) -> None:
    _, first = await post(http, gateway, {"contact": {"email": "d@example.org"},
                                          "text": "First question."})
    number: str = first["ticket_number"]
    typo = number[:-3] + str((int(number[-3]) + 1) % 10) + number[-2:]
    _, data = await post(http, gateway, {"contact": {"email": "d@example.org"},
                                         "text": "Second question.", "ticket_number": typo})
    assert data["outcome"] == "created" and data["ticket_number"] != number


async def test_email_and_phone_link_one_contact(gateway: Gateway, http) -> None:
    await post(http, gateway, {"contact": {"email": "e@example.org", "phone": "+8613911112222"},
                               "text": "One."})
    await post(http, gateway, {"contact": {"phone": "+86 139 1111 2222"}, "text": "Two."})
    await post(http, gateway, {"contact": {"email": "E@example.org"}, "text": "Three."})
    events = await read_events(http, gateway.url)
    ids = {e["data"]["contact"]["id"] for e in events}
    assert len(ids) == 1
    assert events[1]["data"]["contact"]["email"] == "e@example.org"


async def test_attachment_is_stored_and_described(gateway: Gateway, http) -> None:
    blob = b"%PDF-1.4 fake receipt"
    status, _data = await post(http, gateway, {
        "contact": {"email": "f@example.org"}, "text": "Receipt attached.",
        "attachments": [{"name": "../../etc/receipt.pdf", "content_type": "application/pdf",
                         "data": base64.b64encode(blob).decode()}]})
    assert status == 201
    [event] = await read_events(http, gateway.url)
    [att] = event["data"]["message"]["attachments"]
    digest = hashlib.sha256(blob).hexdigest()
    assert att == {"name": "receipt.pdf", "content_type": "application/pdf", "size": len(blob),
                   "sha256": digest}
    assert gateway.attachments.path_of(digest).read_bytes() == blob


@pytest.mark.parametrize(("body", "headers", "status", "needle"), [
    (b"{not json", {"Content-Type": "application/json"}, 400, "not valid"),
    (b'{"contact": {}, "text": "\xff\xfe"}', {"Content-Type": "application/json"}, 400, "UTF-8"),
    (b'{"contact": {"email": 5}, "text": "x"}', {"Content-Type": "application/json"}, 400,
     "contact.email"),
    (b'{"contact": {"email": "a@b.org"}, "text": "x", "colour": "red"}',
     {"Content-Type": "application/json"}, 400, "colour"),
    (b'{"contact": {"email": "a@b.org"}, "text": "   "}', {"Content-Type": "application/json"},
     400, "empty"),
    (b'{"contact": {"name": "anon"}, "text": "hi"}', {"Content-Type": "application/json"}, 400,
     "email address, a phone number"),
    (b'{"contact": {"email": "not-an-address"}, "text": "hi"}',
     {"Content-Type": "application/json"}, 400, "email address is not valid"),
    (b'{"contact": {"phone": "12"}, "text": "hi"}', {"Content-Type": "application/json"}, 400,
     "country code"),
    (b"contact=x", {"Content-Type": "application/x-www-form-urlencoded"}, 400, "application/json"),
    (b'{"contact": {"email": "a@b.org"}, "text": "x"}',
     {"Content-Type": "application/json", "Idempotency-Key": "x" * 300}, 400, "Idempotency-Key"),
])
async def test_bad_input_gets_a_reason_and_writes_nothing(
        gateway: Gateway, http, body: bytes, headers: dict[str, str], status: int,
        needle: str) -> None:
    async with http.post(f"{gateway.url}/v1/messages", data=body, headers=headers) as resp:
        assert resp.status == status
        assert needle in (await resp.json())["error"]
    assert await read_events(http, gateway.url) == []


async def test_oversize_body_and_attachment_are_413(make_gateway: MakeGateway, http) -> None:
    gw = await make_gateway("[server]\nmax_body_bytes = 4096\n"
                            "[intake]\nmax_attachment_bytes = 1000\n")
    async with http.post(f"{gw.url}/v1/messages", data=b"x" * 10_000,
                         headers={"Content-Type": "application/json"}) as resp:
        assert resp.status == 413
    status, data = await post(http, gw, {
        "contact": {"email": "g@example.org"}, "text": "big",
        "attachments": [{"name": "a.bin", "data": base64.b64encode(b"y" * 2000).decode()}]})
    assert status == 413 and "limit" in data["error"]
    assert await read_events(http, gw.url) == []


async def test_signed_api_refuses_unsigned_stale_and_forged(make_gateway: MakeGateway, http,
                                                            monkeypatch) -> None:
    monkeypatch.setenv("TEST_API_SECRET", "s3cret")
    gw = await make_gateway('[adapters.api]\nsecret_env = "TEST_API_SECRET"\n')
    body = b'{"contact": {"email": "h@example.org"}, "text": "signed"}'
    url = f"{gw.url}/v1/messages"
    ctype = {"Content-Type": "application/json"}
    async with http.post(url, data=body, headers=ctype) as resp:
        assert resp.status == 401
    stale = str(int(time.time()) - 3600)
    async with http.post(url, data=body, headers={
            **ctype, "X-Intake-Timestamp": stale,
            "X-Intake-Signature": sign_request("s3cret", stale, body)}) as resp:
        assert resp.status == 401
    now = str(int(time.time()))
    async with http.post(url, data=body, headers={
            **ctype, "X-Intake-Timestamp": now,
            "X-Intake-Signature": sign_request("wrong", now, body)}) as resp:
        assert resp.status == 403
    async with http.post(url, data=body + b" ", headers={
            **ctype, "X-Intake-Timestamp": now,
            "X-Intake-Signature": sign_request("s3cret", now, body)}) as resp:
        assert resp.status == 403
    assert await read_events(http, gw.url) == []
    async with http.post(url, data=body, headers={
            **ctype, "X-Intake-Timestamp": now,
            "X-Intake-Signature": sign_request("s3cret", now, body)}) as resp:
        assert resp.status == 201


async def test_events_long_poll_wakes_on_commit(gateway: Gateway, http) -> None:
    async def poll() -> dict[str, object]:
        async with http.get(f"{gateway.url}/v1/events", params={"after": 0, "wait": 10}) as r:
            return await r.json()

    waiter = asyncio.create_task(poll())
    await asyncio.sleep(0.2)
    assert not waiter.done()
    _, data = await post(http, gateway, {"contact": {"email": "i@example.org"}, "text": "hi"})
    page = await asyncio.wait_for(waiter, 5)
    assert page["events"][0]["event"]["subject"] == data["ticket_number"]
    assert page["next"] == page["events"][0]["seq"]


async def _submitted_counts(http: aiohttp.ClientSession, gw: Gateway) -> dict[str, float]:
    async with http.get(gw.url + "/metrics") as resp:
        text = await resp.text()
    prefix = 'intake_messages_total{channel="api",outcome="'
    return {line[len(prefix):].split('"', 1)[0]: float(line.rsplit(" ", 1)[1])
            for line in text.splitlines() if line.startswith(prefix)}


async def test_messages_are_counted_by_their_own_outcome(gateway: Gateway, http) -> None:
    # The counter's children are looked up once per (channel, outcome): a created message and
    # its replay (the same Idempotency-Key) on one channel each count under their own outcome.
    before = await _submitted_counts(http, gateway)
    body = {"contact": {"email": "count@example.org"}, "text": "the router keeps rebooting"}
    first, _ = await post(http, gateway, body, key="count-1")
    again, answer = await post(http, gateway, body, key="count-1")
    assert (first, again, answer["outcome"]) == (201, 200, "replayed")
    after = await _submitted_counts(http, gateway)
    assert after["created"] - before.get("created", 0) == 1
    assert after["replayed"] - before.get("replayed", 0) == 1


async def test_health_ready_and_metrics(gateway: Gateway, http) -> None:
    await post(http, gateway, {"contact": {"email": "j@example.org"}, "text": "metrics"})
    for path in ("/healthz", "/readyz"):
        async with http.get(gateway.url + path) as resp:
            assert resp.status == 200
    async with http.get(gateway.url + "/metrics") as resp:
        text = await resp.text()
    assert 'intake_messages_total{channel="api",outcome="created"}' in text
