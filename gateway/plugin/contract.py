"""THE plug-in contract: everything an adapter or a publisher may call, and everything it declares.

An adapter (one per channel) is a subclass of :class:`AdapterBase`: it receives its own typed
``Config``, the :class:`Intake` and its :class:`AdapterContext`, and calls nothing of the core but
what these three offer. A publisher carries events downstream and subclasses
:class:`PublisherBase`. Both are found through entry points (``intake_gateway.adapters``,
``intake_gateway.publishers``; the built-ins are registered exactly like a third party's), and
:func:`check_adapter` / :func:`check_publisher` validate what they declare when they are loaded.

How an adapter answers the customer is a :data:`Reply`, passed to :meth:`Intake.submit`:

========================  ==========================================================================
``Inline()``              the adapter shows the receipt's acknowledgement in its own response
                          (form page, JSON answer, WeChat passive reply)
``InlineOnPhone()``       the same, and that response lands on the customer's phone (SMS/WhatsApp
                          TwiML), so a high-priority ticket needs no extra SMS
``Outbox(channel, to)``   nobody is answered now: the acknowledgement goes later, from the outbox,
                          through the adapter that declares ``channel`` in ``ack_channels``
``Nobody()``              nobody can be told (a voice mail from a landline or a withheld number):
                          the events then do not claim an acknowledgement
========================  ==========================================================================

This module knows no implementation: the core implements :class:`Intake` and
:class:`AdapterState`; ``gateway.testing`` ships a recording fake of :class:`Intake` for adapter
tests, and the contract suites every plug-in passes.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterable, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, ClassVar, Protocol, runtime_checkable

import msgspec

from gateway.errors import ConfigError
from gateway.plugin.limits import RateLimiterFactory, local_rate_limiter

if TYPE_CHECKING:
    from aiohttp import web

    from gateway.plugin.openapi import Operation
    from intake_schemas import Acknowledgement, Attachment, InboundMessage, Outcome, Receipt


ADAPTER_GROUP = "intake_gateway.adapters"
PUBLISHER_GROUP = "intake_gateway.publishers"
DRIVER_GROUP = "intake_gateway.drivers"


# -- how the customer is answered ------------------------------------------------------------


class Inline(msgspec.Struct, frozen=True, tag="inline"):
    """The adapter shows the receipt's acknowledgement in its own response."""


class InlineOnPhone(msgspec.Struct, frozen=True, tag="inline_on_phone"):
    """Shown in the adapter's own response, which reaches the customer's phone (TwiML)."""


class Outbox(msgspec.Struct, frozen=True, kw_only=True, tag="outbox"):
    """The acknowledgement is sent later through the sender of ``channel`` to ``to``."""

    channel: str
    """A channel some adapter declares in ``ack_channels``: ``email``, ``sms``, ``telegram``..."""
    to: str
    """The recipient as that channel addresses it (an address, an E.164 number, a chat id)."""
    reply_to: str | None = None
    """The provider's id of the customer's message, where the channel threads (Message-ID)."""


class Nobody(msgspec.Struct, frozen=True, tag="nobody"):
    """Nobody can be told: no acknowledgement, and the events do not claim one."""


Reply = Inline | InlineOnPhone | Outbox | Nobody
"""How the customer is answered; see the module docstring."""

INLINE = Inline()
"""The default :data:`Reply`."""


# -- replies out: what a channel's reply sender receives --------------------------------------


class ReplyFile(msgspec.Struct, frozen=True, kw_only=True):
    """A file sent with a reply (email attaches it; other channels may name it)."""

    name: str
    content_type: str
    data: bytes


class OutgoingReply(msgspec.Struct, frozen=True, kw_only=True):
    """A downstream system's answer to the customer, ready for one channel's sender.

    The core has chosen the channel and recipient, checked the channel's window and added the
    satisfaction question to a resolution; the sender only formats it for its channel (email
    threading headers, SMS segments, a template outside a window) and sends it.
    """

    reply_id: str
    """Stable across retries: a sender that can pass an idempotency key to its provider uses it."""
    ticket_number: str
    subject: str
    """For channels with subjects (email): carries the ``[number]`` tag."""
    text: str
    html: str | None = None
    """Sanitized HTML (email only)."""
    locale: str = "en"
    files: list[ReplyFile] = []
    template: bool = False
    """The channel's customer-service window is closed: send it as the approved template
    (WhatsApp template, WeChat template message) the adapter is configured with."""


class IntakeLimits(msgspec.Struct, frozen=True, kw_only=True):
    """The core's limits, so an adapter can refuse early and state the limit that really holds."""

    max_text_chars: int
    max_attachments: int
    max_attachment_bytes: int
    max_body_bytes: int
    """The HTTP listener's body limit (``server.max_body_bytes``)."""
    default_locale: str
    """``zh-CN``, ``zh-TW`` or ``en``: the language when a message says nothing."""


# -- what an adapter calls -------------------------------------------------------------------


class Intake(Protocol):
    """What an adapter calls. Everything every channel shares happens behind it."""

    limits: IntakeLimits

    async def submit(self, message: InboundMessage, *, reply: Reply = INLINE) -> Receipt:
        """Decide the outcome and return only once every effect is durable.

        ``reply`` says how the customer is answered (module docstring). Raises
        :class:`~gateway.errors.RejectedInput` for input the sender must fix (4xx / SMTP 5xx with
        its ``reason``) and :class:`~gateway.errors.TransientError` when the store is unavailable
        (the provider should retry; idempotency absorbs the retry).
        """
        ...

    async def store_attachment(self, data: bytes, *, name: str, content_type: str) -> Attachment:
        """Write the bytes durably (content-addressed) and return their description.

        Raises :class:`~gateway.errors.TooLarge` (with ``limit``) above the attachment limit,
        :class:`~gateway.errors.StorageFull` when the disk is full. The name is made safe here,
        so adapters may pass what the customer sent.
        """
        ...

    async def first_use(self, scope: str, key: str, *, ttl: float) -> bool:
        """Record ``key`` under ``scope`` (e.g. ``"wechat:nonce"``) for ``ttl`` seconds, durably.

        Returns False when the key was recorded already and has not expired: the replay guard
        of signed requests. It survives restarts, so a request captured before one is still
        refused after it; ``ttl`` should equal the signature's accepted clock tolerance.
        """
        ...

    async def report_delivery(self, *, provider_id: str, delivered: bool,
                              detail: str = "") -> bool:
        """The provider's later word on something we sent (a signed status callback, a bounce
        naming our Message-ID): a reply becomes ``reply.delivered`` or ``reply.failed``, once.

        Returns False when ``provider_id`` names no reply (an acknowledgement, or unknown).
        ``detail`` is the provider's status or error code, never what the customer wrote.
        """
        ...

    async def forward_reply(self, *, ticket_number: str, text: str, channel: str, to: str,
                            key: str, locale: str, because: str) -> str:
        """Queue a reply to ticket ``ticket_number``'s customer on another ``channel``
        (``"email"`` or ``"sms"``), durably, once; return the reply's id.

        For an adapter whose own channel could not reach the customer in time (the web chat's
        unseen reply). The reply row and its ``reply.queued`` event (``chosen_because`` =
        ``because``, e.g. ``"chat_unseen_email"``) commit in one transaction, as any reply
        through ``POST /v1/tickets/{number}/replies``; the reply dispatcher then sends it, with
        quiet hours for SMS and the per-recipient limit, and reports ``reply.sent`` /
        ``reply.failed``. ``text`` is sent as given (with the ticket's ``[number]`` subject on
        email): the caller puts in it only what this customer may read.

        ``key`` is an idempotency key within the ticket: the same key again queues nothing and
        returns the first reply's id, so two replicas or a restart firing the same forward send
        one message. ``to`` is an address (``channel="email"``) or an E.164 number
        (``"sms"``); it is only a recipient, never made an identity of the ticket's contact.

        Raises :class:`~gateway.errors.RejectedInput` (``NotFound`` for an unknown ticket, 422
        when no enabled sender carries ``channel`` or replies are disabled, 400 for an address
        that is not valid or an empty text) and :class:`~gateway.errors.TransientError` when
        the store is unavailable.
        """
        ...

    def parse_ticket_number(self, text: str) -> str | None:
        """The canonical ticket number ``text`` is (a typed one: case, spaces, dashes forgiven),
        or None, also for a wrong check digit."""
        ...

    def find_ticket_numbers(self, text: str) -> list[str]:
        """Every valid ticket number in free text, canonical, in order, without repeats."""
        ...

    def format_due(self, due_at: datetime, locale: str) -> str:
        """A due time as the customer reads it, with its time zone (``周一 10:00（北京时间）``)."""
        ...

    def render_ack(self, *, number: str, outcome: Outcome, due_at: datetime,
                   locale: str) -> Acknowledgement:
        """The acknowledgement of a receipt in ``locale`` (a page in the language it shows)."""
        ...


@runtime_checkable
class AdapterState(Protocol):
    """A small durable key-value store of one adapter's own state (opt-outs, mailbox books).

    Kept by the gateway's store, so every replica sees it and a restart keeps it. Keys are the
    adapter's own (at most 200 characters); values are bytes (encode with msgspec).
    """

    async def get(self, key: str) -> bytes | None:
        """The value stored under ``key``, or None."""
        ...

    async def put(self, key: str, value: bytes) -> None:
        """Store ``value`` under ``key``, durably, before returning."""
        ...

    async def delete(self, key: str) -> None:
        """Forget ``key`` (no error when absent)."""
        ...

    async def items(self, prefix: str = "") -> list[tuple[str, bytes]]:
        """Every (key, value) whose key starts with ``prefix``, by key."""
        ...


class Exclusive(Protocol):
    """Work that one replica at a time may do: one IMAP mailbox's watcher, Telegram long
    polling. Every replica calls :meth:`run`; one runs ``work`` while the others wait, and when
    that one dies (or loses the database) another takes over within seconds.
    """

    async def run(self, name: str, work: Callable[[], Awaitable[None]], *,
                  stop: asyncio.Event | None = None) -> None:
        """Run ``work()`` while this replica holds ``name``; return when it returns, or when
        ``stop`` is set while waiting. ``work`` is cancelled if the hold is lost, then
        waited for again. Work must be safe to take over mid-way (it commits before it
        confirms, as every adapter does)."""
        ...


class RunHere:
    """:class:`Exclusive` for one process (the embedded store): ``work`` simply runs."""

    async def run(self, name: str, work: Callable[[], Awaitable[None]], *,
                  stop: asyncio.Event | None = None) -> None:
        await work()


class AdapterContext(msgspec.Struct, frozen=True, kw_only=True):
    """What the runtime gives every adapter besides its own config and the :class:`Intake`."""

    kind: str
    """The adapter's kind (its entry-point name)."""
    data_dir: str
    """The gateway's data directory (local to this replica; durable state goes to ``state``)."""
    public_url: str
    """The base URL providers and customers use to reach the HTTP listener (no trailing slash)."""
    listen_host: str
    """The host the HTTP listener binds; adapters refuse to run unauthenticated off loopback."""
    default_locale: str
    state: AdapterState
    """The adapter's own durable key-value state (:class:`AdapterState`)."""
    log: logging.Logger
    """The adapter's logger (``intake.<kind>``). Secrets, addresses and phone numbers are
    redacted from every record; still, log outcomes and ids, never what customers wrote."""
    clock: Callable[[], datetime] = lambda: _utcnow()
    """The current time, aware, UTC; tests may pass their own."""
    ephemeral_ports: bool = False
    """The HTTP listener was asked for any free port (tests, benchmarks): adapters that open
    listeners of their own bind any free port too instead of their default ports."""
    rate_limiter: RateLimiterFactory = local_rate_limiter
    """Rate limits per key (``rate_limiter(name, rate, window)``): counted in the store, across
    replicas, when the store is shared; in this process otherwise. Use it for every limit a
    sender could otherwise multiply by the number of replicas."""
    exclusive: Exclusive = msgspec.field(default_factory=RunHere)
    """Where work that one replica at a time may do runs (:class:`Exclusive`)."""


def _utcnow() -> datetime:
    return datetime.now(UTC)


# -- what an adapter declares ----------------------------------------------------------------


class AdapterBase:
    """One channel. Subclass it; the host calls nothing but what is declared here.

    Declarations (class attributes) have defaults; :func:`check_adapter` validates them when the
    plug-in is loaded. The constructor receives ``(config, intake, ctx)``.
    """

    kind: ClassVar[str]
    """The entry-point name, the ``[adapters.<kind>]`` table, the ``channel`` of its messages."""
    Config: ClassVar[type[msgspec.Struct]]
    """Its options; must have ``enabled: bool`` and forbid unknown fields."""
    receives: ClassVar[bool] = True
    """False for adapters that only send (an outgoing mail relay): the contract suite skips them."""
    ack_channels: ClassVar[tuple[str, ...]] = ()
    """Outbox channels it sends acknowledgements on (``("email",)``); then it implements
    :meth:`send_ack`. Two enabled adapters may not declare the same channel."""
    ack_ids_unguessable: ClassVar[bool] = False
    """True when the ids :meth:`send_ack` returns are random secrets only the recipient sees (the
    mailer's Message-IDs): a message quoting one joins its ticket whoever sends it. Ids built
    from public facts (a chat id and a counter) join only messages from the ticket's contact."""
    requires_auth_off_loopback: ClassVar[bool] = False
    """True when it must not serve off loopback unless :attr:`authenticated` (the signed API)."""
    reply_channels: ClassVar[tuple[str, ...]] = ()
    """Channels it sends downstream replies on (``POST /v1/tickets/{number}/replies``); then it
    implements :meth:`send_reply`. Two enabled adapters may not declare the same channel."""
    reply_windows: ClassVar[dict[str, float]] = {}
    """Per reply channel, the seconds after the customer's last message on it within which a
    free-form reply may go (WhatsApp 24 h, WeChat 48 h). Outside it the core asks for the
    template (:meth:`reply_template_ready`) or falls back to SMS, or refuses the reply."""

    def __init__(self, config: Any, intake: Intake, ctx: AdapterContext) -> None:
        self.config = config
        self.intake = intake
        self.ctx = ctx

    @property
    def authenticated(self) -> bool:
        """Whether requests are authenticated (checked with ``requires_auth_off_loopback``)."""
        return True

    def routes(self) -> Iterable[web.AbstractRouteDef]:
        """HTTP routes this adapter serves on the gateway's one aiohttp application."""
        return ()

    @classmethod
    def http_operations(cls, config: Any) -> Sequence[Operation]:
        """The OpenAPI description of what :meth:`routes` serves under ``config`` (its
        ``Config``), one :class:`~gateway.plugin.openapi.Operation` per route; a test holds the
        two equal. The committed document uses the default ``Config()``."""
        return ()

    async def start(self) -> None:
        """Start listeners or pollers that are not HTTP routes (SMTP, IMAP, long polling)."""

    async def stop(self) -> None:
        """Stop accepting, finish what was accepted, release resources."""

    async def draining(self) -> None:
        """The HTTP listener is about to stop: close long-lived connections (WebSockets, long
        polls), which the listener would otherwise wait for until its shutdown timeout."""

    def not_ready(self) -> str | None:
        """Why it cannot take messages now although it was started (``/readyz``), or None."""
        return None

    async def quarantined(self) -> list[tuple[str, str, str]]:
        """Messages this adapter set aside instead of submitting: (id, where, reason) each,
        for the operators' dashboard. None by default."""
        return []

    async def replay_quarantined(self, item_id: str) -> str:
        """Submit set-aside message ``item_id`` again and say what happened (``"accepted"``,
        or why it is still refused, when it stays set aside). An unknown id raises
        :class:`~gateway.errors.RejectedInput`."""
        from gateway.errors import RejectedInput

        raise RejectedInput(f"{self.kind} keeps no quarantine")

    async def send_ack(self, ack: Acknowledgement, *, to: str, reply_to: str | None) -> str | None:
        """Send one acknowledgement to ``to``; return the provider's message id if it has one.

        Raise :class:`~gateway.errors.TransientError` to be retried later and
        :class:`~gateway.errors.PermanentError` to record ``ack.failed`` and stop. Only adapters
        that declare ``ack_channels`` implement it.
        """
        raise NotImplementedError(f"{self.kind} declares no ack_channels")

    def reply_template_ready(self, channel: str) -> bool:
        """Whether an approved template is configured to reply on ``channel`` outside its
        :attr:`reply_windows` window (then :meth:`send_reply` gets ``template=True``)."""
        return False

    async def send_reply(self, reply: OutgoingReply, *, channel: str, to: str,
                         reply_to: str | None) -> str | None:
        """Send one downstream reply on ``channel`` to ``to``; return the provider's id.

        ``reply_to`` is the provider id of the customer's latest message on this channel where
        the channel threads (an email Message-ID, a Telegram message id). Raise
        :class:`~gateway.errors.TransientError` to be retried with backoff and
        :class:`~gateway.errors.PermanentError` to record ``reply.failed``. Only adapters that
        declare ``reply_channels`` implement it.
        """
        raise NotImplementedError(f"{self.kind} declares no reply_channels")


Adapter = AdapterBase
"""The adapter type the host works with."""


@runtime_checkable
class ReplySender(Protocol):
    """The part of an adapter the reply dispatcher calls."""

    kind: ClassVar[str]
    reply_channels: ClassVar[tuple[str, ...]]
    reply_windows: ClassVar[dict[str, float]]
    ack_ids_unguessable: ClassVar[bool]

    def reply_template_ready(self, channel: str) -> bool:
        """See :meth:`AdapterBase.reply_template_ready`."""
        ...

    async def send_reply(self, reply: OutgoingReply, *, channel: str, to: str,
                         reply_to: str | None) -> str | None:
        """See :meth:`AdapterBase.send_reply`."""
        ...


@runtime_checkable
class AckSender(Protocol):
    """The part of an adapter the acknowledgement dispatcher calls."""

    kind: ClassVar[str]
    ack_channels: ClassVar[tuple[str, ...]]
    ack_ids_unguessable: ClassVar[bool]

    async def send_ack(self, ack: Acknowledgement, *, to: str, reply_to: str | None) -> str | None:
        """See :meth:`AdapterBase.send_ack`."""
        ...


# -- publishers ------------------------------------------------------------------------------


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
    """The ticket is escalated (``triage.escalate``): publishers also use the escalation route."""


class PublisherBase:
    """Carries events to one downstream broker. At least once; ordered per ``subject``.

    The constructor receives the publisher's own ``Config`` (from ``[queue.settings]``).
    """

    kind: ClassVar[str]
    Config: ClassVar[type[msgspec.Struct]]
    relay_needed: ClassVar[bool] = True
    """False for the embedded queue, which is the outbox itself: no relay runs."""

    async def start(self) -> None:
        """Connect, and create or check streams, exchanges and queues.

        Raise :class:`~gateway.errors.TransientError` when the broker is unreachable (the
        gateway starts anyway and the relay keeps connecting), ConfigError when misconfigured.
        """

    async def publish(self, events: Sequence[OutboundEvent]) -> None:
        """Publish in the given order and return only when the broker has confirmed all of them.

        Raise :class:`~gateway.errors.TransientError` (nothing or part was confirmed; the relay
        retries, ids make the retry safe) or :class:`~gateway.errors.PermanentError` (this
        payload can never be taken).
        """
        raise NotImplementedError

    async def close(self) -> None:
        """Flush and disconnect."""


Publisher = PublisherBase
"""The publisher type the host works with."""


# -- validation when loaded ------------------------------------------------------------------


def _check_config(cls: type[Any], what: str) -> None:
    config = getattr(cls, "Config", None)
    if not (isinstance(config, type) and issubclass(config, msgspec.Struct)):
        raise ConfigError(f"{what} {cls.__name__} must declare Config, a msgspec Struct")
    if not config.__struct_config__.forbid_unknown_fields:
        raise ConfigError(f"{what} {cls.__name__}.Config must forbid unknown fields, so that a "
                          "typo in its table fails at start")


def check_adapter(cls: type[Any]) -> None:
    """Refuse, with a ConfigError naming the problem, an adapter whose declarations are wrong."""
    if not (isinstance(cls, type) and issubclass(cls, AdapterBase)):
        raise ConfigError(f"adapter {cls!r} must subclass gateway.plugin.AdapterBase")
    _check_config(cls, "adapter")
    if "enabled" not in cls.Config.__struct_fields__:
        raise ConfigError(f"adapter {cls.__name__}.Config must have an `enabled` field")
    channels = cls.ack_channels
    if not (isinstance(channels, tuple) and all(isinstance(c, str) and c for c in channels)):
        raise ConfigError(f"adapter {cls.__name__}.ack_channels must be a tuple of names")
    if channels and cls.send_ack is AdapterBase.send_ack:
        raise ConfigError(f"adapter {cls.__name__} declares ack_channels {channels} but does "
                          "not implement send_ack")
    replies = cls.reply_channels
    if not (isinstance(replies, tuple) and all(isinstance(c, str) and c for c in replies)):
        raise ConfigError(f"adapter {cls.__name__}.reply_channels must be a tuple of names")
    if replies and cls.send_reply is AdapterBase.send_reply:
        raise ConfigError(f"adapter {cls.__name__} declares reply_channels {replies} but does "
                          "not implement send_reply")
    windows = cls.reply_windows
    if not (isinstance(windows, dict) and all(
            ch in replies and isinstance(sec, int | float) and sec > 0
            for ch, sec in windows.items())):
        raise ConfigError(f"adapter {cls.__name__}.reply_windows must map some of its "
                          "reply_channels to seconds above 0")


def check_publisher(cls: type[Any]) -> None:
    """Refuse a publisher whose declarations are wrong, naming the problem."""
    if not (isinstance(cls, type) and issubclass(cls, PublisherBase)):
        raise ConfigError(f"publisher {cls!r} must subclass gateway.plugin.PublisherBase")
    _check_config(cls, "publisher")
    if cls.relay_needed and cls.publish is PublisherBase.publish:
        raise ConfigError(f"publisher {cls.__name__} does not implement publish")
