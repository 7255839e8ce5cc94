"""The request path of one snapshot, stage by stage, in :meth:`RequestPath.handle`: for HTTP
requests and, as Starlette's router does with one ``Match`` for both scope types, for
WebSocket handshakes.

Each stage is an object built once per snapshot (the edge stages with the snapshot itself,
gateway/state.py; the rest here), named in one :class:`Stages` record, and
``handle`` calls their bound methods, held in slots, in order: no closure, list or task is
made per request for the chain itself, and the only per-request objects are the head
record (the header scan's result, in place of the locals it replaced) and the
:class:`RequestContext` every stage shares.

A handshake's path is a second ``RequestPath`` of the snapshot, built from the HTTP path's
:class:`Stages` with the few that differ replaced (gateway/websocket/handshake.py: its edge
checks, its route match, the WebSocket dispatch, its error mapping and observers); the
walk is this one.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from time import perf_counter

from gateway.asgi_types import Receive, Scope, Send
from gateway.edge.context import Observer, RequestContext
from gateway.edge.errors import ClientDisconnected, GatewayError, Reply
from gateway.edge.head import RequestHead
from gateway.edge.refusals import GATEWAY_OVERLOADED
from gateway.ops.loop_lag import LoopLag
from gateway.pipeline.error_mapping import ErrorMapping
from gateway.pipeline.inprocess_dispatch import InProcessApps, InProcessDispatch
from gateway.pipeline.route_match import RouteMatch
from gateway.pipeline.upstream_dispatch import UpstreamDispatch
from gateway.state import GatewayState, RouteRuntime

#: ``UpstreamDispatch.forward``: a route served by an upstream (or, for a handshake, the
#: WebSocket dispatch: an upstream connection and a relayed session).
Forward = Callable[[RouteRuntime, RequestContext, RequestHead, Receive, Send], Awaitable[None]]
#: ``InProcessDispatch.to_app``: a route served by an in-process app.
ToApp = Callable[[RouteRuntime, RequestContext, Receive, Send], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class Stages:
    """The stages of a request path, in the order ``handle`` walks them."""

    #: Header limits, method, framing, target, CTL, one Host: 400 413 431 501.
    check_edge: Callable[[Scope, RequestHead], None]
    #: The path matched is the path forwarded.
    normalise: Callable[[RequestContext], None]
    #: Trusted forwarding headers, traceparent.
    identify: Callable[[RequestContext, bytes | None, str], None]
    #: The route and what serves it: 404 / 405.
    match_route: Callable[[RequestContext], RouteRuntime]
    forward: Forward
    to_app: ToApp
    errors: ErrorMapping
    #: Access log, metrics, tracing.
    observers: tuple[Observer, ...]
    #: What ``forward`` belongs to, for ``[routes.cache]`` (which also answers from its
    #: store through it); None for a handshake's path.
    dispatch: UpstreamDispatch | None = None


def request_stages(state: GatewayState, apps: InProcessApps) -> Stages:
    """The HTTP request path's stages of a snapshot."""
    edge = state.edge
    settings = state.config.gateway
    id_header = state.request_id_header
    dispatch = UpstreamDispatch(
        id_header,
        state.max_body_size,
        settings.body_timeout,
        settings.x_forwarded_port,
        settings.via,
    )
    return Stages(
        check_edge=edge.requests.check,
        normalise=edge.normaliser.normalise,
        identify=edge.identity.identify,
        match_route=RouteMatch(state.table, state.runtimes).match,
        forward=dispatch.forward,
        to_app=InProcessDispatch(apps, id_header, state.max_body_size).to_app,
        errors=ErrorMapping(id_header, access_log=bool(state.config.observability.access_log)),
        observers=state.observers,
        dispatch=dispatch,
    )


class RequestPath:
    """``handle`` is the whole path of a request through the gateway."""

    __slots__ = (
        "check_edge",
        "disconnected",
        "dispatch",
        "forward",
        "id_header",
        "identify",
        "lag",
        "match_route",
        "normalise",
        "observers",
        "refused",
        "replied",
        "stages",
        "state",
        "to_app",
    )

    def __init__(self, state: GatewayState, stages: Stages, lag: LoopLag | None = None) -> None:
        #: The snapshot this path serves; a reload builds a new path for the new one.
        self.state = state
        #: The worker's event loop watch (one per worker, across snapshots): while it says
        #: ``shedding``, a new request is refused before anything else is done for it.
        self.lag = lag if lag is not None else LoopLag(0.0)
        #: What the path is made of: a handshake's path is built from a request path's.
        self.stages = stages
        self.id_header = state.request_id_header
        self.check_edge = stages.check_edge
        self.normalise = stages.normalise
        self.identify = stages.identify
        self.match_route = stages.match_route
        self.forward = stages.forward
        self.dispatch = stages.dispatch
        self.to_app = stages.to_app
        errors = stages.errors
        self.refused = errors.refused
        self.replied = errors.replied
        self.disconnected = errors.disconnected
        self.observers = stages.observers

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        head = RequestHead(scope["headers"], self.id_header)  # the one pass over headers
        ctx = RequestContext(scope, head.request_id, head.host, perf_counter())
        try:
            if self.lag.shedding:  # 503 before the body is read (docs/overload.md)
                self.lag.refused += 1
                raise GATEWAY_OVERLOADED.shed()
            self.check_edge(scope, head)  # limits, method, framing, target, CTL, one Host
            self.normalise(ctx)  # the path matched is the path forwarded
            self.identify(ctx, head.traceparent, scope["scheme"])  # forwarded, traceparent
            runtime = self.match_route(ctx)  # 404 / 405
            for policy in runtime.policies:  # auth, rate limit, CORS, header rules
                await policy.on_request(ctx)
            if runtime.cache is not None and self.dispatch is not None:
                await runtime.cache.handle(self.dispatch, runtime, ctx, head, receive, send)
            elif runtime.upstream is not None:
                await self.forward(runtime, ctx, head, receive, send)
            else:
                await self.to_app(runtime, ctx, receive, send)
        except GatewayError as error:  # -> JSON error response and a log line
            await self.refused(ctx, error, send)
        except Reply as reply:  # a policy answered itself (a CORS preflight)
            await self.replied(ctx, reply, send)
        except ClientDisconnected:
            self.disconnected(ctx)
        finally:
            for observer in self.observers:  # access log, metrics, tracing
                observer.request_finished(ctx)
