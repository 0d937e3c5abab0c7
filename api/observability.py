"""What the API tells its operators: a request id and an access line per request, and
Prometheus metrics (HTTP, the live feed, the process) at ``/metrics``.

Request ids: a caller (or the proxy in front) may send ``X-Request-ID``; a sane one is kept,
anything else is replaced by a new one. It is returned in the response header, put on every
log line written while the request is served, and on the websocket's accept. The access line
has the path without its query string, never a header: no token reaches the log.

``/metrics`` is unauthenticated, as Prometheus expects, and so carries aggregates only:
routes as templates (``/api/v1/devices/{device_id}``, never an id), no user, officer or
device as a label. Whether it is served on the API's port is ``WATCHFLOOR_API_METRICS``;
the deployment keeps it off the public route (docs/operations.md).
"""

from __future__ import annotations

import logging
import re
import time
import uuid
from collections.abc import Iterator
from typing import Any

from fastapi import FastAPI
from fastapi.responses import Response
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from core.logs import REQUEST_ID
from streaming import HistogramSnapshot, RelayStats

__all__ = ["ApiMetrics", "LiveCollector", "LiveViewCollector", "RelayCollector", "RequestContext", "install"]

access_log = logging.getLogger("watchfloor.access")

_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")  # nothing that could forge a log line
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
_DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
# Probes and scrapes come every few seconds from the platform: logged at debug when they pass.
_QUIET_ROUTES = frozenset({"/healthz", "/readyz", "/metrics"})


class LiveCollector(Collector):
    """The live feed's numbers (``watchfloor_live_*``), read from the app's hub when scraped."""

    def __init__(self, app: FastAPI) -> None:
        self._app = app

    def collect(self) -> Iterator[Metric]:
        hub = getattr(self._app.state, "hub", None)
        if hub is None:  # not started yet, or stopped
            return
        c = hub.counters
        yield GaugeMetricFamily("watchfloor_live_clients", "Websocket clients on the live feed",
                                value=hub.client_count)
        yield CounterMetricFamily("watchfloor_live_connections", "Live-feed clients registered (each got a "
                                  "snapshot)", value=c.connections)
        yield CounterMetricFamily("watchfloor_live_units_conflated", "Intermediate unit states merged away for "
                                  "lagging clients (the latest state is always sent)", value=c.units_conflated)
        yield CounterMetricFamily("watchfloor_live_alerts_dropped", "Alert changes not sent to lagging clients "
                                  "(each is told to re-read alerts)", value=c.alerts_dropped)
        yield CounterMetricFamily("watchfloor_live_broker_messages", "Messages the live hub received from the "
                                  "broker", value=c.broker_messages)
        yield CounterMetricFamily("watchfloor_live_unit_updates", "Unit states taken from ingest's live-units "
                                  "frames", value=c.unit_updates)
        yield CounterMetricFamily("watchfloor_live_bad_frames", "Live-units frames this version could not read "
                                  "(dropped; an ingest of another version?)", value=c.bad_frames)
        yield GaugeMetricFamily("watchfloor_live_broker_connected", "1 while the live hub is connected to the "
                                "broker", value=1 if hub.connected.is_set() else 0)


def _relay_stats(app: FastAPI) -> RelayStats | None:
    live_view = getattr(app.state, "live_view", None)
    try:
        return live_view.relay.stats() if live_view is not None else None
    except AssertionError:  # live view not started yet
        return None


def _delay_family(name: str, documentation: str, snapshot: HistogramSnapshot) -> HistogramMetricFamily:
    buckets = [(repr(edge), n) for edge, n in zip(snapshot.edges_s, snapshot.cumulative)]
    return HistogramMetricFamily(name, documentation, buckets=[*buckets, ("+Inf", snapshot.count)],
                                 sum_value=snapshot.sum_s)


class RelayCollector(Collector):
    """The live-view relay in this process (``watchfloor_relay_*``): streams, viewers, and
    bytes in and out, whose rate is the bitrate. Never per stream: a label per camera would
    name the officers being watched and grow with the fleet."""

    def __init__(self, app: FastAPI) -> None:
        self._app = app

    def collect(self) -> Iterator[Metric]:
        stats = _relay_stats(self._app)
        if stats is None:
            return
        yield GaugeMetricFamily("watchfloor_relay_streams", "Cameras publishing to this relay", value=stats.streams)
        yield GaugeMetricFamily("watchfloor_relay_viewers", "Viewers playing from this relay", value=stats.viewers)
        for name, value, documentation in (
                ("frames_received", stats.frames_received, "Video frames received from cameras"),
                ("bytes_received", stats.bytes_received, "Video bytes received from cameras (rate x 8 = bitrate in)"),
                ("frames_forwarded", stats.frames_forwarded, "Frames sent to viewers"),
                ("bytes_forwarded", stats.bytes_forwarded, "Bytes sent to viewers (rate x 8 = bitrate out)"),
                ("frames_dropped", stats.frames_dropped, "Frames a viewer did not get (full queue, awaiting keyframe)"),
                ("queue_overflows", stats.queue_overflows, "Times a viewer's queue was full"),
                ("keyframe_requests", stats.keyframe_requests, "Keyframes asked of cameras"),
                ("incomplete_frames", stats.incomplete_frames, "Frames the jitter buffer gave up on")):
            yield CounterMetricFamily(f"watchfloor_relay_{name}", documentation, value=value)
        yield _delay_family("watchfloor_relay_forward_delay_seconds", "Per frame and viewer: from whole in the "
                            "relay to its last packet sent", stats.forward_delay)


class LiveViewCollector(Collector):
    """Live view's broker intake in this process: cameras' messages dropped, by why
    (``over_rate``: a camera over its own rate; ``inbox_full``: the shared inbox was full)."""

    def __init__(self, app: FastAPI) -> None:
        self._app = app

    def collect(self) -> Iterator[Metric]:
        live_view = getattr(self._app.state, "live_view", None)
        if live_view is None:
            return
        dropped = CounterMetricFamily("watchfloor_live_view_intake_dropped", "Broker messages live view dropped "
                                      "before handling them", labels=["reason"])
        dropped.add_metric(["over_rate"], live_view.intake_over_rate)
        dropped.add_metric(["inbox_full"], live_view.inbox_dropped)
        yield dropped


class ApiMetrics:
    """One API process's registry (its own: tests run several apps in one process)."""

    def __init__(self, app: FastAPI) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter("watchfloor_api_http_requests", "HTTP requests served",
                                ["method", "route", "status"], registry=self.registry)
        self.duration = Histogram("watchfloor_api_http_request_duration_seconds", "Time to serve an HTTP request",
                                  ["method", "route"], buckets=_DURATION_BUCKETS, registry=self.registry)
        self.registry.register(LiveCollector(app))
        self.registry.register(RelayCollector(app))
        self.registry.register(LiveViewCollector(app))
        ProcessCollector(registry=self.registry)

    def observe(self, *, method: str, route: str, status: int, seconds: float) -> None:
        self.requests.labels(method, route, str(status)).inc()
        self.duration.labels(method, route).observe(seconds)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


def _route_of(scope: Scope) -> str:
    """The matched route's template; one label for everything unmatched (scanners)."""
    route = scope.get("route")
    path = getattr(route, "path", None)
    return path if isinstance(path, str) and path else "unmatched"


def _incoming_id(scope: Scope) -> str | None:
    for name, value in scope.get("headers", ()):
        if name == b"x-request-id":
            text = value.decode("latin-1")
            return text if _REQUEST_ID.match(text) else None
    return None


class RequestContext:
    """Pure ASGI middleware (no per-request task or body buffering, unlike
    ``BaseHTTPMiddleware``): request id, access line, HTTP metrics."""

    def __init__(self, app: ASGIApp, *, metrics: ApiMetrics | None) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        request_id = _incoming_id(scope) or uuid.uuid4().hex
        token = REQUEST_ID.set(request_id)
        started = time.perf_counter()
        status = 500 if scope["type"] == "http" else 0

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
                MutableHeaders(scope=message).append("X-Request-ID", request_id)
            elif message["type"] == "websocket.accept":
                status = 101
                message.setdefault("headers", [])
                MutableHeaders(scope=message).append("X-Request-ID", request_id)
            elif message["type"] == "websocket.close" and status == 0:
                status = 403  # closed before accepting: the server refuses the handshake
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            seconds = time.perf_counter() - started
            self._record(scope, status, seconds)
            REQUEST_ID.reset(token)

    def _record(self, scope: Scope, status: int, seconds: float) -> None:
        route = _route_of(scope)
        method = scope.get("method", "GET") if scope["type"] == "http" else "WEBSOCKET"
        method = method if method in _METHODS or method == "WEBSOCKET" else "OTHER"
        if scope["type"] == "http" and self.metrics is not None and route != "/metrics":
            self.metrics.observe(method=method, route=route, status=status, seconds=seconds)
        fields: dict[str, Any] = {"event": "http_request" if scope["type"] == "http" else "websocket_closed",
                                  "method": method, "path": scope.get("path", ""), "route": route,
                                  "status": status, "duration_ms": round(seconds * 1000, 1)}
        client = scope.get("client")
        if client:
            fields["client"] = client[0]
        level = logging.DEBUG if route in _QUIET_ROUTES and status < 400 else logging.INFO
        access_log.log(level, "%s %s %s %.1f ms", method, fields["path"], status, seconds * 1000, extra=fields)


def install(app: FastAPI, *, metrics_route: bool) -> None:
    """Request ids and access lines on every request; metrics, and ``/metrics`` when asked."""
    metrics = ApiMetrics(app)
    app.state.metrics = metrics
    app.add_middleware(RequestContext, metrics=metrics)
    if metrics_route:
        # On the event loop (async), where the hub and the relay change: a consistent read.
        @app.get("/metrics", include_in_schema=False)
        async def prometheus_metrics() -> Response:
            return Response(metrics.exposition(), media_type=CONTENT_TYPE_LATEST)
