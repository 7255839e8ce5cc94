"""Run the real gateway (``quartgate serve``, on either engine) as a subprocess for a test.

``GatewayProcess(config, engine="uvicorn")`` serves it on the fast engine; the default,
``None``, leaves the choice to the config (``[server] engine``, else Hypercorn). To run a
test on every engine, take the ``engine`` fixture of tests/conftest.py and pass it on::

    def test_x(make_gateway, engine):
        gateway = make_gateway(CONFIG, engine=engine)

or, for a module-scoped gateway, parametrize the fixture with :data:`ENGINES`.
"""

from __future__ import annotations

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
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for_port(
    port: int,
    deadline: float,
    process: subprocess.Popen[bytes] | None = None,
    log: Path | None = None,
) -> None:
    """Readiness probe: return once something accepts connections on the port."""
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            text = log.read_text() if log else ""
            raise RuntimeError(f"process exited with {process.returncode} before ready:\n{text}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.02)
    raise TimeoutError(f"nothing listening on port {port}")


@contextlib.contextmanager
def serving(
    args: list[str], port: int, log: Path, env: dict[str, str] | None = None, timeout: float = 30.0
) -> Iterator[subprocess.Popen[bytes]]:
    """Run a server process from the repo root until the block ends; yield once it listens."""
    with log.open("wb") as out:
        process = subprocess.Popen(args, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
        try:
            wait_for_port(port, time.monotonic() + timeout, process, log)
            yield process
        finally:
            process.terminate()
            process.wait(10)


class GatewayProcess:
    """``quartgate serve -c CONFIG`` on a free port; ``stop()`` sends SIGTERM and waits."""

    def __init__(
        self,
        config: Path,
        *,
        server_config: str | None = None,
        workers: int = 1,
        extra_args: tuple[str, ...] = (),
        engine: str | None = None,
    ) -> None:
        self.config = config
        self.port = free_port()
        self.log = config.with_suffix(".log")
        self.workers = workers
        self.server_config = server_config
        self.extra_args = extra_args
        self.engine = engine
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 30.0) -> GatewayProcess:
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
            f"127.0.0.1:{self.port}",
            "--workers",
            str(self.workers),
            *(["--engine", self.engine] if self.engine else []),
            *self.extra_args,
        ]
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        self._log_file = self.log.open("wb")
        self.process = subprocess.Popen(
            args, cwd=ROOT, stdout=self._log_file, stderr=subprocess.STDOUT, env=env
        )
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
