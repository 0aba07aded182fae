"""Secrets stay secret: no secret and no customer data in any log line; the data dir is private.

One gateway runs with Telegram (against the Bot API fake), the signed API, the web form, SMTP
with acknowledgements by mail, Twilio SMS and an events token. Every record at DEBUG is
captured from the root logger, with httpx forced to DEBUG as an operator chasing a problem
would; then every secret and every email, phone, name and text sent is looked for.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import smtplib
import stat
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from gateway.runtime import Gateway
from gateway.testing.fakes import FakeTelegram
from gateway.testing.fakes.twilio import FakeTwilio, signed_webhook
from gateway.testing.harness import read_events
from gateway.testing.smtp_capture import SmtpCapture
from intake_adapters.api import sign_request
from intake_adapters.mail import SmtpAdapter
from tests.conftest import MakeGateway

ROOT = Path(__file__).resolve().parent.parent
SUPPORT = "support@example.com"

BOT_TOKEN = "600111222:AAHlogtest-telegram-token_Zq"
SECRETS = {
    "INTAKE_LOGTEST_TELEGRAM_TOKEN": BOT_TOKEN,
    "INTAKE_LOGTEST_TELEGRAM_SECRET": "tg-webhook-secret-8812",
    "INTAKE_LOGTEST_API_SECRET": "api-hmac-secret-5531",
    "INTAKE_LOGTEST_TWILIO_TOKEN": "twilio-auth-token-7743",
    "INTAKE_LOGTEST_EVENTS_TOKEN": "events-bearer-token-9902",
}
os.environ.update(SECRETS)
TWILIO_SID = "AC" + "5a" * 16
OUR_NUMBER = "+14155550199"

CUSTOMER_DATA = [
    # Telegram
    "Xiaoming", "Qiantest", "777123456", "the boiler in flat 7 leaks since Tuesday TGX91",
    # API
    "li.na.api@customers.example.org", "+8613912345678", "13912345678", "Lina Apitest",
    "invoice 4471 was charged twice APX55",
    # web form
    "wang.form@customers.example.org", "+8613700001234", "13700001234", "Wang Formtest",
    "the app crashes when I pay FRM77",
    # SMTP
    "zhao.mail@customers.example.org", "Zhao Mailtest", "my delivery never arrived MLX33",
    # Twilio SMS
    "+8613800001111", "13800001111", "no signal at home since the storm SMS42",
]


class Lines(logging.Handler):
    """Every record, formatted with its traceback, as an operator's log file would hold it."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))


@pytest.fixture
def all_logs() -> Iterator[Lines]:
    handler = Lines()
    root = logging.getLogger()
    httpx_log = logging.getLogger("httpx")
    saved = root.level, httpx_log.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    httpx_log.setLevel(logging.DEBUG)  # quieted by default; the redactor must hold anyway
    try:
        yield handler
    finally:
        root.removeHandler(handler)
        root.setLevel(saved[0])
        httpx_log.setLevel(saved[1])


@pytest.fixture
async def telegram() -> AsyncIterator[FakeTelegram]:
    async with FakeTelegram(BOT_TOKEN) as fake:
        yield fake


@pytest.fixture
async def twilio() -> AsyncIterator[FakeTwilio]:
    async with FakeTwilio(TWILIO_SID, SECRETS["INTAKE_LOGTEST_TWILIO_TOKEN"]) as fake:
        yield fake


@pytest.fixture
def capture() -> Iterator[SmtpCapture]:
    with SmtpCapture() as cap:
        yield cap


def config(telegram: FakeTelegram, twilio: FakeTwilio, capture: SmtpCapture) -> str:
    return (
        '[intake]\ndefault_locale = "en"\n'
        '[server]\nevents_token_env = "INTAKE_LOGTEST_EVENTS_TOKEN"\n'
        '[adapters.api]\nsecret_env = "INTAKE_LOGTEST_API_SECRET"\n'
        "[adapters.telegram]\nenabled = true\n"
        'token_env = "INTAKE_LOGTEST_TELEGRAM_TOKEN"\n'
        'secret_token_env = "INTAKE_LOGTEST_TELEGRAM_SECRET"\n'
        f'api_base_url = "{telegram.url}"\n'
        f'[adapters.twilio]\nenabled = true\naccount_sid = "{TWILIO_SID}"\n'
        'auth_token_env = "INTAKE_LOGTEST_TWILIO_TOKEN"\n'
        f'sms_from = "{OUR_NUMBER}"\napi_base_url = "{twilio.url}"\n'
        f'[adapters.smtp]\nlisten = "127.0.0.1:0"\naccept = ["{SUPPORT}"]\n'
        f'[adapters.mailer]\nport = {capture.port}\nfrom_address = "{SUPPORT}"\n')


async def until(check: Callable[[], Any], timeout: float = 15.0) -> Any:
    deadline = time.monotonic() + timeout
    while not (result := check()):
        if time.monotonic() > deadline:
            raise AssertionError("timed out")
        await asyncio.sleep(0.02)
    return result


async def send_everything(gw: Gateway, telegram: FakeTelegram, twilio: FakeTwilio,
                          capture: SmtpCapture) -> None:
    """One message per channel, as each provider or customer sends it; acks awaited."""
    update = {"update_id": 91001, "message": {
        "message_id": 501, "date": int(time.time()),
        "chat": {"id": 777123456, "type": "private", "first_name": "Xiaoming"},
        "from": {"id": 777123456, "is_bot": False, "first_name": "Xiaoming",
                 "last_name": "Qiantest", "language_code": "en"},
        "text": "the boiler in flat 7 leaks since Tuesday TGX91"}}
    status, _ = await telegram.deliver(update, url=f"{gw.url}/telegram/webhook",
                                       secret_token=SECRETS["INTAKE_LOGTEST_TELEGRAM_SECRET"])
    assert status == 200

    async with aiohttp.ClientSession() as http:
        body = json.dumps({"contact": {"name": "Lina Apitest",
                                       "email": "li.na.api@customers.example.org",
                                       "phone": "+8613912345678"},
                           "text": "invoice 4471 was charged twice APX55"}).encode()
        ts = str(int(time.time()))
        async with http.post(f"{gw.url}/v1/messages", data=body, headers={
                "Content-Type": "application/json", "Idempotency-Key": "logtest-1",
                "X-Intake-Timestamp": ts,
                "X-Intake-Signature": sign_request(SECRETS["INTAKE_LOGTEST_API_SECRET"], ts,
                                                   body)}) as resp:
            assert resp.status in (200, 201), await resp.text()
        # A wrong signature and a wrong bearer token: refusals are logged without the secret.
        async with http.post(f"{gw.url}/v1/messages", data=body, headers={
                "Content-Type": "application/json", "X-Intake-Timestamp": ts,
                "X-Intake-Signature": "sha256=" + "0" * 64}) as resp:
            assert resp.status == 401 or resp.status == 403

        form = aiohttp.FormData()
        for name, value in (("lang", "en"), ("name", "Wang Formtest"),
                            ("email", "wang.form@customers.example.org"),
                            ("phone", "+8613700001234"),
                            ("message", "the app crashes when I pay FRM77"), ("website", "")):
            form.add_field(name, value)
        async with http.post(f"{gw.url}/form", data=form) as resp:
            assert resp.status == 200 and "data-ticket-number" in await resp.text()

        sms = [("MessageSid", "SM" + "7" * 32), ("SmsSid", "SM" + "7" * 32),
               ("AccountSid", TWILIO_SID), ("From", "+8613800001111"), ("To", OUR_NUMBER),
               ("Body", "no signal at home since the storm SMS42"), ("NumMedia", "0")]
        url = f"{gw.url}/twilio/sms"
        async with http.post(url, data=sms, headers=signed_webhook(
                url, sms, SECRETS["INTAKE_LOGTEST_TWILIO_TOKEN"])) as resp:
            assert resp.status == 200, await resp.text()

        events = await read_events(http, gw.url, token=SECRETS["INTAKE_LOGTEST_EVENTS_TOKEN"])
        assert len([e for e in events if e["type"] == "ticket.created"]) >= 4

    smtp = next(a for a in gw.adapters if isinstance(a, SmtpAdapter))
    raw = ("From: Zhao Mailtest <zhao.mail@customers.example.org>\r\n"
           f"To: {SUPPORT}\r\nSubject: order\r\nMessage-ID: <logtest-1@customers.example.org>"
           "\r\n\r\nmy delivery never arrived MLX33\r\n").encode()

    def send_mail() -> None:
        with smtplib.SMTP("127.0.0.1", smtp.port, timeout=10) as client:
            client.sendmail("zhao.mail@customers.example.org", [SUPPORT], raw)

    await asyncio.to_thread(send_mail)
    # The acknowledgements sent later, through each channel's own sender.
    await until(lambda: any(m.chat_id == 777123456 for m in telegram.sent))
    await capture.wait_for(lambda m: "zhao.mail@customers.example.org" in m.rcpt_tos,
                           timeout=15)


async def test_no_secret_and_no_customer_data_in_any_log_line(
        make_gateway: MakeGateway, telegram: FakeTelegram, twilio: FakeTwilio,
        capture: SmtpCapture, all_logs: Lines) -> None:
    gw = await make_gateway(config(telegram, twilio, capture))
    await send_everything(gw, telegram, twilio, capture)
    await gw.stop()
    lines = all_logs.lines
    assert any("intake" in line for line in lines), "nothing was captured"
    # httpx was at DEBUG: the Bot API calls were logged, with the token taken out.
    assert any("HTTP Request:" in line and "/bot[redacted]/" in line for line in lines), \
        [line for line in lines if "httpx" in line][:5]
    leaks = [(value, line) for line in lines
             for value in [*SECRETS.values(), *CUSTOMER_DATA] if value in line]
    assert not leaks, "\n".join(f"{value!r} in: {line[:300]}" for value, line in leaks[:20])


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


async def test_the_data_directory_is_private_to_the_service_user(
        make_gateway: MakeGateway, telegram: FakeTelegram, twilio: FakeTwilio,
        capture: SmtpCapture, tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir(mode=0o755)
    os.chmod(data, 0o755)  # as an operator's `mkdir` under umask 022 leaves it
    gw = await make_gateway(config(telegram, twilio, capture), data_dir=data)
    await send_everything(gw, telegram, twilio, capture)
    # A consumer reads the queue with `tail`, which keeps its position next to the store.
    tail = subprocess.run([sys.executable, "-m", "gateway.cli", "tail", "--data-dir", str(data),
                           "--max", "1"], cwd=ROOT, capture_output=True, timeout=60)
    assert tail.returncode == 0, tail.stderr
    await gw.stop()
    assert _mode(data) == 0o700
    files = [p for p in data.rglob("*") if p.is_file()]
    names = {p.name for p in files}
    assert {"intake.sqlite3", "consumers.sqlite3"} <= names, names
    assert any(p.parent.name != data.name for p in files), "no attachment or raw mail written"
    loose = [f"{p.relative_to(data)} {_mode(p):o}" for p in files if _mode(p) & 0o077]
    assert not loose, loose
    # Inside a private directory, subdirectories may keep their mode; none is open to others
    # anyway, but say so: a directory readable by others would list file names (hashes).
    assert _mode(data) & 0o077 == 0


def test_an_exception_naming_a_customer_is_logged_without_them(all_logs: Lines) -> None:
    # A relay refusing a recipient puts the address into the exception's text; the traceback
    # an operator sees must not carry it, nor a phone number a provider error names.
    from gateway.logs import install_log_guards

    install_log_guards()
    try:
        raise smtplib.SMTPRecipientsRefused({"li.lei@victim.example": (550, b"no such user")})
    except smtplib.SMTPRecipientsRefused:
        logging.getLogger("intake.acks").exception("sending an acknowledgement failed")
    try:
        raise RuntimeError("Twilio: +86 139 1111 2222 is not a mobile number")
    except RuntimeError:
        logging.getLogger("intake.twilio").exception("outbound SMS failed")
    text = "\n".join(all_logs.lines)
    assert "sending an acknowledgement failed" in text and "SMTPRecipientsRefused" in text
    assert "li.lei@victim.example" not in text and "1111 2222" not in text
    assert "[email]" in text and "[phone]" in text
