"""One HTTP/1.1 client connection to an upstream: the asyncio Protocol around the parser.

Why not httpcore: its pool re-scans every connection for every queued request
(encode/httpcore#1035), so its cost grows with concurrency; and a proxy needs none of a
general client's machinery. All parsing is in :mod:`upstreams.h1.parser` (sans-IO); this
module only feeds it bytes, buffers body data with explicit flow control (reading pauses
when the consumer lags) and wakes the task waiting on it.

What the pool may learn from a connection: whether any request byte was written
(``wrote``), whether the exchange ended on a proven boundary (``reusable``), and, on
failure, which kind: :class:`UpstreamClosed` (closed before any response byte),
:class:`UpstreamInvalidResponse` (bytes that are not a valid response), or a mid-message
:class:`UpstreamProtocolError`.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Final, cast

from upstreams.errors import (
    UpstreamClosed,
    UpstreamError,
    UpstreamInvalidResponse,
    UpstreamProtocolError,
    UpstreamTimeout,
)
from upstreams.h1.parser import (
    CHUNKED,
    HEAD,
    LENGTH,
    UNTIL_CLOSE,
    MessageEnd,
    ParseError,
    ResponseHead,
    ResponseParser,
)

HIGH_WATER: Final = 256 * 1024
LOW_WATER: Final = 64 * 1024

Head = tuple[int, list[tuple[bytes, bytes]]]


class H1Connection(asyncio.Protocol):
    """One exchange at a time; the pool decides when the connection is reused."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self.transport: asyncio.Transport | None = None
        self.closed = False
        #: True once a response ended on a proven boundary with nothing left over.
        self.reusable = False
        #: True once a byte of the current request was handed to the transport.
        self.wrote = False
        self.last_used = 0.0
        #: Seconds its TCP (and TLS) connect took: reported with its first response only.
        self.connect_time = 0.0
        self._parser = ResponseParser()
        self._head: Head | None = None
        self._chunks: deque[bytes] = deque()
        self._buffered = 0
        self._done = False
        #: An exchange was begun on this connection (a response is or was expected).
        self._active = False
        self._error: UpstreamError | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._reading_paused = False
        self.writing_paused = False

    # ---- asyncio.Protocol -------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, only alike.
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        parser = self._parser
        try:
            events = parser.feed(data)
        except ParseError as error:
            self._invalid(str(error))
            return
        for event in events:
            if type(event) is bytes:
                self._chunks.append(event)
                self._buffered += len(event)
            elif type(event) is ResponseHead:
                self._head = (event.status, event.headers)
            else:
                assert isinstance(event, MessageEnd)
                self._done = True
                self.reusable = event.reusable and not self.closed
                if not event.reusable:
                    self.close()  # nothing may follow this exchange on this connection
        if events:
            if (
                self._buffered > HIGH_WATER
                and not self._reading_paused
                and self.transport is not None
            ):
                self._reading_paused = True
                self.transport.pause_reading()
            self._wake()

    def eof_received(self) -> bool:
        self._eof()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.reusable = False
        self._eof()
        self._wake()

    def pause_writing(self) -> None:
        self.writing_paused = True

    def resume_writing(self) -> None:
        self.writing_paused = False
        self._wake()

    # ---- used by the pool ---------------------------------------------------------------

    def begin(self, *, no_body: bool) -> None:
        """Prepare for a request about to be written (``no_body``: a HEAD request)."""
        if self.closed:
            raise UpstreamClosed("upstream closed the connection while it was idle")
        try:
            self._parser.expect(head=no_body)
        except ParseError as error:
            self.abort()
            raise UpstreamClosed(f"connection not reusable: {error}") from None
        self._head = None
        self._error = None
        self._done = False
        self._active = True
        self.wrote = False
        self.reusable = False

    def write(self, data: bytes) -> None:
        if self.closed or self.transport is None:
            if self._error is not None:
                raise self._error
            raise UpstreamClosed("upstream closed the connection while sending the request")
        self.wrote = True
        self.transport.write(data)

    async def drain(self, timeout: float) -> None:
        while self.writing_paused and self._error is None and not self.closed:
            await self._wait(timeout, "write")
        if self._error is not None:
            raise self._error
        if self.closed:
            raise UpstreamProtocolError("upstream closed the connection while sending the request")

    async def read_head(self, timeout: float) -> Head:
        while self._head is None:
            if self._error is not None:
                raise self._error
            await self._wait(timeout, "read")
        return self._head

    def take_buffered(self) -> tuple[bytes, bool]:
        """All body bytes buffered so far, and whether that is the complete body."""
        chunks = self._chunks
        if not chunks:
            data = b""
        elif len(chunks) == 1:
            data = chunks.popleft()
        else:
            data = b"".join(chunks)
            chunks.clear()
        self._buffered = 0
        self._maybe_resume()
        return data, self._done

    async def read_chunk(self, timeout: float) -> bytes:
        """The next piece of body, or b"" at its end."""
        while True:
            if self._chunks:
                data = self._chunks.popleft()
                self._buffered -= len(data)
                self._maybe_resume()
                return data
            if self._done:
                return b""
            if self._error is not None:
                raise self._error
            await self._wait(timeout, "read")

    def close(self) -> None:
        self.reusable = False
        if self.transport is not None and not self.closed:
            self.closed = True
            self.transport.close()

    def abort(self) -> None:
        self.reusable = False
        if self.transport is not None:
            self.closed = True
            self.transport.abort()

    # ---- internals -------------------------------------------------------------------------

    def _eof(self) -> None:
        """The upstream's side ended: a read-to-close body is complete, anything else failed."""
        parser = self._parser
        state = parser.state
        if state == UNTIL_CLOSE:
            parser.feed_eof()
            self._done = True
            self.reusable = False
            self._wake()
            return
        if state not in (HEAD, LENGTH, CHUNKED):
            parser.feed_eof()
            return
        error: UpstreamError
        try:
            parser.feed_eof()
        except ParseError as failure:
            if state == HEAD and parser.received == 0:
                error = UpstreamClosed(str(failure))
            else:
                error = UpstreamProtocolError(str(failure))
                error.before_response = self._head is None and parser.received == 0
        else:  # pragma: no cover - feed_eof always fails mid-message
            error = UpstreamProtocolError("upstream closed the connection")
        self._fail(error)

    def _invalid(self, reason: str) -> None:
        """Bytes that are not a valid response, or that nobody asked for: never trusted again.

        Before the head: a 502 that is never replayed. Mid-body: the client connection is
        aborted. After a complete exchange (or on an idle connection): only the connection
        goes; the exchange it finished was whole.
        """
        if self._active and not self._done:
            if self._head is None:
                self._fail(UpstreamInvalidResponse(f"invalid response from upstream: {reason}"))
            else:
                error = UpstreamProtocolError(f"invalid response body from upstream: {reason}")
                error.before_response = False
                self._fail(error)
        self.abort()

    async def _wait(self, timeout: float, phase: str) -> None:
        fut = self._loop.create_future()
        self._waiter = fut
        timer = self._loop.call_later(timeout, _expire, fut, phase)
        try:
            await fut
        finally:
            timer.cancel()
            self._waiter = None

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _fail(self, error: UpstreamError) -> None:
        if self._error is None:
            self._error = error
        self.reusable = False
        self._wake()

    def _maybe_resume(self) -> None:
        if self._reading_paused and self._buffered < LOW_WATER and self.transport:
            self._reading_paused = False
            if not self.closed:
                self.transport.resume_reading()


def _expire(fut: asyncio.Future[None], phase: str) -> None:
    if not fut.done():
        fut.set_exception(UpstreamTimeout(f"upstream {phase} timed out", phase=phase))
