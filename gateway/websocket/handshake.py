"""A client's WebSocket handshake: a request whose path ends in a different dispatch.

A handshake walks the snapshot's request path (``RequestPath.handle``,
gateway/pipeline/request_path.py) over the same stage objects as an HTTP request: the
header scan, normalisation, identity, the route match, the route's policies, the
in-process dispatch and the error mapping's rules. It is the request it is on the wire
(RFC 6455 4.1): a GET, over http or https (:func:`as_request`). What is really different
replaces its stage by name in :func:`handshake_stages`:

- **edge checks**: the handshake's wording (``EdgeChecks.for_handshakes``), and no body
  (:class:`HandshakeChecks`);
- **route match**: the request's own, so a path without GET is 405 with ``Allow``; then
  the route must take WebSockets (JSON 501 ``websocket_not_supported``), and its policies
  run with the origin check after CORS (:class:`HandshakeRoutes`, :class:`OriginCheck`);
- **dispatch**: the WebSocket dispatch for a network upstream (the upstream connection,
  then the relayed session: gateway/pipeline/websocket_dispatch.py); an in-process app
  takes the session itself, through the same in-process dispatch as its requests;
- **error mapping**: the same rules and log levels, the answers sent with the
  ``websocket.http.response`` extension, never a 101 (``HandshakeErrorMapping``);
- **observers**: a relayed session is told as a session, when it ends
  (``HandshakeObservers``, gateway/websocket/sessions.py).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

from gateway.asgi_types import Scope
from gateway.edge.checks import EdgeChecks
from gateway.edge.context import Policy, RequestContext
from gateway.edge.errors import GatewayError
from gateway.edge.head import RequestHead
from gateway.pipeline.request_path import Stages
from gateway.pipeline.websocket_dispatch import WebSocketDispatch
from gateway.policies.cors import CorsPolicy
from gateway.state import GatewayState, RouteRuntime
from gateway.websocket.sessions import HandshakeObservers, Sessions


def handshake_stages(state: GatewayState, request: Stages, sessions: Sessions) -> Stages:
    """The stages of the snapshot's handshakes: its ``request`` stages, five replaced."""
    errors = request.errors.for_handshakes()
    observers = HandshakeObservers(request.observers)
    return replace(
        request,
        check_edge=HandshakeChecks(state.edge.handshakes).check,
        match_route=HandshakeRoutes(request.match_route, state.runtimes).match,
        forward=WebSocketDispatch(
            state.request_id_header,
            errors,
            sessions,
            observers,
            state.config.gateway.x_forwarded_port,
        ).forward,
        errors=errors,
        observers=(observers,),
    )


def as_request(scope: Scope) -> Scope:
    """The handshake as the request the stages read: a GET, ``ws`` as ``http`` and ``wss``
    as ``https`` (the in-process dispatch gives an app its WebSocket scope back)."""
    request = dict(scope)
    request["method"] = "GET"
    request["scheme"] = "https" if scope.get("scheme") == "wss" else "http"
    return request


class HandshakeChecks:
    """The edge checks of a handshake, in its wording; then no body at all."""

    __slots__ = ("_edge",)

    def __init__(self, edge: EdgeChecks) -> None:
        self._edge = edge

    def check(self, scope: Scope, head: RequestHead) -> None:
        self._edge.check(scope, head)
        if head.content_length is not None or head.transfer_encoding is not None:
            # RFC 6455 4.1: the handshake is a GET; bytes after it before the 101 would be
            # read as frames by one hop and as a body by another.
            raise GatewayError(400, "bad_request", "a WebSocket handshake carries no body")


class OriginCheck:
    """After a route's CORS policy, in a handshake: browsers apply no CORS to WebSockets
    (any page may open one to any host), so the gateway refuses a foreign ``Origin``."""

    __slots__ = ("_cors",)

    def __init__(self, cors: CorsPolicy) -> None:
        self._cors = cors

    async def on_request(self, ctx: RequestContext) -> None:
        origin: bytes | None = None
        for name, value in ctx.scope["headers"]:
            if name == b"origin":
                origin = value
        if origin is not None and not self._cors.allowed(origin):
            raise GatewayError(403, "origin_not_allowed", "origin not allowed")

    def on_response(self, ctx: RequestContext, headers: list[tuple[bytes, bytes]]) -> None:
        """Nothing: the CORS policy before it sets the response's headers."""


class HandshakeRoutes:
    """The route match of a handshake: the request path's own (404, 405 with ``Allow``),
    then only a route with ``websocket = true``, whose policies are run with the origin
    check. Built once per snapshot."""

    __slots__ = ("_match", "_runtimes")

    def __init__(
        self, match: Callable[[RequestContext], RouteRuntime], runtimes: dict[str, RouteRuntime]
    ) -> None:
        self._match = match
        self._runtimes = {
            name: _with_origin_check(runtime)
            for name, runtime in runtimes.items()
            if runtime.websocket is not None
        }

    def match(self, ctx: RequestContext) -> RouteRuntime:
        route = self._match(ctx).route
        runtime = self._runtimes.get(route.name)
        if runtime is None:
            raise GatewayError(
                501,
                "websocket_not_supported",
                f"route {route.name!r} does not proxy WebSocket connections",
            )
        return runtime


def _with_origin_check(runtime: RouteRuntime) -> RouteRuntime:
    """``runtime`` with an :class:`OriginCheck` after each CORS policy, if it has one."""
    policies: list[Policy] = []
    for policy in runtime.policies:
        policies.append(policy)
        if isinstance(policy, CorsPolicy):
            policies.append(OriginCheck(policy))
    if len(policies) == len(runtime.policies):
        return runtime
    return replace(runtime, policies=tuple(policies))
