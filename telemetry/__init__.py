"""Telemetry: the MQTT contract, the ingest pipeline, the schema, and the fleet simulator.

Data flows one way: device -> broker -> ``ingest`` -> database. Other components read what
this one stores; nothing here imports ``api`` or ``streaming``.
"""
