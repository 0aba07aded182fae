"""The Twilio adapter's own state: opt-outs, delivery reports and voice calls in progress."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time
from pathlib import Path

import msgspec

from gateway.errors import TransientError


class VoiceCall(msgspec.Struct, frozen=True, kw_only=True):
    """What the voice callbacks told us about one call, until its ticket exists."""

    call_sid: str
    caller: str
    called: str = ""
    recording_url: str | None = None
    recording_sid: str | None = None
    duration: int = 0
    recorded_at: float = 0.0
    transcript: str | None = None
    transcription_status: str | None = None
    ticket_number: str | None = None
    transcript_submitted: bool = False


_STATE_SCHEMA = """
CREATE TABLE IF NOT EXISTS opt_outs(
    network TEXT NOT NULL, phone TEXT NOT NULL, at REAL NOT NULL, PRIMARY KEY(network, phone))
    WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS statuses(
    sid TEXT PRIMARY KEY, status TEXT NOT NULL, error_code TEXT, updated_at REAL NOT NULL)
    WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS calls(
    call_sid TEXT PRIMARY KEY, caller TEXT NOT NULL, called TEXT NOT NULL,
    recording_url TEXT, recording_sid TEXT, duration INTEGER NOT NULL DEFAULT 0,
    recorded_at REAL NOT NULL, transcript TEXT, transcription_status TEXT,
    ticket_number TEXT, transcript_submitted INTEGER NOT NULL DEFAULT 0) WITHOUT ROWID;
"""


class TwilioState:
    """Opt-outs, delivery reports and voice calls in progress: ``<data_dir>/twilio``.

    Small and rarely written, so one SQLite connection behind a lock, used from worker
    threads. Opt-outs are also kept in memory: every inbound message and every send checks them.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._conn: sqlite3.Connection | None = None
        self._lock = threading.Lock()
        self._opted_out: set[tuple[str, str]] = set()

    def open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA synchronous = FULL")
        conn.executescript(_STATE_SCHEMA)
        self._opted_out = {(n, p) for n, p in conn.execute("SELECT network, phone FROM opt_outs")}
        self._conn = conn

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    async def _run(self, sql: str, args: tuple[object, ...] = ()) -> list[tuple[object, ...]]:
        def run() -> list[tuple[object, ...]]:
            with self._lock:
                if self._conn is None:
                    raise TransientError("the Twilio adapter's state is closed")
                return self._conn.execute(sql, args).fetchall()
        return await asyncio.to_thread(run)

    def opted_out(self, network: str, phone: str) -> bool:
        return (network, phone) in self._opted_out

    async def set_opt_out(self, network: str, phone: str, opted_out: bool) -> None:
        if opted_out:
            await self._run("INSERT OR REPLACE INTO opt_outs(network, phone, at) VALUES (?,?,?)",
                            (network, phone, time.time()))
            self._opted_out.add((network, phone))
        else:
            await self._run("DELETE FROM opt_outs WHERE network = ? AND phone = ?",
                            (network, phone))
            self._opted_out.discard((network, phone))

    async def record_status(self, sid: str, status: str, error_code: str | None) -> None:
        await self._run("INSERT INTO statuses(sid, status, error_code, updated_at)"
                        " VALUES (?,?,?,?) ON CONFLICT(sid) DO UPDATE SET status = excluded.status,"
                        " error_code = coalesce(excluded.error_code, error_code),"
                        " updated_at = excluded.updated_at",
                        (sid, status, error_code, time.time()))

    async def status_of(self, sid: str) -> tuple[str, str | None] | None:
        rows = await self._run("SELECT status, error_code FROM statuses WHERE sid = ?", (sid,))
        return (str(rows[0][0]), rows[0][1] and str(rows[0][1])) if rows else None  # type: ignore[return-value]

    async def save_call(self, call: VoiceCall) -> None:
        """Merge what one callback told into the call's row (callbacks come in any order)."""
        await self._run(
            "INSERT INTO calls(call_sid, caller, called, recording_url, recording_sid, duration,"
            " recorded_at, transcript, transcription_status) VALUES (?,?,?,?,?,?,?,?,?)"
            " ON CONFLICT(call_sid) DO UPDATE SET"
            " caller = CASE WHEN excluded.caller != '' THEN excluded.caller ELSE caller END,"
            " called = CASE WHEN excluded.called != '' THEN excluded.called ELSE called END,"
            " recording_url = coalesce(recording_url, excluded.recording_url),"
            " recording_sid = coalesce(recording_sid, excluded.recording_sid),"
            " duration = max(duration, excluded.duration),"
            " recorded_at = min(recorded_at, excluded.recorded_at),"
            " transcript = coalesce(transcript, excluded.transcript),"
            " transcription_status = coalesce(transcription_status,"
            "                                 excluded.transcription_status)",
            (call.call_sid, call.caller, call.called, call.recording_url, call.recording_sid,
             call.duration, call.recorded_at, call.transcript or None,
             call.transcription_status))

    async def call(self, call_sid: str) -> VoiceCall | None:
        rows = await self._run(
            "SELECT call_sid, caller, called, recording_url, recording_sid, duration,"
            " recorded_at, transcript, transcription_status, ticket_number, transcript_submitted"
            " FROM calls WHERE call_sid = ?", (call_sid,))
        if not rows:
            return None
        names = ("call_sid", "caller", "called", "recording_url", "recording_sid", "duration",
                 "recorded_at", "transcript", "transcription_status", "ticket_number",
                 "transcript_submitted")
        return msgspec.convert(dict(zip(names, rows[0], strict=True)), VoiceCall, strict=False)

    async def mark_submitted(self, call_sid: str, ticket_number: str, *,
                             with_transcript: bool) -> None:
        await self._run("UPDATE calls SET ticket_number = ?,"
                        " transcript_submitted = max(transcript_submitted, ?) WHERE call_sid = ?",
                        (ticket_number, int(with_transcript), call_sid))

    async def waiting_calls(self, recorded_before: float) -> tuple[list[str], float | None]:
        """Calls with a recording and no ticket: those recorded before the cut-off, and the
        oldest recording time of the others (when the sweeper must look again)."""
        rows = await self._run("SELECT call_sid, recorded_at FROM calls WHERE ticket_number IS"
                               " NULL AND recording_url IS NOT NULL")
        due = [str(sid) for sid, at in rows if float(at) <= recorded_before]  # type: ignore[arg-type]
        later = [float(at) for _, at in rows if float(at) > recorded_before]  # type: ignore[arg-type]
        return due, (min(later) if later else None)
