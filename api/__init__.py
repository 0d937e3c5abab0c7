"""The control-room API: REST under /api/v1, the live websocket feed, health checks.

It reads what ``telemetry`` stores and subscribes to the broker for live state; nothing in
``telemetry`` imports it. The entry point is :func:`api.app.create_app`.
"""
