"""How ``quartgate serve`` runs its workers, on either engine: drain on SIGTERM, reload on SIGHUP.

Hypercorn's own runner (``hypercorn.run.run``) and uvicorn's do not fit a gateway on two
points:

- On SIGHUP their master restarts every worker, and a worker that fails to load a broken
  file brings the whole server down. Here the master checks the file first; a bad file is
  refused with its reasons logged (and counted as a failed reload) and the workers keep
  serving; a good one is passed on as SIGHUP to each worker, which swaps its snapshot in
  place (gateway/ops/reload.py), so no connection is dropped and in-flight requests finish on
  the old upstreams.
- On SIGTERM they stop listening and close keep-alive connections at once, though under
  steady load a client's next request is often on its way. Here each worker drains
  (gateway/server/drain.py): refuse new connections, ``Connection: close`` on every
  response, then close what is idle and give requests in flight ``graceful_timeout``.

The engine (gateway/server/hypercorn_engine.py or uvicorn_engine.py) only serves one
worker; sockets are made here, by Hypercorn's config, and inherited by spawned workers.
"""

from __future__ import annotations

import argparse
import logging
import multiprocessing
import os
import signal
import socket
import sys
import threading
from collections.abc import Mapping
from multiprocessing.connection import wait
from multiprocessing.synchronize import Event
from pathlib import Path
from typing import Any

from hypercorn.config import Config, Sockets

from gateway.config import ConfigError, GatewayConfig, load_config
from gateway.environment import Environment
from gateway.server.engines import ENGINES

log = logging.getLogger("quartgate")


def serve(
    config: Config,
    environment: Environment,
    *,
    gateway: GatewayConfig | None = None,
    bind_origins: Mapping[str, str] | None = None,
) -> int:
    """Serve the gateway ``environment`` describes (its config file, engine and runtime
    directory) with ``config.workers`` processes.

    0 or 1 worker: served in this process. ``gateway`` is the config the workers start
    with (the master checks reloads against it); the runtime directory is the workers'
    shared one, where the master counts the reloads it refuses or passes on.
    ``bind_origins``: where each bind was set (``--bind``, ``hypercorn.toml: bind``), for
    the one line that says which address cannot be listened on.
    """
    # A reload request during start-up must not kill the server (SIGHUP's default action);
    # the reload handler replaces this once the app is serving.
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    try:
        sockets = config.create_sockets()
    except OSError as error:
        origins = bind_origins or {}
        for bind, reason in unavailable(config.bind) or [(", ".join(config.bind), error)]:
            where = origins.get(bind, "bind")
            print(f"{where}: cannot listen on {bind}: {reason.strerror}", file=sys.stderr)
        return 1
    if config.pid_path is not None:
        with open(config.pid_path, "w") as file:
            file.write(str(os.getpid()))
    try:
        if config.workers <= 1:
            return run_worker(config, environment, sockets)
        return _Supervisor(config, environment, sockets, gateway).run()
    finally:
        if config.pid_path is not None and os.path.exists(config.pid_path):
            os.unlink(config.pid_path)


def unavailable(binds: list[str]) -> list[tuple[str, OSError]]:
    """The TCP binds (``HOST:PORT``) that cannot be listened on now, each with its error:
    tried one by one as Hypercorn binds them, each closed at once."""
    failed = []
    for bind in binds:
        host, _, port = bind.rpartition(":")
        host = host.strip("[]")
        if not port.isdigit() or bind.startswith(("unix:", "fd://")):
            continue
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind((host, int(port)))
            except OSError as error:
                failed.append((bind, error))
    return failed


def reload_command(
    config_path: str, pid_file: str | None, pid: int | None, environ: Mapping[str, str]
) -> int:
    """``quartgate reload``: refuse a bad file here, with its reasons; else SIGHUP the server."""
    try:
        load_config(config_path, environ=environ)
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
    served = served_config(pid)
    if served is not None and served != Path(config_path).resolve():
        print(
            f"{config_path}: not the file pid {pid} serves ({served}); a reload reads that "
            f"file again. Edit it, or restart the gateway with -c {config_path}",
            file=sys.stderr,
        )
        return 2
    try:
        os.kill(pid, signal.SIGHUP)
    except OSError as error:
        print(f"cannot signal pid {pid}: {error.strerror}", file=sys.stderr)
        return 1
    print(
        f"{config_path}: OK; reload signalled to pid {pid}. The file is valid; whether the "
        "running gateway takes it (in-process app upstreams and the engine need a restart) "
        "only its log says: 'config reloaded' or 'config reload refused'"
    )
    return 0


def served_config(pid: int) -> Path | None:
    """The config file the ``quartgate serve`` of ``pid`` was started with, read from its
    command line (``-c``, else ``gateway.toml``) and working directory; None when that
    cannot be read (not Linux, another user's process) or ``pid`` is no ``serve``."""
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        cwd = os.readlink(f"/proc/{pid}/cwd")
    except OSError:
        return None
    words = [arg.decode(errors="replace") for arg in argv if arg]
    if "serve" not in words:
        return None
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("-c", "--config", default="gateway.toml")
    known, _ = parser.parse_known_args(words[words.index("serve") + 1 :])
    return (Path(cwd) / str(known.config)).resolve()


# ---- a worker ------------------------------------------------------------------------------


def missing_packages(engine: str) -> list[str]:
    """The packages ``engine`` needs that are not installed (``[fast]`` extra)."""
    return ENGINES[engine].missing_packages()


def run_worker(
    config: Config,
    environment: Environment,
    sockets: Sockets | None = None,
    ready: Event | None = None,
) -> int:
    """Serve until stopped; a config error (the file changed since the master read it) is
    one ``file: key: reason`` line per problem and exit status 1, never a traceback."""
    serve_one = ENGINES[environment.engine].load()
    try:
        serve_one(config, environment, sockets, ready)
    except ConfigError as error:
        print(error, file=sys.stderr)
        return 1
    return 0


def _terminate(process: Any) -> None:
    if process.is_alive() and process.pid is not None:
        os.kill(process.pid, signal.SIGTERM)


def _terminate_when_ready(process: Any, ready: Event, timeout: float = 60.0) -> None:
    """SIGTERM a starting worker once it serves (or at once if it never gets there)."""
    while process.is_alive() and not ready.wait(0.1) and timeout > 0:
        timeout -= 0.1
    _terminate(process)


def _worker_main(
    config: Config, environment: Environment, sockets: Sockets, ready: Event, number: int = 1
) -> None:
    """Entry point of a spawned worker process, named for ``ps`` (it was ``python -c from
    multiprocessing.spawn import ...``); the master keeps its command line, which
    ``quartgate reload`` reads."""
    name_process(f"quartgate: worker {number} ({environment.engine}) -c {environment.config_path}")
    sys.exit(run_worker(config, environment, sockets, ready))


def name_process(title: str) -> None:
    """The process's title in ``ps`` and ``/proc/PID/cmdline`` (when setproctitle is there)."""
    try:
        from setproctitle import setproctitle
    except ImportError:  # a plain pip install without it: the spawn line stays
        return
    setproctitle(title)


# ---- several workers -------------------------------------------------------------------------


class _Supervisor:
    """Starts the workers, checks reloads, forwards signals, and waits for the workers."""

    def __init__(
        self,
        config: Config,
        environment: Environment,
        sockets: Sockets,
        gateway: GatewayConfig | None,
    ) -> None:
        self.config = config
        self.environment = environment
        self.sockets = sockets
        self.running = gateway
        self.runtime_dir = environment.runtime_dir
        self.context = multiprocessing.get_context("spawn")
        self.workers: list[tuple[Any, Event]] = []
        self.stopping = False

    def run(self) -> int:
        from gateway.logs import configure_logging

        configure_logging(self.running.observability.logging if self.running else None)
        config = self.config
        signal.signal(signal.SIGTERM, self._stop)
        signal.signal(signal.SIGINT, self._stop)
        signal.signal(signal.SIGHUP, self._reload)
        for number in range(1, config.workers + 1):
            ready = self.context.Event()
            process = self.context.Process(
                target=_worker_main,
                kwargs={
                    "config": config,
                    "environment": self.environment,
                    "sockets": self.sockets,
                    "ready": ready,
                    "number": number,
                },
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
        for process, ready in self.workers:
            if ready.is_set():
                _terminate(process)
            else:
                # Still starting: SIGTERM before its handler is installed would kill it
                # outright (exit -15). It is stopped as soon as it is serving instead.
                threading.Thread(
                    target=_terminate_when_ready, args=(process, ready), daemon=True
                ).start()
        self._close_sockets()  # with the workers' copies closed, new connections are refused

    def _reload(self, *_: Any) -> None:
        from gateway.ops.reload import reload_problems

        path = self.environment.config_path
        try:
            config = load_config(path, environ=self.environment.variables)
            problems = reload_problems(self.running, config) if self.running else []
            if problems:
                raise ConfigError(problems)
        except ConfigError as error:
            log.error(
                "config reload refused, the workers keep the running config: %s",
                "; ".join(str(p) for p in error.problems),
            )
            self._count("failure")
            return
        self.running = config
        for process, ready in self.workers:
            # A worker still starting reads the (checked) file itself; SIGHUP before its
            # handler exists would kill it.
            if ready.is_set() and process.is_alive() and process.pid is not None:
                os.kill(process.pid, signal.SIGHUP)
        self._count("success")

    def _count(self, result: str) -> None:
        """One reload, one count, whatever the number of workers (gateway/observability)."""
        if self.runtime_dir is None:
            return
        from gateway.ops.control import Control

        try:
            with Control(self.runtime_dir).change() as control:
                control.reloads_to_count[result] = control.reloads_to_count.get(result, 0) + 1
        except (OSError, ValueError) as error:
            log.error("reload not counted: %s", error)

    def _close_sockets(self) -> None:
        for sock in [*self.sockets.secure_sockets, *self.sockets.insecure_sockets]:
            sock.close()
