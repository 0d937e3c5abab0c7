"""The one error hierarchy of Watchfloor's services and its API.

    ServiceError            a refusal a caller can act on (400)
    ├── UnusableOffer       a WHIP/WHEP SDP offer the relay will not take (400)
    ├── InvalidRequest      the request is malformed or breaks a rule (422)
    ├── NotAuthenticated    no valid token or credentials (401)
    ├── Forbidden           the caller's role or area does not allow it (403)
    ├── NotFound            no such thing, or not one the caller may know of (404)
    ├── MethodNotAllowed    the path does not take this HTTP method (405)
    ├── Conflict            the state does not allow it now (409)
    ├── PayloadTooLarge     the body is over its limit (413)
    ├── UnsupportedMediaType the body is not of the type the route takes (415)
    ├── TooManyRequests     a rate limit is used up; ``retry_after_s`` says when to retry (429)
    │   └── Overloaded      too much of a costly thing at once in this process (503)
    └── Unavailable         a part the request needs (e.g. the cameras' broker) did not do it (503)

Each class carries the HTTP status and the ``code`` its response body shows, so that the
mapping to HTTP is written in one place, here; :mod:`api.errors` only renders it. A pure
decision that names its refusal by code (:class:`services.consent.Denied`) turns it into
the exception with :func:`refusal`, so no second table of codes exists.
"""

from __future__ import annotations

import math

__all__ = ["Conflict", "Forbidden", "InvalidRequest", "MethodNotAllowed", "NotAuthenticated", "NotFound", "Overloaded",
           "PayloadTooLarge", "ServiceError", "TooManyRequests", "Unavailable", "UnsupportedMediaType", "UnusableOffer",
           "refusal"]


class ServiceError(Exception):
    status = 400
    code = "bad_request"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def headers(self) -> dict[str, str] | None:
        return {"WWW-Authenticate": "Bearer"} if self.status == 401 else None


class UnusableOffer(ServiceError):
    status, code = 400, "invalid_offer"


class InvalidRequest(ServiceError):
    status, code = 422, "invalid_request"


class NotAuthenticated(ServiceError):
    status, code = 401, "not_authenticated"


class Forbidden(ServiceError):
    status, code = 403, "forbidden"


class NotFound(ServiceError):
    status, code = 404, "not_found"


class MethodNotAllowed(ServiceError):
    status, code = 405, "method_not_allowed"


class Conflict(ServiceError):
    status, code = 409, "conflict"


class PayloadTooLarge(ServiceError):
    status, code = 413, "payload_too_large"


class UnsupportedMediaType(ServiceError):
    status, code = 415, "unsupported_media_type"


class TooManyRequests(ServiceError):
    status, code = 429, "rate_limited"

    def __init__(self, message: str, *, retry_after_s: float) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s

    def headers(self) -> dict[str, str] | None:
        return {"Retry-After": str(max(1, math.ceil(self.retry_after_s)))}


class Overloaded(TooManyRequests):
    """Not the caller's rate but the process's capacity (e.g. password checks at once)."""

    status, code = 503, "overloaded"


class Unavailable(ServiceError):
    """Nothing the caller did wrong: a part the request depends on could not be reached or
    refused, and nothing was changed (the request's transaction is not committed)."""

    status, code = 503, "unavailable"


# The refusals that take only a message (TooManyRequests also needs its retry time).
_BY_CODE: dict[str, type[ServiceError]] = {cls.code: cls for cls in (
    UnusableOffer, InvalidRequest, NotAuthenticated, Forbidden, NotFound, MethodNotAllowed, Conflict,
    PayloadTooLarge, UnsupportedMediaType)}


def refusal(code: str, message: str) -> ServiceError:
    """The refusal whose ``code`` is ``code`` (KeyError for a code no class has)."""
    return _BY_CODE[code](message)
