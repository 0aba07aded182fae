"""App notifications: the operator's signed push webhook, and FCM HTTP v1 as a built-in sender.

The webhook is signed as Standard Webhooks specifies (``webhook-id``, ``webhook-timestamp``,
``webhook-signature: v1,<base64 HMAC-SHA256 of "{id}.{timestamp}.{body}">``) with a ``whsec_``
secret, so the operator's push service can check it with any Standard Webhooks library.

FCM HTTP v1: an OAuth 2.0 access token is obtained with the service account's JWT (RS256,
scope ``https://www.googleapis.com/auth/firebase.messaging``, the JWT-bearer grant at the
account's ``token_uri``) and kept until shortly before it expires; each notification is one
``POST {api}/v1/projects/{project}/messages:send``. A token FCM calls ``UNREGISTERED`` (404) is
dropped from the session's devices.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import secrets
import time
from typing import Any, Literal

import aiohttp
import msgspec
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from gateway.errors import ConfigError
from gateway.plugin import IDENTITY, resolve_secret
from intake_adapters.webchat.config import PushConfig
from intake_adapters.webchat.history import Entry, SessionRecord

FCM_SCOPE = "https://www.googleapis.com/auth/firebase.messaging"


class PushEvent(msgspec.Struct, frozen=True, kw_only=True):
    """One notification: an acknowledgement or a reply, with the chat entry it is about."""

    type: Literal["webchat.ack", "webchat.reply"]
    title: str
    body: str
    entry: Entry


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class FcmSender:
    """FCM HTTP v1 with a service account."""

    def __init__(self, project: str, credentials: dict[str, Any], api_base: str) -> None:
        try:
            self.client_email = str(credentials["client_email"])
            self.token_uri = str(credentials.get("token_uri")
                                 or "https://oauth2.googleapis.com/token")
            key = serialization.load_pem_private_key(
                str(credentials["private_key"]).encode(), password=None)
        except (KeyError, ValueError, TypeError) as exc:
            raise ConfigError("adapters.webchat.push.fcm_credentials_file: not a service "
                              f"account JSON with client_email and private_key ({exc})"
                              ) from None
        if not isinstance(key, rsa.RSAPrivateKey):
            raise ConfigError("adapters.webchat.push.fcm_credentials_file: the key is not RSA")
        self.key = key
        self.send_url = f"{api_base.rstrip('/')}/v1/projects/{project}/messages:send"
        self._token: tuple[str, float] | None = None

    def assertion(self, now: float) -> str:
        """The signed JWT the token endpoint takes (RFC 7523)."""
        header = _b64url(json.dumps({"alg": "RS256", "typ": "JWT"}).encode())
        claims = _b64url(json.dumps({"iss": self.client_email, "scope": FCM_SCOPE,
                                     "aud": self.token_uri, "iat": int(now),
                                     "exp": int(now) + 3600}).encode())
        signing = f"{header}.{claims}".encode()
        sig = self.key.sign(signing, padding.PKCS1v15(), hashes.SHA256())
        return f"{header}.{claims}.{_b64url(sig)}"

    async def _access_token(self, session: aiohttp.ClientSession) -> str:
        now = time.time()
        if self._token is not None and self._token[1] > now + 60:
            return self._token[0]
        form = {"grant_type": "urn:ietf:params:oauth:grant-type:jwt-bearer",
                "assertion": self.assertion(now)}
        async with session.post(self.token_uri, data=form) as resp:
            data = await resp.json(content_type=None)
            if resp.status != 200 or not isinstance(data.get("access_token"), str):
                raise PushFailed(f"the token endpoint answered {resp.status}")
            self._token = (data["access_token"], now + float(data.get("expires_in", 3600)))
            return self._token[0]

    async def send(self, session: aiohttp.ClientSession, token: str, event: PushEvent) -> bool:
        """Send one notification; False when FCM says the device token is gone."""
        access = await self._access_token(session)
        data = {"type": event.type, "seq": str(event.entry.seq),
                "ticket_number": event.entry.ticket_number or ""}
        message = {"message": {"token": token,
                               "notification": {"title": event.title,
                                                "body": event.body[:1000]},
                               "data": data}}
        async with session.post(self.send_url, json=message,
                                headers={"Authorization": f"Bearer {access}"}) as resp:
            if resp.status == 200:
                return True
            if resp.status == 401:
                self._token = None
            answer = await resp.json(content_type=None)
            status = (answer.get("error") or {}).get("status") if isinstance(answer, dict) else None
            if resp.status == 404 or status == "UNREGISTERED":
                return False
            raise PushFailed(f"FCM answered {resp.status} {status or ''}".strip())


class PushFailed(Exception):
    """A notification that could not be handed over (logged; the chat still has it)."""


class PushSenders:
    """Every configured push route; each session's devices say which one reaches them."""

    def __init__(self, config: PushConfig, *, log: logging.Logger) -> None:
        self.config = config
        self.log = log
        self.webhook_secret: bytes | None = None
        if config.webhook_url:
            secret = resolve_secret(config.webhook_secret_env, config.webhook_secret_file,
                                    key="adapters.webchat.push.webhook_secret")
            if secret is None or not secret.startswith("whsec_"):
                raise ConfigError("adapters.webchat.push: webhook_url needs webhook_secret_env "
                                  "(or _file), a Standard Webhooks secret whsec_<base64>")
            try:
                self.webhook_secret = base64.b64decode(secret.removeprefix("whsec_"),
                                                       validate=True)
            except ValueError:
                raise ConfigError("adapters.webchat.push.webhook_secret: not base64") from None
        self.fcm: FcmSender | None = None
        if config.fcm_project_id or config.fcm_credentials_file:
            if not (config.fcm_project_id and config.fcm_credentials_file):
                raise ConfigError("adapters.webchat.push: FCM needs fcm_project_id and "
                                  "fcm_credentials_file")
            try:
                with open(config.fcm_credentials_file, encoding="utf-8") as f:
                    credentials = json.load(f)
            except (OSError, ValueError) as exc:
                raise ConfigError("adapters.webchat.push.fcm_credentials_file: cannot read "
                                  f"it ({type(exc).__name__})") from None
            self.fcm = FcmSender(config.fcm_project_id, credentials, config.fcm_api_base)
        self._session: aiohttp.ClientSession | None = None

    @property
    def webhook_enabled(self) -> bool:
        return self.webhook_secret is not None

    @property
    def fcm_enabled(self) -> bool:
        return self.fcm is not None

    async def start(self) -> None:
        self._session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=self.config.timeout), headers=IDENTITY)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def sign(self, msg_id: str, timestamp: int, body: bytes) -> dict[str, str]:
        """The Standard Webhooks headers of ``body``."""
        assert self.webhook_secret is not None
        mac = hmac.new(self.webhook_secret, f"{msg_id}.{timestamp}.".encode() + body,
                       hashlib.sha256).digest()
        return {"webhook-id": msg_id, "webhook-timestamp": str(timestamp),
                "webhook-signature": "v1," + base64.b64encode(mac).decode(),
                "Content-Type": "application/json"}

    async def send_webhook(self, type_: str, data: dict[str, Any]) -> None:
        """POST one signed event to the operator's push service; raises PushFailed."""
        if self._session is None or self.config.webhook_url is None:
            raise PushFailed("the push webhook is not running")
        msg_id = "msg_" + secrets.token_urlsafe(16)
        body = json.dumps({"type": type_, "timestamp": int(time.time()), "data": data},
                          ensure_ascii=False).encode()
        try:
            async with self._session.post(self.config.webhook_url, data=body,
                                          headers=self.sign(msg_id, int(time.time()), body),
                                          allow_redirects=False) as resp:
                if resp.status >= 300:
                    raise PushFailed(f"the push webhook answered {resp.status}")
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise PushFailed(f"the push webhook is unreachable ({type(exc).__name__})") from None

    async def notify(self, record: SessionRecord, event: PushEvent) -> int:
        """Notify every device of the session; how many notifications were handed over.

        Failures are logged, never raised: the chat keeps the entry for catch-up either way.
        """
        sent = 0
        gone: list[Any] = []
        for device in list(record.devices):
            try:
                if device.kind == "fcm" and self.fcm is not None and self._session is not None:
                    if await self.fcm.send(self._session, device.token, event):
                        sent += 1
                    else:
                        gone.append(device)
                elif device.kind == "webhook" and self.webhook_enabled:
                    await self.send_webhook(event.type, {
                        "site": record.site, "session_id": record.sid,
                        "device": device.token, "title": event.title, "body": event.body,
                        "entry": msgspec.to_builtins(event.entry)})
                    sent += 1
            except (PushFailed, aiohttp.ClientError, TimeoutError, ValueError) as exc:
                self.log.warning("push of %s failed: %s", event.type,
                                 exc if isinstance(exc, PushFailed) else type(exc).__name__)
        if gone:
            record.devices = [d for d in record.devices if d not in gone]
        return sent
