"""HTTP/1.1 request framing: the bytes a request to an upstream becomes, in order.

The gateway decides the body's framing, never the client: ``Content-Length`` when the
length is known, ``Transfer-Encoding: chunked`` when it is not, and neither for a bodiless
request whose method does not expect a body. Header names and values arrive validated
(the edge refuses control characters), so they are joined as they are. The pool
(``upstreams/pool.py``) decides which connection the bytes go to and when a request is
sent again; what the bytes are is decided here.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Final, Protocol

from upstreams.errors import UpstreamProtocolError
from upstreams.messages import UpstreamRequest

_BODY_METHODS: Final = frozenset({b"POST", b"PUT", b"PATCH"})
#: Methods whose response has no body, whatever its head announces (RFC 9110 9.3.2).
BODILESS_RESPONSE_METHODS: Final = frozenset({b"HEAD"})


def request_head(request: UpstreamRequest, default_host: bytes) -> bytes:
    parts = [
        request.method,
        b" ",
        request.target,
        b" HTTP/1.1\r\nhost: ",
        request.host or default_host,
        b"\r\n",
    ]
    for name, value in request.headers:
        parts += (name, b": ", value, b"\r\n")
    length = request.content_length
    if length is None:
        parts.append(b"transfer-encoding: chunked\r\n\r\n")
    elif length or request.method in _BODY_METHODS:
        parts.append(b"content-length: %d\r\n\r\n" % length)
    else:
        parts.append(b"\r\n")
    return b"".join(parts)


def request_bytes(request: UpstreamRequest, default_host: bytes) -> bytes:
    """The whole request when its body is bytes (one write), else its head."""
    head = request_head(request, default_host)
    body = request.body
    return head + body if isinstance(body, bytes) and body else head


def chunk(data: bytes) -> bytes:
    """One chunk of a chunked body (``data`` must not be empty: that is the last chunk)."""
    return b"%x\r\n%b\r\n" % (len(data), data)


LAST_CHUNK: Final = b"0\r\n\r\n"


class Writer(Protocol):
    """What a streamed body is written to (an :class:`~upstreams.h1.connection.H1Connection`)."""

    writing_paused: bool

    def write(self, data: bytes) -> None: ...

    async def drain(self, timeout: float) -> None: ...


async def write_streamed_body(
    writer: Writer, body: AsyncIterator[bytes], content_length: int | None, timeout: float
) -> None:
    """Write a body of unknown or declared length as it arrives, chunked when unknown.

    A body that ends short of its declared length is an error: the upstream would wait for
    the rest, or read the next request as its end.
    """
    chunked = content_length is None
    sent = 0
    async for data in body:
        if not data:
            continue
        sent += len(data)
        writer.write(chunk(data) if chunked else data)
        if writer.writing_paused:
            await writer.drain(timeout)
    if chunked:
        writer.write(LAST_CHUNK)
    elif sent != content_length:
        raise UpstreamProtocolError("request body shorter than its Content-Length")
