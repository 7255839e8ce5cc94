"""``[consumers.NAME]``, ``[jwt_providers.NAME]`` and ``[redis]``: what route policies share
(gateway/policies/shared.py declares them). The checks here are the ones no type can say:
API key digests, a key given to two consumers, JWT keys read and parsed (PEM, JWKS)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Annotated, Any

import jwt
from pydantic import AfterValidator, TypeAdapter, ValidationError, ValidationInfo

from gateway.config.checks import one_of, required, required_default
from gateway.config.problems import Invalid, Loc, reasons
from gateway.config.tables import array_of, keys_table, table
from gateway.policies.shared import (
    JWT_ALGORITHMS,
    Consumer,
    JwtKey,
    JwtProvider,
    RedisSettings,
)

_SHA256 = re.compile(r"[0-9a-f]{64}")
_HEADER = re.compile(r"[A-Za-z0-9-]+")


def _digests(raw: tuple[Any, ...]) -> tuple[str, ...]:
    found: list[tuple[Loc, str]] = []
    clean: list[str] = []
    for index, item in enumerate(raw):
        text = str(item).lower().removeprefix("sha256:")
        if _SHA256.fullmatch(text):
            clean.append(text)
        else:
            found.append(((index,), "must be a SHA-256 hex digest (64 hex digits)"))
    if found:
        raise Invalid(*found)
    return tuple(clean)


_CONSUMER = table(
    Consumer,
    exclude=("name", "key_hashes"),
    fields={"groups": Annotated[tuple[Any, ...], AfterValidator(lambda g: frozenset(map(str, g)))]},
    extra={"api_key_sha256": (Annotated[tuple[Any, ...], AfterValidator(_digests)], ())},
    build=lambda v: lambda name: Consumer(name, v["api_key_sha256"], v["groups"]),
)


def _consumers(raw: dict[str, Any]) -> dict[str, Consumer]:
    """Each consumer, and no API key given to two of them."""
    out: dict[str, Consumer] = {}
    found: list[tuple[Loc, str]] = []
    owner: dict[str, str] = {}
    adapter = _adapter(_CONSUMER)
    for name, entry in raw.items():
        try:
            consumer = adapter.validate_python(entry)(name)
        except ValidationError as error:
            found += reasons(error, (name,))
            continue
        for index, digest in enumerate(consumer.key_hashes):
            if digest in owner:
                reason = f"the same key is already given to consumer {owner[digest]!r}"
                found.append(((name, "api_key_sha256", index), reason))
            owner.setdefault(digest, name)
        out[name] = consumer
    if found:
        raise Invalid(*found)
    return out


_adapters: dict[int, TypeAdapter[Any]] = {}


def _adapter(annotation: Any) -> TypeAdapter[Any]:
    adapter = _adapters.get(id(annotation))
    if adapter is None:
        adapter = _adapters[id(annotation)] = TypeAdapter(annotation)
    return adapter


# ---- JWT providers -----------------------------------------------------------------------


#: One ``keys`` entry; checked as a whole by :func:`_key` (which fields go together).
_KEY = keys_table(
    "JwtKeyTable",
    dict(
        kid=(str, ""),
        algorithm=(
            Annotated[
                str,
                required(f"is required (one of {', '.join(JWT_ALGORITHMS)})"),
                AfterValidator(one_of(JWT_ALGORITHMS)),
            ],
            required_default(),
        ),
        secret=(str, ""),
        public_key=(str, ""),
        public_key_file=(str, ""),
    ),
)


def _key(values: dict[str, Any], base: Path) -> JwtKey:
    """One ``keys`` entry: an HMAC secret or a public key (inline or a PEM file)."""
    kid = values["kid"] or None
    algorithm: str = values["algorithm"]
    secret, public_key, public_key_file = (
        values["secret"], values["public_key"], values["public_key_file"]
    )  # fmt: skip
    if algorithm.startswith("HS"):
        if not secret or public_key or public_key_file:
            raise Invalid.at(f"{algorithm} needs 'secret' (and no public key)")
        if len(secret.encode()) < 32:
            raise Invalid.at("must be at least 32 bytes for HMAC", "secret")
        return JwtKey(kid, algorithm, secret.encode())
    if secret or bool(public_key) == bool(public_key_file):
        raise Invalid.at(f"{algorithm} needs exactly one of 'public_key', 'public_key_file'")
    pem = public_key
    if public_key_file:
        try:
            pem = (base / public_key_file).read_text(encoding="ascii")
        except OSError as error:
            raise Invalid.at(f"cannot read: {error.strerror}", "public_key_file") from None
    try:
        return JwtKey(kid, algorithm, jwt.get_algorithm_by_name(algorithm).prepare_key(pem))
    except (jwt.InvalidKeyError, ValueError, TypeError) as error:
        raise Invalid.at(f"not a valid {algorithm} public key: {error}") from None


def _jwks(path: Path) -> list[JwtKey]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as error:
        raise Invalid.at(f"cannot read {str(path)!r}: {error.strerror}") from None
    except ValueError as error:
        raise Invalid.at(f"{str(path)!r} is not JSON: {error}") from None
    entries = data.get("keys") if isinstance(data, dict) else None
    if not isinstance(entries, list):
        raise Invalid.at("a JWKS file is an object with a 'keys' array")
    keys: list[JwtKey] = []
    found: list[tuple[Loc, str]] = []
    for index, item in enumerate(entries):
        if not isinstance(item, dict) or item.get("use", "sig") != "sig":
            continue
        algorithm = item.get("alg")
        if algorithm not in JWT_ALGORITHMS:
            found.append(((index,), "each key needs an 'alg' quartgate supports"))
            continue
        try:
            jwk = jwt.PyJWK(item, algorithm)
        except (jwt.PyJWKError, jwt.InvalidKeyError, ValueError, TypeError) as error:
            found.append(((index,), f"invalid JWK: {error}"))
            continue
        keys.append(JwtKey(item.get("kid"), algorithm, jwk.key))
    if found:
        raise Invalid(*found)
    return keys


def _claims_to_headers(raw: dict[str, Any]) -> tuple[tuple[str, str], ...]:
    headers: list[tuple[str, str]] = []
    found: list[tuple[Loc, str]] = []
    for claim, header in raw.items():
        if not isinstance(header, str) or not _HEADER.fullmatch(header):
            found.append(((claim,), "must be a header name"))
        else:
            headers.append((claim, header.lower()))
    if found:
        raise Invalid(*found)
    return tuple(headers)


def _strings(raw: tuple[Any, ...]) -> tuple[str, ...]:
    return tuple(str(item) for item in raw)


_PROVIDER = table(
    JwtProvider,
    exclude=("name", "keys"),
    fields={
        "issuer": (str, ""),
        "audiences": Annotated[tuple[Any, ...], AfterValidator(_strings)],
        "required_claims": Annotated[tuple[Any, ...], AfterValidator(_strings)],
        "claims_to_headers": (Annotated[dict[str, Any], AfterValidator(_claims_to_headers)], ()),
    },
    extra={"keys": (array_of(_KEY), ()), "jwks_file": (str, "")},
    build=dict,
)


def _provider(name: str, values: dict[str, Any], base: Path) -> JwtProvider:
    keys: list[JwtKey] = []
    found: list[tuple[Loc, str]] = []
    for index, key in enumerate(values.pop("keys")):
        try:
            keys.append(_key(key, base))
        except Invalid as error:
            found += [(("keys", index, *loc), reason) for loc, reason in error.found]
    jwks_file = values.pop("jwks_file")
    if jwks_file:
        try:
            keys += _jwks(base / jwks_file)
        except Invalid as error:
            found += [(("jwks_file", *loc), reason) for loc, reason in error.found]
    if found:
        raise Invalid(*found)
    if not keys:
        raise Invalid.at("needs 'keys' or 'jwks_file'")
    values["issuer"] = values["issuer"] or None
    return JwtProvider(name, tuple(keys), **values)


def _providers(raw: dict[str, Any], info: ValidationInfo) -> dict[str, JwtProvider]:
    """Key files are read relative to the config file's folder (``base`` in the context)."""
    base: Path = (info.context or {}).get("base", Path("."))
    adapter = _adapter(_PROVIDER)
    out: dict[str, JwtProvider] = {}
    found: list[tuple[Loc, str]] = []
    for name, entry in raw.items():
        try:
            out[name] = _provider(name, adapter.validate_python(entry), base)
        except ValidationError as error:
            found += reasons(error, (name,))
        except Invalid as error:
            found += [((name, *loc), reason) for loc, reason in error.found]
    if found:
        raise Invalid(*found)
    return out


def _redis_url(value: str) -> str:
    if not value.startswith(("redis://", "rediss://", "unix://")):
        raise Invalid.at("must be a redis://, rediss:// or unix:// URL")
    return value


CONSUMERS = Annotated[dict[str, Any], AfterValidator(_consumers)]
JWT_PROVIDERS = Annotated[dict[str, Any], AfterValidator(_providers)]
REDIS = table(RedisSettings, checks={"url": _redis_url})
