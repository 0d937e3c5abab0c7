"""The control-room page: ``/`` (index.html), its scripts and styles, the map's offline base
layer and the page's configuration. None of it needs a token: the page signs in itself and
holds its token in ``sessionStorage``; every piece of data it shows comes from ``/api/v1``."""

from __future__ import annotations

from importlib import resources

from fastapi import APIRouter, FastAPI
from fastapi.responses import FileResponse, Response
from fastapi.staticfiles import StaticFiles

from core.settings import Settings
from dashboard import static_dir

__all__ = ["BOROUGHS_CREDIT", "TUBE_CREDIT", "install"]

#: The borough outlines' licence (UK OGL v3) asks for this attribution wherever they are shown.
BOROUGHS_CREDIT = ("Borough outlines: contains National Statistics data © Crown copyright and database right 2015; "
                   "contains Ordnance Survey data © Crown copyright and database right 2015 (Open Government "
                   "Licence v3, London Datastore)")
#: The Underground lines (dashboard/data, from OpenStreetMap via vega-datasets) are under the ODbL.
TUBE_CREDIT = "Underground lines: © OpenStreetMap contributors (ODbL)"
_NO_CACHE = {"Cache-Control": "no-cache"}


def _router(settings: Settings) -> APIRouter:
    router = APIRouter(include_in_schema=False)
    # Read once: the simulator's package data is the one copy of the outlines in the product.
    boroughs = resources.files("simulator").joinpath("london-boroughs.geojson").read_bytes()
    tiles = ({"url": settings.map_tiles_url, "attribution": settings.map_tiles_attribution}
             if settings.map_tiles_url else None)
    config: dict[str, object] = {"tiles": tiles, "boroughs_url": "/dashboard/london-boroughs.geojson",
              "boroughs_attribution": BOROUGHS_CREDIT, "tube_url": "/data/london-tube-lines.geojson",
                                   "tube_attribution": TUBE_CREDIT, "live_rate_hz": settings.live_rate_hz,
                                   "time_zone": settings.force_time_zone}

    @router.get("/")
    def index() -> FileResponse:
        return FileResponse(static_dir() / "index.html", headers=_NO_CACHE)

    @router.get("/dashboard/config.json")
    def page_config() -> dict[str, object]:
        return config

    @router.get("/dashboard/london-boroughs.geojson")
    def borough_outlines() -> Response:
        return Response(boroughs, media_type="application/geo+json", headers={"Cache-Control": "max-age=86400"})

    return router


def install(app: FastAPI, *, settings: Settings) -> None:
    """Serve the page from ``app``: the index and config routes, and the asset folders (only
    those, so the package's Python files are never served)."""
    app.include_router(_router(settings))
    for folder in ("js", "css", "data"):
        app.mount(f"/{folder}", StaticFiles(directory=static_dir() / folder), name=f"dashboard-{folder}")
