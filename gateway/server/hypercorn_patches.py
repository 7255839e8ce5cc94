"""Every Hypercorn-private name the gateway touches, fenced in one module and checked first.

The Hypercorn engine reaches into Hypercorn 0.18 where its public API has no hook: it wraps
two methods of the asyncio ``TCPServer`` (closed client connections are freed at once, not
after ``keep_alive_timeout``), replaces ``TaskGroup.spawn_app`` so that a request body the
app never reads cannot hang its connection, counts busy connections by the names of
Hypercorn's tasks (the SIGTERM drain), and serves through ``worker_serve`` with its own
shutdown trigger.
:func:`check` looks up each of those names before a worker serves and raises
:class:`HypercornChanged` naming every one that is gone, so an upgrade that moved them fails
at start-up, loudly, instead of silently serving without the workaround. pyproject.toml pins
Hypercorn to the minor version these were written for (:data:`WRITTEN_FOR`).
"""

from __future__ import annotations

import asyncio
import functools
import importlib
import types
from collections.abc import Awaitable, Callable
from typing import Any

#: The Hypercorn minor version the names below were read from.
WRITTEN_FOR = "0.18"

#: (module, dotted name) pairs. ``Class.attr`` may be an instance attribute that the
#: class's ``__init__`` assigns; ``function.inner`` a function defined inside another.
PRIVATE_NAMES: tuple[tuple[str, str], ...] = (
    ("hypercorn.asyncio.tcp_server", "TCPServer._read_data"),
    ("hypercorn.asyncio.tcp_server", "TCPServer._idle_timeout"),
    ("hypercorn.asyncio.tcp_server", "TCPServer._initiate_server_close"),
    ("hypercorn.asyncio.tcp_server", "TCPServer.idle_task"),
    ("hypercorn.asyncio.tcp_server", "TCPServer.reader"),
    ("hypercorn.asyncio.run", "worker_serve"),
    ("hypercorn.asyncio.run", "worker_serve._server_callback"),
    ("hypercorn.app_wrappers", "ASGIWrapper"),
    ("hypercorn.config", "Config.response_headers"),
    ("hypercorn.config", "Config.create_sockets"),
    ("hypercorn.asyncio.task_group", "TaskGroup.spawn_app"),
    ("hypercorn.asyncio.task_group", "TaskGroup.spawn"),
    ("hypercorn.asyncio.task_group", "TaskGroup._loop"),
    ("hypercorn.asyncio.task_group", "_handle"),
)


class HypercornChanged(RuntimeError):
    """Hypercorn no longer has a name the gateway's workarounds rely on."""


def missing_names() -> list[str]:
    missing = []
    for module_name, dotted in PRIVATE_NAMES:
        try:
            module = importlib.import_module(module_name)
        except ImportError:
            missing.append(f"{module_name} (module)")
            continue
        if not has_name(module, dotted):
            missing.append(f"{module_name}.{dotted}")
    return missing


def check() -> None:
    """Raise :class:`HypercornChanged` unless every name in :data:`PRIVATE_NAMES` exists."""
    missing = missing_names()
    if missing:
        from importlib.metadata import version

        raise HypercornChanged(
            f"Hypercorn {version('hypercorn')} lacks what quartgate's Hypercorn engine was "
            f"written against (Hypercorn {WRITTEN_FOR}): {', '.join(missing)}. "
            'Install the pinned version (pip install -e .) or use [server] engine = "uvicorn".'
        )


def has_name(obj: Any, dotted: str) -> bool:
    """Whether ``obj`` has ``dotted``: attributes, an instance attribute its class's
    ``__init__`` assigns, or a function defined inside a function."""
    head, _, rest = dotted.partition(".")
    value = getattr(obj, head, None)
    if value is None:
        return False
    if not rest:
        return True
    if hasattr(value, rest.partition(".")[0]):
        return has_name(value, rest)
    code: types.CodeType | None = None
    if isinstance(value, type):  # an instance attribute: assigned in __init__
        code = getattr(vars(value).get("__init__"), "__code__", None)
        return code is not None and rest in code.co_names
    code = getattr(value, "__code__", None)  # a function defined inside a function
    return code is not None and any(
        isinstance(const, types.CodeType) and const.co_name == rest for const in code.co_consts
    )


def apply() -> None:
    """Check the names, then install the workarounds (once per process)."""
    check()
    close_dead_connections()
    drop_body_nobody_reads()


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


def busy_connections() -> int:
    """Client connections of this worker with a request in progress.

    Read from Hypercorn's tasks: one per connection (``worker_serve``'s
    ``_server_callback``), plus an idle-timer task (``TCPServer._idle_timeout``) on each
    connection that is between requests; both names are in :data:`PRIVATE_NAMES`.
    """
    connections = idle = 0
    for task in asyncio.all_tasks():
        name = getattr(task.get_coro(), "__qualname__", "")
        if name.endswith("._server_callback"):
            connections += 1
        elif name == "TCPServer._idle_timeout":
            idle += 1
    return connections - idle
