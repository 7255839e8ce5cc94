"""Hypercorn 0.18's connection handling, corrected where the gateway needs it.

The Hypercorn engine reaches into Hypercorn where its public API has no hook: it wraps
two methods of the asyncio ``TCPServer`` (closed client connections are freed at once, not
after ``keep_alive_timeout``), replaces ``TaskGroup.spawn_app`` so that a request body the
app never reads cannot hang its connection, counts busy connections by the names of
Hypercorn's tasks (the SIGTERM drain), and serves through ``worker_serve`` with its own
shutdown trigger. Every name used is checked before a worker serves
(gateway/server/private_names.py), so an upgrade that moved one fails at start-up.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Awaitable, Callable
from http import HTTPStatus
from typing import Any


def apply() -> None:
    """Install the workarounds (once per process; the engine checked the names first)."""
    close_dead_connections()
    drop_body_nobody_reads()
    status_line_reasons()


def close_dead_connections() -> None:
    """Free a client connection as soon as the client has closed it, not keep-alive later.

    Hypercorn 0.18 (asyncio) keeps a connection's task, parser and buffers until its idle
    timer fires when the client closes it: a closed idle connection waits out
    ``keep_alive_timeout`` (75 s here), and one closed while a request was in flight stays
    in CLOSE-WAIT until then. With clients that reconnect often that is memory growing with
    the connection rate (measured: +0.6 MiB per 64 connections closed, loadtests/README.md).
    Two small wraps of ``TCPServer``: reading ended means the idle timer stops, and an idle
    timer started after the client's EOF closes at once.
    """
    from hypercorn.asyncio.tcp_server import TCPServer

    if getattr(TCPServer, "_quartgate", False):
        return
    read_data = TCPServer._read_data
    idle_timeout = TCPServer._idle_timeout

    async def _read_data(self: Any) -> None:
        try:
            await read_data(self)
        finally:
            await self.idle_task.stop()

    async def _idle_timeout(self: Any) -> None:
        if self.reader.at_eof():  # the client is gone: nothing to keep alive
            await self._initiate_server_close()
            return
        await idle_timeout(self)

    _idle_timeout.__qualname__ = "TCPServer._idle_timeout"  # what busy_connections looks for
    setattr(TCPServer, "_read_data", _read_data)  # noqa: B010 (a patch, deliberately)
    setattr(TCPServer, "_idle_timeout", _idle_timeout)  # noqa: B010
    setattr(TCPServer, "_quartgate", True)  # noqa: B010


class _AppQueue(asyncio.Queue[Any]):
    """A request's receive queue that drops what arrives once the app has returned."""

    finished = False

    def __init__(self, maxsize: int, app: Any) -> None:
        super().__init__(maxsize)
        self._app = app

    async def put(self, item: Any) -> None:
        if self.finished:
            return
        if item["type"] == "http.disconnect" and self.full():
            # Hypercorn ends the stream from inside the app's last send: waiting for room
            # would wait for the app, which is in this very call. The oldest unread body
            # data makes room; the disconnect supersedes it.
            self.get_nowait()
            self.put_nowait(item)
            return
        await super().put(item)

    async def run_app(self, *args: Any) -> None:
        """The app, then no more waiting: before Hypercorn ends the stream (which may close
        the connection and wait for its reader, the one blocked on this queue)."""
        try:
            await self._app(*args)
        finally:
            self.finished = True
            while not self.empty():  # a reader blocked on a full queue wakes and moves on
                self.get_nowait()


def drop_body_nobody_reads() -> None:
    """Keep reading a request body the app will never read, and drop it.

    Hypercorn 0.18 hands body data to the app through a queue of ``max_app_queue_size``
    (10) messages, and its connection reader waits while that queue is full. Once the app
    has answered without reading the whole body (a 413 for a chunked body over
    ``max_body_size``, an early 401), nothing reads that queue again. The reader then
    waits forever: the client never gets its 413, the connection is never closed by the
    idle timer, and a drain waits out ``graceful_timeout``. Here the queue drops what
    arrives after the app has returned, as nginx discards an unread body.
    ``TaskGroup.spawn_app`` is Hypercorn's own, with this queue in place of its plain one.
    """
    from hypercorn.asyncio import task_group

    group = task_group.TaskGroup
    if getattr(group, "_quartgate", False):
        return
    handle = task_group._handle

    async def spawn_app(
        self: Any, app: Any, config: Any, scope: Any, send: Any
    ) -> Callable[[Any], Awaitable[None]]:
        queue = _AppQueue(config.max_app_queue_size, app)

        def call_soon(func: Callable[..., Any], *args: Any) -> Any:
            future = asyncio.run_coroutine_threadsafe(func(*args), self._loop)
            return future.result()

        run_in_executor = functools.partial(self._loop.run_in_executor, None)
        self.spawn(
            handle, queue.run_app, config, scope, queue.get, send, run_in_executor, call_soon
        )
        return queue.put

    setattr(group, "spawn_app", spawn_app)  # noqa: B010 (a patch, deliberately)
    setattr(group, "_quartgate", True)  # noqa: B010


#: The reason phrase of each status (RFC 9110's), for the HTTP/1.1 status line.
REASONS = {status.value: status.phrase.encode("ascii") for status in HTTPStatus}


def status_line_reasons() -> None:
    """Send the reason phrase in an HTTP/1.1 status line (``HTTP/1.1 200 OK``).

    Hypercorn 0.18 builds h11's ``Response`` without one, so every response starts
    ``HTTP/1.1 200 `` (valid: RFC 9112 lets the phrase be empty, and clients must ignore
    it), but nginx, Envoy, uvicorn and every tool an operator compares with write one, and
    some scripts and old clients match on it. This is Hypercorn's ``stream_send`` for a
    final response head, with the phrase; everything else is Hypercorn's.
    """
    import h11
    from hypercorn.protocol.events import Response
    from hypercorn.protocol.h11 import H11Protocol

    if getattr(H11Protocol, "_quartgate_reasons", False):
        return
    stream_send = H11Protocol.stream_send

    async def send_with_reason(self: Any, event: Any) -> None:
        if type(event) is not Response or event.status_code < 200:
            await stream_send(self, event)
            return
        headers = [*event.headers, *self.config.response_headers("h11")]
        if self.keep_alive_requests >= self.config.keep_alive_max_requests:
            headers.append((b"connection", b"close"))
        status = event.status_code
        response = h11.Response(
            headers=headers, status_code=status, reason=REASONS.get(status, b"")
        )
        await self._send_h11_event(response)

    setattr(H11Protocol, "stream_send", send_with_reason)  # noqa: B010 (a patch, deliberately)
    setattr(H11Protocol, "_quartgate_reasons", True)  # noqa: B010


def busy_connections() -> int:
    """Client connections of this worker with a request in progress.

    Read from Hypercorn's tasks: one per connection (``worker_serve``'s
    ``_server_callback``), plus an idle-timer task (``TCPServer._idle_timeout``) on each
    connection that is between requests; both names are checked at start-up
    (gateway/server/private_names.py).
    """
    connections = idle = 0
    for task in asyncio.all_tasks():
        name = getattr(task.get_coro(), "__qualname__", "")
        if name.endswith("._server_callback"):
            connections += 1
        elif name == "TCPServer._idle_timeout":
            idle += 1
    return connections - idle
