"""A schema-1 database (before claims and unguessable references) is upgraded in place."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from gateway.store.sqlite import SCHEMA_VERSION, SqliteStore

# The two tables that changed, as schema 1 created them.
_V1 = """
CREATE TABLE meta(key TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID;
CREATE TABLE identities(
    kind TEXT NOT NULL, value TEXT NOT NULL, contact_id INTEGER NOT NULL,
    PRIMARY KEY(kind, value)) WITHOUT ROWID;
CREATE TABLE ack_refs(ref TEXT PRIMARY KEY, ticket_id INTEGER NOT NULL) WITHOUT ROWID;
CREATE TABLE acks(
    id INTEGER PRIMARY KEY, ticket_id INTEGER NOT NULL, message_uid TEXT NOT NULL,
    channel TEXT NOT NULL, recipient TEXT NOT NULL, reply_to TEXT, payload BLOB NOT NULL,
    status TEXT NOT NULL DEFAULT 'pending', attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_at INTEGER NOT NULL, provider_id TEXT, last_error TEXT, sent_at INTEGER);
CREATE TABLE messages(
    id INTEGER PRIMARY KEY, uid TEXT NOT NULL UNIQUE, ticket_id INTEGER NOT NULL,
    contact_id INTEGER NOT NULL, channel TEXT NOT NULL, delivery_key TEXT UNIQUE,
    outcome TEXT NOT NULL, received_at INTEGER NOT NULL, fingerprint TEXT NOT NULL,
    body BLOB NOT NULL, receipt BLOB NOT NULL);
INSERT INTO messages VALUES (1, 'm1', 1, 1, 'smtp', 'k1', 'created', 0, 'f', x'', x'');
INSERT INTO meta VALUES ('schema_version', '1');
INSERT INTO identities VALUES ('email', 'old@example.org', 1);
INSERT INTO acks(ticket_id, message_uid, channel, recipient, payload, next_attempt_at,
                 provider_id, status) VALUES
    (1, 'm1', 'email', 'old@example.org', x'', 0, 'abc@gw.example', 'sent'),
    (2, 'm2', 'telegram', '42', x'', 0, 'telegram:42:7', 'sent');
INSERT INTO ack_refs VALUES ('abc@gw.example', 1), ('telegram:42:7', 2);
"""


async def test_schema_1_is_upgraded_in_place(tmp_path: Path) -> None:
    path = tmp_path / "intake.sqlite3"
    with sqlite3.connect(path) as conn:
        conn.executescript(_V1)
    store = SqliteStore(path)
    await store.open()
    await store.close()
    with sqlite3.connect(path) as conn:
        assert conn.execute("SELECT value FROM meta WHERE key = 'schema_version'"
                            ).fetchone()[0] == str(SCHEMA_VERSION)
        # Identities linked before claims were told apart keep working as they did.
        assert conn.execute("SELECT verified FROM identities").fetchall() == [(1,)]
        # Machine mail has no ticket: the column lost its NOT NULL, the rows and indexes stayed.
        assert {r[1]: r[3] for r in conn.execute("PRAGMA table_info(messages)")}[
            "ticket_id"] == 0
        assert conn.execute("SELECT uid, delivery_key FROM messages").fetchall() == [
            ("m1", "k1")]
        indexes = {r[1] for r in conn.execute("PRAGMA index_list(messages)")}
        assert "messages_dedup" in indexes and len(indexes) >= 3  # + uid, delivery_key UNIQUE
        # Only the mailer's random Message-IDs join from anyone.
        assert dict(conn.execute("SELECT ref, unguessable FROM ack_refs")) == {
            "abc@gw.example": 1, "telegram:42:7": 0}
