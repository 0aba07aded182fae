"""The operators' dashboard: what it counts, who may see it, and what its buttons do."""

from __future__ import annotations

import asyncio
import re
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from gateway.config import parse_config
from gateway.dashboard.charts import hbars, stacked_bars
from gateway.dashboard.regions import region_of
from gateway.dashboard.summary import mask
from gateway.runtime import Gateway
from gateway.store.dashboard_sql import dashboard_reads
from gateway.store.postgres import migrate
from gateway.testing.postgres import postgres_database, postgres_dsn
from gateway.testing.publisher_harnesses import WebhookHarness
from gateway.testing.store_contract import (
    StoreFactory,
    _append,
    _event,
    _ticket_with_acks,
    store_factory,
)
from tests.conftest import MakeGateway

__all__ = ["postgres_database", "postgres_dsn", "store_factory"]

CSRF = re.compile(r'name="csrf" value="([0-9a-f]+)"')


@pytest.mark.parametrize("phone, region", [
    ("+8613912345678", "江苏省 Jiangsu"),
    ("+8613800138000", "北京市 Beijing"),
    ("+8615012345678", "云南省 Yunnan"),
    ("+8602087654321", "广东省 Guangdong"),
    ("+85291234567", "香港 HK"),
    ("+442079460958", "英国 GB"),
    (None, "no phone number"),
    ("not a number", "unreadable number"),
])
def test_region_from_the_phone_number(phone: str | None, region: str) -> None:
    assert region_of(phone) == region


def test_masking_keeps_no_whole_address() -> None:
    assert mask("wang.xm@example.com") == "w…@e…"
    assert mask("+8613800138000") == "+86…8000"
    assert mask("王小明") == "王…"


def test_charts_escape_labels_and_carry_their_values() -> None:
    svg = stacked_bars({"api": [1, 0, 2], "<script>": [0, 3, 0]}, ["a", "b", "c"], title="t")
    assert "<script>" not in svg and "&lt;script&gt;" in svg
    assert sorted(int(v) for v in re.findall(r'data-value="(\d+)"', svg)) == [1, 2, 3]
    bars = hbars([("high", 4), ("low", 0)], title="p")
    assert re.findall(r'data-value="(\d+)"', bars) == ["4"]
    assert "nothing received yet" in stacked_bars({}, ["a"], title="t")


async def _post(http: aiohttp.ClientSession, gw: Gateway, body: dict[str, Any]) -> str:
    async with http.post(f"{gw.url}/v1/messages", json=body) as resp:
        assert resp.status in (200, 201), await resp.text()
        return str((await resp.json())["ticket_number"])


@pytest.fixture(params=["sqlite", "postgres"])
def store_toml(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """The ``[store]`` section of a gateway on each store (PostgreSQL: this test's schema)."""
    if request.param == "sqlite":
        return ""
    dsn = request.getfixturevalue("postgres_dsn")
    migrate(dsn)
    monkeypatch.setenv("INTAKE_TEST_DASHBOARD_DSN", dsn)
    return '[store]\nbackend = "postgres"\ndsn_env = "INTAKE_TEST_DASHBOARD_DSN"\n'


async def test_data_counts_what_came_in_and_carries_no_customer_data(
        make_gateway: MakeGateway, http: aiohttp.ClientSession, store_toml: str) -> None:
    gw = await make_gateway(store_toml + '[dashboard]\nat_risk_within = "3h"\n')
    await _post(http, gw, {"contact": {"phone": "+8613912345678", "email": "li.lei@example.org"},
                           "text": "投诉：路由器坏了", "device_model": "AX3 Pro"})
    await _post(http, gw, {"contact": {"phone": "+8615012345678"}, "text": "How do I reset it?",
                           "device_model": "AX3 Pro"})
    await _post(http, gw, {"contact": {"email": "someone@example.org"},
                           "text": "Please add a dark mode, a suggestion"})
    async with http.get(f"{gw.url}/dashboard/data.json") as resp:
        assert resp.status == 200
        raw = await resp.text()
        data = await resp.json()
    assert data["total_day"] == 3 and sum(data["hour"]["by_channel"]["api"]) == 3
    assert data["outcomes"]["created"] == 3
    assert dict(data["regions"]) == {"江苏省 Jiangsu": 1, "云南省 Yunnan": 1,
                                     "no phone number": 1}
    assert dict(data["devices"]) == {"AX3 Pro": 2}
    assert sum(data["priorities"].values()) == 3
    # The complaint is high priority (2 h): at risk within 3 h.
    assert [t["priority"] for t in data["at_risk"]] == ["high"]
    for secret in ("+8613912345678", "li.lei@example.org", "someone@example.org", "路由器坏了"):
        assert secret not in raw
    async with http.get(f"{gw.url}/dashboard") as resp:
        page = await resp.text()
    assert "+8613912345678" not in page and "li.lei@example.org" not in page
    async with http.get(f"{gw.url}/dashboard/data.json") as resp:
        data = await resp.json()
    assert sum(data["acks"].values()) == 0, "every ticket here was answered inline"
    async with http.get(f"{gw.url}/metrics") as resp:
        assert resp.status == 200, "the scrape's gauges read the same store"
        assert 'intake_tickets_at_risk' in await resp.text()


async def test_loopback_without_token_answers_only_loopback_host_names(
        make_gateway: MakeGateway, http: aiohttp.ClientSession) -> None:
    gw = await make_gateway()
    async with http.get(f"{gw.url}/dashboard") as resp:
        assert resp.status == 200
    # A page whose DNS name was rebound to 127.0.0.1 sends its own name as Host.
    async with http.get(f"{gw.url}/dashboard", headers={"Host": "evil.example:8080"}) as resp:
        assert resp.status == 403
    async with http.post(f"{gw.url}/dashboard/dead-letters/replay", data={"csrf": "nope"}) as r:
        assert r.status == 403


def test_off_loopback_without_token_the_dashboard_is_not_served(
        tmp_path: Path, monkeypatch: Any) -> None:
    monkeypatch.setenv("T_API", "api-secret-value")
    monkeypatch.setenv("T_EVENTS", "events-token-value")
    config = parse_config('[server]\nlisten = "0.0.0.0:0"\nevents_token_env = "T_EVENTS"\n'
                          '[adapters.api]\nsecret_env = "T_API"\n')
    gw = Gateway(config, tmp_path, listen="0.0.0.0:0")
    assert gw.dashboard is None
    assert not [r for r in gw.operator_routes() if "dashboard" in getattr(r, "path", "")]
    monkeypatch.setenv("T_DASH", "dashboard-token-value")
    config = parse_config('[server]\nevents_token_env = "T_EVENTS"\n'
                          '[adapters.api]\nsecret_env = "T_API"\n'
                          '[dashboard]\ntoken_env = "T_DASH"\n')
    assert Gateway(config, tmp_path, listen="0.0.0.0:0").dashboard is not None


async def test_token_sign_in_session_and_csrf(make_gateway: MakeGateway,
                                              monkeypatch: Any) -> None:
    monkeypatch.setenv("DASH_TOKEN", "correct horse battery staple")
    gw = await make_gateway('[dashboard]\ntoken_env = "DASH_TOKEN"\n')
    base = f"{gw.url}/dashboard"
    # unsafe=True: aiohttp's jar otherwise keeps no cookie set by an IP address host.
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as http:
        async with http.get(base, allow_redirects=False) as resp:
            assert resp.status == 303 and resp.headers["Location"] == "/dashboard/login"
        async with http.get(f"{base}/data.json") as resp:
            assert resp.status == 401
        async with http.get(f"{base}/data.json", headers={
                "Authorization": "Bearer correct horse battery staple"}) as resp:
            assert resp.status == 200
        async with http.post(f"{base}/login", data={"token": "wrong"}) as resp:
            assert resp.status == 401
        async with http.post(f"{base}/login", data={"token": "correct horse battery staple"},
                             allow_redirects=False) as resp:
            assert resp.status == 303
            cookie = resp.cookies["intake_dashboard"]
            assert cookie["httponly"] and cookie["samesite"] == "Strict"
        async with http.get(base) as resp:
            assert resp.status == 200
            page = await resp.text()
        csrf = CSRF.search(page)
        assert csrf is not None
        async with http.post(f"{base}/dead-letters/replay", data={"csrf": "forged"}) as resp:
            assert resp.status == 403
        async with http.post(f"{base}/dead-letters/replay", data={"csrf": csrf.group(1)},
                             allow_redirects=False) as resp:
            assert resp.status == 303
        async with http.post(f"{base}/logout", data={"csrf": csrf.group(1)},
                             allow_redirects=False) as resp:
            assert resp.status == 303
        async with http.get(f"{base}/data.json") as resp:
            assert resp.status == 401


async def test_the_replay_button_republishes_dead_letters(make_gateway: MakeGateway,
                                                          http: aiohttp.ClientSession) -> None:
    async with WebhookHarness() as harness:
        receiver = harness.receiver
        receiver.refuse_where(lambda _id, body: b"REFUSE-ME" in body, status=422)
        gw = await make_gateway(
            f'[queue]\nbackend = "webhook"\nmax_attempts = 1\nmax_backoff = 0.2\n'
            f'[queue.settings]\nurl = "{receiver.url()}"\nsecret_file = "{harness.secret_file}"\n'
            "timeout = 2.0\nattempts = 1\nbackoff = 0.05\n")
        number = await _post(http, gw, {"contact": {"email": "dl@example.org"},
                                        "text": "REFUSE-ME please"})
        data: dict[str, Any] = {}
        for _ in range(400):
            async with http.get(f"{gw.url}/dashboard/data.json") as resp:
                data = await resp.json()
            if data["dead_letters"]:
                break
            await asyncio.sleep(0.05)
        assert [d["subject"] for d in data["dead_letters"]] == [number]
        async with http.get(f"{gw.url}/dashboard") as resp:
            page = await resp.text()
        assert 'id="replay-dead-letters"' in page
        csrf = CSRF.search(page)
        assert csrf is not None
        receiver.clear_faults()
        async with http.post(f"{gw.url}/dashboard/dead-letters/replay",
                             data={"csrf": csrf.group(1)}) as resp:
            assert resp.status == 200
            page = await resp.text()
        assert "re-published 1 dead-lettered event(s) to webhook; 0 left" in page
        async with http.get(f"{gw.url}/dashboard/data.json") as resp:
            assert (await resp.json())["dead_letters"] == []
        assert any(number.encode() in d.body for d in receiver.deliveries)


async def test_the_replay_button_takes_quarantined_mail(make_gateway: MakeGateway,
                                                        http: aiohttp.ClientSession) -> None:
    gw = await make_gateway()
    # What the IMAP adapter left when a message failed on our side ("internal error").
    folder = gw.data_dir / "imap" / "quarantine" / "support"
    folder.mkdir(parents=True)
    (folder / "7-42.eml").write_bytes(
        b"From: Han Meimei <han@example.org>\r\nTo: support@example.com\r\n"
        b"Subject: Refund\r\nMessage-ID: <q1@example.org>\r\n\r\nPlease refund order 77.\r\n")
    (folder / "7-42.reason").write_text("internal error (KeyError)")
    (folder / "7-43.reason").write_text("larger than adapters.imap.max_message_bytes")
    async with http.get(f"{gw.url}/dashboard/data.json") as resp:
        items = (await resp.json())["quarantined"]
    assert sorted(q["id"] for q in items) == ["support/7-42", "support/7-43"]
    async with http.get(f"{gw.url}/dashboard") as resp:
        csrf = CSRF.search(await resp.text())
    assert csrf is not None
    for item in ("support/../../etc", "support/7-99"):
        async with http.post(f"{gw.url}/dashboard/quarantine/replay",
                             data={"csrf": csrf.group(1), "adapter": "imap", "id": item}) as r:
            assert r.status == 400
    async with http.post(f"{gw.url}/dashboard/quarantine/replay",
                         data={"csrf": csrf.group(1), "adapter": "imap",
                               "id": "support/7-42"}) as resp:
        page = await resp.text()
    assert "imap support/7-42: accepted" in page
    assert not (folder / "7-42.eml").exists()
    async with http.get(f"{gw.url}/dashboard/data.json") as resp:
        data = await resp.json()
    assert [q["id"] for q in data["quarantined"]] == ["support/7-43"]
    assert data["outcomes"]["created"] == 1


async def test_the_token_may_come_from_a_file(make_gateway: MakeGateway, tmp_path: Path,
                                              http: aiohttp.ClientSession) -> None:
    secret = tmp_path / "dashboard_token"
    secret.write_text("token-from-a-file\n")
    gw = await make_gateway(f'[dashboard]\ntoken_file = "{secret}"\n')
    async with http.get(f"{gw.url}/dashboard/data.json") as resp:
        assert resp.status == 401
    async with http.get(f"{gw.url}/dashboard/data.json",
                        headers={"Authorization": "Bearer token-from-a-file"}) as resp:
        assert resp.status == 200


async def test_the_dashboards_reads_answer_alike_on_each_store(
        store_factory: StoreFactory) -> None:
    store = await store_factory()
    reads = dashboard_reads(store)
    ticket = await _ticket_with_acks(store, "T-D", ["d1@example.org", "d2@example.org"])
    await _append(store, _event(1, "T-D"), _event(2, "T-D"))
    await store.run(lambda tx: tx.save_relay_position("nats", 1))
    lag = await reads.relay_lag("nats")
    assert (lag.position, lag.last_seq) == (1, 2) and lag.oldest_waiting_at is not None
    assert (await reads.relay_lag("never")).position == 0
    assert await reads.ack_counts() == {"pending": 2}
    assert await reads.ticket_mix(0) == [("consultation", "low", "other", 1)]
    far = int((time.time() + 7 * 86400) * 1e6)
    [risky] = await reads.at_risk(far, 10)
    assert (risky.number, risky.priority) == ("T-D", "low")
    assert await reads.at_risk(0, 10) == []
    assert await reads.contact_identities([ticket.contact_id]) == [
        (ticket.contact_id, "email", "d1@example.org")]
    assert await reads.contact_identities([]) == []
    assert await reads.intake_counts(0, 3_600_000_000) == [], "no message was stored"
    assert await reads.duplicates_since(0, 10) == []
    await store.close()
