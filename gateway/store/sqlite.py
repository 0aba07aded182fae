"""The embedded store: SQLite in WAL mode, one writer thread, group commit."""

from __future__ import annotations

import asyncio
import contextlib
import queue
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import msgspec

from gateway.decision import OutboxAck, StoredReceipt, SubmissionPlan, TicketRow
from gateway.errors import ConfigError, StorageFull, TransientError
from gateway.files import make_private
from gateway.ids import new_id
from gateway.plugin.contract import OutboundEvent
from gateway.store.protocols import DeadLetter, DueAck, NewEvent
from gateway.store.sqlite_replies import REPLY_SCHEMA, SqliteReplyReads, SqliteReplyTx
from intake_schemas import ContactView

T = TypeVar("T")

SCHEMA_VERSION = 3
"""1: the first schema. 2: ``identities.verified`` (claims), ``ack_refs.unguessable``,
``replay_guards``, ``adapter_state``, ``messages.ticket_id`` nullable (``automated`` messages
have no ticket). 3: ``replies`` (gateway/store/sqlite_replies.py)."""

STORE_FILE = "intake.sqlite3"
"""The store's file name in the data directory, unless ``store.path`` names another."""

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta(key TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS contacts(
    id INTEGER PRIMARY KEY, uid TEXT NOT NULL UNIQUE, name TEXT, customer_type TEXT,
    created_at INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS identities(
    kind TEXT NOT NULL, value TEXT NOT NULL, contact_id INTEGER NOT NULL REFERENCES contacts(id),
    verified INTEGER NOT NULL DEFAULT 1,
    PRIMARY KEY(kind, value)) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS identities_contact ON identities(contact_id);
CREATE TABLE IF NOT EXISTS sequences(scope TEXT PRIMARY KEY, value INTEGER NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS tickets(
    id INTEGER PRIMARY KEY, number TEXT NOT NULL UNIQUE, contact_id INTEGER NOT NULL,
    status TEXT NOT NULL DEFAULT 'open', kind TEXT NOT NULL, area TEXT NOT NULL,
    priority TEXT NOT NULL, escalated INTEGER NOT NULL, channel TEXT NOT NULL,
    subject TEXT NOT NULL, created_at INTEGER NOT NULL, updated_at INTEGER NOT NULL,
    due_at INTEGER NOT NULL);
CREATE INDEX IF NOT EXISTS tickets_contact ON tickets(contact_id, status, updated_at);
CREATE TABLE IF NOT EXISTS messages(
    id INTEGER PRIMARY KEY, uid TEXT NOT NULL UNIQUE, ticket_id INTEGER,
    contact_id INTEGER NOT NULL, channel TEXT NOT NULL, delivery_key TEXT UNIQUE,
    outcome TEXT NOT NULL, received_at INTEGER NOT NULL, fingerprint TEXT NOT NULL,
    body BLOB NOT NULL, receipt BLOB NOT NULL);
CREATE INDEX IF NOT EXISTS messages_dedup ON messages(contact_id, fingerprint, received_at);
CREATE TABLE IF NOT EXISTS ack_refs(ref TEXT PRIMARY KEY, ticket_id INTEGER NOT NULL,
    unguessable INTEGER NOT NULL DEFAULT 0) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS acks(
    id INTEGER PRIMARY KEY, ticket_id INTEGER NOT NULL, message_uid TEXT NOT NULL,
    channel TEXT NOT NULL, recipient TEXT NOT NULL, reply_to TEXT, payload BLOB NOT NULL,
    status TEXT NOT NULL DEFAULT 'pending', attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_at INTEGER NOT NULL, provider_id TEXT, last_error TEXT, sent_at INTEGER);
CREATE INDEX IF NOT EXISTS acks_recipient ON acks(channel, recipient, sent_at);
CREATE INDEX IF NOT EXISTS acks_due ON acks(status, next_attempt_at);
CREATE TABLE IF NOT EXISTS relay_positions(name TEXT PRIMARY KEY, position INTEGER NOT NULL)
    WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS dead_letters(
    seq INTEGER NOT NULL, publisher TEXT NOT NULL, attempts INTEGER NOT NULL,
    last_error TEXT NOT NULL, failed_at INTEGER NOT NULL, PRIMARY KEY(publisher, seq))
    WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS replay_guards(
    scope TEXT NOT NULL, key TEXT NOT NULL, expires_at INTEGER NOT NULL,
    PRIMARY KEY(scope, key)) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS replay_guards_expiry ON replay_guards(expires_at);
CREATE TABLE IF NOT EXISTS adapter_state(
    kind TEXT NOT NULL, key TEXT NOT NULL, value BLOB NOT NULL, updated_at INTEGER NOT NULL,
    PRIMARY KEY(kind, key)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS events(
    seq INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT NOT NULL UNIQUE, type TEXT NOT NULL,
    subject TEXT NOT NULL, priority TEXT, created_at INTEGER NOT NULL, body BLOB NOT NULL,
    escalated INTEGER NOT NULL DEFAULT 0);
"""

_receipt_decoder = msgspec.msgpack.Decoder(StoredReceipt)
_MAX_REFS = 50
"""References looked up per message: a sender can list thousands, each a query."""
_encode_mp = msgspec.msgpack.Encoder().encode


def _us(t: datetime) -> int:
    """Aware datetime → microseconds since the epoch (what the tables store)."""
    return int(t.timestamp() * 1_000_000)


def _dt(us: int) -> datetime:
    return datetime.fromtimestamp(us / 1_000_000, tz=UTC)


class _Op:
    __slots__ = ("fn", "future", "loop")

    def __init__(self, fn: Callable[[Any], Any], future: asyncio.Future[Any],
                 loop: asyncio.AbstractEventLoop) -> None:
        self.fn = fn
        self.future = future
        self.loop = loop


def _settle_all(items: list[tuple[asyncio.Future[Any], bool, Any]]) -> None:
    for future, ok, value in items:
        _settle(future, ok, value)


def _settle(future: asyncio.Future[Any], ok: bool, value: Any) -> None:
    if future.done():  # the caller was cancelled; the write happened anyway
        return
    if ok:
        future.set_result(value)
    else:
        future.set_exception(value)


class SqliteTx(SqliteReplyTx):
    """:class:`gateway.decision.Tx` over one SQLite connection inside the writer's transaction."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn
        self.max_event_seq = 0
        self.acks_queued = 0

    def find_receipt(self, delivery_key: str) -> StoredReceipt | None:
        row = self.conn.execute(
            "SELECT receipt FROM messages WHERE delivery_key = ?", (delivery_key,)).fetchone()
        return None if row is None else _receipt_decoder.decode(row[0])

    def resolve_contact(
        self, identities: list[tuple[str, str]], name: str | None, customer_type: str | None,
        *, verified: bool = True,
    ) -> tuple[int, ContactView]:
        c = self.conn
        rows: dict[tuple[str, str], tuple[int, bool]] = {}
        for kind, value in identities:
            row = c.execute("SELECT contact_id, verified FROM identities"
                            " WHERE kind = ? AND value = ?", (kind, value)).fetchone()
            if row is not None:
                rows[(kind, value)] = (row[0], bool(row[1]))
        proven = [cid for cid, ok in rows.values() if ok]
        if verified:
            # Only a verified identity leads a verified sender to a contact: one that a claim
            # linked may be someone else's, typed in beside the sender's own.
            owner = min(proven) if proven else None
        else:
            owner = min(proven) if proven else min((cid for cid, _ in rows.values()), default=None)
        if owner is not None and not verified:
            # A claim changes nothing of an existing contact: no name, no type, no new links.
            return owner, self._contact_view(owner)
        if owner is None:
            if not verified and customer_type == "vip":
                customer_type = None  # self-declared VIP status is not taken from a claim
            owner = c.execute(
                "INSERT INTO contacts(uid, name, customer_type, created_at) VALUES (?, ?, ?, ?)",
                (new_id(), name, customer_type, time.time_ns() // 1000)).lastrowid
            assert owner is not None
        else:
            # Later messages may bring a name or a customer type the first one lacked.
            c.execute("UPDATE contacts SET name = coalesce(?, name),"
                      " customer_type = coalesce(?, customer_type) WHERE id = ?",
                      (name, customer_type, owner))
        flag = int(verified)
        for kind, value in identities:
            found = rows.get((kind, value))
            if found is None:
                c.execute("INSERT OR IGNORE INTO identities(kind, value, contact_id, verified)"
                          " VALUES (?, ?, ?, ?)", (kind, value, owner, flag))
            elif verified and not found[1]:
                # Proof beats a claim: the identity moves to the contact that proved it.
                c.execute("UPDATE identities SET contact_id = ?, verified = 1"
                          " WHERE kind = ? AND value = ?", (owner, kind, value))
            # A verified identity of another contact stays there: linking is never a takeover.
        return owner, self._contact_view(owner)

    def owns_identity(self, contact_id: int, kind: str, value: str) -> bool:
        return self.conn.execute(
            "SELECT 1 FROM identities WHERE kind = ? AND value = ? AND contact_id = ?",
            (kind, value, contact_id)).fetchone() is not None

    def _contact_view(self, contact_id: int) -> ContactView:
        uid, name, ctype = self.conn.execute(
            "SELECT uid, name, customer_type FROM contacts WHERE id = ?", (contact_id,)).fetchone()
        email = phone = None
        chats: dict[str, str] = {}
        for kind, value in self.conn.execute(
                "SELECT kind, value FROM identities WHERE contact_id = ? ORDER BY kind, value",
                (contact_id,)):
            if kind == "email":
                email = email or value
            elif kind == "phone":
                phone = phone or value
            elif kind.startswith("chat:"):
                chats.setdefault(kind[5:], value)
        return ContactView(id=uid, name=name, email=email, phone=phone, chat_ids=chats,
                           customer_type=ctype)

    _TICKET_COLS = ("id, number, contact_id, kind, area, priority, escalated, channel,"
                    " created_at, due_at")

    def _ticket(self, row: tuple[Any, ...] | None) -> TicketRow | None:
        if row is None:
            return None
        return TicketRow(id=row[0], number=row[1], contact_id=row[2], kind=row[3], area=row[4],
                         priority=row[5], escalated=bool(row[6]), channel=row[7],
                         created_at=_dt(row[8]), due_at=_dt(row[9]))

    def ticket_by_number(self, number: str) -> TicketRow | None:
        return self._ticket(self.conn.execute(
            f"SELECT {self._TICKET_COLS} FROM tickets WHERE number = ?", (number,)).fetchone())

    def ticket_by_reference(self, refs: list[str]) -> tuple[TicketRow, bool] | None:
        for ref in refs[:_MAX_REFS]:
            found = self.conn.execute(
                "SELECT ticket_id, unguessable FROM ack_refs WHERE ref = ?", (ref,)).fetchone()
            if found is None:
                continue
            row = self.conn.execute(f"SELECT {self._TICKET_COLS} FROM tickets WHERE id = ?",
                                    (found[0],)).fetchone()
            ticket = self._ticket(row)
            if ticket is not None:
                return ticket, bool(found[1])
        return None

    def recent_open_ticket(self, contact_id: int, since: datetime) -> TicketRow | None:
        return self._ticket(self.conn.execute(
            f"SELECT {self._TICKET_COLS} FROM tickets WHERE contact_id = ? AND status = 'open'"
            " AND updated_at >= ? ORDER BY updated_at DESC LIMIT 1",
            (contact_id, _us(since))).fetchone())

    def duplicate_of(self, contact_id: int, fingerprint: str,
                     since: datetime) -> tuple[TicketRow, str] | None:
        row = self.conn.execute(
            "SELECT ticket_id, uid FROM messages WHERE contact_id = ? AND fingerprint = ?"
            " AND received_at >= ? AND ticket_id IS NOT NULL ORDER BY received_at, id LIMIT 1",
            (contact_id, fingerprint, _us(since))).fetchone()
        if row is None:
            return None
        ticket = self._ticket(self.conn.execute(
            f"SELECT {self._TICKET_COLS} FROM tickets WHERE id = ?", (row[0],)).fetchone())
        assert ticket is not None
        return ticket, row[1]

    def next_sequence(self, scope: str) -> int:
        row = self.conn.execute(
            "INSERT INTO sequences(scope, value) VALUES (?, 1) ON CONFLICT(scope)"
            " DO UPDATE SET value = value + 1 RETURNING value", (scope,)).fetchone()
        return int(row[0])

    def insert_ticket(self, *, number: str, contact_id: int, plan: SubmissionPlan) -> TicketRow:
        m, tri = plan.message, plan.triage
        now = _us(m.received_at)
        ticket_id = self.conn.execute(
            "INSERT INTO tickets(number, contact_id, kind, area, priority, escalated, channel,"
            " subject, created_at, updated_at, due_at) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
            (number, contact_id, tri.kind, tri.area, tri.priority, int(tri.escalated), m.channel,
             m.subject[:500], now, now, _us(plan.due_at))).lastrowid
        assert ticket_id is not None
        return TicketRow(id=ticket_id, number=number, contact_id=contact_id, kind=tri.kind,
                         area=tri.area, priority=tri.priority, escalated=tri.escalated,
                         channel=m.channel, created_at=_dt(now), due_at=_dt(_us(plan.due_at)))

    def insert_message(self, *, plan: SubmissionPlan, ticket_id: int | None, contact_id: int,
                       receipt: StoredReceipt) -> None:
        m = plan.message
        self.conn.execute(
            "INSERT INTO messages(uid, ticket_id, contact_id, channel, delivery_key, outcome,"
            " received_at, fingerprint, body, receipt) VALUES (?,?,?,?,?,?,?,?,?,?)",
            (plan.message_uid, ticket_id, contact_id, m.channel, plan.delivery_key,
             receipt.outcome, _us(m.received_at), plan.fingerprint, _encode_mp(m),
             _encode_mp(receipt)))

    def touch_ticket(self, ticket_id: int, at: datetime) -> None:
        self.conn.execute("UPDATE tickets SET updated_at = max(updated_at, ?) WHERE id = ?",
                          (_us(at), ticket_id))

    def insert_ack(self, *, ticket_id: int, message_uid: str, ack: OutboxAck,
                   payload: bytes) -> None:
        self.conn.execute(
            "INSERT INTO acks(ticket_id, message_uid, channel, recipient, reply_to, payload,"
            " next_attempt_at) VALUES (?,?,?,?,?,?,?)",
            (ticket_id, message_uid, ack.channel, ack.to, ack.reply_to, payload, 0))
        self.acks_queued += 1

    def append_event(self, *, event_id: str, type_: str, subject: str, priority: str | None,
                     body: bytes, escalated: bool = False) -> int:
        seq = self.conn.execute(
            "INSERT INTO events(id, type, subject, priority, created_at, body, escalated)"
            " VALUES (?,?,?,?,?,?,?)",
            (event_id, type_, subject, priority, time.time_ns() // 1000, body,
             int(escalated))).lastrowid
        assert seq is not None
        self.max_event_seq = max(self.max_event_seq, seq)
        return seq

    # -- the acknowledgement outbox (gateway.store.protocols.AckOutboxTx) -----------------

    def retry_ack(self, ack_id: int, attempts: int, at: float, error: str) -> None:
        self.conn.execute("UPDATE acks SET attempts = ?, next_attempt_at = ?, last_error = ?"
                          " WHERE id = ?", (attempts, int(at * 1_000_000), error[:300], ack_id))

    def finish_ack(self, ack_id: int, status: str, *, provider_id: str | None = None,
                   error: str | None = None, event: NewEvent | None = None,
                   ticket_id: int | None = None, unguessable: bool = False) -> None:
        self.conn.execute("UPDATE acks SET status = ?, provider_id = ?, last_error = ?,"
                          " sent_at = ? WHERE id = ?",
                          (status, provider_id, error and error[:300], time.time_ns() // 1000,
                           ack_id))
        if provider_id and ticket_id is not None:
            # Replies that quote our acknowledgement's id (In-Reply-To) find the ticket again.
            # Only an unguessable id lets a reply from another address in (gateway/decision.py).
            self.conn.execute("INSERT OR IGNORE INTO ack_refs(ref, ticket_id, unguessable)"
                              " VALUES (?, ?, ?)", (provider_id, ticket_id, int(unguessable)))
        if event is not None:
            self.append_event(event_id=event.id, type_=event.type, subject=event.subject,
                              priority=event.priority, body=event.body,
                              escalated=event.escalated)

    # -- relay positions and dead letters (gateway.store.protocols.RelayTx) ---------------

    def relay_position(self, name: str) -> int:
        row = self.conn.execute("SELECT position FROM relay_positions WHERE name = ?",
                                (name,)).fetchone()
        return int(row[0]) if row else 0

    def save_relay_position(self, name: str, seq: int) -> None:
        self.conn.execute("INSERT INTO relay_positions(name, position) VALUES (?, ?)"
                          " ON CONFLICT(name) DO UPDATE SET position = excluded.position",
                          (name, seq))

    def held_tickets(self, publisher: str,
                     subjects: Sequence[str] | None = None) -> dict[str, int]:
        return _held_tickets(self.conn, publisher, subjects)

    def add_dead_letter(self, seq: int, publisher: str, attempts: int, error: str) -> bool:
        # OR IGNORE: a batch re-read after a crash or a failed publish holds the same events again.
        return self.conn.execute(
            "INSERT OR IGNORE INTO dead_letters(seq, publisher, attempts, last_error, failed_at)"
            " VALUES (?, ?, ?, ?, ?)",
            (seq, publisher, attempts, error[:500], time.time_ns() // 1000)).rowcount == 1


def _held_tickets(conn: sqlite3.Connection, publisher: str,
                  subjects: Sequence[str] | None) -> dict[str, int]:
    sql = ("SELECT e.subject, min(d.seq) FROM dead_letters d JOIN events e ON e.seq = d.seq"
           " WHERE d.publisher = ?")
    args: list[object] = [publisher]
    if subjects is not None:
        if not subjects:
            return {}
        sql += f" AND e.subject IN ({','.join('?' * len(subjects))})"
        args.extend(subjects)
    return {str(s): int(q) for s, q in conn.execute(sql + " GROUP BY e.subject", args)}


def connect(path: str | Path, *, readonly: bool = False) -> sqlite3.Connection:
    """Open the database with the pragmas every connection needs."""
    if readonly:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, isolation_level=None,
                               check_same_thread=False)
    else:
        conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA busy_timeout = 10000")
    if not readonly:
        conn.execute("PRAGMA journal_mode = WAL")
        # FULL: every commit is fsynced to the WAL before it returns. NORMAL would lose the
        # last commits on power loss, and we answer "accepted" right after a commit.
        conn.execute("PRAGMA synchronous = FULL")
        conn.execute("PRAGMA foreign_keys = ON")
    return conn


def _storage_error(exc: BaseException) -> StorageFull | None:
    """SQLITE_FULL (or an I/O error from a full disk) as the error the sender understands."""
    if isinstance(exc, sqlite3.Error) and getattr(exc, "sqlite_errorcode", None) in (
            sqlite3.SQLITE_FULL, getattr(sqlite3, "SQLITE_IOERR_WRITE", -1)):
        err = StorageFull("no room left on the store's disk")
        err.__cause__ = exc
        return err
    return None


def stored_schema_version(conn: sqlite3.Connection) -> int:
    """The schema version the database says it has (0: none yet)."""
    if conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'meta'").fetchone() is None:
        return 0
    row = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
    return int(row[0]) if row else 0


def refuse_newer_schema(conn: sqlite3.Connection) -> None:
    """Older code never writes to a schema it does not know (a rolled-back upgrade)."""
    version = stored_schema_version(conn)
    if version > SCHEMA_VERSION:
        raise ConfigError(f"the store's schema is version {version}, newer than this "
                          f"gateway's ({SCHEMA_VERSION}): this gateway runs older code than "
                          "the schema; upgrade it")


def _upgrade(conn: sqlite3.Connection) -> None:
    """Bring a schema-1 database to schema 2 in place (new tables come from ``_SCHEMA``)."""
    def columns(table: str) -> set[str]:
        return {row[1] for row in conn.execute(f"PRAGMA table_info({table})")}

    if "verified" not in columns("identities"):
        # Identities linked before claims were told apart keep working as they did.
        conn.execute("ALTER TABLE identities ADD COLUMN verified INTEGER NOT NULL DEFAULT 1")
    notnull = {row[1]: row[3] for row in conn.execute("PRAGMA table_info(messages)")}
    if notnull.get("ticket_id"):
        # SQLite cannot drop a NOT NULL in place: rebuild the table once, in one transaction.
        ddl = conn.execute("SELECT sql FROM sqlite_master WHERE name = 'messages'").fetchone()[0]
        conn.execute("BEGIN IMMEDIATE")
        conn.execute(ddl.replace("messages(", "messages_v2(", 1)
                     .replace("ticket_id INTEGER NOT NULL", "ticket_id INTEGER", 1))
        conn.execute("INSERT INTO messages_v2 SELECT * FROM messages")
        conn.execute("DROP TABLE messages")
        conn.execute("ALTER TABLE messages_v2 RENAME TO messages")
        conn.execute("CREATE INDEX IF NOT EXISTS messages_dedup ON messages(contact_id,"
                     " fingerprint, received_at)")
        conn.execute("COMMIT")
    if "unguessable" not in columns("ack_refs"):
        conn.execute("ALTER TABLE ack_refs ADD COLUMN unguessable INTEGER NOT NULL DEFAULT 0")
        # Until now only the mailer's random Message-IDs were worth trusting from anyone.
        conn.execute("UPDATE ack_refs SET unguessable = 1 WHERE ref IN"
                     " (SELECT provider_id FROM acks WHERE channel = 'email'"
                     " AND provider_id IS NOT NULL)")
    if "escalated" not in columns("events"):
        # One transaction: a crash between the two must not leave the column without its values.
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("ALTER TABLE events ADD COLUMN escalated INTEGER NOT NULL DEFAULT 0")
        # Events still waiting for the relay (or dead-lettered) escalate as their ticket does.
        conn.execute("UPDATE events SET escalated = 1 WHERE type LIKE 'ticket.%' AND subject IN"
                     " (SELECT number FROM tickets WHERE escalated = 1)")
        conn.execute("COMMIT")


class SqliteStore(SqliteReplyReads):
    """Embedded store: submissions go to one writer thread that commits them in groups.

    ``run(fn)`` queues ``fn(tx)``; the writer drains the queue, runs each op in its own
    SAVEPOINT inside one transaction, commits once (one fsync for the group), and only then
    resolves the callers' futures. Readers use their own connection (WAL lets them run while the
    writer writes).
    """

    def __init__(self, path: str | Path, *, group_commit_max: int = 512) -> None:
        self.path = Path(path)
        self.group_commit_max = group_commit_max
        self._queue: queue.SimpleQueue[_Op | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._closing = False
        self._reader: sqlite3.Connection | None = None
        self._reader_lock = threading.Lock()
        self._commit_listeners: list[Callable[[int], None]] = []
        self._ack_listeners: list[Callable[[], None]] = []
        self.commits = 0
        self.ops = 0
        self.last_seq = 0

    async def open(self) -> None:
        """Create the schema if needed and start the writer thread."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        conn = connect(self.path)
        make_private(self.path)  # tickets and contacts: owner-only, like the data dir
        try:
            refuse_newer_schema(conn)
            conn.executescript(_SCHEMA)
            conn.executescript(REPLY_SCHEMA)
            _upgrade(conn)
            conn.execute("INSERT OR REPLACE INTO meta(key, value) VALUES ('schema_version', ?)",
                         (str(SCHEMA_VERSION),))
            self.last_seq = conn.execute("SELECT coalesce(max(seq), 0) FROM events").fetchone()[0]
        except sqlite3.Error as exc:
            conn.close()
            raise TransientError(f"cannot open the store at {self.path}: {exc}") from exc
        self._reader = connect(self.path, readonly=True)
        self._thread = threading.Thread(target=self._writer, args=(conn,), name="sqlite-writer",
                                        daemon=True)
        self._thread.start()

    async def close(self) -> None:
        """Finish queued work and stop the writer."""
        if self._thread is not None:
            self._closing = True
            self._queue.put(None)
            await asyncio.to_thread(self._thread.join)
            self._thread = None
            self._closing = False
        def close_reader() -> None:
            # Under the reader's lock: closing a connection a worker thread is still reading
            # with crashes the interpreter (a read racing a shutdown, e.g. /readyz or tail).
            with self._reader_lock:
                if self._reader is not None:
                    self._reader.close()
                    self._reader = None
        await asyncio.to_thread(close_reader)

    def on_ack_queued(self, listener: Callable[[], None]) -> None:
        """See :meth:`gateway.store.protocols.AckOutbox.on_ack_queued`."""
        self._ack_listeners.append(listener)

    def on_commit(self, listener: Callable[[int], None]) -> None:
        """Call ``listener(last_event_seq)`` on the event loop after commits that added events."""
        self._commit_listeners.append(listener)

    async def run(self, fn: Callable[[SqliteTx], T]) -> T:
        """Run ``fn`` in the writer's transaction; return its result once it is durable."""
        if self._thread is None or self._closing:
            raise TransientError("the store is not open")
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        self._queue.put(_Op(fn, future, loop))
        return await future

    async def read(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``fn`` on the read connection in a worker thread."""
        def call() -> T:
            with self._reader_lock:
                if self._reader is None:
                    raise TransientError("the store is closed")
                return fn(self._reader)
        return await asyncio.to_thread(call)

    def _writer(self, conn: sqlite3.Connection) -> None:
        tx = SqliteTx(conn)
        stop = False
        while not stop:
            first = self._queue.get()
            if first is None:
                break
            batch = [first]
            while len(batch) < self.group_commit_max:
                try:
                    op = self._queue.get_nowait()
                except queue.Empty:
                    break
                if op is None:
                    stop = True
                    break
                batch.append(op)
            results = self._commit_batch(conn, tx, batch)
            # One wake-up per loop and batch, not per op: each call_soon_threadsafe writes to
            # the loop's self-pipe, a system call that also hands the GIL around.
            settled: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Future[Any], bool, Any]]]
            settled = {}
            for op, (ok, value) in zip(batch, results, strict=True):
                settled.setdefault(op.loop, []).append((op.future, ok, value))
            for loop, items in settled.items():
                loop.call_soon_threadsafe(_settle_all, items)
        conn.close()
        # An operation queued behind the stop (a task still running while the store closes)
        # would otherwise wait for ever: it fails as a transient error, which callers expect.
        while True:
            try:
                late = self._queue.get_nowait()
            except queue.Empty:
                break
            if late is not None:
                with contextlib.suppress(RuntimeError):  # its loop may be closed already
                    late.loop.call_soon_threadsafe(_settle_all, [(
                        late.future, False, TransientError("the store is closed"))])

    def _commit_batch(self, conn: sqlite3.Connection, tx: SqliteTx,
                      batch: list[_Op]) -> list[tuple[bool, Any]]:
        results: list[tuple[bool, Any]] = []
        tx.max_event_seq = 0
        tx.acks_queued = 0
        try:
            conn.execute("BEGIN IMMEDIATE")
            for op in batch:
                # One SAVEPOINT per op: a failing op is rolled back alone, the group still commits.
                conn.execute("SAVEPOINT op")
                try:
                    results.append((True, op.fn(tx)))
                    conn.execute("RELEASE op")
                except Exception as exc:
                    conn.execute("ROLLBACK TO op")
                    conn.execute("RELEASE op")
                    results.append((False, _storage_error(exc) or exc))
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
            err = _storage_error(exc) or TransientError(f"the store could not commit: {exc}")
            err.__cause__ = exc
            return [(False, err)] * len(batch)
        self.commits += 1
        self.ops += len(batch)
        if tx.max_event_seq:
            self.last_seq = max(self.last_seq, tx.max_event_seq)
            seq = self.last_seq
            loop = batch[0].loop
            for listener in self._commit_listeners:
                loop.call_soon_threadsafe(listener, seq)
        if tx.acks_queued:
            for ack_listener in self._ack_listeners:
                batch[0].loop.call_soon_threadsafe(ack_listener)
        return results

    async def first_use(self, scope: str, key: str, *, ttl: float) -> bool:
        """Record ``key`` in ``scope`` for ``ttl`` seconds; False if it is recorded already.

        Durable (committed before it returns), so a signed request replayed after a restart is
        still refused. Expired keys are swept a few at a time on each call.
        """
        now = time.time_ns() // 1000
        expires = now + int(ttl * 1_000_000)

        def claim(tx: SqliteTx) -> bool:
            c = tx.conn
            c.execute("DELETE FROM replay_guards WHERE (scope, key) IN (SELECT scope, key FROM"
                      " replay_guards WHERE expires_at < ? ORDER BY expires_at LIMIT 64)",
                      (now,))
            cur = c.execute("INSERT OR IGNORE INTO replay_guards(scope, key, expires_at)"
                            " VALUES (?, ?, ?)", (scope, key, expires))
            return cur.rowcount == 1

        return await self.run(claim)

    # -- reads used by the embedded queue and the CLI -------------------------------------

    async def probe_write(self) -> None:
        """One small durable write, for readiness: fails (StorageFull) when commits would."""
        stamp = str(time.time_ns())
        await self.run(lambda tx: tx.conn.execute(
            "INSERT OR REPLACE INTO meta(key, value) VALUES ('ready_probe', ?)", (stamp,)))

    def adapter_state(self, kind: str) -> SqliteAdapterState:
        """The durable key-value state of adapter ``kind`` (``gateway.plugin.AdapterState``)."""
        return SqliteAdapterState(self, kind)

    async def message_body(self, uid: str) -> bytes | None:
        """The stored ``InboundMessage`` (msgpack) of message ``uid``, or None."""
        def one(c: sqlite3.Connection) -> bytes | None:
            row = c.execute("SELECT body FROM messages WHERE uid = ?", (uid,)).fetchone()
            return None if row is None or not row[0] else bytes(row[0])  # b"": purged
        return await self.read(one)

    async def events_after(self, after: int, limit: int) -> list[tuple[int, bytes]]:
        """Committed events with ``seq > after``, oldest first, at most ``limit``."""
        return await self.read(lambda c: _read_events(c, after, limit))

    async def outbound_after(self, after: int, limit: int) -> list[OutboundEvent]:
        """Outbox events with ``seq > after`` as publishers receive them, oldest first."""
        def rows(c: sqlite3.Connection) -> list[OutboundEvent]:
            return [OutboundEvent(seq=s, id=i, type=t, subject=subj, priority=p, body=bytes(b),
                                  escalated=bool(x))
                    for s, i, t, subj, p, b, x in c.execute(
                        "SELECT seq, id, type, subject, priority, body, escalated FROM events"
                        " WHERE seq > ? ORDER BY seq LIMIT ?", (after, limit))]
        return await self.read(rows)

    # -- the acknowledgement outbox (gateway.store.protocols.AckOutbox) -------------------

    async def due_acks(self, limit: int, now: float) -> list[DueAck]:
        """Pending acknowledgements due at ``now``, oldest first."""
        def rows(c: sqlite3.Connection) -> list[DueAck]:
            return [DueAck(int(i), int(t), str(ch), str(r), rt, bytes(p), int(a))
                    for i, t, ch, r, rt, p, a in c.execute(
                        "SELECT id, ticket_id, channel, recipient, reply_to, payload, attempts"
                        " FROM acks WHERE status = 'pending' AND next_attempt_at <= ?"
                        " ORDER BY id LIMIT ?", (int(now * 1_000_000), limit))]
        return await self.read(rows)

    async def next_ack_attempt(self) -> float | None:
        """When the earliest pending acknowledgement is due, or None."""
        def one(c: sqlite3.Connection) -> float | None:
            row = c.execute(
                "SELECT min(next_attempt_at) FROM acks WHERE status = 'pending'").fetchone()
            return None if row[0] is None else float(row[0]) / 1_000_000
        return await self.read(one)

    async def acks_sent_since(self, channel: str, recipient: str, since: float) -> int:
        """Acknowledgements sent to ``recipient`` on ``channel`` since ``since``."""
        return await self.read(lambda c: int(c.execute(
            "SELECT count(*) FROM acks WHERE channel = ? AND recipient = ? AND status = 'sent'"
            " AND sent_at >= ?", (channel, recipient, int(since * 1_000_000))).fetchone()[0]))

    # -- dead letters (gateway.store.protocols.DeadLetters) -------------------------------

    async def dead_letters(self, publisher: str) -> list[DeadLetter]:
        """``publisher``'s dead and held events, oldest first."""
        return await self.read(lambda c: _dead_letters(c, publisher))

    async def remove_dead_letter(self, publisher: str, seq: int) -> None:
        """Forget a re-published dead letter, durably."""
        await self.run(lambda tx: tx.conn.execute(
            "DELETE FROM dead_letters WHERE publisher = ? AND seq = ?", (publisher, seq)))

    def event_reader(self) -> SqliteEventReader:
        """A read-only reader of the event log (``intake-gateway tail``); needs no ``open``."""
        return SqliteEventReader(self.path)


def _read_events(conn: sqlite3.Connection, after: int, limit: int) -> list[tuple[int, bytes]]:
    return [(int(s), bytes(b)) for s, b in conn.execute(
        "SELECT seq, body FROM events WHERE seq > ? ORDER BY seq LIMIT ?", (after, limit))]


def _dead_letters(conn: sqlite3.Connection, publisher: str) -> list[DeadLetter]:
    rows = conn.execute(
        "SELECT e.seq, e.id, e.type, e.subject, e.priority, e.body, d.attempts, d.last_error,"
        " e.escalated FROM dead_letters d JOIN events e ON e.seq = d.seq WHERE d.publisher = ?"
        " ORDER BY d.seq", (publisher,)).fetchall()
    return [DeadLetter(OutboundEvent(seq=r[0], id=r[1], type=r[2], subject=r[3], priority=r[4],
                                     body=bytes(r[5]), escalated=bool(r[8])),
                       int(r[6]), str(r[7]))
            for r in rows]


CONSUMERS_FILE = "consumers.sqlite3"
"""Named consumers' positions, beside the store: a database of their own, so that a reader
keeps working read-only on the store (a full disk, a read-only mount, a running gateway)."""


class SqliteEventReader:
    """:class:`gateway.store.protocols.EventReader`: its own read-only connection."""

    def __init__(self, path: Path) -> None:
        self.path = path
        # Read-only: reading what was taken in must work on a full disk or a read-only mount.
        self._conn = connect(path, readonly=True)

    def events_after(self, after: int, limit: int) -> list[tuple[int, bytes]]:
        try:
            return _read_events(self._conn, after, limit)
        except sqlite3.OperationalError:
            return []  # the gateway is creating the schema; the caller tries again

    def consumer_offsets(self) -> SqliteConsumerOffsets:
        return SqliteConsumerOffsets(self.path.parent / CONSUMERS_FILE)

    def close(self) -> None:
        self._conn.close()


class SqliteConsumerOffsets:
    """:class:`gateway.store.protocols.ConsumerOffsets` in ``consumers.sqlite3``."""

    def __init__(self, path: Path) -> None:
        try:
            conn = sqlite3.connect(path, isolation_level=None)
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("CREATE TABLE IF NOT EXISTS consumers(name TEXT PRIMARY KEY,"
                         " position INTEGER NOT NULL)")
        except sqlite3.OperationalError as exc:
            raise TransientError(str(exc)) from exc
        make_private(path)  # consumer names and positions: owner-only
        self._conn = conn

    def position(self, name: str) -> int | None:
        row = self._conn.execute("SELECT position FROM consumers WHERE name = ?",
                                 (name,)).fetchone()
        return None if row is None else int(row[0])

    def save(self, name: str, seq: int) -> None:
        try:
            self._conn.execute("INSERT INTO consumers(name, position) VALUES (?, ?)"
                               " ON CONFLICT(name) DO UPDATE SET position = excluded.position",
                               (name, seq))
        except sqlite3.OperationalError as exc:
            raise TransientError(str(exc)) from exc

    def close(self) -> None:
        self._conn.close()


_MAX_STATE_KEY = 200


class SqliteAdapterState:
    """:class:`gateway.plugin.AdapterState` of one adapter, in the ``adapter_state`` table."""

    def __init__(self, store: SqliteStore, kind: str) -> None:
        self.store = store
        self.kind = kind

    @staticmethod
    def _check(key: str) -> None:
        if not 0 < len(key) <= _MAX_STATE_KEY:
            raise ValueError(f"adapter state keys are 1 to {_MAX_STATE_KEY} characters")

    async def get(self, key: str) -> bytes | None:
        self._check(key)
        kind = self.kind

        def one(c: sqlite3.Connection) -> bytes | None:
            row = c.execute("SELECT value FROM adapter_state WHERE kind = ? AND key = ?",
                            (kind, key)).fetchone()
            return None if row is None else bytes(row[0])
        return await self.store.read(one)

    async def put(self, key: str, value: bytes) -> None:
        self._check(key)
        row = (self.kind, key, bytes(value), time.time_ns() // 1000)
        await self.store.run(lambda tx: tx.conn.execute(
            "INSERT INTO adapter_state(kind, key, value, updated_at) VALUES (?, ?, ?, ?)"
            " ON CONFLICT(kind, key) DO UPDATE SET value = excluded.value,"
            " updated_at = excluded.updated_at", row))

    async def delete(self, key: str) -> None:
        self._check(key)
        kind = self.kind
        await self.store.run(lambda tx: tx.conn.execute(
            "DELETE FROM adapter_state WHERE kind = ? AND key = ?", (kind, key)))

    async def items(self, prefix: str = "") -> list[tuple[str, bytes]]:
        kind = self.kind
        # Range scan on the primary key: keys from prefix up to prefix + the highest code point.
        high = prefix + "\U0010ffff"

        def scan(c: sqlite3.Connection) -> list[tuple[str, bytes]]:
            return [(str(k), bytes(v)) for k, v in c.execute(
                "SELECT key, value FROM adapter_state WHERE kind = ? AND key >= ? AND key < ?"
                " ORDER BY key", (kind, prefix, high))]
        return await self.store.read(scan)
