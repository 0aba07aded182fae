"""Twilio: SMS, MMS, WhatsApp and voice mail (``adapters.twilio:TwilioAdapter``).

- ``protocol``: signatures, TwiML, GSM-7 segments, keywords; no I/O (the fake uses it too).
- ``adapter``: the adapter, its config, routes and webhook verification.
- ``messaging``: inbound SMS, MMS and WhatsApp, and their media.
- ``voice``: voice mail, its callbacks and the sweeper.
- ``outbound``: acknowledgements sent later through the REST API, delivery reports.
- ``state``: opt-outs, delivery reports and calls in progress, kept in ``ctx.state``.
"""

from intake_adapters.twilio.adapter import TwilioAdapter, TwilioConfig, form_pairs
from intake_adapters.twilio.common import can_receive_sms, guess_locale
from intake_adapters.twilio.outbound import one_segment, sms_ack_text
from intake_adapters.twilio.state import TwilioState, VoiceCall

__all__ = ["TwilioAdapter", "TwilioConfig", "TwilioState", "VoiceCall", "can_receive_sms",
           "form_pairs", "guess_locale", "one_segment", "sms_ack_text"]
