"""The control-room API, the HTTP and websocket edge: REST under /api/v1, WHIP/WHEP, the live
websocket feed, health checks.

Routes check who is asking and call ``services`` (accounts, consent, live view, audit,
registry) and ``telemetry``'s queries; the live feed reads the broker for live state. Only the
command line imports it. The entry point is :func:`api.app.create_app`.
"""
