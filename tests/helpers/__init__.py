"""Helpers for the tests, one module per kind of thing.

- ``environment``: the one way a test says a real part is missing (skip locally, fail under CI=true).
"""
