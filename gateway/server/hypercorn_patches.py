"""Hypercorn 0.18's connection handling, corrected where the gateway needs it.

The Hypercorn engine reaches into Hypercorn where its public API has no hook: it gives
the asyncio ``TCPServer`` a keep-alive timer in place of a task per idle period and frees
closed client connections at once, replaces ``TaskGroup.spawn_app`` so that a request body
the app never reads cannot hang its connection, writes the reason phrase in status lines,
counts busy connections (the SIGTERM drain), and serves through ``worker_serve`` with its
own shutdown trigger. Every name used is checked before a worker serves
(gateway/server/private_names.py), so an upgrade that moved one fails at start-up.
"""

from __future__ import annotations

import asyncio
import contextlib
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
    """Keep-alive by a timer, not a task per idle period; free a closed connection at once.

    Hypercorn 0.18 (asyncio) runs a connection's keep-alive as a task (``idle_task``): each
    time a response ends, a task that waits on ``asyncio.wait_for`` (a second task and a
    timer), cancelled and awaited when the next request starts. That is two tasks created
    and cancelled per request: 15% of a worker's CPU at 4,096 connections in the profile
    (py-spy, one run, loadtests/connections.py). Here ``idle_task`` is an
    :class:`IdleTimer`: one ``call_later`` per idle period, the same close when it fires, and
    every idle connection closed when the worker stops (what Hypercorn's task did on
    ``context.terminated``).

    And when the client has closed its connection, Hypercorn kept the connection's task,
    parser and buffers until the idle timer fired: a closed idle connection waited out
    ``keep_alive_timeout`` (75 s here), one closed mid-request stayed in CLOSE-WAIT until
    then (measured: +0.6 MiB per 64 connections closed, loadtests/README.md). Here reading
    ended means the timer stops, and a timer armed after the client's EOF closes at once.

    Its bytes go out as Hypercorn's do, in order, but without an ``asyncio.Lock`` taken and a
    ``drain()`` awaited for each of the three writes of a response (head, body, and h11's
    empty end of a sized body, now skipped): a write is one synchronous ``transport.write``,
    so writes keep their order without the lock, and ``drain()`` is awaited only when the
    transport buffers (the client reads slowly) or is closing, when it waits or raises as
    before.
    """
    from hypercorn.asyncio.tcp_server import TCPServer
    from hypercorn.events import Closed, RawData

    if getattr(TCPServer, "_quartgate", False):
        return
    init = TCPServer.__init__
    run = TCPServer.run
    read_data = TCPServer._read_data
    protocol_send = TCPServer.protocol_send

    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        init(self, *args, **kwargs)
        self.idle_task = IdleTimer(self)

    async def run_untangled(self: Any) -> None:
        try:
            await run(self)
        finally:
            # The connection is over: drop the references back to it (its protocol holds
            # this server's bound protocol_send, its timer the server), so its objects are
            # freed as the task ends instead of waiting, as a cycle, for a full collection.
            self.idle_task = None
            self.__dict__.pop("protocol", None)

    async def _read_data(self: Any) -> None:
        try:
            await read_data(self)
        finally:
            await self.idle_task.stop()

    async def send_bytes(self: Any, event: Any) -> None:
        """Hypercorn's ``protocol_send`` for bytes, without its lock and drain per write."""
        if type(event) is not RawData:
            await protocol_send(self, event)  # Closed, Updated: Hypercorn's own
            return
        data = event.data
        if not data:
            return  # h11's end of a body with a Content-Length is no bytes at all
        writer = self.writer
        try:
            writer.write(data)
            if writer.transport.get_write_buffer_size() or writer.transport.is_closing():
                await writer.drain()  # the peer reads slowly (or is gone): wait, as Hypercorn
        except (ConnectionError, RuntimeError):
            await self.protocol.handle(Closed())

    setattr(TCPServer, "__init__", __init__)  # noqa: B010 (a patch, deliberately)
    setattr(TCPServer, "run", run_untangled)  # noqa: B010
    setattr(TCPServer, "_read_data", _read_data)  # noqa: B010
    setattr(TCPServer, "protocol_send", send_bytes)  # noqa: B010
    setattr(TCPServer, "_quartgate", True)  # noqa: B010


#: The worker's idle client connections (their timers armed): what busy_connections
#: subtracts, and what is closed when the worker stops.
_IDLE: set[IdleTimer] = set()


class IdleTimer:
    """A connection's keep-alive: Hypercorn's ``SingleTask`` interface, a timer inside."""

    __slots__ = ("__weakref__", "_handle", "_server")

    def __init__(self, server: Any) -> None:
        self._server = server
        self._handle: asyncio.TimerHandle | None = None

    async def restart(self, task_group: Any, action: Any) -> None:
        """The connection is idle (Hypercorn passes its ``_idle_timeout``; the timer does
        what that did)."""
        self._cancel()
        server = self._server
        if server.reader.at_eof() or server.context.terminated.is_set():
            self._close()  # the client is gone, or the worker stops: nothing to keep alive
            return
        _watch_stop(server.context)
        self._handle = server.loop.call_later(server.config.keep_alive_timeout, self._expire)
        _IDLE.add(self)

    async def stop(self) -> None:
        self._cancel()

    def _cancel(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
            _IDLE.discard(self)

    def _expire(self) -> None:
        self._handle = None
        _IDLE.discard(self)
        self._close()

    def _close(self) -> None:
        server = self._server
        with contextlib.suppress(RuntimeError):  # the connection's group has ended: closed
            server._task_group._task_group.create_task(server._initiate_server_close())


def _watch_stop(context: Any) -> None:
    """Once per worker: when it stops (``context.terminated``), close every idle
    connection, as each of Hypercorn's idle tasks did."""
    if getattr(context, "_quartgate_idle_watch", None) is not None:
        return

    async def close_idle() -> None:
        await context.terminated.wait()
        for timer in list(_IDLE):
            timer._cancel()
            timer._close()

    context._quartgate_idle_watch = asyncio.get_running_loop().create_task(close_idle())


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

    Read from Hypercorn's tasks, one per connection (``worker_serve``'s
    ``_server_callback``, a name checked at start-up: gateway/server/private_names.py),
    less the connections between requests (their :class:`IdleTimer` armed).
    """
    connections = 0
    for task in asyncio.all_tasks():
        if getattr(task.get_coro(), "__qualname__", "").endswith("._server_callback"):
            connections += 1
    return connections - len(_IDLE)
