"""One typed configuration, read from TOML.

The root :class:`Config` and every section forbid unknown keys, so a typo fails at start with the
key's path. Each adapter's and publisher's table is converted into that plug-in's own ``Config``
Struct by :mod:`gateway.registry`. Secrets are never values in the file: a key names an environment
variable (``*_env``) or a file (``*_file``) and :func:`resolve_secret` reads it once at start.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Literal

import msgspec

from gateway.errors import ConfigError
from gateway.numbering import NumberingConfig
from gateway.plugin.settings import (  # noqa: F401  (re-exported: the core's callers use these)
    is_loopback,
    parse_duration,
    resolve_secret,
    split_listen,
)
from gateway.replies.config import ReplyConfig
from gateway.sla import CalendarConfig, TargetsConfig
from gateway.triage import TriageConfig


class _Section(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Base for config sections: immutable, keyword-only, unknown keys rejected."""


class ServerConfig(_Section, frozen=True):
    """The HTTP listener shared by the web form, the API, webhooks, health and events."""

    listen: str = "127.0.0.1:8080"
    public_url: str | None = None
    """The URL customers and providers use to reach us (behind a proxy); used for signatures."""
    max_body_bytes: int = 26_214_400
    """Largest request body accepted by any route (413 above it)."""
    events_token_env: str | None = None
    """Environment variable holding the bearer token ``GET /v1/events`` requires; required when
    listening off loopback."""
    events_token_file: str | None = None
    max_connections: int = 1000
    """Connections open at once on the HTTP listener; beyond it new ones get 503 (0: no limit)."""
    max_connections_per_peer: int = 128
    """Connections open at once from one IPv4 address or IPv6 /64 (503 beyond; 0: no limit).
    Generous because carrier-grade NAT puts many customers behind one IPv4 address."""
    per_peer_exempt: list[str] = msgspec.field(
        default_factory=lambda: ["127.0.0.0/8", "::1/128"])
    """Addresses or networks not held to the per-peer limit: the TLS proxy in front, whose
    connections carry every customer (they still count towards ``max_connections``). Loopback
    by default, where a proxy on the same host connects from."""
    idle_timeout: float = 15.0
    """Seconds a connection may take to send a complete request head, counted from its opening
    and from each response: bounds idle keep-alive connections and slow headers alike."""
    body_timeout: float = 120.0
    """Seconds a request body may take to arrive in full after its head (0: no limit)."""


class StoreConfig(_Section, frozen=True):
    """Where tickets, messages and the outbox live."""

    backend: Literal["sqlite", "postgres"] = "sqlite"
    path: str | None = None
    """SQLite database file; default ``<data-dir>/intake.sqlite3``."""
    dsn_env: str | None = None
    """PostgreSQL: the environment variable holding the DSN (it may carry a password)."""
    group_commit_max: int = 512
    """Most submissions folded into one SQLite transaction (one fsync)."""
    lease_seconds: float = 10.0
    """PostgreSQL: how long a replica's hold on a singleton (an IMAP mailbox, Telegram long
    polling, the event relay) lasts unrenewed: another replica takes over within this time
    after the holder dies."""
    ack_lease_seconds: float = 60.0
    """PostgreSQL: how long an acknowledgement a replica took stays its own; a replica that
    dies mid-send delays its rows by this much. Keep it above the senders' timeouts, or a slow
    send is sent again by another replica."""


class IntakeConfig(_Section, frozen=True):
    """Pipeline windows and defaults."""

    duplicate_window: str = "24h"
    """Same contact + same content within this window is a ``duplicate``."""
    chat_followup_window: str = "24h"
    """On chat channels, a message within this window of the contact's open ticket joins it."""
    default_locale: str = "zh-CN"
    """Locale of acknowledgements when the message does not say (zh-CN, zh-TW or en)."""
    event_source: str = "urn:intake-gateway"
    """CloudEvents ``source`` of every event."""
    max_text_chars: int = 100_000
    max_attachment_bytes: int = 10_485_760
    max_attachments: int = 10
    event_inline_bytes: int = 65_536
    """Most UTF-8 bytes of text, sanitized HTML and metadata an event carries inline, well under
    the smallest broker's message limit (NATS: 1 MiB). Beyond it the event says ``truncated``
    and the whole message is fetched by reference (``body_url``, with the events token)."""


class AttachmentsConfig(_Section, frozen=True):
    """Attachment storage (content-addressed files under the data directory)."""

    path: str | None = None
    """Default ``<data-dir>/attachments``."""


class RetentionConfig(_Section, frozen=True):
    """What ``intake-gateway purge`` removes, and what it must keep."""

    raw_after: str = "180d"
    """Message bodies, kept raw mails and attachments older than this are removed."""
    records_for: str | None = None
    """Ticket records (tickets, their messages' metadata, acknowledgements, contacts without
    tickets left) are deleted once untouched this long; unset: kept for ever."""
    legal_minimum: str = "730d"
    """The least time records must be kept (2 years by the service standard): a
    ``records_for`` below it is refused."""


class QueueConfig(_Section, frozen=True):
    """The downstream queue: ``embedded`` by default, or a registered publisher kind."""

    backend: str = "embedded"
    settings: dict[str, Any] = {}
    """The publisher's own options, converted into its ``Config`` (unknown keys rejected)."""
    batch_size: int = 256
    max_attempts: int = 5
    """Refusals of one event (not outages), each after its own backoff, before it goes to the
    dead-letter table; its ticket's later events are then held behind it."""
    max_backoff: float = 5.0
    """Longest wait in seconds between retries while the broker is away (and between refusals
    of one event), so delivery resumes within about this long of the broker's return."""
    max_event_bytes: int = 524_288
    """Largest event handed to the broker (NATS's default max_payload is 1 MiB); a larger one is
    dead-lettered unsent, "too large for the broker". 0: no cap."""
    stuck_after: float = 60.0
    """Seconds the relay may go without moving (no publish returning, no backoff) while events
    wait before ``/readyz`` says so. A broker that is merely down does not make it stuck."""

    def __post_init__(self) -> None:
        # msgspec reports a ValueError raised here as a ValidationError: a ConfigError at start.
        if self.max_event_bytes < 0 or self.max_backoff <= 0 or self.max_attempts < 1:
            raise ValueError("queue: max_event_bytes >= 0, max_backoff > 0, max_attempts >= 1")


class AckPolicy(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """``[acks]``: retries and the per-recipient limit."""

    per_recipient_limit: int = 5
    """Most acknowledgements one recipient gets per window (breaks loops with other robots)."""
    per_recipient_window: float = 3600.0
    """Seconds."""
    max_attempts: int = 8
    """Transient failures before an acknowledgement is given up (``ack.failed``)."""
    max_backoff: float = 300.0
    parallel_recipients: int = 8
    """Recipients served at the same time. One recipient's acknowledgements always go one after
    the other (the per-recipient limit is counted between them); different recipients' overlap,
    so their status updates share a group commit instead of waiting for one fsync each."""


class DashboardConfig(_Section, frozen=True):
    """``[dashboard]``: the operators' dashboard (``gateway/dashboard/``)."""

    enabled: bool = True
    path: str = "/dashboard"
    token_env: str | None = None
    """Environment variable holding the dashboard's token (or password): given as
    ``Authorization: Bearer`` or typed once into its login page. Without one the dashboard is
    served only on a loopback listener, and only to requests naming a loopback host."""
    token_file: str | None = None
    refresh: float = 5.0
    """Seconds between the page's live updates."""
    at_risk_within: str = "1h"
    """Open tickets due within this (or already overdue) are listed as at risk."""
    repeat_min_duplicates: int = 2
    """Contacts with at least this many duplicates in the last 7 days are repeat complainers."""


class Config(_Section, frozen=True):
    """The root of ``gateway.toml``; every key is documented in ``deploy/gateway.example.toml``."""

    server: ServerConfig = ServerConfig()
    store: StoreConfig = StoreConfig()
    intake: IntakeConfig = IntakeConfig()
    attachments: AttachmentsConfig = AttachmentsConfig()
    retention: RetentionConfig = RetentionConfig()
    numbering: NumberingConfig = NumberingConfig()
    calendar: CalendarConfig = CalendarConfig()
    targets: TargetsConfig = TargetsConfig()
    triage: TriageConfig = TriageConfig()
    queue: QueueConfig = QueueConfig()
    acks: AckPolicy = AckPolicy()
    dashboard: DashboardConfig = DashboardConfig()
    replies: ReplyConfig = ReplyConfig()
    """Downstream replies out (``POST /v1/tickets/{number}/replies``)."""
    adapters: dict[str, dict[str, Any]] = {}
    """``[adapters.<kind>]`` tables, one per adapter; each has at least ``enabled``."""


def load_config(path: str | os.PathLike[str] | None) -> Config:
    """Read and validate the TOML file at ``path``; ``None`` gives the embedded defaults."""
    if path is None:
        return Config()
    try:
        raw = Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from exc
    return parse_config(raw, origin=str(path))


def parse_config(raw: bytes | str, *, origin: str = "<config>") -> Config:
    """Decode TOML text into :class:`Config`, naming the offending key on any error."""
    try:
        return msgspec.toml.decode(raw, type=Config)
    except msgspec.ValidationError as exc:
        raise ConfigError(f"{origin}: {_describe(exc)}") from exc
    except msgspec.DecodeError as exc:
        raise ConfigError(f"{origin}: not valid TOML: {exc}") from exc


def convert_section(table: dict[str, Any], type_: type[msgspec.Struct], *, where: str) -> Any:
    """Convert a plug-in's table into its Config Struct; errors name ``where`` + the key."""
    try:
        return msgspec.convert(table, type_)
    except msgspec.ValidationError as exc:
        raise ConfigError(f"{where}: {_describe(exc)}") from exc


def _describe(exc: msgspec.ValidationError) -> str:
    # msgspec says "... - at `$.server.listen`"; config users think in dotted TOML keys.
    text = str(exc)
    return re.sub(r"`\$\.?([^`]*)`", lambda m: f"`{m.group(1) or '(root)'}`", text)
