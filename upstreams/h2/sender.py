"""HTTP/2 to one target: connections multiplexed, streams bounded, trailers carried.

``http://`` targets use prior knowledge (h2c); ``https://`` targets negotiate h2 with ALPN
and fail the connect when the server does not choose it. A request takes a stream on the
connection with the most room; a new connection is opened (one at a time) when none has
room, up to ``max_connections``; past that a request waits up to ``pool_timeout`` for a
stream (:class:`~upstreams.errors.PoolExhausted`).

The request body is sent beside the wait for the response when it is streamed or larger
than one frame window, so a server may answer before the body has ended and a
bidirectional stream (gRPC) flows both ways at once. The response head is returned as soon
as it arrives; its body is read frame by frame and its trailers, when they come, are on
``UpstreamResponse.trailers`` once the body has ended.

A stream the server refused before processing it (``REFUSED_STREAM``, or above a GOAWAY's
last stream) is sent once more on another connection when its body is replayable: the
server saw nothing of it (RFC 9113 8.7). No other failure is replayed here.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections import deque
from collections.abc import AsyncIterator
from time import perf_counter

from upstreams.errors import (
    PoolExhausted,
    UpstreamConnectError,
    UpstreamError,
    UpstreamProtocolError,
    UpstreamTimeout,
    connect_failure,
)
from upstreams.h2.connection import H2Connection, H2Stream, Headers, StreamRefused
from upstreams.messages import UpstreamRequest, UpstreamResponse, whole
from upstreams.sender import PoolStats
from upstreams.spec import TargetSpec, UpstreamSpec

#: A bytes body up to this size is written before the head is awaited (it fits the
#: initial window of any server); a larger or streamed one is sent by a task beside it.
INLINE_BODY = 16384


class H2Sender:
    """Sends requests to one target over multiplexed HTTP/2 connections."""

    def __init__(self, target: TargetSpec, spec: UpstreamSpec) -> None:
        self.target = target
        self._spec = spec
        self._url = target.url
        self._authority = target.authority.encode("ascii")
        self._scheme = target.scheme.encode("ascii")
        self._ssl: ssl.SSLContext | None = None
        if target.scheme == "https":
            self._ssl = ssl.create_default_context()
            self._ssl.set_alpn_protocols(["h2"])
        self._conns: list[H2Connection] = []
        self._opening = False
        self._waiters: deque[asyncio.Future[None]] = deque()
        self._closed = False

    # -- sending ---------------------------------------------------------------------------
    async def send(self, request: UpstreamRequest) -> UpstreamResponse:
        body = request.body
        replayable = isinstance(body, bytes)
        avoid: H2Connection | None = None
        try:
            while True:
                conn = await self._acquire(avoid)
                try:
                    return await self._exchange(conn, request)
                except StreamRefused:
                    if not replayable or avoid is not None:
                        raise
                    avoid = conn  # once more, on another connection
        except UpstreamError as error:
            error.sent_to = self._url
            raise

    async def _exchange(self, conn: H2Connection, request: UpstreamRequest) -> UpstreamResponse:
        spec = self._spec
        body = request.body
        headers: Headers = [
            (b":method", request.method),
            (b":scheme", self._scheme),
            (b":authority", request.host or self._authority),
            (b":path", request.target),
        ]
        headers += request.headers
        if request.content_length is not None and (
            request.content_length or request.method in (b"POST", b"PUT", b"PATCH")
        ):
            headers.append((b"content-length", b"%d" % request.content_length))
        if request.trailers:
            headers.append((b"te", b"trailers"))
        empty = isinstance(body, bytes) and not body
        stream = conn.open_stream(headers, end_stream=empty)
        pump: asyncio.Task[None] | None = None
        try:
            if isinstance(body, bytes):
                if body and len(body) <= INLINE_BODY:
                    await conn.send_body(stream, body, True, spec.write_timeout)
                elif body:
                    pump = asyncio.ensure_future(self._pump(conn, stream, _once(body)))
            else:
                pump = asyncio.ensure_future(self._pump(conn, stream, body))
            status, response_headers = await _head(stream, pump, spec.read_timeout)
        except BaseException:
            if pump is not None:
                pump.cancel()
            conn.reset(stream)
            raise
        connect, conn.connect_time = conn.connect_time, 0.0
        if stream.ended and not stream.chunks and pump is None and stream.sent_end:
            # Nothing but a head (gRPC's trailers-only answer, a 204): done here.
            conn.finish(stream)
            response = whole(status, response_headers, b"", self._url)
            response.trailers = stream.trailers or []
        else:
            reader = _H2Body(conn, stream, pump, spec.read_timeout)
            response = UpstreamResponse(
                status, response_headers, reader, reader.aclose, sent_to=self._url
            )
            response.trailers = []
            reader.response = response
        if connect:
            response.connect_time = connect
        return response

    async def _pump(self, conn: H2Connection, stream: H2Stream, body: AsyncIterator[bytes]) -> None:
        timeout = self._spec.write_timeout
        try:
            async for chunk in body:
                await conn.send_body(stream, chunk, False, timeout)
            await conn.send_body(stream, b"", True, timeout)
        except UpstreamError:
            raise
        except BaseException as error:  # the client's body failed (gone, 413, 408)
            if not isinstance(error, asyncio.CancelledError):
                stream.fail(UpstreamProtocolError("the request body ended early"))
                conn.reset(stream)
            raise

    # -- connections -----------------------------------------------------------------------
    async def _acquire(self, avoid: H2Connection | None) -> H2Connection:
        if self._closed:
            raise UpstreamConnectError(f"pool for {self._url} is closed", public="pool closed")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._spec.pool_timeout
        while True:
            best: H2Connection | None = None
            for conn in self._conns:
                if conn is not avoid and conn.capacity > (best.capacity if best else 0):
                    best = conn
            if best is not None:
                best.last_used = loop.time()
                return best
            if not self._opening and len(self._conns) < self._spec.max_connections + (
                avoid is not None
            ):
                return await self._open()
            waiter = loop.create_future()
            self._waiters.append(waiter)
            try:
                async with asyncio.timeout_at(deadline):
                    await waiter
            except TimeoutError:
                raise PoolExhausted(
                    f"no free HTTP/2 stream to {self._url} within pool_timeout",
                    public="no free connection within pool_timeout",
                ) from None
            finally:
                with contextlib.suppress(ValueError):
                    self._waiters.remove(waiter)

    async def _open(self) -> H2Connection:
        loop = asyncio.get_running_loop()
        target = self.target
        self._opening = True
        began = perf_counter()
        try:
            async with asyncio.timeout(self._spec.connect_timeout):
                transport, conn = await loop.create_connection(
                    lambda: H2Connection(loop, self._spec.max_concurrent_streams),
                    target.host,
                    target.port,
                    ssl=self._ssl,
                    server_hostname=target.host if self._ssl else None,
                )
        except TimeoutError:
            raise UpstreamTimeout(f"connect to {self._url} timed out", phase="connect") from None
        except OSError as error:
            raise UpstreamConnectError(
                f"connect to {self._url} failed: {error.strerror or error}",
                public=connect_failure(error),
            ) from None
        finally:
            self._opening = False
            self._wake()
        if self._ssl is not None:
            chosen = transport.get_extra_info("ssl_object").selected_alpn_protocol()
            if chosen != "h2":
                conn.close(UpstreamProtocolError("upstream did not negotiate h2"))
                raise UpstreamConnectError(
                    f"{self._url} did not negotiate HTTP/2 (ALPN: {chosen!r})",
                    public="upstream does not speak HTTP/2",
                )
        conn.start()
        conn.connect_time = perf_counter() - began
        conn.last_used = loop.time()
        conn.on_change = self._changed
        self._conns.append(conn)
        return conn

    def _changed(self, conn: H2Connection) -> None:
        if conn.closed:
            with contextlib.suppress(ValueError):
                self._conns.remove(conn)
        elif not conn.streams:
            if conn.going_away:
                conn.close()
                return
            loop = asyncio.get_running_loop()
            conn.last_used = loop.time()
            loop.call_later(self._spec.keepalive_expiry, self._expire, conn)
        self._wake()

    def _expire(self, conn: H2Connection) -> None:
        loop = asyncio.get_running_loop()
        idle_for = loop.time() - conn.last_used
        if not conn.closed and not conn.streams and idle_for >= self._spec.keepalive_expiry - 0.01:
            conn.close()

    def _wake(self) -> None:
        waiters = self._waiters
        while waiters:
            waiter = waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)

    def stats(self) -> PoolStats:
        in_use = sum(len(conn.streams) for conn in self._conns)
        idle = sum(1 for conn in self._conns if not conn.streams)
        return PoolStats(in_use, idle, len(self._waiters))

    async def aclose(self) -> None:
        self._closed = True
        for conn in list(self._conns):
            conn.close()
        self._conns.clear()
        self._wake()


async def _head(
    stream: H2Stream, pump: asyncio.Task[None] | None, timeout: float
) -> tuple[int, Headers]:
    """The response head; a failure of the body sent beside it comes first."""
    try:
        async with asyncio.timeout(timeout):
            if pump is None:
                return await stream.head
            await asyncio.wait((stream.head, pump), return_when=asyncio.FIRST_COMPLETED)
            if pump.done() and not stream.head.done():
                pump.result()  # raises the body's failure, if it failed
            return await stream.head
    except TimeoutError:
        raise UpstreamTimeout("upstream read timed out", phase="read") from None


async def _once(body: bytes) -> AsyncIterator[bytes]:
    yield body


class _H2Body:
    """A response body read frame by frame; its trailers go on the response at the end."""

    __slots__ = ("_conn", "_done", "_pump", "_stream", "_timeout", "response")

    def __init__(
        self, conn: H2Connection, stream: H2Stream, pump: asyncio.Task[None] | None, timeout: float
    ) -> None:
        self._conn = conn
        self._stream = stream
        self._pump = pump
        self._timeout = timeout
        self.response: UpstreamResponse | None = None
        self._done = False

    def __aiter__(self) -> _H2Body:
        return self

    async def __anext__(self) -> bytes:
        pump = self._pump
        if pump is not None and pump.done() and not pump.cancelled():
            error = pump.exception()
            if error is not None and not isinstance(error, UpstreamError):
                raise error  # the client's body failed: its own error, not the upstream's
        data = await self._stream.read(self._timeout)
        if data:
            return data
        self._done = True
        if self.response is not None and self._stream.trailers:
            self.response.trailers = self._stream.trailers
        raise StopAsyncIteration

    async def aclose(self) -> None:
        pump = self._pump
        if pump is not None:
            if not pump.done():
                pump.cancel()
            elif not pump.cancelled():
                pump.exception()  # retrieved: what it raised was the response's to report
        if self._done and self._stream.sent_end:
            self._conn.finish(self._stream)
        else:
            self._conn.reset(self._stream)
