"""``intake-gateway migrate`` on both stores: versioned, safe from two replicas at once, and a
gateway older than the schema refuses to start."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest

from gateway.errors import ConfigError
from gateway.store import postgres_schema
from gateway.store.sqlite import SCHEMA_VERSION as SQLITE_SCHEMA
from gateway.store.sqlite import SqliteStore
from gateway.testing.postgres import postgres_database, postgres_dsn

__all__ = ["postgres_database", "postgres_dsn"]


def _start_migrate(tmp_path: Path, config: str, env: dict[str, str]) -> subprocess.Popen[str]:
    conf = tmp_path / "gateway.toml"
    conf.write_text(config)
    return subprocess.Popen(
        [sys.executable, "-m", "gateway.cli", "migrate", "--config", str(conf),
         "--data-dir", str(tmp_path / "data")],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, **env})


PG_CONFIG = '[store]\nbackend = "postgres"\ndsn_env = "INTAKE_MIGRATE_DSN"\n'


def test_two_replicas_migrating_at_once_apply_each_step_once(postgres_dsn: str,
                                                             tmp_path: Path) -> None:
    env = {"INTAKE_MIGRATE_DSN": postgres_dsn}
    places = [tmp_path / str(i) for i in range(3)]
    for place in places:
        place.mkdir()
    runs = [_start_migrate(place, PG_CONFIG, env) for place in places]
    outputs = [run.communicate(timeout=60) for run in runs]
    assert [run.returncode for run in runs] == [0, 0, 0], outputs
    current = postgres_schema.SCHEMA_VERSION
    said = sorted(out for out, _ in outputs)
    assert said == sorted([f"postgres store at schema {current} (migrated from 0)\n"]
                          + [f"postgres store at schema {current} (already current)\n"] * 2)
    with psycopg.connect(postgres_dsn) as conn:
        row = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
        assert row == (str(current),)
        assert conn.execute("SELECT count(*) FROM event_counter").fetchone() == (1,)


def test_migrate_refuses_a_postgres_schema_newer_than_the_code(postgres_dsn: str,
                                                               tmp_path: Path) -> None:
    env = {"INTAKE_MIGRATE_DSN": postgres_dsn}
    assert _start_migrate(tmp_path, PG_CONFIG, env).wait(60) == 0
    with psycopg.connect(postgres_dsn, autocommit=True) as conn:
        conn.execute("UPDATE meta SET value = '99' WHERE key = 'schema_version'")
    run = _start_migrate(tmp_path, PG_CONFIG, env)
    _out, err = run.communicate(timeout=60)
    assert run.returncode == 2 and "newer than this gateway's" in err


def test_migrate_creates_and_reports_the_sqlite_schema(tmp_path: Path) -> None:
    first = _start_migrate(tmp_path, "", {})
    out, err = first.communicate(timeout=60)
    assert first.returncode == 0, err
    assert out == f"sqlite store at schema {SQLITE_SCHEMA} (migrated from 0)\n"
    again = _start_migrate(tmp_path, "", {})
    assert again.communicate(timeout=60)[0] == \
        f"sqlite store at schema {SQLITE_SCHEMA} (already current)\n"


async def test_an_sqlite_gateway_older_than_its_schema_refuses_to_open(tmp_path: Path) -> None:
    path = tmp_path / "intake.sqlite3"
    store = SqliteStore(path)
    await store.open()
    await store.close()
    conn = sqlite3.connect(path)
    conn.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'",
                 (str(SQLITE_SCHEMA + 1),))
    conn.commit()
    conn.close()
    with pytest.raises(ConfigError, match="older code than the schema"):
        await SqliteStore(path).open()
