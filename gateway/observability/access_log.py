"""The access log: one line per request, JSON or text, written off the hot path.

Per request the observer copies a dozen fields into a tuple and appends it to a deque (a
lock-free append under the GIL). A daemon thread wakes every ``flush_interval``, formats
what is queued and writes it with one ``write`` to a file opened ``O_APPEND``, so lines of
several workers never interleave. When the writer falls ``buffer`` lines behind, new lines
are dropped and counted rather than letting memory grow. A rotated file (renamed by
logrotate) is noticed at the next flush and reopened, as nginx does on USR1.
"""

from __future__ import annotations

import json
import logging
import os
import random
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from gateway.edge.context import RequestContext
from gateway.observability.sections import AccessLogSettings

if TYPE_CHECKING:
    from gateway.websocket.relay import Session

log = logging.getLogger("quartgate")

#: The queued fields, in order (formatters index the tuple by these positions).
FIELDS = (
    "time",
    "request_id",
    "client_ip",
    "method",
    "path",
    "protocol",
    "route",
    "upstream",
    "upstream_target",
    "status",
    "bytes_in",
    "bytes_out",
    "duration_ms",
    "upstream_duration_ms",
    "gateway_ms",
    "upstream_connect_ms",
    "retry_ms",
    "retries",
    "error",
    "grpc_status",
)
Entry = tuple[Any, ...]


class AccessLog:
    """An :class:`~gateway.edge.context.Observer` that queues; ``start``/``stop`` run the writer."""

    def __init__(
        self, settings: AccessLogSettings, on_drop: Callable[[int], None] | None = None
    ) -> None:
        self.settings = settings
        self._queue: deque[Entry] = deque()
        self._limit = settings.buffer
        self._sample = settings.sample
        self._random = random.random
        self._format: Callable[[Entry], str] = (
            format_json if settings.format == "json" else format_text
        )
        self._on_drop = on_drop
        self.dropped = 0
        self._reported_drops = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._fd: int | None = None
        self._inode = 0

    # ---- hot path -----------------------------------------------------------------------

    def request_finished(self, ctx: RequestContext) -> None:
        status = ctx.status
        if self._sample < 1.0 and status < 500 and self._random() >= self._sample:
            return
        queue = self._queue
        if len(queue) >= self._limit:
            self.dropped += 1
            return
        scope = ctx.scope
        route = ctx.route
        queue.append(
            (
                time.time(),
                time.perf_counter() - ctx.start,
                ctx,
                scope,
                route.name if route is not None else "",
                status,
            )
        )

    def session_opened(self, session: Session) -> None:
        """Nothing: a WebSocket session is logged once, when it ends."""

    def session_finished(self, session: Session) -> None:
        """One line per WebSocket session, when it ends: status 101, the message bytes
        each way, its whole duration, and ``error`` = ``ws_close:CLIENT:UPSTREAM:BY`` (the
        close codes on each side and who closed first: client, upstream or gateway)."""
        self.request_finished(session.ctx)

    # ---- writer thread ------------------------------------------------------------------

    def start(self) -> None:
        if self._thread is not None:
            return
        self._open()
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="quartgate-access-log", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Write what is queued and stop the writer (called when the app stops serving)."""
        if self._thread is None:
            return
        self._stop.set()
        self._thread.join()
        self._thread = None
        self.flush()
        if self._fd is not None and self._fd > 2:
            os.close(self._fd)
        self._fd = None

    def _run(self) -> None:
        interval = self.settings.flush_interval
        while not self._stop.wait(interval):
            self.flush()

    def flush(self) -> int:
        """Format and write everything queued; the number of lines written."""
        queue = self._queue
        count = len(queue)
        if self.dropped != self._reported_drops:
            if self._on_drop is not None:
                self._on_drop(self.dropped - self._reported_drops)
            self._reported_drops = self.dropped
        if not count:
            return 0
        fmt = self._format
        lines = []
        for _ in range(count):
            lines.append(fmt(_fields(queue.popleft())))
        data = ("\n".join(lines) + "\n").encode("utf-8", "backslashreplace")
        try:
            self._reopen_if_rotated()
            assert self._fd is not None
            view = memoryview(data)
            while view:
                written = os.write(self._fd, view)
                view = view[written:]
        except OSError as error:
            log.error("access log %s: cannot write: %s", self.settings.path, error)
        return count

    def _open(self) -> None:
        path = self.settings.path
        if path == "-":
            self._fd = 1
            return
        self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)
        self._inode = os.fstat(self._fd).st_ino

    def _reopen_if_rotated(self) -> None:
        if self._fd == 1:
            return
        try:
            inode = os.stat(self.settings.path).st_ino
        except FileNotFoundError:
            inode = -1
        if self._fd is None or inode != self._inode:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None
            self._open()


def _fields(entry: Entry) -> Entry:
    """The queued raw entry expanded into the values named by :data:`FIELDS`.

    Done in the writer thread: the request path only stored references.
    """
    finished, duration, ctx, scope, route, status = entry
    proxied = bool(ctx.upstream_start)
    upstream_time = round(ctx.upstream_time * 1000, 3) if proxied else None
    # The parts of the time to the response head (gateway/pipeline/server_timing.py).
    gateway_time = round(ctx.gateway_time * 1000, 3) if proxied else None
    connect_time = round(ctx.connect_time * 1000, 3) if proxied else None
    retry_time = round(ctx.retry_time * 1000, 3) if proxied else None
    return (
        finished - duration,
        ctx.request_id.decode("ascii", "replace"),
        ctx.client_ip,
        scope["method"],
        scope["raw_path"].decode("latin-1"),
        scope.get("http_version", "1.1"),
        route,
        ctx.upstream,
        ctx.upstream_target,
        status,
        ctx.bytes_in,
        ctx.bytes_out,
        round(duration * 1000, 3),
        upstream_time,
        gateway_time,
        connect_time,
        retry_time,
        ctx.retries,
        ctx.error,
        ctx.grpc_status,
    )


def format_json(fields: Entry) -> str:
    record = dict(zip(FIELDS, fields, strict=True))
    record["time"] = _iso(fields[0])
    return json.dumps(record, separators=(",", ":"))


def format_text(fields: Entry) -> str:
    """nginx's ``combined`` head, then the gateway's own fields as key=value pairs."""
    (
        start,
        request_id,
        client_ip,
        method,
        path,
        protocol,
        route,
        upstream,
        target,
        status,
        bytes_in,
        bytes_out,
        duration,
        upstream_duration,
        gateway_duration,
        _connect,
        _retry,
        retries,
        error,
        grpc_status,
    ) = fields
    when = time.strftime("%d/%b/%Y:%H:%M:%S +0000", time.gmtime(start))
    request = _escape(f"{method} {path} HTTP/{protocol}")
    return (
        f'{client_ip or "-"} - - [{when}] "{request}" {status} {bytes_out} '
        f"in={bytes_in} rt={duration / 1000:.3f} "
        f"urt={'-' if upstream_duration is None else f'{upstream_duration / 1000:.3f}'} "
        f"gt={'-' if gateway_duration is None else f'{gateway_duration / 1000:.3f}'} "
        f"route={route or '-'} upstream={upstream or '-'} target={target or '-'} "
        f"retries={retries} error={error or '-'} rid={_escape(request_id)}"
        + ("" if grpc_status is None else f" grpc={grpc_status}")
    )


def _iso(moment: float) -> str:
    seconds = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(moment))
    return f"{seconds}.{int(moment * 1000) % 1000:03d}Z"


def _escape(text: str) -> str:
    """As nginx escapes a logged request: quotes, backslashes and controls as \\xNN."""
    if text.isprintable() and '"' not in text and "\\" not in text:
        return text
    return "".join(c if c.isprintable() and c not in '"\\' else f"\\x{ord(c):02X}" for c in text)
