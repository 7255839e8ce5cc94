"""A pool of HTTP/1.1 connections to one target, and the request/response exchange over it.

Every common operation is O(1): idle connections sit in a deque (LIFO, so the warmest
connection is reused and the coldest expire from the other end), waiters in another deque.
A released connection goes straight to the oldest live waiter. Cancellation at any await
returns what it held, so a client that disconnects never leaks a slot (the defect of
encode/httpcore#1093).
"""

from __future__ import annotations

import asyncio
import ssl
from collections import deque
from time import perf_counter

from upstreams.errors import (
    PoolExhausted,
    UpstreamClosed,
    UpstreamConnectError,
    UpstreamError,
    UpstreamTimeout,
    connect_failure,
)
from upstreams.h1.connection import H1Connection
from upstreams.h1.framing import BODILESS_RESPONSE_METHODS, request_bytes, write_streamed_body
from upstreams.messages import UpstreamRequest, UpstreamResponse, whole
from upstreams.sender import PoolStats
from upstreams.spec import TargetSpec, UpstreamSpec

#: RFC 9110 9.2.2: a repeat has the effect of one request.
IDEMPOTENT_METHODS = frozenset({b"GET", b"HEAD", b"OPTIONS", b"TRACE", b"PUT", b"DELETE"})


class ConnectionPool:
    """Connections to one target, at most ``max_connections`` of them, open or opening."""

    def __init__(self, target: TargetSpec, spec: UpstreamSpec) -> None:
        self.target = target
        self._spec = spec
        self._host_header = target.authority.encode("ascii")
        self._url = target.url
        self._max = spec.max_connections
        self._idle: deque[H1Connection] = deque()
        self._waiters: deque[asyncio.Future[H1Connection | None]] = deque()
        self._total = 0
        #: No connection is kept once released (set by ``retire`` and ``aclose``).
        self._closed = False
        #: No new connection is handed out (set by ``aclose``).
        self._refusing = False
        self._ssl: ssl.SSLContext | None = (
            ssl.create_default_context() if target.scheme == "https" else None
        )

    # ---- exchange ----------------------------------------------------------------------

    async def send(self, request: UpstreamRequest) -> UpstreamResponse:
        """Send one request and return once the response head has arrived.

        A reused connection may have been closed by the upstream while it sat idle. The
        request is then sent once more on a new connection, but only when nothing can have
        happened (the rule of Go's net/http transport): no byte of it was written, or the
        method is idempotent and the connection ended before a single response byte. A
        malformed response, a timeout or a reset mid-response is never replayed here.

        The response, or the raised :class:`UpstreamError`, names this target (``sent_to``).
        """
        spec = self._spec
        url = self._url
        body = request.body
        replayable = isinstance(body, bytes)
        no_body = request.method in BODILESS_RESPONSE_METHODS
        data = request_bytes(request, self._host_header)
        attempt = 0
        try:
            while True:
                conn, reused = await self._acquire()
                try:
                    conn.begin(no_body=no_body)
                    conn.write(data)
                    if not isinstance(body, bytes):
                        await write_streamed_body(
                            conn, body, request.content_length, spec.write_timeout
                        )
                    elif conn.writing_paused:
                        await conn.drain(spec.write_timeout)
                    status, headers = await conn.read_head(spec.read_timeout)
                except UpstreamError as error:
                    self._discard(conn)
                    if reused and replayable and attempt == 0 and _may_replay(error, conn, request):
                        attempt += 1
                        continue
                    raise
                except BaseException:
                    self._discard(conn)
                    raise
                first, complete = conn.take_buffered()
                connect, conn.connect_time = conn.connect_time, 0.0
                if complete:
                    self._release(conn)
                    response = whole(status, headers, first, url)
                else:
                    stream = _BodyStream(self, conn, spec.read_timeout)
                    response = UpstreamResponse(
                        status, headers, stream, stream.aclose, first, False, url
                    )
                if connect:
                    response.connect_time = connect
                return response
        except UpstreamError as error:
            error.sent_to = url
            raise

    # ---- pool ----------------------------------------------------------------------------

    async def _acquire(self) -> tuple[H1Connection, bool]:
        if self._refusing:
            raise UpstreamConnectError(
                f"pool for {self.target.url} is closed", public="pool closed"
            )
        idle = self._idle
        if idle:
            loop = asyncio.get_running_loop()
            expiry = loop.time() - self._spec.keepalive_expiry
            while idle and (idle[0].closed or idle[0].last_used < expiry):
                self._drop(idle.popleft())
            while idle:
                conn = idle.pop()
                if not conn.closed:
                    return conn, True
                self._drop(conn)
        if self._total < self._max:
            self._total += 1
            return await self._open(), False
        handed = await self._wait_for_connection()
        if handed is None:
            return await self._open(), False
        return handed, True

    async def _wait_for_connection(self) -> H1Connection | None:
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[H1Connection | None] = loop.create_future()
        self._waiters.append(fut)
        timer = loop.call_later(self._spec.pool_timeout, _pool_timeout, fut, self.target)
        try:
            return await fut
        except BaseException:
            if fut.done() and not fut.cancelled() and fut.exception() is None:
                handed = fut.result()  # handed over just as we were cancelled: give it back
                if handed is None:
                    self._total -= 1
                    self._grant_slot()
                else:
                    self._release(handed)
            raise
        finally:
            timer.cancel()

    async def _open(self) -> H1Connection:
        """Open a connection for a slot already counted in ``_total``."""
        loop = asyncio.get_running_loop()
        target = self.target
        began = perf_counter()
        try:
            async with asyncio.timeout(self._spec.connect_timeout):
                _, conn = await loop.create_connection(
                    lambda: H1Connection(loop),
                    target.host,
                    target.port,
                    ssl=self._ssl,
                    server_hostname=target.host if self._ssl else None,
                )
        except TimeoutError:
            self._total -= 1
            self._grant_slot()
            raise UpstreamTimeout(f"connect to {target.url} timed out", phase="connect") from None
        except OSError as error:
            self._total -= 1
            self._grant_slot()
            reason = error.strerror or str(error)
            raise UpstreamConnectError(
                f"connect to {target.url} failed: {reason}", public=connect_failure(error)
            ) from None
        except BaseException:
            self._total -= 1
            self._grant_slot()
            raise
        conn.connect_time = perf_counter() - began
        return conn

    def _release(self, conn: H1Connection) -> None:
        if not conn.reusable or conn.closed or self._closed:
            self._discard(conn)
            return
        waiters = self._waiters
        while waiters:
            waiter = waiters.popleft()
            if not waiter.done():
                waiter.set_result(conn)
                return
        conn.last_used = asyncio.get_running_loop().time()
        self._idle.append(conn)

    def _discard(self, conn: H1Connection) -> None:
        conn.abort() if not conn.closed else None
        self._total -= 1
        self._grant_slot()

    def _drop(self, conn: H1Connection) -> None:
        """Forget an idle connection (expired or closed by the upstream)."""
        conn.close()
        self._total -= 1

    def _grant_slot(self) -> None:
        waiters = self._waiters
        while waiters and self._total < self._max:
            waiter = waiters.popleft()
            if not waiter.done():
                self._total += 1
                waiter.set_result(None)
                return

    def stats(self) -> PoolStats:
        waiting = sum(1 for w in self._waiters if not w.done())
        return PoolStats(self._total - len(self._idle), len(self._idle), waiting)

    def retire(self) -> None:
        """After a reload: close idle connections now, busy ones once their response ends.

        Requests that still hold the old snapshot may open new connections; each is closed
        after its one use, so the pool empties as its last requests finish.
        """
        self._closed = True
        while self._idle:
            self._drop(self._idle.pop())

    async def aclose(self) -> None:
        self._closed = True
        self._refusing = True
        while self._idle:
            self._drop(self._idle.pop())
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_exception(
                    UpstreamConnectError(f"pool for {self.target.url} closed", public="pool closed")
                )


class _BodyStream:
    """The rest of a response body; returns the connection to the pool when it ends."""

    __slots__ = ("_conn", "_done", "_pool", "_timeout")

    def __init__(self, pool: ConnectionPool, conn: H1Connection, timeout: float) -> None:
        self._pool = pool
        self._conn = conn
        self._timeout = timeout
        self._done = False

    def __aiter__(self) -> _BodyStream:
        return self

    async def __anext__(self) -> bytes:
        if self._done:
            raise StopAsyncIteration
        try:
            data = await self._conn.read_chunk(self._timeout)
        except UpstreamError as error:
            error.before_response = False
            await self.aclose()
            raise
        if not data:
            await self.aclose()
            raise StopAsyncIteration
        return data

    async def aclose(self) -> None:
        if not self._done:
            self._done = True
            self._pool._release(self._conn)


def _may_replay(error: UpstreamError, conn: H1Connection, request: UpstreamRequest) -> bool:
    """Whether a request that failed on a reused connection can be sent again safely."""
    if not isinstance(error, UpstreamClosed):
        return False
    return not conn.wrote or request.method in IDEMPOTENT_METHODS


def _pool_timeout(fut: asyncio.Future[H1Connection | None], target: TargetSpec) -> None:
    if not fut.done():
        fut.set_exception(
            PoolExhausted(
                f"no free connection to {target.url} within pool_timeout",
                public="no free connection within pool_timeout",
            )
        )
