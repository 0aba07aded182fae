"""Structured logs with a correlation id that is also in the event, /metrics covering every
part, and the Prometheus alerts and Grafana dashboard naming only metrics that exist."""

from __future__ import annotations

import asyncio
import json
import re
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp

from gateway.runtime import Gateway
from gateway.testing.drivers import Customer
from gateway.testing.drivers_mail import SmtpDriver
from tests.conftest import MakeGateway

ROOT = Path(__file__).resolve().parent.parent
CUSTOMER_DATA = ("li.lei@example.org", "+8613912345678", "13912345678", "路由器每小时重启",
                 "李雷", "secret-order-8841")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def _events(http: aiohttp.ClientSession, base: str) -> list[dict[str, Any]]:
    async with http.get(f"{base}/v1/events", params={"after": "0"}) as resp:
        return [e["event"] for e in (await resp.json())["events"]]


def _read_lines(proc: subprocess.Popen[str], until: str, timeout: float = 60) -> list[str]:
    assert proc.stderr is not None
    lines: list[str] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        if not line:
            break
        lines.append(line.rstrip("\n"))
        if until in line:
            return lines
    raise AssertionError(f"{until!r} not logged; got {lines}")


async def test_json_logs_carry_the_correlation_id_the_event_carries(tmp_path: Path) -> None:
    port = _free_port()
    conf = tmp_path / "g.toml"
    conf.write_text("[adapters.smtp]\nenabled = false\n")
    proc = subprocess.Popen(
        [sys.executable, "-m", "gateway.cli", "serve", "--log-format", "json", "--config",
         str(conf), "--data-dir", str(tmp_path / "d"), "--listen", f"127.0.0.1:{port}"],
        stderr=subprocess.PIPE, text=True, cwd=ROOT)
    base = f"http://127.0.0.1:{port}"
    try:
        startup = await asyncio.to_thread(_read_lines, proc, "Ctrl-C")
        async with aiohttp.ClientSession() as http:
            body = {"contact": {"name": "李雷", "email": "li.lei@example.org",
                                "phone": "+8613912345678"},
                    "text": "投诉：路由器每小时重启", "order_number": "secret-order-8841"}
            async with http.post(f"{base}/v1/messages", json=body,
                                 headers={"X-Request-Id": "proxy-req-000123"}) as resp:
                assert resp.status in (200, 201)
                assert resp.headers["X-Request-Id"] == "proxy-req-000123"
                first = (await resp.json())["ticket_number"]
            # No id given (or an unusable one): the gateway makes one and says which.
            async with http.post(f"{base}/v1/messages",
                                 json={"contact": {"email": "b@example.org"}, "text": "hi"},
                                 headers={"X-Request-Id": "bad id\twith spaces"}) as resp:
                made = resp.headers["X-Request-Id"]
                second = (await resp.json())["ticket_number"]
            assert re.fullmatch(r"[0-9a-f]{32}", made)
            lines = await asyncio.to_thread(_read_lines, proc, second)
            events = {e["subject"]: e for e in await _events(http, base)}
    finally:
        proc.terminate()
        proc.wait(30)
    assert events[first]["correlationid"] == "proxy-req-000123"
    assert events[second]["correlationid"] == made
    records = [json.loads(line) for line in startup + lines if line.startswith("{")]
    # Every log line is one JSON object with the same keys (the announce block is plain text).
    assert records and all({"ts", "level", "logger", "message"} <= set(r) for r in records)
    by_ticket = {r["message"].rsplit("ticket=", 1)[-1]: r for r in records
                 if r["message"].startswith("submitted:")}
    assert by_ticket[first]["correlation_id"] == "proxy-req-000123"
    assert by_ticket[second]["correlation_id"] == made
    assert by_ticket[first]["message"] == f"submitted: channel=api outcome=created ticket={first}"
    text = "\n".join(startup + lines)
    for secret in CUSTOMER_DATA:
        assert secret not in text, secret


async def test_error_answers_echo_the_correlation_id(make_gateway: MakeGateway,
                                                    http: aiohttp.ClientSession) -> None:
    # The id is bound around the error mapping: a refusal (our 4xx), aiohttp's own 404 and 405
    # and a refused content type all say which request they answer.
    gw = await make_gateway("")
    given = {"X-Request-Id": "proxy-req-err-0001"}
    async with http.post(f"{gw.url}/v1/messages", data=b"{not json",
                         headers={**given, "Content-Type": "application/json"}) as resp:
        assert resp.status == 400
        assert "JSON" in (await resp.json())["error"]
        assert resp.headers["X-Request-Id"] == "proxy-req-err-0001"
    async with http.post(f"{gw.url}/v1/messages", data=b"x",
                         headers={**given, "Content-Type": "text/plain"}) as resp:
        assert resp.status == 400
        assert resp.headers["X-Request-Id"] == "proxy-req-err-0001"
    async with http.get(f"{gw.url}/no-such-page", headers=given) as resp:
        assert resp.status == 404
        assert resp.headers["X-Request-Id"] == "proxy-req-err-0001"
    async with http.delete(f"{gw.url}/v1/messages") as resp:
        assert resp.status == 405
        assert re.fullmatch(r"[0-9a-f]{32}", resp.headers["X-Request-Id"])


async def test_mail_gets_a_correlation_id_of_its_own(make_gateway: MakeGateway,
                                                     http: aiohttp.ClientSession) -> None:
    smtp = SmtpDriver()
    gw = await make_gateway(smtp.config_toml())
    got = await smtp.send(http, gw.url, customer=Customer("corr"), text="my parcel is late",
                          delivery_id="corr-1")
    assert got.status == 200
    (created,) = [e for e in await _events(http, gw.url) if e["type"] == "ticket.created"]
    assert re.fullmatch(r"[0-9a-f]{32}", created["correlationid"])


async def _metrics(gw: Gateway) -> str:
    async with aiohttp.ClientSession() as http, http.get(f"{gw.url}/metrics") as resp:
        assert resp.status == 200
        return await resp.text()


def _families(exposition: str) -> set[str]:
    names = set(re.findall(r"^# TYPE (\S+) ", exposition, re.MULTILINE))
    samples = set(re.findall(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)", exposition, re.MULTILINE))
    return names | samples


async def test_metrics_cover_channels_outbox_relay_acks_mailboxes_and_limits(
        make_gateway: MakeGateway) -> None:
    gw = await make_gateway(SmtpDriver().config_toml())
    text = await _metrics(gw)
    families = _families(text)
    for name in ("intake_messages_total", "intake_rejected_total", "intake_submit_seconds",
                 "intake_outbox_last_seq", "intake_outbox_acks", "intake_dead_letters",
                 "intake_relay_lag_events", "intake_relay_published_total",
                 "intake_relay_failures_total", "intake_relay_dead_lettered_total",
                 "intake_relay_oldest_wait_seconds", "intake_acks_total",
                 "intake_imap_seen_total", "intake_imap_accepted_total",
                 "intake_imap_quarantined_total", "intake_imap_reconnects_total",
                 "intake_imap_connected", "intake_smtp_messages_total",
                 "intake_smtp_senders_deferred_total", "intake_rate_limited_total",
                 "intake_connections_open", "intake_connections_refused_total",
                 "intake_tickets_at_risk", "intake_tickets_overdue", "intake_ready",
                 "intake_not_ready"):
        assert name in families, name
    # Every enabled channel is there from the start, before its first message.
    for kind in (a.kind for a in gw.adapters if a.receives):
        assert f'intake_messages_total{{channel="{kind}",outcome="created"}}' in text, kind
    for limit in ("webform", "smtp_sender", "smtp_client"):
        assert f'intake_rate_limited_total{{limit="{limit}"}}' in text, limit
    assert "intake_ready 1.0" in text
    for status in ("pending", "sent", "failed"):
        assert f'intake_outbox_acks{{status="{status}"}}' in text


async def test_state_gauges_follow_the_store(make_gateway: MakeGateway,
                                             http: aiohttp.ClientSession) -> None:
    gw = await make_gateway('[dashboard]\nat_risk_within = "3h"\n[adapters.webform]\n'
                            "rate_limit = 1\n")
    async with http.post(f"{gw.url}/v1/messages", json={
            "contact": {"email": "o@example.org"}, "text": "投诉：全部断网"}) as resp:
        assert resp.status in (200, 201)
    for _ in range(2):
        async with http.post(f"{gw.url}/form", data={"lang": "en", "email": "w@example.org",
                                                     "message": "hello"}) as resp:
            await resp.read()
    text = await _metrics(gw)
    assert "intake_tickets_at_risk 1.0" in text
    assert "intake_tickets_overdue 0.0" in text
    assert re.search(r'^intake_rate_limited_total\{limit="webform"\} [1-9]', text, re.MULTILINE)
    assert 'intake_messages_total{channel="api",outcome="created"}' in text


def _alert_rules() -> list[dict[str, str]]:
    """alert / expr / for / severity of each rule (a line-based read of our own file)."""
    rules: list[dict[str, str]] = []
    for line in (ROOT / "deploy/prometheus-alerts.yml").read_text().splitlines():
        match = re.match(r"\s*-?\s*(alert|expr|for|severity|summary):\s*(.+)$", line)
        if not match:
            continue
        if match.group(1) == "alert":
            rules.append({})
        rules[-1][match.group(1)] = match.group(2).strip()
    return rules


def _metric_names(expr: str) -> set[str]:
    expr = re.sub(r"\{[^}]*\}", "", expr)  # label matchers
    expr = re.sub(r"\[[^\]]*\]", "", expr)  # ranges
    expr = re.sub(r"\b(by|without)\s*\([^)]*\)", "", expr)  # grouping labels
    names = set(re.findall(r"\b(intake_[a-z_]+)\b", expr))
    return {re.sub(r"_(bucket|sum|count)$", "", n) for n in names}


async def test_alerts_and_grafana_name_only_metrics_that_exist(
        make_gateway: MakeGateway) -> None:
    gw = await make_gateway(SmtpDriver().config_toml())
    families = _families(await _metrics(gw))
    rules = _alert_rules()
    wanted = {"IntakeNotReady", "IntakeRelayLagging", "IntakeRelayStalled", "IntakeDeadLetters",
              "IntakeAckFailures", "IntakeTicketsAtRisk"}
    assert wanted <= {r["alert"] for r in rules}
    assert len({r["alert"] for r in rules}) == len(rules), "alert names repeat"
    for rule in rules:
        assert rule.get("severity") in ("critical", "warning", "info"), rule
        assert rule.get("summary"), rule
        for name in _metric_names(rule["expr"]):
            assert name in families, f"{rule['alert']}: {name} is not on /metrics"
    dashboard = json.loads((ROOT / "deploy/grafana-dashboard.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    assert len(exprs) >= 15 and len({p["id"] for p in dashboard["panels"]}) == len(
        dashboard["panels"])
    for expr in exprs:
        for name in _metric_names(expr):
            assert name in families, f"grafana: {name} is not on /metrics"
    shown = {n for e in exprs for n in _metric_names(e)}
    for part in ("intake_messages_total", "intake_relay_lag_events", "intake_dead_letters",
                 "intake_acks_total", "intake_imap_connected", "intake_rate_limited_total",
                 "intake_tickets_at_risk", "intake_ready", "intake_outbox_acks"):
        assert part in shown, part
