"""Logging for every Watchfloor process: plain text for people, or one JSON object per line
for a log collector (``WATCHFLOOR_LOG_FORMAT=json``), each line carrying the request id of
the HTTP request it belongs to.

Credentials never reach a log line: bearer tokens, ``"token": ...`` fields and the password
of a URL are masked in every message, whichever module wrote it (a psycopg or paho error
can quote a connection string).
"""

from __future__ import annotations

import logging
import re
from contextvars import ContextVar
from datetime import datetime, timezone

import orjson

__all__ = ["REQUEST_ID", "JsonFormatter", "RedactingFormatter", "configure_logging", "redact"]

#: The id of the HTTP request (or websocket) being served, set by the API's middleware.
#: A ContextVar, not state: each asyncio task and thread sees its own value.
REQUEST_ID: ContextVar[str | None] = ContextVar("watchfloor_request_id", default=None)

_SECRETS = (
    (re.compile(r"(?i)(bearer\s+)[A-Za-z0-9._~+/=-]+"), r"\1[redacted]"),
    (re.compile(r"""(?i)(["']?(?:access_)?token["']?\s*[:=]\s*["']?)[^"'\s,}&]+"""), r"\1[redacted]"),
    (re.compile(r"(?i)(password[\"']?\s*[:=]\s*[\"']?)[^\"'\s,}&]+"), r"\1[redacted]"),
    (re.compile(r"(\w+://[^:/@\s]+:)[^@\s]+@"), r"\1[redacted]@"),  # scheme://user:password@host
)


def redact(text: str) -> str:
    """``text`` with tokens and passwords masked."""
    for pattern, replacement in _SECRETS:
        text = pattern.sub(replacement, text)
    return text


class RedactingFormatter(logging.Formatter):
    """The usual text format, with secrets masked and the request id when there is one."""

    def format(self, record: logging.LogRecord) -> str:
        line = redact(super().format(record))
        request_id = REQUEST_ID.get()
        return f"{line} [request {request_id}]" if request_id else line


class JsonFormatter(logging.Formatter):
    """One JSON object per record: ts, level, logger, message, request_id, and the
    ``extra={...}`` fields a caller passed (``event``, ``status``, ``duration_ms``, ...)."""

    # uvicorn adds a coloured copy of its messages; one copy is enough.
    _STANDARD = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {
        "message", "asctime", "color_message"}

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "ts": datetime.fromtimestamp(record.created, timezone.utc).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": redact(record.getMessage()),
        }
        request_id = REQUEST_ID.get()
        if request_id:
            entry["request_id"] = request_id
        for key, value in vars(record).items():
            if key not in self._STANDARD and not key.startswith("_"):
                entry[key] = redact(value) if isinstance(value, str) else value
        if record.exc_info:
            entry["exception"] = redact(self.formatException(record.exc_info))
        return orjson.dumps(entry, default=str).decode()


def configure_logging(*, fmt: str, level: str) -> None:
    """Route every logger (uvicorn's included) to stderr in ``fmt`` ("text" or "json")."""
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter() if fmt == "json" else
                         RedactingFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logging.getLogger(name).handlers[:] = []
        logging.getLogger(name).propagate = True
    logging.getLogger("pgserver").setLevel(logging.WARNING)
    # Every ICE check and every WHIP request of the simulated cameras at INFO drowns the rest.
    for chatty in ("aioice", "aiortc", "httpx"):
        logging.getLogger(chatty).setLevel(logging.WARNING)
