"""The checks across tables, in one place: a route's upstream exists, route names and
host+path+methods are unique, the providers and consumers a route's auth names exist, a
Redis rate limit and a Redis cache store have a ``[redis]``.

They read the document as written (arrays as tuples), not the validated one: a file with a
mistake anywhere still gets every cross-reference problem in the same report, as an
operator fixes a file in one pass. A value of the wrong type is skipped here: the schema
has reported it already.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from gateway.config.problems import Loc
from gateway.config.route_tables import methods_of
from routes.model import parse_methods, validate_path


def check_references(data: Mapping[str, Any]) -> list[tuple[Loc, str]]:
    """Every cross-reference problem of the document ``data``."""
    routes = data.get("routes")
    if not isinstance(routes, tuple):
        return []
    tables = _table(data.get("upstreams")).items()
    upstreams = {name for name, entry in tables if isinstance(entry, dict)}
    apps = {name for name, entry in tables if isinstance(entry, dict) and "app" in entry}
    consumers = _table(data.get("consumers"))
    providers = _table(data.get("jwt_providers"))
    found: list[tuple[Loc, str]] = []
    names: dict[str, int] = {}
    identities: dict[tuple[str | None, str, frozenset[str] | None], int] = {}
    for index, entry in enumerate(routes):
        if not isinstance(entry, dict):
            continue
        at: Loc = ("routes", index)
        upstream = entry.get("upstream")
        if isinstance(upstream, str) and upstream and upstream not in upstreams:
            found.append(((*at, "upstream"), f"names unknown upstream {upstream!r}"))
        elif upstream in apps and "prefix_rewrite" in entry:
            reason = "is for HTTP upstreams; an in-process app is mounted (use strip_prefix)"
            found.append(((*at, "prefix_rewrite"), reason))
        if upstream in apps and "cache" in entry:
            reason = "is for HTTP upstreams; an in-process app's responses are not stored"
            found.append(((*at, "cache"), reason))
        name = _text(entry, "name") or f"route{index}"
        if name in names:
            found.append(((*at, "name"), f"duplicate route name (also routes[{names[name]}])"))
        names.setdefault(name, index)
        identity = _identity(entry)
        if identity is not None:
            if identity in identities:
                reason = "duplicate route: same host, path and methods as"
                found.append((at, f"{reason} routes[{identities[identity]}]"))
            identities.setdefault(identity, index)
        found += _auth(entry.get("auth"), (*at, "auth"), consumers, providers)
        limit = entry.get("rate_limit")
        if isinstance(limit, dict) and limit.get("backend") == "redis" and "redis" not in data:
            found.append(((*at, "rate_limit", "backend"), "'redis' needs a [redis] section"))
    cache = data.get("cache")
    if isinstance(cache, dict) and cache.get("store") == "redis" and "redis" not in data:
        found.append((("cache", "store"), "'redis' needs a [redis] section"))
    return found


def _identity(entry: dict[str, Any]) -> tuple[str | None, str, frozenset[str] | None] | None:
    """What two routes may not share: host, path and methods (None: the path is invalid)."""
    path = _text(entry, "path")
    if not path or validate_path(path) is not None:
        return None
    raw = entry.get("methods")
    named, bad = parse_methods(raw if isinstance(raw, tuple) else ())
    cors_on = isinstance(entry.get("cors"), dict)
    methods = methods_of((m for i, m in enumerate(named) if i not in bad), cors_on)
    host = _text(entry, "host")
    return (host.lower() if host else None, path.rstrip("/") or "/", methods)


def _auth(
    auth: Any, at: Loc, consumers: dict[str, Any], providers: dict[str, Any]
) -> list[tuple[Loc, str]]:
    if not isinstance(auth, dict):
        return []
    found: list[tuple[Loc, str]] = []
    provider = _text(auth, "jwt")
    if provider and provider not in providers:
        found.append(((*at, "jwt"), f"names unknown [jwt_providers.{provider}]"))
    tables = [c for c in consumers.values() if isinstance(c, dict)]
    if auth.get("api_key") is True and not any(_items(c, "api_key_sha256") for c in tables):
        found.append(((*at, "api_key"), "no [consumers.*] has an api_key_sha256"))
    groups = {str(g) for c in tables for g in _items(c, "groups")}
    for index, item in enumerate(_items(auth, "allow")):
        name = str(item)
        if name not in consumers and name not in groups and not provider:
            found.append(((*at, "allow", index), f"{name!r} is no consumer or group"))
    return found


def _table(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _text(table: dict[str, Any], key: str) -> str:
    value = table.get(key)
    return value if isinstance(value, str) else ""


def _items(table: dict[str, Any], key: str) -> tuple[Any, ...]:
    value = table.get(key)
    return value if isinstance(value, tuple) else ()
