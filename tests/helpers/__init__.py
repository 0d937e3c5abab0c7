"""Helpers for the tests, one module per kind of thing. conftest.py holds only fixtures; test
modules import helpers from here, never from conftest.py or from another test module.

- ``environment``: the one way a test says a real part is missing (skip locally, fail under CI=true).
- ``waiting``: ``wait_for``, the polled and bounded wait on a condition.
- ``db``: the machine's PostgreSQL, a fresh migrated database per test or module (``Database``), a runtime role
  that owns nothing (``runtime_role``).
- ``broker``: waiting on the broker's answers (CONNACK, SUBACK) instead of sleeping.
- ``telemetry``: report and event payloads, a QoS 1 publisher, test settings, an in-process ingest worker.
- ``api``: an API server on a thread, test users and tokens, live-feed readers.
- ``processes``: watchfloor processes started and stopped by PID, a private PostgreSQL cluster,
  a round publisher, a metrics scraper.
- ``offers``: SDP offers from a real aiortc peer connection.
- ``live_view``: the live-view stack, simulated cameras over MQTT and WHIP, an aiortc WHEP viewer.
"""
