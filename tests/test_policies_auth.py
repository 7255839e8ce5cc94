"""Auth per route: API keys (header, query) and JWTs (HS256 from config; RS256 and ES256 from
a JWKS file); 401 with WWW-Authenticate, 403 when valid but not allowed."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from tests.support.configs import AUTH_IDENTITIES, AUTH_ROUTES
from tests.support.gateway import GatewayProcess
from tests.support.pipeline_cases import (
    AUTH_VALUES,
    INVALID_CLAIMS,
    bearer,
    jwk_of,
    token,
    token_with_claims,
)
from tests.support.upstream import UpstreamServer

RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
EC_KEY = ec.generate_private_key(ec.SECP256R1())

CONFIG = (
    """
[upstreams.main]
targets = ["{upstream}"]
"""
    + AUTH_IDENTITIES
    + AUTH_ROUTES
)


@pytest.fixture(scope="module")
def gateway(
    upstream: UpstreamServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[GatewayProcess]:
    folder = tmp_path_factory.mktemp("auth")
    jwks = {"keys": [jwk_of(RSA_KEY, "r1", "RS256"), jwk_of(EC_KEY, "e1", "ES256")]}
    (folder / "jwks.json").write_text(json.dumps(jwks))
    config = folder / "gateway.toml"
    config.write_text(CONFIG.format(upstream=upstream.url, **AUTH_VALUES))
    process = GatewayProcess(config).start()
    yield process
    assert process.stop() == 0, process.logs()


@pytest.fixture
async def client(gateway: GatewayProcess) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=gateway.url, timeout=10) as c:
        yield c


def seen(response: httpx.Response) -> tuple[str, dict[str, str]]:
    assert response.status_code == 200, response.text
    body = json.loads(response.content)
    return body["target"], dict(tuple(h) for h in body["headers"])


# ---- API keys --------------------------------------------------------------------------------


async def test_missing_or_wrong_api_key_is_401_with_challenge(client: httpx.AsyncClient) -> None:
    for headers in ({}, {"x-api-key": "wrong"}):
        response = await client.get("/keyed/x", headers=headers)
        assert response.status_code == 401
        assert response.headers["www-authenticate"] == 'Key realm="quartgate"'
        assert response.json()["error"] == "unauthorized"


async def test_api_key_in_header_names_the_consumer(client: httpx.AsyncClient) -> None:
    response = await client.get(
        "/keyed/x", headers={"x-api-key": "alice-key", "x-consumer-username": "root"}
    )
    _, headers = seen(response)
    assert headers["x-consumer-username"] == "alice"  # the forged one is gone
    assert headers["x-who"] == "alice"  # the consumer is available to later policies
    assert "x-api-key" not in headers  # hide_credentials


async def test_api_key_in_query_is_hidden_from_the_upstream(client: httpx.AsyncClient) -> None:
    target, headers = seen(await client.get("/keyed/x?a=1&apikey=bob-key&b=2"))
    assert headers["x-consumer-username"] == "bob"
    assert target == "/keyed/x?a=1&b=2"


async def test_valid_key_not_allowed_is_403(client: httpx.AsyncClient) -> None:
    response = await client.get("/admin/x", headers={"x-api-key": "bob-key"})
    assert response.status_code == 403
    assert response.json()["error"] == "forbidden"
    _, headers = seen(await client.get("/admin/x", headers={"x-api-key": "alice-key"}))
    assert headers["x-consumer-username"] == "alice"  # allowed through the "admins" group


# ---- JWT -------------------------------------------------------------------------------------


async def test_hs256_token_claims_forwarded_as_headers(client: httpx.AsyncClient) -> None:
    headers = {**bearer(token(email="u@example.com")), "x-jwt-sub": "forged"}
    _, got = seen(await client.get("/jwt/x", headers=headers))
    assert got["x-jwt-sub"] == "user-1"
    assert got["x-jwt-email"] == "u@example.com"
    assert got["x-consumer-username"] == "user-1"


@pytest.mark.parametrize(("claims", "detail"), INVALID_CLAIMS)
async def test_invalid_claims_are_401(
    client: httpx.AsyncClient, claims: dict[str, Any], detail: str
) -> None:
    response = await client.get("/jwt/x", headers=bearer(token_with_claims(claims)))
    assert response.status_code == 401
    assert response.json()["detail"] == detail
    assert response.headers["www-authenticate"] == 'Bearer realm="quartgate", error="invalid_token"'


async def test_leeway_accepts_a_just_expired_token(client: httpx.AsyncClient) -> None:
    response = await client.get("/jwt/x", headers=bearer(token(exp=int(time.time()) - 5)))
    assert response.status_code == 200


async def test_bad_signature_and_alg_none_are_401(client: httpx.AsyncClient) -> None:
    forged = token(key="another-secret-that-is-32-bytes-long!!")
    assert (await client.get("/jwt/x", headers=bearer(forged))).status_code == 401
    unsigned = jwt.encode({"sub": "x", "exp": int(time.time()) + 60}, None, algorithm="none")
    assert (await client.get("/jwt/x", headers=bearer(unsigned))).status_code == 401
    # An HS256 token signed with the RSA public key (algorithm confusion) is refused too.
    response = await client.get("/jwks/x", headers=bearer(token(kid="r1")))
    assert response.status_code == 401


async def test_no_token_is_401_bearer_challenge(client: httpx.AsyncClient) -> None:
    response = await client.get("/jwt/x")
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == 'Bearer realm="quartgate"'


@pytest.mark.parametrize(("key", "alg", "kid"), [(RSA_KEY, "RS256", "r1"), (EC_KEY, "ES256", "e1")])
async def test_jwks_file_keys(client: httpx.AsyncClient, key: Any, alg: str, kid: str) -> None:
    good = token(key, alg, kid, sub="svc-a", aud=None)
    _, headers = seen(await client.get("/jwks/x", headers=bearer(good)))
    assert headers["x-consumer-username"] == "svc-a"
    other = token(key, alg, kid, sub="svc-b", aud=None)
    assert (await client.get("/jwks/x", headers=bearer(other))).status_code == 403
