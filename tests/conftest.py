from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.support.gateway import ENGINES, GatewayProcess, bound_socket, port_of, serving
from tests.support.upstream import UpstreamServer


@pytest.fixture(scope="session")
def upstream() -> Iterator[UpstreamServer]:
    server = UpstreamServer()
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def mock_upstream(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The fast load-test upstream (loadtests/mock_upstream.py) in a subprocess; its URL."""
    sock = bound_socket()
    port = port_of(sock)
    log = tmp_path_factory.mktemp("mock-upstream") / "mock.log"
    args = [sys.executable, "-m", "loadtests.mock_upstream", "--fd", str(sock.fileno())]
    with serving(args, port, log, sock=sock):
        yield f"http://127.0.0.1:{port}"


@pytest.fixture(params=ENGINES)
def engine(request: pytest.FixtureRequest) -> str:
    """Each server engine in turn: a test that takes it runs once per engine.

    Pass it on as ``make_gateway(CONFIG, engine=engine)`` or
    ``GatewayProcess(path, engine=engine)``. Take it in tests that prove behaviour the
    engine serves (framing, timeouts, drain, binds, workers, signals), not in every test:
    the suite's time doubles with each test that takes it.
    """
    return str(request.param)


@pytest.fixture
def make_gateway(tmp_path: Path) -> Iterator[Callable[..., GatewayProcess]]:
    """Start a gateway from config text; every gateway started is stopped after the test."""
    started: list[GatewayProcess] = []

    def start(config_text: str, name: str = "gateway", **kwargs: object) -> GatewayProcess:
        path = tmp_path / f"{name}.toml"
        path.write_text(config_text)
        gateway = GatewayProcess(path, **kwargs)  # type: ignore[arg-type]
        started.append(gateway)
        return gateway.start()

    yield start
    for gateway in started:
        gateway.stop()
