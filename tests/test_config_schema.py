"""The config schema as a whole: every problem of a file in one report, in the same words as
always; strict types; cross-references checked in one place; the environment an argument."""

from __future__ import annotations

import os
import tomllib
from typing import Any

import pytest

from gateway.config import ConfigError, parse_config
from gateway.config.references import check_references
from gateway.config.route_tables import methods_of

BASE: dict[str, Any] = {
    "upstreams": {"u": {"targets": ["http://127.0.0.1:9"]}},
    "routes": [{"path": "/", "upstream": "u"}],
}

MANY_MISTAKES = """
bogus = 1
[gateway]
max_body_size = -1
request_id_header = "x id"
traceparent = "maybe"
[server]
engine = "gunicorn"
[upstreams.api]
targets = ["http://127.0.0.1:9001", { url = "http://127.0.0.1:9002", weight = 0 }]
max_connections = "64"
read_timeout = true
balancer = "random"
[upstreams.api.breaker]
window = 0.5
failure_rate = 2
[upstreams.site]
app = "nocolon"
threads = 0
[[routes]]
path = "/a"
upstream = "api"
strip_prefix = "yes"
[routes.rate_limit]
period = 0
[routes.websocket]
idle_timeout = -1
[[routes]]
path = "/b"
upstream = "api"
timeout = -2
[routes.retry]
budget = 1.5
methods = ["GET", "FETCH"]
[admin]
bind = "localhost"
[access_log]
sample = -0.1
[metrics]
buckets = [1, 0.5]
"""


def problems(data: dict[str, Any], **kwargs: Any) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        parse_config(data, "gw.toml", **kwargs)
    return [str(p) for p in caught.value.problems]


def test_every_problem_of_every_section_is_reported_at_once() -> None:
    assert problems(tomllib.loads(MANY_MISTAKES)) == [
        "gw.toml: gateway.request_id_header: must be a header name (letters, digits, '-')",
        "gw.toml: gateway.max_body_size: must not be negative",
        "gw.toml: gateway.traceparent: must be one of propagate, start, off",
        "gw.toml: upstreams.api.targets[1].weight: must be greater than 0",
        "gw.toml: upstreams.api.max_connections: must be an integer, not a string",
        "gw.toml: upstreams.api.read_timeout: must be a number, not a boolean",
        "gw.toml: upstreams.api.balancer: must be one of round_robin, weighted, "
        "least_outstanding, hash",
        "gw.toml: upstreams.api.breaker.failure_rate: must be between 0 and 1",
        "gw.toml: upstreams.api.breaker.window: must be at least 1 (seconds)",
        "gw.toml: upstreams.site.app: must be 'module:attribute'",
        "gw.toml: upstreams.site.threads: must be greater than 0",
        "gw.toml: routes[0].strip_prefix: must be a boolean, not a string",
        "gw.toml: routes[0].rate_limit.limit: is required (requests per period)",
        "gw.toml: routes[0].rate_limit.period: must be greater than 0",
        "gw.toml: routes[0].websocket.idle_timeout: must not be negative",
        "gw.toml: routes[1].retry.methods[1]: unknown method 'FETCH'",
        "gw.toml: routes[1].retry.budget: must be between 0 and 1",
        "gw.toml: routes[1].timeout: must not be negative",
        "gw.toml: admin.bind: must be HOST:PORT with a port from 1 to 65535",
        "gw.toml: metrics.buckets: must be a non-empty, strictly increasing list of "
        "positive numbers",
        "gw.toml: access_log.sample: must be between 0 and 1",
        "gw.toml: server.engine: must be one of hypercorn, uvicorn",
        "gw.toml: bogus: unknown key",
    ]


@pytest.mark.parametrize(
    ("key", "value", "reason"),
    [
        ("max_connections", True, "must be an integer, not a boolean"),
        ("max_connections", "1", "must be an integer, not a string"),
        ("max_connections", 1.0, "must be an integer, not a number"),
        ("read_timeout", "1.5", "must be a number, not a string"),
        ("read_timeout", False, "must be a number, not a boolean"),
        ("http2", 1, "must be a boolean, not an integer"),
        ("http2", "true", "must be a boolean, not a string"),
        ("balancer", 3, "must be a string, not an integer"),
        ("health", 5, "must be a table, not an integer"),
    ],
)
def test_types_are_strict(key: str, value: object, reason: str) -> None:
    upstream = {"targets": ["http://127.0.0.1:9"], key: value}
    data = {**BASE, "upstreams": {"u": upstream}}
    assert problems(data) == [f"gw.toml: upstreams.u.{key}: {reason}"]


def test_an_integer_is_a_number_and_becomes_a_float() -> None:
    upstream = {"targets": ["http://127.0.0.1:9"], "read_timeout": 7}
    config = parse_config({**BASE, "upstreams": {"u": upstream}})
    timeout = config.upstreams["u"].read_timeout
    assert timeout == 7.0 and isinstance(timeout, float)


def test_references_reports_every_cross_reference_problem() -> None:
    text = """
[upstreams.api]
targets = ["http://127.0.0.1:9"]
[consumers.alice]
groups = ["staff"]
[[routes]]
name = "a"
path = "/x"
upstream = "nowhere"
[routes.auth]
api_key = true
jwt = "idp"
[[routes]]
name = "a"
path = "/x/"
upstream = "api"
[routes.auth]
api_key = true
allow = ["alice", "staff", "mallory"]
[routes.rate_limit]
limit = 1
backend = "redis"
"""
    expected = [
        "gw.toml: routes[0] \"a\".upstream: names unknown upstream 'nowhere'",
        'gw.toml: routes[0] "a".auth.jwt: names unknown [jwt_providers.idp]',
        'gw.toml: routes[0] "a".auth.api_key: no [consumers.*] has an api_key_sha256',
        'gw.toml: routes[1] "a".name: duplicate route name (also routes[0])',
        'gw.toml: routes[1] "a": duplicate route: same host, path and methods as routes[0]',
        'gw.toml: routes[1] "a".auth.api_key: no [consumers.*] has an api_key_sha256',
        "gw.toml: routes[1] \"a\".auth.allow[2]: 'mallory' is no consumer or group",
        "gw.toml: routes[1] \"a\".rate_limit.backend: 'redis' needs a [redis] section",
    ]
    assert problems(tomllib.loads(text)) == expected
    # The same, from the module itself, on the document as written (arrays as tuples).
    document = {
        "upstreams": {"api": {}},
        "routes": ({"path": "/x", "upstream": "nowhere"}, {"path": "/x", "upstream": "api"}),
    }
    assert check_references(document) == [
        (("routes", 0, "upstream"), "names unknown upstream 'nowhere'"),
        (("routes", 1), "duplicate route: same host, path and methods as routes[0]"),
    ]


def test_cross_references_are_reported_beside_a_type_error_elsewhere() -> None:
    data = {
        "upstreams": {"u": {"targets": ["http://127.0.0.1:9"], "max_connections": "x"}},
        "routes": [{"path": "/", "upstream": "v", "colour": "red"}],
    }
    assert problems(data) == [
        "gw.toml: upstreams.u.max_connections: must be an integer, not a string",
        "gw.toml: routes[0].colour: unknown key",
        "gw.toml: routes[0].upstream: names unknown upstream 'v'",
    ]


def test_routes_differ_by_methods_as_matched() -> None:
    assert methods_of([], cors_on=True) is None  # all methods
    assert methods_of(["GET"], cors_on=False) == {"GET", "HEAD"}
    assert methods_of(["POST"], cors_on=True) == {"POST", "OPTIONS"}
    same_methods = {
        **BASE,
        "routes": [
            {"path": "/", "upstream": "u", "methods": ["GET"]},
            {"path": "/", "upstream": "u", "methods": ["get", "HEAD"]},
        ],
    }
    assert problems(same_methods) == [
        "gw.toml: routes[1]: duplicate route: same host, path and methods as routes[0]"
    ]


def test_the_admin_token_comes_from_the_environment_given() -> None:
    data = {**BASE, "admin": {"token_env": "GW_TEST_TOKEN_NOWHERE"}}
    assert "GW_TEST_TOKEN_NOWHERE" not in os.environ
    config = parse_config(data, environ={"GW_TEST_TOKEN_NOWHERE": "sixteen-chars-or-more"})
    admin = config.observability.admin
    assert admin is not None and admin.token == "sixteen-chars-or-more"
    assert problems(data) == [
        "gw.toml: admin.token_env: environment variable GW_TEST_TOKEN_NOWHERE is empty"
    ]
    assert problems(data, environ={"GW_TEST_TOKEN_NOWHERE": "short"}) == [
        "gw.toml: admin.token: must be at least 16 characters"
    ]


def test_route_policies_are_typed_and_kept_by_route_name() -> None:
    data = {
        **BASE,
        "routes": [
            {"path": "/", "upstream": "u", "methods": ["GET"], "cors": {"allow_origins": ["*"]}},
            {"name": "plain", "path": "/p", "upstream": "u"},
        ],
    }
    config = parse_config(data)
    first, plain = config.routes
    assert first.name == "route0" and first.methods == {"GET", "HEAD", "OPTIONS"}
    cors = config.policies_of(first).cors
    assert cors is not None and cors.route_options is False  # OPTIONS only for preflights
    assert config.policies_of(plain) == type(config.policies_of(plain))()


def test_prefix_rewrite_is_a_plain_path_not_with_strip_prefix_and_not_for_apps() -> None:
    def routes(*entries: dict[str, Any]) -> dict[str, Any]:
        return {
            "upstreams": {"u": {"targets": ["http://127.0.0.1:9"]}, "a": {"app": "x:y"}},
            "routes": list(entries),
        }

    ok = parse_config(routes({"path": "/api", "upstream": "u", "prefix_rewrite": "/v1"}))
    assert ok.routes[0].prefix_rewrite == "/v1" and ok.routes[0].rewrites
    assert problems(
        routes(
            {"path": "/a", "upstream": "u", "prefix_rewrite": "v1"},
            {"path": "/b", "upstream": "u", "prefix_rewrite": "/v1/{id}"},
            {"path": "/c", "upstream": "u", "prefix_rewrite": "/v1", "strip_prefix": True},
            {"path": "/d", "upstream": "a", "prefix_rewrite": "/v1"},
        )
    ) == [
        "gw.toml: routes[0].prefix_rewrite: must start with '/'",
        "gw.toml: routes[1].prefix_rewrite: must be a plain path, without {parameters}",
        "gw.toml: routes[2].prefix_rewrite: give strip_prefix or prefix_rewrite, not both "
        "(strip_prefix is a rewrite to /)",
        "gw.toml: routes[3].prefix_rewrite: is for HTTP upstreams; an in-process app is "
        "mounted (use strip_prefix)",
    ]


def test_an_unknown_key_names_the_known_key_it_resembles() -> None:
    found = problems(
        {
            "gateway": {"trusted_proxy": ["127.0.0.1"]},
            "upstreams": {"u": {"targets": ["http://127.0.0.1:9"], "keepalive_expiri": 1}},
            "routes": [{"path": "/", "upstream": "u", "strip_prefx": True, "colour": "red"}],
        }
    )
    assert found == [
        "gw.toml: gateway.trusted_proxy: unknown key (did you mean 'trusted_proxies'?)",
        "gw.toml: upstreams.u.keepalive_expiri: unknown key (did you mean 'keepalive_expiry'?)",
        "gw.toml: routes[0].strip_prefx: unknown key (did you mean 'strip_prefix'?)",
        "gw.toml: routes[0].colour: unknown key",  # nothing like it: no guess
    ]
