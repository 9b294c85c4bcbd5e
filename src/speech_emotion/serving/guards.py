"""Who may talk to the service: the Host and Origin checks, CORS, and the request-size limit (ASGI middleware).

A service on ``127.0.0.1:8000`` is reachable from any web page the user opens: the page
can make the browser POST to it (a form or a ``fetch`` without preflight), or point a DNS
name it controls at 127.0.0.1 and read the answers as its own origin (DNS rebinding).
:class:`RequestGuard` refuses both:

- **Host**: the ``Host`` header must name this server: the bind address, a loopback name
  (``localhost``, ``127.0.0.1``, ``::1``), ``testserver`` (Starlette's ``TestClient``), and for
  a wildcard bind (``0.0.0.0``, ``::``) any IP address and this machine's names; more names with
  ``allowed_hosts`` (``--allow-host``; ``*`` turns the check off). Any other name gets 400.
- **Origin**: a request that carries an ``Origin`` header (every cross-site POST from a
  browser does) must come from the server's own origin or from one of ``cors_origins``
  (``--cors-origin``); others get 403 before their body is read.

No CORS headers are sent unless ``cors_origins`` names origins. Every answer also tells the
browser not to show it inside another site's frame (``X-Frame-Options: DENY``, CSP
``frame-ancestors 'none'``: the recording page cannot be clickjacked) and not to guess
content types (``X-Content-Type-Options: nosniff``).

Example:
    >>> sorted(allowed_host_names("127.0.0.1"))
    ['127.0.0.1', '::1', 'localhost', 'testserver']
    >>> host_name("[::1]:8000"), host_name("Example.COM.:80")
    ('::1', 'example.com')
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterable
from urllib.parse import urlsplit

from fastapi.responses import JSONResponse
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException as StarletteHTTPException

LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")
"""Names of this machine that no other page can point elsewhere."""

TEST_CLIENT_NAME = "testserver"
"""The Host that Starlette's ``TestClient`` sends (not a name a foreign page can resolve here)."""

WILDCARD_BINDS = ("0.0.0.0", "::", "")
"""Bind addresses that listen on every interface."""

ANY_HOST = "*"
"""In ``allowed_hosts``: turn the Host check off (behind a proxy that checks it)."""

SECURITY_HEADERS = (
    (b"x-frame-options", b"DENY"),
    (b"content-security-policy", b"frame-ancestors 'none'"),
    (b"x-content-type-options", b"nosniff"),
)
"""Headers added to every answer (see the module docstring)."""


def error_response(status_code: int, code: str, detail: str) -> JSONResponse:
    """The service's error body, ``{"error": code, "detail": detail}``.

    The connection is closed after it: a refused request's body may still be on its way, and
    a client trickling it must not keep the connection.
    """
    return JSONResponse({"error": code, "detail": detail}, status_code=status_code, headers={"connection": "close"})


def host_name(host: str) -> str:
    """The name part of a ``Host`` header, lowercased: ``"[::1]:8000"`` → ``"::1"``."""
    host = host.strip().lower()
    if host.startswith("["):
        return host[1 : host.find("]")] if "]" in host else host
    if host.count(":") == 1:
        host = host.split(":")[0]
    return host[:-1] if host.endswith(".") else host


def allowed_host_names(bind: str, extra: Iterable[str] = ()) -> frozenset[str]:
    """Host names accepted for a server bound to ``bind``, plus ``extra`` (see the module docstring)."""
    names = {*LOOPBACK_NAMES, TEST_CLIENT_NAME, host_name(bind) if bind not in WILDCARD_BINDS else ""}
    if bind in WILDCARD_BINDS:
        for name in (socket.gethostname(), socket.getfqdn()):
            names.add(host_name(name))
    names.update(host_name(name) if name != ANY_HOST else ANY_HOST for name in extra)
    names.discard("")
    return frozenset(names)


def origin_netloc(origin: str) -> str | None:
    """``"http://Example.com:80"`` → ``"example.com"`` (default ports dropped); ``None`` for ``"null"``."""
    parts = urlsplit(origin.strip().lower())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return None
    default = {"http": 80, "https": 443}[parts.scheme]
    hostname = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    try:
        port = parts.port
    except ValueError:
        return None
    return hostname if port in (None, default) else f"{hostname}:{port}"


def check_origins(origins: Iterable[str]) -> frozenset[str]:
    """The ``host[:port]`` of each allowed origin (``"*"`` kept as is).

    Raises:
        ValueError: an entry that is not ``scheme://host[:port]`` (nor ``"*"``).

    Example:
        >>> sorted(check_origins(["http://localhost:3000", "https://app.example"]))
        ['app.example', 'localhost:3000']
    """
    return frozenset(origin if origin == ANY_HOST else _checked_origin(origin) for origin in origins)


def _checked_origin(origin: str) -> str:
    netloc = origin_netloc(origin)
    if netloc is None or urlsplit(origin.strip()).path not in ("", "/"):
        raise ValueError(
            f"cors_origins: {origin!r} is not an origin; expected scheme://host[:port], e.g. http://localhost:3000, "
            "or '*' for any"
        )
    return netloc


class RequestGuard:
    """ASGI middleware: 400 for a ``Host`` this server does not answer to, 403 for a foreign ``Origin``.

    Args:
        app: the ASGI app to guard.
        bind: the address the server listens on.
        allowed_hosts: more host names to accept (``"*"``: any).
        cors_origins: origins (``scheme://host[:port]``) allowed to call the API from a browser
            (``"*"``: any).

    Raises:
        ValueError: an entry of ``cors_origins`` that is not an origin.
    """

    def __init__(self, app, *, bind: str, allowed_hosts: Iterable[str] = (), cors_origins: Iterable[str] = ()):
        self.app = app
        self.bind = bind
        self.hosts = allowed_host_names(bind, allowed_hosts)
        self.origins = check_origins(cors_origins)
        self.any_origin = ANY_HOST in self.origins

    def _host_allowed(self, name: str) -> bool:
        if ANY_HOST in self.hosts or name in self.hosts:
            return True
        if self.bind in WILDCARD_BINDS:
            try:
                ipaddress.ip_address(name)  # an address, not a name: a page cannot rebind it
                return True
            except ValueError:
                return False
        return False

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        send = _with_security_headers(send)
        headers = Headers(scope=scope)
        host = headers.get("host", "")
        if not self._host_allowed(host_name(host)):
            shown = host[:100] or "(none)"
            detail = (
                f"Host {shown!r} is not a name of this server; use the address it listens on, or start it with "
                "--allow-host NAME"
            )
            await error_response(400, "invalid_host", detail)(scope, receive, send)
            return
        origin = headers.get("origin")
        if origin is not None:
            netloc = origin_netloc(origin)
            own = host.strip().lower()
            own = {own, own.removesuffix(":80"), own.removesuffix(":443")}  # an origin drops its default port
            if not self.any_origin and (netloc is None or (netloc not in own and netloc not in self.origins)):
                detail = (
                    f"requests from origin {origin[:100]!r} are not allowed (cross-site); call the API from the "
                    "server's own page, or start it with --cors-origin ORIGIN"
                )
                await error_response(403, "cross_origin", detail)(scope, receive, send)
                return
        await self.app(scope, receive, send)


def _with_security_headers(send):
    async def send_with_headers(message) -> None:
        if message["type"] == "http.response.start":
            present = {name.lower() for name, _ in message.get("headers", [])}
            extra = [(name, value) for name, value in SECURITY_HEADERS if name not in present]
            message = {**message, "headers": [*message.get("headers", []), *extra]}
        await send(message)

    return send_with_headers


class BodyTooLarge(StarletteHTTPException):
    """Raised from ``receive`` when a streamed body passes the limit (FastAPI re-raises HTTP exceptions)."""


class BodyLimit:
    """ASGI middleware: refuse a request body over ``max_body`` bytes with 413, before or while it streams."""

    def __init__(self, app, max_body: int):
        self.app = app
        self.max_body = max_body

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None:
            try:
                n_bytes = int(declared)
            except ValueError:
                await error_response(
                    400, "bad_request", f"Content-Length {declared.decode(errors='replace')[:40]!r} is not a number"
                )(scope, receive, send)
                return
            if n_bytes > self.max_body:
                message = (
                    f"request body of {n_bytes} bytes is more than this server's limit of {self.max_body} bytes; "
                    "send a shorter or compressed clip"
                )
                await error_response(413, "too_large", message)(scope, receive, send)
                return
        received = 0

        async def limited_receive():
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_body:
                    raise BodyTooLarge(
                        413,
                        f"request body passed this server's limit of {self.max_body} bytes; send a shorter or "
                        "compressed clip",
                    )
            return message

        await self.app(scope, limited_receive, send)
