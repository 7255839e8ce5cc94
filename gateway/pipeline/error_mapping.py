"""The error-mapping stage: how a request the gateway answers itself ends.

A :class:`GatewayError` becomes the JSON error response and one log line (a warning for
5xx; a client's 4xx is the access log's business, so the error log gets it at debug when
an access log carries it, at info otherwise); a policy's :class:`Reply` is sent as it is;
a :class:`ClientDisconnected` is logged (nobody is left to answer) and counted as 499.
"""

from __future__ import annotations

import logging

from gateway.asgi_types import Send
from gateway.edge.context import RequestContext
from gateway.edge.errors import GatewayError, Reply, send_error

log = logging.getLogger("quartgate")


class ErrorMapping:
    """Built once per snapshot (the request id header, whether an access log runs)."""

    __slots__ = ("_client_error_level", "_id_header")

    def __init__(self, request_id_header: bytes, *, access_log: bool) -> None:
        self._id_header = request_id_header
        self._client_error_level = logging.DEBUG if access_log else logging.INFO

    async def refused(self, ctx: RequestContext, error: GatewayError, send: Send) -> None:
        scope = ctx.scope
        ctx.status = error.status
        ctx.error = error.code
        rid = ctx.request_id.decode("ascii")
        if error.status >= 500:
            log.warning(
                "%s %s -> %d %s: %s",
                scope["method"],
                scope["path"],
                error.status,
                error.code,
                error.log_detail,
                extra={"request_id": rid},
            )
        else:
            log.log(
                self._client_error_level,
                "%s %s -> %d %s",
                scope["method"],
                scope["path"],
                error.status,
                error.code,
                extra={"request_id": rid},
            )
        if ctx.response_headers:
            error.headers.extend(ctx.response_headers)
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
            "%s %s: client disconnected",
            scope["method"],
            scope["path"],
            extra={"request_id": ctx.request_id.decode("ascii")},
        )
