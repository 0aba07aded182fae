"""Choosing the store from the config: ``[store] backend = "sqlite"`` or ``"postgres"``."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from gateway.errors import ConfigError

if TYPE_CHECKING:
    from gateway.attachments import BlobStore
    from gateway.config import StoreConfig
    from gateway.plugin import Exclusive
    from gateway.plugin.limits import RateLimiterFactory
    from gateway.store.postgres import PostgresStore
    from gateway.store.sqlite import SqliteStore


def postgres_dsn(config: StoreConfig) -> str:
    """The DSN from the environment variable ``store.dsn_env`` names (never from the file:
    it may carry a password)."""
    if not config.dsn_env:
        raise ConfigError('store.backend = "postgres" needs store.dsn_env: the name of the '
                          "environment variable that holds the DSN")
    dsn = os.environ.get(config.dsn_env, "").strip()
    if not dsn:
        raise ConfigError(f"store.dsn_env: the environment variable {config.dsn_env} is not set")
    return dsn


def open_configured_store(config: StoreConfig, data_dir: Path) -> SqliteStore | PostgresStore:
    """The store the config names (not yet opened)."""
    if config.backend == "postgres":
        from gateway.store.postgres import PostgresStore

        return PostgresStore(postgres_dsn(config), group_commit_max=config.group_commit_max,
                             ack_lease=config.ack_lease_seconds)
    from gateway.store.sqlite import STORE_FILE, SqliteStore

    return SqliteStore(config.path or str(data_dir / STORE_FILE),
                       group_commit_max=config.group_commit_max)


def replica_parts(store: SqliteStore | PostgresStore,
                  config: StoreConfig) -> tuple[Exclusive, BlobStore | None]:
    """Where singletons run and where files go: leases and blobs in a shared PostgreSQL, or
    simply here and on the local disk for one SQLite process.

    PostgreSQL's modules (and psycopg) are imported only when the config names it: an
    embedded gateway does not carry them (more live objects make every GC pass longer).
    """
    from gateway.plugin import RunHere

    if config.backend != "postgres":
        return RunHere(), None
    from gateway.leases import LeasedExclusive
    from gateway.store.postgres import PostgresStore

    assert isinstance(store, PostgresStore)
    return LeasedExclusive(store, ttl=config.lease_seconds), store


def rate_limiter_factory(store: SqliteStore | PostgresStore,
                         config: StoreConfig) -> RateLimiterFactory:
    """Rate limits counted in the shared PostgreSQL (every replica spends from one allowance
    per key), or in this process for one SQLite gateway."""
    from gateway.plugin.limits import local_rate_limiter

    if config.backend != "postgres":
        return local_rate_limiter
    from gateway.store.postgres import PostgresStore
    from gateway.store.postgres_limits import shared_rate_limiter

    assert isinstance(store, PostgresStore)
    return shared_rate_limiter(store)
