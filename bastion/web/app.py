"""The console's HTTP surface: routes, who may call them, cookies and CSRF.

Every route is declared once in `ROUTES` with the `Permission` it needs (the matrix is
`webpolicy`); `_guarded` resolves the signed-in person from the session cookie, refuses
the signed-out (a redirect to the sign-in page for pages, 401 for the rest), refuses a
role without the permission (403), and on every POST checks the CSRF token before the
handler runs. Handlers are plain functions run on a worker thread (the service API is
synchronous and SQLite-backed), each given a `Request` and a service acting as the person.

Cookies: the session cookie is HttpOnly, SameSite=Lax and, with TLS, Secure; its value
is a random token the store knows only by its hash. Lax (not Strict) so that a link to a
page (a chat notification "approval waiting") opens signed in; every state change is a
POST, which a cross-site page can't make with the cookie, and carries a CSRF token
besides: SHA-256 of the session token under a fixed label, checked in constant time (it
can't be forged without the cookie, and reveals nothing of it). The sign-in form has
the same double-submit token on a short-lived pre-session cookie.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import math
import secrets
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import jinja2
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import FormData
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles

from bastion.clock import Clock
from bastion.errors import BastionError
from bastion.models import WebUser
from bastion.service import Bastion
from bastion.timespec import format_duration, format_time
from bastion.webaccounts import WebAccounts
from bastion.webpolicy import Permission, SignInThrottle, allowed

log = logging.getLogger("bastion.web")

PACKAGE = Path(__file__).resolve().parent
STATIC = PACKAGE / "static"
SESSION_COOKIE = "bastion_session"
PRE_COOKIE = "bastion_pre"
_CSP = (
    "default-src 'self'; script-src 'self' 'wasm-unsafe-eval'; style-src 'self' 'unsafe-inline';"
    " img-src 'self' data:; worker-src 'self' blob:; connect-src 'self'; frame-ancestors 'none';"
    " form-action 'self'; base-uri 'none'"
)
_STATUS = {2: 400, 3: 404, 4: 409}


def csrf_token(secret: str) -> str:
    return hashlib.sha256(b"bastion-csrf\0" + secret.encode()).hexdigest()


@dataclass
class Console:
    """What the handlers share: the service (as the console itself), templates, throttle."""

    bastion: Bastion
    clock: Clock
    tls: bool
    throttle: SignInThrottle
    templates: jinja2.Environment = field(init=False)
    # Handlers run on worker threads; the throttle is a plain value.
    throttle_lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        self.templates = jinja2.Environment(
            loader=jinja2.FileSystemLoader(PACKAGE / "templates"),
            autoescape=True,
            undefined=jinja2.StrictUndefined,
        )
        self.templates.filters["time"] = lambda v: format_time(v) if v else ""
        self.templates.filters["duration"] = format_duration
        self.templates.filters["q"] = lambda v: quote(str(v), safe="")
        # A link's moment, rounded up to the millisecond: never just before the frame.
        self.templates.filters["at"] = lambda v: f"{math.ceil(float(v) * 1000) / 1000:.3f}"

    @property
    def accounts(self) -> WebAccounts:
        return WebAccounts(self.bastion)

    @property
    def player_built(self) -> bool:
        return (STATIC / "vendor" / "asciinema-player.min.js").is_file()


@dataclass
class Call:
    """One request, as a handler sees it."""

    console: Console
    request: Request
    form: FormData | None
    user: WebUser | None
    session_token: str = ""

    @property
    def service(self) -> Bastion:
        assert self.user is not None
        return self.console.bastion.acting_as(self.user.name)

    @property
    def client(self) -> str:
        return self.request.client.host if self.request.client else "-"

    def field(self, name: str, default: str = "") -> str:
        value = self.form.get(name) if self.form is not None else None
        return value.strip() if isinstance(value, str) else default

    def arg(self, name: str) -> str:
        return self.request.query_params.get(name, "").strip()

    def page(self, template: str, status: int = 200, **values: Any) -> HTMLResponse:
        user = self.user
        context = {
            "user": user,
            "can": {p.value: user is not None and allowed(user.role, p) for p in Permission},
            "csrf": csrf_token(self.session_token) if self.session_token else "",
            "path": self.request.url.path,
            "now": self.console.clock.now(),
            **values,
        }
        html = self.console.templates.get_template(template).render(context)
        return HTMLResponse(html, status_code=status)

    def error(self, message: str, status: int) -> HTMLResponse:
        return self.page("error.html", status=status, message=message)


Handler = Callable[[Call], Response]


def _secure_headers(response: Response) -> Response:
    response.headers["Content-Security-Policy"] = _CSP
    response.headers["X-Frame-Options"] = "DENY"
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Referrer-Policy"] = "no-referrer"  # login links carry their token
    response.headers.setdefault("Cache-Control", "no-store")
    return response


def _guarded(console: Console, permission: Permission | None, handler: Handler) -> Any:
    """An endpoint that checks sign-in, permission and (on POST) CSRF, then runs `handler`
    on a worker thread. `permission` None: a public page (sign-in, login link)."""

    async def endpoint(request: Request) -> Response:
        form = await request.form() if request.method == "POST" else None
        try:
            response = await run_in_threadpool(_run, console, permission, handler, request, form)
        finally:
            if form is not None:
                await form.close()
        return _secure_headers(response)

    return endpoint


def _run(
    console: Console,
    permission: Permission | None,
    handler: Handler,
    request: Request,
    form: FormData | None,
) -> Response:
    token = request.cookies.get(SESSION_COOKIE, "")
    user = console.accounts.session_user(token) if token else None
    call = Call(console, request, form, user, token if user else "")
    if permission is not None:
        if user is None:
            if request.method == "GET" and "text/html" in request.headers.get("accept", ""):
                target = quote(request.url.path, safe="/")
                return RedirectResponse(f"/signin?next={target}", status_code=303)
            return call.error("sign in first", 401)
        if request.method == "POST" and not _csrf_ok(call, token):
            return call.error("missing or wrong CSRF token: reload the page and try again", 403)
        if not allowed(user.role, permission):
            return call.error(f"your role ({user.role.value}) may not do this", 403)
    try:
        return handler(call)
    except BastionError as exc:
        return call.error(str(exc), _STATUS.get(exc.exit_code, 500))


def _csrf_ok(call: Call, secret: str) -> bool:
    sent = call.field("csrf") or call.request.headers.get("x-csrf-token", "")
    return bool(secret) and hmac.compare_digest(sent.encode(), csrf_token(secret).encode())


# -- signing in and out ---------------------------------------------------------------------


def _signin_page(call: Call, status: int = 200, message: str = "") -> Response:
    pre = call.request.cookies.get(PRE_COOKIE) or secrets.token_urlsafe(24)
    response = call.page(
        "signin.html",
        status=status,
        message=message,
        pre_csrf=csrf_token(pre),
        next=_safe_next(call.arg("next") or call.field("next")),
        link_token=call.request.path_params.get("token", ""),
    )
    response.set_cookie(
        PRE_COOKIE, pre, max_age=3600, httponly=True, samesite="strict", secure=call.console.tls
    )
    return response


def _safe_next(value: str) -> str:
    """Only a path of this site (no `//host`, no scheme): never an open redirect."""
    if value.startswith("/") and not value.startswith("//") and "\\" not in value:
        return value
    return "/sessions"


def signin_form(call: Call) -> Response:
    if call.user is not None:
        return RedirectResponse(_safe_next(call.arg("next")), status_code=303)
    return _signin_page(call)


def signin(call: Call) -> Response:
    if not _pre_csrf_ok(call):
        return _signin_page(call, 403, "the form expired: try again")
    name, password = call.field("name"), call.field("password")
    keys = (f"user:{name}", f"client:{call.client}")
    refused = _throttled(call, keys)
    if refused is not None:
        return refused
    try:
        signed = call.console.accounts.sign_in_password(name, password, call.client)
    except BastionError as exc:
        return _failed(call, keys, exc)
    with call.console.throttle_lock:
        call.console.throttle.succeeded(keys[0])
    return _signed_in(call, signed.token, _safe_next(call.field("next")))


def _throttled(call: Call, keys: tuple[str, ...]) -> Response | None:
    with call.console.throttle_lock:
        wait = call.console.throttle.retry_after(keys, call.console.clock.now())
    if wait is None:
        return None
    seconds = max(1, int(wait.total_seconds()) + 1)
    response = _signin_page(call, 429, f"too many failed sign-ins: try again in {seconds}s")
    response.headers["Retry-After"] = str(seconds)
    return response


def _failed(call: Call, keys: tuple[str, ...], exc: BastionError) -> Response:
    with call.console.throttle_lock:
        call.console.throttle.failed(keys, call.console.clock.now())
    return _signin_page(call, 401, str(exc))


def link_form(call: Call) -> Response:
    # A GET never uses the link (chat and mail previews fetch links): a button does.
    return _signin_page(call)


def link_signin(call: Call) -> Response:
    if not _pre_csrf_ok(call):
        return _signin_page(call, 403, "the form expired: try again")
    keys = (f"client:{call.client}",)
    refused = _throttled(call, keys)
    if refused is not None:
        return refused
    try:
        signed = call.console.accounts.sign_in_link(call.field("token"), call.client)
    except BastionError as exc:
        return _failed(call, keys, exc)
    return _signed_in(call, signed.token, "/approvals")


def signout(call: Call) -> Response:
    call.console.accounts.sign_out(call.session_token, call.client)
    response = RedirectResponse("/signin", status_code=303)
    response.delete_cookie(SESSION_COOKIE, httponly=True, samesite="lax", secure=call.console.tls)
    return response


def _pre_csrf_ok(call: Call) -> bool:
    return _csrf_ok(call, call.request.cookies.get(PRE_COOKIE, ""))


def _signed_in(call: Call, token: str, next_path: str) -> Response:
    response = RedirectResponse(next_path, status_code=303)
    ttl = call.console.bastion.home.config.web.session_ttl
    response.set_cookie(
        SESSION_COOKIE,
        token,
        max_age=int(ttl.total_seconds()),
        httponly=True,
        samesite="lax",
        secure=call.console.tls,
    )
    response.delete_cookie(PRE_COOKIE, httponly=True, samesite="strict", secure=call.console.tls)
    return response


# -- the application ------------------------------------------------------------------------


def create_app(bastion: Bastion, clock: Clock, *, tls: bool = False) -> Starlette:
    from bastion.web import live, pages

    web = bastion.home.config.web
    console = Console(
        bastion, clock, tls, SignInThrottle(limit=web.signin_limit, window=web.signin_window)
    )
    R, D, V, K, U = (
        Permission.READ,
        Permission.DECIDE,
        Permission.REVOKE,
        Permission.KILL,
        Permission.USERS,
    )
    table: list[tuple[str, str, Permission | None, Handler]] = [
        ("/signin", "GET", None, signin_form),
        ("/signin", "POST", None, signin),
        ("/link/{token}", "GET", None, link_form),
        ("/link", "POST", None, link_signin),
        ("/signout", "POST", R, signout),
        ("/", "GET", R, lambda call: RedirectResponse("/sessions", status_code=303)),
        ("/sessions", "GET", R, pages.sessions),
        ("/sessions/{id}", "GET", R, pages.session),
        ("/sessions/{id}/cast", "GET", R, live.cast),
        ("/sessions/{id}/live", "GET", R, pages.live_page),
        ("/sessions/{id}/kill", "POST", K, pages.kill),
        ("/search", "GET", R, pages.search),
        ("/approvals", "GET", R, pages.approvals),
        ("/approvals/{id}/{verdict:str}", "POST", D, pages.decide_approval),
        ("/requests/{id}/{verdict:str}", "POST", D, pages.decide_request),
        ("/grants", "GET", R, pages.grants),
        ("/grants/{id}/revoke", "POST", V, pages.revoke),
        ("/users", "GET", U, pages.users),
        ("/users/{name}/remove", "POST", U, pages.remove_user),
    ]
    routes: list[BaseRoute] = [
        Route(path, _guarded(console, perm, handler), methods=[method])
        for path, method, perm, handler in table
    ]
    routes.append(Route("/sessions/{id}/live/events", live.events_endpoint(console)))
    routes.append(Mount("/static", StaticFiles(directory=STATIC), name="static"))
    app = Starlette(routes=routes)
    app.state.console = console
    app.state.routes_table = [(p, m, perm) for p, m, perm, _ in table] + [
        ("/sessions/{id}/live/events", "GET", R)
    ]
    return app
