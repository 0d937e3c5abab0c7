"""Domain services: who may do what (accounts, consent), the device registry, the live-view
workflow and its records, and the audit log.

They hold the rules and the transactions; the HTTP edge (``api``) and the command line
(``watchfloor``) call them. They use the pipeline (``telemetry``), the media relay
(``streaming``) and the base (``core``), never the edge above them.
"""
