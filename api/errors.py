"""The one body shape every error of the API has.

    {"error": {"code": "not_found", "message": "no such device"}}

Raise a :class:`services.errors.ServiceError` subclass; :func:`install` maps it (and
FastAPI's own validation and HTTP errors) to that shape, so clients parse one thing.
"""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException

from services.errors import InvalidRequest, MethodNotAllowed, NotFound, ServiceError

__all__ = ["ErrorBody", "error_response", "install"]


class ErrorDetail(BaseModel):
    code: str
    message: str


class ErrorBody(BaseModel):
    error: ErrorDetail


def error_response(error: ServiceError) -> JSONResponse:
    """The response for ``error``, for code outside FastAPI's handlers (ASGI middleware)."""
    return _body(error.code, error.message, error.status, error.headers())


def _body(code: str, message: str, status: int, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "message": message}}, status_code=status, headers=headers)


def install(app: FastAPI) -> None:
    async def api_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, ServiceError)
        return error_response(exc)

    async def validation_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        first = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid request"}
        where = ".".join(str(p) for p in first.get("loc", ()))
        return error_response(InvalidRequest(f"{where}: {first.get('msg')}"))

    async def http_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, StarletteHTTPException)
        # Starlette's routing refuses by status (no such path, not this method): render those as
        # the hierarchy's refusals; any other status keeps its number.
        for refusal in (NotFound, MethodNotAllowed):
            if exc.status_code == refusal.status:
                return error_response(refusal(str(exc.detail)))
        return _body("http_error", str(exc.detail), exc.status_code)

    app.add_exception_handler(ServiceError, api_error)
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(StarletteHTTPException, http_error)
