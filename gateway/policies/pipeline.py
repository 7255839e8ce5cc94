"""Parsing a route's policy tables and building its pipeline, once, at startup.

The order is fixed, as Kong's plugin priorities fix it: CORS (a preflight carries no
credentials, so it is answered before auth), auth (sets the consumer), rate limit (may key
on the consumer), header rules (may use the consumer and every value above).
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any, Final

from gateway.edge.context import Policy
from gateway.policies import auth, cors, header_rules, ratelimit
from gateway.policies.settings import EdgeSettings

if TYPE_CHECKING:
    from redis.asyncio import Redis

    from gateway.config import ConfigReader
    from routes.model import RouteSpec

_PARAM = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")
#: The ``[routes.*]`` sub-tables this package reads, in pipeline order.
TABLES: Final = ("cors", "auth", "rate_limit", "headers")


def parse_route_policies(
    reader: ConfigReader, entry: dict[str, Any], prefix: str, path: str
) -> dict[str, Any]:
    """Pop the policy sub-tables from a route ``entry``; their settings, by table name."""
    params = tuple(_PARAM.findall(path))
    options: dict[str, Any] = {}
    if "cors" in entry:
        options["cors"] = cors.parse(reader, entry.pop("cors"), f"{prefix}.cors")
    if "auth" in entry:
        options["auth"] = auth.parse(reader, entry.pop("auth"), f"{prefix}.auth")
    if "rate_limit" in entry:
        options["rate_limit"] = ratelimit.parse(
            reader, entry.pop("rate_limit"), f"{prefix}.rate_limit"
        )
    if "headers" in entry:
        options["headers"] = header_rules.parse(
            reader, entry.pop("headers"), f"{prefix}.headers", params
        )
    return {k: v for k, v in options.items() if v is not None}


def check_routes(reader: ConfigReader, routes: tuple[RouteSpec, ...], edge: EdgeSettings) -> None:
    """Cross-section checks: names of providers and consumers, a [redis] when needed."""
    for index, spec in enumerate(routes):
        prefix = f"routes[{index}]"
        settings = spec.options.get("auth")
        if isinstance(settings, auth.AuthSettings):
            auth.check_references(reader, settings, f"{prefix}.auth", edge)
        limit = spec.options.get("rate_limit")
        needs_redis = isinstance(limit, ratelimit.RateLimitSettings) and limit.backend == "redis"
        if needs_redis and edge.redis is None:
            reader.problem(f"{prefix}.rate_limit.backend", "'redis' needs a [redis] section")


class Resources:
    """What policies share across routes (one Redis client); closed with the state."""

    def __init__(self, edge: EdgeSettings) -> None:
        self.edge = edge
        self._redis: Redis | None = None

    def redis(self) -> Redis:
        if self._redis is None:
            settings = self.edge.redis
            assert settings is not None
            self._redis = ratelimit.make_redis(settings.url, settings.timeout)
        return self._redis

    async def aclose(self) -> None:
        if self._redis is not None:
            await self._redis.aclose()
            self._redis = None


def build_policies(spec: RouteSpec, resources: Resources) -> tuple[Policy, ...]:
    options = spec.options
    if not options:
        return ()
    edge = resources.edge
    policies: list[Policy] = []
    settings = options.get("cors")
    if isinstance(settings, cors.CorsSettings):
        serves_options = bool(options.get("route_options", True))
        policies.append(
            cors.CorsPolicy(
                cors.CorsSettings(
                    settings.allow_origins,
                    settings.allow_methods,
                    settings.allow_headers,
                    settings.expose_headers,
                    settings.allow_credentials,
                    settings.max_age,
                    serves_options,
                )
            )
        )
    settings = options.get("auth")
    if isinstance(settings, auth.AuthSettings):
        policies.append(auth.AuthPolicy(settings, edge))
    settings = options.get("rate_limit")
    if isinstance(settings, ratelimit.RateLimitSettings):
        redis = resources.redis() if settings.backend == "redis" else None
        prefix = edge.redis.key_prefix if edge.redis else ""
        policies.append(ratelimit.RateLimitPolicy(settings, spec.name, redis, prefix))
    settings = options.get("headers")
    if isinstance(settings, header_rules.HeaderRules):
        policies.append(header_rules.HeaderRulesPolicy(settings))
    return tuple(policies)
