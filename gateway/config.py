"""Loading ``gateway.toml`` into one frozen, validated :class:`GatewayConfig`.

Every problem is reported as ``file: key: reason`` and all of them at once, so an operator
fixes a file in one pass. Unknown keys are errors: a misspelt key silently ignored is how a
proxy ends up with a default nobody chose.
"""

from __future__ import annotations

import dataclasses
import hashlib
import ipaddress
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

from gateway.edge.normalize import ESCAPED_SLASH_ACTIONS as SLASH_ACTIONS
from gateway.edge.traceparent import TRACE_MODES
from gateway.observability.settings import ObservabilitySettings, parse_observability
from gateway.policies.pipeline import check_routes, parse_route_policies
from gateway.policies.settings import EdgeSettings, parse_edge
from gateway.resilience_config import parse_route_resilience, parse_upstream_resilience
from gateway.websocket.settings import parse_websocket
from routes.model import ALL_METHODS, RouteSpec, validate_path
from upstreams.spec import TargetSpec, UpstreamSpec

T = TypeVar("T")
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True, slots=True)
class Problem:
    file: str
    key: str
    reason: str

    def __str__(self) -> str:
        return f"{self.file}: {self.key}: {self.reason}"


class ConfigError(Exception):
    """The config file is invalid; ``problems`` lists every reason."""

    def __init__(self, problems: list[Problem]) -> None:
        super().__init__("\n".join(str(p) for p in problems))
        self.problems = problems


@dataclass(frozen=True, slots=True)
class GatewaySettings:
    """``[gateway]``: behaviour of the gateway as a whole."""

    #: Peers whose X-Forwarded-* headers are believed (CIDRs). Others' are replaced.
    trusted_proxies: tuple[Network, ...] = ()
    #: Request header carrying the request id; accepted from clients, generated otherwise.
    request_id_header: str = "x-request-id"
    #: Largest request body accepted, in bytes (413 beyond it); 0 means no limit.
    max_body_size: int = 0
    #: Escaped slashes (%2F, %5C) in paths: "keep" (match as separators, forward as sent)
    #: or "reject" (400). docs/hardening.md.
    escaped_slashes: str = "keep"
    #: W3C traceparent: "propagate", "start" (also begin traces) or "off"
    #: (gateway/edge/traceparent.py).
    traceparent: str = "propagate"
    #: More request header lines than this is answered 431 (Envoy's default is 100).
    max_header_count: int = 100
    #: Request header names and values larger than this in total are answered 431. h11's
    #: own cap (Hypercorn's h11_max_incomplete_size) misses a block that arrives in one read.
    max_header_size: int = 16384
    #: Seconds a client may pause between request body chunks (408 beyond); 0: no limit.
    body_timeout: float = 60.0
    #: Seconds from the first byte of a request head to its end (408 and close beyond);
    #: nginx's client_header_timeout, apart from the keep-alive idle timeout. 0: no limit.
    header_timeout: float = 30.0


#: ``[server] engine``: the server that runs the gateway (docs/server.md).
ENGINES = ("hypercorn", "uvicorn")


@dataclass(frozen=True, slots=True)
class ServerSettings:
    """``[server]``: which engine serves the gateway; its settings are in hypercorn.toml."""

    engine: str = "hypercorn"


@dataclass(frozen=True, slots=True)
class AppUpstreamSpec:
    """An in-process upstream (``"module:attribute"``): a Quart blueprint, an ASGI app or a
    WSGI app (gateway/inprocess.py, docs/in-process-apps.md)."""

    name: str
    app: str
    #: Threads of a WSGI app's pool (a blocking handler holds one); unused for ASGI.
    threads: int = 8


@dataclass(frozen=True, slots=True)
class GatewayConfig:
    source: str
    gateway: GatewaySettings = GatewaySettings()
    upstreams: dict[str, UpstreamSpec] = field(default_factory=dict)
    app_upstreams: dict[str, AppUpstreamSpec] = field(default_factory=dict)
    routes: tuple[RouteSpec, ...] = ()
    #: ``[admin]``, ``[metrics]``, ``[access_log]``, ``[tracing]`` (docs/observability.md).
    observability: ObservabilitySettings = field(default_factory=ObservabilitySettings)
    #: sha256 prefix of the file's bytes: what /admin/config and quartgate_config_info show.
    version: str = ""
    #: ``[consumers]``, ``[jwt_providers]``, ``[redis]`` for route policies (docs/policies.md).
    edge: EdgeSettings = field(default_factory=EdgeSettings)
    #: ``[server]``: the engine (docs/server.md).
    server: ServerSettings = ServerSettings()


class ConfigReader:
    """Reads one TOML table, recording problems under dotted key paths."""

    def __init__(self, file: str, problems: list[Problem]) -> None:
        self.file = file
        self.problems = problems

    def problem(self, key: str, reason: str) -> None:
        self.problems.append(Problem(self.file, key, reason))

    def table(self, data: Any, key: str) -> dict[str, Any] | None:
        """A copy of the table, for ``take`` to pop keys from, or None (problem recorded)."""
        if not isinstance(data, dict):
            self.problem(key, f"must be a table, not {_kind(data)}")
            return None
        return dict(data)

    def take(
        self,
        table: dict[str, Any],
        prefix: str,
        name: str,
        kind: type[T] | tuple[type, ...],
        default: T,
        check: Callable[[Any], str | None] | None = None,
    ) -> T:
        key = f"{prefix}.{name}" if prefix else name
        if name not in table:
            return default
        value = table.pop(name)
        kinds = kind if isinstance(kind, tuple) else (kind,)
        if float in kinds and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        ok = False if isinstance(value, bool) and bool not in kinds else isinstance(value, kinds)
        if not ok:
            self.problem(key, f"must be {_names(kinds)}, not {_kind(value)}")
            return default
        if check is not None:
            reason = check(value)
            if reason:
                self.problem(key, reason)
                return default
        return value  # type: ignore[no-any-return]

    def leftovers(self, table: dict[str, Any], prefix: str) -> None:
        for name in table:
            key = f"{prefix}.{name}" if prefix else name
            self.problem(key, "unknown key")


def load_config(path: str | Path) -> GatewayConfig:
    """Read and validate a config file; raise :class:`ConfigError` naming every problem."""
    file = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as error:
        raise ConfigError([Problem(file, "-", f"cannot read file: {error.strerror}")]) from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise ConfigError([Problem(file, "-", f"invalid TOML: {error}")]) from None
    config = parse_config(data, file)
    version = hashlib.sha256(text.encode("utf-8")).hexdigest()[:12]
    return dataclasses.replace(config, version=version)


def parse_config(data: dict[str, Any], file: str = "<config>") -> GatewayConfig:
    problems: list[Problem] = []
    reader = ConfigReader(file, problems)
    data = dict(data)
    gateway = _gateway(reader, data.pop("gateway", {}))
    upstreams, apps = _upstreams(reader, data.pop("upstreams", {}))
    routes = _routes(reader, data.pop("routes", []), set(upstreams) | set(apps))
    observability = parse_observability(reader, data)
    server = _server(reader, data.pop("server", {}))
    edge = parse_edge(reader, data, file)
    check_routes(reader, routes, edge)
    reader.leftovers(data, "")
    if not routes and not problems:
        reader.problem("routes", "at least one [[routes]] entry is required")
    if problems:
        raise ConfigError(problems)
    return GatewayConfig(
        file, gateway, upstreams, apps, routes, observability=observability, edge=edge,
        server=server,
    )  # fmt: skip


def _server(reader: ConfigReader, raw: Any) -> ServerSettings:
    table = reader.table(raw, "server")
    if table is None:
        return ServerSettings()
    engine = reader.take(table, "server", "engine", str, "hypercorn", _one_of(ENGINES))
    reader.leftovers(table, "server")
    return ServerSettings(engine)


def _gateway(reader: ConfigReader, raw: Any) -> GatewaySettings:
    table = reader.table(raw, "gateway")
    if table is None:
        return GatewaySettings()
    default = GatewaySettings()
    proxies = reader.take(table, "gateway", "trusted_proxies", list, [])
    networks: list[Network] = []
    for index, item in enumerate(proxies):
        try:
            networks.append(ipaddress.ip_network(str(item), strict=False))
        except ValueError:
            reader.problem(f"gateway.trusted_proxies[{index}]", f"{item!r} is not an IP or CIDR")
    header = reader.take(
        table, "gateway", "request_id_header", str, default.request_id_header, _header_name
    )
    max_body = reader.take(table, "gateway", "max_body_size", int, 0, _non_negative)
    slashes = reader.take(
        table, "gateway", "escaped_slashes", str, default.escaped_slashes, _one_of(SLASH_ACTIONS)
    )
    trace = reader.take(
        table, "gateway", "traceparent", str, default.traceparent, _one_of(TRACE_MODES)
    )
    header_count = reader.take(
        table, "gateway", "max_header_count", int, default.max_header_count, _positive
    )
    body_timeout = reader.take(
        table, "gateway", "body_timeout", float, default.body_timeout, _non_negative
    )
    header_size = reader.take(
        table, "gateway", "max_header_size", int, default.max_header_size, _positive
    )
    header_timeout = reader.take(
        table, "gateway", "header_timeout", float, default.header_timeout, _non_negative
    )
    reader.leftovers(table, "gateway")
    return GatewaySettings(
        tuple(networks),
        header.lower(),
        max_body,
        escaped_slashes=slashes,
        traceparent=trace,
        max_header_count=header_count,
        max_header_size=header_size,
        body_timeout=body_timeout,
        header_timeout=header_timeout,
    )


def _upstreams(
    reader: ConfigReader, raw: Any
) -> tuple[dict[str, UpstreamSpec], dict[str, AppUpstreamSpec]]:
    table = reader.table(raw, "upstreams")
    upstreams: dict[str, UpstreamSpec] = {}
    apps: dict[str, AppUpstreamSpec] = {}
    if table is None:
        return upstreams, apps
    for name, body in table.items():
        prefix = f"upstreams.{name}"
        entry = reader.table(body, prefix)
        if entry is None:
            continue
        if "app" in entry:
            app = reader.take(entry, prefix, "app", str, "", _import_path)
            threads = reader.take(entry, prefix, "threads", int, 8, _positive)
            reader.leftovers(entry, prefix)
            if app:
                apps[name] = AppUpstreamSpec(name, app, threads)
            continue
        d = UpstreamSpec(name, ())
        targets = _targets(reader, entry.pop("targets", None), prefix)
        spec = UpstreamSpec(
            name=name,
            targets=targets,
            max_connections=reader.take(
                entry, prefix, "max_connections", int, d.max_connections, _positive
            ),
            keepalive_expiry=reader.take(
                entry, prefix, "keepalive_expiry", float, d.keepalive_expiry, _non_negative
            ),
            connect_timeout=reader.take(
                entry, prefix, "connect_timeout", float, d.connect_timeout, _positive
            ),
            read_timeout=reader.take(
                entry, prefix, "read_timeout", float, d.read_timeout, _positive
            ),
            write_timeout=reader.take(
                entry, prefix, "write_timeout", float, d.write_timeout, _positive
            ),
            pool_timeout=reader.take(
                entry, prefix, "pool_timeout", float, d.pool_timeout, _positive
            ),
            http2=reader.take(entry, prefix, "http2", bool, d.http2),
            **parse_upstream_resilience(reader, entry, prefix),
        )
        reader.leftovers(entry, prefix)
        upstreams[name] = spec
    return upstreams, apps


def _targets(reader: ConfigReader, raw: Any, prefix: str) -> tuple[TargetSpec, ...]:
    key = f"{prefix}.targets"
    if raw is None:
        reader.problem(key, "is required (or give 'app' for an in-process upstream)")
        return ()
    if not isinstance(raw, list) or not raw:
        reader.problem(key, "must be a non-empty list of URLs or {url, weight} tables")
        return ()
    targets: list[TargetSpec] = []
    for index, item in enumerate(raw):
        item_key = f"{key}[{index}]"
        weight = 1
        if isinstance(item, dict):
            item = dict(item)
            url = reader.take(item, item_key, "url", str, "")
            weight = reader.take(item, item_key, "weight", int, 1, _positive)
            reader.leftovers(item, item_key)
            if not url:
                reader.problem(f"{item_key}.url", "is required")
                continue
        elif isinstance(item, str):
            url = item
        else:
            reader.problem(item_key, f"must be a URL string or a table, not {_kind(item)}")
            continue
        target = _parse_target(url, weight)
        if isinstance(target, str):
            reader.problem(item_key, target)
        else:
            targets.append(target)
    return tuple(targets)


def _parse_target(url: str, weight: int) -> TargetSpec | str:
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as error:
        return f"{url!r} is not a valid URL: {error}"
    if parts.scheme not in ("http", "https"):
        return f"{url!r} is not a valid URL: scheme must be http or https"
    if not parts.hostname:
        return f"{url!r} is not a valid URL: no host"
    if parts.path not in ("", "/") or parts.query or parts.fragment or parts.username:
        return f"{url!r}: a target is scheme://host[:port] only (no path, query or user)"
    default = 443 if parts.scheme == "https" else 80
    return TargetSpec(parts.scheme, parts.hostname, port or default, weight)


def _routes(reader: ConfigReader, raw: Any, upstream_names: set[str]) -> tuple[RouteSpec, ...]:
    if not isinstance(raw, list):
        reader.problem("routes", "must be an array of tables ([[routes]])")
        return ()
    routes: list[RouteSpec] = []
    seen_names: dict[str, int] = {}
    seen_keys: dict[tuple[str | None, str, frozenset[str] | None], int] = {}
    for index, body in enumerate(raw):
        prefix = f"routes[{index}]"
        entry = reader.table(body, prefix)
        if entry is None:
            continue
        before = len(reader.problems)
        name = reader.take(entry, prefix, "name", str, f"route{index}")
        path = reader.take(entry, prefix, "path", str, "", validate_path)
        upstream = reader.take(entry, prefix, "upstream", str, "")
        methods_raw = reader.take(entry, prefix, "methods", list, [])
        host = reader.take(entry, prefix, "host", str, "") or None
        strip_prefix = reader.take(entry, prefix, "strip_prefix", bool, False)
        preserve_host = reader.take(entry, prefix, "preserve_host", bool, False)
        options = parse_route_policies(reader, entry, prefix, path)
        options.update(parse_route_resilience(reader, entry, prefix))
        if "websocket" in entry:  # docs/websocket.md; off by default
            websocket = parse_websocket(reader, entry.pop("websocket"), prefix)
            if websocket is not None:
                options["websocket"] = websocket
        reader.leftovers(entry, prefix)
        if "path" not in body:
            reader.problem(f"{prefix}.path", "is required")
        if not upstream:
            if "upstream" not in body:
                reader.problem(f"{prefix}.upstream", "is required")
        elif upstream not in upstream_names:
            reader.problem(f"{prefix}.upstream", f"names unknown upstream {upstream!r}")
        methods: frozenset[str] | None = None
        if methods_raw:
            upper = [str(m).upper() for m in methods_raw]
            bad = [m for m in upper if m not in ALL_METHODS]
            if bad:
                reader.problem(f"{prefix}.methods", f"unknown method(s) {', '.join(bad)}")
            methods = frozenset(upper) - frozenset(bad)
            if "GET" in methods:
                methods |= {"HEAD"}  # as Flask, Quart and nginx: HEAD follows GET
            if "cors" in options:  # preflights reach the CORS policy, which answers them
                options["route_options"] = "OPTIONS" in methods
                methods |= {"OPTIONS"}
        if name in seen_names:
            reader.problem(
                f"{prefix}.name", f"duplicate route name (also routes[{seen_names[name]}])"
            )
        seen_names.setdefault(name, index)
        identity = (host.lower() if host else None, path.rstrip("/") or "/", methods)
        if path and identity in seen_keys:
            reader.problem(
                prefix,
                f"duplicate route: same host, path and methods as routes[{seen_keys[identity]}]",
            )
        seen_keys.setdefault(identity, index)
        if len(reader.problems) == before:
            routes.append(
                RouteSpec(name, path, upstream, methods, host, strip_prefix, preserve_host, options)
            )
    return tuple(routes)


# ---- small checks ------------------------------------------------------------------------


def _positive(value: float) -> str | None:
    return None if value > 0 else "must be greater than 0"


def _non_negative(value: float) -> str | None:
    return None if value >= 0 else "must not be negative"


def _one_of(choices: tuple[str, ...]) -> Callable[[str], str | None]:
    def check(value: str) -> str | None:
        return None if value in choices else f"must be one of {', '.join(choices)}"

    return check


def _header_name(value: str) -> str | None:
    ok = value and all(c.isalnum() or c in "-_" for c in value)
    return None if ok else "must be a header name (letters, digits, '-')"


def _import_path(value: str) -> str | None:
    module, _, attribute = value.partition(":")
    return None if module and attribute else "must be 'module:attribute'"


def _kind(value: Any) -> str:
    return {
        bool: "a boolean",
        int: "an integer",
        float: "a number",
        str: "a string",
        list: "an array",
        dict: "a table",
    }.get(type(value), type(value).__name__)


def _names(kinds: tuple[type, ...]) -> str:
    return " or ".join(_kind(k()) for k in kinds)
