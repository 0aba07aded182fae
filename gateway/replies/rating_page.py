"""The one-question page a resolution links to: ``/v1/ratings/{reply_id}?l=LOCALE&sig=…``.

The link is signed (HMAC-SHA256 over the reply id and the locale, with a key derived from the
replies secret), so only the customer who received the resolution can rate it; a rating is
taken once, and becomes the same ``ticket.rated`` event as a ``1`` to ``5`` by message
(``channel = "link"``). The page loads nothing remote and has no script.
"""

from __future__ import annotations

import hashlib
import hmac
import html
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

import msgspec
from aiohttp import web

from gateway.errors import Forbidden, RejectedInput
from gateway.ids import new_id
from gateway.plugin.locales import pick_locale
from gateway.replies.texts import RATING_PAGE
from gateway.store.protocols import ReplyOutboxTx
from intake_schemas import TicketRated, TicketRatedData

_encode = msgspec.json.Encoder().encode


class RatingLinks:
    """Makes and checks the signed links, serves the page, records the rating."""

    def __init__(self, secret: str, public_url: str, store: Any, event_source: str,
                 clock: Callable[[], datetime] = lambda: datetime.now(UTC)) -> None:
        self.key = hashlib.sha256(b"intake-rating-link\x00" + secret.encode()).digest()
        self.public_url = public_url.rstrip("/")
        self.store = store
        self.event_source = event_source
        self.clock = clock

    def _sig(self, reply_id: str, locale: str) -> str:
        return hmac.new(self.key, f"{reply_id}\x00{locale}".encode(),
                        hashlib.sha256).hexdigest()[:40]

    def link(self, reply_id: str, locale: str) -> str:
        return (f"{self.public_url}/v1/ratings/{quote(reply_id)}?l={quote(locale)}"
                f"&sig={self._sig(reply_id, locale)}")

    def routes(self) -> list[web.AbstractRouteDef]:
        return [web.get("/v1/ratings/{reply_id}", self.page),
                web.post("/v1/ratings/{reply_id}", self.rate)]

    def _checked(self, request: web.Request) -> tuple[str, str]:
        reply_id = request.match_info["reply_id"]
        locale = request.query.get("l", "en")
        sig = request.query.get("sig", "")
        if not (sig.isascii() and hmac.compare_digest(sig.encode(),
                                                      self._sig(reply_id, locale).encode())):
            raise Forbidden("this rating link is not valid")
        return reply_id, pick_locale(locale, "en")

    async def page(self, request: web.Request) -> web.Response:
        reply_id, locale = self._checked(request)
        number = await self.store.run(lambda tx: tx.ratable_reply(reply_id))
        question, _, gone, (low, high) = RATING_PAGE[locale]
        if number is None:
            return _html(locale, html.escape(gone), status=410)
        buttons = "".join(f'<button name="rating" value="{n}">{n}</button>' for n in range(1, 6))
        body = (f"<p>{html.escape(question.format(number=number[0]))}</p>"
                f'<form method="post"><p>1 = {html.escape(low)}, 5 = {html.escape(high)}</p>'
                f"{buttons}</form>")
        return _html(locale, body)

    async def rate(self, request: web.Request) -> web.Response:
        reply_id, locale = self._checked(request)
        form = await request.post()
        raw = str(form.get("rating", ""))
        if raw not in ("1", "2", "3", "4", "5"):
            raise RejectedInput("rating must be 1 to 5", field="rating")
        rating = int(raw)
        source, now = self.event_source, self.clock()

        def record(tx: ReplyOutboxTx) -> bool:
            found = tx.ratable_reply(reply_id)
            if found is None:
                return False
            number, priority = found
            tx.mark_rated(reply_id, rating)
            event = TicketRated(id=new_id(), source=source, subject=number, time=now,
                                priority=priority,  # type: ignore[arg-type]
                                data=TicketRatedData(ticket_number=number, rating=rating,
                                                     channel="link", reply_id=reply_id))
            tx.append_event(event_id=event.id, type_="ticket.rated", subject=number,
                            priority=priority, body=_encode(event))
            return True

        _, thanks, gone, _ = RATING_PAGE[locale]
        if not await self.store.run(record):
            return _html(locale, html.escape(gone), status=410)
        return _html(locale, html.escape(thanks))


def _html(locale: str, body: str, *, status: int = 200) -> web.Response:
    page = (f'<!doctype html><html lang="{html.escape(locale)}"><meta charset="utf-8">'
            '<meta name="viewport" content="width=device-width">'
            f"<title>{html.escape(locale)}</title><body>{body}</body></html>")
    return web.Response(text=page, status=status, content_type="text/html",
                        headers={"Content-Security-Policy": "default-src 'none'; "
                                 "form-action 'self'", "Referrer-Policy": "no-referrer"})
