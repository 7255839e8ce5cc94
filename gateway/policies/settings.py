"""Top-level sections for edge policies: ``[consumers.NAME]``, ``[jwt_providers.NAME]``,
``[redis]``. Parsed once into :class:`EdgeSettings`, stored on ``GatewayConfig.edge``."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import jwt

if TYPE_CHECKING:
    from gateway.config import ConfigReader

JWT_ALGORITHMS: Final = ("HS256", "HS384", "HS512", "RS256", "RS384", "RS512", "ES256", "ES384")
_SHA256 = re.compile(r"[0-9a-f]{64}")


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
    leeway: float = 30.0
    required_claims: tuple[str, ...] = ("exp",)
    #: The claim naming the consumer (``ctx.consumer``).
    consumer_claim: str = "sub"
    #: claim -> request header sent upstream (incoming copies are always removed).
    claims_to_headers: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True, slots=True)
class RedisSettings:
    url: str = "redis://127.0.0.1:6379/0"
    #: Connect and command timeout, seconds: a rate-limit check must not stall requests.
    timeout: float = 0.25
    key_prefix: str = "quartgate:rl:"


@dataclass(frozen=True, slots=True)
class EdgeSettings:
    consumers: dict[str, Consumer] = field(default_factory=dict)
    jwt_providers: dict[str, JwtProvider] = field(default_factory=dict)
    redis: RedisSettings | None = None


def parse_edge(reader: ConfigReader, data: dict[str, Any], file: str) -> EdgeSettings:
    """Pop and parse the edge sections from the top-level config table ``data``."""
    base = Path(file).resolve().parent
    consumers = _consumers(reader, data.pop("consumers", {}))
    providers = _providers(reader, data.pop("jwt_providers", {}), base)
    redis = None
    if "redis" in data:
        table = reader.table(data.pop("redis"), "redis")
        if table is not None:
            d = RedisSettings()
            redis = RedisSettings(
                reader.take(table, "redis", "url", str, d.url, _redis_url),
                reader.take(table, "redis", "timeout", float, d.timeout, _positive),
                reader.take(table, "redis", "key_prefix", str, d.key_prefix),
            )
            reader.leftovers(table, "redis")
    return EdgeSettings(consumers, providers, redis)


def _consumers(reader: ConfigReader, raw: Any) -> dict[str, Consumer]:
    table = reader.table(raw, "consumers")
    out: dict[str, Consumer] = {}
    seen: dict[str, str] = {}
    for name, body in (table or {}).items():
        prefix = f"consumers.{name}"
        entry = reader.table(body, prefix)
        if entry is None:
            continue
        hashes = reader.take(entry, prefix, "api_key_sha256", list, [])
        groups = reader.take(entry, prefix, "groups", list, [])
        reader.leftovers(entry, prefix)
        clean: list[str] = []
        for index, item in enumerate(hashes):
            key = f"{prefix}.api_key_sha256[{index}]"
            text = str(item).lower().removeprefix("sha256:")
            if not _SHA256.fullmatch(text):
                reader.problem(key, "must be a SHA-256 hex digest (64 hex digits)")
            elif text in seen:
                reader.problem(key, f"the same key is already given to consumer {seen[text]!r}")
            else:
                seen[text] = name
                clean.append(text)
        out[name] = Consumer(name, tuple(clean), frozenset(str(g) for g in groups))
    return out


def _providers(reader: ConfigReader, raw: Any, base: Path) -> dict[str, JwtProvider]:
    table = reader.table(raw, "jwt_providers")
    out: dict[str, JwtProvider] = {}
    for name, body in (table or {}).items():
        prefix = f"jwt_providers.{name}"
        entry = reader.table(body, prefix)
        if entry is None:
            continue
        d = JwtProvider(name, ())
        issuer = reader.take(entry, prefix, "issuer", str, "") or None
        audiences = reader.take(entry, prefix, "audiences", list, [])
        leeway = reader.take(entry, prefix, "leeway", float, d.leeway, _non_negative)
        required = reader.take(entry, prefix, "required_claims", list, list(d.required_claims))
        consumer_claim = reader.take(entry, prefix, "consumer_claim", str, d.consumer_claim)
        claims = reader.take(entry, prefix, "claims_to_headers", dict, {})
        keys_raw = reader.take(entry, prefix, "keys", list, [])
        jwks_file = reader.take(entry, prefix, "jwks_file", str, "")
        reader.leftovers(entry, prefix)
        keys = [*_keys(reader, keys_raw, prefix, base)]
        if jwks_file:
            keys += _jwks(reader, base / jwks_file, f"{prefix}.jwks_file")
        if not keys and not any(p.key.startswith(prefix) for p in reader.problems):
            reader.problem(prefix, "needs 'keys' or 'jwks_file'")
        headers: list[tuple[str, str]] = []
        for claim, header in claims.items():
            if not isinstance(header, str) or not re.fullmatch(r"[A-Za-z0-9-]+", header):
                reader.problem(f"{prefix}.claims_to_headers.{claim}", "must be a header name")
            else:
                headers.append((claim, header.lower()))
        out[name] = JwtProvider(
            name,
            tuple(keys),
            issuer,
            tuple(str(a) for a in audiences),
            leeway,
            tuple(str(c) for c in required),
            consumer_claim,
            tuple(headers),
        )
    return out


def _keys(reader: ConfigReader, raw: list[Any], prefix: str, base: Path) -> list[JwtKey]:
    keys: list[JwtKey] = []
    for index, item in enumerate(raw):
        key = f"{prefix}.keys[{index}]"
        entry = reader.table(item, key)
        if entry is None:
            continue
        kid = reader.take(entry, key, "kid", str, "") or None
        algorithm = reader.take(entry, key, "algorithm", str, "", _algorithm)
        secret = reader.take(entry, key, "secret", str, "")
        public_key = reader.take(entry, key, "public_key", str, "")
        public_key_file = reader.take(entry, key, "public_key_file", str, "")
        reader.leftovers(entry, key)
        if not algorithm:
            reader.problem(f"{key}.algorithm", f"is required (one of {', '.join(JWT_ALGORITHMS)})")
            continue
        if algorithm.startswith("HS"):
            if not secret or public_key or public_key_file:
                reader.problem(key, f"{algorithm} needs 'secret' (and no public key)")
                continue
            if len(secret.encode()) < 32:
                reader.problem(f"{key}.secret", "must be at least 32 bytes for HMAC")
                continue
            keys.append(JwtKey(kid, algorithm, secret.encode()))
            continue
        if secret or bool(public_key) == bool(public_key_file):
            reader.problem(key, f"{algorithm} needs exactly one of 'public_key', 'public_key_file'")
            continue
        pem = public_key
        if public_key_file:
            try:
                pem = (base / public_key_file).read_text(encoding="ascii")
            except OSError as error:
                reader.problem(f"{key}.public_key_file", f"cannot read: {error.strerror}")
                continue
        try:
            algo = jwt.get_algorithm_by_name(algorithm)
            keys.append(JwtKey(kid, algorithm, algo.prepare_key(pem)))
        except (jwt.InvalidKeyError, ValueError, TypeError) as error:
            reader.problem(key, f"not a valid {algorithm} public key: {error}")
    return keys


def _jwks(reader: ConfigReader, path: Path, key: str) -> list[JwtKey]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as error:
        reader.problem(key, f"cannot read {str(path)!r}: {error.strerror}")
        return []
    except ValueError as error:
        reader.problem(key, f"{str(path)!r} is not JSON: {error}")
        return []
    entries = data.get("keys") if isinstance(data, dict) else None
    if not isinstance(entries, list):
        reader.problem(key, "a JWKS file is an object with a 'keys' array")
        return []
    keys: list[JwtKey] = []
    for index, item in enumerate(entries):
        if not isinstance(item, dict) or item.get("use", "sig") != "sig":
            continue
        algorithm = item.get("alg")
        if algorithm not in JWT_ALGORITHMS:
            reader.problem(f"{key}[{index}]", "each key needs an 'alg' quartgate supports")
            continue
        try:
            jwk = jwt.PyJWK(item, algorithm)
        except (jwt.PyJWKError, jwt.InvalidKeyError, ValueError, TypeError) as error:
            reader.problem(f"{key}[{index}]", f"invalid JWK: {error}")
            continue
        keys.append(JwtKey(item.get("kid"), algorithm, jwk.key))
    return keys


def _algorithm(value: str) -> str | None:
    return None if value in JWT_ALGORITHMS else f"must be one of {', '.join(JWT_ALGORITHMS)}"


def _positive(value: float) -> str | None:
    return None if value > 0 else "must be greater than 0"


def _non_negative(value: float) -> str | None:
    return None if value >= 0 else "must not be negative"


def _redis_url(value: str) -> str | None:
    ok = value.startswith(("redis://", "rediss://", "unix://"))
    return None if ok else "must be a redis://, rediss:// or unix:// URL"
