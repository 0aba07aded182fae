"""The replicas' store: PostgreSQL, one writer thread per replica, group commit.

Shaped like :mod:`gateway.store.sqlite` on purpose (the same ``run(fn)`` with a synchronous
``fn(tx)``, the same ``Tx`` methods, the same tables), so the decision runs unchanged and a
table added to one store is added to the other in the same place.

The driver is psycopg 3, used synchronously from the writer thread: the decision's ``Tx`` is
synchronous, and a blocking driver in a thread runs it as it is, where asyncpg would need every
``Tx`` method awaited (a second decision) or a bridge back into the loop per statement. psycopg
also prepares repeated statements by itself and is the maintained successor of psycopg2.

How replicas stay correct, by what the database guarantees rather than by checks in Python:

- Every write transaction starts by locking the single ``event_counter`` row. Write
  transactions of all replicas are therefore serialised (group commit makes each one a batch),
  event ``seq`` values are handed out in commit order (a reader at ``seq > n`` never skips an
  event committed later with a smaller seq), and no two transactions can deadlock on the rows
  they touch afterwards. Numbers, identities, delivery keys and refs are still guarded by
  unique constraints; a counter row per numbering scope (``sequences``) makes numbers.
- Acknowledgements are leased to one replica (``FOR UPDATE SKIP LOCKED``, a lease owner and an
  expiry): another replica takes a row only once the lease has run out, so a replica that dies
  mid-send delays its rows by the lease, never loses them.
- ``synchronous_commit = on`` on every connection: a commit has reached the primary's WAL on
  disk before ``run`` returns, so nothing answered "accepted" is lost.
- A committed write that appended events NOTIFYs ``intake_events``; every replica LISTENs, so
  long polls and the dispatcher wake on other replicas' commits too.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime
from typing import Any, TypeVar

import msgspec
import psycopg
from psycopg import errors as pg_errors

from gateway.decision import OutboxAck, StoredReceipt, SubmissionPlan, TicketRow
from gateway.errors import ConfigError, StorageFull, TransientError
from gateway.ids import new_id
from gateway.plugin.contract import OutboundEvent
from gateway.store.postgres_replies import PostgresReplyReads, PostgresReplyTx
from gateway.store.postgres_schema import MIGRATIONS, SCHEMA_VERSION
from gateway.store.protocols import DeadLetter, DueAck, NewEvent
from intake_schemas import ContactView

T = TypeVar("T")
log = logging.getLogger("intake.store")

_receipt_decoder = msgspec.msgpack.Decoder(StoredReceipt)
_encode_mp = msgspec.msgpack.Encoder().encode
_MAX_REFS = 50
"""References looked up per message: a sender can list thousands, each a query."""
_MAX_STATE_KEY = 200
_NOTIFY_CHANNEL = "intake_events"
_ACK_CHANNEL = "intake_acks"
"""NOTIFYed (payload: the committing replica's owner) by a commit that queued an
acknowledgement, so every other replica's ack dispatcher wakes for it at once."""
_MIGRATE_LOCK = 0x1A7A_6E00_0001
"""Advisory lock key held while migrating: two replicas running ``migrate`` apply each step
once."""
_SESSION = ("SET synchronous_commit = on", "SET lock_timeout = '30s'")


def _us(t: datetime) -> int:
    return int(t.timestamp() * 1_000_000)


def _dt(us: int) -> datetime:
    return datetime.fromtimestamp(us / 1_000_000, tz=UTC)


def _now_us() -> int:
    return time.time_ns() // 1000


def connect(dsn: str, *, autocommit: bool = False) -> psycopg.Connection[Any]:
    """A connection with the session settings every store connection needs."""
    try:
        conn = psycopg.connect(dsn, autocommit=True, connect_timeout=5,
                               application_name="intake-gateway")
        for statement in _SESSION:
            conn.execute(statement)
        conn.autocommit = autocommit
    except psycopg.Error as exc:
        raise TransientError(f"cannot reach PostgreSQL: {_reason(exc)}") from exc
    return conn


def _reason(exc: BaseException) -> str:
    """A one-line reason without the DSN (which may carry a password)."""
    text = str(exc).strip().splitlines()
    return text[0][:200] if text else type(exc).__name__


def _storage_error(exc: BaseException) -> StorageFull | None:
    if isinstance(exc, pg_errors.DiskFull | pg_errors.OutOfMemory):
        err = StorageFull("no room left on the database's disk")
        err.__cause__ = exc
        return err
    return None


# -- migrations --------------------------------------------------------------------------------


def schema_version(conn: psycopg.Connection[Any]) -> int:
    """The database's schema version (0: no schema yet)."""
    row = conn.execute("SELECT to_regclass('meta') IS NOT NULL").fetchone()
    if not row or not row[0]:
        return 0
    found = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
    return int(found[0]) if found else 0


def migrate(dsn: str) -> tuple[int, int]:
    """Bring the database to :data:`SCHEMA_VERSION`; (version before, version after).

    Safe to run from several replicas at once: an advisory lock lets one migrate while the
    others wait, then find nothing left to do. Refuses a database newer than this code.
    """
    conn = connect(dsn, autocommit=True)
    try:
        conn.execute("SELECT pg_advisory_lock(%s)", (_MIGRATE_LOCK,))
        before = version = schema_version(conn)
        if version > SCHEMA_VERSION:
            raise ConfigError(f"the database's schema is version {version}, newer than this "
                              f"gateway's ({SCHEMA_VERSION}): upgrade the gateway")
        for number in range(version + 1, SCHEMA_VERSION + 1):
            with conn.transaction():
                for statement in MIGRATIONS[number - 1]:
                    conn.execute(statement)
                conn.execute("INSERT INTO meta(key, value) VALUES ('schema_version', %s)"
                             " ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                             (str(number),))
            version = number
        return before, version
    except psycopg.Error as exc:
        raise TransientError(f"migration failed: {_reason(exc)}") from exc
    finally:
        with contextlib.suppress(psycopg.Error):
            conn.execute("SELECT pg_advisory_unlock(%s)", (_MIGRATE_LOCK,))
        conn.close()


def check_schema(conn: psycopg.Connection[Any]) -> None:
    """Refuse to serve a database whose schema this code does not know (either way)."""
    version = schema_version(conn)
    if version > SCHEMA_VERSION:
        raise ConfigError(f"the database's schema is version {version}, newer than this "
                          f"gateway's ({SCHEMA_VERSION}): this replica runs older code than "
                          "the schema; upgrade it")
    if version < SCHEMA_VERSION:
        raise ConfigError(f"the database's schema is version {version}, this gateway needs "
                          f"{SCHEMA_VERSION}: run `intake-gateway migrate` first")


# -- the transaction ---------------------------------------------------------------------------


class PostgresTx(PostgresReplyTx):
    """:class:`gateway.store.protocols.StoreTx` over the writer's connection, in its transaction.

    ``next_seq`` is the last event seq handed out in this transaction (the locked
    ``event_counter`` row's value plus the events appended so far).
    """

    def __init__(self, conn: psycopg.Connection[Any]) -> None:
        self.conn = conn
        self.next_seq = 0
        self.acks_queued = 0
        """Acknowledgements inserted in this transaction (ops rolled back excluded)."""

    def _one(self, sql: str, args: Sequence[Any] = ()) -> tuple[Any, ...] | None:
        return self.conn.execute(sql, args).fetchone()

    def find_receipt(self, delivery_key: str) -> StoredReceipt | None:
        row = self._one("SELECT receipt FROM messages WHERE delivery_key = %s", (delivery_key,))
        return None if row is None else _receipt_decoder.decode(row[0])

    def resolve_contact(
        self, identities: list[tuple[str, str]], name: str | None, customer_type: str | None,
        *, verified: bool = True,
    ) -> tuple[int, ContactView]:
        # The same rules as SqliteTx.resolve_contact (see there for why each one holds).
        rows: dict[tuple[str, str], tuple[int, bool]] = {}
        for kind, value in identities:
            row = self._one("SELECT contact_id, verified FROM identities"
                            " WHERE kind = %s AND value = %s", (kind, value))
            if row is not None:
                rows[(kind, value)] = (int(row[0]), bool(row[1]))
        proven = [cid for cid, ok in rows.values() if ok]
        if verified:
            owner = min(proven) if proven else None
        else:
            owner = min(proven) if proven else min((cid for cid, _ in rows.values()), default=None)
        if owner is not None and not verified:
            return owner, self._contact_view(owner)
        if owner is None:
            if not verified and customer_type == "vip":
                customer_type = None
            created = self._one(
                "INSERT INTO contacts(uid, name, customer_type, created_at)"
                " VALUES (%s, %s, %s, %s) RETURNING id",
                (new_id(), name, customer_type, _now_us()))
            assert created is not None
            owner = int(created[0])
        else:
            self.conn.execute("UPDATE contacts SET name = coalesce(%s, name),"
                              " customer_type = coalesce(%s, customer_type) WHERE id = %s",
                              (name, customer_type, owner))
        for kind, value in identities:
            found = rows.get((kind, value))
            if found is None:
                self.conn.execute(
                    "INSERT INTO identities(kind, value, contact_id, verified)"
                    " VALUES (%s, %s, %s, %s) ON CONFLICT DO NOTHING",
                    (kind, value, owner, verified))
            elif verified and not found[1]:
                self.conn.execute("UPDATE identities SET contact_id = %s, verified = TRUE"
                                  " WHERE kind = %s AND value = %s", (owner, kind, value))
        return owner, self._contact_view(owner)

    def owns_identity(self, contact_id: int, kind: str, value: str) -> bool:
        return self._one("SELECT 1 FROM identities WHERE kind = %s AND value = %s"
                         " AND contact_id = %s", (kind, value, contact_id)) is not None

    def _contact_view(self, contact_id: int) -> ContactView:
        row = self._one("SELECT uid, name, customer_type FROM contacts WHERE id = %s",
                        (contact_id,))
        assert row is not None
        uid, name, ctype = row
        email = phone = None
        chats: dict[str, str] = {}
        for kind, value in self.conn.execute(
                "SELECT kind, value FROM identities WHERE contact_id = %s"
                ' ORDER BY kind COLLATE "C", value COLLATE "C"', (contact_id,)):
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

    @staticmethod
    def _ticket(row: tuple[Any, ...] | None) -> TicketRow | None:
        if row is None:
            return None
        return TicketRow(id=int(row[0]), number=row[1], contact_id=int(row[2]), kind=row[3],
                         area=row[4], priority=row[5], escalated=bool(row[6]), channel=row[7],
                         created_at=_dt(row[8]), due_at=_dt(row[9]))

    def ticket_by_number(self, number: str) -> TicketRow | None:
        return self._ticket(self._one(
            f"SELECT {self._TICKET_COLS} FROM tickets WHERE number = %s", (number,)))

    def ticket_by_reference(self, refs: list[str]) -> tuple[TicketRow, bool] | None:
        for ref in refs[:_MAX_REFS]:
            found = self._one("SELECT ticket_id, unguessable FROM ack_refs WHERE ref = %s",
                              (ref,))
            if found is None:
                continue
            ticket = self._ticket(self._one(
                f"SELECT {self._TICKET_COLS} FROM tickets WHERE id = %s", (found[0],)))
            if ticket is not None:
                return ticket, bool(found[1])
        return None

    def recent_open_ticket(self, contact_id: int, since: datetime) -> TicketRow | None:
        return self._ticket(self._one(
            f"SELECT {self._TICKET_COLS} FROM tickets WHERE contact_id = %s AND status = 'open'"
            " AND updated_at >= %s ORDER BY updated_at DESC LIMIT 1", (contact_id, _us(since))))

    def duplicate_of(self, contact_id: int, fingerprint: str,
                     since: datetime) -> tuple[TicketRow, str] | None:
        row = self._one(
            "SELECT ticket_id, uid FROM messages WHERE contact_id = %s AND fingerprint = %s"
            " AND received_at >= %s AND ticket_id IS NOT NULL ORDER BY received_at, id LIMIT 1",
            (contact_id, fingerprint, _us(since)))
        if row is None:
            return None
        ticket = self._ticket(self._one(
            f"SELECT {self._TICKET_COLS} FROM tickets WHERE id = %s", (row[0],)))
        assert ticket is not None
        return ticket, row[1]

    def next_sequence(self, scope: str) -> int:
        # The counter row of the scope: its row lock (held to commit) hands each number once.
        row = self._one(
            "INSERT INTO sequences(scope, value) VALUES (%s, 1) ON CONFLICT(scope)"
            " DO UPDATE SET value = sequences.value + 1 RETURNING value", (scope,))
        assert row is not None
        return int(row[0])

    def insert_ticket(self, *, number: str, contact_id: int, plan: SubmissionPlan) -> TicketRow:
        m, tri = plan.message, plan.triage
        now = _us(m.received_at)
        row = self._one(
            "INSERT INTO tickets(number, contact_id, kind, area, priority, escalated, channel,"
            " subject, created_at, updated_at, due_at)"
            " VALUES (%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s) RETURNING id",
            (number, contact_id, tri.kind, tri.area, tri.priority, tri.escalated, m.channel,
             m.subject[:500], now, now, _us(plan.due_at)))
        assert row is not None
        return TicketRow(id=int(row[0]), number=number, contact_id=contact_id, kind=tri.kind,
                         area=tri.area, priority=tri.priority, escalated=tri.escalated,
                         channel=m.channel, created_at=_dt(now), due_at=_dt(_us(plan.due_at)))

    def insert_message(self, *, plan: SubmissionPlan, ticket_id: int | None, contact_id: int,
                       receipt: StoredReceipt) -> None:
        m = plan.message
        self.conn.execute(
            "INSERT INTO messages(uid, ticket_id, contact_id, channel, delivery_key, outcome,"
            " received_at, fingerprint, body, receipt) VALUES (%s,%s,%s,%s,%s,%s,%s,%s,%s,%s)",
            (plan.message_uid, ticket_id, contact_id, m.channel, plan.delivery_key,
             receipt.outcome, _us(m.received_at), plan.fingerprint, _encode_mp(m),
             _encode_mp(receipt)))

    def touch_ticket(self, ticket_id: int, at: datetime) -> None:
        self.conn.execute("UPDATE tickets SET updated_at = greatest(updated_at, %s)"
                          " WHERE id = %s", (_us(at), ticket_id))

    def insert_ack(self, *, ticket_id: int, message_uid: str, ack: OutboxAck,
                   payload: bytes) -> None:
        self.conn.execute(
            "INSERT INTO acks(ticket_id, message_uid, channel, recipient, reply_to, payload,"
            " next_attempt_at) VALUES (%s,%s,%s,%s,%s,%s,0)",
            (ticket_id, message_uid, ack.channel, ack.to, ack.reply_to, payload))
        self.acks_queued += 1

    def append_event(self, *, event_id: str, type_: str, subject: str, priority: str | None,
                     body: bytes, escalated: bool = False) -> int:
        seq = self.next_seq + 1
        self.conn.execute(
            "INSERT INTO events(seq, id, type, subject, priority, created_at, body, escalated)"
            " VALUES (%s,%s,%s,%s,%s,%s,%s,%s)",
            (seq, event_id, type_, subject, priority, _now_us(), body, escalated))
        self.next_seq = seq
        return seq

    # -- the acknowledgement outbox (gateway.store.protocols.AckOutboxTx) -----------------

    def retry_ack(self, ack_id: int, attempts: int, at: float, error: str) -> None:
        # The lease ends with the attempt: whichever replica is free then takes the retry.
        self.conn.execute("UPDATE acks SET attempts = %s, next_attempt_at = %s, last_error = %s,"
                          " lease_owner = NULL, leased_until = 0 WHERE id = %s",
                          (attempts, int(at * 1_000_000), error[:300], ack_id))

    def finish_ack(self, ack_id: int, status: str, *, provider_id: str | None = None,
                   error: str | None = None, event: NewEvent | None = None,
                   ticket_id: int | None = None, unguessable: bool = False) -> None:
        self.conn.execute("UPDATE acks SET status = %s, provider_id = %s, last_error = %s,"
                          " sent_at = %s, lease_owner = NULL WHERE id = %s",
                          (status, provider_id, error and error[:300], _now_us(), ack_id))
        if provider_id and ticket_id is not None:
            self.conn.execute("INSERT INTO ack_refs(ref, ticket_id, unguessable)"
                              " VALUES (%s, %s, %s) ON CONFLICT DO NOTHING",
                              (provider_id, ticket_id, unguessable))
        if event is not None:
            self.append_event(event_id=event.id, type_=event.type, subject=event.subject,
                              priority=event.priority, body=event.body,
                              escalated=event.escalated)

    def lease_acks(self, owner: str, limit: int, now: float, lease: float) -> list[DueAck]:
        """Take up to ``limit`` due acknowledgements for ``owner`` until ``now + lease``.

        Rows another owner holds an unexpired lease on are left alone; rows another
        transaction is taking right now are skipped (``SKIP LOCKED``), never waited for.
        """
        now_us = int(now * 1_000_000)
        rows = self.conn.execute(
            "UPDATE acks SET lease_owner = %s, leased_until = %s WHERE id IN ("
            " SELECT id FROM acks WHERE status = 'pending' AND next_attempt_at <= %s"
            " AND (lease_owner IS NULL OR lease_owner = %s OR leased_until <= %s)"
            " ORDER BY id LIMIT %s FOR UPDATE SKIP LOCKED)"
            " RETURNING id, ticket_id, channel, recipient, reply_to, payload, attempts",
            (owner, now_us + int(lease * 1_000_000), now_us, owner, now_us, limit)).fetchall()
        return sorted((DueAck(int(i), int(t), str(ch), str(r), rt, bytes(p), int(a))
                       for i, t, ch, r, rt, p, a in rows), key=lambda a: a.id)

    # -- relay positions and dead letters (gateway.store.protocols.RelayTx) ---------------

    def relay_position(self, name: str) -> int:
        row = self._one("SELECT position FROM relay_positions WHERE name = %s", (name,))
        return int(row[0]) if row else 0

    def save_relay_position(self, name: str, seq: int) -> None:
        self.conn.execute("INSERT INTO relay_positions(name, position) VALUES (%s, %s)"
                          " ON CONFLICT(name) DO UPDATE SET position = excluded.position",
                          (name, seq))

    def held_tickets(self, publisher: str,
                     subjects: Sequence[str] | None = None) -> dict[str, int]:
        return _held_tickets(self.conn, publisher, subjects)

    def add_dead_letter(self, seq: int, publisher: str, attempts: int, error: str) -> bool:
        return self.conn.execute(
            "INSERT INTO dead_letters(seq, publisher, attempts, last_error, failed_at)"
            " VALUES (%s, %s, %s, %s, %s) ON CONFLICT DO NOTHING",
            (seq, publisher, attempts, error[:500], _now_us())).rowcount == 1

    # -- singleton leases (gateway.leases) -------------------------------------------------

    def take_lease(self, name: str, holder: str, ttl: float) -> bool:
        """Hold lease ``name`` for ``holder`` for ``ttl`` seconds if it is free, expired or
        already ``holder``'s; False while another holder's lease runs. Times are the
        database's clock, so replicas' clocks need not agree."""
        return self.conn.execute(
            "WITH now AS (SELECT (extract(epoch FROM clock_timestamp()) * 1000000)::bigint AS us)"
            " INSERT INTO leases(name, holder, expires_at)"
            " SELECT %s, %s, now.us + %s FROM now"
            " ON CONFLICT(name) DO UPDATE SET holder = excluded.holder,"
            " expires_at = excluded.expires_at"
            " WHERE leases.holder = excluded.holder"
            " OR leases.expires_at <= (SELECT us FROM now)",
            (name, holder, int(ttl * 1_000_000))).rowcount == 1

    def release_lease(self, name: str, holder: str) -> None:
        self.conn.execute("DELETE FROM leases WHERE name = %s AND holder = %s", (name, holder))


def _held_tickets(conn: psycopg.Connection[Any], publisher: str,
                  subjects: Sequence[str] | None) -> dict[str, int]:
    sql = ("SELECT e.subject, min(d.seq) FROM dead_letters d JOIN events e ON e.seq = d.seq"
           " WHERE d.publisher = %s")
    args: list[object] = [publisher]
    if subjects is not None:
        if not subjects:
            return {}
        sql += " AND e.subject = ANY(%s)"
        args.append(list(subjects))
    return {str(s): int(q) for s, q in conn.execute(sql + " GROUP BY e.subject", args)}


def _read_events(conn: psycopg.Connection[Any], after: int, limit: int) -> list[tuple[int, bytes]]:
    return [(int(s), bytes(b)) for s, b in conn.execute(
        "SELECT seq, body FROM events WHERE seq > %s ORDER BY seq LIMIT %s", (after, limit))]


# -- the store ---------------------------------------------------------------------------------


class _Op:
    __slots__ = ("fn", "future", "loop")

    def __init__(self, fn: Callable[[Any], Any], future: asyncio.Future[Any],
                 loop: asyncio.AbstractEventLoop) -> None:
        self.fn = fn
        self.future = future
        self.loop = loop


def _settle_all(items: list[tuple[asyncio.Future[Any], bool, Any]]) -> None:
    for future, ok, value in items:
        if future.done():  # the caller was cancelled; the write happened anyway
            continue
        if ok:
            future.set_result(value)
        else:
            future.set_exception(value)


class PostgresStore(PostgresReplyReads):
    """Store on PostgreSQL for replicas: :class:`gateway.store.protocols.Store`.

    ``run(fn)`` queues ``fn(tx)`` for this replica's writer thread, which runs a batch of ops
    (one SAVEPOINT each) in one transaction and commits once. Reads go to a small set of
    autocommit connections in worker threads. A lost connection (PostgreSQL restarting) fails
    the ops of that batch as :class:`TransientError` (the sender retries; idempotency absorbs
    the retry) and the next batch reconnects.
    """

    def __init__(self, dsn: str, *, group_commit_max: int = 256, readers: int = 4,
                 ack_lease: float = 60.0, auto_migrate: bool = False) -> None:
        self.dsn = dsn
        self.group_commit_max = group_commit_max
        self.ack_lease = ack_lease
        self.auto_migrate = auto_migrate
        self.owner = f"{uuid.uuid4().hex[:12]}"
        """This process's name as a lease owner (acks, singletons)."""
        self._queue: queue.SimpleQueue[_Op | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._listener: threading.Thread | None = None
        self._closing = False
        self._stop = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._readers: queue.SimpleQueue[psycopg.Connection[Any]] = queue.SimpleQueue()
        self._reader_slots = threading.BoundedSemaphore(readers)
        self._reader_conns: set[psycopg.Connection[Any]] = set()
        self._reader_lock = threading.Lock()
        self._commit_listeners: list[Callable[[int], None]] = []
        self._ack_listeners: list[Callable[[], None]] = []
        self.commits = 0
        self.ops = 0
        self.last_seq = 0

    # -- lifecycle ---------------------------------------------------------------------------

    async def open(self) -> None:
        """Check (or, with ``auto_migrate``, bring) the schema, then start the writer."""
        if self.auto_migrate:
            await asyncio.to_thread(migrate, self.dsn)
        conn = await asyncio.to_thread(connect, self.dsn)
        try:
            def prepare() -> int:
                check_schema(conn)
                row = conn.execute("SELECT value FROM event_counter WHERE one = 1").fetchone()
                conn.rollback()
                return int(row[0]) if row else 0
            self.last_seq = await asyncio.to_thread(prepare)
        except BaseException:
            conn.close()
            raise
        self._loop = asyncio.get_running_loop()
        self._stop.clear()
        self._thread = threading.Thread(target=self._writer, args=(conn,),
                                        name="postgres-writer", daemon=True)
        self._thread.start()
        self._listener = threading.Thread(target=self._listen, name="postgres-listen",
                                          daemon=True)
        self._listener.start()

    async def close(self) -> None:
        """Finish queued work and stop the writer, the listener and the readers."""
        if self._thread is not None:
            self._closing = True  # no new writes from now on
            # Acknowledgements and replies this replica leased but did not settle go back to
            # the others now, not when the lease runs out (a rolling upgrade stops replicas
            # this way).
            owner = self.owner
            with contextlib.suppress(TransientError, psycopg.Error):
                await self._submit(lambda tx: (tx.conn.execute(
                    "UPDATE acks SET lease_owner = NULL, leased_until = 0"
                    " WHERE lease_owner = %s AND status = 'pending'", (owner,)),
                    tx.conn.execute(
                    "UPDATE replies SET lease_owner = NULL, leased_until = 0"
                    " WHERE lease_owner = %s AND status = 'queued'", (owner,))))
            self._queue.put(None)
            await asyncio.to_thread(self._thread.join)
            self._thread = None
            self._closing = False
        self._stop.set()
        if self._listener is not None:
            await asyncio.to_thread(self._listener.join)
            self._listener = None
        with self._reader_lock:
            conns, self._reader_conns = self._reader_conns, set()
        for conn in conns:
            with contextlib.suppress(psycopg.Error):
                conn.close()

    def on_commit(self, listener: Callable[[int], None]) -> None:
        """Call ``listener(last_seq)`` on the loop after commits that added events, this
        replica's or (by NOTIFY) another's."""
        self._commit_listeners.append(listener)

    def on_ack_queued(self, listener: Callable[[], None]) -> None:
        """Call ``listener()`` on the loop after each commit of this replica that queued an
        acknowledgement, and on another replica's (by NOTIFY ``intake_acks``). See
        :meth:`gateway.store.protocols.AckOutbox.on_ack_queued`; the dispatcher's idle poll
        still finds rows whose wake was lost (a NOTIFY while the listener reconnected)."""
        self._ack_listeners.append(listener)

    def _acks_queued(self) -> None:
        """On the loop: a commit (ours or another replica's) queued acknowledgements."""
        for listener in self._ack_listeners:
            listener()

    def _committed(self, seq: int) -> None:
        """On the loop: a commit (ours or another replica's) reached ``seq``."""
        if seq > self.last_seq:
            self.last_seq = seq
        for listener in self._commit_listeners:
            listener(self.last_seq)

    # -- writes ------------------------------------------------------------------------------

    async def run(self, fn: Callable[[PostgresTx], T]) -> T:
        """Run ``fn`` in the writer's transaction; return its result once it is durable."""
        if self._thread is None or self._closing:
            raise TransientError("the store is not open")
        return await self._submit(fn)

    async def _submit(self, fn: Callable[[PostgresTx], T]) -> T:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        self._queue.put(_Op(fn, future, loop))
        return await future

    def _writer(self, conn: psycopg.Connection[Any] | None) -> None:
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
            if conn is None or conn.closed:
                try:
                    conn = connect(self.dsn)
                except TransientError as exc:
                    self._settle(batch, [(False, exc)] * len(batch))
                    continue
            results = self._commit_batch(conn, batch)
            if conn.broken:
                conn.close()
                conn = None
            self._settle(batch, results)
        if conn is not None:
            conn.close()
        while True:  # ops queued behind the stop fail, as on SQLite, rather than hang
            try:
                late = self._queue.get_nowait()
            except queue.Empty:
                break
            if late is not None:
                self._settle([late], [(False, TransientError("the store is closed"))])

    @staticmethod
    def _settle(batch: list[_Op], results: list[tuple[bool, Any]]) -> None:
        settled: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Future[Any], bool, Any]]]
        settled = {}
        for op, (ok, value) in zip(batch, results, strict=True):
            settled.setdefault(op.loop, []).append((op.future, ok, value))
        for loop, items in settled.items():
            with contextlib.suppress(RuntimeError):  # a loop closed meanwhile
                loop.call_soon_threadsafe(_settle_all, items)

    def _commit_batch(self, conn: psycopg.Connection[Any],
                      batch: list[_Op]) -> list[tuple[bool, Any]]:
        tx = PostgresTx(conn)
        results: list[tuple[bool, Any]] = []
        try:
            # The cluster-wide write lock (see the module's doc): seqs in commit order.
            row = conn.execute("SELECT value FROM event_counter WHERE one = 1"
                               " FOR UPDATE").fetchone()
            start = tx.next_seq = int(row[0]) if row else 0
            for op in batch:
                conn.execute("SAVEPOINT op")
                mark, acks_mark = tx.next_seq, tx.acks_queued
                try:
                    results.append((True, op.fn(tx)))
                    conn.execute("RELEASE SAVEPOINT op")
                except Exception as exc:
                    if conn.broken:
                        raise
                    conn.execute("ROLLBACK TO SAVEPOINT op")
                    conn.execute("RELEASE SAVEPOINT op")
                    tx.next_seq, tx.acks_queued = mark, acks_mark
                    results.append((False, _storage_error(exc) or exc))
            if tx.next_seq != start:
                conn.execute("UPDATE event_counter SET value = %s WHERE one = 1",
                             (tx.next_seq,))
                conn.execute("SELECT pg_notify(%s, %s)", (_NOTIFY_CHANNEL, str(tx.next_seq)))
            if tx.acks_queued:
                conn.execute("SELECT pg_notify(%s, %s)", (_ACK_CHANNEL, self.owner))
            conn.commit()
        except psycopg.Error as exc:
            with contextlib.suppress(psycopg.Error):
                conn.rollback()
            err: TransientError = _storage_error(exc) or TransientError(
                f"the store could not commit: {_reason(exc)}")
            err.__cause__ = exc
            return [(False, err)] * len(batch)
        self.commits += 1
        self.ops += len(batch)
        if tx.next_seq != start and self._loop is not None:
            with contextlib.suppress(RuntimeError):
                self._loop.call_soon_threadsafe(self._committed, tx.next_seq)
        if tx.acks_queued and self._loop is not None:
            with contextlib.suppress(RuntimeError):
                self._loop.call_soon_threadsafe(self._acks_queued)
        return results

    def _listen(self) -> None:
        """LISTEN for other replicas' commits; reconnects while the store is open."""
        while not self._stop.is_set():
            try:
                conn = connect(self.dsn, autocommit=True)
            except TransientError:
                self._stop.wait(1.0)
                continue
            try:
                conn.execute(f"LISTEN {_NOTIFY_CHANNEL}")
                conn.execute(f"LISTEN {_ACK_CHANNEL}")
                # A commit may have happened while we were not listening: catch up once.
                row = conn.execute("SELECT value FROM event_counter WHERE one = 1").fetchone()
                if row is not None:
                    self._notify_loop(int(row[0]))
                while not self._stop.is_set():
                    for note in conn.notifies(timeout=0.5, stop_after=64):
                        if note.channel == _ACK_CHANNEL:
                            # Our own commits woke our listeners already (once, as promised).
                            if note.payload != self.owner and self._loop is not None:
                                with contextlib.suppress(RuntimeError):
                                    self._loop.call_soon_threadsafe(self._acks_queued)
                            continue
                        with contextlib.suppress(ValueError):
                            self._notify_loop(int(note.payload))
            except psycopg.Error:
                self._stop.wait(0.5)
            finally:
                with contextlib.suppress(psycopg.Error):
                    conn.close()

    def _notify_loop(self, seq: int) -> None:
        if self._loop is not None and seq > self.last_seq:
            with contextlib.suppress(RuntimeError):
                self._loop.call_soon_threadsafe(self._committed, seq)

    # -- reads -------------------------------------------------------------------------------

    @contextlib.contextmanager
    def _reader(self) -> Iterator[psycopg.Connection[Any]]:
        with self._reader_slots:
            try:
                conn = self._readers.get_nowait()
            except queue.Empty:
                conn = connect(self.dsn, autocommit=True)
                with self._reader_lock:
                    self._reader_conns.add(conn)
            try:
                yield conn
            except psycopg.Error as exc:
                if conn.broken or conn.closed:
                    with self._reader_lock:
                        self._reader_conns.discard(conn)
                    conn.close()
                    raise TransientError(f"the store cannot read: {_reason(exc)}") from exc
                self._readers.put(conn)
                raise
            else:
                self._readers.put(conn)

    async def read(self, fn: Callable[[psycopg.Connection[Any]], T]) -> T:
        """Run ``fn`` on a read connection (autocommit) in a worker thread."""
        def call() -> T:
            if self._thread is None and not self._closing:
                raise TransientError("the store is closed")
            try:
                with self._reader() as conn:
                    return fn(conn)
            except TransientError:
                # A pooled connection that PostgreSQL cut (a restart, a failover) shows it
                # only when used: reads are idempotent, so try once more on a fresh one.
                with self._reader() as conn:
                    return fn(conn)
        return await asyncio.to_thread(call)

    async def first_use(self, scope: str, key: str, *, ttl: float) -> bool:
        """Record ``key`` in ``scope`` for ``ttl`` seconds; False if it is recorded already."""
        now = _now_us()
        expires = now + int(ttl * 1_000_000)

        def claim(tx: PostgresTx) -> bool:
            c = tx.conn
            c.execute("DELETE FROM replay_guards WHERE (scope, key) IN (SELECT scope, key FROM"
                      " replay_guards WHERE expires_at < %s ORDER BY expires_at LIMIT 64)",
                      (now,))
            # An expired row not yet swept is taken over (the sweep is only a few rows).
            return c.execute(
                "INSERT INTO replay_guards(scope, key, expires_at) VALUES (%s, %s, %s)"
                " ON CONFLICT(scope, key) DO UPDATE SET expires_at = excluded.expires_at"
                " WHERE replay_guards.expires_at < %s", (scope, key, expires, now)).rowcount == 1

        return await self.run(claim)

    async def probe_write(self) -> None:
        """One small durable write, for readiness."""
        stamp = str(time.time_ns())
        await self.run(lambda tx: tx.conn.execute(
            "INSERT INTO meta(key, value) VALUES ('ready_probe', %s)"
            " ON CONFLICT(key) DO UPDATE SET value = excluded.value", (stamp,)))

    def adapter_state(self, kind: str) -> PostgresAdapterState:
        """The durable key-value state of adapter ``kind``, shared by every replica."""
        return PostgresAdapterState(self, kind)

    async def message_body(self, uid: str) -> bytes | None:
        def one(c: psycopg.Connection[Any]) -> bytes | None:
            row = c.execute("SELECT body FROM messages WHERE uid = %s", (uid,)).fetchone()
            return None if row is None or not row[0] else bytes(row[0])  # b"": purged
        return await self.read(one)

    async def events_after(self, after: int, limit: int) -> list[tuple[int, bytes]]:
        return await self.read(lambda c: _read_events(c, after, limit))

    async def outbound_after(self, after: int, limit: int) -> list[OutboundEvent]:
        def rows(c: psycopg.Connection[Any]) -> list[OutboundEvent]:
            return [OutboundEvent(seq=int(s), id=i, type=t, subject=subj, priority=p,
                                  body=bytes(b), escalated=bool(x))
                    for s, i, t, subj, p, b, x in c.execute(
                        "SELECT seq, id, type, subject, priority, body, escalated FROM events"
                        " WHERE seq > %s ORDER BY seq LIMIT %s", (after, limit))]
        return await self.read(rows)

    # -- the acknowledgement outbox (gateway.store.protocols.AckOutbox) -------------------

    async def due_acks(self, limit: int, now: float) -> list[DueAck]:
        """Pending acknowledgements due at ``now``, oldest first, leased to this replica."""
        owner, lease = self.owner, self.ack_lease
        return await self.run(lambda tx: tx.lease_acks(owner, limit, now, lease))

    async def next_ack_attempt(self) -> float | None:
        """When the earliest pending acknowledgement is due (or another replica's lease on it
        runs out), or None."""
        owner = self.owner

        def one(c: psycopg.Connection[Any]) -> float | None:
            row = c.execute(
                "SELECT min(greatest(next_attempt_at, CASE WHEN lease_owner IS DISTINCT FROM %s"
                " THEN leased_until ELSE 0 END)) FROM acks WHERE status = 'pending'",
                (owner,)).fetchone()
            return None if row is None or row[0] is None else float(row[0]) / 1_000_000
        return await self.read(one)

    async def acks_sent_since(self, channel: str, recipient: str, since: float) -> int:
        """Acknowledgements sent to ``recipient`` on ``channel`` since ``since``, by any
        replica (the per-recipient limit counts across replicas)."""
        def one(c: psycopg.Connection[Any]) -> int:
            row = c.execute("SELECT count(*) FROM acks WHERE channel = %s AND recipient = %s"
                            " AND status = 'sent' AND sent_at >= %s",
                            (channel, recipient, int(since * 1_000_000))).fetchone()
            return int(row[0]) if row else 0
        return await self.read(one)

    # -- dead letters (gateway.store.protocols.DeadLetters) -------------------------------

    async def dead_letters(self, publisher: str) -> list[DeadLetter]:
        def rows(c: psycopg.Connection[Any]) -> list[DeadLetter]:
            return [DeadLetter(OutboundEvent(seq=int(r[0]), id=r[1], type=r[2], subject=r[3],
                                             priority=r[4], body=bytes(r[5]),
                                             escalated=bool(r[8])), int(r[6]), str(r[7]))
                    for r in c.execute(
                        "SELECT e.seq, e.id, e.type, e.subject, e.priority, e.body, d.attempts,"
                        " d.last_error, e.escalated FROM dead_letters d JOIN events e"
                        " ON e.seq = d.seq WHERE d.publisher = %s ORDER BY d.seq",
                        (publisher,))]
        return await self.read(rows)

    async def remove_dead_letter(self, publisher: str, seq: int) -> None:
        await self.run(lambda tx: tx.conn.execute(
            "DELETE FROM dead_letters WHERE publisher = %s AND seq = %s", (publisher, seq)))

    # -- attachments and raw mails (gateway.attachments.BlobStore) -----------------------

    async def put_blob(self, sha256: str, data: bytes) -> None:
        """Keep ``data`` under its sha256, durably, for every replica. On a read connection
        (autocommit, synchronous commit): blobs need no place in the commit order, and a
        large file must not hold the write lock."""
        def put(c: psycopg.Connection[Any]) -> None:
            c.execute("INSERT INTO blobs(sha256, data, created_at) VALUES (%s, %s, %s)"
                      " ON CONFLICT(sha256) DO UPDATE SET created_at = excluded.created_at",
                      (sha256, data, _now_us()))
        try:
            await self.read(put)
        except pg_errors.DiskFull as exc:
            raise StorageFull("no room left on the database's disk") from exc

    async def get_blob(self, sha256: str) -> bytes | None:
        def one(c: psycopg.Connection[Any]) -> bytes | None:
            row = c.execute("SELECT data FROM blobs WHERE sha256 = %s", (sha256,)).fetchone()
            return None if row is None else bytes(row[0])
        return await self.read(one)

    # -- singleton leases (gateway.leases.LeaseStore) -------------------------------------

    async def take_lease(self, name: str, ttl: float) -> bool:
        """Hold (or renew) lease ``name`` for this replica for ``ttl`` seconds; False while
        another replica's lease on it runs. Expiry is the database's clock, not ours."""
        owner = self.owner
        return await self.run(lambda tx: tx.take_lease(name, owner, ttl))

    async def release_lease(self, name: str) -> None:
        """Give lease ``name`` up (when the work ended): the next replica need not wait."""
        owner = self.owner
        await self.run(lambda tx: tx.release_lease(name, owner))

    def event_reader(self) -> PostgresEventReader:
        """A reader of the event log for ``intake-gateway tail``; needs no ``open``."""
        return PostgresEventReader(self.dsn)


class PostgresEventReader:
    """:class:`gateway.store.protocols.EventReader` on its own autocommit connection."""

    def __init__(self, dsn: str) -> None:
        self.dsn = dsn
        self._conn = connect(dsn, autocommit=True)

    def events_after(self, after: int, limit: int) -> list[tuple[int, bytes]]:
        try:
            return _read_events(self._conn, after, limit)
        except pg_errors.UndefinedTable:
            return []  # no schema yet: `migrate` has not run; the caller tries again
        except psycopg.OperationalError as exc:
            raise TransientError(f"cannot read events: {_reason(exc)}") from exc

    def consumer_offsets(self) -> PostgresConsumerOffsets:
        return PostgresConsumerOffsets(self.dsn)

    def close(self) -> None:
        self._conn.close()


class PostgresConsumerOffsets:
    """:class:`gateway.store.protocols.ConsumerOffsets` in the ``consumers`` table: a consumer
    that moves from one machine to another keeps its position."""

    def __init__(self, dsn: str) -> None:
        self._conn = connect(dsn, autocommit=True)

    def position(self, name: str) -> int | None:
        row = self._conn.execute("SELECT position FROM consumers WHERE name = %s",
                                 (name,)).fetchone()
        return None if row is None else int(row[0])

    def save(self, name: str, seq: int) -> None:
        try:
            self._conn.execute("INSERT INTO consumers(name, position) VALUES (%s, %s)"
                               " ON CONFLICT(name) DO UPDATE SET position = excluded.position",
                               (name, seq))
        except psycopg.Error as exc:
            raise TransientError(f"cannot save the consumer's position: {_reason(exc)}") from exc

    def close(self) -> None:
        self._conn.close()


class PostgresAdapterState:
    """:class:`gateway.plugin.AdapterState` of one adapter, in ``adapter_state``."""

    def __init__(self, store: PostgresStore, kind: str) -> None:
        self.store = store
        self.kind = kind

    @staticmethod
    def _check(key: str) -> None:
        if not 0 < len(key) <= _MAX_STATE_KEY:
            raise ValueError(f"adapter state keys are 1 to {_MAX_STATE_KEY} characters")

    async def get(self, key: str) -> bytes | None:
        self._check(key)
        kind = self.kind

        def one(c: psycopg.Connection[Any]) -> bytes | None:
            row = c.execute("SELECT value FROM adapter_state WHERE kind = %s AND key = %s",
                            (kind, key)).fetchone()
            return None if row is None else bytes(row[0])
        return await self.store.read(one)

    async def put(self, key: str, value: bytes) -> None:
        self._check(key)
        row = (self.kind, key, bytes(value), _now_us())
        await self.store.run(lambda tx: tx.conn.execute(
            "INSERT INTO adapter_state(kind, key, value, updated_at) VALUES (%s, %s, %s, %s)"
            " ON CONFLICT(kind, key) DO UPDATE SET value = excluded.value,"
            " updated_at = excluded.updated_at", row))

    async def delete(self, key: str) -> None:
        self._check(key)
        kind = self.kind
        await self.store.run(lambda tx: tx.conn.execute(
            "DELETE FROM adapter_state WHERE kind = %s AND key = %s", (kind, key)))

    async def items(self, prefix: str = "") -> list[tuple[str, bytes]]:
        kind = self.kind
        high = prefix + "\U0010ffff"  # keys are COLLATE "C": a range scan on the primary key

        def scan(c: psycopg.Connection[Any]) -> list[tuple[str, bytes]]:
            return [(str(k), bytes(v)) for k, v in c.execute(
                "SELECT key, value FROM adapter_state WHERE kind = %s AND key >= %s"
                " AND key < %s ORDER BY key", (kind, prefix, high))]
        return await self.store.read(scan)
