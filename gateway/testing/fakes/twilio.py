"""A local Twilio REST API for Messages and media, and a client that posts signed webhooks.

Server side (:class:`FakeTwilio`), under ``/2010-04-01/Accounts/{AccountSid}/``:

* ``POST Messages.json``: Basic auth (account SID + auth token), form body (To, From or
  MessagingServiceSid, Body, MediaUrl..., StatusCallback); answers ``201`` with a Message resource
  (``sid`` ``SM`` + 32 hex, ``status`` ``queued``), or Twilio's error JSON (``code``, ``message``,
  ``more_info``, ``status``) with the real error codes for the common mistakes.
* ``GET Messages/{sid}.json``: the resource again.
* ``GET Messages/{sid}/Media/{media_sid}``: Basic auth, then a ``307`` redirect to a short-lived
  CDN-style URL on the same server that serves the bytes, as Twilio does.

Point the real client at it with ``client.api.base_url = fake.url``.

Client side: :func:`signed_webhook` computes ``X-Twilio-Signature`` for a request to your URL;
:meth:`FakeTwilio.post_webhook` posts a webhook exactly as Twilio would.
"""

from __future__ import annotations

import base64
import secrets
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from email.utils import format_datetime
from typing import Any

import aiohttp
import msgspec
from aiohttp import web

from gateway.testing.fakes import Delivery, FakeServer, serve_body
from intake_adapters.twilio.protocol import Params, compute_twilio_signature, sms_segments

__all__ = ["FakeTwilio", "MediaDownload", "SentSms", "WebhookResult", "signed_webhook"]

API = "/2010-04-01"
_MAX_BODY = 1600


def signed_webhook(url: str, params: Params | str, auth_token: str) -> dict[str, str]:
    """Return the headers Twilio would send with this webhook: ``X-Twilio-Signature``.

    ``url`` is the full public URL including its query; ``params`` the form fields, or the raw
    body of a JSON webhook (whose ``url`` must then carry ``bodySHA256``).
    """
    return {"X-Twilio-Signature": compute_twilio_signature(auth_token, url, params)}


class SentSms(msgspec.Struct, frozen=True, kw_only=True):
    """A message created through the REST API; ``resource`` is the JSON the fake answered."""

    sid: str
    to: str
    from_: str | None
    body: str
    media_urls: list[str]
    status_callback: str | None
    messaging_service_sid: str | None
    resource: dict[str, Any]
    content_sid: str | None = None
    """A template (Content API) send: its SID and its ``ContentVariables`` JSON."""
    content_variables: str | None = None


class MediaDownload(msgspec.Struct, frozen=True, kw_only=True):
    """One media request: which media, whether it carried valid credentials, the answer."""

    message_sid: str
    media_sid: str
    authorized: bool
    status: int


class WebhookResult(msgspec.Struct, frozen=True, kw_only=True):
    """What your server answered to a webhook the fake posted."""

    status: int
    body: bytes
    content_type: str


class _Media(msgspec.Struct, frozen=True):
    data: bytes
    content_type: str
    delivery: Delivery = "whole"
    redirect_to: str | None = None


def _sid(prefix: str) -> str:
    return prefix + secrets.token_hex(16)


def _twilio_error(status: int, code: int, message: str) -> web.Response:
    return web.json_response(
        {
            "code": code,
            "message": message,
            "more_info": f"https://www.twilio.com/docs/errors/{code}",
            "status": status,
        },
        status=status,
    )


class FakeTwilio(FakeServer):
    """The Twilio Messages API of one account, recording what clients did.

    ``messages`` lists the created messages, ``downloads`` every media request. Register media
    with :meth:`add_media` and put the returned URL in a webhook's ``MediaUrl0``. Numbers in
    ``opted_out`` get error 21610, as after the customer texted STOP.
    """

    def __init__(
        self,
        account_sid: str = "AC" + "0" * 32,
        auth_token: str = "fake-auth-token",
        *,
        media_requires_auth: bool = True,
    ) -> None:
        super().__init__()
        self.account_sid = account_sid
        self.auth_token = auth_token
        self.media_requires_auth = media_requires_auth
        self.messages: list[SentSms] = []
        self.downloads: list[MediaDownload] = []
        self.opted_out: set[str] = set()
        self._media: dict[tuple[str, str], _Media] = {}
        self._cdn: dict[str, _Media] = {}
        self._failures: list[tuple[int, int, str]] = []

    # -- what tests call ---------------------------------------------------------------------

    def add_media(
        self,
        data: bytes,
        content_type: str,
        *,
        message_sid: str | None = None,
        media_sid: str | None = None,
        delivery: Delivery = "whole",
        redirect_to: str | None = None,
    ) -> str:
        """Register media of an inbound message; returns its URL (as in ``MediaUrl0``).

        Call it once the fake has started: the URL contains the fake's address. A hostile
        Twilio: ``redirect_to`` sends the media request there instead of to the fake's CDN (a
        loopback or metadata address); ``delivery`` serves the CDN body without a declared
        size or cut short (:data:`~gateway.testing.fakes.Delivery`).
        """
        if not self.url:
            raise RuntimeError("start the fake (async with) before adding media")
        message_sid = message_sid or _sid("MM")
        media_sid = media_sid or _sid("ME")
        self._media[(message_sid, media_sid)] = _Media(data, content_type, delivery, redirect_to)
        account = f"{self.url}{API}/Accounts/{self.account_sid}"
        return f"{account}/Messages/{message_sid}/Media/{media_sid}"

    def fail_next(
        self, status: int = 500, code: int = 20500, message: str = "Internal Server Error"
    ) -> None:
        """Make the next Messages.json request fail with this status and Twilio error code."""
        self._failures.append((status, code, message))

    async def post_webhook(
        self,
        url: str,
        params: Mapping[str, str] | Iterable[tuple[str, str]],
        *,
        signature: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> WebhookResult:
        """POST a form webhook to ``url`` signed with this account's token, as Twilio does.

        ``signature`` overrides the computed one (to test a forged request); ``headers`` adds
        more (e.g. ``X-Forwarded-Proto``).
        """
        pairs = list(params.items()) if isinstance(params, Mapping) else list(params)
        sent = {
            "X-Twilio-Signature": signature
            if signature is not None
            else compute_twilio_signature(self.auth_token, url, pairs),
            "I-Twilio-Idempotency-Token": secrets.token_hex(16),
            "User-Agent": "TwilioProxy/1.1",
            **(headers or {}),
        }
        async with (
            aiohttp.ClientSession() as session,
            session.post(url, data=pairs, headers=sent, allow_redirects=False) as response,
        ):
            return WebhookResult(
                status=response.status,
                body=await response.read(),
                content_type=response.content_type,
            )

    async def deliver_status(self, message_sid: str, status: str = "delivered") -> WebhookResult:
        """Post the status callback of a message created through the API."""
        sms = next((m for m in self.messages if m.sid == message_sid), None)
        if sms is None or not sms.status_callback:
            raise LookupError(f"no message {message_sid} with a StatusCallback")
        params = {
            "AccountSid": self.account_sid,
            "ApiVersion": "2010-04-01",
            "From": sms.from_ or "",
            "To": sms.to,
            "MessageSid": sms.sid,
            "MessageStatus": status,
            "SmsSid": sms.sid,
            "SmsStatus": status,
        }
        return await self.post_webhook(sms.status_callback, params)

    # -- the server --------------------------------------------------------------------------

    def build_app(self) -> web.Application:
        """Messages and media routes, plus the CDN the media redirects to."""
        app = web.Application()
        base = f"{API}/Accounts/{{account}}/Messages"
        app.router.add_post(f"{base}.json", self._create)
        app.router.add_get(f"{base}/{{sid}}.json", self._fetch)
        app.router.add_get(f"{base}/{{sid}}/Media/{{media}}", self._media_get)
        app.router.add_get("/cdn/{key}", self._cdn_get)
        return app

    def _authorized(self, request: web.Request) -> bool:
        # Parsed by hand: aiohttp.BasicAuth is deprecated from aiohttp 3.14 on.
        scheme, _, encoded = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "basic":
            return False
        try:
            login, _, password = base64.b64decode(encoded, validate=True).decode().partition(":")
        except (ValueError, UnicodeDecodeError):
            return False
        return (
            secrets.compare_digest(login.encode(), self.account_sid.encode())
            and secrets.compare_digest(password.encode(), self.auth_token.encode())
            and request.match_info["account"] == self.account_sid
        )

    def _resource(self, sid: str, fields: dict[str, Any]) -> dict[str, Any]:
        now = format_datetime(datetime.now(UTC))
        uri = f"{API}/Accounts/{self.account_sid}/Messages/{sid}"
        body = fields["body"]
        return {
            "account_sid": self.account_sid,
            "api_version": "2010-04-01",
            "body": body,
            "date_created": now,
            "date_sent": None,
            "date_updated": now,
            "direction": "outbound-api",
            "error_code": None,
            "error_message": None,
            "from": fields["from"],
            "messaging_service_sid": fields["messaging_service_sid"],
            "num_media": str(len(fields["media_urls"])),
            "num_segments": str(sms_segments(body)[1] if body else 1),
            "price": None,
            "price_unit": "USD",
            "sid": sid,
            "status": "accepted" if fields["messaging_service_sid"] else "queued",
            "subresource_uris": {"media": f"{uri}/Media.json"},
            "to": fields["to"],
            "uri": f"{uri}.json",
        }

    async def _create(self, request: web.Request) -> web.Response:
        if not self._authorized(request):
            return _twilio_error(401, 20003, "Authenticate")
        if self._failures:
            status, code, message = self._failures.pop(0)
            return _twilio_error(status, code, message)
        form = await request.post()
        to = str(form.get("To") or "")
        sender = str(form.get("From") or "") or None
        service = str(form.get("MessagingServiceSid") or "") or None
        body = str(form.get("Body") or "")
        media_urls = [str(v) for v in form.getall("MediaUrl", [])]
        if not to:
            return _twilio_error(400, 21604, "A 'To' phone number is required.")
        if not sender and not service:
            return _twilio_error(400, 21603, "A 'From' phone number is required.")
        if not body and not media_urls and not form.get("ContentSid"):
            return _twilio_error(400, 21602, "Message body is required.")
        if len(body) > _MAX_BODY:
            return _twilio_error(
                400, 21617, "The concatenated message body exceeds the 1600 character limit."
            )
        if to in self.opted_out:
            return _twilio_error(400, 21610, "Attempt to send to unsubscribed recipient")
        sid = _sid("SM")
        resource = self._resource(
            sid,
            {
                "to": to,
                "from": sender,
                "body": body,
                "media_urls": media_urls,
                "messaging_service_sid": service,
            },
        )
        self.messages.append(
            SentSms(
                sid=sid,
                to=to,
                from_=sender,
                body=body,
                media_urls=media_urls,
                status_callback=str(form.get("StatusCallback") or "") or None,
                messaging_service_sid=service,
                resource=resource,
                content_sid=str(form.get("ContentSid") or "") or None,
                content_variables=str(form.get("ContentVariables") or "") or None,
            )
        )
        return web.json_response(resource, status=201)

    async def _fetch(self, request: web.Request) -> web.Response:
        if not self._authorized(request):
            return _twilio_error(401, 20003, "Authenticate")
        sms = next((m for m in self.messages if m.sid == request.match_info["sid"]), None)
        if sms is None:
            return _twilio_error(404, 20404, f"The requested resource {request.path} was not found")
        return web.json_response(sms.resource)

    async def _media_get(self, request: web.Request) -> web.StreamResponse:
        message_sid, media_sid = request.match_info["sid"], request.match_info["media"]
        authorized = self._authorized(request)
        media = self._media.get((message_sid, media_sid))
        if self.media_requires_auth and not authorized:
            status = 401
        elif media is None or request.match_info["account"] != self.account_sid:
            status = 404
        else:
            status = 307
        self.downloads.append(
            MediaDownload(
                message_sid=message_sid, media_sid=media_sid, authorized=authorized, status=status
            )
        )
        if status == 401:
            return _twilio_error(401, 20003, "Authenticate")
        if status == 404 or media is None:
            return _twilio_error(404, 20404, f"The requested resource {request.path} was not found")
        if media.redirect_to is not None:
            raise web.HTTPTemporaryRedirect(media.redirect_to)
        # Twilio answers with a redirect to a pre-signed CDN URL that needs no credentials.
        key = secrets.token_urlsafe(24)
        self._cdn[key] = media
        raise web.HTTPTemporaryRedirect(f"{self.url}/cdn/{key}")

    async def _cdn_get(self, request: web.Request) -> web.StreamResponse:
        media = self._cdn.get(request.match_info["key"])
        if media is None:
            return web.Response(status=404, text="NoSuchKey")
        return await serve_body(request, media.data, media.content_type, media.delivery)
