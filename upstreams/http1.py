"""One HTTP/1.1 client connection to an upstream, as an asyncio Protocol.

Why not httpcore: its pool re-scans every connection for every queued request
(encode/httpcore#1035), so its cost grows with concurrency; and a proxy needs none of a
general client's machinery. This parser is strict where a proxy must be (bare LF, obs-fold,
NUL, conflicting Content-Length are errors) and copies body bytes only when it must
de-chunk them. Flow control is explicit: reading pauses when the consumer lags.
"""

from __future__ import annotations

import asyncio
import re
from collections import deque
from typing import Final, cast

from upstreams.errors import UpstreamError, UpstreamProtocolError, UpstreamTimeout

MAX_HEAD: Final = 64 * 1024
MAX_CHUNK_LINE: Final = 4096
HIGH_WATER: Final = 256 * 1024
LOW_WATER: Final = 64 * 1024

# Parser states.
_IDLE, _HEAD, _LENGTH, _CHUNKED, _UNTIL_CLOSE, _DONE = range(6)
# Chunked sub-states.
_C_SIZE, _C_DATA, _C_CRLF, _C_TRAILER = range(4)

_HEX: Final = frozenset(b"0123456789abcdefABCDEF")
#: A whole header line, validated in one C call: a token name (RFC 9110 5.6.2), then a value
#: without CR, LF or NUL (so bare LF and NUL are errors). Possessive quantifiers: no
#: backtracking, so a hostile 64 KiB line costs linear time.
_HEADER_LINE: Final = re.compile(rb"([!#$%&'*+\-.^_`|~0-9A-Za-z]++):[ \t]*+([^\r\n\x00]*+)")

Head = tuple[int, list[tuple[bytes, bytes]]]


class H1Connection(asyncio.Protocol):
    """Parses one response at a time; the pool decides when the connection is reused."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self.transport: asyncio.Transport | None = None
        self.closed = False
        #: True once a response ended cleanly on a connection that may carry another request.
        self.reusable = False
        self.last_used = 0.0
        self._state = _IDLE
        self._buf = bytearray()
        self._head: Head | None = None
        self._chunks: deque[bytes] = deque()
        self._buffered = 0
        self._remaining = 0
        self._cstate = _C_SIZE
        self._keep_alive = False
        self._no_body = False
        self._error: UpstreamError | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._reading_paused = False
        self.writing_paused = False
        self._got_bytes = False

    # ---- asyncio.Protocol -------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, only alike.
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        state = self._state
        self._got_bytes = True
        if state == _LENGTH:
            self._feed_length(data)
        elif state == _HEAD:
            self._buf += data
            self._parse_head()
        elif state == _CHUNKED:
            self._buf += data
            self._feed_chunked()
        elif state == _UNTIL_CLOSE:
            self._push(data)
        else:
            # Bytes nobody asked for: the connection can no longer be trusted.
            self._keep_alive = False
            self.close()

    def eof_received(self) -> bool:
        if self._state == _UNTIL_CLOSE:
            self._finish()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.reusable = False
        if self._state in (_HEAD, _LENGTH, _CHUNKED):
            error = UpstreamProtocolError(
                "peer closed connection without sending complete message body"
                if self._head is not None
                else "upstream closed the connection before sending a response"
            )
            error.before_response = not self._got_bytes
            self._fail(error)
        elif self._state == _UNTIL_CLOSE:
            self._finish()
        self._wake()

    def pause_writing(self) -> None:
        self.writing_paused = True

    def resume_writing(self) -> None:
        self.writing_paused = False
        self._wake()

    # ---- used by the pool ---------------------------------------------------------------

    def begin(self, *, no_body: bool) -> None:
        """Prepare to parse the response to a request about to be written."""
        self._state = _HEAD
        self._head = None
        self._error = None
        self._got_bytes = False
        self._no_body = no_body
        self.reusable = False

    def write(self, data: bytes) -> None:
        if self.closed or self.transport is None:
            raise UpstreamProtocolError("upstream closed the connection while sending the request")
        self.transport.write(data)

    async def drain(self, timeout: float) -> None:
        while self.writing_paused and self._error is None and not self.closed:
            await self._wait(timeout, "write")
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
        return data, self._state == _DONE

    async def read_chunk(self, timeout: float) -> bytes:
        """The next piece of body, or b"" at its end."""
        while True:
            if self._chunks:
                data = self._chunks.popleft()
                self._buffered -= len(data)
                self._maybe_resume()
                return data
            if self._error is not None:
                raise self._error
            if self._state == _DONE:
                return b""
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

    # ---- waiting ---------------------------------------------------------------------------

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

    def _protocol_error(self, reason: str) -> None:
        error = UpstreamProtocolError(f"invalid response from upstream: {reason}")
        error.before_response = self._head is None
        self._fail(error)
        self.abort()

    # ---- parsing -------------------------------------------------------------------------

    def _parse_head(self) -> None:
        buf = self._buf
        while True:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                if len(buf) > MAX_HEAD:
                    self._protocol_error("response head too large")
                elif b"\n\n" in buf or b"\n\r\n" in buf:
                    self._protocol_error("bare LF in response head")
                return
            if end > MAX_HEAD:
                self._protocol_error("response head too large")
                return
            lines = bytes(buf[:end]).split(b"\r\n")
            del buf[: end + 4]
            parsed = self._parse_lines(lines)
            if parsed is None:
                return
            status, headers, length, chunked, close = parsed
            if 100 <= status < 200:
                if status == 101:
                    self._protocol_error("upgrade responses are not supported")
                    return
                continue  # interim response (100 Continue, 103 Early Hints): skip it
            break
        self._head = (status, headers)
        self._keep_alive = not close
        if self._no_body or status in (204, 304):
            self._finish()
            if buf:
                self._keep_alive = False
        elif chunked:
            self._state = _CHUNKED
            self._cstate = _C_SIZE
            self._feed_chunked()
        elif length is not None:
            self._state = _LENGTH
            self._remaining = length
            if length == 0:
                self._finish()
            if buf:
                data = bytes(buf)
                buf.clear()
                self._feed_length(data)
        else:
            self._state = _UNTIL_CLOSE
            self._keep_alive = False
            if buf:
                self._push(bytes(buf))
                buf.clear()
        self._wake()

    def _parse_lines(
        self, lines: list[bytes]
    ) -> tuple[int, list[tuple[bytes, bytes]], int | None, bool, bool] | None:
        status_line = lines[0]
        if (
            b"\n" in status_line
            or len(status_line) < 12
            or not status_line.startswith(b"HTTP/1.")
            or status_line[8:9] != b" "
            or not status_line[9:12].isdigit()
            or (len(status_line) > 12 and status_line[12:13] != b" ")
        ):
            self._protocol_error("malformed status line")
            return None
        http10 = status_line[7:8] == b"0"
        status = int(status_line[9:12])
        headers: list[tuple[bytes, bytes]] = []
        length: int | None = None
        chunked = False
        close = http10
        has_te = False
        match_line = _HEADER_LINE.fullmatch
        for line in lines[1:]:
            found = match_line(line)
            if found is None:
                self._protocol_error("malformed header line")
                return None
            name = found[1].lower()
            value = found[2].rstrip(b" \t")
            headers.append((name, value))
            if name == b"content-length":
                if not value.isdigit():  # ASCII digits only, and not empty
                    self._protocol_error("invalid Content-Length")
                    return None
                number = int(value)
                if length is not None and length != number:
                    self._protocol_error("conflicting Content-Length headers")
                    return None
                length = number
            elif name == b"transfer-encoding":
                has_te = True
                chunked = value.lower().rsplit(b",", 1)[-1].strip() == b"chunked"
            elif name == b"connection":
                tokens = {t.strip() for t in value.lower().split(b",")}
                if b"close" in tokens:
                    close = True
                elif http10 and b"keep-alive" in tokens:
                    close = False
        if has_te:
            # RFC 9112 6.3: Transfer-Encoding overrides Content-Length, and such a
            # message must not be followed by another on the same connection.
            if length is not None:
                close = True
            length = None
            if not chunked:
                close = True
        return status, headers, length, chunked, close

    def _feed_length(self, data: bytes) -> None:
        remaining = self._remaining
        size = len(data)
        if size > remaining:
            data = data[:remaining]
            size = remaining
            self._keep_alive = False  # more bytes than announced: never reuse
        self._remaining = remaining - size
        if size:
            self._push(data)
        if self._remaining == 0:
            self._finish()

    def _feed_chunked(self) -> None:
        buf = self._buf
        while True:
            cstate = self._cstate
            if cstate == _C_SIZE:
                end = buf.find(b"\r\n")
                if end < 0:
                    if len(buf) > MAX_CHUNK_LINE:
                        self._protocol_error("chunk size line too long")
                    return
                size_field = bytes(buf[:end]).split(b";", 1)[0].strip(b" \t")
                del buf[: end + 2]
                if not size_field or not all(c in _HEX for c in size_field):
                    self._protocol_error("invalid chunk size")
                    return
                size = int(size_field, 16)
                if size == 0:
                    self._cstate = _C_TRAILER
                else:
                    self._remaining = size
                    self._cstate = _C_DATA
            elif cstate == _C_DATA:
                if not buf:
                    return
                take = min(self._remaining, len(buf))
                self._push(bytes(buf[:take]))
                del buf[:take]
                self._remaining -= take
                if self._remaining == 0:
                    self._cstate = _C_CRLF
            elif cstate == _C_CRLF:
                if len(buf) < 2:
                    return
                if buf[:2] != b"\r\n":
                    self._protocol_error("missing CRLF after chunk data")
                    return
                del buf[:2]
                self._cstate = _C_SIZE
            else:  # trailers are read and dropped
                end = buf.find(b"\r\n")
                if end < 0:
                    if len(buf) > MAX_HEAD:
                        self._protocol_error("trailers too large")
                    return
                line = bytes(buf[:end])
                del buf[: end + 2]
                if not line:
                    if buf:
                        self._keep_alive = False
                        buf.clear()
                    self._finish()
                    return

    def _push(self, data: bytes) -> None:
        self._chunks.append(data)
        self._buffered += len(data)
        if self._buffered > HIGH_WATER and not self._reading_paused and self.transport:
            self._reading_paused = True
            self.transport.pause_reading()
        self._wake()

    def _maybe_resume(self) -> None:
        if self._reading_paused and self._buffered < LOW_WATER and self.transport:
            self._reading_paused = False
            if not self.closed:
                self.transport.resume_reading()

    def _finish(self) -> None:
        self._state = _DONE
        self.reusable = self._keep_alive and not self.closed
        self._wake()


def _expire(fut: asyncio.Future[None], phase: str) -> None:
    if not fut.done():
        fut.set_exception(UpstreamTimeout(f"upstream {phase} timed out", phase=phase))
