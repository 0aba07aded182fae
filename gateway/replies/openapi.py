"""The replies' routes, for the OpenAPI document (gateway/openapi.py)."""

from __future__ import annotations

from gateway.plugin.openapi import Answer, Body, Operation, Param, refused
from intake_schemas.replies import ReplyAccepted, ReplyRequest


def reply_operations(*, signed: bool, rating_page: bool) -> tuple[Operation, ...]:
    """``POST /v1/tickets/{number}/replies``, and the rating page when its links are signed."""
    ops = [Operation(
        method="post", path="/v1/tickets/{number}/replies", tag="replies",
        summary="Answer the customer on their own channel",
        description="Queues a reply to the ticket's customer: by default on the channel and "
                    "identity of their latest message, threaded where the channel threads. "
                    "Answers 202 once the reply is durable in the outbox; its fate arrives as "
                    "reply.sent / reply.delivered / reply.failed events. A retry with the same "
                    "Idempotency-Key returns the first answer and sends nothing.",
        params=(Param(name="number", where="path", description="The ticket number."),
                Param(name="Idempotency-Key", where="header", required=True,
                      schema={"type": "string", "minLength": 1, "maxLength": 200},
                      description="The caller's id of this reply."),
                # Only where signing is in force: unsigned (loopback), the header is not read,
                # so a malformed one is not refused (found by the fuzzer once a ticket existed).
                *((Param(name="X-Intake-Timestamp", where="header",
                         schema={"type": "string", "pattern": "^[0-9]{1,12}$"},
                         description="Unix seconds the request was signed at."),)
                  if signed else ())),
        body=Body(schema=ReplyRequest),
        security=("apiSignature",) if signed else (),
        answers=(Answer(status=202, description="Queued (or, for a retry, as first answered).",
                        body=Body(schema=ReplyAccepted)),
                 refused(400, "Not application/json, not the reply schema, or no "
                              "Idempotency-Key."),
                 refused(401, "Unsigned, or the timestamp is outside the window."),
                 refused(403, "The signature does not match the body."),
                 refused(404, "No ticket has this number."),
                 refused(409, "This exact signed request was accepted already."),
                 refused(422, "No channel can reach the customer now (the reason says why), or "
                              "the Idempotency-Key was used for another reply.")))]
    if rating_page:
        ops += [
            Operation(method="get", path="/v1/ratings/{reply_id}", tag="replies",
                      summary="The one-question satisfaction page of a resolution",
                      params=(Param(name="sig", where="query", required=True,
                                    description="The link's signature."),
                              Param(name="l", where="query",
                                    description="The customer's language.")),
                      answers=(Answer(status=200, description="The question.",
                                      body=Body(media_type="text/html")),
                               refused(403, "The link is not valid."),
                               Answer(status=410, description="Rated already, or expired.",
                                      body=Body(media_type="text/html")))),
            Operation(method="post", path="/v1/ratings/{reply_id}", tag="replies",
                      summary="Rate a resolution, 1 to 5 (becomes a ticket.rated event)",
                      params=(Param(name="sig", where="query", required=True,
                                    description="The link's signature."),
                              Param(name="l", where="query",
                                    description="The customer's language.")),
                      body=Body(media_type="application/x-www-form-urlencoded",
                                schema={"type": "object", "required": ["rating"],
                                        "properties": {"rating": {"type": "string"}}}),
                      answers=(Answer(status=200, description="Thanks.",
                                      body=Body(media_type="text/html")),
                               refused(400, "rating must be 1 to 5."),
                               refused(403, "The link is not valid."),
                               Answer(status=410, description="Rated already, or expired.",
                                      body=Body(media_type="text/html")))),
        ]
    return tuple(ops)
