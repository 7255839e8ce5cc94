"""The header scan: one pass over a request's headers, read into one small slotted record.

Every later stage (edge checks, identity, dispatch) reads what it needs from the record,
so nothing walks the header list a second time on the common request. HTTP requests and
WebSocket handshakes share it (gateway/pipeline/, gateway/websocket/handshake.py).
"""

from __future__ import annotations

import re
from typing import Final

from gateway.edge.request_id import new_request_id, valid_request_id

#: Control characters a header value must not carry (HTAB is allowed): seen here, refused
#: by the edge checks (gateway/edge/checks.py).
CTL_IN_VALUE: Final = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]").search

Headers = list[tuple[bytes, bytes]]


class RequestHead:
    """What the headers say, for the stages after the scan.

    ``content_length`` and ``transfer_encoding`` are the raw value, ``b"conflict"`` when
    the header came twice with different values (refused by the framing check), or None.
    """

    __slots__ = (
        "connection",
        "content_length",
        "control_character",
        "duplicate_host",
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
        control_character = duplicate_host = False
        size = 0
        for name, value in headers:
            size += len(name) + len(value)
            if CTL_IN_VALUE(value) is not None:
                control_character = True
            if name == b"host":
                if host is not None:
                    duplicate_host = True  # refused by the edge checks (RFC 9112 3.2)
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
        #: The last Host value (b"" when none came).
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
        self.duplicate_host = duplicate_host
        #: Names and values, in bytes: the header-size limit.
        self.size = size
