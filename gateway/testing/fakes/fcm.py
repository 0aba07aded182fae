"""A local Firebase Cloud Messaging: the OAuth 2.0 token endpoint and the HTTP v1 send API.

What a server-side FCM sender does, spoken as Google speaks it:

1. ``POST /token`` (the service account's ``token_uri``), form-encoded, with
   ``grant_type=urn:ietf:params:oauth:grant-type:jwt-bearer`` and ``assertion`` = a JWT signed
   RS256 with the service account's private key (``iss`` its ``client_email``, ``aud`` the
   token URI, ``scope`` including ``https://www.googleapis.com/auth/firebase.messaging``,
   ``iat``/``exp`` at most an hour apart). The fake checks the signature with the account's
   public key and answers ``{"access_token", "expires_in", "token_type": "Bearer"}``, or
   ``400 {"error": "invalid_grant", ...}``.
2. ``POST /v1/projects/{project}/messages:send`` with ``Authorization: Bearer <access token>``
   and ``{"message": {"token" | "topic" | "condition", "notification"?, "data"?, ...}}``:
   ``200 {"name": "projects/{project}/messages/{id}"}``. Errors have FCM's shape
   ``{"error": {"code", "message", "status", "details": [{"@type": ...FcmError, "errorCode"}]}}``:
   401 UNAUTHENTICATED, 400 INVALID_ARGUMENT (no target, two targets, data values that are not
   strings), 404 NOT_FOUND/UNREGISTERED for a registration token not registered with
   :meth:`FakeFcm.register`, and whatever :meth:`FakeFcm.fail_next` scripts (503 UNAVAILABLE).

Use::

    async with FakeFcm("demo-project") as fcm:
        fcm.write_service_account(path)   # a fresh RSA key; token_uri points at the fake
        fcm.register("device-token-1")
        ... (point the sender's API base at fcm.url)
        assert fcm.sent[0].message["notification"]["body"] == "..."
"""

from __future__ import annotations

import base64
import binascii
import json
import secrets
import time
from pathlib import Path
from typing import Any

import msgspec
from aiohttp import web
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from gateway.testing.fakes import FakeServer

__all__ = ["FCM_SCOPE", "FakeFcm", "SentPush"]

FCM_SCOPE = "https://www.googleapis.com/auth/firebase.messaging"
_GRANT = "urn:ietf:params:oauth:grant-type:jwt-bearer"
_FCM_ERROR = "type.googleapis.com/google.firebase.fcm.v1.FcmError"


class SentPush(msgspec.Struct, frozen=True, kw_only=True):
    """A message the fake accepted: its name and the ``message`` object as sent."""

    name: str
    message: dict[str, Any]


def _b64url_decode(part: str) -> bytes:
    return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))


def _error(code: int, status: str, message: str, error_code: str | None = None
           ) -> web.Response:
    body: dict[str, Any] = {"code": code, "message": message, "status": status}
    if error_code:
        body["details"] = [{"@type": _FCM_ERROR, "errorCode": error_code}]
    return web.json_response({"error": body}, status=code)


class FakeFcm(FakeServer):
    """FCM HTTP v1 and Google's token endpoint for one project and one service account."""

    def __init__(self, project_id: str, *,
                 client_email: str = "push@demo-project.iam.gserviceaccount.com") -> None:
        super().__init__()
        self.project_id = project_id
        self.client_email = client_email
        self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.registered: set[str] = set()
        self.sent: list[SentPush] = []
        self.tokens_issued = 0
        self._access: dict[str, float] = {}
        self._failures: list[int] = []

    @property
    def token_uri(self) -> str:
        return f"{self.url}/token"

    def service_account(self) -> dict[str, str]:
        """The service account JSON an operator downloads from the Firebase console."""
        pem = self.key.private_bytes(serialization.Encoding.PEM,
                                     serialization.PrivateFormat.PKCS8,
                                     serialization.NoEncryption()).decode()
        return {"type": "service_account", "project_id": self.project_id,
                "private_key_id": "fake-key-1", "private_key": pem,
                "client_email": self.client_email, "client_id": "1",
                "token_uri": self.token_uri}

    def write_service_account(self, path: Path) -> Path:
        path.write_text(json.dumps(self.service_account()))
        return path

    def register(self, token: str) -> None:
        """A device registration token FCM knows (others are UNREGISTERED)."""
        self.registered.add(token)

    def fail_next(self, status: int = 503, times: int = 1) -> None:
        """Answer the next ``times`` sends with ``status`` (503 UNAVAILABLE, 429 ...)."""
        self._failures.extend([status] * times)

    def build_app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/token", self._token)
        app.router.add_post("/v1/projects/{project}/messages:send", self._send)
        return app

    def _check_assertion(self, assertion: str) -> str | None:
        """Why the JWT is refused, or None."""
        parts = assertion.split(".")
        if len(parts) != 3:
            return "not a JWT"
        try:
            header = json.loads(_b64url_decode(parts[0]))
            claims = json.loads(_b64url_decode(parts[1]))
            signature = _b64url_decode(parts[2])
        except (ValueError, binascii.Error):
            return "the JWT does not decode"
        if header.get("alg") != "RS256":
            return "alg must be RS256"
        try:
            self.key.public_key().verify(signature, f"{parts[0]}.{parts[1]}".encode(),
                                         padding.PKCS1v15(), hashes.SHA256())
        except InvalidSignature:
            return "Invalid JWT Signature."
        now = time.time()
        if claims.get("iss") != self.client_email:
            return "iss is not the service account"
        if claims.get("aud") != self.token_uri:
            return "aud is not the token URI"
        if FCM_SCOPE not in str(claims.get("scope", "")).split():
            return "scope lacks firebase.messaging"
        iat, exp = claims.get("iat"), claims.get("exp")
        if not (isinstance(iat, int) and isinstance(exp, int)):
            return "iat and exp must be integers"
        if iat > now + 60 or exp < now or exp - iat > 3600:
            return "Invalid JWT: Token must be a short-lived token (60 minutes)"
        return None

    async def _token(self, request: web.Request) -> web.Response:
        form = await request.post()
        if form.get("grant_type") != _GRANT:
            return web.json_response({"error": "unsupported_grant_type",
                                      "error_description": "Invalid grant_type"}, status=400)
        why = self._check_assertion(str(form.get("assertion", "")))
        if why is not None:
            return web.json_response({"error": "invalid_grant", "error_description": why},
                                     status=400)
        token = "ya29.fake-" + secrets.token_urlsafe(24)
        self._access[token] = time.time() + 3599
        self.tokens_issued += 1
        return web.json_response({"access_token": token, "expires_in": 3599,
                                  "token_type": "Bearer"})

    async def _send(self, request: web.Request) -> web.Response:
        auth = request.headers.get("Authorization", "")
        token = auth.removeprefix("Bearer ")
        if not auth.startswith("Bearer ") or self._access.get(token, 0) < time.time():
            return _error(401, "UNAUTHENTICATED", "Request had invalid authentication "
                          "credentials. Expected OAuth 2 access token.")
        if request.match_info["project"] != self.project_id:
            return _error(403, "PERMISSION_DENIED", "Permission denied on the project.",
                          "SENDER_ID_MISMATCH")
        if self._failures:
            status = self._failures.pop(0)
            return _error(status, "UNAVAILABLE" if status >= 500 else "RESOURCE_EXHAUSTED",
                          "The service is currently unavailable.",
                          "UNAVAILABLE" if status >= 500 else "QUOTA_EXCEEDED")
        try:
            body = await request.json()
        except ValueError:
            return _error(400, "INVALID_ARGUMENT", "Invalid JSON payload received.")
        message = body.get("message") if isinstance(body, dict) else None
        if not isinstance(message, dict):
            return _error(400, "INVALID_ARGUMENT", "message is required", "INVALID_ARGUMENT")
        targets = [k for k in ("token", "topic", "condition") if k in message]
        if len(targets) != 1:
            return _error(400, "INVALID_ARGUMENT", "exactly one of token, topic or condition",
                          "INVALID_ARGUMENT")
        data = message.get("data", {})
        if not (isinstance(data, dict) and all(isinstance(v, str) for v in data.values())):
            return _error(400, "INVALID_ARGUMENT", "data values must be strings",
                          "INVALID_ARGUMENT")
        if "token" in message and message["token"] not in self.registered:
            return _error(404, "NOT_FOUND", "Requested entity was not found.", "UNREGISTERED")
        name = f"projects/{self.project_id}/messages/{secrets.randbelow(10**16)}"
        self.sent.append(SentPush(name=name, message=message))
        return web.json_response({"name": name})
