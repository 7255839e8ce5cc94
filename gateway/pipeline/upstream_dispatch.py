"""Dispatch to a network upstream: the upstream request (headers, target, body), the
exchange with the upstream's pool, and the response streamed back to the client.

The walk: build the upstream header list in one comprehension, read a small body whole
(replayable) or stream a large one, ``await upstream.send()``, then pass the response on
piece by piece. A client that leaves meanwhile is noticed by a :class:`DisconnectWatch`
started by a timer, so the common fast request pays a timer, not a task.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from time import perf_counter

from gateway.asgi_types import Receive, Send
from gateway.edge.checks import check_upgrade
from gateway.edge.context import RequestContext
from gateway.edge.errors import ClientDisconnected, GatewayError, from_upstream
from gateway.edge.forwarding import FORWARD_DROP, server_port, untrusted_headers
from gateway.edge.head import RequestHead
from gateway.edge.headers import connection_tokens, filter_response_headers
from gateway.pipeline import grpc
from gateway.pipeline.disconnect_watch import WATCH_AFTER, DisconnectWatch
from gateway.pipeline.request_body import BUFFER_LIMIT, read_all, stream_request, timed
from gateway.pipeline.server_timing import header as timing_header
from gateway.pipeline.server_timing import measure
from gateway.state import RouteRuntime
from upstreams.errors import UpstreamError
from upstreams.messages import UpstreamRequest, UpstreamResponse
from upstreams.retry import RetryPolicy

log = logging.getLogger("quartgate")


class UpstreamDispatch:
    """The dispatch stage for routes served by an :class:`upstreams.upstream.Upstream`,
    built once per snapshot."""

    __slots__ = ("_body_timeout", "_forwarded_port", "_id_header", "_max_body", "_via")

    def __init__(
        self,
        request_id_header: bytes,
        max_body_size: int,
        body_timeout: float,
        forwarded_port: bool = False,
        via: str = "",
    ) -> None:
        self._id_header = request_id_header
        self._max_body = max_body_size
        self._body_timeout = body_timeout
        self._forwarded_port = forwarded_port
        #: ``[gateway] via``, as the value's tail (b" quartgate"); b"": none.
        self._via = b" " + via.encode("ascii") if via else b""

    async def forward(
        self,
        runtime: RouteRuntime,
        ctx: RequestContext,
        head: RequestHead,
        receive: Receive,
        send: Send,
        *,
        wrap: Callable[[UpstreamResponse], UpstreamResponse] | None = None,
        extra: list[tuple[bytes, bytes]] | None = None,
    ) -> None:
        """Send the request upstream and its response to the client. ``extra``: headers
        added to the request; ``wrap``: given the upstream's response before anything of it
        is sent, returns the one to send (the cache: gateway/cache/route_cache.py)."""
        upstream = runtime.upstream
        assert upstream is not None
        scope = ctx.scope
        host = ctx.host
        connection = head.connection
        if connection is not None and b"upgrade" in connection.lower():
            check_upgrade(scope, runtime.route.name)
        limiter = upstream.limiter
        if limiter is not None and limiter.full:  # refused before anything is copied or read
            ctx.upstream = upstream.name
            raise from_upstream(limiter.refusal(runtime.retry), upstream.name)
        # -- headers ---------------------------------------------------------------------
        drop = FORWARD_DROP | connection_tokens(connection) if connection else FORWARD_DROP
        request_id_header = self._id_header
        headers = [(n, v) for n, v in scope["headers"] if n not in drop and n != request_id_header]
        headers.append((request_id_header, ctx.request_id))
        # Believed from a trusted proxy (gateway/edge/forwarding.py), else what the gateway saw.
        port = server_port(scope) if self._forwarded_port else b""
        headers += ctx.forwarding or untrusted_headers(ctx.client_ip, scope["scheme"], host, port)
        if self._via:  # the protocol the gateway received the request in, then its name
            headers.append((b"via", scope.get("http_version", "1.1").encode("ascii") + self._via))
        if ctx.traceparent is not None:
            headers.append((b"traceparent", ctx.traceparent))
        if extra:
            headers += extra
        raw_path = scope["raw_path"]
        target = runtime.route.rewrite(raw_path) if runtime.rewrites else raw_path
        query = scope["query_string"]
        if query:
            target = target + b"?" + query
        # -- body ------------------------------------------------------------------------
        max_body = self._max_body
        content_length = head.content_length
        declared = int(content_length) if content_length is not None else None
        if max_body and declared is not None and declared > max_body:
            raise GatewayError(
                413, "payload_too_large", f"request body of {declared} bytes exceeds {max_body}"
            )
        body_receive = receive
        body_timeout = self._body_timeout
        if body_timeout and (declared or head.transfer_encoding is not None):
            body_receive = timed(receive, body_timeout)  # a slow body is cut off (408)
        message = await body_receive()
        if message["type"] == "http.disconnect":
            raise ClientDisconnected
        first = message.get("body", b"")
        body: bytes | AsyncIterator[bytes]
        if not message.get("more_body", False):
            if max_body and len(first) > max_body:  # a chunked body that arrived whole
                raise GatewayError(
                    413, "payload_too_large", f"request body exceeds {max_body} bytes"
                )
            body = first
            ctx.bytes_in = len(first)
            length: int | None = ctx.bytes_in
        elif declared is not None and declared <= BUFFER_LIMIT:
            body = await read_all(body_receive, first, declared)
            ctx.bytes_in = len(body)
            length = ctx.bytes_in
        else:
            body = stream_request(body_receive, first, max_body, ctx)
            length = declared
        # Trailers can reach the client only over HTTP/2 on Hypercorn (the ASGI extension),
        # and only when it asked for them; then an HTTP/2 upstream is asked too (gRPC).
        trailers = upstream.spec.http2 and grpc.takes_trailers(scope)
        policy = runtime.retry
        deadline = 0.0  # a gRPC call's own (grpc-timeout), capped by the route's
        if trailers and (wanted := grpc.call_deadline(scope)):
            route_timeout = policy.timeout if policy is not None else 0.0
            timeout = min(wanted, route_timeout) if route_timeout else wanted
            policy = replace(policy, timeout=timeout) if policy else RetryPolicy(timeout=timeout)
            deadline = asyncio.get_running_loop().time() + timeout
        request = UpstreamRequest(
            scope["method"].encode("ascii"),
            target,
            headers,
            body,
            length,
            host if runtime.preserve_host else None,
            policy=policy,
            client=ctx.client_ip,
            request_id=ctx.request_id.decode("ascii"),
            trailers=trailers,
        )
        # -- exchange ----------------------------------------------------------------------
        loop = asyncio.get_running_loop()
        watch = DisconnectWatch(receive, body_done=isinstance(body, bytes))
        timer = loop.call_later(WATCH_AFTER, watch.start)
        ctx.upstream = upstream.name
        ctx.upstream_start = perf_counter()
        try:
            try:
                response = await upstream.send(request)
            except UpstreamError as error:
                ctx.retries = error.retries
                raise from_upstream(error, upstream.name) from None
            finally:
                ctx.upstream_time = perf_counter() - ctx.upstream_start
            ctx.retries = response.retries
            ctx.upstream_target = response.sent_to
            if wrap is not None:
                response = wrap(response)
            await self.respond(response, send, runtime, ctx, trailers, deadline)
        except asyncio.CancelledError:
            if watch.disconnected:
                task = asyncio.current_task()
                if task is not None:
                    task.uncancel()
                raise ClientDisconnected from None
            raise
        finally:
            timer.cancel()
            watch.stop()

    async def respond(
        self,
        response: UpstreamResponse,
        send: Send,
        runtime: RouteRuntime,
        ctx: RequestContext,
        trailers: bool = False,
        deadline: float = 0.0,
    ) -> None:
        headers = filter_response_headers(response.headers)
        # gRPC's outcome is in trailers (gateway/pipeline/grpc.py): relayed when the client
        # takes them from an upstream that can send them.
        relay = (
            trailers and response.trailers is not None and grpc.is_grpc(grpc.content_type(headers))
        )
        trailers_only: list[tuple[bytes, bytes]] | None = None
        if relay and grpc.trailers_only(headers):
            headers, trailers_only = grpc.split_trailers_only(headers)
        headers.append((self._id_header, ctx.request_id))
        if self._via:  # the protocol the gateway received the response in, then its name
            upstream = runtime.upstream
            version = b"2" if upstream is not None and upstream.spec.http2 else b"1.1"
            headers.append((b"via", version + self._via))
        if ctx.response_headers:
            headers += ctx.response_headers
        for policy in runtime.policies:
            policy.on_response(ctx, headers)
        measure(ctx, response)  # the gateway's share and the upstream's, to the head
        if runtime.server_timing:
            headers.append(timing_header(ctx))
        ctx.status = response.status
        start = {"type": "http.response.start", "status": response.status, "headers": headers}
        if relay:
            start["trailers"] = True
        if response.complete:
            await send(start)
            ctx.bytes_out = len(response.first)
            await send({"type": "http.response.body", "body": response.first})
            if relay:
                end = trailers_only or grpc.with_status(response.trailers or [])
                await grpc.send_trailers(send, ctx, end)
            return
        sent = 0
        try:
            # Inside the try: a client gone before the head still returns the connection.
            await send(start)
            if response.first:
                sent = len(response.first)
                await send(
                    {"type": "http.response.body", "body": response.first, "more_body": True}
                )
            if deadline and relay:  # a gRPC deadline ends the whole call, not only its head
                async with asyncio.timeout_at(deadline):
                    async for chunk in response.body:
                        sent += len(chunk)
                        await send({"type": "http.response.body", "body": chunk, "more_body": True})
            else:
                async for chunk in response.body:
                    sent += len(chunk)
                    await send({"type": "http.response.body", "body": chunk, "more_body": True})
        except TimeoutError:
            ctx.error = "upstream_timeout"
            await response.aclose()  # resets the upstream's stream before the client hears
            await send({"type": "http.response.body", "body": b""})
            await grpc.send_trailers(
                send,
                ctx,
                grpc.status(grpc.DEADLINE_EXCEEDED, "upstream_timeout: grpc-timeout passed"),
            )
            return
        except UpstreamError as error:
            # The head is gone already: end the connection without finishing the body, so the
            # client sees a truncated message, never one that looks complete. A gRPC call
            # ends with UNAVAILABLE in its trailers instead: that is never read as success.
            ctx.error = "upstream_reset_mid_body"
            log.warning(
                "%s %s: upstream %r failed mid-body: %s; %s",
                ctx.scope["method"],
                ctx.scope["path"],
                ctx.upstream,
                error,
                "ending the call with UNAVAILABLE" if relay else "aborting client connection",
                extra={"request_id": ctx.request_id.decode("ascii")},
            )
            if relay:
                failed = f"upstream_reset_mid_body: {error.public}"
                await send({"type": "http.response.body", "body": b""})
                await grpc.send_trailers(send, ctx, grpc.status(grpc.UNAVAILABLE, failed))
            return
        finally:
            ctx.bytes_out = sent
            await response.aclose()
        await send({"type": "http.response.body", "body": b""})
        if relay:
            end = trailers_only or grpc.with_status(
                filter_response_headers(response.trailers or [])
            )
            await grpc.send_trailers(send, ctx, end)
