"""The header scan: one pass over a request's headers, read into one small slotted record.

Every later stage (edge checks, identity, dispatch) reads what it needs from the record,
so nothing walks the header list a second time on the common request. HTTP requests and
WebSocket handshakes share it (gateway/pipeline/, gateway/websocket/handshake.py).

The scan also makes header values what RFC 9110 5.5 says they are: without the optional
whitespace around them. httptools (the uvicorn engine) keeps trailing spaces and tabs
(``Host: admin.test \r\n`` arrives as ``admin.test ``), h11 strips them; so a value with
leading or trailing SP/HTAB is stripped in the scope itself, before any stage, policy or
upstream reads it, and a Host route, a rate-limit key or an auth header means the same on
both engines. The Host loses a trailing dot too (``admin.test.`` is the same name, fully
qualified: Envoy's ``strip_trailing_host_dot``), in the scope and for matching alike.
"""

from __future__ import annotations

import os
import re
from typing import Final

#: Control characters a header value must not carry (HTAB is allowed): seen here, refused
#: by the edge checks (gateway/edge/checks.py).
CTL_IN_VALUE: Final = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]").search

Headers = list[tuple[bytes, bytes]]

#: Optional whitespace (RFC 9110 5.6.3): SP and HTAB.
_SP: Final = 0x20
_HTAB: Final = 0x09


def normalise_host(host: bytes) -> bytes:
    """``host`` without a trailing dot on its name (``a.test.:8080`` -> ``a.test:8080``)."""
    if host[-1:] == b".":
        return host.rstrip(b".")
    if b".:" in host and host[:1] != b"[":
        name, _, port = host.rpartition(b":")
        return name.rstrip(b".") + b":" + port
    return host


def _strip_values(headers: Headers) -> None:
    """Strip OWS from every value, in place: the scope's list is the one later stages read."""
    headers[:] = [(name, value.strip(b" \t")) for name, value in headers]


class RequestHead:
    """What the headers say, for the stages after the scan.

    ``content_length`` and ``transfer_encoding`` are the raw value, ``b"conflict"`` when
    the header came twice with different values (refused by the framing check), or None.
    ``duplicate`` names a field that must come once and came twice (Host, RFC 9112 3.2;
    Authorization, whose second copy an upstream may read while the gateway checked the
    first), refused by the edge checks; None otherwise.
    """

    __slots__ = (
        "connection",
        "content_length",
        "control_character",
        "duplicate",
        "host",
        "request_id",
        "size",
        "traceparent",
        "transfer_encoding",
    )

    def __init__(self, headers: Headers, request_id_header: bytes) -> None:
        host: bytes | None = None
        request_id: bytes | None = None
        content_length: bytes | None = None
        transfer_encoding: bytes | None = None
        connection: bytes | None = None
        traceparent: bytes | None = None
        control_character = padded = authorization = False
        duplicate: bytes | None = None
        size = 0
        for name, value in headers:
            if value and (
                value[-1] == _SP or value[-1] == _HTAB or value[0] == _SP or value[0] == _HTAB
            ):
                value = value.strip(b" \t")
                padded = True
            size += len(name) + len(value)
            if CTL_IN_VALUE(value) is not None:
                control_character = True
            if name == b"host":
                if host is not None:
                    duplicate = b"host"  # refused by the edge checks (RFC 9112 3.2)
                host = value
            elif name == b"authorization":
                if authorization and duplicate is None:
                    duplicate = b"authorization"
                authorization = True
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
        if padded:
            _strip_values(headers)
        if host is not None and (host[-1:] == b"." or b".:" in host):
            trimmed = normalise_host(host)
            if trimmed != host:
                host = trimmed
                headers[:] = [(n, host if n == b"host" else v) for n, v in headers]
        #: The last Host value (b"" when none came), without a trailing dot.
        self.host = host if host is not None else b""
        #: The client's request id when it is sane, else a new one: every log line and
        #: error body from here on carries it.
        self.request_id = (
            request_id
            if request_id is not None and valid_request_id(request_id)
            else new_request_id()
        )
        self.content_length = content_length
        self.transfer_encoding = transfer_encoding
        self.connection = connection
        self.traceparent = traceparent
        self.control_character = control_character
        self.duplicate = duplicate
        #: Names and values, in bytes: the header-size limit.
        self.size = size


# ---- request ids: a client's is kept when it is sane, else the gateway makes one -----------

_REQUEST_ID: Final = re.compile(rb"[!-~]{1,200}")


def new_request_id() -> bytes:
    """A random (version 4) UUID, as ``str(uuid.uuid4())`` gives, in a third of its time."""
    h = os.urandom(16).hex()
    return f"{h[:8]}-{h[8:12]}-4{h[13:16]}-{'89ab'[int(h[16], 16) & 3]}{h[17:20]}-{h[20:]}".encode()


def valid_request_id(value: bytes) -> bool:
    """1-200 visible ASCII characters: safe to log and to send on."""
    return _REQUEST_ID.fullmatch(value) is not None
