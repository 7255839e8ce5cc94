"""Run the real gateway (``quartgate serve``, on either engine) as a subprocess for a test.

``GatewayProcess(config, engine="uvicorn")`` serves it on the fast engine; the default,
``None``, leaves the choice to the config (``[server] engine``, else Hypercorn). To run a
test on every engine, take the ``engine`` fixture of tests/conftest.py and pass it on::

    def test_x(make_gateway, engine):
        gateway = make_gateway(CONFIG, engine=engine)

or, for a module-scoped gateway, parametrize the fixture with :data:`ENGINES`.

Its port is bound here and the socket handed over (``--bind fd://N``), never chosen free
and bound later: another process (a parallel test run) cannot take it in between.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

#: Every engine ``quartgate serve --engine`` runs (gateway.config.ENGINES).
ENGINES = ("hypercorn", "uvicorn")
ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    """A port that was free a moment ago: racy (another process may bind it before the
    caller does). Only for what takes a port number and cannot be handed a socket (nginx,
    ``[admin] bind``, scripts/run-demo.sh); servers take a :func:`bound_socket` (``quartgate
    serve --bind fd://N``), a down upstream is a :func:`dead_port`."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def bound_socket() -> socket.socket:
    """A TCP socket bound to a port of its own on 127.0.0.1, not listening yet: the port is
    held from now on, so nothing else can take it before the server given it listens."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    return sock


def port_of(sock: socket.socket) -> int:
    return int(sock.getsockname()[1])


_DEAD: list[socket.socket] = []


def dead_port() -> int:
    """A port that refuses every connection until the test run ends (one socket, bound and
    never listening, shared by every caller): the address of an upstream that is down."""
    if not _DEAD:
        _DEAD.append(bound_socket())
        atexit.register(_DEAD[0].close)
    return port_of(_DEAD[0])


@contextlib.contextmanager
def refused_port() -> Iterator[int]:
    """A port where every connection is refused for as long as the block runs: a socket is
    bound to it and never listens (a dead upstream no other process can take the place of)."""
    with bound_socket() as sock:
        yield port_of(sock)


def wait_for_port(
    port: int | Path,
    deadline: float,
    process: subprocess.Popen[bytes] | None = None,
    log: Path | None = None,
) -> None:
    """Readiness probe: return once something accepts connections on the port (on
    127.0.0.1), or on the unix socket when ``port`` is a path."""
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            text = log.read_text() if log else ""
            raise RuntimeError(f"process exited with {process.returncode} before ready:\n{text}")
        try:
            if isinstance(port, Path):
                with socket.socket(socket.AF_UNIX) as sock:
                    sock.settimeout(0.5)
                    sock.connect(str(port))
            else:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.02)
    raise TimeoutError(f"nothing listening on {port}")


@contextlib.contextmanager
def serving(
    args: list[str],
    port: int | Path,
    log: Path,
    env: dict[str, str] | None = None,
    timeout: float = 30.0,
    sock: socket.socket | None = None,
) -> Iterator[subprocess.Popen[bytes]]:
    """Run a server process from the repo root until the block ends; yield once it listens.

    ``sock``: a :func:`bound_socket` the process inherits (its ``args`` name
    ``sock.fileno()``, e.g. ``--bind fd://N``); this process's copy is closed once started.
    """
    fds = [sock.fileno()] if sock is not None else []
    with log.open("wb") as out:
        try:
            process = subprocess.Popen(
                args, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, pass_fds=fds
            )
        finally:
            if sock is not None:
                sock.close()
        try:
            wait_for_port(port, time.monotonic() + timeout, process, log)
            yield process
        finally:
            process.terminate()
            process.wait(10)


class GatewayProcess:
    """``quartgate serve -c CONFIG`` on a port of its own; ``stop()`` sends SIGTERM and waits."""

    def __init__(
        self,
        config: Path,
        *,
        server_config: str | None = None,
        workers: int = 1,
        extra_args: tuple[str, ...] = (),
        engine: str | None = None,
        env: dict[str, str] | None = None,
    ) -> None:
        self.config = config
        # Bound here and handed to the server (--bind fd://N): the port is never free
        # between choosing it and listening on it, so parallel runs cannot take it.
        self._socket: socket.socket | None = bound_socket()
        self.port = port_of(self._socket)
        self.log = config.with_suffix(".log")
        self.workers = workers
        self.server_config = server_config
        self.extra_args = extra_args
        self.engine = engine
        self.env = env or {}  # added to this process's environment for the server's
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 30.0) -> GatewayProcess:
        if self._socket is None:
            raise RuntimeError("a GatewayProcess starts once: its socket went to the first run")
        sock, self._socket = self._socket, None
        server_config = self.config.parent / "hypercorn-test.toml"
        server_config.write_text(self.server_config or "graceful_timeout = 10.0\n")
        args = [
            sys.executable,
            "-m",
            "gateway.cli",
            "serve",
            "-c",
            str(self.config),
            "--server-config",
            str(server_config),
            "--bind",
            f"fd://{sock.fileno()}",
            "--workers",
            str(self.workers),
            *(["--engine", self.engine] if self.engine else []),
            *self.extra_args,
        ]
        env = dict(os.environ, PYTHONUNBUFFERED="1", **self.env)
        self._log_file = self.log.open("wb")
        with sock:  # the server has its own copy; ours would keep the port open after it
            self.process = subprocess.Popen(
                args,
                cwd=ROOT,
                stdout=self._log_file,
                stderr=subprocess.STDOUT,
                env=env,
                pass_fds=[sock.fileno()],
            )
        # Not listening until the server listens: connects are refused until it is ready.
        wait_for_port(self.port, time.monotonic() + timeout, self.process, self.log)
        return self

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def signal(self, sig: int) -> None:
        assert self.process is not None
        self.process.send_signal(sig)

    def stop(self, timeout: float = 30.0) -> int:
        if self.process is None:
            if self._socket is not None:  # never started: the port is let go
                self._socket.close()
                self._socket = None
            return 0
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log_file.close()
        return self.process.returncode

    def logs(self) -> str:
        return self.log.read_text(errors="replace")

    def rss_kib(self, field: str = "VmRSS") -> int:
        """Resident memory of the gateway process (``VmHWM`` for the peak)."""
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
        raise KeyError(field)
