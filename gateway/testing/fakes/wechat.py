"""A stand-in for WeChat's servers: it posts Official Account pushes to your URL as WeChat does.

WeChat is the client here, so this fake is a sender, not a server::

    async with FakeWeChat(token) as wechat:
        check = await wechat.verify_url(url)              # GET ...&echostr=...
        assert check.body == check.echostr.encode()
        result = await wechat.push(url, {"MsgType": "text", "Content": "hi", "MsgId": 1})
        reply = wechat.read_reply(result)                 # the passive reply, parsed

In safe mode (``safe_mode=WeChatCrypto(...)``) the push is encrypted and carries
``encrypt_type=aes`` and ``msg_signature``; :meth:`FakeWeChat.read_reply` checks the reply's
``MsgSignature`` and decrypts it.
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Mapping
from types import TracebackType
from typing import Literal, Self

import aiohttp
import msgspec

from gateway.errors import RejectedInput
from intake_adapters.wechat.protocol import (
    WeChatCrypto,
    compute_signature,
    parse_push,
    parse_push_xml,
    render_xml,
)

__all__ = ["FakeWeChat", "PushResult"]

_MAX_REPLY = 1 << 20


class PushResult(msgspec.Struct, frozen=True, kw_only=True):
    """One request WeChat made and what your server answered.

    ``query`` and ``sent`` are the request's query parameters and body; ``elapsed`` is seconds
    until the answer (WeChat gives up after 5 and retries). ``echostr`` is set for
    :meth:`FakeWeChat.verify_url`, ``safe_mode`` when the push was encrypted.
    """

    status: int
    body: bytes
    content_type: str
    elapsed: float
    query: dict[str, str]
    sent: bytes
    echostr: str | None = None
    safe_mode: WeChatCrypto | None = None


class FakeWeChat:
    """Posts WeChat pushes for an Official Account configured with ``token``.

    ``account`` (the account's ``gh_`` id) and ``openid`` (the customer) fill ``ToUserName`` and
    ``FromUserName`` when a push given as fields leaves them out. ``pushes`` records every
    request made.
    """

    def __init__(
        self,
        token: str | None = None,
        *,
        account: str = "gh_0123456789ab",
        openid: str = "oFakeOpenId_customer_000001",
        timeout: float = 5.0,
    ) -> None:
        self.token = token
        self.account = account
        self.openid = openid
        self.timeout = timeout
        self.pushes: list[PushResult] = []
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> Self:
        self._session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=self.timeout),
            headers={"User-Agent": "Mozilla/4.0"},
        )
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        """Close the HTTP session."""
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _token(self, token: str | None) -> str:
        chosen = token or self.token
        if not chosen:
            raise ValueError("FakeWeChat needs a token: pass it to the constructor or the call")
        return chosen

    async def _request(
        self, method: str, url: str, query: dict[str, str], body: bytes, content_type: str
    ) -> tuple[int, bytes, str, float]:
        if self._session is None:
            raise RuntimeError("use FakeWeChat as an async context manager")
        started = time.monotonic()
        headers = {"Content-Type": content_type} if body else {}
        async with self._session.request(
            method, url, params=query, data=body or None, headers=headers
        ) as response:
            answer = await response.content.read(_MAX_REPLY)
            return response.status, answer, response.content_type, time.monotonic() - started

    async def verify_url(
        self, url: str, token: str | None = None, *, echostr: str | None = None
    ) -> PushResult:
        """Do the server-configuration handshake: a signed GET whose answer must be ``echostr``."""
        timestamp, nonce = str(int(time.time())), str(secrets.randbelow(10**10))
        echo = echostr or str(secrets.randbelow(10**19))
        query = {
            "signature": compute_signature(self._token(token), timestamp, nonce),
            "echostr": echo,
            "timestamp": timestamp,
            "nonce": nonce,
        }
        status, body, ctype, elapsed = await self._request("GET", url, query, b"", "")
        result = PushResult(
            status=status,
            body=body,
            content_type=ctype,
            elapsed=elapsed,
            query=query,
            sent=b"",
            echostr=echo,
        )
        self.pushes.append(result)
        return result

    def _fields(self, message: Mapping[str, str | int]) -> dict[str, str | int]:
        head: dict[str, str | int] = {
            "ToUserName": self.account,
            "FromUserName": self.openid,
            "CreateTime": int(time.time()),
        }
        return {**head, **message}

    async def push(
        self,
        url: str,
        message: bytes | str | Mapping[str, str | int],
        *,
        token: str | None = None,
        safe_mode: WeChatCrypto | None = None,
        data_format: Literal["xml", "json"] = "xml",
        compat: bool = False,
        timestamp: str | None = None,
        nonce: str | None = None,
    ) -> PushResult:
        """POST one push to ``url`` signed as WeChat signs it; returns your server's answer.

        ``message`` is either the body itself (``bytes``/``str``, sent as given, or encrypted in
        safe mode) or fields rendered as WeChat renders them (text in CDATA, ints bare; JSON with
        ``data_format="json"``), with ToUserName, FromUserName and CreateTime filled in when
        missing. ``safe_mode`` encrypts with that account crypto; ``compat`` sends the plain
        fields and ``Encrypt`` together, as compatibility mode does. Pass ``timestamp`` and
        ``nonce`` to replay an earlier request exactly.
        """
        token = self._token(token)
        if isinstance(message, Mapping):
            fields = self._fields(message)
            plain = (
                json.dumps(fields, ensure_ascii=False).encode()
                if data_format == "json"
                else render_xml(fields)
            )
            openid = str(fields["FromUserName"])
            to_user = str(fields["ToUserName"])
        else:
            plain = message.encode() if isinstance(message, str) else message
            try:
                parsed = parse_push(plain, len(plain) + 1)
            except RejectedInput:
                parsed = {}  # a deliberately broken body is still sent, as given
            openid = parsed.get("FromUserName", self.openid)
            to_user = parsed.get("ToUserName", self.account)
        timestamp = timestamp or str(int(time.time()))
        nonce = nonce or str(secrets.randbelow(10**10))
        query = {
            "signature": compute_signature(token, timestamp, nonce),
            "timestamp": timestamp,
            "nonce": nonce,
            "openid": openid,
        }
        body = plain
        if safe_mode is not None:
            encrypt_b64, msg_signature = safe_mode.encrypt(plain, nonce, timestamp)
            query |= {"encrypt_type": "aes", "msg_signature": msg_signature}
            if compat and data_format == "xml":
                body = plain.replace(b"</xml>", render_xml({"Encrypt": encrypt_b64})[5:])
            elif data_format == "json":
                envelope: dict[str, str] = {"ToUserName": to_user, "Encrypt": encrypt_b64}
                body = json.dumps(envelope).encode()
            else:
                body = render_xml({"ToUserName": to_user, "Encrypt": encrypt_b64})
        content_type = "application/json" if data_format == "json" else "text/xml"
        status, answer, ctype, elapsed = await self._request("POST", url, query, body, content_type)
        result = PushResult(
            status=status,
            body=answer,
            content_type=ctype,
            elapsed=elapsed,
            query=query,
            sent=body,
            safe_mode=safe_mode,
        )
        self.pushes.append(result)
        return result

    @staticmethod
    def read_reply(
        result: PushResult | bytes, crypto: WeChatCrypto | None = None
    ) -> dict[str, str] | None:
        """Parse a passive reply; ``None`` for the no-reply answers (empty body or ``success``).

        An encrypted reply (``<Encrypt>`` with ``MsgSignature``, ``TimeStamp``, ``Nonce``) is
        verified and decrypted with ``crypto`` (default: the push's ``safe_mode``); a bad
        signature raises :class:`~gateway.errors.Forbidden`, as WeChat would drop it.
        """
        body = result.body if isinstance(result, PushResult) else result
        if isinstance(result, PushResult) and crypto is None:
            crypto = result.safe_mode
        if body.strip() in (b"", b"success"):
            return None
        outer = parse_push_xml(body, _MAX_REPLY)
        if "Encrypt" not in outer:
            return outer
        if crypto is None:
            raise ValueError("the reply is encrypted: pass the account's WeChatCrypto")
        inner = crypto.decrypt(
            outer.get("MsgSignature", ""),
            outer.get("TimeStamp", ""),
            outer.get("Nonce", ""),
            outer["Encrypt"],
        )
        return parse_push_xml(inner, _MAX_REPLY)
