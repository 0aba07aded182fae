"""Builds the replies part of a gateway: the senders by channel, the endpoint, the dispatcher."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from aiohttp import web

from gateway.errors import ConfigError
from gateway.numbering import TicketNumbering
from gateway.plugin import AdapterBase, RequestSigner, parse_duration, resolve_secret
from gateway.replies.config import ReplyConfig
from gateway.replies.dispatch import ReplyDispatcher
from gateway.replies.rating_page import RatingLinks
from gateway.replies.service import ReplyService
from gateway.sla import BusinessCalendar


class Replies:
    """Replies out, as the runtime holds them: ``routes()``, ``start()``, ``stop()``."""

    def __init__(self, config: ReplyConfig, store: Any, adapters: Iterable[AdapterBase], *,
                 api_config: Any, numbering: TicketNumbering, calendar: BusinessCalendar,
                 default_locale: str, event_source: str,
                 first_use: Callable[..., Awaitable[bool]], public_url: str = "") -> None:
        self.config = config
        self.senders: dict[str, AdapterBase] = {}
        for adapter in adapters:
            for channel in adapter.reply_channels:
                if channel in self.senders:
                    raise ConfigError(f"both {self.senders[channel].kind!r} and "
                                      f"{adapter.kind!r} send replies on {channel!r}; "
                                      "disable one")
                self.senders[channel] = adapter
        secret = resolve_secret(config.secret_env, config.secret_file, key="replies.secret")
        if secret is None and config.secret_env is None and config.secret_file is None \
                and api_config is not None:
            # One signing secret for the whole signed API, unless replies have their own.
            secret = resolve_secret(getattr(api_config, "secret_env", None),
                                    getattr(api_config, "secret_file", None),
                                    key="adapters.api.secret")
        window = parse_duration(config.replay_window, key="replies.replay_window")
        self.signer = None if secret is None else RequestSigner(
            secret, window=window.total_seconds(), scope="api:signature")
        links = (RatingLinks(secret, public_url, store, event_source)
                 if secret is not None and public_url and config.rating_link else None)
        self.dispatcher = ReplyDispatcher(store, self.senders, config=config,
                                          event_source=event_source)
        self.service = ReplyService(config, store, self.senders, numbering=numbering,
                                    calendar=calendar, default_locale=default_locale,
                                    event_source=event_source, signer=self.signer,
                                    first_use=first_use, links=links,
                                    on_queued=self.dispatcher.wake)

    @property
    def authenticated(self) -> bool:
        return self.signer is not None

    def routes(self) -> list[web.AbstractRouteDef]:
        return self.service.routes() if self.config.enabled else []

    async def start(self) -> None:
        if self.config.enabled and self.senders:
            await self.dispatcher.start()

    async def stop(self) -> None:
        await self.dispatcher.stop()
