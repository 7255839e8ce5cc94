"""``[routes.rate_limit]``: a token bucket per route and key; 429 with ``Retry-After``.

The bucket holds ``limit`` tokens and refills ``limit`` tokens every ``period`` seconds
(continuously); a request takes one. Keys: ``"consumer"`` (falls back to the client IP
when nobody is authenticated, as Kong does), ``"ip"`` (the client IP after
trusted-proxy resolution) or ``"header:<name>"`` (falls back to the client IP when absent).

Responses carry ``RateLimit-Limit`` (the bucket size), ``RateLimit-Remaining`` (whole
tokens left) and ``RateLimit-Reset`` (seconds until the bucket is full again); a 429 adds
``Retry-After`` (seconds until the next token).

``backend = "memory"`` (default) keeps buckets in the worker process: each Hypercorn worker
and gateway instance counts on its own. ``backend = "redis"`` keeps them in ``[redis]``,
updated atomically by a Lua script using Redis's clock, shared by every worker and
instance. When Redis fails, ``on_backend_error`` decides: ``"allow"`` (default, fail open)
or ``"deny"`` (503 ``rate_limit_unavailable``); either way it is logged (at most once per
10 s per route).
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Final

from annotated_types import Gt

from gateway.edge.context import RequestContext
from gateway.edge.errors import GatewayError

if TYPE_CHECKING:
    from redis.asyncio import Redis

log = logging.getLogger("quartgate")

BACKENDS: Final = ("memory", "redis")
ON_BACKEND_ERROR: Final = ("allow", "deny")
#: Buckets kept per route by the memory backend; the least recently used go first.
MAX_MEMORY_KEYS: Final = 100_000
LOG_EVERY: Final = 10.0

# KEYS[1] bucket; ARGV: capacity, tokens per second. Returns {allowed, tokens as string}.
# Redis's TIME is the clock, so gateways with skewed clocks still share one bucket.
LUA_TOKEN_BUCKET: Final = """
local capacity = tonumber(ARGV[1])
local rate = tonumber(ARGV[2])
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local state = redis.call('HMGET', KEYS[1], 't', 's')
local tokens = tonumber(state[1])
local stamp = tonumber(state[2])
if tokens == nil or stamp == nil then
  tokens = capacity
  stamp = now
end
local elapsed = now - stamp
if elapsed < 0 then elapsed = 0 end
tokens = math.min(capacity, tokens + elapsed * rate)
local allowed = 0
if tokens >= 1 then
  tokens = tokens - 1
  allowed = 1
end
redis.call('HSET', KEYS[1], 't', string.format('%.6f', tokens), 's', string.format('%.6f', now))
redis.call('PEXPIRE', KEYS[1], math.ceil(capacity / rate * 1000) + 1000)
return {allowed, string.format('%.6f', tokens)}
"""


@dataclass(frozen=True, slots=True)
class RateLimitSettings:
    #: Requests per ``period``: the bucket's size.
    limit: Annotated[int, Gt(0)]
    #: Seconds in which the bucket refills completely.
    period: Annotated[float, Gt(0)] = 1.0
    #: "ip", "consumer" or "header:<name>".
    key: str = "ip"
    #: One of :data:`BACKENDS`.
    backend: str = "memory"
    #: One of :data:`ON_BACKEND_ERROR`.
    on_backend_error: str = "allow"


def key_reason(value: str) -> str | None:
    """Why ``value`` is no bucket key, or None."""
    if value in ("ip", "consumer") or (value.startswith("header:") and len(value) > 7):
        return None
    return "must be 'ip', 'consumer' or 'header:<name>'"


class RateLimitPolicy:
    def __init__(
        self, settings: RateLimitSettings, route: str, redis: Redis | None, key_prefix: str
    ) -> None:
        self.capacity = float(settings.limit)
        self.rate = settings.limit / settings.period
        self.route = route
        self.by = settings.key
        header = settings.key[7:] if settings.key.startswith("header:") else ""
        self.header = header.lower().encode("ascii")
        self.deny_on_error = settings.on_backend_error == "deny"
        self.limit_header = (b"ratelimit-limit", str(settings.limit).encode("ascii"))
        self.redis = redis
        self.prefix = f"{key_prefix}{route}:"
        if redis is not None:
            self.script = redis.register_script(LUA_TOKEN_BUCKET)
        self.buckets: dict[str, tuple[float, float]] = {}
        self.logged_at = -LOG_EVERY

    def key_of(self, ctx: RequestContext) -> str:
        if self.by == "consumer" and ctx.consumer:
            return "c:" + ctx.consumer
        if self.header:
            for name, value in ctx.scope["headers"]:
                if name == self.header:
                    text: str = value.decode("latin-1")
                    return "h:" + text[:256]
        return "ip:" + ctx.client_ip

    async def on_request(self, ctx: RequestContext) -> None:
        key = self.key_of(ctx)
        if self.redis is None:
            allowed, tokens = self._take_memory(key)
        else:
            taken = await self._take_redis(key)
            if taken is None:
                if self.deny_on_error:
                    raise GatewayError(
                        503,
                        "rate_limit_unavailable",
                        "the rate-limit backend is unavailable",
                        [(b"retry-after", b"1")],
                    )
                return
            allowed, tokens = taken
        remaining = int(tokens)
        reset = math.ceil((self.capacity - tokens) / self.rate)
        headers = [
            self.limit_header,
            (b"ratelimit-remaining", b"%d" % remaining),
            (b"ratelimit-reset", b"%d" % reset),
        ]
        if not allowed:
            retry = max(1, math.ceil((1.0 - tokens) / self.rate))
            headers.append((b"retry-after", b"%d" % retry))
            raise GatewayError(429, "rate_limited", "rate limit exceeded", headers)
        ctx.response_headers += headers

    def _take_memory(self, key: str) -> tuple[bool, float]:
        now = time.monotonic()
        buckets = self.buckets
        state = buckets.pop(key, None)
        if state is None:
            tokens = self.capacity
            if len(buckets) >= MAX_MEMORY_KEYS:
                del buckets[next(iter(buckets))]
        else:
            tokens = min(self.capacity, state[0] + (now - state[1]) * self.rate)
        allowed = tokens >= 1.0
        if allowed:
            tokens -= 1.0
        buckets[key] = (tokens, now)  # re-inserted last: the dict is in LRU order
        return allowed, tokens

    async def _take_redis(self, key: str) -> tuple[bool, float] | None:
        from redis.exceptions import RedisError

        try:
            allowed, tokens = await self.script(
                keys=[self.prefix + key], args=[self.capacity, self.rate]
            )
            return bool(int(allowed)), float(tokens)
        except (RedisError, OSError) as error:
            now = time.monotonic()
            if now - self.logged_at >= LOG_EVERY:
                self.logged_at = now
                log.warning(
                    "route %r: rate-limit backend redis failed (%s: %s); %s requests",
                    self.route,
                    type(error).__name__,
                    error,
                    "denying" if self.deny_on_error else "allowing",
                )
            return None

    def on_response(self, ctx: RequestContext, headers: list[tuple[bytes, bytes]]) -> None:
        return None


def make_redis(url: str, timeout: float) -> Redis:
    """A client that fails fast: short timeouts (the request is waiting), and one retry,
    at once, only for a connection that turns out to be dead.

    After a failover (a rebooted host, a moved virtual IP) every pooled connection looks
    open until it is used and reset: without that retry each one failed its next command,
    and with ``on_backend_error = "allow"`` one request per pooled connection passed
    unlimited. The retry reconnects first; a Redis that is really down refuses the new
    connection at once, and a timeout is never retried (it would double the request's
    wait). A clean restart (a FIN on every connection) is caught by redis-py itself when
    it hands out a pooled connection.
    """
    from redis.asyncio import Redis
    from redis.asyncio.retry import Retry
    from redis.backoff import NoBackoff
    from redis.exceptions import ConnectionError as RedisConnectionError

    client: Redis = Redis.from_url(
        url,
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
        retry=Retry(NoBackoff(), 1, supported_errors=(RedisConnectionError,)),
        health_check_interval=0,
    )
    return client
