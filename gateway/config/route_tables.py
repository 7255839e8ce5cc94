"""``[[routes]]``: what a route matches (:class:`~routes.model.RouteSpec`) and what the
gateway does with what it matched (:class:`~gateway.config.model.RoutePolicies`), one TOML
table for both. Settings are declared on those dataclasses and the policy settings they
hold; here are the checks no type can say (origins, header templates, retry conditions)
and the two rules that join them: HEAD follows GET, and a CORS route takes preflights.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable
from typing import Annotated, Any

from pydantic import AfterValidator, TypeAdapter, ValidationError, ValidationInfo

from gateway.cache.settings import CacheSettings
from gateway.config.checks import lower, one_of, reason_of
from gateway.config.model import RoutePolicies
from gateway.config.problems import Invalid, Loc, kind_of, reasons
from gateway.config.tables import annotated, fields_of, keys_table, table
from gateway.policies import cors, header_rules, ratelimit
from gateway.policies.auth import AuthSettings
from gateway.websocket.limits import WebSocketSettings
from routes.model import RouteSpec, parse_methods, path_params, validate_path
from upstreams.retry import CONDITIONS, RetrySpec


def methods_of(names: Iterable[str], cors_on: bool) -> frozenset[str] | None:
    """A route's methods: None (all) when none are given; HEAD follows GET (as Flask,
    Quart and nginx do); with CORS, preflights (OPTIONS) reach the policy that answers
    them. Shared with gateway.config.references, which compares routes by these."""
    methods = frozenset(names)
    if not methods:
        return None
    if "GET" in methods:
        methods |= {"HEAD"}
    if cors_on:
        methods |= {"OPTIONS"}
    return methods


def _route_methods(raw: tuple[Any, ...]) -> tuple[str, ...]:
    methods, bad = parse_methods(raw)
    if bad:
        raise Invalid.at(f"unknown method(s) {', '.join(methods[i] for i in bad)}")
    return methods


def _rewrite(value: str | None) -> str | None:
    """``prefix_rewrite``: a plain path (no template, query or fragment)."""
    if value is None:
        return None
    reason = validate_path(value)
    if reason is None and path_params(value):
        reason = "must be a plain path, without {parameters}"
    if reason is not None:
        raise Invalid.at(reason)
    return value


def _each(raw: tuple[Any, ...], test: Any, reason: str) -> None:
    bad = [((index,), reason) for index, item in enumerate(raw) if not test(item)]
    if bad:
        raise Invalid(*bad)


# ---- [routes.cors] -----------------------------------------------------------------------

_ORIGINS_REQUIRED = "is required (a list of origins, or ['*'])"


def _origins(raw: tuple[Any, ...]) -> tuple[str, ...]:
    if not raw:
        raise Invalid.at(_ORIGINS_REQUIRED)
    _each(
        raw,
        lambda o: isinstance(o, str) and cors.valid_origin(o),
        "must be '*' or scheme://host[:port], with an optional '*.' host prefix",
    )
    return tuple(str(o).lower() for o in raw)


def _is_token(item: Any) -> bool:
    return isinstance(item, str) and bool(item) and "," not in item


def _tokens(convert: Callable[[str], str], reason: str) -> Any:
    def check(raw: tuple[Any, ...]) -> tuple[str, ...]:
        _each(raw, _is_token, reason)
        return tuple(convert(str(item)) for item in raw)

    return Annotated[tuple[Any, ...], AfterValidator(check)]


CORS = table(
    cors.CorsSettings,
    exclude=("route_options",),  # not a key: from the route's methods
    fields={
        "allow_origins": Annotated[tuple[Any, ...], AfterValidator(_origins)],
        "allow_methods": _tokens(str.upper, "must be a token"),
        "allow_headers": _tokens(str.lower, "must be a token"),
        "expose_headers": _tokens(str, "must be a header name"),
    },
    missing={"allow_origins": _ORIGINS_REQUIRED},
)


# ---- [routes.auth] -----------------------------------------------------------------------


def _auth(values: dict[str, Any]) -> AuthSettings:
    settings = AuthSettings(**values)
    if not settings.api_key and not settings.jwt:
        raise Invalid.at("enable 'api_key = true' and/or name a provider in 'jwt'")
    return settings


AUTH = table(
    AuthSettings,
    fields={"allow": Annotated[tuple[Any, ...], AfterValidator(lambda a: tuple(map(str, a)))]},
    checks={"key_header": lower},
    build=_auth,
)


# ---- [routes.rate_limit] -----------------------------------------------------------------

RATE_LIMIT = table(
    ratelimit.RateLimitSettings,
    checks={
        "key": reason_of(ratelimit.key_reason),
        "backend": one_of(ratelimit.BACKENDS),
        "on_backend_error": one_of(ratelimit.ON_BACKEND_ERROR),
    },
    missing={"limit": "is required (requests per period)"},
)


# ---- [routes.headers] --------------------------------------------------------------------

_SIDES = ("request", "response")
_HEADERS = keys_table(
    "HeadersTable",
    {
        f"{side}_{kind}": (annotation, default)
        for side in _SIDES
        for kind, annotation, default in (
            ("remove", tuple[Any, ...], ()),
            ("set", dict[str, Any], {}),
            ("add", dict[str, Any], {}),
        )
    },
)


def _header_rules(values: dict[str, Any], info: ValidationInfo) -> header_rules.HeaderRules:
    """Templates compiled now, against the route's path parameters (``{id}``)."""
    params = path_params(info.data.get("path") or "")
    found: list[tuple[Loc, str]] = []
    sides: list[header_rules.HeaderRuleSet] = []
    for side in _SIDES:
        remove: list[bytes] = []
        for index, name in enumerate(values[f"{side}_remove"]):
            reason = header_rules.name_reason(name)
            if reason:
                found.append(((f"{side}_remove", index), reason))
            else:
                remove.append(str(name).lower().encode("ascii"))
        compiled: dict[str, list[tuple[bytes, header_rules.Template]]] = {"set": [], "add": []}
        for kind in ("set", "add"):
            for name, value in values[f"{side}_{kind}"].items():
                key = (f"{side}_{kind}", name)
                reason = header_rules.name_reason(name)
                if not reason and not isinstance(value, str):
                    reason = "must be a string"
                if reason:
                    found.append((key, reason))
                    continue
                try:
                    template = header_rules.compile_template(value, params)
                except ValueError as error:
                    found.append((key, str(error)))
                    continue
                compiled[kind].append((name.lower().encode("ascii"), template))
        sides.append(
            header_rules.HeaderRuleSet(
                frozenset(remove), tuple(compiled["set"]), tuple(compiled["add"])
            )
        )
    if found:
        raise Invalid(*found)
    return header_rules.HeaderRules(sides[0], sides[1])


HEADERS = annotated(_HEADERS, AfterValidator(_header_rules))


# ---- websocket ---------------------------------------------------------------------------

_WEBSOCKET: TypeAdapter[Any] = TypeAdapter(table(WebSocketSettings))


def _websocket(raw: Any) -> WebSocketSettings | None:
    """``websocket = true`` / ``false`` / a table (``enabled = false`` turns it off)."""
    if isinstance(raw, bool):
        return WebSocketSettings() if raw else None
    if not isinstance(raw, dict):
        raise Invalid.at("must be true, false or a table")
    entry = dict(raw)
    enabled = entry.pop("enabled", True)
    if not isinstance(enabled, bool):
        raise Invalid.at(f"must be a boolean, not {kind_of(enabled)}", "enabled")
    if not enabled:
        if entry:
            raise Invalid(*(((name,), "unknown key") for name in entry))
        return None
    try:
        settings: WebSocketSettings = _WEBSOCKET.validate_python(entry)
    except ValidationError as error:
        raise Invalid(*reasons(error)) from None
    return settings


# ---- [routes.retry] ----------------------------------------------------------------------


def _retry_on(raw: tuple[Any, ...]) -> tuple[str, ...]:
    words = [str(item) for item in raw]
    bad = [
        ((index,), f'{item!r} is not one of {", ".join(CONDITIONS)} or a 5xx status like "503"')
        for index, (item, word) in enumerate(zip(raw, words, strict=True))
        if not (word in CONDITIONS or (word.isdigit() and 500 <= int(word) <= 599))
    ]
    if bad:
        raise Invalid(*bad)
    return tuple(words)


def _retry_methods(raw: tuple[Any, ...]) -> tuple[str, ...]:
    methods, bad = parse_methods(raw)
    if bad:
        raise Invalid(*(((index,), f"unknown method {raw[index]!r}") for index in bad))
    return methods


RETRY = table(
    RetrySpec,
    fields={
        "retry_on": Annotated[tuple[Any, ...], AfterValidator(_retry_on)],
        "methods": Annotated[tuple[Any, ...], AfterValidator(_retry_methods)],
    },
)


# ---- the route ---------------------------------------------------------------------------

#: One ``[[routes]]`` table; validates to a dict that :func:`route` splits in two.
ROUTE = keys_table(
    "RouteTable",
    {
        **fields_of(
            RouteSpec,
            fields={
                "name": (str, ""),
                "methods": (Annotated[tuple[Any, ...], AfterValidator(_route_methods)], ()),
                "host": (str, ""),
            },
            checks={"path": reason_of(validate_path), "prefix_rewrite": _rewrite},
        ),
        # after "path": the header rules read its parameters
        **fields_of(
            RoutePolicies,
            fields={
                "cors": CORS | None,
                "auth": AUTH | None,
                "rate_limit": RATE_LIMIT | None,
                "headers": HEADERS | None,
                "websocket": (Annotated[Any, AfterValidator(_websocket)], None),
                "retry": RETRY | None,
                "cache": table(CacheSettings) | None,
            },
        ),
    },
)
_ROUTE: TypeAdapter[Any] = TypeAdapter(ROUTE)


def route(index: int, values: dict[str, Any]) -> tuple[RouteSpec, RoutePolicies]:
    if values["strip_prefix"] and values["prefix_rewrite"] is not None:
        reason = "give strip_prefix or prefix_rewrite, not both (strip_prefix is a rewrite to /)"
        raise Invalid.at(reason, "prefix_rewrite")
    policies = RoutePolicies(**_fields(RoutePolicies, values))
    methods = methods_of(values["methods"], policies.cors is not None)
    if policies.cors is not None and methods is not None:  # does the route serve OPTIONS?
        options = "OPTIONS" in values["methods"]
        policies = dataclasses.replace(
            policies, cors=dataclasses.replace(policies.cors, route_options=options)
        )
    spec = RouteSpec(
        **_fields(RouteSpec, values)
        | {
            "name": values["name"] or f"route{index}",
            "methods": methods,
            "host": values["host"] or None,
        }
    )
    return spec, policies


def _fields(cls: type[Any], values: dict[str, Any]) -> dict[str, Any]:
    """The validated values of ``cls``'s fields, by name (the table holds both halves)."""
    return {f.name: values[f.name] for f in dataclasses.fields(cls)}


def routes(raw: Any) -> tuple[tuple[RouteSpec, RoutePolicies], ...]:
    if not isinstance(raw, tuple):
        raise Invalid.at("must be an array of tables ([[routes]])")
    out: list[tuple[RouteSpec, RoutePolicies]] = []
    found: list[tuple[Loc, str]] = []
    for index, entry in enumerate(raw):
        try:
            out.append(route(index, _ROUTE.validate_python(entry)))
        except ValidationError as error:
            found += reasons(error, (index,))
        except Invalid as error:  # across a route's keys (route() above)
            found += [((index, *loc), reason) for loc, reason in error.found]
    if found:
        raise Invalid(*found)
    return tuple(out)


ROUTES = Annotated[Any, AfterValidator(routes)]
