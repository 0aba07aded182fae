"""``POST /v1/tickets/{number}/replies``: a downstream reply, durable in the outbox before 202.

The request is authenticated like the signed API (:class:`gateway.plugin.RequestSigner`), needs
an ``Idempotency-Key`` (a retry with the same key answers with the first reply's id and sends
nothing again; the same key with another body is refused), and is routed at once
(:mod:`gateway.replies.routing`): a reply no channel can carry fails now with the reason
(422), not later in silence. The reply's row and its ``reply.queued`` event commit together.
"""

from __future__ import annotations

import hashlib
from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, datetime
from typing import Protocol, TypeVar

import msgspec
import nh3
from aiohttp import web

from gateway.acks import pick_locale
from gateway.errors import NotFound, RejectedInput, TooLarge
from gateway.ids import new_id
from gateway.numbering import TicketNumbering
from gateway.plugin import (
    OutgoingReply,
    ReplyFile,
    ReplySender,
    RequestSigner,
    normalize_email,
    normalize_phone,
)
from gateway.replies.config import ReplyConfig
from gateway.replies.rating_page import RatingLinks
from gateway.replies.routing import NoRoute, Route, SenderRules, choose_route
from gateway.replies.texts import reply_subject, satisfaction_question
from gateway.sla import BusinessCalendar
from gateway.store.protocols import NewEvent, NewReply, ReplyOutbox, ReplyOutboxTx, ReplyRow
from intake_schemas import InboundMessage, ReplyQueued, ReplyQueuedData
from intake_schemas.replies import ReplyAccepted, ReplyRequest

T = TypeVar("T")

_request = msgspec.json.Decoder(ReplyRequest)
_message = msgspec.msgpack.Decoder(InboundMessage)
_encode = msgspec.json.Encoder().encode
_encode_mp = msgspec.msgpack.Encoder().encode
_MAX_KEY = 200
_MAX_FILES = 10


class ReplyStore(ReplyOutbox, Protocol):
    """What accepting a reply needs of a store."""

    async def run(self, fn: Callable[[ReplyOutboxTx], T]) -> T: ...


class IdempotencyConflict(RejectedInput):
    """The key was used for another reply of this ticket: 422, use a new key."""

    status = 422


class ReplyService:
    """Accepts replies: routes them, records them with their outbox row and event."""

    def __init__(self, config: ReplyConfig, store: ReplyStore, senders: Mapping[str, ReplySender],
                 *, numbering: TicketNumbering, calendar: BusinessCalendar, default_locale: str,
                 event_source: str, signer: RequestSigner | None,
                 first_use: Callable[..., Awaitable[bool]],
                 clock: Callable[[], datetime] = lambda: datetime.now(UTC),
                 links: RatingLinks | None = None,
                 on_queued: Callable[[], None] = lambda: None) -> None:
        self.config = config
        self.store = store
        self.senders = senders
        self.numbering = numbering
        self.calendar = calendar
        self.default_locale = default_locale
        self.event_source = event_source
        self.signer = signer
        self.first_use = first_use
        self.clock = clock
        self.links = links
        self.on_queued = on_queued
        """Called once a reply is durable: wakes the dispatcher."""
        """Signed links to the one-question rating page; None without a secret."""

    def rules(self) -> dict[str, SenderRules]:
        return {channel: SenderRules(window=sender.reply_windows.get(channel),
                                     template_ready=sender.reply_template_ready(channel))
                for channel, sender in self.senders.items()}

    def routes(self) -> list[web.AbstractRouteDef]:
        links = self.links.routes() if self.links is not None else []
        return [web.post("/v1/tickets/{number}/replies", self.handle), *links]

    async def handle(self, request: web.Request) -> web.Response:
        """Verify, decode, accept; 202 with the reply id once it is durable."""
        if request.content_type != "application/json":
            raise RejectedInput("send the reply as application/json")
        body = await request.read()
        if self.signer is not None:
            await self.signer.verify(request.headers, body, now=self.clock().timestamp(),
                                     first_use=self.first_use)
        key = request.headers.get("Idempotency-Key")
        if key is None or not key.isprintable() or not 0 < len(key) <= _MAX_KEY:
            raise RejectedInput(f"an Idempotency-Key header of 1 to {_MAX_KEY} printable "
                                "characters is required, the same on every retry",
                                field="Idempotency-Key")
        try:
            req = _request.decode(body)
        except msgspec.ValidationError as exc:
            raise RejectedInput(f"the JSON does not match the reply schema: {exc}") from None
        except (msgspec.DecodeError, UnicodeDecodeError) as exc:
            raise RejectedInput(f"the body is not valid UTF-8 JSON: {exc}") from None
        accepted = await self.accept(request.match_info["number"], req, key=key,
                                     request_hash=hashlib.sha256(body).hexdigest())
        return web.Response(body=_encode(accepted), status=202, content_type="application/json")

    async def accept(self, number: str, req: ReplyRequest, *, key: str,
                     request_hash: str) -> ReplyAccepted:
        """Route ``req`` and record it; the same ``key`` again answers with the first reply."""
        canonical = self.numbering.parse(number)
        target = None if canonical is None else await self.store.reply_target(canonical)
        if target is None:
            raise NotFound("no ticket has this number")
        earlier = await self.store.reply_by_key(target.ticket_id, key)
        if earlier is not None:
            return self._replayed(earlier.request_hash, request_hash, earlier.uid, target.number,
                                  earlier.channel, earlier.status)
        text = req.text.strip()
        if not text:
            raise RejectedInput("the reply is empty", field="text")
        if len(text) > self.config.max_text_chars:
            raise TooLarge(f"the reply has {len(text)} characters; the limit is "
                           f"{self.config.max_text_chars}")
        if req.html is not None and len(req.html) > 4 * self.config.max_text_chars:
            raise TooLarge(f"the HTML has {len(req.html)} characters; the limit is "
                           f"{4 * self.config.max_text_chars}")
        if len(req.attachments) > _MAX_FILES:
            raise TooLarge(f"{len(req.attachments)} attachments; the limit is {_MAX_FILES}")
        latest = None if target.latest is None else _message.decode(target.latest)
        recent = [_message.decode(b) for b in target.recent]
        if latest is not None and latest.auto_submitted:
            # The customer's auto-reply is no channel they chose: their latest own words are.
            latest = next((m for m in recent if not m.auto_submitted), latest)
        now = self.clock()
        route = choose_route(latest=latest, recent=recent, identities=target.identities,
                             requested=req.channel, senders=self.rules(),
                             fallback=self.config.window_fallback, now=now)
        locale = pick_locale(latest.locale if latest else None, self.default_locale)
        reply_id = new_id()
        if req.resolution and self.config.satisfaction:
            link = (self.links.link(reply_id, locale) if self.links is not None
                    and self.config.rating_link else None)
            text = f"{text}\n\n{satisfaction_question(target.number, locale, link)}"
        subject = reply_subject(target.number, locale, _customer_subject(latest, recent, route))
        html = nh3.clean(req.html) if req.html else None
        outgoing = OutgoingReply(
            reply_id=reply_id, ticket_number=target.number, subject=subject, text=text,
            html=html, locale=locale, template=route.template,
            files=[ReplyFile(name=a.name, content_type=a.content_type, data=a.data)
                   for a in req.attachments])
        not_before = self._not_before(route.channel, target.priority, now)
        event = ReplyQueued(
            id=new_id(), source=self.event_source, subject=target.number, time=now,
            priority=target.priority,  # type: ignore[arg-type]
            data=ReplyQueuedData(reply_id=outgoing.reply_id, ticket_number=target.number,
                                 channel=route.channel, resolution=req.resolution,
                                 chosen_because=route.because))
        row = NewReply(uid=outgoing.reply_id, ticket_id=target.ticket_id,
                       idempotency_key=key, request_hash=request_hash, channel=route.channel,
                       recipient=route.to, reply_to=route.reply_to,
                       payload=_encode_mp(outgoing), not_before=not_before,
                       resolution=req.resolution)
        stored = await self._queue(row, event)
        if stored.uid != row.uid:  # a concurrent request with the same key won
            return self._replayed(stored.request_hash, request_hash, stored.uid, target.number,
                                  stored.channel, stored.status)
        return ReplyAccepted(reply_id=row.uid, ticket_number=target.number,
                             channel=route.channel)  # type: ignore[arg-type]

    async def forward(self, *, ticket_number: str, text: str, channel: str, to: str, key: str,
                      locale: str, because: str) -> str:
        """See :meth:`gateway.plugin.Intake.forward_reply`."""
        if not self.config.enabled:
            raise NoRoute("replies are disabled on this gateway", field="channel")
        if channel not in ("email", "sms") or channel not in self.senders:
            raise NoRoute(f"no adapter sends replies on {channel!r}", field="channel")
        if not key.isprintable() or not 0 < len(key) <= _MAX_KEY:
            raise RejectedInput(f"key: 1 to {_MAX_KEY} printable characters", field="key")
        # The address is only a recipient here: checked as every channel checks it, and
        # written to the reply row, never to the contact's identities.
        to = (normalize_email(to, field="to") if channel == "email"
              else normalize_phone(to, default_region=None, field="to"))
        canonical = self.numbering.parse(ticket_number)
        target = None if canonical is None else await self.store.reply_target(canonical)
        if target is None:
            raise NotFound("no ticket has this number")
        request_hash = hashlib.sha256(
            f"{channel}\x1f{to}\x1f{because}\x1f{text}".encode()).hexdigest()
        earlier = await self.store.reply_by_key(target.ticket_id, key)
        if earlier is not None:
            return earlier.uid
        text = text.strip()
        if not text:
            raise RejectedInput("the reply is empty", field="text")
        if len(text) > self.config.max_text_chars:
            raise TooLarge(f"the reply has {len(text)} characters; the limit is "
                           f"{self.config.max_text_chars}")
        locale = pick_locale(locale, self.default_locale)
        now = self.clock()
        outgoing = OutgoingReply(reply_id=new_id(), ticket_number=target.number,
                                 subject=reply_subject(target.number, locale), text=text,
                                 locale=locale)
        not_before = self._not_before(channel, target.priority, now)
        event = ReplyQueued(
            id=new_id(), source=self.event_source, subject=target.number, time=now,
            priority=target.priority,  # type: ignore[arg-type]
            data=ReplyQueuedData(reply_id=outgoing.reply_id, ticket_number=target.number,
                                 channel=channel, chosen_because=because))
        row = NewReply(uid=outgoing.reply_id, ticket_id=target.ticket_id, idempotency_key=key,
                       request_hash=request_hash, channel=channel, recipient=to, reply_to=None,
                       payload=_encode_mp(outgoing), not_before=not_before)
        stored = await self._queue(row, event)
        return stored.uid  # another replica's, when it queued the same key first

    def _not_before(self, channel: str, priority: str, now: datetime) -> float:
        """When the reply may go: SMS waits for business hours (``replies.quiet_hours``) unless
        the ticket is high priority; 0 for now."""
        if (channel == "sms" and self.config.quiet_hours and priority != "high"
                and not self.calendar.is_open(now)):
            return self.calendar.next_opening(now).timestamp()
        return 0.0

    async def _queue(self, row: NewReply, event: ReplyQueued) -> ReplyRow:
        """Commit the reply's row with its ``reply.queued`` event, then wake the dispatcher;
        the row stored under the key (another request's, when it queued the same key first)."""
        subject, priority = event.subject, event.priority
        stored = await self.store.run(lambda tx: tx.insert_reply(row, NewEvent(
            id=event.id, type="reply.queued", subject=subject, body=_encode(event),
            priority=priority)))
        self.on_queued()
        return stored

    @staticmethod
    def _replayed(stored_hash: str, request_hash: str, uid: str, number: str, channel: str,
                  status: str) -> ReplyAccepted:
        if stored_hash != request_hash:
            raise IdempotencyConflict("this Idempotency-Key was used for another reply to this "
                                      "ticket; send a new reply with a new key",
                                      field="Idempotency-Key")
        return ReplyAccepted(reply_id=uid, ticket_number=number, channel=channel,  # type: ignore[arg-type]
                             status=status, replayed=True)  # type: ignore[arg-type]


def _customer_subject(latest: InboundMessage | None, recent: list[InboundMessage],
                      route: Route) -> str:
    """The subject of the customer's mail the reply threads to, so clients group them."""
    if route.channel != "email":
        return ""
    for m in ([latest] if latest else []) + recent:
        if m.provider_message_id == route.reply_to and m.subject:
            return m.subject
    return latest.subject if latest else ""


