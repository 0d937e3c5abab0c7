"""The device side: simulated body-worn cameras that speak the public MQTT contract and
stream over WHIP.

It stands apart, as a real camera would: it uses only the contract (``core``) and
``streaming``'s client and test picture, never the platform's pipeline, services or API.
"""
