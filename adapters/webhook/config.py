"""``[adapters.webhook]``: named sources, each a signed JSON webhook mapped onto the schema."""

from __future__ import annotations

import msgspec


class MappingConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Where in the payload each field of the message is: a dotted path, ``[n]`` for list items
    (``"data.review.body"``, ``"messages[0].text"``). Only ``text`` is required."""

    text: str | None = None
    """The customer's words (required)."""
    subject: str | None = None
    name: str | None = None
    """The customer's name or nickname."""
    email: str | None = None
    phone: str | None = None
    """A phone number; national numbers are read in the source's ``default_region``."""
    chat_id: str | None = None
    """The customer's id on the platform; stored as ``chat_ids[<source name>]``."""
    locale: str | None = None
    """A BCP 47 tag (``zh-CN``, ``en``); anything else is ignored, never an error."""
    order_number: str | None = None
    device_model: str | None = None
    ticket_number: str | None = None
    """A ticket number the customer gave, to join that ticket (from that ticket's contact)."""


class SourceConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """``[[adapters.webhook.sources]]``: one platform that POSTs JSON."""

    name: str
    """Lower-case letters, digits, ``-`` and ``_``: the URL, the delivery scope, the chat ids."""
    path: str | None = None
    """Where it is served; ``/webhooks/<name>`` by default."""
    secret_env: str | None = None
    """Environment variable holding the signing secret (required: this or ``secret_file``)."""
    secret_file: str | None = None
    signature: str = "standard-webhooks"
    """``standard-webhooks``, ``hmac-sha256-hex`` or ``hmac-sha256-base64``."""
    signature_header: str | None = None
    """The header of the HMAC schemes (``X-Hub-Signature-256`` / ``X-Shopify-Hmac-Sha256`` by
    default); Standard Webhooks always uses ``webhook-signature``."""
    signature_prefix: str | None = None
    """Text before the digest in that header (``sha256=`` for hex, nothing for base64)."""
    tolerance: str | None = None
    """Standard Webhooks only: how far ``webhook-timestamp`` may be from our clock (``5m``)."""
    idempotency: str | None = None
    """Path of the platform's id of the event; by default ``webhook-id`` for Standard Webhooks
    and the body's SHA-256 for the HMAC schemes."""
    max_body_bytes: int | None = None
    """A smaller body limit than ``server.max_body_bytes`` for this source."""
    identities_verified: bool = True
    """The platform vouches for the identities it sends (``verified_by = "webhook:<name>"``);
    false makes them claims (see docs/integrators.md)."""
    conversational: bool = False
    """A chat-like platform (direct messages): a message joins the contact's recently touched
    open ticket even without a ticket number (``intake.chat_followup_window``)."""
    default_region: str = "CN"
    """Region for phone numbers written without a country code."""
    mapping: MappingConfig = MappingConfig()


class WebhookConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """``[adapters.webhook]``."""

    enabled: bool = False
    """Off by default: a webhook means nothing until a source is configured."""
    sources: list[SourceConfig] = []
