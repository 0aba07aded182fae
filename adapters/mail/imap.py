"""``imap``: takes mail from existing mailboxes (imapclient in one worker thread per mailbox)."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import imaplib
import logging
import random
import re
import ssl
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, ClassVar, Literal, TypeVar

import msgspec
from imapclient import IMAPClient
from prometheus_client import Counter, Gauge

from gateway.errors import ConfigError, RejectedInput, TransientError
from gateway.plugin import (
    INLINE_REPLY,
    AdapterBase,
    AdapterContext,
    AdapterState,
    Intake,
    Outbox,
    Reply,
    is_loopback,
    resolve_secret,
)
from gateway.plugin.files import write_durably
from intake_adapters.mail.keep import keep_raw, store_mail_attachments
from intake_adapters.mail.loop_policy import bounced_message_ids, classify, should_acknowledge
from intake_adapters.mail.parse import MailLimits, parse_email, to_inbound

log = logging.getLogger("intake.imap")

IMAP_SEEN = Counter("intake_imap_seen_total", "New messages found in a mailbox", ["mailbox"])
IMAP_ACCEPTED = Counter("intake_imap_accepted_total",
                        "Messages durably submitted (then flagged or moved)", ["mailbox"])
IMAP_QUARANTINED = Counter("intake_imap_quarantined_total",
                           "Messages that could not be taken, kept raw under the data dir",
                           ["mailbox"])
IMAP_RECONNECTS = Counter("intake_imap_reconnects_total", "Connection failures", ["mailbox"])
IMAP_CONNECTED = Gauge("intake_imap_connected", "1 while the mailbox is connected", ["mailbox"])

_PARSE_IN_THREAD = 256 * 1024
_STOP_GRACE = 15.0
# imapclient's errors derive from imaplib's; socket timeouts and TLS errors are OSErrors.
_NETWORK_ERRORS = (imaplib.IMAP4.error, OSError, EOFError)

T = TypeVar("T")


class MailboxConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """One ``[[adapters.imap.mailboxes]]`` entry."""

    name: str | None = None
    """Stable name: the delivery scope (same Message-ID in two mailboxes = two deliveries), the
    metrics label and the bookkeeping key. Default ``username@host/folder``."""
    host: str
    port: int | None = None
    """Default 993 with ``ssl``, else 143."""
    ssl: bool = True
    """Implicit TLS (IMAPS)."""
    starttls: bool = False
    """Upgrade a plain connection with STARTTLS before logging in."""
    ca_file: str | None = None
    """PEM bundle to verify the server with instead of the system's."""
    username: str
    password_env: str | None = None
    password_file: str | None = None
    folder: str = "INBOX"
    move_to: str | None = None
    """Move taken mail to this folder (MOVE, or COPY + delete where MOVE is missing)."""
    flag: str | None = "\\Seen"
    """Flag set on taken mail (a system flag or a keyword); bookkeeping never relies on it."""
    idle: bool = True
    """Wait with IDLE where the server offers it; otherwise poll."""
    poll_interval: float = 60.0
    """Seconds between checks without IDLE; with IDLE, the longest wait between two checks
    (a safety net for lost notifications)."""
    idle_renew: float = 1500.0
    """Seconds before an IDLE is renewed (RFC 2177: servers may drop it after 30 minutes)."""
    batch_size: int = 50
    """Messages fetched per round trip and submitted together."""


class ImapConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """``[adapters.imap]``: nothing runs until ``mailboxes`` lists at least one."""

    enabled: bool = True
    mailboxes: list[MailboxConfig] = []
    timeout: float = 60.0
    """Seconds for connecting and for each command."""
    backoff_min: float = 1.0
    """First wait after a failure; it doubles up to ``backoff_max``."""
    backoff_max: float = 300.0
    max_message_bytes: int = 26_214_400
    """Larger messages are not fetched; they are quarantined (reported, left in place)."""
    keep_raw: bool = True
    """Keep each message's bytes (content-addressed) for replay, as ``metadata.raw_sha256``."""


class _MailboxState(msgspec.Struct, frozen=True):
    uidvalidity: int
    last_uid: int
    """Every UID up to this one was taken or quarantined."""


class _StateFile(msgspec.Struct):
    """``<data_dir>/imap/state.json``, where the bookkeeping was kept before the store."""

    version: int = 1
    mailboxes: dict[str, _MailboxState] = {}


_decode_state_file = msgspec.json.Decoder(_StateFile)
_decode_mailbox = msgspec.json.Decoder(_MailboxState)
_encode = msgspec.json.Encoder().encode
_KEY_PREFIX = "mailbox:"
_MAX_KEY = 200


def book_key(name: str) -> str:
    """The state key of one mailbox's position: ``mailbox:<name>`` (hashed when too long)."""
    key = _KEY_PREFIX + name
    if len(key) > _MAX_KEY:
        key = f"{_KEY_PREFIX}sha256:{hashlib.sha256(name.encode()).hexdigest()}"
    return key


class UidBook:
    """UIDVALIDITY + last UID per mailbox, one key each in the adapter's durable state.

    Not \\Seen and not dates: another client reading a message must not hide it from us, and
    a message is taken exactly once per UIDVALIDITY. After a UIDVALIDITY change the mailbox is
    read again from the start and the store's Message-ID replay check absorbs the repeats.
    """

    def __init__(self, state: AdapterState, legacy_file: Path) -> None:
        self.state = state
        self.legacy_file = legacy_file

    async def migrate(self) -> None:
        """Take over ``state.json`` once, if it exists and nothing is stored yet; the file is
        then left as it is (a downgrade still finds it)."""
        if await self.state.items(_KEY_PREFIX):
            return
        try:
            data = await asyncio.to_thread(self.legacy_file.read_bytes)
            legacy = _decode_state_file.decode(data)
        except FileNotFoundError:
            return
        except (OSError, msgspec.DecodeError) as exc:
            raise ConfigError(f"cannot read the IMAP bookkeeping {self.legacy_file}: {exc}; "
                              "move it away to read every mailbox again (replays are "
                              "deduplicated)") from exc
        for name, position in legacy.mailboxes.items():
            await self.state.put(book_key(name), _encode(position))

    async def get(self, name: str) -> _MailboxState | None:
        value = await self.state.get(book_key(name))
        if value is None:
            return None
        try:
            return _decode_mailbox.decode(value)
        except msgspec.DecodeError as exc:
            raise ConfigError(f"the IMAP bookkeeping of mailbox {name!r} is unreadable: {exc}"
                              ) from exc

    async def record(self, name: str, uidvalidity: int, last_uid: int) -> None:
        await self.state.put(book_key(name), _encode(_MailboxState(uidvalidity, last_uid)))


Taken = Literal["accepted", "quarantined", "vanished"]


class _Mailbox:
    """One watched folder: its connection lives in its own thread; the logic on the loop."""

    def __init__(self, adapter: ImapAdapter, cfg: MailboxConfig, password: str) -> None:
        self.adapter = adapter
        self.cfg = cfg
        self.name = cfg.name or f"{cfg.username}@{cfg.host}/{cfg.folder}"
        self.password = password
        self.port = cfg.port or (993 if cfg.ssl else 143)
        self.counts = {"seen": 0, "accepted": 0, "quarantined": 0}
        self.connected = False
        self._tls = (ssl.create_default_context(cafile=cfg.ca_file)
                     if cfg.ssl or cfg.starttls else None)
        # IMAP connections are not thread-safe: one thread owns this mailbox's connection.
        self._thread = ThreadPoolExecutor(max_workers=1,
                                          thread_name_prefix=f"imap-{_safe(self.name)[:20]}")
        self._client: IMAPClient | None = None
        self._stop_thread = threading.Event()
        self._stop = asyncio.Event()
        self.task: asyncio.Task[None] | None = None

    async def _call(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._thread, fn, *args)

    def request_stop(self) -> None:
        self._stop.set()
        self._stop_thread.set()

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await self._call(self._disconnect)
        self._thread.shutdown(wait=False)

    # -- the loop ----------------------------------------------------------------------------

    async def run(self) -> None:
        """Watch the mailbox while this replica holds it: one replica at a time works a
        mailbox, and another takes over within seconds when it dies (``ctx.exclusive``)."""
        await self.adapter.ctx.exclusive.run(f"imap:{self.name}", self._watch, stop=self._stop)

    async def _watch(self) -> None:
        try:
            await self._watch_until_stopped()
        except asyncio.CancelledError:
            # The hold was lost (or we stop): log out, so that the next holder is alone.
            self._set_connected(False)
            with contextlib.suppress(Exception):
                await self._call(self._disconnect)
            raise

    async def _watch_until_stopped(self) -> None:
        backoff = self.adapter.config.backoff_min
        while not self._stop.is_set():
            try:
                await self._call(self._connect)
                self._set_connected(True)
                backoff = self.adapter.config.backoff_min
                while not self._stop.is_set():
                    await self._drain()
                    await self._wait_for_mail()
            except TransientError:
                log.warning("mailbox %s: the store is unavailable; retrying in about %.0f s",
                            self.name, backoff)
            except _NETWORK_ERRORS as exc:
                IMAP_RECONNECTS.labels(self.name).inc()
                log.warning("mailbox %s: %s; reconnecting in about %.0f s", self.name,
                            type(exc).__name__, backoff)
            except Exception:
                IMAP_RECONNECTS.labels(self.name).inc()
                log.exception("mailbox %s: unexpected failure; reconnecting", self.name)
            self._set_connected(False)
            with contextlib.suppress(Exception):
                await self._call(self._disconnect)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), backoff * random.uniform(0.5, 1.0))
            backoff = min(backoff * 2, self.adapter.config.backoff_max)

    def _set_connected(self, up: bool) -> None:
        self.connected = up
        IMAP_CONNECTED.labels(self.name).set(1 if up else 0)

    async def _wait_for_mail(self) -> None:
        if self._stop.is_set():
            return
        if self.cfg.idle and await self._call(self._can_idle):
            # Still look every poll_interval: servers do lose IDLE notifications.
            await self._call(self._idle_until_news,
                             min(self.cfg.idle_renew, self.cfg.poll_interval))
        else:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), self.cfg.poll_interval)

    async def _drain(self) -> None:
        # Read on the loop (the state is async); only this mailbox's watcher writes it.
        known = await self.adapter.book.get(self.name)
        uidvalidity, uids = await self._call(self._new_uids, known)
        for start in range(0, len(uids), self.cfg.batch_size):
            if self._stop.is_set():
                return
            await self._take_batch(uidvalidity, uids[start:start + self.cfg.batch_size])

    async def _take_batch(self, uidvalidity: int, uids: list[int]) -> None:
        self.counts["seen"] += len(uids)
        IMAP_SEEN.labels(self.name).inc(len(uids))
        bodies, too_large = await self._call(self._fetch, uids)
        # Tasks start in UID order, and submit queues its store operation before its first
        # suspension, so the store decides them in mailbox order while they run together.
        tasks = [asyncio.ensure_future(self._take_one(uidvalidity, uid, bodies.get(uid),
                                                      too_large=uid in too_large))
                 for uid in uids]
        results = await asyncio.gather(*tasks, return_exceptions=True)
        done: list[int] = []
        accepted: list[int] = []
        failure: BaseException | None = None
        for uid, result in zip(uids, results, strict=True):
            if isinstance(result, BaseException):
                failure = result  # nothing after it counts as done: it will be retried
                break
            done.append(uid)
            if result == "accepted":
                accepted.append(uid)
        if accepted:
            await self._call(self._mark_taken, accepted)
        if done:
            await self.adapter.book.record(self.name, uidvalidity, done[-1])
        if failure is not None:
            raise failure

    async def _take_one(self, uidvalidity: int, uid: int, raw: bytes | None, *,
                        too_large: bool) -> Taken:
        if too_large:
            return await self._quarantine(uidvalidity, uid, None, "larger than "
                                          "adapters.imap.max_message_bytes")
        if raw is None:
            return "vanished"  # expunged by another client between SEARCH and FETCH
        try:
            await self.adapter.submit_mail(raw, mailbox=self.name, own=self.cfg.username)
        except TransientError:
            raise
        except RejectedInput as exc:
            return await self._quarantine(uidvalidity, uid, raw, exc.reason)
        except Exception as exc:
            # A defect of ours must not block the mailbox: keep the mail aside, go on.
            log.exception("mailbox %s: unexpected failure on one message", self.name)
            return await self._quarantine(uidvalidity, uid, raw,
                                          f"internal error ({type(exc).__name__})")
        self.counts["accepted"] += 1
        IMAP_ACCEPTED.labels(self.name).inc()
        return "accepted"

    async def _quarantine(self, uidvalidity: int, uid: int, raw: bytes | None,
                          reason: str) -> Taken:
        folder = self.adapter.quarantine_dir / _safe(self.name)
        stem = f"{uidvalidity}-{uid}"
        if raw is not None:
            await asyncio.to_thread(write_durably, folder / f"{stem}.eml", raw)
        await asyncio.to_thread(write_durably, folder / f"{stem}.reason",
                                reason.encode("utf-8", "replace"))
        self.counts["quarantined"] += 1
        IMAP_QUARANTINED.labels(self.name).inc()
        log.warning("mailbox %s: message uid %s quarantined", self.name, uid)
        return "quarantined"

    # -- in the mailbox's thread ---------------------------------------------------------

    def _connect(self) -> None:
        cfg = self.cfg
        client = IMAPClient(cfg.host, port=self.port, ssl=cfg.ssl, ssl_context=self._tls,
                            timeout=self.adapter.config.timeout)
        try:
            if cfg.starttls:
                client.starttls(self._tls)
            client.login(cfg.username, self.password)
        except BaseException:
            with contextlib.suppress(Exception):
                client.shutdown()
            raise
        self._client = client

    def _disconnect(self) -> None:
        client, self._client = self._client, None
        if client is None:
            return
        try:
            client.logout()
        except Exception:
            with contextlib.suppress(Exception):
                client.shutdown()

    def _can_idle(self) -> bool:
        assert self._client is not None
        return self._client.has_capability("IDLE")

    def _new_uids(self, known: _MailboxState | None) -> tuple[int, list[int]]:
        assert self._client is not None
        status = self._client.select_folder(self.cfg.folder)
        uidvalidity = int(status[b"UIDVALIDITY"])
        last = known.last_uid if known is not None and known.uidvalidity == uidvalidity else 0
        if known is not None and known.uidvalidity != uidvalidity:
            log.warning("mailbox %s: UIDVALIDITY changed; reading it again from the start "
                        "(messages already taken are recognised by their Message-ID)", self.name)
        # "n:*" always matches the highest UID, even below n: filter.
        found = self._client.search(["UID", f"{last + 1}:*"])
        return uidvalidity, sorted(int(u) for u in found if int(u) > last)

    def _fetch(self, uids: list[int]) -> tuple[dict[int, bytes], set[int]]:
        assert self._client is not None
        limit = self.adapter.config.max_message_bytes
        sizes = self._client.fetch(uids, ["RFC822.SIZE"])
        too_large = {int(u) for u, d in sizes.items() if int(d.get(b"RFC822.SIZE", 0)) > limit}
        wanted = [u for u in uids if u in sizes and u not in too_large]
        bodies: dict[int, bytes] = {}
        if wanted:
            # BODY.PEEK: reading must not set \Seen; only a durable submit marks the mail.
            for uid, data in self._client.fetch(wanted, ["BODY.PEEK[]"]).items():
                body = data.get(b"BODY[]")
                if body is not None:
                    bodies[int(uid)] = bytes(body)
        return bodies, too_large

    def _mark_taken(self, uids: list[int]) -> None:
        client, cfg = self._client, self.cfg
        assert client is not None
        if cfg.flag:
            client.add_flags(uids, [cfg.flag])
        if cfg.move_to:
            if client.has_capability("MOVE"):
                client.move(uids, cfg.move_to)
            else:
                client.copy(uids, cfg.move_to)
                client.add_flags(uids, [b"\\Deleted"])
                if client.has_capability("UIDPLUS"):
                    client.uid_expunge(uids)  # only ours: a plain EXPUNGE would take others'

    def _idle_until_news(self, seconds: float) -> None:
        client = self._client
        assert client is not None
        client.idle()
        try:
            if _buffered_news(client):
                return
            waited = 0.0
            # Short checks so that stop() is noticed within a second.
            while waited < seconds and not self._stop_thread.is_set():
                if client.idle_check(timeout=1.0):
                    return
                waited += 1.0
        finally:
            client.idle_done()


def _buffered_news(client: IMAPClient) -> bool:
    """True when the server already said something that ``idle_check`` cannot see.

    Mail arriving between our SEARCH and the IDLE command makes the server send ``* n EXISTS``
    together with the ``+ idling`` continuation. imaplib reads both into its buffer while
    waiting for the continuation, so polling the socket sees nothing until the next event and
    the message would wait (found in testing: seconds to minutes). This looks at imaplib's
    buffer and untagged responses, which imapclient does not expose.
    """
    imap = client._imap
    if any(key in imap.untagged_responses for key in ("EXISTS", "RECENT", "EXPUNGE")):
        return True
    sock = client.socket()
    timeout = sock.gettimeout()
    sock.setblocking(False)
    try:
        return bool(imap.file.peek(1))
    except (BlockingIOError, ssl.SSLWantReadError, OSError):
        return False
    finally:
        sock.settimeout(timeout)


class ImapAdapter(AdapterBase):
    """Mailboxes in: taken once per UIDVALIDITY + UID, flagged or moved after the commit."""

    kind: ClassVar[str] = "imap"
    Config: ClassVar[type[msgspec.Struct]] = ImapConfig

    def __init__(self, config: ImapConfig, intake: Intake, ctx: AdapterContext) -> None:
        super().__init__(config, intake, ctx)
        self.config: ImapConfig = config
        self.root = Path(ctx.data_dir) / "imap"
        self.quarantine_dir = self.root / "quarantine"
        self.book = UidBook(ctx.state, self.root / "state.json")
        self.limits = MailLimits(max_attachment_bytes=intake.limits.max_attachment_bytes,
                                 max_attachments=intake.limits.max_attachments)
        self.mailboxes: list[_Mailbox] = []
        names: set[str] = set()
        for i, mb in enumerate(config.mailboxes):
            where = f"adapters.imap.mailboxes[{i}]"
            password = resolve_secret(mb.password_env, mb.password_file, key=f"{where}.password")
            if password is None:
                raise ConfigError(f"{where}: give password_env or password_file")
            if mb.ssl and mb.starttls:
                raise ConfigError(f"{where}: set either ssl or starttls, not both")
            if not (mb.ssl or mb.starttls) and not is_loopback(mb.host):
                raise ConfigError(f"{where}: refusing to send the password in clear to "
                                  f"{mb.host}; set ssl = true or starttls = true")
            if not mb.flag and not mb.move_to:
                log.info("%s: neither flag nor move_to: taken mail stays as it is", where)
            if mb.batch_size < 1 or mb.poll_interval <= 0 or mb.idle_renew <= 0:
                raise ConfigError(f"{where}: batch_size, poll_interval and idle_renew must be "
                                  "positive")
            box = _Mailbox(self, mb, password)
            if box.name in names:
                raise ConfigError(f"{where}: two mailboxes are named {box.name!r}; give each "
                                  "a distinct name")
            names.add(box.name)
            self.mailboxes.append(box)

    async def start(self) -> None:
        """Take over an old bookkeeping file and start one watcher per mailbox."""
        if not self.mailboxes:
            return
        await self.book.migrate()
        for box in self.mailboxes:
            box.task = asyncio.create_task(box.run(), name=f"imap:{box.name}")

    def not_ready(self) -> str | None:
        """A mailbox whose watcher ended without being asked to, or None."""
        for box in self.mailboxes:
            if box.task is not None and box.task.done():
                return f"the watcher of IMAP mailbox {box.name!r} ended"
        return None

    async def stop(self) -> None:
        """Let batches in progress finish their submit and flag, then log out."""
        for box in self.mailboxes:
            box.request_stop()
        tasks = [box.task for box in self.mailboxes if box.task is not None]
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=_STOP_GRACE)
            for task in pending:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        for box in self.mailboxes:
            await box.close()
            box.task = None

    async def quarantined(self) -> list[tuple[str, str, str]]:
        """Quarantined mail, oldest first: (``<mailbox dir>/<uidvalidity>-<uid>``, the mailbox,
        the reason)."""
        def scan() -> list[tuple[float, str, str, str]]:
            found = []
            if not self.quarantine_dir.is_dir():
                return []
            for reason in self.quarantine_dir.glob("*/*.reason"):
                item = f"{reason.parent.name}/{reason.stem}"
                text = reason.read_text(encoding="utf-8", errors="replace")[:300]
                if not reason.with_suffix(".eml").exists():
                    text += " (not fetched: cannot be replayed)"
                found.append((reason.stat().st_mtime, item, reason.parent.name, text))
            return sorted(found)[:200]
        return [(item, where, why) for _t, item, where, why in await asyncio.to_thread(scan)]

    async def replay_quarantined(self, item_id: str) -> str:
        """Submit quarantined mail again; taken mail leaves the quarantine."""
        match = re.fullmatch(r"([A-Za-z0-9._-]+)/(\d+-\d+)", item_id)
        if match is None or match.group(1).startswith("."):
            raise RejectedInput("no such quarantined message")
        folder = self.quarantine_dir / match.group(1)
        stem = match.group(2)
        raw_path, reason_path = folder / f"{stem}.eml", folder / f"{stem}.reason"
        if not reason_path.exists():
            raise RejectedInput("no such quarantined message")
        if not raw_path.exists():
            return "still set aside: it was too large to fetch; raise max_message_bytes"
        box = next((b for b in self.mailboxes if _safe(b.name) == match.group(1)), None)
        raw = await asyncio.to_thread(raw_path.read_bytes)
        try:
            await self.submit_mail(raw, mailbox=box.name if box else match.group(1),
                                   own=box.cfg.username if box else "")
        except RejectedInput as exc:
            await asyncio.to_thread(write_durably, reason_path,
                                    exc.reason.encode("utf-8", "replace"))
            return f"still refused: {exc.reason}"
        raw_path.unlink(missing_ok=True)
        reason_path.unlink(missing_ok=True)
        log.info("quarantined message %s replayed and taken", item_id)
        return "accepted"

    def counts(self, name: str) -> dict[str, int]:
        """seen / accepted / quarantined since start, for one mailbox (also on /metrics)."""
        return dict(next(b for b in self.mailboxes if b.name == name).counts)

    async def submit_mail(self, raw: bytes, *, mailbox: str, own: str) -> None:
        """Parse, keep, submit one message; RejectedInput means quarantine it."""
        if len(raw) > _PARSE_IN_THREAD:
            parsed = await asyncio.to_thread(parse_email, raw, limits=self.limits)
        else:
            parsed = parse_email(raw, limits=self.limits)
        if parsed.refusal is not None:
            raise RejectedInput(parsed.refusal)
        extra: dict[str, str] = {}
        attachments, not_kept = await store_mail_attachments(self.intake, parsed, extra)
        if self.config.keep_raw:
            await keep_raw(self.intake, raw, extra)
        mail_class = classify(parsed)
        human = should_acknowledge(mail_class)
        message = to_inbound(parsed, channel=self.kind, mailbox=mailbox,
                             received_at=self.ctx.clock(), attachments=attachments,
                             not_kept=not_kept)
        thread = message.thread
        bounced = bounced_message_ids(parsed)
        if bounced:
            # A bounce of our acknowledgement names its id: it joins that ticket.
            thread = msgspec.structs.replace(
                thread, references=list(dict.fromkeys([*thread.references, *bounced])))
        message = msgspec.structs.replace(
            message, thread=thread, auto_submitted=not human,
            # Without a Message-ID the bytes identify the mail (a UIDVALIDITY reset re-reads it).
            provider_message_id=(message.provider_message_id
                                 or "sha256:" + hashlib.sha256(raw).hexdigest()),
            metadata={**message.metadata, **extra})
        reply: Reply = INLINE_REPLY
        email = message.contact.email
        if human and email and email != own.lower():
            reply = Outbox(channel="email", to=email, reply_to=parsed.message_id)
        await self.intake.submit(message, reply=reply)


def _safe(name: str) -> str:
    """A file-system-safe form of a mailbox name."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._") or "mailbox"
