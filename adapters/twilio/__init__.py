"""Twilio: SMS, MMS, WhatsApp and voice mail (``adapters.twilio:TwilioAdapter``).

- ``protocol``: signatures, TwiML, GSM-7 segments, keywords; no I/O (the fake uses it too).
- ``adapter``: the adapter.
"""

from adapters.twilio.adapter import (
    TwilioAdapter,
    TwilioConfig,
    TwilioState,
    VoiceCall,
    can_receive_sms,
    form_pairs,
    guess_locale,
    one_segment,
    sms_ack_text,
)

__all__ = ["TwilioAdapter", "TwilioConfig", "TwilioState", "VoiceCall", "can_receive_sms",
           "form_pairs", "guess_locale", "one_segment", "sms_ack_text"]
