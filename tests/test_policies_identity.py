"""Client identity behind proxies, request id, trace context and header rules, end to end."""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator, Iterator

import httpx
import pytest

from tests.support.configs import HEADER_RULES_ROUTE
from tests.support.gateway import GatewayProcess
from tests.support.upstream import UpstreamServer

CONFIG = (
    """
[gateway]
trusted_proxies = ["127.0.0.1/32"]

[upstreams.main]
targets = ["{upstream}"]

[[routes]]
name = "api"
path = "/api"
upstream = "main"
"""
    + HEADER_RULES_ROUTE
)

PARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


@pytest.fixture(scope="module")
def gateway(
    upstream: UpstreamServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[GatewayProcess]:
    config = tmp_path_factory.mktemp("identity") / "gateway.toml"
    config.write_text(CONFIG.format(upstream=upstream.url))
    process = GatewayProcess(config).start()
    yield process
    assert process.stop() == 0, process.logs()


def client_from(gateway: GatewayProcess, source: str) -> httpx.AsyncClient:
    transport = httpx.AsyncHTTPTransport(local_address=source)
    return httpx.AsyncClient(base_url=gateway.url, transport=transport, timeout=10)


@pytest.fixture
async def untrusted(gateway: GatewayProcess) -> AsyncIterator[httpx.AsyncClient]:
    async with client_from(gateway, "127.0.0.2") as client:  # not in trusted_proxies
        yield client


@pytest.fixture
async def trusted(gateway: GatewayProcess) -> AsyncIterator[httpx.AsyncClient]:
    async with client_from(gateway, "127.0.0.1") as client:
        yield client


def seen_headers(response: httpx.Response) -> dict[str, str]:
    assert response.status_code == 200, response.text
    return dict(tuple(h) for h in json.loads(response.content)["headers"])


# ---- client identity -------------------------------------------------------------------------


async def test_untrusted_peer_forwarding_headers_are_replaced(
    untrusted: httpx.AsyncClient,
) -> None:
    response = await untrusted.get(
        "/api/x",
        headers={
            "x-forwarded-for": "6.6.6.6",
            "x-forwarded-proto": "https",
            "x-forwarded-host": "evil.example",
            "forwarded": "for=6.6.6.6;proto=https",
        },
    )
    seen = seen_headers(response)
    assert seen["x-forwarded-for"] == "127.0.0.2"
    assert seen["x-forwarded-proto"] == "http"
    assert seen["x-forwarded-host"] == f"127.0.0.1:{response.url.port}"
    assert "forwarded" not in seen


async def test_trusted_peer_chain_is_believed_and_extended(trusted: httpx.AsyncClient) -> None:
    response = await trusted.get(
        "/rules/1",
        headers={
            "x-forwarded-for": "198.51.100.1, 203.0.113.7",
            "x-forwarded-proto": "https",
            "x-forwarded-host": "api.example.com",
        },
    )
    seen = seen_headers(response)
    assert seen["x-forwarded-for"] == "198.51.100.1, 203.0.113.7, 127.0.0.1"
    assert seen["x-forwarded-proto"] == "https"
    assert seen["x-forwarded-host"] == "api.example.com"
    assert seen["x-client"] == "203.0.113.7"  # the right-most untrusted hop


async def test_trusted_peer_rfc7239_forwarded(trusted: httpx.AsyncClient) -> None:
    response = await trusted.get(
        "/rules/2", headers={"forwarded": 'for="[2001:db8::7]:443";proto=https'}
    )
    seen = seen_headers(response)
    assert seen["x-client"] == "2001:db8::7"
    assert seen["x-forwarded-proto"] == "https"
    assert seen["forwarded"].startswith('for="[2001:db8::7]:443";proto=https, for=127.0.0.1;')


# ---- request id ------------------------------------------------------------------------------


async def test_request_id_accepted_passed_up_and_back(untrusted: httpx.AsyncClient) -> None:
    response = await untrusted.get("/api/rid", headers={"x-request-id": "req-abc-1"})
    assert seen_headers(response)["x-request-id"] == "req-abc-1"
    assert response.headers["x-request-id"] == "req-abc-1"


async def test_request_id_generated_when_absent_or_invalid(
    untrusted: httpx.AsyncClient,
) -> None:
    for headers in ({}, {"x-request-id": "has space"}, {"x-request-id": "x" * 300}):
        response = await untrusted.get("/api/rid", headers=headers)
        generated = response.headers["x-request-id"]
        assert re.fullmatch(r"[0-9a-f-]{36}", generated)
        assert seen_headers(response)["x-request-id"] == generated


async def test_request_id_in_error_body_and_log(
    untrusted: httpx.AsyncClient, gateway: GatewayProcess
) -> None:
    response = await untrusted.get("/nowhere", headers={"x-request-id": "req-log-42"})
    assert response.status_code == 404
    assert response.json()["request_id"] == "req-log-42"
    assert "[req-log-42]" in gateway.logs()


# ---- trace context ---------------------------------------------------------------------------


async def test_traceparent_propagated_with_a_new_span(untrusted: httpx.AsyncClient) -> None:
    response = await untrusted.get(
        "/api/trace", headers={"traceparent": PARENT, "tracestate": "vendor=1"}
    )
    seen = seen_headers(response)
    trace, parent = seen["traceparent"], PARENT
    assert trace.split("-")[1] == parent.split("-")[1]  # same trace
    assert trace.split("-")[2] != parent.split("-")[2]  # the gateway's own span
    assert trace.endswith("-01")
    assert seen["tracestate"] == "vendor=1"


async def test_invalid_traceparent_and_its_tracestate_are_dropped(
    untrusted: httpx.AsyncClient,
) -> None:
    response = await untrusted.get(
        "/api/trace", headers={"traceparent": "00-bogus", "tracestate": "vendor=1"}
    )
    seen = seen_headers(response)
    assert "traceparent" not in seen and "tracestate" not in seen


# ---- header rules ----------------------------------------------------------------------------


async def test_header_rules_on_request_and_response(untrusted: httpx.AsyncClient) -> None:
    response = await untrusted.get(
        "/rules/42", headers={"x-secret": "s", "x-item": "client-sent", "x-request-id": "r-7"}
    )
    seen = seen_headers(response)
    assert seen["x-client"] == "127.0.0.2"
    assert seen["x-rid"] == "r-7"
    assert seen["x-item"] == "item-42"  # set replaces what the client sent
    assert seen["x-added"] == "a {literal}"
    assert "x-secret" not in seen
    assert response.headers["x-served-by"] == "quartgate rules"
    assert response.headers["x-item"] == "42"
    assert "x-upstream" not in response.headers


# A configured request_id_header name: tests/test_pipeline_inprocess.py, in process.
