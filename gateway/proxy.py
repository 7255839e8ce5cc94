"""The hot path: an ASGI layer in front of Quart that forwards matched routes to upstreams.

Why a raw ASGI layer: a Quart handler costs a Request object, a context and a Response
object per request; measured on one core that halves throughput (BASELINES.md). Requests
for in-process blueprint upstreams, and the lifespan, still go to Quart untouched.

The walk per request: one pass over the headers, one route match, build the upstream
header list, ``await upstream.send()``, stream the body back. Nothing is parsed twice.
"""

from __future__ import annotations

import asyncio
import logging
import re
import uuid
from collections.abc import AsyncIterator

from gateway.asgi_types import ASGIApp, Message, Receive, Scope, Send
from gateway.errors import ClientDisconnected, GatewayError, from_upstream, send_error
from gateway.headers import REQUEST_DROP, connection_tokens, filter_response_headers
from gateway.state import GatewayState, RouteRuntime
from routes.matching import MatchKind
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
            await self.app(scope, receive, send)
            return
        state = self.state  # one snapshot per request: a reload swaps it for new requests
        request_id_header = state.request_id_header
        host = b""
        request_id: bytes | None = None
        content_length: bytes | None = None
        chunked = False
        connection: bytes | None = None
        for name, value in scope["headers"]:
            if name == b"host":
                host = value
            elif name == request_id_header:
                request_id = value
            elif name == b"content-length":
                if content_length is not None and content_length != value:
                    content_length = b"conflict"
                else:
                    content_length = value
            elif name == b"transfer-encoding":
                chunked = True
            elif name == b"connection":
                connection = value
        if request_id is None or not _valid_request_id(request_id):
            request_id = str(uuid.uuid4()).encode("ascii")
        rid = request_id.decode("ascii")
        try:
            hostname = _hostname(host)
            match = state.table.match(hostname, scope["path"], scope["method"])
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
            assert match.route is not None
            runtime = state.runtimes[match.route.name]
            if content_length is not None:
                if chunked:
                    raise GatewayError(
                        400, "bad_request", "both Content-Length and Transfer-Encoding sent"
                    )
                if content_length == b"conflict" or not content_length.isdigit():
                    raise GatewayError(400, "bad_request", "invalid Content-Length")
            if runtime.upstream is None:
                await self._to_app(runtime, scope, receive, send, request_id)
                return
            await self._forward(
                state, runtime, scope, receive, send, host, request_id, content_length, connection
            )
        except GatewayError as error:
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
                log.info(
                    "%s %s -> %d %s",
                    scope["method"],
                    scope["path"],
                    error.status,
                    error.code,
                    extra={"request_id": rid},
                )
            await send_error(send, error, rid)
        except ClientDisconnected:
            log.info(
                "%s %s: client disconnected",
                scope["method"],
                scope["path"],
                extra={"request_id": rid},
            )

    async def _forward(
        self,
        state: GatewayState,
        runtime: RouteRuntime,
        scope: Scope,
        receive: Receive,
        send: Send,
        host: bytes,
        request_id: bytes,
        content_length: bytes | None,
        connection: bytes | None,
    ) -> None:
        upstream = runtime.upstream
        assert upstream is not None
        # -- headers ---------------------------------------------------------------------
        drop = REQUEST_DROP | connection_tokens(connection) if connection else REQUEST_DROP
        request_id_header = state.request_id_header
        headers = [(n, v) for n, v in scope["headers"] if n not in drop and n != request_id_header]
        client = scope.get("client")
        peer = client[0] if client else ""
        forwarded_for = peer.encode("ascii")
        proto = scope["scheme"].encode("ascii")
        forwarded_host = host
        if state.trusted and state.trusted.trusts(peer):
            for name, value in scope["headers"]:
                if name == b"x-forwarded-for":
                    forwarded_for = value + b", " + forwarded_for
                elif name == b"x-forwarded-proto":
                    proto = value
                elif name == b"x-forwarded-host":
                    forwarded_host = value
        headers += (
            (request_id_header, request_id),
            (b"x-forwarded-for", forwarded_for),
            (b"x-forwarded-proto", proto),
        )
        if forwarded_host:
            headers.append((b"x-forwarded-host", forwarded_host))
        target = (
            runtime.route.rewrite(scope["raw_path"]) if runtime.strip_prefix else scope["raw_path"]
        )
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
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientDisconnected
        first = message.get("body", b"")
        body: bytes | AsyncIterator[bytes]
        if not message.get("more_body", False):
            body = first
            length: int | None = len(first)
        elif declared is not None and declared <= BUFFER_LIMIT:
            body = await _read_all(receive, first, declared)
            length = len(body)
        else:
            body = _stream_request(receive, first, max_body)
            length = declared
        request = UpstreamRequest(
            scope["method"].encode("ascii"),
            target,
            headers,
            body,
            length,
            host if runtime.preserve_host else None,
        )
        # -- exchange ----------------------------------------------------------------------
        loop = asyncio.get_running_loop()
        watch = _DisconnectWatch(receive, body_done=isinstance(body, bytes))
        timer = loop.call_later(WATCH_AFTER, watch.start)
        try:
            try:
                response = await upstream.send(request)
            except UpstreamError as error:
                raise from_upstream(error, upstream.name) from None
            await self._respond(response, send, request_id, upstream.name, scope)
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
        request_id: bytes,
        upstream: str,
        scope: Scope,
    ) -> None:
        headers = filter_response_headers(response.headers)
        headers.append((self.state.request_id_header, request_id))
        await send({"type": "http.response.start", "status": response.status, "headers": headers})
        if response.complete:
            await send({"type": "http.response.body", "body": response.first})
            return
        try:
            if response.first:
                await send(
                    {"type": "http.response.body", "body": response.first, "more_body": True}
                )
            async for chunk in response.body:
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
        except UpstreamError as error:
            # The head is gone already: end the connection without finishing the body, so the
            # client sees a truncated message, never one that looks complete.
            log.warning(
                "%s %s: upstream %r failed mid-body: %s; aborting client connection",
                scope["method"],
                scope["path"],
                upstream,
                error,
                extra={"request_id": request_id.decode("ascii")},
            )
            return
        finally:
            await response.aclose()
        await send({"type": "http.response.body", "body": b""})

    async def _to_app(
        self,
        runtime: RouteRuntime,
        scope: Scope,
        receive: Receive,
        send: Send,
        request_id: bytes,
    ) -> None:
        """Dispatch to an in-process blueprint mounted under its internal prefix."""
        path = scope["path"]
        raw_path = scope["raw_path"]
        if runtime.strip_prefix:
            raw_path = runtime.route.rewrite(raw_path)
            path = runtime.route.rewrite(path.encode("utf-8")).decode("utf-8")
        mount = runtime.mount
        header = self.state.request_id_header
        headers = [(n, v) for n, v in scope["headers"] if n != header]
        headers.append((header, request_id))
        inner = dict(scope)
        inner["path"] = mount + path
        inner["raw_path"] = mount.encode("ascii") + raw_path
        inner["headers"] = headers

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                message = dict(message)
                message["headers"] = [*message.get("headers", ()), (header, request_id)]
            await send(message)

        await self.app(inner, receive, send_with_id)


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


async def _stream_request(receive: Receive, first: bytes, limit: int) -> AsyncIterator[bytes]:
    size = len(first)
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
        if limit and size > limit:
            raise GatewayError(413, "payload_too_large", f"request body exceeds {limit} bytes")
        if chunk:
            yield chunk
        if not message.get("more_body", False):
            return


def _hostname(host: bytes) -> str:
    """Lower-case host without port, for matching."""
    if not host:
        return ""
    text = host.decode("latin-1").lower()
    if text.startswith("["):
        return text[: text.find("]") + 1]
    return text.partition(":")[0]


def _valid_request_id(value: bytes) -> bool:
    return _REQUEST_ID.fullmatch(value) is not None


_REQUEST_ID = re.compile(rb"[!-~]{1,200}")
