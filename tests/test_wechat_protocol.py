"""WeChat push protocol: published vectors, every corpus payload, hostile XML, round trips."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.errors import ConfigError, Forbidden, RejectedInput, TooLarge
from intake_adapters.wechat.protocol import (
    WeChatCrypto,
    check_signature,
    escape_cdata,
    parse_push,
    parse_push_json,
    parse_push_xml,
    render_text_reply,
    render_xml,
    to_push,
)

CORPUS = Path(__file__).parent / "corpus" / "wechat"
VECTORS = {
    v["name"]: v
    for v in json.loads((CORPUS / "signature_test_vectors.json").read_text())["vectors"]
}
LIMIT = 64 * 1024
KEY = "kWxPEV2UEDyxWpmPdKC3F4dgPDmOvfKX1HGnEUDS1aR"


def corpus(name: str) -> bytes:
    return (CORPUS / name).read_bytes()


# -- published vectors --------------------------------------------------------------------------


def test_plain_signature_vector_passes() -> None:
    v = VECTORS["plain_mode_check_signature_ok"]
    assert check_signature(v["token"], v["timestamp"], v["nonce"], v["expected_signature"])


def test_plain_signature_vector_that_must_fail_fails() -> None:
    v = VECTORS["plain_mode_check_signature_must_fail"]
    assert not check_signature(v["token"], v["timestamp"], v["nonce"], v["received_signature"])


@pytest.mark.parametrize(
    "signature", ["", "f21891de", "ü" * 40, "F21891DE399B4E33A1A93C9A7B8A8FFFB5A443FF"]
)
def test_plain_signature_junk_is_false_not_an_error(signature: str) -> None:
    assert not check_signature("test", "1410685589", "test", signature)


def _crypto(v: dict[str, str]) -> WeChatCrypto:
    return WeChatCrypto(v["token"], v["encoding_aes_key"], v["receive_id"])


def test_safe_mode_echostr_vector_decrypts() -> None:
    v = VECTORS["safe_mode_url_verification_echostr"]
    plain = _crypto(v).decrypt(
        v["expected_msg_signature"], v["timestamp"], v["nonce"], v["echostr"]
    )
    assert plain.decode() == v["expected_decrypted_echostr"]


def test_safe_mode_echostr_vector_with_other_nonce_is_forbidden() -> None:
    v = VECTORS["safe_mode_url_verification_echostr"]
    with pytest.raises(Forbidden):
        _crypto(v).decrypt(
            v["expected_msg_signature"], v["timestamp"], v["must_fail_if_nonce"], v["echostr"]
        )


def test_safe_mode_corpus_push_decrypts_to_the_published_plaintext() -> None:
    v = VECTORS["safe_mode_decrypt_push"]
    envelope = parse_push_xml(corpus("wechatpy_encrypted_safe_mode_push_wecom.xml"), LIMIT)
    assert envelope["ToUserName"] == v["receive_id"]
    crypto = _crypto(v)
    assert (
        crypto.signature(v["timestamp"], v["nonce"], envelope["Encrypt"])
        == v["expected_msg_signature"]
    )
    plain = crypto.decrypt(
        v["expected_msg_signature"], v["timestamp"], v["nonce"], envelope["Encrypt"]
    )
    assert plain.decode() == v["expected_plaintext_xml"]
    push = to_push(parse_push_xml(plain, LIMIT))
    assert (push.from_user, push.msg_type, push.content, push.msg_id) == (
        "messense",
        "text",
        "test",
        "4363689963896700987",
    )
    assert push.extra == {"AgentID": "1"}


# -- safe mode failures -------------------------------------------------------------------------


def _envelope() -> tuple[WeChatCrypto, dict[str, str], str]:
    v = VECTORS["safe_mode_decrypt_push"]
    encrypt = parse_push_xml(corpus("wechatpy_encrypted_safe_mode_push_wecom.xml"), LIMIT)[
        "Encrypt"
    ]
    return _crypto(v), v, encrypt


def test_other_app_id_is_forbidden() -> None:
    _, v, encrypt = _envelope()
    other = WeChatCrypto(v["token"], v["encoding_aes_key"], "wx0000000000000000")
    with pytest.raises(Forbidden, match="AppID"):
        other.decrypt(v["expected_msg_signature"], v["timestamp"], v["nonce"], encrypt)


def test_tampered_ciphertext_is_forbidden_by_the_signature() -> None:
    crypto, v, encrypt = _envelope()
    tampered = ("A" if encrypt[0] != "A" else "B") + encrypt[1:]
    with pytest.raises(Forbidden, match="msg_signature"):
        crypto.decrypt(v["expected_msg_signature"], v["timestamp"], v["nonce"], tampered)


@pytest.mark.parametrize(
    "encrypt",
    [
        "not base64 at all!",
        base64.b64encode(b"short").decode(),
        base64.b64encode(b"x" * 32).decode(),
    ],
)
def test_correctly_signed_garbage_is_forbidden(encrypt: str) -> None:
    # Someone holding the token signs a ciphertext that is not WeChat's layout.
    crypto, v, _ = _envelope()
    signature = crypto.signature(v["timestamp"], v["nonce"], encrypt)
    with pytest.raises(Forbidden):
        crypto.decrypt(signature, v["timestamp"], v["nonce"], encrypt)


@pytest.mark.parametrize("key", ["", "short", KEY[:-1] + "!", KEY + "A"])
def test_bad_encoding_aes_key_is_a_config_error(key: str) -> None:
    with pytest.raises(ConfigError):
        WeChatCrypto("token", key, "wx1")


@settings(max_examples=60, deadline=None)
@given(
    plain=st.binary(max_size=600),
    nonce=st.text(st.characters(codec="ascii", categories=("L", "N")), min_size=1, max_size=12),
    timestamp=st.integers(min_value=0, max_value=2**32).map(str),
    app_id=st.text(st.characters(codec="ascii", categories=("L", "N")), min_size=1, max_size=20),
)
def test_encrypt_then_decrypt_round_trips(
    plain: bytes, nonce: str, timestamp: str, app_id: str
) -> None:
    crypto = WeChatCrypto("token", KEY, app_id)
    encrypt, signature = crypto.encrypt(plain, nonce, timestamp)
    assert len(base64.b64decode(encrypt)) % 32 == 0
    assert crypto.decrypt(signature, timestamp, nonce, encrypt) == plain


def test_encrypted_reply_decrypts_with_the_same_account() -> None:
    crypto = WeChatCrypto("token", KEY, "wx49f0ab532d5d035a")
    reply = render_text_reply("oUser", "gh_account", "工单 T-1", 1700000000)
    wrapped = parse_push_xml(crypto.render_encrypted_reply(reply, "123", "1700000000"), LIMIT)
    assert set(wrapped) == {"Encrypt", "MsgSignature", "TimeStamp", "Nonce"}
    inner = crypto.decrypt(
        wrapped["MsgSignature"], wrapped["TimeStamp"], wrapped["Nonce"], wrapped["Encrypt"]
    )
    assert inner == reply


# -- every corpus payload -----------------------------------------------------------------------

PAYLOADS = sorted(p.name for p in CORPUS.iterdir() if p.name != "signature_test_vectors.json")


@pytest.mark.parametrize("name", PAYLOADS)
def test_every_corpus_payload_parses(name: str) -> None:
    fields = parse_push(corpus(name), LIMIT)
    assert fields["ToUserName"]
    if "Encrypt" not in fields:
        push = to_push(fields)
        assert push.from_user and push.create_time > 0 and push.msg_type


def test_bom_text_message_keeps_unknown_elements_in_extra() -> None:
    push = to_push(parse_push_xml(corpus("skit_text_message_utf8_bom_businessid.xml"), LIMIT))
    assert (push.msg_type, push.content, push.msg_id) == (
        "text",
        "this is a test",
        "1234567890123456",
    )
    assert push.extra == {"BusinessId": "1"}


def test_json_push_format_matches_the_xml_one() -> None:
    from_json = parse_push_json(corpus("skit_text_message_json_push_format.json"), LIMIT)
    assert from_json["MsgId"] == "1234567890123456"  # a JSON number, kept exact
    assert to_push(from_json).content == "this is a test"


def test_tab_indented_location_with_chinese_label() -> None:
    push = to_push(
        parse_push_xml(corpus("skit_location_message_tab_indent_chinese_label.xml"), LIMIT)
    )
    assert (push.location_x, push.location_y, push.scale, push.label) == (
        23.134521,
        113.358803,
        20,
        "位置信息",
    )


def test_whitespace_around_cdata_is_layout_not_content() -> None:
    name = "wechat_community_voice_empty_recognition_whitespace_around_cdata.xml"
    push = to_push(parse_push_xml(corpus(name), LIMIT))
    assert push.to_user == "gh_3e7f4bc6f4da"
    assert push.format == "amr"
    assert push.recognition == ""
    assert push.msg_id == "7250021412600020992"


def test_voice_recognition_is_read() -> None:
    push = to_push(parse_push_xml(corpus("wechat_docs_voice_with_recognition.xml"), LIMIT))
    assert push.recognition == "腾讯微信团队"


def test_nested_elements_are_flattened() -> None:
    fields = parse_push_xml(corpus("skit_event_scancode_push_nested_scancodeinfo.xml"), LIMIT)
    assert fields["ScanCodeInfo.ScanType"] == fields["ScanType"] == "qrcode"
    assert fields["ScanCodeInfo.ScanResult"] == "1"
    assert to_push(fields).event == "scancode_push"


def test_repeated_nested_elements_are_indexed() -> None:
    body = (
        b"<xml><ToUserName>a</ToUserName><SendPicsInfo><Count>2</Count><PicList>"
        b"<item><PicMd5Sum>x</PicMd5Sum></item><item><PicMd5Sum>y</PicMd5Sum></item>"
        b"</PicList></SendPicsInfo></xml>"
    )
    fields = parse_push_xml(body, LIMIT)
    assert fields["SendPicsInfo.PicList.item[0].PicMd5Sum"] == "x"
    assert fields["SendPicsInfo.PicList.item[1].PicMd5Sum"] == "y"
    assert "PicMd5Sum" not in fields  # ambiguous, so no short alias


def test_subscribe_event_has_no_msg_id() -> None:
    push = to_push(parse_push_xml(corpus("skit_event_subscribe.xml"), LIMIT))
    assert (push.msg_type, push.event, push.msg_id) == ("event", "subscribe", None)


# -- hostile and malformed input ----------------------------------------------------------------

XXE = b"""<?xml version="1.0"?>
<!DOCTYPE xml [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>
<xml><ToUserName>a</ToUserName><Content>&xxe;</Content></xml>"""

BILLION_LAUGHS = b"""<?xml version="1.0"?>
<!DOCTYPE lolz [
 <!ENTITY lol "lol">
 <!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
 <!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">
 <!ENTITY lol4 "&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;">
]>
<xml><Content>&lol4;</Content></xml>"""

EXTERNAL_DTD = b'<!DOCTYPE xml SYSTEM "http://127.0.0.1:9/evil.dtd"><xml><Content>x</Content></xml>'
PARAMETER_ENTITY = (
    b'<!DOCTYPE xml [<!ENTITY % p SYSTEM "http://127.0.0.1:9/p.dtd"> %p;]><xml></xml>'
)


@pytest.mark.parametrize(
    "body",
    [XXE, BILLION_LAUGHS, EXTERNAL_DTD, PARAMETER_ENTITY, b"\xef\xbb\xbf" + XXE],
    ids=["xxe", "billion-laughs", "external-dtd", "parameter-entity", "bom-then-xxe"],
)
def test_dtd_and_entities_are_refused(body: bytes) -> None:
    with pytest.raises(RejectedInput, match="DTD"):
        parse_push_xml(body, LIMIT)


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"<xml><Content>&undeclared;</Content></xml>", "malformed"),
        (b"<xml><Content>unclosed</xml>", "malformed"),
        (b"", "malformed"),
        (b"<html><body/></html>", "<xml>"),
        (b"<xml><Content>a</Content><Content>b</Content></xml>", "repeats"),
        (b"<xml>" + b"<a>" * 20 + b"</a>" * 20 + b"</xml>", "deeply"),
        (b'<?xml version="1.0" encoding="GBK"?><xml/>', "malformed"),
    ],
)
def test_malformed_xml_is_rejected_with_a_reason(body: bytes, reason: str) -> None:
    with pytest.raises(RejectedInput, match=reason):
        parse_push_xml(body, LIMIT)


def test_oversized_body_is_too_large_before_parsing() -> None:
    with pytest.raises(TooLarge):
        parse_push(b"<xml>" + b" " * 100 + b"</xml>", 50)


@pytest.mark.parametrize("body", [b"[1, 2]", b"{not json", b'"text"'])
def test_json_of_the_wrong_shape_is_rejected(body: bytes) -> None:
    with pytest.raises(RejectedInput):
        parse_push_json(body, LIMIT)


def test_neither_xml_nor_json_is_rejected() -> None:
    with pytest.raises(RejectedInput, match="neither"):
        parse_push(b"hello", LIMIT)


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"FromUserName": "u", "CreateTime": "1", "MsgType": "text"}, "ToUserName"),
        (
            {"ToUserName": "a", "FromUserName": "u", "CreateTime": "soon", "MsgType": "text"},
            "CreateTime",
        ),
        (
            {
                "ToUserName": "a",
                "FromUserName": "u",
                "CreateTime": "1",
                "MsgType": "location",
                "Location_X": "north",
            },
            "Location_X",
        ),
    ],
)
def test_to_push_names_the_bad_field(fields: dict[str, str], field: str) -> None:
    with pytest.raises(RejectedInput) as info:
        to_push(fields)
    assert info.value.field == field


def test_empty_optional_number_is_absent() -> None:
    push = to_push(
        {
            "ToUserName": "a",
            "FromUserName": "u",
            "CreateTime": "1",
            "MsgType": "event",
            "Event": "LOCATION",
            "Latitude": "23.1",
            "Longitude": "113.3",
            "Precision": "",
        }
    )
    assert (push.latitude, push.longitude, push.precision) == (23.1, 113.3, None)


# -- rendering ----------------------------------------------------------------------------------


def test_text_reply_shape() -> None:
    reply = render_text_reply("oUser", "gh_account", "Ticket T-1", 1700000000)
    assert reply == (
        b"<xml><ToUserName><![CDATA[oUser]]></ToUserName>"
        b"<FromUserName><![CDATA[gh_account]]></FromUserName>"
        b"<CreateTime>1700000000</CreateTime><MsgType><![CDATA[text]]></MsgType>"
        b"<Content><![CDATA[Ticket T-1]]></Content></xml>"
    )


@pytest.mark.parametrize(
    "content",
    ["]]>", "a]]>b", "]]]]>", "<![CDATA[x]]>", "</Content><MsgType>news</MsgType>", "&amp; <b>"],
)
def test_reply_content_cannot_break_out_of_cdata(content: str) -> None:
    fields = parse_push_xml(render_text_reply("o", "gh", content, 1), LIMIT)
    assert fields["Content"] == content
    assert fields["MsgType"] == "text"


XML_TEXT = st.text(
    st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00\ufffe\uffff"),
    max_size=200,
)


@settings(max_examples=200, deadline=None)
@given(content=XML_TEXT)
def test_any_reply_content_round_trips(content: str) -> None:
    expected = "".join(
        c
        for c in content.replace("\r\n", "\n").replace("\r", "\n")
        if c in "\t\n" or not (ord(c) < 0x20)
    )
    fields = parse_push_xml(render_text_reply("o", "gh", content, 1), 1 << 20)
    assert fields["Content"] == expected


def test_escape_cdata_drops_characters_xml_cannot_carry() -> None:
    assert escape_cdata("a\x00b\x1fc\ud800d") == "<![CDATA[abcd]]>"


def test_render_xml_refuses_bad_element_names() -> None:
    with pytest.raises(ValueError):
        render_xml({"a b": "x"})


@pytest.mark.parametrize("depth", [20, 100_000])
def test_deeply_nested_json_is_rejected(depth: int) -> None:
    body = b'{"a":' + b"[" * depth + b"]" * depth + b"}"
    with pytest.raises(RejectedInput, match="deeply"):
        parse_push_json(body, len(body))
