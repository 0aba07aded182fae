"""The store's contracts: every read and write the core makes, as small protocols.

Every SQL statement lives in :mod:`gateway.store`; the core (the decision, the acknowledgement
dispatcher, the relay, the CLI) talks to a store only through these protocols, so a second store
(PostgreSQL, for replicas) implements them and runs :mod:`gateway.testing.store_contract`
unchanged.

Writes happen in the store's transaction: ``await store.run(fn)`` calls ``fn(tx)`` with a
transaction object (:class:`StoreTx`) and returns once what ``fn`` wrote is durable. Everything
``fn`` does through ``tx`` commits together or not at all, so a status change and the event that
reports it, or a dead letter and the relay position past it, can never be seen apart. Reads that
need no transaction are coroutines on the store itself.

- :class:`gateway.decision.Tx`: the decision's reads and writes (tickets, messages, the outboxes).
- :class:`AckOutbox` / :class:`AckOutboxTx`: the acknowledgement outbox, read and settled.
- :class:`EventLog`: the event outbox in sequence order; :class:`EventReader` and
  :class:`ConsumerOffsets` read it from another process (``intake-gateway tail``).
- :class:`RelayTx`: relay positions, dead letters and the tickets held behind them, in the
  relay's transaction; :class:`DeadLetters`: the dead-letter table for ``intake-gateway replay``.
- :class:`gateway.plugin.AdapterState` and :meth:`ReplayGuards.first_use`: adapter state and
  replay guards.
- :class:`ReplyOutbox` / :class:`ReplyOutboxTx`: downstream replies, their record and outbox in
  one row (``POST /v1/tickets/{number}/replies``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, NamedTuple, Protocol, TypeVar

from gateway.decision import Tx

if TYPE_CHECKING:
    from gateway.plugin.contract import AdapterState, OutboundEvent

T = TypeVar("T")

__all__ = [
    "AckOutbox",
    "AckOutboxTx",
    "AtRiskTicket",
    "ConsumerOffsets",
    "DashboardReads",
    "DeadLetter",
    "DeadLetters",
    "DueAck",
    "DueReply",
    "EventLog",
    "EventReader",
    "NewEvent",
    "NewReply",
    "RelayLag",
    "RelayTx",
    "RepeatRow",
    "ReplayGuards",
    "ReplyOutbox",
    "ReplyOutboxTx",
    "ReplyRow",
    "ReplyTarget",
    "Store",
    "StoreTx",
    "Tx",
]


class DueAck(NamedTuple):
    """One pending acknowledgement whose time has come, as the dispatcher sends it."""

    id: int
    ticket_id: int
    channel: str
    recipient: str
    reply_to: str | None
    payload: bytes
    """The ``AckFacts`` (JSON) the decision wrote."""
    attempts: int


class NewEvent(NamedTuple):
    """An event to append to the outbox, already encoded (the same bytes for every consumer)."""

    id: str
    type: str
    subject: str
    body: bytes
    priority: str | None = None
    escalated: bool = False


class DeadLetter(NamedTuple):
    """A dead-lettered (or held) event of one publisher, with its attempts and last error."""

    event: OutboundEvent
    attempts: int
    error: str


class AckOutboxTx(Protocol):
    """Settling acknowledgements, inside the store's transaction."""

    def retry_ack(self, ack_id: int, attempts: int, at: float, error: str) -> None:
        """Keep ``ack_id`` pending with ``attempts`` so far; due again at epoch second ``at``."""
        ...

    def finish_ack(self, ack_id: int, status: str, *, provider_id: str | None = None,
                   error: str | None = None, event: NewEvent | None = None,
                   ticket_id: int | None = None, unguessable: bool = False) -> None:
        """Mark ``ack_id`` ``sent``, ``failed`` or ``suppressed``, append ``event`` with it.

        With a ``provider_id`` and ``ticket_id``, a reply quoting that id finds the ticket again
        (an ack reference, trusted from any sender only when ``unguessable``).
        """
        ...


class RelayTx(Protocol):
    """Relay positions and dead letters, inside the store's transaction."""

    def relay_position(self, name: str) -> int:
        """The last seq relay ``name`` saw confirmed (0 before its first)."""
        ...

    def save_relay_position(self, name: str, seq: int) -> None:
        """Move relay ``name`` to ``seq``."""
        ...

    def held_tickets(self, publisher: str,
                     subjects: Sequence[str] | None = None) -> dict[str, int]:
        """Tickets (subjects, all or only ``subjects``) with a dead letter for ``publisher``:
        subject -> the seq of its first."""
        ...

    def add_dead_letter(self, seq: int, publisher: str, attempts: int, error: str) -> bool:
        """Dead-letter event ``seq`` for ``publisher``; False if it was there already."""
        ...


class ReplyTarget(NamedTuple):
    """What choosing a reply's channel needs to know of a ticket (``reply_target``)."""

    ticket_id: int
    number: str
    priority: str
    contact_id: int
    identities: list[tuple[str, str]]
    """The ticket contact's identities, (kind, value): ``email``, ``phone``, ``chat:<net>``."""
    latest: bytes | None
    """The ticket's latest message from the ticket's own contact, as stored (msgpack
    ``InboundMessage``); None if none."""
    recent: list[bytes]
    """The contact's latest messages on any ticket, newest first (at most ``recent_limit``),
    for the channels' windows (the customer's last WhatsApp or WeChat message)."""


class NewReply(NamedTuple):
    """A reply to record, with its outbox row (one row is both)."""

    uid: str
    ticket_id: int
    idempotency_key: str
    request_hash: str
    """A digest of the request: the same key with another body is refused, not replayed."""
    channel: str
    recipient: str
    reply_to: str | None
    payload: bytes
    """The ``OutgoingReply`` (msgpack) the sender receives."""
    not_before: float
    """Epoch second before which it is not sent (quiet hours); 0 for at once."""
    resolution: bool = False


class ReplyRow(NamedTuple):
    """A recorded reply, as the endpoint answers about it."""

    uid: str
    ticket_id: int
    channel: str
    recipient: str
    status: str
    """``queued``, ``sent``, ``delivered`` or ``failed``."""
    request_hash: str
    provider_id: str | None
    resolution: bool


class DueReply(NamedTuple):
    """One queued reply whose time has come, as the reply dispatcher sends it."""

    uid: str
    ticket_id: int
    ticket_number: str
    channel: str
    recipient: str
    reply_to: str | None
    payload: bytes
    attempts: int
    resolution: bool = False


class ReplyOutboxTx(Protocol):
    """Recording and settling replies, inside the store's transaction."""

    def insert_reply(self, reply: NewReply, event: NewEvent) -> ReplyRow:
        """Record ``reply`` (queued) and append ``event`` with it; when the ticket already has
        a reply with this idempotency key, return that one and write nothing."""
        ...

    def retry_reply(self, uid: str, attempts: int, at: float, error: str) -> None:
        """Keep reply ``uid`` queued with ``attempts`` so far; due again at epoch second ``at``."""
        ...

    def finish_reply(self, uid: str, status: str, *, provider_id: str | None = None,
                     error: str | None = None, event: NewEvent | None = None,
                     unguessable: bool = False, attempts: int | None = None) -> None:
        """Set reply ``uid`` to ``status`` (``sent``, ``delivered``, ``failed``), append
        ``event``, record ``attempts`` when given. A ``provider_id`` is kept, and recorded as a
        reference of the reply's ticket (as acknowledgements' are), so the customer's answer
        to it is a follow-up."""
        ...

    def reply_by_provider_id(self, provider_id: str) -> ReplyRow | None:
        """The reply the provider knows as ``provider_id`` (a status callback, a bounce)."""
        ...

    def reply_ticket_number(self, uid: str) -> str:
        """The number of reply ``uid``'s ticket."""
        ...

    def ratable_reply(self, uid: str) -> tuple[str, str] | None:
        """(ticket number, priority) when ``uid`` is a sent resolution not rated yet."""
        ...

    def mark_rated(self, reply_uid: str, rating: int) -> None:
        """Record the rating the resolution ``reply_uid`` received."""
        ...

    def append_event(self, *, event_id: str, type_: str, subject: str, priority: str | None,
                     body: bytes, escalated: bool = False) -> int:
        """As :meth:`gateway.decision.Tx.append_event`."""
        ...

    def resolve_ticket(self, ticket_id: int) -> None:
        """Mark the ticket ``resolved`` (its resolution reply went out): chat messages no
        longer join it by the chat window; replies quoting our messages still do."""
        ...


class StoreTx(Tx, AckOutboxTx, RelayTx, ReplyOutboxTx, Protocol):
    """Everything a function run by :meth:`Store.run` may do."""


class AckOutbox(Protocol):
    """Reading the acknowledgement outbox (its writes are :class:`AckOutboxTx`)."""

    async def due_acks(self, limit: int, now: float) -> list[DueAck]:
        """Pending acknowledgements due at epoch second ``now``, oldest first."""
        ...

    async def next_ack_attempt(self) -> float | None:
        """When the earliest pending acknowledgement is due (epoch seconds); None if none is."""
        ...

    async def acks_sent_since(self, channel: str, recipient: str, since: float) -> int:
        """Acknowledgements sent to ``recipient`` on ``channel`` since epoch second ``since``."""
        ...

    def on_ack_queued(self, listener: Callable[[], None]) -> None:
        """Call ``listener()`` on the event loop after each commit that queued an acknowledgement.

        Only those commits: most tickets are answered inline and queue none, and waking the
        dispatcher on every commit cost two store reads per ticket for nothing.
        """
        ...


class ReplyOutbox(Protocol):
    """Reading replies (their writes are :class:`ReplyOutboxTx`)."""

    async def reply_target(self, number: str, *, recent_limit: int = 10) -> ReplyTarget | None:
        """The ticket ``number`` with its contact's identities and latest messages; None if no
        such ticket."""
        ...

    async def reply_by_key(self, ticket_id: int, idempotency_key: str) -> ReplyRow | None:
        """The ticket's reply recorded with ``idempotency_key``, if any."""
        ...

    async def due_replies(self, limit: int, now: float) -> list[DueReply]:
        """Queued replies due at epoch second ``now``, oldest first."""
        ...

    async def next_reply_attempt(self) -> float | None:
        """When the earliest queued reply is due (epoch seconds); None if none is queued."""
        ...

    async def replies_sent_since(self, channel: str, recipient: str, since: float) -> int:
        """Replies sent to ``recipient`` on ``channel`` since epoch second ``since``."""
        ...


class EventLog(Protocol):
    """The event outbox: committed events in sequence order."""

    last_seq: int
    """The highest committed seq this store has seen."""

    def on_commit(self, listener: Callable[[int], None]) -> None:
        """Call ``listener(last_seq)`` on the event loop after each commit that added events."""
        ...

    async def events_after(self, after: int, limit: int) -> list[tuple[int, bytes]]:
        """(seq, CloudEvent JSON) with ``seq > after``, oldest first, at most ``limit``."""
        ...

    async def outbound_after(self, after: int, limit: int) -> list[OutboundEvent]:
        """The same events as publishers receive them."""
        ...


class ConsumerOffsets(Protocol):
    """Named consumers' positions in the event log (``intake-gateway tail --consumer``)."""

    def position(self, name: str) -> int | None:
        """The last seq consumer ``name`` saved; None if it never did."""
        ...

    def save(self, name: str, seq: int) -> None:
        """Record that consumer ``name`` has everything up to ``seq``."""
        ...

    def close(self) -> None: ...


class EventReader(Protocol):
    """The event log read from another process, read-only: works on a full disk, a read-only
    mount, and beside a gateway that has the store open. Blocking calls (a CLI's)."""

    def events_after(self, after: int, limit: int) -> list[tuple[int, bytes]]:
        """As :meth:`EventLog.events_after`; empty while the store has no schema yet."""
        ...

    def consumer_offsets(self) -> ConsumerOffsets:
        """The named consumers' positions; raises :class:`gateway.errors.TransientError`
        (with the reason) when they cannot be kept, e.g. on a full disk."""
        ...

    def close(self) -> None: ...


class DeadLetters(Protocol):
    """The dead-letter table, for ``intake-gateway replay`` (the relay writes it via
    :class:`RelayTx`)."""

    async def dead_letters(self, publisher: str) -> list[DeadLetter]:
        """``publisher``'s dead and held events, in sequence order."""
        ...

    async def remove_dead_letter(self, publisher: str, seq: int) -> None:
        """Forget event ``seq`` (it was re-published), durably."""
        ...


class ReplayGuards(Protocol):
    """Keys seen once (signed requests' signatures, nonces)."""

    async def first_use(self, scope: str, key: str, *, ttl: float) -> bool:
        """Record ``key`` in ``scope`` for ``ttl`` seconds; False if it is recorded already."""
        ...


class Store(AckOutbox, ReplyOutbox, EventLog, DeadLetters, ReplayGuards, Protocol):
    """A whole store, as the runtime opens it."""

    async def open(self) -> None: ...

    async def close(self) -> None: ...

    async def run(self, fn: Callable[[StoreTx], T]) -> T:
        """Run ``fn(tx)`` in one transaction; return its result once it is durable."""
        ...

    async def probe_write(self) -> None:
        """One small durable write (readiness): raises what a commit would raise."""
        ...

    def adapter_state(self, kind: str) -> AdapterState:
        """The durable key-value state of adapter ``kind``."""
        ...

    async def message_body(self, uid: str) -> bytes | None:
        """The stored ``InboundMessage`` (msgpack) of message ``uid``, or None."""
        ...

    def event_reader(self) -> EventReader:
        """A read-only reader of this store's event log; needs no :meth:`open`."""
        ...


class AtRiskTicket(NamedTuple):
    """An open ticket due soon or overdue (times in epoch microseconds)."""

    number: str
    priority: str
    kind: str
    channel: str
    created_at: int
    due_at: int


class RepeatRow(NamedTuple):
    """One duplicate message: whose, and the ticket it joined."""

    contact_id: int
    name: str | None
    ticket_number: str | None


class RelayLag(NamedTuple):
    """How far relay ``name`` is behind the event log."""

    position: int
    last_seq: int
    oldest_waiting_at: int | None
    """``created_at`` (epoch microseconds) of the first event past the position, if any."""


class DashboardReads(Protocol):
    """The operators' dashboard's reads (``gateway/dashboard/``); plain SQL, read-only.

    Times are epoch microseconds, as the tables store them. Aggregation beyond a ``GROUP BY``
    (regions from phone numbers, device models from stored messages) happens in the dashboard,
    so every store answers the same small questions.
    """

    async def intake_counts(self, since: int, bucket: int
                            ) -> list[tuple[int, str, str, int]]:
        """(bucket index from ``since``, channel, outcome, messages) for messages received
        since ``since``, in buckets of ``bucket`` microseconds."""
        ...

    async def ticket_mix(self, since: int) -> list[tuple[str, str, str, int]]:
        """(kind, priority, area, tickets) of tickets created since ``since``."""
        ...

    async def created_bodies(self, since: int, limit: int) -> list[bytes]:
        """Stored messages (msgpack ``InboundMessage``) that created a ticket since ``since``,
        newest first, at most ``limit``."""
        ...

    async def at_risk(self, due_before: int, limit: int) -> list[AtRiskTicket]:
        """Open tickets due before ``due_before``, earliest due first."""
        ...

    async def duplicates_since(self, since: int, limit: int) -> list[RepeatRow]:
        """Duplicate messages received since ``since`` (at most ``limit``)."""
        ...

    async def contact_identities(self, contact_ids: Sequence[int]
                                 ) -> list[tuple[int, str, str]]:
        """(contact id, kind, value) of those contacts' identities."""
        ...

    async def relay_lag(self, name: str) -> RelayLag:
        """Relay ``name``'s position against the newest event."""
        ...

    async def ack_counts(self) -> dict[str, int]:
        """Acknowledgements by status (pending, sent, failed, suppressed)."""
        ...
