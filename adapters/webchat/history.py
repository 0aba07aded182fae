"""Sessions and their conversations, kept in the adapter's durable state.

Keys in ``AdapterContext.state``: ``s/<sid>`` the session's record, ``h/<sid>/<seq>`` one entry
of its conversation (a visitor message with its receipt, or a reply). A restart, or another
replica, reads them back: catch-up after a reconnection is served from here. The in-memory
:class:`Conversation` is a cache of one session plus what only this process has (its live
sockets, the waiters of long polls); it is rebuilt from the state when missing.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from typing import Any, Literal

import msgspec

from gateway.plugin import AdapterState


class Device(msgspec.Struct, frozen=True, kw_only=True):
    """An app installation that gets notifications: an FCM registration token, or an id the
    operator's push service knows (``webhook``)."""

    kind: Literal["fcm", "webhook"]
    token: str


class SessionRecord(msgspec.Struct, kw_only=True, omit_defaults=True):
    """What is known of one visitor's session. ``email``/``phone`` typed in the pre-chat form
    are claims, kept for reply fallback only; ``verified`` marks a signed identity."""

    site: str
    sid: str
    created: float
    locale: str
    name: str | None = None
    email: str | None = None
    phone: str | None = None
    user_id: str | None = None
    verified: bool = False
    revoked: bool = False
    devices: list[Device] = []


class Entry(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """One line of the conversation, as every client receives it (docs/webchat.md)."""

    seq: int
    kind: Literal["visitor", "reply"]
    at: str
    """ISO 8601, UTC."""
    text: str
    client_id: str | None = None
    """The visitor's id of the message (idempotency: a resend is not a second message)."""
    attachments: list[str] = []
    ticket_number: str | None = None
    outcome: str | None = None
    due_at: str | None = None
    due_text: str | None = None
    """The due time as the visitor reads it, in their language."""
    ack: str | None = None
    """The acknowledgement shown under the message, in the visitor's language."""
    reply_id: str | None = None


_enc = msgspec.json.Encoder()
_dec_record = msgspec.json.Decoder(SessionRecord)
_dec_entry = msgspec.json.Decoder(Entry)


class Conversation:
    """One session in memory: its record, its entries, its live connections."""

    __slots__ = ("changed", "cids", "entries", "lock", "record", "seen", "sockets")

    def __init__(self, record: SessionRecord, entries: list[Entry]) -> None:
        self.record = record
        self.entries = entries
        self.cids = {e.client_id: e for e in entries if e.client_id}
        self.lock = asyncio.Lock()
        self.changed = asyncio.Condition()
        self.sockets: set[Any] = set()
        self.seen = 0
        """The highest seq a client of this session has been given (live or by catch-up)."""

    @property
    def last_seq(self) -> int:
        return self.entries[-1].seq if self.entries else 0

    def after(self, seq: int) -> list[Entry]:
        return [e for e in self.entries if e.seq > seq]


class Conversations:
    """The sessions, durable in ``state``, the most recently used cached in memory."""

    def __init__(self, state: AdapterState, *, history_limit: int, cache: int = 20_000) -> None:
        self.state = state
        self.history_limit = history_limit
        self.cache_size = cache
        self._cache: OrderedDict[str, Conversation] = OrderedDict()
        self._loading: dict[str, asyncio.Lock] = {}

    async def create(self, record: SessionRecord) -> Conversation:
        await self.state.put(f"s/{record.sid}", _enc.encode(record))
        conv = Conversation(record, [])
        self._remember(conv)
        return conv

    async def save(self, conv: Conversation) -> None:
        await self.state.put(f"s/{conv.record.sid}", _enc.encode(conv.record))

    async def get(self, sid: str) -> Conversation | None:
        conv = self._cache.get(sid)
        if conv is not None:
            self._cache.move_to_end(sid)
            return conv
        lock = self._loading.setdefault(sid, asyncio.Lock())
        async with lock:
            conv = self._cache.get(sid)
            if conv is None:
                raw = await self.state.get(f"s/{sid}")
                if raw is None:
                    self._loading.pop(sid, None)
                    return None
                entries = [_dec_entry.decode(v) for _, v in await self.state.items(f"h/{sid}/")]
                conv = Conversation(_dec_record.decode(raw), entries)
                self._remember(conv)
        self._loading.pop(sid, None)
        return conv

    async def append(self, conv: Conversation, entry: Entry) -> None:
        """Write ``entry`` (its ``seq`` is ``conv.last_seq + 1``) durably, then keep it."""
        await self.state.put(f"h/{conv.record.sid}/{entry.seq:010d}", _enc.encode(entry))
        conv.entries.append(entry)
        if entry.client_id:
            conv.cids[entry.client_id] = entry
        while len(conv.entries) > self.history_limit:
            old = conv.entries.pop(0)
            await self.state.delete(f"h/{conv.record.sid}/{old.seq:010d}")
            if old.client_id:
                conv.cids.pop(old.client_id, None)
        async with conv.changed:
            conv.changed.notify_all()

    def _remember(self, conv: Conversation) -> None:
        self._cache[conv.record.sid] = conv
        while len(self._cache) > self.cache_size:
            sid, old = next(iter(self._cache.items()))
            if old.sockets:  # a connected session stays; try the next-oldest later
                self._cache.move_to_end(sid)
                break
            del self._cache[sid]


def encode(value: Any) -> bytes:
    """JSON, with the module's one encoder."""
    return _enc.encode(value)
