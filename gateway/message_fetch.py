"""The by-reference half of events: a whole stored message and its attachments, over HTTP.

An event carries at most ``intake.event_inline_bytes`` of words (gateway/inline.py) and each
attachment only by sha256; its ``body_url`` names ``GET /v1/messages/{id}``, and each file is at
``GET /v1/messages/{id}/attachments/{sha256}``. Both take the events token, like ``/v1/events``:
whoever may read the event stream may read what it refers to, and nobody else.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Protocol

import msgspec
from aiohttp import web

from gateway.attachments import AttachmentStore
from gateway.errors import NotFound, RejectedInput
from gateway.plugin.openapi import Answer, Body, Operation, Param, refused
from intake_schemas import InboundMessage

_UID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
_SHA = re.compile(r"^[0-9a-f]{64}$")
_decode = msgspec.msgpack.Decoder(InboundMessage).decode
_encode = msgspec.json.Encoder().encode


class StoredMessages(Protocol):
    """The store's read of one message (gateway/store/)."""

    async def message_body(self, uid: str) -> bytes | None:
        """The stored ``InboundMessage`` (msgpack) of message ``uid``, or None."""
        ...


def message_routes(store: StoredMessages, files: AttachmentStore,
                   authorize: Callable[[web.Request], None]) -> list[web.RouteDef]:
    """The two GET routes; ``authorize`` raises for a request without the events token."""

    async def load(request: web.Request) -> InboundMessage:
        authorize(request)
        uid = request.match_info["uid"]
        if not _UID.match(uid):
            raise RejectedInput("not a message id: use the id (or body_url) of an event")
        body = await store.message_body(uid)
        if body is None:
            raise NotFound("no message with that id")
        return _decode(body)

    async def whole(request: web.Request) -> web.Response:
        message = await load(request)
        return web.Response(body=_encode(message), content_type="application/json",
                            headers={"Cache-Control": "no-store"})

    async def attachment(request: web.Request) -> web.StreamResponse:
        message = await load(request)
        sha = request.match_info["sha256"]
        # Only files of this message: the URL names both, so one cannot probe the store.
        found = next((a for a in message.attachments if _SHA.match(sha) and a.sha256 == sha),
                     None)
        if found is None:
            raise NotFound("that message has no attachment with this sha256")
        headers = {"Content-Type": found.content_type if "/" in found.content_type
                   else "application/octet-stream",
                   "Content-Disposition": "attachment",
                   "X-Content-Type-Options": "nosniff", "Cache-Control": "no-store"}
        if files.blobs is not None:  # replicas: from the shared store, whoever took it in
            data = await files.read(sha)
            if data is None:
                raise NotFound("the attachment was purged")
            return web.Response(body=data, headers=headers)
        path = files.path_of(sha)
        if not path.is_file():
            raise NotFound("the attachment was purged")
        return web.FileResponse(path, headers=headers)

    return [web.get("/v1/messages/{uid}", whole),
            web.get("/v1/messages/{uid}/attachments/{sha256}", attachment)]


MESSAGE_OPERATIONS: tuple[Operation, ...] = (
    Operation(method="get", path="/v1/messages/{uid}", tag="events",
              summary="A whole stored message (an event's body_url)",
              params=(Param(name="uid", where="path", required=True,
                            schema={"type": "string", "format": "uuid"},
                            description="The message id an event names."),),
              security=("eventsToken",),
              answers=(Answer(status=200, description="The InboundMessage.",
                              body=Body(schema=InboundMessage)),
                       refused(400, "Not a message id."),
                       refused(401, "The bearer token is missing or wrong."),
                       refused(404, "No message with that id."))),
    Operation(method="get", path="/v1/messages/{uid}/attachments/{sha256}", tag="events",
              summary="One attachment of a stored message",
              params=(Param(name="uid", where="path", required=True,
                            schema={"type": "string", "format": "uuid"},
                            description="The message id an event names."),
                      Param(name="sha256", where="path", required=True,
                            schema={"type": "string", "pattern": "^[0-9a-f]{64}$"},
                            description="The attachment's sha256, as the event lists it.")),
              security=("eventsToken",),
              answers=(Answer(status=200, description="The file, as an attachment download.",
                              body=Body(media_type="application/octet-stream")),
                       refused(400, "Not a message id."),
                       refused(401, "The bearer token is missing or wrong."),
                       refused(404, "No such message or attachment, or it was purged."))),
)
"""The OpenAPI description of :func:`message_routes` (gateway/openapi.py)."""
