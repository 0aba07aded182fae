"""Twilio protocol helpers: published signature vectors, corpus webhooks, segments, TwiML."""

from __future__ import annotations

import hashlib
import json
import xml.etree.ElementTree as ET
from pathlib import Path
from urllib.parse import parse_qsl

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from multidict import MultiDict

from gateway.testing.fakes.twilio import signed_webhook
from intake_adapters.twilio.protocol import (
    GSM7_BASIC,
    GSM7_EXTENSION,
    classify_keyword,
    fit_one_segment,
    public_url,
    render_twiml_empty,
    render_twiml_message,
    render_voice_record_twiml,
    sms_segments,
    verify_twilio_signature,
)

CORPUS = Path(__file__).parent / "corpus" / "twilio"
VECTORS = json.loads((CORPUS / "signature_test_vectors.json").read_text())["vectors"]
BASIC_PARAMS = next(v for v in VECTORS if v["name"] == "twilio_python_basic")["params"]
TOKEN = "12345"


# -- published signature vectors ----------------------------------------------------------------


def _vector_request(v: dict) -> tuple[str, object, str]:
    url = v.get("url") or v["url_as_received"]
    signature = v.get("expected_signature") or v["expected_valid_signature"]
    if "body" in v:
        return url, v["body"], signature
    if "form_body" in v:
        return url, parse_qsl(v["form_body"]), signature
    params = BASIC_PARAMS if v["params"] == "same as twilio_python_basic" else v["params"]
    return url, params, signature


@pytest.mark.parametrize("vector", VECTORS, ids=[v["name"] for v in VECTORS])
def test_published_vector_verifies(vector: dict) -> None:
    url, params, signature = _vector_request(vector)
    assert verify_twilio_signature(vector["auth_token"], url, params, signature)  # type: ignore[arg-type]


@pytest.mark.parametrize("vector", VECTORS, ids=[v["name"] for v in VECTORS])
def test_published_vector_fails_with_another_token(vector: dict) -> None:
    url, params, signature = _vector_request(vector)
    assert not verify_twilio_signature("54321", url, params, signature)  # type: ignore[arg-type]


def test_docs_vector_string_to_sign_is_what_the_library_signs() -> None:
    v = VECTORS[0]
    digest = signed_webhook(v["url"], v["params"], v["auth_token"])["X-Twilio-Signature"]
    assert digest == v["expected_signature"]


def test_repeated_keys_in_every_params_shape() -> None:
    v = next(v for v in VECTORS if v["name"] == "twilio_python_repeated_keys")
    pairs = parse_qsl(v["form_body"])
    shapes = [
        pairs,
        MultiDict(pairs),
        {"Sid": "CA123", "SidAccount": "AC123", "Digits": ["5678", "1234", "1234"]},
    ]
    for params in shapes:
        assert verify_twilio_signature(TOKEN, v["url"], params, v["expected_signature"])


def test_json_body_must_match_its_hash() -> None:
    v = next(v for v in VECTORS if v["name"] == "twilio_python_json_body_bodySHA256")
    assert hashlib.sha256(v["body"].encode()).hexdigest() == v["body_sha256_hex"]
    assert verify_twilio_signature(TOKEN, v["url"], v["body"].encode(), v["expected_signature"])
    tampered = v["body"].replace("value", "other")
    assert not verify_twilio_signature(TOKEN, v["url"], tampered, v["expected_signature"])


def test_raw_body_without_body_hash_in_the_url_fails_closed() -> None:
    url = "https://mycompany.com/myapp.php"
    signature = signed_webhook(url, {}, TOKEN)["X-Twilio-Signature"]
    assert not verify_twilio_signature(TOKEN, url, '{"a": 1}', signature)


@pytest.mark.parametrize("signature", [None, "", "not-base64", "RSOYDt4T1cUTdK1PDd93/VVr8B8"])
def test_missing_or_junk_signature_fails(signature: str | None) -> None:
    url = "https://mycompany.com/myapp.php?foo=1&bar=2"
    assert not verify_twilio_signature(TOKEN, url, BASIC_PARAMS, signature)


def test_unknown_signature_algorithm_fails_closed() -> None:
    url = "https://mycompany.com/myapp.php?foo=1&bar=2"
    signature = "RSOYDt4T1cUTdK1PDd93/VVr8B8="
    assert verify_twilio_signature(TOKEN, url, BASIC_PARAMS, signature)
    settings_header = "key=webhooks_sharedkey_x,algorithm=HMAC_MD5"
    assert not verify_twilio_signature(
        TOKEN, url, BASIC_PARAMS, signature, signature_settings=settings_header
    )


# -- corpus webhooks ----------------------------------------------------------------------------

FORMS = sorted(p.name for p in CORPUS.glob("*.form"))


@pytest.mark.parametrize("name", FORMS)
def test_corpus_webhook_signed_like_twilio_verifies_and_detects_tampering(name: str) -> None:
    params = parse_qsl((CORPUS / name).read_text(), keep_blank_values=True)
    url = "https://support.example.com/twilio/sms?account=main"
    signature = signed_webhook(url, params, "secret")["X-Twilio-Signature"]
    assert verify_twilio_signature("secret", url, params, signature)
    assert verify_twilio_signature("secret", url, MultiDict(params), signature)
    tampered = [(k, v + "x") if k == "From" else (k, v) for k, v in params]
    assert not verify_twilio_signature("secret", url, tampered, signature)
    assert not verify_twilio_signature("secret", url + "&x=1", params, signature)


SMS_FORMS = [name for name in FORMS if "NumSegments=" in (CORPUS / name).read_text()]


@pytest.mark.parametrize("name", SMS_FORMS)
def test_corpus_body_segment_count_matches_twilio(name: str) -> None:
    params = dict(parse_qsl((CORPUS / name).read_text(), keep_blank_values=True))
    assert sms_segments(params["Body"]) == ("GSM-7", int(params["NumSegments"]))
    assert classify_keyword(params["Body"]) is None


def test_reserialised_json_payload_cannot_pass_for_the_original() -> None:
    # A proxy that re-serialised the webhook (values still percent-encoded) changed what Twilio
    # signed: verification must happen on the raw request, never on such a copy.
    copy = json.loads(
        (CORPUS / "botbuilder_sms_inbound_as_json_percent_encoded_values.json").read_text()
    )
    as_sent = {k: str(v).replace("%2B", "+") for k, v in copy.items()}
    url = "https://support.example.com/twilio/sms"
    signature = signed_webhook(url, as_sent, "secret")["X-Twilio-Signature"]
    assert verify_twilio_signature("secret", url, as_sent, signature)
    assert not verify_twilio_signature(
        "secret", url, {k: str(v) for k, v in copy.items()}, signature
    )


# -- the URL Twilio signed ----------------------------------------------------------------------


def test_configured_base_wins_over_headers() -> None:
    url = public_url(
        "http://10.0.0.5:8080/twilio/sms?a=1",
        {"Host": "10.0.0.5:8080", "X-Forwarded-Host": "other.example.com"},
        "https://support.example.com",
    )
    assert url == "https://support.example.com/twilio/sms?a=1"


def test_configured_base_with_a_path_prefix() -> None:
    url = public_url("/twilio/voice", {}, "https://example.com/intake/")
    assert url == "https://example.com/intake/twilio/voice"


def test_forwarded_headers_left_most_entry() -> None:
    headers = {
        "Host": "127.0.0.1:8080",
        "X-Forwarded-Proto": "https, http",
        "X-Forwarded-Host": "support.example.com, lb.internal",
    }
    assert (
        public_url("/twilio/sms?x=%2B1", headers) == "https://support.example.com/twilio/sms?x=%2B1"
    )


def test_host_header_then_request_url() -> None:
    assert (
        public_url("/p?q=1", {"Host": "gw.example.com:8443"}) == "http://gw.example.com:8443/p?q=1"
    )
    assert public_url("https://gw.example.com/p", {}) == "https://gw.example.com/p"


def test_public_url_and_signature_together_behind_a_proxy() -> None:
    twilio_url = "https://support.example.com/twilio/sms?tenant=a%20b"
    signature = signed_webhook(twilio_url, BASIC_PARAMS, TOKEN)["X-Twilio-Signature"]
    seen = public_url(
        "/twilio/sms?tenant=a%20b",
        {
            "Host": "127.0.0.1:8080",
            "X-Forwarded-Proto": "https",
            "X-Forwarded-Host": "support.example.com",
        },
    )
    assert verify_twilio_signature(TOKEN, seen, BASIC_PARAMS, signature)
    direct = public_url("/twilio/sms?tenant=a%20b", {"Host": "127.0.0.1:8080"})
    assert not verify_twilio_signature(TOKEN, direct, BASIC_PARAMS, signature)


# -- SMS segments -------------------------------------------------------------------------------

# 3GPP TS 23.038 default alphabet in code order (0x1B is the escape to the extension table).
GSM_TABLE = (
    "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞ\x1bÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?"
    "¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà"
)
GSM_EXTENSION_TABLE = {
    0x0A: "\f",
    0x14: "^",
    0x28: "{",
    0x29: "}",
    0x2F: "\\",
    0x3C: "[",
    0x3D: "~",
    0x3E: "]",
    0x40: "|",
    0x65: "€",
}


def test_gsm_tables_are_the_standard_ones() -> None:
    assert len(GSM_TABLE) == 128
    assert set(GSM_TABLE) - {"\x1b"} == GSM7_BASIC
    assert set(GSM_EXTENSION_TABLE.values()) == GSM7_EXTENSION


def _encode(text: str) -> tuple[str, list[int]]:
    """The real encoded stream: septets (with 0x1B escapes) or UTF-16 code units."""
    basic = GSM_TABLE.replace("\x1b", "")
    reverse = {c: k for k, c in GSM_EXTENSION_TABLE.items()}
    if all(c in basic or c in reverse for c in text):
        septets: list[int] = []
        for c in text:
            septets += [0x1B, reverse[c]] if c in reverse else [GSM_TABLE.index(c)]
        return "GSM-7", septets
    raw = text.encode("utf-16-be")
    return "UCS-2", [int.from_bytes(raw[i : i + 2], "big") for i in range(0, len(raw), 2)]


def reference_segments(text: str) -> tuple[str, int]:
    """Encode for real, then cut the stream into PDUs; no PDU may end inside a pair."""
    encoding, stream = _encode(text)
    single, part = (160, 153) if encoding == "GSM-7" else (70, 67)
    if len(stream) <= single:
        return encoding, 1

    def ends_inside_a_pair(chunk: list[int]) -> bool:
        return chunk[-1] == 0x1B if encoding == "GSM-7" else 0xD800 <= chunk[-1] <= 0xDBFF

    count = 0
    while stream:
        size = min(part, len(stream))
        while ends_inside_a_pair(stream[:size]):
            size -= 1
        stream = stream[size:]
        count += 1
    return encoding, count


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", ("GSM-7", 1)),
        ("a" * 160, ("GSM-7", 1)),
        ("a" * 161, ("GSM-7", 2)),
        ("a" * 306, ("GSM-7", 2)),
        ("a" * 307, ("GSM-7", 3)),
        ("€" * 80, ("GSM-7", 1)),
        ("€" * 81, ("GSM-7", 2)),
        ("a" * 152 + "€" + "a" * 10, ("GSM-7", 2)),  # 165 septets
        ("a" * 152 + "€" + "a" * 152, ("GSM-7", 3)),  # the escape pair moves to segment 2
        ("Ticket T-1 received. We reply within 24 hours.", ("GSM-7", 1)),
        ("中" * 70, ("UCS-2", 1)),
        ("中" * 71, ("UCS-2", 2)),
        ("中" * 134, ("UCS-2", 2)),
        ("中" * 135, ("UCS-2", 3)),
        ("😀" * 35, ("UCS-2", 1)),
        ("😀" * 36, ("UCS-2", 2)),
        ("a" * 66 + "😀" + "a" * 10, ("UCS-2", 2)),  # the pair is not split
        ("a" * 159 + "ç", ("UCS-2", 3)),  # lower-case ç is not GSM-7 (only Ç is)
        ("您好\uff0c您的工单编号是 T-20240101-0001\uff0c我们将在 24 小时内答复。", ("UCS-2", 1)),
    ],
)
def test_known_segment_counts(text: str, expected: tuple[str, int]) -> None:
    assert sms_segments(text) == expected
    assert reference_segments(text) == expected


GSM_CHARS = st.sampled_from(sorted(GSM7_BASIC | GSM7_EXTENSION))
ANY_CHARS = st.characters(blacklist_categories=("Cs",))


@settings(max_examples=300, deadline=None)
@given(st.text(GSM_CHARS, max_size=700))
def test_gsm_segments_match_the_reference(text: str) -> None:
    assert sms_segments(text) == reference_segments(text)


@settings(max_examples=300, deadline=None)
@given(st.text(st.one_of(GSM_CHARS, ANY_CHARS, st.sampled_from("中文😀€")), max_size=400))
def test_any_text_segments_match_the_reference(text: str) -> None:
    assert sms_segments(text) == reference_segments(text)


def test_fit_one_segment() -> None:
    assert fit_one_segment("short") == "short"
    gsm = fit_one_segment("x" * 200)
    assert gsm.endswith("...") and sms_segments(gsm) == ("GSM-7", 1) and len(gsm) == 160
    euro = fit_one_segment("€" * 100)
    assert sms_segments(euro) == ("GSM-7", 1) and euro == "€" * 78 + "..."
    chinese = fit_one_segment("工单" * 50)
    assert sms_segments(chinese) == ("UCS-2", 1) and len(chinese) == 70
    emoji = fit_one_segment("😀" * 50)
    assert sms_segments(emoji) == ("UCS-2", 1) and emoji == "😀" * 33 + "..."


@settings(max_examples=200, deadline=None)
@given(st.text(st.one_of(GSM_CHARS, ANY_CHARS), max_size=400))
def test_fit_one_segment_always_fits_and_keeps_a_prefix(text: str) -> None:
    fitted = fit_one_segment(text)
    assert sms_segments(fitted)[1] == 1
    assert fitted == text or text.startswith(fitted.removesuffix("...").rstrip())


# -- keywords -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "kind"),
    [
        ("STOP", "opt_out"),
        ("stop", "opt_out"),
        ("  Stop.\n", "opt_out"),
        ("\uff33\uff34\uff2f\uff30", "opt_out"),  # full-width STOP
        ("StopAll", "opt_out"),
        ("unsubscribe", "opt_out"),
        ("Cancel", "opt_out"),
        ("end", "opt_out"),
        ("QUIT!", "opt_out"),
        ("START", "opt_in"),
        ("unstop", "opt_in"),
        ("Yes", "opt_in"),
        ("help", "help"),
        ("INFO?", "help"),
        ("STOP PLEASE", None),
        ("please stop", None),
        ("stopped", None),
        ("the end", None),
        ("", None),
        (None, None),
        ("停止", None),
    ],
)
def test_classify_keyword(body: str | None, kind: str | None) -> None:
    assert classify_keyword(body) == kind


# -- TwiML --------------------------------------------------------------------------------------


def test_twiml_message_escapes_text() -> None:
    xml = render_twiml_message("Ticket <T-1> & more ]]> 工单\x00")
    root = ET.fromstring(xml)
    assert root.tag == "Response"
    assert [(c.tag, c.text) for c in root] == [("Message", "Ticket <T-1> & more ]]> 工单")]
    assert xml.startswith(b'<?xml version="1.0" encoding="UTF-8"?>')


def test_twiml_empty() -> None:
    root = ET.fromstring(render_twiml_empty())
    assert root.tag == "Response" and len(root) == 0


def test_voice_record_twiml() -> None:
    xml = render_voice_record_twiml(
        "请在提示音后留言",
        "https://gw.example.com/twilio/voice/recorded?a=1&b=2",
        "https://gw.example.com/twilio/voice/transcribed",
        120,
        language="zh-CN",
        goodbye="再见",
    )
    root = ET.fromstring(xml)
    assert [c.tag for c in root] == ["Say", "Record", "Say", "Hangup"]
    say, record = root[0], root[1]
    assert (say.text, say.get("language")) == ("请在提示音后留言", "zh-CN")
    assert record.attrib == {
        "action": "https://gw.example.com/twilio/voice/recorded?a=1&b=2",
        "method": "POST",
        "maxLength": "120",
        "playBeep": "true",
        "transcribe": "true",
        "transcribeCallback": "https://gw.example.com/twilio/voice/transcribed",
    }


def test_plain_dict_headers_are_case_insensitive_and_raw_paths_stay_paths() -> None:
    headers = {"host": "gw.example.com", "x-forwarded-proto": "https"}
    assert public_url("//twilio/sms?a=1", headers) == "https://gw.example.com//twilio/sms?a=1"
