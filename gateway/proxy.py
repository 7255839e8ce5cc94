"""The hot path: an ASGI layer in front of Quart that forwards matched routes to upstreams.

Why a raw ASGI layer: a Quart handler costs a Request object, a context and a Response
object per request; measured on one core that halves throughput (docs/baselines.md). Requests
for in-process blueprint upstreams, and the lifespan, still go to Quart untouched.

What a request goes through is :meth:`gateway.pipeline.request_path.RequestPath.handle`,
stage by stage; this layer only picks it by scope type and swaps it with the snapshot.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable

from gateway.asgi_types import ASGIApp, Receive, Scope, Send
from gateway.inprocess import InProcessApp, Lifespans
from gateway.pipeline.inprocess_dispatch import InProcessApps
from gateway.pipeline.request_path import RequestPath
from gateway.state import GatewayState
from gateway.websocket.handshake import WebSocketProxy


class Proxy:
    """``app.asgi_app = Proxy(app.asgi_app, state)``: the documented Quart middleware idiom."""

    def __init__(self, app: ASGIApp, state: GatewayState) -> None:
        self.app = app
        self._inprocess = InProcessApps(app)
        self._path = RequestPath(state, self._inprocess)

    @property
    def state(self) -> GatewayState:
        """The current snapshot; a reload assigns a new one."""
        return self._path.state

    @state.setter
    def state(self, state: GatewayState) -> None:
        # The stages are built here, once per snapshot; requests already on the old path
        # finish on it (each request reads ``_path`` once).
        self._path = RequestPath(state, self._inprocess)

    def __call__(self, scope: Scope, receive: Receive, send: Send) -> Awaitable[None]:
        # Not ``async``: the request's own coroutine is returned, so no frame is added
        # per request on top of the request path's.
        if scope["type"] == "http":
            return self._path.handle(scope, receive, send)
        if scope["type"] == "websocket":
            return self._websocket(scope, receive, send)
        return self.app(scope, receive, send)

    @functools.cached_property
    def websockets(self) -> WebSocketProxy:
        """WebSocket handshakes and the worker's open sessions, across snapshots (a reload
        leaves open sessions on theirs; a drain closes them all: ``going_away``)."""
        return WebSocketProxy()

    @property
    def apps(self) -> dict[str, InProcessApp]:
        """In-process apps by upstream name (gateway/inprocess.py), filled by create_app."""
        return self._inprocess.by_name

    @property
    def lifespans(self) -> Lifespans:
        """The ASGI lifespans of in-process ASGI apps (their state goes into each scope)."""
        return self._inprocess.lifespans

    def _websocket(self, scope: Scope, receive: Receive, send: Send) -> Awaitable[None]:
        """A WebSocket handshake: gateway/websocket/ (a route without ``websocket = true``
        answers a JSON 501, an unknown path 404, never a 101)."""
        path = self._path
        return self.websockets(path.state, scope, receive, send, path.to_app)
