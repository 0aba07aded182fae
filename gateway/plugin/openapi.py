"""How a route module describes its HTTP operations for the gateway's OpenAPI 3.1 document.

Every module that serves routes (an adapter, a core route module) declares each of them once,
next to the route, as an :class:`Operation`; ``gateway/openapi.py`` assembles the document that is
committed as ``schemas/json/openapi.json`` and served at ``/openapi.json``. A schema is either a
msgspec type (a Struct, a union of Structs: it lands in ``components/schemas``) or a JSON Schema
``dict`` written out.

A test compares the routes the running application serves with the operations described, so a
route added without its description fails the suite.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

Method = Literal["get", "post", "put", "patch", "delete", "options"]


@dataclass(frozen=True, kw_only=True)
class Body:
    """A request or response body of one media type."""

    media_type: str = "application/json"
    schema: Any = None
    """A msgspec type, a JSON Schema dict, or None for bytes of that media type."""


@dataclass(frozen=True, kw_only=True)
class Answer:
    """One documented response status."""

    status: int
    description: str
    body: Body | None = None
    headers: tuple[str, ...] = ()
    """Response headers worth naming (``Retry-After``), each a string."""


@dataclass(frozen=True, kw_only=True)
class Param:
    """A path, query or header parameter."""

    name: str
    where: Literal["path", "query", "header"]
    description: str
    schema: dict[str, Any] = field(default_factory=lambda: {"type": "string"})
    required: bool = False


@dataclass(frozen=True, kw_only=True)
class Operation:
    """One method on one path, as a route module serves it."""

    method: Method
    path: str
    """The route's path; ``{name}`` segments are path parameters, as in aiohttp."""
    summary: str
    tag: str
    """The group on the docs page: the adapter's kind or the core area (``health``)."""
    description: str = ""
    params: tuple[Param, ...] = ()
    body: Body | tuple[Body, ...] | None = None
    """The request body (one or several media types), or None."""
    answers: tuple[Answer, ...] = ()
    security: tuple[str, ...] = ()
    """Names of :data:`SECURITY_SCHEMES` any one of which admits the request."""
    operation_id: str = ""
    """Stable id; defaults to ``<method>_<path>`` made an identifier."""


SECURITY_SCHEMES: dict[str, dict[str, Any]] = {
    "eventsToken": {"type": "http", "scheme": "bearer",
                    "description": "server.events_token: required when one is configured."},
    "apiSignature": {"type": "apiKey", "in": "header", "name": "X-Intake-Signature",
                     "description": "`sha256=` + hex HMAC-SHA256 over `\"{timestamp}.\" + body` "
                                    "with adapters.api's secret, with X-Intake-Timestamp "
                                    "(Unix seconds); required once a secret is set."},
    "twilioSignature": {"type": "apiKey", "in": "header", "name": "X-Twilio-Signature",
                        "description": "Twilio's request signature over the public URL and "
                                       "the form parameters, with the account's auth token."},
    "telegramSecret": {"type": "apiKey", "in": "header",
                       "name": "X-Telegram-Bot-Api-Secret-Token",
                       "description": "The secret_token given to setWebhook."},
    "wechatSignature": {"type": "apiKey", "in": "query", "name": "signature",
                        "description": "SHA-1 of the sorted token, timestamp and nonce "
                                       "(with msg_signature for encrypted pushes)."},
    "dashboardToken": {"type": "http", "scheme": "bearer",
                       "description": "dashboard.token_env / token_file, as a Bearer header or "
                                      "through the login page's session cookie."},
    "webchatSession": {"type": "http", "scheme": "bearer",
                       "description": "A web chat session token from POST "
                                      "/webchat/v1/sessions, with an Origin the site allows."},
    "webhookSignature": {"type": "apiKey", "in": "header", "name": "webhook-signature",
                         "description": "Standard Webhooks `v1,<base64 HMAC>` with "
                                        "webhook-id and webhook-timestamp, or the source's "
                                        "HMAC header (X-Hub-Signature-256, "
                                        "X-Shopify-Hmac-Sha256) per its `signature`."},
}
"""The ways requests authenticate, named by :attr:`Operation.security`."""

ERROR_SCHEMA: dict[str, Any] = {
    "type": "object", "required": ["error"],
    "properties": {"error": {"type": "string", "description": "What to fix, in words."},
                   "field": {"type": "string", "description": "The field at fault."}},
}
"""The JSON body of every 4xx and 503 the core maps from the error tree (gateway/http.py)."""


def refused(status: int, why: str) -> Answer:
    """A 4xx/503 answer with the error body."""
    headers = ("Retry-After",) if status in (429, 503) else ()
    return Answer(status=status, description=why,
                  body=Body(schema={"$ref": "#/components/schemas/Error"}), headers=headers)


COMMON_REFUSALS: tuple[Answer, ...] = (
    refused(413, "The body is larger than the limit."),
    refused(503, "Temporarily unable to store it (store busy, disk full, too many "
                 "connections): retry after Retry-After."),
)
"""What any route may answer besides its own outcomes."""
