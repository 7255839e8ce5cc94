"""The request pipeline's logic, driven in process through the gateway's ASGI app (no server
engine, no socket to the gateway; the upstream is the real test upstream on 127.0.0.1):
matching outcomes, policies, error mapping and header handling.

Each feature here also has a real-server test (test_proxy_e2e.py, test_policies_*.py,
test_hostile_input.py): those prove the wiring through an engine; these prove the rules,
fast, so that every case of a rule can have its test. Both take their route tables from
tests/support/configs.py and the cases they share from tests/support/pipeline_cases.py.
"""

from __future__ import annotations

import json
import re
import socket
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from tests.support.asgi_gateway import PEER, InProcessGateway, in_process, upstream_saw
from tests.support.configs import (
    AUTH_IDENTITIES,
    AUTH_ROUTES,
    CORS_ROUTES,
    HEADER_RULES_ROUTE,
    MATCHING_ROUTES,
    MEMORY_RATE_LIMIT_ROUTES,
)
from tests.support.gateway import refused_port
from tests.support.pipeline_cases import (
    AUTH_VALUES,
    INVALID_CLAIMS,
    WILDCARD_ORIGINS,
    assert_app_preflight_answered,
    bearer,
    jwk_of,
    preflight,
    token,
    token_with_claims,
)
from tests.support.upstream import UpstreamServer

EC_KEY = ec.generate_private_key(ec.SECP256R1())
TRUSTED = "10.1.2.3"  # in trusted_proxies below; PEER (192.0.2.10) is not
PARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


CONFIG = (
    """
[gateway]
trusted_proxies = ["10.0.0.0/8"]
max_body_size = 1000
max_header_count = 30
max_header_size = 4096

[upstreams.main]
targets = ["{upstream}"]

[upstreams.other]
targets = ["{upstream}"]

[upstreams.dead]
targets = ["http://127.0.0.1:{dead}"]

[upstreams.slow]
targets = ["{upstream}"]
read_timeout = 0.2
"""
    + AUTH_IDENTITIES
    + MATCHING_ROUTES
    + AUTH_ROUTES
    + CORS_ROUTES
    + HEADER_RULES_ROUTE
    + MEMORY_RATE_LIMIT_ROUTES
    + """
[[routes]]
name = "dead"
path = "/dead"
upstream = "dead"

[[routes]]
name = "slow"
path = "/slow"
upstream = "slow"
"""
)


@pytest.fixture
def dead_port() -> Iterator[int]:
    with refused_port() as port:
        yield port


@pytest.fixture
async def gateway(
    upstream: UpstreamServer, dead_port: int, tmp_path: Path
) -> AsyncIterator[InProcessGateway]:
    (tmp_path / "jwks.json").write_text(json.dumps({"keys": [jwk_of(EC_KEY, "e1", "ES256")]}))
    text = CONFIG.format(upstream=upstream.url, dead=dead_port, **AUTH_VALUES)
    async with in_process(text, tmp_path) as started:
        yield started


@pytest.fixture
async def client(gateway: InProcessGateway) -> AsyncIterator[httpx.AsyncClient]:
    async with gateway.client() as c:
        yield c


def error_of(response: httpx.Response, status: int, code: str) -> dict[str, str]:
    """The gateway's JSON error body, checked for its shape; returned for more checks."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    body: dict[str, str] = response.json()
    assert set(body) == {"error", "detail", "request_id"}
    assert body["error"] == code
    assert body["request_id"] == response.headers["x-request-id"]
    return body


# ---- matching --------------------------------------------------------------------------------


async def test_unknown_path_is_404_route_not_found(client: httpx.AsyncClient) -> None:
    response = await client.get("/nowhere", headers={"x-request-id": "req-404"})
    assert error_of(response, 404, "route_not_found") == {
        "error": "route_not_found",
        "detail": "no route for /nowhere",
        "request_id": "req-404",
    }
    # A prefix matches on segment boundaries only.
    error_of(await client.get("/apix"), 404, "route_not_found")
    # A template segment is one non-empty segment.
    error_of(await client.get("/items"), 404, "route_not_found")
    error_of(await client.get("/items/"), 404, "route_not_found")


async def test_wrong_method_is_405_with_allow(
    client: httpx.AsyncClient, upstream: UpstreamServer
) -> None:
    before = len(upstream.requests)
    response = await client.post("/items/42", content=b"x")
    body = error_of(response, 405, "method_not_allowed")
    assert response.headers["allow"] == "GET, HEAD"
    assert body["detail"] == "method POST is not allowed on this route"
    # The union of the methods of every route on the path (the literal and the template).
    other = await client.put("/items/special")
    error_of(other, 405, "method_not_allowed")
    assert other.headers["allow"] == "DELETE, GET, HEAD"
    assert len(upstream.requests) == before


async def test_head_follows_get(client: httpx.AsyncClient, upstream: UpstreamServer) -> None:
    response = await client.head("/items/42")
    assert response.status_code == 200
    assert response.content == b""
    assert upstream.last().method == "HEAD"
    assert upstream.last().target == "/items/42"


async def test_longest_literal_prefix_wins_and_strips(client: httpx.AsyncClient) -> None:
    assert upstream_saw(await client.get("/api/users/7?x=1"))[0] == "/7?x=1"
    assert upstream_saw(await client.get("/api/users"))[0] == "/"
    assert upstream_saw(await client.get("/api/usersx"))[0] == "/api/usersx"  # /api, no strip
    assert upstream_saw(await client.get("/api/orders/7"))[0] == "/api/orders/7"


async def test_template_and_literal(client: httpx.AsyncClient, upstream: UpstreamServer) -> None:
    assert upstream_saw(await client.get("/items/42/parts"))[0] == "/items/42/parts"
    response = await client.delete("/items/special")
    assert response.status_code == 200  # the literal route, which allows DELETE
    assert upstream.last().method == "DELETE"


async def test_host_specific_route_beats_any_host(client: httpx.AsyncClient) -> None:
    # Host matching ignores case and the port.
    target, _ = upstream_saw(
        await client.get("/api/orders", headers={"host": "API.example.com:8080"})
    )
    assert target == "/orders"
    target, _ = upstream_saw(await client.get("/api/orders", headers={"host": "other.example.com"}))
    assert target == "/api/orders"


# ---- policies: API keys and JWTs -------------------------------------------------------------


async def test_missing_or_wrong_api_key_is_401_with_challenge(
    client: httpx.AsyncClient, upstream: UpstreamServer
) -> None:
    before = len(upstream.requests)
    for headers in ({}, {"x-api-key": "wrong"}):
        response = await client.get("/keyed/x", headers=headers)
        error_of(response, 401, "unauthorized")
        assert response.headers["www-authenticate"] == 'Key realm="quartgate"'
    assert len(upstream.requests) == before


async def test_api_key_names_the_consumer_and_is_hidden(client: httpx.AsyncClient) -> None:
    response = await client.get(
        "/keyed/x", headers={"x-api-key": "alice-key", "x-consumer-username": "root"}
    )
    _, seen = upstream_saw(response)
    assert seen["x-consumer-username"] == "alice"  # the forged one is gone
    assert seen["x-who"] == "alice"  # the consumer is available to later policies
    assert "x-api-key" not in seen  # hide_credentials
    target, seen = upstream_saw(await client.get("/keyed/x?a=1&apikey=bob-key&b=2"))
    assert seen["x-consumer-username"] == "bob"  # the "sha256:" prefixed hash
    assert target == "/keyed/x?a=1&b=2"


async def test_valid_key_not_allowed_is_403(client: httpx.AsyncClient) -> None:
    error_of(await client.get("/admin/x", headers={"x-api-key": "bob-key"}), 403, "forbidden")
    _, seen = upstream_saw(await client.get("/admin/x", headers={"x-api-key": "alice-key"}))
    assert seen["x-consumer-username"] == "alice"  # allowed through the "admins" group


async def test_jwt_claims_forwarded_as_headers(client: httpx.AsyncClient) -> None:
    headers = {**bearer(token(email="u@example.com")), "x-jwt-sub": "forged"}
    _, seen = upstream_saw(await client.get("/jwt/x", headers=headers))
    assert seen["x-jwt-sub"] == "user-1"
    assert seen["x-jwt-email"] == "u@example.com"
    assert seen["x-consumer-username"] == "user-1"
    assert seen["authorization"].startswith("Bearer ")  # not hidden unless configured


async def test_jwt_missing_is_401_with_bearer_challenge(client: httpx.AsyncClient) -> None:
    response = await client.get("/jwt/x")
    error_of(response, 401, "unauthorized")
    assert response.headers["www-authenticate"] == 'Bearer realm="quartgate"'


@pytest.mark.parametrize(("claims", "detail"), INVALID_CLAIMS)
async def test_jwt_invalid_claims_are_401(
    client: httpx.AsyncClient, claims: dict[str, Any], detail: str
) -> None:
    response = await client.get("/jwt/x", headers=bearer(token_with_claims(claims)))
    assert error_of(response, 401, "unauthorized")["detail"] == detail
    assert response.headers["www-authenticate"] == 'Bearer realm="quartgate", error="invalid_token"'


async def test_jwt_leeway_bad_signature_and_alg_none(client: httpx.AsyncClient) -> None:
    just_expired = token(exp=int(time.time()) - 5)  # within the 30 s leeway
    assert (await client.get("/jwt/x", headers=bearer(just_expired))).status_code == 200
    forged = token(key="another-secret-that-is-32-bytes-long!!")
    error_of(await client.get("/jwt/x", headers=bearer(forged)), 401, "unauthorized")
    claims = {"sub": "x", "exp": int(time.time()) + 60}
    unsigned = jwt.encode(claims, None, algorithm="none")  # type: ignore[arg-type]
    error_of(await client.get("/jwt/x", headers=bearer(unsigned)), 401, "unauthorized")


async def test_jwks_file_key_allowed_and_not_allowed_subject(client: httpx.AsyncClient) -> None:
    good = token(EC_KEY, "ES256", "e1", sub="svc-a", aud=None)
    _, seen = upstream_saw(await client.get("/jwks/x", headers=bearer(good)))
    assert seen["x-consumer-username"] == "svc-a"
    other = token(EC_KEY, "ES256", "e1", sub="svc-b", aud=None)
    error_of(await client.get("/jwks/x", headers=bearer(other)), 403, "forbidden")
    # An HS256 token naming the EC key's kid (algorithm confusion): no key of its algorithm.
    confused = token(kid="e1", sub="svc-a", aud=None)
    response = await client.get("/jwks/x", headers=bearer(confused))
    assert error_of(response, 401, "unauthorized")["detail"] == "no key for this token's kid/alg"


# ---- policies: CORS --------------------------------------------------------------------------


async def test_cors_preflight_answered_at_the_gateway(
    client: httpx.AsyncClient, upstream: UpstreamServer
) -> None:
    before = len(upstream.requests)
    response = await client.options(
        "/app/x", headers=preflight("https://app.example.com", "POST", "Content-Type")
    )
    assert_app_preflight_answered(response)
    assert len(upstream.requests) == before  # never reached the upstream


@pytest.mark.parametrize(
    ("origin", "allowed"),
    [("https://app.example.com", True), *WILDCARD_ORIGINS],
)
async def test_cors_preflight_origins(
    client: httpx.AsyncClient, origin: str, allowed: bool
) -> None:
    response = await client.options("/app/x", headers=preflight(origin, "GET"))
    assert response.status_code == (204 if allowed else 403)
    assert ("access-control-allow-origin" in response.headers) is allowed


async def test_cors_preflight_for_a_method_or_header_not_allowed_is_403(
    client: httpx.AsyncClient,
) -> None:
    origin = "https://app.example.com"
    error_of(
        await client.options("/app/x", headers=preflight(origin, "DELETE")), 403, "cors_forbidden"
    )
    response = await client.options("/app/x", headers=preflight(origin, "GET", "x-custom"))
    error_of(response, 403, "cors_forbidden")


async def test_cors_headers_on_actual_requests(client: httpx.AsyncClient) -> None:
    response = await client.get("/app/x", headers={"origin": "https://app.example.com"})
    assert response.status_code == 200
    assert response.headers["access-control-allow-origin"] == "https://app.example.com"
    assert response.headers["access-control-expose-headers"] == "x-upstream"
    assert response.headers["access-control-allow-credentials"] == "true"
    other = await client.get("/app/x", headers={"origin": "https://other.example.com"})
    assert other.status_code == 200
    assert "access-control-allow-origin" not in other.headers
    # A plain OPTIONS (not a preflight) on a route without OPTIONS is still a 405.
    error_of(await client.options("/app/x"), 405, "method_not_allowed")
    star = await client.get("/open/x", headers={"origin": "https://whoever.test"})
    assert star.headers["access-control-allow-origin"] == "*"
    pre = await client.options("/open/x", headers=preflight("https://whoever.test", "PUT"))
    assert pre.status_code == 204
    assert pre.headers["access-control-allow-origin"] == "*"


# ---- policies: header rules and the local rate limit -----------------------------------------


async def test_header_rules_on_request_and_response(client: httpx.AsyncClient) -> None:
    response = await client.get(
        "/rules/42", headers={"x-secret": "s", "x-item": "client-sent", "x-request-id": "r-7"}
    )
    _, seen = upstream_saw(response)
    assert seen["x-client"] == PEER
    assert seen["x-rid"] == "r-7"
    assert seen["x-item"] == "item-42"  # set replaces what the client sent
    assert seen["x-added"] == "a {literal}"
    assert "x-secret" not in seen
    assert response.headers["x-served-by"] == "quartgate rules"
    assert response.headers["x-item"] == "42"
    assert "x-upstream" not in response.headers


async def test_local_rate_limit_is_429_with_its_headers(
    client: httpx.AsyncClient, upstream: UpstreamServer
) -> None:
    for remaining in (2, 1, 0):
        response = await client.get("/mem/x")
        assert response.status_code == 200
        assert response.headers["ratelimit-limit"] == "3"
        assert response.headers["ratelimit-remaining"] == str(remaining)
        assert 1 <= int(response.headers["ratelimit-reset"]) <= 60
    before = len(upstream.requests)
    limited = await client.get("/mem/x")
    error_of(limited, 429, "rate_limited")
    assert 1 <= int(limited.headers["retry-after"]) <= 20
    assert limited.headers["ratelimit-limit"] == "3"
    assert limited.headers["ratelimit-remaining"] == "0"
    assert len(upstream.requests) == before


async def test_rate_limit_keyed_by_header(client: httpx.AsyncClient) -> None:
    assert (await client.get("/tenant/x", headers={"x-tenant": "t1"})).status_code == 200
    error_of(await client.get("/tenant/x", headers={"x-tenant": "t1"}), 429, "rate_limited")
    assert (await client.get("/tenant/x", headers={"x-tenant": "t2"})).status_code == 200


# ---- error mapping ---------------------------------------------------------------------------


async def test_request_id_echoed_or_generated(client: httpx.AsyncClient) -> None:
    response = await client.get("/api/rid", headers={"x-request-id": "req-abc-1"})
    assert upstream_saw(response)[1]["x-request-id"] == "req-abc-1"
    assert response.headers["x-request-id"] == "req-abc-1"
    for headers in ({}, {"x-request-id": "has space"}, {"x-request-id": "x" * 300}):
        response = await client.get("/api/rid", headers=headers)
        generated = response.headers["x-request-id"]
        assert uuid.UUID(generated).version == 4
        assert upstream_saw(response)[1]["x-request-id"] == generated
    # An error generated at the gateway carries a generated id too.
    missing = await client.get("/nowhere")
    assert re.fullmatch(r"[0-9a-f-]{36}", error_of(missing, 404, "route_not_found")["request_id"])


async def test_configured_request_id_header(
    upstream: UpstreamServer, dead_port: int, tmp_path: Path
) -> None:
    text = (
        '[gateway]\nrequest_id_header = "x-correlation-id"\n'
        f'[upstreams.main]\ntargets = ["{upstream.url}"]\n'
        '[[routes]]\npath = "/api"\nupstream = "main"\n'
    )
    async with in_process(text, tmp_path) as gateway, gateway.client() as client:
        ok = await client.get("/api/c", headers={"x-correlation-id": "corr-1"})
        assert upstream_saw(ok)[1]["x-correlation-id"] == "corr-1"
        assert ok.headers["x-correlation-id"] == "corr-1"
        missing = await client.get("/nowhere", headers={"x-correlation-id": "corr-2"})
        assert missing.status_code == 404
        assert missing.headers["x-correlation-id"] == "corr-2"
        assert missing.json()["request_id"] == "corr-2"


async def test_declared_too_large_body_is_413_before_the_upstream(
    client: httpx.AsyncClient, upstream: UpstreamServer
) -> None:
    before = len(upstream.requests)
    response = await client.post("/api/big", content=b"x" * 2000)  # Content-Length: 2000
    body = error_of(response, 413, "payload_too_large")
    assert "1000" in body["detail"]
    assert len(upstream.requests) == before
    ok = await client.post("/api/small", content=b"x" * 1000)  # at the limit is fine
    assert json.loads(ok.content)["body_length"] == 1000


async def test_too_many_or_too_large_headers_are_431(
    client: httpx.AsyncClient, upstream: UpstreamServer
) -> None:
    before = len(upstream.requests)
    many = [(f"x-h{i}", "v") for i in range(30)]
    body = error_of(await client.get("/api/many", headers=many), 431, "too_many_headers")
    assert "30" in body["detail"]
    big = await client.get("/api/big", headers={"x-big": "a" * 5000})
    assert "4096" in error_of(big, 431, "headers_too_large")["detail"]
    assert len(upstream.requests) == before


async def test_unknown_method_is_501(client: httpx.AsyncClient) -> None:
    response = await client.request("BREW", "/api/x")
    body = error_of(response, 501, "method_not_implemented")
    assert body["detail"] == "method BREW is not supported"


async def test_upstream_failures_map_to_502_and_504(
    client: httpx.AsyncClient, upstream: UpstreamServer
) -> None:
    refused = error_of(await client.get("/dead/x"), 502, "upstream_unreachable")
    assert refused["detail"].startswith("upstream 'dead': ")
    error_of(await client.get("/api/close-before-head"), 502, "upstream_reset")
    # /hang never answers: the 0.2 s read timeout is what ends the wait.
    error_of(await client.get("/slow/hang"), 504, "upstream_timeout")


# ---- header handling -------------------------------------------------------------------------


async def test_hop_by_hop_and_connection_named_headers_dropped(
    client: httpx.AsyncClient, upstream: UpstreamServer
) -> None:
    response = await client.get(
        "/api/h",
        headers={
            "connection": "keep-alive, x-secret-hop",
            "x-secret-hop": "1",
            "keep-alive": "timeout=5",
            "te": "trailers",
            "proxy-authorization": "Basic eA==",
            "upgrade": "h2c",
            "x-kept": "yes",
        },
    )
    _, seen = upstream_saw(response)
    for hop in ("connection", "x-secret-hop", "keep-alive", "te", "proxy-authorization", "upgrade"):
        assert hop not in seen
    assert seen["x-kept"] == "yes"
    assert seen["host"] == f"127.0.0.1:{upstream.port}"  # the target's, not the client's
    assert seen["x-request-id"] == response.headers["x-request-id"]


async def test_repeated_headers_survive_both_ways(
    client: httpx.AsyncClient, upstream: UpstreamServer
) -> None:
    response = await client.get("/api/x", headers=[("x-multi", "one"), ("x-multi", "two")])
    assert response.status_code == 200
    assert [v for n, v in upstream.last().headers if n == "x-multi"] == ["one", "two"]
    cookies = await client.get("/api/cookies")
    assert cookies.headers.get_list("set-cookie") == ["a=1; Path=/", "b=2; HttpOnly", "c=3"]


async def test_preserve_host(client: httpx.AsyncClient) -> None:
    _, seen = upstream_saw(await client.get("/keephost", headers={"host": "public.example"}))
    assert seen["host"] == "public.example"


async def test_forwarding_headers_from_an_untrusted_peer_are_replaced(
    client: httpx.AsyncClient,
) -> None:
    response = await client.get(
        "/api/x",
        headers={
            "x-forwarded-for": "6.6.6.6",
            "x-forwarded-proto": "https",
            "x-forwarded-host": "evil.example",
            "forwarded": "for=6.6.6.6;proto=https",
        },
    )
    _, seen = upstream_saw(response)
    assert seen["x-forwarded-for"] == PEER
    assert seen["x-forwarded-proto"] == "http"
    assert seen["x-forwarded-host"] == "gw.test"
    assert "forwarded" not in seen


async def test_forwarding_headers_from_a_trusted_peer_are_believed_and_extended(
    gateway: InProcessGateway,
) -> None:
    async with gateway.client(peer=TRUSTED) as client:
        response = await client.get(
            "/rules/1",
            headers={
                "x-forwarded-for": "198.51.100.1, 203.0.113.7",
                "x-forwarded-proto": "https",
                "x-forwarded-host": "api.example.com",
            },
        )
        _, seen = upstream_saw(response)
        assert seen["x-forwarded-for"] == f"198.51.100.1, 203.0.113.7, {TRUSTED}"
        assert seen["x-forwarded-proto"] == "https"
        assert seen["x-forwarded-host"] == "api.example.com"
        assert seen["x-client"] == "203.0.113.7"  # the right-most untrusted hop
        # A chain of trusted hops only: the left-most is the client.
        _, seen = upstream_saw(
            await client.get("/rules/2", headers={"x-forwarded-for": "10.9.9.9"})
        )
        assert seen["x-client"] == "10.9.9.9"
        # RFC 7239 Forwarded, with an IPv6 address and a port.
        response = await client.get(
            "/rules/3", headers={"forwarded": 'for="[2001:db8::7]:443";proto=https'}
        )
        _, seen = upstream_saw(response)
        assert seen["x-client"] == "2001:db8::7"
        assert seen["x-forwarded-proto"] == "https"
        assert seen["forwarded"].startswith(f'for="[2001:db8::7]:443";proto=https, for={TRUSTED};')


async def test_traceparent_propagated_with_a_new_span(client: httpx.AsyncClient) -> None:
    response = await client.get(
        "/api/trace", headers={"traceparent": PARENT, "tracestate": "vendor=1"}
    )
    _, seen = upstream_saw(response)
    version, trace, span, flags = seen["traceparent"].split("-")
    assert (version, trace, flags) == ("00", PARENT.split("-")[1], "01")  # the same trace
    assert span != PARENT.split("-")[2] and re.fullmatch("[0-9a-f]{16}", span)  # a new span
    assert seen["tracestate"] == "vendor=1"


async def test_invalid_traceparent_and_its_tracestate_are_dropped(
    client: httpx.AsyncClient,
) -> None:
    for bad in ("00-bogus", "00-" + "0" * 32 + "-b7ad6b7169203331-01"):  # all-zero trace id
        response = await client.get(
            "/api/trace", headers={"traceparent": bad, "tracestate": "vendor=1"}
        )
        _, seen = upstream_saw(response)
        assert "traceparent" not in seen and "tracestate" not in seen
    # No traceparent and the default mode ("propagate"): none is started.
    _, seen = upstream_saw(await client.get("/api/trace"))
    assert "traceparent" not in seen


def test_refused_port_refuses_connections() -> None:
    """The dead upstream above: a bound, never-listening socket refuses every connect."""
    with refused_port() as port, pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=5).close()
