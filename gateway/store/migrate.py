"""``intake-gateway migrate``: bring the configured store's schema to this code's version.

On PostgreSQL this is the upgrade step of a rolling upgrade: run it once (from any machine, or
from several replicas at once: an advisory lock makes them take turns), then replace replicas
one by one. A replica never migrates on its own and refuses a schema it does not know, older
or newer. SQLite, one process, also upgrades itself when it opens; ``migrate`` lets an
operator do it ahead of the start and see the versions.
"""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path
from typing import TYPE_CHECKING

from gateway.store.backends import open_configured_store, postgres_dsn

if TYPE_CHECKING:
    from gateway.config import StoreConfig


def migrate_store(config: StoreConfig, data_dir: Path) -> tuple[str, int, int]:
    """Migrate the store ``config`` names: (backend, version before, version after)."""
    if config.backend == "postgres":
        from gateway.store.postgres import migrate

        before, after = migrate(postgres_dsn(config))
        return "postgres", before, after
    from gateway.store.sqlite import SqliteStore, stored_schema_version

    store = open_configured_store(config, data_dir)
    assert isinstance(store, SqliteStore)
    before = 0
    if store.path.exists():
        conn = sqlite3.connect(f"file:{store.path}?mode=ro", uri=True)
        try:
            before = stored_schema_version(conn)
        finally:
            conn.close()

    async def open_close() -> None:
        await store.open()  # creates or upgrades the schema; refuses a newer one
        await store.close()
    asyncio.run(open_close())
    conn = sqlite3.connect(f"file:{store.path}?mode=ro", uri=True)
    try:
        return "sqlite", before, stored_schema_version(conn)
    finally:
        conn.close()
