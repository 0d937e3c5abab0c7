"""The API's errors, and the one body shape every error has.

    {"error": {"code": "not_found", "message": "no such device"}}

Raise an :class:`ApiError` subclass from a route; :func:`install` maps it (and FastAPI's
own validation and HTTP errors) to that shape, so clients parse one thing.
"""

from __future__ import annotations

import math

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException

__all__ = ["ApiError", "Conflict", "ErrorBody", "Forbidden", "InvalidRequest", "NotAuthenticated", "NotFound",
           "PayloadTooLarge", "TooManyRequests", "error_response", "install"]


class ApiError(Exception):
    status = 400
    code = "bad_request"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def headers(self) -> dict[str, str] | None:
        return {"WWW-Authenticate": "Bearer"} if self.status == 401 else None


class InvalidRequest(ApiError):
    status, code = 422, "invalid_request"


class NotAuthenticated(ApiError):
    status, code = 401, "not_authenticated"


class Forbidden(ApiError):
    status, code = 403, "forbidden"


class NotFound(ApiError):
    status, code = 404, "not_found"


class Conflict(ApiError):
    status, code = 409, "conflict"


class PayloadTooLarge(ApiError):
    status, code = 413, "payload_too_large"


class TooManyRequests(ApiError):
    status, code = 429, "rate_limited"

    def __init__(self, message: str, *, retry_after_s: float) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s

    def headers(self) -> dict[str, str] | None:
        return {"Retry-After": str(max(1, math.ceil(self.retry_after_s)))}


class ErrorDetail(BaseModel):
    code: str
    message: str


class ErrorBody(BaseModel):
    error: ErrorDetail


def error_response(error: ApiError) -> JSONResponse:
    """The response for ``error``, for code outside FastAPI's handlers (ASGI middleware)."""
    return _body(error.code, error.message, error.status, error.headers())


def _body(code: str, message: str, status: int, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "message": message}}, status_code=status, headers=headers)


def install(app: FastAPI) -> None:
    async def api_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, ApiError)
        return error_response(exc)

    async def validation_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        first = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid request"}
        where = ".".join(str(p) for p in first.get("loc", ()))
        return _body("invalid_request", f"{where}: {first.get('msg')}", 422)

    async def http_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, StarletteHTTPException)
        return _body({404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error"),
                     str(exc.detail), exc.status_code)

    app.add_exception_handler(ApiError, api_error)
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(StarletteHTTPException, http_error)
