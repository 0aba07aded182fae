"""The PostgreSQL store's schema, as numbered migrations (``intake-gateway migrate``).

Each migration is a list of statements applied in one transaction together with the bump of
``meta.schema_version``; :func:`gateway.store.postgres.migrate` holds an advisory lock while it
runs them, so two replicas migrating at once apply each step once. The tables mirror
:mod:`gateway.store.sqlite`'s (same names, same columns, the same unique constraints), so the
decision and every protocol mean the same on both stores.
"""

from __future__ import annotations

from gateway.store.postgres_limits import MIGRATION as RATE_BUCKETS

MIGRATIONS: list[list[str]] = [
    # 1: the schema of SQLite's schema 2, plus what replicas need: a commit-ordered event
    # counter, ack leases, consumer offsets and singleton leases in the database.
    [
        "CREATE TABLE IF NOT EXISTS meta(key TEXT PRIMARY KEY, value TEXT NOT NULL)",
        """CREATE TABLE contacts(
            id BIGSERIAL PRIMARY KEY, uid TEXT NOT NULL UNIQUE, name TEXT, customer_type TEXT,
            created_at BIGINT NOT NULL)""",
        """CREATE TABLE identities(
            kind TEXT NOT NULL, value TEXT NOT NULL,
            contact_id BIGINT NOT NULL REFERENCES contacts(id),
            verified BOOLEAN NOT NULL DEFAULT TRUE, PRIMARY KEY(kind, value))""",
        "CREATE INDEX identities_contact ON identities(contact_id)",
        # One counter row per numbering scope: the row lock makes numbers unique and gapless
        # across replicas; tickets.number UNIQUE guards it anyway.
        "CREATE TABLE sequences(scope TEXT PRIMARY KEY, value BIGINT NOT NULL)",
        """CREATE TABLE tickets(
            id BIGSERIAL PRIMARY KEY, number TEXT NOT NULL UNIQUE, contact_id BIGINT NOT NULL,
            status TEXT NOT NULL DEFAULT 'open', kind TEXT NOT NULL, area TEXT NOT NULL,
            priority TEXT NOT NULL, escalated BOOLEAN NOT NULL, channel TEXT NOT NULL,
            subject TEXT NOT NULL, created_at BIGINT NOT NULL, updated_at BIGINT NOT NULL,
            due_at BIGINT NOT NULL)""",
        "CREATE INDEX tickets_contact ON tickets(contact_id, status, updated_at)",
        """CREATE TABLE messages(
            id BIGSERIAL PRIMARY KEY, uid TEXT NOT NULL UNIQUE, ticket_id BIGINT,
            contact_id BIGINT NOT NULL, channel TEXT NOT NULL, delivery_key TEXT UNIQUE,
            outcome TEXT NOT NULL, received_at BIGINT NOT NULL, fingerprint TEXT NOT NULL,
            body BYTEA NOT NULL, receipt BYTEA NOT NULL)""",
        "CREATE INDEX messages_dedup ON messages(contact_id, fingerprint, received_at)",
        "CREATE INDEX messages_received ON messages(received_at)",
        """CREATE TABLE ack_refs(ref TEXT PRIMARY KEY, ticket_id BIGINT NOT NULL,
            unguessable BOOLEAN NOT NULL DEFAULT FALSE)""",
        """CREATE TABLE acks(
            id BIGSERIAL PRIMARY KEY, ticket_id BIGINT NOT NULL, message_uid TEXT NOT NULL,
            channel TEXT NOT NULL, recipient TEXT NOT NULL, reply_to TEXT,
            payload BYTEA NOT NULL, status TEXT NOT NULL DEFAULT 'pending',
            attempts INTEGER NOT NULL DEFAULT 0, next_attempt_at BIGINT NOT NULL,
            provider_id TEXT, last_error TEXT, sent_at BIGINT,
            lease_owner TEXT, leased_until BIGINT NOT NULL DEFAULT 0)""",
        "CREATE INDEX acks_recipient ON acks(channel, recipient, sent_at)",
        "CREATE INDEX acks_due ON acks(next_attempt_at, id) WHERE status = 'pending'",
        "CREATE TABLE relay_positions(name TEXT PRIMARY KEY, position BIGINT NOT NULL)",
        """CREATE TABLE dead_letters(
            seq BIGINT NOT NULL, publisher TEXT NOT NULL, attempts INTEGER NOT NULL,
            last_error TEXT NOT NULL, failed_at BIGINT NOT NULL, PRIMARY KEY(publisher, seq))""",
        """CREATE TABLE replay_guards(
            scope TEXT NOT NULL, key TEXT NOT NULL, expires_at BIGINT NOT NULL,
            PRIMARY KEY(scope, key))""",
        "CREATE INDEX replay_guards_expiry ON replay_guards(expires_at)",
        """CREATE TABLE adapter_state(
            kind TEXT NOT NULL, key TEXT COLLATE "C" NOT NULL, value BYTEA NOT NULL,
            updated_at BIGINT NOT NULL, PRIMARY KEY(kind, key))""",
        # seq comes from event_counter, locked for the whole write transaction: seqs are
        # then in commit order, so a reader at "seq > n" never skips one committed later.
        """CREATE TABLE events(
            seq BIGINT PRIMARY KEY, id TEXT NOT NULL UNIQUE, type TEXT NOT NULL,
            subject TEXT NOT NULL, priority TEXT, created_at BIGINT NOT NULL,
            body BYTEA NOT NULL, escalated BOOLEAN NOT NULL DEFAULT FALSE)""",
        """CREATE TABLE event_counter(one INTEGER PRIMARY KEY CHECK (one = 1),
            value BIGINT NOT NULL)""",
        "INSERT INTO event_counter(one, value) VALUES (1, 0)",
        "CREATE TABLE consumers(name TEXT PRIMARY KEY, position BIGINT NOT NULL)",
        """CREATE TABLE leases(name TEXT PRIMARY KEY, holder TEXT NOT NULL,
            expires_at BIGINT NOT NULL)""",
    ],
    # 2: attachments and raw mails in the database, so that every replica serves them;
    # content-addressed, created_at refreshed on each put (what purge ages by).
    [
        """CREATE TABLE blobs(
            sha256 TEXT PRIMARY KEY, data BYTEA NOT NULL, created_at BIGINT NOT NULL)""",
        "CREATE INDEX blobs_created ON blobs(created_at)",
    ],
    # 3: replies out (SQLite's schema 3, gateway/store/sqlite_replies.py): one row is a
    # reply's record and its outbox row, with the rating its resolution received; plus a
    # lease (as acks have) so that one replica's dispatcher sends each reply.
    [
        """CREATE TABLE replies(
            id BIGSERIAL PRIMARY KEY, uid TEXT NOT NULL UNIQUE, ticket_id BIGINT NOT NULL,
            idempotency_key TEXT NOT NULL, request_hash TEXT NOT NULL, channel TEXT NOT NULL,
            recipient TEXT NOT NULL, reply_to TEXT, payload BYTEA NOT NULL,
            resolution BOOLEAN NOT NULL DEFAULT FALSE, status TEXT NOT NULL DEFAULT 'queued',
            attempts INTEGER NOT NULL DEFAULT 0, next_attempt_at BIGINT NOT NULL,
            provider_id TEXT, last_error TEXT, created_at BIGINT NOT NULL, sent_at BIGINT,
            rating INTEGER, rated_at BIGINT,
            lease_owner TEXT, leased_until BIGINT NOT NULL DEFAULT 0,
            UNIQUE(ticket_id, idempotency_key))""",
        "CREATE INDEX replies_due ON replies(next_attempt_at, id) WHERE status = 'queued'",
        "CREATE INDEX replies_recipient ON replies(channel, recipient, sent_at)",
        "CREATE INDEX replies_provider ON replies(provider_id)",
        "CREATE INDEX replies_ticket ON replies(ticket_id)",
    ],
    # 4: rate limits counted across replicas (gateway/store/postgres_limits.py).
    RATE_BUCKETS,
]

SCHEMA_VERSION = len(MIGRATIONS)
"""The schema this code was written for: it refuses to serve a database that is newer."""
