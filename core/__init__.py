"""The base every other package stands on: the one settings object, logging, and the MQTT
contract between cameras and the platform (topics, payloads, commands, the paho client).

It imports nothing of Watchfloor's; everything else may import it.
"""
