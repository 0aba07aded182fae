"""The downstream contract documents: AsyncAPI valid against the official 3.0.0 schema, and
every committed JSON Schema accepts real events the gateway produced."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema

from gateway.runtime import Gateway
from gateway.testing.harness import read_events

ROOT = Path(__file__).resolve().parent.parent


def test_asyncapi_document_is_valid_asyncapi_3() -> None:
    spec = json.loads((ROOT / "tests/asyncapi/asyncapi-3.0.0.schema.json").read_text())
    doc = json.loads((ROOT / "schemas/json/asyncapi.json").read_text())
    jsonschema.validate(doc, spec)
    assert doc["asyncapi"] == "3.0.0"
    names = {m["name"] for m in doc["components"]["messages"].values()}
    assert names == {"ticket.created", "ticket.message_added", "ticket.duplicate_received",
                     "ack.sent", "ack.failed"}


async def test_real_events_match_the_committed_json_schema(gateway: Gateway, http) -> None:
    for text in ("first", "first", "second"):
        async with http.post(f"{gateway.url}/v1/messages",
                             json={"contact": {"email": "schema@example.org"}, "text": text}):
            pass
    events = await read_events(http, gateway.url)
    assert [e["type"] for e in events] == ["ticket.created", "ticket.duplicate_received",
                                           "ticket.created"]
    schema = json.loads((ROOT / "schemas/json/event.json").read_text())
    for event in events:
        jsonschema.validate(event, schema)
        assert event["specversion"] == "1.0"
