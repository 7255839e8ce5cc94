"""The error-mapping stage: how a request the gateway answers itself ends, for HTTP requests
and WebSocket handshakes alike.

A :class:`GatewayError` becomes the JSON error response (for a gRPC call: HTTP 200 with
``grpc-status`` and ``grpc-message``, gateway/pipeline/grpc.py) and one log line (a warning for
5xx; a client's 4xx is the access log's business, so the error log gets it at debug when
an access log carries it, at info otherwise); a policy's :class:`Reply` is sent as it is;
a :class:`ClientDisconnected` is logged (nobody is left to answer) and counted as 499.

What differs for a handshake is only how the response goes out
(:class:`HandshakeErrorMapping`): with the ``websocket.http.response`` extension, never a
101, and a ``websocket.close`` (the server answers 403) when the server lacks it.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from gateway.asgi_types import Send
from gateway.edge.context import RequestContext
from gateway.edge.errors import GatewayError, Reply, error_body, send_error
from gateway.pipeline import grpc

if TYPE_CHECKING:
    from gateway.state import RouteRuntime

log = logging.getLogger("quartgate")


class ErrorMapping:
    """Built once per snapshot (the request id header, whether an access log runs)."""

    __slots__ = ("_client_error_level", "_id_header")

    #: Before the method in log lines: what was refused.
    kind = ""

    def __init__(self, request_id_header: bytes, *, access_log: bool) -> None:
        self._id_header = request_id_header
        self._client_error_level = logging.DEBUG if access_log else logging.INFO

    def for_handshakes(self) -> HandshakeErrorMapping:
        """The same mapping, for WebSocket handshakes."""
        access_log = self._client_error_level == logging.DEBUG
        return HandshakeErrorMapping(self._id_header, access_log=access_log)

    def logged(self, ctx: RequestContext, error: GatewayError) -> str:
        """Record ``error`` in the context and the log; the request id, for the body."""
        scope = ctx.scope
        ctx.status = error.status
        ctx.error = error.code
        rid = ctx.request_id.decode("ascii")
        if error.status >= 500 and not error.quiet:
            log.warning(
                "%s%s %s -> %d %s: %s",
                self.kind,
                scope["method"],
                scope["path"],
                error.status,
                error.code,
                error.log_detail,
                extra={"request_id": rid},
            )
        else:
            log.log(
                logging.DEBUG if error.quiet else self._client_error_level,
                "%s%s %s -> %d %s",
                self.kind,
                scope["method"],
                scope["path"],
                error.status,
                error.code,
                extra={"request_id": rid},
            )
        return rid

    async def refused(self, ctx: RequestContext, error: GatewayError, send: Send) -> None:
        rid = self.logged(ctx, error)
        if ctx.response_headers:
            error.headers.extend(ctx.response_headers)
        if grpc.is_grpc_request(ctx.scope):  # its client reads grpc-status, not a JSON body
            code = ctx.grpc_status = grpc.status_of(error.status)
            ctx.status = 200
            headers = [(self._id_header, ctx.request_id), *error.headers]
            text = f"{error.code}: {error.detail}"
            await grpc.send_status(send, ctx.scope, code, text, headers)
            return
        await send_error(send, error, rid, self._id_header)

    async def replied(self, ctx: RequestContext, reply: Reply, send: Send) -> None:
        ctx.status = reply.status
        headers = [
            (b"content-length", b"%d" % len(reply.body)),
            (self._id_header, ctx.request_id),
            *reply.headers,
            *ctx.response_headers,
        ]
        await send({"type": "http.response.start", "status": reply.status, "headers": headers})
        await send({"type": "http.response.body", "body": reply.body})

    def disconnected(self, ctx: RequestContext) -> None:
        ctx.error = "client_disconnected"
        ctx.status = ctx.status or 499  # nginx's code for "client closed request"
        scope = ctx.scope
        log.info(
            "%s%s %s: client disconnected",
            self.kind,
            scope["method"],
            scope["path"],
            extra={"request_id": ctx.request_id.decode("ascii")},
        )


class HandshakeErrorMapping(ErrorMapping):
    """The same mapping for a WebSocket handshake; its answers are HTTP responses to the
    handshake (``websocket.http.response``), never a 101."""

    __slots__ = ()

    kind = "websocket "

    async def refused(self, ctx: RequestContext, error: GatewayError, send: Send) -> None:
        rid = self.logged(ctx, error)
        body = error_body(error.code, error.detail, rid)
        headers = [(b"content-type", b"application/json"), *error.headers, *ctx.response_headers]
        await self.respond(ctx, send, error.status, headers, body)

    async def replied(self, ctx: RequestContext, reply: Reply, send: Send) -> None:
        ctx.status = reply.status
        headers = [*reply.headers, *ctx.response_headers]
        await self.respond(ctx, send, reply.status, headers, reply.body)

    async def respond(
        self,
        ctx: RequestContext,
        send: Send,
        status: int,
        headers: list[tuple[bytes, bytes]],
        body: bytes,
        runtime: RouteRuntime | None = None,
    ) -> None:
        """An HTTP response to the handshake; ``runtime``'s policies see its headers (an
        upstream's refusal, relayed)."""
        id_header = self._id_header
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
