"""A sans-IO parser for HTTP/1.1 responses: bytes in, events out, no asyncio.

The parser is told what it waits for (``expect(head=...)``) and then fed bytes. ``feed``
returns the events those bytes completed: a :class:`ResponseHead`, body ``bytes``, and
:data:`END` (a :class:`MessageEnd` saying whether the connection may carry another
exchange). Bytes it did not consume stay in ``tail``; they are never silently dropped.

It is strict where a proxy must be (RFC 9112, and stricter than h11, its reference in
``tests/test_h1_parser_fuzz.py``):

- status line ``HTTP/1.0`` or ``HTTP/1.1``, three digits 100-599, no control characters;
- header lines: a token name, a colon, a value without control characters (HTAB allowed);
  no obs-fold, no bare LF, no whitespace before the colon, at most ``MAX_HEADERS`` lines;
- ``Content-Length``: ASCII digits only, at most 18 of them, never repeated (as nginx);
  ``Transfer-Encoding``: exactly ``chunked``, once, in HTTP/1.1, never beside
  ``Content-Length``; anything else is an error;
- responses to HEAD, and 1xx, 204 and 304, have no body whatever their headers say
  (RFC 9112 6.3); a ``101`` is refused (no upgrade was asked for);
- chunk sizes are 1-16 hex digits, the CRLF after chunk data is checked, trailers are
  validated like headers and dropped.

Reuse is decided here, where the framing is known: an exchange is reusable only when the
message ended on a boundary the parser proved (a length or the last chunk), no byte is left
over, the response did not say ``close`` and was HTTP/1.1, and its framing was not doubtful
(body headers on a bodiless response). Bytes fed while no
response is expected are an error: an upstream that sends them cannot be trusted with the
next request.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final

MAX_HEAD: Final = 64 * 1024
MAX_HEADERS: Final = 256
MAX_CHUNK_LINE: Final = 4096
#: 18 digits: below 2**63, so no length overflows anything downstream.
MAX_LENGTH_DIGITS: Final = 18

Headers = list[tuple[bytes, bytes]]


class ParseError(Exception):
    """The bytes are not a valid HTTP/1.1 response (or arrived when none was expected)."""


@dataclass(frozen=True, slots=True)
class ResponseHead:
    status: int
    #: Names lower-cased, values without surrounding whitespace, in order.
    headers: Headers


@dataclass(frozen=True, slots=True)
class MessageEnd:
    """The end of the response body."""

    #: True when the connection may carry the next request (see the module docstring).
    reusable: bool


END_REUSABLE: Final = MessageEnd(True)
END_FINAL: Final = MessageEnd(False)

Event = ResponseHead | bytes | MessageEnd

# States.
IDLE, HEAD, LENGTH, CHUNKED, UNTIL_CLOSE, DONE, BROKEN = range(7)
# Chunked sub-states.
_C_SIZE, _C_DATA, _C_CRLF, _C_TRAILER = range(4)

_STATUS_LINE: Final = re.compile(rb"HTTP/1\.([01]) ([1-5][0-9][0-9])(?: [\t\x20-\x7e\x80-\xff]*+)?")
#: A whole header line in one C call: a token name (RFC 9110 5.6.2), a colon, a value of
#: visible characters, SP, HTAB and obs-text. Possessive quantifiers: no backtracking, so a
#: hostile 64 KiB line costs linear time.
_HEADER_LINE: Final = re.compile(
    rb"([!#$%&'*+\-.^_`|~0-9A-Za-z]++):[ \t]*+([\t\x20-\x7e\x80-\xff]*+)"
)
_CHUNK_LINE: Final = re.compile(rb"([0-9A-Fa-f]{1,16})(?:;[\t\x20-\x7e\x80-\xff]*+)?[ \t]*+")


class ResponseParser:
    """Parses the responses on one connection, one exchange at a time."""

    __slots__ = (
        "_buf",
        "_close",
        "_cstate",
        "_doubtful",
        "_no_body",
        "_remaining",
        "received",
        "state",
    )

    def __init__(self) -> None:
        self.state = IDLE
        self._buf = bytearray()
        self._no_body = False
        self._remaining = 0
        self._cstate = _C_SIZE
        self._close = False
        self._doubtful = False
        #: Bytes of the current exchange received so far (0: the upstream said nothing yet).
        self.received = 0

    @property
    def tail(self) -> bytes:
        """Bytes fed but not consumed."""
        return bytes(self._buf)

    def expect(self, *, head: bool) -> None:
        """A request was sent; parse its response. ``head``: it was a HEAD request."""
        if self.state not in (IDLE, DONE) or self._buf:
            raise ParseError("connection is not at a message boundary")
        self.state = HEAD
        self._no_body = head
        self._close = False
        self._doubtful = False
        self.received = 0

    def feed(self, data: bytes) -> list[Event]:
        """Parse ``data``; return the events it completed. Raises :class:`ParseError`."""
        state = self.state
        self.received += len(data)
        events: list[Event] = []
        if state == LENGTH and not self._buf:
            self._feed_length(data, events)
            return events
        if state == UNTIL_CLOSE:
            if data:
                events.append(data)
            return events
        if state in (IDLE, DONE, BROKEN):
            if data:
                self.state = BROKEN
                raise ParseError("bytes received when no response was expected")
            return events
        self._buf += data
        try:
            self._run(events)
        except ParseError:
            self.state = BROKEN
            raise
        return events

    def feed_eof(self) -> list[Event]:
        """The upstream closed its side. Ends a read-to-close body; else an error mid-message."""
        state = self.state
        if state == UNTIL_CLOSE:
            self.state = DONE
            return [END_FINAL]
        if state in (IDLE, DONE, BROKEN):
            self.state = BROKEN
            return []
        self.state = BROKEN
        if state == HEAD:
            if self.received == 0:
                raise ParseError("upstream closed the connection before sending a response")
            raise ParseError("upstream closed the connection in the middle of a response head")
        raise ParseError("peer closed connection without sending complete message body")

    # ---- parsing -------------------------------------------------------------------------

    def _run(self, events: list[Event]) -> None:
        if self.state == HEAD:
            self._parse_head(events)
        if self.state == LENGTH and self._buf:
            data = bytes(self._buf)
            self._buf.clear()
            self._feed_length(data, events)
        elif self.state == CHUNKED:
            self._feed_chunked(events)
        elif self.state == UNTIL_CLOSE and self._buf:
            events.append(bytes(self._buf))
            self._buf.clear()

    def _parse_head(self, events: list[Event]) -> None:
        buf = self._buf
        while True:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                if len(buf) > MAX_HEAD:
                    raise ParseError("response head too large")
                if b"\n" in buf.replace(b"\r\n", b""):
                    raise ParseError("bare LF in response head")
                return
            if end > MAX_HEAD:
                raise ParseError("response head too large")
            lines = bytes(buf[:end]).split(b"\r\n")
            del buf[: end + 4]
            status, headers, length, chunked = self._parse_lines(lines)
            if status < 200:
                if status == 101:
                    raise ParseError("101 Switching Protocols, but no upgrade was asked for")
                if length is not None or chunked:
                    raise ParseError("interim response with a body")
                continue  # 100 Continue, 103 Early Hints: skipped
            break
        events.append(ResponseHead(status, headers))
        if self._no_body or status == 204 or status == 304:
            # RFC 9112 6.3: no body, whatever the headers say. Body headers that promise
            # bytes make the framing doubtful: the bytes may still come.
            if chunked or length:
                self._doubtful = True
            self._end(events)
        elif chunked:
            self.state = CHUNKED
            self._cstate = _C_SIZE
        elif length is not None:
            self.state = LENGTH
            self._remaining = length
            if length == 0:
                self._end(events)
        else:
            self.state = UNTIL_CLOSE
            self._close = True

    def _parse_lines(self, lines: list[bytes]) -> tuple[int, Headers, int | None, bool]:
        found = _STATUS_LINE.fullmatch(lines[0])
        if found is None:
            raise ParseError("malformed status line")
        http10 = found[1] == b"0"
        status = int(found[2])
        if len(lines) > MAX_HEADERS + 1:
            raise ParseError("too many header lines")
        headers: Headers = []
        length: int | None = None
        chunked = False
        close = http10
        match_line = _HEADER_LINE.fullmatch
        for line in lines[1:]:
            field = match_line(line)
            if field is None:
                raise ParseError("malformed header line")
            name = field[1].lower()
            value = field[2].rstrip(b" \t")
            headers.append((name, value))
            if name == b"content-length":
                if not value.isdigit() or len(value) > MAX_LENGTH_DIGITS:
                    raise ParseError("invalid Content-Length")
                if length is not None:  # nginx refuses a duplicate too
                    raise ParseError("conflicting Content-Length headers (repeated)")
                length = int(value)
            elif name == b"transfer-encoding":
                if chunked or value.lower() != b"chunked":
                    raise ParseError("unsupported Transfer-Encoding")
                if http10:
                    raise ParseError("Transfer-Encoding in an HTTP/1.0 response")
                chunked = True
            elif name == b"connection" and b"close" in [
                t.strip() for t in value.lower().split(b",")
            ]:
                close = True
        if chunked and length is not None:
            raise ParseError("both Content-Length and Transfer-Encoding")
        if status < 200:
            return status, headers, length, chunked
        self._close = close
        return status, headers, length, chunked

    def _feed_length(self, data: bytes, events: list[Event]) -> None:
        remaining = self._remaining
        size = len(data)
        if size > remaining:
            # More than announced: keep the excess as the tail; the exchange is not reusable.
            self._buf += data[remaining:]
            data = data[:remaining]
            size = remaining
        self._remaining = remaining - size
        if size:
            events.append(data)
        if self._remaining == 0:
            self._end(events)

    def _feed_chunked(self, events: list[Event]) -> None:
        buf = self._buf
        while True:
            cstate = self._cstate
            if cstate == _C_SIZE:
                end = buf.find(b"\r\n")
                if end < 0:
                    if len(buf) > MAX_CHUNK_LINE:
                        raise ParseError("chunk size line too long")
                    return
                found = _CHUNK_LINE.fullmatch(buf, 0, end)
                if found is None:
                    raise ParseError("invalid chunk size line")
                size = int(found[1], 16)
                del buf[: end + 2]
                if size == 0:
                    self._cstate = _C_TRAILER
                else:
                    self._remaining = size
                    self._cstate = _C_DATA
            elif cstate == _C_DATA:
                if not buf:
                    return
                take = min(self._remaining, len(buf))
                events.append(bytes(buf[:take]))
                del buf[:take]
                self._remaining -= take
                if self._remaining == 0:
                    self._cstate = _C_CRLF
            elif cstate == _C_CRLF:
                if len(buf) < 2:
                    if buf and buf[0] != 0x0D:
                        raise ParseError("missing CRLF after chunk data")
                    return
                if buf[:2] != b"\r\n":
                    raise ParseError("missing CRLF after chunk data")
                del buf[:2]
                self._cstate = _C_SIZE
            else:  # trailer lines: validated, then dropped
                end = buf.find(b"\r\n")
                if end < 0:
                    if len(buf) > MAX_HEAD:
                        raise ParseError("trailers too large")
                    return
                if end == 0:
                    del buf[:2]
                    self._end(events)
                    return
                if _HEADER_LINE.fullmatch(buf, 0, end) is None:
                    raise ParseError("malformed trailer line")
                del buf[: end + 2]

    def _end(self, events: list[Event]) -> None:
        self.state = DONE
        reusable = not (self._close or self._doubtful or self._buf)
        events.append(END_REUSABLE if reusable else END_FINAL)
