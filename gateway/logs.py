"""The error log: one line per event on standard error, with the request id when there is one.

``[logging]`` (docs/observability.md) sets its level and its format: ``text``, a line a
person reads, or ``json``, one object per line for a log shipper, with the same fields the
text line has (time, level, pid, request id, message, and the traceback when there is one).
Hypercorn's own error log (``errorlog = "-"``, the default) is written through the same
handler, so the format holds for every line a worker writes; its "Running on" lines are
reworded to say which engine serves and which bind is the private admin listener
(:func:`listener_line`, the uvicorn engine's too).
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from typing import Final

from gateway.observability.sections import LoggingSettings

#: The logger every quartgate module writes to (``quartgate.*`` propagate to it).
LOGGER: Final = "quartgate"
#: Where the Hypercorn engine sends Hypercorn's own error log.
SERVER_LOGGER: Final = "quartgate.server"
TEXT: Final = "%(asctime)s %(levelname)s quartgate [%(request_id)s] %(message)s"


class _RequestIdFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "request_id"):
            record.request_id = "-"
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ``time`` (ISO 8601, UTC), ``level``, ``logger``, ``pid``,
    ``request_id`` (absent when there is none), ``message``, and ``exception``."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "time": self.formatTime(record),
            "level": record.levelname,
            "logger": record.name,
            "pid": record.process,
            "message": record.getMessage(),
        }
        request_id = getattr(record, "request_id", "-")
        if request_id != "-":
            entry["request_id"] = request_id
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        seconds = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        return f"{seconds}.{int(record.msecs):03d}Z"


class _ErrorLog(logging.StreamHandler):  # type: ignore[type-arg]
    """The handler :func:`configure_logging` installs (what :func:`apply_logging` changes)."""


def configure_logging(settings: LoggingSettings | None = None) -> None:
    """Set the error log up, unless something else already has (an app embedding the
    gateway, pytest), and apply ``settings``: at start with the defaults, then once the
    config is read."""
    logger = logging.getLogger(LOGGER)
    if not logger.handlers:
        stream = _ErrorLog(sys.stderr)
        stream.addFilter(_RequestIdFilter())
        logger.addHandler(stream)
        logger.propagate = False
    apply_logging(settings)


def apply_logging(settings: LoggingSettings | None) -> None:
    """``[logging]`` on the error log quartgate set up (a reload calls this too); an error
    log set up by someone else is theirs and left alone."""
    settings = settings if settings is not None else LoggingSettings()
    logger = logging.getLogger(LOGGER)
    ours = [h for h in logger.handlers if isinstance(h, _ErrorLog)]
    if not ours:
        return
    formatter = JsonFormatter() if settings.format == "json" else logging.Formatter(TEXT)
    for handler in ours:
        handler.setFormatter(formatter)
    logger.setLevel(settings.level.upper())


def listener_line(url: str, engine: str, admin_bind: str | None) -> str:
    """What a worker logs for a listening socket: the public ones and the admin listener
    are told apart (they looked alike: Hypercorn logs one "Running on" line per bind)."""
    port = url.rpartition(":")[2]
    if admin_bind is not None and port == admin_bind.rpartition(":")[2]:
        return f"Admin listener on {url} (probes, /metrics, admin API; pid {os.getpid()})"
    return f"Running on {url} ({engine} engine, pid {os.getpid()})"


class HypercornLines(logging.Filter):
    """Hypercorn's "Running on URL (CTRL + C to quit)" reworded by :func:`listener_line`."""

    def __init__(self, admin_bind: str | None) -> None:
        super().__init__()
        self.admin_bind = admin_bind

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.msg
        if isinstance(message, str) and message.startswith("Running on "):
            url = message.split()[2]
            record.msg = listener_line(url, "hypercorn", self.admin_bind)
            record.args = None
        return True


def hypercorn_error_log(admin_bind: str | None) -> logging.Logger:
    """The logger Hypercorn writes its error log to in a worker: quartgate's handler."""
    logger = logging.getLogger(SERVER_LOGGER)
    for old in [f for f in logger.filters if isinstance(f, HypercornLines)]:
        logger.removeFilter(old)
    logger.addFilter(HypercornLines(admin_bind))
    return logger
