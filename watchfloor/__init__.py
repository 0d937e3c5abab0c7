"""Watchfloor's command line: the composition root that builds the settings and wires the
components into processes (``demo``, ``ingest``, ``api``, ``simulate`` and the admin commands).
Nothing imports it, except tests and benchmarks for :mod:`watchfloor.mosquitto`."""
