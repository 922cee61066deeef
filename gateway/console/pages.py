"""What every console page shares: who is signed in, rendering in the operator's language, and actions.

A page is a view returning a `Page` (a template and its context). An action is a POST from one of the console's
own forms: it needs the session, a same-origin request and the form's CSRF token, and answers with a redirect
to a page that says what happened (POST/redirect/GET: a reload never repeats it), or with the problem.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, urlencode
from zoneinfo import ZoneInfo

import jinja2
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response

from gateway.admin import from_another_site
from gateway.console.i18n import LANGUAGE_COOKIE, LANGUAGES, Translator, negotiate
from gateway.console.sessions import COOKIE, Session, Sessions
from gateway.exceptions import StorageError
from gateway.ingress import Network, from_trusted_proxy
from gateway.operations import OperationError

logger = logging.getLogger(__name__)
PREFIX = "/console"
MAX_FORM_BYTES = 16_384
NOTICES = {
    "requeued": "{n} deliveries queued again.",
    "discarded": "The dead letter was discarded.",
    "paused": "The sink is paused.",
    "resumed": "The sink is running again.",
    "signed_out": "You are signed out.",
}
"""What an action's redirect may say (`?notice=`): texts of the console's own, never taken from the request."""


@dataclass
class Page:
    template: str
    context: dict[str, Any] = field(default_factory=dict)
    status: int = 200


class Problem(Exception):
    """A request the console refuses, shown as a page with this status."""

    def __init__(self, status: int, title: str, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.title = title
        self.detail = detail


Form = Mapping[str, str]


@dataclass
class Screen:
    """The console's shared parts: its sessions, its templates and the zone it shows times in."""

    sessions: Sessions
    zone: ZoneInfo
    trusted_proxies: Sequence[Network] = ()
    """server.trusted_proxies: behind one that terminates TLS, X-Forwarded-Proto says the request was HTTPS."""
    templates: jinja2.Environment = field(
        default_factory=lambda: jinja2.Environment(
            loader=jinja2.PackageLoader("gateway.console", "templates"),
            autoescape=True,
            undefined=jinja2.StrictUndefined,
            trim_blocks=True,
            lstrip_blocks=True,
        )
    )

    def session(self, request: Request) -> Session | None:
        return self.sessions.check(request.cookies.get(COOKIE))

    def render(
        self, request: Request, page: Page, session: Session | None, *, new_cookie: str | None = None
    ) -> Response:
        language = negotiate(
            request.query_params.get("lang") or request.cookies.get(LANGUAGE_COOKIE),
            request.headers.get("accept-language", ""),
        )
        words = Translator(language, self.zone)
        notice = request.query_params.get("notice")
        count = request.query_params.get("n", "")
        context = {
            **page.context,
            "_": words.gettext,
            "t": words,
            "lang": language,
            "languages": LANGUAGES,
            "path": request.url.path,
            "here": _same_page_with,
            "query": request.query_params,
            "csrf": self.sessions.csrf(session) if session is not None else "",
            "signed_in": session is not None,
            "can_sign_out": session is not None and not self.sessions.open,
            "notice": words.gettext(NOTICES[notice], n=int(count) if count.isdigit() else 0)
            if notice in NOTICES
            else None,
        }
        html = self.templates.get_template(page.template).render(context)
        response = HTMLResponse(html, page.status, headers=SECURITY_HEADERS)
        if new_cookie is not None:
            self.set_session(request, response, new_cookie)
        if request.query_params.get("lang") in LANGUAGES:
            response.set_cookie(LANGUAGE_COOKIE, language, max_age=365 * 86400, path=PREFIX, samesite="strict")
        return response

    def set_session(self, request: Request, response: Response, cookie: str) -> None:
        response.set_cookie(
            COOKIE,
            cookie,
            max_age=int(self.sessions.lifetime),
            path=PREFIX,
            httponly=True,
            samesite="strict",
            secure=self.over_tls(request),
        )

    def over_tls(self, request: Request) -> bool:
        if request.url.scheme == "https":
            return True
        peer = request.client.host if request.client else None
        forwarded = request.headers.get("x-forwarded-proto", "").lower()
        return from_trusted_proxy(peer, self.trusted_proxies) and forwarded.split(",")[0].strip() == "https"

    def page(self, view: Callable[[Request], Awaitable[Page]]) -> Callable[[Request], Awaitable[Response]]:
        """A GET endpoint: signed in (or sent to sign in), the view's page rendered, its problems shown."""

        async def endpoint(request: Request) -> Response:
            session, new_cookie = self.session(request), None
            if session is None:
                if not self.sessions.open:
                    target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
                    return RedirectResponse(f"{PREFIX}/sign-in?{urlencode({'next': target})}", 303)
                new_cookie = self.sessions.new()
                session = self.sessions.check(new_cookie)
            try:
                page = await view(request)
            except (Problem, OperationError, StorageError) as error:
                page = problem_page(error)
            return self.render(request, page, session, new_cookie=new_cookie)

        return endpoint

    def action(self, act: Callable[[Request, Form], Awaitable[str]]) -> Callable[[Request], Awaitable[Response]]:
        """A POST endpoint: the console's own form, from a signed-in operator, or refused; then a redirect."""

        async def endpoint(request: Request) -> Response:
            session = self.session(request)
            try:
                form = await self.checked_form(request, session)
                target = await act(request, form)
            except (Problem, OperationError, StorageError) as error:
                return self.render(request, problem_page(error), session)
            return RedirectResponse(target, 303)

        return endpoint

    async def checked_form(self, request: Request, session: Session | None) -> Form:
        """The posted form, if it comes from this console: same origin, signed in, with the session's CSRF token."""
        if from_another_site(request) is not None:
            raise Problem(403, "Refused", "This form was sent from another site.")
        form = await read_form(request)
        if session is None:
            raise Problem(403, "Signed out", "Your session has ended: sign in again, then repeat the action.")
        if not self.sessions.csrf_valid(session, form.get("csrf", "")):
            raise Problem(403, "Refused", "This form did not come from this console, or has expired: reload the page.")
        return form


SECURITY_HEADERS = {
    # only the console's own files: no inline script, nothing from elsewhere, not framed by another site
    "content-security-policy": "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'; form-action 'self'",
    "x-content-type-options": "nosniff",
    "referrer-policy": "same-origin",
    "cache-control": "no-store",
}


async def read_form(request: Request) -> dict[str, str]:
    """An urlencoded form of at most MAX_FORM_BYTES (the console's forms are small), its last value per name."""
    media = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media != "application/x-www-form-urlencoded":
        raise Problem(415, "Refused", "Send the console's own form.")
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_FORM_BYTES:
            raise Problem(413, "Refused", "The form is too large.")
    try:
        return dict(parse_qsl(body.decode("utf-8"), keep_blank_values=True))
    except (UnicodeDecodeError, ValueError):
        raise Problem(400, "Refused", "The form is not readable.") from None


def problem_page(error: Problem | OperationError | StorageError) -> Page:
    """The page that shows why a request was refused or failed."""
    if isinstance(error, Problem):
        return Page("problem.html", {"title": error.title, "detail": error.detail}, error.status)
    if isinstance(error, OperationError):
        status = error.status_code
        return Page(
            "problem.html", {"title": "Not done" if status != 404 else "Not found", "detail": error.detail}, status
        )
    logger.error("console: storage failed: %s", error)
    return Page(
        "problem.html", {"title": "Storage unavailable", "detail": "The store cannot be read now; retry later."}, 503
    )


def _same_page_with(query: Mapping[str, str], **changes: str | None) -> str:
    """The current query string with `changes` (None removes a parameter), for filters and pagination links."""
    merged = {key: value for key, value in query.items() if key not in ("notice", "n", "lang")}
    for key, value in changes.items():
        if value is None:
            merged.pop(key, None)
        else:
            merged[key] = value
    return "?" + urlencode(merged) if merged else "?"


def within_console(target: str | None, default: str) -> str:
    """`target` when it is a page of the console, else `default`: never another site (`//evil.example`,
    `/\\evil.example`, `https://...`)."""
    if (
        target
        and all(c.isalnum() or c in "-/_?=&.%+~" for c in target)
        and (target == PREFIX or target.startswith((f"{PREFIX}/", f"{PREFIX}?")))
        and "//" not in target
        and ".." not in target
    ):
        return target
    return default


def notice(path: str, key: str, count: int | None = None) -> str:
    """Where an action sends the operator: `path`, saying what happened."""
    assert key in NOTICES
    query = {"notice": key, **({"n": str(count)} if count is not None else {})}
    return f"{path}{'&' if '?' in path else '?'}{urlencode(query)}"
