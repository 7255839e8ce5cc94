from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.support.gateway import GatewayProcess
from tests.support.upstream import UpstreamServer


@pytest.fixture(scope="session")
def upstream() -> Iterator[UpstreamServer]:
    server = UpstreamServer()
    server.start()
    yield server
    server.stop()


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
