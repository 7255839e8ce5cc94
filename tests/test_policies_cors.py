"""CORS per route: preflights answered at the gateway, actual requests decorated."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import httpx
import pytest

from tests.support.gateway import GatewayProcess
from tests.support.upstream import UpstreamServer

CONFIG = """
[upstreams.main]
targets = ["{upstream}"]

[[routes]]
name = "app"
path = "/app"
methods = ["GET", "POST"]
upstream = "main"
[routes.cors]
allow_origins = ["https://app.example.com", "https://*.example.org"]
allow_methods = ["GET", "POST"]
allow_headers = ["content-type", "authorization"]
expose_headers = ["x-upstream"]
allow_credentials = true
max_age = 120

[[routes]]
name = "open"
path = "/open"
upstream = "main"
[routes.cors]
allow_origins = ["*"]
"""


@pytest.fixture(scope="module")
def gateway(
    upstream: UpstreamServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[GatewayProcess]:
    config = tmp_path_factory.mktemp("cors") / "gateway.toml"
    config.write_text(CONFIG.format(upstream=upstream.url))
    process = GatewayProcess(config).start()
    yield process
    assert process.stop() == 0, process.logs()


@pytest.fixture
async def client(gateway: GatewayProcess) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=gateway.url, timeout=10) as c:
        yield c


def preflight(origin: str, method: str = "POST", headers: str = "") -> dict[str, str]:
    out = {"origin": origin, "access-control-request-method": method}
    if headers:
        out["access-control-request-headers"] = headers
    return out


async def test_preflight_answered_at_the_gateway(
    client: httpx.AsyncClient, upstream: UpstreamServer
) -> None:
    before = len(upstream.requests)
    response = await client.options(
        "/app/x", headers=preflight("https://app.example.com", "POST", "Content-Type")
    )
    assert response.status_code == 204
    assert response.headers["access-control-allow-origin"] == "https://app.example.com"
    assert response.headers["access-control-allow-credentials"] == "true"
    assert response.headers["access-control-allow-methods"] == "GET, POST"
    assert response.headers["access-control-allow-headers"] == "content-type, authorization"
    assert response.headers["access-control-max-age"] == "120"
    assert "Origin" in response.headers["vary"]
    assert len(upstream.requests) == before  # never reached the upstream


@pytest.mark.parametrize(
    ("origin", "allowed"),
    [
        ("https://a.example.org", True),
        ("https://a.b.example.org", True),
        ("https://example.org", False),
        ("https://evilexample.org", False),
        ("http://a.example.org", False),
        ("https://app.example.com.evil.io", False),
    ],
)
async def test_wildcard_subdomain_origins(
    client: httpx.AsyncClient, origin: str, allowed: bool
) -> None:
    response = await client.options("/app/x", headers=preflight(origin, "GET"))
    assert response.status_code == (204 if allowed else 403)
    assert ("access-control-allow-origin" in response.headers) is allowed


async def test_preflight_for_a_method_or_header_not_allowed_is_403(
    client: httpx.AsyncClient,
) -> None:
    origin = "https://app.example.com"
    assert (await client.options("/app/x", headers=preflight(origin, "DELETE"))).status_code == 403
    response = await client.options("/app/x", headers=preflight(origin, "GET", "x-custom"))
    assert response.status_code == 403
    assert response.json()["error"] == "cors_forbidden"


async def test_actual_request_gets_cors_headers(client: httpx.AsyncClient) -> None:
    response = await client.get("/app/x", headers={"origin": "https://app.example.com"})
    assert response.status_code == 200
    assert response.headers["access-control-allow-origin"] == "https://app.example.com"
    assert response.headers["access-control-expose-headers"] == "x-upstream"
    assert response.headers["access-control-allow-credentials"] == "true"
    other = await client.get("/app/x", headers={"origin": "https://other.example.com"})
    assert other.status_code == 200
    assert "access-control-allow-origin" not in other.headers


async def test_plain_options_on_a_route_without_options_is_still_405(
    client: httpx.AsyncClient,
) -> None:
    response = await client.options("/app/x")
    assert response.status_code == 405


async def test_any_origin_without_credentials_is_star(client: httpx.AsyncClient) -> None:
    response = await client.get("/open/x", headers={"origin": "https://whoever.test"})
    assert response.headers["access-control-allow-origin"] == "*"
    pre = await client.options("/open/x", headers=preflight("https://whoever.test", "PUT"))
    assert pre.status_code == 204
    assert pre.headers["access-control-allow-origin"] == "*"
