"""Graceful shutdown: under steady load, SIGTERM loses no request the gateway accepted, and
idle keep-alive connections do not hold up the exit. On each engine."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from tests.support.edge import read_response
from tests.support.faulty import FaultyUpstream
from tests.support.gateway import GatewayProcess
from tests.support.observability import wait_until

CONFIG = """
[upstreams.api]
targets = ["{url}"]

[[routes]]
path = "/api"
upstream = "api"
"""


@pytest.fixture
def upstream() -> Iterator[FaultyUpstream]:
    server = FaultyUpstream("a").start()
    yield server
    server.close()


class Load:
    """Clients sending request after request on keep-alive connections until refused."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.ok = 0
        self.closing = 0  # responses that said Connection: close
        self.refused = 0  # connection refused: not accepted, safe for any client to retry
        self.failures: list[str] = []

    async def client(self, deadline: float) -> None:
        async with httpx.AsyncClient(base_url=self.url, timeout=20) as client:
            while time.monotonic() < deadline:
                try:
                    response = await client.get("/api/x")
                except httpx.ConnectError:
                    self.refused += 1
                    return
                except httpx.HTTPError as error:
                    self.failures.append(repr(error))
                    return
                if response.status_code != 200:
                    self.failures.append(f"status {response.status_code}: {response.text}")
                    return
                self.ok += 1
                if response.headers.get("connection") == "close":
                    self.closing += 1


@pytest.mark.parametrize("workers", [1, 2])
async def test_sigterm_under_load_finishes_in_flight_requests_and_fails_none(
    make_gateway: Callable[..., GatewayProcess],
    upstream: FaultyUpstream,
    workers: int,
    engine: str,
) -> None:
    gateway = make_gateway(CONFIG.format(url=upstream.url), workers=workers, engine=engine)
    load = Load(gateway.url)
    deadline = time.monotonic() + 20  # bounds the load loop even if SIGTERM went unheard
    clients = [asyncio.create_task(load.client(deadline)) for _ in range(8)]
    async with httpx.AsyncClient(base_url=gateway.url, timeout=20) as slow_client:
        slow = [asyncio.create_task(slow_client.get("/api/x?delay=1")) for _ in range(2)]
        await asyncio.to_thread(upstream.waiting.wait, 10)
        while load.ok < 200 and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        assert not load.failures
        gateway.signal(signal.SIGTERM)
        slow_responses = await asyncio.gather(*slow)
    await asyncio.gather(*clients)
    code = await asyncio.to_thread(gateway.process.wait, 20)  # type: ignore[union-attr]
    assert code == 0, gateway.logs()
    assert load.failures == []
    # The slow requests were in flight at SIGTERM: finished whole, and told to close.
    assert [r.status_code for r in slow_responses] == [200, 200]
    assert all(r.json()["served_by"] == "a" for r in slow_responses)
    assert all(r.headers["connection"] == "close" for r in slow_responses)
    assert load.closing >= 1
    assert load.refused == 8  # every client stopped at a refused connect, none on an error
    assert "stopping: no new connections" in gateway.logs()


#: Loaded first by every Python process of a gateway started with it on PYTHONPATH (its
#: spawned workers too): the drain's cap (LINGER, 2 s) becomes an hour, so an exit that
#: waits for the cap never comes, whatever the machine's speed.
NO_LINGER_CAP = """
import gateway.server.drain

gateway.server.drain.LINGER = 3600.0
"""


@pytest.fixture
def linger_for_an_hour(tmp_path: Path) -> dict[str, str]:
    """Environment for a gateway whose drain can only end by being quiet (QUIET, 0.1 s of no
    request in progress), never by its cap running out."""
    folder = tmp_path / "site"
    folder.mkdir()
    (folder / "sitecustomize.py").write_text(NO_LINGER_CAP)
    path = os.pathsep.join(p for p in (str(folder), os.environ.get("PYTHONPATH", "")) if p)
    return {"PYTHONPATH": path}


@pytest.mark.parametrize("workers", [1, 2])
async def test_sigterm_closes_idle_keep_alive_connections_at_once(
    make_gateway: Callable[..., GatewayProcess],
    upstream: FaultyUpstream,
    workers: int,
    engine: str,
    linger_for_an_hour: dict[str, str],
) -> None:
    """A proxy in front (nginx, a load balancer) holds idle keep-alive connections: they
    do not keep the drain waiting. Idle connections used to count as busy, so every exit
    waited out the drain's LINGER (2 s; 3.9 s was seen); here LINGER is an hour (and
    graceful_timeout too), so the gateway exits only if idle connections let the drain end
    by itself: no clock decides the outcome, only whether the exit happens at all."""
    gateway = make_gateway(
        CONFIG.format(url=upstream.url),
        workers=workers,
        engine=engine,
        server_config="graceful_timeout = 3600.0\n",
        env=linger_for_an_hour,
    )
    # Every worker serving, not only the first: the port answers as soon as one does.
    wait_until(lambda: gateway.logs().count("Running on") >= workers, what="all workers up")
    idle: list[socket.socket] = []
    try:
        for _ in range(16):
            sock = socket.create_connection(("127.0.0.1", gateway.port), timeout=10)
            idle.append(sock)
            sock.sendall(b"GET /api/x HTTP/1.1\r\nhost: gw\r\n\r\n")
            assert read_response(sock).startswith(b"HTTP/1.1 200")  # then left open, idle
        gateway.signal(signal.SIGTERM)
        try:
            # A liveness bound, not a measurement: the exit takes about QUIET; the only
            # other outcome is an hour.
            code = await asyncio.to_thread(gateway.process.wait, 60)  # type: ignore[union-attr]
        except subprocess.TimeoutExpired:
            pytest.fail("idle keep-alive connections kept the drain waiting for its cap")
        assert code == 0, gateway.logs()
        for sock in idle:
            assert sock.recv(1) == b""  # closed by the gateway, no response on it
    finally:
        for sock in idle:
            sock.close()
