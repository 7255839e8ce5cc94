"""The HTTP request path of one snapshot, stage by stage, in :meth:`RequestPath.handle`.

Each stage is an object built once per snapshot (the edge stages with the snapshot itself,
gateway/edge/stages.py; the rest here), and ``handle`` calls their bound methods, held in
slots, in order: no closure, list or task is made per request for the chain itself, and
the only per-request objects are the head record (the header scan's result, in place of
the locals it replaced) and the :class:`RequestContext` every stage shares.
"""

from __future__ import annotations

from time import perf_counter

from gateway.asgi_types import Receive, Scope, Send
from gateway.edge.context import RequestContext
from gateway.edge.errors import ClientDisconnected, GatewayError, Reply
from gateway.edge.head import RequestHead
from gateway.pipeline.error_mapping import ErrorMapping
from gateway.pipeline.inprocess_dispatch import InProcessApps, InProcessDispatch
from gateway.pipeline.route_match import RouteMatch
from gateway.pipeline.upstream_dispatch import UpstreamDispatch
from gateway.state import GatewayState


class RequestPath:
    """``handle`` is the whole path of an HTTP request through the gateway."""

    __slots__ = (
        "check_edge",
        "disconnected",
        "forward",
        "id_header",
        "identify",
        "match_route",
        "normalise",
        "observers",
        "refused",
        "replied",
        "state",
        "to_app",
    )

    def __init__(self, state: GatewayState, apps: InProcessApps) -> None:
        #: The snapshot this path serves; a reload builds a new path for the new one.
        self.state = state
        self.id_header = state.request_id_header
        self.observers = state.observers
        edge = state.edge
        self.check_edge = edge.requests.check
        self.normalise = edge.normaliser.normalise
        self.identify = edge.identity.identify
        self.match_route = RouteMatch(state.table, state.runtimes).match
        settings = state.config.gateway
        self.forward = UpstreamDispatch(
            state.request_id_header, state.max_body_size, settings.body_timeout
        ).forward
        self.to_app = InProcessDispatch(apps, state.request_id_header, state.max_body_size).to_app
        errors = ErrorMapping(
            state.request_id_header, access_log=bool(state.config.observability.access_log)
        )
        self.refused = errors.refused
        self.replied = errors.replied
        self.disconnected = errors.disconnected

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        head = RequestHead(scope["headers"], self.id_header)  # the one pass over headers
        ctx = RequestContext(scope, head.request_id, head.host, perf_counter())
        try:
            self.check_edge(scope, head)  # limits, method, framing, target, CTL, one Host
            self.normalise(ctx)  # the path matched is the path forwarded
            self.identify(ctx, head.traceparent, scope["scheme"])  # forwarded, traceparent
            runtime = self.match_route(ctx)  # 404 / 405
            for policy in runtime.policies:  # auth, rate limit, CORS, header rules
                await policy.on_request(ctx)
            if runtime.upstream is not None:
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
