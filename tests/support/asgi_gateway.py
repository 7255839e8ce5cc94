"""The gateway's ASGI app in this process, driven by an httpx client: no server, no socket
between the client and the gateway.

For the pipeline's own logic (matching, policies, error mapping, header handling), where
what a server engine does with the bytes does not matter. What needs a server (framing,
streaming, drain, reload, workers, engines, hostile bytes) stays with
tests/support/gateway.py. The app is built as ``quartgate serve`` builds it
(``create_app(load_config(path))``) and started and stopped as a server would (Quart's
``startup``/``shutdown``: the lifespan), so upstream pools and health checks run.

    async with in_process(CONFIG, tmp_path) as gateway:
        async with gateway.client(peer="192.0.2.7") as client:
            response = await client.get("/api/x")
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import httpx
from quart import Quart

from gateway.app import create_app
from gateway.config import load_config

#: The client address a request seems to come from unless a test says otherwise: a
#: documentation address (RFC 5737), outside any trusted_proxies a test configures.
PEER = "192.0.2.10"


@dataclass
class InProcessGateway:
    app: Quart

    def client(self, peer: str = PEER, host: str = "gw.test") -> httpx.AsyncClient:
        """A client whose requests reach the app as if from ``peer`` (``scope["client"]``),
        addressed to ``host`` (the Host header and ``scope["server"]``)."""
        transport = httpx.ASGITransport(app=self.app, client=(peer, 40000))  # type: ignore[arg-type]
        return httpx.AsyncClient(transport=transport, base_url=f"http://{host}", timeout=30)


@contextlib.asynccontextmanager
async def in_process(config_text: str, folder: Path) -> AsyncIterator[InProcessGateway]:
    """The gateway for ``config_text`` (written to ``folder/gateway.toml``, so relative paths
    in it resolve beside it), started; stopped when the block ends."""
    path = folder / "gateway.toml"
    path.write_text(config_text)
    app = create_app(load_config(path))
    await app.startup()
    try:
        yield InProcessGateway(app)
    finally:
        await app.shutdown()


def upstream_saw(response: httpx.Response) -> tuple[str, dict[str, str]]:
    """What tests/support/upstream.py echoed: the target and the headers it received."""
    assert response.status_code == 200, response.text
    body = json.loads(response.content)
    return body["target"], dict(tuple(h) for h in body["headers"])
