"""Schemathesis against a live gateway, from the gateway's own /openapi.json: zero 5xx.

The gateway runs as its console script would (a child process serving every HTTP adapter);
schemathesis generates valid and invalid requests for every operation from the document and
checks each answer. Bounded by tests/schemathesis.toml (a fixed seed, 20 examples per
operation and phase). Besides "not a server error", each answer must match the document
(status, content type, schema, headers) and invalid input must be refused. Left out:
``positive_data_acceptance``, because "an email, a phone or a chat id" and "text or a file"
are rules across fields that JSON Schema in the document does not state, and the stateful
checks that need a resource schemathesis cannot create (``use_after_free`` and the like find
nothing to act on here). Telegram's webhook is fuzzed behind its secret header, Twilio's and
WeChat's behind signatures tests/schemathesis_hooks.py computes for each request; the JSON
webhook sources sign the raw body, which a hook cannot see, so for them only the signature
check is fuzzed.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest

from gateway.runtime import Gateway
from tests.conftest import MakeGateway
from tests.openapi_gateway import SECRETS, TELEGRAM_SECRET, WEBCHAT_SITE, every_route_config

ROOT = Path(__file__).resolve().parent.parent
TOKEN = "fuzz-events-token"
CHECKS = ("not_a_server_error,status_code_conformance,content_type_conformance,"
          "response_schema_conformance,response_headers_conformance,negative_data_rejection,"
          "ignored_auth,missing_required_header,unsupported_method")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def live_gateway(tmp_path: Path) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """``intake-gateway serve`` with every HTTP adapter, an events token and no form limit."""
    config = tmp_path / "gateway.toml"
    config.write_text(every_route_config(
        tmp_path / "secrets", head='[server]\nevents_token_env = "FUZZ_EVENTS_TOKEN"\n',
        form_rate_limit=0))
    url = f"http://127.0.0.1:{_free_port()}"
    log = (tmp_path / "gateway.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "gateway.cli", "serve", "--config", str(config), "--data-dir",
         str(tmp_path / "data"), "--listen", url.removeprefix("http://")],
        cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
        env={**os.environ, "FUZZ_EVENTS_TOKEN": TOKEN})
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, (tmp_path / "gateway.log").read_text()
            try:
                with socket.create_connection(("127.0.0.1", int(url.rsplit(":", 1)[1])), 0.5):
                    break
            except OSError:
                assert time.monotonic() < deadline, "the gateway did not start listening"
                time.sleep(0.05)
        yield url, proc
    finally:
        proc.terminate()
        proc.wait(30)
        log.close()


def test_schemathesis_finds_no_server_error(
        live_gateway: tuple[str, subprocess.Popen[bytes]], tmp_path: Path) -> None:
    url, proc = live_gateway
    reports = tmp_path / "reports"
    st = Path(sys.executable).with_name("st")
    res = subprocess.run(
        [str(st), "--config-file", str(ROOT / "tests/schemathesis.toml"), "--no-color", "run",
         f"{url}/openapi.json", "--checks", CHECKS, "-H", f"Authorization: Bearer {TOKEN}",
         # Telegram's secret is a fixed header: with it the updates' parsing is fuzzed too.
         "-H", f"X-Telegram-Bot-Api-Secret-Token: {TELEGRAM_SECRET}",
         "--report", "ndjson", "--report-dir", str(reports)],
        capture_output=True, text=True, timeout=540, cwd=tmp_path,
        env={**os.environ, "SCHEMATHESIS_HOOKS": "tests.schemathesis_hooks",
             "PYTHONPATH": str(ROOT), "FUZZ_BASE_URL": url,
             "FUZZ_TWILIO_TOKEN": SECRETS["twilio"], "FUZZ_WECHAT_TOKEN": SECRETS["wechat"],
             "FUZZ_WEBCHAT_SITE": WEBCHAT_SITE,
             "FUZZ_WEBCHAT_TOKEN": _webchat_session(url)})
    assert res.returncode == 0, res.stdout[-20000:] + res.stderr[-5000:]

    # Zero 5xx, counted from every response recorded, not only from the checks' verdict.
    answers = [(label, status) for report in reports.glob("*.ndjson")
               for label, status in _answers(report)]
    assert len(answers) > 500, "schemathesis sent fewer requests than expected"
    assert [a for a in answers if a[1] >= 500] == []
    # The hooks' signatures got through: the fuzzer reached behind Twilio's and WeChat's checks.
    taken = {label for label, status in answers if 200 <= status < 300}
    assert {"POST /twilio/voice", "POST /twilio/status", "GET /wechat",
            "POST /telegram/webhook", "POST /v1/messages", "POST /form",
            "POST /webchat/v1/sessions", "POST /webchat/v1/messages",
            "GET /webchat/v1/messages"} <= taken
    assert proc.poll() is None, "the gateway died under the fuzzer"
    gateway_log = (tmp_path / "gateway.log").read_text()
    assert "unhandled error" not in gateway_log


def _webchat_session(url: str) -> str:
    """A web chat session's token, opened as an app opens one (the site takes apps): the
    fuzzer sends it on the chat's routes (tests/schemathesis.toml)."""
    body = json.dumps({"site": WEBCHAT_SITE}).encode()
    request = urllib.request.Request(f"{url}/webchat/v1/sessions", data=body,
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as resp:
        return str(json.loads(resp.read())["token"])


def _answers(report: Path) -> Iterator[tuple[str, int]]:
    """(operation, status) of every response schemathesis recorded in its NDJSON report."""
    for line in report.read_text().splitlines():
        finished = json.loads(line).get("ScenarioFinished")
        if not finished:
            continue
        recorder = finished["recorder"]
        for interaction in recorder.get("interactions", {}).values():
            response = interaction.get("response")
            if response is not None:
                yield recorder["label"], int(response["status_code"])


async def test_events_refuses_what_sql_cannot_hold_and_nan(make_gateway: MakeGateway) -> None:
    # Found with the document: `after` beyond 64 bits reached SQLite and answered 500.
    gw: Gateway = await make_gateway()
    async with aiohttp.ClientSession() as s:
        for query in ({"after": str(2**63)}, {"after": "9" * 30}, {"wait": "nan"},
                      {"after": "-1"}, {"limit": "x"}):
            async with s.get(f"{gw.url}/v1/events", params=query) as resp:
                assert resp.status == 400, query
        async with s.get(f"{gw.url}/v1/events", params={"after": str(2**63 - 1)}) as resp:
            assert resp.status == 200 and (await resp.json())["events"] == []
