"""Accepting new connections as fast as they arrive, on a uvloop event loop.

libuv, which uvloop runs on, accepts one connection per event loop iteration (since libuv
1.45: "don't accept() connections in a loop"). That is cheap on an idle worker and a trap on
a busy one: with 4,096 keep-alive clients each iteration of a saturated worker handles
thousands of events and takes about 60 ms, so new connections were accepted at about 16 a
second, and a burst of 4,096 left over a thousand of them in the kernel's accept queue for
tens of seconds, their requests sent and unanswered, on both engines
(``python -m loadtests.connections``, docs/overload.md). asyncio's own loop accepts up to
``backlog`` connections each time a listening socket is readable; this module gives a
uvloop worker the same: the listening socket's readiness is watched on a duplicate of its
descriptor, every connection waiting is accepted (up to ``backlog`` a time) and handed to
the server's own protocol factory with ``loop.connect_accepted_socket``, exactly as the
server would have done. libuv's one accept an iteration stays, and simply finds the queue
empty. The engines install it around their server's start (:func:`serving`); a drain stops
it with the listening socket (gateway/server/drain.py).

Only while the worker keeps up (:func:`keeping_up`): its loop-lag watch under
:data:`BEHIND`, not shedding, and no adaptive limit refusing. Under a load past what the
worker or an upstream can take (open-loop offered load, loadtests/overload.py), accepting
everything moved the excess from the kernel's queue, where it costs nothing, into the
worker, where it costs CPU and loop time; the adaptive limiter then read the loop's
lateness as upstream latency and cut its limit: goodput at 5x a backend's capacity fell
from 180-198 to 49-71 requests a second in single runs, with the pump gated on loop lag
alone too (docs/overload.md).
So the pump is Envoy's overload-manager rule turned around: it accepts eagerly only while
nothing is being refused. A burst on a worker that keeps up (thousands of clients
connecting at once, each then closed-loop) is accepted at once; connections that come while
the gateway refuses get libuv's one a turn, its own backpressure.

Nothing here reads the request or changes a connection: a pumped connection is the
server's, with its protocol, its transport and its bookkeeping.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import socket
import time
from collections.abc import Callable, Iterator
from typing import Any

log = logging.getLogger("quartgate")

#: accept() errors that say "not now" (out of descriptors or memory): asyncio's answer, a
#: pause of a second before accepting again, is this module's too.
_PAUSE_ERRORS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
_PAUSE = 1.0
#: A client that gave up between connect and accept: nothing to do, go on.
_GONE_ERRORS = frozenset({errno.ECONNABORTED, errno.EPROTO})

#: Seconds of loop lag (gateway/ops/loop_lag.py) past which the pumps stop accepting.
BEHIND = 0.1
#: Seconds without a refusal from an adaptive limit before the pumps accept again.
CALM = 1.0

#: The running pumps, by the descriptor of the listening socket they accept for.
_pumps: dict[int, AcceptPump] = {}


class AcceptPump:
    """Accepts what waits on one listening socket and gives it to the server's factory."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        listener: socket.socket,
        factory: Callable[[], asyncio.BaseProtocol],
        backlog: int,
        tls: dict[str, Any],
        keeping_up: Callable[[], bool] = lambda: True,
    ) -> None:
        self._loop = loop
        self._listener_fd = listener.fileno()
        self._factory = factory
        self._backlog = max(1, backlog)
        self._tls = tls
        self._keeping_up = keeping_up
        self._sock: socket.socket | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        #: Connections this pump accepted (what the test and a curious operator read).
        self.accepted = 0

    def start(self) -> None:
        sock = socket.socket(fileno=os.dup(self._listener_fd))
        sock.setblocking(False)
        self._sock = sock
        self._loop.add_reader(sock.fileno(), self._accept)
        _pumps[self._listener_fd] = self

    def stop(self) -> None:
        _pumps.pop(self._listener_fd, None)
        sock, self._sock = self._sock, None
        if sock is not None:
            with contextlib.suppress(OSError, ValueError):
                self._loop.remove_reader(sock.fileno())
            sock.close()

    def _accept(self) -> None:
        sock = self._sock
        if sock is None or not self._keeping_up():
            return  # behind: new connections wait in the kernel, which costs the worker nothing
        for _ in range(self._backlog):
            try:
                conn, _ = sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as error:
                if error.errno in _GONE_ERRORS:
                    continue
                if error.errno in _PAUSE_ERRORS:
                    log.warning("accepting connections paused for %gs: %s", _PAUSE, error)
                    self._loop.remove_reader(sock.fileno())
                    self._loop.call_later(_PAUSE, self._resume)
                    return
                self.stop()  # the listening socket was shut down (a drain) or closed
                return
            conn.setblocking(False)
            self.accepted += 1
            task = self._loop.create_task(self._hand_over(conn))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    def _resume(self) -> None:
        if self._sock is not None:
            self._loop.add_reader(self._sock.fileno(), self._accept)

    async def _hand_over(self, conn: socket.socket) -> None:
        try:
            await self._loop.connect_accepted_socket(self._factory, conn, **self._tls)
        except (TimeoutError, OSError) as error:  # a TLS handshake that failed
            log.debug("accepted connection dropped before it was served: %s", error)
            conn.close()


def is_uvloop(loop: asyncio.AbstractEventLoop) -> bool:
    return type(loop).__module__.startswith("uvloop")


@contextlib.contextmanager
def serving(
    loop: asyncio.AbstractEventLoop, keeping_up: Callable[[], bool] = lambda: True
) -> Iterator[list[AcceptPump]]:
    """While inside, every ``create_server(..., sock=...)`` on ``loop`` also starts a pump
    for that socket (a uvloop loop only: asyncio's accepts in a loop already). The pumps
    are stopped on the way out. ``keeping_up``: whether the worker keeps up with its
    loop; while it does not, the pumps accept nothing and libuv's one a turn is all."""
    pumps: list[AcceptPump] = []
    if not is_uvloop(loop):
        yield pumps
        return
    create_server = loop.create_server

    async def pumped(factory: Callable[[], asyncio.BaseProtocol], *args: Any, **kwargs: Any) -> Any:
        server = await create_server(factory, *args, **kwargs)
        listener = kwargs.get("sock")
        if listener is not None:
            tls = {
                key: kwargs[key]
                for key in ("ssl", "ssl_handshake_timeout", "ssl_shutdown_timeout")
                if kwargs.get(key) is not None
            }
            backlog = kwargs.get("backlog") or 100
            pump = AcceptPump(loop, listener, factory, backlog, tls, keeping_up)
            pump.start()
            pumps.append(pump)
        return server

    loop.create_server = pumped  # type: ignore[method-assign,assignment]
    try:
        yield pumps
    finally:
        del loop.create_server  # the instance attribute: the class's method again
        for pump in pumps:
            pump.stop()


def keeping_up(app: Any) -> Callable[[], bool]:
    """Whether the gateway app's worker keeps up: its loop-lag watch under :data:`BEHIND`,
    not shedding, and no adaptive limit refused a request for :data:`CALM` seconds (what
    :func:`serving` reads; no gateway app: always)."""
    proxy = getattr(app, "extensions", {}).get("quartgate")
    lag = getattr(proxy, "loop_lag", None)
    if proxy is None or lag is None:
        return lambda: True
    last = [0, -CALM]  # refusals seen, and when that count last grew

    def check() -> bool:
        if lag.shedding or lag.lag >= BEHIND:
            return False
        refused = 0
        for upstream in proxy.state.upstreams.values():
            limiter = upstream.limiter
            if limiter is not None:
                refused += limiter.refused
        now = time.monotonic()
        if refused != last[0]:
            last[0], last[1] = refused, now
        return now - last[1] >= CALM

    return check


def stop_pump(listener: socket.socket) -> None:
    """Stop the pump of ``listener`` (a drain stops accepting on it)."""
    pump = _pumps.get(listener.fileno())
    if pump is not None:
        pump.stop()
