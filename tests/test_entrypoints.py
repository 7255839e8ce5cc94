"""Other ways in and out: HTTP/2 upstreams, and plain ``hypercorn gateway.asgi:app``."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from tests.support.gateway import ROOT, GatewayProcess, free_port, serving
from tests.support.upstream import UpstreamServer


@pytest.fixture
def h2_upstream(tmp_path: Path) -> Iterator[str]:
    port = free_port()
    args = [
        sys.executable,
        "-m",
        "hypercorn",
        "tests.support.h2_upstream:app",
        "--bind",
        f"127.0.0.1:{port}",
    ]
    with serving(args, port, tmp_path / "h2.log"):
        yield f"http://127.0.0.1:{port}"


async def test_http2_upstream(
    make_gateway: Callable[..., GatewayProcess], h2_upstream: str
) -> None:
    gateway = make_gateway(f"""
[upstreams.h2]
targets = ["{h2_upstream}"]
http2 = true

[[routes]]
path = "/h2"
upstream = "h2"
strip_prefix = true
""")
    async with httpx.AsyncClient(base_url=gateway.url, timeout=30) as client:
        for _ in range(3):
            response = await client.get("/h2/a%20b?q=1&q=2", headers={"x-one": "1"})
            assert response.status_code == 200
            seen = response.json()
            assert seen["http_version"] == "2"
            assert seen["path"] == "/a%20b"
            assert seen["query"] == "q=1&q=2"
            assert ["x-one", "1"] in seen["headers"]
            assert response.headers["x-h2"] == "yes"
        posted = await client.post("/h2/p", content=b"x" * 200_000)
        assert posted.json()["body_length"] == 200_000


def test_plain_hypercorn_entry_point(tmp_path: Path, upstream: UpstreamServer) -> None:
    config = tmp_path / "gw.toml"
    config.write_text(
        f'[upstreams.u]\ntargets = ["{upstream.url}"]\n[[routes]]\npath = "/"\nupstream = "u"\n'
    )
    port = free_port()
    args = [
        sys.executable,
        "-m",
        "hypercorn",
        "--config",
        str(ROOT / "hypercorn.toml"),
        "--bind",
        f"127.0.0.1:{port}",
        "gateway.asgi:app",
    ]
    env = dict(os.environ, QUARTGATE_CONFIG=str(config))
    with serving(args, port, tmp_path / "hc.log", env):
        response = httpx.get(f"http://127.0.0.1:{port}/via/hypercorn", timeout=30)
    assert response.status_code == 200
    assert response.json()["target"] == "/via/hypercorn"
