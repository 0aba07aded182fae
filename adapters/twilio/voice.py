"""``<path>/voice``: voice mail recorded in TwiML, its recording and transcription callbacks, and
the sweeper that makes the ticket when no transcription comes in time."""

from __future__ import annotations

import asyncio
import contextlib
import time
from datetime import UTC, datetime

import msgspec
from aiohttp import web
from multidict import MultiDict
from twilio.twiml.voice_response import VoiceResponse

from gateway.errors import RejectedInput, TooLarge
from gateway.plugin import Nobody, Outbox, Reply
from intake_adapters.twilio.common import (
    _VERIFIED_BY,
    TwilioParts,
    _e164,
    _twiml,
    can_receive_sms,
    guess_locale,
)
from intake_adapters.twilio.messaging import _MediaSkipped
from intake_adapters.twilio.protocol import render_twiml_empty, render_voice_record_twiml
from intake_adapters.twilio.state import VoiceCall
from intake_schemas import Attachment, Contact, InboundMessage, Receipt, ThreadHints


class VoiceMixin(TwilioParts):
    """Voice mail: the TwiML that records it, its callbacks, and the ticket made of it."""

    async def handle_voice(self, request: web.Request) -> web.Response:
        """An incoming call: invite a message and record it with transcription."""
        verified = await self._verified(request, with_base=True)
        if not verified.fields.get("CallSid"):
            raise RejectedInput("CallSid is missing", field="CallSid")
        c = self.config
        base = f"{verified.base}{self.path}/voice"
        return _twiml(render_voice_record_twiml(
            c.voice_prompt, f"{base}/recording", f"{base}/transcription", c.voice_max_length,
            language=c.voice_language, goodbye=c.voice_no_message))

    async def handle_recording(self, request: web.Request) -> web.Response:
        """``<Record action>``: the recording is there; wait for the transcription a while."""
        p = (await self._verified(request)).fields
        call = self._call_facts(p)
        await self.state.save_call(call)
        answer = VoiceResponse()
        answer.say(self.config.voice_thanks, language=self.config.voice_language)
        answer.hangup()
        if call.recording_url:
            stored = await self.state.call(call.call_sid)
            if stored is not None and stored.transcription_status is not None:
                await self._finish_call(call.call_sid)
            else:
                self._wake.set()  # the sweeper makes the ticket if no transcription comes
        return _twiml(answer.to_xml().encode("utf-8"))

    async def handle_transcription(self, request: web.Request) -> web.Response:
        """``transcribeCallback``: the text of the voice mail (or its failure)."""
        p = (await self._verified(request)).fields
        call = self._call_facts(p)
        status = (p.get("TranscriptionStatus") or "failed").lower()
        text = (p.get("TranscriptionText") or "").strip() if status == "completed" else ""
        call = msgspec.structs.replace(call, transcription_status=status, transcript=text)
        await self.state.save_call(call)
        await self._finish_call(call.call_sid)
        return _twiml(render_twiml_empty())

    def _call_facts(self, p: MultiDict[str]) -> VoiceCall:
        sid = p.get("CallSid")
        if not sid:
            raise RejectedInput("CallSid is missing", field="CallSid")
        try:
            duration = int(p.get("RecordingDuration") or 0)
        except ValueError:
            duration = 0
        return VoiceCall(call_sid=sid, caller=p.get("From") or p.get("Caller") or "",
                         called=p.get("To") or p.get("Called") or "",
                         recording_url=p.get("RecordingUrl") or None,
                         recording_sid=p.get("RecordingSid") or None,
                         duration=duration, recorded_at=time.time())

    async def _finish_call(self, call_sid: str) -> None:
        """Make the voice-mail ticket once; a transcript arriving later joins it.

        The lock only saves work: both submissions carry the CallSid as their delivery id, so
        two racing callbacks still make one ticket (the second is answered ``replayed``).
        """
        lock = self._calls.setdefault(call_sid, asyncio.Lock())
        try:
            async with lock:
                call = await self.state.call(call_sid)
                if call is None or not call.recording_url:
                    return
                if call.ticket_number is None:
                    receipt = await self._submit_call(call)
                    # A voice mail is never machine mail, so it always has a ticket.
                    assert receipt.ticket_number is not None
                    await self.state.mark_submitted(call_sid, receipt.ticket_number,
                                                    with_transcript=bool(call.transcript))
                elif call.transcript and not call.transcript_submitted:
                    await self._submit_late_transcript(call)
                    await self.state.mark_submitted(call_sid, call.ticket_number,
                                                    with_transcript=True)
        finally:
            if not lock.locked():
                self._calls.pop(call_sid, None)

    def _caller(self, call: VoiceCall) -> tuple[Contact, str | None]:
        phone = _e164(call.caller, self.config.default_region)
        if phone is not None:
            return Contact(phone=phone, verified_by=_VERIFIED_BY), phone
        if call.caller.startswith("client:") and len(call.caller) > 7:
            return Contact(chat_ids={"twilio_client": call.caller[7:]},
                           verified_by=_VERIFIED_BY), None
        # A withheld number: the voice mail still becomes a ticket, of a contact of its own.
        return Contact(chat_ids={"twilio_call": call.call_sid}, verified_by=_VERIFIED_BY), None

    async def _submit_call(self, call: VoiceCall) -> Receipt:
        contact, phone = self._caller(call)
        attachments: list[Attachment] = []
        metadata = {"twilio.channel": "voice", "twilio.call_sid": call.call_sid,
                    "twilio.recording_duration": str(call.duration),
                    "twilio.transcription": call.transcription_status or "pending"}
        if call.recording_sid:
            metadata["twilio.recording_sid"] = call.recording_sid
        url = call.recording_url or ""
        if self.config.recording_format == "mp3":
            url += ".mp3"
        try:
            data, ctype = await self._download(url)
            ext = ".mp3" if "mpeg" in ctype or "mp3" in ctype else ".wav"
            attachments.append(await self.intake.store_attachment(
                data, name=f"voicemail-{call.call_sid}{ext}", content_type=ctype))
        except (_MediaSkipped, TooLarge) as exc:
            metadata["twilio.recording"] = "not stored: " + (
                exc.reason if isinstance(exc, TooLarge) else str(exc))
            metadata["twilio.recording.url"] = url[:500]
        text = call.transcript or (
            f"Voice mail of {call.duration} s received "
            f"{datetime.fromtimestamp(call.recorded_at, UTC):%Y-%m-%d %H:%M:%S} UTC; "
            "no transcript." + (" The recording is attached." if attachments else ""))
        message = InboundMessage(
            channel=self.kind, provider_message_id=call.call_sid, delivery_scope="call",
            received_at=self.ctx.clock(), contact=contact, subject="", text=text,
            attachments=attachments, locale=guess_locale(call.transcript, None),
            metadata=metadata)
        # The caller hung up long ago: without an SMS nobody hears the ticket number.
        reply: Reply = Nobody()
        if phone is not None and self.config.voice_sms_ack and can_receive_sms(phone):
            reply = Outbox(channel="sms", to=phone)
        return await self.intake.submit(message, reply=reply)

    async def _submit_late_transcript(self, call: VoiceCall) -> None:
        contact, _ = self._caller(call)
        message = InboundMessage(
            channel=self.kind, provider_message_id=f"{call.call_sid}/transcript",
            delivery_scope="call", received_at=self.ctx.clock(), contact=contact,
            text=call.transcript or "", thread=ThreadHints(ticket_number=call.ticket_number),
            locale=guess_locale(call.transcript, None),
            metadata={"twilio.channel": "voice", "twilio.call_sid": call.call_sid,
                      "twilio.transcription": "late"})
        await self.intake.submit(message)

    async def _sweep_voice_mail(self) -> None:
        """Make the tickets of recordings whose transcription did not come in time."""
        while True:
            self._wake.clear()
            now = time.time()
            due, oldest = await self.state.waiting_calls(now - self.transcription_wait)
            wake_at = None if oldest is None else oldest + self.transcription_wait
            for call_sid in due:
                try:
                    await self._finish_call(call_sid)
                except Exception:  # one bad call must not stop the others; retried soon
                    self.ctx.log.exception("voice mail of call %s could not be submitted", call_sid)
                    wake_at = min(wake_at or now + 30, now + 30)
            timeout = None if wake_at is None else max(0.05, wake_at - time.time())
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout)
