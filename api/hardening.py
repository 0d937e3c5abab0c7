"""HTTP hardening for every response: a request-body size limit (413 in the one error shape)
and security headers (a strict Content-Security-Policy and friends).

Both are plain ASGI middleware: they see every request, including ones no route matches, and
cost one header scan each. The body limit reads ``Content-Length`` first and also counts a
chunked body as it arrives, so a client cannot stream past it.
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import urlsplit

from fastapi import FastAPI
from starlette.datastructures import Headers, MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.client_address import networks
from api.errors import error_response
from api.feed_slots import FeedSlots
from api.limits import ApiLimits, Attempts, RateLimiter, Verifications
from core.settings import Settings
from services.errors import PayloadTooLarge

__all__ = ["API_CSP", "DOCS_CSP", "WS_MAX_BYTES", "BodyLimit", "SecurityHeaders", "install"]

#: The largest websocket message the server takes (uvicorn's ``ws_max_size``): the live feed
#: reads only its auth message, a token of a few KiB; uvicorn's default is 16 MiB.
WS_MAX_BYTES = 65_536

#: The dashboard is static files from this origin: no inline script or style, no other
#: origin. 'self' in connect-src covers the same origin's ws:// and wss:// (CSP Level 3, as
#: Chromium implements it; tests/test_security_api.py opens the live feed under it).
API_CSP = ("default-src 'self'; script-src 'self'; connect-src 'self'; img-src 'self' data:; style-src 'self'; "
           "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'")
#: /docs (Swagger UI, served from this origin) starts itself with an inline script.
DOCS_CSP = ("default-src 'self'; script-src 'self' 'unsafe-inline'; style-src 'self' 'unsafe-inline'; "
            "img-src 'self' data:; connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'")
_DOCS_PATHS = ("/docs",)
_COMMON = (
    ("x-content-type-options", "nosniff"),
    ("x-frame-options", "DENY"),
    ("referrer-policy", "no-referrer"),
    ("cross-origin-opener-policy", "same-origin"),
    ("cross-origin-resource-policy", "same-origin"),
    ("permissions-policy", "camera=(), microphone=(), geolocation=(), payment=(), usb=()"),
    # Browsers ignore it over plain HTTP, and keep to HTTPS once they have seen it over HTTPS.
    ("strict-transport-security", "max-age=31536000"),
)


class _TooLarge(BaseException):
    """Raised from ``receive`` past the limit. A BaseException, so that FastAPI's body parsing
    (which turns an ``Exception`` into a 400) lets it through to :class:`BodyLimit`."""


class BodyLimit:
    """Refuse request bodies over ``max_bytes`` with 413."""

    def __init__(self, app: ASGIApp, *, max_bytes: int) -> None:
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = Headers(scope=scope).get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await self._refuse(scope, receive, send)
            return
        seen = 0
        started = False

        async def counted() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    raise _TooLarge()
            return message

        async def watched(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counted, watched)
        except _TooLarge:
            if started:  # the route answered before reading it all; nothing more to say
                return
            await self._refuse(scope, receive, send)

    async def _refuse(self, scope: Scope, receive: Receive, send: Send) -> None:
        response = error_response(PayloadTooLarge(f"request bodies are limited to {self.max_bytes} bytes"))
        response.headers["connection"] = "close"  # the rest of the body is not read
        await response(scope, receive, send)


class SecurityHeaders:
    """Add the security headers to every HTTP response that does not set them itself."""

    def __init__(self, app: ASGIApp, *, csp: str = API_CSP) -> None:
        self.app, self.csp = app, csp

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path: str = scope.get("path", "")
        csp = DOCS_CSP if path.startswith(_DOCS_PATHS) else self.csp
        api = path.startswith("/api/")

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                for name, value in (("content-security-policy", csp), *_COMMON):
                    if name not in headers:
                        headers[name] = value
                if api and "cache-control" not in headers:
                    headers["cache-control"] = "no-store"  # answers carry positions and names
            await send(message)

        await self.app(scope, receive, with_headers)


def _csp(settings: Settings) -> str:
    """The CSP, with the map tile server's origin allowed for images when one is configured."""
    if not settings.map_tiles_url:
        return API_CSP
    parts = urlsplit(settings.map_tiles_url)
    host = re.sub(r"\{[^}]*\}", "*", parts.netloc)  # https://{s}.tiles.example -> https://*.tiles.example
    origin = f"{parts.scheme}://{host}" if "*" not in host.lstrip("*") else f"{parts.scheme}:"
    return API_CSP.replace("img-src 'self' data:", f"img-src 'self' data: {origin}")


def install(app: FastAPI, *, settings: Settings) -> None:
    """The body limit, the security headers and the rate limiters (``app.state.limits``)."""
    app.state.limits = ApiLimits(
        user=RateLimiter(rate_per_s=settings.rate_limit_user_per_s, burst=settings.rate_limit_user_burst,
                         what="requests"),
        sign_in=Attempts(
            per_client=RateLimiter(rate_per_s=settings.rate_limit_sign_in_failures_per_min / 60,
                                   burst=settings.rate_limit_sign_in_failures_burst, what="failed sign-ins"),
            per_account=RateLimiter(rate_per_s=settings.rate_limit_sign_in_user_failures_per_min / 60,
                                    burst=settings.rate_limit_sign_in_user_failures_burst,
                                    what="failed sign-ins for this name from new addresses")),
        device=Attempts(
            per_client=RateLimiter(rate_per_s=settings.rate_limit_device_per_min / 60,
                                   burst=settings.rate_limit_device_burst, what="requests from this device"),
            per_account=RateLimiter(rate_per_s=settings.rate_limit_device_all_clients_per_min / 60,
                                    burst=settings.rate_limit_device_all_clients_burst,
                                    what="failed requests for this device from new addresses")),
        verifications=Verifications(settings.sign_in_max_concurrent),
        feeds=FeedSlots(per_user=settings.live_max_feeds_per_user, unauthenticated=settings.live_max_unauthenticated),
        proxies=networks(settings.trusted_proxies))
    # Added last is outermost: the headers go on the body limit's 413 too.
    app.add_middleware(BodyLimit, max_bytes=settings.max_request_bytes)
    app.add_middleware(SecurityHeaders, csp=_csp(settings))
    _document_bearer_auth(app)


_PUBLIC = frozenset({"/api/v1/auth/token"})


def _document_bearer_auth(app: FastAPI) -> None:
    """Say in the OpenAPI description which operations need a bearer token (every one under
    /api/v1/ but sign-in): clients and fuzzers (schemathesis's ignored-auth check) read it."""
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema:
            return app.openapi_schema
        spec = generate()
        spec.setdefault("components", {}).setdefault("securitySchemes", {})["bearer"] = {
            "type": "http", "scheme": "bearer", "bearerFormat": "JWT",
            "description": "a token from POST /api/v1/auth/token or the OIDC provider; for WHIP, the device's "
                           "own secret"}
        for path, operations in spec.get("paths", {}).items():
            if path.startswith("/api/v1/") and path not in _PUBLIC:
                for operation in operations.values():
                    operation.setdefault("security", [{"bearer": []}])
        return spec

    app.openapi = openapi  # type: ignore[method-assign]
