"""``[upstreams.NAME]``: an HTTP upstream (targets, pool, balancing, health, breaker) or an
in-process app (``app = "module:attribute"``). Settings and defaults are declared on
:class:`~upstreams.spec.UpstreamSpec` and its parts; here are the checks a type cannot
say: target URLs, the breaker's rules across fields, the upstream kind by its keys."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Annotated, Any
from urllib.parse import urlsplit

from pydantic import AfterValidator, TypeAdapter, ValidationError

from gateway.config.checks import import_path, one_of, request_path, required, required_default
from gateway.config.model import AppUpstreamSpec
from gateway.config.problems import Invalid, Loc, kind_of, reasons
from gateway.config.tables import named, table
from upstreams.balancer import BALANCERS
from upstreams.breaker import BreakerSpec
from upstreams.concurrency import AdaptiveConcurrencySpec
from upstreams.health import HealthSpec
from upstreams.spec import TargetSpec, UpstreamSpec, default_port


def _target_url(url: str) -> str:
    """Checked here; turned into a :class:`TargetSpec` once the weight is known."""
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises on a bad port
    except ValueError as error:
        raise Invalid.at(f"{url!r} is not a valid URL: {error}") from None
    if parts.scheme not in ("http", "https"):
        raise Invalid.at(f"{url!r} is not a valid URL: scheme must be http or https")
    if not parts.hostname:
        raise Invalid.at(f"{url!r} is not a valid URL: no host")
    if parts.query or parts.fragment or "?" in url or "#" in url or parts.username:
        reason = "a target is scheme://host[:port][/path] (no query, fragment or user)"
        raise Invalid.at(f"{url!r}: {reason}")
    if not _PATH.fullmatch(parts.path):
        raise Invalid.at(f"{url!r}: the path must be made of URL path characters")
    return url


#: A target URL's path: RFC 3986 path characters, percent-encoded as written.
_PATH = re.compile(r"(/[A-Za-z0-9._~!$&'()*+,;=:@%-]*)*")


def _target(url: str, weight: int) -> TargetSpec:
    parts = urlsplit(url)
    port = parts.port or default_port(parts.scheme)
    return TargetSpec(parts.scheme, parts.hostname or "", port, weight, parts.path.rstrip("/"))


#: ``{ url = "...", weight = 2 }``; a URL alone is weight 1.
_TARGET_TABLE: TypeAdapter[Any] = TypeAdapter(
    table(
        TargetSpec,
        exclude=("scheme", "host", "port", "path"),
        extra={"url": (Annotated[str, AfterValidator(_target_url)], ...)},
        build=lambda values: _target(values["url"], values["weight"]),
    )
)


def _targets(raw: Any) -> tuple[TargetSpec, ...]:
    if not isinstance(raw, tuple) or not raw:
        raise Invalid.at("must be a non-empty list of URLs or {url, weight} tables")
    targets: list[TargetSpec] = []
    found: list[tuple[Loc, str]] = []
    for index, item in enumerate(raw):
        if isinstance(item, str):
            try:
                targets.append(_target(_target_url(item), 1))
            except Invalid as error:
                found += [((index, *loc), reason) for loc, reason in error.found]
        elif isinstance(item, dict):
            try:
                targets.append(_TARGET_TABLE.validate_python(item))
            except ValidationError as error:
                found += reasons(error, (index,))
        else:
            found.append(((index,), f"must be a URL string or a table, not {kind_of(item)}"))
    if found:
        raise Invalid(*found)
    return tuple(targets)


def _hash_on(value: str) -> str:
    if value == "client_ip":
        return value
    kind, _, name = value.partition(":")
    if kind == "header" and name and all(c.isalnum() or c in "-_" for c in name):
        return value
    raise Invalid.at("must be 'client_ip' or 'header:NAME'")


def _statuses(raw: tuple[Any, ...]) -> tuple[int, ...]:
    bad = [
        ((index,), "must be a status code 100-599")
        for index, item in enumerate(raw)
        if not (isinstance(item, int) and not isinstance(item, bool) and 100 <= item <= 599)
    ]
    if bad:
        raise Invalid(*bad)
    return raw


def _breaker(values: dict[str, Any]) -> BreakerSpec:
    spec = BreakerSpec(**values)
    found: list[tuple[Loc, str]] = []
    if spec.max_ejection_time < spec.ejection_time:
        found.append((("max_ejection_time",), "must not be less than ejection_time"))
    if not spec.consecutive_failures and not spec.failure_rate:
        found.append(((), "consecutive_failures and failure_rate are both 0: never ejects"))
    if found:
        raise Invalid(*found)
    return spec


def _adaptive(values: dict[str, Any]) -> AdaptiveConcurrencySpec:
    spec = AdaptiveConcurrencySpec(**values)
    found: list[tuple[Loc, str]] = []
    if spec.max_limit < spec.min_limit:
        found.append((("max_limit",), f"must not be less than min_limit ({spec.min_limit})"))
    elif not spec.min_limit <= spec.initial_limit <= spec.max_limit:
        found.append(
            (
                ("initial_limit",),
                f"must be between min_limit ({spec.min_limit}) and max_limit ({spec.max_limit})",
            )
        )
    if found:
        raise Invalid(*found)
    return spec


HEALTH = table(
    HealthSpec,
    checks={"path": request_path},
    fields={"expected_status": Annotated[tuple[Any, ...], AfterValidator(_statuses)]},
)
BREAKER = table(BreakerSpec, build=_breaker)
ADAPTIVE_CONCURRENCY = table(AdaptiveConcurrencySpec, build=_adaptive)

#: ``[upstreams.NAME]`` with ``targets``; validates to ``name -> UpstreamSpec``.
HTTP_UPSTREAM = table(
    UpstreamSpec,
    exclude=("name",),
    build=named(UpstreamSpec),
    fields={
        "targets": (
            Annotated[
                Any,
                required("is required (or give 'app' for an in-process upstream)"),
                AfterValidator(_targets),
            ],
            required_default(),
        ),
        "health": HEALTH | None,
        "breaker": BREAKER | None,
        "adaptive_concurrency": ADAPTIVE_CONCURRENCY | None,
    },
    checks={"balancer": one_of(BALANCERS), "hash_on": _hash_on},
)
#: ``[upstreams.NAME]`` with ``app``; validates to ``name -> AppUpstreamSpec``.
APP_UPSTREAM = table(
    AppUpstreamSpec, exclude=("name",), build=named(AppUpstreamSpec), checks={"app": import_path}
)
_HTTP: TypeAdapter[Any] = TypeAdapter(HTTP_UPSTREAM)
_APP: TypeAdapter[Any] = TypeAdapter(APP_UPSTREAM)


@dataclass(frozen=True, slots=True)
class Upstreams:
    """The ``[upstreams]`` table, split by kind."""

    http: dict[str, UpstreamSpec] = field(default_factory=dict)
    apps: dict[str, AppUpstreamSpec] = field(default_factory=dict)


def upstreams(raw: dict[str, Any]) -> Upstreams:
    """Each entry validated as the kind its keys say: ``app`` makes an in-process one."""
    result = Upstreams()
    found: list[tuple[Loc, str]] = []
    for name, entry in raw.items():
        is_app = isinstance(entry, dict) and "app" in entry
        try:
            make = (_APP if is_app else _HTTP).validate_python(entry)
        except ValidationError as error:
            found += reasons(error, (name,))
            continue
        (result.apps if is_app else result.http)[name] = make(name=name)
    if found:
        raise Invalid(*found)
    return result


UPSTREAMS = Annotated[dict[str, Any], AfterValidator(upstreams)]
