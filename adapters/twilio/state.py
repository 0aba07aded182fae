"""The Twilio adapter's own state: opt-outs, delivery reports and voice calls in progress.

All of it lives in the adapter's :class:`~gateway.plugin.AdapterState` (``ctx.state``), so the
gateway's store keeps it durable and every replica shares it. Keys:

- ``opt-out/<network>/<phone>``: the number sent STOP (or Twilio answered error 21610);
- ``status/<MessageSid>``: the last delivery report of an SMS we sent;
- ``call/<CallSid>``: what the voice callbacks told about a call (a :class:`VoiceCall`);
- ``waiting/<CallSid>``: a call with a recording and no ticket yet, for the sweeper (an index,
  so a restart finds the voice mail still to submit without reading every call ever made).
"""

from __future__ import annotations

import asyncio
import time

import msgspec

from gateway.plugin import AdapterState


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


class _Status(msgspec.Struct, frozen=True, array_like=True):
    status: str
    error_code: str | None
    updated_at: float


_encode = msgspec.json.Encoder().encode
_decode_call = msgspec.json.Decoder(VoiceCall).decode
_decode_status = msgspec.json.Decoder(_Status).decode
_decode_float = msgspec.json.Decoder(float).decode


class TwilioState:
    """Opt-outs, delivery reports and voice calls in progress, kept in ``ctx.state``.

    Opt-outs are also cached in memory, loaded by :meth:`open` and written through: every
    inbound message and every send checks them, synchronously and on the hot path, and a
    store read per message would cost more than the whole TwiML answer. The cost: an opt-out
    recorded by another replica is seen here at this replica's next start (until then this
    one may still send; Twilio itself refuses to deliver to an opted-out number, error 21610,
    which records the opt-out here too).
    """

    def __init__(self, state: AdapterState) -> None:
        self.state = state
        self._opted_out: set[tuple[str, str]] = set()
        # Callbacks of one call come in any order and may race: a merge reads, then writes.
        # The lock makes that atomic within this process (what the SQL upsert did).
        self._merge = asyncio.Lock()

    async def open(self) -> None:
        """Load the opt-outs into memory."""
        opted: set[tuple[str, str]] = set()
        for key, _ in await self.state.items("opt-out/"):
            network, _, phone = key.removeprefix("opt-out/").partition("/")
            opted.add((network, phone))
        self._opted_out = opted

    def opted_out(self, network: str, phone: str) -> bool:
        return (network, phone) in self._opted_out

    async def set_opt_out(self, network: str, phone: str, opted_out: bool) -> None:
        key = f"opt-out/{network}/{phone}"
        if opted_out:
            await self.state.put(key, _encode(time.time()))
            self._opted_out.add((network, phone))
        else:
            await self.state.delete(key)
            self._opted_out.discard((network, phone))

    async def record_status(self, sid: str, status: str, error_code: str | None) -> None:
        key = f"status/{sid}"
        async with self._merge:
            old = await self.state.get(key)
            if error_code is None and old is not None:
                error_code = _decode_status(old).error_code
            await self.state.put(key, _encode(_Status(status, error_code, time.time())))

    async def status_of(self, sid: str) -> tuple[str, str | None] | None:
        raw = await self.state.get(f"status/{sid}")
        if raw is None:
            return None
        got = _decode_status(raw)
        return got.status, got.error_code

    async def save_call(self, call: VoiceCall) -> None:
        """Merge what one callback told into the call's record (callbacks come in any order)."""
        async with self._merge:
            old = await self.call(call.call_sid)
            if old is None:
                merged = msgspec.structs.replace(call, transcript=call.transcript or None,
                                                 ticket_number=None, transcript_submitted=False)
            else:
                merged = msgspec.structs.replace(
                    old,
                    caller=call.caller or old.caller,
                    called=call.called or old.called,
                    recording_url=old.recording_url or call.recording_url,
                    recording_sid=old.recording_sid or call.recording_sid,
                    duration=max(old.duration, call.duration),
                    recorded_at=min(old.recorded_at, call.recorded_at),
                    transcript=old.transcript or call.transcript or None,
                    transcription_status=old.transcription_status or call.transcription_status)
            await self.state.put(f"call/{call.call_sid}", _encode(merged))
            if merged.recording_url is not None and merged.ticket_number is None:
                await self.state.put(f"waiting/{call.call_sid}", _encode(merged.recorded_at))

    async def call(self, call_sid: str) -> VoiceCall | None:
        raw = await self.state.get(f"call/{call_sid}")
        return None if raw is None else _decode_call(raw)

    async def mark_submitted(self, call_sid: str, ticket_number: str, *,
                             with_transcript: bool) -> None:
        async with self._merge:
            call = await self.call(call_sid)
            if call is None:
                return
            await self.state.put(f"call/{call_sid}", _encode(msgspec.structs.replace(
                call, ticket_number=ticket_number,
                transcript_submitted=call.transcript_submitted or with_transcript)))
            await self.state.delete(f"waiting/{call_sid}")

    async def waiting_calls(self, recorded_before: float) -> tuple[list[str], float | None]:
        """Calls with a recording and no ticket: those recorded before the cut-off, and the
        oldest recording time of the others (when the sweeper must look again)."""
        due: list[str] = []
        later: list[float] = []
        for key, raw in await self.state.items("waiting/"):
            at = _decode_float(raw)
            if at <= recorded_before:
                due.append(key.removeprefix("waiting/"))
            else:
                later.append(at)
        return due, (min(later) if later else None)
