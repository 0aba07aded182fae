"""The generic signed JSON webhook: any platform that can POST JSON becomes a channel."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Sequence
from typing import Any, ClassVar

import msgspec
from aiohttp import web

from gateway.errors import ConfigError, RejectedInput, TooLarge, Unauthorized
from gateway.plugin import (
    AdapterBase,
    AdapterContext,
    Inline,
    Intake,
    normalize_email,
    normalize_phone,
    parse_duration,
    resolve_secret,
)
from gateway.plugin.openapi import Operation
from intake_adapters.webhook.config import MappingConfig, SourceConfig, WebhookConfig
from intake_adapters.webhook.mapping import Path, PayloadMismatch
from intake_adapters.webhook.openapi import webhook_operations
from intake_adapters.webhook.signatures import SCHEMES, BodyHmac, Scheme, StandardWebhooks
from intake_schemas import Contact, InboundMessage, ThreadHints

_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,39}$")
_LANGUAGE_TAG = re.compile(r"^(?=.{1,35}$)[A-Za-z]{1,8}(?:-[A-Za-z0-9]{1,8})*$")
_MAX_ID = 200
"""Characters of an id the payload gives (idempotency key, chat id, order number...)."""
_CHUNK = 65_536
_encode = msgspec.json.Encoder().encode
_decode = msgspec.json.Decoder().decode


class SignatureReplayed(Unauthorized):
    """This exact signed request was accepted already: HTTP 409, the sender signs afresh."""

    status = 409


class Source:
    """One configured source, checked and ready: its scheme, its paths, its limits."""

    def __init__(self, config: SourceConfig, *, index: int, body_limit: int) -> None:
        key = f"adapters.webhook.sources[{index}]"
        if not _NAME.match(config.name):
            raise ConfigError(f"{key}.name: {config.name!r} must be 1 to 40 lower-case letters, "
                              "digits, '-' or '_', starting with a letter or digit")
        self.name = config.name
        key = f"adapters.webhook source {config.name!r}"
        self.config = config
        self.path = config.path or f"/webhooks/{config.name}"
        if not self.path.startswith("/"):
            raise ConfigError(f"{key}: path must start with '/', got {self.path!r}")
        self.scheme = _scheme(config, key=key)
        if config.max_body_bytes is not None and config.max_body_bytes <= 0:
            raise ConfigError(f"{key}: max_body_bytes must be positive")
        # The listener's own limit still holds: a source may only lower it.
        self.body_limit = min(config.max_body_bytes or body_limit, body_limit)
        self.verified_by = f"webhook:{config.name}" if config.identities_verified else None
        self.idempotency = (Path(config.idempotency, key=f"{key}: idempotency")
                            if config.idempotency else None)
        self.fields = _fields(config.mapping, key=key)

    def read(self, payload: Any, field: str, *, limit: int | None = _MAX_ID) -> str | None:
        path = self.fields.get(field)
        return path.read(payload, field=field, limit=limit) if path else None


def _scheme(config: SourceConfig, *, key: str) -> Scheme:
    if config.signature not in SCHEMES:
        raise ConfigError(f"{key}: signature = {config.signature!r} is not a scheme we know; "
                          f"choose one of {', '.join(SCHEMES)}")
    secret = resolve_secret(config.secret_env, config.secret_file, key=f"{key}: secret")
    if secret is None:
        raise ConfigError(f"{key}: set secret_env or secret_file, the signing secret the "
                          "platform shows; unsigned webhooks are not accepted")
    if config.signature == "standard-webhooks":
        if config.signature_header is not None or config.signature_prefix is not None:
            raise ConfigError(f"{key}: Standard Webhooks has fixed headers; remove "
                              "signature_header and signature_prefix")
        tolerance = parse_duration(config.tolerance or "5m", key=f"{key}: tolerance")
        return StandardWebhooks(secret, tolerance=tolerance.total_seconds(), key=key)
    if config.tolerance is not None:
        raise ConfigError(f"{key}: {config.signature} signs no timestamp, so tolerance means "
                          "nothing; remove it")
    return BodyHmac(config.signature, secret, header=config.signature_header,
                    prefix=config.signature_prefix)


def _fields(mapping: MappingConfig, *, key: str) -> dict[str, Path]:
    if not mapping.text:
        raise ConfigError(f"{key}: mapping.text is required, the path of the customer's words "
                          "in the payload, e.g. text = \"data.review.body\"")
    return {field: Path(text, key=f"{key}: mapping.{field}")
            for field, text in msgspec.structs.asdict(mapping).items() if text}


class WebhookAdapter(AdapterBase):
    """Signed JSON in, the receipt as JSON out (``200``), one route per configured source."""

    kind: ClassVar[str] = "webhook"
    Config: ClassVar[type[msgspec.Struct]] = WebhookConfig
    # Every source must have a secret, so the adapter is always authenticated; declaring it
    # keeps the runtime's off-loopback check honest should that ever change.
    requires_auth_off_loopback: ClassVar[bool] = True

    def __init__(self, config: WebhookConfig, intake: Intake, ctx: AdapterContext) -> None:
        super().__init__(config, intake, ctx)
        if not config.sources:
            raise ConfigError("adapters.webhook is enabled but has no [[adapters.webhook."
                              "sources]]: add one per platform, or set enabled = false")
        self.sources: list[Source] = []
        for index, source_config in enumerate(config.sources):
            source = Source(source_config, index=index,
                            body_limit=intake.limits.max_body_bytes)
            for other in self.sources:
                if other.name == source.name:
                    raise ConfigError(f"adapters.webhook: two sources are named {source.name!r}")
                if other.path == source.path:
                    raise ConfigError(f"adapters.webhook: sources {other.name!r} and "
                                      f"{source.name!r} are both served at {source.path}")
            self.sources.append(source)

    def routes(self) -> Iterable[web.AbstractRouteDef]:
        return [web.post(source.path, self._handler(source)) for source in self.sources]

    @classmethod
    def http_operations(cls, config: WebhookConfig) -> Sequence[Operation]:
        return webhook_operations([(s.name, s.path or f"/webhooks/{s.name}")
                                   for s in config.sources])

    def _handler(self, source: Source) -> Any:
        async def handle(request: web.Request) -> web.Response:
            return await self.handle(source, request)
        return handle

    async def handle(self, source: Source, request: web.Request) -> web.Response:
        """Read within the limit, verify, guard against replays, map, submit, answer."""
        body = await _read_body(request, source.body_limit)
        signed = source.scheme.verify(request.headers, body,
                                      now=self.ctx.clock().timestamp())
        if signed.replay_key is not None and not await self.intake.first_use(
                f"webhook:{source.name}", signed.replay_key, ttl=signed.ttl):
            raise SignatureReplayed(
                "this exact signed request was accepted already (replay guard); a retry is "
                "signed afresh with a new webhook-timestamp and the same webhook-id, and is "
                "then answered with the first receipt")
        try:
            payload = _decode(body)
        except (msgspec.DecodeError, UnicodeDecodeError) as exc:
            raise RejectedInput(f"the body is not valid UTF-8 JSON: {exc}") from None
        except RecursionError:
            raise RejectedInput("the JSON is nested too deeply") from None
        message = self.to_message(source, payload, body=body, delivery_id=signed.delivery_id)
        receipt = await self.intake.submit(message, reply=Inline())
        return web.Response(body=_encode(receipt), content_type="application/json")

    def to_message(self, source: Source, payload: Any, *, body: bytes,
                   delivery_id: str | None) -> InboundMessage:
        """The message the payload describes, read through the source's mapping."""
        text = source.read(payload, "text", limit=None)
        if text is None:
            path = source.fields["text"].text
            raise PayloadMismatch(f"the payload has no `{path}` (mapped to text)", field=path)
        email = source.read(payload, "email", limit=None)
        phone = source.read(payload, "phone", limit=None)
        chat_id = source.read(payload, "chat_id")
        if not (email or phone or chat_id):
            paths = ", ".join(f"`{source.fields[f].text}`" for f in ("email", "phone", "chat_id")
                              if f in source.fields) or "none is mapped"
            raise PayloadMismatch("the payload names no email, phone or chat id to answer "
                                  f"(mapped from: {paths})", field="contact")
        contact = Contact(
            name=(source.read(payload, "name", limit=None) or "").strip() or None,
            email=normalize_email(email, field=source.fields["email"].text) if email else None,
            phone=(normalize_phone(phone, default_region=source.config.default_region,
                                   field=source.fields["phone"].text) if phone else None),
            chat_ids={source.name: chat_id} if chat_id else {},
            # The operator vouches for the platform that holds the secret (docs/integrators.md).
            verified_by=source.verified_by,
        )
        locale = source.read(payload, "locale", limit=None)
        return InboundMessage(
            channel=self.kind, delivery_scope=source.name,
            provider_message_id=self._delivery_id(source, payload, body, delivery_id),
            received_at=self.ctx.clock(), contact=contact,
            subject=(source.read(payload, "subject", limit=None) or "").strip(), text=text,
            thread=ThreadHints(ticket_number=source.read(payload, "ticket_number")),
            locale=locale if locale and _LANGUAGE_TAG.match(locale) else None,
            conversational=source.config.conversational,
            order_number=source.read(payload, "order_number"),
            device_model=source.read(payload, "device_model"),
            metadata={"webhook_source": source.name},
        )

    @staticmethod
    def _delivery_id(source: Source, payload: Any, body: bytes,
                     delivery_id: str | None) -> str:
        if source.idempotency is not None:
            key = source.idempotency.read(payload, field="idempotency", limit=_MAX_ID)
            if not key or not key.isprintable():
                raise PayloadMismatch(f"the payload has no `{source.idempotency.text}` (the "
                                      "event's id, for idempotency)",
                                      field=source.idempotency.text)
            return key
        # Without an id of its own, a byte-identical body is the same delivery.
        return delivery_id or "sha256:" + hashlib.sha256(body).hexdigest()


async def _read_body(request: web.Request, limit: int) -> bytes:
    """The whole body, or 413 before reading it (declared) or once it passes ``limit``."""
    if request.content_length is not None and request.content_length > limit:
        raise TooLarge(f"the body is larger than {limit} bytes", limit=limit)
    body = bytearray()
    async for chunk in request.content.iter_chunked(_CHUNK):
        body += chunk
        if len(body) > limit:
            raise TooLarge(f"the body is larger than {limit} bytes", limit=limit)
    return bytes(body)
