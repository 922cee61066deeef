"""Sign in with the admin token, sign out."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route

from gateway.admin import from_another_site
from gateway.console.pages import (
    PREFIX,
    Page,
    Problem,
    Screen,
    notice,
    problem_page,
    read_form,
    within_console,
)
from gateway.console.sessions import COOKIE


def routes(screen: Screen) -> list[Route]:
    async def form(request: Request) -> Response:
        if screen.sessions.open:  # nothing to sign in with: every visitor on loopback is signed in
            return RedirectResponse(f"{PREFIX}/", 303)
        target = within_console(request.query_params.get("next"), f"{PREFIX}/")
        return screen.render(request, Page("sign_in.html", {"next": target, "wrong": False}), None)

    async def sign_in(request: Request) -> Response:
        try:
            if from_another_site(request) is not None:
                raise Problem(403, "Refused", "This form was sent from another site.")
            given = await read_form(request)
        except Problem as problem:
            return screen.render(request, problem_page(problem), None)
        target = within_console(given.get("next"), f"{PREFIX}/")
        cookie = screen.sessions.sign_in(given.get("token", ""))
        if cookie is None:
            page = Page("sign_in.html", {"next": target, "wrong": True}, 401)
            return screen.render(request, page, None)
        response = RedirectResponse(target, 303)
        screen.set_session(request, response, cookie)
        return response

    async def sign_out(request: Request) -> Response:
        session = screen.session(request)
        try:
            await screen.checked_form(request, session)
        except Problem as problem:
            return screen.render(request, problem_page(problem), session)
        response = RedirectResponse(notice(f"{PREFIX}/sign-in", "signed_out"), 303)
        response.delete_cookie(COOKIE, path=PREFIX, httponly=True, samesite="strict")
        return response

    return [
        Route("/sign-in", form, methods=["GET"]),
        Route("/sign-in", sign_in, methods=["POST"]),
        Route("/sign-out", sign_out, methods=["POST"]),
    ]
