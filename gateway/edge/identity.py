"""The identity stage: who the client is (trusted forwarding headers) and which trace the
request belongs to (``traceparent``), decided once, before routing, for HTTP requests and
WebSocket handshakes alike. The request id is settled earlier, by the header scan
(gateway/edge/head.py), so that the edge checks' refusals carry it too."""

from __future__ import annotations

from gateway.edge.context import RequestContext
from gateway.edge.forwarding import resolve
from gateway.edge.headers import TrustedProxies
from gateway.edge.traceparent import next_hop


class Identity:
    """Built once per snapshot from ``trusted_proxies`` and ``traceparent``."""

    __slots__ = ("_start_traces", "_trace_mode", "_trusted")

    def __init__(self, trusted: TrustedProxies, trace_mode: str) -> None:
        #: None when no proxy is trusted: the common request skips the lookup entirely.
        self._trusted = trusted if trusted else None
        self._trace_mode = trace_mode
        self._start_traces = trace_mode == "start"

    def identify(self, ctx: RequestContext, traceparent: bytes | None, scheme: str) -> None:
        """Set ``ctx.client_ip``, ``ctx.forwarding`` and ``ctx.traceparent``; a tracestate
        that must not pass (W3C) leaves the scope's headers."""
        trusted = self._trusted
        if trusted is not None and trusted.trusts(ctx.client_ip):
            scope = ctx.scope
            found = resolve(scope["headers"], ctx.client_ip, scheme, ctx.host, trusted)
            ctx.client_ip = found.client_ip
            ctx.forwarding = found.headers
        if traceparent is not None or self._start_traces:
            ctx.traceparent, keep_state = next_hop(traceparent, self._trace_mode)
            if not keep_state:
                scope = ctx.scope
                scope["headers"] = [h for h in scope["headers"] if h[0] != b"tracestate"]
