"""``intake-gateway purge`` on both stores: raw content goes after ``raw_after``, ticket
records stay at least ``legal_minimum`` and go only after ``records_for``.

Time is moved by the cutoffs' ``now`` (a purge run months later), never by sleeping.
"""

from __future__ import annotations

import base64
import hashlib
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from gateway.config import parse_config
from gateway.errors import ConfigError
from gateway.runtime import Gateway
from gateway.store.postgres import PostgresStore, migrate
from gateway.store.protocols import NewEvent, NewReply
from gateway.store.retention import cutoffs, purge
from gateway.testing.postgres import postgres_database, postgres_dsn

__all__ = ["postgres_database", "postgres_dsn"]

DAY = 86_400.0
DSN_ENV = "INTAKE_TEST_PURGE_DSN"


@pytest.fixture(params=["sqlite", "postgres"])
async def gateway_on(request: pytest.FixtureRequest, tmp_path: Path,
                     monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Gateway]:
    toml = ""
    if request.param == "postgres":
        dsn = request.getfixturevalue("postgres_dsn")
        migrate(dsn)
        monkeypatch.setenv(DSN_ENV, dsn)
        toml = f'[store]\nbackend = "postgres"\ndsn_env = "{DSN_ENV}"\n'
    gw = Gateway(parse_config(toml + '[retention]\nraw_after = "180d"\n'
                              'records_for = "1095d"\n'), tmp_path / "data",
                 listen="127.0.0.1:0")
    await gw.start()
    yield gw
    await gw.stop()


async def _count(gw: Gateway, table: str) -> int:
    def one(c: object) -> int:
        return int(c.execute(f"SELECT count(*) FROM {table}").fetchone()[0])  # type: ignore[attr-defined]
    return int(await gw.store.read(one))  # type: ignore[arg-type]


async def _payloads(gw: Gateway) -> dict[str, bytes]:
    def rows(c: object) -> dict[str, bytes]:
        return {str(u): bytes(p) for u, p in c.execute(  # type: ignore[attr-defined]
            "SELECT uid, payload FROM replies").fetchall()}
    return await gw.store.read(rows)  # type: ignore[arg-type]


async def _purge_at(gw: Gateway, days_later: float) -> object:
    cut = cutoffs(gw.config.retention, now=time.time() + days_later * DAY)
    postgres = isinstance(gw.store, PostgresStore)
    return await purge(gw.store, None if postgres else gw.attachments.root, cut,
                       postgres=postgres)


async def test_raw_content_goes_first_and_records_only_after_their_time(
        gateway_on: Gateway) -> None:
    gw = gateway_on
    blob = b"%PDF-1.4 an invoice " + str(time.time()).encode()
    digest = hashlib.sha256(blob).hexdigest()
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{gw.url}/v1/messages", json={
                "contact": {"email": "old@example.org"}, "text": "Invoice attached.",
                "attachments": [{"name": "a.pdf", "content_type": "application/pdf",
                                 "data": base64.b64encode(blob).decode()}]}) as resp:
            assert resp.status == 201
            answer = await resp.json()
            uid = answer["message_id"]
        url = f"{gw.url}/v1/messages/{uid}"
        number = answer["ticket_number"]
        # Two replies to it: one sent (its words are raw content), one still queued.
        target = await gw.store.reply_target(number)
        assert target is not None
        for reply_uid in ("r-sent", "r-queued"):
            reply = NewReply(uid=reply_uid, ticket_id=target.ticket_id,
                             idempotency_key=reply_uid, request_hash="h", channel="email",
                             recipient="old@example.org", reply_to=None,
                             payload=b"the words we sent", not_before=0.0)
            await gw.store.run(lambda tx, r=reply: tx.insert_reply(r, NewEvent(
                id=f"ev-{r.uid}", type="reply.queued", subject=number, body=b"{}")))
        await gw.store.run(lambda tx: tx.finish_reply("r-sent", "sent", provider_id="<p@x>"))

        report = await _purge_at(gw, 100)
        assert (report.bodies, report.files, report.tickets) == (0, 0, 0), "too young"  # type: ignore[attr-defined]
        async with http.get(f"{url}/attachments/{digest}") as resp:
            assert resp.status == 200

        report = await _purge_at(gw, 181)
        assert (report.bodies, report.files, report.tickets) == (2, 1, 0), \
            "the message's body and the sent reply's words"  # type: ignore[attr-defined]
        assert await _payloads(gw) == {"r-sent": b"", "r-queued": b"the words we sent"}
        async with http.get(url) as resp:
            assert resp.status == 404, "the body is gone"
        async with http.get(f"{url}/attachments/{digest}") as resp:
            assert resp.status == 404, "and its file"
        assert await _count(gw, "tickets") == 1, "the ticket record stays"
        assert await _count(gw, "contacts") == 1

        report = await _purge_at(gw, 730)
        assert report.tickets == 0, "records_for (1095d) has not passed"  # type: ignore[attr-defined]
        report = await _purge_at(gw, 1100)
        assert (report.tickets, report.messages, report.contacts) == (1, 1, 1)  # type: ignore[attr-defined]
        assert await _count(gw, "tickets") == 0
        assert await _count(gw, "identities") == 0, "nothing of the customer is left"
        assert await _count(gw, "acks") == 0
        assert await _count(gw, "replies") == 0, "nor the replies to the customer"


def test_records_kept_less_than_the_legal_minimum_are_refused(tmp_path: Path) -> None:
    config = parse_config('[retention]\nrecords_for = "365d"\n')
    with pytest.raises(ConfigError, match="legal_minimum"):
        cutoffs(config.retention)
    stricter = parse_config('[retention]\nrecords_for = "900d"\nlegal_minimum = "1000d"\n')
    with pytest.raises(ConfigError, match="at least that long"):
        cutoffs(stricter.retention)
    conf = tmp_path / "g.toml"
    conf.write_text('[retention]\nrecords_for = "30d"\n')
    res = subprocess.run([sys.executable, "-m", "gateway.cli", "purge", "--config", str(conf),
                          "--data-dir", str(tmp_path / "d")], capture_output=True, text=True,
                         timeout=60)
    assert res.returncode == 2 and "legal_minimum" in res.stderr


def test_the_purge_command_runs_on_the_default_store(tmp_path: Path) -> None:
    res = subprocess.run([sys.executable, "-m", "gateway.cli", "purge",
                          "--data-dir", str(tmp_path / "d")], capture_output=True, text=True,
                         timeout=60)
    assert res.returncode == 0, res.stderr
    assert res.stdout.startswith("purged: 0 message bodies, 0 files, 0 tickets")
