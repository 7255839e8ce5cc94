"""How ``quartgate serve`` runs Hypercorn: graceful drain on SIGTERM, hot reload on SIGHUP.

Hypercorn's own runner (``hypercorn.run.run``) does not fit a gateway on two points:

- On SIGHUP its master restarts every worker, and a worker that fails to load a broken
  file brings the whole server down. Here the master checks the file first; a bad file is
  refused with its reasons logged and the workers keep serving; a good one is passed on as
  SIGHUP to each worker, which swaps its snapshot in place (gateway/reload.py), so no
  connection is dropped and in-flight requests finish on the old upstreams.
- On SIGTERM it stops listening and closes idle keep-alive connections, but responses still
  in flight go out as keep-alive: a client that sends its next request on such a connection
  meets a close. Here, from SIGTERM on, every response carries ``Connection: close``.

Everything else is Hypercorn's: the same ``worker_serve``, sockets made by its config and
inherited by spawned workers, and ``graceful_timeout`` for requests in flight.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import os
import signal
from multiprocessing.connection import wait
from multiprocessing.synchronize import Event
from typing import Any

from hypercorn.config import Config, Sockets

from gateway.asgi_types import ASGIApp, Message, Receive, Scope, Send
from gateway.config import ConfigError, load_config

log = logging.getLogger("quartgate")


def serve(config: Config) -> int:
    """Serve ``config.application_path`` with ``config.workers`` processes (0 or 1: here)."""
    if config.pid_path is not None:
        with open(config.pid_path, "w") as file:
            file.write(str(os.getpid()))
    try:
        if config.workers <= 1:
            run_worker(config)
            return 0
        return _Supervisor(config).run()
    finally:
        if config.pid_path is not None and os.path.exists(config.pid_path):
            os.unlink(config.pid_path)


def reload_command(config_path: str, pid_file: str | None, pid: int | None) -> int:
    """``quartgate reload``: refuse a bad file here, with its reasons; else SIGHUP the server."""
    import sys

    try:
        load_config(config_path)
    except ConfigError as error:
        print(error, file=sys.stderr)
        return 1
    if pid is None:
        assert pid_file is not None
        try:
            with open(pid_file) as file:
                pid = int(file.read().strip())
        except (OSError, ValueError) as error:
            print(f"{pid_file}: cannot read a pid: {error}", file=sys.stderr)
            return 1
    try:
        os.kill(pid, signal.SIGHUP)
    except OSError as error:
        print(f"cannot signal pid {pid}: {error.strerror}", file=sys.stderr)
        return 1
    print(f"{config_path}: OK; reload signalled to pid {pid} (its log tells the outcome)")
    return 0


# ---- a worker ------------------------------------------------------------------------------


def run_worker(config: Config, sockets: Sockets | None = None, ready: Event | None = None) -> None:
    """One serving process: load the app, serve until SIGTERM/SIGINT, drain, return."""
    from hypercorn.utils import load_application

    app: Any = load_application(config.application_path, config.wsgi_max_body_size)
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


async def _serve(app: Any, config: Config, sockets: Sockets | None, ready: Event | None) -> None:
    from hypercorn.asyncio.run import worker_serve

    quart = app.app  # Hypercorn's ASGI wrapper around the Quart app
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()

    def on_stop() -> None:
        if stop.is_set():
            return
        log.info(
            "stopping: no new connections; in-flight requests get %gs", config.graceful_timeout
        )
        quart.asgi_app = CloseConnections(quart.asgi_app)
        stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_stop)
    if ready is not None:

        async def signal_ready() -> None:  # registered last: runs after the gateway's own
            ready.set()

        quart.before_serving(signal_ready)

    await worker_serve(app, config, sockets=sockets, shutdown_trigger=stop.wait)


class CloseConnections:
    """While draining: every HTTP/1 response says ``Connection: close``, so keep-alive
    clients open their next connection elsewhere instead of racing the server's close."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("http_version") not in ("1.0", "1.1"):
            await self.app(scope, receive, send)
            return

        async def closing(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = [
                    (n, v) for n, v in message.get("headers", ()) if n.lower() != b"connection"
                ]
                headers.append((b"connection", b"close"))
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, closing)


def _worker_main(config: Config, sockets: Sockets, ready: Event) -> None:
    """Entry point of a spawned worker process."""
    run_worker(config, sockets, ready)


# ---- several workers -------------------------------------------------------------------------


class _Supervisor:
    """Starts the workers, checks reloads, forwards signals, and waits for the workers."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.context = multiprocessing.get_context("spawn")
        self.workers: list[tuple[Any, Event]] = []
        self.stopping = False

    def run(self) -> int:
        from gateway.logs import configure_logging

        configure_logging()
        config = self.config
        self.sockets = config.create_sockets()
        signal.signal(signal.SIGTERM, self._stop)
        signal.signal(signal.SIGINT, self._stop)
        signal.signal(signal.SIGHUP, self._reload)
        for _ in range(config.workers):
            ready = self.context.Event()
            process = self.context.Process(
                target=_worker_main,
                kwargs={"config": config, "sockets": self.sockets, "ready": ready},
            )
            process.start()
            self.workers.append((process, ready))
        exitcode = 0
        alive = [p for p, _ in self.workers]
        while alive:
            finished = wait([p.sentinel for p in alive])
            for process in [p for p in alive if p.sentinel in finished]:
                process.join()
                alive.remove(process)
                if process.exitcode and not exitcode:
                    exitcode = process.exitcode
                if not self.stopping:
                    log.error("worker %s exited with %s: stopping", process.pid, process.exitcode)
                    self._stop()
        self._close_sockets()
        return exitcode

    def _stop(self, *_: Any) -> None:
        if self.stopping:
            return
        self.stopping = True
        for process, _ready in self.workers:
            if process.is_alive() and process.pid is not None:
                os.kill(process.pid, signal.SIGTERM)
        self._close_sockets()  # with the workers' copies closed, new connections are refused

    def _reload(self, *_: Any) -> None:
        path = os.environ.get("QUARTGATE_CONFIG", "gateway.toml")
        try:
            load_config(path)
        except ConfigError as error:
            log.error(
                "config reload refused, the workers keep the running config:\n%s",
                "\n".join(str(p) for p in error.problems),
            )
            return
        for process, ready in self.workers:
            # A worker still starting reads the (checked) file itself; SIGHUP before its
            # handler exists would kill it.
            if ready.is_set() and process.is_alive() and process.pid is not None:
                os.kill(process.pid, signal.SIGHUP)

    def _close_sockets(self) -> None:
        for sock in [*self.sockets.secure_sockets, *self.sockets.insecure_sockets]:
            sock.close()
