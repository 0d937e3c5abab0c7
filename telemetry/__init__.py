"""Telemetry: the ingest pipeline and its storage.

Data flows one way: device -> broker -> ``ingest`` -> database (schema, writes, reads, alert
rules evaluated per batch, the embedded database and broker for the demo). It stands on
``core`` (settings, the MQTT contract); it never imports ``streaming``, ``services`` or ``api``.
"""
