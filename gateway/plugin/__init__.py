"""The plug-in kit: the one contract an adapter or a publisher codes against.

An adapter imports ``gateway.plugin``, ``gateway.errors``, the schema (``schemas``) and its own
channel package, nothing else of ours (an import contract in ``make lint`` holds it to that).
What it finds here:

- the contract (:mod:`gateway.plugin.contract`): :class:`AdapterBase` and :class:`PublisherBase`
  with their declarations, :class:`Intake` (all an adapter may call), :class:`AdapterContext`
  with the adapter's durable :class:`AdapterState`, and the :data:`Reply` an adapter submits with;
- settings helpers (:mod:`gateway.plugin.settings`): secrets from the environment or a file,
  durations, listen addresses;
- contact identities as the core stores them (:mod:`gateway.plugin.contacts`);
- provider media fetched as hostile input (:mod:`gateway.plugin.media`);
- connection gates and token buckets for listeners (:mod:`gateway.plugin.limits`);
- the OpenAPI description of an adapter's routes (:mod:`gateway.plugin.openapi`).

``docs/integrators.md`` walks through writing an adapter with only this.
"""

from gateway.plugin.contacts import normalize_email, normalize_phone
from gateway.plugin.contract import (
    ADAPTER_GROUP,
    DRIVER_GROUP,
    INLINE,
    PUBLISHER_GROUP,
    AckSender,
    Adapter,
    AdapterBase,
    AdapterContext,
    AdapterState,
    Exclusive,
    Inline,
    InlineOnPhone,
    Intake,
    IntakeLimits,
    Nobody,
    OutboundEvent,
    Outbox,
    OutgoingReply,
    Publisher,
    PublisherBase,
    Reply,
    ReplyFile,
    ReplySender,
    RunHere,
    check_adapter,
    check_publisher,
)
from gateway.plugin.limits import ConnectionGate, TokenBuckets, peer_key
from gateway.plugin.media import IDENTITY, MediaHosts, MediaRefused, file_not_kept, read_limited
from gateway.plugin.openapi import Answer, Body, Operation, Param, refused
from gateway.plugin.settings import is_loopback, parse_duration, resolve_secret, split_listen
from gateway.plugin.signing import RequestSigner, sign_request

INLINE_REPLY = INLINE
"""``Inline()``, the default :data:`Reply`, as a shared value (for defaults in signatures)."""

__all__ = [
    "ADAPTER_GROUP",
    "DRIVER_GROUP",
    "IDENTITY",
    "INLINE",
    "INLINE_REPLY",
    "PUBLISHER_GROUP",
    "AckSender",
    "Adapter",
    "AdapterBase",
    "AdapterContext",
    "AdapterState",
    "Answer",
    "Body",
    "ConnectionGate",
    "Exclusive",
    "Inline",
    "InlineOnPhone",
    "Intake",
    "IntakeLimits",
    "MediaHosts",
    "MediaRefused",
    "Nobody",
    "Operation",
    "OutboundEvent",
    "Outbox",
    "OutgoingReply",
    "Param",
    "Publisher",
    "PublisherBase",
    "Reply",
    "ReplyFile",
    "ReplySender",
    "RequestSigner",
    "RunHere",
    "TokenBuckets",
    "check_adapter",
    "check_publisher",
    "file_not_kept",
    "is_loopback",
    "normalize_email",
    "normalize_phone",
    "parse_duration",
    "peer_key",
    "read_limited",
    "refused",
    "resolve_secret",
    "sign_request",
    "split_listen",
]
