"""The hot path: an ASGI layer in front of Quart that forwards matched routes to upstreams.

Why a raw ASGI layer: a Quart handler costs a Request object, a context and a Response
object per request; measured on one core that halves throughput (docs/baselines.md). Requests
for in-process blueprint upstreams, and the lifespan, still go to Quart untouched.

What a request goes through is :meth:`gateway.pipeline.request_path.RequestPath.handle`,
stage by stage; a WebSocket handshake goes through it too, on the snapshot's second path
(the same stages but for those gateway/websocket/handshake.py replaces). This layer only
picks the path by scope type and swaps both with the snapshot.
"""

from __future__ import annotations

from collections.abc import Awaitable

from gateway.asgi_types import ASGIApp, Receive, Scope, Send
from gateway.inprocess import InProcessApp, Lifespans
from gateway.pipeline.inprocess_dispatch import InProcessApps
from gateway.pipeline.request_path import RequestPath, request_stages
from gateway.state import GatewayState
from gateway.websocket.handshake import as_request, handshake_stages
from gateway.websocket.sessions import Sessions


class Proxy:
    """``app.asgi_app = Proxy(app.asgi_app, state)``: the documented Quart middleware idiom."""

    def __init__(self, app: ASGIApp, state: GatewayState) -> None:
        self.app = app
        self._inprocess = InProcessApps(app)
        #: The worker's open WebSocket sessions, across snapshots (a reload leaves open
        #: sessions on theirs; a drain closes them all: ``going_away``).
        self.sessions = Sessions()
        #: The worker's event loop watch (``[gateway] max_loop_lag``): each snapshot is
        #: built with this one (gateway/ops/reload.py).
        self.loop_lag = state.loop_lag
        self._path, self._handshakes = self._paths(state)

    @property
    def state(self) -> GatewayState:
        """The current snapshot; a reload assigns a new one."""
        return self._path.state

    @state.setter
    def state(self, state: GatewayState) -> None:
        # The stages are built here, once per snapshot; requests already on the old paths
        # finish on them (each request reads its path once).
        self._path, self._handshakes = self._paths(state)

    def _paths(self, state: GatewayState) -> tuple[RequestPath, RequestPath]:
        """The snapshot's request path, and its handshakes' path made of the same stages."""
        stages = request_stages(state, self._inprocess)
        handshakes = handshake_stages(state, stages, self.sessions)
        lag = self.loop_lag
        return RequestPath(state, stages, lag), RequestPath(state, handshakes, lag)

    def __call__(self, scope: Scope, receive: Receive, send: Send) -> Awaitable[None]:
        # Not ``async``: the request's own coroutine is returned, so no frame is added
        # per request on top of the request path's.
        if scope["type"] == "http":
            return self._path.handle(scope, receive, send)
        if scope["type"] == "websocket":  # the same walk, ending in the WebSocket dispatch
            return self._handshakes.handle(as_request(scope), receive, send)
        return self.app(scope, receive, send)

    @property
    def apps(self) -> dict[str, InProcessApp]:
        """In-process apps by upstream name (gateway/inprocess.py), filled by create_app."""
        return self._inprocess.by_name

    @property
    def lifespans(self) -> Lifespans:
        """The ASGI lifespans of in-process ASGI apps (their state goes into each scope)."""
        return self._inprocess.lifespans
