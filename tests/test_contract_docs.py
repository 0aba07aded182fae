"""The downstream contract documents: AsyncAPI valid against the official 3.0.0 schema, and
every committed JSON Schema accepts real events the gateway produced."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import jsonschema
import pytest

from gateway.testing.harness import read_events
from intake_adapters.api import sign_request
from tests.conftest import MakeGateway

ROOT = Path(__file__).resolve().parent.parent


def test_asyncapi_document_is_valid_asyncapi_3() -> None:
    spec = json.loads((ROOT / "tests/asyncapi/asyncapi-3.0.0.schema.json").read_text())
    doc = json.loads((ROOT / "schemas/json/asyncapi.json").read_text())
    jsonschema.validate(doc, spec)
    assert doc["asyncapi"] == "3.0.0"
    names = {m["name"] for m in doc["components"]["messages"].values()}
    assert names == {"ticket.created", "ticket.message_added", "ticket.duplicate_received",
                     "message.automated", "ack.sent", "ack.failed", "reply.queued",
                     "reply.sent", "reply.delivered", "reply.failed", "ticket.rated"}


async def test_real_events_match_the_committed_json_schema(make_gateway: MakeGateway,
                                                           http) -> None:
    # Signed, so the contact is verified and the repeat is a duplicate (a claim's is a ticket).
    os.environ["INTAKE_DOCS_API_SECRET"] = "docs-secret"
    gateway = await make_gateway('[adapters.api]\nsecret_env = "INTAKE_DOCS_API_SECRET"\n')
    # Other bytes, same words: a byte-identical signed request would be refused as a replay.
    for text in ("first", "  First", "second"):
        body = json.dumps({"contact": {"email": "schema@example.org"}, "text": text}).encode()
        ts = str(int(time.time()))
        async with http.post(f"{gateway.url}/v1/messages", data=body, headers={
                "Content-Type": "application/json", "X-Intake-Timestamp": ts,
                "X-Intake-Signature": sign_request("docs-secret", ts, body)}) as resp:
            assert resp.status < 300
    events = await read_events(http, gateway.url)
    assert [e["type"] for e in events] == ["ticket.created", "ticket.duplicate_received",
                                           "ticket.created"]
    schema = json.loads((ROOT / "schemas/json/event.json").read_text())
    for event in events:
        jsonschema.validate(event, schema)
        assert event["specversion"] == "1.0"


def test_the_api_request_body_is_published_as_json_schema() -> None:
    schema = json.loads((ROOT / "schemas/json/api-message.json").read_text())
    good = {"contact": {"name": "李雷", "phone": "+8613800138000"}, "text": "订单1234一直没有发货",
            "locale": "zh-CN", "ticket_number": "CX-20261123-00042-7",
            "in_reply_to": "abc@gw.example"}
    jsonschema.validate(good, schema)
    props = schema["$defs"]["ApiMessage"]["properties"]
    assert {"ticket_number", "in_reply_to", "contact", "text", "attachments"} <= set(props)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({**good, "unknown": 1}, schema)
