"""Rate limiting: token buckets in memory and in a real redis-server shared by gateways;
429 with Retry-After and RateLimit-*; on_backend_error when Redis is down."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from tests.support.configs import MEMORY_RATE_LIMIT_ROUTES
from tests.support.edge import RedisServer
from tests.support.forgetful import ForgetfulProxy
from tests.support.gateway import GatewayProcess
from tests.support.pipeline_cases import sha
from tests.support.upstream import UpstreamServer

CONFIG = (
    """
[upstreams.main]
targets = ["{upstream}"]

[redis]
url = "{redis}"
timeout = 0.5

[consumers.alice]
api_key_sha256 = ["{alice}"]

[consumers.bob]
api_key_sha256 = ["{bob}"]
"""
    + MEMORY_RATE_LIMIT_ROUTES
    + """
[[routes]]
name = "per-consumer"
path = "/per-consumer"
upstream = "main"
[routes.auth]
api_key = true
[routes.rate_limit]
limit = 2
period = 60
key = "consumer"

[[routes]]
name = "shared"
path = "/shared"
upstream = "main"
[routes.rate_limit]
limit = 4
period = 60
backend = "redis"

[[routes]]
name = "fail-open"
path = "/fail-open"
upstream = "main"
[routes.rate_limit]
limit = 1
period = 60
backend = "redis"
on_backend_error = "allow"

[[routes]]
name = "fail-closed"
path = "/fail-closed"
upstream = "main"
[routes.rate_limit]
limit = 100
period = 60
backend = "redis"
on_backend_error = "deny"
"""
)


def config_text(upstream: UpstreamServer, redis: RedisServer) -> str:
    return CONFIG.format(
        upstream=upstream.url, redis=redis.url, alice=sha("alice-key"), bob=sha("bob-key")
    )


@pytest.fixture(scope="module")
def redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path_factory.mktemp("redis")).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def gateways(
    upstream: UpstreamServer, redis: RedisServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[GatewayProcess, GatewayProcess]]:
    """Two gateway instances sharing one Redis."""
    started = []
    for name in ("a", "b"):
        config = tmp_path_factory.mktemp(f"ratelimit-{name}") / "gateway.toml"
        config.write_text(config_text(upstream, redis))
        started.append(GatewayProcess(config).start())
    yield started[0], started[1]
    for process in started:
        assert process.stop() == 0, process.logs()


def get(gateway: GatewayProcess, path: str, **headers: str) -> httpx.Response:
    return httpx.get(gateway.url + path, headers=headers, timeout=10)


def test_memory_bucket_429_with_headers(
    gateways: tuple[GatewayProcess, GatewayProcess],
) -> None:
    gateway = gateways[0]
    statuses = []
    for _ in range(3):
        response = get(gateway, "/mem/x")
        statuses.append(response.status_code)
    assert statuses == [200, 200, 200]
    assert response.headers["ratelimit-limit"] == "3"
    assert response.headers["ratelimit-remaining"] == "0"
    assert 1 <= int(response.headers["ratelimit-reset"]) <= 60
    limited = get(gateway, "/mem/x")
    assert limited.status_code == 429
    assert limited.json()["error"] == "rate_limited"
    assert 1 <= int(limited.headers["retry-after"]) <= 20
    assert limited.headers["ratelimit-remaining"] == "0"
    assert limited.headers["ratelimit-limit"] == "3"


def test_bucket_keyed_by_header(gateways: tuple[GatewayProcess, GatewayProcess]) -> None:
    gateway = gateways[0]
    assert get(gateway, "/tenant/x", **{"x-tenant": "t1"}).status_code == 200
    assert get(gateway, "/tenant/x", **{"x-tenant": "t1"}).status_code == 429
    assert get(gateway, "/tenant/x", **{"x-tenant": "t2"}).status_code == 200


def test_bucket_keyed_by_consumer_from_auth(
    gateways: tuple[GatewayProcess, GatewayProcess],
) -> None:
    gateway = gateways[0]
    alice = {"x-api-key": "alice-key"}
    assert [get(gateway, "/per-consumer/x", **alice).status_code for _ in range(3)] == [
        200,
        200,
        429,
    ]
    assert get(gateway, "/per-consumer/x", **{"x-api-key": "bob-key"}).status_code == 200


def test_redis_bucket_is_shared_across_gateway_instances(
    gateways: tuple[GatewayProcess, GatewayProcess],
) -> None:
    a, b = gateways
    statuses = [get(g, "/shared/x").status_code for g in (a, b, a, b, a, b)]
    assert statuses == [200, 200, 200, 200, 429, 429]
    assert get(b, "/shared/x").headers["ratelimit-limit"] == "4"


def test_redis_down_applies_on_backend_error(
    upstream: UpstreamServer,
    tmp_path: Path,
    make_gateway: Callable[..., GatewayProcess],
) -> None:
    redis = RedisServer(tmp_path).start()
    gateway = make_gateway(config_text(upstream, redis))
    assert get(gateway, "/fail-open/x").status_code == 200
    assert get(gateway, "/fail-open/x").status_code == 429  # Redis counts while it is up
    redis.stop()
    assert get(gateway, "/fail-open/x").status_code == 200  # allow: fail open
    closed = get(gateway, "/fail-closed/x")
    assert closed.status_code == 503  # deny: fail closed
    assert closed.json()["error"] == "rate_limit_unavailable"
    assert "rate-limit backend redis failed" in gateway.logs()


def test_a_redis_restart_lets_no_request_through_unlimited(
    upstream: UpstreamServer,
    tmp_path: Path,
    make_gateway: Callable[..., GatewayProcess],
) -> None:
    """Pooled connections to the Redis that went away are dead: each must be replaced, not
    fail its next request open (``on_backend_error = "allow"``)."""
    redis = RedisServer(tmp_path).start()
    gateway = make_gateway(config_text(upstream, redis))

    async def burst() -> list[int]:  # requests at once hold several pooled connections
        async with httpx.AsyncClient(base_url=gateway.url, timeout=10) as client:
            responses = await asyncio.gather(*(client.get("/fail-open/x") for _ in range(16)))
        return sorted(r.status_code for r in responses)

    assert asyncio.run(burst()) == [200] + [429] * 15
    redis.stop()
    redis.start()  # empty: the bucket is full again, one request's worth
    try:
        statuses = [get(gateway, "/fail-open/x").status_code for _ in range(6)]
    finally:
        redis.stop()
    assert statuses == [200, 429, 429, 429, 429, 429]
    assert "rate-limit backend redis failed" not in gateway.logs()


def test_redis_connections_reset_by_a_failover_are_replaced_not_failed_open(
    upstream: UpstreamServer,
    tmp_path: Path,
    make_gateway: Callable[..., GatewayProcess],
) -> None:
    """After a failover (a rebooted host, a moved virtual IP) every pooled connection still
    looks open and is reset when next used. Each such request must be counted on a new
    connection, not let through: the bucket is empty, so every one is a 429."""
    redis = RedisServer(tmp_path).start()
    try:
        with ForgetfulProxy(redis.path) as proxy:
            url = f"redis://127.0.0.1:{proxy.port}/0"
            gateway = make_gateway(CONFIG.format(
                upstream=upstream.url, redis=url, alice=sha("alice-key"), bob=sha("bob-key")
            ))  # fmt: skip

            async def burst() -> list[int]:  # requests at once hold several connections
                async with httpx.AsyncClient(base_url=gateway.url, timeout=10) as client:
                    responses = await asyncio.gather(
                        *(client.get("/fail-open/x") for _ in range(16))
                    )
                return sorted(r.status_code for r in responses)

            assert asyncio.run(burst()) == [200] + [429] * 15
            pooled = proxy.accepted
            proxy.forget()
            statuses = [get(gateway, "/fail-open/x").status_code for _ in range(pooled + 2)]
            assert statuses == [429] * (pooled + 2)
            assert proxy.accepted > pooled  # a dead connection was replaced by a new one
    finally:
        redis.stop()
    assert "rate-limit backend redis failed" not in gateway.logs()
