"""What the in-process pipeline tests (test_pipeline_inprocess.py) and the real-server tests
of the same features both send and expect, so that both test the same cases: the credentials
the routes of tests/support/configs.py accept, request headers that probe them, and the
cases and answers both check.

    CONFIG.format(upstream=upstream.url, **AUTH_VALUES)   # fills configs.AUTH_IDENTITIES
    await client.get("/jwt/x", headers=bearer(token(email="u@example.com")))
"""

from __future__ import annotations

import hashlib
import json
import time
from typing import Any

import httpx
import jwt

SECRET = "an-hs256-secret-of-at-least-32-bytes!!"
ISSUER = "https://issuer.test"


def sha(text: str) -> str:
    """The hex SHA-256 of an API key, as ``api_key_sha256`` holds it."""
    return hashlib.sha256(text.encode()).hexdigest()


#: The placeholders of configs.AUTH_IDENTITIES: API keys "alice-key" and "bob-key", the
#: "hs" provider's issuer and secret (the "files" provider has the same issuer).
AUTH_VALUES = {
    "alice": sha("alice-key"),
    "bob": sha("bob-key"),
    "issuer": ISSUER,
    "secret": SECRET,
}


def jwk_of(key: Any, kid: str, alg: str) -> dict[str, Any]:
    """The public half of ``key`` as a JWKS entry, for the "files" provider's jwks.json."""
    algorithm = jwt.get_algorithm_by_name(alg)
    data: dict[str, Any] = json.loads(algorithm.to_jwk(key.public_key()))
    return {**data, "kid": kid, "alg": alg, "use": "sig"}


def token(key: Any = SECRET, alg: str = "HS256", kid: str = "h1", **claims: Any) -> str:
    """A JWT the "hs" provider accepts unless ``key``, ``alg``, ``kid`` or ``claims`` say
    otherwise; a claim given as None is left out."""
    now = int(time.time())
    payload = {"iss": ISSUER, "aud": "quartgate", "sub": "user-1", "exp": now + 300, **claims}
    payload = {k: v for k, v in payload.items() if v is not None}
    return jwt.encode(payload, key, algorithm=alg, headers={"kid": kid})


#: JWTs the "hs" provider refuses for a claim, and the detail it says: (claims, detail), the
#: offsets of "exp" and "nbf" in seconds from when the test runs (see token_with_claims).
INVALID_CLAIMS: list[tuple[dict[str, Any], str]] = [
    ({"exp": -120}, "token expired"),
    ({"nbf": 120}, "token not yet valid"),
    ({"aud": "someone-else"}, "wrong audience"),
    ({"iss": "https://evil.test"}, "wrong issuer"),
    ({"exp": None}, 'Token is missing the "exp" claim'),
]


def token_with_claims(claims: dict[str, Any]) -> str:
    """token(**claims) with "exp" and "nbf" taken as offsets from now: relative to when the
    test runs, not when it was collected (minutes earlier in a long suite)."""
    now = int(time.time())
    at = {k: now + v if k in ("exp", "nbf") and v is not None else v for k, v in claims.items()}
    return token(**at)


def bearer(value: str) -> dict[str, str]:
    return {"authorization": f"Bearer {value}"}


def preflight(origin: str, method: str = "POST", headers: str = "") -> dict[str, str]:
    """The headers of a CORS preflight (an OPTIONS request) from ``origin``."""
    out = {"origin": origin, "access-control-request-method": method}
    if headers:
        out["access-control-request-headers"] = headers
    return out


#: Preflights to /app for GET from these origins, and whether CORS_ROUTES allows each: a
#: subdomain of example.org at any depth, not the bare domain, a look-alike, plain http or a
#: listed origin with a suffix.
WILDCARD_ORIGINS = [
    ("https://a.example.org", True),
    ("https://a.b.example.org", True),
    ("https://example.org", False),
    ("https://evilexample.org", False),
    ("http://a.example.org", False),
    ("https://app.example.com.evil.io", False),
]


def assert_app_preflight_answered(response: httpx.Response) -> None:
    """The answer to preflight("https://app.example.com", "POST", "Content-Type") on /app:
    everything CORS_ROUTES allows there."""
    assert response.status_code == 204
    assert response.headers["access-control-allow-origin"] == "https://app.example.com"
    assert response.headers["access-control-allow-credentials"] == "true"
    assert response.headers["access-control-allow-methods"] == "GET, POST"
    assert response.headers["access-control-allow-headers"] == "content-type, authorization"
    assert response.headers["access-control-max-age"] == "120"
    assert "Origin" in response.headers["vary"]
