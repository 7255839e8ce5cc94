"""One serving worker on Hypercorn 0.18 (h11, h2): the default engine.

Everything is Hypercorn's own ``worker_serve`` with the gateway's shutdown trigger (the
drain in gateway/server/drain.py) and what the gateway corrects of Hypercorn, installed by
:func:`install` in this worker only, after every private name was checked
(gateway/server/private_names.py): connections (hypercorn_patches.py), the HTTP/1.1 and
HTTP/2 rules (protocol_guard.py) and WebSocket streams (hypercorn_websocket.py). HTTP/2
(TLS or h2c prior knowledge) is only on this engine.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from multiprocessing.synchronize import Event
from typing import Any

from hypercorn.config import Config, Sockets

from gateway.environment import Environment
from gateway.logs import hypercorn_error_log
from gateway.server import (
    accept_pump,
    hypercorn_patches,
    hypercorn_websocket,
    private_names,
    protocol_guard,
)
from gateway.server.app_loader import admin_bind, build_app
from gateway.server.drain import going_away, on_stop_signals, stop_accepting, wait_quiet
from gateway.server.limits import ServerLimits

log = logging.getLogger("quartgate")


def install() -> ServerLimits:
    """Check Hypercorn's private names, then install the gateway's corrections; the limits
    they read, for the app to fill (``gateway.asgi`` calls this too, under Hypercorn)."""
    private_names.check("hypercorn")
    limits = ServerLimits()
    protocol_guard.install(limits)
    hypercorn_patches.apply()
    hypercorn_websocket.install()
    return limits


def run_worker(
    config: Config,
    environment: Environment,
    sockets: Sockets | None = None,
    ready: Event | None = None,
) -> None:
    """One serving process: build the app, serve until SIGTERM/SIGINT, drain, return."""
    from hypercorn.app_wrappers import ASGIWrapper

    limits = install()  # before anything is served: fail loudly, not half-patched
    quart = build_app(dataclasses.replace(environment, engine="hypercorn"), limits)
    if config.errorlog == "-":  # Hypercorn's lines in quartgate's format, reworded
        config.errorlog = hypercorn_error_log(admin_bind(quart))
    app: Any = ASGIWrapper(quart)
    if sockets is None:
        sockets = config.create_sockets()
    loop_factory = None
    if config.worker_class == "uvloop":
        import uvloop

        loop_factory = uvloop.new_event_loop
    elif config.worker_class != "asyncio":
        raise ValueError(
            f"quartgate serve runs asyncio or uvloop workers, not {config.worker_class!r}"
        )
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        runner.run(_serve(app, config, sockets, ready))


async def _serve(app: Any, config: Config, sockets: Sockets, ready: Event | None) -> None:
    from hypercorn.asyncio.run import worker_serve

    quart = app.app  # Hypercorn's ASGI wrapper around the Quart app
    loop = asyncio.get_running_loop()
    draining = asyncio.Event()

    def on_stop() -> None:
        if draining.is_set():
            return
        log.info(
            "stopping: no new connections; in-flight requests get %gs", config.graceful_timeout
        )
        # Hypercorn says "Connection: close" (HTTP/2: GOAWAY) once a connection has served
        # keep_alive_max_requests; 0 makes that every response from now on, at no cost.
        config.keep_alive_max_requests = 0
        for sock in [*sockets.secure_sockets, *sockets.insecure_sockets]:
            stop_accepting(loop, sock)
        going_away(quart)  # open WebSocket sessions: close 1001 both ways
        draining.set()

    async def drained() -> None:
        await draining.wait()
        await wait_quiet(hypercorn_patches.busy_connections, config.graceful_timeout)
        # Hypercorn's own shutdown follows: idle connections close at once (its idle timers
        # watch context.terminated), requests in flight get graceful_timeout.

    on_stop_signals(loop, on_stop, quart, ready)

    # Accept a burst at once while the worker keeps up (libuv takes one a turn).
    with accept_pump.serving(loop, accept_pump.keeping_up(quart)):
        await worker_serve(app, config, sockets=sockets, shutdown_trigger=drained)
