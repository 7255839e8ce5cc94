"""One serving worker on Hypercorn 0.18 (h11, h2): the default engine.

Everything is Hypercorn's own ``worker_serve`` with the gateway's shutdown trigger (the
drain in gateway/server/drain.py) and the workarounds of gateway/server/hypercorn_patches.py,
checked before the app is loaded. HTTP/2 (TLS or h2c prior knowledge) is only on this engine.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from multiprocessing.synchronize import Event
from typing import Any

from hypercorn.config import Config, Sockets

from gateway.environment import Environment
from gateway.server import hypercorn_patches
from gateway.server.app_loader import build_app
from gateway.server.drain import going_away, on_stop_signals, stop_accepting, wait_quiet

log = logging.getLogger("quartgate")


def run_worker(
    config: Config,
    environment: Environment,
    sockets: Sockets | None = None,
    ready: Event | None = None,
) -> None:
    """One serving process: build the app, serve until SIGTERM/SIGINT, drain, return."""
    hypercorn_patches.check()  # before anything is served: fail loudly, not half-patched
    from hypercorn.app_wrappers import ASGIWrapper

    # engine "hypercorn": build_app installs the workarounds
    quart = build_app(dataclasses.replace(environment, engine="hypercorn"))
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

    await worker_serve(app, config, sockets=sockets, shutdown_trigger=drained)
