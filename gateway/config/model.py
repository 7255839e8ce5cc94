"""What a config file becomes: one frozen :class:`GatewayConfig`.

Per route it holds two things, kept apart on purpose. The :class:`~routes.model.RouteSpec`
is what routing needs to match a request (``routes/`` never imports ``gateway``), and
:class:`RoutePolicies` is what the gateway does with a matched request (CORS, auth, rate
limit, header rules, WebSocket, retries, deadline), typed, in ``route_policies`` under the
route's name. The name is the route's identity already (duplicates are refused), so no
opaque slot on ``RouteSpec`` is needed to join them, and routing stays ignorant of policies.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Annotated, Final

from annotated_types import Ge, Gt

from gateway.cache.settings import CacheSettings
from gateway.observability.sections import ObservabilitySettings
from gateway.policies.auth import AuthSettings
from gateway.policies.cors import CorsSettings
from gateway.policies.header_rules import HeaderRules
from gateway.policies.ratelimit import RateLimitSettings
from gateway.policies.shared import SharedSettings
from gateway.websocket.limits import WebSocketSettings
from routes.model import RouteSpec
from upstreams.retry import RetrySpec
from upstreams.spec import UpstreamSpec

Network = ipaddress.IPv4Network | ipaddress.IPv6Network

#: ``[server] engine``: the server that runs the gateway (docs/server.md).
ENGINES: Final = ("hypercorn", "uvicorn")


@dataclass(frozen=True, slots=True)
class GatewaySettings:
    """``[gateway]``: behaviour of the gateway as a whole."""

    #: Peers whose X-Forwarded-* headers are believed (CIDRs). Others' are replaced.
    trusted_proxies: tuple[Network, ...] = ()
    #: Request header carrying the request id; accepted from clients, generated otherwise.
    request_id_header: str = "x-request-id"
    #: Largest request body accepted, in bytes (413 beyond it); 0 means no limit.
    max_body_size: Annotated[int, Ge(0)] = 0
    #: Escaped slashes (%2F, %5C) in paths: "keep" (match as separators, forward as sent)
    #: or "reject" (400). docs/hardening.md.
    escaped_slashes: str = "keep"
    #: ``;`` path parameters (``/admin;jsessionid=1``): "keep" (routes match the path
    #: without them, as Tomcat, Spring and Jetty serve it; forwarded as sent) or "reject"
    #: (400). docs/hardening.md.
    path_parameters: str = "keep"
    #: W3C traceparent: "propagate", "start" (also begin traces) or "off"
    #: (gateway/edge/identity.py).
    traceparent: str = "propagate"
    #: More request header lines than this is answered 431 (Envoy's default is 100).
    max_header_count: Annotated[int, Gt(0)] = 100
    #: Request header names and values larger than this in total are answered 431 (bytes).
    #: h11's own cap (Hypercorn's h11_max_incomplete_size) misses a block that arrives in
    #: one read.
    max_header_size: Annotated[int, Gt(0)] = 16384
    #: Seconds a client may pause between request body chunks (408 beyond); 0: no limit.
    body_timeout: Annotated[float, Ge(0)] = 60.0
    #: Seconds from the first byte of a request head to its end (408 and close beyond);
    #: nginx's client_header_timeout, apart from the keep-alive idle timeout. 0: no limit.
    header_timeout: Annotated[float, Ge(0)] = 30.0
    #: Send ``X-Forwarded-Port`` upstream: the port the client connected to (a trusted
    #: proxy's own ``X-Forwarded-Port`` is passed on whatever this says).
    x_forwarded_port: bool = False
    #: When set, ``Via: <version> <via>`` is added to requests upstream and to responses
    #: (RFC 9110 7.6.3; Envoy's ``via``), e.g. ``"quartgate"``. Empty: no Via of its own.
    via: str = ""
    #: Seconds the worker's event loop may run late before new requests are refused with
    #: 503 gateway_overloaded (docs/overload.md); 0: never shed.
    max_loop_lag: Annotated[float, Ge(0)] = 0.5
    #: Proxied responses carry ``Server-Timing``: the gateway's share of the time to the
    #: response head and the upstream's (docs/observability.md); a route may say otherwise.
    server_timing: bool = False


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
    threads: Annotated[int, Gt(0)] = 8
    #: Seconds a WSGI request waits for a free thread, then 503 ``upstream_busy``: the
    #: ``pool_timeout`` of an HTTP upstream, for the app's threads. Unused for ASGI.
    queue_timeout: Annotated[float, Gt(0)] = 5.0


@dataclass(frozen=True, slots=True)
class RoutePolicies:
    """What the gateway does with a request a route matched, beyond forwarding it; the
    ``[routes.*]`` sub-tables and keys. Every field off by default."""

    #: ``[routes.cors]``: answered before auth (a preflight carries no credentials).
    cors: CorsSettings | None = None
    #: ``[routes.auth]``: API keys and JWTs; sets the consumer.
    auth: AuthSettings | None = None
    #: ``[routes.rate_limit]``: may key on the consumer.
    rate_limit: RateLimitSettings | None = None
    #: ``[routes.headers]``: may use the consumer and every value above.
    headers: HeaderRules | None = None
    #: ``websocket = true`` or ``[routes.websocket]``: the route takes WebSocket handshakes.
    websocket: WebSocketSettings | None = None
    #: ``[routes.retry]``; None: only connect failures are retried.
    retry: RetrySpec | None = None
    #: Seconds the whole exchange with the upstream may take (all tries); 0: no deadline.
    timeout: Annotated[float, Ge(0)] = 0.0
    #: ``Server-Timing`` on this route's responses; None: as ``[gateway] server_timing``.
    server_timing: bool | None = None
    #: ``[routes.cache]``: the route's responses stored and served (docs/cache.md).
    cache: CacheSettings | None = None


#: A route without policies: what most routes are.
NO_POLICIES: Final = RoutePolicies()


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
    shared: SharedSettings = field(default_factory=SharedSettings)
    #: ``[server]``: the engine (docs/server.md).
    server: ServerSettings = ServerSettings()
    #: Route name -> its policies; a route not named here has none (:data:`NO_POLICIES`).
    route_policies: Mapping[str, RoutePolicies] = field(default_factory=dict)

    def policies_of(self, route: RouteSpec) -> RoutePolicies:
        return self.route_policies.get(route.name, NO_POLICIES)
