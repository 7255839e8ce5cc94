"""One serving worker on uvicorn with httptools: the fast engine (``engine = "uvicorn"``).

Why uvicorn and not granian (docs/server.md has the figures): the same throughput per core
on this gateway, half the memory, and it runs inside the gateway's own process on the
gateway's own sockets: one ``uvicorn.Server`` serves every bind (public and admin) of a
worker, the supervisor, drain and SIGHUP reload are the same code as on Hypercorn.

What the gateway changes of uvicorn is in its protocols, which uvicorn's config chooses
(``http=``, ``ws=``): gateway/server/uvicorn_http.py (timeouts, the head cap, the request
cap, refusals from the one table) and gateway/server/uvicorn_websocket.py (pongs under flow
control, bounded inflation, one log line per violation). Here: the worker. One sweep every
:data:`SWEEP` seconds checks every connection's idle and header timeouts (two timers per
request cost 10 µs, 7% of its CPU); uvicorn's own signal handling is replaced by the
gateway's (SIGTERM/SIGINT drain; SIGHUP reloads in the app, gateway/ops/reload.py), its
access log is off (the gateway has its own), and it never rewrites the client address from
``X-Forwarded-For`` (``proxy_headers`` off: the gateway decides which peers to trust,
``[gateway] trusted_proxies``). The private names the protocols rely on, and uvicorn's
version, are checked before the worker serves (gateway/server/private_names.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import socket
from collections.abc import Iterator
from multiprocessing.synchronize import Event
from typing import Any

import uvicorn
from hypercorn.config import Config, Sockets

from gateway.environment import Environment
from gateway.logs import listener_line
from gateway.server import accept_pump, private_names
from gateway.server.app_loader import admin_bind, build_app
from gateway.server.drain import going_away, on_stop_signals, stop_accepting, wait_quiet
from gateway.server.limits import ServerLimits
from gateway.server.uvicorn_http import ConnectionLimits, HttpProtocol
from gateway.server.uvicorn_websocket import WebSocketProtocol

log = logging.getLogger("quartgate")

#: How often each worker checks its connections' idle and header timeouts (seconds): a
#: timeout fires up to this much late.
SWEEP = 0.25


class UvicornSettings(uvicorn.Config):
    """uvicorn's settings plus the worker's :class:`ConnectionLimits`, which every protocol
    reads."""

    def __init__(self, app: Any, limits: ConnectionLimits, **settings: Any) -> None:
        super().__init__(app, http=HttpProtocol, ws=WebSocketProtocol, **settings)
        self.limits = limits


class UvicornServer(uvicorn.Server):
    """uvicorn's server without its signal handling: the worker's drain owns signals."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets=sockets)
        admin = admin_bind(self.config.app)  # type: ignore[arg-type]  # our Quart app
        for sock in sockets or []:  # the line Hypercorn logs for each bind, once serving
            host, port = sock.getsockname()[:2]
            log.info("%s", listener_line(f"http://{host}:{port}", "uvicorn", admin))


def run_worker(
    config: Config,
    environment: Environment,
    sockets: Sockets | None = None,
    ready: Event | None = None,
) -> None:
    """One serving process: build the app, serve until SIGTERM/SIGINT, drain, return."""
    private_names.check("uvicorn")  # before anything is served: fail loudly
    limits = ServerLimits()  # filled by the app from [gateway], again on each reload
    app: Any = build_app(dataclasses.replace(environment, engine="uvicorn"), limits)
    if sockets is None:
        sockets = config.create_sockets()
    listeners = list(sockets.insecure_sockets)
    loop_factory = None
    if config.worker_class == "uvloop":
        import uvloop

        loop_factory = uvloop.new_event_loop
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        runner.run(_serve(app, config, ConnectionLimits(config, limits), listeners, ready))


async def _serve(
    app: Any,
    config: Config,
    limits: ConnectionLimits,
    listeners: list[socket.socket],
    ready: Event | None,
) -> None:
    settings = UvicornSettings(
        app,
        limits,
        lifespan="on",
        interface="asgi3",
        loop="none",
        log_config=None,
        access_log=False,
        proxy_headers=False,
        server_header=config.include_server_header,
        date_header=config.include_date_header,
        # No timeout_keep_alive: uvicorn's timer is never armed (on_response_complete);
        # keep_alive_timeout is the sweep's (Limits.idle_timeout), fractions honoured.
        timeout_graceful_shutdown=int(config.graceful_timeout),
        backlog=config.backlog,
    )
    server = UvicornServer(settings)
    loop = asyncio.get_running_loop()
    draining = asyncio.Event()

    def on_stop() -> None:
        if draining.is_set():  # Ctrl-C reaches the workers twice: directly and forwarded
            return
        log.info(
            "stopping: no new connections; in-flight requests get %gs", config.graceful_timeout
        )
        limits.draining = True  # every response from now on says Connection: close
        for sock in listeners:
            stop_accepting(loop, sock)
        for connection in _connections(server):
            if connection.busy():
                connection.cycle.keep_alive = False
        going_away(app)  # open WebSocket sessions: close 1001 both ways
        draining.set()

    def busy() -> int:
        return sum(1 for connection in _connections(server) if connection.busy())

    async def drained() -> None:
        await draining.wait()
        await wait_quiet(busy, config.graceful_timeout)
        # uvicorn's own shutdown follows: idle connections close at once, requests in
        # flight get graceful_timeout, then the app's lifespan shutdown.
        server.should_exit = True

    on_stop_signals(loop, on_stop, app, ready)

    async def sweep() -> None:
        while True:
            await asyncio.sleep(SWEEP)
            now = loop.time()
            for connection in _connections(server):
                connection.sweep(now)

    tasks = [asyncio.create_task(drained()), asyncio.create_task(sweep())]
    try:
        # Accept a burst at once while the worker keeps up (libuv takes one a turn).
        with accept_pump.serving(loop, accept_pump.keeping_up(app)):
            await server.serve(sockets=listeners)
    finally:
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task


def _connections(server: UvicornServer) -> list[HttpProtocol]:
    return [c for c in server.server_state.connections if isinstance(c, HttpProtocol)]
