"""adapters.mail.parse and adapters.mail.charsets: every corpus mail, generated mails, properties.

The corpus is real third-party mail (tests/corpus/SOURCES.md). The AGPL ``kopano_*`` mails are
not copied into the project: they are read from ``../shared/corpus/email/`` when it exists.
"""

# Full-width CJK punctuation and typographic dashes in the test data are the point.

from __future__ import annotations

import base64
import unicodedata
from datetime import UTC, datetime
from email.header import Header
from email.message import EmailMessage
from email.mime.base import MIMEBase
from email.mime.message import MIMEMessage
from email.mime.multipart import MIMEMultipart
from email.mime.text import MIMEText
from email.utils import formataddr
from pathlib import Path

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.errors import RejectedInput
from intake_adapters.mail.charsets import codec_chain, decode_bytes, decode_encoded_words
from intake_adapters.mail.loop_policy import classify
from intake_adapters.mail.parse import (
    MailLimits,
    ParsedEmail,
    html_to_text,
    parse_email,
    safe_filename,
    sanitize_html,
    to_inbound,
)
from intake_schemas.message import InboundMessage

CORPUS = Path(__file__).parent / "corpus" / "email"
SHARED_CORPUS = Path(__file__).resolve().parents[2] / "shared" / "corpus" / "email"
CORPUS_FILES = sorted(CORPUS.glob("*.eml"))
AGPL_FILES = sorted(SHARED_CORPUS.glob("kopano_*.eml")) if SHARED_CORPUS.is_dir() else []
RECEIVED = datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC)


def parse(name: str) -> ParsedEmail:
    return parse_email((CORPUS / name).read_bytes())


def parse_agpl(name: str) -> ParsedEmail:
    return parse_email((SHARED_CORPUS / name).read_bytes())


def assert_accepted_or_refused(parsed: ParsedEmail) -> None:
    """The corpus promise: a usable message, or a refusal with a reason; never half of each."""
    assert isinstance(parsed, ParsedEmail)
    if parsed.refusal is not None:
        assert parsed.refusal.strip()
        with pytest.raises(RejectedInput):
            to_inbound(parsed, channel="smtp", mailbox="m", received_at=RECEIVED, attachments=[])
        return
    assert parsed.from_address or parsed.text.strip() or parsed.html or parsed.attachments
    message = to_inbound(
        parsed, channel="smtp", mailbox="support@example.com", received_at=RECEIVED, attachments=[]
    )
    # Round trip through JSON with validation: the schema's constraints hold.
    msgspec.json.decode(msgspec.json.encode(message), type=InboundMessage)
    for attachment in parsed.attachments:
        assert_safe_name(attachment.name)
    if parsed.html is not None:
        assert "<script" not in parsed.html.lower()


def assert_safe_name(name: str) -> None:
    assert name
    assert "/" not in name and "\\" not in name
    assert not name.startswith(".")
    assert not any(unicodedata.category(ch) in ("Cc", "Cf", "Cs") for ch in name)
    assert len(name.encode("utf-8")) <= 200


# ---------------------------------------------------------------- the whole corpus


def test_the_corpus_is_here() -> None:
    assert len(CORPUS_FILES) == 69
    assert not any(path.name.startswith("kopano_") for path in CORPUS_FILES)


@pytest.mark.parametrize("path", CORPUS_FILES, ids=lambda p: p.name)
def test_every_corpus_mail_is_accepted_or_refused(path: Path) -> None:
    parsed = parse_email(path.read_bytes())
    assert_accepted_or_refused(parsed)
    classify(parsed)


@pytest.mark.skipif(not AGPL_FILES, reason="shared AGPL corpus (../shared/corpus/email) absent")
@pytest.mark.parametrize("path", AGPL_FILES, ids=lambda p: p.name)
def test_every_agpl_corpus_mail_is_accepted_or_refused(path: Path) -> None:
    parsed = parse_email(path.read_bytes())
    assert_accepted_or_refused(parsed)


# ---------------------------------------------------------------- corpus: refusals


def test_not_an_email_is_refused_with_a_reason() -> None:
    parsed = parse("enmime_not_an_email.eml")
    assert parsed.refusal == "not an email: no header fields"
    with pytest.raises(RejectedInput, match="not an email"):
        to_inbound(parsed, channel="smtp", mailbox="m", received_at=RECEIVED, attachments=[])


@pytest.mark.parametrize("raw", [b"", b"   \r\n\r\n", b"\xef\xbb\xbf"])
def test_empty_input_is_refused(raw: bytes) -> None:
    assert parse_email(raw).refusal == "empty message"


def test_headers_without_sender_or_body_are_refused() -> None:
    parsed = parse_email(b"Subject: hello\r\nX-Thing: 1\r\n\r\n")
    assert parsed.refusal == "no From address and no body"


# ---------------------------------------------------------------- corpus: charsets


def test_big5_body_labelled_us_ascii_is_read_as_big5() -> None:
    parsed = parse("enmime_big5_body_labelled_us_ascii.eml")
    assert parsed.text.startswith("顏是家訓")
    assert "夫九州之人，言語不同" in parsed.text
    assert "\ufffd" not in parsed.text and "?" not in parsed.text[:200]
    assert parsed.locale == "zh-TW"


def test_utf8_body_labelled_us_ascii_is_read_as_utf8() -> None:
    assert "∮ E⋅da = Q" in parse("enmime_utf8_body_declared_us_ascii.eml").text


def test_gb2312_encoded_words_raw_8bit_gb2312_body_and_utf8_address() -> None:
    parsed = parse("spamscope_gb2312_8bit_headers_and_utf8_address.eml")
    assert parsed.subject == "代开各地增值税发票"
    assert parsed.from_name == "张先生"
    assert parsed.to == ["danglüe@email.com"]
    assert "增值税发票" in parsed.text
    assert parsed.locale == "zh-CN"


def test_gb2312_html_only_mail_gets_text_from_html_and_joined_subject() -> None:
    parsed = parse("spamscope_gb2312_base64_html_only_folded_subject.eml")
    assert parsed.subject.startswith("我把镜头拉近些")
    assert "镜头" in parsed.text and "<" not in parsed.text
    assert parsed.html is not None and "镜头" in parsed.html
    assert parsed.locale == "zh-CN"


def test_double_encoded_big5_subject_is_repaired() -> None:
    # Big5 bytes read as Latin-1 and written out as UTF-8: "¤j®a»¡" is "大家說".
    parsed = parse("mail_big5_8bit_subject_empty_cte.eml")
    assert "大家說英語" in parsed.subject
    assert "繁體中文光碟版" in parsed.subject


def test_ks_c_5601_1987_korean_file_name() -> None:
    parsed = parse("phpmmp_ks_c_5601_1987_truncated_attachment.eml")
    assert [a.name for a in parsed.attachments] == ["사진.JPG", "ATT00001.txt"]
    assert parsed.text.startswith("My traveling companions!")


def test_euc_kr_subject_and_body() -> None:
    parsed = parse("mail_euc_kr_subject_double_at_message_id.eml")
    assert parsed.subject == "NOTE: 한국말로 하는 것"
    assert "하나님을 믿습니다" in parsed.text
    assert parsed.message_id == "d3b8cf8e49f0448085@0c28713a1@f473e@37signals.com"
    assert parsed.locale == "ko"


def test_x_mac_cyrillic_newsletter() -> None:
    parsed = parse("phpmmp_x_mac_cyrillic_newsletter.eml")
    # The sender's tool had already turned UTF-8 Cyrillic into x-mac-cyrillic mojibake.
    assert "Текущий счет" in parsed.text
    assert "© 2019 Science and Education Foundation" in parsed.text
    assert "\ufffd" not in parsed.text


def test_shift_jis_8bit_body() -> None:
    parsed = parse("mail_shift_jis_8bit_docomo.eml")
    assert parsed.text.startswith("あいうえお")
    assert parsed.locale == "ja"


def test_gb2312_label_on_japanese_text_reads_and_guesses_japanese() -> None:
    parsed = parse("phpmmp_ndr_gb2312_qp_japanese_text.eml")
    assert "次の受信者またはグループへの配信に失敗しました" in parsed.text
    assert parsed.locale == "ja"


def test_iso_2022_jp_encoded_words_broken_inside_escape_sequences() -> None:
    parsed = parse("sisimai_dsn_exchange_broken_iso2022jp_encoded_word.eml")
    assert parsed.subject == "Undeliverable: キジトラ・フラッシュ/ニャーン"


def test_windows_1250_words_split_mid_word() -> None:
    parsed = parse("phpmmp_autoreply_windows1250_subject_iso2022jp_parts.eml")
    assert parsed.subject.startswith("Automatyczna odpowiedź: Piotrze, test z 6 miesięcy")


def test_raw_cp1252_subject_without_mime() -> None:
    parsed = parse("mail_raw_cp1252_subject_no_mime.eml")
    assert parsed.subject.startswith("Formação FrenetikPolis")
    assert "Verão" in parsed.subject
    assert parsed.from_name == "Formação Frenetikpolis"


def test_raw_utf8_headers_rfc6532() -> None:
    parsed = parse("mail_rfc6532_raw_utf8_headers.eml")
    assert parsed.from_address == "jdöe@mächine.example"
    assert parsed.from_name == "Jöhn Doe"
    assert parsed.subject == "Säying Hello"


def test_raw_utf8_display_name_with_a_truncated_character() -> None:
    parsed = parse("flanker_raw_utf8_headers_broken_boundary.eml")
    assert parsed.from_name is not None and parsed.from_name.startswith("Юникод запрещен")
    assert parsed.text == "Hello"


def test_bad_encoded_word_charset_none() -> None:
    assert parse("mail_bad_encoded_word_charset_none.eml").subject == "TEST"


def test_utf7_dsn_text() -> None:
    parsed = parse("sisimai_dsn_hotmail_delay_unicode_1_1_utf7.eml")
    assert "Delivery to the following recipients has been delayed." in parsed.text


# ---------------------------------------------------------------- corpus: file names


def test_rfc2231_continuation_japanese_file_name() -> None:
    parsed = parse("mail_rfc2231_continuation_utf8_japanese_filename.eml")
    assert [a.name for a in parsed.attachments] == ["かきくけこ" * 5 + ".txt"]
    assert parsed.attachments[0].data == b"this is the data\r\n"
    assert parsed.subject == "まみむめも" * 10
    assert parsed.locale == "ja"


def test_path_traversal_file_name_is_made_safe() -> None:
    parsed = parse("phpmmp_path_traversal_attachment_name.eml")
    assert [a.name for a in parsed.attachments] == ["1234.txt"]
    assert parsed.refusal is None  # no From, but it does carry an attachment


def test_file_name_with_newline() -> None:
    parsed = parse("phpmmp_toplevel_png_filename_with_newline.eml")
    assert [a.name for a in parsed.attachments] == [
        "Kontoutskrift for 1506.14.90466 Bedriftskonto.pdf"
    ]


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("enmime_raw_utf8_unquoted_filename.eml", ["管理.doc"]),
        ("mail_raw_utf8_attachment_filename_unquoted.eml", ["ciële.txt"]),
        ("phpmmp_duplicate_from_header_rfc2047_filename.eml", ["HasenundFrösche.txt"]),
        ("enmime_param_continuation_without_indent.eml", ["7DDA4_foo_9E5D72.zip"]),
        ("enmime_malformed_base64_attachment.eml", ["some.doc"]),
    ],
)
def test_attachment_names(name: str, expected: list[str]) -> None:
    assert [a.name for a in parse(name).attachments] == expected


def test_cid_images_are_inline_attachments_and_html_keeps_cid_sources() -> None:
    parsed = parse("phpmmp_cid_images_24kb_single_base64_line.eml")
    inline = [a for a in parsed.attachments if a.inline]
    assert {a.name for a in inline} == {"logo.jpg", "background.jpg"}
    assert all(a.content_id for a in inline)
    assert [a.name for a in parsed.attachments if not a.inline] == ["attachment.txt"]
    assert parsed.html is not None
    assert f'src="cid:{inline[0].content_id}"' in parsed.html
    assert len(inline[1].data) == 18255  # the single 24,340-character base64 line


# ---------------------------------------------------------------- corpus: structure


def test_forward_as_message_rfc822_keeps_the_outer_sender() -> None:
    parsed = parse("cpython_msg46_groupwise_forward_as_message_rfc822.eml")
    assert parsed.from_address == "sender@example.net"
    assert parsed.from_name == "Sender"
    assert "---------- Forwarded message ----------" in parsed.text
    assert "Testing email forwarding with Groupwise 1.2.2010" in parsed.text
    assert parsed.enclosed_message_ids == ["4B66B890.4070408@teconcept.de"]


def test_forwarded_attachment_with_whitespace_preamble() -> None:
    parsed = parse("flanker_forwarded_rfc822_bad_encoding.eml")
    assert parsed.from_address == "bob@example.net"
    assert parsed.text.startswith("Hello")
    assert "From: Kirk Douglas <dan@example.com>" in parsed.text


def test_first_header_indented() -> None:
    parsed = parse("enmime_header_starts_with_space.eml")
    assert parsed.from_address == "james@makita.skynet"
    assert parsed.text == "A text section"


def test_declared_boundary_missing_uses_the_one_in_the_body() -> None:
    parsed = parse("spamscope_boundary_mismatch_html_only.eml")
    assert parsed.html is not None and "<table" in parsed.html
    assert "Ver on-line" in parsed.text
    assert 'src="http' not in parsed.html


@pytest.mark.parametrize(
    ("name", "text"),
    [
        ("cpython_msg41_multipart_without_boundary.eml", "Blah blah blah"),
        ("cpython_msg32_rfc2231_charset_star_param.eml", "Some message."),
        ("mail_two_content_type_headers.eml", "foo"),
        ("flanker_missing_final_boundary.eml", "Some body"),
        ("flanker_boundary_ending_with_dashes.eml", "Hi"),
        # Outer boundary "ab", inner "a": the text part's body really is "--a".
        ("dovecot_nested_boundary_is_prefix_of_outer.eml", "--a"),
    ],
)
def test_malformed_multiparts_still_give_their_text(name: str, text: str) -> None:
    assert parse(name).text == text


def test_parts_after_a_reused_boundary_are_found() -> None:
    parsed = parse("cpython_msg15_same_boundary_outer_and_inner.eml")
    assert parsed.text.strip() == "Some removed test."
    assert [(a.name, a.content_type) for a in parsed.attachments] == [("xx.gif", "image/gif")]


def test_flowed_text_and_qp_soft_break() -> None:
    parsed = parse("talon_reply_iphone_qp_soft_break_in_attribution.eml")
    assert "On Apr 3, 2012, at 4:19 PM, bob <bob@example.com> wrote:" in parsed.text


# ---------------------------------------------------------------- corpus: addresses and dates


def test_space_separated_addresses() -> None:
    parsed = parse("mail_space_separated_address_list.eml")
    assert parsed.from_address == "tim@powerupdev.com"
    assert parsed.to == ["tim@powerupdev.com", "concierge@powerupdev.com"]


def test_unquoted_at_sign_in_display_name() -> None:
    parsed = parse("mail_unquoted_at_sign_in_display_name.eml")
    assert parsed.from_address == "test@lindsaar.net"
    assert parsed.to == ["smith@gmail.com", "raasdnil@gmail.com", "tom@gmail.com"]


def test_leading_comma_in_to_and_empty_subject() -> None:
    parsed = parse("mail_to_header_leading_comma_empty_subject.eml")
    assert parsed.to == ["user-example@aol.com", "e-s-a-s-2200@app.ar.com"]
    assert parsed.subject == ""


def test_address_as_display_name_keeps_the_real_mailbox_and_notes_it() -> None:
    parsed = parse("spamscope_email_address_as_display_name.eml")
    assert parsed.from_address == "bob@example.com"
    assert parsed.from_name == "alice@example.com"
    assert "display name shows a different address than the mailbox" in parsed.defects


def test_encoded_comma_in_display_name_does_not_split_the_mailbox() -> None:
    parsed = parse("spamscope_encoded_comma_in_display_name.eml")
    assert parsed.from_name == "LastßlName, FirstName"
    assert parsed.from_address == "comma.name@example.com"
    assert parsed.cc == ["simple@example.net", "john.doe@example.com"]


def test_mailer_daemon_with_empty_address() -> None:
    parsed = parse("cpython_msg43_dsn_banned_attachment_empty_from.eml")
    assert parsed.from_address is None
    assert parsed.from_name == "MAILER DAEMON"


def test_duplicate_from_headers_take_the_first() -> None:
    assert parse("phpmmp_duplicate_from_header_rfc2047_filename.eml").from_address == (
        "dwsauder@example.com"
    )


def test_bad_date_is_none_and_zone_comment_is_ignored() -> None:
    assert parse("mail_invalid_date_59_minutes.eml").date is None
    # "Wed, 20 Sep 1995 00:19:00 (EDT) -0400": the comment must not hide the zone.
    assert parse("flanker_mdn_read_receipt.eml").date == datetime(
        1995, 9, 20, 4, 19, tzinfo=UTC
    )


def test_garbage_line_in_header_block_and_message_id_normalized() -> None:
    parsed = parse("enmime_header_starts_with_space.eml")
    assert parsed.message_id == "07B7061D-2676-487E-942E-C341CE4D13DC@makita.skynet"


# ---------------------------------------------------------------- AGPL corpus, read in place

agpl = pytest.mark.skipif(
    not AGPL_FILES, reason="shared AGPL corpus (../shared/corpus/email) absent"
)


@agpl
def test_agpl_big5_raw_8bit_headers_use_the_body_charset() -> None:
    parsed = parse_agpl("kopano_big5_raw_8bit_headers.eml")
    assert parsed.subject == "養樂多線上訂購"
    assert parsed.from_name == "養樂多"
    assert parsed.locale == "zh-TW"


@agpl
def test_agpl_gb2312_label_with_gbk_only_bytes() -> None:
    parsed = parse_agpl("kopano_gb2312_label_with_gbk_only_bytes.eml")
    assert parsed.from_name == "梁祐晟"
    assert parsed.subject.startswith("讀取: ")  # 讀 is 0xD778: GBK, not GB2312


@agpl
def test_agpl_bogus_charset_name() -> None:
    parsed = parse_agpl("kopano_bogus_charset_name_html_meta.eml")
    assert parsed.subject == "Orange mécanique"
    assert "La France Orange Mécanique" in parsed.text


@agpl
def test_agpl_mime_charset_wins_over_html_meta() -> None:
    parsed = parse_agpl("kopano_mime_utf8_vs_meta_utf16_conflict.eml")
    assert "können" in parsed.text
    assert parsed.from_name == "Miles & More"


@agpl
def test_agpl_multibyte_characters_split_across_encoded_words() -> None:
    parsed = parse_agpl("kopano_multibyte_char_split_across_encoded_words.eml")
    assert parsed.subject.startswith("☺ vų. ")
    assert parsed.from_address == "t@localhost"  # the garbage header line is dropped


@agpl
def test_agpl_unicodebig() -> None:
    parsed = parse_agpl("kopano_unicodebig_charset.eml")
    assert parsed.text == "☺ dummy ☻"
    assert parsed.subject.startswith("☺ dum")


@agpl
def test_agpl_part_without_content_type() -> None:
    parsed = parse_agpl("kopano_part_without_content_type_and_misspelled_mime_version.eml")
    assert parsed.text == "Message part without a Content-Type"


@agpl
def test_agpl_unknown_transfer_encoding_is_kept_raw() -> None:
    parsed = parse_agpl("kopano_unknown_transfer_encoding.eml")
    assert [a.content_type for a in parsed.attachments] == ["image/x-unknown"]


@agpl
def test_agpl_iso2022jp_read_receipt() -> None:
    parsed = parse_agpl("kopano_iso2022jp_read_receipt_mdn.eml")
    assert parsed.subject.startswith("開封")
    assert classify(parsed).kind == "read_receipt"


# ---------------------------------------------------------------- generated mails: charsets


def mime_text(body: str, charset: str, subject: str, **headers: str) -> bytes:
    msg = MIMEText(body, "plain", charset)
    msg["Subject"] = Header(subject, charset)
    msg["From"] = headers.get("From", formataddr(("王小明", "Customer@Example.COM"), charset))
    msg["To"] = "support@example.com"
    msg["Message-ID"] = headers.get("Message-ID", "<m1@example.com>")
    for name, value in headers.items():
        if name not in ("From", "Message-ID"):
            msg[name] = value
    return msg.as_bytes()


@pytest.mark.parametrize(
    ("charset", "locale"),
    [("gb2312", "zh-CN"), ("gbk", "zh-CN"), ("gb18030", "zh-CN"), ("big5", "zh-TW"),
     ("utf-8", "zh-CN"), ("iso-2022-jp", "ja"), ("shift_jis", "ja"), ("euc-kr", "ko")],
)
def test_generated_round_trip(charset: str, locale: str) -> None:
    texts = {
        "gb2312": ("您好，我的订单没有收到", "订单问题"),
        "gbk": ("您好，我的订单没有收到", "订单问题"),
        "gb18030": ("您好，我的订单没有收到", "订单问题"),
        "big5": ("您好，我的訂單沒有收到", "訂單問題"),
        "utf-8": ("您好，我的订单没有收到 🙂", "订单问题 🙂"),
        "iso-2022-jp": ("注文が届いていません", "注文について"),
        "shift_jis": ("注文が届いていません", "注文について"),
        "euc-kr": ("주문이 도착하지 않았습니다", "주문 문의"),
    }
    body, subject = texts[charset]
    parsed = parse_email(mime_text(body, charset, subject))
    assert parsed.subject == subject
    assert parsed.text == body
    assert parsed.locale == locale
    assert parsed.from_address == "customer@example.com"
    assert parsed.from_name == "王小明"
    assert parsed.message_id == "m1@example.com"


def test_whole_mailbox_in_one_encoded_word() -> None:
    msg = MIMEText("body", "plain", "utf-8")
    msg["From"] = "客户 <Customer@Example.COM>"  # compat32 encodes the whole value
    assert msg.as_bytes().startswith(b"Content-Type") and b"From: =?utf-8?b?" in msg.as_bytes()
    parsed = parse_email(msg.as_bytes())
    assert (parsed.from_name, parsed.from_address) == ("客户", "customer@example.com")


def raw_mail(headers: list[tuple[str, bytes]], body: bytes) -> bytes:
    head = b"".join(name.encode() + b": " + value + b"\r\n" for name, value in headers)
    return head + b"\r\n" + body


def test_gbk_only_characters_under_a_gb2312_label() -> None:
    text = "镕基堃喆先生：讀取您的訂單"  # several characters exist only in GBK
    assert not _encodes(text, "gb2312")
    raw = raw_mail(
        [("From", b"a@example.com"),
         ("Subject", b"=?gb2312?B?" + base64.b64encode(text.encode("gbk")) + b"?="),
         ("Content-Type", b"text/plain; charset=gb2312")],
        text.encode("gbk"),
    )
    parsed = parse_email(raw)
    assert parsed.subject == text
    assert parsed.text == text


def test_gb18030_four_byte_characters_under_a_gb2312_label() -> None:
    text = "姓名：𠀀𪚥 先生"  # CJK extension B characters need GB18030's four-byte form
    raw = raw_mail([("From", b"a@example.com"), ("Content-Type", b"text/plain; charset=GB2312")],
                   text.encode("gb18030"))
    assert parse_email(raw).text == text


def test_big5_hkscs_characters_under_a_big5_label() -> None:
    text = "我哋嘅訂單冇收到"  # Cantonese characters from HKSCS
    assert not _encodes(text, "big5")
    raw = raw_mail([("From", b"a@example.com"), ("Content-Type", b"text/plain; charset=big5")],
                   text.encode("big5hkscs"))
    parsed = parse_email(raw)
    assert parsed.text == text
    assert parsed.locale == "zh-TW"


def test_big5_body_labelled_us_ascii_generated() -> None:
    text = "您好，我在貴公司購買的產品已經壞了三次，請儘快處理並回覆，謝謝。" * 3
    raw = raw_mail([("From", b"a@example.com"), ("Content-Type", b"text/plain; charset=us-ascii")],
                   text.encode("big5"))
    assert parse_email(raw).text == text


def test_raw_8bit_gbk_subject_without_encoded_words_uses_the_body_charset() -> None:
    subject = "退款申请"
    raw = raw_mail(
        [("From", "张三 <a@example.com>".encode("gbk")), ("Subject", subject.encode("gbk")),
         ("Content-Type", b"text/plain; charset=gbk")],
        "请尽快处理".encode("gbk"),
    )
    parsed = parse_email(raw)
    assert parsed.subject == subject
    assert parsed.from_name == "张三"


def test_korean_cp949_only_syllable_under_ks_c_5601_label() -> None:
    text = "똠방각하 주문 문의"  # 똠 is not in KS X 1001: only cp949 has it
    raw = raw_mail(
        [("From", b"a@example.com"), ("Content-Type", b"text/plain; charset=ks_c_5601-1987")],
        text.encode("cp949"),
    )
    assert parse_email(raw).text == text


def test_iso_2022_jp_with_halfwidth_katakana() -> None:
    text = "ｶﾀｶﾅの注文"
    raw = raw_mail(
        [("From", b"a@example.com"), ("Content-Type", b"text/plain; charset=ISO-2022-JP")],
        text.encode("iso2022_jp_ext"),
    )
    assert parse_email(raw).text == text


def test_unlabelled_iso_2022_jp_is_recognised() -> None:
    text = "日本語のメールです"
    raw = raw_mail([("From", b"a@example.com")], text.encode("iso2022_jp"))
    assert parse_email(raw).text == text


def test_utf8_character_split_across_encoded_words() -> None:
    data = "你好世界".encode()
    first, second = data[:4], data[4:]  # splits 好 after its first byte
    subject = (b"=?utf-8?B?" + base64.b64encode(first) + b"?=\r\n =?utf-8?B?"
               + base64.b64encode(second) + b"?=")
    raw = raw_mail([("From", b"a@example.com"), ("Subject", subject)], b"x")
    assert parse_email(raw).subject == "你好世界"


@pytest.mark.parametrize(
    ("label", "text", "codec"),
    [
        ("windows-1252http-equivContent-Type", "Orange mécanique – “quoted”", "cp1252"),
        ("x-mac-cyrillic", "Здравствуйте, заказ не пришёл", "mac_cyrillic"),
        ("unicodebig", "☺ dummy ☻ 你好", "utf-16-be"),
        ("iso-8859-1", "Grüße – café", "cp1252"),
        ("koi8-r", "Здравствуйте", "koi8_r"),
        ("nonsense-charset", "Это тест на русском языке, довольно длинный текст.", "cp1251"),
    ],
)
def test_body_charset_labels(label: str, text: str, codec: str) -> None:
    raw = raw_mail(
        [("From", b"a@example.com"), ("Content-Type", f"text/plain; charset={label}".encode())],
        text.encode(codec),
    )
    assert parse_email(raw).text == text


def test_content_language_wins_the_locale_guess() -> None:
    raw = mime_text("订单没有收到", "utf-8", "订单", **{"Content-Language": "zh-hant-tw"})
    assert parse_email(raw).locale == "zh-Hant-TW"


@pytest.mark.parametrize(
    ("text", "locale"),
    [("我的訂單還沒有到貨，請幫忙查詢", "zh-TW"), ("我的订单还没有到货，请帮忙查询", "zh-CN"),
     ("Where is my order?", None)],
)
def test_locale_from_the_script_of_utf8_text(text: str, locale: str | None) -> None:
    assert parse_email(mime_text(text, "utf-8", "order")).locale == locale


# ---------------------------------------------------------------- generated mails: HTML

HOSTILE_HTML = """<html><head><title>Page title</title>
<style>body { background: url(https://tracker.example/bg.png) }</style>
<script>alert('owned')</script></head>
<body onload="steal()"><p onclick="steal()">Hello <b>support</b>,</p>
<img src="https://tracker.example/pixel.gif" alt="tracking pixel">
<img src="//tracker.example/relative.gif"><img src="cid:logo@example.com" alt="logo">
<a href="https://shop.example/order/42" onmouseover="steal()">my order</a>
<a href="javascript:steal()">click</a>
<iframe src="https://evil.example/"></iframe>
<form action="https://evil.example/"><input name="q"></form>
<ul><li>first</li><li>second</li></ul>
</body></html>"""


def test_sanitize_html_removes_scripts_handlers_and_remote_loads() -> None:
    clean = sanitize_html(HOSTILE_HTML)
    lowered = clean.lower()
    for forbidden in ("<script", "alert(", "onclick", "onload", "onmouseover", "<style",
                      "tracker.example", "javascript:", "<iframe", "<form", "<input"):
        assert forbidden not in lowered, forbidden
    assert 'src="cid:logo@example.com"' in clean
    assert '<a href="https://shop.example/order/42"' in clean
    assert "my order" in clean and "click" in clean  # links keep their text
    assert 'alt="tracking pixel"' in clean


def test_html_to_text_is_readable() -> None:
    text = html_to_text(HOSTILE_HTML)
    assert "alert(" not in text and "Page title" not in text and "background" not in text
    assert "Hello support," in text
    assert "my order <https://shop.example/order/42>" in text
    assert "- first\n" in text and "- second" in text


def test_html_only_mail() -> None:
    msg = MIMEText(HOSTILE_HTML, "html", "utf-8")
    msg["From"] = "a@example.com"
    msg["Subject"] = "html"
    parsed = parse_email(msg.as_bytes())
    assert parsed.text.startswith("Hello support,")
    assert parsed.html is not None and "<script" not in parsed.html
    assert "tracker.example" not in parsed.html


def test_alternative_prefers_text_plain_and_keeps_sanitized_html() -> None:
    msg = MIMEMultipart("alternative")
    msg["From"] = "a@example.com"
    msg.attach(MIMEText("Plain version", "plain", "utf-8"))
    msg.attach(MIMEText(HOSTILE_HTML, "html", "utf-8"))
    parsed = parse_email(msg.as_bytes())
    assert parsed.text == "Plain version"
    assert parsed.html is not None and "Hello <b>support</b>" in parsed.html


# ---------------------------------------------------------------- generated mails: attachments


def mail_with_attachments(*files: tuple[str, bytes]) -> bytes:
    msg = EmailMessage()
    msg["From"] = "a@example.com"
    msg["Subject"] = "files"
    msg.set_content("see attached")
    for name, data in files:
        msg.add_attachment(data, maintype="application", subtype="octet-stream", filename=name)
    return msg.as_bytes()


def test_rfc2231_non_ascii_file_names_from_the_stdlib() -> None:
    parsed = parse_email(mail_with_attachments(("发票 2024年.pdf", b"%PDF"), ("報價單.xlsx", b"x")))
    assert [a.name for a in parsed.attachments] == ["发票 2024年.pdf", "報價單.xlsx"]
    assert parsed.attachments[0].data == b"%PDF"


def test_hostile_file_names_are_made_safe() -> None:
    parsed = parse_email(mail_with_attachments(
        ("../../etc/passwd", b"1"), ("C:\\Windows\\evil.exe", b"2"), (".htaccess", b"3"),
        ("invoice\u202egpj.exe", b"4"), ("CON.txt", b"5"), ("a\x00b\x1fc.txt", b"6"),
    ))
    assert [a.name for a in parsed.attachments] == [
        "passwd", "evil.exe", "htaccess", "invoicegpj.exe", "_CON.txt", "abc.txt",
    ]


def test_encoded_word_file_name_outlook_style() -> None:
    part = MIMEBase("application", "pdf")
    part.set_payload(b"%PDF")
    part["Content-Disposition"] = 'attachment; filename="=?utf-8?B?5ZCI5ZCMLnBkZg==?="'
    msg = MIMEMultipart()
    msg["From"] = "a@example.com"
    msg.attach(MIMEText("body", "plain", "utf-8"))
    msg.attach(part)
    assert [a.name for a in parse_email(msg.as_bytes()).attachments] == ["合同.pdf"]


def test_attachment_limits_drop_with_reasons() -> None:
    limits = MailLimits(max_attachment_bytes=100, max_total_bytes=250, max_attachments=3)
    raw = mail_with_attachments(
        ("big.bin", b"x" * 101), ("a.bin", b"a" * 100), ("b.bin", b"b" * 100),
        ("c.bin", b"c" * 100), ("d.bin", b"d" * 10), ("e.bin", b"e"),
    )
    parsed = parse_email(raw, limits=limits)
    assert [a.name for a in parsed.attachments] == ["a.bin", "b.bin", "d.bin"]
    assert parsed.dropped == [
        "big.bin: 101 bytes, over the 100-byte limit per attachment",
        "c.bin: 100 bytes, over the 250-byte total limit",
        "e.bin: more than 3 attachments",
    ]
    inbound = to_inbound(parsed, channel="smtp", mailbox="m", received_at=RECEIVED, attachments=[])
    assert inbound.metadata["dropped_attachments"].startswith("big.bin")


def test_many_parts_and_deep_nesting_are_bounded() -> None:
    parts = b"".join(b"--x\r\nContent-Type: image/png; name=a%d.png\r\n\r\nabc\r\n" % i
                     for i in range(1200))
    raw = b"From: a@b.example\r\nContent-Type: multipart/mixed; boundary=x\r\n\r\n" + parts
    parsed = parse_email(raw + b"--x--\r\n")
    assert len(parsed.attachments) == 20
    assert len(parsed.dropped) == 51 and parsed.dropped[-1].startswith("and ")
    assert "MIME tree too deep or too large; the rest was skipped" in parsed.defects

    nested = b"From: a@b.example\r\n" + b"".join(
        b"Content-Type: multipart/mixed; boundary=b%d\r\n\r\n--b%d\r\n" % (i, i)
        for i in range(3000)
    )
    assert parse_email(nested + b"\r\ndeep\r\n").refusal == (
        "the MIME structure is nested too deeply"
    )


def test_default_limits() -> None:
    limits = MailLimits()
    assert (limits.max_attachment_bytes, limits.max_total_bytes, limits.max_attachments) == (
        10 * 1024 * 1024, 25 * 1024 * 1024, 20
    )


# ---------------------------------------------------------------- generated mails: structure


def test_generated_forward_keeps_outer_sender_and_includes_forwarded_text() -> None:
    inner = MIMEText("我的订单号是 12345，至今未发货。", "plain", "gb2312")
    inner["From"] = "Original Customer <orig@example.org>"
    inner["Subject"] = Header("订单未发货", "gb2312")
    inner["Message-ID"] = "<inner@example.org>"
    outer = MIMEMultipart()
    outer["From"] = "Forwarder <fwd@example.com>"
    outer["Subject"] = "Fwd: 订单未发货"
    outer["Message-ID"] = "<outer@example.com>"
    outer.attach(MIMEText("Please look at this.", "plain", "utf-8"))
    outer.attach(MIMEMessage(inner))
    parsed = parse_email(outer.as_bytes())
    assert parsed.from_address == "fwd@example.com"
    assert parsed.text.startswith("Please look at this.")
    assert "Subject: 订单未发货" in parsed.text
    assert "我的订单号是 12345，至今未发货。" in parsed.text
    assert parsed.enclosed_message_ids == ["inner@example.org"]


def test_format_flowed_is_unwrapped() -> None:
    body = (b"This is a long line that was \r\nwrapped by the client.\r\n"
            b"> quoted and \r\n> joined\r\n")
    raw = raw_mail([("From", b"a@example.com"),
                    ("Content-Type", b"text/plain; charset=utf-8; format=flowed")], body)
    assert parse_email(raw).text == (
        "This is a long line that was wrapped by the client.\n> quoted and joined"
    )


def test_threading_headers_and_date() -> None:
    raw = raw_mail(
        [("From", b"A <A@Example.com>"), ("Message-ID", b" <abc@x.example> "),
         ("In-Reply-To", b"<ack-1@gateway.example>"),
         ("References", b"<root@x.example>\r\n <ack-1@gateway.example> <ack-1@gateway.example>"),
         ("Date", b"Tue, 1 Jul 2014 17:30:56 +0900"), ("Reply-To", b"Other <other@example.com>")],
        b"text",
    )
    parsed = parse_email(raw)
    assert parsed.message_id == "abc@x.example"
    assert parsed.in_reply_to == "ack-1@gateway.example"
    assert parsed.references == ["root@x.example", "ack-1@gateway.example"]
    assert parsed.date == datetime(2014, 7, 1, 8, 30, 56, tzinfo=UTC)
    assert parsed.reply_to == "other@example.com"


# ---------------------------------------------------------------- to_inbound


def test_to_inbound_builds_the_schema_message() -> None:
    raw = raw_mail(
        [("From", "王先生 <Wang@Example.CN>".encode()), ("To", b"Support <support@example.com>"),
         ("Subject", b"=?utf-8?B?" + base64.b64encode("退款".encode()) + b"?="),
         ("Message-ID", b"<m-42@example.cn>"), ("In-Reply-To", b"<ack@gw.example>"),
         ("References", b"<ack@gw.example>"), ("Content-Type", b"text/plain; charset=utf-8")],
        "请退款".encode(),
    )
    message = to_inbound(parse_email(raw), channel="imap", mailbox="support@example.com",
                         received_at=RECEIVED, attachments=[])
    assert message.channel == "imap"
    assert message.provider_message_id == "m-42@example.cn"
    assert message.delivery_scope == "support@example.com"
    assert message.contact.email == "wang@example.cn" and message.contact.name == "王先生"
    assert message.subject == "退款" and message.text == "请退款"
    assert message.thread.in_reply_to == "ack@gw.example"
    assert message.thread.references == ["ack@gw.example"]
    assert message.metadata == {"mailbox": "support@example.com", "to": "support@example.com",
                                "mail_auth": "none: no Authentication-Results header"}
    assert message.contact.verified_by == "imap"
    assert message.locale == "zh-CN"
    assert message.auto_submitted is False
    assert message.received_at == RECEIVED


def test_the_nearest_mtas_authentication_verdict_is_recorded() -> None:
    # Only the topmost header is the nearest MTA's; a lower one may be the sender's own forgery.
    raw = raw_mail(
        [("Authentication-Results",
          b"mx.example.com;\r\n spf=pass smtp.mailfrom=example.cn;\r\n"
          b" dkim=pass header.d=example.cn; dmarc=pass"),
         ("Authentication-Results", b"forged.example; dkim=pass; spf=pass"),
         ("From", b"wang@example.cn"), ("Content-Type", b"text/plain; charset=utf-8")],
        b"hello")
    message = to_inbound(parse_email(raw), channel="smtp", mailbox="m", received_at=RECEIVED,
                         attachments=[])
    assert message.metadata["mail_auth"] == "mx.example.com; spf=pass dkim=pass dmarc=pass"


def test_to_inbound_marks_machine_mail() -> None:
    parsed = parse("sisimai_autoreply_icloud_vacation_x_apple_action.eml")
    message = to_inbound(parsed, channel="smtp", mailbox="m", received_at=RECEIVED, attachments=[])
    assert message.auto_submitted is True
    assert message.metadata["mail_class"] == "auto_reply"


def test_to_inbound_needs_an_aware_time() -> None:
    parsed = parse("talon_reply_iphone_qp_soft_break_in_attribution.eml")
    with pytest.raises(ValueError, match="timezone-aware"):
        to_inbound(parsed, channel="smtp", mailbox="m", received_at=datetime(2025, 1, 1),
                   attachments=[])


# ---------------------------------------------------------------- charsets unit


@pytest.mark.parametrize(
    ("label", "first"),
    [("gb2312", "gbk"), ("GB_2312-80", "gbk"), ("big5", "big5hkscs"), ("ks_c_5601-1987", "cp949"),
     ("unicodebig", "utf-16-be"), ("x-mac-cyrillic", "mac-cyrillic"),
     ("iso-2022-jp", "iso2022_jp_ext"), ("windows-1252http-equivContent-Type", "cp1252"),
     ("\"utf-8\"", "utf-8-sig"), ("UTF-8*en", "utf-8-sig"), ("shift_jis", "cp932")],
)
def test_charset_aliases(label: str, first: str) -> None:
    assert codec_chain(label)[0] == first


@pytest.mark.parametrize("label", ["base64", "rot13", "unicode_escape", "undefined", "idna",
                                   "none", "unknown-8bit", "", None, "zzz"])
def test_dangerous_or_unknown_labels_mean_detection(label: str | None) -> None:
    assert codec_chain(label) == ()


def test_decode_bytes_never_question_marks_for_cjk() -> None:
    text = "客服您好，我想咨询一下发票的问题"
    for label in ("us-ascii", None, "bogus", "utf-8"):
        assert decode_bytes(text.encode("gb18030"), label) == text


def test_unicode_escape_label_does_not_interpret_backslashes() -> None:
    assert decode_bytes(b"C:\\new\\x41", "unicode_escape") == "C:\\new\\x41"


# ---------------------------------------------------------------- properties


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=3000))
def test_parse_email_never_raises_on_arbitrary_bytes(raw: bytes) -> None:
    parsed = parse_email(raw)
    assert isinstance(parsed, ParsedEmail)
    assert isinstance(parsed.text, str)
    for attachment in parsed.attachments:
        assert_safe_name(attachment.name)


HEADER_NAMES = ["From", "To", "Cc", "Subject", "Date", "Message-ID", "References", "Reply-To",
                "Content-Type", "Content-Disposition", "Content-Transfer-Encoding", "MIME-Version",
                "Auto-Submitted", "Return-Path", "In-Reply-To", "Content-Language"]
VALUE_PIECES = ["=?utf-8?B?5L2g5aW9?=", "=?gb2312?Q?=C4=E3?=", "=?x?Q?", "?=", "<", ">", "@", ",",
                ";", ":", '"', "(", ")", "\\", "multipart/mixed", "boundary=", "charset=", "big5",
                "text/html", "base64", "name*0*=utf-8''%E4", "a@b.c", " ", "\r\n ", "--"]


@st.composite
def mail_like(draw: st.DrawFn) -> bytes:
    lines = []
    for _ in range(draw(st.integers(0, 8))):
        value = "".join(draw(st.lists(st.sampled_from(VALUE_PIECES), max_size=8)))
        extra = draw(st.binary(max_size=8))
        lines.append(draw(st.sampled_from(HEADER_NAMES)).encode() + b": " + value.encode() + extra)
    body_parts = draw(st.lists(st.sampled_from(
        [b"--", b"--x\r\n", b"Content-Type: text/plain; charset=gb2312\r\n\r\n", b"\xc4\xe3",
         b"\r\n", b"=?", b"hello", b"\x1b$B", b"=E4=BD"]), max_size=12))
    return b"\r\n".join(lines) + b"\r\n\r\n" + b"".join(body_parts)


@settings(max_examples=300, deadline=None)
@given(mail_like())
def test_parse_email_never_raises_on_mail_like_bytes(raw: bytes) -> None:
    parsed = parse_email(raw)
    assert isinstance(parsed, ParsedEmail)
    classify(parsed)
    if parsed.refusal is None:
        to_inbound(parsed, channel="smtp", mailbox="m", received_at=RECEIVED, attachments=[])


@settings(max_examples=500, deadline=None)
@given(st.one_of(st.none(), st.text()), st.integers(1, 1000),
       st.sampled_from(["application/pdf", "image/png", "text/plain", "x/y", "application/x-zz"]))
def test_safe_filename_property(name: str | None, index: int, content_type: str) -> None:
    safe = safe_filename(name, index=index, content_type=content_type)
    assert_safe_name(safe)
    assert not safe.startswith("..")


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=500),
       st.one_of(st.none(), st.text(max_size=30), st.sampled_from(
           ["gb2312", "big5", "us-ascii", "utf-16", "utf-7", "iso-2022-jp", "base64", "hz"])))
def test_decode_bytes_never_raises(data: bytes, label: str | None) -> None:
    assert isinstance(decode_bytes(data, label), str)


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=200))
def test_decode_encoded_words_never_raises(value: str) -> None:
    assert isinstance(decode_encoded_words(value), str)


def _encodes(text: str, codec: str) -> bool:
    try:
        text.encode(codec)
    except UnicodeError:
        return False
    return True


@pytest.mark.parametrize(
    "header",
    [b'To: "(_;;_"<', b"From: \tQ:Q@", b"Message-ID: <:?];", b"Reply-To: ,\t.]\x80\r:,@?= \\"],
)
def test_headers_that_break_policy_default(header: bytes) -> None:
    # email.policy.default raised IndexError / AttributeError / TypeError on these when the
    # header was read (CPython 3.11): the reason parse.py reads raw headers with compat32.
    parsed = parse_email(b"From: a@b.example\r\n" + header + b"\r\n\r\nbody")
    assert parsed.text == "body"
    assert parsed.from_address == "a@b.example"
