"""The WebSocket dispatch: where a handshake's request path ends for a route served by a
network upstream (an in-process app takes the session itself: inprocess_dispatch.py).

The walk: read the client's ``websocket.connect``, open the upstream connection
(gateway/websocket/connect.py: a target of the upstream's balancer, the upstream
handshake), accept the client with the upstream's subprotocol and 101 headers, then relay
the session (gateway/websocket/relay.py) until a side closes. An upstream that refuses
the handshake with an HTTP response has it relayed to the client. While it runs the
session is one of the worker's open :class:`Sessions` (a drain closes it) and counts as
outstanding on its target.
"""

from __future__ import annotations

from time import perf_counter
from typing import Final

from gateway.asgi_types import Message, Receive, Send
from gateway.edge.context import RequestContext
from gateway.edge.errors import ClientDisconnected
from gateway.edge.forwarding import FORWARD_DROP, server_port, untrusted_headers
from gateway.edge.head import RequestHead
from gateway.edge.headers import connection_tokens
from gateway.pipeline.error_mapping import HandshakeErrorMapping
from gateway.state import RouteRuntime
from gateway.websocket.connect import Refused, accept_headers
from gateway.websocket.limits import ACCEPT_MAX_MESSAGE_SIZE
from gateway.websocket.relay import Session
from gateway.websocket.sessions import SESSION, HandshakeObservers, Sessions

#: Client handshake headers never sent upstream: the upstream handshake has its own, and
#: Origin and Sec-WebSocket-Protocol are passed to the library as what they are.
HANDSHAKE_DROP: Final = FORWARD_DROP | {
    b"sec-websocket-key",
    b"sec-websocket-version",
    b"sec-websocket-extensions",
    b"sec-websocket-protocol",
    b"origin",
}


#: Close codes of a session that ended as sessions do (RFC 6455 7.4.1: normal closure,
#: going away): no ``error`` in the access log for those.
_NORMAL = frozenset({1000, 1001})


class WebSocketDispatch:
    """The dispatch stage of handshakes to network upstreams, built once per snapshot."""

    __slots__ = ("_errors", "_forwarded_port", "_id_header", "_observers", "_sessions")

    def __init__(
        self,
        request_id_header: bytes,
        errors: HandshakeErrorMapping,
        sessions: Sessions,
        observers: HandshakeObservers,
        forwarded_port: bool = False,
    ) -> None:
        self._id_header = request_id_header
        #: ``[gateway] x_forwarded_port``, as for HTTP requests.
        self._forwarded_port = forwarded_port
        #: Relays an upstream's refusal as the handshake's other refusals are sent.
        self._errors = errors
        #: The worker's, across snapshots.
        self._sessions = sessions
        self._observers = observers

    async def forward(
        self,
        runtime: RouteRuntime,
        ctx: RequestContext,
        head: RequestHead,
        receive: Receive,
        send: Send,
    ) -> None:
        message = await receive()
        if message["type"] != "websocket.connect":
            raise ClientDisconnected
        session = await self._open(runtime, ctx, head, receive, send)
        if session is None:
            return
        sessions = self._sessions
        sessions.add(session)
        # The observers are told of the session's end, not of a request (HandshakeObservers).
        ctx.extra[SESSION] = session
        try:
            self._observers.session_opened(session)
            close = await session.run()
            if not (close.client_code in _NORMAL and close.upstream_code in _NORMAL):
                ctx.error = f"ws_close:{close.client_code}:{close.upstream_code}:{close.by}"
        finally:
            sessions.discard(session)
            if session.target is not None:
                session.target.outstanding -= 1
            ctx.bytes_in = session.bytes_in
            ctx.bytes_out = session.bytes_out

    async def _open(
        self,
        runtime: RouteRuntime,
        ctx: RequestContext,
        head: RequestHead,
        receive: Receive,
        send: Send,
    ) -> Session | None:
        """Connect the upstream, then accept the client; None when the upstream refused."""
        connector = runtime.connector
        settings = runtime.websocket
        assert connector is not None and settings is not None
        scope = ctx.scope
        request_id_header = self._id_header
        origin: bytes | None = None
        for name, value in scope["headers"]:  # a WebSocket's own header: not in the scan
            if name == b"origin":
                origin = value
        # Headers the client named in Connection are hop-by-hop too (RFC 9110 7.6.1).
        connection_header = head.connection
        drop = (
            HANDSHAKE_DROP | connection_tokens(connection_header)
            if connection_header
            else HANDSHAKE_DROP
        )
        headers = [(n, v) for n, v in scope["headers"] if n not in drop and n != request_id_header]
        headers.append((request_id_header, ctx.request_id))
        if ctx.forwarding:
            headers += ctx.forwarding
        else:
            port = server_port(scope) if self._forwarded_port else b""
            headers += untrusted_headers(ctx.client_ip, scope["scheme"], ctx.host, port)
        if ctx.traceparent is not None:
            headers.append((b"traceparent", ctx.traceparent))
        raw_path = scope["raw_path"]
        path = runtime.route.rewrite(raw_path) if runtime.rewrites else raw_path
        if scope["query_string"]:
            path = path + b"?" + scope["query_string"]
        ctx.upstream = connector.upstream.name
        ctx.upstream_start = perf_counter()
        try:
            opened = await connector.open(
                path,
                headers,
                settings,
                host=ctx.host if runtime.preserve_host else None,
                client=ctx.client_ip,
                subprotocols=scope.get("subprotocols") or (),
                origin=origin.decode("latin-1") if origin is not None else None,
            )
        finally:
            ctx.upstream_time = perf_counter() - ctx.upstream_start
        if isinstance(opened, Refused):
            ctx.status = opened.status
            ctx.error = "upstream_refused_websocket"
            await self._errors.respond(
                ctx,
                send,
                opened.status,
                [*opened.headers, *ctx.response_headers],
                opened.body,
                runtime,
            )
            return None
        connection, target = opened
        ctx.upstream_target = target.url
        reply = accept_headers(connection)
        reply.append((request_id_header, ctx.request_id))
        reply += ctx.response_headers
        for policy in runtime.policies:
            policy.on_response(ctx, reply)
        # The route's limit, for the server's inflation of compressed messages
        # (gateway/websocket/limits.py): it negotiated compression before the route
        # was known. Servers ignore keys they do not know.
        accept: Message = {
            "type": "websocket.accept",
            "headers": reply,
            ACCEPT_MAX_MESSAGE_SIZE: settings.max_message_size,
        }
        if connection.subprotocol is not None:
            accept["subprotocol"] = connection.subprotocol
        try:
            await send(accept)
        except BaseException:
            await connection.close(1001, "client went away")
            raise
        ctx.status = 101
        target.outstanding += 1  # released in forward's finally
        return Session(ctx, settings, connection, receive, send, target)
