"""Process-wide settings of a serving worker, applied once after the app is built.

Measured under wrk load (loadtests/README.md): with CPython's defaults the collector took
about 8% of a worker's CPU, most of it in full collections that walk every long-lived
object of the app (Quart, Hypercorn, config, route tables) once a second. Freezing what
exists after start-up moves it out of the collector's sight, and a higher young-generation
threshold collects the short-lived request objects in larger, rarer batches: 0.2% of CPU.
A hot reload builds a new snapshot after the freeze; the old one is still freed by
reference counting, only reference cycles in it would stay (none are known).
"""

from __future__ import annotations

import gc
from typing import Any

#: (young, middle, old): young collections every 10,000 net container allocations instead
#: of 700 (a few dozen requests instead of a few); the others as CPython's ratios.
GC_THRESHOLDS = (10_000, 20, 100)


def tune_gc() -> None:
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


def close_dead_connections() -> None:
    """Free a client connection as soon as the client has closed it, not keep-alive later.

    Hypercorn 0.18 (asyncio) keeps a connection's task, parser and buffers until its idle
    timer fires when the client closes it: a closed idle connection waits out
    ``keep_alive_timeout`` (75 s here), and one closed while a request was in flight stays
    in CLOSE-WAIT until then. With clients that reconnect often that is memory growing with
    the connection rate (measured: +0.6 MiB per 64 connections closed, loadtests/README.md).
    Two small wraps of ``TCPServer``: reading ended means the idle timer stops, and an idle
    timer started after the client's EOF closes at once. Skipped if Hypercorn changes shape.
    """
    try:
        from hypercorn.asyncio.tcp_server import TCPServer
    except ImportError:
        return
    read_data = getattr(TCPServer, "_read_data", None)
    idle_timeout = getattr(TCPServer, "_idle_timeout", None)
    if read_data is None or idle_timeout is None or getattr(TCPServer, "_quartgate", False):
        return

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

    setattr(TCPServer, "_read_data", _read_data)  # noqa: B010 (a patch, deliberately)
    setattr(TCPServer, "_idle_timeout", _idle_timeout)  # noqa: B010
    setattr(TCPServer, "_quartgate", True)  # noqa: B010
