"""Policy configuration: every mistake reported as ``file: key: reason``, all at once."""

from __future__ import annotations

import hashlib
import tomllib
from typing import Any

import pytest

from gateway.config import ConfigError, GatewayConfig, parse_config
from gateway.policies.route_chain import Resources, build_policies

BASE = """
[upstreams.main]
targets = ["http://127.0.0.1:9"]
"""

HASH = hashlib.sha256(b"k").hexdigest()


def parse(text: str) -> GatewayConfig:
    return parse_config(tomllib.loads(BASE + text), "gw.toml")


def problems(text: str) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        parse(text)
    return [str(p) for p in caught.value.problems]


def test_a_full_pipeline_builds_in_order() -> None:
    config = parse(
        f"""
[consumers.a]
api_key_sha256 = ["{HASH}"]

[[routes]]
path = "/x/{{id}}"
upstream = "main"
methods = ["GET"]
[routes.headers]
request_set = {{ x-id = "{{id}}" }}
[routes.rate_limit]
limit = 5
[routes.auth]
api_key = true
[routes.cors]
allow_origins = ["https://a.test"]
"""
    )
    spec = config.routes[0]
    assert spec.methods is not None and "OPTIONS" in spec.methods  # preflights get through
    policies = build_policies(spec.name, config.policies_of(spec), Resources(config.shared))
    names = [type(p).__name__ for p in policies]
    assert names == ["CorsPolicy", "AuthPolicy", "RateLimitPolicy", "HeaderRulesPolicy"]


def test_route_without_policies_has_an_empty_pipeline() -> None:
    config = parse('[[routes]]\npath = "/"\nupstream = "main"\n')
    spec = config.routes[0]
    assert build_policies(spec.name, config.policies_of(spec), Resources(config.shared)) == ()


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            '[[routes]]\npath = "/"\nupstream = "main"\n[routes.auth]\napi_key = true\n',
            "gw.toml: routes[0].auth.api_key: no [consumers.*] has an api_key_sha256",
        ),
        (
            '[[routes]]\npath = "/"\nupstream = "main"\n[routes.auth]\njwt = "nope"\n',
            "gw.toml: routes[0].auth.jwt: names unknown [jwt_providers.nope]",
        ),
        (
            '[consumers.a]\napi_key_sha256 = ["abc"]\n[[routes]]\npath = "/"\nupstream = "main"\n',
            "gw.toml: consumers.a.api_key_sha256[0]: must be a SHA-256 hex digest (64 hex digits)",
        ),
        (
            '[[routes]]\npath = "/"\nupstream = "main"\n[routes.rate_limit]\nlimit = 1\n'
            'backend = "redis"\n',
            "gw.toml: routes[0].rate_limit.backend: 'redis' needs a [redis] section",
        ),
        (
            '[[routes]]\npath = "/"\nupstream = "main"\n[routes.rate_limit]\nlimit = 1\n'
            'key = "cookie"\n',
            "gw.toml: routes[0].rate_limit.key: must be 'ip', 'consumer' or 'header:<name>'",
        ),
        (
            '[[routes]]\npath = "/"\nupstream = "main"\n[routes.headers]\n'
            'request_set = { x-a = "{nope}" }\n',
            "gw.toml: routes[0].headers.request_set.x-a: unknown placeholder {nope} "
            "(known: client_ip, consumer, request_id, route)",
        ),
        (
            '[[routes]]\npath = "/"\nupstream = "main"\n[routes.headers]\n'
            'request_set = { host = "x" }\n',
            "gw.toml: routes[0].headers.request_set.host: 'host' is set by the gateway and "
            "cannot be changed by a rule",
        ),
        (
            '[[routes]]\npath = "/"\nupstream = "main"\n[routes.cors]\n'
            'allow_origins = ["app.test"]\n',
            "gw.toml: routes[0].cors.allow_origins[0]: must be '*' or scheme://host[:port], "
            "with an optional '*.' host prefix",
        ),
        (
            '[[routes]]\npath = "/"\nupstream = "main"\n[routes.cors]\nallow_origin = ["*"]\n',
            "gw.toml: routes[0].cors.allow_origin: unknown key (did you mean 'allow_origins'?)",
        ),
        (
            '[jwt_providers.p]\nkeys = [{ algorithm = "HS256", secret = "short" }]\n'
            '[[routes]]\npath = "/"\nupstream = "main"\n',
            "gw.toml: jwt_providers.p.keys[0].secret: must be at least 32 bytes for HMAC",
        ),
        (
            '[gateway]\nescaped_slashes = "decode"\n[[routes]]\npath = "/"\nupstream = "main"\n',
            "gw.toml: gateway.escaped_slashes: must be one of keep, reject",
        ),
    ],
)
def test_mistakes_are_named(text: str, expected: str) -> None:
    assert expected in problems(text)


def test_jwks_file_problems_are_reported(tmp_path: Any) -> None:
    config = tmp_path / "gw.toml"
    (tmp_path / "bad.json").write_text('{"keys": 3}')
    data = tomllib.loads(
        BASE
        + '[jwt_providers.p]\njwks_file = "bad.json"\n[[routes]]\npath = "/"\nupstream = "main"\n'
    )
    with pytest.raises(ConfigError) as caught:
        parse_config(data, str(config))
    assert any(
        "a JWKS file is an object with a 'keys' array" in str(p) for p in caught.value.problems
    )
