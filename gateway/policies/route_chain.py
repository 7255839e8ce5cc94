"""A route's pipeline, built once from its :class:`~gateway.config.RoutePolicies`.

The order is fixed, as Kong's plugin priorities fix it: CORS (a preflight carries no
credentials, so it is answered before auth), auth (sets the consumer), rate limit (may key
on the consumer), header rules (may use the consumer and every value above).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from gateway.edge.context import Policy
from gateway.policies import auth, cors, header_rules, ratelimit
from gateway.policies.shared import SharedSettings

if TYPE_CHECKING:
    from redis.asyncio import Redis

    from gateway.config.model import RoutePolicies


class Resources:
    """What policies share across routes (one Redis client); closed with the state."""

    def __init__(self, shared: SharedSettings) -> None:
        self.shared = shared
        self._redis: Redis | None = None

    def redis(self) -> Redis:
        if self._redis is None:
            settings = self.shared.redis
            assert settings is not None
            self._redis = ratelimit.make_redis(settings.url, settings.timeout)
        return self._redis

    async def aclose(self) -> None:
        if self._redis is not None:
            await self._redis.aclose()
            self._redis = None


def build_policies(route: str, policies: RoutePolicies, resources: Resources) -> tuple[Policy, ...]:
    """The pipeline of the route named ``route``; empty for most routes."""
    shared = resources.shared
    pipeline: list[Policy] = []
    if policies.cors is not None:
        pipeline.append(cors.CorsPolicy(policies.cors))
    if policies.auth is not None:
        pipeline.append(auth.AuthPolicy(policies.auth, shared))
    limit = policies.rate_limit
    if limit is not None:
        redis = resources.redis() if limit.backend == "redis" else None
        prefix = shared.redis.key_prefix if shared.redis else ""
        pipeline.append(ratelimit.RateLimitPolicy(limit, route, redis, prefix))
    if policies.headers is not None:
        pipeline.append(header_rules.HeaderRulesPolicy(policies.headers))
    return tuple(pipeline)
