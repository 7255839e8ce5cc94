"""The identity stage: who the client is (trusted forwarding headers) and which trace the
request belongs to (``traceparent``), decided once, before routing, for HTTP requests and
WebSocket handshakes alike. The request id is settled earlier, by the header scan
(gateway/edge/head.py), so that the edge checks' refusals carry it too.

W3C Trace Context: the gateway is a hop. It keeps the trace id and flags, and sends its own
new span id as the parent id upstream. ``tracestate`` passes through unchanged when the
``traceparent`` was valid and is dropped otherwise (W3C: do not trust tracestate without a
valid parent). ``[gateway] traceparent``: ``"propagate"`` (default: rewrite a valid
incoming one, drop an invalid one, start none), ``"start"`` (also start a new trace when
none or an invalid one came), ``"off"`` (pass both headers through untouched).
"""

from __future__ import annotations

import os
import re
from typing import Final

from gateway.edge.context import RequestContext
from gateway.edge.forwarding import resolve, server_port
from gateway.edge.headers import TrustedProxies


class Identity:
    """Built once per snapshot from ``trusted_proxies`` and ``traceparent``."""

    __slots__ = ("_forwarded_port", "_start_traces", "_trace_mode", "_trusted")

    def __init__(
        self, trusted: TrustedProxies, trace_mode: str, forwarded_port: bool = False
    ) -> None:
        #: ``[gateway] x_forwarded_port``: send the port the client connected to.
        self._forwarded_port = forwarded_port
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
            port = server_port(scope) if self._forwarded_port else b""
            found = resolve(scope["headers"], ctx.client_ip, scheme, ctx.host, trusted, port)
            ctx.client_ip = found.client_ip
            ctx.forwarding = found.headers
        if traceparent is not None or self._start_traces:
            ctx.traceparent, keep_state = next_hop(traceparent, self._trace_mode)
            if not keep_state:
                scope = ctx.scope
                scope["headers"] = [h for h in scope["headers"] if h[0] != b"tracestate"]


# ---- W3C Trace Context: traceparent / tracestate -------------------------------------------

TRACE_MODES: Final = ("propagate", "start", "off")

_PARENT = re.compile(rb"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-.*)?")
_ZERO_TRACE: Final = b"0" * 32
_ZERO_SPAN: Final = b"0" * 16


def next_hop(incoming: bytes | None, mode: str) -> tuple[bytes | None, bool]:
    """The ``traceparent`` to send upstream (None: none), and whether tracestate may pass."""
    if mode == "off":
        return incoming, True
    if incoming is not None:
        found = _PARENT.fullmatch(incoming.strip())
        if found is not None:
            version, trace_id, parent, flags, rest = found.groups()
            valid = (
                version != b"ff"
                and trace_id != _ZERO_TRACE
                and parent != _ZERO_SPAN
                and (version != b"00" or rest is None)
            )
            if valid:
                return b"00-" + trace_id + b"-" + new_span_id() + b"-" + flags, True
    if mode == "start":
        fresh = b"00-" + os.urandom(16).hex().encode("ascii") + b"-" + new_span_id() + b"-01"
        return fresh, False
    return None, incoming is None


def new_span_id() -> bytes:
    return os.urandom(8).hex().encode("ascii")
