"""The hot path: an ASGI layer in front of Quart that forwards matched routes to upstreams.

Why a raw ASGI layer: a Quart handler costs a Request object, a context and a Response
object per request; measured on one core that halves throughput (docs/baselines.md). Requests
for in-process blueprint upstreams, and the lifespan, still go to Quart untouched.

The walk per request: one pass over the headers, one route match, build the upstream
header list, ``await upstream.send()``, stream the body back. Nothing is parsed twice.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import AsyncIterator
from time import perf_counter

from gateway.asgi_types import ASGIApp, Message, Receive, Scope, Send
from gateway.edge.checks import CTL_IN_VALUE as ctl_in_value
from gateway.edge.checks import bad_request, check_framing, check_target, check_upgrade
from gateway.edge.context import RequestContext
from gateway.edge.errors import (
    ClientDisconnected,
    GatewayError,
    Reply,
    from_upstream,
    send_error,
)
from gateway.edge.forwarding import FORWARD_DROP, resolve, untrusted_headers
from gateway.edge.headers import connection_tokens, filter_response_headers, match_host
from gateway.edge.normalize import needs_normalizing, normalize_scope
from gateway.edge.request_id import new_request_id, valid_request_id
from gateway.edge.traceparent import next_hop
from gateway.inprocess import (
    InProcessApp,
    Lifespans,
    declared_too_large,
    limited_receive,
    mount_point,
)
from gateway.state import GatewayState, RouteRuntime
from gateway.websocket.handshake import WebSocketProxy
from routes.matching import MatchKind
from routes.model import ALL_METHODS
from upstreams.errors import UpstreamError
from upstreams.messages import UpstreamRequest, UpstreamResponse

log = logging.getLogger("quartgate")

#: Request bodies up to this size with a declared Content-Length are read whole before
#: sending, so that a stale pooled connection can be retried transparently.
BUFFER_LIMIT = 64 * 1024
#: A client disconnect is watched for only once a request has been in flight this long, so
#: the common fast request pays a timer, not a task.
WATCH_AFTER = 0.05


class Proxy:
    """``app.asgi_app = Proxy(app.asgi_app, state)``: the documented Quart middleware idiom."""

    def __init__(self, app: ASGIApp, state: GatewayState) -> None:
        self.app = app
        self.state = state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            if scope["type"] == "websocket":
                await self._websocket(scope, receive, send)
            else:
                await self.app(scope, receive, send)
            return
        state = self.state  # one snapshot per request: a reload swaps it for new requests
        request_id_header = state.request_id_header
        host = b""
        request_id: bytes | None = None
        content_length: bytes | None = None
        transfer_encoding: bytes | None = None
        connection: bytes | None = None
        traceparent: bytes | None = None
        control_character = duplicate_host = False
        for name, value in scope["headers"]:
            if ctl_in_value(value) is not None:
                control_character = True
            if name == b"host":
                if host:
                    duplicate_host = True  # refused below (RFC 9112 3.2: exactly one)
                host = value
            elif name == request_id_header:
                request_id = value
            elif name == b"content-length":
                if content_length is not None and content_length != value:
                    content_length = b"conflict"
                else:
                    content_length = value
            elif name == b"transfer-encoding":
                transfer_encoding = b"conflict" if transfer_encoding is not None else value
            elif name == b"connection":
                connection = value
            elif name == b"traceparent":
                traceparent = value
        if request_id is None or not valid_request_id(request_id):
            request_id = new_request_id()
        ctx = RequestContext(scope, request_id, host, perf_counter())
        runtime: RouteRuntime | None = None
        try:
            # -- hostile input first: nothing below may act on an ambiguous request -------
            settings = state.config.gateway
            if len(scope["headers"]) > settings.max_header_count:
                raise GatewayError(
                    431, "too_many_headers", f"more than {settings.max_header_count} headers"
                )
            if sum([len(n) + len(v) for n, v in scope["headers"]]) > settings.max_header_size:
                raise GatewayError(
                    431, "headers_too_large", f"headers over {settings.max_header_size} bytes"
                )
            if scope["method"] not in ALL_METHODS:
                raise GatewayError(
                    501, "method_not_implemented", f"method {scope['method']} is not supported"
                )
            if content_length is not None or transfer_encoding is not None:
                check_framing(scope, content_length, transfer_encoding)
            check_target(scope)
            if control_character:
                raise bad_request(scope, "control character in a header value")
            if duplicate_host:
                raise bad_request(scope, "more than one Host header")
            if needs_normalizing(scope["raw_path"]):
                host = ctx.host = normalize_scope(scope, host, settings.escaped_slashes)
            if state.trusted and state.trusted.trusts(ctx.client_ip):
                found = resolve(
                    scope["headers"], ctx.client_ip, scope["scheme"], host, state.trusted
                )
                ctx.client_ip = found.client_ip
                ctx.forwarding = found.headers
            if traceparent is not None or settings.traceparent == "start":
                ctx.traceparent, keep_state = next_hop(traceparent, settings.traceparent)
                if not keep_state:
                    scope["headers"] = [h for h in scope["headers"] if h[0] != b"tracestate"]
            match = state.table.match(match_host(host), scope["path"], scope["method"])
            if match.kind is not MatchKind.FULL:
                if match.kind is MatchKind.PARTIAL:
                    allow = ", ".join(sorted(match.allow)).encode("ascii")
                    raise GatewayError(
                        405,
                        "method_not_allowed",
                        f"method {scope['method']} is not allowed on this route",
                        [(b"allow", allow)],
                    )
                raise GatewayError(404, "route_not_found", f"no route for {scope['path']}")
            route = match.route
            assert route is not None
            ctx.route = route
            ctx.params = match.params or {}
            runtime = state.runtimes[route.name]
            for policy in runtime.policies:
                await policy.on_request(ctx)
            if runtime.upstream is None:
                await self._to_app(runtime, ctx, receive, send)
            else:
                if connection is not None and b"upgrade" in connection.lower():
                    check_upgrade(scope, route.name)
                await self._forward(
                    state,
                    runtime,
                    ctx,
                    receive,
                    send,
                    content_length,
                    connection,
                    transfer_encoding is not None,
                )
        except GatewayError as error:
            ctx.status = error.status
            ctx.error = error.code
            rid = request_id.decode("ascii")
            if error.status >= 500:
                log.warning(
                    "%s %s -> %d %s: %s",
                    scope["method"],
                    scope["path"],
                    error.status,
                    error.code,
                    error.detail,
                    extra={"request_id": rid},
                )
            else:
                # A client's mistake belongs in the access log; the error log gets it only
                # when there is no access log to carry it.
                log.log(
                    logging.DEBUG if state.config.observability.access_log else logging.INFO,
                    "%s %s -> %d %s",
                    scope["method"],
                    scope["path"],
                    error.status,
                    error.code,
                    extra={"request_id": rid},
                )
            if ctx.response_headers:
                error.headers.extend(ctx.response_headers)
            await send_error(send, error, rid, request_id_header)
        except Reply as reply:
            ctx.status = reply.status
            await _send_reply(send, reply, ctx, request_id_header)
        except ClientDisconnected:
            ctx.error = "client_disconnected"
            ctx.status = ctx.status or 499  # nginx's code for "client closed request"
            log.info(
                "%s %s: client disconnected",
                scope["method"],
                scope["path"],
                extra={"request_id": request_id.decode("ascii")},
            )
        finally:
            if state.observers:
                for observer in state.observers:
                    observer.request_finished(ctx)

    async def _forward(
        self,
        state: GatewayState,
        runtime: RouteRuntime,
        ctx: RequestContext,
        receive: Receive,
        send: Send,
        content_length: bytes | None,
        connection: bytes | None,
        chunked: bool = False,
    ) -> None:
        upstream = runtime.upstream
        assert upstream is not None
        scope = ctx.scope
        host = ctx.host
        request_id = ctx.request_id
        # -- headers ---------------------------------------------------------------------
        drop = FORWARD_DROP | connection_tokens(connection) if connection else FORWARD_DROP
        request_id_header = state.request_id_header
        headers = [(n, v) for n, v in scope["headers"] if n not in drop and n != request_id_header]
        headers.append((request_id_header, request_id))
        # Believed from a trusted proxy (gateway/edge/forwarding.py), else what the gateway saw.
        headers += ctx.forwarding or untrusted_headers(ctx.client_ip, scope["scheme"], host)
        if ctx.traceparent is not None:
            headers.append((b"traceparent", ctx.traceparent))
        raw_path = scope["raw_path"]
        target = runtime.route.rewrite(raw_path) if runtime.strip_prefix else raw_path
        query = scope["query_string"]
        if query:
            target = target + b"?" + query
        # -- body ------------------------------------------------------------------------
        max_body = state.max_body_size
        declared = int(content_length) if content_length is not None else None
        if max_body and declared is not None and declared > max_body:
            raise GatewayError(
                413, "payload_too_large", f"request body of {declared} bytes exceeds {max_body}"
            )
        body_receive = receive
        body_timeout = state.config.gateway.body_timeout
        if body_timeout and (declared or chunked):
            body_receive = _timed(receive, body_timeout)  # a slow body is cut off (408)
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
            body = await _read_all(body_receive, first, declared)
            ctx.bytes_in = len(body)
            length = ctx.bytes_in
        else:
            body = _stream_request(body_receive, first, max_body, ctx)
            length = declared
        request = UpstreamRequest(
            scope["method"].encode("ascii"),
            target,
            headers,
            body,
            length,
            host if runtime.preserve_host else None,
            policy=runtime.retry,
            client=ctx.client_ip,
        )
        # -- exchange ----------------------------------------------------------------------
        loop = asyncio.get_running_loop()
        watch = _DisconnectWatch(receive, body_done=isinstance(body, bytes))
        timer = loop.call_later(WATCH_AFTER, watch.start)
        ctx.upstream = upstream.name
        ctx.upstream_start = perf_counter()
        try:
            try:
                response = await upstream.send(request)
            except UpstreamError as error:
                raise from_upstream(error, upstream.name) from None
            finally:
                ctx.upstream_time = perf_counter() - ctx.upstream_start
                ctx.retries = request.retries
            ctx.upstream_target = request.sent_to
            await self._respond(response, send, runtime, ctx)
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

    async def _respond(
        self,
        response: UpstreamResponse,
        send: Send,
        runtime: RouteRuntime,
        ctx: RequestContext,
    ) -> None:
        headers = filter_response_headers(response.headers)
        headers.append((self.state.request_id_header, ctx.request_id))
        if ctx.response_headers:
            headers += ctx.response_headers
        for policy in runtime.policies:
            policy.on_response(ctx, headers)
        ctx.status = response.status
        start = {"type": "http.response.start", "status": response.status, "headers": headers}
        if response.complete:
            await send(start)
            ctx.bytes_out = len(response.first)
            await send({"type": "http.response.body", "body": response.first})
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
            async for chunk in response.body:
                sent += len(chunk)
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
        except UpstreamError as error:
            # The head is gone already: end the connection without finishing the body, so the
            # client sees a truncated message, never one that looks complete.
            ctx.error = "upstream_reset_mid_body"
            log.warning(
                "%s %s: upstream %r failed mid-body: %s; aborting client connection",
                ctx.scope["method"],
                ctx.scope["path"],
                ctx.upstream,
                error,
                extra={"request_id": ctx.request_id.decode("ascii")},
            )
            return
        finally:
            ctx.bytes_out = sent
            await response.aclose()
        await send({"type": "http.response.body", "body": b""})

    @functools.cached_property
    def websockets(self) -> WebSocketProxy:
        """WebSocket handshakes and the worker's open sessions, across snapshots (a reload
        leaves open sessions on theirs; a drain closes them all: ``going_away``)."""
        return WebSocketProxy()

    @functools.cached_property
    def apps(self) -> dict[str, InProcessApp]:
        """In-process apps by upstream name (gateway/inprocess.py), filled by create_app."""
        return {}

    async def _websocket(self, scope: Scope, receive: Receive, send: Send) -> None:
        """A WebSocket handshake: gateway/websocket/ (a route without ``websocket = true``
        answers a JSON 501, an unknown path 404, never a 101)."""
        await self.websockets(self.state, scope, receive, send, self._to_app)

    async def _to_app(
        self, runtime: RouteRuntime, ctx: RequestContext, receive: Receive, send: Send
    ) -> None:
        """Dispatch to an in-process app: a blueprint through the Quart app under its
        internal mount; an ASGI or WSGI app (gateway/inprocess.py) called directly, with
        ``root_path`` set to the stripped prefix so that it generates correct URLs."""
        scope = ctx.scope
        request_id = ctx.request_id
        ctx.upstream = name = runtime.route.spec.upstream
        app = self.apps.get(name)
        header = self.state.request_id_header
        headers = [(n, v) for n, v in scope["headers"] if n != header]
        headers.append((header, request_id))
        inner = dict(scope)
        inner["headers"] = headers
        websocket = scope["type"] == "websocket"
        if websocket:
            del inner["method"]  # the handshake's GET was for the gateway's policies only
        call: ASGIApp
        if app is None or app.asgi is None:  # a blueprint, mounted in the Quart app
            path = scope["path"]
            raw_path = scope["raw_path"]
            if runtime.strip_prefix:
                raw_path = runtime.route.rewrite(raw_path)
                path = runtime.route.rewrite(path.encode("utf-8")).decode("utf-8")
            mount = runtime.mount
            inner["path"] = mount + path
            inner["raw_path"] = mount.encode("ascii") + raw_path
            call = self.app
        else:
            if runtime.strip_prefix:
                prefix = mount_point(scope["path"], runtime.route.segments)
                inner["root_path"] = scope.get("root_path", "") + prefix
            lifespan = self.lifespans.states.get(name)
            if lifespan is not None:
                inner["state"] = dict(lifespan)
            call = app.asgi
            if not websocket:
                limit = self.state.max_body_size
                declared = declared_too_large(headers, limit)
                if declared is not None:
                    detail = f"request body of {declared} bytes exceeds {limit}"
                    raise GatewayError(413, "payload_too_large", detail)
                receive = limited_receive(receive, limit, ctx)

        policies = runtime.policies
        started = False

        async def send_with_id(message: Message) -> None:
            nonlocal started
            kind = message["type"]
            if ctx.error == "payload_too_large" and not started:
                # The body was cut at max_body_size and the app was told the client left;
                # a WSGI adapter reads that as the end of the body, and the app would answer
                # as if the upload were whole. Its answer is dropped: the client gets 413.
                return
            if kind in ("http.response.start", "websocket.accept"):
                started = True
                message = dict(message)
                headers = [*message.get("headers", ()), (header, request_id)]
                headers += ctx.response_headers
                for policy in policies:
                    policy.on_response(ctx, headers)
                message["headers"] = headers
                ctx.status = message.get("status", 101)
            elif kind == "http.response.body":
                ctx.bytes_out += len(message.get("body", b""))
            elif kind == "websocket.http.response.start":
                started = True
                ctx.status = message["status"]
            await send(message)

        if app is None or app.asgi is None:
            await call(inner, receive, send_with_id)
            return
        try:
            await call(inner, receive, send_with_id)
        except (GatewayError, ClientDisconnected, asyncio.CancelledError):
            raise
        except Exception as error:  # the app's bug: logged with its traceback, answered 500
            log.exception(
                "in-process app %r failed on %s", name, scope["path"],
                extra={"request_id": request_id.decode("ascii")},
            )  # fmt: skip
            if started or websocket:
                return
            raise GatewayError(500, "app_error", f"in-process app {name!r} failed") from error
        if not started and ctx.error == "payload_too_large":
            limit = self.state.max_body_size
            raise GatewayError(413, "payload_too_large", f"request body exceeds {limit} bytes")

    @functools.cached_property
    def lifespans(self) -> Lifespans:
        """The ASGI lifespans of in-process ASGI apps (their state goes into each scope)."""
        return Lifespans(list(self.apps.values()))


class _DisconnectWatch:
    """Cancels the request's task when the client disconnects, once started."""

    __slots__ = ("_receive", "_task", "_watcher", "body_done", "disconnected")

    def __init__(self, receive: Receive, *, body_done: bool) -> None:
        self._receive = receive
        self._task = asyncio.current_task()
        self._watcher: asyncio.Task[Message] | None = None
        self.body_done = body_done
        self.disconnected = False

    def start(self) -> None:
        if not self.body_done:
            return  # a streaming body reader sees the disconnect itself
        self._watcher = asyncio.ensure_future(self._watch())

    async def _watch(self) -> Message:
        while True:
            message = await self._receive()
            if message["type"] == "http.disconnect":
                self.disconnected = True
                if self._task is not None:
                    self._task.cancel()
                return message

    def stop(self) -> None:
        if self._watcher is not None and not self._watcher.done():
            self._watcher.cancel()


async def _send_reply(send: Send, reply: Reply, ctx: RequestContext, id_header: bytes) -> None:
    headers = [
        (b"content-length", b"%d" % len(reply.body)),
        (id_header, ctx.request_id),
        *reply.headers,
        *ctx.response_headers,
    ]
    await send({"type": "http.response.start", "status": reply.status, "headers": headers})
    await send({"type": "http.response.body", "body": reply.body})


async def _read_all(receive: Receive, first: bytes, declared: int) -> bytes:
    parts = [first]
    size = len(first)
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientDisconnected
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > declared:
            raise GatewayError(400, "bad_request", "request body longer than its Content-Length")
        parts.append(chunk)
        if not message.get("more_body", False):
            return b"".join(parts)


async def _stream_request(
    receive: Receive, first: bytes, limit: int, ctx: RequestContext
) -> AsyncIterator[bytes]:
    size = ctx.bytes_in = len(first)
    if limit and size > limit:
        raise GatewayError(413, "payload_too_large", f"request body exceeds {limit} bytes")
    if first:
        yield first
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientDisconnected
        chunk = message.get("body", b"")
        size += len(chunk)
        ctx.bytes_in = size
        if limit and size > limit:
            raise GatewayError(413, "payload_too_large", f"request body exceeds {limit} bytes")
        if chunk:
            yield chunk
        if not message.get("more_body", False):
            return


def _timed(receive: Receive, timeout: float) -> Receive:
    """``receive`` that answers 408 when the client sends no body data for ``timeout`` s."""

    async def timed() -> Message:
        try:
            async with asyncio.timeout(timeout):
                return await receive()
        except TimeoutError:
            raise GatewayError(
                408, "request_timeout", f"no request body data for {timeout:g} s"
            ) from None

    return timed
