"""The API's browsable reference, ``/docs``: Swagger UI served by this process from the files
that come with the ``fastapi-swagger`` package, so that it works offline (as a control room
often is) and its page needs no other origin. FastAPI's own page loads them from a CDN."""

from __future__ import annotations

from importlib import resources

from fastapi import APIRouter, Request
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse, Response

from services.errors import NotFound

__all__ = ["router"]

router = APIRouter(include_in_schema=False)

_ASSETS = resources.files("fastapi_swagger") / "resources"
_TYPES = {"swagger-ui-bundle.js": "application/javascript", "swagger-ui.css": "text/css",
          "favicon-32x32.png": "image/png"}


@router.get("/docs")
def swagger_ui(request: Request) -> HTMLResponse:
    return get_swagger_ui_html(openapi_url=request.app.openapi_url, title=f"{request.app.title} - Swagger UI",
                               swagger_js_url="/docs/swagger-ui-bundle.js", swagger_css_url="/docs/swagger-ui.css",
                               swagger_favicon_url="/docs/favicon-32x32.png")


@router.get("/docs/{name}")
def swagger_asset(name: str) -> Response:
    if name not in _TYPES:  # only these: never another file of the package
        raise NotFound(f"no /docs/{name}")
    return Response((_ASSETS / name).read_bytes(), media_type=_TYPES[name],
                    headers={"Cache-Control": "max-age=86400"})
