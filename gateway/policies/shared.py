"""What every route's policies share: ``[consumers.NAME]``, ``[jwt_providers.NAME]`` and
``[redis]``, ``[cache]``. Validated once (gateway.config) into :class:`SharedSettings`, stored on
``GatewayConfig.shared``."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated, Any, Final

from annotated_types import Ge, Gt

from gateway.cache.settings import CacheStoreSettings

JWT_ALGORITHMS: Final = ("HS256", "HS384", "HS512", "RS256", "RS384", "RS512", "ES256", "ES384")


@dataclass(frozen=True, slots=True)
class Consumer:
    name: str
    #: SHA-256 (hex) of each API key; the keys themselves are never in the config.
    key_hashes: tuple[str, ...] = ()
    groups: frozenset[str] = frozenset()


@dataclass(frozen=True, slots=True)
class JwtKey:
    kid: str | None
    algorithm: str
    #: An HMAC secret (bytes) or a public key object from ``cryptography``.
    key: Any = field(compare=False)


@dataclass(frozen=True, slots=True)
class JwtProvider:
    name: str
    keys: tuple[JwtKey, ...]
    issuer: str | None = None
    audiences: tuple[str, ...] = ()
    #: Seconds of clock skew allowed on ``exp`` and ``nbf``.
    leeway: Annotated[float, Ge(0)] = 30.0
    required_claims: tuple[str, ...] = ("exp",)
    #: The claim naming the consumer (``ctx.consumer``).
    consumer_claim: str = "sub"
    #: claim -> request header sent upstream (incoming copies are always removed).
    claims_to_headers: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True, slots=True)
class RedisSettings:
    url: str = "redis://127.0.0.1:6379/0"
    #: Connect and command timeout, seconds: a rate-limit check must not stall requests.
    timeout: Annotated[float, Gt(0)] = 0.25
    key_prefix: str = "quartgate:rl:"


@dataclass(frozen=True, slots=True)
class SharedSettings:
    consumers: dict[str, Consumer] = field(default_factory=dict)
    jwt_providers: dict[str, JwtProvider] = field(default_factory=dict)
    redis: RedisSettings | None = None
    #: ``[cache]``: the store the routes' ``[routes.cache]`` share (docs/cache.md).
    cache: CacheStoreSettings = field(default_factory=CacheStoreSettings)
