"""WebSocket session metrics (docs/websocket.md): registered on the app's metrics
registry by :class:`gateway.observability.metrics.GatewayMetrics`, fed by its observer.

Per session: the open gauge moves at open and at end; messages, bytes, the duration and
the close are counted once, when the session ends (a message relayed costs nothing here).
Close codes from 3000 up are application-chosen: they are counted as ``3xxx``/``4xxx`` so
a client cannot mint a label value per code.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

if TYPE_CHECKING:
    from gateway.websocket.relay import Session

#: Session lengths run from a second to hours: their own buckets, not the request ones.
DURATION_BUCKETS = (0.1, 1.0, 10.0, 60.0, 300.0, 900.0, 1800.0, 3600.0, 4 * 3600.0)


class SessionMetrics:
    def __init__(self, registry: CollectorRegistry | None) -> None:
        self.open = Gauge(
            "quartgate_websocket_sessions_open",
            "WebSocket sessions open now.",
            ["route"],
            registry=registry,
            multiprocess_mode="livesum",
        )
        self.duration = Histogram(
            "quartgate_websocket_session_duration_seconds",
            "WebSocket sessions, from the client's accept to the end of both sides.",
            ["route"],
            buckets=DURATION_BUCKETS,
            registry=registry,
        )
        self.messages = Counter(
            "quartgate_websocket_messages",
            "WebSocket messages relayed: in = client to upstream, out = upstream to client.",
            ["route", "direction"],
            registry=registry,
        )
        self.bytes = Counter(
            "quartgate_websocket_message_bytes",
            "WebSocket message payload bytes relayed, by direction (in, out).",
            ["route", "direction"],
            registry=registry,
        )
        self.closes = Counter(
            "quartgate_websocket_closes",
            "WebSocket sessions ended: who closed first (client, upstream, gateway) and the "
            "close code the client was sent or sent.",
            ["route", "by", "code"],
            registry=registry,
        )

    def opened(self, session: Session) -> None:
        self.open.labels(_route(session)).inc()

    def finished(self, session: Session) -> None:
        route = _route(session)
        self.open.labels(route).dec()
        self.duration.labels(route).observe(session.elapsed())
        _count(self.messages, route, session.messages_in, session.messages_out)
        _count(self.bytes, route, session.bytes_in, session.bytes_out)
        close = session.close
        if close is not None:
            self.closes.labels(route, close.by, code_label(close.client_code)).inc()


def code_label(code: int) -> str:
    return str(code) if code < 3000 else f"{code // 1000}xxx"


def _route(session: Session) -> str:
    route = session.ctx.route
    return route.name if route is not None else ""


def _count(counter: Any, route: str, inbound: int, outbound: int) -> None:
    if inbound:
        counter.labels(route, "in").inc(inbound)
    if outbound:
        counter.labels(route, "out").inc(outbound)
