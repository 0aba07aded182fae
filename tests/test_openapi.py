"""The OpenAPI 3.1 document: valid, describing exactly the routes served, served with its page."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from openapi_spec_validator import validate

from gateway.openapi import committed_document
from tests.conftest import MakeGateway
from tests.openapi_gateway import every_route_config

ROOT = Path(__file__).resolve().parent.parent


def _operations(doc: dict[str, object]) -> set[tuple[str, str]]:
    paths = doc["paths"]
    assert isinstance(paths, dict)
    return {(method.upper(), path) for path, item in paths.items() for method in item}


def test_committed_document_is_valid_openapi_3_1() -> None:
    doc = json.loads((ROOT / "schemas/json/openapi.json").read_text())
    assert doc["openapi"] == "3.1.0"
    validate(doc)  # against the OAS 3.1 schema; raises on the first violation
    # schemas/json is checked for drift as a whole (tests/test_cli.py); this names the culprit.
    assert doc == json.loads(json.dumps(committed_document())), \
        "schemas/json/openapi.json is stale: run intake-gateway schema --out schemas/json"


def test_committed_document_names_every_channel_and_core_route() -> None:
    ops = _operations(committed_document())
    for expected in [("POST", "/v1/messages"), ("GET", "/v1/events"), ("GET", "/healthz"),
                     ("GET", "/readyz"), ("GET", "/metrics"), ("GET", "/form"),
                     ("POST", "/form"), ("POST", "/twilio/sms"), ("POST", "/telegram/webhook"),
                     ("GET", "/wechat"), ("POST", "/wechat"), ("POST", "/webhooks/{source}"),
                     ("GET", "/v1/messages/{uid}"), ("GET", "/openapi.json"), ("GET", "/docs")]:
        assert expected in ops


async def test_served_document_describes_exactly_the_routes_served(
        make_gateway: MakeGateway, tmp_path: Path) -> None:
    gw = await make_gateway(every_route_config(tmp_path / "secrets"))
    assert gw._runner is not None
    app = gw._runner.app
    # aiohttp adds HEAD for every GET; OpenAPI describes GET.
    served = {(r.method, r.resource.canonical) for r in app.router.routes()
              if r.resource is not None and r.method != "HEAD"}
    async with aiohttp.ClientSession() as s, s.get(f"{gw.url}/openapi.json") as resp:
        assert resp.status == 200 and resp.content_type == "application/json"
        doc = await resp.json()
    validate(doc)
    assert doc == json.loads(json.dumps(gw.openapi_document()))
    described = _operations(doc)
    assert served - described == set(), "routes served but not described"
    assert described - served == set(), "operations described but not served"
    # The configured source's own path, not the template of the committed document.
    assert ("POST", "/webhooks/reviews") in described


async def test_default_gateway_serves_only_its_enabled_adapters(
        make_gateway: MakeGateway) -> None:
    gw = await make_gateway()
    async with aiohttp.ClientSession() as s, s.get(f"{gw.url}/openapi.json") as resp:
        doc = await resp.json()
    paths = set(doc["paths"])
    assert "/v1/messages" in paths and "/form" in paths
    assert not {"/twilio/sms", "/wechat", "/telegram/webhook"} & paths


async def test_docs_page_lists_every_operation(make_gateway: MakeGateway,
                                               tmp_path: Path) -> None:
    gw = await make_gateway(every_route_config(tmp_path / "secrets"))
    async with aiohttp.ClientSession() as s:
        async with s.get(f"{gw.url}/openapi.json") as resp:
            doc = await resp.json()
        async with s.get(f"{gw.url}/docs") as resp:
            assert resp.status == 200 and resp.content_type == "text/html"
            csp = resp.headers["Content-Security-Policy"]
            page = await resp.text()
    assert "default-src 'none'" in csp and "<script" not in page.lower()
    sections = re.findall(r'<span class="method">(\w+)</span> <span class="path">([^<]+)</span>',
                          page)
    assert {(m.upper(), p) for m, p in sections} == _operations(doc)
    # Each operation's summary is shown, escaped (the docs are HTML, the descriptions text).
    for item in doc["paths"].values():
        for op in item.values():
            assert op["summary"].replace("'", "&#39;") in page


async def test_security_is_declared_only_where_it_is_in_force(
        make_gateway: MakeGateway, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def secured(doc: dict[str, Any], method: str, path: str) -> list[Any]:
        return list(doc["paths"][path][method].get("security", []))

    committed = committed_document()
    assert secured(committed, "get", "/v1/events") == [{"eventsToken": []}]
    assert secured(committed, "post", "/v1/messages") == []  # no secret by default

    monkeypatch.setenv("OPENAPI_TEST_TOKEN", "t0ken")
    monkeypatch.setenv("OPENAPI_TEST_SECRET", "s3cret")
    gw = await make_gateway('[server]\nevents_token_env = "OPENAPI_TEST_TOKEN"\n'
                            '[adapters.api]\nsecret_env = "OPENAPI_TEST_SECRET"\n')
    async with aiohttp.ClientSession() as s, s.get(f"{gw.url}/openapi.json") as resp:
        doc = await resp.json()
    assert secured(doc, "get", "/v1/events") == [{"eventsToken": []}]
    assert secured(doc, "post", "/v1/messages") == [{"apiSignature": []}]
    open_gw = await make_gateway()
    async with aiohttp.ClientSession() as s, s.get(f"{open_gw.url}/openapi.json") as resp:
        assert secured(await resp.json(), "get", "/v1/events") == []
