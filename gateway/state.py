"""Everything a request needs, built once from a config: the snapshot a reload swaps.

That includes the edge stages (:class:`EdgeStages`), shared by the HTTP request path
(gateway/pipeline/) and WebSocket handshakes (gateway/websocket/handshake.py): nothing
about them is decided per request.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from gateway.cache.redis_store import RedisStore
from gateway.cache.route_cache import RouteCache, Store
from gateway.cache.settings import CacheSettings
from gateway.cache.store import memory_store
from gateway.config import GatewayConfig, GatewaySettings, RoutePolicies
from gateway.edge.checks import EdgeChecks
from gateway.edge.context import Observer, Policy
from gateway.edge.headers import TrustedProxies
from gateway.edge.identity import Identity
from gateway.edge.normalize import Normaliser
from gateway.ops.loop_lag import LoopLag
from gateway.policies.route_chain import Resources, build_policies
from gateway.websocket.connect import Connector
from gateway.websocket.limits import WebSocketSettings
from routes.model import Route, RouteTable
from upstreams.retry import RetryPolicy
from upstreams.upstream import Upstream


@dataclass(frozen=True, slots=True)
class RouteRuntime:
    """A route joined to what serves it: an :class:`Upstream`, or (None) an in-process app."""

    route: Route
    upstream: Upstream | None
    #: strip_prefix or prefix_rewrite: the route rewrites the path it forwards.
    rewrites: bool
    preserve_host: bool
    #: The route's pipeline, in order; empty for most routes, so the hot path skips it.
    policies: tuple[Policy, ...] = ()
    #: The route's deadline and retry policy for its upstream; None: the upstream's default.
    retry: RetryPolicy | None = None
    #: ``websocket = true``: the route takes WebSocket handshakes (docs/websocket.md).
    websocket: WebSocketSettings | None = None
    #: Opens upstream WebSocket connections; None for in-process apps and plain routes.
    connector: Connector | None = None
    #: Proxied responses carry ``Server-Timing`` (gateway/pipeline/server_timing.py).
    server_timing: bool = False
    #: ``[routes.cache]``: the route's store and rules (gateway/cache/); None: no cache.
    cache: RouteCache | None = None


@dataclass(frozen=True, slots=True)
class EdgeStages:
    #: Header limits, method, framing, target, control characters, one Host.
    requests: EdgeChecks
    #: The same for a WebSocket handshake (its wording; no framing: it has no body).
    handshakes: EdgeChecks
    normaliser: Normaliser
    identity: Identity


def build_edge(settings: GatewaySettings, trusted: TrustedProxies) -> EdgeStages:
    count, size = settings.max_header_count, settings.max_header_size
    return EdgeStages(
        EdgeChecks.for_requests(count, size),
        EdgeChecks.for_handshakes(count, size),
        Normaliser(settings.escaped_slashes, settings.path_parameters),
        Identity(trusted, settings.traceparent, settings.x_forwarded_port),
    )


@dataclass(frozen=True, slots=True)
class GatewayState:
    config: GatewayConfig
    table: RouteTable
    runtimes: dict[str, RouteRuntime]
    upstreams: dict[str, Upstream]
    request_id_header: bytes
    trusted: TrustedProxies
    max_body_size: int
    #: The edge stages (checks, normalisation, identity), shared by HTTP and WebSocket.
    edge: EdgeStages
    #: Told about each finished request (access log, metrics); empty means no work.
    observers: tuple[Observer, ...] = field(default=())
    #: What route policies share (a Redis client); closed with the snapshot.
    resources: Resources | None = None
    #: The worker's event loop watch, one per worker across snapshots (``max_loop_lag``
    #: sheds by it; adaptive limits do not blame an upstream for the loop's lateness).
    loop_lag: LoopLag = field(default_factory=lambda: LoopLag(0.0))

    def start(self) -> None:
        """Start what runs in the background (active health checks), in the serving loop."""
        for upstream in self.upstreams.values():
            upstream.start()

    async def retire(self) -> None:
        """A reload replaced this snapshot: close each upstream once its requests are done."""
        try:
            await asyncio.gather(*(u.retire() for u in self.upstreams.values()))
        finally:
            if self.resources is not None:
                await self.resources.aclose()

    async def aclose(self) -> None:
        for upstream in self.upstreams.values():
            await upstream.aclose()
        if self.resources is not None:
            await self.resources.aclose()


def build_state(
    config: GatewayConfig, observers: tuple[Observer, ...] = (), loop_lag: LoopLag | None = None
) -> GatewayState:
    """Build a snapshot; ``observers`` (metrics, access log) and ``loop_lag`` are the
    worker's, kept on reload (a new watch when not given)."""
    settings = config.gateway
    if loop_lag is None:
        loop_lag = LoopLag(settings.max_loop_lag)
    else:
        loop_lag.bound = settings.max_loop_lag  # a reload may change it
    upstreams = {name: Upstream(spec, loop_lag) for name, spec in config.upstreams.items()}
    table = RouteTable(config.routes)
    runtimes: dict[str, RouteRuntime] = {}
    resources = Resources(config.shared)
    connectors: dict[str, Connector] = {}
    for route in table.routes:
        spec = route.spec
        upstream = upstreams.get(spec.upstream)
        policies = config.policies_of(spec)
        websocket = policies.websocket
        connector = None
        if websocket is not None and upstream is not None:
            connector = connectors.get(upstream.name)
            if connector is None:
                connector = connectors[upstream.name] = Connector(upstream)
        runtimes[route.name] = RouteRuntime(
            route,
            upstream,
            spec.rewrites,
            spec.preserve_host,
            build_policies(spec.name, policies, resources),
            # In process, the route's deadline bounds the wait for a WSGI thread.
            _retry_policy(policies),
            websocket,
            connector,
            settings.server_timing if policies.server_timing is None else policies.server_timing,
            _route_cache(route.name, policies.cache, config, resources)
            if upstream is not None
            else None,
        )
    trusted = TrustedProxies(settings.trusted_proxies)
    return GatewayState(
        config,
        table,
        runtimes,
        upstreams,
        settings.request_id_header.encode("ascii"),
        trusted,
        settings.max_body_size,
        build_edge(settings, trusted),
        observers=observers,
        resources=resources,
        loop_lag=loop_lag,
    )


def _retry_policy(policies: RoutePolicies) -> RetryPolicy | None:
    """One policy object per route, built here once; None when the route sets neither key."""
    if policies.retry is None and not policies.timeout:
        return None
    return RetryPolicy(policies.retry, policies.timeout)


def _route_cache(
    route: str, settings: CacheSettings | None, config: GatewayConfig, resources: Resources
) -> RouteCache | None:
    """A route's cache over the configured store: this worker's memory store (kept across
    reloads) or the Redis one every worker shares (gateway/cache/)."""
    if settings is None:
        return None
    store_settings = config.shared.cache
    store: Store
    if store_settings.store == "redis":
        store = RedisStore(resources.redis(), store_settings.key_prefix)
    else:
        store = memory_store(store_settings)
    return RouteCache(route, settings, store, config.gateway.request_id_header.encode("ascii"))
