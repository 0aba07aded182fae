"""Builds a running gateway from its config: store, intake, adapters, queue, HTTP listener."""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import resource
import signal
from pathlib import Path
from typing import Any

from aiohttp import web

from gateway.ack_dispatch import AckDispatcher
from gateway.attachments import AttachmentStore
from gateway.config import (
    Config,
    convert_section,
    is_loopback,
    parse_duration,
    resolve_secret,
    split_listen,
)
from gateway.dashboard import Dashboard
from gateway.dashboard.actions import replay_dead_letters_now
from gateway.errors import ConfigError, StorageFull, TransientError
from gateway.files import make_private_dir, make_private_tree, probe_disk
from gateway.http import CoreRoutes, GatedSite, create_app
from gateway.intake import IntakeService
from gateway.landing import announce, landing_routes, useful_links
from gateway.leases import LeasedExclusive, hold_while_leader
from gateway.logs import install_log_guards
from gateway.observability import ScrapeGauges, declare_channels
from gateway.openapi import configured_operations, served_document
from gateway.openapi_routes import openapi_routes
from gateway.plugin import (
    ADAPTER_GROUP,
    PUBLISHER_GROUP,
    AdapterBase,
    AdapterContext,
    Exclusive,
)
from gateway.plugin.limits import ConnectionGate, raise_open_file_limit
from gateway.queues.embedded import EventWaiters
from gateway.registry import load_plugin, load_plugins
from gateway.relay import EventRelay
from gateway.replies.assembly import Replies
from gateway.store.backends import open_configured_store, rate_limiter_factory, replica_parts
from gateway.store.dashboard_sql import dashboard_reads

log = logging.getLogger("intake")


class Gateway:
    """One gateway process. ``await start()``, serve, ``await stop()``."""

    def __init__(self, config: Config, data_dir: str | Path, *, listen: str | None = None) -> None:
        # Before any adapter is built: clients log their URLs (a bot token's) when constructed.
        install_log_guards()
        self.config = config
        self.data_dir = Path(data_dir).resolve()
        self.listen = listen or config.server.listen
        self.host, self.port = split_listen(self.listen)
        self._ephemeral = self.port == 0
        self._stopped = False
        if self.port == 0:
            # Adapters need their public URL (webhook signatures) when they are built, so a
            # request for "any port" is settled now rather than after binding.
            self.port = _free_port(self.host)
        self.events_token: str | None = resolve_secret(
            config.server.events_token_env, config.server.events_token_file,
            key="server.events_token")
        self.store = open_configured_store(config.store, self.data_dir)
        # Singletons (IMAP mailboxes, Telegram polling, the relay) hold a lease in a shared
        # store; one process on SQLite simply runs them.
        self.exclusive: Exclusive
        self.exclusive, blobs = replica_parts(self.store, config.store)
        self.rate_limiter = rate_limiter_factory(self.store, config.store)
        self._relay_lease: asyncio.Task[None] | None = None
        self.attachments = AttachmentStore(
            config.attachments.path or self.data_dir / "attachments",
            max_bytes=config.intake.max_attachment_bytes,
            blobs=blobs)
        self.adapter_classes = load_plugins(ADAPTER_GROUP)
        unknown = set(config.adapters) - set(self.adapter_classes)
        if unknown:
            raise ConfigError(f"adapters.{sorted(unknown)[0]}: no adapter of that kind is "
                              f"installed; installed: {', '.join(self.adapter_classes)}")
        self.adapter_configs: dict[str, Any] = {
            kind: convert_section(config.adapters.get(kind, {}), cls.Config,
                                  where=f"adapters.{kind}")
            for kind, cls in self.adapter_classes.items()
        }
        publisher_cls = load_plugin(PUBLISHER_GROUP, config.queue.backend)
        self.publisher = publisher_cls(convert_section(
            config.queue.settings, publisher_cls.Config, where="queue.settings"))
        # An adapter is an ack sender when it declares the channels it sends on (AckSender).
        senders = [cls for kind, cls in self.adapter_classes.items()
                   if self.adapter_configs[kind].enabled and cls.ack_channels]
        public_url = (config.server.public_url
                      or f"http://{self.host if ':' not in self.host else f'[{self.host}]'}"
                         f":{self.port}").rstrip("/")
        self.intake = IntakeService(
            config, self.store, self.attachments,
            ack_channels=frozenset(ch for c in senders for ch in c.ack_channels),
            public_url=public_url)
        self.public_url = public_url
        self.adapters: list[AdapterBase] = [
            cls(self.adapter_configs[kind], self.intake, self.context_for(kind))
            for kind, cls in self.adapter_classes.items()
            if self.adapter_configs[kind].enabled
        ]
        self.senders: dict[str, AdapterBase] = {}
        for adapter in self.adapters:
            for channel in adapter.ack_channels:
                if channel in self.senders:
                    raise ConfigError(f"both {self.senders[channel].kind!r} and {adapter.kind!r} "
                                      f"send acknowledgements on {channel!r}; disable one")
                self.senders[channel] = adapter
        self.dispatcher = AckDispatcher(
            self.store, self.senders, policy=config.acks, calendar=self.intake.calendar,
            default_locale=config.intake.default_locale, event_source=config.intake.event_source)
        self.replies = Replies(
            config.replies, self.store, self.adapters,
            api_config=self.adapter_configs.get("api"), numbering=self.intake.numbering,
            calendar=self.intake.calendar, default_locale=config.intake.default_locale,
            event_source=config.intake.event_source, first_use=self.store.first_use,
            public_url=public_url)
        self.intake.reply_forwarder = self.replies.service.forward
        if not is_loopback(self.host):
            self._refuse_open_listener()
        self.waiters = EventWaiters(0)
        self.relay: EventRelay | None = None
        self._runner: web.AppRunner | None = None
        self.app: web.Application | None = None
        self.dashboard = self._build_dashboard()
        declare_channels(a.kind for a in self.adapters if a.receives)
        self.scrape_gauges = ScrapeGauges(
            dashboard_reads(self.store), self.store, publisher=config.queue.backend,
            relay_active=self.publisher.relay_needed,
            at_risk_within=parse_duration(config.dashboard.at_risk_within,
                                          key="dashboard.at_risk_within").total_seconds(),
            readiness=self.readiness,
            checks=["store", "disk", "relay", *(a.kind for a in self.adapters)])
        server = config.server
        self.http_gate = ConnectionGate("http", total=server.max_connections,
                                        per_peer=server.max_connections_per_peer,
                                        exempt=server.per_peer_exempt)

    def context_for(self, kind: str) -> AdapterContext:
        """The :class:`AdapterContext` of adapter ``kind``: its state, its logger, our URLs."""
        return AdapterContext(kind=kind, data_dir=str(self.data_dir), public_url=self.public_url,
                              listen_host=self.host,
                              default_locale=self.config.intake.default_locale,
                              state=self.store.adapter_state(kind),
                              log=logging.getLogger(f"intake.{kind}"),
                              ephemeral_ports=self._ephemeral, exclusive=self.exclusive,
                              rate_limiter=self.rate_limiter)

    def _refuse_open_listener(self) -> None:
        # Off loopback, every door must be locked: an unauthenticated API or event feed would
        # let anyone open tickets or read customer data.
        for adapter in self.adapters:
            if adapter.requires_auth_off_loopback and not adapter.authenticated:
                raise ConfigError(
                    f"refusing to listen on {self.listen} with the {adapter.kind!r} adapter "
                    f"unauthenticated: set adapters.{adapter.kind}.secret_env (or _file), or "
                    "listen on 127.0.0.1")
        if self.config.replies.enabled and not self.replies.authenticated:
            raise ConfigError(f"refusing to listen on {self.listen} with unsigned replies: set "
                              "replies.secret_env (or adapters.api.secret_env), set "
                              "replies.enabled = false, or listen on 127.0.0.1")
        if self.events_token is None:
            raise ConfigError(f"refusing to listen on {self.listen} with /v1/events open: set "
                              "server.events_token_env (or _file), or listen on 127.0.0.1")

    async def start(self) -> None:
        """Open the store, start adapters and the publisher, then listen."""
        self._check_open_file_limit()
        # Tickets, contacts and raw mail live here: readable by the service user only.
        make_private_dir(self.data_dir)
        await self.store.open()
        self.waiters = EventWaiters(self.store.last_seq)
        self.store.on_commit(self.waiters.committed)
        if self.publisher.relay_needed:
            # A misconfigured publisher stops the start (ConfigError propagates); a broker
            # that is merely down must not stop the gateway from accepting messages: the relay
            # then keeps connecting in the background.
            try:
                await asyncio.wait_for(self.publisher.start(), 15)
                connected = True
            except (TransientError, TimeoutError):
                log.warning("queue %s unreachable at start; events wait in the outbox",
                            self.config.queue.backend)
                connected = False
            self.relay = EventRelay(self.store, self.publisher, name=self.config.queue.backend,
                                    batch_size=self.config.queue.batch_size,
                                    max_attempts=self.config.queue.max_attempts,
                                    max_backoff=self.config.queue.max_backoff,
                                    max_event_bytes=self.config.queue.max_event_bytes)
            if isinstance(self.exclusive, LeasedExclusive):
                # Replicas: one relay publishes at a time; the others stand by.
                relay = self.relay
                self._relay_lease = asyncio.create_task(hold_while_leader(
                    self.exclusive, f"relay:{relay.name}",
                    start=lambda: relay.start(connected=connected), stop=relay.stop),
                    name="relay-lease")
            else:
                await self.relay.start(connected=connected)
        else:
            await self.publisher.start()
        for adapter in self.adapters:
            await adapter.start()
        # Adapters keep state of their own under the data dir (Twilio's opt-outs, IMAP
        # positions): whatever mode they created it with, it is the service user's alone.
        make_private_tree(self.data_dir, skip=(self.attachments.root,))
        if self.senders:
            await self.dispatcher.start()
        await self.replies.start()
        app = create_app(
            CoreRoutes(events=self.store, waiters=self.waiters, attachments=self.attachments,
                       events_token=self.events_token, readiness=self.readiness,
                       body_timeout=self.config.server.body_timeout,
                       max_body_bytes=self.config.server.max_body_bytes,
                       before_metrics=self.scrape_gauges.refresh),
            [route for adapter in self.adapters for route in adapter.routes()]
            + self.replies.routes() + self.operator_routes())
        app.router.add_routes(openapi_routes(self.openapi_document()))
        self.app = app
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False,
                                     keepalive_timeout=self.config.server.idle_timeout)
        await self._runner.setup()
        site = GatedSite(self._runner, self.host, self.port, gate=self.http_gate)
        try:
            await site.start()
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                # One line, not a traceback: the commonest first-run failure.
                raise ConfigError(
                    f"{self.listen} is already in use (another gateway still running?): stop "
                    f"it, or choose another port, e.g. --listen {self.host}:{self.port + 1} "
                    f"(make run ARGS='--listen {self.host}:{self.port + 1}')") from None
            raise
        log.info("listening on %s (data in %s)", self.url, self.data_dir)

    @property
    def form_path(self) -> str | None:
        """The web form's path when that adapter is enabled."""
        form = self.adapter_configs.get("webform")
        return str(form.path) if form is not None and form.enabled else None

    @property
    def dashboard_path(self) -> str:
        return self.config.dashboard.path.rstrip("/") or "/dashboard"

    def openapi_document(self) -> dict[str, Any]:
        """What ``/openapi.json`` serves: this configuration's routes, each described."""
        replies_on = bool(self.replies.routes())
        dashboard = self.dashboard
        return served_document(
            self.adapters, events_token=self.events_token is not None,
            configured=configured_operations(
                landing=True,
                dashboard_path=dashboard.path if dashboard is not None else None,
                dashboard_token=dashboard is not None and dashboard.access.token is not None,
                replies=replies_on, replies_signed=self.replies.service.signer is not None,
                rating_page=replies_on and self.replies.service.links is not None))

    def operator_routes(self) -> list[web.AbstractRouteDef]:
        """Routes of the core's own pages: ``/`` and the dashboard."""
        routes = landing_routes(loopback=is_loopback(self.host), form_path=self.form_path,
                                dashboard_path=self.dashboard_path)
        if self.dashboard is not None:
            routes += self.dashboard.routes()
        return routes

    def _build_dashboard(self) -> Dashboard | None:
        cfg = self.config.dashboard
        if not cfg.enabled:
            return None
        if not cfg.path.startswith("/") or cfg.path.rstrip("/") in ("", "/form", "/v1"):
            raise ConfigError("dashboard.path must start with '/' and be a path of its own")
        token = resolve_secret(cfg.token_env, cfg.token_file, key="dashboard.token")
        if token is None and not is_loopback(self.host):
            # Customer data behind no lock on an open listener: not served at all.
            log.warning("dashboard not served: %s is not loopback and no dashboard.token_env "
                        "(or _file) is set", self.listen)
            return None
        return Dashboard(
            cfg, reads=dashboard_reads(self.store), letters=self.store,
            adapters=self.adapters, relay_backend=self.config.queue.backend,
            relay_active=self.publisher.relay_needed,
            replay_dead_letters=lambda: replay_dead_letters_now(self.store, self.config),
            token=token, secure_cookie=self.public_url.startswith("https://"),
            timezone=self.config.calendar.timezone,
            at_risk_within=parse_duration(cfg.at_risk_within,
                                          key="dashboard.at_risk_within").total_seconds())

    def _check_open_file_limit(self) -> None:
        soft, _hard = raise_open_file_limit()
        wanted = self.config.server.max_connections
        if soft != resource.RLIM_INFINITY and (wanted == 0 or wanted + 256 > soft):
            # Past the open-file limit accept() fails for every listener, SMTP included, and
            # the store cannot open files: the connection limit must bite first.
            log.warning("server.max_connections (%s) leaves too little of the open-file limit "
                        "(%d) for SMTP, the store and outgoing connections; raise the hard "
                        "limit (LimitNOFILE=) or lower server.max_connections",
                        wanted or "unlimited", soft)

    async def readiness(self) -> dict[str, str]:
        """What stops this replica from taking messages now, by check; empty when ready."""
        problems: dict[str, str] = {}
        try:
            await self.store.probe_write()
        except TransientError as exc:
            problems["store"] = str(exc) if isinstance(exc, StorageFull) else "cannot write"
        try:
            await asyncio.to_thread(probe_disk, self.data_dir)
        except OSError as exc:
            problems["disk"] = os.strerror(exc.errno) if exc.errno else "cannot write"
        if self.relay is not None and self._relay_active() and (
                why := self.relay.stuck(after=self.config.queue.stuck_after)):
            problems["relay"] = why
        for adapter in self.adapters:
            if why := adapter.not_ready():
                problems[adapter.kind] = why
        return problems

    def _relay_active(self) -> bool:
        """Whether this replica's relay runs (a standby's waits for the lease)."""
        if self.relay is None:
            return False
        if isinstance(self.exclusive, LeasedExclusive):
            return f"relay:{self.relay.name}" in self.exclusive.held
        return True

    @property
    def url(self) -> str:
        """The base URL of the HTTP listener."""
        host = self.host if ":" not in self.host else f"[{self.host}]"
        return f"http://{host}:{self.port}"

    async def stop(self) -> None:
        """Stop listening, let accepted work finish, close everything (once; repeats are no-ops)."""
        if self._stopped:
            return
        self._stopped = True
        if self._runner is not None:
            for adapter in self.adapters:
                await adapter.draining()
            await self._runner.cleanup()
            self._runner = None
        await self.dispatcher.stop()
        await self.replies.stop()
        for adapter in reversed(self.adapters):
            await adapter.stop()
        if self._relay_lease is not None:
            self._relay_lease.cancel()
            await asyncio.gather(self._relay_lease, return_exceptions=True)
            self._relay_lease = None
        if self.relay is not None:
            await self.relay.stop()
        await self.publisher.close()
        await self.store.close()


def _free_port(host: str) -> int:
    import socket

    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


async def serve(gw: Gateway) -> None:
    """Run until SIGINT or SIGTERM."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await gw.start()
    except BaseException:
        await gw.stop()  # the store and adapters opened before the failure close again
        raise
    if gw.app is not None:
        announce(gw.url, useful_links(gw.app, gw.form_path, gw.dashboard_path))
    try:
        await stop.wait()
    finally:
        await gw.stop()
