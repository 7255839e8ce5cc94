"""The SIGTERM drain both engines share: stop accepting, say ``Connection: close``, wait.

On SIGTERM a worker's listening sockets stop accepting (new connections are refused, which
any client or load balancer may safely retry) and every response from then on says
``Connection: close``, so busy keep-alive clients get their next request answered and leave.
Once no connection has had a request in progress for :data:`QUIET` seconds (at most
:data:`LINGER`), the engine's own shutdown runs: idle keep-alive connections are closed at
once and requests still in flight get ``graceful_timeout``.

Why not close idle connections the moment SIGTERM arrives: under steady load a connection
that is idle at that instant usually has its next request on the wire; closing it loses
that request ("server disconnected without sending a response"). :data:`QUIET` is long
enough for such a request to arrive, and short enough that a proxy in front holding idle
keep-alive connections (nginx, a cloud load balancer) does not delay the exit.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import socket
from collections.abc import Callable
from typing import Any

from gateway.server.accept_pump import stop_pump

#: Longest wait, after SIGTERM, for keep-alive clients to take their Connection: close.
LINGER = 2.0
#: The drain ends once no connection has had a request in progress for this long.
QUIET = 0.1


def stop_accepting(loop: asyncio.AbstractEventLoop, sock: socket.socket) -> None:
    """New connections are refused from now on; accepted ones are untouched.

    ``shutdown`` on a listening socket is what refuses them (for every worker sharing it);
    the reader is removed first so an asyncio loop does not spin on a socket that can no
    longer accept (uvloop's accept is not a reader and ignores this).
    """
    stop_pump(sock)  # the uvloop accept pump's reader (gateway/server/accept_pump.py)
    with contextlib.suppress(OSError, ValueError, NotImplementedError):
        loop.remove_reader(sock.fileno())
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)


def going_away(app: Any) -> None:
    """Tell the app the worker is draining: its open WebSocket sessions are closed with
    1001 both ways (gateway/websocket/sessions.py), so they end within the drain."""
    hook = getattr(app, "extensions", {}).get("quartgate.going_away")
    if hook is not None:
        hook()


async def wait_quiet(busy: Callable[[], int], limit: float) -> None:
    """Return once ``busy()`` has been 0 for :data:`QUIET` seconds, or after ``limit``."""
    loop = asyncio.get_running_loop()
    until = loop.time() + min(LINGER, limit)
    quiet_since = loop.time()
    while (now := loop.time()) < until:
        if busy():
            quiet_since = now
        elif now - quiet_since >= QUIET:
            return
        await asyncio.sleep(0.02)


def on_stop_signals(
    loop: asyncio.AbstractEventLoop, on_stop: Callable[[], None], app: Any, ready: Any
) -> None:
    """SIGTERM and SIGINT start the drain (``on_stop``); ``ready`` (a multiprocessing
    Event, or None) is set once the Quart ``app`` serves, after the gateway's own
    ``before_serving`` hooks, which were registered first."""
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_stop)
    if ready is not None:

        async def signal_ready() -> None:
            ready.set()

        app.before_serving(signal_ready)
