"""Which channel, recipient and thread a reply takes, and whether the channel's window is open.

Pure: the caller passes the ticket's latest message, the contact's identities and recent
messages, what each reply sender declares, and the time. Channel rules, as the providers set
them and the senders declare them (``reply_windows``):

- email: to the address, threaded to the customer's latest mail (``In-Reply-To``);
- SMS: any time (quiet hours are the dispatcher's: gateway/replies/service.py);
- WhatsApp: free text only within 24 h of the customer's last WhatsApp message; outside it
  the approved template, or SMS, as ``replies.window_fallback`` says;
- WeChat: customer-service messages only within 48 h; outside it a template message or SMS;
- Telegram: any time, as a reply to the customer's latest message;
- a voice mail is answered by SMS to the caller's number.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import datetime, timedelta

import msgspec

from gateway.errors import RejectedInput
from intake_schemas import InboundMessage

MAIL_KINDS = frozenset({"smtp", "imap", "email"})


class NoRoute(RejectedInput):
    """No channel can reach the customer with this reply: HTTP 422 with the reason."""

    status = 422


class Route(msgspec.Struct, frozen=True, kw_only=True):
    channel: str
    to: str
    reply_to: str | None = None
    template: bool = False
    because: str = "latest_inbound"


class SenderRules(msgspec.Struct, frozen=True, kw_only=True):
    """What one channel's sender declared."""

    window: float | None = None
    template_ready: bool = False


def route_of(m: InboundMessage) -> Route | None:
    """Where the answer to message ``m`` goes by default, on its own channel."""
    c = m.contact
    if m.channel in MAIL_KINDS and c.email:
        pid = m.provider_message_id
        return Route(channel="email", to=c.email,
                     reply_to=pid if pid and not pid.startswith("sha256:") else None)
    if "telegram" in c.chat_ids:
        return Route(channel="telegram", to=c.chat_ids["telegram"],
                     reply_to=m.metadata.get("telegram.message_id"))
    if "wechat" in c.chat_ids:
        return Route(channel="wechat", to=c.chat_ids["wechat"])
    if "whatsapp" in c.chat_ids:
        return Route(channel="whatsapp", to=f"whatsapp:{c.chat_ids['whatsapp']}")
    if m.channel in c.chat_ids and m.channel not in ("sms", "email"):
        # A chat channel of its own (a web chat adapter ``webchat`` with chat_ids["webchat"]):
        # answered on the channel of that name, by whichever adapter declares it.
        return Route(channel=m.channel, to=c.chat_ids[m.channel])
    if m.channel == "twilio" and c.phone:
        voice = m.delivery_scope == "call"
        return Route(channel="sms", to=c.phone, because="voice_by_sms" if voice
                     else "latest_inbound")
    if c.email:
        return Route(channel="email", to=c.email)
    if c.phone:
        return Route(channel="sms", to=c.phone)
    return None


def _identity_route(channel: str, identities: Iterable[tuple[str, str]]) -> Route | None:
    wanted = {"email": "email", "sms": "phone"}.get(channel, f"chat:{channel}")
    for kind, value in identities:
        if kind == wanted:
            to = f"whatsapp:{value}" if channel == "whatsapp" else value
            return Route(channel=channel, to=to, because="requested")
    return None


_NAMES = {"whatsapp": "WhatsApp's 24-hour", "wechat": "WeChat's 48-hour"}


def choose_route(*, latest: InboundMessage | None, recent: list[InboundMessage],
                 identities: list[tuple[str, str]], requested: str | None,
                 senders: Mapping[str, SenderRules], fallback: str, now: datetime) -> Route:
    """The route of one reply, or :class:`NoRoute` naming why nobody can be reached."""
    if requested is not None:
        route = _identity_route(requested, identities)
        if route is None:
            raise NoRoute(f"the ticket's contact has no {requested} identity", field="channel")
    else:
        route = route_of(latest) if latest is not None else None
        if route is None:
            raise NoRoute("the ticket's latest message names no identity to answer")
    if route.channel == "email" and route.reply_to is None:
        # Threaded to the customer's latest mail, wherever the reply was asked to go.
        for m in recent:
            r = route_of(m)
            if r is not None and r.channel == "email" and r.to == route.to and r.reply_to:
                route = msgspec.structs.replace(route, reply_to=r.reply_to)
                break
    if route.channel == "telegram" and route.reply_to is None:
        for m in recent:
            r = route_of(m)
            if r is not None and r.channel == "telegram" and r.to == route.to:
                route = msgspec.structs.replace(route, reply_to=r.reply_to)
                break
    rules = senders.get(route.channel)
    if rules is None:
        return _fallback_or_fail(route, identities, senders, fallback,
                                 f"no adapter sends replies on {route.channel!r}")
    if rules.window is not None:
        last = _last_from(route, recent)
        if last is None or now - last > timedelta(seconds=rules.window):
            what = f"{_NAMES.get(route.channel, route.channel)} customer-service window"
            if fallback in ("template", "template_then_sms") and rules.template_ready:
                return msgspec.structs.replace(route, template=True,
                                               because="window_closed_template")
            return _fallback_or_fail(route, identities, senders, fallback,
                                     f"{what} is closed (the customer's last message on it "
                                     "is older) and no template is configured")
    return route


def _fallback_or_fail(route: Route, identities: list[tuple[str, str]],
                      senders: Mapping[str, SenderRules], fallback: str, why: str) -> Route:
    if fallback in ("sms", "template_then_sms") and route.channel != "sms" \
            and "sms" in senders:
        sms = _identity_route("sms", identities)
        if sms is not None:
            return msgspec.structs.replace(sms, because="window_closed_sms"
                                           if "window" in why else "no_sender_sms")
    raise NoRoute(f"{why}; and no SMS fallback reaches the customer")


def _last_from(route: Route, recent: list[InboundMessage]) -> datetime | None:
    """When the customer last wrote on the route's channel from its identity."""
    for m in recent:  # newest first
        r = route_of(m)
        if r is not None and r.channel == route.channel and r.to == route.to:
            return m.received_at
    return None
