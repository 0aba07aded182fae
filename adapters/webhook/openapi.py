"""The OpenAPI description of the signed JSON webhooks (gateway/plugin/openapi.py)."""

from __future__ import annotations

from gateway.plugin import Answer, Body, Operation, Param, refused
from intake_schemas import Receipt


def webhook_operations(paths: list[tuple[str, str]]) -> list[Operation]:
    """One POST route per (source name, path); with no source, the default path template."""
    sources = paths or [("{source}", "/webhooks/{source}")]
    return [Operation(
        method="post", path=path, tag="webhook", summary=f"A signed JSON webhook ({name})",
        description="The payload is mapped onto the message by the source's `mapping`; a "
                    "redelivery returns the first receipt.",
        params=tuple(Param(name=h, where="header", description=d) for h, d in (
            ("webhook-id", "Standard Webhooks: the delivery's id."),
            ("webhook-timestamp", "Standard Webhooks: Unix seconds."))),
        body=Body(schema={"type": "object", "description": "The platform's JSON."}),
        security=("webhookSignature",),
        answers=(Answer(status=200, description="The receipt.", body=Body(schema=Receipt)),
                 refused(400, "Not UTF-8 JSON, or nested too deeply."),
                 refused(401, "The signature headers are missing or the timestamp is stale."),
                 refused(403, "The signature does not match."),
                 refused(409, "This exact signed request was accepted already."),
                 refused(422, "The payload does not fit the mapping (the reason names the "
                              "path).")))
        for name, path in sources]
