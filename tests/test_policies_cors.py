"""CORS per route: preflights answered at the gateway, actual requests decorated."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import httpx
import pytest

from tests.support.configs import CORS_ROUTES
from tests.support.gateway import GatewayProcess
from tests.support.pipeline_cases import WILDCARD_ORIGINS, assert_app_preflight_answered, preflight
from tests.support.upstream import UpstreamServer

CONFIG = (
    """
[upstreams.main]
targets = ["{upstream}"]
"""
    + CORS_ROUTES
)


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


async def test_preflight_answered_at_the_gateway(
    client: httpx.AsyncClient, upstream: UpstreamServer
) -> None:
    before = len(upstream.requests)
    response = await client.options(
        "/app/x", headers=preflight("https://app.example.com", "POST", "Content-Type")
    )
    assert_app_preflight_answered(response)
    assert len(upstream.requests) == before  # never reached the upstream


@pytest.mark.parametrize(("origin", "allowed"), WILDCARD_ORIGINS)
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
