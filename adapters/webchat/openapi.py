"""The OpenAPI description of the web chat's routes (gateway/plugin/openapi.py).

The protocol in words is docs/webchat.md; this is its machine-readable half. Every JSON route
answers the error body with CORS headers for an allowed Origin; a browser's request from an
origin the site does not list is 403, a request without Origin too unless the site allows apps.
"""

from __future__ import annotations

from typing import Any

from gateway.plugin import Answer, Body, Operation, Param, refused

_ENTRY: dict[str, Any] = {
    "type": "object", "required": ["seq", "kind", "at", "text"],
    "description": "One line of the conversation: a visitor's message with its receipt, or "
                   "a reply.",
    "properties": {
        "seq": {"type": "integer", "minimum": 1},
        "kind": {"enum": ["visitor", "reply"]},
        "at": {"type": "string", "description": "ISO 8601, UTC."},
        "text": {"type": "string"},
        "client_id": {"type": "string"},
        "attachments": {"type": "array", "items": {"type": "string"}},
        "ticket_number": {"type": "string"},
        "outcome": {"type": "string"},
        "due_at": {"type": "string"},
        "due_text": {"type": "string"},
        "ack": {"type": "string"},
        "reply_id": {"type": "string"},
    },
}
_OPTIONAL = {"type": ["string", "null"]}
_CLIENT_ID = {"type": "string", "pattern": "^[A-Za-z0-9_-]{8,64}$",
              "description": "The client's id of the message: a resend answers the first "
                             "entry again."}


def _json(properties: dict[str, Any], required: list[str], description: str = "") -> Body:
    schema: dict[str, Any] = {"type": "object", "required": required, "properties": properties,
                              "additionalProperties": False}
    if description:
        schema["description"] = description
    return Body(schema=schema)


def _ok(description: str, properties: dict[str, Any], required: list[str]) -> Answer:
    return Answer(status=200, description=description, body=Body(schema={
        "type": "object", "required": required, "properties": properties}))


_UNAUTHORIZED = refused(401, "No session token, or one forged, expired or revoked: start a "
                             "new session.")
_ORIGIN = refused(403, "This page's Origin is not allowed for the session's site (or no "
                       "Origin and the site takes no apps).")
_STORE = refused(503, "Temporarily unable to store it: retry after Retry-After.")


def webchat_operations(path: str) -> list[Operation]:
    """Every route of :meth:`WebchatAdapter.routes` under ``path`` (``/webchat``)."""
    p = "/" + path.strip("/")
    tag, session = "webchat", ("webchatSession",)
    static = Answer(status=200, description="The file (cached for 5 minutes).")
    return [
        Operation(method="get", path=f"{p}/widget.js", tag=tag, summary="The widget's script",
                  description="Embedded with `<script src=... data-site=KEY>`.",
                  answers=(Answer(status=200, description="The script.",
                                  body=Body(media_type="application/javascript")),)),
        Operation(method="get", path=f"{p}/widget.css", tag=tag, summary="The widget's styles",
                  answers=(Answer(status=200, description=static.description,
                                  body=Body(media_type="text/css")),)),
        Operation(
            method="post", path=f"{p}/v1/sessions", tag=tag, summary="Open a visitor session",
            description="Optional pre-chat fields (what the visitor types is a claim, never an "
                        "identity) and optionally a logged-in user's identity signed by the "
                        "site (HMAC-SHA256 of user id and email). Answers the session token "
                        "the other routes take as `Authorization: Bearer`.",
            body=_json({
                "site": {"type": "string", "description": "The site key."},
                "locale": _OPTIONAL, "name": _OPTIONAL, "email": _OPTIONAL, "phone": _OPTIONAL,
                "identity": {"type": ["object", "null"],
                             "required": ["user_id", "email", "signature"],
                             "additionalProperties": False,
                             "properties": {"user_id": {"type": "string"},
                                            "email": {"type": "string"},
                                            "signature": {"type": "string"},
                                            "name": _OPTIONAL}}}, ["site"]),
            answers=(_ok("The session.", {
                "token": {"type": "string"}, "session_id": {"type": "string"},
                "site": {"type": "string"}, "locale": {"type": "string"},
                "verified": {"type": "boolean"}, "expires_at": {"type": "string"}},
                ["token", "session_id", "site", "locale", "verified", "expires_at"]),
                refused(400, "Not the JSON described, a field that does not fit, a bad "
                             "identity signature."),
                refused(401, "The identity's signature does not match."),
                _ORIGIN, refused(404, "No such site key."),
                refused(429, "Too many new sessions from this address."), _STORE)),
        Operation(method="get", path=f"{p}/v1/session", tag=tag, security=session,
                  summary="The session the token names",
                  answers=(_ok("The session.", {
                      "session_id": {"type": "string"}, "site": {"type": "string"},
                      "locale": {"type": "string"}, "name": {"type": ["string", "null"]},
                      "verified": {"type": "boolean"}, "last_seq": {"type": "integer"}},
                      ["session_id", "site", "locale", "verified", "last_seq"]),
                      _UNAUTHORIZED, _ORIGIN, _STORE)),
        Operation(method="delete", path=f"{p}/v1/session", tag=tag, security=session,
                  summary="Revoke the session",
                  description="The token is refused from now on by every replica; its live "
                              "connections are closed (4001).",
                  answers=(_ok("Revoked.", {"revoked": {"const": True}}, ["revoked"]),
                           _UNAUTHORIZED, _ORIGIN, _STORE)),
        Operation(
            method="post", path=f"{p}/v1/messages", tag=tag, security=session,
            summary="Send a message (the HTTP fallback of the WebSocket)",
            description="Answers the message's entry with its ticket number, outcome and due "
                        "time. A resent `client_id` answers the first entry again.",
            body=_json({"client_id": _CLIENT_ID, "text": {"type": "string"},
                        "attachments": {"type": "array", "items": {"type": "string"},
                                        "description": "Upload ids (POST .../v1/uploads)."}},
                       ["client_id"], "Text, attachments or both."),
            answers=(_ok("The message's entry.", {"entry": _ENTRY}, ["entry"]),
                     refused(400, "Not the JSON described, an empty message, an unknown "
                                  "upload."),
                     _UNAUTHORIZED, _ORIGIN,
                     refused(429, "Too many messages from this chat or address."), _STORE)),
        Operation(
            method="get", path=f"{p}/v1/messages", tag=tag, security=session,
            summary="Catch up, or long-poll for what comes next",
            params=(Param(name="after", where="query", schema={"type": "integer", "minimum": 0},
                          description="The last seq the client has (0: everything kept)."),
                    Param(name="wait", where="query", schema={"type": "integer", "minimum": 0},
                          description="Seconds to wait for a new entry (at most 25).")),
            answers=(_ok("The entries after `after`.", {
                "entries": {"type": "array", "items": _ENTRY},
                "last_seq": {"type": "integer"}}, ["entries", "last_seq"]),
                refused(400, "after or wait is not a whole number."),
                _UNAUTHORIZED, _ORIGIN, _STORE)),
        Operation(
            method="post", path=f"{p}/v1/uploads", tag=tag, security=session,
            summary="Upload a file for a message",
            params=(Param(name="X-Filename", where="header",
                          description="The file's name, percent-encoded."),),
            body=Body(media_type="application/octet-stream"),
            answers=(_ok("The upload, named by a message's `attachments`.", {
                "upload_id": {"type": "string"}, "name": {"type": "string"},
                "size": {"type": "integer"}}, ["upload_id", "name", "size"]),
                refused(400, "The file is empty."), _UNAUTHORIZED, _ORIGIN,
                refused(429, "Too many uploads from this chat."), _STORE)),
        Operation(
            method="post", path=f"{p}/v1/devices", tag=tag, security=session,
            summary="Register an app device for notifications",
            body=_json({"kind": {"enum": ["fcm", "webhook"]},
                        "token": {"type": "string", "minLength": 1, "maxLength": 4096}},
                       ["kind", "token"]),
            answers=(_ok("Registered (at most 5 per session).", {
                "devices": {"type": "integer"}}, ["devices"]),
                refused(400, "Not the JSON described, or that push sender is not "
                             "configured."),
                _UNAUTHORIZED, _ORIGIN, _STORE)),
        Operation(
            method="get", path=f"{p}/v1/ws", tag=tag, summary="The live chat (WebSocket)",
            description="A WebSocket upgrade; the first frame is `{type: auth, token, after}` "
                        "within the auth timeout, then `message`, `catchup` and `ping` frames "
                        "(docs/webchat.md). A request that is not an upgrade is 400.",
            params=(Param(name="site", where="query", required=True,
                          description="The site key."),),
            answers=(Answer(status=101, description="Switching to the WebSocket protocol."),
                     Answer(status=400, description="Not a WebSocket upgrade.",
                            body=Body(media_type="text/plain")),
                     _ORIGIN, refused(404, "No such site key."),
                     refused(429, "Too many open connections from this address."),
                     refused(503, "The gateway is stopping: reconnect to another replica."))),
        Operation(
            method="options", path=p + "/v1/{tail}", tag=tag,
            summary="CORS preflight of the chat's routes",
            params=(Param(name="Origin", where="header",
                          description="The page's origin; allowed for some site."),),
            answers=(Answer(status=204, description="Allowed: methods and headers named."),
                     Answer(status=403, description="This origin is allowed for no site."),
                     Answer(status=404, description="A path no route takes (a line break in "
                                                    "it)."))),
    ]
