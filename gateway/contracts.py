"""The small contracts between the core and its plug-ins.

Adapters (one per channel) receive messages and call :class:`Intake`. Publishers carry events to a
downstream broker. Both are found through entry points (groups ``intake_gateway.adapters`` and
``intake_gateway.publishers``); the built-in ones are registered exactly like a third party's.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, ClassVar, Protocol, runtime_checkable

import msgspec

if TYPE_CHECKING:
    from aiohttp import web

    from schemas import Acknowledgement, Attachment, InboundMessage, Receipt


ADAPTER_GROUP = "intake_gateway.adapters"
PUBLISHER_GROUP = "intake_gateway.publishers"
DRIVER_GROUP = "intake_gateway.drivers"


class Intake(Protocol):
    """What an adapter calls. Everything shared by channels happens behind it."""

    async def submit(self, message: InboundMessage) -> Receipt:
        """Decide the outcome and return only once every effect is durable.

        Raises :class:`~gateway.errors.RejectedInput` for input the sender must fix and
        :class:`~gateway.errors.TransientError` when the store is unavailable (the provider
        should retry; idempotency absorbs the retry).
        """
        ...

    async def store_attachment(self, data: bytes, *, name: str, content_type: str) -> Attachment:
        """Write the bytes durably (content-addressed) and return their description.

        Raises :class:`~gateway.errors.TooLarge` above the configured attachment limit. The name
        is made safe here, so adapters may pass what the customer sent.
        """
        ...

    async def first_use(self, scope: str, key: str, *, ttl: float) -> bool:
        """Record ``key`` under ``scope`` (e.g. ``"wechat:nonce"``) for ``ttl`` seconds, durably.

        Returns False when the key was recorded already and has not expired: the replay guard
        of signed requests. It survives restarts, so a request captured before one is still
        refused after it; ``ttl`` should equal the signature's accepted clock tolerance.
        """
        ...


class Adapter(Protocol):
    """One channel. ``kind`` is its entry-point name and its ``[adapters.<kind>]`` table.

    The constructor receives the adapter's own ``Config`` (converted from its table, unknown keys
    rejected), the :class:`Intake`, and the :class:`AdapterContext`.
    """

    kind: ClassVar[str]
    Config: ClassVar[type[msgspec.Struct]]

    def routes(self) -> Iterable[web.AbstractRouteDef]:
        """HTTP routes this adapter serves on the gateway's one aiohttp application."""
        ...

    async def start(self) -> None:
        """Start listeners or pollers that are not HTTP routes (SMTP, IMAP, long polling)."""
        ...

    async def stop(self) -> None:
        """Stop accepting, finish what was accepted, release resources."""
        ...


@runtime_checkable
class AckSender(Protocol):
    """An adapter that can send an acknowledgement later, from the outbox (email, chat, SMS)."""

    ack_channels: ClassVar[tuple[str, ...]]
    """The outbox channels this sender serves, e.g. ``("email",)`` or ``("sms",)``."""
    ack_ids_unguessable: ClassVar[bool]
    """Optional, default False. True when the ids ``send_ack`` returns are random secrets only
    the recipient sees (the mailer's Message-IDs): then a message quoting one joins the ticket
    whoever sends it. Ids built from public facts (a chat id and a counter) join only messages
    from the ticket's own contact."""

    async def send_ack(self, ack: Acknowledgement, *, to: str, reply_to: str | None) -> str | None:
        """Send one acknowledgement to ``to``; return the provider's message id if it has one.

        Raise :class:`~gateway.errors.TransientError` to be retried later and
        :class:`~gateway.errors.PermanentError` to record ``ack.failed`` and stop.
        """
        ...


class OutboundEvent(msgspec.Struct, frozen=True, kw_only=True):
    """An event as publishers receive it: encoded once, the same bytes for every broker."""

    seq: int
    """Position in the outbox (monotonic); publishers may use it for logging, not for dedup."""
    id: str
    """The CloudEvents ``id``: the broker's dedup key (``Nats-Msg-Id``, AMQP ``message_id``...)."""
    type: str
    subject: str
    """The ticket number; ordering is guaranteed per subject."""
    priority: str | None
    body: bytes
    """The CloudEvent in structured JSON."""
    escalated: bool = False
    """True for the events of a ticket that triage escalated (its priority is one of
    ``triage.escalate``; ``data.ticket.escalated`` in the body). A publisher with an escalation
    route delivers these, and only these, there too; it never decides by ``priority``, which
    the operator's ``escalate`` list may not follow. ``ack.*`` events are never escalated."""


class Publisher(Protocol):
    """Carries events to one downstream broker. At least once; ordered per ``subject``."""

    kind: ClassVar[str]
    Config: ClassVar[type[msgspec.Struct]]

    async def start(self) -> None:
        """Connect, and create or check streams, exchanges and queues."""
        ...

    async def publish(self, events: Sequence[OutboundEvent]) -> None:
        """Publish in the given order and return only when the broker has confirmed all of them.

        Raise :class:`~gateway.errors.TransientError` (nothing or part was confirmed; the relay
        retries the whole batch, ids make the retry safe) or
        :class:`~gateway.errors.PermanentError`.
        """
        ...

    async def close(self) -> None:
        """Flush and disconnect."""
        ...


class AdapterContext(msgspec.Struct, frozen=True, kw_only=True):
    """What the runtime tells every adapter besides its own config."""

    data_dir: str
    """The gateway's data directory; an adapter keeps its own state under ``<data_dir>/<kind>``."""
    public_url: str
    """The base URL providers and customers use to reach the HTTP listener (no trailing slash)."""
    listen_host: str
    """The host the HTTP listener binds; adapters refuse to run unauthenticated off loopback."""
    default_locale: str
    ephemeral_ports: bool = False
    """The HTTP listener was asked for any free port (tests, benchmarks): adapters that open
    listeners of their own bind any free port too instead of their default ports."""
