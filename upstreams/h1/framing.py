"""HTTP/1.1 request framing: the head bytes of a request to an upstream.

The gateway decides the body's framing, never the client: ``Content-Length`` when the
length is known, ``Transfer-Encoding: chunked`` when it is not, and neither for a bodiless
request whose method does not expect a body. Header names and values arrive validated
(the edge refuses control characters), so they are joined as they are.
"""

from __future__ import annotations

from typing import Final

from upstreams.messages import UpstreamRequest

_BODY_METHODS: Final = frozenset({b"POST", b"PUT", b"PATCH"})


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


def chunk(data: bytes) -> bytes:
    """One chunk of a chunked body (``data`` must not be empty: that is the last chunk)."""
    return b"%x\r\n%b\r\n" % (len(data), data)


LAST_CHUNK: Final = b"0\r\n\r\n"
