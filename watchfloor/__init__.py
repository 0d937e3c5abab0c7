"""Watchfloor: the command line and the settings that wire the components together."""
