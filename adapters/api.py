"""``POST /v1/messages``: the JSON API for integrators, with optional HMAC request signing."""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from typing import ClassVar

import msgspec
from aiohttp import web

from gateway.errors import RejectedInput
from gateway.plugin import (
    AdapterBase,
    AdapterContext,
    Answer,
    Body,
    Intake,
    Operation,
    Param,
    RequestSigner,
    normalize_email,
    normalize_phone,
    parse_duration,
    refused,
    resolve_secret,
    sign_request,
)
from gateway.plugin.signing import SignatureReplayed
from intake_schemas import Contact, InboundMessage, Receipt, ThreadHints
from intake_schemas.api import ApiMessage

__all__ = ["ApiAdapter", "ApiConfig", "SignatureReplayed", "sign_request"]


class ApiConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """``[adapters.api]``."""

    enabled: bool = True
    path: str = "/v1/messages"
    secret_env: str | None = None
    """Environment variable with the HMAC-SHA256 signing secret; unsigned requests are refused
    once a secret is set. Required when the gateway listens off loopback."""
    secret_file: str | None = None
    replay_window: str = "5m"
    """How far a request's ``X-Intake-Timestamp`` may be from our clock. Within it every
    signature is accepted once (remembered durably, across restarts); a byte-identical repeat
    is refused with 409, so a retry is signed afresh and carries the same Idempotency-Key."""
    default_region: str = "CN"
    """Region used to read phone numbers written without a country code."""


_decoder = msgspec.json.Decoder(ApiMessage)
_encode = msgspec.json.Encoder().encode
_MAX_KEY = 200


_LANGUAGE_TAG = re.compile(r"^[A-Za-z]{1,8}(?:-[A-Za-z0-9]{1,8})*$")


def _header_locale(accept_language: str | None) -> str | None:
    """The first tag of ``Accept-Language`` when it is one; a header is a hint, never an error
    (undecodable bytes arrive as surrogates, and ``*`` or junk name no language)."""
    tag = (accept_language or "").split(",")[0].split(";")[0].strip()
    return tag if _LANGUAGE_TAG.match(tag) else None


class ApiAdapter(AdapterBase):
    """JSON in, receipt out: 201 with the ticket for ``created``, 200 for the other outcomes."""

    kind: ClassVar[str] = "api"
    Config: ClassVar[type[msgspec.Struct]] = ApiConfig
    requires_auth_off_loopback: ClassVar[bool] = True

    def __init__(self, config: ApiConfig, intake: Intake, ctx: AdapterContext) -> None:
        super().__init__(config, intake, ctx)
        self.config: ApiConfig = config
        self.secret = resolve_secret(config.secret_env, config.secret_file,
                                     key="adapters.api.secret")
        self.window = parse_duration(config.replay_window, key="adapters.api.replay_window")
        self.signer = (None if self.secret is None else RequestSigner(
            self.secret, window=self.window.total_seconds(), scope="api:signature"))

    @property
    def authenticated(self) -> bool:
        """Signed requests only once a secret is set."""
        return self.secret is not None

    def routes(self) -> Iterable[web.AbstractRouteDef]:
        return [web.post(self.config.path, self.handle)]

    @classmethod
    def http_operations(cls, config: ApiConfig) -> Sequence[Operation]:
        return [Operation(
            method="post", path=config.path, tag="api", summary="Submit a customer message",
            description="The integrators' JSON API. Answers only once the message, its ticket "
                        "and its acknowledgement are durable; a retry with the same "
                        "Idempotency-Key returns the first receipt.",
            params=(Param(name="Idempotency-Key", where="header",
                          schema={"type": "string", "minLength": 1, "maxLength": _MAX_KEY},
                          description="The client's id of this message: a repeat returns the "
                                      "first receipt (outcome `replayed`)."),
                    Param(name="X-Intake-Timestamp", where="header",
                          schema={"type": "string", "pattern": "^[0-9]{1,12}$"},
                          description="Unix seconds the request was signed at (signed API)."),
                    Param(name="Accept-Language", where="header",
                          description="The customer's language when `locale` is absent.")),
            body=Body(schema=ApiMessage),
            security=("apiSignature",) if config.secret_env or config.secret_file else (),
            answers=(Answer(status=201, description="A new ticket.", body=Body(schema=Receipt)),
                     Answer(status=200, description="A follow-up, duplicate or replay: the "
                            "receipt names the ticket.", body=Body(schema=Receipt)),
                     refused(400, "Not application/json, not the message schema (the reason "
                                  "names the field), or nothing to answer the customer at."),
                     refused(401, "Unsigned, or the timestamp is outside the window."),
                     refused(403, "The signature does not match the body."),
                     refused(409, "This exact signed request was accepted already: sign the "
                                  "retry afresh."),
                     refused(429, "Too many requests: retry after Retry-After.")))]

    async def _verify(self, request: web.Request, body: bytes) -> None:
        assert self.signer is not None
        await self.signer.verify(request.headers, body, now=self.ctx.clock().timestamp(),
                                 first_use=self.intake.first_use)

    async def handle(self, request: web.Request) -> web.Response:
        """Verify, decode, submit, answer with the receipt."""
        ctype = request.content_type
        if ctype != "application/json":
            raise RejectedInput(f"send the message as application/json, not {ctype or 'nothing'}")
        body = await request.read()
        if self.secret is not None:
            await self._verify(request, body)
        key = request.headers.get("Idempotency-Key")
        if key is not None and (not key.isprintable() or not 0 < len(key) <= _MAX_KEY):
            raise RejectedInput(f"Idempotency-Key must be 1 to {_MAX_KEY} printable characters")
        try:
            req = _decoder.decode(body)
        except msgspec.ValidationError as exc:
            raise RejectedInput(f"the JSON does not match the message schema: {exc}") from None
        except (msgspec.DecodeError, UnicodeDecodeError) as exc:
            raise RejectedInput(f"the body is not valid UTF-8 JSON: {exc}") from None
        message = await self._to_message(req, key, request.headers.get("Accept-Language"))
        receipt = await self.intake.submit(message)
        status = 201 if receipt.outcome == "created" else 200
        return web.Response(body=_encode(receipt), status=status, content_type="application/json")

    async def _to_message(self, req: ApiMessage, key: str | None,
                          accept_language: str | None) -> InboundMessage:
        c = req.contact
        contact = Contact(
            name=(c.name or "").strip() or None,
            email=normalize_email(c.email, field="contact.email") if c.email else None,
            phone=(normalize_phone(c.phone, default_region=self.config.default_region,
                                   field="contact.phone") if c.phone else None),
            chat_ids=c.chat_ids,
            # Signed with our secret: the client vouches for these identities. Unsigned, they
            # are claims, which never join or change another customer's contact.
            verified_by="api-signature" if self.secret is not None else None,
        )
        attachments = [await self.intake.store_attachment(a.data, name=a.name,
                                                          content_type=a.content_type)
                       for a in req.attachments]
        locale = req.locale or _header_locale(accept_language)
        return InboundMessage(
            channel=self.kind, provider_message_id=key, received_at=self.ctx.clock(),
            contact=contact,
            subject=req.subject.strip(), text=req.text, attachments=attachments,
            thread=ThreadHints(in_reply_to=req.in_reply_to, ticket_number=req.ticket_number),
            locale=locale or None, customer_type=req.customer_type,
            order_number=req.order_number, device_model=req.device_model, kind=req.kind,
            metadata=req.metadata,
        )
