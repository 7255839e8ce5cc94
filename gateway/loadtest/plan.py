"""What ``quartgate loadtest`` sends: one weighted task per route of a config, or the
reason it sends none.

A route becomes a request a client of it would make: its path (a ``{name}`` segment filled
from ``--param name=value``, else with a number that changes per request, so a cache or a
hash balancer sees many keys), its first method (GET when it takes GET; a POST carries a
small JSON body), a ``Host`` its ``host`` matches (``*.example.com``:
``loadtest.example.com``), and the operator's ``--header`` lines. ``--path ROUTE=/p``
replaces the path when the route's prefix alone is not a useful request.

Skipped, each with its reason printed: routes behind ``[routes.auth]`` unless credentials
were given (``--header``; they are sent on every route's requests), WebSocket routes unless
``--websocket`` (each of their tasks is then a session: the handshake through the gateway,
then a close; ``python -m loadtests.ws_bench`` measures messages), and ``--weight ROUTE=0``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace

from gateway.config import GatewayConfig
from routes.model import RouteSpec

_PARAM = re.compile(r"\{([^}/]+)\}")
#: The body of a generated POST, PUT or PATCH.
BODY = b'{"quartgate": "loadtest"}'


@dataclass(frozen=True, slots=True)
class RouteTask:
    """One route's request: ``path`` may hold ``{name}`` placeholders still to fill."""

    route: str
    method: str
    path: str
    weight: int
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes | None = None
    #: Why its responses carry no ``Server-Timing`` to read ("" when they should).
    untimed: str = ""
    #: A WebSocket session (handshake, close) instead of one request.
    websocket: bool = False

    def target(self, counter: int, params: Mapping[str, str]) -> str:
        """The path of request number ``counter``."""
        return _PARAM.sub(lambda m: params.get(m.group(1), str(1 + counter % 1000)), self.path)


@dataclass(frozen=True, slots=True)
class Plan:
    tasks: tuple[RouteTask, ...]
    #: route name -> why it is not load-tested
    skipped: dict[str, str]


class PlanError(ValueError):
    """An option names something the config does not have, or is not ``KEY=VALUE``."""


def pairs(values: Sequence[str], option: str) -> dict[str, str]:
    """``["a=1", "b=2"]`` as ``{"a": "1", "b": "2"}``."""
    found: dict[str, str] = {}
    for value in values:
        key, sep, rest = value.partition("=")
        if not sep or not key:
            raise PlanError(f"{option} {value!r}: expected NAME=VALUE")
        found[key] = rest
    return found


def header_lines(values: Sequence[str]) -> dict[str, str]:
    headers: dict[str, str] = {}
    for value in values:
        name, sep, rest = value.partition(":")
        if not sep or not name.strip():
            raise PlanError(f"--header {value!r}: expected 'Name: value'")
        headers[name.strip()] = rest.strip()
    return headers


def plan(
    config: GatewayConfig,
    *,
    headers: Mapping[str, str] | None = None,
    weights: Mapping[str, str] | None = None,
    paths: Mapping[str, str] | None = None,
    websocket: bool = False,
) -> Plan:
    headers = dict(headers or {})
    weights = dict(weights or {})
    paths = dict(paths or {})
    names = {spec.name for spec in config.routes}
    for option, given in (("--weight", weights), ("--path", paths)):
        unknown = sorted(set(given) - names)
        if unknown:
            raise PlanError(f"{option}: no route named {', '.join(map(repr, unknown))}")
    tasks: list[RouteTask] = []
    skipped: dict[str, str] = {}
    for spec in config.routes:
        policies = config.policies_of(spec)
        weight = _weight(spec.name, weights.get(spec.name, "1"))
        timed = (
            config.gateway.server_timing
            if policies.server_timing is None
            else policies.server_timing
        )
        if weight == 0:
            skipped[spec.name] = "--weight 0"
        elif policies.websocket is not None and not websocket:
            skipped[spec.name] = "a WebSocket route: --websocket includes it"
        elif policies.auth is not None and not headers:
            skipped[spec.name] = "behind [routes.auth]: give credentials with --header"
        elif policies.websocket is not None:
            task = _task(spec, weight, headers, paths.get(spec.name), "WS")
            untimed = "a WebSocket session: timed by the client only"
            tasks.append(replace(task, untimed=untimed, websocket=True))
        else:
            task = _task(spec, weight, headers, paths.get(spec.name), _method(spec))
            if spec.upstream in config.app_upstreams:
                task = replace(task, untimed="an in-process app: no upstream hop to time")
            elif not timed:
                task = replace(task, untimed="server_timing is off for it")
            tasks.append(task)
    return Plan(tuple(tasks), skipped)


def _weight(route: str, text: str) -> int:
    try:
        weight = int(text)
    except ValueError:
        weight = -1
    if weight < 0:
        raise PlanError(f"--weight {route}={text}: expected a whole number >= 0")
    return weight


def _method(spec: RouteSpec) -> str:
    """GET when the route takes it (or any method), else the first of its methods."""
    return "GET" if not spec.methods or "GET" in spec.methods else sorted(spec.methods)[0]


def _task(
    spec: RouteSpec, weight: int, headers: dict[str, str], path: str | None, method: str
) -> RouteTask:
    sent = dict(headers)
    if spec.host:
        sent["Host"] = "loadtest" + spec.host[1:] if spec.host.startswith("*.") else spec.host
    body = None
    if method in ("POST", "PUT", "PATCH"):
        body = BODY
        sent.setdefault("Content-Type", "application/json")
    return RouteTask(spec.name, method, path or spec.path, weight, sent, body)
