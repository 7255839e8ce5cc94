"""A client's WebSocket handshake, from the first ASGI message to an open session.

The same edge stages as an HTTP request (gateway/pipeline/), built with the snapshot: the
header scan, the edge checks (header limits, target, control characters, one Host; in the
handshake's wording), path normalisation, identity (trusted forwarding, traceparent); then
the handshake's own rules: no body, the route match (as a GET), the route's policies.
Refusals are HTTP responses with the gateway's JSON body and the policy's status, sent with
the ``websocket.http.response`` extension (both engines have it), never a 101. Only then
is the upstream connected; the client is accepted with the upstream's subprotocol and
headers once the upstream has accepted.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from time import perf_counter
from typing import TYPE_CHECKING, Final

from gateway.asgi_types import Message, Receive, Scope, Send
from gateway.edge.context import RequestContext
from gateway.edge.errors import GatewayError, Reply, error_body
from gateway.edge.forwarding import FORWARD_DROP, untrusted_headers
from gateway.edge.head import RequestHead
from gateway.edge.headers import connection_tokens, match_host
from gateway.policies.cors import CorsPolicy
from gateway.websocket.client_limits import ACCEPT_MAX_MESSAGE_SIZE
from gateway.websocket.connect import Refused, accept_headers
from gateway.websocket.relay import Session
from gateway.websocket.sessions import SessionObserver, Sessions
from routes.matching import MatchKind

if TYPE_CHECKING:
    from gateway.state import GatewayState, RouteRuntime

#: ``InProcessDispatch.to_app`` (gateway/pipeline/inprocess_dispatch.py): hands a request
#: or a session to an in-process app.
ToApp = Callable[["RouteRuntime", RequestContext, Receive, Send], Awaitable[None]]

log = logging.getLogger("quartgate")

#: Client handshake headers never sent upstream: the upstream handshake has its own, and
#: Origin and Sec-WebSocket-Protocol are passed to the library as what they are.
HANDSHAKE_DROP: Final = FORWARD_DROP | {
    b"sec-websocket-key",
    b"sec-websocket-version",
    b"sec-websocket-extensions",
    b"sec-websocket-protocol",
    b"origin",
}


class WebSocketProxy:
    """Handshakes of every snapshot, and the worker's open :class:`Sessions`."""

    def __init__(self) -> None:
        self.sessions = Sessions()

    async def __call__(
        self,
        state: GatewayState,
        scope: Scope,
        receive: Receive,
        send: Send,
        to_app: ToApp | None = None,
    ) -> None:
        message = await receive()
        if message["type"] != "websocket.connect":
            return
        request_id_header = state.request_id_header
        head = RequestHead(scope["headers"], request_id_header)
        request_id = head.request_id
        connection = head.connection
        # Policies and observers read an HTTP-like scope: the handshake is a GET.
        view = dict(scope)
        view["method"] = "GET"
        ctx = RequestContext(view, request_id, head.host, perf_counter())
        session: Session | None = None
        origin: bytes | None = None
        try:
            edge = state.edge
            edge.handshakes.check(view, head)
            if head.content_length is not None or head.transfer_encoding is not None:
                # RFC 6455 4.1: the handshake is a GET; bytes after it before the 101 would
                # be read as frames by one hop and as a body by another.
                raise GatewayError(400, "bad_request", "a WebSocket handshake carries no body")
            edge.normaliser.normalise(ctx)
            scheme = "https" if view.get("scheme") == "wss" else "http"
            edge.identity.identify(ctx, head.traceparent, scheme)
            match = state.table.match(match_host(ctx.host), view["path"], "GET")
            if match.kind is not MatchKind.FULL or match.route is None:
                if match.kind is MatchKind.PARTIAL:
                    raise GatewayError(405, "method_not_allowed", "GET is not allowed here")
                raise GatewayError(404, "route_not_found", f"no route for {view['path']}")
            route = match.route
            ctx.route = route
            ctx.params = match.params or {}
            runtime = state.runtimes[route.name]
            if runtime.websocket is None:
                raise GatewayError(
                    501,
                    "websocket_not_supported",
                    f"route {route.name!r} does not proxy WebSocket connections",
                )
            for name, value in view["headers"]:  # a WebSocket's own header: not in the scan
                if name == b"origin":
                    origin = value
            for policy in runtime.policies:
                await policy.on_request(ctx)
                # Browsers apply no CORS to WebSockets: the origin check is the gateway's.
                if (
                    isinstance(policy, CorsPolicy)
                    and origin is not None
                    and not policy.allowed(origin)
                ):
                    raise GatewayError(403, "origin_not_allowed", "origin not allowed")
            if runtime.connector is None:  # an in-process app takes the session itself
                assert to_app is not None
                await to_app(runtime, ctx, _replay(message, receive), send)
                return
            session = await self._open(state, runtime, ctx, send, receive, origin, connection)
            if session is None:
                return
            self.sessions.add(session)
            for observer in state.observers:
                if isinstance(observer, SessionObserver):
                    observer.session_opened(session)
            close = await session.run()
            ctx.error = f"ws_close:{close.client_code}:{close.upstream_code}:{close.by}"
        except GatewayError as error:
            ctx.status = error.status
            ctx.error = error.code
            # The upstream's failures are the operator's business; a route without
            # WebSockets (501) and the client's mistakes (4xx) are the access log's.
            level = logging.WARNING if error.status >= 502 else logging.INFO
            log.log(
                level,
                "websocket %s -> %d %s: %s",
                view["path"],
                error.status,
                error.code,
                error.log_detail,
                extra={"request_id": request_id.decode("ascii")},
            )
            body = error_body(error.code, error.detail, request_id.decode("ascii"))
            await _refuse(
                send,
                error.status,
                [(b"content-type", b"application/json"), *error.headers, *ctx.response_headers],
                body,
                ctx,
                request_id_header,
            )
        except Reply as reply:
            ctx.status = reply.status
            await _refuse(
                send,
                reply.status,
                [*reply.headers, *ctx.response_headers],
                reply.body,
                ctx,
                request_id_header,
            )
        finally:
            if session is not None:
                self.sessions.discard(session)
                if session.target is not None:
                    session.target.outstanding -= 1
                ctx.bytes_in = session.bytes_in
                ctx.bytes_out = session.bytes_out
            for observer in state.observers:
                if session is not None and isinstance(observer, SessionObserver):
                    observer.session_finished(session)
                else:
                    observer.request_finished(ctx)

    async def _open(
        self,
        state: GatewayState,
        runtime: RouteRuntime,
        ctx: RequestContext,
        send: Send,
        receive: Receive,
        origin: bytes | None,
        connection_header: bytes | None = None,
    ) -> Session | None:
        """Connect the upstream, then accept the client; None when the upstream refused."""
        connector = runtime.connector
        settings = runtime.websocket
        assert connector is not None and settings is not None
        view = ctx.scope
        request_id_header = state.request_id_header
        # Headers the client named in Connection are hop-by-hop too (RFC 9110 7.6.1).
        drop = (
            HANDSHAKE_DROP | connection_tokens(connection_header)
            if connection_header
            else HANDSHAKE_DROP
        )
        headers = [(n, v) for n, v in view["headers"] if n not in drop and n != request_id_header]
        headers.append((request_id_header, ctx.request_id))
        headers += ctx.forwarding or untrusted_headers(
            ctx.client_ip, "https" if view.get("scheme") == "wss" else "http", ctx.host
        )
        if ctx.traceparent is not None:
            headers.append((b"traceparent", ctx.traceparent))
        raw_path = view["raw_path"]
        path = runtime.route.rewrite(raw_path) if runtime.strip_prefix else raw_path
        if view["query_string"]:
            path = path + b"?" + view["query_string"]
        ctx.upstream = connector.upstream.name
        ctx.upstream_start = perf_counter()
        try:
            opened = await connector.open(
                path,
                headers,
                settings,
                host=ctx.host if runtime.preserve_host else None,
                client=ctx.client_ip,
                subprotocols=view.get("subprotocols") or (),
                origin=origin.decode("latin-1") if origin is not None else None,
            )
        finally:
            ctx.upstream_time = perf_counter() - ctx.upstream_start
        if isinstance(opened, Refused):
            ctx.status = opened.status
            ctx.error = "upstream_refused_websocket"
            await _refuse(
                send,
                opened.status,
                [*opened.headers, *ctx.response_headers],
                opened.body,
                ctx,
                request_id_header,
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
        # (gateway/websocket/client_limits.py): it negotiated compression before the route
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
        target.outstanding += 1  # released in __call__'s finally
        return Session(ctx, settings, connection, receive, send, target)


async def _refuse(
    send: Send,
    status: int,
    headers: list[tuple[bytes, bytes]],
    body: bytes,
    ctx: RequestContext,
    id_header: bytes,
    runtime: RouteRuntime | None = None,
) -> None:
    """An HTTP response to the handshake (``websocket.http.response``), never a 101."""
    headers = [(n, v) for n, v in headers if n != b"content-length" and n != id_header]
    headers += [(b"content-length", b"%d" % len(body)), (id_header, ctx.request_id)]
    if runtime is not None:
        for policy in runtime.policies:
            policy.on_response(ctx, headers)
    ctx.bytes_out = len(body)
    if "websocket.http.response" not in ctx.scope.get("extensions", {}):
        await send({"type": "websocket.close", "code": 1008})  # the server answers 403
        return
    await send({"type": "websocket.http.response.start", "status": status, "headers": headers})
    await send({"type": "websocket.http.response.body", "body": body})


def _replay(first: Message, receive: Receive) -> Receive:
    """``receive`` that gives ``first`` (the connect already read) once, then the rest."""
    pending: list[Message] = [first]

    async def replay() -> Message:
        if pending:
            return pending.pop()
        return await receive()

    return replay
