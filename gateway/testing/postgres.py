"""PostgreSQL for tests: a database of this test session's own, a schema of each test's own.

The session creates ``intake_test_<random>`` on the server of ``INTAKE_TEST_POSTGRES_DSN``
(default ``postgresql://postgres@127.0.0.1:5432/test``) and drops it at the end; each test gets
a fresh schema in it (through the DSN's ``search_path``), so tests never see each other's rows
and never touch the databases other people use. Skips when the server is unreachable, unless
``INTAKE_REQUIRE_SERVICES=1`` (then it fails).
"""

from __future__ import annotations

import contextlib
import secrets
from collections.abc import Iterator

import psycopg
import pytest
from psycopg.conninfo import make_conninfo

from gateway.testing.services import service_url, unavailable

__all__ = ["postgres_database", "postgres_dsn", "schema_dsn"]


def schema_dsn(database_dsn: str, schema: str) -> str:
    """A DSN on ``database_dsn`` whose unqualified tables live in ``schema``."""
    return make_conninfo(database_dsn, options=f"-c search_path={schema}")


@pytest.fixture(scope="session")
def postgres_database() -> Iterator[str]:
    """The DSN of a database created for this test session (dropped afterwards)."""
    url = service_url("INTAKE_TEST_POSTGRES_DSN")
    name = f"intake_test_{secrets.token_hex(4)}"
    try:
        admin = psycopg.connect(url, autocommit=True, connect_timeout=5)
    except psycopg.Error as exc:
        unavailable(f"INTAKE_TEST_POSTGRES_DSN: cannot connect ({exc})")
        raise
    with admin:
        admin.execute(f"CREATE DATABASE {name}")
        try:
            yield make_conninfo(url, dbname=name)
        finally:
            with contextlib.suppress(psycopg.Error):
                admin.execute(f"DROP DATABASE {name} WITH (FORCE)")


@pytest.fixture
def postgres_dsn(postgres_database: str) -> Iterator[str]:
    """A DSN whose tables live in a schema of this test's own (dropped afterwards)."""
    schema = f"t_{secrets.token_hex(6)}"
    with psycopg.connect(postgres_database, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
        try:
            yield schema_dsn(postgres_database, schema)
        finally:
            with contextlib.suppress(psycopg.Error):
                conn.execute(f"DROP SCHEMA {schema} CASCADE")
