"""adapters.mail.loop_policy: which mail is a person's, on real mail and on header sets."""

# Full-width CJK punctuation and typographic dashes in the test data are the point.

from __future__ import annotations

from email import message_from_bytes
from email.message import EmailMessage, Message
from email.mime.message import MIMEMessage
from email.mime.multipart import MIMEMultipart
from email.mime.text import MIMEText
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from intake_adapters.mail.loop_policy import (
    MailClass,
    bounced_message_ids,
    classify,
    should_acknowledge,
)
from intake_adapters.mail.parse import ParsedEmail, parse_email

CORPUS = Path(__file__).parent / "corpus" / "email"
SHARED_CORPUS = Path(__file__).resolve().parents[2] / "shared" / "corpus" / "email"


def parse(name: str) -> ParsedEmail:
    return parse_email((CORPUS / name).read_bytes())


EXPECTED = {
    # Delivery status notifications and plain-text bounces.
    "cpython_msg16_dsn_ucla_uppercase_ctypes.eml": "bounce",
    "cpython_msg43_dsn_banned_attachment_empty_from.eml": "bounce",
    "flanker_bounce_postfix_mbox_from_line.eml": "bounce",
    "sisimai_bounce_gmail_plain_text_x_failed_recipients.eml": "bounce",
    "sisimai_bounce_qmail_plain_text_multi_recipient.eml": "bounce",
    "sisimai_dsn_exchange_broken_iso2022jp_encoded_word.eml": "bounce",
    "sisimai_dsn_hotmail_delay_unicode_1_1_utf7.eml": "bounce",
    "sisimai_dsn_postfix_qq_mail_rate_limited.eml": "bounce",
    "spamscope_dsn_truncated_rfc822_headers.eml": "bounce",
    "phpmmp_ndr_gb2312_qp_japanese_text.eml": "bounce",
    # Read receipts and complaints.
    "flanker_mdn_read_receipt.eml": "read_receipt",
    "flanker_arf_complaint_yahoo.eml": "feedback_report",
    # Auto-replies: Exchange, iCloud, Mimecast, plain RFC 3834, a Polish subject.
    "sisimai_autoreply_exchange_no_auto_submitted.eml": "auto_reply",
    "sisimai_autoreply_icloud_vacation_x_apple_action.eml": "auto_reply",
    "sisimai_autoreply_mimecast_precedence_bulk.eml": "auto_reply",
    "sisimai_autoreply_out_of_office_windows1252_qp.eml": "auto_reply",
    "sisimai_autoreply_plain_auto_submitted_only.eml": "auto_reply",
    "phpmmp_autoreply_windows1250_subject_iso2022jp_parts.eml": "auto_reply",
    # Mailing-list mail.
    "cpython_msg32_rfc2231_charset_star_param.eml": "list",
    # People.
    "talon_reply_android_base64_russian_attribution.eml": "human",
    "talon_reply_iphone_qp_soft_break_in_attribution.eml": "human",
    "talon_reply_outlook_header_block_quote.eml": "human",
    "mail_shift_jis_8bit_docomo.eml": "human",
    "mail_rfc2231_continuation_utf8_japanese_filename.eml": "human",
    "cpython_msg46_groupwise_forward_as_message_rfc822.eml": "human",
    "flanker_forwarded_rfc822_bad_encoding.eml": "human",
    "enmime_header_starts_with_space.eml": "human",
    "spamscope_gb2312_8bit_headers_and_utf8_address.eml": "human",
}


@pytest.mark.parametrize(("name", "kind"), sorted(EXPECTED.items()))
def test_corpus_classification(name: str, kind: str) -> None:
    mail_class = classify(parse(name))
    assert mail_class.kind == kind, mail_class.reasons
    assert should_acknowledge(mail_class) is (kind == "human")
    assert bool(mail_class.reasons) is (kind != "human")


@pytest.mark.skipif(not SHARED_CORPUS.is_dir(), reason="shared AGPL corpus absent")
def test_agpl_iso2022jp_read_receipt() -> None:
    raw = (SHARED_CORPUS / "kopano_iso2022jp_read_receipt_mdn.eml").read_bytes()
    assert classify(parse_email(raw)).kind == "read_receipt"


def test_reasons_name_every_signal() -> None:
    mail_class = classify(parse("sisimai_autoreply_exchange_no_auto_submitted.eml"))
    assert mail_class.reasons == [
        "X-Auto-Response-Suppress: All",
        "x-ms-exchange-inbox-rules-loop header",
        "auto-reply subject",
        "null Return-Path <>",
    ]


def test_a_bounce_that_also_says_auto_submitted_is_a_bounce() -> None:
    mail_class = classify(parse("flanker_bounce_postfix_mbox_from_line.eml"))
    assert mail_class.kind == "bounce"
    assert "Auto-Submitted: auto-replied" in mail_class.reasons


# ---------------------------------------------------------------- bounced message ids


@pytest.mark.parametrize(
    ("name", "ids"),
    [
        ("flanker_bounce_postfix_mbox_from_line.eml", ["20090708054735.GC7578@example.com"]),
        ("cpython_msg16_dsn_ucla_uppercase_ctypes.eml", ["002001c144a6$8752e060$56104586@oxy.edu"]),
        ("sisimai_dsn_postfix_qq_mail_rate_limited.eml",
         ["20180429233445.1BFAC0EE7C9F@mail.example.net"]),
        ("sisimai_dsn_hotmail_delay_unicode_1_1_utf7.eml",
         ["BAY182-W4180385B0DABF89EB94B34A9300@phx.gbl"]),
        # text/rfc822-headers cut off mid-headers still names the original.
        ("spamscope_dsn_truncated_rfc822_headers.eml",
         ["004801d1fc84$01c934ac$b247f0b7$@infospacemail.com"]),
        # Plain-text bounce with the original pasted inline.
        ("sisimai_bounce_gmail_plain_text_x_failed_recipients.eml",
         ["D992C2C3-F175-4C4D-97E2-53A90E4E5BF5@gmail.com"]),
        # The DSN reuses the original's Message-ID as its own: nothing to link.
        ("cpython_msg43_dsn_banned_attachment_empty_from.eml", []),
        # Not a bounce: a forwarded message is not "the mail that bounced".
        ("cpython_msg46_groupwise_forward_as_message_rfc822.eml", []),
    ],
)
def test_bounced_message_ids(name: str, ids: list[str]) -> None:
    assert bounced_message_ids(parse(name)) == ids


def our_acknowledgement() -> EmailMessage:
    ack = EmailMessage()
    ack["From"] = "support@gateway.example"
    ack["To"] = "gone@customer.example"
    ack["Subject"] = "[#2025-000123] 我们已收到您的来信"
    ack["Message-ID"] = "<ack-2025-000123@gateway.example>"
    ack["Auto-Submitted"] = "auto-replied"
    ack.set_content("工单编号 2025-000123")
    return ack


def dsn_for(original: Message, *, headers_only: bool) -> bytes:
    report = MIMEMultipart("report", report_type="delivery-status")
    report["From"] = "Mail Delivery System <MAILER-DAEMON@mx.customer.example>"
    report["To"] = "support@gateway.example"
    report["Subject"] = "Undelivered Mail Returned to Sender"
    report["Message-ID"] = "<dsn-1@mx.customer.example>"
    report.attach(MIMEText("Your message could not be delivered.", "plain", "us-ascii"))
    status = Message()
    status["Content-Type"] = "message/delivery-status"
    for fields in ({"Reporting-MTA": "dns; mx.customer.example"},
                   {"Final-Recipient": "rfc822; gone@customer.example", "Action": "failed",
                    "Status": "5.1.1"}):
        block = Message()
        for name, value in fields.items():
            block[name] = value
        status.attach(block)
    report.attach(status)
    if headers_only:
        headers = Message()
        headers.set_type("text/rfc822-headers")
        headers.set_payload(original.as_bytes().split(b"\n\n", 1)[0].decode("ascii"))
        report.attach(headers)
    else:
        report.attach(MIMEMessage(original))
    return report.as_bytes()


@pytest.mark.parametrize("headers_only", [False, True])
def test_bounce_of_our_own_acknowledgement_links_back(headers_only: bool) -> None:
    parsed = parse_email(dsn_for(our_acknowledgement(), headers_only=headers_only))
    mail_class = classify(parsed, envelope_from="")
    assert mail_class.kind == "bounce"
    assert "null envelope sender <>" in mail_class.reasons
    assert bounced_message_ids(parsed) == ["ack-2025-000123@gateway.example"]


def test_a_customer_forwarding_a_bounce_is_still_a_customer() -> None:
    bounce = parse_email(dsn_for(our_acknowledgement(), headers_only=False))
    assert classify(bounce).kind == "bounce"
    forward = MIMEMultipart()
    forward["From"] = "Customer <customer@example.com>"
    forward["Subject"] = "Fwd: your mail bounced?"
    forward.attach(MIMEText("Why did this bounce?", "plain", "utf-8"))
    forward.attach(MIMEMessage(message_from_bytes(
        dsn_for(our_acknowledgement(), headers_only=False))))
    parsed = parse_email(forward.as_bytes())
    assert parsed.report_type is None
    assert classify(parsed).kind == "human"
    assert bounced_message_ids(parsed) == []


def test_read_receipt_records_the_original_message_id() -> None:
    report = MIMEMultipart("report", report_type="disposition-notification")
    report["From"] = "customer@example.com"
    report["Subject"] = "Read: [#2025-000123] 我们已收到您的来信"
    report.attach(MIMEText("Your message was read.", "plain", "utf-8"))
    mdn = Message()
    mdn.set_type("message/disposition-notification")
    mdn.set_payload("Reporting-UA: pc; Outlook\nOriginal-Message-ID: <ack-9@gateway.example>\n"
                    "Disposition: manual-action/MDN-sent-manually; displayed\n")
    report.attach(mdn)
    parsed = parse_email(report.as_bytes())
    assert classify(parsed).kind == "read_receipt"
    assert parsed.enclosed_message_ids == ["ack-9@gateway.example"]
    assert bounced_message_ids(parsed) == []


# ---------------------------------------------------------------- header sets


@pytest.mark.parametrize(
    ("headers", "kind"),
    [
        ({"From": "a@example.com", "Subject": "Where is my order?"}, "human"),
        ({"Auto-Submitted": "no", "Subject": "hello"}, "human"),
        ({"Auto-Submitted": "auto-replied"}, "auto_reply"),
        ({"Auto-Submitted": "auto-generated; owner-email=x@example.com"}, "auto_reply"),
        ({"Precedence": "bulk"}, "list"),
        ({"Precedence": "junk"}, "list"),
        ({"Precedence": "list"}, "list"),
        ({"List-Id": "<support.lists.example.com>"}, "list"),
        ({"List-Unsubscribe": "<mailto:leave@example.com>"}, "list"),
        ({"X-Auto-Response-Suppress": "All"}, "auto_reply"),
        ({"X-Autoreply": "yes"}, "auto_reply"),
        ({"X-Autorespond": "yes"}, "auto_reply"),
        ({"X-Apple-Action": "VACATION"}, "auto_reply"),
        ({"X-MS-Exchange-Inbox-Rules-Loop": "a@example.com"}, "auto_reply"),
        ({"X-MS-Exchange-Generated-Message-Source": "Mailbox Rules Agent"}, "auto_reply"),
        ({"Return-Path": "<>"}, "auto_reply"),
        ({"From": "MAILER-DAEMON@mx.example.com"}, "bounce"),
        ({"From": "Mail Delivery System <postmaster@example.com>"}, "bounce"),
        ({"From": "no-reply@shop.example"}, "auto_reply"),
        ({"From": "NoReply <noreply@shop.example>"}, "auto_reply"),
        ({"From": "donotreply@bank.example"}, "auto_reply"),
        ({"X-Failed-Recipients": "gone@example.com"}, "bounce"),
        ({"Content-Type": "multipart/report; report-type=delivery-status; boundary=x"}, "bounce"),
        ({"Content-Type": 'multipart/report; report-type="disposition-notification"'},
         "read_receipt"),
        ({"Content-Type": "multipart/report; report-type=feedback-report"}, "feedback_report"),
        ({"Subject": "Automatic reply: Order 42"}, "auto_reply"),
        ({"Subject": "Out of Office: Order 42"}, "auto_reply"),
        ({"Subject": "Out of Office"}, "auto_reply"),
        ({"Subject": "自动回复: 您好"}, "auto_reply"),
        ({"Subject": "=?utf-8?B?6Ieq5Yqo5Zue5aSNOiDmgqjlpb0=?="}, "auto_reply"),  # 自动回复: 您好
        ({"Subject": "自動回覆：您好"}, "auto_reply"),
        ({"Subject": "Undeliverable: Order 42"}, "bounce"),
        ({"Subject": "Delivery Status Notification (Failure)"}, "bounce"),
        ({"Subject": "系统退信"}, "bounce"),
        # People who merely mention the words.
        ({"Subject": "Out of office hours support is not answering"}, "human"),
        ({"Subject": "Re: Automatic replies keep coming from your system"}, "human"),
        ({"Subject": "Read: chapter 3 of the manual, it is wrong"}, "human"),
        ({"From": "postmaster-fan@example.com"}, "human"),
    ],
)
def test_header_sets(headers: dict[str, str], kind: str) -> None:
    assert classify(headers).kind == kind


def test_envelope_null_sender() -> None:
    assert classify({"Subject": "hi"}, envelope_from="<>").kind == "auto_reply"
    assert classify({"Subject": "hi"}, envelope_from="").reasons == ["null envelope sender <>"]
    assert classify({"Subject": "hi"}, envelope_from="a@example.com").kind == "human"


def test_an_email_message_works_as_input() -> None:
    msg = EmailMessage()
    msg["From"] = "MAILER-DAEMON@example.com"
    msg["Subject"] = "failure notice"
    assert classify(msg).kind == "bounce"


def test_priority_feedback_over_bounce_over_receipt_over_auto_reply_over_list() -> None:
    headers = {
        "Precedence": "bulk",
        "Auto-Submitted": "auto-replied",
        "Subject": "Read Receipt",
        "From": "MAILER-DAEMON@example.com",
        "Content-Type": "multipart/report; report-type=feedback-report",
    }
    order = ["Content-Type", "From", "Subject", "Auto-Submitted", "Precedence"]
    expected = ["feedback_report", "bounce", "read_receipt", "auto_reply", "list"]
    for i, kind in enumerate(expected):
        subset = {key: headers[key] for key in order[i:]}
        assert classify(subset).kind == kind


def test_outlook_plain_text_read_receipt() -> None:
    msg = EmailMessage()
    msg["From"] = "customer@example.com"
    msg["Subject"] = "Read: Your ticket 2025-000123"
    msg.set_content("Your message\n\n  To: support\n\nwas read on 1/2/2025 10:00 AM.")
    assert classify(parse_email(msg.as_bytes())).kind == "read_receipt"


def test_should_acknowledge_only_humans() -> None:
    kinds = ["human", "auto_reply", "bounce", "read_receipt", "list", "feedback_report"]
    assert [should_acknowledge(MailClass(kind=k)) for k in kinds] == [True] + [False] * 5


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(
    st.sampled_from(["From", "Subject", "Auto-Submitted", "Precedence", "Return-Path",
                     "Content-Type", "List-Id", "X-Apple-Action", "x"]),
    st.text(max_size=60), max_size=6,
), st.one_of(st.none(), st.text(max_size=10)))
def test_classify_never_raises(headers: dict[str, str], envelope_from: str | None) -> None:
    mail_class = classify(headers, envelope_from=envelope_from)
    assert mail_class.kind in ("human", "auto_reply", "bounce", "read_receipt", "list",
                               "feedback_report")
