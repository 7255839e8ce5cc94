"""How ``quartgate serve`` runs Hypercorn: graceful drain on SIGTERM, hot reload on SIGHUP.

Hypercorn's own runner (``hypercorn.run.run``) does not fit a gateway on two points:

- On SIGHUP its master restarts every worker, and a worker that fails to load a broken
  file brings the whole server down. Here the master checks the file first; a bad file is
  refused with its reasons logged and the workers keep serving; a good one is passed on as
  SIGHUP to each worker, which swaps its snapshot in place (gateway/reload.py), so no
  connection is dropped and in-flight requests finish on the old upstreams.
- On SIGTERM it stops listening and at once closes every keep-alive connection that is
  between two requests, and responses still in flight go out as keep-alive: under steady
  load, clients whose next request is on its way meet a closed connection ("server
  disconnected without sending a response"). Here SIGTERM starts a drain first: the
  listening sockets stop accepting (new connections are refused, which any client or load
  balancer may safely retry), every response from then on says ``Connection: close``
  (HTTP/2: GOAWAY), and busy keep-alive clients get their next request answered and leave.
  Once no connection has had a request in progress for ``QUIET`` seconds (at most
  ``LINGER``), Hypercorn's own shutdown runs: idle connections close and requests in
  flight get ``graceful_timeout``.

Everything else is Hypercorn's: the same ``worker_serve``, sockets made by its config and
inherited by spawned workers, and ``graceful_timeout`` for requests in flight.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import multiprocessing
import os
import signal
import socket
from multiprocessing.connection import wait
from multiprocessing.synchronize import Event
from typing import Any

from hypercorn.config import Config, Sockets

from gateway.config import ConfigError, load_config

log = logging.getLogger("quartgate")

#: Longest wait, after SIGTERM, for keep-alive clients to take their Connection: close.
LINGER = 2.0
#: The drain ends early once no connection has had a request in progress for this long.
QUIET = 0.1


def serve(config: Config) -> int:
    """Serve ``config.application_path`` with ``config.workers`` processes (0 or 1: here)."""
    # A reload request during start-up must not kill the server (SIGHUP's default action);
    # the reload handler replaces this once the app is serving.
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
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
            _stop_accepting(loop, sock)
        draining.set()

    async def drained() -> None:
        await draining.wait()
        until = loop.time() + min(LINGER, config.graceful_timeout)
        quiet_since = loop.time()
        while (now := loop.time()) < until:
            if _busy_connections():
                quiet_since = now
            elif now - quiet_since >= QUIET:
                break
            await asyncio.sleep(0.02)

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_stop)
    if ready is not None:

        async def signal_ready() -> None:  # registered last: runs after the gateway's own
            ready.set()

        quart.before_serving(signal_ready)

    await worker_serve(app, config, sockets=sockets, shutdown_trigger=drained)


def _stop_accepting(loop: asyncio.AbstractEventLoop, sock: socket.socket) -> None:
    """New connections are refused from now on; accepted ones are untouched.

    ``shutdown`` on a listening socket is what refuses them (for every worker sharing it);
    the reader is removed first so an asyncio loop does not spin on a socket that can no
    longer accept (uvloop's accept is not a reader and ignores this).
    """
    with contextlib.suppress(OSError, ValueError, NotImplementedError):
        loop.remove_reader(sock.fileno())
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)


def _busy_connections() -> int:
    """Client connections of this worker with a request in progress.

    Read from Hypercorn's tasks: one per connection, plus an idle-timeout task on each
    connection that is between requests. Should those names change, every connection
    counts as busy and the drain just waits its full ``LINGER``.
    """
    connections = idle = 0
    for task in asyncio.all_tasks():
        name = getattr(task.get_coro(), "__qualname__", "")
        if name.endswith("._server_callback"):
            connections += 1
        elif name == "TCPServer._idle_timeout":
            idle += 1
    return connections - idle


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
