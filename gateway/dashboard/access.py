"""Who may see the dashboard: a token (or password) from the environment or a file, or, without
one, only a loopback listener and requests that name a loopback host.

With a token, a browser signs in once on the login page and gets a session cookie (HttpOnly,
SameSite=Strict, kept in memory: a restart signs everyone out); scripts send
``Authorization: Bearer <token>``. Buttons post a CSRF token bound to the session. Without a
token, the Host header must be a loopback name, so a web page that rebinds its DNS name to
127.0.0.1 still cannot read the dashboard from a visitor's browser.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time

from aiohttp import web

from gateway.plugin.limits import TokenBuckets

SESSION_COOKIE = "intake_dashboard"
SESSION_SECONDS = 12 * 3600
_LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1", "[::1]"})


def _host_name(host: str) -> str:
    if host.startswith("["):
        return host[: host.find("]") + 1]
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


class DashboardAccess:
    """Checks each dashboard request; see the module docstring."""

    def __init__(self, token: str | None, *, path: str, secure_cookie: bool) -> None:
        self.token = token
        self.path = path
        self.secure_cookie = secure_cookie
        self._sessions: dict[str, float] = {}
        self._csrf_key = secrets.token_bytes(32)
        self.login_limiter = TokenBuckets(10, 60.0, max_keys=10_000, name="dashboard_login")

    def who(self, request: web.Request) -> str | None:
        """The session key of an allowed request, or None (sign in first)."""
        if self.token is None:
            if _host_name(request.host) not in _LOOPBACK_HOSTS:
                raise web.HTTPForbidden(text="the dashboard without a token answers only "
                                        "requests to 127.0.0.1 or localhost")
            return "loopback"
        given = request.headers.get("Authorization", "").encode("utf-8", "surrogateescape")
        if hmac.compare_digest(given, f"Bearer {self.token}".encode()):
            return "bearer"
        sid = request.cookies.get(SESSION_COOKIE, "")
        expires = self._sessions.get(sid)
        if expires is not None and expires > time.monotonic():
            return sid
        self._sessions.pop(sid, None)
        return None

    def csrf(self, who: str) -> str:
        return hmac.new(self._csrf_key, who.encode(), hashlib.sha256).hexdigest()[:40]

    def check_csrf(self, who: str, given: str) -> None:
        if who == "bearer":
            return  # a header no other site can make a browser send
        if not hmac.compare_digest(self.csrf(who).encode(), given.encode("utf-8", "replace")):
            raise web.HTTPForbidden(text="stale or missing form token: reload the dashboard")

    def sign_in(self, request: web.Request, given: str, response: web.StreamResponse) -> bool:
        """Start a session when ``given`` is the token; False (and nothing set) otherwise."""
        wait = self.login_limiter.take(request.remote or "?")
        if wait:
            raise web.HTTPTooManyRequests(text="too many attempts; wait a minute",
                                          headers={"Retry-After": str(int(wait) + 1)})
        if self.token is None or not hmac.compare_digest(given.encode("utf-8", "replace"),
                                                         self.token.encode()):
            return False
        now = time.monotonic()
        for sid, expires in list(self._sessions.items()):
            if expires <= now:
                del self._sessions[sid]
        sid = secrets.token_urlsafe(32)
        self._sessions[sid] = now + SESSION_SECONDS
        response.set_cookie(SESSION_COOKIE, sid, path=self.path, httponly=True,
                            samesite="Strict", secure=self.secure_cookie,
                            max_age=SESSION_SECONDS)
        return True

    def sign_out(self, request: web.Request, response: web.StreamResponse) -> None:
        self._sessions.pop(request.cookies.get(SESSION_COOKIE, ""), None)
        response.del_cookie(SESSION_COOKIE, path=self.path)
