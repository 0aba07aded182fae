"""The dashboard's routes, for the OpenAPI document (gateway/openapi.py)."""

from __future__ import annotations

from gateway.plugin.openapi import Answer, Body, Method, Operation, refused


def dashboard_operations(path: str, *, token: bool) -> tuple[Operation, ...]:
    """The dashboard at ``path``; ``token`` says whether one is required (else loopback only)."""
    security = ("dashboardToken",) if token else ()
    html = Body(media_type="text/html")
    text = Body(media_type="text/plain")
    denied = (Answer(status=303, description="A browser without a session: to the login page.",
                     headers=("Location",)),
              Answer(status=401, description="No (or a wrong) token or session.", body=text),
              Answer(status=403, description="Without a token, only a loopback Host may see it; "
                                             "or a stale CSRF token on a button.", body=text))
    form = Body(media_type="application/x-www-form-urlencoded",
                schema={"type": "object", "properties": {"csrf": {"type": "string"}}})

    def page(method: Method, suffix: str, summary: str, answers: tuple[Answer, ...],
             body: Body | None = None, secured: bool = True) -> Operation:
        return Operation(method=method, path=f"{path}{suffix}", tag="dashboard",
                         summary=summary, body=body,
                         security=security if secured else (), answers=answers)

    ops = [
        page("get", "", "The operators' dashboard",
             (Answer(status=200, description="The page (server-side SVG charts).", body=html),
              *denied)),
        page("get", "/panels", "The dashboard's panels, for the page's live refresh",
             (Answer(status=200, description="HTML fragment.", body=html), *denied)),
        page("get", "/data.json", "The dashboard's snapshot as JSON",
             (Answer(status=200, description="Counts, ticket numbers, masked contacts only.",
                     body=Body(schema={"type": "object"})), *denied)),
        page("post", "/dead-letters/replay", "Re-publish every dead-lettered event",
             (Answer(status=303, description="Done; the page says what happened.",
                     headers=("Location",)),
              refused(400, "Not a form."), *denied), body=form),
        page("post", "/quarantine/replay", "Take a quarantined mail in again",
             (Answer(status=303, description="Done; the page says what happened.",
                     headers=("Location",)),
              refused(400, "Unknown adapter or quarantine id."), *denied), body=form),
    ]
    if token:  # the sign-in pages exist only with a token
        ops += [
            page("get", "/login", "The dashboard's login form",
                 (Answer(status=200, description="The form.", body=html),), secured=False),
            page("post", "/login", "Log in to the dashboard with its token",
                 (Answer(status=303, description="Logged in: a session cookie, back to the page.",
                         headers=("Location", "Set-Cookie")),
                  Answer(status=401, description="Wrong token: the form again.", body=html),
                  Answer(status=429, description="Too many attempts.", body=text,
                         headers=("Retry-After",))),
                 body=Body(media_type="application/x-www-form-urlencoded",
                           schema={"type": "object", "properties": {"token": {"type": "string"}}}),
                 secured=False),
            page("post", "/logout", "End the dashboard session",
                 (Answer(status=303, description="Logged out.", headers=("Location",)),
                  *denied[1:]),
                 body=form, secured=False),
        ]
    return tuple(ops)
