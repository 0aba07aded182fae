"""The channel rules of replies, as pure functions (gateway/replies/routing.py, texts.py)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.replies.routing import NoRoute, SenderRules, choose_route, route_of
from gateway.replies.texts import parse_rating, reply_subject
from intake_schemas import Contact, InboundMessage

NOW = datetime(2026, 5, 4, 10, 0, tzinfo=UTC)
ALL = {ch: SenderRules() for ch in ("email", "sms", "telegram")} | {
    "whatsapp": SenderRules(window=86_400), "wechat": SenderRules(window=172_800)}


def msg(channel: str, *, ago: float = 60, **contact: object) -> InboundMessage:
    return InboundMessage(channel=channel, received_at=NOW - timedelta(seconds=ago),
                          contact=Contact(**contact), text="hi",  # type: ignore[arg-type]
                          provider_message_id="m1@customer.example")


def test_voice_mail_is_answered_by_sms() -> None:
    voice = msgspec.structs.replace(msg("twilio", phone="+8613800000000"), delivery_scope="call")
    route = route_of(voice)
    assert route is not None and (route.channel, route.to, route.because) == (
        "sms", "+8613800000000", "voice_by_sms")


def test_a_chat_channel_of_its_own_is_answered_on_it() -> None:
    route = route_of(msg("webchat", chat_ids={"webchat": "visitor-7"}, email="a@b.example"))
    assert route is not None and (route.channel, route.to) == ("webchat", "visitor-7")


def test_the_wechat_window_is_48_hours_and_falls_back_to_sms() -> None:
    ids = [("chat:wechat", "oX"), ("phone", "+8613800000000")]
    inside = msg("wechat", ago=47 * 3600, chat_ids={"wechat": "oX"})
    route = choose_route(latest=inside, recent=[inside], identities=ids, requested=None,
                         senders=ALL, fallback="template_then_sms", now=NOW)
    assert (route.channel, route.template) == ("wechat", False)
    outside = msg("wechat", ago=49 * 3600, chat_ids={"wechat": "oX"})
    route = choose_route(latest=outside, recent=[outside], identities=ids, requested=None,
                         senders=ALL, fallback="template_then_sms", now=NOW)
    assert (route.channel, route.because) == ("sms", "window_closed_sms")
    with_template = ALL | {"wechat": SenderRules(window=172_800, template_ready=True)}
    route = choose_route(latest=outside, recent=[outside], identities=ids, requested=None,
                         senders=with_template, fallback="template", now=NOW)
    assert (route.channel, route.template) == ("wechat", True)
    with pytest.raises(NoRoute, match="48-hour"):
        choose_route(latest=outside, recent=[outside], identities=ids[:1], requested=None,
                     senders=ALL, fallback="template_then_sms", now=NOW)


def test_a_requested_channel_is_threaded_to_the_latest_mail_on_it() -> None:
    mail = msg("smtp", ago=7200, email="a@b.example")
    chat = msg("telegram", chat_ids={"telegram": "42"})
    route = choose_route(latest=chat, recent=[chat, mail],
                         identities=[("chat:telegram", "42"), ("email", "a@b.example")],
                         requested="email", senders=ALL, fallback="none", now=NOW)
    assert (route.channel, route.to, route.reply_to, route.because) == (
        "email", "a@b.example", "m1@customer.example", "requested")


@pytest.mark.parametrize(("text", "rating"), [
    ("4", 4), (" ５ ", 5), ("3分", 3), ("5 stars", 5), ("1/5", 1), ("4\n\n> quoted", 4),
    ("45", None), ("0", None), ("6", None), ("4 but the technician was late", None),
    ("", None), ("满意", None), ("> 4", None)])
def test_only_a_bare_rating_is_a_rating(text: str, rating: int | None) -> None:
    assert parse_rating(text) == rating


@given(st.text(max_size=300))
def test_parse_rating_never_raises_and_only_answers_1_to_5(text: str) -> None:
    assert parse_rating(text) in (None, 1, 2, 3, 4, 5)


def test_the_reply_subject_carries_the_number_once() -> None:
    assert reply_subject("CX-1", "en", "Re: [CX-1] Router broken") == "[CX-1] Re: Router broken"
    assert reply_subject("CX-1", "zh-CN") == "[CX-1] 关于您的请求的答复"
