"""The per-request context that policies and observers share.

One small slotted object per request; everything else the hot path needs lives in locals.
"""

from __future__ import annotations

from typing import Any, Protocol

from gateway.asgi_types import Scope
from routes.model import Route


class RequestContext:
    __slots__ = (
        "bytes_in",
        "bytes_out",
        "cache",
        "client_ip",
        "connect_time",
        "consumer",
        "error",
        "extra",
        "forwarding",
        "gateway_time",
        "grpc_status",
        "head_time",
        "host",
        "params",
        "request_id",
        "response_headers",
        "retries",
        "retry_time",
        "route",
        "scope",
        "start",
        "status",
        "traceparent",
        "upstream",
        "upstream_start",
        "upstream_target",
        "upstream_time",
    )

    def __init__(self, scope: Scope, request_id: bytes, host: bytes, start: float) -> None:
        self.scope = scope
        self.request_id = request_id
        self.host = host
        self.start = start
        client = scope.get("client")
        #: The client address; policies that trust forwarding headers may replace it.
        self.client_ip: str = client[0] if client else ""
        self.route: Route | None = None
        self.params: dict[str, str] = {}
        #: Authenticated consumer name, set by an auth policy.
        self.consumer: str | None = None
        #: Headers policies add to the response (CORS, rate-limit headers, ...).
        self.response_headers: list[tuple[bytes, bytes]] = []
        self.upstream: str = ""
        self.upstream_target: str = ""
        self.upstream_start = 0.0
        self.upstream_time = 0.0
        #: Up to the response head of a proxied request (gateway/pipeline/server_timing.py):
        #: the gateway's own share, the tries before the one that answered, and its connect.
        self.gateway_time = 0.0
        self.head_time = 0.0
        self.retry_time = 0.0
        self.connect_time = 0.0
        self.retries = 0
        self.status = 0
        #: A gRPC call's ``grpc-status`` as the client got it; None for other requests.
        self.grpc_status: int | None = None
        #: What ``[routes.cache]`` made of it: hit, miss, stale, coalesced, bypass; "": none.
        self.cache = ""
        self.bytes_in = 0
        self.bytes_out = 0
        #: The error code when the gateway answered itself ("route_not_found", ...).
        self.error: str = ""
        #: Free slot for policies to pass values along (claims, rate-limit state).
        self.extra: dict[str, Any] = {}
        #: Forwarding headers for the upstream when a trusted proxy sent the request.
        self.forwarding: tuple[tuple[bytes, bytes], ...] | None = None
        #: The ``traceparent`` sent upstream (this hop's span id), if any.
        self.traceparent: bytes | None = None


class Policy(Protocol):
    """One step of a route's pipeline (auth, rate limit, CORS, header rules).

    ``on_request`` runs before the upstream is called: it may edit the context, raise
    :class:`gateway.edge.errors.GatewayError` to refuse, or raise :class:`gateway.edge.errors.Reply`
    to answer itself. ``on_response`` may add or edit response headers, in place.
    """

    async def on_request(self, ctx: RequestContext) -> None: ...

    def on_response(self, ctx: RequestContext, headers: list[tuple[bytes, bytes]]) -> None: ...


class Observer(Protocol):
    """Told about every request once it is finished (access log, metrics)."""

    def request_finished(self, ctx: RequestContext) -> None: ...
